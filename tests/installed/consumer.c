/* SPDX-License-Identifier: MIT */
/*
 * consumer.c - a program built outside the tree against the installed
 * libprecopy (pkg-config), as a VMM would be. It migrates 4 MiB over TCP
 * loopback between two sessions of one process and checks the copy.
 * Only <precopy.h> and the C library: if this builds and runs, the
 * installed header, .pc file and library are usable on their own.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include <precopy.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define RAM (4u << 20)

#ifdef CONSUMER_OLD_QUERY
/* A program built against PRECOPY_0.1 called precopy_query() with the 0.1
 * struct: bind to that symbol version, as such a binary does, and check
 * that the library writes no byte past the 0.1 struct. */
__asm__(".symver old_query, precopy_query@PRECOPY_0.1");
int old_query(struct precopy_session *s, void *out);

static int check_old_query(struct precopy_session *s, const struct precopy_stats *now)
{
	unsigned char buf[sizeof(struct precopy_stats) + 64];
	struct precopy_stats old;

	memset(buf, 0xA5, sizeof(buf));
	if (old_query(s, buf))
		return fprintf(stderr, "consumer: precopy_query@PRECOPY_0.1 failed\n"), 1;
	for (size_t i = PRECOPY_STATS_SIZE_0_1; i < sizeof(buf); i++)
		if (buf[i] != 0xA5)
			return fprintf(stderr, "consumer: the 0.1 query wrote byte %zu\n", i), 1;
	memcpy(&old, buf, PRECOPY_STATS_SIZE_0_1);
	if (old.status != now->status || old.transferred != now->transferred)
		return fprintf(stderr, "consumer: the 0.1 query disagrees\n"), 1;
	printf("consumer: precopy_query@PRECOPY_0.1 fills %zu bytes, as 0.1 did\n",
	       (size_t)PRECOPY_STATS_SIZE_0_1);
	return 0;
}
#endif

static void *incoming(void *arg)
{
	static int err;

	err = precopy_incoming(arg);
	return &err;
}

int main(void)
{
	struct precopy_session *src = NULL, *dst = NULL;
	struct precopy_stats st;
	char uri[128];
	unsigned char *a, *b;
	pthread_t t;
	void *ret;
	int err;

	a = mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	b = mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED || b == MAP_FAILED)
		return perror("mmap"), 1;
	for (size_t i = 0; i < RAM; i++)
		a[i] = (unsigned char)(i * 7 + i / 4096);

	if ((err = precopy_new(PRECOPY_ROLE_DEST, NULL, NULL, &dst)) ||
	    (err = precopy_add_region(dst, b, RAM, PRECOPY_DIRTY_EXTERNAL)) < 0 ||
	    (err = precopy_listen(dst, "tcp:127.0.0.1:0")) ||
	    (err = precopy_local_uri(dst, uri, sizeof(uri))))
		goto fail;
	if ((err = precopy_new(PRECOPY_ROLE_SOURCE, NULL, NULL, &src)) ||
	    (err = precopy_add_region(src, a, RAM, PRECOPY_DIRTY_EXTERNAL)) < 0)
		goto fail;
	if (pthread_create(&t, NULL, incoming, dst))
		return 1;
	err = precopy_migrate(src, uri);
	pthread_join(t, &ret);
	if (err || *(int *)ret) {
		err = err ? err : *(int *)ret;
		goto fail;
	}
	precopy_query(src, &st);
	printf("consumer: %s, %llu bytes transferred, memory %s\n",
	       precopy_status_name(st.status), (unsigned long long)st.transferred,
	       memcmp(a, b, RAM) ? "DIFFERS" : "equal");
	err = memcmp(a, b, RAM) ? 1 : 0;
	if (precopy_version() >> 16 != PRECOPY_VERSION_MAJOR ||
	    (precopy_version() & 0xffff) < PRECOPY_VERSION_MINOR) {
		fprintf(stderr, "consumer: library version %#x, header %d.%d\n", precopy_version(),
			PRECOPY_VERSION_MAJOR, PRECOPY_VERSION_MINOR);
		err = 1;
	}
#ifdef CONSUMER_OLD_QUERY
	err |= check_old_query(src, &st);
#endif
	precopy_delete(&src);
	precopy_delete(&dst);
	return err;

fail:
	fprintf(stderr, "consumer: %s\n", strerror(-err));
	return 1;
}

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
	precopy_delete(&src);
	precopy_delete(&dst);
	return err;

fail:
	fprintf(stderr, "consumer: %s\n", strerror(-err));
	return 1;
}

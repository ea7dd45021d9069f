/* SPDX-License-Identifier: MIT */
/*
 * precopy-bench-load: back-to-back migrations of one dirtying guest over
 * TCP loopback, each to a fresh destination session in this process (the
 * guest "comes back" and runs again after each one). Reports p50/p99 of
 * downtime and total time, and checks that descriptors and resident
 * memory do not grow across the runs (after a warm-up run).
 *
 *   precopy-bench-load [--runs N] [--ram SIZE] [--dirty-rate RATE] [--json]
 *
 * Exit status: 0; 1 if a migration failed, the destination did not verify,
 * or descriptors or memory grew (more than --rss-slack SIZE, default 16M).
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "cli.h"
#include "guest.h"
#include "precopy.h"

struct dest {
	struct precopy_session *s;
	void *ram;
	size_t len;
	struct pc_guest_desc desc;
	bool have_desc;
	int err;
};

static int d_load(void *o, const void *buf, size_t len)
{
	struct dest *d = o;

	if (len != sizeof(d->desc))
		return -EINVAL;
	memcpy(&d->desc, buf, len);
	d->have_desc = true;
	return 0;
}

static void *d_main(void *arg)
{
	struct dest *d = arg;

	d->err = precopy_incoming(d->s);
	return NULL;
}

static int s_stop(void *o) { return pc_guest_pause(o); }
static int s_resume(void *o) { return pc_guest_resume(o); }
static int s_throttle(void *o, unsigned pct) { return pc_guest_set_throttle(o, pct); }

static int s_save(void *o, void **buf, size_t *len)
{
	struct pc_guest_desc *d = malloc(sizeof(*d));

	if (!d)
		return -ENOMEM;
	pc_guest_describe(o, d);
	*buf = d;
	*len = sizeof(*d);
	return 0;
}

static long count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	long n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;
}

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[128];
	long kib = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* One migration; fills the source's stats. Return: 0 or a negative errno. */
static int migrate_once(struct pc_guest *g, size_t ram, struct precopy_stats *st, char *why,
			size_t whylen)
{
	struct precopy_callbacks dcb, scb = {
		.opaque = g, .stop_vm = s_stop, .resume_vm = s_resume,
		.save_device_state = s_save, .set_throttle = s_throttle,
	};
	struct precopy_session *src = NULL;
	struct dest d = { .len = ram };
	pthread_t thr;
	char uri[128];
	int err;

	dcb = (struct precopy_callbacks){ .opaque = &d, .load_device_state = d_load };
	d.ram = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (d.ram == MAP_FAILED)
		return -ENOMEM;
	err = precopy_new(PRECOPY_ROLE_DEST, NULL, &dcb, &d.s);
	if (!err)
		err = precopy_add_region(d.s, d.ram, ram, PRECOPY_DIRTY_AUTO) < 0 ? -EINVAL : 0;
	if (!err)
		err = precopy_listen(d.s, "tcp:127.0.0.1:0");
	if (!err)
		err = precopy_local_uri(d.s, uri, sizeof(uri));
	if (!err)
		err = pthread_create(&thr, NULL, d_main, &d) ? -EAGAIN : 0;
	if (err) {
		snprintf(why, whylen, "destination set-up: %s", strerror(-err));
		goto out;
	}
	err = precopy_new(PRECOPY_ROLE_SOURCE, NULL, &scb, &src);
	if (!err) {
		int r = precopy_add_region(src, pc_guest_ram(g, NULL), ram, PRECOPY_DIRTY_AUTO);

		err = r < 0 ? r : 0;
	}
	if (!err)
		err = precopy_migrate(src, uri);
	else
		precopy_cancel(d.s);
	pthread_join(thr, NULL);
	if (src) {
		precopy_query(src, st);
		precopy_strerror(src, why, whylen);
		precopy_delete(&src);
	}
	if (!err && d.err) {
		err = d.err;
		precopy_strerror(d.s, why, whylen);
	}
	if (!err && (!d.have_desc || pc_guest_verify(d.ram, ram, &d.desc, why, whylen)))
		err = -EBADMSG;
	/* The guest now "runs at the destination"; bring it back here. */
	pc_guest_resume(g);
out:
	if (d.s)
		precopy_delete(&d.s);
	munmap(d.ram, ram);
	return err;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted @v. */
static uint64_t pct(const uint64_t *v, unsigned n, unsigned p)
{
	unsigned rank = (p * n + 99) / 100;

	return v[rank ? rank - 1 : 0];
}

int main(int argc, char **argv)
{
	uint64_t ram = 64ull << 20, rate = 32ull << 20, slack = 16ull << 20, v;
	unsigned runs = 50;
	bool json = false;
	uint64_t *down, *total;
	struct pc_guest *g;
	long fds0 = 0, rss0 = 0, fds1, rss1;
	int bad = 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--json")) {
			json = true;
		} else if (!strcmp(a, "--runs") && val && !pc_cli_parse_u64(val, &v) && v >= 2 &&
			   v <= 100000) {
			runs = (unsigned)v;
			i++;
		} else if (!strcmp(a, "--ram") && val && !pc_cli_parse_size(val, &v) && v &&
			   v % 4096 == 0) {
			ram = v;
			i++;
		} else if (!strcmp(a, "--dirty-rate") && val && !pc_cli_parse_size(val, &v)) {
			rate = v;
			i++;
		} else if (!strcmp(a, "--rss-slack") && val && !pc_cli_parse_size(val, &v)) {
			slack = v;
			i++;
		} else {
			fprintf(stderr, "usage: precopy-bench-load [--runs N (>= 2)] [--ram SIZE] "
					"[--dirty-rate RATE] [--rss-slack SIZE] [--json]\n");
			return 2;
		}
	}
	{
		struct pc_guest_opts go = { .ram = ram, .dirty_rate = (double)rate,
					    .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
					    .seed = 11 };

		if (pc_guest_new(&go, &g) || pc_guest_start(g)) {
			fprintf(stderr, "precopy-bench-load: cannot start a guest\n");
			return 1;
		}
	}
	down = calloc(runs, sizeof(*down));
	total = calloc(runs, sizeof(*total));
	if (!down || !total)
		return 1;
	for (unsigned i = 0; i < runs; i++) {
		struct precopy_stats st = { 0 };
		char why[PRECOPY_ERRMSG_MAX] = "";
		int err = migrate_once(g, ram, &st, why, sizeof(why));

		if (err) {
			fprintf(stderr, "precopy-bench-load: run %u failed: %s (%s)\n", i + 1, why,
				strerror(-err));
			return 1;
		}
		down[i] = st.downtime;
		total[i] = st.total_time;
		if (i == 0) { /* warm-up: thread stacks, malloc arenas */
			fds0 = count_fds();
			rss0 = rss_kib();
		}
	}
	fds1 = count_fds();
	rss1 = rss_kib();
	pc_guest_delete(&g);
	qsort(down, runs, sizeof(*down), cmp_u64);
	qsort(total, runs, sizeof(*total), cmp_u64);
	if (fds1 != fds0) {
		fprintf(stderr, "precopy-bench-load: descriptors grew from %ld to %ld\n", fds0, fds1);
		bad = 1;
	}
	if (rss1 - rss0 > (long)(slack >> 10)) {
		fprintf(stderr, "precopy-bench-load: resident memory grew from %ld to %ld KiB\n",
			rss0, rss1);
		bad = 1;
	}
	if (json) {
		printf("{\"bench\":\"load\",\"runs\":%u,\"ram\":%" PRIu64 ",\"dirty-rate\":%" PRIu64
		       ",\"downtime-ms\":{\"p50\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"max\":%" PRIu64
		       "},\"total-ms\":{\"p50\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"max\":%" PRIu64
		       "},\"fds\":[%ld,%ld],\"rss-kib\":[%ld,%ld],\"ok\":%s}\n",
		       runs, ram, rate, pct(down, runs, 50), pct(down, runs, 99), down[runs - 1],
		       pct(total, runs, 50), pct(total, runs, 99), total[runs - 1], fds0, fds1, rss0,
		       rss1, bad ? "false" : "true");
	} else {
		char a[32], b[32];

		printf("precopy-bench-load: %u migrations of a %s guest writing %s/s, TCP loopback\n",
		       runs, pc_cli_fmt_bytes((double)ram, a, sizeof(a)),
		       pc_cli_fmt_bytes((double)rate, b, sizeof(b)));
		printf("%-12s %8s %8s %8s\n", "ms", "p50", "p99", "max");
		printf("%-12s %8" PRIu64 " %8" PRIu64 " %8" PRIu64 "\n", "downtime",
		       pct(down, runs, 50), pct(down, runs, 99), down[runs - 1]);
		printf("%-12s %8" PRIu64 " %8" PRIu64 " %8" PRIu64 "\n", "total time",
		       pct(total, runs, 50), pct(total, runs, 99), total[runs - 1]);
		printf("descriptors  %ld after the first run, %ld after the last\n", fds0, fds1);
		printf("resident     %ld KiB after the first run, %ld KiB after the last\n", rss0,
		       rss1);
	}
	free(down);
	free(total);
	return bad;
}

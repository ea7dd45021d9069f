/* SPDX-License-Identifier: MIT */
/*
 * precopy-bench-load: back-to-back migrations of one dirtying guest, each
 * to a fresh destination session in this process (the guest "comes back"
 * and runs again after each one), alternating the transports built in:
 *
 *   tcp        TCP loopback
 *   shm-memfd  shm: into a memfd destination (pages framed over the
 *              socket: the destination does not share its RAM)
 *   shm-plain  shm: into anonymous memory (framed, likewise)
 *   tls        tls: loopback with a pre-shared key (where GnuTLS is built in)
 *
 * Reports p50/p99/max of downtime and total time per transport and over
 * all runs, and checks that descriptors and resident memory do not grow
 * across the whole run (measured after a warm-up round, one run of each
 * transport, and after the last run).
 *
 *   precopy-bench-load [--runs N] [--ram SIZE] [--dirty-rate RATE]
 *                      [--transports LIST] [--rss-slack SIZE] [--json]
 *
 * LIST is a comma-separated subset of the names above (default: all built
 * in), taken in turn. Exit status: 0; 1 if a migration failed, the
 * destination did not verify, or descriptors or memory grew (more than
 * --rss-slack SIZE, default 16M); 2 for bad usage.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "guest.h"
#include "precopy.h"
#include "transport.h"

/* One way to migrate, and the figures of its runs. */
struct tp {
	const char *name;
	bool memfd;                  /* the destination's RAM is a memfd */
	bool tls;                    /* both ends get the PSK below */
	char listen[64];             /* the destination listens here */
	uint64_t *down, *total;      /* ms, one per run of this transport */
	unsigned n;
};

static uint8_t g_psk[32];
static const struct precopy_tls g_tls = {
	.psk_identity = "precopy-bench-load", .psk = g_psk, .psk_len = sizeof(g_psk),
};

struct dest {
	struct precopy_session *s;
	void *ram;
	size_t len;
	int fd;
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

/* One migration over @t; fills the source's stats. Return: 0 or a negative errno. */
static int migrate_once(struct pc_guest *g, size_t ram, const struct tp *t,
			struct precopy_stats *st, char *why, size_t whylen)
{
	struct precopy_callbacks dcb, scb = {
		.opaque = g, .stop_vm = s_stop, .resume_vm = s_resume,
		.save_device_state = s_save, .set_throttle = s_throttle,
	};
	struct precopy_session *src = NULL;
	struct dest d = { .len = ram, .fd = -1 };
	pthread_t thr;
	char uri[200];
	int err;

	dcb = (struct precopy_callbacks){ .opaque = &d, .load_device_state = d_load };
	if (t->memfd) {
		err = precopy_memfd_alloc(ram, -1, &d.ram, &d.fd);
		if (err) {
			snprintf(why, whylen, "destination memfd: %s", strerror(-err));
			return err;
		}
	} else {
		d.ram = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			     -1, 0);
		if (d.ram == MAP_FAILED)
			return -ENOMEM;
	}
	err = precopy_new(PRECOPY_ROLE_DEST, NULL, &dcb, &d.s);
	if (!err) {
		int r = t->memfd ? precopy_add_region_fd(d.s, d.ram, ram, d.fd, 0,
							 PRECOPY_DIRTY_AUTO)
				 : precopy_add_region(d.s, d.ram, ram, PRECOPY_DIRTY_AUTO);

		err = r < 0 ? r : 0;
	}
	if (!err && t->tls)
		err = precopy_set_tls(d.s, &g_tls);
	if (!err)
		err = precopy_listen(d.s, t->listen);
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
	if (!err && t->tls)
		err = precopy_set_tls(src, &g_tls);
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
	if (d.fd >= 0)
		close(d.fd);
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

static void print_ms(const char *label, unsigned n, uint64_t *down, uint64_t *total)
{
	qsort(down, n, sizeof(*down), cmp_u64);
	qsort(total, n, sizeof(*total), cmp_u64);
	printf("%-10s %4u   %6" PRIu64 " %6" PRIu64 " %6" PRIu64 "   %6" PRIu64 " %6" PRIu64
	       " %6" PRIu64 "\n", label, n, pct(down, n, 50), pct(down, n, 99), down[n - 1],
	       pct(total, n, 50), pct(total, n, 99), total[n - 1]);
}

static void json_ms(unsigned n, uint64_t *down, uint64_t *total)
{
	qsort(down, n, sizeof(*down), cmp_u64);
	qsort(total, n, sizeof(*total), cmp_u64);
	printf("\"downtime-ms\":{\"p50\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"max\":%" PRIu64
	       "},\"total-ms\":{\"p50\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"max\":%" PRIu64 "}",
	       pct(down, n, 50), pct(down, n, 99), down[n - 1], pct(total, n, 50),
	       pct(total, n, 99), total[n - 1]);
}

static int usage(void)
{
	fprintf(stderr, "usage: precopy-bench-load [--runs N (>= 2)] [--ram SIZE] "
			"[--dirty-rate RATE] [--transports LIST] [--rss-slack SIZE] [--json]\n"
			"LIST: a comma-separated subset of tcp,shm-memfd,shm-plain,tls "
			"(default: those built in)\n");
	return 2;
}

/* The command line. */
struct opts {
	uint64_t ram, rate, slack;
	unsigned runs;
	bool json;
	const char *list; /* --transports, or NULL */
};

static int parse_opts(int argc, char **argv, struct opts *o)
{
	uint64_t v;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--json")) {
			o->json = true;
		} else if (!strcmp(a, "--runs") && val && !pc_cli_parse_u64(val, &v) && v >= 2 &&
			   v <= 100000) {
			o->runs = (unsigned)v;
			i++;
		} else if (!strcmp(a, "--ram") && val && !pc_cli_parse_size(val, &v) && v &&
			   v % 4096 == 0) {
			o->ram = v;
			i++;
		} else if (!strcmp(a, "--dirty-rate") && val && !pc_cli_parse_size(val, &v)) {
			o->rate = v;
			i++;
		} else if (!strcmp(a, "--rss-slack") && val && !pc_cli_parse_size(val, &v)) {
			o->slack = v;
			i++;
		} else if (!strcmp(a, "--transports") && val) {
			o->list = val;
			i++;
		} else {
			return usage();
		}
	}
	return 0;
}

/* The transports, in turn, into @tp (*@ntp of them): those @list names
 * (each once), or every one of @all built in. Return: 0, or an exit
 * status with the reason printed. */
static int pick_transports(const char *list, struct tp all[4], struct tp *tp[4], unsigned *ntp)
{
	char *copy, *save = NULL;

	*ntp = 0;
	if (!list) {
		for (unsigned k = 0; k < 4; k++)
			if (!all[k].tls || pc_transport_find("tls"))
				tp[(*ntp)++] = &all[k];
		return *ntp ? 0 : usage();
	}
	copy = strdup(list);
	for (char *w = strtok_r(copy, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
		unsigned k = 0;

		while (k < 4 && strcmp(w, all[k].name))
			k++;
		for (unsigned j = 0; j < *ntp && k < 4; j++)
			if (tp[j] == &all[k])
				k = 4; /* each name once */
		if (k == 4) {
			free(copy);
			return usage();
		}
		if (all[k].tls && !pc_transport_find("tls")) {
			fprintf(stderr, "precopy-bench-load: tls is not built in\n");
			free(copy);
			return 2;
		}
		tp[(*ntp)++] = &all[k];
	}
	free(copy);
	return *ntp ? 0 : usage();
}

/* Descriptors and resident memory after the warm-up and after the end. */
struct growth {
	unsigned warm; /* runs in the warm-up */
	long fds0, rss0, fds1, rss1;
	int bad;       /* 1 if either grew */
};

static void report_json(const struct opts *o, struct tp *const *tp, unsigned ntp,
			uint64_t *down, uint64_t *total, const struct growth *gr)
{
	printf("{\"bench\":\"load\",\"runs\":%u,\"ram\":%" PRIu64 ",\"dirty-rate\":%" PRIu64
	       ",\"transports\":[", o->runs, o->ram, o->rate);
	for (unsigned k = 0; k < ntp; k++) {
		printf("%s{\"name\":\"%s\",\"runs\":%u,", k ? "," : "", tp[k]->name, tp[k]->n);
		json_ms(tp[k]->n, tp[k]->down, tp[k]->total);
		printf("}");
	}
	printf("],");
	json_ms(o->runs, down, total);
	printf(",\"warm-up-runs\":%u,\"fds\":[%ld,%ld],\"rss-kib\":[%ld,%ld],\"ok\":%s}\n",
	       gr->warm, gr->fds0, gr->fds1, gr->rss0, gr->rss1, gr->bad ? "false" : "true");
}

static void report_text(const struct opts *o, struct tp *const *tp, unsigned ntp,
			uint64_t *down, uint64_t *total, const struct growth *gr)
{
	char a[32], b[32];

	printf("precopy-bench-load: %u migrations of a %s guest writing %s/s, alternating",
	       o->runs, pc_cli_fmt_bytes((double)o->ram, a, sizeof(a)),
	       pc_cli_fmt_bytes((double)o->rate, b, sizeof(b)));
	for (unsigned k = 0; k < ntp; k++)
		printf("%s %s", k ? "," : "", tp[k]->name);
	printf("\n%-10s %4s   %-20s   %s\n", "", "runs", "downtime (ms)", "total time (ms)");
	printf("%-10s %4s   %6s %6s %6s   %6s %6s %6s\n", "", "", "p50", "p99", "max", "p50",
	       "p99", "max");
	for (unsigned k = 0; k < ntp; k++)
		print_ms(tp[k]->name, tp[k]->n, tp[k]->down, tp[k]->total);
	print_ms("all", o->runs, down, total);
	printf("descriptors  %ld after the warm-up (%u runs), %ld after the last\n", gr->fds0,
	       gr->warm, gr->fds1);
	printf("resident     %ld KiB after the warm-up, %ld KiB after the last\n", gr->rss0,
	       gr->rss1);
}

/* Where each transport listens, and room for its figures. Return: 0 or 1. */
static int prepare_transports(struct tp *const *tp, unsigned ntp, const char *dir,
			      unsigned runs)
{
	char sock[64];

	snprintf(sock, sizeof(sock), "shm:%s/load.sock", dir);
	for (unsigned k = 0; k < ntp; k++) {
		snprintf(tp[k]->listen, sizeof(tp[k]->listen), "%s",
			 !strncmp(tp[k]->name, "shm", 3) ? sock
			 : tp[k]->tls ? "tls:127.0.0.1:0" : "tcp:127.0.0.1:0");
		tp[k]->down = calloc(runs / ntp + 1, sizeof(uint64_t));
		tp[k]->total = calloc(runs / ntp + 1, sizeof(uint64_t));
		if (!tp[k]->down || !tp[k]->total)
			return 1;
	}
	return 0;
}

/* @o->runs migrations of @g, the transports in turn; the figures into
 * @down/@total and each transport's; @gr measured after the warm-up (one
 * run of each transport, and at least one run left after it) and at the
 * end. Return: 0, or 1 with the failure printed. */
static int run_all(const struct opts *o, struct pc_guest *g, struct tp *const *tp,
		   unsigned ntp, uint64_t *down, uint64_t *total, struct growth *gr)
{
	gr->warm = ntp < o->runs ? ntp : o->runs - 1;
	for (unsigned i = 0; i < o->runs; i++) {
		struct tp *t = tp[i % ntp];
		struct precopy_stats st = { 0 };
		char why[PRECOPY_ERRMSG_MAX] = "";
		int err = migrate_once(g, o->ram, t, &st, why, sizeof(why));

		if (err) {
			fprintf(stderr, "precopy-bench-load: run %u (%s) failed: %s (%s)\n", i + 1,
				t->name, why, strerror(-err));
			return 1;
		}
		down[i] = t->down[t->n] = st.downtime;
		total[i] = t->total[t->n] = st.total_time;
		t->n++;
		if (i + 1 == gr->warm) {
			gr->fds0 = count_fds();
			gr->rss0 = rss_kib();
		}
	}
	gr->fds1 = count_fds();
	gr->rss1 = rss_kib();
	if (gr->fds1 != gr->fds0) {
		fprintf(stderr, "precopy-bench-load: descriptors grew from %ld to %ld\n", gr->fds0,
			gr->fds1);
		gr->bad = 1;
	}
	if (gr->rss1 - gr->rss0 > (long)(o->slack >> 10)) {
		fprintf(stderr, "precopy-bench-load: resident memory grew from %ld to %ld KiB\n",
			gr->rss0, gr->rss1);
		gr->bad = 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = { .ram = 64ull << 20, .rate = 32ull << 20, .slack = 16ull << 20,
			  .runs = 50 };
	struct tp all[] = {
		{ .name = "tcp", .memfd = false },
		{ .name = "shm-memfd", .memfd = true },
		{ .name = "shm-plain", .memfd = false },
		{ .name = "tls", .tls = true },
	};
	struct tp *tp[4];
	struct growth gr = { 0 };
	uint64_t *down, *total;
	struct pc_guest *g;
	char dir[] = "/tmp/precopy-load.XXXXXX";
	unsigned ntp;
	int rc;

	rc = parse_opts(argc, argv, &o);
	if (!rc)
		rc = pick_transports(o.list, all, tp, &ntp);
	if (rc)
		return rc;
	if (!mkdtemp(dir)) {
		perror("precopy-bench-load: mkdtemp");
		return 1;
	}
	if (prepare_transports(tp, ntp, dir, o.runs))
		return 1;
	if (getrandom(g_psk, sizeof(g_psk), 0) != (ssize_t)sizeof(g_psk)) {
		perror("precopy-bench-load: getrandom");
		return 1;
	}
	{
		struct pc_guest_opts go = { .ram = o.ram, .dirty_rate = (double)o.rate,
					    .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
					    .seed = 11 };

		if (pc_guest_new(&go, &g) || pc_guest_start(g)) {
			fprintf(stderr, "precopy-bench-load: cannot start a guest\n");
			return 1;
		}
	}
	down = calloc(o.runs, sizeof(*down));
	total = calloc(o.runs, sizeof(*total));
	if (!down || !total)
		return 1;
	if (run_all(&o, g, tp, ntp, down, total, &gr)) {
		rmdir(dir);
		return 1;
	}
	pc_guest_delete(&g);
	rmdir(dir);
	if (o.json)
		report_json(&o, tp, ntp, down, total, &gr);
	else
		report_text(&o, tp, ntp, down, total, &gr);
	for (unsigned k = 0; k < ntp; k++) {
		free(tp[k]->down);
		free(tp[k]->total);
	}
	free(down);
	free(total);
	return gr.bad;
}

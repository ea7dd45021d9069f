/* SPDX-License-Identifier: MIT */
/*
 * precopy-bench-shm: the shm transport against single-thread memcpy,
 * measured in the same run, interleaved, medians of --runs.
 *
 *   baseline   memcpy of 4 KiB pages, one buffer to another (both resident)
 *   transport  write_pages() through the ops table, no engine: runs of 64
 *              pages, a marker message per MiB (as the engine batches),
 *              into a destination region that is a memfd (exposed with its
 *              fd, as the engine does; shm frames the pages all the same:
 *              the destination shares no memory with the source)
 *                - warm: the region's pages already exist
 *                - fresh: a new memfd, so every page is allocated and
 *                  zeroed on first touch (what a migration meets)
 *              and into plain memory
 *   migration  a whole copy-mode migration of an idle guest of random
 *              contents into fresh memfd RAM (engine checksums included)
 *   handoff    a memfd guest handed over: downtime from stop_vm at the
 *              source to resume_vm at the destination, and the engine's
 *              own downtime figure
 *
 *   precopy-bench-shm [--ram SIZE] [--runs N] [--json]
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "guest.h"
#include "precopy.h"
#include "tp_pair.h"
#include "transport.h"

#define PAGE 4096u
#define RUN_PAGES 64
#define BATCH (1u << 20)
#define MAXRUNS 64

struct series {
	const char *name;
	const char *unit;
	double v[MAXRUNS];
	unsigned n;
};

static double median(struct series *s)
{
	double t[MAXRUNS];

	memcpy(t, s->v, s->n * sizeof(double));
	qsort(t, s->n, sizeof(double), pcb_cmp_double);
	return s->n % 2 ? t[s->n / 2] : (t[s->n / 2 - 1] + t[s->n / 2]) / 2;
}

static double smin(struct series *s)
{
	double m = s->v[0];

	for (unsigned i = 1; i < s->n; i++)
		m = s->v[i] < m ? s->v[i] : m;
	return m;
}

static double smax(struct series *s)
{
	double m = s->v[0];

	for (unsigned i = 1; i < s->n; i++)
		m = s->v[i] > m ? s->v[i] : m;
	return m;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "precopy-bench-shm: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

/* --- baseline --------------------------------------------------------------- */

static double bench_memcpy(const uint8_t *src, uint8_t *dst, size_t len)
{
	double t0 = pcb_now();

	for (size_t off = 0; off < len; off += PAGE)
		memcpy(dst + off, src + off, PAGE);
	__asm__ volatile("" ::: "memory");
	return (double)len / (pcb_now() - t0);
}

/* --- transport only ----------------------------------------------------------- */

/* A shm: pair on a socket of this process's own. */
static void tpair_open(struct pcb_tp_pair *p)
{
	char path[128];
	int err;

	snprintf(path, sizeof(path), "/tmp/precopy-bench-shm-%d.sock", (int)getpid());
	err = pcb_tp_open(p, pc_transport_find("shm"), path, 1);
	if (err)
		die("listen/accept/connect", err);
}

struct drain {
	struct pc_transport *t;
	size_t markers;
	int err;
};

static void *drain_main(void *arg)
{
	struct drain *d = arg;
	uint8_t buf[64];
	size_t len;

	for (size_t i = 0; i < d->markers && !d->err; i++)
		d->err = pc_tp_recv_msg(d->t, 0, buf, sizeof(buf), &len);
	return NULL;
}

/* write_pages of @len bytes from @src into region 0 of the peer; returns
 * bytes/s from the first write to the last marker received, and in
 * *@with_map bytes/s counting the sharing and mapping of the region too. */
static double bench_transport(const uint8_t *src, void *dst, size_t len, int fd,
			      double *with_map)
{
	struct pcb_tp_pair p;
	struct drain d;
	pthread_t th;
	uint8_t m[16] = "marker";
	struct iovec v = { m, sizeof(m) };
	double t0, t1, tm;
	int err;

	tpair_open(&p);
	t0 = pcb_now(); /* sharing and mapping the region counts */
	err = fd >= 0 ? pc_tp_expose_region_fd(p.b, 0, dst, len, fd, 0) : -EOPNOTSUPP;
	if (err == -EOPNOTSUPP) /* as the engine does */
		err = pc_tp_expose_region(p.b, 0, dst, len);
	if (err)
		die("expose", err);
	/* as in the engine: the destination answers, the source reads it */
	if ((err = pc_tp_send_msg(p.b, 0, &v, 1)) ||
	    (err = pc_tp_recv_msg(p.a, 0, m, sizeof(m), &(size_t){ 0 })))
		die("hello", err);
	pc_tp_reg_local(p.a, src, len);
	d = (struct drain){ .t = p.b, .markers = len / BATCH };
	pthread_create(&th, NULL, drain_main, &d);
	tm = pcb_now();
	for (size_t off = 0; off < len; off += BATCH) {
		struct pc_page_run runs[BATCH / (RUN_PAGES * PAGE)];
		unsigned n = 0;

		for (size_t o = off; o < off + BATCH; o += RUN_PAGES * PAGE)
			runs[n++] = (struct pc_page_run){ src + o, 0, o, RUN_PAGES * PAGE };
		err = pc_tp_write_pages(p.a, 0, runs, n);
		if (!err)
			err = pc_tp_send_msg(p.a, 0, &v, 1);
		if (err)
			die("write_pages", err);
	}
	pthread_join(th, NULL);
	t1 = pcb_now();
	if (d.err)
		die("receiving", d.err);
	if (memcmp((uint8_t *)dst + len - PAGE, src + len - PAGE, PAGE))
		die("destination differs", EIO);
	pcb_tp_close(&p);
	if (with_map)
		*with_map = (double)len / (t1 - t0);
	return (double)len / (t1 - tm);
}

/* First touch of fresh memfd pages: what any write into new memory costs. */
static double bench_first_touch(size_t len)
{
	void *p;
	int fd;
	double t0;

	if (precopy_memfd_alloc(len, -1, &p, &fd))
		die("memfd", ENOMEM);
	t0 = pcb_now();
	for (size_t off = 0; off < len; off += PAGE)
		((volatile uint8_t *)p)[off] = 1;
	t0 = pcb_now() - t0;
	munmap(p, len);
	close(fd);
	return (double)len / t0;
}

/* --- whole migrations ------------------------------------------------------- */

struct dest {
	struct precopy_session *s;
	void *ram;
	size_t len;
	int fd;
	double t_resume;
	int err;
	pthread_t th;
	char uri[160];
};

static int d_resume(void *o)
{
	((struct dest *)o)->t_resume = pcb_now();
	return 0;
}

static void *d_main(void *arg)
{
	struct dest *d = arg;

	d->err = precopy_incoming(d->s);
	return NULL;
}

static void dest_start(struct dest *d, size_t len, bool memfd)
{
	struct precopy_callbacks cb = { .opaque = d, .resume_vm = d_resume };
	char path[128];
	int err;

	memset(d, 0, sizeof(*d));
	d->len = len;
	d->fd = -1;
	if (memfd)
		err = precopy_memfd_alloc(len, -1, &d->ram, &d->fd);
	else {
		d->ram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			      0);
		err = d->ram == MAP_FAILED ? -ENOMEM : 0;
	}
	if (err)
		die("destination memory", err);
	snprintf(path, sizeof(path), "/tmp/precopy-bench-shm-%d.sock", (int)getpid());
	snprintf(d->uri, sizeof(d->uri), "shm:%s", path);
	err = precopy_new(PRECOPY_ROLE_DEST, NULL, &cb, &d->s);
	if (!err)
		err = memfd ? precopy_add_region_fd(d->s, d->ram, len, d->fd, 0, 0)
			    : precopy_add_region(d->s, d->ram, len, 0);
	if (err >= 0)
		err = precopy_listen(d->s, d->uri);
	if (err < 0)
		die("destination", err);
	pthread_create(&d->th, NULL, d_main, d);
}

static void dest_end(struct dest *d)
{
	pthread_join(d->th, NULL);
	precopy_delete(&d->s);
	munmap(d->ram, d->len);
	if (d->fd >= 0)
		close(d->fd);
}

/* The guest's own hooks (pc_guest_callbacks()), the stop timed. */
struct src_ctx {
	struct precopy_callbacks guest_cb;
	double t_stop;
};

static int s_stop(void *o)
{
	struct src_ctx *x = o;

	x->t_stop = pcb_now();
	return x->guest_cb.stop_vm(x->guest_cb.opaque);
}

static int s_resume(void *o)
{
	struct src_ctx *x = o;

	return x->guest_cb.resume_vm(x->guest_cb.opaque);
}

/* Migrate @g (memfd or not) into a fresh destination; fills @st. */
static void migrate_once(struct pc_guest *g, struct precopy_stats *st, double *real_downtime)
{
	struct src_ctx x = { .guest_cb = pc_guest_callbacks(g, NULL, NULL) };
	struct precopy_callbacks cb = { .opaque = &x, .stop_vm = s_stop, .resume_vm = s_resume };
	struct precopy_session *s;
	struct dest d;
	size_t len;
	void *ram = pc_guest_ram(g, &len);
	int err;

	dest_start(&d, len, pc_guest_fd(g) < 0);
	err = precopy_new(PRECOPY_ROLE_SOURCE, NULL, &cb, &s);
	if (!err)
		err = pc_guest_fd(g) >= 0 ? precopy_add_region_fd(s, ram, len, pc_guest_fd(g), 0, 0)
					  : precopy_add_region(s, ram, len, 0);
	if (err < 0)
		die("source", err);
	err = precopy_migrate(s, d.uri);
	if (err) {
		char msg[PRECOPY_ERRMSG_MAX];

		precopy_strerror(s, msg, sizeof(msg));
		fprintf(stderr, "precopy-bench-shm: migration failed: %s\n", msg);
		exit(1);
	}
	dest_end(&d);
	if (d.err)
		die("destination", d.err);
	precopy_query(s, st);
	*real_downtime = d.t_resume - x.t_stop;
	precopy_delete(&s);
	pc_guest_resume(g); /* the next run migrates it again */
}

/* The series as one JSON line or a table; GiB/s rows also as a share of
 * the memcpy baseline @mc. */
static void report(bool json, struct series *const *all, unsigned n, struct series *mc,
		   uint64_t ram, unsigned runs)
{
	if (json) {
		printf("{\"bench\":\"shm\",\"ram_bytes\":%llu,\"runs\":%u,\"results\":[",
		       (unsigned long long)ram, runs);
		for (unsigned i = 0; i < n; i++) {
			struct series *s = all[i];

			printf("%s{\"name\":\"%s\",\"unit\":\"%s\",\"median\":%.3f,\"min\":%.3f,"
			       "\"max\":%.3f",
			       i ? "," : "", s->name, s->unit, median(s), smin(s), smax(s));
			if (!strcmp(s->unit, "GiB/s"))
				printf(",\"pct_of_memcpy\":%.1f", 100 * median(s) / median(mc));
			printf("}");
		}
		printf("]}\n");
	} else {
		printf("# precopy-bench-shm: %llu MiB, %u runs interleaved; median, min, max\n"
		       "# GiB/s = 2^30 bytes per second; %% is of the memcpy median of this run\n",
		       (unsigned long long)(ram >> 20), runs);
		printf("%-46s %9s %9s %9s %8s\n", "#test (unit)", "median", "min", "max", "%memcpy");
		for (unsigned i = 0; i < n; i++) {
			struct series *s = all[i];
			char unit[64];

			snprintf(unit, sizeof(unit), "%s (%s)", s->name, s->unit);
			printf("%-46s %9.3f %9.3f %9.3f", unit, median(s), smin(s), smax(s));
			if (!strcmp(s->unit, "GiB/s"))
				printf(" %7.1f%%", 100 * median(s) / median(mc));
			printf("\n");
		}
	}
}

int main(int argc, char **argv)
{
	uint64_t ram = 1ull << 30;
	unsigned runs = 3;
	bool json = false;
	struct series mc = { .name = "memcpy 4 KiB pages (baseline)", .unit = "GiB/s" },
		      tw = { .name = "shm write_pages, memfd, warm", .unit = "GiB/s" },
		      twm = { .name = "  same, incl. exposing", .unit = "GiB/s" },
		      ft = { .name = "first touch, fresh memfd (baseline)", .unit = "GiB/s" },
		      tf = { .name = "shm write_pages, memfd, fresh", .unit = "GiB/s" },
		      tfm = { .name = "  same, incl. exposing", .unit = "GiB/s" },
		      tfr = { .name = "shm write_pages, plain dest", .unit = "GiB/s" },
		      mg = { .name = "migration, copy, passes only", .unit = "GiB/s" },
		      mgt = { .name = "migration, copy, total time", .unit = "GiB/s" },
		      mgs = { .name = "migration, copy, setup", .unit = "ms" },
		      ho = { .name = "handoff downtime, stop to resume", .unit = "ms" },
		      hoe = { .name = "handoff downtime, engine figure", .unit = "ms" };
	struct series *all[] = { &mc, &tw, &twm, &ft, &tf, &tfm, &tfr, &mg, &mgt, &mgs, &ho, &hoe };
	uint8_t *src, *dst, *warm;
	struct pc_guest *g, *gm;
	int warm_fd;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--ram") && i + 1 < argc) {
			if (pc_cli_parse_size(argv[++i], &ram) || ram < BATCH || ram % BATCH)
				die("--ram: expected a multiple of 1 MiB", EINVAL);
		} else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
			runs = (unsigned)atoi(argv[++i]);
			if (runs < 1 || runs > MAXRUNS)
				die("--runs: 1..64", EINVAL);
		} else if (!strcmp(argv[i], "--json")) {
			json = true;
		} else {
			fprintf(stderr, "usage: precopy-bench-shm [--ram SIZE] [--runs N] [--json]\n");
			return 2;
		}
	}

	/* random contents (no zero pages to skip) */
	{
		struct pc_guest_opts go = { .ram = ram, .seed = 3 };

		if (pc_guest_new(&go, &g))
			die("guest", ENOMEM);
		go.memfd = true;
		if (pc_guest_new(&go, &gm))
			die("memfd guest", ENOMEM);
	}
	src = pc_guest_ram(g, NULL);
	dst = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dst == MAP_FAILED)
		die("mmap", ENOMEM);
	memset(dst, 1, ram); /* resident, like the baseline's source */
	if (precopy_memfd_alloc(ram, -1, (void **)&warm, &warm_fd))
		die("memfd", ENOMEM);
	memset(warm, 1, ram);

	for (unsigned r = 0; r < runs; r++) {
		struct precopy_stats st;
		double real, wm;
		uint8_t *fresh, *plain;
		int fresh_fd;

		mc.v[mc.n++] = bench_memcpy(src, dst, ram) / (1 << 30);
		tw.v[tw.n++] = bench_transport(src, warm, ram, warm_fd, &wm) / (1 << 30);
		twm.v[twm.n++] = wm / (1 << 30);
		ft.v[ft.n++] = bench_first_touch(ram) / (1 << 30);
		if (precopy_memfd_alloc(ram, -1, (void **)&fresh, &fresh_fd))
			die("memfd", ENOMEM);
		tf.v[tf.n++] = bench_transport(src, fresh, ram, fresh_fd, &wm) / (1 << 30);
		tfm.v[tfm.n++] = wm / (1 << 30);
		munmap(fresh, ram);
		close(fresh_fd);
		plain = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		memset(plain, 1, ram);
		tfr.v[tfr.n++] = bench_transport(src, plain, ram, -1, NULL) / (1 << 30);
		munmap(plain, ram);
		migrate_once(g, &st, &real);
		mg.v[mg.n++] = (double)ram / (1 << 30) /
			       ((double)(st.total_time - st.setup_time) / 1e3);
		mgt.v[mgt.n++] = (double)ram / (1 << 30) / ((double)st.total_time / 1e3);
		mgs.v[mgs.n++] = (double)st.setup_time;
		migrate_once(gm, &st, &real);
		ho.v[ho.n++] = real * 1e3;
		hoe.v[hoe.n++] = (double)st.downtime;
		if (!json)
			fprintf(stderr, "run %u/%u done\n", r + 1, runs);
	}

	report(json, all, sizeof(all) / sizeof(all[0]), &mc, ram, runs);
	munmap(dst, ram);
	munmap(warm, ram);
	close(warm_fd);
	pc_guest_delete(&g);
	pc_guest_delete(&gm);
	return 0;
}

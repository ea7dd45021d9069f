/* SPDX-License-Identifier: MIT */
/*
 * precopy-bench: benchmarks a person can trust.
 *
 *   precopy-bench transport [--transport T] [--sizes A-B] [--total SIZE]
 *                           [--depth N] [--channels N] [--json]
 *       For each transport present, a sweep of message sizes with a given
 *       queue depth (runs per write_pages call) and channel count, through
 *       the transport ops table, in perftest's table layout, with the CPU
 *       seconds per GiB at each end; the baseline for the transport is
 *       measured in the same run, interleaved point by point: a plain
 *       socket send/recv loop for TCP, page-by-page memcpy for shm.
 *
 *   precopy-bench migrate [--ram LIST] [--quick] [--csv FILE] [--json]
 *       A matrix of whole migrations over TCP loopback with the synthetic
 *       guest: RAM size x dirty rate (0, 10%, 50%, 150% of the link
 *       measured first) x pattern x zero-page share; per run total time,
 *       downtime, setup time, bytes sent / RAM, iterations, throttle,
 *       verified. CSV and JSON.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "guest.h"
#include "precopy.h"
#include "tp_pair.h"
#include "transport.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

static void *map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	memset(p, 0x5c, len); /* fault in: measure the transfer, not page faults */
	return p;
}

/* ------------------------------------------------------------------------ */
/* transport                                                                */
/* ------------------------------------------------------------------------ */

struct point {
	uint64_t bytes;      /* message size */
	uint64_t iters;      /* messages */
	double bw_peak;      /* MiB/s, best batch */
	double bw_avg;       /* MiB/s */
	double mpps;
	double cpu_src;      /* CPU seconds per GiB, sending thread(s) */
	double cpu_dst;      /* CPU seconds per GiB, receiving thread(s) */
};

/* @pt from @iters writes of @size bytes in @secs: the average, the peak
 * (at least the average), messages/s and each side's CPU seconds per GiB
 * from @cpu_src and @cpu_dst seconds. */
static void point_fill(struct point *pt, uint64_t size, uint64_t iters, double secs,
		       double peak, double cpu_src, double cpu_dst)
{
	double gib = (double)iters * size / GiB;

	pt->bytes = size;
	pt->iters = iters;
	pt->bw_avg = iters * size / secs / MiB;
	pt->bw_peak = peak > pt->bw_avg ? peak : pt->bw_avg;
	pt->mpps = iters / secs / 1e6;
	pt->cpu_src = cpu_src / gib;
	pt->cpu_dst = cpu_dst / gib;
}

struct tp_recv {
	struct pc_transport *t;
	unsigned chan;
	double cpu;
	int err;
};

static void *tp_receiver(void *arg)
{
	struct tp_recv *r = arg;
	uint8_t buf[64];
	double c0 = pcb_clock(CLOCK_THREAD_CPUTIME_ID);

	for (;;) {
		size_t len;

		r->err = pc_tp_recv_msg(r->t, r->chan, buf, sizeof(buf), &len);
		if (r->err || (len == 4 && !memcmp(buf, "done", 4)))
			break;
	}
	r->cpu = pcb_clock(CLOCK_THREAD_CPUTIME_ID) - c0;
	return NULL;
}

struct tp_send {
	struct pc_transport *t;
	unsigned chan, nchan, depth;
	uint8_t *src;
	size_t region;
	uint64_t size, iters;
	double cpu, peak;
	int err;
};

/* Channel @chan sends its share of @iters messages of @size bytes, @depth
 * runs per write_pages call, a marker after each batch. */
static void *tp_sender(void *arg)
{
	struct tp_send *s = arg;
	struct pc_page_run runs[64];
	uint8_t mark[4] = { 'b', 'a', 't', 'c' };
	struct iovec v = { mark, sizeof(mark) };
	uint64_t off = 0, sent = 0;
	double c0 = pcb_clock(CLOCK_THREAD_CPUTIME_ID);

	for (uint64_t i = s->chan; i < s->iters && !s->err;) {
		unsigned k = 0;
		double t0 = pcb_now(), dt;

		while (k < s->depth && i < s->iters) {
			if (off + s->size > s->region)
				off = 0;
			runs[k++] = (struct pc_page_run){ s->src + off, 0, off, s->size };
			off += s->size;
			i += s->nchan;
		}
		s->err = pc_tp_write_pages(s->t, s->chan, runs, k);
		if (!s->err)
			s->err = pc_tp_send_msg(s->t, s->chan, &v, 1);
		dt = pcb_now() - t0;
		sent += k * s->size;
		if (dt > 0 && k * s->size / dt / MiB > s->peak)
			s->peak = k * s->size / dt / MiB;
	}
	{
		struct iovec d = { "done", 4 };

		if (!s->err)
			s->err = pc_tp_send_msg(s->t, s->chan, &d, 1);
	}
	s->cpu = pcb_clock(CLOCK_THREAD_CPUTIME_ID) - c0;
	(void)sent;
	return NULL;
}

static int tp_point(struct pcb_tp_pair *p, uint8_t *src, uint8_t *dst, size_t region,
		    uint64_t size, uint64_t total, unsigned depth, struct point *pt)
{
	struct tp_send snd[PRECOPY_MAX_CHANNELS];
	struct tp_recv rcv[PRECOPY_MAX_CHANNELS];
	pthread_t ts[PRECOPY_MAX_CHANNELS], tr[PRECOPY_MAX_CHANNELS];
	uint64_t iters = total / size ? total / size : 1;
	double t0, t1, cs = 0, cr = 0, peak = 0;
	int err = 0;

	for (unsigned c = 0; c < p->nchan; c++) {
		rcv[c] = (struct tp_recv){ .t = p->b, .chan = c };
		snd[c] = (struct tp_send){ .t = p->a, .chan = c, .nchan = p->nchan, .depth = depth,
					   .src = src, .region = region, .size = size,
					   .iters = iters };
		pthread_create(&tr[c], NULL, tp_receiver, &rcv[c]);
	}
	(void)dst;
	t0 = pcb_now();
	for (unsigned c = 0; c < p->nchan; c++)
		pthread_create(&ts[c], NULL, tp_sender, &snd[c]);
	for (unsigned c = 0; c < p->nchan; c++) {
		pthread_join(ts[c], NULL);
		pthread_join(tr[c], NULL);
	}
	t1 = pcb_now();
	for (unsigned c = 0; c < p->nchan; c++) {
		err = err ? err : snd[c].err ? snd[c].err : rcv[c].err;
		cs += snd[c].cpu;
		cr += rcv[c].cpu;
		peak += snd[c].peak;
	}
	point_fill(pt, size, iters, t1 - t0, peak, cs, cr);
	return err;
}

/* Baselines. */
struct sock_sink {
	int lfd;
	uint8_t *dst;
	size_t region;
	size_t size;
	double cpu;
};

static void *sock_sink_main(void *arg)
{
	struct sock_sink *k = arg;
	int fd = accept(k->lfd, NULL, NULL);
	size_t off = 0;
	double c0 = pcb_clock(CLOCK_THREAD_CPUTIME_ID);

	while (fd >= 0) {
		ssize_t n;

		if (off + k->size > k->region)
			off = 0;
		n = recv(fd, k->dst + off, k->size, MSG_WAITALL);
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	k->cpu = pcb_clock(CLOCK_THREAD_CPUTIME_ID) - c0;
	if (fd >= 0)
		close(fd);
	return NULL;
}

static int sock_point(uint8_t *src, uint8_t *dst, size_t region, uint64_t size, uint64_t total,
		      struct point *pt)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	struct sock_sink k = { .dst = dst, .region = region, .size = size };
	uint64_t iters = total / size ? total / size : 1, off = 0;
	double t0, t1, c0, cs, peak = 0;
	pthread_t t;
	int fd, one = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	k.lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(k.lfd, (struct sockaddr *)&a, sizeof(a)) || listen(k.lfd, 1))
		return -errno;
	getsockname(k.lfd, (struct sockaddr *)&a, &al);
	pthread_create(&t, NULL, sock_sink_main, &k);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)))
		return -errno;
	c0 = pcb_clock(CLOCK_THREAD_CPUTIME_ID);
	t0 = pcb_now();
	for (uint64_t i = 0; i < iters; i++) {
		size_t done = 0;
		double b0 = pcb_now(), dt;

		if (off + size > region)
			off = 0;
		while (done < size) {
			ssize_t n = send(fd, src + off + done, size - done, 0);

			if (n <= 0)
				break;
			done += (size_t)n;
		}
		off += size;
		dt = pcb_now() - b0;
		if (dt > 0 && size / dt / MiB > peak)
			peak = size / dt / MiB;
	}
	cs = pcb_clock(CLOCK_THREAD_CPUTIME_ID) - c0;
	close(fd);
	pthread_join(t, NULL);
	t1 = pcb_now();
	close(k.lfd);
	point_fill(pt, size, iters, t1 - t0, peak, cs, k.cpu);
	return 0;
}

static int memcpy_point(uint8_t *src, uint8_t *dst, size_t region, uint64_t size,
			uint64_t total, struct point *pt)
{
	uint64_t iters = total / size ? total / size : 1, off = 0;
	double t0 = pcb_now(), c0 = pcb_clock(CLOCK_THREAD_CPUTIME_ID), t1;

	for (uint64_t i = 0; i < iters; i++) {
		if (off + size > region)
			off = 0;
		for (uint64_t p = 0; p < size; p += 4096) /* page by page, as the engine */
			memcpy(dst + off + p, src + off + p, size - p < 4096 ? size - p : 4096);
		off += size;
	}
	t1 = pcb_now();
	point_fill(pt, size, iters, t1 - t0, 0, pcb_clock(CLOCK_THREAD_CPUTIME_ID) - c0, 0);
	return 0;
}

static void print_point(bool json, const char *tp, const char *what, unsigned depth,
			unsigned nchan, const struct point *p, double ratio)
{
	if (json) {
		printf("{\"bench\":\"transport\",\"transport\":\"%s\",\"what\":\"%s\",\"bytes\":%" PRIu64
		       ",\"iterations\":%" PRIu64 ",\"depth\":%u,\"channels\":%u,\"bw_peak_MiBps\":%.1f"
		       ",\"bw_avg_MiBps\":%.1f,\"msg_rate_Mpps\":%.4f,\"cpu_s_per_GiB_src\":%.3f"
		       ",\"cpu_s_per_GiB_dst\":%.3f,\"ratio\":%.3f}\n",
		       tp, what, p->bytes, p->iters, depth, nchan, p->bw_peak, p->bw_avg, p->mpps,
		       p->cpu_src, p->cpu_dst, ratio);
		return;
	}
	printf(" %-9s %-9s %9" PRIu64 " %11" PRIu64 " %15.1f %18.1f %14.4f %9.3f %9.3f",
	       tp, what, p->bytes, p->iters, p->bw_peak, p->bw_avg, p->mpps, p->cpu_src,
	       p->cpu_dst);
	if (ratio > 0)
		printf(" %7.2f", ratio);
	printf("\n");
}

/* precopy-bench transport's command line. */
struct tp_args {
	const char *only; /* --transport, or NULL: all */
	uint64_t lo, hi, total;
	unsigned depth, nchan;
	bool json;
};

static int tp_usage(void)
{
	fprintf(stderr, "usage: precopy-bench transport [--transport T] [--sizes 4K-8M] [--total SIZE]"
			" [--depth 1..64] [--channels 1..16] [--json]\n");
	return 2;
}

/* Return: 0, or the exit status 2 with the usage printed. */
static int tp_parse_args(int argc, char **argv, struct tp_args *a)
{
	for (int i = 0; i < argc; i++) {
		uint64_t v;

		if (!strcmp(argv[i], "--transport") && i + 1 < argc)
			a->only = argv[++i];
		else if (!strcmp(argv[i], "--sizes") && i + 1 < argc) {
			char *dash = strchr(argv[++i], '-');

			if (!dash)
				return tp_usage();
			*dash = '\0';
			if (pc_cli_parse_size(argv[i], &a->lo) || pc_cli_parse_size(dash + 1, &a->hi) ||
			    a->lo < 4096 || a->hi < a->lo || a->hi > 64 * MiB)
				return tp_usage();
		} else if (!strcmp(argv[i], "--total") && i + 1 < argc &&
			   !pc_cli_parse_size(argv[++i], &a->total) && a->total >= 4096)
			continue;
		else if (!strcmp(argv[i], "--depth") && i + 1 < argc &&
			 !pc_cli_parse_u64(argv[++i], &v) && v >= 1 && v <= 64)
			a->depth = (unsigned)v;
		else if (!strcmp(argv[i], "--channels") && i + 1 < argc &&
			 !pc_cli_parse_u64(argv[++i], &v) && v >= 1 && v <= PRECOPY_MAX_CHANNELS)
			a->nchan = (unsigned)v;
		else if (!strcmp(argv[i], "--json"))
			a->json = true;
		else
			return tp_usage();
	}
	return 0;
}

static void tp_print_head(const struct tp_args *a)
{
	printf("# precopy-bench transport: depth %u (runs per write), %u channel(s), %s per point\n",
	       a->depth, a->nchan, pc_cli_fmt_bytes((double)a->total, (char[32]){ 0 }, 32));
	printf("# baseline interleaved point by point: tcp = plain socket send/recv loop, shm = page-by-page memcpy\n# (shm writes into a memfd destination, framed: the destination does not share it)\n");
	printf("# BW in MiB/s (2^20 bytes/s); CPU in seconds per GiB moved\n");
	printf(" %-9s %-9s %9s %11s %15s %18s %14s %9s %9s %7s\n", "transport", "what",
	       "#bytes", "#iterations", "BW peak[MiB/s]", "BW average[MiB/s]",
	       "MsgRate[Mpps]", "CPU src", "CPU dst", "ratio");
}

/* Where @scheme's destination listens, into @buf. Return: false if it
 * cannot run here (said unless @json). */
static bool tp_listen_addr(const char *scheme, bool json, char *buf, size_t len)
{
	if (!strcmp(scheme, "tcp"))
		snprintf(buf, len, "127.0.0.1:0");
	else if (!strcmp(scheme, "shm"))
		snprintf(buf, len, "/tmp/precopy-bench-%d.sock", getpid());
	else if (getenv("PRECOPY_RDMA_ADDR"))
		snprintf(buf, len, "%s:0", getenv("PRECOPY_RDMA_ADDR"));
	else {
		if (!json)
			printf("# %s: skipped (no PRECOPY_RDMA_ADDR; run under soft-roce-setup/run)\n",
			       scheme);
		return false;
	}
	return true;
}

/* The pair's destination exposes its region (shm: memfd RAM, into
 * @shdst and @shfd, exposed with its fd as the engine does), the source
 * registers @src, and the two exchange a "ready" message. Return: 0 or
 * -errno. */
static int tp_prepare(struct pcb_tp_pair *p, bool shm, uint8_t *src, uint8_t *dst, size_t region,
		      uint8_t **shdst, int *shfd)
{
	struct iovec rv = { "redy", 4 };
	uint8_t rb[16];
	size_t rl;
	int err;

	if (shm) {
		void *a;

		err = precopy_memfd_alloc(region, -1, &a, shfd);
		if (err)
			return err;
		*shdst = a;
		memset(*shdst, 0x5c, region);
		err = pc_tp_expose_region_fd(p->b, 0, *shdst, region, *shfd, 0);
		if (err == -EOPNOTSUPP)
			err = pc_tp_expose_region(p->b, 0, *shdst, region);
	} else {
		err = pc_tp_expose_region(p->b, 0, dst, region);
	}
	if (!err)
		err = pc_tp_reg_local(p->a, src, region);
	/* As the engine does (HELLO_ACK): the destination says it is ready
	 * after exposing its region, and the source reads that, taking in
	 * whatever the transport sent along (shm's fd, RDMA's keys) before
	 * its first write. */
	if (!err)
		err = pc_tp_send_msg(p->b, 0, &rv, 1);
	if (!err)
		err = pc_tp_recv_msg(p->a, 0, rb, sizeof(rb), &rl);
	return err;
}

/* Every size from lo to hi (x4) over @p, each beside its baseline.
 * Return: 0, or 1 with the failure printed. */
static int tp_sizes(const struct tp_args *a, const char *scheme, struct pcb_tp_pair *p,
		    uint8_t *src, uint8_t *dst, size_t region)
{
	for (uint64_t size = a->lo; size <= a->hi; size *= 4) {
		struct point base = { 0 }, me = { 0 };
		bool have_base = true;
		int err = 0;

		if (!strcmp(scheme, "tcp"))
			err = sock_point(src, dst, region, size, a->total, &base);
		else if (!strcmp(scheme, "shm"))
			err = memcpy_point(src, dst, region, size, a->total, &base);
		else
			have_base = false; /* rdma: ib_write_bw, see bench/rdma-bench.sh */
		if (have_base && !err)
			print_point(a->json, scheme, "baseline", 1, 1, &base, 0);
		err = tp_point(p, src, dst, region, size, a->total, a->depth, &me);
		if (err) {
			fprintf(stderr, "precopy-bench: %s at %" PRIu64 " bytes: %s\n", scheme, size,
				strerror(-err));
			return 1;
		}
		print_point(a->json, scheme, "precopy", a->depth, a->nchan, &me,
			    have_base && base.bw_avg > 0 ? me.bw_avg / base.bw_avg : 0);
		if (size < a->hi && size * 4 > a->hi)
			size = a->hi / 4; /* end exactly at hi */
	}
	return 0;
}

static int cmd_transport(int argc, char **argv)
{
	struct tp_args a = { .lo = 4096, .hi = 8 * MiB, .total = 512 * MiB, .depth = 16,
			     .nchan = 1 };
	size_t region = 64 * MiB;
	uint8_t *src, *dst;
	const char *schemes[] = { "tcp", "shm", "rdma" };
	int rc = tp_parse_args(argc, argv, &a);

	if (rc)
		return rc;
	if (region < a.hi * a.depth)
		region = a.hi * a.depth;
	src = map(region);
	dst = map(region);
	if (!src || !dst) {
		fprintf(stderr, "precopy-bench: cannot map 2 x %zu bytes\n", region);
		return 1;
	}
	if (!a.json)
		tp_print_head(&a);
	for (size_t s = 0; s < sizeof(schemes) / sizeof(schemes[0]); s++) {
		const struct pc_transport_ops *ops = pc_transport_find(schemes[s]);
		char listen[256];
		struct pcb_tp_pair p;
		uint8_t *shdst = NULL;
		int shfd = -1, err;

		if ((a.only && strcmp(a.only, schemes[s])) || !ops ||
		    !tp_listen_addr(schemes[s], a.json, listen, sizeof(listen)))
			continue;
		err = pcb_tp_open(&p, ops, listen, a.nchan);
		if (!err)
			err = tp_prepare(&p, !strcmp(schemes[s], "shm"), src, dst, region, &shdst,
					 &shfd);
		if (err) {
			fprintf(stderr, "precopy-bench: %s: cannot connect: %s\n", schemes[s],
				strerror(-err));
			rc = 1;
		} else if (tp_sizes(&a, schemes[s], &p, src, dst, region)) {
			rc = 1;
		}
		pcb_tp_close(&p);
		if (shdst) {
			munmap(shdst, region);
			close(shfd);
		}
	}
	munmap(src, region);
	munmap(dst, region);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* migrate                                                                  */
/* ------------------------------------------------------------------------ */

struct mig_dest {
	struct precopy_session *s;
	int err;
	struct pc_guest_desc desc; /* the device state: magic set once taken */
};

static void *mig_dest_main(void *arg)
{
	struct mig_dest *d = arg;

	d->err = precopy_incoming(d->s);
	return NULL;
}

struct mig_result {
	int err;
	struct precopy_stats st;
	bool verified;
	unsigned max_throttle;
};

static void mig_run(uint64_t ram, double rate, enum pc_guest_pattern pat, unsigned zero_pct,
		    struct mig_result *r)
{
	struct pc_guest_opts go = { .ram = ram, .dirty_rate = rate, .pattern = pat,
				    .threads = 1, .zero_pct = zero_pct, .seed = 5 };
	struct precopy_callbacks cb;
	struct precopy_callbacks dcb = { .load_device_state = pc_guest_load_desc };
	struct precopy_params p;
	struct precopy_session *s = NULL;
	struct mig_dest d = { 0 };
	struct pc_guest *g = NULL;
	char uri[128], why[256];
	void *dst = NULL;
	pthread_t t;

	memset(r, 0, sizeof(*r));
	precopy_params_init(&p);
	p.auto_converge = true; /* the matrix includes guests faster than the link */
	p.max_time_ms = 60000;  /* and the watchdog ends what still does not converge */
	r->err = pc_guest_new(&go, &g);
	if (r->err)
		return;
	cb = pc_guest_callbacks(g, NULL, NULL);
	dcb.opaque = &d.desc;
	dst = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dst == MAP_FAILED) {
		r->err = -ENOMEM;
		dst = NULL;
		goto out;
	}
	if ((r->err = precopy_new(PRECOPY_ROLE_DEST, NULL, &dcb, &d.s)) ||
	    (r->err = precopy_add_region(d.s, dst, ram, PRECOPY_DIRTY_AUTO)) < 0 ||
	    (r->err = precopy_listen(d.s, "tcp:127.0.0.1:0")) ||
	    (r->err = precopy_local_uri(d.s, uri, sizeof(uri))) ||
	    (r->err = precopy_new(PRECOPY_ROLE_SOURCE, &p, &cb, &s)) ||
	    (r->err = precopy_add_region(s, pc_guest_ram(g, NULL), ram, PRECOPY_DIRTY_AUTO)) < 0 ||
	    (r->err = pc_guest_start(g)))
		goto out;
	pthread_create(&t, NULL, mig_dest_main, &d);
	r->err = precopy_migrate(s, uri);
	pthread_join(t, NULL);
	if (!r->err)
		r->err = d.err;
	precopy_query(s, &r->st);
	r->verified = !r->err && d.desc.magic == PC_GUEST_MAGIC &&
		      pc_guest_verify(dst, ram, &d.desc, why, sizeof(why)) == 0;
out:
	if (s)
		precopy_delete(&s);
	if (d.s)
		precopy_delete(&d.s);
	if (dst)
		munmap(dst, ram);
	pc_guest_delete(&g);
}

/* One point of precopy-bench migrate: what was migrated. */
struct mig_case {
	uint64_t ram;
	double share, rate; /* dirty rate: a share of the link, and bytes/s */
	const char *pattern;
	unsigned zero_pct;
};

/* @r for @c as a CSV row (if @csv), and a JSON or table line. */
static void mig_print(FILE *csv, bool json, const struct mig_case *c, const struct mig_result *r)
{
	const struct precopy_stats *st = &r->st;
	double per_ram = (double)st->transferred / c->ram;
	char how[16];

	snprintf(how, sizeof(how), "%s",
		 r->err ? precopy_status_name(st->status)
			: st->forced_switchover ? "forced" : "converged");
	if (csv)
		fprintf(csv, "%llu,%.2f,%.0f,%s,%u,%" PRIu64 ",%" PRIu64 ",%" PRIu64
			     ",%.3f,%u,%u,%s,%s,\"%s\"\n",
			(unsigned long long)c->ram, c->share, c->rate, c->pattern, c->zero_pct,
			st->total_time, st->downtime, st->setup_time, per_ram, st->iteration,
			st->cpu_throttle_percentage, r->verified ? "yes" : "no", how, st->error);
	if (json)
		printf("{\"bench\":\"migrate\",\"ram\":%llu,\"dirty_share\":%.2f,"
		       "\"dirty_rate\":%.0f,\"pattern\":\"%s\",\"zero_pct\":%u,"
		       "\"total_ms\":%" PRIu64 ",\"downtime_ms\":%" PRIu64
		       ",\"setup_ms\":%" PRIu64 ",\"bytes_per_ram\":%.3f,"
		       "\"iterations\":%u,\"throttle\":%u,\"verified\":%s,"
		       "\"status\":\"%s\"}\n",
		       (unsigned long long)c->ram, c->share, c->rate, c->pattern, c->zero_pct,
		       st->total_time, st->downtime, st->setup_time, per_ram, st->iteration,
		       st->cpu_throttle_percentage, r->verified ? "true" : "false", how);
	else
		printf("%-8llu %5.0f%% %-10s %4u%% %9" PRIu64 " %9" PRIu64
		       " %8" PRIu64 " %9.2f %5u %7u%% %8s %s\n",
		       (unsigned long long)(c->ram >> 20), c->share * 100, c->pattern, c->zero_pct,
		       st->total_time, st->downtime, st->setup_time, per_ram, st->iteration,
		       st->cpu_throttle_percentage, r->verified ? "yes" : "NO", how);
	fflush(stdout);
}

/* precopy-bench migrate's command line. */
struct mig_args {
	uint64_t rams[8];
	unsigned nram;
	bool json, quick;
	const char *csv_path;
};

/* Return: 0, or the exit status 2 with the usage printed. */
static int mig_parse_args(int argc, char **argv, struct mig_args *a)
{
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--ram") && i + 1 < argc) {
			char *list = argv[++i], *tok, *save = NULL;

			a->nram = 0;
			for (tok = strtok_r(list, ",", &save); tok && a->nram < 8;
			     tok = strtok_r(NULL, ",", &save))
				if (pc_cli_parse_size(tok, &a->rams[a->nram++]) ||
				    a->rams[a->nram - 1] % 4096 || !a->rams[a->nram - 1])
					goto usage;
		} else if (!strcmp(argv[i], "--csv") && i + 1 < argc)
			a->csv_path = argv[++i];
		else if (!strcmp(argv[i], "--json"))
			a->json = true;
		else if (!strcmp(argv[i], "--quick"))
			a->quick = true;
		else
			goto usage;
	}
	return 0;
usage:
	fprintf(stderr, "usage: precopy-bench migrate [--ram 256M,1G,4G] [--quick] [--csv FILE] [--json]\n");
	return 2;
}

static int cmd_migrate(int argc, char **argv)
{
	struct mig_args a = { .rams = { 256 * MiB, GiB, 4 * GiB }, .nram = 3 };
	const double shares[] = { 0, 0.10, 0.50, 1.50 };
	const enum pc_guest_pattern pats[] = { PC_GUEST_SEQUENTIAL, PC_GUEST_RANDOM,
					       PC_GUEST_HOTSET };
	const char *pat_name[] = { "sequential", "random", "hotset" };
	const unsigned zeros[] = { 0, 50 };
	FILE *csv = NULL;
	struct sysinfo si;
	struct point link;
	uint8_t *m1, *m2;
	double link_bps;
	int rc = mig_parse_args(argc, argv, &a);

	if (rc)
		return rc;
	if (a.csv_path) {
		csv = fopen(a.csv_path, "w");
		if (!csv) {
			perror(a.csv_path);
			return 1;
		}
		fprintf(csv, "ram,dirty_share,dirty_rate,pattern,zero_pct,total_ms,downtime_ms,"
			     "setup_ms,bytes_per_ram,iterations,throttle,verified,status,error\n");
	}
	/* The link, measured first: a plain socket loop over loopback. */
	m1 = map(256 * MiB);
	m2 = map(256 * MiB);
	if (!m1 || !m2 || sock_point(m1, m2, 256 * MiB, MiB, 1024 * MiB, &link))
		return 1;
	munmap(m1, 256 * MiB);
	munmap(m2, 256 * MiB);
	link_bps = link.bw_avg * MiB;
	sysinfo(&si);
	if (!a.json)
		printf("# precopy-bench migrate: TCP loopback, link measured at %.0f MiB/s (socket send loop);"
		       " auto-converge on, max-time 60 s\n"
		       "%-8s %6s %-10s %5s %9s %9s %8s %9s %5s %8s %8s %s\n",
		       link.bw_avg, "#ram", "dirty", "pattern", "zero", "total ms", "down ms",
		       "setup ms", "sent/RAM", "iter", "throttle", "verified", "status");
	for (unsigned ri = 0; ri < a.nram; ri++) {
		uint64_t ram = a.rams[ri];

		if ((double)ram * 2.5 > (double)si.freeram * si.mem_unit) {
			if (!a.json)
				printf("# %llu MiB: skipped, not enough free memory for both ends\n",
				       (unsigned long long)(ram >> 20));
			continue;
		}
		for (size_t di = 0; di < sizeof(shares) / sizeof(shares[0]); di++)
			for (size_t pi = 0; pi < 3; pi++)
				for (size_t zi = 0; zi < 2; zi++) {
					struct mig_case c = { ram, shares[di], shares[di] * link_bps,
							      pat_name[pi], zeros[zi] };
					struct mig_result r;

					if (a.quick && (pi || zi || (di && di != 2)))
						continue;
					if (di == 0 && pi) /* an idle guest has no pattern */
						continue;
					mig_run(ram, c.rate, pats[pi], zeros[zi], &r);
					mig_print(csv, a.json, &c, &r);
				}
	}
	if (csv)
		fclose(csv);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "transport"))
		return cmd_transport(argc - 2, argv + 2);
	if (argc >= 2 && !strcmp(argv[1], "migrate"))
		return cmd_migrate(argc - 2, argv + 2);
	fprintf(stderr,
		"usage: precopy-bench transport [--transport T] [--sizes 4K-8M] [--total SIZE] [--depth N]"
		" [--channels N] [--json]\n"
		"       precopy-bench migrate [--ram 256M,1G,4G] [--quick] [--csv FILE] [--json]\n");
	return 2;
}

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
#include "guest.h"
#include "precopy.h"
#include "transport.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double thread_cpu_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

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
	double c0 = thread_cpu_s();

	for (;;) {
		size_t len;

		r->err = pc_tp_recv_msg(r->t, r->chan, buf, sizeof(buf), &len);
		if (r->err || (len == 4 && !memcmp(buf, "done", 4)))
			break;
	}
	r->cpu = thread_cpu_s() - c0;
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
	double c0 = thread_cpu_s();

	for (uint64_t i = s->chan; i < s->iters && !s->err;) {
		unsigned k = 0;
		double t0 = now_s(), dt;

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
		dt = now_s() - t0;
		sent += k * s->size;
		if (dt > 0 && k * s->size / dt / MiB > s->peak)
			s->peak = k * s->size / dt / MiB;
	}
	{
		struct iovec d = { "done", 4 };

		if (!s->err)
			s->err = pc_tp_send_msg(s->t, s->chan, &d, 1);
	}
	s->cpu = thread_cpu_s() - c0;
	(void)sent;
	return NULL;
}

struct tp_pair {
	const struct pc_transport_ops *ops;
	struct pc_listener *l;
	struct pc_transport *a, *b;
	char addr[256];
	unsigned nchan;
	int cerr;
};

static void *tp_connect(void *arg)
{
	struct tp_pair *p = arg;
	struct pc_transport_opts o = { .channels = p->nchan };

	p->cerr = p->ops->connect(p->addr, &o, &p->a);
	return NULL;
}

static int tp_open(struct tp_pair *p, const struct pc_transport_ops *ops, const char *listen,
		   unsigned nchan)
{
	struct pc_transport_opts o = { 0 };
	char uri[300];
	pthread_t t;
	int err;

	memset(p, 0, sizeof(*p));
	p->ops = ops;
	p->nchan = nchan;
	err = ops->listen(listen, &o, &p->l);
	if (err)
		return err;
	ops->listener_addr(p->l, uri, sizeof(uri));
	snprintf(p->addr, sizeof(p->addr), "%s", strchr(uri, ':') + 1);
	pthread_create(&t, NULL, tp_connect, p);
	err = ops->accept(p->l, &o, &p->b);
	pthread_join(t, NULL);
	if (!err)
		err = p->cerr;
	return err;
}

static void tp_close(struct tp_pair *p)
{
	pc_tp_close(p->a);
	pc_tp_close(p->b);
	if (p->l)
		p->ops->listener_close(p->l);
}

static int tp_point(struct tp_pair *p, uint8_t *src, uint8_t *dst, size_t region,
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
	t0 = now_s();
	for (unsigned c = 0; c < p->nchan; c++)
		pthread_create(&ts[c], NULL, tp_sender, &snd[c]);
	for (unsigned c = 0; c < p->nchan; c++) {
		pthread_join(ts[c], NULL);
		pthread_join(tr[c], NULL);
	}
	t1 = now_s();
	for (unsigned c = 0; c < p->nchan; c++) {
		err = err ? err : snd[c].err ? snd[c].err : rcv[c].err;
		cs += snd[c].cpu;
		cr += rcv[c].cpu;
		peak += snd[c].peak;
	}
	pt->bytes = size;
	pt->iters = iters;
	pt->bw_avg = iters * size / (t1 - t0) / MiB;
	pt->bw_peak = peak > pt->bw_avg ? peak : pt->bw_avg;
	pt->mpps = iters / (t1 - t0) / 1e6;
	pt->cpu_src = cs / ((double)iters * size / GiB);
	pt->cpu_dst = cr / ((double)iters * size / GiB);
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
	double c0 = thread_cpu_s();

	while (fd >= 0) {
		ssize_t n;

		if (off + k->size > k->region)
			off = 0;
		n = recv(fd, k->dst + off, k->size, MSG_WAITALL);
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	k->cpu = thread_cpu_s() - c0;
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
	c0 = thread_cpu_s();
	t0 = now_s();
	for (uint64_t i = 0; i < iters; i++) {
		size_t done = 0;
		double b0 = now_s(), dt;

		if (off + size > region)
			off = 0;
		while (done < size) {
			ssize_t n = send(fd, src + off + done, size - done, 0);

			if (n <= 0)
				break;
			done += (size_t)n;
		}
		off += size;
		dt = now_s() - b0;
		if (dt > 0 && size / dt / MiB > peak)
			peak = size / dt / MiB;
	}
	cs = thread_cpu_s() - c0;
	close(fd);
	pthread_join(t, NULL);
	t1 = now_s();
	close(k.lfd);
	pt->bytes = size;
	pt->iters = iters;
	pt->bw_avg = iters * size / (t1 - t0) / MiB;
	pt->bw_peak = peak > pt->bw_avg ? peak : pt->bw_avg;
	pt->mpps = iters / (t1 - t0) / 1e6;
	pt->cpu_src = cs / ((double)iters * size / GiB);
	pt->cpu_dst = k.cpu / ((double)iters * size / GiB);
	return 0;
}

static int memcpy_point(uint8_t *src, uint8_t *dst, size_t region, uint64_t size,
			uint64_t total, struct point *pt)
{
	uint64_t iters = total / size ? total / size : 1, off = 0;
	double t0 = now_s(), c0 = thread_cpu_s(), t1;

	for (uint64_t i = 0; i < iters; i++) {
		if (off + size > region)
			off = 0;
		for (uint64_t p = 0; p < size; p += 4096) /* page by page, as the engine */
			memcpy(dst + off + p, src + off + p, size - p < 4096 ? size - p : 4096);
		off += size;
	}
	t1 = now_s();
	pt->bytes = size;
	pt->iters = iters;
	pt->bw_avg = pt->bw_peak = iters * size / (t1 - t0) / MiB;
	pt->mpps = iters / (t1 - t0) / 1e6;
	pt->cpu_src = (thread_cpu_s() - c0) / ((double)iters * size / GiB);
	pt->cpu_dst = 0;
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

static int cmd_transport(int argc, char **argv)
{
	const char *only = NULL;
	uint64_t lo = 4096, hi = 8 * MiB, total = 512 * MiB;
	unsigned depth = 16, nchan = 1;
	bool json = false;
	size_t region = 64 * MiB;
	uint8_t *src, *dst;
	const char *schemes[] = { "tcp", "shm", "rdma" };
	int rc = 0;

	for (int i = 0; i < argc; i++) {
		uint64_t v;

		if (!strcmp(argv[i], "--transport") && i + 1 < argc)
			only = argv[++i];
		else if (!strcmp(argv[i], "--sizes") && i + 1 < argc) {
			char *dash = strchr(argv[++i], '-');

			if (!dash)
				goto usage;
			*dash = '\0';
			if (pc_cli_parse_size(argv[i], &lo) || pc_cli_parse_size(dash + 1, &hi) ||
			    lo < 4096 || hi < lo || hi > 64 * MiB)
				goto usage;
		} else if (!strcmp(argv[i], "--total") && i + 1 < argc &&
			   !pc_cli_parse_size(argv[++i], &total) && total >= 4096)
			continue;
		else if (!strcmp(argv[i], "--depth") && i + 1 < argc &&
			 !pc_cli_parse_u64(argv[++i], &v) && v >= 1 && v <= 64)
			depth = (unsigned)v;
		else if (!strcmp(argv[i], "--channels") && i + 1 < argc &&
			 !pc_cli_parse_u64(argv[++i], &v) && v >= 1 && v <= PRECOPY_MAX_CHANNELS)
			nchan = (unsigned)v;
		else if (!strcmp(argv[i], "--json"))
			json = true;
		else
			goto usage;
	}
	if (region < hi * depth)
		region = hi * depth;
	src = map(region);
	dst = map(region);
	if (!src || !dst) {
		fprintf(stderr, "precopy-bench: cannot map 2 x %zu bytes\n", region);
		return 1;
	}
	if (!json) {
		printf("# precopy-bench transport: depth %u (runs per write), %u channel(s), %s per point\n",
		       depth, nchan, pc_cli_fmt_bytes((double)total, (char[32]){ 0 }, 32));
		printf("# baseline interleaved point by point: tcp = plain socket send/recv loop, shm = page-by-page memcpy\n# (shm writes into a memfd destination, framed: the destination does not share it)\n");
		printf("# BW in MiB/s (2^20 bytes/s); CPU in seconds per GiB moved\n");
		printf(" %-9s %-9s %9s %11s %15s %18s %14s %9s %9s %7s\n", "transport", "what",
		       "#bytes", "#iterations", "BW peak[MiB/s]", "BW average[MiB/s]",
		       "MsgRate[Mpps]", "CPU src", "CPU dst", "ratio");
	}
	for (size_t s = 0; s < sizeof(schemes) / sizeof(schemes[0]); s++) {
		const struct pc_transport_ops *ops = pc_transport_find(schemes[s]);
		char listen[256];
		struct tp_pair p;
		int err;

		if (only && strcmp(only, schemes[s]))
			continue;
		if (!ops)
			continue;
		if (!strcmp(schemes[s], "tcp"))
			snprintf(listen, sizeof(listen), "127.0.0.1:0");
		else if (!strcmp(schemes[s], "shm"))
			snprintf(listen, sizeof(listen), "/tmp/precopy-bench-%d.sock", getpid());
		else if (getenv("PRECOPY_RDMA_ADDR"))
			snprintf(listen, sizeof(listen), "%s:0", getenv("PRECOPY_RDMA_ADDR"));
		else {
			if (!json)
				printf("# %s: skipped (no PRECOPY_RDMA_ADDR; run under soft-roce-setup/run)\n",
				       schemes[s]);
			continue;
		}
		uint8_t *shdst = NULL;
		int shfd = -1;

		err = tp_open(&p, ops, listen, nchan);
		if (!err && !strcmp(schemes[s], "shm")) {
			/* memfd RAM, exposed with its fd as the engine does */
			void *a;

			err = precopy_memfd_alloc(region, -1, &a, &shfd);
			if (!err) {
				shdst = a;
				memset(shdst, 0x5c, region);
				err = p.b->ops->expose_region_fd(p.b, 0, shdst, region, shfd, 0);
				if (err == -EOPNOTSUPP)
					err = p.b->ops->expose_region(p.b, 0, shdst, region);
			}
		} else if (!err)
			err = p.b->ops->expose_region(p.b, 0, dst, region);
		if (!err)
			err = p.a->ops->reg_local(p.a, src, region);
		if (!err) {
			/* As the engine does (HELLO_ACK): the destination says it is
			 * ready after exposing its region, and the source reads that,
			 * taking in whatever the transport sent along (shm's fd, RDMA's
			 * keys) before its first write. */
			struct iovec rv = { "redy", 4 };
			uint8_t rb[16];
			size_t rl;

			err = pc_tp_send_msg(p.b, 0, &rv, 1);
			if (!err)
				err = pc_tp_recv_msg(p.a, 0, rb, sizeof(rb), &rl);
		}
		if (err) {
			fprintf(stderr, "precopy-bench: %s: cannot connect: %s\n", schemes[s],
				strerror(-err));
			tp_close(&p);
			rc = 1;
			continue;
		}
		for (uint64_t size = lo; size <= hi; size *= 4) {
			struct point base = { 0 }, me = { 0 };
			bool have_base = true;

			if (!strcmp(schemes[s], "tcp"))
				err = sock_point(src, dst, region, size, total, &base);
			else if (!strcmp(schemes[s], "shm"))
				err = memcpy_point(src, dst, region, size, total, &base);
			else
				have_base = false; /* rdma: ib_write_bw, see bench/rdma-bench.sh */
			if (have_base && !err)
				print_point(json, schemes[s], "baseline", 1, 1, &base, 0);
			err = tp_point(&p, src, dst, region, size, total, depth, &me);
			if (err) {
				fprintf(stderr, "precopy-bench: %s at %" PRIu64 " bytes: %s\n",
					schemes[s], size, strerror(-err));
				rc = 1;
				break;
			}
			print_point(json, schemes[s], "precopy", depth, nchan, &me,
				    have_base && base.bw_avg > 0 ? me.bw_avg / base.bw_avg : 0);
			if (size < hi && size * 4 > hi)
				size = hi / 4; /* end exactly at hi */
		}
		tp_close(&p);
		if (shdst) {
			munmap(shdst, region);
			close(shfd);
		}
	}
	munmap(src, region);
	munmap(dst, region);
	return rc;
usage:
	fprintf(stderr, "usage: precopy-bench transport [--transport T] [--sizes 4K-8M] [--total SIZE]"
			" [--depth 1..64] [--channels 1..16] [--json]\n");
	return 2;
}

/* ------------------------------------------------------------------------ */
/* migrate                                                                  */
/* ------------------------------------------------------------------------ */

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
	struct pc_guest_desc desc = { 0 }; /* the device state: magic set once taken */
	struct pc_cli_dest d = { 0 };
	struct pc_guest *g = NULL;
	char why[256];
	void *dst = NULL;

	memset(r, 0, sizeof(*r));
	precopy_params_init(&p);
	p.auto_converge = true; /* the matrix includes guests faster than the link */
	p.max_time_ms = 60000;  /* and the watchdog ends what still does not converge */
	r->err = pc_guest_new(&go, &g);
	if (r->err)
		return;
	cb = pc_guest_callbacks(g, NULL, NULL);
	dcb.opaque = &desc;
	dst = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dst == MAP_FAILED) {
		r->err = -ENOMEM;
		dst = NULL;
		goto out;
	}
	if ((r->err = pc_cli_dest_listen(&d, &dcb, dst, ram, "tcp:127.0.0.1:0", true)) ||
	    (r->err = precopy_new(PRECOPY_ROLE_SOURCE, &p, &cb, &s)) ||
	    (r->err = precopy_add_region(s, pc_guest_ram(g, NULL), ram, PRECOPY_DIRTY_AUTO)) < 0 ||
	    (r->err = pc_guest_start(g)) || (r->err = pc_cli_dest_start(&d)))
		goto out;
	r->err = precopy_migrate(s, d.uri);
	if (pc_cli_dest_join(&d) && !r->err)
		r->err = d.err;
	precopy_query(s, &r->st);
	r->verified = !r->err && desc.magic == PC_GUEST_MAGIC &&
		      pc_guest_verify(dst, ram, &desc, why, sizeof(why)) == 0;
out:
	if (s)
		precopy_delete(&s);
	pc_cli_dest_free(&d);
	if (dst)
		munmap(dst, ram);
	pc_guest_delete(&g);
}

static int cmd_migrate(int argc, char **argv)
{
	uint64_t rams[8] = { 256 * MiB, GiB, 4 * GiB };
	unsigned nram = 3;
	const double shares[] = { 0, 0.10, 0.50, 1.50 };
	const enum pc_guest_pattern pats[] = { PC_GUEST_SEQUENTIAL, PC_GUEST_RANDOM,
					       PC_GUEST_HOTSET };
	const char *pat_name[] = { "sequential", "random", "hotset" };
	const unsigned zeros[] = { 0, 50 };
	bool json = false, quick = false;
	const char *csv_path = NULL;
	FILE *csv = NULL;
	struct sysinfo si;
	struct point link;
	uint8_t *a, *b;
	double link_bps;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--ram") && i + 1 < argc) {
			char *list = argv[++i], *tok, *save = NULL;

			nram = 0;
			for (tok = strtok_r(list, ",", &save); tok && nram < 8;
			     tok = strtok_r(NULL, ",", &save))
				if (pc_cli_parse_size(tok, &rams[nram++]) || rams[nram - 1] % 4096 ||
				    !rams[nram - 1])
					goto usage;
		} else if (!strcmp(argv[i], "--csv") && i + 1 < argc)
			csv_path = argv[++i];
		else if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--quick"))
			quick = true;
		else
			goto usage;
	}
	if (csv_path) {
		csv = fopen(csv_path, "w");
		if (!csv) {
			perror(csv_path);
			return 1;
		}
		fprintf(csv, "ram,dirty_share,dirty_rate,pattern,zero_pct,total_ms,downtime_ms,"
			     "setup_ms,bytes_per_ram,iterations,throttle,verified,status,error\n");
	}
	/* The link, measured first: a plain socket loop over loopback. */
	a = map(256 * MiB);
	b = map(256 * MiB);
	if (!a || !b || sock_point(a, b, 256 * MiB, MiB, 1024 * MiB, &link))
		return 1;
	munmap(a, 256 * MiB);
	munmap(b, 256 * MiB);
	link_bps = link.bw_avg * MiB;
	sysinfo(&si);
	if (!json)
		printf("# precopy-bench migrate: TCP loopback, link measured at %.0f MiB/s (socket send loop);"
		       " auto-converge on, max-time 60 s\n"
		       "%-8s %6s %-10s %5s %9s %9s %8s %9s %5s %8s %8s %s\n",
		       link.bw_avg, "#ram", "dirty", "pattern", "zero", "total ms", "down ms",
		       "setup ms", "sent/RAM", "iter", "throttle", "verified", "status");
	for (unsigned ri = 0; ri < nram; ri++) {
		uint64_t ram = rams[ri];

		if ((double)ram * 2.5 > (double)si.freeram * si.mem_unit) {
			if (!json)
				printf("# %llu MiB: skipped, not enough free memory for both ends\n",
				       (unsigned long long)(ram >> 20));
			continue;
		}
		for (size_t di = 0; di < sizeof(shares) / sizeof(shares[0]); di++)
			for (size_t pi = 0; pi < 3; pi++)
				for (size_t zi = 0; zi < 2; zi++) {
					struct mig_result r;
					double rate = shares[di] * link_bps;
					char st[16];

					if (quick && (pi || zi || (di && di != 2)))
						continue;
					if (di == 0 && pi) /* an idle guest has no pattern */
						continue;
					mig_run(ram, rate, pats[pi], zeros[zi], &r);
					snprintf(st, sizeof(st), "%s",
						 r.err ? precopy_status_name(r.st.status)
						       : r.st.forced_switchover ? "forced"
										: "converged");
					if (csv)
						fprintf(csv,
							"%llu,%.2f,%.0f,%s,%u,%" PRIu64 ",%" PRIu64
							",%" PRIu64 ",%.3f,%u,%u,%s,%s,\"%s\"\n",
							(unsigned long long)ram, shares[di], rate,
							pat_name[pi], zeros[zi], r.st.total_time,
							r.st.downtime, r.st.setup_time,
							(double)r.st.transferred / ram, r.st.iteration,
							r.st.cpu_throttle_percentage,
							r.verified ? "yes" : "no", st, r.st.error);
					if (json)
						printf("{\"bench\":\"migrate\",\"ram\":%llu,\"dirty_share\":%.2f,"
						       "\"dirty_rate\":%.0f,\"pattern\":\"%s\",\"zero_pct\":%u,"
						       "\"total_ms\":%" PRIu64 ",\"downtime_ms\":%" PRIu64
						       ",\"setup_ms\":%" PRIu64 ",\"bytes_per_ram\":%.3f,"
						       "\"iterations\":%u,\"throttle\":%u,\"verified\":%s,"
						       "\"status\":\"%s\"}\n",
						       (unsigned long long)ram, shares[di], rate,
						       pat_name[pi], zeros[zi], r.st.total_time,
						       r.st.downtime, r.st.setup_time,
						       (double)r.st.transferred / ram, r.st.iteration,
						       r.st.cpu_throttle_percentage,
						       r.verified ? "true" : "false", st);
					else
						printf("%-8llu %5.0f%% %-10s %4u%% %9" PRIu64 " %9" PRIu64
						       " %8" PRIu64 " %9.2f %5u %7u%% %8s %s\n",
						       (unsigned long long)(ram >> 20), shares[di] * 100,
						       pat_name[pi], zeros[zi], r.st.total_time,
						       r.st.downtime, r.st.setup_time,
						       (double)r.st.transferred / ram, r.st.iteration,
						       r.st.cpu_throttle_percentage,
						       r.verified ? "yes" : "NO", st);
					fflush(stdout);
				}
	}
	if (csv)
		fclose(csv);
	return 0;
usage:
	fprintf(stderr, "usage: precopy-bench migrate [--ram 256M,1G,4G] [--quick] [--csv FILE] [--json]\n");
	return 2;
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

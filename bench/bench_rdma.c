/* SPDX-License-Identifier: MIT */
/*
 * precopy-bench-rdma: precopy's RDMA transport against perftest's
 * ib_write_bw on the same device in the same run, plus CPU per GiB.
 *
 *   precopy-bench-rdma [--addr IPV4] [--dev NAME] [--mib N] [--ram SIZE] [--json]
 *
 * 1. ib_write_bw -s 1048576 -n N (server and client on --addr), the baseline;
 * 2. a loop of write_pages() of 1 MiB runs through the rdma transport (one
 *    channel; a message every 16 writes, an ack at the end), and the same
 *    loop through the tcp transport on 127.0.0.1; for both, the sending
 *    thread's CPU time (CLOCK_THREAD_CPUTIME_ID) per GiB sent;
 * 3. a whole migration of an idle --ram guest over rdma (throughput =
 *    RAM / total time), with the time spent registering source memory.
 * --addr and --dev default to PRECOPY_RDMA_ADDR / PRECOPY_RDMA_DEV (set by
 * soft-roce-setup/run). Throughputs in MiB/s (2^20 bytes/s; perftest's
 * "MB/sec" is the same unit).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "config.h"
#include "guest.h"
#include "precopy.h"
#include "transport.h"
#if PRECOPY_HAVE_RDMA
#include "rdma.h"
#endif

#define MiB (1ull << 20)

/* --- 1. ib_write_bw ------------------------------------------------------ */

static double ib_write_bw(const char *dev, const char *addr, unsigned iters)
{
	char cmd[512], line[512];
	double bw = 0;
	pid_t srv;
	FILE *f;

	srv = fork();
	if (srv == 0) {
		char n[16];

		snprintf(n, sizeof(n), "%u", iters);
		if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr))
			_exit(127);
		execlp("ib_write_bw", "ib_write_bw", "-d", dev, "-s", "1048576", "-n", n, "-F",
		       (char *)NULL);
		_exit(127);
	}
	sleep(2);
	snprintf(cmd, sizeof(cmd), "ib_write_bw -d %s -s 1048576 -n %u -F %s 2>&1", dev, iters,
		 addr);
	f = popen(cmd, "r");
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long bytes, it;
		double peak, avg;

		if (sscanf(line, " %lu %lu %lf %lf", &bytes, &it, &peak, &avg) == 4 &&
		    bytes == 1048576)
			bw = avg;
	}
	if (f)
		pclose(f);
	kill(srv, SIGTERM);
	waitpid(srv, NULL, 0);
	return bw;
}

/* --- 2. write_pages loop ----------------------------------------------------- */

struct loop {
	const struct pc_transport_ops *ops;
	struct pc_listener *l;
	struct pc_transport *a, *b;
	char addr[256];
	uint8_t *src, *dst;
	size_t region;
	int err;
};

static void *loop_dest(void *arg)
{
	struct loop *p = arg;
	struct pc_transport_opts o = { 0 };
	uint8_t msg[64];
	size_t len;

	p->err = pc_tp_accept(p->l, &o, &p->b);
	if (!p->err)
		p->err = pc_tp_expose_region(p->b, 0, p->dst, p->region);
	while (!p->err) {
		p->err = pc_tp_recv_msg(p->b, 0, msg, sizeof(msg), &len);
		if (!p->err && len == 3) { /* "end" */
			struct iovec v = { msg, 3 };

			p->err = pc_tp_send_msg(p->b, 0, &v, 1);
			break;
		}
	}
	return NULL;
}

struct loop_result {
	double mibps, cpu_per_gib, reg_ms;
	int err;
};

static struct loop_result write_loop(const char *scheme, const char *listen, unsigned mib,
				     uint8_t *src, uint8_t *dst, size_t region)
{
	struct loop p = { .src = src, .dst = dst, .region = region };
	struct loop_result r = { 0 };
	struct pc_transport_opts o = { .channels = 1 };
	char uri[300], msg[8] = "tick";
	struct iovec v = { msg, 4 };
	pthread_t t;
	double w0, c0, w1, c1;
	size_t len;

	p.ops = pc_transport_find(scheme);
	if (!p.ops || pc_tp_listen(p.ops, listen, &o, &p.l) ||
	    pc_tp_listener_addr(p.l, uri, sizeof(uri))) {
		r.err = -ENODEV;
		return r;
	}
	pthread_create(&t, NULL, loop_dest, &p);
	r.err = pc_tp_connect(p.ops, strchr(uri, ':') + 1, &o, &p.a);
	if (r.err)
		goto out_join;
	/* wait for the region key: the dest's first message on channel 0 is
	 * internal for rdma; for tcp there is nothing to wait for */
	w0 = pcb_clock(CLOCK_MONOTONIC);
	c0 = pcb_clock(CLOCK_THREAD_CPUTIME_ID);
	r.err = pc_tp_reg_local(p.a, src, region);
	for (unsigned i = 0; !r.err && i < mib; i++) {
		size_t off = ((size_t)i * MiB) % region;
		struct pc_page_run run = { src + off, 0, off, MiB };

		r.err = pc_tp_write_pages(p.a, 0, &run, 1);
		if (!r.err && (i % 16 == 15 || i + 1 == mib))
			r.err = pc_tp_send_msg(p.a, 0, &v, 1);
	}
	if (!r.err) {
		v.iov_len = 3;
		memcpy(msg, "end", 3);
		r.err = pc_tp_send_msg(p.a, 0, &v, 1);
	}
	if (!r.err)
		r.err = pc_tp_recv_msg(p.a, 0, msg, sizeof(msg), &len);
	w1 = pcb_clock(CLOCK_MONOTONIC);
	c1 = pcb_clock(CLOCK_THREAD_CPUTIME_ID);
	if (!r.err) {
		r.mibps = mib / (w1 - w0);
		r.cpu_per_gib = (c1 - c0) / (mib / 1024.0);
	}
#if PRECOPY_HAVE_RDMA
	{
		struct pc_rdma_stats st;

		if (pc_rdma_stats(p.a, &st) == 0)
			r.reg_ms = st.reg_ns / 1e6;
	}
#endif
out_join:
	if (r.err && p.b)
		pc_tp_abort(p.b);
	if (r.err)
		pc_tp_listener_abort(p.l);
	pthread_join(t, NULL);
	if (!r.err && p.err)
		r.err = p.err;
	pc_tp_close(p.a);
	pc_tp_close(p.b);
	pc_tp_listener_close(p.l);
	return r;
}

/* --- 3. a whole migration ------------------------------------------------------ */

static int migrate_once(const char *listen, void *src, uint8_t *dst, size_t len,
			struct precopy_stats *out, double *cpu)
{
	struct pcb_pair p;
	int err = pcb_pair_open(&p, listen, src, dst, len, NULL, NULL, true);

	if (!err) {
		double c0 = pcb_clock(CLOCK_PROCESS_CPUTIME_ID);

		err = pcb_pair_migrate(&p);
		*cpu = pcb_clock(CLOCK_PROCESS_CPUTIME_ID) - c0;
		precopy_query(p.src, out);
	}
	pcb_pair_close(&p);
	return err;
}

/* What was measured (MiB/s, CPU s/GiB). */
struct figures {
	double b1, b2, base;         /* ib_write_bw before and after, their mean */
	struct loop_result rr, tr;   /* write_pages loops: rdma, tcp */
	double mig, mig_cpu_per_gib; /* the whole migration */
};

static void report(bool json, const char *dev, const char *addr, unsigned mib, uint64_t ram,
		   size_t region, const struct figures *f)
{
	if (json) {
		printf("{\"bench\":\"rdma\",\"mib\":%u,\"ib_write_bw_MiBps\":%.2f,"
		       "\"rdma_write_loop_MiBps\":%.2f,\"ratio\":%.3f,"
		       "\"rdma_cpu_s_per_GiB\":%.3f,\"tcp_write_loop_MiBps\":%.1f,"
		       "\"tcp_cpu_s_per_GiB\":%.3f,\"rdma_reg_ms\":%.2f,"
		       "\"migrate_ram\":%llu,\"migrate_MiBps\":%.2f,\"migrate_ratio\":%.3f}\n",
		       mib, f->base, f->rr.mibps, f->base > 0 ? f->rr.mibps / f->base : 0,
		       f->rr.cpu_per_gib, f->tr.mibps, f->tr.cpu_per_gib, f->rr.reg_ms,
		       (unsigned long long)ram, f->mig, f->base > 0 ? f->mig / f->base : 0);
	} else {
		printf("# %s on %s, 1 MiB writes, %u MiB per measurement; MiB/s = 2^20 B/s\n", dev,
		       addr, mib);
		printf("%-44s %10s %14s\n", "#what", "MiB/s", "CPU s/GiB");
		printf("%-44s %10.2f %14s\n", "ib_write_bw -s 1048576 (before)", f->b1, "-");
		printf("%-44s %10.2f %14s\n", "ib_write_bw -s 1048576 (after)", f->b2, "-");
		printf("%-44s %10.2f %14.3f\n", "precopy rdma write_pages loop (1 QP)", f->rr.mibps,
		       f->rr.cpu_per_gib);
		printf("%-44s %10.1f %14.3f\n", "precopy tcp write_pages loop (127.0.0.1)",
		       f->tr.mibps, f->tr.cpu_per_gib);
		printf("%-44s %10.2f %14.3f\n", "precopy rdma whole migration (idle guest)", f->mig,
		       f->mig_cpu_per_gib);
		printf("ratio rdma loop / ib_write_bw (mean of before and after): %.2f "
		       "(goal >= 0.90)\n",
		       f->base > 0 ? f->rr.mibps / f->base : 0);
		printf("ratio rdma migration / ib_write_bw: %.2f\n",
		       f->base > 0 ? f->mig / f->base : 0);
		printf("source memory registration (on-demand 16 MiB chunks, %zu MiB): %.2f ms\n",
		       region >> 20, f->rr.reg_ms);
		printf("CPU: sending thread's time for the loops; whole process (both ends) for "
		       "the migration\n");
	}
}

int main(int argc, char **argv)
{
	const char *addr = getenv("PRECOPY_RDMA_ADDR"), *dev = getenv("PRECOPY_RDMA_DEV");
	uint64_t ram = 64 * MiB, v;
	unsigned mib = 128;
	bool json = false;
	char listen[160];
	struct precopy_stats st;
	struct figures fig = { 0 };
	double mcpu = 0;
	size_t region = 64 * MiB;
	uint8_t *src, *dst;
	struct pc_guest_opts go = { .seed = 7 };
	struct pc_guest *g;
	int err;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--addr") && i + 1 < argc)
			addr = argv[++i];
		else if (!strcmp(argv[i], "--dev") && i + 1 < argc)
			dev = argv[++i];
		else if (!strcmp(argv[i], "--mib") && i + 1 < argc &&
			 !pc_cli_parse_u64(argv[++i], &v) && v >= 16 && v <= 65536)
			mib = (unsigned)v;
		else if (!strcmp(argv[i], "--ram") && i + 1 < argc &&
			 !pc_cli_parse_size(argv[++i], &v) && v && v % 4096 == 0)
			ram = v;
		else if (!strcmp(argv[i], "--json"))
			json = true;
		else {
			fprintf(stderr, "usage: precopy-bench-rdma [--addr IPV4] [--dev NAME] "
				"[--mib N] [--ram SIZE] [--json]\n");
			return 2;
		}
	}
	if (!pc_transport_find("rdma")) {
		printf("precopy-bench-rdma: the RDMA transport is not built in: skipped\n");
		return 77;
	}
	if (!addr || !dev) {
		printf("precopy-bench-rdma: no device (run it under soft-roce-setup/run, "
		       "or give --addr and --dev): skipped\n");
		return 77;
	}
	src = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dst = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (src == MAP_FAILED || dst == MAP_FAILED)
		return 1;
	for (size_t i = 0; i < region; i++)
		src[i] = (uint8_t)(i * 2654435761u >> 13);
	memset(dst, 1, region);

	/* the baseline before and after precopy's loop, averaged, so drift
	 * on a shared machine hits both sides alike */
	fig.b1 = ib_write_bw(dev, addr, mib);
	snprintf(listen, sizeof(listen), "%s:0", addr);
	fig.rr = write_loop("rdma", listen, mib, src, dst, region);
	fig.b2 = ib_write_bw(dev, addr, mib);
	fig.base = fig.b1 > 0 && fig.b2 > 0 ? (fig.b1 + fig.b2) / 2 : 0;
	fig.tr = write_loop("tcp", "127.0.0.1:0", mib, src, dst, region);
	if (fig.rr.err || fig.tr.err) {
		fprintf(stderr, "precopy-bench-rdma: write loop failed: rdma %s, tcp %s\n",
			strerror(-fig.rr.err), strerror(-fig.tr.err));
		return 1;
	}
	if (memcmp(src, dst, region) != 0) {
		fprintf(stderr, "precopy-bench-rdma: destination differs after the loops\n");
		return 1;
	}

	go.ram = ram;
	if (pc_guest_new(&go, &g))
		return 1;
	munmap(dst, region);
	dst = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dst == MAP_FAILED)
		return 1;
	snprintf(listen, sizeof(listen), "rdma:%s:0", addr);
	err = migrate_once(listen, pc_guest_ram(g, NULL), dst, ram, &st, &mcpu);
	if (err) {
		fprintf(stderr, "precopy-bench-rdma: migration failed: %s (%s)\n", strerror(-err),
			st.error);
		return 1;
	}
	fig.mig = (double)ram / MiB / (st.total_time / 1e3);
	fig.mig_cpu_per_gib = mcpu / ((double)ram / (1 << 30));
	report(json, dev, addr, mib, ram, region, &fig);
	munmap(src, region);
	munmap(dst, ram);
	pc_guest_delete(&g);
	return 0;
}

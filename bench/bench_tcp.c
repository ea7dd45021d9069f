/* SPDX-License-Identifier: MIT */
/*
 * precopy-bench-tcp: migrate N bytes of random-content memory (no dirtying)
 * over TCP loopback, one channel, and compare the throughput with a plain
 * socket send loop of the same bytes measured in the same run,
 * interleaved. Also reports the idle guest's downtime.
 *
 * With --cold, the destination's memory is fresh (never touched) in every
 * migration, as a destination VMM's is, and two migrations are compared
 * each run: one whose destination populates it when it starts listening
 * (the default; not timed, the source has not connected yet, as QEMU's
 * -mem-prealloc is not) and one that takes a page fault per page while
 * receiving (the "populate" parameter = 0).
 *
 *   precopy-bench-tcp [--ram SIZE] [--runs N] [--cold] [--json]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "guest.h"
#include "precopy.h"

/* --- precopy: a whole migration of an idle guest -------------------------- */

static int migrate_once(void *src, uint8_t *dst, size_t len, bool populate,
			struct precopy_stats *out, struct precopy_stats *dout)
{
	struct pcb_pair p;
	int err = pcb_pair_open(&p, "tcp:127.0.0.1:0", src, dst, len, NULL, NULL, populate);

	if (!err) {
		err = pcb_pair_migrate(&p);
		precopy_query(p.src, out);
		precopy_query(p.d.s, dout);
	}
	pcb_pair_close(&p);
	return err;
}

/* One migration into fresh memory; MiB/s of the whole migration (as the
 * source saw it), the destination's faults while receiving and populate
 * time. */
static int cold_once(void *src, size_t len, bool populate, double *mibps, double *faults,
		     double *pop_ms)
{
	struct precopy_stats st, dst_st;
	uint8_t *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int err;

	if (dst == MAP_FAILED)
		return -ENOMEM;
	memset(&st, 0, sizeof(st));
	memset(&dst_st, 0, sizeof(dst_st));
	err = migrate_once(src, dst, len, populate, &st, &dst_st);
	munmap(dst, len);
	if (err) {
		fprintf(stderr, "precopy-bench-tcp: migration failed: %s (%s)\n", strerror(-err),
			st.error);
		return err;
	}
	*mibps = (double)len / ((double)st.total_time / 1e3) / 1048576;
	*faults = (double)dst_st.page_faults;
	*pop_ms = (double)dst_st.populate_ms;
	return 0;
}


static int run_cold(void *src, size_t ram, unsigned runs, bool json)
{
	double pop[16], fault[16], fpop[16], ffault[16], pms[16], unused;

	for (unsigned r = 0; r < runs; r++) {
		/* alternate which goes first: neither always gets the quieter machine */
		bool first = r % 2 == 0;

		if (cold_once(src, ram, first, first ? &pop[r] : &fault[r],
			      first ? &fpop[r] : &ffault[r], first ? &pms[r] : &unused) ||
		    cold_once(src, ram, !first, first ? &fault[r] : &pop[r],
			      first ? &ffault[r] : &fpop[r], first ? &unused : &pms[r]))
			return 1;
	}
	qsort(pop, runs, sizeof(double), pcb_cmp_double);
	qsort(fault, runs, sizeof(double), pcb_cmp_double);
	qsort(fpop, runs, sizeof(double), pcb_cmp_double);
	qsort(ffault, runs, sizeof(double), pcb_cmp_double);
	qsort(pms, runs, sizeof(double), pcb_cmp_double);
	if (json) {
		printf("{\"bench\":\"tcp-cold\",\"ram\":%llu,\"runs\":%u,"
		       "\"populated_MiBps\":%.1f,\"populated_faults\":%.0f,\"populate_ms\":%.0f,"
		       "\"faulting_MiBps\":%.1f,\"faulting_faults\":%.0f,"
		       "\"populated_s_per_GiB\":%.3f,\"faulting_s_per_GiB\":%.3f}\n",
		       (unsigned long long)ram, runs, pop[runs / 2], fpop[runs / 2], pms[runs / 2],
		       fault[runs / 2], ffault[runs / 2], 1024 / pop[runs / 2],
		       1024 / fault[runs / 2]);
	} else {
		printf("# TCP loopback, one channel, %llu MiB of random content into fresh destination memory; median of %u interleaved runs\n",
		       (unsigned long long)(ram >> 20), runs);
		printf("%-36s %10s %10s %14s\n", "#destination memory", "MiB/s", "s/GiB",
		       "faults (dest)");
		printf("%-36s %10.1f %10.3f %14.0f\n", "populated at listen (not timed)",
		       pop[runs / 2], 1024 / pop[runs / 2], fpop[runs / 2]);
		printf("%-36s %10.1f %10.3f %14.0f\n", "not populated (--no-populate)",
		       fault[runs / 2], 1024 / fault[runs / 2], ffault[runs / 2]);
		printf("populate took %.0f ms before the source connected; speed-up %.2fx\n",
		       pms[runs / 2], pop[runs / 2] / fault[runs / 2]);
	}
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t ram = 1ull << 30;
	unsigned runs = 3;
	bool json = false, cold = false;
	struct pc_guest_opts go = { .seed = 7 };
	struct pc_guest *g;
	double base[16], pc[16], down[16];
	uint8_t *dst;
	void *src;

	for (int i = 1; i < argc; i++) {
		uint64_t v;

		if (!strcmp(argv[i], "--ram") && i + 1 < argc &&
		    !pc_cli_parse_size(argv[++i], &v) && v && v % 4096 == 0)
			ram = v;
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc &&
			 !pc_cli_parse_u64(argv[++i], &v) && v >= 1 && v <= 16)
			runs = (unsigned)v;
		else if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--cold"))
			cold = true;
		else {
			fprintf(stderr, "usage: precopy-bench-tcp [--ram SIZE] [--runs 1..16] [--cold] [--json]\n");
			return 2;
		}
	}
	go.ram = ram;
	if (pc_guest_new(&go, &g)) {
		fprintf(stderr, "precopy-bench-tcp: cannot allocate %llu bytes\n",
			(unsigned long long)ram);
		return 1;
	}
	src = pc_guest_ram(g, NULL);
	if (cold)
		return run_cold(src, ram, runs, json);
	dst = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dst == MAP_FAILED)
		return 1;
	memset(dst, 1, ram); /* fault it in once for both */

	for (unsigned r = 0; r < runs; r++) {
		struct precopy_stats st;
		int err;

		base[r] = pcb_loopback_rate(src, dst, ram);
		struct precopy_stats dst_st;

		err = migrate_once(src, dst, ram, true, &st, &dst_st);
		if (err) {
			fprintf(stderr, "precopy-bench-tcp: migration failed: %s (%s)\n",
				strerror(-err), st.error);
			return 1;
		}
		pc[r] = (double)ram / ((double)st.total_time / 1e3);
		down[r] = (double)st.downtime;
	}
	qsort(base, runs, sizeof(double), pcb_cmp_double);
	qsort(pc, runs, sizeof(double), pcb_cmp_double);
	qsort(down, runs, sizeof(double), pcb_cmp_double);
	{
		double b = base[runs / 2], p = pc[runs / 2], d = down[runs / 2];

		if (json) {
			printf("{\"bench\":\"tcp-migrate\",\"ram\":%llu,\"runs\":%u,"
			       "\"baseline_MiBps\":%.1f,\"precopy_MiBps\":%.1f,\"ratio\":%.3f,"
			       "\"idle_downtime_ms\":%.1f}\n",
			       (unsigned long long)ram, runs, b / 1048576, p / 1048576, p / b, d);
		} else {
			printf("# TCP loopback, one channel, %llu MiB of random content, no dirtying; median of %u interleaved runs\n",
			       (unsigned long long)(ram >> 20), runs);
			printf("%-34s %12s\n", "#what", "MiB/s");
			printf("%-34s %12.1f\n", "socket send loop (baseline)", b / 1048576);
			printf("%-34s %12.1f\n", "precopy migrate (whole migration)", p / 1048576);
			printf("ratio precopy/baseline: %.2f (goal >= 0.50)\n", p / b);
			printf("idle guest downtime: %.1f ms (goal < 20 ms)\n", d);
		}
	}
	munmap(dst, ram);
	pc_guest_delete(&g);
	return 0;
}

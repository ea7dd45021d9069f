/* SPDX-License-Identifier: MIT */
/*
 * precopy-bench-simulate: does `precopy simulate` predict a real migration?
 * Each scenario runs a real migration over TCP loopback with the synthetic
 * guest, on a link held to RATE by max-bandwidth (and the switchover
 * decided on the same RATE through avail-switchover-bandwidth), and then
 * the simulator on the same figures. Prints iterations and total time side
 * by side with their ratio; the goal is agreement within 25%.
 *
 *   precopy-bench-simulate [--ram SIZE] [--json] [--quick]
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cli.h"
#include "common.h"
#include "guest.h"
#include "precopy.h"
#include "sim.h"

#define MiB (1ull << 20)

struct scenario {
	const char *name;
	enum pc_guest_pattern pattern;
	uint64_t link;      /* bytes/s */
	uint64_t dirty;     /* bytes/s */
	bool auto_converge;
};

static const struct scenario scenarios[] = {
	{ "sequential d/b=0.25", PC_GUEST_SEQUENTIAL, 128 * MiB, 32 * MiB, false },
	{ "sequential d/b=0.5", PC_GUEST_SEQUENTIAL, 128 * MiB, 64 * MiB, false },
	{ "random d/b=0.5", PC_GUEST_RANDOM, 128 * MiB, 64 * MiB, false },
	{ "hotset d/b=0.75", PC_GUEST_HOTSET, 128 * MiB, 96 * MiB, false },
	{ "random d/b=1.5 auto-converge", PC_GUEST_RANDOM, 128 * MiB, 192 * MiB, true },
};

static int guest_stop(void *o) { return pc_guest_pause(o); }
static int guest_resume(void *o) { return pc_guest_resume(o); }
static int guest_throttle(void *o, unsigned pct) { return pc_guest_set_throttle(o, pct); }

static void params_for(const struct scenario *sc, struct precopy_params *p)
{
	precopy_params_init(p);
	p->max_bandwidth = sc->link;
	p->avail_switchover_bandwidth = sc->link;
	p->auto_converge = sc->auto_converge;
	p->max_time_ms = 120000;
	p->on_limit = PRECOPY_ON_LIMIT_ABORT;
}

static int real_run(const struct scenario *sc, uint64_t ram, struct precopy_stats *st)
{
	struct pc_guest_opts go = { .ram = ram, .dirty_rate = (double)sc->dirty,
				    .pattern = sc->pattern, .threads = 1, .seed = 3 };
	struct precopy_callbacks cb = { .stop_vm = guest_stop, .resume_vm = guest_resume,
					.set_throttle = guest_throttle };
	struct precopy_params p;
	struct pcb_pair pair = { 0 };
	struct pc_guest *g;
	void *dst;
	int err;

	params_for(sc, &p);
	if (pc_guest_new(&go, &g))
		return -ENOMEM;
	cb.opaque = g;
	dst = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	err = dst == MAP_FAILED ? -ENOMEM : 0;
	if (!err)
		err = pcb_pair_open(&pair, "tcp:127.0.0.1:0", pc_guest_ram(g, NULL), dst, ram, &p,
				    &cb, true);
	if (!err)
		err = pc_guest_start(g);
	if (!err) {
		err = pcb_pair_migrate(&pair);
		precopy_query(pair.src, st);
	}
	pcb_pair_close(&pair);
	if (dst != MAP_FAILED)
		munmap(dst, ram);
	pc_guest_delete(&g);
	return err;
}

static int sim_run(const struct scenario *sc, uint64_t ram, struct pc_sim_result *r)
{
	struct pc_sim_params in;

	pc_sim_params_init(&in);
	params_for(sc, &in.policy);
	in.ram_bytes = ram;
	in.link_bps = sc->link;
	in.dirty_bps = sc->dirty;
	in.pattern = sc->pattern == PC_GUEST_SEQUENTIAL ? PC_SIM_SEQUENTIAL
		     : sc->pattern == PC_GUEST_RANDOM   ? PC_SIM_UNIFORM
							: PC_SIM_HOTSET;
	return pc_sim_run(&in, r, NULL, NULL);
}

static bool within(double a, double b, double tol)
{
	double hi = a > b ? a : b, lo = a > b ? b : a;

	return hi == 0 || (hi - lo) / hi <= tol;
}

int main(int argc, char **argv)
{
	uint64_t ram = 256 * MiB;
	bool json = false, quick = false;
	size_t n = sizeof(scenarios) / sizeof(scenarios[0]);
	unsigned agree = 0;

	for (int i = 1; i < argc; i++) {
		uint64_t v;

		if (!strcmp(argv[i], "--ram") && i + 1 < argc && !pc_cli_parse_size(argv[++i], &v) &&
		    v >= MiB && v % 4096 == 0)
			ram = v;
		else if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--quick"))
			quick = true;
		else {
			fprintf(stderr, "usage: precopy-bench-simulate [--ram SIZE] [--json] [--quick]\n");
			return 2;
		}
	}
	if (quick)
		n = 1;
	if (!json) {
		printf("# real migration (TCP loopback, link held by max-bandwidth) vs precopy simulate, %llu MiB\n",
		       (unsigned long long)(ram >> 20));
		printf("%-30s %10s %10s %10s %10s %10s %10s %8s\n", "#scenario", "iter real",
		       "iter sim", "time real", "time sim", "throt real", "throt sim", "agree");
	}
	for (size_t i = 0; i < n; i++) {
		const struct scenario *sc = &scenarios[i];
		struct precopy_stats st;
		struct pc_sim_result r;
		double treal, tsim;
		unsigned iter_real;
		bool ok;
		int err;

		memset(&st, 0, sizeof(st));
		err = real_run(sc, ram, &st);
		if (err) {
			fprintf(stderr, "precopy-bench-simulate: %s: real migration failed: %s (%s)\n",
				sc->name, strerror(-err), st.error);
			return 1;
		}
		err = sim_run(sc, ram, &r);
		if (err) {
			fprintf(stderr, "precopy-bench-simulate: %s: %s\n", sc->name, r.error);
			pc_sim_result_free(&r);
			return 1;
		}
		/* the real count's last pass is the switchover burst */
		iter_real = st.iteration ? st.iteration - 1 : 0;
		treal = st.total_time / 1e3;
		tsim = r.total_ns / 1e9;
		/* iterations: passes after bulk, the final burst not counted */
		ok = within(treal, tsim, 0.25) &&
		     (within(iter_real, r.passes - 1.0, 0.25) ||
		      fabs((double)iter_real - (r.passes - 1.0)) <= 1);
		agree += ok;
		if (json)
			printf("{\"bench\":\"simulate-vs-real\",\"scenario\":\"%s\",\"ram\":%llu,"
			       "\"iterations_real\":%u,\"iterations_sim\":%u,\"time_real_s\":%.3f,"
			       "\"time_sim_s\":%.3f,\"throttle_real\":%u,\"throttle_sim\":%u,"
			       "\"agree\":%s}\n",
			       sc->name, (unsigned long long)ram, iter_real, r.passes - 1, treal,
			       tsim, st.cpu_throttle_percentage, r.max_throttle,
			       ok ? "true" : "false");
		else
			printf("%-30s %10u %10u %9.2fs %9.2fs %9u%% %9u%% %8s\n", sc->name,
			       iter_real, r.passes - 1, treal, tsim, st.cpu_throttle_percentage,
			       r.max_throttle, ok ? "yes" : "NO");
		pc_sim_result_free(&r);
	}
	if (!json)
		printf("%u of %zu scenarios agree within 25%% on total time and iterations "
		       "(iterations within 25%% or 1)\n",
		       agree, n);
	return 0;
}

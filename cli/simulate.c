/* SPDX-License-Identifier: MIT */
/*
 * simulate.c - `precopy simulate`: run the policy controller against a
 * model of the link and the guest (engine/policy/sim.h) and print what a
 * migration would do: passes, total time, downtime, bytes sent, throttle.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "sim.h"

static void json_event(void *opaque, const struct pc_sim_event *ev)
{
	(void)opaque;
	if (ev->kind == PC_SIM_EV_SECOND)
		printf("{\"event\":\"second\",\"t\":%.3f,\"pass\":%u,\"remaining\":%" PRIu64
		       ",\"dirty-rate\":%.0f,\"bandwidth-busy\":%.0f,\"bandwidth-wall\":%.0f"
		       ",\"throttle\":%u}\n",
		       ev->t_ns / 1e9, ev->pass, ev->remaining, ev->dirty_bps, ev->bw_busy,
		       ev->bw_wall, ev->throttle);
	else
		printf("{\"event\":\"pass\",\"t\":%.3f,\"pass\":%u,\"sent\":%" PRIu64
		       ",\"remaining\":%" PRIu64 ",\"expected-downtime-ms\":%.1f"
		       ",\"bandwidth-busy\":%.0f,\"bandwidth-wall\":%.0f,\"throttle\":%u}\n",
		       ev->t_ns / 1e9, ev->pass, ev->row->bytes_sent, ev->row->remaining,
		       ev->row->expected_downtime_ns == UINT64_MAX
			       ? -1.0
			       : ev->row->expected_downtime_ns / 1e6,
		       ev->row->bw_busy, ev->row->bw_wall, ev->row->throttle);
}

int pc_cli_simulate(struct pc_cli *c)
{
	struct pc_sim_params in;
	struct pc_sim_result r;
	char a[32], b[32], d[32];
	int err;

	if (!c->ram || !c->bandwidth) {
		fprintf(stderr, "precopy simulate: --ram SIZE and --bandwidth RATE are required\n");
		return 2;
	}
	if (c->dirty_rate < 0) {
		fprintf(stderr, "precopy simulate: --dirty-rate needs a rate, not 'max'\n");
		return 2;
	}
	pc_sim_params_init(&in);
	in.policy = c->params;
	in.ram_bytes = c->ram;
	in.link_bps = (uint64_t)c->bandwidth;
	in.dirty_bps = (uint64_t)c->dirty_rate;
	in.pattern = c->pattern == PC_GUEST_SEQUENTIAL ? PC_SIM_SEQUENTIAL
		     : c->pattern == PC_GUEST_RANDOM   ? PC_SIM_UNIFORM
						       : PC_SIM_HOTSET;
	in.zero_fraction = c->zero_pct / 100.0;
	in.free_fraction = c->free_pct / 100.0;
	if (in.zero_fraction + in.free_fraction > 1.0) {
		fprintf(stderr, "precopy simulate: --zero-pct and --free-pct add up to over 100\n");
		return 2;
	}
	in.estimator = c->estimator_wall ? PC_SIM_EST_WALL : PC_SIM_EST_BUSY;
	in.rtt_ns = c->rtt_us * 1000;
	in.queue_bytes = c->send_queue;
	in.scan_ns_per_page = (double)c->page_cost_ns;
	in.cpu_ns_per_page = (double)c->zero_page_cost_ns;

	err = pc_sim_run(&in, &r, c->json ? json_event : NULL, NULL);
	if (err) {
		fprintf(stderr, "precopy simulate: %s\n", r.error[0] ? r.error : strerror(-err));
		pc_sim_result_free(&r);
		return err == -EINVAL ? 2 : 1;
	}
	if (c->json) {
		printf("{\"event\":\"result\",\"outcome\":\"%s\",\"reason\":\"%s\",\"passes\":%u"
		       ",\"iterations\":%u,\"total-time-ms\":%.1f,\"downtime-ms\":%.1f"
		       ",\"expected-downtime-ms\":%.1f,\"downtime-limit-ms\":%" PRIu64
		       ",\"bytes-sent\":%" PRIu64 ",\"ram-multiple\":%.3f,\"max-throttle\":%u}\n",
		       pc_sim_outcome_name(r.outcome), r.reason, r.passes,
		       r.passes ? r.passes - 1 : 0, r.total_ns / 1e6, r.downtime_ns / 1e6,
		       r.expected_downtime_ns == UINT64_MAX ? -1.0 : r.expected_downtime_ns / 1e6,
		       c->params.downtime_limit_ms, r.bytes_sent, r.ram_multiple, r.max_throttle);
		pc_sim_result_free(&r);
		return 0;
	}
	printf("precopy simulate: %s of RAM, link %s/s, guest writes %s/s (%s), %s estimate\n",
	       pc_cli_fmt_bytes((double)in.ram_bytes, a, sizeof(a)),
	       pc_cli_fmt_bytes((double)in.link_bps, b, sizeof(b)),
	       pc_cli_fmt_bytes((double)in.dirty_bps, d, sizeof(d)),
	       pc_sim_pattern_name(in.pattern), c->estimator_wall ? "wall-time" : "busy-time");
	printf("%5s %10s %12s %12s %12s %8s %12s %12s\n", "pass", "end s", "sent", "remaining",
	       "exp.downtime", "throttle", "bw busy/s", "bw wall/s");
	for (size_t i = 0; i < r.npass; i++) {
		const struct pc_sim_pass *p = &r.pass[i];
		char s1[32], s2[32], s3[32], s4[32], ed[32];

		if (p->expected_downtime_ns == UINT64_MAX)
			snprintf(ed, sizeof(ed), "-");
		else
			snprintf(ed, sizeof(ed), "%.1f ms", p->expected_downtime_ns / 1e6);
		printf("%5u %10.3f %12s %12s %12s %7u%% %12s %12s\n", p->pass, p->end_ns / 1e9,
		       pc_cli_fmt_bytes((double)p->bytes_sent, s1, sizeof(s1)),
		       pc_cli_fmt_bytes((double)p->remaining, s2, sizeof(s2)), ed, p->throttle,
		       pc_cli_fmt_bytes(p->bw_busy, s3, sizeof(s3)),
		       pc_cli_fmt_bytes(p->bw_wall, s4, sizeof(s4)));
	}
	printf("outcome: %s", pc_sim_outcome_name(r.outcome));
	if (r.outcome != PC_SIM_CONVERGED)
		printf(" (%s)", r.reason);
	printf(" after %u passes (bulk + %u iterations) in %.2f s\n", r.passes,
	       r.passes ? r.passes - 1 : 0, r.total_ns / 1e9);
	if (r.outcome != PC_SIM_ABORTED)
		printf("downtime: %.1f ms (limit %" PRIu64 " ms)\n", r.downtime_ns / 1e6,
		       c->params.downtime_limit_ms);
	printf("sent: %s (%.2fx RAM); highest throttle %u%%\n",
	       pc_cli_fmt_bytes((double)r.bytes_sent, a, sizeof(a)), r.ram_multiple,
	       r.max_throttle);
	pc_sim_result_free(&r);
	return 0;
}

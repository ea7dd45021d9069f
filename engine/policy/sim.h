/* SPDX-License-Identifier: MIT */
/*
 * sim.h - run the precopy controller (struct pc_policy) against a model of
 * a guest and a link, with simulated time. Used by `precopy simulate` and
 * by the tests that hold the policy to closed forms.
 *
 * The model is a fluid one: pages are counted as real numbers, per
 * segment of RAM (default 4096 segments), so 1 TiB simulates as fast as
 * 1 GiB and the results are deterministic.
 *
 *  - The sender walks RAM from the first segment to the last, once per
 *    pass, sending the pages marked dirty ahead of its cursor. A data
 *    page costs its bytes at link speed (scatter-gather from guest memory:
 *    the sender's own work overlaps the transmission, and the zero test
 *    of a data page fails at its first bytes). A zero page costs
 *    cpu_ns_per_page of sender CPU (the zero test reads all of it) plus a
 *    PC_SIM_ZERO_RUN_BYTES record. Every page sent, data or zero, also
 *    costs scan_ns_per_page of sender CPU (reading it, walking the
 *    bitmap: on a real source mostly the first read of a page the guest
 *    never touched, a page fault, which measured 10-25 us on a small VM).
 *    That CPU time, and the syncs, are the "busy sender": time that is
 *    not transmission, which lowers the wall-time estimate and not the
 *    busy-time one. In the bulk pass (0)
 *    every page not hinted free is marked; the pages still zero are the
 *    zero_fraction of those not written since the start. A written page
 *    is zero in proportion dirty_zero_fraction (a guest that clears pages
 *    as it allocates them: init_on_alloc, page-cache churn).
 *  - The guest writes dirty_bps × (1 − throttle/100) bytes/s as pages:
 *      SEQUENTIAL  a moving window: writes hit the next page, from page 0
 *                  on, wrapping; every write is a distinct page until the
 *                  window has gone round;
 *      UNIFORM     pages drawn with replacement: W writes to N pages leave
 *                  N(1 − e^(−W/N)) distinct pages dirty;
 *      HOTSET      the first hot_fraction of RAM receives hot_write_fraction
 *                  of the writes, the rest the others, each uniform.
 *  - A dirty sync (cost sync_ns_per_page × pages of RAM, during which the
 *    sender does not send but the guest runs) marks the pages written
 *    since the previous sync; "newly dirty" are those not marked already.
 *    Syncs happen at each pass end and mid-pass every sync_interval_ns
 *    (counted from the start of the previous sync, but never before the
 *    sender has had one step of sending since the previous sync ended).
 *    Pages marked ahead of the cursor go in this pass, behind it in the
 *    next.
 *  - The controller is called as the engine calls it: pc_policy_sent()
 *    after each chunk of sends (at most step_ns long; the sender then
 *    waits what the token bucket says), pc_policy_tick() before each
 *    chunk, pc_policy_synced() after each sync, pc_policy_pass_end()
 *    after the sync that ends a pass.
 *  - On SWITCHOVER or FORCE the guest stops; the final sync (same cost)
 *    picks up what was written since the last one, and the final burst
 *    goes at full link speed, never throttled:
 *      downtime = sync cost + pages × scan_ns_per_page
 *                 + zero pages × cpu_ns_per_page
 *                 + (bytes of the pages + device state) / link.
 *    The controller's expected downtime counts the same terms (what the
 *    guest writes during the sync that ended the last pass as dirty rate
 *    x sync cost, which overcounts pages written twice a little); it is
 *    longer when some final pages are zero (the controller counts every
 *    remaining page whole). Both are reported.
 *  - With queue_bytes > 0 the transport has a send queue of that size (a
 *    TCP socket's send buffer): the sender hands bytes to it without
 *    waiting while it has room, and is held back only when it is full; the
 *    link drains it at link speed. The time inside the sender's send calls
 *    (pc_policy_sent()'s busy) is then only the time it was held back,
 *    which is near zero whenever the sender is not the bottleneck (capped,
 *    or busy with zero pages): the figure that misled the old estimator.
 *    The transport's figures below count the queue's bytes as delivered
 *    only once drained, and report what is still queued. A pass ends
 *    once the queue has drained and one round trip (rtt_ns) has passed:
 *    the engine waits for the destination's ITER_ACK of the pass, sent
 *    once every channel's bytes have arrived, before it syncs and
 *    decides; so the guest never stops with bytes queued, and the link
 *    figures are sampled again, the queue empty, before each decision.
 *    Per page the sender's CPU (scan_ns_per_page, and
 *    cpu_ns_per_page for a zero page) and the link's time overlap: the
 *    queue fills only while the sender is the faster of the two. With
 *    queue_bytes 0 (the default) a send returns when its bytes are on
 *    the link, so the sender's CPU and the link take turns.
 *  - With channels > 1 every chunk is split evenly over the channels,
 *    which share the link and transmit in parallel.
 *  - The transport's figures, as the engine gets them from TCP_INFO: each
 *    chunk adds its bytes to every channel's "delivered" share and its
 *    transmission time to every channel's busy time (they transmit at
 *    once), handed to pc_policy_link() with rtt_ns as the path's round
 *    trip; so the controller decides on the link estimate as the engine
 *    does (estimator BUSY), and counts the end's two round trips, which
 *    the modelled downtime also pays (+ 2 x rtt_ns).
 *
 * The estimator option shows what the busy-time estimate buys: WALL
 * reports to pc_policy_sent(), as each chunk's busy time, the whole wall
 * time since the previous call (scanning, syncs and bucket waits
 * included), i.e. QEMU's bytes ÷ wall time, so the same controller decides
 * on the wall-time figure.
 */
#ifndef PC_SIM_H
#define PC_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy.h"

/** Bytes on the wire for a zero page: one run record per page (the worst
 *  case, runs of one page). */
#define PC_SIM_ZERO_RUN_BYTES 16

enum pc_sim_pattern {
	PC_SIM_SEQUENTIAL = 0,
	PC_SIM_UNIFORM,
	PC_SIM_HOTSET,
};

enum pc_sim_estimator {
	PC_SIM_EST_BUSY = 0, /**< channel busy time (ours, default) */
	PC_SIM_EST_WALL,     /**< wall time (QEMU's) */
};

struct pc_sim_params {
	struct precopy_params policy; /**< the controller's knobs */
	uint64_t ram_bytes;           /**< guest RAM, >= one page (rounded down to pages) */
	uint64_t link_bps;            /**< link bandwidth, bytes/s, > 0 */
	uint64_t dirty_bps;           /**< guest writes, bytes/s, before any throttle */
	enum pc_sim_pattern pattern;
	double hot_fraction;          /**< HOTSET: share of RAM that is hot, (0, 1] */
	double hot_write_fraction;    /**< HOTSET: share of writes going there, [0, 1] */
	double zero_fraction;         /**< share of RAM holding zero pages at start, [0, 1] */
	double dirty_zero_fraction;   /**< share of written pages left zero, [0, 1] */
	double free_fraction;         /**< share hinted free (skipped in bulk), [0, 1 - zero] */
	uint64_t device_state_bytes;  /**< sent in the final burst */
	double sync_ns_per_page;      /**< dirty-sync cost per page of RAM, >= 0 */
	double cpu_ns_per_page;       /**< sender CPU per zero page (the zero test), >= 0 */
	enum pc_sim_estimator estimator;
	uint64_t step_ns;             /**< longest chunk of sends, > 0 */
	uint64_t sync_interval_ns;    /**< mid-pass sync period, > 0 */
	uint64_t max_sim_ns;          /**< give up (-ETIMEDOUT) past this simulated time */
	unsigned max_passes;          /**< give up (-ELOOP) past this many passes */
	unsigned segments;            /**< model resolution, >= 1 (capped at the page count) */
	uint64_t rtt_ns;              /**< the path's round trip (the end pays two); default 0 */
	uint64_t queue_bytes;         /**< the transport's send queue, all channels; default 0 */
	double scan_ns_per_page;      /**< sender CPU per page sent, data or zero, >= 0 */
};

/**
 * pc_sim_params_init() - defaults: the policy defaults
 * (pc_policy_params_defaults()), 1 GiB of RAM, a 10 Gb/s link
 * (1.25e9 bytes/s), 100 MB/s of UNIFORM writes, hot set 10% / 90%, no
 * zero or free pages, no device state, 15 ns per page of dirty sync (as
 * measured for PAGEMAP_SCAN, DESIGN.md), no sender CPU cost (neither per
 * page scanned nor per zero page), BUSY
 * estimator, 10 ms steps, a sync every second, caps 24 h and 100000
 * passes, 4096 segments.
 */
void pc_sim_params_init(struct pc_sim_params *p);

enum pc_sim_outcome {
	PC_SIM_CONVERGED = 0, /**< switched over within the downtime limit */
	PC_SIM_FORCED,        /**< the watchdog forced the switchover */
	PC_SIM_ABORTED,       /**< the watchdog aborted; the guest stays */
};

/** One row of the per-pass table. */
struct pc_sim_pass {
	unsigned pass;                 /**< 0 = bulk */
	uint64_t start_ns, end_ns;     /**< end: after the sync that ended it */
	uint64_t bytes_sent;           /**< bytes put on the link in this pass */
	uint64_t remaining;            /**< dirty bytes after that sync */
	uint64_t expected_downtime_ns; /**< the controller's; UINT64_MAX = no estimate */
	unsigned throttle;             /**< percent in force at its end */
	double bw_busy, bw_wall;       /**< the controller's estimates at its end, bytes/s */
	enum pc_decision decision;     /**< what the controller said */
	bool interrupted;              /**< ended mid-pass by max-time (tick) */
};

struct pc_sim_result {
	enum pc_sim_outcome outcome;
	enum pc_wd_verdict verdict;    /**< why FORCED / ABORTED; PC_WD_OK if converged */
	const char *reason;            /**< pc_wd_reason(verdict): static, never NULL */
	unsigned passes;               /**< passes run, bulk included (= npass) */
	uint64_t total_ns;             /**< start to the end of the final burst (or abort) */
	uint64_t downtime_ns;          /**< modelled guest pause; 0 if aborted */
	uint64_t expected_downtime_ns; /**< the controller's prediction when it decided */
	uint64_t downtime_limit_ns;
	uint64_t bytes_sent;           /**< every pass + the final burst (device state too) */
	double ram_multiple;           /**< bytes_sent / ram_bytes */
	uint64_t final_bytes;          /**< RAM + device state in the final burst */
	unsigned max_throttle;         /**< highest percent reached */
	struct pc_sim_pass *pass;      /**< per-pass table (malloc()ed, see pc_sim_result_free()) */
	size_t npass;
	char error[160];               /**< why pc_sim_run() failed, else "" */
};

enum pc_sim_event_kind {
	PC_SIM_EV_SECOND = 0, /**< one per second of simulated time */
	PC_SIM_EV_PASS,       /**< one per pass end (and an interrupted pass) */
};

struct pc_sim_event {
	enum pc_sim_event_kind kind;
	uint64_t t_ns;                 /**< SECOND: the whole second; PASS: its end */
	unsigned pass;                 /**< the pass running (SECOND) or ended (PASS) */
	uint64_t remaining;            /**< dirty bytes marked to send, now */
	double dirty_bps;              /**< guest dirty rate now, throttle applied */
	double bw_busy, bw_wall;       /**< the controller's estimates, bytes/s */
	unsigned throttle;             /**< percent in force */
	const struct pc_sim_pass *row; /**< PASS: its row (valid during the call); else NULL */
};

/**
 * pc_sim_run() - simulate one migration.
 * @in:     the model and the policy knobs (validated here).
 * @out:    the result; zeroed first. Its table is malloc()ed: call
 *          pc_sim_result_free() after every call, success or not (on
 *          -ETIMEDOUT / -ELOOP it holds the passes run so far).
 * @event:  called for every pass end and every simulated second (NULL =
 *          none); must not keep the event's pointers.
 * @opaque: passed to @event.
 * Return: 0 (whatever the outcome: see out->outcome); -EINVAL for a bad
 * argument, described in out->error (if @out is not NULL); -ENOMEM;
 * -ETIMEDOUT past max_sim_ns or -ELOOP past max_passes (out->error says
 * which, e.g. a guest that never converges with no watchdog). On error,
 * only out->error and the table are meaningful.
 */
int pc_sim_run(const struct pc_sim_params *in, struct pc_sim_result *out,
	       void (*event)(void *opaque, const struct pc_sim_event *ev), void *opaque);

/** pc_sim_result_free() - free @r's table; @r may be reused. NULL is a no-op. */
void pc_sim_result_free(struct pc_sim_result *r);

/** pc_sim_outcome_name() - "converged", "forced", "aborted"; never NULL. */
const char *pc_sim_outcome_name(enum pc_sim_outcome o);

/** pc_sim_pattern_name() - "sequential", "uniform", "hotset"; never NULL. */
const char *pc_sim_pattern_name(enum pc_sim_pattern p);

#endif /* PC_SIM_H */

/* SPDX-License-Identifier: MIT */
/*
 * policy.h - the decisions of a precopy migration, as pure code.
 *
 * Nothing here does I/O or reads a clock: every function takes the time
 * (`now`, nanoseconds on any monotonic clock) from its caller, so tests
 * drive it with a fake clock and `precopy simulate` drives it with a model
 * of the link. The engine and the simulator call the same functions in the
 * same order through struct pc_policy.
 *
 * Building blocks:
 *   pc_bw_*        bandwidth estimate from channel busy time (and wall time)
 *   pc_switch_*    expected downtime and the switchover test
 *   pc_bucket_*    max-bandwidth token bucket, <= 10 ms granularity
 *   pc_throttle_*  auto-converge on periods of >= 1 s
 *   pc_watchdog_*  max-iterations, max-time, stall
 * and the controller pc_policy_* that strings them together.
 */
#ifndef PC_POLICY_H
#define PC_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "precopy.h"

#define PC_NSEC_PER_SEC 1000000000ull
#define PC_NSEC_PER_MSEC 1000000ull

/* ------------------------------------------------------------------ */
/* Bandwidth estimate                                                  */
/* ------------------------------------------------------------------ */

/** Shortest window over which an estimate is formed. */
#define PC_BW_WINDOW_NS (100 * PC_NSEC_PER_MSEC)

struct pc_bw {
	uint64_t win_start;   /**< start of the current window */
	uint64_t win_bytes;   /**< bytes sent in it */
	uint64_t win_busy;    /**< ns the channel was transmitting in it */
	double busy_bps;      /**< smoothed bytes / busy time */
	double wall_bps;      /**< smoothed bytes / wall time */
	unsigned windows;     /**< windows closed so far */
};

/** pc_bw_init() - start estimating at @now. */
void pc_bw_init(struct pc_bw *b, uint64_t now);

/**
 * pc_bw_sample() - @bytes went out and kept the channel busy for @busy_ns
 * (the time spent inside the transport's send calls, not the time spent
 * scanning bitmaps or testing zero pages). Closes the window when
 * >= PC_BW_WINDOW_NS of wall time has passed since it opened.
 */
void pc_bw_sample(struct pc_bw *b, uint64_t bytes, uint64_t busy_ns, uint64_t now);

/** pc_bw_busy() - bytes/s from busy time; 0 until a window closed. */
double pc_bw_busy(const struct pc_bw *b);

/** pc_bw_wall() - bytes/s from wall time; 0 until a window closed. */
double pc_bw_wall(const struct pc_bw *b);

/* ------------------------------------------------------------------ */
/* Switchover                                                          */
/* ------------------------------------------------------------------ */

struct pc_switch_in {
	uint64_t remaining_bytes;    /**< dirty RAM still to send */
	uint64_t device_state_bytes; /**< size of the device state */
	double bandwidth;            /**< bytes/s to assume */
	uint64_t sync_cost_ns;       /**< measured cost of a dirty sync */
	uint64_t downtime_limit_ns;
};

/**
 * pc_switch_bandwidth() - the bandwidth the switchover test uses:
 * @avail if non-zero (avail-switchover-bandwidth), else @estimate.
 */
double pc_switch_bandwidth(uint64_t avail, double estimate);

/**
 * pc_switch_expected_ns() - (remaining + device state) / bandwidth + sync
 * cost. UINT64_MAX when there is something to send and bandwidth <= 0.
 */
uint64_t pc_switch_expected_ns(const struct pc_switch_in *in);

/** pc_switch_ok() - expected downtime <= downtime limit. */
bool pc_switch_ok(const struct pc_switch_in *in);

/* ------------------------------------------------------------------ */
/* max-bandwidth                                                       */
/* ------------------------------------------------------------------ */

/** Refill granularity (and bucket depth in time) of the token bucket. */
#define PC_BUCKET_SLICE_NS (10 * PC_NSEC_PER_MSEC)

struct pc_bucket {
	uint64_t rate;   /**< bytes/s; 0 = unlimited */
	double tokens;   /**< may go negative: debt to wait off */
	uint64_t last;   /**< time of the last refill */
};

/** pc_bucket_init() - @rate bytes/s (0 = unlimited), full at @now. */
void pc_bucket_init(struct pc_bucket *b, uint64_t rate, uint64_t now);

/** pc_bucket_set_rate() - change the rate at @now (0 = unlimited). */
void pc_bucket_set_rate(struct pc_bucket *b, uint64_t rate, uint64_t now);

/**
 * pc_bucket_take() - spend @bytes at @now. Return: how many ns the caller
 * must wait before sending more (0 = go on).
 */
uint64_t pc_bucket_take(struct pc_bucket *b, uint64_t bytes, uint64_t now);

/* ------------------------------------------------------------------ */
/* Auto-converge                                                       */
/* ------------------------------------------------------------------ */

/** Shortest period over which auto-converge judges the dirty rate. */
#define PC_THROTTLE_PERIOD_NS PC_NSEC_PER_SEC

struct pc_throttle {
	bool enabled;
	unsigned threshold, initial, increment, max;
	bool tailslow;
	uint64_t period_start;
	uint64_t dirtied;     /**< bytes dirtied in the current period */
	uint64_t sent;        /**< bytes sent in the current period */
	unsigned hits;        /**< periods in a row over the threshold */
	unsigned pct;         /**< current throttle */
};

/** pc_throttle_init() - from @p's auto-converge fields, at @now. */
void pc_throttle_init(struct pc_throttle *t, const struct precopy_params *p, uint64_t now);

/**
 * pc_throttle_account() - @dirtied bytes found dirty (newly) and @sent
 * bytes sent since the last call; at @now. When the current period is
 * >= PC_THROTTLE_PERIOD_NS old it is judged: dirtied > threshold% of sent
 * in two periods in a row raises the throttle (initial, then +increment,
 * or with tailslow in proportion to the excess, capped at max).
 * Return: the throttle percent now in force (compare with the previous
 * value to know whether to tell the VMM).
 */
unsigned pc_throttle_account(struct pc_throttle *t, uint64_t dirtied, uint64_t sent,
			     uint64_t now);

/* ------------------------------------------------------------------ */
/* Watchdog                                                            */
/* ------------------------------------------------------------------ */

enum pc_wd_verdict {
	PC_WD_OK = 0,
	PC_WD_MAX_ITERATIONS,
	PC_WD_MAX_TIME,
	PC_WD_STALL,
};

struct pc_watchdog {
	unsigned max_iterations;
	uint64_t max_time_ns;
	unsigned stall_iterations;
	uint64_t start;
	uint64_t best_remaining; /**< smallest remaining seen at a pass end */
	unsigned stalled;        /**< pass ends in a row without a new best */
};

void pc_watchdog_init(struct pc_watchdog *w, const struct precopy_params *p, uint64_t now);

/** pc_watchdog_tick() - time limit only; call often (mid-pass). */
enum pc_wd_verdict pc_watchdog_tick(const struct pc_watchdog *w, uint64_t now);

/**
 * pc_watchdog_pass_end() - at the end of pass @iteration (1 = the first
 * pass after bulk) with @remaining dirty bytes found by the sync that
 * ended it. Checks all three limits.
 */
enum pc_wd_verdict pc_watchdog_pass_end(struct pc_watchdog *w, unsigned iteration,
					uint64_t remaining, uint64_t now);

/** pc_wd_reason() - "max-iterations reached"... never NULL. */
const char *pc_wd_reason(enum pc_wd_verdict v);

/* ------------------------------------------------------------------ */
/* The controller                                                      */
/* ------------------------------------------------------------------ */

enum pc_decision {
	PC_CONTINUE = 0, /**< run another pass */
	PC_SWITCHOVER,   /**< expected downtime within the limit */
	PC_FORCE,        /**< watchdog hit, strategy force: switch over now */
	PC_ABORT,        /**< watchdog hit, strategy abort: fail cleanly */
};

struct pc_policy {
	struct precopy_params params;
	struct pc_bw bw[PRECOPY_MAX_CHANNELS]; /**< one per channel */
	struct pc_bucket bucket;
	struct pc_throttle throttle;
	struct pc_watchdog wd;
	uint64_t device_state_bytes; /**< expected device-state size */
	uint64_t sync_cost_ns;       /**< last measured dirty-sync cost */
	uint64_t expected_downtime_ns;
	enum pc_wd_verdict last_verdict;
	bool switchover;             /**< final burst: never throttled */
};

/** pc_policy_init() - copy @p (validated by the caller) and start at @now. */
void pc_policy_init(struct pc_policy *pol, const struct precopy_params *p, uint64_t now);

/**
 * pc_policy_sent() - a send of @bytes on channel @chan that kept it busy
 * @busy_ns finished at @now. The caller serialises calls (one lock). The
 * busy-time estimate of the whole migration is the sum of the channels'
 * estimates; the wall-time one likewise. The token bucket is shared by all
 * channels. Return: ns to wait (max-bandwidth), 0 = go on.
 */
uint64_t pc_policy_sent(struct pc_policy *pol, unsigned chan, uint64_t bytes,
			uint64_t busy_ns, uint64_t now);

/** pc_policy_bw_busy() - sum of the channels' busy-time estimates, bytes/s. */
double pc_policy_bw_busy(const struct pc_policy *pol);

/** pc_policy_bw_wall() - sum of the channels' wall-time estimates, bytes/s. */
double pc_policy_bw_wall(const struct pc_policy *pol);

/**
 * pc_policy_set_switchover() - the final burst starts: the token bucket no
 * longer delays (pc_policy_sent() returns 0 from now on).
 */
void pc_policy_set_switchover(struct pc_policy *pol);

/**
 * pc_policy_synced() - a dirty sync that took @cost_ns found @dirtied
 * bytes newly dirty at @now. Return: the throttle percent now in force.
 */
unsigned pc_policy_synced(struct pc_policy *pol, uint64_t dirtied, uint64_t cost_ns, uint64_t now);

/**
 * pc_policy_pass_end() - pass @iteration ended (0 = bulk) and the sync
 * after it left @remaining dirty bytes. Return: what to do next. Updates
 * expected_downtime_ns.
 */
enum pc_decision pc_policy_pass_end(struct pc_policy *pol, unsigned iteration,
				    uint64_t remaining, uint64_t now);

/** pc_policy_tick() - mid-pass: PC_CONTINUE, or PC_FORCE / PC_ABORT on max-time. */
enum pc_decision pc_policy_tick(struct pc_policy *pol, uint64_t now);

/** pc_policy_switch_bandwidth() - bytes/s the switchover decision uses now. */
double pc_policy_switch_bandwidth(const struct pc_policy *pol);

#endif /* PC_POLICY_H */

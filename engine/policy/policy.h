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
 *   pc_link_*      bandwidth of the link, from the transport's own figures
 *   pc_switch_*    expected downtime and the switchover test
 *   pc_bucket_*    max-bandwidth, a budget per 100 ms slice
 *   pc_throttle_*  auto-converge on periods of >= 1 s
 *   pc_watchdog_*  max-iterations, max-time, stall
 * and the controller pc_policy_* that strings them together.
 */
#ifndef PC_POLICY_H
#define PC_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "precopy.h"

#define PC_NSEC_PER_SEC 1000000000ull
#define PC_NSEC_PER_MSEC 1000000ull

/* ------------------------------------------------------------------ */
/* Parameters (addition: one home for the defaults and ranges of the   */
/* policy knobs, so precopy_params_init()/check() can delegate here)   */
/* ------------------------------------------------------------------ */

/** Largest downtime_limit_ms accepted (QEMU's MAX_MIGRATE_DOWNTIME). */
#define PC_DOWNTIME_LIMIT_MAX_MS 2000000ull

/**
 * pc_policy_params_defaults() - fill @p with the defaults documented in
 * precopy.h: unlimited bandwidth, 300 ms downtime limit, auto-converge off
 * with QEMU's knobs (50 / 20 / 10 / 99, no tailslow), watchdog off,
 * on_limit FORCE, one channel.
 */
void pc_policy_params_defaults(struct precopy_params *p);

/**
 * pc_policy_params_check() - validate the policy fields of @p.
 * Ranges (QEMU's where it has them): downtime_limit_ms <= 2000000,
 * throttle_trigger_threshold 1..100, cpu_throttle_initial,
 * cpu_throttle_increment and max_cpu_throttle 1..99, on_limit FORCE,
 * ABORT or POSTCOPY, channels 1..PRECOPY_MAX_CHANNELS. 0 is allowed where precopy.h
 * gives it a meaning (bandwidths, limits off).
 * Return: 0, or -EINVAL with the first bad field named in @why (if
 * non-NULL, @whylen bytes, NUL-terminated).
 */
int pc_policy_params_check(const struct precopy_params *p, char *why, size_t whylen);

/* ------------------------------------------------------------------ */
/* Bandwidth estimate                                                  */
/* ------------------------------------------------------------------ */

/** Shortest window over which an estimate is formed. */
#define PC_BW_WINDOW_NS (100 * PC_NSEC_PER_MSEC)

/**
 * Weight of a new window in the moving averages (EWMA). With windows of
 * >= 100 ms, 0.25 remembers about (2 - w) / w = 7 windows (0.7 s, the
 * scale of a throttle period or a short pass): one odd window (a stall of
 * the sender, a burst of retransmits) moves the estimate by at most a
 * quarter of the difference, and a real change of the link is 90% taken
 * in after 8 windows (0.75^8 = 0.10), under a second. The first window
 * is taken as is.
 */
#define PC_BW_EWMA_WEIGHT 0.25

/**
 * A window whose channel was busy for less than this is not used for the
 * busy-time estimate (it keeps its previous value): the rate it would give
 * is noise at best and infinite at worst (busy 0).
 */
#define PC_BW_MIN_BUSY_NS 1000ull

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
 *
 * On closing a window:
 *  - wall estimate: EWMA of window bytes / window wall time, every window
 *    counting; an idle window (no bytes) therefore pulls it toward 0.
 *  - busy estimate: EWMA of window bytes / window busy time, only for
 *    windows with bytes and busy >= PC_BW_MIN_BUSY_NS. An idle window
 *    keeps it: the link did not get slower because we had nothing to send.
 * Busy time of sends that overlap on one channel must not be counted
 * twice (report the time the channel had data in flight).
 */
void pc_bw_sample(struct pc_bw *b, uint64_t bytes, uint64_t busy_ns, uint64_t now);

/** pc_bw_busy() - bytes/s from busy time; 0 until a window closed. */
double pc_bw_busy(const struct pc_bw *b);

/** pc_bw_wall() - bytes/s from wall time; 0 until a window closed. */
double pc_bw_wall(const struct pc_bw *b);

/* ------------------------------------------------------------------ */
/* Link estimate: measured where the bytes leave                        */
/* ------------------------------------------------------------------ */

/*
 * Time spent inside send calls says how fast the link is only when the
 * sender is the one waiting: a socket buffer (or an RDMA send queue)
 * absorbs a send long before its bytes are on the wire, so whenever the
 * sender is not the bottleneck (an operator's cap, a sender busy scanning
 * zero pages) that time is far shorter than the transmission and the
 * figure far too high. The transport knows better: for TCP the kernel's
 * busy time (data queued or in flight) and bytes acknowledged, for shm the
 * time spent copying. pc_link turns those cumulative counters, one set per
 * channel, read every PC_LINK_SAMPLE_NS or so, into one estimate of the
 * link:
 *
 *   rate = sum over channels of delta(delivered) / the link's busy time
 *
 * The channels share one link: over each short step between two readings
 * the link's busy time is the longest channel's (channels busy together
 * count that time once, not once per channel), and a window's is the sum
 * of its steps' (channels busy one after the other, as a capped sender's
 * or a busy sender's often are, count theirs one after the other, not as
 * if they had overlapped). A window closes once >= PC_BW_WINDOW_NS of wall
 * time and >= PC_LINK_MIN_BUSY_NS of busy time have passed (the kernel
 * counts busy time in jiffies, 1 to 10 ms). Counters that went backwards
 * (a new connection) restart the window.
 *
 * Busy time is the link's only while bytes wait for it. A sender that
 * hands over a batch now and then (a cap, a sender busy scanning zero
 * pages) keeps the socket "busy" while each batch's last segment waits for
 * its ACK, so its windows say less than the link; and a shaper lets such a
 * short burst through above its rate, so they may say more. Hence two
 * kinds of steps: sustained ones, busy for at least half the step with at
 * least the step's bytes already waiting at its start (the link set the
 * pace, long enough for a shaper's burst allowance to be spent), and the
 * rest. A window with >= PC_LINK_MIN_BUSY_NS of sustained steps is a
 * measure of the link, their bytes over their busy time; such windows are
 * averaged weighted by the bytes they carried, each older one fading by
 * PC_BW_EWMA_WEIGHT (a stall that moved 70 KB does not outweigh a pass
 * that moved 20 MB), and the first replaces whatever came before it.
 * Until one closes, every window's rate enters an EWMA of weight
 * PC_BW_EWMA_WEIGHT, the best there is; after it, the other windows are
 * left out.
 */

/*
 * The kernel's busy time is counted in jiffies: a sender held to a cap
 * sends in bursts of a few ms, and a burst that starts and ends within one
 * jiffy counts nothing, so under a cap delivered / busy comes out several
 * times the link. Its second opinion, the delivery-rate samples the kernel
 * takes per ACK in us (tcpi_delivery_rate), is right whenever the sample
 * was not limited by the application: pc_link_rate() collects those, per
 * channel, and a window's rate is the lower of delivered / busy and the sum
 * over channels of the median of their samples (at least
 * PC_LINK_MIN_RATE_SAMPLES on a channel for it to count).
 */
#define PC_LINK_RATE_SAMPLES 32
#define PC_LINK_MIN_RATE_SAMPLES 3

/**
 * How often the source reads the channels' counters during a pass: the
 * link's busy time in a window is the sum over these steps of the longest
 * channel's, so channels busy one after the other (a capped sender's
 * slices, a busy sender's batches) count their times once each, and
 * channels busy together count theirs once.
 */
#define PC_LINK_SAMPLE_NS (10 * PC_NSEC_PER_MSEC)

/** Busy time a window needs before it says anything (jiffies granularity). */
#define PC_LINK_MIN_BUSY_NS (20 * PC_NSEC_PER_MSEC)

/** Where the link estimate comes from (precopy_stats.bandwidth_source). */
enum pc_link_source {
	PC_LINK_SRC_NONE = 0,      /**< no estimate yet */
	PC_LINK_SRC_SEND_TIME = 1, /**< time inside send calls (no transport figures) */
	PC_LINK_SRC_TCP_INFO = 2,  /**< TCP_INFO busy time and bytes acked */
	PC_LINK_SRC_COMPLETIONS = 3, /**< RDMA completion times */
	PC_LINK_SRC_COPY = 4,      /**< shm copy time */
	PC_LINK_SRC_AVAIL = 5,     /**< avail-switchover-bandwidth, set by the operator */
};

/** pc_link_source_name() - "tcp-info", "send-time"...; never NULL. */
const char *pc_link_source_name(enum pc_link_source s);

/** One channel's cumulative counters (struct pc_tp_link_stats's). */
struct pc_link_sample {
	uint64_t busy_ns;   /**< time the channel had bytes queued or in flight */
	uint64_t delivered; /**< bytes the peer received */
	uint64_t queued;    /**< bytes still queued in the transport, now */
	uint64_t rtt_ns;    /**< round-trip time, 0 = unknown */
};

struct pc_link {
	enum pc_link_source source; /**< of the samples; NONE until the first */
	uint64_t win_start;
	unsigned nchan;             /**< channels of the current window */
	uint64_t busy0[PRECOPY_MAX_CHANNELS], del0[PRECOPY_MAX_CHANNELS];
	uint64_t busy1[PRECOPY_MAX_CHANNELS], del1[PRECOPY_MAX_CHANNELS]; /**< at the last sample */
	uint64_t last;              /**< time of the last sample */
	uint64_t win_busy;          /**< the link's busy time in this window */
	uint64_t sus_busy, sus_del; /**< of the steps the link was busy throughout */
	bool primed;                /**< busy0/del0 hold a window's start */
	bool measured;              /**< a sustained window closed */
	double wbytes, wrate;       /**< sustained windows: sum of bytes, of bytes x rate */
	double bps;                 /**< smoothed rate; 0 until a window closed */
	unsigned windows;
	double rate[PRECOPY_MAX_CHANNELS][PC_LINK_RATE_SAMPLES]; /**< this window's */
	unsigned nrate[PRECOPY_MAX_CHANNELS];
	uint64_t queued;            /**< sum over channels, at the last sample */
	uint64_t rtt_ns;            /**< largest over channels, at the last sample */
};

/** pc_link_init() - no estimate, at @now. */
void pc_link_init(struct pc_link *l, uint64_t now);

/**
 * pc_link_sample() - the @n channels' counters @s at @now, from @source.
 * Closes a window as described above. Always takes queued and rtt.
 */
void pc_link_sample(struct pc_link *l, enum pc_link_source source, unsigned n,
		    const struct pc_link_sample *s, uint64_t now);

/**
 * pc_link_rate() - channel @chan's kernel took a delivery-rate sample of
 * @bps bytes/s; @app_limited: the sender, not the link, set its pace (only
 * a lower bound: not kept). Kept for the current window (the first
 * PC_LINK_RATE_SAMPLES; later ones replace the oldest).
 */
void pc_link_rate(struct pc_link *l, unsigned chan, double bps, bool app_limited);

/** pc_link_bps() - the link's rate, bytes/s; 0 until a window closed. */
double pc_link_bps(const struct pc_link *l);

/* ------------------------------------------------------------------ */
/* Switchover                                                          */
/* ------------------------------------------------------------------ */

/**
 * The switchover test, in numbers: everything the pause must carry,
 *
 *   expected = sync cost                          the final dirty sync
 *            + (remaining                         dirty RAM still to send
 *               + dirty rate x sync cost          written while the sync
 *                                                 that ended the pass ran
 *               + queued                          still in the transport
 *               + device state) / bandwidth
 *            + end cost                           COMPLETE -> RESULT and
 *                                                 GO -> answer: 2 round trips
 *
 * rounded to the nearest ns; UINT64_MAX ("never") when there is something
 * to send and bandwidth <= 0 (or NaN); sync and end cost alone when there
 * is nothing to send. Switch when expected <= limit (equal passes).
 */
struct pc_switch_in {
	uint64_t remaining_bytes;    /**< dirty RAM still to send */
	uint64_t device_state_bytes; /**< size of the device state */
	double bandwidth;            /**< bytes/s to assume */
	uint64_t sync_cost_ns;       /**< measured cost of a dirty sync */
	uint64_t downtime_limit_ns;
	uint64_t queued_bytes;       /**< bytes still queued in the transport */
	double dirty_bps;            /**< guest writes, bytes/s (0 = unknown) */
	uint64_t end_ns;             /**< the end's round trips */
};

/**
 * pc_switch_bandwidth() - the bandwidth the switchover test uses:
 * @avail if non-zero (avail-switchover-bandwidth), else @estimate.
 */
double pc_switch_bandwidth(uint64_t avail, double estimate);

/**
 * pc_switch_expected_ns() - the formula above. UINT64_MAX when there is
 * something to send and bandwidth <= 0.
 */
uint64_t pc_switch_expected_ns(const struct pc_switch_in *in);

/** pc_switch_ok() - expected downtime <= downtime limit (UINT64_MAX,
 *  "never", fails whatever the limit). */
bool pc_switch_ok(const struct pc_switch_in *in);

/* ------------------------------------------------------------------ */
/* max-bandwidth                                                       */
/* ------------------------------------------------------------------ */

/*
 * max-bandwidth is a budget per slice of PC_BUCKET_SLICE_NS (QEMU's rate
 * limit works in the same 100 ms periods). Slices are aligned on one clock
 * for every channel: senders that ran out of budget all wake at the same
 * slice boundary and send side by side, at the link's speed, until the
 * slice's budget is spent. Two things follow. The link estimate sees the
 * link, not the cap: bursts of tens of ms are long enough for the kernel's
 * busy time (counted in jiffies) and its delivery-rate samples, where a
 * trickle of 10 ms slices hid under a shaper's burst allowance. And the
 * channels are busy at the same time, which the link estimate assumes
 * (pc_link); a continuous bucket shared by several channels let them take
 * turns, and the estimate counted the link once per channel.
 */
#define PC_BUCKET_SLICE_NS (100 * PC_NSEC_PER_MSEC)

struct pc_bucket {
	uint64_t rate;   /**< bytes/s; 0 = unlimited */
	double tokens;   /**< left in the current slice; negative: debt */
	uint64_t last;   /**< start of the current slice */
};

/** pc_bucket_init() - @rate bytes/s (0 = unlimited), a full slice at @now. */
void pc_bucket_init(struct pc_bucket *b, uint64_t rate, uint64_t now);

/** pc_bucket_set_rate() - change the rate at @now (0 = unlimited). */
void pc_bucket_set_rate(struct pc_bucket *b, uint64_t rate, uint64_t now);

/**
 * pc_bucket_take() - spend @bytes at @now. Return: how many ns the caller
 * must wait before sending more (0 = go on).
 *
 * Each slice adds rate x PC_BUCKET_SLICE_NS; what a slice leaves unspent is
 * not saved beyond one slice's worth, so after an idle stretch at most one
 * slice's worth (plus the one send that takes it into debt) goes out at
 * once. A send bigger than what is left is let through; the debt is paid
 * by the following slices, and the wait returned ends at the first slice
 * boundary where it is paid, the same boundary for every caller in debt.
 * Rate 0: always 0.
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
 *
 * Details: equal to threshold% is not over; a period with nothing sent
 * and something dirtied is over. A period under the threshold resets the
 * count (QEMU only resets it after throttling); so does raising. The
 * first raise goes to initial. Tailslow (QEMU's rule): with the guest at
 * cpu_now = 100 - pct percent, cpu_ideal = floor(cpu_now * threshold% *
 * sent / dirtied) and the step is min(increment, cpu_now - cpu_ideal),
 * i.e. between 1 and increment, larger for a larger dirtied/sent ratio.
 * Every raise is capped at max. Disabled: returns 0, counts nothing.
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
 *
 * max-iterations: iteration >= max_iterations (0 = off; the bulk pass,
 * iteration 0, never reaches it). max-time: now - start >= max_time.
 * stall: a pass end whose remaining is not below the best seen so far
 * counts one; a new best resets the count; stall_iterations in a row
 * (0 = off) is a stall. Stall bookkeeping happens on every call. When
 * several limits are hit the first in that order is returned.
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

/*
 * How the engine calls the controller (the simulator does the same):
 *   pc_policy_init()               when the bulk pass starts
 *   pc_policy_set_device_state()   as soon as the size is known
 *   pc_policy_sent()               after each chunk of sends; wait as told
 *   pc_policy_tick()               often (every chunk); obey FORCE / ABORT
 *   pc_policy_synced()             after every dirty sync: at each pass
 *                                  end and at least every second mid-pass;
 *                                  tell the VMM when the percent changes
 *   pc_policy_pass_end()           after the sync that ends a pass
 *   pc_policy_set_switchover()     before the final burst (SWITCHOVER or
 *                                  FORCE)
 */
struct pc_policy {
	struct precopy_params params;
	struct pc_bw bw[PRECOPY_MAX_CHANNELS]; /**< one per channel */
	struct pc_bucket bucket;
	struct pc_throttle throttle;
	struct pc_watchdog wd;
	struct pc_link link;         /**< the transport's figures (pc_policy_link()) */
	struct pc_bw sender[PRECOPY_MAX_CHANNELS]; /**< RAM bytes per active ns */
	double dirty_bps;            /**< guest writes, bytes/s (pc_policy_dirty_rate()) */
	uint64_t device_state_bytes; /**< expected device-state size */
	uint64_t sync_cost_ns;       /**< last measured dirty-sync cost */
	uint64_t expected_downtime_ns; /**< at the last pass end; UINT64_MAX
					    before it, or when not predictable */
	enum pc_wd_verdict last_verdict; /**< why the last FORCE / ABORT */
	bool switchover;             /**< final burst: never throttled */
};

/** pc_policy_init() - copy @p (validated by the caller) and start at @now.
 *  channels outside 1..PRECOPY_MAX_CHANNELS is clamped. */
void pc_policy_init(struct pc_policy *pol, const struct precopy_params *p, uint64_t now);

/**
 * pc_policy_update() - the operator changed parameters while the
 * migration runs: take @p's (validated) rate cap, downtime limit,
 * avail-switchover-bandwidth, auto-converge knobs, watchdog limits and
 * on-limit from @now on. channels and timeout_ms are kept (fixed once
 * connected). Turning auto-converge off drops the throttle to 0; the
 * watchdog keeps its start and stall history. Return: the throttle
 * percent now in force (tell the VMM if it changed).
 */
unsigned pc_policy_update(struct pc_policy *pol, const struct precopy_params *p, uint64_t now);

/**
 * pc_policy_set_device_state() - the device state is expected to be
 * @bytes long (0 until called). Counted in every expected downtime.
 */
void pc_policy_set_device_state(struct pc_policy *pol, uint64_t bytes);

/**
 * pc_policy_sent() - a send of @bytes on channel @chan that kept it busy
 * @busy_ns finished at @now. The caller serialises calls (one lock). The
 * busy-time estimate of the whole migration is the sum of the channels'
 * estimates; the wall-time one likewise. The token bucket is shared by all
 * channels. Return: ns to wait (max-bandwidth), 0 = go on.
 * A @chan >= PRECOPY_MAX_CHANNELS still counts in the bucket and the
 * throttle period but in no estimate.
 */
uint64_t pc_policy_sent(struct pc_policy *pol, unsigned chan, uint64_t bytes,
			uint64_t busy_ns, uint64_t now);

/**
 * pc_policy_sender() - channel @chan's sender went through @ram_bytes of
 * guest RAM that carries data (the pages it looked at and sent, 4 KiB
 * each) in @active_ns of work at @now: its time not waiting for the token
 * bucket, from the end of its previous batch to the end of this one,
 * scanning and sending, less the time spent on pages found zero. The sum
 * over channels is the rate at which an unthrottled sender gets through
 * the pages the guest wrote, the final burst's other bound besides the
 * link (over shm, where the copy is fast, it is the one that counts). Zero
 * pages are left out because the final burst has few: a never-touched
 * page's first read, a fault, is what makes a guest of zero pages slow to
 * scan in the bulk pass, and the guest's writes are what the final burst
 * sends.
 */
void pc_policy_sender(struct pc_policy *pol, unsigned chan, uint64_t ram_bytes,
		      uint64_t active_ns, uint64_t now);

/** pc_policy_bw_sender() - sum of the channels' sender rates, bytes/s. */
double pc_policy_bw_sender(const struct pc_policy *pol);

/**
 * pc_policy_link() - the transport's counters of @n channels at @now
 * (pc_link_sample()).
 */
void pc_policy_link(struct pc_policy *pol, enum pc_link_source source, unsigned n,
		    const struct pc_link_sample *s, uint64_t now);

/** pc_policy_link_rate() - pc_link_rate() on the policy's link. */
void pc_policy_link_rate(struct pc_policy *pol, unsigned chan, double bps, bool app_limited);

/** pc_policy_dirty_rate() - the guest writes @bps bytes/s (last measured). */
void pc_policy_dirty_rate(struct pc_policy *pol, double bps);

/**
 * pc_policy_bandwidth_source() - what pc_policy_switch_bandwidth() rests
 * on: AVAIL if avail-switchover-bandwidth is set; else the link's source
 * once it has an estimate; else SEND_TIME once pc_policy_sent() has one;
 * else NONE.
 */
enum pc_link_source pc_policy_bandwidth_source(const struct pc_policy *pol);

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
 * "Newly": pages not already marked to send (as QEMU counts them). The
 * cost becomes the sync cost of the next expected downtime; the throttle
 * period is judged here (and only here) once >= 1 s old.
 */
unsigned pc_policy_synced(struct pc_policy *pol, uint64_t dirtied, uint64_t cost_ns, uint64_t now);

/**
 * pc_policy_pass_end() - pass @iteration ended (0 = bulk) and the sync
 * after it left @remaining dirty bytes. Return: what to do next. Updates
 * expected_downtime_ns.
 *
 * SWITCHOVER if the expected downtime (struct pc_switch_in, with the
 * link's queued bytes and round trips, the dirty rate, the device state and
 * pc_policy_switch_bandwidth()) <= downtime limit (the bulk pass may end so); else FORCE or
 * ABORT (params.on_limit; POSTCOPY is FORCE here, the source makes it a
 * postcopy switchover) if the watchdog says so (last_verdict tells
 * why); else CONTINUE. With no estimate yet (no window closed) and no
 * avail-switchover-bandwidth, only remaining + device state = 0 switches.
 */
enum pc_decision pc_policy_pass_end(struct pc_policy *pol, unsigned iteration,
				    uint64_t remaining, uint64_t now);

/** pc_policy_tick() - mid-pass: PC_CONTINUE, or PC_FORCE / PC_ABORT on max-time.
 *  Always PC_CONTINUE once pc_policy_set_switchover() was called. */
enum pc_decision pc_policy_tick(struct pc_policy *pol, uint64_t now);

/**
 * pc_policy_switch_bandwidth() - bytes/s the switchover decision uses now:
 * avail-switchover-bandwidth if set; else, once the link has an estimate,
 * the lower of it and the sender's rate (when known); else the busy-time
 * estimate of pc_policy_sent() (time inside send calls).
 */
double pc_policy_switch_bandwidth(const struct pc_policy *pol);

/** pc_policy_downtime_limit_ns() - params.downtime_limit_ms in ns. */
uint64_t pc_policy_downtime_limit_ns(const struct pc_policy *pol);

#endif /* PC_POLICY_H */

/* SPDX-License-Identifier: MIT */
/*
 * policy.c - the decisions of a precopy migration, as pure code.
 *
 * No I/O, no clock reads, no allocation: every time comes in as an
 * argument in nanoseconds. See policy.h for the contract; the choices made
 * here (smoothing weight, tailslow step, guards) are documented next to the
 * code that makes them.
 */
#include "policy.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* a * b without wrapping: UINT64_MAX when the product does not fit. */
static uint64_t mul_sat(uint64_t a, uint64_t b)
{
	if (a != 0 && b > UINT64_MAX / a)
		return UINT64_MAX;
	return a * b;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* ------------------------------------------------------------------ */
/* Parameters                                                          */
/* ------------------------------------------------------------------ */

void pc_policy_params_defaults(struct precopy_params *p)
{
	/* Every field not named here is 0 or false. */
	*p = (struct precopy_params){
		.downtime_limit_ms = 300,
		.throttle_trigger_threshold = 50,
		.cpu_throttle_initial = 20,
		.cpu_throttle_increment = 10,
		.max_cpu_throttle = 99,
		.on_limit = PRECOPY_ON_LIMIT_FORCE,
		.channels = 1,
		.timeout_ms = 15000,
	};
}

static int bad(char *why, size_t whylen, const char *what)
{
	if (why && whylen)
		snprintf(why, whylen, "%s", what);
	return -EINVAL;
}

int pc_policy_params_check(const struct precopy_params *p, char *why, size_t whylen)
{
	if (!p)
		return bad(why, whylen, "params: NULL");
	if (p->downtime_limit_ms == 0)
		return bad(why, whylen, "downtime_limit_ms: 0 (a pause of no time cannot be met)");
	if (p->downtime_limit_ms > PC_DOWNTIME_LIMIT_MAX_MS)
		return bad(why, whylen, "downtime_limit_ms: above 2000000 (2000 s)");
	if (p->throttle_trigger_threshold < 1 || p->throttle_trigger_threshold > 100)
		return bad(why, whylen, "throttle_trigger_threshold: not in 1..100");
	if (p->cpu_throttle_initial < 1 || p->cpu_throttle_initial > 99)
		return bad(why, whylen, "cpu_throttle_initial: not in 1..99");
	if (p->cpu_throttle_increment < 1 || p->cpu_throttle_increment > 99)
		return bad(why, whylen, "cpu_throttle_increment: not in 1..99");
	if (p->max_cpu_throttle < 1 || p->max_cpu_throttle > 99)
		return bad(why, whylen, "max_cpu_throttle: not in 1..99");
	if (p->cpu_throttle_initial > p->max_cpu_throttle)
		return bad(why, whylen, "cpu_throttle_initial: above max_cpu_throttle");
	if (p->on_limit != PRECOPY_ON_LIMIT_FORCE && p->on_limit != PRECOPY_ON_LIMIT_ABORT &&
	    p->on_limit != PRECOPY_ON_LIMIT_POSTCOPY)
		return bad(why, whylen, "on_limit: none of FORCE, ABORT, POSTCOPY");
	if (p->channels < 1 || p->channels > PRECOPY_MAX_CHANNELS)
		return bad(why, whylen, "channels: not in 1..PRECOPY_MAX_CHANNELS");
	if (p->timeout_ms < 100 || p->timeout_ms > 3600000)
		return bad(why, whylen, "timeout_ms: not in 100..3600000");
	if (why && whylen)
		why[0] = '\0';
	return 0;
}

/* ------------------------------------------------------------------ */
/* Bandwidth estimate                                                  */
/* ------------------------------------------------------------------ */

void pc_bw_init(struct pc_bw *b, uint64_t now)
{
	memset(b, 0, sizeof(*b));
	b->win_start = now;
}

static double ewma(double prev, double sample)
{
	return prev + PC_BW_EWMA_WEIGHT * (sample - prev);
}

void pc_bw_sample(struct pc_bw *b, uint64_t bytes, uint64_t busy_ns, uint64_t now)
{
	b->win_bytes = add_sat(b->win_bytes, bytes);
	b->win_busy = add_sat(b->win_busy, busy_ns);

	/* A clock that stepped back (callers on several threads reading the
	 * clock before taking the lock) just extends the window. */
	if (now < b->win_start || now - b->win_start < PC_BW_WINDOW_NS)
		return;

	double wall_ns = (double)(now - b->win_start);
	double wall = (double)b->win_bytes * 1e9 / wall_ns;

	/* Wall estimate: every window counts, idle ones too. An idle window
	 * drags it down: that is what wall time measures (and QEMU's figure
	 * does the same); it is reported, not used for decisions. */
	b->wall_bps = b->windows == 0 ? wall : ewma(b->wall_bps, wall);

	/* Busy estimate: only windows that saw the channel transmit for a
	 * measurable time. An idle window (no bytes) says nothing about the
	 * link, and a window with bytes but (almost) no busy time would give
	 * an absurd or infinite rate: both keep the previous estimate. */
	if (b->win_bytes > 0 && b->win_busy >= PC_BW_MIN_BUSY_NS) {
		double busy = (double)b->win_bytes * 1e9 / (double)b->win_busy;

		b->busy_bps = b->busy_bps <= 0 ? busy : ewma(b->busy_bps, busy);
	}

	b->windows++;
	b->win_start = now;
	b->win_bytes = 0;
	b->win_busy = 0;
}

double pc_bw_busy(const struct pc_bw *b)
{
	return b->busy_bps;
}

double pc_bw_wall(const struct pc_bw *b)
{
	return b->wall_bps;
}

/* ------------------------------------------------------------------ */
/* Link estimate                                                       */
/* ------------------------------------------------------------------ */

const char *pc_link_source_name(enum pc_link_source s)
{
	switch (s) {
	case PC_LINK_SRC_NONE: return "none";
	case PC_LINK_SRC_SEND_TIME: return "send-time";
	case PC_LINK_SRC_TCP_INFO: return "tcp-info";
	case PC_LINK_SRC_COMPLETIONS: return "rdma-completions";
	case PC_LINK_SRC_COPY: return "shm-copy";
	case PC_LINK_SRC_AVAIL: return "avail-switchover-bandwidth";
	}
	return "unknown";
}

void pc_link_init(struct pc_link *l, uint64_t now)
{
	memset(l, 0, sizeof(*l));
	l->win_start = now;
}

static void link_restart(struct pc_link *l, unsigned n, const struct pc_link_sample *s,
			 uint64_t now)
{
	for (unsigned i = 0; i < n; i++) {
		l->busy0[i] = l->busy1[i] = s[i].busy_ns;
		l->del0[i] = l->del1[i] = s[i].delivered;
	}
	l->nchan = n;
	l->win_start = l->last = now;
	l->win_busy = l->sus_busy = l->sus_del = 0;
	l->primed = true;
	memset(l->nrate, 0, sizeof(l->nrate));
}

void pc_link_rate(struct pc_link *l, unsigned chan, double bps, bool app_limited)
{
	if (chan >= PRECOPY_MAX_CHANNELS || app_limited || !(bps > 0))
		return;
	l->rate[chan][l->nrate[chan] % PC_LINK_RATE_SAMPLES] = bps;
	l->nrate[chan]++;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/*
 * Sum over the channels that delivered in this window (@del0 < now's) of
 * the median of their samples; 0 unless each of them has enough samples
 * (a channel that delivered and is missing would make the sum too low).
 */
static double link_rate_median(struct pc_link *l, unsigned n, const struct pc_link_sample *s)
{
	double sum = 0;

	for (unsigned c = 0; c < n; c++) {
		unsigned k = l->nrate[c] < PC_LINK_RATE_SAMPLES ? l->nrate[c] : PC_LINK_RATE_SAMPLES;
		double v[PC_LINK_RATE_SAMPLES];

		if (s[c].delivered == l->del0[c])
			continue;
		if (k < PC_LINK_MIN_RATE_SAMPLES)
			return 0;
		memcpy(v, l->rate[c], k * sizeof(double));
		qsort(v, k, sizeof(double), cmp_double);
		sum += k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
	}
	return sum;
}

/*
 * A closed window's rate @r over @bytes into the estimate; @sustained: over
 * steps the link set the pace of. Those are measures of the link, weighted
 * by the bytes they carried (a window that moved 20 MB says more than one
 * that moved 70 KB during a stall), older ones fading by the EWMA's weight;
 * the first replaces whatever the lower bounds before it said.
 */
static void link_window(struct pc_link *l, double r, double bytes, bool sustained)
{
	if (sustained) {
		double keep = l->measured ? 1 - PC_BW_EWMA_WEIGHT : 0;

		l->wbytes = keep * l->wbytes + bytes;
		l->wrate = keep * l->wrate + bytes * r;
		l->bps = l->wrate / l->wbytes;
		l->measured = true;
	} else if (!l->measured) {
		/* Busy in short bursts, all there is so far. Once a sustained
		 * window closed these are left out: a burst's busy time counts
		 * its wait for the last ACK (too low a rate), and a shaper
		 * lets a short burst through above its rate (too high). */
		l->bps = l->windows == 0 ? r : ewma(l->bps, r);
	}
	l->windows++;
}

/* One step since the last sample: the longest channel's busy time, and
 * the bytes of every channel. */
static int link_step(struct pc_link *l, unsigned n, const struct pc_link_sample *s, uint64_t now,
		     uint64_t backlog, uint64_t *del)
{
	uint64_t step = 0, sdel = 0;

	*del = 0;
	for (unsigned i = 0; i < n; i++) {
		if (s[i].busy_ns < l->busy1[i] || s[i].delivered < l->del1[i])
			return -1; /* counters went back: a new connection */
		if (s[i].busy_ns - l->busy1[i] > step)
			step = s[i].busy_ns - l->busy1[i];
		sdel = add_sat(sdel, s[i].delivered - l->del1[i]);
		*del = add_sat(*del, s[i].delivered - l->del0[i]);
	}
	for (unsigned i = 0; i < n; i++) {
		l->busy1[i] = s[i].busy_ns;
		l->del1[i] = s[i].delivered;
	}
	l->win_busy = add_sat(l->win_busy, step);
	/*
	 * The link set the pace of this step if it was busy for at least
	 * half of it (the kernel counts in jiffies) with a backlog, at the
	 * step's start, of at least what it delivered: bytes waiting for the
	 * link, not a sender trickling batches whose last segment waits for
	 * an ACK (busy, but not transmitting). Such steps are long enough
	 * for a shaper's burst allowance to be spent.
	 */
	if (now > l->last && 2 * step >= now - l->last && backlog >= sdel) {
		l->sus_busy = add_sat(l->sus_busy, step);
		l->sus_del = add_sat(l->sus_del, sdel);
	}
	l->last = now;
	return 0;
}

void pc_link_sample(struct pc_link *l, enum pc_link_source source, unsigned n,
		    const struct pc_link_sample *s, uint64_t now)
{
	uint64_t del, queued = 0, rtt = 0, backlog = l->queued;

	if (n > PRECOPY_MAX_CHANNELS)
		n = PRECOPY_MAX_CHANNELS;
	if (n == 0)
		return;
	for (unsigned i = 0; i < n; i++) {
		queued = add_sat(queued, s[i].queued);
		if (s[i].rtt_ns > rtt)
			rtt = s[i].rtt_ns;
	}
	l->queued = queued;
	l->rtt_ns = rtt;
	l->source = source;
	if (!l->primed || n != l->nchan || now < l->last || link_step(l, n, s, now, backlog, &del)) {
		link_restart(l, n, s, now);
		return;
	}
	if (now - l->win_start < PC_BW_WINDOW_NS || l->win_busy < PC_LINK_MIN_BUSY_NS)
		return; /* keep accumulating */
	if (del > 0) {
		bool sus = l->sus_busy >= PC_LINK_MIN_BUSY_NS && l->sus_del > 0;
		double r = sus ? (double)l->sus_del * 1e9 / (double)l->sus_busy
			       : (double)del * 1e9 / (double)l->win_busy;
		double m = link_rate_median(l, n, s);

		if (m > 0 && m < r)
			r = m;
		link_window(l, r, (double)(sus ? l->sus_del : del), sus);
	}
	link_restart(l, n, s, now);
}

double pc_link_bps(const struct pc_link *l)
{
	return l->bps;
}

/* ------------------------------------------------------------------ */
/* Switchover                                                          */
/* ------------------------------------------------------------------ */

double pc_switch_bandwidth(uint64_t avail, double estimate)
{
	return avail ? (double)avail : estimate;
}

uint64_t pc_switch_expected_ns(const struct pc_switch_in *in)
{
	uint64_t bytes = add_sat(in->remaining_bytes, in->device_state_bytes);
	uint64_t fixed = add_sat(in->sync_cost_ns, in->end_ns);

	bytes = add_sat(bytes, in->queued_bytes);
	if (in->dirty_bps > 0 && in->sync_cost_ns) {
		double w = in->dirty_bps * (double)in->sync_cost_ns / 1e9;

		bytes = add_sat(bytes, w < 1.8e19 ? (uint64_t)w : UINT64_MAX);
	}
	if (bytes == 0)
		return fixed;
	/* !(bw > 0) also catches NaN. */
	if (!(in->bandwidth > 0))
		return UINT64_MAX;

	/* Rounded to the nearest ns so that a transfer time that is exactly
	 * the limit in decimal (30 MB at 100 MB/s = 300 ms) is not pushed
	 * over it by binary rounding. */
	double t = (double)bytes * 1e9 / in->bandwidth;

	if (!(t < 18446744073709549568.0)) /* largest double below 2^64 */
		return UINT64_MAX;
	return add_sat((uint64_t)llround(t), fixed);
}

bool pc_switch_ok(const struct pc_switch_in *in)
{
	uint64_t e = pc_switch_expected_ns(in);

	/* UINT64_MAX means "never": it does not fit even an unbounded limit. */
	return e != UINT64_MAX && e <= in->downtime_limit_ns;
}

/* ------------------------------------------------------------------ */
/* max-bandwidth                                                       */
/* ------------------------------------------------------------------ */

static double bucket_depth(uint64_t rate)
{
	return (double)rate * (double)PC_BUCKET_SLICE_NS / 1e9;
}

/* Move to the slice that holds @now, adding each elapsed slice's budget. */
static void bucket_refill(struct pc_bucket *b, uint64_t now)
{
	if (now < b->last || now - b->last < PC_BUCKET_SLICE_NS)
		return; /* same slice; never move back: see pc_bw_sample() */
	uint64_t n = (now - b->last) / PC_BUCKET_SLICE_NS;

	b->last += n * PC_BUCKET_SLICE_NS;
	if (b->rate) {
		double depth = bucket_depth(b->rate);

		b->tokens += (double)n * depth;
		if (b->tokens > depth)
			b->tokens = depth;
	}
}

/* Slices are aligned on the clock, so that every bucket (and every
 * channel sharing one) agrees on where they start. */
static uint64_t slice_start(uint64_t now)
{
	return now - now % PC_BUCKET_SLICE_NS;
}

void pc_bucket_init(struct pc_bucket *b, uint64_t rate, uint64_t now)
{
	b->rate = rate;
	b->tokens = bucket_depth(rate);
	b->last = slice_start(now);
}

void pc_bucket_set_rate(struct pc_bucket *b, uint64_t rate, uint64_t now)
{
	bucket_refill(b, now);
	if (b->rate == 0) {
		/* From unlimited: start full, as after init. */
		b->tokens = bucket_depth(rate);
		b->last = slice_start(now);
	} else if (rate) {
		/* Keep any debt; cap savings to the new depth. */
		double depth = bucket_depth(rate);

		if (b->tokens > depth)
			b->tokens = depth;
	}
	b->rate = rate;
	if (rate == 0)
		b->tokens = 0;
}

uint64_t pc_bucket_take(struct pc_bucket *b, uint64_t bytes, uint64_t now)
{
	if (b->rate == 0)
		return 0;
	bucket_refill(b, now);
	b->tokens -= (double)bytes;
	if (b->tokens >= 0)
		return 0;

	/* The debt is paid at the start of slice last + k, k >= 1, where
	 * k x depth >= debt. */
	double k = ceil(-b->tokens / bucket_depth(b->rate));

	if (k < 1)
		k = 1;
	double end = (double)b->last + k * (double)PC_BUCKET_SLICE_NS;

	if (!(end < 18446744073709549568.0))
		return UINT64_MAX;
	uint64_t e = (uint64_t)end;

	return e > now ? e - now : 0;
}

/* ------------------------------------------------------------------ */
/* Auto-converge                                                       */
/* ------------------------------------------------------------------ */

/* The auto-converge parameters of @p, into @t. */
static void throttle_take_params(struct pc_throttle *t, const struct precopy_params *p)
{
	t->enabled = p->auto_converge;
	t->threshold = p->throttle_trigger_threshold;
	t->initial = p->cpu_throttle_initial;
	t->increment = p->cpu_throttle_increment;
	t->max = p->max_cpu_throttle;
	t->tailslow = p->cpu_throttle_tailslow;
}

void pc_throttle_init(struct pc_throttle *t, const struct precopy_params *p, uint64_t now)
{
	memset(t, 0, sizeof(*t));
	throttle_take_params(t, p);
	t->period_start = now;
}

/* dirtied > threshold% of sent, exactly (equal is not over). */
static bool over_threshold(uint64_t dirtied, uint64_t sent, unsigned threshold)
{
	if (sent == 0)
		return dirtied > 0;
	/* Scale both down until the products fit; the loss of a few low bits
	 * on petabyte periods does not matter. */
	while (dirtied > UINT64_MAX / 100 || sent > UINT64_MAX / 100) {
		dirtied >>= 1;
		sent >>= 1;
	}
	return dirtied * 100 > (uint64_t)threshold * sent;
}

/*
 * The step after the first one. Without tailslow: increment. With
 * tailslow, QEMU's rule (migration/ram.c, mig_throttle_guest_down()):
 * the guest now runs cpu_now = 100 - pct percent of the time; if dirtying
 * scales with guest CPU time, running
 *     cpu_ideal = floor(cpu_now * threshold_bytes / dirtied)
 * percent would bring the bytes dirtied down to the threshold
 * (threshold_bytes = threshold% of sent). The step is
 *     min(increment, cpu_now - cpu_ideal),
 * at least 1 (dirtied > threshold_bytes makes the ratio < 1 and the floor
 * strictly below cpu_now), never more than increment, and monotone: a
 * larger dirtied/sent ratio gives a smaller cpu_ideal, so a step at least
 * as large. With nothing sent the ratio is 0 and the step is increment.
 */
static unsigned throttle_step(const struct pc_throttle *t)
{
	if (!t->tailslow)
		return t->increment;

	unsigned cpu_now = 100 - t->pct;
	unsigned cpu_ideal;

	if (t->dirtied == 0) {
		cpu_ideal = cpu_now; /* not reached: no dirtying is never over */
	} else if (t->sent <= UINT64_MAX / 10000 && t->dirtied <= UINT64_MAX / 100) {
		/* Exact: no rounding can move the floor. */
		uint64_t num = (uint64_t)cpu_now * t->threshold * t->sent;
		uint64_t q = num / (t->dirtied * 100);

		cpu_ideal = q < cpu_now ? (unsigned)q : cpu_now;
	} else {
		double r = (double)t->threshold / 100.0 * (double)t->sent / (double)t->dirtied;

		cpu_ideal = r < 1.0 ? (unsigned)floor((double)cpu_now * r) : cpu_now;
	}

	unsigned step = cpu_now - cpu_ideal;

	return step < t->increment ? step : t->increment;
}

static void throttle_raise(struct pc_throttle *t)
{
	unsigned next;

	if (t->pct == 0)
		next = t->initial;
	else
		next = t->pct + throttle_step(t);
	if (next > t->max)
		next = t->max;
	if (next > t->pct)
		t->pct = next;
}

unsigned pc_throttle_account(struct pc_throttle *t, uint64_t dirtied, uint64_t sent,
			     uint64_t now)
{
	if (!t->enabled)
		return 0;
	t->dirtied = add_sat(t->dirtied, dirtied);
	t->sent = add_sat(t->sent, sent);
	if (now < t->period_start || now - t->period_start < PC_THROTTLE_PERIOD_NS)
		return t->pct;

	/* Judge the period. Unlike QEMU (whose dirty_rate_high_cnt is only
	 * reset after throttling), a period under the threshold resets the
	 * count: two periods over it must be in a row, as documented. */
	if (over_threshold(t->dirtied, t->sent, t->threshold)) {
		if (++t->hits >= 2) {
			throttle_raise(t);
			t->hits = 0;
		}
	} else {
		t->hits = 0;
	}
	t->period_start = now;
	t->dirtied = 0;
	t->sent = 0;
	return t->pct;
}

/* ------------------------------------------------------------------ */
/* Watchdog                                                            */
/* ------------------------------------------------------------------ */

void pc_watchdog_init(struct pc_watchdog *w, const struct precopy_params *p, uint64_t now)
{
	memset(w, 0, sizeof(*w));
	w->max_iterations = p->max_iterations;
	w->max_time_ns = mul_sat(p->max_time_ms, PC_NSEC_PER_MSEC);
	w->stall_iterations = p->stall_iterations;
	w->start = now;
	w->best_remaining = UINT64_MAX;
}

enum pc_wd_verdict pc_watchdog_tick(const struct pc_watchdog *w, uint64_t now)
{
	if (w->max_time_ns && now >= w->start && now - w->start >= w->max_time_ns)
		return PC_WD_MAX_TIME;
	return PC_WD_OK;
}

enum pc_wd_verdict pc_watchdog_pass_end(struct pc_watchdog *w, unsigned iteration,
					uint64_t remaining, uint64_t now)
{
	/* Stall bookkeeping first, whatever the verdict. */
	if (remaining < w->best_remaining) {
		w->best_remaining = remaining;
		w->stalled = 0;
	} else {
		w->stalled++;
	}

	if (w->max_iterations && iteration >= w->max_iterations)
		return PC_WD_MAX_ITERATIONS;
	if (pc_watchdog_tick(w, now) != PC_WD_OK)
		return PC_WD_MAX_TIME;
	if (w->stall_iterations && w->stalled >= w->stall_iterations)
		return PC_WD_STALL;
	return PC_WD_OK;
}

const char *pc_wd_reason(enum pc_wd_verdict v)
{
	switch (v) {
	case PC_WD_OK:
		return "no limit reached";
	case PC_WD_MAX_ITERATIONS:
		return "max-iterations reached";
	case PC_WD_MAX_TIME:
		return "max-time reached";
	case PC_WD_STALL:
		return "stalled: remaining not shrinking";
	}
	return "unknown watchdog verdict";
}

/* ------------------------------------------------------------------ */
/* The controller                                                      */
/* ------------------------------------------------------------------ */

void pc_policy_init(struct pc_policy *pol, const struct precopy_params *p, uint64_t now)
{
	memset(pol, 0, sizeof(*pol));
	pol->params = *p;
	if (pol->params.channels < 1)
		pol->params.channels = 1;
	if (pol->params.channels > PRECOPY_MAX_CHANNELS)
		pol->params.channels = PRECOPY_MAX_CHANNELS;
	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++)
		pc_bw_init(&pol->bw[i], now);
	pc_bucket_init(&pol->bucket, p->max_bandwidth, now);
	pc_throttle_init(&pol->throttle, p, now);
	pc_watchdog_init(&pol->wd, p, now);
	pc_link_init(&pol->link, now);
	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++)
		pc_bw_init(&pol->sender[i], now);
	pol->dirty_bps = 0;
	pol->device_state_bytes = 0;
	pol->sync_cost_ns = 0;
	pol->expected_downtime_ns = UINT64_MAX;
	pol->last_verdict = PC_WD_OK;
	pol->switchover = false;
}

unsigned pc_policy_update(struct pc_policy *pol, const struct precopy_params *p, uint64_t now)
{
	struct pc_throttle *t = &pol->throttle;
	unsigned channels = pol->params.channels, timeout_ms = pol->params.timeout_ms;

	pol->params = *p;
	pol->params.channels = channels;
	pol->params.timeout_ms = timeout_ms;
	if (pol->bucket.rate != p->max_bandwidth)
		pc_bucket_set_rate(&pol->bucket, p->max_bandwidth, now);

	if (t->enabled && !p->auto_converge) {
		t->pct = 0;
		t->hits = 0;
	} else if (!t->enabled && p->auto_converge) {
		/* A fresh period: what was dirtied and sent before counted for nothing. */
		t->period_start = now;
		t->dirtied = 0;
		t->sent = 0;
		t->hits = 0;
	}
	throttle_take_params(t, p);
	if (t->pct > t->max)
		t->pct = t->max;

	pol->wd.max_iterations = p->max_iterations;
	pol->wd.max_time_ns = mul_sat(p->max_time_ms, PC_NSEC_PER_MSEC);
	pol->wd.stall_iterations = p->stall_iterations;
	return t->pct;
}

void pc_policy_set_device_state(struct pc_policy *pol, uint64_t bytes)
{
	pol->device_state_bytes = bytes;
}

uint64_t pc_policy_sent(struct pc_policy *pol, unsigned chan, uint64_t bytes,
			uint64_t busy_ns, uint64_t now)
{
	if (chan < PRECOPY_MAX_CHANNELS)
		pc_bw_sample(&pol->bw[chan], bytes, busy_ns, now);
	/* Sent bytes join the current throttle period; it is judged only at
	 * a sync, when the bytes dirtied in the same period are known. */
	if (pol->throttle.enabled)
		pol->throttle.sent = add_sat(pol->throttle.sent, bytes);
	if (pol->switchover)
		return 0;
	return pc_bucket_take(&pol->bucket, bytes, now);
}

void pc_policy_sender(struct pc_policy *pol, unsigned chan, uint64_t ram_bytes,
		      uint64_t active_ns, uint64_t now)
{
	if (chan < PRECOPY_MAX_CHANNELS)
		pc_bw_sample(&pol->sender[chan], ram_bytes, active_ns, now);
}

double pc_policy_bw_sender(const struct pc_policy *pol)
{
	double sum = 0;

	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++)
		sum += pc_bw_busy(&pol->sender[i]);
	return sum;
}

void pc_policy_link(struct pc_policy *pol, enum pc_link_source source, unsigned n,
		    const struct pc_link_sample *s, uint64_t now)
{
	pc_link_sample(&pol->link, source, n, s, now);
}

void pc_policy_link_rate(struct pc_policy *pol, unsigned chan, double bps, bool app_limited)
{
	pc_link_rate(&pol->link, chan, bps, app_limited);
}

void pc_policy_dirty_rate(struct pc_policy *pol, double bps)
{
	pol->dirty_bps = bps > 0 ? bps : 0;
}

enum pc_link_source pc_policy_bandwidth_source(const struct pc_policy *pol)
{
	if (pol->params.avail_switchover_bandwidth)
		return PC_LINK_SRC_AVAIL;
	if (pc_link_bps(&pol->link) > 0)
		return pol->link.source;
	if (pc_policy_bw_busy(pol) > 0)
		return PC_LINK_SRC_SEND_TIME;
	return PC_LINK_SRC_NONE;
}

double pc_policy_bw_busy(const struct pc_policy *pol)
{
	double sum = 0;

	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++)
		sum += pc_bw_busy(&pol->bw[i]);
	return sum;
}

double pc_policy_bw_wall(const struct pc_policy *pol)
{
	double sum = 0;

	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++)
		sum += pc_bw_wall(&pol->bw[i]);
	return sum;
}

void pc_policy_set_switchover(struct pc_policy *pol)
{
	pol->switchover = true;
}

unsigned pc_policy_synced(struct pc_policy *pol, uint64_t dirtied, uint64_t cost_ns, uint64_t now)
{
	pol->sync_cost_ns = cost_ns;
	return pc_throttle_account(&pol->throttle, dirtied, 0, now);
}

double pc_policy_switch_bandwidth(const struct pc_policy *pol)
{
	double est = pc_link_bps(&pol->link), snd = pc_policy_bw_sender(pol);

	if (est > 0) {
		if (snd > 0 && snd < est)
			est = snd;
	} else {
		est = pc_policy_bw_busy(pol);
	}
	return pc_switch_bandwidth(pol->params.avail_switchover_bandwidth, est);
}

uint64_t pc_policy_downtime_limit_ns(const struct pc_policy *pol)
{
	return mul_sat(pol->params.downtime_limit_ms, PC_NSEC_PER_MSEC);
}

/* POSTCOPY forces the switchover too; the source makes it a postcopy one. */
static enum pc_decision on_limit(const struct pc_policy *pol)
{
	return pol->params.on_limit == PRECOPY_ON_LIMIT_ABORT ? PC_ABORT : PC_FORCE;
}

enum pc_decision pc_policy_pass_end(struct pc_policy *pol, unsigned iteration,
				    uint64_t remaining, uint64_t now)
{
	struct pc_switch_in in = {
		.remaining_bytes = remaining,
		.device_state_bytes = pol->device_state_bytes,
		.bandwidth = pc_policy_switch_bandwidth(pol),
		.sync_cost_ns = pol->sync_cost_ns,
		.downtime_limit_ns = pc_policy_downtime_limit_ns(pol),
		.queued_bytes = pol->link.queued,
		.dirty_bps = pol->dirty_bps,
		.end_ns = mul_sat(pol->link.rtt_ns, 2),
	};
	/* The watchdog sees every pass end, so its stall count is right even
	 * on the pass that switches over. */
	enum pc_wd_verdict v = pc_watchdog_pass_end(&pol->wd, iteration, remaining, now);

	pol->expected_downtime_ns = pc_switch_expected_ns(&in);
	if (pc_switch_ok(&in)) {
		pol->last_verdict = PC_WD_OK;
		return PC_SWITCHOVER;
	}
	pol->last_verdict = v;
	if (v != PC_WD_OK)
		return on_limit(pol);
	return PC_CONTINUE;
}

enum pc_decision pc_policy_tick(struct pc_policy *pol, uint64_t now)
{
	if (pol->switchover)
		return PC_CONTINUE;

	enum pc_wd_verdict v = pc_watchdog_tick(&pol->wd, now);

	if (v == PC_WD_OK)
		return PC_CONTINUE;
	pol->last_verdict = v;
	return on_limit(pol);
}

/* SPDX-License-Identifier: MIT */
/*
 * test_policy.c - unit tests of engine/policy/policy.c with a fake clock.
 *
 * Every time below is a plain number of ns that the test advances itself;
 * nothing reads a clock. Names: function__condition.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "policy.h"

#define MS PC_NSEC_PER_MSEC
#define SEC PC_NSEC_PER_SEC
#define MB 1000000ull

static struct precopy_params defaults(void)
{
	struct precopy_params p;

	pc_policy_params_defaults(&p);
	return p;
}

static void assert_near(double got, double want, double rel)
{
	if (fabs(got - want) > rel * fabs(want))
		fail_msg("got %.6g, want %.6g within %.3g%%", got, want, rel * 100);
}

/* ------------------------------------------------------------------ */
/* Parameters                                                          */
/* ------------------------------------------------------------------ */

static void params_defaults__match_precopy_h(void **state)
{
	(void)state;
	struct precopy_params p = defaults();

	assert_int_equal(p.max_bandwidth, 0);
	assert_int_equal(p.downtime_limit_ms, 300);
	assert_int_equal(p.avail_switchover_bandwidth, 0);
	assert_false(p.auto_converge);
	assert_int_equal(p.throttle_trigger_threshold, 50);
	assert_int_equal(p.cpu_throttle_initial, 20);
	assert_int_equal(p.cpu_throttle_increment, 10);
	assert_int_equal(p.max_cpu_throttle, 99);
	assert_false(p.cpu_throttle_tailslow);
	assert_int_equal(p.max_iterations, 0);
	assert_int_equal(p.max_time_ms, 0);
	assert_int_equal(p.stall_iterations, 0);
	assert_int_equal(p.on_limit, PRECOPY_ON_LIMIT_FORCE);
	assert_int_equal(p.channels, 1);
	assert_int_equal(pc_policy_params_check(&p, NULL, 0), 0);
}

static void params_check__names_the_bad_field(void **state)
{
	(void)state;
	char why[128];
	struct precopy_params p = defaults();

	p.max_cpu_throttle = 100;
	assert_int_equal(pc_policy_params_check(&p, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "max_cpu_throttle"));

	p = defaults();
	p.channels = 0;
	assert_int_equal(pc_policy_params_check(&p, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "channels"));

	p = defaults();
	p.throttle_trigger_threshold = 0;
	assert_int_equal(pc_policy_params_check(&p, why, sizeof(why)), -EINVAL);

	p = defaults();
	p.on_limit = (enum precopy_on_limit)7;
	assert_int_equal(pc_policy_params_check(&p, why, sizeof(why)), -EINVAL);

	assert_int_equal(pc_policy_params_check(NULL, why, sizeof(why)), -EINVAL);
}

/* ------------------------------------------------------------------ */
/* Bandwidth estimate                                                  */
/* ------------------------------------------------------------------ */

static void bw__no_estimate_before_a_window_closes(void **state)
{
	(void)state;
	struct pc_bw b;

	pc_bw_init(&b, 0);
	pc_bw_sample(&b, 10 * MB, 10 * MS, 50 * MS);
	pc_bw_sample(&b, 10 * MB, 10 * MS, 100 * MS - 1);
	assert_true(pc_bw_busy(&b) == 0);
	assert_true(pc_bw_wall(&b) == 0);
	assert_int_equal(b.windows, 0);
}

static void bw__first_window_taken_as_is(void **state)
{
	(void)state;
	struct pc_bw b;

	pc_bw_init(&b, 0);
	/* 100 MB in 100 ms of wall, 50 ms of it transmitting. */
	pc_bw_sample(&b, 100 * MB, 50 * MS, 100 * MS);
	assert_int_equal(b.windows, 1);
	assert_near(pc_bw_busy(&b), 2000.0 * MB, 1e-12);
	assert_near(pc_bw_wall(&b), 1000.0 * MB, 1e-12);
}

static void bw__later_windows_smoothed_with_weight(void **state)
{
	(void)state;
	struct pc_bw b;

	pc_bw_init(&b, 0);
	pc_bw_sample(&b, 100 * MB, 100 * MS, 100 * MS); /* 1000 MB/s */
	pc_bw_sample(&b, 200 * MB, 100 * MS, 200 * MS); /* 2000 MB/s */
	double want = 1000.0 * MB + PC_BW_EWMA_WEIGHT * 1000.0 * MB;

	assert_near(pc_bw_busy(&b), want, 1e-12);
	assert_near(pc_bw_wall(&b), want, 1e-12);
}

static void bw__idle_window_keeps_busy_wall_falls(void **state)
{
	(void)state;
	struct pc_bw b;

	pc_bw_init(&b, 0);
	pc_bw_sample(&b, 100 * MB, 100 * MS, 100 * MS);
	double busy = pc_bw_busy(&b), wall = pc_bw_wall(&b);

	/* Nothing to send for a second: ten empty samples, 100 ms apart. */
	for (int i = 2; i <= 11; i++)
		pc_bw_sample(&b, 0, 0, (uint64_t)i * 100 * MS);
	assert_int_equal(b.windows, 11);
	assert_true(pc_bw_busy(&b) == busy);
	assert_true(pc_bw_wall(&b) < wall * 0.1);
	assert_true(pc_bw_wall(&b) > 0);
}

static void bw__zero_busy_time_keeps_previous(void **state)
{
	(void)state;
	struct pc_bw b;

	/* First window: bytes but no busy time. No infinity, no estimate. */
	pc_bw_init(&b, 0);
	pc_bw_sample(&b, 100 * MB, 0, 100 * MS);
	assert_true(pc_bw_busy(&b) == 0);
	assert_false(isinf(pc_bw_busy(&b)));
	assert_near(pc_bw_wall(&b), 1000.0 * MB, 1e-12);

	/* A real window, then one with ~0 busy time: kept. */
	pc_bw_sample(&b, 100 * MB, 100 * MS, 200 * MS);
	assert_near(pc_bw_busy(&b), 1000.0 * MB, 1e-12);
	pc_bw_sample(&b, 100 * MB, PC_BW_MIN_BUSY_NS - 1, 300 * MS);
	assert_near(pc_bw_busy(&b), 1000.0 * MB, 1e-12);
	assert_true(isfinite(pc_bw_busy(&b)));
}

/*
 * The field failure: a sender that spends 90% of its time scanning and
 * testing zero pages. The link runs at 1 GB/s whenever it is used.
 */
static void bw__busy_sender_busy_estimate_stays_at_link_speed(void **state)
{
	(void)state;
	const double link = 1000.0 * MB;
	struct pc_bw b;
	uint64_t now = 0;

	pc_bw_init(&b, now);
	for (int i = 0; i < 1000; i++) { /* 10 s */
		uint64_t bytes = 1 * MB;
		uint64_t busy = (uint64_t)((double)bytes / link * 1e9); /* 1 ms */

		now += 9 * MS; /* scanning, zero checks */
		now += busy;
		pc_bw_sample(&b, bytes, busy, now);
	}
	assert_near(pc_bw_busy(&b), link, 0.05);
	assert_true(pc_bw_wall(&b) < 0.2 * link);
	assert_near(pc_bw_wall(&b), 0.1 * link, 0.05);
}

static void bw__backwards_clock_does_not_close_window(void **state)
{
	(void)state;
	struct pc_bw b;

	pc_bw_init(&b, 1000 * MS);
	pc_bw_sample(&b, MB, MS, 500 * MS);
	assert_int_equal(b.windows, 0);
	pc_bw_sample(&b, MB, MS, 1100 * MS);
	assert_int_equal(b.windows, 1);
	assert_near(pc_bw_busy(&b), 1000.0 * MB, 1e-12);
}

/* ------------------------------------------------------------------ */
/* Switchover                                                          */
/* ------------------------------------------------------------------ */

static void switch_expected__counts_device_state_and_sync_cost(void **state)
{
	(void)state;
	struct pc_switch_in in = {
		.remaining_bytes = 80 * MB,
		.device_state_bytes = 20 * MB,
		.bandwidth = 1000.0 * MB,
		.sync_cost_ns = 7 * MS,
		.downtime_limit_ns = 300 * MS,
	};

	assert_int_equal(pc_switch_expected_ns(&in), 107 * MS);
	assert_true(pc_switch_ok(&in));
}

static void switch_expected__zero_bandwidth_is_never(void **state)
{
	(void)state;
	struct pc_switch_in in = {
		.remaining_bytes = 1,
		.bandwidth = 0,
		.downtime_limit_ns = UINT64_MAX,
	};

	assert_true(pc_switch_expected_ns(&in) == UINT64_MAX);
	assert_false(pc_switch_ok(&in));
	in.bandwidth = -5;
	assert_true(pc_switch_expected_ns(&in) == UINT64_MAX);
	in.bandwidth = NAN;
	assert_true(pc_switch_expected_ns(&in) == UINT64_MAX);
	in.remaining_bytes = 0;
	in.device_state_bytes = 1;
	in.bandwidth = 0;
	assert_true(pc_switch_expected_ns(&in) == UINT64_MAX);
}

static void switch_expected__nothing_to_send_is_sync_cost(void **state)
{
	(void)state;
	struct pc_switch_in in = {
		.bandwidth = 0,
		.sync_cost_ns = 3 * MS,
		.downtime_limit_ns = 300 * MS,
	};

	assert_int_equal(pc_switch_expected_ns(&in), 3 * MS);
	assert_true(pc_switch_ok(&in));
	in.sync_cost_ns = 301 * MS;
	assert_false(pc_switch_ok(&in));
}

static void switch_ok__exactly_equal_passes(void **state)
{
	(void)state;
	/* 30 MB at 100 MB/s is 300 ms: equal to the limit. */
	struct pc_switch_in in = {
		.remaining_bytes = 30 * MB,
		.bandwidth = 100.0 * MB,
		.downtime_limit_ns = 300 * MS,
	};

	assert_int_equal(pc_switch_expected_ns(&in), 300 * MS);
	assert_true(pc_switch_ok(&in));

	/* With device state and sync cost adding up to the limit. */
	in.remaining_bytes = 20 * MB;
	in.device_state_bytes = 5 * MB;
	in.sync_cost_ns = 50 * MS;
	assert_int_equal(pc_switch_expected_ns(&in), 300 * MS);
	assert_true(pc_switch_ok(&in));

	/* One byte more (10 ns at 100 MB/s) is over. */
	in.remaining_bytes++;
	assert_int_equal(pc_switch_expected_ns(&in), 300 * MS + 10);
	assert_false(pc_switch_ok(&in));
}

static void switch_expected__huge_saturates(void **state)
{
	(void)state;
	struct pc_switch_in in = {
		.remaining_bytes = UINT64_MAX,
		.device_state_bytes = UINT64_MAX,
		.bandwidth = 1e-3,
		.sync_cost_ns = UINT64_MAX,
		.downtime_limit_ns = UINT64_MAX - 1,
	};

	assert_true(pc_switch_expected_ns(&in) == UINT64_MAX);
	assert_false(pc_switch_ok(&in));
}

static void switch_bandwidth__avail_overrides_estimate(void **state)
{
	(void)state;
	assert_true(pc_switch_bandwidth(0, 123.0) == 123.0);
	assert_true(pc_switch_bandwidth(500, 123.0) == 500.0);
	assert_true(pc_switch_bandwidth(500, 0) == 500.0);
}

/* ------------------------------------------------------------------ */
/* max-bandwidth                                                       */
/* ------------------------------------------------------------------ */

static void bucket__rate_zero_is_unlimited(void **state)
{
	(void)state;
	struct pc_bucket b;

	pc_bucket_init(&b, 0, 0);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(pc_bucket_take(&b, 1ull << 40, 0), 0);
}

static void bucket__debt_is_paid_by_the_wait(void **state)
{
	(void)state;
	struct pc_bucket b;

	/* 1 MB/s: a 100 ms slice = 100000 bytes. */
	pc_bucket_init(&b, MB, 0);
	assert_int_equal(pc_bucket_take(&b, 100000, 0), 0);
	/* 150000 more: paid by the next two slices, so wait until 200 ms. */
	assert_int_equal(pc_bucket_take(&b, 150000, 10 * MS), 190 * MS);
	/* At 200 ms the debt is paid and 50000 are left of that slice. */
	assert_int_equal(pc_bucket_take(&b, 50000, 200 * MS), 0);
	assert_int_equal(pc_bucket_take(&b, 1, 250 * MS), 50 * MS);
}

static void bucket__refills_per_slice_up_to_one_slice(void **state)
{
	(void)state;
	struct pc_bucket b;

	pc_bucket_init(&b, MB, 0);
	assert_int_equal(pc_bucket_take(&b, 100000, 0), 0); /* slice spent */
	/* Later in the same slice: nothing came back. */
	assert_int_equal(pc_bucket_take(&b, 1000, 50 * MS), 50 * MS);
	/* The next slice brings a whole slice's worth at once. */
	assert_int_equal(pc_bucket_take(&b, 99000, 100 * MS), 0);
	assert_near(b.tokens, 0, 1e-9);
	/* A long idle refills to one slice's worth, not more. */
	assert_int_equal(pc_bucket_take(&b, 0, 10 * SEC + 30 * MS), 0);
	assert_near(b.tokens, 100000, 1e-9);
	assert_int_equal(b.last, 10 * SEC);
}

/* Slices are on one clock: two buckets of different rates started at
 * different times, and two callers in debt on one bucket, wake at the same
 * boundary. That is what makes the channels send side by side. */
static void bucket__callers_in_debt_wake_at_one_boundary(void **state)
{
	(void)state;
	struct pc_bucket b, c;

	pc_bucket_init(&b, MB, 3 * MS);
	pc_bucket_init(&c, 7 * MB, 42 * MS);
	assert_int_equal(pc_bucket_take(&b, 120000, 10 * MS), 90 * MS);
	assert_int_equal(pc_bucket_take(&b, 10000, 20 * MS), 80 * MS);
	assert_int_equal(pc_bucket_take(&c, 800000, 50 * MS), 50 * MS);
}

static void bucket__long_run_rate_within_1pct(void **state)
{
	(void)state;
	const uint64_t rate = 128ull << 20; /* QEMU's default, 128 MiB/s */
	const uint64_t chunk = 256 << 10;
	struct pc_bucket b;
	uint64_t now = 0, sent = 0;

	pc_bucket_init(&b, rate, now);
	while (now < 10 * SEC) {
		uint64_t wait = pc_bucket_take(&b, chunk, now);

		sent += chunk;
		now += wait + 20000; /* 20 us to hand the chunk over */
	}
	assert_near((double)sent * 1e9 / (double)now, (double)rate, 0.01);
}

/* No burst over one slice's worth (plus the one send that goes into debt). */
static void bucket__burst_after_idle_at_most_one_slice(void **state)
{
	(void)state;
	const uint64_t rate = 10 * MB; /* 100 ms = 1 MB */
	const uint64_t chunk = 4096;
	struct pc_bucket b;
	uint64_t now = 0, burst = 0;

	pc_bucket_init(&b, rate, now);
	now = 60 * SEC + 7 * MS; /* idle for a minute */
	while (pc_bucket_take(&b, chunk, now) == 0)
		burst += chunk;
	burst += chunk; /* the one that went into debt */
	assert_true(burst <= rate / 10 + chunk);
	assert_true(burst >= rate / 10);

	/* And over any second after that, at most one slice more than rate. */
	uint64_t start = now, total = 0;

	for (;;) {
		uint64_t wait = pc_bucket_take(&b, chunk, now);

		total += chunk;
		if (now - start >= SEC)
			break;
		now += wait;
	}
	assert_true(total <= rate + rate / 10 + 2 * chunk);
}

static void bucket__set_rate_to_and_from_unlimited(void **state)
{
	(void)state;
	struct pc_bucket b;

	pc_bucket_init(&b, MB, 0);
	assert_int_equal(pc_bucket_take(&b, 150000, 0), 100 * MS);
	pc_bucket_set_rate(&b, 0, 1 * MS);
	assert_int_equal(pc_bucket_take(&b, 1ull << 30, 1 * MS), 0);
	pc_bucket_set_rate(&b, 2 * MB, 2 * MS); /* full: 200000 tokens */
	assert_int_equal(pc_bucket_take(&b, 200000, 2 * MS), 0);
	assert_int_equal(pc_bucket_take(&b, 2000, 2 * MS), 98 * MS);
	/* A slower rate keeps the debt and waits longer for it. */
	pc_bucket_set_rate(&b, MB / 100, 2 * MS); /* 1000 a slice */
	assert_int_equal(pc_bucket_take(&b, 0, 2 * MS), 198 * MS);
}

/* ------------------------------------------------------------------ */
/* Auto-converge                                                       */
/* ------------------------------------------------------------------ */

static struct pc_throttle throttle_on(bool tailslow)
{
	struct precopy_params p = defaults();
	struct pc_throttle t;

	p.auto_converge = true;
	p.cpu_throttle_tailslow = tailslow;
	pc_throttle_init(&t, &p, 0);
	return t;
}

/* One period of @len ns ending at *now with @dirtied and @sent. */
static unsigned period(struct pc_throttle *t, uint64_t *now, uint64_t len, uint64_t dirtied,
		       uint64_t sent)
{
	*now += len;
	return pc_throttle_account(t, dirtied, sent, *now);
}

static void throttle__disabled_is_always_zero(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_throttle t;
	uint64_t now = 0;

	pc_throttle_init(&t, &p, now);
	for (int i = 0; i < 10; i++)
		assert_int_equal(period(&t, &now, SEC, 1000, 0), 0);
	assert_int_equal(t.dirtied, 0);
}

static void throttle__needs_two_periods_in_a_row(void **state)
{
	(void)state;
	struct pc_throttle t = throttle_on(false);
	uint64_t now = 0;

	assert_int_equal(period(&t, &now, SEC, 60, 100), 0); /* over */
	assert_int_equal(t.hits, 1);
	assert_int_equal(period(&t, &now, SEC, 40, 100), 0); /* under: reset */
	assert_int_equal(t.hits, 0);
	assert_int_equal(period(&t, &now, SEC, 60, 100), 0); /* over */
	assert_int_equal(period(&t, &now, SEC, 60, 100), 20); /* over again */
	assert_int_equal(t.hits, 0);                          /* reset after */
	assert_int_equal(period(&t, &now, SEC, 60, 100), 20); /* one hit only */
}

static void throttle__equal_to_threshold_is_not_over(void **state)
{
	(void)state;
	struct pc_throttle t = throttle_on(false);
	uint64_t now = 0;

	for (int i = 0; i < 5; i++)
		assert_int_equal(period(&t, &now, SEC, 50, 100), 0);
	assert_int_equal(t.hits, 0);
	assert_int_equal(period(&t, &now, SEC, 51, 100), 0);
	assert_int_equal(period(&t, &now, SEC, 51, 100), 20);
}

static void throttle__nothing_sent_something_dirtied_is_a_hit(void **state)
{
	(void)state;
	struct pc_throttle t = throttle_on(false);
	uint64_t now = 0;

	assert_int_equal(period(&t, &now, SEC, 1, 0), 0);
	assert_int_equal(period(&t, &now, SEC, 1, 0), 20);
	/* Nothing at all is not a hit. */
	assert_int_equal(period(&t, &now, SEC, 0, 0), 20);
	assert_int_equal(t.hits, 0);
}

static void throttle__periods_shorter_than_1s_not_judged(void **state)
{
	(void)state;
	struct pc_throttle t = throttle_on(false);
	uint64_t now = 0;

	/* Many syncs 100 ms apart, all far over: judged once per second. */
	for (int i = 1; i < 10; i++)
		assert_int_equal(period(&t, &now, 100 * MS, 1000, 10), 0);
	assert_int_equal(t.hits, 0);
	assert_int_equal(period(&t, &now, 100 * MS - 1, 1000, 10), 0); /* 1 s - 1 */
	assert_int_equal(t.hits, 0);
	assert_int_equal(period(&t, &now, 1, 0, 0), 0); /* exactly 1 s */
	assert_int_equal(t.hits, 1);
	/* The period is judged on its totals: 10 small parts over it... */
	for (int i = 0; i < 9; i++)
		period(&t, &now, 100 * MS, 0, 100);
	/* ...and one that alone is far over, but the whole period is not. */
	assert_int_equal(period(&t, &now, 100 * MS, 400, 10), 0);
	assert_int_equal(t.hits, 0);
}

static void throttle__increments_and_caps_at_max(void **state)
{
	(void)state;
	struct pc_throttle t = throttle_on(false);
	uint64_t now = 0;
	unsigned want[] = { 20, 30, 40, 50, 60, 70, 80, 90, 99, 99, 99 };

	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		period(&t, &now, SEC, 100, 10);
		assert_int_equal(period(&t, &now, SEC, 100, 10), want[i]);
	}
}

static void throttle__initial_above_max_is_capped(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_throttle t;
	uint64_t now = 0;

	p.auto_converge = true;
	p.cpu_throttle_initial = 50;
	p.max_cpu_throttle = 30;
	pc_throttle_init(&t, &p, 0);
	period(&t, &now, SEC, 100, 10);
	assert_int_equal(period(&t, &now, SEC, 100, 10), 30);
	period(&t, &now, SEC, 100, 10);
	assert_int_equal(period(&t, &now, SEC, 100, 10), 30);
}

/* Raise from 20% with the given dirtied per 1000 sent; return the new pct. */
static unsigned tailslow_after(uint64_t dirtied)
{
	struct pc_throttle t = throttle_on(true);
	uint64_t now = 0;

	period(&t, &now, SEC, 100, 10);
	period(&t, &now, SEC, 100, 10); /* 20 */
	assert_int_equal(t.pct, 20);
	period(&t, &now, SEC, dirtied, 1000);
	return period(&t, &now, SEC, dirtied, 1000);
}

static void throttle__tailslow_step_follows_the_excess(void **state)
{
	(void)state;
	/* cpu_now 80; ideal = floor(80 * 500 / 550) = 72: step 8. */
	assert_int_equal(tailslow_after(550), 28);
	/* floor(80 * 500 / 510) = 78: step 2. */
	assert_int_equal(tailslow_after(510), 22);
	/* Barely over: floor(80 * 500 / 501) = 79, step 1. */
	assert_int_equal(tailslow_after(501), 21);
	/* Exactly 500/640 * 80 = 62.5 -> 62: step 18, capped by increment. */
	assert_int_equal(tailslow_after(640), 30);
	/* Exactly 80 * 500 / 625 = 64 (an integer: no rounding below it). */
	assert_int_equal(tailslow_after(625), 30);
	/* 80 * 500 / 526 = 76.04 -> 76: step 4. */
	assert_int_equal(tailslow_after(526), 24);
	/* Far over: capped by increment. */
	assert_int_equal(tailslow_after(100000), 30);
}

static void throttle__tailslow_monotone_and_capped(void **state)
{
	(void)state;
	unsigned prev = 20;

	for (uint64_t d = 501; d <= 20000; d += 7) {
		unsigned pct = tailslow_after(d);

		assert_true(pct >= prev);
		assert_true(pct >= 21);
		assert_true(pct <= 30);
		prev = pct;
	}
	assert_int_equal(prev, 30);

	/* Capped at max too. */
	struct precopy_params p = defaults();
	struct pc_throttle t;
	uint64_t now = 0;

	p.auto_converge = true;
	p.cpu_throttle_tailslow = true;
	p.max_cpu_throttle = 25;
	pc_throttle_init(&t, &p, 0);
	for (int i = 0; i < 10; i++)
		period(&t, &now, SEC, 1000, 100);
	assert_int_equal(t.pct, 25);
}

/* ------------------------------------------------------------------ */
/* Watchdog                                                            */
/* ------------------------------------------------------------------ */

static void watchdog__off_by_default(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_watchdog w;

	pc_watchdog_init(&w, &p, 0);
	for (unsigned i = 0; i < 1000; i++)
		assert_int_equal(pc_watchdog_pass_end(&w, i, 1000, (uint64_t)i * 3600 * SEC),
				 PC_WD_OK);
	assert_int_equal(pc_watchdog_tick(&w, UINT64_MAX), PC_WD_OK);
}

static void watchdog__max_iterations_hit_in_first_iteration(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_watchdog w;

	p.max_iterations = 1;
	pc_watchdog_init(&w, &p, 0);
	assert_int_equal(pc_watchdog_pass_end(&w, 0, 1000, 1), PC_WD_OK); /* bulk */
	assert_int_equal(pc_watchdog_pass_end(&w, 1, 900, 2), PC_WD_MAX_ITERATIONS);
	assert_string_equal(pc_wd_reason(PC_WD_MAX_ITERATIONS), "max-iterations reached");
}

static void watchdog__max_time_mid_pass_via_tick(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_watchdog w;

	p.max_time_ms = 1500;
	pc_watchdog_init(&w, &p, 10 * SEC);
	assert_int_equal(pc_watchdog_tick(&w, 10 * SEC + 1500 * MS - 1), PC_WD_OK);
	assert_int_equal(pc_watchdog_tick(&w, 10 * SEC + 1500 * MS), PC_WD_MAX_TIME);
	assert_int_equal(pc_watchdog_pass_end(&w, 0, 5, 12 * SEC), PC_WD_MAX_TIME);
}

static void watchdog__stall_detected_and_reset_by_progress(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_watchdog w;

	p.stall_iterations = 3;
	pc_watchdog_init(&w, &p, 0);
	assert_int_equal(pc_watchdog_pass_end(&w, 0, 1000, 0), PC_WD_OK); /* best 1000 */
	assert_int_equal(pc_watchdog_pass_end(&w, 1, 1000, 0), PC_WD_OK); /* equal: 1 */
	assert_int_equal(pc_watchdog_pass_end(&w, 2, 1200, 0), PC_WD_OK); /* 2 */
	assert_int_equal(pc_watchdog_pass_end(&w, 3, 999, 0), PC_WD_OK);  /* new best */
	assert_int_equal(w.stalled, 0);
	assert_int_equal(pc_watchdog_pass_end(&w, 4, 999, 0), PC_WD_OK);  /* 1 */
	assert_int_equal(pc_watchdog_pass_end(&w, 5, 5000, 0), PC_WD_OK); /* 2 */
	assert_int_equal(pc_watchdog_pass_end(&w, 6, 1000, 0), PC_WD_STALL);
	assert_non_null(strstr(pc_wd_reason(PC_WD_STALL), "stall"));
}

static void wd_reason__never_null(void **state)
{
	(void)state;
	for (int v = -1; v < 10; v++)
		assert_non_null(pc_wd_reason((enum pc_wd_verdict)v));
}

/* ------------------------------------------------------------------ */
/* The controller                                                      */
/* ------------------------------------------------------------------ */

/* Feed channel @chan at @bps for @dur from *now, in 10 ms chunks. */
static void feed(struct pc_policy *pol, unsigned chan, double bps, uint64_t *now, uint64_t dur)
{
	uint64_t end = *now + dur;

	while (*now < end) {
		*now += 10 * MS;
		pc_policy_sent(pol, chan, (uint64_t)(bps / 100), 10 * MS, *now);
	}
}

static void policy__no_switchover_before_an_estimate(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;

	pc_policy_init(&pol, &p, 0);
	pc_policy_sent(&pol, 0, 4096, 1000, 50 * MS); /* no window closed */
	pc_policy_synced(&pol, 0, 0, 60 * MS);
	assert_int_equal(pc_policy_pass_end(&pol, 0, 1, 60 * MS), PC_CONTINUE);
	assert_true(pol.expected_downtime_ns == UINT64_MAX);

	/* Nothing left at all: switch, the downtime is the sync cost. */
	pc_policy_synced(&pol, 0, 2 * MS, 70 * MS);
	assert_int_equal(pc_policy_pass_end(&pol, 1, 0, 70 * MS), PC_SWITCHOVER);
	assert_int_equal(pol.expected_downtime_ns, 2 * MS);

	/* Device state alone still needs a bandwidth. */
	pc_policy_init(&pol, &p, 0);
	pc_policy_set_device_state(&pol, 1);
	assert_int_equal(pc_policy_pass_end(&pol, 0, 0, 0), PC_CONTINUE);
}

/* --- the link estimate from the transport's figures ----------------- */

/* A new estimate, its first window opened at 0 by the counters @s. */
static void link_prime(struct pc_link *l, unsigned n, const struct pc_link_sample *s)
{
	pc_link_init(l, 0);
	pc_link_sample(l, PC_LINK_SRC_TCP_INFO, n, s, 0);
}

/* One channel busy 100 ms out of every 100 delivering 10 MB: 100 MB/s. */
static void link__delivered_over_busy(void **state)
{
	(void)state;
	struct pc_link l;
	struct pc_link_sample s = { 0 };

	link_prime(&l, 1, &s); /* primes */
	assert_true(pc_link_bps(&l) == 0);
	s.busy_ns = 50 * MS;
	s.delivered = 5 * MB;
	pc_link_sample(&l, PC_LINK_SRC_TCP_INFO, 1, &s, 50 * MS); /* window still open */
	assert_true(pc_link_bps(&l) == 0);
	s.busy_ns = 100 * MS;
	s.delivered = 10 * MB;
	s.queued = 123;
	s.rtt_ns = 7 * MS;
	pc_link_sample(&l, PC_LINK_SRC_TCP_INFO, 1, &s, 100 * MS);
	assert_near(pc_link_bps(&l), 100.0 * MB, 1e-9);
	assert_int_equal(l.queued, 123);
	assert_int_equal(l.rtt_ns, 7 * MS);
	assert_int_equal(l.source, PC_LINK_SRC_TCP_INFO);
	/* too little busy time: the window stays open, the estimate stays */
	s.busy_ns += 1 * MS;
	s.delivered += 100 * MB;
	pc_link_sample(&l, PC_LINK_SRC_TCP_INFO, 1, &s, 300 * MS);
	assert_near(pc_link_bps(&l), 100.0 * MB, 1e-9);
	/* counters that go back (a new connection) restart the window */
	s.busy_ns = 0;
	s.delivered = 0;
	pc_link_sample(&l, PC_LINK_SRC_TCP_INFO, 1, &s, 400 * MS);
	assert_near(pc_link_bps(&l), 100.0 * MB, 1e-9);
	assert_true(l.primed && l.busy0[0] == 0);
}

/*
 * Four channels share one link of 100 MB/s, all busy the whole window:
 * each delivered 25 MB in 1 s of busy time. The link is 100 MB/s: the sum
 * of the bytes over the longest busy time, not the sum of 4 x (25 MB over
 * its own busy time) if those were short, nor 100 MB over 4 s.
 */
static void link__channels_share_one_link(void **state)
{
	(void)state;
	struct pc_link l;
	struct pc_link_sample s[4] = { { 0 } };

	link_prime(&l, 4, s);
	for (unsigned c = 0; c < 4; c++) {
		s[c].busy_ns = SEC - c * MS;
		s[c].delivered = 25 * MB;
	}
	pc_link_sample(&l, PC_LINK_SRC_TCP_INFO, 4, s, SEC);
	assert_near(pc_link_bps(&l), 100.0 * MB, 1e-9);
}

/*
 * A sender held to a cap sends in short bursts; the kernel counts busy
 * time in jiffies and misses most of them: 10 MB "in 20 ms" says 500 MB/s.
 * The delivery-rate samples the kernel took at the link's pace (not
 * application-limited) say 60 MB/s: the lower figure wins. Samples taken
 * while the sender was the limit are ignored, and a channel that
 * delivered without enough samples leaves the busy-time figure alone.
 */
static void link__capped_sender_uses_delivery_rate(void **state)
{
	(void)state;
	struct pc_link l;
	struct pc_link_sample s = { 0 };

	link_prime(&l, 1, &s);
	pc_link_rate(&l, 0, 55.0 * MB, false);
	pc_link_rate(&l, 0, 3000.0 * MB, true); /* app-limited: a lower bound */
	pc_link_rate(&l, 0, 60.0 * MB, false);
	pc_link_rate(&l, 0, 200.0 * MB, false); /* a burst: the median drops it */
	s.busy_ns = 20 * MS;
	s.delivered = 10 * MB;
	pc_link_sample(&l, PC_LINK_SRC_TCP_INFO, 1, &s, 400 * MS);
	assert_near(pc_link_bps(&l), 60.0 * MB, 1e-9);

	link_prime(&l, 1, &s);
	pc_link_rate(&l, 0, 60.0 * MB, false);
	pc_link_rate(&l, 0, 60.0 * MB, false); /* two: not enough */
	s.busy_ns += 20 * MS;
	s.delivered += 10 * MB;
	pc_link_sample(&l, PC_LINK_SRC_TCP_INFO, 1, &s, 400 * MS);
	assert_near(pc_link_bps(&l), 500.0 * MB, 1e-9);
}

/*
 * A capped sender's slice on a 31.25 MB/s link with four channels that
 * send one after the other (each reaches the slice's budget after its own
 * scan): channel c is busy from 10c to 10c + 10 ms and delivers 312.5 KB.
 * Read every 10 ms, the link was busy 40 ms for 1.25 MB: 31.25 MB/s. The
 * longest channel's busy time over the whole window (10 ms) said 125.
 */
static void link__channels_one_after_the_other_count_once(void **state)
{
	struct pc_link_sample s[4] = { { 0 } };
	struct pc_link l;
	uint64_t t = 0;

	(void)state;
	link_prime(&l, 4, s);
	for (unsigned w = 0; w < 2; w++) {
		for (unsigned c = 0; c < 10; c++) {
			if (c < 4) {
				s[c].busy_ns += 10 * MS;
				s[c].delivered += 312500;
			}
			pc_link_sample(&l, PC_LINK_SRC_TCP_INFO, 4, s, t += 10 * MS);
		}
		assert_near(pc_link_bps(&l), 31.25 * MB, 1e-9);
	}
}

/* One channel, @bytes delivered over @busy_ns of busy time in one 10 ms
 * step, @queued bytes waiting at its end. */
static void link_step_1(struct pc_link *l, struct pc_link_sample *s, uint64_t bytes,
			uint64_t busy_ns, uint64_t queued, uint64_t now)
{
	s->delivered += bytes;
	s->busy_ns += busy_ns;
	s->queued = queued;
	pc_link_sample(l, PC_LINK_SRC_TCP_INFO, 1, s, now);
}

/*
 * A busy sender (mostly zero pages) on a 250 MB/s link: each 10 ms it
 * hands over 200 KB, whose last segment then waits for its ACK, 3 ms of
 * busy time: 66.7 MB/s, all the bulk windows can say. Then a pass of pages
 * the guest wrote fills the link: 2.5 MB a step, 5 MB waiting. That window
 * is a measure of the link and replaces the bulk's figure (a smoothed
 * average of both said 112.5).
 */
static void link__link_limited_window_replaces_the_busy_senders(void **state)
{
	(void)state;
	struct pc_link l;
	struct pc_link_sample s = { 0 };
	uint64_t t = 0;

	link_prime(&l, 1, &s);
	for (unsigned k = 0; k < 30; k++)
		link_step_1(&l, &s, 200000, 3 * MS, 0, t += 10 * MS);
	assert_near(pc_link_bps(&l), 66.0 * MB + 2.0 * MB / 3, 1e-9);
	link_step_1(&l, &s, 200000, 3 * MS, 5 * MB, t += 10 * MS); /* the pass starts */
	for (unsigned k = 0; k < 10; k++)
		link_step_1(&l, &s, 2500000, 10 * MS, 5 * MB, t += 10 * MS);
	assert_near(pc_link_bps(&l), 250.0 * MB, 1e-9);
	assert_true(l.measured);
	/* the busy sender again: a lower bound, left out now */
	for (unsigned k = 0; k < 10; k++)
		link_step_1(&l, &s, 200000, 3 * MS, 0, t += 10 * MS);
	assert_near(pc_link_bps(&l), 250.0 * MB, 1e-9);
}

/*
 * Windows the link set the pace of count by the bytes they carried: after
 * 25 MB at 250 MB/s, a stall (busy 100 ms with a backlog, 70 KB acked)
 * weighs 70 KB against 25 MB (249 MB/s), not a quarter of the estimate
 * (188).
 */
static void link__sustained_windows_weighted_by_bytes(void **state)
{
	(void)state;
	struct pc_link l;
	struct pc_link_sample s = { 0 };
	uint64_t t = 0;

	pc_link_init(&l, 0);
	s.queued = 5 * MB;
	pc_link_sample(&l, PC_LINK_SRC_TCP_INFO, 1, &s, 0);
	for (unsigned k = 0; k < 10; k++)
		link_step_1(&l, &s, 2500000, 10 * MS, 5 * MB, t += 10 * MS);
	assert_near(pc_link_bps(&l), 250.0 * MB, 1e-9);
	for (unsigned k = 0; k < 10; k++)
		link_step_1(&l, &s, 7000, 10 * MS, 5 * MB, t += 10 * MS);
	/* (0.75 x 25 MB x 250 + 70 KB x 0.7) / (0.75 x 25 MB + 70 KB) */
	assert_near(pc_link_bps(&l), (0.75 * 25e6 * 250e6 + 70e3 * 0.7e6) / (0.75 * 25e6 + 70e3),
		    1e-9);
	assert_true(pc_link_bps(&l) > 249.0 * MB);
}

/* The pause carries: sync, remaining + writes during the sync + queued +
 * device state at the bandwidth, and two round trips. */
static void switch_expected__counts_everything_the_pause_carries(void **state)
{
	(void)state;
	struct pc_switch_in in = {
		.remaining_bytes = 100 * MB,
		.device_state_bytes = 10 * MB,
		.bandwidth = 1000.0 * MB,
		.sync_cost_ns = 10 * MS,
		.downtime_limit_ns = 300 * MS,
		.queued_bytes = 40 * MB,
		.dirty_bps = 1000.0 * MB, /* 10 MB written during a 10 ms sync */
		.end_ns = 2 * MS,
	};

	/* 10 + (100 + 10 + 40 + 10) / 1000 s + 2 = 172 ms */
	assert_int_equal(pc_switch_expected_ns(&in), 172 * MS);
	in.remaining_bytes = in.device_state_bytes = in.queued_bytes = 0;
	in.dirty_bps = 0;
	assert_int_equal(pc_switch_expected_ns(&in), 12 * MS);
}

/* The decision's bandwidth: the link's (lower of it and the sender's) once
 * known, else send time; avail-switchover-bandwidth above all. */
static void policy__switch_bandwidth_from_the_link(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;
	struct pc_link_sample s = { 0 };
	uint64_t now = 0;

	pc_policy_init(&pol, &p, 0);
	assert_int_equal(pc_policy_bandwidth_source(&pol), PC_LINK_SRC_NONE);
	feed(&pol, 0, 2000.0 * MB, &now, SEC); /* send time: 2 GB/s */
	assert_int_equal(pc_policy_bandwidth_source(&pol), PC_LINK_SRC_SEND_TIME);
	assert_near(pc_policy_switch_bandwidth(&pol), 2000.0 * MB, 1e-9);

	pc_policy_link(&pol, PC_LINK_SRC_TCP_INFO, 1, &s, now);
	s.busy_ns = SEC;
	s.delivered = 100 * MB;
	s.queued = 20 * MB;
	s.rtt_ns = 5 * MS;
	pc_policy_link(&pol, PC_LINK_SRC_TCP_INFO, 1, &s, now + SEC);
	assert_int_equal(pc_policy_bandwidth_source(&pol), PC_LINK_SRC_TCP_INFO);
	assert_near(pc_policy_switch_bandwidth(&pol), 100.0 * MB, 1e-9);
	/* a sender slower than the link bounds it */
	pc_policy_sender(&pol, 0, 0, 0, 0);
	pc_policy_sender(&pol, 0, 50 * MB, SEC, SEC);
	assert_near(pc_policy_switch_bandwidth(&pol), 50.0 * MB, 1e-9);

	/* and the decision counts the queue and the round trips:
	 * (10 + 20) MB at 50 MB/s = 600 ms + 2 x 5 ms */
	assert_int_equal(pc_policy_pass_end(&pol, 1, 10 * MB, now + SEC), PC_CONTINUE);
	assert_int_equal(pol.expected_downtime_ns, 610 * MS);

	p.avail_switchover_bandwidth = 1000 * MB;
	pc_policy_update(&pol, &p, now + SEC);
	assert_int_equal(pc_policy_bandwidth_source(&pol), PC_LINK_SRC_AVAIL);
	assert_near(pc_policy_switch_bandwidth(&pol), 1000.0 * MB, 1e-9);
	assert_string_equal(pc_link_source_name(PC_LINK_SRC_TCP_INFO), "tcp-info");
}

static void policy__avail_bandwidth_only_for_the_switchover(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;
	uint64_t now = 0;

	p.avail_switchover_bandwidth = 1000 * MB;
	p.max_bandwidth = 10 * MB;
	pc_policy_init(&pol, &p, 0);
	/* Before any estimate: the given bandwidth decides. */
	assert_int_equal(pc_policy_pass_end(&pol, 0, 300 * MB, 0), PC_SWITCHOVER);
	assert_int_equal(pol.expected_downtime_ns, 300 * MS);

	pc_policy_init(&pol, &p, 0);
	feed(&pol, 0, 100.0 * MB, &now, SEC);
	/* Estimates are the measured ones... */
	assert_near(pc_policy_bw_busy(&pol), 100.0 * MB, 1e-9);
	assert_true(pc_policy_switch_bandwidth(&pol) == 1000.0 * MB);
	/* ...the bucket still uses max-bandwidth... */
	assert_true(pc_policy_sent(&pol, 0, MB, 10 * MS, now) > 0);
	/* ...and the decision the given figure: 300 MB in 300 ms. */
	assert_int_equal(pc_policy_pass_end(&pol, 1, 300 * MB, now), PC_SWITCHOVER);
	assert_int_equal(pc_policy_pass_end(&pol, 2, 300 * MB + 1, now), PC_CONTINUE);
}

static void policy__switchover_counts_device_state_and_sync_cost(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;
	uint64_t now = 0;

	pc_policy_init(&pol, &p, 0);
	pc_policy_set_device_state(&pol, 50 * MB);
	feed(&pol, 0, 1000.0 * MB, &now, SEC); /* busy estimate 1000 MB/s */
	pc_policy_synced(&pol, 0, 50 * MS, now);
	/* 200 MB + 50 MB at 1 GB/s = 250 ms, + 50 ms sync = 300 ms: equal. */
	assert_int_equal(pc_policy_pass_end(&pol, 3, 200 * MB, now), PC_SWITCHOVER);
	assert_int_equal(pol.expected_downtime_ns, 300 * MS);
	pc_policy_synced(&pol, 0, 51 * MS, now);
	assert_int_equal(pc_policy_pass_end(&pol, 4, 200 * MB, now), PC_CONTINUE);
	assert_int_equal(pol.expected_downtime_ns, 301 * MS);
}

static void policy__bulk_pass_may_switch_over(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;
	uint64_t now = 0;

	pc_policy_init(&pol, &p, 0);
	feed(&pol, 0, 1000.0 * MB, &now, 2 * SEC);
	pc_policy_synced(&pol, MB, 1 * MS, now);
	assert_int_equal(pc_policy_pass_end(&pol, 0, MB, now), PC_SWITCHOVER);
}

static void policy__decides_on_busy_estimate_not_wall(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;
	uint64_t now = 0;

	pc_policy_init(&pol, &p, 0);
	/* 1 GB/s link, sender busy elsewhere 90% of the time. */
	for (int i = 0; i < 200; i++) {
		now += 10 * MS;
		pc_policy_sent(&pol, 0, MB, 1 * MS, now);
	}
	assert_near(pc_policy_bw_busy(&pol), 1000.0 * MB, 0.05);
	assert_true(pc_policy_bw_wall(&pol) < 150.0 * MB);
	/* 250 MB: 250 ms at the link's speed; 2.5 s at the wall figure. */
	assert_int_equal(pc_policy_pass_end(&pol, 1, 250 * MB, now), PC_SWITCHOVER);
}

static void policy__channels_are_summed(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;
	uint64_t now = 0;

	p.channels = 4;
	pc_policy_init(&pol, &p, 0);
	for (int i = 0; i < 100; i++) {
		now += 10 * MS;
		for (unsigned c = 0; c < 4; c++)
			pc_policy_sent(&pol, c, MB, 10 * MS, now); /* 100 MB/s each */
	}
	assert_near(pc_policy_bw_busy(&pol), 400.0 * MB, 1e-9);
	assert_near(pc_policy_bw_wall(&pol), 400.0 * MB, 1e-9);
	/* Out of range: counted nowhere, no crash. */
	pc_policy_sent(&pol, PRECOPY_MAX_CHANNELS, MB, MS, now + SEC);
	assert_near(pc_policy_bw_busy(&pol), 400.0 * MB, 1e-9);
}

static void policy__max_bandwidth_throttles_until_switchover(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;

	p.max_bandwidth = MB; /* a 100 ms slice = 100 kB */
	pc_policy_init(&pol, &p, 0);
	assert_int_equal(pc_policy_sent(&pol, 0, 100000, 0, 0), 0);
	assert_int_equal(pc_policy_sent(&pol, 0, 100000, 0, 0), 100 * MS);
	pc_policy_set_switchover(&pol);
	for (int i = 0; i < 100; i++)
		assert_int_equal(pc_policy_sent(&pol, 0, 100 * MB, 0, 0), 0);
}

static void policy__unlimited_by_default(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;

	pc_policy_init(&pol, &p, 0);
	for (int i = 0; i < 100; i++)
		assert_int_equal(pc_policy_sent(&pol, 0, 1ull << 30, MS, (uint64_t)i), 0);
}

static void policy__throttle_from_sent_and_synced(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;
	uint64_t now = 0;

	p.auto_converge = true;
	pc_policy_init(&pol, &p, 0);
	/* Sends alone never judge a period (dirtied is unknown until a sync). */
	feed(&pol, 0, 100.0 * MB, &now, 3 * SEC);
	assert_int_equal(pol.throttle.pct, 0);
	/* Period 1 (3 s): 300 MB sent, 200 MB dirtied: over. */
	assert_int_equal(pc_policy_synced(&pol, 200 * MB, MS, now), 0);
	feed(&pol, 0, 100.0 * MB, &now, SEC);
	assert_int_equal(pc_policy_synced(&pol, 100 * MB, MS, now), 20);
	assert_int_equal(pol.sync_cost_ns, MS);

	/* Disabled: synced() says 0. */
	p.auto_converge = false;
	pc_policy_init(&pol, &p, 0);
	for (int i = 1; i < 10; i++)
		assert_int_equal(pc_policy_synced(&pol, MB, MS, (uint64_t)i * SEC), 0);
}

static void policy__watchdog_force_or_abort(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;
	uint64_t now = 0;

	p.max_iterations = 1;
	pc_policy_init(&pol, &p, 0);
	feed(&pol, 0, 100.0 * MB, &now, SEC);
	assert_int_equal(pc_policy_pass_end(&pol, 0, 100 * MB, now), PC_CONTINUE);
	assert_int_equal(pc_policy_pass_end(&pol, 1, 100 * MB, now), PC_FORCE);
	assert_int_equal(pol.last_verdict, PC_WD_MAX_ITERATIONS);
	assert_int_equal(pol.expected_downtime_ns, SEC); /* reported, > limit */

	p.on_limit = PRECOPY_ON_LIMIT_ABORT;
	pc_policy_init(&pol, &p, 0);
	now = 0;
	feed(&pol, 0, 100.0 * MB, &now, SEC);
	assert_int_equal(pc_policy_pass_end(&pol, 1, 100 * MB, now), PC_ABORT);
	assert_int_equal(pol.last_verdict, PC_WD_MAX_ITERATIONS);
}

static void policy__converged_wins_over_watchdog(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;
	uint64_t now = 0;

	p.max_iterations = 1;
	p.on_limit = PRECOPY_ON_LIMIT_ABORT;
	pc_policy_init(&pol, &p, 0);
	feed(&pol, 0, 100.0 * MB, &now, SEC);
	assert_int_equal(pc_policy_pass_end(&pol, 1, MB, now), PC_SWITCHOVER);
	assert_int_equal(pol.last_verdict, PC_WD_OK);
}

static void policy__stall_forces(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;
	uint64_t now = 0;

	p.stall_iterations = 2;
	pc_policy_init(&pol, &p, 0);
	feed(&pol, 0, 100.0 * MB, &now, SEC);
	assert_int_equal(pc_policy_pass_end(&pol, 0, 500 * MB, now), PC_CONTINUE);
	assert_int_equal(pc_policy_pass_end(&pol, 1, 400 * MB, now), PC_CONTINUE);
	assert_int_equal(pc_policy_pass_end(&pol, 2, 450 * MB, now), PC_CONTINUE);
	assert_int_equal(pc_policy_pass_end(&pol, 3, 400 * MB, now), PC_FORCE);
	assert_int_equal(pol.last_verdict, PC_WD_STALL);
}

static void policy__tick_max_time_force_abort_and_after_switchover(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;

	p.max_time_ms = 2000;
	pc_policy_init(&pol, &p, 5 * SEC);
	assert_int_equal(pc_policy_tick(&pol, 6 * SEC), PC_CONTINUE);
	assert_int_equal(pc_policy_tick(&pol, 7 * SEC), PC_FORCE);
	assert_int_equal(pol.last_verdict, PC_WD_MAX_TIME);
	pc_policy_set_switchover(&pol);
	assert_int_equal(pc_policy_tick(&pol, 8 * SEC), PC_CONTINUE);

	p.on_limit = PRECOPY_ON_LIMIT_ABORT;
	pc_policy_init(&pol, &p, 0);
	assert_int_equal(pc_policy_tick(&pol, 2 * SEC), PC_ABORT);
}

static void policy__init_clamps_channels(void **state)
{
	(void)state;
	struct precopy_params p = defaults();
	struct pc_policy pol;

	p.channels = 0;
	pc_policy_init(&pol, &p, 0);
	assert_int_equal(pol.params.channels, 1);
	p.channels = 1000;
	pc_policy_init(&pol, &p, 0);
	assert_int_equal(pol.params.channels, PRECOPY_MAX_CHANNELS);
	p.downtime_limit_ms = 250;
	pc_policy_init(&pol, &p, 0);
	assert_int_equal(pc_policy_downtime_limit_ns(&pol), 250 * MS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(params_defaults__match_precopy_h),
		cmocka_unit_test(params_check__names_the_bad_field),
		cmocka_unit_test(bw__no_estimate_before_a_window_closes),
		cmocka_unit_test(bw__first_window_taken_as_is),
		cmocka_unit_test(bw__later_windows_smoothed_with_weight),
		cmocka_unit_test(bw__idle_window_keeps_busy_wall_falls),
		cmocka_unit_test(bw__zero_busy_time_keeps_previous),
		cmocka_unit_test(bw__busy_sender_busy_estimate_stays_at_link_speed),
		cmocka_unit_test(bw__backwards_clock_does_not_close_window),
		cmocka_unit_test(switch_expected__counts_device_state_and_sync_cost),
		cmocka_unit_test(switch_expected__counts_everything_the_pause_carries),
		cmocka_unit_test(link__delivered_over_busy),
		cmocka_unit_test(link__channels_share_one_link),
		cmocka_unit_test(link__capped_sender_uses_delivery_rate),
		cmocka_unit_test(link__channels_one_after_the_other_count_once),
		cmocka_unit_test(link__link_limited_window_replaces_the_busy_senders),
		cmocka_unit_test(link__sustained_windows_weighted_by_bytes),
		cmocka_unit_test(policy__switch_bandwidth_from_the_link),
		cmocka_unit_test(switch_expected__zero_bandwidth_is_never),
		cmocka_unit_test(switch_expected__nothing_to_send_is_sync_cost),
		cmocka_unit_test(switch_ok__exactly_equal_passes),
		cmocka_unit_test(switch_expected__huge_saturates),
		cmocka_unit_test(switch_bandwidth__avail_overrides_estimate),
		cmocka_unit_test(bucket__rate_zero_is_unlimited),
		cmocka_unit_test(bucket__debt_is_paid_by_the_wait),
		cmocka_unit_test(bucket__refills_per_slice_up_to_one_slice),
		cmocka_unit_test(bucket__callers_in_debt_wake_at_one_boundary),
		cmocka_unit_test(bucket__long_run_rate_within_1pct),
		cmocka_unit_test(bucket__burst_after_idle_at_most_one_slice),
		cmocka_unit_test(bucket__set_rate_to_and_from_unlimited),
		cmocka_unit_test(throttle__disabled_is_always_zero),
		cmocka_unit_test(throttle__needs_two_periods_in_a_row),
		cmocka_unit_test(throttle__equal_to_threshold_is_not_over),
		cmocka_unit_test(throttle__nothing_sent_something_dirtied_is_a_hit),
		cmocka_unit_test(throttle__periods_shorter_than_1s_not_judged),
		cmocka_unit_test(throttle__increments_and_caps_at_max),
		cmocka_unit_test(throttle__initial_above_max_is_capped),
		cmocka_unit_test(throttle__tailslow_step_follows_the_excess),
		cmocka_unit_test(throttle__tailslow_monotone_and_capped),
		cmocka_unit_test(watchdog__off_by_default),
		cmocka_unit_test(watchdog__max_iterations_hit_in_first_iteration),
		cmocka_unit_test(watchdog__max_time_mid_pass_via_tick),
		cmocka_unit_test(watchdog__stall_detected_and_reset_by_progress),
		cmocka_unit_test(wd_reason__never_null),
		cmocka_unit_test(policy__no_switchover_before_an_estimate),
		cmocka_unit_test(policy__avail_bandwidth_only_for_the_switchover),
		cmocka_unit_test(policy__switchover_counts_device_state_and_sync_cost),
		cmocka_unit_test(policy__bulk_pass_may_switch_over),
		cmocka_unit_test(policy__decides_on_busy_estimate_not_wall),
		cmocka_unit_test(policy__channels_are_summed),
		cmocka_unit_test(policy__max_bandwidth_throttles_until_switchover),
		cmocka_unit_test(policy__unlimited_by_default),
		cmocka_unit_test(policy__throttle_from_sent_and_synced),
		cmocka_unit_test(policy__watchdog_force_or_abort),
		cmocka_unit_test(policy__converged_wins_over_watchdog),
		cmocka_unit_test(policy__stall_forces),
		cmocka_unit_test(policy__tick_max_time_force_abort_and_after_switchover),
		cmocka_unit_test(policy__init_clamps_channels),
	};

	return cmocka_run_group_tests_name("policy", tests, NULL, NULL);
}

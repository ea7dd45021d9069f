/* SPDX-License-Identifier: MIT */
/*
 * test_progress.c - the CLI's switchover estimate and the text of its
 * progress line (cli/progress.c), from made-up stats: no migration runs.
 * Names: function__condition.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "progress.h"

#define MIB (1024.0 * 1024.0)

/* pc_eta() of @in is a time, @want seconds. */
static void expect_seconds(const struct pc_eta_in *in, double want)
{
	double s = -1;

	assert_int_equal(pc_eta(in, &s), PC_ETA_SECONDS);
	if (fabs(s - want) >= 1e-9)
		fail_msg("%.12f s, expected %.12f s", s, want);
}

/* 100 MiB left at 100 MiB/s while the guest dirties 10 MiB/s: one pass of
 * 1 s leaves 10 MiB, 0.1 s at 100 MiB/s, within 300 ms. */
static void pc_eta__converging(void **state)
{
	struct pc_eta_in in = {
		.pending = (uint64_t)(100 * MIB), .total = (uint64_t)(1024 * MIB),
		.send_bps = 100 * MIB, .switch_bps = 100 * MIB, .dirty_bps = 10 * MIB,
		.limit_ms = 300,
	};

	(void)state;
	expect_seconds(&in, 1.0);
	/* a slower switchover bandwidth needs one pass more: 10 MiB at
	 * 20 MiB/s is 0.5 s; the next pass (0.1 s) leaves 1 MiB, 50 ms */
	in.switch_bps = 20 * MIB;
	expect_seconds(&in, 1.1);
}

static void pc_eta__not_converging(void **state)
{
	struct pc_eta_in in = {
		.pending = (uint64_t)(100 * MIB), .total = (uint64_t)(1024 * MIB),
		.send_bps = 100 * MIB, .dirty_bps = 100 * MIB, .limit_ms = 300,
	};
	double s = -1;

	(void)state;
	assert_int_equal(pc_eta(&in, &s), PC_ETA_NOT_CONVERGING);
	in.dirty_bps = 150 * MIB;
	assert_int_equal(pc_eta(&in, &s), PC_ETA_NOT_CONVERGING);
	/* a guest dirtying more than all its RAM in a pass never fits */
	in.total = (uint64_t)(512 * MIB);
	in.pending = in.total;
	assert_int_equal(pc_eta(&in, &s), PC_ETA_NOT_CONVERGING);
}

/* The bulk pass has 512 MiB to reach; 64 MiB dirtied behind it waits
 * for the next pass: 2 s of bulk, then 64 MiB is 0.25 s, within 300 ms. */
static void pc_eta__bulk(void **state)
{
	struct pc_eta_in in = {
		.pending = (uint64_t)(576 * MIB), .bulk_unsent = (uint64_t)(512 * MIB),
		.bulk = true, .total = (uint64_t)(1024 * MIB), .send_bps = 256 * MIB,
		.switch_bps = 256 * MIB, .dirty_bps = 0, .limit_ms = 300,
	};

	(void)state;
	expect_seconds(&in, 2.0);
	/* dirtying 32 MiB/s: 64 MiB more at the end of bulk, 128 MiB is
	 * 0.5 s: one more pass of 0.5 s leaves 16 MiB */
	in.dirty_bps = 32 * MIB;
	expect_seconds(&in, 2.5);
}

static void pc_eta__no_rate_yet(void **state)
{
	struct pc_eta_in in = { .pending = 4096, .total = 1 << 20, .limit_ms = 300 };
	double s = -1;

	(void)state;
	assert_int_equal(pc_eta(&in, &s), PC_ETA_UNKNOWN);
	in.send_bps = NAN;
	assert_int_equal(pc_eta(&in, &s), PC_ETA_UNKNOWN);
}

static struct precopy_stats stats(enum precopy_status status, uint64_t ms, uint64_t remaining,
				  uint64_t pages_done, uint64_t transferred)
{
	struct precopy_stats st;

	memset(&st, 0, sizeof(st));
	st.status = status;
	st.total_time = ms;
	st.remaining = remaining;
	st.normal = pages_done;
	st.transferred = transferred;
	st.total = 1024ull << 20;
	st.bandwidth_busy = 200ull << 20;
	return st;
}

/* Stats 1 s apart in pass 2: the rates come from their difference. */
static void pc_progress_format__later_pass(void **state)
{
	struct precopy_params params;
	struct pc_progress p;
	struct precopy_stats a = stats(PRECOPY_STATUS_ITERATE, 5000, 40ull << 20, 300000, 1500ull << 20);
	/* 1 s later: 25600 pages (100 MiB) sent, 15 MiB less left, so 85 MiB
	 * dirtied */
	struct precopy_stats b = stats(PRECOPY_STATUS_ITERATE, 6000, 25ull << 20, 325600, 1600ull << 20);
	char line[512];

	(void)state;
	precopy_params_init(&params);
	a.iteration = b.iteration = 1;
	pc_progress_start(&p, stderr, false, true, &params, "connecting");
	pc_progress_stats(&p, &a);
	pc_progress_stats(&p, &b);
	pc_progress_format(&p, 6000, line, sizeof(line));
	pc_progress_end(&p, NULL, false);
	assert_non_null(strstr(line, "6.0 s  pass 2  6400 pages pending"));
	assert_non_null(strstr(line, "rate 100.0 MiB/s"));
	assert_non_null(strstr(line, "dirty 85.0 MiB/s"));
	assert_non_null(strstr(line, "switchover in ~"));
	assert_null(strchr(line, '\r'));
	assert_null(strchr(line, '\033'));
}

static void pc_progress_format__bulk_and_setup(void **state)
{
	struct precopy_params params;
	struct pc_progress p;
	struct precopy_stats st = stats(PRECOPY_STATUS_BULK, 800, 700ull << 20, 65536, 256ull << 20);
	char line[512];

	(void)state;
	precopy_params_init(&params);
	pc_progress_start(&p, stderr, false, true, &params, "connecting to tcp:h:1, TLS handshake");
	pc_progress_format(&p, 1200, line, sizeof(line));
	assert_non_null(strstr(line, "setup: connecting to tcp:h:1, TLS handshake"));
	pc_progress_stats(&p, &st);
	pc_progress_format(&p, 800, line, sizeof(line));
	pc_progress_end(&p, NULL, false);
	/* 65536 pages of 1 GiB; no rate over a second yet */
	assert_non_null(strstr(line, "bulk  25% of 1.00 GiB"));
	assert_non_null(strstr(line, "switchover in ..."));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(pc_eta__converging),
		cmocka_unit_test(pc_eta__not_converging),
		cmocka_unit_test(pc_eta__bulk),
		cmocka_unit_test(pc_eta__no_rate_yet),
		cmocka_unit_test(pc_progress_format__later_pass),
		cmocka_unit_test(pc_progress_format__bulk_and_setup),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * Whole migrations over TCP loopback, both ends in this process: every
 * page checked at the destination. Cancel in every state is
 * test_cancel.c's.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define MiB (1ull << 20)

static struct pc_guest *make_guest(size_t ram, double rate, unsigned zero_pct)
{
	return h_guest_new(&(struct pc_guest_opts){ .ram = ram, .dirty_rate = rate,
						    .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
						    .zero_pct = zero_pct, .seed = 42 });
}

static void run_pattern(unsigned channels)
{
	size_t ram = 256 * MiB;
	struct pc_guest *g = make_guest(ram, 64.0 * MiB, 0);
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;

	precopy_params_init(&p);
	p.channels = channels;
	assert_int_equal(h_dest_start(&d, ram), 0);
	h_migrate_ok(&s, &d, g, &p);
	assert_true(pc_guest_writes(g) > 0); /* the guest really ran */
	h_free_all(&s, &d, &g);
}

H_CASE(migrate__pattern_running_1_channel, run_pattern(1))
H_CASE(migrate__pattern_running_2_channels, run_pattern(2))

static void migrate__idle_guest_zero_pages_as_runs(void **state)
{
	size_t ram = 64 * MiB;
	struct pc_guest *g = make_guest(ram, 0, 50);
	struct precopy_stats st;
	struct h_dest d;
	struct h_src s;

	(void)state;
	memset(&st, 0, sizeof(st));
	assert_int_equal(h_dest_start(&d, ram), 0);
	/* make the destination dirty so zero runs must really clear it */
	memset(d.ram, 0x5a, ram);
	h_migrate_ok(&s, &d, g, NULL);
	precopy_query(s.s, &st);
	assert_true(st.duplicate > ram / 4096 * 40 / 100);
	assert_true(st.duplicate + st.normal >= ram / 4096);
	/* zero pages cost a run record, not 4 KiB */
	assert_true(st.transferred < (st.normal + 64) * 4096 + st.duplicate * 64);
	h_free_all(&s, &d, &g);
}

/* Heartbeats: each end's slow local work (here 3 s of saving and of
 * loading device state) outlives a timeout of 1 s, because the transport
 * keeps telling the peer it is alive. The timeout itself is checked with
 * stopped processes (tests/cli_hung.sh). */
static void beats__slow_ends_outlive_a_short_timeout(void **state)
{
	size_t ram = 8 * MiB;
	struct pc_guest *g = make_guest(ram, 4.0 * MiB, 0);
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;

	(void)state;
	precopy_params_init(&p);
	p.timeout_ms = 1000;
	assert_int_equal(h_dest_start_opts(&d, ram,
					   &(struct h_dest_opts){ .p = &p, .on_load = h_slow_load }),
			 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	s.on_save = h_slow_save;
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	h_check_migrated(&s, &d);
	h_free_all(&s, &d, &g);
}

static void migrate__region_mismatch_refused(void **state)
{
	struct pc_guest *g = make_guest(8 * MiB, 0, 0);
	struct h_dest d;
	struct h_src s;

	(void)state;
	assert_int_equal(h_dest_start(&d, 4 * MiB), 0);
	h_src_go(&s, g, NULL, d.uri);
	h_check_refused(&s, &d, "region 0");
	h_free_all(&s, &d, &g);
}

static void api__bad_arguments(void **state)
{
	struct precopy_session *s;
	struct precopy_params p;
	static char buf[8192];
	char why[100];

	(void)state;
	assert_int_equal(precopy_new(0, NULL, NULL, &s), -EINVAL);
	assert_int_equal(precopy_new(PRECOPY_ROLE_SOURCE, NULL, NULL, NULL), -EINVAL);
	precopy_params_init(&p);
	p.channels = 0;
	assert_int_equal(precopy_params_check(&p, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "channels"));
	assert_int_equal(precopy_new(PRECOPY_ROLE_SOURCE, &p, NULL, &s), -EINVAL);
	assert_int_equal(precopy_new(PRECOPY_ROLE_DEST, NULL, NULL, &s), 0);
	assert_int_equal(precopy_add_region(s, buf + 1, 4096, PRECOPY_DIRTY_AUTO), -EINVAL);
	assert_int_equal(precopy_add_region(s, NULL, 4096, PRECOPY_DIRTY_AUTO), -EINVAL);
	assert_int_equal(precopy_listen(s, "tcp:999.1.1.1:x"), -EINVAL);
	assert_int_equal(precopy_listen(s, "bogus:1"), -EPROTONOSUPPORT);
	assert_int_equal(precopy_incoming(s), -ENOTCONN);
	assert_int_equal(precopy_migrate(s, "tcp:127.0.0.1:1"), -EINVAL); /* wrong role */
	assert_int_equal(precopy_delete(&s), 0);
	assert_null(s);
	assert_int_equal(precopy_delete(&s), -EINVAL);
}

/* Out-of-range parameters and malformed URIs name the problem. */
static void api__bad_timeout_and_uris(void **state)
{
	struct pc_guest *g = make_guest(4 * MiB, 0, 0);
	struct precopy_params p;
	struct h_src s;
	char why[PRECOPY_ERRMSG_MAX];
	static const char *const bad[] = {
		"tcp:localhost", "tcp:127.0.0.1:65536", "tcp:127.0.0.1:x", "tcp:[::1]5",
		"tcp::1:5", "tcp:", "nope", ":5",
	};

	(void)state;
	precopy_params_init(&p);
	assert_int_equal(p.timeout_ms, 15000);
	p.timeout_ms = 99;
	assert_int_equal(precopy_params_check(&p, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "timeout_ms"));
	p.timeout_ms = 3600001;
	assert_int_equal(precopy_params_check(&p, why, sizeof(why)), -EINVAL);
	p.timeout_ms = 100;
	assert_int_equal(precopy_params_check(&p, why, sizeof(why)), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int err;

		assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
		err = precopy_migrate(s.s, bad[i]);
		precopy_strerror(s.s, why, sizeof(why));
		if ((err != -EINVAL && err != -EPROTONOSUPPORT) || !strstr(why, "URI") ||
		    !strstr(why, "tcp:HOST:PORT"))
			fail_msg("'%s': %d, '%s'", bad[i], err, why);
		assert_int_equal(s.stops, 0);
		h_src_free(&s);
	}
	pc_guest_delete(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(api__bad_arguments),
		cmocka_unit_test(api__bad_timeout_and_uris),
		cmocka_unit_test(migrate__pattern_running_1_channel),
		cmocka_unit_test(migrate__pattern_running_2_channels),
		cmocka_unit_test(migrate__idle_guest_zero_pages_as_runs),
		cmocka_unit_test(migrate__region_mismatch_refused),
		cmocka_unit_test(beats__slow_ends_outlive_a_short_timeout),
	};

	cmocka_set_test_filter(getenv("PRECOPY_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}

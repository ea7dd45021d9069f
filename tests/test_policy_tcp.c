/* SPDX-License-Identifier: MIT */
/*
 * The policy rules in real migrations over TCP loopback with the synthetic
 * guest: auto-converge makes a too-busy guest converge; the watchdog's
 * force and abort do what they say; free-page hints cut the bytes sent.
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

static struct pc_guest *make_guest(size_t ram, double rate, enum pc_guest_pattern pat,
				   unsigned free_pct)
{
	return h_guest_new(&(struct pc_guest_opts){ .ram = ram, .dirty_rate = rate,
						    .pattern = pat, .threads = 1,
						    .free_pct = free_pct, .seed = 9 });
}

struct outcome {
	int src_err, dest_err;
	struct precopy_stats src, dest;
	bool verified;
	unsigned max_throttle;
};

/* Called with every snapshot of the source while it migrates, if set. */
static void (*during)(struct h_src *s, const struct precopy_stats *st);

/* Free-page hints, given once the source's status is BULK (the progress
 * hook sees it before the first page goes). */
static bool hinted;

static void hint_at_bulk(struct h_src *s, const struct precopy_stats *st)
{
	uint64_t n = 0, *bm;

	if (st->status != PRECOPY_STATUS_BULK || *(bool *)s->opaque)
		return;
	bm = pc_guest_free_bitmap(s->guest, &n);
	assert_non_null(bm);
	assert_int_equal(precopy_region_hint_free(s->s, 0, 0, bm, n), 0);
	free(bm);
	*(bool *)s->opaque = true;
}

/* Migrate @g with @p to a fresh destination; check what came across. */
static void migrate(struct pc_guest *g, const struct precopy_params *p, bool hint_free,
		    struct outcome *o)
{
	struct h_dest d;
	struct h_src s;
	size_t len;
	void *mem = pc_guest_ram(g, &len);
	char why[256];

	memset(o, 0, sizeof(*o));
	assert_int_equal(h_dest_start(&d, len), 0);
	assert_int_equal(h_src_new(&s, g, p, PRECOPY_DIRTY_AUTO), 0);
	if (hint_free) {
		uint64_t n = 0, *bm = pc_guest_free_bitmap(g, &n);

		/* not before the dirty log is armed: at BULK, as a VMM would */
		assert_non_null(bm);
		assert_int_equal(precopy_region_hint_free(s.s, 0, 0, bm, n), -EAGAIN);
		free(bm);
		s.on_progress = hint_at_bulk;
		s.opaque = &hinted;
		hinted = false;
	}
	assert_int_equal(h_src_start(&s, d.uri), 0);
	/* watch the throttle while it runs */
	for (;;) {
		struct precopy_stats st;

		precopy_query(s.s, &st);
		if (during)
			during(&s, &st);
		if (st.cpu_throttle_percentage > o->max_throttle)
			o->max_throttle = st.cpu_throttle_percentage;
		if (st.status >= PRECOPY_STATUS_COMPLETED)
			break;
		usleep(20 * 1000);
	}
	o->src_err = h_src_join(&s);
	if (hint_free)
		assert_true(hinted);
	o->dest_err = h_dest_join(&d);
	precopy_query(s.s, &o->src);
	precopy_query(d.s, &o->dest);
	if (!o->src_err && !o->dest_err) {
		/* hinted free pages hold garbage here and zeros there */
		if (!hint_free)
			assert_int_equal(memcmp(mem, d.ram, len), 0);
		o->verified = pc_guest_verify(d.ram, len, &d.desc, why, sizeof(why)) == 0;
	} else {
		/* failed: the guest runs on, its memory exactly what it wrote */
		assert_int_equal(s.resumes, s.stops);
		h_check_guest_intact(g, "source");
		assert_int_equal(d.resumed, 0);
	}
	h_src_free(&s);
	h_dest_free(&d);
}

/* What a busy case changes (zeroes: unchanged). */
struct busy {
	uint64_t max_time_ms;
	unsigned max_iterations;
	enum precopy_on_limit on_limit;
	bool auto_converge; /* from 50%, by 20% */
};

/* A guest that dirties 64 MiB/s at random over a link the operator says
 * gives 24 MiB/s (rate cap and switchover bandwidth alike), with a 300 ms
 * downtime limit and @b's limits: migrate() it. */
static void busy_migrate(const struct busy *b, struct outcome *o)
{
	struct pc_guest *g = make_guest(48 * MiB, 64.0 * MiB, PC_GUEST_RANDOM, 0);
	struct precopy_params p;

	precopy_params_init(&p);
	p.max_bandwidth = 24 * MiB;
	p.avail_switchover_bandwidth = 24 * MiB;
	p.downtime_limit_ms = 300;
	if (b->max_time_ms)
		p.max_time_ms = b->max_time_ms;
	if (b->max_iterations)
		p.max_iterations = b->max_iterations;
	p.on_limit = b->on_limit;
	if (b->auto_converge) {
		p.auto_converge = true;
		p.cpu_throttle_initial = 50;
		p.cpu_throttle_increment = 20;
	}
	migrate(g, &p, false, o);
	pc_guest_delete(&g);
}

static void auto_converge__off_never_converges(void **state)
{
	struct outcome o;

	(void)state;
	busy_migrate(&(struct busy){ .max_time_ms = 7000, .on_limit = PRECOPY_ON_LIMIT_ABORT },
		     &o);
	assert_int_equal(o.src_err, -ETIMEDOUT);
	assert_int_equal(o.src.status, PRECOPY_STATUS_FAILED);
	assert_non_null(strstr(o.src.error, "watchdog"));
	assert_int_equal(o.max_throttle, 0);
	assert_true(o.dest_err < 0);
}

static void auto_converge__on_converges(void **state)
{
	struct outcome o;

	(void)state;
	/* max_time_ms: a guard; it must converge well before */
	busy_migrate(&(struct busy){ .max_time_ms = 60000, .on_limit = PRECOPY_ON_LIMIT_ABORT,
				     .auto_converge = true },
		     &o);
	assert_int_equal(o.src_err, 0);
	assert_int_equal(o.dest_err, 0);
	assert_true(o.verified);
	assert_false(o.src.forced_switchover);
	assert_true(o.max_throttle >= 50);
	assert_true(o.src.expected_downtime <= 300);
}

static void watchdog__force_switches_over(void **state)
{
	struct outcome o;

	(void)state;
	busy_migrate(&(struct busy){ .max_iterations = 2, .on_limit = PRECOPY_ON_LIMIT_FORCE },
		     &o);
	assert_int_equal(o.src_err, 0);
	assert_int_equal(o.dest_err, 0);
	assert_true(o.verified);
	assert_true(o.src.forced_switchover);
	assert_int_equal(o.src.status, PRECOPY_STATUS_COMPLETED);
	/* it went when the limit said, not when the downtime allowed */
	assert_true(o.src.iteration <= 3);
	assert_true(o.src.expected_downtime > 300);
}

static void watchdog__abort_fails_cleanly(void **state)
{
	struct outcome o;

	(void)state;
	busy_migrate(&(struct busy){ .max_iterations = 2, .on_limit = PRECOPY_ON_LIMIT_ABORT },
		     &o);
	assert_int_equal(o.src_err, -ETIMEDOUT);
	assert_non_null(strstr(o.src.error, "max-iterations"));
	assert_true(o.dest_err < 0);
	assert_int_equal(o.dest.status, PRECOPY_STATUS_FAILED);
}

/*
 * The device state is part of the pause: an idle guest whose RAM is all
 * sent after the bulk pass switches over at once, unless the VMM says its
 * device state will take longer than the limit to send. Before the engine
 * counted the device state in its real decision (only the simulator did),
 * both migrations switched over alike.
 */
static void device_state__size_changes_the_decision(void **state)
{
	struct pc_guest *g = make_guest(16 * MiB, 0, PC_GUEST_SEQUENTIAL, 0);
	struct precopy_params p;
	struct outcome o;
	struct h_dest d;
	struct h_src s;
	size_t len;

	(void)state;
	precopy_params_init(&p);
	p.avail_switchover_bandwidth = 10 * MiB;
	p.downtime_limit_ms = 300;
	p.max_iterations = 2;
	p.on_limit = PRECOPY_ON_LIMIT_FORCE;

	/* no hint: nothing left after bulk, a small device state: switch */
	migrate(g, &p, false, &o);
	assert_int_equal(o.src_err, 0);
	assert_false(o.src.forced_switchover);
	assert_true(o.src.expected_downtime < 300);
	assert_int_equal(o.src.bandwidth_source, PRECOPY_BW_SOURCE_AVAIL);

	/* 8 MiB of device state at 10 MiB/s: 800 ms, never within 300 */
	pc_guest_ram(g, &len);
	assert_int_equal(h_dest_start(&d, len), 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(precopy_set_param(s.s, PRECOPY_PARAM_DEVICE_STATE_SIZE, 8 * MiB), 0);
	assert_int_equal(precopy_param_from_name("device-state-size"),
			 PRECOPY_PARAM_DEVICE_STATE_SIZE);
	assert_int_equal(precopy_set_param(s.s, PRECOPY_PARAM_DEVICE_STATE_SIZE, 1ull << 40),
			 -EINVAL);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	precopy_query(s.s, &o.src);
	assert_true(o.src.forced_switchover);
	assert_int_equal(o.src.device_state_bytes, 8 * MiB);
	assert_true(o.src.expected_downtime >= 800);
	h_free_all(&s, &d, &g);
}

static void free_hints__cut_bytes_by_free_share(void **state)
{
	struct pc_guest *g = make_guest(64 * MiB, 0, PC_GUEST_SEQUENTIAL, 50);
	struct outcome plain, hinted;
	double ratio;

	(void)state;
	migrate(g, NULL, false, &plain);
	migrate(g, NULL, true, &hinted);
	assert_int_equal(plain.src_err, 0);
	assert_int_equal(hinted.src_err, 0);
	assert_true(hinted.verified); /* free pages arrive as zero */
	assert_int_equal(plain.src.free_skipped, 0);
	ratio = (double)hinted.src.free_skipped / (64 * MiB / 4096);
	assert_true(ratio > 0.45 && ratio < 0.55);
	/* bytes of page contents sent drop by the free share */
	ratio = (double)hinted.src.normal_bytes / (double)plain.src.normal_bytes;
	print_message("normal bytes with hints / without: %.3f (free share %.3f)\n", ratio,
		      (double)hinted.src.free_skipped / (64 * MiB / 4096));
	assert_true(ratio > 0.45 && ratio < 0.55);
	pc_guest_delete(&g);
}

/* The operator raises the downtime limit of a migration that cannot meet
 * it: it then completes by the policy's own decision, not by force. */
static unsigned raised_at;

static void raise_limit(struct h_src *s, const struct precopy_stats *st)
{
	uint64_t v = 0;

	if (raised_at || st->status != PRECOPY_STATUS_ITERATE || st->iteration < 2)
		return;
	raised_at = st->iteration;
	assert_int_equal(precopy_set_param(s->s, PRECOPY_PARAM_DOWNTIME_LIMIT, 10000), 0);
	assert_int_equal(precopy_get_param(s->s, PRECOPY_PARAM_DOWNTIME_LIMIT, &v), 0);
	assert_int_equal(v, 10000);
	/* fixed once running; and a bad value changes nothing */
	assert_int_equal(precopy_set_param(s->s, PRECOPY_PARAM_CHANNELS, 2), -EBUSY);
	assert_int_equal(precopy_set_param(s->s, PRECOPY_PARAM_DOWNTIME_LIMIT, 0), -EINVAL);
	assert_int_equal(precopy_get_param(s->s, PRECOPY_PARAM_DOWNTIME_LIMIT, &v), 0);
	assert_int_equal(v, 10000);
}

static void set_param__raised_downtime_limit_converges(void **state)
{
	struct outcome o;

	(void)state;
	raised_at = 0;
	during = raise_limit;
	/* max_time_ms: a guard; without the raise it never ends */
	busy_migrate(&(struct busy){ .max_time_ms = 120000, .on_limit = PRECOPY_ON_LIMIT_ABORT },
		     &o);
	during = NULL;
	print_message("raised at pass %u, switched over after pass %u, expected %llu ms\n",
		      raised_at, o.src.iteration, (unsigned long long)o.src.expected_downtime);
	assert_true(raised_at >= 2);
	assert_int_equal(o.src_err, 0);
	assert_int_equal(o.dest_err, 0);
	assert_true(o.verified);
	assert_false(o.src.forced_switchover);
	assert_true(o.src.iteration >= raised_at);
	/* it went because of the new limit: the old one was never met */
	assert_true(o.src.expected_downtime > 300);
}

/* Names, ranges and states, without a migration. */
static void set_param__names_values_states(void **state)
{
	struct precopy_session *s;
	uint64_t v;
	char why[128];

	(void)state;
	assert_int_equal(precopy_new(PRECOPY_ROLE_SOURCE, NULL, NULL, &s), 0);
	for (int i = 0; i < PRECOPY_PARAM__COUNT; i++) {
		const char *name = precopy_param_name((enum precopy_param)i);

		assert_non_null(name);
		assert_int_equal(precopy_param_from_name(name), i);
		assert_int_equal(precopy_get_param(s, (enum precopy_param)i, &v), 0);
		/* setting the current value back is always fine */
		assert_int_equal(precopy_set_param(s, (enum precopy_param)i, v), 0);
	}
	assert_null(precopy_param_name(PRECOPY_PARAM__COUNT));
	assert_int_equal(precopy_param_from_name("downtime_limit"), -ENOENT);
	assert_int_equal(precopy_param_from_name(NULL), -EINVAL);
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM__COUNT, 1), -EINVAL);
	assert_int_equal(precopy_set_param(NULL, PRECOPY_PARAM_DOWNTIME_LIMIT, 1), -EINVAL);

	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_MAX_BANDWIDTH, 100 * MiB), 0);
	assert_int_equal(precopy_get_param(s, PRECOPY_PARAM_MAX_BANDWIDTH, &v), 0);
	assert_int_equal(v, 100 * MiB);
	/* out of range, alone or with the others: nothing changes */
	assert_int_equal(precopy_param_check(s, PRECOPY_PARAM_AUTO_CONVERGE, 2, why, sizeof(why)),
			 -EINVAL);
	assert_non_null(strstr(why, "auto-converge"));
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_MAX_CPU_THROTTLE, 10), -EINVAL);
	assert_int_equal(precopy_param_check(s, PRECOPY_PARAM_MAX_CPU_THROTTLE, 10, why,
					     sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "cpu_throttle_initial"));
	assert_int_equal(precopy_get_param(s, PRECOPY_PARAM_MAX_CPU_THROTTLE, &v), 0);
	assert_int_equal(v, 99);
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_ON_LIMIT, 7), -EINVAL);
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_CHANNELS, 0), -EINVAL);
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_CHANNELS, 4), 0);
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_TIMEOUT, 1ull << 40), -EINVAL);
	assert_int_equal(precopy_version() >> 16, PRECOPY_VERSION_MAJOR);
	assert_int_equal(precopy_version() & 0xffff, PRECOPY_VERSION_MINOR);
	precopy_delete(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(set_param__names_values_states),
		cmocka_unit_test(set_param__raised_downtime_limit_converges),
		cmocka_unit_test(free_hints__cut_bytes_by_free_share),
		cmocka_unit_test(device_state__size_changes_the_decision),
		cmocka_unit_test(watchdog__force_switches_over),
		cmocka_unit_test(watchdog__abort_fails_cleanly),
		cmocka_unit_test(auto_converge__off_never_converges),
		cmocka_unit_test(auto_converge__on_converges),
	};

	cmocka_set_test_filter(getenv("PRECOPY_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * What a VMM or an operator does to a migration while it runs, over TCP
 * loopback with the synthetic guest: free-page hints (taken only while the
 * dirty log is armed, and never at the cost of a write made after them),
 * and the bound on the pause a forced switchover may cost
 * (max-forced-downtime).
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
#define PAGE PRECOPY_PAGE_SIZE
#define HINTED 12 /* the page the tests hint free and then write */

static struct pc_guest *make_guest(size_t ram, double rate, enum pc_guest_pattern pat)
{
	return h_guest_new(&(struct pc_guest_opts){ .ram = ram, .dirty_rate = rate,
						    .pattern = pat, .threads = 1, .seed = 5 });
}

static int hint_one(struct precopy_session *s, uint64_t page)
{
	uint64_t bm = 1;

	return precopy_region_hint_free(s, 0, page, &bm, 1);
}

static bool page_is(const uint8_t *pg, uint8_t v)
{
	for (unsigned i = 0; i < PAGE; i++)
		if (pg[i] != v)
			return false;
	return true;
}

/*
 * The silent corruption of hints taken before the migration: page 12
 * hinted free, then written with 0xAB, then migrated. A hint before the
 * dirty log is armed is refused, so the page arrives as written (it used
 * to arrive as zeros, with a checksum that matched the zero page).
 */
static void hint_before_arming__refused_page_arrives(void **state)
{
	struct pc_guest *g = make_guest(256 * PAGE, 0, PC_GUEST_SEQUENTIAL);
	struct h_dest d;
	struct h_src s;
	size_t len;
	uint8_t *mem = pc_guest_ram(g, &len);
	int hint_err, src_err, dest_err;

	(void)state;
	assert_int_equal(h_dest_start(&d, len), 0);
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	hint_err = hint_one(s.s, HINTED);
	memset(mem + HINTED * PAGE, 0xAB, PAGE);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	src_err = h_src_join(&s);
	dest_err = h_dest_join(&d);
	assert_int_equal(src_err, 0);
	assert_int_equal(dest_err, 0);
	/* what the guest wrote after its hint is there */
	assert_true(page_is((uint8_t *)d.ram + HINTED * PAGE, 0xAB));
	assert_int_equal(memcmp(mem, d.ram, len), 0);
	/* and the hint was refused, saying why */
	assert_int_equal(hint_err, -EAGAIN);
	/* once ended, too late */
	assert_int_equal(hint_one(s.s, HINTED), -EBUSY);
	h_free_all(&s, &d, &g);
}

struct hint_at_bulk {
	bool write; /* and then write the page, as a guest reusing it would */
	int done;
};

/* From the progress hook at BULK (the log is armed, no page sent yet):
 * hint page 12 free (then write it, if asked to). */
static void hint_at_bulk(struct h_src *s, const struct precopy_stats *st)
{
	struct hint_at_bulk *h = s->opaque;
	uint8_t *mem = pc_guest_ram(s->guest, NULL);

	if (st->status != PRECOPY_STATUS_BULK || h->done)
		return;
	assert_int_equal(hint_one(s->s, HINTED), 0);
	if (h->write)
		memset(mem + HINTED * PAGE, 0xAB, PAGE);
	h->done = 1;
}

/*
 * Page 12 hinted free during the migration. Written after its hint
 * (@write), it is dirty again and sent with its contents. Hinted and left
 * alone, it goes as a free run and arrives as zeros (what it held does not
 * matter to a guest that freed it), and the checksums of both ends agree
 * on it: the destination verified. Either way the bulk pass skipped it
 * once.
 */
static void hint_during(bool write)
{
	struct pc_guest *g = make_guest(256 * PAGE, 0, PC_GUEST_SEQUENTIAL);
	struct hint_at_bulk h = { .write = write };
	struct precopy_stats st;
	struct h_dest d;
	struct h_src s;
	size_t len;
	uint8_t *mem = pc_guest_ram(g, &len);

	if (!write)
		memset(mem + HINTED * PAGE, 0xCD, PAGE);
	assert_int_equal(h_dest_start(&d, len), 0);
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	s.on_progress = hint_at_bulk;
	s.opaque = &h;
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	assert_int_equal(h.done, 1);
	assert_int_equal(precopy_query(s.s, &st), 0);
	print_message("free-skipped %llu, normal %llu, passes after bulk %u\n",
		      (unsigned long long)st.free_skipped, (unsigned long long)st.normal,
		      st.iteration);
	assert_int_equal(st.free_skipped, 1);
	if (write) {
		assert_true(page_is((uint8_t *)d.ram + HINTED * PAGE, 0xAB));
		assert_int_equal(memcmp(mem, d.ram, len), 0);
		/* skipped by the bulk pass, then sent after all */
		assert_true(st.iteration >= 1);
	} else {
		assert_true(page_is((uint8_t *)d.ram + HINTED * PAGE, 0));
		/* every other page as the source has it */
		assert_int_equal(memcmp(mem, d.ram, HINTED * PAGE), 0);
		assert_int_equal(memcmp(mem + (HINTED + 1) * PAGE,
					(uint8_t *)d.ram + (HINTED + 1) * PAGE,
					len - (HINTED + 1) * PAGE), 0);
	}
	h_free_all(&s, &d, &g);
}

H_CASE(hint_during__written_page_arrives, hint_during(true))
H_CASE(hint_during__unwritten_page_skipped, hint_during(false))

/* --- max-forced-downtime ------------------------------------------------ */

/* A guest that writes while the operator says the switchover gets 1 MiB/s
 * and allows 1 ms: a single page left (3.9 ms) is too much, so it never
 * converges, however slowly the machine lets the guest write, and the
 * watchdog forces after 2 passes. */
static void forced_params(struct precopy_params *p)
{
	precopy_params_init(p);
	p->max_bandwidth = 24 * MiB;
	p->avail_switchover_bandwidth = 1 * MiB;
	p->downtime_limit_ms = 1;
	p->max_iterations = 2;
	p->on_limit = PRECOPY_ON_LIMIT_FORCE;
}

static void run_forced(uint64_t bound, int *src_err, int *dest_err, struct precopy_stats *st)
{
	size_t len = 32 * MiB;
	struct pc_guest *g = make_guest(len, 64.0 * MiB, PC_GUEST_RANDOM);
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;
	uint64_t v = 0;

	forced_params(&p);
	assert_int_equal(h_dest_start(&d, len), 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(precopy_get_param(s.s, PRECOPY_PARAM_MAX_FORCED_DOWNTIME, &v), 0);
	assert_int_equal(v, 0); /* the default: no bound */
	assert_int_equal(precopy_set_param(s.s, PRECOPY_PARAM_MAX_FORCED_DOWNTIME, bound), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	*src_err = h_src_join(&s);
	*dest_err = h_dest_join(&d);
	precopy_query(s.s, st);
	if (*src_err) {
		/* aborted: the guest runs on here, intact; never resumed there */
		assert_int_equal(s.resumes, s.stops);
		h_check_guest_intact(g, "source");
		assert_int_equal(d.resumed, 0);
	} else {
		char why[256];

		assert_int_equal(pc_guest_verify(d.ram, len, &d.desc, why, sizeof(why)), 0);
	}
	h_free_all(&s, &d, &g);
}

/* The forced pause is expected to take more than the bound (1 ms): abort. */
static void max_forced_downtime__aborts_above_bound(void **state)
{
	struct precopy_stats st;
	int src_err, dest_err;

	(void)state;
	run_forced(1, &src_err, &dest_err, &st);
	print_message("expected %llu ms at the forced decision: %s\n",
		      (unsigned long long)st.forced_expected_downtime, st.error);
	assert_int_equal(src_err, -ETIMEDOUT);
	assert_true(dest_err < 0);
	assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
	assert_true(st.forced_aborted);
	assert_false(st.forced_switchover);
	assert_true(st.forced_expected_downtime > 1);
	assert_int_equal(st.forced_downtime, 0);
	assert_non_null(strstr(st.error, "max-forced-downtime"));
	assert_non_null(strstr(st.error, "max-iterations"));
}

/* Within the bound (or none): forced, and the result says what it cost. */
static void max_forced_downtime__forces_within_bound(void **state)
{
	struct precopy_stats st;
	int src_err, dest_err;

	(void)state;
	run_forced(2000000, &src_err, &dest_err, &st);
	print_message("forced: expected %llu ms, took %llu ms\n",
		      (unsigned long long)st.forced_expected_downtime,
		      (unsigned long long)st.forced_downtime);
	assert_int_equal(src_err, 0);
	assert_int_equal(dest_err, 0);
	assert_true(st.forced_switchover);
	assert_false(st.forced_aborted);
	assert_true(st.forced_expected_downtime > 1); /* above the limit: forced */
	assert_true(st.forced_expected_downtime != UINT64_MAX);
	assert_int_equal(st.forced_downtime, st.downtime);
}

/* Names and ranges, without a migration. */
static void max_forced_downtime__param(void **state)
{
	struct precopy_session *s;
	uint64_t v = 1;
	char why[128] = "";

	(void)state;
	assert_int_equal(precopy_new(PRECOPY_ROLE_SOURCE, NULL, NULL, &s), 0);
	assert_string_equal(precopy_param_name(PRECOPY_PARAM_MAX_FORCED_DOWNTIME),
			    "max-forced-downtime");
	assert_int_equal(precopy_param_from_name("max-forced-downtime"),
			 PRECOPY_PARAM_MAX_FORCED_DOWNTIME);
	assert_int_equal(precopy_get_param(s, PRECOPY_PARAM_MAX_FORCED_DOWNTIME, &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(precopy_param_check(s, PRECOPY_PARAM_MAX_FORCED_DOWNTIME, 2000001, why,
					     sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "max-forced-downtime"));
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_MAX_FORCED_DOWNTIME, 2000001),
			 -EINVAL);
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_MAX_FORCED_DOWNTIME, 800), 0);
	assert_int_equal(precopy_get_param(s, PRECOPY_PARAM_MAX_FORCED_DOWNTIME, &v), 0);
	assert_int_equal(v, 800);
	/* a hint on a session that has not started: not yet */
	{
		uint64_t bm = 1;
		void *m = aligned_alloc(PAGE, 4 * PAGE);

		assert_non_null(m);
		if (precopy_add_region(s, m, 4 * PAGE, PRECOPY_DIRTY_AUTO) >= 0)
			assert_int_equal(precopy_region_hint_free(s, 0, 0, &bm, 1), -EAGAIN);
		assert_int_equal(precopy_delete(&s), 0);
		free(m);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(max_forced_downtime__param),
		cmocka_unit_test(hint_before_arming__refused_page_arrives),
		cmocka_unit_test(hint_during__written_page_arrives),
		cmocka_unit_test(hint_during__unwritten_page_skipped),
		cmocka_unit_test(max_forced_downtime__aborts_above_bound),
		cmocka_unit_test(max_forced_downtime__forces_within_bound),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

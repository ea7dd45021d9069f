/* SPDX-License-Identifier: MIT */
/*
 * test_dirty.c - the dirty-page tracker on real anonymous memory.
 *
 * One group of tests is instantiated for each method (uffd-wp, soft-dirty,
 * external, auto). A method the running kernel lacks makes its tests skip
 * with the reason printed. For EXTERNAL the test plays the VMM: it reports
 * its own writes with pc_dirty_mark().
 *
 * SOFT_DIRTY is exact only with the writers paused during a sync (see
 * dirty.h), so the concurrent-writer test pauses its writer around each
 * soft-dirty sync, as the engine pauses vCPUs; for the other methods the
 * writer never stops.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "dirty.h"

#define PAGE PRECOPY_PAGE_SIZE
#define MiB (1024u * 1024u)
#define BIG (64 * MiB)

struct mode_ctx {
	enum precopy_dirty_mode mode;
	const char *name;
	int avail; /* 0, or why pc_dirty_new() refused the mode */
};

/* ------------------------------ helpers ---------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: fixed seeds, reproducible runs */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1Dull;
}

static char *map_anon(size_t len, bool populate)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	/* 4 KiB granularity (a THP would be reported whole), and no merging
	 * with neighbouring anonymous mappings. */
	assert_int_equal(madvise(p, len, MADV_NOHUGEPAGE), 0);
	if (populate)
		memset(p, 0x5a, len);
	return p;
}

static uint64_t *bitmap_new(uint64_t npages)
{
	uint64_t *b = calloc((npages + 63) / 64, sizeof(uint64_t));

	assert_non_null(b);
	return b;
}

static void bit_set(uint64_t *b, uint64_t i) { b[i / 64] |= 1ull << (i % 64); }
static bool bit_test(const uint64_t *b, uint64_t i) { return b[i / 64] >> (i % 64) & 1; }

static uint64_t bitmap_count(const uint64_t *b, uint64_t npages)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < (npages + 63) / 64; i++)
		n += (uint64_t)__builtin_popcountll(b[i]);
	return n;
}

/* Fail, naming the first page that differs. */
static void assert_bitmap_equal(const uint64_t *got, const uint64_t *want,
				uint64_t npages)
{
	for (uint64_t i = 0; i < npages; i++) {
		if (bit_test(got, i) != bit_test(want, i))
			fail_msg("page %llu: reported %d, written %d (reported %llu, written %llu)",
				 (unsigned long long)i, bit_test(got, i),
				 bit_test(want, i),
				 (unsigned long long)bitmap_count(got, npages),
				 (unsigned long long)bitmap_count(want, npages));
	}
}

static void mark_one(struct pc_dirty *d, uint64_t page)
{
	uint64_t one = 1;

	assert_int_equal(pc_dirty_mark(d, page, &one, 1), 0);
}

/* Write page @i of @base, as the VMM would, and remember it in @want. */
static void touch(struct pc_dirty *d, char *base, uint64_t i, uint64_t *want)
{
	((volatile char *)base)[i * PAGE + (i % PAGE)] += 1;
	if (pc_dirty_mode(d) == PRECOPY_DIRTY_EXTERNAL)
		mark_one(d, i);
	if (want)
		bit_set(want, i);
}

/* A scattered set: first, last, and @n pseudo-random pages. */
static void touch_scattered(struct pc_dirty *d, char *base, uint64_t npages,
			    uint64_t n, uint64_t seed, uint64_t *want)
{
	touch(d, base, 0, want);
	touch(d, base, npages - 1, want);
	for (uint64_t k = 0; k < n; k++)
		touch(d, base, rng_next(&seed) % npages, want);
}

static const char *mode_name(int m)
{
	switch (m) {
	case PRECOPY_DIRTY_UFFD_WP: return "uffd-wp";
	case PRECOPY_DIRTY_SOFT_DIRTY: return "soft-dirty";
	case PRECOPY_DIRTY_EXTERNAL: return "external";
	default: return "auto";
	}
}

static struct mode_ctx *ctx_of(void **state)
{
	return *state;
}

static const char *why_unavailable(const struct mode_ctx *c)
{
	if (c->avail == -EPERM)
		return "userfaultfd is not permitted (vm.unprivileged_userfaultfd)";
	if (c->avail != -ENOTSUP)
		return strerror(-c->avail);
	switch (c->mode) {
	case PRECOPY_DIRTY_UFFD_WP:
		return "the kernel lacks UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN (Linux < 6.7)";
	case PRECOPY_DIRTY_SOFT_DIRTY:
		return "the kernel has no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY unset, or the architecture lacks it)";
	default:
		return "neither userfaultfd write-protect nor soft-dirty works here";
	}
}

/* Skip (with the reason printed) if the group's method is not here. */
static void need_mode(const struct mode_ctx *c)
{
	if (c->avail) {
		print_message("[  SKIP    ] %s: %s\n", c->name, why_unavailable(c));
		skip();
	}
}

static struct pc_dirty *tracker(const struct mode_ctx *c, void *addr, size_t len)
{
	struct pc_dirty *d = NULL;
	int err = pc_dirty_new(addr, len, c->mode, &d);

	if (err)
		fail_msg("pc_dirty_new(%s): %s", c->name, strerror(-err));
	assert_non_null(d);
	if (c->mode != PRECOPY_DIRTY_AUTO)
		assert_int_equal(pc_dirty_mode(d), c->mode);
	else
		assert_int_equal(pc_dirty_mode(d), pc_dirty_probe());
	return d;
}

/* A mapping of @len bytes tracked by the group's method, and two bitmaps
 * of its pages: what was written (want) and what a sync reported (got). */
struct tracked {
	char *p;
	size_t len;
	uint64_t npages;
	uint64_t *want, *got;
	struct pc_dirty *d;
};

/* Skip if the group's method is not here; else map (@populate: touched
 * first) and track. */
static void tracked_open(struct tracked *t, void **state, size_t len, bool populate)
{
	const struct mode_ctx *c = ctx_of(state);

	need_mode(c);
	t->len = len;
	t->npages = len / PAGE;
	t->p = map_anon(len, populate);
	t->want = bitmap_new(t->npages);
	t->got = bitmap_new(t->npages);
	t->d = tracker(c, t->p, len);
}

static void tracked_close(struct tracked *t)
{
	pc_dirty_delete(&t->d);
	free(t->want);
	free(t->got);
	munmap(t->p, t->len);
}

/* The next sync of @d reports exactly the pages in @want (as new bits). */
static void expect_sync(struct pc_dirty *d, uint64_t *got, const uint64_t *want,
			uint64_t npages)
{
	assert_int_equal(pc_dirty_sync(d, got), (int64_t)bitmap_count(want, npages));
	assert_bitmap_equal(got, want, npages);
}

/* ------------------------------ per mode --------------------------------- */

static void pc_dirty_sync__reports_exactly_the_pages_written_after_start(void **state)
{
	struct tracked t;

	tracked_open(&t, state, BIG, true);
	/* Written before start: must not be reported. */
	touch_scattered(t.d, t.p, t.npages, 500, 7, NULL);
	assert_int_equal(pc_dirty_start(t.d), 0);
	touch_scattered(t.d, t.p, t.npages, 1000, 11, t.want);
	expect_sync(t.d, t.got, t.want, t.npages);

	pc_dirty_delete(&t.d);
	assert_null(t.d);
	/* After delete the memory is an ordinary mapping again. */
	touch_scattered(NULL, t.p, t.npages, 100, 13, NULL);
	tracked_close(&t);
}

static void pc_dirty_sync__second_sync_reports_only_later_writes(void **state)
{
	struct tracked t;

	tracked_open(&t, state, BIG, true);
	assert_int_equal(pc_dirty_start(t.d), 0);
	touch_scattered(t.d, t.p, t.npages, 300, 17, NULL);
	assert_true(pc_dirty_sync(t.d, t.got) > 0);

	/* Nothing written since: nothing reported. */
	memset(t.got, 0, (t.npages + 63) / 64 * 8);
	assert_int_equal(pc_dirty_sync(t.d, t.got), 0);
	assert_int_equal(bitmap_count(t.got, t.npages), 0);

	/* Written since the first sync: reported by the next. */
	touch_scattered(t.d, t.p, t.npages, 300, 19, t.want);
	expect_sync(t.d, t.got, t.want, t.npages);

	/* Bits already set in the caller's bitmap are not counted again. */
	touch(t.d, t.p, 0, NULL);
	assert_int_equal(pc_dirty_sync(t.d, t.got), 0);
	assert_bitmap_equal(t.got, t.want, t.npages);
	tracked_close(&t);
}

static void pc_dirty_sync__reports_unpopulated_pages_written_after_start(void **state)
{
	struct tracked t;
	uint64_t seed = 23;
	volatile char sink = 0;

	tracked_open(&t, state, BIG, false); /* never touched */
	assert_int_equal(pc_dirty_start(t.d), 0);
	touch_scattered(t.d, t.p, t.npages, 1000, 29, t.want);
	/* Only read (the zero page gets mapped): not a write. */
	for (int k = 0; k < 1000; k++) {
		uint64_t i = rng_next(&seed) % t.npages;

		if (!bit_test(t.want, i))
			sink += t.p[i * PAGE];
	}
	(void)sink;
	expect_sync(t.d, t.got, t.want, t.npages);
	tracked_close(&t);
}

/* More runs of written pages than one PAGEMAP_SCAN vector holds (4096). */
static void pc_dirty_sync__reports_every_page_when_runs_exceed_one_scan(void **state)
{
	struct tracked t;

	tracked_open(&t, state, BIG, true);
	assert_int_equal(pc_dirty_start(t.d), 0);
	for (uint64_t i = 0; i < t.npages; i += 2)
		touch(t.d, t.p, i, t.want);
	assert_int_equal(pc_dirty_sync(t.d, t.got), (int64_t)(t.npages / 2));
	assert_bitmap_equal(t.got, t.want, t.npages);

	memset(t.got, 0, (t.npages + 63) / 64 * 8);
	assert_int_equal(pc_dirty_sync(t.d, t.got), 0);
	tracked_close(&t);
}

struct writer {
	char *base;
	uint64_t npages;
	struct pc_dirty *d;
	uint64_t *recorded; /* written by the writer only; read after join */
	pthread_barrier_t go;
	atomic_bool stop;
	atomic_bool pause_req;
	atomic_bool paused;
	atomic_uint_fast64_t writes;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	bool ext = pc_dirty_mode(w->d) == PRECOPY_DIRTY_EXTERNAL;
	uint64_t seed = 31;

	pthread_barrier_wait(&w->go); /* tracking is armed from here on */
	while (!atomic_load(&w->stop)) {
		if (atomic_load(&w->pause_req)) {
			atomic_store(&w->paused, true);
			while (atomic_load(&w->pause_req) && !atomic_load(&w->stop))
				sched_yield();
			atomic_store(&w->paused, false);
			continue;
		}
		uint64_t i = rng_next(&seed) % w->npages;

		((volatile char *)w->base)[i * PAGE + 64] += 1;
		if (ext) {
			uint64_t one = 1;

			if (pc_dirty_mark(w->d, i, &one, 1))
				abort();
		}
		w->recorded[i / 64] |= 1ull << (i % 64);
		atomic_fetch_add_explicit(&w->writes, 1, memory_order_relaxed);
	}
	return NULL;
}

static void pc_dirty_sync__concurrent_writer_loses_no_write(void **state)
{
	struct mode_ctx *c = ctx_of(state);
	uint64_t npages = BIG / PAGE;

	need_mode(c);
	/* Half populated, half never touched. */
	char *p = map_anon(BIG, false);
	memset(p, 1, BIG / 2);
	uint64_t *all = bitmap_new(npages);
	struct writer w = {
		.base = p,
		.npages = npages,
		.recorded = bitmap_new(npages),
	};
	struct pc_dirty *d = tracker(c, p, BIG);
	bool pause = pc_dirty_mode(d) == PRECOPY_DIRTY_SOFT_DIRTY;
	struct timespec t0, t;
	pthread_t th;
	int syncs = 0;

	w.d = d;
	assert_int_equal(pthread_barrier_init(&w.go, NULL, 2), 0);
	assert_int_equal(pthread_create(&th, NULL, writer_main, &w), 0);
	assert_int_equal(pc_dirty_start(d), 0);
	pthread_barrier_wait(&w.go);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		if (pause) {
			atomic_store(&w.pause_req, true);
			while (!atomic_load(&w.paused))
				sched_yield();
		}
		assert_true(pc_dirty_sync(d, all) >= 0);
		syncs++;
		if (pause) {
			/* Let the writer get some work in between syncs. */
			uint64_t before = atomic_load(&w.writes);

			atomic_store(&w.pause_req, false);
			while (atomic_load(&w.writes) - before < 500)
				sched_yield();
		}
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while (syncs < 50 ||
		 (t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) <
			 400000000L);

	atomic_store(&w.stop, true);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(pc_dirty_sync(d, all) >= 0);

	uint64_t missed = 0, first = 0;

	for (uint64_t i = 0; i < npages; i++) {
		if (bit_test(w.recorded, i) && !bit_test(all, i) && !missed++)
			first = i;
	}
	print_message("[          ] %s: %llu writes on %llu pages, %d syncs, %llu missed\n",
		      c->name, (unsigned long long)atomic_load(&w.writes),
		      (unsigned long long)bitmap_count(w.recorded, npages), syncs,
		      (unsigned long long)missed);
	if (missed)
		fail_msg("%llu written pages never reported (first: %llu)",
			 (unsigned long long)missed, (unsigned long long)first);
	assert_true(atomic_load(&w.writes) > 0);

	pthread_barrier_destroy(&w.go);
	pc_dirty_delete(&d);
	free(all);
	free(w.recorded);
	munmap(p, BIG);
}

/*
 * Two trackers of the same method in one process, on two halves of one
 * mapping. For soft-dirty the clear of one must not eat the other's bits.
 */
static void pc_dirty_sync__two_trackers_keep_their_own_pages(void **state)
{
	struct mode_ctx *c = ctx_of(state);
	size_t half = 8 * MiB;
	uint64_t n = half / PAGE;

	need_mode(c);
	char *p = map_anon(2 * half, true), *q = p + half;
	uint64_t *wa = bitmap_new(n), *wb = bitmap_new(n);
	uint64_t *ga = bitmap_new(n), *gb = bitmap_new(n);
	struct pc_dirty *a = tracker(c, p, half), *b = tracker(c, q, half);

	assert_int_equal(pc_dirty_start(a), 0);
	touch_scattered(a, p, n, 100, 37, wa);
	assert_int_equal(pc_dirty_start(b), 0); /* a's writes must survive */
	touch_scattered(b, q, n, 100, 41, wb);
	touch_scattered(a, p, n, 100, 43, wa);

	expect_sync(b, gb, wb, n);
	expect_sync(a, ga, wa, n);

	/* Again, syncing in the other order. */
	memset(wa, 0, n / 8);
	memset(wb, 0, n / 8);
	memset(ga, 0, n / 8);
	memset(gb, 0, n / 8);
	touch_scattered(a, p, n, 50, 47, wa);
	touch_scattered(b, q, n, 50, 53, wb);
	expect_sync(a, ga, wa, n);
	expect_sync(b, gb, wb, n);

	/* Deleting one leaves the other working. */
	pc_dirty_delete(&a);
	memset(wb, 0, n / 8);
	memset(gb, 0, n / 8);
	touch_scattered(NULL, p, n, 50, 59, NULL);
	touch_scattered(b, q, n, 50, 61, wb);
	expect_sync(b, gb, wb, n);

	pc_dirty_delete(&b);
	free(wa);
	free(wb);
	free(ga);
	free(gb);
	munmap(p, 2 * half);
}

static void pc_dirty_mark__only_external_accepts_marks(void **state)
{
	struct mode_ctx *c = ctx_of(state);
	uint64_t one = 1;

	need_mode(c);
	char *p = map_anon(MiB, true);
	struct pc_dirty *d = tracker(c, p, MiB);

	assert_int_equal(pc_dirty_start(d), 0);
	if (pc_dirty_mode(d) == PRECOPY_DIRTY_EXTERNAL)
		assert_int_equal(pc_dirty_mark(d, 0, &one, 1), 0);
	else
		assert_int_equal(pc_dirty_mark(d, 0, &one, 1), -ENOTSUP);
	pc_dirty_delete(&d);
	munmap(p, MiB);
}

static void pc_dirty_sync__unmapped_range_returns_efault(void **state)
{
	struct mode_ctx *c = ctx_of(state);

	need_mode(c);
	uint64_t *got = bitmap_new(MiB / PAGE);
	char *p = map_anon(MiB, true);
	struct pc_dirty *d = tracker(c, p, MiB);

	assert_int_equal(pc_dirty_start(d), 0);
	munmap(p, MiB);
	if (pc_dirty_mode(d) == PRECOPY_DIRTY_EXTERNAL)
		assert_int_equal(pc_dirty_sync(d, got), 0); /* not its business */
	else
		assert_int_equal(pc_dirty_sync(d, got), -EFAULT);
	pc_dirty_delete(&d);
	free(got);
}

static void pc_dirty_sync__fork_child_gets_ebadfd_parent_keeps_tracking(void **state)
{
	struct tracked t;
	int status;
	pid_t pid;

	tracked_open(&t, state, MiB, true);
	assert_int_equal(pc_dirty_start(t.d), 0);
	touch(t.d, t.p, 3, t.want);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int ok = 1;

		if (pc_dirty_mode(t.d) != PRECOPY_DIRTY_EXTERNAL) {
			ok &= pc_dirty_sync(t.d, t.got) == -EBADFD;
			ok &= pc_dirty_start(t.d) == -EBADFD;
		}
		t.p[5 * PAGE] = 1; /* the child's own copy */
		pc_dirty_delete(&t.d);
		_exit(ok ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);

	touch(t.d, t.p, 7, t.want); /* a first write after fork: copy-on-write */
	expect_sync(t.d, t.got, t.want, t.npages);
	tracked_close(&t);
}

/* ------------------------------ common ----------------------------------- */

static void pc_dirty_new__bad_arguments_return_einval(void **state)
{
	struct pc_dirty *d = (void *)1;
	char *p = map_anon(MiB, false);

	(void)state;
	assert_int_equal(pc_dirty_new(NULL, MiB, PRECOPY_DIRTY_EXTERNAL, &d), -EINVAL);
	assert_null(d); /* *out is cleared on failure */
	assert_int_equal(pc_dirty_new(p + 1, MiB - PAGE, PRECOPY_DIRTY_EXTERNAL, &d), -EINVAL);
	assert_int_equal(pc_dirty_new(p, MiB - 1, PRECOPY_DIRTY_EXTERNAL, &d), -EINVAL);
	assert_int_equal(pc_dirty_new(p, 0, PRECOPY_DIRTY_EXTERNAL, &d), -EINVAL);
	assert_int_equal(pc_dirty_new(p, MiB, PRECOPY_DIRTY_EXTERNAL, NULL), -EINVAL);
	assert_int_equal(pc_dirty_new(p, MiB, (enum precopy_dirty_mode)42, &d), -EINVAL);
	assert_int_equal(pc_dirty_new((void *)(UINTPTR_MAX - PAGE + 1), 2 * PAGE,
				      PRECOPY_DIRTY_EXTERNAL, &d), -EINVAL);
	for (int m = PRECOPY_DIRTY_AUTO; m <= PRECOPY_DIRTY_EXTERNAL; m++)
		assert_int_equal(pc_dirty_new(p, 0, (enum precopy_dirty_mode)m, &d), -EINVAL);

	uint64_t bits[2] = { ~0ull, ~0ull };

	assert_int_equal(pc_dirty_start(NULL), -EINVAL);
	assert_int_equal(pc_dirty_sync(NULL, bits), -EINVAL);
	assert_int_equal(pc_dirty_mark(NULL, 0, bits, 1), -EINVAL);
	assert_int_equal(pc_dirty_mode(NULL), PRECOPY_DIRTY_AUTO);
	pc_dirty_delete(NULL);
	d = NULL;
	pc_dirty_delete(&d);

	assert_int_equal(pc_dirty_new(p, 64 * PAGE, PRECOPY_DIRTY_EXTERNAL, &d), 0);
	assert_int_equal(pc_dirty_sync(d, NULL), -EINVAL);
	assert_int_equal(pc_dirty_sync(d, bits), -EINVAL); /* not started */
	assert_int_equal(pc_dirty_start(d), 0);
	assert_int_equal(pc_dirty_mark(d, 0, NULL, 1), -EINVAL);
	assert_int_equal(pc_dirty_mark(d, 0, bits, 65), -EINVAL);
	assert_int_equal(pc_dirty_mark(d, 64, bits, 1), -EINVAL);
	assert_int_equal(pc_dirty_mark(d, UINT64_MAX, bits, 2), -EINVAL);
	assert_int_equal(pc_dirty_mark(d, 63, bits, UINT64_MAX), -EINVAL);
	assert_int_equal(pc_dirty_mark(d, 64, bits, 0), 0);
	assert_int_equal(pc_dirty_mark(d, 0, bits, 64), 0);
	pc_dirty_delete(&d);
	assert_null(d);

	/* A range that is not (entirely) mapped. */
	munmap(p + MiB / 2, MiB / 2);
	assert_int_equal(pc_dirty_new(p, MiB, PRECOPY_DIRTY_UFFD_WP, &d), -EFAULT);
	assert_int_equal(pc_dirty_new(p, MiB, PRECOPY_DIRTY_AUTO, &d), -EFAULT);
	munmap(p, MiB / 2);
}

static void pc_dirty_mark__unaligned_first_sets_exactly_those_pages(void **state)
{
	uint64_t npages = 300;
	char *p = map_anon(npages * PAGE, false);
	uint64_t *got = bitmap_new(npages), *want = bitmap_new(npages);
	uint64_t src[3] = { 0x8000000000000001ull, 0xf0f0f0f0f0f0f0f0ull, ~0ull };
	struct pc_dirty *d = NULL;

	(void)state;
	assert_int_equal(pc_dirty_new(p, npages * PAGE, PRECOPY_DIRTY_EXTERNAL, &d), 0);
	assert_int_equal(pc_dirty_start(d), 0);
	/* 150 bits of src from page 37: the third word is cut at bit 22. */
	assert_int_equal(pc_dirty_mark(d, 37, src, 150), 0);
	for (uint64_t i = 0; i < 150; i++)
		if (bit_test(src, i))
			bit_set(want, 37 + i);
	/* The last page, through a word that ends past the range. */
	assert_int_equal(pc_dirty_mark(d, npages - 1, src, 1), 0);
	bit_set(want, npages - 1);

	expect_sync(d, got, want, npages);
	memset(got, 0, (npages + 63) / 64 * 8);
	assert_int_equal(pc_dirty_sync(d, got), 0);

	/* Marks before start are dropped by it. */
	assert_int_equal(pc_dirty_mark(d, 0, src, 64), 0);
	assert_int_equal(pc_dirty_start(d), 0);
	assert_int_equal(pc_dirty_sync(d, got), 0);

	pc_dirty_delete(&d);
	free(got);
	free(want);
	munmap(p, npages * PAGE);
}

static void pc_dirty_probe__agrees_with_auto(void **state)
{
	int probe = pc_dirty_probe();
	char *p = map_anon(MiB, false);
	struct pc_dirty *d = NULL;
	int err = pc_dirty_new(p, MiB, PRECOPY_DIRTY_AUTO, &d);

	(void)state;
	print_message("[          ] pc_dirty_probe(): %s\n",
		      probe < 0 ? strerror(-probe) : mode_name(probe));
	if (probe < 0) {
		assert_int_equal(err, -ENOTSUP);
	} else {
		assert_int_equal(err, 0);
		assert_int_equal(pc_dirty_mode(d), probe);
	}
	pc_dirty_delete(&d);
	munmap(p, MiB);
}

/* -------------------------------- main ----------------------------------- */

static int mode_setup(void **state)
{
	struct mode_ctx *c = *state;
	struct pc_dirty *d = NULL;
	char *p = mmap(NULL, MiB, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return -1;
	c->avail = pc_dirty_new(p, MiB, c->mode, &d);
	pc_dirty_delete(&d);
	munmap(p, MiB);
	print_message("[ GROUP    ] %s%s%s\n", c->name, c->avail ? ": skipped, " : "",
		      c->avail ? why_unavailable(c) : "");
	return 0;
}

#define PER_MODE_TESTS                                                         \
	cmocka_unit_test(pc_dirty_sync__reports_exactly_the_pages_written_after_start), \
	cmocka_unit_test(pc_dirty_sync__second_sync_reports_only_later_writes),  \
	cmocka_unit_test(pc_dirty_sync__reports_unpopulated_pages_written_after_start), \
	cmocka_unit_test(pc_dirty_sync__reports_every_page_when_runs_exceed_one_scan), \
	cmocka_unit_test(pc_dirty_sync__concurrent_writer_loses_no_write),       \
	cmocka_unit_test(pc_dirty_sync__two_trackers_keep_their_own_pages),      \
	cmocka_unit_test(pc_dirty_mark__only_external_accepts_marks),            \
	cmocka_unit_test(pc_dirty_sync__unmapped_range_returns_efault),          \
	cmocka_unit_test(pc_dirty_sync__fork_child_gets_ebadfd_parent_keeps_tracking)

int main(void)
{
	static struct mode_ctx modes[] = {
		{ PRECOPY_DIRTY_UFFD_WP, "uffd-wp", 0 },
		{ PRECOPY_DIRTY_SOFT_DIRTY, "soft-dirty", 0 },
		{ PRECOPY_DIRTY_EXTERNAL, "external", 0 },
		{ PRECOPY_DIRTY_AUTO, "auto", 0 },
	};
	const struct CMUnitTest per_mode[] = { PER_MODE_TESTS };
	const struct CMUnitTest common[] = {
		cmocka_unit_test(pc_dirty_new__bad_arguments_return_einval),
		cmocka_unit_test(pc_dirty_mark__unaligned_first_sets_exactly_those_pages),
		cmocka_unit_test(pc_dirty_probe__agrees_with_auto),
	};
	int failed = 0;

	print_message("[ GROUP    ] common\n");
	failed += cmocka_run_group_tests_name("common", common, NULL, NULL);
	for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
		struct CMUnitTest tests[sizeof(per_mode) / sizeof(per_mode[0])];

		for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
			tests[i] = per_mode[i];
			tests[i].initial_state = &modes[m];
		}
		void *state = &modes[m];

		if (mode_setup(&state))
			return 1;
		failed += cmocka_run_group_tests_name(modes[m].name, tests, NULL, NULL);
	}
	return failed ? 1 : 0;
}

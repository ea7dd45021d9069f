/* SPDX-License-Identifier: MIT */
/*
 * test_uffd_place.c - postcopy's destination memory (engine/uffd_place.c):
 * missing pages fault to a handler, arriving pages are placed once, a
 * guest touching pages in any order reads each one right.
 *
 * Needs userfaultfd with MISSING mode: the whole program is skipped (77)
 * with the reason where this process cannot have one.
 * Names: function__condition.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "precopy.h"
#include "uffd_place.h"

#define PAGE ((size_t)PRECOPY_PAGE_SIZE)
#define NPAGES 512

/* Page @i's content at the source: every 8-byte word says (seed, i, word). */
static void fill(uint8_t *p, uint64_t seed, uint64_t i)
{
	uint64_t *w = (uint64_t *)p;

	for (size_t k = 0; k < PAGE / 8; k++)
		w[k] = seed * 0x9e3779b97f4a7c15ull ^ (i << 20) ^ k;
}

static bool same(const uint8_t *p, uint64_t seed, uint64_t i)
{
	uint8_t want[PAGE];

	fill(want, seed, i);
	return memcmp(p, want, PAGE) == 0;
}

static uint8_t *map_anon(void)
{
	void *m = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);

	assert_true(m != MAP_FAILED);
	return m;
}

static uint8_t *map_memfd(void)
{
	int fd = memfd_create("uffd-place-test", MFD_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, NPAGES * PAGE), 0);

	void *m = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

	close(fd);
	assert_true(m != MAP_FAILED);
	return m;
}

/* ---- a guest at the destination -------------------------------------- */

struct guest {
	uint8_t *mem;
	uint64_t seed;
	unsigned order[NPAGES];
	unsigned n;                /* pages it touches, in order[] */
	_Atomic unsigned touched;
	_Atomic unsigned wrong;
};

static void *guest_main(void *arg)
{
	struct guest *g = arg;

	for (unsigned k = 0; k < g->n; k++) {
		unsigned i = g->order[k];

		/* A read of the middle of the page: it faults if missing. */
		if (!same(g->mem + (size_t)i * PAGE, g->seed, i))
			atomic_fetch_add(&g->wrong, 1);
		atomic_fetch_add(&g->touched, 1);
	}
	return NULL;
}

static void shuffle(unsigned *a, unsigned n, unsigned seed)
{
	srand(seed);
	for (unsigned i = 0; i < n; i++)
		a[i] = i;
	for (unsigned i = n - 1; i > 0; i--) {
		unsigned j = (unsigned)rand() % (i + 1), t = a[i];

		a[i] = a[j];
		a[j] = t;
	}
}

/*
 * Every page missing; a guest reads all of them in random order while this
 * thread plays the source: it serves each fault first and pushes the rest
 * in order between faults, as postcopy does. Each page must read right,
 * and be placed exactly once: a pushed page that a fault already brought
 * is found there, not written again.
 */
static void run_random_order(bool shared)
{
	struct pc_uffd_place *u;
	uint8_t *mem = shared ? map_memfd() : map_anon();
	uint64_t missing[NPAGES / 64];
	struct guest g = { .mem = mem, .seed = 7, .n = NPAGES };
	uint8_t page[PAGE];
	pthread_t t;
	unsigned push = 0, again = 0;

	/* Stale content from an earlier pass: must never be read. */
	memset(mem, 0xEE, NPAGES * PAGE);
	memset(missing, 0xff, sizeof(missing));
	assert_int_equal(pc_uffd_place_open(&u), 0);
	assert_int_equal(pc_uffd_place_add(u, mem, NPAGES * PAGE, shared, missing), 0);
	shuffle(g.order, NPAGES, 42);
	assert_int_equal(pthread_create(&t, NULL, guest_main, &g), 0);

	/* Pushing starts after the first fault was served, so the guest
	 * faults at least once however the threads are scheduled. */
	unsigned served = 0;

	while (atomic_load(&g.touched) < NPAGES) {
		uint64_t a;
		int r = pc_uffd_place_fault(u, served ? 0 : 10, &a);

		if (r == 0) {
			served++;
			uint64_t i = (a - (uint64_t)(uintptr_t)mem) / PAGE;

			assert_true(a >= (uint64_t)(uintptr_t)mem && i < NPAGES);
			fill(page, g.seed, i);
			r = pc_uffd_place_page(u, mem + i * PAGE, page, PAGE);
			assert_true(r == 0 || r == 1); /* 1: a push got there first */
			continue;
		}
		assert_int_equal(r, -ETIMEDOUT);
		if (served && push < NPAGES) {
			fill(page, g.seed, push);
			r = pc_uffd_place_page(u, mem + push * PAGE, page, PAGE);
			assert_true(r == 0 || r == 1);
			again += (unsigned)r;
			push++;
		}
	}
	pthread_join(t, NULL);
	assert_int_equal(atomic_load(&g.wrong), 0);

	uint64_t placed, present, faults;

	pc_uffd_place_stats(u, &placed, &present, &faults);
	/* each page placed once: what a push found there, it left */
	assert_true(placed <= NPAGES);
	for (unsigned i = 0; i < NPAGES; i++)
		if (!same(mem + i * PAGE, g.seed, i))
			fail_msg("page %u differs after the run", i);
	/* every page is there now: placing each once more finds it there,
	 * writes nothing, and the count of placed pages stays at one each */
	for (unsigned i = 0; i < NPAGES; i++) {
		fill(page, 99, i);
		assert_int_equal(pc_uffd_place_page(u, mem + i * PAGE, page, PAGE), 1);
		assert_true(same(mem + i * PAGE, g.seed, i));
	}
	pc_uffd_place_stats(u, &placed, &present, &faults);
	assert_int_equal(placed, NPAGES);
	assert_true(faults >= 1);
	printf("# %s: %u pushed (%u found there already), %" PRIu64 " faults served\n",
	       shared ? "memfd" : "anon", push, again, faults);
	pc_uffd_place_close(u);
	munmap(mem, NPAGES * PAGE);
}

static void place__guest_reads_pages_in_random_order_anon(void **state)
{
	(void)state;
	run_random_order(false);
}

static void place__guest_reads_pages_in_random_order_memfd(void **state)
{
	(void)state;
	run_random_order(true);
}

/* Pages not missing keep their content and never fault; only the missing
 * ones are dropped (even pages here). */
static void place__present_pages_keep_content_and_never_fault(void **state)
{
	(void)state;
	struct pc_uffd_place *u;
	uint8_t *mem = map_anon();
	uint64_t missing[NPAGES / 64], faults, a;

	for (unsigned i = 0; i < NPAGES; i++)
		fill(mem + i * PAGE, 3, i);
	memset(missing, 0x55, sizeof(missing)); /* even pages */
	assert_int_equal(pc_uffd_place_open(&u), 0);
	assert_int_equal(pc_uffd_place_add(u, mem, NPAGES * PAGE, false, missing), 0);
	for (unsigned i = 1; i < NPAGES; i += 2)
		assert_true(same(mem + i * PAGE, 3, i));
	assert_int_equal(pc_uffd_place_fault(u, 0, &a), -ETIMEDOUT);
	pc_uffd_place_stats(u, NULL, NULL, &faults);
	assert_int_equal(faults, 0);
	/* An odd page is there: placing over it is refused, content kept. */
	uint8_t page[PAGE];

	fill(page, 4, 1);
	assert_int_equal(pc_uffd_place_page(u, mem + PAGE, page, PAGE), 1);
	assert_true(same(mem + PAGE, 3, 1));
	/* A run over pages 0..3 places 0 and 2 and leaves 1 and 3. */
	uint8_t *run = malloc(4 * PAGE);

	assert_non_null(run);
	for (unsigned i = 0; i < 4; i++)
		fill(run + i * PAGE, 5, i);
	assert_int_equal(pc_uffd_place_page(u, mem, run, 4 * PAGE), 2);
	assert_true(same(mem, 5, 0) && same(mem + 2 * PAGE, 5, 2));
	assert_true(same(mem + PAGE, 3, 1) && same(mem + 3 * PAGE, 3, 3));
	free(run);
	pc_uffd_place_close(u);
	munmap(mem, NPAGES * PAGE);
}

static void place__bad_arguments_einval(void **state)
{
	(void)state;
	struct pc_uffd_place *u;
	uint8_t *mem = map_anon(), page[PAGE];
	uint64_t missing[NPAGES / 64] = { 0 }, a;

	assert_int_equal(pc_uffd_place_open(NULL), -EINVAL);
	assert_int_equal(pc_uffd_place_open(&u), 0);
	assert_int_equal(pc_uffd_place_add(u, mem + 1, PAGE, false, missing), -EINVAL);
	assert_int_equal(pc_uffd_place_add(u, mem, PAGE + 1, false, missing), -EINVAL);
	assert_int_equal(pc_uffd_place_add(u, mem, 0, false, missing), -EINVAL);
	assert_int_equal(pc_uffd_place_add(u, mem, PAGE, false, NULL), -EINVAL);
	assert_int_equal(pc_uffd_place_add(NULL, mem, PAGE, false, missing), -EINVAL);
	assert_int_equal(pc_uffd_place_add(u, mem, 8 * PAGE, false, missing), 0);
	/* overlapping a range added before */
	assert_int_equal(pc_uffd_place_add(u, mem + 4 * PAGE, 8 * PAGE, false, missing), -EINVAL);
	/* outside every range, unaligned, NULL */
	assert_int_equal(pc_uffd_place_page(u, mem + 8 * PAGE, page, PAGE), -EINVAL);
	assert_int_equal(pc_uffd_place_page(u, mem + 7 * PAGE, page, 2 * PAGE), -EINVAL);
	assert_int_equal(pc_uffd_place_page(u, mem + 1, page, PAGE), -EINVAL);
	assert_int_equal(pc_uffd_place_page(u, mem, NULL, PAGE), -EINVAL);
	assert_int_equal(pc_uffd_place_fault(u, 0, NULL), -EINVAL);
	assert_int_equal(pc_uffd_place_fault(NULL, 0, &a), -EINVAL);
	pc_uffd_place_close(u);
	pc_uffd_place_close(NULL);
	munmap(mem, NPAGES * PAGE);
}

int main(void)
{
	struct pc_uffd_place *u;
	int err = pc_uffd_place_open(&u);

	if (err) {
		printf("SKIP: no userfaultfd for this process: %s\n", strerror(-err));
		return 77;
	}
	pc_uffd_place_close(u);

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(place__guest_reads_pages_in_random_order_anon),
		cmocka_unit_test(place__guest_reads_pages_in_random_order_memfd),
		cmocka_unit_test(place__present_pages_keep_content_and_never_fault),
		cmocka_unit_test(place__bad_arguments_einval),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

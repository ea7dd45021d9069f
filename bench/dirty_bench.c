/* SPDX-License-Identifier: MIT */
/*
 * dirty_bench.c - what dirty tracking costs, per method, on one range.
 *
 *   precopy-bench-dirty [--size MIB] [--json]
 *
 * On an anonymous mapping (default 1 GiB, THP off, every page populated),
 * for UFFD_WP and SOFT_DIRTY:
 *   arm_ms           pc_dirty_start()
 *   clean_ms/ns_pg   one pc_dirty_sync() with nothing written, and per page
 *                    of the range (mean of 20)
 *   10pct_ms/ns_pg   one pc_dirty_sync() after writing 10% of the pages
 *                    (random, distinct; mean of 5)
 *   wr1_ns           the writer's cost of one first write to a protected
 *                    page (a byte, in a loop over those 10%)
 *   wr2_ns           the same writes again, now unprotected: the baseline
 *   race_writes/miss a writer thread writes random pages while the main
 *                    thread syncs back to back for 1 s, NOT paused; miss =
 *                    pages it wrote that no sync ever reported. Must be 0
 *                    for uffd-wp; shows the soft-dirty race (see dirty.h).
 * Units: ms = milliseconds, ns_pg = nanoseconds per page (4 KiB) of the
 * whole range. A method the kernel lacks prints why it was skipped.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "common.h"
#include "dirty.h"

#define PAGE PRECOPY_PAGE_SIZE

struct result {
	const char *name;
	int err;
	double arm_ms, clean_ms, dirty_ms, wr1_ns, wr2_ns;
	uint64_t race_writes, race_pages, race_missed;
	int race_syncs;
};

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1Dull;
}

struct racer {
	volatile char *base;
	uint64_t npages;
	uint64_t *recorded;
	atomic_bool stop;
	uint64_t writes;
};

static void *racer_main(void *arg)
{
	struct racer *r = arg;
	uint64_t seed = 99;

	while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
		uint64_t i = rng_next(&seed) % r->npages;

		r->base[i * PAGE + 128] += 1;
		r->recorded[i / 64] |= 1ull << (i % 64);
		r->writes++;
	}
	return NULL;
}

/* The tracked memory and the bitmaps a measurement uses. */
struct area {
	struct pc_dirty *d;
	char *p;
	uint64_t npages, nwords;
	uint64_t *bitmap, *chosen;
};

/* 10% of the pages written, distinct random ones, five rounds: the cost
 * of a first and a second write to each, and of the sync that finds them.
 * Return: 0 or -EIO (printed) when the sync missed some. */
static int measure_writes(struct area *a, uint64_t *pages, uint64_t ndirty, const char *name,
			  struct result *res)
{
	uint64_t seed = 1;

	for (int round = 0; round < 5; round++) {
		memset(a->chosen, 0, a->nwords * 8);
		for (uint64_t k = 0; k < ndirty;) {
			uint64_t i = rng_next(&seed) % a->npages;

			if (a->chosen[i / 64] >> (i % 64) & 1)
				continue;
			a->chosen[i / 64] |= 1ull << (i % 64);
			pages[k++] = i;
		}
		double t0 = pcb_now();

		for (uint64_t k = 0; k < ndirty; k++)
			((volatile char *)a->p)[pages[k] * PAGE] += 1;
		double t1 = pcb_now();

		for (uint64_t k = 0; k < ndirty; k++)
			((volatile char *)a->p)[pages[k] * PAGE] += 1;
		double t2 = pcb_now();

		memset(a->bitmap, 0, a->nwords * 8);
		int64_t n = pc_dirty_sync(a->d, a->bitmap);
		double t3 = pcb_now();

		if (n < (int64_t)ndirty) {
			fprintf(stderr, "%s: sync reported %lld of %llu pages\n",
				name, (long long)n, (unsigned long long)ndirty);
			return -EIO;
		}
		res->wr1_ns += (t1 - t0) * 1e9 / (double)ndirty / 5;
		res->wr2_ns += (t2 - t1) * 1e9 / (double)ndirty / 5;
		res->dirty_ms += (t3 - t2) * 1e3 / 5;
	}
	return 0;
}

/* A writer that is not paused during the syncs, for a second: the pages
 * it wrote that no sync reported. Return: 0 or -EAGAIN. */
static int measure_race(struct area *a, struct result *res)
{
	struct racer r = { .base = a->p, .npages = a->npages, .recorded = a->chosen };
	pthread_t th;
	double t0;

	memset(a->chosen, 0, a->nwords * 8);
	memset(a->bitmap, 0, a->nwords * 8);
	pc_dirty_sync(a->d, a->bitmap);
	memset(a->bitmap, 0, a->nwords * 8);
	if (pthread_create(&th, NULL, racer_main, &r))
		return -EAGAIN;
	t0 = pcb_now();
	while (pcb_now() - t0 < 1.0) {
		if (pc_dirty_sync(a->d, a->bitmap) < 0)
			break;
		res->race_syncs++;
	}
	atomic_store(&r.stop, true);
	pthread_join(th, NULL);
	pc_dirty_sync(a->d, a->bitmap);
	res->race_writes = r.writes;
	for (uint64_t w = 0; w < a->nwords; w++) {
		res->race_pages += (uint64_t)__builtin_popcountll(a->chosen[w]);
		res->race_missed += (uint64_t)__builtin_popcountll(a->chosen[w] & ~a->bitmap[w]);
	}
	return 0;
}

static int run(enum precopy_dirty_mode mode, const char *name, size_t len,
	       struct result *res)
{
	struct area a = { .npages = len / PAGE };
	uint64_t ndirty = a.npages / 10, *pages;
	double t0;
	int err;

	a.nwords = (a.npages + 63) / 64;
	a.bitmap = calloc(a.nwords, 8);
	a.chosen = calloc(a.nwords, 8);
	pages = calloc(ndirty, 8);
	memset(res, 0, sizeof(*res));
	res->name = name;
	if (!a.bitmap || !a.chosen || !pages)
		return -ENOMEM;
	a.p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a.p == MAP_FAILED)
		return -errno;
	madvise(a.p, len, MADV_NOHUGEPAGE);
	memset(a.p, 1, len);

	err = pc_dirty_new(a.p, len, mode, &a.d);
	if (err)
		goto out;
	t0 = pcb_now();
	err = pc_dirty_start(a.d);
	res->arm_ms = (pcb_now() - t0) * 1e3;
	if (err)
		goto out;

	/* Nothing written. */
	pc_dirty_sync(a.d, a.bitmap);
	t0 = pcb_now();
	for (int k = 0; k < 20; k++) {
		if (pc_dirty_sync(a.d, a.bitmap) < 0) {
			err = -EIO;
			goto out;
		}
	}
	res->clean_ms = (pcb_now() - t0) * 1e3 / 20;

	err = measure_writes(&a, pages, ndirty, name, res);
	if (!err)
		err = measure_race(&a, res);
out:
	pc_dirty_delete(&a.d);
	munmap(a.p, len);
	free(a.bitmap);
	free(a.chosen);
	free(pages);
	res->err = err;
	return err;
}

int main(int argc, char **argv)
{
	static const struct {
		enum precopy_dirty_mode mode;
		const char *name;
	} modes[] = {
		{ PRECOPY_DIRTY_UFFD_WP, "uffd-wp" },
		{ PRECOPY_DIRTY_SOFT_DIRTY, "soft-dirty" },
	};
	size_t mib = 1024;
	bool json = false;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = true;
		} else if (!strcmp(argv[i], "--size") && i + 1 < argc) {
			mib = strtoul(argv[++i], NULL, 0);
		} else {
			fprintf(stderr, "usage: %s [--size MIB] [--json]\n", argv[0]);
			return 2;
		}
	}
	if (!mib) {
		fprintf(stderr, "--size must be > 0\n");
		return 2;
	}

	size_t len = mib << 20;
	double np = (double)(len / PAGE);
	int probe = pc_dirty_probe();
	const char *auto_name = probe == PRECOPY_DIRTY_UFFD_WP	  ? "uffd-wp"
				: probe == PRECOPY_DIRTY_SOFT_DIRTY ? "soft-dirty"
								    : "none";

	if (json)
		printf("[");
	else
		printf("# %zu MiB, %zu pages of 4 KiB, THP off, populated; AUTO picks %s\n"
		       "%-10s %8s %9s %9s %9s %9s %8s %8s %12s %9s %8s\n",
		       mib, len / PAGE, auto_name, "#mode", "arm_ms",
		       "clean_ms", "clean_ns", "10pct_ms", "10pct_ns", "wr1_ns",
		       "wr2_ns", "race_writes", "race_syncs", "race_miss");
	for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
		struct result r;

		run(modes[m].mode, modes[m].name, len, &r);
		if (json) {
			printf("%s{\"mode\":\"%s\",\"size_mib\":%zu", m ? "," : "",
			       r.name, mib);
			if (r.err)
				printf(",\"skipped\":\"%s\"}", strerror(-r.err));
			else
				printf(",\"arm_ms\":%.3f,\"sync_clean_ms\":%.3f,"
				       "\"sync_clean_ns_per_page\":%.2f,"
				       "\"sync_10pct_ms\":%.3f,"
				       "\"sync_10pct_ns_per_page\":%.2f,"
				       "\"first_write_ns\":%.0f,\"rewrite_ns\":%.0f,"
				       "\"race_writes\":%llu,\"race_pages\":%llu,"
				       "\"race_syncs\":%d,\"race_missed\":%llu}",
				       r.arm_ms, r.clean_ms, r.clean_ms * 1e6 / np,
				       r.dirty_ms, r.dirty_ms * 1e6 / np, r.wr1_ns,
				       r.wr2_ns, (unsigned long long)r.race_writes,
				       (unsigned long long)r.race_pages, r.race_syncs,
				       (unsigned long long)r.race_missed);
		} else if (r.err) {
			printf("%-10s skipped: %s\n", r.name, strerror(-r.err));
		} else {
			printf("%-10s %8.2f %9.3f %9.2f %9.3f %9.2f %8.0f %8.0f %12llu %9d %8llu\n",
			       r.name, r.arm_ms, r.clean_ms, r.clean_ms * 1e6 / np,
			       r.dirty_ms, r.dirty_ms * 1e6 / np, r.wr1_ns, r.wr2_ns,
			       (unsigned long long)r.race_writes, r.race_syncs,
			       (unsigned long long)r.race_missed);
		}
	}
	if (json)
		printf("]\n");
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * The destination's memory is populated before the source connects, so
 * receiving takes no page fault; what the engine's threads fault is in
 * the stats (page_faults). Nothing here is timed.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "session.h"

#define MiB (1ull << 20)
#define RAM (64 * MiB)
#define PAGES (RAM / PRECOPY_PAGE_SIZE)
/*
 * A receiver may still fault on a few pages of its own: the transport's
 * small read buffer and the stack, touched for the first time while
 * receiving. Guest memory that was not populated faults at least once per
 * huge page (RAM / 2 MiB = 32 here) and, on a mapping without huge pages,
 * once per 4 KiB page (16384).
 */
#if defined(__SANITIZE_ADDRESS__)
/* AddressSanitizer checks each access against its shadow (one byte per 8),
 * whose pages are touched for the first time too: one fault per 4 KiB of
 * shadow of the guest memory a thread reads or writes. */
#define FEW_FAULTS (16 + RAM / 8 / 4096)
#else
#define FEW_FAULTS 16
#endif

/* ThreadSanitizer maps its shadow (several bytes per byte of memory) lazily
 * too, and more of it than the guest memory's own pages: under it the
 * count cannot tell populated memory from fresh, so it is printed, not
 * judged (the other builds judge it); the migrations still run for TSan
 * to watch. */
#if defined(__SANITIZE_THREAD__)
#define FAULTS_JUDGED 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FAULTS_JUDGED 0
#endif
#endif
#ifndef FAULTS_JUDGED
#define FAULTS_JUDGED 1
#endif
#define assert_few_faults(n) assert_true(!FAULTS_JUDGED || (n) <= FEW_FAULTS)

static struct pc_guest *make_guest(size_t ram, unsigned zero_pct)
{
	return h_guest_new(&(struct pc_guest_opts){ .ram = ram, .dirty_rate = 0,
						    .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
						    .zero_pct = zero_pct, .seed = 7 });
}

/* Migrate an idle guest (@zero_pct of its pages zero, never touched) to
 * a destination set up by @o; return the destination's stats and, in
 * *@src_st, the source's. */
static void migrate(const struct h_dest_opts *o, unsigned channels, unsigned zero_pct,
		    struct precopy_stats *dst_st, struct precopy_stats *src_st)
{
	struct pc_guest *g = make_guest(RAM, zero_pct);
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;
	size_t len;

	precopy_params_init(&p);
	p.channels = channels;
	assert_int_equal(h_dest_start_opts(&d, RAM, o), 0);
	h_src_go(&s, g, &p, d.uri);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	assert_int_equal(memcmp(pc_guest_ram(g, &len), d.ram, RAM), 0);
	precopy_query(d.s, dst_st);
	precopy_query(s.s, src_st);
	assert_int_equal(dst_st->status, PRECOPY_STATUS_COMPLETED);
	h_free_all(&s, &d, &g);
}

static void populate__tcp_receives_without_faults(void **state)
{
	struct h_dest_opts o = { 0 };
	struct precopy_stats d, s;

	(void)state;
	for (unsigned ch = 1; ch <= 2; ch++) {
		migrate(&o, ch, 10, &d, &s);
		printf("# tcp, %u channel(s): populated %llu bytes, %llu faults while receiving\n",
		       ch, (unsigned long long)d.populated_bytes,
		       (unsigned long long)d.page_faults);
		assert_int_equal(d.populated_bytes, RAM);
		assert_true(d.normal > PAGES / 2); /* pages did arrive */
		assert_few_faults(d.page_faults);
	}
}

/* The counter counts: the same migration without populating faults at
 * least once per huge page of guest memory. */
static void populate__off_faults_are_counted(void **state)
{
	struct h_dest_opts o = { .no_populate = true };
	struct precopy_stats d, s;

	(void)state;
	migrate(&o, 1, 10, &d, &s);
	printf("# tcp, not populated: %llu faults while receiving\n",
	       (unsigned long long)d.page_faults);
	assert_int_equal(d.populated_bytes, 0);
	assert_int_equal(d.populate_ms, 0);
	assert_true(d.page_faults >= RAM / (2 * MiB));
}

/* shm copy mode: the source writes into the destination's memfd; neither
 * end's page-moving threads fault on it (populated here, mapped with its
 * pages there). */
static void populate__shm_copy_mode_without_faults(void **state)
{
	char uri[64];
	struct h_dest_opts o = { .uri = uri, .memfd = true };
	struct precopy_stats d, s;

	(void)state;
	snprintf(uri, sizeof(uri), "shm:/tmp/pc-populate-%d.sock", (int)getpid());
	/* no zero page: the source would fault reading the guest's untouched
	 * memory (the kernel's zero page), which is not what this is about */
	migrate(&o, 1, 0, &d, &s);
	printf("# shm: populated %llu bytes; faults: destination %llu, source senders %llu\n",
	       (unsigned long long)d.populated_bytes, (unsigned long long)d.page_faults,
	       (unsigned long long)s.page_faults);
	assert_int_equal(d.populated_bytes, RAM);
	assert_few_faults(d.page_faults);
	assert_few_faults(s.page_faults);
}

static void populate__parameter(void **state)
{
	struct precopy_session *s;
	uint64_t v = 9;
	void *ram = aligned_alloc(4096, 4096);
	char why[128] = "";

	(void)state;
	assert_non_null(ram);
	assert_int_equal(precopy_param_from_name("populate"), PRECOPY_PARAM_POPULATE);
	assert_int_equal(precopy_new(PRECOPY_ROLE_DEST, NULL, NULL, &s), 0);
	assert_int_equal(precopy_get_param(s, PRECOPY_PARAM_POPULATE, &v), 0);
	assert_int_equal(v, 1); /* on by default */
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_POPULATE, 2), -EINVAL);
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_POPULATE, 0), 0);
	assert_int_equal(precopy_get_param(s, PRECOPY_PARAM_POPULATE, &v), 0);
	assert_int_equal(v, 0);
	assert_true(precopy_add_region(s, ram, 4096, PRECOPY_DIRTY_AUTO) >= 0);
	assert_int_equal(precopy_listen(s, "tcp:127.0.0.1:0"), 0);
	/* listening: populated or not, it is too late to change */
	assert_int_equal(precopy_param_check(s, PRECOPY_PARAM_POPULATE, 1, why, sizeof(why)),
			 -EBUSY);
	assert_non_null(strstr(why, "populate"));
	assert_int_equal(precopy_set_param(s, PRECOPY_PARAM_POPULATE, 1), -EBUSY);
	precopy_delete(&s);
	free(ram);
}

/* The VMA of /proc/self/smaps that starts at @addr: its end in *@end, its
 * VmFlags line in @flags, its AnonHugePages in *@huge_kb. 0 if found. */
static int vma_at(const void *addr, uintptr_t *end, char *flags, size_t flen, long *huge_kb)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	uintptr_t lo, hi;
	bool in = false;
	int rc = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			if (in)
				break;
			in = lo == (uintptr_t)addr;
			if (in) {
				*end = hi;
				rc = 0;
			}
		} else if (in && !strncmp(line, "AnonHugePages:", 14)) {
			*huge_kb = atol(line + 14);
		} else if (in && !strncmp(line, "VmFlags:", 8)) {
			snprintf(flags, flen, "%.200s", line + 8);
		}
	}
	fclose(f);
	return rc;
}

/* The CLI's destination RAM: anonymous, on a 2 MiB boundary so every
 * whole 2 MiB can be a huge page, MADV_HUGEPAGE asked for, exactly @len
 * mapped (the alignment slack given back), freed by munmap. */
static void populate__ram_alloc_huge_aligned(void **state)
{
	const size_t len = 8 * MiB + PRECOPY_PAGE_SIZE; /* not a 2 MiB multiple */
	char flags[256] = "";
	uintptr_t end = 0;
	long huge_kb = -1;
	bool thp = access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
	unsigned char vec;
	void *p = NULL;

	(void)state;
	assert_int_equal(precopy_ram_alloc(0, -1, &p), -EINVAL);
	assert_int_equal(precopy_ram_alloc(PRECOPY_PAGE_SIZE + 1, -1, &p), -EINVAL);
	assert_int_equal(precopy_ram_alloc(len, -1, NULL), -EINVAL);
	assert_true(precopy_ram_alloc(len, 1 << 20, &p) < 0); /* no such node */
	assert_null(p);
	assert_int_equal(precopy_ram_alloc(len, -1, &p), 0);
	assert_non_null(p);
	assert_int_equal((uintptr_t)p % (2 * MiB), 0);
	assert_int_equal(vma_at(p, &end, flags, sizeof(flags), &huge_kb), 0);
	assert_int_equal(end, (uintptr_t)p + len);
	if (thp) /* asked for here, not only by pc_populate() */
		assert_non_null(strstr(flags, " hg"));
	assert_int_equal(pc_populate(p, len, 0), (int64_t)len);
	assert_int_equal(vma_at(p, &end, flags, sizeof(flags), &huge_kb), 0);
	printf("precopy_ram_alloc: %zu bytes at %p, AnonHugePages %ld kB, VmFlags%s", len, p,
	       huge_kb, flags);
	munmap(p, len);
	assert_int_equal(mincore(p, PRECOPY_PAGE_SIZE, &vec), -1);
	assert_int_equal(errno, ENOMEM); /* nothing left mapped */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(populate__parameter),
		cmocka_unit_test(populate__ram_alloc_huge_aligned),
		cmocka_unit_test(populate__tcp_receives_without_faults),
		cmocka_unit_test(populate__off_faults_are_counted),
		cmocka_unit_test(populate__shm_copy_mode_without_faults),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

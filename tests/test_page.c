/* SPDX-License-Identifier: MIT */
/* Zero-page detection and page checksums. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "page.h"
#include "precopy.h"

static _Alignas(64) uint8_t pg[PRECOPY_PAGE_SIZE];

static void is_zero__zero_page(void **state)
{
	uint64_t h;

	(void)state;
	memset(pg, 0, sizeof(pg));
	assert_true(pc_page_is_zero(pg));
	assert_true(pc_page_scan(pg, &h));
	assert_true(h == pc_zero_page_hash());
}

static void is_zero__one_byte_anywhere(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(pg); i++) {
		uint64_t h;

		memset(pg, 0, sizeof(pg));
		pg[i] = 0x80;
		assert_false(pc_page_is_zero(pg));
		assert_false(pc_page_scan(pg, &h));
		assert_true(h != pc_zero_page_hash());
	}
}

/* pg filled with rand() from @seed. Return: its hash. */
static uint64_t fill_random(unsigned seed)
{
	srand(seed);
	for (size_t i = 0; i < sizeof(pg); i++)
		pg[i] = (uint8_t)rand();
	return pc_page_hash(pg);
}

static void hash__every_bit_matters(void **state)
{
	uint64_t base;

	(void)state;
	base = fill_random(7);
	for (size_t bit = 0; bit < sizeof(pg) * 8; bit += 7) {
		pg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		assert_true(pc_page_hash(pg) != base);
		pg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	assert_true(pc_page_hash(pg) == base);
}

static void hash__moved_data_differs(void **state)
{
	uint8_t tmp[64];
	uint64_t base;

	(void)state;
	base = fill_random(11);
	/* swap two different 64-byte blocks: same words, other places */
	assert_memory_not_equal(pg, pg + 1024, 64);
	memcpy(tmp, pg, 64);
	memcpy(pg, pg + 1024, 64);
	memcpy(pg + 1024, tmp, 64);
	assert_true(pc_page_hash(pg) != base);
}

static void combine__order_and_length_matter(void **state)
{
	uint64_t a[3] = { 1, 2, 3 }, b[3] = { 2, 1, 3 };

	(void)state;
	assert_true(pc_hash_combine(a, 3) != pc_hash_combine(b, 3));
	assert_true(pc_hash_combine(a, 3) != pc_hash_combine(a, 2));
	assert_true(pc_hash_combine(a, 3) == pc_hash_combine(a, 3));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(is_zero__zero_page),
		cmocka_unit_test(is_zero__one_byte_anywhere),
		cmocka_unit_test(hash__every_bit_matters),
		cmocka_unit_test(hash__moved_data_differs),
		cmocka_unit_test(combine__order_and_length_matter),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

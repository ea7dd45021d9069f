/* SPDX-License-Identifier: MIT */
/* Wire records: round trips and every malformed case the decoder refuses. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "le.h"
#include "wire.h"

static uint8_t buf[PC_WIRE_MSG_MAX];
static char why[160];

static int decode(size_t len, struct pc_wire_msg *m)
{
	why[0] = '\0';
	return pc_wire_decode(buf, len, m, why, sizeof(why));
}

static void hello__round_trip(void **state)
{
	uint64_t lens[2] = { 1 << 20, 1 << 30 };
	struct pc_wire_msg m;
	int n = pc_wire_enc_hello(buf, sizeof(buf), PC_CAP_ALL, 2, lens, 3);

	(void)state;
	assert_int_equal(n, PC_WIRE_HDR + 32 + 16);
	assert_int_equal(decode((size_t)n, &m), 0);
	assert_int_equal(m.type, PC_MSG_HELLO);
	assert_int_equal(m.u.hello.nregions, 2);
	assert_int_equal(m.u.hello.channels, 3);
	assert_int_equal(m.u.hello.page_size, 4096);
	assert_true(m.u.hello.caps == PC_CAP_ALL);
	assert_true(m.u.hello.region_len[1] == 1ull << 30);
}

/* A good HELLO of one 4 KiB region into buf. Return: its length. */
static int hello_one_page(void)
{
	uint64_t len = 4096;

	return pc_wire_enc_hello(buf, sizeof(buf), PC_CAP_ALL, 1, &len, 1);
}

/* The @n bytes in buf do not decode (-EPROTO), and the reason says @word. */
static void refused_saying(int n, const char *word)
{
	struct pc_wire_msg m;

	assert_int_equal(decode((size_t)n, &m), -EPROTO);
	assert_non_null(strstr(why, word));
}

static void hello__bad_magic(void **state)
{
	int n = hello_one_page();

	(void)state;
	buf[PC_WIRE_HDR] ^= 0xff;
	refused_saying(n, "magic");
}

static void hello__bad_version(void **state)
{
	int n = hello_one_page();

	(void)state;
	pc_put_le16(buf + PC_WIRE_HDR + 4, PC_WIRE_MAJOR + 1);
	refused_saying(n, "version");
}

static void hello__region_count_out_of_range(void **state)
{
	struct pc_wire_msg m;
	int n = hello_one_page();

	(void)state;
	pc_put_le32(buf + PC_WIRE_HDR + 20, 0);
	assert_int_equal(decode((size_t)n, &m), -EPROTO);
	pc_put_le32(buf + PC_WIRE_HDR + 20, PRECOPY_MAX_REGIONS + 1);
	assert_int_equal(decode((size_t)n, &m), -EPROTO);
	pc_put_le32(buf + PC_WIRE_HDR + 20, 2); /* says 2, carries 1 */
	assert_int_equal(decode((size_t)n, &m), -EPROTO);
}

static void decode__truncated(void **state)
{
	struct pc_wire_msg m;
	int n = hello_one_page();

	(void)state;
	for (int cut = 0; cut < n; cut++)
		assert_int_equal(decode((size_t)cut, &m), -EPROTO);
	assert_int_equal(decode((size_t)n, &m), 0);
}

static void decode__length_past_record(void **state)
{
	int n = pc_wire_enc_iter_ack(buf, sizeof(buf), 7);

	(void)state;
	pc_put_le32(buf + 4, 1000); /* claims more than received */
	refused_saying(n, "received");
}

static void decode__unknown_type(void **state)
{
	struct pc_wire_msg m;
	int n = pc_wire_enc_iter_ack(buf, sizeof(buf), 7);

	(void)state;
	pc_put_le16(buf, 0);
	assert_int_equal(decode((size_t)n, &m), -EPROTO);
	pc_put_le16(buf, PC_MSG_TYPE_MAX + 1);
	refused_saying(n, "unknown");
}

static void decode__reserved_bits(void **state)
{
	struct pc_wire_msg m;
	int n = pc_wire_enc_iter_ack(buf, sizeof(buf), 7);

	(void)state;
	buf[2] = 1;
	assert_int_equal(decode((size_t)n, &m), -EPROTO);
}

static size_t make_runs(uint32_t count, uint32_t kind)
{
	struct pc_wire_run r = { .region = 0, .kind = kind, .first_page = 5, .npages = 2 };

	pc_wire_enc_runs_hdr(buf, sizeof(buf), 3);
	for (uint32_t i = 0; i < count; i++)
		pc_wire_put_run(buf, i, &r);
	return pc_wire_finish_runs(buf, count);
}

static void runs__round_trip(void **state)
{
	struct pc_wire_msg m;
	struct pc_wire_run r;
	size_t n = make_runs(PC_WIRE_RUNS_MAX, PC_RUN_ZERO);

	(void)state;
	assert_int_equal(decode(n, &m), 0);
	assert_int_equal(m.u.runs.iteration, 3);
	assert_int_equal(m.u.runs.count, PC_WIRE_RUNS_MAX);
	pc_wire_get_run(m.u.runs.entries, PC_WIRE_RUNS_MAX - 1, &r);
	assert_int_equal(r.kind, PC_RUN_ZERO);
	assert_true(r.first_page == 5 && r.npages == 2);
}

static void runs__malformed(void **state)
{
	struct pc_wire_msg m;
	size_t n;

	(void)state;
	n = make_runs(1, 9); /* unknown kind */
	assert_int_equal(decode(n, &m), -EPROTO);
	n = make_runs(1, PC_RUN_DATA);
	pc_put_le64(buf + PC_WIRE_HDR + 8 + 16, 0); /* no pages */
	assert_int_equal(decode(n, &m), -EPROTO);
	n = make_runs(2, PC_RUN_DATA);
	pc_put_le32(buf + PC_WIRE_HDR + 4, 3); /* count disagrees with length */
	assert_int_equal(decode(n, &m), -EPROTO);
	pc_put_le32(buf + PC_WIRE_HDR + 4, 0);
	assert_int_equal(decode(n, &m), -EPROTO);
}

static void devstate__bounds(void **state)
{
	struct pc_wire_msg m;
	uint8_t data[16] = { 1, 2, 3 };
	int n;

	(void)state;
	n = pc_wire_enc_devstate_hdr(buf, sizeof(buf), 100, 84, 16);
	assert_int_equal(n, PC_WIRE_HDR + 24);
	memcpy(buf + n, data, sizeof(data));
	assert_int_equal(decode((size_t)n + 16, &m), 0);
	assert_true(m.u.devstate.offset == 84 && m.u.devstate.len == 16);
	assert_memory_equal(m.u.devstate.data, data, 16);
	/* a piece past the end of the blob */
	pc_put_le64(buf + PC_WIRE_HDR + 8, 90);
	assert_int_equal(decode((size_t)n + 16, &m), -EPROTO);
	/* a blob over the limit */
	pc_put_le64(buf + PC_WIRE_HDR + 8, 0);
	pc_put_le64(buf + PC_WIRE_HDR, PC_WIRE_DEVSTATE_MAX + 1);
	assert_int_equal(decode((size_t)n + 16, &m), -EPROTO);
	/* the encoder refuses the same */
	assert_int_equal(pc_wire_enc_devstate_hdr(buf, sizeof(buf), 10, 5, 6), -EINVAL);
}

static void complete__round_trip_and_truncation(void **state)
{
	uint64_t np[2] = { 10, 20 }, h[2] = { 0x1234, 0xabcdef };
	struct pc_wire_msg m;
	int n = pc_wire_enc_complete(buf, sizeof(buf), 2, np, h);

	(void)state;
	assert_int_equal(decode((size_t)n, &m), 0);
	assert_true(m.u.complete.hash[1] == 0xabcdef && m.u.complete.npages[0] == 10);
	pc_put_le32(buf + 4, (uint32_t)(n - PC_WIRE_HDR - 16));
	assert_int_equal(decode((size_t)n - 16, &m), -EPROTO);
}

static void result__text_is_sanitised(void **state)
{
	struct pc_wire_msg m;
	int n = pc_wire_enc_result(buf, sizeof(buf), PC_MSG_ERROR, -EIO, "bad\x01thing");

	(void)state;
	assert_int_equal(decode((size_t)n, &m), 0);
	assert_int_equal(m.type, PC_MSG_ERROR);
	assert_int_equal(m.u.result.status, -EIO);
	assert_string_equal(m.u.result.text, "bad?thing");
	pc_put_le32(buf + PC_WIRE_HDR, 5); /* positive status */
	assert_int_equal(decode((size_t)n, &m), -EPROTO);
}

static void encode__no_room(void **state)
{
	uint64_t len = 4096;

	(void)state;
	assert_int_equal(pc_wire_enc_hello(buf, 10, PC_CAP_ALL, 1, &len, 1), -ENOSPC);
	assert_int_equal(pc_wire_enc_hello(buf, sizeof(buf), PC_CAP_ALL, 0, &len, 1), -EINVAL);
	assert_int_equal(pc_wire_enc_hello(buf, sizeof(buf), PC_CAP_ALL, 1, &len, 0), -EINVAL);
}

/* POSTCOPY: ranges of kind 0, the last-record flag; REQUEST; PAGE with
 * its checksum and the page after it. */
static void postcopy__round_trip(void **state)
{
	struct pc_wire_msg m;
	struct pc_wire_run r;
	size_t len;
	int n;

	(void)state;
	assert_int_equal(pc_wire_enc_postcopy_hdr(buf, sizeof(buf)), PC_WIRE_HDR + 8);
	pc_wire_put_run(buf, 0, &(struct pc_wire_run){ 1, 0, 5, 7 });
	pc_wire_put_run(buf, 1, &(struct pc_wire_run){ 0, 0, 100, 1 });
	len = pc_wire_finish_postcopy(buf, 2, PC_WIRE_POSTCOPY_LAST);
	assert_int_equal(len, PC_WIRE_HDR + 8 + 2 * PC_WIRE_RUN_SIZE);
	assert_int_equal(decode(len, &m), 0);
	assert_int_equal(m.type, PC_MSG_POSTCOPY);
	assert_int_equal(m.u.postcopy.count, 2);
	assert_int_equal(m.u.postcopy.flags, PC_WIRE_POSTCOPY_LAST);
	pc_wire_get_run(m.u.postcopy.entries, 0, &r);
	assert_true(r.region == 1 && r.first_page == 5 && r.npages == 7);
	/* an empty one ends the list too */
	pc_wire_enc_postcopy_hdr(buf, sizeof(buf));
	assert_int_equal(decode(pc_wire_finish_postcopy(buf, 0, PC_WIRE_POSTCOPY_LAST), &m), 0);
	assert_int_equal(m.u.postcopy.count, 0);

	n = pc_wire_enc_request(buf, sizeof(buf), 2, 123456789);
	assert_int_equal(decode((size_t)n, &m), 0);
	assert_int_equal(m.type, PC_MSG_REQUEST);
	assert_true(m.u.page.region == 2 && m.u.page.page == 123456789);

	n = pc_wire_enc_page_hdr(buf, sizeof(buf), 1, 42, 0x1122334455667788ull,
				 PC_WIRE_PAGE_REQUESTED);
	assert_int_equal(n, PC_WIRE_HDR + 24);
	memset(buf + n, 0xab, 4096);
	assert_int_equal(decode(PC_WIRE_PAGE_LEN, &m), 0);
	assert_int_equal(m.type, PC_MSG_PAGE);
	assert_true(m.u.page.region == 1 && m.u.page.page == 42);
	assert_true(m.u.page.hash == 0x1122334455667788ull);
	assert_int_equal(m.u.page.flags, PC_WIRE_PAGE_REQUESTED);
	assert_ptr_equal(m.u.page.data, buf + n);
	assert_int_equal(pc_wire_enc_page_hdr(buf, sizeof(buf), 1, 42, 0, 2), -EINVAL);
}

static void postcopy__malformed(void **state)
{
	struct pc_wire_msg m;
	size_t len;
	int n;

	(void)state;
	/* a range with a kind, or of no pages */
	pc_wire_enc_postcopy_hdr(buf, sizeof(buf));
	pc_wire_put_run(buf, 0, &(struct pc_wire_run){ 0, PC_RUN_DATA, 0, 1 });
	assert_int_equal(decode(pc_wire_finish_postcopy(buf, 1, 0), &m), -EPROTO);
	pc_wire_put_run(buf, 0, &(struct pc_wire_run){ 0, 0, 0, 0 });
	assert_int_equal(decode(pc_wire_finish_postcopy(buf, 1, 0), &m), -EPROTO);
	/* unknown flags; a count the length does not hold */
	pc_wire_put_run(buf, 0, &(struct pc_wire_run){ 0, 0, 0, 1 });
	len = pc_wire_finish_postcopy(buf, 1, 2);
	assert_int_equal(decode(len, &m), -EPROTO);
	assert_non_null(strstr(why, "flags"));
	len = pc_wire_finish_postcopy(buf, 1, 0);
	pc_put_le32(buf + PC_WIRE_HDR, 2);
	assert_int_equal(decode(len, &m), -EPROTO);
	/* REQUEST: flags, a region out of range, a wrong length */
	n = pc_wire_enc_request(buf, sizeof(buf), 0, 1);
	pc_put_le32(buf + PC_WIRE_HDR + 4, 1);
	assert_int_equal(decode((size_t)n, &m), -EPROTO);
	n = pc_wire_enc_request(buf, sizeof(buf), PRECOPY_MAX_REGIONS, 1);
	assert_int_equal(decode((size_t)n, &m), -EPROTO);
	pc_put_le32(buf + 4, 24);
	assert_int_equal(decode((size_t)n + 8, &m), -EPROTO);
	/* PAGE: a page short */
	n = pc_wire_enc_page_hdr(buf, sizeof(buf), 0, 1, 0, 0);
	pc_put_le32(buf + 4, 24 + 4095);
	assert_int_equal(decode(PC_WIRE_PAGE_LEN - 1, &m), -EPROTO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(hello__round_trip),
		cmocka_unit_test(hello__bad_magic),
		cmocka_unit_test(hello__bad_version),
		cmocka_unit_test(hello__region_count_out_of_range),
		cmocka_unit_test(decode__truncated),
		cmocka_unit_test(decode__length_past_record),
		cmocka_unit_test(decode__unknown_type),
		cmocka_unit_test(decode__reserved_bits),
		cmocka_unit_test(runs__round_trip),
		cmocka_unit_test(runs__malformed),
		cmocka_unit_test(devstate__bounds),
		cmocka_unit_test(complete__round_trip_and_truncation),
		cmocka_unit_test(result__text_is_sanitised),
		cmocka_unit_test(encode__no_room),
		cmocka_unit_test(postcopy__round_trip),
		cmocka_unit_test(postcopy__malformed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * A destination fed malformed streams over a raw TCP socket: each is
 * refused with a clear error, nothing is reported as success, the guest is
 * never resumed, and nothing is written outside the registered region.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "le.h"
#include "stream.h"
#include "wire.h"

#define RAM (1u << 20)

static void put(int fd, const void *p, size_t n)
{
	assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

static void tcp_hello(int fd)
{
	uint8_t h[32] = { 0 };

	pc_put_le32(h, 0x31544350u); /* "PCT1" */
	h[4] = 1;                    /* version */
	h[6] = 0;                    /* channel 0 */
	h[8] = 1;                    /* of 1 */
	pc_put_le64(h + 12, 0x1234);
	put(fd, h, sizeof(h));
}

static void frame(int fd, uint32_t kind, uint32_t region, uint64_t off, const void *p,
		  uint64_t n)
{
	uint8_t h[PC_FRAME_HDR];

	pc_put_le32(h, kind);
	pc_put_le32(h + 4, region);
	pc_put_le64(h + 8, off);
	pc_put_le64(h + 16, n);
	put(fd, h, sizeof(h));
	if (p && n)
		put(fd, p, (size_t)n);
}

static void msg(int fd, const uint8_t *rec, int n)
{
	assert_true(n > 0);
	frame(fd, PC_FRAME_MSG, 0, 0, rec, (uint64_t)n);
}

static void engine_hello(int fd)
{
	uint8_t rec[256];
	uint64_t len = RAM;

	msg(fd, rec, pc_wire_enc_hello(rec, sizeof(rec), PC_CAP_ALL, 1, &len, 1));
}

/*
 * Run @feed against a fresh destination; expect failure mentioning @text,
 * the guest resumed @resumed times (a postcopy feed hands it over first).
 * Bytes from @from on are never written: every length is checked before
 * a byte is (below @from, pages a postcopy feed listed missing, dropped:
 * not read, since a page that stays missing would be waited for).
 */
static void expect_refused_from(void (*feed)(int fd), const char *text, unsigned resumed,
				size_t from)
{
	struct h_dest d;
	char err[PRECOPY_ERRMSG_MAX];
	uint8_t *canary;
	int fd;

	assert_int_equal(h_dest_start(&d, RAM), 0);
	canary = (uint8_t *)d.ram;
	memset(canary, 0x77, RAM);
	fd = h_raw_connect(d.uri);
	tcp_hello(fd);
	feed(fd);
	shutdown(fd, SHUT_WR);
	assert_true(h_dest_join(&d) < 0);
	close(fd);
	precopy_strerror(d.s, err, sizeof(err));
	if (!strstr(err, text))
		fail_msg("error '%s' does not mention '%s'", err, text);
	assert_int_equal(d.resumed, resumed);
	for (size_t i = from; i < RAM; i++)
		if (canary[i] != 0x77)
			fail_msg("byte %zu of the destination's memory changed to %#x", i,
				 canary[i]);
	h_expect_status(d.s, PRECOPY_STATUS_FAILED);
	h_dest_free(&d);
}

static void expect_refused(void (*feed)(int fd), const char *text)
{
	expect_refused_from(feed, text, 0, 0);
}

static void feed_bad_magic(int fd)
{
	uint8_t rec[256];
	uint64_t len = RAM;
	int n = pc_wire_enc_hello(rec, sizeof(rec), PC_CAP_ALL, 1, &len, 1);

	rec[PC_WIRE_HDR] = 'X';
	msg(fd, rec, n);
}

static void feed_bad_version(int fd)
{
	uint8_t rec[256];
	uint64_t len = RAM;
	int n = pc_wire_enc_hello(rec, sizeof(rec), PC_CAP_ALL, 1, &len, 1);

	pc_put_le16(rec + PC_WIRE_HDR + 4, 99);
	msg(fd, rec, n);
}

static void feed_page_unregistered_region(int fd)
{
	static uint8_t page[4096];

	engine_hello(fd);
	frame(fd, PC_FRAME_PAGES, 3, 0, page, sizeof(page));
}

static void feed_page_past_region_end(int fd)
{
	static uint8_t page[8192];

	engine_hello(fd);
	frame(fd, PC_FRAME_PAGES, 0, RAM - 4096, page, sizeof(page));
}

static void feed_unknown_frame(int fd)
{
	engine_hello(fd);
	frame(fd, 0xdeadbeef, 0, 0, NULL, 0);
}

static void feed_unknown_record(int fd)
{
	uint8_t rec[16];

	engine_hello(fd);
	pc_wire_enc_iter_ack(rec, sizeof(rec), 0);
	pc_put_le16(rec, 77);
	msg(fd, rec, PC_WIRE_HDR + 4);
}

static void feed_run_outside_region(int fd)
{
	static uint8_t rec[PC_WIRE_MSG_MAX];
	struct pc_wire_run r = { 0, PC_RUN_ZERO, RAM / 4096 - 1, 2 };

	engine_hello(fd);
	pc_wire_enc_runs_hdr(rec, sizeof(rec), 0);
	pc_wire_put_run(rec, 0, &r);
	msg(fd, rec, (int)pc_wire_finish_runs(rec, 1));
}

static void feed_truncated(int fd)
{
	uint8_t part[10] = { 0 };

	engine_hello(fd);
	frame(fd, PC_FRAME_MSG, 0, 0, NULL, 100); /* announces 100 bytes */
	put(fd, part, sizeof(part));               /* sends 10, then EOF */
}

static void feed_complete_without_pages(int fd)
{
	uint8_t rec[256];
	uint64_t np = RAM / 4096, h = 0;

	engine_hello(fd);
	msg(fd, rec, pc_wire_enc_iter_end(rec, sizeof(rec), 0, 0)); /* an empty pass */
	msg(fd, rec, pc_wire_enc_complete(rec, sizeof(rec), 1, &np, &h));
}

static void feed_oversized_message(int fd)
{
	engine_hello(fd);
	frame(fd, PC_FRAME_MSG, 0, 0, NULL, 1ull << 40);
}

/* --- postcopy: a source that agreed on it, then breaks its rules ------- */

#define PC_PAGES 4 /* pages 0..3 missing */

/* HELLO with postcopy, an empty pass, and POSTCOPY listing @n ranges of
 * @r, the last of them if @last. */
static void postcopy_start(int fd, const struct pc_wire_run *r, uint32_t n, bool last)
{
	static uint8_t rec[PC_WIRE_MSG_MAX];
	uint64_t len = RAM;

	struct pc_guest_desc desc = { .magic = PC_GUEST_MAGIC, .npages = RAM / 4096 };
	int h;

	msg(fd, rec, pc_wire_enc_hello(rec, sizeof(rec), PC_CAP_ALL | PC_CAP_POSTCOPY, 1, &len, 1));
	msg(fd, rec, pc_wire_enc_iter_end(rec, sizeof(rec), 0, 0));
	/* device state the destination's hook takes: a guest descriptor */
	h = pc_wire_enc_devstate_hdr(rec, sizeof(rec), sizeof(desc), 0, sizeof(desc));
	memcpy(rec + h, &desc, sizeof(desc));
	msg(fd, rec, h + (int)sizeof(desc));
	pc_wire_enc_postcopy_hdr(rec, sizeof(rec));
	for (uint32_t i = 0; i < n; i++)
		pc_wire_put_run(rec, i, &r[i]);
	msg(fd, rec, (int)pc_wire_finish_postcopy(rec, n, last ? PC_WIRE_POSTCOPY_LAST : 0));
}

/* ... then GO: the guest runs at the destination, pages 0..3 missing. */
static void postcopy_go(int fd)
{
	uint8_t rec[16];

	postcopy_start(fd, &(struct pc_wire_run){ 0, 0, 0, PC_PAGES }, 1, true);
	msg(fd, rec, pc_wire_enc_go(rec, sizeof(rec)));
}

/* A PAGE for @page whose checksum is @hash (contents 0x55). */
static void postcopy_page(int fd, uint64_t page, uint64_t hash)
{
	static uint8_t rec[PC_WIRE_PAGE_LEN];
	int n = pc_wire_enc_page_hdr(rec, sizeof(rec), 0, page, hash, 0);

	memset(rec + n, 0x55, PRECOPY_PAGE_SIZE);
	msg(fd, rec, PC_WIRE_PAGE_LEN);
}

static void feed_postcopy_page_twice(int fd)
{
	const struct pc_wire_run r[2] = { { 0, 0, 0, 4 }, { 0, 0, 3, 1 } };

	postcopy_start(fd, r, 2, true);
}

static void feed_postcopy_runs_among(int fd)
{
	static uint8_t rec[PC_WIRE_MSG_MAX];

	postcopy_start(fd, &(struct pc_wire_run){ 0, 0, 0, 1 }, 1, false);
	pc_wire_enc_runs_hdr(rec, sizeof(rec), 1);
	pc_wire_put_run(rec, 0, &(struct pc_wire_run){ 0, PC_RUN_ZERO, 5, 1 });
	msg(fd, rec, (int)pc_wire_finish_runs(rec, 1));
}

static void feed_postcopy_without_capability(int fd)
{
	uint8_t rec[64];

	engine_hello(fd);
	msg(fd, rec, pc_wire_enc_iter_end(rec, sizeof(rec), 0, 0));
	pc_wire_enc_postcopy_hdr(rec, PC_WIRE_MSG_MAX); /* (header only: 16 bytes) */
	msg(fd, rec, (int)pc_wire_finish_postcopy(rec, 0, PC_WIRE_POSTCOPY_LAST));
}

static void feed_postcopy_bad_checksum(int fd)
{
	postcopy_go(fd);
	postcopy_page(fd, 1, 0x1234); /* not the hash of 4096 bytes of 0x55 */
}

static void feed_postcopy_page_not_missing(int fd)
{
	postcopy_go(fd);
	postcopy_page(fd, PC_PAGES + 2, 0);
}

static void feed_postcopy_complete_early(int fd)
{
	uint8_t rec[64];
	uint64_t np = RAM / 4096, h = 0;

	postcopy_go(fd);
	msg(fd, rec, pc_wire_enc_complete(rec, sizeof(rec), 1, &np, &h));
}

/* A postcopy feed: the pages it listed missing are not checked. */
static void expect_postcopy_refused(void (*feed)(int fd), const char *text, bool resumed)
{
	expect_refused_from(feed, text, resumed ? 1 : 0, PC_PAGES * PRECOPY_PAGE_SIZE);
}

H_CASE(postcopy__page_listed_twice,
       expect_postcopy_refused(feed_postcopy_page_twice, "twice", false))
H_CASE(postcopy__runs_among_postcopy,
       expect_postcopy_refused(feed_postcopy_runs_among, "among the POSTCOPY", false))
H_CASE(postcopy__without_capability,
       expect_postcopy_refused(feed_postcopy_without_capability, "unexpected POSTCOPY", false))
H_CASE(postcopy__page_checksum_mismatch,
       expect_postcopy_refused(feed_postcopy_bad_checksum, "does not match its checksum", true))
H_CASE(postcopy__page_not_missing,
       expect_postcopy_refused(feed_postcopy_page_not_missing, "not a missing page", true))
H_CASE(postcopy__complete_with_pages_missing,
       expect_postcopy_refused(feed_postcopy_complete_early, "still missing", true))

H_CASE(incoming__bad_magic, expect_refused(feed_bad_magic, "magic"))
H_CASE(incoming__bad_version, expect_refused(feed_bad_version, "version"))
H_CASE(incoming__page_for_unregistered_region,
       expect_refused(feed_page_unregistered_region, "not registered"))
H_CASE(incoming__page_past_region_end, expect_refused(feed_page_past_region_end, "outside region"))
H_CASE(incoming__unknown_frame_kind, expect_refused(feed_unknown_frame, "unknown frame"))
H_CASE(incoming__unknown_record_type, expect_refused(feed_unknown_record, "unknown record"))
H_CASE(incoming__run_outside_region, expect_refused(feed_run_outside_region, "outside region"))
H_CASE(incoming__truncated_stream, expect_refused(feed_truncated, "closed"))
H_CASE(incoming__complete_without_pages,
       expect_refused(feed_complete_without_pages, "checksum mismatch"))
H_CASE(incoming__oversized_message, expect_refused(feed_oversized_message, "malformed"))

/* A connection that is not precopy at all is dropped; the destination
 * keeps waiting for a real source, and cancel ends the wait. */
static void incoming__stranger_dropped(void **state)
{
	struct h_dest d;
	char junk[64] = "GET / HTTP/1.0\r\n\r\n", c;
	int fd;

	(void)state;
	assert_int_equal(h_dest_start(&d, RAM), 0);
	fd = h_raw_connect(d.uri);
	put(fd, junk, sizeof(junk));
	assert_true(recv(fd, &c, 1, 0) <= 0); /* closed on us */
	close(fd);
	assert_int_equal(precopy_cancel(d.s), 0);
	assert_int_equal(h_dest_join(&d), -ECANCELED);
	assert_int_equal(d.resumed, 0);
	h_dest_free(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(incoming__bad_magic),
		cmocka_unit_test(incoming__bad_version),
		cmocka_unit_test(incoming__page_for_unregistered_region),
		cmocka_unit_test(incoming__page_past_region_end),
		cmocka_unit_test(incoming__unknown_frame_kind),
		cmocka_unit_test(incoming__unknown_record_type),
		cmocka_unit_test(incoming__run_outside_region),
		cmocka_unit_test(incoming__truncated_stream),
		cmocka_unit_test(incoming__complete_without_pages),
		cmocka_unit_test(incoming__oversized_message),
		cmocka_unit_test(incoming__stranger_dropped),
		cmocka_unit_test(postcopy__page_listed_twice),
		cmocka_unit_test(postcopy__runs_among_postcopy),
		cmocka_unit_test(postcopy__without_capability),
		cmocka_unit_test(postcopy__page_checksum_mismatch),
		cmocka_unit_test(postcopy__page_not_missing),
		cmocka_unit_test(postcopy__complete_with_pages_missing),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * A hostile source against a real destination (precopy_incoming()), over
 * several channels of a real transport:
 *
 *   test_fence tcp
 *   test_fence shm SOCKET-PATH-PREFIX
 *   test_fence rdma ADDR          (exits 77 when RDMA is not built)
 *
 * The source is hand-written from docs/PROTOCOL.md on top of the transport
 * API alone (connect, write_pages, send_msg, recv_msg) and the record
 * encoders, so it can send what precopy's own source never would: records
 * on channel 1 after the verdict, a page run after the page's checksum,
 * a RUNS record that lists the whole region 1024 times, ITER_ENDs of one
 * channel for passes the others have not finished. Every case first shows
 * that the same source, behaving, migrates with success.
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
#include "page.h"
#include "precopy.h"
#include "transport.h"
#include "wire.h"

#define RAM (2u << 20)            /* 512 pages: two chunks of 256 */
#define NPAGES (RAM / PRECOPY_PAGE_SIZE)
#define CHUNK 256                 /* pages a channel owns in a row */
#define NCHAN 2

static const char *scheme;
static char uri_listen[160];
static unsigned seq;
static bool cpu_places;           /* the destination's CPU places page runs */

struct hostile {
	struct h_dest d;
	struct pc_transport *tp;
	uint8_t *ram;              /* what the source sends */
	uint64_t hash[NPAGES];     /* what it says the destination holds */
	uint8_t buf[PC_WIRE_MSG_MAX];
};

static const char *listen_uri(void)
{
	static char u[200];

	if (!strcmp(scheme, "shm"))
		snprintf(u, sizeof(u), "%s%u.sock", uri_listen, seq++);
	else
		snprintf(u, sizeof(u), "%s", uri_listen);
	return u;
}

static void hs_send(struct hostile *h, unsigned chan, int n)
{
	struct iovec v = { h->buf, (size_t)n };

	assert_true(n > 0);
	assert_int_equal(pc_tp_send_msg(h->tp, chan, &v, 1), 0);
}

/* The next record on channel 0, which must be of @type. */
static void hs_expect(struct hostile *h, unsigned type, struct pc_wire_msg *m)
{
	char why[160];
	size_t len;

	assert_int_equal(pc_tp_recv_msg(h->tp, 0, h->buf, sizeof(h->buf), &len), 0);
	assert_int_equal(pc_wire_decode(h->buf, len, m, why, sizeof(why)), 0);
	if (m->type != type)
		fail_msg("expected %s, got %s", pc_wire_type_name(type), pc_wire_type_name(m->type));
}

/* Listen, connect NCHAN channels, HELLO and its ack. */
static void hs_start(struct hostile *h)
{
	const struct pc_transport_ops *ops;
	const char *rest;
	struct pc_transport_opts o = { .channels = NCHAN, .timeout_ms = 20000 };
	uint64_t len = RAM;
	struct pc_wire_msg m;

	memset(h->hash, 0, sizeof(h->hash));
	assert_int_equal(h_dest_start_uri(&h->d, RAM, listen_uri(), false), 0);
	h->ram = mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(h->ram != MAP_FAILED);
	for (size_t i = 0; i < RAM; i++)
		h->ram[i] = (uint8_t)(i * 7 + i / 4096 + 1);
	for (unsigned p = 0; p < NPAGES; p++)
		h->hash[p] = pc_page_hash(h->ram + (size_t)p * PRECOPY_PAGE_SIZE);
	assert_int_equal(pc_transport_split_uri(h->d.uri, &ops, &rest), 0);
	assert_int_equal(ops->connect(rest, &o, &h->tp), 0);
	if (h->tp->ops->caps & PC_TCAP_NEEDS_REG)
		assert_int_equal(h->tp->ops->reg_local(h->tp, h->ram, RAM), 0);
	hs_send(h, 0, pc_wire_enc_hello(h->buf, sizeof(h->buf), PC_CAP_ALL, 1, &len, NCHAN));
	hs_expect(h, PC_MSG_HELLO_ACK, &m);
	assert_int_equal(m.u.hello_ack.status, 0);
}

/* Page runs of [@first, +@n) on @chan, then a RUNS record of @kind. */
static void hs_pages(struct hostile *h, unsigned chan, uint32_t pass, uint64_t first,
		     uint64_t n, uint32_t kind)
{
	struct pc_wire_run r = { 0, kind, first, n };
	struct pc_page_run pr = { h->ram + first * PRECOPY_PAGE_SIZE, 0,
				  first * PRECOPY_PAGE_SIZE, n * PRECOPY_PAGE_SIZE };

	if (kind == PC_RUN_DATA)
		assert_int_equal(pc_tp_write_pages(h->tp, chan, &pr, 1), 0);
	pc_wire_enc_runs_hdr(h->buf, sizeof(h->buf), pass);
	pc_wire_put_run(h->buf, 0, &r);
	hs_send(h, chan, (int)pc_wire_finish_runs(h->buf, 1));
}

/* As hs_send, for a destination that may have given up already. */
static void hs_send_try(struct hostile *h, unsigned chan, int n)
{
	struct iovec v = { h->buf, (size_t)n };

	(void)pc_tp_send_msg(h->tp, chan, &v, 1);
}

static void hs_iter_end(struct hostile *h, unsigned chan, uint32_t pass)
{
	hs_send(h, chan, pc_wire_enc_iter_end(h->buf, sizeof(h->buf), pass, chan));
}

/* Pass 0 as the protocol wants it: each channel its own chunk. */
static void hs_bulk(struct hostile *h)
{
	struct pc_wire_msg m;

	for (unsigned c = 0; c < NCHAN; c++) {
		hs_pages(h, c, 0, (uint64_t)c * CHUNK, CHUNK, PC_RUN_DATA);
		hs_iter_end(h, c, 0);
	}
	hs_expect(h, PC_MSG_ITER_ACK, &m);
	assert_int_equal(m.u.iter_ack.iteration, 0);
}

/* COMPLETE with the checksums of what was sent; returns the verdict. */
static int hs_complete(struct hostile *h)
{
	uint64_t npages = NPAGES, sum = pc_hash_combine(h->hash, NPAGES);
	struct pc_guest_desc desc;
	struct pc_wire_msg m;
	struct iovec v[2];

	/* device state: what the harness's load_device_state takes (a
	 * guest's descriptor; nothing checks the memory against it) */
	memset(&desc, 0, sizeof(desc));
	desc.magic = PC_GUEST_MAGIC;
	v[0].iov_base = h->buf;
	v[0].iov_len = (size_t)pc_wire_enc_devstate_hdr(h->buf, sizeof(h->buf), sizeof(desc), 0,
							 sizeof(desc));
	v[1].iov_base = &desc;
	v[1].iov_len = sizeof(desc);
	assert_int_equal(pc_tp_send_msg(h->tp, 0, v, 2), 0);
	hs_send(h, 0, pc_wire_enc_complete(h->buf, sizeof(h->buf), 1, &npages, &sum));
	hs_expect(h, PC_MSG_RESULT, &m);
	return m.u.result.status;
}

static void hs_go(struct hostile *h)
{
	struct pc_wire_msg m;

	hs_send(h, 0, pc_wire_enc_go(h->buf, sizeof(h->buf)));
	hs_expect(h, PC_MSG_RESULT, &m);
	assert_int_equal(m.u.result.status, 0);
}

/* A hostile source connected to a fresh destination. */
static struct hostile *hs_new(void)
{
	struct hostile *h = calloc(1, sizeof(*h));

	assert_non_null(h);
	hs_start(h);
	return h;
}

static void hs_end(struct hostile *h)
{
	pc_tp_close(h->tp);
	h->tp = NULL;
	h_dest_free(&h->d);
	munmap(h->ram, RAM);
	free(h);
}

/* Waits for the destination's verdict; returns it and its text. */
static int hs_dest_result(struct hostile *h, char *why, size_t len)
{
	int rc = h_dest_join(&h->d);

	why[0] = '\0';
	if (rc)
		precopy_strerror(h->d.s, why, len);
	return rc;
}

/* GO: the destination succeeds and holds what the source sent. */
static void hs_go_ok(struct hostile *h)
{
	char why[PRECOPY_ERRMSG_MAX];

	hs_go(h);
	assert_int_equal(hs_dest_result(h, why, sizeof(why)), 0);
	/* precopy_incoming() has returned: nothing can land any more */
	assert_memory_equal(h->d.ram, h->ram, RAM);
}

/* A run of one 0xEE page at @page on @chan, where the protocol would send
 * none; only over a transport whose CPU places page runs (cpu_places). */
static void hs_stray_page(struct hostile *h, unsigned chan, uint64_t page)
{
	static uint8_t junk[PRECOPY_PAGE_SIZE];
	struct pc_page_run pr = { junk, 0, page * PRECOPY_PAGE_SIZE, PRECOPY_PAGE_SIZE };

	memset(junk, 0xEE, sizeof(junk));
	assert_int_equal(pc_tp_write_pages(h->tp, chan, &pr, 1), 0);
}

/* Whether this transport's CPU places page runs; else say it skips. */
static bool need_cpu_places(void)
{
	if (!cpu_places)
		print_message("skipped over %s: the NIC places page runs\n", scheme);
	return cpu_places;
}

static void behaving__migrates(void **state)
{
	struct hostile *h = hs_new();

	(void)state;
	hs_bulk(h);
	assert_int_equal(hs_complete(h), 0);
	hs_go_ok(h);
	assert_int_equal(h->d.resumed, 1);
	hs_end(h);
}

/* After the verdict, a zero RUNS record on channel 1 (whose pass 0 had
 * ended) must change nothing: that receiver was fenced and joined at
 * COMPLETE, so the record is never read. */
static void after_verdict__zero_runs_on_channel_1_change_nothing(void **state)
{
	struct hostile *h = hs_new();

	(void)state;
	hs_bulk(h);
	assert_int_equal(hs_complete(h), 0);
	hs_pages(h, 1, 1, CHUNK + 3, 2, PC_RUN_ZERO);
	hs_pages(h, 1, 1, CHUNK + 9, 1, PC_RUN_FREE);
	/* Not an assertion: time for a receiver still reading channel 1 to
	 * act on them, as one did before the fence. */
	usleep(200 * 1000);
	hs_go_ok(h);
	hs_end(h);
}

/* A page run on channel 1 after its last pass ended, sent before COMPLETE:
 * never read (that channel is parked until channel 0 begins a pass, and
 * fenced at COMPLETE), so the memory verified is the memory resumed. */
static void complete__page_run_on_parked_channel_lands_nowhere(void **state)
{
	struct hostile *h;

	(void)state;
	if (!need_cpu_places())
		return;
	h = hs_new();
	hs_bulk(h);
	hs_stray_page(h, 1, CHUNK + 5);
	usleep(200 * 1000); /* as above: a chance for a reader to place it */
	/* the checksums say what was verified, not the 0xEE page */
	assert_int_equal(hs_complete(h), 0);
	hs_go_ok(h);
	hs_end(h);
}

/* A page run on channel 0 after the page's checksum was taken, never
 * listed again: the verdict fails, although COMPLETE's checksums match
 * the checksums the destination took. */
static void complete__page_placed_after_its_checksum_fails(void **state)
{
	struct hostile *h;
	char why[PRECOPY_ERRMSG_MAX];

	(void)state;
	if (!need_cpu_places())
		return;
	h = hs_new();
	hs_bulk(h);
	hs_stray_page(h, 0, 10);
	assert_int_equal(hs_complete(h), -EBADMSG);
	assert_int_equal(hs_dest_result(h, why, sizeof(why)), -EBADMSG);
	assert_non_null(strstr(why, "page 10 was written after its checksum was taken"));
	assert_int_equal(h->d.resumed, 0);
	hs_end(h);
}

/* One RUNS record of 1024 data runs, each the whole region: refused before
 * a page is read (runs of one record may not overlap). */
static void runs__whole_region_1024_times_refused(void **state)
{
	struct hostile *h = hs_new();
	char why[PRECOPY_ERRMSG_MAX];
	struct pc_wire_msg m;
	size_t len;

	(void)state;
	pc_wire_enc_runs_hdr(h->buf, sizeof(h->buf), 0);
	for (uint32_t i = 0; i < PC_WIRE_RUNS_MAX; i++)
		pc_wire_put_run(h->buf, i, &(struct pc_wire_run){ 0, PC_RUN_DATA, 0, NPAGES });
	hs_send(h, 0, (int)pc_wire_finish_runs(h->buf, PC_WIRE_RUNS_MAX));
	for (unsigned c = 0; c < NCHAN; c++)
		hs_send_try(h, c, pc_wire_enc_iter_end(h->buf, sizeof(h->buf), 0, c));
	/* an ERROR record or the end of the connection, not ITER_ACK */
	if (!pc_tp_recv_msg(h->tp, 0, h->buf, sizeof(h->buf), &len)) {
		assert_int_equal(pc_wire_decode(h->buf, len, &m, why, sizeof(why)), 0);
		assert_int_equal(m.type, PC_MSG_ERROR);
	}
	assert_int_equal(hs_dest_result(h, why, sizeof(why)), -EPROTO);
	assert_non_null(strstr(why, "overlap"));
	hs_end(h);
}

/* Channel 1 ends passes 0, 1 and 2 while channel 0 has not ended pass 0:
 * the first ITER_ACK is for pass 0 and comes only once channel 0 ended it;
 * channel 1's later ITER_ENDs count only for passes channel 0 took part
 * in (read only once channel 0 has begun them). */
static void barrier__one_channel_cannot_end_passes_for_others(void **state)
{
	struct hostile *h = hs_new();
	struct pc_wire_msg m;

	(void)state;
	hs_pages(h, 1, 0, CHUNK, CHUNK, PC_RUN_DATA);
	for (uint32_t p = 0; p < 3; p++)
		hs_iter_end(h, 1, p);
	/* Not an assertion, a chance for channel 1's receiver to act first. */
	usleep(200 * 1000);
	hs_pages(h, 0, 0, 0, CHUNK, PC_RUN_DATA);
	hs_iter_end(h, 0, 0);
	hs_expect(h, PC_MSG_ITER_ACK, &m);
	assert_int_equal(m.u.iter_ack.iteration, 0);
	hs_pages(h, 0, 1, 0, 1, PC_RUN_DATA);
	hs_iter_end(h, 0, 1);
	hs_expect(h, PC_MSG_ITER_ACK, &m);
	assert_int_equal(m.u.iter_ack.iteration, 1);
	/* channel 1's ITER_END of pass 2 is never read: COMPLETE fences it */
	assert_int_equal(hs_complete(h), 0);
	hs_go_ok(h);
	hs_end(h);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(behaving__migrates),
		cmocka_unit_test(after_verdict__zero_runs_on_channel_1_change_nothing),
		cmocka_unit_test(complete__page_run_on_parked_channel_lands_nowhere),
		cmocka_unit_test(complete__page_placed_after_its_checksum_fails),
		cmocka_unit_test(runs__whole_region_1024_times_refused),
		cmocka_unit_test(barrier__one_channel_cannot_end_passes_for_others),
	};

	if (argc < 2) {
		fprintf(stderr, "usage: test_fence tcp | shm SOCKET-PATH-PREFIX | rdma ADDR\n");
		return 2;
	}
	scheme = argv[1];
	if (!strcmp(scheme, "tcp")) {
		snprintf(uri_listen, sizeof(uri_listen), "tcp:127.0.0.1:0");
		cpu_places = true;
	} else if (!strcmp(scheme, "shm") && argc > 2) {
		snprintf(uri_listen, sizeof(uri_listen), "shm:%s-%d-", argv[2], (int)getpid());
		cpu_places = true; /* shm frames page runs */
	} else if (!strcmp(scheme, "rdma")) {
		const char *addr = argc > 2 ? argv[2] : getenv("PRECOPY_RDMA_ADDR");

		if (!pc_transport_find("rdma")) {
			printf("rdma transport not built: skipped\n");
			return 77;
		}
		if (!addr || !*addr) {
			printf("no RDMA address given (argument or PRECOPY_RDMA_ADDR): skipped\n");
			return 77;
		}
		snprintf(uri_listen, sizeof(uri_listen), "rdma:%s:0", addr);
	} else {
		fprintf(stderr, "test_fence: unknown transport '%s'\n", scheme);
		return 2;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}

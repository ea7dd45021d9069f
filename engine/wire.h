/* SPDX-License-Identifier: MIT */
/*
 * wire.h - the engine's records, as they travel inside transport messages.
 *
 * Every record: le16 type, le16 zero, le32 payload length, payload. All
 * integers little-endian. The decoder treats its input as untrusted: every
 * length is checked against what was received before use, and reserved
 * fields must be zero. Semantic checks that need the session's regions
 * (a page inside a registered region) are the engine's.
 *
 *   HELLO        src->dst  ch0  magic "PCPY", version, capabilities,
 *                                page size, regions (lengths), channels
 *   HELLO_ACK    dst->src  ch0  version, capabilities accepted, status, text
 *   RUNS         src->dst  any  pages of one pass now in place: data runs
 *                                (contents already written), zero runs and
 *                                free runs (destination makes them zero);
 *                                runs of one record never overlap
 *   ITER_END     src->dst  each end of a pass on that channel
 *   ITER_ACK     dst->src  ch0  every channel reached the end of the pass
 *   DEVICE_STATE src->dst  ch0  a piece of the device state blob
 *   COMPLETE     src->dst  ch0  per-region page count and checksum
 *   RESULT       dst->src  ch0  the verdict: 0 = verified and device state
 *                                loaded, ready to resume; else -errno + text
 *   GO           src->dst  ch0  the source will not resume the guest:
 *                                the destination may (empty payload)
 *   RESULT       dst->src  ch0  after GO: 0 = the guest runs here, else
 *                                -errno + text (it does not)
 *   ERROR        either    ch0  the sender gives up: -errno + text
 *   HANDOFF      src->dst  ch0  (PC_CAP_HANDOFF) region, offset in the fd,
 *                                length; the region's memfd travels with it
 *   POSTCOPY     src->dst  ch0  (PC_CAP_POSTCOPY) ranges of pages the
 *                                destination does not hold current; the
 *                                last record says so (flag)
 *   REQUEST      dst->src  ch0  (postcopy) a page the guest touched
 *   PAGE         src->dst  ch0  (postcopy) one page: region, page, checksum,
 *                                contents; flag: it was asked for
 */
#ifndef PC_WIRE_H
#define PC_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "precopy.h"

#define PC_WIRE_MAGIC 0x59504350u /* "PCPY" */
#define PC_WIRE_MAJOR 1
#define PC_WIRE_MINOR 0
#define PC_WIRE_HDR 8

/* Capabilities, negotiated at HELLO: the destination answers with the
 * intersection; the source fails if a required one is missing. */
#define PC_CAP_ZERO_RUNS (1ull << 0)  /* zero pages as run records */
#define PC_CAP_PAGE_HASH (1ull << 1)  /* per-page checksums, COMPLETE */
#define PC_CAP_FREE_RUNS (1ull << 2)  /* free-page hint runs */
/* The source's RAM is memfds handed over with HANDOFF records (fd passing
 * transports only): no page passes, the destination maps the same pages.
 * Offered by the source, accepted or not by the destination. */
#define PC_CAP_HANDOFF (1ull << 3)
/* The end in three steps (RESULT, GO, RESULT): the destination resumes
 * the guest only once the source has said it never will, so a lost record
 * can leave the guest stopped at both ends but never running at both. */
#define PC_CAP_CONFIRM (1ull << 4)
/* Postcopy: the source may switch over to postcopy (POSTCOPY, REQUEST,
 * PAGE). Offered only by a source whose on-limit is postcopy; a
 * destination that cannot take it refuses the handshake. */
#define PC_CAP_POSTCOPY (1ull << 5)
#define PC_CAP_REQUIRED (PC_CAP_ZERO_RUNS | PC_CAP_PAGE_HASH | PC_CAP_CONFIRM)
#define PC_CAP_ALL (PC_CAP_ZERO_RUNS | PC_CAP_PAGE_HASH | PC_CAP_FREE_RUNS | PC_CAP_CONFIRM)

enum pc_wire_type {
	PC_MSG_HELLO = 1,
	PC_MSG_HELLO_ACK,
	PC_MSG_RUNS,
	PC_MSG_ITER_END,
	PC_MSG_ITER_ACK,
	PC_MSG_DEVICE_STATE,
	PC_MSG_COMPLETE,
	PC_MSG_RESULT,
	PC_MSG_ERROR,
	PC_MSG_HANDOFF,
	PC_MSG_GO,
	PC_MSG_POSTCOPY,
	PC_MSG_REQUEST,
	PC_MSG_PAGE,
	PC_MSG_TYPE_MAX = PC_MSG_PAGE,
};

enum pc_run_kind {
	PC_RUN_DATA = 1,
	PC_RUN_ZERO = 2,
	PC_RUN_FREE = 3,
};

#define PC_WIRE_RUN_SIZE 24
/** POSTCOPY flag: the last of the records that list missing pages. */
#define PC_WIRE_POSTCOPY_LAST 1u
/** PAGE flag: the destination asked for this page. */
#define PC_WIRE_PAGE_REQUESTED 1u
/** Length of a PAGE record. */
#define PC_WIRE_PAGE_LEN (PC_WIRE_HDR + 24 + PRECOPY_PAGE_SIZE)
#define PC_WIRE_TEXT_MAX 200
/** Most entries in one RUNS record. */
#define PC_WIRE_RUNS_MAX 1024
/** Most bytes of device state in one DEVICE_STATE record. */
#define PC_WIRE_DEVSTATE_CHUNK (512u * 1024)
/** Largest device state accepted. */
#define PC_WIRE_DEVSTATE_MAX (256ull << 20)
/** Largest record. */
#define PC_WIRE_MSG_MAX (PC_WIRE_HDR + 24 + PC_WIRE_DEVSTATE_CHUNK)

struct pc_wire_run {
	uint32_t region;
	uint32_t kind; /* enum pc_run_kind */
	uint64_t first_page;
	uint64_t npages;
};

struct pc_wire_msg {
	uint16_t type;
	union {
		struct {
			uint16_t major, minor;
			uint64_t caps;
			uint32_t page_size, nregions, channels;
			uint64_t region_len[PRECOPY_MAX_REGIONS];
		} hello;
		struct {
			uint16_t major, minor;
			uint64_t caps;
			int32_t status;
			char text[PC_WIRE_TEXT_MAX + 1];
		} hello_ack;
		struct {
			uint32_t iteration, count;
			const uint8_t *entries; /* count * PC_WIRE_RUN_SIZE, in the input */
		} runs;
		struct {
			uint32_t iteration, channel;
		} iter_end;
		struct {
			uint32_t iteration;
		} iter_ack;
		struct {
			uint64_t total, offset;
			const uint8_t *data; /* in the input */
			uint32_t len;
		} devstate;
		struct {
			uint32_t nregions;
			uint64_t npages[PRECOPY_MAX_REGIONS];
			uint64_t hash[PRECOPY_MAX_REGIONS];
		} complete;
		struct {
			int32_t status;
			char text[PC_WIRE_TEXT_MAX + 1];
		} result; /* also ERROR */
		struct {
			uint32_t region;
			uint64_t offset, len;
		} handoff;
		struct {
			uint32_t count, flags;
			const uint8_t *entries; /* count * PC_WIRE_RUN_SIZE, kind 0 */
		} postcopy;
		struct {
			uint32_t region, flags; /* flags: PAGE only */
			uint64_t page;
			uint64_t hash;          /* PAGE only */
			const uint8_t *data;    /* PAGE only: PRECOPY_PAGE_SIZE bytes, in the input */
		} page; /* REQUEST and PAGE */
	} u;
};

/** pc_wire_type_name() - "HELLO"... or "unknown"; never NULL. */
const char *pc_wire_type_name(unsigned type);

/*
 * Encoders write one record into @buf (@cap bytes) and return its length,
 * or -ENOSPC if it does not fit, -EINVAL for arguments out of range.
 */
int pc_wire_enc_hello(uint8_t *buf, size_t cap, uint64_t caps, uint32_t nregions,
		      const uint64_t *region_len, uint32_t channels);
int pc_wire_enc_hello_ack(uint8_t *buf, size_t cap, uint64_t caps, int32_t status,
			  const char *text);
/** RUNS header only; append entries with pc_wire_put_run() and then
 *  pc_wire_finish_runs() to fix the length and count. */
int pc_wire_enc_runs_hdr(uint8_t *buf, size_t cap, uint32_t iteration);
void pc_wire_put_run(uint8_t *buf, uint32_t index, const struct pc_wire_run *r);
/** Return: the record's length with @count entries. */
size_t pc_wire_finish_runs(uint8_t *buf, uint32_t count);
int pc_wire_enc_iter_end(uint8_t *buf, size_t cap, uint32_t iteration, uint32_t channel);
int pc_wire_enc_iter_ack(uint8_t *buf, size_t cap, uint32_t iteration);
/** DEVICE_STATE header (24 bytes after the record header); the @len bytes
 *  of data follow it in the same message (send them from their buffer). */
int pc_wire_enc_devstate_hdr(uint8_t *buf, size_t cap, uint64_t total, uint64_t offset,
			     uint32_t len);
int pc_wire_enc_complete(uint8_t *buf, size_t cap, uint32_t nregions, const uint64_t *npages,
			 const uint64_t *hash);
int pc_wire_enc_result(uint8_t *buf, size_t cap, unsigned type, int32_t status,
		       const char *text);
/** GO: the source hands the guest over (no payload). */
int pc_wire_enc_go(uint8_t *buf, size_t cap);

/** HANDOFF: region @region is @len bytes at @offset of the fd sent with it. */
int pc_wire_enc_handoff(uint8_t *buf, size_t cap, uint32_t region, uint64_t offset,
			uint64_t len);

/** POSTCOPY header only; append ranges with pc_wire_put_run() (kind 0),
 *  then pc_wire_finish_postcopy() to fix the length, count and flags. */
int pc_wire_enc_postcopy_hdr(uint8_t *buf, size_t cap);
/** Return: the record's length with @count ranges. */
size_t pc_wire_finish_postcopy(uint8_t *buf, uint32_t count, uint32_t flags);
/** REQUEST: the destination wants page @page of region @region. */
int pc_wire_enc_request(uint8_t *buf, size_t cap, uint32_t region, uint64_t page);
/** PAGE header (24 bytes after the record header); the page's
 *  PRECOPY_PAGE_SIZE bytes follow it in the same message. */
int pc_wire_enc_page_hdr(uint8_t *buf, size_t cap, uint32_t region, uint64_t page,
			 uint64_t hash, uint32_t flags);

/**
 * pc_wire_decode() - parse one record of @len bytes. Pointers in @out
 * point into @buf. Return: 0; -EPROTO with a description in @why for
 * anything malformed (bad magic or version, a length that disagrees with
 * what was received, an unknown type, a count out of range, reserved bits
 * set).
 */
int pc_wire_decode(const uint8_t *buf, size_t len, struct pc_wire_msg *out, char *why,
		   size_t whylen);

/** pc_wire_get_run() - entry @i of a decoded RUNS record. */
void pc_wire_get_run(const uint8_t *entries, uint32_t i, struct pc_wire_run *r);

#endif /* PC_WIRE_H */

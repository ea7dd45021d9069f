/* SPDX-License-Identifier: MIT */
/*
 * wire.c - encode and decode the engine's records (see wire.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "le.h"
#include "wire.h"

static const char *const type_names[] = {
	[PC_MSG_HELLO] = "HELLO",
	[PC_MSG_HELLO_ACK] = "HELLO_ACK",
	[PC_MSG_RUNS] = "RUNS",
	[PC_MSG_ITER_END] = "ITER_END",
	[PC_MSG_ITER_ACK] = "ITER_ACK",
	[PC_MSG_DEVICE_STATE] = "DEVICE_STATE",
	[PC_MSG_COMPLETE] = "COMPLETE",
	[PC_MSG_RESULT] = "RESULT",
	[PC_MSG_ERROR] = "ERROR",
	[PC_MSG_HANDOFF] = "HANDOFF",
	[PC_MSG_GO] = "GO",
	[PC_MSG_POSTCOPY] = "POSTCOPY",
	[PC_MSG_REQUEST] = "REQUEST",
	[PC_MSG_PAGE] = "PAGE",
};

const char *pc_wire_type_name(unsigned type)
{
	if (type == 0 || type > PC_MSG_TYPE_MAX)
		return "unknown";
	return type_names[type];
}


/* The header of a record whose @lead bytes of payload are encoded in
 * @buf and whose @data bytes follow from elsewhere (sent from their own
 * buffer). Return: the length in @buf, or -ENOSPC. */
static int put_lead(uint8_t *buf, size_t cap, unsigned type, size_t lead, size_t data)
{
	if (PC_WIRE_HDR + lead > cap)
		return -ENOSPC;
	pc_put_le16(buf, (uint16_t)type);
	pc_put_le16(buf + 2, 0);
	pc_put_le32(buf + 4, (uint32_t)(lead + data));
	return (int)(PC_WIRE_HDR + lead);
}

static int put_hdr(uint8_t *buf, size_t cap, unsigned type, size_t payload)
{
	return put_lead(buf, cap, type, payload, 0);
}

/* What HELLO and HELLO_ACK begin with: magic, version, capabilities. */
static void put_version(uint8_t *p, uint64_t caps)
{
	pc_put_le32(p, PC_WIRE_MAGIC);
	pc_put_le16(p + 4, PC_WIRE_MAJOR);
	pc_put_le16(p + 6, PC_WIRE_MINOR);
	pc_put_le64(p + 8, caps);
}

int pc_wire_enc_hello(uint8_t *buf, size_t cap, uint64_t caps, uint32_t nregions,
		      const uint64_t *region_len, uint32_t channels)
{
	uint8_t *p = buf + PC_WIRE_HDR;
	int n;

	if (nregions == 0 || nregions > PRECOPY_MAX_REGIONS || !region_len || channels == 0 ||
	    channels > PRECOPY_MAX_CHANNELS)
		return -EINVAL;
	n = put_hdr(buf, cap, PC_MSG_HELLO, 32 + 8 * (size_t)nregions);
	if (n < 0)
		return n;
	put_version(p, caps);
	pc_put_le32(p + 16, PRECOPY_PAGE_SIZE);
	pc_put_le32(p + 20, nregions);
	pc_put_le32(p + 24, channels);
	pc_put_le32(p + 28, 0);
	for (uint32_t i = 0; i < nregions; i++)
		pc_put_le64(p + 32 + 8 * i, region_len[i]);
	return n;
}

static size_t text_len(const char *text)
{
	size_t n = text ? strlen(text) : 0;

	return n > PC_WIRE_TEXT_MAX ? PC_WIRE_TEXT_MAX : n;
}

int pc_wire_enc_hello_ack(uint8_t *buf, size_t cap, uint64_t caps, int32_t status,
			  const char *text)
{
	uint8_t *p = buf + PC_WIRE_HDR;
	size_t tl = text_len(text);
	int n = put_hdr(buf, cap, PC_MSG_HELLO_ACK, 24 + tl);

	if (n < 0)
		return n;
	put_version(p, caps);
	pc_put_le32(p + 16, (uint32_t)status);
	pc_put_le32(p + 20, 0);
	if (tl)
		memcpy(p + 24, text, tl);
	return n;
}

int pc_wire_enc_runs_hdr(uint8_t *buf, size_t cap, uint32_t iteration)
{
	int n = put_hdr(buf, cap, PC_MSG_RUNS, 8);

	if (n < 0)
		return n;
	if (cap < PC_WIRE_HDR + 8 + (size_t)PC_WIRE_RUNS_MAX * PC_WIRE_RUN_SIZE)
		return -ENOSPC;
	pc_put_le32(buf + PC_WIRE_HDR, iteration);
	pc_put_le32(buf + PC_WIRE_HDR + 4, 0);
	return n;
}

void pc_wire_put_run(uint8_t *buf, uint32_t index, const struct pc_wire_run *r)
{
	uint8_t *p = buf + PC_WIRE_HDR + 8 + (size_t)index * PC_WIRE_RUN_SIZE;

	pc_put_le32(p, r->region);
	pc_put_le32(p + 4, r->kind);
	pc_put_le64(p + 8, r->first_page);
	pc_put_le64(p + 16, r->npages);
}

size_t pc_wire_finish_runs(uint8_t *buf, uint32_t count)
{
	size_t payload = 8 + (size_t)count * PC_WIRE_RUN_SIZE;

	pc_put_le32(buf + 4, (uint32_t)payload);
	pc_put_le32(buf + PC_WIRE_HDR + 4, count);
	return PC_WIRE_HDR + payload;
}

int pc_wire_enc_iter_end(uint8_t *buf, size_t cap, uint32_t iteration, uint32_t channel)
{
	int n = put_hdr(buf, cap, PC_MSG_ITER_END, 8);

	if (n < 0)
		return n;
	pc_put_le32(buf + PC_WIRE_HDR, iteration);
	pc_put_le32(buf + PC_WIRE_HDR + 4, channel);
	return n;
}

int pc_wire_enc_iter_ack(uint8_t *buf, size_t cap, uint32_t iteration)
{
	int n = put_hdr(buf, cap, PC_MSG_ITER_ACK, 4);

	if (n < 0)
		return n;
	pc_put_le32(buf + PC_WIRE_HDR, iteration);
	return n;
}

int pc_wire_enc_go(uint8_t *buf, size_t cap)
{
	return put_hdr(buf, cap, PC_MSG_GO, 0);
}

int pc_wire_enc_devstate_hdr(uint8_t *buf, size_t cap, uint64_t total, uint64_t offset,
			     uint32_t len)
{
	if (len > PC_WIRE_DEVSTATE_CHUNK || total > PC_WIRE_DEVSTATE_MAX || offset > total ||
	    len > total - offset)
		return -EINVAL;
	if (put_lead(buf, cap, PC_MSG_DEVICE_STATE, 24, len) < 0)
		return -ENOSPC;
	pc_put_le64(buf + PC_WIRE_HDR, total);
	pc_put_le64(buf + PC_WIRE_HDR + 8, offset);
	pc_put_le32(buf + PC_WIRE_HDR + 16, len);
	pc_put_le32(buf + PC_WIRE_HDR + 20, 0);
	return PC_WIRE_HDR + 24;
}

int pc_wire_enc_complete(uint8_t *buf, size_t cap, uint32_t nregions, const uint64_t *npages,
			 const uint64_t *hash)
{
	uint8_t *p = buf + PC_WIRE_HDR;
	int n;

	if (nregions == 0 || nregions > PRECOPY_MAX_REGIONS || !npages || !hash)
		return -EINVAL;
	n = put_hdr(buf, cap, PC_MSG_COMPLETE, 8 + 16 * (size_t)nregions);
	if (n < 0)
		return n;
	pc_put_le32(p, nregions);
	pc_put_le32(p + 4, 0);
	for (uint32_t i = 0; i < nregions; i++) {
		pc_put_le64(p + 8 + 16 * i, npages[i]);
		pc_put_le64(p + 16 + 16 * i, hash[i]);
	}
	return n;
}

int pc_wire_enc_result(uint8_t *buf, size_t cap, unsigned type, int32_t status,
		       const char *text)
{
	size_t tl = text_len(text);
	int n;

	if (type != PC_MSG_RESULT && type != PC_MSG_ERROR)
		return -EINVAL;
	n = put_hdr(buf, cap, type, 8 + tl);
	if (n < 0)
		return n;
	pc_put_le32(buf + PC_WIRE_HDR, (uint32_t)status);
	pc_put_le32(buf + PC_WIRE_HDR + 4, 0);
	if (tl)
		memcpy(buf + PC_WIRE_HDR + 8, text, tl);
	return n;
}

void pc_wire_get_run(const uint8_t *entries, uint32_t i, struct pc_wire_run *r)
{
	const uint8_t *p = entries + (size_t)i * PC_WIRE_RUN_SIZE;

	r->region = pc_get_le32(p);
	r->kind = pc_get_le32(p + 4);
	r->first_page = pc_get_le64(p + 8);
	r->npages = pc_get_le64(p + 16);
}

static int bad(char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int bad(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	if (why && whylen) {
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return -EPROTO;
}

/* Copy printable text of @n bytes (not NUL-terminated on the wire). */
static void get_text(char *dst, const uint8_t *src, size_t n)
{
	if (n > PC_WIRE_TEXT_MAX)
		n = PC_WIRE_TEXT_MAX;
	for (size_t i = 0; i < n; i++)
		dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? (char)src[i] : '?';
	dst[n] = '\0';
}

static int check_version(const uint8_t *p, uint16_t *major, uint16_t *minor, char *why,
			 size_t whylen)
{
	if (pc_get_le32(p) != PC_WIRE_MAGIC)
		return bad(why, whylen, "bad magic 0x%08x (not a precopy stream)", pc_get_le32(p));
	*major = pc_get_le16(p + 4);
	*minor = pc_get_le16(p + 6);
	if (*major != PC_WIRE_MAJOR)
		return bad(why, whylen, "protocol version %u.%u, this side speaks %u.x", *major,
			   *minor, PC_WIRE_MAJOR);
	return 0;
}

int pc_wire_enc_handoff(uint8_t *buf, size_t cap, uint32_t region, uint64_t offset,
			uint64_t len)
{
	uint8_t *p = buf + PC_WIRE_HDR;
	int n;

	if (region >= PRECOPY_MAX_REGIONS || len == 0 || offset % PRECOPY_PAGE_SIZE ||
	    len % PRECOPY_PAGE_SIZE)
		return -EINVAL;
	n = put_hdr(buf, cap, PC_MSG_HANDOFF, 24);
	if (n < 0)
		return n;
	pc_put_le32(p, region);
	pc_put_le32(p + 4, 0);
	pc_put_le64(p + 8, offset);
	pc_put_le64(p + 16, len);
	return n;
}

int pc_wire_enc_postcopy_hdr(uint8_t *buf, size_t cap)
{
	int n = put_hdr(buf, cap, PC_MSG_POSTCOPY, 8);

	if (n < 0)
		return n;
	if (cap < PC_WIRE_HDR + 8 + (size_t)PC_WIRE_RUNS_MAX * PC_WIRE_RUN_SIZE)
		return -ENOSPC;
	pc_put_le32(buf + PC_WIRE_HDR, 0);
	pc_put_le32(buf + PC_WIRE_HDR + 4, 0);
	return n;
}

size_t pc_wire_finish_postcopy(uint8_t *buf, uint32_t count, uint32_t flags)
{
	size_t len = pc_wire_finish_runs(buf, count); /* the same layout, count first */

	pc_put_le32(buf + PC_WIRE_HDR, count);
	pc_put_le32(buf + PC_WIRE_HDR + 4, flags);
	return len;
}

int pc_wire_enc_request(uint8_t *buf, size_t cap, uint32_t region, uint64_t page)
{
	int n = put_hdr(buf, cap, PC_MSG_REQUEST, 16);

	if (n < 0)
		return n;
	pc_put_le32(buf + PC_WIRE_HDR, region);
	pc_put_le32(buf + PC_WIRE_HDR + 4, 0);
	pc_put_le64(buf + PC_WIRE_HDR + 8, page);
	return n;
}

int pc_wire_enc_page_hdr(uint8_t *buf, size_t cap, uint32_t region, uint64_t page,
			 uint64_t hash, uint32_t flags)
{
	uint8_t *p = buf + PC_WIRE_HDR;
	int n = flags & ~PC_WIRE_PAGE_REQUESTED ? -EINVAL
						: put_lead(buf, cap, PC_MSG_PAGE, 24, PRECOPY_PAGE_SIZE);

	if (n > 0) {
		pc_put_le32(p, region);
		pc_put_le32(p + 4, flags);
		pc_put_le64(p + 8, page);
		pc_put_le64(p + 16, hash);
	}
	return n;
}

/* One decoder a record type: @p is the payload, @plen bytes as received
 * and at least the type's minimum (struct decoder). */
typedef int (*decode_fn)(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
			 size_t whylen);

static int dec_hello(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
		     size_t whylen)
{
	uint32_t nr;
	int err;

	err = check_version(p, &out->u.hello.major, &out->u.hello.minor, why, whylen);
	if (err)
		return err;
	out->u.hello.caps = pc_get_le64(p + 8);
	out->u.hello.page_size = pc_get_le32(p + 16);
	nr = pc_get_le32(p + 20);
	out->u.hello.channels = pc_get_le32(p + 24);
	if (pc_get_le32(p + 28))
		return bad(why, whylen, "HELLO reserved field set");
	if (nr == 0 || nr > PRECOPY_MAX_REGIONS)
		return bad(why, whylen, "HELLO with %u regions (1..%u)", nr, PRECOPY_MAX_REGIONS);
	if (plen != 32 + 8 * nr)
		return bad(why, whylen, "HELLO length %u does not fit %u regions", plen, nr);
	if (out->u.hello.channels == 0 || out->u.hello.channels > PRECOPY_MAX_CHANNELS)
		return bad(why, whylen, "HELLO with %u channels", out->u.hello.channels);
	out->u.hello.nregions = nr;
	for (uint32_t i = 0; i < nr; i++)
		out->u.hello.region_len[i] = pc_get_le64(p + 32 + 8 * i);
	return 0;
}

static int dec_hello_ack(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
			 size_t whylen)
{
	int err = check_version(p, &out->u.hello_ack.major, &out->u.hello_ack.minor, why, whylen);

	if (err)
		return err;
	out->u.hello_ack.caps = pc_get_le64(p + 8);
	out->u.hello_ack.status = (int32_t)pc_get_le32(p + 16);
	if (pc_get_le32(p + 20))
		return bad(why, whylen, "HELLO_ACK reserved field set");
	get_text(out->u.hello_ack.text, p + 24, plen - 24);
	return 0;
}

static int dec_runs(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
		    size_t whylen)
{
	uint32_t count;

	out->u.runs.iteration = pc_get_le32(p);
	count = pc_get_le32(p + 4);
	if (count == 0 || count > PC_WIRE_RUNS_MAX)
		return bad(why, whylen, "RUNS with %u entries (1..%u)", count, PC_WIRE_RUNS_MAX);
	if ((size_t)plen != 8 + (size_t)count * PC_WIRE_RUN_SIZE)
		return bad(why, whylen, "RUNS length %u does not fit %u entries", plen, count);
	out->u.runs.count = count;
	out->u.runs.entries = p + 8;
	for (uint32_t i = 0; i < count; i++) {
		struct pc_wire_run r;

		pc_wire_get_run(p + 8, i, &r);
		if (r.kind < PC_RUN_DATA || r.kind > PC_RUN_FREE)
			return bad(why, whylen, "run %u of unknown kind %u", i, r.kind);
		if (r.npages == 0)
			return bad(why, whylen, "run %u of no pages", i);
	}
	return 0;
}

static int dec_iter_end(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
			size_t whylen)
{
	(void)plen, (void)why, (void)whylen; /* the length is checked: no more to check */
	out->u.iter_end.iteration = pc_get_le32(p);
	out->u.iter_end.channel = pc_get_le32(p + 4);
	return 0;
}

static int dec_iter_ack(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
			size_t whylen)
{
	(void)plen, (void)why, (void)whylen;
	out->u.iter_ack.iteration = pc_get_le32(p);
	return 0;
}

static int dec_devstate(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
			size_t whylen)
{
	uint64_t total, off;
	uint32_t n;

	total = pc_get_le64(p);
	off = pc_get_le64(p + 8);
	n = pc_get_le32(p + 16);
	if (pc_get_le32(p + 20))
		return bad(why, whylen, "DEVICE_STATE reserved field set");
	if ((size_t)plen != 24 + (size_t)n || n > PC_WIRE_DEVSTATE_CHUNK)
		return bad(why, whylen, "DEVICE_STATE piece of %u bytes in %u", n, plen);
	if (total > PC_WIRE_DEVSTATE_MAX || off > total || n > total - off)
		return bad(why, whylen, "DEVICE_STATE piece [%llu, +%u) outside %llu bytes",
			   (unsigned long long)off, n, (unsigned long long)total);
	out->u.devstate.total = total;
	out->u.devstate.offset = off;
	out->u.devstate.len = n;
	out->u.devstate.data = p + 24;
	return 0;
}

static int dec_complete(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
			size_t whylen)
{
	uint32_t nr;

	nr = pc_get_le32(p);
	if (pc_get_le32(p + 4))
		return bad(why, whylen, "COMPLETE reserved field set");
	if (nr == 0 || nr > PRECOPY_MAX_REGIONS || plen != 8 + 16 * nr)
		return bad(why, whylen, "COMPLETE with %u regions in %u bytes", nr, plen);
	out->u.complete.nregions = nr;
	for (uint32_t i = 0; i < nr; i++) {
		out->u.complete.npages[i] = pc_get_le64(p + 8 + 16 * i);
		out->u.complete.hash[i] = pc_get_le64(p + 16 + 16 * i);
	}
	return 0;
}

/* RESULT and ERROR. */
static int dec_result(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
		      size_t whylen)
{
	const char *name = pc_wire_type_name(out->type);

	out->u.result.status = (int32_t)pc_get_le32(p);
	if (pc_get_le32(p + 4))
		return bad(why, whylen, "%s reserved field set", name);
	if (out->u.result.status > 0)
		return bad(why, whylen, "%s with positive status", name);
	get_text(out->u.result.text, p + 8, plen - 8);
	return 0;
}

static int dec_handoff(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
		       size_t whylen)
{
	uint64_t off, len;

	(void)plen;
	out->u.handoff.region = pc_get_le32(p);
	out->u.handoff.offset = off = pc_get_le64(p + 8);
	out->u.handoff.len = len = pc_get_le64(p + 16);
	if (pc_get_le32(p + 4))
		return bad(why, whylen, "HANDOFF reserved field set");
	if (out->u.handoff.region >= PRECOPY_MAX_REGIONS || len == 0 ||
	    off % PRECOPY_PAGE_SIZE || len % PRECOPY_PAGE_SIZE || off + len < off)
		return bad(why, whylen, "HANDOFF of region %u: %llu bytes at %llu",
			   out->u.handoff.region, (unsigned long long)len,
			   (unsigned long long)off);
	return 0;
}

/* GO has no payload: its length is all there is to check. */
static int dec_go(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
		  size_t whylen)
{
	(void)p, (void)plen, (void)out, (void)why, (void)whylen;
	return 0;
}

static int dec_postcopy(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
			size_t whylen)
{
	uint32_t count = pc_get_le32(p), flags = pc_get_le32(p + 4);

	if (count > PC_WIRE_RUNS_MAX)
		return bad(why, whylen, "POSTCOPY with %u ranges (0..%u)", count, PC_WIRE_RUNS_MAX);
	if ((size_t)plen != 8 + (size_t)count * PC_WIRE_RUN_SIZE)
		return bad(why, whylen, "POSTCOPY length %u does not fit %u ranges", plen, count);
	if (flags & ~PC_WIRE_POSTCOPY_LAST)
		return bad(why, whylen, "POSTCOPY with unknown flags 0x%x", flags);
	out->u.postcopy.count = count;
	out->u.postcopy.flags = flags;
	out->u.postcopy.entries = p + 8;
	for (uint32_t i = 0; i < count; i++) {
		struct pc_wire_run r;

		pc_wire_get_run(p + 8, i, &r);
		if (r.kind != 0 || r.npages == 0)
			return bad(why, whylen, "POSTCOPY range %u: kind %u, %llu pages", i, r.kind,
				   (unsigned long long)r.npages);
	}
	return 0;
}

/* REQUEST and PAGE: region, flags, page (PAGE: then hash and contents). */
static int dec_page(const uint8_t *p, uint32_t plen, struct pc_wire_msg *out, char *why,
		    size_t whylen)
{
	out->u.page.region = pc_get_le32(p);
	out->u.page.flags = pc_get_le32(p + 4);
	out->u.page.page = pc_get_le64(p + 8);
	out->u.page.hash = plen > 16 ? pc_get_le64(p + 16) : 0;
	out->u.page.data = plen > 16 ? p + 24 : NULL;
	if (out->u.page.flags & ~(out->type == PC_MSG_PAGE ? PC_WIRE_PAGE_REQUESTED : 0))
		return bad(why, whylen, "%s with unknown flags 0x%x", pc_wire_type_name(out->type),
			   out->u.page.flags);
	if (out->u.page.region >= PRECOPY_MAX_REGIONS)
		return bad(why, whylen, "%s of region %u", pc_wire_type_name(out->type),
			   out->u.page.region);
	return 0;
}

#define ANY UINT32_MAX

/* The decoder of each type and the payload lengths it takes: a record
 * shorter than @min is truncated; with a @max, one outside [min, max] has
 * the wrong size (the decoder checks what depends on the contents). */
static const struct decoder {
	decode_fn fn;
	uint32_t min, max;
} decoders[] = {
	[PC_MSG_HELLO] = { dec_hello, 32, ANY },
	[PC_MSG_HELLO_ACK] = { dec_hello_ack, 24, 24 + PC_WIRE_TEXT_MAX },
	[PC_MSG_RUNS] = { dec_runs, 8, ANY },
	[PC_MSG_ITER_END] = { dec_iter_end, 8, 8 },
	[PC_MSG_ITER_ACK] = { dec_iter_ack, 4, 4 },
	[PC_MSG_DEVICE_STATE] = { dec_devstate, 24, ANY },
	[PC_MSG_COMPLETE] = { dec_complete, 8, ANY },
	[PC_MSG_RESULT] = { dec_result, 8, 8 + PC_WIRE_TEXT_MAX },
	[PC_MSG_ERROR] = { dec_result, 8, 8 + PC_WIRE_TEXT_MAX },
	[PC_MSG_HANDOFF] = { dec_handoff, 24, 24 },
	[PC_MSG_GO] = { dec_go, 0, 0 },
	[PC_MSG_POSTCOPY] = { dec_postcopy, 8, ANY },
	[PC_MSG_REQUEST] = { dec_page, 16, 16 },
	[PC_MSG_PAGE] = { dec_page, 24 + PRECOPY_PAGE_SIZE, 24 + PRECOPY_PAGE_SIZE },
};

int pc_wire_decode(const uint8_t *buf, size_t len, struct pc_wire_msg *out, char *why,
		   size_t whylen)
{
	const struct decoder *dec;
	uint32_t plen;

	if (!buf || !out)
		return -EINVAL;
	if (len < PC_WIRE_HDR)
		return bad(why, whylen, "record of %zu bytes is shorter than its header", len);
	out->type = pc_get_le16(buf);
	plen = pc_get_le32(buf + 4);
	if (pc_get_le16(buf + 2) != 0)
		return bad(why, whylen, "reserved header bits set");
	if ((size_t)plen != len - PC_WIRE_HDR)
		return bad(why, whylen, "%s record says %u payload bytes, %zu received",
			   pc_wire_type_name(out->type), plen, len - PC_WIRE_HDR);
	if (out->type == 0 || out->type > PC_MSG_TYPE_MAX)
		return bad(why, whylen, "unknown record type %u", out->type);
	dec = &decoders[out->type];
	if (dec->max == ANY && plen < dec->min)
		return bad(why, whylen, "%s truncated (%u bytes)", pc_wire_type_name(out->type), plen);
	if (dec->max != ANY && (plen < dec->min || plen > dec->max))
		return bad(why, whylen, "%s of %u bytes", pc_wire_type_name(out->type), plen);
	return dec->fn(buf + PC_WIRE_HDR, plen, out, why, whylen);
}

/* SPDX-License-Identifier: MIT */
/*
 * rdma_cm.c - the RDMA transport's connection set-up with rdma_cm:
 * connect, listen, accept, the private data each side sends and the
 * challenge that proves a connector holds the key now.
 *
 * Connect private data (56 bytes, the RC limit), little-endian:
 *   0 le32 magic "PCR1"  4 u8 version (2)  5 u8 channel  6 u8 channels  7 u8 0
 *   8 le64 cookie (same on all channels)   16 le64 nonce (random per request)
 *  24 le64 credit word address  32 le32 its rkey  36 le32 0
 *  40 16 bytes HMAC-SHA256(key, "PCR2-req" || bytes 0..39), truncated
 * The acceptor checks the token before rdma_accept() and rejects a wrong
 * one (reject data: le32 magic, u8 reason). Its accept data (56 bytes):
 *   0 le32 magic  4 u8 version  5 u8 channel  6 le16 0  8 le64 credit addr
 *  16 le32 rkey  20 le32 0  24 16 random bytes (the challenge)
 *  40 16 bytes HMAC(key, "PCR2-rep" || request || bytes 0..39),
 * so the connector knows the acceptor holds the key too. The connector's
 * first SEND on the channel answers the challenge: an internal AUTH
 * message with HMAC(key, "PCR2-ack" || request || accept data). The
 * acceptor takes the channel only once that checks out; a request
 * replayed from an earlier migration cannot answer a fresh challenge, and
 * its connection is torn down while the listener waits on.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <arpa/inet.h>

#include <nettle/hmac.h>
#include <nettle/memops.h>

#include "addr.h"
#include "le.h"
#include "rdma_impl.h"

/* HMAC-SHA256(@key, @label || @a || @b), cut to TOKEN_SIZE bytes. */
static void token(const void *key, size_t key_len, const char *label, const uint8_t *a,
		  size_t alen, const uint8_t *b, size_t blen, uint8_t out[TOKEN_SIZE])
{
	struct hmac_sha256_ctx h;
	uint8_t d[SHA256_DIGEST_SIZE];

	hmac_sha256_set_key(&h, key_len, key ? key : (const uint8_t *)"");
	hmac_sha256_update(&h, strlen(label), (const uint8_t *)label);
	hmac_sha256_update(&h, alen, a);
	if (b)
		hmac_sha256_update(&h, blen, b);
	hmac_sha256_digest(&h, sizeof(d), d);
	memcpy(out, d, TOKEN_SIZE);
}

/*
 * Next CM event on @ec within @ms; -ETIMEDOUT, or -ECANCELED once @aborted
 * or @cancel (the caller's flag, polled every 50 ms) is set.
 */
static int get_event(struct rdma_event_channel *ec, int wake_fd, atomic_bool *aborted,
		     const atomic_bool *cancel, int ms, struct rdma_cm_event **ev)
{
	uint64_t deadline = pc_mono_ns() + (uint64_t)ms * 1000000ull;

	for (;;) {
		struct pollfd p[2] = { { .fd = ec->fd, .events = POLLIN },
				       { .fd = wake_fd, .events = POLLIN } };
		uint64_t now;

		int step;

		if ((aborted && atomic_load(aborted)) || (cancel && atomic_load(cancel)))
			return -ECANCELED;
		if (rdma_get_cm_event(ec, ev) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return -errno;
		now = pc_mono_ns();
		if (now >= deadline)
			return -ETIMEDOUT;
		step = (int)((deadline - now) / 1000000ull) + 1;
		if (cancel && step > 50)
			step = 50;
		poll(p, wake_fd >= 0 ? 2 : 1, step);
	}
}

/* Wait for @want on @id; other events are handled as failures. */
static int wait_event(struct rd_conn *c, struct rdma_cm_id *id, enum rdma_cm_event_type want,
		      int ms, uint8_t *pdata, size_t *pdlen)
{
	struct rdma_cm_event *ev;
	int err = get_event(c->ec, c->wake_fd, &c->aborted, c->cancel, ms, &ev);

	if (err)
		return err;
	if (ev->id != id || ev->event != want) {
		enum rdma_cm_event_type got = ev->event;
		int status = ev->status;
		bool ours = ev->param.conn.private_data && ev->param.conn.private_data_len >= 5 &&
			    pc_get_le32(ev->param.conn.private_data) == RD_MAGIC;
		uint8_t reason = ours ? ((const uint8_t *)ev->param.conn.private_data)[4] : 0;

		rdma_ack_cm_event(ev);
		switch (got) {
		case RDMA_CM_EVENT_REJECTED:
			if (reason == REJ_AUTH)
				return rd_fail(c, -EACCES, "the peer refused our authentication "
					       "token (different key?)");
			if (reason == REJ_VERSION)
				return rd_fail(c, -EPROTO, "the peer speaks another version of "
					       "the RDMA connection set-up (ours is %u)", RD_VERSION);
			return rd_fail(c, -ECONNREFUSED, "connection refused (status %d)", status);
		case RDMA_CM_EVENT_ADDR_ERROR:
		case RDMA_CM_EVENT_ROUTE_ERROR:
		case RDMA_CM_EVENT_UNREACHABLE:
			return rd_fail(c, -EHOSTUNREACH, "%s (status %d)", rdma_event_str(got),
				       status);
		default:
			return rd_fail(c, -ECONNREFUSED, "unexpected %s while waiting for %s",
				       rdma_event_str(got), rdma_event_str(want));
		}
	}
	if (pdata) {
		size_t n = ev->param.conn.private_data_len;

		if (n > *pdlen)
			n = *pdlen;
		if (ev->param.conn.private_data)
			memcpy(pdata, ev->param.conn.private_data, n);
		else
			n = 0;
		*pdlen = n;
	}
	rdma_ack_cm_event(ev);
	return 0;
}

static void req_encode(uint8_t *b, unsigned chan, unsigned nchan, uint64_t cookie,
		       uint64_t nonce, struct rd_conn *c, const void *key, size_t klen)
{
	memset(b, 0, REQ_SIZE);
	pc_put_le32(b, RD_MAGIC);
	b[4] = RD_VERSION;
	b[5] = (uint8_t)chan;
	b[6] = (uint8_t)nchan;
	pc_put_le64(b + 8, cookie);
	pc_put_le64(b + 16, nonce);
	pc_put_le64(b + 24, (uintptr_t)&c->credit_in[chan]);
	pc_put_le32(b + 32, c->credit_mr->rkey);
	token(key, klen, "PCR2-req", b, 40, NULL, 0, b + 40);
}

static void rep_encode(uint8_t *b, const uint8_t *req, unsigned chan, struct rd_conn *c,
		       const void *key, size_t klen)
{
	memset(b, 0, REP_SIZE);
	pc_put_le32(b, RD_MAGIC);
	b[4] = RD_VERSION;
	b[5] = (uint8_t)chan;
	pc_put_le64(b + 8, (uintptr_t)&c->credit_in[chan]);
	pc_put_le32(b + 16, c->credit_mr->rkey);
	if (getrandom(b + 24, CHAL_SIZE, 0) != CHAL_SIZE) {
		/* (no entropy source at all: still never the same twice here) */
		pc_put_le64(b + 24, pc_mono_ns());
		pc_put_le64(b + 32, (uint64_t)getpid() << 32 ^ (uintptr_t)c);
	}
	token(key, klen, "PCR2-rep", req, REQ_SIZE, b, 40, b + 40);
}

/* The connector's answer to the challenge in @rep: an internal AUTH message. */
static void auth_encode(uint8_t m[AUTH_SIZE], const uint8_t *req, const uint8_t *rep,
			const void *key, size_t klen)
{
	memset(m, 0, AUTH_SIZE);
	m[0] = INT_AUTH;
	token(key, klen, "PCR2-ack", req, REQ_SIZE, rep, REP_SIZE, m + 4);
}

/* --- connect ------------------------------------------------------------- */

/* Resolve the address and the route of channel @i's new id to @dst, then
 * set the channel up on the device they lead to (the first channel picks
 * the device; the others must reach the same one). */
static int connect_route(struct rd_conn *c, unsigned i, const char *addr,
			 struct sockaddr *dst)
{
	struct rd_chan *ch = &c->ch[i];
	struct rdma_cm_id *id;
	int err;

	if (rdma_create_id(c->ec, &id, ch, RDMA_PS_TCP))
		return -errno;
	ch->id = id;
	if (rdma_resolve_addr(id, NULL, dst, 2000))
		return rd_fail(c, -errno, "resolving %s: %s", addr, strerror(errno));
	err = wait_event(c, id, RDMA_CM_EVENT_ADDR_RESOLVED, 5000, NULL, NULL);
	if (err)
		return err;
	if (rdma_resolve_route(id, 2000))
		return rd_fail(c, -errno, "route to %s: %s", addr, strerror(errno));
	err = wait_event(c, id, RDMA_CM_EVENT_ROUTE_RESOLVED, 5000, NULL, NULL);
	if (err)
		return err;
	if (i == 0) {
		err = rd_conn_init_device(c, id->verbs);
		if (err)
			return err;
	} else if (id->verbs != c->verbs) {
		return rd_fail(c, -EXDEV, "channel %u resolved to another device", i);
	}
	err = rd_chan_init(c, ch, id);
	if (err)
		rd_fail(c, err, "setting up channel %u: %s", i, strerror(-err));
	return err;
}

/* Connect channel @i of @nchan (routed): send the request, check the
 * acceptor's answer and token, then answer its challenge. */
static int connect_chan(struct rd_conn *c, unsigned i, unsigned nchan, uint64_t cookie,
			const void *key, size_t klen)
{
	struct rd_chan *ch = &c->ch[i];
	struct rdma_conn_param cp;
	uint8_t req[REQ_SIZE], rep[256], want[TOKEN_SIZE], auth[AUTH_SIZE];
	struct iovec av = { auth, sizeof(auth) };
	size_t replen = sizeof(rep);
	uint64_t nonce;
	int err;

	if (getrandom(&nonce, sizeof(nonce), 0) != sizeof(nonce))
		nonce = pc_mono_ns() ^ cookie;
	req_encode(req, i, nchan, cookie, nonce, c, key, klen);
	memset(&cp, 0, sizeof(cp));
	cp.private_data = req;
	cp.private_data_len = REQ_SIZE;
	cp.retry_count = RETRY_COUNT;
	cp.rnr_retry_count = RNR_RETRY;
	cp.responder_resources = 0; /* no RDMA READ either way */
	cp.initiator_depth = 0;
	if (rdma_connect(ch->id, &cp))
		return rd_fail(c, -errno, "rdma_connect: %s", strerror(errno));
	err = wait_event(c, ch->id, RDMA_CM_EVENT_ESTABLISHED, (int)c->timeout_ms, rep, &replen);
	if (err)
		return err;
	if (replen < REP_SIZE || pc_get_le32(rep) != RD_MAGIC || rep[4] != RD_VERSION ||
	    rep[5] != i)
		return rd_fail(c, -EPROTO, "channel %u: the peer's accept is not ours", i);
	token(key, klen, "PCR2-rep", req, REQ_SIZE, rep, 40, want);
	if (!memeql_sec(want, rep + 40, TOKEN_SIZE))
		return rd_fail(c, -EACCES, "channel %u: the peer failed authentication", i);
	ch->peer_credit_addr = pc_get_le64(rep + 8);
	ch->peer_credit_rkey = pc_get_le32(rep + 16);
	err = rd_qp_write_only(c, ch);
	if (err)
		return err;
	/* the answer to the acceptor's challenge: our first SEND */
	auth_encode(auth, req, rep, key, klen);
	return rd_send(c, i, FRAG_INTERNAL, &av, 1);
}

/* Resolve @addr, then connect every channel of @c to it, one after the
 * other. Return: 0 or -errno. */
static int connect_all(struct rd_conn *c, const char *addr, const struct pc_transport_opts *o)
{
	const void *key = o ? o->key : NULL;
	size_t klen = o && o->key ? o->key_len : 0;
	struct addrinfo *res;
	uint64_t cookie;
	int err = pc_addr_resolve(addr, false, &res);

	if (err)
		return err;
	c->ec = rdma_create_event_channel();
	if (!c->ec) {
		err = errno ? -errno : -ENODEV;
		freeaddrinfo(res);
		return err;
	}
	set_nonblock(c->ec->fd);
	if (getrandom(&cookie, sizeof(cookie), 0) != sizeof(cookie))
		cookie = (uint64_t)getpid() << 32 ^ pc_mono_ns();
	for (unsigned i = 0; i < c->base.nchan && !err; i++) {
		err = connect_route(c, i, addr, res->ai_addr);
		if (!err)
			err = connect_chan(c, i, c->base.nchan, cookie, key, klen);
	}
	freeaddrinfo(res);
	return err;
}

int rd_connect(const char *addr, const struct pc_transport_opts *o, struct pc_transport **out)
{
	unsigned nchan = o && o->channels ? o->channels : 1;
	struct rd_conn *c;
	int err;

	if (!out || nchan > PRECOPY_MAX_CHANNELS)
		return -EINVAL;
	c = rd_conn_new(nchan, o);
	if (!c)
		return -ENOMEM;
	c->cancel = o ? o->cancel : NULL;
	err = connect_all(c, addr, o);
	if (!err)
		err = rd_conn_start(c);
	if (err) {
		rd_give_why(c, o);
		rd_conn_free(c);
		return err;
	}
	c->cancel = NULL; /* from here on the engine aborts the connection */
	*out = &c->base;
	return 0;
}

/* --- listener -------------------------------------------------------------- */

int rd_listen(const char *addr, const struct pc_transport_opts *o,
	      struct pc_listener **out)
{
	struct rd_listener *l;
	struct addrinfo *res;
	int err;

	(void)o;
	if (!out)
		return -EINVAL;
	err = pc_addr_resolve(addr, true, &res);
	if (err)
		return err;
	l = calloc(1, sizeof(*l));
	if (!l) {
		freeaddrinfo(res);
		return -ENOMEM;
	}
	l->base.ops = pc_transport_find("rdma");
	l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	l->ec = rdma_create_event_channel();
	err = -ENODEV;
	if (l->wake_fd < 0 || !l->ec)
		goto fail;
	set_nonblock(l->ec->fd);
	if (rdma_create_id(l->ec, &l->id, NULL, RDMA_PS_TCP)) {
		err = -errno;
		goto fail;
	}
	if (rdma_bind_addr(l->id, res->ai_addr) || rdma_listen(l->id, 16)) {
		err = errno ? -errno : -EADDRNOTAVAIL;
		goto fail;
	}
	freeaddrinfo(res);
	*out = &l->base;
	return 0;
fail:
	freeaddrinfo(res);
	if (l->id)
		rdma_destroy_id(l->id);
	if (l->ec)
		rdma_destroy_event_channel(l->ec);
	if (l->wake_fd >= 0)
		close(l->wake_fd);
	free(l);
	return err;
}

int rd_listener_addr(struct pc_listener *pl, char *buf, size_t len)
{
	struct rd_listener *l = (struct rd_listener *)pl;
	struct sockaddr *sa = rdma_get_local_addr(l->id);
	char host[INET6_ADDRSTRLEN];
	int port = ntohs(rdma_get_src_port(l->id)), n;

	if (sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
		n = snprintf(buf, len, "rdma:%s:%d", host, port);
	} else {
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof(host));
		n = snprintf(buf, len, "rdma:[%s]:%d", host, port);
	}
	return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

int rd_listener_abort(struct pc_listener *pl)
{
	struct rd_listener *l = (struct rd_listener *)pl;

	atomic_store(&l->aborted, true);
	rd_poke(l->wake_fd);
	return 0;
}

void rd_listener_close(struct pc_listener *pl)
{
	struct rd_listener *l = (struct rd_listener *)pl;

	if (!l)
		return;
	rdma_destroy_id(l->id);
	rdma_destroy_event_channel(l->ec);
	close(l->wake_fd);
	free(l);
}

/* --- accept -------------------------------------------------------------- */

static void reject(struct rdma_cm_id *id, uint8_t reason)
{
	uint8_t d[8] = { 0 };

	pc_put_le32(d, RD_MAGIC);
	d[4] = reason;
	rdma_reject(id, d, sizeof(d));
}

/*
 * Check a connection request. Return: 0 if it is ours with a good token,
 * else the reason to reject it (REJ_*, never an errno). A request
 * replayed from an earlier migration passes here; the challenge
 * (auth_wait()) stops it.
 */
static unsigned check_req(const uint8_t *req, size_t len, const void *key, size_t klen)
{
	uint8_t want[TOKEN_SIZE];

	if (len < REQ_SIZE || pc_get_le32(req) != RD_MAGIC)
		return REJ_AUTH;
	if (req[4] != RD_VERSION)
		return REJ_VERSION;
	if (req[6] == 0 || req[6] > PRECOPY_MAX_CHANNELS || req[5] >= req[6])
		return REJ_AUTH;
	token(key, klen, "PCR2-req", req, 40, NULL, 0, want);
	if (!memeql_sec(want, req + 40, TOKEN_SIZE))
		return REJ_AUTH;
	return 0;
}

/*
 * Wait (at most the timeout) for the connector's first SEND on @ch, the
 * answer to the challenge in @rep, and check it. Return: 0; -EACCES (a
 * wrong or missing answer), -ETIMEDOUT (none), -ECANCELED, -EIO.
 */
static int auth_wait(struct rd_conn *c, struct rd_chan *ch, const uint8_t *req,
		     const uint8_t *rep, const void *key, size_t klen, struct rd_listener *l)
{
	uint64_t deadline = pc_mono_ns() + (uint64_t)c->timeout_ms * 1000000ull;
	uint8_t want[AUTH_SIZE];
	const uint8_t *p;
	struct ibv_wc wc;

	for (;;) {
		int n = ibv_poll_cq(ch->rcq, 1, &wc);

		if (n < 0)
			return -EIO;
		if (n == 1)
			break;
		if (atomic_load(&l->aborted))
			return -ECANCELED;
		if (pc_mono_ns() >= deadline)
			return -ETIMEDOUT;
		sleep_us(500);
	}
	if (wc.status != IBV_WC_SUCCESS || wc.opcode != IBV_WC_RECV || wc.wr_id >= RQ_DEPTH ||
	    wc.byte_len != FRAG_HDR + AUTH_SIZE)
		return -EACCES;
	p = ch->rbuf + (size_t)wc.wr_id * SLOT_SIZE;
	if (p[0] != FRAG_INTERNAL || p[1] != 0 || pc_get_le32(p + 4) != AUTH_SIZE)
		return -EACCES;
	auth_encode(want, req, rep, key, klen);
	if (!memeql_sec(want, p + FRAG_HDR, AUTH_SIZE))
		return -EACCES;
	return rd_rq_repost(c, ch, (unsigned)wc.wr_id) ? -EIO : 0;
}

/* An accept in progress: the connection once its first channel is
 * taken, and what each later channel's request must match. */
struct accepting {
	struct rd_listener *l;
	const struct pc_transport_opts *o;
	const void *key;
	size_t klen;
	struct rd_conn *c;          /* NULL until channel 0 is taken */
	unsigned nchan, have;       /* channels asked for, channels taken */
	uint64_t cookie;            /* channel 0's, which the others repeat */
};

/* Refuse the request of @id, saying @reason (REJ_*), and forget it. */
static void refuse(struct rdma_cm_id *id, unsigned reason)
{
	reject(id, (uint8_t)reason);
	rdma_destroy_id(id);
}

/*
 * The next connection request that may join @a: ours, with a good token,
 * for channel a->have of this migration (of any, for channel 0) and on
 * the same device. Any other is refused with its reason and the wait goes
 * on: for ever before channel 0, ten seconds for each later one.
 * Return: 0 with *@idp and @req (REQ_SIZE bytes, zero-padded); -errno
 * (-ETIMEDOUT, -ECANCELED once the listener is aborted).
 */
static int next_request(struct accepting *a, struct rdma_cm_id **idp, uint8_t *req)
{
	for (;;) {
		struct rdma_cm_event *ev;
		struct rdma_cm_id *id;
		size_t plen;
		unsigned reason;
		int err = get_event(a->l->ec, a->l->wake_fd, &a->l->aborted, NULL,
				    a->c ? 10000 : 1 << 30, &ev);

		if (err)
			return err;
		if (ev->event != RDMA_CM_EVENT_CONNECT_REQUEST) {
			rdma_ack_cm_event(ev); /* a stranger's leftovers */
			continue;
		}
		id = ev->id;
		plen = ev->param.conn.private_data_len;
		memset(req, 0, REQ_SIZE);
		if (ev->param.conn.private_data)
			memcpy(req, ev->param.conn.private_data, plen < REQ_SIZE ? plen : REQ_SIZE);
		rdma_ack_cm_event(ev);
		reason = check_req(req, plen, a->key, a->klen);
		if (!reason && (req[5] != a->have ||
				(a->c && (req[6] != a->nchan || pc_get_le64(req + 8) != a->cookie))))
			reason = REJ_CHANNEL;
		if (!reason && a->c && id->verbs != a->c->verbs)
			reason = REJ_CHANNEL;
		if (!reason) {
			*idp = id;
			return 0;
		}
		refuse(id, reason);
	}
}

/* Channel 0's request @req on @id: the connection it asks for, on its
 * device. On failure @id is refused. Return: 0 or -errno. */
static int accept_first(struct accepting *a, struct rdma_cm_id *id, const uint8_t *req)
{
	int err;

	a->nchan = req[6];
	a->cookie = pc_get_le64(req + 8);
	a->c = rd_conn_new(a->nchan, a->o);
	if (!a->c) {
		refuse(id, REJ_CHANNEL);
		return -ENOMEM;
	}
	a->c->ec = rdma_create_event_channel();
	err = a->c->ec ? rd_conn_init_device(a->c, id->verbs) : -ENODEV;
	if (err) {
		refuse(id, REJ_CHANNEL);
		return err;
	}
	set_nonblock(a->c->ec->fd);
	return 0;
}

/* Wait for ESTABLISHED on @id, still on the listener's event channel;
 * requests that come meanwhile are refused. Return: 0 or -errno. */
static int wait_established(struct rd_listener *l, struct rdma_cm_id *id)
{
	for (;;) {
		struct rdma_cm_event *ev;
		int err = get_event(l->ec, l->wake_fd, &l->aborted, NULL, 10000, &ev);

		if (err)
			return err;
		if (ev->id == id) {
			bool up = ev->event == RDMA_CM_EVENT_ESTABLISHED;

			rdma_ack_cm_event(ev);
			return up ? 0 : -ECONNABORTED;
		}
		if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST) {
			struct rdma_cm_id *other = ev->id;

			rdma_ack_cm_event(ev);
			refuse(other, REJ_CHANNEL);
			continue;
		}
		rdma_ack_cm_event(ev);
	}
}

/* Take @id (request @req) as channel a->have: set the channel up, accept
 * with @rep (the challenge), wait until it is established, then move it to
 * the connection's own event channel. Return: 0 or -errno. */
static int accept_chan(struct accepting *a, struct rdma_cm_id *id, const uint8_t *req,
		       uint8_t *rep)
{
	struct rd_conn *c = a->c;
	struct rd_chan *ch = &c->ch[a->have];
	struct rdma_conn_param cp;
	int err = rd_chan_init(c, ch, id);

	if (err) {
		reject(id, REJ_CHANNEL);
		if (!ch->qp) { /* else rd_conn_free() destroys it with the QP */
			rdma_destroy_id(id);
			ch->id = NULL;
		}
		return err;
	}
	ch->peer_credit_addr = pc_get_le64(req + 24);
	ch->peer_credit_rkey = pc_get_le32(req + 32);
	rep_encode(rep, req, a->have, c, a->key, a->klen);
	memset(&cp, 0, sizeof(cp));
	cp.private_data = rep;
	cp.private_data_len = REP_SIZE;
	cp.retry_count = RETRY_COUNT;
	cp.rnr_retry_count = RNR_RETRY;
	if (rdma_accept(id, &cp))
		return -errno;
	err = wait_established(a->l, id);
	if (!err)
		err = rd_qp_write_only(c, ch);
	if (!err && rdma_migrate_id(id, c->ec))
		err = -errno;
	return err;
}

int rd_accept(struct pc_listener *pl, const struct pc_transport_opts *o,
	      struct pc_transport **out)
{
	struct accepting a = {
		.l = (struct rd_listener *)pl, .o = o,
		.key = o ? o->key : NULL, .klen = o && o->key ? o->key_len : 0,
	};
	int err = 0;

	if (!out)
		return -EINVAL;
	while (!err && (!a.c || a.have < a.nchan)) {
		struct rdma_cm_id *id;
		uint8_t req[REQ_SIZE], rep[REP_SIZE];

		err = next_request(&a, &id, req);
		if (!err && !a.c)
			err = accept_first(&a, id, req);
		if (!err)
			err = accept_chan(&a, id, req, rep);
		if (err)
			break;
		err = auth_wait(a.c, &a.c->ch[a.have], req, rep, a.key, a.klen, a.l);
		if (err == -EACCES || err == -ETIMEDOUT) {
			/* Not the holder of the key (a replayed request, say):
			 * drop what was set up for it and wait on. */
			rd_conn_free(a.c);
			a.c = NULL;
			a.nchan = a.have = 0;
			a.cookie = 0;
			err = 0;
			continue;
		}
		if (!err)
			a.have++;
	}
	if (!err)
		err = rd_conn_start(a.c);
	if (!err) {
		*out = &a.c->base;
		return 0;
	}
	if (a.c) {
		rd_give_why(a.c, o);
		rd_conn_free(a.c);
	}
	return err;
}

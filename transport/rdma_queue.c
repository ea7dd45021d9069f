/* SPDX-License-Identifier: MIT */
/*
 * rdma_queue.c - the RDMA transport's send and receive queues: messages
 * as SENDs, credits, internal messages, heartbeats, and the sticky error
 * every waiter wakes on.
 *
 * Messages are cut into fragments of at most SLOT_SIZE bytes, each with an
 * 8-byte header: u8 kind (engine / internal), u8 flags (more follows),
 * le16 0, le32 total message length. Internal messages carry the keys of
 * exposed regions, heartbeats and their answers, and the challenge's
 * answer (see handle_internal()); the receiving side handles them without
 * returning them to the engine.
 *
 * Flow control: each side posts RQ_DEPTH receives per channel; a sender
 * spends one credit per SEND and learns of reposted buffers through an
 * 8-byte counter the receiver RDMA-WRITEs into its credit word (inline, no
 * receive consumed, so credit returns can never deadlock). A slow receiver
 * thus only slows the sender; no RNR retries are needed.
 *
 * A peer whose process is stopped still has a NIC that acknowledges
 * every WRITE and SEND, so liveness is checked by messages only its
 * process can make: each end's monitor thread sends a PING (a sequence
 * number) on every channel it has heard nothing on for a third of the
 * timeout, and answers the peer's PINGs with a PONG carrying the same
 * number. Any message received counts as hearing from the peer; a
 * channel that hears nothing for the whole timeout fails the connection
 * with -ETIMEDOUT. The monitor takes receive completions itself whenever
 * no engine thread is receiving on the channel, so slow work in the
 * engine (saving device state, verifying) is not taken for silence.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "le.h"
#include "rdma_impl.h"

int rd_fail(struct rd_conn *c, int err, const char *fmt, ...)
{
	va_list ap;

	/* The reason is written before the error is published: a thread
	 * that sees c->err (without the lock) may at once report the
	 * reason, and must not find it empty. Only this function sets
	 * c->err, always under why_lock. */
	pthread_mutex_lock(&c->why_lock);
	if (atomic_load(&c->err) == 0) {
		va_start(ap, fmt);
		vsnprintf(c->base.why, sizeof(c->base.why), fmt, ap);
		va_end(ap);
		atomic_store(&c->err, err);
		rd_poke(c->wake_fd);
		rd_poke(c->stop_fd);
	}
	pthread_mutex_unlock(&c->why_lock);
	return atomic_load(&c->err);
}

int rd_state(struct rd_conn *c)
{
	if (atomic_load(&c->aborted))
		return -ECANCELED;
	return atomic_load(&c->err);
}

static int wc_errno(enum ibv_wc_status st)
{
	switch (st) {
	case IBV_WC_RETRY_EXC_ERR:
	case IBV_WC_RNR_RETRY_EXC_ERR:
	case IBV_WC_WR_FLUSH_ERR:
		return -ECONNRESET;
	default:
		return -EIO;
	}
}

static const char *wc_hint(enum ibv_wc_status st)
{
	switch (st) {
	case IBV_WC_RETRY_EXC_ERR: return " (peer not answering)";
	case IBV_WC_RNR_RETRY_EXC_ERR: return " (peer posted no receive)";
	case IBV_WC_REM_ACCESS_ERR: return " (the peer refused the key or range)";
	case IBV_WC_WR_FLUSH_ERR: return " (queue pair already in error)";
	default: return "";
	}
}

/* Wait until @fd is readable, the connection is woken, or @ms pass. */
static void rd_wait_fd(struct rd_conn *c, int fd, int ms)
{
	struct pollfd p[2] = { { .fd = fd, .events = POLLIN },
			       { .fd = c->wake_fd, .events = POLLIN } };

	if (poll(p, 2, ms) > 0 && (p[0].revents & POLLIN)) {
		/* drained by the caller */
	}
}

static void drain_cq_event(struct ibv_comp_channel *cc)
{
	struct ibv_cq *cq;
	void *ctx;

	while (ibv_get_cq_event(cc, &cq, &ctx) == 0)
		ibv_ack_cq_events(cq, 1);
}

/* --- send queue ---------------------------------------------------------- */

/* Reap send completions; post_lock held. */
static int sq_progress(struct rd_conn *c, struct rd_chan *ch)
{
	struct ibv_wc wc[16];
	int n;

	while ((n = ibv_poll_cq(ch->scq, 16, wc)) > 0) {
		for (int i = 0; i < n; i++) {
			if (wc[i].status != IBV_WC_SUCCESS)
				return rd_fail(c, wc_errno(wc[i].status),
					       "channel %u: %s completion failed: %s%s", ch->idx,
					       wc[i].opcode == IBV_WC_SEND ? "send" : "write",
					       ibv_wc_status_str(wc[i].status),
					       wc_hint(wc[i].status));
			if (wc[i].wr_id + 1 > ch->done)
				ch->done = wc[i].wr_id + 1;
		}
	}
	if (n < 0)
		return rd_fail(c, -EIO, "channel %u: polling the send queue failed", ch->idx);
	if (ch->done > 0)
		ch->bytes_done = ch->wr_end[(ch->done - 1) % SQ_DEPTH];
	if (ch->busy && ch->done == ch->posted) {
		/* Seen when reaped, not when completed: the busy time runs a
		 * little long when nobody polls (an idle sender). */
		ch->busy_ns += pc_mono_ns() - ch->busy_since;
		ch->busy = false;
	}
	return 0;
}

int rd_sq_link_stats(struct rd_conn *c, struct rd_chan *ch, struct pc_tp_link_stats *out)
{
	int err;

	pthread_mutex_lock(&ch->post_lock);
	err = sq_progress(c, ch);
	*out = (struct pc_tp_link_stats){
		.source = PC_TP_LINK_COMPLETIONS,
		.busy_ns = ch->busy_ns + (ch->busy ? pc_mono_ns() - ch->busy_since : 0),
		.delivered = ch->bytes_done,
		.queued = ch->bytes_posted - ch->bytes_done,
	};
	pthread_mutex_unlock(&ch->post_lock);
	return err;
}

/* Wait for room for @nwr WRs (keeping @reserve free) and for every WR
 * below @need_done to have completed. Returns 0 with post_lock held. */
int rd_sq_acquire(struct rd_conn *c, struct rd_chan *ch, unsigned nwr, unsigned reserve,
		  uint64_t need_done)
{
	for (;;) {
		int err = rd_state(c);

		if (err)
			return err;
		pthread_mutex_lock(&ch->post_lock);
		err = sq_progress(c, ch);
		if (!err && ch->posted - ch->done + nwr <= SQ_DEPTH - reserve &&
		    ch->done >= need_done)
			return 0;
		if (!err) {
			ibv_req_notify_cq(ch->scq, 0);
			err = sq_progress(c, ch);
			if (!err && ch->posted - ch->done + nwr <= SQ_DEPTH - reserve &&
			    ch->done >= need_done)
				return 0;
		}
		pthread_mutex_unlock(&ch->post_lock);
		if (err)
			return err;
		rd_wait_fd(c, ch->scc->fd, 200);
		drain_cq_event(ch->scc);
	}
}

/* Post the chain @first of @n WRs; post_lock held. Numbers them and
 * signals every SIGNAL_EVERY-th and, if @last, the final one. */
int rd_sq_post(struct rd_conn *c, struct rd_chan *ch, struct ibv_send_wr *wr, unsigned n,
	       bool last)
{
	struct ibv_send_wr *bad;
	int ret;

	for (unsigned i = 0; i < n; i++) {
		uint64_t seq = ch->posted + i;

		wr[i].wr_id = seq;
		wr[i].next = i + 1 < n ? &wr[i + 1] : NULL;
		wr[i].send_flags &= ~(unsigned)IBV_SEND_SIGNALED;
		if (seq % SIGNAL_EVERY == SIGNAL_EVERY - 1 || (last && i + 1 == n))
			wr[i].send_flags |= IBV_SEND_SIGNALED;
	}
	ret = ibv_post_send(ch->qp, wr, &bad);
	if (ret)
		return rd_fail(c, -ret, "channel %u: ibv_post_send: %s", ch->idx, strerror(ret));
	if (!ch->busy) {
		ch->busy = true;
		ch->busy_since = pc_mono_ns();
	}
	for (unsigned i = 0; i < n; i++) {
		for (int k = 0; k < wr[i].num_sge; k++)
			ch->bytes_posted += wr[i].sg_list[k].length;
		ch->wr_end[(ch->posted + i) % SQ_DEPTH] = ch->bytes_posted;
	}
	ch->posted += n;
	return 0;
}

/* Tell the peer how many receives we have posted on @ch (an inline WRITE
 * of one word into its credit word). Signalled, so it also serves as a
 * keepalive probe. Skipped if the send queue is full; retried later.
 * recv_lock held. */
static void credit_write(struct rd_conn *c, struct rd_chan *ch, bool probe)
{
	uint64_t val = ch->reposted;
	struct ibv_sge sge = { .addr = (uintptr_t)&val, .length = sizeof(val), .lkey = 0 };
	struct ibv_send_wr wr = {
		.sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
		.send_flags = IBV_SEND_INLINE,
	};

	if (rd_state(c))
		return;
	wr.wr.rdma.remote_addr = ch->peer_credit_addr;
	wr.wr.rdma.rkey = ch->peer_credit_rkey;
	pthread_mutex_lock(&ch->post_lock);
	if (sq_progress(c, ch) == 0 && ch->posted - ch->done < SQ_DEPTH &&
	    (!probe || ch->probe_seq == UINT64_MAX || ch->done > ch->probe_seq)) {
		uint64_t seq = ch->posted;

		if (rd_sq_post(c, ch, &wr, 1, true) == 0) {
			ch->reported = val;
			if (probe)
				ch->probe_seq = seq;
		}
	}
	pthread_mutex_unlock(&ch->post_lock);
}

static uint64_t read_credit_word(struct rd_conn *c, unsigned chan)
{
	volatile uint64_t *w = &c->credit_in[chan];
	uint64_t a, b;

	do { /* the NIC writes it; read until two reads agree */
		a = *w;
		b = *w;
	} while (a != b);
	return a;
}

/*
 * Wait for one receive credit on @ch; send_lock held. A peer whose process
 * stopped taking messages (hung, or stopped by a signal) still has a live
 * NIC that acknowledges everything, so only the credits tell: none for the
 * whole timeout fails the connection (-ETIMEDOUT).
 */
static int wait_credit(struct rd_conn *c, struct rd_chan *ch)
{
	uint64_t deadline = 0;

	for (unsigned i = 0;; i++) {
		int err;

		if (RQ_DEPTH + read_credit_word(c, ch->idx) > atomic_load(&ch->sends))
			return 0;
		err = rd_state(c);
		if (err)
			return err;
		if (i == 0) {
			atomic_fetch_add(&c->credit_waits, 1);
			deadline = pc_mono_ns() + (uint64_t)c->timeout_ms * 1000000ull;
		} else if ((i & 63) == 0 && pc_mono_ns() >= deadline) {
			return rd_fail(c, -ETIMEDOUT, "channel %u: the peer has taken no message "
				       "for %u ms (a hung or stopped process?)", ch->idx,
				       c->timeout_ms);
		}
		pthread_mutex_lock(&ch->post_lock);
		err = sq_progress(c, ch);
		pthread_mutex_unlock(&ch->post_lock);
		if (err)
			return err;
		if (i < 50)
			sched_yield();
		else
			sleep_us(i < 1000 ? 50 : 1000);
	}
}

/* Send one message of @kind as fragments on @ch. */
int rd_send(struct rd_conn *c, unsigned chan, unsigned kind, const struct iovec *iov,
	    int iovcnt)
{
	struct rd_chan *ch = &c->ch[chan];
	size_t total = 0, sent = 0;
	int vi = 0, err;
	size_t voff = 0;

	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (total > PC_MSG_MAX)
		return -EMSGSIZE;
	pthread_mutex_lock(&ch->send_lock);
	do {
		size_t n = total - sent < FRAG_MAX ? total - sent : FRAG_MAX;
		unsigned slot = ch->next_slot;
		uint8_t *p = ch->sbuf + (size_t)slot * SLOT_SIZE;
		struct ibv_sge sge = { .addr = (uintptr_t)p, .length = (uint32_t)(FRAG_HDR + n),
				       .lkey = ch->smr->lkey };
		struct ibv_send_wr wr = { .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND };
		bool last = sent + n == total;
		size_t k = 0;

		err = wait_credit(c, ch);
		if (err)
			break;
		err = rd_sq_acquire(c, ch, 1, SQ_RESERVE,
				 ch->slot_seq[slot] == UINT64_MAX ? 0 : ch->slot_seq[slot] + 1);
		if (err)
			break;
		p[0] = (uint8_t)kind;
		p[1] = last ? 0 : FRAG_MORE;
		p[2] = p[3] = 0;
		pc_put_le32(p + 4, (uint32_t)total);
		while (k < n) {
			size_t m = iov[vi].iov_len - voff;

			if (m > n - k)
				m = n - k;
			memcpy(p + FRAG_HDR + k, (const uint8_t *)iov[vi].iov_base + voff, m);
			k += m;
			voff += m;
			if (voff == iov[vi].iov_len) {
				vi++;
				voff = 0;
			}
		}
		ch->slot_seq[slot] = ch->posted;
		err = rd_sq_post(c, ch, &wr, 1, last);
		if (!err)
			atomic_fetch_add(&ch->sends, 1);
		pthread_mutex_unlock(&ch->post_lock);
		if (err)
			break;
		ch->next_slot = (slot + 1) % SEND_SLOTS;
		atomic_fetch_add(&c->send_wrs, 1);
		atomic_fetch_add(&c->send_bytes, n);
		sent += n;
		while (vi < iovcnt && voff == iov[vi].iov_len) {
			vi++;
			voff = 0;
		}
	} while (sent < total);
	pthread_mutex_unlock(&ch->send_lock);
	return err;
}

/*
 * Send a PING or PONG (@type) numbered @seq on @ch without waiting: an
 * inline SEND that needs no send slot and no send_lock, so it may fall
 * between the fragments of an engine message (the receiver takes it out
 * of the way). It spends a receive credit only when at least two are
 * left: an engine sender that saw one free keeps it. Return: whether it
 * went (no credit or no room in the send queue: not now).
 */
static bool hb_send(struct rd_conn *c, struct rd_chan *ch, unsigned type, uint64_t seq)
{
	uint8_t m[FRAG_HDR + HB_SIZE];
	struct ibv_sge sge = { .addr = (uintptr_t)m, .length = sizeof(m), .lkey = 0 };
	struct ibv_send_wr wr = { .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND,
				  .send_flags = IBV_SEND_INLINE };
	bool sent = false;

	memset(m, 0, sizeof(m));
	m[0] = FRAG_INTERNAL;
	pc_put_le32(m + 4, HB_SIZE);
	m[FRAG_HDR] = (uint8_t)type;
	pc_put_le64(m + FRAG_HDR + 8, seq);
	if (rd_state(c))
		return false;
	pthread_mutex_lock(&ch->post_lock);
	if (sq_progress(c, ch) == 0 && ch->posted - ch->done + 1 <= SQ_DEPTH - 2 &&
	    RQ_DEPTH + read_credit_word(c, ch->idx) >= atomic_load(&ch->sends) + 2 &&
	    rd_sq_post(c, ch, &wr, 1, true) == 0) {
		atomic_fetch_add(&ch->sends, 1);
		sent = true;
	}
	pthread_mutex_unlock(&ch->post_lock);
	return sent;
}

/* Let posted sends reach the peer before the queue pairs go: the last
 * message (a result, an ack) must not be flushed by our own disconnect. */
void rd_drain_sends(struct rd_conn *c)
{
	uint64_t deadline = pc_mono_ns() + 2000000000ull;

	for (unsigned i = 0; i < c->base.nchan; i++) {
		struct rd_chan *ch = &c->ch[i];

		if (!ch->qp)
			continue;
		for (;;) {
			bool idle;

			if (atomic_load(&c->err) || pc_mono_ns() > deadline)
				return;
			pthread_mutex_lock(&ch->post_lock);
			sq_progress(c, ch);
			idle = ch->done >= ch->posted;
			pthread_mutex_unlock(&ch->post_lock);
			if (idle)
				break;
			sleep_us(200);
		}
	}
}

/* --- receive queue ------------------------------------------------------- */

int rd_post_recv(struct rd_chan *ch, unsigned slot)
{
	struct ibv_sge sge = { .addr = (uintptr_t)(ch->rbuf + (size_t)slot * SLOT_SIZE),
			       .length = SLOT_SIZE, .lkey = ch->rmr->lkey };
	struct ibv_recv_wr wr = { .wr_id = slot, .sg_list = &sge, .num_sge = 1 }, *bad;

	return ibv_post_recv(ch->qp, &wr, &bad);
}

static int rq_post(struct rd_conn *c, struct rd_chan *ch, unsigned slot)
{
	int ret = rd_post_recv(ch, slot);

	if (ret)
		return rd_fail(c, -ret, "channel %u: ibv_post_recv: %s", ch->idx, strerror(ret));
	return 0;
}

/* Give a consumed buffer back and return credits when enough piled up. */
int rd_rq_repost(struct rd_conn *c, struct rd_chan *ch, unsigned slot)
{
	int err = rq_post(c, ch, slot);

	if (err)
		return err;
	ch->reposted++;
	if (ch->reposted - ch->reported >= RQ_DEPTH / 4)
		credit_write(c, ch, false);
	return 0;
}

/* The next receive completion without waiting: 1, 0 (none) or -errno. */
static int rq_next(struct rd_conn *c, struct rd_chan *ch, struct ibv_wc *wc)
{
	int n;

	if (ch->stash_n) {
		*wc = ch->stash[ch->stash_head];
		ch->stash_head = (ch->stash_head + 1) % RQ_DEPTH;
		ch->stash_n--;
		return 1;
	}
	n = ibv_poll_cq(ch->rcq, 1, wc);
	if (n < 0)
		return rd_fail(c, -EIO, "channel %u: polling the receive queue failed", ch->idx);
	if (n == 1 && wc->status == IBV_WC_SUCCESS)
		atomic_store(&ch->heard_ns, pc_mono_ns());
	return n;
}

/* A failed receive completion: report the send side's cause if it has one. */
static int rq_error(struct rd_conn *c, struct rd_chan *ch, const struct ibv_wc *wc)
{
	pthread_mutex_lock(&ch->post_lock);
	sq_progress(c, ch);
	pthread_mutex_unlock(&ch->post_lock);
	if (wc->status == IBV_WC_WR_FLUSH_ERR)
		return rd_fail(c, -ECONNRESET, "channel %u: connection to the peer lost", ch->idx);
	return rd_fail(c, wc_errno(wc->status), "channel %u: receive failed: %s", ch->idx,
		       ibv_wc_status_str(wc->status));
}

/* Check a fragment; on success *@p points at its header. */
static int frag_check(struct rd_conn *c, struct rd_chan *ch, const struct ibv_wc *wc,
		      uint8_t **p)
{
	if (wc->status != IBV_WC_SUCCESS)
		return rq_error(c, ch, wc);
	if (wc->wr_id >= RQ_DEPTH || wc->opcode != IBV_WC_RECV || wc->byte_len < FRAG_HDR ||
	    wc->byte_len > SLOT_SIZE)
		return rd_fail(c, -EPROTO, "channel %u: malformed fragment (%u bytes)", ch->idx,
			       wc->byte_len);
	*p = ch->rbuf + (size_t)wc->wr_id * SLOT_SIZE;
	if ((*p)[0] != FRAG_ENGINE && (*p)[0] != FRAG_INTERNAL)
		return rd_fail(c, -EPROTO, "channel %u: fragment of unknown kind %u", ch->idx,
			       (*p)[0]);
	return 0;
}

/* The type of the internal message whose fragment is at @p, @len bytes. */
static unsigned int_type(const uint8_t *p, size_t len)
{
	return len > FRAG_HDR ? p[FRAG_HDR] : 0;
}

/*
 * An internal message (payload after the fragment header, little-endian):
 *   REGION  u8 1, 3 zero, le32 id, le32 rkey, le64 addr, le64 len
 *   PING    u8 2, 3 zero, le32 0, le64 seq (from 1 up)
 *   PONG    u8 3, 3 zero, le32 0, le64 seq of the PING answered
 *   AUTH    u8 4, 3 zero, 16 bytes: the answer to the challenge (connect only)
 */
static int handle_internal(struct rd_conn *c, struct rd_chan *ch, const uint8_t *p, size_t len)
{
	uint32_t id, rkey;
	uint64_t addr, rlen, seq;
	unsigned type = int_type(p, len);

	if (p[1] & FRAG_MORE)
		return rd_fail(c, -EPROTO, "channel %u: malformed internal message", ch->idx);
	if (type == INT_PING || type == INT_PONG) {
		if (len < FRAG_HDR + HB_SIZE || (seq = pc_get_le64(p + FRAG_HDR + 8)) == 0)
			return rd_fail(c, -EPROTO, "channel %u: malformed heartbeat", ch->idx);
		if (type == INT_PONG) {
			if (seq > atomic_load(&ch->ping_seq))
				return rd_fail(c, -EPROTO, "channel %u: an answer to heartbeat %llu, "
					       "which was never sent", ch->idx,
					       (unsigned long long)seq);
			return 0;
		}
		/* the monitor answers it, now */
		atomic_store(&ch->pong_due, seq);
		rd_poke(c->stop_fd);
		return 0;
	}
	if (len < FRAG_HDR + 28 || type != INT_REGION)
		return rd_fail(c, -EPROTO, "channel %u: malformed internal message (type %u)",
			       ch->idx, type);
	p += FRAG_HDR + 4;
	id = pc_get_le32(p);
	rkey = pc_get_le32(p + 4);
	addr = pc_get_le64(p + 8);
	rlen = pc_get_le64(p + 16);
	if (id >= PRECOPY_MAX_REGIONS || rlen == 0 || addr + rlen < addr)
		return rd_fail(c, -EPROTO, "channel %u: bad region key message (region %u)",
			       ch->idx, id);
	pthread_mutex_lock(&c->reg_lock);
	c->rem[id] = (struct rd_remote){ .addr = addr, .len = rlen, .rkey = rkey, .valid = true };
	pthread_cond_broadcast(&c->reg_cv);
	pthread_mutex_unlock(&c->reg_lock);
	return 0;
}

/* Wait for a receive completion event (or a wake-up, or @ms). recv_lock held. */
static void rq_wait(struct rd_conn *c, struct rd_chan *ch, int ms)
{
	uint64_t now = pc_mono_ns();

	if (ch->reposted != ch->reported)
		credit_write(c, ch, false);
	/* surface a send-side failure even when only receiving */
	if (pthread_mutex_trylock(&ch->post_lock) == 0) {
		sq_progress(c, ch);
		pthread_mutex_unlock(&ch->post_lock);
	}
	if (!ch->idle_since)
		ch->idle_since = now;
	else if (now - ch->idle_since > PROBE_MS * 1000000ull) {
		credit_write(c, ch, true);
		ch->idle_since = now;
	}
	rd_wait_fd(c, ch->rcc->fd, ms);
	drain_cq_event(ch->rcc);
}

/* --- messages ------------------------------------------------------------ */

int rd_send_msg(struct pc_transport *t, unsigned chan, const struct iovec *iov,
		int iovcnt)
{
	struct rd_conn *c = (struct rd_conn *)t;
	int err = rd_state(c);

	if (err)
		return err;
	if (chan >= t->nchan || (iovcnt && !iov) || iovcnt < 0)
		return -EINVAL;
	return rd_send(c, chan, FRAG_ENGINE, iov, iovcnt);
}

int rd_recv_msg(struct pc_transport *t, unsigned chan, void *buf, size_t cap,
		size_t *lenp)
{
	struct rd_conn *c = (struct rd_conn *)t;
	struct rd_chan *ch;
	size_t off = 0, total = 0;
	bool started = false;
	int err = 0;

	if (chan >= t->nchan || !lenp || (cap && !buf))
		return -EINVAL;
	ch = &c->ch[chan];
	pthread_mutex_lock(&ch->recv_lock);
	ch->idle_since = 0;
	for (;;) {
		struct ibv_wc wc;
		uint8_t *p = NULL;
		size_t plen;
		int got;

		if (atomic_load(&c->aborted)) {
			err = -ECANCELED;
			break;
		}
		got = rq_next(c, ch, &wc);
		if (got == 0) {
			/* nothing queued: a failure now counts; then sleep */
			err = atomic_load(&c->err);
			if (err)
				break;
			ibv_req_notify_cq(ch->rcq, 0);
			got = rq_next(c, ch, &wc);
			if (got == 0) {
				rq_wait(c, ch, 1000);
				continue;
			}
		}
		if (got < 0) {
			err = got;
			break;
		}
		ch->idle_since = 0;
		err = frag_check(c, ch, &wc, &p);
		if (err)
			break;
		plen = wc.byte_len - FRAG_HDR;
		if (p[0] == FRAG_INTERNAL) {
			unsigned type = int_type(p, wc.byte_len);

			/* a heartbeat may fall between fragments (hb_send) */
			if (started && type != INT_PING && type != INT_PONG) {
				err = rd_fail(c, -EPROTO, "channel %u: internal message inside "
					      "a message", chan);
				break;
			}
			err = handle_internal(c, ch, p, wc.byte_len);
			if (!err)
				err = rd_rq_repost(c, ch, (unsigned)wc.wr_id);
			if (err)
				break;
			continue;
		}
		if (!started) {
			total = pc_get_le32(p + 4);
			if (total > PC_MSG_MAX) {
				err = rd_fail(c, -EPROTO, "channel %u: message of %zu bytes, over "
					      "the %u limit", chan, total, PC_MSG_MAX);
				break;
			}
			if (total > cap) {
				err = rd_fail(c, -EMSGSIZE, "channel %u: message of %zu bytes "
					      "for a %zu-byte buffer", chan, total, cap);
				break;
			}
			started = true;
		} else if (pc_get_le32(p + 4) != total) {
			err = rd_fail(c, -EPROTO, "channel %u: fragment of another message", chan);
			break;
		}
		if (plen > total - off) {
			err = rd_fail(c, -EPROTO, "channel %u: fragments longer than the message",
				      chan);
			break;
		}
		memcpy((uint8_t *)buf + off, p + FRAG_HDR, plen);
		off += plen;
		err = rd_rq_repost(c, ch, (unsigned)wc.wr_id);
		if (err)
			break;
		if (!(p[1] & FRAG_MORE)) {
			if (off != total) {
				err = rd_fail(c, -EPROTO, "channel %u: message cut short", chan);
				break;
			}
			*lenp = total;
			break;
		}
	}
	pthread_mutex_unlock(&ch->recv_lock);
	return err;
}

/*
 * Take @ch's queued receives when no one is receiving on it: internal
 * messages (region keys, heartbeats) are handled, engine fragments and
 * failed completions stashed for recv_msg, and the freed buffers
 * credited back to the peer. Called by write_pages when a key is missing,
 * and by the monitor, so that heartbeats are heard and answered while
 * the engine is busy elsewhere.
 */
void rd_sweep(struct rd_conn *c, struct rd_chan *ch)
{
	struct ibv_wc wc;
	uint8_t *p;

	if (pthread_mutex_trylock(&ch->recv_lock) != 0)
		return; /* the channel's receiver is in recv_msg: it handles them */
	while (ch->stash_n < RQ_DEPTH && ibv_poll_cq(ch->rcq, 1, &wc) == 1) {
		if (wc.status == IBV_WC_SUCCESS) {
			atomic_store(&ch->heard_ns, pc_mono_ns());
			if (wc.wr_id < RQ_DEPTH && wc.opcode == IBV_WC_RECV &&
			    wc.byte_len > FRAG_HDR && wc.byte_len <= SLOT_SIZE) {
				unsigned type;

				p = ch->rbuf + (size_t)wc.wr_id * SLOT_SIZE;
				type = int_type(p, wc.byte_len);
				if (p[0] == FRAG_INTERNAL && type != INT_AUTH &&
				    handle_internal(c, ch, p, wc.byte_len) == 0) {
					rd_rq_repost(c, ch, (unsigned)wc.wr_id);
					continue;
				}
			}
		}
		ch->stash[(ch->stash_head + ch->stash_n) % RQ_DEPTH] = wc;
		ch->stash_n++;
	}
	if (ch->reposted != ch->reported)
		credit_write(c, ch, false);
	pthread_mutex_unlock(&ch->recv_lock);
}

/* --- heartbeats ---------------------------------------------------------- */

/*
 * Heartbeats, from the monitor: take what arrived on channels no one is
 * receiving on, answer the peer's PINGs, fail a channel that heard
 * nothing for the timeout, and PING one that heard nothing for a third
 * of it.
 */
void rd_heartbeat(struct rd_conn *c)
{
	uint64_t to = (uint64_t)c->timeout_ms * 1000000ull, third = to / 3;

	for (unsigned i = 0; i < c->base.nchan; i++) {
		struct rd_chan *ch = &c->ch[i];
		uint64_t due, heard, now, seq;

		if (rd_state(c) || atomic_load(&c->quiet))
			return;
		rd_sweep(c, ch);
		due = atomic_exchange(&ch->pong_due, 0);
		if (due && !hb_send(c, ch, INT_PONG, due)) {
			uint64_t none = 0;

			/* not now: again at the next tick, unless a newer PING came */
			atomic_compare_exchange_strong(&ch->pong_due, &none, due);
		}
		now = pc_mono_ns();
		heard = atomic_load(&ch->heard_ns);
		if (now <= heard)
			continue;
		if (now - heard >= to) {
			rd_fail(c, -ETIMEDOUT, "channel %u: nothing from the peer for %u ms, "
				"not even a heartbeat (a hung or stopped process?)", ch->idx,
				c->timeout_ms);
			return;
		}
		if (now - heard >= third && now - ch->ping_ns >= third) {
			seq = atomic_load(&ch->ping_seq) + 1;
			atomic_store(&ch->ping_seq, seq); /* before its answer can come */
			if (hb_send(c, ch, INT_PING, seq))
				ch->ping_ns = now;
		}
	}
}

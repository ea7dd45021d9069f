/* SPDX-License-Identifier: MIT */
/*
 * rdma.c - the RDMA verbs transport: "rdma:HOST:PORT" (rdma_cm addressing).
 *
 * One RC queue pair per channel, connected with rdma_cm. Pages go by
 * IBV_WR_RDMA_WRITE straight from the source's memory (the SGEs point into
 * it; no bounce buffer) into regions the destination registered for remote
 * write. Messages go by IBV_WR_SEND into pre-posted receive buffers; a SEND
 * posted after the WRITEs on the same queue pair completes at the peer only
 * once those WRITEs are placed, which is the ordering transport.h asks for.
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
 * Failure: completion errors, async QP events and rdma_cm DISCONNECTED
 * events set a sticky error (with why[]) and wake every waiter through an
 * eventfd; abort() does the same with -ECANCELED. Queue pairs use
 * retry_cnt = rnr_retry = 6 and an ACK timeout of 14 (about 67 ms), so a
 * dead peer shows within about two seconds; an idle receiver probes the
 * peer every two seconds with a one-word WRITE.
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
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <infiniband/verbs.h>
#include <nettle/hmac.h>
#include <nettle/memops.h>
#include <rdma/rdma_cma.h>

#include "le.h"
#include "precopy.h"
#include "rdma.h"
#include "transport.h"

#define RD_MAGIC 0x31524350u /* "PCR1" */
#define RD_VERSION 2
#define REQ_SIZE 56
#define REP_SIZE 56
#define TOKEN_SIZE 16
#define CHAL_SIZE 16
#define AUTH_SIZE (4 + TOKEN_SIZE)    /* internal AUTH message */
#define HB_SIZE 16                    /* internal PING / PONG message */

#define SLOT_SIZE (64u * 1024)        /* receive / send buffer slot */
#define FRAG_HDR 8u
#define FRAG_MAX (SLOT_SIZE - FRAG_HDR)
#define RQ_DEPTH 64u                  /* receives posted per channel */
#define SEND_SLOTS 16u                /* send buffer slots per channel */
#define SQ_DEPTH 256u                 /* send queue entries */
#define SQ_RESERVE 4u                 /* kept free for credit writes */
#define SIGNAL_EVERY 16u              /* one signalled WR per this many */
#define POST_BATCH 16u                /* WRs chained into one post */
#define MAX_SGE 16u
#define WR_MAX_BYTES (1u << 30)
#define CHUNK_SHIFT 24                /* on-demand registration: 16 MiB */
#define MAX_LOCAL 256                 /* reg_local ranges */

#define ACK_TIMEOUT 14                /* 4.096 us << 14 = 67 ms */
#define RETRY_COUNT 6                 /* 7 would mean forever in rxe */
#define RNR_RETRY 6
#define DEFAULT_TIMEOUT_MS 15000
#define PROBE_MS 2000                 /* idle receiver probes the peer */
#define KEY_WAIT_MS 2000              /* write_pages waits for a key this long */

enum { FRAG_ENGINE = 1, FRAG_INTERNAL = 2 };
enum { FRAG_MORE = 1 };
enum { INT_REGION = 1, INT_PING = 2, INT_PONG = 3, INT_AUTH = 4 };
enum { REJ_AUTH = 1, REJ_CHANNEL = 2, REJ_VERSION = 3 };

struct rd_chan {
	unsigned idx;
	struct rdma_cm_id *id;
	struct ibv_qp *qp;
	struct ibv_comp_channel *scc, *rcc;
	struct ibv_cq *scq, *rcq;

	/* send side: send_lock serialises senders and is held while they
	 * wait; post_lock guards the queue accounting and is never held
	 * while blocking (credit returns from the receiver take it). */
	pthread_mutex_t send_lock;
	pthread_mutex_t post_lock;
	uint64_t posted, done;      /* WR sequence numbers; done = all below it completed */
	uint64_t probe_seq;         /* last keepalive WR, or UINT64_MAX */
	_Atomic uint64_t sends;     /* SENDs posted: receive credits spent */
	uint8_t *sbuf;
	struct ibv_mr *smr;
	uint64_t slot_seq[SEND_SLOTS];
	unsigned next_slot;
	uint64_t peer_credit_addr;
	uint32_t peer_credit_rkey;

	/* receive side */
	pthread_mutex_t recv_lock;
	uint8_t *rbuf;
	struct ibv_mr *rmr;
	uint64_t reposted, reported;
	struct ibv_wc stash[RQ_DEPTH]; /* completions taken early (key fetch) */
	unsigned stash_head, stash_n;
	uint64_t idle_since;        /* ns; receiver waiting since */

	/* heartbeats */
	_Atomic uint64_t heard_ns;  /* last message received from the peer */
	_Atomic uint64_t ping_seq;  /* last PING sent (numbers start at 1) */
	_Atomic uint64_t pong_due;  /* PING of the peer's to answer, or 0 */
	uint64_t ping_ns;           /* when the last PING went (monitor only) */
};

struct rd_remote {
	uint64_t addr, len;
	uint32_t rkey;
	bool valid;
};

struct rd_local {
	uintptr_t start;
	size_t len;
	uintptr_t base;             /* start rounded down to a chunk */
	size_t nchunks;
	_Atomic(struct ibv_mr *) *chunk;
	struct ibv_mr *whole;       /* pin-all */
};

struct rd_conn {
	struct pc_transport base;
	struct rd_conn *next;       /* global list, for async event routing */
	struct rdma_event_channel *ec;
	struct ibv_context *verbs;
	struct ibv_pd *pd;
	unsigned max_sge;
	unsigned timeout_ms;
	struct rd_chan ch[PRECOPY_MAX_CHANNELS];

	uint64_t *credit_in;        /* one word per channel, written by the peer */
	struct ibv_mr *credit_mr;

	pthread_mutex_t reg_lock;   /* rem[] and exp[] */
	pthread_cond_t reg_cv;
	struct rd_remote rem[PRECOPY_MAX_REGIONS];
	struct ibv_mr *exp[PRECOPY_MAX_REGIONS];

	pthread_mutex_t local_lock; /* loc[] and registering chunks */
	struct rd_local loc[MAX_LOCAL];
	_Atomic unsigned nloc;
	bool pin_all;

	atomic_bool aborted;
	const atomic_bool *cancel;  /* connect only: the caller's cancel flag */
	atomic_int err;
	pthread_mutex_t why_lock;
	int wake_fd;                /* eventfd: readable once aborted or failed */
	int stop_fd;                /* eventfd: pokes the monitor (failure, close) */
	pthread_t monitor;
	bool monitor_started;
	atomic_bool closing;        /* tells the monitor thread to end */
	atomic_bool quiet;          /* closing: no more heartbeats */

	_Atomic uint64_t write_guest_bytes, send_bytes; /* zero-copy proof (pc_rdma_stats) */
	_Atomic uint64_t reg_ns, reg_bytes, reg_count, write_wrs, write_bytes, send_wrs,
		credit_waits;
};

struct rd_listener {
	struct pc_listener base;
	struct rdma_event_channel *ec;
	struct rdma_cm_id *id;
	atomic_bool aborted;
	int wake_fd;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct rd_conn *g_conns;

/* --- small helpers ------------------------------------------------------ */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_us(unsigned us)
{
	struct timespec ts = { 0, (long)us * 1000 };

	nanosleep(&ts, NULL);
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
}

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

/* Record the connection's first failure and wake every waiter. Returns
 * the sticky error (which may be an earlier one). */
static int rd_fail(struct rd_conn *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int rd_fail(struct rd_conn *c, int err, const char *fmt, ...)
{
	int none = 0;
	uint64_t one = 1;
	va_list ap;

	pthread_mutex_lock(&c->why_lock);
	if (atomic_compare_exchange_strong(&c->err, &none, err)) {
		va_start(ap, fmt);
		vsnprintf(c->base.why, sizeof(c->base.why), fmt, ap);
		va_end(ap);
		if (write(c->wake_fd, &one, sizeof(one)) < 0 ||
		    write(c->stop_fd, &one, sizeof(one)) < 0) {
			/* the counters cannot overflow */
		}
	}
	pthread_mutex_unlock(&c->why_lock);
	return atomic_load(&c->err);
}

/* -ECANCELED after abort, the sticky error, or 0. */
static int rd_state(struct rd_conn *c)
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
	return 0;
}

/* Wait for room for @nwr WRs (keeping @reserve free) and for every WR
 * below @need_done to have completed. Returns 0 with post_lock held. */
static int sq_acquire(struct rd_conn *c, struct rd_chan *ch, unsigned nwr, unsigned reserve,
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
static int sq_post(struct rd_conn *c, struct rd_chan *ch, struct ibv_send_wr *wr, unsigned n,
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

		if (sq_post(c, ch, &wr, 1, true) == 0) {
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
			deadline = now_ns() + (uint64_t)c->timeout_ms * 1000000ull;
		} else if ((i & 63) == 0 && now_ns() >= deadline) {
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
static int rd_send(struct rd_conn *c, unsigned chan, unsigned kind, const struct iovec *iov,
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
		err = sq_acquire(c, ch, 1, SQ_RESERVE,
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
		err = sq_post(c, ch, &wr, 1, last);
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
	    sq_post(c, ch, &wr, 1, true) == 0) {
		atomic_fetch_add(&ch->sends, 1);
		sent = true;
	}
	pthread_mutex_unlock(&ch->post_lock);
	return sent;
}

/* --- receive queue ------------------------------------------------------- */

static int rq_post(struct rd_conn *c, struct rd_chan *ch, unsigned slot)
{
	struct ibv_sge sge = { .addr = (uintptr_t)(ch->rbuf + (size_t)slot * SLOT_SIZE),
			       .length = SLOT_SIZE, .lkey = ch->rmr->lkey };
	struct ibv_recv_wr wr = { .wr_id = slot, .sg_list = &sge, .num_sge = 1 }, *bad;
	int ret = ibv_post_recv(ch->qp, &wr, &bad);

	if (ret)
		return rd_fail(c, -ret, "channel %u: ibv_post_recv: %s", ch->idx, strerror(ret));
	return 0;
}

/* Give a consumed buffer back and return credits when enough piled up. */
static int rq_repost(struct rd_conn *c, struct rd_chan *ch, unsigned slot)
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
		atomic_store(&ch->heard_ns, now_ns());
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
	uint64_t addr, rlen, seq, one = 1;
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
		if (write(c->stop_fd, &one, sizeof(one)) < 0) {
			/* the counter cannot overflow */
		}
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
	uint64_t now = now_ns();

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

/* --- ops: data ----------------------------------------------------------- */

static int rd_send_msg(struct pc_transport *t, unsigned chan, const struct iovec *iov,
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

static int rd_recv_msg(struct pc_transport *t, unsigned chan, void *buf, size_t cap,
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
				err = rq_repost(c, ch, (unsigned)wc.wr_id);
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
		err = rq_repost(c, ch, (unsigned)wc.wr_id);
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
static void sweep(struct rd_conn *c, struct rd_chan *ch)
{
	struct ibv_wc wc;
	uint8_t *p;

	if (pthread_mutex_trylock(&ch->recv_lock) != 0)
		return; /* the channel's receiver is in recv_msg: it handles them */
	while (ch->stash_n < RQ_DEPTH && ibv_poll_cq(ch->rcq, 1, &wc) == 1) {
		if (wc.status == IBV_WC_SUCCESS) {
			atomic_store(&ch->heard_ns, now_ns());
			if (wc.wr_id < RQ_DEPTH && wc.opcode == IBV_WC_RECV &&
			    wc.byte_len > FRAG_HDR && wc.byte_len <= SLOT_SIZE) {
				unsigned type;

				p = ch->rbuf + (size_t)wc.wr_id * SLOT_SIZE;
				type = int_type(p, wc.byte_len);
				if (p[0] == FRAG_INTERNAL && type != INT_AUTH &&
				    handle_internal(c, ch, p, wc.byte_len) == 0) {
					rq_repost(c, ch, (unsigned)wc.wr_id);
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

/* Region keys come on channel 0. */
static void fetch_keys(struct rd_conn *c)
{
	sweep(c, &c->ch[0]);
}

static int get_remote(struct rd_conn *c, uint32_t id, struct rd_remote *out)
{
	uint64_t deadline = now_ns() + KEY_WAIT_MS * 1000000ull;

	if (id >= PRECOPY_MAX_REGIONS)
		return rd_fail(c, -EINVAL, "region %u out of range", id);
	for (;;) {
		int err;

		pthread_mutex_lock(&c->reg_lock);
		*out = c->rem[id];
		pthread_mutex_unlock(&c->reg_lock);
		if (out->valid)
			return 0;
		err = rd_state(c);
		if (err)
			return err;
		if (now_ns() > deadline)
			return rd_fail(c, -ENOENT, "the peer has not exposed region %u", id);
		fetch_keys(c);
		pthread_mutex_lock(&c->reg_lock);
		if (!c->rem[id].valid) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 2000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&c->reg_cv, &c->reg_lock, &ts);
		}
		pthread_mutex_unlock(&c->reg_lock);
	}
}

/* --- local registration ---------------------------------------------------- */

/* ibv_reg_mr() of guest memory, counted in reg_ns/bytes/count. */
static struct ibv_mr *reg_timed(struct rd_conn *c, void *addr, size_t len, int access)
{
	uint64_t t0 = now_ns();
	struct ibv_mr *mr = ibv_reg_mr(c->pd, addr, len, access);

	if (mr) {
		atomic_fetch_add(&c->reg_ns, now_ns() - t0);
		atomic_fetch_add(&c->reg_bytes, len);
		atomic_fetch_add(&c->reg_count, 1);
	}
	return mr;
}

/* The MR covering @a and how many bytes of it lie from @a on; registers a
 * chunk the first time it is touched. NULL (failed) if @a is not in a
 * reg_local range or registration fails. */
static struct ibv_mr *local_mr(struct rd_conn *c, uintptr_t a, size_t *avail)
{
	unsigned n = atomic_load(&c->nloc);

	for (unsigned i = 0; i < n; i++) {
		struct rd_local *l = &c->loc[i];
		size_t k;
		uintptr_t cs, ce;
		struct ibv_mr *mr;

		if (a < l->start || a - l->start >= l->len)
			continue;
		if (l->whole) {
			*avail = l->start + l->len - a;
			return l->whole;
		}
		k = (a - l->base) >> CHUNK_SHIFT;
		cs = l->base + ((uintptr_t)k << CHUNK_SHIFT);
		ce = cs + ((uintptr_t)1 << CHUNK_SHIFT);
		if (cs < l->start)
			cs = l->start;
		if (ce > l->start + l->len)
			ce = l->start + l->len;
		mr = atomic_load(&l->chunk[k]);
		if (!mr) {
			pthread_mutex_lock(&c->local_lock);
			mr = atomic_load(&l->chunk[k]);
			if (!mr) {
				mr = reg_timed(c, (void *)cs, ce - cs, 0);
				atomic_store(&l->chunk[k], mr);
			}
			pthread_mutex_unlock(&c->local_lock);
			if (!mr)
				return NULL;
		}
		*avail = ce - a;
		return mr;
	}
	return NULL;
}

static int rd_reg_local(struct pc_transport *t, const void *addr, size_t len)
{
	struct rd_conn *c = (struct rd_conn *)t;
	struct rd_local *l;
	uintptr_t a = (uintptr_t)addr;
	long pg = sysconf(_SC_PAGESIZE);
	int err = rd_state(c);

	if (err)
		return err;
	if (!addr || !len || a + len < a)
		return -EINVAL;
	/*
	 * Give every page its own frame before it can be pinned: a read-only
	 * pin of a never-written anonymous page would pin the shared zero
	 * page, and a later write by the guest would go to a new page the MR
	 * never sees. Populating for write changes no byte. Done here, before
	 * the engine arms the dirty log, so it marks nothing dirty.
	 */
	{
		uintptr_t ps = a & ~(uintptr_t)(pg - 1);
		uintptr_t pe = (a + len + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1);

		if (madvise((void *)ps, pe - ps, MADV_POPULATE_WRITE) != 0) {
			for (uintptr_t p = ps; p < pe; p += (uintptr_t)pg)
				__atomic_fetch_or((uint8_t *)p, 0, __ATOMIC_RELAXED);
		}
	}
	pthread_mutex_lock(&c->local_lock);
	if (atomic_load(&c->nloc) == MAX_LOCAL) {
		pthread_mutex_unlock(&c->local_lock);
		return -ENOSPC;
	}
	l = &c->loc[atomic_load(&c->nloc)];
	memset(l, 0, sizeof(*l));
	l->start = a;
	l->len = len;
	l->base = a & ~(((uintptr_t)1 << CHUNK_SHIFT) - 1);
	/* Local read only: the kernel pins the pages read-only, so writes
	 * by the guest still fault into the dirty tracker. */
	if (c->pin_all) {
		l->whole = reg_timed(c, (void *)addr, len, 0);
		if (!l->whole)
			err = errno ? -errno : -ENOMEM;
	} else {
		l->nchunks = ((a + len - l->base) >> CHUNK_SHIFT) + 1;
		l->chunk = calloc(l->nchunks, sizeof(*l->chunk));
		if (!l->chunk)
			err = -ENOMEM;
	}
	if (!err)
		atomic_fetch_add(&c->nloc, 1);
	pthread_mutex_unlock(&c->local_lock);
	if (err)
		rd_fail(c, err, "registering %zu bytes of source memory: %s", len, strerror(-err));
	return err;
}

/* --- write_pages ------------------------------------------------------------ */

struct wr_batch {
	struct ibv_send_wr wr[POST_BATCH];
	struct ibv_sge sge[POST_BATCH][MAX_SGE];
	unsigned n;
	uint64_t bytes;
	uint32_t region;            /* of the open WR (wr[n-1]) */
	uint64_t remote_end;        /* region offset just past the open WR */
	uint32_t wr_len;
};

/* Bytes of @b's scatter-gather entries that lie in registered guest
 * memory (reg_local ranges): the device reads them there, no copy. */
static uint64_t batch_guest_bytes(struct rd_conn *c, const struct wr_batch *b)
{
	unsigned nloc = atomic_load(&c->nloc);
	uint64_t n = 0;

	for (unsigned i = 0; i < b->n; i++)
		for (int k = 0; k < b->wr[i].num_sge; k++) {
			const struct ibv_sge *s = &b->wr[i].sg_list[k];

			for (unsigned j = 0; j < nloc; j++)
				if (s->addr >= c->loc[j].start &&
				    s->addr - c->loc[j].start + s->length <= c->loc[j].len) {
					n += s->length;
					break;
				}
		}
	return n;
}

static int batch_flush(struct rd_conn *c, struct rd_chan *ch, struct wr_batch *b, bool last)
{
	int err;

	if (!b->n)
		return 0;
	atomic_fetch_add(&c->write_guest_bytes, batch_guest_bytes(c, b));
	err = sq_acquire(c, ch, b->n, SQ_RESERVE, 0);
	if (err)
		return err;
	err = sq_post(c, ch, b->wr, b->n, last);
	pthread_mutex_unlock(&ch->post_lock);
	atomic_fetch_add(&c->write_wrs, b->n);
	atomic_fetch_add(&c->write_bytes, b->bytes);
	b->n = 0;
	b->bytes = 0;
	return err;
}

/* Add [src, src+len) (one MR) to land at region offset @off. */
static int batch_add(struct rd_conn *c, struct rd_chan *ch, struct wr_batch *b,
		     const struct rd_remote *rem, uint32_t region, uint64_t off, uintptr_t src,
		     uint32_t len, uint32_t lkey)
{
	struct ibv_send_wr *w = b->n ? &b->wr[b->n - 1] : NULL;

	if (w && b->region == region && b->remote_end == off &&
	    (uint64_t)b->wr_len + len <= WR_MAX_BYTES) {
		struct ibv_sge *s = &w->sg_list[w->num_sge - 1];

		if (s->addr + s->length == src && s->lkey == lkey) {
			s->length += len; /* contiguous in both: one SGE */
			goto added;
		}
		if ((unsigned)w->num_sge < c->max_sge) {
			s = &w->sg_list[w->num_sge++];
			*s = (struct ibv_sge){ .addr = src, .length = len, .lkey = lkey };
			goto added;
		}
	}
	if (b->n == POST_BATCH) {
		int err = batch_flush(c, ch, b, false);

		if (err)
			return err;
	}
	w = &b->wr[b->n];
	memset(w, 0, sizeof(*w));
	w->sg_list = b->sge[b->n];
	w->sg_list[0] = (struct ibv_sge){ .addr = src, .length = len, .lkey = lkey };
	w->num_sge = 1;
	w->opcode = IBV_WR_RDMA_WRITE;
	w->wr.rdma.remote_addr = rem->addr + off;
	w->wr.rdma.rkey = rem->rkey;
	b->n++;
	b->region = region;
	b->wr_len = 0;
added:
	b->wr_len += len;
	b->remote_end = off + len;
	b->bytes += len;
	return 0;
}

static int rd_write_pages(struct pc_transport *t, unsigned chan, const struct pc_page_run *runs,
			  unsigned n)
{
	struct rd_conn *c = (struct rd_conn *)t;
	struct rd_chan *ch;
	struct wr_batch *b;
	struct rd_remote rem = { 0 };
	uint32_t rem_id = UINT32_MAX;
	int err = rd_state(c);

	if (err)
		return err;
	if (chan >= t->nchan || (n && !runs))
		return -EINVAL;
	if (!n)
		return 0;
	b = malloc(sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->n = 0;
	b->bytes = 0;
	ch = &c->ch[chan];
	pthread_mutex_lock(&ch->send_lock);
	for (unsigned i = 0; i < n && !err; i++) {
		const struct pc_page_run *r = &runs[i];
		uintptr_t src = (uintptr_t)r->src;
		uint64_t off = r->offset, left = r->len;

		if (r->region != rem_id) {
			err = get_remote(c, r->region, &rem);
			if (err)
				break;
			rem_id = r->region;
		}
		if (!r->len || !r->src || off > rem.len || r->len > rem.len - off) {
			err = rd_fail(c, -EINVAL, "run of %llu bytes at %llu is outside region %u "
				      "(%llu bytes)", (unsigned long long)r->len,
				      (unsigned long long)off, r->region,
				      (unsigned long long)rem.len);
			break;
		}
		while (left && !err) {
			size_t avail;
			struct ibv_mr *mr = local_mr(c, src, &avail);
			uint32_t piece;

			if (!mr) {
				err = rd_fail(c, errno == ENOMEM ? -ENOMEM : -EFAULT,
					      "source memory at %p is not registered (%s)",
					      (void *)src, strerror(errno));
				break;
			}
			piece = (uint32_t)(left < avail ? left : avail);
			if (piece > WR_MAX_BYTES)
				piece = WR_MAX_BYTES;
			err = batch_add(c, ch, b, &rem, r->region, off, src, piece, mr->lkey);
			src += piece;
			off += piece;
			left -= piece;
		}
	}
	if (!err)
		err = batch_flush(c, ch, b, true);
	pthread_mutex_unlock(&ch->send_lock);
	free(b);
	return err;
}

/* --- regions (receiving side) --------------------------------------------- */

static int rd_expose_region(struct pc_transport *t, uint32_t id, void *addr, size_t len)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint8_t m[4 + 24];
	struct iovec v = { m, sizeof(m) };
	struct ibv_mr *mr;
	int err = rd_state(c);

	if (err)
		return err;
	if (id >= PRECOPY_MAX_REGIONS || !addr || !len)
		return -EINVAL;
	/* Remote write only: the peer can never read our memory. */
	mr = reg_timed(c, addr, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	if (!mr)
		return rd_fail(c, errno ? -errno : -ENOMEM, "registering region %u: %s", id,
			       strerror(errno));
	pthread_mutex_lock(&c->reg_lock);
	if (c->exp[id])
		ibv_dereg_mr(c->exp[id]);
	c->exp[id] = mr;
	pthread_mutex_unlock(&c->reg_lock);
	memset(m, 0, sizeof(m));
	m[0] = INT_REGION;
	pc_put_le32(m + 4, id);
	pc_put_le32(m + 8, mr->rkey);
	pc_put_le64(m + 12, (uintptr_t)addr);
	pc_put_le64(m + 20, len);
	return rd_send(c, 0, FRAG_INTERNAL, &v, 1);
}

static int rd_unexpose_all(struct pc_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;

	/* Works after abort too: the end of a migration must revoke keys. */
	pthread_mutex_lock(&c->reg_lock);
	for (unsigned i = 0; i < PRECOPY_MAX_REGIONS; i++) {
		if (c->exp[i])
			ibv_dereg_mr(c->exp[i]);
		c->exp[i] = NULL;
	}
	pthread_mutex_unlock(&c->reg_lock);
	return 0;
}

/* --- connection objects ------------------------------------------------------ */

/*
 * Pin-all or on demand: what the engine asked for (PC_TOPT_PIN_ALL), unless
 * PRECOPY_RDMA_PIN_ALL is set and not empty ("0": on demand, else pin-all),
 * which overrides it for the whole process.
 */
static bool want_pin_all(const struct pc_transport_opts *o)
{
	const char *e = getenv("PRECOPY_RDMA_PIN_ALL");

	if (e && *e)
		return strcmp(e, "0") != 0;
	return o && (o->flags & PC_TOPT_PIN_ALL);
}

static struct rd_conn *conn_new(unsigned nchan, const struct pc_transport_opts *o)
{
	struct rd_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->base.ops = pc_transport_find("rdma");
	c->base.nchan = nchan;
	c->timeout_ms = o && o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	c->pin_all = want_pin_all(o);
	c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pthread_mutex_init(&c->reg_lock, NULL);
	pthread_cond_init(&c->reg_cv, NULL);
	pthread_mutex_init(&c->local_lock, NULL);
	pthread_mutex_init(&c->why_lock, NULL);
	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++) {
		struct rd_chan *ch = &c->ch[i];

		ch->idx = i;
		pthread_mutex_init(&ch->send_lock, NULL);
		pthread_mutex_init(&ch->post_lock, NULL);
		pthread_mutex_init(&ch->recv_lock, NULL);
		ch->probe_seq = UINT64_MAX;
		for (unsigned s = 0; s < SEND_SLOTS; s++)
			ch->slot_seq[s] = UINT64_MAX;
	}
	if (c->wake_fd < 0 || c->stop_fd < 0) {
		if (c->wake_fd >= 0)
			close(c->wake_fd);
		if (c->stop_fd >= 0)
			close(c->stop_fd);
		free(c);
		return NULL;
	}
	return c;
}

/* PD and credit words, from the first channel's device. */
static int conn_init_device(struct rd_conn *c, struct ibv_context *verbs)
{
	struct ibv_device_attr da;

	c->verbs = verbs;
	c->pd = ibv_alloc_pd(verbs);
	if (!c->pd)
		return -ENOMEM;
	c->max_sge = MAX_SGE;
	if (ibv_query_device(verbs, &da) == 0 && (unsigned)da.max_sge < c->max_sge)
		c->max_sge = (unsigned)da.max_sge;
	if (c->max_sge < 1)
		c->max_sge = 1;
	if (posix_memalign((void **)&c->credit_in, 4096, 4096))
		return -ENOMEM;
	memset(c->credit_in, 0, 4096);
	c->credit_mr = ibv_reg_mr(c->pd, c->credit_in, 4096,
				  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	if (!c->credit_mr)
		return errno ? -errno : -ENOMEM;
	set_nonblock(verbs->async_fd);
	return 0;
}

/* CQs, QP and buffers of one channel on @id; receives posted. */
static int chan_init(struct rd_conn *c, struct rd_chan *ch, struct rdma_cm_id *id)
{
	struct ibv_qp_init_attr qa;
	uint8_t tmo = ACK_TIMEOUT;
	size_t rb = (size_t)RQ_DEPTH * SLOT_SIZE, sb = (size_t)SEND_SLOTS * SLOT_SIZE;

	ch->id = id;
	id->context = ch;
	ch->scc = ibv_create_comp_channel(c->verbs);
	ch->rcc = ibv_create_comp_channel(c->verbs);
	if (!ch->scc || !ch->rcc)
		return -ENOMEM;
	set_nonblock(ch->scc->fd);
	set_nonblock(ch->rcc->fd);
	ch->scq = ibv_create_cq(c->verbs, SQ_DEPTH, ch, ch->scc, 0);
	ch->rcq = ibv_create_cq(c->verbs, RQ_DEPTH, ch, ch->rcc, 0);
	if (!ch->scq || !ch->rcq)
		return -ENOMEM;
	memset(&qa, 0, sizeof(qa));
	qa.qp_context = ch;
	qa.send_cq = ch->scq;
	qa.recv_cq = ch->rcq;
	qa.qp_type = IBV_QPT_RC;
	qa.cap.max_send_wr = SQ_DEPTH;
	qa.cap.max_recv_wr = RQ_DEPTH;
	qa.cap.max_send_sge = c->max_sge;
	qa.cap.max_recv_sge = 1;
	qa.cap.max_inline_data = FRAG_HDR + HB_SIZE; /* heartbeats; credit words */
	qa.sq_sig_all = 0;
	if (rdma_create_qp(id, c->pd, &qa))
		return errno ? -errno : -ENOMEM;
	ch->qp = id->qp;
	if (qa.cap.max_send_sge < c->max_sge)
		c->max_sge = qa.cap.max_send_sge ? qa.cap.max_send_sge : 1;
	ch->rbuf = mmap(NULL, rb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ch->sbuf = mmap(NULL, sb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ch->rbuf == MAP_FAILED || ch->sbuf == MAP_FAILED) {
		if (ch->rbuf == MAP_FAILED)
			ch->rbuf = NULL;
		if (ch->sbuf == MAP_FAILED)
			ch->sbuf = NULL;
		return -ENOMEM;
	}
	ch->rmr = ibv_reg_mr(c->pd, ch->rbuf, rb, IBV_ACCESS_LOCAL_WRITE);
	ch->smr = ibv_reg_mr(c->pd, ch->sbuf, sb, 0);
	if (!ch->rmr || !ch->smr)
		return errno ? -errno : -ENOMEM;
	for (unsigned s = 0; s < RQ_DEPTH; s++) {
		struct ibv_sge sge = { .addr = (uintptr_t)(ch->rbuf + (size_t)s * SLOT_SIZE),
				       .length = SLOT_SIZE, .lkey = ch->rmr->lkey };
		struct ibv_recv_wr wr = { .wr_id = s, .sg_list = &sge, .num_sge = 1 }, *bad;

		if (ibv_post_recv(ch->qp, &wr, &bad))
			return -EIO;
	}
	/* ACK timeout ~67 ms: with 6 retries a dead peer fails within seconds
	 * (rdma_cm's default for RoCE may be far longer). */
	rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &tmo, sizeof(tmo));
	return 0;
}

/*
 * The peer may RDMA-WRITE into what we expose and nothing else: no READ
 * and no atomics at the queue pair, whatever its connect request asked
 * for. The CM grants REMOTE_READ and atomics to the passive side's queue
 * pair when the active side offers an initiator depth, and rdma_accept()
 * re-applies the CM's INIT attributes, so this is done once the
 * connection is established (RTS to RTS). Until then, and as a second
 * line after it, READ and atomics find no responder resources (we accept
 * with zero) and regions registered for remote write only.
 */
static int qp_write_only(struct rd_conn *c, struct rd_chan *ch)
{
	struct ibv_qp_attr a = { .qp_access_flags = IBV_ACCESS_REMOTE_WRITE };
	int ret = ibv_modify_qp(ch->qp, &a, IBV_QP_ACCESS_FLAGS);

	if (ret)
		return rd_fail(c, -ret, "channel %u: restricting remote access: %s", ch->idx,
			       strerror(ret));
	return 0;
}

/* Let posted sends reach the peer before the queue pairs go: the last
 * message (a result, an ack) must not be flushed by our own disconnect. */
static void drain_sends(struct rd_conn *c)
{
	uint64_t deadline = now_ns() + 2000000000ull;

	for (unsigned i = 0; i < c->base.nchan; i++) {
		struct rd_chan *ch = &c->ch[i];

		if (!ch->qp)
			continue;
		for (;;) {
			bool idle;

			if (atomic_load(&c->err) || now_ns() > deadline)
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

static void conn_free(struct rd_conn *c)
{
	atomic_store(&c->quiet, true);
	if (c->monitor_started)
		drain_sends(c);
	if (c->monitor_started) {
		uint64_t one = 1;

		atomic_store(&c->closing, true);
		if (write(c->stop_fd, &one, sizeof(one)) < 0) {
			/* cannot fail on a fresh eventfd */
		}
		pthread_join(c->monitor, NULL);
	}
	pthread_mutex_lock(&g_lock);
	for (struct rd_conn **p = &g_conns; *p; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			break;
		}
	pthread_mutex_unlock(&g_lock);
	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++)
		if (c->ch[i].id && c->ch[i].qp)
			rdma_disconnect(c->ch[i].id);
	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++) {
		struct rd_chan *ch = &c->ch[i];

		if (ch->qp)
			rdma_destroy_qp(ch->id);
		if (ch->scq)
			ibv_destroy_cq(ch->scq);
		if (ch->rcq)
			ibv_destroy_cq(ch->rcq);
		if (ch->scc)
			ibv_destroy_comp_channel(ch->scc);
		if (ch->rcc)
			ibv_destroy_comp_channel(ch->rcc);
		if (ch->rmr)
			ibv_dereg_mr(ch->rmr);
		if (ch->smr)
			ibv_dereg_mr(ch->smr);
		if (ch->rbuf)
			munmap(ch->rbuf, (size_t)RQ_DEPTH * SLOT_SIZE);
		if (ch->sbuf)
			munmap(ch->sbuf, (size_t)SEND_SLOTS * SLOT_SIZE);
		if (ch->id)
			rdma_destroy_id(ch->id);
		pthread_mutex_destroy(&ch->send_lock);
		pthread_mutex_destroy(&ch->post_lock);
		pthread_mutex_destroy(&ch->recv_lock);
	}
	rd_unexpose_all(&c->base);
	for (unsigned i = 0; i < atomic_load(&c->nloc); i++) {
		struct rd_local *l = &c->loc[i];

		if (l->whole)
			ibv_dereg_mr(l->whole);
		for (size_t k = 0; k < l->nchunks; k++)
			if (l->chunk[k])
				ibv_dereg_mr(l->chunk[k]);
		free(l->chunk);
	}
	if (c->credit_mr)
		ibv_dereg_mr(c->credit_mr);
	free(c->credit_in);
	if (c->pd)
		ibv_dealloc_pd(c->pd);
	if (c->ec)
		rdma_destroy_event_channel(c->ec);
	close(c->wake_fd);
	close(c->stop_fd);
	pthread_mutex_destroy(&c->reg_lock);
	pthread_cond_destroy(&c->reg_cv);
	pthread_mutex_destroy(&c->local_lock);
	pthread_mutex_destroy(&c->why_lock);
	free(c);
}

static struct rd_conn *find_qp_owner(struct ibv_qp *qp, unsigned *chan)
{
	for (struct rd_conn *c = g_conns; c; c = c->next)
		for (unsigned i = 0; i < c->base.nchan; i++)
			if (c->ch[i].qp == qp) {
				*chan = i;
				return c;
			}
	return NULL;
}

/* Route async events of the (shared) device context to their connection. */
static void poll_async(struct ibv_context *verbs)
{
	struct ibv_async_event ev;

	while (ibv_get_async_event(verbs, &ev) == 0) {
		switch (ev.event_type) {
		case IBV_EVENT_QP_FATAL:
		case IBV_EVENT_QP_REQ_ERR:
		case IBV_EVENT_QP_ACCESS_ERR: {
			unsigned chan = 0;
			struct rd_conn *o;

			pthread_mutex_lock(&g_lock);
			o = find_qp_owner(ev.element.qp, &chan);
			if (o)
				rd_fail(o, -EIO, "channel %u: %s", chan,
					ibv_event_type_str(ev.event_type));
			pthread_mutex_unlock(&g_lock);
			break;
		}
		case IBV_EVENT_DEVICE_FATAL:
			pthread_mutex_lock(&g_lock);
			for (struct rd_conn *o = g_conns; o; o = o->next)
				if (o->verbs == verbs)
					rd_fail(o, -EIO, "RDMA device failed");
			pthread_mutex_unlock(&g_lock);
			break;
		default:
			break;
		}
		ibv_ack_async_event(&ev);
	}
}

/*
 * Heartbeats, from the monitor: take what arrived on channels no one is
 * receiving on, answer the peer's PINGs, fail a channel that heard
 * nothing for the timeout, and PING one that heard nothing for a third
 * of it.
 */
static void heartbeat(struct rd_conn *c)
{
	uint64_t to = (uint64_t)c->timeout_ms * 1000000ull, third = to / 3;

	for (unsigned i = 0; i < c->base.nchan; i++) {
		struct rd_chan *ch = &c->ch[i];
		uint64_t due, heard, now, seq;

		if (rd_state(c) || atomic_load(&c->quiet))
			return;
		sweep(c, ch);
		due = atomic_exchange(&ch->pong_due, 0);
		if (due && !hb_send(c, ch, INT_PONG, due)) {
			uint64_t none = 0;

			/* not now: again at the next tick, unless a newer PING came */
			atomic_compare_exchange_strong(&ch->pong_due, &none, due);
		}
		now = now_ns();
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

/* The monitor: CM events (disconnects), device async events, heartbeats. */
static void *monitor_main(void *arg)
{
	struct rd_conn *c = arg;
	bool disconnected = false;
	unsigned tick = c->timeout_ms / 6;

	if (tick < 10)
		tick = 10;
	if (tick > 1000)
		tick = 1000;
	for (;;) {
		struct pollfd p[3] = { { .fd = c->ec->fd, .events = POLLIN },
				       { .fd = c->verbs->async_fd, .events = POLLIN },
				       { .fd = c->stop_fd, .events = POLLIN } };
		struct rdma_cm_event *ev;
		uint64_t v;

		if (poll(p, 3, (int)tick) < 0 && errno != EINTR)
			break;
		if (p[2].revents && read(c->stop_fd, &v, sizeof(v)) < 0) {
			/* drained by someone else: nothing to do */
		}
		if (atomic_load(&c->closing))
			break;
		if (atomic_load(&c->err) && !disconnected) {
			/* A failed connection is torn down at once, so the peer
			 * learns of it instead of waiting for what never comes. */
			for (unsigned i = 0; i < c->base.nchan; i++)
				rdma_disconnect(c->ch[i].id);
			disconnected = true;
		}
		while (rdma_get_cm_event(c->ec, &ev) == 0) {
			struct rd_chan *ch = ev->id ? ev->id->context : NULL;
			unsigned idx = ch ? ch->idx : 0;

			switch (ev->event) {
			case RDMA_CM_EVENT_DISCONNECTED:
			case RDMA_CM_EVENT_TIMEWAIT_EXIT:
				rd_fail(c, -ECONNRESET, "channel %u: the peer disconnected", idx);
				break;
			case RDMA_CM_EVENT_DEVICE_REMOVAL:
			case RDMA_CM_EVENT_ADDR_CHANGE:
				rd_fail(c, -ECONNRESET, "channel %u: %s", idx,
					rdma_event_str(ev->event));
				break;
			default:
				break;
			}
			rdma_ack_cm_event(ev);
		}
		poll_async(c->verbs);
		heartbeat(c);
	}
	return NULL;
}

static int conn_start(struct rd_conn *c)
{
	uint64_t now = now_ns();

	for (unsigned i = 0; i < c->base.nchan; i++) {
		atomic_store(&c->ch[i].heard_ns, now);
		c->ch[i].ping_ns = now;
	}
	pthread_mutex_lock(&g_lock);
	c->next = g_conns;
	g_conns = c;
	pthread_mutex_unlock(&g_lock);
	if (pthread_create(&c->monitor, NULL, monitor_main, c))
		return -EAGAIN;
	c->monitor_started = true;
	return 0;
}

/* --- connection set-up --------------------------------------------------- */

static int split_hostport(const char *addr, char *host, size_t hostlen, char *port,
			  size_t portlen)
{
	const char *colon, *h = addr;
	size_t n;

	if (!addr || !*addr)
		return -EINVAL;
	if (*addr == '[') {
		const char *end = strchr(addr, ']');

		if (!end || end[1] != ':')
			return -EINVAL;
		h = addr + 1;
		n = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon)
			return -EINVAL;
		n = (size_t)(colon - addr);
		if (memchr(addr, ':', n))
			return -EINVAL;
	}
	if (n == 0 || n >= hostlen || !colon[1] || strlen(colon + 1) >= portlen)
		return -EINVAL;
	memcpy(host, h, n);
	host[n] = '\0';
	strcpy(port, colon + 1);
	for (const char *p = port; *p; p++)
		if (*p < '0' || *p > '9')
			return -EINVAL;
	if (atol(port) > 65535)
		return -EINVAL;
	return 0;
}

static int resolve(const char *addr, bool passive, struct addrinfo **res)
{
	char host[256], port[8];
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = (passive ? AI_PASSIVE : 0) | AI_NUMERICSERV };
	int err = split_hostport(addr, host, sizeof(host), port, sizeof(port));

	if (err)
		return err;
	err = getaddrinfo(host, port, &hints, res);
	if (err)
		return err == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
	return 0;
}

/*
 * Next CM event on @ec within @ms; -ETIMEDOUT, or -ECANCELED once @aborted
 * or @cancel (the caller's flag, polled every 50 ms) is set.
 */
static int get_event(struct rdma_event_channel *ec, int wake_fd, atomic_bool *aborted,
		     const atomic_bool *cancel, int ms, struct rdma_cm_event **ev)
{
	uint64_t deadline = now_ns() + (uint64_t)ms * 1000000ull;

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
		now = now_ns();
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

/* A connection that failed while being set up goes away with it: hand
 * its reason to the caller (the engine puts it in its error). */
static void give_why(struct rd_conn *c, const struct pc_transport_opts *o)
{
	if (o && o->why && o->whylen && c->base.why[0])
		snprintf(o->why, o->whylen, "%s", c->base.why);
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
		pc_put_le64(b + 24, now_ns());
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

static void query_qp_stats(struct rd_chan *ch, struct pc_rdma_stats *st)
{
	struct ibv_qp_attr a;
	struct ibv_qp_init_attr ia;

	if (ch->qp && ibv_query_qp(ch->qp, &a, IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
				   IBV_QP_RNR_RETRY, &ia) == 0) {
		st->qp_timeout = a.timeout;
		st->qp_retry_cnt = a.retry_cnt;
		st->qp_rnr_retry = a.rnr_retry;
	}
}

static int rd_connect(const char *addr, const struct pc_transport_opts *o,
		      struct pc_transport **out)
{
	unsigned nchan = o && o->channels ? o->channels : 1;
	const void *key = o ? o->key : NULL;
	size_t klen = o && o->key ? o->key_len : 0;
	struct addrinfo *res;
	struct rd_conn *c;
	uint64_t cookie;
	int err, ms;

	if (!out || nchan > PRECOPY_MAX_CHANNELS)
		return -EINVAL;
	err = resolve(addr, false, &res);
	if (err)
		return err;
	c = conn_new(nchan, o);
	if (!c) {
		freeaddrinfo(res);
		return -ENOMEM;
	}
	ms = (int)c->timeout_ms;
	c->cancel = o ? o->cancel : NULL;
	c->ec = rdma_create_event_channel();
	if (!c->ec) {
		err = errno ? -errno : -ENODEV;
		goto fail;
	}
	set_nonblock(c->ec->fd);
	if (getrandom(&cookie, sizeof(cookie), 0) != sizeof(cookie))
		cookie = (uint64_t)getpid() << 32 ^ now_ns();

	for (unsigned i = 0; i < nchan; i++) {
		struct rd_chan *ch = &c->ch[i];
		struct rdma_cm_id *id;
		struct rdma_conn_param cp;
		uint8_t req[REQ_SIZE], rep[256], want[TOKEN_SIZE], auth[AUTH_SIZE];
		struct iovec av = { auth, sizeof(auth) };
		size_t replen = sizeof(rep);
		uint64_t nonce;

		if (rdma_create_id(c->ec, &id, ch, RDMA_PS_TCP)) {
			err = -errno;
			goto fail;
		}
		ch->id = id;
		if (rdma_resolve_addr(id, NULL, res->ai_addr, 2000)) {
			err = rd_fail(c, -errno, "resolving %s: %s", addr, strerror(errno));
			goto fail;
		}
		err = wait_event(c, id, RDMA_CM_EVENT_ADDR_RESOLVED, 5000, NULL, NULL);
		if (err)
			goto fail;
		if (rdma_resolve_route(id, 2000)) {
			err = rd_fail(c, -errno, "route to %s: %s", addr, strerror(errno));
			goto fail;
		}
		err = wait_event(c, id, RDMA_CM_EVENT_ROUTE_RESOLVED, 5000, NULL, NULL);
		if (err)
			goto fail;
		if (i == 0) {
			err = conn_init_device(c, id->verbs);
			if (err)
				goto fail;
		} else if (id->verbs != c->verbs) {
			err = rd_fail(c, -EXDEV, "channel %u resolved to another device", i);
			goto fail;
		}
		err = chan_init(c, ch, id);
		if (err) {
			rd_fail(c, err, "setting up channel %u: %s", i, strerror(-err));
			goto fail;
		}
		if (getrandom(&nonce, sizeof(nonce), 0) != sizeof(nonce))
			nonce = now_ns() ^ cookie;
		req_encode(req, i, nchan, cookie, nonce, c, key, klen);
		memset(&cp, 0, sizeof(cp));
		cp.private_data = req;
		cp.private_data_len = REQ_SIZE;
		cp.retry_count = RETRY_COUNT;
		cp.rnr_retry_count = RNR_RETRY;
		cp.responder_resources = 0; /* no RDMA READ either way */
		cp.initiator_depth = 0;
		if (rdma_connect(id, &cp)) {
			err = rd_fail(c, -errno, "rdma_connect: %s", strerror(errno));
			goto fail;
		}
		err = wait_event(c, id, RDMA_CM_EVENT_ESTABLISHED, ms, rep, &replen);
		if (err)
			goto fail;
		if (replen < REP_SIZE || pc_get_le32(rep) != RD_MAGIC || rep[4] != RD_VERSION ||
		    rep[5] != i) {
			err = rd_fail(c, -EPROTO, "channel %u: the peer's accept is not ours", i);
			goto fail;
		}
		token(key, klen, "PCR2-rep", req, REQ_SIZE, rep, 40, want);
		if (!memeql_sec(want, rep + 40, TOKEN_SIZE)) {
			err = rd_fail(c, -EACCES, "channel %u: the peer failed authentication", i);
			goto fail;
		}
		ch->peer_credit_addr = pc_get_le64(rep + 8);
		ch->peer_credit_rkey = pc_get_le32(rep + 16);
		err = qp_write_only(c, ch);
		if (err)
			goto fail;
		/* the answer to the acceptor's challenge: our first SEND */
		auth_encode(auth, req, rep, key, klen);
		err = rd_send(c, i, FRAG_INTERNAL, &av, 1);
		if (err)
			goto fail;
	}
	freeaddrinfo(res);
	res = NULL;
	err = conn_start(c);
	if (err)
		goto fail;
	c->cancel = NULL; /* from here on the engine aborts the connection */
	*out = &c->base;
	return 0;

fail:
	if (res)
		freeaddrinfo(res);
	give_why(c, o);
	conn_free(c);
	return err;
}

/* --- listener -------------------------------------------------------------- */

static int rd_listen(const char *addr, const struct pc_transport_opts *o,
		     struct pc_listener **out)
{
	struct rd_listener *l;
	struct addrinfo *res;
	int err;

	(void)o;
	if (!out)
		return -EINVAL;
	err = resolve(addr, true, &res);
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

static int rd_listener_addr(struct pc_listener *pl, char *buf, size_t len)
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

static int rd_listener_abort(struct pc_listener *pl)
{
	struct rd_listener *l = (struct rd_listener *)pl;
	uint64_t one = 1;

	atomic_store(&l->aborted, true);
	if (write(l->wake_fd, &one, sizeof(one)) < 0) {
		/* nonblocking eventfd: only fails if it would overflow */
	}
	return 0;
}

static void rd_listener_close(struct pc_listener *pl)
{
	struct rd_listener *l = (struct rd_listener *)pl;

	if (!l)
		return;
	rdma_destroy_id(l->id);
	rdma_destroy_event_channel(l->ec);
	close(l->wake_fd);
	free(l);
}

static void reject(struct rdma_cm_id *id, uint8_t reason)
{
	uint8_t d[8] = { 0 };

	pc_put_le32(d, RD_MAGIC);
	d[4] = reason;
	rdma_reject(id, d, sizeof(d));
}

/*
 * Check a connection request. Return: 0 if it is ours with a good token,
 * else the reject reason. A request replayed from an earlier migration
 * passes here; the challenge (auth_wait()) stops it.
 */
static int check_req(const uint8_t *req, size_t len, const void *key, size_t klen)
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
	uint64_t deadline = now_ns() + (uint64_t)c->timeout_ms * 1000000ull;
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
		if (now_ns() >= deadline)
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
	return rq_repost(c, ch, (unsigned)wc.wr_id) ? -EIO : 0;
}

static int rd_accept(struct pc_listener *pl, const struct pc_transport_opts *o,
		     struct pc_transport **out)
{
	struct rd_listener *l = (struct rd_listener *)pl;
	const void *key = o ? o->key : NULL;
	size_t klen = o && o->key ? o->key_len : 0;
	struct rd_conn *c = NULL;
	unsigned nchan = 0, have = 0;
	uint64_t cookie = 0;
	int err;

	if (!out)
		return -EINVAL;
	while (!c || have < nchan) {
		struct rdma_cm_event *ev;
		struct rdma_cm_id *id;
		struct rdma_conn_param cp;
		uint8_t req[REQ_SIZE], rep[REP_SIZE];
		int ms = c ? 10000 : 1 << 30;
		size_t plen;

		err = get_event(l->ec, l->wake_fd, &l->aborted, NULL, ms, &ev);
		if (err)
			goto fail;
		if (ev->event != RDMA_CM_EVENT_CONNECT_REQUEST) {
			rdma_ack_cm_event(ev); /* a stranger's leftovers */
			continue;
		}
		id = ev->id;
		plen = ev->param.conn.private_data_len;
		memset(req, 0, sizeof(req));
		if (ev->param.conn.private_data)
			memcpy(req, ev->param.conn.private_data, plen < REQ_SIZE ? plen : REQ_SIZE);
		rdma_ack_cm_event(ev);
		err = check_req(req, plen, key, klen);
		if (!err && (req[5] != have || (c && (req[6] != nchan ||
						      pc_get_le64(req + 8) != cookie))))
			err = REJ_CHANNEL;
		if (!err && c && id->verbs != c->verbs)
			err = REJ_CHANNEL;
		if (err) {
			reject(id, (uint8_t)err);
			rdma_destroy_id(id);
			continue;
		}
		if (!c) {
			nchan = req[6];
			cookie = pc_get_le64(req + 8);
			c = conn_new(nchan, o);
			if (!c) {
				reject(id, REJ_CHANNEL);
				rdma_destroy_id(id);
				return -ENOMEM;
			}
			c->ec = rdma_create_event_channel();
			if (!c->ec || (err = conn_init_device(c, id->verbs)) != 0) {
				err = c->ec ? err : -ENODEV;
				reject(id, REJ_CHANNEL);
				rdma_destroy_id(id);
				goto fail;
			}
			set_nonblock(c->ec->fd);
		}
		err = chan_init(c, &c->ch[have], id);
		if (err) {
			reject(id, REJ_CHANNEL);
			if (!c->ch[have].qp) {
				rdma_destroy_id(id);
				c->ch[have].id = NULL;
			}
			goto fail;
		}
		c->ch[have].peer_credit_addr = pc_get_le64(req + 24);
		c->ch[have].peer_credit_rkey = pc_get_le32(req + 32);
		rep_encode(rep, req, have, c, key, klen);
		memset(&cp, 0, sizeof(cp));
		cp.private_data = rep;
		cp.private_data_len = REP_SIZE;
		cp.retry_count = RETRY_COUNT;
		cp.rnr_retry_count = RNR_RETRY;
		if (rdma_accept(id, &cp)) {
			err = -errno;
			goto fail;
		}
		/* wait for ESTABLISHED on the listener's channel */
		for (;;) {
			err = get_event(l->ec, l->wake_fd, &l->aborted, NULL, 10000, &ev);
			if (err)
				goto fail;
			if (ev->id == id && ev->event == RDMA_CM_EVENT_ESTABLISHED) {
				rdma_ack_cm_event(ev);
				break;
			}
			if (ev->id == id) {
				err = -ECONNABORTED;
				rdma_ack_cm_event(ev);
				goto fail;
			}
			if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST) {
				struct rdma_cm_id *other = ev->id;

				rdma_ack_cm_event(ev);
				reject(other, REJ_CHANNEL);
				rdma_destroy_id(other);
				continue;
			}
			rdma_ack_cm_event(ev);
		}
		err = qp_write_only(c, &c->ch[have]);
		if (err)
			goto fail;
		if (rdma_migrate_id(id, c->ec)) {
			err = -errno;
			goto fail;
		}
		err = auth_wait(c, &c->ch[have], req, rep, key, klen, l);
		if (err == -EACCES || err == -ETIMEDOUT) {
			/* Not the holder of the key (a replayed request, say):
			 * drop what was set up for it and wait on. */
			conn_free(c);
			c = NULL;
			nchan = have = 0;
			cookie = 0;
			continue;
		}
		if (err)
			goto fail;
		have++;
	}
	err = conn_start(c);
	if (err)
		goto fail;
	*out = &c->base;
	return 0;
fail:
	if (c) {
		give_why(c, o);
		conn_free(c);
	}
	return err;
}

static int rd_abort(struct pc_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t one = 1;

	atomic_store(&c->aborted, true);
	if (write(c->wake_fd, &one, sizeof(one)) < 0) {
		/* only fails if the counter would overflow */
	}
	return 0;
}

static void rd_close(struct pc_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;
	const char *e = getenv("PRECOPY_RDMA_STATS");

	if (!c)
		return;
	if (e && *e && strcmp(e, "0") != 0) {
		struct pc_rdma_stats st;

		pc_rdma_stats(t, &st);
		fprintf(stderr, "rdma: %u ch, reg %.1f ms for %llu MiB in %llu MRs, %llu writes "
			"(%llu MiB), %llu sends, %llu credit waits, qp timeout %u retry %u rnr %u\n",
			t->nchan, st.reg_ns / 1e6, (unsigned long long)(st.reg_bytes >> 20),
			(unsigned long long)st.reg_count, (unsigned long long)st.write_wrs,
			(unsigned long long)(st.write_bytes >> 20),
			(unsigned long long)st.send_wrs, (unsigned long long)st.credit_waits,
			st.qp_timeout, st.qp_retry_cnt, st.qp_rnr_retry);
	}
	conn_free(c);
}

static int rd_reg_stats(struct pc_transport *t, struct pc_tp_reg_stats *out)
{
	struct rd_conn *c = (struct rd_conn *)t;

	if (!t || !out)
		return -EINVAL;
	out->ns = atomic_load(&c->reg_ns);
	out->bytes = atomic_load(&c->reg_bytes);
	out->count = atomic_load(&c->reg_count);
	out->pin_all = c->pin_all;
	return 0;
}

int pc_rdma_stats(struct pc_transport *t, struct pc_rdma_stats *out)
{
	struct rd_conn *c = (struct rd_conn *)t;

	if (!t || !out || t->ops != pc_transport_find("rdma"))
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->reg_ns = atomic_load(&c->reg_ns);
	out->reg_bytes = atomic_load(&c->reg_bytes);
	out->reg_count = atomic_load(&c->reg_count);
	out->write_wrs = atomic_load(&c->write_wrs);
	out->write_bytes = atomic_load(&c->write_bytes);
	out->send_wrs = atomic_load(&c->send_wrs);
	out->write_guest_bytes = atomic_load(&c->write_guest_bytes);
	out->send_bytes = atomic_load(&c->send_bytes);
	out->credit_waits = atomic_load(&c->credit_waits);
	query_qp_stats(&c->ch[0], out);
	return 0;
}

int pc_rdma_verbs(struct pc_transport *t, struct pc_rdma_verbs *out)
{
	struct rd_conn *c = (struct rd_conn *)t;

	if (!t || !out || t->ops != pc_transport_find("rdma"))
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->pd = c->pd;
	for (unsigned i = 0; i < t->nchan; i++)
		out->qp[i] = c->ch[i].qp;
	out->credit_addr = (uintptr_t)c->credit_in;
	out->credit_rkey = c->credit_mr ? c->credit_mr->rkey : 0;
	pthread_mutex_lock(&c->reg_lock);
	for (unsigned i = 0; i < PRECOPY_MAX_REGIONS; i++) {
		out->exposed[i] = c->exp[i] != NULL;
		out->rkey[i] = c->exp[i] ? c->exp[i]->rkey : 0;
	}
	pthread_mutex_unlock(&c->reg_lock);
	return 0;
}

int pc_rdma_local_keys(struct pc_transport *t, const void *addr, uint32_t *lkey,
		       uint32_t *rkey)
{
	struct rd_conn *c = (struct rd_conn *)t;
	struct ibv_mr *mr;
	size_t avail;

	if (!t || !lkey || !rkey || t->ops != pc_transport_find("rdma"))
		return -EINVAL;
	mr = local_mr(c, (uintptr_t)addr, &avail);
	if (!mr)
		return -ENOENT;
	*lkey = mr->lkey;
	*rkey = mr->rkey;
	return 0;
}

const struct pc_transport_ops pc_rdma_ops = {
	.scheme = "rdma",
	.syntax = "rdma:HOST:PORT",
	.caps = PC_TCAP_DIRECT_WRITE | PC_TCAP_NEEDS_REG | PC_TCAP_AUTH_KEY,
	.listen = rd_listen,
	.listener_addr = rd_listener_addr,
	.accept = rd_accept,
	.listener_abort = rd_listener_abort,
	.listener_close = rd_listener_close,
	.connect = rd_connect,
	.abort = rd_abort,
	.close = rd_close,
	.expose_region = rd_expose_region,
	.unexpose_all = rd_unexpose_all,
	.reg_local = rd_reg_local,
	.reg_stats = rd_reg_stats,
	.send_msg = rd_send_msg,
	.recv_msg = rd_recv_msg,
	.write_pages = rd_write_pages,
};

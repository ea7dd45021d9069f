/* SPDX-License-Identifier: MIT */
/*
 * rdma_impl.h - what the files of the RDMA transport share: wire
 * constants, the connection and channel objects, and the calls one file
 * makes into another. Nothing outside transport/rdma*.c includes it.
 *
 *   rdma.c        the ops table, pc_rdma_stats() and the other test calls
 *   rdma_cm.c     connection set-up with rdma_cm: connect, listen, accept,
 *                 the private data and the challenge
 *   rdma_conn.c   connection objects: devices, queue pairs, buffers, the
 *                 monitor thread, teardown
 *   rdma_queue.c  send and receive queues: fragments, credits, internal
 *                 messages, heartbeats, failure
 *   rdma_mr.c     memory registration: reg_local, write_pages, exposed
 *                 regions
 */
#ifndef PC_RDMA_IMPL_H
#define PC_RDMA_IMPL_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

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

	/* link figures (struct pc_tp_link_stats), post_lock held: a WR's
	 * bytes count as delivered once a completion at or after it was
	 * reaped, and the channel is busy while WRs are outstanding */
	uint64_t wr_end[SQ_DEPTH];  /* bytes posted up to WR seq, at seq % SQ_DEPTH */
	uint64_t bytes_posted, bytes_done;
	uint64_t busy_ns, busy_since;
	bool busy;

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

/* --- small helpers --------------------------------------------------------- */

static inline void sleep_us(unsigned us)
{
	struct timespec ts = { 0, (long)us * 1000 };

	nanosleep(&ts, NULL);
}

static inline int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
}

/* Add one to the eventfd @fd, waking whoever polls it. A nonblocking
 * eventfd only refuses if its counter would overflow, which one at a
 * time cannot make happen. */
static inline void rd_poke(int fd)
{
	uint64_t one = 1;

	if (write(fd, &one, sizeof(one)) < 0) {
		/* cannot overflow */
	}
}

/* --- rdma_queue.c: queues, failure, heartbeats ----------------------------- */

/* Record the connection's first failure and wake every waiter. Returns
 * the sticky error (which may be an earlier one). */
int rd_fail(struct rd_conn *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* -ECANCELED after abort, the sticky error, or 0. */
int rd_state(struct rd_conn *c);
/* Send one message of @kind (FRAG_ENGINE or FRAG_INTERNAL) on channel
 * @chan, cut into fragments. Return: 0 or -errno. */
int rd_send(struct rd_conn *c, unsigned chan, unsigned kind, const struct iovec *iov,
	    int iovcnt);
/* Wait for room for @nwr WRs on @ch's send queue (keeping @reserve free)
 * and for every WR below @need_done to have completed. Returns 0 with
 * post_lock held, or -errno without it. */
int rd_sq_acquire(struct rd_conn *c, struct rd_chan *ch, unsigned nwr, unsigned reserve,
		  uint64_t need_done);
/* Post the chain @wr of @n WRs; post_lock held. Signals every
 * SIGNAL_EVERY-th and, if @last, the final one. Return: 0 or -errno. */
int rd_sq_post(struct rd_conn *c, struct rd_chan *ch, struct ibv_send_wr *wr, unsigned n,
	       bool last);
/* @ch's link figures (the link_stats op): reaps completions first.
 * Return: 0 or -errno. */
int rd_sq_link_stats(struct rd_conn *c, struct rd_chan *ch, struct pc_tp_link_stats *out);
/* Post the receive buffer @slot of @ch. Return: ibv_post_recv()'s result. */
int rd_post_recv(struct rd_chan *ch, unsigned slot);
/* Give a consumed receive buffer back, returning credits to the peer
 * when enough piled up; recv_lock held (or no one else receiving). */
int rd_rq_repost(struct rd_conn *c, struct rd_chan *ch, unsigned slot);
/* Take @ch's queued receives when no one is receiving on it. */
void rd_sweep(struct rd_conn *c, struct rd_chan *ch);
/* The monitor's heartbeat tick over every channel. */
void rd_heartbeat(struct rd_conn *c);
/* Let posted sends reach the peer (at most two seconds). */
void rd_drain_sends(struct rd_conn *c);
/* The ops (transport.h says what each does). */
int rd_send_msg(struct pc_transport *t, unsigned chan, const struct iovec *iov, int iovcnt);
int rd_recv_msg(struct pc_transport *t, unsigned chan, void *buf, size_t cap, size_t *lenp);

/* --- rdma_mr.c: memory registration ---------------------------------------- */

/* The ops (transport.h says what each does). */
int rd_reg_local(struct pc_transport *t, const void *addr, size_t len);
int rd_reg_stats(struct pc_transport *t, struct pc_tp_reg_stats *out);
int rd_write_pages(struct pc_transport *t, unsigned chan, const struct pc_page_run *runs,
		   unsigned n);
int rd_expose_region(struct pc_transport *t, uint32_t id, void *addr, size_t len);
int rd_unexpose_all(struct pc_transport *t);
/* Deregister and forget every reg_local range (teardown). */
void rd_local_free(struct rd_conn *c);

/* --- rdma_conn.c: connection objects --------------------------------------- */

/* A connection of @nchan channels with no device yet; NULL if out of memory. */
struct rd_conn *rd_conn_new(unsigned nchan, const struct pc_transport_opts *o);
/* PD and credit words, from the first channel's device. Return: 0 or -errno. */
int rd_conn_init_device(struct rd_conn *c, struct ibv_context *verbs);
/* CQs, QP and buffers of one channel on @id; receives posted. 0 or -errno. */
int rd_chan_init(struct rd_conn *c, struct rd_chan *ch, struct rdma_cm_id *id);
/* Take RDMA READ and atomics away from @ch's queue pair. 0 or -errno. */
int rd_qp_write_only(struct rd_conn *c, struct rd_chan *ch);
/* Start the monitor thread of a connection whose channels are all up. */
int rd_conn_start(struct rd_conn *c);
/* Tear down @c, whatever state its set-up reached. */
void rd_conn_free(struct rd_conn *c);
/* Hand the reason a connection failed during set-up to the caller. */
void rd_give_why(struct rd_conn *c, const struct pc_transport_opts *o);
/* The abort op. */
int rd_abort(struct pc_transport *t);

/* --- rdma_cm.c: connection set-up ------------------------------------------ */

/* The ops (transport.h says what each does). */
int rd_connect(const char *addr, const struct pc_transport_opts *o, struct pc_transport **out);
int rd_listen(const char *addr, const struct pc_transport_opts *o, struct pc_listener **out);
int rd_listener_addr(struct pc_listener *pl, char *buf, size_t len);
int rd_accept(struct pc_listener *pl, const struct pc_transport_opts *o,
	      struct pc_transport **out);
int rd_listener_abort(struct pc_listener *pl);
void rd_listener_close(struct pc_listener *pl);

#endif /* PC_RDMA_IMPL_H */

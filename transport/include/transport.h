/* SPDX-License-Identifier: MIT */
/*
 * transport.h - the one interface between the engine and a transport.
 *
 * A transport moves two kinds of traffic over one or more channels:
 *  - messages: opaque engine records, delivered whole and in order per
 *    channel (send_msg / recv_msg);
 *  - page runs: bytes of local memory written into a region the peer has
 *    exposed (write_pages). RDMA puts them there with the NIC; a stream
 *    transport frames them onto the channel (scatter-gather straight from
 *    memory) and the receiving side places them while it waits in
 *    recv_msg(). Either way a message sent on a channel after a
 *    write_pages() on the same channel is received only once those pages
 *    are in place.
 *
 * Every transport fills a struct pc_transport_ops. Ops it does not
 * implement are left NULL in its definition and replaced by the entries
 * of a table that return -EOPNOTSUPP (pc_transport_find() returns the
 * merged table), so callers never test for NULL. What a transport can do
 * is advertised by PC_TCAP_* bits.
 *
 * All ops return 0 or a negative errno. A channel that failed stays
 * failed (sticky error). abort() may be called from any thread; it makes
 * every blocked and later call fail with -ECANCELED.
 *
 * The receiving side treats everything as untrusted: frames are length-
 * and bounds-checked against what was received and against the exposed
 * regions before a byte is written.
 */
#ifndef PC_TRANSPORT_H
#define PC_TRANSPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <time.h>

#include "config.h"
#include "precopy.h"

/** Pages are written into remote memory without the peer's CPU. */
#define PC_TCAP_DIRECT_WRITE (1u << 0)
/** Local memory must be registered (reg_local) before write_pages. */
#define PC_TCAP_NEEDS_REG (1u << 1)
/** File descriptors can be handed to the peer. */
#define PC_TCAP_FD_PASS (1u << 2)
/** Runs TLS: pc_transport_opts.tls applies (and is required). */
#define PC_TCAP_TLS (1u << 3)
/** Authenticates the connection with pc_transport_opts.key; a transport
 *  without this bit has no use for a key (callers refuse one). */
#define PC_TCAP_AUTH_KEY (1u << 4)
/** Carries postcopy: messages both ways on channel 0 while the
 *  destination's guest runs, and no page written into the destination's
 *  memory behind the engine once the regions are withdrawn. */
#define PC_TCAP_POSTCOPY (1u << 5)

/** Largest message a transport must carry (device state comes in parts). */
#define PC_MSG_MAX (1u << 20)

struct pc_transport_ops;

/** A connection: the base every transport embeds first. */
struct pc_transport {
	const struct pc_transport_ops *ops;
	unsigned nchan; /**< channels, >= 1; channel 0 carries control */
	/** Why the first failure happened, for the engine's error message
	 *  (empty if the errno says it all). Written once, before the
	 *  failing op returns. */
	char why[160];
	/**
	 * Receiving side, optional, set by the engine: called on the
	 * receiving thread after the CPU has placed a page run that arrived
	 * on @chan (bytes [@off, @off + @len) of region @region), before the
	 * next message of that channel is returned. Transports whose peer
	 * writes without our CPU (PC_TCAP_DIRECT_WRITE) cannot call it, and
	 * the engine leaves it NULL on them.
	 */
	void (*placed)(void *arg, unsigned chan, uint32_t region, uint64_t off, uint64_t len);
	void *placed_arg;
};

/** A listening endpoint: the base every transport embeds first. */
struct pc_listener {
	const struct pc_transport_ops *ops;
};

/** One contiguous run of bytes from local memory into a peer region. */
struct pc_page_run {
	const void *src;  /**< local source address */
	uint32_t region;  /**< the peer's region id (expose_region) */
	uint64_t offset;  /**< byte offset in that region */
	uint64_t len;     /**< bytes, > 0 */
};

/** Register every reg_local() range at once instead of on demand. */
#define PC_TOPT_PIN_ALL (1u << 0)

/** What a connection registered with its device for guest memory. */
struct pc_tp_reg_stats {
	uint64_t ns;    /**< time spent registering (RDMA: in ibv_reg_mr) */
	uint64_t bytes; /**< bytes registered */
	uint64_t count; /**< registrations (memory regions) */
	bool pin_all;   /**< sending side: ranges registered whole, not in chunks */
};

/** Where a transport's link figures come from (struct pc_tp_link_stats). */
enum pc_tp_link_source {
	PC_TP_LINK_NONE = 0,     /**< no figures: the engine times its own sends */
	PC_TP_LINK_TCP_INFO,     /**< the kernel's TCP_INFO: busy time, bytes acked */
	PC_TP_LINK_COMPLETIONS,  /**< RDMA: time with signaled work requests outstanding */
	PC_TP_LINK_COPY,         /**< shm: time spent copying into the peer's memory */
};

/**
 * What one channel's link did so far, measured where the bytes leave.
 * Counters are cumulative since the connection opened; the engine takes
 * differences. Fields a transport cannot tell are 0.
 */
struct pc_tp_link_stats {
	enum pc_tp_link_source source;
	/** ns during which the channel had bytes queued or in flight (TCP:
	 *  tcpi_busy_time, which the kernel counts in jiffies), or copying */
	uint64_t busy_ns;
	/** bytes the peer has received (TCP: tcpi_bytes_acked; shm: copied) */
	uint64_t delivered;
	/** bytes accepted by the transport and not yet delivered (TCP:
	 *  SIOCOUTQ, sent but unacknowledged plus not yet sent) */
	uint64_t queued;
	/** round-trip time of the path with no queue, ns (TCP: tcpi_min_rtt,
	 *  else tcpi_rtt); 0 = unknown */
	uint64_t rtt_ns;
	/** the kernel's latest delivery-rate sample, bytes/s; 0 = unknown */
	uint64_t delivery_bps;
	/** that sample was limited by the application, not the link: it
	 *  only says the link is at least this fast */
	bool app_limited;
};

/** Options common to every transport. */
struct pc_transport_opts {
	unsigned channels;      /**< connect: how many channels to open */
	unsigned timeout_ms;    /**< give up on a silent peer after this */
	/** connect/accept, out, optional: why a connection failed or was
	 *  refused when the errno does not say it all (a TLS alert, a refused
	 *  peer), @whylen bytes with the NUL; transports that have nothing
	 *  to add leave it alone. */
	char *why;
	size_t whylen;
	/**
	 * Shared secret that authenticates the connection (connect and
	 * accept), @key_len bytes, read during the call only. NULL/0 = the
	 * empty key: the handshake is still checked (format, version), but
	 * anyone who can reach the port can connect. Transports without
	 * PC_TCAP_AUTH_KEY cannot authenticate with it and ignore it.
	 */
	const void *key;
	size_t key_len;
	unsigned flags;         /**< PC_TOPT_* */
	/** "tls": authentication settings (NULL: the scheme fails with
	 *  -EINVAL); the caller keeps them alive while the connection is. */
	const struct precopy_tls *tls;
	/** connect, optional: the caller's cancel flag. A transport whose
	 *  connect waits for the peer (shm: for the listener's verdict)
	 *  polls it and gives up with -ECANCELED once it is set. */
	const atomic_bool *cancel;
};

typedef int (*pc_tp_listen_op)(const char *addr, const struct pc_transport_opts *o,
			       struct pc_listener **out);
typedef int (*pc_tp_listener_addr_op)(struct pc_listener *l, char *buf, size_t len);
typedef int (*pc_tp_accept_op)(struct pc_listener *l, const struct pc_transport_opts *o,
			       struct pc_transport **out);
typedef int (*pc_tp_listener_abort_op)(struct pc_listener *l);
typedef void (*pc_tp_listener_close_op)(struct pc_listener *l);
typedef int (*pc_tp_connect_op)(const char *addr, const struct pc_transport_opts *o,
				struct pc_transport **out);
typedef int (*pc_tp_abort_op)(struct pc_transport *t);
typedef void (*pc_tp_close_op)(struct pc_transport *t);
typedef int (*pc_tp_expose_region_op)(struct pc_transport *t, uint32_t id, void *addr,
				      size_t len);
typedef int (*pc_tp_unexpose_all_op)(struct pc_transport *t);
typedef int (*pc_tp_reg_local_op)(struct pc_transport *t, const void *addr, size_t len);
typedef int (*pc_tp_reg_stats_op)(struct pc_transport *t, struct pc_tp_reg_stats *out);
typedef int (*pc_tp_link_stats_op)(struct pc_transport *t, unsigned chan,
				   struct pc_tp_link_stats *out);
typedef int (*pc_tp_set_pacing_op)(struct pc_transport *t, unsigned chan, uint64_t bps);
typedef int (*pc_tp_send_msg_op)(struct pc_transport *t, unsigned chan,
				 const struct iovec *iov, int iovcnt);
typedef int (*pc_tp_recv_msg_op)(struct pc_transport *t, unsigned chan, void *buf,
				 size_t cap, size_t *len);
typedef int (*pc_tp_write_pages_op)(struct pc_transport *t, unsigned chan,
				    const struct pc_page_run *runs, unsigned n);
typedef int (*pc_tp_expose_region_fd_op)(struct pc_transport *t, uint32_t id, void *addr,
					 size_t len, int fd, uint64_t offset);
typedef int (*pc_tp_send_fds_op)(struct pc_transport *t, unsigned chan, const int *fds,
				 unsigned nfds, const struct iovec *iov, int iovcnt);
typedef int (*pc_tp_recv_fds_op)(struct pc_transport *t, unsigned chan, void *buf,
				 size_t cap, size_t *len, int *fds, unsigned maxfds,
				 unsigned *nfds);

struct pc_transport_ops {
	const char *scheme; /**< URI scheme: "tcp", "rdma", "shm" */
	/** The URI syntax, for messages: "tcp:HOST:PORT", "shm:PATH" */
	const char *syntax;
	/** PC_TCAP_*: what it can do, and so which settings it accepts
	 *  (pc_transport_opts.tls: PC_TCAP_TLS; .key: PC_TCAP_AUTH_KEY;
	 *  PC_TOPT_PIN_ALL: PC_TCAP_NEEDS_REG); callers refuse the others */
	uint32_t caps;

	/* --- connection set-up (addr is the URI without "scheme:") --- */
	/** Bind and listen; does not block. */
	pc_tp_listen_op listen;
	/** The bound address as "scheme:addr". */
	pc_tp_listener_addr_op listener_addr;
	/** Block until a peer has connected all its channels. */
	pc_tp_accept_op accept;
	/** Wake a blocked accept with -ECANCELED; any thread. */
	pc_tp_listener_abort_op listener_abort;
	/** Stop listening and free. */
	pc_tp_listener_close_op listener_close;
	/** Open o->channels channels to a listening peer. */
	pc_tp_connect_op connect;
	/** Fail every blocked and later call with -ECANCELED; any thread. */
	pc_tp_abort_op abort;
	/** Close all channels and free; after abort or at the end. */
	pc_tp_close_op close;

	/* --- memory --- */
	/** Receiving side: let the peer write region @id = [addr, addr+len). */
	pc_tp_expose_region_op expose_region;
	/**
	 * Receiving side: revoke every exposed region for good (old keys
	 * then fail; page runs that arrive later fail their channel). Any
	 * thread, also while other channels are being received and after
	 * abort(); the memory stays the caller's.
	 */
	pc_tp_unexpose_all_op unexpose_all;
	/** Sending side: make local memory usable as a write_pages source. */
	pc_tp_reg_local_op reg_local;
	/**
	 * Either side: what this connection registered with its device for
	 * guest memory so far (reg_local ranges, or their chunks, and exposed
	 * regions); any thread. -EOPNOTSUPP: it registers nothing.
	 */
	pc_tp_reg_stats_op reg_stats;
	/**
	 * Sending side: what channel @chan's link did so far (struct
	 * pc_tp_link_stats), for the bandwidth estimate; any thread, cheap
	 * (a system call at most). -EOPNOTSUPP: the transport cannot tell,
	 * and the engine times its own send calls instead.
	 */
	pc_tp_link_stats_op link_stats;
	/**
	 * Sending side: let channel @chan put at most @bps bytes/s on the
	 * wire, spread evenly in time (TCP: SO_MAX_PACING_RATE, the kernel's
	 * own pacing; no qdisc needed); 0 lifts the limit. Bytes already
	 * accepted are paced too. Any thread. -EOPNOTSUPP: the transport
	 * cannot pace, its sends go out as fast as it can.
	 */
	pc_tp_set_pacing_op set_pacing;

	/* --- data --- */
	/** Send one message (the iovec's bytes, <= PC_MSG_MAX) on @chan. */
	pc_tp_send_msg_op send_msg;
	/**
	 * Receive the next message on @chan into @buf (@cap bytes), placing
	 * page runs that arrive before it. -EMSGSIZE if it is longer than
	 * @cap, -EPROTO for a malformed frame, -ECONNRESET when the peer
	 * went away.
	 */
	pc_tp_recv_msg_op recv_msg;
	/** Write @n runs of local memory into the peer's regions on @chan. */
	pc_tp_write_pages_op write_pages;

	/* --- shared memory and fd passing (PC_TCAP_FD_PASS) --- */
	/**
	 * Receiving side: as expose_region, where [addr, addr+len) is a
	 * MAP_SHARED mapping of @fd at @offset. A transport that shared
	 * the memory would let the peer write into it directly (one copy),
	 * but could never take it back after the migration: no built-in
	 * transport implements it (shm frames instead). The caller keeps
	 * @fd. -EOPNOTSUPP: use expose_region.
	 */
	pc_tp_expose_region_fd_op expose_region_fd;
	/**
	 * Send one message with @nfds (<= PC_TP_FDS_MAX) file descriptors
	 * attached, ordered with the other messages of @chan. The caller
	 * keeps its fds; the peer receives duplicates.
	 */
	pc_tp_send_fds_op send_fds;
	/**
	 * Receive the next message on @chan like recv_msg, and the fds sent
	 * with it into @fds (at most @maxfds; *@nfds says how many, 0 for a
	 * plain message). The caller owns and closes the received fds.
	 * Extra fds beyond @maxfds are closed and the call fails -EPROTO.
	 */
	pc_tp_recv_fds_op recv_fds;
};

/** Most fds one send_fds() message carries. */
#define PC_TP_FDS_MAX 8

/** pc_transport_find() - the merged ops table for @scheme, or NULL. */
const struct pc_transport_ops *pc_transport_find(const char *scheme);

/**
 * pc_transport_split_uri() - split "scheme:rest" into the ops table and a
 * pointer to rest. Return: 0; -EINVAL for a malformed URI;
 * -EPROTONOSUPPORT for a scheme not built in.
 */
int pc_transport_split_uri(const char *uri, const struct pc_transport_ops **ops,
			   const char **rest);

/** pc_transport_schemes() - the built-in schemes, e.g. "tcp, shm". */
const char *pc_transport_schemes(void);

/** pc_transport_syntaxes() - the URI syntax of every built-in transport,
 *  e.g. "tcp:HOST:PORT, shm:PATH", for messages. */
const char *pc_transport_syntaxes(void);

/**
 * pc_transport_merge() - fill @dst with @src's ops and the -EOPNOTSUPP
 * stubs where @src leaves an op NULL, as pc_transport_find() does for the
 * built-in transports. For tables made elsewhere (test doubles), so their
 * callers need not test for NULL either.
 */
void pc_transport_merge(struct pc_transport_ops *dst, const struct pc_transport_ops *src);

/* Inline dispatch, so callers read like plain calls: one per op. */
static inline int pc_tp_listen(const struct pc_transport_ops *ops, const char *addr,
			       const struct pc_transport_opts *o, struct pc_listener **out)
{
	return ops->listen(addr, o, out);
}

static inline int pc_tp_listener_addr(struct pc_listener *l, char *buf, size_t len)
{
	return l->ops->listener_addr(l, buf, len);
}

static inline int pc_tp_accept(struct pc_listener *l, const struct pc_transport_opts *o,
			       struct pc_transport **out)
{
	return l->ops->accept(l, o, out);
}

static inline int pc_tp_listener_abort(struct pc_listener *l)
{
	return l->ops->listener_abort(l);
}

static inline void pc_tp_listener_close(struct pc_listener *l)
{
	if (l)
		l->ops->listener_close(l);
}

static inline int pc_tp_connect(const struct pc_transport_ops *ops, const char *addr,
				const struct pc_transport_opts *o, struct pc_transport **out)
{
	return ops->connect(addr, o, out);
}

static inline int pc_tp_expose_region(struct pc_transport *t, uint32_t id, void *addr,
				      size_t len)
{
	return t->ops->expose_region(t, id, addr, len);
}

static inline int pc_tp_expose_region_fd(struct pc_transport *t, uint32_t id, void *addr,
					 size_t len, int fd, uint64_t offset)
{
	return t->ops->expose_region_fd(t, id, addr, len, fd, offset);
}

static inline int pc_tp_unexpose_all(struct pc_transport *t)
{
	return t->ops->unexpose_all(t);
}

static inline int pc_tp_reg_local(struct pc_transport *t, const void *addr, size_t len)
{
	return t->ops->reg_local(t, addr, len);
}

static inline int pc_tp_reg_stats(struct pc_transport *t, struct pc_tp_reg_stats *out)
{
	return t->ops->reg_stats(t, out);
}

static inline int pc_tp_send_msg(struct pc_transport *t, unsigned chan,
				 const struct iovec *iov, int iovcnt)
{
	return t->ops->send_msg(t, chan, iov, iovcnt);
}

static inline int pc_tp_recv_msg(struct pc_transport *t, unsigned chan, void *buf,
				 size_t cap, size_t *len)
{
	return t->ops->recv_msg(t, chan, buf, cap, len);
}

static inline int pc_tp_write_pages(struct pc_transport *t, unsigned chan,
				    const struct pc_page_run *runs, unsigned n)
{
	return t->ops->write_pages(t, chan, runs, n);
}

static inline int pc_tp_send_fds(struct pc_transport *t, unsigned chan, const int *fds,
				 unsigned nfds, const struct iovec *iov, int iovcnt)
{
	return t->ops->send_fds(t, chan, fds, nfds, iov, iovcnt);
}

static inline int pc_tp_recv_fds(struct pc_transport *t, unsigned chan, void *buf,
				 size_t cap, size_t *len, int *fds, unsigned maxfds,
				 unsigned *nfds)
{
	return t->ops->recv_fds(t, chan, buf, cap, len, fds, maxfds, nfds);
}

static inline int pc_tp_link_stats(struct pc_transport *t, unsigned chan,
				   struct pc_tp_link_stats *out)
{
	return t->ops->link_stats(t, chan, out);
}

static inline int pc_tp_set_pacing(struct pc_transport *t, unsigned chan, uint64_t bps)
{
	return t->ops->set_pacing(t, chan, bps);
}

static inline int pc_tp_abort(struct pc_transport *t)
{
	return t->ops->abort(t);
}

static inline void pc_tp_close(struct pc_transport *t)
{
	if (t)
		t->ops->close(t);
}

/**
 * pc_fd_write_all() - send all @len bytes at @buf on the socket @fd,
 * without SIGPIPE, retrying after EINTR.
 * Return: 0; -ECONNRESET when the peer has gone; -ETIMEDOUT when the
 * socket's SO_SNDTIMEO passed without a byte sent; -errno.
 */
int pc_fd_write_all(int fd, const void *buf, size_t len);

/** pc_mono_ns() - CLOCK_MONOTONIC in ns, the clock of every transport's
 *  deadlines and figures. */
static inline uint64_t pc_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Transports built into this library (defined in their own files). */
extern const struct pc_transport_ops pc_tcp_ops;
extern const struct pc_transport_ops pc_shm_ops;
extern const struct pc_transport_ops pc_rdma_ops; /* if PRECOPY_HAVE_RDMA */
#if PRECOPY_HAVE_TLS
extern const struct pc_transport_ops pc_tls_ops;
#endif

/*
 * Internal, for tests and fuzzing: TCP-kind connections over descriptors
 * that are already connected (a socketpair, say), with no TCP hello; the
 * frames of the stream framing follow at once. On success the fds are
 * taken over (closed by close() or listener_close()).
 */
/** pc_tcp_from_fds() - a connected transport of @nchan channels over @fds.
 *  Return: 0; -EINVAL; -ENOMEM (the fds stay the caller's on error). */
int pc_tcp_from_fds(const int *fds, unsigned nchan, struct pc_transport **out);
/** pc_tcp_listener_from_fds() - a listener whose one accept() returns
 *  pc_tcp_from_fds(@fds); later accepts fail with -ENOTCONN. Give it to a
 *  destination session with pc_session_set_listener(). */
int pc_tcp_listener_from_fds(const int *fds, unsigned nchan, struct pc_listener **out);

/**
 * pc_tcp_fd_link_stats() - fill @out from the TCP_INFO and SIOCOUTQ of the
 * TCP socket @fd (tcp_info.c). Return: 0; -EOPNOTSUPP when the kernel's
 * tcp_info is too old to hold the busy time (Linux < 4.10) or @fd is not
 * TCP; -errno.
 */
int pc_tcp_fd_link_stats(int fd, struct pc_tp_link_stats *out);

/**
 * pc_tcp_fd_set_pacing() - pace the TCP socket @fd at @bps bytes/s at most
 * (SO_MAX_PACING_RATE; 0 or a rate the option cannot hold: no limit)
 * (tcp_info.c). Return: 0; -EBADF for a negative @fd; -errno.
 */
int pc_tcp_fd_set_pacing(int fd, uint64_t bps);

#endif /* PC_TRANSPORT_H */

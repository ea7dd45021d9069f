/* SPDX-License-Identifier: MIT */
/*
 * stream.h - framing of messages and page runs onto byte-stream channels
 * (TCP sockets, unix sockets). Shared by the stream transports.
 *
 * Every frame starts with a 24-byte little-endian header:
 *   le32 kind     PC_FRAME_MSG or PC_FRAME_PAGES
 *   le32 region   PAGES: the receiver's exposed region id; MSG: 0
 *   le64 offset   PAGES: byte offset in the region; MSG: 0
 *   le64 len      bytes that follow
 * PAGES frames are written into the exposed region after the bounds
 * check (plain sockets: through the channel's bounce buffer, see
 * stream.c); a MSG frame is handed to the caller of recv_msg.
 *
 * Heartbeats (pc_stream_beats_start()): a BEAT frame (region, offset and
 * len all 0) goes out on every channel that has sent nothing for a third
 * of the timeout, from a thread of its own, so a peer busy with local work
 * (a VMM saving device state, a destination verifying a large guest)
 * still shows it is alive. The receiver skips BEAT frames, and a channel
 * that receives nothing at all for the timeout fails with -ETIMEDOUT: the
 * peer's process is stopped or frozen even though its kernel still
 * answers (which TCP's own timeouts cannot tell).
 *
 * Unix sockets (shm) add two things, both of the plain-socket path:
 * descriptors passed with a message (pc_stream_pass_fds(): a MSG frame's
 * region field then counts the fds attached to its first byte), and waits
 * that poll (pc_stream_nonblock(): every call that would block polls its
 * socket, an eventfd that abort() signals and optionally a watch, such as
 * one on the socket's path).
 */
#ifndef PC_STREAM_H
#define PC_STREAM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include "precopy.h"
#include "le.h"
#include "transport.h"

#define PC_FRAME_MSG 0x50434d31u   /* "PCM1" */
#define PC_FRAME_PAGES 0x50435031u /* "PCP1" */
#define PC_FRAME_BEAT 0x50434231u  /* "PCB1" */
#define PC_FRAME_HDR 24u

/*
 * Optional byte layer between the framing and the socket (TLS): when a
 * stream has one, every byte goes through it instead of sendmsg/recvmsg on
 * the fd. writev_all() writes all of @iov (it may consume the array) or
 * returns -errno; readv() reads some bytes into @iov like readv(2) (> 0,
 * 0 at the end of the stream, -errno); fini() frees the channel's context
 * before its fd is closed. One thread may send while another receives.
 */
struct pc_stream_io {
	int (*writev_all)(void *ctx, struct iovec *iov, int iovcnt);
	ssize_t (*readv)(void *ctx, struct iovec *iov, int iovcnt);
	void (*fini)(void *ctx);
};

/* Most fds received on a channel and not yet claimed by their frame. */
#define PC_STREAM_FDQ_MAX 64

/*
 * Something a polling wait watches besides its socket (shm: the socket's
 * path). @fd is polled for POLLIN; gone(@w, true) then drains it, and
 * gone(@w, false) is cheap; either says whether the peer can no longer be
 * reached. Once it is gone, a wait that would block fails with -ENOTCONN
 * and a stream's why becomes @why.
 */
struct pc_stream_watch {
	int fd;
	bool (*gone)(struct pc_stream_watch *w, bool drain);
	const char *why;
};

struct pc_stream_chan {
	int fd;
	void *io_ctx;     /* the byte layer's, per channel */
	pthread_mutex_t send_lock;
	atomic_int err;   /* sticky: first error seen on this channel */
	uint8_t *rbuf;    /* receive buffer */
	size_t rpos, rlen;
	_Atomic uint64_t last_tx_ns; /* monotonic time of the last send */
	int fdq[PC_STREAM_FDQ_MAX]; /* fds received, not yet claimed by a frame */
	unsigned nfdq;
	uint8_t *rx_bounce; /* page runs are received into this, then copied */
	uint8_t *tx_bounce; /* and copied into this, then sent */
};

struct pc_stream_region {
	uint8_t *addr;
	size_t len;
};

struct pc_stream {
	struct pc_transport base;
	struct pc_stream_chan ch[PRECOPY_MAX_CHANNELS];
	struct pc_stream_region region[PRECOPY_MAX_REGIONS];
	/* unexpose_all() was called: page runs are refused from then on.
	 * region[] itself stays, so a receiver on another channel never
	 * sees an address and a length from different moments. */
	atomic_bool revoked;
	atomic_bool aborted;
	const struct pc_stream_io *io; /* NULL: plain sockets */
	unsigned timeout_ms;  /* heartbeats: the peer's silence allowed; 0 = off */
	int beat_efd;         /* eventfd: stops the heartbeat thread */
	pthread_t beat_thread;
	bool beat_started;
	bool fd_pass;         /* pc_stream_pass_fds() */
	int abort_efd;        /* pc_stream_nonblock(): abort() signals it; else -1 */
	unsigned send_ms;     /* pc_stream_nonblock(): a send's wait; 0 = no limit */
	struct pc_stream_watch *watch; /* optional, with abort_efd */
	/*
	 * Optional, set by the transport: called under the send lock for each
	 * page run of write_pages() before it is framed. Return 1 when it put
	 * the run in place itself (shm: a memcpy into a region the peer
	 * shared), 0 to frame it, or -errno (the channel fails).
	 */
	int (*direct)(struct pc_stream *s, const struct pc_page_run *run);
	/*
	 * Optional: a frame of a kind the stream does not know arrived; the
	 * transport handles it (taking its fds with pc_stream_take_fds()) and
	 * returns 0, or -errno (the channel fails); -ENOMSG: not its kind
	 * either.
	 */
	int (*other_frame)(struct pc_stream *s, unsigned chan, uint32_t kind, uint32_t region,
			   uint64_t off, uint64_t len);
};

/** pc_stream_init() - set up @s with @nchan connected fds (taken over). */
int pc_stream_init(struct pc_stream *s, const struct pc_transport_ops *ops,
		   const int *fds, unsigned nchan);
/**
 * pc_stream_beats_start() - send heartbeats and time out a silent peer:
 * each fd gets SO_RCVTIMEO of @timeout_ms (in poll mode, the limit of a
 * receive's wait), and a thread sends a BEAT frame
 * on every channel idle for @timeout_ms / 3. Both ends must do it (the
 * peer must know BEAT frames). Return: 0, or -errno (nothing started).
 */
int pc_stream_beats_start(struct pc_stream *s, unsigned timeout_ms);
/**
 * pc_stream_rcv_timeout() - only the receiving half of the above: a
 * channel that receives nothing for @timeout_ms fails with -ETIMEDOUT.
 * For a peer that sends no heartbeats (and so must not be sent any): its
 * silence is still not waited out for ever. Return: 0, or -errno.
 */
int pc_stream_rcv_timeout(struct pc_stream *s, unsigned timeout_ms);
/** pc_stream_fini() - stop the heartbeats, close the fds (and any
 *  received fds not claimed), free buffers. */
void pc_stream_fini(struct pc_stream *s);
/**
 * pc_stream_nonblock() - make @s's sockets non-blocking and its waits
 * poll: a send waits at most @send_ms (0: no limit) for room, a receive as
 * long as the receive timeout allows; abort() wakes both at once, and
 * @watch (optional, kept by the caller) can end them with -ENOTCONN.
 * Before anything is sent. Return: 0, or -errno.
 */
int pc_stream_nonblock(struct pc_stream *s, unsigned send_ms, struct pc_stream_watch *watch);
/** pc_stream_pass_fds() - @s carries fds with its messages (unix
 *  sockets; send_fds/recv_fds). Before anything is sent. */
void pc_stream_pass_fds(struct pc_stream *s);
/**
 * pc_stream_take_fds() - claim @n fds received on @chan into @out (closed
 * if @out is NULL), for a frame that announced them. Return: 0; -EPROTO
 * (with the reason in why) when fewer arrived.
 */
int pc_stream_take_fds(struct pc_stream *s, unsigned chan, unsigned n, int *out);
/** pc_stream_set_why() - the reason of the first failure, for @s's why
 *  (kept if one is already there). */
void pc_stream_set_why(struct pc_stream *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * The ops of a stream transport, for its pc_transport_ops (transport.h
 * says what each does). send_fds/recv_fds need pc_stream_pass_fds().
 */
int pc_stream_abort(struct pc_transport *t);
int pc_stream_expose_region(struct pc_transport *t, uint32_t id, void *addr, size_t len);
int pc_stream_unexpose_all(struct pc_transport *t);
int pc_stream_reg_local(struct pc_transport *t, const void *addr, size_t len);
int pc_stream_send_msg(struct pc_transport *t, unsigned chan, const struct iovec *iov,
		       int iovcnt);
int pc_stream_recv_msg(struct pc_transport *t, unsigned chan, void *buf, size_t cap,
		       size_t *len);
int pc_stream_write_pages(struct pc_transport *t, unsigned chan,
			  const struct pc_page_run *runs, unsigned n);
int pc_stream_send_fds(struct pc_transport *t, unsigned chan, const int *fds, unsigned nfds,
		       const struct iovec *iov, int iovcnt);
int pc_stream_recv_fds(struct pc_transport *t, unsigned chan, void *buf, size_t cap,
		       size_t *len, int *fds, unsigned maxfds, unsigned *nfds);

/* Helpers for the transports' own handshakes. */
/* The 32-byte hello that opens each tcp: and shm: connection (PROTOCOL.md):
 * le32 magic, version, flags, channel index, channel count, le64 cookie. */
#define PC_HELLO_SIZE 32
#define PC_HELLO_VERSION 1
#define PC_HELLO_BEATS 0x01u /* flags (byte 5): heartbeats both ways */
/**
 * pc_hello_encode() - a hello into the PC_HELLO_SIZE bytes at @b: @magic,
 * PC_HELLO_VERSION, PC_HELLO_BEATS, channel @chan of @nchan, @cookie.
 */
void pc_hello_encode(uint8_t *b, uint32_t magic, unsigned chan, unsigned nchan,
		     uint64_t cookie);
/** pc_fd_writev_all() - write all of @iov (consumed), or -errno;
 *  -ETIMEDOUT when the socket's SO_SNDTIMEO passed without a byte sent. */
int pc_fd_writev_all(int fd, struct iovec *iov, int iovcnt);
/** pc_fd_read_all() - read exactly @len bytes; -ECONNRESET on EOF. */
int pc_fd_read_all(int fd, void *buf, size_t len);
/**
 * pc_fd_wait() - wait until @fd is ready for @ev (POLLIN, POLLOUT).
 * @abort_efd: an eventfd (or -1) whose signal ends the wait; @w: optional.
 * Return: 0; -ECANCELED once @abort_efd is signalled; -ENOTCONN when @w
 * says the peer is gone and @fd is not ready; -ETIMEDOUT after @ms
 * (0: no limit); -errno.
 */
int pc_fd_wait(int fd, short ev, int abort_efd, struct pc_stream_watch *w, unsigned ms);

#endif /* PC_STREAM_H */

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

struct pc_stream_chan {
	int fd;
	void *io_ctx;     /* the byte layer's, per channel */
	pthread_mutex_t send_lock;
	atomic_int err;   /* sticky: first error seen on this channel */
	uint8_t *rbuf;    /* receive buffer */
	size_t rpos, rlen;
	_Atomic uint64_t last_tx_ns; /* monotonic time of the last send */
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
};

/** pc_stream_init() - set up @s with @nchan connected fds (taken over). */
int pc_stream_init(struct pc_stream *s, const struct pc_transport_ops *ops,
		   const int *fds, unsigned nchan);
/**
 * pc_stream_beats_start() - send heartbeats and time out a silent peer:
 * each fd gets SO_RCVTIMEO of @timeout_ms, and a thread sends a BEAT frame
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
/** pc_stream_fini() - stop the heartbeats, close the fds, free buffers. */
void pc_stream_fini(struct pc_stream *s);

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

/* Helpers for the transports' own handshakes. */
/** pc_fd_writev_all() - write all of @iov (consumed), or -errno;
 *  -ETIMEDOUT when the socket's SO_SNDTIMEO passed without a byte sent. */
int pc_fd_writev_all(int fd, struct iovec *iov, int iovcnt);
/** pc_fd_read_all() - read exactly @len bytes; -ECONNRESET on EOF. */
int pc_fd_read_all(int fd, void *buf, size_t len);

#endif /* PC_STREAM_H */

/* SPDX-License-Identifier: MIT */
/*
 * stream.c - messages and page runs framed onto byte-stream channels.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "stream.h"

#define RTAIL (16u * 1024) /* what may spill past a read */
#define RBUF_SIZE RTAIL
#define RUNS_PER_WRITE 256 /* 2 iovecs a run; well under IOV_MAX */
/* Page data copied through a buffer this big at each end, so it is still
 * in cache when copied out again (see chan_read_pages()). */
#define BOUNCE_SIZE (64u * 1024)

static void set_why(struct pc_stream *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void set_why(struct pc_stream *s, const char *fmt, ...)
{
	va_list ap;

	if (s->base.why[0])
		return;
	va_start(ap, fmt);
	vsnprintf(s->base.why, sizeof(s->base.why), fmt, ap);
	va_end(ap);
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int pc_stream_init(struct pc_stream *s, const struct pc_transport_ops *ops, const int *fds,
		   unsigned nchan)
{
	unsigned i;

	if (!s || !ops || !fds || nchan == 0 || nchan > PRECOPY_MAX_CHANNELS)
		return -EINVAL;
	memset(s, 0, sizeof(*s));
	s->base.ops = ops;
	s->base.nchan = nchan;
	atomic_init(&s->aborted, false);
	atomic_init(&s->revoked, false);
	s->beat_efd = -1;
	for (i = 0; i < PRECOPY_MAX_CHANNELS; i++)
		s->ch[i].fd = -1;
	for (i = 0; i < nchan; i++) {
		s->ch[i].rbuf = malloc(RBUF_SIZE);
		s->ch[i].rx_bounce = malloc(BOUNCE_SIZE);
		s->ch[i].tx_bounce = malloc(BOUNCE_SIZE);
		if (!s->ch[i].rbuf || !s->ch[i].rx_bounce || !s->ch[i].tx_bounce) {
			free(s->ch[i].rbuf);
			free(s->ch[i].rx_bounce);
			free(s->ch[i].tx_bounce);
			goto err_free;
		}
		/* touched now, not while pages arrive (the page-fault count) */
		memset(s->ch[i].rx_bounce, 0, BOUNCE_SIZE);
		memset(s->ch[i].tx_bounce, 0, BOUNCE_SIZE);
		pthread_mutex_init(&s->ch[i].send_lock, NULL);
	}
	for (i = 0; i < nchan; i++)
		s->ch[i].fd = fds[i];
	return 0;

err_free:
	while (i--) {
		pthread_mutex_destroy(&s->ch[i].send_lock);
		free(s->ch[i].rbuf);
		free(s->ch[i].rx_bounce);
		free(s->ch[i].tx_bounce);
	}
	return -ENOMEM;
}

void pc_stream_fini(struct pc_stream *s)
{
	if (s->beat_started) {
		uint64_t one = 1;

		if (write(s->beat_efd, &one, sizeof(one)) < 0)
			atomic_store(&s->aborted, true); /* the thread sees this too */
		pthread_join(s->beat_thread, NULL);
		s->beat_started = false;
	}
	if (s->beat_efd >= 0)
		close(s->beat_efd);
	s->beat_efd = -1;
	for (unsigned i = 0; i < s->base.nchan; i++) {
		if (s->io && s->ch[i].io_ctx)
			s->io->fini(s->ch[i].io_ctx);
		s->ch[i].io_ctx = NULL;
		if (s->ch[i].fd >= 0)
			close(s->ch[i].fd);
		pthread_mutex_destroy(&s->ch[i].send_lock);
		free(s->ch[i].rbuf);
		free(s->ch[i].rx_bounce);
		free(s->ch[i].tx_bounce);
		s->ch[i].fd = -1;
		s->ch[i].rbuf = NULL;
		s->ch[i].rx_bounce = NULL;
		s->ch[i].tx_bounce = NULL;
	}
}

int pc_stream_abort(struct pc_transport *t)
{
	struct pc_stream *s = (struct pc_stream *)t;

	atomic_store(&s->aborted, true);
	/* shutdown() wakes blocked send/recv without closing the fds, so no
	 * fd number can be reused while another thread still uses it. */
	for (unsigned i = 0; i < t->nchan; i++)
		if (s->ch[i].fd >= 0)
			shutdown(s->ch[i].fd, SHUT_RDWR);
	return 0;
}

int pc_stream_expose_region(struct pc_transport *t, uint32_t id, void *addr, size_t len)
{
	struct pc_stream *s = (struct pc_stream *)t;

	if (id >= PRECOPY_MAX_REGIONS || !addr || len == 0)
		return -EINVAL;
	s->region[id].addr = addr;
	s->region[id].len = len;
	return 0;
}

int pc_stream_unexpose_all(struct pc_transport *t)
{
	struct pc_stream *s = (struct pc_stream *)t;

	atomic_store(&s->revoked, true);
	return 0;
}

int pc_stream_reg_local(struct pc_transport *t, const void *addr, size_t len)
{
	(void)t, (void)addr, (void)len;
	return 0; /* a stream reads local memory as it is */
}

int pc_fd_writev_all(int fd, struct iovec *iov, int iovcnt)
{
	while (iovcnt > 0) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)iovcnt };
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return -ETIMEDOUT; /* SO_SNDTIMEO: the peer reads nothing */
			return errno == EPIPE ? -ECONNRESET : -errno;
		}
		while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

int pc_fd_read_all(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = recv(fd, p, len, MSG_WAITALL);

		if (n == 0)
			return -ECONNRESET;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int chan_check(struct pc_stream *s, unsigned chan)
{
	if (chan >= s->base.nchan)
		return -EINVAL;
	if (atomic_load(&s->aborted))
		return -ECANCELED;
	return atomic_load(&s->ch[chan].err);
}

static int chan_fail(struct pc_stream *s, unsigned chan, int err)
{
	if (atomic_load(&s->aborted))
		err = -ECANCELED;
	int none = 0;

	atomic_compare_exchange_strong(&s->ch[chan].err, &none, err);
	return err;
}

static int chan_writev_all(struct pc_stream *s, unsigned chan, struct iovec *v, int n)
{
	int err = s->io ? s->io->writev_all(s->ch[chan].io_ctx, v, n)
			: pc_fd_writev_all(s->ch[chan].fd, v, n);

	if (!err)
		atomic_store(&s->ch[chan].last_tx_ns, mono_ns());
	if (err == -ETIMEDOUT && !atomic_load(&s->aborted))
		set_why(s, "channel %u: the peer has read nothing of what was sent for the "
			   "whole timeout (a hung or stopped process?)", chan);
	return err;
}

int pc_stream_send_msg(struct pc_transport *t, unsigned chan, const struct iovec *iov,
		       int iovcnt)
{
	struct pc_stream *s = (struct pc_stream *)t;
	struct iovec v[9];
	uint8_t hdr[PC_FRAME_HDR];
	size_t total = 0;
	int err;

	if (iovcnt < 0 || iovcnt > 8 || (iovcnt && !iov))
		return -EINVAL;
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (total > PC_MSG_MAX)
		return -EMSGSIZE;
	pc_put_le32(hdr, PC_FRAME_MSG);
	pc_put_le32(hdr + 4, 0);
	pc_put_le64(hdr + 8, 0);
	pc_put_le64(hdr + 16, total);
	v[0].iov_base = hdr;
	v[0].iov_len = sizeof(hdr);
	for (int i = 0; i < iovcnt; i++)
		v[i + 1] = iov[i];

	if (chan >= t->nchan)
		return -EINVAL;
	pthread_mutex_lock(&s->ch[chan].send_lock);
	err = chan_check(s, chan);
	if (!err) {
		err = chan_writev_all(s, chan, v, iovcnt + 1);
		if (err)
			err = chan_fail(s, chan, err);
	}
	pthread_mutex_unlock(&s->ch[chan].send_lock);
	return err;
}

/*
 * Page runs copied into the channel's bounce buffer and sent from there,
 * a buffer at a time: the kernel's copy then reads only that buffer, never
 * the guest's pages (the reason is at chan_read_pages()). The frames on
 * the wire are the same. Called with the send lock held.
 */
static int write_runs_bounced(struct pc_stream *s, unsigned chan,
			      const struct pc_page_run *runs, unsigned n)
{
	uint8_t hdr[RUNS_PER_WRITE][PC_FRAME_HDR];
	struct iovec v[2 * RUNS_PER_WRITE];
	uint8_t *buf = s->ch[chan].tx_bounce;
	size_t used = 0;
	int nv = 0, nh = 0, err = 0;

	for (unsigned i = 0; i < n && !err; i++) {
		size_t off = 0;

		pc_put_le32(hdr[nh], PC_FRAME_PAGES);
		pc_put_le32(hdr[nh] + 4, runs[i].region);
		pc_put_le64(hdr[nh] + 8, runs[i].offset);
		pc_put_le64(hdr[nh] + 16, runs[i].len);
		v[nv].iov_base = hdr[nh++];
		v[nv++].iov_len = PC_FRAME_HDR;
		while (off < runs[i].len && !err) {
			size_t k = runs[i].len - off < BOUNCE_SIZE - used ? runs[i].len - off
									: BOUNCE_SIZE - used;

			memcpy(buf + used, (const uint8_t *)runs[i].src + off, k);
			v[nv].iov_base = buf + used;
			v[nv++].iov_len = k;
			used += k;
			off += k;
			/* full, or no room for another header and piece */
			if (used == BOUNCE_SIZE || nh == RUNS_PER_WRITE ||
			    nv + 2 > 2 * RUNS_PER_WRITE) {
				err = chan_writev_all(s, chan, v, nv);
				used = 0;
				nv = 0;
				nh = 0;
			}
		}
	}
	if (!err && nv)
		err = chan_writev_all(s, chan, v, nv);
	return err ? chan_fail(s, chan, err) : 0;
}

int pc_stream_write_pages(struct pc_transport *t, unsigned chan,
			  const struct pc_page_run *runs, unsigned n)
{
	struct pc_stream *s = (struct pc_stream *)t;
	uint8_t hdr[RUNS_PER_WRITE][PC_FRAME_HDR];
	struct iovec v[2 * RUNS_PER_WRITE];
	int err = 0;

	if (chan >= t->nchan || (n && !runs))
		return -EINVAL;
	for (unsigned i = 0; i < n; i++)
		if (!runs[i].src || runs[i].len == 0 || runs[i].region >= PRECOPY_MAX_REGIONS)
			return -EINVAL;

	pthread_mutex_lock(&s->ch[chan].send_lock);
	err = chan_check(s, chan);
	if (!err && !s->io) { /* (a byte layer encrypts from user space) */
		err = write_runs_bounced(s, chan, runs, n);
		n = 0;
	}
	while (!err && n > 0) {
		unsigned k = n < RUNS_PER_WRITE ? n : RUNS_PER_WRITE;

		for (unsigned i = 0; i < k; i++) {
			pc_put_le32(hdr[i], PC_FRAME_PAGES);
			pc_put_le32(hdr[i] + 4, runs[i].region);
			pc_put_le64(hdr[i] + 8, runs[i].offset);
			pc_put_le64(hdr[i] + 16, runs[i].len);
			v[2 * i].iov_base = hdr[i];
			v[2 * i].iov_len = PC_FRAME_HDR;
			v[2 * i + 1].iov_base = (void *)runs[i].src;
			v[2 * i + 1].iov_len = runs[i].len;
		}
		err = chan_writev_all(s, chan, v, (int)(2 * k));
		if (err)
			err = chan_fail(s, chan, err);
		runs += k;
		n -= k;
	}
	pthread_mutex_unlock(&s->ch[chan].send_lock);
	return err;
}

/* Read exactly @n bytes from the channel into @dst. Bytes already in the
 * channel's buffer are taken first; then each recvmsg() puts the wanted
 * bytes straight into @dst and lets at most RTAIL bytes that follow (the
 * next frame header, say) spill into the buffer, so small frames do not
 * cost a system call each. */
static int chan_read(struct pc_stream *s, unsigned chan, void *dst, size_t n)
{
	struct pc_stream_chan *c = &s->ch[chan];
	uint8_t *p = dst;

	while (n > 0) {
		size_t have = c->rlen - c->rpos;
		struct iovec v[2];
		struct msghdr mh = { .msg_iov = v, .msg_iovlen = 2 };
		ssize_t r;

		if (have) {
			size_t k = have < n ? have : n;

			memcpy(p, c->rbuf + c->rpos, k);
			c->rpos += k;
			p += k;
			n -= k;
			continue;
		}
		v[0].iov_base = p;
		v[0].iov_len = n;
		v[1].iov_base = c->rbuf;
		v[1].iov_len = RTAIL;
		if (s->io) {
			r = s->io->readv(c->io_ctx, v, 2);
			if (r < 0) {
				errno = (int)-r;
				r = -1;
			}
		} else {
			r = recvmsg(c->fd, &mh, 0);
		}
		if (r > 0) {
			if ((size_t)r <= n) {
				p += r;
				n -= (size_t)r;
			} else {
				c->rpos = 0;
				c->rlen = (size_t)r - n;
				n = 0;
			}
			continue;
		}
		if (r == 0) {
			if (!atomic_load(&s->aborted))
				set_why(s, "peer closed channel %u", chan);
			return -ECONNRESET;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT) {
			/* SO_RCVTIMEO, set with the heartbeats */
			if (!atomic_load(&s->aborted))
				set_why(s, "channel %u: nothing from the peer, not even a "
					   "heartbeat, for %u ms (a hung or stopped process?)",
					chan, s->timeout_ms);
			return -ETIMEDOUT;
		}
		return -errno;
	}
	return 0;
}

/*
 * A page run's bytes into @dst: received into the channel's bounce buffer
 * and copied from there, not received straight into @dst. One more copy,
 * from cache; but the kernel then never reaches the guest's pages, only
 * this process does. Under a hypervisor that builds a guest's kernel-mode
 * and user-mode mappings of a page lazily and apart (shadow paging), the
 * first reach of a page from each costs about 8 us, and the engine reads
 * every page it received to check it: received in place, a page paid
 * twice, this way once (docs/PERFORMANCE.md). On bare metal the copy costs
 * what copying from cache does.
 */
static int chan_read_pages(struct pc_stream *s, unsigned chan, uint8_t *dst, size_t n)
{
	struct pc_stream_chan *c = &s->ch[chan];

	if (s->io) /* a byte layer (TLS) decrypts into @dst from user space */
		return chan_read(s, chan, dst, n);
	while (n > 0) {
		size_t k = n < BOUNCE_SIZE ? n : BOUNCE_SIZE;
		int err = chan_read(s, chan, c->rx_bounce, k);

		if (err)
			return err;
		memcpy(dst, c->rx_bounce, k);
		dst += k;
		n -= k;
	}
	return 0;
}

int pc_stream_recv_msg(struct pc_transport *t, unsigned chan, void *buf, size_t cap,
		       size_t *len)
{
	struct pc_stream *s = (struct pc_stream *)t;
	uint8_t hdr[PC_FRAME_HDR];
	int err;

	if (!len || (cap && !buf))
		return -EINVAL;
	err = chan_check(s, chan);
	if (err)
		return err;
	for (;;) {
		uint32_t kind, region;
		uint64_t off, n;

		err = chan_read(s, chan, hdr, sizeof(hdr));
		if (err)
			return chan_fail(s, chan, err);
		kind = pc_get_le32(hdr);
		region = pc_get_le32(hdr + 4);
		off = pc_get_le64(hdr + 8);
		n = pc_get_le64(hdr + 16);

		if (kind == PC_FRAME_MSG) {
			if (region || off) {
				set_why(s, "message frame with region/offset set");
				return chan_fail(s, chan, -EPROTO);
			}
			if (n > cap || n > PC_MSG_MAX) {
				set_why(s, "message of %llu bytes exceeds %zu",
					(unsigned long long)n, cap);
				return chan_fail(s, chan, -EMSGSIZE);
			}
			err = chan_read(s, chan, buf, (size_t)n);
			if (err)
				return chan_fail(s, chan, err);
			*len = (size_t)n;
			return 0;
		}
		if (kind == PC_FRAME_BEAT) {
			if (region || off || n) {
				set_why(s, "heartbeat frame with region/offset/length set");
				return chan_fail(s, chan, -EPROTO);
			}
			continue;
		}
		if (kind != PC_FRAME_PAGES) {
			set_why(s, "unknown frame kind 0x%08x", kind);
			return chan_fail(s, chan, -EPROTO);
		}
		if (region >= PRECOPY_MAX_REGIONS || !s->region[region].addr) {
			set_why(s, "page run for region %u, which is not registered", region);
			return chan_fail(s, chan, -EPROTO);
		}
		if (atomic_load(&s->revoked)) {
			set_why(s, "page run for region %u after the regions were revoked", region);
			return chan_fail(s, chan, -EPROTO);
		}
		if (n == 0 || off > s->region[region].len || n > s->region[region].len - off) {
			set_why(s, "page run [%llu, +%llu) outside region %u of %zu bytes",
				(unsigned long long)off, (unsigned long long)n, region,
				s->region[region].len);
			return chan_fail(s, chan, -EPROTO);
		}
		err = chan_read_pages(s, chan, s->region[region].addr + off, (size_t)n);
		if (err)
			return chan_fail(s, chan, err);
		if (t->placed)
			t->placed(t->placed_arg, chan, region, off, n);
	}
}

/* Send a BEAT on every channel idle for a third of the timeout. A channel
 * in the middle of a send is not idle, and the peer is reading it (or the
 * send times out): it is skipped, never waited for. */
static void *beat_main(void *arg)
{
	struct pc_stream *s = arg;
	uint64_t idle_ns = (uint64_t)s->timeout_ms * 1000000ull / 3;
	int step = (int)(s->timeout_ms / 12) + 1;

	while (!atomic_load(&s->aborted)) {
		struct pollfd p = { .fd = s->beat_efd, .events = POLLIN };
		int r = poll(&p, 1, step);

		if (r > 0 || (r < 0 && errno != EINTR))
			break;
		for (unsigned i = 0; i < s->base.nchan; i++) {
			struct pc_stream_chan *c = &s->ch[i];
			uint8_t hdr[PC_FRAME_HDR] = { 0 };
			struct iovec v = { hdr, sizeof(hdr) };
			int err;

			if (mono_ns() - atomic_load(&c->last_tx_ns) < idle_ns ||
			    pthread_mutex_trylock(&c->send_lock))
				continue;
			err = chan_check(s, i);
			if (!err) {
				pc_put_le32(hdr, PC_FRAME_BEAT);
				err = chan_writev_all(s, i, &v, 1);
				if (err)
					chan_fail(s, i, err);
			}
			pthread_mutex_unlock(&c->send_lock);
		}
	}
	return NULL;
}

int pc_stream_rcv_timeout(struct pc_stream *s, unsigned timeout_ms)
{
	struct timeval tv = { .tv_sec = timeout_ms / 1000,
			      .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000 };

	if (!s || timeout_ms == 0)
		return -EINVAL;
	for (unsigned i = 0; i < s->base.nchan; i++)
		if (setsockopt(s->ch[i].fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)))
			return -errno;
	s->timeout_ms = timeout_ms;
	return 0;
}

int pc_stream_beats_start(struct pc_stream *s, unsigned timeout_ms)
{
	int err;

	if (!s || timeout_ms == 0 || s->beat_started)
		return -EINVAL;
	err = pc_stream_rcv_timeout(s, timeout_ms);
	if (err)
		return err;
	s->beat_efd = eventfd(0, EFD_CLOEXEC);
	if (s->beat_efd < 0)
		return -errno;
	for (unsigned i = 0; i < s->base.nchan; i++)
		atomic_store(&s->ch[i].last_tx_ns, mono_ns());
	err = -pthread_create(&s->beat_thread, NULL, beat_main, s);
	if (err)
		return err;
	s->beat_started = true;
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * stream.c - messages and page runs framed onto byte-stream channels.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "stream.h"

#define RTAIL (16u * 1024) /* what may spill past a read */
#define RBUF_SIZE RTAIL
#define RUNS_PER_WRITE 256 /* 2 iovecs a run; well under IOV_MAX */
#define FDS_PER_READ 16    /* fds one read can take (a frame carries PC_TP_FDS_MAX) */
/* Page data copied through a buffer this big at each end, so it is still
 * in cache when copied out again (see chan_read_pages()). */
#define BOUNCE_SIZE (64u * 1024)

void pc_stream_set_why(struct pc_stream *s, const char *fmt, ...)
{
	va_list ap;

	if (s->base.why[0])
		return;
	va_start(ap, fmt);
	vsnprintf(s->base.why, sizeof(s->base.why), fmt, ap);
	va_end(ap);
}

#define set_why pc_stream_set_why
#define mono_ns pc_mono_ns

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
	s->abort_efd = -1;
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
	if (s->abort_efd >= 0)
		close(s->abort_efd);
	s->abort_efd = -1;
	for (unsigned i = 0; i < s->base.nchan; i++) {
		pc_stream_take_fds(s, i, s->ch[i].nfdq, NULL);
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
	if (s->abort_efd >= 0) {
		uint64_t one = 1;

		if (write(s->abort_efd, &one, sizeof(one)) < 0) {
			/* a counter of 1s cannot overflow; nothing to do */
		}
	}
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

int pc_stream_nonblock(struct pc_stream *s, unsigned send_ms, struct pc_stream_watch *watch)
{
	if (!s || s->abort_efd >= 0)
		return -EINVAL;
	for (unsigned i = 0; i < s->base.nchan; i++) {
		int fl = fcntl(s->ch[i].fd, F_GETFL);

		if (fl < 0 || fcntl(s->ch[i].fd, F_SETFL, fl | O_NONBLOCK) < 0)
			return -errno;
	}
	s->abort_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->abort_efd < 0)
		return -errno;
	s->send_ms = send_ms;
	s->watch = watch;
	return 0;
}

void pc_stream_pass_fds(struct pc_stream *s)
{
	s->fd_pass = true;
}

int pc_fd_wait(int fd, short ev, int abort_efd, struct pc_stream_watch *w, unsigned ms)
{
	struct pollfd p[3] = {
		{ .fd = fd, .events = ev },
		{ .fd = abort_efd, .events = POLLIN },
		{ .fd = w ? w->fd : -1, .events = POLLIN },
	};
	uint64_t end = ms ? mono_ns() + (uint64_t)ms * 1000000ull : 0;

	for (;;) {
		bool gone = w && w->gone(w, false);
		uint64_t now = end ? mono_ns() : 0;
		int left = gone || (end && now >= end) ? 0
			   : end ? (int)((end - now + 999999) / 1000000) : -1;
		int r = poll(p, 3, left);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (p[1].revents)
			return -ECANCELED;
		if (p[0].revents)
			return 0;
		if (r == 0)
			return gone ? -ENOTCONN : -ETIMEDOUT;
		if (p[2].revents)
			w->gone(w, true);
	}
}

/*
 * Send all of @iov (consumed) on @fd, @nfds fds attached to its first
 * byte. @s: a stream in poll mode waits for room as it says; NULL, or a
 * blocking stream: the socket's SO_SNDTIMEO ends the wait (-ETIMEDOUT).
 */
static int sendv(const struct pc_stream *s, int fd, struct iovec *iov, int iovcnt,
		 const int *fds, unsigned nfds)
{
	bool polls = s && s->abort_efd >= 0;
	union {
		char buf[CMSG_SPACE(sizeof(int) * PC_TP_FDS_MAX)];
		struct cmsghdr align;
	} u;

	while (iovcnt > 0) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)iovcnt };
		ssize_t n;

		if (nfds) {
			struct cmsghdr *cm;

			memset(&u, 0, sizeof(u));
			mh.msg_control = u.buf;
			mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
			cm = CMSG_FIRSTHDR(&mh);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
			memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
		}
		n = sendmsg(fd, &mh, MSG_NOSIGNAL | (polls ? MSG_DONTWAIT : 0));
		if (n < 0) {
			int err;

			if (errno == EINTR)
				continue;
			if (errno == EPIPE)
				return -ECONNRESET;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -errno;
			if (!polls)
				return -ETIMEDOUT; /* SO_SNDTIMEO: the peer reads nothing */
			err = pc_fd_wait(fd, POLLOUT, s->abort_efd, s->watch, s->send_ms);
			if (err)
				return err;
			continue;
		}
		nfds = 0; /* the fds went with the first byte */
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

int pc_fd_writev_all(int fd, struct iovec *iov, int iovcnt)
{
	return sendv(NULL, fd, iov, iovcnt, NULL, 0);
}

void pc_hello_encode(uint8_t *b, uint32_t magic, unsigned chan, unsigned nchan,
		     uint64_t cookie)
{
	memset(b, 0, PC_HELLO_SIZE);
	pc_put_le32(b, magic);
	b[4] = PC_HELLO_VERSION;
	b[5] = PC_HELLO_BEATS;
	b[6] = (uint8_t)chan;
	b[8] = (uint8_t)nchan;
	pc_put_le64(b + 12, cookie);
}

int pc_fd_write_all(int fd, const void *buf, size_t len)
{
	struct iovec v = { .iov_base = (void *)buf, .iov_len = len };

	return sendv(NULL, fd, &v, 1, NULL, 0);
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
	int none = 0;

	if (atomic_load(&s->aborted))
		err = -ECANCELED;
	if (err == -ENOTCONN && s->watch)
		set_why(s, "%s", s->watch->why);
	atomic_compare_exchange_strong(&s->ch[chan].err, &none, err);
	return err;
}

static int chan_writev_all(struct pc_stream *s, unsigned chan, struct iovec *v, int n,
			   const int *fds, unsigned nfds)
{
	int err = s->io ? s->io->writev_all(s->ch[chan].io_ctx, v, n)
			: sendv(s, s->ch[chan].fd, v, n, fds, nfds);

	if (!err)
		atomic_store(&s->ch[chan].last_tx_ns, mono_ns());
	if (atomic_load(&s->aborted))
		return err;
	if (err == -ETIMEDOUT)
		set_why(s, "channel %u: the peer has read nothing of what was sent for the "
			   "whole timeout (a hung or stopped process?)", chan);
	if (err == -ECONNRESET && !s->io)
		set_why(s, "peer closed channel %u", chan);
	return err;
}

int pc_stream_send_fds(struct pc_transport *t, unsigned chan, const int *fds, unsigned nfds,
		       const struct iovec *iov, int iovcnt)
{
	struct pc_stream *s = (struct pc_stream *)t;
	struct iovec v[9];
	uint8_t hdr[PC_FRAME_HDR];
	size_t total = 0;
	int err;

	if (iovcnt < 0 || iovcnt > 8 || (iovcnt && !iov) || nfds > PC_TP_FDS_MAX ||
	    (nfds && (!fds || !s->fd_pass)))
		return -EINVAL;
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (total > PC_MSG_MAX)
		return -EMSGSIZE;
	pc_put_le32(hdr, PC_FRAME_MSG);
	pc_put_le32(hdr + 4, nfds);
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
		err = chan_writev_all(s, chan, v, iovcnt + 1, fds, nfds);
		if (err)
			err = chan_fail(s, chan, err);
	}
	pthread_mutex_unlock(&s->ch[chan].send_lock);
	return err;
}

int pc_stream_send_msg(struct pc_transport *t, unsigned chan, const struct iovec *iov,
		       int iovcnt)
{
	return pc_stream_send_fds(t, chan, NULL, 0, iov, iovcnt);
}

/* The PAGES frame header that goes before run @r's bytes. */
static void put_pages_hdr(uint8_t *h, const struct pc_page_run *r)
{
	pc_put_le32(h, PC_FRAME_PAGES);
	pc_put_le32(h + 4, r->region);
	pc_put_le64(h + 8, r->offset);
	pc_put_le64(h + 16, r->len);
}

/* Frame up to RUNS_PER_WRITE of @runs (those the direct hook does not
 * place) into @hdr and @v; *@used: how many of @runs were taken. Return:
 * the iovecs filled, or -errno from the hook. */
static int frame_runs(struct pc_stream *s, const struct pc_page_run *runs, unsigned n,
		      uint8_t (*hdr)[PC_FRAME_HDR], struct iovec *v, unsigned *used)
{
	unsigned k = 0, i;

	for (i = 0; i < n && k < RUNS_PER_WRITE; i++) {
		int d = s->direct ? s->direct(s, &runs[i]) : 0;

		if (d < 0) {
			*used = i;
			return d;
		}
		if (d)
			continue;
		put_pages_hdr(hdr[k], &runs[i]);
		v[2 * k].iov_base = hdr[k];
		v[2 * k].iov_len = PC_FRAME_HDR;
		v[2 * k + 1].iov_base = (void *)runs[i].src;
		v[2 * k + 1].iov_len = runs[i].len;
		k++;
	}
	*used = i;
	return (int)(2 * k);
}

/*
 * Page runs copied into the channel's bounce buffer and sent from there,
 * a buffer at a time: the kernel's copy then reads only that buffer, never
 * the guest's pages (the reason is at chan_read_pages()). The frames on
 * the wire are the same; runs the direct hook places are not framed.
 * Called with the send lock held.
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
		int d = s->direct ? s->direct(s, &runs[i]) : 0;
		size_t off = 0;

		if (d < 0) {
			err = d;
			break;
		}
		if (d)
			continue; /* placed by the transport itself */
		put_pages_hdr(hdr[nh], &runs[i]);
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
				err = chan_writev_all(s, chan, v, nv, NULL, 0);
				used = 0;
				nv = 0;
				nh = 0;
			}
		}
	}
	if (!err && nv)
		err = chan_writev_all(s, chan, v, nv, NULL, 0);
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
		unsigned used;
		int nv = frame_runs(s, runs, n, hdr, v, &used);

		err = nv < 0 ? nv : nv ? chan_writev_all(s, chan, v, nv, NULL, 0) : 0;
		if (err)
			err = chan_fail(s, chan, err);
		runs += used;
		n -= used;
	}
	pthread_mutex_unlock(&s->ch[chan].send_lock);
	return err;
}

/* Queue the fds that came with a read on @chan; -EPROTO when there were
 * more than a channel holds. */
static int queue_fds(struct pc_stream *s, unsigned chan, struct msghdr *mh)
{
	struct pc_stream_chan *c = &s->ch[chan];
	bool overflow = (mh->msg_flags & MSG_CTRUNC) != 0;

	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		const uint8_t *f = CMSG_DATA(cm);
		size_t k;

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;

			memcpy(&fd, f + i * sizeof(int), sizeof(fd));
			if (c->nfdq < PC_STREAM_FDQ_MAX) {
				c->fdq[c->nfdq++] = fd;
			} else {
				close(fd);
				overflow = true;
			}
		}
	}
	if (overflow) {
		set_why(s, "peer sent more file descriptors than expected on channel %u", chan);
		return -EPROTO;
	}
	return 0;
}

int pc_stream_take_fds(struct pc_stream *s, unsigned chan, unsigned n, int *out)
{
	struct pc_stream_chan *c = &s->ch[chan];

	if (c->nfdq < n) {
		set_why(s, "frame announces %u file descriptors, %u arrived", n, c->nfdq);
		return -EPROTO;
	}
	for (unsigned i = 0; i < n; i++) {
		if (out)
			out[i] = c->fdq[i];
		else
			close(c->fdq[i]);
	}
	memmove(c->fdq, c->fdq + n, (c->nfdq - n) * sizeof(int));
	c->nfdq -= n;
	return 0;
}

/* One read from channel @chan's socket into @v (like readv: > 0, 0 at the
 * end, -1 with errno); fds that come along are queued. In poll mode a
 * read that would block waits, as long as the receive timeout allows. */
static ssize_t sock_read(struct pc_stream *s, unsigned chan, struct iovec *v, int n)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * FDS_PER_READ)];
		struct cmsghdr align;
	} u;
	int fd = s->ch[chan].fd;

	for (;;) {
		struct msghdr mh = { .msg_iov = v, .msg_iovlen = (size_t)n };
		bool polls = s->abort_efd >= 0;
		ssize_t r;
		int err;

		if (s->fd_pass) {
			mh.msg_control = u.buf;
			mh.msg_controllen = sizeof(u.buf);
		}
		r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | (polls ? MSG_DONTWAIT : 0));
		if (r >= 0 && s->fd_pass && (err = queue_fds(s, chan, &mh))) {
			errno = -err;
			return -1;
		}
		if (r >= 0 || !polls || (errno != EAGAIN && errno != EWOULDBLOCK))
			return r;
		err = pc_fd_wait(fd, POLLIN, s->abort_efd, s->watch, s->timeout_ms);
		if (err) {
			errno = -err;
			return -1;
		}
	}
}

/* Read exactly @n bytes from the channel into @dst. Bytes already in the
 * channel's buffer are taken first; then each read puts the wanted
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
			r = sock_read(s, chan, v, 2);
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
			/* SO_RCVTIMEO, set with the heartbeats; or a polling wait */
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

/* A frame header, decoded. */
struct frame {
	uint32_t kind, region;
	uint64_t off, len;
};

/* The body of a MSG frame into @buf, with the fds it announced. */
static int recv_message(struct pc_stream *s, unsigned chan, const struct frame *f, void *buf,
			size_t cap, size_t *len, int *fds, unsigned maxfds, unsigned *nfds)
{
	int err;

	if (f->off || f->region > maxfds) {
		if (s->fd_pass)
			set_why(s, "message frame with %u fds (%u expected) or offset set",
				f->region, maxfds);
		else
			set_why(s, "message frame with region/offset set");
		pc_stream_take_fds(s, chan, s->ch[chan].nfdq, NULL);
		return chan_fail(s, chan, -EPROTO);
	}
	if (f->len > cap || f->len > PC_MSG_MAX) {
		set_why(s, "message of %llu bytes exceeds %zu", (unsigned long long)f->len, cap);
		return chan_fail(s, chan, -EMSGSIZE);
	}
	err = chan_read(s, chan, buf, (size_t)f->len);
	if (!err)
		err = pc_stream_take_fds(s, chan, f->region, fds);
	if (err)
		return chan_fail(s, chan, err);
	*len = (size_t)f->len;
	if (nfds)
		*nfds = f->region;
	return 0;
}

/* A PAGES frame: bounds-checked, then read into the region (through the
 * bounce buffer, see chan_read_pages()). */
static int recv_pages(struct pc_stream *s, unsigned chan, const struct frame *f)
{
	const struct pc_stream_region *r = &s->region[f->region < PRECOPY_MAX_REGIONS ? f->region : 0];
	int err;

	if (f->region >= PRECOPY_MAX_REGIONS || !r->addr) {
		set_why(s, "page run for region %u, which is not registered", f->region);
		return chan_fail(s, chan, -EPROTO);
	}
	if (atomic_load(&s->revoked)) {
		set_why(s, "page run for region %u after the regions were revoked", f->region);
		return chan_fail(s, chan, -EPROTO);
	}
	if (f->len == 0 || f->off > r->len || f->len > r->len - f->off) {
		set_why(s, "page run [%llu, +%llu) outside region %u of %zu bytes",
			(unsigned long long)f->off, (unsigned long long)f->len, f->region, r->len);
		return chan_fail(s, chan, -EPROTO);
	}
	err = chan_read_pages(s, chan, r->addr + f->off, (size_t)f->len);
	if (err)
		return chan_fail(s, chan, err);
	if (s->base.placed)
		s->base.placed(s->base.placed_arg, chan, f->region, f->off, f->len);
	return 0;
}

/* A frame of any other kind: a heartbeat, or the transport's own. */
static int recv_other(struct pc_stream *s, unsigned chan, const struct frame *f)
{
	int err;

	if (f->kind == PC_FRAME_BEAT) {
		if (!f->region && !f->off && !f->len)
			return 0;
		set_why(s, "heartbeat frame with region/offset/length set");
		return chan_fail(s, chan, -EPROTO);
	}
	err = s->other_frame ? s->other_frame(s, chan, f->kind, f->region, f->off, f->len)
			     : -ENOMSG;
	if (err == -ENOMSG) {
		set_why(s, "unknown frame kind 0x%08x", f->kind);
		err = -EPROTO;
	}
	return err ? chan_fail(s, chan, err) : 0;
}

static int recv_frames(struct pc_stream *s, unsigned chan, void *buf, size_t cap,
		       size_t *len, int *fds, unsigned maxfds, unsigned *nfds)
{
	uint8_t hdr[PC_FRAME_HDR];
	int err;

	if (!len || (cap && !buf) || (maxfds && !fds))
		return -EINVAL;
	err = chan_check(s, chan);
	if (err)
		return err;
	for (;;) {
		struct frame f;

		err = chan_read(s, chan, hdr, sizeof(hdr));
		if (err)
			return chan_fail(s, chan, err);
		f.kind = pc_get_le32(hdr);
		f.region = pc_get_le32(hdr + 4);
		f.off = pc_get_le64(hdr + 8);
		f.len = pc_get_le64(hdr + 16);
		if (f.kind == PC_FRAME_MSG)
			return recv_message(s, chan, &f, buf, cap, len, fds, maxfds, nfds);
		err = f.kind == PC_FRAME_PAGES ? recv_pages(s, chan, &f) : recv_other(s, chan, &f);
		if (err)
			return err;
	}
}

int pc_stream_recv_msg(struct pc_transport *t, unsigned chan, void *buf, size_t cap,
		       size_t *len)
{
	return recv_frames((struct pc_stream *)t, chan, buf, cap, len, NULL, 0, NULL);
}

int pc_stream_recv_fds(struct pc_transport *t, unsigned chan, void *buf, size_t cap,
		       size_t *len, int *fds, unsigned maxfds, unsigned *nfds)
{
	if (!nfds)
		return -EINVAL;
	*nfds = 0;
	return recv_frames((struct pc_stream *)t, chan, buf, cap, len, fds, maxfds, nfds);
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
				err = chan_writev_all(s, i, &v, 1, NULL, 0);
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

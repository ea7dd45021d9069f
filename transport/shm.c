/* SPDX-License-Identifier: MIT */
/*
 * shm.c - the shared-memory transport for two processes on one host:
 * "shm:PATH", PATH a unix socket path.
 *
 * Channels. One SOCK_STREAM unix connection per channel carries the
 * messages, framed like stream.h (24-byte little-endian header: le32 kind,
 * le32 region, le64 offset, le64 len). Each connection opens with a 32-byte
 * hello (le32 "PCS1", u8 version at 4, u8 channel at 6, u8 channel count
 * at 8, le64 cookie at 12) which the acceptor answers with a 64-byte
 * verdict (le32 "PCS1", le32 status as -errno, 152 bytes of text).
 *
 * Peers. Only a peer running as our uid, or as root, is accepted: the
 * acceptor checks SO_PEERCRED of every connection and answers a stranger
 * with -EACCES and the reason; the connector checks the listener's
 * credentials (SO_PEERCRED of the connected socket) before it says hello.
 *
 * Pages. A page run is framed onto the channel (PAGES header, then the
 * bytes, gathered straight from source memory) and the receiver reads it
 * into the region after a bounds check: two copies, into the kernel's
 * socket buffer and out of it. A destination never hands its own memory
 * to the source: a peer that holds a descriptor or a mapping of the
 * destination's RAM keeps it after the migration (nothing can take it
 * back from another process), so the RAM the guest will run on stays
 * ours alone and the source cannot write it, seal it or resize it once
 * COMPLETE has arrived. expose_region_fd is therefore not implemented:
 * the engine exposes such regions with expose_region.
 *
 * Compatibility: a destination of an earlier version shared a memfd
 * region (a REGION frame with SCM_RIGHTS, revoked by UNEXPOSE); a source
 * still maps such a region MAP_SHARED and copies page runs straight into
 * it after the same bounds check, the next message on the channel being
 * the ordering marker. It maps only a file of exactly the region's size
 * sealed against shrinking and growing, else it frames.
 *
 * fds. send_fds()/recv_fds() carry fds with a message (PC_TCAP_FD_PASS);
 * the engine hands guest-RAM memfds over with them.
 *
 * Wake-ups. Sockets are non-blocking; every wait polls the socket, an
 * eventfd that abort() signals, and an inotify watch on PATH's directory:
 * if PATH is removed or renamed, a call that would block fails with
 * -ENOTCONN ("socket path removed"). A dead peer is seen at once as EOF.
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
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "stream.h" /* frame constants, le helpers, pc_stream-compatible limits */

#define SHM_MAGIC 0x31534350u /* "PCS1" */
#define SHM_VERSION 1
#define SHM_HELLO_SIZE 32
#define SHM_REPLY_SIZE 160
#define SHM_REPLY_TEXT (SHM_REPLY_SIZE - 8)
/* Sent by destinations of earlier versions only (see Compatibility). */
#define PC_FRAME_REGION 0x50435231u   /* "PCR1": dest exposes a memfd region */
#define PC_FRAME_UNEXPOSE 0x50435531u /* "PCU1": dest revokes every region */
#define RBUF_SIZE (256u * 1024)
#define RUNS_PER_WRITE 256
#define FDQ_MAX 64
#define SOCKBUF (4 << 20)

struct shm_chan {
	int fd;
	pthread_mutex_t send_lock;
	atomic_int err;
	uint8_t *rbuf;
	size_t rpos, rlen;
	int fdq[FDQ_MAX]; /* fds received, not yet claimed by a frame */
	unsigned nfdq;
	/* link_stats: time inside the copies into shared memory and their bytes */
	_Atomic uint64_t copy_ns, copied;
};

struct shm_watch {
	int fd;               /* inotify on PATH's directory, or -1 */
	char name[NAME_MAX + 1];
	atomic_bool gone;
};

struct shm_conn {
	struct pc_transport base;
	struct shm_chan ch[PRECOPY_MAX_CHANNELS];
	int abort_fd;
	atomic_bool aborted;
	atomic_flag why_set;
	struct shm_watch watch;
	unsigned timeout_ms;
	/* receiving side: what the peer may write (framed runs); once
	 * revoked, nothing (region[] stays, as in stream.c) */
	struct pc_stream_region region[PRECOPY_MAX_REGIONS];
	atomic_bool revoked;
	/* sending side: the peer's regions mapped here (direct writes) */
	pthread_rwlock_t plock;
	struct pc_stream_region peer[PRECOPY_MAX_REGIONS];
};

struct shm_listener {
	struct pc_listener base;
	int fd;
	int abort_fd;
	atomic_bool aborted;
	struct shm_watch watch;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	dev_t dev;
	ino_t ino;
};

static void set_why(struct shm_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void set_why(struct shm_conn *c, const char *fmt, ...)
{
	va_list ap;

	if (atomic_flag_test_and_set(&c->why_set))
		return;
	va_start(ap, fmt);
	vsnprintf(c->base.why, sizeof(c->base.why), fmt, ap);
	va_end(ap);
}

/* --- addresses, credentials, the path watch ------------------------------ */

static int make_addr(const char *path, struct sockaddr_un *sa)
{
	if (!path || !*path)
		return -EINVAL;
	if (strlen(path) >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	strcpy(sa->sun_path, path);
	return 0;
}

/* Same uid as ours, or root; else -EACCES and the reason in @why. */
static int peer_allowed(int fd, const char *who, char *why, size_t whylen)
{
	struct ucred cr;
	socklen_t l = sizeof(cr);
	uid_t me = geteuid();

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) < 0)
		return -errno;
	if (cr.uid == me || cr.uid == 0)
		return 0;
	snprintf(why, whylen, "%s (pid %d) runs as uid %u; only uid %u (ours) or root may take part",
		 who, (int)cr.pid, (unsigned)cr.uid, (unsigned)me);
	return -EACCES;
}

static void watch_init(struct shm_watch *w, const char *path)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/');

	w->fd = -1;
	atomic_init(&w->gone, false);
	if (slash) {
		size_t n = (size_t)(slash - path);

		if (n >= sizeof(dir))
			return;
		memcpy(dir, path, n);
		dir[n ? n : 1] = '\0';
		if (!n)
			dir[0] = '/';
		snprintf(w->name, sizeof(w->name), "%s", slash + 1);
	} else {
		strcpy(dir, ".");
		snprintf(w->name, sizeof(w->name), "%s", path);
	}
	w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->fd < 0)
		return; /* best effort: no watch, no path-removed detection */
	if (inotify_add_watch(w->fd, dir, IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF |
						  IN_MOVE_SELF) < 0) {
		close(w->fd);
		w->fd = -1;
	}
}

/* Drain the watch; true if PATH has gone. */
static bool watch_check(struct shm_watch *w)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t n;

	while ((n = read(w->fd, buf, sizeof(buf))) > 0) {
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;

			if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))
				atomic_store(&w->gone, true);
			else if (ev->len && !strcmp(ev->name, w->name))
				atomic_store(&w->gone, true);
			p += sizeof(*ev) + ev->len;
		}
	}
	return atomic_load(&w->gone);
}

static void watch_fini(struct shm_watch *w)
{
	if (w->fd >= 0)
		close(w->fd);
	w->fd = -1;
}

/*
 * Wait until @fd is ready for @ev. Return: 0; -ECANCELED if @abort_fd was
 * signalled; -ENOTCONN if the path went away and the call would block;
 * -ETIMEDOUT after @ms of nothing (0 = no limit).
 */
static int wait_fd(int fd, short ev, int abort_fd, struct shm_watch *w, unsigned ms)
{
	struct pollfd p[3] = {
		{ .fd = fd, .events = ev },
		{ .fd = abort_fd, .events = POLLIN },
		{ .fd = w ? w->fd : -1, .events = POLLIN },
	};

	for (;;) {
		bool gone = w && atomic_load(&w->gone);
		int r = poll(p, 3, gone ? 0 : ms ? (int)ms : -1);

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
			watch_check(w);
	}
}

/* --- connection objects --------------------------------------------------- */

static int conn_new(const int *fds, unsigned nchan, const char *path, unsigned timeout_ms,
		    struct shm_conn **out)
{
	struct shm_conn *c = calloc(1, sizeof(*c));
	unsigned i;

	if (!c)
		return -ENOMEM;
	c->base.ops = pc_transport_find("shm");
	c->base.nchan = nchan;
	c->timeout_ms = timeout_ms;
	atomic_init(&c->aborted, false);
	atomic_init(&c->revoked, false);
	atomic_flag_clear(&c->why_set);
	c->abort_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->abort_fd < 0) {
		free(c);
		return -errno;
	}
	for (i = 0; i < PRECOPY_MAX_CHANNELS; i++)
		c->ch[i].fd = -1;
	for (i = 0; i < nchan; i++) {
		c->ch[i].rbuf = malloc(RBUF_SIZE);
		if (!c->ch[i].rbuf)
			goto err_free;
		pthread_mutex_init(&c->ch[i].send_lock, NULL);
		atomic_init(&c->ch[i].err, 0);
	}
	pthread_rwlock_init(&c->plock, NULL);
	watch_init(&c->watch, path);
	for (i = 0; i < nchan; i++)
		c->ch[i].fd = fds[i];
	*out = c;
	return 0;

err_free:
	while (i--) {
		pthread_mutex_destroy(&c->ch[i].send_lock);
		free(c->ch[i].rbuf);
	}
	close(c->abort_fd);
	free(c);
	return -ENOMEM;
}

static void unmap_peer_regions(struct shm_conn *c)
{
	pthread_rwlock_wrlock(&c->plock);
	for (unsigned i = 0; i < PRECOPY_MAX_REGIONS; i++) {
		if (c->peer[i].addr)
			munmap(c->peer[i].addr, c->peer[i].len);
		c->peer[i].addr = NULL;
		c->peer[i].len = 0;
	}
	pthread_rwlock_unlock(&c->plock);
}

static void shm_close(struct pc_transport *t)
{
	struct shm_conn *c = (struct shm_conn *)t;

	if (!c)
		return;
	unmap_peer_regions(c);
	for (unsigned i = 0; i < t->nchan; i++) {
		struct shm_chan *ch = &c->ch[i];

		if (ch->fd >= 0)
			close(ch->fd);
		while (ch->nfdq)
			close(ch->fdq[--ch->nfdq]);
		pthread_mutex_destroy(&ch->send_lock);
		free(ch->rbuf);
	}
	pthread_rwlock_destroy(&c->plock);
	watch_fini(&c->watch);
	close(c->abort_fd);
	free(c);
}

static int shm_abort(struct pc_transport *t)
{
	struct shm_conn *c = (struct shm_conn *)t;
	uint64_t one = 1;

	atomic_store(&c->aborted, true);
	if (write(c->abort_fd, &one, sizeof(one)) < 0) {
		/* the counter cannot overflow with 1s; nothing to do */
	}
	/* and the peer learns at once, as with TCP */
	for (unsigned i = 0; i < t->nchan; i++)
		if (c->ch[i].fd >= 0)
			shutdown(c->ch[i].fd, SHUT_RDWR);
	return 0;
}

static int chan_check(struct shm_conn *c, unsigned chan)
{
	if (chan >= c->base.nchan)
		return -EINVAL;
	if (atomic_load(&c->aborted))
		return -ECANCELED;
	return atomic_load(&c->ch[chan].err);
}

static int chan_fail(struct shm_conn *c, unsigned chan, int err)
{
	int none = 0;

	if (atomic_load(&c->aborted))
		err = -ECANCELED;
	if (err == -ENOTCONN)
		set_why(c, "socket path removed during the migration");
	atomic_compare_exchange_strong(&c->ch[chan].err, &none, err);
	return err;
}

/* --- raw I/O --------------------------------------------------------------- */

/* Send all of @iov (consumed) with @nfds fds attached to the first byte. */
static int chan_sendv(struct shm_conn *c, unsigned chan, struct iovec *iov, int iovcnt,
		      const int *fds, unsigned nfds)
{
	int fd = c->ch[chan].fd;
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
		n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			int err;

			if (errno == EINTR)
				continue;
			if (errno != EAGAIN) {
				if (errno == EPIPE || errno == ECONNRESET) {
					if (!atomic_load(&c->aborted))
						set_why(c, "peer closed channel %u", chan);
					return -ECONNRESET;
				}
				return -errno;
			}
			err = wait_fd(fd, POLLOUT, c->abort_fd, &c->watch, c->timeout_ms);
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

/* One recvmsg into @p; fds that come along are queued on the channel. */
static ssize_t chan_recv_some(struct shm_conn *c, unsigned chan, void *p, size_t n)
{
	struct shm_chan *ch = &c->ch[chan];
	union {
		char buf[CMSG_SPACE(sizeof(int) * 16)];
		struct cmsghdr align;
	} u;

	for (;;) {
		struct iovec v = { p, n };
		struct msghdr mh = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = u.buf,
				     .msg_controllen = sizeof(u.buf) };
		ssize_t r = recvmsg(ch->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		bool overflow = false;

		if (r < 0 && errno == EAGAIN) {
			int err = wait_fd(ch->fd, POLLIN, c->abort_fd, &c->watch, c->timeout_ms);

			if (err) {
				errno = -err;
				return -1;
			}
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return r;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			int *f = (int *)CMSG_DATA(cm);
			size_t k;

			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k; i++) {
				int fd;

				memcpy(&fd, f + i, sizeof(fd));
				if (ch->nfdq < FDQ_MAX)
					ch->fdq[ch->nfdq++] = fd;
				else {
					close(fd);
					overflow = true;
				}
			}
		}
		if (overflow || (mh.msg_flags & MSG_CTRUNC)) {
			set_why(c, "peer sent more file descriptors than expected on channel %u",
				chan);
			errno = EPROTO;
			return -1;
		}
		return r;
	}
}

/* Read exactly @n bytes through the channel's buffer (large reads direct). */
static int chan_read(struct shm_conn *c, unsigned chan, void *dst, size_t n)
{
	struct shm_chan *ch = &c->ch[chan];
	uint8_t *p = dst;

	while (n > 0) {
		size_t have = ch->rlen - ch->rpos;
		ssize_t r;

		if (have) {
			size_t k = have < n ? have : n;

			memcpy(p, ch->rbuf + ch->rpos, k);
			ch->rpos += k;
			p += k;
			n -= k;
			continue;
		}
		if (n >= RBUF_SIZE / 2) {
			r = chan_recv_some(c, chan, p, n);
			if (r > 0) {
				p += r;
				n -= (size_t)r;
				continue;
			}
		} else {
			r = chan_recv_some(c, chan, ch->rbuf, RBUF_SIZE);
			if (r > 0) {
				ch->rpos = 0;
				ch->rlen = (size_t)r;
				continue;
			}
		}
		if (r == 0) {
			if (!atomic_load(&c->aborted))
				set_why(c, "peer closed channel %u", chan);
			return -ECONNRESET;
		}
		return errno == EPIPE ? -ECONNRESET : -errno;
	}
	return 0;
}

/* Take @n fds queued on @chan into @out (closing them if @out is NULL). */
static int take_fds(struct shm_conn *c, unsigned chan, unsigned n, int *out)
{
	struct shm_chan *ch = &c->ch[chan];

	if (ch->nfdq < n) {
		set_why(c, "frame announces %u file descriptors, %u arrived", n, ch->nfdq);
		return -EPROTO;
	}
	for (unsigned i = 0; i < n; i++) {
		if (out)
			out[i] = ch->fdq[i];
		else
			close(ch->fdq[i]);
	}
	memmove(ch->fdq, ch->fdq + n, (ch->nfdq - n) * sizeof(int));
	ch->nfdq -= n;
	return 0;
}

static void put_hdr(uint8_t *h, uint32_t kind, uint32_t region, uint64_t off, uint64_t len)
{
	pc_put_le32(h, kind);
	pc_put_le32(h + 4, region);
	pc_put_le64(h + 8, off);
	pc_put_le64(h + 16, len);
}

/* --- memory ---------------------------------------------------------------- */

static int shm_expose_region(struct pc_transport *t, uint32_t id, void *addr, size_t len)
{
	struct shm_conn *c = (struct shm_conn *)t;

	if (id >= PRECOPY_MAX_REGIONS || !addr || len == 0)
		return -EINVAL;
	c->region[id].addr = addr;
	c->region[id].len = len;
	return 0;
}

static int shm_unexpose_all(struct pc_transport *t)
{
	struct shm_conn *c = (struct shm_conn *)t;

	/* Nothing of ours is mapped by the peer: refusing later runs is all. */
	atomic_store(&c->revoked, true);
	return 0;
}

static int shm_reg_local(struct pc_transport *t, const void *addr, size_t len)
{
	(void)t, (void)addr, (void)len;
	return 0; /* the CPU copies from memory as it is */
}

/* Source side: map the region the peer exposed (REGION frame + fd). */
static int map_peer_region(struct shm_conn *c, uint32_t id, uint64_t len, int fd)
{
	struct stat st;
	int seals;
	void *p;

	if (id >= PRECOPY_MAX_REGIONS || len == 0 || len > SIZE_MAX) {
		close(fd);
		set_why(c, "REGION frame for region %u of %llu bytes", id, (unsigned long long)len);
		return -EPROTO;
	}
	seals = fcntl(fd, F_GET_SEALS);
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != len || seals < 0 ||
	    (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
		/* Not safe to map (it could shrink under us): frame instead. */
		close(fd);
		return 0;
	}
	/* Populated: a write fault per 4 KiB page (shared mappings get no
	 * fault-around) costs about 2 us, several times the copy itself; one
	 * pass here (in the destination's handshake, before any page is
	 * sent) allocates what is missing and maps it all. */
	p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return 0; /* frame instead */
	pthread_rwlock_wrlock(&c->plock);
	if (c->peer[id].addr)
		munmap(c->peer[id].addr, c->peer[id].len);
	c->peer[id].addr = p;
	c->peer[id].len = (size_t)len;
	pthread_rwlock_unlock(&c->plock);
	return 0;
}

/* --- data ------------------------------------------------------------------ */

static int send_common(struct shm_conn *c, unsigned chan, const int *fds, unsigned nfds,
		       const struct iovec *iov, int iovcnt)
{
	struct iovec v[9];
	uint8_t h[PC_FRAME_HDR];
	size_t total = 0;
	int err;

	if (chan >= c->base.nchan || iovcnt < 0 || iovcnt > 8 || (iovcnt && !iov) ||
	    nfds > PC_TP_FDS_MAX || (nfds && !fds))
		return -EINVAL;
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (total > PC_MSG_MAX)
		return -EMSGSIZE;
	put_hdr(h, PC_FRAME_MSG, nfds, 0, total);
	v[0].iov_base = h;
	v[0].iov_len = sizeof(h);
	for (int i = 0; i < iovcnt; i++)
		v[i + 1] = iov[i];
	pthread_mutex_lock(&c->ch[chan].send_lock);
	err = chan_check(c, chan);
	if (!err) {
		err = chan_sendv(c, chan, v, iovcnt + 1, fds, nfds);
		if (err)
			err = chan_fail(c, chan, err);
	}
	pthread_mutex_unlock(&c->ch[chan].send_lock);
	return err;
}

static int shm_send_msg(struct pc_transport *t, unsigned chan, const struct iovec *iov,
			int iovcnt)
{
	return send_common((struct shm_conn *)t, chan, NULL, 0, iov, iovcnt);
}

static int shm_send_fds(struct pc_transport *t, unsigned chan, const int *fds, unsigned nfds,
			const struct iovec *iov, int iovcnt)
{
	return send_common((struct shm_conn *)t, chan, fds, nfds, iov, iovcnt);
}

/* Frame the runs onto the socket (the peer has not shared the region). */
static int send_framed(struct shm_conn *c, unsigned chan, const struct pc_page_run *runs,
		       unsigned n)
{
	uint8_t hdr[RUNS_PER_WRITE][PC_FRAME_HDR];
	struct iovec v[2 * RUNS_PER_WRITE];
	int err = 0;

	while (!err && n > 0) {
		unsigned k = n < RUNS_PER_WRITE ? n : RUNS_PER_WRITE;

		for (unsigned i = 0; i < k; i++) {
			put_hdr(hdr[i], PC_FRAME_PAGES, runs[i].region, runs[i].offset, runs[i].len);
			v[2 * i].iov_base = hdr[i];
			v[2 * i].iov_len = PC_FRAME_HDR;
			v[2 * i + 1].iov_base = (void *)runs[i].src;
			v[2 * i + 1].iov_len = runs[i].len;
		}
		err = chan_sendv(c, chan, v, (int)(2 * k), NULL, 0);
		runs += k;
		n -= k;
	}
	return err;
}

static int shm_write_pages(struct pc_transport *t, unsigned chan,
			   const struct pc_page_run *runs, unsigned n)
{
	struct shm_conn *c = (struct shm_conn *)t;
	uint64_t framed = 0; /* regions the peer has not shared: bit per region */
	int err;

	if (chan >= t->nchan || (n && !runs))
		return -EINVAL;
	for (unsigned i = 0; i < n; i++)
		if (!runs[i].src || runs[i].len == 0 || runs[i].region >= PRECOPY_MAX_REGIONS)
			return -EINVAL;

	pthread_mutex_lock(&c->ch[chan].send_lock);
	err = chan_check(c, chan);
	/* Shared regions first: a memcpy each, after the bounds check. The
	 * lock keeps an UNEXPOSE from unmapping under the copy. */
	pthread_rwlock_rdlock(&c->plock);
	struct timespec c0, c1;
	uint64_t copied = 0;

	clock_gettime(CLOCK_MONOTONIC, &c0);
	for (unsigned i = 0; !err && i < n; i++) {
		const struct pc_page_run *r = &runs[i];
		const struct pc_stream_region *pr = &c->peer[r->region];

		if (!pr->addr) {
			framed |= 1ull << r->region;
			continue;
		}
		/* The same check the receiver of a framed run makes. */
		if (r->offset > pr->len || r->len > pr->len - r->offset) {
			set_why(c, "page run [%llu, +%llu) outside the peer's region %u of %zu bytes",
				(unsigned long long)r->offset, (unsigned long long)r->len,
				r->region, pr->len);
			err = -EPROTO;
			break;
		}
		memcpy(pr->addr + r->offset, r->src, (size_t)r->len);
		copied += r->len;
	}
	pthread_rwlock_unlock(&c->plock);
	/* Then the others, framed onto the socket, outside the lock. */
	for (unsigned i = 0; !err && framed && i < n;) {
		struct pc_page_run batch[RUNS_PER_WRITE];
		unsigned k = 0;

		for (; i < n && k < RUNS_PER_WRITE; i++)
			if (framed >> runs[i].region & 1) {
				batch[k++] = runs[i];
				copied += runs[i].len;
			}
		if (k)
			err = send_framed(c, chan, batch, k);
	}
	/* The link's figures: bytes moved (copied, or framed into the
	 * socket, which the peer must read out) over the time it took. */
	if (!err && copied) {
		clock_gettime(CLOCK_MONOTONIC, &c1);
		atomic_fetch_add(&c->ch[chan].copy_ns,
				 (uint64_t)((c1.tv_sec - c0.tv_sec) * 1000000000ll +
					    (c1.tv_nsec - c0.tv_nsec)));
		atomic_fetch_add(&c->ch[chan].copied, copied);
	}
	if (err)
		err = chan_fail(c, chan, err);
	pthread_mutex_unlock(&c->ch[chan].send_lock);
	return err;
}

static int recv_common(struct shm_conn *c, unsigned chan, void *buf, size_t cap, size_t *len,
		       int *fds, unsigned maxfds, unsigned *nfds)
{
	uint8_t hdr[PC_FRAME_HDR];
	int err;

	if (!len || (cap && !buf) || (maxfds && !fds))
		return -EINVAL;
	err = chan_check(c, chan);
	if (err)
		return err;
	for (;;) {
		uint32_t kind, region;
		uint64_t off, n;

		err = chan_read(c, chan, hdr, sizeof(hdr));
		if (err)
			return chan_fail(c, chan, err);
		kind = pc_get_le32(hdr);
		region = pc_get_le32(hdr + 4);
		off = pc_get_le64(hdr + 8);
		n = pc_get_le64(hdr + 16);

		if (kind == PC_FRAME_MSG) {
			if (off || region > maxfds) {
				set_why(c, "message frame with %u fds (%u expected) or offset set",
					region, maxfds);
				take_fds(c, chan, c->ch[chan].nfdq, NULL);
				return chan_fail(c, chan, -EPROTO);
			}
			if (n > cap || n > PC_MSG_MAX) {
				set_why(c, "message of %llu bytes exceeds %zu",
					(unsigned long long)n, cap);
				return chan_fail(c, chan, -EMSGSIZE);
			}
			err = chan_read(c, chan, buf, (size_t)n);
			if (!err)
				err = take_fds(c, chan, region, fds);
			if (err)
				return chan_fail(c, chan, err);
			*len = (size_t)n;
			if (nfds)
				*nfds = region;
			return 0;
		}
		if (kind == PC_FRAME_REGION || kind == PC_FRAME_UNEXPOSE) {
			int fd = -1;

			if (kind == PC_FRAME_REGION) {
				err = take_fds(c, chan, 1, &fd);
				if (!err)
					err = map_peer_region(c, region, n, fd);
			} else {
				unmap_peer_regions(c);
			}
			if (err)
				return chan_fail(c, chan, err);
			continue;
		}
		if (kind != PC_FRAME_PAGES) {
			set_why(c, "unknown frame kind 0x%08x", kind);
			return chan_fail(c, chan, -EPROTO);
		}
		if (region >= PRECOPY_MAX_REGIONS || !c->region[region].addr) {
			set_why(c, "page run for region %u, which is not registered", region);
			return chan_fail(c, chan, -EPROTO);
		}
		if (atomic_load(&c->revoked)) {
			set_why(c, "page run for region %u after the regions were revoked", region);
			return chan_fail(c, chan, -EPROTO);
		}
		if (n == 0 || off > c->region[region].len || n > c->region[region].len - off) {
			set_why(c, "page run [%llu, +%llu) outside region %u of %zu bytes",
				(unsigned long long)off, (unsigned long long)n, region,
				c->region[region].len);
			return chan_fail(c, chan, -EPROTO);
		}
		err = chan_read(c, chan, c->region[region].addr + off, (size_t)n);
		if (err)
			return chan_fail(c, chan, err);
		if (c->base.placed)
			c->base.placed(c->base.placed_arg, chan, region, off, n);
	}
}

static int shm_recv_msg(struct pc_transport *t, unsigned chan, void *buf, size_t cap,
			size_t *len)
{
	return recv_common((struct shm_conn *)t, chan, buf, cap, len, NULL, 0, NULL);
}

static int shm_recv_fds(struct pc_transport *t, unsigned chan, void *buf, size_t cap,
			size_t *len, int *fds, unsigned maxfds, unsigned *nfds)
{
	if (!nfds)
		return -EINVAL;
	*nfds = 0;
	return recv_common((struct shm_conn *)t, chan, buf, cap, len, fds, maxfds, nfds);
}

/* --- set-up ------------------------------------------------------------------ */

static void tune(int fd)
{
	int sz = SOCKBUF;

	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
}

/* Read exactly @n bytes from a non-blocking @fd, waiting at most @ms at a
 * time; -ECANCELED as soon as *@cancel is set (checked every 50 ms). */
static int read_within(int fd, void *buf, size_t n, int abort_fd, unsigned ms,
		       const atomic_bool *cancel)
{
	uint8_t *p = buf;
	unsigned waited = 0;

	while (n > 0) {
		ssize_t r = recv(fd, p, n, MSG_DONTWAIT);

		if (r == 0)
			return -ECONNRESET;
		if (r < 0) {
			int err;

			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				return -errno;
			if (cancel && atomic_load(cancel))
				return -ECANCELED;
			err = wait_fd(fd, POLLIN, abort_fd, NULL, cancel && ms > 50 ? 50 : ms);
			if (err == -ETIMEDOUT && cancel && (waited += 50) < ms)
				continue;
			if (err)
				return err;
			continue;
		}
		waited = 0;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int write_small(int fd, const void *buf, size_t n)
{
	struct iovec v = { (void *)buf, n };

	return pc_fd_writev_all(fd, &v, 1); /* tiny: fits any socket buffer */
}

static void reply_encode(uint8_t *b, int status, const char *text)
{
	memset(b, 0, SHM_REPLY_SIZE);
	pc_put_le32(b, SHM_MAGIC);
	pc_put_le32(b + 4, (uint32_t)status);
	size_t n = text ? strnlen(text, SHM_REPLY_TEXT - 1) : 0;

	if (n)
		memcpy(b + 8, text, n); /* NUL-terminated: b was zeroed */
}

static int shm_listen(const char *path, const struct pc_transport_opts *o,
		      struct pc_listener **out)
{
	struct shm_listener *l;
	struct sockaddr_un sa;
	struct stat st;
	int fd, err;

	(void)o;
	if (!out)
		return -EINVAL;
	err = make_addr(path, &sa);
	if (err)
		return err;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int probe;
		bool stale;

		err = -errno;
		if (err != -EADDRINUSE) {
			close(fd);
			return err;
		}
		/* A stale socket (nobody accepting) may be replaced. */
		probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		stale = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) < 0 &&
			errno == ECONNREFUSED;
		if (probe >= 0)
			close(probe);
		if (!stale || lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode) || unlink(path) < 0 ||
		    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			close(fd);
			return -EADDRINUSE;
		}
	}
	if (lstat(path, &st) < 0 || listen(fd, 16) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	l = calloc(1, sizeof(*l));
	if (!l) {
		close(fd);
		unlink(path);
		return -ENOMEM;
	}
	l->base.ops = pc_transport_find("shm");
	l->fd = fd;
	l->dev = st.st_dev;
	l->ino = st.st_ino;
	snprintf(l->path, sizeof(l->path), "%s", path);
	atomic_init(&l->aborted, false);
	l->abort_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->abort_fd < 0) {
		err = -errno;
		close(fd);
		unlink(path);
		free(l);
		return err;
	}
	watch_init(&l->watch, path);
	*out = &l->base;
	return 0;
}

static int shm_listener_addr(struct pc_listener *pl, char *buf, size_t len)
{
	struct shm_listener *l = (struct shm_listener *)pl;
	int n = snprintf(buf, len, "shm:%s", l->path);

	return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

static int shm_listener_abort(struct pc_listener *pl)
{
	struct shm_listener *l = (struct shm_listener *)pl;
	uint64_t one = 1;

	atomic_store(&l->aborted, true);
	if (write(l->abort_fd, &one, sizeof(one)) < 0) {
		/* cannot overflow */
	}
	return 0;
}

static void shm_listener_close(struct pc_listener *pl)
{
	struct shm_listener *l = (struct shm_listener *)pl;
	struct stat st;

	if (!l)
		return;
	/* Remove the name only if it is still ours. */
	if (lstat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
		unlink(l->path);
	close(l->fd);
	close(l->abort_fd);
	watch_fini(&l->watch);
	free(l);
}

/* Accept one connection: check the peer, read its hello. -EAGAIN for a
 * stranger (answered and dropped). */
static int accept_one(struct shm_listener *l, unsigned ms, int *fdp, uint8_t *hello)
{
	char why[SHM_REPLY_TEXT];
	uint8_t reply[SHM_REPLY_SIZE];
	int err, fd;

	err = wait_fd(l->fd, POLLIN, l->abort_fd, &l->watch, ms);
	if (err == -ENOTCONN)
		return -ENOENT; /* our name is gone: nobody can reach us */
	if (err)
		return err;
	fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		return errno == EAGAIN || errno == ECONNABORTED ? -EAGAIN : -errno;
	err = peer_allowed(fd, "the connecting process", why, sizeof(why));
	if (err) {
		reply_encode(reply, err, why);
		write_small(fd, reply, sizeof(reply));
		close(fd);
		return -EAGAIN;
	}
	tune(fd);
	err = read_within(fd, hello, SHM_HELLO_SIZE, l->abort_fd, 5000, NULL);
	if (err) {
		close(fd);
		return err == -ECANCELED ? err : -EAGAIN;
	}
	*fdp = fd;
	return 0;
}

static int shm_accept(struct pc_listener *pl, const struct pc_transport_opts *o,
		      struct pc_transport **out)
{
	struct shm_listener *l = (struct shm_listener *)pl;
	struct shm_conn *c;
	int fds[PRECOPY_MAX_CHANNELS];
	unsigned nchan = 0, have = 0;
	uint64_t cookie = 0;
	uint8_t h[SHM_HELLO_SIZE], reply[SHM_REPLY_SIZE];
	int err;

	if (!out)
		return -EINVAL;
	for (;;) {
		int fd;

		err = accept_one(l, 0, &fd, h);
		if (err == -EAGAIN)
			continue;
		if (err)
			return err;
		if (pc_get_le32(h) != SHM_MAGIC || h[4] != SHM_VERSION || h[6] != 0 || h[8] == 0 ||
		    h[8] > PRECOPY_MAX_CHANNELS) {
			close(fd);
			continue;
		}
		nchan = h[8];
		cookie = pc_get_le64(h + 12);
		fds[have++] = fd;
		break;
	}
	while (have < nchan) {
		int fd;

		err = accept_one(l, 10000, &fd, h);
		if (err == -EAGAIN)
			continue;
		if (err)
			goto err_close;
		if (pc_get_le32(h) != SHM_MAGIC || pc_get_le64(h + 12) != cookie || h[6] != have ||
		    h[8] != nchan) {
			close(fd);
			continue;
		}
		fds[have++] = fd;
	}
	reply_encode(reply, 0, "");
	for (unsigned i = 0; i < nchan; i++) {
		err = write_small(fds[i], reply, sizeof(reply));
		if (err)
			goto err_close;
	}
	err = conn_new(fds, nchan, l->path, o ? o->timeout_ms : 0, &c);
	if (err)
		goto err_close;
	*out = &c->base;
	return 0;

err_close:
	while (have--)
		close(fds[have]);
	return err;
}

static int connect_one(const struct sockaddr_un *sa, unsigned chan, unsigned nchan,
		       uint64_t cookie, int *fdp, char *why, size_t whylen)
{
	uint8_t h[SHM_HELLO_SIZE];
	int fd, err;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	err = peer_allowed(fd, "the listening process", why, whylen);
	if (err) {
		close(fd);
		return err;
	}
	tune(fd);
	memset(h, 0, sizeof(h));
	pc_put_le32(h, SHM_MAGIC);
	h[4] = SHM_VERSION;
	h[6] = (uint8_t)chan;
	h[8] = (uint8_t)nchan;
	pc_put_le64(h + 12, cookie);
	err = write_small(fd, h, sizeof(h));
	if (err) {
		/* refused before our hello was read: the verdict may be there */
		uint8_t r[SHM_REPLY_SIZE];

		if (recv(fd, r, sizeof(r), MSG_WAITALL) == (ssize_t)sizeof(r) &&
		    pc_get_le32(r) == SHM_MAGIC && pc_get_le32(r + 4)) {
			snprintf(why, whylen, "refused by the listener: %.*s", (int)SHM_REPLY_TEXT - 1,
				 (char *)r + 8);
			err = (int)pc_get_le32(r + 4);
		}
		close(fd);
		return err;
	}
	if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	*fdp = fd;
	return 0;
}

static int shm_connect(const char *path, const struct pc_transport_opts *o,
		       struct pc_transport **out)
{
	struct sockaddr_un sa;
	struct shm_conn *c;
	int fds[PRECOPY_MAX_CHANNELS];
	unsigned nchan = o && o->channels ? o->channels : 1, have = 0;
	uint64_t cookie;
	uint8_t r[SHM_REPLY_SIZE];
	char why[SHM_REPLY_SIZE + 32] = "";
	int err;

	if (!out || nchan > PRECOPY_MAX_CHANNELS)
		return -EINVAL;
	err = make_addr(path, &sa);
	if (err)
		return err;
	if (getrandom(&cookie, sizeof(cookie), 0) != sizeof(cookie))
		cookie = (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)&cookie;
	for (; have < nchan; have++) {
		err = connect_one(&sa, have, nchan, cookie, &fds[have], why, sizeof(why));
		if (err)
			goto err_close;
	}
	/* The acceptor answers once it has every channel. */
	for (unsigned i = 0; i < nchan; i++) {
		int abort_never = -1;

		err = read_within(fds[i], r, sizeof(r), abort_never, 10000, o ? o->cancel : NULL);
		if (!err && pc_get_le32(r) != SHM_MAGIC)
			err = -EPROTO;
		if (!err && pc_get_le32(r + 4)) {
			err = (int)pc_get_le32(r + 4);
			snprintf(why, sizeof(why), "refused by the listener: %.*s",
				 (int)SHM_REPLY_TEXT - 1, (char *)r + 8);
		}
		if (err)
			goto err_close;
	}
	err = conn_new(fds, nchan, path, o ? o->timeout_ms : 0, &c);
	if (err)
		goto err_close;
	*out = &c->base;
	return 0;

err_close:
	/* No transport exists yet to carry the reason: the caller's buffer. */
	if (o && o->why && o->whylen)
		snprintf(o->why, o->whylen, "%s", why[0] ? why : strerror(-err));
	while (have--)
		close(fds[have]);
	return err;
}

/* The bandwidth estimate's figures: the copies into the peer's memory. */
static int shm_link_stats(struct pc_transport *t, unsigned chan, struct pc_tp_link_stats *out)
{
	struct shm_conn *c = (struct shm_conn *)t;

	if (chan >= t->nchan || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->source = PC_TP_LINK_COPY;
	out->busy_ns = atomic_load(&c->ch[chan].copy_ns);
	out->delivered = atomic_load(&c->ch[chan].copied);
	return 0;
}

const struct pc_transport_ops pc_shm_ops = {
	.scheme = "shm",
	.syntax = "shm:PATH",
	.caps = PC_TCAP_FD_PASS,
	.listen = shm_listen,
	.listener_addr = shm_listener_addr,
	.accept = shm_accept,
	.listener_abort = shm_listener_abort,
	.listener_close = shm_listener_close,
	.connect = shm_connect,
	.abort = shm_abort,
	.close = shm_close,
	.expose_region = shm_expose_region,
	.unexpose_all = shm_unexpose_all,
	.reg_local = shm_reg_local,
	.send_msg = shm_send_msg,
	.recv_msg = shm_recv_msg,
	.write_pages = shm_write_pages,
	.link_stats = shm_link_stats,
	.send_fds = shm_send_fds,
	.recv_fds = shm_recv_fds,
};

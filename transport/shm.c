/* SPDX-License-Identifier: MIT */
/*
 * shm.c - the shared-memory transport for two processes on one host:
 * "shm:PATH", PATH a unix socket path.
 *
 * Channels. One SOCK_STREAM unix connection per channel, carried by the
 * stream layer (stream.h): its framing, heartbeats and receive timeout,
 * with the two things unix sockets add there, fds passed with messages
 * and waits that poll. Each connection opens with a 32-byte hello (le32
 * "PCS1", u8 version at 4, u8 flags at 5, u8 channel at 6, u8 channel
 * count at 8, le64 cookie at 12) which the acceptor answers with a
 * 160-byte verdict (le32 "PCS1", le32 status as -errno, text up to byte
 * 158, u8 flags at 159). Flag bit 0, in the hello: the source sends
 * heartbeats and wants them; in the verdict: the destination knows them.
 * Each end sends heartbeats only to a peer that said so, and times out
 * its peer's silence either way.
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
 * Wake-ups. Every wait polls the socket, an eventfd that abort() signals,
 * and an inotify watch on PATH's directory: if PATH is removed or renamed,
 * a call that would block fails with -ENOTCONN ("socket path removed").
 * A dead peer is seen at once as EOF.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
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

#include "stream.h"

#define SHM_MAGIC 0x31534350u /* "PCS1" */
#define SHM_REPLY_SIZE 160
#define SHM_REPLY_FLAGS (SHM_REPLY_SIZE - 1)
#define SHM_REPLY_TEXT (SHM_REPLY_FLAGS - 8) /* the text and its NUL */
#define SHM_BEATS 0x01u /* hello byte 5, verdict byte 159: heartbeats */
/* Sent by destinations of earlier versions only (see Compatibility). */
#define PC_FRAME_REGION 0x50435231u   /* "PCR1": dest exposes a memfd region */
#define PC_FRAME_UNEXPOSE 0x50435531u /* "PCU1": dest revokes every region */
#define SOCKBUF (4 << 20)

struct shm_watch {
	struct pc_stream_watch base; /* fd: inotify on PATH's directory, or -1 */
	char name[NAME_MAX + 1];
	atomic_bool gone;
};

struct shm_conn {
	struct pc_stream s;
	struct shm_watch watch;
	/* sending side: the peer's regions mapped here (direct writes) */
	pthread_rwlock_t plock;
	struct pc_stream_region peer[PRECOPY_MAX_REGIONS];
	/* link_stats: time inside write_pages and the bytes it moved */
	_Atomic uint64_t copy_ns[PRECOPY_MAX_CHANNELS], copied[PRECOPY_MAX_CHANNELS];
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

/* Drain the watch if asked; true once PATH has gone. */
static bool watch_gone(struct pc_stream_watch *pw, bool drain)
{
	struct shm_watch *w = (struct shm_watch *)pw;
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t n;

	while (drain && (n = read(w->base.fd, buf, sizeof(buf))) > 0) {
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

static void watch_init(struct shm_watch *w, const char *path)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/');

	w->base.fd = -1;
	w->base.gone = watch_gone;
	w->base.why = "socket path removed during the migration";
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
	w->base.fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->base.fd < 0)
		return; /* best effort: no watch, no path-removed detection */
	if (inotify_add_watch(w->base.fd, dir, IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF |
						       IN_MOVE_SELF) < 0) {
		close(w->base.fd);
		w->base.fd = -1;
	}
}

static void watch_fini(struct shm_watch *w)
{
	if (w->base.fd >= 0)
		close(w->base.fd);
	w->base.fd = -1;
}

/* --- the memory the peer shared (earlier destinations) -------------------- */

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

/* Source side: map the region the peer exposed (REGION frame + fd). */
static int map_peer_region(struct shm_conn *c, uint32_t id, uint64_t len, int fd)
{
	struct stat st;
	int seals;
	void *p;

	if (id >= PRECOPY_MAX_REGIONS || len == 0 || len > SIZE_MAX) {
		close(fd);
		pc_stream_set_why(&c->s, "REGION frame for region %u of %llu bytes", id,
				  (unsigned long long)len);
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

/* The stream's hook for the frames of an earlier destination. */
static int peer_frame(struct pc_stream *s, unsigned chan, uint32_t kind, uint32_t region,
		      uint64_t off, uint64_t len)
{
	struct shm_conn *c = (struct shm_conn *)s;
	int fd, err;

	(void)off;
	if (kind == PC_FRAME_UNEXPOSE) {
		unmap_peer_regions(c);
		return 0;
	}
	if (kind != PC_FRAME_REGION)
		return -ENOMSG;
	err = pc_stream_take_fds(s, chan, 1, &fd);
	return err ? err : map_peer_region(c, region, len, fd);
}

/* The stream's direct-write hook: a run into a region the peer shared is
 * a memcpy, after the check the receiver of a framed run makes. The lock
 * keeps an UNEXPOSE from unmapping under the copy. */
static int copy_into_peer(struct pc_stream *s, const struct pc_page_run *r)
{
	struct shm_conn *c = (struct shm_conn *)s;
	const struct pc_stream_region *pr = &c->peer[r->region];
	int done = 0;

	pthread_rwlock_rdlock(&c->plock);
	if (pr->addr && (r->offset > pr->len || r->len > pr->len - r->offset)) {
		pc_stream_set_why(s, "page run [%llu, +%llu) outside the peer's region %u of "
				     "%zu bytes", (unsigned long long)r->offset,
				  (unsigned long long)r->len, r->region, pr->len);
		done = -EPROTO;
	} else if (pr->addr) {
		memcpy(pr->addr + r->offset, r->src, (size_t)r->len);
		done = 1;
	}
	pthread_rwlock_unlock(&c->plock);
	return done;
}

/* --- connection objects --------------------------------------------------- */

/*
 * The connection over @fds (taken over on success). @timeout_ms: the
 * peer's silence allowed, 0 = no limit; @beats: the peer knows heartbeats.
 */
static int conn_new(const int *fds, unsigned nchan, const char *path, unsigned timeout_ms,
		    bool beats, struct shm_conn **out)
{
	struct shm_conn *c = calloc(1, sizeof(*c));
	int err;

	if (!c)
		return -ENOMEM;
	err = pc_stream_init(&c->s, pc_transport_find("shm"), fds, nchan);
	if (err) {
		free(c);
		return err;
	}
	pthread_rwlock_init(&c->plock, NULL);
	watch_init(&c->watch, path);
	pc_stream_pass_fds(&c->s);
	c->s.direct = copy_into_peer;
	c->s.other_frame = peer_frame;
	err = pc_stream_nonblock(&c->s, timeout_ms, &c->watch.base);
	if (!err && timeout_ms)
		err = beats ? pc_stream_beats_start(&c->s, timeout_ms)
			    : pc_stream_rcv_timeout(&c->s, timeout_ms);
	if (err) {
		for (unsigned i = 0; i < nchan; i++)
			c->s.ch[i].fd = -1; /* still the caller's */
		pc_stream_fini(&c->s);
		pthread_rwlock_destroy(&c->plock);
		watch_fini(&c->watch);
		free(c);
		return err;
	}
	*out = c;
	return 0;
}

static void shm_close(struct pc_transport *t)
{
	struct shm_conn *c = (struct shm_conn *)t;

	if (!c)
		return;
	pc_stream_fini(&c->s);
	unmap_peer_regions(c);
	pthread_rwlock_destroy(&c->plock);
	watch_fini(&c->watch);
	free(c);
}

/* The stream's, timed for the bandwidth estimate. */
static int shm_write_pages(struct pc_transport *t, unsigned chan,
			   const struct pc_page_run *runs, unsigned n)
{
	struct shm_conn *c = (struct shm_conn *)t;
	uint64_t t0 = pc_mono_ns(), bytes = 0;
	int err = pc_stream_write_pages(t, chan, runs, n);

	if (err)
		return err;
	for (unsigned i = 0; i < n; i++)
		bytes += runs[i].len;
	/* The link's figures: bytes moved (copied, or framed into the
	 * socket, which the peer must read out) over the time it took. */
	if (bytes) {
		atomic_fetch_add(&c->copy_ns[chan], pc_mono_ns() - t0);
		atomic_fetch_add(&c->copied[chan], bytes);
	}
	return 0;
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
			err = pc_fd_wait(fd, POLLIN, abort_fd, NULL, cancel && ms > 50 ? 50 : ms);
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

static void reply_encode(uint8_t *b, int status, const char *text, uint8_t flags)
{
	size_t n = text ? strnlen(text, SHM_REPLY_TEXT - 1) : 0;

	memset(b, 0, SHM_REPLY_SIZE);
	pc_put_le32(b, SHM_MAGIC);
	pc_put_le32(b + 4, (uint32_t)status);
	if (n)
		memcpy(b + 8, text, n); /* NUL-terminated: b was zeroed */
	b[SHM_REPLY_FLAGS] = flags;
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

	err = pc_fd_wait(l->fd, POLLIN, l->abort_fd, &l->watch.base, ms);
	if (err == -ENOTCONN)
		return -ENOENT; /* our name is gone: nobody can reach us */
	if (err)
		return err;
	fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		return errno == EAGAIN || errno == ECONNABORTED ? -EAGAIN : -errno;
	err = peer_allowed(fd, "the connecting process", why, sizeof(why));
	if (err) {
		reply_encode(reply, err, why, 0);
		pc_fd_write_all(fd, reply, sizeof(reply));
		close(fd);
		return -EAGAIN;
	}
	tune(fd);
	err = read_within(fd, hello, PC_HELLO_SIZE, l->abort_fd, 5000, NULL);
	if (err) {
		close(fd);
		return err == -ECANCELED ? err : -EAGAIN;
	}
	*fdp = fd;
	return 0;
}

/* Channel @have's hello: channel 0's starts a set, the others join it. */
static bool hello_fits(const uint8_t *h, unsigned have, unsigned nchan, uint64_t cookie)
{
	if (pc_get_le32(h) != SHM_MAGIC || h[6] != have)
		return false;
	if (!have)
		return h[4] == PC_HELLO_VERSION && h[8] != 0 && h[8] <= PRECOPY_MAX_CHANNELS;
	return pc_get_le64(h + 12) == cookie && h[8] == nchan;
}

static int shm_accept(struct pc_listener *pl, const struct pc_transport_opts *o,
		      struct pc_transport **out)
{
	struct shm_listener *l = (struct shm_listener *)pl;
	struct shm_conn *c;
	int fds[PRECOPY_MAX_CHANNELS];
	unsigned nchan = 1, have = 0;
	uint64_t cookie = 0;
	uint8_t h[PC_HELLO_SIZE], reply[SHM_REPLY_SIZE];
	bool beats = false;
	int err;

	if (!out)
		return -EINVAL;
	/* nchan is 1 until the first hello, channel 0's, says how many. */
	while (have < nchan) {
		int fd = -1;

		err = accept_one(l, have ? 10000 : 0, &fd, h);
		if (err == -EAGAIN)
			continue;
		if (err)
			goto err_close;
		if (!hello_fits(h, have, nchan, cookie)) {
			close(fd);
			continue;
		}
		if (!have) {
			nchan = h[8];
			beats = h[5] & SHM_BEATS;
			cookie = pc_get_le64(h + 12);
		}
		fds[have++] = fd;
	}
	reply_encode(reply, 0, "", SHM_BEATS);
	for (unsigned i = 0; i < nchan; i++) {
		err = pc_fd_write_all(fds[i], reply, sizeof(reply));
		if (err)
			goto err_close;
	}
	err = conn_new(fds, nchan, l->path, o ? o->timeout_ms : 0, beats, &c);
	if (err)
		goto err_close;
	*out = &c->s.base;
	return 0;

err_close:
	while (have--)
		close(fds[have]);
	return err;
}

static int connect_one(const struct sockaddr_un *sa, unsigned chan, unsigned nchan,
		       uint64_t cookie, int *fdp, char *why, size_t whylen)
{
	uint8_t h[PC_HELLO_SIZE];
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
	pc_hello_encode(h, SHM_MAGIC, chan, nchan, cookie);
	err = pc_fd_write_all(fd, h, sizeof(h));
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
	/* an earlier destination knows no heartbeats (verdict flag 0) */
	err = conn_new(fds, nchan, path, o ? o->timeout_ms : 0, r[SHM_REPLY_FLAGS] & SHM_BEATS,
		       &c);
	if (err)
		goto err_close;
	*out = &c->s.base;
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
	out->busy_ns = atomic_load(&c->copy_ns[chan]);
	out->delivered = atomic_load(&c->copied[chan]);
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
	.abort = pc_stream_abort,
	.close = shm_close,
	.expose_region = pc_stream_expose_region,
	.unexpose_all = pc_stream_unexpose_all,
	.reg_local = pc_stream_reg_local,
	.send_msg = pc_stream_send_msg,
	.recv_msg = pc_stream_recv_msg,
	.write_pages = shm_write_pages,
	.link_stats = shm_link_stats,
	.send_fds = pc_stream_send_fds,
	.recv_fds = pc_stream_recv_fds,
};

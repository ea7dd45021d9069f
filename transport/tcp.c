/* SPDX-License-Identifier: MIT */
/*
 * tcp.c - the TCP transport: "tcp:HOST:PORT" (IPv6 hosts in brackets).
 *
 * One TCP connection per channel. Each connection opens with a 32-byte
 * hello: le32 magic "PCT1", le16 version, le16 channel index, le16 channel
 * count, le16 reserved, le64 cookie (random, the same on all channels of
 * one migration), le64 reserved. The acceptor takes channel 0 first,
 * then the others with the same cookie; a stranger's connection is
 * closed. Dead peers are found by keepalive and TCP_USER_TIMEOUT.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "addr.h"
#include "stream.h"
#if PRECOPY_HAVE_TLS
#include "tls.h"
#endif

#define TCP_HELLO_MAGIC 0x31544350u /* "PCT1" */
#define DEFAULT_TIMEOUT_MS 15000

struct tcp_listener {
	struct pc_listener base;
	int fd;                  /* listening socket, or -1 */
	atomic_bool aborted;
	/* pc_tcp_listener_from_fds(): connected fds handed out by accept */
	int pre_fds[PRECOPY_MAX_CHANNELS];
	unsigned npre;
};

struct tcp_conn {
	struct pc_stream s;
};

/*
 * Dead peers: TCP_USER_TIMEOUT ends a connection whose sent data stays
 * unacknowledged for @timeout_ms; keepalive finds a silent peer on an idle
 * connection (a source waiting for an ack, a destination waiting for data).
 * Probes start after min(5 s, timeout / 3) of silence, 3 of them at most
 * 2 s apart, so with a short timeout a dead link is found as quickly.
 * A peer whose kernel is alive but whose process has stopped reading
 * (hung, or stopped by a signal) passes both: its kernel acknowledges
 * the data, then the zero-window probes. SO_SNDTIMEO ends that: a send
 * that cannot move a byte for @timeout_ms fails (-ETIMEDOUT).
 */
static void tune_socket(int fd, unsigned timeout_ms)
{
	unsigned uto = timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS;
	int one = 1, cnt = 3;
	int idle = (int)(uto / 3000), intvl = (int)(uto / 7500);

	idle = idle < 1 ? 1 : idle > 5 ? 5 : idle;
	intvl = intvl < 1 ? 1 : intvl > 2 ? 2 : intvl;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof(uto));
	{
		struct timeval tv = { .tv_sec = uto / 1000, .tv_usec = (uto % 1000) * 1000 };

		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	}
}

/*
 * connect(2) that a cancel can stop: non-blocking, then poll in 50 ms
 * steps until connected, refused, @ms passed (-ETIMEDOUT) or *@cancel set
 * (-ECANCELED). A blocking connect to a peer that drops SYNs waits for
 * minutes, and precopy_cancel() has no connection yet to abort.
 */
static int connect_within(int fd, const struct sockaddr *sa, socklen_t len, unsigned ms,
			  const atomic_bool *cancel)
{
	int fl = fcntl(fd, F_GETFL), err = 0;
	socklen_t elen = sizeof(err);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	if (connect(fd, sa, len) < 0) {
		if (errno != EINPROGRESS)
			return -errno;
		for (;;) {
			struct pollfd p = { .fd = fd, .events = POLLOUT };
			int step = ms < 50 ? (int)ms : 50;
			int r = poll(&p, 1, step);

			if (r < 0 && errno != EINTR)
				return -errno;
			if (r > 0)
				break;
			if (cancel && atomic_load(cancel))
				return -ECANCELED;
			if ((ms -= (unsigned)step) == 0)
				return -ETIMEDOUT;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
			return -errno;
		if (err)
			return -err;
	}
	return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

static int listen_as(const char *scheme, const char *addr, struct pc_listener **out)
{
	struct tcp_listener *l;
	struct addrinfo *res, *ai;
	int err, fd = -1, one = 1;

	if (!out)
		return -EINVAL;
	err = pc_addr_resolve(addr, true, &res);
	if (err)
		return err;
	err = -EADDRNOTAVAIL;
	for (ai = res; ai; ai = ai->ai_next) {
		/* non-blocking: accept takes what is queued and returns to poll */
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0) {
			err = -errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 16) == 0)
			break;
		err = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return err;
	l = calloc(1, sizeof(*l));
	if (!l) {
		close(fd);
		return -ENOMEM;
	}
	l->base.ops = pc_transport_find(scheme);
	l->fd = fd;
	atomic_init(&l->aborted, false);
	*out = &l->base;
	return 0;
}

static int tcp_listen(const char *addr, const struct pc_transport_opts *o,
		      struct pc_listener **out)
{
	(void)o;
	return listen_as("tcp", addr, out);
}

static int tcp_listener_addr(struct pc_listener *pl, char *buf, size_t len)
{
	struct tcp_listener *l = (struct tcp_listener *)pl;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN];
	int port, n;

	if (l->fd < 0) {
		n = snprintf(buf, len, "tcp:connected-fds");
		return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
	}
	if (getsockname(l->fd, (struct sockaddr *)&ss, &sl) < 0)
		return -errno;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
		n = snprintf(buf, len, "%s:%s:%d", pl->ops->scheme, host, port);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
		n = snprintf(buf, len, "%s:[%s]:%d", pl->ops->scheme, host, port);
	}
	return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

static int tcp_listener_abort(struct pc_listener *pl)
{
	struct tcp_listener *l = (struct tcp_listener *)pl;

	atomic_store(&l->aborted, true);
	if (l->fd >= 0)
		shutdown(l->fd, SHUT_RDWR);
	return 0;
}

static void tcp_listener_close(struct pc_listener *pl)
{
	struct tcp_listener *l = (struct tcp_listener *)pl;

	if (!l)
		return;
	if (l->fd >= 0)
		close(l->fd);
	while (l->npre)
		close(l->pre_fds[--l->npre]);
	free(l);
}

/*
 * Accepting a source. Every connection is put in a table of pending
 * connections and read with non-blocking calls from one poll loop: its
 * hello, then (tls:) its TLS handshake, each within its own deadline. So
 * a connection that says nothing, or a hello and then nothing, or a TLS
 * stranger, costs one table slot until its deadline and holds nobody up:
 * the real source's connections are read beside it. When the table is
 * full the oldest entry makes room. A set of connections is taken once a
 * channel 0 and every other channel with its cookie have completed their
 * handshakes; everything else is closed then.
 */
#define PENDING_MAX 64
#define DRAIN_MS 500

enum pend_state {
	P_FREE,
	P_HELLO, /* reading the 32-byte hello */
	P_TLS,   /* TLS handshake under way */
	P_READY, /* handshakes done: waiting for the rest of its set */
	P_DRAIN, /* refused after a TLS alert: reading until the peer closes */
};

struct pending {
	enum pend_state st;
	int fd;
	uint64_t born_ns, deadline_ns;
	uint8_t hello[PC_HELLO_SIZE];
	size_t got;
	short events;             /* P_TLS: what the handshake waits for */
#if PRECOPY_HAVE_TLS
	struct pc_tls_conn *tls;
#endif
};

static void pend_close(struct pending *p)
{
#if PRECOPY_HAVE_TLS
	if (p->tls)
		pc_tls_conn_free(p->tls);
	p->tls = NULL;
#endif
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
	p->st = P_FREE;
}

/* A hello that can start a set (channel 0) or join one (the others). */
static bool hello_ok(const uint8_t *h)
{
	return pc_get_le32(h) == TCP_HELLO_MAGIC && h[4] == PC_HELLO_VERSION && h[8] != 0 &&
	       h[8] <= PRECOPY_MAX_CHANNELS && h[6] < h[8];
}

/* Channel 0 at @p0 and every other channel of its set, all P_READY?
 * Fills @idx with the table index of each channel. */
static bool set_complete(const struct pending *tab, unsigned p0, unsigned *idx)
{
	const uint8_t *h0 = tab[p0].hello;
	unsigned nchan = h0[8];

	idx[0] = p0;
	for (unsigned c = 1; c < nchan; c++) {
		unsigned i;

		for (i = 0; i < PENDING_MAX; i++) {
			const uint8_t *h = tab[i].hello;

			if (tab[i].st == P_READY && h[6] == c && h[8] == nchan &&
			    pc_get_le64(h + 12) == pc_get_le64(h0 + 12))
				break;
		}
		if (i == PENDING_MAX)
			return false;
		idx[c] = i;
	}
	return true;
}

/* Advance @p after poll() said it is ready (or its deadline passed). */
static void pend_step(struct pending *p, const struct pc_transport_ops *ops,
		      const struct pc_transport_opts *o, uint64_t now, uint64_t hs_ns)
{
	if (p->st == P_DRAIN) {
		uint8_t sink[4096];
		ssize_t n = recv(p->fd, sink, sizeof(sink), 0);

		if (now >= p->deadline_ns || n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			pend_close(p);
		return;
	}
	if (now >= p->deadline_ns) {
		pend_close(p); /* silent for too long: a stranger, or a source gone */
		return;
	}
	if (p->st == P_HELLO) {
		ssize_t n = recv(p->fd, p->hello + p->got, PC_HELLO_SIZE - p->got, 0);

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0) {
			pend_close(p);
			return;
		}
		p->got += (size_t)n;
		if (p->got < PC_HELLO_SIZE)
			return;
		if (!hello_ok(p->hello)) {
			pend_close(p); /* not one of ours */
			return;
		}
		p->st = P_READY;
#if PRECOPY_HAVE_TLS
		if (ops->caps & PC_TCAP_TLS) {
			if (pc_tls_accept_new(p->fd, o ? o->tls : NULL, &p->tls, NULL, 0)) {
				pend_close(p);
				return;
			}
			p->st = P_TLS;
			p->events = POLLIN;
		}
#endif
	}
#if PRECOPY_HAVE_TLS
	if (p->st == P_TLS) {
		int err = pc_tls_accept_step(p->tls, p->hello[6], &p->events, NULL, 0);

		if (err == -EAGAIN)
			return;
		if (err) {
			/* A stranger without the key, or a source with the
			 * wrong one: it has its alert; only this connection
			 * ends. Half-close and let the alert reach it. */
			pc_tls_conn_free(p->tls);
			p->tls = NULL;
			shutdown(p->fd, SHUT_WR);
			p->st = P_DRAIN;
			p->deadline_ns = now + DRAIN_MS * 1000000ull;
			return;
		}
		p->st = P_READY;
	}
#else
	(void)ops, (void)o;
#endif
	/* P_READY: its set has as long again to complete. */
	p->deadline_ns = now + hs_ns;
}

/* Take every connection the listener has queued into the table. */
static int take_new(struct tcp_listener *l, struct pending *tab, unsigned timeout_ms,
		    uint64_t now, uint64_t hs_ns)
{
	for (;;) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		unsigned slot = PENDING_MAX;

		if (fd < 0) {
			if (atomic_load(&l->aborted))
				return -ECANCELED;
			if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED ||
			    errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM)
				return 0; /* nothing more now, or try again later */
			return -errno;
		}
		for (unsigned i = 0; i < PENDING_MAX; i++) {
			if (tab[i].st == P_FREE) {
				slot = i;
				break;
			}
			if (slot == PENDING_MAX || tab[i].born_ns < tab[slot].born_ns)
				slot = i;
		}
		if (tab[slot].st != P_FREE)
			pend_close(&tab[slot]); /* full: the oldest makes room */
		tune_socket(fd, timeout_ms);
		memset(&tab[slot], 0, sizeof(tab[slot]));
		tab[slot].st = P_HELLO;
		tab[slot].fd = fd;
		tab[slot].born_ns = now;
		tab[slot].deadline_ns = now + hs_ns;
	}
}

/* Wait until a whole set of connections has arrived; @fds gets channel
 * 0..n-1 (blocking again), @tls their sessions. Return: channels, or
 * -ECANCELED, -errno. */
static int accept_set(struct tcp_listener *l, const struct pc_transport_opts *o,
		      unsigned timeout_ms, int *fds, void **tls)
{
	struct pending *tab = calloc(PENDING_MAX, sizeof(*tab));
	uint64_t hs_ns = (uint64_t)(timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS) * 1000000ull;
	int err = 0;

	if (!tab)
		return -ENOMEM;
	for (unsigned i = 0; i < PENDING_MAX; i++)
		tab[i].fd = -1;
	while (!err) {
		struct pollfd pfd[PENDING_MAX + 1];
		unsigned who[PENDING_MAX + 1], n = 0, idx[PRECOPY_MAX_CHANNELS];
		uint64_t now = pc_mono_ns(), next = now + 200 * 1000000ull;
		int r;

		if (atomic_load(&l->aborted)) {
			err = -ECANCELED;
			break;
		}
		/* A complete set? */
		for (unsigned i = 0; i < PENDING_MAX; i++) {
			if (tab[i].st != P_READY || tab[i].hello[6] != 0 ||
			    !set_complete(tab, i, idx))
				continue;
			err = tab[i].hello[8];
			for (unsigned c = 0; c < (unsigned)err; c++) {
				struct pending *p = &tab[idx[c]];
				int fl = fcntl(p->fd, F_GETFL);

				fcntl(p->fd, F_SETFL, fl & ~O_NONBLOCK);
				fds[c] = p->fd;
#if PRECOPY_HAVE_TLS
				tls[c] = p->tls;
				p->tls = NULL;
#else
				tls[c] = NULL;
#endif
				p->fd = -1;
				p->st = P_FREE;
			}
			if (tab[i].hello[5] & PC_HELLO_BEATS)
				err |= 0x100;
			break;
		}
		if (err)
			break;
		pfd[n] = (struct pollfd){ .fd = l->fd, .events = POLLIN };
		who[n++] = PENDING_MAX;
		for (unsigned i = 0; i < PENDING_MAX; i++) {
			if (tab[i].st == P_FREE)
				continue;
			if (tab[i].deadline_ns < next)
				next = tab[i].deadline_ns;
			if (tab[i].st == P_READY)
				continue;
			pfd[n] = (struct pollfd){ .fd = tab[i].fd,
						  .events = tab[i].st == P_TLS ? tab[i].events
									       : POLLIN };
			who[n++] = i;
		}
		r = poll(pfd, n, next > now ? (int)((next - now + 999999) / 1000000) : 0);
		if (r < 0 && errno != EINTR) {
			err = -errno;
			break;
		}
		now = pc_mono_ns();
		for (unsigned k = 0; k < n && r > 0; k++) {
			if (!pfd[k].revents)
				continue;
			if (who[k] == PENDING_MAX)
				err = take_new(l, tab, timeout_ms, now, hs_ns);
			else
				pend_step(&tab[who[k]], l->base.ops, o, now, hs_ns);
		}
		for (unsigned i = 0; i < PENDING_MAX; i++)
			if (tab[i].st != P_FREE && now >= tab[i].deadline_ns)
				pend_step(&tab[i], l->base.ops, o, now, hs_ns);
	}
	for (unsigned i = 0; i < PENDING_MAX; i++)
		if (tab[i].st != P_FREE)
			pend_close(&tab[i]);
	free(tab);
	return err;
}

/* After the TCP hello: the "tls" scheme's handshake on every channel. */
static int wrap(struct pc_stream *s, const struct pc_transport_opts *o, bool server,
		const char *host, const atomic_bool *cancel)
{
#if PRECOPY_HAVE_TLS
	if (s->base.ops->caps & PC_TCAP_TLS)
		return pc_tls_start(s, o ? o->tls : NULL, server, host, o ? o->timeout_ms : 0,
				    cancel, o ? o->why : NULL, o ? o->whylen : 0);
#endif
	(void)s, (void)o, (void)server, (void)host, (void)cancel;
	return 0;
}

/* A connection over @fds; they are the caller's to close on failure. */
static int conn_new(const struct pc_transport_ops *ops, const int *fds, unsigned nchan,
		    struct tcp_conn **out)
{
	struct tcp_conn *c = calloc(1, sizeof(*c));
	int err;

	if (!c)
		return -ENOMEM;
	err = pc_stream_init(&c->s, ops, fds, nchan);
	if (err) {
		free(c);
		return err;
	}
	*out = c;
	return 0;
}

static int tcp_accept(struct pc_listener *pl, const struct pc_transport_opts *o,
		      struct pc_transport **out)
{
	struct tcp_listener *l = (struct tcp_listener *)pl;
	struct tcp_conn *c;
	int fds[PRECOPY_MAX_CHANNELS];
	void *tls[PRECOPY_MAX_CHANNELS];
	unsigned nchan, timeout_ms = o && o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	bool beats;
	int err;

	if (!out)
		return -EINVAL;
	if (l->fd < 0) {
		/* pc_tcp_listener_from_fds(): the connection is already there. */
		if (atomic_load(&l->aborted))
			return -ECANCELED;
		if (!l->npre)
			return -ENOTCONN;
		err = pc_tcp_from_fds(l->pre_fds, l->npre, out);
		if (!err)
			l->npre = 0;
		return err;
	}
#if PRECOPY_HAVE_TLS
	if (pl->ops->caps & PC_TCAP_TLS) {
		err = pc_tls_check(o ? o->tls : NULL, true, o ? o->why : NULL, o ? o->whylen : 0);
		if (err)
			return err;
	}
#endif
	err = accept_set(l, o, timeout_ms, fds, tls);
	if (err < 0)
		return err;
	nchan = (unsigned)err & 0xff;
	beats = err & 0x100;
	err = conn_new(pl->ops, fds, nchan, &c);
	if (err) {
		for (unsigned i = 0; i < nchan; i++) {
#if PRECOPY_HAVE_TLS
			if (tls[i])
				pc_tls_conn_free(tls[i]);
#endif
			close(fds[i]);
		}
		return err;
	}
#if PRECOPY_HAVE_TLS
	for (unsigned i = 0; i < nchan; i++)
		if (tls[i])
			pc_tls_attach(&c->s, i, tls[i]);
#endif
	/* Silence is timed out whether or not the source asked for
	 * heartbeats; one that did not is sent none (it would not know
	 * them). */
	err = beats ? pc_stream_beats_start(&c->s, timeout_ms)
		    : pc_stream_rcv_timeout(&c->s, timeout_ms);
	if (err) {
		pc_stream_fini(&c->s);
		free(c);
		return err;
	}
	*out = &c->s.base;
	return 0;
}

static int connect_as(const char *scheme, const char *addr,
		      const struct pc_transport_opts *o, struct pc_transport **out)
{
	struct addrinfo *res, *ai;
	struct tcp_conn *c;
	int fds[PRECOPY_MAX_CHANNELS];
	unsigned nchan = o && o->channels ? o->channels : 1, have = 0;
	uint64_t cookie;
	int err;

	if (!out || nchan > PRECOPY_MAX_CHANNELS)
		return -EINVAL;
	err = pc_addr_resolve(addr, false, &res);
	if (err)
		return err;
	if (getrandom(&cookie, sizeof(cookie), 0) != sizeof(cookie))
		cookie = (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)&cookie;

	for (; have < nchan; have++) {
		uint8_t h[PC_HELLO_SIZE];
		struct iovec v = { h, sizeof(h) };
		int fd = -1;

		err = -ECONNREFUSED;
		for (ai = res; ai; ai = ai->ai_next) {
			fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
			if (fd < 0) {
				err = -errno;
				continue;
			}
			tune_socket(fd, o ? o->timeout_ms : 0);
			err = connect_within(fd, ai->ai_addr, ai->ai_addrlen,
					     o && o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS,
					     o ? o->cancel : NULL);
			if (!err)
				break;
			close(fd);
			fd = -1;
			if (err == -ECANCELED)
				break;
		}
		if (fd < 0)
			goto err_close;
		pc_hello_encode(h, TCP_HELLO_MAGIC, have, nchan, cookie);
		err = pc_fd_writev_all(fd, &v, 1);
		if (err) {
			close(fd);
			goto err_close;
		}
		fds[have] = fd;
	}
	freeaddrinfo(res);
	err = conn_new(pc_transport_find(scheme), fds, nchan, &c);
	if (err)
		goto err_close_nores;
	{
		char host[256], port[8];

		if (pc_addr_split(addr, host, sizeof(host), port, sizeof(port)))
			host[0] = '\0';
		err = wrap(&c->s, o, false, host[0] ? host : NULL, o ? o->cancel : NULL);
	}
	if (!err)
		err = pc_stream_beats_start(&c->s, o && o->timeout_ms ? o->timeout_ms
								      : DEFAULT_TIMEOUT_MS);
	if (err) {
		pc_stream_fini(&c->s);
		free(c);
		return err;
	}
	*out = &c->s.base;
	return 0;

err_close:
	freeaddrinfo(res);
err_close_nores:
	while (have--)
		close(fds[have]);
	return err;
}

static int tcp_connect(const char *addr, const struct pc_transport_opts *o,
		       struct pc_transport **out)
{
	return connect_as("tcp", addr, o, out);
}

int pc_tcp_from_fds(const int *fds, unsigned nchan, struct pc_transport **out)
{
	struct tcp_conn *c;
	int err;

	if (!fds || !out || nchan == 0 || nchan > PRECOPY_MAX_CHANNELS)
		return -EINVAL;
	err = conn_new(pc_transport_find("tcp"), fds, nchan, &c);
	if (!err)
		*out = &c->s.base;
	return err;
}

int pc_tcp_listener_from_fds(const int *fds, unsigned nchan, struct pc_listener **out)
{
	struct tcp_listener *l;

	if (!fds || !out || nchan == 0 || nchan > PRECOPY_MAX_CHANNELS)
		return -EINVAL;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->base.ops = pc_transport_find("tcp");
	l->fd = -1;
	atomic_init(&l->aborted, false);
	memcpy(l->pre_fds, fds, nchan * sizeof(int));
	l->npre = nchan;
	*out = &l->base;
	return 0;
}

static void tcp_close(struct pc_transport *t)
{
	struct tcp_conn *c = (struct tcp_conn *)t;

	pc_stream_fini(&c->s);
	free(c);
}

/* The bandwidth estimate's figures: the kernel's, per connection. */
static int tcp_link_stats(struct pc_transport *t, unsigned chan, struct pc_tp_link_stats *out)
{
	struct tcp_conn *c = (struct tcp_conn *)t;

	if (chan >= t->nchan || !out)
		return -EINVAL;
	return pc_tcp_fd_link_stats(c->s.ch[chan].fd, out);
}

/* The final burst's pacing: the kernel's, per connection. */
static int tcp_set_pacing(struct pc_transport *t, unsigned chan, uint64_t bps)
{
	struct tcp_conn *c = (struct tcp_conn *)t;

	if (chan >= t->nchan)
		return -EINVAL;
	return pc_tcp_fd_set_pacing(c->s.ch[chan].fd, bps);
}

/* All but scheme, caps, listen and connect: tls: is tcp: with TLS on each channel. */
#define TCP_SHARED_OPS \
	.listener_addr = tcp_listener_addr, .accept = tcp_accept, \
	.listener_abort = tcp_listener_abort, .listener_close = tcp_listener_close, \
	.abort = pc_stream_abort, .close = tcp_close, .link_stats = tcp_link_stats, \
	.set_pacing = tcp_set_pacing, \
	.expose_region = pc_stream_expose_region, .unexpose_all = pc_stream_unexpose_all, \
	.reg_local = pc_stream_reg_local, .write_pages = pc_stream_write_pages, \
	.send_msg = pc_stream_send_msg, .recv_msg = pc_stream_recv_msg

const struct pc_transport_ops pc_tcp_ops = {
	.scheme = "tcp",
	.syntax = "tcp:HOST:PORT",
	.caps = PC_TCAP_POSTCOPY,
	.listen = tcp_listen,
	.connect = tcp_connect,
	TCP_SHARED_OPS
};

#if PRECOPY_HAVE_TLS
/* "tls:HOST:PORT": the TCP transport with TLS 1.3 on every channel. */
/* The credentials are loaded once here, so a missing or unreadable file
 * is reported before anything listens, not when a source connects. */
static int tls_listen(const char *addr, const struct pc_transport_opts *o,
		      struct pc_listener **out)
{
	int err = pc_tls_check(o ? o->tls : NULL, true, o ? o->why : NULL, o ? o->whylen : 0);

	return err ? err : listen_as("tls", addr, out);
}

static int tls_connect(const char *addr, const struct pc_transport_opts *o,
		       struct pc_transport **out)
{
	return connect_as("tls", addr, o, out);
}

const struct pc_transport_ops pc_tls_ops = {
	.scheme = "tls",
	.syntax = "tls:HOST:PORT",
	.caps = PC_TCAP_TLS | PC_TCAP_POSTCOPY,
	.listen = tls_listen,
	.connect = tls_connect,
	TCP_SHARED_OPS
};
#endif

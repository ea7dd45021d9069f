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
#include <unistd.h>
#include <arpa/inet.h>

#include "stream.h"
#if PRECOPY_HAVE_TLS
#include "tls.h"
#endif

#define TCP_HELLO_MAGIC 0x31544350u /* "PCT1" */
#define TCP_HELLO_VERSION 1
#define TCP_HELLO_SIZE 32
#define TCP_HELLO_BEATS 0x01u /* flags (byte 5): heartbeats both ways */
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

/* Split "HOST:PORT" or "[V6]:PORT" into host and port strings. */
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
			return -EINVAL; /* bare IPv6 needs brackets */
	}
	if (n == 0 || n >= hostlen || strlen(colon + 1) == 0 || strlen(colon + 1) >= portlen)
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
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = passive ? AI_PASSIVE : 0,
	};
	int err = split_hostport(addr, host, sizeof(host), port, sizeof(port));

	if (err)
		return err;
	err = getaddrinfo(host, port, &hints, res);
	if (err)
		return err == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
	return 0;
}

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

static void hello_encode(uint8_t *b, unsigned chan, unsigned nchan, uint64_t cookie)
{
	memset(b, 0, TCP_HELLO_SIZE);
	pc_put_le32(b, TCP_HELLO_MAGIC);
	b[4] = TCP_HELLO_VERSION;
	b[5] = TCP_HELLO_BEATS;
	b[6] = (uint8_t)chan;
	b[8] = (uint8_t)nchan;
	pc_put_le64(b + 12, cookie);
}

/* Wait up to @ms for @fd to be readable; -ETIMEDOUT, or -ECANCELED. */
static int wait_readable(int fd, int ms, atomic_bool *aborted)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	while (ms > 0) {
		int step = ms < 200 ? ms : 200;
		int r = poll(&p, 1, step);

		if (aborted && atomic_load(aborted))
			return -ECANCELED;
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
		ms -= step;
	}
	return -ETIMEDOUT;
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
	err = resolve(addr, true, &res);
	if (err)
		return err;
	err = -EADDRNOTAVAIL;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
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

/* Accept one connection and read its hello within @ms. */
static int accept_one(struct tcp_listener *l, int ms, unsigned timeout_ms, int *fdp,
		      uint8_t *hello)
{
	int err, fd;

	err = wait_readable(l->fd, ms, &l->aborted);
	if (err)
		return err;
	fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return atomic_load(&l->aborted) ? -ECANCELED : -errno;
	tune_socket(fd, timeout_ms);
	err = wait_readable(fd, 5000, &l->aborted);
	if (!err)
		err = pc_fd_read_all(fd, hello, TCP_HELLO_SIZE);
	if (err) {
		close(fd);
		return err == -ECANCELED ? err : -EAGAIN; /* a stranger; ignore */
	}
	*fdp = fd;
	return 0;
}

/* After the TCP hello: the "tls" scheme's handshake on every channel. */
static int wrap(struct pc_stream *s, const struct pc_transport_opts *o, bool server,
		const char *host, const atomic_bool *cancel)
{
#if PRECOPY_HAVE_TLS
	if (!strcmp(s->base.ops->scheme, "tls"))
		return pc_tls_start(s, o ? o->tls : NULL, server, host, o ? o->timeout_ms : 0,
				    cancel, o ? o->why : NULL, o ? o->whylen : 0);
#endif
	(void)s, (void)o, (void)server, (void)host, (void)cancel;
	return 0;
}

static int tcp_accept(struct pc_listener *pl, const struct pc_transport_opts *o,
		      struct pc_transport **out)
{
	struct tcp_listener *l = (struct tcp_listener *)pl;
	struct tcp_conn *c;
	int fds[PRECOPY_MAX_CHANNELS];
	unsigned nchan = 0, have = 0, timeout_ms = o ? o->timeout_ms : 0;
	uint64_t cookie = 0;
	uint8_t h[TCP_HELLO_SIZE];
	bool beats = false;
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
	/* Channel 0: wait as long as it takes (until cancelled). */
	for (;;) {
		int fd;

		err = accept_one(l, 1 << 30, timeout_ms, &fd, h);
		if (err == -EAGAIN)
			continue;
		if (err)
			return err;
		if (pc_get_le32(h) != TCP_HELLO_MAGIC || h[4] != TCP_HELLO_VERSION || h[6] != 0 ||
		    h[8] == 0 || h[8] > PRECOPY_MAX_CHANNELS) {
			close(fd); /* not one of ours, or not channel 0 */
			continue;
		}
		nchan = h[8];
		beats = h[5] & TCP_HELLO_BEATS;
		cookie = pc_get_le64(h + 12);
		fds[0] = fd;
		have = 1;
		break;
	}
	/* The other channels follow at once; a stranger is dropped. */
	while (have < nchan) {
		int fd;

		err = accept_one(l, 10000, timeout_ms, &fd, h);
		if (err == -EAGAIN)
			continue;
		if (err)
			goto err_close;
		if (pc_get_le32(h) != TCP_HELLO_MAGIC || pc_get_le64(h + 12) != cookie ||
		    h[6] != have || h[8] != nchan) {
			close(fd);
			continue;
		}
		fds[have++] = fd;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		err = -ENOMEM;
		goto err_close;
	}
	err = pc_stream_init(&c->s, pl->ops, fds, nchan);
	if (err) {
		free(c);
		goto err_close;
	}
	err = wrap(&c->s, o, true, NULL, &l->aborted);
	if (!err && beats) /* a source without heartbeats gets none */
		err = pc_stream_beats_start(&c->s, timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS);
	if (err) {
		pc_stream_fini(&c->s);
		free(c);
		return err;
	}
	*out = &c->s.base;
	return 0;

err_close:
	while (have--)
		close(fds[have]);
	return err;
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
	err = resolve(addr, false, &res);
	if (err)
		return err;
	if (getrandom(&cookie, sizeof(cookie), 0) != sizeof(cookie))
		cookie = (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)&cookie;

	for (; have < nchan; have++) {
		uint8_t h[TCP_HELLO_SIZE];
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
		hello_encode(h, have, nchan, cookie);
		err = pc_fd_writev_all(fd, &v, 1);
		if (err) {
			close(fd);
			goto err_close;
		}
		fds[have] = fd;
	}
	freeaddrinfo(res);
	c = calloc(1, sizeof(*c));
	if (!c) {
		err = -ENOMEM;
		goto err_close_nores;
	}
	err = pc_stream_init(&c->s, pc_transport_find(scheme), fds, nchan);
	if (err) {
		free(c);
		goto err_close_nores;
	}
	{
		char host[256], port[8];

		if (split_hostport(addr, host, sizeof(host), port, sizeof(port)))
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
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	err = pc_stream_init(&c->s, pc_transport_find("tcp"), fds, nchan);
	if (err) {
		free(c);
		return err;
	}
	*out = &c->s.base;
	return 0;
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

const struct pc_transport_ops pc_tcp_ops = {
	.scheme = "tcp",
	.caps = 0,
	.listen = tcp_listen,
	.listener_addr = tcp_listener_addr,
	.accept = tcp_accept,
	.listener_abort = tcp_listener_abort,
	.listener_close = tcp_listener_close,
	.connect = tcp_connect,
	.abort = pc_stream_abort,
	.close = tcp_close,
	.expose_region = pc_stream_expose_region,
	.unexpose_all = pc_stream_unexpose_all,
	.reg_local = pc_stream_reg_local,
	.link_stats = tcp_link_stats,
	.send_msg = pc_stream_send_msg,
	.recv_msg = pc_stream_recv_msg,
	.write_pages = pc_stream_write_pages,
};

#if PRECOPY_HAVE_TLS
/* "tls:HOST:PORT": the TCP transport with TLS 1.3 on every channel. */
static int tls_listen(const char *addr, const struct pc_transport_opts *o,
		      struct pc_listener **out)
{
	(void)o;
	return listen_as("tls", addr, out);
}

static int tls_connect(const char *addr, const struct pc_transport_opts *o,
		       struct pc_transport **out)
{
	return connect_as("tls", addr, o, out);
}

const struct pc_transport_ops pc_tls_ops = {
	.scheme = "tls",
	.caps = 0,
	.listen = tls_listen,
	.listener_addr = tcp_listener_addr,
	.accept = tcp_accept,
	.listener_abort = tcp_listener_abort,
	.listener_close = tcp_listener_close,
	.connect = tls_connect,
	.abort = pc_stream_abort,
	.close = tcp_close,
	.expose_region = pc_stream_expose_region,
	.unexpose_all = pc_stream_unexpose_all,
	.reg_local = pc_stream_reg_local,
	.link_stats = tcp_link_stats,
	.send_msg = pc_stream_send_msg,
	.recv_msg = pc_stream_recv_msg,
	.write_pages = pc_stream_write_pages,
};
#endif

/* SPDX-License-Identifier: MIT */
/*
 * bridge.c - `precopy bridge`: carry an opaque byte stream (an unmodified
 * QEMU's migration stream) between two unix sockets over any precopy
 * transport.
 *
 *   source host:  QEMU  --migrate "unix:A"-->  bridge --listen-unix A --to URI
 *   dest host:    bridge --listen URI --to-unix B  -->  QEMU -incoming unix:B
 *
 * QEMU keeps its own migration policy (passes, switchover, downtime); the
 * bridge only supplies the link. It is a byte pipe in both directions (QEMU
 * uses the way back for its return path when that capability is on).
 *
 * On the transport, channel 0 carries messages of the bridge protocol; each
 * starts with a 4-byte little-endian kind:
 *
 *   PBH1  hello, first in each direction: le32 version (1)
 *   PBD1  data: the bytes that follow, 1 .. PC_MSG_MAX - 4
 *   PBE1  end: the sender's socket reached end of stream cleanly; nothing
 *         more comes this way (the receiver shuts its socket for writing)
 *   PBX1  error: the sender failed (text follows); the receiver closes its
 *         socket so its QEMU sees the failure too
 *
 * The bridge ends with status 0 once both directions have ended cleanly.
 * If either socket or the transport fails, the other side is closed, the
 * peer bridge is told why, and the exit status is 1: a QEMU at either end
 * sees its migration fail rather than hang.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "le.h"
#include "transport.h"

#define BR_HELLO 0x31484250u /* "PBH1" */
#define BR_DATA 0x31444250u  /* "PBD1" */
#define BR_END 0x31454250u   /* "PBE1" */
#define BR_ERROR 0x31584250u /* "PBX1" */
#define BR_VERSION 1u
#define BR_HDR 4u
#define URI_MAX 160 /* "unix:" and a sun_path, or a transport URI */

struct bridge {
	struct pc_cli *c;
	struct pc_transport *tp;
	int fd;                     /* the QEMU-side unix socket */
	atomic_int err;             /* first failure, sticky */
	char why[256];              /* and its description, by who set err */
	atomic_uint_fast64_t to_peer, from_peer; /* payload bytes */
	uint64_t t0;
};

/* For SIGINT/SIGTERM: what to wake. Set before the blocking calls. */
static struct pc_listener *volatile g_listener;
static volatile int g_unix_listen_fd = -1;
static struct bridge *volatile g_bridge;
static volatile sig_atomic_t g_stop;

/* Async-signal-safe: shutdown() and the transports' abort ops only. */
static void on_signal(int sig)
{
	struct bridge *b = g_bridge;

	(void)sig;
	g_stop = 1;
	if (g_unix_listen_fd >= 0)
		shutdown(g_unix_listen_fd, SHUT_RDWR);
	if (g_listener)
		pc_tp_listener_abort(g_listener);
	if (b) {
		if (b->tp)
			pc_tp_abort(b->tp);
		if (b->fd >= 0)
			shutdown(b->fd, SHUT_RDWR);
	}
}

static int unix_addr(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (!*path || strlen(path) >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	strcpy(sa->sun_path, path);
	return 0;
}

/* Bind and listen on @path; a stale socket file there is replaced, any
 * other file is left alone (-EADDRINUSE). */
static int unix_listen(const char *path, int *out)
{
	struct sockaddr_un sa;
	struct stat stb;
	int fd, err = unix_addr(path, &sa);

	if (err)
		return err;
	if (lstat(path, &stb) == 0) {
		if (!S_ISSOCK(stb.st_mode))
			return -EADDRINUSE;
		unlink(path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 1)) {
		err = -errno;
		close(fd);
		return err;
	}
	*out = fd;
	return 0;
}

static int unix_connect(const char *path, int *out)
{
	struct sockaddr_un sa;
	int fd, err = unix_addr(path, &sa);

	if (err)
		return err;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		err = -errno;
		close(fd);
		return err;
	}
	*out = fd;
	return 0;
}

static int send_kind(struct pc_transport *tp, uint32_t kind, const void *data, size_t len)
{
	uint8_t hdr[BR_HDR];
	struct iovec iov[2] = {
		{ .iov_base = hdr, .iov_len = sizeof(hdr) },
		{ .iov_base = (void *)data, .iov_len = len },
	};

	pc_put_le32(hdr, kind);
	return pc_tp_send_msg(tp, 0, iov, len ? 2 : 1);
}

/*
 * Record the first failure, then close the socket, tell the peer bridge
 * (best effort) and abort the transport, so every blocked call returns and
 * the QEMU at each end sees its migration fail. Later failures (the other
 * thread waking up) return at once. Returns @err.
 */
static int fail(struct bridge *b, int err, bool tell_peer, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(struct bridge *b, int err, bool tell_peer, const char *fmt, ...)
{
	int none = 0;
	va_list ap;

	if (!atomic_compare_exchange_strong(&b->err, &none, err))
		return err;
	va_start(ap, fmt);
	vsnprintf(b->why, sizeof(b->why), fmt, ap);
	va_end(ap);
	if (b->fd >= 0)
		shutdown(b->fd, SHUT_RDWR);
	if (b->tp) {
		if (tell_peer)
			send_kind(b->tp, BR_ERROR, b->why, strlen(b->why));
		pc_tp_abort(b->tp);
	}
	return err;
}

static const char *tp_why(struct bridge *b, int err)
{
	return b->tp && b->tp->why[0] ? b->tp->why : strerror(-err);
}

/* Socket -> transport, until the socket's end of stream. */
static void pump_up(struct bridge *b, uint8_t *buf)
{
	int err;

	pc_put_le32(buf, BR_DATA);
	for (;;) {
		ssize_t n = read(b->fd, buf + BR_HDR, PC_MSG_MAX - BR_HDR);
		struct iovec iov;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail(b, -errno, true, "reading from the unix socket: %s", strerror(errno));
			return;
		}
		if (atomic_load(&b->err))
			return;
		if (n == 0) {
			err = send_kind(b->tp, BR_END, NULL, 0);
			if (err)
				fail(b, err, false, "sending end of stream: %s", tp_why(b, err));
			return;
		}
		iov.iov_base = buf;
		iov.iov_len = BR_HDR + (size_t)n;
		err = pc_tp_send_msg(b->tp, 0, &iov, 1);
		if (err) {
			fail(b, err, false, "sending to the peer bridge: %s", tp_why(b, err));
			return;
		}
		atomic_fetch_add(&b->to_peer, (uint64_t)n);
	}
}

/* Transport -> socket, until the peer's end message. */
static void pump_down(struct bridge *b, uint8_t *buf)
{
	int err;

	for (;;) {
		size_t len = 0;
		uint32_t kind;

		err = pc_tp_recv_msg(b->tp, 0, buf, PC_MSG_MAX, &len);
		if (err) {
			fail(b, err, false, "receiving from the peer bridge: %s", tp_why(b, err));
			return;
		}
		if (len < BR_HDR) {
			fail(b, -EPROTO, true, "a %zu-byte message from the peer bridge", len);
			return;
		}
		kind = pc_get_le32(buf);
		if (kind == BR_DATA && len > BR_HDR) {
			err = pc_fd_write_all(b->fd, buf + BR_HDR, len - BR_HDR);
			if (err) {
				fail(b, err, true, "writing to the unix socket: %s", strerror(-err));
				return;
			}
			atomic_fetch_add(&b->from_peer, len - BR_HDR);
		} else if (kind == BR_END && len == BR_HDR) {
			/* The peer's socket ended: pass the end on. ENOTCONN
			 * when our side has already closed is not a failure. */
			if (shutdown(b->fd, SHUT_WR) && errno != ENOTCONN)
				fail(b, -errno, true, "shutting the unix socket: %s",
				     strerror(errno));
			return;
		} else if (kind == BR_ERROR) {
			int n = (int)(len - BR_HDR);

			fail(b, -ECONNABORTED, false, "the peer bridge failed: %.*s",
			     n > 200 ? 200 : n, (const char *)buf + BR_HDR);
			return;
		} else {
			fail(b, -EPROTO, true, "unexpected message 0x%08" PRIx32 " of %zu bytes "
			     "from the peer bridge", kind, len);
			return;
		}
	}
}

/* Run @pump with a buffer for one message, or fail the bridge. */
static void *with_buf(struct bridge *b, void (*pump)(struct bridge *, uint8_t *))
{
	uint8_t *buf = malloc(PC_MSG_MAX);

	if (!buf) {
		fail(b, -ENOMEM, true, "out of memory");
		return NULL;
	}
	pump(b, buf);
	free(buf);
	return NULL;
}

static void *upstream(void *arg)
{
	return with_buf(arg, pump_up);
}

static void *downstream(void *arg)
{
	return with_buf(arg, pump_down);
}

static int hello(struct bridge *b)
{
	uint8_t msg[16], ver[4];
	size_t len = 0;
	int err;

	pc_put_le32(ver, BR_VERSION);
	err = send_kind(b->tp, BR_HELLO, ver, sizeof(ver));
	if (!err)
		err = pc_tp_recv_msg(b->tp, 0, msg, sizeof(msg), &len);
	if (err == -EMSGSIZE || (!err && (len != BR_HDR + 4 || pc_get_le32(msg) != BR_HELLO)))
		return fail(b, -EPROTO, false, "the peer is not a precopy bridge");
	if (err)
		return fail(b, err, false, "bridge handshake: %s", tp_why(b, err));
	if (pc_get_le32(msg + BR_HDR) != BR_VERSION)
		return fail(b, -EPROTO, true, "peer bridge speaks version %" PRIu32 ", we speak %u",
			    pc_get_le32(msg + BR_HDR), BR_VERSION);
	return 0;
}

/* @s as the body of a JSON string. */
static void json_str(const char *s)
{
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			putchar('\\');
		putchar((unsigned char)*s < 0x20 ? ' ' : *s);
	}
}

static void say(struct pc_cli *c, const char *event, const char *fmt, const char *arg)
{
	if (c->json) {
		printf("{\"event\":\"%s\",\"uri\":\"", event);
		json_str(arg);
		printf("\"}\n");
	} else {
		printf(fmt, arg);
		putchar('\n');
	}
	fflush(stdout);
}

static void report(struct bridge *b, int err)
{
	struct pc_cli *c = b->c;
	double secs = (double)(pc_mono_ns() - b->t0) / 1e9;
	uint64_t up = atomic_load(&b->to_peer), down = atomic_load(&b->from_peer);
	char s1[32], s2[32], s3[32];

	if (c->json) {
		printf("{\"event\":\"result\",\"role\":\"bridge\",\"status\":\"%s\","
		       "\"to-peer\":%" PRIu64 ",\"from-peer\":%" PRIu64 ",\"time-ms\":%.0f,"
		       "\"error\":\"", err ? "failed" : "completed", up, down, secs * 1e3);
		json_str(err ? b->why : "");
		printf("\"}\n");
		fflush(stdout);
	} else if (!c->quiet) {
		fprintf(stderr, "precopy bridge: %s: %s to the peer, %s from it, %.2f s, %s/s\n",
			err ? "failed" : "stream ended", pc_cli_fmt_bytes((double)up, s1, sizeof(s1)),
			pc_cli_fmt_bytes((double)down, s2, sizeof(s2)), secs,
			pc_cli_fmt_bytes(secs > 0 ? (double)(up + down) / secs : 0, s3, sizeof(s3)));
	}
	if (err)
		fprintf(stderr, "precopy bridge: %s\n", b->why);
}

/* Both directions, until both ended or one failed. */
static int pump(struct bridge *b)
{
	pthread_t up, down;

	if (pthread_create(&up, NULL, upstream, b))
		return fail(b, -EAGAIN, true, "cannot start a thread");
	if (pthread_create(&down, NULL, downstream, b)) {
		fail(b, -EAGAIN, true, "cannot start a thread");
		pthread_join(up, NULL);
		return -EAGAIN;
	}
	pthread_join(up, NULL);
	pthread_join(down, NULL);
	return atomic_load(&b->err);
}


/* One channel, with the command line's timeout, key and TLS settings; why
 * a connection failed into @why. */
static struct pc_transport_opts tp_opts(struct pc_cli *c, char *why, size_t whylen)
{
	return (struct pc_transport_opts){ .channels = 1, .timeout_ms = c->params.timeout_ms,
					   .key = c->auth_key, .key_len = c->auth_key_len,
					   .tls = c->have_tls ? &c->tls : NULL, .why = why,
					   .whylen = whylen };
}

/* @uri (given as @flag) as its transport and the rest. Return: 0, or the
 * bridge's failure. */
static int split_uri(struct bridge *b, const char *flag, const char *uri,
		     const struct pc_transport_ops **ops, const char **rest)
{
	int err = pc_transport_split_uri(uri, ops, rest);

	if (err)
		return fail(b, err, false, "%s %s: %s", flag, uri,
			    err == -EPROTONOSUPPORT ? "transport not built in" : "malformed URI");
	return 0;
}
/* Source side: QEMU connects to us on a unix socket; we connect onward. */
static int bridge_source(struct bridge *b)
{
	struct pc_cli *c = b->c;
	const struct pc_transport_ops *ops;
	char why[160] = "";
	struct pc_transport_opts o = tp_opts(c, why, sizeof(why));
	const char *rest;
	char uri[URI_MAX];
	int lfd = -1, err;

	err = split_uri(b, "--to", c->to, &ops, &rest);
	if (err)
		return err;
	err = unix_listen(c->listen_unix, &lfd);
	if (err)
		return fail(b, err, false, "--listen-unix %s: %s", c->listen_unix, strerror(-err));
	g_unix_listen_fd = lfd;
	snprintf(uri, sizeof(uri), "unix:%s", c->listen_unix);
	say(c, "listening", "listening on %s", uri);
	do
		b->fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	while (b->fd < 0 && errno == EINTR && !g_stop);
	err = b->fd < 0 ? (g_stop ? -ECANCELED : -errno) : 0;
	g_unix_listen_fd = -1;
	close(lfd);
	unlink(c->listen_unix);
	if (err)
		return fail(b, err, false, "waiting for a connection on %s: %s", uri,
			    strerror(-err));
	b->t0 = pc_mono_ns();
	err = pc_tp_connect(ops, rest, &o, &b->tp);
	if (err) {
		b->tp = NULL;
		return fail(b, err, false, "connecting to %s: %s", c->to,
			    why[0] ? why : strerror(-err));
	}
	if (g_stop)
		return fail(b, -ECANCELED, true, "cancelled");
	err = hello(b);
	return err ? err : pump(b);
}

/* Destination side: a peer bridge connects to us; we connect to QEMU. */
static int bridge_dest(struct bridge *b)
{
	struct pc_cli *c = b->c;
	const struct pc_transport_ops *ops;
	char why[160] = "";
	struct pc_transport_opts o = tp_opts(c, why, sizeof(why));
	struct pc_listener *l = NULL;
	const char *rest;
	char uri[URI_MAX];
	int err;

	err = split_uri(b, "--listen", c->listen, &ops, &rest);
	if (err)
		return err;
	err = pc_tp_listen(ops, rest, &o, &l);
	if (err)
		return fail(b, err, false, "--listen %s: %s", c->listen,
			    why[0] ? why : strerror(-err));
	err = pc_tp_listener_addr(l, uri, sizeof(uri));
	if (err)
		snprintf(uri, sizeof(uri), "%s", c->listen);
	say(c, "listening", "listening on %s", uri);
	g_listener = l;
	if (!g_stop)
		err = pc_tp_accept(l, &o, &b->tp);
	else
		err = -ECANCELED;
	g_listener = NULL;
	pc_tp_listener_close(l);
	if (err) {
		b->tp = NULL;
		return fail(b, err, false, "waiting for the peer bridge on %s: %s", uri,
			    strerror(-err));
	}
	b->t0 = pc_mono_ns();
	err = hello(b);
	if (err)
		return err;
	err = unix_connect(c->to_unix, &b->fd);
	if (err)
		return fail(b, err, true, "connecting to unix:%s: %s", c->to_unix, strerror(-err));
	if (g_stop)
		return fail(b, -ECANCELED, true, "cancelled");
	return pump(b);
}

int pc_cli_bridge(struct pc_cli *c)
{
	struct bridge b = { .c = c, .fd = -1 };
	struct sigaction sa = { .sa_handler = on_signal };
	int err;

	if (!!c->listen_unix + !!c->to_unix != 1 || (c->listen_unix && (!c->to || c->listen)) ||
	    (c->to_unix && (!c->listen || c->to))) {
		fprintf(stderr, "precopy: bridge takes --listen-unix PATH --to URI (source side) "
			"or --listen URI --to-unix PATH (destination side)\n");
		return 2;
	}
	if (c->have_tls) {
		/* the same checks as a migration's, by the same call */
		struct precopy_session *s;
		int rc;

		if (precopy_new(PRECOPY_ROLE_SOURCE, NULL, NULL, &s))
			return 1;
		rc = pc_cli_apply_tls(c, s, "bridge");
		precopy_delete(&s);
		if (rc)
			return rc;
	}
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	atomic_init(&b.err, 0);
	atomic_init(&b.to_peer, 0);
	atomic_init(&b.from_peer, 0);
	b.t0 = pc_mono_ns();
	g_bridge = &b;
	err = c->listen_unix ? bridge_source(&b) : bridge_dest(&b);
	g_bridge = NULL;
	report(&b, err);
	pc_tp_close(b.tp);
	if (b.fd >= 0)
		close(b.fd);
	return err ? 1 : 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * tls.c - TLS 1.3 on stream channels with GnuTLS (see tls.h).
 *
 * PSK mode: TLS 1.3 with an (EC)DHE + PSK key exchange; the destination
 * looks the source's identity up and refuses any other. x509 mode: the
 * source verifies the destination's certificate against its CA file and
 * host name; a destination with a CA file also requires and verifies the
 * source's certificate. Either way nothing but TLS 1.3 is offered.
 *
 * Each channel has its own session; GnuTLS lets one thread send while
 * another receives on a session, which is how the engine uses a channel.
 * Small writes (frame headers) are corked into the record of the data
 * that follows.
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <gnutls/gnutls.h>

#include "tls.h"

#define PRIO_X509 "NORMAL:-VERS-ALL:+VERS-TLS1.3"
#define PRIO_PSK "NORMAL:-VERS-ALL:+VERS-TLS1.3:+ECDHE-PSK:+DHE-PSK:+PSK"

struct tls_chan {
	struct pc_stream *s; /* NULL until attached (pc_tls_attach) */
	int fd;
	bool nonblock;       /* an accept handshake on a non-blocking socket */
	gnutls_session_t sess;
	gnutls_certificate_credentials_t x509;
	gnutls_psk_client_credentials_t psk_cli;
	gnutls_psk_server_credentials_t psk_srv;
	const struct precopy_tls *cfg;
};

static void chan_free(void *ctx)
{
	struct tls_chan *c = ctx;

	if (!c)
		return;
	if (c->sess)
		gnutls_deinit(c->sess);
	if (c->x509)
		gnutls_certificate_free_credentials(c->x509);
	if (c->psk_cli)
		gnutls_psk_free_client_credentials(c->psk_cli);
	if (c->psk_srv)
		gnutls_psk_free_server_credentials(c->psk_srv);
	free(c);
}

/*
 * Set by push() in the sending thread: the socket's SO_SNDTIMEO passed
 * with no byte sent, the peer reads nothing. GnuTLS would take the bare
 * EAGAIN for "try again" and, in a blocking wait, retry for ever; as
 * ETIMEDOUT it is a fatal push error.
 */
static _Thread_local bool push_timed_out;

static ssize_t push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int iovcnt)
{
	struct tls_chan *c = ptr;
	struct msghdr mh = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt };
	ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);

	if (n < 0 && c->nonblock)
		return n; /* EAGAIN: GnuTLS asks again when the socket is ready */
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT)) {
		push_timed_out = true; /* ETIMEDOUT: TCP_USER_TIMEOUT, the same story */
		errno = ETIMEDOUT;
	}
	return n;
}

/* The same for receiving: SO_RCVTIMEO (set with the heartbeats) passed
 * with nothing from the peer. */
static _Thread_local bool pull_timed_out;

static ssize_t pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	struct tls_chan *c = ptr;
	ssize_t n = recv(c->fd, buf, len, 0);

	if (n < 0 && c->nonblock)
		return n;
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT)) {
		pull_timed_out = true;
		errno = ETIMEDOUT;
	}
	return n;
}

static int tls_writev_all(void *ctx, struct iovec *iov, int iovcnt)
{
	struct tls_chan *c = ctx;
	int err = 0;

	push_timed_out = false;
	gnutls_record_cork(c->sess);
	for (int i = 0; i < iovcnt && !err; i++) {
		const uint8_t *p = iov[i].iov_base;
		size_t left = iov[i].iov_len;

		while (left > 0) {
			ssize_t n = gnutls_record_send(c->sess, p, left);

			if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
				continue;
			if (n < 0) {
				err = -ECONNRESET;
				break;
			}
			/* corked: buffered, not yet sent */
			p += n;
			left -= (size_t)n;
		}
	}
	for (;;) {
		int r = gnutls_record_uncork(c->sess, GNUTLS_RECORD_WAIT);

		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			continue;
		if (r < 0 && !err)
			err = -ECONNRESET;
		break;
	}
	return err && push_timed_out ? -ETIMEDOUT : err;
}

static ssize_t tls_readv(void *ctx, struct iovec *iov, int iovcnt)
{
	struct tls_chan *c = ctx;

	(void)iovcnt; /* the first buffer is always the wanted bytes */
	pull_timed_out = false;
	for (;;) {
		ssize_t n = gnutls_record_recv(c->sess, iov[0].iov_base, iov[0].iov_len);

		if (n < 0 && pull_timed_out)
			return -ETIMEDOUT;

		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n >= 0)
			return n;
		if (n == GNUTLS_E_PREMATURE_TERMINATION)
			return 0; /* the peer closed the connection */
		if (n == GNUTLS_E_FATAL_ALERT_RECEIVED) {
			/* e.g. TLS 1.3: the server refused our certificate
			 * after our side of the handshake had finished */
			if (!c->s->base.why[0])
				snprintf(c->s->base.why, sizeof(c->s->base.why),
					 "TLS alert from the peer: %s",
					 gnutls_alert_get_name(gnutls_alert_get(c->sess)));
			return -EACCES;
		}
		return -ECONNRESET;
	}
}

static const struct pc_stream_io tls_io = {
	.writev_all = tls_writev_all,
	.readv = tls_readv,
	.fini = chan_free,
};

/* The destination's PSK lookup: only the configured identity. */
static int psk_lookup(gnutls_session_t sess, const char *user, gnutls_datum_t *key)
{
	struct tls_chan *c = gnutls_session_get_ptr(sess);

	if (!c || !user || strcmp(user, c->cfg->psk_identity) != 0)
		return -1;
	key->data = gnutls_malloc(c->cfg->psk_len);
	if (!key->data)
		return -1;
	memcpy(key->data, c->cfg->psk, c->cfg->psk_len);
	key->size = (unsigned)c->cfg->psk_len;
	return 0;
}

static int fail(char *why, size_t whylen, int err, const char *what, int gerr)
{
	if (why && whylen)
		snprintf(why, whylen, "TLS %s: %s", what, gnutls_strerror(gerr));
	return err;
}

/* Authentication failures, as opposed to a broken connection. */
static bool is_auth_error(int gerr)
{
	switch (gerr) {
	case GNUTLS_E_CERTIFICATE_ERROR:
	case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
	case GNUTLS_E_DECRYPTION_FAILED:
	case GNUTLS_E_FATAL_ALERT_RECEIVED:
	case GNUTLS_E_INSUFFICIENT_CREDENTIALS:
	case GNUTLS_E_NO_CERTIFICATE_FOUND:
	case GNUTLS_E_KEY_USAGE_VIOLATION:
	case GNUTLS_E_NO_COMMON_KEY_SHARE:
	case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
	case GNUTLS_E_NO_CIPHER_SUITES:
	case GNUTLS_E_UNWANTED_ALGORITHM:
	case GNUTLS_E_MAC_VERIFY_FAILED:
	case GNUTLS_E_ERROR_IN_FINISHED_PACKET:
	case GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER:
		return true;
	default:
		return false;
	}
}

/*
 * The handshake's cancel flag, for the thread running the handshake.
 * GnuTLS hands the pull-timeout function only the transport pointer (the
 * fd), so the flag travels beside it rather than through it.
 */
static _Thread_local const atomic_bool *hs_cancel;
static _Thread_local bool hs_cancelled;

/*
 * GnuTLS waits for the peer's handshake records through this: poll in
 * 50 ms steps so a cancel ends the wait within 50 ms, not at the handshake
 * timeout. Returns >0 readable, 0 timed out, -1 error or cancelled.
 */
static int pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
	struct tls_chan *c = ptr;
	int fd = c->fd;

	if (c->nonblock) {
		struct pollfd p = { .fd = fd, .events = POLLIN };

		return poll(&p, 1, 0);
	}

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int step = ms == GNUTLS_INDEFINITE_TIMEOUT || ms > 50 ? 50 : (int)ms;
		int r;

		if (hs_cancel && atomic_load(hs_cancel)) {
			hs_cancelled = true;
			errno = ECANCELED;
			return -1;
		}
		r = poll(&p, 1, step);
		if (r != 0) {
			if (r < 0 && errno == EINTR)
				continue;
			return r;
		}
		if (ms != GNUTLS_INDEFINITE_TIMEOUT) {
			ms -= (unsigned)step;
			if (ms == 0)
				return 0;
		}
	}
}

/* Settings that cannot make a session at this end. */
static int settings_missing(const struct precopy_tls *cfg, bool server, char *why,
			    size_t whylen)
{
	if (!cfg) {
		if (why && whylen)
			snprintf(why, whylen, "tls: scheme without TLS settings "
					      "(precopy_set_tls)");
		return -EINVAL;
	}
	if (!cfg->psk_identity && (server ? !cfg->cert_file : !cfg->ca_file)) {
		if (why && whylen)
			snprintf(why, whylen, "TLS: %s", server ? "the destination needs a "
					      "certificate and key, or a PSK"
							 : "the source needs a CA file, or a PSK");
		return -EINVAL;
	}
	return 0;
}

/* A credential file GnuTLS could not use: gone or unreadable, or not PEM. */
static int file_error(char *why, size_t whylen, const char *what, const char *path, int gerr)
{
	if (why && whylen)
		snprintf(why, whylen, "TLS %s %s: %s", what, path, gnutls_strerror(gerr));
	return gerr == GNUTLS_E_FILE_ERROR ? -ENOENT : -EBADMSG;
}

/*
 * A session for one connection on @fd with its own credentials, loaded
 * from @cfg (files are read here), ready for the handshake. On failure
 * *@out is still set when something was allocated (free it with
 * chan_free()).
 */
static int chan_new(int fd, const struct precopy_tls *cfg, bool server, const char *peer_host,
		    bool nonblock, struct tls_chan **out, char *why, size_t whylen)
{
	struct tls_chan *c = calloc(1, sizeof(*c));
	bool psk = cfg->psk_identity != NULL;
	int g;

	*out = c;
	if (!c)
		return -ENOMEM;
	c->fd = fd;
	c->cfg = cfg;
	c->nonblock = nonblock;
	g = gnutls_init(&c->sess, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_SIGNAL);
	if (g < 0) {
		c->sess = NULL;
		return fail(why, whylen, -ENOMEM, "init", g);
	}
	gnutls_session_set_ptr(c->sess, c);
	g = gnutls_priority_set_direct(c->sess, psk ? PRIO_PSK : PRIO_X509, NULL);
	if (g < 0)
		return fail(why, whylen, -EINVAL, "priorities", g);
	if (psk && server) {
		g = gnutls_psk_allocate_server_credentials(&c->psk_srv);
		if (g >= 0) {
			gnutls_psk_set_server_credentials_function(c->psk_srv, psk_lookup);
			g = gnutls_credentials_set(c->sess, GNUTLS_CRD_PSK, c->psk_srv);
		}
	} else if (psk) {
		gnutls_datum_t key = { (unsigned char *)cfg->psk, (unsigned)cfg->psk_len };

		g = gnutls_psk_allocate_client_credentials(&c->psk_cli);
		if (g >= 0)
			g = gnutls_psk_set_client_credentials(c->psk_cli, cfg->psk_identity, &key,
							      GNUTLS_PSK_KEY_RAW);
		if (g >= 0)
			g = gnutls_credentials_set(c->sess, GNUTLS_CRD_PSK, c->psk_cli);
	} else {
		g = gnutls_certificate_allocate_credentials(&c->x509);
		if (g >= 0 && cfg->ca_file) {
			g = gnutls_certificate_set_x509_trust_file(c->x509, cfg->ca_file,
								   GNUTLS_X509_FMT_PEM);
			if (g == 0)
				g = GNUTLS_E_BASE64_DECODING_ERROR; /* no CA in the file */
			if (g < 0)
				return file_error(why, whylen, "CA file", cfg->ca_file, g);
		}
		if (g >= 0 && cfg->cert_file) {
			g = gnutls_certificate_set_x509_key_file(c->x509, cfg->cert_file,
								 cfg->key_file, GNUTLS_X509_FMT_PEM);
			if (g < 0)
				return file_error(why, whylen, "certificate or key",
						  cfg->cert_file, g);
		}
		if (g >= 0)
			g = gnutls_credentials_set(c->sess, GNUTLS_CRD_CERTIFICATE, c->x509);
		if (g >= 0 && server && cfg->ca_file) {
			gnutls_certificate_server_set_request(c->sess, GNUTLS_CERT_REQUIRE);
			gnutls_session_set_verify_cert(c->sess, NULL, 0);
		}
		if (g >= 0 && !server) {
			const char *name = cfg->hostname ? cfg->hostname : peer_host;

			/* SNI carries host names only, never address literals */
			if (name && strspn(name, "0123456789.:abcdefABCDEF") != strlen(name))
				g = gnutls_server_name_set(c->sess, GNUTLS_NAME_DNS, name,
							   strlen(name));
			gnutls_session_set_verify_cert(c->sess, name, 0);
		}
	}
	if (g < 0)
		return fail(why, whylen, -EINVAL, "credentials", g);
	gnutls_transport_set_ptr(c->sess, c);
	gnutls_transport_set_vec_push_function(c->sess, push);
	gnutls_transport_set_pull_function(c->sess, pull);
	gnutls_transport_set_pull_timeout_function(c->sess, pull_timeout);
	return 0;
}

/* Why a handshake failed, in @why; the errno to return. */
static int handshake_failed(struct tls_chan *c, unsigned i, int g, char *why, size_t whylen)
{
	int err;

	/* Tell the peer why (a wrong PSK would otherwise look like a
	 * connection closed for no reason). */
	if (g != GNUTLS_E_FATAL_ALERT_RECEIVED && g != GNUTLS_E_PREMATURE_TERMINATION &&
	    g != GNUTLS_E_PUSH_ERROR && g != GNUTLS_E_PULL_ERROR)
		gnutls_alert_send_appropriate(c->sess, g);
	err = is_auth_error(g) ? -EACCES : g == GNUTLS_E_TIMEDOUT ? -ETIMEDOUT : -ECONNRESET;

	if (g == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR && why && whylen) {
		gnutls_datum_t out;
		unsigned st = gnutls_session_get_verify_cert_status(c->sess);

		if (gnutls_certificate_verification_status_print(st, GNUTLS_CRT_X509, &out,
								 0) >= 0) {
			snprintf(why, whylen, "TLS handshake on channel %u: %s", i,
				 (const char *)out.data);
			gnutls_free(out.data);
			return err;
		}
	}
	if (g == GNUTLS_E_FATAL_ALERT_RECEIVED && why && whylen) {
		snprintf(why, whylen, "TLS handshake on channel %u: the peer refused: %s%s", i,
			 gnutls_alert_get_name(gnutls_alert_get(c->sess)),
			 c->cfg->psk_identity ? " (not the same key and identity?)" : "");
		return err;
	}
	return fail(why, whylen, err, "handshake", g);
}

/* The blocking handshake of channel @i (the source's side). */
static int chan_start(struct pc_stream *s, unsigned i, const struct precopy_tls *cfg,
		      bool server, const char *peer_host, unsigned timeout_ms,
		      const atomic_bool *cancel, char *why, size_t whylen)
{
	struct tls_chan *c;
	int g, err = chan_new(s->ch[i].fd, cfg, server, peer_host, false, &c, why, whylen);

	s->ch[i].io_ctx = c; /* freed by pc_stream_fini() whatever happens */
	if (c)
		c->s = s;
	if (err)
		return err;
	gnutls_handshake_set_timeout(c->sess, timeout_ms ? timeout_ms : 15000);
	hs_cancel = cancel;
	hs_cancelled = false;
	do {
		g = gnutls_handshake(c->sess);
	} while (g < 0 && !gnutls_error_is_fatal(g) && !hs_cancelled);
	hs_cancel = NULL;
	if (hs_cancelled) {
		if (why && whylen)
			snprintf(why, whylen, "TLS handshake on channel %u: cancelled", i);
		return -ECANCELED;
	}
	return g < 0 ? handshake_failed(c, i, g, why, whylen) : 0;
}

/*
 * After a failed handshake the server has sent its alert; closing now,
 * with the client's first records unread, would make the kernel answer
 * with a reset that can overtake the alert. So half-close and read what
 * the client still sends until it closes too (at most 500 ms).
 */
static void drain(int fd)
{
	uint8_t sink[4096];

	shutdown(fd, SHUT_WR);
	for (int i = 0; i < 50; i++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };

		if (poll(&p, 1, 10) < 0 || (p.revents && recv(fd, sink, sizeof(sink), 0) <= 0))
			break;
	}
}

int pc_tls_start(struct pc_stream *s, const struct precopy_tls *cfg, bool server,
		 const char *peer_host, unsigned timeout_ms, const atomic_bool *cancel,
		 char *why, size_t whylen)
{
	int err = settings_missing(cfg, server, why, whylen);

	if (err)
		return err;
	s->io = &tls_io;
	for (unsigned i = 0; i < s->base.nchan; i++) {
		err = chan_start(s, i, cfg, server, peer_host, timeout_ms, cancel, why, whylen);
		if (err) {
			if (server && err != -ECANCELED)
				drain(s->ch[i].fd);
			return err;
		}
	}
	return 0;
}

int pc_tls_check(const struct precopy_tls *cfg, bool server, char *why, size_t whylen)
{
	struct tls_chan *c = NULL;
	int err = settings_missing(cfg, server, why, whylen);

	if (!err)
		err = chan_new(-1, cfg, server, NULL, false, &c, why, whylen);
	chan_free(c);
	return err;
}

int pc_tls_accept_new(int fd, const struct precopy_tls *cfg, struct pc_tls_conn **out,
		      char *why, size_t whylen)
{
	struct tls_chan *c = NULL;
	int err = settings_missing(cfg, true, why, whylen);

	if (!err)
		err = chan_new(fd, cfg, true, NULL, true, &c, why, whylen);
	if (err) {
		chan_free(c);
		return err;
	}
	gnutls_handshake_set_timeout(c->sess, 0); /* the caller keeps the deadline */
	*out = (struct pc_tls_conn *)c;
	return 0;
}

int pc_tls_accept_step(struct pc_tls_conn *tc, unsigned chan, short *events, char *why,
		       size_t whylen)
{
	struct tls_chan *c = (struct tls_chan *)tc;
	int g = gnutls_handshake(c->sess);

	if (g == GNUTLS_E_SUCCESS)
		return 0;
	if (!gnutls_error_is_fatal(g)) {
		*events = gnutls_record_get_direction(c->sess) ? POLLOUT : POLLIN;
		return -EAGAIN;
	}
	return handshake_failed(c, chan, g, why, whylen);
}

void pc_tls_conn_free(struct pc_tls_conn *tc)
{
	chan_free((struct tls_chan *)tc);
}

void pc_tls_attach(struct pc_stream *s, unsigned i, struct pc_tls_conn *tc)
{
	struct tls_chan *c = (struct tls_chan *)tc;

	c->s = s;
	c->fd = s->ch[i].fd;
	c->nonblock = false;
	s->io = &tls_io;
	s->ch[i].io_ctx = c;
}

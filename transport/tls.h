/* SPDX-License-Identifier: MIT */
/*
 * tls.h - TLS 1.3 (GnuTLS) as the byte layer of a stream transport: the
 * "tls:" scheme is the TCP transport (same hello, same framing) with every
 * channel wrapped after the TCP hello.
 */
#ifndef PC_TLS_H
#define PC_TLS_H

#include <stdatomic.h>
#include <stdbool.h>

#include "stream.h"

/**
 * pc_tls_start() - handshake on every channel of @s and route its bytes
 * through TLS from then on.
 * @server:    the accepting end (destination).
 * @peer_host: client: the name the server's certificate must carry (x509).
 * @cancel:    optional; once set, the handshake stops within 50 ms.
 * Return: 0; -EINVAL for missing settings; -EACCES when authentication
 * failed (wrong key, untrusted certificate, wrong host name); -ETIMEDOUT;
 * -ECANCELED;
 * -ECONNRESET... with the reason in @why. On failure the channels' TLS
 * state is freed by pc_stream_fini() as usual.
 */
int pc_tls_start(struct pc_stream *s, const struct precopy_tls *cfg, bool server,
		 const char *peer_host, unsigned timeout_ms, const atomic_bool *cancel,
		 char *why, size_t whylen);

/**
 * pc_tls_check() - what a session of this end would load from @cfg, loaded
 * once and freed: missing settings, and credential files that are missing,
 * unreadable or not PEM, are found before anyone connects.
 * Return: 0; -EINVAL (settings missing); -ENOENT (a file cannot be read);
 * -EBADMSG (a file holds no usable PEM); with the reason in @why.
 */
int pc_tls_check(const struct precopy_tls *cfg, bool server, char *why, size_t whylen);

/*
 * The accepting end's handshake on one connection, driven step by step on
 * a non-blocking socket so a listener can wait for many connections at
 * once and none of them can hold the others up.
 */
struct pc_tls_conn;

/** pc_tls_accept_new() - a server session on non-blocking @fd (not taken
 *  over). Return: 0, or -errno with the reason in @why. */
int pc_tls_accept_new(int fd, const struct precopy_tls *cfg, struct pc_tls_conn **out,
		      char *why, size_t whylen);
/**
 * pc_tls_accept_step() - go on with the handshake as far as the socket
 * allows. Return: 0 when it is complete; -EAGAIN: call again once @fd is
 * ready for *@events (POLLIN or POLLOUT); another -errno (-EACCES for an
 * authentication failure) when it failed, with the reason in @why; the
 * peer has been sent an alert where that helps.
 */
int pc_tls_accept_step(struct pc_tls_conn *c, unsigned chan, short *events, char *why,
		       size_t whylen);
/** pc_tls_conn_free() - free a session that was not attached. */
void pc_tls_conn_free(struct pc_tls_conn *c);
/**
 * pc_tls_attach() - channel @i of @s (whose fd is the connection's, now
 * blocking) carries its bytes through the completed session @c from now
 * on; @s owns it (pc_stream_fini() frees it). Every channel of a TLS
 * stream must be attached.
 */
void pc_tls_attach(struct pc_stream *s, unsigned i, struct pc_tls_conn *c);

#endif

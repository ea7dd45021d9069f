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

#endif

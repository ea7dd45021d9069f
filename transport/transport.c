/* SPDX-License-Identifier: MIT */
/*
 * transport.c - the table of built-in transports and the -EOPNOTSUPP ops
 * that stand in for whatever a transport does not implement.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "transport.h"

static int no_listen(const char *a, const struct pc_transport_opts *o, struct pc_listener **l)
{
	(void)a, (void)o, (void)l;
	return -EOPNOTSUPP;
}
static int no_listener_addr(struct pc_listener *l, char *b, size_t n)
{
	(void)l, (void)b, (void)n;
	return -EOPNOTSUPP;
}
static int no_accept(struct pc_listener *l, const struct pc_transport_opts *o,
		     struct pc_transport **t)
{
	(void)l, (void)o, (void)t;
	return -EOPNOTSUPP;
}
static int no_listener_abort(struct pc_listener *l)
{
	(void)l;
	return -EOPNOTSUPP;
}
static void no_listener_close(struct pc_listener *l)
{
	(void)l;
}
static int no_connect(const char *a, const struct pc_transport_opts *o, struct pc_transport **t)
{
	(void)a, (void)o, (void)t;
	return -EOPNOTSUPP;
}
static int no_abort(struct pc_transport *t)
{
	(void)t;
	return -EOPNOTSUPP;
}
static void no_close(struct pc_transport *t)
{
	(void)t;
}
static int no_expose_region(struct pc_transport *t, uint32_t id, void *a, size_t n)
{
	(void)t, (void)id, (void)a, (void)n;
	return -EOPNOTSUPP;
}
static int no_unexpose_all(struct pc_transport *t)
{
	(void)t;
	return -EOPNOTSUPP;
}
static int no_reg_local(struct pc_transport *t, const void *a, size_t n)
{
	(void)t, (void)a, (void)n;
	return -EOPNOTSUPP;
}
static int no_reg_stats(struct pc_transport *t, struct pc_tp_reg_stats *out)
{
	(void)t, (void)out;
	return -EOPNOTSUPP;
}
static int no_link_stats(struct pc_transport *t, unsigned c, struct pc_tp_link_stats *out)
{
	(void)t, (void)c, (void)out;
	return -EOPNOTSUPP;
}
static int no_set_pacing(struct pc_transport *t, unsigned c, uint64_t bps)
{
	(void)t, (void)c, (void)bps;
	return -EOPNOTSUPP;
}
static int no_send_msg(struct pc_transport *t, unsigned c, const struct iovec *v, int n)
{
	(void)t, (void)c, (void)v, (void)n;
	return -EOPNOTSUPP;
}
static int no_recv_msg(struct pc_transport *t, unsigned c, void *b, size_t cap, size_t *n)
{
	(void)t, (void)c, (void)b, (void)cap, (void)n;
	return -EOPNOTSUPP;
}
static int no_write_pages(struct pc_transport *t, unsigned c, const struct pc_page_run *r,
			  unsigned n)
{
	(void)t, (void)c, (void)r, (void)n;
	return -EOPNOTSUPP;
}

static int no_expose_region_fd(struct pc_transport *t, uint32_t id, void *a, size_t n, int fd,
			       uint64_t off)
{
	(void)t, (void)id, (void)a, (void)n, (void)fd, (void)off;
	return -EOPNOTSUPP;
}
static int no_send_fds(struct pc_transport *t, unsigned c, const int *fds, unsigned nfds,
		       const struct iovec *v, int n)
{
	(void)t, (void)c, (void)fds, (void)nfds, (void)v, (void)n;
	return -EOPNOTSUPP;
}
static int no_recv_fds(struct pc_transport *t, unsigned c, void *b, size_t cap, size_t *n,
		       int *fds, unsigned maxfds, unsigned *nfds)
{
	(void)t, (void)c, (void)b, (void)cap, (void)n, (void)fds, (void)maxfds, (void)nfds;
	return -EOPNOTSUPP;
}

static const struct pc_transport_ops no_ops = {
	.listen = no_listen,
	.listener_addr = no_listener_addr,
	.accept = no_accept,
	.listener_abort = no_listener_abort,
	.listener_close = no_listener_close,
	.connect = no_connect,
	.abort = no_abort,
	.close = no_close,
	.expose_region = no_expose_region,
	.unexpose_all = no_unexpose_all,
	.reg_local = no_reg_local,
	.reg_stats = no_reg_stats,
	.link_stats = no_link_stats,
	.set_pacing = no_set_pacing,
	.send_msg = no_send_msg,
	.recv_msg = no_recv_msg,
	.write_pages = no_write_pages,
	.expose_region_fd = no_expose_region_fd,
	.send_fds = no_send_fds,
	.recv_fds = no_recv_fds,
};

static const struct pc_transport_ops *const builtin[] = {
	&pc_tcp_ops,
	&pc_shm_ops,
#if PRECOPY_HAVE_RDMA
	&pc_rdma_ops,
#endif
#if PRECOPY_HAVE_TLS
	&pc_tls_ops,
#endif
};

#define NBUILTIN (sizeof(builtin) / sizeof(builtin[0]))

/* Merged tables: each transport's ops over no_ops, built once (the tables
 * are read by every thread that holds a connection, so they must not be
 * rewritten on each lookup), read-only afterwards; with them the lists of
 * schemes and URI syntaxes. */
static struct pc_transport_ops merged[NBUILTIN];
static char schemes[NBUILTIN * 16], syntaxes[NBUILTIN * 32];
static pthread_once_t merged_once = PTHREAD_ONCE_INIT;

#define MERGE(dst, src, op) ((dst)->op = (src)->op ? (src)->op : no_ops.op)

void pc_transport_merge(struct pc_transport_ops *m, const struct pc_transport_ops *src)
{
	m->scheme = src->scheme;
	m->syntax = src->syntax;
	m->caps = src->caps;
	MERGE(m, src, listen);
	MERGE(m, src, listener_addr);
	MERGE(m, src, accept);
	MERGE(m, src, listener_abort);
	MERGE(m, src, listener_close);
	MERGE(m, src, connect);
	MERGE(m, src, abort);
	MERGE(m, src, close);
	MERGE(m, src, expose_region);
	MERGE(m, src, unexpose_all);
	MERGE(m, src, reg_local);
	MERGE(m, src, reg_stats);
	MERGE(m, src, link_stats);
	MERGE(m, src, set_pacing);
	MERGE(m, src, send_msg);
	MERGE(m, src, recv_msg);
	MERGE(m, src, write_pages);
	MERGE(m, src, expose_region_fd);
	MERGE(m, src, send_fds);
	MERGE(m, src, recv_fds);
}

/* Append ", @s" (or @s first) to @buf of @len bytes, truncating. */
static void add_item(char *buf, size_t len, const char *s)
{
	size_t n = strlen(buf);

	if (s)
		snprintf(buf + n, len - n, "%s%s", n ? ", " : "", s);
}

static void merge_all(void)
{
	for (size_t i = 0; i < NBUILTIN; i++) {
		pc_transport_merge(&merged[i], builtin[i]);
		add_item(schemes, sizeof(schemes), builtin[i]->scheme);
		add_item(syntaxes, sizeof(syntaxes), builtin[i]->syntax);
	}
}

const struct pc_transport_ops *pc_transport_find(const char *scheme)
{
	if (!scheme)
		return NULL;
	pthread_once(&merged_once, merge_all);
	for (size_t i = 0; i < NBUILTIN; i++)
		if (strcmp(merged[i].scheme, scheme) == 0)
			return &merged[i];
	return NULL;
}

int pc_transport_split_uri(const char *uri, const struct pc_transport_ops **ops,
			   const char **rest)
{
	char scheme[16];
	const char *colon;
	size_t n;

	if (!uri || !ops || !rest)
		return -EINVAL;
	colon = strchr(uri, ':');
	if (!colon || colon == uri || !colon[1])
		return -EINVAL;
	n = (size_t)(colon - uri);
	if (n >= sizeof(scheme))
		return -EPROTONOSUPPORT;
	memcpy(scheme, uri, n);
	scheme[n] = '\0';
	*ops = pc_transport_find(scheme);
	if (!*ops)
		return -EPROTONOSUPPORT;
	*rest = colon + 1;
	return 0;
}

const char *pc_transport_schemes(void)
{
	pthread_once(&merged_once, merge_all);
	return schemes;
}

const char *pc_transport_syntaxes(void)
{
	pthread_once(&merged_once, merge_all);
	return syntaxes;
}

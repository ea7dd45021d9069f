/* SPDX-License-Identifier: MIT */
/*
 * The transport conformance group: the same cases for every transport.
 * Usage: test_transport SCHEME [ADDRESS]   (ADDRESS defaults per scheme;
 * PRECOPY_TEST_ADDR overrides it). Exits 77 if the transport is not built.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "precopy.h"
#include "transport.h"

static const struct pc_transport_ops *ops;
static char listen_addr[256];
/* "tls": both ends authenticate with this pre-shared key (NULL otherwise) */
static const struct precopy_tls *tls;
static const uint8_t tls_key[32] = "conformance-suite-psk-0123456789";
static const struct precopy_tls tls_psk = { .psk_identity = "conformance", .psk = tls_key,
					    .psk_len = sizeof(tls_key) };

struct pair {
	struct pc_listener *l;
	struct pc_transport *a; /* connector */
	struct pc_transport *b; /* acceptor */
	char addr[256];
	unsigned nchan;
	int cerr;
};

static void *connector(void *arg)
{
	struct pair *p = arg;
	struct pc_transport_opts o = { .channels = p->nchan, .tls = tls };

	p->cerr = ops->connect(p->addr, &o, &p->a);
	return NULL;
}

static void pair_open(struct pair *p, unsigned nchan)
{
	struct pc_transport_opts o = { .tls = tls };
	pthread_t t;
	char uri[300];

	memset(p, 0, sizeof(*p));
	p->nchan = nchan;
	assert_int_equal(ops->listen(listen_addr, &o, &p->l), 0);
	assert_int_equal(ops->listener_addr(p->l, uri, sizeof(uri)), 0);
	snprintf(p->addr, sizeof(p->addr), "%s", strchr(uri, ':') + 1);
	assert_int_equal(pthread_create(&t, NULL, connector, p), 0);
	assert_int_equal(ops->accept(p->l, &o, &p->b), 0);
	pthread_join(t, NULL);
	assert_int_equal(p->cerr, 0);
	assert_int_equal(p->a->nchan, nchan);
	assert_int_equal(p->b->nchan, nchan);
}

static void pair_close(struct pair *p)
{
	pc_tp_close(p->a);
	pc_tp_close(p->b);
	ops->listener_close(p->l);
}

/* A pair of @nchan channels where @src, registered at a, can be written
 * into @dst, exposed at b as region @region; both are @rlen bytes. */
static void pair_open_region(struct pair *p, unsigned nchan, unsigned region, void *src,
			     void *dst, size_t rlen)
{
	pair_open(p, nchan);
	assert_int_equal(p->b->ops->expose_region(p->b, region, dst, rlen), 0);
	assert_int_equal(p->a->ops->reg_local(p->a, src, rlen), 0);
}

/* 1 MiB of pages filled with @fill, and a pair of @nchan channels with the
 * peer's region 3 exposed for it (empty): the one-run tests' set-up. */
struct mib {
	struct pair p;
	uint8_t *src, *dst;
	size_t len;
	struct pc_page_run run;
};

static void mib_open(struct mib *m, uint8_t fill)
{
	m->len = 1 << 20;
	m->src = malloc(m->len);
	m->dst = calloc(1, m->len);
	assert_non_null(m->src);
	assert_non_null(m->dst);
	memset(m->src, fill, m->len);
	m->run = (struct pc_page_run){ m->src, 3, 0, m->len };
	pair_open_region(&m->p, 2, 3, m->src, m->dst, m->len);
}

static void mib_close(struct mib *m)
{
	pair_close(&m->p);
	free(m->src);
	free(m->dst);
}

/* Write the @n @runs on channel @chan of @p and a message behind them,
 * and read that message at b: the runs must have landed by then. */
static void write_then_marker(struct pair *p, unsigned chan, const struct pc_page_run *runs,
			      unsigned n)
{
	uint8_t msg[8] = "marker";
	struct iovec v = { msg, sizeof(msg) };
	size_t len;

	assert_int_equal(pc_tp_write_pages(p->a, chan, runs, n), 0);
	assert_int_equal(pc_tp_send_msg(p->a, chan, &v, 1), 0);
	assert_int_equal(pc_tp_recv_msg(p->b, chan, msg, sizeof(msg), &len), 0);
}

static void connect_accept__channels(void **state)
{
	struct pair p;

	(void)state;
	for (unsigned n = 1; n <= 4; n += 3) {
		pair_open(&p, n);
		pair_close(&p);
	}
}

static void send_recv__in_order_per_channel(void **state)
{
	static uint8_t out[65536], in[65536];
	struct pair p;

	(void)state;
	pair_open(&p, 3);
	for (unsigned i = 0; i < sizeof(out); i++)
		out[i] = (uint8_t)(i * 13);
	for (unsigned chan = 0; chan < 3; chan++) {
		for (unsigned i = 1; i <= 40; i++) {
			struct iovec v[2] = { { out, i }, { out + i, i * 1000 } };

			assert_int_equal(pc_tp_send_msg(p.a, chan, v, 2), 0);
		}
		for (unsigned i = 1; i <= 40; i++) {
			size_t len = 0;

			assert_int_equal(pc_tp_recv_msg(p.b, chan, in, sizeof(in), &len), 0);
			assert_int_equal(len, i + i * 1000);
			assert_memory_equal(in, out, len);
		}
	}
	/* and the other way */
	{
		struct iovec v = { out, 5 };
		size_t len;

		assert_int_equal(pc_tp_send_msg(p.b, 0, &v, 1), 0);
		assert_int_equal(pc_tp_recv_msg(p.a, 0, in, sizeof(in), &len), 0);
		assert_int_equal(len, 5);
	}
	pair_close(&p);
}

static void write_pages__in_place_before_next_message(void **state)
{
	size_t rlen = 1 << 20;
	uint8_t *src = malloc(rlen), *dst = calloc(1, rlen);
	struct pc_page_run runs[3];
	struct pair p;

	(void)state;
	for (size_t i = 0; i < rlen; i++)
		src[i] = (uint8_t)(i * 7 + 1);
	pair_open_region(&p, 2, 3, src, dst, rlen);
	runs[0] = (struct pc_page_run){ src, 3, 0, 4096 };
	runs[1] = (struct pc_page_run){ src + 8192, 3, 8192, 3 * 4096 };
	runs[2] = (struct pc_page_run){ src + rlen - 4096, 3, rlen - 4096, 4096 };
	write_then_marker(&p, 1, runs, 3);
	assert_memory_equal(dst, src, 4096);
	assert_memory_equal(dst + 8192, src + 8192, 3 * 4096);
	assert_memory_equal(dst + rlen - 4096, src + rlen - 4096, 4096);
	for (size_t i = 4096; i < 8192; i++)
		assert_int_equal(dst[i], 0); /* untouched between runs */
	pair_close(&p);
	free(src);
	free(dst);
}

/*
 * One write_pages call of runs of every size: one that spans many
 * buffers' worth of bytes (tcp copies page data through a 64 KiB buffer,
 * so a run goes in pieces), more runs than one system call takes (256),
 * and a big run after them. Every byte lands where its run says, and
 * nothing between the runs is written.
 */
static void write_pages__runs_of_every_size(void **state)
{
	const size_t pg = 4096, rlen = 4u << 20;
	uint8_t *src = malloc(rlen), *dst = calloc(1, rlen);
	struct pc_page_run runs[302];
	unsigned n = 0;
	struct pair p;

	(void)state;
	for (size_t i = 0; i < rlen; i++)
		src[i] = (uint8_t)(i * 31 + (i >> 12) + 5);
	pair_open_region(&p, 1, 0, src, dst, rlen);
	runs[n++] = (struct pc_page_run){ src + pg, 0, pg, 75 * pg }; /* pages 1..75 */
	for (unsigned i = 0; i < 300; i++) /* pages 100, 102, ..., 698 */
		runs[n++] = (struct pc_page_run){ src + (100 + 2 * i) * pg, 0,
						  (100 + 2 * i) * pg, pg };
	runs[n++] = (struct pc_page_run){ src + 800 * pg, 0, 800 * pg, 200 * pg };
	write_then_marker(&p, 0, runs, n);
	for (size_t page = 0; page < rlen / pg; page++) {
		bool sent = (page >= 1 && page <= 75) ||
			    (page >= 100 && page <= 698 && page % 2 == 0) ||
			    (page >= 800 && page < 1000);

		if (sent) {
			assert_memory_equal(dst + page * pg, src + page * pg, pg);
		} else {
			for (size_t i = 0; i < pg; i++)
				assert_int_equal(dst[page * pg + i], 0);
		}
	}
	pair_close(&p);
	free(src);
	free(dst);
}

/*
 * link_stats: the transport's own figures for the bandwidth estimate.
 * tcp: the kernel's TCP_INFO (bytes acknowledged, busy time); rdma: the
 * completions of its work requests (bytes completed, time outstanding); shm: the
 * copies into the peer's memory (write_pages__shared_region's kind). After
 * 1 MiB of pages on channel 1 and an answer that proves they arrived, a
 * tcp channel reports at least that much delivered; -EINVAL for a channel
 * the connection does not have.
 */
static void link_stats__count_what_left(void **state)
{
	struct pc_tp_link_stats ls;
	struct mib m;
	uint8_t msg[8] = "marker";
	struct iovec v = { msg, sizeof(msg) };
	size_t len;

	(void)state;
	mib_open(&m, 0x5a);
	if (m.p.a->ops->link_stats(m.p.a, 1, &ls) == -EOPNOTSUPP) {
		printf("# %s: no link figures (send time is used)\n", ops->scheme);
		assert_string_not_equal(ops->scheme, "rdma"); /* completions since 0.3 */
		mib_close(&m);
		return;
	}
	write_then_marker(&m.p, 1, &m.run, 1);
	/* the answer: once it is here, what went before was acknowledged */
	assert_int_equal(pc_tp_send_msg(m.p.b, 1, &v, 1), 0);
	assert_int_equal(pc_tp_recv_msg(m.p.a, 1, msg, sizeof(msg), &len), 0);
	assert_int_equal(pc_tp_link_stats(m.p.a, 1, &ls), 0);
	printf("# %s: delivered %llu, busy %llu us, queued %llu, rtt %llu ns\n", ops->scheme,
	       (unsigned long long)ls.delivered, (unsigned long long)ls.busy_ns / 1000,
	       (unsigned long long)ls.queued, (unsigned long long)ls.rtt_ns);
	assert_true(ls.source != PC_TP_LINK_NONE);
	/* shm counts the bytes it moved, copied or framed into the socket;
	 * tcp what the kernel saw acknowledged (busy: jiffies may round it
	 * to 0) */
	if (ls.source == PC_TP_LINK_COPY)
		assert_int_equal(ls.delivered, m.len);
	else
		assert_true(ls.delivered >= m.len);
	/* rdma: the bytes of completed WRs, and the time WRs were outstanding
	 * (rxe takes far more than a ns for 1 MiB) */
	if (ls.source == PC_TP_LINK_COMPLETIONS)
		assert_true(ls.busy_ns > 0);
	assert_int_equal(pc_tp_link_stats(m.p.a, PRECOPY_MAX_CHANNELS, &ls), -EINVAL);
	mib_close(&m);
}

/*
 * set_pacing: a channel held to a rate (the final burst's) still carries
 * pages and messages, and the limit can be lifted. tcp and tls pace (the
 * kernel's SO_MAX_PACING_RATE); the others answer -EOPNOTSUPP. A transport
 * that paces refuses a channel the connection does not have.
 */
static void set_pacing__paced_channel_still_delivers(void **state)
{
	struct mib m;
	int err;

	(void)state;
	mib_open(&m, 0xa5);
	err = pc_tp_set_pacing(m.p.a, 1, 256u << 20);
	printf("# %s: set_pacing %d\n", ops->scheme, err);
	if (!strcmp(ops->scheme, "tcp") || !strcmp(ops->scheme, "tls"))
		assert_int_equal(err, 0);
	if (err == -EOPNOTSUPP) {
		assert_int_equal(pc_tp_set_pacing(m.p.a, 0, 0), -EOPNOTSUPP);
	} else {
		assert_int_equal(err, 0);
		assert_int_equal(pc_tp_set_pacing(m.p.a, PRECOPY_MAX_CHANNELS, 1 << 20), -EINVAL);
	}
	write_then_marker(&m.p, 1, &m.run, 1);
	assert_memory_equal(m.dst, m.src, m.len);
	if (!err)
		assert_int_equal(pc_tp_set_pacing(m.p.a, 1, 0), 0);
	mib_close(&m);
}

/* A connected loopback TCP pair: @fd[0] the connecting end. */
static void tcp_loopback_pair(int fd[2])
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(l >= 0);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&a, &alen), 0);
	fd[0] = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd[0] >= 0);
	assert_int_equal(connect(fd[0], (struct sockaddr *)&a, sizeof(a)), 0);
	fd[1] = accept(l, NULL, NULL);
	assert_true(fd[1] >= 0);
	close(l);
}

/*
 * tcp's set_pacing is the socket's SO_MAX_PACING_RATE, in bytes/s, and 0
 * is no limit (~0U); the socket itself says so.
 */
static void set_pacing__tcp_socket_rate(void **state)
{
	struct pc_transport *t;
	unsigned v = 0;
	socklen_t vlen = sizeof(v);
	int fd[2];

	(void)state;
	if (strcmp(ops->scheme, "tcp"))
		skip();
	tcp_loopback_pair(fd);
	assert_int_equal(pc_tcp_from_fds(fd, 1, &t), 0);
	assert_int_equal(pc_tp_set_pacing(t, 0, 3000000), 0);
	assert_int_equal(getsockopt(fd[0], SOL_SOCKET, SO_MAX_PACING_RATE, &v, &vlen), 0);
	assert_int_equal(v, 3000000);
	assert_int_equal(pc_tp_set_pacing(t, 0, 0), 0);
	assert_int_equal(getsockopt(fd[0], SOL_SOCKET, SO_MAX_PACING_RATE, &v, &vlen), 0);
	assert_int_equal(v, ~0U);
	assert_int_equal(pc_tp_set_pacing(t, 1, 1000), -EINVAL);
	pc_tp_close(t);
	close(fd[1]);
}

/*
 * Write @run on channel 0 of @p, then a message behind it; the run must be
 * refused at one end or the other: the write fails, or the receiver's next
 * read does (with -EPROTO when @proto).
 */
static void expect_run_refused(struct pair *p, const struct pc_page_run *run, bool proto)
{
	uint8_t msg[8] = { 0 };
	struct iovec v = { msg, 4 };
	size_t len;
	int we, re;

	we = pc_tp_write_pages(p->a, 0, run, 1);
	if (!we)
		we = pc_tp_send_msg(p->a, 0, &v, 1);
	re = pc_tp_recv_msg(p->b, 0, msg, sizeof(msg), &len);
	if (proto)
		assert_true(we < 0 || re == -EPROTO);
	else
		assert_true(we < 0 || re < 0);
}

/* A run outside the exposed region fails at one end or the other, and
 * nothing around the region is written. */
static void write_pages__outside_region_refused(void **state)
{
	size_t rlen = 64 * 1024;
	uint8_t *src = malloc(2 * rlen), *area = malloc(3 * rlen);
	struct pair p;

	(void)state;
	memset(src, 0xab, 2 * rlen);
	memset(area, 0x11, 3 * rlen);
	pair_open(&p, 1);
	assert_int_equal(p.b->ops->expose_region(p.b, 0, area + rlen, rlen), 0);
	p.a->ops->reg_local(p.a, src, 2 * rlen);
	expect_run_refused(&p, &(struct pc_page_run){ src, 0, rlen - 4096, 8192 }, true);
	for (size_t i = 2 * rlen; i < 3 * rlen; i++)
		assert_int_equal(area[i], 0x11);
	for (size_t i = 0; i < rlen; i++)
		assert_int_equal(area[i], 0x11);
	pair_close(&p);
	free(src);
	free(area);
}

static void write_pages__unexposed_region_refused(void **state)
{
	uint8_t src[4096] = { 1 };
	struct pc_page_run run = { src, 5, 0, 4096 };
	struct pair p;

	(void)state;
	pair_open(&p, 1);
	p.a->ops->reg_local(p.a, src, sizeof(src));
	expect_run_refused(&p, &run, true);
	pair_close(&p);
}

/* Once the receiving side has revoked its regions (the engine does it at
 * COMPLETE, while other channels may still be read), a run fails at one
 * end or the other and no byte of it lands. */
static void write_pages__refused_after_unexpose(void **state)
{
	size_t rlen = 64 * 1024;
	uint8_t *src = malloc(rlen), *dst = calloc(1, rlen), msg[8];
	struct iovec v = { msg, 4 };
	struct pc_page_run run = { src, 0, 0, 4096 };
	struct pair p;
	size_t len;

	(void)state;
	assert_true(src && dst);
	memset(src, 0xab, rlen);
	pair_open(&p, 1);
	assert_int_equal(p.b->ops->expose_region(p.b, 0, dst, rlen), 0);
	p.a->ops->reg_local(p.a, src, rlen);
	assert_int_equal(pc_tp_write_pages(p.a, 0, &run, 1), 0);
	assert_int_equal(pc_tp_send_msg(p.a, 0, &v, 1), 0);
	assert_int_equal(pc_tp_recv_msg(p.b, 0, msg, sizeof(msg), &len), 0);
	assert_int_equal(dst[0], 0xab);
	assert_int_equal(p.b->ops->unexpose_all(p.b), 0);
	run.offset = 8192;
	expect_run_refused(&p, &run, false);
	for (size_t i = 8192; i < 8192 + 4096; i++)
		assert_int_equal(dst[i], 0);
	pair_close(&p);
	free(src);
	free(dst);
}

/* A region exposed with its memfd (what the engine does for memfd RAM):
 * pages are in place before the next message, and a run past its end is
 * refused without a byte written around it. Transports that do not share
 * memory with the peer (shm no longer does: the source must hold nothing
 * of the destination's RAM) take the plain expose_region path, as the
 * engine does. */
static void write_pages__shared_region(void **state)
{
	size_t rlen = 1 << 20;
	uint8_t *src = malloc(rlen), *dst;
	int fd = memfd_create("test-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	struct pc_page_run runs[2];
	struct pair p;
	uint8_t msg[8] = "marker";
	struct iovec v = { msg, sizeof(msg) };
	size_t len;
	int err, we, re;

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)rlen), 0);
	dst = mmap(NULL, rlen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(dst != MAP_FAILED);
	for (size_t i = 0; i < rlen; i++)
		src[i] = (uint8_t)(i * 5 + 3);
	pair_open(&p, 2);
	err = p.b->ops->expose_region_fd(p.b, 1, dst, rlen, fd, 0);
	if (err == -EOPNOTSUPP)
		err = p.b->ops->expose_region(p.b, 1, dst, rlen);
	assert_int_equal(err, 0);
	/* the engine's order: the destination answers after exposing */
	assert_int_equal(pc_tp_send_msg(p.b, 0, &v, 1), 0);
	assert_int_equal(pc_tp_recv_msg(p.a, 0, msg, sizeof(msg), &len), 0);
	assert_int_equal(p.a->ops->reg_local(p.a, src, rlen), 0);
	runs[0] = (struct pc_page_run){ src, 1, 0, 8192 };
	runs[1] = (struct pc_page_run){ src + rlen - 4096, 1, rlen - 4096, 4096 };
	write_then_marker(&p, 1, runs, 2);
	assert_memory_equal(dst, src, 8192);
	assert_memory_equal(dst + rlen - 4096, src + rlen - 4096, 4096);
	for (size_t i = 8192; i < rlen - 4096; i++)
		assert_int_equal(dst[i], 0);
	if (!strcmp(ops->scheme, "shm")) {
		struct pc_tp_link_stats ls;

		/* link_stats counts the copies, the bandwidth estimate's figures */
		assert_int_equal(pc_tp_link_stats(p.a, 1, &ls), 0);
		assert_int_equal(ls.source, PC_TP_LINK_COPY);
		assert_int_equal(ls.delivered, 3 * 4096);
		assert_true(ls.busy_ns > 0);
	}
	/* past the end: refused at one end or the other */
	runs[0] = (struct pc_page_run){ src, 1, rlen - 4096, 8192 };
	we = pc_tp_write_pages(p.a, 0, runs, 1);
	if (!we)
		we = pc_tp_send_msg(p.a, 0, &v, 1);
	re = we ? 0 : pc_tp_recv_msg(p.b, 0, msg, sizeof(msg), &len);
	assert_true(we < 0 || re == -EPROTO);
	for (size_t i = 8192; i < rlen - 4096; i++)
		assert_int_equal(dst[i], 0);
	pair_close(&p);
	munmap(dst, rlen);
	close(fd);
	free(src);
}

/* fds handed over with a message arrive with it, in order. */
static void send_fds__arrive_with_message(void **state)
{
	int fd = memfd_create("test-fd", MFD_CLOEXEC), got[4] = { -1, -1, -1, -1 };
	uint8_t out[16] = "with-fd", in[16];
	struct iovec v = { out, sizeof(out) };
	struct pair p;
	unsigned nfds = 9;
	size_t len;
	struct stat a, b;

	(void)state;
	if (!(ops->caps & PC_TCAP_FD_PASS))
		skip();
	assert_true(fd >= 0);
	pair_open(&p, 1);
	assert_int_equal(pc_tp_send_msg(p.a, 0, &v, 1), 0);
	assert_int_equal(pc_tp_send_fds(p.a, 0, &fd, 1, &v, 1), 0);
	/* a plain message first: no fds */
	assert_int_equal(pc_tp_recv_fds(p.b, 0, in, sizeof(in), &len, got, 4, &nfds), 0);
	assert_int_equal(nfds, 0);
	assert_int_equal(pc_tp_recv_fds(p.b, 0, in, sizeof(in), &len, got, 4, &nfds), 0);
	assert_int_equal(nfds, 1);
	assert_int_equal(len, sizeof(out));
	assert_int_equal(fstat(fd, &a), 0);
	assert_int_equal(fstat(got[0], &b), 0);
	assert_true(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
	close(got[0]);
	/* a message with fds where none are expected is refused */
	assert_int_equal(pc_tp_send_fds(p.a, 0, &fd, 1, &v, 1), 0);
	assert_int_equal(pc_tp_recv_msg(p.b, 0, in, sizeof(in), &len), -EPROTO);
	pair_close(&p);
	close(fd);
}

static void recv_msg__longer_than_buffer(void **state)
{
	uint8_t out[1000] = { 0 }, in[100];
	struct iovec v = { out, sizeof(out) };
	struct pair p;
	size_t len;

	(void)state;
	pair_open(&p, 1);
	assert_int_equal(pc_tp_send_msg(p.a, 0, &v, 1), 0);
	assert_int_equal(pc_tp_recv_msg(p.b, 0, in, sizeof(in), &len), -EMSGSIZE);
	/* sticky: the channel stays failed */
	assert_true(pc_tp_recv_msg(p.b, 0, in, sizeof(in), &len) < 0);
	pair_close(&p);
}

struct blocked {
	struct pc_transport *t;
	int err;
};

static void *block_in_recv(void *arg)
{
	struct blocked *b = arg;
	uint8_t buf[64];
	size_t len;

	b->err = pc_tp_recv_msg(b->t, 0, buf, sizeof(buf), &len);
	return NULL;
}

static void abort__wakes_blocked_recv(void **state)
{
	struct pair p;
	struct blocked b;
	pthread_t t;

	(void)state;
	pair_open(&p, 2);
	b.t = p.b;
	b.err = 1;
	assert_int_equal(pthread_create(&t, NULL, block_in_recv, &b), 0);
	usleep(100 * 1000);
	assert_int_equal(pc_tp_abort(p.b), 0);
	pthread_join(t, NULL);
	assert_int_equal(b.err, -ECANCELED);
	/* later calls fail too */
	{
		uint8_t x = 0;
		struct iovec v = { &x, 1 };

		assert_int_equal(pc_tp_send_msg(p.b, 1, &v, 1), -ECANCELED);
	}
	pair_close(&p);
}

static void peer_gone__recv_fails(void **state)
{
	struct pair p;
	uint8_t buf[64];
	size_t len;

	(void)state;
	pair_open(&p, 1);
	pc_tp_close(p.a);
	p.a = NULL;
	assert_true(pc_tp_recv_msg(p.b, 0, buf, sizeof(buf), &len) < 0);
	pair_close(&p);
}

static void *abort_listener_later(void *arg)
{
	usleep(100 * 1000);
	ops->listener_abort(arg);
	return NULL;
}

static void listener_abort__wakes_accept(void **state)
{
	struct pc_transport_opts o = { .tls = tls };
	struct pc_listener *l;
	struct pc_transport *t = NULL;
	pthread_t th;

	(void)state;
	assert_int_equal(ops->listen(listen_addr, &o, &l), 0);
	assert_int_equal(pthread_create(&th, NULL, abort_listener_later, l), 0);
	assert_int_equal(ops->accept(l, &o, &t), -ECANCELED);
	pthread_join(th, NULL);
	assert_null(t);
	ops->listener_close(l);
}

static void connect__nobody_listening(void **state)
{
	struct pc_transport_opts o = { .channels = 1, .tls = tls };
	struct pc_listener *l;
	struct pc_transport *t = NULL;
	char uri[300], addr[300];

	(void)state;
	/* bind, learn the address, close: now nobody listens there */
	assert_int_equal(ops->listen(listen_addr, &o, &l), 0);
	assert_int_equal(ops->listener_addr(l, uri, sizeof(uri)), 0);
	snprintf(addr, sizeof(addr), "%s", strchr(uri, ':') + 1);
	ops->listener_close(l);
	assert_true(ops->connect(addr, &o, &t) < 0);
	assert_null(t);
}

static void uri__malformed(void **state)
{
	const struct pc_transport_ops *o;
	const char *rest;

	(void)state;
	assert_int_equal(pc_transport_split_uri("nocolon", &o, &rest), -EINVAL);
	assert_int_equal(pc_transport_split_uri(":x", &o, &rest), -EINVAL);
	assert_int_equal(pc_transport_split_uri("tcp:", &o, &rest), -EINVAL);
	assert_int_equal(pc_transport_split_uri("carrier-pigeon:x", &o, &rest),
			 -EPROTONOSUPPORT);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(connect_accept__channels),
		cmocka_unit_test(send_recv__in_order_per_channel),
		cmocka_unit_test(write_pages__in_place_before_next_message),
		cmocka_unit_test(write_pages__runs_of_every_size),
		cmocka_unit_test(link_stats__count_what_left),
		cmocka_unit_test(set_pacing__paced_channel_still_delivers),
		cmocka_unit_test(set_pacing__tcp_socket_rate),
		cmocka_unit_test(write_pages__outside_region_refused),
		cmocka_unit_test(write_pages__unexposed_region_refused),
		cmocka_unit_test(write_pages__refused_after_unexpose),
		cmocka_unit_test(write_pages__shared_region),
		cmocka_unit_test(send_fds__arrive_with_message),
		cmocka_unit_test(recv_msg__longer_than_buffer),
		cmocka_unit_test(abort__wakes_blocked_recv),
		cmocka_unit_test(peer_gone__recv_fails),
		cmocka_unit_test(listener_abort__wakes_accept),
		cmocka_unit_test(connect__nobody_listening),
		cmocka_unit_test(uri__malformed),
	};
	const char *scheme = argc > 1 ? argv[1] : "tcp";
	const char *env = getenv("PRECOPY_TEST_ADDR");
	/* CI sets PRECOPY_REQUIRE_RDMA=1: there, RDMA that cannot run fails */
	const char *req = getenv("PRECOPY_REQUIRE_RDMA");
	int skip = !strcmp(scheme, "rdma") && req && !strcmp(req, "1") ? 1 : 77;

	ops = pc_transport_find(scheme);
	if (!ops) {
		printf("transport '%s' is not built in (built: %s): %s\n", scheme,
		       pc_transport_schemes(), skip == 77 ? "skipped" :
		       "failed (PRECOPY_REQUIRE_RDMA=1)");
		return skip;
	}
	if (argc > 2)
		snprintf(listen_addr, sizeof(listen_addr), "%s", argv[2]);
	else if (env)
		snprintf(listen_addr, sizeof(listen_addr), "%s", env);
	else if (!strcmp(scheme, "tcp") || !strcmp(scheme, "tls"))
		snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:0");
	else {
		printf("no address to test transport '%s' on: %s\n", scheme,
		       skip == 77 ? "skipped" : "failed (PRECOPY_REQUIRE_RDMA=1)");
		return skip;
	}
	if (!strcmp(scheme, "tls"))
		tls = &tls_psk;
	cmocka_set_test_filter(getenv("PRECOPY_TEST_FILTER"));
	return cmocka_run_group_tests_name(scheme, tests, NULL, NULL);
}

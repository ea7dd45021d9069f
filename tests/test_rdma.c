/* SPDX-License-Identifier: MIT */
/*
 * RDMA-specific cases, run on a real or Soft-RoCE device:
 *   test_rdma ADDR     (an IPv4 address on the RDMA device's netdev;
 *                       PRECOPY_RDMA_ADDR if not given)
 * Whole migrations with the verification pattern over 1 and 2 queue pairs
 * (on-demand and pin-all registration, chosen with precopy_set_registration()
 * or overridden by PRECOPY_RDMA_PIN_ALL, and what each end registered), a
 * wrong key refused at connect, a
 * stale rkey refused once the destination revoked its regions, page runs
 * written from guest memory without a bounce buffer, and a
 * destination killed mid-migration failing the source cleanly with its
 * guest running and intact.
 *
 * Hostile peers (docs/SECURITY.md): a peer of raw verbs and rdma_cm that
 * holds the key, asks for RDMA READ resources and learns a destination
 * region's rkey tries to read it and to write outside it; the queue pairs
 * are checked to allow remote writes only. A queue pair of the test's own
 * in the connection's protection domain (struct pc_rdma_verbs) separates
 * what a key alone gives from what the queue pairs allow: a region key
 * reads nothing, a source memory key neither reads nor writes, and after
 * a migration ends - verified, refused at verification, or broken off -
 * the region keys write nothing, already when the guest is resumed and
 * before precopy_incoming() returns. A source killed mid-migration makes
 * the destination fail. Each fault leaves no descriptor and no pinned
 * memory behind, and a migration to a fresh destination then succeeds.
 *
 * Exits 77 when RDMA is not built or no address (1 with
 * PRECOPY_REQUIRE_RDMA=1, as in CI).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <infiniband/verbs.h>
#include <nettle/hmac.h>
#include <rdma/rdma_cma.h>

#include "config.h"
#include "harness.h"
#include "le.h"
#include "rdma.h"
#include "session.h"
#include "transport.h"
#include "wire.h"

#define MiB (1ull << 20)

static char addr[128];         /* "10.77.0.1" */
static char listen_uri[160];   /* "rdma:10.77.0.1:0" */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct pc_guest *make_guest(size_t ram, double rate)
{
	struct pc_guest_opts o = { .ram = ram, .dirty_rate = rate,
				   .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
				   .zero_pct = 10, .seed = 99 };
	struct pc_guest *g;

	assert_int_equal(pc_guest_new(&o, &g), 0);
	assert_int_equal(pc_guest_start(g), 0);
	return g;
}

/* One migration of 48 MiB; @pin_all: the registration asked for with
 * precopy_set_registration(); @want_pin_all: what should happen (the
 * environment may override). */
static void run_migration(unsigned channels, const char *key, bool pin_all, bool want_pin_all)
{
	size_t ram = 48 * MiB;
	struct pc_tp_reg_stats sreg, dreg;
	struct pc_guest *g = make_guest(ram, 1.0 * MiB);
	struct precopy_params p;
	struct precopy_stats st;
	struct h_dest d;
	struct h_src s;
	char why[256];
	size_t len;
	void *src = pc_guest_ram(g, &len);
	size_t klen = key ? strlen(key) : 0;
	int err;

	precopy_params_init(&p);
	p.channels = channels;
	assert_int_equal(h_dest_start_key(&d, ram, listen_uri, false, key, klen), 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(precopy_set_auth_key(s.s, key, klen), 0);
	assert_int_equal(precopy_set_registration(s.s, pin_all ? PRECOPY_REG_PIN_ALL
								: PRECOPY_REG_ON_DEMAND), 0);
	assert_int_equal(pc_session_reg_stats(s.s, &sreg), -ENODATA); /* not run yet */
	assert_int_equal(h_src_start(&s, d.uri), 0);
	err = h_src_join(&s);
	if (err) {
		precopy_strerror(s.s, why, sizeof(why));
		print_error("source: %s\n", why);
	}
	assert_int_equal(err, 0);
	assert_int_equal(h_dest_join(&d), 0);
	assert_true(pc_guest_writes(g) > 0);
	/* stopped once for good; on a soft-dirty kernel (the 6.1 VM) the
	 * guest is also paused around each dirty sync */
	assert_true(s.stops >= 1);
	assert_int_equal(s.resumes, s.stops - 1);
	assert_int_equal(d.resumed, 1);
	assert_true(d.have_desc);
	assert_int_equal(memcmp(src, d.ram, len), 0);
	assert_int_equal(pc_guest_verify(d.ram, d.len, &d.desc, why, sizeof(why)), 0);
	precopy_query(s.s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_COMPLETED);
	assert_int_equal(precopy_set_registration(s.s, PRECOPY_REG_PIN_ALL), -EBUSY);
	/* pin-all: the one region whole; on demand: 16 MiB chunks, all of
	 * them touched by the bulk pass. The destination registers its one
	 * region whole either way. */
	assert_int_equal(pc_session_reg_stats(s.s, &sreg), 0);
	assert_int_equal(pc_session_reg_stats(d.s, &dreg), 0);
	assert_int_equal(sreg.bytes, ram);
	assert_true(want_pin_all ? sreg.count == 1 : sreg.count >= 3);
	assert_int_equal(dreg.bytes, ram);
	assert_int_equal(dreg.count, 1);
	printf("# %u QP(s): %llu ms, %llu passes, downtime %llu ms, %.1f MiB/s busy; "
	       "registration %.1f ms in %llu MRs (%s), destination %.1f ms\n", channels,
	       (unsigned long long)st.total_time, (unsigned long long)st.iteration + 1,
	       (unsigned long long)st.downtime, st.bandwidth_busy / 1048576.0, sreg.ns / 1e6,
	       (unsigned long long)sreg.count, want_pin_all ? "pin-all" : "on demand",
	       dreg.ns / 1e6);
	h_src_free(&s);
	h_dest_free(&d);
	pc_guest_delete(&g);
}

static void migrate__pattern_1_qp_with_key(void **state)
{
	(void)state;
	unsetenv("PRECOPY_RDMA_PIN_ALL");
	run_migration(1, "correct horse battery staple", false, false);
}

static void migrate__pattern_2_qps_pin_all(void **state)
{
	(void)state;
	unsetenv("PRECOPY_RDMA_PIN_ALL");
	run_migration(2, NULL, true, true);
}

/* The environment variable overrides the session's choice, both ways. */
static void migrate__pin_all_env_overrides(void **state)
{
	(void)state;
	setenv("PRECOPY_RDMA_PIN_ALL", "0", 1);
	run_migration(1, NULL, true, false);
	setenv("PRECOPY_RDMA_PIN_ALL", "1", 1);
	run_migration(1, NULL, false, true);
	unsetenv("PRECOPY_RDMA_PIN_ALL");
}

/* --- wrong key ------------------------------------------------------------ */

struct acceptor {
	const struct pc_transport_ops *ops;
	struct pc_listener *l;
	struct pc_transport *t;
	const char *key;
	int err;
};

static void *accept_main(void *arg)
{
	struct acceptor *a = arg;
	struct pc_transport_opts o = { .key = a->key, .key_len = strlen(a->key) };

	a->err = a->ops->accept(a->l, &o, &a->t);
	return NULL;
}

static void connect__wrong_key_refused(void **state)
{
	const struct pc_transport_ops *ops = pc_transport_find("rdma");
	struct acceptor a = { .ops = ops, .key = "right key", .err = 1 };
	char why[160] = "";
	struct pc_transport_opts o = { .channels = 2, .key = "wrong key", .key_len = 9,
				       .why = why, .whylen = sizeof(why) };
	struct pc_transport *t = NULL;
	char uri[200];
	pthread_t th;

	(void)state;
	assert_int_equal(ops->listen(listen_uri + 5, &o, &a.l), 0);
	assert_int_equal(ops->listener_addr(a.l, uri, sizeof(uri)), 0);
	assert_int_equal(pthread_create(&th, NULL, accept_main, &a), 0);
	/* a wrong key and no key are refused before accept... */
	assert_int_equal(ops->connect(uri + 5, &o, &t), -EACCES);
	assert_null(t);
	printf("# wrong key: %s\n", why);
	assert_non_null(strstr(why, "authentication"));
	o.key = NULL;
	o.key_len = 0;
	assert_int_equal(ops->connect(uri + 5, &o, &t), -EACCES);
	assert_null(t);
	usleep(200 * 1000);
	assert_int_equal(a.err, 1); /* ...and the acceptor is still waiting */
	o.key = "right key";
	o.key_len = 9;
	assert_int_equal(ops->connect(uri + 5, &o, &t), 0);
	pthread_join(th, NULL);
	assert_int_equal(a.err, 0);
	assert_int_equal(a.t->nchan, 2);
	pc_tp_close(t);
	pc_tp_close(a.t);
	ops->listener_close(a.l);
}

/* --- stale rkey ------------------------------------------------------------- */

static void write_pages__stale_key_refused_after_unexpose(void **state)
{
	const struct pc_transport_ops *ops = pc_transport_find("rdma");
	struct acceptor a = { .ops = ops, .key = "", .err = 1 };
	struct pc_transport_opts o = { .channels = 1 };
	struct pc_transport *t = NULL;
	size_t rlen = 1 << 20;
	uint8_t *src = malloc(rlen), *dst = calloc(1, rlen), msg[8] = "done";
	struct iovec v = { msg, 4 };
	struct pc_page_run run = { src, 0, 0, 64 * 1024 };
	char uri[200];
	pthread_t th;
	size_t len;
	int err;

	(void)state;
	memset(src, 0x5a, rlen);
	assert_int_equal(ops->listen(listen_uri + 5, &o, &a.l), 0);
	assert_int_equal(ops->listener_addr(a.l, uri, sizeof(uri)), 0);
	assert_int_equal(pthread_create(&th, NULL, accept_main, &a), 0);
	assert_int_equal(ops->connect(uri + 5, &o, &t), 0);
	pthread_join(th, NULL);
	assert_int_equal(a.err, 0);
	assert_int_equal(ops->expose_region(a.t, 0, dst, rlen), 0);
	assert_int_equal(ops->reg_local(t, src, rlen), 0);
	/* the key works while exposed */
	assert_int_equal(pc_tp_write_pages(t, 0, &run, 1), 0);
	assert_int_equal(pc_tp_send_msg(t, 0, &v, 1), 0);
	assert_int_equal(pc_tp_recv_msg(a.t, 0, msg, sizeof(msg), &len), 0);
	assert_int_equal(dst[100], 0x5a);
	/* revoked: the same write now fails at the source */
	assert_int_equal(ops->unexpose_all(a.t), 0);
	memset(src, 0xa5, rlen);
	run.offset = 128 * 1024;
	err = pc_tp_write_pages(t, 0, &run, 1);
	if (!err)
		err = pc_tp_send_msg(t, 0, &v, 1);
	if (!err)
		err = pc_tp_recv_msg(t, 0, msg, sizeof(msg), &len); /* waits for the failure */
	printf("# stale key: %s (%s)\n", strerror(-err), t->why);
	assert_true(err < 0);
	assert_non_null(strstr(t->why, "remote access"));
	for (size_t i = 128 * 1024; i < 192 * 1024; i++)
		assert_int_equal(dst[i], 0);
	pc_tp_close(t);
	pc_tp_close(a.t);
	ops->listener_close(a.l);
	free(src);
	free(dst);
}

/* --- zero copy ---------------------------------------------------------------- */

/* Page runs go from the registered guest memory to the peer by RDMA WRITE,
 * never through a bounce buffer: every byte written was posted from a
 * guest-memory scatter-gather entry, and no page data went into a SEND. */
static void write_pages__zero_copy(void **state)
{
	const struct pc_transport_ops *ops = pc_transport_find("rdma");
	struct acceptor a = { .ops = ops, .key = "", .err = 1 };
	struct pc_transport_opts o = { .channels = 1 };
	struct pc_transport *t = NULL;
	size_t rlen = 4 << 20, npages = rlen / 4096 / 2, len;
	uint8_t *src = malloc(rlen), *dst = calloc(1, rlen), msg[8] = "done";
	struct pc_page_run *runs = calloc(npages, sizeof(*runs));
	struct iovec v = { msg, 4 };
	struct pc_rdma_stats st;
	uint64_t sent0;
	char uri[200];
	pthread_t th;

	(void)state;
	assert_non_null(src);
	assert_non_null(dst);
	assert_non_null(runs);
	for (size_t i = 0; i < rlen; i++)
		src[i] = (uint8_t)(i * 31 + 7);
	/* every other page: runs that cannot merge into one */
	for (size_t i = 0; i < npages; i++)
		runs[i] = (struct pc_page_run){ src + 2 * i * 4096, 0, 2 * i * 4096, 4096 };
	assert_int_equal(ops->listen(listen_uri + 5, &o, &a.l), 0);
	assert_int_equal(ops->listener_addr(a.l, uri, sizeof(uri)), 0);
	assert_int_equal(pthread_create(&th, NULL, accept_main, &a), 0);
	assert_int_equal(ops->connect(uri + 5, &o, &t), 0);
	pthread_join(th, NULL);
	assert_int_equal(a.err, 0);
	assert_int_equal(ops->expose_region(a.t, 0, dst, rlen), 0);
	assert_int_equal(ops->reg_local(t, src, rlen), 0);
	assert_int_equal(pc_rdma_stats(t, &st), 0);
	sent0 = st.send_bytes;
	assert_int_equal(pc_tp_write_pages(t, 0, runs, (unsigned)npages), 0);
	assert_int_equal(pc_tp_send_msg(t, 0, &v, 1), 0);
	assert_int_equal(pc_tp_recv_msg(a.t, 0, msg, sizeof(msg), &len), 0);
	for (size_t i = 0; i < npages; i++)
		assert_memory_equal(dst + 2 * i * 4096, src + 2 * i * 4096, 4096);
	assert_int_equal(pc_rdma_stats(t, &st), 0);
	printf("# zero copy: %llu bytes written, %llu of them from guest memory, %llu bytes "
	       "of messages sent\n", (unsigned long long)st.write_bytes,
	       (unsigned long long)st.write_guest_bytes,
	       (unsigned long long)(st.send_bytes - sent0));
	assert_int_equal(st.write_bytes, npages * 4096);
	assert_int_equal(st.write_guest_bytes, st.write_bytes);
	assert_int_equal(st.send_bytes - sent0, 4); /* the marker, nothing more */
	pc_tp_close(t);
	pc_tp_close(a.t);
	ops->listener_close(a.l);
	free(runs);
	free(src);
	free(dst);
}

/* --- the destination dies ----------------------------------------------------- */

static void dest_child(int wfd, size_t ram)
{
	struct h_dest d;

	if (h_dest_start_key(&d, ram, listen_uri, false, NULL, 0) != 0)
		_exit(3);
	if (write(wfd, d.uri, sizeof(d.uri)) != (ssize_t)sizeof(d.uri))
		_exit(4);
	h_dest_join(&d);
	_exit(0);
}

static void migrate__dest_killed_source_survives(void **state)
{
	size_t ram = 48 * MiB, len;
	struct pc_guest *g;
	struct pc_guest_desc desc;
	struct precopy_params p;
	struct precopy_stats st;
	struct h_src s;
	char uri[128], why[256];
	int pfd[2], status;
	double t0;
	uint64_t w0;
	pid_t pid;
	void *mem;

	(void)state;
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* A fresh image: verbs contexts opened by earlier cases must
		 * not be used across fork(). */
		char fd[16];

		close(pfd[0]);
		snprintf(fd, sizeof(fd), "%d", pfd[1]);
		execl("/proc/self/exe", "test_rdma", "--dest-child", addr, fd, (char *)NULL);
		_exit(5);
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], uri, sizeof(uri)), (ssize_t)sizeof(uri));
	close(pfd[0]);

	g = make_guest(ram, 1.0 * MiB);
	mem = pc_guest_ram(g, &len);
	precopy_params_init(&p);
	p.max_bandwidth = 4 * MiB; /* slow: still sending when the peer dies */
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, uri), 0);
	if (!h_wait_status(s.s, PRECOPY_STATUS_BULK, 60000)) {
		precopy_strerror(s.s, why, sizeof(why));
		print_error("source: %s\n", why);
		fail();
	}
	sleep(2);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	t0 = now_s();
	assert_true(h_src_join(&s) < 0);
	precopy_query(s.s, &st);
	/* how long the source took to notice is reported, not asserted: a
	 * dead peer must end the migration, and the suite's timeout catches
	 * a source that waits for ever */
	printf("# source failed %.2f s after the kill: %s\n", now_s() - t0, st.error);
	assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
	assert_int_equal(s.resumes, s.stops);
	h_src_free(&s);
	/* the guest still runs, and its memory is what it wrote */
	w0 = pc_guest_writes(g);
	usleep(300 * 1000);
	assert_true(pc_guest_writes(g) > w0);
	pc_guest_pause(g);
	pc_guest_describe(g, &desc);
	assert_int_equal(pc_guest_verify(mem, len, &desc, why, sizeof(why)), 0);
	pc_guest_delete(&g);
}

/* --- leaks: descriptors and pinned memory ------------------------------------ */

/* Memory pinned by this process (registered memory regions), KiB. */
static long pinned_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmPin: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

struct leaks {
	long fds, pinned;
};

static void leaks_mark(struct leaks *l)
{
	l->fds = h_count_fds();
	l->pinned = pinned_kib();
}

static void leaks_check(const struct leaks *l, const char *when)
{
	long fds = h_count_fds(), pinned = pinned_kib();

	printf("# %s: %ld descriptors (%ld before), %ld KiB pinned (%ld before)\n", when, fds,
	       l->fds, pinned, l->pinned);
	assert_int_equal(fds, l->fds);
	assert_int_equal(pinned, l->pinned);
}

/* --- rdma_cm helpers ------------------------------------------------------------ */

static void addr_of(const char *host, uint16_t port, struct sockaddr_in *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons(port);
	assert_int_equal(inet_pton(AF_INET, host, &sa->sin_addr), 1);
}

/* "rdma:HOST:PORT" -> port */
static uint16_t port_of(const char *uri)
{
	const char *c = strrchr(uri, ':');

	assert_non_null(c);
	return (uint16_t)atoi(c + 1);
}

/* The next event on @ec (at most a minute: a guard against a hang, not a
 * timing check). Its type, the id, and up to *@plen bytes of private data. */
static enum rdma_cm_event_type cm_next(struct rdma_event_channel *ec, struct rdma_cm_id **id,
				       void *pdata, size_t *plen)
{
	struct pollfd pf = { .fd = ec->fd, .events = POLLIN };
	struct rdma_cm_event *ev;
	enum rdma_cm_event_type type;

	if (poll(&pf, 1, 60000) != 1)
		fail_msg("no rdma_cm event within a minute");
	assert_int_equal(rdma_get_cm_event(ec, &ev), 0);
	type = ev->event;
	if (id)
		*id = ev->id;
	if (plen) {
		size_t n = ev->param.conn.private_data ? ev->param.conn.private_data_len : 0;

		if (n > *plen)
			n = *plen;
		if (n)
			memcpy(pdata, ev->param.conn.private_data, n);
		*plen = n;
	}
	rdma_ack_cm_event(ev);
	return type;
}

static void cm_expect(struct rdma_event_channel *ec, enum rdma_cm_event_type want)
{
	enum rdma_cm_event_type got = cm_next(ec, NULL, NULL, NULL);

	if (got != want)
		fail_msg("rdma_cm: %s, expected %s", rdma_event_str(got), rdma_event_str(want));
}

/* Wait for one completion on @cq (a minute at most, as above). */
static struct ibv_wc cq_wait(struct ibv_cq *cq)
{
	struct ibv_wc wc;

	for (unsigned i = 0; i < 600000; i++) {
		int n = ibv_poll_cq(cq, 1, &wc);

		assert_true(n >= 0);
		if (n == 1)
			return wc;
		usleep(100);
	}
	fail_msg("no completion within a minute");
	return wc;
}

/* --- an impostor destination ---------------------------------------------------- */

/* A listener of raw rdma_cm that accepts any request and answers with a
 * token it cannot compute (it lacks the key). Runs in a thread: no cmocka
 * checks in it. */
struct impostor {
	struct rdma_event_channel *ec;
	struct rdma_cm_id *lid, *id;
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	int step; /* how far it got: 1 request, 2 accepted */
};

static void *impostor_main(void *arg)
{
	struct impostor *im = arg;
	struct ibv_qp_init_attr qa = { .qp_type = IBV_QPT_RC,
				       .cap = { .max_send_wr = 4, .max_recv_wr = 4,
						.max_send_sge = 1, .max_recv_sge = 1 } };
	struct rdma_conn_param cp = { .retry_count = 6, .rnr_retry_count = 6 };
	struct pollfd pf = { .fd = im->ec->fd, .events = POLLIN };
	struct rdma_cm_event *ev;
	uint8_t rep[56];

	if (poll(&pf, 1, 60000) != 1 || rdma_get_cm_event(im->ec, &ev))
		return NULL;
	if (ev->event != RDMA_CM_EVENT_CONNECT_REQUEST) {
		rdma_ack_cm_event(ev);
		return NULL;
	}
	im->id = ev->id;
	rdma_ack_cm_event(ev);
	im->step = 1;
	im->pd = ibv_alloc_pd(im->id->verbs);
	im->cq = ibv_create_cq(im->id->verbs, 8, NULL, NULL, 0);
	qa.send_cq = qa.recv_cq = im->cq;
	if (!im->pd || !im->cq || rdma_create_qp(im->id, im->pd, &qa))
		return NULL;
	memset(rep, 0xa5, sizeof(rep)); /* a well-formed reply, a made-up token */
	pc_put_le32(rep, 0x31524350u);
	rep[4] = 2;
	rep[5] = 0;
	cp.private_data = rep;
	cp.private_data_len = sizeof(rep);
	if (rdma_accept(im->id, &cp) == 0)
		im->step = 2;
	return NULL;
}

/* The source does not take an acceptor that cannot prove it holds the
 * key for the destination: it fails with the reason before anything but
 * the connect request was sent. */
static void connect__impostor_destination_refused(void **state)
{
	const struct pc_transport_ops *ops = pc_transport_find("rdma");
	struct impostor im = { 0 };
	struct sockaddr_in la;
	char why[160] = "", uri[200];
	struct pc_transport_opts o = { .channels = 1, .key = "right key", .key_len = 9,
				       .why = why, .whylen = sizeof(why) };
	struct pc_transport *t = NULL;
	pthread_t th;

	(void)state;
	im.ec = rdma_create_event_channel();
	assert_non_null(im.ec);
	addr_of(addr, 0, &la);
	assert_int_equal(rdma_create_id(im.ec, &im.lid, NULL, RDMA_PS_TCP), 0);
	assert_int_equal(rdma_bind_addr(im.lid, (struct sockaddr *)&la), 0);
	assert_int_equal(rdma_listen(im.lid, 1), 0);
	snprintf(uri, sizeof(uri), "%s:%u", addr, ntohs(rdma_get_src_port(im.lid)));
	assert_int_equal(pthread_create(&th, NULL, impostor_main, &im), 0);
	assert_int_equal(ops->connect(uri, &o, &t), -EACCES);
	pthread_join(th, NULL);
	assert_null(t);
	assert_int_equal(im.step, 2); /* it did accept */
	printf("# impostor destination: %s\n", why);
	assert_non_null(strstr(why, "failed authentication"));
	rdma_destroy_qp(im.id);
	rdma_destroy_id(im.id);
	ibv_destroy_cq(im.cq);
	ibv_dealloc_pd(im.pd);
	rdma_destroy_id(im.lid);
	rdma_destroy_event_channel(im.ec);
}

/* --- a listener that never answers ------------------------------------------------ */

struct connector {
	const char *uri;
	atomic_bool cancel;
	int err;
	struct pc_transport *t;
};

static void *connector_main(void *arg)
{
	struct connector *k = arg;
	struct pc_transport_opts o = { .channels = 1, .timeout_ms = 3600000,
				       .cancel = &k->cancel };

	k->err = pc_transport_find("rdma")->connect(k->uri, &o, &k->t);
	return NULL;
}

/* A cancel while the destination has the connect request but has not
 * answered it is taken at once: the connect does not wait for the request
 * to time out (the timeout here is an hour). */
static void connect__cancel_while_waiting_for_accept(void **state)
{
	struct connector k = { 0 };
	struct rdma_event_channel *ec = rdma_create_event_channel();
	struct rdma_cm_id *lid, *req = NULL;
	struct sockaddr_in la;
	char uri[200];
	pthread_t th;

	(void)state;
	assert_non_null(ec);
	addr_of(addr, 0, &la);
	assert_int_equal(rdma_create_id(ec, &lid, NULL, RDMA_PS_TCP), 0);
	assert_int_equal(rdma_bind_addr(lid, (struct sockaddr *)&la), 0);
	assert_int_equal(rdma_listen(lid, 1), 0);
	snprintf(uri, sizeof(uri), "%s:%u", addr, ntohs(rdma_get_src_port(lid)));
	k.uri = uri;
	atomic_init(&k.cancel, false);
	assert_int_equal(pthread_create(&th, NULL, connector_main, &k), 0);
	/* the request is here; it is never accepted nor rejected */
	assert_int_equal(cm_next(ec, &req, NULL, NULL), RDMA_CM_EVENT_CONNECT_REQUEST);
	usleep(200 * 1000);
	atomic_store(&k.cancel, true);
	pthread_join(th, NULL);
	assert_int_equal(k.err, -ECANCELED);
	assert_null(k.t);
	rdma_destroy_id(req);
	rdma_destroy_id(lid);
	rdma_destroy_event_channel(ec);
}

/* --- a probe: our own queue pair into a connection's protection domain ------------ */

/*
 * Two queue pairs of the test connected to each other over the device:
 * "near" in a protection domain of its own, "far" in @far_pd, the
 * protection domain of a transport connection under test. Both allow RDMA
 * READ and atomics, so whatever the near end may do with one of that
 * connection's keys is decided by the key's memory region alone.
 */
struct probe {
	struct rdma_event_channel *ec;
	struct rdma_cm_id *lid, *near, *far;
	struct ibv_pd *near_pd;
	struct ibv_cq *near_cq, *far_cq;
	uint8_t *buf;
	struct ibv_mr *mr;
};

#define PROBE_BUF (64 * 1024)

static void probe_open(struct probe *p, struct ibv_pd *far_pd)
{
	struct sockaddr_in la, da;
	struct ibv_qp_init_attr qa = { .qp_type = IBV_QPT_RC,
				       .cap = { .max_send_wr = 4, .max_recv_wr = 4,
						.max_send_sge = 1, .max_recv_sge = 1 } };
	struct rdma_conn_param cp = { .initiator_depth = 1, .responder_resources = 1,
				      .retry_count = 3, .rnr_retry_count = 3 };
	unsigned established = 0;

	memset(p, 0, sizeof(*p));
	p->ec = rdma_create_event_channel();
	assert_non_null(p->ec);
	addr_of(addr, 0, &la);
	assert_int_equal(rdma_create_id(p->ec, &p->lid, NULL, RDMA_PS_TCP), 0);
	assert_int_equal(rdma_bind_addr(p->lid, (struct sockaddr *)&la), 0);
	assert_int_equal(rdma_listen(p->lid, 1), 0);
	addr_of(addr, ntohs(rdma_get_src_port(p->lid)), &da);

	assert_int_equal(rdma_create_id(p->ec, &p->near, NULL, RDMA_PS_TCP), 0);
	assert_int_equal(rdma_resolve_addr(p->near, NULL, (struct sockaddr *)&da, 2000), 0);
	cm_expect(p->ec, RDMA_CM_EVENT_ADDR_RESOLVED);
	assert_int_equal(rdma_resolve_route(p->near, 2000), 0);
	cm_expect(p->ec, RDMA_CM_EVENT_ROUTE_RESOLVED);
	p->near_pd = ibv_alloc_pd(p->near->verbs);
	assert_non_null(p->near_pd);
	p->near_cq = ibv_create_cq(p->near->verbs, 8, NULL, NULL, 0);
	assert_non_null(p->near_cq);
	qa.send_cq = qa.recv_cq = p->near_cq;
	assert_int_equal(rdma_create_qp(p->near, p->near_pd, &qa), 0);
	p->buf = calloc(1, PROBE_BUF);
	assert_non_null(p->buf);
	p->mr = ibv_reg_mr(p->near_pd, p->buf, PROBE_BUF, IBV_ACCESS_LOCAL_WRITE);
	assert_non_null(p->mr);
	assert_int_equal(rdma_connect(p->near, &cp), 0);

	if (cm_next(p->ec, &p->far, NULL, NULL) != RDMA_CM_EVENT_CONNECT_REQUEST)
		fail_msg("probe: no connect request");
	/* the far end must live on the same device context as @far_pd */
	assert_ptr_equal(p->far->verbs, far_pd->context);
	p->far_cq = ibv_create_cq(p->far->verbs, 8, NULL, NULL, 0);
	assert_non_null(p->far_cq);
	qa.send_cq = qa.recv_cq = p->far_cq;
	assert_int_equal(rdma_create_qp(p->far, far_pd, &qa), 0);
	assert_int_equal(rdma_accept(p->far, &cp), 0);
	while (established < 2) {
		enum rdma_cm_event_type t = cm_next(p->ec, NULL, NULL, NULL);

		if (t != RDMA_CM_EVENT_ESTABLISHED)
			fail_msg("probe: %s while connecting", rdma_event_str(t));
		established++;
	}
}

static void probe_close(struct probe *p)
{
	/* queue pairs first: the far one holds a reference on a protection
	 * domain its transport will want to free */
	rdma_destroy_qp(p->far);
	rdma_destroy_qp(p->near);
	rdma_destroy_id(p->far);
	rdma_destroy_id(p->near);
	rdma_destroy_id(p->lid);
	ibv_dereg_mr(p->mr);
	ibv_dealloc_pd(p->near_pd);
	ibv_destroy_cq(p->near_cq);
	ibv_destroy_cq(p->far_cq);
	rdma_destroy_event_channel(p->ec);
	free(p->buf);
}

/*
 * One RDMA @op (READ or WRITE) of @len bytes at @raddr with @rkey from a
 * fresh probe into @far_pd; a WRITE sends @fill bytes. Returns the
 * completion status (a failed one leaves the queue pair in error, hence a
 * fresh probe each time); with @out, a READ's bytes.
 */
static enum ibv_wc_status probe_once(struct ibv_pd *far_pd, enum ibv_wr_opcode op,
				     uint64_t raddr, uint32_t rkey, uint32_t len, uint8_t fill,
				     void *out)
{
	struct probe p;
	struct ibv_sge sge;
	struct ibv_send_wr wr = { .wr_id = 7, .sg_list = &sge, .num_sge = 1, .opcode = op,
				  .send_flags = IBV_SEND_SIGNALED }, *bad;
	struct ibv_wc wc;

	assert_true(len <= PROBE_BUF);
	probe_open(&p, far_pd);
	memset(p.buf, op == IBV_WR_RDMA_WRITE ? fill : 0, len);
	sge = (struct ibv_sge){ .addr = (uintptr_t)p.buf, .length = len, .lkey = p.mr->lkey };
	wr.wr.rdma.remote_addr = raddr;
	wr.wr.rdma.rkey = rkey;
	assert_int_equal(ibv_post_send(p.near->qp, &wr, &bad), 0);
	wc = cq_wait(p.near_cq);
	if (out && wc.status == IBV_WC_SUCCESS)
		memcpy(out, p.buf, len);
	probe_close(&p);
	return wc.status;
}

static bool all_bytes(const uint8_t *p, size_t n, uint8_t v)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != v)
			return false;
	return true;
}

/* --- a hostile peer: raw verbs and rdma_cm, speaking the handshake ------------------ */

#define H_SLOT (64 * 1024)
#define H_RECVS 16
#define H_BUF (1 << 20)

/*
 * A connector that holds the key and builds its connect request itself,
 * creates and moves its own queue pair (so it can give itself RDMA READ
 * resources the transport never asks for), and keeps whatever region keys
 * the acceptor sends.
 */
struct hostile {
	struct rdma_event_channel *ec;
	struct rdma_cm_id *id;
	struct ibv_pd *pd;
	struct ibv_cq *scq, *rcq;
	struct ibv_qp *qp;
	uint8_t *rbuf, *buf;
	uint64_t *credit;
	struct ibv_mr *rmr, *bmr, *cmr;
	struct {
		bool valid;
		uint32_t rkey;
		uint64_t addr, len;
	} reg[PRECOPY_MAX_REGIONS];
	uint8_t msg[PC_WIRE_MSG_MAX]; /* the last engine message */
	size_t msglen;
};

static void hmac16(const char *key, const char *label, const uint8_t *a, size_t alen,
		   uint8_t out[16])
{
	struct hmac_sha256_ctx h;
	uint8_t d[SHA256_DIGEST_SIZE];

	hmac_sha256_set_key(&h, key ? strlen(key) : 0, (const uint8_t *)(key ? key : ""));
	hmac_sha256_update(&h, strlen(label), (const uint8_t *)label);
	hmac_sha256_update(&h, alen, a);
	hmac_sha256_digest(&h, sizeof(d), d);
	memcpy(out, d, 16);
}

static void hostile_post_recv(struct hostile *h, unsigned slot)
{
	struct ibv_sge sge = { .addr = (uintptr_t)(h->rbuf + (size_t)slot * H_SLOT),
			       .length = H_SLOT, .lkey = h->rmr->lkey };
	struct ibv_recv_wr wr = { .wr_id = slot, .sg_list = &sge, .num_sge = 1 }, *bad;

	assert_int_equal(ibv_post_recv(h->qp, &wr, &bad), 0);
}

static void qp_move(struct hostile *h, enum ibv_qp_state st)
{
	struct ibv_qp_attr a = { .qp_state = st };
	int mask;

	assert_int_equal(rdma_init_qp_attr(h->id, &a, &mask), 0);
	if (st == IBV_QPS_INIT)
		a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE; /* our credit word */
	if (st == IBV_QPS_RTS) {
		a.max_rd_atomic = 1; /* what the acceptor did not grant */
		mask |= IBV_QP_MAX_QP_RD_ATOMIC;
	}
	assert_int_equal(ibv_modify_qp(h->qp, &a, mask), 0);
}

/* Send one fragment of @len bytes already in h->buf. */
static void hostile_send_frag(struct hostile *h, size_t len)
{
	struct ibv_sge sge = { .addr = (uintptr_t)h->buf, .length = (uint32_t)len,
			       .lkey = h->bmr->lkey };
	struct ibv_send_wr wr = { .wr_id = 1, .sg_list = &sge, .num_sge = 1,
				  .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED }, *bad;
	struct ibv_wc wc;

	assert_int_equal(ibv_post_send(h->qp, &wr, &bad), 0);
	wc = cq_wait(h->scq);
	assert_int_equal(wc.status, IBV_WC_SUCCESS);
}

/* Send the answer to the acceptor's challenge: an internal AUTH message
 * of 16 bytes @proof. */
static void hostile_send_auth(struct hostile *h, const uint8_t proof[16])
{
	memset(h->buf, 0, 8 + 20);
	h->buf[0] = 2; /* internal */
	pc_put_le32(h->buf + 4, 20);
	h->buf[8] = 4; /* AUTH */
	memcpy(h->buf + 12, proof, 16);
	hostile_send_frag(h, 8 + 20);
}

/*
 * Connect to @uri with the connect request @req (56 bytes) from a queue
 * pair of our own. With @sign, its credit word fields are filled in and
 * the token computed with @key; without, @req goes as it is (a replay).
 * The acceptor's reply (56 bytes) goes to @rep. Return: 0 once
 * established; -EACCES if refused.
 */
static int hostile_open(struct hostile *h, const char *uri, uint8_t *req, bool sign,
			const char *key, uint8_t *rep)
{
	struct sockaddr_in da;
	struct ibv_qp_init_attr qa = { .qp_type = IBV_QPT_RC,
				       .cap = { .max_send_wr = 16, .max_recv_wr = H_RECVS,
						.max_send_sge = 1, .max_recv_sge = 1 } };
	struct rdma_conn_param cp = { .initiator_depth = 1, .responder_resources = 1,
				      .retry_count = 6, .rnr_retry_count = 6 };
	size_t replen = 56;
	enum rdma_cm_event_type t;

	memset(h, 0, sizeof(*h));
	h->ec = rdma_create_event_channel();
	assert_non_null(h->ec);
	addr_of(addr, port_of(uri), &da);
	assert_int_equal(rdma_create_id(h->ec, &h->id, NULL, RDMA_PS_TCP), 0);
	assert_int_equal(rdma_resolve_addr(h->id, NULL, (struct sockaddr *)&da, 2000), 0);
	cm_expect(h->ec, RDMA_CM_EVENT_ADDR_RESOLVED);
	assert_int_equal(rdma_resolve_route(h->id, 2000), 0);
	cm_expect(h->ec, RDMA_CM_EVENT_ROUTE_RESOLVED);
	h->pd = ibv_alloc_pd(h->id->verbs);
	h->scq = ibv_create_cq(h->id->verbs, 32, NULL, NULL, 0);
	h->rcq = ibv_create_cq(h->id->verbs, H_RECVS, NULL, NULL, 0);
	assert_true(h->pd && h->scq && h->rcq);
	qa.send_cq = h->scq;
	qa.recv_cq = h->rcq;
	h->qp = ibv_create_qp(h->pd, &qa); /* ours, not rdma_cm's: we move it */
	assert_non_null(h->qp);
	h->rbuf = calloc(H_RECVS, H_SLOT);
	h->buf = calloc(1, H_BUF);
	assert_int_equal(posix_memalign((void **)&h->credit, 4096, 4096), 0);
	memset(h->credit, 0, 4096);
	h->rmr = ibv_reg_mr(h->pd, h->rbuf, (size_t)H_RECVS * H_SLOT, IBV_ACCESS_LOCAL_WRITE);
	h->bmr = ibv_reg_mr(h->pd, h->buf, H_BUF, IBV_ACCESS_LOCAL_WRITE);
	h->cmr = ibv_reg_mr(h->pd, h->credit, 4096,
			    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	assert_true(h->rbuf && h->buf && h->rmr && h->bmr && h->cmr);
	qp_move(h, IBV_QPS_INIT);
	for (unsigned i = 0; i < H_RECVS; i++)
		hostile_post_recv(h, i);

	if (sign) {
		pc_put_le64(req + 24, (uintptr_t)h->credit);
		pc_put_le32(req + 32, h->cmr->rkey);
		hmac16(key, "PCR2-req", req, 40, req + 40);
	}
	cp.private_data = req;
	cp.private_data_len = 56;
	cp.qp_num = h->qp->qp_num;
	assert_int_equal(rdma_connect(h->id, &cp), 0);
	memset(rep, 0, 56);
	t = cm_next(h->ec, NULL, rep, &replen);
	if (t == RDMA_CM_EVENT_REJECTED)
		return -EACCES;
	if (t != RDMA_CM_EVENT_CONNECT_RESPONSE)
		fail_msg("hostile: %s while connecting", rdma_event_str(t));
	qp_move(h, IBV_QPS_RTR);
	qp_move(h, IBV_QPS_RTS);
	assert_int_equal(rdma_establish(h->id), 0);
	return 0;
}

/* Connect to @uri as channel 0 of 1 with @key, as transport/rdma_cm.c does:
 * a request with a good token, then the answer to the challenge. Return:
 * 0; -EACCES if refused. */
static int hostile_connect(struct hostile *h, const char *uri, const char *key)
{
	uint8_t req[56], rep[56], both[112], proof[16];
	uint64_t r[2];
	int err;

	memset(req, 0, sizeof(req));
	assert_int_equal(getrandom(r, sizeof(r), 0), (ssize_t)sizeof(r));
	pc_put_le32(req, 0x31524350u);
	req[4] = 2;
	req[5] = 0;
	req[6] = 1;
	pc_put_le64(req + 8, r[0]);
	pc_put_le64(req + 16, r[1]);
	err = hostile_open(h, uri, req, true, key, rep);
	if (err)
		return err;
	memcpy(both, req, 56);
	memcpy(both + 56, rep, 56);
	hmac16(key, "PCR2-ack", both, sizeof(both), proof);
	hostile_send_auth(h, proof);
	return 0;
}

static void hostile_close(struct hostile *h)
{
	ibv_destroy_qp(h->qp);
	rdma_destroy_id(h->id);
	ibv_dereg_mr(h->rmr);
	ibv_dereg_mr(h->bmr);
	ibv_dereg_mr(h->cmr);
	ibv_destroy_cq(h->scq);
	ibv_destroy_cq(h->rcq);
	ibv_dealloc_pd(h->pd);
	rdma_destroy_event_channel(h->ec);
	free(h->rbuf);
	free(h->buf);
	free(h->credit);
}

/* One receive completion: a region key is kept (1), a heartbeat is
 * skipped (2), an engine message goes to h->msg (0), a failed completion
 * gives its status (< 0). */
static int hostile_take(struct hostile *h, const struct ibv_wc *wc)
{
	const uint8_t *p = h->rbuf + (size_t)wc->wr_id * H_SLOT;
	int kind = 0;

	if (wc->status != IBV_WC_SUCCESS)
		return -(int)wc->status;
	assert_true(wc->byte_len >= 8);
	if (p[0] == 2 && (p[8] == 2 || p[8] == 3)) { /* internal: a heartbeat */
		kind = 2;
	} else if (p[0] == 2) { /* internal: a region's key */
		uint32_t id = pc_get_le32(p + 12);

		assert_true(wc->byte_len >= 8 + 28 && p[8] == 1 && id < PRECOPY_MAX_REGIONS);
		h->reg[id].valid = true;
		h->reg[id].rkey = pc_get_le32(p + 16);
		h->reg[id].addr = pc_get_le64(p + 20);
		h->reg[id].len = pc_get_le64(p + 28);
		kind = 1;
	} else {
		assert_int_equal(p[0], 1); /* an engine message, in one fragment */
		assert_int_equal(p[1], 0);
		h->msglen = wc->byte_len - 8;
		memcpy(h->msg, p + 8, h->msglen);
	}
	hostile_post_recv(h, (unsigned)wc->wr_id);
	return kind;
}

/* Receive until an engine message arrives. Return: 0, or < 0 as above. */
static int hostile_recv(struct hostile *h)
{
	for (;;) {
		struct ibv_wc wc = cq_wait(h->rcq);
		int r = hostile_take(h, &wc);

		if (r <= 0)
			return r;
	}
}

/* Wait until the key of region @id has come. */
static void hostile_wait_key(struct hostile *h, uint32_t id)
{
	while (!h->reg[id].valid) {
		struct ibv_wc wc = cq_wait(h->rcq);

		assert_true(hostile_take(h, &wc) >= 0);
	}
}

/* Send one engine message (one fragment). */
static void hostile_send(struct hostile *h, const void *msg, size_t len)
{
	assert_true(8 + len <= H_SLOT);
	memset(h->buf, 0, 8);
	h->buf[0] = 1;
	pc_put_le32(h->buf + 4, (uint32_t)len);
	memcpy(h->buf + 8, msg, len);
	hostile_send_frag(h, 8 + len);
}

/* One RDMA READ or WRITE of @len bytes from/to h->buf; its status. */
static enum ibv_wc_status hostile_op(struct hostile *h, enum ibv_wr_opcode op, uint64_t raddr,
				     uint32_t rkey, uint32_t len)
{
	struct ibv_sge sge = { .addr = (uintptr_t)h->buf, .length = len, .lkey = h->bmr->lkey };
	struct ibv_send_wr wr = { .wr_id = 2, .sg_list = &sge, .num_sge = 1, .opcode = op,
				  .send_flags = IBV_SEND_SIGNALED }, *bad;

	assert_true(len <= H_BUF);
	wr.wr.rdma.remote_addr = raddr;
	wr.wr.rdma.rkey = rkey;
	assert_int_equal(ibv_post_send(h->qp, &wr, &bad), 0);
	return cq_wait(h->scq).status;
}

/* The queue pair lets the peer write and nothing else: no READ, no
 * atomics, no responder resources for them. */
static void check_qp_write_only(struct ibv_qp *qp, const char *who)
{
	struct ibv_qp_attr a;
	struct ibv_qp_init_attr ia;

	assert_non_null(qp);
	assert_int_equal(ibv_query_qp(qp, &a, IBV_QP_ACCESS_FLAGS | IBV_QP_MAX_DEST_RD_ATOMIC,
				      &ia), 0);
	printf("# %s queue pair: access 0x%x, %u responder resources\n", who,
	       (unsigned)a.qp_access_flags, (unsigned)a.max_dest_rd_atomic);
	assert_true(a.qp_access_flags & IBV_ACCESS_REMOTE_WRITE);
	assert_false(a.qp_access_flags & (IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC));
	assert_int_equal(a.max_dest_rd_atomic, 0);
}

static void check_transport_write_only(struct pc_transport *t, const char *who)
{
	struct pc_rdma_verbs v;

	assert_int_equal(pc_rdma_verbs(t, &v), 0);
	for (unsigned i = 0; i < t->nchan; i++)
		check_qp_write_only(v.qp[i], who);
}

/* A listener on the device, a thread accepting with @key, and a hostile
 * peer connected to it with the same key. */
static void hostile_pair(struct acceptor *a, struct pc_listener *l, const char *uri,
			 const char *key, struct hostile *h)
{
	pthread_t th;

	*a = (struct acceptor){ .ops = pc_transport_find("rdma"), .l = l, .key = key, .err = 1 };
	assert_int_equal(pthread_create(&th, NULL, accept_main, a), 0);
	assert_int_equal(hostile_connect(h, uri, key), 0);
	pthread_join(th, NULL);
	assert_int_equal(a->err, 0);
}

/* The peer of a connection that was attacked fails instead of carrying on. */
static void check_failed(struct pc_transport *t, const char *what)
{
	uint8_t msg[64];
	size_t len;
	int err = pc_tp_recv_msg(t, 0, msg, sizeof(msg), &len);

	printf("# %s: the destination's connection: %s (%s)\n", what, strerror(-err), t->why);
	assert_true(err < 0);
}

/* A peer with the key and a region's rkey, whose queue pair has RDMA READ
 * resources, reads nothing: the destination's queue pair allows remote
 * writes only (whatever the request asked for), and so does the region. */
static void hostile__read_of_region_refused(void **state)
{
	const struct pc_transport_ops *ops = pc_transport_find("rdma");
	struct pc_transport_opts o = { .channels = 1 };
	struct pc_listener *l;
	struct acceptor a;
	struct hostile h;
	size_t rlen = 1 << 20;
	uint8_t *dst = malloc(rlen);
	enum ibv_wc_status st;
	char uri[200];

	(void)state;
	assert_non_null(dst);
	memset(dst, 0x5a, rlen); /* the guest's secrets */
	assert_int_equal(ops->listen(listen_uri + 5, &o, &l), 0);
	assert_int_equal(ops->listener_addr(l, uri, sizeof(uri)), 0);
	hostile_pair(&a, l, uri, "k", &h);
	check_transport_write_only(a.t, "destination, after a request for READ resources,");
	assert_int_equal(ops->expose_region(a.t, 0, dst, rlen), 0);
	hostile_wait_key(&h, 0);
	assert_int_equal(h.reg[0].addr, (uintptr_t)dst);
	assert_int_equal(h.reg[0].len, rlen);
	memset(h.buf, 0, 4096);
	st = hostile_op(&h, IBV_WR_RDMA_READ, h.reg[0].addr, h.reg[0].rkey, 4096);
	printf("# RDMA READ of a destination region with its key: %s\n", ibv_wc_status_str(st));
	assert_int_not_equal(st, IBV_WC_SUCCESS);
	assert_true(all_bytes(h.buf, 4096, 0));
	hostile_close(&h);
	check_failed(a.t, "after the READ");
	pc_tp_close(a.t);
	ops->listener_close(l);
	free(dst);
}

/* Writes that reach past either end of a region fail, and nothing outside
 * it changes; a write inside it (the control) lands. */
static void hostile__write_outside_region_refused(void **state)
{
	const struct pc_transport_ops *ops = pc_transport_find("rdma");
	struct pc_transport_opts o = { .channels = 1 };
	const size_t g = 64 * 1024; /* guard | region | guard */
	uint8_t *mem = malloc(3 * g), *reg = mem + g;
	struct {
		const char *what;
		int64_t off;    /* from the region's start */
		uint32_t len;
	} cases[] = {
		{ "past the end", (int64_t)g - 4096, 8192 },
		{ "before the start", -4096, 8192 },
		{ "wholly after it", (int64_t)g, 4096 },
		{ "one byte past the end", (int64_t)g - 4095, 4096 },
	};
	struct pc_listener *l;
	char uri[200];

	(void)state;
	assert_non_null(mem);
	memset(mem, 0x11, 3 * g);
	assert_int_equal(ops->listen(listen_uri + 5, &o, &l), 0);
	assert_int_equal(ops->listener_addr(l, uri, sizeof(uri)), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct acceptor a;
		struct hostile h;
		enum ibv_wc_status st;

		hostile_pair(&a, l, uri, "", &h);
		assert_int_equal(ops->expose_region(a.t, 0, reg, g), 0);
		hostile_wait_key(&h, 0);
		if (i == 0) { /* control: inside, it lands */
			memset(h.buf, 0x22, 4096);
			assert_int_equal(hostile_op(&h, IBV_WR_RDMA_WRITE, h.reg[0].addr,
						    h.reg[0].rkey, 4096), IBV_WC_SUCCESS);
			assert_true(all_bytes(reg, 4096, 0x22));
			memset(reg, 0x11, 4096);
		}
		memset(h.buf, 0x33, cases[i].len);
		st = hostile_op(&h, IBV_WR_RDMA_WRITE, h.reg[0].addr + (uint64_t)cases[i].off,
				h.reg[0].rkey, cases[i].len);
		printf("# RDMA WRITE %s: %s\n", cases[i].what, ibv_wc_status_str(st));
		assert_int_equal(st, IBV_WC_REM_ACCESS_ERR);
		assert_true(all_bytes(mem, 3 * g, 0x11)); /* no byte anywhere */
		hostile_close(&h);
		check_failed(a.t, cases[i].what);
		pc_tp_close(a.t);
	}
	ops->listener_close(l);
	free(mem);
}

/* A connected pair of real transports, @nchan channels, no key. */
static void real_pair(struct pc_listener **l, struct acceptor *a, struct pc_transport **t,
		      unsigned nchan)
{
	const struct pc_transport_ops *ops = pc_transport_find("rdma");
	struct pc_transport_opts o = { .channels = nchan };
	char uri[200];
	pthread_t th;

	assert_int_equal(ops->listen(listen_uri + 5, &o, l), 0);
	assert_int_equal(ops->listener_addr(*l, uri, sizeof(uri)), 0);
	*a = (struct acceptor){ .ops = ops, .l = *l, .key = "", .err = 1 };
	assert_int_equal(pthread_create(&th, NULL, accept_main, a), 0);
	assert_int_equal(ops->connect(uri + 5, &o, t), 0);
	pthread_join(th, NULL);
	assert_int_equal(a->err, 0);
}

/* What a region's key gives on its own, with every queue-pair limit out of
 * the way (a probe in the destination's protection domain): writes land,
 * reads are refused. A memory region of the same protection domain that
 * does allow reads can be read by the same probe, so the refusal is the
 * region's. */
static void keys__region_key_reads_nothing(void **state)
{
	struct pc_listener *l;
	struct acceptor a;
	struct pc_transport *t;
	struct pc_rdma_verbs v;
	size_t rlen = 256 * 1024;
	uint8_t *dst = malloc(rlen), *ctl = malloc(4096), out[4096];
	struct ibv_mr *cmr;
	enum ibv_wc_status st;

	(void)state;
	assert_true(dst && ctl);
	memset(dst, 0x5a, rlen);
	memset(ctl, 0xc7, 4096);
	real_pair(&l, &a, &t, 1);
	check_transport_write_only(t, "source");
	check_transport_write_only(a.t, "destination");
	assert_int_equal(a.ops->expose_region(a.t, 0, dst, rlen), 0);
	assert_int_equal(pc_rdma_verbs(a.t, &v), 0);
	assert_true(v.exposed[0]);

	assert_int_equal(probe_once(v.pd, IBV_WR_RDMA_WRITE, (uintptr_t)dst, v.rkey[0], 4096,
				    0x77, NULL), IBV_WC_SUCCESS);
	assert_true(all_bytes(dst, 4096, 0x77));

	memset(out, 0, sizeof(out));
	st = probe_once(v.pd, IBV_WR_RDMA_READ, (uintptr_t)dst + 8192, v.rkey[0], 4096, 0, out);
	printf("# RDMA READ with a region key, queue pairs allowing it: %s\n",
	       ibv_wc_status_str(st));
	assert_int_equal(st, IBV_WC_REM_ACCESS_ERR);

	cmr = ibv_reg_mr(v.pd, ctl, 4096, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
	assert_non_null(cmr);
	assert_int_equal(probe_once(v.pd, IBV_WR_RDMA_READ, (uintptr_t)ctl, cmr->rkey, 4096, 0,
				    out), IBV_WC_SUCCESS);
	assert_true(all_bytes(out, 4096, 0xc7));
	ibv_dereg_mr(cmr);

	pc_tp_close(t);
	pc_tp_close(a.t);
	a.ops->listener_close(l);
	free(dst);
	free(ctl);
}

/* Source memory is registered for local access only: with its key and no
 * queue-pair limit, a probe can neither read nor write it (on-demand
 * chunks and pin-all alike). The credit words each side exposes can be
 * written (that is their job) but not read. */
static void keys__source_memory_not_remotely_accessible(void **state)
{
	(void)state;
	for (int pin_all = 0; pin_all < 2; pin_all++) {
		struct pc_listener *l;
		struct acceptor a;
		struct pc_transport *t;
		struct pc_rdma_verbs v;
		size_t rlen = 1 << 20;
		uint8_t *src = malloc(rlen), *dst = calloc(1, rlen), msg[8] = "done";
		struct iovec iov = { msg, 4 };
		struct pc_page_run run = { src, 0, 0, rlen };
		uint32_t lkey, rkey;
		enum ibv_wc_status st;
		size_t len;

		assert_true(src && dst);
		memset(src, 0x5a, rlen);
		if (pin_all)
			setenv("PRECOPY_RDMA_PIN_ALL", "1", 1);
		real_pair(&l, &a, &t, 1);
		unsetenv("PRECOPY_RDMA_PIN_ALL");
		assert_int_equal(a.ops->expose_region(a.t, 0, dst, rlen), 0);
		assert_int_equal(a.ops->reg_local(t, src, rlen), 0);
		assert_int_equal(pc_tp_write_pages(t, 0, &run, 1), 0);
		assert_int_equal(pc_tp_send_msg(t, 0, &iov, 1), 0);
		assert_int_equal(pc_tp_recv_msg(a.t, 0, msg, sizeof(msg), &len), 0);
		assert_int_equal(memcmp(src, dst, rlen), 0);
		assert_int_equal(pc_rdma_local_keys(t, src + 4096, &lkey, &rkey), 0);
		assert_int_equal(pc_rdma_verbs(t, &v), 0);

		st = probe_once(v.pd, IBV_WR_RDMA_READ, (uintptr_t)src + 4096, rkey, 4096, 0,
				NULL);
		printf("# %s: RDMA READ of source memory with its key: %s\n",
		       pin_all ? "pin-all" : "on demand", ibv_wc_status_str(st));
		assert_int_equal(st, IBV_WC_REM_ACCESS_ERR);
		st = probe_once(v.pd, IBV_WR_RDMA_WRITE, (uintptr_t)src + 4096, rkey, 4096, 0xee,
				NULL);
		printf("# %s: RDMA WRITE into source memory with its key: %s\n",
		       pin_all ? "pin-all" : "on demand", ibv_wc_status_str(st));
		assert_int_equal(st, IBV_WC_REM_ACCESS_ERR);
		assert_true(all_bytes(src, rlen, 0x5a));
		st = probe_once(v.pd, IBV_WR_RDMA_READ, v.credit_addr, v.credit_rkey, 8, 0, NULL);
		printf("# RDMA READ of the credit words: %s\n", ibv_wc_status_str(st));
		assert_int_equal(st, IBV_WC_REM_ACCESS_ERR);

		pc_tp_close(t);
		pc_tp_close(a.t);
		a.ops->listener_close(l);
		free(src);
		free(dst);
	}
}

/* --- the end of a migration: keys revoked before resume and before return --------- */

/*
 * The destination's listener and connection wrapped so that the test sees
 * the real connection (its protection domain and region keys) and gets
 * control when the engine closes it: the last moment inside
 * precopy_incoming() at which its keys could still be used.
 */
struct spy_listener {
	struct pc_listener base;
	struct pc_listener *real;
};

struct spy_tp {
	struct pc_transport base;
	struct pc_transport *real;
};

/* What the spy saw. The engine's hooks and close run on the destination's
 * thread; they ask the test's thread to probe (cmocka's checks belong
 * there) and wait for the answer. */
static struct {
	struct pc_transport *real;
	struct ibv_pd *pd;
	uint32_t rkey;
	bool have_key;
	uint8_t *ram;
	size_t len;
	int load_err;                   /* what load_device_state returns */
	enum ibv_wc_status at_load, at_resume, at_close;
	bool probed_load, probed_resume, probed_close, landed;
	unsigned resumed;
	/* probe requests from the destination's thread */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int req;                        /* 1 asked, 2 answered */
	bool done;                      /* precopy_incoming() returned */
	enum ibv_wc_status answer;
} spy = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

#define REAL(t) (((struct spy_tp *)(t))->real)

static void spy_sync_why(struct pc_transport *t)
{
	if (!t->why[0] && REAL(t)->why[0])
		memcpy(t->why, REAL(t)->why, sizeof(t->why));
}

/* Destination's thread: have the test's thread probe region 0's old key;
 * its status. */
static enum ibv_wc_status spy_ask(bool *probed)
{
	enum ibv_wc_status st;

	pthread_mutex_lock(&spy.mu);
	spy.req = 1;
	pthread_cond_broadcast(&spy.cv);
	while (spy.req != 2)
		pthread_cond_wait(&spy.cv, &spy.mu);
	spy.req = 0;
	st = spy.answer;
	*probed = true;
	pthread_mutex_unlock(&spy.mu);
	return st;
}

/* Test's thread: a write of 4 KiB of 0xEE with region 0's key into its
 * middle page, from a probe in the destination's protection domain. */
static enum ibv_wc_status spy_probe(void)
{
	size_t off = (spy.len / 2) & ~(size_t)4095;
	enum ibv_wc_status st;

	st = probe_once(spy.pd, IBV_WR_RDMA_WRITE, (uintptr_t)spy.ram + off, spy.rkey, 4096,
			0xee, NULL);
	if (all_bytes(spy.ram + off, 4096, 0xee))
		spy.landed = true;
	return st;
}

/* Test's thread: answer probe requests until precopy_incoming() returns. */
static void spy_serve(void)
{
	pthread_mutex_lock(&spy.mu);
	for (;;) {
		while (spy.req != 1 && !spy.done)
			pthread_cond_wait(&spy.cv, &spy.mu);
		if (spy.req != 1)
			break;
		pthread_mutex_unlock(&spy.mu);
		spy.answer = spy_probe();
		pthread_mutex_lock(&spy.mu);
		spy.req = 2;
		pthread_cond_broadcast(&spy.cv);
	}
	pthread_mutex_unlock(&spy.mu);
}

static int spy_listener_addr(struct pc_listener *l, char *buf, size_t len)
{
	struct pc_listener *r = ((struct spy_listener *)l)->real;

	return pc_tp_listener_addr(r, buf, len);
}

static int spy_listener_abort(struct pc_listener *l)
{
	struct pc_listener *r = ((struct spy_listener *)l)->real;

	return pc_tp_listener_abort(r);
}

static void spy_listener_close(struct pc_listener *l)
{
	struct pc_listener *r = ((struct spy_listener *)l)->real;

	pc_tp_listener_close(r);
	free(l);
}

/* spy_raw merged over the -EOPNOTSUPP stubs (spy_dest_start), as the
 * built-in tables are: the engine calls ops without testing for NULL. */
static struct pc_transport_ops spy_ops;

static int spy_accept(struct pc_listener *l, const struct pc_transport_opts *o,
		      struct pc_transport **out)
{
	struct pc_listener *r = ((struct spy_listener *)l)->real;
	struct pc_transport *rt;
	struct spy_tp *t;
	int err = pc_tp_accept(r, o, &rt);

	if (err)
		return err;
	t = calloc(1, sizeof(*t));
	if (!t) {
		pc_tp_close(rt);
		return -ENOMEM;
	}
	t->base.ops = &spy_ops;
	t->base.nchan = rt->nchan;
	t->real = rt;
	spy.real = rt;
	*out = &t->base;
	return 0;
}

static int spy_abort(struct pc_transport *t)
{
	return pc_tp_abort(REAL(t));
}

static void spy_close(struct pc_transport *t)
{
	if (spy.have_key)
		spy.at_close = spy_ask(&spy.probed_close);
	pc_tp_close(REAL(t));
	spy.real = NULL;
	free(t);
}

static int spy_expose_region(struct pc_transport *t, uint32_t id, void *a, size_t len)
{
	struct pc_rdma_verbs v;
	int err = pc_tp_expose_region(REAL(t), id, a, len);

	if (!err && id == 0 && pc_rdma_verbs(REAL(t), &v) == 0) {
		spy.pd = v.pd;
		spy.rkey = v.rkey[0];
		spy.have_key = v.exposed[0];
	}
	spy_sync_why(t);
	return err;
}

static int spy_unexpose_all(struct pc_transport *t)
{
	return pc_tp_unexpose_all(REAL(t));
}

static int spy_reg_local(struct pc_transport *t, const void *a, size_t len)
{
	return pc_tp_reg_local(REAL(t), a, len);
}

static int spy_reg_stats(struct pc_transport *t, struct pc_tp_reg_stats *out)
{
	return pc_tp_reg_stats(REAL(t), out);
}

static int spy_send_msg(struct pc_transport *t, unsigned chan, const struct iovec *iov,
			int iovcnt)
{
	int err = pc_tp_send_msg(REAL(t), chan, iov, iovcnt);

	spy_sync_why(t);
	return err;
}

static int spy_recv_msg(struct pc_transport *t, unsigned chan, void *buf, size_t cap,
			size_t *len)
{
	int err = pc_tp_recv_msg(REAL(t), chan, buf, cap, len);

	spy_sync_why(t);
	return err;
}

static int spy_write_pages(struct pc_transport *t, unsigned chan,
			   const struct pc_page_run *runs, unsigned n)
{
	return pc_tp_write_pages(REAL(t), chan, runs, n);
}

static const struct pc_transport_ops spy_raw = {
	.scheme = "rdma",
	.caps = PC_TCAP_DIRECT_WRITE | PC_TCAP_NEEDS_REG,
	.listener_addr = spy_listener_addr,
	.accept = spy_accept,
	.listener_abort = spy_listener_abort,
	.listener_close = spy_listener_close,
	.abort = spy_abort,
	.close = spy_close,
	.expose_region = spy_expose_region,
	.unexpose_all = spy_unexpose_all,
	.reg_local = spy_reg_local,
	.reg_stats = spy_reg_stats,
	.send_msg = spy_send_msg,
	.recv_msg = spy_recv_msg,
	.write_pages = spy_write_pages,
};

static int spy_load(void *o, const void *buf, size_t len)
{
	(void)o, (void)buf, (void)len;
	if (spy.have_key)
		spy.at_load = spy_ask(&spy.probed_load);
	return spy.load_err;
}

static int spy_resume(void *o)
{
	(void)o;
	spy.resumed++;
	if (spy.have_key)
		spy.at_resume = spy_ask(&spy.probed_resume);
	return 0;
}

struct spy_dest {
	struct precopy_session *s;
	pthread_t thread;
	int err;
	char uri[200];
};

static void *spy_dest_main(void *arg)
{
	struct spy_dest *d = arg;

	d->err = precopy_incoming(d->s);
	pthread_mutex_lock(&spy.mu);
	spy.done = true;
	pthread_cond_broadcast(&spy.cv);
	pthread_mutex_unlock(&spy.mu);
	return NULL;
}

/* A destination session of @ram bytes whose listener is the spy's. */
static void spy_dest_start(struct spy_dest *d, size_t ram, int load_err)
{
	struct precopy_callbacks cb = { .load_device_state = spy_load, .resume_vm = spy_resume };
	const struct pc_transport_ops *ops = pc_transport_find("rdma");
	struct pc_transport_opts o = { 0 };
	struct spy_listener *l = calloc(1, sizeof(*l));

	pthread_mutex_lock(&spy.mu);
	spy.real = NULL;
	spy.pd = NULL;
	spy.have_key = spy.landed = spy.done = false;
	spy.probed_load = spy.probed_resume = spy.probed_close = false;
	spy.resumed = 0;
	spy.req = 0;
	spy.load_err = load_err;
	pthread_mutex_unlock(&spy.mu);
	spy.len = ram;
	spy.ram = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(l && spy.ram != MAP_FAILED);
	assert_int_equal(ops->listen(listen_uri + 5, &o, &l->real), 0);
	pc_transport_merge(&spy_ops, &spy_raw);
	l->base.ops = &spy_ops;
	assert_int_equal(precopy_new(PRECOPY_ROLE_DEST, NULL, &cb, &d->s), 0);
	assert_true(precopy_add_region(d->s, spy.ram, ram, PRECOPY_DIRTY_AUTO) >= 0);
	assert_int_equal(pc_session_set_listener(d->s, &l->base), 0);
	assert_int_equal(precopy_local_uri(d->s, d->uri, sizeof(d->uri)), 0);
	assert_int_equal(pthread_create(&d->thread, NULL, spy_dest_main, d), 0);
}

static void spy_dest_free(struct spy_dest *d)
{
	precopy_delete(&d->s);
	munmap(spy.ram, spy.len);
	spy.ram = NULL;
}

/* The source guest runs on, holds what it wrote, and migrates again to a
 * fresh destination. */
static void intact_then_retry(struct pc_guest *g)
{
	struct pc_guest_desc desc;
	struct h_dest d;
	struct h_src s;
	char why[256];
	size_t len;
	void *mem = pc_guest_ram(g, &len);

	assert_true(h_guest_runs(g));
	pc_guest_pause(g);
	pc_guest_describe(g, &desc);
	if (pc_guest_verify(mem, len, &desc, why, sizeof(why)))
		fail_msg("source memory not intact: %s", why);
	pc_guest_resume(g);

	assert_int_equal(h_dest_start_key(&d, len, listen_uri, false, NULL, 0), 0);
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	assert_int_equal(d.resumed, 1);
	assert_int_equal(memcmp(mem, d.ram, len), 0);
	h_src_free(&s);
	h_dest_free(&d);
	pc_guest_resume(g); /* it "runs at the destination"; bring it back */
}

enum end_how { END_VERIFIED, END_LOAD_FAILS, END_SOURCE_CANCELS };

static void end_with(enum end_how how)
{
	size_t ram = 32 * MiB;
	struct pc_guest *g = make_guest(ram, 1.0 * MiB);
	struct precopy_params p;
	struct precopy_stats st;
	struct spy_dest d;
	struct h_src s;
	struct leaks lk;
	int serr;

	leaks_mark(&lk);
	precopy_params_init(&p);
	if (how == END_SOURCE_CANCELS)
		p.max_bandwidth = 4 * MiB; /* still in bulk when cancelled */
	spy_dest_start(&d, ram, how == END_LOAD_FAILS ? -EIO : 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	if (how == END_SOURCE_CANCELS) {
		assert_true(h_wait_status(d.s, PRECOPY_STATUS_BULK, 60000));
		usleep(500 * 1000);
		assert_int_equal(precopy_cancel(s.s), 0);
	}
	spy_serve(); /* until precopy_incoming() returns */
	pthread_join(d.thread, NULL);
	serr = h_src_join(&s);
	precopy_query(d.s, &st);
	printf("# destination: %s%s%s\n", precopy_status_name(st.status), st.error[0] ? ": " : "",
	       st.error);
	assert_true(spy.have_key);
	/* the keys are dead when the engine closes the connection */
	assert_true(spy.probed_close);
	printf("# write with the old key at close: %s\n", ibv_wc_status_str(spy.at_close));
	assert_int_equal(spy.at_close, IBV_WC_REM_ACCESS_ERR);
	assert_false(spy.landed);
	switch (how) {
	case END_VERIFIED:
		assert_int_equal(serr, 0);
		assert_int_equal(d.err, 0);
		assert_int_equal(st.status, PRECOPY_STATUS_COMPLETED);
		assert_int_equal(spy.resumed, 1);
		/* ...and already when the guest is started */
		assert_true(spy.probed_load && spy.probed_resume);
		printf("# at load_device_state: %s; at resume_vm: %s\n",
		       ibv_wc_status_str(spy.at_load), ibv_wc_status_str(spy.at_resume));
		assert_int_equal(spy.at_load, IBV_WC_REM_ACCESS_ERR);
		assert_int_equal(spy.at_resume, IBV_WC_REM_ACCESS_ERR);
		break;
	case END_LOAD_FAILS:
		assert_true(serr < 0);
		assert_true(d.err < 0);
		assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
		assert_non_null(strstr(st.error, "load_device_state"));
		assert_int_equal(spy.resumed, 0);
		assert_true(spy.probed_load);
		assert_int_equal(spy.at_load, IBV_WC_REM_ACCESS_ERR);
		break;
	case END_SOURCE_CANCELS:
		assert_int_equal(serr, -ECANCELED);
		assert_true(d.err < 0);
		assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
		assert_int_equal(spy.resumed, 0);
		break;
	}
	if (how != END_VERIFIED) {
		precopy_query(s.s, &st);
		printf("# source: %s: %s\n", precopy_status_name(st.status), st.error);
		assert_true(st.error[0] != '\0');
		assert_int_equal(s.resumes, s.stops);
	}
	h_src_free(&s);
	spy_dest_free(&d);
	if (how == END_VERIFIED)
		pc_guest_resume(g);
	leaks_check(&lk, "after the migration");
	intact_then_retry(g);
	pc_guest_delete(&g);
}

static void end__keys_dead_before_resume_when_verified(void **state)
{
	(void)state;
	end_with(END_VERIFIED);
}

static void end__keys_dead_when_load_fails(void **state)
{
	(void)state;
	end_with(END_LOAD_FAILS);
}

static void end__keys_dead_when_source_cancels(void **state)
{
	(void)state;
	end_with(END_SOURCE_CANCELS);
}

/* --- a hostile source against the engine ---------------------------------------------- */

/* A peer with the key says a good HELLO, gets the region's key and reads:
 * refused, and the destination fails without resuming anything. */
static void hostile__engine_dest_fails(void **state)
{
	size_t ram = 8 * MiB;
	uint64_t lens[1] = { ram };
	uint8_t hello[PC_WIRE_HDR + 32 + 8 * PRECOPY_MAX_REGIONS];
	struct pc_wire_msg m;
	struct precopy_stats st;
	struct hostile h;
	struct h_dest d;
	struct leaks lk;
	char why[160];
	enum ibv_wc_status rs;
	int n;

	(void)state;
	leaks_mark(&lk);
	assert_int_equal(h_dest_start_key(&d, ram, listen_uri, false, "k", 1), 0);
	memset(d.ram, 0x5a, ram);
	assert_int_equal(hostile_connect(&h, d.uri, "k"), 0);
	n = pc_wire_enc_hello(hello, sizeof(hello), PC_CAP_ALL, 1, lens, 1);
	assert_true(n > 0);
	hostile_send(&h, hello, (size_t)n);
	assert_int_equal(hostile_recv(&h), 0);
	assert_int_equal(pc_wire_decode(h.msg, h.msglen, &m, why, sizeof(why)), 0);
	assert_int_equal(m.type, PC_MSG_HELLO_ACK);
	assert_int_equal(m.u.hello_ack.status, 0);
	assert_true(h.reg[0].valid);
	assert_int_equal(h.reg[0].addr, (uintptr_t)d.ram);
	memset(h.buf, 0, 4096);
	rs = hostile_op(&h, IBV_WR_RDMA_READ, h.reg[0].addr, h.reg[0].rkey, 4096);
	printf("# RDMA READ of the incoming guest: %s\n", ibv_wc_status_str(rs));
	assert_int_not_equal(rs, IBV_WC_SUCCESS);
	assert_true(all_bytes(h.buf, 4096, 0));
	hostile_close(&h);
	assert_true(h_dest_join(&d) < 0);
	precopy_query(d.s, &st);
	printf("# destination: %s: %s\n", precopy_status_name(st.status), st.error);
	assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
	assert_int_equal(d.resumed, 0);
	h_dest_free(&d);
	leaks_check(&lk, "after the hostile source");
	run_migration(1, NULL, false, false);
	leaks_check(&lk, "after a good migration");
}

/* --- the source dies -------------------------------------------------------------------- */

static void src_child(const char *uri)
{
	struct pc_guest *g;
	struct precopy_params p;
	struct h_src s;

	g = make_guest(48 * MiB, 1.0 * MiB);
	precopy_params_init(&p);
	p.max_bandwidth = 4 * MiB; /* slow: still sending when killed */
	if (h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO) || h_src_start(&s, uri))
		_exit(3);
	h_src_join(&s);
	_exit(0); /* the parent kills us long before */
}

static void migrate__source_killed_dest_fails(void **state)
{
	size_t ram = 48 * MiB;
	struct precopy_stats st;
	struct h_dest d;
	struct leaks lk;
	int status;
	pid_t pid;

	(void)state;
	leaks_mark(&lk);
	assert_int_equal(h_dest_start_key(&d, ram, listen_uri, false, NULL, 0), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* a fresh image: no verbs context across fork() */
		execl("/proc/self/exe", "test_rdma", "--src-child", addr, d.uri, (char *)NULL);
		_exit(5);
	}
	assert_true(h_wait_status(d.s, PRECOPY_STATUS_BULK, 60000));
	sleep(1);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	assert_true(h_dest_join(&d) < 0);
	precopy_query(d.s, &st);
	printf("# destination: %s: %s\n", precopy_status_name(st.status), st.error);
	assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
	assert_true(st.error[0] != '\0');
	assert_int_equal(d.resumed, 0);
	assert_false(d.have_desc);
	h_dest_free(&d);
	leaks_check(&lk, "after the source was killed");
	run_migration(1, NULL, false, false);
	leaks_check(&lk, "after a good migration");
}

/* --- a replayed connect request ------------------------------------------------------ */

/* A listener of raw rdma_cm that keeps the private data of the first
 * connect request and refuses it: a genuine request, as someone on the
 * fabric could have recorded it. Runs in a thread: no cmocka checks. */
struct recorder {
	struct rdma_event_channel *ec;
	struct rdma_cm_id *lid;
	uint8_t req[56];
	size_t len;
};

static void *recorder_main(void *arg)
{
	struct recorder *r = arg;
	struct pollfd pf = { .fd = r->ec->fd, .events = POLLIN };
	struct rdma_cm_event *ev;
	struct rdma_cm_id *id;

	if (poll(&pf, 1, 60000) != 1 || rdma_get_cm_event(r->ec, &ev))
		return NULL;
	id = ev->id;
	if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST && ev->param.conn.private_data) {
		r->len = ev->param.conn.private_data_len;
		if (r->len > sizeof(r->req))
			r->len = sizeof(r->req);
		memcpy(r->req, ev->param.conn.private_data, r->len);
	}
	rdma_ack_cm_event(ev);
	rdma_reject(id, NULL, 0);
	rdma_destroy_id(id);
	return NULL;
}

/*
 * A connect request recorded from a genuine source (same long-lived key),
 * replayed to a fresh listener from another queue pair: its token is good,
 * but it cannot answer the listener's fresh challenge, so the listener
 * drops it (the replayer is disconnected) and keeps waiting; the real
 * source then connects.
 */
static void connect__replayed_request_refused(void **state)
{
	const struct pc_transport_ops *ops = pc_transport_find("rdma");
	struct pc_transport_opts o = { .channels = 1, .key = "k", .key_len = 1 };
	struct acceptor a = { .ops = ops, .key = "k", .err = 1 };
	struct recorder r = { 0 };
	struct sockaddr_in la;
	struct pc_transport *t = NULL;
	struct hostile h;
	uint8_t rep[56], proof[16];
	enum rdma_cm_event_type ev = RDMA_CM_EVENT_ESTABLISHED;
	bool evented = false;
	char uri[200];
	pthread_t th;

	(void)state;
	/* 1. record a genuine request */
	r.ec = rdma_create_event_channel();
	assert_non_null(r.ec);
	addr_of(addr, 0, &la);
	assert_int_equal(rdma_create_id(r.ec, &r.lid, NULL, RDMA_PS_TCP), 0);
	assert_int_equal(rdma_bind_addr(r.lid, (struct sockaddr *)&la), 0);
	assert_int_equal(rdma_listen(r.lid, 1), 0);
	snprintf(uri, sizeof(uri), "%s:%u", addr, ntohs(rdma_get_src_port(r.lid)));
	assert_int_equal(pthread_create(&th, NULL, recorder_main, &r), 0);
	assert_true(ops->connect(uri, &o, &t) < 0);
	pthread_join(th, NULL);
	assert_null(t);
	assert_int_equal(r.len, 56);
	rdma_destroy_id(r.lid);
	rdma_destroy_event_channel(r.ec);

	/* 2. replay it to a fresh listener with the same key */
	assert_int_equal(ops->listen(listen_uri + 5, &o, &a.l), 0);
	assert_int_equal(ops->listener_addr(a.l, uri, sizeof(uri)), 0);
	assert_int_equal(pthread_create(&th, NULL, accept_main, &a), 0);
	assert_int_equal(hostile_open(&h, uri, r.req, false, NULL, rep), 0);
	/* without the key, the best it can do is to answer something */
	memset(proof, 0xa5, sizeof(proof));
	hostile_send_auth(&h, proof);
	/* until the listener drops it, or (the fault) takes it as the source;
	 * a minute at most, a guard against a hang and not a timing check */
	for (unsigned i = 0; i < 600 && __atomic_load_n(&a.err, __ATOMIC_ACQUIRE) == 1; i++) {
		struct pollfd pf = { .fd = h.ec->fd, .events = POLLIN };

		if (poll(&pf, 1, 100) == 1) {
			ev = cm_next(h.ec, NULL, NULL, NULL);
			evented = true;
			break;
		}
	}
	printf("# replayed request: %s; the acceptor %s\n",
	       evented ? rdma_event_str(ev) : "no event",
	       __atomic_load_n(&a.err, __ATOMIC_ACQUIRE) == 1 ? "is still waiting"
							     : "took it as its source");
	assert_int_equal(__atomic_load_n(&a.err, __ATOMIC_ACQUIRE), 1);
	assert_true(evented);
	assert_int_equal(ev, RDMA_CM_EVENT_DISCONNECTED);
	hostile_close(&h);

	/* 3. the real source still gets through */
	assert_int_equal(ops->connect(uri + 5, &o, &t), 0);
	pthread_join(th, NULL);
	assert_int_equal(a.err, 0);
	pc_tp_close(t);
	pc_tp_close(a.t);
	ops->listener_close(a.l);
}

/* --- a peer process stopped (SIGSTOP) ----------------------------------------------- */

/*
 * The source process is stopped during the bulk pass: its NIC still
 * acknowledges every packet, but its process answers no heartbeat, so the
 * destination fails with ETIMEDOUT after its timeout (3 s here) and
 * resumes nothing. (Waits are bounded by a minute: a guard, not a timing
 * check.)
 */
static void hung__source_stopped_dest_fails(void **state)
{
	size_t ram = 48 * MiB;
	struct precopy_params p;
	struct precopy_stats st;
	struct h_dest d;
	struct h_dest_opts dopts = { .p = &p, .uri = listen_uri };
	struct leaks lk;
	bool failed;
	double t0;
	int status;
	pid_t pid;

	(void)state;
	leaks_mark(&lk);
	precopy_params_init(&p);
	p.timeout_ms = 3000;
	assert_int_equal(h_dest_start_opts(&d, ram, &dopts), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		execl("/proc/self/exe", "test_rdma", "--src-child", addr, d.uri, (char *)NULL);
		_exit(5);
	}
	if (!h_wait_status(d.s, PRECOPY_STATUS_BULK, 60000)) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		fail_msg("the source never reached the bulk pass");
	}
	sleep(1);
	kill(pid, SIGSTOP);
	t0 = now_s();
	failed = h_wait_status(d.s, PRECOPY_STATUS_FAILED, 60000);
	precopy_query(d.s, &st);
	printf("# destination %.1f s after SIGSTOP of the source: %s: %s\n", now_s() - t0,
	       precopy_status_name(st.status), st.error);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	assert_true(failed);
	assert_true(h_dest_join(&d) < 0);
	assert_non_null(strstr(st.error, "3000 ms"));
	assert_int_equal(d.resumed, 0);
	assert_false(d.have_desc);
	h_dest_free(&d);
	leaks_check(&lk, "after the stopped source");
}

/* And the other way: the destination process is stopped during the bulk
 * pass; the source fails after its timeout, its guest running and
 * intact. */
static void hung__dest_stopped_source_fails(void **state)
{
	size_t ram = 48 * MiB, len;
	struct pc_guest *g;
	struct pc_guest_desc desc;
	struct precopy_params p;
	struct precopy_stats st;
	struct h_src s;
	char uri[128], why[256];
	int pfd[2], status;
	bool failed;
	double t0;
	pid_t pid;
	void *mem;

	(void)state;
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char fd[16];

		close(pfd[0]);
		snprintf(fd, sizeof(fd), "%d", pfd[1]);
		execl("/proc/self/exe", "test_rdma", "--dest-child", addr, fd, (char *)NULL);
		_exit(5);
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], uri, sizeof(uri)), (ssize_t)sizeof(uri));
	close(pfd[0]);

	g = make_guest(ram, 1.0 * MiB);
	mem = pc_guest_ram(g, &len);
	precopy_params_init(&p);
	p.max_bandwidth = 4 * MiB; /* still in bulk when the peer stops */
	p.timeout_ms = 3000;
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, uri), 0);
	if (!h_wait_status(s.s, PRECOPY_STATUS_BULK, 60000)) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		fail_msg("the source never reached the bulk pass");
	}
	sleep(1);
	kill(pid, SIGSTOP);
	t0 = now_s();
	failed = h_wait_status(s.s, PRECOPY_STATUS_FAILED, 60000);
	precopy_query(s.s, &st);
	printf("# source %.1f s after SIGSTOP of the destination: %s: %s\n", now_s() - t0,
	       precopy_status_name(st.status), st.error);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	assert_true(failed);
	assert_true(h_src_join(&s) < 0);
	assert_int_equal(s.resumes, s.stops);
	h_src_free(&s);
	assert_true(h_guest_runs(g));
	pc_guest_pause(g);
	pc_guest_describe(g, &desc);
	assert_int_equal(pc_guest_verify(mem, len, &desc, why, sizeof(why)), 0);
	pc_guest_delete(&g);
}

/* Open what librdmacm and libibverbs keep open for the life of the
 * process (the device's context), so that leak checks count only what a
 * migration leaves behind. */
static void warm_up(void)
{
	const struct pc_transport_ops *ops = pc_transport_find("rdma");
	struct pc_transport_opts o = { .channels = 1 };
	struct acceptor a = { .ops = ops, .key = "", .err = 1 };
	struct pc_transport *t = NULL;
	char uri[200];
	pthread_t th;

	if (ops->listen(listen_uri + 5, &o, &a.l))
		return;
	if (!ops->listener_addr(a.l, uri, sizeof(uri)) &&
	    !pthread_create(&th, NULL, accept_main, &a)) {
		if (ops->connect(uri + 5, &o, &t))
			ops->listener_abort(a.l);
		pthread_join(th, NULL);
		pc_tp_close(t);
		if (!a.err)
			pc_tp_close(a.t);
	}
	ops->listener_close(a.l);
}

/* Every case leaves the process as it found it: no descriptor, no
 * registered (pinned) memory. */
static struct leaks at_setup;

static int setup(void **state)
{
	(void)state;
	leaks_mark(&at_setup);
	return 0;
}

static int teardown(void **state)
{
	struct leaks now;

	(void)state;
	leaks_mark(&now);
	if (now.fds != at_setup.fds || now.pinned != at_setup.pinned) {
		fprintf(stderr, "left behind: %ld descriptors, %ld KiB pinned\n",
			now.fds - at_setup.fds, now.pinned - at_setup.pinned);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(connect__wrong_key_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(connect__impostor_destination_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(connect__cancel_while_waiting_for_accept, setup,
						teardown),
		cmocka_unit_test_setup_teardown(write_pages__stale_key_refused_after_unexpose, setup, teardown),
		cmocka_unit_test_setup_teardown(write_pages__zero_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(migrate__pattern_1_qp_with_key, setup, teardown),
		cmocka_unit_test_setup_teardown(migrate__pattern_2_qps_pin_all, setup, teardown),
		cmocka_unit_test_setup_teardown(migrate__pin_all_env_overrides, setup, teardown),
		cmocka_unit_test_setup_teardown(migrate__dest_killed_source_survives, setup, teardown),
		cmocka_unit_test_setup_teardown(hostile__read_of_region_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(hostile__write_outside_region_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(keys__region_key_reads_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(keys__source_memory_not_remotely_accessible, setup, teardown),
		cmocka_unit_test_setup_teardown(end__keys_dead_before_resume_when_verified, setup, teardown),
		cmocka_unit_test_setup_teardown(end__keys_dead_when_load_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(end__keys_dead_when_source_cancels, setup, teardown),
		cmocka_unit_test_setup_teardown(hostile__engine_dest_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(migrate__source_killed_dest_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(connect__replayed_request_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(hung__source_stopped_dest_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(hung__dest_stopped_source_fails, setup, teardown),
	};
	const char *a = argc > 1 ? argv[1] : getenv("PRECOPY_RDMA_ADDR");
	const char *req = getenv("PRECOPY_REQUIRE_RDMA");
	bool require = req && !strcmp(req, "1"); /* CI: no skipping */

	if (argc == 4 && !strcmp(argv[1], "--dest-child")) {
		snprintf(listen_uri, sizeof(listen_uri), "rdma:%s:0", argv[2]);
		dest_child(atoi(argv[3]), 48 * MiB);
	}
	if (argc == 4 && !strcmp(argv[1], "--src-child"))
		src_child(argv[3]);

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!pc_transport_find("rdma")) {
		printf("the RDMA transport is not built in (needs libibverbs-dev, "
		       "librdmacm-dev, nettle-dev): %s\n", require ? "failed, since "
		       "PRECOPY_REQUIRE_RDMA=1" : "skipped");
		return require ? 1 : 77;
	}
	if (!a || !*a) {
		printf("no RDMA address (argument or PRECOPY_RDMA_ADDR): %s\n", require ?
		       "failed, since PRECOPY_REQUIRE_RDMA=1" : "skipped");
		return require ? 1 : 77;
	}
	snprintf(addr, sizeof(addr), "%s", a);
	snprintf(listen_uri, sizeof(listen_uri), "rdma:%s:0", addr);
	warm_up();
	cmocka_set_test_filter(getenv("PRECOPY_TEST_FILTER"));
	return cmocka_run_group_tests_name("rdma", tests, NULL, NULL);
}

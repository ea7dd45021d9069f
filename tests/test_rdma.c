/* SPDX-License-Identifier: MIT */
/*
 * RDMA-specific cases, run on a real or Soft-RoCE device:
 *   test_rdma ADDR     (an IPv4 address on the RDMA device's netdev;
 *                       PRECOPY_RDMA_ADDR if not given)
 * Whole migrations with the verification pattern over 1 and 2 queue pairs
 * (on-demand and pin-all registration, chosen with precopy_set_registration()
 * or overridden by PRECOPY_RDMA_PIN_ALL, and what each end registered), a
 * wrong key refused at connect, a
 * stale rkey refused once the destination revoked its regions, and a
 * destination killed mid-migration failing the source cleanly with its
 * guest running and intact. Exits 77 when RDMA is not built or no address.
 */
#include <errno.h>
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "harness.h"
#include "session.h"
#include "transport.h"

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
	struct pc_transport_opts o = { .channels = 2, .key = "wrong key", .key_len = 9 };
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
	printf("# source failed %.2f s after the kill: %s\n", now_s() - t0, st.error);
	assert_true(now_s() - t0 < 20);
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

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(connect__wrong_key_refused),
		cmocka_unit_test(write_pages__stale_key_refused_after_unexpose),
		cmocka_unit_test(migrate__pattern_1_qp_with_key),
		cmocka_unit_test(migrate__pattern_2_qps_pin_all),
		cmocka_unit_test(migrate__pin_all_env_overrides),
		cmocka_unit_test(migrate__dest_killed_source_survives),
	};
	const char *a = argc > 1 ? argv[1] : getenv("PRECOPY_RDMA_ADDR");

	if (argc == 4 && !strcmp(argv[1], "--dest-child")) {
		snprintf(listen_uri, sizeof(listen_uri), "rdma:%s:0", argv[2]);
		dest_child(atoi(argv[3]), 48 * MiB);
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!pc_transport_find("rdma")) {
		printf("the RDMA transport is not built in (needs libibverbs-dev, "
		       "librdmacm-dev, nettle-dev): skipped\n");
		return 77;
	}
	if (!a || !*a) {
		printf("no RDMA address (argument or PRECOPY_RDMA_ADDR): skipped\n");
		return 77;
	}
	snprintf(addr, sizeof(addr), "%s", a);
	snprintf(listen_uri, sizeof(listen_uri), "rdma:%s:0", addr);
	cmocka_set_test_filter(getenv("PRECOPY_TEST_FILTER"));
	return cmocka_run_group_tests_name("rdma", tests, NULL, NULL);
}

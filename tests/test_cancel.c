/* SPDX-License-Identifier: MIT */
/*
 * Cancel at either end in every state: before the start, while
 * connecting, in setup, bulk, iterate and switchover, and after the end.
 *   test_cancel [tcp]       over tcp:127.0.0.1:0
 *   test_cancel shm         over shm:PATH, the destination's RAM a memfd
 *                           (pages written straight into it)
 * Whatever is cancelled: the cancelled end reports CANCELLED, the other
 * end never reports success, the source guest runs with its memory intact,
 * it then migrates to a fresh destination (every page checked), and no
 * descriptor is left open.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "transport.h"

#define MiB (1ull << 20)
#define RAM (32 * MiB)

static long fds_at_start;
static bool shm;              /* over shm: instead of tcp: */
static char shm_dir[64];
static unsigned shm_seq;
static char uri_buf[128];

/* A destination on this run's transport: tcp:127.0.0.1:0, or a fresh
 * shm:PATH with memfd RAM. */
static int dest_start(struct h_dest *d, const struct precopy_params *p, bool run,
		      int (*on_load)(struct h_dest *))
{
	struct h_dest_opts o = { .p = p, .no_run = !run, .on_load = on_load };

	if (shm) {
		snprintf(uri_buf, sizeof(uri_buf), "shm:%s/c%u.sock", shm_dir, shm_seq++);
		o.uri = uri_buf;
		o.memfd = true;
	}
	return h_dest_start_opts(d, RAM, &o);
}

static int setup(void **state)
{
	(void)state;
	fds_at_start = h_count_fds();
	return 0;
}

static int teardown(void **state)
{
	long now = h_count_fds();

	(void)state;
	if (now != fds_at_start) {
		fprintf(stderr, "descriptors leaked: %ld before, %ld after\n", fds_at_start, now);
		return -1;
	}
	return 0;
}

/* A guest that keeps writing, some of its pages zero. */
static struct pc_guest *make_guest(void)
{
	return h_guest_new(&(struct pc_guest_opts){ .ram = RAM, .dirty_rate = 16.0 * MiB,
						    .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
						    .zero_pct = 10, .seed = 7 });
}

/* Free @old_s and @old_d (either may be NULL); then the guest runs, holds
 * exactly what it wrote, and migrates again; then delete it. */
static void intact_then_retry(struct h_src *old_s, struct h_dest *old_d, struct pc_guest **gp)
{
	struct h_dest d;
	struct h_src s;

	h_free_all(old_s, old_d, NULL);
	h_check_guest_intact(*gp, "source");
	assert_int_equal(dest_start(&d, NULL, true, NULL), 0);
	h_migrate_ok(&s, &d, *gp, NULL);
	h_free_all(&s, &d, gp);
}

/* A destination on this run's transport (@on_load its hook, if any), and
 * @s migrating @g there with @p. */
static void migrate_to_dest(struct h_src *s, struct h_dest *d, struct pc_guest *g,
			    const struct precopy_params *p, int (*on_load)(struct h_dest *))
{
	assert_int_equal(dest_start(d, NULL, true, on_load), 0);
	h_src_go(s, g, p, d->uri);
}

/* --- the source cancelled -------------------------------------------- */

/* A peer that accepts TCP connections (the kernel does) and never answers:
 * the source waits in setup for HELLO_ACK. */
static int mute_listener(char *uri, size_t len)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 4), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	snprintf(uri, len, "tcp:127.0.0.1:%u", ntohs(a.sin_port));
	return fd;
}

/* The same over shm: a listener of the transport that accepts the
 * connection and then says nothing. */
struct mute {
	int fd;             /* tcp */
	struct h_accept a;  /* shm */
	char uri[128];      /* where it listens */
};

static void mute_start(struct mute *m)
{
	const struct pc_transport_ops *ops = pc_transport_find("shm");
	struct pc_transport_opts o = { 0 };

	memset(m, 0, sizeof(*m));
	m->fd = -1;
	if (!shm) {
		m->fd = mute_listener(m->uri, sizeof(m->uri));
		return;
	}
	snprintf(m->uri, sizeof(m->uri), "shm:%s/mute%u.sock", shm_dir, shm_seq++);
	assert_int_equal(ops->listen(m->uri + 4, &o, &m->a.l), 0);
	h_accept_start(&m->a);
}

static void mute_stop(struct mute *m)
{
	if (m->fd >= 0) {
		close(m->fd);
		return;
	}
	m->a.l->ops->listener_abort(m->a.l);
	h_accept_join(&m->a);
	pc_tp_close(m->a.t);
	m->a.l->ops->listener_close(m->a.l);
}

/* @s ends with -ECANCELED, CANCELLED and saying why. */
static void source_cancelled(struct h_src *s)
{
	assert_int_equal(h_src_join(s), -ECANCELED);
	h_expect_status(s->s, PRECOPY_STATUS_CANCELLED);
}

/* Start @s for @g with @p towards @uri, a peer that does not answer; once
 * it is in setup and @ms later (still there), cancel it: CANCELLED, the
 * guest never stopped. */
static void cancel_unanswered(struct h_src *s, struct pc_guest *g,
			      const struct precopy_params *p, const char *uri, unsigned ms)
{
	struct precopy_stats st;

	h_src_go(s, g, p, uri);
	assert_true(h_wait_status(s->s, PRECOPY_STATUS_SETUP, 10000));
	usleep(ms * 1000);
	precopy_query(s->s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_SETUP);
	assert_int_equal(precopy_cancel(s->s), 0);
	source_cancelled(s);
	assert_int_equal(s->stops, 0);
}

/* A destination on this run's transport, and @s for @g towards it,
 * cancelled before it starts (@on_stop NULL) or by its stop_vm hook
 * @on_stop: @s ends cancelled (source_cancelled()). */
static void source_cancelled_at(struct h_src *s, struct h_dest *d, struct pc_guest *g,
				void (*on_stop)(struct h_src *s))
{
	assert_int_equal(dest_start(d, NULL, true, NULL), 0);
	assert_int_equal(h_src_new(s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	if (on_stop)
		s->on_stop = on_stop;
	else
		assert_int_equal(precopy_cancel(s->s), 0);
	assert_int_equal(h_src_start(s, d->uri), 0);
	source_cancelled(s);
}

static void cancel__source_before_start(void **state)
{
	struct pc_guest *g = make_guest();
	struct h_dest d;
	struct h_src s;

	(void)state;
	source_cancelled_at(&s, &d, g, NULL);
	assert_int_equal(s.stops, 0);
	/* a session runs once */
	assert_int_equal(precopy_migrate(s.s, d.uri), -EBUSY);
	/* the destination saw no source: it is still waiting */
	assert_int_equal(precopy_cancel(d.s), 0);
	assert_int_equal(h_dest_join(&d), -ECANCELED);
	assert_int_equal(d.resumed, 0);
	intact_then_retry(&s, &d, &g);
}

static void cancel__source_in_setup(void **state)
{
	struct pc_guest *g = make_guest();
	struct h_src s;
	struct mute m;

	(void)state;
	mute_start(&m);
	/* cancelled when connected, waiting for the handshake */
	cancel_unanswered(&s, g, NULL, m.uri, 200);
	mute_stop(&m);
	intact_then_retry(&s, NULL, &g);
}

static void cancel_from_stop_hook(struct h_src *s)
{
	/* in switchover: the guest was just stopped */
	assert_int_equal(precopy_cancel(s->s), 0);
}

static void cancel__source_in_switchover(void **state)
{
	struct pc_guest *g = make_guest();
	struct h_dest d;
	struct h_src s;

	(void)state;
	source_cancelled_at(&s, &d, g, cancel_from_stop_hook);
	assert_true(s.stops >= 1);
	assert_int_equal(s.resumes, s.stops); /* resumed after the cancel */
	assert_true(h_dest_join(&d) < 0);
	assert_int_equal(d.resumed, 0);
	intact_then_retry(&s, &d, &g);
}

/*
 * tcp: a listener whose accept queue is full: the kernel drops further
 * SYNs, so a connect to it neither succeeds nor fails for minutes. Returns
 * the port; @fds gets the listener and the connections that fill its queue.
 */
static unsigned syn_sink(int fds[4])
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);

	fds[0] = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fds[0] >= 0);
	assert_int_equal(bind(fds[0], (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fds[0], 0), 0);
	assert_int_equal(getsockname(fds[0], (struct sockaddr *)&a, &alen), 0);
	for (int i = 1; i < 4; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		assert_true(fds[i] >= 0);
		connect(fds[i], (struct sockaddr *)&a, sizeof(a));
	}
	usleep(100 * 1000);
	return ntohs(a.sin_port);
}

/* shm: a unix socket that listens and never accepts; connect() waits for
 * the listener's verdict there. Returns the listening socket. */
static int shm_never_accepts(char *uri, size_t len)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd;

	snprintf(a.sun_path, sizeof(a.sun_path), "%s/never%u.sock", shm_dir, shm_seq++);
	snprintf(uri, len, "shm:%s", a.sun_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 4), 0); /* and never accept() */
	return fd;
}

/* A source still connecting: a cancel is taken at once. It waits neither
 * for the connect to time out (tcp: here an hour) nor for the transport's
 * own 10 s limit (shm: the error would then say "timed out"). */
static void cancel__source_connecting(void **state)
{
	struct pc_guest *g = make_guest();
	struct precopy_params p;
	struct precopy_stats st;
	struct h_src s;
	char uri[128];
	int fds[4] = { -1, -1, -1, -1 };

	(void)state;
	precopy_params_init(&p);
	if (shm) {
		fds[0] = shm_never_accepts(uri, sizeof(uri));
	} else {
		snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%u", syn_sink(fds));
		p.timeout_ms = 3600000;
	}
	cancel_unanswered(&s, g, &p, uri, 300); /* still connecting */
	precopy_query(s.s, &st);
	print_message("source: %s\n", st.error);
	assert_null(strstr(st.error, "timed out"));
	for (int i = 0; i < 4; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (shm)
		unlink(uri + 4);
	intact_then_retry(&s, NULL, &g);
}

/* Cancel one end (the destination if @at_dest) once it is in @when: that
 * end reports CANCELLED, the other FAILED, the destination never resumes
 * the guest and the source resumes it after each stop. */
static void cancel_in(bool at_dest, enum precopy_status when)
{
	struct pc_guest *g = make_guest();
	struct precopy_session *cancelled, *other;
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;
	int src_err, dest_err;

	precopy_params_init(&p);
	p.max_bandwidth = 16 * MiB; /* a bulk pass of 2 s */
	p.downtime_limit_ms = 1;     /* then iterations until cancelled */
	migrate_to_dest(&s, &d, g, &p, NULL);
	cancelled = at_dest ? d.s : s.s;
	other = at_dest ? s.s : d.s;
	assert_true(h_wait_status(cancelled, when, 30000));
	usleep(100 * 1000);
	assert_int_equal(precopy_cancel(cancelled), 0);
	src_err = h_src_join(&s);
	dest_err = h_dest_join(&d);
	assert_int_equal(at_dest ? dest_err : src_err, -ECANCELED);
	assert_true((at_dest ? src_err : dest_err) < 0); /* never success */
	h_expect_status(cancelled, PRECOPY_STATUS_CANCELLED);
	h_expect_status(other, PRECOPY_STATUS_FAILED);
	assert_int_equal(s.resumes, s.stops);
	assert_int_equal(d.resumed, 0);
	assert_int_equal(precopy_cancel(cancelled), -EALREADY);
	intact_then_retry(&s, &d, &g);
}

H_CASE(cancel__source_in_bulk, cancel_in(false, PRECOPY_STATUS_BULK))
H_CASE(cancel__source_in_iterate, cancel_in(false, PRECOPY_STATUS_ITERATE))
H_CASE(cancel__dest_in_bulk, cancel_in(true, PRECOPY_STATUS_BULK))
H_CASE(cancel__dest_in_iterate, cancel_in(true, PRECOPY_STATUS_ITERATE))

static void cancel__source_after_failure(void **state)
{
	struct pc_guest *g = make_guest();
	struct h_src s;
	struct mute m;

	(void)state;
	mute_start(&m);
	mute_stop(&m); /* nobody listens there now */
	h_src_go(&s, g, NULL, m.uri);
	assert_true(h_src_join(&s) < 0);
	h_expect_status(s.s, PRECOPY_STATUS_FAILED);
	assert_int_equal(precopy_cancel(s.s), -EALREADY);
	h_expect_status(s.s, PRECOPY_STATUS_FAILED);
	intact_then_retry(&s, NULL, &g);
}

/* --- the destination cancelled ---------------------------------------- */

static void cancel__dest_before_start(void **state)
{
	struct h_dest d;

	(void)state;
	assert_int_equal(dest_start(&d, NULL, false, NULL), 0);
	assert_int_equal(precopy_cancel(d.s), 0);
	assert_int_equal(h_dest_run(&d), 0);
	assert_int_equal(h_dest_join(&d), -ECANCELED);
	h_expect_status(d.s, PRECOPY_STATUS_CANCELLED);
	assert_int_equal(d.resumed, 0);
	h_dest_free(&d);
}

static void cancel__dest_in_setup(void **state)
{
	struct h_dest d;

	(void)state;
	assert_int_equal(dest_start(&d, NULL, true, NULL), 0);
	assert_true(h_wait_status(d.s, PRECOPY_STATUS_SETUP, 10000));
	usleep(100 * 1000); /* waiting for a source */
	assert_int_equal(precopy_cancel(d.s), 0);
	assert_int_equal(h_dest_join(&d), -ECANCELED);
	h_expect_status(d.s, PRECOPY_STATUS_CANCELLED);
	h_dest_free(&d);
}

/* From load_device_state: the destination is in switchover, its memory
 * verified; the cancel wins, the guest is not resumed here. */
static int cancel_from_load_hook(struct h_dest *d)
{
	if (precopy_cancel(d->s) != 0)
		abort(); /* not the test's thread: no cmocka check here */
	return 0;
}

static void cancel__dest_in_switchover(void **state)
{
	struct pc_guest *g = make_guest();
	struct h_dest d;
	struct h_src s;

	(void)state;
	migrate_to_dest(&s, &d, g, NULL, cancel_from_load_hook);
	assert_int_equal(h_dest_join(&d), -ECANCELED);
	h_expect_status(d.s, PRECOPY_STATUS_CANCELLED);
	assert_true(d.have_desc);     /* it got as far as the device state */
	assert_int_equal(d.resumed, 0); /* and did not start the guest */
	assert_true(h_src_join(&s) < 0);
	h_expect_status(s.s, PRECOPY_STATUS_FAILED);
	assert_true(s.stops >= 1);
	assert_int_equal(s.resumes, s.stops); /* the guest runs at the source */
	intact_then_retry(&s, &d, &g);
}

/* After the end a cancel is too late at either end: the destination's
 * (its verified guest resumed) while the source may still be finishing,
 * then the source's. */
static void cancel__after_completion(void **state)
{
	struct pc_guest *g = make_guest();
	struct h_dest d;
	struct h_src s;

	(void)state;
	migrate_to_dest(&s, &d, g, NULL, NULL);
	assert_int_equal(h_dest_join(&d), 0);
	assert_int_equal(precopy_cancel(d.s), -EALREADY);
	h_expect_status(d.s, PRECOPY_STATUS_COMPLETED);
	assert_int_equal(d.resumed, 1);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(precopy_cancel(s.s), -EALREADY);
	assert_int_equal(precopy_cancel(d.s), -EALREADY);
	h_expect_status(s.s, PRECOPY_STATUS_COMPLETED);
	h_expect_status(d.s, PRECOPY_STATUS_COMPLETED);
	h_src_free(&s);
	h_dest_free(&d);
	pc_guest_resume(g); /* it "runs at the destination"; bring it back */
	pc_guest_delete(&g);
}

static int rm_shm_dir(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", shm_dir);
	return system(cmd);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(cancel__source_before_start, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__source_connecting, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__source_in_setup, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__source_in_bulk, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__source_in_iterate, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__source_in_switchover, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__source_after_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__dest_before_start, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__dest_in_setup, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__dest_in_bulk, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__dest_in_iterate, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__dest_in_switchover, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__after_completion, setup, teardown),
	};
	int rc;

	if (argc > 1 && !strcmp(argv[1], "shm")) {
		shm = true;
		snprintf(shm_dir, sizeof(shm_dir), "/tmp/precopy-cancel-XXXXXX");
		if (!mkdtemp(shm_dir)) {
			perror("mkdtemp");
			return 1;
		}
	} else if (argc > 1 && strcmp(argv[1], "tcp")) {
		fprintf(stderr, "usage: test_cancel [tcp|shm]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	cmocka_set_test_filter(getenv("PRECOPY_TEST_FILTER"));
	rc = cmocka_run_group_tests_name(shm ? "cancel over shm" : "cancel over tcp", tests,
					 NULL, NULL);
	if (shm)
		rm_shm_dir();
	return rc;
}

/* SPDX-License-Identifier: MIT */
/*
 * Cancel at either end in every state, including before the start and
 * after the end (test_migrate.c covers the source in bulk and iterate).
 * Whatever is cancelled: the cancelled end reports CANCELLED, the other
 * end never reports success, the source guest runs with its memory intact,
 * it then migrates to a fresh destination, and no descriptor is left open.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define MiB (1ull << 20)
#define RAM (32 * MiB)

static long fds_at_start;

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

static struct pc_guest *make_guest(void)
{
	struct pc_guest_opts o = { .ram = RAM, .dirty_rate = 16.0 * MiB,
				   .pattern = PC_GUEST_SEQUENTIAL, .threads = 1, .seed = 7 };
	struct pc_guest *g;

	assert_int_equal(pc_guest_new(&o, &g), 0);
	assert_int_equal(pc_guest_start(g), 0);
	return g;
}

/* The guest runs, holds exactly what it wrote, and migrates again. */
static void intact_then_retry(struct pc_guest *g)
{
	struct pc_guest_desc desc;
	struct h_dest d;
	struct h_src s;
	char why[256];
	size_t len;
	void *mem = pc_guest_ram(g, &len);
	uint64_t w0 = pc_guest_writes(g);

	usleep(100 * 1000);
	assert_true(pc_guest_writes(g) > w0);
	pc_guest_pause(g);
	pc_guest_describe(g, &desc);
	if (pc_guest_verify(mem, len, &desc, why, sizeof(why)))
		fail_msg("source memory not intact: %s", why);
	pc_guest_resume(g);

	assert_int_equal(h_dest_start(&d, RAM), 0);
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	assert_int_equal(d.resumed, 1);
	assert_int_equal(memcmp(mem, d.ram, len), 0);
	h_src_free(&s);
	h_dest_free(&d);
}

static void expect_status(struct precopy_session *s, enum precopy_status want)
{
	struct precopy_stats st;

	precopy_query(s, &st);
	if (st.status != want)
		fail_msg("status %s, expected %s (%s)", precopy_status_name(st.status),
			 precopy_status_name(want), st.error);
	if (want == PRECOPY_STATUS_FAILED || want == PRECOPY_STATUS_CANCELLED)
		assert_true(st.error[0] != '\0');
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

static void cancel__source_in_setup(void **state)
{
	struct pc_guest *g = make_guest();
	struct h_src s;
	char uri[64];
	int lfd = mute_listener(uri, sizeof(uri));

	(void)state;
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, uri), 0);
	assert_true(h_wait_status(s.s, PRECOPY_STATUS_SETUP, 10000));
	usleep(200 * 1000); /* connected, waiting for the handshake */
	assert_int_equal(precopy_cancel(s.s), 0);
	assert_int_equal(h_src_join(&s), -ECANCELED);
	expect_status(s.s, PRECOPY_STATUS_CANCELLED);
	assert_int_equal(s.stops, 0);
	h_src_free(&s);
	close(lfd);
	intact_then_retry(g);
	pc_guest_delete(&g);
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
	assert_int_equal(h_dest_start(&d, RAM), 0);
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	s.on_stop = cancel_from_stop_hook;
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), -ECANCELED);
	expect_status(s.s, PRECOPY_STATUS_CANCELLED);
	assert_true(s.stops >= 1);
	assert_int_equal(s.resumes, s.stops); /* resumed after the cancel */
	assert_true(h_dest_join(&d) < 0);
	assert_int_equal(d.resumed, 0);
	h_src_free(&s);
	h_dest_free(&d);
	intact_then_retry(g);
	pc_guest_delete(&g);
}

static void cancel__source_after_completion(void **state)
{
	struct pc_guest *g = make_guest();
	struct h_dest d;
	struct h_src s;

	(void)state;
	assert_int_equal(h_dest_start(&d, RAM), 0);
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	assert_int_equal(precopy_cancel(s.s), -EALREADY);
	assert_int_equal(precopy_cancel(d.s), -EALREADY);
	expect_status(s.s, PRECOPY_STATUS_COMPLETED);
	expect_status(d.s, PRECOPY_STATUS_COMPLETED);
	assert_int_equal(d.resumed, 1);
	h_src_free(&s);
	h_dest_free(&d);
	pc_guest_resume(g); /* it "runs at the destination"; bring it back */
	pc_guest_delete(&g);
}

static void cancel__source_after_failure(void **state)
{
	struct pc_guest *g = make_guest();
	struct h_src s;
	char uri[64];
	int lfd = mute_listener(uri, sizeof(uri));

	(void)state;
	close(lfd); /* nobody listens there now */
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, uri), 0);
	assert_true(h_src_join(&s) < 0);
	expect_status(s.s, PRECOPY_STATUS_FAILED);
	assert_int_equal(precopy_cancel(s.s), -EALREADY);
	expect_status(s.s, PRECOPY_STATUS_FAILED);
	h_src_free(&s);
	intact_then_retry(g);
	pc_guest_delete(&g);
}

/* --- the destination cancelled ---------------------------------------- */

static void cancel__dest_before_start(void **state)
{
	struct h_dest d;

	(void)state;
	assert_int_equal(h_dest_start_ex(&d, RAM, NULL, false), 0);
	assert_int_equal(precopy_cancel(d.s), 0);
	assert_int_equal(h_dest_run(&d), 0);
	assert_int_equal(h_dest_join(&d), -ECANCELED);
	expect_status(d.s, PRECOPY_STATUS_CANCELLED);
	assert_int_equal(d.resumed, 0);
	h_dest_free(&d);
}

static void cancel__dest_in_setup(void **state)
{
	struct h_dest d;

	(void)state;
	assert_int_equal(h_dest_start(&d, RAM), 0);
	assert_true(h_wait_status(d.s, PRECOPY_STATUS_SETUP, 10000));
	usleep(100 * 1000); /* waiting for a source */
	assert_int_equal(precopy_cancel(d.s), 0);
	assert_int_equal(h_dest_join(&d), -ECANCELED);
	expect_status(d.s, PRECOPY_STATUS_CANCELLED);
	h_dest_free(&d);
}

static void cancel_dest_in(enum precopy_status when)
{
	struct pc_guest *g = make_guest();
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;

	precopy_params_init(&p);
	p.max_bandwidth = 16 * MiB; /* a bulk pass of 2 s */
	p.downtime_limit_ms = 1;     /* then iterations until cancelled */
	assert_int_equal(h_dest_start(&d, RAM), 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_true(h_wait_status(d.s, when, 30000));
	usleep(100 * 1000);
	assert_int_equal(precopy_cancel(d.s), 0);
	assert_int_equal(h_dest_join(&d), -ECANCELED);
	expect_status(d.s, PRECOPY_STATUS_CANCELLED);
	assert_int_equal(d.resumed, 0);
	assert_true(h_src_join(&s) < 0);
	expect_status(s.s, PRECOPY_STATUS_FAILED);
	assert_int_equal(s.resumes, s.stops);
	h_src_free(&s);
	h_dest_free(&d);
	intact_then_retry(g);
	pc_guest_delete(&g);
}

static void cancel__dest_in_bulk(void **state)
{
	(void)state;
	cancel_dest_in(PRECOPY_STATUS_BULK);
}

static void cancel__dest_in_iterate(void **state)
{
	(void)state;
	cancel_dest_in(PRECOPY_STATUS_ITERATE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(cancel__source_in_setup, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__source_in_switchover, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__source_after_completion, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__source_after_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__dest_before_start, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__dest_in_setup, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__dest_in_bulk, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel__dest_in_iterate, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

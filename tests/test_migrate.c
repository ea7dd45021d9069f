/* SPDX-License-Identifier: MIT */
/*
 * Whole migrations over TCP loopback, both ends in this process: every
 * page checked at the destination; cancel leaves the source running and
 * intact, and a second migration then succeeds.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "harness.h"

#define MiB (1ull << 20)

static struct pc_guest *make_guest(size_t ram, double rate, enum pc_guest_pattern pat,
				   unsigned zero_pct)
{
	struct pc_guest_opts o = { .ram = ram, .dirty_rate = rate, .pattern = pat,
				   .threads = 1, .zero_pct = zero_pct, .seed = 42 };
	struct pc_guest *g;

	assert_int_equal(pc_guest_new(&o, &g), 0);
	assert_int_equal(pc_guest_start(g), 0);
	return g;
}

/* After success: the source guest is stopped, both memories equal, the
 * verification pattern holds at the destination. */
static void check_migrated(struct h_src *s, struct h_dest *d)
{
	struct precopy_stats st;
	char why[256];
	size_t len;
	void *src = pc_guest_ram(s->guest, &len);

	/* stopped once for good (soft-dirty also pauses around each sync) */
	assert_true(s->stops >= 1);
	assert_int_equal(s->resumes, s->stops - 1);
	assert_int_equal(d->resumed, 1);
	assert_true(d->have_desc);
	assert_int_equal(memcmp(src, d->ram, len), 0);
	assert_int_equal(pc_guest_verify(d->ram, d->len, &d->desc, why, sizeof(why)), 0);
	precopy_query(s->s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_COMPLETED);
	assert_true(st.transferred >= st.normal_bytes);
	precopy_query(d->s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_COMPLETED);
}

static void run_pattern(unsigned channels)
{
	size_t ram = 256 * MiB;
	struct pc_guest *g = make_guest(ram, 64.0 * MiB, PC_GUEST_SEQUENTIAL, 0);
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;

	precopy_params_init(&p);
	p.channels = channels;
	assert_int_equal(h_dest_start(&d, ram), 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	assert_true(pc_guest_writes(g) > 0); /* the guest really ran */
	check_migrated(&s, &d);
	h_src_free(&s);
	h_dest_free(&d);
	pc_guest_delete(&g);
}

static void migrate__pattern_running_1_channel(void **state)
{
	(void)state;
	run_pattern(1);
}

static void migrate__pattern_running_2_channels(void **state)
{
	(void)state;
	run_pattern(2);
}

static void migrate__idle_guest_zero_pages_as_runs(void **state)
{
	size_t ram = 64 * MiB;
	struct pc_guest *g = make_guest(ram, 0, PC_GUEST_SEQUENTIAL, 50);
	struct precopy_stats st;
	struct h_dest d;
	struct h_src s;

	(void)state;
	memset(&st, 0, sizeof(st));
	assert_int_equal(h_dest_start(&d, ram), 0);
	/* make the destination dirty so zero runs must really clear it */
	memset(d.ram, 0x5a, ram);
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	check_migrated(&s, &d);
	precopy_query(s.s, &st);
	assert_true(st.duplicate > ram / 4096 * 40 / 100);
	assert_true(st.duplicate + st.normal >= ram / 4096);
	/* zero pages cost a run record, not 4 KiB */
	assert_true(st.transferred < (st.normal + 64) * 4096 + st.duplicate * 64);
	h_src_free(&s);
	h_dest_free(&d);
	pc_guest_delete(&g);
}

/* Cancel in @when; then the source runs, is intact, and migrates again. */
static void cancel_then_retry(enum precopy_status when)
{
	size_t ram = 128 * MiB;
	struct pc_guest *g = make_guest(ram, 64.0 * MiB, PC_GUEST_SEQUENTIAL, 10);
	struct pc_guest_desc desc;
	struct precopy_params p;
	struct precopy_stats st;
	struct h_dest d;
	struct h_src s;
	char why[256];
	uint64_t w0;
	size_t len;
	void *mem = pc_guest_ram(g, &len);

	precopy_params_init(&p);
	p.max_bandwidth = 32 * MiB; /* slow enough to be caught in the act */
	if (when == PRECOPY_STATUS_ITERATE)
		p.downtime_limit_ms = 1; /* never converges: iterates until cancelled */
	assert_int_equal(h_dest_start(&d, ram), 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_true(h_wait_status(s.s, when, 30000));
	usleep(200 * 1000);
	assert_int_equal(precopy_cancel(s.s), 0);
	assert_int_equal(h_src_join(&s), -ECANCELED);
	assert_true(h_dest_join(&d) < 0); /* never success */
	precopy_query(s.s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_CANCELLED);
	precopy_query(d.s, &st);
	assert_true(st.status == PRECOPY_STATUS_FAILED);
	assert_int_equal(d.resumed, 0);
	assert_int_equal(s.resumes, s.stops);
	assert_int_equal(precopy_cancel(s.s), -EALREADY);
	h_src_free(&s);
	h_dest_free(&d);

	/* still running */
	w0 = pc_guest_writes(g);
	usleep(100 * 1000);
	assert_true(pc_guest_writes(g) > w0);
	/* and intact: its memory is exactly what it wrote */
	pc_guest_pause(g);
	pc_guest_describe(g, &desc);
	assert_int_equal(pc_guest_verify(mem, len, &desc, why, sizeof(why)), 0);
	pc_guest_resume(g);

	/* a second migration to a fresh destination succeeds */
	assert_int_equal(h_dest_start(&d, ram), 0);
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	check_migrated(&s, &d);
	h_src_free(&s);
	h_dest_free(&d);
	pc_guest_delete(&g);
}

static void cancel__during_bulk(void **state)
{
	(void)state;
	cancel_then_retry(PRECOPY_STATUS_BULK);
}

static void cancel__during_iterate(void **state)
{
	(void)state;
	cancel_then_retry(PRECOPY_STATUS_ITERATE);
}

static void cancel__before_start(void **state)
{
	size_t ram = 4 * MiB;
	struct pc_guest *g = make_guest(ram, 0, PC_GUEST_SEQUENTIAL, 0);
	struct h_src s;

	(void)state;
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(precopy_cancel(s.s), 0);
	assert_int_equal(precopy_migrate(s.s, "tcp:127.0.0.1:9"), -ECANCELED);
	assert_int_equal(s.stops, 0);
	/* a session runs once */
	assert_int_equal(precopy_migrate(s.s, "tcp:127.0.0.1:9"), -EBUSY);
	h_src_free(&s);
	pc_guest_delete(&g);
}

/*
 * A listener whose accept queue is full: the kernel drops further SYNs,
 * so a connect to it neither succeeds nor fails for minutes. Returns the
 * port; @fds gets the listener and the connections that fill its queue.
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

/* A cancel while the source is still connecting is taken at once; it does
 * not wait for the connect to time out (here an hour). */
static void cancel__while_connecting(void **state)
{
	size_t ram = 4 * MiB;
	struct pc_guest *g = make_guest(ram, 0, PC_GUEST_SEQUENTIAL, 0);
	struct precopy_params p;
	struct precopy_stats st;
	struct h_src s;
	char uri[64];
	int fds[4];

	(void)state;
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%u", syn_sink(fds));
	precopy_params_init(&p);
	p.timeout_ms = 3600000;
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, uri), 0);
	assert_true(h_wait_status(s.s, PRECOPY_STATUS_SETUP, 10000));
	usleep(300 * 1000);
	precopy_query(s.s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_SETUP); /* still connecting */
	assert_int_equal(precopy_cancel(s.s), 0);
	assert_int_equal(h_src_join(&s), -ECANCELED);
	assert_int_equal(s.stops, 0);
	precopy_query(s.s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_CANCELLED);
	h_src_free(&s);
	for (int i = 0; i < 4; i++)
		close(fds[i]);
	pc_guest_delete(&g);
}

/* Heartbeats: each end's slow local work (here 3 s of saving and of
 * loading device state) outlives a timeout of 1 s, because the transport
 * keeps telling the peer it is alive. The timeout itself is checked with
 * stopped processes (tests/cli_hung.sh). */
static void sleep_save(struct h_src *s)
{
	(void)s;
	usleep(3000 * 1000);
}

static int sleep_load(struct h_dest *d)
{
	(void)d;
	usleep(3000 * 1000);
	return 0;
}

static void beats__slow_ends_outlive_a_short_timeout(void **state)
{
	size_t ram = 8 * MiB;
	struct pc_guest *g = make_guest(ram, 4.0 * MiB, PC_GUEST_SEQUENTIAL, 0);
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;

	(void)state;
	precopy_params_init(&p);
	p.timeout_ms = 1000;
	assert_int_equal(h_dest_start_opts(&d, ram,
					   &(struct h_dest_opts){ .p = &p, .on_load = sleep_load }),
			 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	s.on_save = sleep_save;
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	check_migrated(&s, &d);
	h_src_free(&s);
	h_dest_free(&d);
	pc_guest_delete(&g);
}

static void migrate__region_mismatch_refused(void **state)
{
	struct pc_guest *g = make_guest(8 * MiB, 0, PC_GUEST_SEQUENTIAL, 0);
	struct h_dest d;
	struct h_src s;
	char msg[PRECOPY_ERRMSG_MAX];

	(void)state;
	assert_int_equal(h_dest_start(&d, 4 * MiB), 0);
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_true(h_src_join(&s) < 0);
	assert_true(h_dest_join(&d) < 0);
	precopy_strerror(s.s, msg, sizeof(msg));
	assert_non_null(strstr(msg, "region 0"));
	assert_int_equal(s.stops, 0);
	h_src_free(&s);
	h_dest_free(&d);
	pc_guest_delete(&g);
}

static void api__bad_arguments(void **state)
{
	struct precopy_session *s;
	struct precopy_params p;
	static char buf[8192];
	char why[100];

	(void)state;
	assert_int_equal(precopy_new(0, NULL, NULL, &s), -EINVAL);
	assert_int_equal(precopy_new(PRECOPY_ROLE_SOURCE, NULL, NULL, NULL), -EINVAL);
	precopy_params_init(&p);
	p.channels = 0;
	assert_int_equal(precopy_params_check(&p, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "channels"));
	assert_int_equal(precopy_new(PRECOPY_ROLE_SOURCE, &p, NULL, &s), -EINVAL);
	assert_int_equal(precopy_new(PRECOPY_ROLE_DEST, NULL, NULL, &s), 0);
	assert_int_equal(precopy_add_region(s, buf + 1, 4096, PRECOPY_DIRTY_AUTO), -EINVAL);
	assert_int_equal(precopy_add_region(s, NULL, 4096, PRECOPY_DIRTY_AUTO), -EINVAL);
	assert_int_equal(precopy_listen(s, "tcp:999.1.1.1:x"), -EINVAL);
	assert_int_equal(precopy_listen(s, "bogus:1"), -EPROTONOSUPPORT);
	assert_int_equal(precopy_incoming(s), -ENOTCONN);
	assert_int_equal(precopy_migrate(s, "tcp:127.0.0.1:1"), -EINVAL); /* wrong role */
	assert_int_equal(precopy_delete(&s), 0);
	assert_null(s);
	assert_int_equal(precopy_delete(&s), -EINVAL);
}

/* Out-of-range parameters and malformed URIs name the problem. */
static void api__bad_timeout_and_uris(void **state)
{
	struct pc_guest *g = make_guest(4 * MiB, 0, PC_GUEST_SEQUENTIAL, 0);
	struct precopy_params p;
	struct h_src s;
	char why[PRECOPY_ERRMSG_MAX];
	static const char *const bad[] = {
		"tcp:localhost", "tcp:127.0.0.1:65536", "tcp:127.0.0.1:x", "tcp:[::1]5",
		"tcp::1:5", "tcp:", "nope", ":5",
	};

	(void)state;
	precopy_params_init(&p);
	assert_int_equal(p.timeout_ms, 15000);
	p.timeout_ms = 99;
	assert_int_equal(precopy_params_check(&p, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "timeout_ms"));
	p.timeout_ms = 3600001;
	assert_int_equal(precopy_params_check(&p, why, sizeof(why)), -EINVAL);
	p.timeout_ms = 100;
	assert_int_equal(precopy_params_check(&p, why, sizeof(why)), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int err;

		assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
		err = precopy_migrate(s.s, bad[i]);
		precopy_strerror(s.s, why, sizeof(why));
		if ((err != -EINVAL && err != -EPROTONOSUPPORT) || !strstr(why, "URI") ||
		    !strstr(why, "tcp:HOST:PORT"))
			fail_msg("'%s': %d, '%s'", bad[i], err, why);
		assert_int_equal(s.stops, 0);
		h_src_free(&s);
	}
	pc_guest_delete(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(api__bad_arguments),
		cmocka_unit_test(api__bad_timeout_and_uris),
		cmocka_unit_test(migrate__pattern_running_1_channel),
		cmocka_unit_test(migrate__pattern_running_2_channels),
		cmocka_unit_test(migrate__idle_guest_zero_pages_as_runs),
		cmocka_unit_test(migrate__region_mismatch_refused),
		cmocka_unit_test(cancel__before_start),
		cmocka_unit_test(cancel__while_connecting),
		cmocka_unit_test(beats__slow_ends_outlive_a_short_timeout),
		cmocka_unit_test(cancel__during_bulk),
		cmocka_unit_test(cancel__during_iterate),
	};

	cmocka_set_test_filter(getenv("PRECOPY_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}

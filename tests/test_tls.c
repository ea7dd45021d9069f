/* SPDX-License-Identifier: MIT */
/*
 * The tls: scheme on loopback: PSK and x509 (server-only and mutual)
 * migrations verify; a wrong key, identity, CA or host name fails the
 * handshake with the source untouched (never stopped, memory intact, and
 * it migrates afterwards); plain tcp: stays available; a cancel during the
 * handshake ends it at either end.
 *
 *   test_tls CERT-DIR     (tests/tls: test-only certificates)
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
#define RAM (32 * MiB)

static const char *dir;
static char ca[512], other_ca[512], srv_cert[512], srv_key[512], cli_cert[512], cli_key[512];
static const uint8_t key1[32] = "0123456789abcdef0123456789abcde";
static const uint8_t key2[32] = "0123456789abcdef0123456789abcdX";

static struct pc_guest *make_guest(void)
{
	return h_guest_new(&(struct pc_guest_opts){ .ram = RAM, .dirty_rate = 16.0 * MiB,
						    .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
						    .seed = 9 });
}

/* Migrate @g with @stls to a destination with @dtls; returns the source's
 * result and the error text in @why. On success the memories are equal. */
static int run(struct pc_guest *g, const struct precopy_tls *stls, const struct precopy_tls *dtls,
	       unsigned channels, char *why, size_t whylen)
{
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;
	int err, derr;

	precopy_params_init(&p);
	p.channels = channels;
	p.timeout_ms = 5000;
	assert_int_equal(h_dest_start_tls(&d, RAM, &p, "tls:127.0.0.1:0", dtls, true), 0);
	assert_int_equal(strncmp(d.uri, "tls:", 4), 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	if (stls)
		assert_int_equal(precopy_set_tls(s.s, stls), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	err = h_src_join(&s);
	precopy_strerror(s.s, why, whylen);
	if (err) {
		/* the source never stopped its guest; the destination failed */
		assert_int_equal(s.stops, 0);
		precopy_cancel(d.s);
	}
	derr = h_dest_join(&d);
	if (!err) {
		size_t len;

		assert_int_equal(derr, 0);
		assert_int_equal(d.resumed, 1);
		assert_int_equal(memcmp(pc_guest_ram(g, &len), d.ram, RAM), 0);
		pc_guest_resume(g);
	} else {
		assert_true(derr < 0);
		assert_int_equal(d.resumed, 0);
	}
	h_src_free(&s);
	h_dest_free(&d);
	return err;
}

/* The guest runs with its memory intact, and a good migration follows. */
static void untouched(struct pc_guest *g, const struct precopy_tls *good_s,
		      const struct precopy_tls *good_d)
{
	char why[256];

	h_check_guest_intact(g, "source");
	assert_int_equal(run(g, good_s, good_d, 1, why, sizeof(why)), 0);
}

static void expect_refused(const struct precopy_tls *s, const struct precopy_tls *d,
			   const char *text, const struct precopy_tls *good_s,
			   const struct precopy_tls *good_d)
{
	struct pc_guest *g = make_guest();
	char why[PRECOPY_ERRMSG_MAX];
	int err = run(g, s, d, 1, why, sizeof(why));

	if (err >= 0 || !strstr(why, text))
		fail_msg("expected a failure mentioning '%s', got %d '%s'", text, err, why);
	printf("refused: %s\n", why);
	untouched(g, good_s, good_d);
	pc_guest_delete(&g);
}

static const struct precopy_tls psk1 = { .psk_identity = "precopy-test", .psk = key1,
					 .psk_len = sizeof(key1) };

static void tls__psk_two_channels_verifies(void **state)
{
	struct pc_guest *g = make_guest();
	char why[PRECOPY_ERRMSG_MAX];

	(void)state;
	assert_int_equal(run(g, &psk1, &psk1, 2, why, sizeof(why)), 0);
	pc_guest_delete(&g);
}

static void tls__wrong_psk_refused(void **state)
{
	struct precopy_tls bad = psk1;

	(void)state;
	bad.psk = key2;
	expect_refused(&bad, &psk1, "TLS", &psk1, &psk1);
}

static void tls__wrong_psk_identity_refused(void **state)
{
	struct precopy_tls bad = psk1;

	(void)state;
	bad.psk_identity = "somebody-else";
	expect_refused(&bad, &psk1, "TLS", &psk1, &psk1);
}

static void tls__x509_verifies(void **state)
{
	struct precopy_tls s = { .ca_file = ca }, d = { .cert_file = srv_cert,
							.key_file = srv_key };
	struct pc_guest *g = make_guest();
	char why[PRECOPY_ERRMSG_MAX];

	(void)state;
	assert_int_equal(run(g, &s, &d, 2, why, sizeof(why)), 0);
	s.hostname = "localhost"; /* the other name the certificate carries */
	assert_int_equal(run(g, &s, &d, 1, why, sizeof(why)), 0);
	pc_guest_delete(&g);
}

static void tls__x509_wrong_host_name_refused(void **state)
{
	struct precopy_tls s = { .ca_file = ca, .hostname = "wrong.example" },
			   good = { .ca_file = ca },
			   d = { .cert_file = srv_cert, .key_file = srv_key };

	(void)state;
	expect_refused(&s, &d, "TLS", &good, &d);
}

static void tls__x509_untrusted_ca_refused(void **state)
{
	struct precopy_tls s = { .ca_file = other_ca }, good = { .ca_file = ca },
			   d = { .cert_file = srv_cert, .key_file = srv_key };

	(void)state;
	expect_refused(&s, &d, "TLS", &good, &d);
}

static void tls__x509_mutual(void **state)
{
	struct precopy_tls s = { .ca_file = ca, .cert_file = cli_cert, .key_file = cli_key },
			   anon = { .ca_file = ca },
			   d = { .ca_file = ca, .cert_file = srv_cert, .key_file = srv_key };
	struct pc_guest *g = make_guest();
	char why[PRECOPY_ERRMSG_MAX];

	(void)state;
	assert_int_equal(run(g, &s, &d, 1, why, sizeof(why)), 0);
	pc_guest_delete(&g);
	/* a source without a certificate is refused by this destination */
	expect_refused(&anon, &d, "TLS", &s, &d);
}

/*
 * A cancel during the handshake is taken at once, at either end; it does
 * not wait for the handshake timeout (here an hour). The peer is a plain
 * socket that never answers: at the source it takes the ClientHello and
 * says nothing; at the destination it sends the TCP hello and no
 * ClientHello.
 */
static void tls__cancel_during_handshake_source(void **state)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	struct pc_guest *g = make_guest();
	struct precopy_params p;
	struct precopy_stats st;
	struct h_src s;
	uint8_t buf[4096];
	size_t got = 0;
	char uri[64];
	int lfd, fd;

	(void)state;
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(lfd >= 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(lfd, 4), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
	snprintf(uri, sizeof(uri), "tls:127.0.0.1:%u", ntohs(a.sin_port));
	precopy_params_init(&p);
	p.timeout_ms = 3600000;
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(precopy_set_tls(s.s, &psk1), 0);
	assert_int_equal(h_src_start(&s, uri), 0);
	fd = accept(lfd, NULL, NULL);
	assert_true(fd >= 0);
	/* the 32-byte TCP hello, then the ClientHello: the source now waits
	 * for the ServerHello that never comes */
	while (got <= 32) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);

		assert_true(n > 0);
		got += (size_t)n;
	}
	usleep(200 * 1000);
	precopy_query(s.s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_SETUP);
	assert_int_equal(precopy_cancel(s.s), 0);
	assert_int_equal(h_src_join(&s), -ECANCELED);
	assert_int_equal(s.stops, 0);
	precopy_query(s.s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_CANCELLED);
	h_src_free(&s);
	close(fd);
	close(lfd);
	untouched(g, &psk1, &psk1);
	pc_guest_delete(&g);
}

static void tls__cancel_during_handshake_destination(void **state)
{
	/* "PCT1", version 1, channel 0 of 1, cookie 1 */
	uint8_t hello[32] = { 'P', 'C', 'T', '1', 1, 0, 0, 0, 1, 0, 0, 0, 1 };
	struct precopy_params p;
	struct h_dest d;
	int fd;

	(void)state;
	precopy_params_init(&p);
	p.timeout_ms = 3600000;
	assert_int_equal(h_dest_start_tls(&d, RAM, &p, "tls:127.0.0.1:0", &psk1, true), 0);
	fd = h_raw_connect(d.uri);
	assert_int_equal(send(fd, hello, sizeof(hello), 0), (ssize_t)sizeof(hello));
	usleep(300 * 1000); /* the destination waits for a ClientHello */
	assert_int_equal(precopy_cancel(d.s), 0);
	assert_int_equal(h_dest_join(&d), -ECANCELED);
	assert_int_equal(d.resumed, 0);
	h_dest_free(&d);
	close(fd);
}

static void tls__settings_checked(void **state)
{
	struct precopy_session *s;
	struct precopy_tls t = psk1;
	struct pc_guest *g = make_guest();
	struct h_src hs;
	char why[PRECOPY_ERRMSG_MAX];

	(void)state;
	assert_int_equal(precopy_new(PRECOPY_ROLE_SOURCE, NULL, NULL, &s), 0);
	t.psk_len = 8;
	assert_int_equal(precopy_set_tls(s, &t), -EINVAL); /* key too short */
	t = psk1;
	t.psk_identity = "";
	assert_int_equal(precopy_set_tls(s, &t), -EINVAL);
	t = (struct precopy_tls){ .cert_file = srv_cert }; /* no key file */
	assert_int_equal(precopy_set_tls(s, &t), -EINVAL);
	t = (struct precopy_tls){ 0 }; /* nothing */
	assert_int_equal(precopy_set_tls(s, &t), -EINVAL);
	assert_int_equal(precopy_set_tls(s, &psk1), 0);
	assert_int_equal(precopy_set_tls(s, NULL), 0);
	assert_int_equal(precopy_delete(&s), 0);

	/* tls: without settings says so, before touching the guest */
	assert_int_equal(h_src_new(&hs, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(precopy_migrate(hs.s, "tls:127.0.0.1:9"), -ECONNREFUSED);
	h_src_free(&hs);
	{
		struct sockaddr_in a = { .sin_family = AF_INET,
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t alen = sizeof(a);
		int lfd = socket(AF_INET, SOCK_STREAM, 0);
		char uri[64];

		assert_true(lfd >= 0);
		assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
		assert_int_equal(listen(lfd, 4), 0);
		assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
		snprintf(uri, sizeof(uri), "tls:127.0.0.1:%u", ntohs(a.sin_port));
		assert_int_equal(h_src_new(&hs, g, NULL, PRECOPY_DIRTY_AUTO), 0);
		assert_int_equal(precopy_migrate(hs.s, uri), -EINVAL);
		precopy_strerror(hs.s, why, sizeof(why));
		assert_non_null(strstr(why, "precopy_set_tls"));
		assert_int_equal(hs.stops, 0);
		h_src_free(&hs);
		close(lfd);
	}
	/* and a destination refuses to listen without them */
	{
		struct h_dest d;

		assert_int_equal(h_dest_start_tls(&d, RAM, NULL, "tls:127.0.0.1:0", NULL, true),
				 -EINVAL);
		h_dest_free(&d);
	}
	pc_guest_delete(&g);
}

/*
 * Strangers end their own connection, not the destination: a TCP hello
 * followed by 32 bytes of junk, then a source with another key, then a
 * hello and silence; the real source, coming after all of them, migrates.
 */
static void tls__stranger_does_not_end_listener(void **state)
{
	uint8_t hello[32] = { 'P', 'C', 'T', '1', 1, 1, 0, 0, 1, 0, 0, 0, 7 }, junk[32];
	struct precopy_tls bad = psk1;
	struct pc_guest *g = make_guest();
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;
	uint8_t buf[256];
	size_t len;
	int fd, quiet;

	(void)state;
	precopy_params_init(&p);
	p.timeout_ms = 5000;
	assert_int_equal(h_dest_start_tls(&d, RAM, &p, "tls:127.0.0.1:0", &psk1, true), 0);

	/* junk where the ClientHello should be: the destination closes it */
	memset(junk, 0x5a, sizeof(junk));
	fd = h_raw_connect(d.uri);
	assert_int_equal(send(fd, hello, sizeof(hello), 0), (ssize_t)sizeof(hello));
	assert_int_equal(send(fd, junk, sizeof(junk), 0), (ssize_t)sizeof(junk));
	while (recv(fd, buf, sizeof(buf), 0) > 0)
		;
	close(fd);
	/* a hello and then nothing, left open */
	quiet = h_raw_connect(d.uri);
	assert_int_equal(send(quiet, hello, sizeof(hello), 0), (ssize_t)sizeof(hello));

	/* a source with another key is refused */
	bad.psk = key2;
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(precopy_set_tls(s.s, &bad), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), -EACCES);
	assert_int_equal(s.stops, 0);
	h_src_free(&s);

	/* and the real one, after all of them, is taken */
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(precopy_set_tls(s.s, &psk1), 0);
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	assert_int_equal(d.resumed, 1);
	assert_int_equal(memcmp(pc_guest_ram(g, &len), d.ram, RAM), 0);
	h_src_free(&s);
	h_dest_free(&d);
	close(quiet);
	pc_guest_delete(&g);
}

/*
 * A destination's credentials are loaded when it listens: a certificate
 * or key file that is missing, or holds no PEM, is an error of
 * precopy_listen(), not of the first connection.
 */
static void tls__credentials_loaded_before_listening(void **state)
{
	struct precopy_tls t = { .cert_file = srv_cert, .key_file = "/nonexistent/key.pem" };
	struct h_dest d;

	(void)state;
	assert_int_equal(h_dest_start_tls(&d, RAM, NULL, "tls:127.0.0.1:0", &t, false), -ENOENT);
	h_dest_free(&d);
	t.key_file = ca; /* a certificate where the key should be */
	assert_int_equal(h_dest_start_tls(&d, RAM, NULL, "tls:127.0.0.1:0", &t, false), -EBADMSG);
	h_dest_free(&d);
	t = (struct precopy_tls){ .ca_file = "/nonexistent/ca.pem", .cert_file = srv_cert,
				  .key_file = srv_key };
	assert_int_equal(h_dest_start_tls(&d, RAM, NULL, "tls:127.0.0.1:0", &t, false), -ENOENT);
	h_dest_free(&d);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(tls__psk_two_channels_verifies),
		cmocka_unit_test(tls__wrong_psk_refused),
		cmocka_unit_test(tls__wrong_psk_identity_refused),
		cmocka_unit_test(tls__x509_verifies),
		cmocka_unit_test(tls__x509_wrong_host_name_refused),
		cmocka_unit_test(tls__x509_untrusted_ca_refused),
		cmocka_unit_test(tls__x509_mutual),
		cmocka_unit_test(tls__settings_checked),
		cmocka_unit_test(tls__credentials_loaded_before_listening),
		cmocka_unit_test(tls__stranger_does_not_end_listener),
		cmocka_unit_test(tls__cancel_during_handshake_source),
		cmocka_unit_test(tls__cancel_during_handshake_destination),
	};

	if (argc != 2) {
		fprintf(stderr, "usage: test_tls CERT-DIR\n");
		return 2;
	}
	cmocka_set_test_filter(getenv("PRECOPY_TEST_FILTER"));
	dir = argv[1];
	snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
	snprintf(other_ca, sizeof(other_ca), "%s/other-ca.pem", dir);
	snprintf(srv_cert, sizeof(srv_cert), "%s/server.pem", dir);
	snprintf(srv_key, sizeof(srv_key), "%s/server-key.pem", dir);
	snprintf(cli_cert, sizeof(cli_cert), "%s/client.pem", dir);
	snprintf(cli_key, sizeof(cli_key), "%s/client-key.pem", dir);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

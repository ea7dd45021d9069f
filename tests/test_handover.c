/* SPDX-License-Identifier: MIT */
/*
 * The end of a migration, where the guest changes hands: it must never run
 * at both ends, and never at neither without the source saying so.
 *
 * The destination answers COMPLETE with its verdict, resumes the guest
 * only after the source's GO, and then says whether that worked. A proxy
 * between the two ends (TCP loopback, one channel) forwards everything
 * and cuts both connections instead of forwarding the destination's first
 * RESULT (the verdict) or its second (the answer to GO):
 *  - verdict lost: the source resumes its guest, memory intact; the
 *    destination, left without GO, does not resume its copy;
 *  - answer lost: the destination runs the guest; the source leaves its
 *    own stopped and fails with -ENOTRECOVERABLE;
 *  - resume_vm failing at the destination: the source is told and
 *    resumes its guest;
 *  - a cancel at the source while the destination loads device state is
 *    taken, and the destination does not resume.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
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
#include "le.h"
#include "stream.h"
#include "wire.h"

#define MiB (1ull << 20)

/* --- a proxy that can lose one of the destination's RESULT records ----- */

struct proxy {
	int lfd, sfd, dfd;
	unsigned port_to;
	unsigned drop; /* cut instead of forwarding the drop-th RESULT; 0: none */
	unsigned results;
	bool cut;
	char uri[64];
	pthread_t th;
};

static int read_all(int fd, void *buf, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t n = read(fd, (char *)buf + off, len - off);

		if (n <= 0)
			return -1;
		off += (size_t)n;
	}
	return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t n = send(fd, (const char *)buf + off, len - off, MSG_NOSIGNAL);

		if (n <= 0)
			return -1;
		off += (size_t)n;
	}
	return 0;
}

/* source -> destination: bytes as they come */
static void *upstream(void *arg)
{
	struct proxy *p = arg;
	char buf[1 << 16];
	ssize_t n;

	while ((n = read(p->sfd, buf, sizeof(buf))) > 0)
		if (write_all(p->dfd, buf, (size_t)n))
			break;
	shutdown(p->dfd, SHUT_WR);
	return NULL;
}

/* destination -> source: frame by frame, looking at each record's type */
static void *proxy_main(void *arg)
{
	struct proxy *p = arg;
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
				 .sin_port = htons((uint16_t)p->port_to) };
	static uint8_t body[1 << 20];
	uint8_t hdr[PC_FRAME_HDR];
	pthread_t up;

	p->sfd = accept(p->lfd, NULL, NULL);
	if (p->sfd < 0)
		return NULL;
	p->dfd = socket(AF_INET, SOCK_STREAM, 0);
	if (p->dfd < 0 || connect(p->dfd, (struct sockaddr *)&a, sizeof(a))) {
		close(p->sfd);
		return NULL;
	}
	pthread_create(&up, NULL, upstream, p);
	while (!read_all(p->dfd, hdr, sizeof(hdr))) {
		uint64_t len = pc_get_le64(hdr + 16);

		if (len > sizeof(body) || read_all(p->dfd, body, (size_t)len))
			break;
		if (pc_get_le32(hdr) == PC_FRAME_MSG && len >= 8 && pc_get_le16(body) == PC_MSG_RESULT &&
		    ++p->results == p->drop) {
			p->cut = true;
			break;
		}
		if (write_all(p->sfd, hdr, sizeof(hdr)) || write_all(p->sfd, body, (size_t)len))
			break;
	}
	/* a cut link: neither end hears from the other again */
	shutdown(p->sfd, SHUT_RDWR);
	shutdown(p->dfd, SHUT_RDWR);
	pthread_join(up, NULL);
	close(p->sfd);
	close(p->dfd);
	return NULL;
}

static void proxy_start(struct proxy *p, const char *dest_uri, unsigned drop)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	const char *port = strrchr(dest_uri, ':');

	memset(p, 0, sizeof(*p));
	assert_non_null(port);
	p->port_to = (unsigned)atoi(port + 1);
	p->drop = drop;
	p->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(p->lfd >= 0);
	assert_int_equal(bind(p->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(p->lfd, 4), 0);
	assert_int_equal(getsockname(p->lfd, (struct sockaddr *)&a, &alen), 0);
	snprintf(p->uri, sizeof(p->uri), "tcp:127.0.0.1:%u", ntohs(a.sin_port));
	assert_int_equal(pthread_create(&p->th, NULL, proxy_main, p), 0);
}

static void proxy_join(struct proxy *p)
{
	pthread_join(p->th, NULL);
	close(p->lfd);
}

/* --- helpers ------------------------------------------------------------ */

static struct pc_guest *make_guest(size_t ram)
{
	return h_guest_new(&(struct pc_guest_opts){ .ram = ram, .dirty_rate = 16.0 * MiB,
						    .pattern = PC_GUEST_RANDOM, .threads = 1,
						    .zero_pct = 10, .seed = 7 });
}

static void print_errors(struct h_src *s, struct h_dest *d)
{
	char why[PRECOPY_ERRMSG_MAX];

	precopy_strerror(s->s, why, sizeof(why));
	printf("# source: %s\n", why);
	precopy_strerror(d->s, why, sizeof(why));
	printf("# destination: %s\n", why);
}

static void assert_error_has(struct precopy_session *s, const char *what)
{
	char why[PRECOPY_ERRMSG_MAX];

	precopy_strerror(s, why, sizeof(why));
	if (!strstr(why, what))
		fail_msg("error \"%s\" does not say \"%s\"", why, what);
}

/* A 64 MiB guest, and a destination for it started with @o. */
static struct pc_guest *guest_and_dest(struct h_dest *d, const struct h_dest_opts *o)
{
	struct pc_guest *g = make_guest(64 * MiB);

	assert_int_equal(h_dest_start_opts(d, 64 * MiB, o), 0);
	return g;
}

/* A 64 MiB guest migrated by @s to a destination @d through proxy @px,
 * which cuts the connection instead of forwarding the @drop-th RESULT. */
static struct pc_guest *migrate_through_proxy(struct h_src *s, struct h_dest *d,
					      struct proxy *px, unsigned drop)
{
	struct pc_guest *g = guest_and_dest(d, &(struct h_dest_opts){ 0 });

	proxy_start(px, d->uri, drop);
	h_src_go(s, g, NULL, px->uri);
	return g;
}

/* --- cases ---------------------------------------------------------------- */

static void handover__verdict_lost_source_resumes(void **state)
{
	struct pc_guest *g;
	struct precopy_stats st;
	struct proxy px;
	struct h_dest d;
	struct h_src s;

	(void)state;
	g = migrate_through_proxy(&s, &d, &px, 1);
	assert_true(h_src_join(&s) < 0);
	assert_true(h_dest_join(&d) < 0);
	proxy_join(&px);
	print_errors(&s, &d);
	assert_true(px.cut);
	/* the destination had verified everything, and still did not run it */
	assert_int_equal(d.resumed, 0);
	assert_true(d.have_desc);
	assert_error_has(d.s, "not resumed");
	precopy_query(d.s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
	/* the source runs its guest again */
	assert_true(s.stops >= 1);
	h_check_source_back(&s, PRECOPY_STATUS_FAILED);
	h_free_all(&s, &d, &g);
}

static void handover__answer_lost_source_stays_stopped(void **state)
{
	struct pc_guest *g;
	struct precopy_stats st;
	struct proxy px;
	struct h_dest d;
	struct h_src s;
	char why[256];
	size_t len;
	void *src;

	(void)state;
	g = migrate_through_proxy(&s, &d, &px, 2);
	src = pc_guest_ram(g, &len);
	assert_int_equal(h_src_join(&s), -ENOTRECOVERABLE);
	assert_int_equal(h_dest_join(&d), 0);
	proxy_join(&px);
	print_errors(&s, &d);
	assert_true(px.cut);
	/* the guest runs at the destination, verified */
	assert_int_equal(d.resumed, 1);
	assert_true(d.have_desc);
	assert_int_equal(memcmp(src, d.ram, len), 0);
	assert_int_equal(pc_guest_verify(d.ram, d.len, &d.desc, why, sizeof(why)), 0);
	precopy_query(d.s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_COMPLETED);
	/* and not here: the source does not know, so it leaves it stopped */
	assert_true(s.stops >= 1);
	assert_int_equal(s.resumes, s.stops - 1);
	assert_false(s.running);
	precopy_query(s.s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
	assert_error_has(s.s, "was not resumed here");
	assert_int_equal(precopy_cancel(s.s), -EALREADY);
	h_free_all(&s, &d, &g);
}

static int resume_fails(struct h_dest *d)
{
	(void)d;
	return -EIO;
}

static void handover__dest_resume_fails_source_resumes(void **state)
{
	struct pc_guest *g;
	struct h_dest d;
	struct h_src s;

	(void)state;
	g = guest_and_dest(&d, &(struct h_dest_opts){ .on_resume = resume_fails });
	h_src_go(&s, g, NULL, d.uri);
	assert_int_equal(h_src_join(&s), -EIO);
	assert_int_equal(h_dest_join(&d), -EIO);
	print_errors(&s, &d);
	assert_int_equal(d.resumed, 0);
	assert_error_has(s.s, "could not resume");
	h_check_source_back(&s, PRECOPY_STATUS_FAILED);
	h_free_all(&s, &d, &g);
}

static struct h_src *cancel_me;
static int cancel_rc = 1;

static int cancel_source_on_load(struct h_dest *d)
{
	(void)d;
	cancel_rc = precopy_cancel(cancel_me->s);
	return 0;
}

static void handover__source_cancel_before_go_taken(void **state)
{
	struct pc_guest *g;
	struct h_dest d;
	struct h_src s;

	(void)state;
	g = guest_and_dest(&d, &(struct h_dest_opts){ .on_load = cancel_source_on_load });
	assert_int_equal(h_src_new(&s, g, NULL, PRECOPY_DIRTY_AUTO), 0);
	cancel_me = &s;
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), -ECANCELED);
	assert_true(h_dest_join(&d) < 0);
	print_errors(&s, &d);
	/* COMPLETE was sent, the verdict not yet: the cancel is still taken */
	assert_int_equal(cancel_rc, 0);
	assert_int_equal(d.resumed, 0);
	h_check_source_back(&s, PRECOPY_STATUS_CANCELLED);
	h_free_all(&s, &d, &g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(handover__verdict_lost_source_resumes),
		cmocka_unit_test(handover__answer_lost_source_stays_stopped),
		cmocka_unit_test(handover__dest_resume_fails_source_resumes),
		cmocka_unit_test(handover__source_cancel_before_go_taken),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli.h"
#include "harness.h"
#include "transport.h"

static int d_load(void *o, const void *buf, size_t len)
{
	struct h_dest *d = o;
	int err = pc_guest_load_desc(&d->desc, buf, len);

	if (err)
		return err;
	d->have_desc = true;
	return d->on_load ? d->on_load(d) : 0;
}

static int d_resume(void *o)
{
	struct h_dest *d = o;

	if (d->on_resume) {
		int err = d->on_resume(d);

		if (err)
			return err;
	}
	d->resumed++;
	return 0;
}

static void *d_main(void *arg)
{
	struct h_dest *d = arg;

	d->err = precopy_incoming(d->s);
	return NULL;
}

int h_dest_start(struct h_dest *d, size_t len)
{
	return h_dest_start_opts(d, len, &(struct h_dest_opts){ 0 });
}

int h_dest_start_uri(struct h_dest *d, size_t len, const char *uri, bool memfd)
{
	return h_dest_start_opts(d, len, &(struct h_dest_opts){ .uri = uri, .memfd = memfd });
}

int h_dest_start_key(struct h_dest *d, size_t len, const char *uri, bool memfd,
		     const void *key, size_t key_len)
{
	return h_dest_start_opts(d, len, &(struct h_dest_opts){
		.uri = uri, .memfd = memfd, .key = key, .key_len = key_len });
}

int h_dest_start_ex(struct h_dest *d, size_t len, const struct precopy_params *p, bool run)
{
	return h_dest_start_opts(d, len, &(struct h_dest_opts){ .p = p, .no_run = !run });
}

int h_dest_start_tls(struct h_dest *d, size_t len, const struct precopy_params *p,
		     const char *uri, const struct precopy_tls *tls, bool run)
{
	return h_dest_start_opts(d, len, &(struct h_dest_opts){
		.p = p, .uri = uri, .tls = tls, .no_run = !run });
}

int h_dest_run(struct h_dest *d)
{
	return pthread_create(&d->thread, NULL, d_main, d) ? -EAGAIN : 0;
}

long h_count_fds(void)
{
	return pc_cli_count_fds(true);
}

int h_dest_start_opts(struct h_dest *d, size_t len, const struct h_dest_opts *o)
{
	struct precopy_callbacks cb = { .opaque = d, .load_device_state = d_load,
					.resume_vm = d_resume };
	const char *uri = o->uri ? o->uri : "tcp:127.0.0.1:0";
	int err;

	memset(d, 0, sizeof(*d));
	d->len = len;
	d->fd = -1;
	d->on_load = o->on_load;
	d->on_resume = o->on_resume;
	if (o->memfd) {
		err = precopy_memfd_alloc(len, -1, &d->ram, &d->fd);
		if (err) {
			d->ram = NULL;
			return err;
		}
	} else {
		d->ram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			      -1, 0);
		if (d->ram == MAP_FAILED) {
			d->ram = NULL;
			return -ENOMEM;
		}
	}
	err = precopy_new(PRECOPY_ROLE_DEST, o->p, &cb, &d->s);
	if (err)
		return err;
	if (o->memfd)
		err = precopy_add_region_fd(d->s, d->ram, len, d->fd, 0, PRECOPY_DIRTY_AUTO);
	else
		err = precopy_add_region(d->s, d->ram, len, PRECOPY_DIRTY_AUTO);
	if (err < 0)
		return err;
	err = precopy_set_auth_key(d->s, o->key, o->key_len);
	if (err)
		return err;
	if (o->tls) {
		err = precopy_set_tls(d->s, o->tls);
		if (err)
			return err;
	}
	if (o->no_populate) {
		err = precopy_set_param(d->s, PRECOPY_PARAM_POPULATE, 0);
		if (err)
			return err;
	}
	err = precopy_listen(d->s, uri);
	if (err)
		return err;
	err = precopy_local_uri(d->s, d->uri, sizeof(d->uri));
	if (err)
		return err;
	return o->no_run ? 0 : h_dest_run(d);
}

int h_dest_join(struct h_dest *d)
{
	pthread_join(d->thread, NULL);
	return d->err;
}

void h_dest_free(struct h_dest *d)
{
	if (d->s)
		precopy_delete(&d->s);
	if (d->ram)
		munmap(d->ram, d->len);
	d->ram = NULL;
	if (d->fd >= 0)
		close(d->fd);
	d->fd = -1;
}

/* The source's hooks: the synthetic guest's (pc_guest_callbacks()),
 * counted, with the test's hooks around them. */
static int s_stop(void *o)
{
	struct h_src *s = o;
	int err;

	s->stops++;
	err = s->guest_cb.stop_vm(s->guest_cb.opaque);
	if (!err && s->on_stop)
		s->on_stop(s);
	return err;
}

static int s_resume(void *o)
{
	struct h_src *s = o;

	s->resumes++;
	return s->guest_cb.resume_vm(s->guest_cb.opaque);
}

static int s_save(void *o, void **buf, size_t *len)
{
	struct h_src *s = o;

	if (s->on_save)
		s->on_save(s);
	return s->guest_cb.save_device_state(s->guest_cb.opaque, buf, len);
}

static int s_throttle(void *o, unsigned pct)
{
	struct h_src *s = o;

	return s->guest_cb.set_throttle(s->guest_cb.opaque, pct);
}

static void s_progress(void *o, const struct precopy_stats *st)
{
	struct h_src *s = o;

	if (s->on_progress)
		s->on_progress(s, st);
}

int h_src_new(struct h_src *s, struct pc_guest *guest, const struct precopy_params *p,
	      enum precopy_dirty_mode mode)
{
	struct precopy_callbacks cb = {
		.opaque = s, .stop_vm = s_stop, .resume_vm = s_resume,
		.save_device_state = s_save, .set_throttle = s_throttle,
		.progress = s_progress,
	};
	size_t len;
	void *ram = pc_guest_ram(guest, &len);
	int err;

	memset(s, 0, sizeof(*s));
	s->guest = guest;
	s->guest_cb = pc_guest_callbacks(guest, NULL, NULL);
	if (p)
		s->params = *p;
	else
		precopy_params_init(&s->params);
	err = precopy_new(PRECOPY_ROLE_SOURCE, &s->params, &cb, &s->s);
	if (err)
		return err;
	if (pc_guest_fd(guest) >= 0)
		err = precopy_add_region_fd(s->s, ram, len, pc_guest_fd(guest), 0, mode);
	else
		err = precopy_add_region(s->s, ram, len, mode);
	return err < 0 ? err : 0;
}

static void *s_main(void *arg)
{
	struct h_src *s = arg;

	s->err = precopy_migrate(s->s, s->uri);
	return NULL;
}

int h_src_start(struct h_src *s, const char *uri)
{
	s->uri = uri;
	s->running = true;
	return pthread_create(&s->thread, NULL, s_main, s) ? -EAGAIN : 0;
}

int h_src_join(struct h_src *s)
{
	if (s->running)
		pthread_join(s->thread, NULL);
	s->running = false;
	return s->err;
}

void h_src_free(struct h_src *s)
{
	if (s->s)
		precopy_delete(&s->s);
}

bool h_guest_runs(struct pc_guest *g)
{
	uint64_t w0 = pc_guest_writes(g);

	for (unsigned i = 0; i < 3000; i++) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };

		nanosleep(&ts, NULL);
		if (pc_guest_writes(g) > w0)
			return true;
	}
	return false;
}

bool h_wait_status(struct precopy_session *s, enum precopy_status want, unsigned ms)
{
	for (unsigned i = 0; i < ms; i += 5) {
		struct precopy_stats st;
		struct timespec ts = { 0, 5 * 1000 * 1000 };

		precopy_query(s, &st);
		if (st.status == want)
			return true;
		if (st.status >= PRECOPY_STATUS_COMPLETED)
			return false;
		nanosleep(&ts, NULL);
	}
	return false;
}

struct pc_guest *h_guest_new(const struct pc_guest_opts *o)
{
	struct pc_guest *g;

	assert_int_equal(pc_guest_new(o, &g), 0);
	assert_int_equal(pc_guest_start(g), 0);
	return g;
}

void h_check_guest_intact(struct pc_guest *g, const char *what)
{
	struct pc_guest_desc desc;
	char why[256];
	size_t len;
	void *mem = pc_guest_ram(g, &len);

	assert_true(h_guest_runs(g));
	pc_guest_pause(g);
	pc_guest_describe(g, &desc);
	if (pc_guest_verify(mem, len, &desc, why, sizeof(why)))
		fail_msg("%s memory: %s", what, why);
	pc_guest_resume(g);
}

void h_check_migrated(struct h_src *s, struct h_dest *d)
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
	if (pc_guest_verify(d->ram, d->len, &d->desc, why, sizeof(why)))
		fail_msg("destination memory: %s", why);
	precopy_query(s->s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_COMPLETED);
	assert_true(st.transferred >= st.normal_bytes);
	precopy_query(d->s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_COMPLETED);
}

void h_src_go(struct h_src *s, struct pc_guest *g, const struct precopy_params *p,
	      const char *uri)
{
	assert_int_equal(h_src_new(s, g, p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(h_src_start(s, uri), 0);
}

void h_check_source_back(struct h_src *s, enum precopy_status want)
{
	h_expect_status(s->s, want);
	assert_int_equal(s->resumes, s->stops);
	h_check_guest_intact(s->guest, "source");
}

void h_free_all(struct h_src *s, struct h_dest *d, struct pc_guest **g)
{
	if (s)
		h_src_free(s);
	if (d)
		h_dest_free(d);
	if (g)
		pc_guest_delete(g);
}

void h_migrate_ok(struct h_src *s, struct h_dest *d, struct pc_guest *g,
		  const struct precopy_params *p)
{
	h_src_go(s, g, p, d->uri);
	assert_int_equal(h_src_join(s), 0);
	assert_int_equal(h_dest_join(d), 0);
	h_check_migrated(s, d);
}

void h_slow_save(struct h_src *s)
{
	(void)s;
	usleep(3000 * 1000);
}

int h_slow_load(struct h_dest *d)
{
	(void)d;
	usleep(3000 * 1000);
	return 0;
}

void h_check_refused(struct h_src *s, struct h_dest *d, const char *what)
{
	char msg[PRECOPY_ERRMSG_MAX];

	assert_true(h_src_join(s) < 0);
	assert_true(h_dest_join(d) < 0);
	precopy_strerror(s->s, msg, sizeof(msg));
	if (!strstr(msg, what))
		fail_msg("source error \"%s\" does not say \"%s\"", msg, what);
	assert_int_equal(s->stops, 0);
}

int h_raw_connect(const char *uri)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	const char *port = strrchr(uri, ':');

	assert_true(fd >= 0 && port);
	a.sin_port = htons((uint16_t)atoi(port + 1));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	return fd;
}

void h_leaks_mark(struct h_leaks *l, long (*count)(void), const char *what)
{
	l->count = count;
	l->what = what;
	l->fds = h_count_fds();
	l->other = count ? count() : 0;
}

void h_leaks_check(const struct h_leaks *l, const char *when)
{
	long fds = h_count_fds(), other = l->count ? l->count() : 0;

	print_message("%s: %ld descriptors (%ld before), %ld %s (%ld before)\n", when, fds,
		      l->fds, other, l->what ? l->what : "-", l->other);
	assert_int_equal(fds, l->fds);
	assert_int_equal(other, l->other);
}

static void *accept_main(void *arg)
{
	struct h_accept *a = arg;
	struct pc_transport_opts o = { .timeout_ms = a->timeout_ms };

	a->err = a->l->ops->accept(a->l, &o, &a->t);
	return NULL;
}

void h_accept_start(struct h_accept *a)
{
	a->t = NULL;
	a->err = 1;
	assert_int_equal(pthread_create(&a->th, NULL, accept_main, a), 0);
}

int h_accept_join(struct h_accept *a)
{
	pthread_join(a->th, NULL);
	return a->err;
}

void h_expect_status(struct precopy_session *s, enum precopy_status want)
{
	struct precopy_stats st;

	precopy_query(s, &st);
	if (st.status != want)
		fail_msg("status %s, expected %s (%s)", precopy_status_name(st.status),
			 precopy_status_name(want), st.error);
	if (want == PRECOPY_STATUS_FAILED || want == PRECOPY_STATUS_CANCELLED)
		assert_true(st.error[0] != '\0');
}

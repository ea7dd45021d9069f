/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static int d_load(void *o, const void *buf, size_t len)
{
	struct h_dest *d = o;

	if (len != sizeof(d->desc))
		return -EINVAL;
	memcpy(&d->desc, buf, len);
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
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	long n = 0;

	if (!dir)
		return -1;
	while ((e = readdir(dir))) {
		char path[300], target[64] = "";

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		if (readlink(path, target, sizeof(target) - 1) > 0 && !strncmp(target, "pipe:", 5))
			continue; /* the engine opens none; sanitizers' symbolizers do */
		n++;
	}
	closedir(dir);
	return n - 1; /* the directory's own */
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

static int s_stop(void *o)
{
	struct h_src *s = o;

	int err;

	s->stops++;
	err = pc_guest_pause(s->guest);
	if (!err && s->on_stop)
		s->on_stop(s);
	return err;
}

static int s_resume(void *o)
{
	struct h_src *s = o;

	s->resumes++;
	return pc_guest_resume(s->guest);
}

static int s_save(void *o, void **buf, size_t *len)
{
	struct h_src *s = o;
	struct pc_guest_desc *d;

	if (s->on_save)
		s->on_save(s);
	d = malloc(sizeof(*d));
	if (!d)
		return -ENOMEM;
	pc_guest_describe(((struct h_src *)o)->guest, d);
	*buf = d;
	*len = sizeof(*d);
	return 0;
}

static int s_throttle(void *o, unsigned pct)
{
	return pc_guest_set_throttle(((struct h_src *)o)->guest, pct);
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

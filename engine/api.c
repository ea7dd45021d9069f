/* SPDX-License-Identifier: MIT */
/*
 * api.c - the public functions of precopy.h that are not the migration
 * itself: sessions, regions, parameters, statistics, cancel.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "page.h"
#include "session.h"
#include "uffd_place.h"

uint64_t pc_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * PC_NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

int pc_fail(struct precopy_session *s, int err, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&s->lock);
	if (!s->st.error[0]) {
		va_start(ap, fmt);
		vsnprintf(s->st.error, sizeof(s->st.error), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&s->lock);
	return err;
}

void pc_snapshot(struct precopy_session *s, struct precopy_stats *out)
{
	pthread_mutex_lock(&s->lock);
	*out = s->st;
	if (s->t_start && out->status != PRECOPY_STATUS_COMPLETED &&
	    out->status != PRECOPY_STATUS_FAILED && out->status != PRECOPY_STATUS_CANCELLED)
		out->total_time = (pc_now() - s->t_start) / PC_NSEC_PER_MSEC;
	pthread_mutex_unlock(&s->lock);
}

void pc_progress(struct precopy_session *s)
{
	struct precopy_stats st;

	if (!s->cb.progress)
		return;
	pc_snapshot(s, &st);
	s->cb.progress(s->cb.opaque, &st);
}

void pc_set_status(struct precopy_session *s, enum precopy_status status)
{
	pthread_mutex_lock(&s->lock);
	s->st.status = status;
	if (status >= PRECOPY_STATUS_COMPLETED && s->t_start)
		s->st.total_time = (pc_now() - s->t_start) / PC_NSEC_PER_MSEC;
	pthread_mutex_unlock(&s->lock);
	pc_progress(s);
}

const char *pc_err_context(struct precopy_session *s, int err)
{
	if (s->tp && s->tp->why[0])
		return s->tp->why;
	return strerror(-err);
}

void pc_deadline(struct timespec *ts, clockid_t clock, uint64_t ns)
{
	clock_gettime(clock, ts);
	ts->tv_sec += (time_t)(ns / PC_NSEC_PER_SEC);
	ts->tv_nsec += (long)(ns % PC_NSEC_PER_SEC);
	if (ts->tv_nsec >= (long)PC_NSEC_PER_SEC) {
		ts->tv_sec++;
		ts->tv_nsec -= (long)PC_NSEC_PER_SEC;
	}
}

void pc_sleep_ns(struct precopy_session *s, uint64_t ns)
{
	while (ns > 0 && !atomic_load(&s->cancel)) {
		uint64_t step = ns < 10 * PC_NSEC_PER_MSEC ? ns : 10 * PC_NSEC_PER_MSEC;
		struct timespec ts = { 0, (long)step };

		nanosleep(&ts, NULL);
		ns -= step;
	}
}

int precopy_params_init(struct precopy_params *p)
{
	if (!p)
		return -EINVAL;
	pc_policy_params_defaults(p);
	return 0;
}

int precopy_params_check(const struct precopy_params *p, char *why, size_t whylen)
{
	return pc_policy_params_check(p, why, whylen);
}

int precopy_new(enum precopy_role role, const struct precopy_params *params,
		const struct precopy_callbacks *cb, struct precopy_session **out)
{
	struct precopy_session *s;
	struct precopy_params def;

	if (!out || (role != PRECOPY_ROLE_SOURCE && role != PRECOPY_ROLE_DEST))
		return -EINVAL;
	if (!params) {
		precopy_params_init(&def);
		params = &def;
	}
	if (precopy_params_check(params, NULL, 0))
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->role = role;
	s->params = *params;
	if (cb)
		s->cb = *cb;
	atomic_init(&s->run_state, PC_IDLE);
	atomic_init(&s->cancel, false);
	atomic_init(&s->committed, false);
	pthread_mutex_init(&s->lock, NULL);
	s->st.status = PRECOPY_STATUS_NONE;
	s->st.dirty_mode = PRECOPY_DIRTY_AUTO;
	s->xparams.populate = true;
	*out = s;
	return 0;
}

static void tls_clear(struct precopy_session *s)
{
	free((char *)s->tls.psk_identity);
	if (s->tls.psk)
		memset((uint8_t *)s->tls.psk, 0, s->tls.psk_len); /* the key */
	free((uint8_t *)s->tls.psk);
	free((char *)s->tls.ca_file);
	free((char *)s->tls.cert_file);
	free((char *)s->tls.key_file);
	free((char *)s->tls.hostname);
	memset(&s->tls, 0, sizeof(s->tls));
	s->have_tls = false;
}

static int dup_str(const char *in, const char **out)
{
	*out = NULL;
	if (!in)
		return 0;
	*out = strdup(in);
	return *out ? 0 : -ENOMEM;
}

int precopy_set_tls(struct precopy_session *s, const struct precopy_tls *t)
{
	int err = 0;

	if (!s)
		return -EINVAL;
#if !PRECOPY_HAVE_TLS
	if (t)
		return -EPROTONOSUPPORT;
#endif
	if (atomic_load(&s->run_state) != PC_IDLE)
		return -EBUSY;
	if (t && t->psk_identity && (!*t->psk_identity || !t->psk || t->psk_len < 16 ||
				     t->psk_len > 4096))
		return -EINVAL;
	if (t && !t->psk_identity && (t->psk || (!t->ca_file && !t->cert_file) ||
				      (t->cert_file && !t->key_file)))
		return -EINVAL;
	tls_clear(s);
	if (!t)
		return 0;
	err = dup_str(t->psk_identity, &s->tls.psk_identity);
	if (!err && t->psk_identity) {
		uint8_t *k = malloc(t->psk_len);

		if (!k)
			err = -ENOMEM;
		else
			memcpy(k, t->psk, t->psk_len);
		s->tls.psk = k;
		s->tls.psk_len = t->psk_len;
	}
	if (!err)
		err = dup_str(t->ca_file, &s->tls.ca_file);
	if (!err)
		err = dup_str(t->cert_file, &s->tls.cert_file);
	if (!err)
		err = dup_str(t->key_file, &s->tls.key_file);
	if (!err)
		err = dup_str(t->hostname, &s->tls.hostname);
	if (err) {
		tls_clear(s);
		return err;
	}
	s->have_tls = true;
	return 0;
}

int precopy_delete(struct precopy_session **sp)
{
	struct precopy_session *s;

	if (!sp || !*sp)
		return -EINVAL;
	s = *sp;
	if (atomic_load(&s->run_state) == PC_RUNNING)
		return -EBUSY;
	for (unsigned i = 0; i < s->nreg; i++) {
		pc_dirty_delete(&s->reg[i].dirty);
		free((void *)s->reg[i].free_bm);
		free(s->reg[i].hash);
		if (s->reg[i].fd >= 0)
			close(s->reg[i].fd);
	}
	pc_uffd_place_close(s->uffd_kept);
	free(s->word_region);
	free(s->key);
	if (s->lst)
		pc_tp_listener_close(s->lst);
	pc_tp_close(s->tp);
	tls_clear(s);
	pthread_mutex_destroy(&s->lock);
	free(s);
	*sp = NULL;
	return 0;
}

int precopy_add_region(struct precopy_session *s, void *addr, size_t len,
		       enum precopy_dirty_mode mode)
{
	struct pc_region *r;
	uintptr_t a = (uintptr_t)addr;
	int err;

	if (!s || !addr || len == 0 || a % PRECOPY_PAGE_SIZE || len % PRECOPY_PAGE_SIZE ||
	    a + len < a || mode > PRECOPY_DIRTY_EXTERNAL)
		return -EINVAL;
	if (atomic_load(&s->run_state) != PC_IDLE || s->lst)
		return -EBUSY;
	if (s->nreg == PRECOPY_MAX_REGIONS)
		return -ENOSPC;
	for (unsigned i = 0; i < s->nreg; i++) {
		uintptr_t b = (uintptr_t)s->reg[i].addr;

		if (a < b + s->reg[i].len && b < a + len)
			return -EINVAL;
	}
	if (pc_region_need(len) > pc_host_memory()) {
		/* The text describes this call's refusal (not a run's failure:
		 * a run starts with none). */
		pthread_mutex_lock(&s->lock);
		snprintf(s->st.error, sizeof(s->st.error),
			 "a region of %zu bytes and its checksum table need %llu bytes; this host "
			 "has %llu bytes of memory and swap", len,
			 (unsigned long long)pc_region_need(len),
			 (unsigned long long)pc_host_memory());
		pthread_mutex_unlock(&s->lock);
		return -ENOMEM;
	}
	r = &s->reg[s->nreg];
	memset(r, 0, sizeof(*r));
	r->addr = addr;
	r->len = len;
	r->npages = len / PRECOPY_PAGE_SIZE;
	r->mode = mode;
	r->fd = -1;
	r->hash = malloc(r->npages * sizeof(uint64_t));
	if (!r->hash)
		return -ENOMEM;
	if (s->role == PRECOPY_ROLE_SOURCE) {
		err = pc_dirty_new(addr, len, mode, &r->dirty);
		if (err) {
			free(r->hash);
			r->hash = NULL;
			return err;
		}
		r->mode = pc_dirty_mode(r->dirty);
		if (s->nreg == 0)
			s->st.dirty_mode = r->mode;
	}
	r->word_base = s->nwords;
	s->nwords += (r->npages + 63) / 64;
	s->total_pages += r->npages;
	s->st.total = s->total_pages * PRECOPY_PAGE_SIZE;
	return (int)s->nreg++;
}

static int check_bitmap_args(struct precopy_session *s, int region, uint64_t first,
			     const uint64_t *bitmap, uint64_t npages)
{
	if (!s || !bitmap || region < 0 || (unsigned)region >= s->nreg)
		return -EINVAL;
	if (first > s->reg[region].npages || npages > s->reg[region].npages - first)
		return -EINVAL;
	return 0;
}

int precopy_region_mark_dirty(struct precopy_session *s, int region, uint64_t first_page,
			      const uint64_t *bitmap, uint64_t npages)
{
	int err = check_bitmap_args(s, region, first_page, bitmap, npages);

	if (err)
		return err;
	if (s->role != PRECOPY_ROLE_SOURCE || s->reg[region].mode != PRECOPY_DIRTY_EXTERNAL)
		return -ENOTSUP;
	return pc_dirty_mark(s->reg[region].dirty, first_page, bitmap, npages);
}

/*
 * Hints are taken only while the dirty log is armed: a write after the
 * hint is then logged, found by the next sync, which clears the page's
 * free bit and makes it pending again, so it is sent with its contents. A
 * hint only marks pages that are pending now; the senders send those as
 * FREE runs (the destination zeroes them, and both ends checksum them as
 * the zero page). A page that is not pending was sent already and stays
 * as sent, at both ends alike.
 */
int precopy_region_hint_free(struct precopy_session *s, int region, uint64_t first_page,
			     const uint64_t *bitmap, uint64_t npages)
{
	struct pc_region *r;
	_Atomic uint64_t *pending;
	uint64_t mask = 0, word = UINT64_MAX;
	int err = check_bitmap_args(s, region, first_page, bitmap, npages);

	if (err)
		return err;
	if (s->role != PRECOPY_ROLE_SOURCE)
		return -EINVAL;
	r = &s->reg[region];
	pthread_mutex_lock(&s->lock);
	pending = s->hint_pending;
	if (!pending || !r->free_bm) {
		err = s->hints_closed || atomic_load(&s->run_state) == PC_ENDED ? -EBUSY
										 : -EAGAIN;
		pthread_mutex_unlock(&s->lock);
		return err;
	}
	for (uint64_t i = 0; i <= npages; i++) {
		uint64_t p = first_page + i;

		if (i == npages || p / 64 != word) {
			if (mask) {
				uint64_t on = atomic_load(&pending[r->word_base + word]) & mask;

				if (on)
					atomic_fetch_or(&r->free_bm[word], on);
			}
			if (i == npages)
				break;
			word = p / 64;
			mask = 0;
		}
		if (bitmap[i / 64] >> (i % 64) & 1)
			mask |= 1ull << (p % 64);
	}
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* Claim the session for one run; a session runs once. */
static int begin_run(struct precopy_session *s, enum precopy_role role)
{
	int idle = PC_IDLE;

	if (s->role != role)
		return -EINVAL;
	if (s->nreg == 0)
		return -ENOENT;
	if (!atomic_compare_exchange_strong(&s->run_state, &idle, PC_RUNNING))
		return -EBUSY;
	if (!s->word_region) {
		s->word_region = malloc(s->nwords * sizeof(uint16_t));
		if (!s->word_region) {
			atomic_store(&s->run_state, PC_ENDED);
			return -ENOMEM;
		}
		for (unsigned i = 0; i < s->nreg; i++)
			for (uint64_t w = 0; w < (s->reg[i].npages + 63) / 64; w++)
				s->word_region[s->reg[i].word_base + w] = (uint16_t)i;
	}
	pthread_mutex_lock(&s->lock);
	s->t_start = pc_now();
	s->st.error[0] = '\0'; /* a refused precopy_add_region() is not this run's */
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static int end_run(struct precopy_session *s, int err)
{
	enum precopy_status st = PRECOPY_STATUS_COMPLETED;

	if (err == -ECANCELED || (err && atomic_load(&s->cancel))) {
		err = -ECANCELED;
		st = PRECOPY_STATUS_CANCELLED;
		pc_fail(s, err, "cancelled");
	} else if (err) {
		st = PRECOPY_STATUS_FAILED;
		pc_fail(s, err, "%s", strerror(-err));
	}
	pthread_mutex_lock(&s->lock);
	if (s->tp) {
		struct pc_transport *tp = s->tp;
		struct pc_tp_reg_stats rs;

		s->tp = NULL;
		if (pc_tp_reg_stats(tp, &rs) == 0) {
			s->reg_stats = rs;
			s->have_reg_stats = true;
			s->st.registered = true;
			s->st.registration_pin_all = rs.pin_all;
			s->st.registration_ns = rs.ns;
			s->st.registered_bytes = rs.bytes;
			s->st.registrations = rs.count;
		}
		pthread_mutex_unlock(&s->lock);
		pc_tp_close(tp);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	pc_set_status(s, st);
	atomic_store(&s->run_state, PC_ENDED);
	return err;
}

int precopy_set_auth_key(struct precopy_session *s, const void *key, size_t len)
{
	uint8_t *k = NULL;

	if (!s || len > PRECOPY_AUTH_KEY_MAX || (len && !key))
		return -EINVAL;
	if (atomic_load(&s->run_state) != PC_IDLE)
		return -EBUSY;
	if (len) {
		k = malloc(len);
		if (!k)
			return -ENOMEM;
		memcpy(k, key, len);
	}
	free(s->key);
	s->key = k;
	s->key_len = len;
	return 0;
}

int precopy_set_registration(struct precopy_session *s, enum precopy_registration mode)
{
	if (!s || (mode != PRECOPY_REG_ON_DEMAND && mode != PRECOPY_REG_PIN_ALL))
		return -EINVAL;
	if (atomic_load(&s->run_state) != PC_IDLE)
		return -EBUSY;
	s->reg_mode = mode;
	return 0;
}

int pc_session_reg_stats(struct precopy_session *s, struct pc_tp_reg_stats *out)
{
	int err = -ENODATA;

	if (!s || !out)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	if (s->have_reg_stats && atomic_load(&s->run_state) == PC_ENDED) {
		*out = s->reg_stats;
		err = 0;
	}
	pthread_mutex_unlock(&s->lock);
	return err;
}

int precopy_migrate(struct precopy_session *s, const char *uri)
{
	int err;

	if (!s || !uri)
		return -EINVAL;
	err = begin_run(s, PRECOPY_ROLE_SOURCE);
	if (err)
		return err;
	err = pc_source_run(s, uri);
	return end_run(s, err);
}

/*
 * The destination's memory, allocated before any source can connect
 * (unless "populate" is off): receiving then takes no page fault, which
 * on a fast link costs more than the copy itself. Best effort: what could
 * not be populated faults in as it is written.
 */
static void populate_regions(struct precopy_session *s)
{
	uint64_t t0 = pc_now(), bytes = 0;
	bool on;

	pthread_mutex_lock(&s->lock);
	on = s->xparams.populate;
	pthread_mutex_unlock(&s->lock);
	if (!on)
		return;
	for (unsigned i = 0; i < s->nreg; i++) {
		int64_t n = pc_populate(s->reg[i].addr, s->reg[i].len, 0);

		if (n > 0)
			bytes += (uint64_t)n;
	}
	pthread_mutex_lock(&s->lock);
	s->st.populate_ms = (pc_now() - t0) / PC_NSEC_PER_MSEC;
	s->st.populated_bytes = bytes;
	pthread_mutex_unlock(&s->lock);
}

int precopy_listen(struct precopy_session *s, const char *uri)
{
	const struct pc_transport_ops *ops;
	struct pc_transport_opts o = { .channels = 0, .key = s ? s->key : NULL,
				       .key_len = s ? s->key_len : 0,
				       .tls = s && s->have_tls ? &s->tls : NULL };
	const char *rest;
	int err;

	if (!s || !uri || s->role != PRECOPY_ROLE_DEST)
		return -EINVAL;
	if (s->lst || atomic_load(&s->run_state) != PC_IDLE)
		return -EBUSY;
	err = pc_transport_split_uri(uri, &ops, &rest);
	if (err)
		return err;
	err = pc_tp_listen(ops, rest, &o, &s->lst);
	if (err)
		return err;
	s->ops = ops;
	/* Listening, so the regions are final (precopy_add_region() says
	 * -EBUSY now); a source that connects meanwhile waits in the
	 * backlog. */
	populate_regions(s);
	return 0;
}

int pc_session_set_listener(struct precopy_session *s, struct pc_listener *l)
{
	if (!s || !l || s->role != PRECOPY_ROLE_DEST)
		return -EINVAL;
	if (s->lst || atomic_load(&s->run_state) != PC_IDLE)
		return -EBUSY;
	s->lst = l;
	s->ops = l->ops;
	populate_regions(s);
	return 0;
}

int precopy_local_uri(struct precopy_session *s, char *buf, size_t len)
{
	if (!s || !buf || !len)
		return -EINVAL;
	if (!s->lst)
		return -ENOTCONN;
	return pc_tp_listener_addr(s->lst, buf, len);
}

int precopy_incoming(struct precopy_session *s)
{
	int err;

	if (!s)
		return -EINVAL;
	if (!s->lst)
		return -ENOTCONN;
	err = begin_run(s, PRECOPY_ROLE_DEST);
	if (err)
		return err;
	err = pc_dest_run(s);
	return end_run(s, err);
}

int precopy_cancel(struct precopy_session *s)
{
	if (!s)
		return -EINVAL;
	if (atomic_load(&s->run_state) == PC_ENDED)
		return -EALREADY;
	pthread_mutex_lock(&s->lock);
	if (atomic_load(&s->committed)) {
		pthread_mutex_unlock(&s->lock);
		return -EBUSY;
	}
	atomic_store(&s->cancel, true);
	if (s->tp)
		pc_tp_abort(s->tp);
	if (s->lst)
		pc_tp_listener_abort(s->lst);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int precopy_query_sized(struct precopy_session *s, struct precopy_stats *out, size_t size)
{
	struct precopy_stats st;

	if (!s || !out || size < PRECOPY_STATS_SIZE_0_1)
		return -EINVAL;
	pc_snapshot(s, &st);
	if (size > sizeof(st)) {
		memset((char *)out + sizeof(st), 0, size - sizeof(st));
		size = sizeof(st);
	}
	memcpy(out, &st, size);
	return 0;
}

/* Binaries built against PRECOPY_0.1 call precopy_query() with the 0.1
 * struct; the header's precopy_query() is now an inline over
 * precopy_query_sized(), so the old symbol stays for them only. */
int pc_query_v0_1(struct precopy_session *s, struct precopy_stats *out);
int pc_query_v0_1(struct precopy_session *s, struct precopy_stats *out)
{
	return precopy_query_sized(s, out, PRECOPY_STATS_SIZE_0_1);
}
__asm__(".symver pc_query_v0_1, precopy_query@PRECOPY_0.1");

unsigned precopy_version(void)
{
	return (PRECOPY_VERSION_MAJOR << 16) | PRECOPY_VERSION_MINOR;
}

/* --- parameters by name ------------------------------------------------- */

static const char *const param_names[PRECOPY_PARAM__COUNT] = {
	[PRECOPY_PARAM_MAX_BANDWIDTH] = "max-bandwidth",
	[PRECOPY_PARAM_DOWNTIME_LIMIT] = "downtime-limit",
	[PRECOPY_PARAM_AVAIL_SWITCHOVER_BANDWIDTH] = "avail-switchover-bandwidth",
	[PRECOPY_PARAM_AUTO_CONVERGE] = "auto-converge",
	[PRECOPY_PARAM_THROTTLE_TRIGGER_THRESHOLD] = "throttle-trigger-threshold",
	[PRECOPY_PARAM_CPU_THROTTLE_INITIAL] = "cpu-throttle-initial",
	[PRECOPY_PARAM_CPU_THROTTLE_INCREMENT] = "cpu-throttle-increment",
	[PRECOPY_PARAM_MAX_CPU_THROTTLE] = "max-cpu-throttle",
	[PRECOPY_PARAM_CPU_THROTTLE_TAILSLOW] = "cpu-throttle-tailslow",
	[PRECOPY_PARAM_MAX_ITERATIONS] = "max-iterations",
	[PRECOPY_PARAM_MAX_TIME] = "max-time",
	[PRECOPY_PARAM_STALL_ITERATIONS] = "stall-iterations",
	[PRECOPY_PARAM_ON_LIMIT] = "on-limit",
	[PRECOPY_PARAM_CHANNELS] = "channels",
	[PRECOPY_PARAM_TIMEOUT] = "timeout",
	[PRECOPY_PARAM_MAX_FORCED_DOWNTIME] = "max-forced-downtime",
	[PRECOPY_PARAM_POPULATE] = "populate",
	[PRECOPY_PARAM_DEVICE_STATE_SIZE] = "device-state-size",
};

const char *precopy_param_name(enum precopy_param param)
{
	if ((unsigned)param >= PRECOPY_PARAM__COUNT)
		return NULL;
	return param_names[param];
}

int precopy_param_from_name(const char *name)
{
	if (!name)
		return -EINVAL;
	for (unsigned i = 0; i < PRECOPY_PARAM__COUNT; i++)
		if (!strcmp(name, param_names[i]))
			return (int)i;
	return -ENOENT;
}

static int param_bool(uint64_t v, bool *out)
{
	if (v > 1)
		return -EINVAL;
	*out = v;
	return 0;
}

static int param_uint(uint64_t v, unsigned *out)
{
	if (v > UINT32_MAX)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

static int param_upto(uint64_t v, uint64_t max, uint64_t *out)
{
	if (v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

/* Store @v into @p's field (or @x's) for @param; -EINVAL if it cannot
 * be held. */
static int param_store(struct precopy_params *p, struct pc_xparams *x, enum precopy_param param,
		       uint64_t v)
{
	switch (param) {
	case PRECOPY_PARAM_MAX_BANDWIDTH: p->max_bandwidth = v; return 0;
	case PRECOPY_PARAM_DOWNTIME_LIMIT: p->downtime_limit_ms = v; return 0;
	case PRECOPY_PARAM_AVAIL_SWITCHOVER_BANDWIDTH: p->avail_switchover_bandwidth = v; return 0;
	case PRECOPY_PARAM_AUTO_CONVERGE: return param_bool(v, &p->auto_converge);
	case PRECOPY_PARAM_THROTTLE_TRIGGER_THRESHOLD:
		return param_uint(v, &p->throttle_trigger_threshold);
	case PRECOPY_PARAM_CPU_THROTTLE_INITIAL: return param_uint(v, &p->cpu_throttle_initial);
	case PRECOPY_PARAM_CPU_THROTTLE_INCREMENT: return param_uint(v, &p->cpu_throttle_increment);
	case PRECOPY_PARAM_MAX_CPU_THROTTLE: return param_uint(v, &p->max_cpu_throttle);
	case PRECOPY_PARAM_CPU_THROTTLE_TAILSLOW: return param_bool(v, &p->cpu_throttle_tailslow);
	case PRECOPY_PARAM_MAX_ITERATIONS: return param_uint(v, &p->max_iterations);
	case PRECOPY_PARAM_MAX_TIME: p->max_time_ms = v; return 0;
	case PRECOPY_PARAM_STALL_ITERATIONS: return param_uint(v, &p->stall_iterations);
	case PRECOPY_PARAM_ON_LIMIT:
		if (v > PRECOPY_ON_LIMIT_POSTCOPY)
			return -EINVAL;
		p->on_limit = (enum precopy_on_limit)v;
		return 0;
	case PRECOPY_PARAM_CHANNELS: return param_uint(v, &p->channels);
	case PRECOPY_PARAM_TIMEOUT: return param_uint(v, &p->timeout_ms);
	case PRECOPY_PARAM_MAX_FORCED_DOWNTIME:
		return param_upto(v, PC_DOWNTIME_LIMIT_MAX_MS, &x->max_forced_downtime_ms);
	case PRECOPY_PARAM_POPULATE: return param_bool(v, &x->populate);
	case PRECOPY_PARAM_DEVICE_STATE_SIZE:
		return param_upto(v, PC_WIRE_DEVSTATE_MAX, &x->device_state_size);
	case PRECOPY_PARAM__COUNT: break;
	}
	return -EINVAL;
}

static uint64_t param_load(const struct precopy_params *p, const struct pc_xparams *x,
			   enum precopy_param param)
{
	switch (param) {
	case PRECOPY_PARAM_MAX_BANDWIDTH: return p->max_bandwidth;
	case PRECOPY_PARAM_DOWNTIME_LIMIT: return p->downtime_limit_ms;
	case PRECOPY_PARAM_AVAIL_SWITCHOVER_BANDWIDTH: return p->avail_switchover_bandwidth;
	case PRECOPY_PARAM_AUTO_CONVERGE: return p->auto_converge;
	case PRECOPY_PARAM_THROTTLE_TRIGGER_THRESHOLD: return p->throttle_trigger_threshold;
	case PRECOPY_PARAM_CPU_THROTTLE_INITIAL: return p->cpu_throttle_initial;
	case PRECOPY_PARAM_CPU_THROTTLE_INCREMENT: return p->cpu_throttle_increment;
	case PRECOPY_PARAM_MAX_CPU_THROTTLE: return p->max_cpu_throttle;
	case PRECOPY_PARAM_CPU_THROTTLE_TAILSLOW: return p->cpu_throttle_tailslow;
	case PRECOPY_PARAM_MAX_ITERATIONS: return p->max_iterations;
	case PRECOPY_PARAM_MAX_TIME: return p->max_time_ms;
	case PRECOPY_PARAM_STALL_ITERATIONS: return p->stall_iterations;
	case PRECOPY_PARAM_ON_LIMIT: return p->on_limit;
	case PRECOPY_PARAM_CHANNELS: return p->channels;
	case PRECOPY_PARAM_TIMEOUT: return p->timeout_ms;
	case PRECOPY_PARAM_MAX_FORCED_DOWNTIME: return x->max_forced_downtime_ms;
	case PRECOPY_PARAM_POPULATE: return x->populate;
	case PRECOPY_PARAM_DEVICE_STATE_SIZE: return x->device_state_size;
	case PRECOPY_PARAM__COUNT: break;
	}
	return 0;
}

/* With s->lock held: the candidate parameters after the change into @cand. */
static int param_try(struct precopy_session *s, enum precopy_param param, uint64_t value,
		     struct precopy_params *cand, struct pc_xparams *xcand, char *why,
		     size_t whylen)
{
	int state = atomic_load(&s->run_state);
	const char *name = precopy_param_name(param);
	int err;

	if (!name) {
		snprintf(why ? why : (char[1]){ 0 }, why ? whylen : 1, "unknown parameter %d",
			 (int)param);
		return -EINVAL;
	}
	if (state == PC_ENDED) {
		if (why && whylen)
			snprintf(why, whylen, "%s: the migration has ended", name);
		return -EBUSY;
	}
	if (state != PC_IDLE &&
	    (param == PRECOPY_PARAM_CHANNELS || param == PRECOPY_PARAM_TIMEOUT)) {
		if (why && whylen)
			snprintf(why, whylen, "%s: fixed once the migration has started", name);
		return -EBUSY;
	}
	if (param == PRECOPY_PARAM_ON_LIMIT && state != PC_IDLE &&
	    (value == PRECOPY_ON_LIMIT_POSTCOPY) != (s->params.on_limit == PRECOPY_ON_LIMIT_POSTCOPY)) {
		/* the handshake agreed on postcopy, or not, for this migration */
		if (why && whylen)
			snprintf(why, whylen, "%s: postcopy or not is fixed once the migration has started",
				 name);
		return -EBUSY;
	}
	if (param == PRECOPY_PARAM_POPULATE && (state != PC_IDLE || s->lst)) {
		/* precopy_listen() has populated (or not) already */
		if (why && whylen)
			snprintf(why, whylen, "%s: fixed once the destination listens", name);
		return -EBUSY;
	}
	*cand = s->params;
	*xcand = s->xparams;
	err = param_store(cand, xcand, param, value);
	if (err) {
		if (why && whylen)
			snprintf(why, whylen, "%s: %llu is out of range", name,
				 (unsigned long long)value);
		return err;
	}
	return pc_policy_params_check(cand, why, whylen);
}

/* Check @value for @param and, if @store, make it the session's. */
static int param_apply(struct precopy_session *s, enum precopy_param param, uint64_t value,
		       bool store, char *why, size_t whylen)
{
	struct precopy_params cand;
	struct pc_xparams xcand;
	int err;

	if (!s)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	err = param_try(s, param, value, &cand, &xcand, why, whylen);
	if (!err && store) {
		s->params = cand;
		s->xparams = xcand;
		atomic_fetch_add(&s->params_gen, 1);
	}
	pthread_mutex_unlock(&s->lock);
	return err;
}

int precopy_param_check(struct precopy_session *s, enum precopy_param param, uint64_t value,
			char *why, size_t whylen)
{
	return param_apply(s, param, value, false, why, whylen);
}

int precopy_set_param(struct precopy_session *s, enum precopy_param param, uint64_t value)
{
	return param_apply(s, param, value, true, NULL, 0);
}

int precopy_get_param(struct precopy_session *s, enum precopy_param param, uint64_t *value)
{
	if (!s || !value || !precopy_param_name(param))
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	*value = param_load(&s->params, &s->xparams, param);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

unsigned pc_params_snapshot(struct precopy_session *s, struct precopy_params *out)
{
	unsigned gen;

	pthread_mutex_lock(&s->lock);
	*out = s->params;
	gen = atomic_load(&s->params_gen);
	pthread_mutex_unlock(&s->lock);
	return gen;
}

int precopy_strerror(struct precopy_session *s, char *buf, size_t len)
{
	if (!s || !buf || !len)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	snprintf(buf, len, "%s", s->st.error);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

const char *precopy_status_name(enum precopy_status st)
{
	switch (st) {
	case PRECOPY_STATUS_NONE: return "none";
	case PRECOPY_STATUS_SETUP: return "setup";
	case PRECOPY_STATUS_BULK: return "bulk";
	case PRECOPY_STATUS_ITERATE: return "iterate";
	case PRECOPY_STATUS_SWITCHOVER: return "switchover";
	case PRECOPY_STATUS_COMPLETED: return "completed";
	case PRECOPY_STATUS_FAILED: return "failed";
	case PRECOPY_STATUS_CANCELLED: return "cancelled";
	}
	return "unknown";
}

const char *precopy_dirty_mode_name(enum precopy_dirty_mode m)
{
	switch (m) {
	case PRECOPY_DIRTY_AUTO: return "auto";
	case PRECOPY_DIRTY_UFFD_WP: return "uffd-wp";
	case PRECOPY_DIRTY_SOFT_DIRTY: return "soft-dirty";
	case PRECOPY_DIRTY_EXTERNAL: return "external";
	}
	return "unknown";
}

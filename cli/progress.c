/* SPDX-License-Identifier: MIT */
/*
 * progress.c - the progress line of precopy migrate, incoming and demo.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "progress.h"

/* --- the estimate ---------------------------------------------------------- */

enum pc_eta_kind pc_eta(const struct pc_eta_in *in, double *seconds)
{
	double S = in->send_bps, D = in->switch_bps > 0 ? in->switch_bps : in->send_bps;
	double W = in->dirty_bps > 0 ? in->dirty_bps : 0, L = in->limit_ms / 1e3;
	double total = in->total ? (double)in->total : INFINITY;
	double P = (double)in->pending, t = 0;

	if (!(S > 0) || !isfinite(S) || !isfinite(W))
		return PC_ETA_UNKNOWN;
	if (in->bulk) {
		/* The bulk pass sends what it has not reached; what the guest
		 * dirtied behind it (pending beyond that) and what it dirties
		 * until the pass ends is left for the next pass. */
		double unsent = (double)in->bulk_unsent;

		if (unsent > P)
			unsent = P;
		t = unsent / S;
		P = fmin(total, P - unsent + W * t);
		if (P / D <= L) {
			*seconds = t;
			return PC_ETA_SECONDS;
		}
	}
	for (int pass = 0; pass < 10000 && t < 1e7; pass++) {
		double dt = P / S, next = fmin(total, W * dt);

		t += dt;
		if (next / D <= L) {
			*seconds = t;
			return PC_ETA_SECONDS;
		}
		if (next >= P)
			return PC_ETA_NOT_CONVERGING;
		P = next;
	}
	return PC_ETA_NOT_CONVERGING;
}

/* --- the line -------------------------------------------------------------- */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A rate, short: "752.9 MiB/s". */
static const char *fmt_rate(double bps, char *buf, size_t len)
{
	static const char *const unit[] = { "B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s" };
	int u = 0;

	if (!(bps > 0))
		bps = 0;
	while (bps >= 1024 && u < 4) {
		bps /= 1024;
		u++;
	}
	snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", bps, unit[u]);
	return buf;
}

static const char *fmt_eta(double s, char *buf, size_t len)
{
	if (s < 0.1)
		snprintf(buf, len, "< 0.1 s");
	else if (s < 10)
		snprintf(buf, len, "~%.1f s", s);
	else if (s < 100)
		snprintf(buf, len, "~%.0f s", s);
	else if (s < 3600)
		snprintf(buf, len, "~%.0f min %02.0f s", floor(s / 60), fmod(s, 60));
	else
		snprintf(buf, len, "~%.0f h %02.0f min", floor(s / 3600), fmod(s / 60, 60));
	return buf;
}

static void add_sample(struct pc_progress *p, const struct precopy_stats *st)
{
	struct pc_progress_sample v = {
		.ms = st->total_time, .remaining = st->remaining,
		.done = st->normal + st->duplicate + st->free_skipped,
		.bytes = st->transferred,
	};
	struct pc_progress_sample *last =
		p->nsmp ? &p->smp[(p->nsmp - 1) % PC_PROGRESS_SAMPLES] : NULL;

	if (st->status < PRECOPY_STATUS_BULK || st->status > PRECOPY_STATUS_ITERATE)
		return;
	if (last && last->ms >= v.ms) {
		*last = v; /* same millisecond: the newer counters win */
		return;
	}
	p->smp[p->nsmp++ % PC_PROGRESS_SAMPLES] = v;
}

/*
 * The newest sample and one at least @min_ms older (the newest such):
 * rates over >= 1 s, since dirty pages are collected once a second.
 */
static bool window(const struct pc_progress *p, uint64_t min_ms,
		   const struct pc_progress_sample **a, const struct pc_progress_sample **b)
{
	unsigned n = p->nsmp < PC_PROGRESS_SAMPLES ? p->nsmp : PC_PROGRESS_SAMPLES;

	if (n < 2)
		return false;
	*b = &p->smp[(p->nsmp - 1) % PC_PROGRESS_SAMPLES];
	for (unsigned i = 1; i < n; i++) {
		const struct pc_progress_sample *s = &p->smp[(p->nsmp - 1 - i) % PC_PROGRESS_SAMPLES];

		if ((*b)->ms - s->ms >= min_ms) {
			*a = s;
			return true;
		}
	}
	return false;
}

/* Bytes/s the guest dirties and we send, over the last 1..2 s. */
static void rates(const struct pc_progress *p, double *dirty, double *send)
{
	const struct pc_progress_sample *a, *b;

	*dirty = -1;
	*send = -1;
	if (window(p, 2000, &a, &b) || window(p, 1000, &a, &b)) {
		double dt = (b->ms - a->ms) / 1e3;
		double dirtied = ((double)b->remaining - (double)a->remaining) +
				 ((double)b->done - (double)a->done) * PRECOPY_PAGE_SIZE;

		*dirty = dirtied > 0 ? dirtied / dt : 0;
		*send = ((double)b->bytes - (double)a->bytes) / dt;
	}
}

/* The line of a phase that is not a pass (setup, switchover, the end)
 * into @buf. Return: whether @status is one. */
static bool format_phase(const struct pc_progress *p, enum precopy_status status, char *buf,
			 size_t len)
{
	const struct precopy_stats *st = &p->st;
	char a[32];

	switch (status) {
	case PRECOPY_STATUS_NONE:
	case PRECOPY_STATUS_SETUP:
		snprintf(buf, len, "setup: %s", p->what);
		return true;
	case PRECOPY_STATUS_COMPLETED:
		snprintf(buf, len, "completed: %s %s", pc_cli_fmt_bytes((double)st->transferred, a, sizeof(a)),
			 p->source ? "sent" : "received");
		return true;
	case PRECOPY_STATUS_FAILED:
	case PRECOPY_STATUS_CANCELLED:
		snprintf(buf, len, "%s", precopy_status_name(status));
		return true;
	case PRECOPY_STATUS_SWITCHOVER:
		if (p->source)
			snprintf(buf, len, "switchover: guest stopped, %" PRIu64 " pages pending (%s)",
				 st->remaining / PRECOPY_PAGE_SIZE,
				 pc_cli_fmt_bytes((double)st->remaining, a, sizeof(a)));
		else
			snprintf(buf, len, "switchover: the source's guest is stopped; last pages "
					   "and device state, %s received",
				 pc_cli_fmt_bytes((double)st->transferred, a, sizeof(a)));
		return true;
	default:
		return false;
	}
}

/* When the switchover comes, at the rates @send and @dirty (bytes/s; < 0:
 * not known yet), into @buf. */
static void format_eta(const struct pc_progress *p, enum precopy_status status, double send,
		       double dirty, char *buf, size_t len)
{
	const struct precopy_stats *st = &p->st;
	uint64_t done = (st->normal + st->duplicate + st->free_skipped) * PRECOPY_PAGE_SIZE;
	struct pc_eta_in in = {
		.pending = st->remaining,
		.bulk = status == PRECOPY_STATUS_BULK,
		.bulk_unsent = st->total > done ? st->total - done : 0,
		.total = st->total,
		.send_bps = send,
		.switch_bps = p->avail_bps ? (double)p->avail_bps : (double)st->bandwidth_busy,
		.dirty_bps = dirty,
		.limit_ms = p->limit_ms,
	};
	double s = 0;
	char e[32];

	switch (dirty < 0 ? PC_ETA_UNKNOWN : pc_eta(&in, &s)) {
	case PC_ETA_SECONDS:
		snprintf(buf, len, "switchover in %s", fmt_eta(s, e, sizeof(e)));
		break;
	case PC_ETA_NOT_CONVERGING:
		snprintf(buf, len, "not converging at this rate");
		break;
	default:
		snprintf(buf, len, "switchover in ...");
		break;
	}
}

void pc_progress_format(struct pc_progress *p, uint64_t ms, char *buf, size_t len)
{
	const struct precopy_stats *st = &p->st;
	enum precopy_status status = p->have_st ? st->status : PRECOPY_STATUS_NONE;
	double dirty, send, total = (double)st->total;
	char a[32], b[32], c[32];
	size_t n;

	n = (size_t)snprintf(buf, len, "%5.1f s  ", ms / 1e3);
	if (n >= len)
		return;
	buf += n;
	len -= n;
	rates(p, &dirty, &send);
	if (send < 0 && st->status == PRECOPY_STATUS_ITERATE)
		send = (double)st->bandwidth_wall;
	if (dirty < 0 && st->iteration > 0)
		dirty = (double)st->dirty_pages_rate * PRECOPY_PAGE_SIZE;

	if (format_phase(p, status, buf, len))
		return;

	/* bulk or a later pass */
	if (status == PRECOPY_STATUS_BULK) {
		double done = (double)(st->normal + st->duplicate + st->free_skipped) *
			      PRECOPY_PAGE_SIZE;

		n = (size_t)snprintf(buf, len, "bulk %3.0f%% of %s",
				     total ? fmin(100, 100 * done / total) : 0,
				     pc_cli_fmt_bytes(total, a, sizeof(a)));
	} else if (p->source) {
		n = (size_t)snprintf(buf, len, "pass %u  %" PRIu64 " pages pending",
				     st->iteration + 1, st->remaining / PRECOPY_PAGE_SIZE);
	} else {
		n = (size_t)snprintf(buf, len, "pass %u  %s received", st->iteration + 1,
				     pc_cli_fmt_bytes((double)st->transferred, a, sizeof(a)));
	}
	if (n >= len)
		return;
	buf += n;
	len -= n;
	if (!p->source) {
		snprintf(buf, len, "  rate %s", send < 0 ? "..." : fmt_rate(send, b, sizeof(b)));
		return;
	}
	n = (size_t)snprintf(buf, len, "  rate %s  dirty %s  throttle %u%%  ",
			     send < 0 ? "..." : fmt_rate(send, b, sizeof(b)),
			     dirty < 0 ? "..." : fmt_rate(dirty, c, sizeof(c)),
			     st->cpu_throttle_percentage);
	if (n >= len)
		return;
	buf += n;
	len -= n;
	format_eta(p, status, send, dirty, buf, len);
}

static int term_cols(FILE *f)
{
	struct winsize ws;

	if (ioctl(fileno(f), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
		return ws.ws_col;
	return 80;
}

/* Redraw; lock held. */
static void redraw(struct pc_progress *p)
{
	char line[512];
	uint64_t ms, now = now_ns();
	int cols;

	if (!p->draw)
		return;
	if (p->have_st && p->st.status >= PRECOPY_STATUS_COMPLETED)
		ms = p->st.total_time;
	else if (p->have_st && p->st.status != PRECOPY_STATUS_NONE)
		ms = p->st.total_time + (now - p->t_st_ns) / 1000000;
	else
		ms = (now - p->t0_ns) / 1000000;
	pc_progress_format(p, ms, line, sizeof(line));
	cols = term_cols(p->f);
	if (cols > 1 && (size_t)cols - 1 < sizeof(line))
		line[cols - 1] = '\0'; /* never wrap: a wrapped line cannot be erased */
	fprintf(p->f, "\r\033[K%s", line);
	fflush(p->f);
	p->line_open = true;
}

static void *ticker(void *arg)
{
	struct pc_progress *p = arg;

	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += 250 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		if (pthread_cond_timedwait(&p->cv, &p->lock, &ts) != ETIMEDOUT || p->stop)
			continue;
		/* The destination reports progress at pass ends only: ask. */
		if (p->s && !p->source) {
			struct precopy_stats st;

			if (!precopy_query(p->s, &st) && st.status != PRECOPY_STATUS_NONE) {
				p->st = st;
				p->have_st = true;
				p->t_st_ns = now_ns();
				add_sample(p, &st);
			}
		}
		redraw(p);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

void pc_progress_start(struct pc_progress *p, FILE *f, bool draw, bool source,
		       const struct precopy_params *params, const char *what)
{
	pthread_condattr_t ca;

	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->cv, &ca);
	pthread_condattr_destroy(&ca);
	p->f = f;
	p->draw = draw;
	p->source = source;
	p->t0_ns = now_ns();
	p->limit_ms = params->downtime_limit_ms;
	p->avail_bps = params->avail_switchover_bandwidth;
	snprintf(p->what, sizeof(p->what), "%s", what ? what : "");
	if (!draw)
		return;
	pthread_mutex_lock(&p->lock);
	redraw(p);
	pthread_mutex_unlock(&p->lock);
	p->running = pthread_create(&p->ticker, NULL, ticker, p) == 0;
}

void pc_progress_attach(struct pc_progress *p, struct precopy_session *s)
{
	pthread_mutex_lock(&p->lock);
	p->s = s;
	pthread_mutex_unlock(&p->lock);
}

void pc_progress_stats(struct pc_progress *p, const struct precopy_stats *st)
{
	pthread_mutex_lock(&p->lock);
	p->st = *st;
	p->have_st = true;
	p->t_st_ns = now_ns();
	add_sample(p, st);
	redraw(p);
	pthread_mutex_unlock(&p->lock);
}

void pc_progress_note(struct pc_progress *p, const char *what)
{
	pthread_mutex_lock(&p->lock);
	snprintf(p->what, sizeof(p->what), "%s", what);
	redraw(p);
	pthread_mutex_unlock(&p->lock);
}

void pc_progress_end(struct pc_progress *p, const struct precopy_stats *st, bool erase)
{
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->lock);
	if (p->running)
		pthread_join(p->ticker, NULL);
	p->running = false;
	pthread_mutex_lock(&p->lock);
	p->s = NULL;
	if (p->line_open && erase) {
		fputs("\r\033[K", p->f);
		fflush(p->f);
		p->line_open = false;
	} else if (p->line_open) {
		if (st) {
			p->st = *st;
			p->have_st = true;
			redraw(p);
		}
		fputc('\n', p->f);
		fflush(p->f);
		p->line_open = false;
	}
	pthread_mutex_unlock(&p->lock);
}

/* SPDX-License-Identifier: MIT */
/*
 * sim.c - the precopy controller against a fluid model of a guest and a
 * link. The model is described in sim.h. No I/O and no clock: simulated
 * time is a double in ns, handed to the controller rounded.
 */
#include "sim.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE ((double)PRECOPY_PAGE_SIZE)

/* Below this many pages a segment's share of a pass counts as sent. */
#define EPS_PAGES 1e-9

struct seg {
	double a;     /* first page (fluid) */
	double n;     /* pages */
	double hot;   /* of which in the hot set */
	double dirty; /* pages marked to send */
};

struct sim {
	const struct pc_sim_params *in;
	struct pc_sim_result *out;
	void (*event)(void *opaque, const struct pc_sim_event *ev);
	void *opaque;

	struct pc_policy pol;
	struct seg *seg;
	unsigned nseg;
	double npages;
	double hot_pages;
	double r_hot, r_cold;    /* expected hits per page per write */
	double link;             /* bytes per ns */
	double dirty_ppns;       /* guest writes, pages per ns, unthrottled */
	double sync_ns;          /* cost of one sync */

	double t;                /* now, ns */
	double w_total;          /* pages written since the start */
	double w_synced;         /* w_total at the last sync */
	double dirty_total;      /* sum of seg[].dirty */

	unsigned pass;
	unsigned cur;            /* cursor: segment */
	double cur_ahead;        /* pages of seg[cur] still to send this pass */
	double cur_frac;         /* share of seg[cur] walked */
	double pass_start;
	double pass_bytes;

	double last_sync_start;
	double last_sync_end;
	double last_sent;        /* time of the last pc_policy_sent() */
	double next_second;
	double carry_bytes, carry_busy;
	double link_busy, link_del;  /* the transport's cumulative figures */
	double link_free;        /* queue model: when the link has sent all it was handed */

	double bytes_sent;
	unsigned max_pct;
	size_t cap;              /* rows allocated in out->pass */
};

/* A non-negative quantity (ns, bytes) rounded to the nearest integer,
 * saturating. */
static uint64_t u64(double t)
{
	if (!(t > 0))
		return 0;
	if (!(t < 18446744073709549568.0))
		return UINT64_MAX;
	return (uint64_t)llround(t);
}

static int fail(struct sim *s, int err, const char *fmt, const char *what)
{
	snprintf(s->out->error, sizeof(s->out->error), fmt, what);
	return err;
}

/* ------------------------------------------------------------------ */
/* Validation and defaults                                             */
/* ------------------------------------------------------------------ */

void pc_sim_params_init(struct pc_sim_params *p)
{
	memset(p, 0, sizeof(*p));
	pc_policy_params_defaults(&p->policy);
	p->ram_bytes = 1ull << 30;
	p->link_bps = 1250000000ull;
	p->dirty_bps = 100000000ull;
	p->pattern = PC_SIM_UNIFORM;
	p->hot_fraction = 0.10;
	p->hot_write_fraction = 0.90;
	p->zero_fraction = 0;
	p->dirty_zero_fraction = 0;
	p->free_fraction = 0;
	p->device_state_bytes = 0;
	p->sync_ns_per_page = 15;
	p->cpu_ns_per_page = 0;
	p->scan_ns_per_page = 0;
	p->estimator = PC_SIM_EST_BUSY;
	p->step_ns = 10 * PC_NSEC_PER_MSEC;
	p->sync_interval_ns = PC_NSEC_PER_SEC;
	p->max_sim_ns = 24ull * 3600 * PC_NSEC_PER_SEC;
	p->max_passes = 100000;
	p->segments = 4096;
}

static bool in01(double x)
{
	return x >= 0 && x <= 1; /* false for NaN */
}

static int check(struct sim *s)
{
	const struct pc_sim_params *p = s->in;
	char why[128];

	if (pc_policy_params_check(&p->policy, why, sizeof(why)))
		return fail(s, -EINVAL, "policy.%s", why);
	if (p->ram_bytes < PRECOPY_PAGE_SIZE)
		return fail(s, -EINVAL, "%s", "ram_bytes: less than one page");
	if (p->link_bps == 0)
		return fail(s, -EINVAL, "%s", "link_bps: 0");
	if (p->pattern != PC_SIM_SEQUENTIAL && p->pattern != PC_SIM_UNIFORM &&
	    p->pattern != PC_SIM_HOTSET)
		return fail(s, -EINVAL, "%s", "pattern: unknown");
	if (p->pattern == PC_SIM_HOTSET) {
		if (!(p->hot_fraction > 0 && p->hot_fraction <= 1))
			return fail(s, -EINVAL, "%s", "hot_fraction: not in (0, 1]");
		if (!in01(p->hot_write_fraction))
			return fail(s, -EINVAL, "%s", "hot_write_fraction: not in [0, 1]");
	}
	if (!in01(p->zero_fraction))
		return fail(s, -EINVAL, "%s", "zero_fraction: not in [0, 1]");
	if (!in01(p->dirty_zero_fraction))
		return fail(s, -EINVAL, "%s", "dirty_zero_fraction: not in [0, 1]");
	if (!in01(p->free_fraction))
		return fail(s, -EINVAL, "%s", "free_fraction: not in [0, 1]");
	if (p->zero_fraction + p->free_fraction > 1 + 1e-12)
		return fail(s, -EINVAL, "%s", "zero_fraction + free_fraction: above 1");
	if (!(p->sync_ns_per_page >= 0 && p->sync_ns_per_page < 1e12))
		return fail(s, -EINVAL, "%s", "sync_ns_per_page: negative or absurd");
	if (!(p->cpu_ns_per_page >= 0 && p->cpu_ns_per_page < 1e12))
		return fail(s, -EINVAL, "%s", "cpu_ns_per_page: negative or absurd");
	if (!(p->scan_ns_per_page >= 0 && p->scan_ns_per_page < 1e12))
		return fail(s, -EINVAL, "%s", "scan_ns_per_page: negative or absurd");
	if (p->estimator != PC_SIM_EST_BUSY && p->estimator != PC_SIM_EST_WALL)
		return fail(s, -EINVAL, "%s", "estimator: neither BUSY nor WALL");
	if (p->step_ns == 0)
		return fail(s, -EINVAL, "%s", "step_ns: 0");
	if (p->sync_interval_ns == 0)
		return fail(s, -EINVAL, "%s", "sync_interval_ns: 0");
	if (p->max_sim_ns == 0)
		return fail(s, -EINVAL, "%s", "max_sim_ns: 0");
	if (p->max_passes == 0)
		return fail(s, -EINVAL, "%s", "max_passes: 0");
	if (p->segments == 0)
		return fail(s, -EINVAL, "%s", "segments: 0");
	return 0;
}

/* ------------------------------------------------------------------ */
/* The guest's writes                                                  */
/* ------------------------------------------------------------------ */

static double overlap(double a0, double a1, double b0, double b1)
{
	double lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;

	return hi > lo ? hi - lo : 0;
}

/* Pages of @g covered by the circular interval [start, start + len). */
static double ring_overlap(const struct sim *s, const struct seg *g, double start, double len)
{
	double n = s->npages, end;

	if (len >= n)
		return g->n;
	start = fmod(start, n);
	end = start + len;
	if (end <= n)
		return overlap(g->a, g->a + g->n, start, end);
	return overlap(g->a, g->a + g->n, start, n) + overlap(g->a, g->a + g->n, 0, end - n);
}

/*
 * Distinct pages of @g written by the writes numbered [@from, @from + @w)
 * since the start. @f_hot, @f_cold: 1 - e^(-w * r) for UNIFORM / HOTSET,
 * computed once per call site.
 */
static double written(const struct sim *s, const struct seg *g, double from, double w,
		      double f_hot, double f_cold)
{
	if (s->in->pattern == PC_SIM_SEQUENTIAL)
		return ring_overlap(s, g, from, w);
	return g->hot * f_hot + (g->n - g->hot) * f_cold;
}

static double spread(double w, double r)
{
	return -expm1(-w * r);
}

static double dirty_ppns_now(const struct sim *s)
{
	return s->dirty_ppns * (1.0 - (double)s->pol.throttle.pct / 100.0);
}

static void emit(struct sim *s, enum pc_sim_event_kind kind, double t,
		 const struct pc_sim_pass *row)
{
	if (!s->event)
		return;

	struct pc_sim_event ev = {
		.kind = kind,
		.t_ns = u64(t),
		.pass = s->pass,
		.remaining = u64(s->dirty_total * PAGE),
		.dirty_bps = dirty_ppns_now(s) * PAGE * 1e9,
		.bw_busy = pc_policy_bw_busy(&s->pol),
		.bw_wall = pc_policy_bw_wall(&s->pol),
		.throttle = s->pol.throttle.pct,
		.row = row,
	};
	s->event(s->opaque, &ev);
}

/* Time passes: the guest writes (the state is what it was at the start
 * of the stretch; seconds crossed are reported). */
static void advance(struct sim *s, double dt)
{
	if (!(dt > 0))
		return;
	s->w_total += dirty_ppns_now(s) * dt;
	s->t += dt;
	while (s->t >= s->next_second) {
		emit(s, PC_SIM_EV_SECOND, s->next_second, NULL);
		s->next_second += 1e9;
	}
}

/* ------------------------------------------------------------------ */
/* Dirty sync                                                          */
/* ------------------------------------------------------------------ */

/* Mark what was written since the last sync; return the pages newly
 * marked. Writes are independent of what is marked (pattern aside), so
 * a segment's written pages are already marked in proportion dirty / n. */
static double merge(struct sim *s)
{
	double w = s->w_total - s->w_synced, fresh = 0;
	double f_hot = spread(w, s->r_hot), f_cold = spread(w, s->r_cold);

	if (!(w > 0))
		return 0;
	for (unsigned i = 0; i < s->nseg; i++) {
		struct seg *g = &s->seg[i];
		double l = written(s, g, s->w_synced, w, f_hot, f_cold);
		double add = l * (1.0 - g->dirty / g->n);

		if (!(add > 0))
			continue;
		g->dirty += add;
		fresh += add;
		if (i == s->cur)
			s->cur_ahead += add * (1.0 - s->cur_frac);
	}
	/* Recount rather than accumulate: no drift over 100000 passes. */
	s->dirty_total = 0;
	for (unsigned i = 0; i < s->nseg; i++)
		s->dirty_total += s->seg[i].dirty;
	s->w_synced = s->w_total;
	return fresh;
}

static void sync_dirty(struct sim *s)
{
	double start = s->t, fresh = merge(s);

	advance(s, s->sync_ns);
	s->last_sync_start = start;
	s->last_sync_end = s->t;

	unsigned pct = pc_policy_synced(&s->pol, u64(fresh * PAGE), u64(s->sync_ns), u64(s->t));

	if (pct > s->max_pct)
		s->max_pct = pct;
}

/* ------------------------------------------------------------------ */
/* The sender                                                          */
/* ------------------------------------------------------------------ */

static void start_pass(struct sim *s)
{
	s->cur = 0;
	s->cur_ahead = s->seg[0].dirty;
	s->cur_frac = 0;
	s->pass_start = s->t;
	s->pass_bytes = 0;
}

static void skip_done(struct sim *s)
{
	while (s->cur < s->nseg && s->cur_ahead <= EPS_PAGES) {
		if (++s->cur < s->nseg) {
			s->cur_ahead = s->seg[s->cur].dirty;
			s->cur_frac = 0;
		}
	}
}

/*
 * Share of the pages marked in @g that are zero when sent. Written pages
 * are zero in proportion dirty_zero_fraction; in the bulk pass the pages
 * not written since the start are zero in proportion zero_fraction of the
 * pages not hinted free.
 */
static double zero_share(const struct sim *s, const struct seg *g)
{
	const struct pc_sim_params *p = s->in;

	if (s->pass != 0)
		return p->dirty_zero_fraction; /* only written pages are marked */
	if (p->zero_fraction <= 0 && p->dirty_zero_fraction <= 0)
		return 0;

	double touched = written(s, g, 0, s->w_total, spread(s->w_total, s->r_hot),
				 spread(s->w_total, s->r_cold)) / g->n;
	double zero_untouched = p->free_fraction < 1 ?
		p->zero_fraction / (1.0 - p->free_fraction) : 0;
	double z = zero_untouched * (1.0 - touched) + p->dirty_zero_fraction * touched;

	return z < 0 ? 0 : z > 1 ? 1 : z;
}

/* Sender CPU per page when a share @z of the pages is zero: the scan of
 * every page, and the zero test's full read of a zero page. */
static double cpu_per_page(const struct sim *s, double z)
{
	return s->in->scan_ns_per_page + z * s->in->cpu_ns_per_page;
}

/* The sender took @x pages of segment @g, the cursor's. */
static void take_pages(struct sim *s, struct seg *g, double x)
{
	s->cur_frac += (1.0 - s->cur_frac) * x / s->cur_ahead;
	s->cur_ahead -= x;
	g->dirty -= x;
	if (g->dirty < 0)
		g->dirty = 0;
	s->dirty_total -= x;
}

/*
 * send_chunk() with a send queue of Q bytes (queue_bytes > 0). Per page
 * the sender spends a = its CPU (the zero test) and the link b = bytes /
 * link. The link is free again at link_free (L); the sender at time tau
 * may hand a page over if L - tau <= Q / link, else it is held back until
 * then. While it has room and a < b, the room shrinks by b - a per page;
 * once full, the sender goes at the link's pace, b per page, all of it
 * held back (inside send). If a >= b the link keeps up and the queue never
 * fills. @busy: the time held back.
 */
static double send_chunk_queued(struct sim *s, double budget, double *wire, double *busy)
{
	double used = 0, qt = (double)s->in->queue_bytes / s->link;

	*wire = 0;
	*busy = 0;
	skip_done(s);
	while (s->cur < s->nseg && budget - used > 1e-9) {
		struct seg *g = &s->seg[s->cur];
		double z = zero_share(s, g), tau = s->t + used;
		double bytes_pp = (1.0 - z) * PAGE + z * PC_SIM_ZERO_RUN_BYTES;
		double a = cpu_per_page(s, z), b = bytes_pp / s->link;
		double lf = s->link_free > tau ? s->link_free : tau;
		double room = qt - (lf - tau); /* ns of link time the queue can still take */
		double x, dt, held;

		if (a >= b || room >= s->cur_ahead * (b - a)) {
			/* Never held back in this segment (for what is left of it). */
			x = a > 0 ? (budget - used) / a : s->cur_ahead;
			if (x > s->cur_ahead)
				x = s->cur_ahead;
			dt = x * a;
			held = 0;
			lf = lf + x * b;
			if (lf < tau + dt)
				lf = tau + dt;
		} else {
			/* Fill the room, then go at the link's pace. */
			double xf = room > 0 ? room / (b - a) : 0;

			if (xf * a >= budget - used) {
				x = a > 0 ? (budget - used) / a : xf;
				dt = x * a;
				held = 0;
			} else {
				double rest = (budget - used - xf * a) / b;

				x = xf + rest;
				if (x > s->cur_ahead) {
					x = s->cur_ahead;
					rest = x - xf;
				}
				dt = xf * a + rest * b;
				held = rest * (b - a);
			}
			lf = lf + x * b;
		}
		s->link_free = lf;
		take_pages(s, g, x);
		*wire += x * bytes_pp;
		*busy += held;
		used += dt;
		if (x <= 0 && dt <= 0)
			break; /* no progress possible in this budget */
		skip_done(s);
	}
	if (s->dirty_total < 0)
		s->dirty_total = 0;
	return used;
}

/* Send for at most @budget ns; return the ns used. */
static double send_chunk(struct sim *s, double budget, double *wire, double *busy)
{
	double used = 0;

	if (s->in->queue_bytes)
		return send_chunk_queued(s, budget, wire, busy);

	*wire = 0;
	*busy = 0;
	skip_done(s);
	while (s->cur < s->nseg && budget - used > 1e-9) {
		struct seg *g = &s->seg[s->cur];
		double z = zero_share(s, g);
		double bytes_pp = (1.0 - z) * PAGE + z * PC_SIM_ZERO_RUN_BYTES;
		double cost_pp = cpu_per_page(s, z) + bytes_pp / s->link;
		double x = (budget - used) / cost_pp;

		if (x > s->cur_ahead)
			x = s->cur_ahead;
		take_pages(s, g, x);
		*wire += x * bytes_pp;
		*busy += x * bytes_pp / s->link;
		used += x * cost_pp;
		skip_done(s);
	}
	if (s->dirty_total < 0)
		s->dirty_total = 0;
	return used;
}

/* The transport's figures (TCP_INFO) into the controller (BUSY only). */
static void report_link(struct sim *s)
{
	unsigned nch = s->pol.params.channels;
	struct pc_link_sample ls[PRECOPY_MAX_CHANNELS];
	/* With a queue, what it still holds is neither delivered nor
	 * transmitted yet (link_free - t of link time). */
	double qt = s->in->queue_bytes && s->link_free > s->t ? s->link_free - s->t : 0;

	if (s->in->estimator != PC_SIM_EST_BUSY)
		return;
	for (unsigned c = 0; c < nch && c < PRECOPY_MAX_CHANNELS; c++)
		ls[c] = (struct pc_link_sample){
			.busy_ns = u64(s->link_busy - qt),
			.delivered = u64((s->link_del - qt * s->link) / nch),
			.queued = u64(qt * s->link / nch),
			.rtt_ns = s->in->rtt_ns };
	pc_policy_link(&s->pol, PC_LINK_SRC_TCP_INFO, nch, ls, u64(s->t));
}

/* pc_policy_sent() for a chunk: split over the channels; return the wait. */
static uint64_t report_sent(struct sim *s, double wire, double busy)
{
	unsigned nch = s->pol.params.channels;
	uint64_t wait = 0;

	if (s->in->estimator == PC_SIM_EST_WALL)
		busy = s->t - s->last_sent;
	s->last_sent = s->t;

	/* Whole bytes and ns, the fractions carried to the next chunk. */
	s->carry_bytes += wire;
	s->carry_busy += busy;

	double b = floor(s->carry_bytes / nch), u = floor(s->carry_busy);

	s->carry_bytes -= b * nch;
	s->carry_busy -= u;
	for (unsigned c = 0; c < nch; c++) {
		uint64_t w = pc_policy_sent(&s->pol, c, (uint64_t)b, (uint64_t)u, u64(s->t));

		if (w > wait)
			wait = w;
	}
	s->link_busy += wire / s->link;
	s->link_del += wire;
	report_link(s);
	return wait;
}

/*
 * The end of a pass: the engine waits for the destination's ITER_ACK of
 * it, which comes once every channel's bytes have arrived, so the queue
 * has drained and one round trip has passed before the sync and the
 * decision; the guest runs meanwhile. The link figures are sampled again
 * (the queue empty), as the engine does before it decides.
 */
static void end_pass_wait(struct sim *s)
{
	if (s->link_free > s->t)
		advance(s, s->link_free - s->t);
	advance(s, (double)s->in->rtt_ns);
	report_link(s);
}

/* ------------------------------------------------------------------ */
/* Results                                                             */
/* ------------------------------------------------------------------ */

static int add_row(struct sim *s, enum pc_decision d, bool interrupted, uint64_t expected)
{
	struct pc_sim_result *r = s->out;

	if (r->npass == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 64;
		struct pc_sim_pass *p = realloc(r->pass, cap * sizeof(*p));

		if (!p)
			return fail(s, -ENOMEM, "%s", "per-pass table: out of memory");
		r->pass = p;
		s->cap = cap;
	}

	struct pc_sim_pass *row = &r->pass[r->npass++];

	*row = (struct pc_sim_pass){
		.pass = s->pass,
		.start_ns = u64(s->pass_start),
		.end_ns = u64(s->t),
		.bytes_sent = u64(s->pass_bytes),
		.remaining = u64(s->dirty_total * PAGE),
		.expected_downtime_ns = expected,
		.throttle = s->pol.throttle.pct,
		.bw_busy = pc_policy_bw_busy(&s->pol),
		.bw_wall = pc_policy_bw_wall(&s->pol),
		.decision = d,
		.interrupted = interrupted,
	};
	r->passes = (unsigned)r->npass;
	emit(s, PC_SIM_EV_PASS, s->t, row);
	return 0;
}

/* The controller said SWITCHOVER, FORCE or ABORT: end the migration. */
static void finish(struct sim *s, enum pc_decision d, uint64_t expected)
{
	struct pc_sim_result *r = s->out;
	const struct pc_sim_params *p = s->in;

	r->expected_downtime_ns = expected;
	r->verdict = d == PC_SWITCHOVER ? PC_WD_OK : s->pol.last_verdict;
	r->reason = pc_wd_reason(r->verdict);
	if (d == PC_ABORT) {
		r->outcome = PC_SIM_ABORTED;
		r->total_ns = u64(s->t);
		return;
	}
	r->outcome = d == PC_SWITCHOVER ? PC_SIM_CONVERGED : PC_SIM_FORCED;

	/* The guest stops; the final sync finds what was written since the
	 * last one; the burst goes at link speed, never throttled. */
	pc_policy_set_switchover(&s->pol);
	merge(s);

	double pages = s->dirty_total, z = p->dirty_zero_fraction; /* all written */
	double bytes = pages * ((1.0 - z) * PAGE + z * PC_SIM_ZERO_RUN_BYTES) +
		       (double)p->device_state_bytes;
	double burst = pages * cpu_per_page(s, z) + bytes / s->link;

	r->downtime_ns = u64(s->sync_ns + burst + 2.0 * (double)p->rtt_ns);
	r->final_bytes = u64(bytes);
	s->bytes_sent += bytes;
	s->t += s->sync_ns + burst + 2.0 * (double)p->rtt_ns;
	/* Tell the controller, as the engine would; it never makes us wait. */
	report_sent(s, bytes, burst);
	r->total_ns = u64(s->t);
}

/* ------------------------------------------------------------------ */
/* The run                                                             */
/* ------------------------------------------------------------------ */

static int setup(struct sim *s)
{
	const struct pc_sim_params *p = s->in;

	s->npages = floor((double)p->ram_bytes / PAGE);
	s->nseg = p->segments;
	if ((double)s->nseg > s->npages)
		s->nseg = (unsigned)s->npages;
	s->seg = calloc(s->nseg, sizeof(*s->seg));
	if (!s->seg)
		return fail(s, -ENOMEM, "%s", "segments: out of memory");

	if (p->pattern == PC_SIM_HOTSET) {
		s->hot_pages = p->hot_fraction * s->npages;
		s->r_hot = p->hot_write_fraction / s->hot_pages;
		s->r_cold = s->npages > s->hot_pages ?
			(1.0 - p->hot_write_fraction) / (s->npages - s->hot_pages) : 0;
	} else {
		s->hot_pages = 0;
		s->r_hot = 0;
		s->r_cold = 1.0 / s->npages;
	}

	double n = s->npages / s->nseg;

	for (unsigned i = 0; i < s->nseg; i++) {
		struct seg *g = &s->seg[i];

		g->a = n * i;
		g->n = n;
		g->hot = overlap(g->a, g->a + n, 0, s->hot_pages);
		g->dirty = n * (1.0 - p->free_fraction);
		s->dirty_total += g->dirty;
	}
	s->link = (double)p->link_bps / 1e9;
	s->dirty_ppns = (double)p->dirty_bps / PAGE / 1e9;
	s->sync_ns = p->sync_ns_per_page * s->npages;
	s->next_second = 1e9;
	s->last_sync_start = 0;
	s->last_sync_end = 0;

	pc_policy_init(&s->pol, &p->policy, 0);
	pc_policy_set_device_state(&s->pol, p->device_state_bytes);
	s->out->downtime_limit_ns = pc_policy_downtime_limit_ns(&s->pol);
	return 0;
}

static int run(struct sim *s)
{
	const struct pc_sim_params *p = s->in;
	double step = (double)p->step_ns, interval = (double)p->sync_interval_ns;

	start_pass(s);
	for (;;) {
		if (s->t > (double)p->max_sim_ns)
			return fail(s, -ETIMEDOUT, "%s",
				    "max_sim_ns reached: not converging and no watchdog to stop it");

		enum pc_decision d = pc_policy_tick(&s->pol, u64(s->t));

		if (d != PC_CONTINUE) {
			/* max-time mid-pass: the pass stops, its ITER_ACK comes
			 * back; what the controller would expect then. */
			end_pass_wait(s);

			struct pc_switch_in si = {
				.remaining_bytes = u64(s->dirty_total * PAGE),
				.device_state_bytes = p->device_state_bytes,
				.bandwidth = pc_policy_switch_bandwidth(&s->pol),
				.sync_cost_ns = s->pol.sync_cost_ns,
				.queued_bytes = s->pol.link.queued,
				.dirty_bps = s->pol.dirty_bps,
				.end_ns = 2 * s->pol.link.rtt_ns,
			};
			uint64_t e = pc_switch_expected_ns(&si);
			int err = add_row(s, d, true, e);

			if (err)
				return err;
			finish(s, d, e);
			return 0;
		}

		skip_done(s);
		if (s->cur >= s->nseg) {
			end_pass_wait(s);
			sync_dirty(s);
			pc_policy_dirty_rate(&s->pol, dirty_ppns_now(s) * PAGE * 1e9);
			d = pc_policy_pass_end(&s->pol, s->pass, u64(s->dirty_total * PAGE),
					       u64(s->t));

			int err = add_row(s, d, false, s->pol.expected_downtime_ns);

			if (err)
				return err;
			if (d != PC_CONTINUE) {
				finish(s, d, s->pol.expected_downtime_ns);
				return 0;
			}
			if (s->out->npass >= p->max_passes)
				return fail(s, -ELOOP, "%s",
					    "max_passes reached: not converging and no watchdog to stop it");
			s->pass++;
			start_pass(s);
			continue;
		}

		/* Mid-pass sync due (but let the sender work between syncs). */
		double due = s->last_sync_start + interval;

		if (due < s->last_sync_end + step)
			due = s->last_sync_end + step;
		if (s->t >= due - 1e-3) {
			sync_dirty(s);
			continue;
		}

		double wire, busy, budget = due - s->t < step ? due - s->t : step;
		double used = send_chunk(s, budget, &wire, &busy);

		advance(s, used);
		s->pass_bytes += wire;
		s->bytes_sent += wire;
		if (wire > 0 || used > 0) {
			uint64_t wait = report_sent(s, wire, busy);

			advance(s, (double)wait);
		}
	}
}

int pc_sim_run(const struct pc_sim_params *in, struct pc_sim_result *out,
	       void (*event)(void *opaque, const struct pc_sim_event *ev), void *opaque)
{
	struct sim s;
	int err;

	if (!out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->reason = pc_wd_reason(PC_WD_OK);
	memset(&s, 0, sizeof(s));
	s.in = in;
	s.out = out;
	s.event = event;
	s.opaque = opaque;
	if (!in) {
		snprintf(out->error, sizeof(out->error), "in: NULL");
		return -EINVAL;
	}
	err = check(&s);
	if (err)
		return err;
	err = setup(&s);
	if (!err)
		err = run(&s);
	out->bytes_sent = u64(s.bytes_sent);
	out->ram_multiple = s.bytes_sent / (double)in->ram_bytes;
	out->max_throttle = s.max_pct;
	if (!err && out->outcome == PC_SIM_ABORTED)
		out->downtime_ns = 0;
	free(s.seg);
	if (err == -ENOMEM || err == -EINVAL)
		pc_sim_result_free(out);
	return err;
}

void pc_sim_result_free(struct pc_sim_result *r)
{
	if (!r)
		return;
	free(r->pass);
	r->pass = NULL;
	r->npass = 0;
}

const char *pc_sim_outcome_name(enum pc_sim_outcome o)
{
	switch (o) {
	case PC_SIM_CONVERGED:
		return "converged";
	case PC_SIM_FORCED:
		return "forced";
	case PC_SIM_ABORTED:
		return "aborted";
	}
	return "unknown";
}

const char *pc_sim_pattern_name(enum pc_sim_pattern p)
{
	switch (p) {
	case PC_SIM_SEQUENTIAL:
		return "sequential";
	case PC_SIM_UNIFORM:
		return "uniform";
	case PC_SIM_HOTSET:
		return "hotset";
	}
	return "unknown";
}

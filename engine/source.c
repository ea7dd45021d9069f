/* SPDX-License-Identifier: MIT */
/*
 * source.c - the sending end: connect, arm, the bulk pass and the
 * iterations; the handshake, the switchover and the end are in
 * switchover.c. migrate() runs the phases; any failure takes the one path
 * of pc_src_failed().
 *
 * Threads: the caller's thread runs the state machine, the dirty syncs and
 * the policy; one sender thread per channel walks its share of the dirty
 * bitmap in each pass. The session bitmap holds one bit per page; senders
 * take a word with an atomic exchange, syncs OR new bits in atomically, so
 * a page dirtied ahead of the senders goes once in this pass and one
 * dirtied behind them waits for the next. A page belongs to channel
 * (word / PC_CHUNK_WORDS) % channels, always the same one, so two copies
 * of a page never race each other on different channels.
 *
 * Each pass ends with ITER_END on every channel; the destination answers
 * ITER_ACK once all channels got there. The next pass starts after it, so
 * runs of different passes are never in flight at once.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "page.h"
#include "source.h"

/** Longest data run in one frame (pages). */
#define MAX_RUN_PAGES 64
/** Flush a batch when it holds this much page data. */
#define BATCH_BYTES (256u << 10) /* still in cache when sent */

static void apply_device_state(struct source *src);

static void set_err(struct source *src, int err)
{
	int none = 0;

	if (atomic_compare_exchange_strong(&src->err, &none, err) && src->tp)
		pc_tp_abort(src->tp); /* wake everybody */
}

/*
 * Parameters changed by precopy_set_param() since we last looked: hand
 * them to the policy, and tell the VMM if the throttle changed with them.
 * Called by the control thread only.
 */
static int apply_params(struct source *src)
{
	struct precopy_session *s = src->s;
	unsigned old, pct;

	if (atomic_load(&s->params_gen) == src->params_gen)
		return 0;
	src->params_gen = pc_params_snapshot(s, &src->params);
	apply_device_state(src);
	pthread_mutex_lock(&src->plock);
	old = src->pol.throttle.pct;
	pct = pc_policy_update(&src->pol, &src->params, pc_now());
	pthread_mutex_unlock(&src->plock);
	if (pct != old && s->cb.set_throttle) {
		int err = s->cb.set_throttle(s->cb.opaque, pct);

		if (err)
			return pc_fail(s, err, "set_throttle(%u) failed", pct);
		pthread_mutex_lock(&s->lock);
		s->st.cpu_throttle_percentage = pct;
		pthread_mutex_unlock(&s->lock);
	}
	return 0;
}

_Atomic uint64_t pc_device_state_last;

/*
 * The device-state size the expected downtime counts: the VMM's hint
 * (precopy_set_param(DEVICE_STATE_SIZE)), else what the last migration in
 * this process sent, else nothing (no save_device_state hook: none).
 */
static void apply_device_state(struct source *src)
{
	struct precopy_session *s = src->s;
	uint64_t bytes;

	pthread_mutex_lock(&s->lock);
	bytes = s->xparams.device_state_size ? s->xparams.device_state_size
					     : atomic_load(&pc_device_state_last);
	if (!s->cb.save_device_state)
		bytes = 0;
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_lock(&src->plock);
	pc_policy_set_device_state(&src->pol, bytes);
	pthread_mutex_unlock(&src->plock);
}

/* --- sender side ------------------------------------------------------ */

static int flush_batch(struct sender *sd)
{
	struct source *src = sd->src;
	uint64_t t0, busy, wait, cpu0;
	struct iovec v;
	size_t len;
	int err = 0;

	if (sd->have_cur) {
		pc_wire_put_run(sd->msg, sd->nruns++, &sd->cur);
		sd->have_cur = false;
	}
	if (sd->nruns == 0)
		return 0;
	len = pc_wire_finish_runs(sd->msg, sd->nruns);
	v.iov_base = sd->msg;
	v.iov_len = len;
	cpu0 = pc_thread_cpu_ns();
	t0 = pc_now();
	if (sd->ndata)
		err = pc_tp_write_pages(src->tp, sd->chan, sd->data, sd->ndata);
	if (!err)
		err = pc_tp_send_msg(src->tp, sd->chan, &v, 1);
	busy = pc_now() - t0;
	sd->send_cpu_ns += pc_thread_cpu_ns() - cpu0;
	if (err)
		return err;

	uint64_t now = pc_now();
	struct pc_tp_link_stats ls;
	bool have_ls = src->link_stats && !pc_tp_link_stats(src->tp, sd->chan, &ls) &&
		       ls.delivery_bps;

	pthread_mutex_lock(&src->plock);
	if (have_ls)
		pc_policy_link_rate(&src->pol, sd->chan, (double)ls.delivery_bps, ls.app_limited);
	wait = pc_policy_sent(&src->pol, sd->chan, sd->data_bytes + len, busy, now);
	/* Pages found zero, and the time they took, left out: the final
	 * burst goes through pages the guest wrote, and a never-touched
	 * page's first read (a fault) is what makes a zero page slow. */
	if (!src->final && now > sd->active_since + sd->zero_ns)
		pc_policy_sender(&src->pol, sd->chan,
				 (sd->scanned - sd->zeros) * PRECOPY_PAGE_SIZE,
				 now - sd->active_since - sd->zero_ns, now);
	pthread_mutex_unlock(&src->plock);
	sd->scanned = 0;
	sd->zeros = 0;
	sd->zero_ns = 0;
	sd->active_since = now;
	sd->wire += sd->data_bytes + len + (uint64_t)sd->ndata * 24;
	sd->bytes += sd->data_bytes;
	sd->ndata = 0;
	sd->data_bytes = 0;
	sd->nruns = 0;
	pc_wire_enc_runs_hdr(sd->msg, PC_WIRE_MSG_MAX, src->iteration);
	if (wait && !src->final) {
		pc_sleep_ns(src->s, wait);
		sd->active_since = pc_now(); /* waiting for the cap is not work */
	}
	return 0;
}

/* Append one page of @kind to the batch, extending the current run. */
static int add_page(struct sender *sd, unsigned r, uint64_t page, uint32_t kind)
{
	struct pc_region *reg = &sd->src->s->reg[r];
	int err;

	if (sd->have_cur && sd->cur.region == r && sd->cur.kind == kind &&
	    sd->cur.first_page + sd->cur.npages == page &&
	    (kind != PC_RUN_DATA || sd->cur.npages < MAX_RUN_PAGES)) {
		sd->cur.npages++;
		if (kind == PC_RUN_DATA) {
			sd->data[sd->ndata - 1].len += PRECOPY_PAGE_SIZE;
			sd->data_bytes += PRECOPY_PAGE_SIZE;
		}
		return 0;
	}
	if (sd->have_cur) {
		pc_wire_put_run(sd->msg, sd->nruns++, &sd->cur);
		sd->have_cur = false;
	}
	if (sd->nruns == PC_WIRE_RUNS_MAX || sd->data_bytes >= BATCH_BYTES) {
		err = flush_batch(sd);
		if (err)
			return err;
	}
	sd->cur = (struct pc_wire_run){ r, kind, page, 1 };
	sd->have_cur = true;
	if (kind == PC_RUN_DATA) {
		sd->data[sd->ndata++] = (struct pc_page_run){
			.src = reg->addr + page * PRECOPY_PAGE_SIZE,
			.region = r,
			.offset = page * PRECOPY_PAGE_SIZE,
			.len = PRECOPY_PAGE_SIZE,
		};
		sd->data_bytes += PRECOPY_PAGE_SIZE;
	}
	return 0;
}

static int send_word(struct sender *sd, uint64_t w, uint64_t bits)
{
	struct source *src = sd->src;
	unsigned r = src->s->word_region[w];
	struct pc_region *reg = &src->s->reg[r];
	uint64_t base = (w - reg->word_base) * 64;
	int err;

	while (bits) {
		unsigned b = (unsigned)__builtin_ctzll(bits);
		uint64_t page = base + b;
		uint32_t kind;
		uint64_t h;

		bits &= bits - 1;
		if (page >= reg->npages)
			break;
		sd->scanned++;
		if (reg->free_bm && (atomic_load_explicit(&reg->free_bm[page / 64],
							  memory_order_relaxed) >> (page % 64) & 1) &&
		    (atomic_fetch_and(&reg->free_bm[page / 64], ~(1ull << (page % 64))) >>
		     (page % 64) & 1)) {
			/* hinted free since it was last found dirty */
			kind = PC_RUN_FREE;
			h = src->zero_hash;
			sd->free_skipped++;
		} else {
			uint64_t t0 = pc_now();

			if (pc_page_scan(reg->addr + page * PRECOPY_PAGE_SIZE, &h)) {
				kind = PC_RUN_ZERO;
				sd->duplicate++;
				sd->zeros++;
				sd->zero_ns += pc_now() - t0;
			} else {
				kind = PC_RUN_DATA;
				sd->normal++;
			}
		}
		reg->hash[page] = h;
		err = add_page(sd, r, page, kind);
		if (err)
			return err;
	}
	return 0;
}

static int send_pass(struct sender *sd)
{
	struct source *src = sd->src;
	uint64_t nchunks = (src->s->nwords + PC_CHUNK_WORDS - 1) / PC_CHUNK_WORDS;
	uint8_t end[PC_WIRE_HDR + 8];
	struct iovec v = { end, sizeof(end) };
	int err;

	pc_wire_enc_runs_hdr(sd->msg, PC_WIRE_MSG_MAX, src->iteration);
	sd->nruns = 0;
	sd->ndata = 0;
	sd->data_bytes = 0;
	sd->have_cur = false;
	sd->scanned = 0;
	sd->zeros = 0;
	sd->zero_ns = 0;
	sd->active_since = pc_now();
	for (uint64_t c = sd->chan; c < nchunks; c += src->nchan) {
		uint64_t w0 = c * PC_CHUNK_WORDS;
		uint64_t w1 = w0 + PC_CHUNK_WORDS < src->s->nwords ? w0 + PC_CHUNK_WORDS
								      : src->s->nwords;

		if (atomic_load(&src->err))
			return atomic_load(&src->err);
		if (atomic_load(&src->stop_pass) && !src->final)
			break;
		for (uint64_t w = w0; w < w1; w++) {
			uint64_t bits = atomic_load_explicit(&src->dirty[w], memory_order_relaxed);

			if (!bits)
				continue;
			bits = atomic_exchange(&src->dirty[w], 0);
			err = send_word(sd, w, bits);
			if (err)
				return err;
		}
	}
	err = flush_batch(sd);
	if (err)
		return err;
	pc_wire_enc_iter_end(end, sizeof(end), src->iteration, sd->chan);
	return pc_tp_send_msg(src->tp, sd->chan, &v, 1);
}

static void *sender_main(void *arg)
{
	struct sender *sd = arg;
	struct source *src = sd->src;
	unsigned seen = 0;

	for (;;) {
		uint64_t f0, cpu0;
		int err;

		pthread_mutex_lock(&src->mu);
		while (src->gen == seen && !src->quit)
			pthread_cond_wait(&src->cv, &src->mu);
		if (src->quit) {
			pthread_mutex_unlock(&src->mu);
			return NULL;
		}
		seen = src->gen;
		pthread_mutex_unlock(&src->mu);

		f0 = pc_thread_faults();
		cpu0 = pc_thread_cpu_ns();
		sd->send_cpu_ns = 0;
		err = send_pass(sd);
		f0 = pc_thread_faults() - f0;
		cpu0 = pc_thread_cpu_ns() - cpu0;
		pthread_mutex_lock(&src->s->lock);
		src->s->st.page_faults += f0;
		src->s->st.send_cpu_ns += sd->send_cpu_ns;
		src->s->st.scan_cpu_ns += cpu0 > sd->send_cpu_ns ? cpu0 - sd->send_cpu_ns : 0;
		pthread_mutex_unlock(&src->s->lock);
		if (err)
			set_err(src, err);

		pthread_mutex_lock(&src->mu);
		src->done++;
		pthread_cond_broadcast(&src->cv);
		pthread_mutex_unlock(&src->mu);
	}
}

/* --- control side ----------------------------------------------------- */

/* Fold the counters of the senders into the stats. */
static void fold_counters(struct source *src)
{
	struct precopy_stats *st = &src->s->st;

	pthread_mutex_lock(&src->s->lock);
	for (unsigned c = 0; c < src->nchan; c++) {
		struct sender *sd = &src->snd[c];

		st->normal += atomic_exchange(&sd->normal, 0);
		st->duplicate += atomic_exchange(&sd->duplicate, 0);
		st->free_skipped += atomic_exchange(&sd->free_skipped, 0);
		st->normal_bytes += atomic_exchange(&sd->bytes, 0);
		st->transferred += atomic_exchange(&sd->wire, 0);
	}
	pthread_mutex_unlock(&src->s->lock);
}

static uint64_t count_dirty(struct source *src)
{
	uint64_t n = 0;

	for (uint64_t w = 0; w < src->s->nwords; w++)
		n += (uint64_t)__builtin_popcountll(
			atomic_load_explicit(&src->dirty[w], memory_order_relaxed));
	return n;
}

/*
 * Soft-dirty cannot read and clear a page's bit in one step: a write that
 * lands between the two is lost. So while a soft-dirty region is armed or
 * synced, the guest is paused through the VMM's hooks (a pause as long as
 * the sync itself); the other methods need no pause. @vm_stopped: the
 * guest is already stopped (switchover).
 */
static bool needs_pause(struct source *src, bool vm_stopped)
{
	struct precopy_session *s = src->s;

	if (vm_stopped || !s->cb.stop_vm || !s->cb.resume_vm)
		return false;
	for (unsigned i = 0; i < s->nreg; i++)
		if (s->reg[i].mode == PRECOPY_DIRTY_SOFT_DIRTY)
			return true;
	return false;
}

/* @fn (a sync, or the arming of the logs) with the guest paused around it
 * if soft-dirty needs that. */
static int with_pause(struct source *src, bool vm_stopped,
		      int (*fn)(struct source *src, uint64_t *out), uint64_t *out)
{
	struct precopy_session *s = src->s;
	bool pause = needs_pause(src, vm_stopped);
	int err;

	if (pause && (err = s->cb.stop_vm(s->cb.opaque)))
		return pc_fail(s, err, "stop_vm for a soft-dirty sync failed: %s", strerror(-err));
	err = fn(src, out);
	if (pause) {
		int e2 = s->cb.resume_vm(s->cb.opaque);

		if (e2)
			pc_fail(s, e2, "resume_vm after a soft-dirty sync failed: %s",
				strerror(-e2));
		err = err ? err : e2;
	}
	return err;
}

static int sync_regions(struct source *src, uint64_t *added);

/* Sync every region's dirty log into the session bitmap; feed the policy. */
int pc_src_sync_dirty(struct source *src, uint64_t *newly, bool vm_stopped)
{
	struct precopy_session *s = src->s;
	uint64_t t0 = pc_now(), added = 0;
	unsigned pct, old;
	int err = with_pause(src, vm_stopped, sync_regions, &added);

	if (err)
		return err;

	pthread_mutex_lock(&src->plock);
	old = src->pol.throttle.pct;
	pct = pc_policy_synced(&src->pol, added * PRECOPY_PAGE_SIZE, pc_now() - t0, pc_now());
	pthread_mutex_unlock(&src->plock);

	pthread_mutex_lock(&s->lock);
	s->st.dirty_sync_count++;
	s->st.cpu_throttle_percentage = pct;
	pthread_mutex_unlock(&s->lock);
	if (pct != old && s->cb.set_throttle) {
		err = s->cb.set_throttle(s->cb.opaque, pct);
		if (err)
			return pc_fail(s, err, "set_throttle(%u) failed", pct);
	}
	src->pass_dirtied += added;
	if (newly)
		*newly = added;
	return 0;
}

static int sync_dirty(struct source *src, uint64_t *newly)
{
	return pc_src_sync_dirty(src, newly, false);
}

/* OR each region's dirty log into the session bitmap; count new bits. */
static int sync_regions(struct source *src, uint64_t *addedp)
{
	struct precopy_session *s = src->s;
	uint64_t added = 0;

	for (unsigned i = 0; i < s->nreg; i++) {
		struct pc_region *r = &s->reg[i];
		uint64_t nw = (r->npages + 63) / 64;
		int64_t n;

		memset(src->tmp, 0, nw * sizeof(uint64_t));
		n = pc_dirty_sync(r->dirty, src->tmp);
		if (n < 0)
			return pc_fail(s, (int)n, "dirty log sync of region %u failed: %s", i,
				       strerror((int)-n));
		if (n == 0)
			continue;
		for (uint64_t w = 0; w < nw; w++) {
			uint64_t b = src->tmp[w], old_bits;

			if (!b)
				continue;
			/* Written since: no longer free. Cleared before the page
			 * is pending, so a sender that takes it sees it. */
			if (r->free_bm)
				atomic_fetch_and(&r->free_bm[w], ~b);
			old_bits = atomic_fetch_or(&src->dirty[r->word_base + w], b);
			added += (uint64_t)__builtin_popcountll(b & ~old_bits);
		}
	}
	*addedp = added;
	return 0;
}

/* The transport's link figures of every channel into the policy. */
static void sample_link(struct source *src)
{
	struct pc_link_sample ls[PRECOPY_MAX_CHANNELS];
	enum pc_link_source from = PC_LINK_SRC_NONE;

	if (!src->link_stats)
		return;
	for (unsigned c = 0; c < src->nchan; c++) {
		struct pc_tp_link_stats t;

		if (pc_tp_link_stats(src->tp, c, &t) || t.source == PC_TP_LINK_NONE) {
			src->link_stats = false; /* not this transport: send time it is */
			return;
		}
		ls[c] = (struct pc_link_sample){ .busy_ns = t.busy_ns, .delivered = t.delivered,
						 .queued = t.queued, .rtt_ns = t.rtt_ns };
		from = t.source == PC_TP_LINK_TCP_INFO	  ? PC_LINK_SRC_TCP_INFO
		       : t.source == PC_TP_LINK_COMPLETIONS ? PC_LINK_SRC_COMPLETIONS
							    : PC_LINK_SRC_COPY;
	}
	pthread_mutex_lock(&src->plock);
	pc_policy_link(&src->pol, from, src->nchan, ls, pc_now());
	pthread_mutex_unlock(&src->plock);
}

static void update_live_stats(struct source *src)
{
	struct precopy_session *s = src->s;
	uint64_t remaining = count_dirty(src) * PRECOPY_PAGE_SIZE;
	double busy, wall, link, snd, sw;
	enum pc_link_source from;
	uint64_t queued, dev;

	sample_link(src);
	pthread_mutex_lock(&src->plock);
	busy = pc_policy_bw_busy(&src->pol);
	wall = pc_policy_bw_wall(&src->pol);
	link = pc_link_bps(&src->pol.link);
	snd = pc_policy_bw_sender(&src->pol);
	sw = pc_policy_switch_bandwidth(&src->pol);
	from = pc_policy_bandwidth_source(&src->pol);
	queued = src->pol.link.queued;
	dev = src->pol.device_state_bytes;
	pthread_mutex_unlock(&src->plock);
	pthread_mutex_lock(&s->lock);
	s->st.remaining = remaining;
	s->st.bandwidth_busy = (uint64_t)busy;
	s->st.bandwidth_wall = (uint64_t)wall;
	s->st.bandwidth_link = (uint64_t)link;
	s->st.bandwidth_sender = (uint64_t)snd;
	s->st.bandwidth_switchover = (uint64_t)sw;
	s->st.bandwidth_source = (enum precopy_bw_source)from;
	s->st.queued_bytes = queued;
	s->st.device_state_bytes = dev;
	s->st.mbps = sw * 8 / 1e6;
	pthread_mutex_unlock(&s->lock);
}

/* Wait for an ITER_ACK of @iteration on channel 0. */
static int wait_ack(struct source *src, unsigned iteration)
{
	static const struct pc_expect ex = {
		.type = PC_MSG_ITER_ACK,
		.lost = "waiting for the destination: %s",
		.malformed = "malformed reply from destination: %s",
		.gave_up = "destination failed: %s",
	};
	uint8_t buf[PC_WIRE_HDR + 8 + PC_WIRE_TEXT_MAX];
	struct pc_wire_msg m;
	int err = pc_recv_expect(src->s, 0, buf, sizeof(buf), &ex, &m, NULL, 0);

	if (err < 0)
		return err;
	if (err || m.u.iter_ack.iteration != iteration)
		return pc_fail(src->s, -EPROTO, "destination sent %s, expected ITER_ACK %u",
			       pc_wire_type_name(m.type), iteration);
	return 0;
}

/* Run one pass with all senders; the caller's thread syncs and ticks. */
int pc_src_run_pass(struct source *src, unsigned iteration, enum pc_decision *tick)
{
	struct precopy_session *s = src->s;
	uint64_t last_sync = pc_now(), last_progress = 0;
	int err;

	pthread_mutex_lock(&src->mu);
	src->iteration = iteration;
	src->done = 0;
	src->gen++;
	pthread_cond_broadcast(&src->cv);
	while (src->done < src->nchan) {
		struct timespec ts;
		uint64_t now;

		pc_deadline(&ts, CLOCK_REALTIME, PC_LINK_SAMPLE_NS);
		pthread_cond_timedwait(&src->cv, &src->mu, &ts);
		if (src->done >= src->nchan)
			break;
		pthread_mutex_unlock(&src->mu);

		/* The link's counters often, so that channels busy one after
		 * the other are not taken as busy at the same time. */
		sample_link(src);
		pc_src_pace(src);
		now = pc_now();
		if (!src->final) {
			enum pc_decision d;

			/* Periodic sync: auto-converge judges periods, not passes. */
			if (now - last_sync >= PC_THROTTLE_PERIOD_NS) {
				err = sync_dirty(src, NULL);
				if (err)
					set_err(src, err);
				last_sync = now;
			}
			err = apply_params(src);
			if (err)
				set_err(src, err);
			pthread_mutex_lock(&src->plock);
			d = pc_policy_tick(&src->pol, now);
			pthread_mutex_unlock(&src->plock);
			if (d != PC_CONTINUE && tick && *tick == PC_CONTINUE) {
				*tick = d;
				atomic_store(&src->stop_pass, true);
			}
		}
		if (now - last_progress >= 100 * PC_NSEC_PER_MSEC) {
			fold_counters(src);
			update_live_stats(src);
			pc_progress(s);
			last_progress = now;
		}
		pthread_mutex_lock(&src->mu);
	}
	pthread_mutex_unlock(&src->mu);
	pc_src_pace(src); /* the shares of what is left, while the ack waits */
	fold_counters(src);
	if (atomic_load(&src->err))
		return atomic_load(&src->err);
	if (atomic_load(&s->cancel))
		return -ECANCELED;
	return wait_ack(src, iteration);
}

/*
 * Take free-page hints into the pending set (@open), or stop taking them.
 * Under the session lock: precopy_region_hint_free() holds it while it
 * marks pages, so once closed no hint touches the bitmaps any more.
 */
void pc_src_hints_open(struct source *src, bool open)
{
	struct precopy_session *s = src->s;

	pthread_mutex_lock(&s->lock);
	s->hint_pending = open ? src->dirty : NULL;
	if (!open)
		s->hints_closed = true;
	pthread_mutex_unlock(&s->lock);
}

/* --- the phases of a migration ------------------------------------------- */

/* Connect every channel to @uri; the session holds the transport from here. */
static int connect_dest(struct source *src, const char *uri)
{
	struct precopy_session *s = src->s;
	const struct pc_transport_ops *ops;
	char why[160] = "";
	struct pc_transport_opts o = { .channels = src->nchan,
				       .timeout_ms = src->params.timeout_ms,
				       .key = s->key, .key_len = s->key_len,
				       .flags = s->reg_mode == PRECOPY_REG_PIN_ALL ? PC_TOPT_PIN_ALL : 0,
				       .tls = s->have_tls ? &s->tls : NULL,
				       .why = why, .whylen = sizeof(why), .cancel = &s->cancel };
	struct pc_transport *tp;
	const char *rest;
	int err;

	pc_set_status(s, PRECOPY_STATUS_SETUP);
	err = pc_transport_split_uri(uri, &ops, &rest);
	if (err)
		return pc_fail(s, err, "bad destination URI '%s' (expected one of %s)", uri,
			       pc_transport_syntaxes());
	if (src->params.on_limit == PRECOPY_ON_LIMIT_POSTCOPY && !(ops->caps & PC_TCAP_POSTCOPY))
		return pc_fail(s, -EOPNOTSUPP,
			       "on-limit postcopy is not available over %s: yet (only tcp: and tls: carry it)",
			       ops->scheme);
	if (atomic_load(&s->cancel))
		return -ECANCELED;
	err = pc_tp_connect(ops, rest, &o, &tp);
	if (err == -ECANCELED)
		return err;
	if (err == -EINVAL && !why[0])
		return pc_fail(s, err, "bad destination URI '%s' (expected %s)", uri, ops->syntax);
	if (err)
		return pc_fail(s, err, "connecting to %s: %s", uri, why[0] ? why : strerror(-err));
	pthread_mutex_lock(&s->lock);
	s->tp = tp;
	pthread_mutex_unlock(&s->lock);
	src->tp = tp;
	return atomic_load(&s->cancel) ? -ECANCELED : 0;
}

/* Arm every region's dirty log (@unused: with_pause()'s shape). */
static int start_logs(struct source *src, uint64_t *unused)
{
	struct precopy_session *s = src->s;
	int err = 0;

	(void)unused;
	for (unsigned i = 0; i < s->nreg && !err; i++) {
		err = pc_dirty_start(s->reg[i].dirty);
		if (err)
			pc_fail(s, err, "arming the dirty log of region %u: %s", i, strerror(-err));
	}
	return err;
}

/*
 * Register the regions with the transport, arm the dirty log before the
 * first page is read, and make every page pending; the policy starts.
 */
static int arm(struct source *src)
{
	struct precopy_session *s = src->s;
	uint64_t t_setup;
	int err;

	for (unsigned i = 0; i < s->nreg && (src->tp->ops->caps & PC_TCAP_NEEDS_REG); i++) {
		err = pc_tp_reg_local(src->tp, s->reg[i].addr, s->reg[i].len);
		if (err)
			return pc_fail(s, err, "registering region %u: %s", i, strerror(-err));
	}
	err = with_pause(src, false, start_logs, NULL);
	if (err)
		return err;
	for (unsigned i = 0; i < s->nreg; i++) {
		struct pc_region *r = &s->reg[i];

		for (uint64_t p = 0; p < r->npages; p += 64) {
			uint64_t n = r->npages - p < 64 ? r->npages - p : 64;

			atomic_store(&src->dirty[r->word_base + p / 64],
				     n == 64 ? ~0ull : (1ull << n) - 1);
		}
	}
	t_setup = pc_now();
	pthread_mutex_lock(&s->lock);
	s->st.setup_time = (t_setup - s->t_start) / PC_NSEC_PER_MSEC;
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_lock(&src->plock);
	src->params_gen = pc_params_snapshot(s, &src->params);
	pc_policy_init(&src->pol, &src->params, t_setup);
	pthread_mutex_unlock(&src->plock);
	/* The log is armed and every page is pending: free-page hints are
	 * safe from now on (precopy_region_hint_free()). */
	pc_src_hints_open(src, true);
	src->link_stats = true;
	apply_device_state(src);
	pc_set_status(s, PRECOPY_STATUS_BULK);
	return 0;
}

/*
 * After pass @iter (begun at @t_pass): sync, figures, parameter changes,
 * and the policy's decision into *@d (a watchdog verdict taken during the
 * pass stays).
 */
static int pass_end(struct source *src, unsigned iter, uint64_t t_pass, enum pc_decision *d)
{
	struct precopy_session *s = src->s;
	uint64_t before;
	int err;

	err = sync_dirty(src, NULL);
	if (err)
		return err;
	before = count_dirty(src);
	update_live_stats(src);
	err = apply_params(src);
	if (err)
		return err;
	pthread_mutex_lock(&src->plock);
	if (pc_now() > t_pass)
		pc_policy_dirty_rate(&src->pol, (double)src->pass_dirtied *
					PRECOPY_PAGE_SIZE * 1e9 / (double)(pc_now() - t_pass));
	if (*d == PC_CONTINUE) {
		*d = pc_policy_pass_end(&src->pol, iter, before * PRECOPY_PAGE_SIZE, pc_now());
	} else if (*d == PC_FORCE) {
		/* Forced mid-pass: what the pause will carry is what is
		 * left now, not what was left at the last pass end. */
		enum pc_wd_verdict why = src->pol.last_verdict;

		pc_policy_pass_end(&src->pol, iter, before * PRECOPY_PAGE_SIZE, pc_now());
		src->pol.last_verdict = why;
	}
	pthread_mutex_unlock(&src->plock);
	pthread_mutex_lock(&s->lock);
	s->st.expected_downtime = src->pol.expected_downtime_ns / PC_NSEC_PER_MSEC;
	s->st.iteration = iter;
	if (pc_now() > t_pass)
		s->st.dirty_pages_rate = src->pass_dirtied * PC_NSEC_PER_SEC / (pc_now() - t_pass);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/*
 * The bulk pass, then iterations until the policy says switchover, force
 * or abort. Return: 0 with the last pass in *@iterp and whether the
 * watchdog forced the switchover in *@forced.
 */
static int iterate(struct source *src, unsigned *iterp, bool *forced)
{
	struct precopy_session *s = src->s;
	enum pc_decision d = PC_CONTINUE;
	unsigned iter = 0;
	int err;

	for (;;) {
		uint64_t t_pass = pc_now();

		src->pass_dirtied = 0;
		err = pc_src_run_pass(src, iter, &d);
		if (!err)
			err = pass_end(src, iter, t_pass, &d);
		/* postcopy's pause carries no RAM: max-forced-downtime is moot */
		if (!err && d == PC_FORCE && !src->postcopy)
			err = pc_src_check_forced(src);
		if (err)
			return err;
		if (d == PC_SWITCHOVER || d == PC_FORCE)
			break;
		if (d == PC_ABORT)
			return pc_fail(s, -ETIMEDOUT, "watchdog: %s; migration aborted, guest keeps running",
				       pc_wd_reason(src->pol.last_verdict));
		iter++;
		if (iter == 1)
			pc_set_status(s, PRECOPY_STATUS_ITERATE);
	}
	*iterp = iter;
	*forced = d == PC_FORCE;
	return 0;
}

/* Arm, the passes, the switchover: the migration of the pages themselves. */
static int precopy_pages(struct source *src)
{
	unsigned iter = 0;
	bool forced = false;
	int err = arm(src);

	if (err)
		return err;
	src->peer_waits = true;
	err = iterate(src, &iter, &forced);
	if (!err && forced && src->postcopy)
		return pc_src_postcopy(src, iter);
	return err ? err : pc_src_switchover(src, iter, forced);
}

static int migrate(struct source *src, const char *uri)
{
	int err = connect_dest(src, uri);

	if (!err)
		err = pc_src_handshake(src);
	if (!err)
		err = src->handoff ? pc_src_handoff(src) : precopy_pages(src);
	return err ? pc_src_failed(src, err) : 0;
}

int pc_source_run(struct precopy_session *s, const char *uri)
{
	struct source *src;
	uint64_t maxw = 0;
	int err = 0;

	src = calloc(1, sizeof(*src));
	if (!src)
		return pc_fail(s, -ENOMEM, "out of memory");
	src->s = s;
	src->params_gen = pc_params_snapshot(s, &src->params);
	src->nchan = src->params.channels;
	src->zero_hash = pc_zero_page_hash();
	atomic_init(&src->err, 0);
	atomic_init(&src->stop_pass, false);
	pthread_mutex_init(&src->plock, NULL);
	pthread_mutex_init(&src->mu, NULL);
	pthread_cond_init(&src->cv, NULL);
	for (unsigned i = 0; i < s->nreg; i++)
		if ((s->reg[i].npages + 63) / 64 > maxw)
			maxw = (s->reg[i].npages + 63) / 64;
	src->dirty = calloc(s->nwords, sizeof(*src->dirty));
	src->tmp = calloc(maxw, sizeof(uint64_t));
	for (unsigned i = 0; i < s->nreg; i++) {
		s->reg[i].free_bm = calloc((s->reg[i].npages + 63) / 64, sizeof(uint64_t));
		if (!s->reg[i].free_bm)
			maxw = 0; /* (out of memory) */
	}
	if (!src->dirty || !src->tmp || !maxw) {
		err = pc_fail(s, -ENOMEM, "out of memory for the dirty bitmap");
		goto out_free;
	}
	for (unsigned c = 0; c < src->nchan; c++) {
		struct sender *sd = &src->snd[c];

		sd->src = src;
		sd->chan = c;
		sd->msg = malloc(PC_WIRE_MSG_MAX);
		if (!sd->msg) {
			err = pc_fail(s, -ENOMEM, "out of memory");
			goto out_threads;
		}
		if (pthread_create(&sd->thread, NULL, sender_main, sd)) {
			err = pc_fail(s, -EAGAIN, "cannot start a sender thread");
			goto out_threads;
		}
		sd->started = true;
	}

	err = migrate(src, uri);

out_threads:
	if (err && src->tp)
		pc_tp_abort(src->tp);
	pthread_mutex_lock(&src->mu);
	src->quit = true;
	pthread_cond_broadcast(&src->cv);
	pthread_mutex_unlock(&src->mu);
	for (unsigned c = 0; c < src->nchan; c++) {
		if (src->snd[c].started)
			pthread_join(src->snd[c].thread, NULL);
		free(src->snd[c].msg);
	}
out_free:
	pc_src_hints_open(src, false);
	/* Stop tracking: the guest's memory goes back to plain memory. */
	for (unsigned i = 0; i < s->nreg; i++) {
		pc_dirty_delete(&s->reg[i].dirty);
		free((void *)s->reg[i].free_bm);
		s->reg[i].free_bm = NULL;
	}
	pthread_cond_destroy(&src->cv);
	pthread_mutex_destroy(&src->mu);
	pthread_mutex_destroy(&src->plock);
	free(src->dirty);
	free(src->tmp);
	free(src);
	return err;
}

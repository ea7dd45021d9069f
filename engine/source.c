/* SPDX-License-Identifier: MIT */
/*
 * source.c - the sending end: setup, bulk pass, iterations, switchover.
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
#include "session.h"

/** Longest data run in one frame (pages). */
#define MAX_RUN_PAGES 64
/** Flush a batch when it holds this much page data. */
#define BATCH_BYTES (256u << 10) /* still in cache when sent */

struct source;

struct sender {
	struct source *src;
	unsigned chan;
	pthread_t thread;
	bool started;
	/* batch being built */
	struct pc_page_run data[PC_WIRE_RUNS_MAX];
	unsigned ndata;
	uint64_t data_bytes;
	uint8_t *msg; /* RUNS record */
	uint32_t nruns;
	struct pc_wire_run cur; /* run being extended */
	bool have_cur;
	/* the sender estimate: pages looked at since the last batch went,
	 * and when the sender last stopped waiting (batch sent, bucket) */
	uint64_t scanned;
	uint64_t active_since;
	/* counters, folded into the stats by the control thread */
	_Atomic uint64_t normal, duplicate, free_skipped, bytes, wire;
	uint64_t send_cpu_ns; /* this pass, in flush_batch()'s transport calls */
};

struct source {
	struct precopy_session *s;
	struct pc_transport *tp;
	unsigned nchan;
	_Atomic uint64_t *dirty; /* session bitmap */
	uint64_t *tmp;           /* sync scratch, one region at a time */
	uint64_t zero_hash;

	pthread_mutex_t plock; /* policy + stats counters */
	struct pc_policy pol;
	struct precopy_params params; /* as taken at the start or the last change */
	unsigned params_gen;          /* s->params_gen they are of */

	/* pass hand-off */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned gen;        /* bumped to start a pass */
	unsigned done;       /* senders finished with the current pass */
	bool quit;
	unsigned iteration;  /* the pass being sent */
	bool final;          /* switchover pass: no throttle */
	atomic_bool stop_pass; /* the watchdog wants the pass cut short */
	atomic_int err;      /* first sender error */
	uint64_t pass_dirtied; /* pages newly dirty by every sync of this pass */
	bool handoff;        /* PC_CAP_HANDOFF offered / accepted */
	atomic_bool link_stats; /* the transport gives link figures (else -EOPNOTSUPP) */
	bool unconfirmed;    /* GO sent, no answer: the guest may run there */

	struct sender snd[PRECOPY_MAX_CHANNELS];
};

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
	if (!src->final && now > sd->active_since)
		pc_policy_sender(&src->pol, sd->chan, sd->scanned * PRECOPY_PAGE_SIZE,
				 now - sd->active_since, now);
	pthread_mutex_unlock(&src->plock);
	sd->scanned = 0;
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
		} else if (pc_page_scan(reg->addr + page * PRECOPY_PAGE_SIZE, &h)) {
			kind = PC_RUN_ZERO;
			sd->duplicate++;
		} else {
			kind = PC_RUN_DATA;
			sd->normal++;
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

static int pause_guest(struct source *src)
{
	struct precopy_session *s = src->s;
	int err = s->cb.stop_vm(s->cb.opaque);

	return err ? pc_fail(s, err, "stop_vm for a soft-dirty sync failed: %s", strerror(-err))
		   : 0;
}

static int resume_guest(struct source *src)
{
	struct precopy_session *s = src->s;
	int err = s->cb.resume_vm(s->cb.opaque);

	return err ? pc_fail(s, err, "resume_vm after a soft-dirty sync failed: %s",
			     strerror(-err))
		   : 0;
}

static int sync_regions(struct source *src, uint64_t *added);

/* Sync every region's dirty log into the session bitmap; feed the policy. */
static int sync_dirty_ex(struct source *src, uint64_t *newly, bool vm_stopped)
{
	struct precopy_session *s = src->s;
	uint64_t t0 = pc_now(), added = 0;
	unsigned pct, old;
	bool pause = needs_pause(src, vm_stopped);
	int err;

	if (pause && (err = pause_guest(src)))
		return err;
	err = sync_regions(src, &added);
	if (pause) {
		int e2 = resume_guest(src);

		err = err ? err : e2;
	}
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
	return sync_dirty_ex(src, newly, false);
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
static int run_pass(struct source *src, unsigned iteration, enum pc_decision *tick)
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

		pc_deadline(&ts, CLOCK_REALTIME, 100 * PC_NSEC_PER_MSEC);
		pthread_cond_timedwait(&src->cv, &src->mu, &ts);
		if (src->done >= src->nchan)
			break;
		pthread_mutex_unlock(&src->mu);

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
	fold_counters(src);
	if (atomic_load(&src->err))
		return atomic_load(&src->err);
	if (atomic_load(&s->cancel))
		return -ECANCELED;
	return wait_ack(src, iteration);
}

static int send_device_state(struct source *src)
{
	struct precopy_session *s = src->s;
	uint8_t hdr[PC_WIRE_HDR + 24];
	void *buf = NULL;
	size_t len = 0, off = 0;
	int err;

	if (!s->cb.save_device_state)
		return 0;
	err = s->cb.save_device_state(s->cb.opaque, &buf, &len);
	if (err)
		return pc_fail(s, err, "save_device_state failed: %s", strerror(-err));
	if (len > PC_WIRE_DEVSTATE_MAX) {
		free(buf);
		return pc_fail(s, -EFBIG, "device state of %zu bytes exceeds the limit", len);
	}
	do {
		uint32_t n = (uint32_t)(len - off < PC_WIRE_DEVSTATE_CHUNK ? len - off
									    : PC_WIRE_DEVSTATE_CHUNK);
		struct iovec v[2] = { { hdr, sizeof(hdr) }, { (uint8_t *)buf + off, n } };

		pc_wire_enc_devstate_hdr(hdr, sizeof(hdr), len, off, n);
		err = pc_tp_send_msg(src->tp, 0, v, n ? 2 : 1);
		off += n;
	} while (!err && off < len);
	free(buf);
	pthread_mutex_lock(&s->lock);
	s->st.transferred += len;
	atomic_store(&pc_device_state_last, len); /* the next migration's guess */
	pthread_mutex_unlock(&s->lock);
	if (err)
		return pc_fail(s, err, "sending device state: %s", pc_err_context(s, err));
	return 0;
}

static int complete(struct source *src)
{
	static const struct pc_expect verdict = {
		.type = PC_MSG_RESULT,
		.type2 = PC_MSG_ERROR,
		.lost = "waiting for the destination's verdict: %s",
		.malformed = "malformed verdict from destination: %s",
		.other = "destination sent %s, expected RESULT",
	};
	static const struct pc_expect answer = { .type = PC_MSG_RESULT };
	struct precopy_session *s = src->s;
	uint64_t npages[PRECOPY_MAX_REGIONS], hash[PRECOPY_MAX_REGIONS];
	uint8_t buf[PC_WIRE_HDR + 8 + 16 * PRECOPY_MAX_REGIONS];
	uint8_t rbuf[PC_WIRE_HDR + 8 + PC_WIRE_TEXT_MAX];
	struct pc_wire_msg m;
	struct iovec v = { buf, 0 };
	int n, err;

	for (unsigned i = 0; i < s->nreg; i++) {
		npages[i] = s->reg[i].npages;
		/* handoff: the destination maps these very pages; no checksum */
		hash[i] = src->handoff ? 0 : pc_hash_combine(s->reg[i].hash, s->reg[i].npages);
	}
	n = pc_wire_enc_complete(buf, sizeof(buf), s->nreg, npages, hash);
	if (n < 0)
		return pc_fail(s, n, "encoding COMPLETE");
	v.iov_len = (size_t)n;
	err = pc_tp_send_msg(src->tp, 0, &v, 1);
	if (err)
		return pc_fail(s, err, "sending COMPLETE: %s", pc_err_context(s, err));
	/* Until GO the destination does not resume the guest: a lost or
	 * refusing verdict, or a cancel, makes this end the one that runs. */
	err = pc_recv_expect(s, 0, rbuf, sizeof(rbuf), &verdict, &m, NULL, 0);
	if (err)
		return err;
	if (m.u.result.status)
		return pc_fail(s, m.u.result.status, "destination refused: %s", m.u.result.text);
	/* GO: from here this end never resumes the guest, unless the
	 * destination says it could not; a cancel is refused (see
	 * precopy_cancel()). */
	pthread_mutex_lock(&s->lock);
	if (atomic_load(&s->cancel)) {
		pthread_mutex_unlock(&s->lock);
		return -ECANCELED;
	}
	atomic_store(&s->committed, true);
	pthread_mutex_unlock(&s->lock);
	v.iov_len = (size_t)pc_wire_enc_go(buf, sizeof(buf));
	err = pc_tp_send_msg(src->tp, 0, &v, 1);
	if (!err)
		err = pc_recv_expect(s, 0, rbuf, sizeof(rbuf), &answer, &m, NULL, 0);
	if (err > 0)
		err = -EPROTO; /* not RESULT */
	if (err) {
		src->unconfirmed = true;
		return pc_fail(s, -ENOTRECOVERABLE,
			       "the destination verified the guest and was told to resume it, but did not say it had (%s); the guest may be running there and was not resumed here",
			       err == -EPROTO ? "malformed answer" : pc_err_context(s, err));
	}
	if (m.u.result.status)
		return pc_fail(s, m.u.result.status,
			       "the destination could not resume the guest: %s; it runs here again",
			       m.u.result.text);
	return 0;
}

static int handshake(struct source *src)
{
	static const struct pc_expect hello_ack = {
		.type = PC_MSG_HELLO_ACK,
		.lost = "handshake: %s",
		.malformed = "handshake: %s",
		.other = "handshake: destination sent %s",
	};
	struct precopy_session *s = src->s;
	uint64_t lens[PRECOPY_MAX_REGIONS];
	uint8_t buf[PC_WIRE_HDR + 32 + 8 * PRECOPY_MAX_REGIONS];
	struct iovec v = { buf, 0 };
	struct pc_wire_msg m;
	int n, err;

	for (unsigned i = 0; i < s->nreg; i++)
		lens[i] = s->reg[i].len;
	n = pc_wire_enc_hello(buf, sizeof(buf), PC_CAP_ALL | (src->handoff ? PC_CAP_HANDOFF : 0),
			      s->nreg, lens, src->nchan);
	if (n < 0)
		return pc_fail(s, n, "encoding HELLO");
	v.iov_len = (size_t)n;
	err = pc_tp_send_msg(src->tp, 0, &v, 1);
	if (err)
		return pc_fail(s, err, "handshake: %s", pc_err_context(s, err));
	err = pc_recv_expect(s, 0, buf, sizeof(buf), &hello_ack, &m, NULL, 0);
	if (err)
		return err;
	if (m.u.hello_ack.status)
		return pc_fail(s, m.u.hello_ack.status, "destination refused: %s",
			       m.u.hello_ack.text);
	if ((m.u.hello_ack.caps & PC_CAP_REQUIRED) != PC_CAP_REQUIRED)
		return pc_fail(s, -EPROTO, "destination lacks required capabilities (0x%llx)",
			       (unsigned long long)m.u.hello_ack.caps);
	src->handoff = src->handoff && (m.u.hello_ack.caps & PC_CAP_HANDOFF);
	return 0;
}

/* Best effort: tell the destination why we give up. */
static void send_error(struct source *src, int err)
{
	uint8_t buf[PC_WIRE_HDR + 8 + PC_WIRE_TEXT_MAX];
	char text[PRECOPY_ERRMSG_MAX];
	struct iovec v = { buf, 0 };
	int n;

	precopy_strerror(src->s, text, sizeof(text));
	n = pc_wire_enc_result(buf, sizeof(buf), PC_MSG_ERROR, err, text);
	if (n > 0) {
		v.iov_len = (size_t)n;
		pc_tp_send_msg(src->tp, 0, &v, 1);
	}
}

/* --- handoff: the RAM itself changes hands ------------------------------- */

/* Every region is a memfd and the transport can pass fds. */
static bool handoff_possible(struct source *src)
{
	struct precopy_session *s = src->s;

	if (!(src->tp->ops->caps & PC_TCAP_FD_PASS))
		return false;
	for (unsigned i = 0; i < s->nreg; i++)
		if (s->reg[i].fd < 0)
			return false;
	return true;
}

/*
 * Stop the guest, hand the memfds over, send the device state and
 * COMPLETE. No page crosses: the downtime does not depend on RAM size. On
 * failure the guest resumes; the destination unmaps what it mapped and
 * never wrote into it.
 */
static int send_handoff(struct source *src)
{
	struct precopy_session *s = src->s;
	uint64_t t_stop;
	int err = 0;

	pc_set_status(s, PRECOPY_STATUS_SWITCHOVER);
	t_stop = pc_now();
	if (s->cb.stop_vm) {
		err = s->cb.stop_vm(s->cb.opaque);
		if (err)
			return pc_fail(s, err, "stop_vm failed: %s", strerror(-err));
	}
	for (unsigned i = 0; i < s->nreg; i++) {
		struct pc_region *r = &s->reg[i];
		uint8_t buf[PC_WIRE_HDR + 24];
		struct iovec v = { buf, 0 };
		int n = pc_wire_enc_handoff(buf, sizeof(buf), i, r->fd_offset, r->len);

		if (n < 0) {
			err = pc_fail(s, n, "encoding HANDOFF of region %u", i);
			goto fail;
		}
		v.iov_len = (size_t)n;
		err = pc_tp_send_fds(src->tp, 0, &r->fd, 1, &v, 1);
		if (err) {
			pc_fail(s, err, "handing over region %u: %s", i, pc_err_context(s, err));
			goto fail;
		}
	}
	err = send_device_state(src);
	if (!err)
		err = complete(src);
	if (err)
		goto fail;
	pthread_mutex_lock(&s->lock);
	s->st.downtime = (pc_now() - t_stop) / PC_NSEC_PER_MSEC;
	s->st.remaining = 0;
	pthread_mutex_unlock(&s->lock);
	return 0;

fail:
	if (atomic_load(&s->cancel))
		err = -ECANCELED;
	if (src->unconfirmed)
		return err; /* the guest may run there: never here too */
	if (err != -ECANCELED)
		send_error(src, err);
	if (s->cb.resume_vm)
		s->cb.resume_vm(s->cb.opaque);
	return err;
}

/*
 * Take free-page hints into the pending set (@open), or stop taking them.
 * Under the session lock: precopy_region_hint_free() holds it while it
 * marks pages, so once closed no hint touches the bitmaps any more.
 */
static void hints_open(struct source *src, bool open)
{
	struct precopy_session *s = src->s;

	pthread_mutex_lock(&s->lock);
	s->hint_pending = open ? src->dirty : NULL;
	if (!open)
		s->hints_closed = true;
	pthread_mutex_unlock(&s->lock);
}

/*
 * The watchdog wants to force the switchover. Record what it is expected
 * to cost; refuse (abort, the guest keeps running) if that is above
 * max-forced-downtime. Return: 0 to go on with the forced switchover.
 */
static int check_forced(struct source *src)
{
	struct precopy_session *s = src->s;
	uint64_t ns, ms, bound;
	enum pc_wd_verdict why;

	pthread_mutex_lock(&src->plock);
	ns = src->pol.expected_downtime_ns;
	why = src->pol.last_verdict;
	pthread_mutex_unlock(&src->plock);
	ms = ns == UINT64_MAX ? UINT64_MAX : ns / PC_NSEC_PER_MSEC;
	pthread_mutex_lock(&s->lock);
	bound = s->xparams.max_forced_downtime_ms;
	s->st.forced_expected_downtime = ms;
	if (bound && ms > bound)
		s->st.forced_aborted = true;
	pthread_mutex_unlock(&s->lock);
	if (!bound || ms <= bound)
		return 0;
	if (ms == UINT64_MAX)
		return pc_fail(s, -ETIMEDOUT,
			       "watchdog: %s; the downtime of a forced switchover cannot be predicted (no bandwidth estimate) and max-forced-downtime is %llu ms; migration aborted, guest keeps running",
			       pc_wd_reason(why), (unsigned long long)bound);
	return pc_fail(s, -ETIMEDOUT,
		       "watchdog: %s; a forced switchover would pause the guest about %llu ms, above max-forced-downtime %llu ms; migration aborted, guest keeps running",
		       pc_wd_reason(why), (unsigned long long)ms, (unsigned long long)bound);
}

static int migrate(struct source *src, const char *uri)
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
	enum pc_decision d = PC_CONTINUE;
	bool stopped = false, forced = false;
	uint64_t t_setup, t_stop = 0;
	unsigned iter = 0;
	int err;

	pc_set_status(s, PRECOPY_STATUS_SETUP);
	err = pc_transport_split_uri(uri, &ops, &rest);
	if (err)
		return pc_fail(s, err, "bad destination URI '%s' (expected tcp:HOST:PORT or "
				       "shm:PATH; built: %s)", uri, pc_transport_schemes());
	if (atomic_load(&s->cancel))
		return -ECANCELED;
	err = ops->connect(rest, &o, &tp);
	if (err == -ECANCELED)
		return err;
	if (err == -EINVAL && !why[0])
		return pc_fail(s, err, "bad destination URI '%s' (expected %s:HOST:PORT, port 1..65535)",
			       uri, pc_transport_schemes());
	if (err)
		return pc_fail(s, err, "connecting to %s: %s", uri, why[0] ? why : strerror(-err));
	pthread_mutex_lock(&s->lock);
	s->tp = tp;
	pthread_mutex_unlock(&s->lock);
	src->tp = tp;
	if (atomic_load(&s->cancel))
		return -ECANCELED;
	src->handoff = handoff_possible(src);
	err = handshake(src);
	if (err)
		return err;
	if (src->handoff)
		return send_handoff(src);
	for (unsigned i = 0; i < s->nreg; i++) {
		err = tp->ops->reg_local(tp, s->reg[i].addr, s->reg[i].len);
		if (err)
			return pc_fail(s, err, "registering region %u: %s", i, strerror(-err));
	}

	/* Arm the dirty log before the first page is read, then send all. */
	if (needs_pause(src, false) && (err = pause_guest(src)))
		return err;
	for (unsigned i = 0; i < s->nreg && !err; i++) {
		err = pc_dirty_start(s->reg[i].dirty);
		if (err)
			pc_fail(s, err, "arming the dirty log of region %u: %s", i, strerror(-err));
	}
	if (needs_pause(src, false)) {
		int e2 = resume_guest(src);

		err = err ? err : e2;
	}
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
	hints_open(src, true);
	src->link_stats = true;
	apply_device_state(src);
	pc_set_status(s, PRECOPY_STATUS_BULK);

	for (;;) {
		uint64_t before, newly = 0, t_pass = pc_now();

		src->pass_dirtied = 0;

		err = run_pass(src, iter, &d);
		if (err)
			goto fail;
		err = sync_dirty(src, &newly);
		if (err)
			goto fail;
		before = count_dirty(src);
		update_live_stats(src);
		err = apply_params(src);
		if (err)
			goto fail;
		pthread_mutex_lock(&src->plock);
		if (pc_now() > t_pass)
			pc_policy_dirty_rate(&src->pol, (double)src->pass_dirtied *
						PRECOPY_PAGE_SIZE * 1e9 / (double)(pc_now() - t_pass));
		if (d == PC_CONTINUE) {
			d = pc_policy_pass_end(&src->pol, iter, before * PRECOPY_PAGE_SIZE,
					       pc_now());
		} else if (d == PC_FORCE) {
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
			s->st.dirty_pages_rate =
				src->pass_dirtied * PC_NSEC_PER_SEC / (pc_now() - t_pass);
		pthread_mutex_unlock(&s->lock);
		if (d == PC_FORCE) {
			err = check_forced(src);
			if (err)
				goto fail;
		}
		if (d == PC_SWITCHOVER || d == PC_FORCE)
			break;
		if (d == PC_ABORT) {
			err = pc_fail(s, -ETIMEDOUT, "watchdog: %s; migration aborted, guest keeps running",
				      pc_wd_reason(src->pol.last_verdict));
			goto fail;
		}
		iter++;
		if (iter == 1)
			pc_set_status(s, PRECOPY_STATUS_ITERATE);
	}
	forced = d == PC_FORCE;

	/* Switchover: stop the guest, send what is left, unthrottled. Hints
	 * end here: the last pass is what the destination gets. */
	hints_open(src, false);
	pc_set_status(s, PRECOPY_STATUS_SWITCHOVER);
	pthread_mutex_lock(&src->plock);
	pc_policy_set_switchover(&src->pol);
	pthread_mutex_unlock(&src->plock);
	t_stop = pc_now();
	if (s->cb.stop_vm) {
		err = s->cb.stop_vm(s->cb.opaque);
		if (err) {
			pc_fail(s, err, "stop_vm failed: %s", strerror(-err));
			goto fail;
		}
	}
	stopped = true;
	err = sync_dirty_ex(src, NULL, true);
	if (err)
		goto fail;
	src->final = true;
	atomic_store(&src->stop_pass, false);
	err = run_pass(src, ++iter, NULL);
	if (err)
		goto fail;
	err = send_device_state(src);
	if (err)
		goto fail;
	err = complete(src);
	if (err)
		goto fail;
	pthread_mutex_lock(&s->lock);
	s->st.downtime = (pc_now() - t_stop) / PC_NSEC_PER_MSEC;
	s->st.remaining = 0;
	s->st.iteration = iter;
	s->st.forced_switchover = forced;
	if (forced)
		s->st.forced_downtime = s->st.downtime;
	pthread_mutex_unlock(&s->lock);
	return 0;

fail:
	hints_open(src, false);
	if (src->unconfirmed) {
		/* The guest may run at the destination: never here too. */
		if (src->pol.throttle.pct && s->cb.set_throttle)
			s->cb.set_throttle(s->cb.opaque, 0);
		return err;
	}
	if (atomic_load(&s->cancel))
		err = -ECANCELED;
	if (err != -ECANCELED && !atomic_load(&src->err))
		send_error(src, err);
	if (err == -ECANCELED || atomic_load(&src->err) == -ECANCELED)
		err = -ECANCELED;
	else if (atomic_load(&src->err) && !s->st.error[0])
		pc_fail(s, atomic_load(&src->err), "sending pages: %s",
			pc_err_context(s, atomic_load(&src->err)));
	if (src->pol.throttle.pct && s->cb.set_throttle)
		s->cb.set_throttle(s->cb.opaque, 0);
	if (stopped && s->cb.resume_vm)
		s->cb.resume_vm(s->cb.opaque);
	return err;
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
	hints_open(src, false);
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

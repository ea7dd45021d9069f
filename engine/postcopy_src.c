/* SPDX-License-Identifier: MIT */
/*
 * postcopy_src.c - the source's switchover to postcopy (on-limit postcopy).
 *
 * The guest stops here for good: the last dirty sync leaves the pages the
 * destination does not hold current in the pending bitmap, and they are
 * what POSTCOPY lists. After the device state, the verdict and GO, the
 * guest runs at the destination; this end never resumes it again. Its
 * memory is frozen from then on, so every page still pending is sent once
 * from it: a page the destination asks for (REQUEST) before the next one
 * of the background push. A thread reads channel 0 meanwhile (requests,
 * then the final RESULT); the caller's thread sends every PAGE.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "page.h"
#include "source.h"

/** Requests queued at most; the destination asks once per page and a
 *  guest thread waits for its page before it asks again. */
#define QLEN 4096

/* What every failure after the handover adds: nothing here undoes it. */
#define AFTER_GO "; the guest was handed over and is not resumed here"

struct pc_push {
	struct source *src;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct {
		uint32_t region;
		uint64_t page;
	} q[QLEN];
	unsigned qhead, qlen;
	bool ended;         /* the reader stopped: RESULT, or err */
	int err;            /* the reader's failure (recorded with pc_fail) */
	int32_t status;     /* RESULT's */
	char text[PC_WIRE_TEXT_MAX + 1];
	uint64_t left;      /* pages not sent yet */
	uint64_t requests, requested, pushed;
	uint64_t cursor;    /* next bitmap word of the background push */
};

/* The reader's end: @err (< 0) or RESULT with @status; wakes the pusher. */
static void *reader_end(struct pc_push *p, int err, int32_t status, const char *text)
{
	pthread_mutex_lock(&p->mu);
	p->ended = true;
	p->err = err;
	p->status = status;
	snprintf(p->text, sizeof(p->text), "%s", text ? text : "");
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* Channel 0 while pages are pushed: REQUESTs into the queue until RESULT. */
static void *reader_main(void *arg)
{
	struct pc_push *p = arg;
	struct precopy_session *s = p->src->s;
	uint8_t buf[PC_WIRE_HDR + 8 + PC_WIRE_TEXT_MAX + 64];
	struct pc_wire_msg m;
	char why[160];
	size_t len;

	for (;;) {
		int err = pc_tp_recv_msg(p->src->tp, 0, buf, sizeof(buf), &len);

		if (err)
			return reader_end(p, pc_fail(s, err, "postcopy: connection to the destination lost: %s" AFTER_GO,
						     pc_err_context(s, err)), 0, NULL);
		err = pc_wire_decode(buf, len, &m, why, sizeof(why));
		if (err)
			return reader_end(p, pc_fail(s, err, "postcopy: malformed record: %s" AFTER_GO, why), 0,
					  NULL);
		if (m.type == PC_MSG_RESULT)
			return reader_end(p, 0, m.u.result.status, m.u.result.text);
		if (m.type == PC_MSG_ERROR)
			return reader_end(p, pc_fail(s, m.u.result.status ? m.u.result.status : -EIO,
						     "postcopy: the destination gave up: %s" AFTER_GO,
						     m.u.result.text), 0, NULL);
		if (m.type != PC_MSG_REQUEST || m.u.page.region >= s->nreg ||
		    m.u.page.page >= s->reg[m.u.page.region].npages)
			return reader_end(p, pc_fail(s, -EPROTO,
						     "postcopy: the destination sent %s (region %u, page %llu), expected REQUEST or RESULT" AFTER_GO,
						     pc_wire_type_name(m.type), m.u.page.region,
						     (unsigned long long)m.u.page.page), 0, NULL);
		pthread_mutex_lock(&p->mu);
		while (p->qlen == QLEN && !p->ended)
			pthread_cond_wait(&p->cv, &p->mu);
		p->q[(p->qhead + p->qlen) % QLEN].region = m.u.page.region;
		p->q[(p->qhead + p->qlen) % QLEN].page = m.u.page.page;
		p->qlen++;
		p->requests++;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
}

/* Take page @page of region @r off the pending set: true if it was there. */
static bool claim(struct source *src, unsigned r, uint64_t page)
{
	uint64_t w = src->s->reg[r].word_base + page / 64, bit = 1ull << (page % 64);

	return atomic_fetch_and(&src->dirty[w], ~bit) & bit;
}

/* The next page to send: a queued request for a page still pending, else
 * the next pending page of the push. Return: false when none is left. */
static bool next_page(struct pc_push *p, unsigned *r, uint64_t *page, bool *asked)
{
	struct source *src = p->src;
	struct precopy_session *s = src->s;

	pthread_mutex_lock(&p->mu);
	while (p->qlen) {
		*r = p->q[p->qhead].region;
		*page = p->q[p->qhead].page;
		p->qhead = (p->qhead + 1) % QLEN;
		p->qlen--;
		pthread_cond_broadcast(&p->cv);
		if (claim(src, *r, *page)) {
			pthread_mutex_unlock(&p->mu);
			*asked = true;
			return true;
		}
	}
	pthread_mutex_unlock(&p->mu);
	*asked = false;
	for (; p->cursor < s->nwords; p->cursor++) {
		uint64_t bits = atomic_load(&src->dirty[p->cursor]);

		if (!bits)
			continue;
		*r = s->word_region[p->cursor];
		*page = (p->cursor - s->reg[*r].word_base) * 64 + (uint64_t)__builtin_ctzll(bits);
		if (claim(src, *r, *page))
			return true;
		p->cursor--; /* a request took it: look at the word again */
	}
	return false;
}

/* One PAGE from the frozen guest memory; its checksum into the table. */
static int send_page(struct pc_push *p, unsigned r, uint64_t page, bool asked)
{
	struct source *src = p->src;
	struct pc_region *reg = &src->s->reg[r];
	uint8_t *pg = reg->addr + page * PRECOPY_PAGE_SIZE;
	uint8_t hdr[PC_WIRE_HDR + 24];
	struct iovec v[2] = { { hdr, sizeof(hdr) }, { pg, PRECOPY_PAGE_SIZE } };

	reg->hash[page] = pc_page_hash(pg);
	pc_wire_enc_page_hdr(hdr, sizeof(hdr), r, page, reg->hash[page],
			     asked ? PC_WIRE_PAGE_REQUESTED : 0);
	if (asked)
		p->requested++;
	else
		p->pushed++;
	p->left--;
	return pc_tp_send_msg(src->tp, 0, v, 2);
}

/* The postcopy figures into the stats; @done: every page is sent. */
static void push_stats(struct pc_push *p, uint64_t t0, bool done)
{
	struct precopy_session *s = p->src->s;

	pthread_mutex_lock(&p->mu);
	pthread_mutex_lock(&s->lock);
	s->st.postcopy_requests = p->requests;
	s->st.postcopy_pages_requested = p->requested;
	s->st.postcopy_pages_pushed = p->pushed;
	s->st.remaining = p->left * PRECOPY_PAGE_SIZE;
	if (done) { /* at least 1: done */
		uint64_t ms = (pc_now() - t0) / PC_NSEC_PER_MSEC;

		s->st.postcopy_time = ms ? ms : 1;
	}
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_unlock(&p->mu);
}

/* Every pending page, asked-for ones first; then COMPLETE. */
static int push_all(struct pc_push *p)
{
	struct source *src = p->src;
	struct precopy_session *s = src->s;
	uint64_t t0 = pc_now(), last = t0;
	unsigned r;
	uint64_t page;
	bool asked;
	int err = 0;

	while (!err && next_page(p, &r, &page, &asked)) {
		err = send_page(p, r, page, asked);
		if (!err && pc_now() - last >= 100 * PC_NSEC_PER_MSEC) {
			last = pc_now();
			push_stats(p, t0, false);
			pc_progress(s);
		}
		pthread_mutex_lock(&p->mu);
		if (p->ended && p->err)
			err = p->err;
		pthread_mutex_unlock(&p->mu);
	}
	push_stats(p, t0, !err);
	if (err)
		return p->err ? p->err : pc_fail(s, err, "postcopy: sending pages: %s" AFTER_GO,
						  pc_err_context(s, err));
	pthread_mutex_lock(&s->lock);
	s->st.normal += p->requested + p->pushed;
	s->st.normal_bytes += (p->requested + p->pushed) * PRECOPY_PAGE_SIZE;
	s->st.transferred += (p->requested + p->pushed) * (uint64_t)PC_WIRE_PAGE_LEN;
	pthread_mutex_unlock(&s->lock);
	return pc_src_send_complete(src);
}

/* POSTCOPY records: every pending page as ranges; the count in *@total. */
static int send_missing(struct source *src, uint64_t *total)
{
	struct precopy_session *s = src->s;
	uint8_t *msg = src->snd[0].msg;
	uint32_t n = 0;
	int err = 0;

	pc_wire_enc_postcopy_hdr(msg, PC_WIRE_MSG_MAX);
	*total = 0;
	for (unsigned i = 0; i < s->nreg && !err; i++) {
		struct pc_region *reg = &s->reg[i];

		for (uint64_t pg = 0; pg < reg->npages && !err;) {
			uint64_t w = reg->word_base + pg / 64, first;

			if (!(atomic_load(&src->dirty[w]) >> (pg % 64) & 1)) {
				pg++;
				continue;
			}
			first = pg;
			while (pg < reg->npages &&
			       (atomic_load(&src->dirty[reg->word_base + pg / 64]) >> (pg % 64) & 1))
				pg++;
			pc_wire_put_run(msg, n++, &(struct pc_wire_run){ i, 0, first, pg - first });
			*total += pg - first;
			if (n == PC_WIRE_RUNS_MAX) {
				err = pc_src_send_encoded(src, msg,
							  (int)pc_wire_finish_postcopy(msg, n, 0),
							  "POSTCOPY", "postcopy: %s");
				pc_wire_enc_postcopy_hdr(msg, PC_WIRE_MSG_MAX);
				n = 0;
			}
		}
	}
	if (!err)
		err = pc_src_send_encoded(src, msg,
					  (int)pc_wire_finish_postcopy(msg, n, PC_WIRE_POSTCOPY_LAST),
					  "POSTCOPY", "postcopy: %s");
	return err;
}

/* Stop, device state, the missing set, the verdict and GO: the guest
 * runs at the destination once this returns 0. */
static int hand_over(struct source *src, uint64_t *missing)
{
	struct precopy_session *s = src->s;
	uint64_t t_stop;
	int err;

	err = pc_src_stop_and_sync(src, &t_stop);
	if (!err)
		err = pc_src_send_device_state(src);
	if (!err)
		err = send_missing(src, missing);
	/* Until GO the destination does not resume the guest: a refusal or a
	 * lost verdict makes this end the one that runs (pc_src_failed()). */
	if (!err)
		err = pc_src_verdict_and_go(src);
	if (!err) { /* the guest runs there: the pause is over */
		pthread_mutex_lock(&s->lock);
		s->st.postcopy = true;
		s->st.downtime = (pc_now() - t_stop) / PC_NSEC_PER_MSEC;
		s->st.remaining = *missing * PRECOPY_PAGE_SIZE;
		pthread_mutex_unlock(&s->lock);
		pc_progress(s);
	}
	return err;
}

int pc_src_postcopy(struct source *src, unsigned iter)
{
	struct precopy_session *s = src->s;
	struct pc_push *p;
	pthread_t reader;
	int err;

	p = calloc(1, sizeof(*p));
	if (!p)
		return pc_fail(s, -ENOMEM, "out of memory");
	p->src = src;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	err = hand_over(src, &p->left);
	if (!err) {
		/* GO was answered: the guest runs there, never again here */
		src->unconfirmed = true;
		if (pthread_create(&reader, NULL, reader_main, p))
			err = pc_fail(s, -EAGAIN, "cannot start the postcopy reader");
	}
	if (!err) {
		err = push_all(p);
		pthread_mutex_lock(&p->mu);
		while (!err && !p->ended)
			pthread_cond_wait(&p->cv, &p->mu);
		if (!err)
			err = p->err;
		pthread_mutex_unlock(&p->mu);
		if (!err && p->status)
			err = pc_fail(s, p->status, "postcopy: the destination failed: %s" AFTER_GO,
				     p->text);
		if (err)
			pc_tp_abort(src->tp); /* wake the reader */
		pthread_join(reader, NULL);
	}
	/* After GO nothing undoes the handover: the guest is left stopped
	 * here (pc_src_failed()), the one failure that says so. */
	if (err && src->unconfirmed)
		err = -ENOTRECOVERABLE;
	if (!err) {
		uint64_t ns;

		pthread_mutex_lock(&src->plock);
		ns = src->pol.expected_downtime_ns;
		pthread_mutex_unlock(&src->plock);
		pthread_mutex_lock(&s->lock);
		s->st.iteration = iter + 1;
		/* forced by the watchdog: what a precopy switchover was expected
		 * to pause, and what postcopy's did */
		s->st.forced_switchover = true;
		s->st.forced_expected_downtime = ns == UINT64_MAX ? UINT64_MAX
								  : ns / PC_NSEC_PER_MSEC;
		s->st.forced_downtime = s->st.downtime;
		pthread_mutex_unlock(&s->lock);
	}
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p);
	return err;
}

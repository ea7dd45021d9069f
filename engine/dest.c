/* SPDX-License-Identifier: MIT */
/*
 * dest.c - the receiving end.
 *
 * Everything that arrives is untrusted. The caller's thread reads channel
 * 0 (control and its share of pages); one thread per further channel
 * reads the others. Page contents are placed by the transport; RUNS
 * records then say which pages of the pass are in place: data pages are
 * checksummed from memory, zero and free pages are made zero. When every
 * channel has reached the end of a pass, ITER_ACK goes back. COMPLETE
 * carries the source's checksum of every region; only if all match, and
 * the device state loaded, is the guest resumed and success reported.
 *
 * The fence: a receiver that has ended a pass reads nothing more until
 * the pass is acknowledged, and one of channel 1.. also not until channel
 * 0 has begun the next pass (see park()), so when COMPLETE
 * comes (after the last pass, on channel 0) every other receiver is
 * parked outside the transport. COMPLETE fences them and joins them
 * before anything is verified: no byte lands through them afterwards,
 * and whatever they placed is behind the checksums compared. A page run
 * the CPU placed after its page's checksum was taken (the transport
 * tells us through tp->placed), and not listed again, fails the verdict.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dest.h"
#include "page.h"
#include "postcopy_dst.h"

static void set_err(struct dest *d, int err)
{
	int none = 0;

	if (atomic_compare_exchange_strong(&d->err, &none, err))
		pc_tp_abort(d->tp);
	pthread_mutex_lock(&d->mu); /* wake the parked */
	pthread_cond_broadcast(&d->cv);
	pthread_mutex_unlock(&d->mu);
}

static int send_rec(struct dest *d, const uint8_t *buf, int n)
{
	struct iovec v = { (void *)buf, (size_t)n };

	if (n < 0)
		return n;
	return pc_tp_send_msg(d->tp, 0, &v, 1);
}

static int cmp_run(const void *a, const void *b)
{
	const struct pc_wire_run *x = a, *y = b;

	if (x->region != y->region)
		return x->region < y->region ? -1 : 1;
	if (x->first_page != y->first_page)
		return x->first_page < y->first_page ? -1 : 1;
	return 0;
}

/* A page run landed (stream transports, on the receiving thread): its
 * pages are not covered by a checksum until a RUNS record lists them. */
static void on_placed(void *arg, unsigned chan, uint32_t region, uint64_t off, uint64_t len)
{
	struct dest *d = arg;
	uint64_t first = off / PRECOPY_PAGE_SIZE, last;

	(void)chan;
	if (region >= d->s->nreg || len == 0 || !d->unlisted[region])
		return;
	last = (off + len - 1) / PRECOPY_PAGE_SIZE;
	if (last >= d->s->reg[region].npages)
		last = d->s->reg[region].npages - 1;
	for (uint64_t p = first; p <= last; p++)
		atomic_fetch_or(&d->unlisted[region][p / 64], 1ull << (p % 64));
}

/* Is the session over for this receiver: cancelled, or another failed? */
static int stopping(struct dest *d)
{
	if (atomic_load(&d->s->cancel))
		return -ECANCELED;
	return atomic_load(&d->err);
}

/*
 * Check a RUNS record before any page is touched: its pass is the one
 * acknowledged last, every run lies inside its region, and no two runs
 * share a page, so one record can make us read at most every page once.
 */
static int check_runs(struct receiver *rc, const struct pc_wire_msg *m)
{
	struct dest *d = rc->d;
	struct precopy_session *s = d->s;
	uint32_t acked;

	pthread_mutex_lock(&d->mu);
	acked = d->acked;
	if (rc->chan == 0 && m->u.runs.iteration == rc->iteration &&
	    acked == rc->iteration && d->ch0_begun < rc->iteration + 1) {
		d->ch0_begun = rc->iteration + 1;
		pthread_cond_broadcast(&d->cv);
	}
	pthread_mutex_unlock(&d->mu);
	if (m->u.runs.iteration != rc->iteration)
		return pc_fail(s, -EPROTO,
			       "malformed stream: RUNS of pass %u on channel %u during pass %u",
			       m->u.runs.iteration, rc->chan, rc->iteration);
	if (acked != rc->iteration)
		return pc_fail(s, -EPROTO,
			       "malformed stream: RUNS of pass %u on channel %u before pass %u was acknowledged",
			       m->u.runs.iteration, rc->chan, rc->iteration ? rc->iteration - 1 : 0);
	for (uint32_t i = 0; i < m->u.runs.count; i++) {
		struct pc_wire_run *r = &rc->runs[i];
		struct pc_region *reg;

		pc_wire_get_run(m->u.runs.entries, i, r);
		if (r->region >= s->nreg)
			return pc_fail(s, -EPROTO, "malformed stream: run for region %u of %u",
				       r->region, s->nreg);
		reg = &s->reg[r->region];
		if (r->first_page >= reg->npages || r->npages > reg->npages - r->first_page)
			return pc_fail(s, -EPROTO,
				       "malformed stream: pages [%llu, +%llu) outside region %u of %llu pages",
				       (unsigned long long)r->first_page,
				       (unsigned long long)r->npages, r->region,
				       (unsigned long long)reg->npages);
	}
	qsort(rc->runs, m->u.runs.count, sizeof(rc->runs[0]), cmp_run);
	for (uint32_t i = 1; i < m->u.runs.count; i++) {
		const struct pc_wire_run *a = &rc->runs[i - 1], *b = &rc->runs[i];

		if (a->region == b->region && b->first_page - a->first_page < a->npages)
			return pc_fail(s, -EPROTO,
				       "malformed stream: runs of one RUNS record overlap at page %llu of region %u",
				       (unsigned long long)b->first_page, b->region);
	}
	return 0;
}

static int handle_runs(struct receiver *rc, const struct pc_wire_msg *m)
{
	struct dest *d = rc->d;
	struct precopy_session *s = d->s;
	uint64_t data = 0, zero = 0, n = 0;
	int err = check_runs(rc, m);

	if (err)
		return err;
	for (uint32_t i = 0; i < m->u.runs.count; i++) {
		const struct pc_wire_run *r = &rc->runs[i];
		struct pc_region *reg = &s->reg[r->region];
		_Atomic uint64_t *ul = d->unlisted[r->region];

		for (uint64_t p = r->first_page; p < r->first_page + r->npages; p++) {
			uint8_t *pg = reg->addr + p * PRECOPY_PAGE_SIZE;

			/* A whole region can be one run: stay cancellable. */
			if (++n % 1024 == 0 && (err = stopping(d)))
				return err;
			/* Cleared before the page is read: a run placed
			 * meanwhile sets it again. */
			if (ul && atomic_load_explicit(&ul[p / 64], memory_order_relaxed))
				atomic_fetch_and(&ul[p / 64], ~(1ull << (p % 64)));
			if (r->kind == PC_RUN_DATA) {
				reg->hash[p] = pc_page_hash(pg);
				data++;
			} else {
				if (!pc_page_is_zero(pg))
					memset(pg, 0, PRECOPY_PAGE_SIZE);
				reg->hash[p] = d->zero_hash;
				zero++;
			}
		}
	}
	pthread_mutex_lock(&s->lock);
	s->st.normal += data;
	s->st.normal_bytes += data * PRECOPY_PAGE_SIZE;
	s->st.duplicate += zero;
	s->st.transferred += data * PRECOPY_PAGE_SIZE + 8 + m->u.runs.count * PC_WIRE_RUN_SIZE;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static int handle_iter_end(struct receiver *rc, const struct pc_wire_msg *m)
{
	struct dest *d = rc->d;
	struct precopy_session *s = d->s;
	uint8_t ack[PC_WIRE_HDR + 4];
	bool all = false;
	uint32_t it = rc->iteration;
	int err = 0;

	if (m->u.iter_end.iteration != it || m->u.iter_end.channel != rc->chan)
		return pc_fail(s, -EPROTO,
			       "malformed stream: ITER_END %u/%u on channel %u in pass %u",
			       m->u.iter_end.iteration, m->u.iter_end.channel, rc->chan, it);
	pthread_mutex_lock(&d->mu);
	/* Every channel ends pass @it once, and only after pass @it - 1 was
	 * acknowledged (the source starts a pass only then): one channel
	 * cannot end passes for the others. */
	if (d->acked != it) {
		pthread_mutex_unlock(&d->mu);
		return pc_fail(s, -EPROTO,
			       "malformed stream: ITER_END of pass %u on channel %u before pass %u was acknowledged",
			       it, rc->chan, it ? it - 1 : 0);
	}
	if (rc->chan == 0 && d->ch0_begun < it + 1)
		d->ch0_begun = it + 1;
	rc->parked = true; /* until pass it is acknowledged (and see park()) */
	if (++d->at_end == d->nchan) {
		d->at_end = 0;
		d->acked = it + 1;
		all = true;
		err = send_rec(d, ack, pc_wire_enc_iter_ack(ack, sizeof(ack), it));
	}
	pthread_cond_broadcast(&d->cv);
	pthread_mutex_unlock(&d->mu);
	rc->iteration++;
	if (err)
		return pc_fail(s, err, "sending ITER_ACK: %s", pc_err_context(s, err));
	if (all) {
		pthread_mutex_lock(&s->lock);
		s->st.iteration = it;
		s->st.dirty_sync_count++;
		pthread_mutex_unlock(&s->lock);
		if (it == 0)
			pc_set_status(s, PRECOPY_STATUS_ITERATE);
		else
			pc_progress(s);
	}
	return 0;
}

static int handle_devstate(struct dest *d, const struct pc_wire_msg *m)
{
	struct precopy_session *s = d->s;

	if (!d->devstate_seen) {
		d->devstate_seen = true;
		d->devstate_total = m->u.devstate.total;
		d->devstate = malloc(d->devstate_total ? d->devstate_total : 1);
		if (!d->devstate)
			return pc_fail(s, -ENOMEM, "no memory for %llu bytes of device state",
				       (unsigned long long)d->devstate_total);
		pc_set_status(s, PRECOPY_STATUS_SWITCHOVER);
	}
	if (m->u.devstate.total != d->devstate_total || m->u.devstate.offset != d->devstate_have)
		return pc_fail(s, -EPROTO,
			       "malformed stream: device state piece at %llu of %llu, expected %llu of %llu",
			       (unsigned long long)m->u.devstate.offset,
			       (unsigned long long)m->u.devstate.total,
			       (unsigned long long)d->devstate_have,
			       (unsigned long long)d->devstate_total);
	memcpy(d->devstate + d->devstate_have, m->u.devstate.data, m->u.devstate.len);
	d->devstate_have += m->u.devstate.len;
	return 0;
}

/*
 * The last moment a cancel at the destination can still win: after GO,
 * the guest is resumed only if nobody cancelled first, and from here on
 * precopy_cancel() is refused (-EBUSY), as at the source once GO is on its
 * way. A cancel that wins leaves the guest stopped here; the source, told
 * nothing more, leaves its own stopped too and says so (-ENOTRECOVERABLE).
 */
static int commit(struct dest *d, char *text, size_t len)
{
	struct precopy_session *s = d->s;
	int status = 0;

	pthread_mutex_lock(&s->lock);
	if (atomic_load(&s->cancel)) {
		status = -ECANCELED;
		snprintf(text, len, "cancelled at the destination before the guest was resumed");
	} else {
		atomic_store(&s->committed, true);
	}
	pthread_mutex_unlock(&s->lock);
	return status;
}

/*
 * The end, once COMPLETE has been checked: @status 0 if every page is
 * verified (or mapped) and device state is loaded, else why not in @text.
 * In three steps, so that the guest never runs at both ends: the verdict
 * goes to the source; only if it was good and the source answers GO (it
 * will not resume the guest itself, whatever happens next) is the guest
 * resumed here, and the source is told whether that worked. If the
 * connection is lost or the source gives up before GO, the guest is not
 * resumed here: the source resumes its own.
 */
int pc_dest_conclude(struct dest *d, int status, char *text, size_t tlen)
{
	static const struct pc_expect go = {
		.type = PC_MSG_GO,
		.lost = "connection to the source lost before it handed the guest over: %s; the guest was not resumed",
		.malformed = "malformed stream after the verdict: %s; the guest was not resumed",
		.gave_up = "source gave up after the verdict: %s",
		.other = "malformed stream: %s after the verdict, expected GO; the guest was not resumed",
		.quiet_cancel = true,
		.msgsize_proto = true,
	};
	struct precopy_session *s = d->s;
	uint8_t buf[PC_WIRE_HDR + 8 + PC_WIRE_TEXT_MAX];
	struct pc_wire_msg m;
	int err;

	err = send_rec(d, buf, pc_wire_enc_result(buf, sizeof(buf), PC_MSG_RESULT, status, text));
	if (status)
		return pc_fail(s, status, "%s", text);
	if (err)
		return pc_fail(s, err, "sending the verdict: %s; the guest was not resumed",
			       pc_err_context(s, err));
	err = pc_recv_expect(s, 0, d->rcv[0].buf, PC_WIRE_MSG_MAX, &go, &m, NULL, 0);
	if (err)
		return err;
	status = commit(d, text, tlen);
	if (!status && s->cb.resume_vm) {
		err = s->cb.resume_vm(s->cb.opaque);
		if (err) {
			status = err;
			snprintf(text, tlen, "resume_vm failed: %s", strerror(-err));
		}
	}
	/* Before the answer: once the source has it, it closes every
	 * channel, and the other receivers must take that as the end. */
	if (!status)
		atomic_store(&d->finished, true);
	err = send_rec(d, buf, pc_wire_enc_result(buf, sizeof(buf), PC_MSG_RESULT, status, text));
	if (status)
		return pc_fail(s, status, "%s", text);
	/* A lost answer does not undo success here: the guest runs; the
	 * source, not knowing, leaves its own stopped. */
	(void)err;
	return 0;
}

/* Hand the device state to the VMM: 0, or its error and why in @text. */
int pc_dest_load_devstate(struct dest *d, char *text, size_t tlen)
{
	struct precopy_session *s = d->s;
	int err;

	if (!s->cb.load_device_state)
		return 0;
	err = s->cb.load_device_state(s->cb.opaque, d->devstate ? d->devstate : (void *)"",
				      (size_t)d->devstate_have);
	if (err)
		snprintf(text, tlen, "load_device_state failed: %s", strerror(-err));
	return err;
}

/* The first page of region @i placed since its checksum, or npages. */
uint64_t pc_dest_first_unlisted(struct dest *d, unsigned i)
{
	uint64_t words = (d->s->reg[i].npages + 63) / 64;

	for (uint64_t w = 0; d->unlisted[i] && w < words; w++) {
		uint64_t v = atomic_load(&d->unlisted[i][w]);

		if (v)
			return w * 64 + (uint64_t)__builtin_ctzll(v);
	}
	return d->s->reg[i].npages;
}

/*
 * The source says it has written everything: from here on nothing more
 * may land in our memory. Revoke the peer's access (RDMA keys
 * deregistered, stream page runs refused) before the memory is verified
 * and long before the guest can start; stop and join the receivers of
 * channels 1.. (@what names the record that came). Return: 0, or
 * -EPROTO with why in @text.
 */
int pc_dest_fence(struct dest *d, const char *what, char *text, size_t tlen)
{
	struct precopy_session *s = d->s;
	unsigned busy = 0;
	int status = 0;

	pc_tp_unexpose_all(d->tp);
	pthread_mutex_lock(&d->mu);
	/* The fence: a parked receiver ends without reading another byte. */
	d->fenced = true;
	pthread_cond_broadcast(&d->cv);
	for (unsigned c = 1; c < d->nchan; c++)
		if (!d->rcv[c].parked)
			busy = c;
	/* Every pass ends on every channel before COMPLETE, and a source
	 * sends at least the bulk pass and the switchover pass. */
	if (d->acked == 0 || d->acked != d->rcv[0].iteration || d->at_end || busy)
		status = -EPROTO;
	pthread_mutex_unlock(&d->mu);
	/* Join them, so nothing they placed can change after the checksums
	 * are compared. A receiver still in the transport (busy) is woken
	 * and joined at the end, before pc_dest_run() returns; the verdict
	 * fails meanwhile. */
	for (unsigned c = 1; !busy && c < d->nchan; c++) {
		if (d->rcv[c].started)
			pthread_join(d->rcv[c].thread, NULL);
		d->rcv[c].started = false;
	}
	pc_set_status(s, PRECOPY_STATUS_SWITCHOVER);
	if (busy) {
		snprintf(text, tlen, "%s while channel %u was still receiving", what, busy);
	} else if (status) {
		snprintf(text, tlen, "%s before every channel finished its pass", what);
	}
	return status;
}

/* COMPLETE: verify everything, load device state, start the guest. */
static int handle_complete(struct dest *d, const struct pc_wire_msg *m)
{
	struct precopy_session *s = d->s;
	char text[PC_WIRE_TEXT_MAX + 1] = "";
	int status = pc_dest_fence(d, "COMPLETE", text, sizeof(text));
	uint64_t p;

	if (status) {
		/* said why */
	} else if (m->u.complete.nregions != s->nreg) {
		status = -EPROTO;
		snprintf(text, sizeof(text), "COMPLETE for %u regions, %u registered",
			 m->u.complete.nregions, s->nreg);
	} else if (d->devstate_seen && d->devstate_have != d->devstate_total) {
		status = -EPROTO;
		snprintf(text, sizeof(text), "device state incomplete: %llu of %llu bytes",
			 (unsigned long long)d->devstate_have,
			 (unsigned long long)d->devstate_total);
	}
	for (unsigned i = 0; !status && i < s->nreg; i++) {
		struct pc_region *r = &s->reg[i];

		if (m->u.complete.npages[i] != r->npages) {
			status = -EPROTO;
			snprintf(text, sizeof(text), "region %u: %llu pages at the source, %llu here",
				 i, (unsigned long long)m->u.complete.npages[i],
				 (unsigned long long)r->npages);
		} else if ((p = pc_dest_first_unlisted(d, i)) < r->npages) {
			status = -EBADMSG;
			snprintf(text, sizeof(text),
				 "region %u: page %llu was written after its checksum was taken",
				 i, (unsigned long long)p);
		} else if (pc_hash_combine(r->hash, r->npages) != m->u.complete.hash[i]) {
			status = -EBADMSG;
			snprintf(text, sizeof(text),
				 "region %u: checksum mismatch, memory differs from the source", i);
		}
	}
	if (!status)
		status = pc_dest_load_devstate(d, text, sizeof(text));
	return pc_dest_conclude(d, status, text, sizeof(text));
}

/*
 * After channel @rc ended pass rc->iteration - 1: read nothing more until
 * that pass was acknowledged (every channel ended it; a source starts the
 * next pass only then, so this waits only when records come faster than
 * the protocol allows, as in a replayed recording). Channels 1.. also wait
 * until channel 0 has begun the next pass, so that pass exists: after the
 * last one they are parked outside the transport when COMPLETE comes.
 * Return 0 to read on; 1 when COMPLETE (the fence) or the end came
 * instead; a negative errno when the session failed or was cancelled.
 */
static int park(struct receiver *rc)
{
	struct dest *d = rc->d;
	uint32_t it = rc->iteration; /* the pass to read next */
	int ret = 0;

	pthread_mutex_lock(&d->mu);
	for (;;) {
		struct timespec ts;

		if (d->fenced || d->stop) {
			ret = 1;
			break;
		}
		if ((ret = stopping(d)))
			break;
		if (d->acked >= it && (rc->chan == 0 || d->ch0_begun > it)) {
			rc->parked = false;
			break;
		}
		/* a cancel does not signal: look at it now and then */
		pc_deadline(&ts, CLOCK_MONOTONIC, 100 * PC_NSEC_PER_MSEC);
		pthread_cond_timedwait(&d->cv, &d->mu, &ts);
	}
	pthread_mutex_unlock(&d->mu);
	return ret;
}

static int handle(struct receiver *rc, const uint8_t *buf, size_t len)
{
	struct dest *d = rc->d;
	struct precopy_session *s = d->s;
	struct pc_wire_msg m;
	char why[160];
	int err = pc_wire_decode(buf, len, &m, why, sizeof(why));

	if (err)
		return pc_fail(s, err, "malformed stream on channel %u: %s", rc->chan, why);
	if (d->in_postcopy && m.type != PC_MSG_POSTCOPY)
		return pc_fail(s, -EPROTO, "malformed stream: %s among the POSTCOPY records",
			       pc_wire_type_name(m.type));
	switch (m.type) {
	case PC_MSG_RUNS:
		return handle_runs(rc, &m);
	case PC_MSG_ITER_END:
		err = handle_iter_end(rc, &m);
		return err ? err : park(rc);
	case PC_MSG_DEVICE_STATE:
		if (rc->chan == 0)
			return handle_devstate(d, &m);
		break;
	case PC_MSG_COMPLETE:
		if (rc->chan == 0) {
			err = handle_complete(d, &m);
			return err ? err : 1;
		}
		break;
	case PC_MSG_POSTCOPY:
		if (rc->chan == 0 && d->pc)
			return pc_dest_postcopy(d, &m);
		break;
	case PC_MSG_ERROR:
		if (rc->chan == 0)
			return pc_fail(s, m.u.result.status ? m.u.result.status : -EIO,
				       "source gave up: %s", m.u.result.text);
		break;
	default:
		break;
	}
	return pc_fail(s, -EPROTO, "malformed stream: unexpected %s on channel %u",
		       pc_wire_type_name(m.type), rc->chan);
}

/* Read and handle records until COMPLETE (1), an error (< 0). */
static int receive(struct receiver *rc)
{
	struct dest *d = rc->d;
	struct precopy_session *s = d->s;

	for (;;) {
		size_t len;
		int err = pc_tp_recv_msg(d->tp, rc->chan, rc->buf, PC_WIRE_MSG_MAX, &len);

		if (err) {
			if (atomic_load(&d->finished))
				return 1;
			if (err == -ECANCELED || atomic_load(&s->cancel))
				return -ECANCELED;
			if (atomic_load(&d->err))
				return atomic_load(&d->err);
			return pc_fail(s, err == -EMSGSIZE ? -EPROTO : err,
				       "%s on channel %u: %s",
				       err == -EPROTO || err == -EMSGSIZE ? "malformed stream"
									  : "connection to the source lost",
				       rc->chan, pc_err_context(s, err));
		}
		err = handle(rc, rc->buf, len);
		if (err)
			return err;
	}
}

/* receive(), counting the page faults this thread takes meanwhile into
 * the stats: with the regions populated there should be none. */
static int receive_counted(struct receiver *rc)
{
	struct precopy_session *s = rc->d->s;
	uint64_t f0 = pc_thread_faults();
	int err = receive(rc);
	uint64_t f = pc_thread_faults() - f0;

	pthread_mutex_lock(&s->lock);
	s->st.page_faults += f;
	pthread_mutex_unlock(&s->lock);
	return err;
}

static void *receiver_main(void *arg)
{
	struct receiver *rc = arg;
	int err = receive_counted(rc);

	if (err < 0)
		set_err(rc->d, err);
	return NULL;
}

static int handshake(struct dest *d)
{
	static const struct pc_expect hello = {
		.type = PC_MSG_HELLO,
		.lost = "handshake: %s",
		.msgsize_proto = true,
	};
	struct precopy_session *s = d->s;
	uint8_t ack[PC_WIRE_HDR + 24 + PC_WIRE_TEXT_MAX];
	char why[160] = "", text[PC_WIRE_TEXT_MAX + 1] = "";
	struct pc_wire_msg m;
	int status = 0, err;

	err = pc_recv_expect(s, 0, d->rcv[0].buf, PC_WIRE_MSG_MAX, &hello, &m, why, sizeof(why));
	if (err < 0 && !why[0])
		return err; /* the transport failed */
	if (err > 0) {
		err = -EPROTO;
		snprintf(why, sizeof(why), "expected HELLO, got %s", pc_wire_type_name(m.type));
	}
	if (err) {
		snprintf(text, sizeof(text), "%s", why);
		send_rec(d, ack, pc_wire_enc_hello_ack(ack, sizeof(ack), 0, err, text));
		return pc_fail(s, err, "malformed stream: %s", why);
	}
	if (m.u.hello.page_size != PRECOPY_PAGE_SIZE) {
		status = -EPROTO;
		snprintf(text, sizeof(text), "page size %u, expected %u", m.u.hello.page_size,
			 PRECOPY_PAGE_SIZE);
	} else if (m.u.hello.nregions != s->nreg) {
		status = -EINVAL;
		snprintf(text, sizeof(text), "source has %u regions, destination %u",
			 m.u.hello.nregions, s->nreg);
	} else if (m.u.hello.channels != d->tp->nchan) {
		status = -EPROTO;
		snprintf(text, sizeof(text), "HELLO says %u channels, %u connected",
			 m.u.hello.channels, d->tp->nchan);
	} else if ((m.u.hello.caps & PC_CAP_REQUIRED) != PC_CAP_REQUIRED) {
		status = -EPROTO;
		snprintf(text, sizeof(text), "source lacks required capabilities");
	}
	for (unsigned i = 0; !status && i < s->nreg; i++) {
		if (m.u.hello.region_len[i] != s->reg[i].len) {
			status = -EINVAL;
			snprintf(text, sizeof(text),
				 "region %u is %llu bytes at the source, %zu here", i,
				 (unsigned long long)m.u.hello.region_len[i], s->reg[i].len);
		}
	}
	if (!status && (m.u.hello.caps & PC_CAP_POSTCOPY))
		status = pc_dest_postcopy_possible(d, text, sizeof(text));
	if (!status && (m.u.hello.caps & PC_CAP_HANDOFF) && (d->tp->ops->caps & PC_TCAP_FD_PASS))
		d->handoff = true; /* the source's memfds replace our regions */
	for (unsigned i = 0; !status && !d->handoff && i < s->nreg; i++) {
		err = -EOPNOTSUPP;
		if (s->reg[i].fd >= 0) /* shared: the source writes straight into it */
			err = pc_tp_expose_region_fd(d->tp, i, s->reg[i].addr, s->reg[i].len,
						     s->reg[i].fd, s->reg[i].fd_offset);
		if (err == -EOPNOTSUPP)
			err = pc_tp_expose_region(d->tp, i, s->reg[i].addr, s->reg[i].len);
		if (err) {
			status = err;
			snprintf(text, sizeof(text), "cannot expose region %u: %s", i,
				 strerror(-err));
		}
	}
	err = send_rec(d, ack, pc_wire_enc_hello_ack(ack, sizeof(ack),
						     (m.u.hello.caps & PC_CAP_ALL) |
							     (d->handoff ? PC_CAP_HANDOFF : 0) |
							     (d->pc ? PC_CAP_POSTCOPY : 0),
						     status, text));
	if (status)
		return pc_fail(s, status, "refused the source: %s", text);
	if (err)
		return pc_fail(s, err, "handshake: %s", pc_err_context(s, err));
	return 0;
}

/* --- handoff: map the source's memfds over our regions ------------------ */

/* Put plain anonymous memory back over regions [0, n) after a failure, so
 * nothing of the source's RAM stays mapped here. */
static void unmap_handed(struct dest *d, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		mmap(d->s->reg[i].addr, d->s->reg[i].len, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
}

/*
 * COMPLETE of a handoff: every region's fd has come, is a regular file big
 * enough (fstat: size >= offset + length) and maps at the region's own
 * address (MAP_SHARED | MAP_FIXED over what was registered). There is no
 * checksum: these are the source's pages themselves. Then device state,
 * resume, RESULT.
 */
static int handoff_complete(struct dest *d, const struct pc_wire_msg *m, const int *fds,
			    const uint64_t *offs)
{
	struct precopy_session *s = d->s;
	unsigned mapped = 0;
	char text[PC_WIRE_TEXT_MAX + 1] = "";
	int status = 0, err;

	pc_set_status(s, PRECOPY_STATUS_SWITCHOVER);
	if (m->u.complete.nregions != s->nreg) {
		status = -EPROTO;
		snprintf(text, sizeof(text), "COMPLETE for %u regions, %u registered",
			 m->u.complete.nregions, s->nreg);
	} else if (d->devstate_seen && d->devstate_have != d->devstate_total) {
		status = -EPROTO;
		snprintf(text, sizeof(text), "device state incomplete");
	}
	for (unsigned i = 0; !status && i < s->nreg; i++) {
		struct pc_region *r = &s->reg[i];
		struct stat st;

		if (fds[i] < 0 || m->u.complete.npages[i] != r->npages) {
			status = -EPROTO;
			snprintf(text, sizeof(text), "region %u was not handed over whole", i);
		} else if (fstat(fds[i], &st) < 0 || !S_ISREG(st.st_mode) ||
			   (uint64_t)st.st_size < offs[i] + r->len) {
			status = -EINVAL;
			snprintf(text, sizeof(text),
				 "region %u: the fd is not a file of at least %llu bytes", i,
				 (unsigned long long)(offs[i] + r->len));
		}
	}
	for (unsigned i = 0; !status && i < s->nreg; i++, mapped++) {
		struct pc_region *r = &s->reg[i];

		if (mmap(r->addr, r->len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fds[i],
			 (off_t)offs[i]) == MAP_FAILED) {
			status = -errno;
			snprintf(text, sizeof(text), "mapping region %u: %s", i, strerror(errno));
		}
	}
	if (!status)
		status = pc_dest_load_devstate(d, text, sizeof(text));
	if (status)
		unmap_handed(d, mapped);
	err = pc_dest_conclude(d, status, text, sizeof(text));
	if (err) {
		if (!status)
			unmap_handed(d, mapped);
		return err;
	}
	pthread_mutex_lock(&s->lock);
	s->st.remaining = 0;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* The destination's side of a handoff: HANDOFF records with their fds,
 * device state, COMPLETE; all on channel 0. */
static int receive_handoff(struct dest *d)
{
	struct precopy_session *s = d->s;
	int fds[PRECOPY_MAX_REGIONS];
	uint64_t offs[PRECOPY_MAX_REGIONS] = { 0 };
	int err = 0;

	for (unsigned i = 0; i < PRECOPY_MAX_REGIONS; i++)
		fds[i] = -1;
	pc_set_status(s, PRECOPY_STATUS_SWITCHOVER);
	for (;;) {
		struct pc_wire_msg m;
		char why[160];
		size_t len;
		unsigned nfds = 0;
		int fd = -1;

		err = pc_tp_recv_fds(d->tp, 0, d->rcv[0].buf, PC_WIRE_MSG_MAX, &len, &fd, 1, &nfds);
		if (err) {
			if (err == -ECANCELED || atomic_load(&s->cancel))
				err = -ECANCELED;
			else
				err = pc_fail(s, err == -EMSGSIZE ? -EPROTO : err,
					      "handoff: %s", pc_err_context(s, err));
			break;
		}
		err = pc_wire_decode(d->rcv[0].buf, len, &m, why, sizeof(why));
		if (err) {
			err = pc_fail(s, err, "malformed stream in handoff: %s", why);
		} else if (m.type == PC_MSG_HANDOFF) {
			struct pc_region *r = &s->reg[m.u.handoff.region < s->nreg ?
							      m.u.handoff.region : 0];

			if (nfds != 1 || m.u.handoff.region >= s->nreg ||
			    fds[m.u.handoff.region] >= 0 || m.u.handoff.len != r->len)
				err = pc_fail(s, -EPROTO,
					      "malformed stream: HANDOFF of region %u (%llu bytes, %u fds)",
					      m.u.handoff.region,
					      (unsigned long long)m.u.handoff.len, nfds);
			else {
				fds[m.u.handoff.region] = fd;
				offs[m.u.handoff.region] = m.u.handoff.offset;
				fd = -1;
			}
		} else if (nfds) {
			err = pc_fail(s, -EPROTO, "malformed stream: %s with a file descriptor",
				      pc_wire_type_name(m.type));
		} else if (m.type == PC_MSG_DEVICE_STATE) {
			err = handle_devstate(d, &m);
		} else if (m.type == PC_MSG_ERROR) {
			err = pc_fail(s, m.u.result.status ? m.u.result.status : -EIO,
				      "source gave up: %s", m.u.result.text);
		} else if (m.type == PC_MSG_COMPLETE) {
			err = handoff_complete(d, &m, fds, offs);
			break;
		} else {
			err = pc_fail(s, -EPROTO, "malformed stream: unexpected %s in a handoff",
				      pc_wire_type_name(m.type));
		}
		if (fd >= 0)
			close(fd);
		if (err)
			break;
	}
	for (unsigned i = 0; i < PRECOPY_MAX_REGIONS; i++)
		if (fds[i] >= 0)
			close(fds[i]); /* the mappings keep the memory */
	return err;
}

static int incoming(struct dest *d)
{
	struct precopy_session *s = d->s;
	char why[160] = "";
	struct precopy_params params;
	struct pc_transport_opts o = { .channels = 0, .timeout_ms = 0,
				       .key = s->key, .key_len = s->key_len,
				       .tls = s->have_tls ? &s->tls : NULL,
				       .why = why, .whylen = sizeof(why) };
	struct pc_transport *tp;
	int err;

	pc_params_snapshot(s, &params);
	o.timeout_ms = params.timeout_ms;
	pc_set_status(s, PRECOPY_STATUS_SETUP);
	if (atomic_load(&s->cancel))
		return -ECANCELED;
	err = pc_tp_accept(s->lst, &o, &tp);
	if (err)
		return err == -ECANCELED ? err
					 : pc_fail(s, err, "accept: %s", why[0] ? why : strerror(-err));
	pthread_mutex_lock(&s->lock);
	s->tp = tp;
	pthread_mutex_unlock(&s->lock);
	d->tp = tp;
	d->nchan = tp->nchan;
	if (atomic_load(&s->cancel))
		return -ECANCELED;
	for (unsigned c = 0; c < d->nchan; c++) {
		d->rcv[c].d = d;
		d->rcv[c].chan = c;
		d->rcv[c].buf = malloc(PC_WIRE_MSG_MAX);
		d->rcv[c].runs = malloc(PC_WIRE_RUNS_MAX * sizeof(struct pc_wire_run));
		if (!d->rcv[c].buf || !d->rcv[c].runs)
			return pc_fail(s, -ENOMEM, "out of memory");
		/* touched now, not on the receiving path (page_faults) */
		memset(d->rcv[c].buf, 0, PC_WIRE_MSG_MAX);
	}
	tp->placed_arg = d;
	tp->placed = tp->ops->caps & PC_TCAP_DIRECT_WRITE ? NULL : on_placed;
	err = handshake(d);
	if (err)
		return err;
	pthread_mutex_lock(&s->lock);
	s->st.setup_time = (pc_now() - s->t_start) / PC_NSEC_PER_MSEC;
	pthread_mutex_unlock(&s->lock);
	if (d->handoff)
		return receive_handoff(d);
	pc_set_status(s, PRECOPY_STATUS_BULK);

	for (unsigned c = 1; c < d->nchan; c++) {
		if (pthread_create(&d->rcv[c].thread, NULL, receiver_main, &d->rcv[c])) {
			set_err(d, -EAGAIN);
			return pc_fail(s, -EAGAIN, "cannot start a receiver thread");
		}
		d->rcv[c].started = true;
	}
	err = receive_counted(&d->rcv[0]);
	if (err < 0)
		set_err(d, err);
	return err < 0 ? err : 0;
}

int pc_dest_run(struct precopy_session *s)
{
	struct dest *d = calloc(1, sizeof(*d));
	pthread_condattr_t ca;
	int err;

	if (!d)
		return pc_fail(s, -ENOMEM, "out of memory");
	d->s = s;
	d->zero_hash = pc_zero_page_hash();
	atomic_init(&d->err, 0);
	atomic_init(&d->finished, false);
	pthread_mutex_init(&d->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&d->cv, &ca);
	pthread_condattr_destroy(&ca);
	d->ch0_begun = 1; /* pass 0 needs no beginning on channel 0 */
	for (unsigned i = 0; i < s->nreg; i++) {
		d->unlisted[i] = calloc((s->reg[i].npages + 63) / 64 + 1, sizeof(uint64_t));
		if (!d->unlisted[i]) {
			for (unsigned j = 0; j < i; j++)
				free(d->unlisted[j]);
			pthread_cond_destroy(&d->cv);
			pthread_mutex_destroy(&d->mu);
			free(d);
			return pc_fail(s, -ENOMEM, "out of memory");
		}
	}
	/* Pages never received must not pass as received. A big table takes
	 * a while: a cancel stops the fill (incoming() then sees it). */
	for (unsigned i = 0; i < s->nreg && !atomic_load(&s->cancel); i++)
		for (uint64_t p = 0; p < s->reg[i].npages; p++) {
			if (!(p & 0xfffff) && atomic_load(&s->cancel))
				break;
			s->reg[i].hash[p] = ~d->zero_hash;
		}

	err = incoming(d);
	if (d->tp) {
		/* Done or failed: wake the other receivers, then forget the
		 * regions so nothing more can be written into them. */
		pthread_mutex_lock(&d->mu);
		d->stop = true;
		pthread_cond_broadcast(&d->cv);
		pthread_mutex_unlock(&d->mu);
		pc_tp_abort(d->tp);
		for (unsigned c = 1; c < d->nchan; c++)
			if (d->rcv[c].started)
				pthread_join(d->rcv[c].thread, NULL);
		pc_tp_unexpose_all(d->tp);
	}
	if (!err && atomic_load(&d->err) && !atomic_load(&d->finished))
		err = atomic_load(&d->err);
	for (unsigned c = 0; c < PRECOPY_MAX_CHANNELS; c++) {
		free(d->rcv[c].buf);
		free(d->rcv[c].runs);
	}
	for (unsigned i = 0; i < s->nreg; i++)
		free(d->unlisted[i]);
	free(d->devstate);
	pc_dst_pc_free(d->pc);
	pthread_cond_destroy(&d->cv);
	pthread_mutex_destroy(&d->mu);
	free(d);
	return err;
}

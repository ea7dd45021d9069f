/* SPDX-License-Identifier: MIT */
/*
 * postcopy_dst.c - the destination in postcopy (see postcopy_dst.h).
 *
 * Two threads: the caller's reads channel 0 (PAGE records, then
 * COMPLETE) and places each page; a fault thread waits for the guest to
 * touch a missing page and sends one REQUEST per page. Each page is
 * hashed as it arrived, before it is placed (once placed, the running
 * guest may write it), and must match the checksum the source sent with
 * it; the table of checksums then holds, for every page, what the source
 * had, and COMPLETE compares each region's as precopy does.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dest.h"
#include "page.h"
#include "postcopy_dst.h"
#include "uffd_place.h"

/* A request waiting for its page: when it was sent, for the latency. */
struct asked {
	uint32_t region;
	uint64_t page, t;
};

struct pc_dst_pc {
	struct precopy_session *s;
	struct pc_transport *tp;
	struct pc_uffd_place *u;
	bool armed;
	/* per region: bit set = the page is not placed yet; written by the
	 * receiving thread, read by the fault thread */
	_Atomic uint64_t *missing[PRECOPY_MAX_REGIONS];
	_Atomic uint64_t *requested[PRECOPY_MAX_REGIONS];
	uint64_t left;           /* pages missing */
	uint64_t total;          /* pages listed by POSTCOPY */

	pthread_mutex_t mu;      /* the fields below */
	struct asked *out;       /* requests without their page yet */
	size_t nout, capout;
	uint64_t *lat;           /* ns, one per request answered */
	size_t nlat, caplat;
	uint64_t requests, got_requested, got_pushed;

	pthread_t fault_thread;
	bool fault_started;
	atomic_bool stop;
	int fault_err;           /* the fault thread's failure, or 0 */
	uint64_t t_resume;
	bool all_in;             /* every page placed (postcopy_time taken) */
};

int pc_dst_pc_open(struct precopy_session *s, struct pc_dst_pc **out)
{
	struct pc_dst_pc *p = calloc(1, sizeof(*p));
	int err;

	if (!p)
		return -ENOMEM;
	p->s = s;
	pthread_mutex_init(&p->mu, NULL);
	atomic_init(&p->stop, false);
	err = pc_uffd_place_open(&p->u);
	for (unsigned i = 0; !err && i < s->nreg; i++) {
		size_t words = (s->reg[i].npages + 63) / 64;

		p->missing[i] = calloc(words, sizeof(uint64_t));
		p->requested[i] = calloc(words, sizeof(uint64_t));
		if (!p->missing[i] || !p->requested[i])
			err = -ENOMEM;
	}
	if (err) {
		pc_dst_pc_free(p);
		return err;
	}
	*out = p;
	return 0;
}

int pc_dst_pc_ranges(struct pc_dst_pc *p, const struct pc_wire_msg *m)
{
	struct precopy_session *s = p->s;

	for (uint32_t i = 0; i < m->u.postcopy.count; i++) {
		struct pc_wire_run r;

		pc_wire_get_run(m->u.postcopy.entries, i, &r);
		if (r.region >= s->nreg || r.first_page >= s->reg[r.region].npages ||
		    r.npages > s->reg[r.region].npages - r.first_page)
			return pc_fail(s, -EPROTO,
				       "malformed stream: POSTCOPY range [%llu, +%llu) outside region %u",
				       (unsigned long long)r.first_page,
				       (unsigned long long)r.npages, r.region);
		for (uint64_t pg = r.first_page; pg < r.first_page + r.npages; pg++) {
			uint64_t bit = 1ull << (pg % 64);

			if (atomic_fetch_or(&p->missing[r.region][pg / 64], bit) & bit)
				return pc_fail(s, -EPROTO,
					       "malformed stream: POSTCOPY lists page %llu of region %u twice",
					       (unsigned long long)pg, r.region);
			p->left++;
			p->total++;
		}
	}
	return m->u.postcopy.flags & PC_WIRE_POSTCOPY_LAST ? 1 : 0;
}

int pc_dst_pc_arm(struct pc_dst_pc *p, char *text, size_t tlen)
{
	struct precopy_session *s = p->s;

	for (unsigned i = 0; i < s->nreg; i++) {
		struct pc_region *r = &s->reg[i];
		int err = pc_uffd_place_add(p->u, r->addr, r->len, r->fd >= 0,
					    (const uint64_t *)p->missing[i]);

		if (err) {
			snprintf(text, tlen, "postcopy: registering region %u with userfaultfd: %s", i,
				 strerror(-err));
			return err;
		}
		p->armed = true;
	}
	return 0;
}

/* Send one record on channel 0 (the stream serialises it with others). */
static int send_rec(struct pc_dst_pc *p, uint8_t *buf, int n)
{
	struct iovec v = { buf, (size_t)n };

	return n < 0 ? n : pc_tp_send_msg(p->tp, 0, &v, 1);
}

/* The region and page of a faulting address, or false if none of ours. */
static bool locate(struct pc_dst_pc *p, uint64_t addr, unsigned *ri, uint64_t *page)
{
	for (unsigned i = 0; i < p->s->nreg; i++) {
		uint64_t a = (uint64_t)(uintptr_t)p->s->reg[i].addr;

		if (addr >= a && addr - a < p->s->reg[i].len) {
			*ri = i;
			*page = (addr - a) / PRECOPY_PAGE_SIZE;
			return true;
		}
	}
	return false;
}

/* Ask for page @page of region @r, once: note when, then REQUEST. */
static int ask(struct pc_dst_pc *p, unsigned r, uint64_t page)
{
	uint64_t bit = 1ull << (page % 64);
	uint8_t buf[PC_WIRE_HDR + 16];

	if (!(atomic_load(&p->missing[r][page / 64]) & bit) ||
	    (atomic_fetch_or(&p->requested[r][page / 64], bit) & bit))
		return 0; /* placed meanwhile, or asked for already */
	pthread_mutex_lock(&p->mu);
	if (p->nout == p->capout) {
		size_t cap = p->capout ? 2 * p->capout : 64;
		struct asked *n = realloc(p->out, cap * sizeof(*n));

		if (n) {
			p->out = n;
			p->capout = cap;
		}
	}
	if (p->nout < p->capout)
		p->out[p->nout++] = (struct asked){ r, page, pc_now() };
	p->requests++;
	pthread_mutex_unlock(&p->mu);
	pthread_mutex_lock(&p->s->lock);
	p->s->st.postcopy_requests++;
	pthread_mutex_unlock(&p->s->lock);
	return send_rec(p, buf, pc_wire_enc_request(buf, sizeof(buf), r, page));
}

static void *fault_main(void *arg)
{
	struct pc_dst_pc *p = arg;

	while (!atomic_load(&p->stop)) {
		uint64_t addr, page;
		unsigned r;
		int err = pc_uffd_place_fault(p->u, 100, &addr);

		if (err == -ETIMEDOUT || err == -EINTR)
			continue;
		if (!err && locate(p, addr, &r, &page))
			err = ask(p, r, page);
		if (err) {
			/* the receiving thread finds the connection gone too */
			pthread_mutex_lock(&p->mu);
			p->fault_err = err;
			pthread_mutex_unlock(&p->mu);
			break;
		}
	}
	return NULL;
}

/* A page asked for has come: its latency, if its request is on record. */
static void answered(struct pc_dst_pc *p, unsigned r, uint64_t page)
{
	pthread_mutex_lock(&p->mu);
	for (size_t i = 0; i < p->nout; i++) {
		if (p->out[i].region != r || p->out[i].page != page)
			continue;
		if (p->nlat == p->caplat) {
			size_t cap = p->caplat ? 2 * p->caplat : 256;
			uint64_t *n = realloc(p->lat, cap * sizeof(*n));

			if (n) {
				p->lat = n;
				p->caplat = cap;
			}
		}
		if (p->nlat < p->caplat)
			p->lat[p->nlat++] = pc_now() - p->out[i].t;
		p->out[i] = p->out[--p->nout];
		break;
	}
	pthread_mutex_unlock(&p->mu);
}

/* One PAGE: a missing page, its contents matching their checksum; placed. */
static int place(struct pc_dst_pc *p, const struct pc_wire_msg *m, uint8_t *pg)
{
	struct precopy_session *s = p->s;
	unsigned r = m->u.page.region;
	uint64_t page = m->u.page.page, bit = 1ull << (page % 64);
	struct pc_region *reg;
	int err;

	if (r >= s->nreg || page >= s->reg[r].npages ||
	    !(atomic_load(&p->missing[r][page / 64]) & bit))
		return pc_fail(s, -EPROTO,
			       "malformed stream: PAGE %llu of region %u, not a missing page",
			       (unsigned long long)page, r);
	reg = &s->reg[r];
	memcpy(pg, m->u.page.data, PRECOPY_PAGE_SIZE);
	if (pc_page_hash(pg) != m->u.page.hash)
		return pc_fail(s, -EBADMSG,
			       "postcopy: page %llu of region %u does not match its checksum",
			       (unsigned long long)page, r);
	err = pc_uffd_place_page(p->u, reg->addr + page * PRECOPY_PAGE_SIZE, pg,
				 PRECOPY_PAGE_SIZE);
	if (err)
		return pc_fail(s, err < 0 ? err : -EEXIST,
			       "postcopy: placing page %llu of region %u: %s",
			       (unsigned long long)page, r,
			       err < 0 ? strerror(-err) : "a page was there already");
	reg->hash[page] = m->u.page.hash;
	atomic_fetch_and(&p->missing[r][page / 64], ~bit);
	p->left--;
	if (m->u.page.flags & PC_WIRE_PAGE_REQUESTED)
		p->got_requested++;
	else
		p->got_pushed++;
	if (atomic_load(&p->requested[r][page / 64]) & bit)
		answered(p, r, page);
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The figures into the stats. */
static void pc_stats(struct pc_dst_pc *p)
{
	struct precopy_session *s = p->s;

	pthread_mutex_lock(&p->mu);
	if (p->nlat)
		qsort(p->lat, p->nlat, sizeof(p->lat[0]), cmp_u64);
	pthread_mutex_lock(&s->lock);
	s->st.postcopy = true;
	s->st.postcopy_requests = p->requests;
	s->st.postcopy_pages_requested = p->got_requested;
	s->st.postcopy_pages_pushed = p->got_pushed;
	s->st.remaining = p->left * PRECOPY_PAGE_SIZE;
	if (p->nlat) {
		s->st.postcopy_latency_median_us = p->lat[p->nlat / 2] / 1000;
		s->st.postcopy_latency_p99_us = p->lat[(p->nlat * 99) / 100] / 1000;
	}
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_unlock(&p->mu);
}

/* The counts so far into the stats, and the progress hook (every 16 MiB
 * placed): the latencies wait for the end. */
static void live_stats(struct pc_dst_pc *p)
{
	struct precopy_session *s = p->s;

	pthread_mutex_lock(&s->lock);
	s->st.postcopy_pages_requested = p->got_requested;
	s->st.postcopy_pages_pushed = p->got_pushed;
	s->st.remaining = p->left * PRECOPY_PAGE_SIZE;
	pthread_mutex_unlock(&s->lock);
	pc_progress(s);
}

/* COMPLETE in postcopy: every page in, every region's checksum equal. */
static int complete(struct pc_dst_pc *p, const struct pc_wire_msg *m)
{
	struct precopy_session *s = p->s;
	char text[PC_WIRE_TEXT_MAX + 1] = "";
	uint8_t buf[PC_WIRE_HDR + 8 + PC_WIRE_TEXT_MAX];
	int status = 0;

	if (p->left) {
		status = -EPROTO;
		snprintf(text, sizeof(text), "COMPLETE with %llu pages still missing",
			 (unsigned long long)p->left);
	} else if (m->u.complete.nregions != s->nreg) {
		status = -EPROTO;
		snprintf(text, sizeof(text), "COMPLETE for %u regions, %u registered",
			 m->u.complete.nregions, s->nreg);
	}
	for (unsigned i = 0; !status && i < s->nreg; i++) {
		struct pc_region *r = &s->reg[i];

		if (m->u.complete.npages[i] != r->npages ||
		    pc_hash_combine(r->hash, r->npages) != m->u.complete.hash[i]) {
			status = -EBADMSG;
			snprintf(text, sizeof(text),
				 "region %u: checksum mismatch, memory differs from the source", i);
		}
	}
	/* The answer is best effort: the guest runs here either way. */
	send_rec(p, buf, pc_wire_enc_result(buf, sizeof(buf), PC_MSG_RESULT, status, text));
	return status ? pc_fail(s, status, "postcopy: %s", text) : 0;
}

/* Receive PAGEs until COMPLETE; @pg: an aligned page to check them in. */
static int receive_pages(struct pc_dst_pc *p, struct pc_transport *tp, uint8_t *buf, uint8_t *pg)
{
	struct precopy_session *s = p->s;

	for (;;) {
		struct pc_wire_msg m;
		char why[160];
		size_t len;
		int err = pc_tp_recv_msg(tp, 0, buf, PC_WIRE_MSG_MAX, &len);

		if (err)
			return pc_fail(s, err == -EMSGSIZE ? -EPROTO : err,
				       "postcopy: connection to the source lost: %s; %llu pages never came, and the guest's accesses to them stay blocked",
				       pc_err_context(s, err), (unsigned long long)p->left);
		err = pc_wire_decode(buf, len, &m, why, sizeof(why));
		if (err)
			return pc_fail(s, err, "malformed stream in postcopy: %s", why);
		if (m.type == PC_MSG_PAGE)
			err = place(p, &m, pg);
		else if (m.type == PC_MSG_COMPLETE)
			return complete(p, &m);
		else if (m.type == PC_MSG_ERROR)
			err = pc_fail(s, m.u.result.status ? m.u.result.status : -EIO,
				      "postcopy: the source gave up: %s; %llu pages never came, and the guest's accesses to them stay blocked",
				      m.u.result.text, (unsigned long long)p->left);
		else
			err = pc_fail(s, -EPROTO, "malformed stream: %s in postcopy",
				      pc_wire_type_name(m.type));
		if (err)
			return err;
		if ((p->got_requested + p->got_pushed) % 4096 == 0)
			live_stats(p);
		if (p->left == 0 && !p->all_in) {
			p->all_in = true;
			pthread_mutex_lock(&s->lock);
			s->st.postcopy_time = (pc_now() - p->t_resume) / PC_NSEC_PER_MSEC;
			if (!s->st.postcopy_time)
				s->st.postcopy_time = 1; /* (under a ms: still "done") */
			pthread_mutex_unlock(&s->lock);
		}
	}
}

int pc_dst_pc_run(struct pc_dst_pc *p, struct pc_transport *tp, uint8_t *buf)
{
	struct precopy_session *s = p->s;
	uint8_t *pg = aligned_alloc(PRECOPY_PAGE_SIZE, PRECOPY_PAGE_SIZE);
	int err;

	if (!pg)
		return pc_fail(s, -ENOMEM, "out of memory");
	p->tp = tp;
	p->t_resume = pc_now();
	pc_stats(p);
	pc_progress(s);
	if (pthread_create(&p->fault_thread, NULL, fault_main, p))
		err = pc_fail(s, -EAGAIN, "cannot start the postcopy fault thread");
	else
		p->fault_started = true;
	err = p->fault_started ? receive_pages(p, tp, buf, pg) : -EAGAIN;
	atomic_store(&p->stop, true);
	if (p->fault_started)
		pthread_join(p->fault_thread, NULL);
	p->fault_started = false;
	pc_stats(p);
	pthread_mutex_lock(&s->lock);
	s->st.normal += p->got_requested + p->got_pushed;
	s->st.normal_bytes += (p->got_requested + p->got_pushed) * PRECOPY_PAGE_SIZE;
	s->st.transferred += (p->got_requested + p->got_pushed) * (uint64_t)PC_WIRE_PAGE_LEN;
	pthread_mutex_unlock(&s->lock);
	free(pg);
	return err;
}

void pc_dst_pc_free(struct pc_dst_pc *p)
{
	if (!p)
		return;
	if (p->armed && p->left) {
		/* The guest may wait on a missing page: keep it waiting. */
		pthread_mutex_lock(&p->s->lock);
		pc_uffd_place_close(p->s->uffd_kept);
		p->s->uffd_kept = p->u;
		pthread_mutex_unlock(&p->s->lock);
	} else {
		pc_uffd_place_close(p->u);
	}
	for (unsigned i = 0; i < PRECOPY_MAX_REGIONS; i++) {
		free((void *)p->missing[i]);
		free((void *)p->requested[i]);
	}
	free(p->out);
	free(p->lat);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

/* --- the glue to dest.c ------------------------------------------------- */

/* The source wants postcopy: this transport must carry it and this
 * process must handle faults (userfaultfd). Return: 0, or -errno with
 * why in @text. */
int pc_dest_postcopy_possible(struct dest *d, char *text, size_t tlen)
{
	int err;

	if (!(d->tp->ops->caps & PC_TCAP_POSTCOPY)) {
		snprintf(text, tlen, "postcopy is not available over %s: yet", d->tp->ops->scheme);
		return -EOPNOTSUPP;
	}
	err = pc_dst_pc_open(d->s, &d->pc);
	if (err)
		snprintf(text, tlen, "postcopy needs userfaultfd, unavailable here: %s",
			 strerror(-err));
	return err;
}

/*
 * POSTCOPY on channel 0: the first fences the receivers as COMPLETE does;
 * the last (its flag) ends the list of missing pages. Then what COMPLETE
 * would check of the pages that did come, the missing ones dropped and
 * registered for faults, the device state loaded, the verdict and, on
 * GO, the guest resumed with pages still missing; then postcopy itself
 * (pc_dst_pc_run()). Return: 1 at the end, or -errno.
 */
int pc_dest_postcopy(struct dest *d, const struct pc_wire_msg *m)
{
	struct precopy_session *s = d->s;
	char text[PC_WIRE_TEXT_MAX + 1] = "";
	int status = 0, err;
	uint64_t p;

	if (!d->in_postcopy) {
		d->in_postcopy = true;
		status = pc_dest_fence(d, "POSTCOPY", text, sizeof(text));
		if (status)
			return pc_dest_conclude(d, status, text, sizeof(text));
	}
	err = pc_dst_pc_ranges(d->pc, m);
	if (err <= 0)
		return err;
	if (d->devstate_seen && d->devstate_have != d->devstate_total) {
		status = -EPROTO;
		snprintf(text, sizeof(text), "device state incomplete at POSTCOPY");
	}
	for (unsigned i = 0; !status && i < s->nreg; i++) {
		if ((p = pc_dest_first_unlisted(d, i)) < s->reg[i].npages) {
			status = -EBADMSG;
			snprintf(text, sizeof(text),
				 "region %u: page %llu was written after its checksum was taken",
				 i, (unsigned long long)p);
		}
	}
	if (!status)
		status = pc_dst_pc_arm(d->pc, text, sizeof(text));
	if (!status)
		status = pc_dest_load_devstate(d, text, sizeof(text));
	err = pc_dest_conclude(d, status, text, sizeof(text));
	if (!err)
		err = pc_dst_pc_run(d->pc, d->tp, d->rcv[0].buf);
	return err ? err : 1;
}

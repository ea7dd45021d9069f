/* SPDX-License-Identifier: MIT */
/*
 * rdma_mr.c - the RDMA transport's memory registration: the sending side's
 * reg_local ranges (pinned whole, or in chunks the first time
 * write_pages() touches them), the RDMA WRITEs of write_pages() straight
 * from them, and the receiving side's regions exposed for remote write.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "le.h"
#include "rdma_impl.h"

/* --- local registration ---------------------------------------------------- */

/* ibv_reg_mr() of guest memory, counted in reg_ns/bytes/count. */
static struct ibv_mr *reg_timed(struct rd_conn *c, void *addr, size_t len, int access)
{
	uint64_t t0 = pc_mono_ns();
	struct ibv_mr *mr = ibv_reg_mr(c->pd, addr, len, access);

	if (mr) {
		atomic_fetch_add(&c->reg_ns, pc_mono_ns() - t0);
		atomic_fetch_add(&c->reg_bytes, len);
		atomic_fetch_add(&c->reg_count, 1);
	}
	return mr;
}

/* The MR covering @a and how many bytes of it lie from @a on; registers a
 * chunk the first time it is touched. NULL (failed) if @a is not in a
 * reg_local range or registration fails. */
static struct ibv_mr *local_mr(struct rd_conn *c, uintptr_t a, size_t *avail)
{
	unsigned n = atomic_load(&c->nloc);

	for (unsigned i = 0; i < n; i++) {
		struct rd_local *l = &c->loc[i];
		size_t k;
		uintptr_t cs, ce;
		struct ibv_mr *mr;

		if (a < l->start || a - l->start >= l->len)
			continue;
		if (l->whole) {
			*avail = l->start + l->len - a;
			return l->whole;
		}
		k = (a - l->base) >> CHUNK_SHIFT;
		cs = l->base + ((uintptr_t)k << CHUNK_SHIFT);
		ce = cs + ((uintptr_t)1 << CHUNK_SHIFT);
		if (cs < l->start)
			cs = l->start;
		if (ce > l->start + l->len)
			ce = l->start + l->len;
		mr = atomic_load(&l->chunk[k]);
		if (!mr) {
			pthread_mutex_lock(&c->local_lock);
			mr = atomic_load(&l->chunk[k]);
			if (!mr) {
				mr = reg_timed(c, (void *)cs, ce - cs, 0);
				atomic_store(&l->chunk[k], mr);
			}
			pthread_mutex_unlock(&c->local_lock);
			if (!mr)
				return NULL;
		}
		*avail = ce - a;
		return mr;
	}
	return NULL;
}

int rd_reg_local(struct pc_transport *t, const void *addr, size_t len)
{
	struct rd_conn *c = (struct rd_conn *)t;
	struct rd_local *l;
	uintptr_t a = (uintptr_t)addr;
	long pg = sysconf(_SC_PAGESIZE);
	int err = rd_state(c);

	if (err)
		return err;
	if (!addr || !len || a + len < a)
		return -EINVAL;
	/*
	 * Give every page its own frame before it can be pinned: a read-only
	 * pin of a never-written anonymous page would pin the shared zero
	 * page, and a later write by the guest would go to a new page the MR
	 * never sees. Populating for write changes no byte. Done here, before
	 * the engine arms the dirty log, so it marks nothing dirty.
	 */
	{
		uintptr_t ps = a & ~(uintptr_t)(pg - 1);
		uintptr_t pe = (a + len + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1);

		if (madvise((void *)ps, pe - ps, MADV_POPULATE_WRITE) != 0) {
			for (uintptr_t p = ps; p < pe; p += (uintptr_t)pg)
				__atomic_fetch_or((uint8_t *)p, 0, __ATOMIC_RELAXED);
		}
	}
	pthread_mutex_lock(&c->local_lock);
	if (atomic_load(&c->nloc) == MAX_LOCAL) {
		pthread_mutex_unlock(&c->local_lock);
		return -ENOSPC;
	}
	l = &c->loc[atomic_load(&c->nloc)];
	memset(l, 0, sizeof(*l));
	l->start = a;
	l->len = len;
	l->base = a & ~(((uintptr_t)1 << CHUNK_SHIFT) - 1);
	/* Local read only: the kernel pins the pages read-only, so writes
	 * by the guest still fault into the dirty tracker. */
	if (c->pin_all) {
		l->whole = reg_timed(c, (void *)addr, len, 0);
		if (!l->whole)
			err = errno ? -errno : -ENOMEM;
	} else {
		l->nchunks = ((a + len - l->base) >> CHUNK_SHIFT) + 1;
		l->chunk = calloc(l->nchunks, sizeof(*l->chunk));
		if (!l->chunk)
			err = -ENOMEM;
	}
	if (!err)
		atomic_fetch_add(&c->nloc, 1);
	pthread_mutex_unlock(&c->local_lock);
	if (err)
		rd_fail(c, err, "registering %zu bytes of source memory: %s", len, strerror(-err));
	return err;
}

void rd_local_free(struct rd_conn *c)
{
	for (unsigned i = 0; i < atomic_load(&c->nloc); i++) {
		struct rd_local *l = &c->loc[i];

		if (l->whole)
			ibv_dereg_mr(l->whole);
		for (size_t k = 0; k < l->nchunks; k++)
			if (l->chunk[k])
				ibv_dereg_mr(l->chunk[k]);
		free(l->chunk);
	}
	atomic_store(&c->nloc, 0);
}

int rd_reg_stats(struct pc_transport *t, struct pc_tp_reg_stats *out)
{
	struct rd_conn *c = (struct rd_conn *)t;

	if (!t || !out)
		return -EINVAL;
	out->ns = atomic_load(&c->reg_ns);
	out->bytes = atomic_load(&c->reg_bytes);
	out->count = atomic_load(&c->reg_count);
	out->pin_all = c->pin_all;
	return 0;
}

int pc_rdma_local_keys(struct pc_transport *t, const void *addr, uint32_t *lkey,
		       uint32_t *rkey)
{
	struct rd_conn *c = (struct rd_conn *)t;
	struct ibv_mr *mr;
	size_t avail;

	if (!t || !lkey || !rkey || t->ops != pc_transport_find("rdma"))
		return -EINVAL;
	mr = local_mr(c, (uintptr_t)addr, &avail);
	if (!mr)
		return -ENOENT;
	*lkey = mr->lkey;
	*rkey = mr->rkey;
	return 0;
}

/* --- write_pages ------------------------------------------------------------ */

/* The key of the peer's region @id, waiting (KEY_WAIT_MS at most) for the
 * message that brings it; region keys come on channel 0. */
static int get_remote(struct rd_conn *c, uint32_t id, struct rd_remote *out)
{
	uint64_t deadline = pc_mono_ns() + KEY_WAIT_MS * 1000000ull;

	if (id >= PRECOPY_MAX_REGIONS)
		return rd_fail(c, -EINVAL, "region %u out of range", id);
	for (;;) {
		int err;

		pthread_mutex_lock(&c->reg_lock);
		*out = c->rem[id];
		pthread_mutex_unlock(&c->reg_lock);
		if (out->valid)
			return 0;
		err = rd_state(c);
		if (err)
			return err;
		if (pc_mono_ns() > deadline)
			return rd_fail(c, -ENOENT, "the peer has not exposed region %u", id);
		rd_sweep(c, &c->ch[0]);
		pthread_mutex_lock(&c->reg_lock);
		if (!c->rem[id].valid) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 2000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&c->reg_cv, &c->reg_lock, &ts);
		}
		pthread_mutex_unlock(&c->reg_lock);
	}
}

struct wr_batch {
	struct ibv_send_wr wr[POST_BATCH];
	struct ibv_sge sge[POST_BATCH][MAX_SGE];
	unsigned n;
	uint64_t bytes;
	uint32_t region;            /* of the open WR (wr[n-1]) */
	uint64_t remote_end;        /* region offset just past the open WR */
	uint32_t wr_len;
};

/* Bytes of @b's scatter-gather entries that lie in registered guest
 * memory (reg_local ranges): the device reads them there, no copy. */
static uint64_t batch_guest_bytes(struct rd_conn *c, const struct wr_batch *b)
{
	unsigned nloc = atomic_load(&c->nloc);
	uint64_t n = 0;

	for (unsigned i = 0; i < b->n; i++)
		for (int k = 0; k < b->wr[i].num_sge; k++) {
			const struct ibv_sge *s = &b->wr[i].sg_list[k];

			for (unsigned j = 0; j < nloc; j++)
				if (s->addr >= c->loc[j].start &&
				    s->addr - c->loc[j].start + s->length <= c->loc[j].len) {
					n += s->length;
					break;
				}
		}
	return n;
}

static int batch_flush(struct rd_conn *c, struct rd_chan *ch, struct wr_batch *b, bool last)
{
	int err;

	if (!b->n)
		return 0;
	atomic_fetch_add(&c->write_guest_bytes, batch_guest_bytes(c, b));
	err = rd_sq_acquire(c, ch, b->n, SQ_RESERVE, 0);
	if (err)
		return err;
	err = rd_sq_post(c, ch, b->wr, b->n, last);
	pthread_mutex_unlock(&ch->post_lock);
	atomic_fetch_add(&c->write_wrs, b->n);
	atomic_fetch_add(&c->write_bytes, b->bytes);
	b->n = 0;
	b->bytes = 0;
	return err;
}

/* Add [src, src+len) (one MR) to land at region offset @off. */
static int batch_add(struct rd_conn *c, struct rd_chan *ch, struct wr_batch *b,
		     const struct rd_remote *rem, uint32_t region, uint64_t off, uintptr_t src,
		     uint32_t len, uint32_t lkey)
{
	struct ibv_send_wr *w = b->n ? &b->wr[b->n - 1] : NULL;

	if (w && b->region == region && b->remote_end == off &&
	    (uint64_t)b->wr_len + len <= WR_MAX_BYTES) {
		struct ibv_sge *s = &w->sg_list[w->num_sge - 1];

		if (s->addr + s->length == src && s->lkey == lkey) {
			s->length += len; /* contiguous in both: one SGE */
			goto added;
		}
		if ((unsigned)w->num_sge < c->max_sge) {
			s = &w->sg_list[w->num_sge++];
			*s = (struct ibv_sge){ .addr = src, .length = len, .lkey = lkey };
			goto added;
		}
	}
	if (b->n == POST_BATCH) {
		int err = batch_flush(c, ch, b, false);

		if (err)
			return err;
	}
	w = &b->wr[b->n];
	memset(w, 0, sizeof(*w));
	w->sg_list = b->sge[b->n];
	w->sg_list[0] = (struct ibv_sge){ .addr = src, .length = len, .lkey = lkey };
	w->num_sge = 1;
	w->opcode = IBV_WR_RDMA_WRITE;
	w->wr.rdma.remote_addr = rem->addr + off;
	w->wr.rdma.rkey = rem->rkey;
	b->n++;
	b->region = region;
	b->wr_len = 0;
added:
	b->wr_len += len;
	b->remote_end = off + len;
	b->bytes += len;
	return 0;
}

int rd_write_pages(struct pc_transport *t, unsigned chan, const struct pc_page_run *runs,
		   unsigned n)
{
	struct rd_conn *c = (struct rd_conn *)t;
	struct rd_chan *ch;
	struct wr_batch *b;
	struct rd_remote rem = { 0 };
	uint32_t rem_id = UINT32_MAX;
	int err = rd_state(c);

	if (err)
		return err;
	if (chan >= t->nchan || (n && !runs))
		return -EINVAL;
	if (!n)
		return 0;
	b = malloc(sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->n = 0;
	b->bytes = 0;
	ch = &c->ch[chan];
	pthread_mutex_lock(&ch->send_lock);
	for (unsigned i = 0; i < n && !err; i++) {
		const struct pc_page_run *r = &runs[i];
		uintptr_t src = (uintptr_t)r->src;
		uint64_t off = r->offset, left = r->len;

		if (r->region != rem_id) {
			err = get_remote(c, r->region, &rem);
			if (err)
				break;
			rem_id = r->region;
		}
		if (!r->len || !r->src || off > rem.len || r->len > rem.len - off) {
			err = rd_fail(c, -EINVAL, "run of %llu bytes at %llu is outside region %u "
				      "(%llu bytes)", (unsigned long long)r->len,
				      (unsigned long long)off, r->region,
				      (unsigned long long)rem.len);
			break;
		}
		while (left && !err) {
			size_t avail;
			struct ibv_mr *mr = local_mr(c, src, &avail);
			uint32_t piece;

			if (!mr) {
				err = rd_fail(c, errno == ENOMEM ? -ENOMEM : -EFAULT,
					      "source memory at %p is not registered (%s)",
					      (void *)src, strerror(errno));
				break;
			}
			piece = (uint32_t)(left < avail ? left : avail);
			if (piece > WR_MAX_BYTES)
				piece = WR_MAX_BYTES;
			err = batch_add(c, ch, b, &rem, r->region, off, src, piece, mr->lkey);
			src += piece;
			off += piece;
			left -= piece;
		}
	}
	if (!err)
		err = batch_flush(c, ch, b, true);
	pthread_mutex_unlock(&ch->send_lock);
	free(b);
	return err;
}

/* --- regions (receiving side) --------------------------------------------- */

int rd_expose_region(struct pc_transport *t, uint32_t id, void *addr, size_t len)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint8_t m[4 + 24];
	struct iovec v = { m, sizeof(m) };
	struct ibv_mr *mr;
	int err = rd_state(c);

	if (err)
		return err;
	if (id >= PRECOPY_MAX_REGIONS || !addr || !len)
		return -EINVAL;
	/* Remote write only: the peer can never read our memory. */
	mr = reg_timed(c, addr, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	if (!mr)
		return rd_fail(c, errno ? -errno : -ENOMEM, "registering region %u: %s", id,
			       strerror(errno));
	pthread_mutex_lock(&c->reg_lock);
	if (c->exp[id])
		ibv_dereg_mr(c->exp[id]);
	c->exp[id] = mr;
	pthread_mutex_unlock(&c->reg_lock);
	memset(m, 0, sizeof(m));
	m[0] = INT_REGION;
	pc_put_le32(m + 4, id);
	pc_put_le32(m + 8, mr->rkey);
	pc_put_le64(m + 12, (uintptr_t)addr);
	pc_put_le64(m + 20, len);
	return rd_send(c, 0, FRAG_INTERNAL, &v, 1);
}

int rd_unexpose_all(struct pc_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;

	/* Works after abort too: the end of a migration must revoke keys. */
	pthread_mutex_lock(&c->reg_lock);
	for (unsigned i = 0; i < PRECOPY_MAX_REGIONS; i++) {
		if (c->exp[i])
			ibv_dereg_mr(c->exp[i]);
		c->exp[i] = NULL;
	}
	pthread_mutex_unlock(&c->reg_lock);
	return 0;
}

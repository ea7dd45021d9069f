/* SPDX-License-Identifier: MIT */
/*
 * rdma_conn.c - the RDMA transport's connection objects: the protection
 * domain and credit words of a connection, each channel's completion
 * queues, queue pair and buffers, the monitor thread (rdma_cm events,
 * device events, heartbeats), abort and teardown.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rdma_impl.h"

/* Every live connection, so that a device's async events (which name a
 * queue pair) reach the connection that owns it. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct rd_conn *g_conns;

/*
 * Pin-all or on demand: what the engine asked for (PC_TOPT_PIN_ALL), unless
 * PRECOPY_RDMA_PIN_ALL is set and not empty ("0": on demand, else pin-all),
 * which overrides it for the whole process.
 */
static bool want_pin_all(const struct pc_transport_opts *o)
{
	const char *e = getenv("PRECOPY_RDMA_PIN_ALL");

	if (e && *e)
		return strcmp(e, "0") != 0;
	return o && (o->flags & PC_TOPT_PIN_ALL);
}

struct rd_conn *rd_conn_new(unsigned nchan, const struct pc_transport_opts *o)
{
	struct rd_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->base.ops = pc_transport_find("rdma");
	c->base.nchan = nchan;
	c->timeout_ms = o && o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	c->pin_all = want_pin_all(o);
	c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pthread_mutex_init(&c->reg_lock, NULL);
	pthread_cond_init(&c->reg_cv, NULL);
	pthread_mutex_init(&c->local_lock, NULL);
	pthread_mutex_init(&c->why_lock, NULL);
	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++) {
		struct rd_chan *ch = &c->ch[i];

		ch->idx = i;
		pthread_mutex_init(&ch->send_lock, NULL);
		pthread_mutex_init(&ch->post_lock, NULL);
		pthread_mutex_init(&ch->recv_lock, NULL);
		ch->probe_seq = UINT64_MAX;
		for (unsigned s = 0; s < SEND_SLOTS; s++)
			ch->slot_seq[s] = UINT64_MAX;
	}
	if (c->wake_fd < 0 || c->stop_fd < 0) {
		if (c->wake_fd >= 0)
			close(c->wake_fd);
		if (c->stop_fd >= 0)
			close(c->stop_fd);
		free(c);
		return NULL;
	}
	return c;
}

/* PD and credit words, from the first channel's device. */
int rd_conn_init_device(struct rd_conn *c, struct ibv_context *verbs)
{
	struct ibv_device_attr da;

	c->verbs = verbs;
	c->pd = ibv_alloc_pd(verbs);
	if (!c->pd)
		return -ENOMEM;
	c->max_sge = MAX_SGE;
	if (ibv_query_device(verbs, &da) == 0 && (unsigned)da.max_sge < c->max_sge)
		c->max_sge = (unsigned)da.max_sge;
	if (c->max_sge < 1)
		c->max_sge = 1;
	if (posix_memalign((void **)&c->credit_in, 4096, 4096))
		return -ENOMEM;
	memset(c->credit_in, 0, 4096);
	c->credit_mr = ibv_reg_mr(c->pd, c->credit_in, 4096,
				  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	if (!c->credit_mr)
		return errno ? -errno : -ENOMEM;
	set_nonblock(verbs->async_fd);
	return 0;
}

/* CQs, QP and buffers of one channel on @id; receives posted. */
int rd_chan_init(struct rd_conn *c, struct rd_chan *ch, struct rdma_cm_id *id)
{
	struct ibv_qp_init_attr qa;
	uint8_t tmo = ACK_TIMEOUT;
	size_t rb = (size_t)RQ_DEPTH * SLOT_SIZE, sb = (size_t)SEND_SLOTS * SLOT_SIZE;

	ch->id = id;
	id->context = ch;
	ch->scc = ibv_create_comp_channel(c->verbs);
	ch->rcc = ibv_create_comp_channel(c->verbs);
	if (!ch->scc || !ch->rcc)
		return -ENOMEM;
	set_nonblock(ch->scc->fd);
	set_nonblock(ch->rcc->fd);
	ch->scq = ibv_create_cq(c->verbs, SQ_DEPTH, ch, ch->scc, 0);
	ch->rcq = ibv_create_cq(c->verbs, RQ_DEPTH, ch, ch->rcc, 0);
	if (!ch->scq || !ch->rcq)
		return -ENOMEM;
	memset(&qa, 0, sizeof(qa));
	qa.qp_context = ch;
	qa.send_cq = ch->scq;
	qa.recv_cq = ch->rcq;
	qa.qp_type = IBV_QPT_RC;
	qa.cap.max_send_wr = SQ_DEPTH;
	qa.cap.max_recv_wr = RQ_DEPTH;
	qa.cap.max_send_sge = c->max_sge;
	qa.cap.max_recv_sge = 1;
	qa.cap.max_inline_data = FRAG_HDR + HB_SIZE; /* heartbeats; credit words */
	qa.sq_sig_all = 0;
	if (rdma_create_qp(id, c->pd, &qa))
		return errno ? -errno : -ENOMEM;
	ch->qp = id->qp;
	if (qa.cap.max_send_sge < c->max_sge)
		c->max_sge = qa.cap.max_send_sge ? qa.cap.max_send_sge : 1;
	ch->rbuf = mmap(NULL, rb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ch->sbuf = mmap(NULL, sb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ch->rbuf == MAP_FAILED || ch->sbuf == MAP_FAILED) {
		if (ch->rbuf == MAP_FAILED)
			ch->rbuf = NULL;
		if (ch->sbuf == MAP_FAILED)
			ch->sbuf = NULL;
		return -ENOMEM;
	}
	ch->rmr = ibv_reg_mr(c->pd, ch->rbuf, rb, IBV_ACCESS_LOCAL_WRITE);
	ch->smr = ibv_reg_mr(c->pd, ch->sbuf, sb, 0);
	if (!ch->rmr || !ch->smr)
		return errno ? -errno : -ENOMEM;
	for (unsigned s = 0; s < RQ_DEPTH; s++)
		if (rd_post_recv(ch, s))
			return -EIO;
	/* ACK timeout ~67 ms: with 6 retries a dead peer fails within seconds
	 * (rdma_cm's default for RoCE may be far longer). */
	rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &tmo, sizeof(tmo));
	return 0;
}

/*
 * The peer may RDMA-WRITE into what we expose and nothing else: no READ
 * and no atomics at the queue pair, whatever its connect request asked
 * for. The CM grants REMOTE_READ and atomics to the passive side's queue
 * pair when the active side offers an initiator depth, and rdma_accept()
 * re-applies the CM's INIT attributes, so this is done once the
 * connection is established (RTS to RTS). Until then, and as a second
 * line after it, READ and atomics find no responder resources (we accept
 * with zero) and regions registered for remote write only.
 */
int rd_qp_write_only(struct rd_conn *c, struct rd_chan *ch)
{
	struct ibv_qp_attr a = { .qp_access_flags = IBV_ACCESS_REMOTE_WRITE };
	int ret = ibv_modify_qp(ch->qp, &a, IBV_QP_ACCESS_FLAGS);

	if (ret)
		return rd_fail(c, -ret, "channel %u: restricting remote access: %s", ch->idx,
			       strerror(ret));
	return 0;
}

/* A completion queue and its channel, as far as rd_chan_init() got. */
static void cq_free(struct ibv_cq *cq, struct ibv_comp_channel *cc)
{
	if (cq)
		ibv_destroy_cq(cq);
	if (cc)
		ibv_destroy_comp_channel(cc);
}

/* A message buffer of @len bytes and its memory region, as far as
 * rd_chan_init() got. */
static void buf_free(struct ibv_mr *mr, uint8_t *buf, size_t len)
{
	if (mr)
		ibv_dereg_mr(mr);
	if (buf)
		munmap(buf, len);
}

void rd_conn_free(struct rd_conn *c)
{
	atomic_store(&c->quiet, true);
	if (c->monitor_started)
		rd_drain_sends(c);
	if (c->monitor_started) {
		atomic_store(&c->closing, true);
		rd_poke(c->stop_fd);
		pthread_join(c->monitor, NULL);
	}
	pthread_mutex_lock(&g_lock);
	for (struct rd_conn **p = &g_conns; *p; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			break;
		}
	pthread_mutex_unlock(&g_lock);
	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++)
		if (c->ch[i].id && c->ch[i].qp)
			rdma_disconnect(c->ch[i].id);
	for (unsigned i = 0; i < PRECOPY_MAX_CHANNELS; i++) {
		struct rd_chan *ch = &c->ch[i];

		if (ch->qp)
			rdma_destroy_qp(ch->id);
		cq_free(ch->scq, ch->scc);
		cq_free(ch->rcq, ch->rcc);
		buf_free(ch->rmr, ch->rbuf, (size_t)RQ_DEPTH * SLOT_SIZE);
		buf_free(ch->smr, ch->sbuf, (size_t)SEND_SLOTS * SLOT_SIZE);
		if (ch->id)
			rdma_destroy_id(ch->id);
		pthread_mutex_destroy(&ch->send_lock);
		pthread_mutex_destroy(&ch->post_lock);
		pthread_mutex_destroy(&ch->recv_lock);
	}
	rd_unexpose_all(&c->base);
	rd_local_free(c);
	if (c->credit_mr)
		ibv_dereg_mr(c->credit_mr);
	free(c->credit_in);
	if (c->pd)
		ibv_dealloc_pd(c->pd);
	if (c->ec)
		rdma_destroy_event_channel(c->ec);
	close(c->wake_fd);
	close(c->stop_fd);
	pthread_mutex_destroy(&c->reg_lock);
	pthread_cond_destroy(&c->reg_cv);
	pthread_mutex_destroy(&c->local_lock);
	pthread_mutex_destroy(&c->why_lock);
	free(c);
}

static struct rd_conn *find_qp_owner(struct ibv_qp *qp, unsigned *chan)
{
	for (struct rd_conn *c = g_conns; c; c = c->next)
		for (unsigned i = 0; i < c->base.nchan; i++)
			if (c->ch[i].qp == qp) {
				*chan = i;
				return c;
			}
	return NULL;
}

/* Route async events of the (shared) device context to their connection. */
static void poll_async(struct ibv_context *verbs)
{
	struct ibv_async_event ev;

	while (ibv_get_async_event(verbs, &ev) == 0) {
		switch (ev.event_type) {
		case IBV_EVENT_QP_FATAL:
		case IBV_EVENT_QP_REQ_ERR:
		case IBV_EVENT_QP_ACCESS_ERR: {
			unsigned chan = 0;
			struct rd_conn *o;

			pthread_mutex_lock(&g_lock);
			o = find_qp_owner(ev.element.qp, &chan);
			if (o)
				rd_fail(o, -EIO, "channel %u: %s", chan,
					ibv_event_type_str(ev.event_type));
			pthread_mutex_unlock(&g_lock);
			break;
		}
		case IBV_EVENT_DEVICE_FATAL:
			pthread_mutex_lock(&g_lock);
			for (struct rd_conn *o = g_conns; o; o = o->next)
				if (o->verbs == verbs)
					rd_fail(o, -EIO, "RDMA device failed");
			pthread_mutex_unlock(&g_lock);
			break;
		default:
			break;
		}
		ibv_ack_async_event(&ev);
	}
}

/* The monitor: CM events (disconnects), device async events, heartbeats. */
static void *monitor_main(void *arg)
{
	struct rd_conn *c = arg;
	bool disconnected = false;
	unsigned tick = c->timeout_ms / 6;

	if (tick < 10)
		tick = 10;
	if (tick > 1000)
		tick = 1000;
	for (;;) {
		struct pollfd p[3] = { { .fd = c->ec->fd, .events = POLLIN },
				       { .fd = c->verbs->async_fd, .events = POLLIN },
				       { .fd = c->stop_fd, .events = POLLIN } };
		struct rdma_cm_event *ev;
		uint64_t v;

		if (poll(p, 3, (int)tick) < 0 && errno != EINTR)
			break;
		if (p[2].revents && read(c->stop_fd, &v, sizeof(v)) < 0) {
			/* drained by someone else: nothing to do */
		}
		if (atomic_load(&c->closing))
			break;
		if (atomic_load(&c->err) && !disconnected) {
			/* A failed connection is torn down at once, so the peer
			 * learns of it instead of waiting for what never comes. */
			for (unsigned i = 0; i < c->base.nchan; i++)
				rdma_disconnect(c->ch[i].id);
			disconnected = true;
		}
		while (rdma_get_cm_event(c->ec, &ev) == 0) {
			struct rd_chan *ch = ev->id ? ev->id->context : NULL;
			unsigned idx = ch ? ch->idx : 0;

			switch (ev->event) {
			case RDMA_CM_EVENT_DISCONNECTED:
			case RDMA_CM_EVENT_TIMEWAIT_EXIT:
				rd_fail(c, -ECONNRESET, "channel %u: the peer disconnected", idx);
				break;
			case RDMA_CM_EVENT_DEVICE_REMOVAL:
			case RDMA_CM_EVENT_ADDR_CHANGE:
				rd_fail(c, -ECONNRESET, "channel %u: %s", idx,
					rdma_event_str(ev->event));
				break;
			default:
				break;
			}
			rdma_ack_cm_event(ev);
		}
		poll_async(c->verbs);
		rd_heartbeat(c);
	}
	return NULL;
}

int rd_conn_start(struct rd_conn *c)
{
	uint64_t now = pc_mono_ns();

	for (unsigned i = 0; i < c->base.nchan; i++) {
		atomic_store(&c->ch[i].heard_ns, now);
		c->ch[i].ping_ns = now;
	}
	pthread_mutex_lock(&g_lock);
	c->next = g_conns;
	g_conns = c;
	pthread_mutex_unlock(&g_lock);
	if (pthread_create(&c->monitor, NULL, monitor_main, c))
		return -EAGAIN;
	c->monitor_started = true;
	return 0;
}

/* A connection that failed while being set up goes away with it: hand
 * its reason to the caller (the engine puts it in its error). */
void rd_give_why(struct rd_conn *c, const struct pc_transport_opts *o)
{
	if (o && o->why && o->whylen && c->base.why[0])
		snprintf(o->why, o->whylen, "%s", c->base.why);
}

int rd_abort(struct pc_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;

	atomic_store(&c->aborted, true);
	rd_poke(c->wake_fd);
	return 0;
}

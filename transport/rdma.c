/* SPDX-License-Identifier: MIT */
/*
 * rdma.c - the RDMA verbs transport: "rdma:HOST:PORT" (rdma_cm addressing).
 *
 * One RC queue pair per channel, connected with rdma_cm. Pages go by
 * IBV_WR_RDMA_WRITE straight from the source's memory (the SGEs point into
 * it; no bounce buffer) into regions the destination registered for remote
 * write. Messages go by IBV_WR_SEND into pre-posted receive buffers; a SEND
 * posted after the WRITEs on the same queue pair completes at the peer only
 * once those WRITEs are placed, which is the ordering transport.h asks for.
 *
 * The transport is cut into files along its layers, sharing rdma_impl.h:
 * rdma_cm.c sets connections up (the private data, the token and the
 * challenge are described there), rdma_conn.c holds the connection and
 * channel objects and the monitor thread, rdma_queue.c the send and
 * receive queues (fragments, credits, heartbeats), rdma_mr.c memory
 * registration and write_pages(); this file the ops table.
 *
 * Failure: completion errors, async QP events and rdma_cm DISCONNECTED
 * events set a sticky error (with why[]) and wake every waiter through an
 * eventfd; abort() does the same with -ECANCELED. Queue pairs use
 * retry_cnt = rnr_retry = 6 and an ACK timeout of 14 (about 67 ms), so a
 * dead peer shows within about two seconds; an idle receiver probes the
 * peer every two seconds with a one-word WRITE.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rdma_impl.h"

static void rd_close(struct pc_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;
	const char *e = getenv("PRECOPY_RDMA_STATS");

	if (!c)
		return;
	if (e && *e && strcmp(e, "0") != 0) {
		struct pc_rdma_stats st;

		pc_rdma_stats(t, &st);
		fprintf(stderr, "rdma: %u ch, reg %.1f ms for %llu MiB in %llu MRs, %llu writes "
			"(%llu MiB), %llu sends, %llu credit waits, qp timeout %u retry %u rnr %u\n",
			t->nchan, st.reg_ns / 1e6, (unsigned long long)(st.reg_bytes >> 20),
			(unsigned long long)st.reg_count, (unsigned long long)st.write_wrs,
			(unsigned long long)(st.write_bytes >> 20),
			(unsigned long long)st.send_wrs, (unsigned long long)st.credit_waits,
			st.qp_timeout, st.qp_retry_cnt, st.qp_rnr_retry);
	}
	rd_conn_free(c);
}

static void query_qp_stats(struct rd_chan *ch, struct pc_rdma_stats *st)
{
	struct ibv_qp_attr a;
	struct ibv_qp_init_attr ia;

	if (ch->qp && ibv_query_qp(ch->qp, &a, IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
				   IBV_QP_RNR_RETRY, &ia) == 0) {
		st->qp_timeout = a.timeout;
		st->qp_retry_cnt = a.retry_cnt;
		st->qp_rnr_retry = a.rnr_retry;
	}
}

int pc_rdma_stats(struct pc_transport *t, struct pc_rdma_stats *out)
{
	struct rd_conn *c = (struct rd_conn *)t;

	if (!t || !out || t->ops != pc_transport_find("rdma"))
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->reg_ns = atomic_load(&c->reg_ns);
	out->reg_bytes = atomic_load(&c->reg_bytes);
	out->reg_count = atomic_load(&c->reg_count);
	out->write_wrs = atomic_load(&c->write_wrs);
	out->write_bytes = atomic_load(&c->write_bytes);
	out->send_wrs = atomic_load(&c->send_wrs);
	out->write_guest_bytes = atomic_load(&c->write_guest_bytes);
	out->send_bytes = atomic_load(&c->send_bytes);
	out->credit_waits = atomic_load(&c->credit_waits);
	query_qp_stats(&c->ch[0], out);
	return 0;
}

int pc_rdma_verbs(struct pc_transport *t, struct pc_rdma_verbs *out)
{
	struct rd_conn *c = (struct rd_conn *)t;

	if (!t || !out || t->ops != pc_transport_find("rdma"))
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->pd = c->pd;
	for (unsigned i = 0; i < t->nchan; i++)
		out->qp[i] = c->ch[i].qp;
	out->credit_addr = (uintptr_t)c->credit_in;
	out->credit_rkey = c->credit_mr ? c->credit_mr->rkey : 0;
	pthread_mutex_lock(&c->reg_lock);
	for (unsigned i = 0; i < PRECOPY_MAX_REGIONS; i++) {
		out->exposed[i] = c->exp[i] != NULL;
		out->rkey[i] = c->exp[i] ? c->exp[i]->rkey : 0;
	}
	pthread_mutex_unlock(&c->reg_lock);
	return 0;
}

static int rd_link_stats(struct pc_transport *t, unsigned chan, struct pc_tp_link_stats *out)
{
	struct rd_conn *c = (struct rd_conn *)t;

	if (!out || chan >= c->base.nchan)
		return -EINVAL;
	return rd_sq_link_stats(c, &c->ch[chan], out);
}

const struct pc_transport_ops pc_rdma_ops = {
	.scheme = "rdma",
	.syntax = "rdma:HOST:PORT",
	.caps = PC_TCAP_DIRECT_WRITE | PC_TCAP_NEEDS_REG | PC_TCAP_AUTH_KEY,
	.listen = rd_listen,
	.listener_addr = rd_listener_addr,
	.accept = rd_accept,
	.listener_abort = rd_listener_abort,
	.listener_close = rd_listener_close,
	.connect = rd_connect,
	.abort = rd_abort,
	.close = rd_close,
	.expose_region = rd_expose_region,
	.unexpose_all = rd_unexpose_all,
	.reg_local = rd_reg_local,
	.reg_stats = rd_reg_stats,
	.link_stats = rd_link_stats,
	.send_msg = rd_send_msg,
	.recv_msg = rd_recv_msg,
	.write_pages = rd_write_pages,
};

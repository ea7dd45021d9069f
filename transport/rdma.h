/* SPDX-License-Identifier: MIT */
/*
 * rdma.h - what the RDMA verbs transport ("rdma:HOST:PORT") offers beyond
 * the ops table: statistics for benchmarks and tests.
 */
#ifndef PC_RDMA_H
#define PC_RDMA_H

#include <stdbool.h>
#include <stdint.h>

#include "transport.h"

struct ibv_pd;
struct ibv_qp;

/** Counters of one RDMA connection (pc_rdma_stats()). */
struct pc_rdma_stats {
	/* Guest memory registered: the sending side's reg_local ranges (or
	 * their chunks), the receiving side's exposed regions. */
	uint64_t reg_ns;       /**< time spent in ibv_reg_mr for guest memory */
	uint64_t reg_bytes;    /**< bytes of guest memory registered */
	uint64_t reg_count;    /**< memory regions registered (chunks, ranges, regions) */
	uint64_t write_wrs;    /**< RDMA WRITE work requests posted */
	uint64_t write_bytes;  /**< bytes written by them */
	uint64_t send_wrs;     /**< SEND work requests posted (fragments) */
	/* Zero copy, counted where the work requests are posted: bytes of
	 * RDMA WRITEs whose scatter-gather entries lie in guest memory the
	 * sending side registered (reg_local), and bytes copied into SEND
	 * fragments (messages; page data taking that road would be a bounce
	 * buffer). For write_pages() alone write_guest_bytes == write_bytes. */
	uint64_t write_guest_bytes;
	uint64_t send_bytes;
	uint64_t credit_waits; /**< times a sender waited for receive credits */
	/* Queue pair attributes of channel 0 as the device reports them. */
	unsigned qp_timeout, qp_retry_cnt, qp_rnr_retry;
};

/**
 * pc_rdma_stats() - copy @t's counters into @out.
 * Return: 0; -EINVAL if @t is not an RDMA connection.
 */
int pc_rdma_stats(struct pc_transport *t, struct pc_rdma_stats *out);

/*
 * Internal, for tests that play a hostile peer: the verbs objects behind
 * an RDMA connection, valid until pc_tp_close(). A queue pair of the
 * test's own created in @pd can use any key of the connection, which
 * tells what a key alone gives, apart from what the queue pairs allow.
 */
struct pc_rdma_verbs {
	struct ibv_pd *pd;
	struct ibv_qp *qp[PRECOPY_MAX_CHANNELS];
	uint64_t credit_addr;     /**< the credit words the peer writes */
	uint32_t credit_rkey;
	bool exposed[PRECOPY_MAX_REGIONS]; /**< registered for the peer now */
	uint32_t rkey[PRECOPY_MAX_REGIONS];
};

/** pc_rdma_verbs() - fill @out for @t. Return: 0; -EINVAL if not RDMA. */
int pc_rdma_verbs(struct pc_transport *t, struct pc_rdma_verbs *out);

/**
 * pc_rdma_local_keys() - the keys of the memory region write_pages() uses
 * for local @addr (registered now if it was not).
 * Return: 0; -ENOENT if @addr is not in a reg_local() range; -EINVAL.
 */
int pc_rdma_local_keys(struct pc_transport *t, const void *addr, uint32_t *lkey,
		       uint32_t *rkey);

#endif /* PC_RDMA_H */

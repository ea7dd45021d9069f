/* SPDX-License-Identifier: MIT */
/*
 * rdma.h - what the RDMA verbs transport ("rdma:HOST:PORT") offers beyond
 * the ops table: statistics for benchmarks and tests.
 */
#ifndef PC_RDMA_H
#define PC_RDMA_H

#include <stdint.h>

#include "transport.h"

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
	uint64_t credit_waits; /**< times a sender waited for receive credits */
	/* Queue pair attributes of channel 0 as the device reports them. */
	unsigned qp_timeout, qp_retry_cnt, qp_rnr_retry;
};

/**
 * pc_rdma_stats() - copy @t's counters into @out.
 * Return: 0; -EINVAL if @t is not an RDMA connection.
 */
int pc_rdma_stats(struct pc_transport *t, struct pc_rdma_stats *out);

#endif /* PC_RDMA_H */

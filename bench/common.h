/* SPDX-License-Identifier: MIT */
/*
 * common.h - what the benchmarks share: clocks, a destination session
 * received in a thread, sorting for medians, and the loopback send loop
 * that several of them measure as their baseline.
 */
#ifndef PC_BENCH_COMMON_H
#define PC_BENCH_COMMON_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "precopy.h"

/** pcb_clock() - clock @id (CLOCK_MONOTONIC, a CPU-time clock) in seconds. */
double pcb_clock(clockid_t id);

/** pcb_now() - monotonic time in seconds. */
static inline double pcb_now(void)
{
	return pcb_clock(CLOCK_MONOTONIC);
}

/** pcb_cmp_double() - qsort() comparison of doubles, ascending. */
int pcb_cmp_double(const void *a, const void *b);

/** A destination session whose precopy_incoming() runs in a thread. */
struct pcb_dest {
	struct precopy_session *s; /**< set up and listening; the caller's */
	pthread_t thread;
	int err;                   /**< precopy_incoming()'s result */
};

/** pcb_dest_start() - run precopy_incoming(@d->s) in a new thread.
 *  Return: 0 or -errno (no thread then). */
int pcb_dest_start(struct pcb_dest *d);

/** pcb_dest_join() - wait for the thread. Return: precopy_incoming()'s. */
int pcb_dest_join(struct pcb_dest *d);

/** Two sessions in this process: a destination and the source sending to it. */
struct pcb_pair {
	struct precopy_session *src;
	struct pcb_dest d;
	char uri[128]; /**< where the destination listens */
};

/**
 * pcb_pair_open() - @p->d.s receiving @len bytes into @dst, listening on
 * @listen (with the "populate" parameter 0 unless @populate), and @p->src
 * sending them from @src with @params and @cb (either may be NULL).
 * Return: 0 or -errno; pcb_pair_close() either way.
 */
int pcb_pair_open(struct pcb_pair *p, const char *listen, void *src, void *dst, size_t len,
		  const struct precopy_params *params, const struct precopy_callbacks *cb,
		  bool populate);

/** pcb_pair_migrate() - migrate from @p->src to @p->d.s, the destination in
 *  a thread. Return: 0, or the source's or else the destination's -errno. */
int pcb_pair_migrate(struct pcb_pair *p);

/** pcb_pair_close() - delete both sessions (those that were made). */
void pcb_pair_close(struct pcb_pair *p);

/**
 * pcb_loopback_rate() - send @len bytes from @src over a TCP loopback
 * connection in 1 MiB send() calls, received into @dst (NULL: drained).
 * Return: bytes per second from connect() to the last byte received, or 0
 * if not all of them arrived.
 */
double pcb_loopback_rate(const uint8_t *src, uint8_t *dst, size_t len);

#endif /* PC_BENCH_COMMON_H */

/* SPDX-License-Identifier: MIT */
/* tp_pair.h - a connected transport pair for the benchmarks that drive a
 * transport directly (they see the transports' interface). */
#ifndef PC_BENCH_TP_PAIR_H
#define PC_BENCH_TP_PAIR_H

#include "transport.h"

/** Two transport endpoints connected to each other in this process. */
struct pcb_tp_pair {
	const struct pc_transport_ops *ops;
	struct pc_listener *l;
	struct pc_transport *a, *b;
	char addr[256];
	unsigned nchan;
	int cerr;
};

/**
 * pcb_tp_open() - @p->b accepted from a listener of @ops on @listen,
 * @p->a connected to it with @nchan channels.
 * Return: 0 or -errno; pcb_tp_close() either way.
 */
int pcb_tp_open(struct pcb_tp_pair *p, const struct pc_transport_ops *ops, const char *listen,
		unsigned nchan);

/** pcb_tp_close() - close both ends and the listener (those that were made). */
void pcb_tp_close(struct pcb_tp_pair *p);

#endif /* PC_BENCH_TP_PAIR_H */

/* SPDX-License-Identifier: MIT */
/* tp_pair.c - a connected transport pair (tp_pair.h). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "tp_pair.h"

static void *tp_connect(void *arg)
{
	struct pcb_tp_pair *p = arg;
	struct pc_transport_opts o = { .channels = p->nchan };

	p->cerr = pc_tp_connect(p->ops, p->addr, &o, &p->a);
	return NULL;
}

int pcb_tp_open(struct pcb_tp_pair *p, const struct pc_transport_ops *ops, const char *listen,
		unsigned nchan)
{
	struct pc_transport_opts o = { 0 };
	char uri[300];
	pthread_t t;
	int err;

	memset(p, 0, sizeof(*p));
	p->ops = ops;
	p->nchan = nchan;
	err = pc_tp_listen(ops, listen, &o, &p->l);
	if (err)
		return err;
	pc_tp_listener_addr(p->l, uri, sizeof(uri));
	snprintf(p->addr, sizeof(p->addr), "%s", strchr(uri, ':') + 1);
	pthread_create(&t, NULL, tp_connect, p);
	err = pc_tp_accept(p->l, &o, &p->b);
	pthread_join(t, NULL);
	if (!err)
		err = p->cerr;
	return err;
}

void pcb_tp_close(struct pcb_tp_pair *p)
{
	pc_tp_close(p->a);
	pc_tp_close(p->b);
	if (p->l)
		pc_tp_listener_close(p->l);
}

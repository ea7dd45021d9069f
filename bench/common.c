/* SPDX-License-Identifier: MIT */
/* common.c - what the benchmarks share (common.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

double pcb_clock(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int pcb_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void *dest_main(void *arg)
{
	struct pcb_dest *d = arg;

	d->err = precopy_incoming(d->s);
	return NULL;
}

int pcb_dest_start(struct pcb_dest *d)
{
	return -pthread_create(&d->thread, NULL, dest_main, d);
}

int pcb_dest_join(struct pcb_dest *d)
{
	pthread_join(d->thread, NULL);
	return d->err;
}

int pcb_pair_open(struct pcb_pair *p, const char *listen, void *src, void *dst, size_t len,
		  const struct precopy_params *params, const struct precopy_callbacks *cb,
		  bool populate)
{
	int err;

	*p = (struct pcb_pair){ 0 };
	err = precopy_new(PRECOPY_ROLE_DEST, NULL, NULL, &p->d.s);
	if (!err && precopy_add_region(p->d.s, dst, len, PRECOPY_DIRTY_AUTO) < 0)
		err = -EINVAL;
	if (!err && !populate)
		err = precopy_set_param(p->d.s, PRECOPY_PARAM_POPULATE, 0);
	if (!err)
		err = precopy_listen(p->d.s, listen);
	if (!err)
		err = precopy_local_uri(p->d.s, p->uri, sizeof(p->uri));
	if (!err)
		err = precopy_new(PRECOPY_ROLE_SOURCE, params, cb, &p->src);
	if (!err && precopy_add_region(p->src, src, len, PRECOPY_DIRTY_AUTO) < 0)
		err = -EINVAL;
	return err;
}

int pcb_pair_migrate(struct pcb_pair *p)
{
	int err = pcb_dest_start(&p->d);

	if (err)
		return err;
	err = precopy_migrate(p->src, p->uri);
	if (pcb_dest_join(&p->d) && !err)
		err = p->d.err;
	return err;
}

void pcb_pair_close(struct pcb_pair *p)
{
	if (p->src)
		precopy_delete(&p->src);
	if (p->d.s)
		precopy_delete(&p->d.s);
}

struct sink {
	int lfd;
	uint8_t *dst; /* NULL: drain */
	size_t len;
};

static void *sink_main(void *arg)
{
	static uint8_t drain[1 << 20];
	struct sink *k = arg;
	int fd = accept(k->lfd, NULL, NULL);
	size_t got = 0;

	while (fd >= 0 && got < k->len) {
		ssize_t n = k->dst ? recv(fd, k->dst + got, k->len - got, 0)
				   : recv(fd, drain, sizeof(drain), 0);

		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (fd >= 0)
		close(fd);
	return NULL;
}

double pcb_loopback_rate(const uint8_t *src, uint8_t *dst, size_t len)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	struct sink k = { .dst = dst, .len = len };
	pthread_t t;
	double t0, t1;
	int fd, one = 1;
	size_t sent = 0;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	k.lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (k.lfd < 0 || bind(k.lfd, (struct sockaddr *)&a, sizeof(a)) || listen(k.lfd, 1) ||
	    getsockname(k.lfd, (struct sockaddr *)&a, &al) ||
	    pthread_create(&t, NULL, sink_main, &k)) {
		if (k.lfd >= 0)
			close(k.lfd);
		return 0;
	}
	fd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	t0 = pcb_now();
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
		while (sent < len) {
			size_t n = len - sent < (1u << 20) ? len - sent : (1u << 20);
			ssize_t r = send(fd, src + sent, n, 0);

			if (r <= 0)
				break;
			sent += (size_t)r;
		}
	else
		shutdown(k.lfd, SHUT_RDWR); /* wakes the accept() */
	close(fd);
	pthread_join(t, NULL);
	t1 = pcb_now();
	close(k.lfd);
	return sent == len ? (double)len / (t1 - t0) : 0;
}

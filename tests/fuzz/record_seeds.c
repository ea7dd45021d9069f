/* SPDX-License-Identifier: MIT */
/*
 * record_seeds.c - record real migration streams as fuzzer seeds.
 *
 *   build/tests/fuzz/record_seeds tests/fuzz/corpus
 *
 * Migrates small synthetic guests (PC_FEED_RAM bytes) over TCP loopback
 * through a recording proxy and saves what the source sent after the TCP
 * hello, one file per scenario: channel 0 as is, or with several channels
 * every channel's bytes as chunks of feed.h's multi-channel format in the
 * order the proxy read them. Each recording is then fed back with
 * pc_feed_dest() and must verify, so a seed is a stream the destination
 * accepts.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "feed.h"
#include "harness.h"

struct proxy {
	int lfd;
	unsigned short dst_port;
	unsigned nchan; /* connections the source opens */
	uint8_t *rec;
	size_t rec_len, rec_cap;
};

/* One proxied connection: the source's (a) and the destination's (b). */
struct leg {
	int a, b;
	uint8_t hello[32];
	size_t skipped; /* bytes of the TCP hello seen */
	bool open;
};

static int tcp_to(unsigned short port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		perror("record_seeds: connect");
		exit(1);
	}
	return fd;
}

static void record(struct proxy *p, const uint8_t *b, size_t n)
{
	if (p->rec_len + n > p->rec_cap) {
		p->rec_cap = (p->rec_len + n) * 2;
		p->rec = realloc(p->rec, p->rec_cap);
		if (!p->rec)
			exit(1);
	}
	memcpy(p->rec + p->rec_len, b, n);
	p->rec_len += n;
}

/* What the source sent on @l after its TCP hello: as is on one channel,
 * else as chunks of the multi-channel input format (feed.h), in the order
 * the proxy read them. */
static void record_leg(struct proxy *p, struct leg *l, const uint8_t *b, size_t n)
{
	size_t skip = l->skipped < 32 ? 32 - l->skipped : 0;

	skip = skip < n ? skip : n;
	memcpy(l->hello + l->skipped, b, skip);
	l->skipped += skip;
	b += skip;
	n -= skip;
	if (p->nchan == 1) {
		record(p, b, n);
		return;
	}
	while (n) {
		size_t k = n < 65535 ? n : 65535;
		uint8_t h[3] = { l->hello[6], (uint8_t)k, (uint8_t)(k >> 8) };

		record(p, h, 3);
		record(p, b, k);
		b += k;
		n -= k;
	}
}

static void *proxy_main(void *arg)
{
	struct proxy *p = arg;
	struct leg legs[PC_FEED_CHANNELS_MAX];
	unsigned nlegs = 0, open = 0;
	uint8_t buf[65536];

	if (p->nchan > 1) {
		uint8_t h[5] = { 'P', 'C', 'F', 'M', (uint8_t)(p->nchan - 2) };

		record(p, h, 5);
	}
	while (nlegs < p->nchan || open) {
		struct pollfd f[1 + 2 * PC_FEED_CHANNELS_MAX];
		unsigned nf = 0;

		f[nf++] = (struct pollfd){ nlegs < p->nchan ? p->lfd : -1, POLLIN, 0 };
		for (unsigned i = 0; i < nlegs; i++) {
			f[nf++] = (struct pollfd){ legs[i].open ? legs[i].a : -1, POLLIN, 0 };
			f[nf++] = (struct pollfd){ legs[i].open ? legs[i].b : -1, POLLIN, 0 };
		}
		if (poll(f, nf, -1) < 0)
			break;
		if (f[0].revents) {
			legs[nlegs] = (struct leg){ .a = accept(p->lfd, NULL, NULL),
						    .b = tcp_to(p->dst_port), .open = true };
			nlegs++;
			open++;
		}
		for (unsigned i = 0; i < nlegs && i < (nf - 1) / 2; i++) {
			struct leg *l = &legs[i];
			ssize_t n;

			if (!l->open)
				continue;
			if (f[1 + 2 * i].revents) {
				n = read(l->a, buf, sizeof(buf));
				if (n <= 0) {
					shutdown(l->b, SHUT_WR);
				} else {
					record_leg(p, l, buf, (size_t)n);
					if (write(l->b, buf, (size_t)n) != n)
						n = -1;
				}
				if (n <= 0) {
					l->open = false;
					open--;
					continue;
				}
			}
			if (f[2 + 2 * i].revents) {
				n = read(l->b, buf, sizeof(buf));
				if (n <= 0 || write(l->a, buf, (size_t)n) != n) {
					l->open = false;
					open--;
				}
			}
		}
	}
	for (unsigned i = 0; i < nlegs; i++) {
		close(legs[i].a);
		close(legs[i].b);
	}
	return NULL;
}

static void scenario(const char *dir, const char *name, double rate, unsigned zero_pct,
		     unsigned free_pct, bool iterate, unsigned channels)
{
	struct pc_guest_opts go = { .ram = PC_FEED_RAM, .dirty_rate = rate,
				    .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
				    .zero_pct = zero_pct, .free_pct = free_pct, .seed = 3 };
	struct sockaddr_in la = { .sin_family = AF_INET };
	socklen_t ll = sizeof(la);
	struct proxy px = { .nchan = channels };
	struct precopy_params prm;
	struct pc_guest *g;
	struct h_dest d;
	struct h_src s;
	pthread_t thr;
	char uri[64], path[512], why[PRECOPY_ERRMSG_MAX];
	uint64_t *free_bm, nfree;
	FILE *f;
	int err;

	precopy_params_init(&prm);
	prm.channels = channels;
	if (iterate) {
		prm.downtime_limit_ms = 1;
		prm.max_iterations = 3; /* then the watchdog forces the switchover */
		prm.max_bandwidth = 128 << 10; /* a bulk pass of 0.5 s: pages get dirty */
	}
	if (pc_guest_new(&go, &g) || pc_guest_start(g) || h_dest_start(&d, PC_FEED_RAM)) {
		fprintf(stderr, "record_seeds: set-up failed\n");
		exit(1);
	}
	px.dst_port = (unsigned short)atoi(strrchr(d.uri, ':') + 1);
	px.lfd = socket(AF_INET, SOCK_STREAM, 0);
	la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(px.lfd, (struct sockaddr *)&la, sizeof(la)) || listen(px.lfd, PC_FEED_CHANNELS_MAX) ||
	    getsockname(px.lfd, (struct sockaddr *)&la, &ll)) {
		perror("record_seeds: proxy");
		exit(1);
	}
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%u", ntohs(la.sin_port));
	pthread_create(&thr, NULL, proxy_main, &px);
	if (h_src_new(&s, g, &prm, PRECOPY_DIRTY_AUTO)) {
		fprintf(stderr, "record_seeds: source set-up failed\n");
		exit(1);
	}
	free_bm = pc_guest_free_bitmap(g, &nfree);
	if (free_bm) {
		precopy_region_hint_free(s.s, 0, 0, free_bm, nfree);
		free(free_bm);
	}
	h_src_start(&s, uri);
	err = h_src_join(&s);
	if (err || h_dest_join(&d)) {
		fprintf(stderr, "record_seeds: %s: migration failed (%d)\n", name, err);
		exit(1);
	}
	pthread_join(thr, NULL);
	close(px.lfd);
	h_src_free(&s);
	h_dest_free(&d);
	pc_guest_delete(&g);

	err = pc_feed_dest(px.rec, px.rec_len, why, sizeof(why));
	if (err) {
		fprintf(stderr, "record_seeds: %s: the recording does not replay: %s\n", name, why);
		exit(1);
	}
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(px.rec, 1, px.rec_len, f) != px.rec_len || fclose(f)) {
		perror(path);
		exit(1);
	}
	printf("%s: %zu bytes\n", path, px.rec_len);
	free(px.rec);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: record_seeds DIR\n");
		return 2;
	}
	scenario(argv[1], "idle", 0, 0, 0, false, 1);
	scenario(argv[1], "idle-half-zero", 0, 50, 0, false, 1);
	scenario(argv[1], "free-hints", 0, 25, 25, false, 1);
	scenario(argv[1], "dirtying-iterations", 32 << 10, 10, 0, true, 1);
	/* several channels (feed.h's multi-channel format): the pages are all
	 * in channel 0's first chunk; the others carry the ends of passes */
	scenario(argv[1], "idle-2ch", 0, 0, 0, false, 2);
	scenario(argv[1], "dirtying-iterations-3ch", 32 << 10, 10, 0, true, 3);
	return 0;
}

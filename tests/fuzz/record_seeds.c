/* SPDX-License-Identifier: MIT */
/*
 * record_seeds.c - record real migration streams as fuzzer seeds.
 *
 *   build/tests/fuzz/record_seeds tests/fuzz/corpus
 *
 * Migrates small synthetic guests (PC_FEED_RAM bytes) over TCP loopback
 * through a recording proxy and saves what the source sent on channel 0
 * after the TCP hello, one file per scenario. Each recording is then fed
 * back with pc_feed_dest() and must verify, so a seed is a stream the
 * destination accepts.
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
	uint8_t *rec;
	size_t rec_len, rec_cap;
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

static void *proxy_main(void *arg)
{
	struct proxy *p = arg;
	int a = accept(p->lfd, NULL, NULL), b = tcp_to(p->dst_port);
	size_t skipped = 0;
	uint8_t buf[65536];
	bool a_open = true, b_open = true;

	while (a_open && b_open) {
		struct pollfd f[2] = { { a, POLLIN, 0 }, { b, POLLIN, 0 } };

		if (poll(f, 2, -1) < 0)
			break;
		if (f[0].revents) {
			ssize_t n = read(a, buf, sizeof(buf));

			if (n <= 0) {
				a_open = false;
				shutdown(b, SHUT_WR);
			} else {
				size_t skip = skipped < 32 ? 32 - skipped : 0;

				skip = skip < (size_t)n ? skip : (size_t)n;
				skipped += skip;
				record(p, buf + skip, (size_t)n - skip);
				if (write(b, buf, (size_t)n) != n)
					b_open = false;
			}
		}
		if (f[1].revents) {
			ssize_t n = read(b, buf, sizeof(buf));

			if (n <= 0 || write(a, buf, (size_t)n) != n)
				b_open = false;
		}
	}
	close(a);
	close(b);
	return NULL;
}

static void scenario(const char *dir, const char *name, double rate, unsigned zero_pct,
		     unsigned free_pct, bool iterate)
{
	struct pc_guest_opts go = { .ram = PC_FEED_RAM, .dirty_rate = rate,
				    .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
				    .zero_pct = zero_pct, .free_pct = free_pct, .seed = 3 };
	struct sockaddr_in la = { .sin_family = AF_INET };
	socklen_t ll = sizeof(la);
	struct proxy px = { 0 };
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
	if (bind(px.lfd, (struct sockaddr *)&la, sizeof(la)) || listen(px.lfd, 1) ||
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
	scenario(argv[1], "idle", 0, 0, 0, false);
	scenario(argv[1], "idle-half-zero", 0, 50, 0, false);
	scenario(argv[1], "free-hints", 0, 25, 25, false);
	scenario(argv[1], "dirtying-iterations", 32 << 10, 10, 0, true);
	return 0;
}

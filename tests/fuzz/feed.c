/* SPDX-License-Identifier: MIT */
/* feed.c - see feed.h. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "feed.h"
#include "precopy.h"
#include "session.h"
#include "transport.h"

struct pump {
	int fd;
	const uint8_t *data;
	size_t len;
};

/* Write the input, then half-close; meanwhile and afterwards read and drop
 * whatever the destination answers, until it closes. Never blocks on one
 * direction while the other is needed, so neither side can wedge. */
static void *pump_main(void *arg)
{
	struct pump *p = arg;
	size_t off = 0;
	bool wr_done = false;
	uint8_t sink[4096];

	for (;;) {
		struct pollfd pfd = { .fd = p->fd, .events = POLLIN };
		ssize_t n;

		if (!wr_done && off == p->len) {
			shutdown(p->fd, SHUT_WR);
			wr_done = true;
		}
		if (!wr_done)
			pfd.events |= POLLOUT;
		if (poll(&pfd, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
			n = recv(p->fd, sink, sizeof(sink), MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				break; /* the destination is done */
		}
		if (!wr_done && (pfd.revents & POLLOUT)) {
			n = send(p->fd, p->data + off, p->len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0)
				off += (size_t)n;
			else if (n < 0 && errno != EAGAIN && errno != EINTR)
				wr_done = true; /* it stopped reading: fine */
		}
	}
	return NULL;
}

int pc_feed_dest(const uint8_t *data, size_t len, char *err, size_t errlen)
{
	struct precopy_session *s = NULL;
	struct pc_listener *l = NULL;
	struct pump p = { .data = data, .len = len };
	pthread_t thr;
	void *ram;
	int sv[2], rc;

	if (err && errlen)
		err[0] = '\0';
	ram = mmap(NULL, PC_FEED_RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED)
		return -ENOMEM;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
		rc = -errno;
		goto out_unmap;
	}
	rc = precopy_new(PRECOPY_ROLE_DEST, NULL, NULL, &s);
	if (!rc) {
		rc = precopy_add_region(s, ram, PC_FEED_RAM, PRECOPY_DIRTY_AUTO);
		rc = rc < 0 ? rc : 0;
	}
	if (!rc)
		rc = pc_tcp_listener_from_fds(&sv[0], 1, &l);
	if (!rc) {
		rc = pc_session_set_listener(s, l);
		if (rc)
			l->ops->listener_close(l);
	} else {
		close(sv[0]);
	}
	if (rc) {
		close(sv[1]);
		goto out;
	}
	p.fd = sv[1];
	if (pthread_create(&thr, NULL, pump_main, &p)) {
		close(sv[1]);
		rc = -EAGAIN;
		goto out;
	}
	rc = precopy_incoming(s);
	if (err && errlen)
		precopy_strerror(s, err, errlen);
	/* The session closed its end; the pump sees EOF and returns. */
	pthread_join(thr, NULL);
	close(sv[1]);
out:
	if (s)
		precopy_delete(&s);
out_unmap:
	munmap(ram, PC_FEED_RAM);
	return rc;
}

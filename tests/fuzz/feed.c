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
#include "page.h"
#include "precopy.h"
#include "session.h"
#include "transport.h"

/* One piece of the input for one channel. */
struct chunk {
	unsigned chan;
	const uint8_t *data;
	size_t len, off; /* off: bytes sent */
};

struct pump {
	int fd[PC_FEED_CHANNELS_MAX];
	unsigned nchan;
	struct chunk *chunks;
	size_t nchunks;
};

/* Split @data into chunks: the whole of it for channel 0, or the chunks
 * of a multi-channel input (see feed.h). Returns the channel count. */
static unsigned parse(const uint8_t *data, size_t len, struct chunk *out, size_t *n)
{
	unsigned nchan;
	size_t i = 5;

	*n = 0;
	if (len < 5 || memcmp(data, PC_FEED_MULTI_MAGIC, 4)) {
		out[(*n)++] = (struct chunk){ 0, data, len, 0 };
		return 1;
	}
	nchan = 2 + data[4] % (PC_FEED_CHANNELS_MAX - 1);
	while (i + 3 <= len) {
		size_t l = (size_t)data[i + 1] | (size_t)data[i + 2] << 8;

		if (l > len - i - 3)
			l = len - i - 3;
		out[(*n)++] = (struct chunk){ data[i] % nchan, data + i + 3, l, 0 };
		i += 3 + l;
	}
	return nchan;
}

/* Write the chunks in order, each channel's in its order; a channel the
 * destination does not read (yet) holds back only its own later chunks.
 * A channel is half-closed once its chunks are out. Meanwhile and
 * afterwards read and drop whatever the destination answers, until it
 * closes. */
static void *pump_main(void *arg)
{
	struct pump *p = arg;
	bool open_rd[PC_FEED_CHANNELS_MAX], wr_shut[PC_FEED_CHANNELS_MAX] = { false };
	uint8_t sink[4096];

	for (unsigned c = 0; c < p->nchan; c++)
		open_rd[c] = true;
	for (;;) {
		struct pollfd pfd[PC_FEED_CHANNELS_MAX];
		bool blocked[PC_FEED_CHANNELS_MAX] = { false }, pending[PC_FEED_CHANNELS_MAX] = { false };
		bool progress = false, any_rd = false;

		for (size_t k = 0; k < p->nchunks; k++) {
			struct chunk *ch = &p->chunks[k];
			ssize_t n;

			if (ch->off == ch->len)
				continue;
			if (blocked[ch->chan]) {
				pending[ch->chan] = true;
				continue;
			}
			n = send(p->fd[ch->chan], ch->data + ch->off, ch->len - ch->off,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0) {
				ch->off += (size_t)n;
				progress = true;
			} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
				/* it stopped reading this channel: drop the rest */
				for (size_t j = k; j < p->nchunks; j++)
					if (p->chunks[j].chan == ch->chan)
						p->chunks[j].off = p->chunks[j].len;
				progress = true;
				continue;
			}
			if (ch->off < ch->len) {
				blocked[ch->chan] = true;
				pending[ch->chan] = true;
			}
		}
		for (unsigned c = 0; c < p->nchan; c++) {
			if (!wr_shut[c] && !pending[c]) {
				shutdown(p->fd[c], SHUT_WR);
				wr_shut[c] = true;
			}
		}
		for (unsigned c = 0; c < p->nchan; c++) {
			pfd[c] = (struct pollfd){ .fd = open_rd[c] ? p->fd[c] : -1, .events = POLLIN };
			if (pending[c])
				pfd[c].events |= POLLOUT;
			any_rd |= open_rd[c];
		}
		if (!any_rd)
			break;
		if (poll(pfd, p->nchan, progress ? 0 : -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (unsigned c = 0; c < p->nchan; c++) {
			if (!(pfd[c].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			for (;;) {
				ssize_t n = recv(p->fd[c], sink, sizeof(sink), MSG_DONTWAIT);

				if (n > 0)
					continue;
				if (n == 0 || (errno != EAGAIN && errno != EINTR))
					open_rd[c] = false; /* the destination is done */
				break;
			}
		}
	}
	return NULL;
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return le32(p) | (uint64_t)le32(p + 4) << 32;
}

/*
 * The checksum of region 0 in the first COMPLETE record of channel 0's
 * stream: the one a destination that reported success verified. Frames
 * are walked as the transport does (24-byte headers); false if there is
 * none.
 */
static bool complete_sum(const struct pump *p, uint64_t *sum)
{
	uint8_t *s0, *f;
	size_t n = 0, off = 0;
	bool found = false;

	for (size_t k = 0; k < p->nchunks; k++)
		if (p->chunks[k].chan == 0)
			n += p->chunks[k].len;
	s0 = malloc(n ? n : 1);
	if (!s0)
		return false;
	for (size_t k = 0, o = 0; k < p->nchunks; k++) {
		if (p->chunks[k].chan == 0) {
			memcpy(s0 + o, p->chunks[k].data, p->chunks[k].len);
			o += p->chunks[k].len;
		}
	}
	while (!found && n - off >= 24) {
		uint64_t flen = le64(s0 + off + 16);

		f = s0 + off + 24;
		if (flen > n - off - 24)
			break;
		/* a message with a COMPLETE record: type 7, then regions */
		if (le32(s0 + off) == 0x50434D31u && flen >= 8 + 8 + 16 &&
		    f[0] == 7 && f[1] == 0) {
			*sum = le64(f + 8 + 8 + 8);
			found = true;
		}
		off += 24 + (size_t)flen;
	}
	free(s0);
	return found;
}

int pc_feed_dest(const uint8_t *data, size_t len, char *err, size_t errlen)
{
	struct precopy_session *s = NULL;
	struct pc_listener *l = NULL;
	struct pump p = { 0 };
	int mine[PC_FEED_CHANNELS_MAX];
	pthread_t thr;
	void *ram;
	int rc = 0;

	if (err && errlen)
		err[0] = '\0';
	/* at most one chunk per 3 bytes of input, and one for a plain stream */
	p.chunks = calloc(len / 3 + 1, sizeof(*p.chunks));
	if (!p.chunks)
		return -ENOMEM;
	p.nchan = parse(data, len, p.chunks, &p.nchunks);
	ram = mmap(NULL, PC_FEED_RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED) {
		free(p.chunks);
		return -ENOMEM;
	}
	for (unsigned c = 0; c < p.nchan; c++) {
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
			rc = -errno;
			for (unsigned j = 0; j < c; j++) {
				close(mine[j]);
				close(p.fd[j]);
			}
			goto out_unmap;
		}
		mine[c] = sv[0];
		p.fd[c] = sv[1];
	}
	rc = precopy_new(PRECOPY_ROLE_DEST, NULL, NULL, &s);
	if (!rc) {
		rc = precopy_add_region(s, ram, PC_FEED_RAM, PRECOPY_DIRTY_AUTO);
		rc = rc < 0 ? rc : 0;
	}
	if (!rc)
		rc = pc_tcp_listener_from_fds(mine, p.nchan, &l);
	if (!rc) {
		rc = pc_session_set_listener(s, l);
		if (rc)
			l->ops->listener_close(l);
	} else {
		for (unsigned c = 0; c < p.nchan; c++)
			close(mine[c]);
	}
	if (!rc && pthread_create(&thr, NULL, pump_main, &p))
		rc = -EAGAIN;
	if (rc) {
		for (unsigned c = 0; c < p.nchan; c++)
			close(p.fd[c]);
		goto out;
	}
	rc = precopy_incoming(s);
	if (err && errlen)
		precopy_strerror(s, err, errlen);
	/* The session closes its ends at precopy_delete() at the latest; the
	 * pump sees end of stream on every channel and returns. */
	precopy_delete(&s);
	pthread_join(thr, NULL);
	for (unsigned c = 0; c < p.nchan; c++)
		close(p.fd[c]);
	if (rc == 0) {
		/* Verified means verified: the memory the destination handed
		 * to its guest is the memory whose checksum it compared. */
		uint64_t want, h[PC_FEED_RAM / PRECOPY_PAGE_SIZE];

		for (size_t i = 0; i < PC_FEED_RAM / PRECOPY_PAGE_SIZE; i++)
			h[i] = pc_page_hash((uint8_t *)ram + i * PRECOPY_PAGE_SIZE);
		if (!complete_sum(&p, &want) ||
		    pc_hash_combine(h, PC_FEED_RAM / PRECOPY_PAGE_SIZE) != want) {
			rc = PC_FEED_CHANGED;
			if (err && errlen)
				snprintf(err, errlen, "reported success, but the memory is not "
						      "the memory that was verified");
		}
	}
out:
	if (s)
		precopy_delete(&s);
out_unmap:
	munmap(ram, PC_FEED_RAM);
	free(p.chunks);
	return rc;
}

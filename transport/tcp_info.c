/* SPDX-License-Identifier: MIT */
/*
 * tcp_info.c - what the kernel knows about a TCP socket's link, for the
 * bandwidth estimate (struct pc_tp_link_stats), and the socket's pacing.
 *
 * struct tcp_info comes from <linux/tcp.h>, not <netinet/tcp.h>: the C
 * library's copy may lag the kernel and lack the fields used here. An
 * older kernel fills a shorter struct; optlen says how much, and a field
 * beyond it is not there.
 *
 * tcpi_busy_time (Linux 4.10) is the time, in us, during which the socket
 * had data in flight or queued and was not waiting for the application
 * ("chrono" stats, busy + rwnd-limited + sndbuf-limited, counted in
 * jiffies). tcpi_bytes_acked (4.1) is what the peer acknowledged. Their
 * changes over a window give the rate of the link as the kernel saw it,
 * whatever the time the application spent inside send(): a socket buffer
 * absorbs a send long before its bytes are on the wire.
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/sockios.h>
#include <linux/tcp.h>

#include "transport.h"

#define TCPINFO_HAS(len, field) \
	((len) >= offsetof(struct tcp_info, field) + sizeof(((struct tcp_info *)0)->field))

int pc_tcp_fd_link_stats(int fd, struct pc_tp_link_stats *out)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	int q = 0;

	memset(out, 0, sizeof(*out));
	memset(&ti, 0, sizeof(ti));
	if (fd < 0)
		return -EBADF;
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		return errno == ENOPROTOOPT ? -EOPNOTSUPP : -errno;
	if (!TCPINFO_HAS(len, tcpi_busy_time) || !TCPINFO_HAS(len, tcpi_bytes_acked))
		return -EOPNOTSUPP;
	out->source = PC_TP_LINK_TCP_INFO;
	out->busy_ns = (uint64_t)ti.tcpi_busy_time * 1000;
	out->delivered = ti.tcpi_bytes_acked;
	/* The end's round trips go over a drained queue: the path's own
	 * round trip (min_rtt, 4.10) is theirs, not the smoothed one that a
	 * full queue inflates (its delay is counted as queued bytes). */
	out->rtt_ns = (uint64_t)(TCPINFO_HAS(len, tcpi_min_rtt) && ti.tcpi_min_rtt ? ti.tcpi_min_rtt
										    : ti.tcpi_rtt) * 1000;
	if (TCPINFO_HAS(len, tcpi_delivery_rate)) {
		out->delivery_bps = ti.tcpi_delivery_rate;
		out->app_limited = ti.tcpi_delivery_rate_app_limited;
	}
	/* SIOCOUTQ: sent and unacknowledged plus not yet sent. */
	if (ioctl(fd, SIOCOUTQ, &q) == 0 && q > 0)
		out->queued = (uint64_t)q;
	else if (TCPINFO_HAS(len, tcpi_notsent_bytes))
		out->queued = ti.tcpi_notsent_bytes;
	return 0;
}

/*
 * SO_MAX_PACING_RATE caps the socket's pacing rate, and setting it turns on
 * the TCP stack's internal pacing when no fq qdisc paces for it (Linux
 * 4.13). The 32-bit form is the one every kernel takes; ~0U is "no limit",
 * and so is a rate at or above it (4 GiB/s per channel).
 */
int pc_tcp_fd_set_pacing(int fd, uint64_t bps)
{
	unsigned v = bps && bps < UINT_MAX ? (unsigned)bps : ~0U;

	if (fd < 0)
		return -EBADF;
	if (setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &v, sizeof(v)) < 0)
		return errno == ENOPROTOOPT ? -EOPNOTSUPP : -errno;
	return 0;
}

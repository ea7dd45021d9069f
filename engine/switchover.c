/* SPDX-License-Identifier: MIT */
/*
 * switchover.c - the source's handshake and its end: HELLO, the handoff of
 * memfd-backed RAM, the switchover (the guest stopped, the last pass, the
 * device state), COMPLETE and GO, and the one failure path of a migration.
 *
 * From GO on this end never resumes the guest itself: the destination
 * has been told it may. Before GO, any failure resumes it here.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "page.h"
#include "source.h"

/*
 * Send the record of @n bytes in @buf on channel 0; @n < 0: encoding
 * record @name failed. @sending words a failure to send (%s: why).
 */
int pc_src_send_encoded(struct source *src, uint8_t *buf, int n, const char *name,
			const char *sending)
{
	struct iovec v = { buf, (size_t)n };
	int err;

	if (n < 0)
		return pc_fail(src->s, n, "encoding %s", name);
	err = pc_tp_send_msg(src->tp, 0, &v, 1);
	return err ? pc_fail(src->s, err, sending, pc_err_context(src->s, err)) : 0;
}

/* Every region is a memfd and the transport can pass fds. */
static bool handoff_possible(struct source *src)
{
	struct precopy_session *s = src->s;

	if (!(src->tp->ops->caps & PC_TCAP_FD_PASS))
		return false;
	for (unsigned i = 0; i < s->nreg; i++)
		if (s->reg[i].fd < 0)
			return false;
	return true;
}

/* HELLO, HELLO_ACK: regions, capabilities, and whether the RAM is handed over. */
int pc_src_handshake(struct source *src)
{
	static const struct pc_expect hello_ack = {
		.type = PC_MSG_HELLO_ACK,
		.lost = "handshake: %s",
		.malformed = "handshake: %s",
		.other = "handshake: destination sent %s",
	};
	struct precopy_session *s = src->s;
	uint64_t lens[PRECOPY_MAX_REGIONS];
	uint8_t buf[PC_WIRE_HDR + 32 + 8 * PRECOPY_MAX_REGIONS];
	struct pc_wire_msg m;
	int n, err;

	src->postcopy = src->params.on_limit == PRECOPY_ON_LIMIT_POSTCOPY;
	/* postcopy wants the pages to cross: no handoff */
	src->handoff = !src->postcopy && handoff_possible(src);
	for (unsigned i = 0; i < s->nreg; i++)
		lens[i] = s->reg[i].len;
	n = pc_wire_enc_hello(buf, sizeof(buf),
			      PC_CAP_ALL | (src->handoff ? PC_CAP_HANDOFF : 0) |
				      (src->postcopy ? PC_CAP_POSTCOPY : 0),
			      s->nreg, lens, src->nchan);
	err = pc_src_send_encoded(src, buf, n, "HELLO", "handshake: %s");
	if (!err)
		err = pc_recv_expect(s, 0, buf, sizeof(buf), &hello_ack, &m, NULL, 0);
	if (err)
		return err;
	if (m.u.hello_ack.status)
		return pc_fail(s, m.u.hello_ack.status, "destination refused: %s",
			       m.u.hello_ack.text);
	if ((m.u.hello_ack.caps & PC_CAP_REQUIRED) != PC_CAP_REQUIRED)
		return pc_fail(s, -EPROTO, "destination lacks required capabilities (0x%llx)",
			       (unsigned long long)m.u.hello_ack.caps);
	src->handoff = src->handoff && (m.u.hello_ack.caps & PC_CAP_HANDOFF);
	if (src->postcopy && !(m.u.hello_ack.caps & PC_CAP_POSTCOPY))
		return pc_fail(s, -EOPNOTSUPP,
			       "on-limit postcopy: the destination does not take postcopy");
	return 0;
}

/* Best effort: tell the destination why we give up. */
static void send_error(struct source *src, int err)
{
	uint8_t buf[PC_WIRE_HDR + 8 + PC_WIRE_TEXT_MAX];
	char text[PRECOPY_ERRMSG_MAX];
	struct iovec v = { buf, 0 };
	int n;

	precopy_strerror(src->s, text, sizeof(text));
	n = pc_wire_enc_result(buf, sizeof(buf), PC_MSG_ERROR, err, text);
	if (n > 0) {
		v.iov_len = (size_t)n;
		pc_tp_send_msg(src->tp, 0, &v, 1);
	}
}

int pc_src_stop_guest(struct source *src)
{
	struct precopy_session *s = src->s;
	int err = s->cb.stop_vm ? s->cb.stop_vm(s->cb.opaque) : 0;

	if (err)
		return pc_fail(s, err, "stop_vm failed: %s", strerror(-err));
	src->stopped = true;
	return 0;
}

int pc_src_send_device_state(struct source *src)
{
	struct precopy_session *s = src->s;
	uint8_t hdr[PC_WIRE_HDR + 24];
	void *buf = NULL;
	size_t len = 0, off = 0;
	int err;

	if (!s->cb.save_device_state)
		return 0;
	err = s->cb.save_device_state(s->cb.opaque, &buf, &len);
	if (err)
		return pc_fail(s, err, "save_device_state failed: %s", strerror(-err));
	if (len > PC_WIRE_DEVSTATE_MAX) {
		free(buf);
		return pc_fail(s, -EFBIG, "device state of %zu bytes exceeds the limit", len);
	}
	do {
		uint32_t n = (uint32_t)(len - off < PC_WIRE_DEVSTATE_CHUNK ? len - off
									    : PC_WIRE_DEVSTATE_CHUNK);
		struct iovec v[2] = { { hdr, sizeof(hdr) }, { (uint8_t *)buf + off, n } };

		pc_wire_enc_devstate_hdr(hdr, sizeof(hdr), len, off, n);
		err = pc_tp_send_msg(src->tp, 0, v, n ? 2 : 1);
		off += n;
	} while (!err && off < len);
	free(buf);
	pthread_mutex_lock(&s->lock);
	s->st.transferred += len;
	atomic_store(&pc_device_state_last, len); /* the next migration's guess */
	pthread_mutex_unlock(&s->lock);
	if (err)
		return pc_fail(s, err, "sending device state: %s", pc_err_context(s, err));
	return 0;
}

int pc_src_verdict_and_go(struct source *src)
{
	static const struct pc_expect verdict = {
		.type = PC_MSG_RESULT,
		.type2 = PC_MSG_ERROR,
		.lost = "waiting for the destination's verdict: %s",
		.malformed = "malformed verdict from destination: %s",
		.other = "destination sent %s, expected RESULT",
	};
	uint8_t rbuf[PC_WIRE_HDR + 8 + PC_WIRE_TEXT_MAX];
	struct pc_wire_msg m;
	int err = pc_recv_expect(src->s, 0, rbuf, sizeof(rbuf), &verdict, &m, NULL, 0);

	if (err)
		return err;
	if (m.u.result.status)
		return pc_fail(src->s, m.u.result.status, "destination refused: %s",
			       m.u.result.text);
	return pc_src_go(src);
}

int pc_src_send_complete(struct source *src)
{
	struct precopy_session *s = src->s;
	uint64_t npages[PRECOPY_MAX_REGIONS], hash[PRECOPY_MAX_REGIONS];
	uint8_t buf[PC_WIRE_HDR + 8 + 16 * PRECOPY_MAX_REGIONS];
	int n;

	for (unsigned i = 0; i < s->nreg; i++) {
		npages[i] = s->reg[i].npages;
		/* handoff: the destination maps these very pages; no checksum */
		hash[i] = src->handoff ? 0 : pc_hash_combine(s->reg[i].hash, s->reg[i].npages);
	}
	n = pc_wire_enc_complete(buf, sizeof(buf), s->nreg, npages, hash);
	return pc_src_send_encoded(src, buf, n, "COMPLETE", "sending COMPLETE: %s");
}

static int complete(struct source *src)
{
	int err = pc_src_send_complete(src);

	/* Until GO the destination does not resume the guest: a lost or
	 * refusing verdict, or a cancel, makes this end the one that runs. */
	return err ? err : pc_src_verdict_and_go(src);
}

int pc_src_go(struct source *src)
{
	static const struct pc_expect answer = { .type = PC_MSG_RESULT };
	struct precopy_session *s = src->s;
	uint8_t buf[PC_WIRE_HDR + 8 + PC_WIRE_TEXT_MAX];
	struct pc_wire_msg m;
	struct iovec v = { buf, 0 };
	int err;

	/* GO: from here this end never resumes the guest, unless the
	 * destination says it could not; a cancel is refused (see
	 * precopy_cancel()). */
	pthread_mutex_lock(&s->lock);
	if (atomic_load(&s->cancel)) {
		pthread_mutex_unlock(&s->lock);
		return -ECANCELED;
	}
	atomic_store(&s->committed, true);
	pthread_mutex_unlock(&s->lock);
	v.iov_len = (size_t)pc_wire_enc_go(buf, sizeof(buf));
	err = pc_tp_send_msg(src->tp, 0, &v, 1);
	if (!err)
		err = pc_recv_expect(s, 0, buf, sizeof(buf), &answer, &m, NULL, 0);
	if (err > 0)
		err = -EPROTO; /* not RESULT */
	if (err) {
		src->unconfirmed = true;
		return pc_fail(s, -ENOTRECOVERABLE,
			       "the destination verified the guest and was told to resume it, but did not say it had (%s); the guest may be running there and was not resumed here",
			       err == -EPROTO ? "malformed answer" : pc_err_context(s, err));
	}
	if (m.u.result.status)
		return pc_fail(s, m.u.result.status,
			       "the destination could not resume the guest: %s; it runs here again",
			       m.u.result.text);
	return 0;
}

/* The device state and the end, the guest stopped since @t_stop. */
static int finish(struct source *src, uint64_t t_stop)
{
	struct precopy_session *s = src->s;
	int err = pc_src_send_device_state(src);

	if (!err)
		err = complete(src);
	if (err)
		return err;
	pthread_mutex_lock(&s->lock);
	s->st.downtime = (pc_now() - t_stop) / PC_NSEC_PER_MSEC;
	s->st.remaining = 0;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* --- handoff: the RAM itself changes hands ------------------------------- */

/*
 * Stop the guest, hand the memfds over, send the device state and
 * COMPLETE. No page crosses: the downtime does not depend on RAM size. On
 * failure (pc_src_failed()) the guest resumes; the destination unmaps what
 * it mapped and never wrote into it.
 */
int pc_src_handoff(struct source *src)
{
	struct precopy_session *s = src->s;
	uint64_t t_stop;
	int err;

	pc_set_status(s, PRECOPY_STATUS_SWITCHOVER);
	t_stop = pc_now();
	err = pc_src_stop_guest(src);
	if (err)
		return err;
	src->peer_waits = true;
	for (unsigned i = 0; i < s->nreg; i++) {
		struct pc_region *r = &s->reg[i];
		uint8_t buf[PC_WIRE_HDR + 24];
		struct iovec v = { buf, 0 };
		int n = pc_wire_enc_handoff(buf, sizeof(buf), i, r->fd_offset, r->len);

		if (n < 0)
			return pc_fail(s, n, "encoding HANDOFF of region %u", i);
		v.iov_len = (size_t)n;
		err = pc_tp_send_fds(src->tp, 0, &r->fd, 1, &v, 1);
		if (err)
			return pc_fail(s, err, "handing over region %u: %s", i,
				       pc_err_context(s, err));
	}
	return finish(src, t_stop);
}

/* --- the switchover ------------------------------------------------------ */

/*
 * The watchdog wants to force the switchover. Record what it is expected
 * to cost; refuse (abort, the guest keeps running) if that is above
 * max-forced-downtime. Return: 0 to go on with the forced switchover.
 */
int pc_src_check_forced(struct source *src)
{
	struct precopy_session *s = src->s;
	uint64_t ns, ms, bound;
	enum pc_wd_verdict why;

	pthread_mutex_lock(&src->plock);
	ns = src->pol.expected_downtime_ns;
	why = src->pol.last_verdict;
	pthread_mutex_unlock(&src->plock);
	ms = ns == UINT64_MAX ? UINT64_MAX : ns / PC_NSEC_PER_MSEC;
	pthread_mutex_lock(&s->lock);
	bound = s->xparams.max_forced_downtime_ms;
	s->st.forced_expected_downtime = ms;
	if (bound && ms > bound)
		s->st.forced_aborted = true;
	pthread_mutex_unlock(&s->lock);
	if (!bound || ms <= bound)
		return 0;
	if (ms == UINT64_MAX)
		return pc_fail(s, -ETIMEDOUT,
			       "watchdog: %s; the downtime of a forced switchover cannot be predicted (no bandwidth estimate) and max-forced-downtime is %llu ms; migration aborted, guest keeps running",
			       pc_wd_reason(why), (unsigned long long)bound);
	return pc_fail(s, -ETIMEDOUT,
		       "watchdog: %s; a forced switchover would pause the guest about %llu ms, above max-forced-downtime %llu ms; migration aborted, guest keeps running",
		       pc_wd_reason(why), (unsigned long long)ms, (unsigned long long)bound);
}

/*
 * The final burst is not held to max-bandwidth, but it must not outrun
 * the link either: after a capped pass every channel has a window sized
 * for short slices at wire speed, and all of them emptied at once
 * overflow the bottleneck's queue; a loss at a channel's tail, with
 * nothing behind it to reveal it, waits for a retransmission timeout
 * (200 ms at least). So each channel is paced at a share of the
 * bandwidth the switchover decision used: in proportion to what it has
 * queued, renewed every link sample, since the last pass's pages are not
 * spread evenly (each channel takes every n-th chunk) and with an even
 * split the fullest channel would finish last. A share is never below
 * an even one: the kernel spaces a socket's next send by the rate of its
 * last, so a channel once paced near zero would stay silent long after
 * a new share (and a channel that had nothing queued must be able to
 * start). The channels together may then briefly exceed the bandwidth,
 * at most twice it, only while one of them holds nearly everything.
 */
void pc_src_pace(struct source *src)
{
	uint64_t q[PRECOPY_MAX_CHANNELS], sum = 0;
	unsigned n = src->tp->nchan;

	if (!src->final || src->pace_bps <= 0 || n > PRECOPY_MAX_CHANNELS)
		return;
	for (unsigned c = 0; c < n; c++) {
		struct pc_tp_link_stats ls;

		q[c] = pc_tp_link_stats(src->tp, c, &ls) ? 0 : ls.queued;
		sum += q[c];
	}
	for (unsigned c = 0; c < n; c++) {
		double share = sum ? (double)q[c] / (double)sum : 0;

		if (share < 1.0 / n)
			share = 1.0 / n;
		if (pc_tp_set_pacing(src->tp, c, (uint64_t)(src->pace_bps * share) + 1)) {
			src->pace_bps = 0; /* cannot pace: the burst goes as it can */
			return;
		}
	}
}

/*
 * The final burst's pace: the bandwidth the switchover decision used, but
 * never below what the channels have carried over wall time (a figure
 * the link has shown it can deliver), nor below PC_PACE_MIN_BPS. An
 * estimate that collapsed (a window where a slow receiver held the
 * senders while the kernel counted them busy) must not turn into a burst
 * paced at a trickle: that would make the pause as long as the bad
 * estimate says, and space a channel's segments so far apart that its
 * peer gives it up as silent.
 */
#define PC_PACE_MIN_BPS (1.0 * (1 << 20))

static double pace_rate(const struct pc_policy *pol)
{
	double bw = pc_policy_switch_bandwidth(pol), wall = pc_policy_bw_wall(pol);

	if (bw < wall)
		bw = wall;
	return bw < PC_PACE_MIN_BPS ? PC_PACE_MIN_BPS : bw;
}

/* The last pass is in: what follows (the device state, on channel 0)
 * may have the whole bandwidth, on any channel. */
static void pace_after_burst(struct source *src)
{
	for (unsigned c = 0; src->pace_bps > 0 && c < src->tp->nchan; c++)
		pc_tp_set_pacing(src->tp, c, (uint64_t)src->pace_bps);
}

/*
 * Switchover: stop the guest, send what is left, unthrottled. Hints end
 * here: the last pass is what the destination gets.
 */
int pc_src_stop_and_sync(struct source *src, uint64_t *t_stop)
{
	struct precopy_session *s = src->s;
	int err;

	pc_src_hints_open(src, false);
	pc_set_status(s, PRECOPY_STATUS_SWITCHOVER);
	pthread_mutex_lock(&src->plock);
	pc_policy_set_switchover(&src->pol);
	src->pace_bps = pace_rate(&src->pol);
	pthread_mutex_unlock(&src->plock);
	*t_stop = pc_now();
	err = pc_src_stop_guest(src);
	return err ? err : pc_src_sync_dirty(src, NULL, true);
}

int pc_src_switchover(struct source *src, unsigned iter, bool forced)
{
	struct precopy_session *s = src->s;
	uint64_t t_stop;
	int err = pc_src_stop_and_sync(src, &t_stop);

	if (err)
		return err;
	src->final = true;
	pc_src_pace(src);
	atomic_store(&src->stop_pass, false);
	err = pc_src_run_pass(src, ++iter, NULL);
	pace_after_burst(src);
	if (!err)
		err = finish(src, t_stop);
	if (err)
		return err;
	pthread_mutex_lock(&s->lock);
	s->st.iteration = iter;
	s->st.forced_switchover = forced;
	if (forced)
		s->st.forced_downtime = s->st.downtime;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int pc_src_failed(struct source *src, int err)
{
	struct precopy_session *s = src->s;
	int serr = atomic_load(&src->err);

	pc_src_hints_open(src, false);
	if (src->unconfirmed) {
		/* The guest may run at the destination: never here too. */
		if (src->pol.throttle.pct && s->cb.set_throttle)
			s->cb.set_throttle(s->cb.opaque, 0);
		return err;
	}
	if (atomic_load(&s->cancel))
		err = -ECANCELED;
	if (src->peer_waits && err != -ECANCELED && !serr)
		send_error(src, err);
	if (err == -ECANCELED || serr == -ECANCELED)
		err = -ECANCELED;
	else if (serr && !s->st.error[0])
		pc_fail(s, serr, "sending pages: %s", pc_err_context(s, serr));
	if (src->pol.throttle.pct && s->cb.set_throttle)
		s->cb.set_throttle(s->cb.opaque, 0);
	if (src->stopped && s->cb.resume_vm)
		s->cb.resume_vm(s->cb.opaque);
	return err;
}

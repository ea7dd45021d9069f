/* SPDX-License-Identifier: MIT */
/*
 * source.h - the sending end's state, shared by source.c (the sender
 * threads, the passes, the phases up to the switchover) and switchover.c
 * (the handshake, the handoff, the switchover and the end). Engine-private.
 */
#ifndef PC_SOURCE_H
#define PC_SOURCE_H

#include "session.h"

struct source;

struct sender {
	struct source *src;
	unsigned chan;
	pthread_t thread;
	bool started;
	/* batch being built */
	struct pc_page_run data[PC_WIRE_RUNS_MAX];
	unsigned ndata;
	uint64_t data_bytes;
	uint8_t *msg; /* RUNS record */
	uint32_t nruns;
	struct pc_wire_run cur; /* run being extended */
	bool have_cur;
	/* the sender estimate: pages looked at since the last batch went,
	 * and when the sender last stopped waiting (batch sent, bucket) */
	uint64_t scanned;
	uint64_t active_since;
	/* of those, the pages found zero and the time their scan took */
	uint64_t zeros, zero_ns;
	/* counters, folded into the stats by the control thread */
	_Atomic uint64_t normal, duplicate, free_skipped, bytes, wire;
	uint64_t send_cpu_ns; /* this pass, in flush_batch()'s transport calls */
};

struct source {
	struct precopy_session *s;
	struct pc_transport *tp;
	unsigned nchan;
	_Atomic uint64_t *dirty; /* session bitmap */
	uint64_t *tmp;           /* sync scratch, one region at a time */
	uint64_t zero_hash;

	pthread_mutex_t plock; /* policy + stats counters */
	struct pc_policy pol;
	struct precopy_params params; /* as taken at the start or the last change */
	unsigned params_gen;          /* s->params_gen they are of */

	/* pass hand-off */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned gen;        /* bumped to start a pass */
	unsigned done;       /* senders finished with the current pass */
	bool quit;
	unsigned iteration;  /* the pass being sent */
	bool final;          /* switchover pass: no throttle */
	double pace_bps;     /* final burst: what the channels' pacing shares, bytes/s (0: none) */
	atomic_bool stop_pass; /* the watchdog wants the pass cut short */
	atomic_int err;      /* first sender error */
	uint64_t pass_dirtied; /* pages newly dirty by every sync of this pass */
	bool handoff;        /* PC_CAP_HANDOFF offered / accepted */
	bool postcopy;       /* PC_CAP_POSTCOPY accepted: a forced switchover is postcopy */
	atomic_bool link_stats; /* the transport gives link figures (else -EOPNOTSUPP) */
	bool unconfirmed;    /* GO sent, no answer: the guest may run there */
	bool peer_waits;     /* the destination waits for what we send: a failure is told (ERROR) */
	bool stopped;        /* the guest was stopped here (switchover, handoff) */

	struct sender snd[PRECOPY_MAX_CHANNELS];
};

/*
 * source.c: the passes.
 */

/** pc_src_run_pass() - run pass @iteration with every sender and wait for
 *  its ITER_ACK; *@tick (may be NULL) takes the watchdog's verdict. */
int pc_src_run_pass(struct source *src, unsigned iteration, enum pc_decision *tick);

/** pc_src_sync_dirty() - sync every dirty log into the pending set and
 *  feed the policy; *@newly (may be NULL): pages newly pending.
 *  @vm_stopped: the guest is stopped already (no soft-dirty pause). */
int pc_src_sync_dirty(struct source *src, uint64_t *newly, bool vm_stopped);

/** pc_src_hints_open() - take free-page hints into the pending set
 *  (@open), or stop taking them for good. */
void pc_src_hints_open(struct source *src, bool open);

/*
 * switchover.c: the handshake and the end. Each returns 0 or a negative
 * errno with the failure recorded (pc_fail()).
 */

/** pc_src_handshake() - HELLO, HELLO_ACK: regions, capabilities, and
 *  src->handoff: whether the RAM is handed over (memfds, fd passing). */
int pc_src_handshake(struct source *src);

/** pc_src_handoff() - stop the guest, hand the memfds over, the end. */
int pc_src_handoff(struct source *src);

/** pc_src_check_forced() - the watchdog forces the switchover: refuse
 *  (-ETIMEDOUT) if its expected downtime is above max-forced-downtime. */
int pc_src_check_forced(struct source *src);

/** pc_src_pace() - during the final burst, share src->pace_bps among the
 *  channels by what each has left to send; no-op outside it or when the
 *  transport cannot pace. */
void pc_src_pace(struct source *src);

/** pc_src_switchover() - stop the guest, send what is left after pass
 *  @iter, the device state, and the end; @forced: by the watchdog. */
int pc_src_switchover(struct source *src, unsigned iter, bool forced);

/** pc_src_send_encoded() - send the record of @n bytes in @buf on channel
 *  0; @n < 0: encoding record @name failed. @sending words a failure to
 *  send (%s: why). */
int pc_src_send_encoded(struct source *src, uint8_t *buf, int n, const char *name,
			const char *sending);

/** pc_src_stop_guest() - stop the guest (if the VMM has the hook); from
 *  here a failure resumes it. */
int pc_src_stop_guest(struct source *src);

/** pc_src_stop_and_sync() - the start of every switchover: hints end,
 *  status SWITCHOVER, the guest stopped (from *@t_stop), the last dirty
 *  sync into the pending set. */
int pc_src_stop_and_sync(struct source *src, uint64_t *t_stop);

/** pc_src_send_device_state() - save the device state and send it. */
int pc_src_send_device_state(struct source *src);

/** pc_src_send_complete() - COMPLETE: every region's page count and
 *  checksum (0 for a handoff). */
int pc_src_send_complete(struct source *src);

/** pc_src_verdict_and_go() - wait for the destination's verdict and, if
 *  good, GO (pc_src_go()). Until GO the destination does not resume the
 *  guest: a refusal, a lost verdict or a cancel fails here, and
 *  pc_src_failed() resumes it. */
int pc_src_verdict_and_go(struct source *src);

/** pc_src_go() - after a good verdict: GO, and the destination's answer.
 *  From GO on this end never resumes the guest (a cancel is refused),
 *  unless the answer says the destination could not resume it. */
int pc_src_go(struct source *src);

/*
 * postcopy_src.c: the switchover to postcopy.
 */

/** pc_src_postcopy() - stop the guest, send the device state and the
 *  pages still pending after pass @iter as missing, hand the guest over,
 *  then serve the destination's requests and push every missing page;
 *  the end: COMPLETE and the destination's RESULT. */
int pc_src_postcopy(struct source *src, unsigned iter);

/** pc_src_failed() - the one failure path of a migration that failed
 *  with @err: tell the destination if it waits, lift the throttle, resume
 *  the guest if it was stopped here and may not run there. Return: the
 *  error to report (-ECANCELED if cancelled). */
int pc_src_failed(struct source *src, int err);

#endif /* PC_SOURCE_H */

/* SPDX-License-Identifier: MIT */
/*
 * dest.h - the receiving end's state, shared by dest.c (the receivers,
 * the verdict, GO) and postcopy_dst.c (the switch to postcopy).
 * Engine-private.
 */
#ifndef PC_DEST_H
#define PC_DEST_H

#include "session.h"

struct pc_dst_pc;

struct dest;

struct receiver {
	struct dest *d;
	unsigned chan;
	pthread_t thread;
	bool started;
	bool parked;        /* under d->mu: ended a pass, reads nothing */
	uint32_t iteration; /* the pass this channel is in */
	uint8_t *buf;
	struct pc_wire_run *runs; /* one RUNS record's entries, sorted */
};

struct dest {
	struct precopy_session *s;
	struct pc_transport *tp;
	unsigned nchan;
	uint64_t zero_hash;

	pthread_mutex_t mu;      /* barrier and fence */
	pthread_cond_t cv;       /* signalled when any of these change */
	unsigned at_end;         /* channels at the end of pass @acked */
	uint32_t acked;          /* passes acknowledged */
	uint32_t ch0_begun;      /* passes channel 0 has begun */
	bool fenced;             /* COMPLETE came: parked receivers end */
	bool stop;               /* the end: parked receivers end */
	/* per region, a bit per page a page run was placed into since its
	 * checksum was last taken (set by on_placed, cleared by RUNS) */
	_Atomic uint64_t *unlisted[PRECOPY_MAX_REGIONS];
	atomic_int err;
	atomic_bool finished;    /* COMPLETE handled: the others may stop */

	uint8_t *devstate;
	uint64_t devstate_total, devstate_have;
	bool devstate_seen;
	bool handoff;            /* PC_CAP_HANDOFF accepted: see receive_handoff() */
	struct pc_dst_pc *pc;    /* PC_CAP_POSTCOPY accepted */
	bool in_postcopy;        /* a POSTCOPY record came: only more of them now */

	struct receiver rcv[PRECOPY_MAX_CHANNELS];
};

/**
 * pc_dest_fence() - withdraw the regions from the transport and stop and
 * join the receivers of channels 1.. (the end of the passes: COMPLETE or
 * POSTCOPY, which @what names). Return: 0, or -EPROTO with why in @text
 * (@tlen bytes): a channel still receiving, or a pass not ended.
 */
int pc_dest_fence(struct dest *d, const char *what, char *text, size_t tlen);

/** pc_dest_first_unlisted() - the first page of region @i a page run was
 *  placed into after its checksum was taken, or its page count. */
uint64_t pc_dest_first_unlisted(struct dest *d, unsigned i);

/** pc_dest_load_devstate() - hand the device state to the VMM: 0, or its
 *  error and why in @text. */
int pc_dest_load_devstate(struct dest *d, char *text, size_t tlen);

/**
 * pc_dest_conclude() - the verdict @status (why in @text) to the source;
 * on a good one wait for GO, resume the guest and answer. Return: 0 once
 * the guest runs here, else -errno (recorded).
 */
int pc_dest_conclude(struct dest *d, int status, char *text, size_t tlen);

/*
 * postcopy_dst.c
 */

/** pc_dest_postcopy_possible() - the source wants postcopy: can this end
 *  (transport, userfaultfd)? Opens d->pc. Return: 0, or -errno with why
 *  in @text. */
int pc_dest_postcopy_possible(struct dest *d, char *text, size_t tlen);

/** pc_dest_postcopy() - a POSTCOPY record @m on channel 0 (see
 *  docs/PROTOCOL.md). Return: 0 to read on, 1 at the end (the guest runs
 *  here with every page verified), or -errno. */
int pc_dest_postcopy(struct dest *d, const struct pc_wire_msg *m);

#endif /* PC_DEST_H */

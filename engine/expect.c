/* SPDX-License-Identifier: MIT */
/*
 * expect.c - receive the one record a step of the protocol waits for.
 *
 * Both ends wait, at fixed steps, for a record of one type on channel 0:
 * the source for HELLO_ACK, ITER_ACK, the verdict and the answer to GO,
 * the destination for HELLO and GO. pc_recv_expect() receives, decodes,
 * turns the peer's ERROR into a failure and checks the type, so that each
 * step only says how its failures read (struct pc_expect).
 */
#include <errno.h>
#include <stdio.h>

#include "session.h"

/* A failure worded by @fmt (one %s: @arg), or unrecorded if @fmt is NULL. */
static int expect_fail(struct precopy_session *s, int err, const char *fmt, const char *arg)
{
	if (!fmt)
		return err;
	return pc_fail(s, err, fmt, arg);
}

int pc_recv_expect(struct precopy_session *s, unsigned chan, uint8_t *buf, size_t cap,
		   const struct pc_expect *ex, struct pc_wire_msg *m, char *why, size_t whylen)
{
	char reason[160];
	size_t len;
	int err;

	err = pc_tp_recv_msg(s->tp, chan, buf, cap, &len);
	if (err) {
		if (ex->quiet_cancel && (err == -ECANCELED || atomic_load(&s->cancel)))
			return -ECANCELED;
		return expect_fail(s, err == -EMSGSIZE && ex->msgsize_proto ? -EPROTO : err,
				   ex->lost, pc_err_context(s, err));
	}
	err = pc_wire_decode(buf, len, m, reason, sizeof(reason));
	if (err) {
		if (why && whylen)
			snprintf(why, whylen, "%s", reason);
		return expect_fail(s, err, ex->malformed, reason);
	}
	if (m->type == ex->type || (ex->type2 && m->type == ex->type2))
		return 0;
	if (m->type == PC_MSG_ERROR && ex->gave_up)
		return expect_fail(s, m->u.result.status ? m->u.result.status : -EIO, ex->gave_up,
				   m->u.result.text);
	if (!ex->other)
		return 1;
	return pc_fail(s, -EPROTO, ex->other, pc_wire_type_name(m->type));
}

/* SPDX-License-Identifier: MIT */
/*
 * postcopy_dst.h - the destination's postcopy (engine-private): the pages
 * the source says are missing, dropped and registered with userfaultfd,
 * a thread that asks for each page the guest touches, and the receipt of
 * every PAGE, checked against its checksum before it is placed.
 */
#ifndef PC_POSTCOPY_DST_H
#define PC_POSTCOPY_DST_H

#include "session.h"

struct pc_dst_pc;

/**
 * pc_dst_pc_open() - postcopy state for the regions of @s: a userfaultfd
 * and empty missing sets. Called at the handshake, so a destination that
 * cannot handle faults refuses the source at once.
 * Return: 0; -ENOTSUP or -EPERM without userfaultfd (pc_uffd_place_open());
 * -ENOMEM.
 */
int pc_dst_pc_open(struct precopy_session *s, struct pc_dst_pc **out);

/**
 * pc_dst_pc_ranges() - the ranges of one POSTCOPY record @m into the
 * missing set. Return: 0, or 1 for the last record; -EPROTO (recorded)
 * for a range outside its region or a page listed twice.
 */
int pc_dst_pc_ranges(struct pc_dst_pc *p, const struct pc_wire_msg *m);

/**
 * pc_dst_pc_arm() - drop every missing page and register every region
 * with the userfaultfd: from here a touch of a missing page waits for it.
 * Return: 0, or -errno with why in @text (@tlen bytes).
 */
int pc_dst_pc_arm(struct pc_dst_pc *p, char *text, size_t tlen);

/**
 * pc_dst_pc_run() - the guest runs: ask the source for every page it
 * touches, place every PAGE that comes on channel 0 of @tp (read into
 * @buf, PC_WIRE_MSG_MAX bytes), and at COMPLETE answer RESULT: 0 only if
 * every page is in and every checksum matched. Return: 0, or -errno
 * (recorded).
 */
int pc_dst_pc_run(struct pc_dst_pc *p, struct pc_transport *tp, uint8_t *buf);

/**
 * pc_dst_pc_free() - free @p (NULL: nothing). If pages are still missing
 * after pc_dst_pc_arm(), the userfaultfd stays open with the session
 * (closed by precopy_delete()): the guest's accesses to those pages keep
 * waiting rather than find them empty.
 */
void pc_dst_pc_free(struct pc_dst_pc *p);

#endif /* PC_POSTCOPY_DST_H */

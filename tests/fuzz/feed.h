/* SPDX-License-Identifier: MIT */
/*
 * feed.h - hand a byte stream to a real destination session, as if a
 * source had sent it on channel 0 of a TCP connection (after the TCP
 * hello): the fuzzer, the seed recorder's check and the malformed-stream
 * replay test share it.
 */
#ifndef PC_FEED_H
#define PC_FEED_H

#include <stddef.h>
#include <stdint.h>

/** The region a fed destination has (the seeds were recorded with it). */
#define PC_FEED_RAM (64u * 1024)

/**
 * pc_feed_dest() - run precopy_incoming() on a destination with one region
 * of PC_FEED_RAM bytes, fed @data over a socketpair (then end of stream);
 * what the destination sends back is read and dropped.
 * @err: receives precopy_strerror() (may be NULL).
 * Return: precopy_incoming()'s result (0 only for a verified migration).
 */
int pc_feed_dest(const uint8_t *data, size_t len, char *err, size_t errlen);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * feed.h - hand a byte stream to a real destination session, as if a
 * source had sent it on channel 0 of a TCP connection (after the TCP
 * hello), or several streams on several channels: the fuzzer, the seed
 * recorder's check and the malformed-stream replay test share it.
 */
#ifndef PC_FEED_H
#define PC_FEED_H

#include <stddef.h>
#include <stdint.h>

/** The region a fed destination has (the seeds were recorded with it). */
#define PC_FEED_RAM (64u * 1024)

/*
 * A multi-channel input: the magic, one byte n (2 + n % 3 channels, so 2
 * to 4), then chunks of { u8 channel (taken modulo the channel count),
 * le16 length, that many bytes } (the last one cut short by the end of
 * the input). Each channel's chunks form its stream; chunks are written
 * in input order, and a channel the destination does not read holds back
 * only its own later chunks. Any other input is channel 0 of a
 * one-channel connection, as it always was.
 */
#define PC_FEED_MULTI_MAGIC "PCFM"
#define PC_FEED_CHANNELS_MAX 4

/** pc_feed_dest(): success was reported for memory that was not verified. */
#define PC_FEED_CHANGED (-10000)

/**
 * pc_feed_dest() - run precopy_incoming() on a destination with one region
 * of PC_FEED_RAM bytes, fed @data over one socketpair per channel (then
 * end of stream);
 * what the destination sends back is read and dropped.
 * @err: receives precopy_strerror() (may be NULL).
 * Return: precopy_incoming()'s result (0 only for a verified migration);
 * PC_FEED_CHANGED if it reported success but the memory it holds then is
 * not the memory whose checksum COMPLETE carried (a byte landed after the
 * verdict, or was never verified).
 */
int pc_feed_dest(const uint8_t *data, size_t len, char *err, size_t errlen);

#endif

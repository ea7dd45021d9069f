/* SPDX-License-Identifier: MIT */
/*
 * guest.h - a synthetic guest: a memory region and writer threads that
 * dirty it at a set rate and pattern, standing in for a VM's RAM and
 * vCPUs in the CLI, the tests and the benchmarks.
 *
 * Contents: every page holds a 64-bit write counter in its first 8 bytes
 * and, after it, bytes derived from (seed, page index); a chosen share of
 * pages stays all zeros and is never written. A write adds 1 to a page's
 * counter. With the sequential pattern and one writer this is the
 * verification pattern: the writer sweeps the pages in order without end,
 * so at any instant all counters are equal except that a prefix is one
 * ahead; pc_guest_verify() checks exactly that, plus every other byte,
 * from a copy of the memory and the guest's descriptor.
 */
#ifndef PC_GUEST_H
#define PC_GUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "precopy.h"

enum pc_guest_pattern {
	PC_GUEST_SEQUENTIAL = 0, /* page after page */
	PC_GUEST_RANDOM,         /* uniform random pages */
	PC_GUEST_HOTSET,         /* 90% of writes to 10% of pages */
};

struct pc_guest_opts {
	size_t ram;               /* bytes, page multiple */
	double dirty_rate;        /* bytes/s of page writes; 0 = idle; < 0 = flat out */
	enum pc_guest_pattern pattern;
	unsigned threads;         /* writers (1 for the sequential pattern) */
	unsigned zero_pct;        /* share of pages kept all zero, 0..100 */
	unsigned free_pct;        /* share of other pages the guest calls free:
				   * garbage never written, zero after migration */
	uint64_t seed;            /* content seed */
	bool memfd;               /* back the memory with a sealed memfd (MAP_SHARED),
				   * so it can be handed over; see pc_guest_fd() */
	unsigned stop_delay_ms;   /* the stop_vm hook of pc_guest_callbacks() returns
				   * this long after the writers parked: a VMM slow
				   * to quiesce */
};

/** What a destination needs to verify the memory: sent as device state. */
struct pc_guest_desc {
	uint32_t magic;           /* PC_GUEST_MAGIC */
	uint32_t pattern;
	uint32_t zero_pct;
	uint32_t threads;
	uint32_t free_pct;
	uint32_t reserved;
	uint64_t seed;
	uint64_t npages;
	uint64_t writes;          /* page writes done when stopped */
};

#define PC_GUEST_MAGIC 0x54534750u /* "PGST" */

struct pc_guest;

/** pc_guest_new() - map and fill the memory. Return: 0 or -errno. */
int pc_guest_new(const struct pc_guest_opts *o, struct pc_guest **out);
/** pc_guest_delete() - stop the writers, unmap, free; *@g = NULL. */
void pc_guest_delete(struct pc_guest **g);
/** pc_guest_ram() - the memory and its length. */
void *pc_guest_ram(struct pc_guest *g, size_t *len);
/** pc_guest_fd() - the memfd behind the memory (opts.memfd), else -1.
 *  The guest owns it (pc_guest_delete() closes it). */
int pc_guest_fd(struct pc_guest *g);
/** pc_guest_start() - start the writers (no-op for an idle guest). */
int pc_guest_start(struct pc_guest *g);
/** pc_guest_pause() - park every writer; returns once none writes. */
int pc_guest_pause(struct pc_guest *g);
/** pc_guest_resume() - let the writers go on. */
int pc_guest_resume(struct pc_guest *g);
/** pc_guest_set_throttle() - writers sleep pct/(100-pct) x 10 ms per 10 ms slice. */
int pc_guest_set_throttle(struct pc_guest *g, unsigned pct);
/** pc_guest_describe() - the descriptor (call while paused for exact writes). */
void pc_guest_describe(struct pc_guest *g, struct pc_guest_desc *d);
/** pc_guest_writes() - page writes done so far. */
uint64_t pc_guest_writes(struct pc_guest *g);
/** pc_guest_throttle() - the throttle in force, percent. */
unsigned pc_guest_throttle(struct pc_guest *g);

/**
 * pc_guest_verify() - check @mem (@len bytes) against @d: zero pages are
 * zero, every other byte after the counter is as generated, and with the
 * sequential single-writer pattern the counters form the verification
 * pattern (and add up to d->writes). Return: 0, or -EBADMSG with the first
 * bad page described in @why.
 */
int pc_guest_verify(const void *mem, size_t len, const struct pc_guest_desc *d, char *why,
		    size_t whylen);

/**
 * pc_guest_callbacks() - the hooks of the VMM that runs @g at a migration's
 * source: stop_vm pauses the writers (then waits opts.stop_delay_ms),
 * resume_vm lets them go on, save_device_state sends the descriptor
 * (pc_guest_describe(), taken by pc_guest_load_desc() at the other end),
 * set_throttle sets the throttle. With @progress, the progress hook calls
 * it with @opaque; the callbacks' own opaque is @g, so a caller that wraps
 * a hook calls it with that opaque. Return: the callbacks.
 */
struct precopy_callbacks pc_guest_callbacks(struct pc_guest *g,
					    void (*progress)(void *opaque,
							     const struct precopy_stats *st),
					    void *opaque);

/**
 * pc_guest_load_desc() - a destination's load_device_state hook for the
 * device state of pc_guest_callbacks(): copies the descriptor in @buf
 * (@len bytes) into the struct pc_guest_desc @desc points to.
 * Return: 0; -EINVAL if @buf is not a guest's descriptor (@desc then
 * unchanged).
 */
int pc_guest_load_desc(void *desc, const void *buf, size_t len);

/** pc_guest_is_zero_page() - whether page @i is one of the all-zero ones. */
bool pc_guest_is_zero_page(uint64_t seed, unsigned zero_pct, uint64_t i);

/** pc_guest_is_free_page() - whether page @i is one the guest calls free. */
bool pc_guest_is_free_page(uint64_t seed, unsigned zero_pct, unsigned free_pct, uint64_t i);

/**
 * pc_guest_free_bitmap() - the free pages as a bitmap (bit i of word i/64),
 * for precopy_region_hint_free(); malloc()ed, the caller frees. NULL if
 * there are none or on ENOMEM.
 */
uint64_t *pc_guest_free_bitmap(struct pc_guest *g, uint64_t *npages);

#endif /* PC_GUEST_H */

/* SPDX-License-Identifier: MIT */
/*
 * dirty.h - find the pages of a memory range written since the last sync.
 *
 * Three methods, chosen per range:
 *  - PRECOPY_DIRTY_UFFD_WP: userfaultfd write-protect in async mode
 *    (UFFD_FEATURE_WP_ASYNC) and the PAGEMAP_SCAN ioctl on /proc/self/pagemap
 *    with PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC: one ioctl reports the
 *    written pages and protects them again. Linux >= 6.7.
 *  - PRECOPY_DIRTY_SOFT_DIRTY: "4" to /proc/self/clear_refs, then pagemap
 *    bit 55. clear_refs acts on the whole process, so all soft-dirty ranges
 *    of a process share one clear (see pc_dirty_sync()).
 *  - PRECOPY_DIRTY_EXTERNAL: the owner reports writes with
 *    pc_dirty_mark(); thread-safe.
 * PRECOPY_DIRTY_AUTO picks the first of UFFD_WP, SOFT_DIRTY that works.
 *
 * Bitmaps: bit i of word i/64 is page i of the range (4 KiB pages).
 */
#ifndef PC_DIRTY_H
#define PC_DIRTY_H

#include <stddef.h>
#include <stdint.h>

#include "precopy.h"

struct pc_dirty;

/**
 * pc_dirty_new() - prepare tracking of [@addr, @addr + @len).
 * @addr, @len: page aligned, @len > 0.
 * @mode: the method; AUTO probes.
 * Tracking is not armed yet: call pc_dirty_start().
 * Return: 0; -EINVAL; -ENOTSUP if @mode cannot work on this kernel;
 * -ENOMEM; another -errno from the kernel.
 */
int pc_dirty_new(void *addr, size_t len, enum precopy_dirty_mode mode,
		 struct pc_dirty **out);

/** pc_dirty_delete() - stop tracking (unprotect), free, set *@d = NULL. */
void pc_dirty_delete(struct pc_dirty **d);

/** pc_dirty_mode() - the method actually in use (never AUTO). */
enum precopy_dirty_mode pc_dirty_mode(const struct pc_dirty *d);

/**
 * pc_dirty_start() - arm: from now on every write to the range is
 * reported by the next pc_dirty_sync(). Pages written before are not.
 * Return: 0 or -errno.
 */
int pc_dirty_start(struct pc_dirty *d);

/**
 * pc_dirty_sync() - OR into @bitmap (npages bits) every page written since
 * pc_dirty_start() or the previous sync, and re-arm atomically per page: a
 * write that races with the sync is reported now or by the next sync,
 * never lost. Return: the number of pages newly set in @bitmap (>= 0), or
 * -errno.
 */
int64_t pc_dirty_sync(struct pc_dirty *d, uint64_t *bitmap);

/**
 * pc_dirty_mark() - EXTERNAL only: record that pages [@first, @first +
 * @npages) selected by @bits (bit i = page @first + i) were written.
 * Safe from any thread. Return: 0; -EINVAL for a range past the end;
 * -ENOTSUP for other modes.
 */
int pc_dirty_mark(struct pc_dirty *d, uint64_t first, const uint64_t *bits,
		  uint64_t npages);

/** pc_dirty_probe() - the method AUTO would choose here, or -ENOTSUP. */
int pc_dirty_probe(void);

#endif /* PC_DIRTY_H */

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
 *
 * What the engine must know:
 *  - Exactness. UFFD_WP and EXTERNAL never lose a write that races with a
 *    sync. SOFT_DIRTY cannot promise that: the kernel has no atomic
 *    read-and-clear of soft-dirty bits, so a write landing between the
 *    pagemap read of its page and the clear_refs walk reaching it is lost
 *    (reasoning in dirty.c, above sd_fold_all_and_clear()). It is exact only
 *    if no thread writes any soft-dirty-tracked range of the process during
 *    pc_dirty_start() and pc_dirty_sync() of any soft-dirty tracker: pause
 *    the vCPUs (stop_vm) around those calls.
 *  - clear_refs is process-wide: a soft-dirty sync reads every armed
 *    soft-dirty range of the process (so no tracker loses another's bits),
 *    then write-protects every page table of the whole process, so after
 *    each sync the first write to any page of the process (heap and stacks
 *    included) takes a minor fault. Nothing else in the process may write
 *    to /proc/self/clear_refs.
 *  - Over-reporting is allowed, never under-reporting: a THP or hugetlb page
 *    written anywhere may be reported whole; soft-dirty also reports pages
 *    the kernel could not write-protect (pinned for DMA) at every sync.
 *  - Only writes through this process's page tables are seen: not writes by
 *    another process sharing the memory (vhost-user, a second mapping of a
 *    memfd), nor DMA into pages pinned before a sync that completes after
 *    it. madvise(MADV_DONTNEED/MADV_FREE/MADV_REMOVE) changes contents
 *    without a write and is not reported either.
 *  - The range must stay mapped as it was: munmap or mremap away makes
 *    pc_dirty_start()/pc_dirty_sync() fail with -EFAULT, as does a new
 *    mapping put over part of it (UFFD_WP; SOFT_DIRTY then reports the new
 *    pages as written).
 *  - fork(): the child inherits no tracking (its mappings are not
 *    registered); a tracker's descriptors in the child would still act on
 *    the parent, so start and sync return -EBADFD there, and delete only
 *    frees. Fork with other threads holding a tracker lock is unsafe, as
 *    for any mutex: fork only to exec.
 *  - Threads: pc_dirty_mark() is safe from any thread at any time.
 *    pc_dirty_start() and pc_dirty_sync() of one tracker serialise on its
 *    lock; different trackers may be used from different threads.
 *    pc_dirty_delete() must not race with any other call on that tracker.
 *  - Cost (UFFD_WP, 1 GiB populated, this 2-core host; precopy-bench-dirty):
 *    arming 8 ms; a sync 0.4 ms with nothing written (1.5 ns per page of
 *    the range) and 2.4 ms with 10% written (9 ns per page of the range);
 *    the first write to a protected page costs the writer about 1.3 us (a
 *    minor fault) against 30 ns unprotected. SOFT_DIRTY: each sync preads 8
 *    bytes per page of every armed soft-dirty range and walks every page
 *    table of the process; it is several times slower (measured only under
 *    TCG emulation here, where the host kernel has no soft-dirty).
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
 * Tracking is not armed yet: call pc_dirty_start(). On failure *@out is
 * NULL.
 * Return: 0; -EINVAL for a NULL, misaligned or empty range, a NULL @out or
 * an unknown @mode; -ENOTSUP if @mode cannot work on this kernel (AUTO: if
 * neither can), or if the page size is not 4 KiB; -EPERM if userfaultfd is
 * not permitted (UFFD_WP; AUTO then tries SOFT_DIRTY); -EFAULT if part of
 * the range is not mapped (not checked for EXTERNAL); -EBUSY if another
 * userfaultfd already watches the range; -ENOMEM; another -errno from the
 * kernel.
 */
int pc_dirty_new(void *addr, size_t len, enum precopy_dirty_mode mode,
		 struct pc_dirty **out);

/**
 * pc_dirty_delete() - stop tracking (un-protect and unregister the range),
 * free, set *@d = NULL. NULL or *@d NULL: nothing to do.
 */
void pc_dirty_delete(struct pc_dirty **d);

/** pc_dirty_mode() - the method actually in use (never AUTO; AUTO for NULL). */
enum precopy_dirty_mode pc_dirty_mode(const struct pc_dirty *d);

/**
 * pc_dirty_start() - arm: from now on every write to the range is
 * reported by the next pc_dirty_sync(). Pages written before are not.
 * Calling it again re-arms (drops what was not synced yet).
 * Return: 0; -EINVAL if @d is NULL; -EFAULT if the range is no longer
 * mapped as registered; -EBADFD in a child after fork(); another -errno.
 */
int pc_dirty_start(struct pc_dirty *d);

/**
 * pc_dirty_sync() - OR into @bitmap (npages bits) every page written since
 * pc_dirty_start() or the previous sync, and re-arm atomically per page: a
 * write that races with the sync is reported now or by the next sync,
 * never lost (SOFT_DIRTY: only with the writers paused, see above). Bits
 * of @bitmap already set stay set; bits past npages are not touched.
 * Return: the number of pages newly set in @bitmap (>= 0); -EINVAL if an
 * argument is NULL or the tracker was not started; -EFAULT if the range is
 * no longer mapped as registered; -EBADFD in a child after fork(); another
 * -errno (then what was not reported is reported by the next sync).
 */
int64_t pc_dirty_sync(struct pc_dirty *d, uint64_t *bitmap);

/**
 * pc_dirty_mark() - EXTERNAL only: record that pages [@first, @first +
 * @npages) selected by @bits (bit i = page @first + i) were written.
 * Safe from any thread. Marks made before pc_dirty_start() are dropped by
 * it. Return: 0 (also for @npages 0); -EINVAL for a NULL @d, a NULL @bits
 * or a range past the end; -ENOTSUP for other modes.
 */
int pc_dirty_mark(struct pc_dirty *d, uint64_t first, const uint64_t *bits,
		  uint64_t npages);

/** pc_dirty_probe() - the method AUTO would choose here, or -ENOTSUP. */
int pc_dirty_probe(void);

#endif /* PC_DIRTY_H */

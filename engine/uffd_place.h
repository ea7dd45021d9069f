/* SPDX-License-Identifier: MIT */
/*
 * uffd_place.h - guest RAM whose pages have not arrived yet, for postcopy
 * at the destination (engine-private).
 *
 * In postcopy the guest runs at the destination before all of its pages
 * are there. The pages still missing are dropped from the mapping (their
 * stale content from earlier passes must not be seen) and the range is
 * registered with userfaultfd in MISSING mode: a guest access to a missing
 * page blocks in the kernel and is reported here as a fault, for the
 * engine to ask the source for that page. A page that arrives, asked for
 * or pushed in the background, is placed with UFFDIO_COPY: the kernel
 * copies it into a fresh page and maps it in one step, so the guest never
 * sees it half written, and it wakes whoever faulted on it. A page is
 * placed at most once: placing a page that is already there fails in the
 * kernel (EEXIST) and is reported as such, never overwritten.
 *
 * Works on private anonymous memory and on shared memfd/shmem mappings
 * (missing pages of those are punched out of the file, MADV_REMOVE).
 * All calls are thread-safe with respect to each other except
 * pc_uffd_place_close().
 */
#ifndef PC_UFFD_PLACE_H
#define PC_UFFD_PLACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pc_uffd_place;

/**
 * pc_uffd_place_open() - a userfaultfd for placing pages, in *@out.
 * Return: 0; -ENOTSUP where the kernel has no userfaultfd (or this build
 * no <linux/userfaultfd.h>); -EPERM where this process may not handle
 * faults (vm.unprivileged_userfaultfd = 0 and no access to
 * /dev/userfaultfd); -ENOMEM; -EINVAL if @out is NULL.
 */
int pc_uffd_place_open(struct pc_uffd_place **out);

/**
 * pc_uffd_place_add() - make the pages of [@addr, @addr + @len) whose bit
 * is set in @missing (bit i = page i, 64 to a word, PRECOPY_PAGE_SIZE
 * pages) missing, and register the whole range so that touching a missing
 * page faults to us. Pages whose bit is clear keep their content and never
 * fault. @shared: the range is a MAP_SHARED mapping of a memfd or shmem
 * file (its missing pages are removed from the file).
 * Return: 0; -EINVAL for a NULL or unaligned argument, or a range that
 * overlaps one added before; -ENOSPC past 64 ranges; -errno from the
 * kernel (e.g. -EINVAL for memory userfaultfd cannot handle).
 */
int pc_uffd_place_add(struct pc_uffd_place *u, void *addr, size_t len, bool shared,
		      const uint64_t *missing);

/**
 * pc_uffd_place_page() - place @len bytes (whole pages) from @src at @dst,
 * inside a range added before, and wake any thread waiting on them.
 * Pages already there (placed before) are left as they are.
 * Return: how many of the pages were already there (0: this call placed
 * them all); -EINVAL for an unaligned or NULL argument or a range not
 * inside one added before; -errno from the kernel.
 */
int pc_uffd_place_page(struct pc_uffd_place *u, void *dst, const void *src, size_t len);

/**
 * pc_uffd_place_fault() - wait up to @timeout_ms (-1 = forever) for a
 * thread to touch a missing page; its page's address in *@addr.
 * Return: 0; -ETIMEDOUT; -EINTR; -errno. The same page may be reported
 * more than once (several threads, or a retried access) until placed.
 */
int pc_uffd_place_fault(struct pc_uffd_place *u, int timeout_ms, uint64_t *addr);

/**
 * pc_uffd_place_stats() - pages placed and pages found already there by
 * pc_uffd_place_page() so far, and faults reported. Any pointer may be NULL.
 */
void pc_uffd_place_stats(const struct pc_uffd_place *u, uint64_t *placed, uint64_t *present,
			 uint64_t *faults);

/**
 * pc_uffd_place_close() - unregister every range (pages not placed stay
 * empty: zero on the next touch) and free @u. NULL is a no-op.
 */
void pc_uffd_place_close(struct pc_uffd_place *u);

#endif /* PC_UFFD_PLACE_H */

/* SPDX-License-Identifier: MIT */
/*
 * page.h - per-page work on the hot path: zero detection and checksums.
 *
 * The checksum is a 64-bit hash of one 4 KiB page (not cryptographic: it
 * catches corruption and loss, not an attacker). A region's checksum is
 * the hash of its pages' hashes in order, so both ends can keep one
 * 8-byte value per page up to date as pages move and combine them in
 * O(pages) at the end instead of reading all memory again while the guest
 * is stopped.
 */
#ifndef PC_PAGE_H
#define PC_PAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** pc_page_is_zero() - true if the 4 KiB page at @p holds only zeros. */
bool pc_page_is_zero(const void *p);

/** pc_page_hash() - checksum of the 4 KiB page at @p. */
uint64_t pc_page_hash(const void *p);

/**
 * pc_page_scan() - one read of the page: its checksum into *@hash and
 * whether it is all zeros.
 */
bool pc_page_scan(const void *p, uint64_t *hash);

/** pc_zero_page_hash() - pc_page_hash() of a page of zeros. */
uint64_t pc_zero_page_hash(void);

/** pc_hash_combine() - checksum of a region from its @n page hashes. */
uint64_t pc_hash_combine(const uint64_t *hashes, size_t n);

#endif /* PC_PAGE_H */

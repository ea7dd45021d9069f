/* SPDX-License-Identifier: MIT */
/*
 * shmem.c - regions backed by memfds, NUMA placement and populating the
 * destination's memory: the public calls that let a VMM hand its RAM over
 * without a copy (shm handoff), the check of a region's size against what
 * this host can hold, and the memory set-up that keeps page faults off the
 * receiving path (anonymous RAM in huge pages, populated before listening).
 * See precopy.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include "session.h"

/*
 * What this host can hold at most: its RAM plus its swap. A region is
 * refused when its length and its checksum table (8 bytes a page, at both
 * ends) together need more: a guest that big could never be filled, and
 * the table alone would take minutes to fill.
 */
uint64_t pc_host_memory(void)
{
	struct sysinfo si;

	if (sysinfo(&si) < 0)
		return UINT64_MAX; /* unknown: no limit */
	return ((uint64_t)si.totalram + si.totalswap) * (si.mem_unit ? si.mem_unit : 1);
}

uint64_t pc_region_need(uint64_t len)
{
	uint64_t table = len / PRECOPY_PAGE_SIZE * sizeof(uint64_t);

	return len > UINT64_MAX - table ? UINT64_MAX : len + table;
}

int precopy_add_region_fd(struct precopy_session *s, void *addr, size_t len, int fd,
			  uint64_t offset, enum precopy_dirty_mode mode)
{
	struct stat st;
	int dup, idx;

	if (!s || fd < 0 || offset % PRECOPY_PAGE_SIZE || offset + len < offset)
		return -EINVAL;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < offset + len)
		return -EINVAL;
	dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (dup < 0)
		return -errno;
	idx = precopy_add_region(s, addr, len, mode);
	if (idx < 0) {
		close(dup);
		return idx;
	}
	s->reg[idx].fd = dup;
	s->reg[idx].fd_offset = offset;
	return idx;
}

int precopy_numa_max_node(void)
{
	if (numa_available() < 0)
		return -ENOSYS;
	return numa_max_node();
}

int precopy_numa_node_ok(int node)
{
	int max = precopy_numa_max_node();

	if (max < 0)
		return max;
	if (node < 0 || node > max || !numa_bitmask_isbitset(numa_all_nodes_ptr, (unsigned)node))
		return -EINVAL;
	return 0;
}

/* MPOL_BIND [@p, +@len) to @node; nothing for a node < 0. */
static int bind_node(void *p, size_t len, int node)
{
	struct bitmask *bm;
	int err;

	if (node < 0)
		return 0;
	bm = numa_allocate_nodemask();
	if (!bm)
		return -ENOMEM;
	numa_bitmask_setbit(bm, (unsigned)node);
	err = mbind(p, len, MPOL_BIND, bm->maskp, bm->size + 1, 0) < 0 ? -errno : 0;
	numa_bitmask_free(bm);
	return err;
}

/* What both allocators refuse: no place for the address, a size that is
 * not whole pages or more than this host holds, a node that is not here. */
static int ram_args_ok(size_t len, int numa_node, void **addr)
{
	if (!addr || len == 0 || len % PRECOPY_PAGE_SIZE)
		return -EINVAL;
	if (pc_region_need(len) > pc_host_memory())
		return -ENOMEM;
	return numa_node >= 0 ? precopy_numa_node_ok(numa_node) : 0;
}

int precopy_memfd_alloc(size_t len, int numa_node, void **addr, int *fdp)
{
	void *p;
	int fd, err;

	if (!fdp)
		return -EINVAL;
	err = ram_args_ok(len, numa_node, addr);
	if (err)
		return err;
	fd = memfd_create("precopy-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	/* F_SEAL_SEAL too: nobody who gets hold of the fd (a source it
	 * was handed to, a process it leaked to) can add a seal of their own,
	 * such as F_SEAL_FUTURE_WRITE, which would refuse every later
	 * writable mapping of the guest's RAM. */
	if (ftruncate(fd, (off_t)len) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		err = -errno;
		close(fd);
		return err;
	}
	/* On a memfd the policy is shared, on the file: pages land on the
	 * node whoever touches them first (the peer's copy, too). */
	err = bind_node(p, len, numa_node);
	if (err) {
		munmap(p, len);
		close(fd);
		return err;
	}
	*addr = p;
	*fdp = fd;
	return 0;
}

#define HUGE_SIZE (2ul << 20)

int precopy_ram_alloc(size_t len, int numa_node, void **addr)
{
	size_t span;
	uint8_t *raw, *p;
	int err;

	if (len > SIZE_MAX - HUGE_SIZE)
		return -EINVAL;
	err = ram_args_ok(len, numa_node, addr);
	if (err)
		return err;
	/* Reserve 2 MiB more, start at the first 2 MiB boundary inside and
	 * give the rest back: every whole 2 MiB of the region can then be one
	 * transparent huge page, and munmap(*addr, len) frees it all. */
	span = len + HUGE_SIZE;
	raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return -errno;
	p = (uint8_t *)(((uintptr_t)raw + HUGE_SIZE - 1) & ~(uintptr_t)(HUGE_SIZE - 1));
	if (p > raw)
		munmap(raw, (size_t)(p - raw));
	if (raw + span > p + len)
		munmap(p + len, (size_t)(raw + span - (p + len)));
	/* Best effort: refused where THP is off ("never") or not built in. */
	(void)madvise(p, len, MADV_HUGEPAGE);
	err = bind_node(p, len, numa_node);
	if (err) {
		munmap(p, len);
		return err;
	}
	*addr = p;
	return 0;
}

int precopy_numa_where(const void *addr, size_t len, unsigned samples, uint64_t *per_node,
		       unsigned nnodes, uint64_t *absent)
{
	uint64_t npages = len / PRECOPY_PAGE_SIZE, n;
	void **pages;
	int *status;
	long r;

	/* at least one whole page: the sample count is then >= 1 */
	if (!addr || len < PRECOPY_PAGE_SIZE || (uintptr_t)addr % PRECOPY_PAGE_SIZE ||
	    !samples || (nnodes && !per_node))
		return -EINVAL;
	n = npages < samples ? npages : samples;
	pages = calloc(n, sizeof(*pages));
	status = calloc(n, sizeof(*status));
	if (!pages || !status) {
		free(pages);
		free(status);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < n; i++)
		pages[i] = (uint8_t *)addr + (i * npages / n) * PRECOPY_PAGE_SIZE;
	r = move_pages(0, (unsigned long)n, pages, NULL, status, 0);
	if (r < 0) {
		r = -errno;
		goto out;
	}
	if (absent)
		*absent = 0;
	for (unsigned k = 0; k < nnodes; k++)
		per_node[k] = 0;
	for (uint64_t i = 0; i < n; i++) {
		if (status[i] >= 0 && (unsigned)status[i] < nnodes)
			per_node[status[i]]++;
		else if (status[i] < 0 && absent)
			(*absent)++; /* -ENOENT: not allocated yet */
	}
	r = (long)n;
out:
	free(pages);
	free(status);
	return (int)r;
}

/* --- populating memory before it is written ----------------------------- */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* Populate in pieces of this much, so a slice's progress is visible to
 * the others and one failure stops them all soon. */
#define POP_STEP (64ul << 20)
#define POP_MIN_PER_THREAD (64ul << 20)
#define POP_MAX_THREADS 16

struct pop_slice {
	uint8_t *addr;
	size_t len;
	size_t done;
	pthread_t thread;
	bool started;
};

/* A write to every page that leaves it as it was: allocates it writable. */
static size_t touch_range(uint8_t *p, size_t len)
{
	for (size_t off = 0; off < len; off += PRECOPY_PAGE_SIZE)
		__atomic_fetch_or(p + off, 0, __ATOMIC_RELAXED);
	return len;
}

static void *pop_main(void *arg)
{
	struct pop_slice *sl = arg;
	bool use_madv = true;

	while (sl->done < sl->len) {
		size_t n = sl->len - sl->done < POP_STEP ? sl->len - sl->done : POP_STEP;
		uint8_t *p = sl->addr + sl->done;

		if (use_madv && madvise(p, n, MADV_POPULATE_WRITE) == 0) {
			sl->done += n;
			continue;
		}
		if (use_madv && (errno == EINVAL || errno == ENOSYS || errno == EPERM)) {
			use_madv = false; /* an older kernel, or a mapping it refuses */
			continue;
		}
		if (use_madv && errno == EINTR)
			continue;
		if (use_madv)
			break; /* ENOMEM, EFAULT, EHWPOISON: stop here */
		sl->done += touch_range(p, n);
	}
	return NULL;
}

int64_t pc_populate(void *addr, size_t len, unsigned threads)
{
	struct pop_slice sl[POP_MAX_THREADS];
	uint8_t *a = addr;
	size_t per, total = 0;
	long ncpu;

	if (!addr || (uintptr_t)addr % PRECOPY_PAGE_SIZE || len % PRECOPY_PAGE_SIZE)
		return -EINVAL;
	if (len == 0)
		return 0;
	if (!threads) {
		ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		threads = ncpu > 0 ? (unsigned)ncpu : 1;
	}
	if (threads > POP_MAX_THREADS)
		threads = POP_MAX_THREADS;
	if (threads > len / POP_MIN_PER_THREAD)
		threads = len / POP_MIN_PER_THREAD ? (unsigned)(len / POP_MIN_PER_THREAD) : 1;
	/* Huge pages where the mapping allows (anonymous memory with THP in
	 * "madvise" mode; shmem if shmem_enabled allows): 512 times fewer
	 * faults to populate, and fewer TLB misses to receive. Best effort. */
	(void)madvise(addr, len, MADV_HUGEPAGE);
	/* Slices on 2 MiB boundaries, so no huge page is split between two
	 * threads. */
	per = (len / threads + (2ul << 20) - 1) & ~((2ul << 20) - 1);
	for (unsigned t = 0; t < threads; t++) {
		size_t off = (size_t)t * per;

		memset(&sl[t], 0, sizeof(sl[t]));
		if (off >= len)
			continue;
		sl[t].addr = a + off;
		sl[t].len = len - off < per ? len - off : per;
		if (t > 0 && !pthread_create(&sl[t].thread, NULL, pop_main, &sl[t]))
			sl[t].started = true;
	}
	pop_main(&sl[0]);
	for (unsigned t = 1; t < threads; t++) {
		if (sl[t].started)
			pthread_join(sl[t].thread, NULL);
		else if (sl[t].len)
			pop_main(&sl[t]); /* no thread: do it here */
	}
	for (unsigned t = 0; t < threads; t++)
		total += sl[t].done;
	return (int64_t)total;
}

uint64_t pc_thread_cpu_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts))
		return 0;
	return (uint64_t)ts.tv_sec * PC_NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

uint64_t pc_thread_faults(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_THREAD, &ru))
		return 0;
	return (uint64_t)ru.ru_minflt + (uint64_t)ru.ru_majflt;
}

/* SPDX-License-Identifier: MIT */
/*
 * uffd_place.c - guest RAM whose pages have not arrived yet: userfaultfd
 * in MISSING mode, pages placed with UFFDIO_COPY. See uffd_place.h.
 */
#include "config.h"
#include "uffd_place.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "precopy.h"

#if PRECOPY_HAVE_LINUX_USERFAULTFD_H
#include <linux/userfaultfd.h>
#endif

#define PAGE ((uint64_t)PRECOPY_PAGE_SIZE)
#define MAX_RANGES 64

struct range {
	uint64_t start, len;
};

struct pc_uffd_place {
	int fd;
	pthread_mutex_t lock;        /* serialises pc_uffd_place_add() */
	struct range r[MAX_RANGES];
	_Atomic unsigned n;          /* published after r[n - 1] is written */
	_Atomic uint64_t placed, present, faults;
};

void pc_uffd_place_stats(const struct pc_uffd_place *u, uint64_t *placed, uint64_t *present,
			 uint64_t *faults)
{
	if (placed)
		*placed = u ? atomic_load(&u->placed) : 0;
	if (present)
		*present = u ? atomic_load(&u->present) : 0;
	if (faults)
		*faults = u ? atomic_load(&u->faults) : 0;
}

#if PRECOPY_HAVE_LINUX_USERFAULTFD_H && defined(SYS_userfaultfd)

/*
 * Postcopy faults come from the guest's threads and also from the kernel
 * (a VMM's read() or vhost into guest memory), so a descriptor limited to
 * user-mode faults is not enough: where the sysctl forbids an ordinary
 * one, /dev/userfaultfd (Linux 6.1) may still grant a full one.
 */
static int uffd_new(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd >= 0)
		return fd;
	if (errno == ENOSYS)
		return -ENOTSUP;
	if (errno != EPERM)
		return -errno;
#ifdef USERFAULTFD_IOC_NEW
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

	if (dev >= 0) {
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		close(dev);
		if (fd >= 0)
			return fd;
	}
#endif
	return -EPERM;
}

int pc_uffd_place_open(struct pc_uffd_place **out)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	struct pc_uffd_place *u;
	int fd;

	if (!out)
		return -EINVAL;
	*out = NULL;
	fd = uffd_new();
	if (fd < 0)
		return fd;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int err = errno == EINVAL ? -ENOTSUP : -errno;

		close(fd);
		return err;
	}
	u = calloc(1, sizeof(*u));
	if (!u) {
		close(fd);
		return -ENOMEM;
	}
	u->fd = fd;
	pthread_mutex_init(&u->lock, NULL);
	*out = u;
	return 0;
}

static bool overlaps(const struct pc_uffd_place *u, unsigned n, uint64_t a, uint64_t len)
{
	for (unsigned i = 0; i < n; i++)
		if (a < u->r[i].start + u->r[i].len && u->r[i].start < a + len)
			return true;
	return false;
}

/* Drop the missing pages' content, run by run. */
static int discard(uint64_t a, uint64_t len, bool shared, const uint64_t *missing)
{
	uint64_t npages = len / PAGE;

	for (uint64_t i = 0; i < npages;) {
		if (!(missing[i / 64] >> (i % 64) & 1)) {
			i++;
			continue;
		}
		uint64_t j = i;

		while (j < npages && (missing[j / 64] >> (j % 64) & 1))
			j++;
		if (madvise((void *)(uintptr_t)(a + i * PAGE), (j - i) * PAGE,
			    shared ? MADV_REMOVE : MADV_DONTNEED) < 0)
			return -errno;
		i = j;
	}
	return 0;
}

int pc_uffd_place_add(struct pc_uffd_place *u, void *addr, size_t len, bool shared,
		      const uint64_t *missing)
{
	uint64_t a = (uint64_t)(uintptr_t)addr;
	int err = 0;

	if (!u || !addr || !missing || len == 0 || a % PAGE || len % PAGE || a + len < a)
		return -EINVAL;
	pthread_mutex_lock(&u->lock);
	unsigned n = atomic_load(&u->n);

	if (overlaps(u, n, a, len)) {
		err = -EINVAL;
	} else if (n == MAX_RANGES) {
		err = -ENOSPC;
	} else {
		struct uffdio_register reg = {
			.range = { .start = a, .len = len },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};

		/* Register first: a page dropped before the range is
		 * registered and touched in between would come back as a
		 * zero page, not as a fault. */
		if (ioctl(u->fd, UFFDIO_REGISTER, &reg) < 0) {
			err = -errno;
		} else {
			if (!(reg.ioctls & (1ull << _UFFDIO_COPY)))
				err = -ENOTSUP;
			if (!err)
				err = discard(a, len, shared, missing);
			if (err) {
				struct uffdio_range r = { .start = a, .len = len };

				ioctl(u->fd, UFFDIO_UNREGISTER, &r);
			}
		}
		if (!err) {
			u->r[n] = (struct range){ a, len };
			atomic_store(&u->n, n + 1);
		}
	}
	pthread_mutex_unlock(&u->lock);
	return err;
}

static bool inside(const struct pc_uffd_place *u, uint64_t a, uint64_t len)
{
	unsigned n = atomic_load(&u->n);

	for (unsigned i = 0; i < n; i++)
		if (a >= u->r[i].start && a - u->r[i].start + len <= u->r[i].len)
			return true;
	return false;
}

int pc_uffd_place_page(struct pc_uffd_place *u, void *dst, const void *src, size_t len)
{
	uint64_t a = (uint64_t)(uintptr_t)dst, done = 0;
	int present = 0;

	if (!u || !dst || !src || len == 0 || a % PAGE || len % PAGE || !inside(u, a, len))
		return -EINVAL;
	while (done < len) {
		struct uffdio_copy c = {
			.dst = a + done,
			.src = (uint64_t)(uintptr_t)src + done,
			.len = len - done,
			.mode = 0,
		};

		if (ioctl(u->fd, UFFDIO_COPY, &c) == 0) {
			atomic_fetch_add(&u->placed, (len - done) / PAGE);
			break;
		}
		int e = errno;
		uint64_t got = c.copy > 0 ? (uint64_t)c.copy : 0;

		atomic_fetch_add(&u->placed, got / PAGE);
		done += got;
		if (e == EEXIST) {
			/* That page is there already: leave it, go on after it. */
			atomic_fetch_add(&u->present, 1);
			present++;
			done += PAGE;
		} else if (e != EAGAIN) {
			return -e;
		}
	}
	return present;
}

int pc_uffd_place_fault(struct pc_uffd_place *u, int timeout_ms, uint64_t *addr)
{
	struct pollfd p;

	if (!u || !addr)
		return -EINVAL;
	p.fd = u->fd;
	p.events = POLLIN;
	for (;;) {
		struct uffd_msg m;
		int r = poll(&p, 1, timeout_ms);

		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		ssize_t n = read(u->fd, &m, sizeof(m));

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue; /* another reader took it */
		if (n < 0)
			return -errno;
		if (n != (ssize_t)sizeof(m))
			return -EIO;
		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue; /* none asked for; not ours to handle */
		*addr = m.arg.pagefault.address & ~(PAGE - 1);
		atomic_fetch_add(&u->faults, 1);
		return 0;
	}
}

void pc_uffd_place_close(struct pc_uffd_place *u)
{
	if (!u)
		return;
	unsigned n = atomic_load(&u->n);

	for (unsigned i = 0; i < n; i++) {
		struct uffdio_range r = { .start = u->r[i].start, .len = u->r[i].len };

		ioctl(u->fd, UFFDIO_UNREGISTER, &r);
	}
	close(u->fd);
	pthread_mutex_destroy(&u->lock);
	free(u);
}

#else /* no userfaultfd */

int pc_uffd_place_open(struct pc_uffd_place **out)
{
	if (out)
		*out = NULL;
	return out ? -ENOTSUP : -EINVAL;
}

int pc_uffd_place_add(struct pc_uffd_place *u, void *addr, size_t len, bool shared,
		      const uint64_t *missing)
{
	(void)u, (void)addr, (void)len, (void)shared, (void)missing;
	return -EINVAL;
}

int pc_uffd_place_page(struct pc_uffd_place *u, void *dst, const void *src, size_t len)
{
	(void)u, (void)dst, (void)src, (void)len;
	return -EINVAL;
}

int pc_uffd_place_fault(struct pc_uffd_place *u, int timeout_ms, uint64_t *addr)
{
	(void)u, (void)timeout_ms, (void)addr;
	return -EINVAL;
}

void pc_uffd_place_close(struct pc_uffd_place *u)
{
	(void)u;
}

#endif

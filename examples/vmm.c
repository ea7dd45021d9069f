/* SPDX-License-Identifier: MIT */
/*
 * vmm.c - a toy VMM that embeds libprecopy, to show what a real one does.
 *
 * The "VM" is one RAM block and a few vCPU threads that write to it. Like
 * KVM with dirty logging on, the vCPUs set a bit in the VMM's own dirty
 * bitmap for every page they write; the VMM hands those bits to precopy
 * with precopy_region_mark_dirty() (PRECOPY_DIRTY_EXTERNAL), the way a KVM
 * VMM would after KVM_GET_DIRTY_LOG. The VMM implements the hooks precopy
 * calls: stop and resume the vCPUs, save and load device state (here the
 * vCPUs' "registers"), throttle the vCPUs; and it prints progress from the
 * statistics.
 *
 * It forks a destination "VMM" that receives the migration over TCP
 * loopback into its own RAM, then both ends check the result: the
 * destination that every page's write counter adds up to the writes the
 * source's vCPUs reported in the device state, the source that the
 * destination's RAM hashes to the same value as its own.
 *
 *   vmm [--ram MIB] [--vcpus N] [--rate PAGES] [--max-bandwidth MIB]
 *       [--auto-converge] [--downtime-limit MS]
 *
 * --rate is page writes per second per vCPU (0 = as fast as it can).
 * Exit status 0 when the migration completed and the memory matches.
 *
 * Only <precopy.h> and libc: build with
 *   cc -std=c11 vmm.c $(pkg-config --cflags --libs precopy) -pthread
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MAP_ANONYMOUS, kill() */
#endif
#include <precopy.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE PRECOPY_PAGE_SIZE
#define MAX_VCPUS 8
#define DEV_MAGIC 0x564d4d31u /* "VMM1" */

/* What a VM is to this toy VMM. */
struct vm {
	uint8_t *ram;
	size_t ram_size;
	uint64_t npages;
	int region; /* precopy's index for the RAM block */
	struct precopy_session *s;

	/* The dirty log: one bit per page, set by the vCPUs (as KVM's is). */
	_Atomic uint64_t *dirty_log;
	uint64_t *harvest;           /* scratch for one harvest */
	pthread_mutex_t harvest_lock;

	unsigned nvcpus;
	unsigned rate;               /* page writes/s per vCPU, 0 = flat out */
	pthread_t vcpu[MAX_VCPUS];
	uint64_t writes[MAX_VCPUS];  /* the vCPUs' "registers" */
	atomic_bool quit;
	atomic_uint throttle;        /* percent */

	/* Pause: stop_vm waits until every vCPU has parked. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool pause;
	unsigned parked;
	unsigned max_throttle;       /* for the summary */
};

/* The device state that travels with the RAM. */
struct devstate {
	uint32_t magic, nvcpus;
	uint64_t writes[MAX_VCPUS];
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_us(uint64_t us)
{
	struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };

	nanosleep(&ts, NULL);
}

/* ------------------------------ the vCPUs -------------------------------- */

/* Park here while the VMM has paused the VM. */
static void vcpu_check_pause(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->pause) {
		vm->parked++;
		pthread_cond_broadcast(&vm->cond);
		while (vm->pause && !atomic_load(&vm->quit))
			pthread_cond_wait(&vm->cond, &vm->lock);
		vm->parked--;
	}
	pthread_mutex_unlock(&vm->lock);
}

/*
 * vCPU i owns the pages p with p % nvcpus == i and adds 1 to the 64-bit
 * counter at the start of a page it writes, then sets the page's bit in the
 * dirty log (after the write, so whoever takes the bit sees the write).
 */
static void *vcpu_main(void *arg)
{
	struct vm *vm = ((void **)arg)[0];
	unsigned id = (unsigned)(uintptr_t)((void **)arg)[1];
	uint64_t mine = (vm->npages - id + vm->nvcpus - 1) / vm->nvcpus;
	uint64_t x = 0x9e3779b97f4a7c15ull * (id + 1);
	uint64_t slice_start = now_ms(), n = 0;

	free(arg);
	while (!atomic_load(&vm->quit)) {
		uint64_t page, *counter;

		vcpu_check_pause(vm);
		x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift */
		page = (x % mine) * vm->nvcpus + id;
		counter = (uint64_t *)(vm->ram + page * PAGE);
		(*counter)++;
		vm->writes[id]++;
		atomic_fetch_or(&vm->dirty_log[page / 64], 1ull << (page % 64));

		/* Pace to --rate, in 1 ms steps. */
		if (vm->rate && ++n >= (vm->rate + 999) / 1000) {
			n = 0;
			sleep_us(1000);
		}
		/* The throttle, as QEMU applies it: after each 10 ms slice of
		 * running, sleep pct/(100-pct) x 10 ms. */
		if (now_ms() - slice_start >= 10) {
			unsigned pct = atomic_load(&vm->throttle);

			if (pct)
				sleep_us(10000ull * pct / (100 - pct));
			slice_start = now_ms();
		}
	}
	return NULL;
}

/* --------------------------- the dirty log ------------------------------- */

/*
 * KVM_GET_DIRTY_LOG's get-and-clear, then hand the bits to precopy. Under
 * a lock so that stop_vm's last harvest cannot return while the harvester
 * thread still holds bits it has taken but not yet passed on.
 */
static int harvest_dirty_log(struct vm *vm)
{
	size_t words = (vm->npages + 63) / 64;
	int err;

	pthread_mutex_lock(&vm->harvest_lock);
	for (size_t w = 0; w < words; w++)
		vm->harvest[w] = atomic_exchange(&vm->dirty_log[w], 0);
	err = precopy_region_mark_dirty(vm->s, vm->region, 0, vm->harvest, vm->npages);
	pthread_mutex_unlock(&vm->harvest_lock);
	return err;
}

static atomic_bool harvester_quit;

static void *harvester_main(void *arg)
{
	struct vm *vm = arg;

	while (!atomic_load(&harvester_quit)) {
		if (harvest_dirty_log(vm))
			fprintf(stderr, "vmm: precopy_region_mark_dirty failed\n");
		sleep_us(10000);
	}
	return NULL;
}

/* ------------------------- the hooks precopy calls ----------------------- */

static int vm_stop(void *opaque)
{
	struct vm *vm = opaque;

	pthread_mutex_lock(&vm->lock);
	vm->pause = true;
	while (vm->parked < vm->nvcpus)
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
	/* The vCPUs are parked: the last writes are in the log. Hand them
	 * over now, before precopy's final sync. */
	return harvest_dirty_log(vm);
}

static int vm_resume(void *opaque)
{
	struct vm *vm = opaque;

	pthread_mutex_lock(&vm->lock);
	vm->pause = false;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static int vm_save(void *opaque, void **buf, size_t *len)
{
	struct vm *vm = opaque;
	struct devstate *d = calloc(1, sizeof(*d)); /* precopy frees it */

	if (!d)
		return -ENOMEM;
	d->magic = DEV_MAGIC;
	d->nvcpus = vm->nvcpus;
	memcpy(d->writes, vm->writes, sizeof(d->writes));
	*buf = d;
	*len = sizeof(*d);
	return 0;
}

static int vm_load(void *opaque, const void *buf, size_t len)
{
	struct vm *vm = opaque;
	struct devstate d;

	if (len != sizeof(d))
		return -EINVAL;
	memcpy(&d, buf, sizeof(d));
	if (d.magic != DEV_MAGIC || d.nvcpus == 0 || d.nvcpus > MAX_VCPUS)
		return -EINVAL;
	vm->nvcpus = d.nvcpus;
	memcpy(vm->writes, d.writes, sizeof(d.writes));
	return 0;
}

static int vm_throttle(void *opaque, unsigned pct)
{
	struct vm *vm = opaque;

	atomic_store(&vm->throttle, pct);
	if (pct > vm->max_throttle)
		vm->max_throttle = pct;
	return 0;
}

static void vm_progress(void *opaque, const struct precopy_stats *st)
{
	static enum precopy_status last = PRECOPY_STATUS_NONE;
	static uint64_t last_ms;

	(void)opaque;
	/* Every status change, and at most every 500 ms besides. */
	if (st->status == last && st->total_time < last_ms + 500)
		return;
	last = st->status;
	last_ms = st->total_time;
	printf("  %6" PRIu64 " ms  %-10s pass %-3u remaining %6.1f MiB  sent %7.1f MiB  "
	       "%7.0f Mbit/s  dirty %7" PRIu64 " pages/s  throttle %u%%\n",
	       st->total_time, precopy_status_name(st->status), st->iteration,
	       (double)st->remaining / (1 << 20), (double)st->transferred / (1 << 20),
	       st->mbps, st->dirty_pages_rate, st->cpu_throttle_percentage);
	fflush(stdout);
}

/* ------------------------------- the VM ---------------------------------- */

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static int vm_map(struct vm *vm, size_t ram_size)
{
	vm->ram_size = ram_size;
	vm->npages = ram_size / PAGE;
	vm->ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	if (vm->ram == MAP_FAILED)
		return -errno;
	return 0;
}

/* Source: RAM with recognisable contents, then the vCPUs. */
static int vm_boot(struct vm *vm)
{
	size_t words = (vm->npages + 63) / 64;

	for (uint64_t p = 0; p < vm->npages; p++)
		for (size_t i = 8; i < PAGE; i += 8)
			memcpy(vm->ram + p * PAGE + i, &(uint64_t){ p * 4096 + i }, 8);
	vm->dirty_log = calloc(words, sizeof(*vm->dirty_log));
	vm->harvest = calloc(words, sizeof(*vm->harvest));
	if (!vm->dirty_log || !vm->harvest)
		return -ENOMEM;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		void **arg = malloc(2 * sizeof(void *));

		if (!arg)
			return -ENOMEM;
		arg[0] = vm;
		arg[1] = (void *)(uintptr_t)i;
		if (pthread_create(&vm->vcpu[i], NULL, vcpu_main, arg))
			return -EAGAIN;
	}
	return 0;
}

static void vm_shutdown(struct vm *vm)
{
	atomic_store(&vm->quit, true);
	vm_resume(vm);
	for (unsigned i = 0; i < vm->nvcpus; i++)
		pthread_join(vm->vcpu[i], NULL);
	free(vm->dirty_log);
	free(vm->harvest);
	munmap(vm->ram, vm->ram_size);
}

/* ---------------------------- the destination ---------------------------- */

/* Child process: receive into fresh RAM, check, report the RAM's hash. */
static int destination(size_t ram_size, int fd)
{
	struct vm vm = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
	struct precopy_callbacks cb = {
		.opaque = &vm, .load_device_state = vm_load, .resume_vm = vm_resume,
	};
	char uri[128], why[PRECOPY_ERRMSG_MAX];
	uint64_t sum = 0, total = 0, hash;
	int err;

	if ((err = vm_map(&vm, ram_size)) ||
	    (err = precopy_new(PRECOPY_ROLE_DEST, NULL, &cb, &vm.s)) ||
	    (err = precopy_add_region(vm.s, vm.ram, ram_size, PRECOPY_DIRTY_EXTERNAL)) < 0 ||
	    (err = precopy_listen(vm.s, "tcp:127.0.0.1:0")) ||
	    (err = precopy_local_uri(vm.s, uri, sizeof(uri)))) {
		fprintf(stderr, "vmm dest: set-up failed: %s\n", strerror(-err));
		return 1;
	}
	if (write(fd, uri, sizeof(uri)) != (ssize_t)sizeof(uri))
		return 1;
	err = precopy_incoming(vm.s);
	if (err) {
		precopy_strerror(vm.s, why, sizeof(why));
		fprintf(stderr, "vmm dest: incoming failed: %s\n", why);
		return 1;
	}
	/* Every write a vCPU made is one increment of a page counter. */
	for (uint64_t p = 0; p < vm.npages; p++)
		sum += *(uint64_t *)(vm.ram + p * PAGE);
	for (unsigned i = 0; i < vm.nvcpus; i++)
		total += vm.writes[i];
	hash = fnv1a(vm.ram, ram_size);
	printf("vmm dest: guest resumed; %u vCPUs made %" PRIu64 " writes, page counters add "
	       "up to %" PRIu64 "\n", vm.nvcpus, total, sum);
	fflush(stdout); /* the child leaves with _exit() */
	err = write(fd, &hash, sizeof(hash)) == (ssize_t)sizeof(hash) && sum == total ? 0 : 1;
	precopy_delete(&vm.s);
	munmap(vm.ram, ram_size);
	return err;
}

/* ------------------------------- the source ------------------------------ */

static unsigned long arg_num(int argc, char **argv, int *i)
{
	if (*i + 1 >= argc) {
		fprintf(stderr, "vmm: %s needs a value\n", argv[*i]);
		exit(2);
	}
	return strtoul(argv[++*i], NULL, 10);
}

/* The command line into @vm, @ram_size, @params; 0, or 2 for a bad one. */
static int parse_options(int argc, char **argv, struct vm *vm, size_t *ram_size,
			 struct precopy_params *params, bool *expect_throttle)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--ram"))
			*ram_size = arg_num(argc, argv, &i) << 20;
		else if (!strcmp(argv[i], "--vcpus"))
			vm->nvcpus = (unsigned)arg_num(argc, argv, &i);
		else if (!strcmp(argv[i], "--rate"))
			vm->rate = (unsigned)arg_num(argc, argv, &i);
		else if (!strcmp(argv[i], "--max-bandwidth"))
			params->max_bandwidth = arg_num(argc, argv, &i) << 20;
		else if (!strcmp(argv[i], "--downtime-limit"))
			params->downtime_limit_ms = arg_num(argc, argv, &i);
		else if (!strcmp(argv[i], "--auto-converge"))
			params->auto_converge = true;
		else if (!strcmp(argv[i], "--expect-throttle"))
			*expect_throttle = true;
		else {
			fprintf(stderr, "usage: vmm [--ram MIB] [--vcpus N] [--rate PAGES] "
				"[--max-bandwidth MIB] [--auto-converge] [--downtime-limit MS] "
				"[--expect-throttle]\n");
			return 2;
		}
	}
	if (*ram_size == 0 || vm->nvcpus == 0 || vm->nvcpus > MAX_VCPUS)
		return fprintf(stderr, "vmm: bad --ram or --vcpus\n"), 2;
	return 0;
}

/* The destination, forked before any thread exists; its URI in @uri, the
 * pipe it reports on in *@rfd. Return: its pid, or -1. */
static pid_t start_destination(size_t ram_size, char *uri, size_t len, int *rfd)
{
	int pfd[2];
	pid_t child;

	if (pipe(pfd))
		return perror("pipe"), -1;
	child = fork();
	if (child < 0)
		return perror("fork"), -1;
	if (child == 0) {
		close(pfd[0]);
		_exit(destination(ram_size, pfd[1]));
	}
	close(pfd[1]);
	if (read(pfd[0], uri, len) != (ssize_t)len) {
		fprintf(stderr, "vmm: the destination did not start\n");
		kill(child, SIGTERM);
		waitpid(child, NULL, 0);
		return -1;
	}
	*rfd = pfd[0];
	return child;
}

/* After a migration that succeeded: compare both ends' RAM and check
 * --expect-throttle. Return: the exit status. */
static int check_result(struct vm *vm, size_t ram_size, const struct precopy_stats *st,
			int rfd, pid_t child, bool expect_throttle)
{
	uint64_t src_hash, dst_hash = 0;
	int status;

	/* Success: the guest stays stopped here; it runs at the destination. */
	printf("vmm: %s in %" PRIu64 " ms, downtime %" PRIu64 " ms, %u passes, %" PRIu64
	       " dirty syncs, %.1f MiB sent, highest throttle %u%%%s\n",
	       precopy_status_name(st->status), st->total_time, st->downtime, st->iteration + 1,
	       st->dirty_sync_count, (double)st->transferred / (1 << 20), vm->max_throttle,
	       st->forced_switchover ? ", switchover forced by the watchdog" : "");
	src_hash = fnv1a(vm->ram, ram_size);
	if (read(rfd, &dst_hash, sizeof(dst_hash)) != (ssize_t)sizeof(dst_hash))
		dst_hash = ~src_hash;
	waitpid(child, &status, 0);
	vm_shutdown(vm);
	precopy_delete(&vm->s);
	printf("vmm: source RAM hash %016" PRIx64 ", destination %016" PRIx64 ": %s\n",
	       src_hash, dst_hash, src_hash == dst_hash ? "equal" : "DIFFERENT");
	if (src_hash != dst_hash || !WIFEXITED(status) || WEXITSTATUS(status))
		return 1;
	/* --expect-throttle: the guest could only converge by being throttled
	 * (through our set_throttle hook), and converged by the policy's own
	 * decision, not by the watchdog's backstop. */
	if (expect_throttle && (vm->max_throttle == 0 || st->forced_switchover)) {
		fprintf(stderr, "vmm: expected auto-converge to throttle the vCPUs until the "
			"migration converged; highest throttle %u%%, %s\n", vm->max_throttle,
			st->forced_switchover ? "switchover forced" : "not forced");
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct vm vm = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER,
			 .harvest_lock = PTHREAD_MUTEX_INITIALIZER, .nvcpus = 2, .rate = 20000 };
	struct precopy_params params;
	struct precopy_callbacks cb = {
		.opaque = &vm, .stop_vm = vm_stop, .resume_vm = vm_resume,
		.save_device_state = vm_save, .set_throttle = vm_throttle,
		.progress = vm_progress,
	};
	struct precopy_stats st;
	char uri[128], why[PRECOPY_ERRMSG_MAX];
	size_t ram_size = 64u << 20;
	pthread_t harvester;
	bool expect_throttle = false;
	int rfd, err;
	pid_t child;

	precopy_params_init(&params);
	err = parse_options(argc, argv, &vm, &ram_size, &params, &expect_throttle);
	if (err)
		return err;
	/* A backstop so a guest that never converges still ends. */
	params.max_time_ms = 60000;
	params.on_limit = PRECOPY_ON_LIMIT_FORCE;

	child = start_destination(ram_size, uri, sizeof(uri), &rfd);
	if (child < 0)
		return 1;

	/* The source: RAM, precopy session with the RAM registered as
	 * EXTERNAL (we report the writes), vCPUs, dirty-log harvester. */
	if ((err = vm_map(&vm, ram_size)) ||
	    (err = precopy_new(PRECOPY_ROLE_SOURCE, &params, &cb, &vm.s))) {
		fprintf(stderr, "vmm: set-up failed: %s\n", strerror(-err));
		return 1;
	}
	vm.region = precopy_add_region(vm.s, vm.ram, ram_size, PRECOPY_DIRTY_EXTERNAL);
	if (vm.region < 0 || (err = vm_boot(&vm))) {
		fprintf(stderr, "vmm: set-up failed: %s\n",
			strerror(vm.region < 0 ? -vm.region : -err));
		return 1;
	}
	pthread_create(&harvester, NULL, harvester_main, &vm);
	if (vm.rate)
		printf("vmm: %zu MiB, %u vCPUs writing %u pages/s each; migrating to %s\n",
		       ram_size >> 20, vm.nvcpus, vm.rate, uri);
	else
		printf("vmm: %zu MiB, %u vCPUs writing as fast as they can; migrating to %s\n",
		       ram_size >> 20, vm.nvcpus, uri);
	sleep_us(200000); /* let the guest dirty some memory first */

	err = precopy_migrate(vm.s, uri); /* blocks; our hooks run meanwhile */

	atomic_store(&harvester_quit, true);
	pthread_join(harvester, NULL);
	precopy_query(vm.s, &st);
	if (err) {
		precopy_strerror(vm.s, why, sizeof(why));
		fprintf(stderr, "vmm: migration failed: %s\n", why);
		vm_shutdown(&vm);
		precopy_delete(&vm.s);
		kill(child, SIGTERM);
		waitpid(child, NULL, 0);
		return 1;
	}
	return check_result(&vm, ram_size, &st, rfd, child, expect_throttle);
}

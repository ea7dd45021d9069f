/* SPDX-License-Identifier: MIT */
/*
 * on-limit postcopy over TCP loopback: a guest that dirties its memory
 * flat out never converges (avail-switchover-bandwidth of 1 byte/s makes
 * every expected downtime too long), so the watchdog switches over to
 * postcopy and the guest resumes at the destination with pages missing.
 *  - the pages come, every one checked: both memories equal, the guest's
 *    pattern verified, the counts of pages asked for and pushed add up;
 *  - a guest at the destination reading its pages in random order while
 *    they are missing gets each one right, and its faults are answered
 *    (requests, asked-for pages sent first);
 *  - once the guest is handed over, neither end can cancel (-EBUSY), and
 *    on-limit cannot change to or from postcopy while migrating;
 *  - a source that dies during postcopy leaves the destination failing
 *    with that said, and its guest blocked on the missing pages, never
 *    reading them empty; a destination that dies leaves the source
 *    failing with -ENOTRECOVERABLE, its guest stopped;
 *  - over a transport that does not carry postcopy, the migration is
 *    refused before it starts.
 * Without userfaultfd at the destination the test is skipped (77).
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "uffd_place.h"

#define MiB (1ull << 20)
#define RAM (64 * MiB)
#define PAGE PRECOPY_PAGE_SIZE

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Parameters that never converge (with a device-state size set, see
 * never_converges()) and switch to postcopy in the middle of a pass, so
 * that pages are missing at the handover whatever the guest wrote: 300 ms
 * into a bulk pass slowed to 16 MiB/s (@cut_bulk: most pages missing), or
 * 1 s into a migration at 128 MiB/s (a later pass). */
static struct precopy_params postcopy_params(bool cut_bulk, unsigned channels)
{
	struct precopy_params p;

	precopy_params_init(&p);
	p.on_limit = PRECOPY_ON_LIMIT_POSTCOPY;
	p.avail_switchover_bandwidth = 1;
	p.channels = channels;
	p.max_bandwidth = cut_bulk ? 16 * MiB : 128 * MiB;
	p.max_time_ms = cut_bulk ? 300 : 1000;
	return p;
}

/* Even with nothing dirty at a pass end, a switchover would carry device
 * state at 1 byte/s: never within the limit. */
static void never_converges(struct h_src *s)
{
	assert_int_equal(precopy_set_param(s->s, PRECOPY_PARAM_DEVICE_STATE_SIZE, 4096), 0);
}

/* --- a guest at the destination: reads every page in random order ------- */

static struct reader {
	struct h_dest *d;
	const uint8_t *src;    /* the source's memory, frozen once stopped */
	pthread_t th;
	bool started;
	atomic_bool done;      /* read every page */
	atomic_bool wrong;     /* a page differed from the source's */
	atomic_uint_fast64_t pages;
	uint64_t first_wrong;
} rd;

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	uint64_t n = r->d->len / PAGE, *order = malloc(n * sizeof(*order));
	uint64_t x = 0x9e3779b97f4a7c15ull;

	if (!order)
		return NULL;
	for (uint64_t i = 0; i < n; i++)
		order[i] = i;
	for (uint64_t i = n - 1; i > 0; i--) { /* Fisher-Yates, xorshift */
		uint64_t j, t;

		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		j = x % (i + 1);
		t = order[i], order[i] = order[j], order[j] = t;
	}
	for (uint64_t i = 0; i < n; i++) {
		const uint8_t *got = (const uint8_t *)r->d->ram + order[i] * PAGE;

		if (memcmp(got, r->src + order[i] * PAGE, PAGE) && !atomic_load(&r->wrong)) {
			r->first_wrong = order[i];
			atomic_store(&r->wrong, true);
		}
		atomic_fetch_add(&r->pages, 1);
	}
	free(order);
	atomic_store(&r->done, true);
	return NULL;
}

/* resume_vm at the destination: the guest starts reading at once. */
static int start_reader(struct h_dest *d)
{
	rd.d = d;
	rd.started = pthread_create(&rd.th, NULL, reader_main, &rd) == 0;
	return rd.started ? 0 : -EAGAIN;
}

/* --- the source's progress hook ----------------------------------------- */

static struct watch {
	struct h_dest *d;
	bool seen_running;     /* a progress call before the handover */
	int set_param_err;     /* on-limit force while migrating */
	bool seen_postcopy;
	int cancel_src, cancel_dst; /* once handed over */
	bool wait_request;     /* hold the push until the destination asked */
	bool die;              /* _exit at the handover (a source killed) */
	pid_t kill_dest;       /* SIGKILL this destination at the handover */
} w;

static void on_progress(struct h_src *s, const struct precopy_stats *st)
{
	if (!st->postcopy) {
		if (!w.seen_running && st->status == PRECOPY_STATUS_BULK) {
			w.seen_running = true;
			w.set_param_err = precopy_set_param(s->s, PRECOPY_PARAM_ON_LIMIT,
							    PRECOPY_ON_LIMIT_FORCE);
		}
		return;
	}
	if (w.seen_postcopy)
		return;
	w.seen_postcopy = true;
	if (w.die)
		_exit(0); /* as if killed: the kernel closes the connection */
	if (w.kill_dest) { /* before a page is pushed */
		kill(w.kill_dest, SIGKILL);
		waitpid(w.kill_dest, NULL, 0);
		return;
	}
	w.cancel_src = precopy_cancel(s->s);
	w.cancel_dst = precopy_cancel(w.d->s);
	/* Nothing is pushed before this returns: the destination's guest,
	 * reading, waits on a missing page, which it must ask for. */
	while (w.wait_request && !atomic_load(&rd.done)) {
		struct precopy_stats ds;

		precopy_query(w.d->s, &ds);
		if (ds.postcopy_requests)
			break;
		sleep_ms(1);
	}
}

/* --- the cases ---------------------------------------------------------- */

/* Migrate @ram with postcopy; the reader runs at the destination if @read. */
static void postcopy_ok(bool cut_bulk, unsigned channels, bool memfd, bool read)
{
	struct precopy_params p = postcopy_params(cut_bulk, channels);
	struct pc_guest *g = h_guest_new(&(struct pc_guest_opts){
		.ram = RAM, .dirty_rate = -1, .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
		.zero_pct = 10, .seed = 7 });
	struct precopy_stats ss, ds;
	struct h_src s;
	struct h_dest d;

	memset(&rd, 0, sizeof(rd));
	memset(&w, 0, sizeof(w));
	rd.src = pc_guest_ram(g, NULL);
	w.d = &d;
	w.wait_request = read;
	assert_int_equal(h_dest_start_opts(&d, RAM, &(struct h_dest_opts){
		.p = &p, .memfd = memfd, .on_resume = read ? start_reader : NULL }), 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	never_converges(&s);
	s.on_progress = on_progress;
	assert_int_equal(h_src_start(&s, d.uri), 0);
	assert_int_equal(h_src_join(&s), 0);
	assert_int_equal(h_dest_join(&d), 0);
	if (rd.started)
		pthread_join(rd.th, NULL);
	precopy_query(s.s, &ss);
	precopy_query(d.s, &ds);
	if (read) {
		if (atomic_load(&rd.wrong))
			fail_msg("the destination's guest read page %llu wrong",
				 (unsigned long long)rd.first_wrong);
		assert_true(atomic_load(&rd.done));
		assert_int_equal(atomic_load(&rd.pages), RAM / PAGE);
		/* its faults were asked for and answered first */
		assert_true(ds.postcopy_requests >= 1);
		assert_true(ss.postcopy_pages_requested >= 1);
		assert_true(ds.postcopy_latency_p99_us >= ds.postcopy_latency_median_us);
		printf("# %llu requests, %llu pages asked for, %llu pushed; fault to page median %llu us, p99 %llu us\n",
		       (unsigned long long)ds.postcopy_requests,
		       (unsigned long long)ss.postcopy_pages_requested,
		       (unsigned long long)ss.postcopy_pages_pushed,
		       (unsigned long long)ds.postcopy_latency_median_us,
		       (unsigned long long)ds.postcopy_latency_p99_us);
	}
	h_check_migrated(&s, &d);
	if (!ss.postcopy || !ds.postcopy)
		fail_msg("postcopy: source %d, destination %d; source forced %d, iteration %u, expected downtime %llu ms",
			 ss.postcopy, ds.postcopy, ss.forced_switchover, ss.iteration,
			 (unsigned long long)ss.expected_downtime);
	assert_true(w.seen_running);
	assert_true(w.seen_postcopy);
	assert_int_equal(w.set_param_err, -EBUSY);
	assert_int_equal(w.cancel_src, -EBUSY);
	assert_int_equal(w.cancel_dst, -EBUSY);
	/* every page missing at the handover came once, asked for or pushed */
	assert_true(ss.postcopy_pages_pushed + ss.postcopy_pages_requested > 0);
	assert_int_equal(ds.postcopy_pages_pushed, ss.postcopy_pages_pushed);
	assert_int_equal(ds.postcopy_pages_requested, ss.postcopy_pages_requested);
	assert_true(ss.postcopy_time > 0 && ds.postcopy_time > 0);
	assert_int_equal(ss.remaining, 0);
	assert_int_equal(ds.remaining, 0);
	if (cut_bulk) /* the bulk pass was cut: most pages came in postcopy */
		assert_true(ss.postcopy_pages_pushed + ss.postcopy_pages_requested >
			    RAM / PAGE / 4);
	h_free_all(&s, &d, &g);
}

H_CASE(postcopy__pages_come_verified, postcopy_ok(false, 1, false, false))
H_CASE(postcopy__two_channels_memfd, postcopy_ok(false, 2, true, false))
H_CASE(postcopy__guest_reads_in_random_order, postcopy_ok(true, 1, false, true))
H_CASE(postcopy__guest_reads_memfd, postcopy_ok(true, 1, true, true))

/* shm: does not carry postcopy: refused before anything starts. */
static void postcopy__refused_over_shm(void **state)
{
	struct precopy_params p = postcopy_params(false, 1);
	struct pc_guest *g = h_guest_new(&(struct pc_guest_opts){
		.ram = 4 * MiB, .dirty_rate = -1, .threads = 1 });
	struct h_src s;
	char why[PRECOPY_ERRMSG_MAX];

	(void)state;
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(precopy_migrate(s.s, "shm:/nonexistent/postcopy.sock"), -EOPNOTSUPP);
	precopy_strerror(s.s, why, sizeof(why));
	assert_non_null(strstr(why, "postcopy"));
	assert_int_equal(s.stops, 0);
	h_free_all(&s, NULL, &g);
}

/*
 * The source dies once the guest is handed over, before any page was
 * pushed: the destination fails and says the pages never came; its guest,
 * reading, waits on the first missing page and never reads it empty.
 * Last: the reader stays blocked until the process ends.
 */
static void postcopy__source_killed(void **state)
{
	struct precopy_params p = postcopy_params(true, 1);
	struct precopy_stats ds;
	static struct h_dest d;
	uint64_t pages;
	pid_t pid;
	int status;

	(void)state;
	memset(&rd, 0, sizeof(rd));
	memset(&w, 0, sizeof(w));
	assert_int_equal(h_dest_start_opts(&d, RAM, &(struct h_dest_opts){
		.p = &p, .no_run = true, .on_resume = start_reader }), 0);
	/* the source's memory is the child's: here only how far the reader
	 * gets matters, and it must not get past a missing page */
	rd.src = calloc(1, RAM);
	assert_non_null(rd.src);
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct pc_guest *g;
		struct h_src s;

		if (pc_guest_new(&(struct pc_guest_opts){ .ram = RAM, .dirty_rate = -1,
							   .threads = 1, .seed = 3 }, &g) ||
		    pc_guest_start(g) || h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO) ||
		    precopy_set_param(s.s, PRECOPY_PARAM_DEVICE_STATE_SIZE, 4096))
			_exit(2);
		w.die = true;
		w.d = &d; /* (not used before the exit) */
		s.on_progress = on_progress;
		if (h_src_start(&s, d.uri))
			_exit(2);
		h_src_join(&s);
		_exit(3); /* the migration ended without reaching postcopy */
	}
	assert_int_equal(h_dest_run(&d), 0);
	assert_true(h_dest_join(&d) < 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	precopy_query(d.s, &ds);
	assert_int_equal(ds.status, PRECOPY_STATUS_FAILED);
	assert_true(ds.postcopy);
	assert_non_null(strstr(ds.error, "never came"));
	assert_true(d.resumed == 1 && rd.started);
	/* The reader waits on a missing page: it reads not one page more,
	 * however long it is given (a woken one would read empty pages). */
	pages = atomic_load(&rd.pages);
	sleep_ms(300);
	assert_false(atomic_load(&rd.done));
	assert_int_equal(atomic_load(&rd.pages), pages);
	assert_true(pages < RAM / PAGE);
	/* d stays: deleting it would end the wait (see precopy_delete()) */
}

/*
 * The destination dies once the guest is handed over, before any page
 * was pushed: the source fails with -ENOTRECOVERABLE and never resumes
 * its guest (it may run there).
 */
static void postcopy__destination_killed(void **state)
{
	struct precopy_params p = postcopy_params(true, 1);
	struct pc_guest *g;
	struct h_src s;
	char uri[128] = "", why[PRECOPY_ERRMSG_MAX];
	int pfd[2];
	pid_t pid;

	(void)state;
	memset(&w, 0, sizeof(w));
	assert_int_equal(pipe(pfd), 0);
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		static struct h_dest d;

		close(pfd[0]);
		if (h_dest_start_opts(&d, RAM, &(struct h_dest_opts){ .p = &p }) ||
		    write(pfd[1], d.uri, strlen(d.uri)) < 0)
			_exit(2);
		close(pfd[1]);
		h_dest_join(&d);
		_exit(3); /* not killed: the migration ended */
	}
	close(pfd[1]);
	assert_true(read(pfd[0], uri, sizeof(uri) - 1) > 0);
	close(pfd[0]);
	g = h_guest_new(&(struct pc_guest_opts){ .ram = RAM, .dirty_rate = -1, .threads = 1 });
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	never_converges(&s);
	w.kill_dest = pid;
	s.on_progress = on_progress;
	assert_int_equal(h_src_start(&s, uri), 0);
	assert_int_equal(h_src_join(&s), -ENOTRECOVERABLE);
	assert_true(w.seen_postcopy);
	h_expect_status(s.s, PRECOPY_STATUS_FAILED);
	precopy_strerror(s.s, why, sizeof(why));
	assert_non_null(strstr(why, "not resumed here"));
	assert_int_equal(s.stops, 1);
	assert_int_equal(s.resumes, 0);
	h_free_all(&s, NULL, &g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(postcopy__pages_come_verified),
		cmocka_unit_test(postcopy__two_channels_memfd),
		cmocka_unit_test(postcopy__guest_reads_in_random_order),
		cmocka_unit_test(postcopy__guest_reads_memfd),
		cmocka_unit_test(postcopy__refused_over_shm),
		cmocka_unit_test(postcopy__destination_killed),
		cmocka_unit_test(postcopy__source_killed),
	};
	struct pc_uffd_place *u;
	int err = pc_uffd_place_open(&u);

	if (err) {
		printf("userfaultfd is not available here (%s): postcopy cannot run\n",
		       strerror(-err));
		return 77;
	}
	pc_uffd_place_close(u);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

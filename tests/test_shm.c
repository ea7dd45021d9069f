/* SPDX-License-Identifier: MIT */
/*
 * Whole migrations over "shm:PATH": copy mode into a memfd destination
 * and into plain memory, handoff of a memfd guest; every page
 * verified with the synthetic guest's pattern. Robustness: a destination
 * SIGKILLed mid-migration, the socket path removed mid-migration; both
 * leave the source guest running and intact. A source SIGKILLed in copy
 * mode (bulk) and in a handoff (its memfd already across), and a handoff
 * refused after the destination mapped the source's RAM: the destination
 * fails, resumes nothing and keeps no descriptor and no mapping of the
 * source's memory; a migration to a fresh destination then succeeds.
 * Peer check: a process of another uid is refused in both directions.
 * NUMA placement on node 0 and a clear error for a node that does not
 * exist. What a source acting in bad faith holds of the destination's RAM
 * once the regions are revoked: nothing to seal it or write it with.
 * RAM above what the host can hold is refused with both sizes.
 *
 * Needs root for the uid tests (they setuid() to nobody); they skip
 * otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "stream.h" /* frame kinds and little-endian helpers */
#include "transport.h"

#define MiB (1ull << 20)
#define NOBODY 65534

static char tmpdir[64];
static unsigned seq;

/* A fresh "shm:PATH" in the test's directory. */
static const char *new_uri(char *buf, size_t len)
{
	snprintf(buf, len, "shm:%s/s%u.sock", tmpdir, seq++);
	return buf;
}

static struct pc_guest *make_guest(size_t ram, double rate, bool memfd)
{
	return h_guest_new(&(struct pc_guest_opts){ .ram = ram, .dirty_rate = rate,
						    .pattern = PC_GUEST_SEQUENTIAL, .threads = 1,
						    .zero_pct = 10, .seed = 7, .memfd = memfd });
}

/* h_migrate_ok(), and the source stopped once, never resumed. */
static void migrate_ok(struct h_src *s, struct h_dest *d, struct pc_guest *g,
		       const struct precopy_params *p)
{
	h_migrate_ok(s, d, g, p);
	assert_int_equal(s->stops, 1);
	assert_int_equal(s->resumes, 0);
}

/* A 128 MiB guest writing 64 MiB/s, its RAM a memfd if @memfd_src,
 * migrated with @p into a destination whose RAM is a memfd if
 * @memfd_dest: migrate_ok(). The caller frees @s, @d and *@g. */
static void migrate_busy(struct h_src *s, struct h_dest *d, struct pc_guest **g, bool memfd_src,
			 bool memfd_dest, const struct precopy_params *p)
{
	size_t ram = 128 * MiB;
	char uri[128];

	*g = make_guest(ram, 64.0 * MiB, memfd_src);
	usleep(50 * 1000); /* let the guest write */
	assert_int_equal(h_dest_start_uri(d, ram, new_uri(uri, sizeof(uri)), memfd_dest), 0);
	migrate_ok(s, d, *g, p);
}

static void copy_mode(bool memfd_dest, unsigned channels)
{
	struct pc_guest *g;
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;

	precopy_params_init(&p);
	p.channels = channels;
	migrate_busy(&s, &d, &g, false, memfd_dest, &p);
	assert_true(pc_guest_writes(g) > 0);
	h_free_all(&s, &d, &g);
}

H_CASE(copy__memfd_destination_1_channel, copy_mode(true, 1))
H_CASE(copy__memfd_destination_2_channels, copy_mode(true, 2))
H_CASE(copy__plain_destination_framed, copy_mode(false, 2))

/* The source guest is a memfd: its RAM changes hands; no page passes. */
static void handoff__running_guest(void **state)
{
	struct pc_guest *g;
	struct precopy_stats st;
	struct h_dest d;
	struct h_src s;
	size_t len;
	volatile uint8_t *src;

	(void)state;
	migrate_busy(&s, &d, &g, true, false, NULL);
	precopy_query(s.s, &st);
	assert_int_equal(st.normal, 0);       /* no page was copied */
	assert_true(st.transferred < 64 * 1024); /* device state and records */
	/* the same pages: a write at the destination shows at the source */
	src = pc_guest_ram(g, &len);
	((volatile uint8_t *)d.ram)[len - 1] ^= 0xff;
	assert_int_equal(src[len - 1], ((volatile uint8_t *)d.ram)[len - 1]);
	h_free_all(&s, &d, &g);
}

/* A destination whose region does not match refuses; the source guest was
 * never stopped and its memory is untouched. */
static void handoff__length_mismatch_refused(void **state)
{
	struct pc_guest *g = make_guest(8 * MiB, 16.0 * MiB, true);
	struct h_dest d;
	struct h_src s;
	char uri[128];

	(void)state;
	assert_int_equal(h_dest_start_uri(&d, 4 * MiB, new_uri(uri, sizeof(uri)), false), 0);
	h_src_go(&s, g, NULL, d.uri);
	h_check_refused(&s, &d, "region 0");
	h_check_guest_intact(g, "source");
	h_free_all(&s, &d, &g);
}

/* --- robustness ------------------------------------------------------------- */

/* A destination in a child process, on @path, with memfd RAM. */
static pid_t fork_dest(const char *uri, size_t ram)
{
	char path[128];
	pid_t pid;

	snprintf(path, sizeof(path), "%s", uri + 4);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct h_dest d;

		if (h_dest_start_uri(&d, ram, uri, true))
			_exit(3);
		_exit(h_dest_join(&d) ? 1 : 0);
	}
	for (int i = 0; i < 500; i++) { /* until it listens */
		struct stat st;

		if (stat(path, &st) == 0)
			return pid;
		usleep(10 * 1000);
	}
	fail_msg("the destination did not start");
	return pid;
}

/* Migrate slowly into a peer, do @what mid-migration; the migration fails
 * and the source guest runs on, intact. */
static void fail_midway(bool kill_peer)
{
	size_t ram = 128 * MiB;
	struct precopy_params p;
	struct precopy_stats st;
	struct pc_guest *g;
	struct h_src s;
	char uri[128], msg[PRECOPY_ERRMSG_MAX];
	int status, err;
	pid_t pid;

	/* fork before any thread exists in this process */
	new_uri(uri, sizeof(uri));
	pid = fork_dest(uri, ram);
	g = make_guest(ram, 64.0 * MiB, false);
	precopy_params_init(&p);
	p.max_bandwidth = 32 * MiB; /* about 4 s for the bulk pass */
	h_src_go(&s, g, &p, uri);
	assert_true(h_wait_status(s.s, PRECOPY_STATUS_BULK, 30000));
	usleep(500 * 1000);
	if (kill_peer)
		kill(pid, SIGKILL);
	else
		assert_int_equal(unlink(uri + 4), 0);
	err = h_src_join(&s);
	assert_true(err < 0 && err != -ECANCELED);
	waitpid(pid, &status, 0);
	if (kill_peer)
		assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	else
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1); /* failed, not hung */
	precopy_query(s.s, &st);
	assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
	precopy_strerror(s.s, msg, sizeof(msg));
	print_message("source: %s\n", msg);
	assert_int_equal(s.resumes, s.stops);
	h_src_free(&s);
	h_check_guest_intact(g, "source");
	pc_guest_delete(&g);
}

H_CASE(robust__peer_killed_mid_migration, fail_midway(true))
H_CASE(robust__socket_path_removed_mid_migration, fail_midway(false))

/* --- the source dies ---------------------------------------------------------- */

/* Mappings of memfds in this process (ours or a peer's). */
static long memfd_maps(void)
{
	char line[512];
	long n = 0;
	FILE *f = fopen("/proc/self/maps", "r");

	assert_non_null(f);
	while (fgets(line, sizeof(line), f))
		if (strstr(line, "/memfd:"))
			n++;
	fclose(f);
	return n;
}

/* What is mapped at @addr: true if a memfd ("/memfd:NAME"), with NAME. */
static bool memfd_at(const void *addr, char *name, size_t len)
{
	char line[512];
	bool found = false;
	FILE *f = fopen("/proc/self/maps", "r");

	assert_non_null(f);
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		const char *m;

		if (sscanf(line, "%lx-%lx", &lo, &hi) != 2 || (uintptr_t)addr < lo ||
		    (uintptr_t)addr >= hi)
			continue;
		m = strstr(line, "/memfd:");
		if (m) {
			snprintf(name, len, "%s", m + 7);
			name[strcspn(name, " \n")] = '\0';
			found = true;
		}
		break;
	}
	fclose(f);
	return found;
}

static void shm_leaks_mark(struct h_leaks *l)
{
	h_leaks_mark(l, memfd_maps, "memfd mappings");
}

#define shm_leaks_check h_leaks_check

/*
 * A source in a child process: it reads the destination's URI from @rfd,
 * migrates a 128 MiB guest (a memfd one for @handoff) slowly, and for
 * @handoff says "h" on @wfd once its memfd went across (from
 * save_device_state, which comes after the HANDOFF records) and waits
 * there to be killed.
 */
static int handoff_wfd = -1;

static void handed_over(struct h_src *s)
{
	(void)s;
	if (write(handoff_wfd, "h", 1) != 1)
		_exit(7);
	for (;;)
		pause();
}

static pid_t fork_source(bool handoff, int *uri_wfd, int *said_rfd)
{
	int up[2], down[2];
	pid_t pid;

	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct precopy_params p;
		struct pc_guest *g;
		struct h_src s;
		char uri[128];

		close(down[1]);
		close(up[0]);
		if (read(down[0], uri, sizeof(uri)) != (ssize_t)sizeof(uri))
			_exit(2);
		g = make_guest(128 * MiB, 64.0 * MiB, handoff);
		precopy_params_init(&p);
		p.max_bandwidth = 32 * MiB; /* copy mode: about 4 s of bulk pass */
		if (h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO))
			_exit(3);
		handoff_wfd = up[1];
		s.on_save = handoff ? handed_over : NULL;
		if (h_src_start(&s, uri))
			_exit(4);
		h_src_join(&s);
		_exit(0); /* killed long before in the tests */
	}
	close(down[0]);
	close(up[1]);
	*uri_wfd = down[1];
	*said_rfd = up[0];
	return pid;
}

/* A migration in this process into a fresh destination works. */
static void then_migrate_ok(bool handoff)
{
	size_t ram = 32 * MiB;
	struct pc_guest *g = make_guest(ram, 16.0 * MiB, handoff);
	struct h_dest d;
	struct h_src s;
	char uri[128];

	assert_int_equal(h_dest_start_uri(&d, ram, new_uri(uri, sizeof(uri)), !handoff), 0);
	migrate_ok(&s, &d, g, NULL);
	h_free_all(&s, &d, &g);
}

/* The destination never reports success, resumes nothing, keeps nothing
 * of the dead source: no descriptor, no mapping of its memory. */
static void check_dest_failed(struct h_dest *d)
{
	struct precopy_stats st;
	char name[64];

	assert_true(h_dest_join(d) < 0);
	precopy_query(d->s, &st);
	print_message("destination: %s: %s\n", precopy_status_name(st.status), st.error);
	assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
	assert_true(st.error[0] != '\0');
	assert_int_equal(d->resumed, 0);
	assert_false(d->have_desc);
	if (memfd_at(d->ram, name, sizeof(name)))
		assert_string_not_equal(name, "pc-guest-ram"); /* ours at most */
}

/*
 * The source process is killed mid-migration: in copy mode into memfd RAM
 * (the source maps it and copies straight in), in bulk; with @handoff,
 * once the source's RAM memfd has gone across and the device state and
 * COMPLETE have not. The destination fails, leaks nothing, and takes a
 * good migration after.
 */
static void source_killed(bool handoff)
{
	size_t ram = 128 * MiB;
	struct h_leaks lk;
	struct h_dest d;
	char uri[128], said;
	int wfd, rfd, status;
	pid_t pid;

	pid = fork_source(handoff, &wfd, &rfd); /* before any thread exists here */
	shm_leaks_mark(&lk);
	assert_int_equal(h_dest_start_uri(&d, ram, new_uri(uri, sizeof(uri)), !handoff), 0);
	assert_int_equal(write(wfd, d.uri, sizeof(uri)), (ssize_t)sizeof(uri));
	if (handoff) {
		assert_int_equal(read(rfd, &said, 1), 1); /* handed over, now waiting */
		assert_int_equal(said, 'h');
	} else {
		assert_true(h_wait_status(d.s, PRECOPY_STATUS_BULK, 30000));
		usleep(500 * 1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	close(wfd);
	close(rfd);
	check_dest_failed(&d);
	h_dest_free(&d);
	shm_leaks_check(&lk, "after the source was killed");
	then_migrate_ok(handoff);
	shm_leaks_check(&lk, "after a good migration");
}

H_CASE(robust__source_killed_copy_mode, source_killed(false))
H_CASE(robust__source_killed_in_handoff, source_killed(true))

/* Handoff refused after the destination mapped the source's RAM (its
 * load_device_state fails): the mapping is undone, the source resumes its
 * guest intact and hands it over again. */
static int load_fails(struct h_dest *d)
{
	(void)d;
	return -EIO;
}

static void handoff__refused_after_mapping_undone(void **state)
{
	size_t ram = 32 * MiB;
	struct h_dest_opts o = { .on_load = load_fails };
	struct precopy_stats st;
	struct h_leaks lk;
	struct h_dest d;
	struct h_src s;
	struct pc_guest *g;
	char uri[128], name[64];

	(void)state;
	shm_leaks_mark(&lk);
	g = make_guest(ram, 16.0 * MiB, true);
	o.uri = new_uri(uri, sizeof(uri));
	assert_int_equal(h_dest_start_opts(&d, ram, &o), 0);
	h_src_go(&s, g, NULL, d.uri);
	assert_true(h_src_join(&s) < 0);
	assert_true(h_dest_join(&d) < 0);
	assert_true(d.have_desc); /* it got as far as the device state */
	assert_int_equal(d.resumed, 0);
	if (memfd_at(d.ram, name, sizeof(name)))
		fail_msg("the destination still maps memfd %s at its region", name);
	precopy_query(d.s, &st);
	print_message("destination: %s: %s\n", precopy_status_name(st.status), st.error);
	assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
	precopy_query(s.s, &st);
	print_message("source: %s: %s\n", precopy_status_name(st.status), st.error);
	assert_int_equal(st.status, PRECOPY_STATUS_FAILED);
	assert_non_null(strstr(st.error, "load_device_state"));
	assert_int_equal(s.resumes, s.stops);
	h_src_free(&s);
	h_dest_free(&d);
	h_check_guest_intact(g, "source");
	pc_guest_delete(&g);
	shm_leaks_check(&lk, "after the refused handoff");
	then_migrate_ok(true);
	shm_leaks_check(&lk, "after a good migration");
}

/* --- peer check ----------------------------------------------------------- */

static void skip_unless_root(void)
{
	if (geteuid() != 0) {
		print_message("not root: cannot setuid() to another user; skipped\n");
		skip();
	}
}

/* A process of another uid connecting to us is refused, and told why. */
static void peer__other_uid_connecting_refused(void **state)
{
	const struct pc_transport_ops *ops = pc_transport_find("shm");
	struct pc_transport_opts o = { .channels = 1 };
	struct h_accept a = { 0 };
	char uri[128];
	int status;
	pid_t pid;

	(void)state;
	skip_unless_root();
	new_uri(uri, sizeof(uri));
	assert_int_equal(ops->listen(uri + 4, &o, &a.l), 0);
	assert_int_equal(chmod(uri + 4, 0777), 0); /* the kernel lets anyone connect */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct pc_transport *t = NULL;
		char why[160] = "";
		struct pc_transport_opts co = { .channels = 1, .why = why, .whylen = sizeof(why) };
		int err;

		if (setgid(NOBODY) || setuid(NOBODY))
			_exit(10);
		err = ops->connect(uri + 4, &co, &t);
		printf("  nobody connecting: %s (%s)\n", strerror(-err), why);
		_exit(err == -EACCES && strstr(why, "uid 65534") ? 0 : 1);
	}
	h_accept_start(&a);
	waitpid(pid, &status, 0);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	/* our accept is still waiting: the stranger did not count */
	usleep(50 * 1000);
	ops->listener_abort(a.l);
	assert_int_equal(h_accept_join(&a), -ECANCELED);
	ops->listener_close(a.l);
}

/* A listener of another uid is not trusted with our memory either. */
static void peer__other_uid_listening_refused(void **state)
{
	const struct pc_transport_ops *ops = pc_transport_find("shm");
	struct pc_transport *t = NULL;
	char uri[128], why[160] = "";
	struct pc_transport_opts o = { .channels = 1, .why = why, .whylen = sizeof(why) };
	int pfd[2], status, err;
	char c;
	pid_t pid;

	(void)state;
	skip_unless_root();
	new_uri(uri, sizeof(uri));
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct pc_listener *l;
		struct pc_transport *at = NULL;
		struct pc_transport_opts lo = { 0 };

		close(pfd[0]);
		if (setgid(NOBODY) || setuid(NOBODY))
			_exit(10);
		if (ops->listen(uri + 4, &lo, &l))
			_exit(11);
		if (write(pfd[1], "r", 1) != 1)
			_exit(12);
		/* accept would wait forever for a peer that never says hello;
		 * the parent kills us */
		ops->accept(l, &lo, &at);
		_exit(13);
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], &c, 1), 1);
	close(pfd[0]);
	err = ops->connect(uri + 4, &o, &t);
	print_message("connecting to nobody's listener: %s (%s)\n", strerror(-err), why);
	assert_int_equal(err, -EACCES);
	assert_non_null(strstr(why, "uid 65534"));
	assert_null(t);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	unlink(uri + 4);
}

/* --- NUMA ------------------------------------------------------------------- */

static void numa__node0_placement_reported(void **state)
{
	size_t len = 16 * MiB;
	uint64_t per_node[64] = { 0 }, absent = 0;
	void *mem;
	int fd, n, max = precopy_numa_max_node();

	(void)state;
	if (max < 0) {
		print_message("no NUMA support in this kernel: skipped\n");
		skip();
	}
	assert_int_equal(precopy_memfd_alloc(len, 0, &mem, &fd), 0);
	n = precopy_numa_where(mem, len, 64, per_node, 64, &absent);
	assert_int_equal(n, 64);
	assert_int_equal(absent, 64); /* nothing touched yet */
	memset(mem, 1, len);
	n = precopy_numa_where(mem, len, 64, per_node, 64, &absent);
	assert_int_equal(n, 64);
	assert_int_equal(absent, 0);
	assert_int_equal(per_node[0], 64);
	/* less than a page, no samples, no counters: refused */
	assert_int_equal(precopy_numa_where(mem, 100, 64, per_node, 64, &absent), -EINVAL);
	assert_int_equal(precopy_numa_where(mem, len, 0, per_node, 64, &absent), -EINVAL);
	assert_int_equal(precopy_numa_where(mem, len, 64, NULL, 64, &absent), -EINVAL);
	assert_int_equal(precopy_numa_where(mem, len, 64, NULL, 0, NULL), 64);
	munmap(mem, len);
	close(fd);
}

static void numa__invalid_node_refused(void **state)
{
	void *mem = NULL;
	int fd = -1, max = precopy_numa_max_node();

	(void)state;
	if (max < 0)
		skip();
	assert_int_equal(precopy_numa_node_ok(max + 1), -EINVAL);
	assert_int_equal(precopy_numa_node_ok(-2), -EINVAL);
	assert_int_equal(precopy_memfd_alloc(4 * MiB, max + 1, &mem, &fd), -EINVAL);
	assert_null(mem);
	assert_int_equal(fd, -1);
}

static void api__region_fd_checked(void **state)
{
	struct precopy_session *s;
	void *mem;
	int fd;

	(void)state;
	assert_int_equal(precopy_memfd_alloc(8 * MiB, -1, &mem, &fd), 0);
	assert_int_equal(precopy_new(PRECOPY_ROLE_DEST, NULL, NULL, &s), 0);
	assert_int_equal(precopy_add_region_fd(s, mem, 8 * MiB, -1, 0, 0), -EINVAL);
	assert_int_equal(precopy_add_region_fd(s, mem, 8 * MiB, fd, 4096, 0), -EINVAL); /* past EOF */
	assert_int_equal(precopy_add_region_fd(s, mem, 8 * MiB, fd, 100, 0), -EINVAL);
	assert_int_equal(precopy_add_region_fd(s, mem, 8 * MiB, fd, 0, 0), 0);
	assert_int_equal(precopy_listen(s, "shm:"), -EINVAL);
	assert_int_equal(precopy_delete(&s), 0);
	munmap(mem, 8 * MiB);
	close(fd);
}

/* --- what a source holds of the destination's RAM --------------------- */

/* A source that speaks the transport's wire format itself and keeps
 * whatever it is handed: one channel, connected and greeted with hello
 * flags @flags; *@vflags (optional): the verdict's flags. */
static int raw_source_connect(const char *path, uint8_t flags, uint8_t *vflags)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint8_t h[32] = { 0 }, r[160];
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_true(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	pc_put_le32(h, 0x31534350u); /* "PCS1" */
	h[4] = 1;                    /* version */
	h[5] = flags;                /* bit 0: heartbeats */
	h[6] = 0;                    /* channel */
	h[8] = 1;                    /* of one */
	pc_put_le64(h + 12, 0x5eed);
	assert_int_equal(write(fd, h, sizeof(h)), (ssize_t)sizeof(h));
	assert_int_equal(recv(fd, r, sizeof(r), MSG_WAITALL), (ssize_t)sizeof(r));
	assert_int_equal(pc_get_le32(r + 4), 0); /* accepted */
	if (vflags)
		*vflags = r[sizeof(r) - 1];
	return fd;
}

/* Read frames until a message arrives; keep every fd that came along. */
static unsigned raw_source_read_until_msg(int fd, int *fds, unsigned max)
{
	unsigned n = 0;

	for (;;) {
		uint8_t hdr[PC_FRAME_HDR], body[4096];
		union {
			char buf[CMSG_SPACE(sizeof(int) * 8)];
			struct cmsghdr align;
		} u;
		struct iovec v = { hdr, sizeof(hdr) };
		struct msghdr mh = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = u.buf,
				     .msg_controllen = sizeof(u.buf) };
		uint64_t len;

		assert_int_equal(recvmsg(fd, &mh, MSG_WAITALL | MSG_CMSG_CLOEXEC),
				 (ssize_t)sizeof(hdr));
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			for (size_t i = 0; i < k && n < max; i++)
				memcpy(&fds[n++], CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
		}
		if (pc_get_le32(hdr) != PC_FRAME_MSG && pc_get_le32(hdr) != PC_FRAME_PAGES)
			continue; /* a bodiless frame (an earlier version's REGION) */
		len = pc_get_le64(hdr + 16);
		assert_true(len <= sizeof(body));
		if (len)
			assert_int_equal(recv(fd, body, len, MSG_WAITALL), (ssize_t)len);
		if (pc_get_le32(hdr) == PC_FRAME_MSG)
			return n;
	}
}

/*
 * The destination's RAM is a memfd of the VMM's own (sealable, not yet
 * sealed against new seals), exposed for the migration the way the engine
 * does. A source acting in bad faith keeps everything it is given. After
 * the destination revoked the regions (what it does when COMPLETE
 * arrives, before it verifies and resumes): the source has no descriptor
 * it could seal the RAM with (F_SEAL_FUTURE_WRITE would refuse every later
 * writable mapping), no mapping it could write the running guest through,
 * and a page run it frames is refused; the RAM is unchanged. @seal: try
 * the seal with whatever descriptor came; else write through it.
 */
static void hostile_source(bool seal)
{
	const struct pc_transport_ops *ops = pc_transport_find("shm");
	struct pc_transport_opts o = { .channels = 1 };
	const size_t len = 1 * MiB;
	struct h_accept a = { 0 };
	uint8_t msg[16] = "ready", hdr[PC_FRAME_HDR], page[4096];
	struct iovec v = { msg, 5 };
	int fds[8], memfd, sfd, err;
	unsigned nfds;
	size_t got;
	uint8_t *ram;
	void *again;
	char uri[128];

	memfd = memfd_create("vmm-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(memfd >= 0);
	assert_int_equal(ftruncate(memfd, (off_t)len), 0);
	ram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	assert_true(ram != MAP_FAILED);

	new_uri(uri, sizeof(uri));
	assert_int_equal(ops->listen(uri + 4, &o, &a.l), 0);
	h_accept_start(&a);
	sfd = raw_source_connect(uri + 4, 0, NULL);
	assert_int_equal(h_accept_join(&a), 0);

	/* the engine's way: with the fd where the transport can share it */
	err = a.t->ops->expose_region_fd(a.t, 0, ram, len, memfd, 0);
	if (err == -EOPNOTSUPP)
		err = a.t->ops->expose_region(a.t, 0, ram, len);
	assert_int_equal(err, 0);
	assert_int_equal(pc_tp_send_msg(a.t, 0, &v, 1), 0);
	nfds = raw_source_read_until_msg(sfd, fds, 8);
	print_message("  descriptors the destination handed to the source: %u\n", nfds);

	/* COMPLETE: the destination revokes */
	assert_int_equal(a.t->ops->unexpose_all(a.t), 0);

	/* whatever the source holds, it cannot seal or write the RAM */
	for (unsigned i = 0; i < nfds; i++) {
		void *p;

		if (seal && fcntl(fds[i], F_ADD_SEALS, F_SEAL_FUTURE_WRITE) == 0)
			fail_msg("the source sealed the destination's RAM (F_SEAL_FUTURE_WRITE)");
		p = seal ? MAP_FAILED : mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
		if (p != MAP_FAILED) {
			memset(p, 0xaa, len);
			munmap(p, len);
		}
		close(fds[i]);
	}
	/* and a framed run after the revocation is refused */
	memset(page, 0xbb, sizeof(page));
	memset(hdr, 0, sizeof(hdr));
	pc_put_le32(hdr, PC_FRAME_PAGES);
	pc_put_le64(hdr + 16, sizeof(page));
	assert_int_equal(write(sfd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
	assert_int_equal(write(sfd, page, sizeof(page)), (ssize_t)sizeof(page));
	assert_int_equal(pc_tp_recv_msg(a.t, 0, msg, sizeof(msg), &got), -EPROTO);

	for (size_t i = 0; i < len; i++)
		if (ram[i])
			fail_msg("the source changed the destination's RAM at byte %zu after the "
				 "regions were revoked", i);
	assert_int_equal(nfds, 0);
	assert_false(fcntl(memfd, F_GET_SEALS) & (F_SEAL_FUTURE_WRITE | F_SEAL_WRITE));
	/* the guest's RAM can still be mapped writable (the next migration) */
	again = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	assert_true(again != MAP_FAILED);
	munmap(again, len);
	close(sfd);
	a.t->ops->close(a.t);
	ops->listener_close(a.l);
	munmap(ram, len);
	close(memfd);
}

H_CASE(hostile_source__cannot_seal_dest_ram, hostile_source(true))
H_CASE(hostile_source__cannot_write_dest_ram_after_revoke, hostile_source(false))

/* precopy's own RAM memfd takes no further seals, whoever holds it. */
static void memfd_alloc__no_seal_can_be_added(void **state)
{
	void *mem, *again;
	int fd, seals;

	(void)state;
	assert_int_equal(precopy_memfd_alloc(4 * MiB, -1, &mem, &fd), 0);
	seals = fcntl(fd, F_GET_SEALS);
	assert_int_equal(seals, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE), -1);
	assert_int_equal(errno, EPERM);
	/* so a later writable mapping (the next migration's) still works */
	again = mmap(NULL, 4 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(again != MAP_FAILED);
	munmap(again, 4 * MiB);
	munmap(mem, 4 * MiB);
	close(fd);
}

/* RAM this host could never hold: refused at once, with both sizes. */
static void api__ram_above_host_refused(void **state)
{
	struct precopy_session *s;
	struct sysinfo si;
	uint64_t host, len = 4ull << 40;
	char err[PRECOPY_ERRMSG_MAX], want[64];
	void *va, *mem = NULL;
	int fd = -1;

	(void)state;
	assert_int_equal(sysinfo(&si), 0);
	host = ((uint64_t)si.totalram + si.totalswap) * si.mem_unit;
	while (len <= host)
		len *= 2;
	/* address space only: nothing is ever touched */
	va = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (va == MAP_FAILED) {
		print_message("cannot reserve %llu bytes of address space: skipped\n",
			      (unsigned long long)len);
		skip();
	}
	assert_int_equal(precopy_memfd_alloc(len, -1, &mem, &fd), -ENOMEM);
	assert_null(mem);
	assert_int_equal(fd, -1);
	assert_int_equal(precopy_new(PRECOPY_ROLE_DEST, NULL, NULL, &s), 0);
	assert_int_equal(precopy_add_region(s, va, len, PRECOPY_DIRTY_AUTO), -ENOMEM);
	assert_int_equal(precopy_strerror(s, err, sizeof(err)), 0);
	print_message("  %s\n", err);
	snprintf(want, sizeof(want), "%llu", (unsigned long long)len);
	assert_non_null(strstr(err, want));
	snprintf(want, sizeof(want), "%llu bytes of memory and swap", (unsigned long long)host);
	assert_non_null(strstr(err, want));
	/* a region that fits is still taken */
	assert_int_equal(precopy_add_region(s, va, 4 * MiB, PRECOPY_DIRTY_AUTO), 0);
	assert_int_equal(precopy_delete(&s), 0);
	munmap(va, len);
}

/* --- heartbeats and the timeout ------------------------------------------- */

/* Each end's slow local work (3 s of saving and of loading device state)
 * outlives a timeout of 1 s, because each end keeps telling the other it
 * is alive: in copy mode and in a handoff. */
static void slow_ends(bool handoff)
{
	size_t ram = 16 * MiB;
	struct pc_guest *g = make_guest(ram, 4.0 * MiB, handoff);
	struct precopy_params p;
	struct h_dest d;
	struct h_src s;
	char uri[128], msg[PRECOPY_ERRMSG_MAX];
	int se, de;

	precopy_params_init(&p);
	p.timeout_ms = 1000;
	assert_int_equal(h_dest_start_opts(&d, ram,
					   &(struct h_dest_opts){ .p = &p,
								  .uri = new_uri(uri, sizeof(uri)),
								  .memfd = true,
								  .on_load = h_slow_load }),
			 0);
	assert_int_equal(h_src_new(&s, g, &p, PRECOPY_DIRTY_AUTO), 0);
	s.on_save = h_slow_save;
	assert_int_equal(h_src_start(&s, d.uri), 0);
	se = h_src_join(&s);
	de = h_dest_join(&d);
	if (se || de) {
		precopy_strerror(s.s, msg, sizeof(msg));
		print_message("  source: %s\n", msg);
		precopy_strerror(d.s, msg, sizeof(msg));
		print_message("  destination: %s\n", msg);
	}
	assert_int_equal(se, 0);
	assert_int_equal(de, 0);
	h_check_migrated(&s, &d);
	assert_int_equal(s.stops, 1);
	assert_int_equal(s.resumes, 0);
	h_free_all(&s, &d, &g);
}

H_CASE(beats__slow_ends_outlive_a_short_timeout, slow_ends(false))
H_CASE(beats__slow_ends_outlive_a_short_timeout_handoff, slow_ends(true))

/*
 * A source that greets and then says nothing: the destination (timeout
 * 900 ms) drops it after the timeout, saying nothing came, heartbeats or
 * not. It sends heartbeats only to a source whose hello asked for them
 * (@beats); to one that did not (an earlier version, which would refuse
 * the frame), none.
 */
static void silent_source(bool beats)
{
	const struct pc_transport_ops *ops = pc_transport_find("shm");
	struct pc_transport_opts o = { .channels = 1 };
	struct h_accept a = { .timeout_ms = 900 };
	uint8_t buf[64], vflags = 0;
	struct pollfd pfd;
	char uri[128];
	size_t got;
	int sfd;

	new_uri(uri, sizeof(uri));
	assert_int_equal(ops->listen(uri + 4, &o, &a.l), 0);
	h_accept_start(&a);
	sfd = raw_source_connect(uri + 4, beats ? 1 : 0, &vflags);
	assert_int_equal(h_accept_join(&a), 0);
	assert_int_equal(vflags & 1, 1); /* the destination knows heartbeats */
	assert_int_equal(pc_tp_recv_msg(a.t, 0, buf, sizeof(buf), &got), -ETIMEDOUT);
	print_message("  %s\n", a.t->why);
	assert_non_null(strstr(a.t->why, "not even a heartbeat"));
	pfd = (struct pollfd){ .fd = sfd, .events = POLLIN };
	if (beats) {
		/* sent after a third of the timeout of idle: long here */
		assert_int_equal(poll(&pfd, 1, 0), 1);
		assert_int_equal(recv(sfd, buf, PC_FRAME_HDR, MSG_WAITALL), PC_FRAME_HDR);
		assert_int_equal(pc_get_le32(buf), PC_FRAME_BEAT);
	} else {
		assert_int_equal(poll(&pfd, 1, 0), 0);
	}
	close(sfd);
	a.t->ops->close(a.t);
	ops->listener_close(a.l);
}

H_CASE(beats__silent_source_dropped_after_timeout, silent_source(true))
H_CASE(beats__none_to_a_source_that_did_not_ask, silent_source(false))

/* --- a destination of an earlier version ------------------------------------ */

struct connecting {
	const char *path;
	struct pc_transport *t;
	int err;
};

static void *connect_main(void *arg)
{
	struct connecting *c = arg;
	struct pc_transport_opts o = { .channels = 1, .timeout_ms = 300 };

	c->err = pc_transport_find("shm")->connect(c->path, &o, &c->t);
	return NULL;
}

/* One bodiless frame header on @fd, with @passfd attached (-1: none). */
static void raw_frame(int fd, uint32_t kind, uint32_t region, uint64_t len, int passfd)
{
	uint8_t hdr[PC_FRAME_HDR] = { 0 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec v = { hdr, sizeof(hdr) };
	struct msghdr mh = { .msg_iov = &v, .msg_iovlen = 1 };

	pc_put_le32(hdr, kind);
	pc_put_le32(hdr + 4, region);
	pc_put_le64(hdr + 16, len);
	if (passfd >= 0) {
		struct cmsghdr *cm;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &passfd, sizeof(int));
	}
	assert_int_equal(sendmsg(fd, &mh, MSG_NOSIGNAL), (ssize_t)sizeof(hdr));
}

/* The destination shares region 0 (REGION, or UNEXPOSE when @memfd is
 * -1), then sends an empty message the source receives. */
static void earlier_dest_shares(int dfd, struct pc_transport *t, int memfd, size_t len)
{
	uint8_t buf[8];
	size_t got = 1;

	if (memfd >= 0)
		raw_frame(dfd, 0x50435231u /* PCR1 */, 0, len, memfd);
	else
		raw_frame(dfd, 0x50435531u /* PCU1 */, 0, 0, -1);
	raw_frame(dfd, PC_FRAME_MSG, 0, 0, -1);
	assert_int_equal(pc_tp_recv_msg(t, 0, buf, sizeof(buf), &got), 0);
	assert_int_equal(got, 0);
}

/* The next frame the source sent: its kind; the body is read and dropped. */
static uint32_t earlier_dest_next(int dfd)
{
	uint8_t hdr[PC_FRAME_HDR], body[8192];
	uint64_t n;

	assert_int_equal(recv(dfd, hdr, sizeof(hdr), MSG_WAITALL), (ssize_t)sizeof(hdr));
	n = pc_get_le64(hdr + 16);
	assert_true(n <= sizeof(body));
	if (n)
		assert_int_equal(recv(dfd, body, n, MSG_WAITALL), (ssize_t)n);
	return pc_get_le32(hdr);
}

/*
 * A destination of an earlier version shared its memfd (a REGION frame
 * with the fd) and later revoked it (UNEXPOSE). The source copies page
 * runs straight into a shared region, framing nothing; after UNEXPOSE it
 * frames them; a run past a shared region's end is refused before a byte
 * is copied. Such a destination's verdict does not offer heartbeats, and
 * it is sent none.
 */
static void compat__region_shared_by_an_earlier_destination(void **state)
{
	const size_t len = 1 * MiB;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct connecting c = { 0 };
	uint8_t h[32], r[160] = { 0 }, *src = malloc(len), *ram;
	struct iovec v = { (void *)"marker", 6 };
	struct pc_page_run run;
	struct pollfd pfd;
	char uri[128];
	pthread_t th;
	int lfd, dfd, memfd;

	(void)state;
	c.path = new_uri(uri, sizeof(uri)) + 4;
	memcpy(sa.sun_path, c.path, strlen(c.path) + 1);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 1), 0);
	assert_int_equal(pthread_create(&th, NULL, connect_main, &c), 0);
	dfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	assert_true(dfd >= 0);
	assert_int_equal(recv(dfd, h, sizeof(h), MSG_WAITALL), (ssize_t)sizeof(h));
	assert_int_equal(h[5] & 1, 1); /* the source asks for heartbeats */
	pc_put_le32(r, 0x31534350u);   /* "PCS1", status 0, no flags */
	assert_int_equal(write(dfd, r, sizeof(r)), (ssize_t)sizeof(r));
	pthread_join(th, NULL);
	assert_int_equal(c.err, 0);

	memfd = memfd_create("earlier-dest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_int_equal(ftruncate(memfd, (off_t)len), 0);
	assert_int_equal(fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
	ram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	assert_true(ram != MAP_FAILED);
	for (size_t i = 0; i < len; i++)
		src[i] = (uint8_t)(i * 3 + 1);

	/* shared: copied, and the next frame is the marker message */
	earlier_dest_shares(dfd, c.t, memfd, len);
	run = (struct pc_page_run){ src + 4096, 0, 8192, 4096 };
	assert_int_equal(pc_tp_write_pages(c.t, 0, &run, 1), 0);
	assert_memory_equal(ram + 8192, src + 4096, 4096);
	assert_int_equal(pc_tp_send_msg(c.t, 0, &v, 1), 0);
	assert_int_equal(earlier_dest_next(dfd), PC_FRAME_MSG);

	/* revoked: framed */
	earlier_dest_shares(dfd, c.t, -1, 0);
	run.offset = 16384;
	assert_int_equal(pc_tp_write_pages(c.t, 0, &run, 1), 0);
	assert_int_equal(earlier_dest_next(dfd), PC_FRAME_PAGES);
	assert_int_equal(ram[16384], 0);

	/* no heartbeat came, after more than a third of the timeout idle */
	usleep(300 * 1000);
	pfd = (struct pollfd){ .fd = dfd, .events = POLLIN };
	assert_int_equal(poll(&pfd, 1, 0), 0);

	/* shared again: a run past its end is refused, nothing copied */
	earlier_dest_shares(dfd, c.t, memfd, len);
	run = (struct pc_page_run){ src, 0, len - 4096, 8192 };
	assert_int_equal(pc_tp_write_pages(c.t, 0, &run, 1), -EPROTO);
	assert_non_null(strstr(c.t->why, "outside the peer's region 0"));
	assert_int_equal(ram[len - 4096], 0);

	pc_tp_close(c.t);
	munmap(ram, len);
	close(memfd);
	close(dfd);
	close(lfd);
	unlink(c.path);
	free(src);
}

static int teardown_dir(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(api__region_fd_checked),
		cmocka_unit_test(api__ram_above_host_refused),
		cmocka_unit_test(memfd_alloc__no_seal_can_be_added),
		cmocka_unit_test(hostile_source__cannot_seal_dest_ram),
		cmocka_unit_test(hostile_source__cannot_write_dest_ram_after_revoke),
		cmocka_unit_test(robust__peer_killed_mid_migration),
		cmocka_unit_test(robust__socket_path_removed_mid_migration),
		cmocka_unit_test(robust__source_killed_copy_mode),
		cmocka_unit_test(robust__source_killed_in_handoff),
		cmocka_unit_test(handoff__refused_after_mapping_undone),
		cmocka_unit_test(peer__other_uid_connecting_refused),
		cmocka_unit_test(peer__other_uid_listening_refused),
		cmocka_unit_test(numa__node0_placement_reported),
		cmocka_unit_test(numa__invalid_node_refused),
		cmocka_unit_test(copy__memfd_destination_1_channel),
		cmocka_unit_test(copy__memfd_destination_2_channels),
		cmocka_unit_test(copy__plain_destination_framed),
		cmocka_unit_test(handoff__running_guest),
		cmocka_unit_test(handoff__length_mismatch_refused),
		cmocka_unit_test(beats__slow_ends_outlive_a_short_timeout),
		cmocka_unit_test(beats__slow_ends_outlive_a_short_timeout_handoff),
		cmocka_unit_test(beats__silent_source_dropped_after_timeout),
		cmocka_unit_test(beats__none_to_a_source_that_did_not_ask),
		cmocka_unit_test(compat__region_shared_by_an_earlier_destination),
	};
	int rc;

	if (!pc_transport_find("shm")) {
		printf("the shm transport is not built in: skipped\n");
		return 77;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/precopy-shm-XXXXXX");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	chmod(tmpdir, 0777); /* the uid tests' other user works here too */
	signal(SIGPIPE, SIG_IGN);
	cmocka_set_test_filter(getenv("PRECOPY_TEST_FILTER"));
	rc = cmocka_run_group_tests_name("shm", tests, NULL, NULL);
	teardown_dir();
	return rc;
}

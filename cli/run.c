/* SPDX-License-Identifier: MIT */
/*
 * run.c - precopy incoming, migrate and demo.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "progress.h"
#include "transport.h"

void pc_cli_defaults(struct pc_cli *c)
{
	memset(c, 0, sizeof(*c));
	precopy_params_init(&c->params);
	c->pattern = PC_GUEST_SEQUENTIAL;
	c->threads = 1;
	c->seed = 1;
	c->ready_fd = -1;
	c->numa_node = -1;
}

/* --- progress output ---------------------------------------------------- */

struct ctx {
	struct pc_cli *c;
	const char *role;
	struct pc_guest *guest;          /* source */
	struct pc_guest_desc desc;       /* destination: from device state */
	bool have_desc;
	struct pc_progress prog;         /* the line on a terminal */
	bool prog_on;
	struct precopy_session *hint_to; /* source: hint free pages once armed */
	struct pc_cli_control *ctl;      /* source: --control, or NULL */
};

/* --free-pct: the guest's free pages, hinted once the dirty log is armed
 * (status BULK, before the first page goes), as a VMM would. */
static void hint_free(struct ctx *x, const struct precopy_stats *st)
{
	uint64_t *bm, n = 0;

	if (!x->hint_to || st->status != PRECOPY_STATUS_BULK)
		return;
	bm = pc_guest_free_bitmap(x->guest, &n);
	if (bm) {
		int err = precopy_region_hint_free(x->hint_to, 0, 0, bm, n);

		if (err)
			fprintf(stderr, "precopy migrate: free-page hints refused: %s\n",
				strerror(-err));
		free(bm);
	}
	x->hint_to = NULL;
}

static void progress(void *opaque, const struct precopy_stats *st)
{
	struct ctx *x = opaque;

	hint_free(x, st);
	if (x->c->json) {
		pc_cli_json_stats(stdout, "progress", x->role, st, NULL);
		return;
	}
	pc_progress_stats(&x->prog, st);
}

/* Start the line (or say what setup does now, if it runs). */
static void begin_progress(struct ctx *x, const char *what)
{
	struct pc_cli *c = x->c;

	if (x->prog_on) {
		pc_progress_note(&x->prog, what);
		return;
	}
	pc_progress_start(&x->prog, stderr, isatty(2) && !c->quiet && !c->json,
			  !strcmp(x->role, "source"), &c->params, what);
	x->prog_on = true;
}

/* End the line with a newline, drawn a last time from @st; or with @st
 * NULL, erase it (a step that needs no record). */
static void end_progress(struct ctx *x, const struct precopy_stats *st)
{
	if (x->prog_on)
		pc_progress_end(&x->prog, st, st == NULL);
	x->prog_on = false;
}

/* What a migration does before its first page, from its URI. */
static void describe_setup(struct ctx *x, const char *uri, char *buf, size_t len)
{
	struct pc_cli *c = x->c;
	uint32_t caps = pc_cli_uri_caps(uri);
	char r[32];

	if (caps == ~0u)
		caps = 0;
	pc_cli_fmt_bytes((double)c->ram, r, sizeof(r));
	if (strcmp(x->role, "source")) {
		snprintf(buf, len, "waiting for the source on %s%s%s", uri,
			 caps & PC_TCAP_TLS ? ", then the TLS handshake" : "",
			 caps & PC_TCAP_NEEDS_REG ? ", then registering the RAM with the device"
						  : "");
	} else if (caps & PC_TCAP_TLS) {
		snprintf(buf, len, "connecting to %s, TLS handshake", uri);
	} else if ((caps & PC_TCAP_FD_PASS) && c->memfd) {
		snprintf(buf, len, "connecting to %s, handing the guest's RAM over", uri);
	} else if (caps & PC_TCAP_NEEDS_REG) {
		if (c->have_registration && c->registration == PRECOPY_REG_PIN_ALL)
			snprintf(buf, len, "connecting to %s, registering %s of RAM with the device",
				 uri, r);
		else
			snprintf(buf, len, "connecting to %s (RAM is registered as the bulk pass "
					   "reaches it)", uri);
	} else {
		snprintf(buf, len, "connecting to %s", uri);
	}
}

/* The destination's device state: the synthetic guest's descriptor. */
static int g_load(void *o, const void *buf, size_t len)
{
	struct ctx *x = o;
	int err = pc_guest_load_desc(&x->desc, buf, len);

	x->have_desc = !err;
	return err;
}

/* What the session's transport registered with its device, if anything. */
static void get_reg(struct ctx *x, struct precopy_session *s, struct pc_cli_reg *out)
{
	struct precopy_stats st;

	memset(out, 0, sizeof(*out));
	if (precopy_query(s, &st) || !st.registered)
		return;
	out->valid = true;
	out->source = !strcmp(x->role, "source");
	out->pin_all = st.registration_pin_all;
	out->ms = st.registration_ns / 1e6;
	out->bytes = st.registered_bytes;
	out->count = st.registrations;
}

/* How the pages missing at a postcopy handover came (nothing otherwise). */
static void print_postcopy(const struct precopy_stats *st)
{
	if (!st->postcopy)
		return;
	printf("  postcopy         %" PRIu64 " pages missing at the handover: %" PRIu64
	       " asked for by the guest (%" PRIu64 " requests), %" PRIu64
	       " pushed; all in %" PRIu64 " ms after it\n",
	       st->postcopy_pages_requested + st->postcopy_pages_pushed,
	       st->postcopy_pages_requested, st->postcopy_requests, st->postcopy_pages_pushed,
	       st->postcopy_time);
	if (st->postcopy_latency_p99_us)
		printf("                   fault to page: median %" PRIu64 " us, p99 %" PRIu64
		       " us\n", st->postcopy_latency_median_us, st->postcopy_latency_p99_us);
}

static void print_summary(struct ctx *x, const struct precopy_stats *st,
			  const struct pc_cli_reg *reg)
{
	char a[32], b[32], c[32], d[32];
	double ram = (double)st->total;

	if (x->c->json) {
		pc_cli_json_stats(stdout, "result", x->role, st, reg);
		return;
	}
	if (st->status != PRECOPY_STATUS_COMPLETED) {
		fflush(stdout);
		fprintf(stderr, "precopy: %s: migration %s after %.2f s: %s\n", x->role,
			precopy_status_name(st->status), st->total_time / 1e3, st->error);
		return;
	}
	printf("precopy: %s: migration completed in %.2f s (setup %" PRIu64 " ms)\n", x->role,
	       st->total_time / 1e3, st->setup_time);
	if (!strcmp(x->role, "source")) {
		printf("  downtime         %" PRIu64 " ms (expected %" PRIu64 " ms, limit %" PRIu64
		       " ms)%s\n",
		       st->downtime, st->expected_downtime, x->c->params.downtime_limit_ms,
		       st->forced_switchover ? ", switchover forced by the watchdog" : "");
		if (st->forced_switchover && st->forced_expected_downtime != UINT64_MAX)
			printf("  forced           expected %" PRIu64 " ms when forced, took %" PRIu64
			       " ms\n", st->forced_expected_downtime, st->forced_downtime);
		if (st->normal + st->duplicate == 0)
			printf("  handoff          guest RAM handed over as a memfd; no page copied\n");
		print_postcopy(st);
		printf("  transferred      %s for %s of RAM (%.2fx) in %u pass%s after bulk\n",
		       pc_cli_fmt_bytes((double)st->transferred, a, sizeof(a)),
		       pc_cli_fmt_bytes(ram, b, sizeof(b)), ram ? st->transferred / ram : 0,
		       st->iteration, st->iteration == 1 ? "" : "es");
		printf("  pages            %" PRIu64 " sent, %" PRIu64 " zero, %" PRIu64
		       " skipped as free\n",
		       st->normal, st->duplicate, st->free_skipped);
		printf("  bandwidth        %s/s decided on (%s); link %s/s",
		       pc_cli_fmt_bytes((double)st->bandwidth_switchover, c, sizeof(c)),
		       pc_cli_bw_source_name(st->bandwidth_source),
		       pc_cli_fmt_bytes((double)st->bandwidth_link, d, sizeof(d)));
		printf(", sender %s/s\n",
		       pc_cli_fmt_bytes((double)st->bandwidth_sender, c, sizeof(c)));
		printf("                   in send calls %s/s",
		       pc_cli_fmt_bytes((double)st->bandwidth_busy, c, sizeof(c)));
		printf(", wall time %s/s\n",
		       pc_cli_fmt_bytes((double)st->bandwidth_wall, d, sizeof(d)));
		printf("  throttle         %u%% (auto-converge %s)\n", st->cpu_throttle_percentage,
		       x->c->params.auto_converge ? "on" : "off");
		printf("  dirty tracking   %s, %" PRIu64 " syncs\n",
		       precopy_dirty_mode_name(st->dirty_mode), st->dirty_sync_count);
		if (st->normal + st->duplicate)
			printf("  sender CPU       %.3f s/GiB reading pages, %.3f s/GiB handing them "
			       "to the transport; %" PRIu64 " page faults\n",
			       st->scan_cpu_ns / 1e9 / (ram / 1073741824.0),
			       st->send_cpu_ns / 1e9 / (ram / 1073741824.0), st->page_faults);
		if (reg->valid)
			printf("  registration     %.1f ms for %s in %" PRIu64 " memory region%s "
			       "(%s)\n", reg->ms, pc_cli_fmt_bytes((double)reg->bytes, a, sizeof(a)),
			       reg->count, reg->count == 1 ? "" : "s",
			       reg->pin_all ? "pin-all, before the first page"
					    : "on demand, 16 MiB chunks");
	} else if (st->normal + st->duplicate == 0) {
		/* no page came: the source's RAM was handed over (memfd, shm) */
		printf("  handoff          the source's RAM is mapped here; no page copied, no "
		       "checksum (the pages are the source's own)\n");
	} else {
		printf("  received         %s in %" PRIu64 " pages, %" PRIu64 " zero pages\n",
		       pc_cli_fmt_bytes((double)st->normal_bytes, a, sizeof(a)), st->normal,
		       st->duplicate);
		printf("  checksums        every region matches the source\n");
		print_postcopy(st);
		if (st->populated_bytes)
			printf("  memory           %s populated in %" PRIu64
			       " ms before listening; %" PRIu64 " page faults while receiving\n",
			       pc_cli_fmt_bytes((double)st->populated_bytes, a, sizeof(a)),
			       st->populate_ms, st->page_faults);
		else
			printf("  memory           not populated (--no-populate); %" PRIu64
			       " page faults while receiving\n", st->page_faults);
		if (reg->valid)
			printf("  registration     %.1f ms for %s in %" PRIu64 " memory region%s "
			       "(each region whole, for the source's writes)\n", reg->ms,
			       pc_cli_fmt_bytes((double)reg->bytes, a, sizeof(a)), reg->count,
			       reg->count == 1 ? "" : "s");
	}
	fflush(stdout);
}

/* --- incoming ----------------------------------------------------------- */

/* Where the received RAM landed, from a sample of its pages. */
static void report_numa(struct pc_cli *c, const void *ram)
{
	uint64_t per_node[64], absent = 0;
	int n = precopy_numa_where(ram, c->ram, 1024, per_node, 64, &absent);
	int max = precopy_numa_max_node();

	if (n <= 0 || max < 0)
		return;
	if (max > 63)
		max = 63;
	if (c->json) {
		printf("{\"event\":\"numa\",\"role\":\"destination\",\"requested_node\":%d,"
		       "\"sampled\":%d,\"absent\":%" PRIu64 ",\"pages_per_node\":[",
		       c->numa_node, n, absent);
		for (int i = 0; i <= max; i++)
			printf("%s%" PRIu64, i ? "," : "", per_node[i]);
		printf("]}\n");
	} else {
		printf("  memory placement");
		for (int i = 0; i <= max; i++)
			if (per_node[i])
				printf(" node %d: %" PRIu64 "/%d", i, per_node[i], n);
		if (absent)
			printf(" not allocated: %" PRIu64 "/%d", absent, n);
		printf(" sampled pages%s\n", c->numa_node >= 0 ? "" : " (no --numa-node)");
		if (c->numa_node >= 0)
			printf("                   requested node %d\n", c->numa_node);
	}
	fflush(stdout);
}

/*
 * Usage check, before anything is allocated: @copies guests of --ram
 * bytes, each with its checksum table (8 bytes a page), must fit in this
 * host's memory and swap. Return: 0, or 2 (bad usage) with both sizes
 * printed.
 */
static int ram_fits(const char *cmd, uint64_t ram, unsigned copies)
{
	struct sysinfo si;
	uint64_t host, need;
	char a[32], b[32], h[32];

	if (sysinfo(&si) < 0)
		return 0; /* unknown: the allocation will tell */
	host = ((uint64_t)si.totalram + si.totalswap) * (si.mem_unit ? si.mem_unit : 1);
	if (__builtin_add_overflow(ram, ram / PRECOPY_PAGE_SIZE * sizeof(uint64_t), &need) ||
	    __builtin_mul_overflow(need, copies, &need))
		need = UINT64_MAX;
	if (need <= host)
		return 0;
	fprintf(stderr, "precopy %s: --ram %s is more than this host can hold: %s needed (%s), "
			"%s of memory and swap here\n",
		cmd, pc_cli_fmt_bytes((double)ram, a, sizeof(a)),
		pc_cli_fmt_bytes((double)need, b, sizeof(b)),
		copies > 1 ? "both ends run here: two guests' RAM and their checksum tables"
			   : "the guest's RAM and its checksum table",
		pc_cli_fmt_bytes((double)host, h, sizeof(h)));
	return 2;
}

/* --numa-node N names no node here: say why. */
static void bad_numa_node(int node)
{
	int max = precopy_numa_max_node();

	if (max < 0)
		fprintf(stderr, "precopy incoming: --numa-node %d: this kernel has no NUMA "
				"support\n", node);
	else if (max == 0)
		fprintf(stderr, "precopy incoming: --numa-node %d: no such NUMA node (this "
				"machine has node 0 only)\n", node);
	else
		fprintf(stderr, "precopy incoming: --numa-node %d: no such NUMA node (this "
				"machine has nodes 0..%d)\n", node, max);
}

/* The destination listens: tell --ready-fd, the user or the JSON reader
 * where, and start the progress line. */
static void announce_listening(struct ctx *x, struct precopy_session *s)
{
	struct pc_cli *c = x->c;
	char uri[128], what[256];

	precopy_local_uri(s, uri, sizeof(uri));
	if (c->ready_fd >= 0) {
		dprintf(c->ready_fd, "%s\n", uri);
		close(c->ready_fd);
		c->ready_fd = -1;
	}
	if (c->json)
		printf("{\"event\":\"listening\",\"uri\":\"%s\"}\n", uri);
	else if (!c->quiet)
		fprintf(stderr, "precopy: listening on %s\n", uri);
	fflush(stdout);
	describe_setup(x, uri, what, sizeof(what));
	begin_progress(x, what);
	pc_progress_attach(&x->prog, s);
}

/* Check the received RAM against the guest descriptor the source sent,
 * and report it. Return: 0 if it is intact, -1 if not (said why). */
static int verify_received(struct ctx *x, const void *ram)
{
	struct pc_cli *c = x->c;
	char why[256];
	int err;

	if (!x->have_desc) {
		fprintf(stderr, "precopy incoming: the source sent no guest descriptor; "
				"use --no-verify for a guest that is not precopy's own\n");
		return -1;
	}
	err = pc_guest_verify(ram, c->ram, &x->desc, why, sizeof(why));
	if (c->json)
		printf("{\"event\":\"verify\",\"role\":\"destination\",\"verified\":%s,"
		       "\"pages\":%" PRIu64 ",\"writes\":%" PRIu64 ",\"detail\":\"%s\"}\n",
		       err ? "false" : "true", x->desc.npages, x->desc.writes, err ? why : "ok");
	else if (err)
		printf("  guest pattern    BROKEN: %s\n", why);
	else
		printf("  guest pattern    verified: %" PRIu64 " pages, %" PRIu64
		       " guest writes accounted for\n", x->desc.npages, x->desc.writes);
	fflush(stdout);
	return err ? -1 : 0;
}

int pc_cli_incoming(struct pc_cli *c, struct precopy_session **current)
{
	struct ctx x = { .c = c, .role = "destination" };
	struct precopy_callbacks cb = {
		.opaque = &x, .load_device_state = g_load, .progress = progress,
	};
	struct precopy_session *s = NULL;
	struct precopy_stats st;
	struct pc_cli_reg reg;
	void *ram = NULL;
	int err, rc = 1;

	if (!c->listen || !c->ram) {
		fprintf(stderr, "precopy incoming: --listen URI and --ram SIZE are required\n");
		return 2;
	}
	if (ram_fits("incoming", c->ram, 1))
		return 2;
	if (c->numa_node >= 0 && precopy_numa_node_ok(c->numa_node)) {
		bad_numa_node(c->numa_node);
		return 2;
	}
	/* Anonymous RAM in 2 MiB pages where THP allows: every transport
	 * writes into it like any memory and none shares it with the source
	 * (a handoff maps the source's memfds over it), so it needs no memfd,
	 * and a memfd (shmem) gets 4 KiB pages unless shmem_enabled says
	 * otherwise. */
	err = precopy_ram_alloc(c->ram, c->numa_node, &ram);
	if (err) {
		fprintf(stderr, "precopy incoming: cannot allocate %" PRIu64 " bytes: %s\n", c->ram,
			strerror(-err));
		return 1;
	}
	err = precopy_new(PRECOPY_ROLE_DEST, &c->params, &cb, &s);
	if (!err) {
		err = precopy_add_region(s, ram, c->ram, PRECOPY_DIRTY_AUTO);
		err = err < 0 ? err : 0;
	}
	if (err) {
		fprintf(stderr, "precopy incoming: %s\n", strerror(-err));
		goto out;
	}
	if (pc_cli_apply_tls(c, s, "incoming") || pc_cli_apply_rdma(c, s, "incoming")) {
		rc = 2;
		goto out;
	}
	if (c->no_populate)
		precopy_set_param(s, PRECOPY_PARAM_POPULATE, 0);
	err = precopy_listen(s, c->listen);
	if (err) {
		if (err == -EINVAL)
			fprintf(stderr, "precopy incoming: cannot listen on '%s': malformed URI "
					"(expected one of %s)\n", c->listen, pc_transport_syntaxes());
		else
			fprintf(stderr, "precopy incoming: cannot listen on '%s': %s\n",
				c->listen, strerror(-err));
		rc = err == -EINVAL || err == -EPROTONOSUPPORT ? 2 : 1;
		goto out;
	}
	announce_listening(&x, s);
	*current = s;
	err = precopy_incoming(s);
	*current = NULL;
	precopy_query(s, &st);
	end_progress(&x, &st);
	get_reg(&x, s, &reg);
	print_summary(&x, &st, &reg);
	if (err)
		goto out;
	if (!c->no_verify && verify_received(&x, ram))
		goto out;
	report_numa(c, ram);
	rc = 0;
out:
	if (s)
		precopy_delete(&s);
	munmap(ram, c->ram);
	return rc;
}

/* --- migrate ------------------------------------------------------------ */

static void print_resources(struct pc_cli *c, const char *stage)
{
	long fds = pc_cli_count_fds(false), rss = pc_cli_status_kib("VmRSS");

	if (c->json)
		printf("{\"event\":\"resources\",\"role\":\"source\",\"stage\":\"%s\","
		       "\"fds\":%ld,\"rss-kib\":%ld}\n", stage, fds, rss);
	else if (!c->quiet)
		fprintf(stderr, "precopy: %s: %ld descriptors open, %ld KiB resident\n", stage,
			fds, rss);
	fflush(stdout);
}

/* One migration of the running guest in @x to @uri with a new session.
 * Prints the summary; returns precopy_migrate()'s result. */
static int migrate_once(struct ctx *x, const char *uri, struct precopy_session **current,
			struct precopy_stats *st)
{
	struct pc_cli *c = x->c;
	/* --stop-delay makes the guest slow to quiesce, which holds the
	 * source in switchover (fault tests aim at it) */
	struct precopy_callbacks cb = pc_guest_callbacks(x->guest, progress, x);
	struct precopy_session *s = NULL;
	struct pc_cli_reg reg;
	int err, region;

	memset(st, 0, sizeof(*st));
	err = precopy_new(PRECOPY_ROLE_SOURCE, &c->params, &cb, &s);
	if (err) {
		fprintf(stderr, "precopy migrate: %s\n", strerror(-err));
		snprintf(st->error, sizeof(st->error), "%s", strerror(-err));
		return err;
	}
	if (c->memfd) /* over shm: the RAM itself is handed over */
		region = precopy_add_region_fd(s, pc_guest_ram(x->guest, NULL), c->ram,
					       pc_guest_fd(x->guest), 0, c->dirty_mode);
	else
		region = precopy_add_region(s, pc_guest_ram(x->guest, NULL), c->ram,
					    c->dirty_mode);
	if (region < 0) {
		fprintf(stderr, "precopy migrate: cannot track writes to guest memory (%s): %s\n",
			precopy_dirty_mode_name(c->dirty_mode), strerror(-region));
		snprintf(st->error, sizeof(st->error), "%s", strerror(-region));
		precopy_delete(&s);
		return region;
	}
	x->hint_to = c->free_pct ? s : NULL; /* region 0, once armed */
	if (pc_cli_apply_tls(c, s, "migrate")) {
		snprintf(st->error, sizeof(st->error), "bad TLS settings");
		precopy_delete(&s);
		return -EINVAL;
	}
	if (pc_cli_apply_rdma(c, s, "migrate")) {
		snprintf(st->error, sizeof(st->error), "bad RDMA settings");
		precopy_delete(&s);
		return -EINVAL;
	}
	if (c->max_forced_downtime_ms)
		precopy_set_param(s, PRECOPY_PARAM_MAX_FORCED_DOWNTIME, c->max_forced_downtime_ms);
	{
		char what[256];

		describe_setup(x, uri, what, sizeof(what));
		begin_progress(x, what);
	}
	*current = s;
	pc_cli_control_attach(x->ctl, s);
	err = precopy_migrate(s, uri);
	*current = NULL;
	x->hint_to = NULL;
	precopy_query(s, st);
	end_progress(x, st);
	get_reg(x, s, &reg);
	print_summary(x, st, &reg);
	pc_cli_control_attach(x->ctl, NULL);
	precopy_delete(&s);
	return err;
}

/*
 * --verify-source-after-failure: the migration failed, so the guest must
 * be running here with its memory intact. Let it run a moment, pause it,
 * check every page against its descriptor, resume it.
 * Return: 0 if intact (and running, for a guest that writes).
 */
static int verify_source(struct ctx *x)
{
	struct pc_cli *c = x->c;
	struct pc_guest_desc desc;
	struct timespec moment = { 0, 200 * 1000000L };
	uint64_t before = pc_guest_writes(x->guest), after;
	size_t len;
	void *ram = pc_guest_ram(x->guest, &len);
	char why[256] = "ok";
	bool running;
	int err;

	nanosleep(&moment, NULL);
	pc_guest_pause(x->guest);
	after = pc_guest_writes(x->guest);
	pc_guest_describe(x->guest, &desc);
	err = pc_guest_verify(ram, len, &desc, why, sizeof(why));
	pc_guest_resume(x->guest);
	running = c->dirty_rate == 0 || after > before;
	if (c->json)
		printf("{\"event\":\"source-verify\",\"role\":\"source\",\"verified\":%s,"
		       "\"running\":%s,\"writes-before\":%" PRIu64 ",\"writes-after\":%" PRIu64
		       ",\"pages\":%" PRIu64 ",\"detail\":\"%s\"}\n",
		       err ? "false" : "true", running ? "true" : "false", before, after,
		       desc.npages, err ? why : "ok");
	else
		fprintf(stderr, "precopy: source guest after the failure: %s, memory %s%s\n",
			running ? "running" : "NOT RUNNING", err ? "BROKEN: " : "intact",
			err ? why : "");
	fflush(stdout);
	return err || !running ? -EBADMSG : 0;
}

/* precopy migrate; *@last: the stats of the last migration tried. */
static int migrate_main(struct pc_cli *c, struct precopy_session **current,
			struct precopy_stats *last)
{
	struct ctx x = { .c = c, .role = "source" };
	struct pc_guest_opts go = {
		.ram = c->ram, .dirty_rate = c->dirty_rate, .pattern = c->pattern,
		.threads = c->threads, .zero_pct = c->zero_pct, .free_pct = c->free_pct,
		.seed = c->seed, .memfd = c->memfd, .stop_delay_ms = (unsigned)c->stop_delay_ms,
	};
	struct precopy_stats st = { 0 };
	int err, rc = 1;

	memset(last, 0, sizeof(*last));

	if (!c->to || !c->ram) {
		fprintf(stderr, "precopy migrate: --to URI and --ram SIZE are required\n");
		return 2;
	}
	if (ram_fits("migrate", c->ram, 1))
		return 2;
	if (c->control && pc_cli_control_start(c->control, "source", &x.ctl))
		return 2;
	{
		char what[96], r[32];

		snprintf(what, sizeof(what), "writing the guest's %s of memory",
			 pc_cli_fmt_bytes((double)c->ram, r, sizeof(r)));
		begin_progress(&x, what);
	}
	err = pc_guest_new(&go, &x.guest);
	if (!err)
		err = pc_guest_start(x.guest);
	end_progress(&x, NULL);
	if (err && !x.guest) {
		fprintf(stderr, "precopy migrate: cannot create a %" PRIu64 "-byte guest: %s\n",
			c->ram, strerror(-err));
		pc_cli_control_stop(&x.ctl);
		return 1;
	}
	if (err) {
		fprintf(stderr, "precopy migrate: cannot start the guest: %s\n", strerror(-err));
		goto out;
	}
	if (c->then_to)
		print_resources(c, "before");
	err = migrate_once(&x, c->to, current, &st);
	if (!err)
		rc = 0;
	else if (err == -EPROTONOSUPPORT ||
		 (err == -EINVAL && (strstr(st.error, "URI") || strstr(st.error, "TLS settings") ||
				     strstr(st.error, "RDMA settings"))))
		rc = 2;
	if (err == -ENOTRECOVERABLE) {
		/* Handed over, not confirmed: the guest may run at the
		 * destination, so it is neither checked as running here nor
		 * migrated anywhere else. */
		rc = 4;
		goto out;
	}
	if (err && rc != 2 && c->verify_source && verify_source(&x)) {
		rc = 3;
		goto out;
	}
	if (!c->then_to || rc == 2)
		goto out;
	if (!err) {
		if (c->json)
			printf("{\"event\":\"retry\",\"role\":\"source\",\"skipped\":true,"
			       "\"reason\":\"the first migration completed\"}\n");
		else if (!c->quiet)
			fprintf(stderr, "precopy: not migrating again: the first migration "
					"completed\n");
		goto out;
	}
	print_resources(c, "after-failure");
	if (c->json)
		printf("{\"event\":\"retry\",\"role\":\"source\",\"skipped\":false,\"to\":\"%s\"}\n",
		       c->then_to);
	fflush(stdout);
	err = migrate_once(&x, c->then_to, current, &st);
	rc = err ? 1 : 0;
	print_resources(c, "after-retry");
out:
	pc_cli_control_stop(&x.ctl);
	pc_guest_delete(&x.guest);
	*last = st;
	return rc;
}

int pc_cli_migrate(struct pc_cli *c, struct precopy_session **current)
{
	struct precopy_stats st;

	return migrate_main(c, current, &st);
}

/* --- demo: both ends on this machine ------------------------------------ */

/* All of @fd until end of file, as a string (NULL if out of memory). */
static char *read_all(int fd)
{
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	ssize_t n;

	while (buf) {
		if (len + 1 >= cap) {
			char *nb = realloc(buf, cap * 2);

			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	if (buf)
		buf[len] = '\0';
	return buf;
}

/*
 * The destination, in the child: everything it prints (its summary and
 * verdict, its errors) is kept until it ends and then written to @out_fd,
 * so that the parent tells one story: the source's summary, then the
 * destination's verdict. Return: the exit status.
 */
static int demo_destination(struct pc_cli *c, struct precopy_session **current, int ready_fd,
			    int out_fd)
{
	struct pc_cli dc = *c;
	char *buf = NULL;
	size_t len = 0;
	FILE *mem = open_memstream(&buf, &len);
	FILE *saved_out = stdout, *saved_err = stderr;
	int rc;

	dc.listen = c->listen ? c->listen : "tcp:127.0.0.1:0";
	dc.ready_fd = ready_fd;
	dc.quiet = true;
	if (mem) {
		stdout = mem;
		stderr = mem;
	}
	rc = pc_cli_incoming(&dc, current);
	if (mem) {
		stdout = saved_out;
		stderr = saved_err;
		fclose(mem);
		for (size_t off = 0; buf && off < len;) {
			ssize_t n = write(out_fd, buf + off, len - off);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			off += (size_t)n;
		}
		free(buf);
	}
	close(out_fd);
	return rc;
}

/* The closing line: what a person looks for first. */
static void demo_verdict(struct pc_cli *c, const struct precopy_stats *st, bool verified)
{
	char a[32];
	double ram = (double)st->total;

	printf("precopy demo: %s in %.2f s; downtime %" PRIu64 " ms (limit %" PRIu64 " ms%s); ",
	       pc_cli_fmt_bytes(ram, a, sizeof(a)), st->total_time / 1e3, st->downtime,
	       c->params.downtime_limit_ms,
	       st->downtime > c->params.downtime_limit_ms ? ", exceeded" : "");
	if (st->normal + st->duplicate == 0)
		printf("RAM handed over, no page copied; ");
	else
		printf("sent %.2fx the RAM; ", ram ? st->transferred / ram : 0);
	printf("%s\n", verified ? "every page verified" : "NOT verified at the destination");
	fflush(stdout);
}

int pc_cli_demo(struct pc_cli *c, struct precopy_session **current)
{
	int pfd[2], ofd[2], status = 0, rc;
	char uri[128] = "";
	ssize_t n;
	pid_t pid;
	char a[32], r[32];
	struct precopy_stats st;
	char *dest_out;
	bool dest_ok;

	if (!c->ram) {
		fprintf(stderr, "precopy demo: --ram must not be 0\n");
		return 2;
	}
	if (ram_fits("demo", c->ram, 2)) /* both ends run here */
		return 2;
	if (pipe(pfd)) {
		perror("precopy demo: pipe");
		return 1;
	}
	if (pipe(ofd)) {
		perror("precopy demo: pipe");
		close(pfd[0]);
		close(pfd[1]);
		return 1;
	}
	if (!c->json)
		printf("precopy demo: migrating a %s guest that writes %s%s (%s) over %s\n",
		       pc_cli_fmt_bytes((double)c->ram, a, sizeof(a)),
		       c->dirty_rate < 0 ? "flat out"
					 : pc_cli_fmt_bytes(c->dirty_rate, r, sizeof(r)),
		       c->dirty_rate < 0 ? "" : "/s",
		       c->pattern == PC_GUEST_SEQUENTIAL ? "sequential verification pattern"
		       : c->pattern == PC_GUEST_RANDOM  ? "random pages"
							: "hot set",
		       c->listen ? c->listen : "TCP loopback");
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		perror("precopy demo: fork");
		return 1;
	}
	if (pid == 0) {
		close(pfd[0]);
		close(ofd[0]);
		_exit(demo_destination(c, current, pfd[1], ofd[1]));
	}
	close(pfd[1]);
	close(ofd[1]);
	n = read(pfd[0], uri, sizeof(uri) - 1);
	close(pfd[0]);
	if (n <= 0) {
		dest_out = read_all(ofd[0]);
		close(ofd[0]);
		waitpid(pid, &status, 0);
		fputs(dest_out ? dest_out : "", stderr);
		free(dest_out);
		fprintf(stderr, "precopy demo: the destination did not start\n");
		return 1;
	}
	uri[n] = '\0';
	uri[strcspn(uri, "\n")] = '\0';
	/* The source drives the migration: its summary first, then the
	 * destination's verdict (which the child kept until it ended). */
	{
		struct pc_cli sc = *c;

		sc.to = uri;
		rc = migrate_main(&sc, current, &st);
	}
	if (rc)
		kill(pid, SIGTERM);
	dest_out = read_all(ofd[0]);
	close(ofd[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (dest_out)
		fputs(dest_out, stdout);
	free(dest_out);
	fflush(stdout);
	dest_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	if (!rc && !c->json)
		demo_verdict(c, &st, dest_ok);
	if (rc)
		return rc;
	if (!dest_ok) {
		fprintf(stderr, "precopy demo: the destination did not verify the migration\n");
		return 1;
	}
	return 0;
}

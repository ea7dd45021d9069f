/* SPDX-License-Identifier: MIT */
/*
 * precopy.c - the command-line tool: migrate | incoming | demo | simulate |
 * bridge | plot.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "guest.h"
#include "precopy.h"
#include "transport.h"

static struct precopy_session *g_session; /* for SIGINT */

static void on_sigint(int sig)
{
	(void)sig;
	if (g_session)
		precopy_cancel(g_session);
}

/* precopy help; the man page and README list the same flags. */
static const char usage_text[] =
"usage: precopy COMMAND [OPTIONS]\n"
"\n"
"Live-migrate memory by iterative precopy.\n"
"\n"
"commands:\n"
"  demo                      both ends on this machine: a 1 GiB guest with an active\n"
"                            workload migrated over TCP loopback (or --listen URI,\n"
"                            e.g. shm:/tmp/pc.sock), verified\n"
"  incoming --listen URI --ram SIZE [--numa-node N]\n"
"                            receive a migration into SIZE bytes and verify it\n"
"  migrate --to URI --ram SIZE [--dirty-rate RATE] [--pattern P] [--memfd]\n"
"                            run a synthetic guest and migrate it to URI\n"
"  simulate --ram SIZE --bandwidth RATE --dirty-rate RATE\n"
"                            predict a migration with the policy code, no I/O\n"
"  bridge --listen-unix PATH --to URI\n"
"  bridge --listen URI --to-unix PATH\n"
"                            carry a byte stream (an unmodified QEMU's migration)\n"
"                            from a unix socket over a precopy transport to a\n"
"                            unix socket at the other end\n"
"  plot EVENTS.jsonl OUT.svg draw the timeline of a migration (what is left to\n"
"                            send, bandwidth and dirty rate, throttle) from the\n"
"                            --json output of migrate, incoming or demo\n"
"  ctl PATH query | get NAME | set NAME VALUE | cancel\n"
"                            talk to a running 'migrate --control PATH': its\n"
"                            statistics, a parameter read or changed while it runs,\n"
"                            a cancel\n"
"                            (one JSON answer on stdout; exit 1 if refused)\n"
"  help                      this text\n"
"  version                   print the version\n"
"\n"
"URI: tcp:HOST:PORT (IPv6 as tcp:[ADDR]:PORT); tls:HOST:PORT, the same over TLS\n"
"1.3 (see TLS below); shm:PATH between two processes on one host (PATH: a unix\n"
"socket the destination creates; both ends must run as the same user, or as\n"
"root); rdma:HOST:PORT where built in. 'precopy version' lists the transports\n"
"built in. SIZE and RATE take K, M, G, T suffixes (powers of 1024); a RATE is\n"
"per second.\n"
"\n"
"guest (migrate, demo, simulate):\n"
"  --ram SIZE                memory of the guest (demo: 1G); at most what the\n"
"                            host's memory and swap can hold\n"
"  --dirty-rate RATE         page writes per second, as bytes; 0 = idle guest,\n"
"                            'max' = as fast as the writers can (demo: 256M)\n"
"  --pattern P               sequential | random | hotset (default sequential)\n"
"  --threads N               writer threads (default 1; sequential with 1 writer\n"
"                            is the verification pattern)\n"
"  --zero-pct PCT            share of pages that stay all zero (default 0)\n"
"  --free-pct PCT            share of pages hinted free to the engine (default 0)\n"
"  --seed N                  content seed (default 1)\n"
"  --dirty-mode M            auto | uffd-wp | soft-dirty (default auto)\n"
"  --memfd                   migrate: back the guest's RAM with a memfd; over shm\n"
"                            its RAM is then handed over (no page copied, downtime\n"
"                            independent of RAM size) instead of copied\n"
"\n"
"migration parameters (defaults in brackets):\n"
"  --max-bandwidth RATE      cap for RAM passes, 0 = unlimited [0]\n"
"  --downtime-limit MS       longest acceptable guest pause [300]\n"
"  --avail-switchover-bandwidth RATE\n"
"                            bandwidth assumed for the switchover decision,\n"
"                            0 = measured estimate [0]\n"
"  --auto-converge           throttle the guest's vCPUs when it dirties too fast [off]\n"
"  --throttle-trigger-threshold PCT  dirtied/sent ratio that counts [50]\n"
"  --cpu-throttle-initial PCT        first throttle step [20]\n"
"  --cpu-throttle-increment PCT      further steps [10]\n"
"  --max-cpu-throttle PCT            highest throttle [99]\n"
"  --cpu-throttle-tailslow   steps in proportion to the excess [off]\n"
"  --max-iterations N        passes after bulk before the watchdog acts, 0 = none [0]\n"
"  --max-time MS             time before the watchdog acts, 0 = none [0]\n"
"  --stall-iterations N      passes without progress before it acts, 0 = off [0]\n"
"  --on-limit force|abort|postcopy\n"
"                            what the watchdog does: force the switchover, abort,\n"
"                            or switch to postcopy (tcp:/tls:, userfaultfd at the\n"
"                            destination) [force]\n"
"  --channels N              parallel connections [1]\n"
"  --timeout MS              give up on a silent peer after MS (both ends, bridge\n"
"                            too); a destination gives each connection this long\n"
"                            for its hello and TLS handshake [15000]\n"
"  --max-forced-downtime MS  when the watchdog would force a switchover expected to\n"
"                            pause the guest longer than MS, abort instead (the\n"
"                            guest keeps running here); 0 = no bound [0]\n"
"\n"
"control (migrate, demo):\n"
"  --control PATH            serve JSON requests on the unix socket PATH (mode 0600)\n"
"                            while migrating: 'precopy ctl PATH ...' queries the\n"
"                            statistics, changes max-bandwidth, downtime-limit,\n"
"                            avail-switchover-bandwidth, auto-converge and its\n"
"                            throttle steps, max-iterations, max-time,\n"
"                            stall-iterations, on-limit or max-forced-downtime, or\n"
"                            cancels (protocol: docs/CONTROL.md)\n"
"\n"
"migrate, after a failure:\n"
"  --verify-source-after-failure\n"
"                            when the migration fails or is cancelled, let the guest\n"
"                            run 200 ms more, pause it, check every page of its memory\n"
"                            and resume it; exit 3 if it is not intact or not running\n"
"  --then-migrate-to URI     when the migration fails or is cancelled, migrate the same\n"
"                            running guest again to URI with a new session (the exit\n"
"                            status is then the second migration's); reports open\n"
"                            descriptors and resident memory before and after\n"
"  --stop-delay MS           the synthetic guest takes MS to stop at switchover (a slow\n"
"                            VMM); holds the source in switchover, for fault tests [0]\n"
"\n"
"TLS (URIs tls:HOST:PORT; migrate, incoming, demo, bridge; TLS 1.3 with a pre-shared\n"
"key or x509). Refused with no tls: URI; key files must not be readable by group or\n"
"others (chmod 600), as ssh requires:\n"
"  --tls-psk-file FILE       the pre-shared key as hex digits (16..512 bytes),\n"
"                            e.g. from 'openssl rand -hex 32'; the same at both ends\n"
"  --tls-psk-identity NAME   the key's name [precopy]\n"
"  --tls-ca FILE             PEM CA(s) the peer's certificate must chain to (source:\n"
"                            required for x509; destination: requires client certs)\n"
"  --tls-cert FILE           PEM certificate of this end (destination: required)\n"
"  --tls-key FILE            PEM private key of --tls-cert\n"
"  --tls-hostname NAME       source: the name the destination's certificate must\n"
"                            carry [the URI's host]\n"
"\n"
"RDMA (URIs rdma:HOST:PORT; migrate, incoming, demo, bridge):\n"
"  --auth-key-file FILE      the key that authenticates the connection, as hex digits\n"
"                            (16..1024 bytes), e.g. from 'openssl rand -hex 32'; the\n"
"                            same at both ends. Without it anyone who can reach the\n"
"                            port can connect. It does not encrypt: RDMA only on a\n"
"                            trusted fabric\n"
"  --rdma-registration MODE  migrate, demo: how the guest's RAM is registered (pinned)\n"
"                            with the device: on-demand, 16 MiB chunks as the bulk\n"
"                            pass reaches them, or pin-all, all of it before the\n"
"                            first page [on-demand]\n"
"\n"
"incoming:\n"
"  --listen URI              where to listen (port 0 picks one; printed)\n"
"  --numa-node N             place the received RAM on NUMA node N and report\n"
"                            where its pages landed [no binding]\n"
"  --no-verify               skip the synthetic guest's content check\n"
"  --no-populate             do not allocate the RAM before listening (the\n"
"                            'populate' parameter = 0): receiving then takes a\n"
"                            page fault per page (per 2 MiB in huge pages)\n"
"                            [populate, in parallel threads]\n"
"\n"
"bridge:\n"
"  --listen-unix PATH        source side: accept QEMU's 'migrate unix:PATH' here,\n"
"                            then connect to --to URI (a bridge at the other end)\n"
"  --to-unix PATH            destination side: once a bridge connected to\n"
"                            --listen URI, connect to QEMU's '-incoming unix:PATH'\n"
"\n"
"simulate:\n"
"  --bandwidth RATE          link bandwidth\n"
"  --estimator busy|wall     bandwidth estimate to decide with [busy]\n"
"  --rtt-us N                the path's round trip in us; the end pays two [0]\n"
"  --send-queue SIZE         the transport's send queue (a TCP socket's send\n"
"                            buffer, e.g. 4M): sends return while it has room,\n"
"                            and the final burst waits behind it; 0 = a send\n"
"                            returns when its bytes are on the link [0]\n"
"  --page-cost NS            the sender's CPU per page it sends, data or zero\n"
"                            (reading it; on a real source mostly the first read\n"
"                            of a page never touched) [0]\n"
"  --zero-page-cost NS       the sender's CPU per zero page, on top (the zero\n"
"                            test reads it whole) [0]\n"
"\n"
"output:\n"
"  --json                    JSON lines: progress events and a result\n"
"  --quiet                   no progress line\n"
"\n"
"Exit status: 0 success, 1 migration failed or cancelled, 2 bad usage,\n"
"3 the source guest was not intact after a failure (--verify-source-after-failure),\n"
"4 the guest was handed over but the destination did not confirm it runs it:\n"
"  it is left stopped here, and may be running there.\n";

static void usage(FILE *f)
{
	fputs(usage_text, f);
}

/* A private key file or a credential file: its check (see below). */
static int key_file_private(const char *opt, const char *path);
static int readable(const char *opt, const char *path);

/* How an option's argument is read. */
enum opt_kind {
	O_STR,    /* const char *: the argument as given, after .check */
	O_TRUE,   /* bool: set; no argument */
	O_UINT,   /* a whole number in lo..hi */
	O_SIZE,   /* a size or rate with K/M/G/T (uint64_t) */
	O_CHOICE, /* one of .choices, stored as its value */
	O_FUNC,   /* .parse reads it */
};

struct opt_choice {
	const char *name;
	int val;
};

/* One command-line option: what it takes and which field of struct
 * pc_cli it sets. */
struct opt {
	const char *name;
	enum opt_kind kind;
	size_t off, size; /* the field it sets */
	size_t have;      /* if not 0: a bool also set (have_tls...) */
	uint64_t lo, hi;  /* O_UINT */
	const char *what; /* why a value is refused; NULL: the generic reason */
	const struct opt_choice *choices;                /* O_CHOICE; NULL name ends */
	int (*check)(const char *opt, const char *path); /* O_STR, optional */
	int (*parse)(struct pc_cli *c, const struct opt *o, const char *a); /* O_FUNC */
};

static int bad_value(const char *opt, const char *val, const char *what)
{
	fprintf(stderr, "precopy: --%s '%s': %s\n", opt, val, what);
	return -EINVAL;
}

/* Store @v in the field of @o, whatever its width. */
static void put(struct pc_cli *c, const struct opt *o, uint64_t v)
{
	char *p = (char *)c + o->off;

	if (o->size == sizeof(bool)) {
		bool b = v != 0;

		memcpy(p, &b, sizeof(b));
	} else if (o->size == sizeof(uint32_t)) {
		uint32_t u = (uint32_t)v;

		memcpy(p, &u, sizeof(u));
	} else {
		memcpy(p, &v, sizeof(v));
	}
}

static void put_double(struct pc_cli *c, const struct opt *o, double v)
{
	memcpy((char *)c + o->off, &v, sizeof(v));
}

static int parse_ram(struct pc_cli *c, const struct opt *o, const char *a)
{
	uint64_t v;

	if (pc_cli_parse_size(a, &v) || v == 0 || v % PRECOPY_PAGE_SIZE)
		return bad_value(o->name, a, "expected a size in whole 4 KiB pages, e.g. 256M");
	c->ram = v;
	return 0;
}

/* --dirty-rate (a rate, or "max": -1) and --bandwidth (a rate above 0). */
static int parse_rate(struct pc_cli *c, const struct opt *o, const char *a)
{
	uint64_t v;

	if (o->lo == 0 && !strcmp(a, "max")) {
		put_double(c, o, -1);
		return 0;
	}
	if (pc_cli_parse_size(a, &v) || v < o->lo)
		return bad_value(o->name, a, o->what);
	put_double(c, o, (double)v);
	return 0;
}

/* A key file of hex digits, private to its owner. Return: its length in
 * bytes, or -EINVAL with the reason printed. */
static int read_key_file(const struct opt *o, const char *a, uint8_t *key, size_t cap)
{
	int n = key_file_private(o->name, a) ? -EPERM : pc_cli_read_psk(a, key, cap);

	if (n == -EPERM)
		return -EINVAL;
	if (n < 0)
		return bad_value(o->name, a, n == -EINVAL ? o->what : strerror(-n));
	return n;
}

static int parse_tls_psk(struct pc_cli *c, const struct opt *o, const char *a)
{
	int n = read_key_file(o, a, c->tls_psk, sizeof(c->tls_psk));

	if (n < 0)
		return n;
	c->tls.psk = c->tls_psk;
	c->tls.psk_len = (size_t)n;
	if (!c->tls.psk_identity)
		c->tls.psk_identity = "precopy";
	return 0;
}

static int parse_auth_key(struct pc_cli *c, const struct opt *o, const char *a)
{
	int n = read_key_file(o, a, c->auth_key, sizeof(c->auth_key));

	if (n < 0)
		return n;
	c->auth_key_len = (size_t)n;
	return 0;
}

/* --rtt-us: as strtoull() reads it (a leading '+' is fine), not negative. */
static int parse_rtt(struct pc_cli *c, const struct opt *o, const char *a)
{
	char *end;
	uint64_t v;

	errno = 0;
	v = strtoull(a, &end, 10);
	if (errno || end == a || *end || v > 10000000 || a[0] == '-')
		return bad_value(o->name, a, "expected microseconds, 0..10000000");
	c->rtt_us = v;
	return 0;
}

static const struct opt_choice patterns[] = {
	{ "sequential", PC_GUEST_SEQUENTIAL }, { "seq", PC_GUEST_SEQUENTIAL },
	{ "random", PC_GUEST_RANDOM }, { "hotset", PC_GUEST_HOTSET }, { NULL, 0 },
};
static const struct opt_choice dirty_modes[] = {
	{ "auto", PRECOPY_DIRTY_AUTO }, { "uffd-wp", PRECOPY_DIRTY_UFFD_WP },
	{ "soft-dirty", PRECOPY_DIRTY_SOFT_DIRTY }, { NULL, 0 },
};
static const struct opt_choice on_limits[] = {
	{ "force", PRECOPY_ON_LIMIT_FORCE }, { "abort", PRECOPY_ON_LIMIT_ABORT },
	{ "postcopy", PRECOPY_ON_LIMIT_POSTCOPY }, { NULL, 0 },
};
static const struct opt_choice registrations[] = {
	{ "on-demand", PRECOPY_REG_ON_DEMAND }, { "pin-all", PRECOPY_REG_PIN_ALL }, { NULL, 0 },
};
static const struct opt_choice estimators[] = { { "busy", 0 }, { "wall", 1 }, { NULL, 0 } };

#define F(field) .off = offsetof(struct pc_cli, field), .size = sizeof(((struct pc_cli *)0)->field)
#define STR(n, field, ...) { n, O_STR, F(field), __VA_ARGS__ }
#define SET(n, field) { n, O_TRUE, F(field) }
#define UINT(n, field, max) { n, O_UINT, F(field), .hi = (max) }
#define RANGE(n, field, min, max, why) { n, O_UINT, F(field), .lo = (min), .hi = (max), .what = why }
#define SIZE(n, field) { n, O_SIZE, F(field), .what = "expected a rate such as 1G" }
#define CHOICE(n, field, c, why, ...) { n, O_CHOICE, F(field), .choices = c, .what = why, __VA_ARGS__ }
#define FUNC(n, fn, ...) { n, O_FUNC, .parse = fn, __VA_ARGS__ }
#define HAVE_TLS .have = offsetof(struct pc_cli, have_tls)

static const struct opt opts[] = {
	STR("listen", listen),
	STR("to", to),
	FUNC("ram", parse_ram),
	FUNC("dirty-rate", parse_rate, F(dirty_rate), .what = "expected a rate such as 64M or 'max'"),
	CHOICE("pattern", pattern, patterns, "expected sequential, random or hotset"),
	RANGE("threads", threads, 1, 64, "expected 1..64"),
	UINT("zero-pct", zero_pct, 100),
	UINT("free-pct", free_pct, 100),
	UINT("seed", seed, UINT64_MAX),
	CHOICE("dirty-mode", dirty_mode, dirty_modes, "expected auto, uffd-wp or soft-dirty"),
	SIZE("max-bandwidth", params.max_bandwidth),
	UINT("downtime-limit", params.downtime_limit_ms, 2000000),
	SIZE("avail-switchover-bandwidth", params.avail_switchover_bandwidth),
	SET("auto-converge", params.auto_converge),
	UINT("throttle-trigger-threshold", params.throttle_trigger_threshold, 100),
	UINT("cpu-throttle-initial", params.cpu_throttle_initial, 99),
	UINT("cpu-throttle-increment", params.cpu_throttle_increment, 99),
	UINT("max-cpu-throttle", params.max_cpu_throttle, 99),
	SET("cpu-throttle-tailslow", params.cpu_throttle_tailslow),
	UINT("max-iterations", params.max_iterations, UINT32_MAX),
	UINT("max-time", params.max_time_ms, UINT32_MAX),
	UINT("stall-iterations", params.stall_iterations, UINT32_MAX),
	CHOICE("on-limit", params.on_limit, on_limits, "expected force, abort or postcopy"),
	RANGE("channels", params.channels, 1, PRECOPY_MAX_CHANNELS, "expected 1..16"),
	RANGE("timeout", params.timeout_ms, 100, 3600000, "expected 100..3600000 (ms)"),
	SET("verify-source-after-failure", verify_source),
	STR("then-migrate-to", then_to),
	UINT("stop-delay", stop_delay_ms, 600000),
	FUNC("tls-psk-file", parse_tls_psk, HAVE_TLS,
	     .what = "expected a file of 32..1024 hex digits (16..512 bytes)"),
	STR("tls-psk-identity", tls.psk_identity, HAVE_TLS),
	STR("tls-ca", tls.ca_file, HAVE_TLS, .check = readable),
	STR("tls-cert", tls.cert_file, HAVE_TLS, .check = readable),
	STR("tls-key", tls.key_file, HAVE_TLS, .check = key_file_private),
	STR("tls-hostname", tls.hostname, HAVE_TLS),
	FUNC("auth-key-file", parse_auth_key, .have = offsetof(struct pc_cli, have_auth_key),
	     .what = "expected a file of 32..2048 hex digits (16..1024 bytes)"),
	CHOICE("rdma-registration", registration, registrations, "expected on-demand or pin-all",
	       .have = offsetof(struct pc_cli, have_registration)),
	STR("control", control),
	UINT("max-forced-downtime", max_forced_downtime_ms, 2000000),
	SET("no-verify", no_verify),
	SET("no-populate", no_populate),
	SET("json", json),
	SET("quiet", quiet),
	FUNC("bandwidth", parse_rate, F(bandwidth), .lo = 1, .what = "expected a rate such as 1G"),
	CHOICE("estimator", estimator_wall, estimators, "expected busy or wall"),
	FUNC("rtt-us", parse_rtt),
	{ "send-queue", O_SIZE, F(send_queue), .what = "expected a size, e.g. 4M" },
	RANGE("page-cost", page_cost_ns, 0, 1000000000, "expected ns, 0..1000000000"),
	RANGE("zero-page-cost", zero_page_cost_ns, 0, 1000000000, "expected ns, 0..1000000000"),
	STR("listen-unix", listen_unix),
	STR("to-unix", to_unix),
	UINT("numa-node", numa_node, 1023),
	SET("memfd", memfd),
};

#define NOPTS (sizeof(opts) / sizeof(opts[0]))
#define OPT_HELP 256 /* getopt's value for --help; opts[i] has 257 + i */

/* Read @a for @o into @c. Return: 0, or -EINVAL with the reason printed. */
static int parse_opt(struct pc_cli *c, const struct opt *o, const char *a)
{
	const struct opt_choice *ch;
	uint64_t v = 1;
	int err = 0;

	switch (o->kind) {
	case O_STR:
		if (o->check && o->check(o->name, a))
			return -EINVAL;
		memcpy((char *)c + o->off, &a, sizeof(a));
		break;
	case O_TRUE:
		put(c, o, 1);
		break;
	case O_UINT:
		if (pc_cli_parse_u64(a, &v) || v < o->lo || v > o->hi)
			return bad_value(o->name, a, o->what ? o->what
							      : "expected a whole number in range");
		put(c, o, v);
		break;
	case O_SIZE:
		if (pc_cli_parse_size(a, &v))
			return bad_value(o->name, a, o->what);
		put(c, o, v);
		break;
	case O_CHOICE:
		for (ch = o->choices; ch->name && strcmp(ch->name, a); ch++)
			;
		if (!ch->name)
			return bad_value(o->name, a, o->what);
		put(c, o, (uint64_t)ch->val);
		break;
	case O_FUNC:
		err = o->parse(c, o, a);
		break;
	}
	if (!err && o->have)
		*(bool *)((char *)c + o->have) = true;
	return err;
}

/* The first --tls-* flag given, to name it in an error. */
static const char *g_tls_flag;

/*
 * A key file must be private to its owner, as ssh requires of its keys:
 * one that group or others may read is refused, not used. It must also
 * be readable by us (the reason is printed either way).
 * Return: 0, or -EINVAL with the reason printed.
 */
static int key_file_private(const char *opt, const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0 || access(path, R_OK) < 0)
		return bad_value(opt, path, strerror(errno));
	if (st.st_mode & (S_IRGRP | S_IROTH)) {
		fprintf(stderr, "precopy: --%s '%s': readable by %s (mode %04o); a key file must "
				"be readable by its owner only (chmod 600 '%s')\n", opt, path,
			(st.st_mode & S_IRGRP) && (st.st_mode & S_IROTH) ? "group and others"
			: st.st_mode & S_IRGRP ? "its group" : "others",
			(unsigned)(st.st_mode & 07777), path);
		return -EINVAL;
	}
	return 0;
}

/* A credential file GnuTLS will read: there and readable now, so the
 * command stops before it listens or connects. */
static int readable(const char *opt, const char *path)
{
	return access(path, R_OK) < 0 ? bad_value(opt, path, strerror(errno)) : 0;
}

static int parse_args(int argc, char **argv, struct pc_cli *c)
{
	struct option long_opts[NOPTS + 2] = { { "help", no_argument, 0, OPT_HELP } };
	char why[128];
	int opt;

	for (size_t i = 0; i < NOPTS; i++)
		long_opts[i + 1] = (struct option){ opts[i].name, opts[i].kind == O_TRUE ?
						    no_argument : required_argument,
						    0, OPT_HELP + 1 + (int)i };
	optind = 1;
	while ((opt = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		const struct opt *o = opt > OPT_HELP ? &opts[opt - OPT_HELP - 1] : NULL;

		if (opt == 'h' || opt == OPT_HELP) {
			usage(stdout);
			exit(0);
		}
		if (!o) {
			fprintf(stderr, "precopy: see 'precopy help'\n");
			return -EINVAL;
		}
		if (!strncmp(o->name, "tls-", 4) && !g_tls_flag)
			g_tls_flag = o->name;
		if (parse_opt(c, o, optarg))
			return -EINVAL;
	}
	if (optind < argc) {
		fprintf(stderr, "precopy: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	if (precopy_params_check(&c->params, why, sizeof(why))) {
		fprintf(stderr, "precopy: %s\n", why);
		return -EINVAL;
	}
	return 0;
}

/*
 * Settings where they cannot act are refused rather than ignored: a key
 * that authenticates nothing, or TLS settings on a plain connection,
 * would only give a false sense of safety. Whether a transport can use
 * them is its capability (PC_TCAP_AUTH_KEY, PC_TCAP_TLS), not its name.
 * Return: 0, or 2 with the reason printed.
 */
static int check_transport_flags(const char *cmd, const struct pc_cli *c)
{
	const char *uris[2] = { NULL, NULL }, *flag;
	uint32_t caps;

	if (!c->have_auth_key && !c->have_registration && !c->have_tls)
		return 0;
	flag = c->have_auth_key ? "auth-key-file" : c->have_registration ? "rdma-registration"
									: g_tls_flag;
	if (!strcmp(cmd, "simulate")) {
		fprintf(stderr, "precopy simulate: --%s: simulate makes no connection\n", flag);
		return 2;
	}
	if (c->have_registration && (!strcmp(cmd, "incoming") || !strcmp(cmd, "bridge"))) {
		fprintf(stderr, "precopy %s: --rdma-registration applies to migrate and demo "
				"only (the RAM a source sends from)\n", cmd);
		return 2;
	}
	if (!strcmp(cmd, "migrate")) {
		uris[0] = c->to;
		uris[1] = c->then_to;
	} else if (!strcmp(cmd, "demo")) {
		uris[0] = c->listen ? c->listen : "tcp:127.0.0.1:0";
	} else {
		uris[0] = c->listen ? c->listen : c->to;
	}
	if (!uris[0])
		return 0; /* (a missing URI is reported by the command) */
	caps = pc_cli_uri_caps(uris[0]) | (uris[1] ? pc_cli_uri_caps(uris[1]) : 0);
	if (c->have_tls && !(caps & PC_TCAP_TLS)) {
		fprintf(stderr, "precopy %s: --%s applies to tls: URIs only; '%s' would ignore "
				"it (use tls:HOST:PORT)\n", cmd, g_tls_flag, uris[0]);
		return 2;
	}
	if (c->have_auth_key && !(caps & PC_TCAP_AUTH_KEY)) {
		fprintf(stderr, "precopy %s: --auth-key-file applies to rdma: URIs only; '%s' "
				"would ignore it (over TCP, authenticate with tls: and "
				"--tls-psk-file)\n", cmd, uris[0]);
		return 2;
	}
	if (c->have_registration && !(caps & PC_TCAP_NEEDS_REG)) {
		fprintf(stderr, "precopy %s: --rdma-registration applies to rdma: URIs only; "
				"'%s' registers no memory\n", cmd, uris[0]);
		return 2;
	}
	return 0;
}

/* Whether @uri's transport authenticates with the shared key (rdma:); not
 * a URI that names no transport built in. */
static bool takes_key(const char *uri)
{
	uint32_t caps = uri ? pc_cli_uri_caps(uri) : ~0u;

	return caps != ~0u && (caps & PC_TCAP_AUTH_KEY);
}

/*
 * rdma: without --auth-key-file: both ends use the empty key, which
 * authenticates nothing. Said on stderr at each end, once, before
 * anything connects.
 */
static void warn_rdma_no_key(const char *cmd, const struct pc_cli *c)
{
	bool listens, connects;

	if (c->have_auth_key)
		return;
	if (!strcmp(cmd, "migrate")) {
		listens = false;
		connects = takes_key(c->to) || takes_key(c->then_to);
	} else if (!strcmp(cmd, "incoming")) {
		listens = takes_key(c->listen);
		connects = false;
	} else if (!strcmp(cmd, "demo")) {
		listens = connects = takes_key(c->listen);
	} else if (!strcmp(cmd, "bridge")) {
		listens = takes_key(c->listen);
		connects = takes_key(c->to);
	} else {
		return;
	}
	if (listens)
		fprintf(stderr, "precopy %s: warning: rdma: without --auth-key-file: anyone who "
			"can reach this address on the fabric can connect as the source and write "
			"into the incoming guest's memory\n", cmd);
	if (connects && !listens)
		fprintf(stderr, "precopy %s: warning: rdma: without --auth-key-file: the "
			"destination is not authenticated; whoever answers at that address "
			"receives the guest's memory\n", cmd);
}

int main(int argc, char **argv)
{
	struct pc_cli c;
	const char *cmd;
	struct sigaction sa = { .sa_handler = on_sigint };
	int err;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	cmd = argv[1];
	if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
		printf("precopy %d.%d\ntransports: %s\n", PRECOPY_VERSION_MAJOR,
		       PRECOPY_VERSION_MINOR, pc_transport_schemes());
		return 0;
	}
	if (!strcmp(cmd, "plot"))
		return pc_cli_plot(argc - 2, argv + 2);
	pc_cli_defaults(&c);
	if (!strcmp(cmd, "demo")) {
		c.ram = 1ull << 30;
		c.dirty_rate = 256.0 * (1 << 20);
	}
	if (!strcmp(cmd, "ctl"))
		return pc_cli_ctl(argc - 2, argv + 2);
	if (parse_args(argc - 1, argv + 1, &c) || check_transport_flags(cmd, &c))
		return 2;
	if ((c.control || c.max_forced_downtime_ms) && strcmp(cmd, "migrate") &&
	    strcmp(cmd, "demo")) {
		fprintf(stderr, "precopy %s: --%s applies to migrate and demo only\n", cmd,
			c.control ? "control" : "max-forced-downtime");
		return 2;
	}
	warn_rdma_no_key(cmd, &c);

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* Each command returns the exit status. */
	if (!strcmp(cmd, "incoming"))
		err = pc_cli_incoming(&c, &g_session);
	else if (!strcmp(cmd, "migrate"))
		err = pc_cli_migrate(&c, &g_session);
	else if (!strcmp(cmd, "demo"))
		err = pc_cli_demo(&c, &g_session);
	else if (!strcmp(cmd, "simulate"))
		err = pc_cli_simulate(&c);
	else if (!strcmp(cmd, "bridge"))
		err = pc_cli_bridge(&c);
	else {
		fprintf(stderr, "precopy: unknown command '%s' (see 'precopy help')\n", cmd);
		return 2;
	}
	return err;
}

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

static void usage(FILE *f)
{
	fprintf(f,
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
"  --on-limit force|abort    what the watchdog does [force]\n"
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
"                            page fault per page [populate, in parallel threads]\n"
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
"\n"
"output:\n"
"  --json                    JSON lines: progress events and a result\n"
"  --quiet                   no progress line\n"
"\n"
"Exit status: 0 success, 1 migration failed or cancelled, 2 bad usage,\n"
"3 the source guest was not intact after a failure (--verify-source-after-failure),\n"
"4 the guest was handed over but the destination did not confirm it runs it:\n"
"  it is left stopped here, and may be running there.\n");
}

enum {
	OPT_LISTEN = 256, OPT_TO, OPT_RAM, OPT_DIRTY_RATE, OPT_PATTERN, OPT_THREADS,
	OPT_ZERO_PCT, OPT_FREE_PCT, OPT_SEED, OPT_DIRTY_MODE, OPT_MAX_BW, OPT_DOWNTIME,
	OPT_AVAIL_BW, OPT_AUTO_CONVERGE, OPT_TRIGGER, OPT_T_INITIAL, OPT_T_INCREMENT,
	OPT_T_MAX, OPT_TAILSLOW, OPT_MAX_ITER, OPT_MAX_TIME, OPT_STALL, OPT_ON_LIMIT,
	OPT_CHANNELS, OPT_NO_VERIFY, OPT_JSON, OPT_QUIET, OPT_BANDWIDTH, OPT_ESTIMATOR, OPT_RTT_US, OPT_SEND_QUEUE,
	OPT_HELP, OPT_NUMA_NODE, OPT_MEMFD, OPT_LISTEN_UNIX, OPT_TO_UNIX,
	OPT_TIMEOUT, OPT_VERIFY_SOURCE, OPT_THEN_TO, OPT_STOP_DELAY, OPT_TLS_PSK_FILE,
	OPT_TLS_PSK_ID, OPT_TLS_CA, OPT_TLS_CERT, OPT_TLS_KEY, OPT_TLS_HOSTNAME,
	OPT_AUTH_KEY_FILE, OPT_RDMA_REG, OPT_CONTROL, OPT_MAX_FORCED, OPT_NO_POPULATE,
};

static const struct option long_opts[] = {
	{ "listen", required_argument, 0, OPT_LISTEN },
	{ "to", required_argument, 0, OPT_TO },
	{ "ram", required_argument, 0, OPT_RAM },
	{ "dirty-rate", required_argument, 0, OPT_DIRTY_RATE },
	{ "pattern", required_argument, 0, OPT_PATTERN },
	{ "threads", required_argument, 0, OPT_THREADS },
	{ "zero-pct", required_argument, 0, OPT_ZERO_PCT },
	{ "free-pct", required_argument, 0, OPT_FREE_PCT },
	{ "seed", required_argument, 0, OPT_SEED },
	{ "dirty-mode", required_argument, 0, OPT_DIRTY_MODE },
	{ "max-bandwidth", required_argument, 0, OPT_MAX_BW },
	{ "downtime-limit", required_argument, 0, OPT_DOWNTIME },
	{ "avail-switchover-bandwidth", required_argument, 0, OPT_AVAIL_BW },
	{ "auto-converge", no_argument, 0, OPT_AUTO_CONVERGE },
	{ "throttle-trigger-threshold", required_argument, 0, OPT_TRIGGER },
	{ "cpu-throttle-initial", required_argument, 0, OPT_T_INITIAL },
	{ "cpu-throttle-increment", required_argument, 0, OPT_T_INCREMENT },
	{ "max-cpu-throttle", required_argument, 0, OPT_T_MAX },
	{ "cpu-throttle-tailslow", no_argument, 0, OPT_TAILSLOW },
	{ "max-iterations", required_argument, 0, OPT_MAX_ITER },
	{ "max-time", required_argument, 0, OPT_MAX_TIME },
	{ "stall-iterations", required_argument, 0, OPT_STALL },
	{ "on-limit", required_argument, 0, OPT_ON_LIMIT },
	{ "channels", required_argument, 0, OPT_CHANNELS },
	{ "timeout", required_argument, 0, OPT_TIMEOUT },
	{ "verify-source-after-failure", no_argument, 0, OPT_VERIFY_SOURCE },
	{ "then-migrate-to", required_argument, 0, OPT_THEN_TO },
	{ "stop-delay", required_argument, 0, OPT_STOP_DELAY },
	{ "tls-psk-file", required_argument, 0, OPT_TLS_PSK_FILE },
	{ "tls-psk-identity", required_argument, 0, OPT_TLS_PSK_ID },
	{ "tls-ca", required_argument, 0, OPT_TLS_CA },
	{ "tls-cert", required_argument, 0, OPT_TLS_CERT },
	{ "tls-key", required_argument, 0, OPT_TLS_KEY },
	{ "tls-hostname", required_argument, 0, OPT_TLS_HOSTNAME },
	{ "auth-key-file", required_argument, 0, OPT_AUTH_KEY_FILE },
	{ "rdma-registration", required_argument, 0, OPT_RDMA_REG },
	{ "control", required_argument, 0, OPT_CONTROL },
	{ "max-forced-downtime", required_argument, 0, OPT_MAX_FORCED },
	{ "no-verify", no_argument, 0, OPT_NO_VERIFY },
	{ "no-populate", no_argument, 0, OPT_NO_POPULATE },
	{ "json", no_argument, 0, OPT_JSON },
	{ "quiet", no_argument, 0, OPT_QUIET },
	{ "bandwidth", required_argument, 0, OPT_BANDWIDTH },
	{ "estimator", required_argument, 0, OPT_ESTIMATOR },
	{ "rtt-us", required_argument, 0, OPT_RTT_US },
	{ "send-queue", required_argument, 0, OPT_SEND_QUEUE },
	{ "listen-unix", required_argument, 0, OPT_LISTEN_UNIX },
	{ "to-unix", required_argument, 0, OPT_TO_UNIX },
	{ "help", no_argument, 0, OPT_HELP },
	{ "numa-node", required_argument, 0, OPT_NUMA_NODE },
	{ "memfd", no_argument, 0, OPT_MEMFD },
	{ 0, 0, 0, 0 },
};

static int bad_value(const char *opt, const char *val, const char *what)
{
	fprintf(stderr, "precopy: --%s '%s': %s\n", opt, val, what);
	return -EINVAL;
}

static int parse_uint(const char *opt, const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v;

	if (pc_cli_parse_u64(s, &v) || v > max)
		return bad_value(opt, s, "expected a whole number in range");
	*out = v;
	return 0;
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
	int opt;
	uint64_t v;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		const char *a = optarg;
		const char *name = NULL;

		for (const struct option *o = long_opts; o->name; o++)
			if (o->val == opt)
				name = o->name;
		if (name && !strncmp(name, "tls-", 4) && !g_tls_flag)
			g_tls_flag = name;
		switch (opt) {
		case OPT_LISTEN: c->listen = a; break;
		case OPT_TO: c->to = a; break;
		case OPT_LISTEN_UNIX: c->listen_unix = a; break;
		case OPT_TO_UNIX: c->to_unix = a; break;
		case OPT_RAM:
			if (pc_cli_parse_size(a, &v) || v == 0 || v % PRECOPY_PAGE_SIZE)
				return bad_value(name, a, "expected a size in whole 4 KiB pages, e.g. 256M");
			c->ram = v;
			break;
		case OPT_DIRTY_RATE:
			if (!strcmp(a, "max")) {
				c->dirty_rate = -1;
				break;
			}
			if (pc_cli_parse_size(a, &v))
				return bad_value(name, a, "expected a rate such as 64M or 'max'");
			c->dirty_rate = (double)v;
			break;
		case OPT_PATTERN:
			if (!strcmp(a, "sequential") || !strcmp(a, "seq"))
				c->pattern = PC_GUEST_SEQUENTIAL;
			else if (!strcmp(a, "random"))
				c->pattern = PC_GUEST_RANDOM;
			else if (!strcmp(a, "hotset"))
				c->pattern = PC_GUEST_HOTSET;
			else
				return bad_value(name, a, "expected sequential, random or hotset");
			break;
		case OPT_THREADS:
			if (pc_cli_parse_u64(a, &v) || v == 0 || v > 64)
				return bad_value(name, a, "expected 1..64");
			c->threads = (unsigned)v;
			break;
		case OPT_ZERO_PCT:
			if (parse_uint(name, a, 100, &v))
				return -EINVAL;
			c->zero_pct = (unsigned)v;
			break;
		case OPT_FREE_PCT:
			if (parse_uint(name, a, 100, &v))
				return -EINVAL;
			c->free_pct = (unsigned)v;
			break;
		case OPT_SEED:
			if (parse_uint(name, a, UINT64_MAX, &c->seed))
				return -EINVAL;
			break;
		case OPT_DIRTY_MODE:
			if (!strcmp(a, "auto"))
				c->dirty_mode = PRECOPY_DIRTY_AUTO;
			else if (!strcmp(a, "uffd-wp"))
				c->dirty_mode = PRECOPY_DIRTY_UFFD_WP;
			else if (!strcmp(a, "soft-dirty"))
				c->dirty_mode = PRECOPY_DIRTY_SOFT_DIRTY;
			else
				return bad_value(name, a, "expected auto, uffd-wp or soft-dirty");
			break;
		case OPT_MAX_BW:
			if (pc_cli_parse_size(a, &c->params.max_bandwidth))
				return bad_value(name, a, "expected a rate such as 1G");
			break;
		case OPT_DOWNTIME:
			if (parse_uint(name, a, 2000000, &c->params.downtime_limit_ms))
				return -EINVAL;
			break;
		case OPT_AVAIL_BW:
			if (pc_cli_parse_size(a, &c->params.avail_switchover_bandwidth))
				return bad_value(name, a, "expected a rate such as 1G");
			break;
		case OPT_AUTO_CONVERGE: c->params.auto_converge = true; break;
		case OPT_TRIGGER:
			if (parse_uint(name, a, 100, &v))
				return -EINVAL;
			c->params.throttle_trigger_threshold = (unsigned)v;
			break;
		case OPT_T_INITIAL:
			if (parse_uint(name, a, 99, &v))
				return -EINVAL;
			c->params.cpu_throttle_initial = (unsigned)v;
			break;
		case OPT_T_INCREMENT:
			if (parse_uint(name, a, 99, &v))
				return -EINVAL;
			c->params.cpu_throttle_increment = (unsigned)v;
			break;
		case OPT_T_MAX:
			if (parse_uint(name, a, 99, &v))
				return -EINVAL;
			c->params.max_cpu_throttle = (unsigned)v;
			break;
		case OPT_TAILSLOW: c->params.cpu_throttle_tailslow = true; break;
		case OPT_MAX_ITER:
			if (parse_uint(name, a, UINT32_MAX, &v))
				return -EINVAL;
			c->params.max_iterations = (unsigned)v;
			break;
		case OPT_MAX_TIME:
			if (parse_uint(name, a, UINT32_MAX, &c->params.max_time_ms))
				return -EINVAL;
			break;
		case OPT_STALL:
			if (parse_uint(name, a, UINT32_MAX, &v))
				return -EINVAL;
			c->params.stall_iterations = (unsigned)v;
			break;
		case OPT_ON_LIMIT:
			if (!strcmp(a, "force"))
				c->params.on_limit = PRECOPY_ON_LIMIT_FORCE;
			else if (!strcmp(a, "abort"))
				c->params.on_limit = PRECOPY_ON_LIMIT_ABORT;
			else
				return bad_value(name, a, "expected force or abort");
			break;
		case OPT_CHANNELS:
			if (pc_cli_parse_u64(a, &v) || v == 0 || v > PRECOPY_MAX_CHANNELS)
				return bad_value(name, a, "expected 1..16");
			c->params.channels = (unsigned)v;
			break;
		case OPT_TIMEOUT:
			if (pc_cli_parse_u64(a, &v) || v < 100 || v > 3600000)
				return bad_value(name, a, "expected 100..3600000 (ms)");
			c->params.timeout_ms = (unsigned)v;
			break;
		case OPT_VERIFY_SOURCE: c->verify_source = true; break;
		case OPT_THEN_TO: c->then_to = a; break;
		case OPT_STOP_DELAY:
			if (parse_uint(name, a, 600000, &c->stop_delay_ms))
				return -EINVAL;
			break;
		case OPT_TLS_PSK_FILE: {
			int n = key_file_private(name, a) ? -EPERM
				: pc_cli_read_psk(a, c->tls_psk, sizeof(c->tls_psk));

			if (n == -EPERM)
				return -EINVAL;
			if (n < 0)
				return bad_value(name, a, n == -EINVAL
					? "expected a file of 32..1024 hex digits (16..512 bytes)"
					: strerror(-n));
			c->tls.psk = c->tls_psk;
			c->tls.psk_len = (size_t)n;
			if (!c->tls.psk_identity)
				c->tls.psk_identity = "precopy";
			c->have_tls = true;
			break;
		}
		case OPT_TLS_PSK_ID: c->tls.psk_identity = a; c->have_tls = true; break;
		case OPT_TLS_CA:
			if (readable(name, a))
				return -EINVAL;
			c->tls.ca_file = a;
			c->have_tls = true;
			break;
		case OPT_TLS_CERT:
			if (readable(name, a))
				return -EINVAL;
			c->tls.cert_file = a;
			c->have_tls = true;
			break;
		case OPT_TLS_KEY:
			if (key_file_private(name, a))
				return -EINVAL;
			c->tls.key_file = a;
			c->have_tls = true;
			break;
		case OPT_TLS_HOSTNAME: c->tls.hostname = a; c->have_tls = true; break;
		case OPT_AUTH_KEY_FILE: {
			int n = key_file_private(name, a) ? -EPERM
				: pc_cli_read_psk(a, c->auth_key, sizeof(c->auth_key));

			if (n == -EPERM)
				return -EINVAL;
			if (n < 0)
				return bad_value(name, a, n == -EINVAL
					? "expected a file of 32..2048 hex digits (16..1024 bytes)"
					: strerror(-n));
			c->auth_key_len = (size_t)n;
			c->have_auth_key = true;
			break;
		}
		case OPT_RDMA_REG:
			if (!strcmp(a, "on-demand"))
				c->registration = PRECOPY_REG_ON_DEMAND;
			else if (!strcmp(a, "pin-all"))
				c->registration = PRECOPY_REG_PIN_ALL;
			else
				return bad_value(name, a, "expected on-demand or pin-all");
			c->have_registration = true;
			break;
		case OPT_CONTROL: c->control = a; break;
		case OPT_MAX_FORCED:
			if (parse_uint(name, a, 2000000, &c->max_forced_downtime_ms))
				return -EINVAL;
			break;
		case OPT_NO_VERIFY: c->no_verify = true; break;
		case OPT_NO_POPULATE: c->no_populate = true; break;
		case OPT_NUMA_NODE:
			if (parse_uint(name, a, 1023, &v))
				return -EINVAL;
			c->numa_node = (int)v;
			break;
		case OPT_MEMFD: c->memfd = true; break;
		case OPT_JSON: c->json = true; break;
		case OPT_QUIET: c->quiet = true; break;
		case OPT_BANDWIDTH:
			if (pc_cli_parse_size(a, &v) || v == 0)
				return bad_value(name, a, "expected a rate such as 1G");
			c->bandwidth = (double)v;
			break;
		case OPT_ESTIMATOR:
			if (strcmp(a, "busy") && strcmp(a, "wall"))
				return bad_value(name, a, "expected busy or wall");
			c->estimator_wall = !strcmp(a, "wall");
			break;
		case OPT_RTT_US: {
			char *end;

			errno = 0;
			v = strtoull(a, &end, 10);
			if (errno || end == a || *end || v > 10000000 || a[0] == '-')
				return bad_value(name, a, "expected microseconds, 0..10000000");
			c->rtt_us = v;
			break;
		}
		case OPT_SEND_QUEUE:
			if (pc_cli_parse_size(a, &c->send_queue))
				return bad_value(name, a, "expected a size, e.g. 4M");
			break;
		case 'h':
		case OPT_HELP:
			usage(stdout);
			exit(0);
		default:
			fprintf(stderr, "precopy: see 'precopy help'\n");
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "precopy: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	{
		char why[128];

		if (precopy_params_check(&c->params, why, sizeof(why))) {
			fprintf(stderr, "precopy: %s\n", why);
			return -EINVAL;
		}
	}
	return 0;
}

/* What the transport of @uri can do; ~0 when the URI names no transport
 * built in (the command reports that itself). */
static uint32_t uri_caps(const char *uri)
{
	const struct pc_transport_ops *ops;
	const char *rest;

	if (!uri || pc_transport_split_uri(uri, &ops, &rest))
		return ~0u;
	return ops->caps;
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
	caps = uri_caps(uris[0]) | (uris[1] ? uri_caps(uris[1]) : 0);
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

/* Whether @uri's transport authenticates with the shared key (rdma:). */
static bool takes_key(const char *uri)
{
	return uri && (uri_caps(uri) & PC_TCAP_AUTH_KEY);
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

/* SPDX-License-Identifier: MIT */
/* cli.h - the precopy command's shared state and subcommands. */
#ifndef PC_CLI_H
#define PC_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "guest.h"
#include "precopy.h"

struct pc_cli {
	const char *listen, *to;
	const char *listen_unix, *to_unix; /* bridge */
	uint64_t ram;
	double dirty_rate;
	enum pc_guest_pattern pattern;
	unsigned threads, zero_pct, free_pct;
	uint64_t seed;
	enum precopy_dirty_mode dirty_mode;
	struct precopy_params params;
	bool no_verify, json, quiet, estimator_wall;
	bool no_populate; /* incoming: the "populate" parameter = 0 */
	uint64_t rtt_us; /* simulate: the path's round trip */
	uint64_t send_queue; /* simulate: the transport's send queue, bytes */
	uint64_t page_cost_ns;      /* simulate: sender CPU per page sent */
	uint64_t zero_page_cost_ns; /* simulate: and per zero page, on top */
	double bandwidth;
	int ready_fd; /* demo: where the destination writes its URI, or -1 */
	int numa_node; /* incoming: bind the RAM to this node, or -1 */
	bool memfd;    /* migrate: the guest's RAM is a memfd (handoff over shm) */
	/* migrate: fault-test aids */
	bool verify_source;     /* --verify-source-after-failure */
	const char *then_to;    /* --then-migrate-to URI */
	uint64_t stop_delay_ms; /* --stop-delay MS */
	const char *control;    /* --control PATH: the control socket */
	uint64_t max_forced_downtime_ms; /* --max-forced-downtime MS */
	/* tls: settings (--tls-*); have_tls once any was given */
	struct precopy_tls tls;
	uint8_t tls_psk[512];
	bool have_tls;
	/* rdma: (--auth-key-file, --rdma-registration) */
	uint8_t auth_key[PRECOPY_AUTH_KEY_MAX];
	size_t auth_key_len;
	bool have_auth_key;
	enum precopy_registration registration;
	bool have_registration;
};

/* What a migration's transport registered with its device (RDMA). */
struct pc_cli_reg {
	bool valid;        /* the transport registers memory */
	bool source;       /* and this end is the source (mode applies) */
	bool pin_all;
	double ms;
	uint64_t bytes, count;
};

void pc_cli_defaults(struct pc_cli *c);
/** Read a PSK file: hex digits (whitespace ignored), 16..512 bytes.
 *  Return: the key length, or -EINVAL / -errno. */
int pc_cli_read_psk(const char *path, uint8_t *key, size_t cap);
/** Apply c's TLS settings to @s (if any were given); prints the error.
 *  Return: 0 or the exit status 2. */
int pc_cli_apply_tls(struct pc_cli *c, struct precopy_session *s, const char *cmd);
/** Apply c's RDMA settings to @s: the authentication key (either end)
 *  and, at the source, the registration. Return: 0 or the exit status 2. */
int pc_cli_apply_rdma(struct pc_cli *c, struct precopy_session *s, const char *cmd);
/** Sizes and rates: digits with an optional K/M/G/T (x1024) suffix, an
 *  optional "iB"/"B" and "/s". Return: 0 or -EINVAL. */
int pc_cli_parse_size(const char *s, uint64_t *out);
int pc_cli_parse_u64(const char *s, uint64_t *out);
/** What the transport of @uri can do (PC_TCAP_*); ~0 when the URI names
 *  no transport built in (the command reports that itself). */
uint32_t pc_cli_uri_caps(const char *uri);
/** Format @bytes as "1.5 GiB" into @buf. */
const char *pc_cli_fmt_bytes(double bytes, char *buf, size_t len);
/** Descriptors open in this process (without pipes when @skip_pipes:
 *  sanitizers' symbolizers open some), or -1. */
long pc_cli_count_fds(bool skip_pipes);
/** A memory figure of this process in KiB: the line @field ("VmRSS",
 *  resident; "VmPin", pinned) of /proc/self/status, or -1. */
long pc_cli_status_kib(const char *field);

/* Subcommands: each returns the process exit status (0, 1, or 2). */
int pc_cli_incoming(struct pc_cli *c, struct precopy_session **current);
int pc_cli_migrate(struct pc_cli *c, struct precopy_session **current);
int pc_cli_demo(struct pc_cli *c, struct precopy_session **current);
int pc_cli_simulate(struct pc_cli *c);
int pc_cli_bridge(struct pc_cli *c);
/** precopy plot EVENTS OUT: @argc/@argv are the arguments after "plot". */
int pc_cli_plot(int argc, char **argv);

/* The control socket of migrate (and demo's source): --control PATH. */
struct pc_cli_control;
/** Serve JSON requests on the unix socket @path (created mode 0600; a
 *  stale socket is replaced, a live one or another file refused) in a
 *  thread. Prints why it cannot. Return: 0 or -errno. */
int pc_cli_control_start(const char *path, const char *role, struct pc_cli_control **out);
/** The session requests act on from now on (NULL: none); waits for a
 *  request in progress. @ct may be NULL (no control socket). */
void pc_cli_control_attach(struct pc_cli_control *ct, struct precopy_session *s);
/** Stop serving, remove the socket, free *@ct and set it to NULL. */
void pc_cli_control_stop(struct pc_cli_control **ct);
/** Parse @text as the command line spells a value of @param (rates with
 *  suffixes, on/off, force/abort, ms); why not into @why. Return: 0 or
 *  -EINVAL. */
int pc_cli_param_value(int param, const char *text, uint64_t *out, char *why, size_t whylen);
/** precopy ctl PATH query | get NAME | set NAME VALUE | cancel; @argv starts at
 *  PATH. Return: the exit status. */
int pc_cli_ctl(int argc, char **argv);

/** pc_cli_bw_source_name() - "tcp-info", "send-time"... for the stats. */
const char *pc_cli_bw_source_name(enum precopy_bw_source s);

/** Print stats as one JSON object line to @f, with "event": @event, and
 *  (if @reg is not NULL) the registration figures. */
void pc_cli_json_stats(FILE *f, const char *event, const char *role,
		       const struct precopy_stats *st, const struct pc_cli_reg *reg);

#endif /* PC_CLI_H */

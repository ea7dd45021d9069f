/* SPDX-License-Identifier: MIT */
/*
 * util.c - parsing, printing and resource counts shared by the CLI, the
 * tests and the benchmarks.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "transport.h"

long pc_cli_count_fds(bool skip_pipes)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	long n = 0;

	if (!dir)
		return -1;
	while ((e = readdir(dir))) {
		char path[300], target[64] = "";

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		if (skip_pipes && readlink(path, target, sizeof(target) - 1) > 0 &&
		    !strncmp(target, "pipe:", 5))
			continue;
		n++;
	}
	closedir(dir);
	return n - 1; /* the one opendir() holds */
}

long pc_cli_status_kib(const char *field)
{
	FILE *f = fopen("/proc/self/status", "r");
	size_t n = strlen(field);
	char line[128];
	long kib = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, n) && line[n] == ':' &&
		    sscanf(line + n + 1, "%ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

int pc_cli_parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-' || *s == '+')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

int pc_cli_parse_size(const char *s, uint64_t *out)
{
	char *end;
	double v;
	uint64_t mul = 1;

	if (!s || !*s || *s == '-' || *s == '+')
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || !isfinite(v) || v < 0)
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': mul = 1ull << 10; end++; break;
	case 'm': case 'M': mul = 1ull << 20; end++; break;
	case 'g': case 'G': mul = 1ull << 30; end++; break;
	case 't': case 'T': mul = 1ull << 40; end++; break;
	default: break;
	}
	if (mul > 1 && *end == 'i')
		end++;
	if (*end == 'B' || *end == 'b')
		end++;
	if (!strcmp(end, "/s"))
		end += 2;
	if (*end)
		return -EINVAL;
	if (v * (double)mul >= 18446744073709551615.0)
		return -EINVAL;
	*out = (uint64_t)(v * (double)mul);
	return 0;
}

const char *pc_cli_fmt_bytes(double b, char *buf, size_t len)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int u = 0;

	while (b >= 1024 && u < 4) {
		b /= 1024;
		u++;
	}
	snprintf(buf, len, u ? "%.2f %s" : "%.0f %s", b, unit[u]);
	return buf;
}

const char *pc_cli_bw_source_name(enum precopy_bw_source s)
{
	switch (s) {
	case PRECOPY_BW_SOURCE_NONE: return "none";
	case PRECOPY_BW_SOURCE_SEND_TIME: return "send-time";
	case PRECOPY_BW_SOURCE_TCP_INFO: return "tcp-info";
	case PRECOPY_BW_SOURCE_COMPLETIONS: return "rdma-completions";
	case PRECOPY_BW_SOURCE_COPY: return "shm-copy";
	case PRECOPY_BW_SOURCE_AVAIL: return "avail-switchover-bandwidth";
	}
	return "unknown";
}

void pc_cli_json_stats(FILE *f, const char *event, const char *role,
		       const struct precopy_stats *st, const struct pc_cli_reg *reg)
{
	fprintf(f,
		"{\"event\":\"%s\",\"role\":\"%s\",\"status\":\"%s\",\"total-time\":%" PRIu64
		",\"setup-time\":%" PRIu64 ",\"downtime\":%" PRIu64
		",\"expected-downtime\":%" PRIu64 ",\"transferred\":%" PRIu64
		",\"remaining\":%" PRIu64 ",\"total\":%" PRIu64 ",\"duplicate\":%" PRIu64
		",\"normal\":%" PRIu64 ",\"normal-bytes\":%" PRIu64 ",\"free-skipped\":%" PRIu64
		",\"dirty-pages-rate\":%" PRIu64 ",\"mbps\":%.1f,\"bandwidth-busy\":%" PRIu64
		",\"bandwidth-wall\":%" PRIu64 ",\"bandwidth-link\":%" PRIu64
		",\"bandwidth-sender\":%" PRIu64 ",\"bandwidth-switchover\":%" PRIu64
		",\"bandwidth-source\":\"%s\",\"queued-bytes\":%" PRIu64
		",\"device-state-bytes\":%" PRIu64 ",\"dirty-sync-count\":%" PRIu64
		",\"cpu-throttle-percentage\":%u,\"iteration\":%u,\"forced-switchover\":%s"
		",\"dirty-mode\":\"%s\"",
		event, role, precopy_status_name(st->status), st->total_time, st->setup_time,
		st->downtime, st->expected_downtime, st->transferred, st->remaining, st->total,
		st->duplicate, st->normal, st->normal_bytes, st->free_skipped,
		st->dirty_pages_rate, st->mbps, st->bandwidth_busy, st->bandwidth_wall,
		st->bandwidth_link, st->bandwidth_sender, st->bandwidth_switchover,
		pc_cli_bw_source_name(st->bandwidth_source), st->queued_bytes,
		st->device_state_bytes,
		st->dirty_sync_count, st->cpu_throttle_percentage, st->iteration,
		st->forced_switchover ? "true" : "false", precopy_dirty_mode_name(st->dirty_mode));
	/* a forced switchover: what it was expected to cost, what it took,
	 * whether max-forced-downtime aborted it (-1: not predictable) */
	if (st->forced_switchover || st->forced_aborted)
		fprintf(f, ",\"forced-expected-downtime\":%" PRId64 ",\"forced-downtime\":%" PRIu64
			",\"forced-aborted\":%s",
			st->forced_expected_downtime == UINT64_MAX ? (int64_t)-1
								   : (int64_t)st->forced_expected_downtime,
			st->forced_downtime, st->forced_aborted ? "true" : "false");
	/* postcopy: the pages missing at the handover, how they came */
	if (st->postcopy)
		fprintf(f, ",\"postcopy\":true,\"postcopy-time\":%" PRIu64
			",\"postcopy-requests\":%" PRIu64 ",\"postcopy-pages-requested\":%" PRIu64
			",\"postcopy-pages-pushed\":%" PRIu64 ",\"postcopy-latency-median-us\":%" PRIu64
			",\"postcopy-latency-p99-us\":%" PRIu64,
			st->postcopy_time, st->postcopy_requests, st->postcopy_pages_requested,
			st->postcopy_pages_pushed, st->postcopy_latency_median_us,
			st->postcopy_latency_p99_us);
	/* time in ibv_reg_mr and what it registered; 0 where nothing is */
	if (reg) {
		fprintf(f, ",\"registration-ms\":%.1f,\"registration-bytes\":%" PRIu64
			",\"registration-mrs\":%" PRIu64, reg->ms, reg->bytes, reg->count);
		if (reg->valid && reg->source)
			fprintf(f, ",\"registration-mode\":\"%s\"",
				reg->pin_all ? "pin-all" : "on-demand");
	}
	fprintf(f, ",\"populate-ms\":%" PRIu64 ",\"populated-bytes\":%" PRIu64
		",\"page-faults\":%" PRIu64 ",\"send-cpu-ms\":%.1f,\"scan-cpu-ms\":%.1f",
		st->populate_ms, st->populated_bytes, st->page_faults, st->send_cpu_ns / 1e6,
		st->scan_cpu_ns / 1e6);
	fputs(",\"error\":\"", f);
	for (const char *p = st->error; *p; p++) {
		if (*p == '"' || *p == '\\')
			fputc('\\', f);
		fputc((unsigned char)*p < 0x20 ? ' ' : *p, f);
	}
	fputs("\"}\n", f);
	fflush(f);
}


int pc_cli_read_psk(const char *path, uint8_t *key, size_t cap)
{
	FILE *f = fopen(path, "r");
	size_t n = 0;
	int hi = -1, ch;

	if (!f)
		return -errno;
	while ((ch = fgetc(f)) != EOF) {
		int v;

		if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t')
			continue;
		if (ch >= '0' && ch <= '9')
			v = ch - '0';
		else if (ch >= 'a' && ch <= 'f')
			v = ch - 'a' + 10;
		else if (ch >= 'A' && ch <= 'F')
			v = ch - 'A' + 10;
		else
			break;
		if (hi < 0) {
			hi = v;
			continue;
		}
		if (n == cap) {
			ch = 'x';
			break;
		}
		key[n++] = (uint8_t)(hi << 4 | v);
		hi = -1;
	}
	fclose(f);
	if (ch != EOF || hi >= 0 || n < 16)
		return -EINVAL;
	return (int)n;
}

int pc_cli_apply_tls(struct pc_cli *c, struct precopy_session *s, const char *cmd)
{
	int err;

	if (!c->have_tls)
		return 0;
	err = precopy_set_tls(s, &c->tls);
	if (!err)
		return 0;
	if (err == -EPROTONOSUPPORT)
		fprintf(stderr, "precopy %s: built without TLS (GnuTLS)\n", cmd);
	else
		fprintf(stderr, "precopy %s: incomplete TLS settings: give --tls-psk-file with "
				"--tls-psk-identity, or --tls-ca (source) / --tls-cert with "
				"--tls-key (destination)\n", cmd);
	return 2;
}

int pc_cli_apply_rdma(struct pc_cli *c, struct precopy_session *s, const char *cmd)
{
	int err = 0;

	if (c->have_auth_key)
		err = precopy_set_auth_key(s, c->auth_key, c->auth_key_len);
	if (!err && c->have_registration)
		err = precopy_set_registration(s, c->registration);
	if (!err)
		return 0;
	fprintf(stderr, "precopy %s: cannot apply the RDMA settings: %s\n", cmd, strerror(-err));
	return 2;
}

uint32_t pc_cli_uri_caps(const char *uri)
{
	const struct pc_transport_ops *ops;
	const char *rest;

	if (!uri || pc_transport_split_uri(uri, &ops, &rest))
		return ~0u;
	return ops->caps;
}

/* SPDX-License-Identifier: MIT */
/*
 * control.c - the control socket of `precopy migrate --control PATH` and
 * its client, `precopy ctl PATH query | get NAME | set NAME VALUE | cancel`.
 *
 * One JSON object per line each way (docs/CONTROL.md). The server is one
 * thread: it takes one connection at a time and answers its requests in
 * order; a client that says nothing for a few seconds is dropped, so a
 * stuck client cannot hold the others off for long.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli.h"
#include "transport.h"

/** Longest request or answer line. */
#define LINE_MAX_BYTES 4096
/** A connection that sends nothing this long is closed. */
#define IDLE_MS 5000

struct pc_cli_control {
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int lfd;
	int wake[2]; /* a byte here stops the thread */
	pthread_t thread;
	pthread_mutex_t lock; /* session, role; held while a request runs */
	struct precopy_session *session;
	const char *role;
};

/* --- a JSON object of strings, numbers and booleans -------------------- */

struct kv {
	char key[32];
	char val[1024];
	bool is_string;
};

static const char *skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
		p++;
	return p;
}

/* A JSON string at @p into @out (escapes \" \\ \/ only); the end or NULL. */
static const char *get_string(const char *p, char *out, size_t cap)
{
	size_t n = 0;

	if (*p++ != '"')
		return NULL;
	for (; *p && *p != '"'; p++) {
		if (*p == '\\') {
			p++;
			if (*p != '"' && *p != '\\' && *p != '/')
				return NULL;
		} else if ((unsigned char)*p < 0x20) {
			return NULL;
		}
		if (n + 1 >= cap)
			return NULL;
		out[n++] = *p;
	}
	if (*p != '"')
		return NULL;
	out[n] = '\0';
	return p + 1;
}

/* Parse a flat object into @kv (at most @cap pairs). Return: the count, or -1. */
static int parse_object(const char *p, struct kv *kv, int cap)
{
	int n = 0;

	p = skip_ws(p);
	if (*p++ != '{')
		return -1;
	p = skip_ws(p);
	if (*p == '}')
		return *skip_ws(p + 1) ? -1 : 0;
	for (;;) {
		if (n == cap)
			return -1;
		p = get_string(skip_ws(p), kv[n].key, sizeof(kv[n].key));
		if (!p)
			return -1;
		p = skip_ws(p);
		if (*p++ != ':')
			return -1;
		p = skip_ws(p);
		if (*p == '"') {
			p = get_string(p, kv[n].val, sizeof(kv[n].val));
			if (!p)
				return -1;
			kv[n].is_string = true;
		} else {
			size_t k = 0;

			while ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || *p == '.' ||
			       *p == '-' || *p == '+' || *p == 'E') {
				if (k + 1 >= sizeof(kv[n].val))
					return -1;
				kv[n].val[k++] = *p++;
			}
			if (!k)
				return -1;
			kv[n].val[k] = '\0';
			kv[n].is_string = false;
		}
		n++;
		p = skip_ws(p);
		if (*p == '}')
			return *skip_ws(p + 1) ? -1 : n;
		if (*p++ != ',')
			return -1;
	}
}

static const struct kv *find_kv(const struct kv *kv, int n, const char *key)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(kv[i].key, key))
			return &kv[i];
	return NULL;
}

/* @s as a JSON string (quotes added) into @out. */
static void json_str(char *out, size_t cap, const char *s)
{
	size_t n = 0;

	if (cap < 3)
		return;
	out[n++] = '"';
	for (; *s && n + 3 < cap; s++) {
		if (*s == '"' || *s == '\\')
			out[n++] = '\\';
		out[n++] = (unsigned char)*s < 0x20 ? ' ' : *s;
	}
	out[n++] = '"';
	out[n] = '\0';
}

/* --- values of parameters, as the command line spells them ------------- */

static bool is_rate(enum precopy_param p)
{
	return p == PRECOPY_PARAM_MAX_BANDWIDTH || p == PRECOPY_PARAM_AVAIL_SWITCHOVER_BANDWIDTH;
}

static bool is_bool(enum precopy_param p)
{
	return p == PRECOPY_PARAM_AUTO_CONVERGE || p == PRECOPY_PARAM_CPU_THROTTLE_TAILSLOW;
}

int pc_cli_param_value(int param, const char *text, uint64_t *out, char *why, size_t whylen)
{
	const char *name = precopy_param_name((enum precopy_param)param);

	if (is_rate((enum precopy_param)param)) {
		if (pc_cli_parse_size(text, out) == 0)
			return 0;
		snprintf(why, whylen, "%s: '%s' is not a rate (bytes/s, e.g. 24M or 1G)", name,
			 text);
		return -EINVAL;
	}
	if (is_bool((enum precopy_param)param)) {
		if (!strcmp(text, "on") || !strcmp(text, "true") || !strcmp(text, "1")) {
			*out = 1;
			return 0;
		}
		if (!strcmp(text, "off") || !strcmp(text, "false") || !strcmp(text, "0")) {
			*out = 0;
			return 0;
		}
		snprintf(why, whylen, "%s: '%s' is not on or off", name, text);
		return -EINVAL;
	}
	if (param == PRECOPY_PARAM_ON_LIMIT) {
		if (!strcmp(text, "force")) {
			*out = PRECOPY_ON_LIMIT_FORCE;
			return 0;
		}
		if (!strcmp(text, "abort")) {
			*out = PRECOPY_ON_LIMIT_ABORT;
			return 0;
		}
		if (!strcmp(text, "postcopy")) {
			*out = PRECOPY_ON_LIMIT_POSTCOPY;
			return 0;
		}
		snprintf(why, whylen, "%s: '%s' is not force, abort or postcopy", name, text);
		return -EINVAL;
	}
	if (pc_cli_parse_u64(text, out) == 0)
		return 0;
	snprintf(why, whylen, "%s: '%s' is not a whole number%s", name, text,
		 param == PRECOPY_PARAM_DOWNTIME_LIMIT || param == PRECOPY_PARAM_MAX_TIME ||
				 param == PRECOPY_PARAM_MAX_FORCED_DOWNTIME ||
				 param == PRECOPY_PARAM_TIMEOUT
			 ? " of ms"
			 : "");
	return -EINVAL;
}

/* The value of @param as the command line would spell it. */
static void format_value(int param, uint64_t v, char *out, size_t cap)
{
	if (is_bool((enum precopy_param)param))
		snprintf(out, cap, "%s", v ? "true" : "false");
	else if (param == PRECOPY_PARAM_ON_LIMIT)
		snprintf(out, cap, "\"%s\"", v == PRECOPY_ON_LIMIT_ABORT	 ? "abort"
					     : v == PRECOPY_ON_LIMIT_POSTCOPY ? "postcopy"
									    : "force");
	else
		snprintf(out, cap, "%" PRIu64, v);
}

/* --- the server -------------------------------------------------------- */

static void answer_error(char *out, size_t cap, const char *why)
{
	char q[1024];

	json_str(q, sizeof(q), why);
	snprintf(out, cap, "{\"ok\":false,\"error\":%s}", q);
}

static void do_query(struct pc_cli_control *ct, char *out, size_t cap)
{
	struct precopy_stats st;
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	if (precopy_query(ct->session, &st)) {
		answer_error(out, cap, "cannot read the statistics");
		return;
	}
	f = open_memstream(&buf, &len);
	if (!f) {
		answer_error(out, cap, "out of memory");
		return;
	}
	pc_cli_json_stats(f, "query", ct->role, &st, NULL);
	fclose(f);
	if (len > 1 && buf[0] == '{') {
		buf[strcspn(buf, "\n")] = '\0';
		snprintf(out, cap, "{\"ok\":true,%s", buf + 1);
	} else {
		answer_error(out, cap, "cannot format the statistics");
	}
	free(buf);
}

static void do_set(struct pc_cli_control *ct, const struct kv *name, const struct kv *value,
		   char *out, size_t cap)
{
	char why[640] = "", q[80], v[64];
	uint64_t val, now;
	int p, err;

	if (!name || !value || !name->is_string) {
		answer_error(out, cap, "set needs \"name\" (a string) and \"value\"");
		return;
	}
	p = precopy_param_from_name(name->val);
	if (p < 0) {
		snprintf(why, sizeof(why),
			 "unknown parameter '%.64s' (max-bandwidth, downtime-limit, "
			 "avail-switchover-bandwidth, auto-converge, throttle-trigger-threshold, "
			 "cpu-throttle-initial, cpu-throttle-increment, max-cpu-throttle, "
			 "cpu-throttle-tailslow, max-iterations, max-time, stall-iterations, "
			 "on-limit, max-forced-downtime)", name->val);
		answer_error(out, cap, why);
		return;
	}
	if (pc_cli_param_value(p, value->val, &val, why, sizeof(why))) {
		answer_error(out, cap, why);
		return;
	}
	err = precopy_param_check(ct->session, (enum precopy_param)p, val, why, sizeof(why));
	if (!err)
		err = precopy_set_param(ct->session, (enum precopy_param)p, val);
	if (err) {
		if (!why[0])
			snprintf(why, sizeof(why), "%.64s: %s", name->val, strerror(-err));
		answer_error(out, cap, why);
		return;
	}
	precopy_get_param(ct->session, (enum precopy_param)p, &now);
	json_str(q, sizeof(q), name->val);
	format_value(p, now, v, sizeof(v));
	snprintf(out, cap, "{\"ok\":true,\"name\":%s,\"value\":%s}", q, v);
}

static void do_get(struct pc_cli_control *ct, const struct kv *name, char *out, size_t cap)
{
	char why[400], q[80], v[64];
	uint64_t now;
	int p;

	if (!name || !name->is_string) {
		answer_error(out, cap, "get needs \"name\" (a string)");
		return;
	}
	p = precopy_param_from_name(name->val);
	if (p < 0 || precopy_get_param(ct->session, (enum precopy_param)p, &now)) {
		snprintf(why, sizeof(why), "unknown parameter '%.64s'", name->val);
		answer_error(out, cap, why);
		return;
	}
	json_str(q, sizeof(q), name->val);
	format_value(p, now, v, sizeof(v));
	snprintf(out, cap, "{\"ok\":true,\"name\":%s,\"value\":%s}", q, v);
}

static void do_cancel(struct pc_cli_control *ct, char *out, size_t cap)
{
	int err = precopy_cancel(ct->session);
	struct precopy_stats st;

	if (!err)
		snprintf(out, cap, "{\"ok\":true}");
	else if (err == -EALREADY)
		answer_error(out, cap, "the migration has already ended");
	else if (err == -EBUSY && !precopy_query(ct->session, &st) && st.postcopy)
		answer_error(out, cap, "too late: in postcopy the guest runs at the destination "
				       "while its missing pages are sent; it cannot be cancelled");
	else if (err == -EBUSY)
		answer_error(out, cap, "too late: the guest has been handed over to the destination");
	else
		answer_error(out, cap, strerror(-err));
}

/* One request line into one answer line (without its newline). */
static void handle_line(struct pc_cli_control *ct, const char *line, char *out, size_t cap)
{
	struct kv kv[8];
	int n = parse_object(line, kv, 8);
	const struct kv *cmd;

	if (n < 0) {
		answer_error(out, cap, "malformed request: expected one JSON object of strings, "
				       "numbers and booleans on one line");
		return;
	}
	cmd = find_kv(kv, n, "cmd");
	if (!cmd || !cmd->is_string) {
		answer_error(out, cap, "malformed request: no \"cmd\"");
		return;
	}
	pthread_mutex_lock(&ct->lock);
	if (!strcmp(cmd->val, "query") || !strcmp(cmd->val, "set") ||
	    !strcmp(cmd->val, "get") || !strcmp(cmd->val, "cancel")) {
		if (!ct->session)
			answer_error(out, cap, "no migration is running");
		else if (!strcmp(cmd->val, "query"))
			do_query(ct, out, cap);
		else if (!strcmp(cmd->val, "set"))
			do_set(ct, find_kv(kv, n, "name"), find_kv(kv, n, "value"), out, cap);
		else if (!strcmp(cmd->val, "get"))
			do_get(ct, find_kv(kv, n, "name"), out, cap);
		else
			do_cancel(ct, out, cap);
	} else {
		char why[400];

		snprintf(why, sizeof(why), "unknown cmd '%.64s' (query, get, set, cancel)", cmd->val);
		answer_error(out, cap, why);
	}
	pthread_mutex_unlock(&ct->lock);
}

/* Serve one client until it closes, goes idle or we are stopped. */
static void serve(struct pc_cli_control *ct, int fd)
{
	char in[LINE_MAX_BYTES + 1];
	char out[LINE_MAX_BYTES + 2];
	size_t have = 0;

	for (;;) {
		struct pollfd pf[2] = { { fd, POLLIN, 0 }, { ct->wake[0], POLLIN, 0 } };
		char *nl;
		ssize_t r;

		if (poll(pf, 2, IDLE_MS) <= 0 || pf[1].revents)
			return;
		r = recv(fd, in + have, LINE_MAX_BYTES - have, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return;
		have += (size_t)r;
		in[have] = '\0';
		while ((nl = memchr(in, '\n', have))) {
			size_t used = (size_t)(nl - in) + 1;

			*nl = '\0';
			handle_line(ct, in, out, sizeof(out) - 1);
			strcat(out, "\n");
			if (pc_fd_write_all(fd, out, strlen(out)))
				return;
			memmove(in, in + used, have - used);
			have -= used;
			in[have] = '\0';
		}
		if (have == LINE_MAX_BYTES) {
			answer_error(out, sizeof(out) - 1, "request line too long");
			strcat(out, "\n");
			pc_fd_write_all(fd, out, strlen(out));
			return;
		}
	}
}

static void *control_main(void *arg)
{
	struct pc_cli_control *ct = arg;

	for (;;) {
		struct pollfd pf[2] = { { ct->lfd, POLLIN, 0 }, { ct->wake[0], POLLIN, 0 } };
		int fd;

		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return NULL;
		}
		if (pf[1].revents)
			return NULL;
		fd = accept4(ct->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve(ct, fd);
		close(fd);
	}
}

/* Whether something listens on the unix socket @path. */
static bool socket_alive(const struct sockaddr_un *a)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool alive;

	if (fd < 0)
		return true; /* cannot tell: do not remove it */
	alive = connect(fd, (const struct sockaddr *)a, sizeof(*a)) == 0 || errno != ECONNREFUSED;
	close(fd);
	return alive;
}

int pc_cli_control_start(const char *path, const char *role, struct pc_cli_control **out)
{
	struct pc_cli_control *ct;
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct stat sb;
	mode_t old;
	int err;

	*out = NULL;
	if (!path || !*path || strlen(path) >= sizeof(a.sun_path)) {
		fprintf(stderr, "precopy: --control '%s': expected a unix socket path of 1..%zu "
				"bytes\n", path ? path : "", sizeof(a.sun_path) - 1);
		return -EINVAL;
	}
	strcpy(a.sun_path, path);
	if (lstat(path, &sb) == 0) {
		if (!S_ISSOCK(sb.st_mode)) {
			fprintf(stderr, "precopy: --control '%s': exists and is not a socket\n",
				path);
			return -EEXIST;
		}
		if (socket_alive(&a)) {
			fprintf(stderr, "precopy: --control '%s': another process serves it\n",
				path);
			return -EADDRINUSE;
		}
		unlink(path); /* stale */
	}
	ct = calloc(1, sizeof(*ct));
	if (!ct)
		return -ENOMEM;
	strcpy(ct->path, path);
	ct->role = role;
	ct->wake[0] = ct->wake[1] = -1;
	pthread_mutex_init(&ct->lock, NULL);
	ct->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ct->lfd < 0 || pipe2(ct->wake, O_CLOEXEC)) {
		err = -errno;
		goto fail;
	}
	/* only this user (and root) may steer the migration */
	old = umask(0177);
	err = bind(ct->lfd, (struct sockaddr *)&a, sizeof(a)) ? -errno : 0;
	umask(old);
	if (!err && listen(ct->lfd, 8))
		err = -errno;
	if (err) {
		fprintf(stderr, "precopy: --control '%s': %s\n", path, strerror(-err));
		goto fail_bound;
	}
	if (pthread_create(&ct->thread, NULL, control_main, ct)) {
		err = -EAGAIN;
		goto fail_bound;
	}
	*out = ct;
	return 0;

fail_bound:
	unlink(path);
fail:
	if (ct->lfd >= 0)
		close(ct->lfd);
	if (ct->wake[0] >= 0) {
		close(ct->wake[0]);
		close(ct->wake[1]);
	}
	pthread_mutex_destroy(&ct->lock);
	free(ct);
	return err;
}

void pc_cli_control_attach(struct pc_cli_control *ct, struct precopy_session *s)
{
	if (!ct)
		return;
	pthread_mutex_lock(&ct->lock); /* waits for a request in progress */
	ct->session = s;
	pthread_mutex_unlock(&ct->lock);
}

void pc_cli_control_stop(struct pc_cli_control **ctp)
{
	struct pc_cli_control *ct = *ctp;

	if (!ct)
		return;
	*ctp = NULL;
	if (write(ct->wake[1], "x", 1) != 1)
		perror("precopy: stopping the control socket");
	pthread_join(ct->thread, NULL);
	close(ct->lfd);
	unlink(ct->path);
	close(ct->wake[0]);
	close(ct->wake[1]);
	pthread_mutex_destroy(&ct->lock);
	free(ct);
}

/* --- the client: precopy ctl ------------------------------------------- */

static int ctl_usage(void)
{
	fprintf(stderr, "usage: precopy ctl PATH query\n"
			"       precopy ctl PATH get NAME\n"
			"       precopy ctl PATH set NAME VALUE\n"
			"       precopy ctl PATH cancel\n"
			"PATH: the socket of 'precopy migrate --control PATH'\n");
	return 2;
}

int pc_cli_ctl(int argc, char **argv)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char req[LINE_MAX_BYTES], ans[LINE_MAX_BYTES + 1], n[80], v[300];
	size_t have = 0;
	int fd, rc, err;

	if (argc < 2)
		return ctl_usage();
	if (!strcmp(argv[1], "query") && argc == 2) {
		snprintf(req, sizeof(req), "{\"cmd\":\"query\"}\n");
	} else if (!strcmp(argv[1], "cancel") && argc == 2) {
		snprintf(req, sizeof(req), "{\"cmd\":\"cancel\"}\n");
	} else if (!strcmp(argv[1], "get") && argc == 3) {
		json_str(n, sizeof(n), argv[2]);
		snprintf(req, sizeof(req), "{\"cmd\":\"get\",\"name\":%s}\n", n);
	} else if (!strcmp(argv[1], "set") && argc == 4) {
		json_str(n, sizeof(n), argv[2]);
		json_str(v, sizeof(v), argv[3]);
		snprintf(req, sizeof(req), "{\"cmd\":\"set\",\"name\":%s,\"value\":%s}\n", n, v);
	} else {
		return ctl_usage();
	}
	if (strlen(argv[0]) >= sizeof(a.sun_path)) {
		fprintf(stderr, "precopy ctl: '%s': path too long for a unix socket\n", argv[0]);
		return 2;
	}
	strcpy(a.sun_path, argv[0]);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		fprintf(stderr, "precopy ctl: cannot connect to '%s': %s\n", argv[0],
			strerror(errno));
		if (fd >= 0)
			close(fd);
		return 1;
	}
	err = pc_fd_write_all(fd, req, strlen(req));
	if (err) {
		fprintf(stderr, "precopy ctl: '%s': %s\n", argv[0], strerror(-err));
		close(fd);
		return 1;
	}
	while (have < sizeof(ans) - 1 && !memchr(ans, '\n', have)) {
		ssize_t r = recv(fd, ans + have, sizeof(ans) - 1 - have, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		have += (size_t)r;
	}
	close(fd);
	ans[have] = '\0';
	if (!memchr(ans, '\n', have)) {
		fprintf(stderr, "precopy ctl: '%s': no answer\n", argv[0]);
		return 1;
	}
	rc = strncmp(ans, "{\"ok\":true", 10) ? 1 : 0;
	fputs(ans, stdout);
	if (rc) {
		struct kv kv[4];
		char line[LINE_MAX_BYTES + 1];
		const struct kv *e = NULL;
		int nkv;

		strcpy(line, ans);
		line[strcspn(line, "\n")] = '\0';
		nkv = parse_object(line, kv, 4);
		if (nkv > 0)
			e = find_kv(kv, nkv, "error");
		fprintf(stderr, "precopy ctl: %s\n", e ? e->val : "refused");
	}
	return rc;
}

/* SPDX-License-Identifier: MIT */
/* harness.h - run both ends of a migration in one process for tests. */
#ifndef PC_HARNESS_H
#define PC_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "guest.h"
#include "precopy.h"

struct h_dest {
	struct precopy_session *s;
	void *ram;
	size_t len;
	int fd; /* memfd behind ram, or -1 */
	char uri[128];
	pthread_t thread;
	int err;
	struct pc_guest_desc desc;
	bool have_desc;
	unsigned resumed;
	/** Called from the load_device_state hook (on the destination's
	 *  thread), if set; a non-zero return is the hook's result. */
	int (*on_load)(struct h_dest *d);
	/** Called from the resume_vm hook, if set: a negative errno makes
	 *  resume_vm fail (and resumed is not counted). */
	int (*on_resume)(struct h_dest *d);
};

struct h_src {
	struct pc_guest *guest;
	struct precopy_session *s;
	struct precopy_params params;
	const char *uri;
	pthread_t thread;
	int err;
	unsigned stops, resumes;
	bool running;
	/** Called from the stop_vm hook (after the guest paused), if set. */
	void (*on_stop)(struct h_src *s);
	/** Called from the save_device_state hook, if set. */
	void (*on_save)(struct h_src *s);
	/** Called from the progress hook (on the migrating thread), if set. */
	void (*on_progress)(struct h_src *s, const struct precopy_stats *st);
	void *opaque; /**< the test's, for the hooks above */
	struct precopy_callbacks guest_cb; /**< the guest's own (pc_guest_callbacks()) */
};

/** Map @len bytes, listen on tcp:127.0.0.1:0, accept in a thread. */
int h_dest_start(struct h_dest *d, size_t len);
/** As h_dest_start, listening on @uri; with @memfd the RAM is a memfd
 *  (precopy_memfd_alloc + precopy_add_region_fd), which shm shares. */
int h_dest_start_uri(struct h_dest *d, size_t len, const char *uri, bool memfd);
/** As h_dest_start_uri, with the authentication key @key of @key_len
 *  bytes (NULL = none). */
int h_dest_start_key(struct h_dest *d, size_t len, const char *uri, bool memfd,
		     const void *key, size_t key_len);
/** The same, with @p (NULL = defaults) and without starting the thread
 *  when @run is false (start it with h_dest_run()). */
int h_dest_start_ex(struct h_dest *d, size_t len, const struct precopy_params *p, bool run);
/** The same, listening on @uri with @tls (NULL = none). */
int h_dest_start_tls(struct h_dest *d, size_t len, const struct precopy_params *p,
		     const char *uri, const struct precopy_tls *tls, bool run);
/** Every option at once; zeroes are the defaults (tcp:127.0.0.1:0, plain
 *  anonymous RAM, no key, no TLS, thread started). */
struct h_dest_opts {
	const struct precopy_params *p;
	const char *uri;
	bool memfd;
	const void *key;
	size_t key_len;
	const struct precopy_tls *tls;
	bool no_run;
	bool no_populate; /* the "populate" parameter = 0 */
	int (*on_load)(struct h_dest *d);
	int (*on_resume)(struct h_dest *d);
};
int h_dest_start_opts(struct h_dest *d, size_t len, const struct h_dest_opts *o);
int h_dest_run(struct h_dest *d);
/** Descriptors open in this process, pipes aside (for leak checks). */
long h_count_fds(void);
/** Wait for the destination's thread; returns its precopy_incoming() result. */
int h_dest_join(struct h_dest *d);
void h_dest_free(struct h_dest *d);

/** A source session for @guest (which keeps running) with @p; a memfd
 *  guest (pc_guest_fd() >= 0) is registered with its fd. */
int h_src_new(struct h_src *s, struct pc_guest *guest, const struct precopy_params *p,
	      enum precopy_dirty_mode mode);
/** Run precopy_migrate(@uri) in a thread (h_src_new() clears on_stop,
 *  on_save and on_progress: set them after). */
int h_src_start(struct h_src *s, const char *uri);
int h_src_join(struct h_src *s);
void h_src_free(struct h_src *s);

/** Whether @g still runs: its write count grows (waits up to 30 s for it,
 *  however loaded the machine). */
bool h_guest_runs(struct pc_guest *g);

/** A cmocka case named @name that runs @call: one line for each row of a
 *  case written once with its arguments. */
#define H_CASE(name, call)                                                            \
	static void name(void **state)                                                \
	{                                                                             \
		(void)state;                                                          \
		call;                                                                 \
	}

/* Fixtures: each fails the running cmocka test when its check fails. */

/** A new guest with @o, its writers started. */
struct pc_guest *h_guest_new(const struct pc_guest_opts *o);
/** @g still runs (h_guest_runs()) and its memory is exactly what it
 *  wrote; @what names it in the failure ("source"). */
void h_check_guest_intact(struct pc_guest *g, const char *what);
/** After a migration that succeeded: the source guest stopped for good
 *  (every other stop_vm resumed), the destination resumed once with the
 *  device state, both memories equal, the destination's verified against
 *  the guest's descriptor, both sessions COMPLETED. */
void h_check_migrated(struct h_src *s, struct h_dest *d);
/** h_src_new() for @g with @p (NULL: defaults) and PRECOPY_DIRTY_AUTO,
 *  then h_src_start() to @uri. */
void h_src_go(struct h_src *s, struct pc_guest *g, const struct precopy_params *p,
	      const char *uri);
/** After a migration that failed or was cancelled: @s is in @want, every
 *  stop_vm was resumed, and the guest runs on intact. */
void h_check_source_back(struct h_src *s, enum precopy_status want);
/** Free whichever of @s, @d, *@g is not NULL. */
void h_free_all(struct h_src *s, struct h_dest *d, struct pc_guest **g);
/** Migrate @g with @p (NULL: defaults) into @d, started: both ends
 *  succeed and h_check_migrated() holds. @s stays for the caller's checks
 *  (then h_src_free()). */
void h_migrate_ok(struct h_src *s, struct h_dest *d, struct pc_guest *g,
		  const struct precopy_params *p);
/** Hooks that take 3 s of local work, saving and loading device state
 *  (for on_save and on_load): longer than a short timeout. */
void h_slow_save(struct h_src *s);
int h_slow_load(struct h_dest *d);
/** Both ends of a started migration fail before the guest was stopped,
 *  the source's error saying @what. */
void h_check_refused(struct h_src *s, struct h_dest *d, const char *what);
/** A plain TCP connection to the port of @uri ("tcp:" or "tls:" on
 *  127.0.0.1), as a stranger would make it. Return: the socket. */
int h_raw_connect(const char *uri);
/** Descriptors open (h_count_fds()) and one more count of what a
 *  migration must give back (memfd mappings, pinned KiB...), if any. */
struct h_leaks {
	long (*count)(void);
	const char *what;
	long fds, other;
};
/** Take the counts now: @count names @what ("KiB pinned"); NULL = none. */
void h_leaks_mark(struct h_leaks *l, long (*count)(void), const char *what);
/** The counts are as marked (printed with @when). */
void h_leaks_check(const struct h_leaks *l, const char *when);
struct pc_listener;
struct pc_transport;
/** A transport listener accepting one connection in a thread (the
 *  transport layer's own test peers). */
struct h_accept {
	struct pc_listener *l;   /**< the caller's, listening */
	struct pc_transport *t;  /**< the connection, once joined with 0 */
	int err;                 /**< the accept's result */
	unsigned timeout_ms;     /**< the accept's timeout option (0: default) */
	pthread_t th;
};
/** Start accepting on @a->l with default options in a thread. */
void h_accept_start(struct h_accept *a);
/** Wait for the accept; returns its result (@a->err). */
int h_accept_join(struct h_accept *a);
/** @s is in @want; a FAILED or CANCELLED session says why. */
void h_expect_status(struct precopy_session *s, enum precopy_status want);

/** Wait until @s reaches @st (or ends), at most @ms. Return: true if reached. */
bool h_wait_status(struct precopy_session *s, enum precopy_status st, unsigned ms);

#endif

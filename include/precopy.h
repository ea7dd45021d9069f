/* SPDX-License-Identifier: MIT */
/*
 * precopy.h - live migration of memory by iterative precopy.
 *
 * This is the only header a VMM includes. A migration has two ends, each a
 * `struct precopy_session`:
 *
 *   source:       precopy_new(PRECOPY_ROLE_SOURCE, ...)
 *                 precopy_add_region(...)          one call per RAM block
 *                 precopy_migrate(s, "tcp:HOST:PORT")   blocks until the end
 *
 *   destination:  precopy_new(PRECOPY_ROLE_DEST, ...)
 *                 precopy_add_region(...)          same order, same lengths
 *                 precopy_listen(s, "tcp:HOST:PORT")
 *                 precopy_incoming(s)               blocks until the end
 *
 * precopy_query(), precopy_set_param() and precopy_cancel() may be called
 * from any thread while precopy_migrate() or precopy_incoming() runs.
 *
 * Two processes on one host use "shm:PATH" (PATH a unix socket path).
 * Pages cross the socket (the destination shares none of its memory with
 * the source); give the source memfd-backed guest RAM
 * (precopy_add_region_fd()) and the RAM itself is handed over instead
 * (see precopy_add_region_fd(): handoff).
 *
 * Conventions: every function returns 0 (or a non-negative count where it
 * says so) on success and a negative errno on failure; none aborts the
 * process on bad input. Strings describing the last failure are available
 * from precopy_strerror(). Sizes are in bytes, rates in bytes per second,
 * times in milliseconds unless a name says otherwise.
 */
#ifndef PRECOPY_H
#define PRECOPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PRECOPY_VERSION_MAJOR 0
#define PRECOPY_VERSION_MINOR 3

/** Page size used by the engine and on the wire. */
#define PRECOPY_PAGE_SIZE 4096u

/** Longest error description kept by a session, including the NUL. */
#define PRECOPY_ERRMSG_MAX 256

/** Most RAM regions one session can carry. */
#define PRECOPY_MAX_REGIONS 64

/** Most parallel channels (TCP connections, queue pairs) of one migration. */
#define PRECOPY_MAX_CHANNELS 16

struct precopy_session;

/** Which end of a migration a session is. */
enum precopy_role {
	PRECOPY_ROLE_SOURCE = 1,
	PRECOPY_ROLE_DEST = 2,
};

/**
 * Migration status, as QEMU's query-migrate reports it, with the active
 * phase split in two. Terminal states: COMPLETED, FAILED, CANCELLED.
 */
enum precopy_status {
	PRECOPY_STATUS_NONE = 0,   /**< created, not started */
	PRECOPY_STATUS_SETUP,      /**< connecting, negotiating, arming dirty log */
	PRECOPY_STATUS_BULK,       /**< first pass: every page */
	PRECOPY_STATUS_ITERATE,    /**< later passes: pages dirtied since */
	/** guest stopped, last pages and device state; in postcopy until every
	 *  missing page has come (the guest runs at the destination from GO:
	 *  stats.postcopy) */
	PRECOPY_STATUS_SWITCHOVER,
	PRECOPY_STATUS_COMPLETED,
	PRECOPY_STATUS_FAILED,
	PRECOPY_STATUS_CANCELLED,
};

/** How a region's writes are found between passes. */
enum precopy_dirty_mode {
	/** userfaultfd write-protect (async) + PAGEMAP_SCAN if the kernel has
	 *  them, else soft-dirty bits. */
	PRECOPY_DIRTY_AUTO = 0,
	/** userfaultfd async write-protect + PAGEMAP_SCAN (Linux >= 6.7). */
	PRECOPY_DIRTY_UFFD_WP,
	/** /proc/self/clear_refs 4 + pagemap bit 55. */
	PRECOPY_DIRTY_SOFT_DIRTY,
	/** The VMM reports writes with precopy_region_mark_dirty(), as a KVM
	 *  VMM would from KVM_GET_DIRTY_LOG. */
	PRECOPY_DIRTY_EXTERNAL,
};

/** What the watchdog does when a limit is hit. */
enum precopy_on_limit {
	/** Switch over now; the downtime is longer than downtime-limit. */
	PRECOPY_ON_LIMIT_FORCE = 0,
	/** Fail the migration; the source guest keeps running. */
	PRECOPY_ON_LIMIT_ABORT,
	/**
	 * Switch over to postcopy: stop the guest, send the device state and
	 * the set of pages the destination does not hold current, and resume
	 * the guest at the destination at once; the destination asks for a
	 * page its guest touches before it is there (userfaultfd), and the
	 * source pushes every missing page from its stopped copy, asked-for
	 * pages first. Every page is still checked against the source's
	 * checksum; the destination reports success only once every page is
	 * in and matches. Needs userfaultfd at the destination and a
	 * transport that carries it (tcp: and tls:): elsewhere the migration
	 * is refused at the handshake (-EOPNOTSUPP), never run as precopy.
	 * The mode is fixed when the migration starts: changing on-limit to
	 * or from postcopy while it runs is refused (-EBUSY). Once the guest
	 * was handed over, a lost connection cannot be recovered yet: the
	 * destination fails with the pages it lacks still missing (its
	 * guest's accesses to them stay blocked, never see wrong data) and
	 * the source keeps its guest stopped. max-forced-downtime does not
	 * apply (the pause carries no RAM).
	 */
	PRECOPY_ON_LIMIT_POSTCOPY,
};

/**
 * Tunables. Fill with precopy_params_init() and change what you need.
 * The README explains each default.
 * The struct carries no size or version: precopy_params_init() and
 * precopy_new() use it whole, so it never grows. Every field, and every
 * setting added later, is also a named parameter (enum precopy_param) that
 * precopy_set_param() changes, before or during a migration.
 */
struct precopy_params {
	/** Rate cap for RAM passes in bytes/s; 0 = unlimited (default). The
	 *  final switchover burst is never capped. */
	uint64_t max_bandwidth;
	/** Longest acceptable guest pause, ms (default 300). */
	uint64_t downtime_limit_ms;
	/** Bandwidth in bytes/s to assume for the switchover decision only;
	 *  0 = use the measured estimate (default). */
	uint64_t avail_switchover_bandwidth;
	/** Throttle vCPUs when the guest dirties faster than we send
	 *  (default off). */
	bool auto_converge;
	/** Percent of bytes sent in a period that, when dirtied in that
	 *  period, counts toward throttling (default 50). */
	unsigned throttle_trigger_threshold;
	/** First throttle step, percent (default 20). */
	unsigned cpu_throttle_initial;
	/** Step between throttle levels, percent (default 10). */
	unsigned cpu_throttle_increment;
	/** Highest throttle, percent (default 99). */
	unsigned max_cpu_throttle;
	/** Increase the throttle in proportion to how far the dirty rate is
	 *  above the threshold rather than in fixed steps (default off). */
	bool cpu_throttle_tailslow;
	/** Passes after the bulk pass before the watchdog acts; 0 = no
	 *  limit (default 0). */
	unsigned max_iterations;
	/** Wall time before the watchdog acts, ms; 0 = no limit (default). */
	uint64_t max_time_ms;
	/** Passes in a row in which the remaining bytes did not shrink before
	 *  the watchdog acts; 0 = off (default 0). */
	unsigned stall_iterations;
	/** What the watchdog does (default FORCE). */
	enum precopy_on_limit on_limit;
	/** Parallel channels (default 1, at most PRECOPY_MAX_CHANNELS). */
	unsigned channels;
	/** How long a silent peer is tolerated, ms (default 15000, range
	 *  100..3600000): data left unacknowledged this long (TCP's
	 *  TCP_USER_TIMEOUT), or an idle connection whose keepalive probes go
	 *  unanswered (probes start after min(5 s, timeout/3)), ends the
	 *  migration with -ETIMEDOUT; so does a TCP connect that gets no
	 *  answer this long. Over tcp:, tls: and shm:, a peer whose process
	 *  is stopped or frozen is caught too. If it reads nothing for this
	 *  long, or sends nothing for this long (heartbeats included), the
	 *  migration fails with -ETIMEDOUT. Heartbeats go out every timeout/3
	 *  of idle, so slow work in the peer's callbacks is not taken for
	 *  silence.
	 *  Over rdma:, the same through heartbeats the peer's process must
	 *  answer (its NIC acknowledges everything even when it is stopped):
	 *  a channel that hears nothing for this long fails.
	 *  Both ends use their own value. */
	unsigned timeout_ms;
};

/** Where the bandwidth of the switchover decision comes from. */
enum precopy_bw_source {
	PRECOPY_BW_SOURCE_NONE = 0,        /**< no estimate yet */
	PRECOPY_BW_SOURCE_SEND_TIME = 1,   /**< time inside send calls (no link figures) */
	PRECOPY_BW_SOURCE_TCP_INFO = 2,    /**< the kernel's TCP_INFO */
	PRECOPY_BW_SOURCE_COMPLETIONS = 3, /**< RDMA completion times */
	PRECOPY_BW_SOURCE_COPY = 4,        /**< shm copy time */
	PRECOPY_BW_SOURCE_AVAIL = 5,       /**< avail-switchover-bandwidth */
};

/**
 * Statistics; names and meanings follow QEMU's query-migrate.
 * The struct grows at its end only: precopy_query() passes the size the
 * caller was built with, and the library fills that much. A field added
 * after PRECOPY_0.1 says since when it is there.
 */
struct precopy_stats {
	enum precopy_status status;
	/** ms since the migration started (until its end once ended). */
	uint64_t total_time;
	/** ms spent in SETUP. */
	uint64_t setup_time;
	/** ms the guest was stopped (valid once COMPLETED). */
	uint64_t downtime;
	/** ms the guest would be stopped if switchover began now. */
	uint64_t expected_downtime;
	/** bytes put on the transport, headers included. */
	uint64_t transferred;
	/** bytes of RAM still dirty (to send); in postcopy, at either end,
	 *  the bytes of the pages still missing at the destination. */
	uint64_t remaining;
	/** bytes of RAM registered. */
	uint64_t total;
	/** pages found to hold only zeros (sent as run records). */
	uint64_t duplicate;
	/** pages sent with their contents. */
	uint64_t normal;
	/** bytes of page contents sent. */
	uint64_t normal_bytes;
	/** pages skipped because the VMM reported them free. */
	uint64_t free_skipped;
	/** pages dirtied per second, over the last pass. */
	uint64_t dirty_pages_rate;
	/** megabits per second the switchover decision uses
	 *  (bandwidth_switchover x 8 / 1e6). */
	double mbps;
	/** bytes sent over the time spent inside the transport's send calls,
	 *  bytes/s. Too high whenever the sender is not the bottleneck (a
	 *  socket buffer absorbs a send long before its bytes are on the
	 *  wire): kept for comparison; decisions use bandwidth_switchover. */
	uint64_t bandwidth_busy;
	/** bandwidth from wall time (QEMU's method), bytes/s. */
	uint64_t bandwidth_wall;
	/** dirty-log syncs done. */
	uint64_t dirty_sync_count;
	/** current vCPU throttle, percent. */
	unsigned cpu_throttle_percentage;
	/** current pass: 0 = bulk, 1.. = iterations. */
	unsigned iteration;
	/** true if the watchdog forced the switchover. */
	bool forced_switchover;
	/** the dirty-tracking method in use on region 0 (source). */
	enum precopy_dirty_mode dirty_mode;
	/** why the migration failed or was cancelled, else "". */
	char error[PRECOPY_ERRMSG_MAX];

	/* --- since PRECOPY_0.3 ----------------------------------------- */
	/** Memory registration with the transport's device (RDMA:
	 *  ibv_reg_mr, which pins pages), for guest memory, valid once the
	 *  migration has ended and only if @registered is true: the time it
	 *  took in ns, the bytes and the memory regions registered, and
	 *  whether the source registered its RAM whole (pin-all). */
	bool registered;
	bool registration_pin_all;
	uint64_t registration_ns;
	uint64_t registered_bytes;
	uint64_t registrations;

	/* --- since PRECOPY_0.3: what a forced switchover cost ------------ */
	/** Set when the watchdog forced the switchover (forced_switchover)
	 *  or would have, had max-forced-downtime not aborted the migration
	 *  instead (forced_aborted): the downtime expected when it decided,
	 *  in ms (UINT64_MAX if it could not be predicted), and the downtime
	 *  the forced switchover really took, in ms (0 if aborted). All 0
	 *  when the watchdog did not force. A switchover to postcopy is a
	 *  forced one: the expected downtime is a precopy switchover's, the
	 *  real one postcopy's (the guest paused until it ran at the
	 *  destination). */
	uint64_t forced_expected_downtime;
	uint64_t forced_downtime;
	bool forced_aborted;

	/* --- since PRECOPY_0.3: memory set-up and page faults ---------- */
	/** Destination: ms precopy_listen() spent populating the regions
	 *  (the "populate" parameter; 0 if it was off), before any source
	 *  could connect, and the bytes it populated. */
	uint64_t populate_ms;
	uint64_t populated_bytes;
	/** Page faults (minor + major) the threads that move pages took
	 *  while they did: at the destination the receivers from the
	 *  handshake to COMPLETE (one per 4 KiB page received into memory
	 *  never touched before, none if it was populated); at the source
	 *  the senders (reading guest memory, or writing into the peer's
	 *  shared memory in shm copy mode). */
	uint64_t page_faults;
	/** Source: CPU time (ns) of the sender threads, split into handing
	 *  pages to the transport (posting RDMA writes, copying into a socket
	 *  or into shared memory) and the rest: reading each page once for
	 *  the zero test and checksum, and walking the dirty bitmap. */
	uint64_t send_cpu_ns;
	uint64_t scan_cpu_ns;

	/* --- since PRECOPY_0.3: the bandwidth estimate (source) --------- */
	/** bytes/s of the link as the transport measured it where the bytes
	 *  leave: tcp:/tls: the kernel's bytes acknowledged over the time it
	 *  had data queued or in flight (TCP_INFO), rdma: the bytes of
	 *  completed work requests over the time work requests were
	 *  outstanding, shm: the copy rate; with several channels the link
	 *  they share, not the sum of channels. Once the link has set the
	 *  pace (busy with bytes waiting, 20 ms in a window), only such
	 *  windows count. 0 = no figures yet. */
	uint64_t bandwidth_link;
	/** bytes/s of guest RAM that carries data the sender gets through
	 *  when it is not waiting for max-bandwidth (scanning and sends;
	 *  pages found zero, and their time, left out). */
	uint64_t bandwidth_sender;
	/** bytes/s the switchover decision uses: avail-switchover-bandwidth
	 *  if set, else the lower of bandwidth_link and bandwidth_sender,
	 *  else (no link figures) bandwidth_busy. */
	uint64_t bandwidth_switchover;
	/** where bandwidth_switchover comes from. */
	enum precopy_bw_source bandwidth_source;
	/** bytes still queued in the transport at the last decision. */
	uint64_t queued_bytes;
	/** device-state size counted in expected_downtime, bytes. */
	uint64_t device_state_bytes;

	/* --- since PRECOPY_0.3: postcopy (on-limit postcopy) ------------- */
	/** true once the migration switched over to postcopy. */
	bool postcopy;
	/** ms from the guest's resumption at the destination until every
	 *  page was in (0 until then). */
	uint64_t postcopy_time;
	/** pages the destination asked for because its guest touched them
	 *  (source: requests served; destination: requests sent). */
	uint64_t postcopy_requests;
	/** pages sent in postcopy because they were asked for, and pages
	 *  pushed in the background; together the pages missing at the
	 *  handover. */
	uint64_t postcopy_pages_requested;
	uint64_t postcopy_pages_pushed;
	/** Destination: time from a guest's fault to its page being placed,
	 *  in microseconds, median and 99th percentile over the requests
	 *  (0 without requests). */
	uint64_t postcopy_latency_median_us;
	uint64_t postcopy_latency_p99_us;
};

/** Size of struct precopy_stats as PRECOPY_0.1 defined it. */
#define PRECOPY_STATS_SIZE_0_1 offsetof(struct precopy_stats, registered)

/**
 * Hooks a VMM provides. Every hook is optional (NULL = nothing to do, or
 * no device state). Hooks run on the thread that called
 * precopy_migrate() / precopy_incoming(), except that set_throttle may also
 * be called from it. A hook returns 0 or a negative errno; an error fails
 * the migration.
 */
struct precopy_callbacks {
	void *opaque; /**< passed to every hook */
	/** Source: pause all vCPUs (switchover begins). */
	int (*stop_vm)(void *opaque);
	/** Source: resume vCPUs after a failed or cancelled migration.
	 *  Destination: start the guest after verified success. */
	int (*resume_vm)(void *opaque);
	/** Source: serialise device state into a malloc()ed buffer; the
	 *  engine frees it. Called with the guest stopped. */
	int (*save_device_state)(void *opaque, void **buf, size_t *len);
	/** Destination: restore device state; the buffer belongs to the
	 *  engine and is valid during the call only. */
	int (*load_device_state)(void *opaque, const void *buf, size_t len);
	/** Source: throttle vCPUs to run (100 - pct)% of the time. */
	int (*set_throttle)(void *opaque, unsigned pct);
	/** Either end: progress, at most every 100 ms and at every change of
	 *  status. Must not call back into the session except precopy_query(),
	 *  precopy_cancel(), precopy_set_param() and (source)
	 *  precopy_region_hint_free(). */
	void (*progress)(void *opaque, const struct precopy_stats *st);
};

/**
 * TLS for the "tls:HOST:PORT" scheme: TLS 1.3 (GnuTLS) on every channel
 * of a TCP migration, authenticated by a pre-shared key or by x509
 * certificates. Give it to both ends with precopy_set_tls(). Plain "tcp:"
 * stays available for trusted networks (docs/SECURITY.md).
 */
struct precopy_tls {
	/** PSK mode when set: both ends must hold the same identity and key
	 *  (at least 16 bytes); the x509 fields are then ignored. */
	const char *psk_identity;
	const uint8_t *psk;
	size_t psk_len;
	/** x509 mode: PEM file of the CA(s) that sign the peer's certificate.
	 *  Source: required; the destination's certificate must chain to it.
	 *  Destination: if set, the source must present a certificate too. */
	const char *ca_file;
	/** x509 mode: PEM certificate and private key of this end.
	 *  Destination: required. Source: only if the destination asks. */
	const char *cert_file;
	const char *key_file;
	/** Source, x509 mode: the name the destination's certificate must
	 *  carry; NULL = the host of the URI. */
	const char *hostname;
};

/**
 * Parameters by name, for precopy_set_param() and precopy_get_param().
 * Each is a field of struct precopy_params (same meaning, same range) or,
 * for later ones, a setting of its own. The names are QEMU's
 * migrate-set-parameters names where QEMU has one (precopy_param_name()).
 * Values are integers: bytes/s for rates, ms for times, 0/1 for booleans,
 * enum precopy_on_limit for PRECOPY_PARAM_ON_LIMIT.
 */
enum precopy_param {
	PRECOPY_PARAM_MAX_BANDWIDTH = 0,      /**< "max-bandwidth" */
	PRECOPY_PARAM_DOWNTIME_LIMIT,         /**< "downtime-limit" */
	PRECOPY_PARAM_AVAIL_SWITCHOVER_BANDWIDTH, /**< "avail-switchover-bandwidth" */
	PRECOPY_PARAM_AUTO_CONVERGE,          /**< "auto-converge" */
	PRECOPY_PARAM_THROTTLE_TRIGGER_THRESHOLD, /**< "throttle-trigger-threshold" */
	PRECOPY_PARAM_CPU_THROTTLE_INITIAL,   /**< "cpu-throttle-initial" */
	PRECOPY_PARAM_CPU_THROTTLE_INCREMENT, /**< "cpu-throttle-increment" */
	PRECOPY_PARAM_MAX_CPU_THROTTLE,       /**< "max-cpu-throttle" */
	PRECOPY_PARAM_CPU_THROTTLE_TAILSLOW,  /**< "cpu-throttle-tailslow" */
	PRECOPY_PARAM_MAX_ITERATIONS,         /**< "max-iterations" */
	PRECOPY_PARAM_MAX_TIME,               /**< "max-time" */
	PRECOPY_PARAM_STALL_ITERATIONS,       /**< "stall-iterations" */
	PRECOPY_PARAM_ON_LIMIT,               /**< "on-limit" */
	PRECOPY_PARAM_CHANNELS,               /**< "channels" (before the start only) */
	PRECOPY_PARAM_TIMEOUT,                /**< "timeout" (before the start only) */
	/** "max-forced-downtime" (since PRECOPY_0.3; not a field of struct
	 *  precopy_params, default 0): when the watchdog would force the
	 *  switchover (on-limit force), the longest pause, in ms, the forced
	 *  switchover may be expected to take; if the expected downtime is
	 *  above it (or cannot be predicted) the migration is aborted instead
	 *  (-ETIMEDOUT, the guest keeps running at the source). 0 = no bound:
	 *  force whatever the cost. Range 0..2000000. */
	PRECOPY_PARAM_MAX_FORCED_DOWNTIME,
	/** "populate" (destination, before precopy_listen() only; default 1):
	 *  precopy_listen() allocates every page of every region
	 *  (MADV_POPULATE_WRITE in parallel threads, or a write of each page
	 *  that keeps its contents; transparent huge pages asked for where the
	 *  mapping allows, MADV_HUGEPAGE), so receiving takes no page fault.
	 *  Pages land on the node the region's memory policy names
	 *  (precopy_memfd_alloc() with a node binds it). 0 for a VMM that
	 *  preallocates its RAM itself. A source ignores it. */
	PRECOPY_PARAM_POPULATE,
	/** "device-state-size": bytes the VMM expects its device state to
	 *  be, counted in the expected downtime; 0 = unknown (default): the
	 *  size the last migration in this process sent, else 0. At most 256 MiB
	 *  (the largest device state a migration carries). */
	PRECOPY_PARAM_DEVICE_STATE_SIZE,
	PRECOPY_PARAM__COUNT                  /**< not a parameter: how many there are */
};

/**
 * precopy_set_param() - change one parameter of @s, before or while it
 * migrates; safe from any thread. A running source takes the new value at
 * its next decision (within about 100 ms): a new max-bandwidth at the next
 * send, a new downtime-limit or avail-switchover-bandwidth at the next
 * pass end, new watchdog limits at the next check; turning auto-converge
 * off ends the throttle at once. The value is checked with the others as
 * precopy_params_check() does; a bad one changes nothing.
 * Since symbol version PRECOPY_0.3.
 * Return: 0; -EINVAL for a NULL @s, an unknown @param or a value out of
 * range (precopy_strerror() does not change; see precopy_param_check());
 * -EBUSY for channels or timeout once the session runs, and for any
 * parameter once it has ended.
 */
int precopy_set_param(struct precopy_session *s, enum precopy_param param, uint64_t value);

/**
 * precopy_param_check() - would precopy_set_param(@s, @param, @value)
 * be accepted now? If not, why, into @why (if non-NULL, @whylen bytes).
 * Since symbol version PRECOPY_0.3.
 * Return: 0, or the error precopy_set_param() would return.
 */
int precopy_param_check(struct precopy_session *s, enum precopy_param param, uint64_t value,
			char *why, size_t whylen);

/**
 * precopy_get_param() - the value of one parameter of @s into *@value,
 * as the next decision will use it. Safe from any thread.
 * Since symbol version PRECOPY_0.3.
 * Return: 0; -EINVAL for NULL arguments or an unknown @param.
 */
int precopy_get_param(struct precopy_session *s, enum precopy_param param, uint64_t *value);

/**
 * precopy_param_name() - the name of @param ("downtime-limit"...), or
 * NULL for an unknown one. Since symbol version PRECOPY_0.3.
 */
const char *precopy_param_name(enum precopy_param param);

/**
 * precopy_param_from_name() - the parameter called @name (as
 * precopy_param_name() spells it). Since symbol version PRECOPY_0.3.
 * Return: the parameter (>= 0); -EINVAL for NULL; -ENOENT for an unknown
 * name.
 */
int precopy_param_from_name(const char *name);

/**
 * precopy_version() - the version of the library running, as
 * (major << 16) | minor; compare with PRECOPY_VERSION_MAJOR and
 * PRECOPY_VERSION_MINOR, the header's. Since symbol version PRECOPY_0.3.
 */
unsigned precopy_version(void);

/**
 * precopy_params_init() - fill @p with the defaults.
 * Return: 0, or -EINVAL if @p is NULL.
 */
int precopy_params_init(struct precopy_params *p);

/**
 * precopy_params_check() - validate @p.
 * Return: 0, or -EINVAL with a description in @why (if non-NULL, of
 * @whylen bytes) naming the first bad field.
 */
int precopy_params_check(const struct precopy_params *p, char *why, size_t whylen);

/**
 * precopy_new() - create a session.
 * @role:   source or destination.
 * @params: tunables (copied); NULL = defaults. At the destination only
 *          timeout_ms matters (it follows the source's channel count).
 * @cb:     VMM hooks (copied); NULL = none.
 * @out:    receives the session; the caller frees it with precopy_delete().
 * Return: 0; -EINVAL for a bad role or params; -ENOMEM.
 */
int precopy_new(enum precopy_role role, const struct precopy_params *params,
		const struct precopy_callbacks *cb, struct precopy_session **out);

/**
 * precopy_delete() - free a session and everything it holds, and set *@s
 * to NULL. The session must not be running (return from precopy_migrate()
 * or precopy_incoming() first). Registered memory stays the VMM's. A
 * destination whose postcopy failed with pages missing keeps the guest's
 * accesses to them waiting until this call, which ends the wait (the pages
 * then read as zeros): stop the guest before.
 * Return: 0; -EINVAL if @s is NULL; -EBUSY if the session is running.
 */
int precopy_delete(struct precopy_session **s);

/**
 * precopy_add_region() - register a RAM block.
 * @addr, @len: page-aligned, @len > 0; the memory stays the caller's and
 *              must outlive the session.
 * @mode:       source: how writes are tracked; ignored at the destination.
 * Regions are matched between the two ends by order and length.
 * Return: the region index (>= 0); -EINVAL for misaligned or overlapping
 * ranges; -ENOSPC past PRECOPY_MAX_REGIONS; -EBUSY once started; -ENOMEM
 * if @len and the region's checksum table (8 bytes a page) need more than
 * this host's memory and swap (precopy_strerror() names both sizes), or
 * for the table's allocation; or the error of arming the dirty log
 * (-ENOTSUP if @mode is not available here).
 */
int precopy_add_region(struct precopy_session *s, void *addr, size_t len,
		       enum precopy_dirty_mode mode);

/**
 * precopy_add_region_fd() - register a RAM block that is a MAP_SHARED
 * mapping of @fd (a memfd or other shmem/hugetlbfs file) at @offset.
 * @addr, @len, @mode: as precopy_add_region(). The caller promises that
 *              [@addr, @addr+@len) maps [@offset, @offset+@len) of @fd;
 *              precopy only checks that @fd is a regular file of at least
 *              @offset+@len bytes.
 * @fd:         duplicated (the session closes its copy in
 *              precopy_delete()); the caller keeps and closes its own.
 *
 * Destination: the region is written like any memory. "shm:" does not
 * share it with the source (a descriptor handed to another process cannot
 * be taken back after the migration); pages are framed over the socket.
 *
 * Source, handoff: if every source region was registered with an fd and
 * the transport passes fds ("shm:"), precopy_migrate() does no page
 * passes: it stops the guest, hands the fds over, sends device state and
 * COMPLETE. The downtime does not depend on RAM size. The destination maps
 * each fd with MAP_SHARED | MAP_FIXED over the range it registered for
 * that region (same order and length, as ever), replacing whatever was
 * mapped there, then loads device state and resumes. It checks what is
 * cheap (every region handed over, length, fstat size >= offset + length)
 * but computes no checksum: the pages are the source's own, not a copy.
 * If the destination fails after mapping, it puts anonymous (zero) memory
 * back over its ranges. After success the source must never run the guest
 * or write its RAM again: both processes now map the same pages.
 * Return: the region index (>= 0); -EINVAL for a bad @fd or @offset, or
 * a file shorter than @offset+@len; else as precopy_add_region().
 */
int precopy_add_region_fd(struct precopy_session *s, void *addr, size_t len, int fd,
			  uint64_t offset, enum precopy_dirty_mode mode);

/**
 * precopy_memfd_alloc() - create RAM for precopy_add_region_fd(): a memfd
 * of @len bytes (page multiple), sealed against shrinking and growing and
 * against further seals (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL: no
 * holder of the fd can add F_SEAL_WRITE or F_SEAL_FUTURE_WRITE), mapped
 * MAP_SHARED at *@addr, its fd in *@fd (close-on-exec).
 * @numa_node: >= 0 binds the memory to that node (MPOL_BIND, a shared
 *             policy on the file, so pages land there whoever touches
 *             them first); -1 = default policy.
 * The caller owns both: munmap(*@addr, @len) and close(*@fd).
 * A memfd is shmem, in 4 KiB pages unless THP's shmem_enabled allows huge
 * ones (default "never"); a destination that will not hand its RAM over
 * receives faster into anonymous memory with MADV_HUGEPAGE, 2 MiB aligned.
 * Return: 0; -EINVAL for a bad @len or a node that does not exist (see
 * precopy_numa_max_node()); -ENOMEM if @len and its checksum table (8
 * bytes a page) need more than this host's memory and swap; -ENOSYS if
 * @numa_node >= 0 and the kernel has no NUMA support; -errno of
 * memfd_create, ftruncate, mmap or mbind.
 */
int precopy_memfd_alloc(size_t len, int numa_node, void **addr, int *fd);

/**
 * precopy_ram_alloc() - create a destination's RAM for precopy_add_region()
 * where no memfd is needed (a destination never shares its RAM with the
 * source; a handoff maps the source's memfds over it): @len bytes (page
 * multiple) of private anonymous memory at *@addr, on a 2 MiB boundary,
 * with transparent huge pages asked for (MADV_HUGEPAGE, best effort).
 * Where THP is in "madvise" or "always" mode, populating and receiving
 * then reach each page through a 2 MiB mapping instead of 512 separate
 * 4 KiB ones, which on a virtual machine can cost microseconds each.
 * @numa_node: >= 0 binds the memory to that node (MPOL_BIND on the
 *             mapping, before any page is touched); -1 = default policy.
 * The caller frees it with munmap(*@addr, @len). Since PRECOPY_0.3.
 * Return: 0; -EINVAL for a bad @len or a node that does not exist; -ENOMEM
 * if @len and its checksum table (8 bytes a page) need more than this
 * host's memory and swap; -ENOSYS if @numa_node >= 0 and the kernel has no
 * NUMA support; -errno of mmap or mbind.
 */
int precopy_ram_alloc(size_t len, int numa_node, void **addr);

/**
 * precopy_numa_max_node() - the highest NUMA node number here (0 on a
 * machine with one node). Return: >= 0, or -ENOSYS without NUMA support.
 */
int precopy_numa_max_node(void);

/**
 * precopy_numa_node_ok() - whether @node exists here (and memory can be
 * placed on it). Return: 0; -EINVAL if not; -ENOSYS without NUMA support.
 */
int precopy_numa_node_ok(int node);

/**
 * precopy_numa_where() - where memory landed: up to @samples pages spread
 * evenly over [@addr, @addr+@len) are looked up (move_pages() query);
 * per_node[n] counts those on node n (n < @nnodes) and *@absent (if not
 * NULL) those not allocated yet.
 * Return: the number of pages sampled (>= 1); -EINVAL (@len under a page,
 * no @samples, a misaligned @addr...); -ENOMEM; -errno.
 */
int precopy_numa_where(const void *addr, size_t len, unsigned samples, uint64_t *per_node,
		       unsigned nnodes, uint64_t *absent);

/**
 * precopy_region_mark_dirty() - report writes on an EXTERNAL region.
 * @bitmap: one bit per page from @first_page (bit i of word i/64), as
 *          KVM_GET_DIRTY_LOG returns it; @npages bits are read.
 * May be called from any thread at any time; the bits are merged into the
 * next dirty sync. Return: 0; -EINVAL for a bad region or a range past its
 * end; -ENOTSUP if the region is not EXTERNAL.
 */
int precopy_region_mark_dirty(struct precopy_session *s, int region,
			      uint64_t first_page, const uint64_t *bitmap,
			      uint64_t npages);

/**
 * precopy_region_hint_free() - report pages the guest does not use now
 * (e.g. from virtio-balloon free page hinting), while the source migrates.
 * Taken only while the dirty log is armed: from the moment the status is
 * BULK (the progress hook sees that status before the first page is sent,
 * and may call this function) until the switchover begins. Hinted pages
 * that are still to be sent go as free runs (a few bytes each; the
 * destination zeroes them) instead of their contents; pages already sent
 * stay as sent. A page the guest writes after its hint is dirty again and
 * is sent with its contents: nothing the guest wrote after saying a page
 * was free is lost. Any thread may call it. Bitmap layout as
 * precopy_region_mark_dirty().
 * A hint given before the log is armed is refused: a write between such a
 * hint and the arming would be logged nowhere, and the page would arrive
 * as zeros with a matching checksum.
 * Return: 0; -EINVAL for a bad range or a destination session; -EAGAIN
 * before the dirty log is armed (before precopy_migrate(), or while it
 * connects: retry once the status is BULK); -EBUSY once the switchover
 * began or the migration ended. A memfd handoff (precopy_add_region_fd())
 * sends no pages and takes no hints.
 */
int precopy_region_hint_free(struct precopy_session *s, int region,
			     uint64_t first_page, const uint64_t *bitmap,
			     uint64_t npages);

/** Longest key precopy_set_auth_key() takes. */
#define PRECOPY_AUTH_KEY_MAX 1024

/**
 * precopy_set_auth_key() - the shared secret both ends use to authenticate
 * the connection, before precopy_migrate() / precopy_incoming().
 * @key, @len: copied; NULL or 0 clears it (the empty key).
 * The RDMA transport sends, in its connection request, an HMAC-SHA256 token
 * over a nonce and the request's fields keyed by this secret; the
 * destination rejects a request whose token does not match before
 * accepting it, and answers with a token of its own that the source checks
 * and a fresh challenge the source must answer (an HMAC of it) before the
 * destination takes the connection, so a replayed request is dropped.
 * Without a key (the default) both ends use the empty key: the format and
 * version are still checked, but anyone who can reach the port can connect.
 * The key authenticates the connection set-up only; it does not encrypt or
 * protect the data that follows. TCP ignores it today.
 * Return: 0; -EINVAL if @s is NULL or @len > PRECOPY_AUTH_KEY_MAX;
 * -EBUSY once the session runs; -ENOMEM.
 */
int precopy_set_auth_key(struct precopy_session *s, const void *key, size_t len);

/**
 * precopy_set_tls() - the TLS settings used when the URI's scheme is
 * "tls:" (at either end; copied, with the key and every string). Call it
 * before precopy_migrate() or precopy_incoming(); NULL clears them.
 * A wrong key, certificate or host name fails the handshake: the source
 * then returns -EACCES before it has touched the guest, and the
 * destination fails without writing a byte of its regions.
 * Return: 0; -EINVAL for an incomplete mode (a PSK under 16 bytes or
 * without an identity; neither a PSK nor a CA or certificate); -EBUSY once
 * started; -ENOMEM; -EPROTONOSUPPORT if built without GnuTLS.
 */
int precopy_set_tls(struct precopy_session *s, const struct precopy_tls *tls);

/**
 * How the source's RAM is registered with a transport that must register
 * memory with its device before it can send from it (RDMA: ibv_reg_mr,
 * which pins the pages). Transports that do not register memory (tcp,
 * tls, shm) ignore it.
 */
enum precopy_registration {
	/** Each 16 MiB chunk the first time a page in it is sent (default):
	 *  the cost is spread over the bulk pass, and chunks the migration
	 *  never sends from are never pinned. */
	PRECOPY_REG_ON_DEMAND = 0,
	/** Every region whole, before the first page is sent (in SETUP):
	 *  one up-front cost, no registration during the passes, all of the
	 *  guest's RAM pinned for the whole migration. */
	PRECOPY_REG_PIN_ALL,
};

/**
 * precopy_set_registration() - choose how the source registers its RAM
 * (see enum precopy_registration), before precopy_migrate(). Ignored at
 * the destination, which registers each region whole when the source
 * connects. The environment variable PRECOPY_RDMA_PIN_ALL, if set and not
 * empty, overrides this choice for every RDMA connection of the process:
 * "0" means on demand, anything else pin all.
 * Since symbol version PRECOPY_0.2.
 * Return: 0; -EINVAL if @s is NULL or @mode is unknown; -EBUSY once the
 * session runs.
 */
int precopy_set_registration(struct precopy_session *s, enum precopy_registration mode);

/**
 * precopy_migrate() - run a migration from the source to @uri.
 * @uri: "tcp:HOST:PORT"; "tls:HOST:PORT" (TCP with TLS 1.3, see
 *       precopy_set_tls()); "shm:PATH" (PATH: the destination's unix
 *       socket; both processes must run as the same user, or one as
 *       root: others are refused with -EACCES); or "rdma:HOST:PORT" where
 *       the RDMA transport is built in (HOST is an address on an RDMA
 *       device's netdev).
 * Blocks until the end. On success the guest stays stopped (it now runs at
 * the destination). On failure or cancel, resume_vm has been called if
 * stop_vm had been, and memory is untouched - except after
 * -ENOTRECOVERABLE: the destination verified everything and was told to
 * resume the guest (GO), but its answer never came, so the guest may be
 * running there and is left stopped here; resume it only once the
 * destination is known not to run it. In postcopy, any failure after GO
 * (the link lost while pages are still missing there, the destination's
 * failure) is -ENOTRECOVERABLE too: the guest was handed over and is left
 * stopped here. A destination that reports its
 * resume_vm failed gets the guest back here (resume_vm is called, the
 * error is its).
 * Return: 0 = COMPLETED; -ECANCELED; -ETIMEDOUT if the watchdog aborted;
 * -EACCES if TLS authentication failed; -ENOTRECOVERABLE (above);
 * -EPROTO, -ECONNRESET, -EIO... for failures (see precopy_strerror()).
 * A session runs once; make a new one to retry.
 *
 * It switches over when the expected downtime is within the limit:
 *   sync cost + (remaining + dirty rate x sync cost + bytes queued in the
 *   transport + device state) / bandwidth + 2 round trips,
 * the bandwidth being avail-switchover-bandwidth if set, else the link as
 * the transport measures it where the bytes leave (tcp/tls: TCP_INFO; shm:
 * copy time) or the sender's rate if lower, else (rdma) the time inside
 * the transport's calls; the device state is the "device-state-size"
 * parameter, else what the last migration in this process sent. See
 * precopy_migrate(3) and struct precopy_stats's bandwidth_* fields.
 */
int precopy_migrate(struct precopy_session *s, const char *uri);

/**
 * precopy_listen() - bind the destination to @uri ("tcp:HOST:PORT"; port 0
 * picks a free one, see precopy_local_uri(); or "shm:PATH", a unix socket
 * path, created here; a stale socket nobody listens on is replaced, and
 * the path is removed when the session is deleted). Does not wait for a
 * source. If the
 * path is removed during a shm migration, the migration fails.
 * Unless the "populate" parameter is 0, it first populates every region
 * (see PRECOPY_PARAM_POPULATE): it then takes as long as writing the
 * memory once, and a source that connects afterwards finds it ready.
 * "tls:HOST:PORT" loads the precopy_set_tls() credentials here, before
 * listening. Whatever connects then has the session's timeout to send its
 * hello (and finish its TLS handshake); connections are read side by side,
 * and one that fails ends alone while the destination waits on.
 * Return: 0; -EINVAL for a malformed URI, or "tls:" without
 * precopy_set_tls(); -ENOENT (a certificate, key or CA file cannot be
 * read), -EBADMSG (it holds no usable PEM); -EADDRINUSE...; -EBUSY if
 * already listening.
 */
int precopy_listen(struct precopy_session *s, const char *uri);

/**
 * precopy_local_uri() - the address precopy_listen() bound, as a URI,
 * written with its NUL into @buf of @len bytes.
 * Return: 0; -ENOTCONN if not listening; -ENOSPC if @buf is too short.
 */
int precopy_local_uri(struct precopy_session *s, char *buf, size_t len);

/**
 * precopy_incoming() - accept one source and receive a migration into the
 * registered regions. Blocks until the end. Returns 0 only after every
 * region's checksum matched the source's, device state was loaded, the
 * source answered the verdict with GO (it will not resume the guest
 * itself) and resume_vm succeeded. If the source goes away before GO, the
 * guest is not resumed here and the call fails. In postcopy
 * (PRECOPY_ON_LIMIT_POSTCOPY at the source) resume_vm is called with pages
 * still missing, and the call returns 0 once every one of them came and
 * matched its checksum; if the source goes away before that, it fails with
 * those pages still missing and the guest's accesses to them blocked
 * (never served empty) until precopy_delete(), which ends the wait:
 * stop the guest first.
 * Return: 0; -ECANCELED; -EPROTO for a malformed stream; -EBADMSG if the
 * checksum did not match; -ECONNRESET... (see precopy_strerror()).
 */
int precopy_incoming(struct precopy_session *s);

/**
 * precopy_cancel() - ask a running migration to stop; safe from any thread
 * and from signal handlers' deferred work. The running call returns
 * -ECANCELED soon after, also while the source is still connecting (over
 * any scheme, TLS handshake included) and while the destination runs the
 * TLS handshake with a source. Cancelling an ended or never-started session is
 * harmless. Once the source has sent GO (the destination's verdict was
 * good) the destination may resume the guest at any moment, so from then
 * on a cancel is refused (-EBUSY) rather than risk the guest running at
 * both ends; the migration ends a moment later either way (in postcopy,
 * once every missing page has come: a cancel is refused at both ends for
 * as long as that takes). Before GO,
 * even while the destination verifies, a cancel is taken and the source
 * resumes its guest. At the destination a cancel is taken until the
 * moment the verified guest is about to be resumed (the guest is then not
 * resumed, and the source, told nothing more, leaves its own stopped and
 * fails with -ENOTRECOVERABLE if it had sent GO); after that it is
 * refused (-EBUSY).
 * Return: 0; -EINVAL if @s is NULL; -EALREADY if it had already ended;
 * -EBUSY if the guest was already handed over (source) or is being
 * resumed (destination).
 */
int precopy_cancel(struct precopy_session *s);

/**
 * precopy_query_sized() - copy the current statistics into @out, whose
 * size is @size (sizeof(struct precopy_stats) as the caller was built);
 * fields past what this library knows are zeroed. Safe from any thread.
 * Call it through precopy_query(). Since symbol version PRECOPY_0.3.
 * Return: 0; -EINVAL if an argument is NULL or @size is below
 * PRECOPY_STATS_SIZE_0_1.
 */
int precopy_query_sized(struct precopy_session *s, struct precopy_stats *out, size_t size);

/**
 * precopy_query() - copy the current statistics into @out: every field
 * this header declares. Safe from any thread.
 * Return: 0; -EINVAL if an argument is NULL.
 */
static inline int precopy_query(struct precopy_session *s, struct precopy_stats *out)
{
	return precopy_query_sized(s, out, sizeof(*out));
}

/**
 * precopy_strerror() - the last failure's description into @buf (with its
 * NUL, truncated to @len). Return: 0; -EINVAL for NULL arguments.
 */
int precopy_strerror(struct precopy_session *s, char *buf, size_t len);

/** precopy_status_name() - "setup", "bulk", "iterate", "completed"... never NULL. */
const char *precopy_status_name(enum precopy_status st);

/** precopy_dirty_mode_name() - "uffd-wp", "soft-dirty"... never NULL. */
const char *precopy_dirty_mode_name(enum precopy_dirty_mode m);

#ifdef __cplusplus
}
#endif

#endif /* PRECOPY_H */

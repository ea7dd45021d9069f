/* SPDX-License-Identifier: MIT */
/*
 * session.h - the session object shared by api.c, expect.c, source.c,
 * switchover.c and dest.c.
 */
#ifndef PC_SESSION_H
#define PC_SESSION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "dirty.h"
#include "policy.h"
#include "precopy.h"
#include "transport.h"
#include "wire.h"

/** Pages a channel owns in a row before the next channel's turn. */
#define PC_CHUNK_WORDS 4 /* 4 bitmap words = 256 pages = 1 MiB */

struct pc_uffd_place;

struct pc_region {
	uint8_t *addr;
	size_t len;
	uint64_t npages;
	uint64_t word_base;          /**< first word in the session bitmap */
	enum precopy_dirty_mode mode;
	struct pc_dirty *dirty;      /**< source: the tracker */
	/** source, while migrating: pages hinted free since they were last
	 *  found dirty; a pending page with its bit set goes as a FREE run */
	_Atomic uint64_t *free_bm;
	uint64_t *hash;              /**< per-page checksums (both ends) */
	int fd;                      /**< memfd behind the region (ours, a dup), or -1 */
	uint64_t fd_offset;          /**< where the region starts in @fd */
};

enum pc_run_state {
	PC_IDLE = 0,
	PC_RUNNING,
	PC_ENDED,
};

struct precopy_session {
	enum precopy_role role;
	struct precopy_params params;
	struct precopy_callbacks cb;

	struct pc_region reg[PRECOPY_MAX_REGIONS];
	unsigned nreg;
	uint64_t total_pages;
	uint64_t nwords;             /**< words of the session bitmap */
	uint16_t *word_region;       /**< bitmap word -> region */

	atomic_int run_state;        /**< enum pc_run_state */
	atomic_bool cancel;
	atomic_uint params_gen;      /**< bumped by every precopy_set_param() */
	atomic_bool committed;       /**< COMPLETE is on its way (source), the guest is being resumed (dest) */

	/* lock protects: st, tp and lst (for cancel), the error text, and
	 * params once the session runs (precopy_set_param()) */
	pthread_mutex_t lock;
	struct precopy_stats st;
	uint64_t t_start;            /**< ns, monotonic */
	struct pc_transport *tp;
	struct pc_listener *lst;
	const struct pc_transport_ops *ops;
	uint8_t *key;                /**< precopy_set_auth_key(), or NULL */
	size_t key_len;
	enum precopy_registration reg_mode; /**< precopy_set_registration() */
	/* what the transport registered with its device (under lock), taken
	 * just before it is closed; have_reg_stats if it registers memory */
	struct pc_tp_reg_stats reg_stats;
	bool have_reg_stats;
	/* Free-page hints (source): the pending set (the source's session
	 * bitmap) while hints are taken, i.e. from the moment the dirty log
	 * is armed and the bulk pass is queued until the switchover; NULL
	 * otherwise. Under lock, so a hint never outlives the bitmap. */
	_Atomic uint64_t *hint_pending;
	bool hints_closed;           /**< the switchover started: too late (under lock) */
	/* parameters that are not fields of struct precopy_params (under
	 * lock, like params) */
	struct pc_xparams {
		bool populate;       /**< PRECOPY_PARAM_POPULATE */
		/** PRECOPY_PARAM_MAX_FORCED_DOWNTIME, ms (0 = no bound) */
		uint64_t max_forced_downtime_ms;
		/** PRECOPY_PARAM_DEVICE_STATE_SIZE, bytes (0 = unknown: see
		 *  pc_device_state_last for the fallback) */
		uint64_t device_state_size;
	} xparams;

	/* Destination: the userfaultfd of a postcopy that failed with pages
	 * still missing; kept open until precopy_delete() so that the
	 * guest's accesses to them wait rather than find them empty. */
	struct pc_uffd_place *uffd_kept;

	/* precopy_set_tls(): a deep copy (strings and key owned here) */
	struct precopy_tls tls;
	bool have_tls;
};

/** What the last migration in this process sent as device state (a
 *  session runs once: the next one's guess when the VMM gives no hint). */
extern _Atomic uint64_t pc_device_state_last;

/** pc_now() - monotonic nanoseconds. */
uint64_t pc_now(void);

/** pc_fail() - record the first failure's text; returns @err. */
int pc_fail(struct precopy_session *s, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/** pc_host_memory() - this host's RAM plus swap in bytes (UINT64_MAX if
 *  unknown). */
uint64_t pc_host_memory(void);

/** pc_region_need() - bytes a region of @len needs here: the memory and its
 *  checksum table. */
uint64_t pc_region_need(uint64_t len);

/** pc_set_status() - change status under the lock and report progress. */
void pc_set_status(struct precopy_session *s, enum precopy_status st);

/** pc_progress() - call the progress hook with a fresh snapshot. */
void pc_progress(struct precopy_session *s);

/** pc_params_snapshot() - copy the parameters (lock held inside) and
 *  return the generation they are of (compare with params_gen). */
unsigned pc_params_snapshot(struct precopy_session *s, struct precopy_params *out);

/** pc_snapshot() - copy the stats (lock held inside). */
void pc_snapshot(struct precopy_session *s, struct precopy_stats *out);

/** pc_err_context() - why the transport failed, else strerror(-err). */
const char *pc_err_context(struct precopy_session *s, int err);

/** pc_deadline() - *@ts = now on @clock plus @ns (for pthread_cond_timedwait). */
void pc_deadline(struct timespec *ts, clockid_t clock, uint64_t ns);

/** pc_sleep_ns() - sleep, waking early if the session is cancelled. */
void pc_sleep_ns(struct precopy_session *s, uint64_t ns);

/**
 * pc_session_set_listener() - internal, for tests and fuzzing: make @l
 * (e.g. pc_tcp_listener_from_fds()) the destination's listener instead of
 * precopy_listen(); the session owns it from then on.
 * Return: 0; -EINVAL; -EBUSY if already listening or started.
 */
int pc_session_set_listener(struct precopy_session *s, struct pc_listener *l);

/**
 * pc_session_reg_stats() - internal, for the CLI: what the session's last
 * connection registered with its device (RDMA: time in ibv_reg_mr, bytes,
 * memory regions) for guest memory, once the migration has ended.
 * The public stats carry the same since PRECOPY_0.3 (registered...).
 * Return: 0; -EINVAL; -ENODATA if the transport registers no memory or
 * the migration has not ended.
 */
int pc_session_reg_stats(struct precopy_session *s, struct pc_tp_reg_stats *out);

/**
 * pc_populate() - allocate every page of [@addr, +@len) before it is
 * written: MADV_HUGEPAGE where the mapping allows, then
 * MADV_POPULATE_WRITE in up to @threads threads (0 = one per CPU), or,
 * where the kernel lacks it, a write of each page that keeps its contents
 * (an atomic OR of 0). Pages land where the mapping's memory policy says.
 * Return: bytes populated (all of @len unless memory ran out), or a
 * negative errno for bad arguments.
 */
int64_t pc_populate(void *addr, size_t len, unsigned threads);

/** pc_thread_faults() - minor + major page faults of the calling thread. */
uint64_t pc_thread_faults(void);

/** pc_thread_cpu_ns() - CPU time of the calling thread, ns. */
uint64_t pc_thread_cpu_ns(void);

/**
 * struct pc_expect - the record a step of the protocol waits for, and how
 * its failures read: each text a printf format with one %s (the
 * transport's context, the decoder's reason, the peer's text, the name of
 * the type that came). A NULL text leaves that failure unrecorded.
 */
struct pc_expect {
	unsigned type;          /**< the record type wanted */
	unsigned type2;         /**< another type taken as well, or 0 */
	const char *lost;       /**< the transport failed */
	const char *malformed;  /**< the record does not decode */
	const char *gave_up;    /**< an ERROR record (NULL: as another type) */
	const char *other;      /**< another type (NULL: returned to the caller) */
	bool quiet_cancel;      /**< the transport failed in a cancelled session: -ECANCELED, no text */
	bool msgsize_proto;     /**< a record too big for the buffer is -EPROTO */
};

/**
 * pc_recv_expect() - receive the next record on channel @chan of the
 * session's transport into @buf (@cap bytes), decode it into *@m
 * (pointers into @buf), and check it is of the type @ex wants. An ERROR
 * record fails with its status (-EIO if 0). @why (may be NULL): the
 * decoder's reason when the record is malformed, else untouched.
 * Return: 0; 1 if another type came and @ex->other is NULL (*@m holds
 * it); a negative errno, recorded with pc_fail() as @ex says.
 */
int pc_recv_expect(struct precopy_session *s, unsigned chan, uint8_t *buf, size_t cap,
		   const struct pc_expect *ex, struct pc_wire_msg *m, char *why, size_t whylen);

int pc_source_run(struct precopy_session *s, const char *uri);
int pc_dest_run(struct precopy_session *s);

#endif /* PC_SESSION_H */

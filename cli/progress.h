/* SPDX-License-Identifier: MIT */
/*
 * progress.h - the progress line a person sees on a terminal, and the
 * estimate of the time to switchover it shows.
 */
#ifndef PC_PROGRESS_H
#define PC_PROGRESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "precopy.h"

/* --- the estimate of the time to switchover (pure, no I/O) --------------- */

/** What the switchover estimate is made from; rates in bytes/s. */
struct pc_eta_in {
	uint64_t pending;     /**< dirty bytes still to send (the stats' remaining) */
	uint64_t bulk_unsent; /**< bulk pass: bytes the pass has not reached yet;
				   0 in later passes */
	bool bulk;            /**< the bulk pass is running */
	uint64_t total;       /**< bytes of RAM */
	double send_bps;      /**< bytes actually sent per second */
	double switch_bps;    /**< bandwidth the switchover test assumes (the
				   busy-time estimate or avail-switchover-bandwidth) */
	double dirty_bps;     /**< bytes the guest dirties per second */
	uint64_t limit_ms;    /**< downtime limit */
};

enum pc_eta_kind {
	PC_ETA_UNKNOWN = 0,     /**< no rate measured yet */
	PC_ETA_SECONDS,         /**< switchover expected in *seconds */
	PC_ETA_NOT_CONVERGING,  /**< the guest dirties as fast as we send */
};

/**
 * pc_eta() - when the policy will switch over, if the rates hold: the
 * current pass is finished at send_bps (the bulk pass sends what it has not
 * reached; what was dirtied behind it waits for the next pass), each pass
 * leaves what the guest dirtied while it ran, and the first pass end whose
 * pending bytes fit in the downtime limit at switch_bps is the switchover.
 * Return: the kind; *@seconds is set for PC_ETA_SECONDS.
 */
enum pc_eta_kind pc_eta(const struct pc_eta_in *in, double *seconds);

/* --- the line ------------------------------------------------------------- */

#define PC_PROGRESS_SAMPLES 64

struct pc_progress_sample {
	uint64_t ms;        /**< total-time of the sample */
	uint64_t remaining; /**< bytes */
	uint64_t done;      /**< pages sent, zero or skipped as free, cumulative */
	uint64_t bytes;     /**< bytes put on (or taken off) the transport */
};

/*
 * One migration's progress line on standard error. Drawn only when
 * standard error is a terminal (and neither --quiet nor --json): redrawn in
 * place (carriage return, erase to end of line), cut to the terminal's
 * width so it never wraps, and ended with a newline by pc_progress_end()
 * before anything else is printed. A thread redraws it four times a second
 * so that long steps without a page (connecting, a TLS handshake, memory
 * registration) still show what is being done and for how long.
 */
struct pc_progress {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	pthread_t ticker;
	bool draw;         /* a terminal: drawing at all */
	bool running;      /* the ticker runs */
	bool stop;
	bool line_open;    /* something drawn since the last newline */
	bool source;
	bool have_st;
	int cols;
	struct precopy_session *s; /* queried by the ticker (destination), or NULL */
	struct precopy_stats st;   /* the latest stats */
	struct pc_progress_sample smp[PC_PROGRESS_SAMPLES];
	unsigned nsmp;             /* samples taken (ring of PC_PROGRESS_SAMPLES) */
	uint64_t t0_ns;            /* when pc_progress_start() was called */
	uint64_t t_st_ns;          /* when st was taken */
	uint64_t limit_ms, avail_bps;
	char what[160];            /* what setup is doing */
	FILE *f;
};

/**
 * pc_progress_start() - begin a line for @role ("source" or
 * "destination") on @f (standard error). Nothing is drawn when @draw is
 * false. @what says what the time before the first page is spent on.
 */
void pc_progress_start(struct pc_progress *p, FILE *f, bool draw, bool source,
		       const struct precopy_params *params, const char *what);

/** pc_progress_attach() - the session whose stats the ticker may query
 *  (NULL to detach, before the session is deleted). */
void pc_progress_attach(struct pc_progress *p, struct precopy_session *s);

/** pc_progress_stats() - new stats (from the progress callback); redraws. */
void pc_progress_stats(struct pc_progress *p, const struct precopy_stats *st);

/** pc_progress_note() - change what the line says setup is doing. */
void pc_progress_note(struct pc_progress *p, const char *what);

/**
 * pc_progress_end() - stop the ticker; the line, if one was drawn, is
 * drawn a last time from the final stats (if @st is not NULL) and ended
 * with a newline, or with @erase erased (a step that leaves no trace).
 * Either way the cursor is at column 0 after it. Safe to call twice.
 */
void pc_progress_end(struct pc_progress *p, const struct precopy_stats *st, bool erase);

/**
 * pc_progress_format() - the text of the line (no control characters)
 * for the stats in @p at @elapsed_ms, into @buf of @len bytes.
 */
void pc_progress_format(struct pc_progress *p, uint64_t elapsed_ms, char *buf, size_t len);

#endif /* PC_PROGRESS_H */

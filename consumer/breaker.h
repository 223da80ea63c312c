/*
 * breaker.h - the per-worker circuit breaker (internal): closed -> open ->
 * half-open -> closed, so a worker stops taking messages while the
 * dependency its handler calls is down, instead of burning their attempts.
 *
 * Pure and clock-injected: every call takes `now_ms` (a monotonic clock),
 * so the unit tests drive every transition with a fake clock. The struct is
 * public only so a worker can embed it; touch it through these functions.
 */
#ifndef WARREN_BREAKER_H
#define WARREN_BREAKER_H

#include "config.h"

#include <stdint.h>

/* Outcomes needed in the window before failure_ratio may open the breaker:
 * one failure out of two attempts says nothing about a dependency. */
#define WARREN__BREAKER_MIN_OUTCOMES 10
/* The failure_ratio window is kept as this many buckets of window_s/N
 * each, so its memory is fixed whatever window_s is; outcomes leave the
 * window one bucket at a time. */
#define WARREN__BREAKER_BUCKETS 20

typedef enum {
    WARREN__BREAKER_CLOSED = 0,
    WARREN__BREAKER_OPEN = 1,
    WARREN__BREAKER_HALF_OPEN = 2
} warren__breaker_state;

/* What became of a call allow() let through. */
typedef enum {
    WARREN__BREAKER_SUCCEEDED = 0, /* handler result ACK */
    WARREN__BREAKER_FAILED = 1,    /* RETRY, DEAD or a timeout */
    WARREN__BREAKER_CANCELLED = 2  /* never ran, or was abandoned: neither */
} warren__breaker_outcome;

typedef struct {
    int64_t index; /* now_ms / bucket width when last written */
    uint32_t ok, failed;
} warren__breaker_bucket;

typedef struct {
    warren__breaker_cfg cfg; /* copied */
    const char *queue;       /* borrowed, for logs; may be NULL */
    int enabled;
    warren__breaker_state state;
    int64_t opened_at_ms;
    uint32_t consecutive;    /* failures in a row while closed */
    uint32_t trials_started; /* half-open */
    uint32_t trials_ok;      /* half-open */
    int64_t bucket_ms;
    warren__breaker_bucket buckets[WARREN__BREAKER_BUCKETS];
    uint64_t transitions[3]; /* transitions into each state */
    uint64_t generation;     /* +1 on every transition (gobreaker's) */
} warren__breaker;

/* Starts closed. `queue` is borrowed for log lines and must outlive `b`.
 * A config with consecutive_failures and failure_ratio both 0 gives a
 * breaker that always allows and never opens. */
void warren__breaker_init(warren__breaker *b, const warren__breaker_cfg *cfg,
                          const char *queue);

/* Milliseconds until messages may be taken again: 0 when closed or
 * half-open, the rest of open_s when open. Moves open -> half-open (logged)
 * once open_s has passed. */
int64_t warren__breaker_wait_ms(warren__breaker *b, int64_t now_ms);

/* May one message start now? Closed: yes. Open: no (until open_s has
 * passed: then half-open). Half-open: yes for up to half_open_max trial
 * messages, each counted as started here; the caller must then record()
 * the outcome of every message it was allowed to start. */
int warren__breaker_allow(warren__breaker *b, int64_t now_ms);

/* Records the outcome of a message allowed by allow(): `failed` is 1 for a
 * handler result RETRY or DEAD or a timeout, 0 for ACK. Duplicates and
 * deferrals never ran a handler and are not recorded. Closed: opens on
 * consecutive_failures in a row, or when at least
 * WARREN__BREAKER_MIN_OUTCOMES outcomes in the last window_s fail at
 * failure_ratio or more. Half-open: one failure re-opens, half_open_max
 * successes close. Outcomes recorded while open are ignored. */
void warren__breaker_record(warren__breaker *b, int failed, int64_t now_ms);

/* The breaker's generation: read it right after allow() said yes and hand
 * it to done() with the call's outcome. It changes on every transition. */
uint64_t warren__breaker_generation(const warren__breaker *b);

/* As record(), for a call allowed in `generation`. An outcome from an
 * earlier generation (the breaker has changed state since the call was let
 * through) is discarded, as gobreaker does. CANCELLED counts as neither
 * success nor failure: in half-open it gives the trial slot back. */
void warren__breaker_done(warren__breaker *b, uint64_t generation,
                          warren__breaker_outcome outcome, int64_t now_ms);

/* Opens the breaker now for open_s (logged with `why`), whatever its
 * thresholds, even when it is off: the retry budget's "pause" uses it. A
 * breaker opened this way goes half-open and closes like any other. No-op
 * when already open. */
void warren__breaker_trip(warren__breaker *b, int64_t now_ms, const char *why);

warren__breaker_state warren__breaker_state_of(const warren__breaker *b);
/* "closed", "open", "half_open". */
const char *warren__breaker_state_name(warren__breaker_state s);
/* How many times the breaker has moved into state `to` (for metrics). */
uint64_t warren__breaker_transitions(const warren__breaker *b,
                                     warren__breaker_state to);

#endif /* WARREN_BREAKER_H */

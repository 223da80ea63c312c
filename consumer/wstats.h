/*
 * wstats.h - a worker's live figures, in a struct that may sit in memory
 * shared with the supervisor (internal).
 *
 * `warren run` maps one slot per worker (MAP_SHARED, before fork) and hands
 * it to the worker with warren__worker_share(); the worker writes, the
 * supervisor reads for /metrics and to end a handler that outlives its
 * deadline. Every field is a lock-free atomic written with relaxed order:
 * each is a figure on its own, and a reader may see one a batch older than
 * another. Without sharing, a worker keeps its slot in its own struct.
 */
#ifndef WARREN_WSTATS_H
#define WARREN_WSTATS_H

#include "warren.h"

#include <stdatomic.h>
#include <stdint.h>

/* Upper bounds (ms) of the handler latency histogram buckets; a last
 * bucket, +Inf, follows them. Prometheus wants seconds: divide by 1000. */
#define WARREN__LAT_BOUNDS_MS                                                  \
    { 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000 }
#define WARREN__LAT_BUCKETS 15 /* 14 bounds + Inf */

typedef struct warren__wstats {
    /* Indexed by warren_stat (received, acked, retried, dead, duplicate,
     * deferred). */
    _Atomic uint64_t counters[WARREN_STAT_DEFERRED + 1];
    /* Handler calls: per latency bucket (not cumulative), sum in µs. */
    _Atomic uint64_t latency[WARREN__LAT_BUCKETS];
    _Atomic uint64_t latency_sum_us;
    _Atomic uint64_t handler_failures; /* results other than ACK */
    _Atomic int64_t in_flight;         /* deliveries taken, not yet settled */
    _Atomic int breaker_state;         /* warren__breaker_state */
    _Atomic uint64_t breaker_opened;   /* transitions into open */
    _Atomic int connected;             /* 1 while a session is up */
    _Atomic uint64_t reconnects;       /* sessions opened after the first */
    /* While an in-process handler runs with a deadline: that deadline plus
     * nothing (CLOCK_MONOTONIC ms, comparable across processes); else 0.
     * The supervisor ends the worker once now passes it plus a grace. */
    _Atomic int64_t handler_deadline_mono_ms;
    _Atomic int64_t pid; /* the worker process writing here */
    /* Handler calls by handler: [0] primary, [1] breaker.fallback. */
    _Atomic uint64_t handler_calls[2];
    /* Transitions into each warren__breaker_state (closed, open, half). */
    _Atomic uint64_t breaker_transitions[3];
    /* While a handler runs on a message the store tracks: 1, and its id in
     * running_id (NUL-terminated; written before the flag is set, with
     * release order); else 0. The supervisor reads them only once the
     * worker is dead (stable then), to tell the store that this id's
     * handler was running when it died (cli/run.c). */
    _Atomic int running;
    char running_id[256 + 1]; /* WARREN__ID_MAX + 1 */
} warren__wstats;

/* Makes `w` write its figures into `slot` (borrowed: must outlive `w`;
 * zeroed by the caller) instead of its own. Call before warren_worker_run.
 */
void warren__worker_share(warren_worker *w, warren__wstats *slot);

/* Puts a latency in its bucket (ms) and adds it to the sum. */
void warren__wstats_latency(warren__wstats *s, int64_t us);

#endif /* WARREN_WSTATS_H */

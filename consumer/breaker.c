/*
 * breaker.c - the classic circuit breaker, one per worker process.
 *
 * Closed, it counts failures; when too many come in a row, or too large a
 * share of a sliding window fails, it opens: the worker takes no message
 * for open_s, so messages wait in the queue without spending attempts.
 * Then half-open lets half_open_max trial messages through: all succeed and
 * it closes, one fails and it opens again. Every transition is logged
 * (event "breaker", outcome = the new state) and counted. Each transition
 * starts a new generation: an outcome reported for a call let through in
 * an earlier one is discarded, and a call that never ran (cancelled) counts
 * as neither success nor failure (docs/operations.md compares this with
 * gobreaker point by point).
 */
#include "breaker.h"

#include "log.h"

#include <stdio.h>
#include <string.h>

const char *warren__breaker_state_name(warren__breaker_state s) {
    switch (s) {
    case WARREN__BREAKER_OPEN:
        return "open";
    case WARREN__BREAKER_HALF_OPEN:
        return "half_open";
    default:
        return "closed";
    }
}

static void clear_window(warren__breaker *b) {
    memset(b->buckets, 0, sizeof b->buckets);
    for (int i = 0; i < WARREN__BREAKER_BUCKETS; i++) {
        b->buckets[i].index = -1;
    }
    b->consecutive = 0;
}

void warren__breaker_init(warren__breaker *b, const warren__breaker_cfg *cfg,
                          const char *queue) {
    memset(b, 0, sizeof *b);
    b->cfg = *cfg;
    b->queue = queue;
    b->enabled = cfg->consecutive_failures > 0 || cfg->failure_ratio > 0;
    if (b->cfg.half_open_max == 0) {
        b->cfg.half_open_max = 1;
    }
    int64_t window_ms = (int64_t)(cfg->window_s ? cfg->window_s : 1) * 1000;
    b->bucket_ms = window_ms / WARREN__BREAKER_BUCKETS;
    if (b->bucket_ms < 1) {
        b->bucket_ms = 1;
    }
    b->state = WARREN__BREAKER_CLOSED;
    clear_window(b);
}

static void move_to(warren__breaker *b, warren__breaker_state to,
                    int64_t now_ms, const char *why) {
    warren__breaker_state from = b->state;
    b->state = to;
    b->transitions[to]++;
    b->generation++;
    switch (to) {
    case WARREN__BREAKER_OPEN:
        b->opened_at_ms = now_ms;
        break;
    case WARREN__BREAKER_HALF_OPEN:
        b->trials_started = 0;
        b->trials_ok = 0;
        break;
    case WARREN__BREAKER_CLOSED:
        /* Failures from before the outage must not re-open it at once. */
        clear_window(b);
        break;
    }
    warren__log(to == WARREN__BREAKER_OPEN ? WARREN_LOG_WARN : WARREN_LOG_INFO,
                &(warren__log_fields){"breaker", b->queue, NULL,
                                      warren__breaker_state_name(to), -1, -1},
                "breaker from %s to %s (%s #%llu): %s",
                warren__breaker_state_name(from),
                warren__breaker_state_name(to), warren__breaker_state_name(to),
                (unsigned long long)b->transitions[to], why);
}

int64_t warren__breaker_wait_ms(warren__breaker *b, int64_t now_ms) {
    /* An off breaker is never open unless trip() opened it. */
    if (b->state != WARREN__BREAKER_OPEN) {
        return 0;
    }
    int64_t until = b->opened_at_ms + (int64_t)b->cfg.open_s * 1000;
    if (now_ms < until) {
        return until - now_ms;
    }
    char why[128];
    snprintf(why, sizeof why,
             "open_s %u passed, letting %u trial message%s "
             "through",
             b->cfg.open_s, b->cfg.half_open_max,
             b->cfg.half_open_max == 1 ? "" : "s");
    move_to(b, WARREN__BREAKER_HALF_OPEN, now_ms, why);
    return 0;
}

int warren__breaker_allow(warren__breaker *b, int64_t now_ms) {
    if (!b->enabled && b->state == WARREN__BREAKER_CLOSED) {
        return 1;
    }
    if (warren__breaker_wait_ms(b, now_ms) > 0) {
        return 0;
    }
    if (b->state == WARREN__BREAKER_HALF_OPEN) {
        if (b->trials_started >= b->cfg.half_open_max) {
            return 0;
        }
        b->trials_started++;
    }
    return 1;
}

/* Adds one outcome to the window and returns the window's totals. */
static void window_add(warren__breaker *b, int failed, int64_t now_ms,
                       uint32_t *ok, uint32_t *bad) {
    int64_t idx = (now_ms > 0 ? now_ms : 0) / b->bucket_ms;
    warren__breaker_bucket *cur = &b->buckets[idx % WARREN__BREAKER_BUCKETS];
    if (cur->index != idx) {
        cur->index = idx;
        cur->ok = 0;
        cur->failed = 0;
    }
    if (failed) {
        cur->failed++;
    } else {
        cur->ok++;
    }
    *ok = 0;
    *bad = 0;
    for (int i = 0; i < WARREN__BREAKER_BUCKETS; i++) {
        const warren__breaker_bucket *k = &b->buckets[i];
        if (k->index > idx - WARREN__BREAKER_BUCKETS && k->index <= idx) {
            *ok += k->ok;
            *bad += k->failed;
        }
    }
}

void warren__breaker_record(warren__breaker *b, int failed, int64_t now_ms) {
    warren__breaker_done(
        b, b->generation,
        failed ? WARREN__BREAKER_FAILED : WARREN__BREAKER_SUCCEEDED, now_ms);
}

uint64_t warren__breaker_generation(const warren__breaker *b) {
    return b->generation;
}

void warren__breaker_trip(warren__breaker *b, int64_t now_ms, const char *why) {
    if (b->state != WARREN__BREAKER_OPEN) {
        move_to(b, WARREN__BREAKER_OPEN, now_ms, why);
    }
}

void warren__breaker_done(warren__breaker *b, uint64_t generation,
                          warren__breaker_outcome outcome, int64_t now_ms) {
    char why[160];
    int failed = outcome == WARREN__BREAKER_FAILED;
    if (generation != b->generation) {
        return; /* let through before the last transition: stale */
    }
    if (outcome == WARREN__BREAKER_CANCELLED) {
        if (b->state == WARREN__BREAKER_HALF_OPEN &&
            b->trials_started > b->trials_ok) {
            b->trials_started--;
        }
        return;
    }
    if (b->state == WARREN__BREAKER_HALF_OPEN) {
        if (failed) {
            move_to(b, WARREN__BREAKER_OPEN, now_ms, "a trial message failed");
        } else if (++b->trials_ok >= b->cfg.half_open_max) {
            snprintf(why, sizeof why, "%u trial message%s succeeded",
                     b->trials_ok, b->trials_ok == 1 ? "" : "s");
            move_to(b, WARREN__BREAKER_CLOSED, now_ms, why);
        }
        return;
    }
    if (b->state != WARREN__BREAKER_CLOSED || !b->enabled) {
        return; /* a late outcome says nothing new while open */
    }
    uint32_t ok, bad;
    window_add(b, failed, now_ms, &ok, &bad);
    b->consecutive = failed ? b->consecutive + 1 : 0;
    if (b->cfg.consecutive_failures > 0 &&
        b->consecutive >= b->cfg.consecutive_failures) {
        snprintf(why, sizeof why, "%u consecutive failures", b->consecutive);
        move_to(b, WARREN__BREAKER_OPEN, now_ms, why);
        return;
    }
    uint32_t total = ok + bad;
    if (b->cfg.failure_ratio > 0 && total >= WARREN__BREAKER_MIN_OUTCOMES &&
        (double)bad >= b->cfg.failure_ratio * (double)total) {
        snprintf(why, sizeof why,
                 "%u of the last %u outcomes in %u s failed (failure_ratio "
                 "%.2f)",
                 bad, total, b->cfg.window_s, b->cfg.failure_ratio);
        move_to(b, WARREN__BREAKER_OPEN, now_ms, why);
    }
}

warren__breaker_state warren__breaker_state_of(const warren__breaker *b) {
    return b->state;
}

uint64_t warren__breaker_transitions(const warren__breaker *b,
                                     warren__breaker_state to) {
    if ((int)to < 0 || (int)to > 2) {
        return 0;
    }
    return b->transitions[to];
}

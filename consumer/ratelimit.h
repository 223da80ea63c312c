/*
 * ratelimit.h - a token bucket (internal) that paces handler calls.
 *
 * Pure and clock-injected: every call takes `now_ms` from a monotonic
 * clock, so the unit tests check the arithmetic with a fake clock. The
 * bucket refills at `rate` tokens a second up to a burst of max(1, rate/10)
 * and starts full. The struct is public only so a worker can embed it.
 */
#ifndef WARREN_RATELIMIT_H
#define WARREN_RATELIMIT_H

#include <stdint.h>

typedef struct {
    double rate_per_ms; /* 0: unlimited */
    double burst;
    double tokens;
    int64_t last_ms;
} warren__ratelimit;

/* `rate_per_s` <= 0 (or not a number) means unlimited: take() always
 * succeeds. */
void warren__ratelimit_init(warren__ratelimit *r, double rate_per_s,
                            int64_t now_ms);

/* Takes one token if there is one and returns 0; otherwise takes nothing
 * and returns how many milliseconds (>= 1) until one will be there. A clock
 * that goes backwards adds nothing. */
int64_t warren__ratelimit_take(warren__ratelimit *r, int64_t now_ms);

/* Tokens the bucket holds at most (0 when unlimited). */
double warren__ratelimit_burst(const warren__ratelimit *r);

#endif /* WARREN_RATELIMIT_H */

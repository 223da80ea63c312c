/*
 * ratelimit.c - the token bucket behind "rate_limit_per_s".
 *
 * Tokens accumulate with elapsed time, so pacing has no drift however the
 * caller's sleeps round; a burst of rate/10 (at least one) lets a worker
 * that was idle start at once without ever exceeding the rate by more than
 * a tenth of a second's worth of messages.
 */
#include "ratelimit.h"

#include <math.h>

#define EPSILON 1e-9

void warren__ratelimit_init(warren__ratelimit *r, double rate_per_s,
                            int64_t now_ms) {
    r->last_ms = now_ms;
    if (!(rate_per_s > 0) || isinf(rate_per_s)) {
        r->rate_per_ms = 0;
        r->burst = 0;
        r->tokens = 0;
        return;
    }
    r->rate_per_ms = rate_per_s / 1000.0;
    r->burst = rate_per_s / 10.0 > 1.0 ? rate_per_s / 10.0 : 1.0;
    r->tokens = r->burst;
}

int64_t warren__ratelimit_take(warren__ratelimit *r, int64_t now_ms) {
    if (r->rate_per_ms <= 0) {
        return 0;
    }
    if (now_ms > r->last_ms) {
        r->tokens += (double)(now_ms - r->last_ms) * r->rate_per_ms;
        if (r->tokens > r->burst) {
            r->tokens = r->burst;
        }
        r->last_ms = now_ms;
    }
    /* The epsilon absorbs rounding dust from summing fractional refills,
     * which would otherwise add a spurious millisecond now and then. */
    if (r->tokens >= 1.0 - EPSILON) {
        r->tokens = r->tokens > 1.0 ? r->tokens - 1.0 : 0.0;
        return 0;
    }
    double wait = ceil((1.0 - r->tokens) / r->rate_per_ms - EPSILON);
    return wait < 1.0 ? 1 : (int64_t)wait;
}

double warren__ratelimit_burst(const warren__ratelimit *r) {
    return r->burst;
}

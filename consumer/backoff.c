/*
 * backoff.c - how long a failed message waits before its next attempt, and
 * the process's source of jitter; also the reconnect/restart schedule
 * that a worker's session and `warren run`'s supervisor share.
 *
 * The delay functions are pure: same policy, attempt and `u`, same answer.
 * They never overflow (the exponent is applied in double precision and
 * clamped before converting back), never exceed the policy's max_ms (when
 * set) or WARREN__DELAY_MAX_MS, and grow monotonically with the attempt.
 * warren__rng_uniform() is the only impure part: a per-thread xorshift
 * generator seeded from getrandom() and re-seeded after fork.
 */
#include "backoff.h"

#include <math.h>
#include <stdint.h>
#include <sys/random.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* The cap that applies to every kind: max_ms when configured (0 means
 * unset), and never more than the cascade can express. */
static double cap_ms(const warren__backoff_cfg *b) {
    if (b->max_ms > 0 && b->max_ms < WARREN__DELAY_MAX_MS) {
        return (double)b->max_ms;
    }
    return (double)WARREN__DELAY_MAX_MS;
}

static uint32_t clamp_round(double d, double cap) {
    if (!(d > 0.0)) { /* also catches NaN */
        return 0;
    }
    if (d >= cap) {
        return (uint32_t)cap;
    }
    long long r = llround(d);
    return r > (long long)cap ? (uint32_t)cap : (uint32_t)r;
}

uint32_t warren__backoff_base_ms(const warren__backoff_cfg *b, int attempt) {
    double cap = cap_ms(b);
    double d = 0.0;
    if (attempt < 1) {
        attempt = 1;
    }
    switch (b->kind) {
    case WARREN__BACKOFF_FIXED:
        d = b->delay_ms;
        break;
    case WARREN__BACKOFF_EXPONENTIAL: {
        double m = b->multiplier < 1.0 ? 1.0 : b->multiplier;
        if (b->initial_ms == 0) {
            d = 0.0; /* 0 * inf would be NaN */
        } else {
            /* pow() saturates to +inf rather than wrapping, and the
             * exponent fits a double exactly up to INT_MAX. */
            d = (double)b->initial_ms * pow(m, (double)(attempt - 1));
        }
        break;
    }
    case WARREN__BACKOFF_LIST:
        if (b->n_delays == 0 || b->delays_ms == NULL) {
            d = 0.0;
        } else if ((size_t)(attempt - 1) < b->n_delays) {
            d = b->delays_ms[attempt - 1];
        } else {
            d = b->delays_ms[b->n_delays - 1];
        }
        break;
    }
    return clamp_round(d, cap);
}

/* "full" jitter (AWS's, and gRPC's original retry policy): uniform in
 * [0, base), so never longer than the un-jittered delay and its cap. */
static uint32_t full_jitter(double base, double u) {
    if (!(u >= 0.0)) {
        u = 0.0;
    } else if (u >= 1.0) {
        u = nextafter(1.0, 0.0);
    }
    return clamp_round(base * u, base);
}

uint32_t warren__backoff_delay_ms(const warren__backoff_cfg *b, int attempt,
                                  double u) {
    double base = warren__backoff_base_ms(b, attempt);
    if (b->jitter_style == WARREN__JITTER_FULL) {
        return full_jitter(base, u);
    }
    double j = b->jitter;
    if (!(j > 0.0)) {
        return (uint32_t)base;
    }
    if (j > 1.0) {
        j = 1.0;
    }
    if (!(u >= 0.0)) {
        u = 0.0;
    } else if (u >= 1.0) {
        u = nextafter(1.0, 0.0);
    }
    /* The cap applies after jitter too: max_ms is a promise to the
     * operator, and jitter only spreads delays below it. */
    return clamp_round(base * (1.0 - j + 2.0 * j * u), cap_ms(b));
}

uint32_t warren__backoff_reconnect_ms(int failures) {
    static const warren__backoff_cfg reconnect = {
        .kind = WARREN__BACKOFF_EXPONENTIAL,
        .initial_ms = 500,
        .multiplier = 2.0,
        .max_ms = 30000,
    };
    return warren__backoff_base_ms(&reconnect, failures);
}

/* Per thread, so workers never contend on (or race over) one state. */
static _Thread_local uint64_t rng_state;
static _Thread_local pid_t rng_pid;

static void rng_seed(void) {
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s) {
        /* No entropy yet (early boot): jitter needs spread, not secrecy. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^
            ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)&s;
    }
    rng_state = s ? s : 0x9E3779B97F4A7C15ull;
    rng_pid = getpid();
}

double warren__rng_uniform(void) {
    /* A forked child inherits the parent's state: without re-seeding,
     * every worker of a pool would draw the same jitter. */
    if (rng_state == 0 || rng_pid != getpid()) {
        rng_seed();
    }
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    /* xorshift64*: the top 53 bits give a double uniform in [0, 1). */
    return (double)((x * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
}

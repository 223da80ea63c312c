/*
 * backoff.h - retry delays (internal).
 *
 * Pure arithmetic, no clock and no global randomness: the caller passes a
 * uniform random number, so tests can pin it. Delays never overflow, never
 * exceed the policy's cap (or WARREN__DELAY_MAX_MS), and are monotone in the
 * attempt number before jitter.
 */
#ifndef WARREN_BACKOFF_H
#define WARREN_BACKOFF_H

#include "config.h"

#include <stdint.h>

/* The longest delay the delay cascade can express (2^28 - 1 ms, ~74.5 h). */
#define WARREN__DELAY_LEVELS 28
#define WARREN__DELAY_MAX_MS ((uint32_t)((1u << WARREN__DELAY_LEVELS) - 1))

/* Delay before the retry that follows failed attempt `attempt` (1-based:
 * attempt 1 failed, this is the wait before attempt 2), before jitter. */
uint32_t warren__backoff_base_ms(const warren__backoff_cfg *b, int attempt);

/* The same with jitter applied: base * (1 - j + 2 j u), `u` in [0, 1),
 * clamped to [0, max_ms] (or [0, WARREN__DELAY_MAX_MS] when max_ms is 0);
 * with jitter_style "full", base * u (uniform in [0, base), jitter
 * ignored). */
uint32_t warren__backoff_delay_ms(const warren__backoff_cfg *b, int attempt,
                                  double u);

/* Delay before a worker's next reconnect, or `warren run`'s next restart
 * of a worker, after `failures` consecutive failures (1-based): 500 ms,
 * doubling, at most 30 s; before jitter, which each caller adds its own
 * way. */
uint32_t warren__backoff_reconnect_ms(int failures);

/* A small seam for randomness: returns a uniform double in [0, 1). */
double warren__rng_uniform(void);

#endif /* WARREN_BACKOFF_H */

/*
 * retrybudget.h - a retry budget per worker process (internal): gRPC's
 * retryThrottling, so a queue whose handler fails for everyone stops
 * feeding the delay cascade instead of flooding it.
 *
 * Pure: no clock, no randomness. The budget starts with max_tokens tokens;
 * every failure a retry could follow costs one, every success gives
 * token_ratio back (never above max_tokens). While the tokens are at
 * max_tokens / 2 or fewer, failures are not retried. The struct is public
 * only so a worker can embed it.
 */
#ifndef WARREN_RETRYBUDGET_H
#define WARREN_RETRYBUDGET_H

#include "config.h"

typedef struct {
    double max_tokens; /* 0: no budget, retries always allowed */
    double token_ratio;
    double tokens;
} warren__retrybudget;

/* Starts full. A config with max_tokens 0 gives a budget that never says
 * no. */
void warren__retrybudget_init(warren__retrybudget *b,
                              const warren__budget_cfg *cfg);

/* A handler returned ACK: adds token_ratio, up to max_tokens. */
void warren__retrybudget_success(warren__retrybudget *b);

/* A handler failed in a way a retry could follow (RETRY, a timeout): takes
 * one token (not below 0), then returns 1 if the failure may be retried,
 * 0 if the budget is exhausted (tokens at or below max_tokens / 2). */
int warren__retrybudget_failure(warren__retrybudget *b);

/* 1 while failures are not retried. */
int warren__retrybudget_exhausted(const warren__retrybudget *b);

#endif /* WARREN_RETRYBUDGET_H */

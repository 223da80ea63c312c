/*
 * retrybudget.c - gRPC's retry throttling (gRFC A6 "retryThrottling") for
 * one worker process: a token count between 0 and max_tokens, one token
 * per failure, token_ratio back per success, no retries while it is at
 * half of max_tokens or below. It recovers only through successes, as in
 * gRPC: first attempts always run, so the successes that refill it keep
 * coming once the dependency is back.
 */
#include "retrybudget.h"

void warren__retrybudget_init(warren__retrybudget *b,
                              const warren__budget_cfg *cfg) {
    b->max_tokens = cfg->max_tokens > 0 ? cfg->max_tokens : 0;
    b->token_ratio = cfg->token_ratio > 0 ? cfg->token_ratio : 0;
    b->tokens = b->max_tokens;
}

void warren__retrybudget_success(warren__retrybudget *b) {
    b->tokens += b->token_ratio;
    if (b->tokens > b->max_tokens) {
        b->tokens = b->max_tokens;
    }
}

int warren__retrybudget_exhausted(const warren__retrybudget *b) {
    return b->max_tokens > 0 && b->tokens <= b->max_tokens / 2;
}

int warren__retrybudget_failure(warren__retrybudget *b) {
    if (b->max_tokens <= 0) {
        return 1;
    }
    b->tokens -= 1.0;
    if (b->tokens < 0) {
        b->tokens = 0;
    }
    return !warren__retrybudget_exhausted(b);
}

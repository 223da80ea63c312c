/*
 * test_retrybudget.c - the per-worker retry budget against gRPC's
 * retryThrottling arithmetic: it starts full, a failure costs one token, a
 * success gives token_ratio back (capped at max_tokens), failures are not
 * retried while the tokens are at max_tokens / 2 or fewer, and only
 * successes bring it back. Off (max_tokens 0), it always allows.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "retrybudget.h"

static warren__retrybudget make(double max_tokens, double ratio) {
    warren__budget_cfg c = {max_tokens, ratio, WARREN__BUDGET_DEAD};
    warren__retrybudget b;
    warren__retrybudget_init(&b, &c);
    return b;
}

static void test_off_budget_always_allows(void **state) {
    (void)state;
    warren__retrybudget b = make(0, 0);
    for (int i = 0; i < 10000; i++) {
        assert_true(warren__retrybudget_failure(&b));
    }
    assert_false(warren__retrybudget_exhausted(&b));
}

/* gRPC's example, maxTokens 10, tokenRatio 0.1: 10 -> 5 takes five
 * failures, and the fifth is the first not retried. */
static void test_fifth_failure_of_ten_tokens_is_not_retried(void **state) {
    (void)state;
    warren__retrybudget b = make(10, 0.1);
    for (int i = 0; i < 4; i++) {
        assert_true(warren__retrybudget_failure(&b));
    }
    assert_false(warren__retrybudget_exhausted(&b));
    assert_false(warren__retrybudget_failure(&b));
    assert_true(warren__retrybudget_exhausted(&b));
    /* and it stays so, not below 0 */
    for (int i = 0; i < 100; i++) {
        assert_false(warren__retrybudget_failure(&b));
    }
    assert_true(b.tokens == 0);
}

static void test_only_successes_refill_past_the_threshold(void **state) {
    (void)state;
    warren__retrybudget b = make(10, 0.5);
    for (int i = 0; i < 5; i++) {
        warren__retrybudget_failure(&b);
    }
    assert_true(warren__retrybudget_exhausted(&b)); /* 5 tokens */
    warren__retrybudget_success(&b);                /* 5.5 */
    assert_false(warren__retrybudget_exhausted(&b));
    assert_false(warren__retrybudget_failure(&b)); /* 4.5: not retried */
    for (int i = 0; i < 100; i++) {
        warren__retrybudget_success(&b);
    }
    assert_true(b.tokens == 10); /* capped */
    assert_true(warren__retrybudget_failure(&b));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_off_budget_always_allows),
        cmocka_unit_test(test_fifth_failure_of_ten_tokens_is_not_retried),
        cmocka_unit_test(test_only_successes_refill_past_the_threshold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

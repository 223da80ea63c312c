/*
 * test_ratelimit.c - the token bucket's arithmetic under a fake clock: it
 * starts full with a burst of max(1, rate/10), refills at the rate without
 * drift however the caller's clock readings fall, never holds more than
 * the burst, says how long to wait when empty, treats 0 as unlimited, and
 * ignores a clock that goes backwards.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>

#include "ratelimit.h"

/* Takes tokens as fast as allowed from t0, polling every `step` ms, until
 * `n` have been taken; returns the time of the last take. */
static int64_t take_n(warren__ratelimit *r, int64_t t0, int n, int step) {
    int64_t t = t0;
    for (int taken = 0; taken < n;) {
        if (warren__ratelimit_take(r, t) == 0) {
            taken++;
        } else {
            t += step;
        }
    }
    return t;
}

static void test_starts_full_with_burst_of_a_tenth_of_rate(void **state) {
    (void)state;
    warren__ratelimit r;
    warren__ratelimit_init(&r, 200, 1000);
    assert_true(fabs(warren__ratelimit_burst(&r) - 20.0) < 1e-9);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(warren__ratelimit_take(&r, 1000), 0);
    }
    assert_int_equal(warren__ratelimit_take(&r, 1000), 5); /* 1 / 200 s */
}

static void test_burst_is_at_least_one(void **state) {
    (void)state;
    warren__ratelimit r;
    warren__ratelimit_init(&r, 2, 0);
    assert_true(fabs(warren__ratelimit_burst(&r) - 1.0) < 1e-9);
    assert_int_equal(warren__ratelimit_take(&r, 0), 0);
    assert_int_equal(warren__ratelimit_take(&r, 0), 500);
    assert_int_equal(warren__ratelimit_take(&r, 499), 1);
    assert_int_equal(warren__ratelimit_take(&r, 500), 0);
}

static void test_wait_reported_is_exactly_until_next_token(void **state) {
    (void)state;
    warren__ratelimit r;
    warren__ratelimit_init(&r, 3, 0); /* one token per 333.3 ms */
    assert_int_equal(warren__ratelimit_take(&r, 0), 0);
    int64_t w = warren__ratelimit_take(&r, 0);
    assert_int_equal(w, 334); /* rounded up, never early */
    assert_true(warren__ratelimit_take(&r, 333) > 0);
    assert_int_equal(warren__ratelimit_take(&r, 334), 0);
}

static void test_rate_200_paces_2000_takes_over_9_9_s(void **state) {
    (void)state;
    warren__ratelimit r;
    warren__ratelimit_init(&r, 200, 0);
    /* 20 come at once from the full bucket, the other 1,980 at 5 ms. */
    int64_t end = take_n(&r, 0, 2000, 1);
    assert_int_equal(end, 9900);
}

static void test_no_drift_with_coarse_polling(void **state) {
    (void)state;
    warren__ratelimit r;
    /* Polling every 7 ms at 300/s (3.33 ms per token): tokens pile up
     * between polls and are spent at once, so the long-run rate holds. */
    warren__ratelimit_init(&r, 300, 0);
    int64_t end = take_n(&r, 0, 3030, 7);
    assert_true(end >= 9990 && end <= 10010);
}

static void test_idle_time_never_banks_more_than_burst(void **state) {
    (void)state;
    warren__ratelimit r;
    warren__ratelimit_init(&r, 100, 0);
    int taken = 0;
    while (warren__ratelimit_take(&r, 3600000) == 0) {
        taken++;
    }
    assert_int_equal(taken, 10);
}

static void test_zero_rate_is_unlimited(void **state) {
    (void)state;
    warren__ratelimit r;
    warren__ratelimit_init(&r, 0, 0);
    for (int i = 0; i < 100000; i++) {
        assert_int_equal(warren__ratelimit_take(&r, 0), 0);
    }
    assert_true(warren__ratelimit_burst(&r) == 0);
    warren__ratelimit_init(&r, -5, 0);
    assert_int_equal(warren__ratelimit_take(&r, 0), 0);
    warren__ratelimit_init(&r, NAN, 0);
    assert_int_equal(warren__ratelimit_take(&r, 0), 0);
}

static void test_clock_going_backwards_adds_nothing(void **state) {
    (void)state;
    warren__ratelimit r;
    warren__ratelimit_init(&r, 10, 10000);
    assert_int_equal(warren__ratelimit_take(&r, 10000), 0);
    assert_int_equal(warren__ratelimit_take(&r, 5000), 100);
    assert_int_equal(warren__ratelimit_take(&r, 10099), 1);
    assert_int_equal(warren__ratelimit_take(&r, 10100), 0);
}

static void test_fractional_rate_below_one_per_second(void **state) {
    (void)state;
    warren__ratelimit r;
    warren__ratelimit_init(&r, 0.5, 0);
    assert_int_equal(warren__ratelimit_take(&r, 0), 0);
    assert_int_equal(warren__ratelimit_take(&r, 0), 2000);
    assert_int_equal(warren__ratelimit_take(&r, 2000), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_starts_full_with_burst_of_a_tenth_of_rate),
        cmocka_unit_test(test_burst_is_at_least_one),
        cmocka_unit_test(test_wait_reported_is_exactly_until_next_token),
        cmocka_unit_test(test_rate_200_paces_2000_takes_over_9_9_s),
        cmocka_unit_test(test_no_drift_with_coarse_polling),
        cmocka_unit_test(test_idle_time_never_banks_more_than_burst),
        cmocka_unit_test(test_zero_rate_is_unlimited),
        cmocka_unit_test(test_clock_going_backwards_adds_nothing),
        cmocka_unit_test(test_fractional_rate_below_one_per_second),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

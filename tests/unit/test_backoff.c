/*
 * test_backoff.c - retry delay arithmetic: exponential delays grow
 * monotonically up to max_ms and never overflow (attempt 1,000,000 and
 * INT_MAX), lists repeat their last entry, jitter stays within
 * [base(1-j), base(1+j)] and never above max_ms, everything stays within
 * WARREN__DELAY_MAX_MS, and the process random source returns values in
 * [0, 1).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backoff.h"

static warren__backoff_cfg expo(uint32_t initial, double mult, uint32_t max) {
    warren__backoff_cfg b;
    memset(&b, 0, sizeof b);
    b.kind = WARREN__BACKOFF_EXPONENTIAL;
    b.initial_ms = initial;
    b.multiplier = mult;
    b.max_ms = max;
    return b;
}

static void test_exponential_doubles_then_caps_at_max(void **state) {
    (void)state;
    warren__backoff_cfg b = expo(100, 2.0, 5000);
    assert_int_equal(warren__backoff_base_ms(&b, 1), 100);
    assert_int_equal(warren__backoff_base_ms(&b, 2), 200);
    assert_int_equal(warren__backoff_base_ms(&b, 3), 400);
    assert_int_equal(warren__backoff_base_ms(&b, 6), 3200);
    assert_int_equal(warren__backoff_base_ms(&b, 7), 5000);
    assert_int_equal(warren__backoff_base_ms(&b, 50), 5000);
}

static void test_reconnect_doubles_from_500_ms_to_at_most_30_s(void **state) {
    (void)state;
    const uint32_t want[] = {500, 1000, 2000, 4000, 8000, 16000, 30000, 30000};
    for (int i = 0; i < (int)(sizeof want / sizeof want[0]); i++) {
        assert_int_equal(warren__backoff_reconnect_ms(i + 1), want[i]);
    }
    assert_int_equal(warren__backoff_reconnect_ms(0), 500);
    assert_int_equal(warren__backoff_reconnect_ms(1000000), 30000);
}

static void test_exponential_is_monotone_up_to_max(void **state) {
    (void)state;
    warren__backoff_cfg b = expo(7, 1.37, 3600000);
    uint32_t prev = 0;
    for (int a = 1; a <= 200; a++) {
        uint32_t d = warren__backoff_base_ms(&b, a);
        assert_true(d >= prev);
        assert_true(d <= 3600000);
        prev = d;
    }
    assert_int_equal(prev, 3600000);
}

static void test_no_overflow_at_huge_attempts(void **state) {
    (void)state;
    warren__backoff_cfg b = expo(1000, 10.0, 60000);
    assert_int_equal(warren__backoff_base_ms(&b, 1000000), 60000);
    assert_int_equal(warren__backoff_base_ms(&b, INT_MAX), 60000);
    assert_int_equal(warren__backoff_delay_ms(&b, INT_MAX, 0.999), 60000);
    /* Without max_ms, the cascade's limit is the cap. */
    warren__backoff_cfg u = expo(UINT32_MAX, 1e300, 0);
    assert_int_equal(warren__backoff_base_ms(&u, INT_MAX),
                     WARREN__DELAY_MAX_MS);
    /* Multiplier 1 must not loop INT_MAX times either. */
    warren__backoff_cfg one = expo(250, 1.0, 0);
    assert_int_equal(warren__backoff_base_ms(&one, INT_MAX), 250);
}

static void test_fixed_is_constant_and_capped(void **state) {
    (void)state;
    warren__backoff_cfg b;
    memset(&b, 0, sizeof b);
    b.kind = WARREN__BACKOFF_FIXED;
    b.delay_ms = 1500;
    assert_int_equal(warren__backoff_base_ms(&b, 1), 1500);
    assert_int_equal(warren__backoff_base_ms(&b, 1000000), 1500);
    assert_int_equal(warren__backoff_base_ms(&b, 0), 1500);
    b.delay_ms = UINT32_MAX;
    assert_int_equal(warren__backoff_base_ms(&b, 1), WARREN__DELAY_MAX_MS);
}

static void test_list_indexes_by_attempt_and_repeats_last(void **state) {
    (void)state;
    uint32_t delays[] = {100, 1000, 30000};
    warren__backoff_cfg b;
    memset(&b, 0, sizeof b);
    b.kind = WARREN__BACKOFF_LIST;
    b.delays_ms = delays;
    b.n_delays = 3;
    assert_int_equal(warren__backoff_base_ms(&b, 1), 100);
    assert_int_equal(warren__backoff_base_ms(&b, 2), 1000);
    assert_int_equal(warren__backoff_base_ms(&b, 3), 30000);
    assert_int_equal(warren__backoff_base_ms(&b, 4), 30000);
    assert_int_equal(warren__backoff_base_ms(&b, INT_MAX), 30000);
}

static void test_jitter_stays_within_bounds(void **state) {
    (void)state;
    static const double us[] = {0.0, 0.5, 0.999};
    static const double js[] = {0.1, 0.25, 1.0};
    warren__backoff_cfg b = expo(1000, 2.0, 600000);
    for (size_t ji = 0; ji < 3; ji++) {
        b.jitter = js[ji];
        for (int a = 1; a <= 12; a++) {
            double base = warren__backoff_base_ms(&b, a);
            for (size_t ui = 0; ui < 3; ui++) {
                double d = warren__backoff_delay_ms(&b, a, us[ui]);
                assert_true(d >= floor(base * (1 - js[ji])));
                assert_true(d <= ceil(base * (1 + js[ji])));
            }
            /* u = 0.5 is the midpoint: no change. */
            assert_int_equal(warren__backoff_delay_ms(&b, a, 0.5),
                             (uint32_t)base);
        }
    }
    b.jitter = 0.2;
    assert_int_equal(warren__backoff_delay_ms(&b, 1, 0.0), 800);
    assert_int_equal(warren__backoff_delay_ms(&b, 1, 0.999), 1200);
}

static void test_jitter_never_exceeds_cascade_limit(void **state) {
    (void)state;
    warren__backoff_cfg b = expo(WARREN__DELAY_MAX_MS, 2.0, 0);
    b.jitter = 1.0;
    assert_int_equal(warren__backoff_delay_ms(&b, 5, 0.999),
                     WARREN__DELAY_MAX_MS);
    /* Out-of-range u is clamped rather than trusted. */
    assert_int_equal(warren__backoff_delay_ms(&b, 5, 7.0),
                     WARREN__DELAY_MAX_MS);
    assert_int_equal(warren__backoff_delay_ms(&b, 5, -1.0), 0);
}

static void test_jitter_never_exceeds_max_ms(void **state) {
    (void)state;
    /* At the cap the base is max_ms; jitter may only shorten it. */
    warren__backoff_cfg b = expo(1000, 2.0, 5000);
    b.jitter = 0.5;
    for (int a = 1; a <= 10; a++) {
        for (double u = 0.0; u < 1.0; u += 0.125) {
            assert_true(warren__backoff_delay_ms(&b, a, u) <= 5000);
        }
    }
    assert_int_equal(warren__backoff_delay_ms(&b, 10, 0.999), 5000);
    assert_int_equal(warren__backoff_delay_ms(&b, 10, 0.0), 2500);
    /* Fixed and list delays at max_ms obey it too. */
    warren__backoff_cfg f;
    memset(&f, 0, sizeof f);
    f.kind = WARREN__BACKOFF_FIXED;
    f.delay_ms = 4000;
    f.max_ms = 4000;
    f.jitter = 1.0;
    assert_int_equal(warren__backoff_delay_ms(&f, 1, 0.999), 4000);
}

static void test_rng_uniform_in_unit_interval_and_varies(void **state) {
    (void)state;
    double first = warren__rng_uniform(), lo = 1, hi = 0;
    int same = 1;
    for (int i = 0; i < 100000; i++) {
        double u = warren__rng_uniform();
        assert_true(u >= 0.0 && u < 1.0);
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
        same &= u == first;
    }
    assert_false(same);
    assert_true(lo < 0.01 && hi > 0.99);
}

static void test_rng_differs_between_forked_children(void **state) {
    (void)state;
    int fds[2];
    double got[2];
    (void)warren__rng_uniform(); /* the parent's state is now seeded */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            double u = warren__rng_uniform();
            _exit(write(fds[1], &u, sizeof u) == sizeof u ? 0 : 1);
        }
        close(fds[1]);
        assert_int_equal(read(fds[0], &got[i], sizeof got[i]), sizeof got[i]);
        close(fds[0]);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
    }
    assert_true(got[0] != got[1]);
}

/* retry.jitter_style "full": uniform in [0, base), whatever `jitter` says,
 * so a full-jittered delay is never longer than the un-jittered one (nor
 * its max_ms cap). */
static void test_full_jitter_is_uniform_in_zero_to_base(void **state) {
    (void)state;
    warren__backoff_cfg b = expo(1000, 2.0, 5000);
    b.jitter_style = WARREN__JITTER_FULL;
    b.jitter = 0.1; /* ignored */
    assert_int_equal(warren__backoff_delay_ms(&b, 1, 0.0), 0);
    assert_int_equal(warren__backoff_delay_ms(&b, 1, 0.5), 500);
    assert_int_equal(warren__backoff_delay_ms(&b, 1, 0.999), 999);
    assert_int_equal(warren__backoff_delay_ms(&b, 3, 0.25), 1000);
    /* capped base: at most max_ms */
    assert_int_equal(warren__backoff_delay_ms(&b, 40, 0.999), 4995);
    assert_true(warren__backoff_delay_ms(&b, 40, 7.0) <= 5000);
    assert_int_equal(warren__backoff_delay_ms(&b, 40, -1.0), 0);
    /* With the real random source: inside [0, base), spread over it
     * (mean within 10% of base / 2 over 2000 draws). */
    double sum = 0;
    uint32_t lo = UINT32_MAX, hi = 0;
    for (int i = 0; i < 2000; i++) {
        uint32_t d = warren__backoff_delay_ms(&b, 2, warren__rng_uniform());
        assert_true(d <= 2000);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
        sum += d;
    }
    assert_true(fabs(sum / 2000 - 1000) < 100);
    assert_true(lo < 100 && hi > 1900);
}

/* gRPC's retry policy today (gRFC A6 as revised) jitters each backoff by
 * +-20%: that is the default style, "proportional", with jitter 0.2. */
static void test_grpc_plus_minus_20_percent_is_proportional_0_2(void **state) {
    (void)state;
    warren__backoff_cfg b = expo(100, 2.0, 1000);
    b.jitter = 0.2;
    assert_int_equal(b.jitter_style, WARREN__JITTER_PROPORTIONAL);
    for (int a = 1; a <= 6; a++) {
        double base = warren__backoff_base_ms(&b, a);
        assert_int_equal(warren__backoff_delay_ms(&b, a, 0.0),
                         (uint32_t)llround(base * 0.8));
        assert_int_equal(warren__backoff_delay_ms(&b, a, 0.5), (uint32_t)base);
    }
    assert_int_equal(warren__backoff_delay_ms(&b, 2, 0.75), 220);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exponential_doubles_then_caps_at_max),
        cmocka_unit_test(test_reconnect_doubles_from_500_ms_to_at_most_30_s),
        cmocka_unit_test(test_exponential_is_monotone_up_to_max),
        cmocka_unit_test(test_no_overflow_at_huge_attempts),
        cmocka_unit_test(test_fixed_is_constant_and_capped),
        cmocka_unit_test(test_list_indexes_by_attempt_and_repeats_last),
        cmocka_unit_test(test_jitter_stays_within_bounds),
        cmocka_unit_test(test_jitter_never_exceeds_cascade_limit),
        cmocka_unit_test(test_jitter_never_exceeds_max_ms),
        cmocka_unit_test(test_rng_uniform_in_unit_interval_and_varies),
        cmocka_unit_test(test_rng_differs_between_forked_children),
        cmocka_unit_test(test_full_jitter_is_uniform_in_zero_to_base),
        cmocka_unit_test(test_grpc_plus_minus_20_percent_is_proportional_0_2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_breaker.c - the circuit breaker's state machine under a fake clock:
 * it opens on consecutive failures and on the failure ratio (only with
 * enough outcomes, only within the window), stays open for open_s, lets
 * exactly half_open_max trials through, closes when they all succeed,
 * re-opens on a failed trial, and logs and counts every transition.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "breaker.h"

/* Log lines seen: "event outcome text", newest last. */
static char logged[32][256];
static int n_logged;

static void capture(const warren_log_event *ev, void *user) {
    (void)user;
    if (n_logged < 32) {
        snprintf(logged[n_logged++], sizeof logged[0], "%s %s %s",
                 warren_log_event_name(ev),
                 warren_log_event_outcome(ev) ? warren_log_event_outcome(ev)
                                              : "-",
                 warren_log_event_text(ev));
    }
}

static int setup(void **state) {
    (void)state;
    n_logged = 0;
    warren_log_set(capture, NULL, WARREN_LOG_DEBUG);
    return 0;
}

static warren__breaker_cfg cfg(uint32_t consecutive, double ratio,
                               uint32_t window_s, uint32_t open_s,
                               uint32_t half_open_max) {
    warren__breaker_cfg c = {consecutive, ratio,         window_s,
                             open_s,      half_open_max, NULL};
    return c;
}

static void fail_n(warren__breaker *b, int n, int64_t now) {
    for (int i = 0; i < n; i++) {
        assert_true(warren__breaker_allow(b, now));
        warren__breaker_record(b, 1, now);
    }
}

static void test_off_when_both_thresholds_zero_never_opens(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(0, 0, 60, 30, 1);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 1000, 1000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    assert_int_equal(warren__breaker_wait_ms(&b, 1000), 0);
    assert_int_equal(n_logged, 0);
}

static void test_opens_on_exactly_n_consecutive_failures(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(5, 0, 60, 30, 1);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 4, 1000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    fail_n(&b, 1, 1000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_OPEN);
    assert_false(warren__breaker_allow(&b, 1000));
    assert_int_equal(warren__breaker_transitions(&b, WARREN__BREAKER_OPEN), 1);
}

static void test_a_success_resets_the_consecutive_count(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(3, 0, 60, 30, 1);
    warren__breaker_init(&b, &c, "q");
    for (int round = 0; round < 100; round++) {
        fail_n(&b, 2, 1000 + round);
        assert_true(warren__breaker_allow(&b, 1000 + round));
        warren__breaker_record(&b, 0, 1000 + round);
    }
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
}

static void test_stays_open_for_open_s_then_half_open(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(2, 0, 60, 30, 1);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 2, 5000);
    assert_int_equal(warren__breaker_wait_ms(&b, 5000), 30000);
    assert_int_equal(warren__breaker_wait_ms(&b, 34999), 1);
    assert_false(warren__breaker_allow(&b, 34999));
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_OPEN);
    assert_int_equal(warren__breaker_wait_ms(&b, 35000), 0);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_HALF_OPEN);
    assert_int_equal(warren__breaker_transitions(&b, WARREN__BREAKER_HALF_OPEN),
                     1);
}

static void test_half_open_lets_exactly_k_trials_through(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(1, 0, 60, 10, 3);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 1, 0);
    int64_t t = 10000;
    assert_true(warren__breaker_allow(&b, t));
    assert_true(warren__breaker_allow(&b, t));
    assert_true(warren__breaker_allow(&b, t));
    assert_false(warren__breaker_allow(&b, t));
    assert_false(warren__breaker_allow(&b, t + 60000));
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_HALF_OPEN);
}

static void test_half_open_closes_when_all_trials_succeed(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(1, 0, 60, 10, 2);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 1, 0);
    assert_true(warren__breaker_allow(&b, 10000));
    warren__breaker_record(&b, 0, 10001);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_HALF_OPEN);
    assert_true(warren__breaker_allow(&b, 10002));
    warren__breaker_record(&b, 0, 10003);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    for (int i = 0; i < 50; i++) {
        assert_true(warren__breaker_allow(&b, 10004));
        warren__breaker_record(&b, 0, 10004);
    }
    assert_int_equal(warren__breaker_transitions(&b, WARREN__BREAKER_CLOSED),
                     1);
}

static void test_failed_trial_reopens_for_a_full_open_s(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(1, 0, 60, 10, 2);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 1, 0);
    assert_true(warren__breaker_allow(&b, 10000));
    warren__breaker_record(&b, 0, 10000);
    assert_true(warren__breaker_allow(&b, 12000));
    warren__breaker_record(&b, 1, 12000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_OPEN);
    assert_int_equal(warren__breaker_wait_ms(&b, 12000), 10000);
    assert_false(warren__breaker_allow(&b, 21999));
    assert_int_equal(warren__breaker_transitions(&b, WARREN__BREAKER_OPEN), 2);
    /* ... and the next half-open starts its trials from zero */
    assert_true(warren__breaker_allow(&b, 22000));
    assert_true(warren__breaker_allow(&b, 22000));
    assert_false(warren__breaker_allow(&b, 22000));
}

static void test_recovered_breaker_forgets_old_failures(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(3, 0.5, 60, 10, 1);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 3, 0);
    assert_true(warren__breaker_allow(&b, 10000));
    warren__breaker_record(&b, 0, 10000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    /* Two more failures are not three in a row, and nine outcomes are
     * too few for the ratio, whatever happened before the outage. */
    fail_n(&b, 2, 10001);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
}

static void test_late_outcome_while_open_is_ignored(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(1, 0, 60, 10, 1);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 1, 0);
    warren__breaker_record(&b, 0, 5);
    warren__breaker_record(&b, 1, 6);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_OPEN);
    assert_int_equal(warren__breaker_wait_ms(&b, 6), 9994);
    assert_int_equal(warren__breaker_transitions(&b, WARREN__BREAKER_OPEN), 1);
}

static void test_ratio_needs_min_outcomes_before_opening(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(0, 0.5, 60, 10, 1);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, WARREN__BREAKER_MIN_OUTCOMES - 1, 1000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    fail_n(&b, 1, 1000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_OPEN);
}

static void test_ratio_opens_at_threshold_not_below(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(0, 0.5, 60, 10, 1);
    warren__breaker_init(&b, &c, "q");
    /* 6 ok + 4 failed = 0.4 after 10: stays closed */
    for (int i = 0; i < 6; i++) {
        assert_true(warren__breaker_allow(&b, 100));
        warren__breaker_record(&b, 0, 100);
    }
    fail_n(&b, 4, 100);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    /* 6 of 11 = 0.545 */
    fail_n(&b, 1, 100);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    fail_n(&b, 1, 100);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_OPEN);
}

static void test_ratio_forgets_outcomes_older_than_window(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(0, 0.5, 10, 10, 1);
    warren__breaker_init(&b, &c, "q");
    /* 9 failures at t=0, then 10 successes 11 s later: the old failures
     * have left the 10 s window, so one more failure is 1 of 11. */
    fail_n(&b, 9, 0);
    for (int i = 0; i < 10; i++) {
        assert_true(warren__breaker_allow(&b, 11000));
        warren__breaker_record(&b, 0, 11000);
    }
    fail_n(&b, 1, 11000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    /* Within the window they do count: 9 failures + 1 ok + 1 failure. */
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 9, 0);
    assert_true(warren__breaker_allow(&b, 5000));
    warren__breaker_record(&b, 0, 5000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_OPEN);
}

static void test_every_transition_is_logged_with_its_new_state(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(2, 0, 60, 1, 1);
    warren__breaker_init(&b, &c, "orders");
    fail_n(&b, 2, 0);                             /* closed -> open */
    assert_true(warren__breaker_allow(&b, 1000)); /* -> half_open */
    warren__breaker_record(&b, 1, 1000);          /* -> open */
    assert_true(warren__breaker_allow(&b, 2000)); /* -> half_open */
    warren__breaker_record(&b, 0, 2000);          /* -> closed */
    assert_int_equal(n_logged, 5);
    const char *want[] = {"breaker open breaker from closed to open",
                          "breaker half_open breaker from open to half_open",
                          "breaker open breaker from half_open to open",
                          "breaker half_open breaker from open to half_open",
                          "breaker closed breaker from half_open to closed"};
    for (int i = 0; i < 5; i++) {
        if (strncmp(logged[i], want[i], strlen(want[i])) != 0) {
            fail_msg("log line %d: '%s', expected '%s...'", i, logged[i],
                     want[i]);
        }
    }
    assert_non_null(strstr(logged[0], "2 consecutive failures"));
    assert_int_equal(warren__breaker_transitions(&b, WARREN__BREAKER_OPEN), 2);
    assert_int_equal(warren__breaker_transitions(&b, WARREN__BREAKER_HALF_OPEN),
                     2);
    assert_int_equal(warren__breaker_transitions(&b, WARREN__BREAKER_CLOSED),
                     1);
    assert_string_equal(warren__breaker_state_name(WARREN__BREAKER_HALF_OPEN),
                        "half_open");
}

/* gobreaker parity: a half-open trial that was allowed but never ran
 * (the worker was asked to stop while it waited for a rate-limit token)
 * is neither a success nor a failure; its slot must come back, or the
 * breaker stays half-open refusing everything. */
static void test_cancelled_trial_gives_its_slot_back(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(1, 0, 60, 10, 1);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 1, 0);
    assert_true(warren__breaker_allow(&b, 10000));
    uint64_t gen = warren__breaker_generation(&b);
    assert_false(warren__breaker_allow(&b, 10000)); /* the cap holds */
    warren__breaker_done(&b, gen, WARREN__BREAKER_CANCELLED, 10001);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_HALF_OPEN);
    assert_true(warren__breaker_allow(&b, 10001));
    gen = warren__breaker_generation(&b);
    warren__breaker_done(&b, gen, WARREN__BREAKER_SUCCEEDED, 10002);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
}

/* A cancelled call while closed is no outcome either: it neither resets
 * the consecutive count nor adds to it. */
static void test_cancelled_call_while_closed_counts_for_nothing(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(3, 0, 60, 10, 1);
    warren__breaker_init(&b, &c, "q");
    fail_n(&b, 2, 0);
    for (int i = 0; i < 10; i++) {
        assert_true(warren__breaker_allow(&b, 1));
        warren__breaker_done(&b, warren__breaker_generation(&b),
                             WARREN__BREAKER_CANCELLED, 1);
    }
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    fail_n(&b, 1, 2);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_OPEN);
}

/* gobreaker parity (generations): an outcome of a call allowed before a
 * state change says nothing about the new state. A success of a call let
 * through while closed, reported once the breaker is half-open, must not
 * count as a trial and close it. */
static void test_outcome_from_a_previous_state_is_discarded(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(2, 0, 60, 10, 1);
    warren__breaker_init(&b, &c, "q");
    assert_true(warren__breaker_allow(&b, 0)); /* the stale call */
    uint64_t stale = warren__breaker_generation(&b);
    fail_n(&b, 2, 0);                                        /* -> open */
    assert_int_equal(warren__breaker_wait_ms(&b, 10000), 0); /* half-open */
    warren__breaker_done(&b, stale, WARREN__BREAKER_SUCCEEDED, 10000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_HALF_OPEN);
    /* nor does a stale failure re-open it */
    warren__breaker_done(&b, stale, WARREN__BREAKER_FAILED, 10000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_HALF_OPEN);
    /* the real trial decides */
    assert_true(warren__breaker_allow(&b, 10000));
    warren__breaker_done(&b, warren__breaker_generation(&b),
                         WARREN__BREAKER_SUCCEEDED, 10001);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
}

/* The retry budget's pause: trip() opens even a breaker that is off,
 * for open_s, and it recovers through half-open like any other. */
static void test_trip_opens_an_off_breaker_for_open_s(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(0, 0, 60, 5, 1);
    warren__breaker_init(&b, &c, "q");
    warren__breaker_trip(&b, 1000, "retry budget exhausted");
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_OPEN);
    assert_false(warren__breaker_allow(&b, 1000));
    assert_int_equal(warren__breaker_wait_ms(&b, 1000), 5000);
    warren__breaker_trip(&b, 3000, "again"); /* no-op while open */
    assert_int_equal(warren__breaker_transitions(&b, WARREN__BREAKER_OPEN), 1);
    assert_true(warren__breaker_allow(&b, 6000)); /* half-open trial */
    warren__breaker_record(&b, 1, 6000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_OPEN);
    assert_true(warren__breaker_allow(&b, 11000));
    warren__breaker_record(&b, 0, 11000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    /* closed and off again: failures do not open it */
    fail_n(&b, 100, 12000);
    assert_int_equal(warren__breaker_state_of(&b), WARREN__BREAKER_CLOSED);
    assert_non_null(strstr(logged[0], "retry budget exhausted"));
}

/* gobreaker's OnStateChange: every transition is one log line and one
 * count, and each starts a new generation. */
static void test_each_transition_is_a_new_generation(void **state) {
    (void)state;
    warren__breaker b;
    warren__breaker_cfg c = cfg(1, 0, 60, 1, 1);
    warren__breaker_init(&b, &c, "q");
    uint64_t g0 = warren__breaker_generation(&b);
    fail_n(&b, 1, 0);
    assert_int_equal(warren__breaker_generation(&b), g0 + 1);
    assert_true(warren__breaker_allow(&b, 1000));
    assert_int_equal(warren__breaker_generation(&b), g0 + 2);
    warren__breaker_record(&b, 0, 1000);
    assert_int_equal(warren__breaker_generation(&b), g0 + 3);
    assert_int_equal(n_logged, 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_off_when_both_thresholds_zero_never_opens,
                               setup),
        cmocka_unit_test_setup(test_opens_on_exactly_n_consecutive_failures,
                               setup),
        cmocka_unit_test_setup(test_a_success_resets_the_consecutive_count,
                               setup),
        cmocka_unit_test_setup(test_stays_open_for_open_s_then_half_open,
                               setup),
        cmocka_unit_test_setup(test_half_open_lets_exactly_k_trials_through,
                               setup),
        cmocka_unit_test_setup(test_half_open_closes_when_all_trials_succeed,
                               setup),
        cmocka_unit_test_setup(test_failed_trial_reopens_for_a_full_open_s,
                               setup),
        cmocka_unit_test_setup(test_recovered_breaker_forgets_old_failures,
                               setup),
        cmocka_unit_test_setup(test_late_outcome_while_open_is_ignored, setup),
        cmocka_unit_test_setup(test_ratio_needs_min_outcomes_before_opening,
                               setup),
        cmocka_unit_test_setup(test_ratio_opens_at_threshold_not_below, setup),
        cmocka_unit_test_setup(test_ratio_forgets_outcomes_older_than_window,
                               setup),
        cmocka_unit_test_setup(
            test_every_transition_is_logged_with_its_new_state, setup),
        cmocka_unit_test_setup(test_cancelled_trial_gives_its_slot_back, setup),
        cmocka_unit_test_setup(test_outcome_from_a_previous_state_is_discarded,
                               setup),
        cmocka_unit_test_setup(
            test_cancelled_call_while_closed_counts_for_nothing, setup),
        cmocka_unit_test_setup(test_trip_opens_an_off_breaker_for_open_s,
                               setup),
        cmocka_unit_test_setup(test_each_transition_is_a_new_generation, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_failpoints.c - crash windows: for each named instant of the worker's
 * batch (consumer/failpoint.h), a pool of exec and ledger workers under a
 * steady publish dies there four times (each process at its second hit,
 * so both handler kinds crash), the supervisor restarts it, and the checker
 * must still find nothing lost, ledger effects exactly once, exec effects
 * doubled only for ids a killed worker had run, and every queue empty.
 */
#include "chaos.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <signal.h>

static chaos_run run;

static int teardown(void **state) {
    (void)state;
    if (run.dir) {
        chaos_teardown(&run);
        memset(&run, 0, sizeof run);
    }
    return 0;
}

/* Runs the scenario for `point`: 2 exec + 2 ledger workers, 160 ids at
 * 80/s, the point armed as POINT:2:4. */
static void crash_at(const char *name, const char *point) {
    char spec[128], hit[128];
    snprintf(spec, sizeof spec, "%s:2:4", point);
    chaos_opts o = {.name = name,
                    .exec_workers = 2,
                    .ledger_workers = 2,
                    .n = 160,
                    .rate = 80,
                    .failpoint = spec};
    chaos_setup(&run, &o);
    chaos_start_pool(&run);
    chaos_start_producer(&run);
    chaos_wait_producer(&run, 120);
    int ok = chaos_drain(&run, 120);
    snprintf(hit, sizeof hit, "warren: failpoint %s hit", point);
    long hits = chaos_log_count(&run, hit);
    snprintf(run.note, sizeof run.note, "%ld crashes at %s%s", hits, point,
             ok ? "" : "; drain timed out");
    chaos_stop_pool(&run);
    chaos_check(&run);
    /* The crashes did happen, as often as asked: otherwise the row proves
     * less than it claims. */
    assert_int_equal(hits, 4);
    assert_true(ok);
}

static void test_crash_after_claim_before_handler_loses_nothing(void **s) {
    (void)s;
    crash_at("fp_claim", "claim.after");
}

static void test_crash_after_handler_before_commit_runs_ledger_once(void **s) {
    (void)s;
    crash_at("fp_handler", "handler.after");
}

static void test_crash_after_commit_before_ack_runs_nothing_twice(void **s) {
    (void)s;
    crash_at("fp_commit", "commit.after");
}

static void test_crash_after_retry_publish_before_confirm(void **s) {
    (void)s;
    crash_at("fp_retrypub", "retry.published");
}

static void test_crash_mid_dead_letter_publish(void **s) {
    (void)s;
    crash_at("fp_deadpub", "dead.published");
}

static void test_crash_after_copies_confirmed_before_ack(void **s) {
    (void)s;
    crash_at("fp_confirmed", "copies.confirmed");
}

/* Runs `warren dlq replay --all` on the scenario's exec queue, with
 * `failpoint` armed (NULL: none); returns its wait status. */
static int replay(const char *failpoint, const char *logname) {
    char log[600];
    snprintf(log, sizeof log, "%s/%s", run.dir, logname);
    if (failpoint) {
        setenv("WARREN_FAILPOINT", failpoint, 1);
        setenv("WARREN_FAILPOINT_DIR", run.fpdir, 1);
    }
    const char *args[] = {"dlq",     "replay", "-c",    run.cfg, "--queue",
                          run.qexec, "--all",  "--yes", NULL};
    pid_t pid = itest_spawn_warren(args, log);
    unsetenv("WARREN_FAILPOINT");
    unsetenv("WARREN_FAILPOINT_DIR");
    int status = 0;
    assert_true(itest_wait_exit(pid, 60, &status));
    return status;
}

static void test_crash_mid_replay_leaves_every_dead_letter_once(void **s) {
    (void)s;
    chaos_opts o = {
        .name = "fp_replay", .exec_workers = 2, .n = 140, .rate = 100};
    chaos_setup(&run, &o);
    chaos_start_pool(&run);
    chaos_start_producer(&run);
    chaos_wait_producer(&run, 60);
    assert_true(chaos_drain(&run, 90));
    /* Dies after publishing its 3rd copy, unconfirmed, DLQ copy unacked:
     * that message is then in both queues. A second replay finishes. */
    int st = replay("replay.published:3:1", "replay1.log");
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    st = replay(NULL, "replay2.log");
    assert_true(WIFEXITED(st));
    int ok = chaos_drain(&run, 90);
    snprintf(run.note, sizeof run.note,
             "replay killed after its 3rd publish, then replayed again; "
             "replayed letters dead again%s",
             ok ? "" : "; drain timed out");
    chaos_stop_pool(&run);
    chaos_check(&run);
    assert_true(ok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(
            test_crash_after_claim_before_handler_loses_nothing, teardown),
        cmocka_unit_test_teardown(
            test_crash_after_handler_before_commit_runs_ledger_once, teardown),
        cmocka_unit_test_teardown(
            test_crash_after_commit_before_ack_runs_nothing_twice, teardown),
        cmocka_unit_test_teardown(test_crash_after_retry_publish_before_confirm,
                                  teardown),
        cmocka_unit_test_teardown(test_crash_mid_dead_letter_publish, teardown),
        cmocka_unit_test_teardown(test_crash_after_copies_confirmed_before_ack,
                                  teardown),
        cmocka_unit_test_teardown(
            test_crash_mid_replay_leaves_every_dead_letter_once, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_retry_chains.c - where a message's attempt and first failure come
 * from when the store cannot say, and what a stale delivery of a retrying
 * id may do. Nack mode without a store record counts attempts and age from
 * the broker's x-death; a redelivered original whose retry copy is already
 * in the cascade (its ack lost after the outcome committed) is settled as a
 * duplicate instead of starting a second chain, while a first delivery from
 * outside the cascade still runs; x-warren-attempt and
 * x-warren-first-failed-at sent by a producer are ignored. Every scenario
 * checks both counts: nothing lost, no effect doubled.
 */
#include "itest.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Records "ID ATTEMPT MS" per run; fails with 75 while the attempt is below
 * $SUCCEED_AT (0: always fail). Successes go to $EFFECTS_FILE. */
static const char *flaky =
    "#!/bin/sh\n"
    "now=$(date +%s%3N)\n"
    "echo \"$WARREN_MESSAGE_ID $WARREN_ATTEMPT $now\" >> \"$RUNS_FILE\"\n"
    "if [ \"${SUCCEED_AT:-0}\" = 0 ] || [ \"$WARREN_ATTEMPT\" -lt "
    "\"$SUCCEED_AT\" ]; then\n"
    "  echo \"flaky failure on attempt $WARREN_ATTEMPT\" >&2\n"
    "  exit 75\n"
    "fi\n"
    "echo \"$WARREN_MESSAGE_ID\" >> \"$EFFECTS_FILE\"\n";

typedef struct {
    char *dir;
    char q1[96], q2[96], dlq1[128], dlq2[128];
    char cfg[512], log[512], runs[512], effects[512], script[512];
    pid_t pid;
    amqp_connection_state_t conn;
} fx;

/* consumers_fmt takes (q1, script, q2, script). */
static void fx_setup(fx *f, const char *name, const char *consumers_fmt) {
    char text[4096], consumers[3000];
    f->dir = itest_tmpdir();
    snprintf(f->q1, sizeof f->q1, "it.chains.%s.%d", name, (int)getpid());
    snprintf(f->q2, sizeof f->q2, "it.chains.%s.b.%d", name, (int)getpid());
    snprintf(f->dlq1, sizeof f->dlq1, "%s.dlq", f->q1);
    snprintf(f->dlq2, sizeof f->dlq2, "%s.dlq", f->q2);
    snprintf(f->cfg, sizeof f->cfg, "%s/warren.json", f->dir);
    snprintf(f->log, sizeof f->log, "%s/warren.log", f->dir);
    snprintf(f->runs, sizeof f->runs, "%s/runs", f->dir);
    snprintf(f->effects, sizeof f->effects, "%s/effects", f->dir);
    snprintf(f->script, sizeof f->script, "%s/flaky.sh", f->dir);
    itest_write_file(f->script, flaky);
    assert_int_equal(chmod(f->script, 0700), 0);
    snprintf(consumers, sizeof consumers, consumers_fmt, f->q1, f->script,
             f->q2, f->script);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"}, \"consumers\": [%s]}",
             f->dir, consumers);
    itest_write_file(f->cfg, text);
    setenv("RUNS_FILE", f->runs, 1);
    setenv("EFFECTS_FILE", f->effects, 1);
    unsetenv("SUCCEED_AT");
    f->conn = itest_connect();
    f->pid = 0;
}

static void fx_start(fx *f) {
    const char *args[] = {"run", "-c", f->cfg, "--log-level", "debug", NULL};
    f->pid = itest_spawn_warren(args, f->log);
}

static void fx_stop(fx *f) {
    if (f->pid > 0) {
        int status = itest_terminate(f->pid, 30);
        f->pid = 0;
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
}

static void fx_teardown(fx *f) {
    const char *qs[] = {f->q1, f->q2};
    if (f->pid > 0) {
        (void)itest_terminate(f->pid, 30);
    }
    for (int i = 0; i < 2; i++) {
        char q[160];
        itest_queue_delete(f->conn, qs[i]);
        snprintf(q, sizeof q, "%s.dlq", qs[i]);
        itest_queue_delete(f->conn, q);
        snprintf(q, sizeof q, "%s.retry", qs[i]);
        itest_queue_delete(f->conn, q);
    }
    itest_disconnect(f->conn);
    itest_rmtree(f->dir);
    free(f->dir);
}

static void dump_log(const fx *f) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tail -n 40 %s >&2; cat %s >&2", f->log, f->runs);
    if (system(cmd) != 0) {
        /* best effort */
    }
}

/* Lines of `path` containing `needle` (0 if the file is missing). */
static long count_matching(const char *path, const char *needle) {
    FILE *fp = fopen(path, "r");
    char line[4096];
    long n = 0;
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        n += strstr(line, needle) != NULL;
    }
    fclose(fp);
    return n;
}

/* Reads the runs file for `id`: how many runs, each attempt's time into
 * ms[attempt-1] (attempts 1..max), and how often each attempt ran. */
static int runs_of(const char *runs, const char *id, long long *ms, int *seen,
                   int max) {
    FILE *fp = fopen(runs, "r");
    char line[256], mid[128];
    int n = 0, attempt;
    long long t;
    memset(seen, 0, sizeof *seen * (size_t)max);
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        if (sscanf(line, "%127s %d %lld", mid, &attempt, &t) == 3 &&
            strcmp(mid, id) == 0) {
            n++;
            if (attempt >= 1 && attempt <= max) {
                ms[attempt - 1] = t;
                seen[attempt - 1]++;
            }
        }
    }
    fclose(fp);
    return n;
}

typedef struct {
    const char *path;
    long want;
} lines_arg;

static int has_lines(void *arg) {
    lines_arg *a = arg;
    return itest_count_lines(a->path) >= a->want;
}

typedef struct {
    fx *f;
    const char *dlq;
    long max_runs; /* stop waiting once the handler ran more than this */
} dead_arg;

static int dead_or_too_many_runs(void *arg) {
    dead_arg *a = arg;
    return itest_queue_depth(a->f->conn, a->dlq) >= 1 ||
           itest_count_lines(a->f->runs) > a->max_runs;
}

typedef struct {
    fx *f;
    const char *queue;
} quiet_arg;

/* The consumer queue, its nack-mode retry queue and the cascade are empty. */
static int all_quiet(void *arg) {
    quiet_arg *a = arg;
    char retryq[160];
    snprintf(retryq, sizeof retryq, "%s.retry", a->queue);
    return itest_queue_depth(a->f->conn, a->queue) == 0 &&
           itest_queue_depth(a->f->conn, retryq) <= 0 &&
           itest_delay_cascade_empty(a->f->conn);
}

static int queue_exists(void *arg) {
    quiet_arg *a = arg;
    return itest_queue_depth(a->f->conn, a->queue) >= 0;
}

/* Both messages of the forged-headers test are settled: each has an
 * effect or a dead letter. */
static int both_settled(void *arg) {
    fx *f = arg;
    return (count_matching(f->effects, "fa-1") > 0 ||
            itest_queue_depth(f->conn, f->dlq1) > 0) &&
           (count_matching(f->effects, "fb-1") > 0 ||
            itest_queue_depth(f->conn, f->dlq2) > 0);
}

static int64_t header_i64(const itest_msg *m, const char *name) {
    const amqp_field_value_t *v = itest_msg_header(m, name);
    if (v == NULL) {
        fail_msg("dead letter lacks header %s", name);
    }
    switch (v->kind) {
    case AMQP_FIELD_KIND_I64:
        return v->value.i64;
    case AMQP_FIELD_KIND_I32:
        return v->value.i32;
    case AMQP_FIELD_KIND_TIMESTAMP:
    case AMQP_FIELD_KIND_U64:
        return (int64_t)v->value.u64;
    default:
        fail_msg("header %s has kind %c", name, v->kind);
    }
    return 0;
}

static const char *dead_headers[] = {
    "x-warren-queue",    "x-warren-exchange", "x-warren-routing-key",
    "x-warren-attempts", "x-warren-error",    "x-warren-first-failed-at",
    "x-warren-dead-at",  "x-warren-worker",   "x-warren-replays"};

/* Takes the one letter from `dlq` (failing unless there is exactly one),
 * checks warren's headers, and returns x-warren-first-failed-at. */
static int64_t take_dead_letter(fx *f, const char *dlq, const char *id,
                                int attempts, const char *reason) {
    itest_msg m;
    assert_int_equal(itest_queue_depth(f->conn, dlq), 1);
    assert_int_equal(itest_get(f->conn, dlq, &m, 0), 1);
    assert_string_equal(m.message_id, id);
    for (size_t i = 0; i < sizeof dead_headers / sizeof *dead_headers; i++) {
        if (itest_msg_header(&m, dead_headers[i]) == NULL) {
            fail_msg("dead letter lacks header %s", dead_headers[i]);
        }
    }
    assert_int_equal(header_i64(&m, "x-warren-attempts"), attempts);
    const amqp_field_value_t *v = itest_msg_header(&m, "x-warren-error");
    char err[1100];
    snprintf(err, sizeof err, "%.*s", (int)v->value.bytes.len,
             (const char *)v->value.bytes.bytes);
    if (strstr(err, reason) == NULL) {
        fail_msg("x-warren-error \"%s\" does not say \"%s\"", err, reason);
    }
    int64_t first = header_i64(&m, "x-warren-first-failed-at");
    assert_true(first <= header_i64(&m, "x-warren-dead-at"));
    itest_msg_free(&m);
    assert_int_equal(itest_queue_depth(f->conn, dlq), 0);
    return first;
}

/* Issue 18 item 7: with dedup off there is no store record, and broker
 * dead-lettering never changes x-warren-attempt; x-death's count for this
 * queue's rejections is the attempt. */
static void
test_nack_mode_without_store_dead_letters_after_max_attempts(void **state) {
    (void)state;
    fx f;
    fx_setup(&f, "nackcap",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"dedup\": false,"
             " \"retry\": {\"mode\": \"nack\", \"max_attempts\": 3, "
             "\"jitter\": 0, \"backoff\": {\"kind\": \"fixed\", "
             "\"delay_ms\": 300}}}");
    fx_start(&f);
    quiet_arg qa = {&f, f.q1};
    assert_true(itest_wait_until(queue_exists, &qa, 30));
    itest_publish(f.conn, "", f.q1, "nc-1", "{}", 2);
    dead_arg da = {&f, f.dlq1, 3};
    if (!itest_wait_until(dead_or_too_many_runs, &da, 60) ||
        itest_count_lines(f.runs) > 3) {
        dump_log(&f);
        fail_msg("not dead-lettered after 3 attempts: %ld runs",
                 itest_count_lines(f.runs));
    }
    assert_true(itest_wait_until(all_quiet, &qa, 30));
    fx_stop(&f);
    long long t[3];
    int seen[3];
    assert_int_equal(runs_of(f.runs, "nc-1", t, seen, 3), 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(seen[i], 1); /* attempts 1, 2, 3, once each */
    }
    assert_true(t[1] - t[0] >= 300 && t[2] - t[1] >= 300);
    assert_int_equal(itest_count_lines(f.effects), -1);
    int64_t first =
        take_dead_letter(&f, f.dlq1, "nc-1", 3, "gave up after 3 attempts");
    /* x-death keeps seconds: the first failure is within a second of the
     * first run. */
    assert_true(first >= t[0] - 1000 && first <= t[0] + 1000);
    fx_teardown(&f);
}

/* The same for max_age_s: x-death's time of the first rejection is when
 * the message first failed. */
static void
test_nack_mode_without_store_dead_letters_after_max_age(void **state) {
    (void)state;
    fx f;
    fx_setup(&f, "nackage",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"dedup\": false,"
             " \"retry\": {\"mode\": \"nack\", \"max_attempts\": 1000, "
             "\"max_age_s\": 2, \"jitter\": 0, \"backoff\": {\"kind\": "
             "\"fixed\", \"delay_ms\": 400}}}");
    fx_start(&f);
    quiet_arg qa = {&f, f.q1};
    assert_true(itest_wait_until(queue_exists, &qa, 30));
    itest_publish(f.conn, "", f.q1, "na-1", "{}", 2);
    /* 2 s at one attempt per 400 ms is at most 7 attempts. */
    dead_arg da = {&f, f.dlq1, 8};
    if (!itest_wait_until(dead_or_too_many_runs, &da, 60) ||
        itest_count_lines(f.runs) > 8) {
        dump_log(&f);
        fail_msg("max_age_s 2 never fired: %ld runs",
                 itest_count_lines(f.runs));
    }
    assert_true(itest_wait_until(all_quiet, &qa, 30));
    fx_stop(&f);
    long long t[8];
    int seen[8];
    int n = runs_of(f.runs, "na-1", t, seen, 8);
    assert_true(n >= 2 && n <= 8);
    for (int i = 0; i < n; i++) {
        assert_int_equal(seen[i], 1);
    }
    assert_int_equal(itest_count_lines(f.effects), -1);
    int64_t first = take_dead_letter(&f, f.dlq1, "na-1", n, "max_age_s 2");
    assert_true(first >= t[0] - 1000 && first <= t[0] + 1000);
    fx_teardown(&f);
}

/* Issue 18: batch 1's handler fails, its retry copy is confirmed and the
 * `retrying` outcome committed, and the worker dies before the coalesced
 * ack (failpoint commit.after). The original comes back at once; it must
 * not run as attempt 2 while the copy that is attempt 2 waits its delay in
 * the cascade (a second chain). */
static void test_original_after_lost_ack_does_not_start_second_chain(void **s) {
    (void)s;
#ifndef WARREN_FAILPOINTS
    skip(); /* needs the crash point (configure -DWARREN_FAILPOINTS=ON) */
#endif
    fx f;
    char fpdir[600];
    fx_setup(&f, "twochains",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"max_attempts\": 3, \"jitter\": 0, \"backoff\": {\"kind\": "
             "\"fixed\", \"delay_ms\": 1500}}}");
    snprintf(fpdir, sizeof fpdir, "%s/fp", f.dir);
    assert_int_equal(mkdir(fpdir, 0700), 0);
    itest_queue_declare(f.conn, f.q1);
    setenv("WARREN_FAILPOINT", "commit.after:1:1", 1);
    setenv("WARREN_FAILPOINT_DIR", fpdir, 1);
    fx_start(&f);
    unsetenv("WARREN_FAILPOINT");
    unsetenv("WARREN_FAILPOINT_DIR");
    itest_publish(f.conn, "", f.q1, "tc-1", "{}", 2);
    dead_arg da = {&f, f.dlq1, 3};
    if (!itest_wait_until(dead_or_too_many_runs, &da, 60)) {
        dump_log(&f);
        fail_msg("never dead-lettered");
    }
    quiet_arg qa = {&f, f.q1};
    assert_true(itest_wait_until(all_quiet, &qa, 30));
    fx_stop(&f);
    /* The crash happened, once, where it was asked for. */
    assert_int_equal(count_matching(f.log, "failpoint commit.after hit"), 1);
    long long t[3];
    int seen[3];
    int n = runs_of(f.runs, "tc-1", t, seen, 3);
    if (n != 3 || seen[0] != 1 || seen[1] != 1 || seen[2] != 1 ||
        t[1] - t[0] < 1500 || t[2] - t[1] < 1500) {
        dump_log(&f);
        fail_msg("%d runs; attempt 2 ran %lld ms after attempt 1 (delay "
                 "1500 ms): the redelivered original started a second chain",
                 n, n >= 2 ? t[1] - t[0] : -1);
    }
    assert_int_equal(itest_count_lines(f.effects), -1);
    take_dead_letter(&f, f.dlq1, "tc-1", 3, "gave up after 3 attempts");
    /* The stale original was settled as a duplicate, and said why. */
    assert_true(count_matching(f.log, "\"outcome\":\"duplicate\"") >= 1);
    assert_int_equal(count_matching(f.log, "stale_delivery"), 1);
    fx_teardown(&f);
}

/* Writes a `retrying` record for (queue, id), attempt 1, as a nack-mode
 * worker leaves it while the message waits in <queue>.retry. */
static void put_retrying_record(const fx *f, const char *queue,
                                const char *id) {
    char path[600];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    snprintf(path, sizeof path, "%s/warren.db", f->dir);
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL),
                     SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(
        sqlite3_prepare_v2(db,
                           "INSERT INTO messages(queue, id, state, attempts,"
                           " deliveries, first_failed_at, last_error,"
                           " created_at, updated_at)"
                           " VALUES(?1, ?2, 'retrying', 1, 1, ?3,"
                           " 'flaky failure on attempt 1', ?3, ?3)",
                           -1, &st, NULL),
        SQLITE_OK);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (int64_t)ts.tv_sec * 1000);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static int has_effect(void *arg) {
    fx *f = arg;
    return itest_count_lines(f->effects) >= 1;
}

/* The other side of the rule above: a first delivery from outside the
 * cascade is not taken for a stale one, since no copy of it need be in
 * the cascade. Here a republish-mode worker finds the `retrying` record a
 * nack-mode worker left, and the message moved back by hand from the old
 * <queue>.retry (a fresh publish): it must run as attempt 2, not be acked
 * as a duplicate and lost. */
static void test_fresh_delivery_of_retrying_id_runs_not_swallowed(void **s) {
    (void)s;
    fx f;
    fx_setup(&f, "fresh",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"max_attempts\": 3, \"jitter\": 0, \"backoff\": {\"kind\": "
             "\"fixed\", \"delay_ms\": 300}}}");
    setenv("SUCCEED_AT", "2", 1);
    itest_queue_declare(f.conn, f.q1);
    /* A first run creates the store. */
    fx_start(&f);
    itest_publish(f.conn, "", f.q1, "warm-1", "{}", 2);
    quiet_arg qa = {&f, f.q1};
    assert_true(itest_wait_until(has_effect, &f, 30));
    assert_true(itest_wait_until(all_quiet, &qa, 30));
    fx_stop(&f);
    put_retrying_record(&f, f.q1, "moved-1");
    fx_start(&f);
    itest_publish(f.conn, "", f.q1, "moved-1", "{}", 2);
    lines_arg la = {f.effects, 2};
    if (!itest_wait_until(has_lines, &la, 30)) {
        dump_log(&f);
        fail_msg("the moved message was acked without running: lost");
    }
    assert_true(itest_wait_until(all_quiet, &qa, 30));
    fx_stop(&f);
    long long t[3];
    int seen[3];
    assert_int_equal(runs_of(f.runs, "moved-1", t, seen, 3), 1);
    assert_int_equal(seen[1], 1); /* as attempt 2 */
    assert_int_equal(count_matching(f.effects, "moved-1"), 1);
    assert_int_equal(itest_queue_depth(f.conn, f.dlq1), 0);
    fx_teardown(&f);
}

/* Issue 18: x-warren-attempt and x-warren-first-failed-at are warren's own
 * bookkeeping, trusted only on a copy that came back through its delay
 * cascade. A producer's values (here: attempt 5 of 5, first failed in
 * 1970) are ignored, with the store (q1) and without it (q2). */
static void test_producer_attempt_headers_are_ignored(void **state) {
    (void)state;
    fx f;
    fx_setup(&f, "forged",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"max_attempts\": 5, \"max_age_s\": 600, \"jitter\": 0, "
             "\"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 300}}}, "
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"dedup\": false, "
             "\"retry\": {\"max_attempts\": 5, \"max_age_s\": 600, "
             "\"jitter\": 0, \"backoff\": {\"kind\": \"fixed\", "
             "\"delay_ms\": 300}}}");
    setenv("SUCCEED_AT", "2", 1);
    itest_queue_declare(f.conn, f.q1);
    itest_queue_declare(f.conn, f.q2);
    fx_start(&f);
    amqp_table_entry_t e[2] = {
        {.key = amqp_cstring_bytes("x-warren-attempt")},
        {.key = amqp_cstring_bytes("x-warren-first-failed-at")}};
    e[0].value.kind = AMQP_FIELD_KIND_I64;
    e[0].value.value.i64 = 5;
    e[1].value.kind = AMQP_FIELD_KIND_I64;
    e[1].value.value.i64 = 1000;
    amqp_table_t hdrs = {2, e};
    itest_publish_headers(f.conn, "", f.q1, "fa-1", "{}", 2, &hdrs);
    itest_publish_headers(f.conn, "", f.q2, "fb-1", "{}", 2, &hdrs);
    quiet_arg q1 = {&f, f.q1}, q2 = {&f, f.q2};
    /* Both succeed on attempt 2 (4 runs in all), or something went wrong. */
    if (!itest_wait_until(both_settled, &f, 60)) {
        dump_log(&f);
        fail_msg("not settled: %ld effects", itest_count_lines(f.effects));
    }
    assert_true(itest_wait_until(all_quiet, &q1, 30));
    assert_true(itest_wait_until(all_quiet, &q2, 30));
    fx_stop(&f);
    const char *ids[] = {"fa-1", "fb-1"};
    for (int k = 0; k < 2; k++) {
        long long t[5];
        int seen[5];
        int n = runs_of(f.runs, ids[k], t, seen, 5);
        if (n != 2 || seen[0] != 1 || seen[1] != 1) {
            dump_log(&f);
            fail_msg("%s: %d runs (attempt 1 run %d times, attempt 5 %d "
                     "times): the producer's headers were trusted",
                     ids[k], n, seen[0], seen[4]);
        }
    }
    assert_int_equal(itest_count_lines(f.effects), 2);
    assert_int_equal(count_matching(f.effects, "fa-1"), 1);
    assert_int_equal(count_matching(f.effects, "fb-1"), 1);
    assert_int_equal(itest_queue_depth(f.conn, f.dlq1), 0);
    assert_int_equal(itest_queue_depth(f.conn, f.dlq2), 0);
    fx_teardown(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_nack_mode_without_store_dead_letters_after_max_attempts),
        cmocka_unit_test(
            test_nack_mode_without_store_dead_letters_after_max_age),
        cmocka_unit_test(
            test_original_after_lost_ack_does_not_start_second_chain),
        cmocka_unit_test(test_fresh_delivery_of_retrying_id_runs_not_swallowed),
        cmocka_unit_test(test_producer_attempt_headers_are_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

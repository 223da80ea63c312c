/*
 * test_retry.c - delayed retry and dead-lettering on the private broker:
 * attempts and the delays between them, the attempt cap and the DLQ
 * headers, no head-of-line blocking between delays, a retry route deleted
 * under the worker, nack mode, and a large run with transient failures.
 * Every scenario checks both counts: nothing lost, no effect doubled.
 */
#include "itest.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Records "ID ATTEMPT MS" per run; fails with 75 while the attempt is below
 * $SUCCEED_AT (0: always fail), and only for ids matching $FAIL_MATCH
 * (a shell pattern; default every id). Successes go to $EFFECTS_FILE. */
static const char *flaky =
    "#!/bin/sh\n"
    "now=$(date +%s%3N)\n"
    "echo \"$WARREN_MESSAGE_ID $WARREN_ATTEMPT $now\" >> \"$RUNS_FILE\"\n"
    "case \"$WARREN_MESSAGE_ID\" in\n"
    "  ${FAIL_MATCH:-*})\n"
    "    if [ \"${SUCCEED_AT:-0}\" = 0 ] || [ \"$WARREN_ATTEMPT\" -lt "
    "\"$SUCCEED_AT\" ]; then\n"
    "      echo \"flaky failure on attempt $WARREN_ATTEMPT\" >&2\n"
    "      exit 75\n"
    "    fi;;\n"
    "esac\n"
    "echo \"$WARREN_MESSAGE_ID\" >> \"$EFFECTS_FILE\"\n";

typedef struct {
    char *dir;
    char q1[96], q2[96];
    char cfg[512], log[512], runs[512], effects[512], script[512];
    pid_t pid;
    amqp_connection_state_t conn;
} fx;

static void fx_setup(fx *f, const char *name, const char *consumers_fmt) {
    char text[4096], consumers[3000];
    f->dir = itest_tmpdir();
    snprintf(f->q1, sizeof f->q1, "it.retry.%s.%d", name, (int)getpid());
    snprintf(f->q2, sizeof f->q2, "it.retry.%s.b.%d", name, (int)getpid());
    snprintf(f->cfg, sizeof f->cfg, "%s/warren.json", f->dir);
    snprintf(f->log, sizeof f->log, "%s/warren.log", f->dir);
    snprintf(f->runs, sizeof f->runs, "%s/runs", f->dir);
    snprintf(f->effects, sizeof f->effects, "%s/effects", f->dir);
    snprintf(f->script, sizeof f->script, "%s/flaky.sh", f->dir);
    itest_write_file(f->script, flaky);
    assert_int_equal(chmod(f->script, 0700), 0);
    /* consumers_fmt takes (q1, script, q2, script) */
    snprintf(consumers, sizeof consumers, consumers_fmt, f->q1, f->script,
             f->q2, f->script);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"}, \"consumers\": [%s]}",
             f->dir, consumers);
    itest_write_file(f->cfg, text);
    setenv("RUNS_FILE", f->runs, 1);
    setenv("EFFECTS_FILE", f->effects, 1);
    unsetenv("SUCCEED_AT");
    unsetenv("FAIL_MATCH");
    f->conn = itest_connect();
    f->pid = 0;
}

static void fx_start(fx *f) {
    const char *args[] = {"run", "-c", f->cfg, NULL};
    f->pid = itest_spawn_warren(args, f->log);
}

static void fx_stop(fx *f) {
    if (f->pid > 0) {
        int status = itest_terminate(f->pid, 30);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        f->pid = 0;
    }
}

static void fx_teardown(fx *f) {
    const char *qs[] = {f->q1, f->q2};
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

typedef struct {
    const char *path;
    long want;
} lines_arg;

static int has_lines(void *arg) {
    lines_arg *a = arg;
    return itest_count_lines(a->path) >= a->want;
}

typedef struct {
    amqp_connection_state_t conn;
    const char *queue;
    long want;
} depth_arg;

static int depth_at_least(void *arg) {
    depth_arg *a = arg;
    return itest_queue_depth(a->conn, a->queue) >= a->want;
}

/* Reads the runs file: for message `id`, the times of attempts 1..n. */
static int attempt_times(const char *runs, const char *id, long long *ms,
                         int max) {
    FILE *fp = fopen(runs, "r");
    char line[256], mid[128];
    int n = 0, attempt;
    long long t;
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        if (sscanf(line, "%127s %d %lld", mid, &attempt, &t) == 3 &&
            strcmp(mid, id) == 0 && attempt >= 1 && attempt <= max) {
            ms[attempt - 1] = t;
            n = attempt > n ? attempt : n;
        }
    }
    fclose(fp);
    return n;
}

static void dump_log(const fx *f) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tail -n 30 %s >&2; cat %s >&2", f->log, f->runs);
    if (system(cmd) != 0) {
        /* best effort */
    }
}

static void
test_fails_twice_then_succeeds_on_attempt_3_after_delays(void **state) {
    (void)state;
    fx f;
    fx_setup(&f, "thrice",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"max_attempts\": 5, \"jitter\": 0, \"backoff\": {\"kind\": "
             "\"fixed\", \"delay_ms\": 1000}}}");
    setenv("SUCCEED_AT", "3", 1);
    itest_queue_declare(f.conn, f.q1);
    fx_start(&f);
    itest_publish(f.conn, "", f.q1, "t-1", "{}", 2);
    lines_arg la = {f.effects, 1};
    if (!itest_wait_until(has_lines, &la, 60)) {
        dump_log(&f);
        fail_msg("not handled");
    }
    fx_stop(&f);
    long long t[5];
    assert_int_equal(attempt_times(f.runs, "t-1", t, 5), 3);
    assert_int_equal(itest_count_lines(f.runs), 3);
    assert_int_equal(itest_count_lines(f.effects), 1);
    for (int i = 1; i < 3; i++) {
        long long gap = t[i] - t[i - 1];
        /* at least the configured delay; at most 1 s + 20% above it */
        if (gap < 1000 || gap > 1000 + 1200) {
            dump_log(&f);
            fail_msg("gap before attempt %d was %lld ms", i + 1, gap);
        }
    }
    assert_int_equal(itest_queue_depth(f.conn, f.q1), 0);
    fx_teardown(&f);
}

static const char *header_names[] = {
    "x-warren-queue",    "x-warren-exchange", "x-warren-routing-key",
    "x-warren-attempts", "x-warren-error",    "x-warren-first-failed-at",
    "x-warren-dead-at",  "x-warren-worker",   "x-warren-replays"};

static void
test_always_failing_runs_max_attempts_then_dead_with_headers(void **state) {
    (void)state;
    fx f;
    char dlq[160];
    fx_setup(&f, "cap",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"max_attempts\": 3, \"jitter\": 0, \"backoff\": {\"kind\": "
             "\"fixed\", \"delay_ms\": 200}}}");
    snprintf(dlq, sizeof dlq, "%s.dlq", f.q1);
    itest_queue_declare(f.conn, f.q1);
    fx_start(&f);
    itest_publish(f.conn, "", f.q1, "dead-1", "{\"x\":1}", 7);
    depth_arg da = {f.conn, dlq, 1};
    if (!itest_wait_until(depth_at_least, &da, 60)) {
        dump_log(&f);
        fail_msg("nothing dead-lettered");
    }
    fx_stop(&f);
    assert_int_equal(itest_count_lines(f.runs), 3);
    assert_int_equal(itest_count_lines(f.effects), -1);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 1);
    assert_int_equal(itest_queue_depth(f.conn, f.q1), 0);
    itest_msg m;
    assert_int_equal(itest_get(f.conn, dlq, &m, 0), 1);
    assert_string_equal(m.message_id, "dead-1");
    assert_string_equal(m.body, "{\"x\":1}");
    for (size_t i = 0; i < sizeof header_names / sizeof *header_names; i++) {
        if (itest_msg_header(&m, header_names[i]) == NULL) {
            fail_msg("dead letter lacks header %s", header_names[i]);
        }
    }
    const amqp_field_value_t *v = itest_msg_header(&m, "x-warren-attempts");
    assert_int_equal(v->value.i64, 3);
    v = itest_msg_header(&m, "x-warren-error");
    char err[512];
    snprintf(err, sizeof err, "%.*s", (int)v->value.bytes.len,
             (const char *)v->value.bytes.bytes);
    assert_non_null(strstr(err, "gave up after 3 attempts"));
    assert_non_null(strstr(err, "flaky failure on attempt 3"));
    v = itest_msg_header(&m, "x-warren-routing-key");
    assert_int_equal(v->value.bytes.len, strlen(f.q1));
    assert_null(itest_msg_header(&m, "x-death"));
    itest_msg_free(&m);
    /* `warren status` reports the dead letter and the store's dead record
     * (the letter was taken above: publish it back first). */
    itest_publish(f.conn, "", dlq, "dead-1", "{\"x\":1}", 7);
    char cmd[900], out[4096] = "";
    setenv("WARREN_URL", itest_url(), 1);
    snprintf(cmd, sizeof cmd, "%s status -c %s --json", itest_warren_bin(),
             f.cfg);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = '\0';
    assert_int_equal(pclose(p), 0);
    unsetenv("WARREN_URL");
    assert_non_null(strstr(out, "\"dlq_depth\":\t1"));
    assert_non_null(strstr(out, "\"dead\":\t1"));
    fx_teardown(&f);
}

static void
test_long_delay_published_first_does_not_delay_a_short_one(void **state) {
    (void)state;
    fx f;
    fx_setup(&f, "hol",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"jitter\": 0, \"backoff\": {\"kind\": \"fixed\", "
             "\"delay_ms\": 30000}}}, {\"queue\": \"%s\", \"handler\": "
             "\"exec:%s\", \"retry\": {\"jitter\": 0, \"backoff\": "
             "{\"kind\": \"fixed\", \"delay_ms\": 1000}}}");
    setenv("SUCCEED_AT", "2", 1);
    itest_queue_declare(f.conn, f.q1);
    itest_queue_declare(f.conn, f.q2);
    fx_start(&f);
    itest_publish(f.conn, "", f.q1, "slow-A", "{}", 2);
    lines_arg first = {f.runs, 1};
    assert_true(itest_wait_until(has_lines, &first, 30));
    itest_publish(f.conn, "", f.q2, "fast-B", "{}", 2);
    lines_arg la = {f.effects, 1};
    if (!itest_wait_until(has_lines, &la, 20)) {
        dump_log(&f);
        fail_msg("the 1 s retry did not come back");
    }
    long long t[2];
    assert_int_equal(attempt_times(f.runs, "fast-B", t, 2), 2);
    long long gap = t[1] - t[0];
    if (gap < 1000 || gap > 2200) {
        dump_log(&f);
        fail_msg("1 s retry took %lld ms behind a 30 s one", gap);
    }
    /* The 30 s message is still waiting, not lost: it is in the cascade. */
    assert_int_equal(attempt_times(f.runs, "slow-A", t, 2), 1);
    fx_stop(&f);
    fx_teardown(&f);
}

static void test_retry_route_deleted_under_worker_loses_nothing(void **state) {
    (void)state;
    fx f;
    fx_setup(&f, "gone",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"jitter\": 0, \"backoff\": {\"kind\": \"fixed\", "
             "\"delay_ms\": 300}}}");
    setenv("SUCCEED_AT", "2", 1);
    itest_queue_declare(f.conn, f.q1);
    fx_start(&f);
    itest_publish(f.conn, "", f.q1, "warm-up", "{}", 2);
    lines_arg warm = {f.effects, 1};
    assert_true(itest_wait_until(has_lines, &warm, 30));
    /* Delete the entry of the delay cascade the worker publishes a 300 ms
     * retry to (300 = 0b100101100: it enters at level 8). */
    amqp_exchange_delete(f.conn, 1, amqp_cstring_bytes("warren.delay.8"), 0);
    assert_int_equal(amqp_get_rpc_reply(f.conn).reply_type,
                     AMQP_RESPONSE_NORMAL);
    itest_publish(f.conn, "", f.q1, "orphan", "{}", 2);
    lines_arg la = {f.effects, 2};
    if (!itest_wait_until(has_lines, &la, 60)) {
        dump_log(&f);
        fail_msg("message lost after its retry route vanished");
    }
    fx_stop(&f);
    /* The failed publish was reported, the worker reconnected (declaring
     * the cascade again), and the message succeeded exactly once. */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "grep -q 'warren.delay.8' %s", f.log);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(itest_count_lines(f.effects), 2);
    assert_int_equal(itest_queue_depth(f.conn, f.q1), 0);
    fx_teardown(&f);
}

static void
test_nack_mode_retries_through_broker_with_store_attempts(void **state) {
    (void)state;
    fx f;
    fx_setup(&f, "nack",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"mode\": \"nack\", \"max_attempts\": 4, \"jitter\": 0, "
             "\"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 500}}}");
    setenv("SUCCEED_AT", "3", 1);
    fx_start(&f);
    /* the worker declares the queue with its dead-letter arguments */
    depth_arg exists = {f.conn, f.q1, 0};
    assert_true(itest_wait_until(depth_at_least, &exists, 30));
    itest_publish(f.conn, "", f.q1, "n-1", "{}", 2);
    lines_arg la = {f.effects, 1};
    if (!itest_wait_until(has_lines, &la, 60)) {
        dump_log(&f);
        fail_msg("nack-mode retry never succeeded");
    }
    fx_stop(&f);
    long long t[4];
    assert_int_equal(attempt_times(f.runs, "n-1", t, 4), 3);
    assert_int_equal(itest_count_lines(f.runs), 3);
    assert_true(t[1] - t[0] >= 500);
    assert_true(t[2] - t[1] >= 500);
    fx_teardown(&f);
}

typedef struct {
    fx *f;
    long want;
    char dlq[160];
} done_arg;

static int all_done(void *arg) {
    done_arg *a = arg;
    if (itest_count_lines(a->f->effects) < a->want ||
        itest_queue_depth(a->f->conn, a->f->q1) != 0) {
        return 0;
    }
    return itest_delay_cascade_empty(a->f->conn);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
test_5000_with_20_percent_transient_failures_each_once_none_dead(void **state) {
    (void)state;
    fx f;
    fx_setup(&f, "bulk",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"prefetch\": "
             "200, \"retry\": {\"jitter\": 0.2, \"backoff\": {\"kind\": "
             "\"fixed\", \"delay_ms\": 500}}}");
    /* ids ending in 0 or 5 (20%) fail on their first attempt */
    setenv("SUCCEED_AT", "2", 1);
    setenv("FAIL_MATCH", "*[05]", 1);
    itest_queue_declare(f.conn, f.q1);
    itest_publish_n(f.conn, "", f.q1, "bulk", 5000, NULL, 0);
    fx_start(&f);
    done_arg a = {&f, 5000, ""};
    snprintf(a.dlq, sizeof a.dlq, "%s.dlq", f.q1);
    if (!itest_wait_until(all_done, &a, 300)) {
        dump_log(&f);
        fail_msg("only %ld of 5000 done", itest_count_lines(f.effects));
    }
    fx_stop(&f);
    assert_int_equal(itest_count_lines(f.runs), 6000);
    assert_int_equal(itest_queue_depth(f.conn, a.dlq), 0);
    assert_int_equal(itest_queue_depth(f.conn, f.q1), 0);
    FILE *fp = fopen(f.effects, "r");
    assert_non_null(fp);
    char **ids = calloc(5001, sizeof *ids), line[64];
    int n = 0;
    while (n < 5001 && fgets(line, sizeof line, fp)) {
        ids[n++] = strdup(line);
    }
    fclose(fp);
    assert_int_equal(n, 5000);
    qsort(ids, (size_t)n, sizeof *ids, cmp_str);
    for (int i = 1; i < n; i++) {
        if (strcmp(ids[i - 1], ids[i]) == 0) {
            fail_msg("effect doubled: %s", ids[i]);
        }
    }
    for (int i = 0; i < n; i++) {
        free(ids[i]);
    }
    free(ids);
    fx_teardown(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_fails_twice_then_succeeds_on_attempt_3_after_delays),
        cmocka_unit_test(
            test_always_failing_runs_max_attempts_then_dead_with_headers),
        cmocka_unit_test(
            test_long_delay_published_first_does_not_delay_a_short_one),
        cmocka_unit_test(test_retry_route_deleted_under_worker_loses_nothing),
        cmocka_unit_test(
            test_nack_mode_retries_through_broker_with_store_attempts),
        cmocka_unit_test(
            test_5000_with_20_percent_transient_failures_each_once_none_dead),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

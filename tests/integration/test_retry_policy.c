/*
 * test_retry_policy.c - the retry policy's gRPC-parity knobs end to end on
 * the private broker (issue 14 section 3): max_age_s is one deadline
 * across all attempts; a retry budget ("retryThrottling") that runs out
 * dead-letters with its reason instead of feeding the delay cascade, or,
 * with when_exhausted "pause", hands messages back and pauses the worker
 * until the dependency is back. Every case checks both counts: nothing
 * lost (queue, DLQ and effects add up), no effect doubled.
 */
#include "itest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Records "ID ATTEMPT MS" per run; fails (75) while $FLAG_FILE exists;
 * each success goes to $EFFECTS_FILE. */
static const char *dependent =
    "#!/bin/sh\n"
    "echo \"$WARREN_MESSAGE_ID $WARREN_ATTEMPT $(date +%s%3N)\" >> "
    "\"$RUNS_FILE\"\n"
    "if [ -e \"$FLAG_FILE\" ]; then\n"
    "  echo \"dependency down\" >&2\n"
    "  exit 75\n"
    "fi\n"
    "echo \"$WARREN_MESSAGE_ID\" >> \"$EFFECTS_FILE\"\n";

typedef struct {
    char *dir;
    char queue[128], dlq[160];
    char cfg[512], log[512], runs[512], effects[512], flag[512], script[512];
    pid_t pid;
    amqp_connection_state_t conn;
} fx;

/* consumer_fmt takes (queue, script). */
static void fx_setup(fx *f, const char *name, const char *consumer_fmt) {
    char text[4096], consumer[2048];
    f->dir = itest_tmpdir();
    snprintf(f->queue, sizeof f->queue, "it.rpolicy.%s.%d", name,
             (int)getpid());
    snprintf(f->dlq, sizeof f->dlq, "%s.dlq", f->queue);
    snprintf(f->cfg, sizeof f->cfg, "%s/warren.json", f->dir);
    snprintf(f->log, sizeof f->log, "%s/warren.log", f->dir);
    snprintf(f->runs, sizeof f->runs, "%s/runs", f->dir);
    snprintf(f->effects, sizeof f->effects, "%s/effects", f->dir);
    snprintf(f->flag, sizeof f->flag, "%s/dependency-down", f->dir);
    snprintf(f->script, sizeof f->script, "%s/handler.sh", f->dir);
    itest_write_file(f->script, dependent);
    assert_int_equal(chmod(f->script, 0700), 0);
    snprintf(consumer, sizeof consumer, consumer_fmt, f->queue, f->script);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"}, \"consumers\": [%s]}",
             f->dir, consumer);
    itest_write_file(f->cfg, text);
    setenv("RUNS_FILE", f->runs, 1);
    setenv("EFFECTS_FILE", f->effects, 1);
    setenv("FLAG_FILE", f->flag, 1);
    f->conn = itest_connect();
    itest_queue_declare(f->conn, f->queue);
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
    if (f->pid > 0) {
        itest_terminate(f->pid, 10);
    }
    itest_queue_delete(f->conn, f->queue);
    itest_queue_delete(f->conn, f->dlq);
    itest_disconnect(f->conn);
    itest_rmtree(f->dir);
    free(f->dir);
}

static void dump_log(const fx *f) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "grep -v 'exec handler pid' %s | tail -n 40 >&2; cat %s >&2",
             f->log, f->runs);
    if (system(cmd) != 0) {
        /* best effort */
    }
}

static long count_lines_with(const char *path, const char *a, const char *b) {
    FILE *fp = fopen(path, "r");
    char line[4096];
    long n = 0;
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        if (strstr(line, a) && (b == NULL || strstr(line, b))) {
            n++;
        }
    }
    fclose(fp);
    return n;
}

static long distinct_lines(const char *path) {
    char cmd[700];
    long n = -1;
    snprintf(cmd, sizeof cmd, "sort -u %s | wc -l", path);
    FILE *p = popen(cmd, "r");
    if (p == NULL) {
        return -1;
    }
    if (fscanf(p, "%ld", &n) != 1) {
        n = -1;
    }
    pclose(p);
    return n;
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

typedef struct {
    const char *path;
    long want;
} lines_arg;

static int has_lines(void *arg) {
    lines_arg *a = arg;
    return itest_count_lines(a->path) >= a->want;
}

/* Reads an x-warren-error (a UTF-8 string) into buf. */
static void header_text(const itest_msg *m, const char *name, char *buf,
                        size_t len) {
    const amqp_field_value_t *v = itest_msg_header(m, name);
    buf[0] = '\0';
    if (v &&
        (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES)) {
        size_t n = v->value.bytes.len < len - 1 ? v->value.bytes.len : len - 1;
        memcpy(buf, v->value.bytes.bytes, n);
        buf[n] = '\0';
    }
}

/* Milliseconds of the first and last run in the runs file. */
static void run_span(const char *runs, long long *first, long long *last) {
    FILE *fp = fopen(runs, "r");
    char line[256], id[128];
    int attempt;
    long long t;
    *first = *last = 0;
    if (fp == NULL) {
        return;
    }
    while (fgets(line, sizeof line, fp)) {
        if (sscanf(line, "%127s %d %lld", id, &attempt, &t) == 3) {
            if (*first == 0) {
                *first = t;
            }
            *last = t;
        }
    }
    fclose(fp);
}

/* max_age_s is one deadline across attempts (gRPC's call deadline): with
 * 50 attempts allowed and 300 ms between them, a message failing for 1 s
 * is dead-lettered once 1 s has passed since its first failure, with that
 * reason, after a handful of attempts, not 50. */
static void test_max_age_s_ends_retries_across_attempts(void **st) {
    (void)st;
    fx f;
    fx_setup(&f, "maxage",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\","
             " \"retry\": {\"max_attempts\": 50, \"jitter\": 0,"
             " \"max_age_s\": 1,"
             " \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 300}}}");
    itest_write_file(f.flag, "down\n");
    itest_publish(f.conn, "", f.queue, "old-1", "{}", 2);
    fx_start(&f);
    depth_arg d = {f.conn, f.dlq, 1};
    if (!itest_wait_until(depth_at_least, &d, 30)) {
        dump_log(&f);
        fail_msg("never dead-lettered");
    }
    fx_stop(&f);
    long runs = itest_count_lines(f.runs);
    long long first, last;
    run_span(f.runs, &first, &last);
    /* 1 s of failures at one per ~300 ms (+ cascade latency): 4 or 5
     * runs; the last run is the first at or past 1 s. */
    if (runs < 3 || runs > 6) {
        dump_log(&f);
        fail_msg("%ld runs before max_age_s 1 ended it", runs);
    }
    fprintf(stderr, "max_age_s 1: %ld runs, first to last %lld ms\n", runs,
            last - first);
    assert_true(last - first >= 1000);
    assert_true(last - first < 2500);
    itest_msg m;
    char err[1100];
    assert_int_equal(itest_get(f.conn, f.dlq, &m, 0), 1);
    header_text(&m, "x-warren-error", err, sizeof err);
    if (strstr(err, "(max_age_s 1)") == NULL) {
        fail_msg("x-warren-error: %s", err);
    }
    assert_non_null(strstr(err, "dependency down"));
    itest_msg_free(&m);
    /* nothing lost, nothing doubled: one letter, no effect, queue empty */
    assert_int_equal(itest_queue_depth(f.conn, f.dlq), 0);
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    assert_int_equal(itest_count_lines(f.effects), -1);
    fx_teardown(&f);
}

/* retry.budget with when_exhausted "dead": max_tokens 4 stops retries at
 * 2 tokens, so of 10 messages that all fail only the first is retried
 * (4 -> 3); the second failure reaches the threshold and every failure
 * from then on goes to the DLQ with the budget as its reason. */
static void test_exhausted_budget_dead_letters_with_its_reason(void **st) {
    (void)st;
    fx f;
    const int n = 10;
    fx_setup(&f, "budgetdead",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"prefetch\": 1,"
             " \"retry\": {\"max_attempts\": 50, \"jitter\": 0,"
             " \"budget\": {\"max_tokens\": 4, \"token_ratio\": 0.1},"
             " \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 100}}}");
    itest_write_file(f.flag, "down\n");
    itest_publish_n(f.conn, "", f.queue, "bd", n, NULL, 0);
    fx_start(&f);
    depth_arg d = {f.conn, f.dlq, n};
    if (!itest_wait_until(depth_at_least, &d, 30)) {
        dump_log(&f);
        fail_msg("%ld of %d dead-lettered", itest_queue_depth(f.conn, f.dlq),
                 n);
    }
    fx_stop(&f);
    /* 10 first attempts and the one retry of bd-0 */
    assert_int_equal(itest_count_lines(f.runs), n + 1);
    assert_int_equal(count_lines_with(f.log, "\"outcome\":\"retry\"", NULL), 1);
    int with_reason = 0;
    itest_msg m;
    while (itest_get(f.conn, f.dlq, &m, 0) == 1) {
        char err[1100];
        header_text(&m, "x-warren-error", err, sizeof err);
        with_reason += strstr(err, "retry budget exhausted") != NULL &&
                       strstr(err, "dependency down") != NULL;
        itest_msg_free(&m);
    }
    assert_int_equal(with_reason, n);
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    assert_int_equal(itest_count_lines(f.effects), -1);
    fx_teardown(&f);
}

/* when_exhausted "pause": the failure that exhausts the budget is handed
 * back to the queue (no attempt spent, no retry copy) and the worker stops
 * for breaker.open_s, its breaker tripped although its thresholds are off.
 * While down, the handler runs about once per open_s, nothing reaches the
 * cascade or the DLQ; once back, every message is handled exactly once. */
static void test_exhausted_budget_pauses_then_drains(void **st) {
    (void)st;
    fx f;
    const int n = 20;
    fx_setup(&f, "budgetpause",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"prefetch\": 5,"
             " \"breaker\": {\"open_s\": 1},"
             " \"retry\": {\"max_attempts\": 50, \"jitter\": 0,"
             " \"budget\": {\"max_tokens\": 2, \"token_ratio\": 0.5,"
             " \"when_exhausted\": \"pause\"},"
             " \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 100}}}");
    itest_write_file(f.flag, "down\n");
    itest_publish_n(f.conn, "", f.queue, "bp", n, NULL, 0);
    fx_start(&f);
    lines_arg three = {f.runs, 3};
    if (!itest_wait_until(has_lines, &three, 30)) {
        dump_log(&f);
        fail_msg("the handler did not run 3 times");
    }
    long long first, last;
    run_span(f.runs, &first, &last);
    long runs = itest_count_lines(f.runs);
    fprintf(stderr, "budget pause: %ld runs in %lld ms while down\n", runs,
            last - first);
    /* one run per pause of open_s 1 s */
    if (last - first < (runs - 1) * 900) {
        dump_log(&f);
        fail_msg("%ld runs in %lld ms: not paused", runs, last - first);
    }
    assert_int_equal(count_lines_with(f.log, "\"outcome\":\"retry\"", NULL), 0);
    assert_true(count_lines_with(f.log, "\"event\":\"breaker\"",
                                 "retry budget exhausted") >= 1);
    assert_true(itest_queue_depth(f.conn, f.dlq) <= 0);
    assert_true(itest_delay_cascade_empty(f.conn));
    assert_int_equal(unlink(f.flag), 0);
    lines_arg all = {f.effects, n};
    if (!itest_wait_until(has_lines, &all, 30)) {
        dump_log(&f);
        fail_msg("%ld of %d handled", itest_count_lines(f.effects), n);
    }
    fx_stop(&f);
    assert_int_equal(itest_count_lines(f.effects), n);
    assert_int_equal(distinct_lines(f.effects), n);
    assert_true(itest_queue_depth(f.conn, f.dlq) <= 0);
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    fx_teardown(&f);
}

/* Pause mode with a breaker.fallback that fails as well: the breaker is
 * open already, so handing the fallback's failures back would bring them
 * straight back to it, spending no attempt, for ever. They go through the
 * retry policy instead and end in the DLQ after max_attempts. */
static void test_paused_budget_with_failing_fallback_still_ends(void **st) {
    (void)st;
    fx f;
    const int n = 5;
    char fmt[1024];
    /* the fallback is the same failing script: (queue, script, script) */
    snprintf(fmt, sizeof fmt,
             "{\"queue\": \"%%s\", \"handler\": \"exec:%%s\","
             " \"prefetch\": 5,"
             " \"breaker\": {\"open_s\": 1, \"fallback\": \"exec:%%s fb\"},"
             " \"retry\": {\"max_attempts\": 3, \"jitter\": 0,"
             " \"budget\": {\"max_tokens\": 2, \"token_ratio\": 0.5,"
             " \"when_exhausted\": \"pause\"},"
             " \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 100}}}");
    fx_setup(&f, "budgetfb", "{\"queue\": \"%s\", \"handler\": \"exec:%s\"}");
    char consumer[2048], text[4096];
    snprintf(consumer, sizeof consumer, fmt, f.queue, f.script, f.script);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"}, \"consumers\": [%s]}",
             f.dir, consumer);
    itest_write_file(f.cfg, text);
    itest_write_file(f.flag, "down\n");
    itest_publish_n(f.conn, "", f.queue, "bf", n, NULL, 0);
    fx_start(&f);
    depth_arg d = {f.conn, f.dlq, n};
    if (!itest_wait_until(depth_at_least, &d, 30)) {
        dump_log(&f);
        fail_msg("%ld of %d dead-lettered; %ld handler runs",
                 itest_queue_depth(f.conn, f.dlq), n,
                 itest_count_lines(f.runs));
    }
    fx_stop(&f);
    long runs = itest_count_lines(f.runs);
    fprintf(stderr, "pause + failing fallback: %ld runs for %d messages\n",
            runs, n);
    /* 3 attempts each, plus the odd failure handed back before a pause */
    assert_true(runs >= 3 * n);
    assert_true(runs <= 3 * n + 10);
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    assert_int_equal(itest_count_lines(f.effects), -1);
    fx_teardown(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_age_s_ends_retries_across_attempts),
        cmocka_unit_test(test_exhausted_budget_dead_letters_with_its_reason),
        cmocka_unit_test(test_exhausted_budget_pauses_then_drains),
        cmocka_unit_test(test_paused_budget_with_failing_fallback_still_ends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_worker.c - the single worker end to end against the private broker:
 * every message handled exactly once and acked; each startup failure gives
 * its documented exit code and a clear message; SIGTERM during a slow
 * handler loses nothing.
 */
#include "itest.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    char *dir;
    char queue[128];
    char cfg[512];
    char log[512];
    char effects[512];
    char script[512];
} fixture;

static void write_script(const char *path, const char *text) {
    itest_write_file(path, text);
    assert_int_equal(chmod(path, 0700), 0);
}

/* A handler that records each message it handles, one line per run. */
static const char *recorder =
    "#!/bin/sh\n"
    "[ -n \"$STARTED_FILE\" ] && echo started >> \"$STARTED_FILE\"\n"
    "[ -n \"$SLEEP_S\" ] && sleep \"$SLEEP_S\"\n"
    "echo \"$WARREN_MESSAGE_ID $WARREN_ATTEMPT\" >> \"$EFFECTS_FILE\"\n"
    "exit 0\n";

static void setup_fixture(fixture *f, const char *name, const char *extra) {
    char text[4096];
    f->dir = itest_tmpdir();
    snprintf(f->queue, sizeof f->queue, "it.worker.%s.%d", name, (int)getpid());
    snprintf(f->cfg, sizeof f->cfg, "%s/warren.json", f->dir);
    snprintf(f->log, sizeof f->log, "%s/warren.log", f->dir);
    snprintf(f->effects, sizeof f->effects, "%s/effects", f->dir);
    snprintf(f->script, sizeof f->script, "%s/handler.sh", f->dir);
    write_script(f->script, recorder);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"},\n"
             " \"shutdown_grace_s\": 20,\n"
             " \"consumers\": [{\"queue\": \"%s\", \"handler\": \"exec:%s\",\n"
             "   \"prefetch\": 100 %s}]}\n",
             f->dir, f->queue, f->script, extra ? extra : "");
    itest_write_file(f->cfg, text);
    setenv("EFFECTS_FILE", f->effects, 1);
    unsetenv("STARTED_FILE");
    unsetenv("SLEEP_S");
}

static void teardown_fixture(fixture *f) {
    amqp_connection_state_t c = itest_connect();
    itest_queue_delete(c, f->queue);
    char dlq[160];
    snprintf(dlq, sizeof dlq, "%s.dlq", f->queue);
    itest_queue_delete(c, dlq);
    itest_disconnect(c);
    itest_rmtree(f->dir);
    free(f->dir);
}

static char *slurp(const char *path) {
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        return strdup("");
    }
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    size_t got = fread(buf, 1, (size_t)n, fp);
    buf[got] = '\0';
    fclose(fp);
    return buf;
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

static int depth_is(void *arg) {
    depth_arg *a = arg;
    return itest_queue_depth(a->conn, a->queue) == a->want;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs warren with exactly this environment URL (not the test broker's),
 * waits for it to exit, returns the wait status; stderr goes to `log`. */
static int run_with_url(const char *url, const char *cfg, const char *log,
                        double timeout_s) {
    const char *saved = getenv("WARREN_TEST_URL");
    char *copy = saved ? strdup(saved) : NULL;
    /* itest_spawn passes WARREN_URL=itest_url(): point it at `url`. */
    setenv("WARREN_TEST_URL", url, 1);
    const char *args[] = {"run", "-c", cfg, NULL};
    pid_t pid = itest_spawn_warren(args, log);
    if (copy) {
        setenv("WARREN_TEST_URL", copy, 1);
        free(copy);
    }
    int status = 0;
    if (!itest_wait_exit(pid, timeout_s, &status)) {
        status = itest_terminate(pid, 5);
        fail_msg("warren did not exit within %.0f s", timeout_s);
    }
    return status;
}

static void assert_exit(int status, int code, const char *log,
                        const char *needle) {
    char *text = slurp(log);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != code ||
        strstr(text, needle) == NULL) {
        fail_msg("expected exit %d and '%s' in the log, got status 0x%x:\n%s",
                 code, needle, status, text);
    }
    free(text);
}

static void
test_thousand_messages_each_handled_exactly_once_and_acked(void **state) {
    (void)state;
    fixture f;
    setup_fixture(&f, "1k", NULL);
    amqp_connection_state_t c = itest_connect();
    itest_queue_declare(c, f.queue);
    itest_publish_n(c, "", f.queue, "m", 1000, NULL, 0);
    const char *args[] = {"run", "-c", f.cfg, NULL};
    pid_t pid = itest_spawn_warren(args, f.log);

    lines_arg la = {f.effects, 1000};
    if (!itest_wait_until(has_lines, &la, 120)) {
        itest_terminate(pid, 5);
        char *log = slurp(f.log);
        fail_msg("only %ld of 1000 handled; log:\n%s",
                 itest_count_lines(f.effects), log);
    }
    /* A clean stop: whatever was unacked would go back to the queue. */
    assert_int_equal(kill(pid, SIGTERM), 0);
    int status = 0;
    assert_true(itest_wait_exit(pid, 30, &status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(itest_queue_depth(c, f.queue), 0);

    char *text = slurp(f.effects);
    char *ids[1001];
    int n = 0;
    for (char *save, *line = strtok_r(text, "\n", &save); line && n < 1001;
         line = strtok_r(NULL, "\n", &save)) {
        ids[n++] = line;
    }
    assert_int_equal(n, 1000);
    qsort(ids, (size_t)n, sizeof ids[0], cmp_str);
    for (int i = 1; i < n; i++) {
        if (strcmp(ids[i - 1], ids[i]) == 0) {
            fail_msg("handled twice: %s", ids[i]);
        }
    }
    for (int i = 0; i < n; i++) {
        /* every line is "m-K 1": first attempt, no retries */
        assert_non_null(strstr(ids[i], " 1"));
    }
    free(text);
    itest_disconnect(c);
    teardown_fixture(&f);
}

static void
test_broker_unreachable_exits_3_naming_url_without_password(void **state) {
    (void)state;
    fixture f;
    setup_fixture(&f, "unreach", NULL);
    /* Port 1 on loopback: nothing listens there. */
    int st =
        run_with_url("amqp://guest:s3cret@127.0.0.1:1/%2f", f.cfg, f.log, 30);
    assert_exit(st, 3, f.log, "cannot connect");
    char *log = slurp(f.log);
    assert_null(strstr(log, "s3cret"));
    assert_non_null(strstr(log, "***"));
    free(log);
    teardown_fixture(&f);
}

/* The test broker's URL with its credentials or vhost replaced. */
static void url_with(char *out, size_t len, const char *userinfo,
                     const char *vhost) {
    const char *u = itest_url();
    const char *at = strchr(u, '@');
    const char *slash = strchr(at, '/');
    snprintf(out, len, "amqp://%s@%.*s/%s", userinfo,
             (int)(slash ? slash - at - 1 : (long)strlen(at + 1)), at + 1,
             vhost);
}

static void test_wrong_password_exits_4_authentication_refused(void **state) {
    (void)state;
    fixture f;
    char url[512];
    setup_fixture(&f, "auth", NULL);
    url_with(url, sizeof url, "guest:wrong-password", "%2f");
    int st = run_with_url(url, f.cfg, f.log, 30);
    assert_exit(st, 4, f.log, "authentication refused");
    char *log = slurp(f.log);
    assert_null(strstr(log, "wrong-password"));
    free(log);
    teardown_fixture(&f);
}

static void test_missing_vhost_exits_5_naming_the_vhost(void **state) {
    (void)state;
    fixture f;
    char url[512];
    setup_fixture(&f, "vhost", NULL);
    url_with(url, sizeof url, "guest:guest", "no-such-vhost");
    int st = run_with_url(url, f.cfg, f.log, 30);
    assert_exit(st, 5, f.log, "no-such-vhost");
    teardown_fixture(&f);
}

static void
test_queue_with_other_arguments_exits_6_saying_what_differs(void **state) {
    (void)state;
    fixture f;
    setup_fixture(&f, "precond", NULL);
    amqp_connection_state_t c = itest_connect();
    amqp_table_entry_t e = {
        .key = amqp_cstring_bytes("x-max-length"),
        .value = {.kind = AMQP_FIELD_KIND_I32, .value.i32 = 10}};
    amqp_table_t args = {1, &e};
    itest_queue_declare_args(c, f.queue, &args);
    int st = run_with_url(itest_url(), f.cfg, f.log, 30);
    assert_exit(st, 6, f.log, "x-max-length");
    itest_disconnect(c);
    teardown_fixture(&f);
}

static void
test_handler_that_cannot_load_exits_7_before_connecting(void **state) {
    (void)state;
    fixture f;
    setup_fixture(&f, "handler", NULL);
    char text[1024];
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"}, \"consumers\": "
             "[{\"queue\": \"%s\", \"handler\": \"exec:%s/missing.sh\"}]}",
             f.dir, f.queue, f.dir);
    itest_write_file(f.cfg, text);
    /* Unreachable broker: a handler error must come first anyway. */
    int st =
        run_with_url("amqp://guest:guest@127.0.0.1:1/%2f", f.cfg, f.log, 30);
    assert_exit(st, 7, f.log, "missing.sh");
    teardown_fixture(&f);
}

static void test_bad_config_exits_2_naming_file_and_field(void **state) {
    (void)state;
    fixture f;
    setup_fixture(&f, "config", NULL);
    itest_write_file(f.cfg, "{\"consumers\": [{\"queue\": \"q\", "
                            "\"handler\": \"builtin:noop\", \"prefetch\": "
                            "\"lots\"}]}");
    int st = run_with_url(itest_url(), f.cfg, f.log, 30);
    assert_exit(st, 2, f.log, "consumers[0].prefetch");
    char *log = slurp(f.log);
    assert_non_null(strstr(log, f.cfg));
    free(log);
    teardown_fixture(&f);
}

static void
test_sigterm_during_slow_handler_finishes_and_acks_it(void **state) {
    (void)state;
    fixture f;
    char started[600];
    setup_fixture(&f, "sigterm", NULL);
    snprintf(started, sizeof started, "%s/started", f.dir);
    setenv("STARTED_FILE", started, 1);
    setenv("SLEEP_S", "2", 1);
    amqp_connection_state_t c = itest_connect();
    itest_queue_declare(c, f.queue);
    itest_publish(c, "", f.queue, "slow-1", "{}", 2);
    const char *args[] = {"run", "-c", f.cfg, NULL};
    pid_t pid = itest_spawn_warren(args, f.log);
    lines_arg la = {started, 1};
    assert_true(itest_wait_until(has_lines, &la, 30));
    assert_int_equal(kill(pid, SIGTERM), 0);
    int status = 0;
    assert_true(itest_wait_exit(pid, 30, &status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* The handler in flight finished, its outcome was recorded and the
     * message acked: one effect, nothing left in the queue. */
    assert_int_equal(itest_count_lines(f.effects), 1);
    assert_int_equal(itest_queue_depth(c, f.queue), 0);
    /* Run again: the store knows it is done, nothing runs twice. */
    itest_publish(c, "", f.queue, "slow-1", "{}", 2);
    unsetenv("SLEEP_S");
    pid = itest_spawn_warren(args, f.log);
    /* Once delivered (no longer ready), stop: a clean stop acks it, and
     * an unacked message would be back in the queue afterwards. */
    depth_arg da = {c, f.queue, 0};
    assert_true(itest_wait_until(depth_is, &da, 30));
    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_true(itest_wait_exit(pid, 30, &status));
    assert_int_equal(itest_count_lines(f.effects), 1);
    assert_int_equal(itest_queue_depth(c, f.queue), 0);
    itest_disconnect(c);
    teardown_fixture(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_thousand_messages_each_handled_exactly_once_and_acked),
        cmocka_unit_test(
            test_broker_unreachable_exits_3_naming_url_without_password),
        cmocka_unit_test(test_wrong_password_exits_4_authentication_refused),
        cmocka_unit_test(test_missing_vhost_exits_5_naming_the_vhost),
        cmocka_unit_test(
            test_queue_with_other_arguments_exits_6_saying_what_differs),
        cmocka_unit_test(
            test_handler_that_cannot_load_exits_7_before_connecting),
        cmocka_unit_test(test_bad_config_exits_2_naming_file_and_field),
        cmocka_unit_test(test_sigterm_during_slow_handler_finishes_and_acks_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

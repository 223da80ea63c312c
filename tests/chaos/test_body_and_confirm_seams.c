/*
 * test_body_and_confirm_seams.c - issue 18, two windows reached through
 * test seams that only failpoint builds have (hence in the chaos suite):
 *
 * - a body above the worker's hard body limit (256 MiB, lowered here with
 *   WARREN_TEST_HARD_BODY_LIMIT so the test moves 2 MiB, not 300) was
 *   dead-lettered with an EMPTY body and its original acked: the body was
 *   gone. It must reach the DLQ whole, once.
 * - a confirm that never comes within broker.confirm_timeout_ms
 *   (WARREN_TEST_LOSE_CONFIRMS=1 makes the worker ignore the first
 *   basic.ack it reads, as a broker that confirms too late would look) left
 *   its sequence number pending on the channel, so every later batch's wait
 *   waited for it too, timed out, and handed back messages whose copies
 *   were confirmed: the same copies published again and again. Only the
 *   batch whose confirm was lost may be redelivered.
 *
 * Each test runs its own `warren run` and checks both counts: every message
 * settled (work queue empty after a clean stop) and no handler run or copy
 * doubled beyond what the window itself explains.
 */
#include "itest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static struct {
    char *dir;
    char q[96], dlq[112];
    char cfg[512], log[512], effects[512], script[512], store[512];
    pid_t pid;
    amqp_connection_state_t conn;
} g;

/* One line "ID" per handler run; ids starting "dead-" are DEAD (65). */
static const char *recorder =
    "#!/bin/sh\n"
    "cat > /dev/null\n"
    "printf '%s\\n' \"$WARREN_MESSAGE_ID\" >> \"$EFFECTS_FILE\"\n"
    "case \"$WARREN_MESSAGE_ID\" in dead-*) echo 'told to die' >&2; exit 65;; "
    "esac\n"
    "exit 0\n";

static long runs_of(const char *id) {
    char line[512];
    long n = 0;
    FILE *fp = fopen(g.effects, "r");
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\n")] = '\0';
        n += id == NULL || strcmp(line, id) == 0;
    }
    fclose(fp);
    return n;
}

typedef struct {
    const char *id;
    long want;
} runs_arg;

static int runs_reach(void *arg) {
    runs_arg *a = arg;
    return runs_of(a->id) >= a->want;
}

static void wait_runs(const char *id, long want) {
    runs_arg a = {id, want};
    if (!itest_wait_until(runs_reach, &a, 60)) {
        fail_msg("handler ran %ld times for %s, expected %ld", runs_of(id), id,
                 want);
    }
}

typedef struct {
    const char *queue;
    long want;
} depth_arg;

static int depth_at_least(void *arg) {
    depth_arg *a = arg;
    return itest_queue_depth(g.conn, a->queue) >= a->want;
}

static void wait_depth(const char *queue, long want) {
    depth_arg a = {queue, want};
    if (!itest_wait_until(depth_at_least, &a, 60)) {
        fail_msg("%s holds %ld messages, expected %ld", queue,
                 itest_queue_depth(g.conn, queue), want);
    }
}

/* Writes the config (consumer extras in `extra`, broker keys in `broker`)
 * and starts `warren run` with the environment the caller set. */
static void start(const char *tag, const char *broker, const char *extra) {
    char text[2048];
    g.dir = itest_tmpdir();
    snprintf(g.q, sizeof g.q, "it.seam.%s.%d", tag, (int)getpid());
    snprintf(g.dlq, sizeof g.dlq, "%s.dlq", g.q);
    snprintf(g.cfg, sizeof g.cfg, "%s/warren.json", g.dir);
    snprintf(g.log, sizeof g.log, "%s/warren.log", g.dir);
    snprintf(g.effects, sizeof g.effects, "%s/effects", g.dir);
    snprintf(g.script, sizeof g.script, "%s/recorder.sh", g.dir);
    snprintf(g.store, sizeof g.store, "%s/warren.db", g.dir);
    itest_write_file(g.script, recorder);
    assert_int_equal(chmod(g.script, 0700), 0);
    snprintf(text, sizeof text,
             "{\"broker\": {%s}, \"store\": {\"path\": \"%s\"},\n"
             " \"shutdown_grace_s\": 20, \"consumers\": [\n"
             "  {\"queue\": \"%s\", \"handler\": \"exec:%s\", \"prefetch\": "
             "20%s}]}\n",
             broker, g.store, g.q, g.script, extra);
    itest_write_file(g.cfg, text);
    setenv("EFFECTS_FILE", g.effects, 1);
    g.conn = itest_connect();
    const char *decl[] = {"topology", "declare", "-c", g.cfg, NULL};
    int status = 0;
    pid_t p = itest_spawn_warren(decl, g.log);
    assert_true(itest_wait_exit(p, 30, &status));
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const char *run[] = {"run", "-c", g.cfg, "--log-level", "debug", NULL};
    g.pid = itest_spawn_warren(run, g.log);
}

/* A clean stop hands back anything unacked: an empty work queue after it
 * proves every message was settled. */
static void stop_and_expect_settled(void) {
    int status = itest_terminate(g.pid, 30);
    g.pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(itest_queue_depth(g.conn, g.q), 0);
}

static int teardown(void **state) {
    (void)state;
    if (g.pid > 0) {
        itest_terminate(g.pid, 30);
        g.pid = 0;
    }
    if (g.conn) {
        itest_queue_delete(g.conn, g.q);
        itest_queue_delete(g.conn, g.dlq);
        itest_disconnect(g.conn);
        g.conn = NULL;
    }
    if (g.dir) {
        itest_rmtree(g.dir);
        free(g.dir);
        g.dir = NULL;
    }
    unsetenv("WARREN_TEST_HARD_BODY_LIMIT");
    unsetenv("WARREN_TEST_LOSE_CONFIRMS");
    return 0;
}

#define HUGE_BODY ((size_t)2 << 20)

static void test_body_above_hard_limit_reaches_dlq_whole_and_once(void **st) {
    (void)st;
    setenv("WARREN_TEST_HARD_BODY_LIMIT", "1048576", 1);
    start("hard", "", ", \"max_message_bytes\": 65536");
    char *body = malloc(HUGE_BODY);
    assert_non_null(body);
    for (size_t i = 0; i < HUGE_BODY; i++) {
        body[i] = (char)('a' + i % 26);
    }
    itest_publish(g.conn, "", g.q, "huge-1", body, HUGE_BODY);
    itest_publish(g.conn, "", g.q, "after-1", "ok", 2);
    wait_depth(g.dlq, 1);
    wait_runs("after-1", 1);
    stop_and_expect_settled();
    assert_int_equal(runs_of("huge-1"), 0);
    assert_int_equal(runs_of(NULL), 1);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 1);
    itest_msg m;
    assert_int_equal(itest_get(g.conn, g.dlq, &m, 0), 1);
    assert_string_equal(m.message_id, "huge-1");
    print_message("DLQ copy of a %zu-byte body: %zu bytes\n", HUGE_BODY, m.len);
    assert_int_equal(m.len, HUGE_BODY);
    assert_memory_equal(m.body, body, HUGE_BODY);
    const amqp_field_value_t *err = itest_msg_header(&m, "x-warren-error");
    assert_non_null(err);
    assert_true(err->value.bytes.len >= 18);
    assert_memory_equal(err->value.bytes.bytes, "message too large:", 18);
    itest_msg_free(&m);
    free(body);
}

static void test_lost_confirm_fails_only_its_own_batch(void **st) {
    (void)st;
    setenv("WARREN_TEST_LOSE_CONFIRMS", "1", 1);
    start("confirm", "\"confirm_timeout_ms\": 1000", "");
    /* dead-1's copy is confirmed by the broker but the worker never sees
     * it: the batch times out and dead-1 comes back, to be dead-lettered
     * again (the first copy, whose confirm was lost, is in the DLQ too:
     * an unconfirmed copy is at-least-once, that is the window itself). */
    itest_publish(g.conn, "", g.q, "dead-1", "x", 1);
    wait_runs("dead-1", 2);
    wait_depth(g.dlq, 2);
    /* Later batches must not wait for that lost confirm. */
    itest_publish(g.conn, "", g.q, "dead-2", "y", 1);
    wait_runs("dead-2", 1);
    wait_depth(g.dlq, 3);
    itest_publish(g.conn, "", g.q, "ok-1", "z", 1);
    wait_runs("ok-1", 1);
    print_message("handler runs: dead-1 %ld, dead-2 %ld, ok-1 %ld; DLQ %ld\n",
                  runs_of("dead-1"), runs_of("dead-2"), runs_of("ok-1"),
                  itest_queue_depth(g.conn, g.dlq));
    stop_and_expect_settled();
    assert_int_equal(runs_of("dead-1"), 2);
    assert_int_equal(runs_of("dead-2"), 1);
    assert_int_equal(runs_of("ok-1"), 1);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 3);
    int copies[2] = {0, 0};
    for (int i = 0; i < 3; i++) {
        itest_msg m;
        assert_int_equal(itest_get(g.conn, g.dlq, &m, 0), 1);
        if (strcmp(m.message_id, "dead-1") == 0) {
            copies[0]++;
        } else if (strcmp(m.message_id, "dead-2") == 0) {
            copies[1]++;
        }
        itest_msg_free(&m);
    }
    assert_int_equal(copies[0], 2);
    assert_int_equal(copies[1], 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(
            test_body_above_hard_limit_reaches_dlq_whole_and_once, teardown),
        cmocka_unit_test_teardown(test_lost_confirm_fails_only_its_own_batch,
                                  teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

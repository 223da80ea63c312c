/*
 * test_heartbeat.c - heartbeats keep flowing while a handler runs long.
 * rabbitmq-c sends heartbeats only inside its own calls, so without the
 * session's keepalive thread a handler running past 2 x heartbeat_s gets
 * the connection closed by the broker, and the message is redelivered.
 * Here an exec handler sleeps 7 s under heartbeat_s 2: the connection must
 * survive (no reconnect), and the message be handled and acked exactly once.
 */
#include "itest.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Lines of `path` containing `needle`; 0 if the file is missing. */
static long count_lines_with(const char *path, const char *needle) {
    char line[8192];
    long n = 0;
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        n += strstr(line, needle) != NULL;
    }
    fclose(fp);
    return n;
}

typedef struct {
    const char *log;
    const char *effects;
} cond_arg;

static int settled_once(void *arg) {
    const cond_arg *a = arg;
    return itest_settled_count(a->log) >= 1;
}

static void
test_handler_longer_than_two_heartbeats_keeps_connection_and_acks_once(
    void **state) {
    (void)state;
    char *dir = itest_tmpdir();
    char queue[96], cfg[512], log[512], effects[512], script[512];
    char text[2048];
    snprintf(queue, sizeof queue, "it.heartbeat.%d", (int)getpid());
    snprintf(cfg, sizeof cfg, "%s/warren.json", dir);
    snprintf(log, sizeof log, "%s/warren.log", dir);
    snprintf(effects, sizeof effects, "%s/effects", dir);
    snprintf(script, sizeof script, "%s/slow.sh", dir);
    /* 7 s is 3.5 x heartbeat_s: the broker closes a silent connection
     * after about 2 x heartbeat_s. */
    snprintf(text, sizeof text,
             "#!/bin/sh\nsleep 7\necho \"$WARREN_MESSAGE_ID\" >> %s\n",
             effects);
    itest_write_file(script, text);
    assert_int_equal(chmod(script, 0700), 0);
    snprintf(text, sizeof text,
             "{\"broker\": {\"heartbeat_s\": 2},\n"
             " \"store\": {\"path\": \"%s/warren.db\"},\n"
             " \"consumers\": [{\"queue\": \"%s\", \"handler\": \"exec:%s\",\n"
             "   \"timeout_s\": 60, \"prefetch\": 10, \"batch_max\": 10}]}\n",
             dir, queue, script);
    itest_write_file(cfg, text);

    amqp_connection_state_t c = itest_connect();
    itest_queue_declare(c, queue);
    const char *args[] = {"run", "-c", cfg, "--log-level", "debug", NULL};
    pid_t pid = itest_spawn_warren(args, log);
    itest_publish(c, "", queue, "slow-1", "{}", 2);

    cond_arg a = {log, effects};
    int settled = itest_wait_until(settled_once, &a, 60);
    int status = itest_terminate(pid, 30);
    if (!settled) {
        fprintf(stderr, "--- %s ---\n", log);
        char cmd[600];
        snprintf(cmd, sizeof cmd, "cat %s >&2", log);
        (void)system(cmd);
    }
    assert_true(settled);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    /* The connection survived the handler: no reconnect, no disconnect. */
    assert_int_equal(count_lines_with(log, "\"event\":\"disconnected\""), 0);
    assert_int_equal(count_lines_with(log, "\"event\":\"reconnect\""), 0);
    /* Handled once, acked once, never seen again as a duplicate. */
    assert_int_equal(itest_count_lines(effects), 1);
    assert_int_equal(count_lines_with(log, "\"outcome\":\"ack\""), 1);
    assert_int_equal(count_lines_with(log, "\"outcome\":\"duplicate\""), 0);
    /* The clean stop would have requeued an unacked message. */
    assert_int_equal(itest_queue_depth(c, queue), 0);

    itest_queue_delete(c, queue);
    itest_disconnect(c);
    itest_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_handler_longer_than_two_heartbeats_keeps_connection_and_acks_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_dedup.c - idempotent processing end to end: a stream in which a
 * quarter of the messages repeat an earlier id, published in shuffled
 * order, runs the handler exactly once per unique id; restarting the worker
 * and publishing the same ids again runs nothing.
 */
#include "itest.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define UNIQUE 1500
#define TOTAL 2000

static const char *recorder =
    "#!/bin/sh\n"
    "echo \"$WARREN_MESSAGE_ID\" >> \"$EFFECTS_FILE\"\n";

typedef struct {
    amqp_connection_state_t conn;
    const char *queue;
    const char *effects;
    long want;
    const char *log; /* the run's debug log */
} cond_arg;

/* Everything handled, nothing ready in the queue, and nothing waiting in
 * the delay cascade (a worker defers an id another worker holds). */
static int drained(void *arg) {
    cond_arg *a = arg;
    if (itest_settled_count(a->log) < TOTAL ||
        itest_count_lines(a->effects) < a->want ||
        itest_queue_depth(a->conn, a->queue) != 0) {
        return 0;
    }
    return itest_delay_cascade_empty(a->conn);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Asserts the effects file holds each of `unique` ids exactly once. */
static void assert_each_once(const char *path, int unique) {
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char **ids = calloc((size_t)unique + 64, sizeof *ids);
    char line[128];
    int n = 0;
    while (fgets(line, sizeof line, fp) && n < unique + 64) {
        line[strcspn(line, "\n")] = '\0';
        ids[n++] = strdup(line);
    }
    fclose(fp);
    assert_int_equal(n, unique);
    qsort(ids, (size_t)n, sizeof *ids, cmp_str);
    for (int i = 1; i < n; i++) {
        if (strcmp(ids[i - 1], ids[i]) == 0) {
            fail_msg("id %s handled twice", ids[i]);
        }
    }
    for (int i = 0; i < n; i++) {
        free(ids[i]);
    }
    free(ids);
}

static void publish_shuffled(amqp_connection_state_t c, const char *queue,
                             unsigned seed) {
    int order[TOTAL];
    for (int i = 0; i < TOTAL; i++) {
        /* ids 0..UNIQUE-1 once, then TOTAL-UNIQUE repeats of earlier ids */
        order[i] = i < UNIQUE ? i : (int)((unsigned)(i * 7919) % UNIQUE);
    }
    srand(seed);
    for (int i = TOTAL - 1; i > 0; i--) {
        int j = rand() % (i + 1);
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i < TOTAL; i++) {
        char id[32], body[64];
        snprintf(id, sizeof id, "order-%d", order[i]);
        int len = snprintf(body, sizeof body, "{\"n\":%d}", order[i]);
        itest_publish(c, "", queue, id, body, (size_t)len);
    }
}

static void
test_quarter_repeated_ids_shuffled_each_unique_id_handled_once(void **state) {
    (void)state;
    char *dir = itest_tmpdir();
    char queue[96], cfg[512], script[512], effects[512], log[512], log2[512],
        text[2048];
    snprintf(queue, sizeof queue, "it.dedup.%d", (int)getpid());
    snprintf(cfg, sizeof cfg, "%s/warren.json", dir);
    snprintf(script, sizeof script, "%s/h.sh", dir);
    snprintf(effects, sizeof effects, "%s/effects", dir);
    snprintf(log, sizeof log, "%s/warren.log", dir);
    snprintf(log2, sizeof log2, "%s/warren2.log", dir);
    itest_write_file(script, recorder);
    assert_int_equal(chmod(script, 0700), 0);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"},\n"
             " \"consumers\": [{\"queue\": \"%s\", \"handler\": \"exec:%s\","
             " \"prefetch\": 200, \"workers\": 2}]}\n",
             dir, queue, script);
    itest_write_file(cfg, text);
    setenv("EFFECTS_FILE", effects, 1);

    amqp_connection_state_t c = itest_connect();
    itest_queue_declare(c, queue);
    publish_shuffled(c, queue, 42);
    const char *args[] = {"run", "-c", cfg, "--log-level", "debug", NULL};
    pid_t pid = itest_spawn_warren(args, log);
    cond_arg a = {c, queue, effects, UNIQUE, log};
    assert_true(itest_wait_until(drained, &a, 180));
    assert_int_equal(kill(pid, SIGTERM), 0);
    int status;
    assert_true(itest_wait_exit(pid, 60, &status));
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(itest_queue_depth(c, queue), 0);
    assert_each_once(effects, UNIQUE);

    /* A publisher retrying everything later: nothing runs again. */
    publish_shuffled(c, queue, 7);
    pid = itest_spawn_warren(args, log2);
    cond_arg empty = {c, queue, effects, 0, log2};
    assert_true(itest_wait_until(drained, &empty, 180));
    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_true(itest_wait_exit(pid, 60, &status));
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(itest_queue_depth(c, queue), 0);
    assert_each_once(effects, UNIQUE);

    itest_queue_delete(c, queue);
    itest_disconnect(c);
    itest_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_quarter_repeated_ids_shuffled_each_unique_id_handled_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_reconnect.c - the pool riding out failures: the broker restarted in
 * the middle of a run, and one of three workers SIGKILLed in the middle of
 * a run. Both check the two counts: every message handled (none lost), and
 * effects doubled only where the claim allows it (never after a broker
 * restart, at most the killed worker's in-flight batch after a SIGKILL,
 * since an exec handler's effects are outside the store).
 */
#include "itest.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *recorder =
    "#!/bin/sh\n"
    "echo \"$WARREN_MESSAGE_ID\" >> \"$EFFECTS_FILE\"\n";

typedef struct {
    char *dir;
    char queue[96], cfg[512], log[512], effects[512];
    amqp_connection_state_t conn;
} fx;

static void fx_setup(fx *f, const char *name, int workers, int batch) {
    char script[512], text[2048];
    f->dir = itest_tmpdir();
    snprintf(f->queue, sizeof f->queue, "it.reconnect.%s.%d", name,
             (int)getpid());
    snprintf(f->cfg, sizeof f->cfg, "%s/warren.json", f->dir);
    snprintf(f->log, sizeof f->log, "%s/warren.log", f->dir);
    snprintf(f->effects, sizeof f->effects, "%s/effects", f->dir);
    snprintf(script, sizeof script, "%s/h.sh", f->dir);
    itest_write_file(script, recorder);
    assert_int_equal(chmod(script, 0700), 0);
    snprintf(text, sizeof text,
             "{\"broker\": {\"heartbeat_s\": 5},\n"
             " \"store\": {\"path\": \"%s/warren.db\"},\n"
             " \"consumers\": [{\"queue\": \"%s\", \"handler\": \"exec:%s\",\n"
             "   \"workers\": %d, \"prefetch\": 100, \"batch_max\": %d}]}\n",
             f->dir, f->queue, script, workers, batch);
    itest_write_file(f->cfg, text);
    setenv("EFFECTS_FILE", f->effects, 1);
    f->conn = itest_connect();
    itest_queue_declare(f->conn, f->queue);
}

static void fx_teardown(fx *f) {
    itest_queue_delete(f->conn, f->queue);
    itest_disconnect(f->conn);
    itest_rmtree(f->dir);
    free(f->dir);
}

typedef struct {
    fx *f;
    long want;
} cond_arg;

static int handled_at_least(void *arg) {
    cond_arg *a = arg;
    return itest_count_lines(a->f->effects) >= a->want;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int count_doubles(const char *path, int n, int *distinct);

/* Every id handled at least once (doubles do not count twice) and nothing
 * left in the queue. */
static int drained(void *arg) {
    cond_arg *a = arg;
    int distinct = 0;
    if (!handled_at_least(arg)) {
        return 0;
    }
    count_doubles(a->f->effects, (int)a->want, &distinct);
    return distinct >= a->want &&
           itest_queue_depth(a->f->conn, a->f->queue) == 0;
}

/* Counts effects per id: sets *distinct and returns how many ids ran more
 * than once. */
static int count_doubles(const char *path, int n, int *distinct) {
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    int cap = n * 2 + 16, m = 0, doubles = 0;
    char **ids = calloc((size_t)cap, sizeof *ids), line[64];
    while (m < cap && fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\n")] = '\0';
        ids[m++] = strdup(line);
    }
    fclose(fp);
    qsort(ids, (size_t)m, sizeof *ids, cmp_str);
    *distinct = 0;
    for (int i = 0; i < m; i++) {
        if (i == 0 || strcmp(ids[i], ids[i - 1]) != 0) {
            (*distinct)++;
        } else if (i == 1 || strcmp(ids[i], ids[i - 2]) != 0) {
            doubles++;
        }
    }
    for (int i = 0; i < m; i++) {
        free(ids[i]);
    }
    free(ids);
    return doubles;
}

static void
test_broker_restart_mid_run_loses_nothing_doubles_nothing(void **state) {
    (void)state;
    fx f;
    enum { N = 3000 };
    fx_setup(&f, "restart", 1, 50);
    itest_publish_n(f.conn, "", f.queue, "r", N, NULL, 0);
    const char *args[] = {"run", "-c", f.cfg, NULL};
    pid_t pid = itest_spawn_warren(args, f.log);
    cond_arg some = {&f, 300};
    assert_true(itest_wait_until(handled_at_least, &some, 60));
    itest_disconnect(f.conn);
    assert_int_equal(itest_broker("restart"), 0);
    f.conn = itest_connect();
    cond_arg all = {&f, N};
    if (!itest_wait_until(drained, &all, 180)) {
        itest_terminate(pid, 10);
        fail_msg("only %ld of %d handled after the restart; see %s",
                 itest_count_lines(f.effects), N, f.log);
    }
    int status = itest_terminate(pid, 30);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    int distinct = 0;
    assert_int_equal(count_doubles(f.effects, N, &distinct), 0);
    assert_int_equal(distinct, N);
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "grep -q '\"event\":\"reconnect\"' %s", f.log);
    assert_int_equal(system(cmd), 0);
    fx_teardown(&f);
}

/* The pids of the supervisor's workers. */
static int children(pid_t pid, pid_t *out, int max) {
    char path[64], buf[512];
    int n = 0;
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid,
             (int)pid);
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        return 0;
    }
    if (fgets(buf, sizeof buf, fp)) {
        char *save = NULL;
        for (char *t = strtok_r(buf, " \n", &save); t && n < max;
             t = strtok_r(NULL, " \n", &save)) {
            out[n++] = (pid_t)strtol(t, NULL, 10);
        }
    }
    fclose(fp);
    return n;
}

typedef struct {
    pid_t pid;
    int want;
} kids_arg;

static int has_children(void *arg) {
    kids_arg *a = arg;
    pid_t k[16];
    return children(a->pid, k, 16) >= a->want;
}

static void
test_sigkill_one_of_three_workers_restarts_it_none_lost(void **state) {
    (void)state;
    fx f;
    enum { N = 5000, BATCH = 20 };
    fx_setup(&f, "kill", 3, BATCH);
    itest_publish_n(f.conn, "", f.queue, "k", N, NULL, 0);
    const char *args[] = {"run", "-c", f.cfg, NULL};
    pid_t pid = itest_spawn_warren(args, f.log);
    cond_arg some = {&f, 1000};
    assert_true(itest_wait_until(handled_at_least, &some, 60));
    pid_t kids[16];
    assert_int_equal(children(pid, kids, 16), 3);
    assert_int_equal(kill(kids[1], SIGKILL), 0);
    cond_arg all = {&f, N};
    if (!itest_wait_until(drained, &all, 180)) {
        itest_terminate(pid, 10);
        fail_msg("only %ld of %d handled after the kill; see %s",
                 itest_count_lines(f.effects), N, f.log);
    }
    /* The supervisor replaced the killed worker. */
    kids_arg ka = {pid, 3};
    assert_true(itest_wait_until(has_children, &ka, 30));
    int status = itest_terminate(pid, 30);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    int distinct = 0;
    int doubles = count_doubles(f.effects, N, &distinct);
    assert_int_equal(distinct, N);
    /* Only the killed worker's in-flight batch may have run twice. */
    if (doubles > BATCH) {
        fail_msg("%d ids ran twice; at most the %d in flight may", doubles,
                 BATCH);
    }
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "grep -q 'killed by signal 9' %s", f.log);
    assert_int_equal(system(cmd), 0);
    fx_teardown(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_broker_restart_mid_run_loses_nothing_doubles_nothing),
        cmocka_unit_test(
            test_sigkill_one_of_three_workers_restarts_it_none_lost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

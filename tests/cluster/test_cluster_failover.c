/*
 * test_cluster_failover.c - warren on a 3-node RabbitMQ cluster (issue 15
 * item 4): a quorum-queue consumer given all three nodes in broker.urls,
 * and the node one of its workers is connected to stopped in the middle of
 * the run. The cluster comes from `scripts/broker cluster start 3`, with
 * its own name, ports and state, and is stopped by the same script at the
 * end. The claims: the pool spreads over the nodes, the workers of the
 * stopped node reconnect to the others, every id is handled, no handler
 * effect (outside the store or inside it) happens twice, and every id ends
 * `done` in the store. Label `cluster` (tests/CMakeLists.txt).
 */
#include "itest.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NODES 3

static char cluster[32];
static char urls[NODES][256];
static int cluster_up;

/* Runs `scripts/broker ARGS` (our own constant arguments) with its stdout
 * in `out` (may be NULL). Returns its exit status. */
static int broker_script(const char *args, char *out, size_t outlen) {
    const char *src = getenv("WARREN_SOURCE_DIR");
    char cmd[1024];
    if (src == NULL || src[0] == '\0') {
        fail_msg("WARREN_SOURCE_DIR is not set (ctest sets it)");
    }
    snprintf(cmd, sizeof cmd, "bash '%s/scripts/broker' %s </dev/null", src,
             args);
    fflush(NULL);
    FILE *fp = popen(cmd, "r");
    if (fp == NULL) {
        return -1;
    }
    size_t got = 0, k;
    char buf[512];
    while ((k = fread(buf, 1, sizeof buf, fp)) > 0) {
        if (out != NULL && got + 1 < outlen) {
            size_t m = k < outlen - 1 - got ? k : outlen - 1 - got;
            memcpy(out + got, buf, m);
            got += m;
        }
    }
    if (out != NULL && outlen > 0) {
        out[got] = '\0';
    }
    int st = pclose(fp);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int cluster_setup(void **state) {
    (void)state;
    char out[2048], args[128];
    snprintf(cluster, sizeof cluster, "itc-%d", (int)getpid());
    snprintf(args, sizeof args, "cluster start %d --name %s", NODES, cluster);
    cluster_up = 1; /* stop even a half-started one */
    int rc = broker_script(args, out, sizeof out);
    if (rc != 0) {
        fprintf(stderr, "scripts/broker %s: exit %d\n", args, rc);
        return -1;
    }
    char *save = NULL, *line = strtok_r(out, "\n", &save);
    for (int i = 0; i < NODES; i++, line = strtok_r(NULL, "\n", &save)) {
        if (line == NULL || strncmp(line, "amqp://", 7) != 0) {
            fprintf(stderr, "cluster start printed %d URLs, not %d\n", i,
                    NODES);
            return -1;
        }
        snprintf(urls[i], sizeof urls[i], "%s", line);
    }
    /* itest_spawn() hands the worker WARREN_URL=WARREN_TEST_URL, which
     * replaces broker.urls[0]: make that the cluster's first node. */
    setenv("WARREN_TEST_URL", urls[0], 1);
    return 0;
}

static int cluster_teardown(void **state) {
    (void)state;
    char args[128];
    /* WARREN_CLUSTER_KEEP=1: leave it running to look at (then stop it
     * with `scripts/broker cluster stop --name itc-PID`). */
    const char *keep = getenv("WARREN_CLUSTER_KEEP");
    if (keep != NULL && strcmp(keep, "1") == 0) {
        fprintf(stderr, "cluster %s left running\n", cluster);
        return 0;
    }
    if (cluster_up) {
        snprintf(args, sizeof args, "cluster stop --name %s", cluster);
        if (broker_script(args, NULL, 0) != 0) {
            fprintf(stderr, "scripts/broker %s failed\n", args);
            return -1;
        }
    }
    return 0;
}

typedef struct {
    char *dir;
    char queue[96], cfg[512], log[512], effects[512], db[512];
    int n;
    amqp_connection_state_t conn; /* to a node that stays up */
} fx;

/* Effects per id: sets *distinct, returns how many ids ran more than once,
 * and *bad to the number of lines that are not one of our ids. */
static int effect_counts(const fx *f, int *distinct, int *bad) {
    int *seen = calloc((size_t)f->n, sizeof *seen), doubles = 0;
    char line[128];
    assert_non_null(seen);
    *distinct = 0;
    *bad = 0;
    FILE *fp = fopen(f->effects, "r");
    while (fp && fgets(line, sizeof line, fp)) {
        /* "cK-I": id I of those published through node K */
        char *end = NULL;
        long i = -1;
        if (line[0] == 'c' && line[1] >= '0' && line[1] < '0' + NODES &&
            line[2] == '-') {
            i = strtol(line + 3, &end, 10);
            i = i >= 0 && i < f->n / NODES
                    ? (line[1] - '0') * (f->n / NODES) + i
                    : -1;
        }
        if (i < 0 || end == NULL || *end != '\n') {
            (*bad)++;
            continue;
        }
        if (seen[i]++ == 0) {
            (*distinct)++;
        } else if (seen[i] == 2) {
            doubles++;
        }
    }
    if (fp) {
        fclose(fp);
    }
    free(seen);
    return doubles;
}

static long store_count(const fx *f, const char *sql) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long v = -1;
    if (sqlite3_open_v2(f->db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_busy_timeout(db, 5000) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, f->queue, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            v = (long)sqlite3_column_int64(st, 0);
        }
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

typedef struct {
    fx *f;
    long want;
} cond_arg;

static int effects_at_least(void *arg) {
    cond_arg *a = arg;
    return itest_count_lines(a->f->effects) >= a->want;
}

/* Every id handled, the work queue and the quorum delay cascade empty. */
static int drained(void *arg) {
    cond_arg *a = arg;
    int distinct = 0, bad = 0;
    if (!effects_at_least(arg)) {
        return 0;
    }
    effect_counts(a->f, &distinct, &bad);
    if (distinct < a->want || itest_queue_depth(a->f->conn, a->f->queue) != 0) {
        return 0;
    }
    for (int level = 0; level < 28; level++) {
        char q[32];
        snprintf(q, sizeof q, "warren.qdelay.%d", level);
        if (itest_queue_depth(a->f->conn, q) > 0) {
            return 0;
        }
    }
    return 1;
}

/* The broker.urls index of the first "connected to" line after byte `from`
 * of the log, or -1; *next_from is set past that line. */
static int connected_index(const char *log, long from, long *next_from) {
    FILE *fp = fopen(log, "r");
    char line[2048];
    int idx = -1;
    if (fp == NULL || fseek(fp, from, SEEK_SET) != 0) {
        if (fp) {
            fclose(fp);
        }
        return -1;
    }
    while (idx < 0 && fgets(line, sizeof line, fp)) {
        const char *p = strstr(line, "\"event\":\"connected\"");
        const char *u = strstr(line, "(broker.urls[");
        if (p && u) {
            idx = atoi(u + strlen("(broker.urls["));
        }
    }
    if (next_from) {
        *next_from = ftell(fp);
    }
    fclose(fp);
    return idx;
}

/* How many "connected" lines name each node. */
static void connected_per_node(const char *log, int counts[NODES]) {
    long at = 0;
    int idx;
    memset(counts, 0, NODES * sizeof counts[0]);
    while ((idx = connected_index(log, at, &at)) >= 0) {
        if (idx < NODES) {
            counts[idx]++;
        }
    }
}

typedef struct {
    const char *log;
    int want;
} connected_arg;

static int workers_connected(void *arg) {
    connected_arg *a = arg;
    int c[NODES], sum = 0;
    connected_per_node(a->log, c);
    for (int i = 0; i < NODES; i++) {
        sum += c[i];
    }
    return sum >= a->want;
}

static void fx_setup(fx *f, int n, int workers) {
    char text[4096], plugin[512];
    memset(f, 0, sizeof *f);
    f->n = n;
    f->dir = itest_tmpdir();
    snprintf(f->queue, sizeof f->queue, "it.cluster.%d", (int)getpid());
    snprintf(f->cfg, sizeof f->cfg, "%s/warren.json", f->dir);
    snprintf(f->log, sizeof f->log, "%s/warren.log", f->dir);
    snprintf(f->effects, sizeof f->effects, "%s/effects", f->dir);
    snprintf(f->db, sizeof f->db, "%s/warren.db", f->dir);
    snprintf(plugin, sizeof plugin, "%s/tests/plugins/probe.so",
             getenv("WARREN_BUILD_DIR"));
    snprintf(
        text, sizeof text,
        "{\"broker\": {\"urls\": [\"%s\", \"%s\", \"%s\"],\n"
        "   \"heartbeat_s\": 5, \"connect_timeout_s\": 3},\n"
        " \"store\": {\"path\": \"%s\"},\n"
        " \"shutdown_grace_s\": 20,\n"
        " \"consumers\": [{\"queue\": \"%s\", \"queue_type\": \"quorum\",\n"
        "   \"handler\": \"plugin:%s:probe\", \"workers\": %d,\n"
        "   \"prefetch\": 40, \"batch_max\": 20,\n"
        "   \"retry\": {\"max_attempts\": 10, \"jitter\": 0,\n"
        "     \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 300}}}]}\n",
        urls[0], urls[1], urls[2], f->db, f->queue, plugin, workers);
    itest_write_file(f->cfg, text);
    setenv("PROBE_EFFECTS", f->effects, 1);
    /* Every 10th id fails once: its retry goes through the quorum delay
     * cascade while a node is down. */
    setenv("PROBE_RETRY_EVERY", "10", 1);
}

static void fx_teardown(fx *f) {
    if (f->conn) {
        itest_queue_delete(f->conn, f->queue);
        char dlq[128];
        snprintf(dlq, sizeof dlq, "%s.dlq", f->queue);
        itest_queue_delete(f->conn, dlq);
        itest_disconnect(f->conn);
    }
    unsetenv("PROBE_RETRY_EVERY");
    itest_rmtree(f->dir);
    free(f->dir);
}

static void dump_log(const char *log) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "tail -n 40 '%s' >&2", log);
    if (system(cmd) != 0) {
        /* best effort */
    }
}

static void
test_quorum_pool_survives_loss_of_its_node_none_lost_none_doubled(void **st) {
    (void)st;
    enum { N = 3000, WORKERS = 3 };
    fx f;
    fx_setup(&f, N, WORKERS);

    /* The topology, declared through the list (node 1 first), then a third
     * of the ids published through each node: "c0-0" .. "c2-999". */
    const char *decl[] = {"topology", "declare", "-c", f.cfg, NULL};
    int status = 0;
    pid_t d = itest_spawn_warren(decl, f.log);
    assert_true(itest_wait_exit(d, 60, &status));
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    for (int i = 0; i < NODES; i++) {
        char prefix[16];
        amqp_connection_state_t c = itest_connect_url(urls[i]);
        snprintf(prefix, sizeof prefix, "c%d", i);
        itest_publish_n(c, "", f.queue, prefix, N / NODES, NULL, 0);
        itest_disconnect(c);
    }

    const char *run[] = {"run", "-c", f.cfg, "--log-level", "info", NULL};
    pid_t pool = itest_spawn_warren(run, f.log);
    connected_arg ca = {f.log, WORKERS};
    if (!itest_wait_until(workers_connected, &ca, 60)) {
        dump_log(f.log);
        itest_terminate(pool, 10);
        fail_msg("the %d workers did not all connect", WORKERS);
    }
    int before[NODES];
    connected_per_node(f.log, before);
    /* warren run hands out consecutive start indexes: one worker a node. */
    for (int i = 0; i < NODES; i++) {
        if (before[i] != 1) {
            dump_log(f.log);
            itest_terminate(pool, 10);
            fail_msg("node %d has %d workers, expected 1 each", i + 1,
                     before[i]);
        }
    }
    cond_arg some = {&f, N / 4};
    if (!itest_wait_until(effects_at_least, &some, 60)) {
        dump_log(f.log);
        itest_terminate(pool, 10);
        fail_msg("only %ld of %d handled before the stop",
                 itest_count_lines(f.effects), N);
    }

    /* Stop node 1: a worker is connected to it (above), and the topology
     * was declared through it, so it leads every quorum queue (the work
     * queue, its DLQ and the delay cascade): the hardest node to lose. */
    int victim = 0;
    f.conn = itest_connect_url(urls[(victim + 1) % NODES]);
    char args[128];
    snprintf(args, sizeof args, "stop --keep --name %s-%d", cluster,
             victim + 1);
    long handled_at_stop = itest_count_lines(f.effects);
    assert_int_equal(broker_script(args, NULL, 0), 0);

    /* Every id that needs no retry is handled with node 1 down: the work
     * queue has a new leader and the workers are on the other nodes. */
    cond_arg plain = {&f, N - N / 10};
    if (!itest_wait_until(effects_at_least, &plain, 60)) {
        dump_log(f.log);
        itest_terminate(pool, 10);
        fail_msg("only %ld of %d handled after node %d stopped (%ld before)",
                 itest_count_lines(f.effects), N, victim + 1, handled_at_stop);
    }
    /* RabbitMQ 3.10.8's at-least-once dead-letter worker keeps sending to
     * a delay level's old leader: retries caught in the cascade wait in
     * their source queue (kept, not lost) until that node is back.
     * docs/operations.md, "Broker cluster". */
    long before_restart = itest_count_lines(f.effects);
    snprintf(args, sizeof args, "start --name %s-%d", cluster, victim + 1);
    assert_int_equal(broker_script(args, NULL, 0), 0);
    cond_arg all = {&f, N};
    if (!itest_wait_until(drained, &all, 60)) {
        dump_log(f.log);
        itest_terminate(pool, 10);
        fail_msg("only %ld of %d handled after node %d came back (%ld "
                 "before the stop, %ld before the restart)",
                 itest_count_lines(f.effects), N, victim + 1, handled_at_stop,
                 before_restart);
    }
    status = itest_terminate(pool, 30);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* The stopped node's worker came back on another node. */
    int after[NODES];
    connected_per_node(f.log, after);
    int moved = 0;
    for (int i = 0; i < NODES; i++) {
        if (i != victim) {
            moved += after[i] - before[i];
        }
    }
    assert_true(moved >= 1);

    /* None lost, none doubled: outside the store (the effects file) ... */
    int distinct = 0, bad = 0;
    int doubles = effect_counts(&f, &distinct, &bad);
    assert_int_equal(bad, 0);
    assert_int_equal(distinct, N);
    assert_int_equal(doubles, 0);
    /* ... inside it (probe_log rows commit with the outcome), and every id
     * is `done`. */
    assert_int_equal(store_count(&f, "SELECT count(*) FROM probe_log"), N);
    assert_int_equal(
        store_count(&f, "SELECT count(DISTINCT id) FROM probe_log"), N);
    assert_int_equal(store_count(&f, "SELECT count(*) FROM messages WHERE "
                                     "queue = ?1 AND state = 'done'"),
                     N);
    assert_int_equal(store_count(&f, "SELECT count(*) FROM messages WHERE "
                                     "queue = ?1 AND state <> 'done'"),
                     0);
    char dlq[128];
    snprintf(dlq, sizeof dlq, "%s.dlq", f.queue);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 0);
    printf("# cluster failover: %d ids, node %d stopped after %ld effects, "
           "%d reconnect(s) to other nodes, %ld handled before it came "
           "back, 0 lost, 0 doubled\n",
           N, victim + 1, handled_at_stop, moved, before_restart);
    fx_teardown(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_quorum_pool_survives_loss_of_its_node_none_lost_none_doubled),
    };
    return cmocka_run_group_tests(tests, cluster_setup, cluster_teardown);
}

/*
 * test_batch_isolation.c - the batch against its own failure modes (issue
 * 18, items 1, 4, 5 and 6), each driven through the real `warren run`:
 * a handler that kills its worker must dead-letter only its own message; a
 * handler whose SQL rolls back the whole store transaction must not take
 * the writes of the handlers before it along; a second worker (on another
 * host) must not run a message whose lease the first worker keeps renewing;
 * and a slow store transaction of one worker must not make another re-run
 * handlers. Every test counts both ways: nothing lost (every id done, the
 * queues and the delay cascade empty) and nothing doubled (effects per id).
 */
#include "itest.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char *dir;
    char queue[128], queue2[128];
    char cfg[512], cfg2[512];
    char log[512], log2[512];
    char db[512];
    char effects[512];  /* one line per run, written by the handler */
    char effects2[512]; /* the second consumer's */
    char script[512];
    char plugin[512];
    amqp_connection_state_t conn;
    pid_t pid, pid2;
    long want_done; /* records expected `done` */
} fx;

static void fx_setup(fx *f, const char *tag) {
    memset(f, 0, sizeof *f);
    f->dir = itest_tmpdir();
    snprintf(f->queue, sizeof f->queue, "it.batch.%s.%d", tag, (int)getpid());
    snprintf(f->queue2, sizeof f->queue2, "it.batch.%s2.%d", tag,
             (int)getpid());
    snprintf(f->cfg, sizeof f->cfg, "%s/warren.json", f->dir);
    snprintf(f->cfg2, sizeof f->cfg2, "%s/warren2.json", f->dir);
    snprintf(f->log, sizeof f->log, "%s/warren.log", f->dir);
    snprintf(f->log2, sizeof f->log2, "%s/warren2.log", f->dir);
    snprintf(f->db, sizeof f->db, "%s/warren.db", f->dir);
    snprintf(f->effects, sizeof f->effects, "%s/effects", f->dir);
    snprintf(f->effects2, sizeof f->effects2, "%s/effects2", f->dir);
    snprintf(f->script, sizeof f->script, "%s/handler.sh", f->dir);
    snprintf(f->plugin, sizeof f->plugin, "%s/tests/plugins/probe.so",
             getenv("WARREN_BUILD_DIR"));
    setenv("EFFECTS_FILE", f->effects, 1);
    setenv("EFFECTS2_FILE", f->effects2, 1);
    setenv("PROBE_EFFECTS", f->effects, 1);
    unsetenv("PROBE_SLOW_PREFIX");
    unsetenv("PROBE_SLOW_MS");
    unsetenv("PROBE_ROLLBACK_ID");
    unsetenv("PROBE_NODB_PREFIX");
    unsetenv("PROBE_CRASH_ID");
    f->conn = itest_connect();
    itest_queue_declare(f->conn, f->queue);
    itest_queue_declare(f->conn, f->queue2);
}

static void dump_log(const char *log) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "tail -n 40 %s >&2", log);
    if (system(cmd) != 0) {
        /* best effort */
    }
}

static void fx_teardown(fx *f) {
    static const char *suffix[] = {"", ".dlq", ".retry"};
    if (f->pid > 0) {
        itest_terminate(f->pid, 20);
    }
    if (f->pid2 > 0) {
        itest_terminate(f->pid2, 20);
    }
    for (size_t i = 0; i < 3; i++) {
        char q[192];
        snprintf(q, sizeof q, "%s%s", f->queue, suffix[i]);
        itest_queue_delete(f->conn, q);
        snprintf(q, sizeof q, "%s%s", f->queue2, suffix[i]);
        itest_queue_delete(f->conn, q);
    }
    itest_disconnect(f->conn);
    itest_rmtree(f->dir);
    free(f->dir);
}

/* One integer from a read-only query, -1 if it cannot be answered (yet). */
static long long query_ll(const char *db_path, const char *sql,
                          const char *arg) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) ==
            SQLITE_OK &&
        sqlite3_busy_timeout(db, 5000) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
        (arg == NULL ||
         sqlite3_bind_text(st, 1, arg, -1, SQLITE_TRANSIENT) == SQLITE_OK) &&
        sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* How many lines of `path` are exactly `id`. */
static int effect_count(const char *path, const char *id) {
    FILE *fp = fopen(path, "r");
    char line[300];
    int n = 0;
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\n")] = '\0';
        n += strcmp(line, id) == 0;
    }
    fclose(fp);
    return n;
}

static long state_count(const fx *f, const char *state) {
    return (long)query_ll(
        f->db, "SELECT count(*) FROM messages WHERE state = ?1", state);
}

static int all_done(void *arg) {
    fx *f = arg;
    return state_count(f, "done") >= f->want_done &&
           itest_queue_depth(f->conn, f->queue) == 0 &&
           itest_queue_depth(f->conn, f->queue2) <= 0 &&
           itest_delay_cascade_empty(f->conn);
}

static int one_dead(void *arg) {
    return state_count(arg, "dead") >= 1;
}

/* `bad` goes through the retry cascade with backoff, one attempt per crash
 * (issue 14): the good ones may all be done before it is dead. */
static void wait_one_dead(fx *f, double timeout_s) {
    if (!itest_wait_until(one_dead, f, timeout_s)) {
        dump_log(f->log);
        fail_msg("no record dead after %.0f s", timeout_s);
    }
}

static void wait_all_done(fx *f, double timeout_s) {
    if (!itest_wait_until(all_done, f, timeout_s)) {
        dump_log(f->log);
        if (f->log2[0]) {
            dump_log(f->log2);
        }
        fail_msg("not settled: %ld done of %ld, %ld ready",
                 state_count(f, "done"), f->want_done,
                 itest_queue_depth(f->conn, f->queue));
    }
}

static pid_t start_run(const char *cfg, const char *log) {
    const char *args[] = {"run", "-c", cfg, "--log-level", "debug", NULL};
    return itest_spawn_warren(args, log);
}

static int log_has(const char *log, const char *text) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "grep -q -- '%s' %s 2>/dev/null", text, log);
    return system(cmd) == 0;
}

typedef struct {
    const char *log, *text;
} log_wait;

static int log_contains(void *arg) {
    log_wait *w = arg;
    return log_has(w->log, w->text);
}

/* Item 1: prefetch 10, an exec handler that SIGKILLs its worker for `bad`,
 * ten good messages around it. Only `bad` is dead-lettered (after
 * max_attempts 3: `warren run` charges each crash to it as an attempt,
 * issue 14); every good id ends `done`, ran at least once and at most
 * twice (once in the batch that crashed, once after). */
static void test_crashing_message_dead_lettered_alone_others_run_once_per_crash(
    void **state) {
    (void)state;
    fx f;
    char text[2048];
    fx_setup(&f, "crash");
    itest_write_file(f.script,
                     "#!/bin/sh\n"
                     "echo \"$WARREN_MESSAGE_ID\" >> \"$EFFECTS_FILE\"\n"
                     "if [ \"$WARREN_MESSAGE_ID\" = bad ]; then\n"
                     "  kill -9 $PPID; sleep 10\n"
                     "fi\n"
                     "exit 0\n");
    assert_int_equal(chmod(f.script, 0700), 0);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s\"}, \"shutdown_grace_s\": 10,\n"
             " \"consumers\": [{\"queue\": \"%s\", \"handler\": \"exec:%s\",\n"
             "   \"prefetch\": 10, \"batch_max\": 10, \"max_deliveries\": 3,\n"
             "   \"retry\": {\"max_attempts\": 3, \"backoff\": {\"kind\": "
             "\"fixed\", \"delay_ms\": 100}}}]}\n",
             f.db, f.queue, f.script);
    itest_write_file(f.cfg, text);
    for (int i = 0; i < 11; i++) {
        char id[16];
        if (i == 5) {
            snprintf(id, sizeof id, "bad");
        } else {
            snprintf(id, sizeof id, "ok-%d", i < 5 ? i : i - 1);
        }
        itest_publish(f.conn, "", f.queue, id, "{}", 2);
    }
    f.want_done = 10;
    f.pid = start_run(f.cfg, f.log);
    wait_all_done(&f, 180);
    wait_one_dead(&f, 60);
    char dlq[192];
    snprintf(dlq, sizeof dlq, "%s.dlq", f.queue);
    /* Nothing lost: ten done, bad dead and alone in the DLQ. */
    assert_int_equal(state_count(&f, "done"), 10);
    assert_int_equal(state_count(&f, "dead"), 1);
    assert_int_equal(query_ll(f.db,
                              "SELECT count(*) FROM messages WHERE id = ?1 "
                              "AND state = 'dead'",
                              "bad"),
                     1);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 1);
    itest_msg m;
    assert_int_equal(itest_get(f.conn, dlq, &m, 0), 1);
    assert_string_equal(m.message_id, "bad");
    const amqp_field_value_t *e = itest_msg_header(&m, "x-warren-error");
    assert_non_null(e);
    assert_true(e->kind == AMQP_FIELD_KIND_UTF8);
    const char *why = "gave up after 3 attempts: worker died while running "
                      "the handler: killed by signal 9";
    assert_non_null(
        memmem(e->value.bytes.bytes, e->value.bytes.len, why, strlen(why)));
    itest_msg_free(&m);
    /* Nothing doubled beyond one run per crash. */
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "ok-%d", i);
        int n = effect_count(f.effects, id);
        if (n < 1 || n > 2) {
            dump_log(f.log);
            fail_msg("%s ran %d times (expected 1 or 2)", id, n);
        }
    }
    assert_int_equal(effect_count(f.effects, "bad"), 3);
    fx_teardown(&f);
}

/* The same with an in-process handler writing through warren_ctx_db():
 * its store writes commit exactly once for every good id, however many
 * times the worker was killed around them. */
static void test_crashing_plugin_message_dead_lettered_alone_others_commit_once(
    void **state) {
    (void)state;
    fx f;
    char text[2048];
    fx_setup(&f, "crashdb");
    setenv("PROBE_CRASH_ID", "bad", 1);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s\"}, \"shutdown_grace_s\": 10,\n"
             " \"consumers\": [{\"queue\": \"%s\",\n"
             "   \"handler\": \"plugin:%s:probe\",\n"
             "   \"prefetch\": 10, \"batch_max\": 10, \"max_deliveries\": 3,\n"
             "   \"retry\": {\"max_attempts\": 3, \"backoff\": {\"kind\": "
             "\"fixed\", \"delay_ms\": 100}}}]}\n",
             f.db, f.queue, f.plugin);
    itest_write_file(f.cfg, text);
    for (int i = 0; i < 11; i++) {
        char id[16];
        if (i == 5) {
            snprintf(id, sizeof id, "bad");
        } else {
            snprintf(id, sizeof id, "ok-%d", i < 5 ? i : i - 1);
        }
        itest_publish(f.conn, "", f.queue, id, "{}", 2);
    }
    f.want_done = 10;
    f.pid = start_run(f.cfg, f.log);
    wait_all_done(&f, 180);
    wait_one_dead(&f, 60);
    char dlq[192];
    snprintf(dlq, sizeof dlq, "%s.dlq", f.queue);
    assert_int_equal(state_count(&f, "done"), 10);
    assert_int_equal(state_count(&f, "dead"), 1);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 1);
    itest_msg m;
    assert_int_equal(itest_get(f.conn, dlq, &m, 0), 1);
    assert_string_equal(m.message_id, "bad");
    itest_msg_free(&m);
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "ok-%d", i);
        long long n =
            query_ll(f.db, "SELECT count(*) FROM probe_log WHERE id = ?1", id);
        int runs = effect_count(f.effects, id);
        if (n != 1 || runs < 1 || runs > 2) {
            dump_log(f.log);
            fail_msg("%s: %lld writes committed, ran %d times (expected 1, "
                     "1 or 2)",
                     id, n, runs);
        }
    }
    assert_int_equal(
        query_ll(f.db, "SELECT count(*) FROM probe_log WHERE id = ?1", "bad"),
        0);
    assert_int_equal(effect_count(f.effects, "bad"), 3);
    fx_teardown(&f);
}

/* Item 4: a handler whose SQL rolls back the whole store transaction
 * (INSERT OR ROLLBACK on a conflict) on its first attempt, then returns ACK.
 * Every other handler's write must survive and every id's write must commit
 * exactly once: the rolled-back one is retried, not recorded done. */
static void
test_handler_rollback_of_transaction_loses_no_write_and_doubles_none(
    void **state) {
    (void)state;
    fx f;
    char text[2048];
    fx_setup(&f, "rollback");
    setenv("PROBE_ROLLBACK_ID", "t-12", 1);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s\"}, \"shutdown_grace_s\": 10,\n"
             " \"consumers\": [{\"queue\": \"%s\",\n"
             "   \"handler\": \"plugin:%s:probe\",\n"
             "   \"prefetch\": 50, \"batch_max\": 50,\n"
             "   \"retry\": {\"max_attempts\": 5, \"jitter\": 0,\n"
             "     \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 100}}}]}\n",
             f.db, f.queue, f.plugin);
    itest_write_file(f.cfg, text);
    itest_publish_n(f.conn, "", f.queue, "t", 20, "{}", 2);
    f.want_done = 20;
    f.pid = start_run(f.cfg, f.log);
    wait_all_done(&f, 120);
    assert_int_equal(state_count(&f, "done"), 20);
    for (int i = 0; i < 20; i++) {
        char id[16];
        snprintf(id, sizeof id, "t-%d", i);
        long long n =
            query_ll(f.db, "SELECT count(*) FROM probe_log WHERE id = ?1", id);
        if (n != 1) {
            dump_log(f.log);
            fail_msg("%s: %lld writes committed (expected exactly 1)", id, n);
        }
    }
    char dlq[192];
    snprintf(dlq, sizeof dlq, "%s.dlq", f.queue);
    assert_true(itest_queue_depth(f.conn, dlq) <= 0);
    fx_teardown(&f);
}

/* Item 5: lease_s 1 and a batch of handlers that take 0.7 s each (outside
 * the store, like exec handlers), so the
 * batch outlives the lease of its last message by far. A second worker on
 * another host (its own UTS namespace) is given duplicates of that last
 * message meanwhile: it must not take the claim over (the first worker
 * renews its leases), and the id runs and commits exactly once. */
static void
test_renewed_lease_keeps_other_host_from_running_duplicate(void **state) {
    (void)state;
    fx f;
    char text[2048];
    fx_setup(&f, "lease");
    if (system("unshare -u true 2>/dev/null") != 0) {
        fx_teardown(&f);
        skip();
    }
    setenv("PROBE_SLOW_PREFIX", "slow", 1);
    setenv("PROBE_SLOW_MS", "700", 1);
    setenv("PROBE_NODB_PREFIX", "slow", 1);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s\", \"lease_s\": 1},\n"
             " \"shutdown_grace_s\": 10,\n"
             " \"consumers\": [{\"queue\": \"%s\",\n"
             "   \"handler\": \"plugin:%s:probe\",\n"
             "   \"prefetch\": 10, \"batch_max\": 10,\n"
             "   \"retry\": {\"max_attempts\": 5, \"jitter\": 0,\n"
             "     \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 100}}}]}\n",
             f.db, f.queue, f.plugin);
    itest_write_file(f.cfg, text);
    for (int i = 0; i < 6; i++) {
        char id[16];
        snprintf(id, sizeof id, "slow-%d", i);
        itest_publish(f.conn, "", f.queue, id, "{}", 2);
    }
    itest_publish(f.conn, "", f.queue, "last", "{}", 2);
    f.pid = start_run(f.cfg, f.log);
    /* The first batch is claimed and running. */
    log_wait started = {f.log, "consuming from"};
    assert_true(itest_wait_until(log_contains, &started, 30));
    assert_true(itest_wait_until(log_contains, &started, 30));
    for (int i = 0; i < 200 && effect_count(f.effects, "slow-0") == 0; i++) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(effect_count(f.effects, "slow-0"), 1);
    /* The other host. */
    char sh[1024];
    snprintf(sh, sizeof sh,
             "hostname other-host-%d && exec \"$0\" run -c %s --log-level "
             "debug",
             (int)getpid(), f.cfg);
    const char *argv[] = {"unshare",          "-u", "sh", "-c", sh,
                          itest_warren_bin(), NULL};
    f.pid2 = itest_spawn("/usr/bin/unshare", argv, f.log2);
    log_wait started2 = {f.log2, "consuming from"};
    assert_true(itest_wait_until(log_contains, &started2, 30));
    /* By now the first batch is > 1 s old: its leases ran out unless
     * renewed. Duplicates of `last` go round-robin to both workers. */
    for (int i = 0; i < 4; i++) {
        itest_publish(f.conn, "", f.queue, "last", "{}", 2);
    }
    f.want_done = 7;
    wait_all_done(&f, 120);
    /* settle the duplicates too: 11 deliveries in all */
    for (int i = 0;
         i < 500 &&
         itest_settled_count(f.log) + itest_settled_count(f.log2) < 11;
         i++) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(state_count(&f, "done"), 7);
    const char *ids[] = {"slow-0", "slow-1", "slow-2", "slow-3",
                         "slow-4", "slow-5", "last"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        long long n = query_ll(
            f.db, "SELECT count(*) FROM probe_log WHERE id = ?1", ids[i]);
        int runs = effect_count(f.effects, ids[i]);
        if (strcmp(ids[i], "last") != 0) {
            n = 1; /* the slow ones write nothing to the store */
        }
        if (n != 1 || runs != 1) {
            dump_log(f.log);
            dump_log(f.log2);
            fail_msg("%s: ran %d times, %lld writes committed (expected 1, 1)",
                     ids[i], runs, n);
        }
    }
    fx_teardown(&f);
}

/* Item 6: two consumers on one store. The second's exec handler runs its
 * batch (0.5 s each); meanwhile the first's plugin holds store write
 * transactions (1 s each) far longer than busy_timeout_ms. The second must
 * wait for the store to record its outcomes, never hand back a batch whose
 * handlers ran: each of its ids runs exactly once. */
static void
test_slow_store_transaction_of_one_worker_doubles_nothing(void **state) {
    (void)state;
    fx f;
    char text[4096];
    fx_setup(&f, "lock");
    setenv("PROBE_SLOW_PREFIX", "slow", 1);
    setenv("PROBE_SLOW_MS", "1000", 1);
    itest_write_file(f.script,
                     "#!/bin/sh\n"
                     "echo \"$WARREN_MESSAGE_ID\" >> \"$EFFECTS2_FILE\"\n"
                     "sleep 0.5\n"
                     "exit 0\n");
    assert_int_equal(chmod(f.script, 0700), 0);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s\", \"busy_timeout_ms\": 300},\n"
             " \"shutdown_grace_s\": 10,\n"
             " \"consumers\": [{\"queue\": \"%s\",\n"
             "   \"handler\": \"plugin:%s:probe\",\n"
             "   \"prefetch\": 10, \"batch_max\": 10},\n"
             "  {\"queue\": \"%s\", \"handler\": \"exec:%s\",\n"
             "   \"prefetch\": 10, \"batch_max\": 10}]}\n",
             f.db, f.queue, f.plugin, f.queue2, f.script);
    itest_write_file(f.cfg, text);
    f.pid = start_run(f.cfg, f.log);
    log_wait started = {f.log, "consuming from"};
    assert_true(itest_wait_until(log_contains, &started, 30));
    /* Let both workers connect. */
    for (int i = 0; i < 100; i++) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    itest_publish_n(f.conn, "", f.queue2, "b", 4, "{}", 2);
    for (int i = 0; i < 500 && effect_count(f.effects2, "b-0") == 0; i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(effect_count(f.effects2, "b-0"), 1);
    /* While b-0.. run, the first consumer takes the write lock for 4 s. */
    itest_publish_n(f.conn, "", f.queue, "slow", 4, "{}", 2);
    f.want_done = 8;
    wait_all_done(&f, 120);
    assert_int_equal(state_count(&f, "done"), 8);
    for (int i = 0; i < 4; i++) {
        char id[16];
        snprintf(id, sizeof id, "b-%d", i);
        int runs = effect_count(f.effects2, id);
        snprintf(id, sizeof id, "slow-%d", i);
        long long n =
            query_ll(f.db, "SELECT count(*) FROM probe_log WHERE id = ?1", id);
        if (runs != 1 || n != 1) {
            dump_log(f.log);
            fail_msg("b-%d ran %d times, slow-%d committed %lld writes "
                     "(expected 1, 1)",
                     i, runs, i, n);
        }
    }
    fx_teardown(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_crashing_message_dead_lettered_alone_others_run_once_per_crash),
        cmocka_unit_test(
            test_crashing_plugin_message_dead_lettered_alone_others_commit_once),
        cmocka_unit_test(
            test_handler_rollback_of_transaction_loses_no_write_and_doubles_none),
        cmocka_unit_test(
            test_renewed_lease_keeps_other_host_from_running_duplicate),
        cmocka_unit_test(
            test_slow_store_transaction_of_one_worker_doubles_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

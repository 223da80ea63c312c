/*
 * test_ledger.c - the transactional inbox end to end: the ledger plugin
 * applies payments to balances in warren's own store while the stream
 * carries duplicates, the plugin fails every 7th call after writing (so
 * warren must roll those writes back), and a worker is SIGKILLed mid-run.
 * Every balance must come out exactly right and every payment must have
 * been applied exactly once. Run on a SQLite store, and on a PostgreSQL
 * store (warren_ctx_pg) when WARREN_TEST_PG_URL names a server.
 */
#include "itest.h"

#include "../pg_fixture.h"

#include <libpq-fe.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define UNIQUE 800
#define DUPES 200
#define ACCOUNTS 10

typedef struct {
    amqp_connection_state_t conn;
    const char *queue;
    const char *db;
    long want;
    const char *log; /* the run's debug log */
} cond_arg;

/* One integer from PostgreSQL, -1 if the table is not there yet. The
 * queries name SQLite's table; PostgreSQL's is warren_messages. */
static long long query_pg(const char *url, const char *sql) {
    char q[512];
    const char *m = strstr(sql, "FROM messages");
    if (m) {
        snprintf(q, sizeof q, "%.*sFROM warren_messages%s", (int)(m - sql), sql,
                 m + strlen("FROM messages"));
        sql = q;
    }
    long long v = -1;
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
            !PQgetisnull(r, 0, 0)) {
            v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        }
        PQclear(r);
    }
    PQfinish(c);
    return v;
}

/* One integer from a read-only query, -1 if the table is not there yet. */
static long long query_ll(const char *db_path, const char *sql) {
    if (strncmp(db_path, "postgresql://", 13) == 0) {
        return query_pg(db_path, sql);
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) ==
            SQLITE_OK &&
        sqlite3_busy_timeout(db, 2000) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int applied_at_least(void *arg) {
    cond_arg *a = arg;
    return query_ll(a->db, "SELECT count(*) FROM ledger_log") >= a->want;
}

static int all_settled(void *arg) {
    cond_arg *a = arg;
    if (itest_settled_count(a->log) < UNIQUE + DUPES ||
        !applied_at_least(arg) || itest_queue_depth(a->conn, a->queue) != 0 ||
        query_ll(a->db, "SELECT count(*) FROM messages WHERE state <> "
                        "'done'") != 0) {
        return 0;
    }
    return itest_delay_cascade_empty(a->conn);
}

/* The first child process of `pid` (a worker of the supervisor). */
static pid_t first_child(pid_t pid) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid,
             (int)pid);
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        return -1;
    }
    long child = -1;
    if (fgets(buf, sizeof buf, fp)) {
        child = strtol(buf, NULL, 10);
    }
    fclose(fp);
    return child > 0 ? (pid_t)child : -1;
}

/* The run on the store `db` (a file, or a postgresql:// URL). */
static void run_ledger(const char *dir, const char *db) {
    char queue[96], cfg[512], log[512], text[3072], plugin[512];
    snprintf(queue, sizeof queue, "it.ledger.%d", (int)getpid());
    snprintf(cfg, sizeof cfg, "%s/warren.json", dir);
    snprintf(log, sizeof log, "%s/warren.log", dir);
    snprintf(plugin, sizeof plugin, "%s/examples/ledger.so",
             getenv("WARREN_BUILD_DIR"));
    snprintf(text, sizeof text,
             "{\"store\": {\"%s\": \"%s\"},\n"
             " \"consumers\": [{\"queue\": \"%s\",\n"
             "   \"handler\": \"plugin:%s:ledger\", \"workers\": 2,\n"
             "   \"prefetch\": 50, \"batch_max\": 25,\n"
             "   \"retry\": {\"max_attempts\": 10, \"jitter\": 0,\n"
             "     \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 100}}}]}\n",
             strncmp(db, "postgresql://", 13) == 0 ? "url" : "path", db, queue,
             plugin);
    itest_write_file(cfg, text);
    setenv("LEDGER_FAIL_EVERY", "7", 1);

    /* 800 payments, 200 of them sent twice, in shuffled order. */
    int order[UNIQUE + DUPES];
    long long expect[ACCOUNTS] = {0};
    for (int i = 0; i < UNIQUE + DUPES; i++) {
        order[i] = i < UNIQUE ? i : (i * 37) % UNIQUE;
    }
    for (int i = 0; i < UNIQUE; i++) {
        expect[i % ACCOUNTS] += i + 1;
    }
    srand(1234);
    for (int i = UNIQUE + DUPES - 1; i > 0; i--) {
        int j = rand() % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    amqp_connection_state_t c = itest_connect();
    itest_queue_declare(c, queue);
    const char *args[] = {"run", "-c", cfg, "--log-level", "debug", NULL};
    pid_t pid = itest_spawn_warren(args, log);
    for (int i = 0; i < UNIQUE + DUPES; i++) {
        char id[32], body[96];
        int k = order[i];
        snprintf(id, sizeof id, "pay-%d", k);
        int len = snprintf(body, sizeof body,
                           "{\"account\":\"acct-%d\",\"amount\":%d}",
                           k % ACCOUNTS, k + 1);
        itest_publish(c, "", queue, id, body, (size_t)len);
    }

    /* Kill one worker in the middle of the stream. */
    cond_arg some = {c, queue, db, 150, log};
    assert_true(itest_wait_until(applied_at_least, &some, 120));
    pid_t victim = first_child(pid);
    assert_true(victim > 0);
    assert_int_equal(kill(victim, SIGKILL), 0);

    cond_arg all = {c, queue, db, UNIQUE, log};
    if (!itest_wait_until(all_settled, &all, 180)) {
        itest_terminate(pid, 10);
        fail_msg("not settled: %lld applied, %ld ready; see %s",
                 query_ll(db, "SELECT count(*) FROM ledger_log"),
                 itest_queue_depth(c, queue), log);
    }
    int status = itest_terminate(pid, 30);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    assert_int_equal(query_ll(db, "SELECT count(*) FROM ledger_log"), UNIQUE);
    assert_int_equal(query_ll(db, "SELECT count(DISTINCT id) FROM ledger_log"),
                     UNIQUE);
    assert_int_equal(query_ll(db, "SELECT count(*) FROM messages WHERE "
                                  "state = 'done'"),
                     UNIQUE);
    for (int a = 0; a < ACCOUNTS; a++) {
        char sql[128];
        snprintf(sql, sizeof sql,
                 "SELECT balance FROM ledger_balances WHERE account = "
                 "'acct-%d'",
                 a);
        long long got = query_ll(db, sql);
        if (got != expect[a]) {
            fail_msg("acct-%d: balance %lld, expected %lld", a, got, expect[a]);
        }
    }
    /* The plugin did fail some calls after writing, and the kill did land:
     * otherwise this test would prove less than it claims. */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "grep -q LEDGER_FAIL_EVERY %s", log);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "grep -q 'killed by signal 9' %s", log);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(itest_queue_depth(c, queue), 0);
    itest_queue_delete(c, queue);
    char dlq[128];
    snprintf(dlq, sizeof dlq, "%s.dlq", queue);
    assert_int_equal(itest_queue_depth(c, dlq), 0);
    itest_queue_delete(c, dlq);
    itest_disconnect(c);
}

static void
test_ledger_balances_exact_under_duplicates_retries_and_kill(void **state) {
    (void)state;
    char *dir = itest_tmpdir();
    char db[512];
    snprintf(db, sizeof db, "%s/warren.db", dir);
    run_ledger(dir, db);
    itest_rmtree(dir);
    free(dir);
}

/* The same on PostgreSQL, in a fresh schema of the test server. */
static void test_ledger_on_postgresql_balances_exact(void **state) {
    (void)state;
    char db[1200];
    if (pg_fresh_schema("wt_ledger", db, sizeof db) != 0) {
        skip();
    }
    char *dir = itest_tmpdir();
    run_ledger(dir, db);
    itest_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_ledger_balances_exact_under_duplicates_retries_and_kill),
        cmocka_unit_test(test_ledger_on_postgresql_balances_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_store_pg.c - the PostgreSQL backend's own claims (consumer/
 * store_pg.c), against the server WARREN_TEST_PG_URL names: leases stamped
 * and judged by the database's clock, fencing of a worker whose claim was
 * taken over, handler rows committing with `done`, many processes claiming
 * the same ids, reconnecting after the server dropped the connection, and
 * the errors an operator must act on. The cases the SQLite backend shares
 * run in unit_test_store_on_pg (test_store.c built again).
 *
 * Each test works in a fresh schema (wt_store_pg) on the search path.
 */
#include "store.h"
#include "warren.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "../pg_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define Q "orders"

static char url[1024]; /* the test schema on the search path */

static PGconn *raw(void) {
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fail_msg("connect %s: %s", url, PQerrorMessage(c));
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    return c;
}

static void raw_ok(PGconn *c, const char *sql) {
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK &&
        PQresultStatus(r) != PGRES_TUPLES_OK) {
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    }
    PQclear(r);
}

/* One integer, read on a fresh connection: what is committed. */
static int64_t sql_int(const char *sql) {
    PGconn *c = raw();
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    }
    int64_t v = PQntuples(r) && !PQgetisnull(r, 0, 0)
                    ? strtoll(PQgetvalue(r, 0, 0), NULL, 10)
                    : -1;
    PQclear(r);
    PQfinish(c);
    return v;
}

static int setup(void **state) {
    (void)state;
    assert_int_equal(pg_fresh_schema("wt_store_pg", url, sizeof url), 0);
    return 0;
}

static warren__store *open_with(const char *u, const char *host, int pid,
                                uint32_t lease_s, unsigned flags, int *rc,
                                char *err, size_t errlen) {
    warren__store_opts o = {
        .synchronous = WARREN__SYNC_FULL,
        .busy_timeout_ms = 2000,
        .lease_s = lease_s,
        .owner_host = host,
        .owner_pid = pid,
        .flags = flags,
    };
    warren__store *s = NULL;
    *rc = warren__store_open_url(u, &o, &s, err, errlen);
    return s;
}

static warren__store *open_as(const char *host, int pid, uint32_t lease_s) {
    char err[512];
    int rc;
    warren__store *s =
        open_with(url, host, pid, lease_s, 0, &rc, err, sizeof err);
    if (rc != 0) {
        fail_msg("open: %s", err);
    }
    return s;
}

static int claim1(warren__store *s, const char *id, int64_t now,
                  warren__claim *c) {
    memset(c, 0, sizeof *c);
    c->queue = Q;
    c->id = id;
    return warren__store_claim_batch(s, c, 1, 5, now);
}

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits (bounded) until the database's clock is past the lease of `id`. */
static void await_lease_expiry(const char *id) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint "
             "> lease_until FROM warren_messages WHERE id = '%s'",
             id);
    for (int i = 0; i < 1000; i++) {
        PGconn *c = raw();
        PGresult *r = PQexec(c, sql);
        int past = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        PQfinish(c);
        if (past) {
            return;
        }
        struct timespec t = {0, 20 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    fail_msg("lease of %s did not expire within 20 s", id);
}

/* The worker's clock does not decide a lease: a claim from another host
 * whose own clock is days ahead is still BUSY until the database's now()
 * passes the lease, and the lease was stamped from that clock too. */
static void test_lease_is_stamped_and_judged_by_the_database_clock(void **s) {
    (void)s;
    warren__store *a = open_as("host-a", 1000, 1);
    warren__store *b = open_as("host-b", 2000, 1);
    warren__claim c;
    int64_t skewed = 1700000000000LL; /* the caller's clock: 2023 */
    assert_int_equal(claim1(a, "m1", skewed, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    int64_t lease = sql_int("SELECT lease_until FROM warren_messages");
    int64_t now = wall_ms();
    assert_true(lease > now - 60000 && lease < now + 61000);
    /* host-b's clock far ahead: still busy, the database's clock decides. */
    assert_int_equal(claim1(b, "m1", now + 86400000LL * 3, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_BUSY);
    await_lease_expiry("m1");
    assert_int_equal(claim1(b, "m1", skewed, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.taken_over, 1);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(c.deliveries, 2);
    warren__store_close(a);
    warren__store_close(b);
}

/* Fencing: once host-b took the expired claim over, host-a's late outcome
 * (and its handler's rows in the same transaction) changes nothing; only
 * host-b's outcome is recorded, and its handler's rows commit once. */
static void test_taken_over_worker_cannot_record_an_outcome(void **s) {
    (void)s;
    warren__store *a = open_as("host-a", 1000, 1);
    warren__store *b = open_as("host-b", 2000, 1);
    PGconn *c0 = raw();
    raw_ok(c0, "CREATE TABLE effects(id text)");
    PQfinish(c0);
    warren__claim c;
    assert_int_equal(claim1(a, "m1", 0, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    await_lease_expiry("m1");
    assert_int_equal(claim1(b, "m1", 0, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);

    /* host-a's handler ran late and writes, then records DONE: refused. */
    assert_int_equal(warren__store_savepoint(a), 0);
    PGresult *r = PQexec((PGconn *)warren__store_pg(a),
                         "INSERT INTO effects VALUES('m1')");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    assert_int_equal(warren__store_savepoint_release(a), 0);
    assert_int_equal(
        warren__store_record(a, Q, "m1", WARREN__OUT_DONE, NULL, wall_ms()),
        WARREN_ERR_NOT_FOUND);
    assert_non_null(strstr(warren__store_errstr(a), "not claimed"));
    warren__store_rollback(a); /* what the worker does: nothing acked */
    assert_int_equal(sql_int("SELECT count(*) FROM effects"), 0);
    assert_int_equal(sql_int("SELECT count(*) FROM warren_messages "
                             "WHERE state = 'processing'"),
                     1);

    /* host-b's outcome and rows commit together, once. */
    assert_int_equal(warren__store_savepoint(b), 0);
    r = PQexec((PGconn *)warren__store_pg(b),
               "INSERT INTO effects VALUES('m1')");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    assert_int_equal(warren__store_savepoint_release(b), 0);
    assert_int_equal(
        warren__store_record(b, Q, "m1", WARREN__OUT_DONE, NULL, wall_ms()), 0);
    assert_int_equal(warren__store_commit(b), 0);
    assert_int_equal(sql_int("SELECT count(*) FROM effects"), 1);
    assert_int_equal(
        sql_int("SELECT count(*) FROM warren_messages WHERE state = 'done'"),
        1);
    /* And a renewal by host-a now reports the claim lost. */
    c = (warren__claim){.queue = Q, .id = "m1", .status = WARREN__CLAIM_RUN};
    assert_int_equal(warren__store_renew(a, &c, 1, wall_ms()), 0);
    assert_int_equal(c.lost, 1);
    warren__store_close(a);
    warren__store_close(b);
}

/* A handler's rows roll back with a retry and commit with done. */
static void
test_handler_rows_commit_with_done_and_roll_back_on_retry(void **s) {
    (void)s;
    warren__store *a = open_as("host-a", 1000, 60);
    PGconn *c0 = raw();
    raw_ok(c0, "CREATE TABLE ledger(id text PRIMARY KEY)");
    PQfinish(c0);
    warren__claim c[2] = {{.queue = Q, .id = "bad"}, {.queue = Q, .id = "ok"}};
    assert_int_equal(warren__store_claim_batch(a, c, 2, 5, wall_ms()), 0);
    PGconn *pg = (PGconn *)warren__store_pg(a);
    assert_non_null(pg);
    assert_null(warren__store_db(a));

    assert_int_equal(warren__store_savepoint(a), 0);
    PQclear(PQexec(pg, "INSERT INTO ledger VALUES('bad')"));
    assert_int_equal(warren__store_savepoint_rollback(a), 0);
    assert_int_equal(warren__store_record(a, Q, "bad", WARREN__OUT_RETRYING,
                                          "boom", wall_ms()),
                     0);
    assert_int_equal(warren__store_savepoint(a), 0);
    /* A failing statement inside the savepoint rolls back to it. */
    PGresult *r = PQexec(pg, "INSERT INTO no_such_table VALUES(1)");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);
    assert_int_equal(warren__store_savepoint_rollback(a), 0);
    assert_int_equal(warren__store_savepoint(a), 0);
    PQclear(PQexec(pg, "INSERT INTO ledger VALUES('ok')"));
    assert_int_equal(warren__store_savepoint_release(a), 0);
    assert_int_equal(
        warren__store_record(a, Q, "ok", WARREN__OUT_DONE, NULL, wall_ms()), 0);
    assert_int_equal(warren__store_commit(a), 0);
    assert_int_equal(sql_int("SELECT count(*) FROM ledger"), 1);
    assert_int_equal(sql_int("SELECT count(*) FROM ledger WHERE id = 'ok'"), 1);
    assert_int_equal(sql_int("SELECT count(*) FROM warren_messages "
                             "WHERE state = 'retrying'"),
                     1);
    warren__store_close(a);
}

/* A reason with bytes that are not UTF-8 (an exec handler's stderr) is
 * recorded with '?' for them: PostgreSQL refuses such text, and that must
 * not fail the outcome. */
static void test_reason_with_invalid_utf8_is_recorded_cleaned(void **s) {
    (void)s;
    warren__store *a = open_as("host-a", 1000, 60);
    warren__claim c;
    assert_int_equal(claim1(a, "m1", wall_ms(), &c), 0);
    assert_int_equal(warren__store_begin(a), 0);
    assert_int_equal(warren__store_record(
                         a, Q, "m1", WARREN__OUT_RETRYING,
                         "bad \xff\xfe byte \xc3\xa9 ok \xe2\x82", wall_ms()),
                     0);
    assert_int_equal(warren__store_commit(a), 0);
    assert_int_equal(claim1(a, "m1", wall_ms(), &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_string_equal(c.last_error, "bad ?? byte \xc3\xa9 ok ??");
    warren__store_close(a);
}

/* The trigger refuses moving a record backwards in plain SQL too. */
static void test_trigger_refuses_illegal_transitions_in_sql(void **s) {
    (void)s;
    warren__store *a = open_as("host-a", 1000, 60);
    warren__claim c;
    assert_int_equal(claim1(a, "m1", wall_ms(), &c), 0);
    assert_int_equal(warren__store_begin(a), 0);
    assert_int_equal(
        warren__store_record(a, Q, "m1", WARREN__OUT_DONE, NULL, wall_ms()), 0);
    assert_int_equal(warren__store_commit(a), 0);
    PGconn *pc = raw();
    PGresult *r = PQexec(pc, "UPDATE warren_messages SET state = 'processing'");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_non_null(strstr(PQerrorMessage(pc), "illegal transition from done"));
    PQclear(r);
    PQfinish(pc);
    /* And through the store: a second outcome is refused by the trigger. */
    assert_int_equal(warren__store_begin(a), 0);
    assert_int_equal(
        warren__store_record(a, Q, "m1", WARREN__OUT_DEAD, "x", wall_ms()),
        WARREN_ERR_STORE);
    assert_non_null(strstr(warren__store_errstr(a), "illegal transition"));
    warren__store_rollback(a);
    warren__store_close(a);
}

/* 4 processes claim the same 1,000 ids in batches of 50: each id runs
 * exactly once (the primary key and the row lock decide). */
static void test_four_processes_claim_each_id_exactly_once(void **s) {
    (void)s;
    enum { PROCS = 4, IDS = 1000, BATCH = 50 };
    warren__store *init = open_as("host-x", 1, 300); /* creates the schema */
    warren__store_close(init);
    PGconn *pc = raw();
    raw_ok(pc, "CREATE TABLE runs(id text)");
    PQfinish(pc);
    pid_t kids[PROCS];
    for (int p = 0; p < PROCS; p++) {
        kids[p] = fork();
        assert_true(kids[p] >= 0);
        if (kids[p] == 0) {
            char host[32], ids[BATCH][16];
            snprintf(host, sizeof host, "host-%d", p);
            char err[512];
            int rc;
            warren__store *st =
                open_with(url, host, 100 + p, 300, 0, &rc, err, sizeof err);
            if (rc != 0) {
                _exit(2);
            }
            for (int i = 0; i < IDS; i += BATCH) {
                warren__claim c[BATCH];
                for (int k = 0; k < BATCH; k++) {
                    /* Each process walks the ids in its own order. */
                    int n = (i + k + p * 250) % IDS;
                    snprintf(ids[k], sizeof ids[k], "id-%d", n);
                    c[k] = (warren__claim){.queue = Q, .id = ids[k]};
                }
                rc = warren__store_claim_batch(st, c, BATCH, 5, wall_ms());
                if (rc == WARREN_ERR_STORE_BUSY) {
                    i -= BATCH; /* a deadlock or lock wait: try again */
                    continue;
                }
                if (rc != 0) {
                    _exit(3);
                }
                rc = warren__store_begin(st);
                for (int k = 0; rc == 0 && k < BATCH; k++) {
                    if (c[k].status == WARREN__CLAIM_RUN) {
                        char sql[96];
                        snprintf(sql, sizeof sql,
                                 "INSERT INTO runs VALUES('%s')", ids[k]);
                        PQclear(PQexec((PGconn *)warren__store_pg(st), sql));
                        rc = warren__store_record(
                            st, Q, ids[k], WARREN__OUT_DONE, NULL, wall_ms());
                    }
                }
                if (rc == 0) {
                    rc = warren__store_commit(st);
                }
                if (rc != 0) {
                    _exit(4);
                }
            }
            warren__store_close(st);
            _exit(0);
        }
    }
    for (int p = 0; p < PROCS; p++) {
        int status = 0;
        assert_int_equal(waitpid(kids[p], &status, 0), kids[p]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    assert_int_equal(sql_int("SELECT count(*) FROM runs"), IDS);
    assert_int_equal(sql_int("SELECT count(DISTINCT id) FROM runs"), IDS);
    assert_int_equal(
        sql_int("SELECT count(*) FROM warren_messages WHERE state = 'done'"),
        IDS);
}

/* The server dropping the connection (a restart, a failover): the claim in
 * flight fails as retriable and claims nothing; the next one reconnects. */
static void test_lost_connection_is_retriable_and_reconnects(void **s) {
    (void)s;
    warren__store *a = open_as("host-a", 1000, 60);
    int backend = PQbackendPID((PGconn *)warren__store_pg(a));
    PGconn *pc = raw();
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", backend);
    raw_ok(pc, sql);
    PQfinish(pc);
    warren__claim c;
    int rc = claim1(a, "m1", wall_ms(), &c);
    assert_int_equal(rc, WARREN_ERR_STORE_BUSY);
    assert_true(warren_err_is_retriable(rc));
    assert_int_equal(sql_int("SELECT count(*) FROM warren_messages"), 0);
    assert_int_equal(claim1(a, "m1", wall_ms(), &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(sql_int("SELECT count(*) FROM warren_messages"), 1);
    warren__store_close(a);
}

static void kill_backend(warren__store *a) {
    int backend = PQbackendPID((PGconn *)warren__store_pg(a));
    PGconn *pc = raw();
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", backend);
    raw_ok(pc, sql);
    PQfinish(pc);
}

/* Outcomes of handlers that ran are not given up when the connection goes
 * (a restart between them and their commit): they are recorded again on a
 * new connection, so the handlers need not run again. At a record, at the
 * commit, and at a commit joined with the next batch's claims. */
static void test_outcomes_survive_a_lost_connection(void **s) {
    (void)s;
    warren__store *a = open_as("host-a", 1000, 60);
    warren__claim c[3] = {{.queue = Q, .id = "m1"},
                          {.queue = Q, .id = "m2"},
                          {.queue = Q, .id = "m3"}};
    assert_int_equal(warren__store_claim_batch(a, c, 3, 5, wall_ms()), 0);
    /* Lost between two records. */
    assert_int_equal(warren__store_begin(a), 0);
    assert_int_equal(
        warren__store_record(a, Q, "m1", WARREN__OUT_DONE, NULL, wall_ms()), 0);
    kill_backend(a);
    assert_int_equal(warren__store_record(a, Q, "m2", WARREN__OUT_RETRYING,
                                          "later", wall_ms()),
                     0);
    assert_int_equal(warren__store_commit(a), 0);
    assert_int_equal(
        sql_int("SELECT count(*) FROM warren_messages WHERE state = 'done'"),
        1);
    assert_int_equal(sql_int("SELECT count(*) FROM warren_messages "
                             "WHERE state = 'retrying'"),
                     1);
    /* Lost before the commit, joined with the next batch's claims. */
    assert_int_equal(warren__store_begin(a), 0);
    assert_int_equal(
        warren__store_record(a, Q, "m3", WARREN__OUT_DONE, NULL, wall_ms()), 0);
    kill_backend(a);
    warren__claim next = {.queue = Q, .id = "m4"};
    assert_int_equal(warren__store_claim_and_commit(a, &next, 1, 5, wall_ms()),
                     0);
    assert_int_equal(next.status, WARREN__CLAIM_RUN);
    assert_int_equal(
        sql_int("SELECT count(*) FROM warren_messages WHERE state = 'done'"),
        2);
    /* Lost right before a plain commit. */
    assert_int_equal(warren__store_begin(a), 0);
    assert_int_equal(
        warren__store_record(a, Q, "m4", WARREN__OUT_DONE, NULL, wall_ms()), 0);
    kill_backend(a);
    assert_int_equal(warren__store_commit(a), 0);
    assert_int_equal(
        sql_int("SELECT count(*) FROM warren_messages WHERE state = 'done'"),
        3);
    /* A handler's own SQL cannot be replayed: its transaction is given up
     * (the message runs again, its rows rolled back). */
    warren__claim h = {.queue = Q, .id = "m5"};
    assert_int_equal(warren__store_claim_batch(a, &h, 1, 5, wall_ms()), 0);
    assert_int_equal(warren__store_savepoint(a), 0);
    assert_int_equal(warren__store_savepoint_release(a), 0);
    kill_backend(a);
    assert_int_equal(
        warren__store_record(a, Q, "m5", WARREN__OUT_DONE, NULL, wall_ms()),
        WARREN_ERR_STORE_BUSY);
    warren__store_rollback(a);
    assert_int_equal(sql_int("SELECT count(*) FROM warren_messages "
                             "WHERE id = 'm5' AND state = 'processing'"),
                     1);
    warren__store_close(a);
}

/* No server at the port: STORE (exit 8), the message says unreachable and
 * names the URL, and a password from WARREN_STORE_PASSWORD never shows. */
static void test_unreachable_server_is_a_clear_store_error(void **s) {
    (void)s;
    char err[1024];
    int rc;
    setenv("WARREN_STORE_PASSWORD", "s3cr3t-pw", 1);
    warren__store *st = open_with("postgresql://warren@127.0.0.1:1/none", "h",
                                  1, 60, 0, &rc, err, sizeof err);
    unsetenv("WARREN_STORE_PASSWORD");
    assert_null(st);
    assert_int_equal(rc, WARREN_ERR_STORE);
    assert_int_equal(warren_err_exit_code(rc), 8);
    assert_non_null(strstr(err, "unreachable"));
    assert_non_null(strstr(err, "postgresql://warren@127.0.0.1:1/none"));
    assert_null(strstr(err, "s3cr3t-pw"));
}

/* A wrong password: STORE, "authentication refused" and what to check,
 * without the password. Skipped where the server trusts loopback (any
 * password is accepted there). */
static void test_wrong_password_is_authentication_refused(void **s) {
    (void)s;
    char err[1024];
    int rc;
    const char *passfile = getenv("PGPASSFILE");
    char saved[512] = "";
    if (passfile) {
        snprintf(saved, sizeof saved, "%s", passfile);
    }
    setenv("PGPASSFILE", "/dev/null", 1);
    setenv("WARREN_STORE_PASSWORD", "wrong-pw-1234", 1);
    warren__store *st = open_with(url, "h", 1, 60, 0, &rc, err, sizeof err);
    unsetenv("WARREN_STORE_PASSWORD");
    if (saved[0]) {
        setenv("PGPASSFILE", saved, 1);
    } else {
        unsetenv("PGPASSFILE");
    }
    if (st != NULL) {
        warren__store_close(st);
        printf("skipped: the test server accepts any password (trust)\n");
        skip();
    }
    assert_int_equal(rc, WARREN_ERR_STORE);
    assert_non_null(strstr(err, "authentication refused"));
    assert_non_null(strstr(err, "WARREN_STORE_PASSWORD"));
    assert_null(strstr(err, "wrong-pw-1234"));
}

/* A server that only reads (a standby, default_transaction_read_only):
 * refused at open, saying to use the primary. */
static void test_read_only_server_is_refused(void **s) {
    (void)s;
    char u[1200], err[1024];
    int rc;
    snprintf(u, sizeof u, "%s%%20-cdefault_transaction_read_only%%3Don", url);
    warren__store *st = open_with(u, "h", 1, 60, 0, &rc, err, sizeof err);
    assert_null(st);
    assert_int_equal(rc, WARREN_ERR_STORE);
    assert_non_null(strstr(err, "read-only"));
    assert_non_null(strstr(err, "primary"));
}

/* A statement over the server's statement_timeout: retriable, named. */
static void test_statement_timeout_is_named_and_claims_nothing(void **s) {
    (void)s;
    warren__store *a = open_as("host-a", 1000, 60);
    warren__claim c;
    assert_int_equal(claim1(a, "m1", wall_ms(), &c), 0);
    warren__store_close(a);
    char u[1200], err[1024];
    int rc;
    snprintf(u, sizeof u, "%s%%20-cstatement_timeout%%3D200", url);
    warren__store *b =
        open_with(u, "host-b", 2000, 60, 0, &rc, err, sizeof err);
    assert_int_equal(rc, 0);
    /* Another session holds the row lock longer than the timeout. */
    PGconn *pc = raw();
    raw_ok(pc, "BEGIN");
    raw_ok(pc, "SELECT * FROM warren_messages FOR UPDATE");
    rc = claim1(b, "m1", wall_ms(), &c);
    raw_ok(pc, "ROLLBACK");
    PQfinish(pc);
    assert_int_equal(rc, WARREN_ERR_STORE_BUSY);
    assert_int_equal(warren_err_exit_code(rc), 8);
    assert_non_null(strstr(warren__store_errstr(b), "statement timeout"));
    assert_false(warren__store_in_txn(b));
    warren__store_close(b);
}

/* Versions: a newer schema is refused; an operator's command on a
 * database without warren's tables creates nothing. */
static void test_schema_newer_refused_and_must_exist_creates_nothing(void **s) {
    (void)s;
    char err[1024];
    int rc;
    warren__store *st = open_with(url, "h", 1, 60, WARREN__STORE_F_MUST_EXIST,
                                  &rc, err, sizeof err);
    assert_null(st);
    assert_int_equal(rc, WARREN_ERR_NOT_FOUND);
    assert_int_equal(
        sql_int("SELECT count(*) FROM pg_tables WHERE schemaname = "
                "'wt_store_pg'"),
        0);
    warren__store_close(open_as("h", 1, 60));
    PGconn *pc = raw();
    raw_ok(pc, "INSERT INTO warren_schema VALUES(9)");
    PQfinish(pc);
    st = open_with(url, "h", 1, 60, 0, &rc, err, sizeof err);
    assert_null(st);
    assert_int_equal(rc, WARREN_ERR_STORE_CORRUPT);
    assert_non_null(strstr(err, "schema version 9 is newer"));
}

#define T(fn) cmocka_unit_test_setup(fn, setup)

int main(void) {
    const char *b = getenv("WARREN_TEST_PG_URL");
    if (b == NULL || b[0] == '\0') {
        printf(PG_SKIP_MESSAGE);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        T(test_lease_is_stamped_and_judged_by_the_database_clock),
        T(test_taken_over_worker_cannot_record_an_outcome),
        T(test_handler_rows_commit_with_done_and_roll_back_on_retry),
        T(test_reason_with_invalid_utf8_is_recorded_cleaned),
        T(test_trigger_refuses_illegal_transitions_in_sql),
        T(test_four_processes_claim_each_id_exactly_once),
        T(test_lost_connection_is_retriable_and_reconnects),
        T(test_outcomes_survive_a_lost_connection),
        T(test_unreachable_server_is_a_clear_store_error),
        T(test_wrong_password_is_authentication_refused),
        T(test_read_only_server_is_refused),
        T(test_statement_timeout_is_named_and_claims_nothing),
        T(test_schema_newer_refused_and_must_exist_creates_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

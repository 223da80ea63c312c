/*
 * test_store.c - unit tests of the message store (consumer/store.c) on the
 * SQLite backend, and (built again with WARREN_TEST_PG as
 * unit_test_store_on_pg) the cases whose behaviour is the same on the
 * PostgreSQL backend, against the server WARREN_TEST_PG_URL names.
 *
 * Each test works on a fresh database in its own temporary directory (on
 * PostgreSQL: a fresh schema) and checks one claim: the state machine
 * (legal and illegal transitions, also straight in SQL), leases and
 * takeover, poison detection, retention, file modes, and the faults a store
 * must survive with a clear error. On PostgreSQL the tests bring their own
 * clock (WARREN__STORE_F_CALLER_CLOCK) like SQLite's; test_store_pg.c checks
 * the database clock itself.
 */
#include "store.h"
#include "warren.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#ifdef WARREN_TEST_PG
#include "../pg_fixture.h"
/* The SQLite-only cases are compiled but not run here. */
#pragma GCC diagnostic ignored "-Wunused-function"
#endif

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define T0 1700000000000LL /* an arbitrary "now" in ms */
#define LEASE_S 60
#define Q "orders"

typedef struct {
    char dir[64];
    char path[1024]; /* the file; on PostgreSQL the URL */
    int dead_pid;    /* the pid_alive seam reports this pid as dead */
    int pid_alive_calls;
    warren__store *a; /* host-a, pid 1000 */
    warren__store *b; /* host-a, pid 2000 */
} fixture;

static int fake_pid_alive(int pid, void *user) {
    fixture *f = user;
    f->pid_alive_calls++;
    return pid != f->dead_pid;
}

static warren__store_opts opts_for(fixture *f, const char *host, int pid) {
    warren__store_opts o = {
        .synchronous = WARREN__SYNC_FULL,
        .busy_timeout_ms = 2000,
        .lease_s = LEASE_S,
        .owner_host = host,
        .owner_pid = pid,
        .pid_alive = fake_pid_alive,
        .pid_alive_user = f,
    };
    return o;
}

static warren__store *open_as(fixture *f, const char *host, int pid) {
    warren__store_opts o = opts_for(f, host, pid);
    warren__store *s = NULL;
    char err[512];
#ifdef WARREN_TEST_PG
    o.flags |= WARREN__STORE_F_CALLER_CLOCK;
    int rc = warren__store_open_url(f->path, &o, &s, err, sizeof err);
#else
    int rc = warren__store_open(f->path, &o, &s, err, sizeof err);
#endif
    if (rc != 0) {
        fail_msg("open %s: %s", f->path, err);
    }
    return s;
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/warren_store_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/store.db", f->dir);
    f->dead_pid = -1;
#ifdef WARREN_TEST_PG
    /* A fresh schema per test, on the search path of every connection. */
    assert_int_equal(pg_fresh_schema("wt_store", f->path, sizeof f->path), 0);
#endif
    *state = f;
    return 0;
}

/* Clears the immutable flag a test may have left (as root it is the only
 * way to make a file read-only), so the directory can be removed. */
static void clear_immutable(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        return;
    }
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_IMMUTABLE_FL)) {
        flags &= ~FS_IMMUTABLE_FL;
        ioctl(fd, FS_IOC_SETFLAGS, &flags);
    }
    close(fd);
}

static int set_immutable(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        return -1;
    }
    int flags = 0;
    int rc = ioctl(fd, FS_IOC_GETFLAGS, &flags);
    if (rc == 0) {
        flags |= FS_IMMUTABLE_FL;
        rc = ioctl(fd, FS_IOC_SETFLAGS, &flags);
    }
    close(fd);
    return rc;
}

static int teardown(void **state) {
    fixture *f = *state;
    char p[192];
    warren__store_close(f->a);
    warren__store_close(f->b);
    clear_immutable(f->dir);
    clear_immutable(f->path);
    const char *sfx[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s%s", f->path, sfx[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static int claim1(warren__store *s, const char *queue, const char *id,
                  int max_deliveries, int64_t now, warren__claim *c) {
    memset(c, 0, sizeof *c);
    c->queue = queue;
    c->id = id;
    return warren__store_claim_batch(s, c, 1, max_deliveries, now);
}

static int record1(warren__store *s, const char *id, warren__outcome_kind k,
                   const char *error, int64_t now) {
    int rc = warren__store_begin(s);
    if (rc != 0) {
        return rc;
    }
    rc = warren__store_record(s, Q, id, k, error, now);
    if (rc != 0) {
        warren__store_rollback(s);
        return rc;
    }
    return warren__store_commit(s);
}

#ifdef WARREN_TEST_PG
/* Reads one integer with a fresh connection: proof of what is committed.
 * The tests name SQLite's table; PostgreSQL's is warren_messages. */
static int64_t sql_int(const char *url, const char *sql) {
    char q[1024], q2[1024];
    const char *blob = strstr(sql, "length(CAST(last_error AS BLOB))");
    if (blob) {
        snprintf(q2, sizeof q2, "%.*soctet_length(last_error)%s",
                 (int)(blob - sql), sql,
                 blob + strlen("length(CAST(last_error AS BLOB))"));
        sql = q2;
    }
    const char *m = strstr(sql, "FROM messages");
    if (m) {
        snprintf(q, sizeof q, "%.*sFROM warren_messages%s", (int)(m - sql), sql,
                 m + strlen("FROM messages"));
        sql = q;
    }
    PGconn *c = PQconnectdb(url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    }
    int64_t v = -1;
    if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) {
        const char *t = PQgetvalue(r, 0, 0);
        v = strcmp(t, "t") == 0 ? 1 : strcmp(t, "f") == 0 ? 0 : atoll(t);
    }
    PQclear(r);
    PQfinish(c);
    return v;
}
#else
/* Reads one integer with a fresh connection: proof of what is committed. */
static int64_t sql_int(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    int64_t v = -1;
    if (sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}
#endif

static void assert_state(fixture *f, const char *id, const char *state) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM messages WHERE queue='%s' AND id='%s' AND "
             "state='%s'",
             Q, id, state);
    assert_int_equal(sql_int(f->path, sql), 1);
}

static void test_first_claim_runs_attempt_one_and_is_committed(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(c.deliveries, 1);
    assert_int_equal(c.first_failed_at_ms, 0);
    assert_string_equal(c.last_error, "");
    assert_false(warren__store_in_txn(f->a));
    assert_state(f, "m1", "processing");
    assert_int_equal(sql_int(f->path, "SELECT lease_until FROM messages"),
                     T0 + LEASE_S * 1000);
}

static void test_done_id_is_duplicate(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DONE, NULL, T0 + 1), 0);
    assert_state(f, "m1", "done");
    f->b = open_as(f, "host-b", 2000);
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + 2, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DUPLICATE);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0 + 2, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DUPLICATE);
}

static void test_dead_id_is_dead_with_its_reason(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DEAD, "bad json", T0 + 5),
                     0);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0 + 9, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DEAD);
    assert_string_equal(c.last_error, "bad json");
    assert_int_equal(c.first_failed_at_ms, T0 + 5);
}

static void test_attempts_count_across_retrying(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RETRYING, "e1", T0 + 10),
                     0);
    assert_state(f, "m1", "retrying");
    /* The retry may arrive at another worker: the count is in the store. */
    f->b = open_as(f, "host-b", 2000);
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + 20, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 2);
    assert_int_equal(c.deliveries, 1);
    assert_int_equal(c.first_failed_at_ms, T0 + 10);
    assert_string_equal(c.last_error, "e1");
    assert_int_equal(record1(f->b, "m1", WARREN__OUT_RETRYING, "e2", T0 + 30),
                     0);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0 + 40, &c), 0);
    assert_int_equal(c.attempt, 3);
    assert_int_equal(c.first_failed_at_ms, T0 + 10); /* the first failure */
    assert_string_equal(c.last_error, "e2");
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DONE, NULL, T0 + 50), 0);
    assert_state(f, "m1", "done");
}

static void test_live_other_owner_gets_busy(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-a", 2000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + 1000, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_BUSY);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(c.deliveries, 1); /* a deferral is not a delivery */
    assert_int_equal(f->pid_alive_calls, 1);
    /* The owner still holds it and records the outcome. */
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DONE, NULL, T0 + 2000), 0);
}

static void
test_expired_lease_is_taken_over_without_spending_attempt(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-b", 2000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + LEASE_S * 1000 - 1, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_BUSY);
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + LEASE_S * 1000, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(c.deliveries, 2);
    /* The old owner's late outcome is refused: the claim is not its own. */
    assert_int_equal(warren__store_begin(f->a), 0);
    assert_int_equal(warren__store_record(f->a, Q, "m1", WARREN__OUT_DONE, NULL,
                                          T0 + LEASE_S * 1000 + 1),
                     WARREN_ERR_NOT_FOUND);
    assert_non_null(strstr(warren__store_errstr(f->a), f->path));
    warren__store_rollback(f->a);
    assert_state(f, "m1", "processing");
    assert_int_equal(record1(f->b, "m1", WARREN__OUT_DONE, NULL, T0 + 70000),
                     0);
}

static void test_dead_owner_on_same_host_is_taken_over_at_once(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-a", 2000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    f->dead_pid = 1000; /* worker a was SIGKILLed mid-handler */
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + 1, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(c.deliveries, 2);
}

/* Issue 18 item 5: on one host the owner's life decides, not the wall
 * clock. A live owner whose lease ran out (a long batch, a clock jump) keeps
 * its claim; once it is dead the claim is taken over, as a suspect. */
static void test_live_owner_on_same_host_keeps_claim_past_lease(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-a", 2000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(c.taken_over, 0);
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + LEASE_S * 1000 * 10, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_BUSY);
    assert_int_equal(c.deliveries, 1);
    f->dead_pid = 1000;
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + LEASE_S * 1000 * 10, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.deliveries, 2);
    assert_int_equal(c.taken_over, 1);
}

/* A claim released (defer, stop) is anyone's at once and says nothing
 * about its message: not a suspect. */
static void test_released_claim_is_free_at_once_and_not_suspect(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-a", 2000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RELEASE, NULL, T0 + 1), 0);
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + 2, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.deliveries, 1);
    assert_int_equal(c.taken_over, 0);
}

/* Renewal keeps another host from taking a claim whose first lease ran
 * out; a claim taken over before the renewal is reported lost, and the
 * loser's late outcome is refused. */
static void test_renewed_lease_holds_and_lost_claim_is_reported(void **state) {
    fixture *f = *state;
    warren__claim c[2], other;
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-b", 2000);
    memset(c, 0, sizeof c);
    c[0].queue = c[1].queue = Q;
    c[0].id = "m1";
    c[1].id = "m2";
    assert_int_equal(warren__store_claim_batch(f->a, c, 2, 5, T0), 0);
    assert_int_equal(c[0].status, WARREN__CLAIM_RUN);
    assert_int_equal(c[1].status, WARREN__CLAIM_RUN);
    /* m2's lease runs out and host-b takes it; m1's is renewed in time. */
    assert_int_equal(claim1(f->b, Q, "m2", 5, T0 + LEASE_S * 1000, &other), 0);
    assert_int_equal(other.status, WARREN__CLAIM_RUN);
    assert_int_equal(other.taken_over, 1);
    assert_int_equal(warren__store_renew(f->a, c, 2, T0 + LEASE_S * 1000), 0);
    assert_int_equal(c[0].lost, 0);
    assert_int_equal(c[1].lost, 1);
    assert_int_equal(
        claim1(f->b, Q, "m1", 5, T0 + LEASE_S * 1000 * 2 - 1, &other), 0);
    assert_int_equal(other.status, WARREN__CLAIM_BUSY);
    assert_int_equal(record1(f->a, "m2", WARREN__OUT_DONE, NULL, T0 + 1),
                     WARREN_ERR_NOT_FOUND);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DONE, NULL, T0 + 1), 0);
    assert_int_equal(record1(f->b, "m2", WARREN__OUT_DONE, NULL, T0 + 1), 0);
}

static void test_dead_pid_on_other_host_waits_for_lease(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-b", 2000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    f->dead_pid = 1000; /* a pid on host-b says nothing about host-a */
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + 1, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_BUSY);
    assert_int_equal(f->pid_alive_calls, 0);
}

static void test_own_token_claim_is_taken_over(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    /* Redelivered to the same worker (e.g. after a reconnect). */
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0 + 1, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(c.deliveries, 2);
    assert_int_equal(f->pid_alive_calls, 0);
}

static void test_same_pid_with_other_token_is_not_ours(void **state) {
    fixture *f = *state;
    warren__claim c;
    /* Two opens with the same host and pid: a reused pid. The token keeps
     * the second from treating the first's claim as its own. */
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + 1, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_BUSY);
}

static void test_poison_after_max_deliveries(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-a", 2000);
    assert_int_equal(claim1(f->a, Q, "m1", 3, T0, &c), 0);
    f->dead_pid = 1000;
    assert_int_equal(claim1(f->b, Q, "m1", 3, T0 + 1, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.deliveries, 2);
    assert_int_equal(claim1(f->b, Q, "m1", 3, T0 + 2, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.deliveries, 3);
    assert_int_equal(claim1(f->b, Q, "m1", 3, T0 + 3, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_POISON);
    assert_int_equal(c.deliveries, 4);
    assert_int_equal(c.attempt, 1);
    /* Poison stays processing, owned by us, until the dead outcome. */
    assert_state(f, "m1", "processing");
    assert_int_equal(record1(f->b, "m1", WARREN__OUT_DEAD,
                             "poison: delivered 4 times without an outcome",
                             T0 + 4),
                     0);
    assert_int_equal(claim1(f->a, Q, "m1", 3, T0 + 5, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DEAD);
}

/* Issue 14 section 4: `warren run` marks the record whose handler was
 * running when its worker died; the takeover claim reports it once (and
 * clears it), so the worker spends that attempt. Only the dead owner's
 * processing record is marked: not another owner's, not a retrying one. */
static void
test_crash_mark_is_reported_by_takeover_once_and_cleared(void **state) {
    fixture *f = *state;
    warren__claim c;
    int marked = -1;
    const char *why = "worker died while running the handler: killed by "
                      "signal 9 (over timeout_s 1 by 5.0 s)";
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-a", 2000);
    assert_int_equal(claim1(f->a, Q, "m1", 50, T0, &c), 0);
    assert_int_equal(claim1(f->a, Q, "m2", 50, T0, &c), 0);
    /* Wrong pid, or the right pid on another host: nothing marked. */
    warren__store *other = open_as(f, "host-b", 3000);
    assert_int_equal(
        warren__store_mark_crashed(f->b, Q, "m1", 2000, why, &marked), 0);
    assert_int_equal(marked, 0);
    assert_int_equal(
        warren__store_mark_crashed(other, Q, "m1", 1000, why, &marked), 0);
    assert_int_equal(marked, 0);
    warren__store_close(other);
    assert_int_equal(
        warren__store_mark_crashed(f->b, Q, "m1", 1000, why, &marked), 0);
    assert_int_equal(marked, 1);
    f->dead_pid = 1000;
    assert_int_equal(claim1(f->b, Q, "m1", 50, T0 + 1, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 1); /* the worker spends it, not the store */
    assert_int_equal(c.taken_over, 1);
    assert_string_equal(c.crashed_reason, why);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM messages WHERE "
                                      "crashed_reason IS NOT NULL"),
                     0);
    /* m2 ran in no handler: its takeover reports nothing. */
    assert_int_equal(claim1(f->b, Q, "m2", 50, T0 + 1, &c), 0);
    assert_int_equal(c.taken_over, 1);
    assert_string_equal(c.crashed_reason, "");
    /* Reported once: b dies too, unmarked; the next takeover is clean. */
    f->dead_pid = 2000;
    assert_int_equal(claim1(f->a, Q, "m1", 50, T0 + 2, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.deliveries, 3);
    assert_string_equal(c.crashed_reason, "");
    /* A record with an outcome is not marked (not processing). */
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RETRYING, why, T0 + 3), 0);
    assert_int_equal(
        warren__store_mark_crashed(f->b, Q, "m1", 1000, why, &marked), 0);
    assert_int_equal(marked, 0);
    assert_int_equal(claim1(f->a, Q, "m1", 50, T0 + 4, &c), 0);
    assert_int_equal(c.attempt, 2);
    assert_string_equal(c.crashed_reason, "");
    assert_int_equal(
        warren__store_mark_crashed(NULL, Q, "m1", 1000, why, &marked),
        WARREN_ERR_INVAL);
}

static void test_retrying_outcome_resets_delivery_count(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 2, T0, &c), 0);
    assert_int_equal(claim1(f->a, Q, "m1", 2, T0 + 1, &c), 0);
    assert_int_equal(c.deliveries, 2);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RETRYING, "x", T0 + 2), 0);
    /* An outcome was recorded: the crash counter starts again. */
    assert_int_equal(claim1(f->a, Q, "m1", 2, T0 + 3, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.deliveries, 1);
    assert_int_equal(c.attempt, 2);
}

static void test_release_gives_claim_back_at_once(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    f->b = open_as(f, "host-b", 2000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RELEASE, NULL, T0 + 1), 0);
    assert_state(f, "m1", "processing");
    assert_int_equal(sql_int(f->path, "SELECT deliveries FROM messages"), 0);
    assert_int_equal(sql_int(f->path, "SELECT lease_until FROM messages"), 0);
    assert_int_equal(claim1(f->b, Q, "m1", 5, T0 + 2, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(c.deliveries, 1);
}

static void test_release_of_retried_claim_keeps_attempt(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RETRYING, "x", T0 + 1), 0);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0 + 2, &c), 0);
    assert_int_equal(c.attempt, 2);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RELEASE, NULL, T0 + 3), 0);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0 + 4, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 2); /* a deferral spends no attempt */
    assert_int_equal(c.deliveries, 1);
}

static void test_release_never_goes_below_zero_deliveries(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RELEASE, NULL, T0 + 1), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RELEASE, NULL, T0 + 2), 0);
    assert_int_equal(sql_int(f->path, "SELECT deliveries FROM messages"), 0);
}

static void test_release_after_outcome_is_not_found(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RETRYING, "x", T0 + 1), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RELEASE, NULL, T0 + 2),
                     WARREN_ERR_NOT_FOUND);
    assert_state(f, "m1", "retrying");
}

static void test_duplicate_id_in_one_batch_runs_once(void **state) {
    fixture *f = *state;
    warren__claim c[3];
    memset(c, 0, sizeof c);
    c[0] = (warren__claim){.queue = Q, .id = "m1"};
    c[1] = (warren__claim){.queue = Q, .id = "m2"};
    c[2] = (warren__claim){.queue = Q, .id = "m1"};
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(warren__store_claim_batch(f->a, c, 3, 5, T0), 0);
    assert_int_equal(c[0].status, WARREN__CLAIM_RUN);
    assert_int_equal(c[1].status, WARREN__CLAIM_RUN);
    assert_int_equal(c[2].status, WARREN__CLAIM_BUSY);
    assert_int_equal(sql_int(f->path, "SELECT deliveries FROM messages "
                                      "WHERE id='m1'"),
                     1);
}

static void test_same_id_on_two_queues_is_two_messages(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, "q1", "m1", 5, T0, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(claim1(f->a, "q2", "m1", 5, T0, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.deliveries, 1);
}

static void test_record_of_unclaimed_id_is_not_found(void **state) {
    fixture *f = *state;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(record1(f->a, "nope", WARREN__OUT_DONE, NULL, T0),
                     WARREN_ERR_NOT_FOUND);
}

static void test_record_outside_transaction_is_refused(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(
        warren__store_record(f->a, Q, "m1", WARREN__OUT_DONE, NULL, T0),
        WARREN_ERR_INVAL);
    assert_state(f, "m1", "processing");
}

static void test_second_outcome_is_illegal_transition(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DONE, NULL, T0 + 1), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RETRYING, "x", T0 + 2),
                     WARREN_ERR_STORE);
    assert_non_null(strstr(warren__store_errstr(f->a), "illegal transition"));
    assert_non_null(strstr(warren__store_errstr(f->a), f->path));
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DONE, NULL, T0 + 2),
                     WARREN_ERR_STORE);
    assert_state(f, "m1", "done");
}

/* Runs `sql` on a raw connection; returns the SQLite result code. */
static int raw_exec(const char *path, const char *sql, char *err,
                    size_t errlen) {
    sqlite3 *db = NULL;
    char *msg = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL),
                     SQLITE_OK);
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (err) {
        snprintf(err, errlen, "%s", msg ? msg : "");
    }
    sqlite3_free(msg);
    sqlite3_close(db);
    return rc;
}

static void test_trigger_refuses_illegal_transitions_in_sql(void **state) {
    fixture *f = *state;
    char err[256];
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(
        raw_exec(f->path,
                 "INSERT INTO messages(queue,id,state,attempts,deliveries,"
                 "created_at,updated_at) VALUES"
                 "('orders','done1','done',1,0,0,0),('orders','dead1','dead',1,"
                 "0,0,0),"
                 "('orders','retry1','retrying',1,0,0,0),"
                 "('orders','retry2','retrying',1,0,0,0),"
                 "('orders','p1','processing',1,1,0,0),"
                 "('orders','p2','processing',1,1,0,0),"
                 "('orders','p3','processing',1,1,0,0),"
                 "('orders','p4','processing',1,1,0,0)",
                 err, sizeof err),
        SQLITE_OK);
    static const char *const illegal[] = {
        "UPDATE messages SET state='processing' WHERE id='done1'",
        "UPDATE messages SET state='retrying' WHERE id='done1'",
        "UPDATE messages SET state='dead' WHERE id='done1'",
        "UPDATE messages SET state='done' WHERE id='done1'",
        "UPDATE messages SET state='processing' WHERE id='dead1'",
        "UPDATE messages SET state='done' WHERE id='dead1'",
        "UPDATE messages SET state='done' WHERE id='retry1'",
        "UPDATE messages SET state='dead' WHERE id='retry1'",
        "UPDATE messages SET state='retrying' WHERE id='retry1'",
    };
    for (size_t i = 0; i < sizeof illegal / sizeof illegal[0]; i++) {
        assert_int_equal(raw_exec(f->path, illegal[i], err, sizeof err),
                         SQLITE_CONSTRAINT);
        assert_non_null(strstr(err, "illegal transition"));
    }
    /* Not a state at all: the CHECK constraint. */
    assert_int_equal(raw_exec(f->path,
                              "UPDATE messages SET state='lost' WHERE id='p1'",
                              err, sizeof err),
                     SQLITE_CONSTRAINT);
    static const char *const legal[] = {
        "UPDATE messages SET state='processing' WHERE id='p1'",
        "UPDATE messages SET state='done' WHERE id='p1'",
        "UPDATE messages SET state='retrying' WHERE id='p2'",
        "UPDATE messages SET state='dead' WHERE id='p3'",
        "UPDATE messages SET state='processing' WHERE id='retry2'",
        "DELETE FROM messages WHERE id IN ('done1','dead1')",
    };
    for (size_t i = 0; i < sizeof legal / sizeof legal[0]; i++) {
        assert_int_equal(raw_exec(f->path, legal[i], err, sizeof err),
                         SQLITE_OK);
    }
    assert_state(f, "p1", "done");
    assert_state(f, "retry2", "processing");
}

static void test_prune_deletes_only_old_done_and_dead(void **state) {
    fixture *f = *state;
    warren__claim c;
    int deleted = -1;
    f->a = open_as(f, "host-a", 1000);
    const int64_t old = T0, fresh = T0 + 9000000;
    const char *ids[] = {"old-done", "old-dead", "old-retry", "old-proc",
                         "new-done"};
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(claim1(f->a, Q, ids[i], 5, i == 4 ? fresh : old, &c),
                         0);
    }
    assert_int_equal(record1(f->a, "old-done", WARREN__OUT_DONE, NULL, old), 0);
    assert_int_equal(record1(f->a, "old-dead", WARREN__OUT_DEAD, "x", old), 0);
    assert_int_equal(record1(f->a, "old-retry", WARREN__OUT_RETRYING, "x", old),
                     0);
    assert_int_equal(record1(f->a, "new-done", WARREN__OUT_DONE, NULL, fresh),
                     0);
    /* retention 3600 s; "now" is fresh + 1 s */
    assert_int_equal(warren__store_prune(f->a, fresh + 1000, 3600, 1, &deleted),
                     0);
    assert_int_equal(deleted, 1); /* the limit holds */
    assert_int_equal(
        warren__store_prune(f->a, fresh + 1000, 3600, 100, &deleted), 0);
    assert_int_equal(deleted, 1);
    assert_int_equal(
        warren__store_prune(f->a, fresh + 1000, 3600, 100, &deleted), 0);
    assert_int_equal(deleted, 0);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM messages"), 3);
    assert_state(f, "old-retry", "retrying");
    assert_state(f, "old-proc", "processing");
    assert_state(f, "new-done", "done");
}

static int64_t file_size(const char *path) {
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return (int64_t)sb.st_size;
}

static void test_prune_keeps_file_size_bounded(void **state) {
    fixture *f = *state;
    enum { PER_ROUND = 500, ROUNDS = 120, RETENTION_S = 10 };
    static warren__claim c[PER_ROUND];
    static char idbuf[PER_ROUND][48];
    int64_t size_warm = 0;
    f->a = open_as(f, "host-a", 1000);
    sqlite3 *db = warren__store_db(f->a);
    srand(7);
    for (int r = 0; r < ROUNDS; r++) {
        int64_t now = T0 + (int64_t)r * 1000; /* one round per second */
        for (int i = 0; i < PER_ROUND; i++) {
            /* Random ids: the worst case for B-tree page reuse. */
            snprintf(idbuf[i], sizeof idbuf[i], "%08x-%08x-%d", rand(), rand(),
                     r);
            c[i] = (warren__claim){.queue = Q, .id = idbuf[i]};
        }
        assert_int_equal(warren__store_claim_batch(f->a, c, PER_ROUND, 5, now),
                         0);
        assert_int_equal(warren__store_begin(f->a), 0);
        for (int i = 0; i < PER_ROUND; i++) {
            assert_int_equal(warren__store_record(f->a, Q, idbuf[i],
                                                  WARREN__OUT_DONE, NULL, now),
                             0);
        }
        assert_int_equal(warren__store_commit(f->a), 0);
        int deleted;
        do {
            assert_int_equal(
                warren__store_prune(f->a, now, RETENTION_S, 200, &deleted), 0);
        } while (deleted == 200);
        if (r == 30 || r == ROUNDS - 1) {
            assert_int_equal(sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)",
                                          NULL, NULL, NULL),
                             SQLITE_OK);
            if (r == 30) {
                size_warm = file_size(f->path);
            }
        }
    }
    /* About RETENTION_S rounds of rows stay; 60,000 ids went through. */
    assert_true(sql_int(f->path, "SELECT count(*) FROM messages") <=
                (RETENTION_S + 1) * PER_ROUND);
    int64_t size_end = file_size(f->path);
    assert_true(size_end <= size_warm + size_warm / 5);
}

static void test_files_are_mode_0600_whatever_the_umask(void **state) {
    fixture *f = *state;
    char p[192];
    struct stat sb;
    warren__claim c;
    /* 0377 would turn a plain open(0600) into 0400. */
    mode_t old = umask(0377);
    f->a = open_as(f, "host-a", 1000);
    umask(old);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    const char *sfx[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", f->path, sfx[i]);
        assert_int_equal(stat(p, &sb), 0);
        assert_int_equal(sb.st_mode & 0777, 0600);
    }
}

static void expect_open_fails(fixture *f, int code, const char *needle) {
    warren__store_opts o = opts_for(f, "host-a", 1000);
    warren__store *s = (warren__store *)&o; /* must be reset to NULL */
    char err[1024];
    assert_int_equal(warren__store_open(f->path, &o, &s, err, sizeof err),
                     code);
    assert_null(s);
    assert_non_null(strstr(err, f->path));
    if (strstr(err, needle) == NULL) {
        fail_msg("\"%s\" not in \"%s\"", needle, err);
    }
}

static void test_newer_schema_version_is_refused(void **state) {
    fixture *f = *state;
    f->a = open_as(f, "host-a", 1000);
    warren__store_close(f->a);
    f->a = NULL;
    assert_int_equal(raw_exec(f->path, "PRAGMA user_version=7", NULL, 0),
                     SQLITE_OK);
    expect_open_fails(f, WARREN_ERR_STORE_CORRUPT,
                      "schema version 7 is newer than this warren supports "
                      "(2); upgrade warren");
}

static void test_existing_store_opens_without_migration(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    warren__store_close(f->a);
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), 2);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM messages"), 1);
}

/* Claims one delivery carrying replay generation `replays`. */
static int claim1_gen(warren__store *s, const char *id, int64_t replays,
                      int64_t now, warren__claim *c) {
    memset(c, 0, sizeof *c);
    c->queue = Q;
    c->id = id;
    c->replays = replays;
    return warren__store_claim_batch(s, c, 1, 5, now);
}

static void test_v1_store_is_migrated_to_v2_keeping_records(void **state) {
    fixture *f = *state;
    warren__claim c;
    /* A v1 file as warren 1 left it: one dead and one done record. */
    f->a = open_as(f, "host-a", 1000);
    warren__store_close(f->a);
    f->a = NULL;
    assert_int_equal(
        raw_exec(f->path,
                 "DROP TABLE messages;"
                 "CREATE TABLE messages(queue TEXT NOT NULL, id TEXT NOT NULL,"
                 " state TEXT NOT NULL CHECK(state IN ('processing', 'done',"
                 " 'retrying', 'dead')), attempts INT NOT NULL, deliveries INT"
                 " NOT NULL, owner_host TEXT, owner_pid INT, owner_token INT,"
                 " lease_until INT NOT NULL DEFAULT 0, first_failed_at INT,"
                 " last_error TEXT, created_at INT NOT NULL, updated_at INT NOT"
                 " NULL, UNIQUE(queue, id));"
                 "CREATE TRIGGER messages_from_dead BEFORE UPDATE ON messages"
                 " WHEN OLD.state = 'dead' BEGIN SELECT RAISE(ABORT, 'old');"
                 " END;"
                 "INSERT INTO messages(queue,id,state,attempts,deliveries,"
                 "first_failed_at,last_error,created_at,updated_at) VALUES"
                 "('orders','dead1','dead',3,0,5,'boom',0,0),"
                 "('orders','done1','done',1,0,NULL,NULL,0,0);"
                 "PRAGMA user_version = 1;",
                 NULL, 0),
        SQLITE_OK);
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), 2);
    assert_int_equal(sql_int(f->path, "SELECT sum(replays) FROM messages"), 0);
    assert_int_equal(
        sql_int(f->path, "SELECT count(crashed_reason) FROM messages"), 0);
    /* The dead letter of a v1 record carries x-warren-replays 0; its
     * replay (1) runs, from attempt 1; the done one stays a duplicate. */
    assert_int_equal(claim1_gen(f->a, "dead1", 1, T0, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(claim1_gen(f->a, "done1", 1, T0, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DUPLICATE);
}

static void test_replayed_copy_of_dead_id_runs_afresh(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1_gen(f->a, "m1", 0, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RETRYING, "e1", T0 + 1),
                     0);
    assert_int_equal(claim1_gen(f->a, "m1", 0, T0 + 2, &c), 0);
    assert_int_equal(c.attempt, 2);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DEAD, "e2", T0 + 3), 0);
    /* The same generation again (a stale copy, a producer's duplicate):
     * still dead. */
    assert_int_equal(claim1_gen(f->a, "m1", 0, T0 + 4, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DEAD);
    /* The replay (generation 1), with the dead record still in this store:
     * a fresh attempt chain, owned by us. */
    assert_int_equal(claim1_gen(f->a, "m1", 1, T0 + 5, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(c.deliveries, 1);
    assert_int_equal(c.first_failed_at_ms, 0);
    assert_string_equal(c.last_error, "");
    assert_state(f, "m1", "processing");
    assert_int_equal(sql_int(f->path, "SELECT replays FROM messages"), 1);
    assert_int_equal(
        sql_int(f->path, "SELECT first_failed_at IS NULL FROM messages"), 1);
    /* It dies again: its DLQ copy carries generation 1, so only a copy of
     * generation 2 runs it once more. */
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DEAD, "e3", T0 + 6), 0);
    assert_int_equal(claim1_gen(f->a, "m1", 1, T0 + 7, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DEAD);
    assert_int_equal(claim1_gen(f->a, "m1", 2, T0 + 8, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DONE, NULL, T0 + 9), 0);
    /* Done is final: no generation runs it again. */
    assert_int_equal(claim1_gen(f->a, "m1", 1000, T0 + 10, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DUPLICATE);
    assert_state(f, "m1", "done");
}

static void test_replayed_dead_id_twice_in_one_batch_runs_once(void **state) {
    fixture *f = *state;
    warren__claim c, cs[2];
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1_gen(f->a, "m1", 0, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DEAD, "e", T0 + 1), 0);
    memset(cs, 0, sizeof cs);
    for (int i = 0; i < 2; i++) {
        cs[i].queue = Q;
        cs[i].id = "m1";
        cs[i].replays = 1;
    }
    assert_int_equal(warren__store_claim_batch(f->a, cs, 2, 5, T0 + 2), 0);
    assert_int_equal(cs[0].status, WARREN__CLAIM_RUN);
    assert_int_equal(cs[1].status, WARREN__CLAIM_BUSY);
}

static void
test_trigger_lets_dead_out_only_for_a_later_generation(void **state) {
    fixture *f = *state;
    char err[256];
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(
        raw_exec(f->path,
                 "INSERT INTO messages(queue,id,state,attempts,deliveries,"
                 "created_at,updated_at,replays) VALUES"
                 "('orders','d1','dead',1,0,0,0,3)",
                 err, sizeof err),
        SQLITE_OK);
    static const char *const illegal[] = {
        "UPDATE messages SET state='processing' WHERE id='d1'",
        "UPDATE messages SET state='processing', replays=3 WHERE id='d1'",
        "UPDATE messages SET state='processing', replays=2 WHERE id='d1'",
        "UPDATE messages SET state='done', replays=4 WHERE id='d1'",
        "UPDATE messages SET state='retrying', replays=4 WHERE id='d1'",
        "UPDATE messages SET replays=4 WHERE id='d1'",
    };
    for (size_t i = 0; i < sizeof illegal / sizeof illegal[0]; i++) {
        assert_int_equal(raw_exec(f->path, illegal[i], err, sizeof err),
                         SQLITE_CONSTRAINT);
        assert_non_null(strstr(err, "illegal transition from dead"));
    }
    assert_int_equal(
        raw_exec(f->path,
                 "UPDATE messages SET state='processing', replays=4 "
                 "WHERE id='d1'",
                 err, sizeof err),
        SQLITE_OK);
    assert_state(f, "d1", "processing");
}

static void
test_must_exist_refuses_a_missing_file_and_creates_nothing(void **state) {
    fixture *f = *state;
    warren__store_opts o = opts_for(f, "host-a", 1000);
    warren__store *s = (warren__store *)&o;
    char err[1024];
    struct stat sb;
    o.flags = WARREN__STORE_F_MUST_EXIST;
    assert_int_equal(warren__store_open(f->path, &o, &s, err, sizeof err),
                     WARREN_ERR_NOT_FOUND);
    assert_null(s);
    assert_non_null(strstr(err, f->path));
    assert_non_null(strstr(err, "does not exist"));
    assert_non_null(strstr(err, "warren run"));
    assert_int_equal(stat(f->path, &sb), -1);
    assert_int_equal(errno, ENOENT);
    /* Once a worker created it, the same options open it. */
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(warren__store_open(f->path, &o, &f->b, err, sizeof err),
                     0);
    assert_non_null(f->b);
}

static void test_garbage_file_is_refused_as_corrupt(void **state) {
    fixture *f = *state;
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    for (int i = 0; i < 2000; i++) {
        fputs("this is not a database, it is a log file\n", fp);
    }
    fclose(fp);
    expect_open_fails(f, WARREN_ERR_STORE_CORRUPT, "move it aside");
}

static void test_damaged_database_is_refused_as_corrupt(void **state) {
    fixture *f = *state;
    warren__claim c[64];
    char ids[64][16];
    f->a = open_as(f, "host-a", 1000);
    for (int i = 0; i < 64; i++) {
        snprintf(ids[i], sizeof ids[i], "id-%d", i);
        c[i] = (warren__claim){.queue = Q, .id = ids[i]};
    }
    assert_int_equal(warren__store_claim_batch(f->a, c, 64, 5, T0), 0);
    assert_int_equal(sqlite3_exec(warren__store_db(f->a),
                                  "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL,
                                  NULL),
                     SQLITE_OK);
    warren__store_close(f->a);
    f->a = NULL;
    /* Scribble over the second page (a B-tree page), keep the header. */
    int fd = open(f->path, O_WRONLY);
    assert_true(fd >= 0);
    char junk[512];
    memset(junk, 0xA5, sizeof junk);
    assert_int_equal(pwrite(fd, junk, sizeof junk, 4096), (ssize_t)sizeof junk);
    close(fd);
    expect_open_fails(f, WARREN_ERR_STORE_CORRUPT, "move it aside");
}

static void test_read_only_file_is_refused(void **state) {
    fixture *f = *state;
    f->a = open_as(f, "host-a", 1000);
    warren__store_close(f->a);
    f->a = NULL;
    /* Root ignores mode bits; the immutable flag binds root too. */
    if (set_immutable(f->path) != 0) {
        skip();
    }
    expect_open_fails(f, WARREN_ERR_STORE, "writable");
}

static void test_read_only_directory_is_refused(void **state) {
    fixture *f = *state;
    f->a = open_as(f, "host-a", 1000);
    warren__store_close(f->a); /* removes -wal and -shm */
    f->a = NULL;
    if (set_immutable(f->dir) != 0) {
        skip();
    }
    expect_open_fails(f, WARREN_ERR_STORE, "writable");
}

static void test_missing_directory_is_refused(void **state) {
    fixture *f = *state;
    snprintf(f->path, sizeof f->path, "%s/no/such/dir/store.db", f->dir);
    expect_open_fails(f, WARREN_ERR_STORE, "cannot create");
    snprintf(f->path, sizeof f->path, "%s/store.db", f->dir);
}

static void test_disk_full_is_store_full_and_commits_nothing(void **state) {
    fixture *f = *state;
    enum { N = 200 };
    static warren__claim c[N];
    static char ids[N][WARREN__ID_MAX + 1];
    f->a = open_as(f, "host-a", 1000);
    sqlite3 *db = warren__store_db(f->a);
    char sql[64];
    int64_t pages = sql_int(f->path, "PRAGMA page_count");
    snprintf(sql, sizeof sql, "PRAGMA max_page_count=%lld",
             (long long)pages + 2);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    for (int i = 0; i < N; i++) {
        /* Long ids so a batch needs many more pages than allowed. */
        memset(ids[i], 'x', WARREN__ID_MAX);
        ids[i][WARREN__ID_MAX] = '\0';
        snprintf(ids[i], 16, "id-%05d", i);
        ids[i][strlen(ids[i])] = 'x';
        c[i] = (warren__claim){.queue = Q, .id = ids[i]};
    }
    assert_int_equal(warren__store_claim_batch(f->a, c, N, 5, T0),
                     WARREN_ERR_STORE_FULL);
    assert_non_null(strstr(warren__store_errstr(f->a), f->path));
    assert_non_null(
        strstr(warren__store_errstr(f->a), "nothing unrecorded was acked"));
    assert_false(warren__store_in_txn(f->a));
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM messages"), 0);
    /* Once space is back the same batch goes through. */
    assert_int_equal(
        sqlite3_exec(db, "PRAGMA max_page_count=1073741823", NULL, NULL, NULL),
        SQLITE_OK);
    assert_int_equal(warren__store_claim_batch(f->a, c, N, 5, T0), 0);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM messages"), N);
}

static void test_disk_full_during_outcomes_commits_nothing(void **state) {
    fixture *f = *state;
    enum { N = 100 };
    static warren__claim c[N];
    static char ids[N][32];
    f->a = open_as(f, "host-a", 1000);
    sqlite3 *db = warren__store_db(f->a);
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "id-%d", i);
        c[i] = (warren__claim){.queue = Q, .id = ids[i]};
    }
    assert_int_equal(warren__store_claim_batch(f->a, c, N, 5, T0), 0);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count=%lld",
             (long long)sql_int(f->path, "PRAGMA page_count"));
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    static char big[1100];
    memset(big, 'e', sizeof big - 1);
    int rc = warren__store_begin(f->a);
    for (int i = 0; rc == 0 && i < N; i++) {
        rc = warren__store_record(f->a, Q, ids[i], WARREN__OUT_DEAD, big, T0);
    }
    if (rc == 0) {
        rc = warren__store_commit(f->a);
    }
    assert_int_equal(rc, WARREN_ERR_STORE_FULL);
    warren__store_rollback(f->a);
    assert_int_equal(
        sql_int(f->path, "SELECT count(*) FROM messages WHERE state='dead'"),
        0);
}

static void test_locked_store_is_store_busy_and_claims_nothing(void **state) {
    fixture *f = *state;
    warren__claim c;
    warren__store_opts o = opts_for(f, "host-a", 1000);
    o.busy_timeout_ms = 50;
    char err[512];
    assert_int_equal(warren__store_open(f->path, &o, &f->a, err, sizeof err),
                     0);
    sqlite3 *other = NULL;
    assert_int_equal(
        sqlite3_open_v2(f->path, &other, SQLITE_OPEN_READWRITE, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), WARREN_ERR_STORE_BUSY);
    assert_non_null(strstr(warren__store_errstr(f->a), f->path));
    assert_non_null(strstr(warren__store_errstr(f->a), "busy_timeout_ms 50"));
    assert_false(warren__store_in_txn(f->a));
    assert_int_equal(warren__store_begin(f->a), WARREN_ERR_STORE_BUSY);
    assert_int_equal(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(other);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM messages"), 0);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
}

static void
test_handler_writes_commit_with_done_and_roll_back_on_failure(void **state) {
    fixture *f = *state;
    warren__claim c[2] = {{.queue = Q, .id = "ok"}, {.queue = Q, .id = "bad"}};
    f->a = open_as(f, "host-a", 1000);
    sqlite3 *db = warren__store_db(f->a);
    assert_int_equal(
        sqlite3_exec(db, "CREATE TABLE ledger(id TEXT)", NULL, NULL, NULL),
        SQLITE_OK);
    assert_int_equal(warren__store_claim_batch(f->a, c, 2, 5, T0), 0);
    /* Handler 1 writes and succeeds. */
    assert_int_equal(warren__store_savepoint(f->a), 0);
    assert_true(warren__store_in_txn(f->a));
    assert_int_equal(
        sqlite3_exec(db, "INSERT INTO ledger VALUES('ok')", NULL, NULL, NULL),
        SQLITE_OK);
    assert_int_equal(warren__store_savepoint_release(f->a), 0);
    /* Handler 2 writes and fails: its write goes, the batch stays. */
    assert_int_equal(warren__store_savepoint(f->a), 0);
    assert_int_equal(
        sqlite3_exec(db, "INSERT INTO ledger VALUES('bad')", NULL, NULL, NULL),
        SQLITE_OK);
    assert_int_equal(warren__store_savepoint_rollback(f->a), 0);
    assert_true(warren__store_in_txn(f->a));
    assert_int_equal(
        warren__store_record(f->a, Q, "ok", WARREN__OUT_DONE, NULL, T0 + 1), 0);
    assert_int_equal(warren__store_record(f->a, Q, "bad", WARREN__OUT_RETRYING,
                                          "no", T0 + 1),
                     0);
    /* Nothing is visible to others before commit. */
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM ledger"), 0);
    assert_int_equal(warren__store_commit(f->a), 0);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM ledger"), 1);
    assert_int_equal(
        sql_int(f->path, "SELECT count(*) FROM ledger WHERE id='ok'"), 1);
    assert_state(f, "ok", "done");
    assert_state(f, "bad", "retrying");
}

static void test_rollback_discards_outcomes(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(warren__store_begin(f->a), 0);
    assert_int_equal(warren__store_begin(f->a), 0); /* no-op when open */
    assert_int_equal(
        warren__store_record(f->a, Q, "m1", WARREN__OUT_DONE, NULL, T0), 0);
    warren__store_rollback(f->a);
    assert_false(warren__store_in_txn(f->a));
    assert_state(f, "m1", "processing");
}

static void test_claim_inside_open_transaction_is_refused(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(warren__store_begin(f->a), 0);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), WARREN_ERR_INVAL);
    warren__store_rollback(f->a);
}

static void
test_claim_and_commit_makes_outcomes_and_claims_durable(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(warren__store_begin(f->a), 0);
    assert_int_equal(
        warren__store_record(f->a, Q, "m1", WARREN__OUT_DONE, NULL, T0 + 1), 0);
    memset(&c, 0, sizeof c);
    c.queue = Q;
    c.id = "m2";
    assert_int_equal(warren__store_claim_and_commit(f->a, &c, 1, 5, T0 + 1), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_false(warren__store_in_txn(f->a));
    assert_state(f, "m1", "done");
    assert_state(f, "m2", "processing");
    /* With nothing open it is a plain claim_batch. */
    c = (warren__claim){.queue = Q, .id = "m3"};
    assert_int_equal(warren__store_claim_and_commit(f->a, &c, 1, 5, T0 + 2), 0);
    assert_state(f, "m3", "processing");
}

/* Group commit across batches: an id of batch N+1 that batch N has just
 * finished (uncommitted, same transaction) is a duplicate, and a handler's
 * inbox write (savepoint) commits with that outcome, exactly once. */
static void
test_claim_and_commit_sees_previous_batch_outcome_as_duplicate(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    sqlite3 *db = warren__store_db(f->a);
    assert_int_equal(warren__store_savepoint(f->a), 0);
    assert_int_equal(sqlite3_exec(db,
                                  "CREATE TABLE IF NOT EXISTS effects(id TEXT);"
                                  "INSERT INTO effects VALUES('m1')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(warren__store_savepoint_release(f->a), 0);
    assert_int_equal(
        warren__store_record(f->a, Q, "m1", WARREN__OUT_DONE, NULL, T0 + 1), 0);
    c = (warren__claim){.queue = Q, .id = "m1"};
    assert_int_equal(warren__store_claim_and_commit(f->a, &c, 1, 5, T0 + 1), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DUPLICATE);
    assert_false(warren__store_in_txn(f->a));
    assert_state(f, "m1", "done");
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM effects"), 1);
}

static void
test_claim_and_commit_failure_rolls_back_outcomes_too(void **state) {
    fixture *f = *state;
    enum { N = 200 };
    static warren__claim c[N];
    static char ids[N][WARREN__ID_MAX + 1];
    warren__claim one;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &one), 0);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count=%lld",
             (long long)sql_int(f->path, "PRAGMA page_count") + 2);
    assert_int_equal(
        sqlite3_exec(warren__store_db(f->a), sql, NULL, NULL, NULL), SQLITE_OK);
    for (int i = 0; i < N; i++) {
        memset(ids[i], 'y', WARREN__ID_MAX);
        ids[i][WARREN__ID_MAX] = '\0';
        ids[i][snprintf(ids[i], 16, "id-%05d", i)] = 'y';
        c[i] = (warren__claim){.queue = Q, .id = ids[i]};
    }
    assert_int_equal(warren__store_begin(f->a), 0);
    assert_int_equal(
        warren__store_record(f->a, Q, "m1", WARREN__OUT_DONE, NULL, T0 + 1), 0);
    assert_int_equal(warren__store_claim_and_commit(f->a, c, N, 5, T0 + 1),
                     WARREN_ERR_STORE_FULL);
    assert_false(warren__store_in_txn(f->a));
    assert_state(f, "m1", "processing"); /* the outcome went too: no ack */
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM messages"), 1);
}

static void test_overlong_id_is_refused(void **state) {
    fixture *f = *state;
    warren__claim c;
    char id[WARREN__ID_MAX + 2];
    memset(id, 'a', sizeof id - 1);
    id[sizeof id - 1] = '\0';
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, id, 5, T0, &c), WARREN_ERR_INVAL);
    id[WARREN__ID_MAX] = '\0';
    assert_int_equal(claim1(f->a, Q, id, 5, T0, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
}

static void
test_last_error_is_truncated_to_field_at_utf8_boundary(void **state) {
    fixture *f = *state;
    warren__claim c;
    char big[2000];
    /* "é" is 2 bytes; after one 'a' every boundary falls mid-character at
     * an odd offset. */
    big[0] = 'a';
    for (size_t i = 1; i + 2 < sizeof big; i += 2) {
        big[i] = (char)0xC3;
        big[i + 1] = (char)0xA9;
    }
    big[sizeof big - 1] = '\0';
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_RETRYING, big, T0), 0);
    assert_true(sql_int(f->path, "SELECT length(CAST(last_error AS BLOB)) "
                                 "FROM messages") <= 1024);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    size_t n = strlen(c.last_error);
    assert_true(n <= sizeof c.last_error - 1);
    assert_true(n >= sizeof c.last_error - 3);
    assert_int_equal(n % 2, 1); /* 'a' plus whole 2-byte characters */
}

static void test_forget_lets_an_id_run_again(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0, &c), 0);
    assert_int_equal(warren__store_forget(f->a, Q, "m1", T0 + 1),
                     WARREN_ERR_STORE_BUSY);
    assert_int_equal(record1(f->a, "m1", WARREN__OUT_DEAD, "x", T0 + 1), 0);
    assert_int_equal(warren__store_forget(f->a, Q, "m1", T0 + 2), 0);
    assert_int_equal(warren__store_forget(f->a, Q, "m1", T0 + 2),
                     WARREN_ERR_NOT_FOUND);
    assert_int_equal(claim1(f->a, Q, "m1", 5, T0 + 3, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 1);
    /* A processing claim whose lease ran out may be forgotten too. */
    assert_int_equal(
        warren__store_forget(f->a, Q, "m1", T0 + 3 + LEASE_S * 1000), 0);
}

typedef struct {
    char text[512];
    int64_t total;
} stats_acc;

static void stats_cb(const char *queue, const char *st, int64_t rows,
                     void *user) {
    stats_acc *a = user;
    size_t n = strlen(a->text);
    snprintf(a->text + n, sizeof a->text - n, "%s/%s=%lld;", queue, st,
             (long long)rows);
    a->total += rows;
}

static void test_busy_many_reports_only_live_claims(void **state) {
    fixture *f = *state;
    warren__claim c;
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, Q, "live", 5, T0, &c), 0);
    assert_int_equal(claim1(f->a, Q, "old", 5, T0 - LEASE_S * 1000 - 1, &c), 0);
    assert_int_equal(claim1(f->a, Q, "dead1", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "dead1", WARREN__OUT_DEAD, "x", T0), 0);
    const char *queues[] = {Q, Q, Q, Q};
    const char *ids[] = {"live", "old", "dead1", "none"};
    int results[4] = {7, 7, 7, 7};
    assert_int_equal(
        warren__store_busy_many(f->a, queues, ids, 4, T0 + 1, results), 0);
    assert_int_equal(results[0], WARREN_ERR_STORE_BUSY);
    assert_int_equal(results[1], 0); /* lease expired */
    assert_int_equal(results[2], 0);
    assert_int_equal(results[3], 0);
    /* Only looked: the dead record is still there, nothing else added. */
    assert_state(f, "dead1", "dead");
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM messages"), 3);
    assert_false(warren__store_in_txn(f->a));
}

static void test_stats_counts_rows_per_queue_and_state(void **state) {
    fixture *f = *state;
    warren__claim c;
    stats_acc acc = {{0}, 0};
    f->a = open_as(f, "host-a", 1000);
    assert_int_equal(claim1(f->a, "q1", "a", 5, T0, &c), 0);
    assert_int_equal(claim1(f->a, "q1", "b", 5, T0, &c), 0);
    assert_int_equal(claim1(f->a, Q, "c", 5, T0, &c), 0);
    assert_int_equal(record1(f->a, "c", WARREN__OUT_DONE, NULL, T0), 0);
    assert_int_equal(warren__store_stats(f->a, stats_cb, &acc), 0);
    assert_string_equal(acc.text, "orders/done=1;q1/processing=2;");
    assert_int_equal(acc.total, 3);
}

static void test_close_null_is_noop_and_path_is_kept(void **state) {
    fixture *f = *state;
    warren__store_close(NULL);
    f->a = open_as(f, "host-a", 1000);
    assert_string_equal(warren__store_path(f->a), f->path);
    assert_non_null(warren__store_db(f->a));
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
/* S: SQLite only (files, PRAGMAs, SQLite's own faults); test_store_pg.c
 * covers PostgreSQL's counterparts. */
#ifdef WARREN_TEST_PG
#define S(fn)
#else
#define S(fn) T(fn),
#endif

int main(void) {
#ifdef WARREN_TEST_PG
    if (getenv("WARREN_TEST_PG_URL") == NULL) {
        printf(PG_SKIP_MESSAGE);
        return 77;
    }
#endif
    const struct CMUnitTest tests[] = {
        T(test_first_claim_runs_attempt_one_and_is_committed),
        T(test_done_id_is_duplicate),
        T(test_dead_id_is_dead_with_its_reason),
        T(test_attempts_count_across_retrying),
        T(test_live_other_owner_gets_busy),
        T(test_expired_lease_is_taken_over_without_spending_attempt),
        T(test_dead_owner_on_same_host_is_taken_over_at_once),
        T(test_live_owner_on_same_host_keeps_claim_past_lease),
        T(test_released_claim_is_free_at_once_and_not_suspect),
        T(test_renewed_lease_holds_and_lost_claim_is_reported),
        T(test_dead_pid_on_other_host_waits_for_lease),
        T(test_own_token_claim_is_taken_over),
        T(test_same_pid_with_other_token_is_not_ours),
        T(test_poison_after_max_deliveries),
        T(test_crash_mark_is_reported_by_takeover_once_and_cleared),
        T(test_retrying_outcome_resets_delivery_count),
        T(test_release_gives_claim_back_at_once),
        T(test_release_of_retried_claim_keeps_attempt),
        T(test_release_never_goes_below_zero_deliveries),
        T(test_release_after_outcome_is_not_found),
        T(test_duplicate_id_in_one_batch_runs_once),
        T(test_same_id_on_two_queues_is_two_messages),
        T(test_record_of_unclaimed_id_is_not_found),
        T(test_record_outside_transaction_is_refused),
        T(test_second_outcome_is_illegal_transition),
        S(test_trigger_refuses_illegal_transitions_in_sql)
            T(test_prune_deletes_only_old_done_and_dead),
        S(test_prune_keeps_file_size_bounded)
            S(test_files_are_mode_0600_whatever_the_umask)
                S(test_newer_schema_version_is_refused)
                    S(test_existing_store_opens_without_migration)
                        S(test_v1_store_is_migrated_to_v2_keeping_records)
                            T(test_replayed_copy_of_dead_id_runs_afresh),
        T(test_replayed_dead_id_twice_in_one_batch_runs_once),
        S(test_trigger_lets_dead_out_only_for_a_later_generation) S(
            test_must_exist_refuses_a_missing_file_and_creates_nothing)
            S(test_garbage_file_is_refused_as_corrupt) S(
                test_damaged_database_is_refused_as_corrupt)
                S(test_read_only_file_is_refused) S(
                    test_read_only_directory_is_refused)
                    S(test_missing_directory_is_refused) S(
                        test_disk_full_is_store_full_and_commits_nothing)
                        S(test_disk_full_during_outcomes_commits_nothing) S(
                            test_locked_store_is_store_busy_and_claims_nothing)
                            S(test_handler_writes_commit_with_done_and_roll_back_on_failure)
                                T(test_rollback_discards_outcomes),
        T(test_claim_inside_open_transaction_is_refused),
        T(test_claim_and_commit_makes_outcomes_and_claims_durable),
        S(test_claim_and_commit_failure_rolls_back_outcomes_too)
            S(test_claim_and_commit_sees_previous_batch_outcome_as_duplicate)
                T(test_overlong_id_is_refused),
        T(test_last_error_is_truncated_to_field_at_utf8_boundary),
        T(test_forget_lets_an_id_run_again),
        T(test_busy_many_reports_only_live_claims),
        T(test_stats_counts_rows_per_queue_and_state),
        S(test_close_null_is_noop_and_path_is_kept)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * store_pg.c - the PostgreSQL backend of the message store: one libpq
 * connection per process on a database shared by workers on many hosts.
 *
 * This file is the only place warren talks to PostgreSQL. It promises what
 * the SQLite backend does (uniqueness decided by the primary key (queue, id)
 * with INSERT ... ON CONFLICT inside one transaction, illegal state changes
 * refused by a trigger in the database, every statement prepared once) and
 * what several hosts need: a record read for a decision is locked (SELECT
 * ... FOR UPDATE) until the transaction ends, and leases are stamped and
 * judged by the database's clock (now()), never a worker's. Every error
 * names the store by its URL without a password, and says what to do.
 */
#include "store_backend.h"

#include "log.h"
#include "warren.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The schema version this build writes and understands (warren_schema). */
#define PG_SCHEMA_VERSION 1

/* The clock a lease is stamped and judged by: the database's (now(), the
 * transaction's start) unless a test passes its own as parameter N. */
#define CLK(n)                                                                 \
    "COALESCE($" #n "::bigint, (extract(epoch FROM now()) * 1000)::bigint)"

/* The columns of a whole record, in warren__store_entry's order. */
#define RECORD_COLUMNS                                                         \
    "queue, id, state, attempts, deliveries, owner_host, owner_pid, "          \
    "owner_token, lease_until, first_failed_at, last_error, created_at, "      \
    "updated_at, replays, crashed_reason"

enum {
    PS_INSERT,
    PS_SELECT,
    PS_TAKE,
    PS_DONE,
    PS_RETRYING,
    PS_DEAD,
    PS_RELEASE,
    PS_PRUNE,
    PS_LOOKUP,
    PS_DELETE,
    PS_STATS,
    PS_REVIVE,
    PS_RENEW,
    PS_MARK_CRASHED,
    PS_EACH,
    PS_PUT,
    PS_INSERT_MANY,
    PS_COUNT
};

static const struct {
    const char *name;
    const char *sql;
    int nparams;
} ps[PS_COUNT] = {
    [PS_INSERT] = {"warren_insert",
                   "INSERT INTO warren_messages(queue, id, state, attempts, "
                   "deliveries, owner_host, owner_pid, owner_token, "
                   "lease_until, created_at, updated_at, replays) "
                   "VALUES($1, $2, 'processing', 1, 1, $3, $4, $5, " CLK(
                       9) " + $6, $7, $7, $8) "
                          "ON CONFLICT (queue, id) DO NOTHING",
                   9},
    /* Locked until the transaction ends: a second host deciding on the
     * same record waits, then reads what the first one wrote. */
    [PS_SELECT] = {"warren_select",
                   "SELECT state, attempts, deliveries, owner_host, "
                   "owner_pid, owner_token, lease_until, first_failed_at, "
                   "last_error, replays, crashed_reason, " CLK(
                       3) " FROM warren_messages "
                          "WHERE queue = $1 AND id = $2 FOR UPDATE",
                   3},
    [PS_TAKE] = {"warren_take",
                 "UPDATE warren_messages SET state = 'processing', "
                 "attempts = $3, deliveries = $4, owner_host = $5, "
                 "owner_pid = $6, owner_token = $7, "
                 "lease_until = " CLK(11) " + $8, updated_at = $9, "
                                          "replays = $10, crashed_reason = "
                                          "NULL WHERE queue = $1 AND id = $2",
                 11},
    [PS_DONE] = {"warren_done",
                 "UPDATE warren_messages SET state = 'done', lease_until = 0, "
                 "updated_at = $4 "
                 "WHERE queue = $1 AND id = $2 AND owner_token = $3",
                 4},
    [PS_RETRYING] = {"warren_retrying",
                     "UPDATE warren_messages SET state = 'retrying', "
                     "lease_until = 0, deliveries = 0, "
                     "first_failed_at = COALESCE(first_failed_at, $4), "
                     "last_error = COALESCE($5, last_error), updated_at = $4 "
                     "WHERE queue = $1 AND id = $2 AND owner_token = $3",
                     5},
    [PS_DEAD] = {"warren_dead",
                 "UPDATE warren_messages SET state = 'dead', lease_until = 0, "
                 "first_failed_at = COALESCE(first_failed_at, $4), "
                 "last_error = COALESCE($5, last_error), updated_at = $4 "
                 "WHERE queue = $1 AND id = $2 AND owner_token = $3",
                 5},
    [PS_RELEASE] = {"warren_release",
                    "UPDATE warren_messages SET state = 'processing', "
                    "deliveries = GREATEST(deliveries - 1, 0), "
                    "lease_until = 0, updated_at = $4 "
                    "WHERE queue = $1 AND id = $2 AND owner_token = $3 "
                    "AND state = 'processing'",
                    4},
    [PS_PRUNE] = {"warren_prune",
                  "DELETE FROM warren_messages WHERE (queue, id) IN ("
                  "SELECT queue, id FROM warren_messages "
                  "WHERE state IN ('done', 'dead') AND updated_at < $1 "
                  "LIMIT $2)",
                  2},
    [PS_LOOKUP] = {"warren_lookup",
                   "SELECT state, lease_until, " CLK(
                       3) " FROM warren_messages WHERE queue = $1 AND id = $2",
                   3},
    [PS_DELETE] = {"warren_delete",
                   "DELETE FROM warren_messages WHERE queue = $1 AND id = $2",
                   2},
    [PS_STATS] = {"warren_stats",
                  "SELECT queue, state, count(*) FROM warren_messages "
                  "GROUP BY queue, state ORDER BY queue, state",
                  0},
    [PS_REVIVE] = {"warren_revive",
                   "UPDATE warren_messages SET state = 'processing', "
                   "attempts = 1, deliveries = 1, owner_host = $3, "
                   "owner_pid = $4, owner_token = $5, "
                   "lease_until = " CLK(9) " + $6, first_failed_at = NULL, "
                                           "last_error = NULL, updated_at = "
                                           "$7, replays = $8 "
                                           "WHERE queue = $1 AND id = $2 AND "
                                           "state = 'dead' AND replays < $8",
                   9},
    [PS_RENEW] = {"warren_renew",
                  "UPDATE warren_messages SET lease_until = " CLK(
                      5) " + $4 WHERE queue = $1 AND id = $2 "
                         "AND owner_token = $3 AND state = 'processing'",
                  5},
    [PS_MARK_CRASHED] = {"warren_mark_crashed",
                         "UPDATE warren_messages SET crashed_reason = $5 "
                         "WHERE queue = $1 AND id = $2 AND owner_host = $3 "
                         "AND owner_pid = $4 AND state = 'processing'",
                         5},
    [PS_EACH] = {"warren_each",
                 "SELECT " RECORD_COLUMNS " FROM warren_messages "
                 "ORDER BY created_at, queue, id",
                 0},
    /* The new ids of a batch in one statement, in batch order, so the
     * first entry of a key the batch holds twice is the one inserted. */
    [PS_INSERT_MANY] =
        {"warren_insert_many",
         "INSERT INTO warren_messages(queue, id, state, attempts, "
         "deliveries, owner_host, owner_pid, owner_token, lease_until, "
         "created_at, updated_at, replays) "
         "SELECT t.q, t.i, 'processing', 1, 1, $3, $4, $5, " CLK(
             7) " + $6, $8, $8, t.r "
                "FROM unnest($1::text[], $2::text[], $9::bigint[]) "
                "WITH ORDINALITY AS t(q, i, r, n) ORDER BY t.n "
                "ON CONFLICT (queue, id) DO NOTHING RETURNING queue, id",
         9},
    [PS_PUT] = {"warren_put",
                "INSERT INTO warren_messages(" RECORD_COLUMNS
                ") VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, "
                "$13, $14, $15) ON CONFLICT (queue, id) DO NOTHING",
                15},
};

/* Version 1, the SQLite schema's version 2 in PostgreSQL's words. The
 * trigger makes the state machine a property of the database, so neither
 * a handler writing through warren_ctx_pg() nor an operator with psql can
 * move a record backwards. Times are ms since the epoch; lease_until is
 * stamped from the database's clock. */
static const char schema_v1[] =
    "CREATE TABLE warren_messages("
    " queue text NOT NULL,"
    " id text NOT NULL,"
    " state text NOT NULL"
    "  CHECK (state IN ('processing', 'done', 'retrying', 'dead')),"
    " attempts int NOT NULL,"
    " deliveries int NOT NULL,"
    " owner_host text,"
    " owner_pid int,"
    " owner_token bigint,"
    " lease_until bigint NOT NULL DEFAULT 0,"
    " first_failed_at bigint,"
    " last_error text,"
    " created_at bigint NOT NULL,"
    " updated_at bigint NOT NULL,"
    " replays bigint NOT NULL DEFAULT 0,"
    " crashed_reason text,"
    " PRIMARY KEY (queue, id));"
    "CREATE INDEX warren_messages_retention"
    " ON warren_messages(state, updated_at);"
    "CREATE FUNCTION warren_messages_transition() RETURNS trigger"
    " LANGUAGE plpgsql AS $$ BEGIN"
    " IF OLD.state = 'done' THEN RAISE EXCEPTION 'illegal transition from"
    " done: done records are only deleted (forget, replay, retention)';"
    " END IF;"
    " IF OLD.state = 'dead' AND NOT (NEW.state = 'processing' AND"
    " NEW.replays > OLD.replays) THEN RAISE EXCEPTION 'illegal transition"
    " from dead: dead records are only deleted (forget, replay, retention)"
    " or re-run by a replayed copy of a later generation'; END IF;"
    " IF OLD.state = 'retrying' AND NEW.state <> 'processing' THEN RAISE"
    " EXCEPTION 'illegal transition from retrying: only to processing';"
    " END IF;"
    " RETURN NEW; END $$;"
    "CREATE TRIGGER warren_messages_transition BEFORE UPDATE ON"
    " warren_messages FOR EACH ROW EXECUTE FUNCTION"
    " warren_messages_transition();";

typedef struct {
    warren__store base; /* first: a warren__store * is one of these */
    PGconn *conn;
    int caller_clock; /* WARREN__STORE_F_CALLER_CLOCK: tests' own clock */
    int prepared;
} pg_store;

static pg_store *pgs(warren__store *s) {
    return (pg_store *)s;
}

#define set_err warren__store_set_err

static const char fix_readonly[] =
    "point store.url at the primary (this server has transaction_read_only "
    "on: a standby, or default_transaction_read_only)";

/* The server's message without its "ERROR:  " prefix and trailing newline,
 * into buf. */
static const char *pg_text(const PGresult *res, PGconn *conn, char *buf,
                           size_t cap) {
    const char *m =
        res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (m == NULL) {
        m = conn ? PQerrorMessage(conn) : "no connection";
    }
    snprintf(buf, cap, "%s", m);
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) {
        buf[--n] = '\0';
    }
    return buf;
}

/* Translates a failed result at the seam by its SQLSTATE, keeping the
 * server's text. Frees `res`. */
static int pg_fail(warren__store *s, PGresult *res, const char *what) {
    PGconn *conn = pgs(s)->conn;
    char msg[512];
    pg_text(res, conn, msg, sizeof msg);
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char code[8] = "";
    if (state) {
        snprintf(code, sizeof code, "%s", state);
    }
    PQclear(res);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        /* The next begin() reconnects; what this transaction did is gone
         * with it, and nothing of it was acked. */
        return set_err(s, WARREN_ERR_STORE_BUSY,
                       "connection to the database lost (%s: %s): "
                       "reconnecting; nothing unrecorded was acked",
                       what, msg);
    }
    if (strcmp(code, "25006") == 0) {
        return set_err(s, WARREN_ERR_STORE, "read-only (%s: %s): %s", what, msg,
                       fix_readonly);
    }
    if (strcmp(code, "57014") == 0) {
        return set_err(s, WARREN_ERR_STORE_BUSY,
                       "statement timeout (%s: %s): the database is slow or a "
                       "lock is held; raise statement_timeout for this user "
                       "or find the long transaction",
                       what, msg);
    }
    if (strcmp(code, "55P03") == 0 || strcmp(code, "40P01") == 0 ||
        strcmp(code, "40001") == 0) {
        return set_err(s, WARREN_ERR_STORE_BUSY,
                       "record locked by another worker for longer than "
                       "busy_timeout_ms %u (%s: %s)",
                       (unsigned)s->busy_timeout_ms, what, msg);
    }
    if (strcmp(code, "53100") == 0 || strcmp(code, "53200") == 0) {
        return set_err(s, WARREN_ERR_STORE_FULL,
                       "database disk or memory full: free space; nothing "
                       "unrecorded was acked (%s: %s)",
                       what, msg);
    }
    if (strncmp(code, "28", 2) == 0 || strcmp(code, "42501") == 0) {
        return set_err(s, WARREN_ERR_STORE,
                       "permission denied (%s: %s): grant this user the "
                       "warren tables",
                       what, msg);
    }
    return set_err(s, WARREN_ERR_STORE, "%s: %s", what, msg);
}

/* Checks `res` is `want`; on failure translates it (and frees it). */
static int check(warren__store *s, PGresult *res, ExecStatusType want,
                 const char *what) {
    if (res == NULL || PQresultStatus(res) != want) {
        return pg_fail(s, res, what);
    }
    return 0;
}

static int exec_cmd(warren__store *s, const char *sql, const char *what) {
    PGresult *res = PQexec(pgs(s)->conn, sql);
    int rc = check(s, res, PGRES_COMMAND_OK, what);
    if (rc == 0) {
        PQclear(res);
    }
    return rc;
}

/* Parameters of one prepared statement, as text. */
typedef struct {
    const char *v[16];
    char num[16][24];
    int n;
} params;

static void p_text(params *p, const char *t) {
    p->v[p->n++] = t;
}

static void p_int(params *p, int64_t x) {
    snprintf(p->num[p->n], sizeof p->num[p->n], "%lld", (long long)x);
    p->v[p->n] = p->num[p->n];
    p->n++;
}

/* The clock parameter: NULL (the database's) unless a test brings its own. */
static void p_clock(params *p, warren__store *s, int64_t now_ms) {
    if (pgs(s)->caller_clock) {
        p_int(p, now_ms);
    } else {
        p_text(p, NULL);
    }
}

static PGresult *run_ps(warren__store *s, int which, const params *p) {
    return PQexecPrepared(pgs(s)->conn, ps[which].name, p->n, p->v, NULL, NULL,
                          0);
}

/* Runs a statement that returns no rows; *changed: rows it touched. */
static int run_cmd(warren__store *s, int which, const params *p,
                   const char *what, int *changed) {
    PGresult *res = run_ps(s, which, p);
    int rc = check(s, res, PGRES_COMMAND_OK, what);
    if (rc != 0) {
        return rc;
    }
    if (changed) {
        *changed = atoi(PQcmdTuples(res));
    }
    PQclear(res);
    return 0;
}

static void p_key(params *p, const char *queue, const char *id) {
    p->n = 0;
    p_text(p, queue);
    p_text(p, id);
}

static int64_t col_int(const PGresult *res, int col) {
    return PQgetisnull(res, 0, col)
               ? 0
               : strtoll(PQgetvalue(res, 0, col), NULL, 10);
}

static const char *col_text(const PGresult *res, int col) {
    return PQgetisnull(res, 0, col) ? NULL : PQgetvalue(res, 0, col);
}

static int query_int(warren__store *s, const char *sql, const char *what,
                     int64_t *out, int *found) {
    PGresult *res = PQexec(pgs(s)->conn, sql);
    int rc = check(s, res, PGRES_TUPLES_OK, what);
    if (rc != 0) {
        return rc;
    }
    *found = PQntuples(res) > 0;
    *out = *found ? col_int(res, 0) : 0;
    PQclear(res);
    return 0;
}

/* Creates or upgrades the schema inside one transaction, under an advisory
 * lock, so two workers starting on a new database cannot both create it. */
static int migrate(warren__store *s) {
    int rc = exec_cmd(s, "BEGIN", "begin migration");
    if (rc != 0) {
        return rc;
    }
    int64_t v = 0;
    int found = 0;
    rc = query_int(s, "SELECT pg_advisory_xact_lock(7761200400)",
                   "lock the schema", &v, &found);
    if (rc == 0) {
        rc = exec_cmd(s,
                      "CREATE TABLE IF NOT EXISTS warren_schema("
                      "version int NOT NULL)",
                      "create warren_schema");
    }
    if (rc == 0) {
        rc = query_int(s, "SELECT max(version) FROM warren_schema",
                       "read the schema version", &v, &found);
    }
    if (rc == 0 && v > PG_SCHEMA_VERSION) {
        rc = set_err(s, WARREN_ERR_STORE_CORRUPT,
                     "schema version %lld is newer than this warren supports "
                     "(%d); upgrade warren",
                     (long long)v, PG_SCHEMA_VERSION);
    }
    if (rc == 0 && v < 1) {
        rc = exec_cmd(s, schema_v1, "create schema v1");
        if (rc == 0) {
            rc = exec_cmd(s, "INSERT INTO warren_schema VALUES(1)",
                          "record schema v1");
        }
    }
    /* Future versions: `if (v < 2) { ALTER ...; INSERT ... VALUES(2) }`. */
    if (rc == 0) {
        rc = exec_cmd(s, "COMMIT", "commit migration");
    }
    if (rc != 0) {
        PQclear(PQexec(pgs(s)->conn, "ROLLBACK"));
    }
    return rc;
}

static int prepare_all(warren__store *s) {
    for (int i = 0; i < PS_COUNT; i++) {
        PGresult *res =
            PQprepare(pgs(s)->conn, ps[i].name, ps[i].sql, ps[i].nparams, NULL);
        int rc = check(s, res, PGRES_COMMAND_OK, "prepare");
        if (rc != 0) {
            return rc;
        }
        PQclear(res);
    }
    pgs(s)->prepared = 1;
    return 0;
}

/* Session settings: how long to wait for another worker's row lock (the
 * SQLite busy timeout's counterpart), and refusing a read-only server. */
static int session_setup(warren__store *s) {
    char sql[96];
    snprintf(sql, sizeof sql, "SET lock_timeout = %u",
             (unsigned)s->busy_timeout_ms);
    int rc = exec_cmd(s, sql, "set lock_timeout");
    if (rc != 0) {
        return rc;
    }
    PGresult *res = PQexec(pgs(s)->conn, "SHOW transaction_read_only");
    rc = check(s, res, PGRES_TUPLES_OK, "show transaction_read_only");
    if (rc != 0) {
        return rc;
    }
    int ro = PQntuples(res) > 0 && strcmp(PQgetvalue(res, 0, 0), "on") == 0;
    PQclear(res);
    if (ro) {
        return set_err(s, WARREN_ERR_STORE, "read-only: %s", fix_readonly);
    }
    return 0;
}

/* Why a connection failed, in words a person can act on. */
static int connect_fail(warren__store *s) {
    char msg[512];
    pg_text(NULL, pgs(s)->conn, msg, sizeof msg);
    for (char *c = msg; *c; c++) {
        if (*c == '\n' || *c == '\t') {
            *c = ' ';
        }
    }
    if (strstr(msg, "authentication failed") ||
        strstr(msg, "no password supplied") || strstr(msg, "pg_hba.conf") ||
        strstr(msg, "password authentication")) {
        return set_err(s, WARREN_ERR_STORE,
                       "authentication refused (%s): check the user in "
                       "store.url and the password in PGPASSWORD, ~/.pgpass "
                       "or WARREN_STORE_PASSWORD",
                       msg);
    }
    if (strstr(msg, "does not exist")) {
        return set_err(s, WARREN_ERR_STORE,
                       "%s: create the database or fix store.url", msg);
    }
    return set_err(s, WARREN_ERR_STORE,
                   "database unreachable (%s): is PostgreSQL running at the "
                   "host and port in store.url?",
                   msg);
}

/* The notices PostgreSQL sends (CREATE TABLE IF NOT EXISTS ...) go to the
 * log at debug level instead of stderr. */
static void on_notice(void *arg, const char *message) {
    warren__store *s = arg;
    warren__log(WARREN_LOG_DEBUG, NULL, "%s: %s", s->path, message);
}

static int pg_connect(warren__store *s, const char *url) {
    /* The password never travels on argv or in the file: libpq reads
     * PGPASSWORD and ~/.pgpass itself; WARREN_STORE_PASSWORD is passed as
     * a parameter and overrides them. Later keywords override earlier
     * ones, so the URL may set its own connect_timeout. */
    const char *keys[5], *vals[5];
    int k = 0;
    keys[k] = "application_name";
    vals[k++] = "warren";
    keys[k] = "connect_timeout";
    vals[k++] = "10";
    keys[k] = "dbname";
    vals[k++] = url;
    const char *pw = getenv("WARREN_STORE_PASSWORD");
    if (pw && pw[0]) {
        keys[k] = "password";
        vals[k++] = pw;
    }
    keys[k] = NULL;
    vals[k] = NULL;
    pgs(s)->conn = PQconnectdbParams(keys, vals, 1);
    if (pgs(s)->conn == NULL) {
        return set_err(s, WARREN_ERR_NOMEM, "connect: out of memory");
    }
    if (PQstatus(pgs(s)->conn) != CONNECTION_OK) {
        return connect_fail(s);
    }
    PQsetNoticeProcessor(pgs(s)->conn, on_notice, s);
    return session_setup(s);
}

static int pgb_open(warren__store *s, const warren__store_opts *opts,
                    const char *where) {
    pgs(s)->caller_clock = (opts->flags & WARREN__STORE_F_CALLER_CLOCK) != 0;
    int rc = pg_connect(s, where);
    if (rc == 0 && !(opts->flags & WARREN__STORE_F_MUST_EXIST)) {
        rc = migrate(s);
    }
    if (rc == 0 && (opts->flags & WARREN__STORE_F_MUST_EXIST)) {
        /* The operator's commands: a database without warren's tables is
         * another database than the workers'; the version must match. */
        int64_t v = 0;
        int found = 0;
        rc = query_int(s,
                       "SELECT (to_regclass('warren_schema') IS NOT NULL)::int",
                       "look for warren_schema", &v, &found);
        if (rc == 0 && !v) {
            rc = set_err(s, WARREN_ERR_NOT_FOUND,
                         "store does not exist (no warren tables in this "
                         "database; nothing created): store.url must name "
                         "the database the workers use, which `warren run` "
                         "or `warren store migrate` creates");
        }
        if (rc == 0) {
            rc = query_int(s, "SELECT max(version) FROM warren_schema",
                           "read the schema version", &v, &found);
        }
        if (rc == 0 && v != PG_SCHEMA_VERSION) {
            rc = set_err(s, WARREN_ERR_STORE_CORRUPT,
                         "schema version %lld, this warren uses %d: %s",
                         (long long)v, PG_SCHEMA_VERSION,
                         v > PG_SCHEMA_VERSION ? "upgrade warren"
                                               : "run `warren store migrate`");
        }
    }
    if (rc == 0) {
        rc = prepare_all(s);
    }
    return rc;
}

static void pgb_close(warren__store *s) {
    PQfinish(pgs(s)->conn); /* an open transaction is rolled back */
}

static int pgb_in_txn(const warren__store *s) {
    const pg_store *p = (const pg_store *)s;
    if (p->conn == NULL) {
        return 0;
    }
    PGTransactionStatusType t = PQtransactionStatus(p->conn);
    return t == PQTRANS_INTRANS || t == PQTRANS_INERROR || t == PQTRANS_ACTIVE;
}

/* After the server went away (a restart, a failover): a new connection,
 * its settings and statements, before the next transaction. */
static int reconnect(warren__store *s) {
    pg_store *p = pgs(s);
    PQreset(p->conn);
    if (PQstatus(p->conn) != CONNECTION_OK) {
        char msg[512];
        pg_text(NULL, p->conn, msg, sizeof msg);
        return set_err(s, WARREN_ERR_STORE_BUSY,
                       "database unreachable, reconnect failed (%s): will try "
                       "again",
                       msg);
    }
    warren__log(WARREN_LOG_INFO, NULL, "%s: reconnected to the database",
                s->path);
    int rc = session_setup(s);
    if (rc == 0) {
        rc = prepare_all(s);
    }
    return rc;
}

static int pgb_begin(warren__store *s, const char *what) {
    if (PQstatus(pgs(s)->conn) != CONNECTION_OK) {
        int rc = reconnect(s);
        if (rc != 0) {
            return rc;
        }
    }
    return exec_cmd(s, "BEGIN", what);
}

static int pgb_commit(warren__store *s, const char *what) {
    PGresult *res = PQexec(pgs(s)->conn, "COMMIT");
    int rc = check(s, res, PGRES_COMMAND_OK, what);
    if (rc != 0) {
        return rc;
    }
    /* COMMIT of a failed transaction answers ROLLBACK, not an error. */
    int rolled_back = strcmp(PQcmdStatus(res), "ROLLBACK") == 0;
    PQclear(res);
    if (rolled_back) {
        return set_err(s, WARREN_ERR_STORE,
                       "%s: the transaction had failed and was rolled back",
                       what);
    }
    return 0;
}

static void pgb_rollback(warren__store *s) {
    PQclear(PQexec(pgs(s)->conn, "ROLLBACK"));
}

static int pgb_savepoint(warren__store *s) {
    return exec_cmd(s, "SAVEPOINT warren_h", "savepoint");
}

static int pgb_savepoint_release(warren__store *s) {
    return exec_cmd(s, "RELEASE warren_h", "release savepoint");
}

static int pgb_savepoint_rollback(warren__store *s) {
    return exec_cmd(s, "ROLLBACK TO warren_h", "rollback to savepoint");
}

/* What the insert, take and revive statements share, in this order: us
 * as owner with a fresh lease, the time, the delivery's replay generation
 * and the clock. */
static void p_new_claim(params *p, warren__store *s, const warren__claim *c,
                        int64_t now_ms) {
    p_text(p, s->host);
    p_int(p, s->pid);
    p_int(p, s->token);
    p_int(p, (int64_t)s->lease_s * 1000);
    p_int(p, now_ms);
    p_int(p, c->replays);
    p_clock(p, s, now_ms);
}

static int pgb_insert(warren__store *s, const warren__claim *c, int64_t now_ms,
                      int *inserted) {
    params p;
    p_key(&p, c->queue, c->id);
    p_new_claim(&p, s, c, now_ms);
    int changed = 0;
    int rc = run_cmd(s, PS_INSERT, &p, "claim", &changed);
    *inserted = rc == 0 && changed == 1;
    return rc;
}

/* Appends `v` to the array literal in `b` as a quoted element. */
static void array_elem(char **b, const char *v, int first) {
    char *o = *b;
    if (!first) {
        *o++ = ',';
    }
    *o++ = '"';
    for (; *v; v++) {
        if (*v == '"' || *v == '\\') {
            *o++ = '\\';
        }
        *o++ = *v;
    }
    *o++ = '"';
    *b = o;
}

static int pgb_insert_many(warren__store *s, warren__claim *claims, size_t n,
                           int64_t now_ms) {
    size_t cap_q = 3, cap_i = 3;
    for (size_t i = 0; i < n; i++) {
        cap_q += 2 * strlen(claims[i].queue) + 3;
        cap_i += 2 * strlen(claims[i].id) + 3;
    }
    size_t cap_r = 3 + n * 22;
    char *qa = malloc(cap_q), *ia = malloc(cap_i), *ra = malloc(cap_r);
    if (qa == NULL || ia == NULL || ra == NULL) {
        free(qa);
        free(ia);
        free(ra);
        return set_err(s, WARREN_ERR_NOMEM, "claim: out of memory");
    }
    char *q = qa, *d = ia, *r = ra;
    *q++ = '{';
    *d++ = '{';
    *r++ = '{';
    for (size_t i = 0; i < n; i++) {
        array_elem(&q, claims[i].queue, i == 0);
        array_elem(&d, claims[i].id, i == 0);
        r += snprintf(r, cap_r - (size_t)(r - ra), "%s%lld", i ? "," : "",
                      (long long)claims[i].replays);
    }
    *q++ = '}';
    *q = '\0';
    *d++ = '}';
    *d = '\0';
    *r++ = '}';
    *r = '\0';
    params p = {.n = 0};
    p_text(&p, qa);
    p_text(&p, ia);
    p_text(&p, s->host);
    p_int(&p, s->pid);
    p_int(&p, s->token);
    p_int(&p, (int64_t)s->lease_s * 1000);
    p_clock(&p, s, now_ms);
    p_int(&p, now_ms);
    p_text(&p, ra);
    PGresult *res = run_ps(s, PS_INSERT_MANY, &p);
    free(qa);
    free(ia);
    free(ra);
    int rc = check(s, res, PGRES_TUPLES_OK, "claim");
    if (rc != 0) {
        return rc;
    }
    /* Each returned key is the first entry of the batch with that key. */
    for (int row = 0; row < PQntuples(res); row++) {
        const char *rq = PQgetvalue(res, row, 0), *ri = PQgetvalue(res, row, 1);
        for (size_t i = 0; i < n; i++) {
            if (!claims[i].inserted && strcmp(claims[i].id, ri) == 0 &&
                strcmp(claims[i].queue, rq) == 0) {
                claims[i].inserted = 1;
                break;
            }
        }
    }
    PQclear(res);
    return 0;
}

static int pgb_read(warren__store *s, const warren__claim *c, int64_t now_ms,
                    warren__store_row *row, int *found) {
    params p;
    p_key(&p, c->queue, c->id);
    p_clock(&p, s, now_ms);
    PGresult *res = run_ps(s, PS_SELECT, &p);
    int rc = check(s, res, PGRES_TUPLES_OK, "claim");
    if (rc != 0) {
        return rc;
    }
    *found = PQntuples(res) == 1;
    if (*found) {
        warren__store_copy_text(row->state, sizeof row->state,
                                col_text(res, 0));
        row->attempts = (int)col_int(res, 1);
        row->deliveries = (int)col_int(res, 2);
        warren__store_copy_text(row->owner_host, sizeof row->owner_host,
                                col_text(res, 3));
        row->owner_pid = (int)col_int(res, 4);
        row->owner_token = col_int(res, 5);
        row->lease_until = col_int(res, 6);
        row->first_failed_at = col_int(res, 7);
        warren__store_copy_text(row->last_error, sizeof row->last_error,
                                col_text(res, 8));
        row->replays = col_int(res, 9);
        warren__store_copy_text(row->crashed_reason, sizeof row->crashed_reason,
                                col_text(res, 10));
        row->now_ms = col_int(res, 11);
    }
    PQclear(res);
    return 0;
}

static int pgb_take(warren__store *s, const warren__claim *c, int attempts,
                    int deliveries, int64_t now_ms) {
    params p;
    p_key(&p, c->queue, c->id);
    p_int(&p, attempts);
    p_int(&p, deliveries);
    p_new_claim(&p, s, c, now_ms);
    return run_cmd(s, PS_TAKE, &p, "claim", NULL);
}

static int pgb_revive(warren__store *s, const warren__claim *c,
                      int64_t now_ms) {
    params p;
    p_key(&p, c->queue, c->id);
    p_new_claim(&p, s, c, now_ms);
    return run_cmd(s, PS_REVIVE, &p, "claim a replayed dead id", NULL);
}

/* Length of the valid UTF-8 sequence at src[0..len), 0 if invalid. */
static size_t utf8_seq(const unsigned char *u, size_t len) {
    size_t n = u[0] < 0x80                    ? 1
               : u[0] >= 0xC2 && u[0] <= 0xDF ? 2
               : u[0] >= 0xE0 && u[0] <= 0xEF ? 3
               : u[0] >= 0xF0 && u[0] <= 0xF4 ? 4
                                              : 0;
    if (n == 0 || n > len) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((u[i] & 0xC0) != 0x80) {
            return 0;
        }
    }
    /* Overlong forms, surrogates and code points above U+10FFFF. */
    if ((u[0] == 0xE0 && u[1] < 0xA0) || (u[0] == 0xED && u[1] > 0x9F) ||
        (u[0] == 0xF0 && u[1] < 0x90) || (u[0] == 0xF4 && u[1] > 0x8F)) {
        return 0;
    }
    return n;
}

/* Copies src[0..len) into dst[cap] with every byte of an invalid UTF-8
 * sequence replaced by '?': PostgreSQL refuses such text (22021), and a
 * handler's reason (an exec handler's stderr) may carry any bytes, which
 * must not fail the outcome. SQLite keeps the bytes as they are. */
static const char *clean_text(char *dst, size_t cap, const char *src,
                              size_t len) {
    if (src == NULL) {
        return NULL;
    }
    const unsigned char *u = (const unsigned char *)src;
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < cap;) {
        size_t n = u[i] ? utf8_seq(u + i, len - i) : 0;
        if (n == 0 || o + n >= cap) {
            if (n != 0) {
                break; /* a whole character does not fit */
            }
            dst[o++] = '?';
            i++;
            continue;
        }
        memcpy(dst + o, u + i, n);
        o += n;
        i += n;
    }
    dst[o] = '\0';
    return dst;
}

static int pgb_record(warren__store *s, const char *queue, const char *id,
                      warren__outcome_kind kind, const char *error,
                      size_t error_len, int64_t now_ms, int *changed) {
    int which = kind == WARREN__OUT_DONE       ? PS_DONE
                : kind == WARREN__OUT_RETRYING ? PS_RETRYING
                : kind == WARREN__OUT_DEAD     ? PS_DEAD
                                               : PS_RELEASE;
    params p;
    char stored[WARREN__STORED_ERROR_MAX + 1];
    p_key(&p, queue, id);
    p_int(&p, s->token);
    p_int(&p, now_ms);
    if (which == PS_RETRYING || which == PS_DEAD) {
        p_text(&p, clean_text(stored, sizeof stored, error, error_len));
    }
    return run_cmd(s, which, &p, "record outcome", changed);
}

static int pgb_renew(warren__store *s, const warren__claim *c, int64_t now_ms,
                     int *changed) {
    params p;
    p_key(&p, c->queue, c->id);
    p_int(&p, s->token);
    p_int(&p, (int64_t)s->lease_s * 1000);
    p_clock(&p, s, now_ms);
    return run_cmd(s, PS_RENEW, &p, "renew lease", changed);
}

static int pgb_mark_crashed(warren__store *s, const char *queue, const char *id,
                            int owner_pid, const char *reason, int *changed) {
    params p;
    char stored[WARREN__STORED_ERROR_MAX + 1];
    p_key(&p, queue, id);
    p_text(&p, s->host);
    p_int(&p, owner_pid);
    p_text(&p, clean_text(stored, sizeof stored, reason, strlen(reason)));
    return run_cmd(s, PS_MARK_CRASHED, &p, "mark a crashed claim", changed);
}

static int pgb_prune(warren__store *s, int64_t before_ms, int limit,
                     int *deleted) {
    params p = {.n = 0};
    p_int(&p, before_ms);
    p_int(&p, limit);
    return run_cmd(s, PS_PRUNE, &p, "prune", deleted);
}

static int pgb_lookup(warren__store *s, const char *queue, const char *id,
                      const char *what, char state[16], int64_t *lease_until,
                      int64_t *now_ms, int *found) {
    params p;
    p_key(&p, queue, id);
    p_clock(&p, s, *now_ms);
    PGresult *res = run_ps(s, PS_LOOKUP, &p);
    int rc = check(s, res, PGRES_TUPLES_OK, what);
    if (rc != 0) {
        return rc;
    }
    *found = PQntuples(res) == 1;
    if (*found) {
        warren__store_copy_text(state, 16, col_text(res, 0));
        *lease_until = col_int(res, 1);
        *now_ms = col_int(res, 2);
    }
    PQclear(res);
    return 0;
}

static int pgb_delete_key(warren__store *s, const char *queue, const char *id) {
    params p;
    p_key(&p, queue, id);
    return run_cmd(s, PS_DELETE, &p, "forget", NULL);
}

static int pgb_stats(warren__store *s,
                     void (*fn)(const char *queue, const char *state,
                                int64_t rows, void *user),
                     void *user) {
    params p = {.n = 0};
    PGresult *res = run_ps(s, PS_STATS, &p);
    int rc = check(s, res, PGRES_TUPLES_OK, "stats");
    if (rc != 0) {
        return rc;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        fn(PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
           strtoll(PQgetvalue(res, i, 2), NULL, 10), user);
    }
    PQclear(res);
    return 0;
}

/* Rows one at a time (single-row mode): an export of millions of records
 * never holds them all in memory. */
static int pgb_each(warren__store *s,
                    int (*fn)(const warren__store_entry *r, void *user),
                    void *user) {
    PGconn *conn = pgs(s)->conn;
    if (!PQsendQueryPrepared(conn, ps[PS_EACH].name, 0, NULL, NULL, NULL, 0) ||
        !PQsetSingleRowMode(conn)) {
        return pg_fail(s, NULL, "export");
    }
    int rc = 0, stop = 0;
    PGresult *res;
    while ((res = PQgetResult(conn)) != NULL) {
        ExecStatusType t = PQresultStatus(res);
        if (t == PGRES_SINGLE_TUPLE && rc == 0 && stop == 0) {
            warren__store_entry r = {
                .queue = col_text(res, 0),
                .id = col_text(res, 1),
                .state = col_text(res, 2),
                .attempts = (int)col_int(res, 3),
                .deliveries = (int)col_int(res, 4),
                .owner_host = col_text(res, 5),
                .owner_pid = (int)col_int(res, 6),
                .owner_token = col_int(res, 7),
                .lease_until = col_int(res, 8),
                .first_failed_at = col_int(res, 9),
                .last_error = col_text(res, 10),
                .created_at = col_int(res, 11),
                .updated_at = col_int(res, 12),
                .replays = col_int(res, 13),
                .crashed_reason = col_text(res, 14),
            };
            stop = fn(&r, user);
            PQclear(res);
        } else if (t != PGRES_SINGLE_TUPLE && t != PGRES_TUPLES_OK && rc == 0) {
            rc = pg_fail(s, res, "export"); /* frees res */
        } else {
            PQclear(res);
        }
    }
    return stop != 0 ? stop : rc;
}

static void p_opt_int(params *p, int64_t v) {
    if (v != 0) {
        p_int(p, v);
    } else {
        p_text(p, NULL);
    }
}

static int pgb_put(warren__store *s, const warren__store_entry *r,
                   int *inserted) {
    params p;
    char err[WARREN__STORED_ERROR_MAX + 1],
        crashed[WARREN__STORED_ERROR_MAX + 1];
    const char *last_error =
        r->last_error
            ? clean_text(err, sizeof err, r->last_error, strlen(r->last_error))
            : NULL;
    const char *crashed_reason =
        r->crashed_reason
            ? clean_text(crashed, sizeof crashed, r->crashed_reason,
                         strlen(r->crashed_reason))
            : NULL;
    p_key(&p, r->queue, r->id);
    p_text(&p, r->state);
    p_int(&p, r->attempts);
    p_int(&p, r->deliveries);
    p_text(&p, r->owner_host);
    p_opt_int(&p, r->owner_pid);
    p_opt_int(&p, r->owner_token);
    p_int(&p, r->lease_until);
    p_opt_int(&p, r->first_failed_at);
    p_text(&p, last_error);
    p_int(&p, r->created_at);
    p_int(&p, r->updated_at);
    p_int(&p, r->replays);
    p_text(&p, crashed_reason);
    int changed = 0;
    int rc = run_cmd(s, PS_PUT, &p, "import", &changed);
    *inserted = rc == 0 && changed == 1;
    return rc;
}

static struct pg_conn *pgb_pg(warren__store *s) {
    return pgs(s)->conn;
}

static int pgb_lost(const warren__store *s) {
    const pg_store *p = (const pg_store *)s;
    return p->conn != NULL && PQstatus(p->conn) != CONNECTION_OK;
}

const warren__store_ops warren__store_pg_ops = {
    .name = "postgresql",
    .size = sizeof(pg_store),
    .open = pgb_open,
    .close = pgb_close,
    .in_txn = pgb_in_txn,
    .begin = pgb_begin,
    .commit = pgb_commit,
    .rollback = pgb_rollback,
    .savepoint = pgb_savepoint,
    .savepoint_release = pgb_savepoint_release,
    .savepoint_rollback = pgb_savepoint_rollback,
    .insert = pgb_insert,
    .insert_many = pgb_insert_many,
    .read = pgb_read,
    .take = pgb_take,
    .revive = pgb_revive,
    .record = pgb_record,
    .renew = pgb_renew,
    .mark_crashed = pgb_mark_crashed,
    .prune = pgb_prune,
    .lookup = pgb_lookup,
    .delete_key = pgb_delete_key,
    .stats = pgb_stats,
    .each = pgb_each,
    .put = pgb_put,
    .lost = pgb_lost,
    .db = NULL,
    .pg = pgb_pg,
};

/*
 * ledger.c - the transactional-inbox example: a plugin that applies
 * payments {"account":"A","amount":123} to account balances kept in warren's
 * own store, through warren_ctx_db(ctx) on a SQLite store or
 * warren_ctx_pg(ctx) on a PostgreSQL one (store.url).
 *
 * Its writes share the savepoint of the message's "done" record, so a
 * balance changes exactly once per message id, across duplicates, retries
 * and killed workers. Load it with "plugin:build/examples/ledger.so:ledger".
 * LEDGER_FAIL_EVERY=N makes every Nth call return RETRY after writing, to
 * show that warren rolls those writes back. It uses only sqlite3's and
 * libpq's headers: the symbols come from the process that loads it.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <warren.h>

WARREN_PLUGIN_DECLARE();

int ledger_init(const char *arg, void **user, warren_ctx *ctx);
warren_result ledger(const warren_msg *msg, warren_ctx *ctx, void *user);
void ledger_fini(void *user);

#define BODY_MAX 4096
#define ACCOUNT_MAX 128

typedef struct {
    long fail_every; /* 0: never fail on purpose */
    long calls;
} ledger_state;

int ledger_init(const char *arg, void **user, warren_ctx *ctx) {
    (void)arg;
    ledger_state *s = calloc(1, sizeof *s);
    if (s == NULL) {
        warren_ctx_set_error(ctx, "ledger: out of memory");
        return -1;
    }
    const char *every = getenv("LEDGER_FAIL_EVERY");
    if (every != NULL && every[0] != '\0') {
        char *end;
        errno = 0;
        s->fail_every = strtol(every, &end, 10);
        if (errno != 0 || *end != '\0' || s->fail_every < 0) {
            warren_ctx_set_error(ctx,
                                 "ledger: LEDGER_FAIL_EVERY=%s is not a "
                                 "non-negative integer",
                                 every);
            free(s);
            return -1;
        }
    }
    *user = s;
    return 0;
}

void ledger_fini(void *user) {
    free(user);
}

/* Finds "key" followed by ':' in `s`; returns what follows the colon with
 * spaces skipped, or NULL. Crude on purpose: the example is about the
 * database, and plugins cannot count on the loader's JSON library. */
static const char *after_key(const char *s, const char *key) {
    size_t n = strlen(key);
    for (const char *p = strchr(s, '"'); p; p = strchr(p + 1, '"')) {
        if (strncmp(p + 1, key, n) == 0 && p[n + 1] == '"') {
            p += n + 2;
            p += strspn(p, " \t\r\n");
            if (*p != ':') {
                return NULL;
            }
            p++;
            return p + strspn(p, " \t\r\n");
        }
    }
    return NULL;
}

static int parse(const warren_msg *msg, char *account, long long *amount) {
    char body[BODY_MAX + 1];
    size_t len;
    const void *b = warren_msg_body(msg, &len);
    if (len > BODY_MAX || memchr(b, '\0', len) != NULL) {
        return -1;
    }
    memcpy(body, b, len);
    body[len] = '\0';
    const char *a = after_key(body, "account");
    if (a == NULL || *a != '"') {
        return -1;
    }
    size_t alen = strcspn(a + 1, "\"\\");
    if (alen == 0 || alen > ACCOUNT_MAX || a[1 + alen] != '"') {
        return -1;
    }
    memcpy(account, a + 1, alen);
    account[alen] = '\0';
    const char *m = after_key(body, "amount");
    if (m == NULL) {
        return -1;
    }
    char *end;
    errno = 0;
    *amount = strtoll(m, &end, 10);
    if (errno != 0 || end == m || strchr(",} \t\r\n", *end) == NULL) {
        return -1;
    }
    return 0;
}

/* Prepares `sql`, binds `n` texts to ?1..?n and, if given, an integer to
 * ?(n+1), steps once. Returns the sqlite result code (SQLITE_DONE on
 * success). */
static int run(sqlite3 *db, const char *sql, const char *const *texts, int n,
               const long long *num) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        return rc;
    }
    for (int i = 0; i < n; i++) {
        sqlite3_bind_text(st, i + 1, texts[i], -1, SQLITE_TRANSIENT);
    }
    if (num) {
        sqlite3_bind_int64(st, n + 1, *num);
    }
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? SQLITE_DONE : rc;
}

/* Runs `sql` with `n` text parameters $1..$n on PostgreSQL; 0 on success,
 * else -1 with the server's message in the context. */
static int run_pg(PGconn *pg, warren_ctx *ctx, const char *sql,
                  const char *const *texts, int n) {
    PGresult *r = PQexecParams(pg, sql, n, NULL, texts, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        warren_ctx_set_error(ctx, "ledger: postgresql: %s", PQerrorMessage(pg));
        return -1;
    }
    return 0;
}

/* The same three statements in PostgreSQL's words. A failed statement
 * aborts the message's transaction: warren then retries the message. */
static warren_result apply_pg(PGconn *pg, warren_ctx *ctx, const char *queue,
                              const char *id, const char *account,
                              long long amount) {
    char num[32];
    snprintf(num, sizeof num, "%lld", amount);
    static const char *const ddl[] = {
        "CREATE TABLE IF NOT EXISTS ledger_balances(account text PRIMARY "
        "KEY, balance bigint NOT NULL)",
        "CREATE TABLE IF NOT EXISTS ledger_log(queue text NOT NULL, id "
        "text NOT NULL, account text NOT NULL, amount bigint NOT NULL)",
    };
    for (size_t i = 0; i < sizeof ddl / sizeof ddl[0]; i++) {
        if (run_pg(pg, ctx, ddl[i], NULL, 0) != 0) {
            return WARREN_RETRY;
        }
    }
    const char *log_args[] = {queue ? queue : "", id, account, num};
    if (run_pg(pg, ctx,
               "INSERT INTO ledger_log(queue, id, account, amount) "
               "VALUES($1, $2, $3, $4)",
               log_args, 4) != 0 ||
        run_pg(pg, ctx,
               "INSERT INTO ledger_balances(account, balance) VALUES($1, $2) "
               "ON CONFLICT(account) DO UPDATE SET "
               "balance = ledger_balances.balance + excluded.balance",
               (const char *const[]){account, num}, 2) != 0) {
        return WARREN_RETRY;
    }
    return WARREN_ACK;
}

/* The three statements on SQLite: ACK, or RETRY with the reason set. */
static warren_result apply_sqlite(sqlite3 *db, warren_ctx *ctx,
                                  const char *queue, const char *id,
                                  const char *account, long long amount) {
    /* Created lazily: init has no database, and DDL in a savepoint that is
     * rolled back is rolled back too, so it is checked every time. */
    static const char *const ddl[] = {
        "CREATE TABLE IF NOT EXISTS ledger_balances(account TEXT PRIMARY "
        "KEY, balance INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS ledger_log(queue TEXT NOT NULL, id "
        "TEXT NOT NULL, account TEXT NOT NULL, amount INTEGER NOT NULL)",
    };
    for (size_t i = 0; i < sizeof ddl / sizeof ddl[0]; i++) {
        if (run(db, ddl[i], NULL, 0, NULL) != SQLITE_DONE) {
            goto sql_error;
        }
    }
    /* An append-only log of applications, with no uniqueness of its own:
     * exactly-once is warren's to provide, and a test can count it here. */
    const char *log_args[] = {queue ? queue : "", id, account};
    if (run(db,
            "INSERT INTO ledger_log(queue, id, account, amount) "
            "VALUES(?1, ?2, ?3, ?4)",
            log_args, 3, &amount) != SQLITE_DONE) {
        goto sql_error;
    }
    if (run(db,
            "INSERT INTO ledger_balances(account, balance) "
            "VALUES(?1, ?2) ON CONFLICT(account) DO UPDATE SET "
            "balance = balance + excluded.balance",
            (const char *const[]){account}, 1, &amount) != SQLITE_DONE) {
        goto sql_error;
    }
    return WARREN_ACK;

sql_error:
    warren_ctx_set_error(ctx, "ledger: sqlite: %s", sqlite3_errmsg(db));
    return WARREN_RETRY;
}

warren_result ledger(const warren_msg *msg, warren_ctx *ctx, void *user) {
    ledger_state *s = user;
    char account[ACCOUNT_MAX + 1];
    long long amount;
    const char *id = warren_msg_id(msg);
    const char *queue = warren_msg_queue(msg);

    s->calls++;
    if (parse(msg, account, &amount) != 0) {
        warren_ctx_set_error(ctx, "ledger: expected a body like "
                                  "{\"account\":\"A\",\"amount\":123}");
        return WARREN_DEAD;
    }
    /* The store's own connection, whichever backend it is. */
    PGconn *pg = id ? (PGconn *)warren_ctx_pg(ctx) : NULL;
    sqlite3 *db = pg ? NULL : warren_ctx_db(ctx);
    if ((pg == NULL && db == NULL) || id == NULL) {
        /* No store, or it is busy: the message cannot be applied exactly
         * once now. Retrying keeps it; max_attempts bounds the loop. */
        warren_ctx_set_error(ctx, "ledger: no store database (needs the "
                                  "store and a message id policy)");
        return WARREN_RETRY;
    }
    warren_result r = pg ? apply_pg(pg, ctx, queue, id, account, amount)
                         : apply_sqlite(db, ctx, queue, id, account, amount);
    if (r == WARREN_ACK && s->fail_every > 0 && s->calls % s->fail_every == 0) {
        warren_ctx_set_error(ctx,
                             "ledger: LEDGER_FAIL_EVERY=%ld: failing call %ld "
                             "after writing (warren rolls it back)",
                             s->fail_every, s->calls);
        return WARREN_RETRY;
    }
    return r;
}

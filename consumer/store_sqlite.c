/*
 * store_sqlite.c - the SQLite backend of the message store: one sqlite3
 * connection per process on a file shared by the workers of one host.
 *
 * This file is the only place warren talks to SQLite for its own records.
 * It promises that uniqueness is decided by the unique key (queue, id) in one
 * BEGIN IMMEDIATE transaction (never check-then-insert), that illegal state
 * changes are refused by triggers in the database itself, that the file and
 * its -wal/-shm are mode 0600, and that every error message names the file
 * and, where a person must act, the fix. The rules (which record state gives
 * which claim) are store.c's; this file keeps the records.
 */
#include "store_backend.h"

#include "log.h"
#include "warren.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* The schema version this build writes and understands. */
#define SCHEMA_VERSION 2
/* The -wal file is truncated back to this after a checkpoint, so a burst
 * does not leave a large file behind for ever. */
#define WAL_SIZE_LIMIT (16 * 1024 * 1024)
/* Checkpoint every this many WAL pages (16 MiB) instead of SQLite's 1000:
 * a page rewritten by several batches is copied into the database once. */
#define WAL_AUTOCHECKPOINT 4000
/* Page cache in KiB. Random ids touch a random page per claim; with the
 * default 2 MiB the lookups went to pread and cost ~15% of throughput. */
#define CACHE_KIB 8192

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SAVEPOINT,
    ST_SP_RELEASE,
    ST_SP_ROLLBACK,
    ST_INSERT,
    ST_SELECT,
    ST_TAKE,
    ST_DONE,
    ST_RETRYING,
    ST_DEAD,
    ST_RELEASE,
    ST_PRUNE,
    ST_FORGET_SELECT,
    ST_FORGET_DELETE,
    ST_STATS,
    ST_REVIVE,
    ST_RENEW,
    ST_MARK_CRASHED,
    ST_COUNT
};

/* Prepared once at open and reused: the hot path never parses SQL. */
static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SAVEPOINT] = "SAVEPOINT warren_h",
    [ST_SP_RELEASE] = "RELEASE warren_h",
    [ST_SP_ROLLBACK] = "ROLLBACK TO warren_h",
    [ST_INSERT] =
        "INSERT INTO messages(queue, id, state, attempts, deliveries, "
        "owner_host, owner_pid, owner_token, lease_until, first_failed_at, "
        "last_error, created_at, updated_at, replays) "
        "VALUES(?1, ?2, 'processing', 1, 1, ?3, ?4, ?5, ?6, NULL, NULL, ?7, "
        "?7, ?8) ON CONFLICT DO NOTHING",
    [ST_SELECT] = "SELECT state, attempts, deliveries, owner_host, owner_pid, "
                  "owner_token, lease_until, first_failed_at, last_error, "
                  "replays, crashed_reason FROM messages "
                  "WHERE queue = ?1 AND id = ?2",
    [ST_TAKE] = "UPDATE messages SET state = 'processing', attempts = ?3, "
                "deliveries = ?4, owner_host = ?5, owner_pid = ?6, "
                "owner_token = ?7, lease_until = ?8, updated_at = ?9, "
                "replays = ?10, crashed_reason = NULL "
                "WHERE queue = ?1 AND id = ?2",
    [ST_DONE] = "UPDATE messages SET state = 'done', lease_until = 0, "
                "updated_at = ?4 "
                "WHERE queue = ?1 AND id = ?2 AND owner_token = ?3",
    [ST_RETRYING] =
        "UPDATE messages SET state = 'retrying', lease_until = 0, "
        "deliveries = 0, first_failed_at = COALESCE(first_failed_at, ?4), "
        "last_error = COALESCE(?5, last_error), updated_at = ?4 "
        "WHERE queue = ?1 AND id = ?2 AND owner_token = ?3",
    [ST_DEAD] = "UPDATE messages SET state = 'dead', lease_until = 0, "
                "first_failed_at = COALESCE(first_failed_at, ?4), "
                "last_error = COALESCE(?5, last_error), updated_at = ?4 "
                "WHERE queue = ?1 AND id = ?2 AND owner_token = ?3",
    /* Only a claim still in processing can be given back: releasing a row
     * that already has an outcome must not turn it into processing. */
    [ST_RELEASE] = "UPDATE messages SET state = 'processing', "
                   "deliveries = max(deliveries - 1, 0), lease_until = 0, "
                   "updated_at = ?4 "
                   "WHERE queue = ?1 AND id = ?2 AND owner_token = ?3 "
                   "AND state = 'processing'",
    /* Delete by rowid through a LIMITed subquery that walks the retention
     * index, so one call never holds the write lock for long. */
    [ST_PRUNE] = "DELETE FROM messages WHERE rowid IN ("
                 "SELECT rowid FROM messages "
                 "WHERE state IN ('done', 'dead') AND updated_at < ?1 "
                 "LIMIT ?2)",
    [ST_FORGET_SELECT] = "SELECT state, lease_until FROM messages "
                         "WHERE queue = ?1 AND id = ?2",
    [ST_FORGET_DELETE] = "DELETE FROM messages WHERE queue = ?1 AND id = ?2",
    [ST_STATS] = "SELECT queue, state, count(*) FROM messages "
                 "GROUP BY queue, state ORDER BY queue, state",
    /* A dead id whose replayed copy arrives: a fresh attempt chain. */
    [ST_REVIVE] = "UPDATE messages SET state = 'processing', attempts = 1, "
                  "deliveries = 1, owner_host = ?3, owner_pid = ?4, "
                  "owner_token = ?5, lease_until = ?6, first_failed_at = NULL, "
                  "last_error = NULL, updated_at = ?7, replays = ?8 "
                  "WHERE queue = ?1 AND id = ?2 AND state = 'dead' "
                  "AND replays < ?8",
    [ST_RENEW] = "UPDATE messages SET lease_until = ?4 "
                 "WHERE queue = ?1 AND id = ?2 AND owner_token = ?3 "
                 "AND state = 'processing'",
    [ST_MARK_CRASHED] = "UPDATE messages SET crashed_reason = ?5 "
                        "WHERE queue = ?1 AND id = ?2 AND owner_host = ?3 "
                        "AND owner_pid = ?4 AND state = 'processing'",
};

/* Version 1. A rowid table with UNIQUE(queue, id) rather than a WITHOUT
 * ROWID table keyed on (queue, id): rows sit in claim order, so recording
 * the outcomes of a batch rewrites a few adjacent pages instead of one
 * random page per message; only the small unique index takes the random
 * writes. Measured 1.6x faster on 100,000 random ids (docs/store.md).
 * Uniqueness is still decided by that key, inside the write lock.
 * The triggers make the state machine a property of the file,
 * so a handler writing through warren_ctx_db() or an operator with the
 * sqlite3 shell cannot move a record backwards either. */
static const char schema_v1[] =
    "CREATE TABLE messages("
    " queue TEXT NOT NULL,"
    " id TEXT NOT NULL,"
    " state TEXT NOT NULL"
    "  CHECK(state IN ('processing', 'done', 'retrying', 'dead')),"
    " attempts INT NOT NULL,"
    " deliveries INT NOT NULL,"
    " owner_host TEXT,"
    " owner_pid INT,"
    " owner_token INT,"
    " lease_until INT NOT NULL DEFAULT 0,"
    " first_failed_at INT,"
    " last_error TEXT,"
    " created_at INT NOT NULL,"
    " updated_at INT NOT NULL,"
    " UNIQUE(queue, id));"
    "CREATE INDEX messages_retention ON messages(state, updated_at);"
    "CREATE TRIGGER messages_from_done BEFORE UPDATE ON messages"
    " WHEN OLD.state = 'done' BEGIN"
    " SELECT RAISE(ABORT, 'illegal transition from done: done records are"
    " only deleted (forget, replay, retention)'); END;"
    "CREATE TRIGGER messages_from_dead BEFORE UPDATE ON messages"
    " WHEN OLD.state = 'dead' BEGIN"
    " SELECT RAISE(ABORT, 'illegal transition from dead: dead records are"
    " only deleted (forget, replay, retention)'); END;"
    "CREATE TRIGGER messages_from_retrying BEFORE UPDATE ON messages"
    " WHEN OLD.state = 'retrying' AND NEW.state != 'processing' BEGIN"
    " SELECT RAISE(ABORT, 'illegal transition from retrying: only to"
    " processing'); END;"
    "PRAGMA user_version = 1;";

/* Version 2: the replay generation of each record (issue 18). `replays` is
 * the x-warren-replays of the delivery that claimed the record last, so a
 * `dead` record holds the generation its DLQ copy carries; `warren dlq
 * replay` publishes generation + 1, and that copy may move the record from
 * dead back to processing (a fresh attempt chain), whatever store the
 * replay itself looked at. Nothing else may: the trigger still refuses any
 * other way out of dead, and every way out of done.
 * `crashed_reason` (issue 14): set by `warren run` on a processing record
 * whose owner died while running its handler; the claim that takes the
 * record over reports it (the attempt is then spent) and clears it. */
static const char schema_v2[] =
    "ALTER TABLE messages ADD COLUMN replays INT NOT NULL DEFAULT 0;"
    "ALTER TABLE messages ADD COLUMN crashed_reason TEXT;"
    "DROP TRIGGER messages_from_dead;"
    "CREATE TRIGGER messages_from_dead BEFORE UPDATE ON messages"
    " WHEN OLD.state = 'dead' AND NOT (NEW.state = 'processing' AND"
    " NEW.replays > OLD.replays) BEGIN"
    " SELECT RAISE(ABORT, 'illegal transition from dead: dead records are"
    " only deleted (forget, replay, retention) or re-run by a replayed copy"
    " of a later generation'); END;"
    "PRAGMA user_version = 2;";

typedef struct {
    warren__store base; /* first: a warren__store * is one of these */
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
} sqlite_store;

static sqlite_store *lite(warren__store *s) {
    return (sqlite_store *)s;
}

#define set_err warren__store_set_err
#define copy_text warren__store_copy_text

static const char fix_readonly[] =
    "make the file and its directory writable by this user (SQLite creates "
    "FILE-wal and FILE-shm beside it)";

/* Translates a SQLite result code at the seam, keeping SQLite's text. */
static int sql_fail(warren__store *s, int rc, const char *what) {
    sqlite3 *db = lite(s)->db;
    const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return set_err(s, WARREN_ERR_STORE_BUSY,
                       "database locked by another process for longer than "
                       "busy_timeout_ms %u (%s: %s)",
                       (unsigned)s->busy_timeout_ms, what, msg);
    case SQLITE_FULL:
        return set_err(s, WARREN_ERR_STORE_FULL,
                       "disk or max_page_count full: free space; nothing "
                       "unrecorded was acked (%s: %s)",
                       what, msg);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return set_err(s, WARREN_ERR_STORE_CORRUPT,
                       "not a SQLite database or corrupt (%s: %s): %s", what,
                       msg, warren__store_fix_corrupt);
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
        return set_err(s, WARREN_ERR_STORE, "not writable (%s: %s): %s", what,
                       msg, fix_readonly);
    case SQLITE_NOMEM:
        return set_err(s, WARREN_ERR_NOMEM, "%s: %s", what, msg);
    default:
        return set_err(s, WARREN_ERR_STORE, "%s: %s", what, msg);
    }
}

/* Runs a prepared statement that returns no rows, then resets it. */
static int run(warren__store *s, int which, const char *what) {
    sqlite3_stmt *st = lite(s)->st[which];
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        return sql_fail(s, rc, what);
    }
    return 0;
}

/* Rows changed by the statement that ran last. */
static int changes(warren__store *s) {
    return sqlite3_changes(lite(s)->db);
}

/* Creates the file ourselves so its mode is exactly 0600 whatever the
 * umask; SQLite then gives -wal and -shm the database file's mode. */
static int create_file(warren__store *s) {
    int must_exist = (s->flags & WARREN__STORE_F_MUST_EXIST) != 0;
    int fd = must_exist
                 ? -1
                 : open(s->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
        int rc = fchmod(fd, 0600);
        int e = errno;
        close(fd);
        if (rc != 0) {
            return set_err(s, WARREN_ERR_STORE, "chmod 0600: %s", strerror(e));
        }
        return 0;
    }
    if (!must_exist && errno != EEXIST) {
        int e = errno;
        if (e == EACCES || e == EROFS || e == EPERM) {
            return set_err(s, WARREN_ERR_STORE, "cannot create: %s: %s",
                           strerror(e), fix_readonly);
        }
        return set_err(s, WARREN_ERR_STORE,
                       "cannot create: %s (does its directory exist?)",
                       strerror(e));
    }
    fd = open(s->path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (must_exist && e == ENOENT) {
            char cwd[PATH_MAX];
            if (s->path[0] == '/' || getcwd(cwd, sizeof cwd) == NULL) {
                return set_err(s, WARREN_ERR_NOT_FOUND,
                               "store does not exist (nothing created): "
                               "store.path must name the file the workers "
                               "use, which `warren run` creates");
            }
            return set_err(s, WARREN_ERR_NOT_FOUND,
                           "store does not exist in %s (nothing created): "
                           "store.path must name the file the workers use, "
                           "which `warren run` creates; a relative path is "
                           "resolved from the current directory, so run this "
                           "where the workers run or make store.path absolute",
                           cwd);
        }
        if (e == EACCES || e == EROFS || e == EPERM || e == ETXTBSY) {
            return set_err(s, WARREN_ERR_STORE, "read-only: %s: %s",
                           strerror(e), fix_readonly);
        }
        return set_err(s, WARREN_ERR_STORE, "cannot open: %s", strerror(e));
    }
    struct stat sb;
    int rc = fstat(fd, &sb);
    close(fd);
    if (rc != 0 || !S_ISREG(sb.st_mode)) {
        return set_err(s, WARREN_ERR_STORE_CORRUPT, "not a regular file: %s",
                       warren__store_fix_corrupt);
    }
    if (sb.st_mode & 077) {
        warren__log(WARREN_LOG_WARN, NULL,
                    "%s: store file is mode %03o, readable by others; "
                    "chmod 600 it",
                    s->path, (unsigned)(sb.st_mode & 0777));
    }
    return 0;
}

/* Runs `sql` and returns its first column as text into `out`. */
static int query_text(warren__store *s, const char *sql, char *out,
                      size_t outlen) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(lite(s)->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(st);
        return sql_fail(s, rc, sql);
    }
    out[0] = '\0';
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        copy_text(out, outlen, (const char *)sqlite3_column_text(st, 0));
        rc = SQLITE_DONE;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        return sql_fail(s, rc, sql);
    }
    return 0;
}

static int exec_sql(warren__store *s, const char *sql, const char *what) {
    int rc = sqlite3_exec(lite(s)->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        return sql_fail(s, rc, what);
    }
    return 0;
}

/* Migrates forward inside one write transaction, so two processes opening
 * a new file at once cannot both create the schema. */
static int migrate(warren__store *s) {
    char buf[32];
    int rc = exec_sql(s, "BEGIN IMMEDIATE", "begin migration");
    if (rc != 0) {
        return rc;
    }
    rc = query_text(s, "PRAGMA user_version", buf, sizeof buf);
    if (rc == 0) {
        long v = strtol(buf, NULL, 10);
        if (v > SCHEMA_VERSION) {
            rc = set_err(s, WARREN_ERR_STORE_CORRUPT,
                         "schema version %ld is newer than this warren "
                         "supports (%d); upgrade warren",
                         v, SCHEMA_VERSION);
        } else if (v < 1) {
            rc = exec_sql(s, schema_v1, "create schema v1");
        }
        if (rc == 0 && v < 2) {
            rc = exec_sql(s, schema_v2, "migrate schema to v2");
        }
        /* Future versions: `if (v < 3) { ALTER ...; user_version = 3 }`. */
    }
    if (rc == 0) {
        rc = exec_sql(s, "COMMIT", "commit migration");
    }
    if (rc != 0 && !sqlite3_get_autocommit(lite(s)->db)) {
        sqlite3_exec(lite(s)->db, "ROLLBACK", NULL, NULL, NULL);
    }
    return rc;
}

static int setup(warren__store *s, const warren__store_opts *opts) {
    char buf[256];
    int rc = sqlite3_open_v2(s->path, &lite(s)->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        return sql_fail(s, rc, "open");
    }
    sqlite3_extended_result_codes(lite(s)->db, 1);
    if (sqlite3_db_readonly(lite(s)->db, "main") == 1) {
        return set_err(s, WARREN_ERR_STORE, "opened read-only: %s",
                       fix_readonly);
    }
    sqlite3_busy_timeout(
        lite(s)->db,
        (int)(s->busy_timeout_ms > INT_MAX ? INT_MAX : s->busy_timeout_ms));
    /* Switching a new file to WAL takes an exclusive lock, and SQLite can
     * answer BUSY here without consulting the busy handler when several
     * workers open a fresh store at once: retry within the busy timeout. */
    for (uint32_t waited = 0;; waited += 10) {
        rc = query_text(s, "PRAGMA journal_mode=WAL", buf, sizeof buf);
        if (rc != WARREN_ERR_STORE_BUSY || waited >= s->busy_timeout_ms) {
            break;
        }
        sqlite3_sleep(10);
    }
    if (rc != 0) {
        return rc;
    }
    if (strcmp(buf, "wal") != 0) {
        return set_err(s, WARREN_ERR_STORE,
                       "cannot switch to WAL journal mode (got \"%s\"): %s",
                       buf, fix_readonly);
    }
    rc = exec_sql(s,
                  opts->synchronous == WARREN__SYNC_NORMAL
                      ? "PRAGMA synchronous=NORMAL"
                      : "PRAGMA synchronous=FULL",
                  "set synchronous");
    if (rc != 0) {
        return rc;
    }
    snprintf(buf, sizeof buf,
             "PRAGMA journal_size_limit=%d; PRAGMA wal_autocheckpoint=%d; "
             "PRAGMA cache_size=-%d",
             WAL_SIZE_LIMIT, WAL_AUTOCHECKPOINT, CACHE_KIB);
    rc = exec_sql(s, buf, "set journal_size_limit");
    if (rc != 0) {
        return rc;
    }
    rc = query_text(s, "PRAGMA quick_check", buf, sizeof buf);
    if (rc != 0) {
        return rc;
    }
    if (strcmp(buf, "ok") != 0) {
        return set_err(s, WARREN_ERR_STORE_CORRUPT, "quick_check: %s: %s", buf,
                       warren__store_fix_corrupt);
    }
    rc = migrate(s);
    if (rc != 0) {
        return rc;
    }
    for (int i = 0; i < ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(lite(s)->db, stmt_sql[i], -1,
                                SQLITE_PREPARE_PERSISTENT, &lite(s)->st[i],
                                NULL);
        if (rc != SQLITE_OK) {
            return sql_fail(s, rc, "prepare");
        }
    }
    return 0;
}

/* SQLite's memory statistics take a global mutex around every allocation
 * (~7% of a worker's CPU in `perf record`, mutex lock/unlock): warren never
 * reads them. This is process-wide and only possible before SQLite is first
 * initialised; if something else initialised it, the call is refused
 * (SQLITE_MISUSE) and nothing changes. */
static void tune_sqlite_once(void) {
    static int done;
    if (!done) {
        done = 1;
        (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    }
}

static int lite_open(warren__store *s, const warren__store_opts *opts,
                     const char *where) {
    (void)where; /* s->path is the file */
    tune_sqlite_once();
    int rc = create_file(s);
    if (rc == 0) {
        rc = setup(s, opts);
    }
    return rc;
}

static void lite_close(warren__store *s) {
    sqlite_store *l = lite(s);
    if (l->db && !sqlite3_get_autocommit(l->db)) {
        sqlite3_exec(l->db, "ROLLBACK", NULL, NULL, NULL);
    }
    for (int i = 0; i < ST_COUNT; i++) {
        sqlite3_finalize(l->st[i]);
    }
    sqlite3_close(l->db);
}

static int lite_in_txn(const warren__store *s) {
    const sqlite_store *l = (const sqlite_store *)s;
    return l->db && !sqlite3_get_autocommit(l->db);
}

static int lite_begin(warren__store *s, const char *what) {
    return run(s, ST_BEGIN, what);
}

static int lite_commit(warren__store *s, const char *what) {
    return run(s, ST_COMMIT, what);
}

static void lite_rollback(warren__store *s) {
    /* Some errors (SQLITE_FULL, SQLITE_NOMEM) roll back by themselves; the
     * caller checked a transaction is open, and the fallback keeps this
     * from failing on an already closed one. */
    if (run(s, ST_ROLLBACK, "rollback") != 0) {
        sqlite3_exec(lite(s)->db, "ROLLBACK", NULL, NULL, NULL);
    }
}

static int lite_savepoint(warren__store *s) {
    return run(s, ST_SAVEPOINT, "savepoint");
}

static int lite_savepoint_release(warren__store *s) {
    return run(s, ST_SP_RELEASE, "release savepoint");
}

static int lite_savepoint_rollback(warren__store *s) {
    return run(s, ST_SP_ROLLBACK, "rollback to savepoint");
}

static void bind_key(sqlite3_stmt *st, const char *queue, const char *id) {
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
}

/* Binds what ST_INSERT and ST_REVIVE share: the key, us as owner with a
 * fresh lease, the time and the delivery's replay generation. */
static void bind_new_claim(warren__store *s, sqlite3_stmt *st,
                           const warren__claim *c, int64_t now_ms) {
    bind_key(st, c->queue, c->id);
    sqlite3_bind_text(st, 3, s->host, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, s->pid);
    sqlite3_bind_int64(st, 5, s->token);
    sqlite3_bind_int64(st, 6, now_ms + (int64_t)s->lease_s * 1000);
    sqlite3_bind_int64(st, 7, now_ms);
    sqlite3_bind_int64(st, 8, c->replays);
}

static int lite_insert(warren__store *s, const warren__claim *c, int64_t now_ms,
                       int *inserted) {
    bind_new_claim(s, lite(s)->st[ST_INSERT], c, now_ms);
    int rc = run(s, ST_INSERT, "claim");
    *inserted = rc == 0 && changes(s) == 1;
    return rc;
}

static int lite_read(warren__store *s, const warren__claim *c, int64_t now_ms,
                     warren__store_row *row, int *found) {
    sqlite3_stmt *st = lite(s)->st[ST_SELECT];
    bind_key(st, c->queue, c->id);
    int rc = sqlite3_step(st);
    *found = rc == SQLITE_ROW;
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        return rc == SQLITE_DONE ? 0 : sql_fail(s, rc, "claim");
    }
    copy_text(row->state, sizeof row->state,
              (const char *)sqlite3_column_text(st, 0));
    row->attempts = sqlite3_column_int(st, 1);
    row->deliveries = sqlite3_column_int(st, 2);
    copy_text(row->owner_host, sizeof row->owner_host,
              (const char *)sqlite3_column_text(st, 3));
    row->owner_pid = sqlite3_column_int(st, 4);
    row->owner_token = sqlite3_column_int64(st, 5);
    row->lease_until = sqlite3_column_int64(st, 6);
    row->first_failed_at = sqlite3_column_int64(st, 7);
    copy_text(row->last_error, sizeof row->last_error,
              (const char *)sqlite3_column_text(st, 8));
    row->replays = sqlite3_column_int64(st, 9);
    copy_text(row->crashed_reason, sizeof row->crashed_reason,
              (const char *)sqlite3_column_text(st, 10));
    row->now_ms = now_ms;
    sqlite3_reset(st);
    return 0;
}

static int lite_take(warren__store *s, const warren__claim *c, int attempts,
                     int deliveries, int64_t now_ms) {
    sqlite3_stmt *st = lite(s)->st[ST_TAKE];
    bind_key(st, c->queue, c->id);
    sqlite3_bind_int(st, 3, attempts);
    sqlite3_bind_int(st, 4, deliveries);
    sqlite3_bind_text(st, 5, s->host, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, s->pid);
    sqlite3_bind_int64(st, 7, s->token);
    sqlite3_bind_int64(st, 8, now_ms + (int64_t)s->lease_s * 1000);
    sqlite3_bind_int64(st, 9, now_ms);
    sqlite3_bind_int64(st, 10, c->replays);
    return run(s, ST_TAKE, "claim");
}

static int lite_revive(warren__store *s, const warren__claim *c,
                       int64_t now_ms) {
    bind_new_claim(s, lite(s)->st[ST_REVIVE], c, now_ms);
    return run(s, ST_REVIVE, "claim a replayed dead id");
}

static int lite_record(warren__store *s, const char *queue, const char *id,
                       warren__outcome_kind kind, const char *error,
                       size_t error_len, int64_t now_ms, int *changed) {
    int which = kind == WARREN__OUT_DONE       ? ST_DONE
                : kind == WARREN__OUT_RETRYING ? ST_RETRYING
                : kind == WARREN__OUT_DEAD     ? ST_DEAD
                                               : ST_RELEASE;
    sqlite3_stmt *st = lite(s)->st[which];
    bind_key(st, queue, id);
    sqlite3_bind_int64(st, 3, s->token);
    sqlite3_bind_int64(st, 4, now_ms);
    if (which == ST_RETRYING || which == ST_DEAD) {
        if (error) {
            sqlite3_bind_text(st, 5, error, (int)error_len, SQLITE_STATIC);
        } else {
            sqlite3_bind_null(st, 5);
        }
    }
    int rc = run(s, which, "record outcome");
    *changed = rc == 0 ? changes(s) : 0;
    return rc;
}

static int lite_renew(warren__store *s, const warren__claim *c, int64_t now_ms,
                      int *changed) {
    sqlite3_stmt *st = lite(s)->st[ST_RENEW];
    bind_key(st, c->queue, c->id);
    sqlite3_bind_int64(st, 3, s->token);
    sqlite3_bind_int64(st, 4, now_ms + (int64_t)s->lease_s * 1000);
    int rc = run(s, ST_RENEW, "renew lease");
    *changed = rc == 0 ? changes(s) : 0;
    return rc;
}

static int lite_mark_crashed(warren__store *s, const char *queue,
                             const char *id, int owner_pid, const char *reason,
                             int *changed) {
    sqlite3_stmt *st = lite(s)->st[ST_MARK_CRASHED];
    bind_key(st, queue, id);
    sqlite3_bind_text(st, 3, s->host, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, owner_pid);
    sqlite3_bind_text(st, 5, reason, -1, SQLITE_STATIC);
    int rc = run(s, ST_MARK_CRASHED, "mark a crashed claim");
    *changed = rc == 0 ? changes(s) : 0;
    return rc;
}

static int lite_prune(warren__store *s, int64_t before_ms, int limit,
                      int *deleted) {
    sqlite3_stmt *st = lite(s)->st[ST_PRUNE];
    sqlite3_bind_int64(st, 1, before_ms);
    sqlite3_bind_int(st, 2, limit);
    int rc = run(s, ST_PRUNE, "prune");
    *deleted = rc == 0 ? changes(s) : 0;
    return rc;
}

static int lite_lookup(warren__store *s, const char *queue, const char *id,
                       const char *what, char state[16], int64_t *lease_until,
                       int64_t *now_ms, int *found) {
    (void)now_ms; /* the caller's clock judges the lease */
    sqlite3_stmt *st = lite(s)->st[ST_FORGET_SELECT];
    bind_key(st, queue, id);
    int step = sqlite3_step(st);
    *found = step == SQLITE_ROW;
    if (step == SQLITE_ROW) {
        copy_text(state, 16, (const char *)sqlite3_column_text(st, 0));
        *lease_until = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    if (step != SQLITE_ROW && step != SQLITE_DONE) {
        return sql_fail(s, step, what);
    }
    return 0;
}

static int lite_delete_key(warren__store *s, const char *queue,
                           const char *id) {
    bind_key(lite(s)->st[ST_FORGET_DELETE], queue, id);
    return run(s, ST_FORGET_DELETE, "forget");
}

static int lite_stats(warren__store *s,
                      void (*fn)(const char *queue, const char *state,
                                 int64_t rows, void *user),
                      void *user) {
    sqlite3_stmt *st = lite(s)->st[ST_STATS];
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        fn((const char *)sqlite3_column_text(st, 0),
           (const char *)sqlite3_column_text(st, 1),
           sqlite3_column_int64(st, 2), user);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        return sql_fail(s, rc, "stats");
    }
    return 0;
}

/* The columns of a whole record, in warren__store_entry's order. */
#define RECORD_COLUMNS                                                         \
    "queue, id, state, attempts, deliveries, owner_host, owner_pid, "          \
    "owner_token, lease_until, first_failed_at, last_error, created_at, "      \
    "updated_at, replays, crashed_reason"

static int lite_each(warren__store *s,
                     int (*fn)(const warren__store_entry *r, void *user),
                     void *user) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        lite(s)->db, "SELECT " RECORD_COLUMNS " FROM messages ORDER BY rowid",
        -1, &st, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(st);
        return sql_fail(s, rc, "export");
    }
    int stop = 0;
    while (stop == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        warren__store_entry r = {
            .queue = (const char *)sqlite3_column_text(st, 0),
            .id = (const char *)sqlite3_column_text(st, 1),
            .state = (const char *)sqlite3_column_text(st, 2),
            .attempts = sqlite3_column_int(st, 3),
            .deliveries = sqlite3_column_int(st, 4),
            .owner_host = (const char *)sqlite3_column_text(st, 5),
            .owner_pid = sqlite3_column_int(st, 6),
            .owner_token = sqlite3_column_int64(st, 7),
            .lease_until = sqlite3_column_int64(st, 8),
            .first_failed_at = sqlite3_column_int64(st, 9),
            .last_error = (const char *)sqlite3_column_text(st, 10),
            .created_at = sqlite3_column_int64(st, 11),
            .updated_at = sqlite3_column_int64(st, 12),
            .replays = sqlite3_column_int64(st, 13),
            .crashed_reason = (const char *)sqlite3_column_text(st, 14),
        };
        stop = fn(&r, user);
    }
    sqlite3_finalize(st);
    if (stop != 0) {
        return stop;
    }
    if (rc != SQLITE_DONE) {
        return sql_fail(s, rc, "export");
    }
    return 0;
}

static void bind_opt_text(sqlite3_stmt *st, int i, const char *t) {
    if (t) {
        sqlite3_bind_text(st, i, t, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, i);
    }
}

static void bind_opt_int(sqlite3_stmt *st, int i, int64_t v) {
    if (v != 0) {
        sqlite3_bind_int64(st, i, v);
    } else {
        sqlite3_bind_null(st, i);
    }
}

static int lite_put(warren__store *s, const warren__store_entry *r,
                    int *inserted) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        lite(s)->db,
        "INSERT INTO messages(" RECORD_COLUMNS ") VALUES(?1, ?2, ?3, ?4, ?5, "
        "?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) ON CONFLICT DO NOTHING",
        -1, &st, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(st);
        return sql_fail(s, rc, "import");
    }
    bind_key(st, r->queue, r->id);
    sqlite3_bind_text(st, 3, r->state, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, r->attempts);
    sqlite3_bind_int(st, 5, r->deliveries);
    bind_opt_text(st, 6, r->owner_host);
    bind_opt_int(st, 7, r->owner_pid);
    bind_opt_int(st, 8, r->owner_token);
    sqlite3_bind_int64(st, 9, r->lease_until);
    bind_opt_int(st, 10, r->first_failed_at);
    bind_opt_text(st, 11, r->last_error);
    sqlite3_bind_int64(st, 12, r->created_at);
    sqlite3_bind_int64(st, 13, r->updated_at);
    sqlite3_bind_int64(st, 14, r->replays);
    bind_opt_text(st, 15, r->crashed_reason);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        return sql_fail(s, rc, "import");
    }
    *inserted = changes(s) == 1;
    return 0;
}

static struct sqlite3 *lite_db(warren__store *s) {
    return lite(s)->db;
}

const warren__store_ops warren__store_sqlite_ops = {
    .name = "sqlite",
    .size = sizeof(sqlite_store),
    .open = lite_open,
    .close = lite_close,
    .in_txn = lite_in_txn,
    .begin = lite_begin,
    .commit = lite_commit,
    .rollback = lite_rollback,
    .savepoint = lite_savepoint,
    .savepoint_release = lite_savepoint_release,
    .savepoint_rollback = lite_savepoint_rollback,
    .insert = lite_insert,
    .read = lite_read,
    .take = lite_take,
    .revive = lite_revive,
    .record = lite_record,
    .renew = lite_renew,
    .mark_crashed = lite_mark_crashed,
    .prune = lite_prune,
    .lookup = lite_lookup,
    .delete_key = lite_delete_key,
    .stats = lite_stats,
    .each = lite_each,
    .put = lite_put,
    .db = lite_db,
    .pg = NULL,
};

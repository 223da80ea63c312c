/*
 * store.c - the SQLite message store: dedup, the per-message state machine,
 * authoritative attempt counts, leases and poison detection.
 *
 * This file is the only place warren talks to SQLite for its own records.
 * It promises that uniqueness is decided by the unique key (queue, id) in one
 * BEGIN IMMEDIATE transaction (never check-then-insert), that illegal state
 * changes are refused by triggers in the database itself, that the file and
 * its -wal/-shm are mode 0600, and that every error message names the file
 * and, where a person must act, the fix.
 */
#include "store.h"

#include "log.h"
#include "warren.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* The schema version this build writes and understands. */
#define SCHEMA_VERSION 2
/* Bound on last_error as stored; the handler's reason is at most this. */
#define STORED_ERROR_MAX 1024
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

struct warren__store {
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
    char path[PATH_MAX];
    char host[256];
    int pid;
    int64_t token; /* random per open: a reused pid is not "us" */
    uint32_t lease_s;
    uint32_t busy_timeout_ms;
    int (*pid_alive)(int pid, void *user);
    void *pid_alive_user;
    unsigned flags;
    char err[PATH_MAX + 512];
};

static const char fix_corrupt[] =
    "move it aside; the store will be recreated; ids already handled may "
    "run again";
static const char fix_readonly[] =
    "make the file and its directory writable by this user (SQLite creates "
    "FILE-wal and FILE-shm beside it)";

static int set_err(warren__store *s, int code, const char *fmt, ...)
    WARREN_PRINTF(3, 4);

static int set_err(warren__store *s, int code, const char *fmt, ...) {
    /* The path first, so every message names the file even if truncated. */
    size_t n = strlen(s->path);
    if (n > sizeof s->err - 3) {
        n = sizeof s->err - 3;
    }
    memcpy(s->err, s->path, n);
    s->err[n++] = ':';
    s->err[n++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err + n, sizeof s->err - n, fmt, ap);
    va_end(ap);
    return code;
}

/* Translates a SQLite result code at the seam, keeping SQLite's text. */
static int sql_fail(warren__store *s, int rc, const char *what) {
    const char *msg = s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
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
                       msg, fix_corrupt);
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
    sqlite3_stmt *st = s->st[which];
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        return sql_fail(s, rc, what);
    }
    return 0;
}

static int default_pid_alive(int pid, void *user) {
    (void)user;
    if (pid <= 0) {
        /* Unknown owner: assume alive and let the lease decide. */
        return 1;
    }
    if (kill(pid, 0) == 0) {
        return 1;
    }
    return errno == EPERM;
}

/* Copies at most `cap - 1` bytes, never cutting a UTF-8 sequence. */
static size_t utf8_prefix(const char *src, size_t len, size_t cap) {
    if (len < cap) {
        return len;
    }
    len = cap - 1;
    while (len > 0 && ((unsigned char)src[len] & 0xC0) == 0x80) {
        len--;
    }
    return len;
}

static void copy_text(char *dst, size_t cap, const unsigned char *src) {
    if (src == NULL) {
        dst[0] = '\0';
        return;
    }
    size_t n = utf8_prefix((const char *)src, strlen((const char *)src), cap);
    memcpy(dst, src, n);
    dst[n] = '\0';
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
                       fix_corrupt);
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
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(st);
        return sql_fail(s, rc, sql);
    }
    out[0] = '\0';
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        copy_text(out, outlen, sqlite3_column_text(st, 0));
        rc = SQLITE_DONE;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        return sql_fail(s, rc, sql);
    }
    return 0;
}

static int exec_sql(warren__store *s, const char *sql, const char *what) {
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
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
    if (rc != 0 && !sqlite3_get_autocommit(s->db)) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    }
    return rc;
}

static int setup(warren__store *s, const warren__store_opts *opts) {
    char buf[256];
    int rc = sqlite3_open_v2(s->path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        return sql_fail(s, rc, "open");
    }
    sqlite3_extended_result_codes(s->db, 1);
    if (sqlite3_db_readonly(s->db, "main") == 1) {
        return set_err(s, WARREN_ERR_STORE, "opened read-only: %s",
                       fix_readonly);
    }
    sqlite3_busy_timeout(
        s->db,
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
                       fix_corrupt);
    }
    rc = migrate(s);
    if (rc != 0) {
        return rc;
    }
    for (int i = 0; i < ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1,
                                SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (rc != SQLITE_OK) {
            return sql_fail(s, rc, "prepare");
        }
    }
    return 0;
}

/* Appends this boot's id to the owner host: on this host a claim's owner
 * is judged by whether its pid is alive, and after a reboot the same pid
 * may be alive again as some other process. Claims written before a
 * reboot then look like another host's, and their leases decide. */
static void append_boot_id(char *host, size_t cap) {
    char boot[64] = "";
    FILE *fp = fopen("/proc/sys/kernel/random/boot_id", "re");
    if (fp == NULL) {
        return;
    }
    if (fgets(boot, sizeof boot, fp) != NULL) {
        boot[strcspn(boot, "\n")] = '\0';
        size_t n = strlen(host);
        if (boot[0] && n + strlen(boot) + 7 < cap) {
            snprintf(host + n, cap - n, " boot=%s", boot);
        }
    }
    fclose(fp);
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

int warren__store_open(const char *path, const warren__store_opts *opts,
                       warren__store **out, char *err, size_t errlen) {
    tune_sqlite_once();
    if (out) {
        *out = NULL;
    }
    if (err && errlen) {
        err[0] = '\0';
    }
    if (path == NULL || opts == NULL || out == NULL || path[0] == '\0' ||
        strlen(path) >= PATH_MAX) {
        if (err && errlen) {
            snprintf(err, errlen, "%s: store path missing or too long",
                     path ? path : "(null)");
        }
        return WARREN_ERR_INVAL;
    }
    warren__store *s = calloc(1, sizeof *s);
    if (s == NULL) {
        if (err && errlen) {
            snprintf(err, errlen, "%s: out of memory", path);
        }
        return WARREN_ERR_NOMEM;
    }
    snprintf(s->path, sizeof s->path, "%s", path);
    if (opts->owner_host && opts->owner_host[0]) {
        snprintf(s->host, sizeof s->host, "%s", opts->owner_host);
    } else if (gethostname(s->host, sizeof s->host - 1) != 0) {
        snprintf(s->host, sizeof s->host, "localhost");
    }
    append_boot_id(s->host, sizeof s->host);
    s->pid = opts->owner_pid > 0 ? opts->owner_pid : (int)getpid();
    s->lease_s = opts->lease_s;
    s->busy_timeout_ms = opts->busy_timeout_ms;
    s->pid_alive = opts->pid_alive ? opts->pid_alive : default_pid_alive;
    s->pid_alive_user = opts->pid_alive_user;
    s->flags = opts->flags;
    uint64_t tok = 0;
    if (getrandom(&tok, sizeof tok, 0) != (ssize_t)sizeof tok) {
        /* No entropy source: pid and clock still tell processes apart. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        tok = ((uint64_t)s->pid << 32) ^ (uint64_t)ts.tv_nsec ^
              ((uint64_t)ts.tv_sec << 20);
    }
    s->token = (int64_t)(tok & INT64_MAX);
    if (s->token == 0) {
        s->token = 1;
    }
    int rc = create_file(s);
    if (rc == 0) {
        rc = setup(s, opts);
    }
    if (rc != 0) {
        if (err && errlen) {
            snprintf(err, errlen, "%s", s->err);
        }
        warren__store_close(s);
        return rc;
    }
    warren__log(WARREN_LOG_DEBUG, NULL, "%s: store open (synchronous=%s)",
                s->path,
                opts->synchronous == WARREN__SYNC_NORMAL ? "normal" : "full");
    *out = s;
    return 0;
}

void warren__store_close(warren__store *s) {
    if (s == NULL) {
        return;
    }
    if (s->db && !sqlite3_get_autocommit(s->db)) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    }
    for (int i = 0; i < ST_COUNT; i++) {
        sqlite3_finalize(s->st[i]);
    }
    sqlite3_close(s->db);
    free(s);
}

const char *warren__store_errstr(const warren__store *s) {
    return s ? s->err : "no store";
}

const char *warren__store_path(const warren__store *s) {
    return s ? s->path : "";
}

struct sqlite3 *warren__store_db(warren__store *s) {
    return s ? s->db : NULL;
}

int warren__store_in_txn(const warren__store *s) {
    return s && s->db && !sqlite3_get_autocommit(s->db);
}

static void bind_key(sqlite3_stmt *st, const char *queue, const char *id) {
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
}

/* 1 if an earlier entry of this batch already claimed the same key. */
static int claimed_earlier(const warren__claim *claims, size_t i) {
    for (size_t j = 0; j < i; j++) {
        if ((claims[j].status == WARREN__CLAIM_RUN ||
             claims[j].status == WARREN__CLAIM_POISON) &&
            strcmp(claims[j].id, claims[i].id) == 0 &&
            strcmp(claims[j].queue, claims[i].queue) == 0) {
            return 1;
        }
    }
    return 0;
}

static int take(warren__store *s, const warren__claim *c, int attempts,
                int deliveries, int64_t now_ms) {
    sqlite3_stmt *st = s->st[ST_TAKE];
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

/* Gives a dead id back to a replayed copy of a later generation: a fresh
 * attempt chain (attempt 1, no failure history), owned by us. */
static int revive(warren__store *s, warren__claim *c, int64_t was,
                  int64_t now_ms) {
    sqlite3_stmt *st = s->st[ST_REVIVE];
    bind_new_claim(s, st, c, now_ms);
    int rc = run(s, ST_REVIVE, "claim a replayed dead id");
    if (rc != 0) {
        return rc;
    }
    c->status = WARREN__CLAIM_RUN;
    c->attempt = 1;
    c->deliveries = 1;
    c->first_failed_at_ms = 0;
    c->last_error[0] = '\0';
    warren__log(
        WARREN_LOG_DEBUG,
        &(warren__log_fields){"claim_replayed", c->queue, c->id, NULL, 1, -1},
        "dead record re-run: replay generation %lld > %lld",
        (long long)c->replays, (long long)was);
    return 0;
}

static int claim_one(warren__store *s, warren__claim *claims, size_t i,
                     int max_deliveries, int64_t now_ms) {
    warren__claim *c = &claims[i];
    c->status = WARREN__CLAIM_BUSY;
    c->attempt = 0;
    c->deliveries = 0;
    c->first_failed_at_ms = 0;
    c->last_error[0] = '\0';
    c->crashed_reason[0] = '\0';
    c->taken_over = 0;
    c->lost = 0;

    /* The unique key decides: whoever inserts first owns the claim. */
    sqlite3_stmt *st = s->st[ST_INSERT];
    bind_new_claim(s, st, c, now_ms);
    int rc = run(s, ST_INSERT, "claim");
    if (rc != 0) {
        return rc;
    }
    if (sqlite3_changes(s->db) == 1) {
        c->status = WARREN__CLAIM_RUN;
        c->attempt = 1;
        c->deliveries = 1;
        return 0;
    }

    st = s->st[ST_SELECT];
    bind_key(st, c->queue, c->id);
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        if (rc == SQLITE_DONE) {
            return set_err(s, WARREN_ERR_STORE,
                           "claim: record vanished inside a transaction");
        }
        return sql_fail(s, rc, "claim");
    }
    const char *state = (const char *)sqlite3_column_text(st, 0);
    int attempts = sqlite3_column_int(st, 1);
    int deliveries = sqlite3_column_int(st, 2);
    const char *owner_host = (const char *)sqlite3_column_text(st, 3);
    int owner_pid = sqlite3_column_int(st, 4);
    int64_t owner_token = sqlite3_column_int64(st, 5);
    int64_t lease_until = sqlite3_column_int64(st, 6);
    c->first_failed_at_ms = sqlite3_column_int64(st, 7);
    copy_text(c->last_error, sizeof c->last_error, sqlite3_column_text(st, 8));
    int64_t stored_replays = sqlite3_column_int64(st, 9);
    char crashed[sizeof c->crashed_reason];
    copy_text(crashed, sizeof crashed, sqlite3_column_text(st, 10));
    c->attempt = attempts;
    c->deliveries = deliveries;

    char state_buf[16];
    copy_text(state_buf, sizeof state_buf, (const unsigned char *)state);
    int same_host = owner_host && strcmp(owner_host, s->host) == 0;
    sqlite3_reset(st); /* `state` and `owner_host` are invalid from here */

    if (strcmp(state_buf, "done") == 0) {
        c->status = WARREN__CLAIM_DUPLICATE;
        return 0;
    }
    if (strcmp(state_buf, "dead") == 0) {
        if (c->replays > stored_replays) {
            return revive(s, c, stored_replays, now_ms);
        }
        c->status = WARREN__CLAIM_DEAD;
        return 0;
    }
    if (strcmp(state_buf, "retrying") == 0) {
        if (c->copy_attempt != 0 && c->copy_attempt != attempts + 1) {
            /* Not the copy the failed attempt published (and the broker
             * confirmed): the original again after a lost ack, or another
             * stale delivery. Running it would start a second chain. */
            c->status = WARREN__CLAIM_DUPLICATE;
            warren__log(WARREN_LOG_INFO,
                        &(warren__log_fields){"stale_delivery", c->queue, c->id,
                                              NULL, attempts, -1},
                        "delivery of attempt %d while the copy of attempt %d "
                        "is in the retry cascade: settled without running",
                        c->copy_attempt, attempts + 1);
            return 0;
        }
        /* The retry arrives: a new attempt, counted here and nowhere else. */
        rc = take(s, c, attempts + 1, 1, now_ms);
        if (rc == 0) {
            c->status = WARREN__CLAIM_RUN;
            c->attempt = attempts + 1;
            c->deliveries = 1;
        }
        return rc;
    }
    if (strcmp(state_buf, "processing") != 0) {
        return set_err(s, WARREN_ERR_STORE_CORRUPT,
                       "claim: record in unknown state \"%s\": %s", state_buf,
                       fix_corrupt);
    }

    int ours = owner_token == s->token;
    if (ours && claimed_earlier(claims, i)) {
        /* The same id twice in one batch: the handler must not run it
         * twice at once. The second copy is deferred; by the time it comes
         * back the first has an outcome. */
        return 0;
    }
    /* On this host the owner's life decides, not the lease: a live owner
     * renews its leases while its batch runs, and the wall clock may jump.
     * Elsewhere only the lease can tell (the hosts share no other clock).
     * A released claim (lease 0) is free for anyone. */
    int takeover = ours || lease_until == 0 ||
                   (same_host && owner_pid > 0
                        ? s->pid_alive(owner_pid, s->pid_alive_user) == 0
                        : lease_until <= now_ms);
    if (!takeover) {
        return 0; /* BUSY: another live owner holds it */
    }
    /* A takeover is another delivery of the same attempt: the attempt was
     * never finished, so it is not spent, but the crash count grows. */
    rc = take(s, c, attempts, deliveries + 1, now_ms);
    if (rc != 0) {
        return rc;
    }
    c->deliveries = deliveries + 1;
    c->taken_over = !ours && lease_until != 0;
    if (!ours) {
        /* take() cleared it: this claim alone reports the crash. */
        memcpy(c->crashed_reason, crashed, sizeof crashed);
    }
    c->status = max_deliveries > 0 && c->deliveries > max_deliveries
                    ? WARREN__CLAIM_POISON
                    : WARREN__CLAIM_RUN;
    if (!ours) {
        warren__log(WARREN_LOG_DEBUG,
                    &(warren__log_fields){"claim_takeover", c->queue, c->id,
                                          NULL, attempts, -1},
                    "took over a claim of pid %d (%s)", owner_pid,
                    lease_until <= now_ms ? "lease expired" : "owner dead");
    }
    return 0;
}

static int claim_txn(warren__store *s, warren__claim *claims, size_t n,
                     int max_deliveries, int64_t now_ms, int join) {
    if (s == NULL || (claims == NULL && n > 0)) {
        return WARREN_ERR_INVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (claims[i].queue == NULL || claims[i].id == NULL ||
            strlen(claims[i].id) > WARREN__ID_MAX) {
            return set_err(s, WARREN_ERR_INVAL,
                           "claim: entry %zu has no queue or id, or an id "
                           "longer than %d bytes",
                           i, WARREN__ID_MAX);
        }
    }
    int joined = warren__store_in_txn(s);
    if (joined && !join) {
        return set_err(s, WARREN_ERR_INVAL,
                       "claim: called inside an open transaction; claims must "
                       "commit before any handler runs");
    }
    if (n == 0 && !joined) {
        return 0;
    }
    int rc = joined ? 0 : run(s, ST_BEGIN, "begin claim");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = claim_one(s, claims, i, max_deliveries, now_ms);
    }
    if (rc == 0) {
        rc = run(s, ST_COMMIT,
                 joined ? "commit outcomes and claims" : "commit claims");
    }
    if (rc != 0) {
        warren__store_rollback(s);
    }
    return rc;
}

int warren__store_claim_batch(warren__store *s, warren__claim *claims, size_t n,
                              int max_deliveries, int64_t now_ms) {
    return claim_txn(s, claims, n, max_deliveries, now_ms, 0);
}

int warren__store_claim_and_commit(warren__store *s, warren__claim *claims,
                                   size_t n, int max_deliveries,
                                   int64_t now_ms) {
    return claim_txn(s, claims, n, max_deliveries, now_ms, 1);
}

int warren__store_renew(warren__store *s, warren__claim *claims, size_t n,
                        int64_t now_ms) {
    if (s == NULL || (claims == NULL && n > 0)) {
        return WARREN_ERR_INVAL;
    }
    if (warren__store_in_txn(s)) {
        return set_err(s, WARREN_ERR_INVAL,
                       "renew: called inside an open transaction");
    }
    int rc = run(s, ST_BEGIN, "begin renew");
    if (rc != 0) {
        return rc;
    }
    /* Bit 1 of `lost` marks a loss seen by this call, kept only if the
     * transaction commits. */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        warren__claim *c = &claims[i];
        if (c->status != WARREN__CLAIM_RUN &&
            c->status != WARREN__CLAIM_POISON) {
            continue;
        }
        sqlite3_stmt *st = s->st[ST_RENEW];
        bind_key(st, c->queue, c->id);
        sqlite3_bind_int64(st, 3, s->token);
        sqlite3_bind_int64(st, 4, now_ms + (int64_t)s->lease_s * 1000);
        rc = run(s, ST_RENEW, "renew lease");
        if (rc == 0 && sqlite3_changes(s->db) == 0) {
            c->lost |= 2;
        }
    }
    if (rc == 0) {
        rc = run(s, ST_COMMIT, "commit renew");
    }
    if (rc != 0) {
        warren__store_rollback(s);
    }
    for (size_t i = 0; i < n; i++) {
        int seen = (claims[i].lost & 2) != 0;
        claims[i].lost = (claims[i].lost & 1) | (rc == 0 && seen);
    }
    return rc;
}

int warren__store_mark_crashed(warren__store *s, const char *queue,
                               const char *id, int owner_pid,
                               const char *reason, int *marked) {
    if (s == NULL || queue == NULL || id == NULL || reason == NULL ||
        owner_pid <= 0) {
        return WARREN_ERR_INVAL;
    }
    if (warren__store_in_txn(s)) {
        return set_err(s, WARREN_ERR_INVAL,
                       "mark crashed: called inside an open transaction");
    }
    char stored[STORED_ERROR_MAX];
    copy_text(stored, sizeof stored, (const unsigned char *)reason);
    sqlite3_stmt *st = s->st[ST_MARK_CRASHED];
    bind_key(st, queue, id);
    sqlite3_bind_text(st, 3, s->host, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, owner_pid);
    sqlite3_bind_text(st, 5, stored, -1, SQLITE_STATIC);
    int rc = run(s, ST_MARK_CRASHED, "mark a crashed claim");
    if (marked != NULL) {
        *marked = rc == 0 && sqlite3_changes(s->db) == 1;
    }
    return rc;
}

int warren__store_begin_within(warren__store *s, int64_t wait_ms) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int rc = warren__store_begin(s);
        if (rc != WARREN_ERR_STORE_BUSY) {
            return rc;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        int64_t spent = (int64_t)(t.tv_sec - t0.tv_sec) * 1000 +
                        (t.tv_nsec - t0.tv_nsec) / 1000000;
        if (spent >= wait_ms) {
            return rc;
        }
        /* BEGIN IMMEDIATE waited busy_timeout_ms already; another try
         * follows at once, within the caller's bound. */
        warren__log(WARREN_LOG_DEBUG, NULL,
                    "%s: store busy for %lld ms, still waiting (up to %lld)",
                    s->path, (long long)spent, (long long)wait_ms);
        if (s->busy_timeout_ms == 0) {
            sqlite3_sleep(10); /* no busy handler: do not spin */
        }
    }
}

int warren__store_begin(warren__store *s) {
    if (s == NULL) {
        return WARREN_ERR_INVAL;
    }
    if (warren__store_in_txn(s)) {
        return 0;
    }
    return run(s, ST_BEGIN, "begin");
}

int warren__store_commit(warren__store *s) {
    if (s == NULL) {
        return WARREN_ERR_INVAL;
    }
    if (!warren__store_in_txn(s)) {
        return 0;
    }
    return run(s, ST_COMMIT, "commit");
}

void warren__store_rollback(warren__store *s) {
    if (s == NULL || !warren__store_in_txn(s)) {
        return;
    }
    /* Some errors (SQLITE_FULL, SQLITE_NOMEM) roll back by themselves; the
     * check above keeps this from failing on an already closed one. */
    if (run(s, ST_ROLLBACK, "rollback") != 0) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    }
}

int warren__store_savepoint(warren__store *s) {
    int rc = warren__store_begin(s);
    if (rc != 0) {
        return rc;
    }
    return run(s, ST_SAVEPOINT, "savepoint");
}

int warren__store_savepoint_release(warren__store *s) {
    if (s == NULL) {
        return WARREN_ERR_INVAL;
    }
    return run(s, ST_SP_RELEASE, "release savepoint");
}

int warren__store_savepoint_rollback(warren__store *s) {
    if (s == NULL) {
        return WARREN_ERR_INVAL;
    }
    int rc = run(s, ST_SP_ROLLBACK, "rollback to savepoint");
    if (rc != 0) {
        return rc;
    }
    return run(s, ST_SP_RELEASE, "release savepoint");
}

int warren__store_record(warren__store *s, const char *queue, const char *id,
                         warren__outcome_kind kind, const char *error,
                         int64_t now_ms) {
    int which;
    if (s == NULL || queue == NULL || id == NULL) {
        return WARREN_ERR_INVAL;
    }
    switch (kind) {
    case WARREN__OUT_DONE:
        which = ST_DONE;
        break;
    case WARREN__OUT_RETRYING:
        which = ST_RETRYING;
        break;
    case WARREN__OUT_DEAD:
        which = ST_DEAD;
        break;
    case WARREN__OUT_RELEASE:
        which = ST_RELEASE;
        break;
    default:
        return set_err(s, WARREN_ERR_INVAL, "record: unknown outcome %d",
                       (int)kind);
    }
    if (!warren__store_in_txn(s)) {
        return set_err(s, WARREN_ERR_INVAL,
                       "record: no open transaction (call begin first)");
    }
    sqlite3_stmt *st = s->st[which];
    bind_key(st, queue, id);
    sqlite3_bind_int64(st, 3, s->token);
    sqlite3_bind_int64(st, 4, now_ms);
    if (which == ST_RETRYING || which == ST_DEAD) {
        if (error) {
            size_t n = utf8_prefix(error, strlen(error), STORED_ERROR_MAX + 1);
            sqlite3_bind_text(st, 5, error, (int)n, SQLITE_STATIC);
        } else {
            sqlite3_bind_null(st, 5);
        }
    }
    int rc = run(s, which, "record outcome");
    if (rc != 0) {
        return rc;
    }
    if (sqlite3_changes(s->db) == 0) {
        return set_err(s, WARREN_ERR_NOT_FOUND,
                       "record: %s/%s is not claimed by this worker any more",
                       queue, id);
    }
    return 0;
}

int warren__store_prune(warren__store *s, int64_t now_ms, uint32_t retention_s,
                        int limit, int *deleted) {
    if (deleted) {
        *deleted = 0;
    }
    if (s == NULL || limit <= 0) {
        return WARREN_ERR_INVAL;
    }
    if (warren__store_in_txn(s)) {
        return set_err(s, WARREN_ERR_INVAL,
                       "prune: called inside an open transaction");
    }
    int rc = run(s, ST_BEGIN, "begin prune");
    if (rc != 0) {
        return rc;
    }
    sqlite3_stmt *st = s->st[ST_PRUNE];
    sqlite3_bind_int64(st, 1, now_ms - (int64_t)retention_s * 1000);
    sqlite3_bind_int(st, 2, limit);
    rc = run(s, ST_PRUNE, "prune");
    int n = rc == 0 ? sqlite3_changes(s->db) : 0;
    if (rc == 0) {
        rc = run(s, ST_COMMIT, "commit prune");
    }
    if (rc != 0) {
        warren__store_rollback(s);
        return rc;
    }
    if (deleted) {
        *deleted = n;
    }
    return 0;
}

/* Deletes one record inside the open transaction (see
 * warren__store_forget()). */
static int forget_in_txn(warren__store *s, const char *queue, const char *id,
                         int64_t now_ms) {
    int rc;
    sqlite3_stmt *st = s->st[ST_FORGET_SELECT];
    bind_key(st, queue, id);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        char state[16];
        copy_text(state, sizeof state, sqlite3_column_text(st, 0));
        int64_t lease_until = sqlite3_column_int64(st, 1);
        sqlite3_reset(st);
        if (strcmp(state, "processing") == 0 && lease_until > now_ms) {
            rc = set_err(s, WARREN_ERR_STORE_BUSY,
                         "forget: %s/%s is being processed (lease for another "
                         "%lld ms); try again later",
                         queue, id, (long long)(lease_until - now_ms));
        } else {
            st = s->st[ST_FORGET_DELETE];
            bind_key(st, queue, id);
            rc = run(s, ST_FORGET_DELETE, "forget");
        }
    } else {
        sqlite3_reset(st);
        rc = step == SQLITE_DONE
                 ? set_err(s, WARREN_ERR_NOT_FOUND,
                           "forget: no record of %s/%s", queue, id)
                 : sql_fail(s, step, "forget");
    }
    return rc;
}

int warren__store_forget(warren__store *s, const char *queue, const char *id,
                         int64_t now_ms) {
    if (s == NULL || queue == NULL || id == NULL) {
        return WARREN_ERR_INVAL;
    }
    if (warren__store_in_txn(s)) {
        return set_err(s, WARREN_ERR_INVAL,
                       "forget: called inside an open transaction");
    }
    int rc = run(s, ST_BEGIN, "begin forget");
    if (rc != 0) {
        return rc;
    }
    rc = forget_in_txn(s, queue, id, now_ms);
    if (rc == 0) {
        rc = run(s, ST_COMMIT, "commit forget");
    }
    if (rc != 0) {
        warren__store_rollback(s);
    }
    return rc;
}

int warren__store_busy_many(warren__store *s, const char *const *queues,
                            const char *const *ids, size_t n, int64_t now_ms,
                            int *results) {
    if (s == NULL ||
        (n > 0 && (queues == NULL || ids == NULL || results == NULL))) {
        return WARREN_ERR_INVAL;
    }
    sqlite3_stmt *st = s->st[ST_FORGET_SELECT];
    for (size_t i = 0; i < n; i++) {
        results[i] = 0;
        bind_key(st, queues[i], ids[i]);
        int step = sqlite3_step(st);
        if (step == SQLITE_ROW &&
            strcmp((const char *)sqlite3_column_text(st, 0), "processing") ==
                0 &&
            sqlite3_column_int64(st, 1) > now_ms) {
            results[i] = WARREN_ERR_STORE_BUSY;
        }
        sqlite3_reset(st);
        if (step != SQLITE_ROW && step != SQLITE_DONE) {
            return sql_fail(s, step, "look up claims");
        }
    }
    return 0;
}

int warren__store_stats(warren__store *s,
                        void (*fn)(const char *queue, const char *state,
                                   int64_t rows, void *user),
                        void *user) {
    if (s == NULL || fn == NULL) {
        return WARREN_ERR_INVAL;
    }
    sqlite3_stmt *st = s->st[ST_STATS];
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

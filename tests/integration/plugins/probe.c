/*
 * probe.c - a test plugin for the batch and its store transactions
 * (tests/integration/test_batch_isolation.c). Each call appends the id to
 * PROBE_EFFECTS (an effect outside the store, counted per run) and inserts
 * it into probe_log through warren_ctx_db() (an effect inside the store,
 * which must commit exactly once). PROBE_SLOW_PREFIX/PROBE_SLOW_MS make
 * matching ids sleep after their write, holding the store's write lock;
 * PROBE_CRASH_ID makes that id SIGKILL its worker after writing;
 * PROBE_NODB_PREFIX makes matching ids leave the store alone (an effect
 * outside it only, like an exec handler's); PROBE_ROLLBACK_ID makes that id, on
 * its first attempt, run SQL that rolls back the whole transaction (INSERT OR
 * ROLLBACK on a conflict) and return ACK anyway, as a careless handler would.
 * PROBE_RETRY_EVERY=N makes ids whose number (after the last '-') is a
 * multiple of N return RETRY on their first attempt, before any effect.
 */
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <warren.h>

WARREN_PLUGIN_DECLARE();

warren_result probe(const warren_msg *msg, warren_ctx *ctx, void *user);

static int exec_sql(sqlite3 *db, const char *sql, const char *id) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK && id) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    return rc;
}

static void append_effect(const char *id) {
    const char *path = getenv("PROBE_EFFECTS");
    char line[300];
    if (path == NULL || path[0] == '\0') {
        return;
    }
    int n = snprintf(line, sizeof line, "%s\n", id);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        if (write(fd, line, (size_t)n) != n) {
            /* counted by the test; nothing to do here */
        }
        close(fd);
    }
}

warren_result probe(const warren_msg *msg, warren_ctx *ctx, void *user) {
    (void)user;
    const char *id = warren_msg_id(msg);
    if (id == NULL) {
        warren_ctx_set_error(ctx, "probe: needs a message id");
        return WARREN_DEAD;
    }
    const char *every = getenv("PROBE_RETRY_EVERY");
    const char *dash = strrchr(id, '-');
    if (every && dash && warren_msg_attempt(msg) == 1) {
        long e = strtol(every, NULL, 10);
        if (e > 0 && strtol(dash + 1, NULL, 10) % e == 0) {
            warren_ctx_set_error(ctx, "probe: retry once");
            return WARREN_RETRY;
        }
    }
    const char *prefix = getenv("PROBE_SLOW_PREFIX");
    const char *ms = getenv("PROBE_SLOW_MS");
    const char *nodb = getenv("PROBE_NODB_PREFIX");
    if (nodb && strncmp(id, nodb, strlen(nodb)) == 0) {
        append_effect(id);
        if (prefix && ms && strncmp(id, prefix, strlen(prefix)) == 0) {
            long v = strtol(ms, NULL, 10);
            struct timespec ts = {v / 1000, (v % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        return WARREN_ACK;
    }
    sqlite3 *db = warren_ctx_db(ctx);
    if (db == NULL) {
        warren_ctx_set_error(ctx, "probe: no store database");
        return WARREN_RETRY;
    }
    append_effect(id);
    if (exec_sql(db, "CREATE TABLE IF NOT EXISTS probe_log(id TEXT NOT NULL)",
                 NULL) != SQLITE_DONE ||
        exec_sql(db,
                 "CREATE TABLE IF NOT EXISTS probe_uniq(k TEXT PRIMARY KEY)",
                 NULL) != SQLITE_DONE ||
        exec_sql(db, "INSERT INTO probe_log(id) VALUES(?1)", id) !=
            SQLITE_DONE) {
        warren_ctx_set_error(ctx, "probe: sqlite: %s", sqlite3_errmsg(db));
        return WARREN_RETRY;
    }
    const char *crash = getenv("PROBE_CRASH_ID");
    if (crash && strcmp(crash, id) == 0) {
        raise(SIGKILL);
    }
    const char *rb = getenv("PROBE_ROLLBACK_ID");
    if (rb && strcmp(rb, id) == 0 && warren_msg_attempt(msg) == 1) {
        /* The second insert conflicts and rolls back the transaction. */
        exec_sql(db, "INSERT OR ROLLBACK INTO probe_uniq(k) VALUES(?1)", id);
        exec_sql(db, "INSERT OR ROLLBACK INTO probe_uniq(k) VALUES(?1)", id);
    }
    if (prefix && ms && strncmp(id, prefix, strlen(prefix)) == 0) {
        long v = strtol(ms, NULL, 10);
        struct timespec ts = {v / 1000, (v % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return WARREN_ACK;
}

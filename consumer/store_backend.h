/*
 * store_backend.h - the seam between the message store's rules (store.c)
 * and a database that keeps its records (store_sqlite.c, store_pg.c).
 *
 * store.c owns everything that does not depend on the database: argument
 * checks, the claim decision (which record state gives which claim status,
 * when a claim may be taken over), error texts, the owner identity and the
 * transaction discipline. A backend fills one warren__store_ops table with
 * small primitives (insert a claim, read a record, update it) and keeps its
 * connection after the common warren__store header it embeds first. Only
 * store files include this header.
 */
#ifndef WARREN_STORE_BACKEND_H
#define WARREN_STORE_BACKEND_H

#include "store.h"
#include "warren.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

/* Bound on last_error as stored; the handler's reason is at most this. */
#define WARREN__STORED_ERROR_MAX 1024

/* One record as a claim reads it (under the transaction's write lock). */
typedef struct {
    char state[16];
    int attempts;
    int deliveries;
    char owner_host[256]; /* "" if none */
    int owner_pid;
    int64_t owner_token;
    int64_t lease_until; /* ms since the epoch, 0: released */
    int64_t first_failed_at;
    char last_error[256];
    int64_t replays;
    char crashed_reason[256];
    /* The clock leases are judged by: the caller's now_ms for SQLite, the
     * database's clock for a server shared by several hosts. */
    int64_t now_ms;
} warren__store_row;

typedef struct warren__store_ops {
    const char *name; /* "sqlite", "postgresql" */
    size_t size;      /* bytes to allocate: the backend's struct */
    /* Connects and migrates; on error fills s->err (set_err) and returns
     * it; close() is then called on the half-open store. */
    int (*open)(warren__store *s, const warren__store_opts *opts,
                const char *where);
    void (*close)(warren__store *s); /* frees the backend's parts only */
    int (*in_txn)(const warren__store *s);
    int (*begin)(warren__store *s, const char *what); /* write transaction */
    int (*commit)(warren__store *s, const char *what);
    void (*rollback)(warren__store *s);
    int (*savepoint)(warren__store *s);
    int (*savepoint_release)(warren__store *s);
    int (*savepoint_rollback)(warren__store *s); /* rollback to, no release */
    /* A new record owned by us, or nothing if the key exists: *inserted. */
    int (*insert)(warren__store *s, const warren__claim *c, int64_t now_ms,
                  int *inserted);
    /* Optional: the inserts of a whole batch in one statement, setting
     * claims[i].inserted for each new record (the first entry of a key
     * that is in the batch twice). NULL: insert() per claim. */
    int (*insert_many)(warren__store *s, warren__claim *claims, size_t n,
                       int64_t now_ms);
    /* Reads the record of the claim's key; *found 0 if there is none. */
    int (*read)(warren__store *s, const warren__claim *c, int64_t now_ms,
                warren__store_row *row, int *found);
    /* Makes the record ours: processing with these counters. */
    int (*take)(warren__store *s, const warren__claim *c, int attempts,
                int deliveries, int64_t now_ms);
    /* A dead record of a lower replay generation becomes ours, fresh. */
    int (*revive)(warren__store *s, const warren__claim *c, int64_t now_ms);
    /* Outcome of our claim: *changed 0 if the record is not ours. `error`
     * (may be NULL) is `error_len` bytes. */
    int (*record)(warren__store *s, const char *queue, const char *id,
                  warren__outcome_kind kind, const char *error,
                  size_t error_len, int64_t now_ms, int *changed);
    int (*renew)(warren__store *s, const warren__claim *c, int64_t now_ms,
                 int *changed);
    int (*mark_crashed)(warren__store *s, const char *queue, const char *id,
                        int owner_pid, const char *reason, int *changed);
    /* Inside an open transaction: deletes up to `limit` final records
     * updated before `before_ms`. */
    int (*prune)(warren__store *s, int64_t before_ms, int limit, int *deleted);
    /* State and lease of a key without taking a lock; *found 0 if none.
     * `now_ms` in and out: the clock the lease is compared with. */
    int (*lookup)(warren__store *s, const char *queue, const char *id,
                  const char *what, char state[16], int64_t *lease_until,
                  int64_t *now_ms, int *found);
    int (*delete_key)(warren__store *s, const char *queue, const char *id);
    int (*stats)(warren__store *s,
                 void (*fn)(const char *queue, const char *state, int64_t rows,
                            void *user),
                 void *user);
    int (*each)(warren__store *s,
                int (*fn)(const warren__store_entry *r, void *user),
                void *user);
    int (*put)(warren__store *s, const warren__store_entry *r,
               int *inserted); /* inside an open transaction */
    /* Optional: 1 if the connection to the database is gone (a server
     * restart, a failover): the open transaction went with it, and
     * store.c may replay its outcomes on a new one. NULL: never. */
    int (*lost)(const warren__store *s);
    struct sqlite3 *(*db)(warren__store *s); /* NULL where not SQLite */
    struct pg_conn *(*pg)(warren__store *s); /* NULL where not PostgreSQL */
} warren__store_ops;

/* What every backend's store starts with. */
struct warren__store {
    const warren__store_ops *ops;
    char path[PATH_MAX]; /* the file, or the URL without its password */
    char host[256];      /* owner_host of our claims, boot id included */
    int pid;
    int64_t token; /* random per open: a reused pid is not "us" */
    uint32_t lease_s;
    uint32_t busy_timeout_ms;
    int (*pid_alive)(int pid, void *user);
    void *pid_alive_user;
    unsigned flags;
    char err[PATH_MAX + 512];
    /* The outcomes recorded in the open transaction, to replay them on a
     * new connection if the old one is lost before the commit (store.c).
     * Off once a handler savepoint joined the transaction: a handler's own
     * SQL cannot be replayed. */
    struct warren__replay *replay;
    size_t n_replay, cap_replay;
    int replay_off;
};

extern const warren__store_ops warren__store_sqlite_ops;
extern const warren__store_ops warren__store_pg_ops;

/* Writes "PATH: message" into s->err and returns `code`. */
int warren__store_set_err(warren__store *s, int code, const char *fmt, ...)
    WARREN_PRINTF(3, 4);

/* Length of the longest prefix of src[0..len) shorter than `cap` that does
 * not cut a UTF-8 sequence. */
size_t warren__store_utf8_prefix(const char *src, size_t len, size_t cap);
/* Copies NUL-terminated `src` (NULL: "") into dst[cap], cut as above. */
void warren__store_copy_text(char *dst, size_t cap, const char *src);

extern const char warren__store_fix_corrupt[];

#endif /* WARREN_STORE_BACKEND_H */

/*
 * store.h - the message store (internal): dedup, per-message state
 * machine, authoritative attempt counts, leases and poison detection.
 *
 * The one store API the runtime and the CLI call, whatever keeps the
 * records: the rules live in store.c, a backend behind an ops table
 * (store_backend.h) keeps them. The SQLite backend (store_sqlite.c): one
 * warren__store is one sqlite3 connection, opened by the process that
 * uses it (never carried across fork). Several processes may share one file:
 * WAL mode, a busy timeout, and BEGIN IMMEDIATE for every write transaction.
 * The key of a record is (queue, id). States and legal transitions:
 *
 *   (none) -> processing            first claim
 *   processing -> processing        takeover (owner on this host dead, owner
 *                                   elsewhere with its lease expired, claim
 *                                   released, or the owner is this process)
 *   processing -> done | retrying | dead    outcome
 *   retrying -> processing          the retry arrives
 *   dead -> processing              a replayed copy arrives (its replay
 *                                   generation above the one recorded)
 *   dead, done -> (deleted)         only by forget / replay / retention
 *
 * Any other transition is refused by a trigger in SQL, not only here.
 * All functions return 0 or a negative WARREN_ERR_*; the detail (always
 * naming the file) is in warren__store_errstr(), overwritten by the next
 * failure. SQLITE_BUSY maps to WARREN_ERR_STORE_BUSY, SQLITE_FULL to
 * WARREN_ERR_STORE_FULL, corrupt/not-a-database/newer-schema/read-only to
 * WARREN_ERR_STORE_CORRUPT (read-only: WARREN_ERR_STORE).
 */
#ifndef WARREN_STORE_H
#define WARREN_STORE_H

#include "config.h"

#include <stddef.h>
#include <stdint.h>

struct sqlite3;
struct pg_conn;
typedef struct warren__store warren__store;

/* Longest id kept; longer ids are refused by the id policy (msgid.c). */
#define WARREN__ID_MAX 256

typedef struct {
    warren__sync_mode synchronous;
    uint32_t busy_timeout_ms;
    uint32_t lease_s;
    const char *owner_host; /* copied; identifies this worker's claims */
    int owner_pid;
    /* Seam for tests: is process `pid` on this host alive? NULL uses
     * kill(pid, 0). A claim held by a dead owner may be taken over at once,
     * without waiting for its lease to expire. */
    int (*pid_alive)(int pid, void *user);
    void *pid_alive_user;
    unsigned flags; /* WARREN__STORE_F_* */
} warren__store_opts;

/* Open only a store that exists: a missing file is WARREN_ERR_NOT_FOUND
 * (nothing created), not a new empty store. For the operator's commands
 * (dlq, status, store), where a new empty store would hide that they look
 * at another file than the workers (a relative store.path run from another
 * directory, another box). Only `warren run` creates the store. */
#define WARREN__STORE_F_MUST_EXIST 1u
/* Seam for tests of a shared (PostgreSQL) store: stamp and judge leases by
 * the caller's now_ms, as SQLite does, instead of the database's clock. */
#define WARREN__STORE_F_CALLER_CLOCK 2u

/* Opens (creating mode 0600 if missing, together with -wal/-shm, unless
 * WARREN__STORE_F_MUST_EXIST) and migrates the store at `path`. On failure
 * returns an error, sets `*out` to NULL and writes a message naming the
 * file and the fix into `err`. */
int warren__store_open(const char *path, const warren__store_opts *opts,
                       warren__store **out, char *err, size_t errlen);
/* Opens (creating or migrating its tables unless WARREN__STORE_F_MUST_EXIST)
 * the PostgreSQL store at `url` (postgresql://user@host:port/db; the
 * password from PGPASSWORD, ~/.pgpass or WARREN_STORE_PASSWORD). Errors
 * name the URL without a password; as warren__store_open() otherwise. */
int warren__store_open_url(const char *url, const warren__store_opts *opts,
                           warren__store **out, char *err, size_t errlen);
/* Opens the store the configuration names (store.url, else store.path), as
 * the worker with owner host `host` (NULL: this host's name,
 * warren__host_id()) and this process's pid, with `flags`
 * (WARREN__STORE_F_*): the one way the worker and the CLI's commands open
 * it. Errors as warren__store_open(), and WARREN_ERR_CONFIG for an unusable
 * WARREN_HOST_ID. */
int warren__store_open_config(const warren_config *cfg, const char *host,
                              unsigned flags, warren__store **out, char *err,
                              size_t errlen);
void warren__store_close(warren__store *s); /* NULL is a no-op */
const char *warren__store_errstr(const warren__store *s);
const char *warren__store_path(const warren__store *s);

typedef enum {
    WARREN__CLAIM_RUN = 0,   /* claimed by us: run the handler */
    WARREN__CLAIM_DUPLICATE, /* done already: ack without running */
    WARREN__CLAIM_DEAD,      /* dead already (its copy is in the DLQ): ack */
    WARREN__CLAIM_BUSY,      /* held by another live worker: defer */
    WARREN__CLAIM_POISON     /* deliveries > max_deliveries: dead-letter */
} warren__claim_status;

typedef struct {
    /* in */
    const char *queue;
    const char *id; /* NUL-terminated, valid UTF-8, <= WARREN__ID_MAX */
    /* Republish mode, for a copy back from the cascade or a redelivery:
     * the delivery's x-warren-attempt (1 without one). A `retrying` record
     * is then taken only by the copy of attempt `attempts + 1`; any other
     * delivery is stale (the confirmed copy is in the cascade) and gets
     * WARREN__CLAIM_DUPLICATE. 0: any delivery takes it (nack mode, where
     * the original is the retry; a first delivery from outside, e.g. one
     * moved back by hand from a nack-mode retry queue). */
    int copy_attempt;
    /* The delivery's replay generation (x-warren-replays, 0 if absent). A
     * `dead` record stored with a lower generation is a dead letter that
     * was replayed since: the claim runs it afresh (attempt 1) instead of
     * answering DEAD. `done` stays DUPLICATE whatever this says. */
    int64_t replays;
    /* out */
    warren__claim_status status;
    int attempt;                /* attempt number of this delivery (>= 1) */
    int deliveries;             /* claims since the last outcome, incl. this */
    int64_t first_failed_at_ms; /* 0: never failed */
    char last_error[256];       /* last recorded reason, "" if none */
    /* Taken over from another owner (dead, or its lease ran out) that
     * never recorded an outcome: its handler may be what killed it, so the
     * worker runs this one on its own (a suspect). */
    int taken_over;
    /* Taken over from an owner that `warren run` saw die while running
     * this record's handler (warren__store_mark_crashed): the reason, ""
     * if none. The claim clears it in the store, so one crash is reported
     * once; the worker spends the attempt without running the handler. */
    char crashed_reason[256];
    int lost;     /* set by renew(): the claim is not ours any more */
    int inserted; /* internal: a new record made by the backend's batch
                     insert (store.c, store_pg.c) */
} warren__claim;

/* Claims `n` deliveries in one write transaction (committed on return).
 * For each entry sets status and the counters. `max_deliveries` is the
 * poison threshold: a claim that would make `deliveries` exceed it gets
 * WARREN__CLAIM_POISON (the record stays processing until the dead outcome
 * is recorded). On error nothing is claimed. */
int warren__store_claim_batch(warren__store *s, warren__claim *claims, size_t n,
                              int max_deliveries, int64_t now_ms);

/* Group commit of outcomes and claims: like claim_batch, but if an outcome
 * transaction is open (begin() and record() since), the claims join it and
 * one commit makes both durable, saving a sync per batch. On error both are
 * rolled back: ack none of those outcomes. With no transaction open it is
 * claim_batch. Handler savepoints must be released or rolled back first. */
int warren__store_claim_and_commit(warren__store *s, warren__claim *claims,
                                   size_t n, int max_deliveries,
                                   int64_t now_ms);

/* Extends the lease of every claim of `claims` whose status is RUN or
 * POISON to now + lease_s, in one short write transaction, so that a batch
 * that runs longer than its leases keeps them. A claim that is not ours
 * any more (taken over, or recorded) gets `lost` set. On error (e.g.
 * WARREN_ERR_STORE_BUSY) nothing changes and no `lost` is set. */
int warren__store_renew(warren__store *s, warren__claim *claims, size_t n,
                        int64_t now_ms);

/* Marks the record (queue, id) as crashed with `reason` (copied), only if
 * it is processing and owned by `owner_pid` on this store's host (opts'
 * owner_host, as the worker's own store has it): its owner died
 * while running the handler, and the next claim that takes it over gets
 * the reason in warren__claim.crashed_reason. One autocommitted statement
 * (no transaction may be open). Sets `*marked` (may be NULL) to 1 if the
 * record was marked, 0 if no record matched (gone, taken over already,
 * another owner). For `warren run`, which calls it for a worker it has
 * seen die but not reaped yet (so its pid cannot be reused meanwhile). */
int warren__store_mark_crashed(warren__store *s, const char *queue,
                               const char *id, int owner_pid,
                               const char *reason, int *marked);

/* begin(), retried while the store is busy for up to `wait_ms` in all
 * (measured on the monotonic clock). For a caller that must not give up
 * at busy_timeout_ms: outcomes of handlers that already ran. */
int warren__store_begin_within(warren__store *s, int64_t wait_ms);

/* Outcome transaction. begin() opens BEGIN IMMEDIATE (no-op if open);
 * commit() makes every outcome recorded since durable per `synchronous`;
 * rollback() discards them. Handler savepoints nest inside it. If the
 * connection is lost before the commit (a PostgreSQL restart), record(),
 * commit() and claim_and_commit() record the transaction's outcomes again
 * on a new connection, waiting up to 60 s for the server, unless a handler
 * savepoint joined the transaction (its SQL cannot be replayed). */
int warren__store_begin(warren__store *s);
int warren__store_commit(warren__store *s);
void warren__store_rollback(warren__store *s);
int warren__store_in_txn(const warren__store *s);
int warren__store_savepoint(warren__store *s); /* SAVEPOINT handler */
int warren__store_savepoint_release(warren__store *s);
int warren__store_savepoint_rollback(warren__store *s); /* and release */

typedef enum {
    WARREN__OUT_DONE = 0,
    WARREN__OUT_RETRYING,
    WARREN__OUT_DEAD,
    WARREN__OUT_RELEASE /* give the claim back without an outcome (defer,
                           shutdown): state returns to what it was */
} warren__outcome_kind;

/* Records one outcome inside the open transaction (begin() first). `error`
 * may be NULL. An illegal transition returns WARREN_ERR_STORE. */
int warren__store_record(warren__store *s, const char *queue, const char *id,
                         warren__outcome_kind kind, const char *error,
                         int64_t now_ms);

/* Deletes `done`/`dead` records older than retention, at most `limit` rows
 * in one short transaction. Sets `*deleted`. Call repeatedly. */
int warren__store_prune(warren__store *s, int64_t now_ms, uint32_t retention_s,
                        int limit, int *deleted);

/* Deletes the record of (queue, id) whatever its state except processing
 * under a live lease (WARREN_ERR_STORE_BUSY). Missing: WARREN_ERR_NOT_FOUND.
 * Used by `warren store forget`. */
int warren__store_forget(warren__store *s, const char *queue, const char *id,
                         int64_t now_ms);
/* Looks up `n` keys without changing anything (no write lock): sets
 * results[i] to WARREN_ERR_STORE_BUSY if (queues[i], ids[i]) is processing
 * under a live lease, else 0 (any other state, or no record). Returns 0 or
 * an error. Used by dlq replay, once per window, to leave the dead letters
 * of ids being processed right now in place. */
int warren__store_busy_many(warren__store *s, const char *const *queues,
                            const char *const *ids, size_t n, int64_t now_ms,
                            int *results);

/* Rows per (queue, state). Calls `fn` once per pair. */
int warren__store_stats(warren__store *s,
                        void (*fn)(const char *queue, const char *state,
                                   int64_t rows, void *user),
                        void *user);

/* One record whole, as `warren store export` writes it and `import` reads
 * it back (backend-neutral: times in ms since the epoch, 0 for none). The
 * strings are borrowed: valid during the callback (each) or the call (put);
 * owner_host, last_error and crashed_reason may be NULL. */
typedef struct {
    const char *queue;
    const char *id;
    const char *state; /* processing, done, retrying, dead */
    int attempts;
    int deliveries;
    const char *owner_host;
    int owner_pid;
    int64_t owner_token;
    int64_t lease_until;
    int64_t first_failed_at;
    const char *last_error;
    int64_t created_at;
    int64_t updated_at;
    int64_t replays;
    const char *crashed_reason;
} warren__store_entry;

/* Calls `fn` for every record, in the order they were created, reading
 * without a write lock. A non-zero return of `fn` stops the walk and is
 * returned. Errors as elsewhere (the detail in errstr). */
int warren__store_each(warren__store *s,
                       int (*fn)(const warren__store_entry *r, void *user),
                       void *user);

/* Inserts `r` as it is inside the open transaction (begin() first), unless
 * a record of its key exists: then nothing changes and *inserted is 0. A
 * record that is not valid (unknown state, missing key, overlong id,
 * attempts < 1) is WARREN_ERR_INVAL with the reason in errstr. */
int warren__store_put(warren__store *s, const warren__store_entry *r,
                      int *inserted);

/* The connection, for the transactional inbox (warren_ctx_db); NULL if
 * the store is not SQLite. */
struct sqlite3 *warren__store_db(warren__store *s);
/* The PostgreSQL connection (warren_ctx_pg); NULL if the store is not
 * PostgreSQL. */
struct pg_conn *warren__store_pg(warren__store *s);
/* The backend's name: "sqlite" or "postgresql". */
const char *warren__store_backend(const warren__store *s);

#endif /* WARREN_STORE_H */

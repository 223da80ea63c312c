/*
 * store.c - the message store's rules, whatever database keeps the records:
 * dedup, the per-message state machine, authoritative attempt counts,
 * leases, takeover and poison detection.
 *
 * A backend (store_sqlite.c, store_pg.c: warren__store_ops in
 * store_backend.h) keeps the records and their transactions; this file
 * decides what a claim answers for each record state, when another owner's
 * claim may be taken over, and what every error says. It promises that a
 * claim, an outcome and a renewal change only records this open of the
 * store owns (its random token), that claims commit before any handler
 * runs, and that every error message names the store (its file, or its URL
 * without the password).
 */
#include "store.h"

#include "hostid.h"
#include "log.h"
#include "store_backend.h"
#include "warren.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define STORED_ERROR_MAX WARREN__STORED_ERROR_MAX
/* How long a lost connection is waited for before the outcomes of handlers
 * that already ran are given up (the worker then hands the batch back and
 * the handlers run again): as long as a busy SQLite store is waited for. */
#define RESCUE_WAIT_MS 60000

/* One outcome of the open transaction, kept to replay it. */
struct warren__replay {
    char queue[256];
    char id[WARREN__ID_MAX + 1];
    warren__outcome_kind kind;
    char *error; /* NULL: none */
    size_t error_len;
    int64_t now_ms;
};

const char warren__store_fix_corrupt[] =
    "move it aside; the store will be recreated; ids already handled may "
    "run again";

int warren__store_set_err(warren__store *s, int code, const char *fmt, ...) {
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

#define set_err warren__store_set_err

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
size_t warren__store_utf8_prefix(const char *src, size_t len, size_t cap) {
    if (len < cap) {
        return len;
    }
    len = cap - 1;
    while (len > 0 && ((unsigned char)src[len] & 0xC0) == 0x80) {
        len--;
    }
    return len;
}

void warren__store_copy_text(char *dst, size_t cap, const char *src) {
    if (src == NULL) {
        dst[0] = '\0';
        return;
    }
    size_t n = warren__store_utf8_prefix(src, strlen(src), cap);
    memcpy(dst, src, n);
    dst[n] = '\0';
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

/* Opens a store of backend `ops` named `name` (its file, or its URL with
 * the password left out) at `where` (what the backend connects to). */
static int open_backend(const warren__store_ops *ops, const char *name,
                        const char *where, const warren__store_opts *opts,
                        warren__store **out, char *err, size_t errlen) {
    if (out) {
        *out = NULL;
    }
    if (err && errlen) {
        err[0] = '\0';
    }
    if (name == NULL || where == NULL || opts == NULL || out == NULL ||
        name[0] == '\0' || strlen(name) >= PATH_MAX) {
        if (err && errlen) {
            snprintf(err, errlen, "%s: store path missing or too long",
                     name ? name : "(null)");
        }
        return WARREN_ERR_INVAL;
    }
    warren__store *s = calloc(1, ops->size);
    if (s == NULL) {
        if (err && errlen) {
            snprintf(err, errlen, "%s: out of memory", name);
        }
        return WARREN_ERR_NOMEM;
    }
    s->ops = ops;
    snprintf(s->path, sizeof s->path, "%s", name);
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
    int rc = ops->open(s, opts, where);
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

int warren__store_open(const char *path, const warren__store_opts *opts,
                       warren__store **out, char *err, size_t errlen) {
    return open_backend(&warren__store_sqlite_ops, path, path, opts, out, err,
                        errlen);
}

int warren__store_open_url(const char *url, const warren__store_opts *opts,
                           warren__store **out, char *err, size_t errlen) {
    char name[PATH_MAX];
    warren_redact_url(url ? url : "", name, sizeof name);
    return open_backend(&warren__store_pg_ops, url ? name : NULL, url, opts,
                        out, err, errlen);
}

int warren__store_open_config(const warren_config *cfg, const char *host,
                              unsigned flags, warren__store **out, char *err,
                              size_t errlen) {
    char name[128] = "localhost";
    if (host == NULL) {
        /* The same host name the worker's claims carry (worker.c). */
        int rc = warren__host_id(name, sizeof name, err, errlen);
        if (rc != 0) {
            return rc;
        }
        host = name;
    }
    warren__store_opts o = {
        .synchronous = cfg->store.synchronous,
        .busy_timeout_ms = cfg->store.busy_timeout_ms,
        .lease_s = cfg->store.lease_s,
        .owner_host = host,
        .owner_pid = (int)getpid(),
        .flags = flags,
    };
    if (cfg->store.url) {
        return warren__store_open_url(cfg->store.url, &o, out, err, errlen);
    }
    return warren__store_open(cfg->store.path, &o, out, err, errlen);
}

/* Forgets the outcomes kept for a replay: the transaction ended. */
static void replay_clear(warren__store *s) {
    for (size_t i = 0; i < s->n_replay; i++) {
        free(s->replay[i].error);
    }
    s->n_replay = 0;
    s->replay_off = 0;
}

/* Keeps one recorded outcome for a replay. Out of memory: replays are
 * turned off for this transaction (it then fails as without them). */
static void replay_keep(warren__store *s, const char *queue, const char *id,
                        warren__outcome_kind kind, const char *error,
                        size_t error_len, int64_t now_ms) {
    if (s->ops->lost == NULL || s->replay_off) {
        return;
    }
    if (s->n_replay == s->cap_replay) {
        size_t cap = s->cap_replay ? s->cap_replay * 2 : 64;
        struct warren__replay *r = realloc(s->replay, cap * sizeof *r);
        if (r == NULL) {
            s->replay_off = 1;
            return;
        }
        s->replay = r;
        s->cap_replay = cap;
    }
    struct warren__replay *r = &s->replay[s->n_replay];
    snprintf(r->queue, sizeof r->queue, "%s", queue);
    snprintf(r->id, sizeof r->id, "%s", id);
    r->kind = kind;
    r->error = NULL;
    r->error_len = error_len;
    r->now_ms = now_ms;
    if (error && (r->error = malloc(error_len + 1)) == NULL) {
        s->replay_off = 1;
        return;
    }
    if (error) {
        memcpy(r->error, error, error_len);
        r->error[error_len] = '\0';
    }
    s->n_replay++;
}

/* 1 if the open transaction was lost with the connection and can be
 * replayed: nothing in it but outcomes store.c kept. */
static int replayable(const warren__store *s) {
    return s->ops->lost != NULL && !s->replay_off && s->ops->lost(s);
}

/* After the connection was lost: waits (up to RESCUE_WAIT_MS in all, from
 * `t0`) for a new one and records the kept outcomes again in a new
 * transaction, left open. Returns 0, or the error that ended the wait (the
 * transaction then rolled back). A record that is not ours any more (taken
 * over meanwhile) is left out, as its first recording would have been. */
static int begin_wait(warren__store *s, int64_t wait_ms);

static int rescue(warren__store *s, const struct timespec *t0) {
    for (;;) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        int64_t left =
            RESCUE_WAIT_MS - ((int64_t)(t.tv_sec - t0->tv_sec) * 1000 +
                              (t.tv_nsec - t0->tv_nsec) / 1000000);
        if (left <= 0) {
            return WARREN_ERR_STORE_BUSY;
        }
        warren__log(WARREN_LOG_WARN, NULL,
                    "%s: the connection to the store was lost with %zu "
                    "outcomes unrecorded; recording them again (waiting up "
                    "to %lld ms more)",
                    s->path, s->n_replay, (long long)left);
        int rc = begin_wait(s, left);
        for (size_t i = 0; rc == 0 && i < s->n_replay; i++) {
            struct warren__replay *r = &s->replay[i];
            int changed = 0;
            rc = s->ops->record(s, r->queue, r->id, r->kind, r->error,
                                r->error_len, r->now_ms, &changed);
        }
        if (rc == 0) {
            return 0;
        }
        if (!(s->ops->lost && s->ops->lost(s))) {
            if (warren__store_in_txn(s)) {
                s->ops->rollback(s);
            }
            return rc;
        }
    }
}

void warren__store_close(warren__store *s) {
    if (s == NULL) {
        return;
    }
    s->ops->close(s);
    replay_clear(s);
    free(s->replay);
    free(s);
}

const char *warren__store_errstr(const warren__store *s) {
    return s ? s->err : "no store";
}

const char *warren__store_path(const warren__store *s) {
    return s ? s->path : "";
}

struct sqlite3 *warren__store_db(warren__store *s) {
    return s && s->ops->db ? s->ops->db(s) : NULL;
}

struct pg_conn *warren__store_pg(warren__store *s) {
    return s && s->ops->pg ? s->ops->pg(s) : NULL;
}

const char *warren__store_backend(const warren__store *s) {
    return s ? s->ops->name : "";
}

int warren__store_in_txn(const warren__store *s) {
    return s && s->ops->in_txn(s);
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

/* Gives a dead id back to a replayed copy of a later generation: a fresh
 * attempt chain (attempt 1, no failure history), owned by us. */
static int revive(warren__store *s, warren__claim *c, int64_t was,
                  int64_t now_ms) {
    int rc = s->ops->revive(s, c, now_ms);
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
    int inserted = c->inserted;
    int rc = 0;
    if (s->ops->insert_many == NULL) {
        rc = s->ops->insert(s, c, now_ms, &inserted);
        if (rc != 0) {
            return rc;
        }
    }
    if (inserted) {
        c->status = WARREN__CLAIM_RUN;
        c->attempt = 1;
        c->deliveries = 1;
        return 0;
    }

    warren__store_row row;
    int found = 0;
    rc = s->ops->read(s, c, now_ms, &row, &found);
    if (rc != 0) {
        return rc;
    }
    if (!found) {
        return set_err(s, WARREN_ERR_STORE,
                       "claim: record vanished inside a transaction");
    }
    int attempts = row.attempts;
    int deliveries = row.deliveries;
    int owner_pid = row.owner_pid;
    int64_t lease_until = row.lease_until;
    /* Leases are judged by the backend's clock (the database's, where
     * several hosts share it). */
    int64_t lease_now = row.now_ms;
    c->first_failed_at_ms = row.first_failed_at;
    warren__store_copy_text(c->last_error, sizeof c->last_error,
                            row.last_error);
    c->attempt = attempts;
    c->deliveries = deliveries;
    int same_host = row.owner_host[0] && strcmp(row.owner_host, s->host) == 0;

    if (strcmp(row.state, "done") == 0) {
        c->status = WARREN__CLAIM_DUPLICATE;
        return 0;
    }
    if (strcmp(row.state, "dead") == 0) {
        if (c->replays > row.replays) {
            return revive(s, c, row.replays, now_ms);
        }
        c->status = WARREN__CLAIM_DEAD;
        return 0;
    }
    if (strcmp(row.state, "retrying") == 0) {
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
        rc = s->ops->take(s, c, attempts + 1, 1, now_ms);
        if (rc == 0) {
            c->status = WARREN__CLAIM_RUN;
            c->attempt = attempts + 1;
            c->deliveries = 1;
        }
        return rc;
    }
    if (strcmp(row.state, "processing") != 0) {
        return set_err(s, WARREN_ERR_STORE_CORRUPT,
                       "claim: record in unknown state \"%s\": %s", row.state,
                       warren__store_fix_corrupt);
    }

    int ours = row.owner_token == s->token;
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
                        : lease_until <= lease_now);
    if (!takeover) {
        return 0; /* BUSY: another live owner holds it */
    }
    /* A takeover is another delivery of the same attempt: the attempt was
     * never finished, so it is not spent, but the crash count grows. */
    rc = s->ops->take(s, c, attempts, deliveries + 1, now_ms);
    if (rc != 0) {
        return rc;
    }
    c->deliveries = deliveries + 1;
    c->taken_over = !ours && lease_until != 0;
    if (!ours) {
        /* take() cleared it: this claim alone reports the crash. */
        memcpy(c->crashed_reason, row.crashed_reason, sizeof c->crashed_reason);
    }
    c->status = max_deliveries > 0 && c->deliveries > max_deliveries
                    ? WARREN__CLAIM_POISON
                    : WARREN__CLAIM_RUN;
    if (!ours) {
        warren__log(WARREN_LOG_DEBUG,
                    &(warren__log_fields){"claim_takeover", c->queue, c->id,
                                          NULL, attempts, -1},
                    "took over a claim of pid %d (%s)", owner_pid,
                    lease_until <= lease_now ? "lease expired" : "owner dead");
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
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc;
    for (;;) {
        rc = joined ? 0 : s->ops->begin(s, "begin claim");
        for (size_t i = 0; i < n; i++) {
            claims[i].inserted = 0;
        }
        if (rc == 0 && s->ops->insert_many != NULL && n > 0) {
            /* One round trip for the new ids of the batch, not one each. */
            rc = s->ops->insert_many(s, claims, n, now_ms);
        }
        for (size_t i = 0; rc == 0 && i < n; i++) {
            rc = claim_one(s, claims, i, max_deliveries, now_ms);
        }
        if (rc == 0) {
            rc = s->ops->commit(s, joined ? "commit outcomes and claims"
                                          : "commit claims");
        }
        /* Joined: the outcomes of handlers that ran were lost with the
         * connection; record them again and claim again on a new one. */
        if (rc != 0 && joined && replayable(s)) {
            rc = rescue(s, &t0);
            if (rc == 0) {
                continue;
            }
        }
        break;
    }
    if (rc != 0) {
        warren__store_rollback(s);
    } else {
        replay_clear(s);
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
    int rc = s->ops->begin(s, "begin renew");
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
        int changed = 0;
        rc = s->ops->renew(s, c, now_ms, &changed);
        if (rc == 0 && changed == 0) {
            c->lost |= 2;
        }
    }
    if (rc == 0) {
        rc = s->ops->commit(s, "commit renew");
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
    warren__store_copy_text(stored, sizeof stored, reason);
    int changed = 0;
    int rc = s->ops->mark_crashed(s, queue, id, owner_pid, stored, &changed);
    if (marked != NULL) {
        *marked = rc == 0 && changed == 1;
    }
    return rc;
}

/* Opens a write transaction, retried while the store is busy for up to
 * `wait_ms` in all (see warren__store_begin_within()); keeps the replay
 * log as it is. */
static int begin_wait(warren__store *s, int64_t wait_ms) {
    struct timespec t0, t, a;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        int rc = warren__store_in_txn(s) ? 0 : s->ops->begin(s, "begin");
        if (rc != WARREN_ERR_STORE_BUSY) {
            return rc;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        int64_t spent = (int64_t)(t.tv_sec - t0.tv_sec) * 1000 +
                        (t.tv_nsec - t0.tv_nsec) / 1000000;
        int64_t this_try = (int64_t)(t.tv_sec - a.tv_sec) * 1000 +
                           (t.tv_nsec - a.tv_nsec) / 1000000;
        if (spent >= wait_ms) {
            return rc;
        }
        /* BEGIN IMMEDIATE waited busy_timeout_ms already; another try
         * follows at once, within the caller's bound. */
        warren__log(WARREN_LOG_DEBUG, NULL,
                    "%s: store busy for %lld ms, still waiting (up to %lld)",
                    s->path, (long long)spent, (long long)wait_ms);
        if (s->busy_timeout_ms == 0) {
            /* no busy handler: do not spin */
            struct timespec ten_ms = {0, 10 * 1000 * 1000};
            nanosleep(&ten_ms, NULL);
        } else if (this_try < 50 && s->ops->lost != NULL) {
            /* A server that refuses at once (restarting): do not spin. */
            struct timespec pause = {0, 100 * 1000 * 1000};
            nanosleep(&pause, NULL);
        }
    }
}

int warren__store_begin_within(warren__store *s, int64_t wait_ms) {
    if (s == NULL) {
        return WARREN_ERR_INVAL;
    }
    if (!warren__store_in_txn(s)) {
        replay_clear(s);
    }
    return begin_wait(s, wait_ms);
}

int warren__store_begin(warren__store *s) {
    if (s == NULL) {
        return WARREN_ERR_INVAL;
    }
    if (warren__store_in_txn(s)) {
        return 0;
    }
    replay_clear(s);
    return s->ops->begin(s, "begin");
}

int warren__store_commit(warren__store *s) {
    if (s == NULL) {
        return WARREN_ERR_INVAL;
    }
    if (!warren__store_in_txn(s)) {
        return 0;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = s->ops->commit(s, "commit");
    /* The commit's answer was lost with the connection: the server either
     * committed or not. Recording again is safe either way: an outcome
     * already committed is not ours any more (not changed). */
    while (rc != 0 && replayable(s)) {
        rc = rescue(s, &t0);
        if (rc == 0) {
            rc = s->ops->commit(s, "commit");
        }
    }
    replay_clear(s);
    return rc;
}

void warren__store_rollback(warren__store *s) {
    if (s == NULL) {
        return;
    }
    replay_clear(s);
    if (!warren__store_in_txn(s)) {
        return;
    }
    s->ops->rollback(s);
}

int warren__store_savepoint(warren__store *s) {
    int rc = warren__store_begin(s);
    if (rc != 0) {
        return rc;
    }
    s->replay_off = 1; /* a handler's SQL joins: nothing to replay */
    return s->ops->savepoint(s);
}

int warren__store_savepoint_release(warren__store *s) {
    if (s == NULL) {
        return WARREN_ERR_INVAL;
    }
    return s->ops->savepoint_release(s);
}

int warren__store_savepoint_rollback(warren__store *s) {
    if (s == NULL) {
        return WARREN_ERR_INVAL;
    }
    int rc = s->ops->savepoint_rollback(s);
    if (rc != 0) {
        return rc;
    }
    return s->ops->savepoint_release(s);
}

int warren__store_record(warren__store *s, const char *queue, const char *id,
                         warren__outcome_kind kind, const char *error,
                         int64_t now_ms) {
    if (s == NULL || queue == NULL || id == NULL) {
        return WARREN_ERR_INVAL;
    }
    switch (kind) {
    case WARREN__OUT_DONE:
    case WARREN__OUT_RETRYING:
    case WARREN__OUT_DEAD:
    case WARREN__OUT_RELEASE:
        break;
    default:
        return set_err(s, WARREN_ERR_INVAL, "record: unknown outcome %d",
                       (int)kind);
    }
    if (!warren__store_in_txn(s)) {
        return set_err(s, WARREN_ERR_INVAL,
                       "record: no open transaction (call begin first)");
    }
    size_t error_len = 0;
    if (error && (kind == WARREN__OUT_RETRYING || kind == WARREN__OUT_DEAD)) {
        error_len = warren__store_utf8_prefix(error, strlen(error),
                                              STORED_ERROR_MAX + 1);
    } else {
        error = NULL;
    }
    int changed = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc =
        s->ops->record(s, queue, id, kind, error, error_len, now_ms, &changed);
    while (rc != 0 && replayable(s)) {
        rc = rescue(s, &t0);
        if (rc == 0) {
            rc = s->ops->record(s, queue, id, kind, error, error_len, now_ms,
                                &changed);
        }
    }
    if (rc != 0) {
        return rc;
    }
    replay_keep(s, queue, id, kind, error, error_len, now_ms);
    if (changed == 0) {
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
    int rc = s->ops->begin(s, "begin prune");
    if (rc != 0) {
        return rc;
    }
    int n = 0;
    rc = s->ops->prune(s, now_ms - (int64_t)retention_s * 1000, limit, &n);
    if (rc == 0) {
        rc = s->ops->commit(s, "commit prune");
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
    char state[16];
    int64_t lease_until = 0, lease_now = now_ms;
    int found = 0;
    int rc = s->ops->lookup(s, queue, id, "forget", state, &lease_until,
                            &lease_now, &found);
    if (rc != 0) {
        return rc;
    }
    if (!found) {
        return set_err(s, WARREN_ERR_NOT_FOUND, "forget: no record of %s/%s",
                       queue, id);
    }
    if (strcmp(state, "processing") == 0 && lease_until > lease_now) {
        return set_err(s, WARREN_ERR_STORE_BUSY,
                       "forget: %s/%s is being processed (lease for another "
                       "%lld ms); try again later",
                       queue, id, (long long)(lease_until - lease_now));
    }
    return s->ops->delete_key(s, queue, id);
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
    int rc = s->ops->begin(s, "begin forget");
    if (rc != 0) {
        return rc;
    }
    rc = forget_in_txn(s, queue, id, now_ms);
    if (rc == 0) {
        rc = s->ops->commit(s, "commit forget");
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
    for (size_t i = 0; i < n; i++) {
        char state[16];
        int64_t lease_until = 0, lease_now = now_ms;
        int found = 0;
        results[i] = 0;
        int rc = s->ops->lookup(s, queues[i], ids[i], "look up claims", state,
                                &lease_until, &lease_now, &found);
        if (rc != 0) {
            return rc;
        }
        if (found && strcmp(state, "processing") == 0 &&
            lease_until > lease_now) {
            results[i] = WARREN_ERR_STORE_BUSY;
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
    return s->ops->stats(s, fn, user);
}

int warren__store_each(warren__store *s,
                       int (*fn)(const warren__store_entry *r, void *user),
                       void *user) {
    if (s == NULL || fn == NULL) {
        return WARREN_ERR_INVAL;
    }
    return s->ops->each(s, fn, user);
}

int warren__store_put(warren__store *s, const warren__store_entry *r,
                      int *inserted) {
    static const char *const states[] = {"processing", "done", "retrying",
                                         "dead"};
    if (inserted) {
        *inserted = 0;
    }
    if (s == NULL || r == NULL || inserted == NULL) {
        return WARREN_ERR_INVAL;
    }
    if (!warren__store_in_txn(s)) {
        return set_err(s, WARREN_ERR_INVAL,
                       "put: no open transaction (call begin first)");
    }
    if (r->queue == NULL || r->queue[0] == '\0' || r->id == NULL ||
        r->id[0] == '\0' || strlen(r->id) > WARREN__ID_MAX) {
        return set_err(s, WARREN_ERR_INVAL,
                       "put: a record needs a queue and an id of 1 to %d "
                       "bytes",
                       WARREN__ID_MAX);
    }
    int known = 0;
    for (size_t i = 0; r->state && i < sizeof states / sizeof states[0]; i++) {
        known |= strcmp(r->state, states[i]) == 0;
    }
    if (!known) {
        return set_err(s, WARREN_ERR_INVAL,
                       "put: %s/%s: state \"%s\" is not one of processing, "
                       "done, retrying, dead",
                       r->queue, r->id, r->state ? r->state : "(none)");
    }
    if (r->attempts < 1 || r->deliveries < 0 || r->replays < 0) {
        return set_err(s, WARREN_ERR_INVAL,
                       "put: %s/%s: attempts must be >= 1, deliveries and "
                       "replays >= 0",
                       r->queue, r->id);
    }
    warren__store_entry c = *r;
    char last_error[STORED_ERROR_MAX], crashed[STORED_ERROR_MAX];
    if (c.last_error) {
        warren__store_copy_text(last_error, sizeof last_error, c.last_error);
        c.last_error = last_error;
    }
    if (c.crashed_reason) {
        warren__store_copy_text(crashed, sizeof crashed, c.crashed_reason);
        c.crashed_reason = crashed;
    }
    return s->ops->put(s, &c, inserted);
}

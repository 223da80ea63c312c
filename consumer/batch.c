/*
 * batch.c - one batch through warren's order: classify and claim, run the
 * handlers, have the copies published (copies.c), record the outcomes and
 * commit them, and only then acknowledge.
 *
 * Group commit saves a sync per batch: when more deliveries are already
 * buffered at step 4, they are read as the next batch and claimed inside
 * the same transaction (claim_next()), so one commit covers this batch's
 * outcomes and the next one's claims; with nothing buffered the outcomes
 * commit alone at once. Acks are coalesced across batches (ACK_EVERY) but
 * never sent before their outcomes commit.
 * A failure at any step leaves the affected originals unacknowledged, so
 * the broker redelivers them and the store keeps them from running twice.
 */
#include "worker_impl.h"

#include "backoff.h"
#include "failpoint.h"
#include "log.h"
#include "msgid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Bodies larger than this are drained unread; the broker's own default
 * max_message_size is 128 MiB, so this is only a guard. */
#define HARD_BODY_LIMIT ((uint64_t)256 << 20)

/* HARD_BODY_LIMIT, or in a failpoint build (tests only) the value of
 * WARREN_TEST_HARD_BODY_LIMIT, so that a test can send a body above the
 * limit without moving 256 MiB. */
static uint64_t hard_body_limit(void) {
#ifdef WARREN_FAILPOINTS
    const char *v = getenv("WARREN_TEST_HARD_BODY_LIMIT");
    if (v != NULL && v[0] != '\0') {
        return strtoull(v, NULL, 10);
    }
#endif
    return HARD_BODY_LIMIT;
}
/* A batch reads bodies into memory until they reach this or
 * max_message_bytes, whichever is larger (see batch_bytes()). */
#define BATCH_BYTES_MIN ((uint64_t)1 << 20)
/* A body buffer grown past this is given back after its batch. */
#define BODY_KEEP_BYTES ((size_t)1 << 20)
#define POLL_MS 200
/* How long outcomes of handlers that ran wait for a busy store before the
 * batch is given up: handing it back would run those handlers again. */
#define RECORD_WAIT_MS 60000

int warren__batch_alloc(warren__batch *b, int max) {
    b->slots = calloc((size_t)max, sizeof *b->slots);
    b->items = calloc((size_t)max, sizeof *b->items);
    b->claims = calloc((size_t)max, sizeof *b->claims);
    return b->slots && b->items && b->claims ? 0 : WARREN_ERR_NOMEM;
}

void warren__batch_release(warren__batch *b, int max) {
    for (int i = 0; b->slots && i < max; i++) {
        warren__delivery_free(&b->slots[i]);
    }
}

void warren__batch_free(warren__batch *b) {
    free(b->slots);
    free(b->items);
    free(b->claims);
    b->slots = NULL;
    b->items = NULL;
    b->claims = NULL;
}

static void count(warren_worker *w, warren_stat which) {
    atomic_fetch_add_explicit(&w->ws->counters[which], 1, memory_order_relaxed);
}

static void log_item(warren_worker *w, const struct warren_msg *m,
                     const item *it, warren_log_level level, int64_t ms) {
    warren__log_fields f = {"message",   w->c->queue, it->id[0] ? it->id : NULL,
                            it->outcome, it->attempt, ms};
    char via[32] = ""; /* which handler ran, once there are two */
    if (w->fallback && it->handler) {
        snprintf(via, sizeof via, " (handler %s)", it->handler);
    }
    if (it->reason[0]) {
        warren__log(level, &f, "%s%s: %s", it->outcome, via, it->reason);
    } else {
        warren__log(level, &f, "%s%s", it->outcome, via);
    }
    (void)m;
}

static void decide_failure(warren_worker *w, item *it, warren_result r,
                           const warren_ctx *ctx) {
    const warren__retry_cfg *rc = &w->c->retry;
    snprintf(it->reason, sizeof it->reason, "%s",
             ctx->error[0] ? ctx->error
                           : (r == WARREN_DEAD ? "handler returned DEAD"
                                               : "handler returned RETRY"));
    if (r == WARREN_DEAD) {
        it->fate = FATE_DEAD;
        return;
    }
    /* A failure a retry could follow costs a budget token (DEAD, a
     * permanent failure, does not: gRPC's fatal status codes). A crash
     * reported by the store does not either: no handler ran here, and the
     * budget (like the breaker) judges the handler's results. */
    int within_budget = it->crashed || warren__retrybudget_failure(&w->budget);
    int64_t now = warren__now_ms();
    if (it->first_failed_at_ms == 0) {
        it->first_failed_at_ms = now;
    }
    if (it->attempt >= rc->max_attempts) {
        char last[WARREN__ERROR_MAX + 1];
        snprintf(last, sizeof last, "%s", it->reason);
        snprintf(it->reason, sizeof it->reason, "gave up after %d attempts: %s",
                 it->attempt, last);
        it->fate = FATE_DEAD;
        return;
    }
    if (rc->max_age_s > 0 &&
        now - it->first_failed_at_ms >= (int64_t)rc->max_age_s * 1000) {
        char last[WARREN__ERROR_MAX + 1];
        snprintf(last, sizeof last, "%s", it->reason);
        snprintf(it->reason, sizeof it->reason,
                 "gave up: first failed %llds ago (max_age_s %u): %s",
                 (long long)((now - it->first_failed_at_ms) / 1000),
                 rc->max_age_s, last);
        it->fate = FATE_DEAD;
        return;
    }
    /* In pause mode a failure of the fallback still retries: the breaker
     * is open already, and a message handed back would come straight back
     * to the fallback. */
    int by_fallback =
        it->handler != NULL && strcmp(it->handler, "fallback") == 0;
    if (!within_budget &&
        (rc->budget.when_exhausted == WARREN__BUDGET_DEAD || !by_fallback)) {
        char last[WARREN__ERROR_MAX + 1];
        snprintf(last, sizeof last, "%s", it->reason);
        snprintf(it->reason, sizeof it->reason,
                 "retry budget exhausted (%.1f of %.0f tokens, retries stop "
                 "at half): %s",
                 w->budget.tokens, w->budget.max_tokens, last);
        if (rc->budget.when_exhausted == WARREN__BUDGET_DEAD) {
            it->fate = FATE_DEAD;
        } else {
            /* Back to the queue as it came, no attempt spent, and the
             * worker stops taking messages for breaker.open_s. */
            it->fate = FATE_REQUEUE;
            warren__breaker_trip(&w->breaker, warren__mono_ms(),
                                 "retry budget exhausted");
        }
        return;
    }
    it->fate = FATE_RETRY;
    if (ctx->retry_after_ms >= 0) {
        it->delay_ms = ctx->retry_after_ms > WARREN__DELAY_MAX_MS
                           ? WARREN__DELAY_MAX_MS
                           : (uint32_t)ctx->retry_after_ms;
    } else {
        it->delay_ms = warren__backoff_delay_ms(&rc->backoff, it->attempt,
                                                warren__rng_uniform());
    }
}

/* Restores the original exchange and routing key of a message that came
 * back through the delay cascade (whose own routing key encodes the delay). */
static void restore_route(warren__delivery *d) {
    const char *v;
    size_t len;
    if (warren_msg_header_str(&d->msg, "x-warren-exchange", &v, &len) == 0 &&
        len < sizeof d->exchange) {
        memcpy(d->exchange, v, len);
        d->exchange[len] = '\0';
    }
    if (warren_msg_header_str(&d->msg, "x-warren-routing-key", &v, &len) == 0 &&
        len < sizeof d->routing_key) {
        memcpy(d->routing_key, v, len);
        d->routing_key[len] = '\0';
    }
}

/* Nack mode: this queue's `rejected` entry of x-death counts the failed
 * attempts, and its time (seconds; the broker keeps it from the first
 * rejection) is the first failure. Raises it->attempt and sets the first
 * failure when x-death says more; the store's record, when there is one,
 * still decides (apply_claims()). */
static void xdeath_attempt(warren_worker *w, const struct warren_msg *m,
                           item *it) {
    const warren__field *xd = warren__table_find(m->headers, "x-death");
    if (xd == NULL || xd->kind != WARREN__FIELD_ARRAY) {
        return;
    }
    size_t qlen = strlen(w->c->queue);
    for (int i = 0; i < xd->value.array.num_entries; i++) {
        const warren__field *e = &xd->value.array.entries[i];
        if (e->kind != WARREN__FIELD_TABLE) {
            continue;
        }
        const warren__field *q = warren__table_find(&e->value.table, "queue");
        const warren__field *r = warren__table_find(&e->value.table, "reason");
        const warren__field *c = warren__table_find(&e->value.table, "count");
        const warren__field *t = warren__table_find(&e->value.table, "time");
        if (q == NULL || q->kind != WARREN__FIELD_UTF8 ||
            q->value.bytes.len != qlen ||
            memcmp(q->value.bytes.bytes, w->c->queue, qlen) != 0 || r == NULL ||
            r->kind != WARREN__FIELD_UTF8 || r->value.bytes.len != 8 ||
            memcmp(r->value.bytes.bytes, "rejected", 8) != 0 || c == NULL) {
            continue;
        }
        int64_t n = c->kind == WARREN__FIELD_I64   ? c->value.i64
                    : c->kind == WARREN__FIELD_I32 ? c->value.i32
                                                   : 0;
        if (n >= 1 && n < 1000000 && n + 1 > it->attempt) {
            it->attempt = (int)n + 1;
        }
        if (t != NULL && t->kind == WARREN__FIELD_TIMESTAMP &&
            t->value.u64 > 0 && t->value.u64 < (uint64_t)INT64_MAX / 1000 &&
            (it->first_failed_at_ms == 0 ||
             (int64_t)t->value.u64 * 1000 < it->first_failed_at_ms)) {
            it->first_failed_at_ms = (int64_t)t->value.u64 * 1000;
        }
        return;
    }
}

/* Step 0: classify each delivery before the store sees it. */
static int classify(warren_worker *w, const warren__batch *b, int n,
                    int carried_n, int *n_claims) {
    *n_claims = 0;
    for (int i = 0; i < n; i++) {
        warren__delivery *d = &b->slots[i];
        struct warren_msg *m = &d->msg;
        item *it = &b->items[i];
        char why[WARREN__ERROR_MAX];
        /* A held delivery classified again had its route restored already. */
        int carried = i < carried_n;
        int from_cascade = carried ? it->from_cascade
                                   : strncmp(d->exchange, "warren.", 7) == 0;
        memset(it, 0, sizeof *it);
        it->claim = -1;
        it->from_cascade = from_cascade;
        m->queue = w->c->queue;
        it->attempt = 1;
        if (from_cascade) {
            /* warren's own headers are trusted only on a copy back from
             * its cascade: a producer's would skip attempts or age. */
            restore_route(d);
            it->attempt = (int)header_int(m, "x-warren-attempt", 1, 1000000, 1);
            it->first_failed_at_ms =
                header_int(m, "x-warren-first-failed-at", 1, INT64_MAX, 0);
        }
        if (w->c->retry.mode == WARREN__RETRY_NACK) {
            /* Broker dead-lettering changes no header of warren's: without
             * a store record (dedup off, no id) only x-death counts. */
            xdeath_attempt(w, m, it);
        }
        if (!carried) {
            count(w, WARREN_STAT_RECEIVED);
        }
        if (d->too_large || m->body_size_announced > w->c->max_message_bytes) {
            it->fate = FATE_DEAD;
            snprintf(it->reason, sizeof it->reason,
                     "message too large: %llu bytes > max_message_bytes %llu",
                     (unsigned long long)m->body_size_announced,
                     (unsigned long long)w->c->max_message_bytes);
            /* Still recorded under its id when one is at hand (from the
             * property only: the body was not read). The id policy's own
             * checks apply, so an id with a NUL is not cut short. */
            if (w->store && w->c->id_source == WARREN__ID_PROPERTY &&
                warren__msgid_extract(w->c, m, it->id, why, sizeof why) !=
                    WARREN__ID_USE) {
                it->id[0] = '\0';
            }
        } else if (w->store == NULL) {
            it->id[0] = '\0';
            if (m->message_id_prop) {
                snprintf(it->id, sizeof it->id, "%s", m->message_id_prop);
            }
            continue;
        } else {
            switch (warren__msgid_extract(w->c, m, it->id, why, sizeof why)) {
            case WARREN__ID_USE:
                break;
            case WARREN__ID_NONE:
                it->id[0] = '\0';
                warren__log(WARREN_LOG_WARN,
                            &(warren__log_fields){"no_dedup", w->c->queue, NULL,
                                                  NULL, -1, -1},
                            "running without dedup: %s", why);
                continue;
            case WARREN__ID_REJECT:
                it->id[0] = '\0';
                it->fate = FATE_DEAD;
                snprintf(it->reason, sizeof it->reason, "%s", why);
                continue;
            }
        }
        if (it->id[0] == '\0' || w->store == NULL) {
            continue;
        }
        /* The store sees a claim for every id it will get an outcome for. */
        warren__claim *cl = &b->claims[*n_claims];
        memset(cl, 0, sizeof *cl);
        cl->queue = w->c->queue;
        cl->id = it->id;
        if (w->c->retry.mode == WARREN__RETRY_REPUBLISH &&
            (from_cascade || m->redelivered)) {
            /* A copy, or a delivery seen before (the original after a lost
             * ack): the store tells it from the next attempt's copy. */
            cl->copy_attempt = it->attempt;
        }
        /* A replayed copy carries a higher generation than its dead record:
         * the store runs it afresh, whichever store the replay looked at. */
        cl->replays = header_int(m, "x-warren-replays", 0, INT64_MAX, 0);
        it->claim = (*n_claims)++;
    }
    return 0;
}

/* Turns the store's answer to each claim into the item's fate. */
static void apply_claims(warren_worker *w, const warren__batch *b, int n) {
    for (int i = 0; i < n; i++) {
        item *it = &b->items[i];
        if (it->claim < 0) {
            continue;
        }
        warren__claim *cl = &b->claims[it->claim];
        if (it->fate == FATE_DEAD) {
            /* too large: dead whatever the claim says, unless done/busy */
            if (cl->status == WARREN__CLAIM_DUPLICATE ||
                cl->status == WARREN__CLAIM_DEAD) {
                it->fate = FATE_SKIP;
            } else if (cl->status == WARREN__CLAIM_BUSY) {
                it->fate = FATE_DEFER;
            }
            continue;
        }
        it->attempt = cl->attempt;
        if (cl->first_failed_at_ms) {
            it->first_failed_at_ms = cl->first_failed_at_ms;
        }
        switch (cl->status) {
        case WARREN__CLAIM_RUN:
            if (cl->crashed_reason[0] && it->fate == FATE_NONE) {
                /* Its handler was running when its last worker died: that
                 * run was this attempt, spent now without running it again,
                 * so a handler that always hangs or crashes goes through
                 * the retry policy (backoff, then the DLQ) like one that
                 * fails. */
                warren_ctx crash;
                warren__ctx_reset(&crash, 0);
                snprintf(crash.error, sizeof crash.error, "%s",
                         cl->crashed_reason);
                it->crashed = 1;
                decide_failure(w, it, WARREN_RETRY, &crash);
            }
            break;
        case WARREN__CLAIM_DUPLICATE:
        case WARREN__CLAIM_DEAD:
            it->fate = FATE_SKIP;
            break;
        case WARREN__CLAIM_BUSY:
            it->fate = FATE_DEFER;
            if (cl->copy_attempt > 0) {
                /* A copy keeps its own attempt number through the defer:
                 * the copy of attempt N+1 can arrive while the worker that
                 * published it has not committed `retrying` yet, and a
                 * defer copy stamped with the record's N would come back
                 * as a stale delivery and be acked: the chain lost. */
                it->attempt = cl->copy_attempt;
            }
            break;
        case WARREN__CLAIM_POISON:
            it->fate = FATE_DEAD;
            snprintf(it->reason, sizeof it->reason,
                     "poison: delivered %d times without an outcome%s%s",
                     cl->deliveries, cl->last_error[0] ? "; last error: " : "",
                     cl->last_error);
            break;
        }
    }
}

/* Step 1: claims, committed before any handler runs. */
static int claim(warren_worker *w, const warren__batch *b, int n,
                 int n_claims) {
    if (n_claims == 0) {
        return 0;
    }
    int rc = warren__store_claim_batch(w->store, b->claims, (size_t)n_claims,
                                       w->c->max_deliveries, warren__now_ms());
    if (rc != 0) {
        return rc;
    }
    w->lease_mono_ms = warren__mono_ms();
    apply_claims(w, b, n);
    return 0;
}

/* Waits for a rate-limit token. Returns 0 with one taken, or -1 if asked
 * to stop first. Heartbeats are answered while waiting, since at a low
 * rate a single wait can outlast them. */
static int wait_for_token(warren_worker *w) {
    int64_t last_service = warren__mono_ms();
    for (;;) {
        int64_t now = warren__mono_ms();
        int64_t wait = warren__ratelimit_take(&w->rate, now);
        if (wait == 0) {
            return 0;
        }
        if (w->stop) {
            return -1;
        }
        if (now - last_service >= TOKEN_SERVICE_MS) {
            warren__session_service(w->sess);
            last_service = now;
        }
        if (wait > TOKEN_STEP_MS) {
            wait = TOKEN_STEP_MS;
        }
        struct timespec ts = {0, (long)wait * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Copies the breaker's state where the supervisor can read it. */
void warren__worker_publish_breaker(warren_worker *w) {
    atomic_store_explicit(&w->ws->breaker_state,
                          (int)warren__breaker_state_of(&w->breaker),
                          memory_order_relaxed);
    atomic_store_explicit(
        &w->ws->breaker_opened,
        warren__breaker_transitions(&w->breaker, WARREN__BREAKER_OPEN),
        memory_order_relaxed);
    for (int to = 0; to < 3; to++) {
        atomic_store_explicit(
            &w->ws->breaker_transitions[to],
            warren__breaker_transitions(&w->breaker, (warren__breaker_state)to),
            memory_order_relaxed);
    }
}

/* Extends the leases of items [from, n) that are still to run, once a
 * third of the lease has passed since they were taken (handlers run one
 * after another, so a batch can outlive its leases). An item whose claim
 * was taken over meanwhile is not run: the other worker holds a delivery
 * of it and its outcome. A busy store is tried again before the next
 * handler. */
static void renew_leases(warren_worker *w, const warren__batch *b, int from,
                         int n) {
    int64_t lease_ms = (int64_t)w->cfg->store.lease_s * 1000;
    int k = 0;
    if (w->store == NULL ||
        warren__mono_ms() - w->lease_mono_ms < lease_ms / 3) {
        return;
    }
    /* Claims given back behind a suspect stay given back. */
    for (int i = from; i < n; i++) {
        const item *it = &b->items[i];
        if (it->claim >= 0 && !it->released &&
            (it->fate == FATE_NONE || it->fate == FATE_DEAD || it->crashed)) {
            w->claim_scratch[k++] = b->claims[it->claim];
        }
    }
    if (k == 0) {
        return;
    }
    int64_t t = warren__mono_ms();
    if (warren__store_renew(w->store, w->claim_scratch, (size_t)k,
                            warren__now_ms()) != 0) {
        warren__log(WARREN_LOG_DEBUG,
                    &(warren__log_fields){"lease_renew", w->c->queue, NULL,
                                          NULL, -1, -1},
                    "renewing leases failed, trying again before the next "
                    "handler: %s",
                    warren__store_errstr(w->store));
        return;
    }
    w->lease_mono_ms = t;
    k = 0;
    for (int i = from; i < n; i++) {
        item *it = &b->items[i];
        if (it->claim < 0 || it->released ||
            (it->fate != FATE_NONE && it->fate != FATE_DEAD && !it->crashed)) {
            continue;
        }
        if (!w->claim_scratch[k++].lost) {
            continue;
        }
        b->claims[it->claim].lost = 1;
        it->fate = FATE_SKIP;
        warren__log(WARREN_LOG_WARN,
                    &(warren__log_fields){"claim_lost", w->c->queue, it->id,
                                          NULL, it->attempt, -1},
                    "claim lost before its handler ran (lease expired and "
                    "taken over): not run here");
    }
}

/* Ends the handler's own store transaction (opened by warren_ctx_db()):
 * on ACK its writes and its `done` record commit together, now, so the
 * write lock is held for one handler only and never over a confirm wait;
 * otherwise they are rolled back. Returns the result to act on; sets the
 * item's fate itself when the claim turned out lost (SKIP: writes
 * discarded) or the commit failed (REQUEUE). */
static warren_result finish_handler_txn(warren_worker *w, item *it,
                                        warren_result r) {
    warren__store *s = w->store;
    if (!warren__store_in_txn(s)) {
        /* The handler's SQL ended the transaction (ROLLBACK, INSERT OR
         * ROLLBACK, or SQLite's own rollback on a full disk, an I/O error
         * or no memory): its writes are gone, so it must run again. */
        char why[WARREN__ERROR_MAX + 1];
        snprintf(why, sizeof why,
                 "the handler's SQL ended the store transaction (ROLLBACK, "
                 "or SQLite rolled it back): its writes were lost%s%s",
                 w->ctx.error[0] ? "; " : "", w->ctx.error);
        snprintf(w->ctx.error, sizeof w->ctx.error, "%s", why);
        return r == WARREN_ACK ? WARREN_RETRY : r;
    }
    if (r != WARREN_ACK) {
        warren__store_rollback(s);
        return r;
    }
    int rc = warren__store_savepoint_release(s);
    if (rc != 0) {
        warren__store_rollback(s);
        warren_ctx_set_error(&w->ctx,
                             "the handler released or rolled back warren's "
                             "savepoint itself: its writes were discarded");
        return WARREN_RETRY;
    }
    rc = warren__store_record(s, w->c->queue, it->id, WARREN__OUT_DONE, NULL,
                              warren__now_ms());
    if (rc == 0) {
        rc = warren__store_commit(s);
    }
    if (rc == 0) {
        it->recorded = 1;
        return WARREN_ACK;
    }
    warren__store_rollback(s);
    if (rc == WARREN_ERR_NOT_FOUND) {
        it->fate = FATE_SKIP;
        warren__log(WARREN_LOG_WARN,
                    &(warren__log_fields){"claim_lost", w->c->queue, it->id,
                                          NULL, it->attempt, -1},
                    "claim lost while the handler ran: its store writes are "
                    "discarded, the worker that took it over runs it");
    } else {
        it->fate = FATE_REQUEUE;
        warren__log(WARREN_LOG_ERROR,
                    &(warren__log_fields){"store_error", w->c->queue, it->id,
                                          NULL, it->attempt, -1},
                    "committing the handler's writes failed, they are rolled "
                    "back and the message is handed back: %s",
                    warren__store_errstr(s));
    }
    return WARREN_ACK;
}

/* Step 2: handlers. */
static void run_handlers(warren_worker *w, const warren__batch *b, int n,
                         int rest) {
    for (int i = 0; i < n; i++) {
        item *it = &b->items[i];
        struct warren_msg *m = &b->slots[i].msg;
        if (it->fate != FATE_NONE) {
            continue;
        }
        if (!w->stop) {
            /* to the end of the batch, past this segment */
            renew_leases(w, b, i, rest);
            if (it->fate != FATE_NONE) {
                continue;
            }
        }
        if (w->stop) {
            /* Asked to stop: what has not started goes back untouched. */
            it->fate = FATE_REQUEUE;
            continue;
        }
        int allowed = warren__breaker_allow(&w->breaker, warren__mono_ms());
        uint64_t generation = warren__breaker_generation(&w->breaker);
        warren__worker_publish_breaker(w);
        if (!allowed && w->fallback == NULL) {
            /* The breaker opened during this batch: the rest is held, its
             * claims released, no attempt spent; not handed back, since a
             * quorum queue would count each return against its
             * x-delivery-limit. */
            it->fate = FATE_HOLD;
            w->n_held++;
            continue;
        }
        /* Open with a fallback: it runs instead, with the same result
         * semantics, and its outcomes say nothing to the breaker. */
        warren__handler *h = allowed ? w->handler : w->fallback;
        it->handler = allowed ? "primary" : "fallback";
        if (wait_for_token(w) != 0) {
            if (allowed) { /* neither success nor failure */
                warren__breaker_done(&w->breaker, generation,
                                     WARREN__BREAKER_CANCELLED,
                                     warren__mono_ms());
            }
            it->handler = NULL;
            it->fate = FATE_REQUEUE;
            continue;
        }
        int64_t deadline =
            w->c->timeout_s > 0
                ? warren__now_ms() + (int64_t)(w->c->timeout_s * 1000)
                : 0;
        warren__ctx_reset(&w->ctx, deadline);
        w->ctx.store = it->claim >= 0 ? w->store : NULL;
        m->id = it->id[0] ? it->id : NULL;
        m->attempt = it->attempt;
        int64_t t0_us = warren__mono_us(), t0 = t0_us / 1000;
        /* Published for the supervisor, which ends this worker if an
         * in-process handler overstays (an exec handler is ended sooner by
         * handlers/exec.c itself). */
        atomic_store_explicit(&w->ws->handler_deadline_mono_ms,
                              deadline ? t0 + (int64_t)(w->c->timeout_s * 1000)
                                       : 0,
                              memory_order_relaxed);
        /* And which id runs: if this worker dies now, the supervisor tells
         * the store, and the attempt is spent (apply_claims()). */
        if (it->claim >= 0) {
            memcpy(w->ws->running_id, it->id, sizeof it->id);
            atomic_store_explicit(&w->ws->running, 1, memory_order_release);
        }
        /* The handler may outlast 2 x heartbeat_s: the session's helper
         * thread keeps heartbeats going meanwhile, and this thread leaves
         * the connection alone until end(). */
        warren__session_keepalive_begin(w->sess);
        warren_result r = warren__handler_call(h, m, &w->ctx);
        warren__session_keepalive_end(w->sess);
        int64_t us = warren__mono_us() - t0_us;
        int64_t ms = us / 1000;
        atomic_store_explicit(&w->ws->handler_deadline_mono_ms, 0,
                              memory_order_relaxed);
        atomic_store_explicit(&w->ws->running, 0, memory_order_relaxed);
        warren__wstats_latency(w->ws, us);
        atomic_fetch_add_explicit(&w->ws->handler_calls[allowed ? 0 : 1], 1,
                                  memory_order_relaxed);
        if (w->ctx.db_used) {
            r = finish_handler_txn(w, it, r);
        }
        if (r != WARREN_ACK) {
            atomic_fetch_add_explicit(&w->ws->handler_failures, 1,
                                      memory_order_relaxed);
        } else {
            warren__retrybudget_success(&w->budget);
        }
        /* A timed-out exec handler comes back as RETRY: every result but
         * ACK is a failure to the breaker. */
        if (allowed) {
            warren__breaker_done(&w->breaker, generation,
                                 r != WARREN_ACK ? WARREN__BREAKER_FAILED
                                                 : WARREN__BREAKER_SUCCEEDED,
                                 t0 + ms);
        }
        warren__worker_publish_breaker(w);
        if (it->fate != FATE_NONE) {
            /* settled by finish_handler_txn() */
        } else if (r == WARREN_ACK) {
            it->fate = FATE_ACK;
        } else {
            decide_failure(w, it, r, &w->ctx);
        }
        if (w->cfg->broker.heartbeat_s > 0 && ms > 1000) {
            /* A slow handler: answer heartbeats before the next one. */
            warren__session_service(w->sess);
        }
    }
}

/* Opens the outcome transaction. These outcomes belong to handlers that
 * ran: a busy store is waited for (RECORD_WAIT_MS, heartbeats answered by
 * the session's helper thread meanwhile), since handing the batch back
 * would run them again. */
static int begin_outcomes(warren_worker *w) {
    int rc = warren__store_begin(w->store);
    if (rc != WARREN_ERR_STORE_BUSY) {
        return rc;
    }
    warren__log(
        WARREN_LOG_INFO,
        &(warren__log_fields){"store_busy", w->c->queue, NULL, NULL, -1, -1},
        "store busy at recording outcomes: waiting up to %d ms",
        RECORD_WAIT_MS);
    warren__session_keepalive_begin(w->sess);
    rc = warren__store_begin_within(w->store, RECORD_WAIT_MS);
    warren__session_keepalive_end(w->sess);
    return rc;
}

/* Step 4: outcomes, in one transaction (a handler's writes committed with
 * its own `done` already, see finish_handler_txn()). The transaction is
 * left open: commit_outcomes() or claim_next() commits it. On error it is
 * rolled back. */
static int record_outcomes(warren_worker *w, const warren__batch *b, int n) {
    int rc = 0, any = warren__store_in_txn(w->store);
    int64_t now = warren__now_ms();
    for (int i = 0; i < n; i++) {
        item *it = &b->items[i];
        if (it->claim < 0 || it->fate == FATE_SKIP || it->fate == FATE_DEFER ||
            it->recorded) {
            continue;
        }
        warren__outcome_kind k;
        switch (it->fate) {
        case FATE_ACK:
            k = WARREN__OUT_DONE;
            break;
        case FATE_RETRY:
            k = WARREN__OUT_RETRYING;
            break;
        case FATE_DEAD:
            k = WARREN__OUT_DEAD;
            break;
        default:
            k = WARREN__OUT_RELEASE;
            break;
        }
        if (!any) {
            rc = begin_outcomes(w);
            if (rc != 0) {
                return rc;
            }
            any = 1;
        }
        rc = warren__store_record(w->store, w->c->queue, it->id, k,
                                  it->reason[0] ? it->reason : NULL, now);
        if (rc == WARREN_ERR_NOT_FOUND) {
            /* Our claim was taken over (lease expired while we ran): the
             * other worker owns the outcome now. A handler's store writes
             * never get here: they commit with their own `done` or not at
             * all (finish_handler_txn()). */
            warren__log(WARREN_LOG_WARN,
                        &(warren__log_fields){"claim_lost", w->c->queue, it->id,
                                              NULL, it->attempt, -1},
                        "claim lost before its outcome was recorded");
            rc = 0;
        } else if (rc != 0) {
            warren__store_rollback(w->store);
            return rc;
        }
    }
    return 0;
}

static int commit_outcomes(warren_worker *w) {
    int rc = warren__store_commit(w->store);
    if (rc != 0) {
        warren__store_rollback(w->store);
    }
    return rc;
}

/* Sends the coalesced multiple-ack, if any. */
int warren__worker_flush_acks(warren_worker *w) {
    if (w->ack_tag == 0) {
        return 0;
    }
    uint64_t tag = w->ack_tag;
    w->ack_tag = 0;
    w->ack_count = 0;
    return warren__session_ack(w->sess, tag, 1);
}

/* Hands back every unsettled delivery up to `tag` (a failed commit, a busy
 * store). Acks still owed for earlier, committed batches go out first, or
 * the multiple-nack would requeue them too. */
int warren__worker_nack_through(warren_worker *w, uint64_t tag) {
    int rc = warren__worker_flush_acks(w);
    if (rc == 0) {
        rc = warren__session_nack(w->sess, tag, 1, 1);
    }
    if (rc == 0) {
        w->n_held = 0; /* handed back too: held ones are never after `tag` */
    }
    return rc;
}

/* Step 5: acknowledgements, after the outcomes are durable. Rejections go
 * first, one by one; then a single multiple-ack settles everything else,
 * because every earlier delivery on the channel is settled already (or
 * covered by the ack still owed) and later ones have higher tags. That ack
 * is coalesced across batches (ACK_EVERY); delaying an ack never breaks the
 * order outcome-committed-before-ack. */
static int settle(warren_worker *w, const warren__batch *b, int n) {
    uint64_t last_ack = 0;
    int rc = 0, acked = 0;
    int nack_mode = w->c->retry.mode == WARREN__RETRY_NACK;
    for (int i = 0; i < n && rc == 0; i++) {
        item *it = &b->items[i];
        uint64_t tag = b->slots[i].msg.delivery_tag;
        if (it->fate == FATE_REQUEUE) {
            rc = warren__session_nack(w->sess, tag, 0, 1);
        } else if (it->fate == FATE_HOLD) {
            continue;
        } else if (w->n_held > 0 && !(nack_mode && (it->fate == FATE_RETRY ||
                                                    it->fate == FATE_DEFER))) {
            /* One by one while some are held below it. */
            rc = warren__session_ack(w->sess, tag, 0);
        } else if (nack_mode &&
                   (it->fate == FATE_RETRY || it->fate == FATE_DEFER)) {
            /* The broker dead-letters it through <queue>.retry and back. */
            rc = warren__session_nack(w->sess, tag, 0, 0);
        } else {
            last_ack = tag;
            acked++;
        }
    }
    if (rc == 0 && last_ack != 0) {
        if (w->ack_tag == 0) {
            w->ack_since_ms = warren__mono_ms();
        }
        w->ack_tag = last_ack;
        w->ack_count += acked;
        if (w->ack_count >= w->ack_every ||
            warren__mono_ms() - w->ack_since_ms >= ACK_MAX_DELAY_MS) {
            rc = warren__worker_flush_acks(w);
        }
    }
    return rc;
}

static void count_and_log(warren_worker *w, const warren__batch *b, int n) {
    for (int i = 0; i < n; i++) {
        item *it = &b->items[i];
        const struct warren_msg *m = &b->slots[i].msg;
        warren_log_level lvl = WARREN_LOG_DEBUG;
        switch (it->fate) {
        case FATE_ACK:
            count(w, WARREN_STAT_ACKED);
            it->outcome = "ack";
            break;
        case FATE_RETRY:
            count(w, WARREN_STAT_RETRIED);
            it->outcome = "retry";
            lvl = WARREN_LOG_INFO;
            break;
        case FATE_DEAD:
            count(w, WARREN_STAT_DEAD);
            it->outcome = "dead";
            lvl = WARREN_LOG_WARN;
            break;
        case FATE_SKIP:
            count(w, WARREN_STAT_DUPLICATE);
            it->outcome = "duplicate";
            break;
        case FATE_DEFER:
            count(w, WARREN_STAT_DEFERRED);
            it->outcome = "deferred";
            break;
        case FATE_HOLD:
            it->outcome = "held";
            break;
        default:
            it->outcome = "requeued";
            lvl = WARREN_LOG_INFO;
            break;
        }
        log_item(w, m, it, lvl, -1);
    }
}

/* The largest body read into memory; larger ones are spooled to a file
 * and dead-lettered from there (see warren__session_spool()). */
static uint64_t body_limit(const warren_worker *w) {
    uint64_t hard = hard_body_limit();
    return w->c->max_message_bytes < hard ? w->c->max_message_bytes : hard;
}

/* Bytes of bodies a batch reads before it stops: with the one body that
 * may cross it, a batch holds less than twice
 * max_message_bytes, and the session's read-ahead has the same budget, so
 * a worker holds less than 6 x batch_bytes() of bodies, whatever
 * batch_max and prefetch are. */
static uint64_t batch_bytes(const warren_worker *w) {
    uint64_t limit = body_limit(w);
    return limit > BATCH_BYTES_MIN ? limit : BATCH_BYTES_MIN;
}

/* Reads deliveries already buffered (never waiting) into b->slots[from..max),
 * while the bodies held in `b` stay under batch_bytes(). Returns how
 * many slots are filled in all, or a session error. */
static int fill_batch(warren_worker *w, const warren__batch *b, int from,
                      int max) {
    int n = from;
    uint64_t held = 0, budget = batch_bytes(w);
    for (int i = 0; i < from; i++) {
        held += b->slots[i].msg.body_len;
    }
    while (n < max && held < budget && warren__session_pending(w->sess)) {
        int rc = warren__session_next(w->sess, &b->slots[n], body_limit(w), 0);
        if (rc < 0) {
            warren__worker_set_err(w, "%s", warren__session_errstr(w->sess));
            return rc;
        }
        if (rc == 0) {
            break;
        }
        held += b->slots[n].msg.body_len;
        n++;
    }
    return n;
}

/* 1 if batch N's outcomes may wait for batch N+1's claims to share their
 * commit: not when stopping (N+1 would only be handed back) nor when the
 * breaker is open or held some of N (the loop must hold first). */
static int may_pipeline(warren_worker *w) {
    return !w->stop && w->n_held == 0 &&
           (w->fallback != NULL ||
            warren__breaker_wait_ms(&w->breaker, warren__mono_ms()) == 0);
}

/* Group commit. Batch N's outcomes are recorded in an open transaction;
 * if more deliveries are already buffered, they become batch N+1 in the
 * batch `w->next`: classified and claimed inside that same transaction, so one
 * commit (one sync) makes N's outcomes and N+1's claims durable together,
 * and N+1's handlers run only after it. Nothing buffered: N commits alone
 * at once, so light traffic never waits. Within the transaction a second
 * copy of an id of N sees N's outcome (done: a duplicate) and a handler's
 * inbox writes commit with its outcome, as before. Returns 0 with
 * `*next_n` deliveries claimed in `w->next` (`w->cur` is still N), or a store
 * error after which nothing of either batch may be acked
 * (`*next_n` then says how many of N+1 were read, to be handed back), or a
 * session error with N committed alone. */
static int claim_next(warren_worker *w, int *next_n, int *session_rc) {
    int batch_max = w->c->batch_max;
    int n_claims = 0;
    *next_n = 0;
    *session_rc = 0;
    if (!may_pipeline(w) || !warren__session_pending(w->sess)) {
        return commit_outcomes(w);
    }
    double burst = warren__ratelimit_burst(&w->rate);
    if (burst > 0 && burst < (double)batch_max) {
        batch_max = (int)burst;
    }
    int m = fill_batch(w, &w->next, 0, batch_max);
    if (m <= 0) {
        *session_rc = m;
        return commit_outcomes(w);
    }
    classify(w, &w->next, m, 0, &n_claims);
    int rc = warren__store_claim_and_commit(
        w->store, w->next.claims, (size_t)n_claims, w->c->max_deliveries,
        warren__now_ms());
    if (rc == 0) {
        w->lease_mono_ms = warren__mono_ms();
        apply_claims(w, &w->next, m);
    }
    *next_n = m;
    return rc;
}

/* Batch `b` from its item `from` on: a segment of a batch is run through
 * the same steps as a whole batch. Its claims stay the whole batch's, since
 * items index them. */
static warren__batch segment(const warren__batch *b, int from) {
    warren__batch seg = {b->slots + from, b->items + from, b->claims};
    return seg;
}

/* 1 if item `i` of `b` is to run on its own: its claim was
 * taken over from an owner that never recorded an outcome (it may be what
 * killed that owner), or, with no claim to tell, the broker redelivered
 * it. */
static int is_suspect(const warren__batch *b, int i) {
    const item *it = &b->items[i];
    if (it->fate != FATE_NONE) {
        return 0;
    }
    if (it->claim >= 0) {
        return b->claims[it->claim].taken_over;
    }
    return b->slots[i].msg.redelivered;
}

/* Before a suspect runs: acks owed go out, and the claims of the items
 * after it that are still to run are given back (their deliveries count
 * is not spent), so that if it kills this worker it alone is charged with
 * the crash. Returns 0 or a connection error; a store that cannot release
 * them now only costs that protection. */
static int isolate_suspect(warren_worker *w, const warren__batch *b, int at,
                           int n) {
    if (warren__worker_flush_acks(w) != 0) {
        warren__worker_set_err(w, "%s", warren__session_errstr(w->sess));
        return WARREN_ERR_CONNECTION;
    }
    int any = 0, rc = 0;
    int64_t now = warren__now_ms();
    for (int i = at + 1; i < n && rc == 0; i++) {
        item *it = &b->items[i];
        if (it->claim < 0 || it->fate != FATE_NONE ||
            b->claims[it->claim].status != WARREN__CLAIM_RUN) {
            continue;
        }
        if (!any) {
            rc = warren__store_begin(w->store);
            any = 1;
        }
        if (rc == 0) {
            rc = warren__store_record(w->store, w->c->queue, it->id,
                                      WARREN__OUT_RELEASE, NULL, now);
        }
    }
    if (any && rc == 0) {
        rc = warren__store_commit(w->store);
    }
    if (rc != 0) {
        warren__store_rollback(w->store);
        warren__log(WARREN_LOG_WARN,
                    &(warren__log_fields){"store_error", w->c->queue, NULL,
                                          NULL, -1, -1},
                    "could not give back the claims behind a suspect "
                    "message: %s",
                    warren__store_errstr(w->store));
        return 0;
    }
    for (int i = at + 1; any && i < n; i++) {
        item *it = &b->items[i];
        if (it->claim >= 0 && it->fate == FATE_NONE &&
            b->claims[it->claim].status == WARREN__CLAIM_RUN) {
            it->released = 1;
        }
    }
    return 0;
}

/* After a suspect: claims the items isolate_suspect() gave back, again.
 * Returns 0, 1 if the store was busy and the rest of the batch was handed
 * back (nothing of it ran), or an error. */
static int reclaim_released(warren_worker *w, int from, int n) {
    int k = 0;
    for (int i = from; i < n; i++) {
        item *it = &w->cur.items[i];
        if (it->released) {
            w->claim_scratch[k++] = w->cur.claims[it->claim];
        }
    }
    if (k == 0) {
        return 0;
    }
    int rc = warren__store_claim_batch(w->store, w->claim_scratch, (size_t)k,
                                       w->c->max_deliveries, warren__now_ms());
    if (rc != 0) {
        warren__log(WARREN_LOG_ERROR,
                    &(warren__log_fields){"store_error", w->c->queue, NULL,
                                          NULL, -1, -1},
                    "claiming the rest of a batch failed, it will be "
                    "redelivered: %s",
                    warren__store_errstr(w->store));
        if (warren__worker_nack_through(
                w, w->cur.slots[n - 1].msg.delivery_tag) != 0) {
            return WARREN_ERR_CONNECTION;
        }
        if (rc == WARREN_ERR_STORE_BUSY) {
            return 1;
        }
        warren__worker_set_err(w, "%s", warren__store_errstr(w->store));
        return rc;
    }
    w->lease_mono_ms = warren__mono_ms();
    k = 0;
    for (int i = from; i < n; i++) {
        item *it = &w->cur.items[i];
        if (it->released) {
            warren__claim *cl = &w->cur.claims[it->claim];
            int suspect = cl->taken_over;
            *cl = w->claim_scratch[k++];
            cl->taken_over |= suspect; /* retaken from ourselves */
            it->released = 0;
        }
    }
    warren__batch seg = segment(&w->cur, from);
    apply_claims(w, &seg, n - from);
    return 0;
}

/* Runs items [from, from + n) of `w->cur` (claimed) through steps
 * 2-5. With `last`, the segment ends the batch and group commit may read
 * and claim the next one (`*next_n` of them, into `w->next`). `batch_n`
 * is the size of the whole batch, all of which an error hands back.
 * Returns 0, 1 if a busy store handed the rest back, or an error that ends
 * this session (connection) or the worker (store full). */
static int process_segment(warren_worker *w, int from, int n, int batch_n,
                           int last, int *next_n) {
    int rc, session_rc = 0;
    uint64_t batch_last_tag = w->cur.slots[batch_n - 1].msg.delivery_tag;
    const warren__batch seg = segment(&w->cur, from);
    run_handlers(w, &seg, n, batch_n - from);
    WARREN_FAILPOINT("handler.after");
    warren__worker_publish_copies(w, &seg, n);
    int broken = warren__session_broken(w->sess);
    if (broken) {
        /* The originals cannot be acked on this connection and come back.
         * Outcomes of handlers that ran are still recorded, so that their
         * redeliveries are duplicates and no effect runs twice; what needed
         * the broker (a nack into the retry queue) is released instead. */
        for (int i = 0; i < n; i++) {
            fate f = seg.items[i].fate;
            if (w->c->retry.mode == WARREN__RETRY_NACK &&
                (f == FATE_RETRY || f == FATE_DEFER)) {
                seg.items[i].fate = FATE_REQUEUE;
            }
        }
    }
    if (w->store) {
        rc = record_outcomes(w, &seg, n);
        if (rc == 0) {
            rc = broken || !last ? commit_outcomes(w)
                                 : claim_next(w, next_n, &session_rc);
        }
        if (rc != 0) {
            int both = *next_n > 0;
            warren__log(WARREN_LOG_ERROR,
                        &(warren__log_fields){"store_error", w->c->queue, NULL,
                                              NULL, -1, -1},
                        "committing outcomes failed, nothing of this batch%s "
                        "is acked and it will be redelivered: %s",
                        both ? " or the next" : "",
                        warren__store_errstr(w->store));
            if (!broken) {
                warren__worker_nack_through(
                    w, both ? w->next.slots[*next_n - 1].msg.delivery_tag
                            : batch_last_tag);
            }
            *next_n = 0;
            if (rc == WARREN_ERR_STORE_BUSY) {
                return broken ? WARREN_ERR_CONNECTION : 1;
            }
            warren__worker_set_err(w, "%s", warren__store_errstr(w->store));
            return rc;
        }
    }
    if (broken) {
        return WARREN_ERR_CONNECTION;
    }
    WARREN_FAILPOINT("commit.after");
    rc = session_rc ? session_rc : settle(w, &seg, n);
    count_and_log(w, &seg, n);
    if (rc != 0) {
        *next_n = 0;
        return WARREN_ERR_CONNECTION;
    }
    return 0;
}

/* Runs one claimed batch of `n` deliveries through steps 2-5, and, with
 * group commit, reads and claims the next one (`*next_n` of them, left in
 * `w->next`, which becomes `w->cur` on return). Returns 0, or an error that
 * ends this session (connection) or the worker (store full).
 * Suspects (is_suspect()) run on their own: what ran before one is
 * committed and settled first, and what comes after it is claimed again
 * only once it has an outcome, so a handler that kills its worker leaves
 * no other message of the batch charged with the crash. */
int warren__worker_process_batch(warren_worker *w, int n, int *next_n) {
    int rc = 0;
    *next_n = 0;
    WARREN_FAILPOINT("claim.after");
    for (int a = 0; a < n && rc == 0;) {
        int suspect = is_suspect(&w->cur, a), b = a + 1;
        while (!suspect && b < n && !is_suspect(&w->cur, b)) {
            b++;
        }
        if (suspect && b < n) {
            rc = w->store ? isolate_suspect(w, &w->cur, a, n)
                          : warren__worker_flush_acks(w);
            if (rc != 0) {
                break;
            }
        } else if (suspect && warren__worker_flush_acks(w) != 0) {
            rc = WARREN_ERR_CONNECTION;
            break;
        }
        rc = process_segment(w, a, b - a, n, b == n, next_n);
        if (rc == 0 && suspect && b < n && w->store) {
            rc = reclaim_released(w, b, n);
        }
        a = b;
    }
    atomic_store_explicit(&w->ws->in_flight, *next_n, memory_order_relaxed);
    for (int i = 0; i < n; i++) {
        if (w->cur.items[i].fate == FATE_HOLD) {
            continue; /* kept whole for its run after the hold */
        }
        if (w->cur.slots[i].body_cap > BODY_KEEP_BYTES) {
            free(w->cur.slots[i].body);
            w->cur.slots[i].body = NULL;
            w->cur.slots[i].body_cap = 0;
        }
        warren__delivery_drop_spool(&w->cur.slots[i]);
    }
    warren__session_release(w->sess);
    if (rc == 1) {
        rc = 0; /* a busy store handed the rest back */
    }
    if (rc != 0) {
        *next_n = 0;
        w->n_held = 0;
        if (w->err[0] == '\0' && rc == WARREN_ERR_CONNECTION && w->sess) {
            warren__worker_set_err(w, "%s", warren__session_errstr(w->sess));
        }
        return rc;
    }
    /* The held ones (none if an error handed the batch back) move to the
     * front, in tag order, for take_batch() to run again first. */
    w->carried = 0;
    for (int i = 0; w->n_held > 0 && i < n; i++) {
        if (w->cur.items[i].fate == FATE_HOLD) {
            int k = w->carried++;
            if (k != i) {
                item t = w->cur.items[k];
                w->cur.items[k] = w->cur.items[i];
                w->cur.items[i] = t;
                warren__delivery_swap(&w->cur.slots[k], &w->cur.slots[i]);
            }
        }
    }
    w->n_held = w->carried;
    if (*next_n > 0) {
        /* The batch claimed ahead is the one to run next. */
        warren__batch done = w->cur;
        w->cur = w->next;
        w->next = done;
    }
    return 0;
}

/* Reads and claims a new batch (the first, or one after a batch that
 * committed alone) into `w->cur`. Returns its size, 0 if there was
 * none (timeout, or a busy store handed it back), or an error. */
int warren__worker_take_batch(warren_worker *w, int batch_max) {
    int rc;
    warren__session_spool(w->sess, body_limit(w), batch_bytes(w));
    if (w->carried > 0) {
        rc = 1; /* the held ones are the head of this batch */
    } else if (w->ack_tag != 0 && !warren__session_pending(w->sess)) {
        /* Acks are owed: wait a moment for more traffic to share them,
         * then send them before any longer wait. */
        rc = warren__session_next(w->sess, &w->cur.slots[0], body_limit(w),
                                  ACK_IDLE_MS);
        if (rc == 0) {
            rc = warren__worker_flush_acks(w);
            if (rc != 0) {
                warren__worker_set_err(w, "%s",
                                       warren__session_errstr(w->sess));
                return WARREN_ERR_CONNECTION;
            }
            rc = warren__session_next(w->sess, &w->cur.slots[0], body_limit(w),
                                      POLL_MS);
        }
    } else {
        rc = warren__session_next(w->sess, &w->cur.slots[0], body_limit(w),
                                  POLL_MS);
    }
    if (rc < 0) {
        warren__worker_set_err(w, "%s", warren__session_errstr(w->sess));
        return rc;
    }
    if (rc == 0) {
        warren__worker_maybe_prune(w);
        return 0;
    }
    int n = fill_batch(w, &w->cur, w->carried > 0 ? w->carried : 1, batch_max);
    if (n < 0) {
        return n;
    }
    int n_claims;
    atomic_store_explicit(&w->ws->in_flight, n, memory_order_relaxed);
    classify(w, &w->cur, n, w->carried, &n_claims);
    w->carried = 0;
    w->n_held = 0; /* in this batch now, settled with it */
    rc = claim(w, &w->cur, n, n_claims);
    if (rc != 0) {
        warren__log(WARREN_LOG_ERROR,
                    &(warren__log_fields){"store_error", w->c->queue, NULL,
                                          NULL, -1, -1},
                    "claiming a batch failed, it will be redelivered: %s",
                    warren__store_errstr(w->store));
        if (rc == WARREN_ERR_STORE_BUSY) {
            /* Nothing was claimed: hand the whole batch back. */
            rc = warren__worker_nack_through(
                w, w->cur.slots[n - 1].msg.delivery_tag);
            return rc ? WARREN_ERR_CONNECTION : 0;
        }
        warren__worker_set_err(w, "%s", warren__store_errstr(w->store));
        return rc;
    }
    return n;
}

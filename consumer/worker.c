/*
 * worker.c - one process consuming one queue: the loop that turns
 * deliveries into handler calls and handler results into durable outcomes.
 *
 * Work goes in batches of what the broker has already sent (never waiting
 * to fill one), and each batch follows one order, which is the whole
 * promise of warren:
 *   1. claim every id in one store transaction (committed before any
 *      handler runs, so a crash mid-handler leaves a trace);
 *   2. run the handlers, each inside a savepoint if it uses the store;
 *   3. publish retry and dead-letter copies and wait for their confirms;
 *   4. record every outcome in one transaction and commit it;
 *   5. only then acknowledge (one multiple-ack where the tags allow).
 * A failure at any step leaves the affected originals unacknowledged, so
 * the broker redelivers them and the store keeps them from running twice.
 * Before each handler call the circuit breaker and the rate limiter have
 * their say: an open breaker hands the rest of the batch back and closes
 * the connection until open_s has passed (see pause_for_breaker()).
 */
#include "backoff.h"
#include "breaker.h"
#include "ctx.h"
#include "failpoint.h"
#include "handler.h"
#include "log.h"
#include "msgid.h"
#include "ratelimit.h"
#include "session.h"
#include "store.h"
#include "topology.h"
#include "wstats.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Bodies larger than this are drained unread; the broker's own default
 * max_message_size is 128 MiB, so this is only a guard. */
#define HARD_BODY_LIMIT ((uint64_t)256 << 20)
/* A body buffer grown past this is given back after its batch. */
#define BODY_KEEP_BYTES ((size_t)1 << 20)
#define POLL_MS 200
#define CONFIRM_TIMEOUT_MS 30000
#define DEFER_DELAY_MS 1000
#define PRUNE_EVERY_MS 60000
#define PRUNE_BATCH 500
#define RECONNECT_MIN_MS 500
#define RECONNECT_MAX_MS 30000
/* Sleep step while waiting for a rate-limit token, and how often such a
 * wait answers heartbeats. */
#define TOKEN_STEP_MS 20
#define TOKEN_SERVICE_MS 1000
/* consume_loop()'s answer when the breaker is open: not an error. */
#define BREAKER_PAUSE 1

typedef enum {
    FATE_NONE = 0, /* not decided yet: run the handler */
    FATE_ACK,      /* done: record done, ack */
    FATE_RETRY,    /* failed: copy to the delay cascade (or nack), ack */
    FATE_DEAD,     /* copy to the DLQ, record dead, ack */
    FATE_SKIP,     /* duplicate or already dead: ack without running */
    FATE_DEFER,    /* held by another worker: put back, no attempt spent */
    FATE_REQUEUE   /* could not be resolved now: nack with requeue */
} fate;

typedef struct {
    fate fate;
    int claim; /* index into claims[], -1 if not in the store */
    char id[WARREN__ID_MAX + 1];
    int attempt;
    uint32_t delay_ms;
    int64_t first_failed_at_ms;
    int published; /* a copy went out in this batch */
    char reason[WARREN__ERROR_MAX + 1];
    const char *outcome; /* for logs */
} item;

struct warren_worker {
    const struct warren_config *cfg;
    const warren__consumer_cfg *c;
    warren_handler_fn fn;
    warren_handler_init_fn fn_init;
    warren_handler_fini_fn fn_fini;
    char *fn_arg;

    warren__handler *handler;
    warren__store *store;
    warren__session *sess;
    warren_ctx ctx;
    volatile sig_atomic_t stop;
    int url_index;
    int64_t last_prune_ms;
    char host[128];
    char worker_name[160];
    char err[2048];
    warren__wstats own_stats;
    warren__wstats *ws; /* &own_stats, or a slot shared with `warren run` */
    warren__breaker breaker;
    warren__ratelimit rate;

    warren__delivery *slots;
    item *items;
    warren__claim *claims;
    amqp_pool_t pool; /* headers of copies, recycled every batch */
};

static void set_err(warren_worker *w, const char *fmt, ...) WARREN_PRINTF(2, 3);

static void set_err(warren_worker *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
}

warren_worker *warren_worker_new(const warren_config *cfg, int index) {
    if (cfg == NULL || index < 0 || index >= cfg->n_consumers) {
        return NULL;
    }
    warren_worker *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return NULL;
    }
    w->cfg = cfg;
    w->c = &cfg->consumers[index];
    w->ws = &w->own_stats;
    return w;
}

int warren_worker_set_handler(warren_worker *w, warren_handler_fn fn,
                              warren_handler_init_fn init,
                              warren_handler_fini_fn fini, const char *arg) {
    char *copy = strdup(arg ? arg : "");
    if (copy == NULL) {
        return WARREN_ERR_NOMEM;
    }
    free(w->fn_arg);
    w->fn = fn;
    w->fn_init = init;
    w->fn_fini = fini;
    w->fn_arg = copy;
    return 0;
}

void warren_worker_stop(warren_worker *w) {
    if (w) {
        w->stop = 1;
    }
}

const char *warren_worker_errstr(const warren_worker *w) {
    return w ? w->err : "";
}

uint64_t warren_worker_stat(const warren_worker *w, warren_stat which) {
    if (w == NULL || (int)which < 0 || which > WARREN_STAT_DEFERRED) {
        return 0;
    }
    return atomic_load_explicit(&w->ws->counters[which], memory_order_relaxed);
}

void warren__worker_share(warren_worker *w, warren__wstats *slot) {
    w->ws = slot;
}

static void count(warren_worker *w, warren_stat which) {
    atomic_fetch_add_explicit(&w->ws->counters[which], 1, memory_order_relaxed);
}

static void release_batch_memory(warren_worker *w) {
    for (int i = 0; w->slots && i < w->c->batch_max; i++) {
        warren__delivery_free(&w->slots[i]);
    }
}

void warren_worker_free(warren_worker *w) {
    if (w == NULL) {
        return;
    }
    release_batch_memory(w);
    free(w->slots);
    free(w->items);
    free(w->claims);
    free(w->fn_arg);
    free(w);
}

/* ---- headers of copies ------------------------------------------------ */

static int is_stripped_header(amqp_bytes_t key) {
    static const char *exact[] = {
        "x-warren-attempt",         "x-warren-error",
        "x-warren-queue",           "x-warren-exchange",
        "x-warren-routing-key",     "x-warren-attempts",
        "x-warren-first-failed-at", "x-warren-dead-at",
        "x-warren-worker",          "x-death"};
    static const char *prefix[] = {"x-first-death-", "x-last-death-"};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        size_t n = strlen(exact[i]);
        if (key.len == n && memcmp(key.bytes, exact[i], n) == 0) {
            return 1;
        }
    }
    for (size_t i = 0; i < sizeof prefix / sizeof prefix[0]; i++) {
        size_t n = strlen(prefix[i]);
        if (key.len >= n && memcmp(key.bytes, prefix[i], n) == 0) {
            return 1;
        }
    }
    return 0;
}

typedef struct {
    amqp_table_entry_t *e;
    int n, cap;
    amqp_pool_t *pool;
} table_builder;

static amqp_table_entry_t *tb_add(table_builder *tb, const char *key) {
    if (tb->n == tb->cap) {
        return NULL;
    }
    amqp_table_entry_t *e = &tb->e[tb->n++];
    e->key = amqp_cstring_bytes(key);
    return e;
}

static void tb_str(table_builder *tb, const char *key, const char *val) {
    amqp_table_entry_t *e = tb_add(tb, key);
    if (e) {
        amqp_bytes_t b;
        size_t len = strlen(val);
        amqp_pool_alloc_bytes(tb->pool, len, &b);
        if (b.bytes == NULL && len > 0) {
            tb->n--;
            return;
        }
        if (len > 0) {
            memcpy(b.bytes, val, len); /* an empty value has no buffer */
        }
        e->value.kind = AMQP_FIELD_KIND_UTF8;
        e->value.value.bytes = b;
    }
}

static void tb_int(table_builder *tb, const char *key, int64_t val) {
    amqp_table_entry_t *e = tb_add(tb, key);
    if (e) {
        e->value.kind = AMQP_FIELD_KIND_I64;
        e->value.value.i64 = val;
    }
}

/* Starts a copy's header table from the original's, minus warren's own
 * failure headers and the broker's death records, so headers never grow
 * across retries. */
static int tb_init(table_builder *tb, amqp_pool_t *pool,
                   const amqp_table_t *orig, int extra) {
    tb->pool = pool;
    tb->cap = orig->num_entries + extra;
    tb->n = 0;
    tb->e = amqp_pool_alloc(pool, sizeof *tb->e * (size_t)(tb->cap + 1));
    if (tb->e == NULL) {
        return WARREN_ERR_NOMEM;
    }
    for (int i = 0; i < orig->num_entries; i++) {
        if (!is_stripped_header(orig->entries[i].key)) {
            tb->e[tb->n++] = orig->entries[i];
        }
    }
    return 0;
}

static int64_t header_int(const struct warren_msg *m, const char *name,
                          int64_t lo, int64_t hi, int64_t dflt) {
    int64_t v;
    if (warren_msg_header_int(m, name, &v) == 0 && v >= lo && v <= hi) {
        return v;
    }
    return dflt;
}

/* The error text that fits: at most 1 KiB, and less when the original
 * headers already fill much of a frame, so the copy's header frame always
 * fits the negotiated frame_max. */
static size_t error_budget(warren_worker *w, const struct warren_msg *m) {
    size_t frame = warren__session_frame_max(w->sess);
    size_t used = 0;
    for (int i = 0; i < m->headers->num_entries; i++) {
        const amqp_table_entry_t *e = &m->headers->entries[i];
        used += e->key.len + 16;
        if (e->value.kind == AMQP_FIELD_KIND_UTF8 ||
            e->value.kind == AMQP_FIELD_KIND_BYTES) {
            used += e->value.value.bytes.len;
        } else if (e->value.kind == AMQP_FIELD_KIND_TABLE ||
                   e->value.kind == AMQP_FIELD_KIND_ARRAY) {
            used += 1024; /* rough; nested values are rare */
        }
    }
    size_t reserve = 4096 + used;
    if (reserve >= frame) {
        return 0;
    }
    size_t room = frame - reserve;
    return room < WARREN__ERROR_MAX ? room : WARREN__ERROR_MAX;
}

/* ---- the batch ---------------------------------------------------------- */

static void log_item(warren_worker *w, const struct warren_msg *m,
                     const item *it, warren_log_level level, int64_t ms) {
    warren__log_fields f = {"message",   w->c->queue, it->id[0] ? it->id : NULL,
                            it->outcome, it->attempt, ms};
    if (it->reason[0]) {
        warren__log(level, &f, "%s: %s", it->outcome, it->reason);
    } else {
        warren__log(level, &f, "%s", it->outcome);
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

/* Step 0: classify each delivery before the store sees it. */
static int classify(warren_worker *w, int n, int *n_claims) {
    *n_claims = 0;
    for (int i = 0; i < n; i++) {
        warren__delivery *d = &w->slots[i];
        struct warren_msg *m = &d->msg;
        item *it = &w->items[i];
        char why[WARREN__ERROR_MAX];
        memset(it, 0, sizeof *it);
        it->claim = -1;
        m->queue = w->c->queue;
        if (strncmp(d->exchange, "warren.", 7) == 0) {
            restore_route(d);
        }
        it->attempt = (int)header_int(m, "x-warren-attempt", 1, 1000000, 1);
        it->first_failed_at_ms =
            header_int(m, "x-warren-first-failed-at", 1, INT64_MAX, 0);
        count(w, WARREN_STAT_RECEIVED);
        if (d->too_large || m->body_size_announced > w->c->max_message_bytes) {
            it->fate = FATE_DEAD;
            snprintf(it->reason, sizeof it->reason,
                     "message too large: %llu bytes > max_message_bytes %llu",
                     (unsigned long long)m->body_size_announced,
                     (unsigned long long)w->c->max_message_bytes);
            /* Still recorded under its id when one is at hand. */
            if (m->amqp_message_id && w->store &&
                w->c->id_source == WARREN__ID_PROPERTY &&
                warren__utf8_valid(m->amqp_message_id,
                                   strlen(m->amqp_message_id)) &&
                strlen(m->amqp_message_id) <= WARREN__ID_MAX &&
                m->amqp_message_id[0]) {
                snprintf(it->id, sizeof it->id, "%s", m->amqp_message_id);
            }
        } else if (w->store == NULL) {
            it->id[0] = '\0';
            if (m->amqp_message_id) {
                snprintf(it->id, sizeof it->id, "%s", m->amqp_message_id);
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
        warren__claim *cl = &w->claims[*n_claims];
        memset(cl, 0, sizeof *cl);
        cl->queue = w->c->queue;
        cl->id = it->id;
        it->claim = (*n_claims)++;
    }
    return 0;
}

/* Step 1: claims, committed before any handler runs. */
static int claim(warren_worker *w, int n, int n_claims) {
    if (n_claims == 0) {
        return 0;
    }
    int rc = warren__store_claim_batch(w->store, w->claims, (size_t)n_claims,
                                       w->c->max_deliveries, warren__now_ms());
    if (rc != 0) {
        return rc;
    }
    for (int i = 0; i < n; i++) {
        item *it = &w->items[i];
        if (it->claim < 0) {
            continue;
        }
        warren__claim *cl = &w->claims[it->claim];
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
            break;
        case WARREN__CLAIM_DUPLICATE:
        case WARREN__CLAIM_DEAD:
            it->fate = FATE_SKIP;
            break;
        case WARREN__CLAIM_BUSY:
            it->fate = FATE_DEFER;
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
static void publish_breaker(warren_worker *w) {
    atomic_store_explicit(&w->ws->breaker_state,
                          (int)warren__breaker_state_of(&w->breaker),
                          memory_order_relaxed);
    atomic_store_explicit(
        &w->ws->breaker_opened,
        warren__breaker_transitions(&w->breaker, WARREN__BREAKER_OPEN),
        memory_order_relaxed);
}

/* Step 2: handlers. */
static void run_handlers(warren_worker *w, int n) {
    for (int i = 0; i < n; i++) {
        item *it = &w->items[i];
        struct warren_msg *m = &w->slots[i].msg;
        if (it->fate != FATE_NONE) {
            continue;
        }
        if (w->stop) {
            /* Asked to stop: what has not started goes back untouched. */
            it->fate = FATE_REQUEUE;
            continue;
        }
        int allowed = warren__breaker_allow(&w->breaker, warren__mono_ms());
        publish_breaker(w);
        if (!allowed) {
            /* The breaker opened during this batch: the rest waits in the
             * queue, its claims released, no attempt spent. */
            it->fate = FATE_REQUEUE;
            continue;
        }
        if (wait_for_token(w) != 0) {
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
        warren_result r = warren__handler_call(w->handler, m, &w->ctx);
        int64_t us = warren__mono_us() - t0_us;
        int64_t ms = us / 1000;
        atomic_store_explicit(&w->ws->handler_deadline_mono_ms, 0,
                              memory_order_relaxed);
        warren__wstats_latency(w->ws, us);
        if (r != WARREN_ACK) {
            atomic_fetch_add_explicit(&w->ws->handler_failures, 1,
                                      memory_order_relaxed);
        }
        /* A timed-out exec handler comes back as RETRY: every result but
         * ACK is a failure to the breaker. */
        warren__breaker_record(&w->breaker, r != WARREN_ACK, t0 + ms);
        publish_breaker(w);
        if (w->ctx.db_used) {
            if (r == WARREN_ACK) {
                warren__store_savepoint_release(w->store);
            } else {
                warren__store_savepoint_rollback(w->store);
            }
        }
        if (r == WARREN_ACK) {
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

static void copy_props(amqp_basic_properties_t *p,
                       const amqp_basic_properties_t *orig,
                       const table_builder *tb) {
    *p = *orig;
    p->_flags &= ~AMQP_BASIC_EXPIRATION_FLAG;
    p->_flags |= AMQP_BASIC_HEADERS_FLAG;
    p->headers.num_entries = tb->n;
    p->headers.entries = tb->e;
}

static int publish_retry(warren_worker *w, warren__delivery *d, item *it,
                         int next_attempt, uint32_t delay_ms) {
    table_builder tb;
    char ex[WARREN__NAME_MAX], rk[WARREN__NAME_MAX + 64];
    amqp_basic_properties_t p;
    const struct warren_msg *m = &d->msg;
    if (tb_init(&tb, &w->pool, m->headers, 8) != 0) {
        return WARREN_ERR_NOMEM;
    }
    tb_int(&tb, "x-warren-attempt", next_attempt);
    tb_str(&tb, "x-warren-queue", w->c->queue);
    tb_str(&tb, "x-warren-exchange", d->exchange);
    tb_str(&tb, "x-warren-routing-key", d->routing_key);
    if (it->first_failed_at_ms) {
        tb_int(&tb, "x-warren-first-failed-at", it->first_failed_at_ms);
    }
    if (it->reason[0]) {
        char e[WARREN__ERROR_MAX + 1];
        snprintf(e, error_budget(w, m) + 1, "%s", it->reason);
        tb_str(&tb, "x-warren-error", e);
    }
    copy_props(&p, m->props, &tb);
    if (warren__delay_route(delay_ms, w->c->queue,
                            w->c->queue_type == WARREN__QUEUE_QUORUM, ex,
                            sizeof ex, rk, sizeof rk) != 0) {
        return WARREN_ERR_INVAL;
    }
    return warren__session_publish(w->sess, ex, rk, &p, m->body, m->body_len,
                                   NULL);
}

static int publish_dead(warren_worker *w, warren__delivery *d, item *it) {
    table_builder tb;
    amqp_basic_properties_t p;
    const struct warren_msg *m = &d->msg;
    int64_t now = warren__now_ms();
    if (tb_init(&tb, &w->pool, m->headers, 10) != 0) {
        return WARREN_ERR_NOMEM;
    }
    char e[WARREN__ERROR_MAX + 1];
    snprintf(e, error_budget(w, m) + 1, "%s", it->reason);
    tb_str(&tb, "x-warren-queue", w->c->queue);
    tb_str(&tb, "x-warren-exchange", d->exchange);
    tb_str(&tb, "x-warren-routing-key", d->routing_key);
    tb_int(&tb, "x-warren-attempts", it->attempt);
    tb_str(&tb, "x-warren-error", e);
    tb_int(&tb, "x-warren-first-failed-at",
           it->first_failed_at_ms ? it->first_failed_at_ms : now);
    tb_int(&tb, "x-warren-dead-at", now);
    tb_str(&tb, "x-warren-worker", w->worker_name);
    if (warren__table_find(m->headers, "x-warren-replays") == NULL) {
        tb_int(&tb, "x-warren-replays", 0);
    }
    copy_props(&p, m->props, &tb);
    /* The body of a message too large to keep was not read: such a message
     * cannot reach here, since the hard limit is far above any broker's. */
    return warren__session_publish(w->sess, "", warren__dlq_name(w->c), &p,
                                   m->body, m->body_len, NULL);
}

/* Step 3: copies, confirmed before any original is acked. */
static int publish_copies(warren_worker *w, int n) {
    int any = 0, rc = 0;
    int republish = w->c->retry.mode == WARREN__RETRY_REPUBLISH;
    recycle_amqp_pool(&w->pool);
    for (int i = 0; i < n && rc == 0; i++) {
        item *it = &w->items[i];
        warren__delivery *d = &w->slots[i];
        switch (it->fate) {
        case FATE_RETRY:
            if (republish) {
                rc = publish_retry(w, d, it, it->attempt + 1, it->delay_ms);
                it->published = any = 1;
                WARREN_FAILPOINT("retry.published");
            }
            break;
        case FATE_DEFER:
            if (republish) {
                rc = publish_retry(w, d, it, it->attempt, DEFER_DELAY_MS);
                it->published = any = 1;
            }
            break;
        case FATE_DEAD:
            rc = publish_dead(w, d, it);
            it->published = any = 1;
            WARREN_FAILPOINT("dead.published");
            break;
        default:
            break;
        }
    }
    if (rc == 0 && any) {
        rc = warren__session_wait_confirms(w->sess, CONFIRM_TIMEOUT_MS);
        if (rc == 0) {
            WARREN_FAILPOINT("copies.confirmed");
        }
    }
    if (rc != 0) {
        warren__log(WARREN_LOG_ERROR,
                    &(warren__log_fields){"publish_failed", w->c->queue, NULL,
                                          NULL, -1, -1},
                    "retry/dead-letter copies not confirmed, originals will "
                    "be redelivered: %s",
                    warren__session_errstr(w->sess));
        for (int i = 0; i < n; i++) {
            if (w->items[i].published) {
                w->items[i].fate = FATE_REQUEUE;
            }
        }
    }
    return rc;
}

/* Step 4: outcomes, in one transaction with any handler writes. */
static int record_outcomes(warren_worker *w, int n) {
    int rc = 0, any = warren__store_in_txn(w->store);
    int64_t now = warren__now_ms();
    for (int i = 0; i < n; i++) {
        item *it = &w->items[i];
        if (it->claim < 0 || it->fate == FATE_SKIP || it->fate == FATE_DEFER) {
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
            rc = warren__store_begin(w->store);
            if (rc != 0) {
                return rc;
            }
            any = 1;
        }
        rc = warren__store_record(w->store, w->c->queue, it->id, k,
                                  it->reason[0] ? it->reason : NULL, now);
        if (rc == WARREN_ERR_NOT_FOUND) {
            /* Our claim was taken over (lease expired while we ran): the
             * other worker owns the outcome now. */
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
    if (any) {
        rc = warren__store_commit(w->store);
        if (rc != 0) {
            warren__store_rollback(w->store);
        }
    }
    return rc;
}

/* Step 5: acknowledgements, after the outcomes are durable. Rejections go
 * first, one by one; then a single multiple-ack settles everything else in
 * the batch, because every earlier delivery on the channel is settled
 * already and later ones (read while waiting for confirms) have higher
 * tags. */
static int settle(warren_worker *w, int n) {
    uint64_t last_ack = 0;
    int rc = 0;
    int nack_mode = w->c->retry.mode == WARREN__RETRY_NACK;
    for (int i = 0; i < n && rc == 0; i++) {
        item *it = &w->items[i];
        uint64_t tag = w->slots[i].msg.delivery_tag;
        if (it->fate == FATE_REQUEUE) {
            rc = warren__session_nack(w->sess, tag, 0, 1);
        } else if (nack_mode &&
                   (it->fate == FATE_RETRY || it->fate == FATE_DEFER)) {
            /* The broker dead-letters it through <queue>.retry and back. */
            rc = warren__session_nack(w->sess, tag, 0, 0);
        } else {
            last_ack = tag;
        }
    }
    if (rc == 0 && last_ack != 0) {
        rc = warren__session_ack(w->sess, last_ack, 1);
    }
    return rc;
}

static void count_and_log(warren_worker *w, int n) {
    for (int i = 0; i < n; i++) {
        item *it = &w->items[i];
        const struct warren_msg *m = &w->slots[i].msg;
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
        default:
            it->outcome = "requeued";
            lvl = WARREN_LOG_INFO;
            break;
        }
        log_item(w, m, it, lvl, -1);
    }
}

/* Runs one batch of `n` deliveries through steps 1-5. Returns 0, or an
 * error that ends this session (connection) or the worker (store full). */
static int process_batch(warren_worker *w, int n) {
    int n_claims, rc;
    atomic_store_explicit(&w->ws->in_flight, n, memory_order_relaxed);
    classify(w, n, &n_claims);
    rc = claim(w, n, n_claims);
    if (rc != 0) {
        warren__log(WARREN_LOG_ERROR,
                    &(warren__log_fields){"store_error", w->c->queue, NULL,
                                          NULL, -1, -1},
                    "claiming a batch failed, it will be redelivered: %s",
                    warren__store_errstr(w->store));
        if (rc == WARREN_ERR_STORE_BUSY) {
            /* Nothing was claimed: hand the whole batch back. */
            rc = warren__session_nack(w->sess, w->slots[n - 1].msg.delivery_tag,
                                      1, 1);
            return rc ? WARREN_ERR_CONNECTION : 0;
        }
        set_err(w, "%s", warren__store_errstr(w->store));
        return rc;
    }
    WARREN_FAILPOINT("claim.after");
    run_handlers(w, n);
    WARREN_FAILPOINT("handler.after");
    publish_copies(w, n);
    int broken = warren__session_broken(w->sess);
    if (broken) {
        /* The originals cannot be acked on this connection and come back.
         * Outcomes of handlers that ran are still recorded, so that their
         * redeliveries are duplicates and no effect runs twice; what needed
         * the broker (a nack into the retry queue) is released instead. */
        for (int i = 0; i < n; i++) {
            fate f = w->items[i].fate;
            if (w->c->retry.mode == WARREN__RETRY_NACK &&
                (f == FATE_RETRY || f == FATE_DEFER)) {
                w->items[i].fate = FATE_REQUEUE;
            }
        }
    }
    if (w->store) {
        rc = record_outcomes(w, n);
        if (rc != 0) {
            warren__log(WARREN_LOG_ERROR,
                        &(warren__log_fields){"store_error", w->c->queue, NULL,
                                              NULL, -1, -1},
                        "recording outcomes failed, nothing of this batch is "
                        "acked and it will be redelivered: %s",
                        warren__store_errstr(w->store));
            if (!broken) {
                warren__session_nack(w->sess, w->slots[n - 1].msg.delivery_tag,
                                     1, 1);
            }
            if (rc == WARREN_ERR_STORE_BUSY) {
                return broken ? WARREN_ERR_CONNECTION : 0;
            }
            set_err(w, "%s", warren__store_errstr(w->store));
            return rc;
        }
    }
    if (broken) {
        return WARREN_ERR_CONNECTION;
    }
    WARREN_FAILPOINT("commit.after");
    rc = settle(w, n);
    atomic_store_explicit(&w->ws->in_flight, 0, memory_order_relaxed);
    count_and_log(w, n);
    for (int i = 0; i < n; i++) {
        if (w->slots[i].body_cap > BODY_KEEP_BYTES) {
            free(w->slots[i].body);
            w->slots[i].body = NULL;
            w->slots[i].body_cap = 0;
        }
    }
    warren__session_release(w->sess);
    return rc ? WARREN_ERR_CONNECTION : 0;
}

/* ---- setup and the loop ---------------------------------------------------
 */

static int open_store(warren_worker *w) {
    char err[1024];
    if (!w->c->dedup) {
        return 0;
    }
    warren__store_opts o = {
        .synchronous = w->cfg->store.synchronous,
        .busy_timeout_ms = w->cfg->store.busy_timeout_ms,
        .lease_s = w->cfg->store.lease_s,
        .owner_host = w->host,
        .owner_pid = (int)getpid(),
    };
    int rc =
        warren__store_open(w->cfg->store.path, &o, &w->store, err, sizeof err);
    if (rc != 0) {
        set_err(w, "%s", err);
    }
    return rc;
}

static int load_handler(warren_worker *w) {
    char err[1024] = "";
    int rc;
    warren__ctx_reset(&w->ctx, 0);
    w->ctx.store = NULL;
    if (w->fn) {
        rc = warren__handler_from_fn(w->fn, w->fn_init, w->fn_fini, w->fn_arg,
                                     &w->ctx, &w->handler, err, sizeof err);
    } else {
        rc = warren__handler_load(w->c->handler, &w->ctx, &w->handler, err,
                                  sizeof err);
    }
    if (rc != 0) {
        set_err(w, "consumer '%s': %s", w->c->queue, err);
    }
    return rc;
}

static int connect_session(warren_worker *w) {
    char err[1024];
    warren__topo_op *ops = NULL;
    int rc = warren__session_connect(w->cfg, w->url_index, &w->sess, err,
                                     sizeof err);
    if (rc != 0) {
        set_err(w, "%s", err);
        w->url_index = (w->url_index + 1) % w->cfg->broker.n_urls;
        return rc;
    }
    ops = calloc(WARREN__TOPO_MAX_OPS, sizeof *ops);
    if (ops == NULL) {
        return WARREN_ERR_NOMEM;
    }
    int n = warren__topology_plan(w->c, ops, WARREN__TOPO_MAX_OPS);
    if (n < 0) {
        set_err(w, "consumer '%s': cannot plan its topology (name too long?)",
                w->c->queue);
        rc = WARREN_ERR_CONFIG;
    } else {
        rc = warren__session_apply(w->sess, ops, n);
        if (rc != 0) {
            set_err(w, "%s", warren__session_errstr(w->sess));
        }
    }
    free(ops);
    if (rc == 0) {
        rc = warren__session_qos(w->sess, w->c->prefetch);
    }
    if (rc == 0) {
        rc = warren__session_consume(w->sess, w->c->queue);
    }
    if (rc != 0) {
        if (w->err[0] == '\0') {
            set_err(w, "%s", warren__session_errstr(w->sess));
        }
        warren__session_free(w->sess);
        w->sess = NULL;
    }
    return rc;
}

static void maybe_prune(warren_worker *w) {
    int64_t now = warren__now_ms();
    int deleted = 0;
    if (w->store == NULL || w->cfg->store.retention_s == 0 ||
        now - w->last_prune_ms < PRUNE_EVERY_MS) {
        return;
    }
    w->last_prune_ms = now;
    if (warren__store_prune(w->store, now, w->cfg->store.retention_s,
                            PRUNE_BATCH, &deleted) == 0 &&
        deleted == PRUNE_BATCH) {
        /* More to do: come back on the next idle tick, not in a loop. */
        w->last_prune_ms = now - PRUNE_EVERY_MS;
    }
}

/* Consumes until stopped or the session fails; returns BREAKER_PAUSE when
 * the breaker is open. */
static int consume_loop(warren_worker *w) {
    int batch_max = w->c->batch_max;
    double burst = warren__ratelimit_burst(&w->rate);
    if (burst > 0 && burst < (double)batch_max) {
        /* A batch is claimed as a whole before its handlers run: under a
         * rate limit keep it to what the bucket releases in about 0.1 s,
         * so claims stay short and outcomes commit (and acks go out)
         * steadily instead of after a long paced run. */
        batch_max = (int)burst;
    }
    while (!w->stop) {
        int n = 0;
        if (warren__breaker_wait_ms(&w->breaker, warren__mono_ms()) > 0) {
            return BREAKER_PAUSE;
        }
        int rc = warren__session_next(w->sess, &w->slots[0], HARD_BODY_LIMIT,
                                      POLL_MS);
        if (rc < 0) {
            set_err(w, "%s", warren__session_errstr(w->sess));
            return rc;
        }
        if (rc == 0) {
            maybe_prune(w);
            continue;
        }
        n = 1;
        while (n < batch_max && warren__session_pending(w->sess)) {
            rc =
                warren__session_next(w->sess, &w->slots[n], HARD_BODY_LIMIT, 0);
            if (rc < 0) {
                set_err(w, "%s", warren__session_errstr(w->sess));
                return rc;
            }
            if (rc == 0) {
                break;
            }
            n++;
        }
        rc = process_batch(w, n);
        if (rc != 0) {
            if (w->err[0] == '\0' && w->sess) {
                set_err(w, "%s", warren__session_errstr(w->sess));
            }
            return rc;
        }
    }
    return 0;
}

static void sleep_ms(warren_worker *w, int64_t ms) {
    int64_t end = warren__mono_ms() + ms;
    while (!w->stop && warren__mono_ms() < end) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* The breaker is open; the caller has closed the connection, so the broker
 * requeues everything it had prefetched to us (never claimed, so no
 * attempt is spent) and delivers nothing more. Waits out open_s, then the
 * caller reconnects and the breaker, now half-open, lets its trials
 * through. Closing is simpler than basic.cancel: after a cancel the
 * deliveries already sent stay unacked on the channel and must each be
 * nacked, and the idle connection's heartbeats must be serviced. */
static void pause_for_breaker(warren_worker *w) {
    int64_t wait = warren__breaker_wait_ms(&w->breaker, warren__mono_ms());
    warren__log(WARREN_LOG_INFO,
                &(warren__log_fields){"breaker_pause", w->c->queue, NULL, NULL,
                                      -1, wait},
                "breaker open: not consuming for %lld ms (connection closed, "
                "prefetched messages back in the queue)",
                (long long)wait);
    sleep_ms(w, wait);
    if (!w->stop) {
        warren__breaker_wait_ms(&w->breaker, warren__mono_ms());
    }
}

int warren_worker_run(warren_worker *w) {
    int rc, ever_connected = 0, first_tries = 0;
    int64_t backoff_ms = RECONNECT_MIN_MS;
    w->err[0] = '\0';
    if (gethostname(w->host, sizeof w->host) != 0) {
        snprintf(w->host, sizeof w->host, "localhost");
    }
    w->host[sizeof w->host - 1] = '\0';
    snprintf(w->worker_name, sizeof w->worker_name, "%s:%d", w->host,
             (int)getpid());
    atomic_store_explicit(&w->ws->pid, (int64_t)getpid(), memory_order_relaxed);
    w->slots = calloc((size_t)w->c->batch_max, sizeof *w->slots);
    w->items = calloc((size_t)w->c->batch_max, sizeof *w->items);
    w->claims = calloc((size_t)w->c->batch_max, sizeof *w->claims);
    if (!w->slots || !w->items || !w->claims) {
        set_err(w, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    init_amqp_pool(&w->pool, 16384);
    warren__breaker_init(&w->breaker, &w->c->breaker, w->c->queue);
    /* "Across the pool": each of the consumer's workers takes an equal
     * share. Workers that idle leave theirs unused, so a pool whose work
     * is uneven stays under the limit rather than reaching it. */
    warren__ratelimit_init(&w->rate,
                           w->c->rate_limit_per_s /
                               (w->c->workers > 0 ? w->c->workers : 1),
                           warren__mono_ms());
    /* Handler first: a handler that cannot load should fail before any
     * connection is made or any message is taken. */
    rc = load_handler(w);
    if (rc == 0) {
        rc = open_store(w);
    }
    while (rc == 0 && !w->stop) {
        rc = connect_session(w);
        if (rc != 0) {
            int fatal = rc == WARREN_ERR_PRECONDITION ||
                        rc == WARREN_ERR_CONFIG || rc == WARREN_ERR_NOMEM;
            int unreachable =
                rc == WARREN_ERR_CONNECT || rc == WARREN_ERR_TIMEOUT;
            if (!ever_connected && unreachable &&
                ++first_tries < w->cfg->broker.n_urls) {
                continue; /* fail over to the next of broker.urls */
            }
            if (!ever_connected || fatal) {
                break; /* a first failure is the operator's to see */
            }
            warren__log(WARREN_LOG_WARN,
                        &(warren__log_fields){"reconnect", w->c->queue, NULL,
                                              NULL, -1, backoff_ms},
                        "reconnecting in %lld ms: %s", (long long)backoff_ms,
                        w->err);
            sleep_ms(w, backoff_ms + (int64_t)(warren__rng_uniform() *
                                               (double)backoff_ms / 2));
            backoff_ms = backoff_ms * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS
                                                           : backoff_ms * 2;
            rc = 0;
            continue;
        }
        if (!ever_connected) {
            warren__log(WARREN_LOG_INFO,
                        &(warren__log_fields){"consuming", w->c->queue, NULL,
                                              NULL, -1, -1},
                        "consuming from '%s' (prefetch %u, batch %d)",
                        w->c->queue, w->c->prefetch, w->c->batch_max);
        }
        if (ever_connected) {
            atomic_fetch_add_explicit(&w->ws->reconnects, 1,
                                      memory_order_relaxed);
        }
        ever_connected = 1;
        backoff_ms = RECONNECT_MIN_MS;
        atomic_store_explicit(&w->ws->connected, 1, memory_order_relaxed);
        rc = consume_loop(w);
        if (w->stop && rc == 0) {
            warren__session_cancel(w->sess);
        }
        warren__session_free(w->sess);
        w->sess = NULL;
        atomic_store_explicit(&w->ws->connected, 0, memory_order_relaxed);
        atomic_store_explicit(&w->ws->in_flight, 0, memory_order_relaxed);
        publish_breaker(w);
        if (rc == BREAKER_PAUSE) {
            pause_for_breaker(w);
            rc = 0;
            continue;
        }
        if (rc == WARREN_ERR_STORE_FULL || rc == WARREN_ERR_STORE ||
            rc == WARREN_ERR_STORE_CORRUPT || rc == WARREN_ERR_NOMEM) {
            break;
        }
        if (rc != 0 && !w->stop) {
            warren__log(WARREN_LOG_WARN,
                        &(warren__log_fields){"disconnected", w->c->queue, NULL,
                                              NULL, -1, -1},
                        "%s", w->err);
            rc = 0; /* reconnect */
        }
    }
    warren__handler_free(w->handler);
    w->handler = NULL;
    warren__store_close(w->store);
    w->store = NULL;
    empty_amqp_pool(&w->pool);
    release_batch_memory(w);
    if (rc == 0) {
        w->err[0] = '\0';
        return 0;
    }
    if (w->err[0] == '\0') {
        set_err(w, "%s", warren_strerror(rc));
    }
    return rc;
}

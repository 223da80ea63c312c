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
 * Group commit saves a sync per batch: when more deliveries are already
 * buffered at step 4, they are read as the next batch and claimed inside
 * the same transaction (claim_next()), so one commit covers this batch's
 * outcomes and the next one's claims; with nothing buffered the outcomes
 * commit alone at once. Acks are coalesced across batches (ACK_EVERY) but
 * never sent before their outcomes commit.
 * A failure at any step leaves the affected originals unacknowledged, so
 * the broker redelivers them and the store keeps them from running twice.
 * Before each handler call the circuit breaker and the rate limiter have
 * their say: an open breaker holds the rest of the batch (claims released,
 * deliveries kept unacked on the open channel) and reads nothing more until
 * open_s has passed; the held ones then run first, as the half-open trials
 * (see hold_for_breaker()).
 */
#include "backoff.h"
#include "breaker.h"
#include "ctx.h"
#include "failover.h"
#include "failpoint.h"
#include "handler_api.h"
#include "hostid.h"
#include "log.h"
#include "msgid.h"
#include "ratelimit.h"
#include "retrybudget.h"
#include "session.h"
#include "store.h"
#include "topology.h"
#include "url.h"
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
/* Acks are coalesced into one multiple-ack per this many settled messages
 * (capped at half the prefetch), or once the oldest unsent one is this old,
 * or when no delivery arrives within ACK_IDLE_MS: the broker pays ~20-35 us
 * per ack frame (shared/NOTES-rabbitmq.md), and a batch is only what is
 * already buffered, often a handful of messages. */
#define ACK_EVERY 100
#define ACK_MAX_DELAY_MS 20
#define ACK_IDLE_MS 2
/* How long outcomes of handlers that ran wait for a busy store before the
 * batch is given up: handing it back would run those handlers again. */
#define RECORD_WAIT_MS 60000
#define DEFER_DELAY_MS 1000
#define PRUNE_EVERY_MS 60000
#define PRUNE_BATCH 500
#define RECONNECT_MIN_MS 500
#define RECONNECT_MAX_MS 30000
/* Sleep step while waiting for a rate-limit token, and how often such a
 * wait answers heartbeats. */
#define TOKEN_STEP_MS 20
#define TOKEN_SERVICE_MS 1000

typedef enum {
    FATE_NONE = 0, /* not decided yet: run the handler */
    FATE_ACK,      /* done: record done, ack */
    FATE_RETRY,    /* failed: copy to the delay cascade (or nack), ack */
    FATE_DEAD,     /* copy to the DLQ, record dead, ack */
    FATE_SKIP,     /* duplicate or already dead: ack without running */
    FATE_DEFER,    /* held by another worker: put back, no attempt spent */
    FATE_REQUEUE,  /* could not be resolved now: nack with requeue */
    FATE_HOLD      /* breaker open: claim released, kept unacked to run
                      first once it half-opens (hold_for_breaker()) */
} fate;

typedef struct {
    fate fate;
    int claim; /* index into claims[], -1 if not in the store */
    char id[WARREN__ID_MAX + 1];
    int attempt;
    uint32_t delay_ms;
    int64_t first_failed_at_ms;
    int published; /* a copy went out in this batch */
    int recorded;  /* done committed with the handler's own transaction */
    int released;  /* claim given back before a suspect ran: claim again */
    int crashed;   /* its last run killed the worker (store's report) */
    /* Came back from the delay cascade (its route is restored). */
    int from_cascade;
    char reason[WARREN__ERROR_MAX + 1];
    const char *outcome; /* for logs */
    const char *handler; /* "primary", "fallback"; NULL if none ran */
} item;

struct warren_worker {
    const struct warren_config *cfg;
    const warren__consumer_cfg *c;
    warren_handler_fn fn;
    warren_handler_init_fn fn_init;
    warren_handler_fini_fn fn_fini;
    char *fn_arg;

    warren__handler *handler;
    warren__handler *fallback; /* breaker.fallback; NULL: pause instead */
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
    warren__retrybudget budget;

    /* Two halves of batch_max each: while batch N settles, batch N+1 is
     * already read and claimed in the other (see claim_next()). `slots`,
     * `items` and `claims` point at the half being worked on. */
    warren__delivery *slot_mem;
    item *item_mem;
    warren__claim *claim_mem;
    int half;
    warren__claim *claim_scratch; /* batch_max: claims taken again */
    int64_t lease_mono_ms;        /* when the current claims were leased */
    int view_rest; /* items from the view's start to the batch's end */
    warren__delivery *slots;
    item *items;
    warren__claim *claims;
    amqp_pool_t pool;     /* headers of copies, recycled every batch */
    uint8_t *hdr_scratch; /* error_budget()'s encoding buffer */
    size_t hdr_scratch_len;

    /* The coalesced multiple-ack not sent yet: its tag (0: none), how many
     * deliveries it settles, and since when (mono ms). */
    uint64_t ack_tag;
    int ack_count;
    int ack_every;
    int64_t ack_since_ms;

    /* Breaker holds: `n_held` deliveries of the current half are held
     * unacked (while any is, acks go one by one: a multiple-ack would
     * settle them too); once the batch is done they are moved to its first
     * `carried` slots, which take_batch() runs again as the next batch's
     * head. */
    int n_held;
    int carried;
};

_Static_assert(sizeof(((warren__wstats *)0)->running_id) >=
                   sizeof(((item *)0)->id),
               "wstats.running_id holds any id");

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
    /* A random node of broker.urls, so that workers spread (failover.h). */
    w->url_index = warren__url_at(cfg, warren__url_random_start());
    return w;
}

void warren__worker_set_first_url(warren_worker *w, unsigned k) {
    w->url_index = warren__url_at(w->cfg, k);
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
    for (int i = 0; w->slot_mem && i < 2 * w->c->batch_max; i++) {
        warren__delivery_free(&w->slot_mem[i]);
    }
}

static void use_half(warren_worker *w, int half) {
    size_t off = (size_t)half * (size_t)w->c->batch_max;
    w->half = half;
    w->slots = w->slot_mem + off;
    w->items = w->item_mem + off;
    w->claims = w->claim_mem + off;
}

void warren_worker_free(warren_worker *w) {
    if (w == NULL) {
        return;
    }
    release_batch_memory(w);
    free(w->slot_mem);
    free(w->item_mem);
    free(w->claim_mem);
    free(w->claim_scratch);
    free(w->fn_arg);
    free(w->hdr_scratch);
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
 * fits the negotiated frame_max. Counted exactly (the kept headers are
 * encoded as they will be sent) rather than estimated: with headers near
 * frame_max a flat reserve left no room at all, and the DLQ copy went out
 * without saying why. */
static size_t error_budget(warren_worker *w, const warren__delivery *d) {
    const struct warren_msg *m = &d->msg;
    const amqp_basic_properties_t *p = m->props;
    size_t frame = warren__session_frame_max(w->sess);
    /* frame header and end (8); class, weight, body size, flags (14);
     * delivery mode, priority, timestamp at most (10) */
    size_t used = 8 + 14 + 10;
    const struct {
        amqp_flags_t flag;
        const amqp_bytes_t *b;
    } strs[] = {{AMQP_BASIC_CONTENT_TYPE_FLAG, &p->content_type},
                {AMQP_BASIC_CONTENT_ENCODING_FLAG, &p->content_encoding},
                {AMQP_BASIC_CORRELATION_ID_FLAG, &p->correlation_id},
                {AMQP_BASIC_REPLY_TO_FLAG, &p->reply_to},
                {AMQP_BASIC_MESSAGE_ID_FLAG, &p->message_id},
                {AMQP_BASIC_TYPE_FLAG, &p->type},
                {AMQP_BASIC_USER_ID_FLAG, &p->user_id},
                {AMQP_BASIC_APP_ID_FLAG, &p->app_id},
                {AMQP_BASIC_CLUSTER_ID_FLAG, &p->cluster_id}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        if (p->_flags & strs[i].flag) {
            used += 1 + strs[i].b->len;
        }
    }
    /* The original headers the copy keeps, encoded as they will be. */
    int n = m->headers->num_entries;
    amqp_table_entry_t *kept =
        amqp_pool_alloc(&w->pool, sizeof *kept * (size_t)(n > 0 ? n : 1));
    if (w->hdr_scratch_len < frame) {
        /* One frame-sized buffer for the worker's life: this runs for
         * every failed message, and a malloc of 128 KiB is an mmap. */
        free(w->hdr_scratch);
        w->hdr_scratch = malloc(frame);
        w->hdr_scratch_len = w->hdr_scratch ? frame : 0;
    }
    uint8_t *scratch = w->hdr_scratch;
    size_t off = 0;
    int ok = kept != NULL && scratch != NULL;
    if (ok) {
        amqp_table_t t = {0, kept};
        for (int i = 0; i < n; i++) {
            if (!is_stripped_header(m->headers->entries[i].key)) {
                kept[t.num_entries++] = m->headers->entries[i];
            }
        }
        amqp_bytes_t buf = {frame, scratch};
        ok = amqp_encode_table(buf, &t, &off) == AMQP_STATUS_OK;
    }
    if (!ok) {
        return 0; /* does not fit a frame at all, or out of memory */
    }
    used += off;
    /* What warren adds: at most ten keys of up to 24 bytes with their
     * type bytes and 8-byte values (256), plus its variable strings. */
    used += 256 + strlen(w->c->queue) + strlen(d->exchange) +
            strlen(d->routing_key) + strlen(w->worker_name);
    if (used >= frame) {
        return 0;
    }
    size_t room = frame - used;
    return room < WARREN__ERROR_MAX ? room : WARREN__ERROR_MAX;
}

/* ---- the batch ---------------------------------------------------------- */

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
    const amqp_field_value_t *xd = warren__table_find(m->headers, "x-death");
    if (xd == NULL || xd->kind != AMQP_FIELD_KIND_ARRAY) {
        return;
    }
    size_t qlen = strlen(w->c->queue);
    for (int i = 0; i < xd->value.array.num_entries; i++) {
        const amqp_field_value_t *e = &xd->value.array.entries[i];
        if (e->kind != AMQP_FIELD_KIND_TABLE) {
            continue;
        }
        const amqp_field_value_t *q =
            warren__table_find(&e->value.table, "queue");
        const amqp_field_value_t *r =
            warren__table_find(&e->value.table, "reason");
        const amqp_field_value_t *c =
            warren__table_find(&e->value.table, "count");
        const amqp_field_value_t *t =
            warren__table_find(&e->value.table, "time");
        if (q == NULL || q->kind != AMQP_FIELD_KIND_UTF8 ||
            q->value.bytes.len != qlen ||
            memcmp(q->value.bytes.bytes, w->c->queue, qlen) != 0 || r == NULL ||
            r->kind != AMQP_FIELD_KIND_UTF8 || r->value.bytes.len != 8 ||
            memcmp(r->value.bytes.bytes, "rejected", 8) != 0 || c == NULL) {
            continue;
        }
        int64_t n = c->kind == AMQP_FIELD_KIND_I64   ? c->value.i64
                    : c->kind == AMQP_FIELD_KIND_I32 ? c->value.i32
                                                     : 0;
        if (n >= 1 && n < 1000000 && n + 1 > it->attempt) {
            it->attempt = (int)n + 1;
        }
        if (t != NULL && t->kind == AMQP_FIELD_KIND_TIMESTAMP &&
            t->value.u64 > 0 && t->value.u64 < (uint64_t)INT64_MAX / 1000 &&
            (it->first_failed_at_ms == 0 ||
             (int64_t)t->value.u64 * 1000 < it->first_failed_at_ms)) {
            it->first_failed_at_ms = (int64_t)t->value.u64 * 1000;
        }
        return;
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
        /* A held delivery classified again had its route restored already. */
        int carried = i < w->carried;
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
static void apply_claims(warren_worker *w, int n) {
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
static int claim(warren_worker *w, int n, int n_claims) {
    if (n_claims == 0) {
        return 0;
    }
    int rc = warren__store_claim_batch(w->store, w->claims, (size_t)n_claims,
                                       w->c->max_deliveries, warren__now_ms());
    if (rc != 0) {
        return rc;
    }
    w->lease_mono_ms = warren__mono_ms();
    apply_claims(w, n);
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
static void renew_leases(warren_worker *w, int from, int n) {
    int64_t lease_ms = (int64_t)w->cfg->store.lease_s * 1000;
    int k = 0;
    if (w->store == NULL ||
        warren__mono_ms() - w->lease_mono_ms < lease_ms / 3) {
        return;
    }
    /* Claims given back behind a suspect stay given back. */
    for (int i = from; i < n; i++) {
        const item *it = &w->items[i];
        if (it->claim >= 0 && !it->released &&
            (it->fate == FATE_NONE || it->fate == FATE_DEAD || it->crashed)) {
            w->claim_scratch[k++] = w->claims[it->claim];
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
        item *it = &w->items[i];
        if (it->claim < 0 || it->released ||
            (it->fate != FATE_NONE && it->fate != FATE_DEAD && !it->crashed)) {
            continue;
        }
        if (!w->claim_scratch[k++].lost) {
            continue;
        }
        w->claims[it->claim].lost = 1;
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
static void run_handlers(warren_worker *w, int n) {
    for (int i = 0; i < n; i++) {
        item *it = &w->items[i];
        struct warren_msg *m = &w->slots[i].msg;
        if (it->fate != FATE_NONE) {
            continue;
        }
        if (!w->stop) {
            /* to the end of the batch, past this segment */
            renew_leases(w, i, w->view_rest);
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
        publish_breaker(w);
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
        publish_breaker(w);
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

static void copy_props(amqp_basic_properties_t *p,
                       const amqp_basic_properties_t *orig,
                       const table_builder *tb) {
    *p = *orig;
    p->_flags &= ~AMQP_BASIC_EXPIRATION_FLAG;
    p->_flags |= AMQP_BASIC_HEADERS_FLAG;
    p->headers.num_entries = tb->n;
    p->headers.entries = tb->e;
}

/* publish_retry()'s answer when the original headers leave no room in a
 * frame for the retry headers: the message cannot travel the cascade, so
 * it is dead-lettered instead (publish_dead() drops those headers). */
#define RETRY_NO_ROOM 1
/* publish_retry()'s and publish_dead()'s answer for a too-large body that
 * could not be spooled (session.c logged why): a copy would be empty. */
#define BODY_LOST 2

static int publish_retry(warren_worker *w, warren__delivery *d, item *it,
                         int next_attempt, uint32_t delay_ms) {
    table_builder tb;
    char ex[WARREN__NAME_MAX], rk[WARREN__NAME_MAX + 64];
    amqp_basic_properties_t p;
    const struct warren_msg *m = &d->msg;
    if (d->body_lost) {
        return BODY_LOST;
    }
    size_t budget = error_budget(w, d);
    if (budget == 0) {
        return RETRY_NO_ROOM;
    }
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
        snprintf(e, budget + 1, "%s", it->reason);
        tb_str(&tb, "x-warren-error", e);
    }
    copy_props(&p, m->props, &tb);
    if (warren__delay_route(delay_ms, w->c->queue,
                            w->c->queue_type == WARREN__QUEUE_QUORUM, ex,
                            sizeof ex, rk, sizeof rk) != 0) {
        return WARREN_ERR_INVAL;
    }
    return warren__session_publish_delivery(w->sess, ex, rk, &p, d, NULL);
}

static int publish_dead(warren_worker *w, warren__delivery *d, item *it) {
    table_builder tb;
    amqp_basic_properties_t p;
    const struct warren_msg *m = &d->msg;
    if (d->body_lost) {
        return BODY_LOST;
    }
    int64_t now = warren__now_ms();
    size_t budget = error_budget(w, d);
    /* Original headers that leave no room for warren's own in one frame
     * are dropped from the copy, and the reason says so: a copy that can
     * never be published would requeue its original forever. */
    static const amqp_table_t no_headers = {0, NULL};
    int drop = budget == 0;
    if (tb_init(&tb, &w->pool, drop ? &no_headers : m->headers, 10) != 0) {
        return WARREN_ERR_NOMEM;
    }
    char e[WARREN__ERROR_MAX + 1];
    if (drop) {
        snprintf(e, sizeof e,
                 "original headers dropped: with warren's they would not fit "
                 "a %u-byte frame; %s",
                 (unsigned)warren__session_frame_max(w->sess), it->reason);
    } else {
        snprintf(e, budget + 1, "%s", it->reason);
    }
    tb_str(&tb, "x-warren-queue", w->c->queue);
    tb_str(&tb, "x-warren-exchange", d->exchange);
    tb_str(&tb, "x-warren-routing-key", d->routing_key);
    tb_int(&tb, "x-warren-attempts", it->attempt);
    tb_str(&tb, "x-warren-error", e);
    tb_int(&tb, "x-warren-first-failed-at",
           it->first_failed_at_ms ? it->first_failed_at_ms : now);
    tb_int(&tb, "x-warren-dead-at", now);
    tb_str(&tb, "x-warren-worker", w->worker_name);
    if (drop || warren__table_find(m->headers, "x-warren-replays") == NULL) {
        /* The generation the store recorded for this id (its claim's):
         * a replay of this copy must carry a higher one to run again. */
        tb_int(&tb, "x-warren-replays",
               header_int(m, "x-warren-replays", 0, INT64_MAX, 0));
    }
    copy_props(&p, m->props, &tb);
    /* A body over max_message_bytes was spooled to a file as it was read
     * (session.c): the copy is sent from there, frame by frame, whole. */
    return warren__session_publish_delivery(w->sess, "", warren__dlq_name(w->c),
                                            &p, d, NULL);
}

static int dead_instead_of_retry(warren_worker *w, warren__delivery *d,
                                 item *it) {
    char why[WARREN__ERROR_MAX + 1];
    snprintf(why, sizeof why,
             "cannot retry: its headers leave no room for the retry headers "
             "in one frame; last error: %s",
             it->reason[0] ? it->reason : "none");
    snprintf(it->reason, sizeof it->reason, "%s", why);
    it->fate = FATE_DEAD;
    return publish_dead(w, d, it);
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
                if (rc == RETRY_NO_ROOM) {
                    rc = dead_instead_of_retry(w, d, it);
                }
                it->published = any = 1;
                WARREN_FAILPOINT("retry.published");
            }
            break;
        case FATE_DEFER:
            if (republish) {
                rc = publish_retry(w, d, it, it->attempt, DEFER_DELAY_MS);
                if (rc == RETRY_NO_ROOM) {
                    rc = dead_instead_of_retry(w, d, it);
                }
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
        if (rc == BODY_LOST) {
            /* Never acked with an empty copy: it stays in the queue and
             * the spool is tried again at its redelivery. */
            warren__log(WARREN_LOG_ERROR,
                        &(warren__log_fields){"body_lost", w->c->queue,
                                              it->id[0] ? it->id : NULL, NULL,
                                              it->attempt, -1},
                        "a %llu-byte body could not be kept for its copy "
                        "(spool file failed): not acked, requeued",
                        (unsigned long long)d->msg.body_size_announced);
            it->fate = FATE_REQUEUE;
            it->published = 0;
            rc = 0;
        }
    }
    if (rc == 0 && any) {
        rc = warren__session_wait_confirms(w->sess,
                                           w->cfg->broker.confirm_timeout_ms);
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
        /* Every item that needed a copy goes back: those published (their
         * copies unconfirmed) and those after the failure, never sent. An
         * outcome recorded for one of the latter (dead, retrying) would make
         * its redelivery a duplicate with no copy anywhere: lost. */
        for (int i = 0; i < n; i++) {
            item *it = &w->items[i];
            int needs_copy = it->fate == FATE_DEAD ||
                             (republish && (it->fate == FATE_RETRY ||
                                            it->fate == FATE_DEFER));
            if (it->published || needs_copy) {
                it->fate = FATE_REQUEUE;
            }
        }
    }
    return rc;
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
static int record_outcomes(warren_worker *w, int n) {
    int rc = 0, any = warren__store_in_txn(w->store);
    int64_t now = warren__now_ms();
    for (int i = 0; i < n; i++) {
        item *it = &w->items[i];
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
static int flush_acks(warren_worker *w) {
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
static int nack_through(warren_worker *w, uint64_t tag) {
    int rc = flush_acks(w);
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
static int settle(warren_worker *w, int n) {
    uint64_t last_ack = 0;
    int rc = 0, acked = 0;
    int nack_mode = w->c->retry.mode == WARREN__RETRY_NACK;
    for (int i = 0; i < n && rc == 0; i++) {
        item *it = &w->items[i];
        uint64_t tag = w->slots[i].msg.delivery_tag;
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
            rc = flush_acks(w);
        }
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

/* Bytes of bodies a half of the batch memory reads before it stops: with
 * the one body that may cross it, a half holds less than twice
 * max_message_bytes, and the session's read-ahead has the same budget, so
 * a worker holds less than 6 x batch_bytes() of bodies, whatever
 * batch_max and prefetch are. */
static uint64_t batch_bytes(const warren_worker *w) {
    uint64_t limit = body_limit(w);
    return limit > BATCH_BYTES_MIN ? limit : BATCH_BYTES_MIN;
}

/* Reads deliveries already buffered (never waiting) into slots[from..max),
 * while the bodies held in the half stay under batch_bytes(). Returns how
 * many slots are filled in all, or a session error. */
static int fill_batch(warren_worker *w, int from, int max) {
    int n = from;
    uint64_t held = 0, budget = batch_bytes(w);
    for (int i = 0; i < from; i++) {
        held += w->slots[i].msg.body_len;
    }
    while (n < max && held < budget && warren__session_pending(w->sess)) {
        int rc = warren__session_next(w->sess, &w->slots[n], body_limit(w), 0);
        if (rc < 0) {
            set_err(w, "%s", warren__session_errstr(w->sess));
            return rc;
        }
        if (rc == 0) {
            break;
        }
        held += w->slots[n].msg.body_len;
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
 * other half: classified and claimed inside that same transaction, so one
 * commit (one sync) makes N's outcomes and N+1's claims durable together,
 * and N+1's handlers run only after it. Nothing buffered: N commits alone
 * at once, so light traffic never waits. Within the transaction a second
 * copy of an id of N sees N's outcome (done: a duplicate) and a handler's
 * inbox writes commit with its outcome, as before. Returns 0 with
 * `*next_n` deliveries claimed in the other half (w->slots still point at
 * N's), or a store error after which nothing of either batch may be acked
 * (`*next_n` then says how many of N+1 were read, to be handed back), or a
 * session error with N committed alone. */
static int claim_next(warren_worker *w, int *next_n, int *session_rc) {
    int batch_max = w->c->batch_max;
    int cur = w->half, n_claims = 0;
    *next_n = 0;
    *session_rc = 0;
    if (!may_pipeline(w) || !warren__session_pending(w->sess)) {
        return commit_outcomes(w);
    }
    double burst = warren__ratelimit_burst(&w->rate);
    if (burst > 0 && burst < (double)batch_max) {
        batch_max = (int)burst;
    }
    use_half(w, cur ^ 1);
    int m = fill_batch(w, 0, batch_max);
    if (m <= 0) {
        use_half(w, cur);
        *session_rc = m;
        return commit_outcomes(w);
    }
    classify(w, m, &n_claims);
    int rc =
        warren__store_claim_and_commit(w->store, w->claims, (size_t)n_claims,
                                       w->c->max_deliveries, warren__now_ms());
    if (rc == 0) {
        w->lease_mono_ms = warren__mono_ms();
        apply_claims(w, m);
    }
    use_half(w, cur);
    *next_n = m;
    return rc;
}

/* Last tag of the half other than the current one's first `n`. */
static uint64_t other_last_tag(warren_worker *w, int n) {
    size_t off = (size_t)(w->half ^ 1) * (size_t)w->c->batch_max;
    return w->slot_mem[off + (size_t)n - 1].msg.delivery_tag;
}

/* Points slots and items at the current half from index `from` on: a
 * segment of the batch is run through the same steps as a whole batch. */
static void set_view(warren_worker *w, int from) {
    use_half(w, w->half);
    w->slots += from;
    w->items += from;
}

/* 1 if item `i` of the current half is to run on its own: its claim was
 * taken over from an owner that never recorded an outcome (it may be what
 * killed that owner), or, with no claim to tell, the broker redelivered
 * it. */
static int is_suspect(warren_worker *w, int i) {
    const item *it = &w->items[i];
    if (it->fate != FATE_NONE) {
        return 0;
    }
    if (it->claim >= 0) {
        return w->claims[it->claim].taken_over;
    }
    return w->slots[i].msg.redelivered;
}

/* Before a suspect runs: acks owed go out, and the claims of the items
 * after it that are still to run are given back (their deliveries count
 * is not spent), so that if it kills this worker it alone is charged with
 * the crash. Returns 0 or a connection error; a store that cannot release
 * them now only costs that protection. */
static int isolate_suspect(warren_worker *w, int at, int n) {
    if (flush_acks(w) != 0) {
        set_err(w, "%s", warren__session_errstr(w->sess));
        return WARREN_ERR_CONNECTION;
    }
    int any = 0, rc = 0;
    int64_t now = warren__now_ms();
    for (int i = at + 1; i < n && rc == 0; i++) {
        item *it = &w->items[i];
        if (it->claim < 0 || it->fate != FATE_NONE ||
            w->claims[it->claim].status != WARREN__CLAIM_RUN) {
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
        item *it = &w->items[i];
        if (it->claim >= 0 && it->fate == FATE_NONE &&
            w->claims[it->claim].status == WARREN__CLAIM_RUN) {
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
        item *it = &w->items[i];
        if (it->released) {
            w->claim_scratch[k++] = w->claims[it->claim];
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
        if (nack_through(w, w->slots[n - 1].msg.delivery_tag) != 0) {
            return WARREN_ERR_CONNECTION;
        }
        if (rc == WARREN_ERR_STORE_BUSY) {
            return 1;
        }
        set_err(w, "%s", warren__store_errstr(w->store));
        return rc;
    }
    w->lease_mono_ms = warren__mono_ms();
    k = 0;
    for (int i = from; i < n; i++) {
        item *it = &w->items[i];
        if (it->released) {
            warren__claim *cl = &w->claims[it->claim];
            int suspect = cl->taken_over;
            *cl = w->claim_scratch[k++];
            cl->taken_over |= suspect; /* retaken from ourselves */
            it->released = 0;
        }
    }
    set_view(w, from);
    apply_claims(w, n - from);
    set_view(w, 0);
    return 0;
}

/* Runs items [from, from + n) of the current half (claimed) through steps
 * 2-5. With `last`, the segment ends the batch and group commit may read
 * and claim the next one (`*next_n` of them, in the other half). `batch_n`
 * is the size of the whole batch, all of which an error hands back.
 * Returns 0, 1 if a busy store handed the rest back, or an error that ends
 * this session (connection) or the worker (store full). */
static int process_segment(warren_worker *w, int from, int n, int batch_n,
                           int last, int *next_n) {
    int rc, session_rc = 0;
    uint64_t batch_last_tag = w->slots[batch_n - 1].msg.delivery_tag;
    set_view(w, from);
    w->view_rest = batch_n - from;
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
        if (rc == 0) {
            rc = broken || !last ? commit_outcomes(w)
                                 : claim_next(w, next_n, &session_rc);
            set_view(w, from); /* claim_next() switched halves and back */
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
                nack_through(w, both ? other_last_tag(w, *next_n)
                                     : batch_last_tag);
            }
            *next_n = 0;
            set_view(w, 0);
            if (rc == WARREN_ERR_STORE_BUSY) {
                return broken ? WARREN_ERR_CONNECTION : 1;
            }
            set_err(w, "%s", warren__store_errstr(w->store));
            return rc;
        }
    }
    if (broken) {
        set_view(w, 0);
        return WARREN_ERR_CONNECTION;
    }
    WARREN_FAILPOINT("commit.after");
    rc = session_rc ? session_rc : settle(w, n);
    count_and_log(w, n);
    set_view(w, 0);
    if (rc != 0) {
        *next_n = 0;
        return WARREN_ERR_CONNECTION;
    }
    return 0;
}

/* Runs one claimed batch of `n` deliveries through steps 2-5, and, with
 * group commit, reads and claims the next one (`*next_n` of them, left in
 * the other half, which is current on return). Returns 0, or an error that
 * ends this session (connection) or the worker (store full).
 * Suspects (is_suspect()) run on their own: what ran before one is
 * committed and settled first, and what comes after it is claimed again
 * only once it has an outcome, so a handler that kills its worker leaves
 * no other message of the batch charged with the crash. */
static int process_batch(warren_worker *w, int n, int *next_n) {
    int rc = 0;
    *next_n = 0;
    WARREN_FAILPOINT("claim.after");
    for (int a = 0; a < n && rc == 0;) {
        int suspect = is_suspect(w, a), b = a + 1;
        while (!suspect && b < n && !is_suspect(w, b)) {
            b++;
        }
        if (suspect && b < n) {
            rc = w->store ? isolate_suspect(w, a, n) : flush_acks(w);
            if (rc != 0) {
                break;
            }
        } else if (suspect && flush_acks(w) != 0) {
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
        if (w->items[i].fate == FATE_HOLD) {
            continue; /* kept whole for its run after the hold */
        }
        if (w->slots[i].body_cap > BODY_KEEP_BYTES) {
            free(w->slots[i].body);
            w->slots[i].body = NULL;
            w->slots[i].body_cap = 0;
        }
        warren__delivery_drop_spool(&w->slots[i]);
    }
    warren__session_release(w->sess);
    if (rc == 1) {
        rc = 0; /* a busy store handed the rest back */
    }
    if (rc != 0) {
        *next_n = 0;
        w->n_held = 0;
        if (w->err[0] == '\0' && rc == WARREN_ERR_CONNECTION && w->sess) {
            set_err(w, "%s", warren__session_errstr(w->sess));
        }
        return rc;
    }
    /* The held ones (none if an error handed the batch back) move to the
     * front, in tag order, for take_batch() to run again first. */
    w->carried = 0;
    for (int i = 0; w->n_held > 0 && i < n; i++) {
        if (w->items[i].fate == FATE_HOLD) {
            int k = w->carried++;
            if (k != i) {
                item t = w->items[k];
                w->items[k] = w->items[i];
                w->items[i] = t;
                warren__delivery_swap(&w->slots[k], &w->slots[i]);
            }
        }
    }
    w->n_held = w->carried;
    if (*next_n > 0) {
        use_half(w, w->half ^ 1);
    }
    return 0;
}

/* ---- setup and the loop ---------------------------------------------------
 */

static int open_store(warren_worker *w) {
    char err[1024];
    if (!w->c->dedup) {
        return 0;
    }
    int rc = warren__store_open_config(w->cfg, w->host, 0, &w->store, err,
                                       sizeof err);
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
    if (rc == 0 && w->c->breaker.fallback != NULL) {
        rc = warren__handler_load(w->c->breaker.fallback, &w->ctx, &w->fallback,
                                  err, sizeof err);
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
        w->url_index = warren__url_next(w->cfg, w->url_index);
        return rc;
    }
    if (warren__log_enabled(WARREN_LOG_INFO)) {
        char shown[WARREN__URL_MAX + 1];
        warren_redact_url(w->cfg->broker.urls[w->url_index], shown,
                          sizeof shown);
        warren__log(
            WARREN_LOG_INFO,
            &(warren__log_fields){"connected", w->c->queue, NULL, NULL, -1, -1},
            "connected to %s (broker.urls[%d] of %d)", shown, w->url_index,
            w->cfg->broker.n_urls);
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

/* Reads and claims a new batch (the first, or one after a batch that
 * committed alone) into the current half. Returns its size, 0 if there was
 * none (timeout, or a busy store handed it back), or an error. */
static int take_batch(warren_worker *w, int batch_max) {
    int rc;
    warren__session_spool(w->sess, body_limit(w), batch_bytes(w));
    if (w->carried > 0) {
        rc = 1; /* the held ones are the head of this batch */
    } else if (w->ack_tag != 0 && !warren__session_pending(w->sess)) {
        /* Acks are owed: wait a moment for more traffic to share them,
         * then send them before any longer wait. */
        rc = warren__session_next(w->sess, &w->slots[0], body_limit(w),
                                  ACK_IDLE_MS);
        if (rc == 0) {
            rc = flush_acks(w);
            if (rc != 0) {
                set_err(w, "%s", warren__session_errstr(w->sess));
                return WARREN_ERR_CONNECTION;
            }
            rc = warren__session_next(w->sess, &w->slots[0], body_limit(w),
                                      POLL_MS);
        }
    } else {
        rc =
            warren__session_next(w->sess, &w->slots[0], body_limit(w), POLL_MS);
    }
    if (rc < 0) {
        set_err(w, "%s", warren__session_errstr(w->sess));
        return rc;
    }
    if (rc == 0) {
        maybe_prune(w);
        return 0;
    }
    int n = fill_batch(w, w->carried > 0 ? w->carried : 1, batch_max);
    if (n < 0) {
        return n;
    }
    int n_claims;
    atomic_store_explicit(&w->ws->in_flight, n, memory_order_relaxed);
    classify(w, n, &n_claims);
    w->carried = 0;
    w->n_held = 0; /* in this batch now, settled with it */
    rc = claim(w, n, n_claims);
    if (rc != 0) {
        warren__log(WARREN_LOG_ERROR,
                    &(warren__log_fields){"store_error", w->c->queue, NULL,
                                          NULL, -1, -1},
                    "claiming a batch failed, it will be redelivered: %s",
                    warren__store_errstr(w->store));
        if (rc == WARREN_ERR_STORE_BUSY) {
            /* Nothing was claimed: hand the whole batch back. */
            rc = nack_through(w, w->slots[n - 1].msg.delivery_tag);
            return rc ? WARREN_ERR_CONNECTION : 0;
        }
        set_err(w, "%s", warren__store_errstr(w->store));
        return rc;
    }
    return n;
}

/* The breaker is open (and no fallback): holds until open_s has passed,
 * keeping the connection and channel. Nothing more is read into the batch;
 * what the broker has sent meanwhile stays in the session's bounded
 * read-ahead or unacked on the channel, and the held deliveries
 * (w->carried, their claims released) stay unacked too, so no delivery is
 * returned: a quorum queue before RabbitMQ 4.3 would count each return
 * against its x-delivery-limit. Heartbeats are answered while waiting.
 * Returns 0 once the breaker lets trials through (the held ones run first,
 * see take_batch()) or when asked to stop, or a connection error. */
static int hold_for_breaker(warren_worker *w) {
    int64_t wait = warren__breaker_wait_ms(&w->breaker, warren__mono_ms());
    int64_t last_service = warren__mono_ms();
    warren__log(WARREN_LOG_INFO,
                &(warren__log_fields){"breaker_pause", w->c->queue, NULL, NULL,
                                      -1, wait},
                "breaker open: not consuming for %lld ms (%d held, connection "
                "kept, nothing handed back)",
                (long long)wait, w->carried);
    if (flush_acks(w) != 0) {
        set_err(w, "%s", warren__session_errstr(w->sess));
        return WARREN_ERR_CONNECTION;
    }
    while (!w->stop &&
           warren__breaker_wait_ms(&w->breaker, warren__mono_ms()) > 0) {
        int64_t now = warren__mono_ms();
        if (now - last_service >= TOKEN_SERVICE_MS) {
            if (warren__session_service(w->sess) < 0 ||
                warren__session_broken(w->sess)) {
                set_err(w, "%s", warren__session_errstr(w->sess));
                return WARREN_ERR_CONNECTION;
            }
            last_service = now;
        }
        struct timespec ts = {0, TOKEN_STEP_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Consumes until stopped or the session fails. A batch claimed ahead by
 * group commit is always run (or, when stopping, handed back through its
 * handlers' requeue) before the loop ends, so no claim is left behind;
 * deliveries held for the breaker are handed back on a stop. */
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
    int n = 0, rc;
    w->ack_tag = 0;
    w->ack_count = 0;
    w->ack_every =
        w->c->prefetch / 2 < ACK_EVERY ? w->c->prefetch / 2 : ACK_EVERY;
    if (w->ack_every < 1) {
        w->ack_every = 1;
    }
    w->n_held = 0;
    w->carried = 0;
    use_half(w, 0);
    while (!w->stop || n > 0) {
        if (n == 0) {
            if (w->fallback == NULL &&
                warren__breaker_wait_ms(&w->breaker, warren__mono_ms()) > 0) {
                rc = hold_for_breaker(w);
                if (rc != 0) {
                    return rc;
                }
                continue;
            }
            n = take_batch(w, batch_max);
            if (n < 0) {
                return n;
            }
            if (n == 0) {
                continue;
            }
        }
        rc = process_batch(w, n, &n);
        if (rc != 0) {
            if (w->err[0] == '\0' && w->sess) {
                set_err(w, "%s", warren__session_errstr(w->sess));
            }
            return rc;
        }
    }
    if (w->carried > 0) {
        /* Stopped while holding: the held ones go back untouched. */
        uint64_t tag = w->slots[w->carried - 1].msg.delivery_tag;
        w->carried = 0;
        if (nack_through(w, tag) != 0) {
            set_err(w, "%s", warren__session_errstr(w->sess));
            return WARREN_ERR_CONNECTION;
        }
    }
    if (flush_acks(w) != 0) {
        set_err(w, "%s", warren__session_errstr(w->sess));
        return WARREN_ERR_CONNECTION;
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

int warren_worker_run(warren_worker *w) {
    int rc, ever_connected = 0, first_tries = 0;
    int64_t backoff_ms = RECONNECT_MIN_MS;
    w->err[0] = '\0';
    rc = warren__host_id(w->host, sizeof w->host, w->err, sizeof w->err);
    if (rc != 0) {
        return rc;
    }
    snprintf(w->worker_name, sizeof w->worker_name, "%s:%d", w->host,
             (int)getpid());
    atomic_store_explicit(&w->ws->pid, (int64_t)getpid(), memory_order_relaxed);
    size_t halves = 2 * (size_t)w->c->batch_max;
    w->slot_mem = calloc(halves, sizeof *w->slot_mem);
    w->item_mem = calloc(halves, sizeof *w->item_mem);
    w->claim_mem = calloc(halves, sizeof *w->claim_mem);
    w->claim_scratch =
        calloc((size_t)w->c->batch_max, sizeof *w->claim_scratch);
    if (!w->slot_mem || !w->item_mem || !w->claim_mem || !w->claim_scratch) {
        set_err(w, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    use_half(w, 0);
    init_amqp_pool(&w->pool, 16384);
    warren__breaker_init(&w->breaker, &w->c->breaker, w->c->queue);
    warren__retrybudget_init(&w->budget, &w->c->retry.budget);
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
            int fatal = warren_err_fatal(rc) == WARREN_FATAL_ALWAYS;
            int unreachable = warren__url_try_next(rc);
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
        if (rc < 0 && warren_err_fatal(rc) == WARREN_FATAL_ALWAYS) {
            break;
        }
        if (rc != 0 && !w->stop) {
            warren__log(WARREN_LOG_WARN,
                        &(warren__log_fields){"disconnected", w->c->queue, NULL,
                                              NULL, -1, -1},
                        "%s", w->err);
            /* The node may be the one that went away: the next connect
             * goes to another node of the cluster, and only if that fails
             * does the backoff start. */
            w->url_index = warren__url_next(w->cfg, w->url_index);
            rc = 0; /* reconnect */
        }
    }
    warren__handler_free(w->handler);
    w->handler = NULL;
    warren__handler_free(w->fallback);
    w->fallback = NULL;
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

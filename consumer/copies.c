/*
 * copies.c - the retry and dead-letter copies of a batch's failed messages:
 * their headers (the original's, minus warren's own failure headers and the
 * broker's death records, plus the new ones), their properties, and their
 * publishing, confirmed before any original is acked (step 3 of batch.c).
 *
 * A copy's header frame always fits the negotiated frame_max: the error
 * text is cut to what is left (error_budget()), and a message whose own
 * headers leave no room is dead-lettered, or dead-lettered without them.
 */
#include "worker_impl.h"

#include "failpoint.h"
#include "log.h"
#include "topology.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFER_DELAY_MS 1000

void warren__worker_copies_init(warren_worker *w) {
    warren__arena_init(&w->pool, 16384);
}

void warren__worker_copies_fini(warren_worker *w) {
    warren__arena_empty(&w->pool);
}

static int is_stripped_header(warren__bytes key) {
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
    warren__table_entry *e;
    int n, cap;
    warren__arena *pool;
} table_builder;

static warren__table_entry *tb_add(table_builder *tb, const char *key) {
    if (tb->n == tb->cap) {
        return NULL;
    }
    warren__table_entry *e = &tb->e[tb->n++];
    e->key = warren__cstr_bytes(key);
    return e;
}

static void tb_str(table_builder *tb, const char *key, const char *val) {
    warren__table_entry *e = tb_add(tb, key);
    if (e) {
        warren__bytes b;
        size_t len = strlen(val);
        warren__arena_alloc_bytes(tb->pool, len, &b);
        if (b.bytes == NULL && len > 0) {
            tb->n--;
            return;
        }
        if (len > 0) {
            memcpy(b.bytes, val, len); /* an empty value has no buffer */
        }
        e->value.kind = WARREN__FIELD_UTF8;
        e->value.value.bytes = b;
    }
}

static void tb_int(table_builder *tb, const char *key, int64_t val) {
    warren__table_entry *e = tb_add(tb, key);
    if (e) {
        e->value.kind = WARREN__FIELD_I64;
        e->value.value.i64 = val;
    }
}

/* Starts a copy's header table from the original's, minus warren's own
 * failure headers and the broker's death records, so headers never grow
 * across retries. */
static int tb_init(table_builder *tb, warren__arena *pool,
                   const warren__table *orig, int extra) {
    tb->pool = pool;
    tb->cap = orig->num_entries + extra;
    tb->n = 0;
    tb->e = warren__arena_alloc(pool, sizeof *tb->e * (size_t)(tb->cap + 1));
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

/* The error text that fits: at most 1 KiB, and less when the original
 * headers already fill much of a frame, so the copy's header frame always
 * fits the negotiated frame_max. Counted exactly (the kept headers are
 * encoded as they will be sent) rather than estimated: with headers near
 * frame_max a flat reserve left no room at all, and the DLQ copy went out
 * without saying why. */
static size_t error_budget(warren_worker *w, const warren__delivery *d) {
    const struct warren_msg *m = &d->msg;
    const warren__props *p = m->props;
    size_t frame = warren__session_frame_max(w->sess);
    /* frame header and end (8); class, weight, body size, flags (14);
     * delivery mode, priority, timestamp at most (10) */
    size_t used = 8 + 14 + 10;
    const struct {
        uint32_t flag;
        const warren__bytes *b;
    } strs[] = {{WARREN__PROP_CONTENT_TYPE, &p->content_type},
                {WARREN__PROP_CONTENT_ENCODING, &p->content_encoding},
                {WARREN__PROP_CORRELATION_ID, &p->correlation_id},
                {WARREN__PROP_REPLY_TO, &p->reply_to},
                {WARREN__PROP_MESSAGE_ID, &p->message_id},
                {WARREN__PROP_TYPE, &p->type},
                {WARREN__PROP_USER_ID, &p->user_id},
                {WARREN__PROP_APP_ID, &p->app_id},
                {WARREN__PROP_CLUSTER_ID, &p->cluster_id}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        if (p->flags & strs[i].flag) {
            used += 1 + strs[i].b->len;
        }
    }
    /* The original headers the copy keeps, encoded as they will be. */
    int n = m->headers->num_entries;
    warren__table_entry *kept =
        warren__arena_alloc(&w->pool, sizeof *kept * (size_t)(n > 0 ? n : 1));
    size_t off = 0;
    int ok = kept != NULL;
    if (ok) {
        warren__table t = {0, kept};
        for (int i = 0; i < n; i++) {
            if (!is_stripped_header(m->headers->entries[i].key)) {
                kept[t.num_entries++] = m->headers->entries[i];
            }
        }
        ok = warren__session_table_len(w->sess, &t, &off) == 0;
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

static void copy_props(warren__props *p, const warren__props *orig,
                       const table_builder *tb) {
    *p = *orig;
    p->flags &= ~WARREN__PROP_EXPIRATION;
    p->flags |= WARREN__PROP_HEADERS;
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
    warren__props p;
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
    warren__props p;
    const struct warren_msg *m = &d->msg;
    if (d->body_lost) {
        return BODY_LOST;
    }
    int64_t now = warren__now_ms();
    size_t budget = error_budget(w, d);
    /* Original headers that leave no room for warren's own in one frame
     * are dropped from the copy, and the reason says so: a copy that can
     * never be published would requeue its original forever. */
    static const warren__table no_headers = {0, NULL};
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
int warren__worker_publish_copies(warren_worker *w, const warren__batch *b,
                                  int n) {
    int any = 0, rc = 0;
    int republish = w->c->retry.mode == WARREN__RETRY_REPUBLISH;
    warren__arena_recycle(&w->pool);
    for (int i = 0; i < n && rc == 0; i++) {
        item *it = &b->items[i];
        warren__delivery *d = &b->slots[i];
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
            item *it = &b->items[i];
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

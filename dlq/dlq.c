/*
 * dlq.c - reading a dead-letter queue without disturbing it, and acting on
 * what an operator selected: remove, or replay with confirms.
 *
 * A dedicated session consumes the DLQ with manual acks and no prefetch
 * limit (a limit would stall behind the messages held but not selected),
 * reads exactly the depth a passive declare reported at the start, and
 * keeps every delivery unacked. Selected messages are acked only after
 * their copy is confirmed; everything else is given back at the end by
 * basic.cancel and a nack-requeue of all outstanding tags, which RabbitMQ
 * puts back at its original position (with the redelivered flag set).
 * Replay works in windows: the selected deliveries of a window are kept,
 * those whose id is being processed right now left out, their copies (one
 * replay generation up) published back to back, and the confirms awaited
 * once, before one ack settles the window.
 */
#include "dlq.h"

#include "failover.h"
#include "failpoint.h"
#include "log.h"
#include "topology.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CONFIRM_TIMEOUT_MS 30000
/* How long to wait for the next delivery of the depth seen at the start
 * before concluding someone else took the rest. */
#define READ_IDLE_MS 10000
/* Copies published before their confirms are awaited, and dead letters
 * acked at once. Large enough that the confirm round trip and the ack are
 * paid once per thousands of messages; a window's deliveries are kept in
 * memory until it is flushed (a few MB). */
#define DEFAULT_WINDOW 2048
/* A window is also flushed once its kept bodies reach this many bytes, so
 * that large dead letters do not multiply into gigabytes of memory. */
#define WINDOW_BYTES ((uint64_t)64 << 20)
/* A slot's body buffer grown past this is given back once published. */
#define SLOT_KEEP_BYTES ((size_t)1 << 20)
/* Import's stop-and-wait batch. */
#define IMPORT_WINDOW 256
/* When paced, publish what was selected at least this often, so that the
 * rate holds over short intervals and the DLQ shrinks while one watches. */
#define PACED_FLUSH_MS 200

/* A selected dead letter whose copy is not published yet. The delivery is
 * read straight into its slot, so keeping it costs no copy. */
typedef struct {
    warren__delivery d;
    char to[WARREN__NAME_MAX]; /* the copy's queue */
    char queue[WARREN__NAME_MAX];
    char id[WARREN__ID_MAX + 1];
    int has_dedup_id;
    int busy; /* its id is being processed: not replayed */
} slot;

struct warren__dlq {
    const warren_config *cfg;
    const warren__consumer_cfg *c;
    warren__session *sess;
    warren__store *store;
    uint32_t depth;
    char name[WARREN__NAME_MAX];
    char err[1024];
    /* tags waiting for their acks (removals, or replays whose copy is
     * published but not yet confirmed) */
    uint64_t *tags;
    size_t n_tags, cap_tags;
    size_t n_published; /* of those, how many had a copy published */
    uint64_t max_tag;   /* the largest of `tags` */
    uint64_t held;      /* deliveries kept unacked, to be released */
    /* the window: n_slots selected for replay, slot n_slots the next read;
     * each allocated on first use (list needs one), never moved */
    slot **slots;
    size_t n_slots, cap_slots;
    uint64_t window_bytes; /* body bytes kept by the n_slots selected */
    int consuming;
    int n_unconfirmed;
    warren__arena pool;
};

static void set_err(warren__dlq *q, const char *fmt, ...) WARREN_PRINTF(2, 3);

static void set_err(warren__dlq *q, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->err, sizeof q->err, fmt, ap);
    va_end(ap);
}

const char *warren__dlq_errstr(const warren__dlq *q) {
    return q ? q->err : "no dlq";
}

const char *warren__dlq_name_of(const warren__dlq *q) {
    return q->name;
}

const warren__consumer_cfg *warren__dlq_consumer(const warren__dlq *q) {
    return q->c;
}

uint32_t warren__dlq_depth(const warren__dlq *q) {
    return q->depth;
}

void warren__dlq_set_store(warren__dlq *q, warren__store *st) {
    q->store = st;
}

int warren__dlq_open(const warren_config *cfg, const char *queue,
                     warren__dlq **out, char *err, size_t errlen) {
    const warren__consumer_cfg *c = NULL;
    *out = NULL;
    for (int i = 0; i < cfg->n_consumers; i++) {
        if (strcmp(cfg->consumers[i].queue, queue) == 0) {
            c = &cfg->consumers[i];
        }
    }
    if (c == NULL) {
        int n = snprintf(err, errlen,
                         "%s: no consumer reads queue '%s' (--queue names a "
                         "consumer's queue; its DLQ is derived). Consumers:",
                         cfg->path, queue);
        for (int i = 0; i < cfg->n_consumers && n > 0 && (size_t)n < errlen;
             i++) {
            n += snprintf(err + n, errlen - (size_t)n, " %s",
                          cfg->consumers[i].queue);
        }
        return WARREN_ERR_CONFIG;
    }
    warren__dlq *q = calloc(1, sizeof *q);
    if (q == NULL) {
        snprintf(err, errlen, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    q->cfg = cfg;
    q->c = c;
    snprintf(q->name, sizeof q->name, "%s", warren__dlq_name(c));
    warren__arena_init(&q->pool, 4096);
    int rc = warren__session_connect_any(cfg, 0, &q->sess, NULL, err, errlen);
    if (rc == 0) {
        rc = warren__session_queue_info(q->sess, q->name, &q->depth, NULL);
        if (rc == WARREN_ERR_NOT_FOUND) {
            snprintf(err, errlen,
                     "dead-letter queue '%s' (of consumer '%s') does not "
                     "exist on this broker/vhost: nothing was ever "
                     "dead-lettered there, or the URL points elsewhere "
                     "(`warren topology declare` creates it)",
                     q->name, c->queue);
        } else if (rc != 0) {
            snprintf(err, errlen, "%s", warren__session_errstr(q->sess));
        }
    }
    if (rc != 0) {
        warren__dlq_close(q);
        return rc;
    }
    *out = q;
    return 0;
}

/* Gives back every delivery still held: no more deliveries (cancel), then
 * all outstanding tags requeued in one nack. */
static int release_all(warren__dlq *q) {
    int rc = 0;
    if (!q->consuming || warren__session_broken(q->sess)) {
        q->consuming = 0;
        return 0;
    }
    rc = warren__session_cancel(q->sess);
    if (rc == 0) {
        rc = warren__session_nack(q->sess, 0, 1, 1);
    }
    /* The broker requeues asynchronously; a synchronous call on the same
     * channel returns only after the queue has taken them back, so a
     * command run right after this one sees the full depth. */
    if (rc == 0) {
        rc = warren__session_queue_info(q->sess, q->name, NULL, NULL);
    }
    q->consuming = 0;
    q->held = 0;
    return rc;
}

void warren__dlq_close(warren__dlq *q) {
    if (q == NULL) {
        return;
    }
    /* Closing the channel would requeue the held deliveries too; the
     * explicit nack just says so on the wire. */
    release_all(q);
    warren__session_free(q->sess);
    warren__arena_empty(&q->pool);
    for (size_t i = 0; i < q->cap_slots; i++) {
        if (q->slots[i]) {
            warren__delivery_free(&q->slots[i]->d);
            free(q->slots[i]);
        }
    }
    free(q->slots);
    free(q->tags);
    free(q);
}

static int push_tag(warren__dlq *q, uint64_t tag) {
    if (q->n_tags == q->cap_tags) {
        size_t cap = q->cap_tags ? q->cap_tags * 2 : 512;
        uint64_t *t = realloc(q->tags, cap * sizeof *t);
        if (t == NULL) {
            return WARREN_ERR_NOMEM;
        }
        q->tags = t;
        q->cap_tags = cap;
    }
    q->tags[q->n_tags++] = tag;
    if (tag > q->max_tag) {
        q->max_tag = tag;
    }
    return 0;
}

/* Settles the window: waits for the confirms of its copies, then acks the
 * DLQ copies. If a confirm fails, nothing of the window is acked: those
 * dead letters stay (a copy that did arrive is caught by dedup). */
static int settle(warren__dlq *q, const warren__dlq_ops *ops,
                  warren__dlq_stats *st) {
    int rc = 0;
    if (q->n_tags == 0) {
        return 0;
    }
    if (q->n_published > 0) {
        rc = warren__session_wait_confirms(q->sess, CONFIRM_TIMEOUT_MS);
    }
    if (rc == 0 && ops->before_ack) {
        rc = ops->before_ack(ops->user);
        if (rc != 0) {
            set_err(q, "could not make the removal durable first; nothing "
                       "removed from this window");
        }
    }
    if (rc != 0) {
        if (rc == WARREN_ERR_PUBLISH || rc == WARREN_ERR_TIMEOUT) {
            set_err(q, "%s", warren__session_errstr(q->sess));
        }
        st->failed += q->n_published;
        q->held += q->n_tags;
        q->n_tags = 0;
        q->n_published = 0;
        q->max_tag = 0;
        return rc;
    }
    if (q->held == 0 && q->n_slots == 0) {
        /* Nothing held or waiting below: one ack settles the window. */
        rc = warren__session_ack(q->sess, q->max_tag, 1);
    } else {
        for (size_t i = 0; i < q->n_tags && rc == 0; i++) {
            rc = warren__session_ack(q->sess, q->tags[i], 0);
        }
    }
    if (rc == 0) {
        st->replayed += q->n_published;
        st->removed += q->n_tags - q->n_published;
    } else {
        set_err(q, "%s", warren__session_errstr(q->sess));
        st->failed += q->n_tags;
    }
    q->n_tags = 0;
    q->n_published = 0;
    q->max_tag = 0;
    if (ops->progress) {
        ops->progress(st, ops->user);
    }
    return rc;
}

/* Marks busy, so not replayed, the window's ids a worker is processing
 * right now. Nothing in the store is changed: a copy runs because it
 * carries a higher replay generation than its dead record (store.h), in
 * whichever store holds that record. Deleting the dead record instead
 * would only work in the store opened here, and would let a stale second
 * copy of the id (a DLQ copy left behind by an interrupted replay) run
 * too. On a store error nothing of the window is published. */
static int check_busy_window(warren__dlq *q, int64_t now) {
    const char *queues[DEFAULT_WINDOW], *ids[DEFAULT_WINDOW];
    int results[DEFAULT_WINDOW];
    size_t n = 0, at[DEFAULT_WINDOW];
    if (q->store == NULL) {
        return 0;
    }
    for (size_t i = 0; i <= q->n_slots; i++) {
        if (n == DEFAULT_WINDOW || (i == q->n_slots && n > 0)) {
            int rc =
                warren__store_busy_many(q->store, queues, ids, n, now, results);
            if (rc != 0) {
                set_err(q, "%s", warren__store_errstr(q->store));
                return rc;
            }
            for (size_t k = 0; k < n; k++) {
                slot *sl = q->slots[at[k]];
                if (results[k] == WARREN_ERR_STORE_BUSY) {
                    warren__log(WARREN_LOG_WARN,
                                &(warren__log_fields){"dlq_skip", sl->queue,
                                                      sl->id, NULL, -1, -1},
                                "not replayed: its id is being processed");
                    sl->busy = 1;
                }
            }
            n = 0;
        }
        if (i < q->n_slots && q->slots[i]->has_dedup_id) {
            queues[n] = q->slots[i]->queue;
            ids[n] = q->slots[i]->id;
            at[n++] = i;
        }
    }
    return 0;
}

/* Publishes the copies of the window back to back, without waiting for
 * their confirms (settle does, once). Whatever is not published stays in
 * the DLQ (held, released at the end). */
static int publish_window(warren__dlq *q, const warren__dlq_ops *ops,
                          warren__dlq_stats *st) {
    int64_t now = warren__now_ms();
    size_t i = 0;
    int rc = check_busy_window(q, now);
    for (; rc == 0 && i < q->n_slots; i++) {
        slot *sl = q->slots[i];
        if (sl->busy) {
            st->skipped++;
            q->held++;
            continue;
        }
        const warren__delivery *d = &sl->d;
        warren__props p = *d->msg.props;
        warren__arena_recycle(&q->pool);
        rc = warren__dlq_replay_headers(d->msg.headers, ops->clean, now,
                                        &q->pool, &p.headers);
        if (rc != 0) {
            set_err(q, "out of memory building headers");
            break;
        }
        p.flags |= WARREN__PROP_HEADERS;
        rc = warren__session_publish(q->sess, "", sl->to, &p, d->msg.body,
                                     d->msg.body_len, NULL);
        if (rc != 0) {
            set_err(q, "%s", warren__session_errstr(q->sess));
            break;
        }
        /* The copy is out, unconfirmed, and the original not acked: a
         * crash here leaves the message in both queues (dedup catches the
         * second copy on a later replay). */
        WARREN_FAILPOINT("replay.published");
        rc = push_tag(q, d->msg.delivery_tag);
        if (rc != 0) {
            /* Published but cannot be acked: it stays in the DLQ too. */
            set_err(q, "out of memory");
            q->held++;
            i++;
            break;
        }
        q->n_published++;
    }
    q->held += q->n_slots - i; /* not published: given back at the end */
    for (size_t k = 0; k < q->n_slots; k++) {
        warren__delivery *d = &q->slots[k]->d;
        if (d->body_cap > SLOT_KEEP_BYTES) {
            free(d->body);
            d->body = NULL;
            d->body_cap = 0;
        }
    }
    q->n_slots = 0;
    q->window_bytes = 0;
    return rc;
}

/* Publishes the window, then settles everything waiting for an ack. */
static int flush(warren__dlq *q, const warren__dlq_ops *ops,
                 warren__dlq_stats *st) {
    int rc = publish_window(q, ops, st);
    int src = settle(q, ops, st);
    return rc ? rc : src;
}

static void pace(double rate, int64_t start_ms, uint64_t done) {
    if (rate <= 0) {
        return;
    }
    int64_t due = start_ms + (int64_t)((double)done * 1000.0 / rate);
    int64_t now = warren__mono_ms();
    if (due > now) {
        int64_t ms = due - now;
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL); /* a signal cuts it short: checked by caller */
    }
}

/* Keeps the delivery in slot n_slots for the window. */
static void select_for_replay(warren__dlq *q, const warren__dlq_ops *ops,
                              const warren__dlq_entry *e) {
    slot *sl = q->slots[q->n_slots++];
    q->window_bytes += sl->d.msg.body_len;
    snprintf(sl->to, sizeof sl->to, "%s",
             ops->to_queue ? ops->to_queue : e->queue);
    snprintf(sl->queue, sizeof sl->queue, "%s", e->queue);
    snprintf(sl->id, sizeof sl->id, "%s", e->id);
    sl->has_dedup_id = e->has_dedup_id;
    sl->busy = 0;
}

int warren__dlq_scan(warren__dlq *q, const warren__dlq_filter *f,
                     const warren__dlq_ops *ops, warren__dlq_stats *st) {
    warren__dlq_entry e;
    int rc = 0, selecting = 1;
    size_t window = ops->window > 0 ? (size_t)ops->window : DEFAULT_WINDOW;
    uint64_t max_body = ops->max_body ? ops->max_body : WARREN__DLQ_MAX_BODY;
    int64_t start = warren__mono_ms(), last_flush = start;
    uint64_t paced = 0;
    memset(st, 0, sizeof *st);
    st->depth = q->depth;
    if (q->depth == 0) {
        return 0;
    }
    if (q->cap_slots < window + 1) {
        slot **s = realloc(q->slots, (window + 1) * sizeof(slot *));
        if (s == NULL) {
            set_err(q, "out of memory for a window of %zu", window);
            return WARREN_ERR_NOMEM;
        }
        memset(s + q->cap_slots, 0,
               (window + 1 - q->cap_slots) * sizeof(slot *));
        q->slots = s;
        q->cap_slots = window + 1;
    }
    q->n_slots = 0;
    q->window_bytes = 0;
    /* Unlimited prefetch unless asked: a limit would stop deliveries once
     * that many unselected messages are held, before the depth is read. */
    rc = warren__session_qos(q->sess, ops->prefetch);
    if (rc == 0) {
        rc = warren__session_consume(q->sess, q->name);
    }
    if (rc != 0) {
        set_err(q, "%s", warren__session_errstr(q->sess));
        return rc;
    }
    q->consuming = 1;
    while (st->scanned < q->depth) {
        if (ops->stop && *ops->stop) {
            st->interrupted = 1;
            break;
        }
        if (q->slots[q->n_slots] == NULL) {
            q->slots[q->n_slots] = calloc(1, sizeof(slot));
            if (q->slots[q->n_slots] == NULL) {
                rc = WARREN_ERR_NOMEM;
                set_err(q, "out of memory");
                break;
            }
        }
        warren__delivery *d = &q->slots[q->n_slots]->d;
        /* Not the consumer's max_message_bytes: a letter dead-lettered as
         * too large for it carries its whole body, which list, show,
         * export and replay must keep. */
        int got = warren__session_next(q->sess, d, max_body, READ_IDLE_MS);
        if (got < 0) {
            rc = got;
            set_err(q, "%s", warren__session_errstr(q->sess));
            break;
        }
        if (got == 0 && ops->prefetch > 0 && q->held >= ops->prefetch) {
            rc = WARREN_ERR_TIMEOUT;
            set_err(q,
                    "%llu dead letters left in place fill the prefetch "
                    "window of %u: stopped after reading %llu of %u",
                    (unsigned long long)q->held, (unsigned)ops->prefetch,
                    (unsigned long long)st->scanned, q->depth);
            break;
        }
        if (got == 0) {
            warren__log(
                WARREN_LOG_WARN,
                &(warren__log_fields){"dlq_short", q->name, NULL, NULL, -1, -1},
                "read %llu of %u dead letters; the rest did not "
                "arrive within %d ms (another consumer on the DLQ?)",
                (unsigned long long)st->scanned, q->depth, READ_IDLE_MS);
            break;
        }
        st->scanned++;
        d->msg.queue = q->name;
        warren__dlq_entry_fill(&e, q->c, &d->msg);
        e.position = st->scanned;
        int action = WARREN__DLQ_KEEP;
        if (selecting && warren__dlq_filter_match(f, &e)) {
            if (f->limit > 0 && st->matched >= (uint64_t)f->limit) {
                action = WARREN__DLQ_KEEP;
            } else {
                st->matched++;
                action = ops->on_match(&e, d, ops->user);
            }
        }
        if (action < 0) {
            rc = action;
            q->held++;
            break;
        }
        if (d->too_large && action == WARREN__DLQ_REPLAY) {
            /* The body was not read: a copy would lose it. */
            st->skipped++;
            action = WARREN__DLQ_KEEP;
        }
        if (action == WARREN__DLQ_REPLAY) {
            pace(ops->rate_per_s, start, paced++);
            select_for_replay(q, ops, &e);
        } else if (action == WARREN__DLQ_REMOVE) {
            rc = push_tag(q, d->msg.delivery_tag);
            if (rc != 0) {
                set_err(q, "out of memory");
                q->held++;
                break;
            }
        } else {
            q->held++;
            if (action == WARREN__DLQ_STOP) {
                break;
            }
        }
        int64_t now = warren__mono_ms();
        if (q->n_slots >= window || q->n_tags >= window ||
            q->window_bytes >= WINDOW_BYTES ||
            (ops->rate_per_s > 0 && q->n_slots + q->n_tags > 0 &&
             now - last_flush >= PACED_FLUSH_MS)) {
            rc = flush(q, ops, st);
            last_flush = now;
            if (rc != 0) {
                break;
            }
        }
        warren__session_release(q->sess);
    }
    warren__log(WARREN_LOG_DEBUG,
                &(warren__log_fields){"dlq_read", q->name, NULL, NULL, -1,
                                      warren__mono_ms() - start},
                "read %llu dead letters", (unsigned long long)st->scanned);
    /* Settle what is in flight even after an error or a stop: a confirmed
     * copy must not leave its DLQ copy behind if it can be helped. What
     * was selected but not published yet is given back unless the scan
     * ended normally. */
    if (rc != 0 || (ops->stop && *ops->stop)) {
        q->held += q->n_slots;
        q->n_slots = 0;
        q->window_bytes = 0;
    }
    if (!warren__session_broken(q->sess)) {
        int src = flush(q, ops, st);
        rc = rc ? rc : src;
        int rrc = release_all(q);
        rc = rc ? rc : rrc;
    } else {
        st->failed += q->n_published;
        q->n_tags = q->n_published = 0;
        q->n_slots = 0;
    }
    if (ops->stop && *ops->stop) {
        st->interrupted = 1;
    }
    warren__log(WARREN_LOG_DEBUG,
                &(warren__log_fields){"dlq_released", q->name, NULL, NULL, -1,
                                      warren__mono_ms() - start},
                "settled and released");
    return rc;
}

int warren__dlq_publish(warren__dlq *q, const char *queue,
                        const warren__props *p, const void *body, size_t len) {
    int rc = warren__session_publish(q->sess, "", queue, p, body, len, NULL);
    if (rc == 0 && ++q->n_unconfirmed >= IMPORT_WINDOW) {
        rc = warren__dlq_flush(q);
    }
    if (rc != 0 && q->err[0] == '\0') {
        set_err(q, "%s", warren__session_errstr(q->sess));
    }
    return rc;
}

int warren__dlq_flush(warren__dlq *q) {
    q->n_unconfirmed = 0;
    int rc = warren__session_wait_confirms(q->sess, CONFIRM_TIMEOUT_MS);
    if (rc != 0) {
        set_err(q, "%s", warren__session_errstr(q->sess));
    }
    return rc;
}

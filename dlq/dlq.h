/*
 * dlq.h - dead-letter tooling (internal): selecting, reading, replaying,
 * removing, exporting and importing the messages of a consumer's DLQ.
 *
 * A DLQ is read through a dedicated session that consumes with manual acks
 * and no prefetch limit, reads exactly the depth seen at the start, holds
 * every delivery unacked, and gives back what it only looked at (cancel,
 * then nack-requeue of everything outstanding), so the broker's copy stays
 * the truth and keeps its place. A message leaves the DLQ only by an ack,
 * and a replayed one only after the broker confirmed its copy. The JSON
 * Lines format of export/import keeps every property, typed header and
 * body byte. See docs/dlq.md.
 */
#ifndef WARREN_DLQ_H
#define WARREN_DLQ_H

#include "config.h"
#include "props.h"
#include "session.h"
#include "store.h"

#include <cjson/cJSON.h>
#include <regex.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* ---- parsing and selection (pure) ------------------------------------- */

/* Parses a duration "15m", "2h", "3d", "30s", "1w" (a positive integer and
 * one unit) into ms. Returns 0, or WARREN_ERR_INVAL with `err` saying why. */
int warren__dlq_parse_duration(const char *s, int64_t *ms, char *err,
                               size_t errlen);

/* Parses a point in time: ISO-8601 "2026-11-26T05:00:00Z" (seconds and
 * fraction optional; "Z", "+02:00", "+0200", or no zone meaning local time;
 * a date alone is its midnight) or a duration meaning that long before
 * `now_ms`. Returns 0, or WARREN_ERR_INVAL with `err` saying why. */
int warren__dlq_parse_time(const char *s, int64_t now_ms, int64_t *out,
                           char *err, size_t errlen);

#define WARREN__DLQ_MAX_IDS 64

/* The largest body the DLQ tools read by default: the worker's own hard
 * limit, so every dead letter a worker made is read whole, whatever the
 * consumer's max_message_bytes (a "too large" dead letter carries its whole
 * body). A larger one (dead-lettered by the broker) is shown by its size,
 * never exported or replayed without its body. */
#define WARREN__DLQ_MAX_BODY ((uint64_t)256 << 20)

typedef struct {
    const char *error_sub; /* substring of x-warren-error; NULL: any */
    regex_t error_re;      /* valid when has_re */
    int has_re;
    int64_t since_ms;                     /* dead-at >= since; 0: no bound */
    int64_t until_ms;                     /* dead-at < until; 0: no bound */
    const char *ids[WARREN__DLQ_MAX_IDS]; /* borrowed */
    int n_ids;
    long limit; /* act on at most this many matches; 0: all */
} warren__dlq_filter;

void warren__dlq_filter_init(warren__dlq_filter *f);
/* Compiles a POSIX extended regex for the error. WARREN_ERR_INVAL with
 * regerror()'s text in `err` if it does not compile. */
int warren__dlq_filter_set_re(warren__dlq_filter *f, const char *re, char *err,
                              size_t errlen);
/* Adds an --id; WARREN_ERR_INVAL if more than WARREN__DLQ_MAX_IDS. */
int warren__dlq_filter_add_id(warren__dlq_filter *f, const char *id);
void warren__dlq_filter_free(warren__dlq_filter *f);
/* 1 if the filter selects nothing in particular (no criterion given). */
int warren__dlq_filter_is_empty(const warren__dlq_filter *f);

/* What list shows of a dead letter. The const char * fields point into
 * per-thread buffers, valid until the next warren__dlq_entry_fill. */
typedef struct {
    uint64_t position;           /* 1-based place in the DLQ when read */
    char id[WARREN__ID_MAX + 1]; /* dedup id, else message_id, else "" */
    const char *queue;           /* x-warren-queue, else the consumer's */
    const char *exchange;        /* x-warren-exchange, "" if absent */
    const char *routing_key;     /* x-warren-routing-key, "" if absent */
    const char *worker;          /* x-warren-worker, "" if absent */
    char error[1025];            /* x-warren-error, "" if absent */
    int64_t attempts;            /* -1 if absent */
    int64_t dead_at_ms;          /* 0 if absent */
    int64_t first_failed_at_ms;  /* 0 if absent */
    int64_t replays;             /* 0 if absent */
    uint64_t body_len;           /* as announced, also when not read */
    int body_unread;             /* over the read limit: body not kept */
    int has_dedup_id;            /* id came from the consumer's policy */
} warren__dlq_entry;

/* Fills `e` from a dead letter read from consumer `c`'s DLQ. */
void warren__dlq_entry_fill(warren__dlq_entry *e, const warren__consumer_cfg *c,
                            const struct warren_msg *msg);

/* 1 if `e` passes every criterion of `f` (the limit is not checked). */
int warren__dlq_filter_match(const warren__dlq_filter *f,
                             const warren__dlq_entry *e);

/* ---- JSON Lines encoding (pure) ---------------------------------------- */

/* A JSON object with "properties", typed "headers" and "body"; NULL when
 * out of memory. Free with cJSON_Delete. */
cJSON *warren__dlq_to_json(const warren__props *p, const void *body,
                           size_t len);

/* Parses one line (length `len`) written by warren__dlq_to_json. On
 * success fills `p` (every string and table allocated in `pool`) and
 * `*body`/`*body_len` (malloc'd, free it) and returns 0. Otherwise returns
 * WARREN_ERR_INVAL (or NOMEM) and says what is wrong in `err`. */
int warren__dlq_from_json(const char *line, size_t len, warren__arena *pool,
                          warren__props *p, uint8_t **body, size_t *body_len,
                          char *err, size_t errlen);

/* Standard base64 with padding. encode: `out` NUL-terminated, malloc'd.
 * decode: strict (length multiple of 4, alphabet only), malloc'd. Both
 * return 0 or WARREN_ERR_INVAL / NOMEM. */
int warren__base64_encode(const void *in, size_t len, char **out);
int warren__base64_decode(const char *in, size_t len, uint8_t **out,
                          size_t *outlen);

/* Builds the headers of a replayed copy in `pool`: the attempt counter
 * dropped, the failure headers (x-warren-queue, -exchange, -routing-key,
 * -attempts, -error, -first-failed-at, -dead-at, -worker) renamed to
 * x-warren-replayed-* (older x-warren-replayed-* dropped), or all of them
 * dropped when `clean`; x-warren-replays incremented; x-warren-replayed-at
 * set to `now_ms` unless `clean`. Returns 0 or WARREN_ERR_NOMEM. */
int warren__dlq_replay_headers(const warren__table *in, int clean,
                               int64_t now_ms, warren__arena *pool,
                               warren__table *out);

/* ---- reading a DLQ (broker) -------------------------------------------- */

typedef struct warren__dlq warren__dlq;

/* Finds the consumer of `queue` in `cfg` (WARREN_ERR_CONFIG if none),
 * connects a dedicated session and looks the DLQ up (WARREN_ERR_NOT_FOUND:
 * "dead-letter queue ... does not exist"). `err` says what went wrong. */
int warren__dlq_open(const warren_config *cfg, const char *queue,
                     warren__dlq **out, char *err, size_t errlen);
void warren__dlq_close(warren__dlq *q); /* releases what is held; NULL ok */
const char *warren__dlq_errstr(const warren__dlq *q);
const char *warren__dlq_name_of(const warren__dlq *q);
const warren__consumer_cfg *warren__dlq_consumer(const warren__dlq *q);
uint32_t warren__dlq_depth(const warren__dlq *q); /* at open */

/* Uses `st` (borrowed) to leave in place the dead letters of ids being
 * processed right now. The store is not changed: a replayed copy runs by
 * its higher replay generation (x-warren-replays). May be NULL (consumers
 * without dedup). */
void warren__dlq_set_store(warren__dlq *q, warren__store *st);

/* What to do with a selected dead letter. */
typedef enum {
    WARREN__DLQ_KEEP = 0, /* leave it in the DLQ, where it was */
    WARREN__DLQ_REMOVE,   /* ack: gone from the DLQ */
    WARREN__DLQ_REPLAY,   /* republish to its queue, then ack */
    WARREN__DLQ_STOP      /* keep it and stop reading */
} warren__dlq_action;

typedef struct {
    uint64_t scanned;  /* dead letters read */
    uint64_t matched;  /* passed the filter (limit included) */
    uint64_t replayed; /* copy confirmed, DLQ copy acked */
    uint64_t removed;  /* acked without a copy */
    uint64_t skipped;  /* selected but left in place (busy in the store) */
    uint64_t failed;   /* copy not confirmed: left in the DLQ */
    uint64_t depth;    /* DLQ depth at the start */
    int interrupted;   /* *stop was set */
} warren__dlq_stats;

typedef struct {
    /* Called per matching dead letter (after the limit check); returns an
     * action or a negative WARREN_ERR_* to abort. */
    int (*on_match)(const warren__dlq_entry *e, const warren__delivery *d,
                    void *user);
    /* Called before removals are acked (e.g. fsync an export); non-zero
     * keeps them in the DLQ and aborts. May be NULL. */
    int (*before_ack)(void *user);
    /* Called after every window of acks. May be NULL. */
    void (*progress)(const warren__dlq_stats *st, void *user);
    void *user;
    const char *to_queue; /* replay target instead of x-warren-queue */
    int clean;            /* replay: drop failure history */
    double rate_per_s;    /* replay: pace; 0 unlimited */
    int window;           /* publishes per confirm wait; 0: 2048 */
    /* Unacked deliveries the broker may send ahead; 0: no limit. Only for
     * a scan that acts on (nearly) everything it reads, like replay --all:
     * once this many are held unselected, reading stalls. Bounds the
     * memory of deliveries buffered while confirms are awaited. */
    uint16_t prefetch;
    /* Bodies larger than this are not read (d->too_large, e->body_unread);
     * 0: WARREN__DLQ_MAX_BODY. Not the consumer's max_message_bytes. */
    uint64_t max_body;
    volatile sig_atomic_t *stop; /* set: stop selecting, settle, release */
} warren__dlq_ops;

/* Reads the DLQ once, front to back, calling ops->on_match for each dead
 * letter `f` selects and doing what it returns; then releases every
 * delivery not removed, in its place. Returns 0 (also when stopped; see
 * st->interrupted), or a negative error with the text in errstr(); even
 * then what was confirmed is acked and the rest released. */
int warren__dlq_scan(warren__dlq *q, const warren__dlq_filter *f,
                     const warren__dlq_ops *ops, warren__dlq_stats *st);

/* Publishes `body` with properties `p` to `queue` via the default exchange
 * with confirms, waiting for them every `window` messages and at flush.
 * Used by import. */
int warren__dlq_publish(warren__dlq *q, const char *queue,
                        const warren__props *p, const void *body, size_t len);
int warren__dlq_flush(warren__dlq *q); /* waits for every confirm */

#endif /* WARREN_DLQ_H */

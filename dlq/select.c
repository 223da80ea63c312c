/*
 * select.c - which dead letters an operator means: durations, ISO-8601
 * times, the --error/--error-re/--since/--until/--id filter, the summary
 * of a dead letter that list shows and filters look at, and the headers a
 * replayed copy carries. Pure functions, no I/O, so unit tests pin them.
 */
#include "dlq.h"

#include "msgid.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int warren__dlq_parse_duration(const char *s, int64_t *ms, char *err,
                               size_t errlen) {
    char *end;
    if (s == NULL || !isdigit((unsigned char)s[0])) {
        snprintf(err, errlen,
                 "'%s' is not a duration (a number and a unit: 30s, 15m, 2h, "
                 "3d, 1w)",
                 s ? s : "");
        return WARREN_ERR_INVAL;
    }
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    int64_t unit;
    switch (*end) {
    case 's':
        unit = 1000;
        break;
    case 'm':
        unit = 60 * 1000;
        break;
    case 'h':
        unit = 3600 * 1000;
        break;
    case 'd':
        unit = 86400 * 1000LL;
        break;
    case 'w':
        unit = 7 * 86400 * 1000LL;
        break;
    default:
        snprintf(err, errlen,
                 "'%s' is not a duration: the unit must be s, m, h, d or w", s);
        return WARREN_ERR_INVAL;
    }
    /* Ten years is far beyond any retention; refusing more keeps the
     * multiplication below from overflowing. */
    if (end[1] != '\0' || errno != 0 || n == 0 ||
        n > (unsigned long long)(3650LL * 86400 * 1000 / unit)) {
        snprintf(err, errlen,
                 "'%s' is not a duration (a positive number, one unit, at "
                 "most ten years)",
                 s);
        return WARREN_ERR_INVAL;
    }
    *ms = (int64_t)n * unit;
    return 0;
}

/* Reads exactly `n` digits at *p into *out. */
static int digits(const char **p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i])) {
            return 0;
        }
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return 1;
}

static int days_in_month(int y, int m) {
    static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : d[m - 1];
}

static int parse_iso(const char *s, int64_t *out) {
    const char *p = s;
    int y, mo, d, h = 0, mi = 0, sec = 0, frac_ms = 0;
    int zone = 0; /* 0 local, 1 given */
    int64_t offset_s = 0;
    if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) ||
        *p++ != '-' || !digits(&p, 2, &d)) {
        return 0;
    }
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo)) {
        return 0;
    }
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi)) {
            return 0;
        }
        if (*p == ':') {
            p++;
            if (!digits(&p, 2, &sec)) {
                return 0;
            }
            if (*p == '.' || *p == ',') {
                int scale = 100, any = 0;
                p++;
                while (isdigit((unsigned char)*p)) {
                    frac_ms += (*p - '0') * scale;
                    scale /= 10;
                    any = 1;
                    p++;
                }
                if (!any) {
                    return 0;
                }
            }
        }
        if (h > 23 || mi > 59 || sec > 60) {
            return 0;
        }
    }
    if (*p == 'Z' || *p == 'z') {
        zone = 1;
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om = 0;
        p++;
        if (!digits(&p, 2, &oh)) {
            return 0;
        }
        if (*p == ':') {
            p++;
        }
        if (*p && !digits(&p, 2, &om)) {
            return 0;
        }
        if (oh > 23 || om > 59) {
            return 0;
        }
        zone = 1;
        offset_s = sign * (oh * 3600 + om * 60);
    }
    if (*p != '\0') {
        return 0;
    }
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    time_t t;
    if (zone) {
        t = timegm(&tm) - (time_t)offset_s;
    } else {
        tm.tm_isdst = -1;
        t = mktime(&tm);
    }
    *out = (int64_t)t * 1000 + frac_ms;
    return 1;
}

int warren__dlq_parse_time(const char *s, int64_t now_ms, int64_t *out,
                           char *err, size_t errlen) {
    int64_t ms;
    char tmp[8];
    if (s == NULL || s[0] == '\0') {
        snprintf(err, errlen, "empty time");
        return WARREN_ERR_INVAL;
    }
    if (strlen(s) >= 5 && isdigit((unsigned char)s[0]) && s[4] == '-') {
        if (parse_iso(s, out)) {
            return 0;
        }
        snprintf(err, errlen,
                 "'%s' is not an ISO-8601 time (like 2026-11-26T05:00:00Z, "
                 "2026-11-26T06:00+01:00 or 2026-11-26)",
                 s);
        return WARREN_ERR_INVAL;
    }
    if (warren__dlq_parse_duration(s, &ms, tmp, sizeof tmp) == 0) {
        *out = now_ms - ms;
        return 0;
    }
    snprintf(err, errlen,
             "'%s' is neither an ISO-8601 time (2026-11-26T05:00:00Z) nor a "
             "duration ago (30s, 15m, 2h, 3d, 1w)",
             s);
    return WARREN_ERR_INVAL;
}

void warren__dlq_filter_init(warren__dlq_filter *f) {
    memset(f, 0, sizeof *f);
}

int warren__dlq_filter_set_re(warren__dlq_filter *f, const char *re, char *err,
                              size_t errlen) {
    if (f->has_re) {
        regfree(&f->error_re);
        f->has_re = 0;
    }
    int rc = regcomp(&f->error_re, re, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char why[256];
        regerror(rc, &f->error_re, why, sizeof why);
        regfree(&f->error_re);
        snprintf(err, errlen, "--error-re '%s': %s", re, why);
        return WARREN_ERR_INVAL;
    }
    f->has_re = 1;
    return 0;
}

int warren__dlq_filter_add_id(warren__dlq_filter *f, const char *id) {
    if (f->n_ids >= WARREN__DLQ_MAX_IDS) {
        return WARREN_ERR_INVAL;
    }
    f->ids[f->n_ids++] = id;
    return 0;
}

void warren__dlq_filter_free(warren__dlq_filter *f) {
    if (f && f->has_re) {
        regfree(&f->error_re);
        f->has_re = 0;
    }
}

int warren__dlq_filter_is_empty(const warren__dlq_filter *f) {
    return f->error_sub == NULL && !f->has_re && f->since_ms == 0 &&
           f->until_ms == 0 && f->n_ids == 0;
}

int warren__dlq_filter_match(const warren__dlq_filter *f,
                             const warren__dlq_entry *e) {
    if (f->error_sub && strstr(e->error, f->error_sub) == NULL) {
        return 0;
    }
    if (f->has_re && regexec(&f->error_re, e->error, 0, NULL, 0) != 0) {
        return 0;
    }
    if (f->since_ms && e->dead_at_ms < f->since_ms) {
        return 0;
    }
    if (f->until_ms && e->dead_at_ms >= f->until_ms) {
        return 0;
    }
    if (f->n_ids > 0) {
        for (int i = 0; i < f->n_ids; i++) {
            if (strcmp(f->ids[i], e->id) == 0) {
                return 1;
            }
        }
        return 0;
    }
    return 1;
}

/* A string header as a NUL-terminated copy into `buf`, or `dflt`. */
static const char *hdr_str(const struct warren_msg *m, const char *name,
                           char *buf, size_t len) {
    const char *v;
    size_t n;
    if (warren_msg_header_str(m, name, &v, &n) != 0) {
        buf[0] = '\0';
        return buf;
    }
    if (n >= len) {
        n = len - 1;
    }
    memcpy(buf, v, n);
    buf[n] = '\0';
    return buf;
}

static int64_t hdr_int(const struct warren_msg *m, const char *name,
                       int64_t dflt) {
    int64_t v;
    return warren_msg_header_int(m, name, &v) == 0 ? v : dflt;
}

/* The entry's strings live in per-thread buffers so an entry stays a flat
 * value without allocations per message (list may see 100,000). */
static _Thread_local char tl_queue[WARREN__NAME_MAX];
static _Thread_local char tl_exchange[WARREN__NAME_MAX];
static _Thread_local char tl_rk[WARREN__NAME_MAX];
static _Thread_local char tl_worker[WARREN__NAME_MAX];

/* A letter the broker dead-lettered itself (a quorum queue's
 * delivery-limit, a TTL or length limit, a reject without requeue through
 * a dead-letter exchange) has no x-warren-dead-at: its story is in x-death,
 * one table per (queue, reason), the most recent first. The reason, queue,
 * count and time of that first one fill what warren's headers would. */
static void fill_from_x_death(warren__dlq_entry *e,
                              const struct warren_msg *msg) {
    const warren__field *xd = warren__table_find(msg->headers, "x-death");
    if (xd == NULL || xd->kind != WARREN__FIELD_ARRAY ||
        xd->value.array.num_entries < 1 ||
        xd->value.array.entries[0].kind != WARREN__FIELD_TABLE) {
        return;
    }
    struct warren_msg d = {.headers = &xd->value.array.entries[0].value.table};
    char reason[64], queue[WARREN__NAME_MAX], last[sizeof e->error];
    int64_t count = hdr_int(&d, "count", 0), at = hdr_int(&d, "time", 0);
    hdr_str(&d, "reason", reason, sizeof reason);
    hdr_str(&d, "queue", queue, sizeof queue);
    snprintf(last, sizeof last, "%s", e->error);
    snprintf(e->error, sizeof e->error,
             "broker: %s in queue %s (dead-lettered %lld time%s)%s%s",
             reason[0] ? reason : "unknown reason", queue[0] ? queue : "?",
             (long long)count, count == 1 ? "" : "s",
             last[0] ? "; last error: " : "", last);
    if (at > 0) {
        e->dead_at_ms = at * 1000; /* an AMQP timestamp is in seconds */
    }
    if (e->exchange[0] == '\0') {
        e->exchange = hdr_str(&d, "exchange", tl_exchange, sizeof tl_exchange);
    }
    const warren__field *rks = warren__table_find(d.headers, "routing-keys");
    if (e->routing_key[0] == '\0' && rks && rks->kind == WARREN__FIELD_ARRAY &&
        rks->value.array.num_entries > 0) {
        const warren__field *rk = &rks->value.array.entries[0];
        if (rk->kind == WARREN__FIELD_UTF8 || rk->kind == WARREN__FIELD_BYTES) {
            size_t n = rk->value.bytes.len < sizeof tl_rk - 1
                           ? rk->value.bytes.len
                           : sizeof tl_rk - 1;
            memcpy(tl_rk, rk->value.bytes.bytes, n);
            tl_rk[n] = '\0';
            e->routing_key = tl_rk;
        }
    }
}

void warren__dlq_entry_fill(warren__dlq_entry *e, const warren__consumer_cfg *c,
                            const struct warren_msg *msg) {
    char why[256];
    memset(e, 0, sizeof *e);
    e->queue = hdr_str(msg, "x-warren-queue", tl_queue, sizeof tl_queue);
    if (e->queue[0] == '\0') {
        snprintf(tl_queue, sizeof tl_queue, "%s", c->queue);
    }
    e->exchange =
        hdr_str(msg, "x-warren-exchange", tl_exchange, sizeof tl_exchange);
    e->routing_key = hdr_str(msg, "x-warren-routing-key", tl_rk, sizeof tl_rk);
    e->worker = hdr_str(msg, "x-warren-worker", tl_worker, sizeof tl_worker);
    hdr_str(msg, "x-warren-error", e->error, sizeof e->error);
    e->attempts = hdr_int(msg, "x-warren-attempts", -1);
    e->dead_at_ms = hdr_int(msg, "x-warren-dead-at", 0);
    e->first_failed_at_ms = hdr_int(msg, "x-warren-first-failed-at", 0);
    e->replays = hdr_int(msg, "x-warren-replays", 0);
    if (e->dead_at_ms == 0) {
        fill_from_x_death(e, msg);
    }
    /* A body over the read limit was drained, not kept: its size is the
     * announced one. */
    e->body_len = msg->body_len;
    if (msg->body_size_announced > msg->body_len) {
        e->body_len = msg->body_size_announced;
        e->body_unread = 1;
    }
    if (c->dedup && warren__msgid_extract(c, msg, e->id, why, sizeof why) ==
                        WARREN__ID_USE) {
        e->has_dedup_id = 1;
    } else if (msg->message_id_prop) {
        snprintf(e->id, sizeof e->id, "%s", msg->message_id_prop);
    } else {
        e->id[0] = '\0';
    }
}

/* ---- replay headers ---------------------------------------------------- */

static const char *failure_headers[] = {
    "x-warren-queue",    "x-warren-exchange", "x-warren-routing-key",
    "x-warren-attempts", "x-warren-error",    "x-warren-first-failed-at",
    "x-warren-dead-at",  "x-warren-worker"};
#define N_FAILURE (sizeof failure_headers / sizeof failure_headers[0])

static int key_is(warren__bytes k, const char *name) {
    size_t n = strlen(name);
    return k.len == n && memcmp(k.bytes, name, n) == 0;
}

static int key_has_prefix(warren__bytes k, const char *prefix) {
    size_t n = strlen(prefix);
    return k.len >= n && memcmp(k.bytes, prefix, n) == 0;
}

int warren__dlq_replay_headers(const warren__table *in, int clean,
                               int64_t now_ms, warren__arena *pool,
                               warren__table *out) {
    int cap = in->num_entries + 2, n = 0;
    int64_t replays = 0;
    warren__table_entry *e = warren__arena_alloc(pool, sizeof *e * (size_t)cap);
    if (e == NULL) {
        return WARREN_ERR_NOMEM;
    }
    for (int i = 0; i < in->num_entries; i++) {
        const warren__table_entry *src = &in->entries[i];
        int failure = -1;
        if (key_is(src->key, "x-warren-attempt") ||
            key_has_prefix(src->key, "x-warren-replayed-")) {
            continue; /* reset / replaced by this replay's history */
        }
        if (key_is(src->key, "x-warren-replays")) {
            struct warren_msg m = {.headers = in};
            int64_t v;
            if (warren_msg_header_int(&m, "x-warren-replays", &v) == 0 &&
                v >= 0) {
                replays = v;
            }
            continue;
        }
        for (size_t k = 0; k < N_FAILURE; k++) {
            if (key_is(src->key, failure_headers[k])) {
                failure = (int)k;
                break;
            }
        }
        if (failure < 0) {
            e[n++] = *src;
            continue;
        }
        if (clean) {
            continue;
        }
        /* "x-warren-error" -> "x-warren-replayed-error" */
        const char *suffix = failure_headers[failure] + strlen("x-warren-");
        warren__bytes key;
        size_t klen = strlen("x-warren-replayed-") + strlen(suffix);
        warren__arena_alloc_bytes(pool, klen, &key);
        if (key.bytes == NULL) {
            return WARREN_ERR_NOMEM;
        }
        memcpy(key.bytes, "x-warren-replayed-", strlen("x-warren-replayed-"));
        memcpy((char *)key.bytes + strlen("x-warren-replayed-"), suffix,
               strlen(suffix));
        e[n] = *src;
        e[n].key = key;
        n++;
    }
    e[n].key = warren__cstr_bytes("x-warren-replays");
    e[n].value.kind = WARREN__FIELD_I64;
    /* Saturates: a copy of generation INT64_MAX (a forged header) cannot
     * be replayed past its dead record; `warren store forget` then. */
    e[n].value.value.i64 = replays < INT64_MAX ? replays + 1 : replays;
    n++;
    if (!clean) {
        e[n].key = warren__cstr_bytes("x-warren-replayed-at");
        e[n].value.kind = WARREN__FIELD_I64;
        e[n].value.value.i64 = now_ms;
        n++;
    }
    out->num_entries = n;
    out->entries = e;
    return 0;
}

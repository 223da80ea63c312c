/*
 * metrics.c - the figures `warren run` exports on /metrics: the workers'
 * shared slots (wstats.h) plus, per queue, the totals of workers that have
 * exited, rendered in the Prometheus text format 0.0.4.
 *
 * Folding a dead worker's counters into its queue's retired totals before
 * its slot is reused is what keeps every *_total series monotonic across
 * crashes, deadline kills and reloads. Gauges (in-flight, breaker state,
 * connected) are read from live slots only.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define RENDER_MAX (8u << 20) /* a scrape larger than this is a bug */

int cli_view_init(cli_pool_view *v) {
    memset(v, 0, sizeof *v);
    void *p = mmap(NULL, sizeof(warren__wstats) * CLI_MAX_SLOTS,
                   PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        return -1;
    }
    v->slots = p;
    for (int i = 0; i < CLI_MAX_SLOTS; i++) {
        v->slot_series[i] = -1;
    }
    pthread_mutex_init(&v->lock, NULL);
    return 0;
}

void cli_view_destroy(cli_pool_view *v) {
    if (v->slots != NULL) {
        munmap(v->slots, sizeof(warren__wstats) * CLI_MAX_SLOTS);
        v->slots = NULL;
    }
    pthread_mutex_destroy(&v->lock);
}

int cli_view_series(cli_pool_view *v, const char *queue) {
    for (int i = 0; i < v->n_series; i++) {
        if (strcmp(v->series[i].queue, queue) == 0) {
            return i;
        }
    }
    if (v->n_series == CLI_MAX_SERIES) {
        return -1;
    }
    cli_series *s = &v->series[v->n_series];
    memset(s, 0, sizeof *s);
    snprintf(s->queue, sizeof s->queue, "%s", queue);
    return v->n_series++;
}

static uint64_t ld(_Atomic uint64_t *a) {
    return atomic_load_explicit(a, memory_order_relaxed);
}

void cli_view_retire(cli_pool_view *v, int slot) {
    warren__wstats *w = &v->slots[slot];
    int si = v->slot_series[slot];
    if (si >= 0) {
        cli_series *s = &v->series[si];
        for (int i = 0; i <= WARREN_STAT_DEFERRED; i++) {
            s->counters[i] += ld(&w->counters[i]);
        }
        for (int i = 0; i < WARREN__LAT_BUCKETS; i++) {
            s->latency[i] += ld(&w->latency[i]);
        }
        s->latency_sum_us += ld(&w->latency_sum_us);
        s->handler_failures += ld(&w->handler_failures);
        s->breaker_opened += ld(&w->breaker_opened);
        s->reconnects += ld(&w->reconnects);
        for (int i = 0; i < 2; i++) {
            s->handler_calls[i] += ld(&w->handler_calls[i]);
        }
        for (int i = 0; i < 3; i++) {
            s->breaker_transitions[i] += ld(&w->breaker_transitions[i]);
        }
    }
    /* The process is gone: nobody else writes here any more. */
    memset((void *)w, 0, sizeof *w);
    v->slot_alive[slot] = 0;
}

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} buf;

static void put(buf *b, const char *fmt, ...) WARREN_PRINTF(2, 3);

static void put(buf *b, const char *fmt, ...) {
    for (int tries = 0; tries < 2 && !b->failed; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t want = b->cap * 2 > b->len + (size_t)n + 1
                          ? b->cap * 2
                          : b->len + (size_t)n + 1;
        char *q = want <= RENDER_MAX ? realloc(b->p, want) : NULL;
        if (q == NULL) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = want;
    }
}

/* Label values escape backslash, quote and newline (exposition format). */
static void put_label(buf *b, const char *s) {
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') {
            put(b, "\\%c", *s);
        } else if (*s == '\n') {
            put(b, "\\n");
        } else {
            put(b, "%c", *s);
        }
    }
}

static void head(buf *b, const char *name, const char *type, const char *help) {
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample(buf *b, const char *name, const char *queue,
                   const char *extra, const char *fmt_value, ...)
    WARREN_PRINTF(5, 6);

static void sample(buf *b, const char *name, const char *queue,
                   const char *extra, const char *fmt_value, ...) {
    char value[64];
    va_list ap;
    va_start(ap, fmt_value);
    vsnprintf(value, sizeof value, fmt_value, ap);
    va_end(ap);
    put(b, "%s", name);
    if (queue != NULL) {
        put(b, "{queue=\"");
        put_label(b, queue);
        put(b, "\"%s}", extra ? extra : "");
    }
    put(b, " %s\n", value);
}

/* Per queue: retired totals plus what live workers have counted so far. */
typedef struct {
    uint64_t counters[WARREN_STAT_DEFERRED + 1];
    uint64_t latency[WARREN__LAT_BUCKETS];
    uint64_t latency_sum_us, handler_failures, breaker_opened, reconnects;
    int64_t in_flight;
    int workers, connected;
    uint64_t handler_calls[2], breaker_transitions[3];
} totals;

static void sum_queue(cli_pool_view *v, int si, totals *t) {
    const cli_series *s = &v->series[si];
    memset(t, 0, sizeof *t);
    memcpy(t->counters, s->counters, sizeof t->counters);
    memcpy(t->latency, s->latency, sizeof t->latency);
    t->latency_sum_us = s->latency_sum_us;
    t->handler_failures = s->handler_failures;
    t->breaker_opened = s->breaker_opened;
    t->reconnects = s->reconnects;
    memcpy(t->handler_calls, s->handler_calls, sizeof t->handler_calls);
    memcpy(t->breaker_transitions, s->breaker_transitions,
           sizeof t->breaker_transitions);
    for (int i = 0; i < CLI_MAX_SLOTS; i++) {
        if (v->slot_series[i] != si) {
            continue;
        }
        warren__wstats *w = &v->slots[i];
        for (int k = 0; k <= WARREN_STAT_DEFERRED; k++) {
            t->counters[k] += ld(&w->counters[k]);
        }
        for (int k = 0; k < WARREN__LAT_BUCKETS; k++) {
            t->latency[k] += ld(&w->latency[k]);
        }
        t->latency_sum_us += ld(&w->latency_sum_us);
        t->handler_failures += ld(&w->handler_failures);
        t->breaker_opened += ld(&w->breaker_opened);
        t->reconnects += ld(&w->reconnects);
        for (int k = 0; k < 2; k++) {
            t->handler_calls[k] += ld(&w->handler_calls[k]);
        }
        for (int k = 0; k < 3; k++) {
            t->breaker_transitions[k] += ld(&w->breaker_transitions[k]);
        }
        if (v->slot_alive[i]) {
            int64_t f =
                atomic_load_explicit(&w->in_flight, memory_order_relaxed);
            t->in_flight += f > 0 ? f : 0;
            t->workers++;
            t->connected +=
                atomic_load_explicit(&w->connected, memory_order_relaxed) != 0;
        }
    }
}

static const struct {
    warren_stat stat;
    const char *name, *help;
} counter_series[] = {
    {WARREN_STAT_RECEIVED, "warren_messages_received_total",
     "Deliveries taken from the work queue (retried copies included)."},
    {WARREN_STAT_ACKED, "warren_messages_acked_total",
     "Deliveries whose handler returned ACK, recorded and acked."},
    {WARREN_STAT_RETRIED, "warren_messages_retried_total",
     "Deliveries sent to a retry delay tier."},
    {WARREN_STAT_DEAD, "warren_messages_dead_lettered_total",
     "Deliveries sent to the dead-letter queue."},
    {WARREN_STAT_DUPLICATE, "warren_messages_duplicate_total",
     "Deliveries of an id already done: acked without running the handler."},
    {WARREN_STAT_DEFERRED, "warren_messages_deferred_total",
     "Deliveries put back because the same id was running elsewhere."},
};

static void render(cli_pool_view *v, buf *b) {
    static const int64_t bounds_ms[] = WARREN__LAT_BOUNDS_MS;
    totals *t = calloc((size_t)(v->n_series ? v->n_series : 1), sizeof *t);
    if (t == NULL) {
        b->failed = 1;
        return;
    }
    for (int si = 0; si < v->n_series; si++) {
        sum_queue(v, si, &t[si]);
    }
    for (size_t c = 0; c < sizeof counter_series / sizeof counter_series[0];
         c++) {
        head(b, counter_series[c].name, "counter", counter_series[c].help);
        for (int si = 0; si < v->n_series; si++) {
            sample(b, counter_series[c].name, v->series[si].queue, NULL, "%llu",
                   (unsigned long long)t[si].counters[counter_series[c].stat]);
        }
    }
    head(b, "warren_handler_failures_total", "counter",
         "Handler calls that returned anything but ACK (timeouts included).");
    for (int si = 0; si < v->n_series; si++) {
        sample(b, "warren_handler_failures_total", v->series[si].queue, NULL,
               "%llu", (unsigned long long)t[si].handler_failures);
    }
    head(b, "warren_handler_calls_total", "counter",
         "Handler calls by handler: the primary, or breaker.fallback while "
         "the breaker is open.");
    for (int si = 0; si < v->n_series; si++) {
        static const char *const which[] = {",handler=\"primary\"",
                                            ",handler=\"fallback\""};
        for (int k = 0; k < 2; k++) {
            sample(b, "warren_handler_calls_total", v->series[si].queue,
                   which[k], "%llu",
                   (unsigned long long)t[si].handler_calls[k]);
        }
    }
    head(b, "warren_handler_duration_seconds", "histogram",
         "Duration of handler calls.");
    for (int si = 0; si < v->n_series; si++) {
        uint64_t cum = 0;
        char le[48];
        for (int k = 0; k < WARREN__LAT_BUCKETS; k++) {
            cum += t[si].latency[k];
            if (k < WARREN__LAT_BUCKETS - 1) {
                snprintf(le, sizeof le, ",le=\"%g\"",
                         (double)bounds_ms[k] / 1000.0);
            } else {
                snprintf(le, sizeof le, ",le=\"+Inf\"");
            }
            sample(b, "warren_handler_duration_seconds_bucket",
                   v->series[si].queue, le, "%llu", (unsigned long long)cum);
        }
        sample(b, "warren_handler_duration_seconds_sum", v->series[si].queue,
               NULL, "%.6f", (double)t[si].latency_sum_us / 1e6);
        sample(b, "warren_handler_duration_seconds_count", v->series[si].queue,
               NULL, "%llu", (unsigned long long)cum);
    }
    head(b, "warren_in_flight", "gauge",
         "Deliveries taken by live workers and not yet settled.");
    for (int si = 0; si < v->n_series; si++) {
        sample(b, "warren_in_flight", v->series[si].queue, NULL, "%lld",
               (long long)t[si].in_flight);
    }
    head(b, "warren_breaker_state", "gauge",
         "Circuit breaker of each live worker: 0 closed, 1 open, 2 half-open.");
    for (int i = 0; i < CLI_MAX_SLOTS; i++) {
        if (v->slot_series[i] >= 0 && v->slot_alive[i]) {
            char w[32];
            snprintf(w, sizeof w, ",worker=\"%d\"", i);
            sample(b, "warren_breaker_state",
                   v->series[v->slot_series[i]].queue, w, "%d",
                   atomic_load_explicit(&v->slots[i].breaker_state,
                                        memory_order_relaxed));
        }
    }
    static const struct {
        const char *name, *help;
        size_t off;
    } more[] = {
        {"warren_breaker_opened_total",
         "Transitions of a worker's circuit breaker into open.",
         offsetof(totals, breaker_opened)},
        {"warren_reconnects_total",
         "Broker sessions opened by a worker after its first.",
         offsetof(totals, reconnects)},
    };
    head(b, "warren_breaker_transitions_total", "counter",
         "Circuit breaker transitions, by the state moved into.");
    for (int si = 0; si < v->n_series; si++) {
        static const char *const to[] = {",to=\"closed\"", ",to=\"open\"",
                                         ",to=\"half_open\""};
        for (int k = 0; k < 3; k++) {
            sample(b, "warren_breaker_transitions_total", v->series[si].queue,
                   to[k], "%llu",
                   (unsigned long long)t[si].breaker_transitions[k]);
        }
    }
    for (size_t m = 0; m < sizeof more / sizeof more[0]; m++) {
        head(b, more[m].name, "counter", more[m].help);
        for (int si = 0; si < v->n_series; si++) {
            uint64_t val;
            memcpy(&val, (const char *)&t[si] + more[m].off, sizeof val);
            sample(b, more[m].name, v->series[si].queue, NULL, "%llu",
                   (unsigned long long)val);
        }
    }
    head(b, "warren_worker_restarts_total", "counter",
         "Workers restarted after a crash, a kill or a deadline kill.");
    for (int si = 0; si < v->n_series; si++) {
        sample(b, "warren_worker_restarts_total", v->series[si].queue, NULL,
               "%llu", (unsigned long long)v->series[si].restarts);
    }
    head(b, "warren_handler_deadline_kills_total", "counter",
         "Workers ended by the supervisor because an in-process handler ran "
         "past timeout_s plus the grace.");
    for (int si = 0; si < v->n_series; si++) {
        sample(b, "warren_handler_deadline_kills_total", v->series[si].queue,
               NULL, "%llu", (unsigned long long)v->series[si].deadline_kills);
    }
    head(b, "warren_workers", "gauge", "Worker processes running.");
    for (int si = 0; si < v->n_series; si++) {
        sample(b, "warren_workers", v->series[si].queue, NULL, "%d",
               t[si].workers);
    }
    head(b, "warren_workers_connected", "gauge",
         "Worker processes with a broker session up.");
    for (int si = 0; si < v->n_series; si++) {
        sample(b, "warren_workers_connected", v->series[si].queue, NULL, "%d",
               t[si].connected);
    }
    free(t);
    if (v->store_path[0]) {
        /* The -wal file holds commits not yet checkpointed: it is part of
         * what the store occupies on disk. */
        char wal[sizeof v->store_path + 8];
        struct stat st;
        long long size = 0;
        if (stat(v->store_path, &st) == 0) {
            size += (long long)st.st_size;
        }
        snprintf(wal, sizeof wal, "%s-wal", v->store_path);
        if (stat(wal, &st) == 0) {
            size += (long long)st.st_size;
        }
        head(b, "warren_store_size_bytes", "gauge",
             "Size of the message store file plus its -wal file.");
        sample(b, "warren_store_size_bytes", NULL, NULL, "%lld", size);
    }
}

int cli_view_render(cli_pool_view *v, char **out, size_t *len) {
    buf b = {malloc(16384), 0, 16384, 0};
    if (b.p == NULL) {
        return -1;
    }
    pthread_mutex_lock(&v->lock);
    render(v, &b);
    pthread_mutex_unlock(&v->lock);
    if (b.failed) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}

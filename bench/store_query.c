/*
 * store_query.c - reads what a benchmark run left behind: row counts in a
 * warren store, and publish -> outcome latencies, from the store's
 * updated_at column or from the worker's debug log (written after commit
 * and ack, so it is the honest end point). Read-only; the store is opened
 * with SQLITE_OPEN_READONLY and queried only through prepared statements.
 * Ids of latency messages end in the send time in microseconds (see
 * publish.c). `count-pg` reads a PostgreSQL store instead, with libpq
 * (password from PGPASSFILE), through one parameterised statement.
 */
#define _GNU_SOURCE /* timegm */
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_SAMPLES 20000000L

typedef struct {
    double *v;
    long n, cap;
} samples;

static void add(samples *s, double x) {
    if (s->n == s->cap) {
        if (s->cap >= MAX_SAMPLES) {
            return;
        }
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, (size_t)s->cap * sizeof *s->v);
        if (s->v == NULL) {
            fprintf(stderr, "bench_store_query: out of memory\n");
            exit(1);
        }
    }
    s->v[s->n++] = x;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const samples *s, double p) {
    long i = (long)(p * (double)(s->n - 1) + 0.5);
    return s->v[i];
}

/* Prints "n p50 p99 p99.9 max" in milliseconds. */
static void report(samples *s) {
    if (s->n == 0) {
        printf("0 0 0 0 0\n");
        return;
    }
    qsort(s->v, (size_t)s->n, sizeof *s->v, cmp);
    printf("%ld %.2f %.2f %.2f %.2f\n", s->n, pct(s, 0.50), pct(s, 0.99),
           pct(s, 0.999), s->v[s->n - 1]);
}

/* Send time in ms from an id "PREFIX-i-USEC", or -1. */
static double sent_ms(const char *id, size_t len) {
    const char *dash = NULL;
    for (size_t i = 0; i < len; i++) {
        if (id[i] == '-') {
            dash = id + i;
        }
    }
    if (dash == NULL) {
        return -1;
    }
    return (double)strtoll(dash + 1, NULL, 10) / 1000.0;
}

static sqlite3 *open_ro(const char *path) {
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_store_query: %s: %s\n", path,
                db ? sqlite3_errmsg(db) : "cannot open");
        exit(1);
    }
    sqlite3_busy_timeout(db, 5000);
    return db;
}

/* Prints "done total max_updated_at_ms" for the queue (0s if no table). */
static int cmd_count(const char *path, const char *queue) {
    sqlite3 *db = open_ro(path);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT COALESCE(SUM(state = 'done'), 0), COUNT(*),"
                           " COALESCE(MAX(updated_at), 0)"
                           " FROM messages WHERE queue = ?1",
                           -1, &st, NULL) != SQLITE_OK) {
        printf("0 0 0\n"); /* the worker has not created the schema yet */
        sqlite3_close(db);
        return 0;
    }
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        printf("%lld %lld %lld\n", (long long)sqlite3_column_int64(st, 0),
               (long long)sqlite3_column_int64(st, 1),
               (long long)sqlite3_column_int64(st, 2));
    } else {
        printf("0 0 0\n");
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
}

/* The same from a PostgreSQL store (warren_messages). */
static int cmd_count_pg(const char *url, const char *queue) {
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "bench_store_query: %s", PQerrorMessage(c));
        PQfinish(c);
        return 1;
    }
    const char *params[1] = {queue};
    PGresult *r = PQexecParams(
        c,
        "SELECT count(*) FILTER (WHERE state = 'done'), count(*),"
        " COALESCE(max(updated_at), 0) FROM warren_messages WHERE queue = $1",
        1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        printf("%s %s %s\n", PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1),
               PQgetvalue(r, 0, 2));
    } else {
        printf("0 0 0\n"); /* the worker has not created the schema yet */
    }
    PQclear(r);
    PQfinish(c);
    return 0;
}

static int cmd_latency_store(const char *path, const char *queue) {
    sqlite3 *db = open_ro(path);
    sqlite3_stmt *st = NULL;
    samples s = {0};
    if (sqlite3_prepare_v2(db,
                           "SELECT id, updated_at FROM messages"
                           " WHERE queue = ?1 AND state = 'done'",
                           -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_store_query: %s\n", sqlite3_errmsg(db));
        return 1;
    }
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        double sent = sent_ms(id, (size_t)sqlite3_column_bytes(st, 0));
        if (sent > 0) {
            add(&s, (double)sqlite3_column_int64(st, 1) - sent);
        }
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    report(&s);
    free(s.v);
    return 0;
}

/* The text of "key":"VALUE" in a JSON log line, or NULL. */
static const char *field(const char *line, const char *key, size_t *len) {
    const char *p = strstr(line, key);
    if (p == NULL) {
        return NULL;
    }
    p += strlen(key);
    const char *end = strchr(p, '"');
    if (end == NULL) {
        return NULL;
    }
    *len = (size_t)(end - p);
    return p;
}

/* Log line time ("ts":"2024-01-02T03:04:05.678Z") in ms, or -1. */
static double line_ms(const char *ts, size_t len) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (len < 23 ||
        sscanf(ts, "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6) {
        return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (double)timegm(&tm) * 1000.0 + strtod(ts + 20, NULL);
}

static int cmd_latency_log(const char *path) {
    FILE *f = fopen(path, "r");
    char line[4096];
    samples s = {0};
    if (f == NULL) {
        perror(path);
        return 1;
    }
    while (fgets(line, sizeof line, f)) {
        size_t id_len, ts_len, out_len;
        const char *out = field(line, "\"outcome\":\"", &out_len);
        if (out == NULL || out_len != 3 || memcmp(out, "ack", 3) != 0) {
            continue;
        }
        const char *id = field(line, "\"message_id\":\"", &id_len);
        const char *ts = field(line, "\"ts\":\"", &ts_len);
        if (id == NULL || ts == NULL) {
            continue;
        }
        double sent = sent_ms(id, id_len), done = line_ms(ts, ts_len);
        if (sent > 0 && done > 0) {
            add(&s, done - sent);
        }
    }
    fclose(f);
    report(&s);
    free(s.v);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "count") == 0) {
        return cmd_count(argv[2], argv[3]);
    }
    if (argc == 4 && strcmp(argv[1], "count-pg") == 0) {
        return cmd_count_pg(argv[2], argv[3]);
    }
    if (argc == 4 && strcmp(argv[1], "latency-store") == 0) {
        return cmd_latency_store(argv[2], argv[3]);
    }
    if (argc == 3 && strcmp(argv[1], "latency-log") == 0) {
        return cmd_latency_log(argv[2]);
    }
    fprintf(stderr, "usage: bench_store_query count DB QUEUE\n"
                    "       bench_store_query count-pg URL QUEUE\n"
                    "       bench_store_query latency-store DB QUEUE\n"
                    "       bench_store_query latency-log LOGFILE\n"
                    "count prints: done rows, all rows, max updated_at (ms);\n"
                    "latency-* print: n p50 p99 p99.9 max (ms)\n");
    return 2;
}

/*
 * test_bad_input.c - the bad input catalogue (issue 7 item 5): one test per
 * hostile or malformed message, each asserting the message's fate (handled
 * and recorded done, or dead-lettered once with an x-warren-error saying
 * what was wrong, never retried in a loop) and that the same worker process
 * still consumes afterwards. One `warren run` with three consumers (id from
 * the message_id property, from a json: path, from a header) serves every
 * row, so the file runs in seconds; the last test stops it and checks that
 * nothing was left unacked and no copy was doubled.
 */
#include "itest.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* The frame_max warren negotiates (consumer/session.c FRAME_MAX). */
#define FRAME_MAX 131072
/* Above the property consumer's max_message_bytes, so the limit is
 * exercised without moving megabytes. */
#define PROP_MAX_BYTES 65536
#define HUGE_BODY ((size_t)50 << 20)
/* The worker holds a body whole (session.c reads it into one buffer), so
 * its peak RSS is the body plus a fixed overhead; measured ~7 MiB of
 * overhead here (see /tmp/b/reliability-bad-input.md), capped at 32 MiB. */
#define RSS_OVERHEAD_CAP_KIB (32L * 1024)

enum { QP, QJ, QH, NQ }; /* id from: property, json:order.id, header:x-id */

static struct {
    char *dir;
    char q[NQ][96];
    char dlq[NQ][112];
    char cfg[512], log[512], effects[512], script[512], store[512];
    pid_t pid;
    long worker_pid[NQ]; /* seen at the first good message: a restart */
    long handled[NQ];    /* handler runs expected so far, per queue */
    int good_seq;
    amqp_connection_state_t conn;
} g;

/* Records "QUEUE ATTEMPT WORKER_PID BODY_BYTES ID" per run (the id last,
 * since ids may hold spaces); $PPID is the worker process that forked it.
 * Reads the whole body, as a real handler would. */
static const char *recorder =
    "#!/bin/sh\n"
    "n=$(wc -c)\n"
    "printf '%s %s %s %s %s\\n' \"$WARREN_QUEUE\" \"$WARREN_ATTEMPT\" "
    "\"$PPID\" \"$n\" \"$WARREN_MESSAGE_ID\" >> \"$EFFECTS_FILE\"\n"
    "exit 0\n";

typedef struct {
    int queue;       /* QP, QJ, QH */
    const char *id;  /* NULL: any id */
    long runs;       /* out: matching lines */
    int attempt;     /* out: of the last match */
    long worker_pid; /* out: of the last match */
    long long bytes; /* out: of the last match */
} effects_query;

static void query_effects(effects_query *e) {
    char line[4096];
    FILE *fp = fopen(g.effects, "r");
    e->runs = 0;
    if (fp == NULL) {
        return;
    }
    while (fgets(line, sizeof line, fp)) {
        char q[128];
        int attempt, off = 0;
        long wpid;
        long long bytes;
        line[strcspn(line, "\n")] = '\0';
        if (sscanf(line, "%127s %d %ld %lld %n", q, &attempt, &wpid, &bytes,
                   &off) < 4 ||
            strcmp(q, g.q[e->queue]) != 0) {
            continue;
        }
        /* %n skips the blank before an empty id too: compare the rest. */
        const char *id = off > 0 ? line + off : "";
        if (e->id != NULL && strcmp(id, e->id) != 0) {
            continue;
        }
        e->runs++;
        e->attempt = attempt;
        e->worker_pid = wpid;
        e->bytes = bytes;
    }
    fclose(fp);
}

typedef struct {
    effects_query q;
    long want;
} runs_arg;

static int runs_reach(void *arg) {
    runs_arg *a = arg;
    query_effects(&a->q);
    return a->q.runs >= a->want;
}

/* Waits until the handler has run `want` times for (queue, id). */
static effects_query wait_runs(int queue, const char *id, long want) {
    runs_arg a = {{queue, id, 0, 0, 0, 0}, want};
    if (!itest_wait_until(runs_reach, &a, 60)) {
        fail_msg("handler ran %ld times for '%s' on %s, expected %ld", a.q.runs,
                 id ? id : "(any)", g.q[queue], want);
    }
    return a.q;
}

static long runs_of(int queue, const char *id) {
    effects_query e = {queue, id, 0, 0, 0, 0};
    query_effects(&e);
    return e.runs;
}

typedef struct {
    const char *queue;
    long want;
} depth_arg;

static int depth_at_least(void *arg) {
    depth_arg *a = arg;
    return itest_queue_depth(g.conn, a->queue) >= a->want;
}

/* A good message on `queue`, its id where that consumer looks for it. */
static void publish_good(int queue, const char *id) {
    char body[256];
    amqp_table_entry_t e = {.key = amqp_cstring_bytes("x-id")};
    amqp_table_t t = {1, &e};
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(id);
    switch (queue) {
    case QP:
        itest_publish(g.conn, "", g.q[QP], id, "good", 4);
        break;
    case QJ:
        snprintf(body, sizeof body, "{\"order\": {\"id\": \"%s\"}}", id);
        itest_publish(g.conn, "", g.q[QJ], NULL, body, strlen(body));
        break;
    default:
        itest_publish_headers(g.conn, "", g.q[QH], NULL, "good", 4, &t);
        break;
    }
}

/*
 * The worker outlived the bad message: a good one published after it is
 * handled exactly once, by the same worker process as before (the
 * supervisor restarts a crashed worker, which would otherwise hide a
 * crash), and the handler ran exactly `bad_runs` times for the bad one.
 */
static void assert_still_consuming(int queue, long bad_runs) {
    char id[64];
    snprintf(id, sizeof id, "good-%d", ++g.good_seq);
    publish_good(queue, id);
    effects_query e = wait_runs(queue, id, 1);
    assert_int_equal(e.runs, 1);
    assert_int_equal(e.attempt, 1);
    assert_int_equal(e.worker_pid, g.worker_pid[queue]);
    long want = g.handled[queue] + 1 + bad_runs;
    /* Counted from what happened, so one failing row does not fail every
     * row after it. */
    g.handled[queue] = runs_of(queue, NULL);
    assert_int_equal(g.handled[queue], want);
}

/*
 * The one dead-letter copy of a bad message: waits for it, takes it out of
 * the DLQ (so the final test sees any second copy), and checks that its
 * x-warren-error contains `why` and its body arrived whole.
 */
static void expect_dead_letter(int queue, const char *why, size_t body_len) {
    depth_arg a = {g.dlq[queue], 1};
    itest_msg m;
    if (!itest_wait_until(depth_at_least, &a, 60)) {
        fail_msg("nothing reached %s", g.dlq[queue]);
    }
    assert_int_equal(itest_get(g.conn, g.dlq[queue], &m, 0), 1);
    const amqp_field_value_t *err = itest_msg_header(&m, "x-warren-error");
    const amqp_field_value_t *src = itest_msg_header(&m, "x-warren-queue");
    assert_non_null(err);
    assert_non_null(src);
    assert_int_equal(err->kind, AMQP_FIELD_KIND_UTF8);
    char text[1100];
    size_t n = err->value.bytes.len < sizeof text - 1 ? err->value.bytes.len
                                                      : sizeof text - 1;
    memcpy(text, err->value.bytes.bytes, n);
    text[n] = '\0';
    if (strstr(text, why) == NULL) {
        fail_msg("x-warren-error is \"%s\", expected it to contain \"%s\"",
                 text, why);
    }
    assert_int_equal(src->value.bytes.len, strlen(g.q[queue]));
    assert_memory_equal(src->value.bytes.bytes, g.q[queue], strlen(g.q[queue]));
    assert_int_equal(m.len, body_len);
    itest_msg_free(&m);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq[queue]), 0);
}

/* The store's record of (queue, id), read with a read-only connection:
 * returns 1 with state and attempts, 0 if there is none. */
static int store_record(int queue, const char *id, size_t id_len,
                        char state[16], int *attempts) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int found = 0;
    assert_int_equal(sqlite3_open_v2(g.store, &db, SQLITE_OPEN_READONLY, NULL),
                     SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT state, attempts FROM messages "
                                        "WHERE queue = ? AND id = ?",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, g.q[queue], -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, (int)id_len, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(state, 16, "%s", (const char *)sqlite3_column_text(st, 0));
        *attempts = sqlite3_column_int(st, 1);
        found = 1;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return found;
}

static void assert_recorded(int queue, const char *id, const char *state,
                            int attempts) {
    char got[16];
    int n = 0;
    if (!store_record(queue, id, strlen(id), got, &n)) {
        fail_msg("no store record for '%s' on %s", id, g.q[queue]);
    }
    assert_string_equal(got, state);
    assert_int_equal(n, attempts);
}

/* Records in the store for this queue: a bad message without a usable id
 * must leave none (nothing truncated or mangled into an id). */
static long store_count(int queue) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long n = -1;
    assert_int_equal(sqlite3_open_v2(g.store, &db, SQLITE_OPEN_READONLY, NULL),
                     SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT count(*) FROM messages WHERE queue = ?",
                           -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, g.q[queue], -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        n = sqlite3_column_int(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* A message whose message_id property is exactly these bytes (NUL
 * included), which itest_publish cannot send. On a connection of its own,
 * so the shared connection's confirm count stays right. */
static void publish_raw_id(const char *queue, const void *id, size_t id_len) {
    amqp_connection_state_t c = itest_connect();
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    p.delivery_mode = 2;
    p.message_id.len = id_len;
    p.message_id.bytes = (void *)id;
    assert_int_equal(amqp_basic_publish(c, 1, amqp_cstring_bytes(""),
                                        amqp_cstring_bytes(queue), 1, 0, &p,
                                        amqp_cstring_bytes("raw")),
                     AMQP_STATUS_OK);
    for (;;) {
        amqp_frame_t f;
        struct timeval tv = {(long)(10 * itest_scale()), 0};
        int rc = amqp_simple_wait_frame_noblock(c, &f, &tv);
        assert_int_equal(rc, AMQP_STATUS_OK);
        if (f.frame_type == AMQP_FRAME_METHOD &&
            f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            break;
        }
        assert_int_not_equal(f.payload.method.id, AMQP_BASIC_NACK_METHOD);
        assert_int_not_equal(f.payload.method.id, AMQP_BASIC_RETURN_METHOD);
    }
    itest_disconnect(c);
}

/* VmHWM (peak RSS) of a process in KiB, -1 if unreadable. */
static long vm_hwm_kib(long pid) {
    char path[64], line[256];
    long kib = -1;
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        return -1;
    }
    while (fgets(line, sizeof line, fp)) {
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1) {
            break;
        }
    }
    fclose(fp);
    return kib;
}

/* ---- setup ---------------------------------------------------------------
 */

static int group_setup(void **state) {
    (void)state;
    char text[4096];
    static const char *tag[NQ] = {"prop", "json", "hdr"};
    g.dir = itest_tmpdir();
    for (int i = 0; i < NQ; i++) {
        snprintf(g.q[i], sizeof g.q[i], "it.bad.%s.%d", tag[i], (int)getpid());
        snprintf(g.dlq[i], sizeof g.dlq[i], "%s.dlq", g.q[i]);
    }
    snprintf(g.cfg, sizeof g.cfg, "%s/warren.json", g.dir);
    snprintf(g.log, sizeof g.log, "%s/warren.log", g.dir);
    snprintf(g.effects, sizeof g.effects, "%s/effects", g.dir);
    snprintf(g.script, sizeof g.script, "%s/recorder.sh", g.dir);
    snprintf(g.store, sizeof g.store, "%s/warren.db", g.dir);
    itest_write_file(g.script, recorder);
    assert_int_equal(chmod(g.script, 0700), 0);
    snprintf(
        text, sizeof text,
        "{\"store\": {\"path\": \"%s\"}, \"shutdown_grace_s\": 20,\n"
        " \"consumers\": [\n"
        "  {\"queue\": \"%s\", \"handler\": \"exec:%s\", \"prefetch\": 20,\n"
        "   \"max_message_bytes\": %d},\n"
        "  {\"queue\": \"%s\", \"handler\": \"exec:%s\", \"prefetch\": 20,\n"
        "   \"message_id\": \"json:order.id\"},\n"
        "  {\"queue\": \"%s\", \"handler\": \"exec:%s\", \"prefetch\": 20,\n"
        "   \"message_id\": \"header:x-id\", \"max_message_bytes\": %d}]}\n",
        g.store, g.q[QP], g.script, PROP_MAX_BYTES, g.q[QJ], g.script, g.q[QH],
        g.script, 64 << 20);
    itest_write_file(g.cfg, text);
    setenv("EFFECTS_FILE", g.effects, 1);
    g.conn = itest_connect();
    const char *decl[] = {"topology", "declare", "-c", g.cfg, NULL};
    int status = 0;
    pid_t p = itest_spawn_warren(decl, g.log);
    assert_true(itest_wait_exit(p, 30, &status));
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const char *run[] = {"run", "-c", g.cfg, "--log-level", "debug", NULL};
    g.pid = itest_spawn_warren(run, g.log);
    /* The first good message on each queue names its worker process. */
    for (int q = 0; q < NQ; q++) {
        char id[32];
        snprintf(id, sizeof id, "first-%d", q);
        publish_good(q, id);
        effects_query e = wait_runs(q, id, 1);
        g.worker_pid[q] = e.worker_pid;
        g.handled[q] = 1;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    if (g.pid > 0) {
        itest_terminate(g.pid, 30);
    }
    for (int i = 0; i < NQ; i++) {
        itest_queue_delete(g.conn, g.q[i]);
        itest_queue_delete(g.conn, g.dlq[i]);
    }
    itest_disconnect(g.conn);
    itest_rmtree(g.dir);
    free(g.dir);
    return 0;
}

/* ---- the rows ------------------------------------------------------------
 */

static void test_empty_body_is_handled_once_and_recorded_done(void **state) {
    (void)state;
    itest_publish(g.conn, "", g.q[QP], "empty-body", "", 0);
    effects_query e = wait_runs(QP, "empty-body", 1);
    assert_int_equal(e.bytes, 0);
    assert_int_equal(e.attempt, 1);
    assert_still_consuming(QP, 1);
    assert_recorded(QP, "empty-body", "done", 1);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq[QP]), 0);
}

static void
test_malformed_json_under_json_policy_is_dead_lettered_unrun(void **state) {
    (void)state;
    static const char body[] = "{\"order\": {\"id\": \"m-1\"";
    long records = store_count(QJ);
    itest_publish(g.conn, "", g.q[QJ], NULL, body, strlen(body));
    assert_still_consuming(QJ, 0);
    expect_dead_letter(QJ, "body is not valid JSON", strlen(body));
    /* The good message added one record; the bad one none. */
    assert_int_equal(store_count(QJ), records + 1);
}

static void test_missing_message_id_is_dead_lettered_unrun(void **state) {
    (void)state;
    itest_publish(g.conn, "", g.q[QP], NULL, "no id", 5);
    assert_still_consuming(QP, 0);
    expect_dead_letter(QP, "no message_id property", 5);
}

static void test_empty_message_id_is_dead_lettered_unrun(void **state) {
    (void)state;
    long records = store_count(QP);
    itest_publish(g.conn, "", g.q[QP], "", "empty id", 8);
    assert_still_consuming(QP, 0);
    expect_dead_letter(QP, "the message_id property is empty", 8);
    /* The good message added one record; the empty id none. */
    assert_int_equal(store_count(QP), records + 1);
}

/* The message_id property is an AMQP short string (at most 255 bytes), so
 * a 1 KiB id can only come in a header or a body: the header consumer. */
static void test_1kib_message_id_is_dead_lettered_not_truncated(void **state) {
    (void)state;
    char id[1025];
    memset(id, 'k', 1024);
    id[1024] = '\0';
    amqp_table_entry_t e = {.key = amqp_cstring_bytes("x-id")};
    amqp_table_t t = {1, &e};
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(id);
    long records = store_count(QH);
    itest_publish_headers(g.conn, "", g.q[QH], NULL, "long id", 7, &t);
    assert_still_consuming(QH, 0);
    expect_dead_letter(QH, "header 'x-id' is 1024 bytes, longer than 256", 7);
    assert_int_equal(store_count(QH), records + 1);
}

static void test_invalid_utf8_message_id_is_dead_lettered_unrun(void **state) {
    (void)state;
    long records = store_count(QP);
    itest_publish(g.conn, "", g.q[QP], "bad-\xff\xfe-\xc0\xaf", "utf8", 4);
    assert_still_consuming(QP, 0);
    expect_dead_letter(QP, "is not valid UTF-8", 4);
    assert_int_equal(store_count(QP), records + 1);
}

/* "nul" followed by a NUL byte and more: read as a C string it would
 * become the id "nul" and collide with any message really called "nul". */
static void
test_message_id_with_nul_byte_is_dead_lettered_not_cut(void **state) {
    (void)state;
    static const char id[] = "nul\0tail";
    long records = store_count(QP);
    publish_raw_id(g.q[QP], id, sizeof id - 1);
    assert_still_consuming(QP, 0);
    expect_dead_letter(QP, "contains a NUL byte", 3);
    assert_int_equal(runs_of(QP, "nul"), 0);
    assert_int_equal(store_count(QP), records + 1);
}

static void test_sql_in_message_id_is_stored_verbatim(void **state) {
    (void)state;
    static const char id[] = "'); DROP TABLE x;--";
    itest_publish(g.conn, "", g.q[QP], id, "sql", 3);
    effects_query e = wait_runs(QP, id, 1);
    assert_int_equal(e.attempt, 1);
    assert_still_consuming(QP, 1);
    assert_recorded(QP, id, "done", 1);
}

/* One row per shape of x-warren-attempt: the attempt must come from the
 * store (1 for a new id), the handler must run once, and nothing may go to
 * the retry cascade or the DLQ. */
static void run_attempt_row(const char *id, const amqp_field_value_t *v) {
    amqp_table_entry_t e = {.key = amqp_cstring_bytes("x-warren-attempt")};
    amqp_table_t t = {1, &e};
    e.value = *v;
    itest_publish_headers(g.conn, "", g.q[QP], id, "attempt", 7, &t);
    effects_query r = wait_runs(QP, id, 1);
    assert_int_equal(r.attempt, 1);
    assert_still_consuming(QP, 1);
    assert_recorded(QP, id, "done", 1);
    assert_int_equal(runs_of(QP, id), 1);
    assert_true(itest_delay_cascade_empty(g.conn));
    assert_int_equal(itest_queue_depth(g.conn, g.dlq[QP]), 0);
}

static void test_attempt_header_string_is_ignored(void **state) {
    (void)state;
    amqp_field_value_t v = {.kind = AMQP_FIELD_KIND_UTF8};
    v.value.bytes = amqp_cstring_bytes("999");
    run_attempt_row("att-string", &v);
}

static void test_attempt_header_array_is_ignored(void **state) {
    (void)state;
    amqp_field_value_t items[2] = {{.kind = AMQP_FIELD_KIND_I32},
                                   {.kind = AMQP_FIELD_KIND_I32}};
    items[0].value.i32 = 7;
    items[1].value.i32 = 1000;
    amqp_field_value_t v = {.kind = AMQP_FIELD_KIND_ARRAY};
    v.value.array.num_entries = 2;
    v.value.array.entries = items;
    run_attempt_row("att-array", &v);
}

static void test_attempt_header_table_is_ignored(void **state) {
    (void)state;
    amqp_table_entry_t inner = {.key = amqp_cstring_bytes("attempt")};
    inner.value.kind = AMQP_FIELD_KIND_I32;
    inner.value.value.i32 = 5;
    amqp_field_value_t v = {.kind = AMQP_FIELD_KIND_TABLE};
    v.value.table.num_entries = 1;
    v.value.table.entries = &inner;
    run_attempt_row("att-table", &v);
}

static void test_attempt_header_negative_is_ignored(void **state) {
    (void)state;
    amqp_field_value_t v = {.kind = AMQP_FIELD_KIND_I64};
    v.value.i64 = -5;
    run_attempt_row("att-negative", &v);
}

/* 2^64-1 as a 64-bit field. AMQP 0-9-1 (and RabbitMQ) has no unsigned
 * 64-bit type: rabbitmq-c sends 'l', which the broker passes on signed. */
static void test_attempt_header_2_pow_64_minus_1_is_ignored(void **state) {
    (void)state;
    amqp_field_value_t v = {.kind = AMQP_FIELD_KIND_U64};
    v.value.u64 = UINT64_MAX;
    run_attempt_row("att-u64max", &v);
}

/* One string header that brings the content header frame within `margin`
 * bytes of frame_max. */
static void publish_near_frame_max(const char *id, const char *body,
                                   size_t margin) {
    size_t pad_len = FRAME_MAX - margin;
    char *pad = malloc(pad_len + 1);
    assert_non_null(pad);
    memset(pad, 'h', pad_len);
    pad[pad_len] = '\0';
    amqp_table_entry_t e = {.key = amqp_cstring_bytes("pad")};
    amqp_table_t t = {1, &e};
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes.len = pad_len;
    e.value.value.bytes.bytes = pad;
    itest_publish_headers(g.conn, "", g.q[QP], id, body, strlen(body), &t);
    free(pad);
}

static void test_headers_near_frame_max_are_handled_once(void **state) {
    (void)state;
    publish_near_frame_max("big-headers", "hdrs", 512);
    effects_query e = wait_runs(QP, "big-headers", 1);
    assert_int_equal(e.bytes, 4);
    assert_still_consuming(QP, 1);
    assert_recorded(QP, "big-headers", "done", 1);
}

/* The same headers on a message that must be dead-lettered: the DLQ copy
 * adds warren's own headers to a header frame that is already nearly
 * full, and must still go out once (not fail and come back forever). */
static void
test_headers_near_frame_max_dead_letter_copy_goes_out_once(void **state) {
    (void)state;
    publish_near_frame_max(NULL, "hdrs-no-id", 512);
    assert_still_consuming(QP, 0);
    depth_arg a = {g.dlq[QP], 1};
    itest_msg m;
    assert_true(itest_wait_until(depth_at_least, &a, 60));
    assert_int_equal(itest_get(g.conn, g.dlq[QP], &m, ITEST_GET_REQUEUE), 1);
    const amqp_field_value_t *err = itest_msg_header(&m, "x-warren-error");
    int empty = err != NULL && err->value.bytes.len == 0;
    itest_msg_free(&m);
    /* Was empty while the copy's header frame was estimated with a flat
     * 4,096-byte reserve (fixed: counted exactly). */
    assert_false(empty);
    expect_dead_letter(QP, "no message_id property", 10);
}

/* Headers so close to frame_max (160 bytes) that warren's own DLQ headers
 * cannot be added: the copy must still go out once, without the original
 * headers if need be, instead of failing and being redelivered forever. */
static void
test_headers_leaving_no_room_for_dlq_headers_dead_letter_once(void **state) {
    (void)state;
    /* This used to requeue the original forever (a copy that could never
     * be published); publish_dead() now drops the original headers. */
    publish_near_frame_max(NULL, "full", 160);
    assert_still_consuming(QP, 0);
    expect_dead_letter(QP, "no message_id property", 4);
}

static int too_big_recorded(void *arg) {
    char state[16];
    int n = 0;
    (void)arg;
    return store_record(QP, "too-big", 7, state, &n);
}

static void
test_body_over_max_message_bytes_is_dead_lettered_unrun(void **state) {
    (void)state;
    size_t len = PROP_MAX_BYTES + 1;
    char *body = malloc(len);
    assert_non_null(body);
    memset(body, 'b', len);
    itest_publish(g.conn, "", g.q[QP], "too-big", body, len);
    free(body);
    assert_still_consuming(QP, 0);
    expect_dead_letter(QP, "message too large: 65537 bytes > max_message_bytes",
                       len);
    assert_int_equal(runs_of(QP, "too-big"), 0);
    /* The copy is confirmed before the outcome commits (step 3, then 4):
     * the dead record may trail the DLQ copy by a moment. */
    assert_true(itest_wait_until(too_big_recorded, NULL, 30));
    assert_recorded(QP, "too-big", "dead", 1);
}

static void test_50mib_body_is_handled_with_bounded_worker_rss(void **state) {
    (void)state;
    char *body = malloc(HUGE_BODY);
    assert_non_null(body);
    memset(body, 'z', HUGE_BODY);
    amqp_table_entry_t e = {.key = amqp_cstring_bytes("x-id")};
    amqp_table_t t = {1, &e};
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes("huge-1");
    long before = vm_hwm_kib(g.worker_pid[QH]);
    itest_publish_headers(g.conn, "", g.q[QH], NULL, body, HUGE_BODY, &t);
    free(body);
    effects_query r = wait_runs(QH, "huge-1", 1);
    assert_int_equal(r.bytes, (long long)HUGE_BODY);
    assert_int_equal(r.worker_pid, g.worker_pid[QH]);
    assert_still_consuming(QH, 1);
    assert_recorded(QH, "huge-1", "done", 1);
    long after = vm_hwm_kib(g.worker_pid[QH]);
    long cap = (long)(HUGE_BODY >> 10) + RSS_OVERHEAD_CAP_KIB;
    print_message("worker %ld VmHWM: %ld KiB before, %ld KiB after a %zu MiB "
                  "body (cap %ld KiB)\n",
                  g.worker_pid[QH], before, after, HUGE_BODY >> 20, cap);
    assert_true(after > 0);
    assert_true(after <= cap);
}

static void test_deeply_nested_json_is_dead_lettered_unrun(void **state) {
    (void)state;
    size_t depth = 100000;
    char *body = malloc(depth);
    assert_non_null(body);
    memset(body, '[', depth);
    long records = store_count(QJ);
    itest_publish(g.conn, "", g.q[QJ], NULL, body, depth);
    assert_still_consuming(QJ, 0);
    expect_dead_letter(QJ, "nested too deeply", depth);
    /* The same depth of objects on the path the policy walks. */
    char *obj = malloc(depth * 6 + 1);
    assert_non_null(obj);
    for (size_t i = 0; i < depth; i++) {
        memcpy(obj + i * 6, "{\"a\": ", 6);
    }
    itest_publish(g.conn, "", g.q[QJ], NULL, obj, depth * 6);
    assert_still_consuming(QJ, 0);
    expect_dead_letter(QJ, "nested too deeply", depth * 6);
    free(obj);
    free(body);
    assert_int_equal(store_count(QJ), records + 2);
}

/* Runs last: a clean stop hands back anything unacked, so empty work
 * queues prove every bad message was settled, and empty DLQs (each row took
 * its one copy out) prove no copy was published twice. */
static void
test_after_all_rows_nothing_unacked_and_no_copy_doubled(void **state) {
    (void)state;
    int status = itest_terminate(g.pid, 30);
    g.pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    for (int q = 0; q < NQ; q++) {
        assert_int_equal(itest_queue_depth(g.conn, g.q[q]), 0);
        assert_int_equal(itest_queue_depth(g.conn, g.dlq[q]), 0);
        assert_int_equal(runs_of(q, NULL), g.handled[q]);
    }
    assert_true(itest_delay_cascade_empty(g.conn));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_body_is_handled_once_and_recorded_done),
        cmocka_unit_test(
            test_malformed_json_under_json_policy_is_dead_lettered_unrun),
        cmocka_unit_test(test_missing_message_id_is_dead_lettered_unrun),
        cmocka_unit_test(test_empty_message_id_is_dead_lettered_unrun),
        cmocka_unit_test(test_1kib_message_id_is_dead_lettered_not_truncated),
        cmocka_unit_test(test_invalid_utf8_message_id_is_dead_lettered_unrun),
        cmocka_unit_test(
            test_message_id_with_nul_byte_is_dead_lettered_not_cut),
        cmocka_unit_test(test_sql_in_message_id_is_stored_verbatim),
        cmocka_unit_test(test_attempt_header_string_is_ignored),
        cmocka_unit_test(test_attempt_header_array_is_ignored),
        cmocka_unit_test(test_attempt_header_table_is_ignored),
        cmocka_unit_test(test_attempt_header_negative_is_ignored),
        cmocka_unit_test(test_attempt_header_2_pow_64_minus_1_is_ignored),
        cmocka_unit_test(test_headers_near_frame_max_are_handled_once),
        cmocka_unit_test(
            test_headers_near_frame_max_dead_letter_copy_goes_out_once),
        cmocka_unit_test(
            test_headers_leaving_no_room_for_dlq_headers_dead_letter_once),
        cmocka_unit_test(
            test_body_over_max_message_bytes_is_dead_lettered_unrun),
        cmocka_unit_test(test_50mib_body_is_handled_with_bounded_worker_rss),
        cmocka_unit_test(test_deeply_nested_json_is_dead_lettered_unrun),
        cmocka_unit_test(
            test_after_all_rows_nothing_unacked_and_no_copy_doubled),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

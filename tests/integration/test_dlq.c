/*
 * test_dlq.c - `warren dlq` end to end on the private broker. The real
 * `warren run` dead-letters 1,000 messages with three distinct reasons (an
 * exec handler exiting 65, max_attempts 1); then list and filters count
 * exactly, show prints one, a dry run changes nothing, a replay of one
 * reason with the bug fixed runs exactly those once, a second replay
 * doubles nothing, Ctrl-C in a paced replay of 2,000 loses and doubles
 * nothing, export/import gives back the same bytes, purge removes by id,
 * and bad input gets exit 2 with a clear message.
 */
#include "itest.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define N_DEAD 1000

/* Dead-letters every message with one of three reasons by id (n % 3),
 * except reason "alpha" once $FIXED_ALPHA is set: then it records the id
 * in $HANDLED_FILE and succeeds. */
static const char *handler =
    "#!/bin/sh\n"
    "n=${WARREN_MESSAGE_ID#m-}\n"
    "case $((n % 3)) in\n"
    "  0) if [ -n \"$FIXED_ALPHA\" ]; then\n"
    "       echo \"$WARREN_MESSAGE_ID\" >> \"$HANDLED_FILE\"; exit 0; fi\n"
    "     echo \"reason alpha: sku unknown\" >&2; exit 65;;\n"
    "  1) echo \"reason beta: price missing\" >&2; exit 65;;\n"
    "  *) echo \"reason gamma: stock service said 503\" >&2; exit 65;;\n"
    "esac\n";

static struct {
    char *dir;
    char q[96], dlq[128], q2[96], dlq2[128];
    char cfg[512], log[512], handled[512], script[512], out[512];
    amqp_connection_state_t conn;
} g;

static int run_warren(const char *const args[]) {
    int status = 0;
    unlink(g.out);
    pid_t pid = itest_spawn_warren(args, g.out);
    if (!itest_wait_exit(pid, 60, &status)) {
        itest_terminate(pid, 5);
        fail_msg("warren dlq did not finish within 60 s");
    }
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* Lines of the last output starting with `prefix`. */
static long out_lines(const char *prefix) {
    FILE *fp = fopen(g.out, "r");
    char line[65536];
    long n = 0;
    if (fp == NULL) {
        return -1;
    }
    while (fgets(line, sizeof line, fp)) {
        n += strncmp(line, prefix, strlen(prefix)) == 0;
    }
    fclose(fp);
    return n;
}

static int out_has(const char *text) {
    FILE *fp = fopen(g.out, "r");
    char *buf;
    long size;
    int found;
    if (fp == NULL) {
        return 0;
    }
    fseek(fp, 0, SEEK_END);
    size = ftell(fp);
    rewind(fp);
    buf = malloc((size_t)size + 1);
    assert_non_null(buf);
    size = (long)fread(buf, 1, (size_t)size, fp);
    buf[size] = '\0';
    fclose(fp);
    found = strstr(buf, text) != NULL;
    free(buf);
    return found;
}

static void dump_out(void) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "tail -n 20 %s >&2; tail -n 20 %s >&2", g.out,
             g.log);
    if (system(cmd) != 0) {
        /* best effort */
    }
}

typedef struct {
    const char *queue;
    long want;
} depth_arg;

static int depth_is(void *arg) {
    depth_arg *a = arg;
    return itest_queue_depth(g.conn, a->queue) == a->want;
}

static int depth_at_least(void *arg) {
    depth_arg *a = arg;
    return itest_queue_depth(g.conn, a->queue) >= a->want;
}

static int handled_is(void *arg) {
    return itest_count_lines(g.handled) == *(long *)arg;
}

static pid_t start_worker(void) {
    const char *args[] = {"run", "-c", g.cfg, NULL};
    return itest_spawn_warren(args, g.log);
}

static void stop_worker(pid_t pid) {
    int status = itest_terminate(pid, 30);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static int group_setup(void **state) {
    (void)state;
    char text[2048];
    g.dir = itest_tmpdir();
    snprintf(g.q, sizeof g.q, "it.dlq.%d", (int)getpid());
    snprintf(g.dlq, sizeof g.dlq, "%s.dlq", g.q);
    snprintf(g.q2, sizeof g.q2, "it.dlq.b.%d", (int)getpid());
    snprintf(g.dlq2, sizeof g.dlq2, "%s.dlq", g.q2);
    snprintf(g.cfg, sizeof g.cfg, "%s/warren.json", g.dir);
    snprintf(g.log, sizeof g.log, "%s/warren.log", g.dir);
    snprintf(g.handled, sizeof g.handled, "%s/handled", g.dir);
    snprintf(g.script, sizeof g.script, "%s/handler.sh", g.dir);
    snprintf(g.out, sizeof g.out, "%s/out", g.dir);
    itest_write_file(g.script, handler);
    assert_int_equal(chmod(g.script, 0700), 0);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"}, \"consumers\": ["
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"max_attempts\": 1}},"
             "{\"queue\": \"%s\", \"handler\": \"builtin:noop\"}]}",
             g.dir, g.q, g.script, g.q2);
    itest_write_file(g.cfg, text);
    setenv("HANDLED_FILE", g.handled, 1);
    unsetenv("FIXED_ALPHA");
    g.conn = itest_connect();
    const char *decl[] = {"topology", "declare", "-c", g.cfg, NULL};
    assert_int_equal(run_warren(decl), 0);
    itest_publish_n(g.conn, "", g.q, "m", N_DEAD, NULL, 0);
    pid_t w = start_worker();
    depth_arg a = {g.dlq, N_DEAD};
    if (!itest_wait_until(depth_is, &a, 60)) {
        dump_out();
        fail_msg("%ld of %d dead-lettered", itest_queue_depth(g.conn, g.dlq),
                 N_DEAD);
    }
    stop_worker(w);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    itest_queue_delete(g.conn, g.q);
    itest_queue_delete(g.conn, g.dlq);
    itest_queue_delete(g.conn, g.q2);
    itest_queue_delete(g.conn, g.dlq2);
    itest_disconnect(g.conn);
    itest_rmtree(g.dir);
    free(g.dir);
    return 0;
}

static long list_count(const char *const extra[]) {
    const char *args[32] = {"dlq",     "list", "-c",    g.cfg,
                            "--queue", g.q,    "--json"};
    int n = 7;
    for (int i = 0; extra && extra[i]; i++) {
        args[n++] = extra[i];
    }
    args[n] = NULL;
    int rc = run_warren(args);
    if (rc != 0) {
        dump_out();
        fail_msg("dlq list exited %d", rc);
    }
    return out_lines("{");
}

static void test_list_and_filters_count_exactly(void **state) {
    (void)state;
    assert_int_equal(list_count(NULL), N_DEAD);
    assert_int_equal(list_count((const char *[]){"--error", "alpha", NULL}),
                     334);
    assert_int_equal(list_count((const char *[]){
                         "--error-re", "^reason (beta|gamma):", NULL}),
                     666);
    assert_int_equal(
        list_count((const char *[]){"--id", "m-5", "--id", "m-6", NULL}), 2);
    assert_int_equal(list_count((const char *[]){"--since", "1h", NULL}),
                     N_DEAD);
    assert_int_equal(list_count((const char *[]){"--until", "1h", NULL}), 0);
    assert_int_equal(
        list_count((const char *[]){"--since", "2000-01-01T00:00:00Z",
                                    "--error", "beta", "--limit", "10", NULL}),
        10);
    /* listing took nothing away */
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), N_DEAD);
    const char *text[] = {"dlq", "list", "-c", g.cfg, "--queue", g.q, NULL};
    assert_int_equal(run_warren(text), 0);
    assert_true(out_has("1000 dead letter(s) shown"));
    /* not a terminal: 100 columns, the error cut to fit */
    assert_true(out_has("reason gamma: stock"));
    assert_false(out_has("reason gamma: stock service said 503"));
}

/* The message ids of the last `list --json`, in the order listed. */
static int snapshot_order(char ids[][16], int max) {
    int n = 0;
    FILE *fp = fopen(g.out, "r");
    char line[65536];
    while (fp && n < max && fgets(line, sizeof line, fp)) {
        char *p = strstr(line, "\"message_id\":\"");
        if (p) {
            sscanf(p + 14, "%15[^\"]", ids[n++]);
        }
    }
    if (fp) {
        fclose(fp);
    }
    return n;
}

static void test_list_twice_sees_the_same_order(void **state) {
    (void)state;
    static char a[N_DEAD][16], b[N_DEAD][16];
    assert_int_equal(list_count(NULL), N_DEAD);
    assert_int_equal(snapshot_order(a, N_DEAD), N_DEAD);
    assert_int_equal(list_count(NULL), N_DEAD);
    assert_int_equal(snapshot_order(b, N_DEAD), N_DEAD);
    for (int i = 0; i < N_DEAD; i++) {
        assert_string_equal(a[i], b[i]);
    }
    /* and it is publish order: the worker dead-lettered them in order */
    assert_string_equal(a[0], "m-0");
    assert_string_equal(a[N_DEAD - 1], "m-999");
}

static void test_show_prints_headers_and_pretty_body(void **state) {
    (void)state;
    const char *args[] = {"dlq",     "show", "-c",  g.cfg,
                          "--queue", g.q,    "m-3", NULL};
    assert_int_equal(run_warren(args), 0);
    assert_true(out_has("id:        m-3"));
    assert_true(out_has("x-warren-error (string): \"reason alpha"));
    assert_true(out_has("x-warren-attempts (i64): 1"));
    assert_true(out_has("body (")); /* JSON, pretty-printed */
    assert_true(out_has("\"id\":\t\"m-3\""));
    const char *missing[] = {"dlq",     "show", "-c",         g.cfg,
                             "--queue", g.q,    "no-such-id", NULL};
    assert_int_equal(run_warren(missing), 1);
    assert_true(out_has("no dead letter with id 'no-such-id'"));
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), N_DEAD);
}

static void test_dry_run_changes_nothing(void **state) {
    (void)state;
    long before_dlq = itest_queue_depth(g.conn, g.dlq);
    long before_q = itest_queue_depth(g.conn, g.q);
    const char *args[] = {"dlq", "replay",  "-c",    g.cfg,       "--queue",
                          g.q,   "--error", "alpha", "--dry-run", NULL};
    assert_int_equal(run_warren(args), 0);
    assert_int_equal(out_lines("would replay "), 334);
    assert_true(out_has("dry run: would replay 334, nothing changed"));
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), before_dlq);
    assert_int_equal(itest_queue_depth(g.conn, g.q), before_q);
}

static void test_replay_one_reason_runs_exactly_those_once(void **state) {
    (void)state;
    setenv("FIXED_ALPHA", "1", 1);
    pid_t w = start_worker();
    const char *args[] = {"dlq", "replay",  "-c",           g.cfg, "--queue",
                          g.q,   "--error", "reason alpha", NULL};
    int rc = run_warren(args);
    if (rc != 0 || !out_has("replayed 334, skipped 0, failed 0")) {
        dump_out();
        fail_msg("replay exited %d", rc);
    }
    long want = 334;
    if (!itest_wait_until(handled_is, &want, 60)) {
        dump_out();
        fail_msg("handled %ld, want 334", itest_count_lines(g.handled));
    }
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), N_DEAD - 334);
    /* replay again: nothing left to select, nothing doubled */
    assert_int_equal(run_warren(args), 0);
    assert_true(out_has("replayed 0, skipped 0, failed 0"));
    depth_arg empty = {g.q, 0};
    assert_true(itest_wait_until(depth_is, &empty, 30));
    stop_worker(w);
    unsetenv("FIXED_ALPHA");
    assert_int_equal(itest_count_lines(g.handled), 334);
    /* every handled id is an alpha id, each once */
    char cmd[700];
    snprintf(cmd, sizeof cmd,
             "sort %s | uniq | awk -F- '$2 %% 3 == 0' | wc -l | "
             "grep -qx 334",
             g.handled);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(list_count((const char *[]){"--error", "alpha", NULL}), 0);
    assert_int_equal(list_count(NULL), N_DEAD - 334);
    assert_int_equal(list_count((const char *[]){"--id", "m-1", NULL}), 1);
}

static void test_purge_by_id_removes_only_that_one(void **state) {
    (void)state;
    long before = itest_queue_depth(g.conn, g.dlq);
    const char *args[] = {"dlq", "purge", "-c",  g.cfg, "--queue",
                          g.q,   "--id",  "m-1", NULL};
    assert_int_equal(run_warren(args), 0);
    assert_true(out_has("removing m-1 "));
    assert_true(out_has("removed 1"));
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), before - 1);
    assert_int_equal(list_count((const char *[]){"--id", "m-1", NULL}), 0);
    const char *all[] = {"dlq",     "purge", "-c",    g.cfg,
                         "--queue", g.q,     "--all", NULL};
    assert_int_equal(run_warren(all), 2); /* not a TTY: --yes required */
    assert_true(out_has("add --yes"));
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), before - 1);
}

/* Puts `n` dead letters straight into the second consumer's DLQ, as the
 * worker would have (x-warren-queue names the work queue). */
static void seed_dlq2(int n) {
    amqp_table_entry_t e[3];
    e[0].key = amqp_cstring_bytes("x-warren-queue");
    e[0].value.kind = AMQP_FIELD_KIND_UTF8;
    e[0].value.value.bytes = amqp_cstring_bytes(g.q2);
    e[1].key = amqp_cstring_bytes("x-warren-error");
    e[1].value.kind = AMQP_FIELD_KIND_UTF8;
    e[1].value.value.bytes = amqp_cstring_bytes("seeded");
    e[2].key = amqp_cstring_bytes("x-warren-dead-at");
    e[2].value.kind = AMQP_FIELD_KIND_I64;
    e[2].value.value.i64 = 1;
    amqp_table_t t = {3, e};
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "s-%d", i);
        itest_publish_headers(g.conn, "", g.dlq2, id, "x", 1, &t);
    }
}

static void
test_sigint_mid_paced_replay_loses_and_doubles_nothing(void **state) {
    (void)state;
    enum { N = 2000 };
    static unsigned char seen[N];
    itest_queue_purge(g.conn, g.dlq2);
    itest_queue_purge(g.conn, g.q2);
    seed_dlq2(N);
    const char *args[] = {"dlq",   "replay", "-c",     g.cfg, "--queue", g.q2,
                          "--all", "--yes",  "--rate", "400", NULL};
    unlink(g.out);
    pid_t pid = itest_spawn_warren(args, g.out);
    /* The DLQ's ready count drops at once (the tool holds everything
     * unacked), so progress is watched on the work queue. */
    depth_arg a = {g.q2, 300};
    assert_true(itest_wait_until(depth_at_least, &a, 30));
    kill(pid, SIGINT);
    int status = 0;
    assert_true(itest_wait_exit(pid, 30, &status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_true(out_has("(interrupted)"));
    long dlq = itest_queue_depth(g.conn, g.dlq2);
    long work = itest_queue_depth(g.conn, g.q2);
    assert_true(work >= 300 && dlq > 0);
    assert_int_equal(dlq + work, N);
    /* and each id is in exactly one of them */
    const char *qs[] = {g.dlq2, g.q2};
    memset(seen, 0, sizeof seen);
    for (int k = 0; k < 2; k++) {
        itest_msg m;
        while (itest_get(g.conn, qs[k], &m, 0) == 1) {
            int i = atoi(m.message_id + 2);
            assert_true(i >= 0 && i < N);
            assert_int_equal(seen[i], 0);
            seen[i] = 1;
            itest_msg_free(&m);
        }
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(seen[i], 1);
    }
}

static int value_equal(const amqp_field_value_t *a,
                       const amqp_field_value_t *b);

static int table_equal(const amqp_table_t *a, const amqp_table_t *b) {
    if (a->num_entries != b->num_entries) {
        return 0;
    }
    for (int i = 0; i < a->num_entries; i++) {
        const amqp_table_entry_t *x = &a->entries[i], *y = &b->entries[i];
        if (x->key.len != y->key.len ||
            memcmp(x->key.bytes, y->key.bytes, x->key.len) != 0 ||
            !value_equal(&x->value, &y->value)) {
            return 0;
        }
    }
    return 1;
}

static int value_equal(const amqp_field_value_t *a,
                       const amqp_field_value_t *b) {
    if (a->kind != b->kind) {
        return 0;
    }
    switch (a->kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        return a->value.bytes.len == b->value.bytes.len &&
               (a->value.bytes.len == 0 ||
                memcmp(a->value.bytes.bytes, b->value.bytes.bytes,
                       a->value.bytes.len) == 0);
    case AMQP_FIELD_KIND_TABLE:
        return table_equal(&a->value.table, &b->value.table);
    case AMQP_FIELD_KIND_ARRAY:
        if (a->value.array.num_entries != b->value.array.num_entries) {
            return 0;
        }
        for (int i = 0; i < a->value.array.num_entries; i++) {
            if (!value_equal(&a->value.array.entries[i],
                             &b->value.array.entries[i])) {
                return 0;
            }
        }
        return 1;
    case AMQP_FIELD_KIND_F32:
        return memcmp(&a->value.f32, &b->value.f32, sizeof(float)) == 0;
    case AMQP_FIELD_KIND_F64:
        return memcmp(&a->value.f64, &b->value.f64, sizeof(double)) == 0;
    case AMQP_FIELD_KIND_DECIMAL:
        return a->value.decimal.decimals == b->value.decimal.decimals &&
               a->value.decimal.value == b->value.decimal.value;
    case AMQP_FIELD_KIND_VOID:
        return 1;
    case AMQP_FIELD_KIND_BOOLEAN:
        return !a->value.boolean == !b->value.boolean;
    case AMQP_FIELD_KIND_I8:
        return a->value.i8 == b->value.i8;
    case AMQP_FIELD_KIND_U8:
        return a->value.u8 == b->value.u8;
    case AMQP_FIELD_KIND_I16:
        return a->value.i16 == b->value.i16;
    case AMQP_FIELD_KIND_I32:
        return a->value.i32 == b->value.i32;
    default: /* i64, u64, timestamp */
        return a->value.u64 == b->value.u64;
    }
}

/* Kinds RabbitMQ relays as sent (it re-encodes unsigned 16/32/64-bit
 * values as wider signed ones, so those are pinned by the unit test). */
static void test_export_then_import_gives_back_the_same_bytes(void **state) {
    (void)state;
    static const uint8_t body[] = {0x00, 0xff, 0xc3, 0x28, 'o', 'k', 0x80};
    amqp_field_value_t arr[2];
    amqp_table_entry_t inner[1], e[16];
    int n = 0;
    arr[0].kind = AMQP_FIELD_KIND_I32;
    arr[0].value.i32 = -7;
    arr[1].kind = AMQP_FIELD_KIND_UTF8;
    arr[1].value.bytes = amqp_cstring_bytes("x");
    inner[0].key = amqp_cstring_bytes("deep");
    inner[0].value.kind = AMQP_FIELD_KIND_ARRAY;
    inner[0].value.value.array = (amqp_array_t){2, arr};
#define KV(k, kd) (e[n].key = amqp_cstring_bytes(k), e[n].value.kind = kd)
    KV("bool", AMQP_FIELD_KIND_BOOLEAN);
    e[n++].value.value.boolean = 1;
    KV("i8", AMQP_FIELD_KIND_I8);
    e[n++].value.value.i8 = -5;
    KV("i16", AMQP_FIELD_KIND_I16);
    e[n++].value.value.i16 = -300;
    KV("i32", AMQP_FIELD_KIND_I32);
    e[n++].value.value.i32 = -70000;
    KV("i64", AMQP_FIELD_KIND_I64);
    e[n++].value.value.i64 = INT64_MIN + 3;
    KV("ts", AMQP_FIELD_KIND_TIMESTAMP);
    e[n++].value.value.u64 = 1795669200;
    KV("f32", AMQP_FIELD_KIND_F32);
    e[n++].value.value.f32 = 0.1f;
    KV("f64", AMQP_FIELD_KIND_F64);
    e[n++].value.value.f64 = 0.1 + 0.2;
    KV("dec", AMQP_FIELD_KIND_DECIMAL);
    e[n].value.value.decimal.decimals = 2;
    e[n++].value.value.decimal.value = 12345;
    KV("str", AMQP_FIELD_KIND_UTF8);
    e[n++].value.value.bytes = amqp_cstring_bytes("caf\xc3\xa9");
    KV("bin", AMQP_FIELD_KIND_BYTES);
    e[n++].value.value.bytes = (amqp_bytes_t){sizeof body, (void *)body};
    KV("void", AMQP_FIELD_KIND_VOID);
    n++;
    KV("arr", AMQP_FIELD_KIND_ARRAY);
    e[n++].value.value.array = (amqp_array_t){2, arr};
    KV("tbl", AMQP_FIELD_KIND_TABLE);
    e[n++].value.value.table = (amqp_table_t){1, inner};
    KV("x-warren-queue", AMQP_FIELD_KIND_UTF8);
    e[n++].value.value.bytes = amqp_cstring_bytes(g.q2);
#undef KV
    amqp_table_t t = {n, e};
    itest_queue_purge(g.conn, g.dlq2);
    itest_publish_headers(g.conn, "", g.dlq2, "rt-1", body, sizeof body, &t);
    itest_publish_headers(g.conn, "", g.dlq2, "rt-2", "{\"a\":1}", 7, &t);
    itest_msg orig[1];
    /* basic.reject with requeue puts it back at the head */
    assert_int_equal(itest_get(g.conn, g.dlq2, &orig[0], ITEST_GET_REQUEUE), 1);
    assert_string_equal(orig[0].message_id, "rt-1");
    char file[600];
    snprintf(file, sizeof file, "%s/export.jsonl", g.dir);
    unlink(file);
    const char *ex[] = {"dlq", "export", "-c", g.cfg,      "--queue",
                        g.q2,  "--out",  file, "--remove", NULL};
    assert_int_equal(run_warren(ex), 0);
    assert_true(out_has("exported 2"));
    struct stat sb;
    assert_int_equal(stat(file, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(itest_count_lines(file), 2);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq2), 0);
    assert_int_equal(run_warren(ex), 2); /* exists: --force needed */
    assert_true(out_has("--force"));
    const char *im[] = {"dlq", "import", "-c", g.cfg, "--queue",
                        g.q2,  "--in",   file, NULL};
    assert_int_equal(run_warren(im), 0);
    assert_true(out_has("imported 2"));
    itest_msg back;
    assert_int_equal(itest_get(g.conn, g.dlq2, &back, 0), 1);
    assert_string_equal(back.message_id, "rt-1");
    assert_int_equal(back.len, sizeof body);
    assert_memory_equal(back.body, body, sizeof body);
    assert_true(table_equal(&orig[0].raw.properties.headers,
                            &back.raw.properties.headers));
    assert_int_equal(back.raw.properties._flags, orig[0].raw.properties._flags);
    itest_msg_free(&back);
    assert_int_equal(itest_get(g.conn, g.dlq2, &back, 0), 1);
    assert_string_equal(back.message_id, "rt-2");
    assert_string_equal(back.body, "{\"a\":1}");
    itest_msg_free(&back);
    itest_msg_free(&orig[0]);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq2), 0);
}

static void test_bad_inputs_exit_2_with_clear_errors(void **state) {
    (void)state;
    const char *unknown[] = {"dlq",     "list", "-c", g.cfg,
                             "--queue", "nope", NULL};
    assert_int_equal(run_warren(unknown), 2);
    assert_true(out_has("no consumer reads queue 'nope'"));
    const char *since[] = {"dlq", "list",    "-c",           g.cfg, "--queue",
                           g.q,   "--since", "last tuesday", NULL};
    assert_int_equal(run_warren(since), 2);
    assert_true(out_has("--since: 'last tuesday' is neither"));
    const char *re[] = {"dlq", "purge",      "-c", g.cfg, "--queue",
                        g.q,   "--error-re", "([", NULL};
    assert_int_equal(run_warren(re), 2);
    assert_true(out_has("--error-re '(['"));
    const char *nosel[] = {"dlq", "replay", "-c", g.cfg, "--queue", g.q, NULL};
    assert_int_equal(run_warren(nosel), 2);
    assert_true(out_has("say which dead letters"));
    char file[600];
    snprintf(file, sizeof file, "%s/bad.jsonl", g.dir);
    itest_write_file(file, "{\"v\":1,\"body\":\"ok\"}\n"
                           "{\"v\":1,\"body\":\n"
                           "{\"v\":1,\"body\":\"after\"}\n");
    itest_queue_purge(g.conn, g.dlq2);
    const char *im[] = {"dlq", "import", "-c", g.cfg, "--queue",
                        g.q2,  "--in",   file, NULL};
    assert_int_equal(run_warren(im), 2);
    char want[700];
    snprintf(want, sizeof want, "%s:2: not valid JSON", file);
    assert_true(out_has(want));
    assert_int_equal(itest_queue_depth(g.conn, g.dlq2), 1); /* line 1 only */
    const char *skip[] = {"dlq", "import", "-c", g.cfg,        "--queue",
                          g.q2,  "--in",   file, "--skip-bad", NULL};
    assert_int_equal(run_warren(skip), 10);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq2), 3);
    itest_queue_delete(g.conn, g.dlq2);
    const char *gone[] = {"dlq", "list", "-c", g.cfg, "--queue", g.q2, NULL};
    assert_int_equal(run_warren(gone), 2);
    assert_true(out_has("does not exist"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_and_filters_count_exactly),
        cmocka_unit_test(test_list_twice_sees_the_same_order),
        cmocka_unit_test(test_show_prints_headers_and_pretty_body),
        cmocka_unit_test(test_dry_run_changes_nothing),
        cmocka_unit_test(test_replay_one_reason_runs_exactly_those_once),
        cmocka_unit_test(test_purge_by_id_removes_only_that_one),
        cmocka_unit_test(
            test_sigint_mid_paced_replay_loses_and_doubles_nothing),
        cmocka_unit_test(test_export_then_import_gives_back_the_same_bytes),
        cmocka_unit_test(test_bad_inputs_exit_2_with_clear_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

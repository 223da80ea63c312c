/*
 * test_dlq_select.c - the pure parts of `warren dlq`: durations, ISO-8601
 * and relative times, the filter (substring, regex, time window, ids), the
 * headers a replayed copy carries, and the JSON Lines encoding round trip
 * with every header type, binary bodies and malformed lines.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dlq.h"

static void test_durations_parse_each_unit_and_refuse_junk(void **state) {
    (void)state;
    char err[256];
    int64_t ms;
    assert_int_equal(warren__dlq_parse_duration("30s", &ms, err, sizeof err),
                     0);
    assert_int_equal(ms, 30000);
    assert_int_equal(warren__dlq_parse_duration("15m", &ms, err, sizeof err),
                     0);
    assert_int_equal(ms, 900000);
    assert_int_equal(warren__dlq_parse_duration("2h", &ms, err, sizeof err), 0);
    assert_int_equal(ms, 7200000);
    assert_int_equal(warren__dlq_parse_duration("3d", &ms, err, sizeof err), 0);
    assert_int_equal(ms, 3 * 86400000LL);
    assert_int_equal(warren__dlq_parse_duration("1w", &ms, err, sizeof err), 0);
    assert_int_equal(ms, 7 * 86400000LL);
    const char *bad[] = {"",    "h",    "0h",
                         "2",   "2x",   "2hh",
                         "-3d", "1.5h", "99999999999999999999d"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(
            warren__dlq_parse_duration(bad[i], &ms, err, sizeof err),
            WARREN_ERR_INVAL);
        assert_non_null(strstr(err, "duration"));
    }
}

static void test_iso8601_times_with_zones_and_relative_times(void **state) {
    (void)state;
    char err[256];
    int64_t t;
    /* 2026-11-26T05:00:00Z = 1795662000 s */
    assert_int_equal(
        warren__dlq_parse_time("2026-11-26T05:00:00Z", 0, &t, err, sizeof err),
        0);
    assert_int_equal(t, 1795669200000LL);
    assert_int_equal(warren__dlq_parse_time("2026-11-26T06:00:00+01:00", 0, &t,
                                            err, sizeof err),
                     0);
    assert_int_equal(t, 1795669200000LL);
    assert_int_equal(
        warren__dlq_parse_time("2026-11-26T04:30-0030", 0, &t, err, sizeof err),
        0);
    assert_int_equal(t, 1795669200000LL);
    assert_int_equal(warren__dlq_parse_time("2026-11-26T05:00:00.250Z", 0, &t,
                                            err, sizeof err),
                     0);
    assert_int_equal(t, 1795669200250LL);
    assert_int_equal(
        warren__dlq_parse_time("2024-02-29Z", 0, &t, err, sizeof err), 0);
    assert_int_equal(t, 1709164800000LL);
    assert_int_equal(
        warren__dlq_parse_time("2h", 1000000000LL, &t, err, sizeof err), 0);
    assert_int_equal(t, 1000000000LL - 7200000);
    const char *bad[] = {"2026-13-01T00:00Z",   "2023-02-29",
                         "2026-11-26T25:00Z",   "2026-11-26T05:00:00Q",
                         "2026-11-26T05",       "yesterday",
                         "2026-11-26T05:00+99", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(warren__dlq_parse_time(bad[i], 0, &t, err, sizeof err),
                         WARREN_ERR_INVAL);
    }
}

static warren__dlq_entry entry(const char *id, const char *error,
                               int64_t dead_at) {
    warren__dlq_entry e;
    memset(&e, 0, sizeof e);
    snprintf(e.id, sizeof e.id, "%s", id);
    snprintf(e.error, sizeof e.error, "%s", error);
    e.dead_at_ms = dead_at;
    return e;
}

static void test_filter_criteria_all_must_hold(void **state) {
    (void)state;
    warren__dlq_filter f;
    char err[256];
    warren__dlq_entry a = entry("o-1", "sku 42 unknown", 1000);
    warren__dlq_entry b = entry("o-2", "timeout after 30 s", 2000);
    warren__dlq_entry c = entry("o-3", "sku 7 unknown", 3000);
    warren__dlq_filter_init(&f);
    assert_true(warren__dlq_filter_is_empty(&f));
    assert_true(warren__dlq_filter_match(&f, &a));
    f.error_sub = "unknown";
    assert_false(warren__dlq_filter_is_empty(&f));
    assert_true(warren__dlq_filter_match(&f, &a));
    assert_false(warren__dlq_filter_match(&f, &b));
    assert_int_equal(
        warren__dlq_filter_set_re(&f, "^sku [0-9]$", err, sizeof err), 0);
    assert_false(warren__dlq_filter_match(&f, &a)); /* two digits */
    assert_false(warren__dlq_filter_match(&f, &c)); /* " unknown" follows */
    assert_int_equal(
        warren__dlq_filter_set_re(&f, "^sku [0-9]+ ", err, sizeof err), 0);
    assert_true(warren__dlq_filter_match(&f, &a));
    assert_true(warren__dlq_filter_match(&f, &c));
    f.since_ms = 2000; /* inclusive */
    f.until_ms = 3000; /* exclusive */
    assert_false(warren__dlq_filter_match(&f, &a));
    assert_false(warren__dlq_filter_match(&f, &c));
    f.error_sub = NULL;
    warren__dlq_filter_free(&f);
    assert_true(warren__dlq_filter_match(&f, &b));
    f.since_ms = f.until_ms = 0;
    assert_int_equal(warren__dlq_filter_add_id(&f, "o-3"), 0);
    assert_int_equal(warren__dlq_filter_add_id(&f, "o-1"), 0);
    assert_true(warren__dlq_filter_match(&f, &a));
    assert_false(warren__dlq_filter_match(&f, &b));
    assert_true(warren__dlq_filter_match(&f, &c));
    for (int i = 2; i < WARREN__DLQ_MAX_IDS; i++) {
        assert_int_equal(warren__dlq_filter_add_id(&f, "x"), 0);
    }
    assert_int_equal(warren__dlq_filter_add_id(&f, "x"), WARREN_ERR_INVAL);
    warren__dlq_filter_free(&f);
}

static void test_bad_regex_is_reported_with_regerror_text(void **state) {
    (void)state;
    warren__dlq_filter f;
    char err[256];
    warren__dlq_filter_init(&f);
    assert_int_equal(
        warren__dlq_filter_set_re(&f, "(unclosed", err, sizeof err),
        WARREN_ERR_INVAL);
    assert_non_null(strstr(err, "(unclosed"));
    assert_false(f.has_re);
    warren__dlq_filter_free(&f);
}

/* ---- replay headers ----------------------------------------------------- */

static warren__table_entry str_entry(const char *k, const char *v) {
    warren__table_entry e;
    e.key = warren__cstr_bytes(k);
    e.value.kind = WARREN__FIELD_UTF8;
    e.value.value.bytes = warren__cstr_bytes(v);
    return e;
}

static warren__table_entry int_entry(const char *k, int64_t v) {
    warren__table_entry e;
    e.key = warren__cstr_bytes(k);
    e.value.kind = WARREN__FIELD_I64;
    e.value.value.i64 = v;
    return e;
}

static const warren__field *find(const warren__table *t, const char *k) {
    return warren__table_find(t, k);
}

static void
test_replay_moves_failure_headers_to_history_and_counts_replays(void **state) {
    (void)state;
    warren__arena pool;
    warren__table out;
    warren__table_entry in_e[] = {
        str_entry("tenant", "acme"),
        str_entry("x-warren-queue", "orders"),
        str_entry("x-warren-error", "bad sku"),
        int_entry("x-warren-attempts", 5),
        int_entry("x-warren-dead-at", 123),
        int_entry("x-warren-attempt", 5),
        str_entry("x-warren-replayed-error", "older failure"),
        int_entry("x-warren-replays", 2)};
    warren__table in = {sizeof in_e / sizeof in_e[0], in_e};
    warren__arena_init(&pool, 1024);
    assert_int_equal(warren__dlq_replay_headers(&in, 0, 999, &pool, &out), 0);
    assert_non_null(find(&out, "tenant"));
    assert_null(find(&out, "x-warren-queue"));
    assert_null(find(&out, "x-warren-error"));
    assert_null(find(&out, "x-warren-attempt"));
    const warren__field *v = find(&out, "x-warren-replayed-error");
    assert_non_null(v);
    assert_int_equal(v->value.bytes.len, 7); /* "bad sku", not the older */
    assert_memory_equal(v->value.bytes.bytes, "bad sku", 7);
    assert_int_equal(find(&out, "x-warren-replayed-attempts")->value.i64, 5);
    assert_non_null(find(&out, "x-warren-replayed-queue"));
    assert_int_equal(find(&out, "x-warren-replays")->value.i64, 3);
    assert_int_equal(find(&out, "x-warren-replayed-at")->value.i64, 999);
    int replays = 0;
    for (int i = 0; i < out.num_entries; i++) {
        replays +=
            out.entries[i].key.len == 16 &&
            memcmp(out.entries[i].key.bytes, "x-warren-replays", 16) == 0;
    }
    assert_int_equal(replays, 1);

    warren__arena_recycle(&pool);
    assert_int_equal(warren__dlq_replay_headers(&in, 1, 999, &pool, &out), 0);
    assert_int_equal(out.num_entries, 2); /* tenant, x-warren-replays */
    assert_non_null(find(&out, "tenant"));
    assert_int_equal(find(&out, "x-warren-replays")->value.i64, 3);
    warren__arena_empty(&pool);
}

/* ---- JSON Lines ------------------------------------------------------- */

static int value_equal(const warren__field *a, const warren__field *b);

static int table_equal(const warren__table *a, const warren__table *b) {
    if (a->num_entries != b->num_entries) {
        return 0;
    }
    for (int i = 0; i < a->num_entries; i++) {
        const warren__table_entry *x = &a->entries[i], *y = &b->entries[i];
        if (x->key.len != y->key.len ||
            memcmp(x->key.bytes, y->key.bytes, x->key.len) != 0 ||
            !value_equal(&x->value, &y->value)) {
            print_message("header %d (%.*s) differs\n", i, (int)x->key.len,
                          (const char *)x->key.bytes);
            return 0;
        }
    }
    return 1;
}

static int value_equal(const warren__field *a, const warren__field *b) {
    if (a->kind != b->kind) {
        return 0;
    }
    switch (a->kind) {
    case WARREN__FIELD_UTF8:
    case WARREN__FIELD_BYTES:
        return a->value.bytes.len == b->value.bytes.len &&
               (a->value.bytes.len == 0 ||
                memcmp(a->value.bytes.bytes, b->value.bytes.bytes,
                       a->value.bytes.len) == 0);
    case WARREN__FIELD_TABLE:
        return table_equal(&a->value.table, &b->value.table);
    case WARREN__FIELD_ARRAY:
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
    case WARREN__FIELD_F32:
        return memcmp(&a->value.f32, &b->value.f32, sizeof(float)) == 0;
    case WARREN__FIELD_F64:
        return memcmp(&a->value.f64, &b->value.f64, sizeof(double)) == 0;
    case WARREN__FIELD_DECIMAL:
        return a->value.decimal.decimals == b->value.decimal.decimals &&
               a->value.decimal.value == b->value.decimal.value;
    case WARREN__FIELD_VOID:
        return 1;
    case WARREN__FIELD_BOOLEAN:
        return !a->value.boolean == !b->value.boolean;
    case WARREN__FIELD_I8:
        return a->value.i8 == b->value.i8;
    case WARREN__FIELD_U8:
        return a->value.u8 == b->value.u8;
    case WARREN__FIELD_I16:
        return a->value.i16 == b->value.i16;
    case WARREN__FIELD_U16:
        return a->value.u16 == b->value.u16;
    case WARREN__FIELD_I32:
        return a->value.i32 == b->value.i32;
    case WARREN__FIELD_U32:
        return a->value.u32 == b->value.u32;
    default: /* i64, u64, timestamp */
        return a->value.u64 == b->value.u64;
    }
}

static const uint8_t binary_body[] = {0x00, 0xff, 0xfe, 0x80, 'a',
                                      0x00, 0xc3, 0x28, 0x01, 0x7f};

/* Every kind rabbitmq-c knows, including nesting and a non-UTF-8 key. */
static void build_all_kinds(warren__table_entry *e, int *n, warren__field *arr,
                            warren__table_entry *inner) {
    int i = 0;
#define KV(k, kindv) (e[i].key = warren__cstr_bytes(k), e[i].value.kind = kindv)
    KV("bool", WARREN__FIELD_BOOLEAN);
    e[i++].value.value.boolean = 1;
    KV("i8", WARREN__FIELD_I8);
    e[i++].value.value.i8 = -128;
    KV("u8", WARREN__FIELD_U8);
    e[i++].value.value.u8 = 255;
    KV("i16", WARREN__FIELD_I16);
    e[i++].value.value.i16 = -32768;
    KV("u16", WARREN__FIELD_U16);
    e[i++].value.value.u16 = 65535;
    KV("i32", WARREN__FIELD_I32);
    e[i++].value.value.i32 = INT32_MIN;
    KV("u32", WARREN__FIELD_U32);
    e[i++].value.value.u32 = UINT32_MAX;
    KV("i64", WARREN__FIELD_I64);
    e[i++].value.value.i64 = INT64_MIN + 1;
    KV("u64", WARREN__FIELD_U64);
    e[i++].value.value.u64 = UINT64_MAX;
    KV("ts", WARREN__FIELD_TIMESTAMP);
    e[i++].value.value.u64 = 1795669200;
    KV("f32", WARREN__FIELD_F32);
    e[i++].value.value.f32 = 0.1f;
    KV("f64", WARREN__FIELD_F64);
    e[i++].value.value.f64 = 0.1 + 0.2;
    KV("inf", WARREN__FIELD_F64);
    e[i++].value.value.f64 = -INFINITY;
    KV("dec", WARREN__FIELD_DECIMAL);
    e[i].value.value.decimal.decimals = 2;
    e[i++].value.value.decimal.value = 12345;
    KV("str", WARREN__FIELD_UTF8);
    e[i++].value.value.bytes = warren__cstr_bytes("h\xc3\xa9llo \"q\" \n");
    KV("bin", WARREN__FIELD_BYTES);
    e[i++].value.value.bytes =
        (warren__bytes){sizeof binary_body, (void *)binary_body};
    KV("void", WARREN__FIELD_VOID);
    i++;
    arr[0].kind = WARREN__FIELD_I32;
    arr[0].value.i32 = 7;
    arr[1].kind = WARREN__FIELD_UTF8;
    arr[1].value.bytes = warren__cstr_bytes("x");
    KV("arr", WARREN__FIELD_ARRAY);
    e[i].value.value.array.num_entries = 2;
    e[i++].value.value.array.entries = arr;
    inner[0].key = warren__cstr_bytes("deep");
    inner[0].value.kind = WARREN__FIELD_ARRAY;
    inner[0].value.value.array.num_entries = 1;
    inner[0].value.value.array.entries = arr;
    KV("tbl", WARREN__FIELD_TABLE);
    e[i].value.value.table.num_entries = 1;
    e[i++].value.value.table.entries = inner;
    e[i].key = (warren__bytes){2, (void *)"\xff\xfe"};
    e[i].value.kind = WARREN__FIELD_UTF8;
    e[i++].value.value.bytes = ((warren__bytes){0, NULL});
    KV("str", WARREN__FIELD_I8); /* duplicate key: order kept */
    e[i++].value.value.i8 = 1;
#undef KV
    *n = i;
}

static void roundtrip(const warren__props *p, const void *body, size_t len) {
    cJSON *j = warren__dlq_to_json(p, body, len);
    assert_non_null(j);
    char *line = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    assert_null(strchr(line, '\n')); /* one line per message */
    warren__arena pool;
    warren__props q;
    uint8_t *b;
    size_t blen;
    char err[256];
    warren__arena_init(&pool, 4096);
    assert_int_equal(warren__dlq_from_json(line, strlen(line), &pool, &q, &b,
                                           &blen, err, sizeof err),
                     0);
    assert_int_equal(q.flags, p->flags);
    assert_int_equal(blen, len);
    if (len) {
        assert_memory_equal(b, body, len);
    }
    if (p->flags & WARREN__PROP_HEADERS) {
        assert_true(table_equal(&p->headers, &q.headers));
    }
    if (p->flags & WARREN__PROP_MESSAGE_ID) {
        assert_int_equal(q.message_id.len, p->message_id.len);
        assert_memory_equal(q.message_id.bytes, p->message_id.bytes,
                            p->message_id.len);
    }
    if (p->flags & WARREN__PROP_CORRELATION_ID) {
        assert_int_equal(q.correlation_id.len, p->correlation_id.len);
        assert_memory_equal(q.correlation_id.bytes, p->correlation_id.bytes,
                            p->correlation_id.len);
    }
    assert_int_equal(q.timestamp, p->timestamp);
    assert_int_equal(q.priority, p->priority);
    assert_int_equal(q.delivery_mode, p->delivery_mode);
    free(b);
    cJSON_free(line);
    warren__arena_empty(&pool);
}

static void
test_jsonl_round_trip_keeps_every_header_kind_and_binary_body(void **state) {
    (void)state;
    warren__table_entry e[32], inner[1];
    warren__field arr[2];
    int n;
    build_all_kinds(e, &n, arr, inner);
    warren__props p;
    memset(&p, 0, sizeof p);
    p.flags = WARREN__PROP_HEADERS | WARREN__PROP_CONTENT_TYPE |
              WARREN__PROP_CONTENT_ENCODING | WARREN__PROP_DELIVERY_MODE |
              WARREN__PROP_PRIORITY | WARREN__PROP_CORRELATION_ID |
              WARREN__PROP_REPLY_TO | WARREN__PROP_EXPIRATION |
              WARREN__PROP_MESSAGE_ID | WARREN__PROP_TIMESTAMP |
              WARREN__PROP_TYPE | WARREN__PROP_USER_ID | WARREN__PROP_APP_ID |
              WARREN__PROP_CLUSTER_ID;
    p.content_type = warren__cstr_bytes("application/octet-stream");
    p.content_encoding = warren__cstr_bytes("gzip");
    p.delivery_mode = 2;
    p.priority = 9;
    p.correlation_id = (warren__bytes){3, (void *)"\x80\x81\x82"};
    p.reply_to = warren__cstr_bytes("replies");
    p.expiration = warren__cstr_bytes("60000");
    p.message_id = warren__cstr_bytes("order-\xe2\x82\xac-1");
    p.timestamp = UINT64_MAX;
    p.type = warren__cstr_bytes("order.created");
    p.user_id = warren__cstr_bytes("guest");
    p.app_id = warren__cstr_bytes("shop");
    p.cluster_id = warren__cstr_bytes("");
    p.headers.num_entries = n;
    p.headers.entries = e;
    roundtrip(&p, binary_body, sizeof binary_body);
    roundtrip(&p, "{\"text\": \"caf\xc3\xa9\"}", 17);
    roundtrip(&p, "", 0);
    memset(&p, 0, sizeof p); /* no properties at all */
    roundtrip(&p, "x", 1);
}

static void test_base64_is_strict(void **state) {
    (void)state;
    uint8_t *out;
    size_t len;
    char *enc;
    assert_int_equal(warren__base64_encode("ab", 2, &enc), 0);
    assert_string_equal(enc, "YWI=");
    assert_int_equal(warren__base64_decode(enc, 4, &out, &len), 0);
    assert_int_equal(len, 2);
    assert_memory_equal(out, "ab", 2);
    free(out);
    free(enc);
    const char *bad[] = {"YWI", "YW=I", "Y!I=", "YWI=YWI=", "===="};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(
            warren__base64_decode(bad[i], strlen(bad[i]), &out, &len),
            WARREN_ERR_INVAL);
    }
}

static void test_malformed_lines_say_what_is_wrong(void **state) {
    (void)state;
    static const struct {
        const char *line, *want;
    } cases[] = {
        {"{\"v\":1,\"body\":", "not valid JSON"},
        {"[1,2]", "expected a JSON object"},
        {"{\"body\":\"x\"}", "\"v\""},
        {"{\"v\":1}", "\"body\" missing"},
        {"{\"v\":1,\"body\":{\"base64\":\"@@@@\"}}", "not valid base64"},
        {"{\"v\":1,\"body\":7}", "body: expected a string"},
        {"{\"v\":1,\"properties\":{\"colour\":\"red\"},\"body\":\"\"}",
         "unknown property"},
        {"{\"v\":1,\"properties\":{\"priority\":300},\"body\":\"\"}",
         "properties.priority"},
        {"{\"v\":1,\"headers\":[{\"name\":\"a\",\"kind\":\"i8\",\"value\":"
         "200}],\"body\":\"\"}",
         "headers \"a\""},
        {"{\"v\":1,\"headers\":[{\"name\":\"a\",\"kind\":\"blob\",\"value\":"
         "1}],\"body\":\"\"}",
         "unknown kind 'blob'"},
        {"{\"v\":1,\"headers\":[{\"name\":\"a\",\"kind\":\"i64\",\"value\":"
         "\"12x\"}],\"body\":\"\"}",
         "not a 64-bit integer"},
        {"{\"v\":1,\"headers\":{\"a\":1},\"body\":\"\"}", "expected an array"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        warren__arena pool;
        warren__props p;
        uint8_t *b;
        size_t blen;
        char err[256] = "";
        warren__arena_init(&pool, 1024);
        int rc = warren__dlq_from_json(cases[i].line, strlen(cases[i].line),
                                       &pool, &p, &b, &blen, err, sizeof err);
        if (rc != WARREN_ERR_INVAL || strstr(err, cases[i].want) == NULL) {
            fail_msg("case %zu (%s): rc %d, err '%s', wanted '%s'", i,
                     cases[i].line, rc, err, cases[i].want);
        }
        assert_null(b);
        warren__arena_empty(&pool);
    }
}

/* A letter the broker dead-lettered itself: its reason, queue, count and
 * time come from the first (most recent) x-death table. */
static void test_broker_dead_letter_is_described_from_x_death(void **state) {
    (void)state;
    warren__field rk[1];
    rk[0].kind = WARREN__FIELD_UTF8;
    rk[0].value.bytes = warren__cstr_bytes("orders.created");
    warren__table_entry d1[6], d0[3], h[2];
#define KV(a, i, k, kd) (a[i].key = warren__cstr_bytes(k), a[i].value.kind = kd)
    KV(d1, 0, "count", WARREN__FIELD_I64);
    d1[0].value.value.i64 = 3;
    KV(d1, 1, "reason", WARREN__FIELD_UTF8);
    d1[1].value.value.bytes = warren__cstr_bytes("delivery_limit");
    KV(d1, 2, "queue", WARREN__FIELD_UTF8);
    d1[2].value.value.bytes = warren__cstr_bytes("orders");
    KV(d1, 3, "time", WARREN__FIELD_TIMESTAMP);
    d1[3].value.value.u64 = 1795669200;
    KV(d1, 4, "exchange", WARREN__FIELD_UTF8);
    d1[4].value.value.bytes = warren__cstr_bytes("shop");
    KV(d1, 5, "routing-keys", WARREN__FIELD_ARRAY);
    d1[5].value.value.array = (warren__array){1, rk};
    /* An older death (e.g. a TTL on the way back): not the one shown. */
    KV(d0, 0, "count", WARREN__FIELD_I64);
    d0[0].value.value.i64 = 1;
    KV(d0, 1, "reason", WARREN__FIELD_UTF8);
    d0[1].value.value.bytes = warren__cstr_bytes("expired");
    KV(d0, 2, "queue", WARREN__FIELD_UTF8);
    d0[2].value.value.bytes = warren__cstr_bytes("orders.retry");
    warren__field deaths[2];
    deaths[0].kind = WARREN__FIELD_TABLE;
    deaths[0].value.table = (warren__table){6, d1};
    deaths[1].kind = WARREN__FIELD_TABLE;
    deaths[1].value.table = (warren__table){3, d0};
    KV(h, 0, "x-death", WARREN__FIELD_ARRAY);
    h[0].value.value.array = (warren__array){2, deaths};
    KV(h, 1, "x-warren-error", WARREN__FIELD_UTF8);
    h[1].value.value.bytes = warren__cstr_bytes("stock service said 503");
#undef KV
    warren__table headers = {1, h};
    warren__consumer_cfg c;
    memset(&c, 0, sizeof c);
    c.queue = "orders";
    struct warren_msg m;
    memset(&m, 0, sizeof m);
    m.headers = &headers;
    m.message_id_prop = "o-1";
    warren__dlq_entry e;
    warren__dlq_entry_fill(&e, &c, &m);
    assert_string_equal(e.error, "broker: delivery_limit in queue orders "
                                 "(dead-lettered 3 times)");
    assert_int_equal(e.dead_at_ms, 1795669200LL * 1000);
    assert_string_equal(e.exchange, "shop");
    assert_string_equal(e.routing_key, "orders.created");
    assert_string_equal(e.queue, "orders"); /* replay target unchanged */
    assert_string_equal(e.id, "o-1");
    warren__dlq_filter f;
    warren__dlq_filter_init(&f);
    f.error_sub = "delivery_limit";
    assert_true(warren__dlq_filter_match(&f, &e));

    /* A retried message the broker then dead-lettered: its last handler
     * error is kept after the broker's reason. */
    headers.num_entries = 2;
    warren__dlq_entry_fill(&e, &c, &m);
    assert_string_equal(e.error, "broker: delivery_limit in queue orders "
                                 "(dead-lettered 3 times); last error: stock "
                                 "service said 503");

    /* A letter warren dead-lettered (x-warren-dead-at) keeps its own
     * fields even when it also carries an x-death from its retries. */
    warren__table_entry w[3];
    w[0] = h[0];
    w[1] = h[1];
    w[2].key = warren__cstr_bytes("x-warren-dead-at");
    w[2].value.kind = WARREN__FIELD_I64;
    w[2].value.value.i64 = 42;
    warren__table wh = {3, w};
    m.headers = &wh;
    warren__dlq_entry_fill(&e, &c, &m);
    assert_string_equal(e.error, "stock service said 503");
    assert_int_equal(e.dead_at_ms, 42);
    assert_string_equal(e.routing_key, "");

    /* No x-death and no warren headers: blank, as before. */
    warren__table none = {0, NULL};
    m.headers = &none;
    warren__dlq_entry_fill(&e, &c, &m);
    assert_string_equal(e.error, "");
    assert_int_equal(e.dead_at_ms, 0);
}

/* The replay generation goes up by one, and saturates rather than wrap
 * (a wrapped, negative one would read as 0 and never re-run a dead id). */
static void test_replay_generation_saturates(void **state) {
    (void)state;
    warren__table_entry e[1];
    e[0].key = warren__cstr_bytes("x-warren-replays");
    e[0].value.kind = WARREN__FIELD_I64;
    e[0].value.value.i64 = INT64_MAX;
    warren__table in = {1, e}, out;
    warren__arena pool;
    warren__arena_init(&pool, 1024);
    assert_int_equal(warren__dlq_replay_headers(&in, 1, 0, &pool, &out), 0);
    struct warren_msg m = {.headers = &out};
    int64_t v = 0;
    assert_int_equal(warren_msg_header_int(&m, "x-warren-replays", &v), 0);
    assert_true(v == INT64_MAX);
    e[0].value.value.i64 = 41;
    assert_int_equal(warren__dlq_replay_headers(&in, 1, 0, &pool, &out), 0);
    assert_int_equal(warren_msg_header_int(&m, "x-warren-replays", &v), 0);
    assert_int_equal(v, 42);
    warren__arena_empty(&pool);
}

/* A body over the read limit: its announced size, marked unread. */
static void test_unread_body_keeps_its_announced_size(void **state) {
    (void)state;
    warren__table none = {0, NULL};
    warren__consumer_cfg c;
    memset(&c, 0, sizeof c);
    c.queue = "orders";
    struct warren_msg m;
    memset(&m, 0, sizeof m);
    m.headers = &none;
    m.body = (const uint8_t *)"";
    m.body_size_announced = 300000000;
    warren__dlq_entry e;
    warren__dlq_entry_fill(&e, &c, &m);
    assert_int_equal(e.body_len, 300000000);
    assert_true(e.body_unread);
    m.body = (const uint8_t *)"abc";
    m.body_len = 3;
    m.body_size_announced = 3;
    warren__dlq_entry_fill(&e, &c, &m);
    assert_int_equal(e.body_len, 3);
    assert_false(e.body_unread);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations_parse_each_unit_and_refuse_junk),
        cmocka_unit_test(test_iso8601_times_with_zones_and_relative_times),
        cmocka_unit_test(test_filter_criteria_all_must_hold),
        cmocka_unit_test(test_bad_regex_is_reported_with_regerror_text),
        cmocka_unit_test(
            test_replay_moves_failure_headers_to_history_and_counts_replays),
        cmocka_unit_test(
            test_jsonl_round_trip_keeps_every_header_kind_and_binary_body),
        cmocka_unit_test(test_base64_is_strict),
        cmocka_unit_test(test_malformed_lines_say_what_is_wrong),
        cmocka_unit_test(test_broker_dead_letter_is_described_from_x_death),
        cmocka_unit_test(test_unread_body_keeps_its_announced_size),
        cmocka_unit_test(test_replay_generation_saturates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

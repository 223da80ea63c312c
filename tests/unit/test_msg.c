/*
 * test_msg.c - the handler's message view: every AMQP header kind maps to
 * the documented warren_hdr_type and reads back through the matching typed
 * accessor, absent headers and wrong-type lookups return the documented
 * errors, and the body pointer is never NULL.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <string.h>

#include "msg.h"

enum { N_ENTRIES = 20 };

static warren__table_entry entries[N_ENTRIES];
static warren__table table;
static struct warren_msg msg;

static void put(int i, const char *key, uint8_t kind) {
    entries[i].key = warren__cstr_bytes(key);
    entries[i].value.kind = kind;
}

static int setup(void **state) {
    (void)state;
    memset(entries, 0, sizeof entries);
    put(0, "i8", WARREN__FIELD_I8);
    entries[0].value.value.i8 = -8;
    put(1, "u8", WARREN__FIELD_U8);
    entries[1].value.value.u8 = 200;
    put(2, "i16", WARREN__FIELD_I16);
    entries[2].value.value.i16 = -30000;
    put(3, "u16", WARREN__FIELD_U16);
    entries[3].value.value.u16 = 60000;
    put(4, "i32", WARREN__FIELD_I32);
    entries[4].value.value.i32 = INT32_MIN;
    put(5, "u32", WARREN__FIELD_U32);
    entries[5].value.value.u32 = UINT32_MAX;
    put(6, "i64", WARREN__FIELD_I64);
    entries[6].value.value.i64 = INT64_MIN;
    put(7, "u64", WARREN__FIELD_U64);
    entries[7].value.value.u64 = (uint64_t)INT64_MAX;
    put(8, "u64big", WARREN__FIELD_U64);
    entries[8].value.value.u64 = (uint64_t)INT64_MAX + 1;
    put(9, "f32", WARREN__FIELD_F32);
    entries[9].value.value.f32 = 1.5f;
    put(10, "f64", WARREN__FIELD_F64);
    entries[10].value.value.f64 = -2.25;
    put(11, "bool", WARREN__FIELD_BOOLEAN);
    entries[11].value.value.boolean = 1;
    put(12, "ts", WARREN__FIELD_TIMESTAMP);
    entries[12].value.value.u64 = 1700000000;
    put(13, "str", WARREN__FIELD_UTF8);
    entries[13].value.value.bytes = warren__cstr_bytes("hello");
    put(14, "bytes", WARREN__FIELD_BYTES);
    entries[14].value.value.bytes = (warren__bytes){3, (void *)"a\0b"};
    put(15, "table", WARREN__FIELD_TABLE);
    put(16, "array", WARREN__FIELD_ARRAY);
    put(17, "decimal", WARREN__FIELD_DECIMAL);
    put(18, "void", WARREN__FIELD_VOID);
    put(19, "emptystr", WARREN__FIELD_UTF8);
    entries[19].value.value.bytes = (warren__bytes){0, NULL};
    table = (warren__table){N_ENTRIES, entries};
    memset(&msg, 0, sizeof msg);
    msg.headers = &table;
    msg.body = (const uint8_t *)"payload";
    msg.body_len = 7;
    msg.queue = "orders";
    msg.exchange = "";
    msg.routing_key = "orders";
    msg.content_type = "application/json";
    msg.id = "id-1";
    msg.attempt = 3;
    msg.redelivered = 1;
    return 0;
}

static void test_integer_kinds_read_as_int(void **state) {
    static const struct {
        const char *name;
        int64_t want;
    } cases[] = {{"i8", -8},         {"u8", 200},        {"i16", -30000},
                 {"u16", 60000},     {"i32", INT32_MIN}, {"u32", UINT32_MAX},
                 {"i64", INT64_MIN}, {"u64", INT64_MAX}};
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t v = 0;
        assert_int_equal(warren_msg_header_type(&msg, cases[i].name),
                         WARREN_HDR_INT);
        assert_int_equal(warren_msg_header_int(&msg, cases[i].name, &v), 0);
        assert_true(v == cases[i].want);
    }
}

static void test_u64_above_int64_max_is_other_and_not_int(void **state) {
    int64_t v = 0;
    (void)state;
    assert_int_equal(warren_msg_header_type(&msg, "u64big"), WARREN_HDR_OTHER);
    assert_int_equal(warren_msg_header_int(&msg, "u64big", &v),
                     WARREN_ERR_INVAL);
}

static void test_float_and_double_read_as_double(void **state) {
    double d = 0;
    (void)state;
    assert_int_equal(warren_msg_header_type(&msg, "f32"), WARREN_HDR_DOUBLE);
    assert_int_equal(warren_msg_header_double(&msg, "f32", &d), 0);
    assert_true(d == 1.5);
    assert_int_equal(warren_msg_header_type(&msg, "f64"), WARREN_HDR_DOUBLE);
    assert_int_equal(warren_msg_header_double(&msg, "f64", &d), 0);
    assert_true(d == -2.25);
}

static void test_bool_and_timestamp_read_back(void **state) {
    int b = 0;
    int64_t ts = 0;
    (void)state;
    assert_int_equal(warren_msg_header_type(&msg, "bool"), WARREN_HDR_BOOL);
    assert_int_equal(warren_msg_header_bool(&msg, "bool", &b), 0);
    assert_int_equal(b, 1);
    assert_int_equal(warren_msg_header_type(&msg, "ts"), WARREN_HDR_TIMESTAMP);
    assert_int_equal(warren_msg_header_int(&msg, "ts", &ts), 0);
    assert_true(ts == 1700000000);
}

static void test_string_and_bytes_read_with_length(void **state) {
    const char *v = NULL;
    size_t len = 0;
    (void)state;
    assert_int_equal(warren_msg_header_type(&msg, "str"), WARREN_HDR_STRING);
    assert_int_equal(warren_msg_header_str(&msg, "str", &v, &len), 0);
    assert_int_equal(len, 5);
    assert_memory_equal(v, "hello", 5);
    assert_int_equal(warren_msg_header_type(&msg, "bytes"), WARREN_HDR_BYTES);
    assert_int_equal(warren_msg_header_str(&msg, "bytes", &v, &len), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(v, "a\0b", 3);
    assert_int_equal(warren_msg_header_str(&msg, "emptystr", &v, &len), 0);
    assert_non_null(v);
    assert_int_equal(len, 0);
}

static void test_table_array_decimal_void_are_other(void **state) {
    static const char *names[] = {"table", "array", "decimal", "void"};
    (void)state;
    for (size_t i = 0; i < 4; i++) {
        const char *v;
        size_t len;
        int64_t n;
        assert_int_equal(warren_msg_header_type(&msg, names[i]),
                         WARREN_HDR_OTHER);
        assert_int_equal(warren_msg_header_str(&msg, names[i], &v, &len),
                         WARREN_ERR_INVAL);
        assert_int_equal(warren_msg_header_int(&msg, names[i], &n),
                         WARREN_ERR_INVAL);
    }
}

static void test_absent_header_is_none_and_not_found(void **state) {
    const char *v;
    size_t len;
    int64_t n;
    double d;
    int b;
    (void)state;
    assert_int_equal(warren_msg_header_type(&msg, "nope"), WARREN_HDR_NONE);
    assert_int_equal(warren_msg_header_str(&msg, "nope", &v, &len),
                     WARREN_ERR_NOT_FOUND);
    assert_int_equal(warren_msg_header_int(&msg, "nope", &n),
                     WARREN_ERR_NOT_FOUND);
    assert_int_equal(warren_msg_header_double(&msg, "nope", &d),
                     WARREN_ERR_NOT_FOUND);
    assert_int_equal(warren_msg_header_bool(&msg, "nope", &b),
                     WARREN_ERR_NOT_FOUND);
    /* A prefix of a key is not the key, nor is a differently-cased one. */
    assert_int_equal(warren_msg_header_type(&msg, "i"), WARREN_HDR_NONE);
    assert_int_equal(warren_msg_header_type(&msg, "STR"), WARREN_HDR_NONE);
}

static void test_wrong_type_lookups_return_inval(void **state) {
    const char *v;
    size_t len;
    int64_t n;
    double d;
    int b;
    (void)state;
    assert_int_equal(warren_msg_header_str(&msg, "i32", &v, &len),
                     WARREN_ERR_INVAL);
    assert_int_equal(warren_msg_header_int(&msg, "str", &n), WARREN_ERR_INVAL);
    assert_int_equal(warren_msg_header_int(&msg, "f64", &n), WARREN_ERR_INVAL);
    assert_int_equal(warren_msg_header_double(&msg, "i32", &d),
                     WARREN_ERR_INVAL);
    assert_int_equal(warren_msg_header_bool(&msg, "i8", &b), WARREN_ERR_INVAL);
}

static void test_table_find_returns_value_or_null(void **state) {
    (void)state;
    const warren__field *v = warren__table_find(&table, "str");
    assert_non_null(v);
    assert_int_equal(v->kind, WARREN__FIELD_UTF8);
    assert_null(warren__table_find(&table, "missing"));
    assert_null(warren__table_find(NULL, "str"));
    warren__table empty = {0, NULL};
    assert_null(warren__table_find(&empty, "str"));
}

static void test_properties_and_body_read_back(void **state) {
    size_t len = 99;
    (void)state;
    assert_memory_equal(warren_msg_body(&msg, &len), "payload", 7);
    assert_int_equal(len, 7);
    assert_string_equal(warren_msg_queue(&msg), "orders");
    assert_string_equal(warren_msg_exchange(&msg), "");
    assert_string_equal(warren_msg_routing_key(&msg), "orders");
    assert_string_equal(warren_msg_content_type(&msg), "application/json");
    assert_null(warren_msg_correlation_id(&msg));
    assert_string_equal(warren_msg_id(&msg), "id-1");
    assert_int_equal(warren_msg_attempt(&msg), 3);
    assert_int_equal(warren_msg_redelivered(&msg), 1);
}

static void test_body_is_never_null(void **state) {
    size_t len = 99;
    (void)state;
    struct warren_msg empty = msg;
    empty.body = NULL;
    empty.body_len = 0;
    assert_non_null(warren_msg_body(&empty, &len));
    assert_int_equal(len, 0);
    len = 99;
    assert_non_null(warren_msg_body(NULL, &len));
    assert_int_equal(len, 0);
}

static void test_null_message_is_safe(void **state) {
    int64_t n;
    (void)state;
    assert_null(warren_msg_id(NULL));
    assert_null(warren_msg_queue(NULL));
    assert_int_equal(warren_msg_attempt(NULL), 0);
    assert_int_equal(warren_msg_header_type(NULL, "str"), WARREN_HDR_NONE);
    assert_int_equal(warren_msg_header_int(NULL, "i8", &n),
                     WARREN_ERR_NOT_FOUND);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_integer_kinds_read_as_int, setup),
        cmocka_unit_test_setup(test_u64_above_int64_max_is_other_and_not_int,
                               setup),
        cmocka_unit_test_setup(test_float_and_double_read_as_double, setup),
        cmocka_unit_test_setup(test_bool_and_timestamp_read_back, setup),
        cmocka_unit_test_setup(test_string_and_bytes_read_with_length, setup),
        cmocka_unit_test_setup(test_table_array_decimal_void_are_other, setup),
        cmocka_unit_test_setup(test_absent_header_is_none_and_not_found, setup),
        cmocka_unit_test_setup(test_wrong_type_lookups_return_inval, setup),
        cmocka_unit_test_setup(test_table_find_returns_value_or_null, setup),
        cmocka_unit_test_setup(test_properties_and_body_read_back, setup),
        cmocka_unit_test_setup(test_body_is_never_null, setup),
        cmocka_unit_test_setup(test_null_message_is_safe, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

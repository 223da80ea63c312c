/*
 * test_msgid.c - the dedup id policies: each source ("property",
 * "header:NAME", "json:PATH", "sha256") yields the id as sent, and each
 * missing or unusable id (absent, empty, too long, invalid UTF-8, NUL
 * inside, wrong JSON type, malformed or hostile JSON) follows
 * "on_missing_id" with a reason, never a truncated id.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "msgid.h"

#define SHA_ABC                                                                \
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA_EMPTY                                                              \
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static warren__consumer_cfg cfg;
static struct warren_msg msg;
static warren__table_entry entries[4];
static warren__table table;
static char out[WARREN__ID_MAX + 1];
static char why[512];

static int setup(void **state) {
    (void)state;
    memset(&cfg, 0, sizeof cfg);
    cfg.queue = "orders";
    cfg.id_source = WARREN__ID_PROPERTY;
    cfg.on_missing_id = WARREN__MISSING_DEAD;
    memset(&msg, 0, sizeof msg);
    memset(entries, 0, sizeof entries);
    table = (warren__table){0, entries};
    msg.headers = &table;
    msg.body = (const uint8_t *)"abc";
    msg.body_len = 3;
    memset(out, 'x', sizeof out);
    why[0] = '\0';
    return 0;
}

static void set_body(const char *s) {
    msg.body = (const uint8_t *)s;
    msg.body_len = strlen(s);
}

static void add_str_header(const char *key, const void *val, size_t len) {
    warren__table_entry *e = &entries[table.num_entries++];
    e->key = warren__cstr_bytes(key);
    e->value.kind = WARREN__FIELD_UTF8;
    e->value.value.bytes = (warren__bytes){len, (void *)val};
}

static warren__id_verdict run(void) {
    return warren__msgid_extract(&cfg, &msg, out, why, sizeof why);
}

static void test_property_id_is_used_as_sent(void **state) {
    (void)state;
    msg.message_id_prop = "order-42";
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "order-42");
}

static void test_missing_property_rejects_naming_policy(void **state) {
    (void)state;
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "property"));
    assert_non_null(strstr(why, "no message_id property"));
}

static void test_empty_id_is_unusable(void **state) {
    (void)state;
    msg.message_id_prop = "";
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "empty"));
}

static void
test_256_byte_id_is_used_and_257_rejected_untruncated(void **state) {
    char id[WARREN__ID_MAX + 2];
    (void)state;
    memset(id, 'a', WARREN__ID_MAX);
    id[WARREN__ID_MAX] = '\0';
    msg.message_id_prop = id;
    assert_int_equal(run(), WARREN__ID_USE);
    assert_int_equal(strlen(out), WARREN__ID_MAX);
    id[WARREN__ID_MAX] = 'a';
    id[WARREN__ID_MAX + 1] = '\0';
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_string_equal(out, "");
    assert_non_null(strstr(why, "257 bytes"));
}

static void test_invalid_utf8_id_is_unusable(void **state) {
    (void)state;
    msg.message_id_prop = "bad\xC3\x28";
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "UTF-8"));
}

static void test_nul_inside_header_id_is_unusable(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_HEADER;
    cfg.id_arg = "x-id";
    add_str_header("x-id", "ab\0cd", 5);
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "x-id"));
}

static void test_header_string_id_is_used(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_HEADER;
    cfg.id_arg = "x-id";
    add_str_header("x-id", "h-7", 3);
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "h-7");
}

static void test_header_integer_id_is_formatted_decimal(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_HEADER;
    cfg.id_arg = "x-id";
    warren__table_entry *e = &entries[table.num_entries++];
    e->key = warren__cstr_bytes("x-id");
    e->value.kind = WARREN__FIELD_I64;
    e->value.value.i64 = -1234567890123LL;
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "-1234567890123");
}

static void test_header_missing_or_wrong_type_is_unusable(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_HEADER;
    cfg.id_arg = "x-id";
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "no header 'x-id'"));
    warren__table_entry *e = &entries[table.num_entries++];
    e->key = warren__cstr_bytes("x-id");
    e->value.kind = WARREN__FIELD_F64;
    e->value.value.f64 = 1.5;
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "not a string or integer"));
}

static void test_json_nested_path_string_is_used(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_JSON;
    cfg.id_arg = "order.id";
    set_body("{\"order\": {\"id\": \"o-9\", \"n\": 1}}");
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "o-9");
}

static void test_json_integer_id_is_used_in_decimal(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_JSON;
    cfg.id_arg = "id";
    set_body("{\"id\": 9007199254740992}");
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "9007199254740992");
    set_body("{\"id\": -17}");
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "-17");
}

static void test_json_string_id_with_escaped_nul_is_unusable(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_JSON;
    cfg.id_arg = "id";
    /* cJSON decodes \u0000 into its C string, which then ends there: the
     * id would be "A" and collide with a real "A". */
    set_body("{\"id\": \"A\\u0000B\"}");
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "NUL"));
    /* A raw NUL byte inside the string is refused the same way. */
    static const char raw[] = "{\"id\": \"A\0B\"}";
    msg.body = (const uint8_t *)raw;
    msg.body_len = sizeof raw - 1;
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "NUL"));
    /* An escaped backslash followed by "u0000" is six ordinary
     * characters, not a NUL. */
    set_body("{\"id\": \"A\\\\u0000B\"}");
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "A\\u0000B");
    /* The escape is only refused in the id, not elsewhere in the body. */
    set_body("{\"note\": \"x\\u0000\", \"id\": \"ok\"}");
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "ok");
}

static void test_json_integers_above_2_53_keep_exact_digits(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_JSON;
    cfg.id_arg = "order.id";
    /* As doubles both are 2^53: as ids they must stay two ids. */
    set_body("{\"order\": {\"id\": 9007199254740993}}");
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "9007199254740993");
    set_body("{\"order\": {\"id\": 9007199254740992}}");
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "9007199254740992");
    set_body("{\"order\": {\"id\": -123456789012345678901234567890}}");
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "-123456789012345678901234567890");
    /* Forms whose digits are not the integer itself are refused rather
     * than rounded: 9007199254740993.0 would also become 2^53. */
    static const char *const inexact[] = {
        "{\"order\": {\"id\": 9007199254740993.0}}",
        "{\"order\": {\"id\": 1e3}}",
        "{\"order\": {\"id\": 007}}",
    };
    for (size_t i = 0; i < sizeof inexact / sizeof inexact[0]; i++) {
        set_body(inexact[i]);
        assert_int_equal(run(), WARREN__ID_REJECT);
        assert_non_null(strstr(why, "not an integer"));
    }
}

static void test_json_id_lookup_matches_parser_on_keys(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_JSON;
    cfg.id_arg = "a.id";
    /* The first of duplicate keys wins, escaped keys match their decoded
     * name, and look-alike keys inside strings or skipped values do not
     * match. */
    set_body("{\"x\": \"{\\\"a\\\": {\\\"id\\\": 1}}\", \"b\": [{\"a\": 2}],"
             " \"\\u0061\": {\"id\": 12345678901234567890, \"id\": 7},"
             " \"a\": {\"id\": 8}}");
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, "12345678901234567890");
}

static void test_json_float_object_and_missing_path_are_unusable(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_JSON;
    cfg.id_arg = "order.id";
    set_body("{\"order\": {\"id\": 1.5}}");
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "not an integer"));
    set_body("{\"order\": {\"id\": {\"x\": 1}}}");
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "not a string or integer"));
    set_body("{\"order\": {\"other\": 1}}");
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "not found"));
    set_body("{\"order\": 5}");
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "not an object"));
}

static void test_json_body_not_object_or_malformed_is_unusable(void **state) {
    (void)state;
    cfg.id_source = WARREN__ID_JSON;
    cfg.id_arg = "id";
    set_body("[1, 2]");
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "not a JSON object"));
    set_body("{\"id\": ");
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "not valid JSON"));
    set_body("");
    assert_int_equal(run(), WARREN__ID_REJECT);
}

static void
test_json_nested_10000_levels_is_refused_without_crash(void **state) {
    enum { DEPTH = 10000 };
    (void)state;
    char *body = malloc(DEPTH * 6 + DEPTH + 2);
    assert_non_null(body);
    size_t o = 0;
    for (int i = 0; i < DEPTH; i++) {
        memcpy(body + o, "{\"a\":", 5);
        o += 5;
    }
    body[o++] = '1';
    memset(body + o, '}', DEPTH);
    o += DEPTH;
    body[o] = '\0';
    cfg.id_source = WARREN__ID_JSON;
    cfg.id_arg = "a.a";
    set_body(body);
    assert_int_equal(run(), WARREN__ID_REJECT);
    assert_non_null(strstr(why, "nested too deeply"));
    free(body);
}

static void test_sha256_policy_hashes_body_known_vector(void **state) {
    char hex[65];
    (void)state;
    cfg.id_source = WARREN__ID_SHA256;
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, SHA_ABC);
    warren__sha256_hex("", 0, hex);
    assert_string_equal(hex, SHA_EMPTY);
    warren__sha256_hex(NULL, 0, hex);
    assert_string_equal(hex, SHA_EMPTY);
}

static void test_on_missing_hash_falls_back_to_sha256(void **state) {
    (void)state;
    cfg.on_missing_id = WARREN__MISSING_HASH;
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, SHA_ABC);
    msg.message_id_prop = "bad\xFF";
    assert_int_equal(run(), WARREN__ID_USE);
    assert_string_equal(out, SHA_ABC);
}

static void test_on_missing_process_runs_without_id_with_reason(void **state) {
    (void)state;
    cfg.on_missing_id = WARREN__MISSING_PROCESS;
    assert_int_equal(run(), WARREN__ID_NONE);
    assert_string_equal(out, "");
    assert_non_null(strstr(why, "no message_id property"));
}

static void test_utf8_validator_is_strict(void **state) {
    (void)state;
    assert_true(warren__utf8_valid("plain", 5));
    assert_true(warren__utf8_valid("\xC3\xA9", 2));         /* é */
    assert_true(warren__utf8_valid("\xE2\x82\xAC", 3));     /* € */
    assert_true(warren__utf8_valid("\xF0\x9F\x98\x80", 4)); /* emoji */
    assert_true(warren__utf8_valid("", 0));
    assert_false(warren__utf8_valid("a\0b", 3));             /* NUL */
    assert_false(warren__utf8_valid("\xC0\xAF", 2));         /* overlong */
    assert_false(warren__utf8_valid("\xE0\x80\xAF", 3));     /* overlong */
    assert_false(warren__utf8_valid("\xF0\x80\x80\xAF", 4)); /* overlong */
    assert_false(warren__utf8_valid("\xED\xA0\x80", 3));     /* surrogate */
    assert_false(warren__utf8_valid("\xF4\x90\x80\x80", 4)); /* > U+10FFFF */
    assert_false(warren__utf8_valid("\x80", 1));             /* stray cont. */
    assert_false(warren__utf8_valid("\xE2\x82", 2));         /* truncated */
    assert_false(warren__utf8_valid("\xFF", 1));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_property_id_is_used_as_sent, setup),
        cmocka_unit_test_setup(test_missing_property_rejects_naming_policy,
                               setup),
        cmocka_unit_test_setup(test_empty_id_is_unusable, setup),
        cmocka_unit_test_setup(
            test_256_byte_id_is_used_and_257_rejected_untruncated, setup),
        cmocka_unit_test_setup(test_invalid_utf8_id_is_unusable, setup),
        cmocka_unit_test_setup(test_nul_inside_header_id_is_unusable, setup),
        cmocka_unit_test_setup(test_header_string_id_is_used, setup),
        cmocka_unit_test_setup(test_header_integer_id_is_formatted_decimal,
                               setup),
        cmocka_unit_test_setup(test_header_missing_or_wrong_type_is_unusable,
                               setup),
        cmocka_unit_test_setup(test_json_nested_path_string_is_used, setup),
        cmocka_unit_test_setup(test_json_integer_id_is_used_in_decimal, setup),
        cmocka_unit_test_setup(test_json_string_id_with_escaped_nul_is_unusable,
                               setup),
        cmocka_unit_test_setup(test_json_integers_above_2_53_keep_exact_digits,
                               setup),
        cmocka_unit_test_setup(test_json_id_lookup_matches_parser_on_keys,
                               setup),
        cmocka_unit_test_setup(
            test_json_float_object_and_missing_path_are_unusable, setup),
        cmocka_unit_test_setup(
            test_json_body_not_object_or_malformed_is_unusable, setup),
        cmocka_unit_test_setup(
            test_json_nested_10000_levels_is_refused_without_crash, setup),
        cmocka_unit_test_setup(test_sha256_policy_hashes_body_known_vector,
                               setup),
        cmocka_unit_test_setup(test_on_missing_hash_falls_back_to_sha256,
                               setup),
        cmocka_unit_test_setup(
            test_on_missing_process_runs_without_id_with_reason, setup),
        cmocka_unit_test_setup(test_utf8_validator_is_strict, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

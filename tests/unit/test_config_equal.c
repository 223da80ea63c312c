/*
 * test_config_equal.c - the comparison a SIGHUP reload relies on
 * (warren__config_consumer_equal, warren__config_worker_globals_equal in
 * config.c): the same file parses equal; a change to any one consumer field
 * makes that consumer differ and leaves the other equal; a change to the
 * broker or store section makes the globals differ. The struct sizes are
 * pinned so that a field added to them without a comparison fails here.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config.h"

static warren_config *parse(const char *json) {
    char err[512] = "";
    warren_config *cfg = NULL;
    if (warren_config_parse(json, "t.json", &cfg, err, sizeof err) != 0) {
        fail_msg("%s: %s", json, err);
    }
    return cfg;
}

/* Two consumers ("a" changed by `a_extra`, "b" never) and top-level
 * sections `top` (ends with a comma, or empty). */
static warren_config *with(const char *top, const char *a_extra) {
    char json[4096];
    /* `a_extra` may name the handler itself. */
    const char *handler =
        strstr(a_extra, "\"handler\"") ? "" : "\"handler\": \"builtin:noop\"";
    snprintf(json, sizeof json,
             "{%s\"consumers\": [{\"queue\": \"a\"%s%s%s%s}, {\"queue\": "
             "\"b\", \"handler\": \"exec:/bin/true\"}]}",
             top, handler[0] ? ", " : "", handler, a_extra[0] ? ", " : "",
             a_extra);
    return parse(json);
}

static void test_struct_sizes_are_those_the_comparison_covers(void **state) {
    (void)state;
#if UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
    /* On a failure: compare the new field in config.c's
     * warren__config_consumer_equal / _worker_globals_equal (and add a
     * case below), then update the size here. */
    assert_int_equal(sizeof(warren__consumer_cfg), 248);
    assert_int_equal(sizeof(((warren_config *)0)->broker), 64);
    assert_int_equal(sizeof(((warren_config *)0)->store), 32);
#else
    skip();
#endif
}

static void test_each_consumer_field_change_is_seen(void **state) {
    (void)state;
    static const char *const changes[] = {
        "\"handler\": \"builtin:dead\"",
        "\"queue_type\": \"quorum\"",
        "\"prefetch\": 99",
        "\"workers\": 2",
        "\"batch_max\": 7",
        "\"message_id\": \"header:x-id\"",
        "\"message_id\": \"json:order.id\"",
        "\"on_missing_id\": \"hash\"",
        "\"dedup\": false",
        "\"max_deliveries\": 9",
        "\"queue_type\": \"quorum\", \"delivery_limit\": 50",
        "\"retry\": {\"max_attempts\": 3}",
        "\"retry\": {\"mode\": \"nack\", \"backoff\": {\"kind\": "
        "\"fixed\", \"delay_ms\": 5}}",
        "\"retry\": {\"jitter\": 0.5}",
        "\"retry\": {\"max_age_s\": 60}",
        "\"retry\": {\"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 5}}",
        "\"retry\": {\"backoff\": {\"kind\": \"exponential\", \"initial_ms\": "
        "7, \"multiplier\": 3, \"max_ms\": 9000}}",
        "\"retry\": {\"backoff\": {\"kind\": \"list\", \"delays_ms\": [1, 2]}}",
        "\"dead_letter\": {\"queue\": \"a.other\"}",
        "\"max_message_bytes\": 1000",
        "\"timeout_s\": 3",
        "\"breaker\": {\"consecutive_failures\": 5}",
        "\"breaker\": {\"failure_ratio\": 0.5}",
        "\"breaker\": {\"failure_ratio\": 0.5, \"window_s\": 9}",
        "\"breaker\": {\"consecutive_failures\": 5, \"open_s\": 9}",
        "\"breaker\": {\"consecutive_failures\": 5, \"half_open_max\": 3}",
        "\"rate_limit_per_s\": 10",
        "\"retry\": {\"jitter_style\": \"full\"}",
        "\"retry\": {\"budget\": {\"max_tokens\": 10}}",
        "\"retry\": {\"budget\": {\"max_tokens\": 10, \"token_ratio\": 0.5}}",
        "\"retry\": {\"budget\": {\"max_tokens\": 10, \"when_exhausted\": "
        "\"pause\"}}",
        "\"breaker\": {\"consecutive_failures\": 5, \"fallback\": "
        "\"builtin:noop\"}",
    };
    warren_config *base = with("", "");
    warren_config *same = with("", "");
    assert_true(warren__config_worker_globals_equal(base, same));
    assert_true(warren__config_consumer_equal(&base->consumers[0],
                                              &same->consumers[0]));
    assert_true(warren__config_consumer_equal(&base->consumers[1],
                                              &same->consumers[1]));
    /* Lists of delays differing only in a later element. */
    warren_config *l1 = with("", "\"retry\": {\"backoff\": {\"kind\": "
                                 "\"list\", \"delays_ms\": [1, 2]}}");
    warren_config *l2 = with("", "\"retry\": {\"backoff\": {\"kind\": "
                                 "\"list\", \"delays_ms\": [1, 3]}}");
    assert_false(
        warren__config_consumer_equal(&l1->consumers[0], &l2->consumers[0]));
    warren_config_free(l1);
    warren_config_free(l2);
    for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++) {
        warren_config *c = with("", changes[i]);
        if (warren__config_consumer_equal(&base->consumers[0],
                                          &c->consumers[0])) {
            fail_msg("a change of consumer field %s was not seen", changes[i]);
        }
        assert_true(warren__config_consumer_equal(&base->consumers[1],
                                                  &c->consumers[1]));
        assert_true(warren__config_worker_globals_equal(base, c));
        warren_config_free(c);
    }
    warren_config_free(base);
    warren_config_free(same);
}

static void test_each_broker_and_store_change_is_seen(void **state) {
    (void)state;
    static const char *const changes[] = {
        "\"broker\": {\"url\": \"amqp://u:p@127.0.0.1:5673/%2f\"},",
        "\"broker\": {\"urls\": [\"amqp://guest:guest@127.0.0.1:5672/%2f\", "
        "\"amqp://guest:guest@127.0.0.2:5672/%2f\"]},",
        "\"broker\": {\"heartbeat_s\": 5},",
        "\"broker\": {\"connect_timeout_s\": 3},",
        "\"broker\": {\"confirm_timeout_ms\": 5000},",
        "\"broker\": {\"tls\": {\"ca_cert\": \"/etc/ssl/ca.pem\"}},",
        "\"broker\": {\"tls\": {\"client_cert\": \"/c.pem\", \"client_key\": "
        "\"/k.pem\"}},",
        "\"broker\": {\"tls\": {\"verify_peer\": false}},",
        "\"broker\": {\"tls\": {\"verify_hostname\": false}},",
        "\"store\": {\"path\": \"other.db\"},",
        "\"store\": {\"url\": \"postgresql://w@127.0.0.1/other\"},",
        "\"store\": {\"synchronous\": \"normal\"},",
        "\"store\": {\"retention_s\": 60},",
        "\"store\": {\"busy_timeout_ms\": 100},",
        "\"store\": {\"lease_s\": 30},",
    };
    warren_config *base = with("", "");
    for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++) {
        warren_config *c = with(changes[i], "");
        if (warren__config_worker_globals_equal(base, c)) {
            fail_msg("a change of %s was not seen", changes[i]);
        }
        /* The consumers themselves did not change. */
        assert_true(warren__config_consumer_equal(&base->consumers[0],
                                                  &c->consumers[0]));
        warren_config_free(c);
    }
    /* Sections that only the supervisor reads are not worker globals. */
    warren_config *c = with("\"shutdown_grace_s\": 5, \"metrics\": "
                            "{\"listen\": \"127.0.0.1:9999\"},",
                            "");
    assert_true(warren__config_worker_globals_equal(base, c));
    warren_config_free(c);
    warren_config_free(base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_struct_sizes_are_those_the_comparison_covers),
        cmocka_unit_test(test_each_consumer_field_change_is_seen),
        cmocka_unit_test(test_each_broker_and_store_change_is_seen),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

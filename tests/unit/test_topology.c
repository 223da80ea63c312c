/*
 * test_topology.c - the declared topology and delay routes: cascade names,
 * TTLs and dead-letter targets per level, binding keys that select one bit
 * each, consumer/DLQ/retry queue arguments for classic, quorum and nack
 * mode, declaration order, and routing keys that encode the delay in 28
 * bits and reach exactly one queue.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "topology.h"

static warren__consumer_cfg cfg;
static warren__topo_op ops[WARREN__TOPO_MAX_OPS];

static int setup(void **state) {
    (void)state;
    memset(&cfg, 0, sizeof cfg);
    cfg.queue = "orders";
    cfg.dlq_queue = "orders.dlq";
    cfg.max_deliveries = 7;
    cfg.delivery_limit = 1009;
    cfg.retry.max_attempts = 5;
    cfg.retry.mode = WARREN__RETRY_REPUBLISH;
    cfg.retry.backoff.kind = WARREN__BACKOFF_FIXED;
    cfg.retry.backoff.delay_ms = 5000;
    return 0;
}

static const warren__topo_op *find(int n, warren__op_kind kind,
                                   const char *name, const char *source) {
    for (int i = 0; i < n; i++) {
        if (ops[i].kind == kind && strcmp(ops[i].name, name) == 0 &&
            (source == NULL || strcmp(ops[i].source, source) == 0)) {
            return &ops[i];
        }
    }
    return NULL;
}

static int index_of(int n, const warren__topo_op *op) {
    (void)n;
    return (int)(op - ops);
}

static const warren__arg *arg(const warren__topo_op *op, const char *key) {
    for (int i = 0; i < op->n_args; i++) {
        if (strcmp(op->args[i].key, key) == 0) {
            return &op->args[i];
        }
    }
    return NULL;
}

static void assert_arg_str(const warren__topo_op *op, const char *key,
                           const char *want) {
    const warren__arg *a = arg(op, key);
    assert_non_null(a);
    assert_int_equal(a->type, WARREN__ARG_STR);
    assert_string_equal(a->str, want);
}

static void assert_arg_int(const warren__topo_op *op, const char *key,
                           int64_t want) {
    const warren__arg *a = arg(op, key);
    assert_non_null(a);
    assert_int_equal(a->type, WARREN__ARG_INT);
    assert_true(a->num == want);
}

/* AMQP topic matching, enough for these tests: "*" is one word, "#" zero
 * or more. */
static int topic_match(const char *key, const char *rk) {
    if (*key == '\0') {
        return *rk == '\0';
    }
    const char *kd = strchr(key, '.');
    size_t kl = kd ? (size_t)(kd - key) : strlen(key);
    const char *knext = kd ? kd + 1 : key + kl;
    if (kl == 1 && key[0] == '#') {
        if (topic_match(knext, rk)) {
            return 1;
        }
        if (*rk == '\0') {
            return 0;
        }
        const char *rd = strchr(rk, '.');
        return topic_match(key, rd ? rd + 1 : rk + strlen(rk));
    }
    if (*rk == '\0') {
        return 0;
    }
    const char *rd = strchr(rk, '.');
    size_t rl = rd ? (size_t)(rd - rk) : strlen(rk);
    const char *rnext = rd ? rd + 1 : rk + rl;
    if (!(kl == 1 && key[0] == '*') && (kl != rl || memcmp(key, rk, kl) != 0)) {
        return 0;
    }
    if ((kd == NULL) != (rd == NULL)) {
        /* one ran out of words: only a trailing "#" may still match */
        return kd != NULL && strcmp(knext, "#") == 0;
    }
    return topic_match(knext, rnext);
}

/* Follows a routed message through the plan's bindings as the broker
 * would, accumulating queue-level TTLs; returns the final queue, or NULL
 * if it is dropped or reaches several queues. */
static const char *simulate(int n, const char *exchange, const char *rk,
                            int64_t *waited) {
    static char at[WARREN__NAME_MAX];
    snprintf(at, sizeof at, "%s", exchange);
    *waited = 0;
    for (int hops = 0; hops < 200; hops++) {
        const warren__topo_op *hit = NULL;
        int hits = 0;
        for (int i = 0; i < n; i++) {
            if ((ops[i].kind == WARREN__OP_BIND_QUEUE ||
                 ops[i].kind == WARREN__OP_BIND_EXCHANGE) &&
                strcmp(ops[i].source, at) == 0 && topic_match(ops[i].key, rk)) {
                hit = &ops[i];
                hits++;
            }
        }
        if (hits != 1) {
            return NULL;
        }
        if (hit->kind == WARREN__OP_BIND_EXCHANGE) {
            snprintf(at, sizeof at, "%s", hit->name);
            continue;
        }
        const warren__topo_op *q = find(n, WARREN__OP_QUEUE, hit->name, NULL);
        assert_non_null(q);
        const warren__arg *ttl = arg(q, "x-message-ttl");
        const warren__arg *dlx = arg(q, "x-dead-letter-exchange");
        if (ttl == NULL) {
            return hit->name; /* a consumer queue: arrived */
        }
        *waited += ttl->num;
        assert_non_null(dlx);
        snprintf(at, sizeof at, "%s", dlx->str);
    }
    return NULL;
}

static void test_cascade_levels_have_ttl_and_dead_letter_to_next(void **state) {
    (void)state;
    int n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    assert_true(n > 0);
    for (int level = 0; level < WARREN__DELAY_LEVELS; level++) {
        char name[32], next[32];
        snprintf(name, sizeof name, "warren.delay.%d", level);
        snprintf(next, sizeof next, "warren.delay.%d", level - 1);
        const warren__topo_op *ex = find(n, WARREN__OP_EXCHANGE, name, NULL);
        assert_non_null(ex);
        assert_string_equal(ex->type, "topic");
        const warren__topo_op *q = find(n, WARREN__OP_QUEUE, name, NULL);
        assert_non_null(q);
        assert_arg_int(q, "x-message-ttl", (int64_t)1 << level);
        assert_arg_str(q, "x-dead-letter-exchange",
                       level == 0 ? "warren.delivery" : next);
        assert_null(arg(q, "x-queue-type"));
        assert_true(index_of(n, ex) < index_of(n, q));
    }
}

static void test_cascade_binding_keys_select_one_bit(void **state) {
    (void)state;
    int n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    const warren__topo_op *b =
        find(n, WARREN__OP_BIND_QUEUE, "warren.delay.27", "warren.delay.27");
    assert_non_null(b);
    assert_string_equal(b->key, "1.#");
    b = find(n, WARREN__OP_BIND_EXCHANGE, "warren.delay.26", "warren.delay.27");
    assert_non_null(b);
    assert_string_equal(b->key, "0.#");
    b = find(n, WARREN__OP_BIND_QUEUE, "warren.delay.0", "warren.delay.0");
    assert_non_null(b);
    assert_string_equal(b->key, "*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*."
                                "*.*.*.*.*.1.#");
    b = find(n, WARREN__OP_BIND_EXCHANGE, "warren.delivery", "warren.delay.0");
    assert_non_null(b);
    assert_string_equal(b->key, "*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*."
                                "*.*.*.*.*.0.#");
}

static void test_consumer_binding_is_exact_match_on_queue(void **state) {
    (void)state;
    int n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    const warren__topo_op *b =
        find(n, WARREN__OP_BIND_QUEUE, "orders", "warren.delivery");
    assert_non_null(b);
    assert_string_equal(b->key, "*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*."
                                "*.*.*.*.*.*.orders");
    char ex[64], rk[WARREN__NAME_MAX];
    assert_int_equal(
        warren__delay_route(5, "orders", 0, ex, sizeof ex, rk, sizeof rk), 0);
    assert_true(topic_match(b->key, rk));
    assert_int_equal(
        warren__delay_route(5, "x.orders", 0, ex, sizeof ex, rk, sizeof rk), 0);
    assert_false(topic_match(b->key, rk));
    assert_int_equal(
        warren__delay_route(5, "orders.x", 0, ex, sizeof ex, rk, sizeof rk), 0);
    assert_false(topic_match(b->key, rk));
}

static void test_classic_republish_has_plain_queue_and_dlq(void **state) {
    (void)state;
    int n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    /* delivery exchange + 4 per level + queue + binding + DLQ */
    assert_int_equal(n, 1 + 4 * WARREN__DELAY_LEVELS + 3);
    assert_int_equal(ops[0].kind, WARREN__OP_EXCHANGE);
    assert_string_equal(ops[0].name, "warren.delivery");
    const warren__topo_op *q = find(n, WARREN__OP_QUEUE, "orders", NULL);
    assert_non_null(q);
    assert_int_equal(q->n_args, 0);
    const warren__topo_op *d = find(n, WARREN__OP_QUEUE, "orders.dlq", NULL);
    assert_non_null(d);
    assert_int_equal(d->n_args, 0);
    assert_null(find(n, WARREN__OP_QUEUE, "orders.retry", NULL));
}

static void test_nack_mode_adds_retry_queue_with_fixed_ttl(void **state) {
    (void)state;
    cfg.retry.mode = WARREN__RETRY_NACK;
    int n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    assert_int_equal(n, 1 + 4 * WARREN__DELAY_LEVELS + 4);
    const warren__topo_op *q = find(n, WARREN__OP_QUEUE, "orders", NULL);
    assert_arg_str(q, "x-dead-letter-exchange", "");
    assert_arg_str(q, "x-dead-letter-routing-key", "orders.retry");
    const warren__topo_op *r = find(n, WARREN__OP_QUEUE, "orders.retry", NULL);
    assert_non_null(r);
    assert_arg_int(r, "x-message-ttl", 5000);
    assert_arg_str(r, "x-dead-letter-exchange", "");
    assert_arg_str(r, "x-dead-letter-routing-key", "orders");
}

static void test_quorum_uses_quorum_cascade_and_backstop(void **state) {
    (void)state;
    cfg.queue_type = WARREN__QUEUE_QUORUM;
    int n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    assert_true(n > 0);
    assert_string_equal(ops[0].name, "warren.qdelivery");
    assert_null(find(n, WARREN__OP_QUEUE, "warren.delay.3", NULL));
    const warren__topo_op *l =
        find(n, WARREN__OP_QUEUE, "warren.qdelay.3", NULL);
    assert_non_null(l);
    assert_arg_int(l, "x-message-ttl", 8);
    assert_arg_str(l, "x-dead-letter-exchange", "warren.qdelay.2");
    assert_arg_str(l, "x-queue-type", "quorum");
    assert_arg_str(l, "x-dead-letter-strategy", "at-least-once");
    assert_arg_str(l, "x-overflow", "reject-publish");
    const warren__topo_op *q = find(n, WARREN__OP_QUEUE, "orders", NULL);
    assert_arg_str(q, "x-queue-type", "quorum");
    assert_arg_int(q, "x-delivery-limit", 1009);
    assert_arg_str(q, "x-dead-letter-exchange", "");
    assert_arg_str(q, "x-dead-letter-routing-key", "orders.dlq");
    assert_arg_str(q, "x-dead-letter-strategy", "at-least-once");
    assert_arg_str(q, "x-overflow", "reject-publish");
    const warren__topo_op *d = find(n, WARREN__OP_QUEUE, "orders.dlq", NULL);
    assert_int_equal(d->n_args, 1);
    assert_arg_str(d, "x-queue-type", "quorum");
    assert_non_null(
        find(n, WARREN__OP_BIND_QUEUE, "orders", "warren.qdelivery"));
}

/* RabbitMQ 4.0 gives a quorum queue a delivery limit of 20 when none is
 * set: nack mode sets its own too (issue 18 item 8). */
static void test_quorum_nack_mode_sets_delivery_limit_explicitly(void **state) {
    (void)state;
    cfg.queue_type = WARREN__QUEUE_QUORUM;
    cfg.retry.mode = WARREN__RETRY_NACK;
    int n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    assert_true(n > 0);
    const warren__topo_op *q = find(n, WARREN__OP_QUEUE, "orders", NULL);
    assert_arg_int(q, "x-delivery-limit", 1009);
    assert_arg_str(q, "x-dead-letter-routing-key", "orders.retry");
}

static void test_every_object_exists_before_it_is_bound(void **state) {
    (void)state;
    cfg.queue_type = WARREN__QUEUE_QUORUM;
    int n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    for (int i = 0; i < n; i++) {
        if (ops[i].kind != WARREN__OP_BIND_QUEUE &&
            ops[i].kind != WARREN__OP_BIND_EXCHANGE) {
            continue;
        }
        const warren__topo_op *src =
            find(n, WARREN__OP_EXCHANGE, ops[i].source, NULL);
        const warren__topo_op *dst =
            find(n,
                 ops[i].kind == WARREN__OP_BIND_QUEUE ? WARREN__OP_QUEUE
                                                      : WARREN__OP_EXCHANGE,
                 ops[i].name, NULL);
        assert_non_null(src);
        assert_non_null(dst);
        assert_true(index_of(n, src) < i);
        assert_true(index_of(n, dst) < i);
    }
}

static void test_delay_route_encodes_bits_msb_first(void **state) {
    (void)state;
    char ex[64], rk[WARREN__NAME_MAX];
    assert_int_equal(
        warren__delay_route(0, "orders", 0, ex, sizeof ex, rk, sizeof rk), 0);
    assert_string_equal(ex, "warren.delivery"); /* no wait: no cascade */
    assert_string_equal(rk, "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0."
                            "0.0.0.0.orders");
    assert_int_equal(
        warren__delay_route(1, "orders", 1, ex, sizeof ex, rk, sizeof rk), 0);
    assert_string_equal(ex, "warren.qdelay.0"); /* enters at its top bit */
    assert_string_equal(rk, "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0."
                            "0.0.0.1.orders");
    /* 1000 = 0b1111101000 */
    assert_int_equal(
        warren__delay_route(1000, "orders", 0, ex, sizeof ex, rk, sizeof rk),
        0);
    assert_string_equal(ex, "warren.delay.9");
    assert_string_equal(rk, "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.1.1.1.1.0."
                            "1.0.0.0.orders");
    assert_int_equal(warren__delay_route(WARREN__DELAY_MAX_MS, "orders", 0, ex,
                                         sizeof ex, rk, sizeof rk),
                     0);
    assert_string_equal(ex, "warren.delay.27");
    assert_string_equal(rk, "1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1."
                            "1.1.1.1.orders");
}

static void test_delay_route_clamps_above_max(void **state) {
    (void)state;
    char ex[64], rk[WARREN__NAME_MAX], want[WARREN__NAME_MAX];
    assert_int_equal(warren__delay_route(WARREN__DELAY_MAX_MS, "q", 0, ex,
                                         sizeof ex, want, sizeof want),
                     0);
    assert_int_equal(warren__delay_route(WARREN__DELAY_MAX_MS + 1, "q", 0, ex,
                                         sizeof ex, rk, sizeof rk),
                     0);
    assert_string_equal(rk, want);
    assert_int_equal(
        warren__delay_route(UINT32_MAX, "q", 0, ex, sizeof ex, rk, sizeof rk),
        0);
    assert_string_equal(rk, want);
}

static void test_delay_route_waits_exactly_the_delay(void **state) {
    (void)state;
    static const uint32_t delays[] = {
        0, 1, 2, 3, 1000, 30000, 86400000, WARREN__DELAY_MAX_MS};
    int n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    for (size_t i = 0; i < sizeof delays / sizeof delays[0]; i++) {
        char ex[64], rk[WARREN__NAME_MAX];
        int64_t waited = -1;
        assert_int_equal(warren__delay_route(delays[i], "orders", 0, ex,
                                             sizeof ex, rk, sizeof rk),
                         0);
        const char *dest = simulate(n, ex, rk, &waited);
        assert_non_null(dest);
        assert_string_equal(dest, "orders");
        assert_true(waited == (int64_t)delays[i]);
    }
}

static void
test_delay_route_refuses_small_buffers_and_long_names(void **state) {
    (void)state;
    char ex[64], rk[WARREN__NAME_MAX], small[8];
    char longq[WARREN__NAME_MAX];
    assert_int_equal(
        warren__delay_route(1, "orders", 0, small, sizeof small, rk, sizeof rk),
        -1);
    assert_int_equal(
        warren__delay_route(1, "orders", 0, ex, sizeof ex, small, sizeof small),
        -1);
    memset(longq, 'q', 200);
    longq[200] = '\0'; /* 56 + 200 > 255 */
    assert_int_equal(
        warren__delay_route(1, longq, 0, ex, sizeof ex, rk, sizeof rk), -1);
    assert_int_equal(
        warren__delay_route(1, "", 0, ex, sizeof ex, rk, sizeof rk), -1);
}

static void test_plan_refuses_small_capacity_and_bad_names(void **state) {
    (void)state;
    char longq[WARREN__NAME_MAX];
    assert_int_equal(warren__topology_plan(&cfg, ops, 10), -1);
    memset(longq, 'q', 200);
    longq[200] = '\0';
    cfg.queue = longq;
    cfg.dlq_queue = "x.dlq";
    assert_int_equal(warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS),
                     -1);
    cfg.queue = "a.*";
    assert_int_equal(warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS),
                     -1);
    cfg.queue = "";
    assert_int_equal(warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS),
                     -1);
}

static void test_dlq_name_defaults_to_queue_dot_dlq(void **state) {
    (void)state;
    assert_string_equal(warren__dlq_name(&cfg), "orders.dlq");
    cfg.dlq_queue = "custom-dead";
    assert_string_equal(warren__dlq_name(&cfg), "custom-dead");
    cfg.dlq_queue = NULL;
    assert_string_equal(warren__dlq_name(&cfg), "orders.dlq");
}

/* PRECONDITION_FAILED on a queue: the hint says when the existing queue's
 * type is probably not the consumer's queue_type, from which side lacks
 * the argument the broker names. */
static void test_precondition_hint_tells_type_mismatch(void **state) {
    (void)state;
    char hint[1024];
    cfg.queue_type = WARREN__QUEUE_QUORUM;
    int n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    const warren__topo_op *q = find(n, WARREN__OP_QUEUE, "orders", NULL);
    assert_non_null(q);
    warren__topology_precondition_hint(
        q,
        "406 PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' "
        "for queue 'orders' in vhost '/': received the value '' of type "
        "'longstr' but current is none",
        hint, sizeof hint);
    assert_non_null(strstr(hint, "probably a classic queue"));
    assert_non_null(strstr(hint, "'x-dead-letter-exchange'"));
    assert_non_null(strstr(hint, "cannot change in place"));
    /* Quorum on both sides, another limit: the general advice. */
    warren__topology_precondition_hint(
        q,
        "406 PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for "
        "queue 'orders' in vhost '/': received the value '1009' of type "
        "'signedint' but current is the value '9' of type 'signedint'",
        hint, sizeof hint);
    assert_null(strstr(hint, "probably"));
    assert_non_null(strstr(hint, "already exists with other arguments"));

    cfg.queue_type = WARREN__QUEUE_CLASSIC;
    n = warren__topology_plan(&cfg, ops, WARREN__TOPO_MAX_OPS);
    q = find(n, WARREN__OP_QUEUE, "orders", NULL);
    assert_non_null(q);
    warren__topology_precondition_hint(
        q,
        "406 PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' "
        "for queue 'orders' in vhost '/': received none but current is the "
        "value '' of type 'longstr'",
        hint, sizeof hint);
    assert_non_null(strstr(hint, "probably a quorum queue"));
    assert_non_null(strstr(hint, "\"queue_type\": \"quorum\""));
    /* Bounded: a small buffer is cut, never overrun. */
    char small[16];
    warren__topology_precondition_hint(q, "x", small, sizeof small);
    assert_int_equal(strlen(small), sizeof small - 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(
            test_quorum_nack_mode_sets_delivery_limit_explicitly, setup),
        cmocka_unit_test_setup(
            test_cascade_levels_have_ttl_and_dead_letter_to_next, setup),
        cmocka_unit_test_setup(test_cascade_binding_keys_select_one_bit, setup),
        cmocka_unit_test_setup(test_consumer_binding_is_exact_match_on_queue,
                               setup),
        cmocka_unit_test_setup(test_classic_republish_has_plain_queue_and_dlq,
                               setup),
        cmocka_unit_test_setup(test_nack_mode_adds_retry_queue_with_fixed_ttl,
                               setup),
        cmocka_unit_test_setup(test_quorum_uses_quorum_cascade_and_backstop,
                               setup),
        cmocka_unit_test_setup(test_every_object_exists_before_it_is_bound,
                               setup),
        cmocka_unit_test_setup(test_delay_route_encodes_bits_msb_first, setup),
        cmocka_unit_test_setup(test_delay_route_clamps_above_max, setup),
        cmocka_unit_test_setup(test_delay_route_waits_exactly_the_delay, setup),
        cmocka_unit_test_setup(
            test_delay_route_refuses_small_buffers_and_long_names, setup),
        cmocka_unit_test_setup(test_plan_refuses_small_capacity_and_bad_names,
                               setup),
        cmocka_unit_test_setup(test_dlq_name_defaults_to_queue_dot_dlq, setup),
        cmocka_unit_test_setup(test_precondition_hint_tells_type_mismatch,
                               setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * topology.c - the plan of exchanges, queues and bindings a consumer needs,
 * and the route that delays a message by any number of milliseconds.
 *
 * Pure computation, no I/O: session.c executes the plan front to back, and
 * the order guarantees every object exists before anything is bound to it.
 * The plan is deterministic for a given consumer config, so re-declaring it
 * is idempotent; a changed config yields different arguments, which the
 * broker refuses with PRECONDITION_FAILED rather than silently applying.
 * The cascade design is described in topology.h and docs/retry.md.
 */
#include "topology.h"

#include <stdio.h>
#include <string.h>

/* AMQP short strings (names, routing and binding keys) are <= 255 bytes. */
#define SHORTSTR_MAX 255

typedef struct {
    warren__topo_op *ops;
    int n;
    int max;
    int failed;
} plan;

static warren__topo_op *add(plan *p, warren__op_kind kind, const char *name) {
    if (p->failed || p->n >= p->max || strlen(name) > SHORTSTR_MAX) {
        p->failed = 1;
        return NULL;
    }
    warren__topo_op *op = &p->ops[p->n++];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    snprintf(op->name, sizeof op->name, "%s", name);
    return op;
}

static void add_exchange(plan *p, const char *name) {
    warren__topo_op *op = add(p, WARREN__OP_EXCHANGE, name);
    if (op) {
        snprintf(op->type, sizeof op->type, "topic");
    }
}

static void add_bind(plan *p, warren__op_kind kind, const char *dest,
                     const char *source, const char *key) {
    warren__topo_op *op = add(p, kind, dest);
    if (op == NULL) {
        return;
    }
    if (strlen(source) > SHORTSTR_MAX || strlen(key) > SHORTSTR_MAX) {
        p->failed = 1;
        return;
    }
    snprintf(op->source, sizeof op->source, "%s", source);
    snprintf(op->key, sizeof op->key, "%s", key);
}

static void arg_str(plan *p, warren__topo_op *op, const char *key,
                    const char *val) {
    if (op == NULL || op->n_args >= WARREN__MAX_ARGS ||
        strlen(val) > SHORTSTR_MAX) {
        p->failed = 1;
        return;
    }
    warren__arg *a = &op->args[op->n_args++];
    snprintf(a->key, sizeof a->key, "%s", key);
    a->type = WARREN__ARG_STR;
    snprintf(a->str, sizeof a->str, "%s", val);
}

static void arg_int(plan *p, warren__topo_op *op, const char *key,
                    int64_t val) {
    if (op == NULL || op->n_args >= WARREN__MAX_ARGS) {
        p->failed = 1;
        return;
    }
    warren__arg *a = &op->args[op->n_args++];
    snprintf(a->key, sizeof a->key, "%s", key);
    a->type = WARREN__ARG_INT;
    a->num = val;
}

static const char *level_prefix(int quorum) {
    return quorum ? "warren.qdelay." : "warren.delay.";
}

static const char *delivery_exchange(int quorum) {
    return quorum ? "warren.qdelivery" : "warren.delivery";
}

static void level_name(int quorum, int level, char *out, size_t len) {
    snprintf(out, len, "%s%d", level_prefix(quorum), level);
}

/* The binding key at level `level` selecting bit value `bit`: the bit sits
 * in word 27 - level of the routing key (most significant first). */
static void level_key(int level, char bit, char *out, size_t len) {
    size_t o = 0;
    for (int i = 0; i < WARREN__DELAY_LEVELS - 1 - level && o + 2 < len; i++) {
        out[o++] = '*';
        out[o++] = '.';
    }
    snprintf(out + o, len - o, "%c.#", bit);
}

/* Quorum dead-lettering is at-most-once unless asked otherwise, and
 * at-least-once needs reject-publish overflow to be accepted. */
static void quorum_args(plan *p, warren__topo_op *q) {
    arg_str(p, q, "x-queue-type", "quorum");
    arg_str(p, q, "x-dead-letter-strategy", "at-least-once");
    arg_str(p, q, "x-overflow", "reject-publish");
}

static void plan_cascade(plan *p, int quorum) {
    char ex[64], prev[64], key[WARREN__DELAY_LEVELS * 2 + 8];
    snprintf(prev, sizeof prev, "%s", delivery_exchange(quorum));
    for (int level = 0; level < WARREN__DELAY_LEVELS; level++) {
        level_name(quorum, level, ex, sizeof ex);
        add_exchange(p, ex);
        warren__topo_op *q = add(p, WARREN__OP_QUEUE, ex);
        arg_int(p, q, "x-message-ttl", (int64_t)1 << level);
        arg_str(p, q, "x-dead-letter-exchange", prev);
        if (quorum) {
            quorum_args(p, q);
        }
        level_key(level, '1', key, sizeof key);
        add_bind(p, WARREN__OP_BIND_QUEUE, ex, ex, key);
        level_key(level, '0', key, sizeof key);
        add_bind(p, WARREN__OP_BIND_EXCHANGE, prev, ex, key);
        snprintf(prev, sizeof prev, "%s", ex);
    }
}

/* A queue whose name contains a whole "*" or "#" word would turn its exact
 * delivery binding into a wildcard and receive other queues' retries. */
static int queue_name_ok(const char *q) {
    size_t n = strlen(q);
    if (n == 0 || n > SHORTSTR_MAX) {
        return 0;
    }
    const char *w = q;
    for (;;) {
        const char *dot = strchr(w, '.');
        size_t wl = dot ? (size_t)(dot - w) : strlen(w);
        if (wl == 1 && (*w == '*' || *w == '#')) {
            return 0;
        }
        if (dot == NULL) {
            return 1;
        }
        w = dot + 1;
    }
}

const char *warren__dlq_name(const warren__consumer_cfg *c) {
    /* config.c fills the default; this fallback only serves hand-built
     * configs (tests), one buffer per thread so callers need not free. */
    static _Thread_local char fallback[WARREN__NAME_MAX + 8];
    if (c->dlq_queue && c->dlq_queue[0]) {
        return c->dlq_queue;
    }
    snprintf(fallback, sizeof fallback, "%s.dlq", c->queue ? c->queue : "");
    return fallback;
}

int warren__topology_plan(const warren__consumer_cfg *c, warren__topo_op *ops,
                          int max) {
    plan p = {ops, 0, max, 0};
    int quorum = c->queue_type == WARREN__QUEUE_QUORUM;
    int nack = c->retry.mode == WARREN__RETRY_NACK;
    char retryq[WARREN__NAME_MAX + 8];
    char key[WARREN__NAME_MAX + 64];
    if (c->queue == NULL || !queue_name_ok(c->queue)) {
        return -1;
    }
    const char *dlq = warren__dlq_name(c);
    snprintf(retryq, sizeof retryq, "%s.retry", c->queue);

    add_exchange(&p, delivery_exchange(quorum));
    plan_cascade(&p, quorum);

    warren__topo_op *q = add(&p, WARREN__OP_QUEUE, c->queue);
    if (quorum) {
        arg_str(&p, q, "x-queue-type", "quorum");
    }
    if (quorum) {
        /* Always explicit: RabbitMQ 4.0 defaults it to 20. It is the
         * broker's backstop for a message that kills every worker before
         * warren's own poison cap can record it, set high enough above
         * that cap that warren's own requeues never reach it
         * (config.c parse_delivery_limit()). */
        arg_int(&p, q, "x-delivery-limit", (int64_t)c->delivery_limit);
    }
    if (nack) {
        arg_str(&p, q, "x-dead-letter-exchange", "");
        arg_str(&p, q, "x-dead-letter-routing-key", retryq);
        if (quorum) {
            arg_str(&p, q, "x-dead-letter-strategy", "at-least-once");
            arg_str(&p, q, "x-overflow", "reject-publish");
        }
    } else if (quorum) {
        arg_str(&p, q, "x-dead-letter-exchange", "");
        arg_str(&p, q, "x-dead-letter-routing-key", dlq);
        arg_str(&p, q, "x-dead-letter-strategy", "at-least-once");
        arg_str(&p, q, "x-overflow", "reject-publish");
    }

    /* 28 single-word wildcards for the delay bits, then the queue name
     * verbatim: a topic match on the whole name, so "a" never receives
     * the retries of "b.a". */
    size_t o = 0;
    for (int i = 0; i < WARREN__DELAY_LEVELS; i++) {
        key[o++] = '*';
        key[o++] = '.';
    }
    snprintf(key + o, sizeof key - o, "%s", c->queue);
    add_bind(&p, WARREN__OP_BIND_QUEUE, c->queue, delivery_exchange(quorum),
             key);

    if (nack) {
        q = add(&p, WARREN__OP_QUEUE, retryq);
        arg_int(&p, q, "x-message-ttl",
                warren__backoff_base_ms(&c->retry.backoff, 1));
        arg_str(&p, q, "x-dead-letter-exchange", "");
        arg_str(&p, q, "x-dead-letter-routing-key", c->queue);
        if (quorum) {
            quorum_args(&p, q);
        }
    }

    q = add(&p, WARREN__OP_QUEUE, dlq);
    if (quorum) {
        arg_str(&p, q, "x-queue-type", "quorum");
    }
    return p.failed ? -1 : p.n;
}

int warren__delay_route(uint32_t delay_ms, const char *queue, int quorum,
                        char *exchange, size_t exlen, char *rk, size_t rklen) {
    size_t qlen = queue ? strlen(queue) : 0;
    size_t need = (size_t)WARREN__DELAY_LEVELS * 2 + qlen;
    if (queue == NULL || qlen == 0 || need > SHORTSTR_MAX || rklen <= need) {
        return -1;
    }
    if (delay_ms > WARREN__DELAY_MAX_MS) {
        delay_ms = WARREN__DELAY_MAX_MS;
    }
    /* Enter the cascade at the highest set bit: the levels above it would
     * only pass the message on, each pass costing the broker a routing
     * step. A zero delay goes straight to the delivery exchange. */
    int n;
    if (delay_ms == 0) {
        n = snprintf(exchange, exlen, "%s", delivery_exchange(quorum));
    } else {
        int top = 31 - __builtin_clz(delay_ms);
        n = snprintf(exchange, exlen, "%s%d", level_prefix(quorum), top);
    }
    if (n < 0 || (size_t)n >= exlen) {
        return -1;
    }
    size_t o = 0;
    for (int bit = WARREN__DELAY_LEVELS - 1; bit >= 0; bit--) {
        rk[o++] = (delay_ms >> bit) & 1u ? '1' : '0';
        rk[o++] = '.';
    }
    memcpy(rk + o, queue, qlen + 1);
    return 0;
}

/* The name in the broker's "inequivalent arg 'NAME' ..." text, or "". */
static void differing_arg(const char *text, char *out, size_t len) {
    const char *a = strstr(text, "inequivalent arg '");
    size_t n = 0;
    out[0] = '\0';
    if (a == NULL) {
        return;
    }
    a += strlen("inequivalent arg '");
    while (a[n] != '\0' && a[n] != '\'' && n + 1 < len) {
        n++;
    }
    memcpy(out, a, n);
    out[n] = '\0';
}

void warren__topology_precondition_hint(const warren__topo_op *op,
                                        const char *broker_text, char *out,
                                        size_t len) {
    int quorum = 0;
    char arg[64];
    if (len == 0) {
        return;
    }
    for (int i = 0; i < op->n_args; i++) {
        if (strcmp(op->args[i].key, "x-queue-type") == 0 &&
            op->args[i].type == WARREN__ARG_STR &&
            strcmp(op->args[i].str, "quorum") == 0) {
            quorum = 1;
        }
    }
    differing_arg(broker_text ? broker_text : "", arg, sizeof arg);
    /* The broker names only the first argument that differs, in its own
     * order (a classic queue asked to be quorum is usually reported as
     * x-dead-letter-exchange), so the type is told from which side has
     * the argument at all. */
    if (op->kind == WARREN__OP_QUEUE && quorum && broker_text &&
        strstr(broker_text, "but current is none") != NULL) {
        snprintf(out, len,
                 "'%s' exists without the argument '%s' that a quorum queue "
                 "of this config has: it is probably a classic queue, and "
                 "this consumer says \"queue_type\": \"quorum\". A queue's "
                 "type cannot change in place: keep \"queue_type\": "
                 "\"classic\", or move the queue to quorum (stop its "
                 "workers, drain or shovel it, delete it, start them again: "
                 "docs/operations.md, \"Moving a queue to quorum\")",
                 op->name, arg);
    } else if (op->kind == WARREN__OP_QUEUE && !quorum && broker_text &&
               strstr(broker_text, "received none but current is") != NULL) {
        snprintf(out, len,
                 "'%s' exists with the argument '%s' that this config does "
                 "not set: it is probably a quorum queue, and this consumer "
                 "says \"queue_type\": \"classic\" (the default). Set "
                 "\"queue_type\": \"quorum\" if it is one; a queue's type "
                 "cannot change in place (docs/operations.md, \"Moving a "
                 "queue to quorum\")",
                 op->name, arg);
    } else {
        snprintf(out, len,
                 "'%s' already exists with other arguments than this config "
                 "asks for. Either change the config back, or migrate: drain "
                 "the queue, delete it (rabbitmqctl delete_queue) and "
                 "restart; see docs/retry.md",
                 op->name);
    }
}

/*
 * topology.h - the queues, exchanges and bindings a consumer needs (internal).
 *
 * Pure: it computes a plan (a list of declare/bind operations) and the
 * route of a delayed retry; session code executes the plan. Keeping it free
 * of I/O lets unit tests check names and arguments exactly.
 *
 * Delays use a binary cascade of TTL queues shared by every consumer on a
 * vhost: level L (0..27) is a queue with a queue-level TTL of 2^L ms, fed by
 * a topic exchange of the same name. The routing key of a delayed message is
 * its delay in 28 binary digits, most significant first, then the target
 * queue name: "0.0.....1.0.1.orders". At level L the message either waits in
 * the level's queue (bit L set) or passes straight to level L-1; every level
 * dead-letters into the next, and the last into the delivery exchange, which
 * routes to the target queue by an exact binding. Because every message in a
 * level queue has the same TTL, nothing waits behind a longer delay.
 * See docs/retry.md.
 */
#ifndef WARREN_TOPOLOGY_H
#define WARREN_TOPOLOGY_H

#include "backoff.h"
#include "config.h"

#include <stddef.h>
#include <stdint.h>

#define WARREN__NAME_MAX 256 /* AMQP short string */

typedef enum { WARREN__ARG_STR = 0, WARREN__ARG_INT } warren__arg_type;

typedef struct {
    char key[40];
    warren__arg_type type;
    char str[WARREN__NAME_MAX];
    int64_t num;
} warren__arg;

#define WARREN__MAX_ARGS 8

typedef enum {
    WARREN__OP_EXCHANGE = 0, /* declare exchange `name` of type `type` */
    WARREN__OP_QUEUE,        /* declare queue `name` with `args` */
    WARREN__OP_BIND_QUEUE,   /* bind queue `name` to exchange `source` */
    WARREN__OP_BIND_EXCHANGE /* bind exchange `name` to exchange `source` */
} warren__op_kind;

typedef struct {
    warren__op_kind kind;
    char name[WARREN__NAME_MAX];
    char source[WARREN__NAME_MAX];   /* bindings: the source exchange */
    char type[16];                   /* exchanges: "topic", "direct" */
    char key[WARREN__NAME_MAX + 64]; /* bindings: binding key */
    warren__arg args[WARREN__MAX_ARGS];
    int n_args;
} warren__topo_op;

/* Enough for the cascade (4 ops a level: exchange, queue, and the two
 * bindings at its exchange) plus a consumer's own objects. */
#define WARREN__TOPO_MAX_OPS (4 * WARREN__DELAY_LEVELS + 16)

/* Fills `ops` (capacity `max`) with everything consumer `c` needs, in an
 * order that can be executed front to back. Returns the count, or -1 if
 * `max` is too small or a name would exceed 255 bytes. */
int warren__topology_plan(const warren__consumer_cfg *c, warren__topo_op *ops,
                          int max);

/* Where to publish a message so it reaches `queue` after `delay_ms`
 * (clamped to WARREN__DELAY_MAX_MS): writes the exchange and routing key.
 * `quorum` selects the quorum cascade. Returns 0, or -1 if a buffer is too
 * small. */
int warren__delay_route(uint32_t delay_ms, const char *queue, int quorum,
                        char *exchange, size_t exlen, char *rk, size_t rklen);

/* The dead-letter queue name of consumer `c` (its "dead_letter.queue"). */
const char *warren__dlq_name(const warren__consumer_cfg *c);

/* What to tell the operator when the broker refused `op` with
 * PRECONDITION_FAILED and `broker_text` (its reply, e.g. "inequivalent arg
 * 'x-dead-letter-exchange' ... received none but current is ..."): for a
 * queue whose type differs from the consumer's queue_type (as far as the
 * text tells), that the type cannot change in place and what to do; else
 * the general migration advice. Written into `out` (always terminated). */
void warren__topology_precondition_hint(const warren__topo_op *op,
                                        const char *broker_text, char *out,
                                        size_t len);

#endif /* WARREN_TOPOLOGY_H */

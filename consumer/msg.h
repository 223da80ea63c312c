/*
 * msg.h - the message a handler sees, as the worker fills it (internal).
 *
 * A warren_msg points into memory owned by the AMQP session (decoded
 * properties, header table) and into a per-slot body buffer the worker
 * reuses across deliveries; nothing here is freed per message. Everything
 * stays valid until the worker finishes the batch the message belongs to.
 */
#ifndef WARREN_MSG_H
#define WARREN_MSG_H

#include "props.h"
#include "warren.h"

#include <stdint.h>

struct warren_msg {
    const char *queue;
    const char *exchange; /* "" for the default exchange */
    const char *routing_key;
    const char *content_type;    /* NULL if absent */
    const char *correlation_id;  /* NULL if absent */
    const char *message_id_prop; /* the message_id property, NULL if absent */
    const char *id;              /* the dedup id; NULL when running without */
    const uint8_t *body;         /* never NULL */
    size_t body_len;
    uint64_t body_size_announced; /* from the content header */
    int attempt;
    int redelivered;
    uint64_t delivery_tag;
    const warren__props *props;   /* full properties, for copies */
    const warren__table *headers; /* never NULL (empty table) */
};

#endif /* WARREN_MSG_H */

/*
 * msgid.h - where a message's dedup id comes from (internal).
 *
 * A consumer's "message_id" policy picks the source: the AMQP message_id
 * property, a header, a dotted path into a JSON body, or the SHA-256 of the
 * body. "on_missing_id" says what a missing or unusable id becomes. An id is
 * never truncated or altered: longer than WARREN__ID_MAX bytes, empty, or
 * not valid UTF-8 counts as unusable, with a reason saying which.
 */
#ifndef WARREN_MSGID_H
#define WARREN_MSGID_H

#include "config.h"
#include "msg.h"
#include "store.h"

#include <stddef.h>

typedef enum {
    WARREN__ID_USE = 0, /* `out` holds the id: dedup on it */
    WARREN__ID_NONE,    /* run without dedup (policy "process") */
    WARREN__ID_REJECT   /* dead-letter; `why` says why (policy "dead") */
} warren__id_verdict;

/* Applies the consumer's policy to `msg`. `out` must hold WARREN__ID_MAX+1
 * bytes; on WARREN__ID_USE it is NUL-terminated. On NONE and REJECT `why`
 * (size `whylen`) explains, e.g. "message id missing: no message_id
 * property". Never fails otherwise. */
warren__id_verdict warren__msgid_extract(const warren__consumer_cfg *c,
                                         const struct warren_msg *msg,
                                         char *out, char *why, size_t whylen);

/* Lower-case hex SHA-256 of `data` into `out` (65 bytes). */
void warren__sha256_hex(const void *data, size_t len, char out[65]);

/* 1 if `s` (length `len`) is valid UTF-8 without NUL bytes. */
int warren__utf8_valid(const char *s, size_t len);

#endif /* WARREN_MSGID_H */

/*
 * session_amqp.h - conversions between rabbitmq-c's property and table types
 * and warren's own (props.h). Private to the AMQP seam: only session.c and
 * session_amqp.c include it (and tests that feed rabbitmq-c's own decoder
 * to warren), since it is the one header besides session.c's sources that
 * includes <amqp.h>.
 */
#ifndef WARREN_SESSION_AMQP_H
#define WARREN_SESSION_AMQP_H

#include "props.h"

#include <amqp.h>

/* Deep-copies a table or properties rabbitmq-c decoded (pointing into
 * frame memory) into warren's types, every key, string and nested value in
 * `a`, so the frame memory can be released at once. Refuses what
 * rabbitmq-c's own clone refused: an empty key or an unknown field kind
 * (WARREN_ERR_INVAL). Returns 0, INVAL or WARREN_ERR_NOMEM. */
int warren__amqp_table_import(const amqp_table_t *in, warren__table *out,
                              warren__arena *a);
int warren__amqp_props_import(const amqp_basic_properties_t *in,
                              warren__props *out, warren__arena *a);

/* The other way, for sending: `out` shares every key and string with `in`
 * and has its entry arrays in `a`, so it is valid while both are. Returns
 * 0 or WARREN_ERR_NOMEM. */
int warren__amqp_table_export(const warren__table *in, amqp_table_t *out,
                              warren__arena *a);
int warren__amqp_props_export(const warren__props *in,
                              amqp_basic_properties_t *out, warren__arena *a);

#endif /* WARREN_SESSION_AMQP_H */

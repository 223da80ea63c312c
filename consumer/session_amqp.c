/*
 * session_amqp.c - the AMQP seam's type conversions: rabbitmq-c's decoded
 * properties and field tables to warren's own (props.h) as a message is
 * read, and back as one is published; and the broker URL parse the config
 * check shares with connect.
 *
 * Imports deep-copy (the frame memory they come from is released right
 * after reading) and keep rabbitmq-c's clone rules; exports are shallow,
 * valid while the warren values and the arena holding their entry arrays
 * are. Field kinds are the wire letters on both sides.
 */
#include "session_amqp.h"

#include "session.h"
#include "warren.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert((int)WARREN__FIELD_BOOLEAN == (int)AMQP_FIELD_KIND_BOOLEAN &&
                   (int)WARREN__FIELD_I8 == (int)AMQP_FIELD_KIND_I8 &&
                   (int)WARREN__FIELD_U8 == (int)AMQP_FIELD_KIND_U8 &&
                   (int)WARREN__FIELD_I16 == (int)AMQP_FIELD_KIND_I16 &&
                   (int)WARREN__FIELD_U16 == (int)AMQP_FIELD_KIND_U16 &&
                   (int)WARREN__FIELD_I32 == (int)AMQP_FIELD_KIND_I32 &&
                   (int)WARREN__FIELD_U32 == (int)AMQP_FIELD_KIND_U32 &&
                   (int)WARREN__FIELD_I64 == (int)AMQP_FIELD_KIND_I64 &&
                   (int)WARREN__FIELD_U64 == (int)AMQP_FIELD_KIND_U64 &&
                   (int)WARREN__FIELD_F32 == (int)AMQP_FIELD_KIND_F32 &&
                   (int)WARREN__FIELD_F64 == (int)AMQP_FIELD_KIND_F64 &&
                   (int)WARREN__FIELD_DECIMAL == (int)AMQP_FIELD_KIND_DECIMAL &&
                   (int)WARREN__FIELD_UTF8 == (int)AMQP_FIELD_KIND_UTF8 &&
                   (int)WARREN__FIELD_ARRAY == (int)AMQP_FIELD_KIND_ARRAY &&
                   (int)WARREN__FIELD_TIMESTAMP ==
                       (int)AMQP_FIELD_KIND_TIMESTAMP &&
                   (int)WARREN__FIELD_TABLE == (int)AMQP_FIELD_KIND_TABLE &&
                   (int)WARREN__FIELD_VOID == (int)AMQP_FIELD_KIND_VOID &&
                   (int)WARREN__FIELD_BYTES == (int)AMQP_FIELD_KIND_BYTES,
               "warren's field kinds are rabbitmq-c's wire letters");
_Static_assert(
    WARREN__PROP_CONTENT_TYPE == AMQP_BASIC_CONTENT_TYPE_FLAG &&
        WARREN__PROP_CONTENT_ENCODING == AMQP_BASIC_CONTENT_ENCODING_FLAG &&
        WARREN__PROP_HEADERS == AMQP_BASIC_HEADERS_FLAG &&
        WARREN__PROP_DELIVERY_MODE == AMQP_BASIC_DELIVERY_MODE_FLAG &&
        WARREN__PROP_PRIORITY == AMQP_BASIC_PRIORITY_FLAG &&
        WARREN__PROP_CORRELATION_ID == AMQP_BASIC_CORRELATION_ID_FLAG &&
        WARREN__PROP_REPLY_TO == AMQP_BASIC_REPLY_TO_FLAG &&
        WARREN__PROP_EXPIRATION == AMQP_BASIC_EXPIRATION_FLAG &&
        WARREN__PROP_MESSAGE_ID == AMQP_BASIC_MESSAGE_ID_FLAG &&
        WARREN__PROP_TIMESTAMP == AMQP_BASIC_TIMESTAMP_FLAG &&
        WARREN__PROP_TYPE == AMQP_BASIC_TYPE_FLAG &&
        WARREN__PROP_USER_ID == AMQP_BASIC_USER_ID_FLAG &&
        WARREN__PROP_APP_ID == AMQP_BASIC_APP_ID_FLAG &&
        WARREN__PROP_CLUSTER_ID == AMQP_BASIC_CLUSTER_ID_FLAG,
    "warren's property flags are the content header's bits");

/* The kinds whose value is copied as it is, with their union member: the
 * same names on both sides. */
#define SCALARS(X)                                                             \
    X(BOOLEAN, boolean)                                                        \
    X(I8, i8)                                                                  \
    X(U8, u8)                                                                  \
    X(I16, i16)                                                                \
    X(U16, u16)                                                                \
    X(I32, i32)                                                                \
    X(U32, u32)                                                                \
    X(I64, i64)                                                                \
    X(U64, u64)                                                                \
    X(TIMESTAMP, u64)                                                          \
    X(F32, f32)                                                                \
    X(F64, f64)
#define COPY_SCALAR(KIND, member)                                              \
    case AMQP_FIELD_KIND_##KIND:                                               \
        out->value.member = in->value.member;                                  \
        return 0;

/* ---- rabbitmq-c to warren (deep) --------------------------------------- */

static int import_bytes(amqp_bytes_t in, warren__bytes *out, warren__arena *a) {
    if (in.len == 0) {
        out->len = 0;
        out->bytes = NULL;
        return 0;
    }
    warren__arena_alloc_bytes(a, in.len, out);
    if (out->bytes == NULL) {
        return WARREN_ERR_NOMEM;
    }
    memcpy(out->bytes, in.bytes, in.len);
    return 0;
}

static int import_value(const amqp_field_value_t *in, warren__field *out,
                        warren__arena *a) {
    out->kind = in->kind;
    switch (in->kind) {
        SCALARS(COPY_SCALAR)
    case AMQP_FIELD_KIND_DECIMAL:
        out->value.decimal.decimals = in->value.decimal.decimals;
        out->value.decimal.value = in->value.decimal.value;
        return 0;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        return import_bytes(in->value.bytes, &out->value.bytes, a);
    case AMQP_FIELD_KIND_ARRAY: {
        const amqp_array_t *arr = &in->value.array;
        warren__array *o = &out->value.array;
        o->num_entries = 0;
        o->entries = NULL;
        if (arr->entries == NULL || arr->num_entries <= 0) {
            return 0;
        }
        o->entries = warren__arena_alloc(a, sizeof *o->entries *
                                                (size_t)arr->num_entries);
        if (o->entries == NULL) {
            return WARREN_ERR_NOMEM;
        }
        o->num_entries = arr->num_entries;
        for (int i = 0; i < arr->num_entries; i++) {
            int rc = import_value(&arr->entries[i], &o->entries[i], a);
            if (rc != 0) {
                return rc;
            }
        }
        return 0;
    }
    case AMQP_FIELD_KIND_TABLE:
        return warren__amqp_table_import(&in->value.table, &out->value.table,
                                         a);
    case AMQP_FIELD_KIND_VOID:
        return 0;
    default:
        return WARREN_ERR_INVAL;
    }
}

int warren__amqp_table_import(const amqp_table_t *in, warren__table *out,
                              warren__arena *a) {
    out->num_entries = 0;
    out->entries = NULL;
    if (in->num_entries <= 0) {
        return 0;
    }
    out->entries =
        warren__arena_alloc(a, sizeof *out->entries * (size_t)in->num_entries);
    if (out->entries == NULL) {
        return WARREN_ERR_NOMEM;
    }
    out->num_entries = in->num_entries;
    for (int i = 0; i < in->num_entries; i++) {
        const amqp_table_entry_t *e = &in->entries[i];
        if (e->key.len == 0) {
            return WARREN_ERR_INVAL;
        }
        int rc = import_bytes(e->key, &out->entries[i].key, a);
        if (rc == 0) {
            rc = import_value(&e->value, &out->entries[i].value, a);
        }
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* The string properties, by their place in each struct. */
#define STR_PROPS(X)                                                           \
    X(CONTENT_TYPE, content_type)                                              \
    X(CONTENT_ENCODING, content_encoding)                                      \
    X(CORRELATION_ID, correlation_id)                                          \
    X(REPLY_TO, reply_to)                                                      \
    X(EXPIRATION, expiration)                                                  \
    X(MESSAGE_ID, message_id)                                                  \
    X(TYPE, type)                                                              \
    X(USER_ID, user_id)                                                        \
    X(APP_ID, app_id)                                                          \
    X(CLUSTER_ID, cluster_id)

int warren__amqp_props_import(const amqp_basic_properties_t *in,
                              warren__props *out, warren__arena *a) {
    memset(out, 0, sizeof *out);
    out->flags = (uint32_t)in->_flags;
    out->delivery_mode = in->delivery_mode;
    out->priority = in->priority;
    out->timestamp = in->timestamp;
    if ((in->_flags & AMQP_BASIC_HEADERS_FLAG) &&
        warren__amqp_table_import(&in->headers, &out->headers, a) != 0) {
        return WARREN_ERR_NOMEM;
    }
    /* Only fields whose flag is set hold anything; the rest is garbage.
     * A set but empty one keeps a valid pointer, as the frame's did. */
#define IMPORT(FLAG, name)                                                     \
    if (in->_flags & AMQP_BASIC_##FLAG##_FLAG) {                               \
        if (import_bytes(in->name, &out->name, a) != 0) {                      \
            return WARREN_ERR_NOMEM;                                           \
        }                                                                      \
        if (out->name.bytes == NULL) {                                         \
            out->name.bytes = (void *)"";                                      \
        }                                                                      \
    }
    STR_PROPS(IMPORT)
#undef IMPORT
    return 0;
}

/* ---- warren to rabbitmq-c (shallow) ------------------------------------ */

static amqp_bytes_t export_bytes(warren__bytes b) {
    amqp_bytes_t o = {b.len, b.bytes};
    return o;
}

static int export_value(const warren__field *in, amqp_field_value_t *out,
                        warren__arena *a) {
    out->kind = in->kind;
    switch (in->kind) {
        SCALARS(COPY_SCALAR)
    case WARREN__FIELD_DECIMAL:
        out->value.decimal.decimals = in->value.decimal.decimals;
        out->value.decimal.value = in->value.decimal.value;
        return 0;
    case WARREN__FIELD_UTF8:
    case WARREN__FIELD_BYTES:
        out->value.bytes = export_bytes(in->value.bytes);
        return 0;
    case WARREN__FIELD_ARRAY: {
        const warren__array *arr = &in->value.array;
        amqp_array_t *o = &out->value.array;
        o->num_entries = 0;
        o->entries = NULL;
        if (arr->num_entries <= 0) {
            return 0;
        }
        o->entries = warren__arena_alloc(a, sizeof *o->entries *
                                                (size_t)arr->num_entries);
        if (o->entries == NULL) {
            return WARREN_ERR_NOMEM;
        }
        o->num_entries = arr->num_entries;
        for (int i = 0; i < arr->num_entries; i++) {
            int rc = export_value(&arr->entries[i], &o->entries[i], a);
            if (rc != 0) {
                return rc;
            }
        }
        return 0;
    }
    case WARREN__FIELD_TABLE:
        return warren__amqp_table_export(&in->value.table, &out->value.table,
                                         a);
    default:
        /* VOID, or a kind the encoder will refuse itself. */
        return 0;
    }
}

int warren__amqp_table_export(const warren__table *in, amqp_table_t *out,
                              warren__arena *a) {
    out->num_entries = 0;
    out->entries = NULL;
    if (in->num_entries <= 0) {
        return 0;
    }
    out->entries =
        warren__arena_alloc(a, sizeof *out->entries * (size_t)in->num_entries);
    if (out->entries == NULL) {
        return WARREN_ERR_NOMEM;
    }
    out->num_entries = in->num_entries;
    for (int i = 0; i < in->num_entries; i++) {
        out->entries[i].key = export_bytes(in->entries[i].key);
        int rc = export_value(&in->entries[i].value, &out->entries[i].value, a);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

int warren__amqp_props_export(const warren__props *in,
                              amqp_basic_properties_t *out, warren__arena *a) {
    memset(out, 0, sizeof *out);
    out->_flags = (amqp_flags_t)in->flags;
    out->delivery_mode = in->delivery_mode;
    out->priority = in->priority;
    out->timestamp = in->timestamp;
#define EXPORT(FLAG, name) out->name = export_bytes(in->name);
    STR_PROPS(EXPORT)
#undef EXPORT
    if (in->flags & WARREN__PROP_HEADERS) {
        return warren__amqp_table_export(&in->headers, &out->headers, a);
    }
    return 0;
}

/* ---- helpers for the rest of warren ------------------------------------ */

int warren__session_url_parse(const char *url, size_t len, char *why,
                              size_t whylen) {
    struct amqp_connection_info ci;
    /* amqp_parse_url writes into its argument and leaves `ci` pointing into
     * it, so it gets a copy that dies here. */
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        snprintf(why, whylen, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    memcpy(copy, url, len);
    copy[len] = '\0';
    amqp_default_connection_info(&ci);
    int st = amqp_parse_url(copy, &ci);
    if (st == AMQP_STATUS_OK && (ci.host == NULL || ci.host[0] == '\0')) {
        st = AMQP_STATUS_BAD_URL;
    }
    if (st == AMQP_STATUS_OK && (ci.port <= 0 || ci.port > 65535)) {
        st = AMQP_STATUS_BAD_URL;
    }
    free(copy);
    if (st != AMQP_STATUS_OK) {
        snprintf(why, whylen, "rabbitmq-c: %s", amqp_error_string2(st));
        return WARREN_ERR_CONFIG;
    }
    return 0;
}

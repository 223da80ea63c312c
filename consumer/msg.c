/*
 * msg.c - the handler's read-only view of a delivery: properties, body and
 * typed header lookup over warren's field table (props.h).
 *
 * Every accessor tolerates a NULL message (returning NULL, 0 or an error)
 * so a buggy plugin gets an error instead of a crash. Header values are
 * classified once, here, so that every caller agrees on what counts as an
 * integer, a string or "other"; nothing is copied or allocated.
 */
#include "msg.h"

#include <stdint.h>
#include <string.h>

static const warren__field *find(const warren_msg *msg, const char *name) {
    return msg ? warren__table_find(msg->headers, name) : NULL;
}

/* Classifies `v` and, for integers and timestamps, stores the value. */
static warren_hdr_type classify(const warren__field *v, int64_t *num) {
    int64_t i = 0;
    warren_hdr_type t = WARREN_HDR_INT;
    switch (v->kind) {
    case WARREN__FIELD_I8:
        i = v->value.i8;
        break;
    case WARREN__FIELD_U8:
        i = v->value.u8;
        break;
    case WARREN__FIELD_I16:
        i = v->value.i16;
        break;
    case WARREN__FIELD_U16:
        i = v->value.u16;
        break;
    case WARREN__FIELD_I32:
        i = v->value.i32;
        break;
    case WARREN__FIELD_U32:
        i = v->value.u32;
        break;
    case WARREN__FIELD_I64:
        i = v->value.i64;
        break;
    case WARREN__FIELD_U64:
        /* Above INT64_MAX the value cannot be returned as int64 without
         * changing it, so it is reported as something else entirely. */
        if (v->value.u64 > (uint64_t)INT64_MAX) {
            return WARREN_HDR_OTHER;
        }
        i = (int64_t)v->value.u64;
        break;
    case WARREN__FIELD_TIMESTAMP:
        if (v->value.u64 > (uint64_t)INT64_MAX) {
            return WARREN_HDR_OTHER;
        }
        i = (int64_t)v->value.u64;
        t = WARREN_HDR_TIMESTAMP;
        break;
    case WARREN__FIELD_F32:
    case WARREN__FIELD_F64:
        return WARREN_HDR_DOUBLE;
    case WARREN__FIELD_BOOLEAN:
        return WARREN_HDR_BOOL;
    case WARREN__FIELD_UTF8:
        return WARREN_HDR_STRING;
    case WARREN__FIELD_BYTES:
        return WARREN_HDR_BYTES;
    default: /* table, array, decimal, void, and kinds from the future */
        return WARREN_HDR_OTHER;
    }
    if (num) {
        *num = i;
    }
    return t;
}

const void *warren_msg_body(const warren_msg *msg, size_t *len) {
    if (msg == NULL || msg->body == NULL) {
        if (len) {
            *len = 0;
        }
        return "";
    }
    if (len) {
        *len = msg->body_len;
    }
    return msg->body;
}

const char *warren_msg_id(const warren_msg *msg) {
    return msg ? msg->id : NULL;
}

const char *warren_msg_queue(const warren_msg *msg) {
    return msg ? msg->queue : NULL;
}

const char *warren_msg_exchange(const warren_msg *msg) {
    return msg ? msg->exchange : NULL;
}

const char *warren_msg_routing_key(const warren_msg *msg) {
    return msg ? msg->routing_key : NULL;
}

const char *warren_msg_content_type(const warren_msg *msg) {
    return msg ? msg->content_type : NULL;
}

const char *warren_msg_correlation_id(const warren_msg *msg) {
    return msg ? msg->correlation_id : NULL;
}

int warren_msg_attempt(const warren_msg *msg) {
    return msg ? msg->attempt : 0;
}

int warren_msg_redelivered(const warren_msg *msg) {
    return msg ? msg->redelivered : 0;
}

warren_hdr_type warren_msg_header_type(const warren_msg *msg,
                                       const char *name) {
    const warren__field *v = find(msg, name);
    return v ? classify(v, NULL) : WARREN_HDR_NONE;
}

int warren_msg_header_str(const warren_msg *msg, const char *name,
                          const char **val, size_t *len) {
    const warren__field *v = find(msg, name);
    if (v == NULL) {
        return WARREN_ERR_NOT_FOUND;
    }
    warren_hdr_type t = classify(v, NULL);
    if (t != WARREN_HDR_STRING && t != WARREN_HDR_BYTES) {
        return WARREN_ERR_INVAL;
    }
    if (val) {
        /* An empty value may come with a NULL pointer from the decoder;
         * callers are promised a pointer they can pass to memcpy. */
        *val = v->value.bytes.bytes ? (const char *)v->value.bytes.bytes : "";
    }
    if (len) {
        *len = v->value.bytes.len;
    }
    return 0;
}

int warren_msg_header_int(const warren_msg *msg, const char *name,
                          int64_t *out) {
    const warren__field *v = find(msg, name);
    int64_t i = 0;
    if (v == NULL) {
        return WARREN_ERR_NOT_FOUND;
    }
    warren_hdr_type t = classify(v, &i);
    if (t != WARREN_HDR_INT && t != WARREN_HDR_TIMESTAMP) {
        return WARREN_ERR_INVAL;
    }
    if (out) {
        *out = i;
    }
    return 0;
}

int warren_msg_header_double(const warren_msg *msg, const char *name,
                             double *out) {
    const warren__field *v = find(msg, name);
    if (v == NULL) {
        return WARREN_ERR_NOT_FOUND;
    }
    if (classify(v, NULL) != WARREN_HDR_DOUBLE) {
        return WARREN_ERR_INVAL;
    }
    if (out) {
        *out =
            v->kind == WARREN__FIELD_F32 ? (double)v->value.f32 : v->value.f64;
    }
    return 0;
}

int warren_msg_header_bool(const warren_msg *msg, const char *name, int *out) {
    const warren__field *v = find(msg, name);
    if (v == NULL) {
        return WARREN_ERR_NOT_FOUND;
    }
    if (classify(v, NULL) != WARREN_HDR_BOOL) {
        return WARREN_ERR_INVAL;
    }
    if (out) {
        *out = v->value.boolean ? 1 : 0;
    }
    return 0;
}

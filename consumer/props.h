/*
 * props.h - message properties and header tables in warren's own types
 * (internal), and the arena their memory lives in.
 *
 * These are what crosses the AMQP seam: the session (session.c, with its
 * conversions in session_amqp.c) turns rabbitmq-c's decoded properties into
 * a warren__props when a message is read and back when one is published, so
 * nothing but the session files includes rabbitmq-c. The types follow AMQP
 * 0-9-1 field tables as RabbitMQ speaks them, member for member, and the
 * field kinds are its wire type letters. Nothing here allocates except the
 * arena; a table or props points into memory someone else owns (an arena,
 * a frame, a static) and says nothing about who that is.
 */
#ifndef WARREN_PROPS_H
#define WARREN_PROPS_H

#include <stddef.h>
#include <stdint.h>

/* A byte string, not NUL-terminated. An empty one may have bytes NULL. */
typedef struct {
    size_t len;
    void *bytes;
} warren__bytes;

/* The kinds of a header value: RabbitMQ's field type letters. */
typedef enum {
    WARREN__FIELD_BOOLEAN = 't',
    WARREN__FIELD_I8 = 'b',
    WARREN__FIELD_U8 = 'B',
    WARREN__FIELD_I16 = 's',
    WARREN__FIELD_U16 = 'u',
    WARREN__FIELD_I32 = 'I',
    WARREN__FIELD_U32 = 'i',
    WARREN__FIELD_I64 = 'l',
    WARREN__FIELD_U64 = 'L',
    WARREN__FIELD_F32 = 'f',
    WARREN__FIELD_F64 = 'd',
    WARREN__FIELD_DECIMAL = 'D',
    WARREN__FIELD_UTF8 = 'S',
    WARREN__FIELD_ARRAY = 'A',
    WARREN__FIELD_TIMESTAMP = 'T',
    WARREN__FIELD_TABLE = 'F',
    WARREN__FIELD_VOID = 'V',
    WARREN__FIELD_BYTES = 'x'
} warren__field_kind;

typedef struct {
    uint8_t decimals; /* where the decimal point goes */
    uint32_t value;
} warren__decimal;

typedef struct warren__table {
    int num_entries;
    struct warren__table_entry *entries;
} warren__table;

typedef struct warren__array {
    int num_entries;
    struct warren__field *entries;
} warren__array;

/* One header value; `kind` (a warren__field_kind) says which member. */
typedef struct warren__field {
    uint8_t kind;
    union {
        int boolean;
        int8_t i8;
        uint8_t u8;
        int16_t i16;
        uint16_t u16;
        int32_t i32;
        uint32_t u32;
        int64_t i64;
        uint64_t u64; /* also TIMESTAMP (seconds) */
        float f32;
        double f64;
        warren__decimal decimal;
        warren__bytes bytes; /* UTF8, BYTES */
        warren__table table;
        warren__array array;
    } value;
} warren__field;

typedef struct warren__table_entry {
    warren__bytes key;
    warren__field value;
} warren__table_entry;

/* Which properties a warren__props carries: a member whose flag is clear
 * holds nothing meaningful. */
enum {
    WARREN__PROP_CONTENT_TYPE = 1 << 15,
    WARREN__PROP_CONTENT_ENCODING = 1 << 14,
    WARREN__PROP_HEADERS = 1 << 13,
    WARREN__PROP_DELIVERY_MODE = 1 << 12,
    WARREN__PROP_PRIORITY = 1 << 11,
    WARREN__PROP_CORRELATION_ID = 1 << 10,
    WARREN__PROP_REPLY_TO = 1 << 9,
    WARREN__PROP_EXPIRATION = 1 << 8,
    WARREN__PROP_MESSAGE_ID = 1 << 7,
    WARREN__PROP_TIMESTAMP = 1 << 6,
    WARREN__PROP_TYPE = 1 << 5,
    WARREN__PROP_USER_ID = 1 << 4,
    WARREN__PROP_APP_ID = 1 << 3,
    WARREN__PROP_CLUSTER_ID = 1 << 2
};

/* The basic-class properties of a message. */
typedef struct {
    uint32_t flags; /* WARREN__PROP_* of the members that are set */
    warren__bytes content_type;
    warren__bytes content_encoding;
    warren__table headers;
    uint8_t delivery_mode;
    uint8_t priority;
    warren__bytes correlation_id;
    warren__bytes reply_to;
    warren__bytes expiration;
    warren__bytes message_id;
    uint64_t timestamp;
    warren__bytes type;
    warren__bytes user_id;
    warren__bytes app_id;
    warren__bytes cluster_id;
} warren__props;

/* `s` as a byte string (not copied; its NUL not counted). */
warren__bytes warren__cstr_bytes(const char *s);

/* Finds header `name` in `t`; NULL if absent or `t` is NULL. */
const warren__field *warren__table_find(const warren__table *t,
                                        const char *name);

/* ---- the arena ------------------------------------------------------- */

/* Memory for tables, strings and props that all go at once. Small requests
 * are cut from pages of `pagesize` bytes that recycle() keeps for reuse;
 * larger ones get their own block, freed by recycle(). Zero it or init()
 * it before use. */
typedef struct {
    size_t pagesize;
    void **pages;
    int n_pages, cap_pages, next_page;
    void **large;
    int n_large, cap_large;
    char *block;
    size_t used;
} warren__arena;

void warren__arena_init(warren__arena *a, size_t pagesize);
/* Forgets every allocation, keeping the pages for reuse. */
void warren__arena_recycle(warren__arena *a);
/* Frees everything; the arena may be init()ed again. NULL is a no-op. */
void warren__arena_empty(warren__arena *a);
/* `size` bytes aligned for any member of the types above; NULL when out of
 * memory (size 0 also gives NULL). */
void *warren__arena_alloc(warren__arena *a, size_t size);
/* Sets `out` to `len` bytes from the arena; out->bytes is NULL when out of
 * memory (or `len` is 0). */
void warren__arena_alloc_bytes(warren__arena *a, size_t len,
                               warren__bytes *out);

#endif /* WARREN_PROPS_H */

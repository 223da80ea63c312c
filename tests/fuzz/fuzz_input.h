/*
 * fuzz_input.h - turns fuzzer bytes into the AMQP values warren reads.
 *
 * Header tables reach warren only through rabbitmq-c's decoder and the
 * session's import into warren's own types (session_amqp.c), so the common
 * path feeds raw bytes to amqp_decode_table() and imports the result. That
 * decoder is not instrumented (Debian's build), which leaves libFuzzer blind
 * inside it; the second path builds a table entry by entry from the bytes in
 * code that is instrumented, so every field kind reaches the lookups
 * quickly.
 */
#ifndef WARREN_FUZZ_INPUT_H
#define WARREN_FUZZ_INPUT_H

#include "session_amqp.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static int take(fuzz_in *in, size_t k, const uint8_t **out) {
    if (in->n < k) {
        return -1;
    }
    *out = in->p;
    in->p += k;
    in->n -= k;
    return 0;
}

static unsigned take_u8(fuzz_in *in) {
    const uint8_t *b;
    return take(in, 1, &b) == 0 ? b[0] : 0;
}

static uint64_t take_u64(fuzz_in *in) {
    const uint8_t *b;
    uint64_t v = 0;
    if (take(in, 8, &b) == 0) {
        memcpy(&v, b, 8);
    }
    return v;
}

static warren__bytes take_bytes(fuzz_in *in, warren__arena *pool) {
    warren__bytes out = {0, NULL};
    size_t k = take_u8(in);
    const uint8_t *b;
    if (k > in->n) {
        k = in->n;
    }
    /* Copied into the pool so ASan flags reads past the exact length. */
    if (take(in, k, &b) == 0 && k > 0) {
        out.bytes = warren__arena_alloc(pool, k);
        if (out.bytes != NULL) {
            memcpy(out.bytes, b, k);
            out.len = k;
        }
    }
    return out;
}

/* Builds up to 16 entries of every field kind, nesting one level. */
static void build_table(fuzz_in *in, warren__arena *pool, warren__table *t,
                        int depth) {
    int n = (int)(take_u8(in) % 17);
    t->num_entries = 0;
    t->entries =
        n ? warren__arena_alloc(pool, sizeof *t->entries * (size_t)n) : NULL;
    if (t->entries == NULL) {
        return;
    }
    for (int i = 0; i < n && in->n > 0; i++) {
        warren__table_entry *e = &t->entries[i];
        uint64_t v;
        memset(e, 0, sizeof *e);
        e->key = take_bytes(in, pool);
        static const uint8_t kinds[] = {
            WARREN__FIELD_BOOLEAN, WARREN__FIELD_I8,    WARREN__FIELD_U8,
            WARREN__FIELD_I16,     WARREN__FIELD_U16,   WARREN__FIELD_I32,
            WARREN__FIELD_U32,     WARREN__FIELD_I64,   WARREN__FIELD_U64,
            WARREN__FIELD_F32,     WARREN__FIELD_F64,   WARREN__FIELD_DECIMAL,
            WARREN__FIELD_UTF8,    WARREN__FIELD_ARRAY, WARREN__FIELD_TIMESTAMP,
            WARREN__FIELD_TABLE,   WARREN__FIELD_VOID,  WARREN__FIELD_BYTES};
        e->value.kind = kinds[take_u8(in) % sizeof kinds];
        switch (e->value.kind) {
        case WARREN__FIELD_UTF8:
        case WARREN__FIELD_BYTES:
            e->value.value.bytes = take_bytes(in, pool);
            break;
        case WARREN__FIELD_TABLE:
            if (depth < 2) {
                build_table(in, pool, &e->value.value.table, depth + 1);
            } else {
                e->value.kind = WARREN__FIELD_VOID;
            }
            break;
        case WARREN__FIELD_ARRAY:
            e->value.value.array.num_entries = 0;
            e->value.value.array.entries = NULL;
            break;
        default:
            v = take_u64(in);
            memcpy(&e->value.value, &v, sizeof v);
            break;
        }
        t->num_entries = i + 1;
    }
}

/* Fills `t` from the next bytes: the first byte picks rabbitmq-c's decoder
 * and the session's import (even) or build_table (odd). Always leaves a
 * valid table, maybe empty. */
static void fuzz_table(fuzz_in *in, warren__arena *pool, warren__table *t) {
    unsigned mode = take_u8(in);
    t->num_entries = 0;
    t->entries = NULL;
    if (mode & 1) {
        build_table(in, pool, t, 0);
        return;
    }
    size_t len = (size_t)take_u8(in) << 8;
    len |= take_u8(in);
    if (len > in->n) {
        len = in->n;
    }
    const uint8_t *b;
    if (take(in, len, &b) != 0) {
        return;
    }
    amqp_bytes_t enc = {len, (void *)(uintptr_t)b};
    amqp_pool_t frame;
    amqp_table_t decoded;
    size_t off = 0;
    init_amqp_pool(&frame, 4096);
    if (amqp_decode_table(enc, &frame, &decoded, &off) != AMQP_STATUS_OK ||
        warren__amqp_table_import(&decoded, t, pool) != 0) {
        t->num_entries = 0;
        t->entries = NULL;
    }
    empty_amqp_pool(&frame);
}

#endif /* WARREN_FUZZ_INPUT_H */

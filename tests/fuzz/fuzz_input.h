/*
 * fuzz_input.h - turns fuzzer bytes into the AMQP values warren reads.
 *
 * Header tables reach warren only through rabbitmq-c's decoder, so the
 * common path feeds raw bytes to amqp_decode_table(). That decoder is not
 * instrumented (Debian's build), which leaves libFuzzer blind inside it; the
 * second path builds a table entry by entry from the bytes in code that is
 * instrumented, so every field kind reaches the lookups quickly.
 */
#ifndef WARREN_FUZZ_INPUT_H
#define WARREN_FUZZ_INPUT_H

#include <amqp.h>
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

static amqp_bytes_t take_bytes(fuzz_in *in, amqp_pool_t *pool) {
    amqp_bytes_t out = {0, NULL};
    size_t k = take_u8(in);
    const uint8_t *b;
    if (k > in->n) {
        k = in->n;
    }
    /* Copied into the pool so ASan flags reads past the exact length. */
    if (take(in, k, &b) == 0 && k > 0) {
        out.bytes = amqp_pool_alloc(pool, k);
        if (out.bytes != NULL) {
            memcpy(out.bytes, b, k);
            out.len = k;
        }
    }
    return out;
}

/* Builds up to 16 entries of every field kind, nesting one level. */
static void build_table(fuzz_in *in, amqp_pool_t *pool, amqp_table_t *t,
                        int depth) {
    int n = (int)(take_u8(in) % 17);
    t->num_entries = 0;
    t->entries =
        n ? amqp_pool_alloc(pool, sizeof *t->entries * (size_t)n) : NULL;
    if (t->entries == NULL) {
        return;
    }
    for (int i = 0; i < n && in->n > 0; i++) {
        amqp_table_entry_t *e = &t->entries[i];
        uint64_t v;
        memset(e, 0, sizeof *e);
        e->key = take_bytes(in, pool);
        static const uint8_t kinds[] = {
            AMQP_FIELD_KIND_BOOLEAN,   AMQP_FIELD_KIND_I8,
            AMQP_FIELD_KIND_U8,        AMQP_FIELD_KIND_I16,
            AMQP_FIELD_KIND_U16,       AMQP_FIELD_KIND_I32,
            AMQP_FIELD_KIND_U32,       AMQP_FIELD_KIND_I64,
            AMQP_FIELD_KIND_U64,       AMQP_FIELD_KIND_F32,
            AMQP_FIELD_KIND_F64,       AMQP_FIELD_KIND_DECIMAL,
            AMQP_FIELD_KIND_UTF8,      AMQP_FIELD_KIND_ARRAY,
            AMQP_FIELD_KIND_TIMESTAMP, AMQP_FIELD_KIND_TABLE,
            AMQP_FIELD_KIND_VOID,      AMQP_FIELD_KIND_BYTES};
        e->value.kind = kinds[take_u8(in) % sizeof kinds];
        switch (e->value.kind) {
        case AMQP_FIELD_KIND_UTF8:
        case AMQP_FIELD_KIND_BYTES:
            e->value.value.bytes = take_bytes(in, pool);
            break;
        case AMQP_FIELD_KIND_TABLE:
            if (depth < 2) {
                build_table(in, pool, &e->value.value.table, depth + 1);
            } else {
                e->value.kind = AMQP_FIELD_KIND_VOID;
            }
            break;
        case AMQP_FIELD_KIND_ARRAY:
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
 * (even) or build_table (odd). Always leaves a valid table, maybe empty. */
static void fuzz_table(fuzz_in *in, amqp_pool_t *pool, amqp_table_t *t) {
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
    size_t off = 0;
    if (amqp_decode_table(enc, pool, t, &off) != AMQP_STATUS_OK) {
        t->num_entries = 0;
        t->entries = NULL;
    }
}

#endif /* WARREN_FUZZ_INPUT_H */

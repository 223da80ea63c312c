/*
 * fuzz_headers.c - libFuzzer target for header decoding and lookup.
 *
 * A table arrives from the broker as bytes; warren_msg_header_* must answer
 * every lookup on it (present or not, any kind, keys with NULs or no
 * terminator) without reading out of bounds, and the answers must agree
 * with each other: a header typed STRING is readable as a string, INT as an
 * integer, and so on.
 */
#include "fuzz_input.h"
#include "msg.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const warren_msg *msg, const char *name) {
    const char *s = NULL;
    size_t len = 0;
    int64_t i = 0;
    double d = 0;
    int b = 0;
    warren_hdr_type t = warren_msg_header_type(msg, name);
    int rs = warren_msg_header_str(msg, name, &s, &len);
    int ri = warren_msg_header_int(msg, name, &i);
    int rd = warren_msg_header_double(msg, name, &d);
    int rb = warren_msg_header_bool(msg, name, &b);
    if ((t == WARREN_HDR_STRING || t == WARREN_HDR_BYTES) != (rs == 0)) {
        abort();
    }
    if ((t == WARREN_HDR_INT || t == WARREN_HDR_TIMESTAMP) != (ri == 0)) {
        abort();
    }
    if ((t == WARREN_HDR_DOUBLE) != (rd == 0) ||
        (t == WARREN_HDR_BOOL) != (rb == 0)) {
        abort();
    }
    if (rs == 0 && len > 0) {
        /* Touch every byte the lookup claims is there. */
        volatile unsigned sum = 0;
        for (size_t k = 0; k < len; k++) {
            sum += (unsigned char)s[k];
        }
        (void)sum;
    }
    if (msg != NULL && t == WARREN_HDR_NONE &&
        warren__table_find(msg->headers, name) != NULL) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    warren__arena pool;
    warren__table headers;
    struct warren_msg msg;
    char name[260];
    warren__arena_init(&pool, 4096);
    fuzz_table(&in, &pool, &headers);
    memset(&msg, 0, sizeof msg);
    msg.body = (const uint8_t *)"";
    msg.headers = &headers;
    /* Every key present, as a C string (cut at its first NUL) ... */
    for (int i = 0; i < headers.num_entries; i++) {
        const warren__bytes *k = &headers.entries[i].key;
        size_t n = k->len < sizeof name - 1 ? k->len : sizeof name - 1;
        if (n > 0) {
            memcpy(name, k->bytes, n);
        }
        name[n] = '\0';
        check(&msg, name);
    }
    /* ... and names that are absent, empty, or warren's own. */
    check(&msg, "");
    check(&msg, "x-warren-attempt");
    check(&msg, "x-death");
    check(NULL, "x");
    warren__arena_empty(&pool);
    return 0;
}

/*
 * fuzz_msgid.c - libFuzzer target for message-id extraction.
 *
 * warren__msgid_extract() reads three things a publisher controls: the
 * message_id property, a header, and a JSON body. The input picks the
 * policy, its argument (header name or JSON path), the property, a header
 * table and the body; the target then checks msgid.h's promises: a USE
 * verdict yields a NUL-terminated, non-empty, valid UTF-8 id of at most
 * WARREN__ID_MAX bytes, and every other verdict a NUL-terminated reason.
 */
#include "fuzz_input.h"
#include "msgid.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Copies the next length-prefixed string, NULs removed, into a malloc'd
 * C string (the config loader never lets a NUL into these either). */
static char *take_cstr(fuzz_in *in, size_t max) {
    size_t k = take_u8(in);
    const uint8_t *b;
    if (k > max) {
        k = max;
    }
    if (k > in->n) {
        k = in->n;
    }
    char *s = malloc(k + 1);
    if (s == NULL || take(in, k, &b) != 0) {
        free(s);
        return NULL;
    }
    size_t j = 0;
    for (size_t i = 0; i < k; i++) {
        if (b[i] != 0) {
            s[j++] = (char)b[i];
        }
    }
    s[j] = '\0';
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    warren__consumer_cfg c;
    struct warren_msg msg;
    warren__arena pool;
    warren__table headers;
    char out[WARREN__ID_MAX + 1];
    char why[256];
    unsigned sel = take_u8(&in);

    memset(&c, 0, sizeof c);
    c.id_source = (warren__id_source)(sel % 4);
    c.on_missing_id = (warren__missing_id)((sel >> 2) % 3);
    c.id_arg = take_cstr(&in, 255);
    /* The property may be absent, and may be longer than an id may be
     * (a long string property is up to 255 bytes on the wire). */
    char *prop = (sel & 0x20) ? take_cstr(&in, 300) : NULL;
    warren__arena_init(&pool, 4096);
    fuzz_table(&in, &pool, &headers);

    /* The rest is the body, copied so reads past its end are caught. */
    uint8_t *body = malloc(in.n ? in.n : 1);
    if (body == NULL) {
        goto done;
    }
    if (in.n > 0) {
        memcpy(body, in.p, in.n);
    }
    memset(&msg, 0, sizeof msg);
    msg.queue = "q";
    msg.exchange = "";
    msg.routing_key = "q";
    msg.message_id_prop = prop;
    msg.body = body;
    msg.body_len = in.n;
    msg.attempt = 1;
    msg.headers = &headers;

    memset(out, 'X', sizeof out);
    memset(why, 'Y', sizeof why);
    why[0] = '\0';
    warren__id_verdict v =
        warren__msgid_extract(&c, &msg, out, why, sizeof why);
    if (v == WARREN__ID_USE) {
        size_t n = strnlen(out, sizeof out);
        if (n == 0 || n > WARREN__ID_MAX || !warren__utf8_valid(out, n)) {
            abort();
        }
    } else if (v == WARREN__ID_NONE || v == WARREN__ID_REJECT) {
        if (strnlen(why, sizeof why) >= sizeof why || why[0] == '\0') {
            abort();
        }
    } else {
        abort();
    }
    free(body);
done:
    warren__arena_empty(&pool);
    free(prop);
    free(c.id_arg);
    return 0;
}

/*
 * fuzz_dlq.c - libFuzzer target for the DLQ export/import line parser.
 *
 * `warren dlq import` reads files an operator may have edited by hand, so
 * warren__dlq_from_json must refuse any line cleanly: no crash, no leak, an
 * error text within its buffer. A line it accepts is encoded again and must
 * parse a second time (the round trip the export/import test relies on).
 */
#include "dlq.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    warren__arena pool;
    warren__props p;
    uint8_t *body = NULL;
    size_t len = 0;
    char err[256];
    warren__arena_init(&pool, 4096);
    memset(&p, 0, sizeof p);
    if (warren__dlq_from_json((const char *)data, size, &pool, &p, &body, &len,
                              err, sizeof err) == 0) {
        cJSON *again = warren__dlq_to_json(&p, body, len);
        char *line = again ? cJSON_PrintUnformatted(again) : NULL;
        if (line) {
            warren__arena pool2;
            warren__props p2;
            uint8_t *body2 = NULL;
            size_t len2 = 0;
            warren__arena_init(&pool2, 4096);
            memset(&p2, 0, sizeof p2);
            if (warren__dlq_from_json(line, strlen(line), &pool2, &p2, &body2,
                                      &len2, err, sizeof err) != 0 ||
                len2 != len || (len && memcmp(body, body2, len) != 0)) {
                abort(); /* what export writes, import must read back */
            }
            free(body2);
            warren__arena_empty(&pool2);
            cJSON_free(line);
        }
        cJSON_Delete(again);
        free(body);
    } else if (strlen(err) >= sizeof err) {
        abort();
    }
    warren__arena_empty(&pool);
    return 0;
}

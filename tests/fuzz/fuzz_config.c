/*
 * fuzz_config.c - libFuzzer target for the configuration loader.
 *
 * config.c promises that no input, however malformed, makes it crash, leak
 * or write past its error buffer: the input is handed to
 * warren_config_parse() as a NUL-terminated string, and on success every
 * accessor is exercised so ASan sees reads of every parsed field.
 */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512];
    warren_config *cfg = NULL;
    char *json = malloc(size + 1);
    if (json == NULL) {
        return 0;
    }
    memcpy(json, data, size);
    json[size] = '\0';
    /* A small error buffer as well: truncation must stay in bounds. */
    if (warren_config_parse(json, "fuzz.json", &cfg, err, sizeof err) == 0) {
        int n = warren_config_consumer_count(cfg);
        for (int i = 0; i < n; i++) {
            const char *q = warren_config_consumer_queue(cfg, i);
            if (q == NULL || strlen(q) == 0) {
                abort(); /* the loader promises non-empty queue names */
            }
        }
        warren_config_free(cfg);
    } else if (strlen(err) >= sizeof err) {
        abort();
    }
    cfg = NULL;
    char tiny[8];
    if (warren_config_parse(json, "f", &cfg, tiny, sizeof tiny) == 0) {
        warren_config_free(cfg);
    }
    free(json);
    return 0;
}

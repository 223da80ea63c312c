/*
 * builtin.c - handlers compiled into warren, for benchmarks, smoke tests and
 * demonstrating the retry and dead-letter paths without writing code.
 *
 * "noop" acks everything; "fail-once" retries the first attempt and acks
 * later ones; "retry" always retries; "dead" always dead-letters. None of
 * them reads the body or keeps state between messages.
 */
#include "handler.h"

#include <stdio.h>
#include <string.h>

#define BUILTIN_NAMES "noop, fail-once, retry, dead"

static warren_result noop(const warren_msg *msg, warren_ctx *ctx, void *user) {
    (void)msg;
    (void)ctx;
    (void)user;
    return WARREN_ACK;
}

static warren_result fail_once(const warren_msg *msg, warren_ctx *ctx,
                               void *user) {
    (void)user;
    if (warren_msg_attempt(msg) <= 1) {
        warren_ctx_set_error(ctx, "builtin:fail-once fails attempt 1");
        return WARREN_RETRY;
    }
    return WARREN_ACK;
}

static warren_result always_retry(const warren_msg *msg, warren_ctx *ctx,
                                  void *user) {
    (void)msg;
    (void)user;
    warren_ctx_set_error(ctx, "builtin:retry always retries");
    return WARREN_RETRY;
}

static warren_result always_dead(const warren_msg *msg, warren_ctx *ctx,
                                 void *user) {
    (void)msg;
    (void)user;
    warren_ctx_set_error(ctx, "builtin:dead always dead-letters");
    return WARREN_DEAD;
}

static const struct {
    const char *name;
    warren_handler_fn fn;
} builtins[] = {
    {"noop", noop},
    {"fail-once", fail_once},
    {"retry", always_retry},
    {"dead", always_dead},
};

int warren__builtin_load(const char *name, warren__handler_parts *out,
                         char *err, size_t errlen) {
    for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++) {
        if (strcmp(name, builtins[i].name) == 0) {
            memset(out, 0, sizeof *out);
            out->fn = builtins[i].fn;
            return 0;
        }
    }
    if (err && errlen) {
        snprintf(err, errlen,
                 "handler \"builtin:%.100s\": no such builtin; the builtins "
                 "are: " BUILTIN_NAMES,
                 name);
    }
    return name[0] ? WARREN_ERR_HANDLER : WARREN_ERR_CONFIG;
}

/*
 * builtin.c - handlers compiled into warren, for benchmarks, smoke tests and
 * demonstrating the retry and dead-letter paths without writing code.
 *
 * "noop" acks everything; "fail-once" retries the first attempt and acks
 * later ones; "retry" always retries; "dead" always dead-letters;
 * "sleep:MS" sleeps MS milliseconds (or as many as a body that is a decimal
 * number says) and acks, ignoring its deadline on purpose: it is how the
 * tests make an in-process handler overstay. None keeps state between
 * messages.
 */
#include "handler.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUILTIN_NAMES "noop, fail-once, retry, dead, sleep:MS"
#define SLEEP_MAX_MS 3600000L

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

/* A body of 1..7 digits overrides the configured time, so one queue can
 * carry both slow and fast messages. */
static long body_ms(const warren_msg *msg, long dflt) {
    size_t len;
    const char *b = (const char *)warren_msg_body(msg, &len);
    if (b == NULL || len == 0 || len > 7) {
        return dflt;
    }
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (b[i] < '0' || b[i] > '9') {
            return dflt;
        }
        v = v * 10 + (b[i] - '0');
    }
    return v > SLEEP_MAX_MS ? SLEEP_MAX_MS : v;
}

static warren_result sleep_then_ack(const warren_msg *msg, warren_ctx *ctx,
                                    void *user) {
    (void)ctx;
    long ms = body_ms(msg, (long)(intptr_t)user);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return WARREN_ACK;
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
    if (strncmp(name, "sleep:", 6) == 0) {
        char *end;
        errno = 0;
        long ms = strtol(name + 6, &end, 10);
        if (errno == 0 && end != name + 6 && *end == '\0' && ms >= 0 &&
            ms <= SLEEP_MAX_MS) {
            memset(out, 0, sizeof *out);
            out->fn = sleep_then_ack;
            out->user = (void *)(intptr_t)ms;
            return 0;
        }
        if (err && errlen) {
            snprintf(err, errlen,
                     "handler \"builtin:%.100s\": expected sleep:MS with MS "
                     "from 0 to %ld",
                     name, SLEEP_MAX_MS);
        }
        return WARREN_ERR_CONFIG;
    }
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

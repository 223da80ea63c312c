/*
 * log.c - the process-wide log callback and the redaction every line passes
 * through. The library never writes anywhere itself: without a callback,
 * nothing is logged. Formatting happens only when the level is enabled.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct warren_log_event {
    warren_log_level level;
    const char *event;
    const char *text;
    const char *queue;
    const char *message_id;
    const char *outcome;
    int64_t attempt;
    int64_t ms;
    const char *stream;
    int truncated;
};

static warren_log_fn log_fn;
static void *log_user;
static warren_log_level log_min = WARREN_LOG_INFO;

void warren_log_set(warren_log_fn fn, void *user, warren_log_level min_level) {
    log_fn = fn;
    log_user = user;
    log_min = min_level;
}

int warren_log_level_parse(const char *s, warren_log_level *out) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (s && strcasecmp(s, names[i]) == 0) {
            *out = (warren_log_level)i;
            return 0;
        }
    }
    return WARREN_ERR_INVAL;
}

int warren__log_enabled(warren_log_level level) {
    return log_fn != NULL && level >= log_min;
}

void warren__redact_text(const char *in, char *out, size_t outlen) {
    size_t o = 0;
    if (outlen == 0) {
        return;
    }
    for (size_t i = 0; in[i] != '\0' && o + 1 < outlen;) {
        /* At "://", look for "user:password@" before the next '/', space or
         * quote, and replace the password. */
        if (strncmp(in + i, "://", 3) == 0) {
            size_t start = i + 3, colon = 0, at = 0, j = start;
            for (; in[j] != '\0' && !strchr("/ \t\"'?#", in[j]); j++) {
                if (in[j] == ':' && colon == 0) {
                    colon = j;
                } else if (in[j] == '@') {
                    at = j;
                }
            }
            if (colon != 0 && at > colon) {
                size_t keep = colon + 1 - i;
                if (o + keep + 4 >= outlen) {
                    break;
                }
                memcpy(out + o, in + i, keep);
                o += keep;
                memcpy(out + o, "***", 3);
                o += 3;
                i = at;
                continue;
            }
        }
        out[o++] = in[i++];
    }
    out[o] = '\0';
}

char *warren_redact_url(const char *url, char *out, size_t outlen) {
    warren__redact_text(url ? url : "", out, outlen);
    return out;
}

void warren__logf(warren_log_level level, const warren__log_fields *f,
                  const char *fmt, ...) {
    char raw[2048], clean[2048];
    va_list ap;
    if (!warren__log_enabled(level)) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    warren__redact_text(raw, clean, sizeof clean);
    warren_log_event ev = {level, NULL, clean, NULL, NULL,
                           NULL,  -1,   -1,    NULL, 0};
    if (f) {
        ev.event = f->event;
        ev.queue = f->queue;
        ev.message_id = f->message_id;
        ev.outcome = f->outcome;
        ev.attempt = f->attempt;
        ev.ms = f->ms;
    }
    log_fn(&ev, log_user);
}

void warren__log_output(warren_log_level level, const warren__log_fields *f,
                        const char *stream, int truncated, const char *text) {
    char clean[2048];
    if (!warren__log_enabled(level)) {
        return;
    }
    warren__redact_text(text, clean, sizeof clean);
    warren_log_event ev = {level, NULL, clean, NULL,   NULL,
                           NULL,  -1,   -1,    stream, truncated};
    if (f) {
        ev.event = f->event;
        ev.queue = f->queue;
        ev.message_id = f->message_id;
        ev.outcome = f->outcome;
        ev.attempt = f->attempt;
        ev.ms = f->ms;
    }
    log_fn(&ev, log_user);
}

const char *warren_log_event_name(const warren_log_event *ev) {
    return ev->event;
}
const char *warren_log_event_text(const warren_log_event *ev) {
    return ev->text;
}
const char *warren_log_event_queue(const warren_log_event *ev) {
    return ev->queue;
}
const char *warren_log_event_message_id(const warren_log_event *ev) {
    return ev->message_id;
}
const char *warren_log_event_outcome(const warren_log_event *ev) {
    return ev->outcome;
}
int64_t warren_log_event_attempt(const warren_log_event *ev) {
    return ev->attempt;
}
int64_t warren_log_event_ms(const warren_log_event *ev) {
    return ev->ms;
}
warren_log_level warren_log_event_level(const warren_log_event *ev) {
    return ev->level;
}
const char *warren_log_event_stream(const warren_log_event *ev) {
    return ev->stream;
}
int warren_log_event_truncated(const warren_log_event *ev) {
    return ev->truncated;
}

int64_t warren__now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t warren__mono_ms(void) {
    return warren__mono_us() / 1000;
}

int64_t warren__mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

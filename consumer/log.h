/*
 * log.h - internal logging entry points.
 *
 * warren__log() checks the level before formatting anything, so a debug
 * line on the hot path costs one comparison when debug is off. Text passed
 * here is redacted (URL passwords) before it reaches the callback.
 */
#ifndef WARREN_LOG_H
#define WARREN_LOG_H

#include "warren.h"

#include <stdint.h>

/* Fields of a structured event; NULL / -1 where they do not apply. */
typedef struct {
    const char *event;
    const char *queue;
    const char *message_id;
    const char *outcome;
    int64_t attempt;
    int64_t ms;
} warren__log_fields;

int warren__log_enabled(warren_log_level level);

void warren__logf(warren_log_level level, const warren__log_fields *f,
                  const char *fmt, ...) WARREN_PRINTF(3, 4);

/* Logs `text` (a handler's output line, already valid UTF-8) as is,
 * redacted, with the stream it came from ("stdout"/"stderr") and whether
 * it was truncated. */
void warren__log_output(warren_log_level level, const warren__log_fields *f,
                        const char *stream, int truncated, const char *text);

#define warren__log(level, f, ...)                                             \
    do {                                                                       \
        if (warren__log_enabled(level)) {                                      \
            warren__logf(level, f, __VA_ARGS__);                               \
        }                                                                      \
    } while (0)

/* Redacts every "scheme://user:password@" in `in` into `out`. */
void warren__redact_text(const char *in, char *out, size_t outlen);

int64_t warren__now_ms(void);  /* wall clock, ms since the epoch */
int64_t warren__mono_ms(void); /* monotonic clock, for deadlines */
int64_t warren__mono_us(void); /* the same in microseconds */

#endif /* WARREN_LOG_H */

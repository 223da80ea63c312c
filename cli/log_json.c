/*
 * log_json.c - the `warren` command's logger: one JSON object per line on
 * stderr (ts, level, event, queue, message_id, attempt, outcome, ms, msg;
 * stream and truncated for a handler's output),
 * written with a single write() so lines from several worker processes
 * sharing stderr never interleave. Text arrives already redacted.
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *level_name(warren_log_level l) {
    switch (l) {
    case WARREN_LOG_DEBUG:
        return "debug";
    case WARREN_LOG_INFO:
        return "info";
    case WARREN_LOG_WARN:
        return "warn";
    default:
        return "error";
    }
}

static void json_logger(const warren_log_event *ev, void *user) {
    char ts[40];
    struct timeval tv;
    struct tm tm;
    (void)user;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", (long)(tv.tv_usec / 1000));

    cJSON *o = cJSON_CreateObject();
    if (o == NULL) {
        return;
    }
    cJSON_AddStringToObject(o, "ts", ts);
    cJSON_AddStringToObject(o, "level", level_name(warren_log_event_level(ev)));
    cJSON_AddNumberToObject(o, "pid", (double)getpid());
    if (warren_log_event_name(ev)) {
        cJSON_AddStringToObject(o, "event", warren_log_event_name(ev));
    }
    if (warren_log_event_queue(ev)) {
        cJSON_AddStringToObject(o, "queue", warren_log_event_queue(ev));
    }
    if (warren_log_event_message_id(ev)) {
        cJSON_AddStringToObject(o, "message_id",
                                warren_log_event_message_id(ev));
    }
    if (warren_log_event_attempt(ev) >= 0) {
        cJSON_AddNumberToObject(o, "attempt",
                                (double)warren_log_event_attempt(ev));
    }
    if (warren_log_event_outcome(ev)) {
        cJSON_AddStringToObject(o, "outcome", warren_log_event_outcome(ev));
    }
    if (warren_log_event_ms(ev) >= 0) {
        cJSON_AddNumberToObject(o, "ms", (double)warren_log_event_ms(ev));
    }
    if (warren_log_event_stream(ev)) {
        cJSON_AddStringToObject(o, "stream", warren_log_event_stream(ev));
        cJSON_AddBoolToObject(o, "truncated", warren_log_event_truncated(ev));
    }
    cJSON_AddStringToObject(o, "msg", warren_log_event_text(ev));
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (line == NULL) {
        return;
    }
    size_t len = strlen(line);
    char *buf = malloc(len + 2);
    if (buf) {
        memcpy(buf, line, len);
        buf[len] = '\n';
        ssize_t w = write(STDERR_FILENO, buf, len + 1);
        (void)w;
        free(buf);
    }
    cJSON_free(line);
}

int cli_log_init(const char *level) {
    warren_log_level l = WARREN_LOG_INFO;
    if (level == NULL) {
        level = getenv("WARREN_LOG_LEVEL");
    }
    if (level && warren_log_level_parse(level, &l) != 0) {
        cli_error("--log-level: expected debug, info, warn or error, got '%s'",
                  level);
        return -1;
    }
    warren_log_set(json_logger, NULL, l);
    return 0;
}

/*
 * url.c - validation of broker URLs, kept apart from the session so the
 * config loader can refuse a bad URL before anything connects. The last
 * check is rabbitmq-c's own parser, behind the session's seam
 * (warren__session_url_parse()), so it matches exactly what the session
 * will later accept. Reasons written here never quote the URL:
 * callers show it through warren_redact_url.
 */
#include "url.h"

#include "session.h"
#include "warren.h"

#include <stdio.h>
#include <string.h>

int warren__url_check(const char *url, char *why, size_t whylen) {
    size_t len;

    if (why != NULL && whylen > 0) {
        why[0] = '\0';
    }
    if (url == NULL) {
        snprintf(why, whylen, "no URL");
        return WARREN_ERR_CONFIG;
    }
    len = strnlen(url, WARREN__URL_MAX + 1);
    if (len > WARREN__URL_MAX) {
        snprintf(why, whylen, "longer than %d bytes", WARREN__URL_MAX);
        return WARREN_ERR_CONFIG;
    }
    if (strncmp(url, "amqp://", 7) != 0 && strncmp(url, "amqps://", 8) != 0) {
        snprintf(why, whylen, "scheme is not amqp:// or amqps://");
        return WARREN_ERR_CONFIG;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)url[i];
        /* Whitespace and control characters are never part of a valid URL;
         * they usually mean a stray newline from a secrets file. */
        if (ch <= 0x20 || ch == 0x7f) {
            snprintf(why, whylen,
                     "contains whitespace or a control character at byte %zu",
                     i + 1);
            return WARREN_ERR_CONFIG;
        }
    }
    /* The rest is rabbitmq-c's parser, the one connect uses. */
    return warren__session_url_parse(url, len, why, whylen);
}

int warren__url_has_password(const char *url) {
    const char *p, *end, *colon = NULL, *at = NULL;

    if (url == NULL || (p = strstr(url, "://")) == NULL) {
        return 0;
    }
    p += 3;
    end = p + strcspn(p, "/?#");
    for (const char *q = p; q < end; q++) {
        if (*q == ':' && colon == NULL) {
            colon = q;
        } else if (*q == '@') {
            at = q;
        }
    }
    return colon != NULL && at != NULL && at > colon + 1;
}

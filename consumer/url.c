/*
 * url.c - validation of broker URLs, kept apart from the session so the
 * config loader can refuse a bad URL before anything connects. rabbitmq-c is
 * used only for amqp_parse_url, on a copy, so the check matches exactly what
 * the session will later accept. Reasons written here never quote the URL:
 * callers show it through warren_redact_url.
 */
#include "url.h"

#include "warren.h"

#include <amqp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int warren__url_check(const char *url, char *why, size_t whylen) {
    struct amqp_connection_info ci;
    size_t len;
    char *copy;
    int st;

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
    /* amqp_parse_url writes into its argument and leaves `ci` pointing into
     * it, so it gets a copy that dies here. */
    copy = malloc(len + 1);
    if (copy == NULL) {
        snprintf(why, whylen, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    memcpy(copy, url, len + 1);
    amqp_default_connection_info(&ci);
    st = amqp_parse_url(copy, &ci);
    if (st == AMQP_STATUS_OK && (ci.host == NULL || ci.host[0] == '\0')) {
        st = AMQP_STATUS_BAD_URL;
    }
    if (st == AMQP_STATUS_OK && (ci.port <= 0 || ci.port > 65535)) {
        st = AMQP_STATUS_BAD_URL;
    }
    free(copy);
    if (st != AMQP_STATUS_OK) {
        snprintf(why, whylen, "rabbitmq-c: %s", amqp_error_string2(st));
        return WARREN_ERR_CONFIG;
    }
    return 0;
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

/*
 * url.h - checks on broker URLs (internal).
 *
 * The config loader refuses a URL here, before any connection is tried, so a
 * typo is reported as a config error naming the field instead of as a
 * connection failure later. Nothing in this file touches the network, and no
 * message it writes contains a password.
 */
#ifndef WARREN_URL_H
#define WARREN_URL_H

#include <stddef.h>

/* Longest broker URL accepted, in bytes (without the NUL). */
#define WARREN__URL_MAX 2048

/* Checks that `url` starts with "amqp://" or "amqps://", is at most
 * WARREN__URL_MAX bytes, contains no whitespace or control characters and is
 * accepted by rabbitmq-c's URL parser (warren__session_url_parse(), on a
 * private copy). Returns 0,
 * or WARREN_ERR_CONFIG with a short reason (no URL text, so no password) in
 * `why` (size `whylen`, always NUL-terminated), or WARREN_ERR_NOMEM. */
int warren__url_check(const char *url, char *why, size_t whylen);

/* Returns 1 if `url` carries a password ("scheme://user:password@..."). */
int warren__url_has_password(const char *url);

#endif /* WARREN_URL_H */

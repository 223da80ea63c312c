/*
 * hostid.c - the owner host name of this process's claims (see hostid.h):
 * WARREN_HOST_ID, checked, or the system's host name. One function, so the
 * worker, the supervisor and the CLI commands that open the store always
 * agree on who "this host" is.
 */
#include "hostid.h"

#include "warren.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int valid_host_id(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > WARREN__HOST_ID_MAX) {
        return 0;
    }
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                     "0123456789_.:-") == n;
}

int warren__host_id(char *buf, size_t cap, char *err, size_t errlen) {
    const char *env = getenv("WARREN_HOST_ID");
    if (env != NULL) {
        if (!valid_host_id(env)) {
            snprintf(buf, cap, "localhost");
            /* Not echoed: it may be long or hold control characters. */
            snprintf(err, errlen,
                     "WARREN_HOST_ID: expected 1-%d characters of "
                     "[A-Za-z0-9_.:-], got %zu bytes that are not",
                     WARREN__HOST_ID_MAX, strlen(env));
            return WARREN_ERR_CONFIG;
        }
        snprintf(buf, cap, "%s", env);
        return 0;
    }
    if (cap == 0) {
        return 0;
    }
    if (gethostname(buf, cap) != 0) {
        snprintf(buf, cap, "localhost");
    }
    buf[cap - 1] = '\0';
    return 0;
}

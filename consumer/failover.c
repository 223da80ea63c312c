/*
 * failover.c - the order in which broker.urls are tried (failover.h).
 *
 * No I/O of its own: it only decides which index comes next and, for
 * one-shot commands, loops warren__session_connect() over the list. The
 * worker's reconnect loop (worker.c) uses the same two rules, so a command
 * and a worker given the same config agree on which failures move on to
 * another node.
 */
#include "failover.h"

#include "backoff.h"
#include "warren.h"

#include <stdio.h>
#include <string.h>

int warren__url_next(const struct warren_config *cfg, int i) {
    int n = cfg->broker.n_urls > 0 ? cfg->broker.n_urls : 1;
    return (i + 1) % n;
}

int warren__url_at(const struct warren_config *cfg, unsigned k) {
    unsigned n = cfg->broker.n_urls > 0 ? (unsigned)cfg->broker.n_urls : 1;
    return (int)(k % n);
}

unsigned warren__url_random_start(void) {
    return (unsigned)(warren__rng_uniform() * 65536.0);
}

int warren__url_try_next(int rc) {
    return rc == WARREN_ERR_CONNECT || rc == WARREN_ERR_TIMEOUT;
}

int warren__session_connect_any(const struct warren_config *cfg, int first,
                                warren__session **out, int *used, char *err,
                                size_t errlen) {
    int n = cfg->broker.n_urls, rc = WARREN_ERR_CONNECT;
    size_t off = 0;
    char one[1024];

    *out = NULL;
    if (errlen > 0) {
        err[0] = '\0';
    }
    for (int k = 0; k < n; k++) {
        int i = warren__url_at(cfg, (unsigned)(first + k));
        rc = warren__session_connect(cfg, i, out, one, sizeof one);
        if (rc == 0) {
            if (used != NULL) {
                *used = i;
            }
            if (errlen > 0) {
                err[0] = '\0';
            }
            return 0;
        }
        /* Each node's reason: "no node reachable" alone would hide which
         * one is down and which refused. */
        if (off < errlen) {
            int w =
                snprintf(err + off, errlen - off, "%s%s", off ? "; " : "", one);
            off = w < 0 ? errlen : off + (size_t)w;
        }
        if (!warren__url_try_next(rc)) {
            break;
        }
    }
    return rc;
}

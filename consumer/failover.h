/*
 * failover.h - which of broker.urls to connect to, and in what order
 * (internal).
 *
 * broker.urls names the nodes of one RabbitMQ cluster. A worker goes round
 * the list from its own starting point: `warren run` hands each worker
 * process it forks the next index, counted from a random one per
 * supervisor, so the workers of one host spread over the nodes and two
 * hosts do not pile onto the first; a worker run without a supervisor
 * starts at a random index. After that it moves to the next URL whenever a
 * connect fails or a connection it had is lost. One-shot commands
 * (`warren status`, `topology`, `dlq`) try the list in order.
 */
#ifndef WARREN_FAILOVER_H
#define WARREN_FAILOVER_H

#include "session.h"

#include <stddef.h>

/* The URL index after `i` (wrapping), for a config with n_urls >= 1. */
int warren__url_next(const struct warren_config *cfg, int i);

/* `k` folded onto the list: k mod n_urls. */
int warren__url_at(const struct warren_config *cfg, unsigned k);

/* A random start index (any unsigned; fold it with warren__url_at()). */
unsigned warren__url_random_start(void);

/* 1 if a connect that failed with `rc` is worth retrying on another node
 * (the node is unreachable: WARREN_ERR_CONNECT, WARREN_ERR_TIMEOUT); 0 if
 * every node would refuse the same way (credentials, vhost, TLS setup). */
int warren__url_try_next(int rc);

/* Connects to the first reachable URL, trying urls[first], urls[first+1],
 * ... once each, and stops early on a failure warren__url_try_next() says
 * another node would repeat. On success sets *out and, if `used` is not
 * NULL, *used to the index connected to. On failure returns the last error
 * code, with every node's reason (passwords redacted) joined by "; " in
 * `err`. */
int warren__session_connect_any(const struct warren_config *cfg, int first,
                                warren__session **out, int *used, char *err,
                                size_t errlen);

typedef struct warren_worker warren_worker;

/* Makes worker `w` start at index k mod n_urls instead of a random one
 * (`warren run`, before warren_worker_run()). Defined in worker.c. */
void warren__worker_set_first_url(warren_worker *w, unsigned k);

#endif /* WARREN_FAILOVER_H */

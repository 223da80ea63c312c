/*
 * ctx.h - the per-message handler context (internal).
 *
 * The worker owns one warren_ctx and resets it before each handler call.
 */
#ifndef WARREN_CTX_H
#define WARREN_CTX_H

#include "store.h"
#include "warren.h"

#include <stdint.h>

#define WARREN__ERROR_MAX 1024
/* How long warren_ctx_db() waits for another worker's store transaction. */
#define WARREN__CTX_DB_WAIT_MS 30000

struct warren_ctx {
    char error[WARREN__ERROR_MAX + 1]; /* "" if the handler set none */
    int64_t retry_after_ms;            /* -1: use the backoff */
    int64_t deadline_ms;               /* 0: none */
    warren__store *store;              /* NULL: no transactional inbox */
    /* The handler asked for the db: its own transaction and a savepoint
     * are open, finished by the worker when the handler returns. */
    int db_used;
};

/* Clears the per-message fields; keeps `store`. */
void warren__ctx_reset(warren_ctx *ctx, int64_t deadline_ms);

#endif /* WARREN_CTX_H */

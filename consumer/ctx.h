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

struct warren_ctx {
    char error[WARREN__ERROR_MAX + 1]; /* "" if the handler set none */
    int64_t retry_after_ms;            /* -1: use the backoff */
    int64_t deadline_ms;               /* 0: none */
    warren__store *store;              /* NULL: no transactional inbox */
    int db_used; /* the handler asked for the db: a savepoint is open */
};

/* Clears the per-message fields; keeps `store`. */
void warren__ctx_reset(warren_ctx *ctx, int64_t deadline_ms);

#endif /* WARREN_CTX_H */

/*
 * ctx.c - what a handler can say about the message in hand: why it failed,
 * when to retry, its deadline, and the transactional inbox.
 */
#include "ctx.h"

#include <stdarg.h>
#include <stdio.h>

void warren__ctx_reset(warren_ctx *ctx, int64_t deadline_ms) {
    ctx->error[0] = '\0';
    ctx->retry_after_ms = -1;
    ctx->deadline_ms = deadline_ms;
    ctx->db_used = 0;
}

void warren_ctx_set_error(warren_ctx *ctx, const char *fmt, ...) {
    va_list ap;
    if (ctx == NULL || fmt == NULL) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(ctx->error, sizeof ctx->error, fmt, ap);
    va_end(ap);
}

void warren_ctx_retry_after(warren_ctx *ctx, uint32_t ms) {
    if (ctx) {
        ctx->retry_after_ms = ms;
    }
}

int64_t warren_ctx_deadline(const warren_ctx *ctx) {
    return ctx ? ctx->deadline_ms : 0;
}

struct sqlite3 *warren_ctx_db(warren_ctx *ctx) {
    if (ctx == NULL || ctx->store == NULL) {
        return NULL;
    }
    if (!ctx->db_used) {
        /* The outcome transaction opens lazily, so handlers that never use
         * the database never hold the store's write lock while they run. */
        if (warren__store_begin(ctx->store) != 0 ||
            warren__store_savepoint(ctx->store) != 0) {
            return NULL;
        }
        ctx->db_used = 1;
    }
    return warren__store_db(ctx->store);
}

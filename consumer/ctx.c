/*
 * ctx.c - what a handler can say about the message in hand: why it failed,
 * when to retry, its deadline, and the transactional inbox.
 */
#include "ctx.h"

#include "log.h"

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

/* Opens the handler's savepoint in this message's write transaction, once.
 * Returns 0, or -1 if it cannot begin. */
static int open_handler_txn(warren_ctx *ctx) {
    if (!ctx->db_used) {
        /* The handler's own transaction opens lazily, so handlers that
         * never use the database never hold the store's write lock while
         * they run. Another worker's transaction is short (one handler):
         * wait for it rather than fail the handler, within its deadline. */
        int64_t wait = WARREN__CTX_DB_WAIT_MS;
        if (ctx->deadline_ms > 0) {
            int64_t left = ctx->deadline_ms - warren__now_ms();
            wait = left < wait ? (left > 0 ? left : 0) : wait;
        }
        if (warren__store_begin_within(ctx->store, wait) != 0) {
            return -1;
        }
        if (warren__store_savepoint(ctx->store) != 0) {
            warren__store_rollback(ctx->store);
            return -1;
        }
        ctx->db_used = 1;
    }
    return 0;
}

struct sqlite3 *warren_ctx_db(warren_ctx *ctx) {
    if (ctx == NULL || ctx->store == NULL ||
        warren__store_db(ctx->store) == NULL || open_handler_txn(ctx) != 0) {
        return NULL;
    }
    return warren__store_db(ctx->store);
}

struct pg_conn *warren_ctx_pg(warren_ctx *ctx) {
    if (ctx == NULL || ctx->store == NULL ||
        warren__store_pg(ctx->store) == NULL || open_handler_txn(ctx) != 0) {
        return NULL;
    }
    return warren__store_pg(ctx->store);
}

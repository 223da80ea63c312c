/*
 * handler_api.h - the handler-call interface: what the worker calls on a
 * handler, and the only runtime header handlers/ may include (internal).
 *
 * The runtime owns this interface and handlers/ implements it, so the
 * dependency points one way: consumer/ never includes handlers/ headers,
 * and handlers/ reaches the runtime only through this file. It brings in
 * the per-message context (ctx.h: its error text, reset) and logging with
 * the shared clocks (log.h); the build gives handlers/ no other header of
 * consumer/ (CMakeLists.txt, warren_handlers).
 *
 *   exec:PATH [ARGS...]      a program per message (handlers/exec.c)
 *   plugin:PATH.so:SYMBOL    a C handler loaded with dlopen (plugin.c)
 *   builtin:noop             acks everything (builtin.c)
 *
 * A warren__handler is created once per worker process, used for every
 * message, and freed when the worker stops.
 */
#ifndef WARREN_HANDLER_API_H
#define WARREN_HANDLER_API_H

#include "ctx.h"
#include "log.h"
#include "warren.h"

#include <stddef.h>

typedef struct warren__handler warren__handler;

/* Parses `spec` and loads the handler (dlopen, ABI check, init hook; for
 * exec: checks the program exists and is executable). On failure returns
 * WARREN_ERR_HANDLER (or CONFIG for a malformed spec) and writes a message
 * naming the spec and the fix into `err`. `ctx` is passed to the init hook
 * for its error text. */
int warren__handler_load(const char *spec, warren_ctx *ctx,
                         warren__handler **out, char *err, size_t errlen);

/* Wraps an in-process function (warren_worker_set_handler). `arg` copied. */
int warren__handler_from_fn(warren_handler_fn fn, warren_handler_init_fn init,
                            warren_handler_fini_fn fini, const char *arg,
                            warren_ctx *ctx, warren__handler **out, char *err,
                            size_t errlen);

/* Runs the handler on one message. Exec handlers honour
 * warren_ctx_deadline(ctx): past it the child gets SIGTERM, then SIGKILL
 * after a short grace, and the result is WARREN_RETRY with a reason. */
warren_result warren__handler_call(warren__handler *h, const warren_msg *msg,
                                   warren_ctx *ctx);

/* Calls the fini hook, unloads. NULL is a no-op. */
void warren__handler_free(warren__handler *h);

#endif /* WARREN_HANDLER_API_H */

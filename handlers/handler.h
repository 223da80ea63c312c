/*
 * handler.h - turning a consumer's "handler" string into something to call
 * (internal; used by the worker).
 *
 *   exec:PATH [ARGS...]      a program per message (exec.c)
 *   plugin:PATH.so:SYMBOL    a C handler loaded with dlopen (plugin.c)
 *   builtin:noop             acks everything (builtin.c)
 *
 * A warren__handler is created once per worker process, used for every
 * message, and freed when the worker stops.
 */
#ifndef WARREN_HANDLER_H
#define WARREN_HANDLER_H

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

/* exec: maps a child's wait status to a result (unit-tested):
 * exit 0 -> ACK, 75 -> RETRY, 65 -> DEAD, other exits/signals -> RETRY. */
warren_result warren__exec_map_status(int wait_status);

/* ---------------------------------------------------------------------------
 * Between handler.c and the kinds (internal to handlers/).
 *
 * Every kind reduces to the same parts: a function, its user pointer, an
 * optional fini hook, and for plugins the dlopen handle to close after fini.
 * ------------------------------------------------------------------------- */
typedef struct {
    warren_handler_fn fn;
    warren_handler_fini_fn fini;
    void *user;
    void *dl; /* dlclose()d after fini; NULL for other kinds */
} warren__handler_parts;

/* Longest handler spec accepted, and most exec arguments (incl. PATH). */
#define WARREN__SPEC_MAX 4096
#define WARREN__EXEC_MAX_ARGS 64

/* Splits "PATH [ARGS...]" on spaces/tabs; double quotes group, and a
 * backslash escapes a quote or a backslash. No other interpretation (no
 * shell, no variables, no globs). On success returns the argument count and
 * sets `*argv` to one malloc'd block (NULL-terminated; free() it whole).
 * On failure returns WARREN_ERR_CONFIG (unterminated quote, empty, too many
 * arguments) or WARREN_ERR_NOMEM, with a message in `err`. */
int warren__exec_split(const char *s, char ***argv, char *err, size_t errlen);

/* Loads "PATH [ARGS...]" (the text after "exec:"). */
int warren__exec_load(const char *rest, warren__handler_parts *out, char *err,
                      size_t errlen);

/* Loads "PATH.so:SYMBOL [ARG]" (the text after "plugin:"); runs the init
 * hook with `ctx`. `arg_out` receives a malloc'd copy of ARG that must
 * outlive the plugin (its init may keep the pointer). */
int warren__plugin_load(const char *rest, warren_ctx *ctx,
                        warren__handler_parts *out, char **arg_out, char *err,
                        size_t errlen);

/* Loads "NAME" (the text after "builtin:"). */
int warren__builtin_load(const char *name, warren__handler_parts *out,
                         char *err, size_t errlen);

#endif /* WARREN_HANDLER_H */

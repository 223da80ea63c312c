/*
 * handler.h - what the handler kinds share (internal to handlers/).
 *
 * The worker calls handlers through consumer/handler_api.h, which
 * handler.c implements; this file adds what handler.c and the kinds
 * (exec.c, plugin.c, builtin.c) say to each other.
 */
#ifndef WARREN_HANDLER_H
#define WARREN_HANDLER_H

#include "handler_api.h"
#include "warren.h"

#include <stddef.h>

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

/*
 * handler.c - turns a consumer's "handler" string into something the worker
 * can call, whatever its kind (exec, plugin, builtin, in-process function).
 *
 * It promises that a malformed spec is refused with WARREN_ERR_CONFIG and a
 * message naming the spec and the expected shape, that a handler which
 * cannot load is refused with WARREN_ERR_HANDLER before any message is
 * consumed, and that warren__handler_free() runs the fini hook exactly once
 * before unloading anything.
 */
#include "handler.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct warren__handler {
    warren__handler_parts p;
    /* The init argument: kept for the handler's lifetime because an init
     * hook may keep the pointer instead of copying it. */
    char *arg;
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    WARREN_PRINTF(3, 4);
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    if (err == NULL || errlen == 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int wrap(const warren__handler_parts *p, char *arg,
                warren__handler **out, char *err, size_t errlen) {
    warren__handler *h = calloc(1, sizeof *h);
    if (h == NULL) {
        if (p->fini) {
            p->fini(p->user);
        }
        if (p->dl) {
            dlclose(p->dl);
        }
        free(arg);
        seterr(err, errlen, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    h->p = *p;
    h->arg = arg;
    *out = h;
    return 0;
}

int warren__handler_load(const char *spec, warren_ctx *ctx,
                         warren__handler **out, char *err, size_t errlen) {
    warren__handler_parts p = {0};
    char *arg = NULL;
    int rc;
    if (out == NULL) {
        return WARREN_ERR_INVAL;
    }
    *out = NULL;
    if (spec == NULL || spec[0] == '\0') {
        seterr(err, errlen,
               "handler: empty; expected \"exec:PATH [ARGS...]\", "
               "\"plugin:PATH.so:SYMBOL [ARG]\" or \"builtin:NAME\"");
        return WARREN_ERR_CONFIG;
    }
    if (strlen(spec) > WARREN__SPEC_MAX) {
        seterr(err, errlen, "handler: longer than %d bytes", WARREN__SPEC_MAX);
        return WARREN_ERR_CONFIG;
    }
    if (strncmp(spec, "exec:", 5) == 0) {
        rc = warren__exec_load(spec + 5, &p, err, errlen);
    } else if (strncmp(spec, "plugin:", 7) == 0) {
        rc = warren__plugin_load(spec + 7, ctx, &p, &arg, err, errlen);
    } else if (strncmp(spec, "builtin:", 8) == 0) {
        rc = warren__builtin_load(spec + 8, &p, err, errlen);
    } else {
        seterr(err, errlen,
               "handler \"%.200s\": unknown kind; expected "
               "\"exec:PATH [ARGS...]\", \"plugin:PATH.so:SYMBOL [ARG]\" or "
               "\"builtin:NAME\"",
               spec);
        return WARREN_ERR_CONFIG;
    }
    if (rc != 0) {
        return rc;
    }
    rc = wrap(&p, arg, out, err, errlen);
    if (rc == 0) {
        warren__log(WARREN_LOG_DEBUG, NULL, "handler loaded: %.200s", spec);
    }
    return rc;
}

int warren__handler_from_fn(warren_handler_fn fn, warren_handler_init_fn init,
                            warren_handler_fini_fn fini, const char *arg,
                            warren_ctx *ctx, warren__handler **out, char *err,
                            size_t errlen) {
    warren__handler_parts p = {0};
    struct warren_ctx local;
    if (out == NULL) {
        return WARREN_ERR_INVAL;
    }
    *out = NULL;
    if (fn == NULL) {
        seterr(err, errlen, "in-process handler: the function is NULL");
        return WARREN_ERR_INVAL;
    }
    char *copy = strdup(arg ? arg : "");
    if (copy == NULL) {
        seterr(err, errlen, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    if (ctx == NULL) {
        /* The init hook may report through its ctx; give it one. */
        memset(&local, 0, sizeof local);
        warren__ctx_reset(&local, 0);
        ctx = &local;
    }
    p.fn = fn;
    p.fini = fini;
    if (init) {
        ctx->error[0] = '\0';
        int r = init(copy, &p.user, ctx);
        if (r != 0) {
            seterr(err, errlen,
                   "in-process handler: init refused to start (returned "
                   "%d): %s",
                   r, ctx->error[0] ? ctx->error : "no reason given");
            free(copy);
            return WARREN_ERR_HANDLER;
        }
    }
    return wrap(&p, copy, out, err, errlen);
}

warren_result warren__handler_call(warren__handler *h, const warren_msg *msg,
                                   warren_ctx *ctx) {
    if (h == NULL || h->p.fn == NULL) {
        warren_ctx_set_error(ctx, "no handler loaded");
        return WARREN_RETRY;
    }
    warren_result r = h->p.fn(msg, ctx, h->p.user);
    if (r != WARREN_ACK && r != WARREN_RETRY && r != WARREN_DEAD) {
        /* A C handler returning garbage is a bug in it, not in the message:
         * retrying keeps the message while someone looks. */
        warren_ctx_set_error(ctx, "handler returned %d, not ACK/RETRY/DEAD",
                             (int)r);
        return WARREN_RETRY;
    }
    return r;
}

void warren__handler_free(warren__handler *h) {
    if (h == NULL) {
        return;
    }
    if (h->p.fini) {
        h->p.fini(h->p.user);
    }
    if (h->p.dl) {
        /* After fini: the hook's code lives in the library. */
        dlclose(h->p.dl);
    }
    free(h->arg);
    free(h);
}

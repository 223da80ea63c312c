/*
 * plugin.c - C handlers loaded from a shared object ("plugin:PATH.so:SYMBOL
 * [ARG]").
 *
 * A plugin is loaded once per worker process with RTLD_NOW (a missing
 * symbol fails at load, not mid-message) and RTLD_LOCAL (two plugins cannot
 * see each other's symbols). It is refused unless it exports
 * warren_plugin_abi_version equal to WARREN_ABI_VERSION and the handler
 * SYMBOL; SYMBOL_init and SYMBOL_fini are optional. Every refusal names the
 * file and says what to do about it.
 */
#include "handler.h"

#include <ctype.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for SYMBOL plus "_init"/"_fini". */
#define SYMBOL_MAX 200

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

static int is_symbol(const char *s, size_t n) {
    if (n == 0 || n > SYMBOL_MAX ||
        !(isalpha((unsigned char)s[0]) || s[0] == '_')) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_')) {
            return 0;
        }
    }
    return 1;
}

/* POSIX dlsym returns void *; converting it to a function pointer is what
 * dlsym is for, but ISO C does not allow the cast, hence the memcpy. */
static void *sym(void *dl, const char *name) {
    dlerror();
    return dlsym(dl, name);
}

int warren__plugin_load(const char *rest, warren_ctx *ctx,
                        warren__handler_parts *out, char **arg_out, char *err,
                        size_t errlen) {
    char path[WARREN__SPEC_MAX + 3];
    char symbol[SYMBOL_MAX + 8];
    struct warren_ctx local;
    *arg_out = NULL;
    memset(out, 0, sizeof *out);

    /* PATH may itself contain ':' (it is a file name): the symbol starts
     * after the last ':' of the first word. */
    size_t word = strcspn(rest, " \t");
    const char *colon = NULL;
    for (const char *c = rest; c < rest + word; c++) {
        if (*c == ':') {
            colon = c;
        }
    }
    if (colon == NULL || colon == rest ||
        !is_symbol(colon + 1, (size_t)(rest + word - colon - 1))) {
        seterr(err, errlen,
               "handler \"plugin:%.200s\": expected \"plugin:PATH.so:SYMBOL "
               "[ARG]\" with SYMBOL a C identifier of at most %d characters",
               rest, SYMBOL_MAX);
        return WARREN_ERR_CONFIG;
    }
    size_t plen = (size_t)(colon - rest);
    /* dlopen searches the library path for a bare name; a handler in the
     * config means a file, so anchor bare names to the working directory. */
    int bare = memchr(rest, '/', plen) == NULL;
    snprintf(path, sizeof path, "%s%.*s", bare ? "./" : "", (int)plen, rest);
    snprintf(symbol, sizeof symbol, "%.*s", (int)(rest + word - colon - 1),
             colon + 1);
    const char *arg = rest + word;
    arg += strspn(arg, " \t");

    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        const char *e = dlerror();
        seterr(err, errlen, "plugin %s: cannot load: %s", path,
               e ? e : "unknown dlopen error");
        return WARREN_ERR_HANDLER;
    }
    const int *abi = sym(dl, "warren_plugin_abi_version");
    if (abi == NULL) {
        seterr(err, errlen,
               "plugin %s: no warren_plugin_abi_version symbol: add "
               "WARREN_PLUGIN_DECLARE(); to the plugin and rebuild it",
               path);
        dlclose(dl);
        return WARREN_ERR_HANDLER;
    }
    if (*abi != WARREN_ABI_VERSION) {
        seterr(err, errlen,
               "%s was built for warren ABI %d, this warren is ABI %d: "
               "rebuild the plugin",
               path, *abi, WARREN_ABI_VERSION);
        dlclose(dl);
        return WARREN_ERR_HANDLER;
    }
    void *fn = sym(dl, symbol);
    if (fn == NULL) {
        const char *e = dlerror();
        seterr(err, errlen, "plugin %s: no handler symbol %s: %s", path, symbol,
               e ? e : "symbol is NULL");
        dlclose(dl);
        return WARREN_ERR_HANDLER;
    }
    memcpy(&out->fn, &fn, sizeof fn);

    size_t slen = strlen(symbol);
    memcpy(symbol + slen, "_fini", 6);
    void *fini = sym(dl, symbol);
    memcpy(&out->fini, &fini, sizeof fini);
    memcpy(symbol + slen, "_init", 6);
    void *initp = sym(dl, symbol);
    warren_handler_init_fn init = NULL;
    memcpy(&init, &initp, sizeof initp);

    char *copy = strdup(arg);
    if (copy == NULL) {
        seterr(err, errlen, "out of memory");
        dlclose(dl);
        return WARREN_ERR_NOMEM;
    }
    if (init) {
        if (ctx == NULL) {
            memset(&local, 0, sizeof local);
            warren__ctx_reset(&local, 0);
            ctx = &local;
        }
        ctx->error[0] = '\0';
        int r = init(copy, &out->user, ctx);
        if (r != 0) {
            seterr(err, errlen,
                   "plugin %s: %s refused to start (returned %d): %s", path,
                   symbol, r, ctx->error[0] ? ctx->error : "no reason given");
            free(copy);
            dlclose(dl);
            memset(out, 0, sizeof *out);
            return WARREN_ERR_HANDLER;
        }
    }
    out->dl = dl;
    *arg_out = copy;
    return 0;
}

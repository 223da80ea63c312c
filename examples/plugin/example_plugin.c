/*
 * example_plugin.c - the smallest useful warren plugin (also in the README
 * and docs/handlers.md). Load it with
 * "plugin:build/examples/example_plugin.so:handle [LABEL]".
 * It acks every message unless header "x-fail" says "retry" or "dead", which
 * shows the three results and how a reason is reported.
 */
#include <stdlib.h>
#include <string.h>
#include <warren.h>

WARREN_PLUGIN_DECLARE();

/* warren finds these by name: SYMBOL, SYMBOL_init, SYMBOL_fini. */
int handle_init(const char *arg, void **user, warren_ctx *ctx);
warren_result handle(const warren_msg *msg, warren_ctx *ctx, void *user);
void handle_fini(void *user);

struct state {
    const char *label;
    unsigned long seen;
};

int handle_init(const char *arg, void **user, warren_ctx *ctx) {
    struct state *s = calloc(1, sizeof *s);
    if (s == NULL) {
        warren_ctx_set_error(ctx, "out of memory");
        return -1;
    }
    s->label = arg[0] ? arg : "example"; /* arg lives as long as the plugin */
    *user = s;
    return 0;
}

warren_result handle(const warren_msg *msg, warren_ctx *ctx, void *user) {
    struct state *s = user;
    const char *v;
    size_t n;
    s->seen++;
    if (warren_msg_header_str(msg, "x-fail", &v, &n) != 0) {
        return WARREN_ACK;
    }
    warren_ctx_set_error(ctx, "%s: message %lu: x-fail=%.*s", s->label, s->seen,
                         (int)n, v);
    return n == 4 && memcmp(v, "dead", 4) == 0 ? WARREN_DEAD : WARREN_RETRY;
}

void handle_fini(void *user) {
    free(user);
}

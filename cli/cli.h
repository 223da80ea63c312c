/*
 * cli.h - what the `warren` subcommands share: exit codes, option parsing
 * helpers and the JSON-lines logger. Only main() and the subcommands use it;
 * the library never decides an exit code.
 */
#ifndef WARREN_CLI_H
#define WARREN_CLI_H

#include "warren.h"
#include "wstats.h"

#include <pthread.h>
#include <stdint.h>

/* Exit codes, documented in the README and `warren help`. */
enum {
    EXIT_OK = 0,
    EXIT_FAILURE_RUNTIME = 1, /* unexpected runtime failure */
    EXIT_USAGE = 2,           /* bad command line or config */
    EXIT_UNREACHABLE = 3,     /* broker unreachable */
    EXIT_AUTH = 4,            /* authentication refused */
    EXIT_VHOST = 5,           /* vhost missing or not permitted */
    EXIT_TOPOLOGY = 6,        /* queue exists with other arguments */
    EXIT_HANDLER = 7,         /* handler failed to load */
    EXIT_STORE = 8,           /* store unusable: corrupt, full, locked, RO */
    EXIT_TLS = 9,             /* TLS setup or verification failed */
    EXIT_PARTIAL = 10,        /* some items failed (dlq replay/import) */
    EXIT_METRICS = 11         /* metrics.listen cannot be bound (in use) */
};

/* Maps a WARREN_ERR_* code to the exit code above. */
int cli_exit_code(int err);

/* Installs the JSON-lines stderr logger at `level` ("info" if NULL). Returns
 * 0, or -1 (message printed) if the level is not a level. */
int cli_log_init(const char *level);

/* Loads the config named by -c, printing the error and returning NULL. */
warren_config *cli_load_config(const char *path);

/* Prints "warren: " + message to stderr. */
void cli_error(const char *fmt, ...) WARREN_PRINTF(1, 2);

int cmd_run(int argc, char **argv);
int cmd_store(int argc, char **argv);
/* `warren store export|import` (store_io.c): exit codes. */
struct warren__store;
int cli_store_export(struct warren__store *st, const char *out, int force);
int cli_store_import(struct warren__store *st, const char *in);
int cmd_topology(int argc, char **argv);
int cmd_dlq(int argc, char **argv);
int cmd_status(int argc, char **argv);

/* ---- the pool's figures for /metrics (metrics.c, metrics_http.c) ----
 *
 * `warren run` maps CLI_MAX_SLOTS worker slots (wstats.h) shared with its
 * children. The view below is what the supervisor knows besides them: which
 * queue each slot serves, and per queue the totals of workers that have
 * exited ("retired"), so that every exported counter only grows. Today
 * one thread both changes and serves it (cli_http_wait); `lock` keeps the
 * view safe should serving move to a thread of its own. */
#define CLI_MAX_SLOTS 1024
#define CLI_MAX_SERIES 256

typedef struct {
    char queue[256];
    uint64_t counters[WARREN_STAT_DEFERRED + 1];
    uint64_t latency[WARREN__LAT_BUCKETS];
    uint64_t latency_sum_us, handler_failures, breaker_opened, reconnects;
    uint64_t restarts;       /* unplanned: crashes and deadline kills */
    uint64_t deadline_kills; /* workers ended for an overdue handler */
    /* Calls of the primary and of breaker.fallback; breaker transitions
     * into closed, open and half-open. */
    uint64_t handler_calls[2];
    uint64_t breaker_transitions[3];
} cli_series;

typedef struct {
    pthread_mutex_t lock;
    warren__wstats *slots;          /* CLI_MAX_SLOTS, MAP_SHARED */
    int slot_series[CLI_MAX_SLOTS]; /* -1: slot unused */
    int slot_alive[CLI_MAX_SLOTS];  /* a process runs on the slot */
    cli_series series[CLI_MAX_SERIES];
    int n_series;
    char store_path[4096]; /* "" when no consumer uses a store */
} cli_pool_view;

/* Maps the shared slots and initialises the view. Returns 0, or -1 with
 * errno set (mmap failed). */
int cli_view_init(cli_pool_view *v);

/* Unmaps the slots. */
void cli_view_destroy(cli_pool_view *v);

/* The series of `queue`, added if new. Returns its index, or -1 when
 * CLI_MAX_SERIES queues are known. Caller holds the lock. */
int cli_view_series(cli_pool_view *v, const char *queue);

/* Folds a slot whose process has exited into its series' retired totals,
 * then zeroes it for a replacement. Caller holds the lock. */
void cli_view_retire(cli_pool_view *v, int slot);

/* Renders the Prometheus text format (0.0.4) into a malloc'd buffer (taken
 * under the lock). Returns 0, or -1 when out of memory. */
int cli_view_render(cli_pool_view *v, char **out, size_t *len);

typedef struct cli_http cli_http;

/* Binds `addr` ("HOST:PORT", "[V6]:PORT") to serve GET/HEAD /metrics
 * from `v`; requests are answered inside cli_http_wait(). Returns 0, or -1 with
 * the reason (naming the address and the OS error) in `err`. */
int cli_http_start(const char *addr, cli_pool_view *v, cli_http **out,
                   char *err, size_t errlen);

/* Waits up to timeout_ms (less if a signal comes) while answering
 * requests. With h NULL, just sleeps. */
void cli_http_wait(cli_http *h, int timeout_ms);

/* The listening socket, for a forked worker to close. -1 if none. */
int cli_http_fd(const cli_http *h);

/* Stops the thread and closes the socket. NULL is a no-op. */
void cli_http_stop(cli_http *h);

#endif /* WARREN_CLI_H */

/*
 * warren.h - the one public header of warren, reliable RabbitMQ workers.
 *
 * A handler author includes only this file. It declares the handler
 * signature, the read-only message view a handler receives, the context a
 * handler uses to report why it failed, and the small embedding API
 * (config, worker, logging) that the `warren` command itself is built on.
 *
 * Conventions used throughout:
 *  - Functions that can fail return 0 on success or a negative WARREN_ERR_*
 *    code; warren_strerror() names it. Objects keep the text of their last
 *    error (warren_worker_errstr()), overwritten by the next failure.
 *  - Types are opaque. Constructors are *_new / *_load, destructors *_free,
 *    and every destructor accepts NULL.
 *  - Ownership is stated per function: "borrowed" pointers stay owned by
 *    warren and are valid only for the lifetime given; "copied" arguments may
 *    be freed by the caller as soon as the call returns.
 *  - The library never exits, never writes to stdout and never prints:
 *    it returns errors and calls the log callback.
 */
#ifndef WARREN_H
#define WARREN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WARREN_VERSION_MAJOR 0
#define WARREN_VERSION_MINOR 1
#define WARREN_VERSION_PATCH 0
#define WARREN_VERSION_STRING "0.1.0"

/* Bumped whenever a change to this header breaks compiled plugins. A plugin
 * records the value it was built with (WARREN_PLUGIN_DECLARE) and warren
 * refuses to load a plugin whose value differs. */
#define WARREN_ABI_VERSION 1

/* Export macro. libwarren is compiled with -fvisibility=hidden, so a
 * function is part of the shared library's ABI only when its declaration
 * here starts with WARREN_API: every function of this header does, and
 * nothing else is (internal warren__ functions stay hidden; `scripts/
 * install-check` fails when `nm -D libwarren.so` lists any other name).
 * Adding a public function: name it warren_*, declare it in this header
 * with WARREN_API in front, define it in a file that includes this header.
 * The `warren` command links the library statically and exports the same
 * names, so plugins it loads resolve them against it. */
#if defined(__GNUC__)
#define WARREN_API __attribute__((visibility("default")))
#else
#define WARREN_API
#endif

#if defined(__GNUC__)
#define WARREN_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define WARREN_PRINTF(fmt, args)
#endif

/* ---------------------------------------------------------------------------
 * Errors
 *
 * X(NAME, code, exit, retriable, fatal, description): the one error policy.
 * Every other place (the worker's reconnect loop, `warren run`'s
 * supervisor, the command's exit codes) reads it through the functions
 * below.
 *  - exit: the `warren` command's exit code for it (README, `warren help`).
 *  - retriable: the same call may succeed later without anybody changing
 *    anything (a broker restart, a lock released); non-retriable errors
 *    need a person to fix something.
 *  - fatal: what a worker does when it meets it.
 *    NEVER: retried (a worker reconnects with backoff; one that exited with
 *    it is restarted by `warren run`).
 *    AT_START: stops `warren run` (with `exit`) if it happens before the
 *    pool's first 10 s and before the worker's first connection: at start
 *    these answers from the broker are the operator's mistake (wrong URL,
 *    password, vhost, CA, queue arguments). Once the pool has run, the same
 *    answers more often come from a passing state (a broker restarting
 *    mid-login, an auth backend down, a policy or certificate being
 *    changed), so they are retried with backoff and logged each time.
 *    ALWAYS: stops `warren run` (with `exit`) whenever it happens: local
 *    faults no retry fixes (config, handler, store file).
 * ------------------------------------------------------------------------- */
#define WARREN_FATAL_NEVER 0
#define WARREN_FATAL_AT_START 1
#define WARREN_FATAL_ALWAYS 2

#define WARREN_ERRORS(X)                                                       \
    X(OK, 0, 0, 0, NEVER, "success")                                           \
    X(NOMEM, -1, 1, 1, NEVER, "out of memory")                                 \
    X(INVAL, -2, 2, 0, ALWAYS, "invalid argument")                             \
    X(CONFIG, -3, 2, 0, ALWAYS, "invalid configuration")                       \
    X(CONNECT, -4, 3, 1, AT_START, "broker unreachable")                       \
    X(AUTH, -5, 4, 0, AT_START, "authentication refused by the broker")        \
    X(VHOST, -6, 5, 0, AT_START,                                               \
      "virtual host missing or access to it refused")                          \
    X(PRECONDITION, -7, 6, 0, AT_START,                                        \
      "queue or exchange exists with other arguments")                         \
    X(HANDLER, -8, 7, 0, ALWAYS, "handler failed to load")                     \
    X(CONNECTION, -9, 1, 1, NEVER, "connection to the broker lost")            \
    X(CHANNEL, -10, 1, 1, NEVER, "channel closed by the broker")               \
    X(TIMEOUT, -11, 3, 1, AT_START, "timed out")                               \
    X(TLS, -12, 9, 0, AT_START, "TLS setup or peer verification failed")       \
    X(STORE, -13, 8, 0, ALWAYS, "message store error")                         \
    X(STORE_BUSY, -14, 8, 1, NEVER, "message store locked by another process") \
    X(STORE_FULL, -15, 8, 0, ALWAYS, "message store disk or size limit full")  \
    X(STORE_CORRUPT, -16, 8, 0, ALWAYS, "message store file unusable")         \
    X(PUBLISH, -17, 1, 1, NEVER, "publish not confirmed by the broker")        \
    X(CANCELLED, -18, 1, 1, NEVER, "consumer cancelled by the broker")         \
    X(STOPPED, -19, 0, 0, NEVER, "stopped on request")                         \
    X(NOT_FOUND, -20, 1, 0, NEVER, "not found")                                \
    X(IO, -21, 1, 1, NEVER, "input/output error")                              \
    X(PROTOCOL, -22, 1, 1, NEVER, "unexpected AMQP protocol state")

typedef enum warren_err {
#define WARREN__ERR_ENUM(name, code, exit, retriable, fatal, desc)             \
    WARREN_ERR_##name = code,
    WARREN_ERRORS(WARREN__ERR_ENUM)
#undef WARREN__ERR_ENUM
} warren_err;

/* Returns a static, human-readable description of `err` (never NULL). */
WARREN_API const char *warren_strerror(int err);
/* Returns the symbolic name, e.g. "WARREN_ERR_AUTH" (never NULL). */
WARREN_API const char *warren_errname(int err);
/* Returns 1 if retrying the failed operation later may succeed. */
WARREN_API int warren_err_is_retriable(int err);
/* Returns the `warren` command's exit code for `err` (1 if unknown). */
WARREN_API int warren_err_exit_code(int err);
/* Returns WARREN_FATAL_NEVER, _AT_START or _ALWAYS (NEVER if unknown). */
WARREN_API int warren_err_fatal(int err);

/* ---------------------------------------------------------------------------
 * Logging
 *
 * warren reports through one process-wide callback. Without one, nothing is
 * logged. The `warren` command installs a callback writing JSON lines to
 * stderr. Passwords in URLs are redacted before any text reaches it.
 * ------------------------------------------------------------------------- */
typedef enum warren_log_level {
    WARREN_LOG_DEBUG = 0,
    WARREN_LOG_INFO = 1,
    WARREN_LOG_WARN = 2,
    WARREN_LOG_ERROR = 3
} warren_log_level;

/* One log event. Every pointer is borrowed for the duration of the callback;
 * fields that do not apply are NULL (strings) or -1 (numbers). */
typedef struct warren_log_event warren_log_event;
/* The event's name ("consume") and its message text. */
WARREN_API const char *warren_log_event_name(const warren_log_event *ev);
WARREN_API const char *warren_log_event_text(const warren_log_event *ev);
WARREN_API const char *warren_log_event_queue(const warren_log_event *ev);
WARREN_API const char *warren_log_event_message_id(const warren_log_event *ev);
WARREN_API const char *warren_log_event_outcome(const warren_log_event *ev);
WARREN_API int64_t warren_log_event_attempt(const warren_log_event *ev);
WARREN_API int64_t warren_log_event_ms(const warren_log_event *ev);
WARREN_API warren_log_level warren_log_event_level(const warren_log_event *ev);
/* Event "handler_output" (a line an exec handler printed): "stdout" or
 * "stderr", else NULL; and 1 if the line was cut or output was dropped at
 * the caps, else 0. */
WARREN_API const char *warren_log_event_stream(const warren_log_event *ev);
WARREN_API int warren_log_event_truncated(const warren_log_event *ev);

typedef void (*warren_log_fn)(const warren_log_event *ev, void *user);

/* Installs the process-wide log callback (NULL: log nothing) and the lowest
 * level passed to it. `user` is borrowed until replaced. Call before
 * starting workers; not thread-safe against concurrent logging. */
WARREN_API void warren_log_set(warren_log_fn fn, void *user,
                               warren_log_level min_level);

/* Parses "debug", "info", "warn" or "error". Returns 0, or WARREN_ERR_INVAL. */
WARREN_API int warren_log_level_parse(const char *s, warren_log_level *out);

/* Copies `url` into `out` (size `outlen`, always NUL-terminated) with any
 * password replaced by "***". Returns `out`. */
WARREN_API char *warren_redact_url(const char *url, char *out, size_t outlen);

/* ---------------------------------------------------------------------------
 * Messages (the handler's read-only view)
 *
 * Every pointer obtained from a warren_msg is borrowed: it stays valid until
 * the handler returns, and not a moment longer. Copy what you keep.
 * Strings are NUL-terminated; a property the message did not carry is NULL.
 * ------------------------------------------------------------------------- */
typedef struct warren_msg warren_msg;

/* The body, `*len` set to its length. Never NULL (an empty body is ""). */
WARREN_API const void *warren_msg_body(const warren_msg *msg, size_t *len);
/* The id the store deduplicates on (from the consumer's "message_id" policy;
 * may differ from the AMQP message_id property). NULL when running without
 * dedup ("on_missing_id": "process"). */
WARREN_API const char *warren_msg_id(const warren_msg *msg);
WARREN_API const char *warren_msg_queue(const warren_msg *msg);
WARREN_API const char *warren_msg_exchange(const warren_msg *msg);
WARREN_API const char *warren_msg_routing_key(const warren_msg *msg);
WARREN_API const char *warren_msg_content_type(const warren_msg *msg);
WARREN_API const char *warren_msg_correlation_id(const warren_msg *msg);
/* Attempt number: 1 on the first delivery, 2 on the first retry, ... */
WARREN_API int warren_msg_attempt(const warren_msg *msg);
/* 1 if the broker flagged this delivery as redelivered. */
WARREN_API int warren_msg_redelivered(const warren_msg *msg);

/* The type of an AMQP header value. */
typedef enum warren_hdr_type {
    WARREN_HDR_NONE = 0, /* no such header */
    WARREN_HDR_STRING,   /* long or short string: warren_msg_header_str */
    WARREN_HDR_INT,      /* any signed/unsigned integer that fits int64 */
    WARREN_HDR_DOUBLE,   /* float or double */
    WARREN_HDR_BOOL,
    WARREN_HDR_TIMESTAMP, /* seconds since the epoch, read as INT */
    WARREN_HDR_BYTES,     /* byte array, read with warren_msg_header_str */
    WARREN_HDR_OTHER      /* table, array, decimal, void, uint64 > INT64_MAX */
} warren_hdr_type;

/* Returns the type of header `name` (exact, case-sensitive match). */
WARREN_API warren_hdr_type warren_msg_header_type(const warren_msg *msg,
                                                  const char *name);
/* Sets `*val` (borrowed, not NUL-terminated) and `*len`. Returns 0, or
 * WARREN_ERR_NOT_FOUND if absent, WARREN_ERR_INVAL if not a string/bytes. */
WARREN_API int warren_msg_header_str(const warren_msg *msg, const char *name,
                                     const char **val, size_t *len);
/* Reads integer and timestamp headers. Same returns as above. */
WARREN_API int warren_msg_header_int(const warren_msg *msg, const char *name,
                                     int64_t *out);
WARREN_API int warren_msg_header_double(const warren_msg *msg, const char *name,
                                        double *out);
WARREN_API int warren_msg_header_bool(const warren_msg *msg, const char *name,
                                      int *out);

/* ---------------------------------------------------------------------------
 * Handlers
 * ------------------------------------------------------------------------- */
typedef enum warren_result {
    WARREN_ACK = 0,   /* done: record and acknowledge */
    WARREN_RETRY = 1, /* transient failure: try again later (backoff) */
    WARREN_DEAD = 2   /* permanent failure: straight to the dead-letter queue */
} warren_result;

typedef struct warren_ctx warren_ctx;

/* A handler. Called from the worker's thread, one message at a time. `msg`
 * and `ctx` are borrowed until it returns; `user` is what init returned. */
typedef warren_result (*warren_handler_fn)(const warren_msg *msg,
                                           warren_ctx *ctx, void *user);
/* Optional: called once per worker process before the first message. `arg`
 * is the text after the handler name in the config (may be ""). Set `*user`
 * and return 0, or return non-zero to refuse to start (the worker exits with
 * WARREN_ERR_HANDLER; set the reason with warren_ctx_set_error on `ctx`). */
typedef int (*warren_handler_init_fn)(const char *arg, void **user,
                                      warren_ctx *ctx);
/* Optional: called once when the worker stops. */
typedef void (*warren_handler_fini_fn)(void *user);

/* Records why the message failed (printf format). Truncated to 1 KiB; the
 * last call wins. Travels with the retry and into the dead-letter headers. */
WARREN_API void warren_ctx_set_error(warren_ctx *ctx, const char *fmt, ...)
    WARREN_PRINTF(2, 3);
/* Asks that a WARREN_RETRY be retried no sooner than `ms` from now (e.g. a
 * Retry-After header), instead of the consumer's backoff. */
WARREN_API void warren_ctx_retry_after(warren_ctx *ctx, uint32_t ms);
/* Deadline of this attempt in ms since the epoch, or 0 for none. */
WARREN_API int64_t warren_ctx_deadline(const warren_ctx *ctx);

struct sqlite3;
/* The store's database connection, inside a SAVEPOINT of a write
 * transaction of this message's own: on WARREN_ACK the handler's writes and
 * the message's "done" record commit together as soon as it returns; on
 * WARREN_RETRY, WARREN_DEAD or a crash they roll back. The first call may
 * wait for another worker's write transaction on the same store (up to
 * 30 s or the attempt's deadline) and returns NULL if it cannot begin.
 * Borrowed until the handler returns; never close it, never
 * COMMIT/ROLLBACK/BEGIN on it: SQL that ends the transaction anyway (an
 * INSERT OR ROLLBACK conflict, SQLite's own rollback on a full disk or an
 * I/O error) loses the writes, and the message is then retried, never
 * recorded done. NULL if the message runs without dedup or the store is
 * disabled, or if the store is PostgreSQL (see warren_ctx_pg). */
WARREN_API struct sqlite3 *warren_ctx_db(warren_ctx *ctx);

struct pg_conn;
/* The same for a PostgreSQL store (store.url): libpq's connection (cast to
 * PGconn *; `struct pg_conn` is libpq's own tag, so this header needs no
 * libpq headers), inside a SAVEPOINT of this message's outcome transaction:
 * on WARREN_ACK the handler's rows commit with the "done" record, otherwise
 * they roll back. A statement that fails aborts that transaction: the
 * message is then retried, never recorded done. Borrowed until the handler
 * returns; never close it, never COMMIT/ROLLBACK/BEGIN on it. NULL if the
 * message runs without dedup, the store is SQLite (see warren_ctx_db), or
 * the transaction cannot begin. */
WARREN_API struct pg_conn *warren_ctx_pg(warren_ctx *ctx);

/* A plugin (.so loaded by "plugin:PATH.so:SYMBOL") must contain this once,
 * at file scope. warren refuses plugins built against another ABI.
 * Optional hooks are found as SYMBOL_init and SYMBOL_fini. */
#define WARREN_PLUGIN_DECLARE()                                                \
    const int warren_plugin_abi_version = WARREN_ABI_VERSION

/* ---------------------------------------------------------------------------
 * Configuration
 * ------------------------------------------------------------------------- */
typedef struct warren_config warren_config;

/* Reads and validates the JSON config at `path`. On success sets `*out`
 * (free with warren_config_free) and returns 0. On failure returns
 * WARREN_ERR_CONFIG (or NOMEM) and writes "FILE: FIELD: what was expected"
 * into `err` (size `errlen`, always NUL-terminated). WARREN_URL in the
 * environment, when set, replaces broker.url. */
WARREN_API int warren_config_load(const char *path, warren_config **out,
                                  char *err, size_t errlen);
/* Same, from a string; `name` stands for the file name in errors. */
WARREN_API int warren_config_parse(const char *json, const char *name,
                                   warren_config **out, char *err,
                                   size_t errlen);
WARREN_API void warren_config_free(warren_config *cfg);
/* Number of consumers, and the queue of consumer `i` (borrowed). */
WARREN_API int warren_config_consumer_count(const warren_config *cfg);
WARREN_API const char *warren_config_consumer_queue(const warren_config *cfg,
                                                    int i);

/* ---------------------------------------------------------------------------
 * Worker: one process's connection consuming one queue
 * ------------------------------------------------------------------------- */
typedef struct warren_worker warren_worker;

/* Creates a worker for consumer `index` of `cfg`. `cfg` is borrowed and must
 * outlive the worker. The handler comes from the consumer's "handler" field
 * unless warren_worker_set_handler() is called before warren_worker_run().
 * Returns NULL only when out of memory. */
WARREN_API warren_worker *warren_worker_new(const warren_config *cfg,
                                            int index);

/* Uses an in-process C handler instead of the configured one. `init` and
 * `fini` may be NULL; `arg` is copied. */
WARREN_API int warren_worker_set_handler(warren_worker *w, warren_handler_fn fn,
                                         warren_handler_init_fn init,
                                         warren_handler_fini_fn fini,
                                         const char *arg);

/* Connects, declares the topology, consumes and handles until stopped.
 * Returns 0 after a clean stop (warren_worker_stop), or a negative
 * WARREN_ERR_*; the detail is in warren_worker_errstr(). */
WARREN_API int warren_worker_run(warren_worker *w);

/* Asks a running worker to stop: it cancels its consumer, finishes the
 * message in hand, commits, acks and returns from warren_worker_run().
 * Async-signal-safe; may be called from a signal handler or another thread. */
WARREN_API void warren_worker_stop(warren_worker *w);

/* Text of the last error (borrowed until the next call on `w`). */
WARREN_API const char *warren_worker_errstr(const warren_worker *w);

/* Counts since warren_worker_new. */
typedef enum warren_stat {
    WARREN_STAT_RECEIVED,
    WARREN_STAT_ACKED,     /* handler returned ACK and the ack was sent */
    WARREN_STAT_RETRIED,   /* sent to a retry tier */
    WARREN_STAT_DEAD,      /* dead-lettered */
    WARREN_STAT_DUPLICATE, /* already done: acked without running */
    WARREN_STAT_DEFERRED   /* held by another live worker: put back */
} warren_stat;
WARREN_API uint64_t warren_worker_stat(const warren_worker *w,
                                       warren_stat which);

WARREN_API void warren_worker_free(warren_worker *w);

#ifdef __cplusplus
}
#endif
#endif /* WARREN_H */

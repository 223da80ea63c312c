/*
 * config.h - the parsed, validated configuration (internal).
 *
 * config.c turns a JSON file into this struct and refuses anything it does
 * not understand before a connection is attempted. Every field has a default
 * (documented in docs/config.md); after warren_config_load() succeeds, every
 * value here is in range and every string is non-NULL unless said otherwise.
 * The struct is owned by the warren_config and freed with it.
 */
#ifndef WARREN_CONFIG_H
#define WARREN_CONFIG_H

#include "warren.h"

#include <stdbool.h>
#include <stdint.h>

/* Returns that warren itself may cause a message on a quorum queue (breaker
 * pauses, busy-store hand-backs, stops and reloads) on top of its poison
 * cap, in the default x-delivery-limit (config.c parse_delivery_limit()). */
#define WARREN__REQUEUE_ALLOWANCE 1000

typedef enum {
    WARREN__QUEUE_CLASSIC = 0,
    WARREN__QUEUE_QUORUM = 1
} warren__queue_type;

typedef enum {
    WARREN__ID_PROPERTY = 0, /* AMQP message_id property */
    WARREN__ID_HEADER,       /* "header:NAME", arg = NAME */
    WARREN__ID_JSON,         /* "json:PATH", arg = dotted PATH */
    WARREN__ID_SHA256        /* hash of the body */
} warren__id_source;

typedef enum {
    WARREN__MISSING_DEAD = 0, /* dead-letter with the reason */
    WARREN__MISSING_HASH,     /* fall back to sha256 of the body */
    WARREN__MISSING_PROCESS   /* run without dedup, warn */
} warren__missing_id;

typedef enum {
    WARREN__BACKOFF_FIXED = 0,
    WARREN__BACKOFF_EXPONENTIAL,
    WARREN__BACKOFF_LIST
} warren__backoff_kind;

typedef enum {
    WARREN__JITTER_PROPORTIONAL = 0, /* delay * [1 - jitter, 1 + jitter] */
    WARREN__JITTER_FULL = 1          /* uniform in [0, delay] */
} warren__jitter_style;

typedef struct {
    warren__backoff_kind kind;
    uint32_t delay_ms;   /* fixed */
    uint32_t initial_ms; /* exponential */
    double multiplier;   /* exponential, >= 1.0 */
    uint32_t max_ms;     /* exponential cap, and cap of everything */
    uint32_t *delays_ms; /* list: delays for retry 1, 2, ...; last repeats */
    size_t n_delays;
    double jitter; /* 0..1: delay * (1 - jitter .. 1 + jitter) */
    warren__jitter_style jitter_style; /* full ignores `jitter` */
} warren__backoff_cfg;

typedef enum {
    WARREN__RETRY_REPUBLISH = 0,
    WARREN__RETRY_NACK = 1
} warren__retry_mode;

typedef enum {
    WARREN__BUDGET_DEAD = 0, /* a failure that may not retry: dead-letter */
    WARREN__BUDGET_PAUSE = 1 /* hand it back and open the breaker */
} warren__budget_exhausted;

/* gRPC's retryThrottling, per worker process: a failure costs a token, a
 * success gives token_ratio back; at max_tokens / 2 or less, no retries. */
typedef struct {
    double max_tokens; /* 0: no budget */
    double token_ratio;
    warren__budget_exhausted when_exhausted;
} warren__budget_cfg;

typedef struct {
    int max_attempts; /* counting the first delivery; >= 1 */
    warren__retry_mode mode;
    warren__backoff_cfg backoff;
    uint32_t max_age_s; /* 0: no limit */
    warren__budget_cfg budget;
} warren__retry_cfg;

typedef struct {
    uint32_t consecutive_failures; /* 0: off */
    double failure_ratio;          /* 0: off */
    uint32_t window_s;
    uint32_t open_s;
    uint32_t half_open_max;
    char *fallback; /* handler spec run while open; NULL: pause instead */
} warren__breaker_cfg;

typedef struct {
    char *queue;
    char *handler; /* "exec:...", "plugin:...", "builtin:noop" */
    warren__queue_type queue_type;
    uint16_t prefetch;
    int workers;
    int batch_max; /* deliveries per store transaction; <= prefetch */
    warren__id_source id_source;
    char *id_arg; /* header name or JSON path; NULL otherwise */
    warren__missing_id on_missing_id;
    int max_deliveries; /* poison threshold; default max_attempts + 2 */
    /* x-delivery-limit of a quorum queue; default max_deliveries + 2 +
     * WARREN__REQUEUE_ALLOWANCE */
    int delivery_limit;
    warren__retry_cfg retry;
    char *dlq_queue;            /* default "<queue>.dlq" */
    uint64_t max_message_bytes; /* default 16 MiB */
    double timeout_s;           /* 0: none */
    bool dedup;                 /* false: no store at all for this consumer */
    warren__breaker_cfg breaker;
    double rate_limit_per_s; /* 0: unlimited */
} warren__consumer_cfg;

typedef enum {
    WARREN__SYNC_FULL = 0,
    WARREN__SYNC_NORMAL = 1
} warren__sync_mode;

struct warren_config {
    char *path; /* file name used in messages */
    struct {
        char **urls; /* at least one; urls[0] is broker.url or WARREN_URL */
        int n_urls;
        int heartbeat_s;          /* 0 disables; default 30 */
        double connect_timeout_s; /* default 10 */
        int confirm_timeout_ms;   /* publisher confirm wait; default 30000 */
        char *ca_cert;            /* PEM file for amqps; NULL: system default */
        char *client_cert;        /* NULL: none */
        char *client_key;         /* NULL: none */
        bool verify_peer;         /* default true */
        bool verify_hostname;     /* default true */
    } broker;
    struct {
        char *path; /* SQLite file; default "warren.db" unless url is set */
        char *url;  /* PostgreSQL: postgresql://user@host:port/db; NULL */
        warren__sync_mode synchronous;
        uint32_t retention_s;     /* default 7 days */
        uint32_t busy_timeout_ms; /* default 5000 */
        uint32_t lease_s;         /* how long a claim holds; default 300 */
    } store;
    double shutdown_grace_s; /* default 30 */
    char *metrics_listen;    /* NULL: off; "127.0.0.1:9464" */
    warren__consumer_cfg *consumers;
    int n_consumers;
};

/* Returns 1 if two parsed consumers are the same in every field (a reload
 * keeps the workers of such a consumer), else 0. */
int warren__config_consumer_equal(const warren__consumer_cfg *a,
                                  const warren__consumer_cfg *b);
/* Returns 1 if the sections every worker depends on (broker, store) are the
 * same in both configurations, else 0. */
int warren__config_worker_globals_equal(const warren_config *a,
                                        const warren_config *b);

#endif /* WARREN_CONFIG_H */

/*
 * worker.c - one process consuming one queue: the public worker API, the
 * connection lifecycle (handler, store, session, reconnects) and the loop
 * that takes batches and hands them to batch.c.
 *
 * Work goes in batches of what the broker has already sent (never waiting
 * to fill one), and each batch follows one order, which is the whole
 * promise of warren:
 *   1. claim every id in one store transaction (committed before any
 *      handler runs, so a crash mid-handler leaves a trace);
 *   2. run the handlers, each inside a savepoint if it uses the store;
 *   3. publish retry and dead-letter copies and wait for their confirms;
 *   4. record every outcome in one transaction and commit it;
 *   5. only then acknowledge (one multiple-ack where the tags allow).
 * batch.c carries out that order (copies.c builds and publishes the copies
 * of step 3). Before each handler call the circuit breaker and the rate
 * limiter have their say: an open breaker holds the rest of the batch
 * (claims released, deliveries kept unacked on the open channel) and the
 * loop here reads nothing more until open_s has passed; the held ones then
 * run first, as the half-open trials (see hold_for_breaker()).
 */
#include "worker_impl.h"
#include "backoff.h"
#include "failover.h"
#include "hostid.h"
#include "log.h"
#include "topology.h"
#include "url.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PRUNE_EVERY_MS 60000
#define PRUNE_BATCH 500

void warren__worker_set_err(warren_worker *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
}

warren_worker *warren_worker_new(const warren_config *cfg, int index) {
    if (cfg == NULL || index < 0 || index >= cfg->n_consumers) {
        return NULL;
    }
    warren_worker *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return NULL;
    }
    w->cfg = cfg;
    w->c = &cfg->consumers[index];
    w->ws = &w->own_stats;
    /* A random node of broker.urls, so that workers spread (failover.h). */
    w->url_index = warren__url_at(cfg, warren__url_random_start());
    return w;
}

void warren__worker_set_first_url(warren_worker *w, unsigned k) {
    w->url_index = warren__url_at(w->cfg, k);
}

int warren_worker_set_handler(warren_worker *w, warren_handler_fn fn,
                              warren_handler_init_fn init,
                              warren_handler_fini_fn fini, const char *arg) {
    char *copy = strdup(arg ? arg : "");
    if (copy == NULL) {
        return WARREN_ERR_NOMEM;
    }
    free(w->fn_arg);
    w->fn = fn;
    w->fn_init = init;
    w->fn_fini = fini;
    w->fn_arg = copy;
    return 0;
}

void warren_worker_stop(warren_worker *w) {
    if (w) {
        w->stop = 1;
    }
}

const char *warren_worker_errstr(const warren_worker *w) {
    return w ? w->err : "";
}

uint64_t warren_worker_stat(const warren_worker *w, warren_stat which) {
    if (w == NULL || (int)which < 0 || which > WARREN_STAT_DEFERRED) {
        return 0;
    }
    return atomic_load_explicit(&w->ws->counters[which], memory_order_relaxed);
}

static void release_batch_memory(warren_worker *w) {
    warren__batch_release(&w->cur, w->c->batch_max);
    warren__batch_release(&w->next, w->c->batch_max);
}

void warren__worker_share(warren_worker *w, warren__wstats *slot) {
    w->ws = slot;
}

void warren_worker_free(warren_worker *w) {
    if (w == NULL) {
        return;
    }
    release_batch_memory(w);
    warren__batch_free(&w->cur);
    warren__batch_free(&w->next);
    free(w->claim_scratch);
    free(w->fn_arg);
    free(w);
}

static int open_store(warren_worker *w) {
    char err[1024];
    if (!w->c->dedup) {
        return 0;
    }
    int rc = warren__store_open_config(w->cfg, w->host, 0, &w->store, err,
                                       sizeof err);
    if (rc != 0) {
        warren__worker_set_err(w, "%s", err);
    }
    return rc;
}

static int load_handler(warren_worker *w) {
    char err[1024] = "";
    int rc;
    warren__ctx_reset(&w->ctx, 0);
    w->ctx.store = NULL;
    if (w->fn) {
        rc = warren__handler_from_fn(w->fn, w->fn_init, w->fn_fini, w->fn_arg,
                                     &w->ctx, &w->handler, err, sizeof err);
    } else {
        rc = warren__handler_load(w->c->handler, &w->ctx, &w->handler, err,
                                  sizeof err);
    }
    if (rc == 0 && w->c->breaker.fallback != NULL) {
        rc = warren__handler_load(w->c->breaker.fallback, &w->ctx, &w->fallback,
                                  err, sizeof err);
    }
    if (rc != 0) {
        warren__worker_set_err(w, "consumer '%s': %s", w->c->queue, err);
    }
    return rc;
}

static int connect_session(warren_worker *w) {
    char err[1024];
    warren__topo_op *ops = NULL;
    int rc = warren__session_connect(w->cfg, w->url_index, &w->sess, err,
                                     sizeof err);
    if (rc != 0) {
        warren__worker_set_err(w, "%s", err);
        w->url_index = warren__url_next(w->cfg, w->url_index);
        return rc;
    }
    if (warren__log_enabled(WARREN_LOG_INFO)) {
        char shown[WARREN__URL_MAX + 1];
        warren_redact_url(w->cfg->broker.urls[w->url_index], shown,
                          sizeof shown);
        warren__log(
            WARREN_LOG_INFO,
            &(warren__log_fields){"connected", w->c->queue, NULL, NULL, -1, -1},
            "connected to %s (broker.urls[%d] of %d)", shown, w->url_index,
            w->cfg->broker.n_urls);
    }
    ops = calloc(WARREN__TOPO_MAX_OPS, sizeof *ops);
    if (ops == NULL) {
        return WARREN_ERR_NOMEM;
    }
    int n = warren__topology_plan(w->c, ops, WARREN__TOPO_MAX_OPS);
    if (n < 0) {
        warren__worker_set_err(
            w, "consumer '%s': cannot plan its topology (name too long?)",
            w->c->queue);
        rc = WARREN_ERR_CONFIG;
    } else {
        rc = warren__session_apply(w->sess, ops, n);
        if (rc != 0) {
            warren__worker_set_err(w, "%s", warren__session_errstr(w->sess));
        }
    }
    free(ops);
    if (rc == 0) {
        rc = warren__session_qos(w->sess, w->c->prefetch);
    }
    if (rc == 0) {
        rc = warren__session_consume(w->sess, w->c->queue);
    }
    if (rc != 0) {
        if (w->err[0] == '\0') {
            warren__worker_set_err(w, "%s", warren__session_errstr(w->sess));
        }
        warren__session_free(w->sess);
        w->sess = NULL;
    }
    return rc;
}

void warren__worker_maybe_prune(warren_worker *w) {
    int64_t now = warren__now_ms();
    int deleted = 0;
    if (w->store == NULL || w->cfg->store.retention_s == 0 ||
        now - w->last_prune_ms < PRUNE_EVERY_MS) {
        return;
    }
    w->last_prune_ms = now;
    if (warren__store_prune(w->store, now, w->cfg->store.retention_s,
                            PRUNE_BATCH, &deleted) == 0 &&
        deleted == PRUNE_BATCH) {
        /* More to do: come back on the next idle tick, not in a loop. */
        w->last_prune_ms = now - PRUNE_EVERY_MS;
    }
}

/* The breaker is open (and no fallback): holds until open_s has passed,
 * keeping the connection and channel. Nothing more is read into the batch;
 * what the broker has sent meanwhile stays in the session's bounded
 * read-ahead or unacked on the channel, and the held deliveries
 * (w->carried, their claims released) stay unacked too, so no delivery is
 * returned: a quorum queue before RabbitMQ 4.3 would count each return
 * against its x-delivery-limit. Heartbeats are answered while waiting.
 * Returns 0 once the breaker lets trials through (the held ones run first,
 * see take_batch()) or when asked to stop, or a connection error. */
static int hold_for_breaker(warren_worker *w) {
    int64_t wait = warren__breaker_wait_ms(&w->breaker, warren__mono_ms());
    int64_t last_service = warren__mono_ms();
    warren__log(WARREN_LOG_INFO,
                &(warren__log_fields){"breaker_pause", w->c->queue, NULL, NULL,
                                      -1, wait},
                "breaker open: not consuming for %lld ms (%d held, connection "
                "kept, nothing handed back)",
                (long long)wait, w->carried);
    if (warren__worker_flush_acks(w) != 0) {
        warren__worker_set_err(w, "%s", warren__session_errstr(w->sess));
        return WARREN_ERR_CONNECTION;
    }
    while (!w->stop &&
           warren__breaker_wait_ms(&w->breaker, warren__mono_ms()) > 0) {
        int64_t now = warren__mono_ms();
        if (now - last_service >= TOKEN_SERVICE_MS) {
            if (warren__session_service(w->sess) < 0 ||
                warren__session_broken(w->sess)) {
                warren__worker_set_err(w, "%s",
                                       warren__session_errstr(w->sess));
                return WARREN_ERR_CONNECTION;
            }
            last_service = now;
        }
        struct timespec ts = {0, TOKEN_STEP_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Consumes until stopped or the session fails. A batch claimed ahead by
 * group commit is always run (or, when stopping, handed back through its
 * handlers' requeue) before the loop ends, so no claim is left behind;
 * deliveries held for the breaker are handed back on a stop. */
static int consume_loop(warren_worker *w) {
    int batch_max = w->c->batch_max;
    double burst = warren__ratelimit_burst(&w->rate);
    if (burst > 0 && burst < (double)batch_max) {
        /* A batch is claimed as a whole before its handlers run: under a
         * rate limit keep it to what the bucket releases in about 0.1 s,
         * so claims stay short and outcomes commit (and acks go out)
         * steadily instead of after a long paced run. */
        batch_max = (int)burst;
    }
    int n = 0, rc;
    w->ack_tag = 0;
    w->ack_count = 0;
    w->ack_every =
        w->c->prefetch / 2 < ACK_EVERY ? w->c->prefetch / 2 : ACK_EVERY;
    if (w->ack_every < 1) {
        w->ack_every = 1;
    }
    w->n_held = 0;
    w->carried = 0;
    while (!w->stop || n > 0) {
        if (n == 0) {
            if (w->fallback == NULL &&
                warren__breaker_wait_ms(&w->breaker, warren__mono_ms()) > 0) {
                rc = hold_for_breaker(w);
                if (rc != 0) {
                    return rc;
                }
                continue;
            }
            n = warren__worker_take_batch(w, batch_max);
            if (n < 0) {
                return n;
            }
            if (n == 0) {
                continue;
            }
        }
        rc = warren__worker_process_batch(w, n, &n);
        if (rc != 0) {
            if (w->err[0] == '\0' && w->sess) {
                warren__worker_set_err(w, "%s",
                                       warren__session_errstr(w->sess));
            }
            return rc;
        }
    }
    if (w->carried > 0) {
        /* Stopped while holding: the held ones go back untouched. */
        uint64_t tag = w->cur.slots[w->carried - 1].msg.delivery_tag;
        w->carried = 0;
        if (warren__worker_nack_through(w, tag) != 0) {
            warren__worker_set_err(w, "%s", warren__session_errstr(w->sess));
            return WARREN_ERR_CONNECTION;
        }
    }
    if (warren__worker_flush_acks(w) != 0) {
        warren__worker_set_err(w, "%s", warren__session_errstr(w->sess));
        return WARREN_ERR_CONNECTION;
    }
    return 0;
}

static void sleep_ms(warren_worker *w, int64_t ms) {
    int64_t end = warren__mono_ms() + ms;
    while (!w->stop && warren__mono_ms() < end) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int warren_worker_run(warren_worker *w) {
    int rc, ever_connected = 0, first_tries = 0, reconnect_failures = 0;
    w->err[0] = '\0';
    rc = warren__host_id(w->host, sizeof w->host, w->err, sizeof w->err);
    if (rc != 0) {
        return rc;
    }
    snprintf(w->worker_name, sizeof w->worker_name, "%s:%d", w->host,
             (int)getpid());
    atomic_store_explicit(&w->ws->pid, (int64_t)getpid(), memory_order_relaxed);
    int bm = w->c->batch_max;
    int rc_cur = warren__batch_alloc(&w->cur, bm);
    int rc_next = warren__batch_alloc(&w->next, bm);
    w->claim_scratch = calloc((size_t)bm, sizeof *w->claim_scratch);
    if (rc_cur != 0 || rc_next != 0 || !w->claim_scratch) {
        warren__worker_set_err(w, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    warren__worker_copies_init(w);
    warren__breaker_init(&w->breaker, &w->c->breaker, w->c->queue);
    warren__retrybudget_init(&w->budget, &w->c->retry.budget);
    /* "Across the pool": each of the consumer's workers takes an equal
     * share. Workers that idle leave theirs unused, so a pool whose work
     * is uneven stays under the limit rather than reaching it. */
    warren__ratelimit_init(&w->rate,
                           w->c->rate_limit_per_s /
                               (w->c->workers > 0 ? w->c->workers : 1),
                           warren__mono_ms());
    /* Handler first: a handler that cannot load should fail before any
     * connection is made or any message is taken. */
    rc = load_handler(w);
    if (rc == 0) {
        rc = open_store(w);
    }
    while (rc == 0 && !w->stop) {
        rc = connect_session(w);
        if (rc != 0) {
            int fatal = warren_err_fatal(rc) == WARREN_FATAL_ALWAYS;
            int unreachable = warren__url_try_next(rc);
            if (!ever_connected && unreachable &&
                ++first_tries < w->cfg->broker.n_urls) {
                continue; /* fail over to the next of broker.urls */
            }
            if (!ever_connected || fatal) {
                break; /* a first failure is the operator's to see */
            }
            int64_t backoff_ms =
                warren__backoff_reconnect_ms(++reconnect_failures);
            warren__log(WARREN_LOG_WARN,
                        &(warren__log_fields){"reconnect", w->c->queue, NULL,
                                              NULL, -1, backoff_ms},
                        "reconnecting in %lld ms: %s", (long long)backoff_ms,
                        w->err);
            sleep_ms(w, backoff_ms + (int64_t)(warren__rng_uniform() *
                                               (double)backoff_ms / 2));
            rc = 0;
            continue;
        }
        if (!ever_connected) {
            warren__log(WARREN_LOG_INFO,
                        &(warren__log_fields){"consuming", w->c->queue, NULL,
                                              NULL, -1, -1},
                        "consuming from '%s' (prefetch %u, batch %d)",
                        w->c->queue, w->c->prefetch, w->c->batch_max);
        }
        if (ever_connected) {
            atomic_fetch_add_explicit(&w->ws->reconnects, 1,
                                      memory_order_relaxed);
        }
        ever_connected = 1;
        reconnect_failures = 0;
        atomic_store_explicit(&w->ws->connected, 1, memory_order_relaxed);
        rc = consume_loop(w);
        if (w->stop && rc == 0) {
            warren__session_cancel(w->sess);
        }
        warren__session_free(w->sess);
        w->sess = NULL;
        atomic_store_explicit(&w->ws->connected, 0, memory_order_relaxed);
        atomic_store_explicit(&w->ws->in_flight, 0, memory_order_relaxed);
        warren__worker_publish_breaker(w);
        if (rc < 0 && warren_err_fatal(rc) == WARREN_FATAL_ALWAYS) {
            break;
        }
        if (rc != 0 && !w->stop) {
            warren__log(WARREN_LOG_WARN,
                        &(warren__log_fields){"disconnected", w->c->queue, NULL,
                                              NULL, -1, -1},
                        "%s", w->err);
            /* The node may be the one that went away: the next connect
             * goes to another node of the cluster, and only if that fails
             * does the backoff start. */
            w->url_index = warren__url_next(w->cfg, w->url_index);
            rc = 0; /* reconnect */
        }
    }
    warren__handler_free(w->handler);
    w->handler = NULL;
    warren__handler_free(w->fallback);
    w->fallback = NULL;
    warren__store_close(w->store);
    w->store = NULL;
    warren__worker_copies_fini(w);
    release_batch_memory(w);
    if (rc == 0) {
        w->err[0] = '\0';
        return 0;
    }
    if (w->err[0] == '\0') {
        warren__worker_set_err(w, "%s", warren_strerror(rc));
    }
    return rc;
}

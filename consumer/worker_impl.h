/*
 * worker_impl.h - what the pieces of one worker share (private to
 * consumer/worker.c, consumer/batch.c and consumer/copies.c).
 *
 * A worker is split by concern: worker.c holds the public worker API, the
 * connection lifecycle and the loop; batch.c runs one batch through the
 * order warren promises (claim, handlers, copies, outcomes, acks); copies.c
 * builds and publishes the retry and dead-letter copies. They share the
 * worker struct, the per-delivery item and the batch value declared here;
 * nothing outside those files includes this header.
 */
#ifndef WARREN_WORKER_IMPL_H
#define WARREN_WORKER_IMPL_H

#include "breaker.h"
#include "config.h"
#include "ctx.h"
#include "handler_api.h"
#include "msg.h"
#include "ratelimit.h"
#include "retrybudget.h"
#include "session.h"
#include "store.h"
#include "wstats.h"

#include <signal.h>
#include <stdint.h>

/* Sleep step while waiting (for a rate-limit token, for the breaker), and
 * how often such a wait answers heartbeats. */
#define TOKEN_STEP_MS 20
#define TOKEN_SERVICE_MS 1000
/* Acks are coalesced into one multiple-ack per this many settled messages
 * (capped at half the prefetch), or once the oldest unsent one is this old,
 * or when no delivery arrives within ACK_IDLE_MS: the broker pays ~20-35 us
 * per ack frame (shared/NOTES-rabbitmq.md), and a batch is only what is
 * already buffered, often a handful of messages. */
#define ACK_EVERY 100
#define ACK_MAX_DELAY_MS 20
#define ACK_IDLE_MS 2

typedef enum {
    FATE_NONE = 0, /* not decided yet: run the handler */
    FATE_ACK,      /* done: record done, ack */
    FATE_RETRY,    /* failed: copy to the delay cascade (or nack), ack */
    FATE_DEAD,     /* copy to the DLQ, record dead, ack */
    FATE_SKIP,     /* duplicate or already dead: ack without running */
    FATE_DEFER,    /* held by another worker: put back, no attempt spent */
    FATE_REQUEUE,  /* could not be resolved now: nack with requeue */
    FATE_HOLD      /* breaker open: claim released, kept unacked to run
                      first once it half-opens (hold_for_breaker()) */
} fate;

typedef struct {
    fate fate;
    int claim; /* index into claims[], -1 if not in the store */
    char id[WARREN__ID_MAX + 1];
    int attempt;
    uint32_t delay_ms;
    int64_t first_failed_at_ms;
    int published; /* a copy went out in this batch */
    int recorded;  /* done committed with the handler's own transaction */
    int released;  /* claim given back before a suspect ran: claim again */
    int crashed;   /* its last run killed the worker (store's report) */
    /* Came back from the delay cascade (its route is restored). */
    int from_cascade;
    char reason[WARREN__ERROR_MAX + 1];
    const char *outcome; /* for logs */
    const char *handler; /* "primary", "fallback"; NULL if none ran */
} item;

/* One batch: up to batch_max deliveries, what is decided about each
 * (items[i] is about slots[i]) and the store's answers to their claims
 * (items[i].claim indexes claims). A segment of a batch is a batch value
 * too, whose slots and items start inside the batch (see segment() in
 * batch.c). */
typedef struct {
    warren__delivery *slots;
    item *items;
    warren__claim *claims;
} warren__batch;

struct warren_worker {
    const struct warren_config *cfg;
    const warren__consumer_cfg *c;
    warren_handler_fn fn;
    warren_handler_init_fn fn_init;
    warren_handler_fini_fn fn_fini;
    char *fn_arg;

    warren__handler *handler;
    warren__handler *fallback; /* breaker.fallback; NULL: pause instead */
    warren__store *store;
    warren__session *sess;
    warren_ctx ctx;
    volatile sig_atomic_t stop;
    int url_index;
    int64_t last_prune_ms;
    char host[128];
    char worker_name[160];
    char err[2048];
    warren__wstats own_stats;
    warren__wstats *ws; /* &own_stats, or a slot shared with `warren run` */
    warren__breaker breaker;
    warren__ratelimit rate;
    warren__retrybudget budget;

    /* The batch being run, and the next one, read and claimed ahead while
     * `cur` settles (see claim_next()); they trade places when `cur` is
     * done. */
    warren__batch cur;
    warren__batch next;
    warren__claim *claim_scratch; /* batch_max: claims taken again */
    int64_t lease_mono_ms;        /* when the current claims were leased */
    warren__arena pool;           /* headers of copies, recycled every batch */

    /* The coalesced multiple-ack not sent yet: its tag (0: none), how many
     * deliveries it settles, and since when (mono ms). */
    uint64_t ack_tag;
    int ack_count;
    int ack_every;
    int64_t ack_since_ms;

    /* Breaker holds: `n_held` deliveries of `cur` are held
     * unacked (while any is, acks go one by one: a multiple-ack would
     * settle them too); once the batch is done they are moved to its first
     * `carried` slots, which take_batch() runs again as the next batch's
     * head. */
    int n_held;
    int carried;
};

_Static_assert(sizeof(((warren__wstats *)0)->running_id) >=
                   sizeof(((item *)0)->id),
               "wstats.running_id holds any id");

void warren__worker_set_err(warren_worker *w, const char *fmt, ...)
    WARREN_PRINTF(2, 3);

/* Header `name` of `m` as an integer within [lo, hi], else `dflt`. */
static inline int64_t header_int(const struct warren_msg *m, const char *name,
                                 int64_t lo, int64_t hi, int64_t dflt) {
    int64_t v;
    if (warren_msg_header_int(m, name, &v) == 0 && v >= lo && v <= hi) {
        return v;
    }
    return dflt;
}

/* worker.c */
/* Prunes old store records now and then (every PRUNE_EVERY_MS, idle). */
void warren__worker_maybe_prune(warren_worker *w);

/* batch.c */
/* Allocates a batch of `max` slots (zeroed). Returns 0 or
 * WARREN_ERR_NOMEM, after which what was allocated is freed by
 * warren__batch_free(). */
int warren__batch_alloc(warren__batch *b, int max);
/* Gives back the buffers of its `max` deliveries (their body buffers,
 * pools and spools), keeping the arrays for the next connection. */
void warren__batch_release(warren__batch *b, int max);
/* Frees the arrays; a batch never allocated (all NULL) is a no-op. */
void warren__batch_free(warren__batch *b);
/* Copies the breaker's state where the supervisor can read it. */
void warren__worker_publish_breaker(warren_worker *w);
/* Sends the coalesced multiple-ack, if any. */
int warren__worker_flush_acks(warren_worker *w);
/* Hands back every unsettled delivery up to `tag`. */
int warren__worker_nack_through(warren_worker *w, uint64_t tag);
/* Reads and claims a new batch; see batch.c. */
int warren__worker_take_batch(warren_worker *w, int batch_max);
/* Runs one claimed batch through steps 2-5; see batch.c. */
int warren__worker_process_batch(warren_worker *w, int n, int *next_n);

/* copies.c */
void warren__worker_copies_init(warren_worker *w);
void warren__worker_copies_fini(warren_worker *w);
/* Step 3: the copies the first `n` items of batch (or segment) `b` need,
 * published and confirmed before any original is acked. Returns 0, or an
 * error after which every item that needed a copy is to be requeued (their
 * fates say so already). */
int warren__worker_publish_copies(warren_worker *w, const warren__batch *b,
                                  int n);

#endif /* WARREN_WORKER_IMPL_H */

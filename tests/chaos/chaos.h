/*
 * chaos.h - the chaos suite's harness, on top of the integration tests'
 * itest.h. A scenario runs a `warren run` pool on an exec handler (external
 * effects, at-least-once) and/or the ledger plugin (effects in the store,
 * exactly once) while a forked producer publishes ids with confirms; the
 * test breaks something, heals it, drains, and chaos_check() counts every
 * id and prints one result row. A scenario passes only with lost = 0,
 * store-transactional effects exactly once, doubled external effects only
 * for ids whose earlier run was in a worker killed at a crash, and every
 * work, retry and delay queue empty at the end.
 */
#ifndef WARREN_CHAOS_H
#define WARREN_CHAOS_H

#include "itest.h"

#include <stdint.h>
#include <sys/types.h>

#define CHAOS_MAX_KILLED 256

typedef struct chaos_opts {
    const char *name;      /* scenario name: [a-z0-9_.], used in queue names */
    int exec_workers;      /* workers of the exec consumer; 0: none */
    int ledger_workers;    /* workers of the ledger consumer; 0: none */
    int n;                 /* ids to publish */
    int rate;              /* publishes per second */
    int heartbeat_s;       /* 0: 5 */
    int prefetch, batch;   /* 0: 20 and 10 */
    const char *failpoint; /* WARREN_FAILPOINT spec, or NULL */
    const char *consumer_extra; /* extra JSON keys for each consumer, or "" */
    int slow_every; /* exec: every Nth good id sleeps slow_s; 0: none */
    double slow_s;
} chaos_opts;

typedef struct chaos_run {
    chaos_opts o;
    char *dir;
    char qexec[128], qledger[128], exchange[128];
    char cfg[512], log[512], effects[512], db[512], fpdir[512], prod_out[512];
    amqp_connection_state_t conn;
    pid_t pool, producer;
    int64_t t0_ms;
    pid_t killed[CHAOS_MAX_KILLED]; /* workers the test SIGKILLed */
    int n_killed;
    /* Ids whose confirm arrived in [excuse_from_ms, excuse_to_ms) and that no
     * consumer saw were removed by the scenario itself (a deleted queue):
     * counted as "dropped by the operator", not lost. 0: no window. */
    int64_t excuse_from_ms, excuse_to_ms;
    char note[256]; /* printed in the row's last column */
} chaos_run;

/* Milliseconds on the wall clock (the producer's confirm times use it). */
int64_t chaos_now_ms(void);

/* Declares the queues (and a fanout exchange when both consumers run),
 * writes the handler script and the config. Fails the test on error. */
void chaos_setup(chaos_run *r, const chaos_opts *o);

/* Starts `warren run` (with o.failpoint armed, if any). */
void chaos_start_pool(chaos_run *r);

/* Forks the producer: o.n ids at o.rate per second, with confirms,
 * reconnecting on connection loss; each id ends confirmed, nacked,
 * returned (unroutable), indeterminate (confirm never came) or unsent. */
void chaos_start_producer(chaos_run *r);

/* Effects seen so far: exec effect lines plus ledger rows. */
long chaos_effects(chaos_run *r);

/* Waits until chaos_effects() >= want; fails the test after timeout_s. */
void chaos_wait_effects(chaos_run *r, long want, double timeout_s);

/* Waits for the producer to finish; fails the test after timeout_s. */
void chaos_wait_producer(chaos_run *r, double timeout_s);

/* The pool's worker pids (children of the supervisor). */
int chaos_workers(chaos_run *r, pid_t *out, int max);

/* SIGKILLs one worker (chosen by `pick`) and remembers its pid, so its
 * effects count as "in flight at a crash". Returns the pid, or -1. */
pid_t chaos_kill_worker(chaos_run *r, unsigned pick);

/* Runs `scripts/broker ctl --name $WARREN_BROKER_NAME -- ARGS...` (argv
 * NULL-terminated) with its output in `out` (may be NULL). Returns its exit
 * status (-1 if it could not run). Skips the test without a broker name. */
int chaos_ctl(const char *const args[], char *out, size_t outlen);

/* Awaits the end state: every confirmed id handled or dead-lettered, work
 * and delay queues empty, nothing claimed or retrying in the store, nothing
 * unacked. Returns 1, or 0 after timeout_s (the check then shows what). */
int chaos_drain(chaos_run *r, double timeout_s);

/* SIGTERMs the pool and asserts it exits 0 within the grace. */
void chaos_stop_pool(chaos_run *r);

/* Counts everything, prints the result row (stdout and the results file
 * $CHAOS_RESULTS, default $WARREN_BUILD_DIR/chaos-results.md) and fails the
 * test unless the invariant holds. */
void chaos_check(chaos_run *r);

/* Number of lines in the pool's log containing `needle`. */
long chaos_log_count(chaos_run *r, const char *needle);

/* Deletes the scenario's queues and its directory. */
void chaos_teardown(chaos_run *r);

#endif

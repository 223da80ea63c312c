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
 *
 * The same scenarios scale out (issue 15): `hosts` pools, each its own
 * WARREN_HOST_ID so their claims are judged by lease only, fed by one
 * producer per broker node with some ids published twice from different
 * nodes, on a SQLite file or, with store "postgresql" (or CHAOS_STORE=
 * postgresql), a database of its own on the server in WARREN_TEST_PG_URL.
 * The nodes are WARREN_TEST_CLUSTER_URLS (one URL a line or space apart)
 * when set, else the one broker of WARREN_TEST_URL.
 */
#ifndef WARREN_CHAOS_H
#define WARREN_CHAOS_H

#include "itest.h"

#include <stdint.h>
#include <sys/types.h>

#define CHAOS_MAX_KILLED 256
#define CHAOS_MAX_HOSTS 4
#define CHAOS_MAX_NODES 4

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
    int hosts;         /* `warren run` pools, each its own host id; 0: 1 (and no
                          WARREN_HOST_ID, as before) */
    int producers;     /* producers, producer k on node k mod nodes; 0: 1 */
    int dup_every;     /* every Nth id is published a second time, by the next
                          producer, up to 40 ids later; 0: none */
    int lease_s;       /* store.lease_s; 0: warren's default */
    const char *store; /* "sqlite" or "postgresql"; NULL: $CHAOS_STORE, and
                          sqlite when that is unset */
    const char *log_level; /* the pools' --log-level; NULL: info */
} chaos_opts;

typedef struct chaos_run {
    chaos_opts o;
    char *dir;
    char qexec[128], qledger[128], exchange[128];
    char cfg[512], log[512], effects[512], db[512], fpdir[512], prod_out[512];
    amqp_connection_state_t conn;
    pid_t pool, producer;                 /* host 0's pool, producer 0 */
    pid_t pools[CHAOS_MAX_HOSTS];         /* [0] == pool; 0: not running */
    pid_t producers[CHAOS_MAX_NODES];     /* [0] == producer */
    char logs[CHAOS_MAX_HOSTS][512];      /* [0] == log */
    char cfgs[CHAOS_MAX_HOSTS][512];      /* [0] == cfg */
    char prod_outs[CHAOS_MAX_NODES][512]; /* [0] == prod_out */
    int n_urls;
    char urls[CHAOS_MAX_NODES][256]; /* the broker nodes */
    int pg;                          /* the store is PostgreSQL */
    char pg_db[64], store_url[512];  /* its database and URL */
    int64_t t0_ms;
    pid_t killed[CHAOS_MAX_KILLED]; /* workers the test SIGKILLed */
    int n_killed;
    /* Ids whose confirm arrived in [excuse_from_ms, excuse_to_ms) and that no
     * consumer saw were removed by the scenario itself (a deleted queue):
     * counted as "dropped by the operator", not lost. 0: no window. */
    int64_t excuse_from_ms, excuse_to_ms;
    /* Exec effect lines [excuse_exec_from, excuse_exec_to) (0-based, in the
     * order written) ran while the store could not record outcomes: a
     * second run of those ids is at-least-once like one after a crash. */
    long excuse_exec_from, excuse_exec_to;
    char note[256]; /* printed in the row's last column */
    long good_dead; /* set by chaos_check: good ids only dead-lettered */
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

/* The worker pids of host `host`'s pool. */
int chaos_host_workers(chaos_run *r, int host, pid_t *out, int max);

/* SIGKILLs a whole host: its supervisor, then every worker it had, all
 * remembered as killed; reaps the supervisor. Returns the number of
 * processes killed (0 if the host was not running). */
int chaos_kill_host(chaos_run *r, int host);

/* Lines containing `needle` in host `host`'s log. */
long chaos_host_log_count(chaos_run *r, int host, const char *needle);

/* A count from the store: `sql` with "$1" bound to `param` (may be NULL),
 * its first column of its first row; the table is `messages` on SQLite and
 * `warren_messages` on PostgreSQL: write "%s" for it. -1 on error. */
long long chaos_store_count(chaos_run *r, const char *sql, const char *param);

/* Runs the shell command `cmd` (the test's own constants only), its stdout
 * in `out` (may be NULL; truncated to outlen - 1). Returns its exit status
 * (-1 if it could not run). */
int chaos_sh(const char *cmd, char *out, size_t outlen);

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

/* Number of lines in the pools' logs containing `needle`. */
long chaos_log_count(chaos_run *r, const char *needle);

/* Deletes the scenario's queues, its directory and its PostgreSQL
 * database. */
void chaos_teardown(chaos_run *r);

#endif

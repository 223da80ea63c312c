/*
 * run.c - `warren run`: a supervisor process that forks one worker process
 * per configured worker and keeps them alive.
 *
 * The supervisor holds no broker connection and no store handle, so it has
 * nothing to lose when a worker dies: it restarts the worker with backoff
 * (the broker redelivers what that worker had unacked). A worker killed
 * while a handler ran has that message's attempt spent: the supervisor
 * opens the store just to mark the record (charge_crash()); the store's
 * poison detection bounds the crash loops nobody attributed. Which errors stop
 * the pool comes from the one table in warren.h (warren_err_fatal): a worker
 * exits with its error's exit code only for those (ALWAYS, or AT_START early in
 * the pool's life), else with EXIT_FAILURE_RUNTIME, and the supervisor stops
 * the pool on any code but those two.
 * SIGTERM/SIGINT: forwarded once as SIGTERM; workers finish the message in
 * hand, commit, ack and exit. A second signal, or the grace running out,
 * kills them (their unacked messages are redelivered).
 * Each worker writes its live figures into a slot of memory shared with the
 * supervisor (metrics.c), which serves them on /metrics and reads them to
 * end a worker whose in-process handler overstays its deadline. SIGHUP
 * re-reads the config and replaces, one at a time, the workers of the
 * consumers whose configuration changed (all of them if the broker or
 * store section did, or a plugin file was rebuilt); a config that does not
 * load leaves the pool untouched.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h" /* the restart delay */
#include "config.h"  /* shutdown_grace_s, workers per consumer */
#include "failover.h"
#include "log.h"
#include "store.h"
#include "wstats.h"

#define EARLY_MS 10000 /* unreachable this early: the operator's problem */
#define DEADLINE_CHECK_MS 200
#define DEADLINE_GRACE_MIN_MS 5000
/* Half the slots: a reload starts each replacement before its old worker
 * stops, so for a moment both hold a slot. */
#define MAX_WORKERS (CLI_MAX_SLOTS / 2)
#define MAX_GENS 16 /* configurations whose workers may still run */

typedef struct {
    int used;
    pid_t pid;          /* 0: not running */
    warren_config *cfg; /* the configuration it runs (a generation) */
    int consumer;
    int restarts;
    int64_t started_ms;
    int64_t restart_at_ms; /* 0: running or not to be restarted */
    int64_t kill_at_ms;    /* retiring: SIGKILL once past this */
    int retiring;          /* SIGTERMed by a reload: not restarted */
    int overdue;           /* SIGKILLed for an overdue handler */
    int64_t overdue_by_ms; /* ... this long past its deadline */
    int stop_killed;       /* SIGKILLed by a stop or a reload's grace */
    char plugin[64];       /* its plugin file when started (handler_stamp) */
} child;

/* Everything the supervisor owns. kids[i] runs on shared slot i. */
typedef struct {
    warren_config *cfg; /* current generation */
    warren_config *old[MAX_GENS];
    int n_old;
    const char *path;
    int workers_override; /* --workers, 0 if not given */
    int64_t t0;
    child kids[CLI_MAX_SLOTS];
    cli_pool_view view;
    cli_http *http;
    /* A reload in progress: plan[] lists the consumer of each new worker,
     * `waiting` is the slot of the one started last (-1: none). */
    int reloading;
    int plan[MAX_WORKERS];
    int n_plan, next_plan;
    int waiting;
    int64_t wait_until_ms;
    /* The broker.urls index the next worker starts at (failover.h): one
     * more per spawn, from a random start, so a pool spreads over a
     * cluster's nodes and hosts do not all begin with the first. */
    unsigned next_url;
} pool;

static volatile sig_atomic_t got_stop, got_hup;
static warren_worker *the_worker;

static void on_worker_signal(int sig) {
    (void)sig;
    if (got_stop) {
        _exit(EXIT_FAILURE_RUNTIME); /* second signal: at once */
    }
    got_stop = 1;
    warren_worker_stop(the_worker);
}

static void on_supervisor_signal(int sig) {
    if (sig == SIGHUP) {
        got_hup = 1;
    } else {
        got_stop++;
    }
}

static void install(int sig, void (*fn)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* A worker's exit code, from the error table: the error's own code when it
 * stops the pool, EXIT_FAILURE_RUNTIME ("restart me") when it does not.
 * AT_START errors reach here only before this worker's first connection
 * (after it, the worker retries them itself); they stop the pool only in
 * its first EARLY_MS, when they are the operator's mistake, not a restarted
 * worker meeting a passing state. */
static int worker_exit_code(int rc, int64_t pool_age_ms) {
    int fatal = warren_err_fatal(rc);
    if (rc == 0) {
        return EXIT_OK;
    }
    if (fatal == WARREN_FATAL_ALWAYS ||
        (fatal == WARREN_FATAL_AT_START && pool_age_ms < EARLY_MS)) {
        return cli_exit_code(rc);
    }
    return EXIT_FAILURE_RUNTIME;
}

/* The body of a worker process. Returns its exit code. */
static int worker_main(warren_config *cfg, int index, warren__wstats *slot,
                       unsigned first_url, int64_t pool_t0) {
    install(SIGTERM, on_worker_signal);
    /* The supervisor forwards SIGTERM: a terminal's Ctrl-C reaching the
     * whole process group must not count as a second signal here. */
    install(SIGINT, SIG_IGN);
    install(SIGHUP, SIG_IGN);
    install(SIGPIPE, SIG_IGN);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    warren_worker *w = warren_worker_new(cfg, index);
    if (w == NULL) {
        return EXIT_FAILURE_RUNTIME;
    }
    warren__worker_share(w, slot);
    warren__worker_set_first_url(w, first_url);
    the_worker = w;
    if (got_stop || getppid() == 1) {
        /* A signal came before the worker existed, or the supervisor died
         * before prctl took effect. */
        warren_worker_stop(w);
    }
    int rc = warren_worker_run(w);
    if (rc != 0) {
        warren__log(
            WARREN_LOG_ERROR,
            &(warren__log_fields){"worker_failed",
                                  warren_config_consumer_queue(cfg, index),
                                  NULL, NULL, -1, -1},
            "%s (%s)", warren_worker_errstr(w), warren_errname(rc));
    } else {
        warren__log(
            WARREN_LOG_INFO,
            &(warren__log_fields){"worker_stopped",
                                  warren_config_consumer_queue(cfg, index),
                                  NULL, NULL, -1, -1},
            "stopped cleanly: %llu received, %llu acked, %llu "
            "retried, %llu dead, %llu duplicates",
            (unsigned long long)warren_worker_stat(w, WARREN_STAT_RECEIVED),
            (unsigned long long)warren_worker_stat(w, WARREN_STAT_ACKED),
            (unsigned long long)warren_worker_stat(w, WARREN_STAT_RETRIED),
            (unsigned long long)warren_worker_stat(w, WARREN_STAT_DEAD),
            (unsigned long long)warren_worker_stat(w, WARREN_STAT_DUPLICATE));
    }
    warren_worker_free(w);
    return worker_exit_code(rc, warren__mono_ms() - pool_t0);
}

static const char *queue_of(const child *c) {
    return c->cfg->consumers[c->consumer].queue;
}

static double grace_s(const pool *p) {
    return p->cfg->shutdown_grace_s;
}

/* A plugin's file as stat() sees it (device, inode, size, mtime), so that a
 * reload can tell a rebuilt plugin from the one a worker has loaded; "" for
 * other kinds (an exec program is run afresh for each message). The file
 * name is found as plugin.c finds it: up to the last ':' of the first
 * word. */
static void handler_stamp(const char *handler, char *out, size_t len) {
    struct stat sb;
    char path[PATH_MAX];
    out[0] = '\0';
    if (strncmp(handler, "plugin:", 7) != 0) {
        return;
    }
    const char *rest = handler + 7, *colon = NULL;
    size_t word = strcspn(rest, " \t");
    for (const char *q = rest; q < rest + word; q++) {
        if (*q == ':') {
            colon = q;
        }
    }
    if (colon == NULL) {
        return;
    }
    snprintf(path, sizeof path, "%.*s", (int)(colon - rest), rest);
    if (stat(path, &sb) != 0) {
        snprintf(out, len, "none");
        return;
    }
    snprintf(out, len, "%llx:%llx:%llx:%lld.%09ld",
             (unsigned long long)sb.st_dev, (unsigned long long)sb.st_ino,
             (unsigned long long)sb.st_size, (long long)sb.st_mtim.tv_sec,
             (long)sb.st_mtim.tv_nsec);
}

static pid_t spawn(pool *p, int slot) {
    child *c = &p->kids[slot];
    handler_stamp(c->cfg->consumers[c->consumer].handler, c->plugin,
                  sizeof c->plugin);
    pthread_mutex_lock(&p->view.lock);
    p->view.slot_series[slot] = cli_view_series(&p->view, queue_of(c));
    pthread_mutex_unlock(&p->view.lock);
    fflush(NULL);
    unsigned first_url = p->next_url++;
    pid_t pid = fork();
    if (pid == 0) {
        if (p->http != NULL) {
            close(cli_http_fd(p->http));
        }
        install(SIGTERM, SIG_DFL);
        _exit(worker_main(c->cfg, c->consumer, &p->view.slots[slot], first_url,
                          p->t0));
    }
    if (pid > 0) {
        pthread_mutex_lock(&p->view.lock);
        p->view.slot_alive[slot] = 1;
        pthread_mutex_unlock(&p->view.lock);
        c->pid = pid;
        c->started_ms = warren__mono_ms();
        c->restart_at_ms = 0;
        c->overdue = 0;
        c->stop_killed = 0;
    }
    return pid;
}

/* Frees every earlier configuration no child runs any more. */
static void free_unused_gens(pool *p) {
    for (int g = 0; g < p->n_old; g++) {
        int refs = 0;
        for (int i = 0; i < CLI_MAX_SLOTS && !refs; i++) {
            refs = p->kids[i].used && p->kids[i].cfg == p->old[g];
        }
        if (!refs) {
            warren_config_free(p->old[g]);
            p->old[g--] = p->old[--p->n_old];
        }
    }
}

/* Forgets a child that will not run again, and any configuration no
 * child runs any more. */
static void free_entry(pool *p, int slot) {
    memset(&p->kids[slot], 0, sizeof p->kids[slot]);
    pthread_mutex_lock(&p->view.lock);
    p->view.slot_series[slot] = -1;
    pthread_mutex_unlock(&p->view.lock);
    free_unused_gens(p);
}

static int add_child(pool *p, int consumer) {
    for (int i = 0; i < CLI_MAX_SLOTS; i++) {
        if (!p->kids[i].used) {
            memset(&p->kids[i], 0, sizeof p->kids[i]);
            p->kids[i].used = 1;
            p->kids[i].cfg = p->cfg;
            p->kids[i].consumer = consumer;
            return i;
        }
    }
    return -1;
}

/* A worker chose its exit code with worker_exit_code(): anything but "ok"
 * and "restart me" stops the pool. */
static int is_fatal(int code) {
    return code != EXIT_OK && code != EXIT_FAILURE_RUNTIME;
}

static void describe(int status, char *out, size_t len) {
    if (WIFSIGNALED(status)) {
        snprintf(out, len, "killed by signal %d", WTERMSIG(status));
    } else {
        snprintf(out, len, "exited with %d", WEXITSTATUS(status));
    }
}

/* Decides what a worker's exit means: part of a stop or a reload, a reason
 * to stop the pool, or a crash to restart after a backoff. */
static void on_exit_child(pool *p, int slot, int status, int *stopping,
                          int *exit_code) {
    child *c = &p->kids[slot];
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    int64_t now = warren__mono_ms();
    char how[64];
    describe(status, how, sizeof how);
    c->pid = 0;
    pthread_mutex_lock(&p->view.lock);
    cli_view_retire(&p->view, slot);
    pthread_mutex_unlock(&p->view.lock);
    if (*stopping) {
        if (code != EXIT_OK && *exit_code == EXIT_OK) {
            *exit_code = code < 0 ? EXIT_FAILURE_RUNTIME : code;
        }
        free_entry(p, slot);
        return;
    }
    if (c->retiring) {
        warren__log(WARREN_LOG_INFO,
                    &(warren__log_fields){"worker_replaced", queue_of(c), NULL,
                                          NULL, -1, -1},
                    "old worker %s after its replacement started", how);
        free_entry(p, slot);
        return;
    }
    if (p->reloading && slot == p->waiting) {
        warren__log(WARREN_LOG_ERROR,
                    &(warren__log_fields){"reload_failed", queue_of(c), NULL,
                                          NULL, -1, -1},
                    "%s: a new worker %s before connecting; reload stopped, "
                    "the workers still running keep running (see the "
                    "worker's error above)",
                    p->path, how);
        free_entry(p, slot);
        p->reloading = 0;
        p->waiting = -1;
        return;
    }
    if (p->reloading && c->cfg != p->cfg) {
        free_entry(p, slot); /* being replaced anyway */
        return;
    }
    if (code >= 0 && is_fatal(code)) {
        *exit_code = code;
        *stopping = 1;
        free_entry(p, slot);
        return;
    }
    if (now - c->started_ms > 60000) {
        c->restarts = 0; /* it ran fine for a while */
    }
    /* The schedule a worker's own reconnects follow (backoff.c). */
    int64_t delay = warren__backoff_reconnect_ms(c->restarts + 1);
    c->restarts++;
    c->restart_at_ms = now + delay;
    pthread_mutex_lock(&p->view.lock);
    if (p->view.slot_series[slot] >= 0) {
        p->view.series[p->view.slot_series[slot]].restarts++;
    }
    pthread_mutex_unlock(&p->view.lock);
    warren__log(WARREN_LOG_WARN,
                &(warren__log_fields){"worker_restart", queue_of(c), NULL, NULL,
                                      -1, delay},
                "worker %s; restarting in %lld ms", how, (long long)delay);
}

/* Ends workers whose in-process handler is past its deadline plus a grace:
 * a C function cannot be interrupted, only its process. The grace leaves
 * exec handlers (ended by exec.c at the deadline, SIGKILL 2 s later) and
 * handlers finishing just late to end on their own. */
static void check_deadlines(pool *p, int64_t now) {
    for (int i = 0; i < CLI_MAX_SLOTS; i++) {
        child *c = &p->kids[i];
        if (!c->used || c->pid <= 0 || c->overdue) {
            continue;
        }
        int64_t d = atomic_load_explicit(
            &p->view.slots[i].handler_deadline_mono_ms, memory_order_relaxed);
        double timeout_s = c->cfg->consumers[c->consumer].timeout_s;
        int64_t grace = (int64_t)(timeout_s * 100); /* a tenth */
        if (grace < DEADLINE_GRACE_MIN_MS) {
            grace = DEADLINE_GRACE_MIN_MS;
        }
        if (d == 0 || now <= d + grace) {
            continue;
        }
        kill(c->pid, SIGKILL);
        c->overdue = 1;
        c->overdue_by_ms = now - d;
        pthread_mutex_lock(&p->view.lock);
        if (p->view.slot_series[i] >= 0) {
            p->view.series[p->view.slot_series[i]].deadline_kills++;
        }
        pthread_mutex_unlock(&p->view.lock);
        warren__log(WARREN_LOG_ERROR,
                    &(warren__log_fields){"handler_deadline", queue_of(c), NULL,
                                          "killed", -1, now - d},
                    "handler still running %lld ms past its deadline "
                    "(timeout_s %g, grace %lld ms): killed worker pid %d; "
                    "its unacked messages will be redelivered",
                    (long long)(now - d), timeout_s, (long long)grace,
                    (int)c->pid);
    }
}

/* ---- crashes charged to the message --------------------------------------
 */

/* A worker of slot `slot` died by signal `sig` while its handler ran on
 * the id in its shared slot: tells the store, so that the claim which
 * takes the record over spends the attempt instead of running the handler
 * again (worker.c, apply_claims()). Only the record that worker still owns
 * in processing is marked. Called before the worker is reaped: as a zombie
 * its pid is neither reused nor dead to kill(pid, 0), so no other worker
 * takes the record over first. A store error is logged and forgotten: the
 * poison count (max_deliveries) still bounds the crashes. */
static void charge_crash(pool *p, int slot, int sig) {
    child *c = &p->kids[slot];
    warren__wstats *ws = &p->view.slots[slot];
    const warren__consumer_cfg *cc = &c->cfg->consumers[c->consumer];
    if (!cc->dedup || (c->stop_killed && !c->overdue) ||
        atomic_load_explicit(&ws->running, memory_order_acquire) != 1) {
        return;
    }
    char id[sizeof ws->running_id], reason[256], err[1024];
    memcpy(id, ws->running_id, sizeof id);
    id[sizeof id - 1] = '\0';
    if (c->overdue) {
        snprintf(reason, sizeof reason,
                 "worker died while running the handler: killed by signal %d "
                 "(over timeout_s %g by %.1f s)",
                 sig, cc->timeout_s, (double)c->overdue_by_ms / 1000.0);
    } else {
        snprintf(reason, sizeof reason,
                 "worker died while running the handler: killed by signal %d "
                 "(%s)",
                 sig, strsignal(sig));
    }
    warren__store *s = NULL;
    int marked = 0;
    int rc = warren__store_open_config(c->cfg, NULL, WARREN__STORE_F_MUST_EXIST,
                                       &s, err, sizeof err);
    if (rc == 0) {
        rc = warren__store_mark_crashed(s, cc->queue, id, (int)c->pid, reason,
                                        &marked);
        if (rc != 0) {
            snprintf(err, sizeof err, "%s", warren__store_errstr(s));
        }
    }
    warren__store_close(s);
    if (rc != 0) {
        warren__log(
            WARREN_LOG_ERROR,
            &(warren__log_fields){"store_error", cc->queue, id, NULL, -1, -1},
            "could not record that worker pid %d died while running "
            "this message's handler (its redelivery counts only "
            "towards max_deliveries): %s",
            (int)c->pid, err);
        return;
    }
    warren__log(WARREN_LOG_WARN,
                &(warren__log_fields){"handler_crash", cc->queue, id,
                                      marked ? "charged" : "not_found", -1, -1},
                "%s; worker pid %d%s", reason, (int)c->pid,
                marked ? ": the attempt is spent, the redelivery goes through "
                         "the retry policy"
                       : ": its claim was not in processing under that "
                         "worker any more, nothing charged");
}

/* Reaps one worker that ended, if any, and returns its pid (0: none).
 * One killed by a signal while a handler ran is charged first
 * (charge_crash()), while it is still a zombie. */
static pid_t reap(pool *p, int *status) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 ||
        si.si_pid <= 0) {
        return 0;
    }
    if (si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED) {
        for (int i = 0; i < CLI_MAX_SLOTS; i++) {
            if (p->kids[i].used && p->kids[i].pid == si.si_pid) {
                charge_crash(p, i, si.si_status);
                break;
            }
        }
    }
    return waitpid(si.si_pid, status, WNOHANG);
}

/* ---- reload -------------------------------------------------------------- */

static int total_workers(const warren_config *cfg) {
    int n = 0;
    for (int i = 0; i < cfg->n_consumers; i++) {
        n += cfg->consumers[i].workers;
    }
    return n;
}

static void apply_override(warren_config *cfg, int workers) {
    /* --workers overrides the file for everything that reads it,
     * including each worker's share of rate_limit_per_s. */
    for (int i = 0; workers && i < cfg->n_consumers; i++) {
        cfg->consumers[i].workers = workers;
    }
}

static void set_store_path(pool *p) {
    int any = 0;
    for (int i = 0; i < p->cfg->n_consumers; i++) {
        any |= p->cfg->consumers[i].dedup;
    }
    pthread_mutex_lock(&p->view.lock);
    /* The metrics report the size of a SQLite file; a database server's
     * size is not the workers' to report. */
    snprintf(p->view.store_path, sizeof p->view.store_path, "%s",
             any && p->cfg->store.path ? p->cfg->store.path : "");
    pthread_mutex_unlock(&p->view.lock);
}

static int same_str(const char *a, const char *b) {
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static void begin_reload(pool *p) {
    char err[2048];
    warren_config *ncfg = NULL;
    if (warren_config_load(p->path, &ncfg, err, sizeof err) != 0) {
        warren__log(
            WARREN_LOG_ERROR,
            &(warren__log_fields){"reload_failed", NULL, NULL, NULL, -1, -1},
            "SIGHUP: %s; the running pool is unchanged", err);
        return;
    }
    apply_override(ncfg, p->workers_override);
    int n = total_workers(ncfg);
    const char *refuse = NULL;
    if (n > MAX_WORKERS) {
        refuse = "more workers than warren run supervises";
    } else if (p->n_old == MAX_GENS) {
        refuse = "too many earlier configurations still have workers";
    }
    if (refuse != NULL) {
        warren__log(
            WARREN_LOG_ERROR,
            &(warren__log_fields){"reload_failed", NULL, NULL, NULL, -1, -1},
            "SIGHUP: %s: %s (%d workers); the running pool is "
            "unchanged",
            p->path, refuse, n);
        warren_config_free(ncfg);
        return;
    }
    if (!same_str(ncfg->metrics_listen, p->cfg->metrics_listen)) {
        warren__log(
            WARREN_LOG_WARN,
            &(warren__log_fields){"reload_restart_needed", NULL, NULL, NULL, -1,
                                  -1},
            "%s: metrics.listen changed (%s -> %s): it takes effect "
            "only when warren run restarts; still serving %s",
            p->path, p->cfg->metrics_listen ? p->cfg->metrics_listen : "off",
            ncfg->metrics_listen ? ncfg->metrics_listen : "off",
            p->cfg->metrics_listen ? p->cfg->metrics_listen : "nothing");
    }
    if (!same_str(ncfg->store.path, p->cfg->store.path)) {
        warren__log(WARREN_LOG_WARN,
                    &(warren__log_fields){"reload_store_path", NULL, NULL, NULL,
                                          -1, -1},
                    "%s: store.path changed (%s -> %s): new workers use the "
                    "new file, which has no record of what the old one saw "
                    "(restart with an empty queue to change it safely)",
                    p->path, p->cfg->store.path ? p->cfg->store.path : "none",
                    ncfg->store.path ? ncfg->store.path : "none");
    }
    if (!same_str(ncfg->store.url, p->cfg->store.url)) {
        char was[512], now[512];
        warren_redact_url(p->cfg->store.url ? p->cfg->store.url : "none", was,
                          sizeof was);
        warren_redact_url(ncfg->store.url ? ncfg->store.url : "none", now,
                          sizeof now);
        warren__log(WARREN_LOG_WARN,
                    &(warren__log_fields){"reload_store_path", NULL, NULL, NULL,
                                          -1, -1},
                    "%s: store.url changed (%s -> %s): new workers use the "
                    "new database, which has no record of what the old one "
                    "saw (restart with an empty queue to change it safely)",
                    p->path, was, now);
    }
    /* A consumer keeps its workers if its queue, its parsed config, the
     * broker and store sections and (a plugin) its file are all the same:
     * they move to the new generation as they are. */
    int globals = warren__config_worker_globals_equal(p->cfg, ncfg);
    int old = 0, kept = 0;
    char stamp[sizeof p->kids[0].plugin];
    p->n_plan = 0;
    for (int i = 0; i < ncfg->n_consumers; i++) {
        const warren__consumer_cfg *nc = &ncfg->consumers[i];
        int keep = 0;
        for (int j = 0; globals && j < p->cfg->n_consumers && !keep; j++) {
            keep = strcmp(p->cfg->consumers[j].queue, nc->queue) == 0 &&
                   warren__config_consumer_equal(&p->cfg->consumers[j], nc);
        }
        handler_stamp(nc->handler, stamp, sizeof stamp);
        for (int s = 0; keep && s < CLI_MAX_SLOTS; s++) {
            const child *c = &p->kids[s];
            keep = !(c->used && !c->retiring && c->cfg == p->cfg &&
                     strcmp(queue_of(c), nc->queue) == 0 && c->pid > 0 &&
                     strcmp(c->plugin, stamp) != 0);
        }
        if (!keep) {
            for (int j = 0; j < nc->workers; j++) {
                p->plan[p->n_plan++] = i;
            }
            continue;
        }
        for (int s = 0; s < CLI_MAX_SLOTS; s++) {
            child *c = &p->kids[s];
            if (c->used && !c->retiring && c->cfg == p->cfg &&
                strcmp(queue_of(c), nc->queue) == 0) {
                c->cfg = ncfg;
                c->consumer = i;
                kept++;
            }
        }
    }
    for (int i = 0; i < CLI_MAX_SLOTS; i++) {
        old +=
            p->kids[i].used && !p->kids[i].retiring && p->kids[i].cfg == p->cfg;
    }
    p->old[p->n_old++] = p->cfg;
    p->cfg = ncfg;
    free_unused_gens(p);
    set_store_path(p);
    if (p->n_plan == 0 && old == 0) {
        warren__log(
            WARREN_LOG_INFO,
            &(warren__log_fields){"reload_unchanged", NULL, NULL, NULL, -1, -1},
            "SIGHUP: %s re-read; no consumer changed: the %d workers "
            "keep running",
            p->path, kept);
        return;
    }
    p->reloading = 1;
    p->next_plan = 0;
    p->waiting = -1;
    warren__log(WARREN_LOG_INFO,
                &(warren__log_fields){"reload", NULL, NULL, NULL, -1, -1},
                "SIGHUP: %s re-read; replacing %d workers with %d, one at "
                "a time; %d workers of unchanged consumers keep running",
                p->path, old, p->n_plan, kept);
}

static void retire(pool *p, int slot, int64_t now) {
    child *c = &p->kids[slot];
    if (c->pid > 0) {
        kill(c->pid, SIGTERM);
        c->retiring = 1;
        c->kill_at_ms = now + (int64_t)(grace_s(p) * 1000) + 1000;
    } else {
        free_entry(p, slot); /* was waiting for a restart */
    }
}

/* One step of a reload: once the worker started last is connected (or its
 * deadline passed), stop an old worker of its queue and start the next. */
static void reload_step(pool *p, int64_t now) {
    if (p->waiting >= 0) {
        child *w = &p->kids[p->waiting];
        int up = atomic_load_explicit(&p->view.slots[p->waiting].connected,
                                      memory_order_relaxed);
        if (!up && now < p->wait_until_ms) {
            return;
        }
        if (!up) {
            warren__log(WARREN_LOG_WARN,
                        &(warren__log_fields){"reload_slow", queue_of(w), NULL,
                                              NULL, -1, -1},
                        "new worker pid %d not connected yet; replacing an "
                        "old one anyway",
                        (int)w->pid);
        }
        int pick = -1;
        for (int i = 0; i < CLI_MAX_SLOTS; i++) {
            child *c = &p->kids[i];
            if (c->used && c->cfg != p->cfg && !c->retiring &&
                strcmp(queue_of(c), queue_of(w)) == 0 &&
                (pick < 0 || c->pid > 0)) {
                pick = i;
            }
        }
        if (pick >= 0) {
            retire(p, pick, now);
        }
        p->waiting = -1;
    }
    if (p->next_plan < p->n_plan) {
        int slot = add_child(p, p->plan[p->next_plan++]);
        if (slot < 0 || spawn(p, slot) < 0) {
            warren__log(WARREN_LOG_ERROR,
                        &(warren__log_fields){"reload_failed", NULL, NULL, NULL,
                                              -1, -1},
                        "cannot start a new worker (%s); reload stopped",
                        slot < 0 ? "no free slot" : strerror(errno));
            if (slot >= 0) {
                free_entry(p, slot);
            }
            p->reloading = 0;
            return;
        }
        p->waiting = slot;
        p->wait_until_ms =
            now + (int64_t)(p->cfg->broker.connect_timeout_s * 1000) + 10000;
        return;
    }
    /* Every new worker runs: old ones left over belong to consumers that
     * were removed or now have fewer workers. */
    for (int i = 0; i < CLI_MAX_SLOTS; i++) {
        child *c = &p->kids[i];
        if (c->used && c->cfg != p->cfg && !c->retiring) {
            retire(p, i, now);
        }
    }
    p->reloading = 0;
    warren__log(WARREN_LOG_INFO,
                &(warren__log_fields){"reload_done", NULL, NULL, NULL, -1, -1},
                "reload done: %d workers", p->n_plan);
}

/* ---- the loop ------------------------------------------------------------ */

static int supervise(pool *p) {
    int64_t stop_deadline = 0, next_check = 0;
    int exit_code = EXIT_OK, stopping = 0, sent = 0;

    p->t0 = warren__mono_ms();
    p->next_url = warren__url_random_start();
    p->waiting = -1;
    for (int i = 0; i < p->cfg->n_consumers && !stopping; i++) {
        for (int j = 0; j < p->cfg->consumers[i].workers; j++) {
            int slot = add_child(p, i);
            if (spawn(p, slot) < 0) {
                cli_error("fork: %s", strerror(errno));
                free_entry(p, slot);
                stopping = 1;
                exit_code = EXIT_FAILURE_RUNTIME;
                break;
            }
        }
    }
    for (;;) {
        int status, alive = 0, pending = 0;
        for (int i = 0; i < CLI_MAX_SLOTS; i++) {
            alive += p->kids[i].used && p->kids[i].pid > 0;
            pending += p->kids[i].used && p->kids[i].pid == 0;
        }
        if (alive == 0 && (stopping || pending == 0)) {
            break;
        }
        int64_t now = warren__mono_ms();
        if (got_stop && !stopping) {
            stopping = 1;
            warren__log(WARREN_LOG_INFO, NULL,
                        "stopping %d workers (grace %.0f s)", alive,
                        grace_s(p));
        }
        if (stopping && !sent) {
            /* Retiring workers had their SIGTERM: a second one would end
             * them at once. */
            for (int i = 0; i < CLI_MAX_SLOTS; i++) {
                child *c = &p->kids[i];
                if (c->used && c->pid > 0 && !c->retiring) {
                    kill(c->pid, SIGTERM);
                } else if (c->used && c->pid == 0) {
                    free_entry(p, i);
                }
            }
            sent = 1;
            p->reloading = 0;
            stop_deadline = now + (int64_t)(grace_s(p) * 1000) + 1000;
        }
        for (int i = 0; i < CLI_MAX_SLOTS; i++) {
            child *c = &p->kids[i];
            if (c->used && c->pid > 0 &&
                ((stopping && (got_stop > 1 || now > stop_deadline)) ||
                 (c->retiring && now > c->kill_at_ms))) {
                kill(c->pid, SIGKILL);
                c->stop_killed = 1;
            }
        }
        if (got_hup) {
            got_hup = 0;
            if (p->reloading) {
                warren__log(WARREN_LOG_WARN, NULL,
                            "SIGHUP: a reload is in progress; send SIGHUP "
                            "again once it is done");
            } else if (!stopping) {
                begin_reload(p);
            }
        }
        pid_t pid = reap(p, &status);
        if (pid > 0) {
            for (int i = 0; i < CLI_MAX_SLOTS; i++) {
                if (p->kids[i].used && p->kids[i].pid == pid) {
                    on_exit_child(p, i, status, &stopping, &exit_code);
                    break;
                }
            }
            continue;
        }
        if (now >= next_check) {
            check_deadlines(p, now);
            next_check = now + DEADLINE_CHECK_MS;
        }
        if (p->reloading && !stopping) {
            reload_step(p, now);
        }
        for (int i = 0; i < CLI_MAX_SLOTS && !stopping; i++) {
            child *c = &p->kids[i];
            if (c->used && c->pid == 0 && c->restart_at_ms &&
                now >= c->restart_at_ms) {
                spawn(p, i);
            }
        }
        cli_http_wait(p->http, 50);
    }
    return exit_code;
}

int cmd_run(int argc, char **argv) {
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'},
        {"workers", required_argument, 0, 'w'},
        {"log-level", required_argument, 0, 'l'},
        {0, 0, 0, 0}};
    const char *path = NULL, *level = NULL;
    int workers = 0, opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:w:l:", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 'w': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end != '\0' || v < 1 || v > 256) {
                cli_error("--workers: expected 1..256, got '%s'", optarg);
                return EXIT_USAGE;
            }
            workers = (int)v;
            break;
        }
        case 'l':
            level = optarg;
            break;
        default:
            cli_error("usage: warren run -c FILE [--workers N] "
                      "[--log-level LEVEL]");
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cli_error("unexpected argument '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    if (cli_log_init(level) != 0) {
        return EXIT_USAGE;
    }
    warren_config *cfg = cli_load_config(path);
    if (cfg == NULL) {
        return EXIT_USAGE;
    }
    apply_override(cfg, workers);
    int n = total_workers(cfg);
    if (n <= 0 || n > MAX_WORKERS) {
        cli_error("%s: %d workers in all; expected 1..%d", path, n,
                  MAX_WORKERS);
        warren_config_free(cfg);
        return EXIT_USAGE;
    }
    pool *p = calloc(1, sizeof *p);
    if (p == NULL || cli_view_init(&p->view) != 0) {
        cli_error("cannot set up the worker slots: %s", strerror(errno));
        free(p);
        warren_config_free(cfg);
        return EXIT_FAILURE_RUNTIME;
    }
    p->cfg = cfg;
    p->path = path;
    p->workers_override = workers;
    set_store_path(p);
    int code = EXIT_OK;
    if (cfg->metrics_listen != NULL) {
        char err[512];
        if (cli_http_start(cfg->metrics_listen, &p->view, &p->http, err,
                           sizeof err) != 0) {
            cli_error("%s: %s", path, err);
            code = EXIT_METRICS;
        } else {
            warren__log(
                WARREN_LOG_INFO,
                &(warren__log_fields){"metrics", NULL, NULL, NULL, -1, -1},
                "serving /metrics on %s", cfg->metrics_listen);
        }
    }
    if (code == EXIT_OK) {
        install(SIGTERM, on_supervisor_signal);
        install(SIGINT, on_supervisor_signal);
        install(SIGHUP, on_supervisor_signal);
        install(SIGPIPE, SIG_IGN);
        code = supervise(p);
    }
    cli_http_stop(p->http);
    cli_view_destroy(&p->view);
    for (int g = 0; g < p->n_old; g++) {
        warren_config_free(p->old[g]);
    }
    warren_config_free(p->cfg);
    free(p);
    return code;
}

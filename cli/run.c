/*
 * run.c - `warren run`: a supervisor process that forks one worker process
 * per configured worker and keeps them alive.
 *
 * The supervisor holds no broker connection and no store handle, so it has
 * nothing to lose when a worker dies: it restarts the worker with backoff
 * (the broker redelivers what that worker had unacked, and the store's
 * poison detection bounds crash loops). A worker that exits with a
 * configuration-class error (bad config, auth, topology, handler, store)
 * would fail the same way again: the pool stops with that exit code.
 * SIGTERM/SIGINT: forwarded once as SIGTERM; workers finish the message in
 * hand, commit, ack and exit. A second signal, or the grace running out,
 * kills them (their unacked messages are redelivered).
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h" /* shutdown_grace_s, workers per consumer */
#include "log.h"

#define RESTART_MIN_MS 500
#define RESTART_MAX_MS 30000
#define EARLY_MS 10000 /* unreachable this early: the operator's problem */

typedef struct {
    pid_t pid;
    int consumer;
    int restarts;
    int64_t started_ms;
    int64_t restart_at_ms; /* 0: running or not to be restarted */
} child;

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

/* The body of a worker process. Returns its exit code. */
static int worker_main(warren_config *cfg, int index) {
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
    return cli_exit_code(rc);
}

static pid_t spawn(warren_config *cfg, child *c) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        install(SIGTERM, SIG_DFL);
        _exit(worker_main(cfg, c->consumer));
    }
    if (pid > 0) {
        c->pid = pid;
        c->started_ms = warren__mono_ms();
        c->restart_at_ms = 0;
    }
    return pid;
}

static int is_fatal(int code, int64_t pool_age_ms) {
    switch (code) {
    case EXIT_USAGE:
    case EXIT_AUTH:
    case EXIT_VHOST:
    case EXIT_TOPOLOGY:
    case EXIT_HANDLER:
    case EXIT_STORE:
    case EXIT_TLS:
        return 1;
    case EXIT_UNREACHABLE:
        return pool_age_ms < EARLY_MS;
    default:
        return 0;
    }
}

static void signal_all(child *kids, int n, int sig) {
    for (int i = 0; i < n; i++) {
        if (kids[i].pid > 0) {
            kill(kids[i].pid, sig);
        }
    }
}

/* Decides what a worker's exit means: part of a stop, a reason to stop
 * the pool, or a crash to restart after a backoff. */
static void on_exit_child(warren_config *cfg, child *c, int status,
                          int64_t pool_age_ms, int *stopping, int *exit_code) {
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    int64_t now = warren__mono_ms();
    if (*stopping) {
        if (code != EXIT_OK && *exit_code == EXIT_OK) {
            *exit_code = code < 0 ? EXIT_FAILURE_RUNTIME : code;
        }
        return;
    }
    if (code >= 0 && is_fatal(code, pool_age_ms)) {
        *exit_code = code;
        *stopping = 1;
        return;
    }
    if (now - c->started_ms > 60000) {
        c->restarts = 0; /* it ran fine for a while */
    }
    int64_t delay = (int64_t)RESTART_MIN_MS
                    << (c->restarts < 6 ? c->restarts : 6);
    if (delay > RESTART_MAX_MS) {
        delay = RESTART_MAX_MS;
    }
    c->restarts++;
    c->restart_at_ms = now + delay;
    warren__log(
        WARREN_LOG_WARN,
        &(warren__log_fields){"worker_restart",
                              warren_config_consumer_queue(cfg, c->consumer),
                              NULL, NULL, -1, delay},
        "worker %s %d; restarting in %lld ms",
        WIFSIGNALED(status) ? "killed by signal" : "exited with",
        WIFSIGNALED(status) ? WTERMSIG(status) : code, (long long)delay);
}

static int supervise(warren_config *cfg, child *kids, int n) {
    int64_t t0 = warren__mono_ms(), stop_deadline = 0;
    int exit_code = EXIT_OK, alive = 0, stopping = 0, sent = 0;
    double grace = cfg->shutdown_grace_s;

    for (int i = 0; i < n; i++) {
        if (spawn(cfg, &kids[i]) < 0) {
            cli_error("fork: %s", strerror(errno));
            signal_all(kids, i, SIGTERM);
            stopping = 1;
            exit_code = EXIT_FAILURE_RUNTIME;
            break;
        }
        alive++;
    }
    for (;;) {
        int status, restart_pending = 0;
        for (int i = 0; i < n; i++) {
            restart_pending |= kids[i].pid == 0 && kids[i].restart_at_ms != 0;
        }
        if (alive == 0 && (stopping || !restart_pending)) {
            break;
        }
        int64_t now = warren__mono_ms();
        if (got_stop && !stopping) {
            stopping = 1;
            warren__log(WARREN_LOG_INFO, NULL,
                        "stopping %d workers (grace %.0f s)", alive, grace);
        }
        if (stopping && !sent) {
            signal_all(kids, n, SIGTERM);
            sent = 1;
            stop_deadline = now + (int64_t)(grace * 1000) + 1000;
            for (int i = 0; i < n; i++) {
                kids[i].restart_at_ms = 0;
            }
        }
        if (stopping && (got_stop > 1 || now > stop_deadline)) {
            signal_all(kids, n, SIGKILL);
        }
        if (got_hup) {
            got_hup = 0;
            warren__log(WARREN_LOG_WARN, NULL,
                        "SIGHUP: configuration reload is not supported by "
                        "this build; restart the service to apply changes");
        }
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            for (int i = 0; i < n; i++) {
                if (kids[i].pid == pid) {
                    kids[i].pid = 0;
                    alive--;
                    on_exit_child(cfg, &kids[i], status, now - t0, &stopping,
                                  &exit_code);
                }
            }
            continue;
        }
        for (int i = 0; i < n && !stopping; i++) {
            if (kids[i].pid == 0 && kids[i].restart_at_ms &&
                now >= kids[i].restart_at_ms && spawn(cfg, &kids[i]) > 0) {
                alive++;
            }
        }
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
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
    if (workers) {
        /* --workers overrides the file for everything that reads it,
         * including each worker's share of rate_limit_per_s. */
        for (int i = 0; i < cfg->n_consumers; i++) {
            cfg->consumers[i].workers = workers;
        }
    }
    int n = 0;
    for (int i = 0; i < cfg->n_consumers; i++) {
        n += workers ? workers : cfg->consumers[i].workers;
    }
    if (n <= 0) {
        cli_error("%s: no workers to run", path);
        warren_config_free(cfg);
        return EXIT_USAGE;
    }
    child *kids = calloc((size_t)n, sizeof *kids);
    if (kids == NULL) {
        warren_config_free(cfg);
        return EXIT_FAILURE_RUNTIME;
    }
    for (int i = 0, k = 0; i < cfg->n_consumers; i++) {
        int m = workers ? workers : cfg->consumers[i].workers;
        for (int j = 0; j < m; j++) {
            kids[k++].consumer = i;
        }
    }
    install(SIGTERM, on_supervisor_signal);
    install(SIGINT, on_supervisor_signal);
    install(SIGHUP, on_supervisor_signal);
    install(SIGPIPE, SIG_IGN);
    int code = supervise(cfg, kids, n);
    free(kids);
    warren_config_free(cfg);
    return code;
}

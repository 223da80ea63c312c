/*
 * Integration tests of the `warren run` supervisor (cli/run.c): /metrics
 * scraped over a plain socket and checked against the run exactly, SIGHUP
 * with a broken and with a changed config, and handlers that overstay
 * timeout_s (an exec handler ended by the worker, an in-process one ended
 * by the supervisor killing its worker), a SIGHUP that changes one consumer
 * of two (only its worker is replaced), and a store locked at start (the
 * worker is restarted, the pool does not stop). Every test drives the real
 * binary against the private broker and reads the counts back through /metrics.
 */
#include "itest.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char *dir;
    char cfg[512], log[512], runs[512];
    char qa[128], qb[128]; /* two consumers' queues */
    int port;
    pid_t pid;
    amqp_connection_state_t conn;
    char body[65536]; /* last scrape */
} fx;

/* A port the kernel just handed out: free unless someone races for it. */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void fx_setup(fx *f, const char *tag) {
    memset(f, 0, sizeof *f);
    f->dir = itest_tmpdir();
    snprintf(f->cfg, sizeof f->cfg, "%s/warren.json", f->dir);
    snprintf(f->log, sizeof f->log, "%s/run.log", f->dir);
    snprintf(f->runs, sizeof f->runs, "%s/runs", f->dir);
    snprintf(f->qa, sizeof f->qa, "it.pool.%s.a.%d", tag, (int)getpid());
    snprintf(f->qb, sizeof f->qb, "it.pool.%s.b.%d", tag, (int)getpid());
    f->port = free_port();
    f->conn = itest_connect();
    itest_queue_declare(f->conn, f->qa);
    itest_queue_declare(f->conn, f->qb);
}

/* Writes the config: `consumers` is the JSON list's inside, in which the
 * first %s is qa and the second qb. */
static void fx_config(fx *f, const char *consumers_fmt) {
    char consumers[4096], text[8192];
    snprintf(consumers, sizeof consumers, consumers_fmt, f->qa, f->qb);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"}, \"metrics\": "
             "{\"listen\": \"127.0.0.1:%d\"}, \"shutdown_grace_s\": 10, "
             "\"consumers\": [%s]}",
             f->dir, f->port, consumers);
    itest_write_file(f->cfg, text);
}

static void fx_start(fx *f) {
    const char *args[] = {"run", "-c", f->cfg, NULL};
    f->pid = itest_spawn_warren(args, f->log);
}

static void dump_log(const fx *f) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "tail -n 30 %s >&2", f->log);
    if (system(cmd) != 0) {
        /* best effort */
    }
}

static void fx_teardown(fx *f) {
    static const char *suffix[] = {"", ".dlq", ".retry"};
    if (f->pid > 0) {
        int status = itest_terminate(f->pid, 20);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            dump_log(f);
        }
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    for (size_t i = 0; i < 3; i++) {
        char q[192];
        snprintf(q, sizeof q, "%s%s", f->qa, suffix[i]);
        itest_queue_delete(f->conn, q);
        snprintf(q, sizeof q, "%s%s", f->qb, suffix[i]);
        itest_queue_delete(f->conn, q);
    }
    itest_disconnect(f->conn);
    itest_rmtree(f->dir);
    free(f->dir);
}

/* HTTP/1.0 GET over a plain socket; returns the status code (0 when the
 * server cannot be reached) and leaves the body in f->body. */
static int http_get(fx *f, const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    struct timeval tv = {5, 0};
    char req[256], resp[sizeof f->body];
    size_t got = 0;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)f->port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    f->body[0] = '\0';
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return 0;
    }
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return 0;
    }
    for (;;) {
        ssize_t r = read(fd, resp + got, sizeof resp - 1 - got);
        if (r <= 0) {
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    resp[got] = '\0';
    int status = 0;
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1) {
        return 0;
    }
    const char *body = strstr(resp, "\r\n\r\n");
    snprintf(f->body, sizeof f->body, "%s", body ? body + 4 : "");
    return status;
}

/* The value of the sample `name{queue="q"}` in the last scrape, or -1. */
static double sample(const fx *f, const char *name, const char *queue) {
    char key[512];
    snprintf(key, sizeof key, "\n%s{queue=\"%s\"} ", name, queue);
    const char *p = strstr(f->body, key);
    return p ? strtod(p + strlen(key), NULL) : -1;
}

static double scrape(fx *f, const char *name, const char *queue) {
    if (http_get(f, "/metrics") != 200) {
        return -1;
    }
    return sample(f, name, queue);
}

typedef struct {
    fx *f;
    const char *name, *queue;
    double want;
} metric_wait;

static int metric_reached(void *arg) {
    metric_wait *m = arg;
    return scrape(m->f, m->name, m->queue) >= m->want;
}

/* Waits until the counter reaches `want`; fails the test after timeout_s. */
static void wait_metric(fx *f, const char *name, const char *queue, double want,
                        double timeout_s) {
    metric_wait m = {f, name, queue, want};
    if (!itest_wait_until(metric_reached, &m, timeout_s)) {
        dump_log(f);
        fail_msg("%s{queue=\"%s\"} stayed at %g, expected %g", name, queue,
                 sample(f, name, queue), want);
    }
}

/* The supervisor's children (worker pids), sorted as the kernel lists them.
 * Returns how many. */
static int children(pid_t pid, long *out, int max) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid,
             (int)pid);
    FILE *fp = fopen(path, "r");
    int n = 0;
    if (fp == NULL) {
        return 0;
    }
    while (n < max && fscanf(fp, "%ld", &out[n]) == 1) {
        n++;
    }
    fclose(fp);
    return n;
}

typedef struct {
    pid_t pid;
    int want;
} kids_wait;

static int kids_reached(void *arg) {
    kids_wait *k = arg;
    long pids[8];
    return children(k->pid, pids, 8) == k->want;
}

static int log_has(const fx *f, const char *needle) {
    FILE *fp = fopen(f->log, "r");
    char line[4096];
    int found = 0;
    if (fp == NULL) {
        return 0;
    }
    while (!found && fgets(line, sizeof line, fp)) {
        found = strstr(line, needle) != NULL;
    }
    fclose(fp);
    return found;
}

typedef struct {
    const fx *f;
    const char *needle;
} log_wait;

static int log_reached(void *arg) {
    log_wait *w = arg;
    return log_has(w->f, w->needle);
}

static void wait_log(const fx *f, const char *needle, double timeout_s) {
    log_wait w = {f, needle};
    if (!itest_wait_until(log_reached, &w, timeout_s)) {
        dump_log(f);
        fail_msg("no log line with %s", needle);
    }
}

/* ---- tests ------------------------------------------------------------ */

static void
test_metrics_counts_match_a_run_with_duplicates_and_dead_letters(void **state) {
    (void)state;
    fx f;
    fx_setup(&f, "metrics");
    fx_config(&f, "{\"queue\": \"%s\", \"handler\": \"builtin:noop\"},"
                  "{\"queue\": \"%s\", \"handler\": \"builtin:dead\"}");
    /* 100 ids on qa, the first 20 published twice; 10 on qb, each of
     * which the handler dead-letters. */
    itest_publish_n(f.conn, "", f.qa, "a", 100, NULL, 0);
    itest_publish_n(f.conn, "", f.qa, "a", 20, NULL, 0);
    itest_publish_n(f.conn, "", f.qb, "b", 10, NULL, 0);
    fx_start(&f);
    wait_metric(&f, "warren_messages_acked_total", f.qa, 100, 30);
    wait_metric(&f, "warren_messages_duplicate_total", f.qa, 20, 30);
    wait_metric(&f, "warren_messages_dead_lettered_total", f.qb, 10, 30);
    assert_int_equal(http_get(&f, "/metrics"), 200);
    double deferred = sample(&f, "warren_messages_deferred_total", f.qa);
    /* A duplicate in the same batch as its first copy is deferred once
     * and received again: received counts that extra delivery. */
    assert_true(deferred >= 0);
    assert_true(sample(&f, "warren_messages_received_total", f.qa) ==
                120 + deferred);
    assert_true(sample(&f, "warren_messages_acked_total", f.qa) == 100);
    assert_true(sample(&f, "warren_messages_duplicate_total", f.qa) == 20);
    assert_true(sample(&f, "warren_messages_retried_total", f.qa) == 0);
    assert_true(sample(&f, "warren_messages_dead_lettered_total", f.qa) == 0);
    assert_true(sample(&f, "warren_handler_failures_total", f.qa) == 0);
    assert_true(sample(&f, "warren_handler_duration_seconds_count", f.qa) ==
                100);
    assert_true(sample(&f, "warren_messages_received_total", f.qb) == 10);
    assert_true(sample(&f, "warren_messages_acked_total", f.qb) == 0);
    assert_true(sample(&f, "warren_messages_dead_lettered_total", f.qb) == 10);
    assert_true(sample(&f, "warren_handler_failures_total", f.qb) == 10);
    assert_true(sample(&f, "warren_handler_duration_seconds_count", f.qb) ==
                10);
    assert_true(sample(&f, "warren_workers", f.qa) == 1);
    assert_true(sample(&f, "warren_workers_connected", f.qb) == 1);
    assert_true(sample(&f, "warren_worker_restarts_total", f.qa) == 0);
    assert_non_null(strstr(f.body, "warren_handler_duration_seconds_bucket{"
                                   "queue=\"it.pool.metrics.a."));
    assert_non_null(strstr(f.body, "le=\"+Inf\"} 100\n"));
    assert_non_null(strstr(f.body, "\nwarren_store_size_bytes "));
    /* Nothing lost: the broker agrees. */
    char dlq[192];
    snprintf(dlq, sizeof dlq, "%s.dlq", f.qb);
    assert_int_equal(itest_queue_depth(f.conn, f.qa), 0);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 10);
    assert_int_equal(http_get(&f, "/other"), 404);
    fx_teardown(&f);
}

static void
test_sighup_with_broken_config_keeps_the_same_workers_consuming(void **state) {
    (void)state;
    fx f;
    long before[8], after[8];
    fx_setup(&f, "hupbad");
    fx_config(&f, "{\"queue\": \"%s\", \"handler\": \"builtin:noop\"}");
    fx_start(&f);
    wait_metric(&f, "warren_workers_connected", f.qa, 1, 30);
    int n = children(f.pid, before, 8);
    assert_int_equal(n, 1);
    itest_write_file(f.cfg, "{\"consumers\": [{\"queue\": 5}]}");
    kill(f.pid, SIGHUP);
    wait_log(&f, "\"event\":\"reload_failed\"", 10);
    assert_true(log_has(&f, "consumers[0].queue"));
    itest_publish_n(f.conn, "", f.qa, "h", 10, NULL, 0);
    wait_metric(&f, "warren_messages_acked_total", f.qa, 10, 20);
    assert_int_equal(children(f.pid, after, 8), 1);
    assert_int_equal(after[0], before[0]);
    assert_true(scrape(&f, "warren_messages_acked_total", f.qa) == 10);
    assert_true(sample(&f, "warren_worker_restarts_total", f.qa) == 0);
    fx_teardown(&f);
}

static void test_sighup_from_one_to_two_workers_loses_nothing(void **state) {
    (void)state;
    fx f;
    long before[8], after[8];
    fx_setup(&f, "hup12");
    fx_config(&f, "{\"queue\": \"%s\", \"handler\": \"builtin:noop\", "
                  "\"workers\": 1}");
    fx_start(&f);
    wait_metric(&f, "warren_workers_connected", f.qa, 1, 30);
    assert_int_equal(children(f.pid, before, 8), 1);
    itest_publish_n(f.conn, "", f.qa, "r", 300, NULL, 0);
    fx_config(&f, "{\"queue\": \"%s\", \"handler\": \"builtin:noop\", "
                  "\"workers\": 2}");
    kill(f.pid, SIGHUP);
    itest_publish_n(f.conn, "", f.qa, "s", 300, NULL, 0);
    wait_log(&f, "\"event\":\"reload_done\"", 30);
    wait_metric(&f, "warren_workers_connected", f.qa, 2, 30);
    wait_metric(&f, "warren_messages_acked_total", f.qa, 600, 30);
    /* The old worker may still be finishing its batch. */
    kids_wait k = {f.pid, 2};
    assert_true(itest_wait_until(kids_reached, &k, 20));
    assert_int_equal(children(f.pid, after, 8), 2);
    assert_true(after[0] != before[0] && after[1] != before[0]);
    /* Counted across the old worker's exit: each id ran exactly once. */
    assert_true(scrape(&f, "warren_messages_acked_total", f.qa) == 600);
    assert_true(sample(&f, "warren_messages_duplicate_total", f.qa) == 0);
    assert_true(sample(&f, "warren_messages_dead_lettered_total", f.qa) == 0);
    assert_true(sample(&f, "warren_workers", f.qa) == 2);
    assert_true(sample(&f, "warren_worker_restarts_total", f.qa) == 0);
    assert_int_equal(itest_queue_depth(f.conn, f.qa), 0);
    fx_teardown(&f);
}

static void test_exec_handler_past_timeout_is_killed_counted_and_dead_lettered(
    void **state) {
    (void)state;
    fx f;
    char consumer[2048], dlq[192];
    fx_setup(&f, "exec");
    /* Each run leaves a line, then outlives timeout_s by far. */
    snprintf(consumer, sizeof consumer,
             "{\"queue\": \"%%s\", \"handler\": \"exec:/bin/sh -c \\\"echo "
             "run >> %s; exec sleep 30\\\"\", \"timeout_s\": 1, \"retry\": "
             "{\"max_attempts\": 2, \"backoff\": {\"kind\": \"fixed\", "
             "\"delay_ms\": 100}}}",
             f.runs);
    fx_config(&f, consumer);
    itest_publish(f.conn, "", f.qa, "slow-1", "x", 1);
    fx_start(&f);
    wait_metric(&f, "warren_messages_dead_lettered_total", f.qa, 1, 30);
    snprintf(dlq, sizeof dlq, "%s.dlq", f.qa);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 1);
    assert_int_equal(itest_count_lines(f.runs), 2);
    assert_true(scrape(&f, "warren_handler_failures_total", f.qa) == 2);
    assert_true(sample(&f, "warren_messages_retried_total", f.qa) == 1);
    assert_true(sample(&f, "warren_messages_acked_total", f.qa) == 0);
    /* The worker ended the handler itself: no worker was killed. */
    assert_true(sample(&f, "warren_handler_deadline_kills_total", f.qa) == 0);
    assert_true(sample(&f, "warren_worker_restarts_total", f.qa) == 0);
    itest_msg m;
    assert_int_equal(itest_get(f.conn, dlq, &m, 0), 1);
    const amqp_field_value_t *att = itest_msg_header(&m, "x-warren-attempts");
    assert_non_null(att);
    assert_int_equal(att->value.i64, 2);
    itest_msg_free(&m);
    fx_teardown(&f);
}

static void test_inprocess_handler_past_deadline_ends_its_worker_which_restarts(
    void **state) {
    (void)state;
    fx f;
    char dlq[192];
    fx_setup(&f, "deadline");
    /* timeout_s 1 and a grace of 5 s: the supervisor kills at about 6 s.
     * max_deliveries 1: the redelivery after the kill is poison. */
    fx_config(&f, "{\"queue\": \"%s\", \"handler\": \"builtin:sleep:0\", "
                  "\"timeout_s\": 1, \"max_deliveries\": 1}");
    itest_publish(f.conn, "", f.qa, "hang-1", "60000", 5);
    fx_start(&f);
    wait_metric(&f, "warren_handler_deadline_kills_total", f.qa, 1, 30);
    wait_log(&f, "\"event\":\"handler_deadline\"", 5);
    wait_metric(&f, "warren_worker_restarts_total", f.qa, 1, 10);
    wait_metric(&f, "warren_messages_dead_lettered_total", f.qa, 1, 30);
    snprintf(dlq, sizeof dlq, "%s.dlq", f.qa);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 1);
    itest_msg m;
    assert_int_equal(itest_get(f.conn, dlq, &m, 0), 1);
    const amqp_field_value_t *err = itest_msg_header(&m, "x-warren-error");
    assert_non_null(err);
    char text[512];
    snprintf(text, sizeof text, "%.*s", (int)err->value.bytes.len,
             (const char *)err->value.bytes.bytes);
    assert_non_null(strstr(text, "poison"));
    itest_msg_free(&m);
    /* The restarted worker keeps consuming. */
    itest_publish_n(f.conn, "", f.qa, "fast", 20, "0", 1);
    wait_metric(&f, "warren_messages_acked_total", f.qa, 20, 20);
    assert_true(scrape(&f, "warren_messages_acked_total", f.qa) == 20);
    assert_true(sample(&f, "warren_handler_deadline_kills_total", f.qa) == 1);
    assert_true(sample(&f, "warren_worker_restarts_total", f.qa) == 1);
    assert_true(sample(&f, "warren_workers_connected", f.qa) == 1);
    /* The killed call never returned: only the 20 fast ones are timed. */
    assert_true(sample(&f, "warren_handler_duration_seconds_count", f.qa) ==
                20);
    assert_int_equal(itest_queue_depth(f.conn, f.qa), 0);
    fx_teardown(&f);
}

/* The pid of the worker that logged "consuming" for `queue` most recently
 * (the JSON logger writes each line's pid), or 0. */
static long consuming_pid(const fx *f, const char *queue) {
    FILE *fp = fopen(f->log, "r");
    char line[4096], q[256];
    long pid = 0;
    snprintf(q, sizeof q, "\"queue\":\"%s\"", queue);
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        const char *p = strstr(line, "\"pid\":");
        if (p && strstr(line, "\"event\":\"consuming\"") && strstr(line, q)) {
            pid = strtol(p + 6, NULL, 10);
        }
    }
    fclose(fp);
    return pid;
}

static int has_child(pid_t pid, long kid) {
    long pids[8];
    int n = children(pid, pids, 8);
    for (int i = 0; i < n; i++) {
        if (pids[i] == kid) {
            return 1;
        }
    }
    return 0;
}

static void
test_sighup_replaces_only_the_worker_whose_consumer_changed(void **state) {
    (void)state;
    fx f;
    fx_setup(&f, "hupone");
    fx_config(&f, "{\"queue\": \"%s\", \"handler\": \"builtin:noop\"},"
                  "{\"queue\": \"%s\", \"handler\": \"builtin:noop\", "
                  "\"prefetch\": 50}");
    fx_start(&f);
    wait_metric(&f, "warren_workers_connected", f.qa, 1, 30);
    wait_metric(&f, "warren_workers_connected", f.qb, 1, 30);
    long a = consuming_pid(&f, f.qa), b = consuming_pid(&f, f.qb);
    assert_true(a > 0 && b > 0 && a != b);
    itest_publish_n(f.conn, "", f.qa, "a1", 300, NULL, 0);
    itest_publish_n(f.conn, "", f.qb, "b1", 300, NULL, 0);
    /* Only qb's consumer changes. */
    fx_config(&f, "{\"queue\": \"%s\", \"handler\": \"builtin:noop\"},"
                  "{\"queue\": \"%s\", \"handler\": \"builtin:noop\", "
                  "\"prefetch\": 60}");
    kill(f.pid, SIGHUP);
    itest_publish_n(f.conn, "", f.qa, "a2", 300, NULL, 0);
    itest_publish_n(f.conn, "", f.qb, "b2", 300, NULL, 0);
    wait_log(&f, "\"event\":\"reload_done\"", 30);
    wait_metric(&f, "warren_messages_acked_total", f.qa, 600, 30);
    wait_metric(&f, "warren_messages_acked_total", f.qb, 600, 30);
    kids_wait k = {f.pid, 2};
    assert_true(itest_wait_until(kids_reached, &k, 20));
    /* qa's worker is the same process; qb's was replaced. */
    assert_true(has_child(f.pid, a));
    assert_false(has_child(f.pid, b));
    long b2 = consuming_pid(&f, f.qb);
    assert_true(b2 > 0 && b2 != b && has_child(f.pid, b2));
    assert_int_equal(consuming_pid(&f, f.qa), a);
    /* Nothing lost or doubled across the swap. */
    assert_true(scrape(&f, "warren_messages_acked_total", f.qa) == 600);
    assert_true(sample(&f, "warren_messages_acked_total", f.qb) == 600);
    assert_true(sample(&f, "warren_messages_duplicate_total", f.qa) == 0);
    assert_true(sample(&f, "warren_messages_duplicate_total", f.qb) == 0);
    assert_true(sample(&f, "warren_messages_dead_lettered_total", f.qb) == 0);
    assert_true(sample(&f, "warren_workers", f.qa) == 1);
    assert_true(sample(&f, "warren_workers", f.qb) == 1);
    assert_true(sample(&f, "warren_worker_restarts_total", f.qa) == 0);
    assert_int_equal(itest_queue_depth(f.conn, f.qa), 0);
    assert_int_equal(itest_queue_depth(f.conn, f.qb), 0);
    /* A SIGHUP that changes nothing replaces nothing. */
    long a3 = consuming_pid(&f, f.qa);
    kill(f.pid, SIGHUP);
    wait_log(&f, "\"event\":\"reload_unchanged\"", 10);
    assert_true(has_child(f.pid, a3) && has_child(f.pid, b2));
    fx_teardown(&f);
}

static long log_count(const fx *f, const char *needle) {
    FILE *fp = fopen(f->log, "r");
    char line[4096];
    long n = 0;
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        n += strstr(line, needle) != NULL;
    }
    fclose(fp);
    return n;
}

typedef struct {
    const fx *f;
    const char *needle;
    long want;
} count_wait;

static int count_reached(void *arg) {
    count_wait *w = arg;
    return log_count(w->f, w->needle) >= w->want;
}

static void wait_log_count(const fx *f, const char *needle, long want,
                           double timeout_s) {
    count_wait w = {f, needle, want};
    if (!itest_wait_until(count_reached, &w, timeout_s)) {
        dump_log(f);
        fail_msg("%ld log lines with %s, expected %ld", log_count(f, needle),
                 needle, want);
    }
}

/* Both consumers' workers, once the reload settled: waits for two children
 * that each logged "consuming" for their queue. */
static void settled_pids(fx *f, long *a, long *b) {
    kids_wait k = {f->pid, 2};
    assert_true(itest_wait_until(kids_reached, &k, 20));
    *a = consuming_pid(f, f->qa);
    *b = consuming_pid(f, f->qb);
    assert_true(has_child(f->pid, *a) && has_child(f->pid, *b));
}

static void
test_sighup_replaces_a_rebuilt_plugin_and_all_workers_on_a_store_change(
    void **state) {
    (void)state;
    fx f;
    char so[600], cmd[1400], consumers[1400], cfg[4096];
    long a, b, a2, b2;
    fx_setup(&f, "hupall");
    /* A private copy of the example plugin, so the test may "rebuild" it. */
    snprintf(so, sizeof so, "%s/handler.so", f.dir);
    snprintf(cmd, sizeof cmd, "cp '%s/examples/example_plugin.so' '%s'",
             getenv("WARREN_BUILD_DIR"), so);
    assert_int_equal(system(cmd), 0);
    snprintf(consumers, sizeof consumers,
             "{\"queue\": \"%%s\", \"handler\": \"plugin:%s:handle hup\"},"
             "{\"queue\": \"%%s\", \"handler\": \"builtin:noop\"}",
             so);
    fx_config(&f, consumers);
    fx_start(&f);
    wait_metric(&f, "warren_workers_connected", f.qa, 1, 30);
    wait_metric(&f, "warren_workers_connected", f.qb, 1, 30);
    settled_pids(&f, &a, &b);
    itest_publish_n(f.conn, "", f.qa, "p1", 100, NULL, 0);
    itest_publish_n(f.conn, "", f.qb, "q1", 100, NULL, 0);

    /* The plugin file is replaced (same config text): its consumer's
     * worker is replaced, so the new build is loaded; the other stays. */
    struct timespec later[2] = {{0, UTIME_NOW}, {time(NULL) + 5, 0}};
    assert_int_equal(utimensat(AT_FDCWD, so, later, 0), 0);
    kill(f.pid, SIGHUP);
    wait_log_count(&f, "\"event\":\"reload_done\"", 1, 30);
    settled_pids(&f, &a2, &b2);
    assert_true(a2 != a);
    assert_int_equal(b2, b);

    /* The store section changes: every worker is replaced. */
    snprintf(cfg, sizeof cfg,
             "{\"store\": {\"path\": \"%s/warren.db\", \"busy_timeout_ms\": "
             "4000}, \"metrics\": {\"listen\": \"127.0.0.1:%d\"}, "
             "\"shutdown_grace_s\": 10, \"consumers\": [{\"queue\": \"%s\", "
             "\"handler\": \"plugin:%s:handle hup\"}, {\"queue\": \"%s\", "
             "\"handler\": \"builtin:noop\"}]}",
             f.dir, f.port, f.qa, so, f.qb);
    itest_write_file(f.cfg, cfg);
    itest_publish_n(f.conn, "", f.qa, "p2", 100, NULL, 0);
    itest_publish_n(f.conn, "", f.qb, "q2", 100, NULL, 0);
    kill(f.pid, SIGHUP);
    wait_log_count(&f, "\"event\":\"reload_done\"", 2, 30);
    long a3, b3;
    settled_pids(&f, &a3, &b3);
    assert_true(a3 != a2 && b3 != b2);
    /* Nothing lost or doubled across both swaps. */
    wait_metric(&f, "warren_messages_acked_total", f.qa, 200, 30);
    wait_metric(&f, "warren_messages_acked_total", f.qb, 200, 30);
    assert_true(scrape(&f, "warren_messages_acked_total", f.qa) == 200);
    assert_true(sample(&f, "warren_messages_acked_total", f.qb) == 200);
    assert_true(sample(&f, "warren_messages_duplicate_total", f.qa) == 0);
    assert_true(sample(&f, "warren_messages_duplicate_total", f.qb) == 0);
    assert_int_equal(itest_queue_depth(f.conn, f.qa), 0);
    assert_int_equal(itest_queue_depth(f.conn, f.qb), 0);
    fx_teardown(&f);
}

static void
test_exec_output_leaves_the_worker_log_one_json_object_per_line(void **state) {
    (void)state;
    fx f;
    char script[600], consumer[1400];
    fx_setup(&f, "output");
    snprintf(script, sizeof script, "%s/chatty.sh", f.dir);
    /* Both streams; quotes, escapes, invalid UTF-8, a NUL, a line without
     * an end; then 10 MiB on stdout. The result must stay "ack". */
    itest_write_file(script,
                     "#!/bin/sh\n"
                     "printf 'out \"q\" {\\\\\"j\\\\\": 1}\\n'\n"
                     "printf 'err \\033[1m\\t\\377\\376 \\000 x\\r\\n' >&2\n"
                     "yes 'ten mebibytes of output' | head -c 10485760\n"
                     "printf 'no end' >&2\n"
                     "exit 0\n");
    assert_int_equal(chmod(script, 0700), 0);
    snprintf(consumer, sizeof consumer,
             "{\"queue\": \"%%s\", \"handler\": \"exec:%s\"}", script);
    fx_config(&f, consumer);
    itest_publish_n(f.conn, "", f.qa, "o", 3, NULL, 0);
    fx_start(&f);
    wait_metric(&f, "warren_messages_acked_total", f.qa, 3, 60);
    assert_true(scrape(&f, "warren_handler_failures_total", f.qa) == 0);
    int status = itest_terminate(f.pid, 20);
    f.pid = 0;
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    FILE *fp = fopen(f.log, "r");
    assert_non_null(fp);
    static char line[1 << 16];
    long n = 0, out = 0, err = 0, cut = 0;
    while (fgets(line, sizeof line, fp)) {
        n++;
        size_t len = strlen(line);
        assert_true(len > 0 && line[len - 1] == '\n');
        cJSON *o = cJSON_Parse(line);
        if (o == NULL || !cJSON_IsObject(o)) {
            fail_msg("log line %ld is not a JSON object: %.200s", n, line);
        }
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "event");
        if (cJSON_IsString(ev) &&
            strcmp(ev->valuestring, "handler_output") == 0) {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "stream");
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "message_id");
            assert_true(cJSON_IsString(st) && cJSON_IsString(id));
            assert_int_equal(strncmp(id->valuestring, "o-", 2), 0);
            out += strcmp(st->valuestring, "stdout") == 0;
            err += strcmp(st->valuestring, "stderr") == 0;
            cut +=
                cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "truncated"));
        }
        cJSON_Delete(o);
    }
    fclose(fp);
    /* Per message: stderr's two lines; stdout capped at 64 KiB of lines
     * (~2700 of these), then one "not logged" line each. */
    assert_int_equal(err, 3 * 2);
    assert_true(out >= 3 * 100 && out <= 3 * 3000);
    assert_int_equal(cut, 3);
    fx_teardown(&f);
}

static void
test_store_locked_at_start_restarts_the_worker_not_the_pool(void **state) {
    (void)state;
    fx f;
    char db[600], cfg[4096];
    sqlite3 *h = NULL;
    fx_setup(&f, "busy");
    snprintf(db, sizeof db, "%s/warren.db", f.dir);
    /* Another process holds the store's write lock when the pool starts:
     * STORE_BUSY is retriable, so the worker is restarted until the lock
     * goes, and the pool keeps running. */
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "BEGIN EXCLUSIVE", NULL, NULL, NULL),
                     SQLITE_OK);
    snprintf(cfg, sizeof cfg,
             "{\"store\": {\"path\": \"%s\", \"busy_timeout_ms\": 100}, "
             "\"metrics\": {\"listen\": \"127.0.0.1:%d\"}, "
             "\"shutdown_grace_s\": 10, \"consumers\": [{\"queue\": \"%s\", "
             "\"handler\": \"builtin:noop\"}]}",
             db, f.port, f.qa);
    itest_write_file(f.cfg, cfg);
    itest_publish_n(f.conn, "", f.qa, "l", 50, NULL, 0);
    fx_start(&f);
    wait_log(&f, "WARREN_ERR_STORE_BUSY", 20);
    wait_metric(&f, "warren_worker_restarts_total", f.qa, 1, 20);
    int status = 0;
    assert_int_equal(itest_wait_exit(f.pid, 0.5, &status), 0);
    assert_int_equal(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    wait_metric(&f, "warren_messages_acked_total", f.qa, 50, 60);
    assert_true(scrape(&f, "warren_messages_acked_total", f.qa) == 50);
    assert_true(sample(&f, "warren_messages_duplicate_total", f.qa) == 0);
    assert_int_equal(itest_queue_depth(f.conn, f.qa), 0);
    fx_teardown(&f);
}

static int dlq_error_has(const itest_msg *m, const char *needle) {
    const amqp_field_value_t *err = itest_msg_header(m, "x-warren-error");
    char text[1024];
    if (err == NULL) {
        return 0;
    }
    snprintf(text, sizeof text, "%.*s", (int)err->value.bytes.len,
             (const char *)err->value.bytes.bytes);
    if (strstr(text, needle) == NULL) {
        fprintf(stderr, "x-warren-error: %s\n", text);
        return 0;
    }
    return 1;
}

/* Issue 14 section 4: a worker the supervisor kills for an overdue
 * in-process handler spends that attempt. A handler that always hangs goes
 * through max_attempts 3 with backoff (one kill per attempt) and is
 * dead-lettered naming the crash, long before max_deliveries 50; the good
 * message beside it is handled exactly once. */
static void hang_spends_one_attempt_per_kill(const char *mode) {
    fx f;
    char dlq[192], consumer[1024];
    fx_setup(&f, mode);
    snprintf(consumer, sizeof consumer,
             "{\"queue\": \"%%s\", \"handler\": \"builtin:sleep:0\", "
             "\"timeout_s\": 1, \"max_deliveries\": 50, \"retry\": "
             "{\"mode\": \"%s\", \"max_attempts\": 3, \"backoff\": "
             "{\"kind\": \"fixed\", \"delay_ms\": 200}}}",
             mode);
    fx_config(&f, consumer);
    /* The worker declares the queue itself (nack mode: with its
     * dead-letter arguments), then the two messages go in. */
    itest_queue_delete(f.conn, f.qa);
    fx_start(&f);
    wait_log(&f, "\"event\":\"consuming\"", 20);
    itest_publish(f.conn, "", f.qa, "hang-1", "60000", 5);
    itest_publish(f.conn, "", f.qa, "good-1", "0", 1);
    /* Three kills of about 6 s each (timeout_s 1 + the 5 s grace), the
     * restarts 0.5, 1, 2 s after them. */
    wait_metric(&f, "warren_messages_dead_lettered_total", f.qa, 1, 90);
    snprintf(dlq, sizeof dlq, "%s.dlq", f.qa);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 1);
    itest_msg m;
    assert_int_equal(itest_get(f.conn, dlq, &m, 0), 1);
    assert_true(dlq_error_has(&m, "gave up after 3 attempts: worker died "
                                  "while running the handler: killed by "
                                  "signal 9 (over timeout_s 1 by "));
    const amqp_field_value_t *att = itest_msg_header(&m, "x-warren-attempts");
    assert_non_null(att);
    assert_int_equal(att->value.i64, 3);
    itest_msg_free(&m);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 0);
    /* One kill per attempt, each charged once, and attempts 1, 2, 3. */
    assert_true(sample(&f, "warren_handler_deadline_kills_total", f.qa) == 3);
    assert_true(sample(&f, "warren_worker_restarts_total", f.qa) == 3);
    assert_int_equal(log_count(&f, "\"outcome\":\"charged\""), 3);
    assert_int_equal(log_count(&f, "\"message_id\":\"hang-1\",\"attempt\":1,"
                                   "\"outcome\":\"retry\""),
                     1);
    assert_int_equal(log_count(&f, "\"message_id\":\"hang-1\",\"attempt\":2,"
                                   "\"outcome\":\"retry\""),
                     1);
    assert_int_equal(log_count(&f, "\"message_id\":\"hang-1\",\"attempt\":3,"
                                   "\"outcome\":\"dead\""),
                     1);
    assert_int_equal(log_count(&f, "\"message_id\":\"hang-1\",\"attempt\""), 3);
    assert_true(sample(&f, "warren_messages_retried_total", f.qa) == 2);
    /* The good message: acked once, its handler completed once (the hung
     * calls never returned, so they are not timed). */
    wait_metric(&f, "warren_messages_acked_total", f.qa, 1, 20);
    assert_true(scrape(&f, "warren_messages_acked_total", f.qa) == 1);
    assert_true(sample(&f, "warren_messages_duplicate_total", f.qa) == 0);
    assert_true(sample(&f, "warren_handler_duration_seconds_count", f.qa) == 1);
    assert_int_equal(itest_queue_depth(f.conn, f.qa), 0);
    fx_teardown(&f);
}

static void
test_handler_that_always_hangs_spends_one_attempt_per_kill(void **state) {
    (void)state;
    hang_spends_one_attempt_per_kill("republish");
}

/* The same in nack mode: each spent attempt is nacked into <queue>.retry. */
static void
test_handler_that_always_hangs_spends_attempts_in_nack_mode(void **state) {
    (void)state;
    hang_spends_one_attempt_per_kill("nack");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_metrics_counts_match_a_run_with_duplicates_and_dead_letters),
        cmocka_unit_test(
            test_sighup_with_broken_config_keeps_the_same_workers_consuming),
        cmocka_unit_test(test_sighup_from_one_to_two_workers_loses_nothing),
        cmocka_unit_test(
            test_exec_handler_past_timeout_is_killed_counted_and_dead_lettered),
        cmocka_unit_test(
            test_inprocess_handler_past_deadline_ends_its_worker_which_restarts),
        cmocka_unit_test(
            test_sighup_replaces_only_the_worker_whose_consumer_changed),
        cmocka_unit_test(
            test_sighup_replaces_a_rebuilt_plugin_and_all_workers_on_a_store_change),
        cmocka_unit_test(
            test_store_locked_at_start_restarts_the_worker_not_the_pool),
        cmocka_unit_test(
            test_exec_output_leaves_the_worker_log_one_json_object_per_line),
        cmocka_unit_test(
            test_handler_that_always_hangs_spends_one_attempt_per_kill),
        cmocka_unit_test(
            test_handler_that_always_hangs_spends_attempts_in_nack_mode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

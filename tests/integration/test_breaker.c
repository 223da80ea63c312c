/*
 * test_breaker.c - the circuit breaker and the rate limit in a real
 * `warren run` against the private broker. Breaker: while a dependency is
 * down the breaker opens, the queue depth stops falling and (almost) no
 * attempts are spent; once it is back the breaker closes and the queue
 * drains with every message handled exactly once and none dead. Rate limit:
 * 2,000 messages at 200/s take 10 s +- 10%, with one worker and with two.
 */
#include "itest.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Fails (75) while $FLAG_FILE exists, as a handler whose dependency is
 * down would; each run goes to $RUNS_FILE, each success to $EFFECTS_FILE. */
static const char *dependent =
    "#!/bin/sh\n"
    "echo \"$WARREN_MESSAGE_ID\" >> \"$RUNS_FILE\"\n"
    "if [ -e \"$FLAG_FILE\" ]; then\n"
    "  echo \"dependency down\" >&2\n"
    "  exit 75\n"
    "fi\n"
    "echo \"$WARREN_MESSAGE_ID\" >> \"$EFFECTS_FILE\"\n";

typedef struct {
    char *dir;
    char queue[128];
    char cfg[512], log[512], runs[512], effects[512], flag[512], script[512];
    pid_t pid;
    amqp_connection_state_t conn;
} fx;

/* declare: 1 to declare the queue as a classic one before warren does,
 * 0 to leave it to warren (a quorum queue, with warren's arguments). */
static void fx_setup_q(fx *f, const char *name, const char *consumer_fmt,
                       int declare) {
    char text[4096], consumer[2048];
    f->dir = itest_tmpdir();
    snprintf(f->queue, sizeof f->queue, "it.breaker.%s.%d", name,
             (int)getpid());
    snprintf(f->cfg, sizeof f->cfg, "%s/warren.json", f->dir);
    snprintf(f->log, sizeof f->log, "%s/warren.log", f->dir);
    snprintf(f->runs, sizeof f->runs, "%s/runs", f->dir);
    snprintf(f->effects, sizeof f->effects, "%s/effects", f->dir);
    snprintf(f->flag, sizeof f->flag, "%s/dependency-down", f->dir);
    snprintf(f->script, sizeof f->script, "%s/handler.sh", f->dir);
    itest_write_file(f->script, dependent);
    assert_int_equal(chmod(f->script, 0700), 0);
    /* consumer_fmt takes (queue, script) */
    snprintf(consumer, sizeof consumer, consumer_fmt, f->queue, f->script);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"}, \"consumers\": [%s]}",
             f->dir, consumer);
    itest_write_file(f->cfg, text);
    setenv("RUNS_FILE", f->runs, 1);
    setenv("EFFECTS_FILE", f->effects, 1);
    setenv("FLAG_FILE", f->flag, 1);
    f->conn = itest_connect();
    if (declare) {
        itest_queue_declare(f->conn, f->queue);
    }
    f->pid = 0;
}

static void fx_setup(fx *f, const char *name, const char *consumer_fmt) {
    fx_setup_q(f, name, consumer_fmt, 1);
}

static void fx_start(fx *f) {
    const char *args[] = {"run", "-c", f->cfg, "--log-level", "debug", NULL};
    f->pid = itest_spawn_warren(args, f->log);
}

static void fx_stop(fx *f) {
    if (f->pid > 0) {
        int status = itest_terminate(f->pid, 30);
        f->pid = 0;
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
}

static void fx_teardown(fx *f) {
    char q[192];
    if (f->pid > 0) {
        itest_terminate(f->pid, 10);
    }
    itest_queue_delete(f->conn, f->queue);
    snprintf(q, sizeof q, "%s.dlq", f->queue);
    itest_queue_delete(f->conn, q);
    snprintf(q, sizeof q, "%s.retry", f->queue);
    itest_queue_delete(f->conn, q);
    itest_disconnect(f->conn);
    itest_rmtree(f->dir);
    free(f->dir);
}

static void dump_log(const fx *f) {
    char cmd[700];
    snprintf(cmd, sizeof cmd,
             "grep -v '\"event\":\"message\"' %s | tail -n 40 >&2", f->log);
    if (system(cmd) != 0) {
        /* best effort */
    }
}

/* Lines of `path` containing both needles (needle2 may be NULL). */
static long count_lines_with(const char *path, const char *needle1,
                             const char *needle2) {
    FILE *fp = fopen(path, "r");
    char line[4096];
    long n = 0;
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        if (strstr(line, needle1) &&
            (needle2 == NULL || strstr(line, needle2))) {
            n++;
        }
    }
    fclose(fp);
    return n;
}

static long breaker_logged(const fx *f, const char *to_state) {
    char want[64];
    snprintf(want, sizeof want, "\"outcome\":\"%s\"", to_state);
    return count_lines_with(f->log, "\"event\":\"breaker\"", want);
}

/* Distinct lines in a file (sort -u | wc -l). */
static long distinct_lines(const char *path) {
    char cmd[700];
    long n = -1;
    snprintf(cmd, sizeof cmd, "sort -u %s | wc -l", path);
    FILE *p = popen(cmd, "r");
    if (p == NULL) {
        return -1;
    }
    if (fscanf(p, "%ld", &n) != 1) {
        n = -1;
    }
    pclose(p);
    return n;
}

typedef struct {
    const fx *f;
    const char *state;
    long want;
} logged_arg;

static int breaker_reached(void *arg) {
    logged_arg *a = arg;
    return breaker_logged(a->f, a->state) >= a->want;
}

typedef struct {
    const fx *f;
    long depth;
} flat_arg;

/* The claim itself: two depth readings a second apart are equal (and not
 * zero), and the breaker stayed open in between (no transition logged). */
static int depth_flat_while_open(void *arg) {
    flat_arg *a = arg;
    long opened = breaker_logged(a->f, "open");
    long half = breaker_logged(a->f, "half_open");
    if (opened != half + 1) {
        return 0; /* not open right now */
    }
    long d1 = itest_queue_depth(a->f->conn, a->f->queue);
    struct timespec second = {1, 0};
    nanosleep(&second, NULL);
    long d2 = itest_queue_depth(a->f->conn, a->f->queue);
    a->depth = d2;
    return d1 > 0 && d1 == d2 && breaker_logged(a->f, "open") == opened &&
           breaker_logged(a->f, "half_open") == half;
}

/* The breaker is open and, a second apart, the worker still consumes:
 * it holds what it had instead of closing its connection, so nothing
 * prefetched goes back to the queue (none comes back redelivered). */
static int consumer_kept_while_open(void *arg) {
    flat_arg *a = arg;
    long opened = breaker_logged(a->f, "open");
    long half = breaker_logged(a->f, "half_open");
    if (opened != half + 1) {
        return 0;
    }
    long c1 = itest_queue_consumers(a->f->conn, a->f->queue);
    struct timespec second = {1, 0};
    nanosleep(&second, NULL);
    long c2 = itest_queue_consumers(a->f->conn, a->f->queue);
    a->depth = c2;
    return c1 == 1 && c2 == 1 && breaker_logged(a->f, "open") == opened &&
           breaker_logged(a->f, "half_open") == half;
}

typedef struct {
    const char *path;
    long want;
} lines_arg;

static int has_lines(void *arg) {
    lines_arg *a = arg;
    return itest_count_lines(a->path) >= a->want;
}

static void test_breaker_opens_holds_queue_then_closes_and_drains(void **st) {
    (void)st;
    fx f;
    const int n = 300;
    fx_setup(&f, "trip",
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"prefetch\": 20,"
             " \"breaker\": {\"consecutive_failures\": 5, \"open_s\": 3,"
             " \"half_open_max\": 2},"
             " \"retry\": {\"max_attempts\": 50, \"jitter\": 0,"
             " \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 100}}}");
    itest_write_file(f.flag, "down\n");
    itest_publish_n(f.conn, "", f.queue, "b", n, NULL, 0);
    fx_start(&f);

    logged_arg opened = {&f, "open", 1};
    if (!itest_wait_until(breaker_reached, &opened, 30)) {
        dump_log(&f);
        fail_msg("the breaker never opened");
    }
    flat_arg flat = {&f, 0};
    if (!itest_wait_until(depth_flat_while_open, &flat, 20)) {
        dump_log(&f);
        fail_msg("queue depth kept changing while the breaker was open");
    }
    /* The ready count is flat either way; what a pause must not do is
     * hand the prefetched messages back (issue 18 item 8). */
    flat_arg kept = {&f, 0};
    if (!itest_wait_until(consumer_kept_while_open, &kept, 20)) {
        dump_log(&f);
        fail_msg("the worker let go of its consumer while the breaker was "
                 "open (%ld consumers): its prefetched messages went back",
                 kept.depth);
    }
    /* Stay down through one half-open trial that fails and re-opens. */
    logged_arg reopened = {&f, "open", 2};
    if (!itest_wait_until(breaker_reached, &reopened, 20)) {
        dump_log(&f);
        fail_msg("a failed half-open trial did not re-open the breaker");
    }
    long runs_while_down = itest_count_lines(f.runs);
    long opens = breaker_logged(&f, "open");
    assert_int_equal(unlink(f.flag), 0);

    logged_arg closed = {&f, "closed", 1};
    if (!itest_wait_until(breaker_reached, &closed, 30)) {
        dump_log(&f);
        fail_msg("the breaker never closed after the dependency came back");
    }
    lines_arg all = {f.effects, n};
    if (!itest_wait_until(has_lines, &all, 60)) {
        dump_log(&f);
        fail_msg("queue not drained: %ld of %d handled",
                 itest_count_lines(f.effects), n);
    }
    fx_stop(&f);

    /* Nothing lost, nothing doubled, nothing dead. */
    assert_int_equal(itest_count_lines(f.effects), n);
    assert_int_equal(distinct_lines(f.effects), n);
    char dlq[192];
    snprintf(dlq, sizeof dlq, "%s.dlq", f.queue);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 0);
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    /* Attempts spent while down: the 5 that opened it, then one failed
     * trial per re-opening; everything else waited in the queue. */
    if (runs_while_down > 5 + (opens - 1)) {
        dump_log(&f);
        fail_msg("%ld handler runs while down with %ld openings",
                 runs_while_down, opens);
    }
    assert_true(breaker_logged(&f, "half_open") >= 2);
    fx_teardown(&f);
}

static int consuming(void *arg) {
    const fx *f = arg;
    return count_lines_with(f->log, "\"event\":\"consuming\"", NULL) > 0;
}

/* Issue 18 item 8. Before RabbitMQ 4.3 a quorum queue counts every return
 * against its x-delivery-limit: each breaker pause (the connection closed,
 * the prefetched messages back in the queue) is one more delivery of the
 * same head-of-queue messages. With the limit two above the poison cap
 * (max_deliveries 3: 5), six pauses were enough for the broker to
 * dead-letter healthy messages with no reason and no store record. */
static void
test_breaker_pauses_on_quorum_queue_stay_below_delivery_limit(void **st) {
    (void)st;
    fx f;
    const int n = 100;
    fx_setup_q(&f, "quorum",
               "{\"queue\": \"%s\", \"handler\": \"exec:%s\","
               " \"queue_type\": \"quorum\", \"prefetch\": 20,"
               " \"max_deliveries\": 3,"
               " \"breaker\": {\"consecutive_failures\": 5, \"open_s\": 1,"
               " \"half_open_max\": 1},"
               " \"retry\": {\"max_attempts\": 50, \"jitter\": 0,"
               " \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 100}}}",
               0);
    itest_write_file(f.flag, "down\n");
    fx_start(&f);
    if (!itest_wait_until(consuming, &f, 30)) {
        dump_log(&f);
        fail_msg("warren never started consuming");
    }
    itest_publish_n(f.conn, "", f.queue, "q", n, NULL, 0);
    logged_arg opened = {&f, "open", 8};
    if (!itest_wait_until(breaker_reached, &opened, 60)) {
        dump_log(&f);
        fail_msg("the breaker opened only %ld times",
                 breaker_logged(&f, "open"));
    }
    assert_int_equal(unlink(f.flag), 0);
    lines_arg all = {f.effects, n};
    if (!itest_wait_until(has_lines, &all, 60)) {
        dump_log(&f);
        char dlq[192];
        snprintf(dlq, sizeof dlq, "%s.dlq", f.queue);
        fail_msg("queue not drained: %ld of %d handled, %ld in the DLQ",
                 itest_count_lines(f.effects), n,
                 itest_queue_depth(f.conn, dlq));
    }
    fx_stop(&f);
    assert_int_equal(itest_count_lines(f.effects), n);
    assert_int_equal(distinct_lines(f.effects), n);
    char dlq[192];
    snprintf(dlq, sizeof dlq, "%s.dlq", f.queue);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 0);
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    fx_teardown(&f);
}

/* Issue 18 item 8, the stronger form: with the broker's limit at its
 * smallest (delivery_limit 5 for max_deliveries 3), eight breaker openings
 * while the dependency is down must not dead-letter a healthy message. A
 * pause that handed the prefetched messages back (connection closed) spent
 * one broker delivery of each per opening; a pause that holds them spends
 * none. */
static void
test_breaker_pauses_hold_quorum_messages_under_delivery_limit_5(void **st) {
    (void)st;
    fx f;
    const int n = 100;
    char dlq[192];
    fx_setup_q(&f, "quorum5",
               "{\"queue\": \"%s\", \"handler\": \"exec:%s\","
               " \"queue_type\": \"quorum\", \"prefetch\": 20,"
               " \"max_deliveries\": 3, \"delivery_limit\": 5,"
               " \"breaker\": {\"consecutive_failures\": 5, \"open_s\": 1,"
               " \"half_open_max\": 1},"
               " \"retry\": {\"max_attempts\": 50, \"jitter\": 0,"
               " \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 100}}}",
               0);
    snprintf(dlq, sizeof dlq, "%s.dlq", f.queue);
    itest_write_file(f.flag, "down\n");
    fx_start(&f);
    if (!itest_wait_until(consuming, &f, 30)) {
        dump_log(&f);
        fail_msg("warren never started consuming");
    }
    itest_publish_n(f.conn, "", f.queue, "q5", n, NULL, 0);
    logged_arg opened = {&f, "open", 8};
    if (!itest_wait_until(breaker_reached, &opened, 60)) {
        dump_log(&f);
        fail_msg("the breaker opened only %ld times",
                 breaker_logged(&f, "open"));
    }
    assert_int_equal(unlink(f.flag), 0);
    lines_arg all = {f.effects, n};
    if (!itest_wait_until(has_lines, &all, 60)) {
        dump_log(&f);
        fail_msg("queue not drained: %ld of %d handled, %ld in the DLQ",
                 itest_count_lines(f.effects), n,
                 itest_queue_depth(f.conn, dlq));
    }
    fx_stop(&f);
    /* Every effect exactly once, none dead-lettered by the broker. */
    assert_int_equal(itest_count_lines(f.effects), n);
    assert_int_equal(distinct_lines(f.effects), n);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 0);
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    fx_teardown(&f);
}

/* ms since the epoch of a log line's "ts":"YYYY-MM-DDTHH:MM:SS.mmmZ". */
static int64_t line_ts_ms(const char *line) {
    const char *p = strstr(line, "\"ts\":\"");
    struct tm tm;
    int ms;
    if (p == NULL) {
        return -1;
    }
    memset(&tm, 0, sizeof tm);
    if (sscanf(p + 6, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7) {
        return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* First and last acked "message" event in the log. */
static int ack_span(const char *log, int64_t *first, int64_t *last) {
    FILE *fp = fopen(log, "r");
    char line[4096];
    int n = 0;
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        if (strstr(line, "\"event\":\"message\"") &&
            strstr(line, "\"outcome\":\"ack\"")) {
            int64_t t = line_ts_ms(line);
            if (n++ == 0) {
                *first = t;
            }
            *last = t;
        }
    }
    fclose(fp);
    return n;
}

typedef struct {
    const char *log;
    long want;
} acks_arg;

static int acked_all(void *arg) {
    acks_arg *a = arg;
    return count_lines_with(a->log, "\"event\":\"message\"",
                            "\"outcome\":\"ack\"") >= a->want;
}

static void rate_run(const char *name, int workers) {
    fx f;
    char fmt[512];
    const int n = 2000;
    snprintf(fmt, sizeof fmt,
             "{\"queue\": \"%%s\", \"handler\": \"builtin:noop\", "
             "\"prefetch\": 50, \"workers\": %d, \"rate_limit_per_s\": 200}",
             workers);
    fx_setup(&f, name, fmt);
    itest_publish_n(f.conn, "", f.queue, "r", n, NULL, 0);
    fx_start(&f);
    acks_arg a = {f.log, n};
    if (!itest_wait_until(acked_all, &a, 40)) {
        dump_log(&f);
        fail_msg("only %ld of %d acked",
                 count_lines_with(f.log, "\"event\":\"message\"",
                                  "\"outcome\":\"ack\""),
                 n);
    }
    fx_stop(&f);
    int64_t first = 0, last = 0;
    assert_int_equal(ack_span(f.log, &first, &last), n);
    int64_t span = last - first;
    fprintf(stderr, "rate 200/s, %d worker(s): 2000 acks in %lld ms\n", workers,
            (long long)span);
    if (span < 9000 || span > 11000) {
        fail_msg("2000 messages at 200/s took %lld ms, expected 10 s +- 10%%",
                 (long long)span);
    }
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    fx_teardown(&f);
}

static void test_rate_limit_200_per_s_takes_10_s_for_2000(void **st) {
    (void)st;
    rate_run("rate1", 1);
}

static void test_rate_limit_is_shared_by_two_workers(void **st) {
    (void)st;
    rate_run("rate2", 2);
}

/* The fallback: records each message it ran and acks it, as a handler
 * parking messages elsewhere would. */
static const char *parking =
    "#!/bin/sh\n"
    "echo \"$WARREN_MESSAGE_ID\" >> \"$FALLBACK_FILE\"\n";

typedef struct {
    const char *a, *b;
    long want;
} union_arg;

/* Lines in two files together (either may not exist yet). */
static long lines_of_both(const char *a, const char *b) {
    long na = itest_count_lines(a), nb = itest_count_lines(b);
    return (na > 0 ? na : 0) + (nb > 0 ? nb : 0);
}

static int both_have(void *arg) {
    union_arg *u = arg;
    return lines_of_both(u->a, u->b) >= u->want;
}

/* A port the kernel just handed out, for "metrics.listen". */
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

/* The value of `series` (name and labels, exactly as rendered) in a
 * /metrics scrape over a plain socket, or -1. */
static double scrape_sample(int port, const char *series) {
    static char resp[262144];
    static const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    struct timeval tv = {5, 0};
    size_t got = 0;
    char key[512];
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        close(fd);
        return -1;
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
    snprintf(key, sizeof key, "\n%s ", series);
    const char *p = strstr(resp, key);
    return p ? strtod(p + strlen(key), NULL) : -1;
}

typedef struct {
    fx *f;
    int published;
} trickle_arg;

/* Publishes one more message per poll until the breaker has closed: a
 * breaker moves to half-open only when a message asks to run. */
static int trickle_until_closed(void *arg) {
    trickle_arg *t = arg;
    char id[64];
    if (breaker_logged(t->f, "closed") >= 1) {
        return 1;
    }
    snprintf(id, sizeof id, "after-%d", t->published++);
    itest_publish(t->f->conn, "", t->f->queue, id, "{}", 2);
    return 0;
}

/* Issue 14 section 2. With breaker.fallback, an open breaker no longer
 * pauses: every message runs the fallback instead of the primary. While
 * the dependency is down, each message goes to the fallback exactly once
 * (none lost, none doubled), and the primary runs only for the failures
 * that opened the breaker and one trial per half-open; once the dependency
 * is back the breaker closes and the primary takes over. */
static void test_breaker_fallback_runs_each_message_once_while_open(void **st) {
    (void)st;
    fx f;
    const int n = 200, m = 50;
    char fallback[512], fbfile[512], text[4096];
    fx_setup(&f, "fallback", "{\"queue\": \"%s\", \"handler\": \"exec:%s\"}");
    snprintf(fallback, sizeof fallback, "%s/park.sh", f.dir);
    snprintf(fbfile, sizeof fbfile, "%s/parked", f.dir);
    itest_write_file(fallback, parking);
    assert_int_equal(chmod(fallback, 0700), 0);
    setenv("FALLBACK_FILE", fbfile, 1);
    int port = free_port();
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"},"
             " \"metrics\": {\"listen\": \"127.0.0.1:%d\"}, \"consumers\": ["
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"prefetch\": 20,"
             " \"breaker\": {\"consecutive_failures\": 5, \"open_s\": 2,"
             " \"half_open_max\": 1, \"fallback\": \"exec:%s\"},"
             " \"retry\": {\"max_attempts\": 50, \"jitter\": 0,"
             " \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 100}}}]}",
             f.dir, port, f.queue, f.script, fallback);
    itest_write_file(f.cfg, text);
    itest_write_file(f.flag, "down\n");
    itest_publish_n(f.conn, "", f.queue, "fb", n, NULL, 0);
    fx_start(&f);

    lines_arg parked = {fbfile, n};
    if (!itest_wait_until(has_lines, &parked, 60)) {
        dump_log(&f);
        fail_msg("while down, only %ld of %d went to the fallback",
                 itest_count_lines(fbfile), n);
    }
    /* Down all along: nothing reached the primary's effects, every message
     * is parked exactly once, the primary ran 5 times to open the breaker
     * and at most once per half-open (a failed trial each). */
    long runs = itest_count_lines(f.runs);
    long half = breaker_logged(&f, "half_open");
    fprintf(stderr,
            "fallback: %d parked, primary ran %ld times, %ld half-open\n", n,
            runs, half);
    assert_int_equal(itest_count_lines(f.effects), -1);
    assert_int_equal(itest_count_lines(fbfile), n);
    assert_int_equal(distinct_lines(fbfile), n);
    if (runs < 5 || runs > 5 + half) {
        dump_log(&f);
        fail_msg("primary ran %ld times with %ld half-open periods: it was "
                 "called while open",
                 runs, half);
    }
    assert_true(breaker_logged(&f, "open") >= 1);
    assert_int_equal(breaker_logged(&f, "closed"), 0);
    /* The message events name the handler that ran. */
    assert_true(count_lines_with(f.log, "\"event\":\"message\"",
                                 "handler fallback") >= n);
    assert_int_equal(
        count_lines_with(f.log, "\"event\":\"breaker_pause\"", NULL), 0);
    /* ... and so do the metrics. */
    char series[512];
    snprintf(series, sizeof series,
             "warren_handler_calls_total{queue=\"%s\",handler=\"fallback\"}",
             f.queue);
    double fb_calls = scrape_sample(port, series);
    snprintf(series, sizeof series,
             "warren_handler_calls_total{queue=\"%s\",handler=\"primary\"}",
             f.queue);
    double primary_calls = scrape_sample(port, series);
    snprintf(series, sizeof series,
             "warren_breaker_transitions_total{queue=\"%s\",to=\"open\"}",
             f.queue);
    double opened = scrape_sample(port, series);
    fprintf(stderr, "metrics: fallback %g, primary %g, opened %g\n", fb_calls,
            primary_calls, opened);
    assert_true(fb_calls == n);
    assert_true(primary_calls >= 5 && primary_calls <= 5 + half + 1);
    assert_true(opened >= 1);

    /* The dependency is back: the primary takes over once a trial passes;
     * each new message is handled once, by one handler or the other. */
    assert_int_equal(unlink(f.flag), 0);
    trickle_arg t = {&f, 0};
    if (!itest_wait_until(trickle_until_closed, &t, 30)) {
        dump_log(&f);
        fail_msg("the breaker never closed after the dependency came back");
    }
    itest_publish_n(f.conn, "", f.queue, "closed", m, NULL, 0);
    int total = n + t.published + m;
    union_arg all = {fbfile, f.effects, total};
    if (!itest_wait_until(both_have, &all, 60)) {
        dump_log(&f);
        fail_msg("not drained: %ld parked, %ld handled of %d",
                 itest_count_lines(fbfile), itest_count_lines(f.effects),
                 total);
    }
    fx_stop(&f);
    char both[1100], cmd[1200];
    snprintf(both, sizeof both, "%s/both", f.dir);
    snprintf(cmd, sizeof cmd, "cat %s %s > %s", fbfile, f.effects, both);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(itest_count_lines(both), total);
    assert_int_equal(distinct_lines(both), total);
    /* closed: the last m all went to the primary */
    assert_true(itest_count_lines(f.effects) >= m);
    char dlq[192];
    snprintf(dlq, sizeof dlq, "%s.dlq", f.queue);
    assert_int_equal(itest_queue_depth(f.conn, dlq), 0);
    assert_int_equal(itest_queue_depth(f.conn, f.queue), 0);
    unsetenv("FALLBACK_FILE");
    fx_teardown(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_breaker_opens_holds_queue_then_closes_and_drains),
        cmocka_unit_test(
            test_breaker_pauses_on_quorum_queue_stay_below_delivery_limit),
        cmocka_unit_test(
            test_breaker_pauses_hold_quorum_messages_under_delivery_limit_5),
        cmocka_unit_test(test_rate_limit_200_per_s_takes_10_s_for_2000),
        cmocka_unit_test(test_rate_limit_is_shared_by_two_workers),
        cmocka_unit_test(
            test_breaker_fallback_runs_each_message_once_while_open),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

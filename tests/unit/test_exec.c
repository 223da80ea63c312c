/*
 * test_exec.c - exec handlers: the exit-status table, spec parsing, and real
 * child processes (scripts written into a temporary directory): results,
 * deadlines with SIGTERM then SIGKILL, large bodies and chatty children
 * without deadlock, the stderr reason and its cap, the child's environment
 * and descriptors, no shell interpretation, and no zombies left behind.
 * Time bounds scale with WARREN_TEST_TIMEOUT_SCALE.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ctx.h"
#include "handler.h"
#include "msg.h"

static char dir[64];
static warren__table empty_headers;
static struct warren_msg msg;
static struct warren_ctx ctx;

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double scale(void) {
    const char *s = getenv("WARREN_TEST_TIMEOUT_SCALE");
    double v = s ? atof(s) : 1.0;
    return v > 0 ? v : 1.0;
}

static int rm_one(const char *path, const struct stat *sb, int flag,
                  struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/warren-exec-XXXXXX");
    assert_non_null(mkdtemp(dir));
    memset(&msg, 0, sizeof msg);
    msg.queue = "orders";
    msg.exchange = "";
    msg.routing_key = "orders.new";
    msg.id = "m-1";
    msg.body = (const uint8_t *)"{}";
    msg.body_len = 2;
    msg.attempt = 1;
    msg.headers = &empty_headers;
    memset(&ctx, 0, sizeof ctx);
    warren__ctx_reset(&ctx, 0);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* Writes an executable script `name` into the test directory. */
static const char *script(const char *name, const char *body) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\n%s\n", body);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0700), 0);
    return path;
}

static void assert_no_children(void) {
    errno = 0;
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
}

/* Loads `spec`, runs it on the global message, frees it. */
static warren_result run_spec(const char *spec) {
    warren__handler *h = NULL;
    char err[512] = "";
    int rc = warren__handler_load(spec, &ctx, &h, err, sizeof err);
    if (rc != 0) {
        fail_msg("load %s: %s", spec, err);
    }
    warren_result r = warren__handler_call(h, &msg, &ctx);
    warren__handler_free(h);
    assert_no_children();
    return r;
}

static warren_result run_script(const char *body) {
    char spec[300];
    snprintf(spec, sizeof spec, "exec:%s", script("h.sh", body));
    return run_spec(spec);
}

static char *slurp(const char *name, size_t *len) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    assert_non_null(buf);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
            assert_non_null(buf);
        }
    }
    fclose(f);
    buf[n] = '\0';
    if (len) {
        *len = n;
    }
    return buf;
}

static int wait_status_of(void (*body)(int), int arg) {
    int status = 0;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        body(arg);
        _exit(99);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static void exit_with(int code) {
    _exit(code);
}

static void die_by(int sig) {
    signal(sig, SIG_DFL);
    raise(sig);
}

static void test_exec_map_status_follows_exit_code_table(void **state) {
    (void)state;
    static const struct {
        int code;
        warren_result want;
    } table[] = {{0, WARREN_ACK},     {75, WARREN_RETRY}, {65, WARREN_DEAD},
                 {1, WARREN_RETRY},   {3, WARREN_RETRY},  {64, WARREN_RETRY},
                 {66, WARREN_RETRY},  {74, WARREN_RETRY}, {76, WARREN_RETRY},
                 {127, WARREN_RETRY}, {255, WARREN_RETRY}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        int st = wait_status_of(exit_with, table[i].code);
        assert_int_equal(warren__exec_map_status(st), table[i].want);
    }
    assert_int_equal(warren__exec_map_status(wait_status_of(die_by, SIGKILL)),
                     WARREN_RETRY);
    assert_int_equal(warren__exec_map_status(wait_status_of(die_by, SIGSEGV)),
                     WARREN_RETRY);
}

static void test_exec_exit_codes_map_to_results(void **state) {
    (void)state;
    assert_int_equal(run_script("cat >/dev/null; exit 0"), WARREN_ACK);
    assert_string_equal(ctx.error, "");
    assert_int_equal(run_script("exit 65"), WARREN_DEAD);
    assert_non_null(strstr(ctx.error, "65"));
    assert_int_equal(run_script("exit 75"), WARREN_RETRY);
    assert_int_equal(run_script("exit 3"), WARREN_RETRY);
    assert_non_null(strstr(ctx.error, "status 3"));
}

static void test_exec_killed_by_signal_retries(void **state) {
    (void)state;
    assert_int_equal(run_script("kill -KILL $$"), WARREN_RETRY);
    assert_non_null(strstr(ctx.error, "signal 9"));
}

static void test_exec_deadline_sigterms_group_and_reaps_child(void **state) {
    (void)state;
    const int budget = 300;
    char spec[300];
    snprintf(spec, sizeof spec, "exec:%s",
             script("slow.sh", "echo $$ > \"$(dirname \"$0\")/pid\"\n"
                               "sleep 30\n"
                               "echo finished > \"$(dirname \"$0\")/done\""));
    warren__ctx_reset(&ctx, wall_ms() + budget);
    int64_t t0 = mono_ms();
    assert_int_equal(run_spec(spec), WARREN_RETRY);
    int64_t took = mono_ms() - t0;
    assert_true(took >= budget - 5);
    assert_true(took < budget + (int64_t)(2000 * scale()));
    assert_non_null(strstr(ctx.error, "timed out after"));
    assert_non_null(strstr(ctx.error, " ms"));
    char *pid = slurp("pid", NULL);
    assert_non_null(pid);
    /* Reaped: the pid no longer names a process (not even a zombie). */
    assert_int_equal(kill((pid_t)atoi(pid), 0), -1);
    assert_int_equal(errno, ESRCH);
    free(pid);
    assert_null(slurp("done", NULL));
}

static void
test_exec_child_ignoring_sigterm_is_sigkilled_after_grace(void **state) {
    (void)state;
    const int budget = 200;
    warren__ctx_reset(&ctx, wall_ms() + budget);
    int64_t t0 = mono_ms();
    /* SIG_IGN is inherited by the sleeps too, so only SIGKILL ends this. */
    assert_int_equal(run_script("trap '' TERM\n"
                                "while :; do sleep 0.05; done"),
                     WARREN_RETRY);
    int64_t took = mono_ms() - t0;
    assert_true(took >= budget + 2000 - 5);
    assert_true(took < budget + 2000 + (int64_t)(2000 * scale()));
    assert_non_null(strstr(ctx.error, "timed out"));
}

static void test_exec_deadline_env_is_passed_when_set(void **state) {
    (void)state;
    int64_t deadline = wall_ms() + 60000;
    warren__ctx_reset(&ctx, deadline);
    assert_int_equal(run_script("cat >/dev/null\n"
                                "printf %s \"$WARREN_DEADLINE_MS\" > "
                                "\"$(dirname \"$0\")/out\""),
                     WARREN_ACK);
    char *out = slurp("out", NULL);
    assert_non_null(out);
    assert_int_equal(strtoll(out, NULL, 10), deadline);
    free(out);
}

static uint8_t *big_body(size_t n) {
    uint8_t *b = malloc(n);
    assert_non_null(b);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        b[i] = (uint8_t)(x >> 16);
    }
    return b;
}

static void test_exec_large_body_reaches_stdin_intact(void **state) {
    (void)state;
    const size_t n = 1 << 20;
    uint8_t *b = big_body(n);
    msg.body = b;
    msg.body_len = n;
    assert_int_equal(run_script("cat > \"$(dirname \"$0\")/out\""), WARREN_ACK);
    size_t len = 0;
    char *out = slurp("out", &len);
    assert_non_null(out);
    assert_int_equal(len, n);
    assert_memory_equal(out, b, n);
    free(out);
    free(b);
}

static void
test_exec_chatty_child_and_large_body_do_not_deadlock(void **state) {
    (void)state;
    const size_t n = 1 << 20;
    uint8_t *b = big_body(n);
    msg.body = b;
    msg.body_len = n;
    /* The child fills its stderr pipe before reading stdin while we fill
     * its stdin: only draining both at once finishes. Our stderr goes to
     * /dev/null meanwhile, as the chatter is passed through. */
    int saved = dup(2);
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    assert_true(saved >= 0 && devnull >= 0);
    dup2(devnull, 2);
    warren__ctx_reset(&ctx, wall_ms() + (int64_t)(20000 * scale()));
    warren_result r =
        run_script("yes 'chatter chatter chatter' | head -n 100000 >&2\n"
                   "wc -c > \"$(dirname \"$0\")/out\"\n"
                   "echo 'the last line' >&2\n"
                   "exit 75");
    dup2(saved, 2);
    close(saved);
    close(devnull);
    assert_int_equal(r, WARREN_RETRY);
    assert_string_equal(ctx.error, "the last line");
    char *out = slurp("out", NULL);
    assert_non_null(out);
    assert_int_equal(strtoul(out, NULL, 10), n);
    free(out);
    free(b);
}

static void
test_exec_child_not_reading_stdin_does_not_sigpipe_worker(void **state) {
    (void)state;
    const size_t n = 4 << 20;
    uint8_t *b = big_body(n);
    msg.body = b;
    msg.body_len = n;
    signal(SIGPIPE, SIG_DFL);
    assert_int_equal(run_script("exec 0<&-\nexit 0"), WARREN_ACK);
    free(b);
}

static void test_exec_last_stderr_line_becomes_reason(void **state) {
    (void)state;
    assert_int_equal(run_script("echo 'first line' >&2\n"
                                "echo 'payment API said 503' >&2\n"
                                "echo '' >&2\n"
                                "exit 75"),
                     WARREN_RETRY);
    assert_string_equal(ctx.error, "payment API said 503");
    /* Without a trailing newline the unfinished line still counts. */
    assert_int_equal(run_script("printf 'bad order' >&2; exit 65"),
                     WARREN_DEAD);
    assert_string_equal(ctx.error, "bad order");
}

static void test_exec_reason_is_capped_at_1kib(void **state) {
    (void)state;
    int saved = dup(2);
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    dup2(devnull, 2);
    warren_result r = run_script("head -c 5000 /dev/zero | tr '\\0' x >&2\n"
                                 "echo >&2\nexit 75");
    dup2(saved, 2);
    close(saved);
    close(devnull);
    assert_int_equal(r, WARREN_RETRY);
    assert_int_equal(strlen(ctx.error), 1024);
    assert_int_equal(strspn(ctx.error, "x"), 1024);
}

static void test_exec_env_has_message_vars_but_never_warren_url(void **state) {
    (void)state;
    setenv("WARREN_URL", "amqp://user:secret@localhost/", 1);
    setenv("WARREN_CONTENT_TYPE", "stale/inherited", 1);
    msg.attempt = 3;
    msg.correlation_id = "corr-9";
    assert_int_equal(run_script("env > \"$(dirname \"$0\")/env\""), WARREN_ACK);
    unsetenv("WARREN_URL");
    unsetenv("WARREN_CONTENT_TYPE");
    char *env = slurp("env", NULL);
    assert_non_null(env);
    assert_null(strstr(env, "WARREN_URL"));
    assert_null(strstr(env, "secret"));
    assert_non_null(strstr(env, "\nWARREN_MESSAGE_ID=m-1\n"));
    assert_non_null(strstr(env, "\nWARREN_ATTEMPT=3\n"));
    assert_non_null(strstr(env, "\nWARREN_QUEUE=orders\n"));
    assert_non_null(strstr(env, "\nWARREN_ROUTING_KEY=orders.new\n"));
    assert_non_null(strstr(env, "\nWARREN_CORRELATION_ID=corr-9\n"));
    /* Unset properties are absent, not empty, nor inherited. */
    assert_null(strstr(env, "WARREN_CONTENT_TYPE"));
    assert_null(strstr(env, "WARREN_DEADLINE_MS"));
    /* The rest of the worker's environment is passed on. */
    assert_non_null(strstr(env, "PATH="));
    free(env);
}

static void test_exec_body_and_args_are_never_shell_interpreted(void **state) {
    (void)state;
    char spec[600], body[300];
    const char *path = script(
        "h.sh", "cat > \"$(dirname \"$0\")/body\"\n"
                "printf '%s|' \"$#\" \"$@\" > \"$(dirname \"$0\")/args\"");
    snprintf(body, sizeof body, "$(touch %s/pwned-body); `touch %s/x`", dir,
             dir);
    msg.body = (const uint8_t *)body;
    msg.body_len = strlen(body);
    snprintf(spec, sizeof spec,
             "exec:%s \"$(touch %s/pwned-arg)\" ;touch\t'%s/q' \"two words\" "
             "a\\\"b \"\"",
             path, dir, dir);
    assert_int_equal(run_spec(spec), WARREN_ACK);
    char *got = slurp("body", NULL);
    assert_non_null(got);
    assert_string_equal(got, body);
    free(got);
    char *args = slurp("args", NULL);
    char want[600];
    snprintf(want, sizeof want,
             "6|$(touch %s/pwned-arg)|;touch|'%s/q'|two words|a\"b||", dir,
             dir);
    assert_string_equal(args, want);
    free(args);
    char p[256];
    snprintf(p, sizeof p, "%s/pwned-body", dir);
    assert_int_equal(access(p, F_OK), -1);
    snprintf(p, sizeof p, "%s/pwned-arg", dir);
    assert_int_equal(access(p, F_OK), -1);
}

static void test_exec_child_inherits_no_descriptors_beyond_stdio(void **state) {
    (void)state;
    int fd = open("/dev/null", O_RDONLY); /* deliberately not O_CLOEXEC */
    assert_true(fd > 2);
    char body[200];
    snprintf(body, sizeof body,
             "cat >/dev/null\n"
             "if [ -e /proc/self/fd/%d ] || [ -e /proc/$$/fd/%d ]; then\n"
             "  exit 3; fi\nexit 0",
             fd, fd);
    warren_result r = run_script(body);
    close(fd);
    assert_int_equal(r, WARREN_ACK);
}

static void test_exec_child_runs_in_its_own_process_group(void **state) {
    (void)state;
    assert_int_equal(run_script("cat >/dev/null\n"
                                "ps -o pgid= -p $$ | tr -d ' ' > "
                                "\"$(dirname \"$0\")/pgid\"\n"
                                "echo $$ > \"$(dirname \"$0\")/pid\""),
                     WARREN_ACK);
    char *pgid = slurp("pgid", NULL);
    char *pid = slurp("pid", NULL);
    if (pgid == NULL || pgid[0] == '\0') {
        free(pgid);
        free(pid);
        skip(); /* no ps here */
        return; /* skip() is not noreturn; say so for the compiler */
    }
    assert_int_equal(atoi(pgid), atoi(pid));
    assert_int_not_equal(atoi(pgid), (int)getpgrp());
    free(pgid);
    free(pid);
}

static void test_exec_missing_program_is_refused_naming_it(void **state) {
    (void)state;
    warren__handler *h = NULL;
    char err[512], spec[300];
    snprintf(spec, sizeof spec, "exec:%s/nope.sh arg", dir);
    assert_int_equal(warren__handler_load(spec, &ctx, &h, err, sizeof err),
                     WARREN_ERR_HANDLER);
    assert_null(h);
    assert_non_null(strstr(err, "nope.sh"));
    assert_non_null(strstr(err, "No such file"));
}

static void test_exec_non_executable_program_is_refused_with_fix(void **state) {
    (void)state;
    warren__handler *h = NULL;
    char err[512], spec[300];
    const char *path = script("noexec.sh", "exit 0");
    chmod(path, 0600);
    snprintf(spec, sizeof spec, "exec:%s", path);
    if (geteuid() == 0 && access(path, X_OK) == 0) {
        skip(); /* root may execute anything with an x bit; none here */
    }
    assert_int_equal(warren__handler_load(spec, &ctx, &h, err, sizeof err),
                     WARREN_ERR_HANDLER);
    assert_null(h);
    assert_non_null(strstr(err, "not executable"));
    assert_non_null(strstr(err, "chmod +x"));
    snprintf(spec, sizeof spec, "exec:%s", dir);
    assert_int_equal(warren__handler_load(spec, &ctx, &h, err, sizeof err),
                     WARREN_ERR_HANDLER);
    assert_non_null(strstr(err, "directory"));
}

static void test_malformed_specs_are_config_errors(void **state) {
    (void)state;
    static const char *const bad[] = {
        "",
        "exec:",
        "exec:   ",
        "exec:\"unterminated",
        "exec:\"\" arg",
        "shell:ls",
        "noprefix",
        "plugin:",
        "plugin:lib.so",
        "plugin::handle",
        "plugin:lib.so:",
        "plugin:lib.so:not-an-identifier",
        "builtin:",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        warren__handler *h = NULL;
        char err[512] = "";
        int rc = warren__handler_load(bad[i], &ctx, &h, err, sizeof err);
        if (rc != WARREN_ERR_CONFIG) {
            fail_msg("spec '%s': got %d (%s), want WARREN_ERR_CONFIG", bad[i],
                     rc, err);
        }
        assert_null(h);
        assert_true(strlen(err) > 10);
    }
}

static void test_exec_split_groups_quotes_and_counts_words(void **state) {
    (void)state;
    char **argv = NULL;
    char err[256];
    assert_int_equal(warren__exec_split("  /bin/x  a\t\"b c\" \"\" d\"e f\"g",
                                        &argv, err, sizeof err),
                     5);
    assert_string_equal(argv[0], "/bin/x");
    assert_string_equal(argv[1], "a");
    assert_string_equal(argv[2], "b c");
    assert_string_equal(argv[3], "");
    assert_string_equal(argv[4], "de fg");
    assert_null(argv[5]);
    free(argv);
    char many[WARREN__EXEC_MAX_ARGS * 2 + 4];
    size_t k = 0;
    for (int i = 0; i <= WARREN__EXEC_MAX_ARGS; i++) {
        many[k++] = 'a';
        many[k++] = ' ';
    }
    many[k] = '\0';
    assert_int_equal(warren__exec_split(many, &argv, err, sizeof err),
                     WARREN_ERR_CONFIG);
    assert_null(argv);
}

/* ---- handler output as JSON log lines --------------------------------- */

/* What the handler_output events said, counted by the logger below. */
static struct {
    int lines[2]; /* [0] stdout, [1] stderr */
    size_t bytes; /* text of those lines */
    int truncated;
    char first[2][256];
} seen;

/* The `warren` command's log shape (cli/log_json.c): one JSON object per
 * line on fd 2, written with one write(). */
static void json_line_logger(const warren_log_event *ev, void *user) {
    (void)user;
    cJSON *o = cJSON_CreateObject();
    assert_non_null(o);
    if (warren_log_event_name(ev)) {
        cJSON_AddStringToObject(o, "event", warren_log_event_name(ev));
    }
    if (warren_log_event_queue(ev)) {
        cJSON_AddStringToObject(o, "queue", warren_log_event_queue(ev));
    }
    if (warren_log_event_message_id(ev)) {
        cJSON_AddStringToObject(o, "message_id",
                                warren_log_event_message_id(ev));
    }
    if (warren_log_event_stream(ev)) {
        cJSON_AddStringToObject(o, "stream", warren_log_event_stream(ev));
        cJSON_AddBoolToObject(o, "truncated", warren_log_event_truncated(ev));
    }
    cJSON_AddStringToObject(o, "msg", warren_log_event_text(ev));
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    assert_non_null(line);
    size_t len = strlen(line);
    char *buf = malloc(len + 2);
    assert_non_null(buf);
    memcpy(buf, line, len);
    buf[len] = '\n';
    ssize_t w = write(2, buf, len + 1);
    (void)w;
    free(buf);
    cJSON_free(line);
}

/* Well-formed UTF-8 (lead bytes and continuation bytes; what a JSON reader
 * such as journalctl or jq insists on). */
static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t k;
        if (c < 0x80) {
            k = 0;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
        } else {
            return 0;
        }
        if (k > n - i - 1) {
            return 0;
        }
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) {
                return 0;
            }
        }
        i += k + 1;
    }
    return 1;
}

/* Runs `body` as the handler with fd 2 sent to a file and the JSON logger
 * installed; then asserts every line of that file is one JSON object in
 * valid UTF-8 and counts the handler_output events into `seen`. */
static warren_result run_logged(const char *body) {
    char path[256];
    snprintf(path, sizeof path, "%s/stderr", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int saved = dup(2);
    assert_true(fd >= 0 && saved >= 0);
    memset(&seen, 0, sizeof seen);
    warren_log_set(json_line_logger, NULL, WARREN_LOG_INFO);
    dup2(fd, 2);
    close(fd);
    warren_result r = run_script(body);
    dup2(saved, 2);
    close(saved);
    warren_log_set(NULL, NULL, WARREN_LOG_INFO);

    size_t len = 0;
    char *all = slurp("stderr", &len);
    assert_non_null(all);
    int n = 0;
    for (char *p = all; p < all + len;) {
        char *nl = memchr(p, '\n', (size_t)(all + len - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(all + len - p);
        if (!nl) {
            fail_msg("stderr ends without a newline: '%.200s'", p);
        }
        *nl = '\0';
        n++;
        if (!valid_utf8((const unsigned char *)p, l)) {
            fail_msg("stderr line %d is not valid UTF-8: '%.200s'", n, p);
        }
        cJSON *o = cJSON_Parse(p);
        if (o == NULL || !cJSON_IsObject(o)) {
            fail_msg("stderr line %d is not a JSON object: '%.200s'", n, p);
        }
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "event");
        if (cJSON_IsString(ev) &&
            strcmp(ev->valuestring, "handler_output") == 0) {
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "msg");
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "stream");
            const cJSON *tr = cJSON_GetObjectItemCaseSensitive(o, "truncated");
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "message_id");
            const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "queue");
            assert_true(cJSON_IsString(m) && cJSON_IsString(st));
            assert_true(cJSON_IsString(id) && cJSON_IsString(q));
            assert_string_equal(id->valuestring, "m-1");
            assert_string_equal(q->valuestring, "orders");
            int k = strcmp(st->valuestring, "stderr") == 0;
            assert_true(k || strcmp(st->valuestring, "stdout") == 0);
            if (seen.lines[k]++ == 0) {
                snprintf(seen.first[k], sizeof seen.first[k], "%s",
                         m->valuestring);
            }
            seen.bytes += strlen(m->valuestring);
            seen.truncated += cJSON_IsTrue(tr);
        }
        cJSON_Delete(o);
        p = nl + 1;
    }
    free(all);
    return r;
}

static void
test_exec_output_of_both_streams_is_logged_as_json_lines(void **state) {
    (void)state;
    warren_result r = run_logged(
        "printf 'out \"quoted\" {\"json\": 1}\\n'\n"
        "printf 'err \\033[31mred\\033[0m tab\\there \\\\ back\\r\\n' >&2\n"
        "printf 'bad utf8 \\377\\376 and a NUL \\000 end\\n'\n"
        "printf 'half a line' >&2\n"
        "exit 65");
    /* The result and the reason are what they were without logging. */
    assert_int_equal(r, WARREN_DEAD);
    assert_string_equal(ctx.error, "half a line");
    assert_int_equal(seen.lines[0], 2);
    assert_int_equal(seen.lines[1], 2);
    assert_string_equal(seen.first[0], "out \"quoted\" {\"json\": 1}");
    assert_string_equal(seen.first[1],
                        "err \033[31mred\033[0m tab\there \\ back");
    assert_int_equal(seen.truncated, 0);
}

static void test_exec_10mib_of_output_is_capped_and_never_blocks(void **state) {
    (void)state;
    warren__ctx_reset(&ctx, wall_ms() + (int64_t)(30000 * scale()));
    int64_t t0 = mono_ms();
    /* 10 MiB of lines on stdout, then one 1 MiB line on stderr. */
    warren_result r = run_logged(
        "yes 'output output output output output output output output' "
        "| head -c 10485760\n"
        "head -c 1048576 /dev/zero | tr '\\0' 'e' >&2\n"
        "echo >&2\n"
        "exit 0");
    assert_int_equal(r, WARREN_ACK);
    assert_true(mono_ms() - t0 < (int64_t)(20000 * scale()));
    /* Capped: far less than what was printed was logged, marked so. */
    assert_true(seen.lines[0] > 0);
    assert_true(seen.bytes <= 80 * 1024);
    /* The 1 MiB line was cut, and stdout's dropped bytes were counted. */
    assert_true(seen.truncated >= 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exec_map_status_follows_exit_code_table),
        cmocka_unit_test(test_exec_split_groups_quotes_and_counts_words),
        cmocka_unit_test_setup_teardown(test_exec_exit_codes_map_to_results,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_killed_by_signal_retries,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_deadline_sigterms_group_and_reaps_child, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_child_ignoring_sigterm_is_sigkilled_after_grace, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_deadline_env_is_passed_when_set, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_large_body_reaches_stdin_intact, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_chatty_child_and_large_body_do_not_deadlock, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_child_not_reading_stdin_does_not_sigpipe_worker, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_last_stderr_line_becomes_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_reason_is_capped_at_1kib,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_env_has_message_vars_but_never_warren_url, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_body_and_args_are_never_shell_interpreted, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_child_inherits_no_descriptors_beyond_stdio, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_child_runs_in_its_own_process_group, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_missing_program_is_refused_naming_it, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_non_executable_program_is_refused_with_fix, setup,
            teardown),
        cmocka_unit_test_setup_teardown(test_malformed_specs_are_config_errors,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_output_of_both_streams_is_logged_as_json_lines, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_exec_10mib_of_output_is_capped_and_never_blocks, setup,
            teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_memory_bound.c - issue 18 item 9: what a worker holds is bounded by
 * max_message_bytes, not by the largest body the broker will carry. One
 * `warren run` runs inside a memory cgroup (cgroup v1 memory controller at
 * /sys/fs/cgroup/memory, limit 64 MiB) with max_message_bytes 8 MiB, and
 * gets 40 MiB messages among small ones, all buffered at once (prefetch
 * 20): the big ones must reach the DLQ with their whole body and the
 * reason, each once; the small ones must be handled once each; the worker
 * must never be OOM-killed (same worker pid throughout, the cgroup's
 * oom_kill count 0). Skipped where the cgroup cannot be created.
 */
#include "itest.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CGROUP_ROOT "/sys/fs/cgroup/memory"
#define MEM_LIMIT ((long)64 << 20)
#define MAX_MESSAGE_BYTES (8 << 20)
#define BIG_BODY ((size_t)40 << 20)
#define N_BIG 4
#define N_SMALL 20
#define MID_BODY ((size_t)3 << 20)
#define N_MID 10

static struct {
    char *dir;
    char q[96], dlq[112];
    char cfg[512], log[512], effects[512], script[512], store[512];
    char cg[256];
    pid_t pid;
    amqp_connection_state_t conn;
} g;

/* "ID WORKER_PID BODY_BYTES OTHER" per handler run; $PPID is the worker.
 * A "mid-X" body is all X: OTHER counts its bytes that are not. */
static const char *recorder =
    "#!/bin/sh\n"
    "f=$(mktemp \"$EFFECTS_FILE.XXXXXX\")\n"
    "cat > \"$f\"\n"
    "n=$(wc -c < \"$f\")\n"
    "o=0\n"
    "case \"$WARREN_MESSAGE_ID\" in mid-?) "
    "o=$(tr -d \"${WARREN_MESSAGE_ID#mid-}\" < \"$f\" | wc -c);; esac\n"
    "rm -f \"$f\"\n"
    "printf '%s %s %s %s\\n' \"$WARREN_MESSAGE_ID\" \"$PPID\" \"$n\" \"$o\" "
    ">> \"$EFFECTS_FILE\"\n"
    "exit 0\n";

static int write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "w");
    if (fp == NULL) {
        return -1;
    }
    int rc = fputs(text, fp) < 0;
    return (fclose(fp) != 0 || rc) ? -1 : 0;
}

static long read_oom_kills(void) {
    char path[512], line[256];
    long n = 0;
    snprintf(path, sizeof path, "%s/memory.oom_control", g.cg);
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        return -1;
    }
    while (fgets(line, sizeof line, fp)) {
        sscanf(line, "oom_kill %ld", &n);
    }
    fclose(fp);
    return n;
}

static long read_cg_long(const char *file) {
    char path[512];
    long v = -1;
    snprintf(path, sizeof path, "%s/%s", g.cg, file);
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        return -1;
    }
    if (fscanf(fp, "%ld", &v) != 1) {
        v = -1;
    }
    fclose(fp);
    return v;
}

typedef struct {
    long runs;    /* lines for the id (or all lines with id NULL) */
    long pids[4]; /* distinct worker pids seen */
    int n_pids;
    long bad_size; /* a run whose body size was not the small one's */
} effects;

static effects read_effects(const char *id) {
    effects e = {0};
    char line[512];
    FILE *fp = fopen(g.effects, "r");
    if (fp == NULL) {
        return e;
    }
    while (fgets(line, sizeof line, fp)) {
        char mid[300];
        long pid, bytes, other;
        if (sscanf(line, "%299s %ld %ld %ld", mid, &pid, &bytes, &other) != 4) {
            continue;
        }
        if (id != NULL && strcmp(mid, id) != 0) {
            continue;
        }
        e.runs++;
        long want = strncmp(mid, "mid-", 4) == 0 ? (long)MID_BODY : 5;
        if (bytes != want || other != 0) {
            e.bad_size++;
        }
        int seen = 0;
        for (int i = 0; i < e.n_pids; i++) {
            seen |= e.pids[i] == pid;
        }
        if (!seen && e.n_pids < 4) {
            e.pids[e.n_pids++] = pid;
        }
    }
    fclose(fp);
    return e;
}

typedef struct {
    const char *queue;
    long want;
} depth_arg;

static int depth_at_least(void *arg) {
    depth_arg *a = arg;
    return itest_queue_depth(g.conn, a->queue) >= a->want;
}

static int all_small_ran(void *arg) {
    (void)arg;
    return read_effects(NULL).runs >= N_SMALL;
}

/* 1 in a sanitizer build (ASan's shadow and quarantine make a 64 MiB
 * limit meaningless): the test then runs without the cgroup. */
static int sanitizer_build(void) {
    char path[1024], line[512];
    int found = 0;
    const char *b = getenv("WARREN_BUILD_DIR");
    snprintf(path, sizeof path, "%s/CMakeCache.txt", b ? b : ".");
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        char *eq = strchr(line, '=');
        if (strncmp(line, "WARREN_SANITIZE:", 16) == 0 && eq != NULL &&
            eq[1] != '\n' && eq[1] != '\0') {
            found = 1;
        }
    }
    fclose(fp);
    return found;
}

static int setup(void **state) {
    (void)state;
    char text[2048];
    g.dir = itest_tmpdir();
    snprintf(g.q, sizeof g.q, "it.mem.%d", (int)getpid());
    snprintf(g.dlq, sizeof g.dlq, "%s.dlq", g.q);
    snprintf(g.cfg, sizeof g.cfg, "%s/warren.json", g.dir);
    snprintf(g.log, sizeof g.log, "%s/warren.log", g.dir);
    snprintf(g.effects, sizeof g.effects, "%s/effects", g.dir);
    snprintf(g.script, sizeof g.script, "%s/recorder.sh", g.dir);
    snprintf(g.store, sizeof g.store, "%s/warren.db", g.dir);
    snprintf(g.cg, sizeof g.cg, "%s/warren-it-mem-%d", CGROUP_ROOT,
             (int)getpid());
    itest_write_file(g.script, recorder);
    assert_int_equal(chmod(g.script, 0700), 0);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s\"}, \"shutdown_grace_s\": 20,\n"
             " \"consumers\": [\n"
             "  {\"queue\": \"%s\", \"handler\": \"exec:%s\", \"prefetch\": "
             "20,\n   \"max_message_bytes\": %d}]}\n",
             g.store, g.q, g.script, MAX_MESSAGE_BYTES);
    itest_write_file(g.cfg, text);
    setenv("EFFECTS_FILE", g.effects, 1);
    g.conn = itest_connect();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    if (g.pid > 0) {
        itest_terminate(g.pid, 30);
    }
    if (g.cg[0] != '\0') {
        rmdir(g.cg);
    }
    itest_queue_delete(g.conn, g.q);
    itest_queue_delete(g.conn, g.dlq);
    itest_disconnect(g.conn);
    itest_rmtree(g.dir);
    free(g.dir);
    return 0;
}

static void
test_40mib_bodies_reach_dlq_whole_in_64mib_cgroup_small_ones_once(void **st) {
    (void)st;
    char limit[32];
    int limited = !sanitizer_build();
    if (!limited) {
        print_message("sanitizer build: running without the memory cgroup\n");
        g.cg[0] = '\0';
    } else if (mkdir(g.cg, 0755) != 0) {
        print_message("cannot create %s (%s): no memory cgroup here\n", g.cg,
                      strerror(errno));
        g.cg[0] = '\0';
        skip();
    }
    if (limited) {
        snprintf(limit, sizeof limit, "%ld", MEM_LIMIT);
        char path[512];
        snprintf(path, sizeof path, "%s/memory.limit_in_bytes", g.cg);
        assert_int_equal(write_text(path, limit), 0);
    }

    const char *decl[] = {"topology", "declare", "-c", g.cfg, NULL};
    int status = 0;
    pid_t p = itest_spawn_warren(decl, g.log);
    assert_true(itest_wait_exit(p, 30, &status));
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* Everything is in the queue before the worker starts, so its first
     * reads see the big bodies back to back. */
    char *body = malloc(BIG_BODY);
    assert_non_null(body);
    int big = 0, small = 0;
    for (int i = 0; i < N_BIG + N_SMALL; i++) {
        char id[32];
        if (i % 6 == 2 && big < N_BIG) {
            snprintf(id, sizeof id, "big-%d", big);
            memset(body, 'A' + big, BIG_BODY);
            itest_publish(g.conn, "", g.q, id, body, BIG_BODY);
            big++;
        } else if (small < N_SMALL) {
            snprintf(id, sizeof id, "small-%d", small++);
            itest_publish(g.conn, "", g.q, id, "small", 5);
        } else {
            snprintf(id, sizeof id, "big-%d", big);
            memset(body, 'A' + big, BIG_BODY);
            itest_publish(g.conn, "", g.q, id, body, BIG_BODY);
            big++;
        }
    }
    assert_int_equal(big, N_BIG);

    /* The pool runs inside the cgroup from its first instruction on. */
    char script[1024];
    if (limited) {
        snprintf(script, sizeof script,
                 "echo $$ > %s/cgroup.procs && exec \"$0\" \"$@\"", g.cg);
    } else {
        snprintf(script, sizeof script, "exec \"$0\" \"$@\"");
    }
    const char *argv[] = {"/bin/sh", "-c", script, itest_warren_bin(),
                          "run",     "-c", g.cfg,  "--log-level",
                          "debug",   NULL};
    g.pid = itest_spawn("/bin/sh", argv, g.log);

    depth_arg a = {g.dlq, N_BIG};
    int dlq_ok = itest_wait_until(depth_at_least, &a, 90);
    int small_ok = itest_wait_until(all_small_ran, NULL, 30);
    if (limited) {
        long ooms = read_oom_kills();
        print_message("cgroup: peak %ld KiB of %ld KiB, limit hit %ld times, "
                      "oom kills %ld; DLQ depth %ld\n",
                      read_cg_long("memory.max_usage_in_bytes") / 1024,
                      MEM_LIMIT / 1024, read_cg_long("memory.failcnt"), ooms,
                      itest_queue_depth(g.conn, g.dlq));
        assert_int_equal(ooms, 0);
    }
    assert_true(dlq_ok);
    assert_true(small_ok);

    /* A clean stop hands back anything unacked: an empty work queue then
     * proves every message was settled. */
    status = itest_terminate(g.pid, 30);
    g.pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(itest_queue_depth(g.conn, g.q), 0);

    /* Each small one once, all in one worker (a restart would show a
     * second pid), none with a wrong body. */
    effects all = read_effects(NULL);
    assert_int_equal(all.runs, N_SMALL);
    assert_int_equal(all.n_pids, 1);
    assert_int_equal(all.bad_size, 0);
    for (int i = 0; i < N_SMALL; i++) {
        char id[32];
        snprintf(id, sizeof id, "small-%d", i);
        assert_int_equal(read_effects(id).runs, 1);
    }

    /* Each big one once in the DLQ, whole, with its reason. */
    int seen[N_BIG] = {0};
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), N_BIG);
    for (int i = 0; i < N_BIG; i++) {
        itest_msg m;
        assert_int_equal(itest_get(g.conn, g.dlq, &m, 0), 1);
        int k = -1;
        assert_int_equal(sscanf(m.message_id, "big-%d", &k), 1);
        assert_true(k >= 0 && k < N_BIG);
        seen[k]++;
        assert_int_equal(m.len, BIG_BODY);
        memset(body, 'A' + k, BIG_BODY);
        assert_memory_equal(m.body, body, BIG_BODY);
        const amqp_field_value_t *err = itest_msg_header(&m, "x-warren-error");
        assert_non_null(err);
        assert_true(err->value.bytes.len >= 18);
        assert_memory_equal(err->value.bytes.bytes, "message too large:", 18);
        itest_msg_free(&m);
    }
    for (int i = 0; i < N_BIG; i++) {
        assert_int_equal(seen[i], 1);
    }
    free(body);
}

static long log_count(const char *needle) {
    char line[8192];
    long n = 0;
    FILE *fp = fopen(g.log, "r");
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        n += strstr(line, needle) != NULL;
    }
    fclose(fp);
    return n;
}

static int body_lost_twice(void *arg) {
    (void)arg;
    return log_count("\"body_lost\"") >= 2;
}

static int small_ran(void *arg) {
    return read_effects(arg).runs >= 1;
}

/* The other side of spooling: a body over max_message_bytes that cannot be
 * spooled (no $TMPDIR) is drained, but its message is never acked with an
 * empty DLQ copy; it stays in the queue, and the worker goes on with the
 * rest. */
static void test_unspoolable_body_is_not_acked_with_an_empty_copy(void **st) {
    (void)st;
    g.cg[0] = '\0';
    const char *decl[] = {"topology", "declare", "-c", g.cfg, NULL};
    int status = 0;
    pid_t p = itest_spawn_warren(decl, g.log);
    assert_true(itest_wait_exit(p, 30, &status));
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    size_t len = MAX_MESSAGE_BYTES + 1;
    char *body = malloc(len);
    assert_non_null(body);
    memset(body, 'q', len);
    itest_publish(g.conn, "", g.q, "big-lost", body, len);
    free(body);
    itest_publish(g.conn, "", g.q, "small-0", "small", 5);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s/no-such-dir", g.dir);
    setenv("TMPDIR", tmp, 1);
    const char *run[] = {"run", "-c", g.cfg, "--log-level", "debug", NULL};
    g.pid = itest_spawn_warren(run, g.log);
    unsetenv("TMPDIR");
    assert_true(itest_wait_until(small_ran, "small-0", 30));
    assert_true(itest_wait_until(body_lost_twice, NULL, 30));
    status = itest_terminate(g.pid, 30);
    g.pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* Not lost: still in the queue, whole; nothing in the DLQ; the small
     * one handled once; the big one never ran. */
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 0);
    assert_int_equal(itest_queue_depth(g.conn, g.q), 1);
    itest_msg m;
    assert_int_equal(itest_get(g.conn, g.q, &m, 0), 1);
    assert_string_equal(m.message_id, "big-lost");
    assert_int_equal(m.len, len);
    itest_msg_free(&m);
    assert_int_equal(read_effects("small-0").runs, 1);
    assert_int_equal(read_effects(NULL).runs, 1);
}

typedef struct {
    long want;
} all_arg;

static int all_ran(void *arg) {
    return read_effects(NULL).runs >= ((all_arg *)arg)->want;
}

/* Bodies under max_message_bytes read ahead while the worker waits for a
 * DLQ confirm go past the read-ahead budget (8 MiB here): the rest are
 * parked on disk and read back when taken. Each must reach its handler
 * once and intact. */
static void test_read_ahead_over_budget_is_parked_and_handled_once(void **st) {
    (void)st;
    g.cg[0] = '\0';
    const char *decl[] = {"topology", "declare", "-c", g.cfg, NULL};
    int status = 0;
    pid_t p = itest_spawn_warren(decl, g.log);
    assert_true(itest_wait_exit(p, 30, &status));
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    size_t big_len = MAX_MESSAGE_BYTES + 1;
    char *body = malloc(big_len);
    assert_non_null(body);
    memset(body, 'B', big_len);
    itest_publish(g.conn, "", g.q, "big-0", body, big_len);
    for (int i = 0; i < N_MID; i++) {
        char id[16];
        snprintf(id, sizeof id, "mid-%c", 'a' + i);
        memset(body, 'a' + i, MID_BODY);
        itest_publish(g.conn, "", g.q, id, body, MID_BODY);
    }
    free(body);
    const char *run[] = {"run", "-c", g.cfg, "--log-level", "debug", NULL};
    g.pid = itest_spawn_warren(run, g.log);
    all_arg a = {N_MID};
    assert_true(itest_wait_until(all_ran, &a, 60));
    depth_arg d = {g.dlq, 1};
    assert_true(itest_wait_until(depth_at_least, &d, 30));
    status = itest_terminate(g.pid, 30);
    g.pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    long parked = log_count("parked in a spool file");
    print_message("%ld bodies parked on disk by the read-ahead\n", parked);
    assert_int_equal(itest_queue_depth(g.conn, g.q), 0);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 1);
    effects all = read_effects(NULL);
    assert_int_equal(all.runs, N_MID);
    assert_int_equal(all.bad_size, 0);
    assert_int_equal(all.n_pids, 1);
    for (int i = 0; i < N_MID; i++) {
        char id[16];
        snprintf(id, sizeof id, "mid-%c", 'a' + i);
        assert_int_equal(read_effects(id).runs, 1);
    }
    assert_true(parked >= 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_40mib_bodies_reach_dlq_whole_in_64mib_cgroup_small_ones_once,
            setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_unspoolable_body_is_not_acked_with_an_empty_copy, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_read_ahead_over_budget_is_parked_and_handled_once, setup,
            teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

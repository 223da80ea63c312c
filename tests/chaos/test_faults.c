/*
 * test_faults.c - process and broker faults under a steady publish: random
 * workers SIGKILLed, the broker restarted, every connection closed by the
 * broker, the work queue deleted under its consumer, a memory alarm
 * (connection.blocked), a broker consumer_timeout shorter than a slow
 * handler, and a silent network blackhole on the broker's port. Each heals,
 * drains and must pass chaos_check(); some also assert how fast warren
 * noticed.
 */
#include "chaos.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static chaos_run run;
static int blackhole_port; /* iptables rules in force for this port */

static void blackhole(int on) {
    char cmd[512];
    for (int k = 0; k < 2; k++) {
        snprintf(cmd, sizeof cmd,
                 "iptables %s INPUT -i lo -p tcp --%s %d -j DROP 2>&1",
                 on ? "-I" : "-D", k == 0 ? "dport" : "sport", blackhole_port);
        if (system(cmd) != 0 && on) {
            fail_msg("could not install the blackhole: %s", cmd);
        }
    }
}

static int teardown(void **state) {
    (void)state;
    if (blackhole_port) {
        blackhole(0);
        blackhole_port = 0;
    }
    if (run.dir) {
        chaos_teardown(&run);
        memset(&run, 0, sizeof run);
    }
    return 0;
}

static void reconnect_harness(void) {
    itest_disconnect(run.conn);
    run.conn = itest_connect();
}

/* Without reaping it: chaos_wait_producer() wants its exit status. */
static int producer_running(void) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    return run.producer > 0 &&
           waitid(P_PID, (id_t)run.producer, &si,
                  WEXITED | WNOHANG | WNOWAIT) == 0 &&
           si.si_pid == 0;
}

/* The usual ending: the producer done, drained, stopped, checked. */
static void finish(void) {
    chaos_wait_producer(&run, 240);
    int ok = chaos_drain(&run, 150);
    if (!ok) {
        size_t l = strlen(run.note);
        snprintf(run.note + l, sizeof run.note - l, "; drain timed out");
    }
    chaos_stop_pool(&run);
    chaos_check(&run);
    assert_true(ok);
}

static void test_random_sigkills_lose_nothing(void **s) {
    (void)s;
    chaos_opts o = {.name = "sigkill",
                    .exec_workers = 2,
                    .ledger_workers = 1,
                    .n = 300,
                    .rate = 60};
    chaos_setup(&run, &o);
    chaos_start_pool(&run);
    chaos_start_producer(&run);
    unsigned seed = 7;
    long next = 60;
    int kills = 0;
    /* A kill every ~60 effects (a second or two) while the producer runs. */
    while (producer_running() && kills < 8) {
        chaos_wait_effects(&run, next, 60);
        if (chaos_kill_worker(&run, (unsigned)rand_r(&seed)) > 0) {
            kills++;
        }
        next += 60;
    }
    snprintf(run.note, sizeof run.note, "%d workers SIGKILLed", kills);
    finish();
    assert_true(kills >= 3);
}

static void test_broker_restart_loses_nothing(void **s) {
    (void)s;
    chaos_opts o = {.name = "brokerrestart",
                    .exec_workers = 2,
                    .ledger_workers = 1,
                    .n = 300,
                    .rate = 60};
    chaos_setup(&run, &o);
    chaos_start_pool(&run);
    chaos_start_producer(&run);
    chaos_wait_effects(&run, 60, 60);
    itest_disconnect(run.conn);
    run.conn = NULL;
    assert_int_equal(itest_broker("restart"), 0);
    run.conn = itest_connect();
    snprintf(run.note, sizeof run.note, "broker restarted; %ld reconnects",
             chaos_log_count(&run, "\"event\":\"reconnect\""));
    finish();
}

static void test_close_all_connections_loses_nothing(void **s) {
    (void)s;
    chaos_opts o = {.name = "closeall",
                    .exec_workers = 2,
                    .ledger_workers = 1,
                    .n = 300,
                    .rate = 60};
    chaos_setup(&run, &o);
    chaos_start_pool(&run);
    chaos_start_producer(&run);
    const char *args[] = {"close_all_connections", "chaos test", NULL};
    for (long at = 60; at <= 180; at += 120) {
        chaos_wait_effects(&run, at, 60);
        assert_int_equal(chaos_ctl(args, NULL, 0), 0);
        reconnect_harness();
    }
    /* Counted once the workers have reconnected (the drain ends there). */
    chaos_wait_producer(&run, 240);
    int ok = chaos_drain(&run, 150);
    long d = chaos_log_count(&run, "\"event\":\"disconnected\"");
    snprintf(run.note, sizeof run.note, "closed twice; %ld disconnects%s", d,
             ok ? "" : "; drain timed out");
    chaos_stop_pool(&run);
    chaos_check(&run);
    assert_true(ok);
    assert_true(d >= 3);
}

static long long store_count(chaos_run *r, const char *state) {
    char cmd[1024], out[64] = "";
    snprintf(cmd, sizeof cmd,
             "sqlite3 '%s' \"SELECT count(*) FROM messages WHERE state = "
             "'%s'\"",
             r->db, state);
    FILE *fp = popen(cmd, "r");
    if (fp == NULL) {
        return -1;
    }
    if (fgets(out, sizeof out, fp) == NULL) {
        out[0] = '\0';
    }
    pclose(fp);
    return out[0] ? atoll(out) : -1;
}

static int queue_back(void *arg) {
    (void)arg;
    return itest_queue_depth(run.conn, run.qexec) >= 0;
}

static void test_queue_deleted_under_consumer_is_redeclared(void **s) {
    (void)s;
    chaos_opts o = {.name = "qdelete", .exec_workers = 2, .n = 300, .rate = 60};
    chaos_setup(&run, &o);
    chaos_start_pool(&run);
    chaos_start_producer(&run);
    chaos_wait_effects(&run, 60, 60);
    /* What was in the queue when it was deleted is gone by the operator's
     * hand: ids confirmed before this instant and never seen are counted
     * as dropped, not lost. Publishes while it is gone come back to the
     * producer as unroutable (basic.return): not confirmed to a queue. */
    run.excuse_from_ms = 1;
    itest_queue_delete(run.conn, run.qexec);
    if (!itest_wait_until(queue_back, NULL, 30)) {
        fail_msg("nobody redeclared %s after a consumer cancel; see %s",
                 run.qexec, run.log);
    }
    /* A confirm that arrives after the delete may still be for a publish
     * routed to the old queue; until the queue is back, nothing else can
     * be confirmed (it is returned), so the window ends here. */
    run.excuse_to_ms = chaos_now_ms();
    chaos_wait_producer(&run, 240);
    int ok = chaos_drain(&run, 150);
    snprintf(run.note, sizeof run.note,
             "%lld claims and %lld retry records of dropped messages left in "
             "the store%s",
             store_count(&run, "processing"), store_count(&run, "retrying"),
             ok ? "" : "; drain timed out");
    chaos_stop_pool(&run);
    chaos_check(&run);
    assert_true(ok);
}

static void test_memory_alarm_blocks_then_drains(void **s) {
    (void)s;
    chaos_opts o = {.name = "memalarm",
                    .exec_workers = 2,
                    .ledger_workers = 1,
                    .n = 300,
                    .rate = 30};
    chaos_setup(&run, &o);
    chaos_start_pool(&run);
    chaos_start_producer(&run);
    chaos_wait_effects(&run, 60, 60);
    const char *on[] = {"set_vm_memory_high_watermark", "absolute", "10MB",
                        NULL};
    const char *off[] = {"set_vm_memory_high_watermark", "0.4", NULL};
    assert_int_equal(chaos_ctl(on, NULL, 0), 0);
    /* The alarm lasts 12 s: a fault's length, not a wait for a condition. */
    int64_t until = chaos_now_ms() + 12000;
    while (chaos_now_ms() < until && producer_running()) {
        usleep(100000);
    }
    assert_int_equal(chaos_ctl(off, NULL, 0), 0);
    long blocked = chaos_log_count(&run, "broker blocked publishing");
    snprintf(run.note, sizeof run.note,
             "alarm 12 s; %ld connection.blocked seen by workers", blocked);
    finish();
}

/* application:get_env(rabbit, KEY) as printed by rabbitmqctl eval, into
 * `out`: "{ok,5000}" or "undefined". */
static void get_env(const char *key, char *out, size_t len) {
    char expr[128];
    snprintf(expr, sizeof expr, "application:get_env(rabbit, %s).", key);
    const char *args[] = {"eval", expr, NULL};
    assert_int_equal(chaos_ctl(args, out, len), 0);
    out[strcspn(out, "\n")] = '\0';
}

static void restore_env(const char *key, const char *was) {
    char expr[160];
    long v;
    if (sscanf(was, "{ok,%ld}", &v) == 1) {
        snprintf(expr, sizeof expr, "application:set_env(rabbit, %s, %ld).",
                 key, v);
    } else {
        snprintf(expr, sizeof expr, "application:unset_env(rabbit, %s).", key);
    }
    const char *args[] = {"eval", expr, NULL};
    chaos_ctl(args, NULL, 0);
}

static void test_consumer_timeout_shorter_than_handler(void **s) {
    (void)s;
    char was_timeout[128], was_tick[128];
    get_env("consumer_timeout", was_timeout, sizeof was_timeout);
    get_env("channel_tick_interval", was_tick, sizeof was_tick);
    /* The broker checks the timeout on its channel tick (60 s by default):
     * a 1 s tick makes a 5 s timeout fire within about 6 s. Both apply to
     * channels opened afterwards, so they are set before the pool starts. */
    const char *t1[] = {
        "eval", "application:set_env(rabbit, consumer_timeout, 5000).", NULL};
    const char *t2[] = {
        "eval", "application:set_env(rabbit, channel_tick_interval, 1000).",
        NULL};
    assert_int_equal(chaos_ctl(t1, NULL, 0), 0);
    assert_int_equal(chaos_ctl(t2, NULL, 0), 0);
    chaos_opts o = {.name = "ctimeout",
                    .exec_workers = 2,
                    .n = 100,
                    .rate = 50,
                    .slow_every = 40,
                    .slow_s = 8};
    chaos_setup(&run, &o);
    chaos_start_pool(&run);
    chaos_start_producer(&run);
    chaos_wait_producer(&run, 120);
    int ok = chaos_drain(&run, 150);
    restore_env("consumer_timeout", was_timeout);
    restore_env("channel_tick_interval", was_tick);
    chaos_stop_pool(&run);
    long closed = chaos_log_count(&run, "timed out");
    snprintf(run.note, sizeof run.note,
             "consumer_timeout 5 s, 3 handlers of 8 s; %ld log lines on the "
             "broker's timeout%s",
             closed, ok ? "" : "; drain timed out");
    chaos_check(&run);
    assert_true(ok);
}

typedef struct {
    long base, want;
} disc_arg;

static int disconnects_at_least(void *arg) {
    disc_arg *a = arg;
    return chaos_log_count(&run, "\"event\":\"disconnected\"") - a->base >=
           a->want;
}

static void test_blackhole_noticed_within_two_heartbeats(void **s) {
    (void)s;
    if (system("iptables -L INPUT -n >/dev/null 2>&1") != 0) {
        printf("| blackhole | - | - | - | - | - | - | - | - | - | - | - | "
               "skipped | iptables not usable here |\n");
        skip();
    }
    const char *url = itest_url();
    const char *at = strrchr(url, '@');
    const char *colon = strchr(at ? at : url, ':');
    assert_non_null(colon);
    int port = atoi(colon + 1);
    enum { HB = 2 };
    chaos_opts o = {.name = "blackhole",
                    .exec_workers = 2,
                    .ledger_workers = 1,
                    .n = 300,
                    .rate = 60,
                    .heartbeat_s = HB};
    chaos_setup(&run, &o);
    chaos_start_pool(&run);
    chaos_start_producer(&run);
    chaos_wait_effects(&run, 60, 60);
    disc_arg d = {chaos_log_count(&run, "\"event\":\"disconnected\""), 3};
    int64_t t0 = chaos_now_ms();
    blackhole_port = port;
    blackhole(1);
    /* Every worker (3) must notice; the limit is 2 heartbeats + 5 s. */
    double limit = 2.0 * HB + 5;
    int noticed = itest_wait_until(disconnects_at_least, &d, limit);
    double took = (double)(chaos_now_ms() - t0) / 1000.0;
    if (!noticed) {
        /* Heal anyway so the rest of the run and the check still happen. */
        itest_wait_until(disconnects_at_least, &d, 30);
        took = (double)(chaos_now_ms() - t0) / 1000.0;
    }
    blackhole(0);
    blackhole_port = 0;
    reconnect_harness();
    snprintf(run.note, sizeof run.note,
             "heartbeat %d s; all 3 workers noticed in %.1f s (limit %.0f s)",
             HB, took, limit * itest_scale());
    finish();
    if (!noticed) {
        fail_msg("the dead connection was noticed after %.1f s, more than "
                 "2 x heartbeat + 5 s; see %s",
                 took, run.log);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_random_sigkills_lose_nothing, teardown),
        cmocka_unit_test_teardown(test_close_all_connections_loses_nothing,
                                  teardown),
        cmocka_unit_test_teardown(
            test_queue_deleted_under_consumer_is_redeclared, teardown),
        cmocka_unit_test_teardown(test_memory_alarm_blocks_then_drains,
                                  teardown),
        cmocka_unit_test_teardown(test_consumer_timeout_shorter_than_handler,
                                  teardown),
        cmocka_unit_test_teardown(test_blackhole_noticed_within_two_heartbeats,
                                  teardown),
        cmocka_unit_test_teardown(test_broker_restart_loses_nothing, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

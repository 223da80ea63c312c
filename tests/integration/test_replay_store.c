/*
 * test_replay_store.c - `warren dlq replay` run against a store other than
 * the worker's (issue 18, item 3): an operator box, a second store, or a
 * relative store.path resolved from another directory. The worker's store
 * still holds the id `dead`; the replayed copy must run anyway (it carries
 * a higher x-warren-replays than the dead record), exactly once, while an
 * id that is `done` stays a duplicate whatever x-warren-replays a message
 * claims. And a store file that does not exist is an error for `warren
 * dlq replay`, `warren status` and `warren store` (exit 2, the file named),
 * not a new empty store. The replay and the commands also work on a
 * PostgreSQL store (store.url), when WARREN_TEST_PG_URL names a server.
 */
#include "itest.h"

#include "../pg_fixture.h"

#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static struct {
    char *dir;
    char q[96], dlq[128];
    char cfg_a[512], cfg_b[512], cfg_c[512], db_a[512], db_b[512], db_c[512];
    char log[512], out[512], script[512], ran[512], fixed[512], tried[512];
    amqp_connection_state_t conn;
} g;

/* Records every attempt in $TRIED_FILE; fails unless $FIXED_FILE exists,
 * then records the id in $RAN_FILE and succeeds. */
static const char *handler = "#!/bin/sh\n"
                             "echo \"$WARREN_MESSAGE_ID\" >> \"$TRIED_FILE\"\n"
                             "if [ -e \"$FIXED_FILE\" ]; then\n"
                             "  echo \"$WARREN_MESSAGE_ID\" >> \"$RAN_FILE\"\n"
                             "  exit 0\n"
                             "fi\n"
                             "echo \"handler broken\" >&2\n"
                             "exit 65\n";

static int run_warren(const char *const args[]) {
    int status = 0;
    unlink(g.out);
    pid_t pid = itest_spawn_warren(args, g.out);
    if (!itest_wait_exit(pid, 60, &status)) {
        itest_terminate(pid, 5);
        fail_msg("warren did not finish within 60 s");
    }
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static int out_has(const char *text) {
    FILE *fp = fopen(g.out, "r");
    char buf[65536];
    size_t n;
    if (fp == NULL) {
        return 0;
    }
    n = fread(buf, 1, sizeof buf - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    if (strstr(buf, text) == NULL) {
        fprintf(stderr, "--- output, looking for '%s':\n%s\n", text, buf);
        return 0;
    }
    return 1;
}

static void write_cfg(const char *cfg, const char *db) {
    char text[2048];
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s\"}, \"consumers\": ["
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"max_attempts\": 1}}]}",
             db, g.q, g.script);
    itest_write_file(cfg, text);
}

static int group_setup(void **state) {
    (void)state;
    char sub[600];
    g.dir = itest_tmpdir();
    snprintf(g.q, sizeof g.q, "it.rstore.%d", (int)getpid());
    snprintf(g.dlq, sizeof g.dlq, "%s.dlq", g.q);
    snprintf(g.log, sizeof g.log, "%s/warren.log", g.dir);
    snprintf(g.out, sizeof g.out, "%s/out", g.dir);
    snprintf(g.script, sizeof g.script, "%s/handler.sh", g.dir);
    snprintf(g.ran, sizeof g.ran, "%s/ran", g.dir);
    snprintf(g.fixed, sizeof g.fixed, "%s/fixed", g.dir);
    snprintf(g.tried, sizeof g.tried, "%s/tried", g.dir);
    itest_write_file(g.script, handler);
    assert_int_equal(chmod(g.script, 0700), 0);
    const char *boxes[] = {"a", "b", "c"};
    char *cfgs[] = {g.cfg_a, g.cfg_b, g.cfg_c};
    char *dbs[] = {g.db_a, g.db_b, g.db_c};
    for (int i = 0; i < 3; i++) {
        snprintf(sub, sizeof sub, "%s/%s", g.dir, boxes[i]);
        assert_int_equal(mkdir(sub, 0700), 0);
        snprintf(cfgs[i], 512, "%s/warren.json", sub);
        snprintf(dbs[i], 512, "%s/warren.db", sub);
        write_cfg(cfgs[i], dbs[i]);
    }
    setenv("FIXED_FILE", g.fixed, 1);
    setenv("RAN_FILE", g.ran, 1);
    setenv("TRIED_FILE", g.tried, 1);
    g.conn = itest_connect();
    const char *decl[] = {"topology", "declare", "-c", g.cfg_a, NULL};
    assert_int_equal(run_warren(decl), 0);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    itest_queue_delete(g.conn, g.q);
    itest_queue_delete(g.conn, g.dlq);
    itest_disconnect(g.conn);
    itest_rmtree(g.dir);
    free(g.dir);
    return 0;
}

typedef struct {
    const char *queue;
    long want;
} depth_arg;

static int depth_is(void *arg) {
    depth_arg *a = arg;
    return itest_queue_depth(g.conn, a->queue) == a->want;
}

static int settled_at_least(void *arg) {
    return itest_settled_count(g.log) >= *(long *)arg;
}

static int file_exists(void *arg) {
    struct stat sb;
    return stat(arg, &sb) == 0;
}

static pid_t start_worker(void) {
    const char *args[] = {"run", "-c", g.cfg_a, "--log-level", "debug", NULL};
    return itest_spawn_warren(args, g.log);
}

static void stop_worker(pid_t pid) {
    int status = itest_terminate(pid, 30);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* The state of (q, id) in the store at `db`, "" if no record. */
static void record_state(const char *db, const char *id, char *out,
                         size_t len) {
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    out[0] = '\0';
    assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h,
                                        "SELECT state FROM messages WHERE "
                                        "queue = ?1 AND id = ?2",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, g.q, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(out, len, "%s", (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
}

static void copy_store(const char *from, const char *to) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd,
             "cp '%s' '%s' && { [ ! -e '%s-wal' ] || cp '%s-wal' '%s-wal'; }",
             from, to, from, from, to);
    assert_int_equal(system(cmd), 0);
}

static void test_replay_from_another_store_runs_the_message_once(void **state) {
    (void)state;
    char st[32];
    unlink(g.fixed);
    unlink(g.ran);
    unlink(g.log);
    itest_publish(g.conn, "", g.q, "r-1", "{\"n\":1}", 7);
    pid_t w = start_worker();
    depth_arg a = {g.dlq, 1};
    int dead = itest_wait_until(depth_is, &a, 30);
    stop_worker(w);
    assert_true(dead);
    record_state(g.db_a, "r-1", st, sizeof st);
    assert_string_equal(st, "dead");
    /* The operator's box has a store of its own (here: a copy), so replay
     * releases the dead record there, not in the worker's store. */
    copy_store(g.db_a, g.db_b);

    itest_write_file(g.fixed, "");
    const char *replay[] = {"dlq", "replay", "-c",    g.cfg_b, "--queue",
                            g.q,   "--all",  "--yes", NULL};
    assert_int_equal(run_warren(replay), 0);
    assert_true(out_has("replayed 1, skipped 0, failed 0"));
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 0);
    record_state(g.db_a, "r-1", st, sizeof st);
    assert_string_equal(st, "dead"); /* the worker's store did not change */
    record_state(g.db_b, "r-1", st, sizeof st);
    assert_string_equal(st, "dead"); /* nor the one replay opened */

    unlink(g.log);
    w = start_worker();
    long one = 1;
    int settled = itest_wait_until(settled_at_least, &one, 30);
    if (!settled || itest_count_lines(g.ran) != 1) {
        stop_worker(w);
        fail_msg("replayed copy: handler ran %ld time(s), settled %d; the "
                 "worker's dead record swallowed it (lost)",
                 itest_count_lines(g.ran), settled);
    }

    /* Done stays a duplicate, also for a message that claims a higher
     * replay generation (a forged or stale x-warren-replays). */
    amqp_table_entry_t e[1];
    e[0].key = amqp_cstring_bytes("x-warren-replays");
    e[0].value.kind = AMQP_FIELD_KIND_I64;
    e[0].value.value.i64 = 99;
    amqp_table_t t = {1, e};
    itest_publish_headers(g.conn, "", g.q, "r-1", "{\"n\":1}", 7, &t);
    long two = 2;
    int dup = itest_wait_until(settled_at_least, &two, 30);
    stop_worker(w);
    assert_true(dup);
    assert_int_equal(itest_count_lines(g.ran), 1); /* once, not twice */
    assert_int_equal(itest_queue_depth(g.conn, g.q), 0);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 0);
    record_state(g.db_a, "r-1", st, sizeof st);
    assert_string_equal(st, "done");
}

/* A stale copy of the same replay generation is still swallowed by the dead
 * record: only a later replay re-runs a dead id. */
static void test_same_generation_copy_of_dead_id_is_not_run(void **state) {
    (void)state;
    char st[32];
    unlink(g.fixed);
    unlink(g.ran);
    unlink(g.log);
    itest_publish(g.conn, "", g.q, "r-2", "{\"n\":2}", 7);
    pid_t w = start_worker();
    depth_arg a = {g.dlq, 1};
    int dead = itest_wait_until(depth_is, &a, 30);
    assert_true(dead);
    itest_write_file(g.fixed, "");
    /* Same id, same generation (no x-warren-replays): a duplicate of what
     * died, not a replay. */
    itest_publish(g.conn, "", g.q, "r-2", "{\"n\":2}", 7);
    long one = 1; /* a dead outcome is not counted: only the duplicate */
    int settled = itest_wait_until(settled_at_least, &one, 30);
    stop_worker(w);
    assert_true(settled);
    assert_int_equal(itest_count_lines(g.ran), -1);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 1);
    record_state(g.db_a, "r-2", st, sizeof st);
    assert_string_equal(st, "dead");
    itest_queue_purge(g.conn, g.dlq);
}

typedef struct {
    long dlq, settled;
} dlq_and_settled;

static int dlq_and_settled_are(void *arg) {
    dlq_and_settled *a = arg;
    return itest_queue_depth(g.conn, g.dlq) == a->dlq &&
           itest_queue_depth(g.conn, g.q) == 0 &&
           itest_settled_count(g.log) >= a->settled;
}

/* An interrupted replay can leave a DLQ copy behind whose replayed copy
 * already ran (and died again): the DLQ then holds two letters of the id,
 * generations 0 and 1. Replaying both runs the id once (the newer one),
 * from the same store as the worker's: the stale one is acked as dead. */
static void test_stale_leftover_letter_does_not_rerun_the_id(void **state) {
    (void)state;
    char st[32];
    unlink(g.fixed);
    unlink(g.tried);
    unlink(g.log);
    itest_queue_purge(g.conn, g.dlq);
    amqp_table_entry_t e[1];
    e[0].key = amqp_cstring_bytes("x-warren-replays");
    e[0].value.kind = AMQP_FIELD_KIND_I64;
    e[0].value.value.i64 = 1;
    amqp_table_t gen1 = {1, e};
    /* The leftover: generation 0, as the first death left it. */
    itest_publish(g.conn, "", g.dlq, "r-3", "{\"n\":3}", 7);
    /* The replayed copy (generation 1) died again: recorded dead at 1. */
    itest_publish_headers(g.conn, "", g.q, "r-3", "{\"n\":3}", 7, &gen1);
    pid_t w = start_worker();
    depth_arg a = {g.dlq, 2};
    int dead = itest_wait_until(depth_is, &a, 30);
    stop_worker(w);
    assert_true(dead);
    assert_int_equal(itest_count_lines(g.tried), 1);

    const char *replay[] = {"dlq", "replay", "-c",    g.cfg_a, "--queue",
                            g.q,   "--all",  "--yes", NULL};
    assert_int_equal(run_warren(replay), 0);
    assert_true(out_has("replayed 2, skipped 0, failed 0"));
    unlink(g.log);
    w = start_worker();
    /* The generation-1 copy of the leftover is acked as dead (settled),
     * the generation-2 copy runs once and dies: one letter, one attempt. */
    dlq_and_settled want = {1, 1};
    int done = itest_wait_until(dlq_and_settled_are, &want, 30);
    stop_worker(w);
    assert_true(done);
    assert_int_equal(itest_count_lines(g.tried), 2);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 1);
    record_state(g.db_a, "r-3", st, sizeof st);
    assert_string_equal(st, "dead");
    itest_msg m;
    assert_int_equal(itest_get(g.conn, g.dlq, &m, 0), 1);
    const amqp_field_value_t *v = itest_msg_header(&m, "x-warren-replays");
    assert_non_null(v);
    assert_int_equal(v->kind, AMQP_FIELD_KIND_I64);
    assert_int_equal(v->value.i64, 2);
    itest_msg_free(&m);
}

static void test_missing_store_is_an_error_not_a_new_file(void **state) {
    (void)state;
    struct stat sb;
    unlink(g.db_c);
    itest_queue_purge(g.conn, g.dlq);
    itest_publish(g.conn, "", g.dlq, "m-1", "{}", 2);

    const char *replay[] = {"dlq", "replay", "-c",    g.cfg_c, "--queue",
                            g.q,   "--all",  "--yes", NULL};
    assert_int_equal(run_warren(replay), 2);
    assert_true(out_has(g.db_c));
    assert_true(out_has("does not exist"));
    assert_true(out_has("warren run"));
    assert_int_equal(stat(g.db_c, &sb), -1);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 1); /* untouched */

    const char *status[] = {"status", "-c", g.cfg_c, NULL};
    assert_int_equal(run_warren(status), 2);
    assert_true(out_has(g.db_c));
    assert_true(out_has("does not exist"));
    assert_int_equal(stat(g.db_c, &sb), -1);

    const char *stats[] = {"store", "stats", "-c", g.cfg_c, NULL};
    assert_int_equal(run_warren(stats), 2);
    assert_true(out_has(g.db_c));
    assert_true(out_has("does not exist"));
    assert_int_equal(stat(g.db_c, &sb), -1);

    const char *forget[] = {"store", "forget", "-c",  g.cfg_c, "--queue",
                            g.q,     "--id",   "m-1", NULL};
    assert_int_equal(run_warren(forget), 2);
    assert_int_equal(stat(g.db_c, &sb), -1);

    /* The worker still creates it. */
    unlink(g.log);
    const char *run[] = {"run", "-c", g.cfg_c, NULL};
    pid_t w = itest_spawn_warren(run, g.log);
    int made = itest_wait_until(file_exists, g.db_c, 10);
    stop_worker(w);
    assert_true(made);
    assert_int_equal(run_warren(stats), 0);
    itest_queue_purge(g.conn, g.dlq);
}

/* The state of (q, id) in the PostgreSQL store at `url`, "" if none. */
static void pg_record_state(const char *url, const char *id, char *out,
                            size_t len) {
    out[0] = '\0';
    PGconn *c = PQconnectdb(url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    const char *v[] = {g.q, id};
    PGresult *r = PQexecParams(c,
                               "SELECT state FROM warren_messages "
                               "WHERE queue = $1 AND id = $2",
                               2, NULL, v, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    if (PQntuples(r) == 1) {
        snprintf(out, len, "%s", PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    PQfinish(c);
}

/* On PostgreSQL: a message dies, `warren dlq replay` (looking at the same
 * database for ids being processed) republishes it, and the replayed copy
 * runs exactly once; `warren status` and `warren store stats` read the
 * database's records. */
static void test_replay_on_postgresql_runs_the_message_once(void **state) {
    (void)state;
    char url[1200], cfg[600], text[2400], st[32];
    if (pg_fresh_schema("wt_replay", url, sizeof url) != 0) {
        skip();
    }
    snprintf(cfg, sizeof cfg, "%s/pg.json", g.dir);
    snprintf(text, sizeof text,
             "{\"store\": {\"url\": \"%s\"}, \"consumers\": ["
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", \"retry\": "
             "{\"max_attempts\": 1}}]}",
             url, g.q, g.script);
    itest_write_file(cfg, text);
    unlink(g.fixed);
    unlink(g.ran);
    unlink(g.log);
    itest_queue_purge(g.conn, g.dlq);
    itest_publish(g.conn, "", g.q, "r-pg", "{\"n\":9}", 7);
    const char *run[] = {"run", "-c", cfg, "--log-level", "debug", NULL};
    pid_t w = itest_spawn_warren(run, g.log);
    depth_arg a = {g.dlq, 1};
    int dead = itest_wait_until(depth_is, &a, 30);
    stop_worker(w);
    assert_true(dead);
    pg_record_state(url, "r-pg", st, sizeof st);
    assert_string_equal(st, "dead");

    const char *stats[] = {"store", "stats", "-c", cfg, NULL};
    assert_int_equal(run_warren(stats), 0);
    assert_true(out_has("(postgresql)"));
    assert_true(out_has("dead"));
    const char *status[] = {"status", "-c", cfg, NULL};
    assert_int_equal(run_warren(status), 0);
    assert_true(out_has("dead 1"));

    itest_write_file(g.fixed, "");
    const char *replay[] = {"dlq", "replay", "-c",    cfg, "--queue",
                            g.q,   "--all",  "--yes", NULL};
    assert_int_equal(run_warren(replay), 0);
    assert_true(out_has("replayed 1, skipped 0, failed 0"));
    unlink(g.log);
    w = itest_spawn_warren(run, g.log);
    long one = 1;
    int settled = itest_wait_until(settled_at_least, &one, 30);
    stop_worker(w);
    assert_true(settled);
    assert_int_equal(itest_count_lines(g.ran), 1);
    assert_int_equal(itest_queue_depth(g.conn, g.q), 0);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 0);
    pg_record_state(url, "r-pg", st, sizeof st);
    assert_string_equal(st, "done");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay_from_another_store_runs_the_message_once),
        cmocka_unit_test(test_same_generation_copy_of_dead_id_is_not_run),
        cmocka_unit_test(test_stale_leftover_letter_does_not_rerun_the_id),
        cmocka_unit_test(test_missing_store_is_an_error_not_a_new_file),
        cmocka_unit_test(test_replay_on_postgresql_runs_the_message_once),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

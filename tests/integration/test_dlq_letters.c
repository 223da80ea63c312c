/*
 * test_dlq_letters.c - `warren dlq` on dead letters the common path does not
 * make (issue 18, items 2 and 8): a letter whose body is larger than the
 * consumer's max_message_bytes (the worker dead-letters it "too large" with
 * its whole body), and a letter the broker dead-lettered itself (a quorum
 * queue's delivery-limit) with no x-warren-* headers, only x-death. Each test
 * checks both counts: the letter is neither lost nor doubled, and its body
 * and reason are shown whole.
 */
#include "itest.h"

#include "dlq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Well above the consumer's max_message_bytes (1024) below, not UTF-8. */
#define BIG 3000

static struct {
    char *dir;
    char q[96], dlq[128], side[128];
    char cfg[512], log[512], out[512], script[512], ran[512];
    amqp_connection_state_t conn;
} g;

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

/* The whole output of the last command, malloc'd. */
static char *read_out(void) {
    FILE *fp = fopen(g.out, "r");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    rewind(fp);
    char *buf = malloc((size_t)size + 1);
    assert_non_null(buf);
    size = (long)fread(buf, 1, (size_t)size, fp);
    buf[size] = '\0';
    fclose(fp);
    return buf;
}

static int out_has_quiet(const char *text) {
    char *buf = read_out();
    int found = strstr(buf, text) != NULL;
    free(buf);
    return found;
}

static int out_has(const char *text) {
    char *buf = read_out();
    int found = strstr(buf, text) != NULL;
    if (!found) {
        fprintf(stderr, "--- output, looking for '%s':\n%s\n", text, buf);
    }
    free(buf);
    return found;
}

typedef struct {
    const char *queue;
    long want;
} depth_arg;

static int depth_is(void *arg) {
    depth_arg *a = arg;
    return itest_queue_depth(g.conn, a->queue) == a->want;
}

static void big_body(uint8_t *b) {
    for (int i = 0; i < BIG; i++) {
        b[i] = (uint8_t)(i * 7 + 0x80); /* high bytes: base64 in JSON */
    }
}

static int group_setup(void **state) {
    (void)state;
    char text[2048];
    g.dir = itest_tmpdir();
    snprintf(g.q, sizeof g.q, "it.dlqlet.%d", (int)getpid());
    snprintf(g.dlq, sizeof g.dlq, "%s.dlq", g.q);
    snprintf(g.side, sizeof g.side, "it.dlqlet.side.%d", (int)getpid());
    snprintf(g.cfg, sizeof g.cfg, "%s/warren.json", g.dir);
    snprintf(g.log, sizeof g.log, "%s/warren.log", g.dir);
    snprintf(g.out, sizeof g.out, "%s/out", g.dir);
    snprintf(g.script, sizeof g.script, "%s/handler.sh", g.dir);
    snprintf(g.ran, sizeof g.ran, "%s/ran", g.dir);
    snprintf(text, sizeof text,
             "#!/bin/sh\necho \"$WARREN_MESSAGE_ID\" >> %s\nexit 0\n", g.ran);
    itest_write_file(g.script, text);
    assert_int_equal(chmod(g.script, 0700), 0);
    snprintf(text, sizeof text,
             "{\"store\": {\"path\": \"%s/warren.db\"}, \"consumers\": ["
             "{\"queue\": \"%s\", \"handler\": \"exec:%s\", "
             "\"max_message_bytes\": 1024}]}",
             g.dir, g.q, g.script);
    itest_write_file(g.cfg, text);
    g.conn = itest_connect();
    const char *decl[] = {"topology", "declare", "-c", g.cfg, NULL};
    assert_int_equal(run_warren(decl), 0);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    itest_queue_delete(g.conn, g.q);
    itest_queue_delete(g.conn, g.dlq);
    itest_queue_delete(g.conn, g.side);
    itest_disconnect(g.conn);
    itest_rmtree(g.dir);
    free(g.dir);
    return 0;
}

/* The first JSON line of the last output, parsed back into a message. */
static void first_json_body(uint8_t **body, size_t *len) {
    char *buf = read_out(), *line = strchr(buf, '{'), err[256];
    assert_non_null(line);
    char *end = strchr(line, '\n');
    size_t n = end ? (size_t)(end - line) : strlen(line);
    warren__arena pool;
    warren__props p;
    warren__arena_init(&pool, 4096);
    int rc =
        warren__dlq_from_json(line, n, &pool, &p, body, len, err, sizeof err);
    if (rc != 0) {
        fail_msg("list --json line does not parse: %s: %.*s", err, 300,
                 line + (n > 300 ? n - 300 : 0));
    }
    warren__arena_empty(&pool);
    free(buf);
}

static void test_too_large_letter_is_shown_and_exported_whole(void **state) {
    (void)state;
    uint8_t body[BIG];
    big_body(body);
    itest_queue_purge(g.conn, g.dlq);
    itest_publish(g.conn, "", g.q, "big-1", body, sizeof body);
    const char *run[] = {"run", "-c", g.cfg, NULL};
    pid_t w = itest_spawn_warren(run, g.log);
    depth_arg a = {g.dlq, 1};
    int dead = itest_wait_until(depth_is, &a, 30);
    int status = itest_terminate(w, 30);
    assert_true(dead);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(itest_count_lines(g.ran), -1); /* never ran */

    /* list --json carries the whole body. */
    const char *list[] = {"dlq",     "list", "-c",     g.cfg,
                          "--queue", g.q,    "--json", NULL};
    assert_int_equal(run_warren(list), 0);
    assert_true(out_has("\"body_bytes\":3000"));
    uint8_t *got = NULL;
    size_t got_len = 0;
    first_json_body(&got, &got_len);
    assert_int_equal(got_len, BIG);
    assert_memory_equal(got, body, BIG);
    free(got);

    /* show prints its length and its first bytes. */
    const char *show[] = {"dlq",     "show", "-c",    g.cfg,
                          "--queue", g.q,    "big-1", NULL};
    assert_int_equal(run_warren(show), 0);
    assert_true(out_has("body (3000 bytes, first 256 shown)"));
    assert_true(out_has("  0000  80 87 8e 95"));

    /* Bounded lower than the body: shown by its size, refused by export
     * (exit 10) and left in the DLQ, never written empty and removed. */
    char small[600];
    snprintf(small, sizeof small, "%s/small.jsonl", g.dir);
    const char *ex_small[] = {"dlq",      "export",     "-c",    g.cfg,
                              "--queue",  g.q,          "--out", small,
                              "--remove", "--max-body", "1000",  NULL};
    assert_int_equal(run_warren(ex_small), 10);
    assert_true(out_has("big-1 (position 1): its 3000-byte body is larger "
                        "than --max-body 1000: not exported, left in the DLQ"));
    assert_true(out_has("exported 0"));
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 1);
    assert_int_equal(itest_count_lines(small), 0);
    const char *list_small[] = {"dlq",     "list", "-c",     g.cfg,
                                "--queue", g.q,    "--json", "--max-body",
                                "1000",    NULL};
    assert_int_equal(run_warren(list_small), 0);
    assert_true(out_has("\"body\":null"));
    assert_true(out_has("\"body_bytes\":3000,\"body_unread\":true"));
    const char *show_small[] = {"dlq", "show",  "-c",         g.cfg,  "--queue",
                                g.q,   "big-1", "--max-body", "1000", NULL};
    assert_int_equal(run_warren(show_small), 0);
    assert_true(out_has("body (3000 bytes): not read, larger than --max-body "
                        "1000"));

    /* export --remove: the file has the whole body, then the DLQ is empty;
     * importing it back gives the same bytes (nothing lost, one copy). */
    char file[600];
    snprintf(file, sizeof file, "%s/big.jsonl", g.dir);
    const char *ex[] = {"dlq", "export", "-c", g.cfg,      "--queue",
                        g.q,   "--out",  file, "--remove", NULL};
    assert_int_equal(run_warren(ex), 0);
    assert_true(out_has("exported 1"));
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 0);
    assert_int_equal(itest_count_lines(file), 1);
    const char *im[] = {"dlq", "import", "-c", g.cfg, "--queue",
                        g.q,   "--in",   file, NULL};
    assert_int_equal(run_warren(im), 0);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 1);
    itest_msg back;
    assert_int_equal(itest_get(g.conn, g.dlq, &back, 0), 1);
    assert_string_equal(back.message_id, "big-1");
    assert_int_equal(back.len, BIG);
    assert_memory_equal(back.body, body, BIG);
    itest_msg_free(&back);
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 0);
}

/* A quorum queue with delivery-limit 1 whose dead letters go to the
 * consumer's DLQ: returning a message twice makes the broker dead-letter
 * it itself (reason delivery_limit), with no x-warren-* header. */
static void test_broker_dead_letter_shows_reason_from_x_death(void **state) {
    (void)state;
    amqp_table_entry_t e[4];
    e[0].key = amqp_cstring_bytes("x-queue-type");
    e[0].value.kind = AMQP_FIELD_KIND_UTF8;
    e[0].value.value.bytes = amqp_cstring_bytes("quorum");
    e[1].key = amqp_cstring_bytes("x-delivery-limit");
    e[1].value.kind = AMQP_FIELD_KIND_I64;
    e[1].value.value.i64 = 1;
    e[2].key = amqp_cstring_bytes("x-dead-letter-exchange");
    e[2].value.kind = AMQP_FIELD_KIND_UTF8;
    e[2].value.value.bytes = amqp_cstring_bytes("");
    e[3].key = amqp_cstring_bytes("x-dead-letter-routing-key");
    e[3].value.kind = AMQP_FIELD_KIND_UTF8;
    e[3].value.value.bytes = amqp_cstring_bytes(g.dlq);
    amqp_table_t args = {4, e};
    itest_queue_purge(g.conn, g.dlq);
    itest_queue_declare_args(g.conn, g.side, &args);
    itest_publish(g.conn, "", g.side, "bdl-1", "{\"n\":1}", 7);
    for (int i = 0; i < 10; i++) {
        itest_msg m;
        int got = itest_get(g.conn, g.side, &m, ITEST_GET_REQUEUE);
        itest_msg_free(&m);
        if (!got) {
            break;
        }
    }
    depth_arg a = {g.dlq, 1};
    assert_true(itest_wait_until(depth_is, &a, 10));
    assert_int_equal(itest_queue_depth(g.conn, g.side), 0);

    char want[300];
    snprintf(want, sizeof want,
             "broker: delivery_limit in queue %s (dead-lettered 1 time)",
             g.side);
    const char *list[] = {"dlq", "list", "-c", g.cfg, "--queue", g.q, NULL};
    assert_int_equal(run_warren(list), 0);
    assert_true(out_has("bdl-1"));
    assert_true(out_has("broker: delivery_limit"));

    const char *json[] = {"dlq",     "list", "-c",     g.cfg,
                          "--queue", g.q,    "--json", NULL};
    assert_int_equal(run_warren(json), 0);
    assert_true(out_has(want));
    assert_false(out_has_quiet("\"dead_at_ms\":0,"));

    const char *since[] = {"dlq", "list",    "-c", g.cfg,    "--queue",
                           g.q,   "--since", "1h", "--json", NULL};
    assert_int_equal(run_warren(since), 0);
    assert_true(out_has("1 dead letter(s) shown, 1 matched"));

    const char *show[] = {"dlq",     "show", "-c",    g.cfg,
                          "--queue", g.q,    "bdl-1", NULL};
    assert_int_equal(run_warren(show), 0);
    assert_true(out_has(want));

    char file[600];
    snprintf(file, sizeof file, "%s/bdl.jsonl", g.dir);
    const char *ex[] = {"dlq", "export", "-c", g.cfg, "--queue",
                        g.q,   "--out",  file, NULL};
    assert_int_equal(run_warren(ex), 0);
    assert_true(out_has("exported 1"));
    FILE *fp = fopen(file, "r");
    char line[8192];
    assert_non_null(fp);
    assert_non_null(fgets(line, sizeof line, fp));
    fclose(fp);
    assert_non_null(strstr(line, want));
    /* Still there, once. */
    assert_int_equal(itest_queue_depth(g.conn, g.dlq), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_too_large_letter_is_shown_and_exported_whole),
        cmocka_unit_test(test_broker_dead_letter_shows_reason_from_x_death),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

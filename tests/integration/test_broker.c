/*
 * Smoke test of the integration-test support library against the private
 * broker: if these fail, every other integration test's verdict is suspect.
 * It checks confirmed publishing, queue depth, basic.get with properties and
 * headers, purge and delete, the process helpers, and (when the broker is
 * ours) that a restart keeps the URL and durable, persistent messages.
 */
#include "itest.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char queue[128];

static int setup(void **state) {
    (void)state;
    snprintf(queue, sizeof queue, "itest-broker-%d", (int)getpid());
    return 0;
}

static void
test_publish_100_confirmed_then_depth_get_purge_delete(void **state) {
    amqp_connection_state_t conn = itest_connect();
    itest_msg msg;
    (void)state;

    itest_queue_declare(conn, queue);
    itest_queue_purge(conn, queue);
    itest_publish_n(conn, "", queue, "smoke", 100, NULL, 0);
    /* Confirmed persistent messages are all counted at once. */
    assert_int_equal(itest_queue_depth(conn, queue), 100);

    assert_int_equal(itest_get(conn, queue, &msg, 0), 1);
    assert_string_equal(msg.message_id, "smoke-0");
    assert_string_equal(msg.body, "{\"id\":\"smoke-0\",\"n\":0}");
    assert_int_equal(msg.len, strlen(msg.body));
    assert_string_equal(msg.content_type, "application/json");
    assert_string_equal(msg.routing_key, queue);
    assert_true(msg.persistent);
    assert_false(msg.redelivered);
    assert_int_equal(msg.message_count, 99);
    itest_msg_free(&msg);
    assert_int_equal(itest_queue_depth(conn, queue), 99);

    itest_queue_purge(conn, queue);
    assert_int_equal(itest_queue_depth(conn, queue), 0);
    assert_int_equal(itest_get(conn, queue, &msg, 0), 0);
    itest_msg_free(&msg);
    itest_queue_delete(conn, queue);
    assert_int_equal(itest_queue_depth(conn, queue), -1);
    itest_disconnect(conn);
}

static void
test_missing_queue_depth_is_minus_one_and_connection_survives(void **state) {
    amqp_connection_state_t conn = itest_connect();
    (void)state;

    assert_int_equal(itest_queue_depth(conn, "itest-no-such-queue"), -1);
    assert_int_equal(itest_queue_depth(conn, "itest-no-such-queue"), -1);
    /* Both channels still work after the 404 closed channel 2. */
    itest_queue_declare(conn, queue);
    itest_publish(conn, "", queue, "after-404", "x", 1);
    assert_int_equal(itest_queue_depth(conn, queue), 1);
    itest_queue_delete(conn, queue);
    itest_disconnect(conn);
}

static int depth_is_one(void *conn) {
    return itest_queue_depth(conn, queue) == 1;
}

static void
test_headers_and_body_round_trip_and_requeue_keeps_message(void **state) {
    amqp_connection_state_t conn = itest_connect();
    amqp_table_entry_t entries[2];
    amqp_table_t headers = {2, entries};
    const amqp_field_value_t *v;
    itest_msg msg;
    (void)state;

    entries[0].key = amqp_cstring_bytes("x-tenant");
    entries[0].value.kind = AMQP_FIELD_KIND_UTF8;
    entries[0].value.value.bytes = amqp_cstring_bytes("acme");
    entries[1].key = amqp_cstring_bytes("x-count");
    entries[1].value.kind = AMQP_FIELD_KIND_I64;
    entries[1].value.value.i64 = 42;

    itest_queue_declare(conn, queue);
    itest_queue_purge(conn, queue);
    /* Binary bodies with NULs survive unchanged. */
    itest_publish_headers(conn, "", queue, "h-1", "a\0b", 3, &headers);

    assert_int_equal(itest_get(conn, queue, &msg, ITEST_GET_REQUEUE), 1);
    assert_int_equal(msg.len, 3);
    assert_memory_equal(msg.body, "a\0b", 3);
    v = itest_msg_header(&msg, "x-tenant");
    assert_non_null(v);
    assert_int_equal(v->kind, AMQP_FIELD_KIND_UTF8);
    assert_int_equal(v->value.bytes.len, 4);
    assert_memory_equal(v->value.bytes.bytes, "acme", 4);
    v = itest_msg_header(&msg, "x-count");
    assert_non_null(v);
    assert_int_equal(v->value.i64, 42);
    assert_null(itest_msg_header(&msg, "x-absent"));
    itest_msg_free(&msg);

    /* Requeued, so it is still there, now marked redelivered. The broker
     * applies the reject asynchronously, so the depth is awaited. */
    assert_true(itest_wait_until(depth_is_one, conn, 5));
    assert_int_equal(itest_get(conn, queue, &msg, 0), 1);
    assert_string_equal(msg.message_id, "h-1");
    assert_true(msg.redelivered);
    itest_msg_free(&msg);
    itest_queue_delete(conn, queue);
    itest_disconnect(conn);
}

static int lines_at_least_one(void *arg) {
    return itest_count_lines(arg) >= 1;
}

static int never(void *arg) {
    (void)arg;
    return 0;
}

static void test_spawned_child_gets_url_in_env_and_output_in_log(void **state) {
    char *dir = itest_tmpdir();
    char log[512];
    char script[600];
    const char *argv[] = {"/bin/sh", script, NULL};
    int status = -1;
    pid_t pid;
    FILE *f;
    char line[1024] = "";
    (void)state;

    snprintf(log, sizeof log, "%s/child.log", dir);
    snprintf(script, sizeof script, "%s/child.sh", dir);
    itest_write_file(script, "printf '%s\\n' \"$WARREN_URL\"\n"
                             "echo to-stderr >&2\nexit 3\n");
    assert_int_equal(itest_count_lines(log), -1);

    pid = itest_spawn("/bin/sh", argv, log);
    assert_true(itest_wait_exit(pid, 10, &status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 3);
    assert_true(itest_wait_until(lines_at_least_one, log, 1));
    assert_int_equal(itest_count_lines(log), 2);
    f = fopen(log, "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    line[strcspn(line, "\n")] = '\0';
    assert_string_equal(line, itest_url());

    itest_rmtree(dir);
    assert_int_equal(itest_count_lines(log), -1);
    free(dir);
}

static void test_terminate_sends_sigterm_and_reaps_the_child(void **state) {
    const char *argv[] = {"/bin/sleep", "60", NULL};
    pid_t pid = itest_spawn("/bin/sleep", argv, "/dev/null");
    int status;
    (void)state;

    assert_false(itest_wait_exit(pid, 0.05, NULL));
    status = itest_terminate(pid, 10);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGTERM);
}

static void test_wait_until_gives_up_after_its_deadline(void **state) {
    (void)state;
    assert_false(itest_wait_until(never, NULL, 0.1));
}

static void test_restart_keeps_url_queue_and_persistent_messages(void **state) {
    amqp_connection_state_t conn = itest_connect();
    (void)state;

    itest_queue_declare(conn, queue);
    itest_queue_purge(conn, queue);
    itest_publish_n(conn, "", queue, "durable", 10, NULL, 0);
    itest_disconnect(conn);

    assert_int_equal(itest_broker("restart"), 0);
    assert_int_equal(itest_broker("status"), 0);

    /* Same URL (WARREN_TEST_URL is unchanged), same queue, same messages. */
    conn = itest_connect();
    assert_int_equal(itest_queue_depth(conn, queue), 10);
    itest_queue_delete(conn, queue);
    itest_disconnect(conn);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_publish_100_confirmed_then_depth_get_purge_delete),
        cmocka_unit_test(
            test_missing_queue_depth_is_minus_one_and_connection_survives),
        cmocka_unit_test(
            test_headers_and_body_round_trip_and_requeue_keeps_message),
        cmocka_unit_test(test_spawned_child_gets_url_in_env_and_output_in_log),
        cmocka_unit_test(test_terminate_sends_sigterm_and_reaps_the_child),
        cmocka_unit_test(test_wait_until_gives_up_after_its_deadline),
        cmocka_unit_test(test_restart_keeps_url_queue_and_persistent_messages),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}

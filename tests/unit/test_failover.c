/*
 * test_failover.c - the order broker.urls are tried in (failover.h): the
 * next index wraps, a start index folds onto the list, only "unreachable"
 * failures move on to another node, and a one-shot connect over a list of
 * nodes that all refuse reports every node's reason without a password.
 * Nothing here needs a broker: the ports are loopback ports nobody
 * listens on.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "failover.h"
#include "warren.h"

static warren_config *parse(const char *json) {
    warren_config *cfg = NULL;
    char err[512];
    unsetenv("WARREN_URL");
    assert_int_equal(warren_config_parse(json, "t.json", &cfg, err, sizeof err),
                     0);
    return cfg;
}

static void test_next_index_wraps_round_the_list(void **state) {
    (void)state;
    warren_config *cfg = parse(
        "{\"broker\":{\"urls\":[\"amqp://a\",\"amqp://b\",\"amqp://c\"]},"
        "\"consumers\":[{\"queue\":\"q\",\"handler\":\"builtin:noop\"}]}");
    assert_int_equal(warren__url_next(cfg, 0), 1);
    assert_int_equal(warren__url_next(cfg, 1), 2);
    assert_int_equal(warren__url_next(cfg, 2), 0);
    assert_int_equal(warren__url_at(cfg, 0), 0);
    assert_int_equal(warren__url_at(cfg, 7), 1);
    assert_int_equal(warren__url_at(cfg, 4294967295u), 4294967295u % 3);
    /* Consecutive start indexes (warren run's) give one worker a node. */
    int seen[3] = {0, 0, 0};
    unsigned base = warren__url_random_start();
    for (unsigned k = 0; k < 3; k++) {
        seen[warren__url_at(cfg, base + k)]++;
    }
    assert_int_equal(seen[0] * seen[1] * seen[2], 1);
    warren_config_free(cfg);
}

static void test_single_url_stays_on_it(void **state) {
    (void)state;
    warren_config *cfg = parse(
        "{\"consumers\":[{\"queue\":\"q\",\"handler\":\"builtin:noop\"}]}");
    assert_int_equal(cfg->broker.n_urls, 1);
    assert_int_equal(warren__url_next(cfg, 0), 0);
    assert_int_equal(warren__url_at(cfg, 12345), 0);
    warren_config_free(cfg);
}

static void test_only_unreachable_moves_to_another_node(void **state) {
    (void)state;
    assert_true(warren__url_try_next(WARREN_ERR_CONNECT));
    assert_true(warren__url_try_next(WARREN_ERR_TIMEOUT));
    /* Every node of one cluster shares users, vhosts and TLS setup. */
    assert_false(warren__url_try_next(WARREN_ERR_AUTH));
    assert_false(warren__url_try_next(WARREN_ERR_VHOST));
    assert_false(warren__url_try_next(WARREN_ERR_TLS));
    assert_false(warren__url_try_next(WARREN_ERR_CONFIG));
}

/* A loopback port nothing listens on: bound, then closed. */
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

static void test_connect_any_tries_every_node_and_names_each(void **state) {
    (void)state;
    char json[512], err[2048];
    int p1 = free_port(), p2 = free_port();
    snprintf(json, sizeof json,
             "{\"broker\":{\"urls\":[\"amqp://u:secret1@127.0.0.1:%d/%%2f\","
             "\"amqp://u:secret2@127.0.0.1:%d/%%2f\"],"
             "\"connect_timeout_s\":2},"
             "\"consumers\":[{\"queue\":\"q\",\"handler\":\"builtin:noop\"}]}",
             p1, p2);
    warren_config *cfg = parse(json);
    warren__session *s = (warren__session *)&s; /* must be reset */
    int used = -7;
    int rc = warren__session_connect_any(cfg, 1, &s, &used, err, sizeof err);
    assert_int_equal(rc, WARREN_ERR_CONNECT);
    assert_null(s);
    assert_int_equal(used, -7);
    char a[64], b[64];
    snprintf(a, sizeof a, "127.0.0.1:%d", p1);
    snprintf(b, sizeof b, "127.0.0.1:%d", p2);
    /* Both nodes, the start one (index 1) first, no password. */
    assert_non_null(strstr(err, a));
    assert_non_null(strstr(err, b));
    assert_true(strstr(err, b) < strstr(err, a));
    assert_non_null(strstr(err, "; "));
    assert_null(strstr(err, "secret"));
    warren_config_free(cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_index_wraps_round_the_list),
        cmocka_unit_test(test_single_url_stays_on_it),
        cmocka_unit_test(test_only_unreachable_moves_to_another_node),
        cmocka_unit_test(test_connect_any_tries_every_node_and_names_each),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_config.c - unit tests of the config loader (consumer/config.c).
 *
 * Claims tested: the shipped example and the issue's example parse with
 * every default as documented in docs/config.md; every error class
 * (unreadable, invalid JSON, unknown key, wrong type, missing, out of range,
 * duplicate queue, nack + non-fixed backoff, bad URL) is refused with one
 * line naming file, field and expectation, never showing a password;
 * WARREN_URL overrides the file; and mutated inputs never crash the parser.
 */
#include "config.h"

#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static char tmpdir[PATH_MAX];

static const char ISSUE_EXAMPLE[] =
    "{ \"broker\": { \"url\": \"amqp://guest:guest@127.0.0.1:5672/%2f\", "
    "\"heartbeat_s\": 30 },\n"
    "  \"store\":  { \"path\": \"warren.db\" },\n"
    "  \"consumers\": [ { \"queue\": \"orders\", \"handler\": "
    "\"exec:examples/handlers/order.sh\",\n"
    "                   \"prefetch\": 50, \"workers\": 1 } ] }\n";

static int group_setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/warren-test-config-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        return -1;
    }
    /* The environment of whoever runs the tests must not leak in. */
    unsetenv("WARREN_URL");
    return 0;
}

static int group_teardown(void **state) {
    char cmd[PATH_MAX + 16];
    (void)state;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes `len` bytes to a fresh 0600 file in tmpdir; returns its path. */
static const char *write_file(const char *name, const char *data, size_t len) {
    static char path[PATH_MAX + 64];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

/* Parses `json` expecting failure; returns the message (static). */
static const char *parse_err(const char *json) {
    static char err[512];
    warren_config *cfg = (warren_config *)0x1;
    memset(err, 'x', sizeof err);
    assert_int_equal(warren_config_parse(json, "t.json", &cfg, err, sizeof err),
                     WARREN_ERR_CONFIG);
    assert_null(cfg);
    assert_non_null(memchr(err, '\0', sizeof err));
    assert_null(strchr(err, '\n'));
    return err;
}

static warren_config *parse_ok(const char *json) {
    char err[512] = "";
    warren_config *cfg = NULL;
    int rc = warren_config_parse(json, "t.json", &cfg, err, sizeof err);
    if (rc != 0) {
        fail_msg("unexpected error %d: %s", rc, err);
    }
    assert_non_null(cfg);
    return cfg;
}

/* A one-consumer config with `extra` spliced into the consumer object. */
static const char *with_consumer(const char *extra) {
    static char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"consumers\":[{\"queue\":\"q\",\"handler\":\"builtin:noop\"%s%s"
             "}]}",
             extra[0] ? "," : "", extra);
    return buf;
}

static void assert_defaults_of_orders(const warren_config *cfg) {
    const warren__consumer_cfg *c = &cfg->consumers[0];
    assert_int_equal(cfg->broker.n_urls, 1);
    assert_string_equal(cfg->broker.urls[0],
                        "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_int_equal(cfg->broker.heartbeat_s, 30);
    assert_true(cfg->broker.connect_timeout_s == 10.0);
    assert_int_equal(cfg->broker.confirm_timeout_ms, 30000);
    assert_null(cfg->broker.ca_cert);
    assert_null(cfg->broker.client_cert);
    assert_null(cfg->broker.client_key);
    assert_true(cfg->broker.verify_peer);
    assert_true(cfg->broker.verify_hostname);
    assert_int_equal(cfg->store.synchronous, WARREN__SYNC_FULL);
    assert_int_equal(cfg->store.retention_s, 604800);
    assert_int_equal(cfg->store.busy_timeout_ms, 5000);
    assert_int_equal(cfg->store.lease_s, 300);
    assert_true(cfg->shutdown_grace_s == 30.0);
    assert_null(cfg->metrics_listen);
    assert_int_equal(warren_config_consumer_count(cfg), 1);
    assert_string_equal(warren_config_consumer_queue(cfg, 0), "orders");
    assert_null(warren_config_consumer_queue(cfg, 1));
    assert_null(warren_config_consumer_queue(cfg, -1));
    assert_string_equal(c->handler, "exec:examples/handlers/order.sh");
    assert_int_equal(c->queue_type, WARREN__QUEUE_CLASSIC);
    assert_int_equal(c->prefetch, 50);
    assert_int_equal(c->workers, 1);
    assert_int_equal(c->batch_max, 50);
    assert_int_equal(c->id_source, WARREN__ID_PROPERTY);
    assert_null(c->id_arg);
    assert_int_equal(c->on_missing_id, WARREN__MISSING_DEAD);
    assert_true(c->dedup);
    assert_int_equal(c->retry.max_attempts, 5);
    assert_int_equal(c->max_deliveries, 7);
    assert_int_equal(c->retry.mode, WARREN__RETRY_REPUBLISH);
    assert_true(c->retry.backoff.jitter == 0.1);
    assert_int_equal(c->retry.max_age_s, 0);
    assert_string_equal(c->dlq_queue, "orders.dlq");
    assert_int_equal(c->max_message_bytes, 16777216);
    assert_true(c->timeout_s == 0.0);
    assert_int_equal(c->breaker.consecutive_failures, 0);
    assert_true(c->breaker.failure_ratio == 0.0);
    assert_int_equal(c->breaker.window_s, 60);
    assert_int_equal(c->breaker.open_s, 30);
    assert_int_equal(c->breaker.half_open_max, 1);
    assert_true(c->rate_limit_per_s == 0.0);
}

static void test_issue_example_parses_with_every_default(void **state) {
    (void)state;
    warren_config *cfg = parse_ok(ISSUE_EXAMPLE);
    const warren__backoff_cfg *b = &cfg->consumers[0].retry.backoff;
    assert_defaults_of_orders(cfg);
    assert_string_equal(cfg->store.path, "warren.db");
    assert_string_equal(cfg->path, "t.json");
    assert_int_equal(b->kind, WARREN__BACKOFF_EXPONENTIAL);
    assert_int_equal(b->initial_ms, 1000);
    assert_true(b->multiplier == 2.0);
    assert_int_equal(b->max_ms, 300000);
    warren_config_free(cfg);
}

static void test_shipped_example_loads(void **state) {
    (void)state;
    const char *src = getenv("WARREN_SOURCE_DIR");
    char path[PATH_MAX], err[512] = "";
    warren_config *cfg = NULL;
    snprintf(path, sizeof path, "%s/examples/warren.json", src ? src : ".");
    assert_int_equal(warren_config_load(path, &cfg, err, sizeof err), 0);
    assert_defaults_of_orders(cfg);
    assert_string_equal(cfg->store.path, "warren-demo.db");
    assert_int_equal(cfg->consumers[0].retry.backoff.kind,
                     WARREN__BACKOFF_EXPONENTIAL);
    warren_config_free(cfg);
}

static void test_empty_config_defaults_store_path_and_url(void **state) {
    (void)state;
    warren_config *cfg = parse_ok(with_consumer(""));
    assert_string_equal(cfg->store.path, "warren.db");
    assert_string_equal(cfg->broker.urls[0],
                        "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_int_equal(cfg->consumers[0].batch_max, 50);
    warren_config_free(cfg);
}

static void test_every_field_is_read(void **state) {
    (void)state;
    warren_config *cfg = parse_ok(
        "{\"broker\":{\"urls\":[\"amqps://u:p@a:5671/v\",\"amqp://b\"],"
        "\"heartbeat_s\":0,\"connect_timeout_s\":2.5,"
        "\"confirm_timeout_ms\":500,\"tls\":{\"ca_cert\":"
        "\"ca.pem\",\"client_cert\":\"c.pem\",\"client_key\":\"k.pem\","
        "\"verify_peer\":false,\"verify_hostname\":false}},"
        "\"store\":{\"path\":\"s.db\",\"synchronous\":\"normal\","
        "\"retention_s\":0,\"busy_timeout_ms\":100,\"lease_s\":9},"
        "\"shutdown_grace_s\":1.5,\"metrics\":{\"listen\":\"127.0.0.1:9464\"},"
        "\"consumers\":[{\"queue\":\"a\",\"handler\":\"plugin:x.so:h\","
        "\"queue_type\":\"quorum\",\"prefetch\":500,\"workers\":4,"
        "\"message_id\":\"json:order.id\",\"on_missing_id\":\"hash\","
        "\"dedup\":false,\"retry\":{\"max_attempts\":3,\"mode\":\"nack\","
        "\"backoff\":{\"kind\":\"fixed\",\"delay_ms\":5000},\"jitter\":0,"
        "\"max_age_s\":60},\"dead_letter\":{\"queue\":\"dead\"},"
        "\"max_message_bytes\":1024,\"timeout_s\":2,\"breaker\":{"
        "\"consecutive_failures\":5,\"failure_ratio\":0.5,\"window_s\":10,"
        "\"open_s\":5,\"half_open_max\":2},\"rate_limit_per_s\":200},"
        "{\"queue\":\"b\",\"handler\":\"exec:/bin/true\",\"batch_max\":7,"
        "\"max_deliveries\":3,\"message_id\":\"header:X-Id\","
        "\"retry\":{\"backoff\":{\"kind\":\"list\",\"delays_ms\":[1,20,300]}}}"
        "]}");
    const warren__consumer_cfg *a = &cfg->consumers[0], *b = &cfg->consumers[1];
    assert_int_equal(cfg->broker.n_urls, 2);
    assert_string_equal(cfg->broker.urls[1], "amqp://b");
    assert_int_equal(cfg->broker.heartbeat_s, 0);
    assert_true(cfg->broker.connect_timeout_s == 2.5);
    assert_int_equal(cfg->broker.confirm_timeout_ms, 500);
    assert_string_equal(cfg->broker.client_key, "k.pem");
    assert_false(cfg->broker.verify_peer);
    assert_int_equal(cfg->store.synchronous, WARREN__SYNC_NORMAL);
    assert_int_equal(cfg->store.lease_s, 9);
    assert_string_equal(cfg->metrics_listen, "127.0.0.1:9464");
    assert_int_equal(a->queue_type, WARREN__QUEUE_QUORUM);
    assert_int_equal(a->prefetch, 500);
    assert_int_equal(a->batch_max, 100);
    assert_int_equal(a->id_source, WARREN__ID_JSON);
    assert_string_equal(a->id_arg, "order.id");
    assert_int_equal(a->on_missing_id, WARREN__MISSING_HASH);
    assert_false(a->dedup);
    assert_int_equal(a->retry.mode, WARREN__RETRY_NACK);
    assert_int_equal(a->retry.backoff.kind, WARREN__BACKOFF_FIXED);
    assert_int_equal(a->retry.backoff.delay_ms, 5000);
    assert_int_equal(a->max_deliveries, 5);
    assert_string_equal(a->dlq_queue, "dead");
    assert_int_equal(a->breaker.half_open_max, 2);
    assert_true(a->rate_limit_per_s == 200.0);
    assert_int_equal(b->batch_max, 7);
    assert_int_equal(b->max_deliveries, 3);
    assert_int_equal(b->id_source, WARREN__ID_HEADER);
    assert_string_equal(b->id_arg, "X-Id");
    assert_int_equal(b->retry.backoff.kind, WARREN__BACKOFF_LIST);
    assert_int_equal(b->retry.backoff.n_delays, 3);
    assert_int_equal(b->retry.backoff.delays_ms[2], 300);
    warren_config_free(cfg);
}

static void test_unreadable_file_is_refused_with_strerror(void **state) {
    (void)state;
    char err[512], path[PATH_MAX + 16];
    warren_config *cfg = NULL;
    snprintf(path, sizeof path, "%s/missing.json", tmpdir);
    assert_int_equal(warren_config_load(path, &cfg, err, sizeof err),
                     WARREN_ERR_CONFIG);
    assert_null(cfg);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, ": cannot read: No such file or directory"));
    /* A directory opens but cannot be read. */
    assert_int_equal(warren_config_load(tmpdir, &cfg, err, sizeof err),
                     WARREN_ERR_CONFIG);
    assert_non_null(strstr(err, ": cannot read: Is a directory"));
}

static void test_file_over_1mib_is_refused(void **state) {
    (void)state;
    size_t n = 1024 * 1024 + 1;
    char *big = malloc(n), err[512];
    warren_config *cfg = NULL;
    assert_non_null(big);
    memset(big, ' ', n);
    const char *path = write_file("big.json", big, n);
    free(big);
    assert_int_equal(warren_config_load(path, &cfg, err, sizeof err),
                     WARREN_ERR_CONFIG);
    assert_non_null(strstr(err, "larger than 1 MiB"));
}

static void test_invalid_json_reports_line_and_column(void **state) {
    (void)state;
    const char *json = "{\n  \"store\": {\"path\": \"x\"},\n  \"consumers\": "
                       "[ , ]\n}\n";
    char err[512], want[PATH_MAX + 64];
    warren_config *cfg = NULL;
    const char *path = write_file("bad.json", json, strlen(json));
    assert_int_equal(warren_config_load(path, &cfg, err, sizeof err),
                     WARREN_ERR_CONFIG);
    snprintf(want, sizeof want, "%s:3:18: invalid JSON: near \", ]", path);
    assert_non_null(strstr(err, want));
    assert_string_equal(parse_err("{\"a\": "),
                        "t.json:1:7: invalid JSON: unexpected end of input");
    assert_string_equal(parse_err(""),
                        "t.json:1:1: invalid JSON: unexpected end of input");
}

static void test_unknown_key_suggests_near_miss(void **state) {
    (void)state;
    assert_string_equal(parse_err(with_consumer("\"prefech\":5")),
                        "t.json: consumers[0].prefech: expected a known key, "
                        "got unknown key \"prefech\" (did you mean "
                        "\"prefetch\"?)");
    assert_string_equal(parse_err("{\"brokr\":{}}"),
                        "t.json: brokr: expected a known key, got unknown key "
                        "\"brokr\" (did you mean \"broker\"?)");
}

static void test_unknown_key_without_near_miss_lists_known_keys(void **state) {
    (void)state;
    assert_string_equal(parse_err("{\"store\":{\"zzzzzz\":1}}"),
                        "t.json: store.zzzzzz: expected a known key (path, "
                        "synchronous, retention_s, busy_timeout_ms, lease_s, "
                        "url), got unknown key \"zzzzzz\"");
}

/* store.url names a PostgreSQL store; with it, path is not defaulted, and
 * the two together, another scheme or a password in the URL are refused
 * naming the field. */
static void
test_store_url_is_postgresql_alone_and_without_password(void **state) {
    (void)state;
    warren_config *cfg = parse_ok(
        "{\"store\":{\"url\":\"postgresql://w@127.0.0.1:5432/warren\"},"
        "\"consumers\":[{\"queue\":\"q\",\"handler\":\"builtin:noop\"}]}");
    assert_string_equal(cfg->store.url, "postgresql://w@127.0.0.1:5432/warren");
    assert_null(cfg->store.path);
    warren_config_free(cfg);
    assert_string_equal(
        parse_err("{\"store\":{\"path\":\"a.db\",\"url\":"
                  "\"postgresql://w@h/d\"}}"),
        "t.json: store.url: store.path and store.url both given: path is a "
        "SQLite file, url a PostgreSQL database; keep one");
    assert_string_equal(
        parse_err("{\"store\":{\"url\":\"mysql://w@h/d\"}}"),
        "t.json: store.url: expected a postgresql://user@host:port/database "
        "URL");
    const char *err =
        parse_err("{\"store\":{\"url\":\"postgresql://w:hunter2@h/d\"}}");
    assert_non_null(strstr(err, "t.json: store.url: a password in the URL is "
                                "not allowed"));
    assert_null(strstr(err, "hunter2"));
    err = parse_err(
        "{\"store\":{\"url\":\"postgresql://w@h/d?password=hunter2\"}}");
    assert_non_null(strstr(err, "a password in the URL is not allowed"));
    assert_null(strstr(err, "hunter2"));
}

static void test_backoff_keys_of_another_kind_are_unknown(void **state) {
    (void)state;
    const char *err = parse_err(with_consumer(
        "\"retry\":{\"backoff\":{\"kind\":\"fixed\",\"initial_ms\":5}}"));
    assert_non_null(
        strstr(err, "t.json: consumers[0].retry.backoff.initial_ms: expected "
                    "a known key (kind, delay_ms)"));
}

static void test_duplicate_key_is_refused(void **state) {
    (void)state;
    assert_string_equal(
        parse_err(with_consumer("\"workers\":1,\"workers\":2")),
        "t.json: consumers[0].workers: expected each key once, got "
        "\"workers\" a second time");
}

static void test_wrong_type_names_field_expected_and_got(void **state) {
    (void)state;
    assert_string_equal(parse_err(with_consumer("\"prefetch\":\"50\"")),
                        "t.json: consumers[0].prefetch: expected an integer "
                        "from 1 to 65535, got \"50\"");
    assert_string_equal(parse_err(with_consumer("\"dedup\":1")),
                        "t.json: consumers[0].dedup: expected true or false, "
                        "got 1");
    assert_string_equal(parse_err("{\"broker\":[1]}"),
                        "t.json: broker: expected an object, got an array");
    assert_string_equal(parse_err("[1]"), "t.json: (top level): expected an "
                                          "object, got an array");
    assert_string_equal(parse_err(with_consumer("\"workers\":1.5")),
                        "t.json: consumers[0].workers: expected an integer "
                        "from 1 to 256, got 1.5");
}

static void test_missing_required_field_is_refused(void **state) {
    (void)state;
    assert_string_equal(parse_err("{}"),
                        "t.json: consumers: expected an array of 1 to 64 "
                        "consumer objects, got nothing (required)");
    assert_string_equal(parse_err("{\"consumers\":[{\"handler\":\"exec:x\"}]}"),
                        "t.json: consumers[0].queue: expected a queue name, "
                        "got nothing (required)");
    assert_non_null(strstr(parse_err("{\"consumers\":[{\"queue\":\"q\"}]}"),
                           "t.json: consumers[0].handler: expected"));
    assert_non_null(
        strstr(parse_err("{\"consumers\":[]}"), "got an empty array"));
    assert_non_null(strstr(
        parse_err(with_consumer("\"retry\":{\"backoff\":{\"delay_ms\":1}}")),
        "consumers[0].retry.backoff.kind: expected \"fixed\""));
}

static void test_out_of_range_values_are_refused(void **state) {
    (void)state;
    assert_string_equal(parse_err(with_consumer("\"prefetch\":70000")),
                        "t.json: consumers[0].prefetch: expected an integer "
                        "from 1 to 65535, got 70000");
    assert_string_equal(
        parse_err(with_consumer("\"prefetch\":10,\"batch_max\":11")),
        "t.json: consumers[0].batch_max: expected an integer from 1 to 10, "
        "got 11");
    assert_string_equal(
        parse_err(with_consumer("\"retry\":{\"backoff\":{\"kind\":"
                                "\"exponential\",\"initial_ms\":-1}}")),
        "t.json: consumers[0].retry.backoff.initial_ms: expected an integer "
        "from 0 to 268435455, got -1");
    assert_string_equal(
        parse_err("{\"broker\":{\"confirm_timeout_ms\":0}}"),
        "t.json: broker.confirm_timeout_ms: expected an integer from 100 to "
        "3600000, got 0");
    assert_string_equal(parse_err("{\"broker\":{\"heartbeat_s\":1e999}}"),
                        "t.json: broker.heartbeat_s: expected an integer from "
                        "0 to 3600, got inf");
    assert_non_null(strstr(parse_err(with_consumer("\"retry\":{\"jitter\":2}")),
                           "consumers[0].retry.jitter: expected a number "
                           "from 0 to 1, got 2"));
    assert_non_null(strstr(
        parse_err(
            "{\"metrics\":{\"listen\":\"localhost:0\"},\"consumers\":[]}"),
        "metrics.listen: expected \"HOST:PORT\""));
    assert_non_null(strstr(
        parse_err(with_consumer("\"retry\":{\"backoff\":{\"kind\":\"list\","
                                "\"delays_ms\":[1,268435456]}}")),
        "consumers[0].retry.backoff.delays_ms[1]: expected an integer"));
}

static void test_bad_queue_names_are_refused(void **state) {
    (void)state;
    char long_q[260], json[600];
    assert_non_null(strstr(
        parse_err(
            "{\"consumers\":[{\"queue\":\"a b\",\"handler\":\"exec:x\"}]}"),
        "consumers[0].queue: expected a queue name without '*', '#' or "
        "whitespace, got \"a b\""));
    assert_non_null(strstr(
        parse_err(
            "{\"consumers\":[{\"queue\":\"a.#\",\"handler\":\"exec:x\"}]}"),
        "without '*', '#'"));
    memset(long_q, 'q', 200);
    long_q[200] = '\0';
    snprintf(json, sizeof json,
             "{\"consumers\":[{\"queue\":\"%s\",\"handler\":\"exec:x\"}]}",
             long_q);
    assert_non_null(strstr(parse_err(json), "expected a string of 1 to 199"));
    /* 199 bytes is the longest name whose delayed-retry routing key (56
     * bytes of binary digits and dots, then the name) fits 255 bytes. */
    long_q[199] = '\0';
    snprintf(json, sizeof json,
             "{\"consumers\":[{\"queue\":\"%s\",\"handler\":\"exec:x\"}]}",
             long_q);
    warren_config_free(parse_ok(json));
    assert_non_null(strstr(
        parse_err(
            "{\"consumers\":[{\"queue\":\"q\",\"handler\":\"shell:x\"}]}"),
        "consumers[0].handler: expected a handler starting with"));
}

static void test_duplicate_queue_is_refused(void **state) {
    (void)state;
    assert_string_equal(
        parse_err("{\"consumers\":[{\"queue\":\"q\",\"handler\":\"exec:x\"},"
                  "{\"queue\":\"r\",\"handler\":\"exec:x\"},"
                  "{\"queue\":\"q\",\"handler\":\"exec:y\"}]}"),
        "t.json: consumers[2].queue: expected a queue name unique across "
        "consumers, got \"q\" again (also consumers[0].queue)");
    assert_non_null(strstr(
        parse_err("{\"consumers\":[{\"queue\":\"q\",\"handler\":\"exec:x\","
                  "\"dead_letter\":{\"queue\":\"r\"}},"
                  "{\"queue\":\"r\",\"handler\":\"exec:x\"}]}"),
        "consumers[0].dead_letter.queue: expected a queue that no consumer "
        "reads"));
}

static void test_nack_mode_with_exponential_backoff_is_refused(void **state) {
    (void)state;
    const char *err = parse_err(with_consumer("\"retry\":{\"mode\":\"nack\"}"));
    assert_non_null(strstr(err, "t.json: consumers[0].retry.mode: expected "
                                "\"republish\" with backoff kind "
                                "\"exponential\", got \"nack\""));
    assert_non_null(strstr(err, "one queue TTL"));
    warren_config *cfg = parse_ok(
        with_consumer("\"retry\":{\"mode\":\"nack\",\"backoff\":{\"kind\":"
                      "\"fixed\",\"delay_ms\":1000}}"));
    warren_config_free(cfg);
}

static void test_bad_url_is_refused_with_password_redacted(void **state) {
    (void)state;
    const char *err =
        parse_err("{\"broker\":{\"url\":\"http://bob:s3cret@host/\"},"
                  "\"consumers\":[{\"queue\":\"q\",\"handler\":\"exec:x\"}]}");
    assert_non_null(strstr(err, "t.json: broker.url: expected an amqp:// or "
                                "amqps:// URL, got \"http://bob:***@host/\""));
    assert_null(strstr(err, "s3cret"));
    err = parse_err("{\"broker\":{\"urls\":[\"amqp://a\",\"amqp://bob:"
                    "s3cret@host:99999/\"]},\"consumers\":[{\"queue\":\"q\","
                    "\"handler\":\"exec:x\"}]}");
    assert_non_null(strstr(err, "broker.urls[1]: expected an amqp://"));
    assert_null(strstr(err, "s3cret"));
    err =
        parse_err("{\"broker\":{\"url\":\"amqp://a\",\"urls\":[\"amqp://b\"]}"
                  ",\"consumers\":[{\"queue\":\"q\",\"handler\":\"exec:x\"}]}");
    assert_non_null(strstr(err, "expected either broker.url or broker.urls"));
}

static void test_warren_url_replaces_first_url(void **state) {
    (void)state;
    warren_config *cfg;
    assert_int_equal(setenv("WARREN_URL", "amqps://env:pw@e:5671/v", 1), 0);
    cfg = parse_ok(with_consumer(""));
    assert_int_equal(cfg->broker.n_urls, 1);
    assert_string_equal(cfg->broker.urls[0], "amqps://env:pw@e:5671/v");
    warren_config_free(cfg);
    cfg = parse_ok(
        "{\"broker\":{\"urls\":[\"amqp://a\",\"amqp://b\"]},\"consumers\":["
        "{\"queue\":\"q\",\"handler\":\"exec:x\"}]}");
    assert_int_equal(cfg->broker.n_urls, 2);
    assert_string_equal(cfg->broker.urls[0], "amqps://env:pw@e:5671/v");
    assert_string_equal(cfg->broker.urls[1], "amqp://b");
    warren_config_free(cfg);
    assert_int_equal(setenv("WARREN_URL", "amqp://bob:s3cret@h:0x/", 1), 0);
    const char *err = parse_err(with_consumer(""));
    assert_non_null(strstr(err, "t.json: WARREN_URL: expected an amqp://"));
    assert_null(strstr(err, "s3cret"));
    assert_int_equal(unsetenv("WARREN_URL"), 0);
}

static void test_error_message_stays_one_line_and_bounded(void **state) {
    (void)state;
    char err[40];
    warren_config *cfg = NULL;
    const char *err2 = parse_err(with_consumer("\"a\\nb\\u0001\":1"));
    assert_null(strchr(err2, '\n'));
    assert_non_null(strstr(err2, "consumers[0].a?b?"));
    assert_int_equal(warren_config_parse("{", "x.json", &cfg, err, sizeof err),
                     WARREN_ERR_CONFIG);
    assert_true(strlen(err) < sizeof err);
    assert_int_equal(warren_config_parse("{", "x.json", &cfg, NULL, 0),
                     WARREN_ERR_CONFIG);
    warren_config_free(NULL);
    assert_int_equal(warren_config_consumer_count(NULL), 0);
}

static char last_log[512];

static void capture_log(const warren_log_event *ev, void *user) {
    (void)user;
    snprintf(last_log, sizeof last_log, "%s", warren_log_event_text(ev));
}

static void test_readable_config_with_password_logs_warning(void **state) {
    (void)state;
    const char *json =
        "{\"broker\":{\"url\":\"amqp://bob:s3cret@h/\"},\"consumers\":["
        "{\"queue\":\"q\",\"handler\":\"exec:x\"}]}";
    char err[512];
    warren_config *cfg = NULL;
    const char *path = write_file("pw.json", json, strlen(json));
    warren_log_set(capture_log, NULL, WARREN_LOG_DEBUG);
    last_log[0] = '\0';
    assert_int_equal(warren_config_load(path, &cfg, err, sizeof err), 0);
    warren_config_free(cfg);
    assert_string_equal(last_log, "");
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(warren_config_load(path, &cfg, err, sizeof err), 0);
    warren_config_free(cfg);
    warren_log_set(NULL, NULL, WARREN_LOG_INFO);
    assert_non_null(strstr(last_log, "readable by group or others"));
    assert_null(strstr(last_log, "s3cret"));
}

/* Deterministic mutation fuzzing: bit flips, truncations, byte insertions
 * and splices of valid configs. Under ASan this is the claim "never crash,
 * never leak" on inputs nobody thought of; the real fuzz target comes later.
 */
static void test_mutated_inputs_never_crash(void **state) {
    (void)state;
    static const char *seeds[] = {
        ISSUE_EXAMPLE,
        "{\"broker\":{\"urls\":[\"amqps://u:p@a:5671/v\"],\"tls\":{"
        "\"ca_cert\":\"c\"}},\"metrics\":{\"listen\":\"[::1]:9\"},"
        "\"consumers\":[{\"queue\":\"a\",\"handler\":\"exec:x\","
        "\"message_id\":\"json:a.b\",\"retry\":{\"backoff\":{\"kind\":"
        "\"list\",\"delays_ms\":[1,2,3]}},\"breaker\":{\"window_s\":3}},"
        "{\"queue\":\"b\",\"handler\":\"exec:y\",\"retry\":{\"mode\":"
        "\"nack\",\"backoff\":{\"kind\":\"fixed\",\"delay_ms\":1}}}]}"};
    static const char alphabet[] = "{}[]\":,.-0123456789eE \\ntrufalsn";
    uint64_t x = 88172645463325252ull;
    char buf[2048], err[256];
    int ok = 0;

    for (int it = 0; it < 20000; it++) {
        const char *seed = seeds[it % 2];
        size_t n = strlen(seed);
        memcpy(buf, seed, n + 1);
        for (int m = 0; m < 1 + it % 4; m++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            size_t pos = (size_t)(x % (n + 1));
            switch ((x >> 32) % 4) {
            case 0: /* truncate */
                buf[pos] = '\0';
                n = pos;
                break;
            case 1: /* replace */
                if (pos < n) {
                    buf[pos] = alphabet[(x >> 40) % (sizeof alphabet - 1)];
                }
                break;
            case 2: /* insert */
                if (n + 2 < sizeof buf) {
                    memmove(buf + pos + 1, buf + pos, n - pos + 1);
                    buf[pos] = alphabet[(x >> 40) % (sizeof alphabet - 1)];
                    n++;
                }
                break;
            default: /* delete */
                if (pos < n) {
                    memmove(buf + pos, buf + pos + 1, n - pos);
                    n--;
                }
                break;
            }
        }
        warren_config *cfg = NULL;
        int rc = warren_config_parse(buf, "f", &cfg, err, sizeof err);
        assert_true(rc == 0 || rc == WARREN_ERR_CONFIG);
        assert_true((rc == 0) == (cfg != NULL));
        if (rc == 0) {
            ok++;
            assert_true(cfg->n_consumers >= 1);
        } else {
            assert_null(strchr(err, '\n'));
        }
        warren_config_free(cfg);
    }
    /* Some mutations (whitespace, digits) keep the config valid. */
    assert_true(ok > 0);
}

/* Issue 18 item 8: before RabbitMQ 4.3 every return (warren's own requeues
 * included) counts against a quorum queue's x-delivery-limit, so the
 * default leaves room for them above the poison cap, and a value at or
 * below the cap is refused. */
static void test_delivery_limit_defaults_above_poison_cap(void **state) {
    (void)state;
    warren_config *cfg = parse_ok(with_consumer("\"max_deliveries\":3"));
    assert_int_equal(cfg->consumers[0].delivery_limit,
                     3 + 2 + WARREN__REQUEUE_ALLOWANCE);
    warren_config_free(cfg);
    cfg = parse_ok(with_consumer("\"max_deliveries\":3,"
                                 "\"delivery_limit\":50"));
    assert_int_equal(cfg->consumers[0].delivery_limit, 50);
    warren_config_free(cfg);
    assert_non_null(
        strstr(parse_err(with_consumer("\"max_deliveries\":3,"
                                       "\"delivery_limit\":4")),
               "t.json: consumers[0].delivery_limit: expected a number above "
               "max_deliveries + 1"));
    assert_non_null(strstr(parse_err(with_consumer("\"delivery_limit\":\"x\"")),
                           "consumers[0].delivery_limit"));
}

/* Issue 15 item 4: queue_type is "classic" (default) or "quorum"; anything
 * else names the field and both choices. */
static void test_queue_type_is_classic_or_quorum(void **state) {
    (void)state;
    warren_config *cfg = parse_ok(with_consumer("\"queue_type\":\"quorum\""));
    assert_int_equal(cfg->consumers[0].queue_type, WARREN__QUEUE_QUORUM);
    warren_config_free(cfg);
    cfg = parse_ok(with_consumer("\"queue_type\":\"classic\""));
    assert_int_equal(cfg->consumers[0].queue_type, WARREN__QUEUE_CLASSIC);
    warren_config_free(cfg);
    assert_string_equal(
        parse_err(with_consumer("\"queue_type\":\"stream\"")),
        "t.json: consumers[0].queue_type: expected one of \"classic\", "
        "\"quorum\", got \"stream\"");
    assert_string_equal(parse_err(with_consumer("\"queue_type\":\"Quorum\"")),
                        "t.json: consumers[0].queue_type: expected one of "
                        "\"classic\", \"quorum\", got \"Quorum\"");
    assert_non_null(strstr(parse_err(with_consumer("\"queue_type\":1")),
                           "consumers[0].queue_type: expected one of"));
}

/* broker.urls: 1 to 16 URL strings, in order, each checked like url. */
static void test_broker_urls_list_is_checked(void **state) {
    (void)state;
    static const char tail[] =
        "]},\"consumers\":[{\"queue\":\"q\",\"handler\":\"builtin:noop\"}]}";
    char json[4096];
    unsetenv("WARREN_URL");
    snprintf(json, sizeof json,
             "{\"broker\":{\"urls\":[\"amqp://n1:5672\",\"amqp://n2:5673\","
             "\"amqps://n3:5671/v\"%s",
             tail);
    warren_config *cfg = parse_ok(json);
    assert_int_equal(cfg->broker.n_urls, 3);
    assert_string_equal(cfg->broker.urls[0], "amqp://n1:5672");
    assert_string_equal(cfg->broker.urls[2], "amqps://n3:5671/v");
    warren_config_free(cfg);
    snprintf(json, sizeof json, "{\"broker\":{\"urls\":[%s", tail);
    assert_string_equal(parse_err(json),
                        "t.json: broker.urls: expected an array of 1 to 16 "
                        "URL strings, got an empty array");
    assert_string_equal(parse_err("{\"broker\":{\"urls\":\"amqp://a\"},"
                                  "\"consumers\":[{\"queue\":\"q\","
                                  "\"handler\":\"builtin:noop\"}]}"),
                        "t.json: broker.urls: expected an array of 1 to 16 "
                        "URL strings, got \"amqp://a\"");
    size_t o = (size_t)snprintf(json, sizeof json, "{\"broker\":{\"urls\":[");
    for (int i = 0; i < 17; i++) {
        o += (size_t)snprintf(json + o, sizeof json - o, "%s\"amqp://n%d\"",
                              i ? "," : "", i);
    }
    snprintf(json + o, sizeof json - o, "%s", tail);
    assert_string_equal(parse_err(json),
                        "t.json: broker.urls: expected an array of 1 to 16 "
                        "URL strings, got 17 entries");
    snprintf(json, sizeof json, "{\"broker\":{\"urls\":[\"amqp://a\",7%s",
             tail);
    assert_non_null(
        strstr(parse_err(json), "t.json: broker.urls[1]: expected"));
}

/* WARREN_BROKER_PASSWORD fills in the password of every URL that names a
 * user without one (percent-encoded), leaves the others alone, and is
 * checked like a URL part. */
static void test_broker_password_env_fills_urls_with_a_user(void **state) {
    (void)state;
    static const char json[] =
        "{\"broker\":{\"urls\":[\"amqp://orders@n1:5672/v\",\"amqp://n2\","
        "\"amqp://u:own@n3\",\"amqps://orders@n4:5671\"]},"
        "\"consumers\":[{\"queue\":\"q\",\"handler\":\"builtin:noop\"}]}";
    unsetenv("WARREN_URL");
    setenv("WARREN_BROKER_PASSWORD", "p@ss w:rd/1", 1);
    warren_config *cfg = parse_ok(json);
    assert_string_equal(cfg->broker.urls[0],
                        "amqp://orders:p%40ss%20w%3Ard%2F1@n1:5672/v");
    assert_string_equal(cfg->broker.urls[1], "amqp://n2");
    assert_string_equal(cfg->broker.urls[2], "amqp://u:own@n3");
    assert_string_equal(cfg->broker.urls[3],
                        "amqps://orders:p%40ss%20w%3Ard%2F1@n4:5671");
    warren_config_free(cfg);
    /* WARREN_URL without a password gets it too. */
    setenv("WARREN_URL", "amqp://env@e:5672/%2f", 1);
    cfg = parse_ok(json);
    assert_string_equal(cfg->broker.urls[0],
                        "amqp://env:p%40ss%20w%3Ard%2F1@e:5672/%2f");
    warren_config_free(cfg);
    unsetenv("WARREN_URL");
    setenv("WARREN_BROKER_PASSWORD", "bad\npw", 1);
    const char *err = parse_err(json);
    assert_non_null(strstr(err, "t.json: WARREN_BROKER_PASSWORD: expected a "
                                "password without control characters"));
    assert_null(strstr(err, "bad"));
    unsetenv("WARREN_BROKER_PASSWORD");
}

/* Issue 14 section 2: breaker.fallback takes any handler kind, is checked
 * like "handler", and is absent (NULL: pause) by default. */
static void test_breaker_fallback_is_read_and_checked(void **state) {
    (void)state;
    warren_config *cfg = parse_ok(with_consumer(""));
    assert_null(cfg->consumers[0].breaker.fallback);
    warren_config_free(cfg);
    cfg = parse_ok(with_consumer("\"breaker\":{\"consecutive_failures\":5,"
                                 "\"fallback\":\"exec:/bin/true park\"}"));
    assert_string_equal(cfg->consumers[0].breaker.fallback,
                        "exec:/bin/true park");
    assert_int_equal(cfg->consumers[0].breaker.consecutive_failures, 5);
    warren_config_free(cfg);
    assert_non_null(strstr(
        parse_err(with_consumer("\"breaker\":{\"fallback\":\"park.sh\"}")),
        "t.json: consumers[0].breaker.fallback: expected a handler starting "
        "with \"exec:\", \"plugin:\" or \"builtin:\", got \"park.sh\""));
    assert_non_null(
        strstr(parse_err(with_consumer("\"breaker\":{\"fallback\":3}")),
               "consumers[0].breaker.fallback"));
    assert_non_null(
        strstr(parse_err(with_consumer("\"breaker\":{\"fallback\":\"exec:\"}")),
               "consumers[0].breaker.fallback"));
}

/* Issue 14 section 3: retry.jitter_style ("proportional" by default, or
 * "full") and retry.budget (off by default; gRPC's example figures when
 * given empty). */
static void test_retry_jitter_style_and_budget_are_read(void **state) {
    (void)state;
    warren_config *cfg = parse_ok(with_consumer(""));
    const warren__retry_cfg *r = &cfg->consumers[0].retry;
    assert_int_equal(r->backoff.jitter_style, WARREN__JITTER_PROPORTIONAL);
    assert_true(r->budget.max_tokens == 0);
    warren_config_free(cfg);
    cfg = parse_ok(with_consumer("\"retry\":{\"jitter_style\":\"full\","
                                 "\"budget\":{}}"));
    r = &cfg->consumers[0].retry;
    assert_int_equal(r->backoff.jitter_style, WARREN__JITTER_FULL);
    assert_true(r->budget.max_tokens == 10);
    assert_true(r->budget.token_ratio == 0.1);
    assert_int_equal(r->budget.when_exhausted, WARREN__BUDGET_DEAD);
    warren_config_free(cfg);
    cfg = parse_ok(with_consumer(
        "\"retry\":{\"budget\":{\"max_tokens\":100,\"token_ratio\":0.5,"
        "\"when_exhausted\":\"pause\"}}"));
    r = &cfg->consumers[0].retry;
    assert_true(r->budget.max_tokens == 100);
    assert_true(r->budget.token_ratio == 0.5);
    assert_int_equal(r->budget.when_exhausted, WARREN__BUDGET_PAUSE);
    warren_config_free(cfg);
    assert_non_null(
        strstr(parse_err(with_consumer("\"retry\":{\"jitter_style\":\"x\"}")),
               "t.json: consumers[0].retry.jitter_style: expected one of "
               "\"proportional\", \"full\""));
    assert_non_null(strstr(
        parse_err(with_consumer("\"retry\":{\"budget\":{\"max_tokens\":0}}")),
        "consumers[0].retry.budget.max_tokens"));
    assert_non_null(strstr(
        parse_err(with_consumer("\"retry\":{\"budget\":{\"token_ratio\":2}}")),
        "consumers[0].retry.budget.token_ratio"));
    assert_non_null(strstr(
        parse_err(
            with_consumer("\"retry\":{\"budget\":{\"when_exhausted\":\"x\"}}")),
        "consumers[0].retry.budget.when_exhausted: expected one of \"dead\", "
        "\"pause\""));
    assert_non_null(strstr(
        parse_err(with_consumer("\"retry\":{\"budget\":{\"tokens\":1}}")),
        "consumers[0].retry.budget"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_issue_example_parses_with_every_default),
        cmocka_unit_test(test_shipped_example_loads),
        cmocka_unit_test(test_empty_config_defaults_store_path_and_url),
        cmocka_unit_test(
            test_store_url_is_postgresql_alone_and_without_password),
        cmocka_unit_test(test_every_field_is_read),
        cmocka_unit_test(test_unreadable_file_is_refused_with_strerror),
        cmocka_unit_test(test_file_over_1mib_is_refused),
        cmocka_unit_test(test_invalid_json_reports_line_and_column),
        cmocka_unit_test(test_unknown_key_suggests_near_miss),
        cmocka_unit_test(test_unknown_key_without_near_miss_lists_known_keys),
        cmocka_unit_test(test_backoff_keys_of_another_kind_are_unknown),
        cmocka_unit_test(test_duplicate_key_is_refused),
        cmocka_unit_test(test_wrong_type_names_field_expected_and_got),
        cmocka_unit_test(test_missing_required_field_is_refused),
        cmocka_unit_test(test_out_of_range_values_are_refused),
        cmocka_unit_test(test_bad_queue_names_are_refused),
        cmocka_unit_test(test_duplicate_queue_is_refused),
        cmocka_unit_test(test_nack_mode_with_exponential_backoff_is_refused),
        cmocka_unit_test(test_bad_url_is_refused_with_password_redacted),
        cmocka_unit_test(test_warren_url_replaces_first_url),
        cmocka_unit_test(test_error_message_stays_one_line_and_bounded),
        cmocka_unit_test(test_readable_config_with_password_logs_warning),
        cmocka_unit_test(test_mutated_inputs_never_crash),
        cmocka_unit_test(test_delivery_limit_defaults_above_poison_cap),
        cmocka_unit_test(test_queue_type_is_classic_or_quorum),
        cmocka_unit_test(test_broker_urls_list_is_checked),
        cmocka_unit_test(test_broker_password_env_fills_urls_with_a_user),
        cmocka_unit_test(test_breaker_fallback_is_read_and_checked),
        cmocka_unit_test(test_retry_jitter_style_and_budget_are_read),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

/*
 * Integration-test support: a broker client built on rabbitmq-c alone, plus
 * process and file helpers for tests that drive the real `warren` binary.
 * Channel 1 of every connection publishes in confirm mode; channel 2 does
 * everything else, so a 404 from a passive declare (which closes channel 2)
 * never disturbs confirm sequence numbers. Any failure fails the running
 * cmocka test with the broker's own words; every wait has a deadline.
 */
#include "itest.h"

#include <amqp_tcp_socket.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
    PUB_CH = 1,
    MGMT_CH = 2,
    MAX_CONNS = 32,
    /* Publishes between confirm waits in itest_publish_n(). */
    CONFIRM_BATCH = 500
};

/* Base deadline, before scaling, for one RPC or one batch of confirms. */
#define RPC_TIMEOUT_S 10.0

/* rabbitmq-c has no per-connection user data, so confirm sequence numbers
 * and channel 2's state live in this table, keyed by connection. */
typedef struct conn_state {
    amqp_connection_state_t conn;
    uint64_t published; /* last publish sequence number on channel 1 */
    int mgmt_open;
} conn_state;

static conn_state conns[MAX_CONNS];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static struct timeval to_timeval(double s) {
    struct timeval tv;
    if (s < 0) {
        s = 0;
    }
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

static void copy_bytes(char *dst, size_t size, amqp_bytes_t b) {
    size_t n = b.len < size - 1 ? b.len : size - 1;
    if (n > 0) {
        memcpy(dst, b.bytes, n);
    }
    dst[n] = '\0';
}

static conn_state *state_of(amqp_connection_state_t conn) {
    for (int i = 0; i < MAX_CONNS; i++) {
        if (conns[i].conn != NULL && conns[i].conn == conn) {
            return &conns[i];
        }
    }
    fail_msg("itest: connection %p was not made by itest_connect()",
             (void *)conn);
    return NULL;
}

/* Describes a failed RPC made on channel ch. A channel close is answered
 * with close-ok so the connection stays usable, and reported through
 * *closed; *code gets the broker's reply code (404, 406...) if any. */
static void describe_reply(amqp_connection_state_t conn, amqp_rpc_reply_t r,
                           int ch, char *buf, size_t size, int *closed,
                           int *code) {
    char text[512];
    *closed = 0;
    *code = 0;
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buf, size, "ok");
        return;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, size, "no RPC reply (missing from the broker)");
        return;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, size, "%s", amqp_error_string2(r.library_error));
        return;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        break;
    }
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *c = r.reply.decoded;
        amqp_channel_close_ok_t ok = {0};
        copy_bytes(text, sizeof text, c->reply_text);
        *code = c->reply_code;
        snprintf(buf, size, "channel %d closed by broker: %d %s", ch,
                 c->reply_code, text);
        (void)amqp_send_method(conn, (amqp_channel_t)ch,
                               AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        *closed = 1;
    } else if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *c = r.reply.decoded;
        copy_bytes(text, sizeof text, c->reply_text);
        *code = c->reply_code;
        snprintf(buf, size, "connection closed by broker: %d %s", c->reply_code,
                 text);
    } else {
        snprintf(buf, size, "unexpected method 0x%08x", (unsigned)r.reply.id);
    }
}

/* Fails the test unless the last RPC on channel ch succeeded. */
static void check_rpc(amqp_connection_state_t conn, int ch, const char *what,
                      const char *name) {
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
    char buf[768];
    int closed, code;
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        return;
    }
    describe_reply(conn, r, ch, buf, sizeof buf, &closed, &code);
    if (closed && ch == MGMT_CH) {
        state_of(conn)->mgmt_open = 0;
    }
    fail_msg("itest: %s '%s': %s", what, name ? name : "", buf);
}

static void mgmt_channel(conn_state *st) {
    if (st->mgmt_open) {
        return;
    }
    amqp_channel_open(st->conn, MGMT_CH);
    check_rpc(st->conn, MGMT_CH, "opening channel", "2");
    st->mgmt_open = 1;
}

const char *itest_url(void) {
    const char *url = getenv("WARREN_TEST_URL");
    if (url == NULL || url[0] == '\0') {
        fail_msg("itest: WARREN_TEST_URL is not set. Run the integration "
                 "tests through scripts/test, or run `scripts/broker start` "
                 "and export WARREN_TEST_URL=<the URL it prints>.");
    }
    return url;
}

double itest_scale(void) {
    const char *s = getenv("WARREN_TEST_TIMEOUT_SCALE");
    char *end = NULL;
    double v;
    if (s == NULL || s[0] == '\0') {
        return 1.0;
    }
    v = strtod(s, &end);
    if (end == s || *end != '\0' || v < 0.1 || v > 100.0) {
        fail_msg("itest: WARREN_TEST_TIMEOUT_SCALE='%s' is not a number "
                 "in 0.1..100",
                 s);
    }
    return v;
}

amqp_connection_state_t itest_connect(void) {
    return itest_connect_url(itest_url());
}

amqp_connection_state_t itest_connect_url(const char *url_in) {
    char url[1024];
    struct amqp_connection_info ci;
    amqp_connection_state_t conn;
    amqp_socket_t *sock;
    struct timeval tv = to_timeval(RPC_TIMEOUT_S * itest_scale());
    amqp_table_entry_t caps[3];
    amqp_table_entry_t props[2];
    amqp_table_t props_table;
    amqp_rpc_reply_t r;
    conn_state *slot = NULL;
    int rc;

    if ((size_t)snprintf(url, sizeof url, "%s", url_in) >= sizeof url) {
        fail_msg("itest: broker URL is longer than %zu bytes", sizeof url - 1);
    }
    amqp_default_connection_info(&ci);
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK) {
        fail_msg("itest: broker URL is not an AMQP URL");
    }
    if (ci.ssl) {
        fail_msg("itest: only amqp:// URLs are supported by the test client");
    }
    for (int i = 0; i < MAX_CONNS; i++) {
        if (conns[i].conn == NULL) {
            slot = &conns[i];
            break;
        }
    }
    if (slot == NULL) {
        fail_msg("itest: more than %d connections open; disconnect some",
                 MAX_CONNS);
    }

    conn = amqp_new_connection();
    assert_non_null(conn);
    sock = amqp_tcp_socket_new(conn);
    assert_non_null(sock);
    rc = amqp_socket_open_noblock(sock, ci.host, ci.port, &tv);
    if (rc != AMQP_STATUS_OK) {
        amqp_destroy_connection(conn);
        fail_msg("itest: cannot reach the broker at %s:%d: %s", ci.host,
                 ci.port, amqp_error_string2(rc));
    }
    amqp_set_rpc_timeout(conn, &tv);

    /* Advertise what RabbitMQ only sends to clients that ask. */
    caps[0].key = amqp_cstring_bytes("publisher_confirms");
    caps[1].key = amqp_cstring_bytes("consumer_cancel_notify");
    caps[2].key = amqp_cstring_bytes("connection.blocked");
    for (int i = 0; i < 3; i++) {
        caps[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        caps[i].value.value.boolean = 1;
    }
    props[0].key = amqp_cstring_bytes("capabilities");
    props[0].value.kind = AMQP_FIELD_KIND_TABLE;
    props[0].value.value.table.num_entries = 3;
    props[0].value.value.table.entries = caps;
    props[1].key = amqp_cstring_bytes("connection_name");
    props[1].value.kind = AMQP_FIELD_KIND_UTF8;
    props[1].value.value.bytes = amqp_cstring_bytes("warren-itest");
    props_table.num_entries = 2;
    props_table.entries = props;

    /* Heartbeats off: a test may wait on the worker for a long time
     * without calling into rabbitmq-c, which sends heartbeats only then. */
    r = amqp_login_with_properties(conn, ci.vhost, 0, 131072, 0, &props_table,
                                   AMQP_SASL_METHOD_PLAIN, ci.user,
                                   ci.password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char buf[768];
        int closed, code;
        describe_reply(conn, r, 0, buf, sizeof buf, &closed, &code);
        amqp_destroy_connection(conn);
        fail_msg("itest: login to %s:%d vhost '%s' failed: %s", ci.host,
                 ci.port, ci.vhost, buf);
    }
    slot->conn = conn;
    slot->published = 0;
    slot->mgmt_open = 0;
    amqp_channel_open(conn, PUB_CH);
    check_rpc(conn, PUB_CH, "opening channel", "1");
    amqp_confirm_select(conn, PUB_CH);
    check_rpc(conn, PUB_CH, "confirm.select on channel", "1");
    return conn;
}

void itest_disconnect(amqp_connection_state_t conn) {
    if (conn == NULL) {
        return;
    }
    for (int i = 0; i < MAX_CONNS; i++) {
        if (conns[i].conn == conn) {
            conns[i].conn = NULL;
        }
    }
    /* Errors are expected here after a broker restart; the state is freed
     * either way. */
    (void)amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}

void itest_queue_declare_args(amqp_connection_state_t conn, const char *name,
                              const amqp_table_t *args) {
    conn_state *st = state_of(conn);
    mgmt_channel(st);
    amqp_queue_declare(conn, MGMT_CH, amqp_cstring_bytes(name), 0, 1, 0, 0,
                       args ? *args : amqp_empty_table);
    check_rpc(conn, MGMT_CH, "declaring queue", name);
}

void itest_queue_declare(amqp_connection_state_t conn, const char *name) {
    itest_queue_declare_args(conn, name, NULL);
}

void itest_queue_delete(amqp_connection_state_t conn, const char *name) {
    conn_state *st = state_of(conn);
    mgmt_channel(st);
    amqp_queue_delete(conn, MGMT_CH, amqp_cstring_bytes(name), 0, 0);
    check_rpc(conn, MGMT_CH, "deleting queue", name);
}

void itest_queue_purge(amqp_connection_state_t conn, const char *name) {
    conn_state *st = state_of(conn);
    mgmt_channel(st);
    amqp_queue_purge(conn, MGMT_CH, amqp_cstring_bytes(name));
    check_rpc(conn, MGMT_CH, "purging queue", name);
}

/* Passive declare of `name`: 1 with its counts in *ready and *consumers,
 * 0 if it does not exist; fails the test on any other answer. */
static int passive_declare(amqp_connection_state_t conn, const char *name,
                           long *ready, long *consumers) {
    conn_state *st = state_of(conn);
    amqp_queue_declare_ok_t *ok;
    amqp_rpc_reply_t r;
    char buf[768];
    int closed, code;

    mgmt_channel(st);
    ok = amqp_queue_declare(conn, MGMT_CH, amqp_cstring_bytes(name), 1, 0, 0, 0,
                            amqp_empty_table);
    if (ok != NULL) {
        *ready = (long)ok->message_count;
        *consumers = (long)ok->consumer_count;
        return 1;
    }
    r = amqp_get_rpc_reply(conn);
    describe_reply(conn, r, MGMT_CH, buf, sizeof buf, &closed, &code);
    if (closed) {
        st->mgmt_open = 0;
    }
    if (code == AMQP_NOT_FOUND) {
        return 0;
    }
    fail_msg("itest: passive declare of queue '%s': %s", name, buf);
    return 0;
}

long itest_queue_depth(amqp_connection_state_t conn, const char *name) {
    long ready, consumers;
    return passive_declare(conn, name, &ready, &consumers) ? ready : -1;
}

long itest_queue_consumers(amqp_connection_state_t conn, const char *name) {
    long ready, consumers;
    return passive_declare(conn, name, &ready, &consumers) ? consumers : -1;
}

/* Waits until publishes first+1 .. first+count on channel 1 are confirmed.
 * RabbitMQ may confirm several at once (multiple), in any grouping. */
static void wait_confirms(conn_state *st, uint64_t first, int count) {
    unsigned char done[CONFIRM_BATCH];
    int remaining = count;
    double deadline = now_s() + RPC_TIMEOUT_S * itest_scale();

    assert_true(count > 0 && count <= CONFIRM_BATCH);
    memset(done, 0, sizeof done);
    while (remaining > 0) {
        amqp_frame_t f;
        struct timeval tv = to_timeval(deadline - now_s());
        int rc = amqp_simple_wait_frame_noblock(st->conn, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT) {
            fail_msg("itest: %d of %d publishes unconfirmed after %.0f s",
                     remaining, count, RPC_TIMEOUT_S * itest_scale());
        }
        if (rc != AMQP_STATUS_OK) {
            fail_msg("itest: connection lost waiting for confirms: %s",
                     amqp_error_string2(rc));
        }
        if (f.frame_type != AMQP_FRAME_METHOD) {
            continue;
        }
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            uint64_t lo = a->multiple ? first + 1 : a->delivery_tag;
            for (uint64_t t = lo; t <= a->delivery_tag; t++) {
                if (t > first && t <= first + (uint64_t)count &&
                    !done[t - first - 1]) {
                    done[t - first - 1] = 1;
                    remaining--;
                }
            }
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            amqp_basic_nack_t *n = f.payload.method.decoded;
            fail_msg("itest: broker nacked publish #%llu",
                     (unsigned long long)n->delivery_tag);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            amqp_basic_return_t *ret = f.payload.method.decoded;
            amqp_message_t m;
            char ex[256], rk[256], text[256];
            copy_bytes(ex, sizeof ex, ret->exchange);
            copy_bytes(rk, sizeof rk, ret->routing_key);
            copy_bytes(text, sizeof text, ret->reply_text);
            /* The returned content follows; read it so the stream stays
             * in step, though the test fails right after. */
            (void)amqp_read_message(st->conn, f.channel, &m, 0);
            amqp_destroy_message(&m);
            fail_msg("itest: message to exchange '%s' routing key '%s' was "
                     "returned (%s): declare the queue first",
                     ex, rk, text);
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD: {
            amqp_rpc_reply_t r;
            char buf[768];
            int closed, code;
            r.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION;
            r.reply = f.payload.method;
            r.library_error = 0;
            describe_reply(st->conn, r, f.channel, buf, sizeof buf, &closed,
                           &code);
            fail_msg("itest: while publishing: %s", buf);
            break;
        }
        default:
            break;
        }
    }
    amqp_maybe_release_buffers(st->conn);
}

static void publish_raw(conn_state *st, const char *exchange,
                        const char *routing_key, const char *message_id,
                        const char *content_type, const void *body, size_t len,
                        const amqp_table_t *headers) {
    amqp_basic_properties_t p;
    amqp_bytes_t b;
    int rc;

    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = 2;
    if (message_id != NULL) {
        p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p.message_id = amqp_cstring_bytes(message_id);
    }
    if (content_type != NULL) {
        p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p.content_type = amqp_cstring_bytes(content_type);
    }
    if (headers != NULL) {
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers = *headers;
    }
    b.len = len;
    b.bytes = (void *)body;
    rc = amqp_basic_publish(st->conn, PUB_CH, amqp_cstring_bytes(exchange),
                            amqp_cstring_bytes(routing_key), 1, 0, &p, b);
    if (rc != AMQP_STATUS_OK) {
        fail_msg("itest: publish to '%s'/'%s' failed: %s", exchange,
                 routing_key, amqp_error_string2(rc));
    }
    st->published++;
}

void itest_publish_headers(amqp_connection_state_t conn, const char *exchange,
                           const char *routing_key, const char *message_id,
                           const void *body, size_t len,
                           const amqp_table_t *headers) {
    conn_state *st = state_of(conn);
    uint64_t first = st->published;
    publish_raw(st, exchange, routing_key, message_id, NULL, body, len,
                headers);
    wait_confirms(st, first, 1);
}

void itest_publish(amqp_connection_state_t conn, const char *exchange,
                   const char *routing_key, const char *message_id,
                   const void *body, size_t len) {
    itest_publish_headers(conn, exchange, routing_key, message_id, body, len,
                          NULL);
}

void itest_publish_n(amqp_connection_state_t conn, const char *exchange,
                     const char *routing_key, const char *prefix, int n,
                     const void *body, size_t len) {
    conn_state *st = state_of(conn);
    char id[256];
    char json[512];

    assert_true(n >= 0);
    if (strlen(prefix) > 200) {
        fail_msg("itest: id prefix longer than 200 bytes");
    }
    for (int i = 0; i < n;) {
        uint64_t first = st->published;
        int batch = n - i < CONFIRM_BATCH ? n - i : CONFIRM_BATCH;
        for (int j = 0; j < batch; j++, i++) {
            snprintf(id, sizeof id, "%s-%d", prefix, i);
            if (body != NULL) {
                publish_raw(st, exchange, routing_key, id, NULL, body, len,
                            NULL);
            } else {
                int m = snprintf(json, sizeof json, "{\"id\":\"%s\",\"n\":%d}",
                                 id, i);
                publish_raw(st, exchange, routing_key, id, "application/json",
                            json, (size_t)m, NULL);
            }
        }
        wait_confirms(st, first, batch);
    }
}

int itest_get(amqp_connection_state_t conn, const char *queue, itest_msg *msg,
              int flags) {
    conn_state *st = state_of(conn);
    int requeue = (flags & ITEST_GET_REQUEUE) != 0;
    amqp_basic_get_ok_t *ok;
    amqp_basic_properties_t *p;
    amqp_rpc_reply_t r;
    uint64_t tag;

    memset(msg, 0, sizeof *msg);
    mgmt_channel(st);
    r = amqp_basic_get(conn, MGMT_CH, amqp_cstring_bytes(queue), !requeue);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        check_rpc(conn, MGMT_CH, "basic.get from queue", queue);
    }
    if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) {
        return 0;
    }
    if (r.reply.id != AMQP_BASIC_GET_OK_METHOD) {
        fail_msg("itest: basic.get from '%s': unexpected method 0x%08x", queue,
                 (unsigned)r.reply.id);
    }
    ok = r.reply.decoded;
    tag = ok->delivery_tag;
    msg->redelivered = ok->redelivered != 0;
    msg->message_count = ok->message_count;
    copy_bytes(msg->exchange, sizeof msg->exchange, ok->exchange);
    copy_bytes(msg->routing_key, sizeof msg->routing_key, ok->routing_key);

    r = amqp_read_message(conn, MGMT_CH, &msg->raw, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        check_rpc(conn, MGMT_CH, "reading message from queue", queue);
    }
    msg->len = msg->raw.body.len;
    msg->body = malloc(msg->len + 1);
    assert_non_null(msg->body);
    if (msg->len > 0) {
        memcpy(msg->body, msg->raw.body.bytes, msg->len);
    }
    msg->body[msg->len] = '\0';

    p = &msg->raw.properties;
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
        copy_bytes(msg->message_id, sizeof msg->message_id, p->message_id);
    }
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) {
        copy_bytes(msg->content_type, sizeof msg->content_type,
                   p->content_type);
    }
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) {
        copy_bytes(msg->correlation_id, sizeof msg->correlation_id,
                   p->correlation_id);
    }
    msg->persistent =
        (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) && p->delivery_mode == 2;

    if (requeue) {
        int rc = amqp_basic_reject(conn, MGMT_CH, tag, 1);
        if (rc != AMQP_STATUS_OK) {
            fail_msg("itest: requeue on '%s' failed: %s", queue,
                     amqp_error_string2(rc));
        }
    }
    return 1;
}

const amqp_field_value_t *itest_msg_header(const itest_msg *msg,
                                           const char *name) {
    const amqp_basic_properties_t *p = &msg->raw.properties;
    size_t n = strlen(name);
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG)) {
        return NULL;
    }
    for (int i = 0; i < p->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        if (e->key.len == n && memcmp(e->key.bytes, name, n) == 0) {
            return &e->value;
        }
    }
    return NULL;
}

void itest_msg_free(itest_msg *msg) {
    if (msg == NULL) {
        return;
    }
    free(msg->body);
    msg->body = NULL;
    /* amqp_read_message() initialises the pool; a zeroed one was never
     * used. */
    if (msg->raw.pool.pagesize != 0) {
        amqp_destroy_message(&msg->raw);
    }
    memset(&msg->raw, 0, sizeof msg->raw);
}

int itest_wait_until(int (*cond)(void *arg), void *arg, double timeout_s) {
    double deadline = now_s() + timeout_s * itest_scale();
    for (;;) {
        if (cond(arg)) {
            return 1;
        }
        if (now_s() >= deadline) {
            return 0;
        }
        sleep_ms(20);
    }
}

char *itest_tmpdir(void) {
    char tmpl[] = "/tmp/warren-itest-XXXXXX";
    char *dir;
    /* mkdtemp creates it 0700. */
    if (mkdtemp(tmpl) == NULL) {
        fail_msg("itest: mkdtemp: %s", strerror(errno));
    }
    dir = strdup(tmpl);
    assert_non_null(dir);
    return dir;
}

static int rm_entry(const char *path, const struct stat *sb, int type,
                    struct FTW *ftw) {
    (void)sb;
    (void)type;
    (void)ftw;
    if (remove(path) != 0 && errno != ENOENT) {
        print_error("itest: remove %s: %s\n", path, strerror(errno));
    }
    return 0;
}

void itest_rmtree(const char *path) {
    if (path == NULL || path[0] == '\0' || strcmp(path, "/") == 0) {
        return;
    }
    (void)nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void itest_write_file(const char *path, const char *text) {
    size_t len = strlen(text);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fail_msg("itest: cannot create %s: %s", path, strerror(errno));
    }
    while (len > 0) {
        ssize_t w = write(fd, text, len);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            int e = errno;
            close(fd);
            fail_msg("itest: write %s: %s", path, strerror(e));
        }
        text += w;
        len -= (size_t)w;
    }
    if (close(fd) != 0) {
        fail_msg("itest: close %s: %s", path, strerror(errno));
    }
}

long itest_count_lines(const char *path) {
    FILE *f = fopen(path, "re");
    long lines = 0;
    int c;
    if (f == NULL) {
        return -1;
    }
    while ((c = getc(f)) != EOF) {
        if (c == '\n') {
            lines++;
        }
    }
    fclose(f);
    return lines;
}

const char *itest_warren_bin(void) {
    static char path[PATH_MAX];
    const char *dir = getenv("WARREN_BUILD_DIR");
    if (dir == NULL || dir[0] == '\0') {
        fail_msg("itest: WARREN_BUILD_DIR is not set (ctest sets it)");
    }
    if ((size_t)snprintf(path, sizeof path, "%s/bin/warren", dir) >=
        sizeof path) {
        fail_msg("itest: WARREN_BUILD_DIR is too long");
    }
    return path;
}

pid_t itest_spawn(const char *path, const char *const argv[],
                  const char *log_path) {
    const char *url = itest_url();
    pid_t parent = getpid();
    pid_t pid;
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        fail_msg("itest: cannot open log %s: %s", log_path, strerror(errno));
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fd);
        fail_msg("itest: fork: %s", strerror(e));
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        /* A test that dies must not leave a worker consuming from the
         * shared broker. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent || null < 0 || dup2(null, 0) < 0 ||
            dup2(fd, 1) < 0 || dup2(fd, 2) < 0) {
            _exit(127);
        }
        /* Single-threaded child of a single-threaded test: setenv is
         * safe here. */
        setenv("WARREN_URL", url, 1);
        execv(path, (char *const *)argv);
        dprintf(2, "itest: exec %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    close(fd);
    return pid;
}

pid_t itest_spawn_warren(const char *const args[], const char *log_path) {
    const char *argv[64];
    int n = 0;
    argv[n++] = itest_warren_bin();
    for (int i = 0; args != NULL && args[i] != NULL; i++) {
        if (n >= 63) {
            fail_msg("itest: too many arguments for warren");
        }
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    return itest_spawn(argv[0], argv, log_path);
}

int itest_wait_exit(pid_t pid, double timeout_s, int *status) {
    double deadline = now_s() + timeout_s * itest_scale();
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (status != NULL) {
                *status = st;
            }
            return 1;
        }
        if (r < 0 && errno != EINTR) {
            fail_msg("itest: waitpid(%d): %s", (int)pid, strerror(errno));
        }
        if (now_s() >= deadline) {
            return 0;
        }
        sleep_ms(20);
    }
}

int itest_terminate(pid_t pid, double timeout_s) {
    int status = 0;
    if (kill(pid, SIGTERM) != 0 && errno != ESRCH) {
        fail_msg("itest: kill(%d): %s", (int)pid, strerror(errno));
    }
    if (itest_wait_exit(pid, timeout_s, &status)) {
        return status;
    }
    print_error("itest: pid %d ignored SIGTERM for %.0f s; killing it\n",
                (int)pid, timeout_s * itest_scale());
    kill(pid, SIGKILL);
    if (!itest_wait_exit(pid, 10.0, &status)) {
        fail_msg("itest: pid %d survived SIGKILL", (int)pid);
    }
    return status;
}

int itest_broker(const char *cmd) {
    const char *name = getenv("WARREN_BROKER_NAME");
    const char *src = getenv("WARREN_SOURCE_DIR");
    char script[PATH_MAX];
    int status = 0;
    pid_t pid;

    if (name == NULL || name[0] == '\0') {
        print_message("itest: WARREN_BROKER_NAME is unset: the broker is "
                      "not ours to %s; skipping\n",
                      cmd);
        skip();
    }
    if (src == NULL || src[0] == '\0') {
        fail_msg("itest: WARREN_SOURCE_DIR is not set (ctest sets it)");
    }
    if ((size_t)snprintf(script, sizeof script, "%s/scripts/broker", src) >=
        sizeof script) {
        fail_msg("itest: WARREN_SOURCE_DIR is too long");
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        fail_msg("itest: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        /* The URL the script prints goes to the test's log, not into
         * cmocka's report on stdout. */
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, 0) < 0 || dup2(2, 1) < 0) {
            _exit(127);
        }
        execlp("bash", "bash", script, cmd, "--name", name, (char *)NULL);
        dprintf(2, "itest: exec bash %s: %s\n", script, strerror(errno));
        _exit(127);
    }
    /* The script bounds its own waits; this is a backstop. */
    if (!itest_wait_exit(pid, 240.0, &status)) {
        kill(pid, SIGKILL);
        (void)itest_wait_exit(pid, 10.0, &status);
        fail_msg("itest: scripts/broker %s did not finish", cmd);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

long itest_settled_count(const char *log_path) {
    FILE *fp = fopen(log_path, "r");
    char line[1024];
    long n = 0;
    if (fp == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, fp)) {
        n += strstr(line, "\"outcome\":\"ack\"") != NULL ||
             strstr(line, "\"outcome\":\"duplicate\"") != NULL;
    }
    fclose(fp);
    return n;
}

int itest_delay_cascade_empty(amqp_connection_state_t conn) {
    for (int level = 0; level < 28; level++) {
        char q[32];
        snprintf(q, sizeof q, "warren.delay.%d", level);
        if (itest_queue_depth(conn, q) > 0) {
            return 0;
        }
    }
    return 1;
}

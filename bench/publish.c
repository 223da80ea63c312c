/*
 * publish.c - the benchmark's publisher and queue helper, on bare rabbitmq-c
 * so that what it measures never depends on warren's own session code.
 *
 * It publishes N persistent messages of a fixed size with ids PREFIX-i,
 * either as fast as the broker confirms them (a window of unconfirmed
 * messages, confirms read as they come) or at a fixed rate, in which case
 * each id also carries the send time in microseconds (PREFIX-i-USEC) so a
 * later pass can compute publish -> outcome latency. It also declares,
 * purges and counts queues. The URL comes from WARREN_URL, never argv.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define WINDOW 4000 /* unconfirmed messages in flight */
#define CONFIRM_WAIT_S 30

static void die(const char *what) {
    fprintf(stderr, "bench_publish: %s\n", what);
    exit(1);
}

static void check_rpc(amqp_rpc_reply_t r, const char *what) {
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "bench_publish: %s failed (reply type %d)\n", what,
                (int)r.reply_type);
        exit(1);
    }
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static amqp_connection_state_t connect_url(void) {
    const char *env = getenv("WARREN_URL");
    struct amqp_connection_info ci;
    if (env == NULL || env[0] == '\0') {
        die("WARREN_URL is not set");
    }
    char *url = strdup(env);
    if (url == NULL || amqp_parse_url(url, &ci) != AMQP_STATUS_OK) {
        die("cannot parse WARREN_URL");
    }
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    struct timeval tv = {10, 0};
    if (sock == NULL ||
        amqp_socket_open_noblock(sock, ci.host, ci.port, &tv) != 0) {
        die("cannot connect");
    }
    check_rpc(amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
                         ci.user, ci.password),
              "login");
    amqp_channel_open(conn, 1);
    check_rpc(amqp_get_rpc_reply(conn), "channel.open");
    free(url);
    return conn;
}

static void close_conn(amqp_connection_state_t conn) {
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}

/* Reads confirms until `*confirmed` reaches `until` or, with a zero
 * timeout, until nothing more is buffered. RabbitMQ confirms one queue's
 * messages in order, so the highest tag acked is the count confirmed. */
static void read_confirms(amqp_connection_state_t conn, uint64_t *confirmed,
                          uint64_t until, int64_t timeout_us) {
    int64_t deadline = now_us() + timeout_us;
    while (*confirmed < until) {
        amqp_frame_t f;
        int64_t left = deadline - now_us();
        if (left < 0) {
            left = 0;
        }
        struct timeval tv = {(time_t)(left / 1000000),
                             (suseconds_t)(left % 1000000)};
        int rc = amqp_simple_wait_frame_noblock(conn, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT) {
            if (timeout_us >= (int64_t)CONFIRM_WAIT_S * 1000000) {
                die("timed out waiting for publisher confirms");
            }
            return;
        }
        if (rc != AMQP_STATUS_OK) {
            die("connection lost while waiting for confirms");
        }
        if (f.frame_type != AMQP_FRAME_METHOD) {
            continue;
        }
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            if (a->delivery_tag > *confirmed) {
                *confirmed = a->delivery_tag;
            }
        } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
            die("the broker nacked a message");
        } else if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                   f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
            die("the broker closed the channel");
        }
    }
}

static void publish(amqp_connection_state_t conn, const char *queue, long n,
                    const char *prefix, size_t size, double rate) {
    char *body = malloc(size ? size : 1);
    char id[128];
    uint64_t confirmed = 0;
    if (body == NULL) {
        die("out of memory");
    }
    for (size_t i = 0; i < size; i++) {
        body[i] = (char)('a' + i % 26);
    }
    amqp_confirm_select(conn, 1);
    check_rpc(amqp_get_rpc_reply(conn), "confirm.select");
    /* BENCH_EXCHANGE measures the broker's cost of a route, e.g. the
     * delay cascade a retry copy takes; QUEUE is then the routing key. */
    const char *ex = getenv("BENCH_EXCHANGE");
    amqp_bytes_t exchange = ex ? amqp_cstring_bytes(ex) : amqp_empty_bytes;
    int64_t t0 = now_us();
    for (long i = 0; i < n; i++) {
        if (rate > 0) {
            int64_t due = t0 + (int64_t)((double)i * 1e6 / rate);
            int64_t wait = due - now_us();
            if (wait > 0) {
                /* Waiting for the next slot doubles as reading confirms. */
                read_confirms(conn, &confirmed, (uint64_t)n, wait);
            }
            snprintf(id, sizeof id, "%s-%ld-%lld", prefix, i,
                     (long long)now_us());
        } else {
            snprintf(id, sizeof id, "%s-%ld", prefix, i);
        }
        amqp_basic_properties_t p;
        memset(&p, 0, sizeof p);
        p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
                   AMQP_BASIC_TIMESTAMP_FLAG;
        p.delivery_mode = 2;
        p.message_id = amqp_cstring_bytes(id);
        p.timestamp = (uint64_t)(now_us() / 1000000);
        amqp_bytes_t b = {size, body};
        if (amqp_basic_publish(conn, 1, exchange, amqp_cstring_bytes(queue), 0,
                               0, &p, b) != AMQP_STATUS_OK) {
            die("publish failed");
        }
        if ((uint64_t)(i + 1) - confirmed >= WINDOW) {
            read_confirms(conn, &confirmed, (uint64_t)(i + 1) - WINDOW / 2,
                          (int64_t)CONFIRM_WAIT_S * 1000000);
        }
    }
    read_confirms(conn, &confirmed, (uint64_t)n,
                  (int64_t)CONFIRM_WAIT_S * 1000000);
    double s = (double)(now_us() - t0) / 1e6;
    printf("%ld %.3f %.0f\n", n, s, s > 0 ? (double)n / s : 0.0);
    free(body);
}

static void usage(void) {
    fprintf(
        stderr,
        "usage: bench_publish publish QUEUE N PREFIX [SIZE [RATE]]\n"
        "       bench_publish declare|purge|delete|depth QUEUE\n"
        "WARREN_URL names the broker; BENCH_EXCHANGE, if set, the exchange\n"
        "to publish to (QUEUE is then the routing key). publish prints:\n"
        "N seconds msgs/s;"
        "depth prints the ready count (-1 if the queue is missing).\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        usage();
    }
    const char *cmd = argv[1], *queue = argv[2];
    amqp_bytes_t q = amqp_cstring_bytes(queue);
    amqp_connection_state_t conn = connect_url();
    if (strcmp(cmd, "publish") == 0 && argc >= 5) {
        long n = strtol(argv[3], NULL, 10);
        size_t size = argc > 5 ? (size_t)strtoul(argv[5], NULL, 10) : 256;
        double rate = argc > 6 ? strtod(argv[6], NULL) : 0;
        publish(conn, queue, n, argv[4], size, rate);
    } else if (strcmp(cmd, "declare") == 0) {
        amqp_queue_declare(conn, 1, q, 0, 1, 0, 0, amqp_empty_table);
        check_rpc(amqp_get_rpc_reply(conn), "queue.declare");
    } else if (strcmp(cmd, "purge") == 0) {
        amqp_queue_purge(conn, 1, q);
        check_rpc(amqp_get_rpc_reply(conn), "queue.purge");
    } else if (strcmp(cmd, "delete") == 0) {
        amqp_queue_delete(conn, 1, q, 0, 0);
        check_rpc(amqp_get_rpc_reply(conn), "queue.delete");
    } else if (strcmp(cmd, "depth") == 0) {
        amqp_queue_declare_ok_t *ok =
            amqp_queue_declare(conn, 1, q, 1, 0, 0, 0, amqp_empty_table);
        if (ok == NULL) {
            printf("-1\n");
            amqp_destroy_connection(conn);
            return 0;
        }
        printf("%u\n", ok->message_count);
    } else {
        usage();
    }
    close_conn(conn);
    return 0;
}

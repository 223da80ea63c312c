/*
 * raw_consumer.c - the baseline warren is measured against: a bare
 * rabbitmq-c consumer that does nothing but receive and acknowledge.
 *
 * It consumes exactly N messages from a queue with a prefetch window and
 * either acks with `multiple` every K deliveries or consumes in no-ack mode
 * (the broker's ceiling). The clock runs from basic.consume to the last
 * ack; it prints "N seconds msgs/s missing_ids". The URL comes from
 * WARREN_URL, never argv.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define IDLE_TIMEOUT_S 30

static void die(const char *what) {
    fprintf(stderr, "bench_raw_consumer: %s\n", what);
    exit(1);
}

static void check_rpc(amqp_rpc_reply_t r, const char *what) {
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "bench_raw_consumer: %s failed (reply type %d)\n", what,
                (int)r.reply_type);
        exit(1);
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: bench_raw_consumer QUEUE N PREFETCH ACK_EVERY"
                        "\n  ACK_EVERY 0 consumes in no-ack mode\n");
        return 2;
    }
    const char *queue = argv[1];
    long n = strtol(argv[2], NULL, 10);
    int prefetch = atoi(argv[3]);
    int ack_every = atoi(argv[4]);
    const char *env = getenv("WARREN_URL");
    struct amqp_connection_info ci;
    char *url = env ? strdup(env) : NULL;
    if (url == NULL || amqp_parse_url(url, &ci) != AMQP_STATUS_OK) {
        die("WARREN_URL is missing or not a URL");
    }
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    struct timeval ctv = {10, 0};
    if (sock == NULL ||
        amqp_socket_open_noblock(sock, ci.host, ci.port, &ctv) != 0) {
        die("cannot connect");
    }
    check_rpc(amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
                         ci.user, ci.password),
              "login");
    amqp_channel_open(conn, 1);
    check_rpc(amqp_get_rpc_reply(conn), "channel.open");
    amqp_basic_qos(conn, 1, 0, (uint16_t)prefetch, 0);
    check_rpc(amqp_get_rpc_reply(conn), "basic.qos");

    double t0 = now_s();
    amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0,
                       ack_every == 0, 0, amqp_empty_table);
    check_rpc(amqp_get_rpc_reply(conn), "basic.consume");
    long got = 0, missing_ids = 0;
    uint64_t last_tag = 0, acked_tag = 0;
    while (got < n) {
        amqp_envelope_t env_;
        struct timeval tv = {IDLE_TIMEOUT_S, 0};
        amqp_maybe_release_buffers(conn);
        amqp_rpc_reply_t r = amqp_consume_message(conn, &env_, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            amqp_frame_t f;
            if (amqp_simple_wait_frame(conn, &f) != AMQP_STATUS_OK) {
                die("connection lost");
            }
            continue;
        }
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            fprintf(stderr, "bench_raw_consumer: got %ld of %ld\n", got, n);
            die("consume failed or timed out");
        }
        if (!(env_.message.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) ||
            env_.message.properties.message_id.len == 0) {
            missing_ids++;
        }
        last_tag = env_.delivery_tag;
        got++;
        amqp_destroy_envelope(&env_);
        if (ack_every > 0 && got % ack_every == 0) {
            if (amqp_basic_ack(conn, 1, last_tag, 1) != 0) {
                die("ack failed");
            }
            acked_tag = last_tag;
        }
    }
    if (ack_every > 0 && acked_tag != last_tag &&
        amqp_basic_ack(conn, 1, last_tag, 1) != 0) {
        die("ack failed");
    }
    double s = now_s() - t0;
    printf("%ld %.3f %.0f %ld\n", got, s, (double)got / s, missing_ids);
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
    free(url);
    return 0;
}

/*
 * Support library for warren's integration tests (cmocka): talks to the
 * private broker with rabbitmq-c directly, independent of the code under
 * test, so a bug in warren's session layer cannot hide itself. Every helper
 * either succeeds or fails the current cmocka test with a message that says
 * what went wrong; none returns a half-done state. Waits are bounded and
 * scaled by WARREN_TEST_TIMEOUT_SCALE. Single-threaded use only.
 */
#ifndef WARREN_ITEST_H
#define WARREN_ITEST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <sys/types.h>
#include <cmocka.h>

#include <amqp.h>

/* The broker URL from WARREN_TEST_URL; fails the test if it is unset. */
const char *itest_url(void);

/* WARREN_TEST_TIMEOUT_SCALE (default 1): multiply every deadline by it. */
double itest_scale(void);

/*
 * Opens a connection to itest_url() (heartbeats off: a test may sit in a
 * wait for a long time without calling into the library) with channel 1 in
 * publisher-confirm mode. Free with itest_disconnect().
 */
amqp_connection_state_t itest_connect(void);

/* The same to another broker (a node of a test cluster, say). */
amqp_connection_state_t itest_connect_url(const char *url);

/* Closes and frees; tolerates NULL and a connection the broker dropped. */
void itest_disconnect(amqp_connection_state_t conn);

/* Declares a durable classic queue with no arguments (what warren declares
 * by default, so the two declarations are equivalent). */
void itest_queue_declare(amqp_connection_state_t conn, const char *name);

/* Declares a durable queue with arguments (borrowed), e.g. x-queue-type. */
void itest_queue_declare_args(amqp_connection_state_t conn, const char *name,
                              const amqp_table_t *args);

/* Deletes the queue; a missing queue is not an error. */
void itest_queue_delete(amqp_connection_state_t conn, const char *name);

/* Removes every ready message from the queue. */
void itest_queue_purge(amqp_connection_state_t conn, const char *name);

/* Ready messages in the queue (passive declare), or -1 if it does not
 * exist. Unacked deliveries are not counted. */
long itest_queue_depth(amqp_connection_state_t conn, const char *name);
/* Consumers of the queue (passive declare), or -1 if it does not exist. */
long itest_queue_consumers(amqp_connection_state_t conn, const char *name);

/*
 * Publishes one persistent message (mandatory) and waits for the broker's
 * confirm. Fails the test on a nack, on an unroutable message (declare the
 * queue first) or after 10 s (scaled). exchange "" is the default exchange.
 * message_id may be NULL (no id property).
 */
void itest_publish(amqp_connection_state_t conn, const char *exchange,
                   const char *routing_key, const char *message_id,
                   const void *body, size_t len);

/* As itest_publish, with extra headers (borrowed; NULL for none). */
void itest_publish_headers(amqp_connection_state_t conn, const char *exchange,
                           const char *routing_key, const char *message_id,
                           const void *body, size_t len,
                           const amqp_table_t *headers);

/*
 * Publishes n persistent messages with ids "PREFIX-0" .. "PREFIX-(n-1)",
 * confirmed in batches (much faster than one confirm per message). With
 * body NULL each body is the JSON {"id":"PREFIX-i","n":i}; otherwise every
 * message carries the same body.
 */
void itest_publish_n(amqp_connection_state_t conn, const char *exchange,
                     const char *routing_key, const char *prefix, int n,
                     const void *body, size_t len);

/* A message fetched with itest_get(); free with itest_msg_free(). */
typedef struct itest_msg {
    char *body; /* malloc'd, NUL-terminated (the NUL is not in len) */
    size_t len;
    char message_id[257];   /* "" when absent */
    char content_type[128]; /* "" when absent */
    char correlation_id[257];
    char exchange[256];
    char routing_key[256];
    int redelivered;
    int persistent;         /* delivery_mode 2 */
    uint32_t message_count; /* messages left in the queue after this one */
    amqp_message_t raw;     /* owns raw.properties.headers */
} itest_msg;

enum {
    /* Put the message back in the queue after reading it (basic.reject
     * with requeue), so the test can look without consuming. */
    ITEST_GET_REQUEUE = 1 << 0
};

/*
 * basic.get from the queue into *msg. Returns 1 with a message, 0 if the
 * queue is empty (msg then holds nothing to free, but freeing is harmless).
 * Without ITEST_GET_REQUEUE the message is removed from the queue.
 */
int itest_get(amqp_connection_state_t conn, const char *queue, itest_msg *msg,
              int flags);

/* A header of a fetched message, or NULL if absent. Valid until
 * itest_msg_free(). */
const amqp_field_value_t *itest_msg_header(const itest_msg *msg,
                                           const char *name);

void itest_msg_free(itest_msg *msg);

/*
 * Polls cond(arg) every 20 ms until it returns non-zero (returns 1) or
 * timeout_s * itest_scale() seconds pass (returns 0).
 */
int itest_wait_until(int (*cond)(void *arg), void *arg, double timeout_s);

/* A fresh 0700 directory under /tmp; malloc'd path, free it yourself.
 * itest_rmtree() removes it and everything in it. */
char *itest_tmpdir(void);
void itest_rmtree(const char *path);

/* Writes text to path (created 0600, truncated). */
void itest_write_file(const char *path, const char *text);

/* Number of newline-terminated lines in the file, -1 if it cannot be
 * opened (e.g. not created yet). */
long itest_count_lines(const char *path);

/* $WARREN_BUILD_DIR/bin/warren (fails the test if WARREN_BUILD_DIR is
 * unset). Static storage. */
const char *itest_warren_bin(void);

/*
 * Runs path with argv (argv[0] included, NULL-terminated), stdin from
 * /dev/null, stdout and stderr appended to log_path, WARREN_URL=itest_url()
 * added to the environment, and SIGTERM delivered if the test process dies.
 * Returns the child's pid.
 */
pid_t itest_spawn(const char *path, const char *const argv[],
                  const char *log_path);

/* itest_spawn() of the warren binary; args are what follows "warren"
 * (NULL-terminated), e.g. {"run", "-c", cfg, NULL}. */
pid_t itest_spawn_warren(const char *const args[], const char *log_path);

/* Waits up to timeout_s (scaled) for pid to exit. Returns 1 and stores the
 * waitpid() status in *status (if not NULL), or 0 on timeout. */
int itest_wait_exit(pid_t pid, double timeout_s, int *status);

/* SIGTERM, wait up to timeout_s (scaled), then SIGKILL; returns the
 * waitpid() status. For cleanup after a failing assertion, too. */
int itest_terminate(pid_t pid, double timeout_s);

/*
 * Runs `$WARREN_SOURCE_DIR/scripts/broker CMD --name $WARREN_BROKER_NAME`
 * (e.g. "restart", "stop", "start") and returns its exit status. Skips the
 * test if WARREN_BROKER_NAME is unset (a broker someone else runs cannot
 * be restarted). Connections made before a restart are dead afterwards.
 */
int itest_broker(const char *cmd);

/* Lines of a `warren run --log-level debug` log that settle a delivery for
 * good ("outcome":"ack" or "duplicate"); a retried or deferred delivery
 * settles when its copy comes back. 0 if the log does not exist yet.
 * Stop a pool only once this reaches the number published: a clean stop
 * releases prefetched deliveries back to the queue. */
long itest_settled_count(const char *log_path);

/* 1 if no queue of the classic delay cascade (warren.delay.0..27) holds a
 * message (missing queues count as empty). */
int itest_delay_cascade_empty(amqp_connection_state_t conn);

#endif

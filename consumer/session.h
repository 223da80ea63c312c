/*
 * session.h - the AMQP seam: every call into rabbitmq-c lives in session.c.
 *
 * A session is one connection with one channel, used from one thread. It
 * runs its own frame dispatcher instead of rabbitmq-c's consume helper, so
 * that deliveries, publisher confirms (basic.ack/nack), basic.return,
 * consumer cancels, channel/connection closes and connection.blocked are all
 * seen, whichever arrives first. Broker refusals are translated here into
 * WARREN_ERR_* codes with the broker's own text kept in the error string.
 * Message properties and header tables cross it in warren's own types
 * (props.h): no other file includes rabbitmq-c.
 */
#ifndef WARREN_SESSION_H
#define WARREN_SESSION_H

#include "config.h"
#include "msg.h"
#include "props.h"
#include "topology.h"

#include <stddef.h>
#include <stdint.h>

typedef struct warren__session warren__session;

/* Connects to cfg->broker.urls[url_index] (amqp:// or amqps://, peer
 * verified unless the config turns it off), logs in with the client
 * capabilities advertised, opens the channel and enables publisher
 * confirms. On failure returns CONNECT / AUTH / VHOST / TLS / TIMEOUT and
 * writes a message (password redacted, saying what to do) into `err`. */
int warren__session_connect(const struct warren_config *cfg, int url_index,
                            warren__session **out, char *err, size_t errlen);
void warren__session_free(warren__session *s); /* closes; NULL no-op */
const char *warren__session_errstr(const warren__session *s);
uint32_t warren__session_frame_max(const warren__session *s);
/* 1 once the connection or channel is unusable: build a new session. */
int warren__session_broken(const warren__session *s);
/* 1 while the broker has blocked publishing (connection.blocked). */
int warren__session_blocked(const warren__session *s);

/* Executes a topology plan. A queue existing with other arguments returns
 * WARREN_ERR_PRECONDITION with the broker's text and which argument differs.
 * (The channel is reopened after such a refusal.) */
int warren__session_apply(warren__session *s, const warren__topo_op *ops,
                          int n);
/* Passive declare: sets message and consumer counts, NOT_FOUND if none. */
int warren__session_queue_info(warren__session *s, const char *queue,
                               uint32_t *messages, uint32_t *consumers);
int warren__session_queue_purge(warren__session *s, const char *queue);
int warren__session_queue_delete(warren__session *s, const char *queue);

int warren__session_qos(warren__session *s, uint16_t prefetch);
int warren__session_consume(warren__session *s, const char *queue);
/* basic.cancel: no more deliveries after those already sent. */
int warren__session_cancel(warren__session *s);

/* A delivery, filled by next() or get(). Everything it points to is owned
 * by the delivery itself (its body buffer and its pool, both reused by the
 * next fill), so it survives the connection's buffer releases. Zero it, or
 * call warren__delivery_init(), before first use. */
typedef struct warren__delivery {
    struct warren_msg msg;
    uint8_t *body; /* grown as needed, reused */
    size_t body_cap;
    char exchange[WARREN__NAME_MAX];
    char routing_key[WARREN__NAME_MAX];
    char content_type[WARREN__NAME_MAX];
    char correlation_id[WARREN__NAME_MAX];
    char message_id[WARREN__NAME_MAX];
    warren__props props; /* deep copy, in `pool` */
    warren__arena pool;
    int pool_ready;
    int too_large; /* body over the limit: drained, not kept */
    /* The body is in an unlinked temporary file instead of `body` (see
     * warren__session_spool()): a too_large body, whole, to be published
     * from there; or a body parked while the pending list was full, read
     * back into `body` by next(). `body_lost`: too_large and not kept
     * anywhere (no spooling, or the spool failed): a copy of it would be
     * empty, so it must not be acked as dead-lettered. */
    int spooled;
    int spool_fd;
    uint64_t spool_len;
    int body_lost;
    struct warren__delivery *next; /* the session's pending list */
} warren__delivery;

void warren__delivery_init(warren__delivery *d);
void warren__delivery_free(warren__delivery *d); /* buffers; NULL no-op */
/* Closes (and so deletes) a spooled body's file, if any. */
void warren__delivery_drop_spool(warren__delivery *d);
/* Exchanges two deliveries (a worker moving the ones it holds), keeping
 * each one's view pointing into itself. */
void warren__delivery_swap(warren__delivery *a, warren__delivery *b);

/* Waits up to `timeout_ms` (0: only what is already buffered or readable
 * now) for the next delivery. Returns 1 with `d` filled, 0 on timeout, or a
 * negative error (CONNECTION, CHANNEL, CANCELLED, ...). Bodies over
 * `max_body` are drained, with `too_large` set and the first bytes kept.
 * Confirms and returns arriving meanwhile are recorded. Heartbeats are
 * serviced. */
int warren__session_next(warren__session *s, warren__delivery *d,
                         uint64_t max_body, int timeout_ms);
/* Bounds what deliveries hold in memory, for a consumer (the dlq tool does
 * not call this, and keeps draining too-large bodies). From now on a body
 * over `max_body`, whether read by next() or while waiting for confirms
 * (which otherwise reads with no limit), is written frame by frame to an
 * unlinked temporary file in $TMPDIR (default /tmp) and marked too_large
 * and spooled; warren__session_publish_delivery() sends it from there.
 * Deliveries read ahead into the pending list keep at most
 * `pending_budget` bytes of bodies in memory; the rest are parked in such
 * files and read back when next() hands them out. If a spool file cannot
 * be written the body is drained and `body_lost` set. */
void warren__session_spool(warren__session *s, uint64_t max_body,
                           uint64_t pending_budget);
/* 1 if another delivery may be read without blocking. */
int warren__session_pending(warren__session *s);
/* Gives back memory rabbitmq-c holds for frames already consumed. */
void warren__session_release(warren__session *s);
/* Reads whatever frames are ready without blocking (deliveries go to the
 * pending list), which also sends heartbeats that are due. */
int warren__session_service(warren__session *s);

/* Heartbeats while a handler runs. rabbitmq-c sends heartbeats only inside
 * its own calls, so a handler running longer than 2 x heartbeat_s would get
 * the connection closed by the broker. Between begin() and end() the caller
 * promises to make no call on this session (from any thread); a helper
 * thread, started at connect when heartbeats are on, sends a heartbeat
 * frame every heartbeat_s/2 meanwhile, the two never using the connection
 * at once. end() returns once the helper is off the connection; if a send
 * failed the session is broken from then on. No-ops with heartbeats off. */
void warren__session_keepalive_begin(warren__session *s);
void warren__session_keepalive_end(warren__session *s);

int warren__session_ack(warren__session *s, uint64_t tag, int multiple);
int warren__session_nack(warren__session *s, uint64_t tag, int multiple,
                         int requeue);

/* Publishes persistently, mandatory, with confirms. `props` may be NULL
 * (then delivery_mode=2 and nothing else). Returns the confirm sequence
 * number in `*seq`. Does not wait. */
int warren__session_publish(warren__session *s, const char *exchange,
                            const char *routing_key, const warren__props *props,
                            const void *body, size_t len, uint64_t *seq);
/* Publishes a copy of delivery `d`'s body, as warren__session_publish()
 * does, from memory or, for a spooled body, from its file frame by frame
 * (never holding it whole). WARREN_ERR_INVAL if the body is lost. A read
 * error of the spool file midway leaves a message half sent: the session
 * is then broken (WARREN_ERR_IO). */
int warren__session_publish_delivery(warren__session *s, const char *exchange,
                                     const char *routing_key,
                                     const warren__props *props,
                                     const warren__delivery *d, uint64_t *seq);
/* Waits until every publish so far is confirmed, up to `timeout_ms`.
 * Returns 0 if all were acked and none returned; WARREN_ERR_PUBLISH if any
 * was nacked or returned unroutable (the text says which); TIMEOUT; or a
 * connection error. Deliveries arriving meanwhile are queued for next().
 * After a timeout the session is broken: confirms still owed would
 * otherwise be counted against the next wait's publishes (a late nack
 * failing them, a confirm that never comes timing them out), so the
 * caller reconnects and starts from a channel with nothing outstanding. */
int warren__session_wait_confirms(warren__session *s, int timeout_ms);

/* Reads one message with basic.get (no consumer): 1 and `d` filled, 0 if
 * the queue is empty. Used by the dlq tool. */
int warren__session_get(warren__session *s, const char *queue,
                        warren__delivery *d, uint64_t max_body);

/* The size of header table `t` encoded as a content header carries it,
 * found by encoding it into a frame-sized buffer the session keeps: 0 and
 * `*len` set, or WARREN_ERR_INVAL if it does not fit one frame (or cannot
 * be encoded: a key over 255 bytes), or WARREN_ERR_NOMEM. */
int warren__session_table_len(warren__session *s, const warren__table *t,
                              size_t *len);

/* Parses broker URL `url` (its first `len` bytes) as connect will: 0, or
 * WARREN_ERR_CONFIG with rabbitmq-c's reason in `why` (never the URL), or
 * WARREN_ERR_NOMEM. */
int warren__session_url_parse(const char *url, size_t len, char *why,
                              size_t whylen);

#endif /* WARREN_SESSION_H */

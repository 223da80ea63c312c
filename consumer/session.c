/*
 * session.c - every call into rabbitmq-c: connecting, declaring, consuming,
 * acknowledging and publishing with confirms on one channel.
 *
 * rabbitmq-c 0.11 has no confirm helper and its consume helper gives up on
 * any frame that is not a delivery, so this file reads frames itself and
 * dispatches each kind: deliveries are read whole into a warren__delivery
 * (or queued when the caller is waiting for confirms), basic.ack/nack settle
 * confirms, basic.return marks the batch's publishes failed, cancels and
 * closes make the session broken with the broker's own words kept.
 * Nothing here retries: the worker decides what a failure means.
 * Properties and header tables cross this seam in warren's own types
 * (props.h); session_amqp.c converts them.
 */
#include "session.h"

#include "log.h"
#include "session_amqp.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CHANNEL 1
#define FRAME_MAX 131072
#define RPC_TIMEOUT_S 30
#define ERR_MAX 1024
/* A spool file's pages are written back and dropped from the page cache
 * every this many bytes, so that a spooled body does not sit in memory
 * as dirty cache (which a memory cgroup counts) either. */
#define SPOOL_FLUSH_BYTES ((uint64_t)4 << 20)

struct warren__session {
    amqp_connection_state_t conn;
    char err[ERR_MAX];
    char url_redacted[512];
    int broken;  /* connection or channel unusable */
    int blocked; /* connection.blocked in force */
    int cancelled;
    char consumer_tag[WARREN__NAME_MAX];

    /* publisher confirms: sequence numbers not yet acked/nacked, ascending */
    uint64_t publish_seq;
    uint64_t *unconfirmed;
    size_t n_unconfirmed, cap_unconfirmed;
    int publish_failed;
    char publish_err[256];
    /* rabbitmq-c's form of the properties being published (or of a table
     * being measured), and the frame-sized buffer tables are measured in:
     * one for the session's life, since a failed message is measured each
     * time and a malloc of 128 KiB is an mmap */
    warren__arena pub_arena;
    uint8_t *enc_buf;
    size_t enc_len;

    /* deliveries read while the caller waited for something else */
    warren__delivery *pending_head, *pending_tail, *free_list;
    /* warren__session_spool(): off (0) unless a consumer turned it on */
    int spool;
    uint64_t spool_max_body, pending_budget, pending_bytes;

    /* Keepalive: a helper thread that sends heartbeat frames while the
     * caller is inside a handler (between keepalive_begin and _end) and so
     * makes no rabbitmq-c calls of its own. `ka_mu` makes the two threads'
     * use of the connection exclusive; the thread touches it only while
     * `ka_active` is set. */
    int heartbeat_s;
    int ka_started;
    pthread_t ka_thread;
    pthread_mutex_t ka_mu;
    pthread_cond_t ka_cv;
    int ka_active, ka_quit, ka_failed;
    int64_t ka_next_ms;
    char ka_err[128];
};

static void set_err(warren__session *s, const char *fmt, ...)
    WARREN_PRINTF(2, 3);

static void set_err(warren__session *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
}

const char *warren__session_errstr(const warren__session *s) {
    return s ? s->err : "no session";
}

int warren__session_broken(const warren__session *s) {
    return s->broken;
}

int warren__session_blocked(const warren__session *s) {
    return s->blocked;
}

uint32_t warren__session_frame_max(const warren__session *s) {
    int fm = amqp_get_frame_max(s->conn);
    return fm > 0 ? (uint32_t)fm : FRAME_MAX;
}

static void bytes_to_cstr(amqp_bytes_t b, char *out, size_t outlen) {
    size_t n = b.len < outlen - 1 ? b.len : outlen - 1;
    if (n > 0) {
        memcpy(out, b.bytes, n);
    }
    out[n] = '\0';
}

/* Maps a failed RPC reply to an error code, keeping the broker's text. */
static int reply_error(warren__session *s, amqp_rpc_reply_t r,
                       const char *what) {
    char text[512] = "";
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return 0;
    case AMQP_RESPONSE_NONE:
        set_err(s, "%s: no reply from the broker", what);
        s->broken = 1;
        return WARREN_ERR_PROTOCOL;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        set_err(s, "%s: %s", what, amqp_error_string2(r.library_error));
        s->broken = 1;
        if (r.library_error == AMQP_STATUS_TIMEOUT) {
            return WARREN_ERR_TIMEOUT;
        }
        return WARREN_ERR_CONNECTION;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        break;
    }
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *m = r.reply.decoded;
        bytes_to_cstr(m->reply_text, text, sizeof text);
        amqp_send_method(s->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD,
                         &(amqp_connection_close_ok_t){0});
        s->broken = 1;
        set_err(s, "%s: broker closed the connection: %u %s", what,
                m->reply_code, text);
        if (m->reply_code == AMQP_ACCESS_REFUSED) {
            return WARREN_ERR_AUTH;
        }
        if (m->reply_code == AMQP_NOT_ALLOWED) {
            return WARREN_ERR_VHOST;
        }
        return WARREN_ERR_CONNECTION;
    }
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *m = r.reply.decoded;
        bytes_to_cstr(m->reply_text, text, sizeof text);
        amqp_send_method(s->conn, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD,
                         &(amqp_channel_close_ok_t){0});
        s->broken = 1;
        set_err(s, "%s: broker closed the channel: %u %s", what, m->reply_code,
                text);
        if (m->reply_code == AMQP_PRECONDITION_FAILED) {
            return WARREN_ERR_PRECONDITION;
        }
        if (m->reply_code == AMQP_NOT_FOUND) {
            return WARREN_ERR_NOT_FOUND;
        }
        if (m->reply_code == AMQP_ACCESS_REFUSED) {
            return WARREN_ERR_AUTH;
        }
        return WARREN_ERR_CHANNEL;
    }
    set_err(s, "%s: unexpected broker method 0x%08x", what, r.reply.id);
    s->broken = 1;
    return WARREN_ERR_PROTOCOL;
}

static int check_rpc(warren__session *s, const char *what) {
    return reply_error(s, amqp_get_rpc_reply(s->conn), what);
}

/* Opens channel 1 in confirm mode. Also used after a channel-level refusal
 * (a passive declare of a missing queue closes the channel). */
static int open_channel(warren__session *s) {
    amqp_channel_open(s->conn, CHANNEL);
    int rc = check_rpc(s, "opening channel");
    if (rc != 0) {
        return rc;
    }
    amqp_confirm_select(s->conn, CHANNEL);
    rc = check_rpc(s, "enabling publisher confirms");
    if (rc != 0) {
        return rc;
    }
    s->broken = 0;
    s->publish_seq = 0;
    s->n_unconfirmed = 0;
    return 0;
}

static int reopen_channel(warren__session *s) {
    int rc;
    char saved[ERR_MAX];
    /* Keep the refusal text: it is what the caller needs to see. */
    memcpy(saved, s->err, sizeof saved);
    rc = open_channel(s);
    memcpy(s->err, saved, sizeof saved);
    return rc;
}

static amqp_table_t client_properties(amqp_table_entry_t *entries,
                                      amqp_table_entry_t *caps) {
    static const char *names[] = {
        "publisher_confirms",         "consumer_cancel_notify",
        "connection.blocked",         "basic.nack",
        "exchange_exchange_bindings", "authentication_failure_close"};
    for (int i = 0; i < 6; i++) {
        caps[i].key = amqp_cstring_bytes(names[i]);
        caps[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        caps[i].value.value.boolean = 1;
    }
    entries[0].key = amqp_cstring_bytes("product");
    entries[0].value.kind = AMQP_FIELD_KIND_UTF8;
    entries[0].value.value.bytes = amqp_cstring_bytes("warren");
    entries[1].key = amqp_cstring_bytes("version");
    entries[1].value.kind = AMQP_FIELD_KIND_UTF8;
    entries[1].value.value.bytes = amqp_cstring_bytes(WARREN_VERSION_STRING);
    entries[2].key = amqp_cstring_bytes("capabilities");
    entries[2].value.kind = AMQP_FIELD_KIND_TABLE;
    entries[2].value.value.table.num_entries = 6;
    entries[2].value.value.table.entries = caps;
    return (amqp_table_t){.num_entries = 3, .entries = entries};
}

static int open_socket(warren__session *s, const struct warren_config *cfg,
                       const struct amqp_connection_info *ci) {
    amqp_socket_t *sock;
    int rc;
    if (ci->ssl) {
        sock = amqp_ssl_socket_new(s->conn);
        if (sock == NULL) {
            set_err(s, "%s: cannot create a TLS socket", s->url_redacted);
            return WARREN_ERR_TLS;
        }
        amqp_ssl_socket_set_verify_peer(sock, cfg->broker.verify_peer);
        amqp_ssl_socket_set_verify_hostname(sock, cfg->broker.verify_hostname);
        if (!cfg->broker.verify_peer || !cfg->broker.verify_hostname) {
            warren__log(WARREN_LOG_WARN, NULL,
                        "TLS peer verification is turned off for %s: the "
                        "connection can be intercepted",
                        s->url_redacted);
        }
        if (cfg->broker.ca_cert &&
            amqp_ssl_socket_set_cacert(sock, cfg->broker.ca_cert) != 0) {
            set_err(s, "broker.tls.ca_cert %s: cannot be read as a PEM CA",
                    cfg->broker.ca_cert);
            return WARREN_ERR_TLS;
        }
        if (cfg->broker.client_cert &&
            amqp_ssl_socket_set_key(sock, cfg->broker.client_cert,
                                    cfg->broker.client_key) != 0) {
            set_err(s, "broker.tls.client_cert/client_key: cannot be read");
            return WARREN_ERR_TLS;
        }
    } else {
        sock = amqp_tcp_socket_new(s->conn);
        if (sock == NULL) {
            set_err(s, "cannot create a socket");
            return WARREN_ERR_NOMEM;
        }
    }
    double t =
        cfg->broker.connect_timeout_s > 0 ? cfg->broker.connect_timeout_s : 10;
    struct timeval tv = {(time_t)t, (suseconds_t)((t - (time_t)t) * 1e6)};
    rc = amqp_socket_open_noblock(sock, ci->host, ci->port, &tv);
    if (rc == AMQP_STATUS_OK) {
        return 0;
    }
    if (rc == AMQP_STATUS_SSL_ERROR ||
        rc == AMQP_STATUS_SSL_CONNECTION_FAILED ||
        rc == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED ||
        rc == AMQP_STATUS_SSL_PEER_VERIFY_FAILED) {
        set_err(s,
                "%s: TLS handshake failed: %s (check broker.tls.ca_cert and "
                "that the certificate names host %s)",
                s->url_redacted, amqp_error_string2(rc), ci->host);
        return WARREN_ERR_TLS;
    }
    if (rc == AMQP_STATUS_TIMEOUT) {
        set_err(s,
                "%s: broker did not answer within %.1f s: is it running and "
                "reachable?",
                s->url_redacted, t);
        return WARREN_ERR_CONNECT;
    }
    set_err(s,
            "%s: cannot connect: %s (is RabbitMQ running and listening "
            "there? start it, or fix broker.url / WARREN_URL)",
            s->url_redacted, amqp_error_string2(rc));
    return WARREN_ERR_CONNECT;
}

/* ---- keepalive while a handler runs ------------------------------------ */

static void ka_deadline(struct timespec *ts, int64_t ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Wakes every heartbeat_s/8 and, while a handler runs, sends a heartbeat
 * frame once one is due. Waking on a timer rather than being signalled by
 * keepalive_begin() keeps the hot path free of futex wake-ups: begin and end
 * are an uncontended lock each. */
static void *keepalive_main(void *arg) {
    warren__session *s = arg;
    int64_t tick = (int64_t)s->heartbeat_s * 1000 / 8;
    if (tick < 50) {
        tick = 50;
    }
    pthread_mutex_lock(&s->ka_mu);
    while (!s->ka_quit) {
        struct timespec ts;
        ka_deadline(&ts, tick);
        pthread_cond_timedwait(&s->ka_cv, &s->ka_mu, &ts);
        if (s->ka_quit || !s->ka_active || s->ka_failed ||
            warren__mono_ms() < s->ka_next_ms) {
            continue;
        }
        amqp_frame_t hb;
        memset(&hb, 0, sizeof hb);
        hb.frame_type = AMQP_FRAME_HEARTBEAT;
        hb.channel = 0;
        int rc = amqp_send_frame(s->conn, &hb);
        if (rc != AMQP_STATUS_OK) {
            s->ka_failed = 1;
            snprintf(s->ka_err, sizeof s->ka_err, "%s", amqp_error_string2(rc));
        }
        s->ka_next_ms = warren__mono_ms() + (int64_t)s->heartbeat_s * 500;
    }
    pthread_mutex_unlock(&s->ka_mu);
    return NULL;
}

/* Starts the keepalive thread with every signal blocked in it, so that the
 * worker's SIGTERM/SIGINT handlers keep running on the main thread. */
static void keepalive_start(warren__session *s) {
    pthread_condattr_t ca;
    sigset_t all, old;
    if (s->heartbeat_s <= 0) {
        return;
    }
    if (pthread_mutex_init(&s->ka_mu, NULL) != 0) {
        return;
    }
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_cond_init(&s->ka_cv, &ca) != 0) {
        pthread_condattr_destroy(&ca);
        pthread_mutex_destroy(&s->ka_mu);
        return;
    }
    pthread_condattr_destroy(&ca);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&s->ka_thread, NULL, keepalive_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        /* Heartbeats then work as before: only inside library calls. */
        warren__log(WARREN_LOG_WARN, NULL,
                    "cannot start the heartbeat thread (%s): a handler "
                    "running longer than 2 x heartbeat_s loses the connection",
                    strerror(rc));
        pthread_cond_destroy(&s->ka_cv);
        pthread_mutex_destroy(&s->ka_mu);
        return;
    }
    s->ka_started = 1;
}

static void keepalive_stop(warren__session *s) {
    if (!s->ka_started) {
        return;
    }
    pthread_mutex_lock(&s->ka_mu);
    s->ka_quit = 1;
    s->ka_active = 0;
    pthread_cond_signal(&s->ka_cv);
    pthread_mutex_unlock(&s->ka_mu);
    pthread_join(s->ka_thread, NULL);
    pthread_cond_destroy(&s->ka_cv);
    pthread_mutex_destroy(&s->ka_mu);
    s->ka_started = 0;
}

void warren__session_keepalive_begin(warren__session *s) {
    if (s == NULL || !s->ka_started) {
        return;
    }
    pthread_mutex_lock(&s->ka_mu);
    s->ka_active = 1;
    /* rabbitmq-c sends its own heartbeat once heartbeat_s has passed
     * without a send, so the last frame may be up to heartbeat_s old: the
     * first one from here goes out a quarter period later, keeping every
     * gap well under the broker's 2 x heartbeat_s. */
    s->ka_next_ms = warren__mono_ms() + (int64_t)s->heartbeat_s * 250;
    pthread_mutex_unlock(&s->ka_mu);
}

void warren__session_keepalive_end(warren__session *s) {
    if (s == NULL || !s->ka_started) {
        return;
    }
    pthread_mutex_lock(&s->ka_mu);
    s->ka_active = 0;
    if (s->ka_failed && !s->broken) {
        s->broken = 1;
        set_err(s,
                "connection to the broker lost while sending a heartbeat: "
                "%s",
                s->ka_err);
    }
    pthread_mutex_unlock(&s->ka_mu);
}

int warren__session_connect(const struct warren_config *cfg, int url_index,
                            warren__session **out, char *err, size_t errlen) {
    struct amqp_connection_info ci;
    warren__session *s;
    char *url;
    int rc;

    *out = NULL;
    s = calloc(1, sizeof *s);
    url = strdup(cfg->broker.urls[url_index]);
    if (s == NULL || url == NULL) {
        free(s);
        free(url);
        snprintf(err, errlen, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    warren_redact_url(url, s->url_redacted, sizeof s->url_redacted);
    amqp_default_connection_info(&ci);
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK) {
        snprintf(err, errlen, "%s: not a valid AMQP URL", s->url_redacted);
        free(url);
        free(s);
        return WARREN_ERR_CONFIG;
    }
    s->conn = amqp_new_connection();
    if (s->conn == NULL) {
        free(url);
        free(s);
        snprintf(err, errlen, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    rc = open_socket(s, cfg, &ci);
    if (rc == 0) {
        struct timeval rpc = {RPC_TIMEOUT_S, 0};
        amqp_set_rpc_timeout(s->conn, &rpc);
        amqp_table_entry_t entries[3], caps[6];
        amqp_table_t props = client_properties(entries, caps);
        amqp_rpc_reply_t r = amqp_login_with_properties(
            s->conn, ci.vhost, 0, FRAME_MAX, cfg->broker.heartbeat_s, &props,
            AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
        rc = reply_error(s, r, "login");
        if (rc == WARREN_ERR_AUTH) {
            set_err(s,
                    "%s: authentication refused for user '%s': check the "
                    "credentials in WARREN_URL / broker.url(s) and "
                    "WARREN_BROKER_PASSWORD",
                    s->url_redacted, ci.user);
        } else if (rc == WARREN_ERR_VHOST) {
            set_err(s,
                    "%s: virtual host '%s' does not exist or user '%s' may "
                    "not use it: create it (rabbitmqctl add_vhost) or fix the "
                    "URL's path",
                    s->url_redacted, ci.vhost, ci.user);
        } else if (rc == WARREN_ERR_CONNECTION) {
            /* Brokers without authentication_failure_close just hang up. */
            char detail[ERR_MAX];
            snprintf(detail, sizeof detail, "%s", s->err);
            set_err(s,
                    "%s: broker closed the connection during login (%s): "
                    "wrong credentials or vhost?",
                    s->url_redacted, detail);
            rc = WARREN_ERR_AUTH;
        }
    }
    if (rc == 0) {
        rc = open_channel(s);
    }
    if (rc == 0) {
        s->heartbeat_s = amqp_get_heartbeat(s->conn);
        keepalive_start(s);
    }
    free(url);
    if (rc != 0) {
        snprintf(err, errlen, "%s", s->err);
        s->broken = 1;
        warren__session_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

static void free_list(warren__delivery *d) {
    while (d) {
        warren__delivery *next = d->next;
        warren__delivery_free(d);
        free(d);
        d = next;
    }
}

void warren__session_free(warren__session *s) {
    if (s == NULL) {
        return;
    }
    keepalive_stop(s);
    if (!s->broken) {
        amqp_channel_close(s->conn, CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(s->conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(s->conn);
    free_list(s->pending_head);
    free_list(s->free_list);
    free(s->unconfirmed);
    warren__arena_empty(&s->pub_arena);
    free(s->enc_buf);
    free(s);
}

/* ---- deliveries -------------------------------------------------------- */

void warren__delivery_init(warren__delivery *d) {
    memset(d, 0, sizeof *d);
}

void warren__delivery_drop_spool(warren__delivery *d) {
    if (d->spooled) {
        close(d->spool_fd);
        d->spooled = 0;
        d->spool_fd = -1;
        d->spool_len = 0;
    }
}

void warren__delivery_free(warren__delivery *d) {
    if (d == NULL) {
        return;
    }
    warren__delivery_drop_spool(d);
    free(d->body);
    d->body = NULL;
    d->body_cap = 0;
    if (d->pool_ready) {
        warren__arena_empty(&d->pool);
        d->pool_ready = 0;
    }
}

/* Deep-copies the decoded properties into the delivery's own arena, in
 * warren's types, so the connection's frame memory can be released right
 * after reading. */
static int copy_props(warren__delivery *d, const amqp_basic_properties_t *p) {
    if (!d->pool_ready) {
        warren__arena_init(&d->pool, 4096);
        d->pool_ready = 1;
    } else {
        warren__arena_recycle(&d->pool);
    }
    if (warren__amqp_props_import(p, &d->props, &d->pool) != 0) {
        return WARREN_ERR_NOMEM;
    }
    return 0;
}

static const char *opt_str(uint32_t flags, uint32_t bit, warren__bytes b,
                           char *buf, size_t len) {
    if (!(flags & bit)) {
        return NULL;
    }
    size_t n = b.len < len - 1 ? b.len : len - 1;
    if (n > 0) {
        memcpy(buf, b.bytes, n);
    }
    buf[n] = '\0';
    return buf;
}

static void fill_view(warren__delivery *d, uint64_t tag, int redelivered) {
    struct warren_msg *m = &d->msg;
    warren__props *p = &d->props;
    size_t len = m->body_len;
    uint64_t announced = m->body_size_announced;
    memset(m, 0, sizeof *m);
    m->body_len = len;
    m->body_size_announced = announced;
    m->exchange = d->exchange;
    m->routing_key = d->routing_key;
    m->content_type =
        opt_str(p->flags, WARREN__PROP_CONTENT_TYPE, p->content_type,
                d->content_type, sizeof d->content_type);
    m->correlation_id =
        opt_str(p->flags, WARREN__PROP_CORRELATION_ID, p->correlation_id,
                d->correlation_id, sizeof d->correlation_id);
    m->message_id_prop =
        opt_str(p->flags, WARREN__PROP_MESSAGE_ID, p->message_id, d->message_id,
                sizeof d->message_id);
    m->body = d->body ? d->body : (const uint8_t *)"";
    m->attempt = 1;
    m->redelivered = redelivered;
    m->delivery_tag = tag;
    m->props = p;
    m->headers = &p->headers;
}

static int wait_frame(warren__session *s, amqp_frame_t *f, int timeout_ms) {
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    int rc =
        amqp_simple_wait_frame_noblock(s->conn, f, timeout_ms < 0 ? NULL : &tv);
    if (rc == AMQP_STATUS_OK) {
        return 1;
    }
    if (rc == AMQP_STATUS_TIMEOUT) {
        return 0;
    }
    s->broken = 1;
    set_err(s, "connection to the broker lost: %s", amqp_error_string2(rc));
    return rc == AMQP_STATUS_HEARTBEAT_TIMEOUT ? WARREN_ERR_TIMEOUT
                                               : WARREN_ERR_CONNECTION;
}

/* An unlinked temporary file for a body, or -1 (the reason logged). */
static int spool_open(uint64_t size) {
    const char *dir = getenv("TMPDIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/warren-spool-XXXXXX",
             dir != NULL && dir[0] != '\0' ? dir : "/tmp");
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) {
        warren__log(WARREN_LOG_ERROR, NULL,
                    "cannot create a spool file for a %llu-byte body (%s): %s",
                    (unsigned long long)size, path, strerror(errno));
        return -1;
    }
    unlink(path);
    return fd;
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes back and drops the file's cached pages up to now. */
static void spool_flush(int fd) {
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
}

/* Reads a parked body back into memory. */
static int unpark(warren__session *s, warren__delivery *d) {
    uint64_t size = d->spool_len, got = 0;
    if (size + 1 > d->body_cap) {
        uint8_t *nb = realloc(d->body, size + 1);
        if (nb == NULL) {
            set_err(s, "out of memory for a %llu-byte body",
                    (unsigned long long)size);
            return WARREN_ERR_NOMEM;
        }
        d->body = nb;
        d->body_cap = size + 1;
    }
    while (got < size) {
        ssize_t n = pread(d->spool_fd, d->body + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            set_err(s, "reading a parked body back: %s",
                    n < 0 ? strerror(errno) : "file shorter than the body");
            return WARREN_ERR_IO;
        }
        got += (uint64_t)n;
    }
    warren__delivery_drop_spool(d);
    d->body[size] = '\0';
    d->msg.body_len = (size_t)size;
    d->msg.body = d->body;
    return 0;
}

void warren__session_spool(warren__session *s, uint64_t max_body,
                           uint64_t pending_budget) {
    s->spool = 1;
    s->spool_max_body = max_body;
    s->pending_budget = pending_budget;
}

/* Reads the content header and body frames that follow a deliver, return
 * or get-ok. With `d` NULL the content is read and dropped. A body over
 * `max_body` is spooled when the session spools (else drained); with
 * `park` set any body is spooled, to be read back by unpark(). */
static int read_content(warren__session *s, warren__delivery *d,
                        uint64_t max_body, int park) {
    amqp_frame_t f;
    int rc = wait_frame(s, &f, RPC_TIMEOUT_S * 1000);
    if (rc <= 0) {
        return rc == 0 ? WARREN_ERR_TIMEOUT : rc;
    }
    if (f.frame_type != AMQP_FRAME_HEADER) {
        s->broken = 1;
        set_err(s, "expected a content header, got frame type %d",
                f.frame_type);
        return WARREN_ERR_PROTOCOL;
    }
    uint64_t size = f.payload.properties.body_size, got = 0, flushed = 0;
    int in_memory = d != NULL;
    if (d) {
        warren__delivery_drop_spool(d);
        d->too_large = size > max_body;
        d->body_lost = d->too_large;
        d->msg.body_size_announced = size;
        if (copy_props(d, f.payload.properties.decoded) != 0) {
            set_err(s, "out of memory copying message properties");
            return WARREN_ERR_NOMEM;
        }
        if ((d->too_large && s->spool) || (park && size > 0)) {
            int fd = spool_open(size);
            if (fd >= 0) {
                d->spooled = 1;
                d->spool_fd = fd;
                d->spool_len = size;
                d->body_lost = 0;
            }
            /* A body that cannot be parked is held in memory after all. */
        }
        in_memory = !d->too_large && !d->spooled;
        if (in_memory && size + 1 > d->body_cap) {
            uint8_t *nb = realloc(d->body, size + 1);
            if (nb == NULL) {
                set_err(s, "out of memory for a %llu-byte body",
                        (unsigned long long)size);
                return WARREN_ERR_NOMEM;
            }
            d->body = nb;
            d->body_cap = size + 1;
        }
    }
    while (got < size) {
        rc = wait_frame(s, &f, RPC_TIMEOUT_S * 1000);
        if (rc <= 0) {
            return rc == 0 ? WARREN_ERR_TIMEOUT : rc;
        }
        if (f.frame_type != AMQP_FRAME_BODY) {
            s->broken = 1;
            set_err(s, "expected a body frame, got frame type %d",
                    f.frame_type);
            return WARREN_ERR_PROTOCOL;
        }
        amqp_bytes_t frag = f.payload.body_fragment;
        if (got + frag.len > size) {
            s->broken = 1;
            set_err(s, "body frames exceed the announced size");
            return WARREN_ERR_PROTOCOL;
        }
        if (in_memory) {
            memcpy(d->body + got, frag.bytes, frag.len);
        } else if (d && d->spooled) {
            if (write_all(d->spool_fd, frag.bytes, frag.len) != 0) {
                int e = errno;
                warren__delivery_drop_spool(d);
                if (!d->too_large) {
                    /* The rest of the body is still on the wire. */
                    s->broken = 1;
                    set_err(s, "writing a parked body to its spool file: %s",
                            strerror(e));
                    return WARREN_ERR_IO;
                }
                d->body_lost = 1;
                warren__log(WARREN_LOG_ERROR, NULL,
                            "writing a %llu-byte body to its spool file "
                            "failed, the body is drained and its message "
                            "will not be acked: %s",
                            (unsigned long long)size, strerror(e));
            } else if (got + frag.len - flushed >= SPOOL_FLUSH_BYTES) {
                spool_flush(d->spool_fd);
                flushed = got + frag.len;
            }
        }
        got += frag.len;
        /* Each frame lives in the channel's pool until released: without
         * this a body is held twice (frames + copy) until its end. The
         * properties were deep-copied above, so nothing points there. */
        amqp_maybe_release_buffers_on_channel(s->conn, f.channel);
    }
    if (d) {
        d->msg.body_len = in_memory ? (size_t)size : 0;
        if (d->body) {
            d->body[d->msg.body_len] = '\0';
        }
        if (d->spooled) {
            spool_flush(d->spool_fd);
        }
    }
    return 1;
}

static void settle(warren__session *s, uint64_t tag, int multiple, int nacked) {
    size_t w = 0;
    for (size_t i = 0; i < s->n_unconfirmed; i++) {
        uint64_t q = s->unconfirmed[i];
        if (q == tag || (multiple && q <= tag)) {
            continue;
        }
        s->unconfirmed[w++] = q;
    }
    s->n_unconfirmed = w;
    if (nacked) {
        s->publish_failed = 1;
        snprintf(s->publish_err, sizeof s->publish_err,
                 "broker nacked publish %llu", (unsigned long long)tag);
    }
}

/* Test seam, in failpoint builds only: WARREN_TEST_LOSE_CONFIRMS=N makes
 * this process ignore the first N basic.ack frames it reads, as if the
 * broker confirmed those publishes later than any wait (a stuck queue, a
 * quorum queue without a majority). Always 0 in other builds. */
static int lose_confirm(void) {
#ifdef WARREN_FAILPOINTS
    static long left = -1;
    if (left < 0) {
        const char *v = getenv("WARREN_TEST_LOSE_CONFIRMS");
        left = v != NULL ? strtol(v, NULL, 10) : 0;
        left = left < 0 ? 0 : left;
    }
    if (left > 0) {
        left--;
        return 1;
    }
#endif
    return 0;
}

static warren__delivery *take_free(warren__session *s) {
    warren__delivery *d = s->free_list;
    if (d) {
        s->free_list = d->next;
        d->next = NULL;
        return d;
    }
    d = calloc(1, sizeof *d);
    return d;
}

/* Reads and handles one frame. A delivery is read into `into` if given
 * (returns 2), else appended to the pending list. Returns 1 for any other
 * frame handled, 0 on timeout, negative on error. */
static int pump(warren__session *s, warren__delivery *into, uint64_t max_body,
                int timeout_ms) {
    amqp_frame_t f;
    int rc = wait_frame(s, &f, timeout_ms);
    if (rc <= 0) {
        return rc;
    }
    if (f.frame_type != AMQP_FRAME_METHOD) {
        /* Content outside a deliver/return: a protocol error. */
        s->broken = 1;
        set_err(s, "unexpected frame type %d outside a message", f.frame_type);
        return WARREN_ERR_PROTOCOL;
    }
    switch (f.payload.method.id) {
    case AMQP_BASIC_DELIVER_METHOD: {
        amqp_basic_deliver_t *m = f.payload.method.decoded;
        warren__delivery *d = into ? into : take_free(s);
        if (d == NULL) {
            return WARREN_ERR_NOMEM;
        }
        bytes_to_cstr(m->exchange, d->exchange, sizeof d->exchange);
        bytes_to_cstr(m->routing_key, d->routing_key, sizeof d->routing_key);
        uint64_t tag = m->delivery_tag;
        int redelivered = m->redelivered;
        /* Read ahead into the pending list: with spooling on, a body over
         * the limit is spooled, and bodies past the pending budget are
         * parked on disk, so that waiting for confirms among a full
         * prefetch of big bodies holds at most the budget. */
        int park = !into && s->spool && s->pending_bytes >= s->pending_budget;
        if (!into && s->spool) {
            max_body = s->spool_max_body;
        }
        rc = read_content(s, d, max_body, park);
        if (rc < 0) {
            if (!into) {
                d->next = s->free_list;
                s->free_list = d;
            }
            return rc;
        }
        fill_view(d, tag, redelivered);
        amqp_maybe_release_buffers(s->conn);
        if (into) {
            return 2;
        }
        if (d->spooled && !d->too_large) {
            warren__log(WARREN_LOG_DEBUG, NULL,
                        "read-ahead holds %llu bytes of bodies: a %llu-byte "
                        "body parked in a spool file until it is taken",
                        (unsigned long long)s->pending_bytes,
                        (unsigned long long)d->spool_len);
        }
        d->next = NULL;
        s->pending_bytes += d->msg.body_len;
        if (s->pending_tail) {
            s->pending_tail->next = d;
        } else {
            s->pending_head = d;
        }
        s->pending_tail = d;
        return 1;
    }
    case AMQP_BASIC_ACK_METHOD: {
        amqp_basic_ack_t *m = f.payload.method.decoded;
        if (lose_confirm()) {
            return 1;
        }
        settle(s, m->delivery_tag, m->multiple, 0);
        return 1;
    }
    case AMQP_BASIC_NACK_METHOD: {
        amqp_basic_nack_t *m = f.payload.method.decoded;
        settle(s, m->delivery_tag, m->multiple, 1);
        return 1;
    }
    case AMQP_BASIC_RETURN_METHOD: {
        amqp_basic_return_t *m = f.payload.method.decoded;
        char text[128], rk[WARREN__NAME_MAX];
        bytes_to_cstr(m->reply_text, text, sizeof text);
        bytes_to_cstr(m->routing_key, rk, sizeof rk);
        s->publish_failed = 1;
        snprintf(s->publish_err, sizeof s->publish_err,
                 "publish to routing key '%.150s' returned: %u %s", rk,
                 m->reply_code, text);
        rc = read_content(s, NULL, 0, 0);
        return rc < 0 ? rc : 1;
    }
    case AMQP_BASIC_CANCEL_METHOD:
        s->cancelled = 1;
        s->broken = 1;
        set_err(s, "the broker cancelled the consumer (queue deleted or node "
                   "shut down)");
        return WARREN_ERR_CANCELLED;
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                              .reply = f.payload.method};
        return reply_error(s, r, "while consuming");
    }
    case AMQP_CONNECTION_BLOCKED_METHOD:
        s->blocked = 1;
        warren__log(WARREN_LOG_WARN, NULL,
                    "broker blocked publishing (resource alarm)");
        return 1;
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
        s->blocked = 0;
        warren__log(WARREN_LOG_INFO, NULL, "broker unblocked publishing");
        return 1;
    default:
        return 1; /* cancel-ok, qos-ok arriving late, ...: nothing to do */
    }
}

static void swap_delivery(warren__delivery *a, warren__delivery *b) {
    warren__delivery tmp = *a;
    *a = *b;
    *b = tmp;
    /* The view points into the struct itself: rebuild both. */
    fill_view(a, a->msg.delivery_tag, a->msg.redelivered);
    fill_view(b, b->msg.delivery_tag, b->msg.redelivered);
}

void warren__delivery_swap(warren__delivery *a, warren__delivery *b) {
    swap_delivery(a, b);
}

int warren__session_next(warren__session *s, warren__delivery *d,
                         uint64_t max_body, int timeout_ms) {
    if (s->pending_head) {
        warren__delivery *p = s->pending_head;
        s->pending_head = p->next;
        if (s->pending_head == NULL) {
            s->pending_tail = NULL;
        }
        s->pending_bytes -= p->msg.body_len;
        /* Swapping hands the caller the pending body without a copy, and
         * gives the pending slot the caller's buffer for reuse. */
        swap_delivery(d, p);
        d->next = NULL;
        warren__delivery_drop_spool(p);
        p->next = s->free_list;
        s->free_list = p;
        if (d->spooled && !d->too_large) {
            int rc = unpark(s, d);
            return rc == 0 ? 1 : rc;
        }
        return 1;
    }
    if (s->broken) {
        return s->cancelled ? WARREN_ERR_CANCELLED : WARREN_ERR_CONNECTION;
    }
    int64_t deadline = warren__mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        int64_t left = deadline - warren__mono_ms();
        int rc = pump(s, d, max_body, left > 0 ? (int)left : 0);
        if (rc == 2) {
            return 1;
        }
        if (rc < 0) {
            return rc;
        }
        if (rc == 0) {
            return 0;
        }
    }
}

int warren__session_pending(warren__session *s) {
    return s->pending_head != NULL || amqp_frames_enqueued(s->conn) ||
           amqp_data_in_buffer(s->conn);
}

int warren__session_service(warren__session *s) {
    for (;;) {
        int rc = pump(s, NULL, UINT64_MAX, 0);
        if (rc <= 0) {
            return rc;
        }
    }
}

void warren__session_release(warren__session *s) {
    amqp_maybe_release_buffers(s->conn);
}

/* ---- commands ---------------------------------------------------------- */

static amqp_table_t args_table(const warren__arg *args, int n,
                               amqp_table_entry_t *entries) {
    for (int i = 0; i < n; i++) {
        entries[i].key = amqp_cstring_bytes(args[i].key);
        if (args[i].type == WARREN__ARG_STR) {
            entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
            entries[i].value.value.bytes = amqp_cstring_bytes(args[i].str);
        } else {
            entries[i].value.kind = AMQP_FIELD_KIND_I64;
            entries[i].value.value.i64 = args[i].num;
        }
    }
    return (amqp_table_t){.num_entries = n, .entries = entries};
}

int warren__session_apply(warren__session *s, const warren__topo_op *ops,
                          int n) {
    for (int i = 0; i < n; i++) {
        const warren__topo_op *op = &ops[i];
        amqp_table_entry_t entries[WARREN__MAX_ARGS];
        amqp_table_t args = args_table(op->args, op->n_args, entries);
        char what[WARREN__NAME_MAX + 64];
        int rc;
        switch (op->kind) {
        case WARREN__OP_EXCHANGE:
            amqp_exchange_declare(
                s->conn, CHANNEL, amqp_cstring_bytes(op->name),
                amqp_cstring_bytes(op->type), 0, 1, 0, 0, args);
            snprintf(what, sizeof what, "declaring exchange '%s'", op->name);
            break;
        case WARREN__OP_QUEUE:
            amqp_queue_declare(s->conn, CHANNEL, amqp_cstring_bytes(op->name),
                               0, 1, 0, 0, args);
            snprintf(what, sizeof what, "declaring queue '%s'", op->name);
            break;
        case WARREN__OP_BIND_QUEUE:
            amqp_queue_bind(s->conn, CHANNEL, amqp_cstring_bytes(op->name),
                            amqp_cstring_bytes(op->source),
                            amqp_cstring_bytes(op->key), amqp_empty_table);
            snprintf(what, sizeof what, "binding queue '%s'", op->name);
            break;
        case WARREN__OP_BIND_EXCHANGE:
            amqp_exchange_bind(s->conn, CHANNEL, amqp_cstring_bytes(op->name),
                               amqp_cstring_bytes(op->source),
                               amqp_cstring_bytes(op->key), amqp_empty_table);
            snprintf(what, sizeof what, "binding exchange '%s'", op->name);
            break;
        default:
            return WARREN_ERR_INVAL;
        }
        rc = check_rpc(s, what);
        if (rc == WARREN_ERR_PRECONDITION) {
            char detail[ERR_MAX], hint[ERR_MAX];
            snprintf(detail, sizeof detail, "%s", s->err);
            warren__topology_precondition_hint(op, detail, hint, sizeof hint);
            set_err(s, "%s\n  %s", detail, hint);
            reopen_channel(s);
            return rc;
        }
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

int warren__session_queue_info(warren__session *s, const char *queue,
                               uint32_t *messages, uint32_t *consumers) {
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(s->conn, CHANNEL, amqp_cstring_bytes(queue), 1, 0, 0,
                           0, amqp_empty_table);
    int rc = check_rpc(s, "looking up queue");
    if (rc != 0 || ok == NULL) {
        if (rc == WARREN_ERR_NOT_FOUND) {
            set_err(s, "queue '%s' does not exist", queue);
            reopen_channel(s);
        }
        return rc ? rc : WARREN_ERR_PROTOCOL;
    }
    if (messages) {
        *messages = ok->message_count;
    }
    if (consumers) {
        *consumers = ok->consumer_count;
    }
    return 0;
}

int warren__session_queue_purge(warren__session *s, const char *queue) {
    amqp_queue_purge(s->conn, CHANNEL, amqp_cstring_bytes(queue));
    return check_rpc(s, "purging queue");
}

int warren__session_queue_delete(warren__session *s, const char *queue) {
    amqp_queue_delete(s->conn, CHANNEL, amqp_cstring_bytes(queue), 0, 0);
    return check_rpc(s, "deleting queue");
}

int warren__session_qos(warren__session *s, uint16_t prefetch) {
    amqp_basic_qos(s->conn, CHANNEL, 0, prefetch, 0);
    return check_rpc(s, "setting prefetch (basic.qos)");
}

int warren__session_consume(warren__session *s, const char *queue) {
    amqp_basic_consume_ok_t *ok =
        amqp_basic_consume(s->conn, CHANNEL, amqp_cstring_bytes(queue),
                           amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    int rc = check_rpc(s, "starting to consume");
    if (rc != 0) {
        return rc;
    }
    bytes_to_cstr(ok->consumer_tag, s->consumer_tag, sizeof s->consumer_tag);
    s->cancelled = 0;
    return 0;
}

int warren__session_cancel(warren__session *s) {
    if (s->broken || s->consumer_tag[0] == '\0') {
        return 0;
    }
    /* Sent without waiting for cancel-ok: deliveries may still be in flight
     * and the dispatcher keeps reading them. */
    amqp_basic_cancel_t m = {
        .consumer_tag = amqp_cstring_bytes(s->consumer_tag), .nowait = 0};
    int rc = amqp_send_method(s->conn, CHANNEL, AMQP_BASIC_CANCEL_METHOD, &m);
    s->consumer_tag[0] = '\0';
    if (rc != AMQP_STATUS_OK) {
        s->broken = 1;
        set_err(s, "cancelling the consumer: %s", amqp_error_string2(rc));
        return WARREN_ERR_CONNECTION;
    }
    return 0;
}

static int status_error(warren__session *s, int rc, const char *what) {
    if (rc == AMQP_STATUS_OK) {
        return 0;
    }
    s->broken = 1;
    set_err(s, "%s: %s", what, amqp_error_string2(rc));
    return WARREN_ERR_CONNECTION;
}

int warren__session_ack(warren__session *s, uint64_t tag, int multiple) {
    return status_error(s, amqp_basic_ack(s->conn, CHANNEL, tag, multiple),
                        "acknowledging");
}

int warren__session_nack(warren__session *s, uint64_t tag, int multiple,
                         int requeue) {
    return status_error(
        s, amqp_basic_nack(s->conn, CHANNEL, tag, multiple, requeue),
        "rejecting");
}

/* What every publish starts with: persistent properties in `*p`
 * (rabbitmq-c's form of `props`, or none) and room to track one more
 * confirm. Returns 0 or WARREN_ERR_NOMEM. */
static int begin_publish(warren__session *s, const warren__props *props,
                         amqp_basic_properties_t *p) {
    warren__arena_recycle(&s->pub_arena);
    if (props) {
        if (warren__amqp_props_export(props, p, &s->pub_arena) != 0) {
            return WARREN_ERR_NOMEM;
        }
    } else {
        memset(p, 0, sizeof *p);
    }
    p->_flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
    p->delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (s->n_unconfirmed == s->cap_unconfirmed) {
        size_t cap = s->cap_unconfirmed ? s->cap_unconfirmed * 2 : 64;
        uint64_t *n = realloc(s->unconfirmed, cap * sizeof *n);
        if (n == NULL) {
            return WARREN_ERR_NOMEM;
        }
        s->unconfirmed = n;
        s->cap_unconfirmed = cap;
    }
    return 0;
}

int warren__session_table_len(warren__session *s, const warren__table *t,
                              size_t *len) {
    size_t frame = warren__session_frame_max(s);
    amqp_table_t at;
    size_t off = 0;
    *len = 0;
    if (s->enc_len < frame) {
        free(s->enc_buf);
        s->enc_buf = malloc(frame);
        s->enc_len = s->enc_buf ? frame : 0;
        if (s->enc_buf == NULL) {
            return WARREN_ERR_NOMEM;
        }
    }
    warren__arena_recycle(&s->pub_arena);
    if (warren__amqp_table_export(t, &at, &s->pub_arena) != 0) {
        return WARREN_ERR_NOMEM;
    }
    amqp_bytes_t b = {frame, s->enc_buf};
    if (amqp_encode_table(b, &at, &off) != AMQP_STATUS_OK) {
        return WARREN_ERR_INVAL;
    }
    *len = off;
    return 0;
}

/* A publish went out: its sequence number awaits a confirm. */
static int end_publish(warren__session *s, uint64_t *seq) {
    s->unconfirmed[s->n_unconfirmed++] = ++s->publish_seq;
    if (seq) {
        *seq = s->publish_seq;
    }
    return 0;
}

int warren__session_publish(warren__session *s, const char *exchange,
                            const char *routing_key, const warren__props *props,
                            const void *body, size_t len, uint64_t *seq) {
    amqp_basic_properties_t p;
    if (begin_publish(s, props, &p) != 0) {
        return WARREN_ERR_NOMEM;
    }
    amqp_bytes_t b = {len, (void *)body};
    int rc = amqp_basic_publish(s->conn, CHANNEL, amqp_cstring_bytes(exchange),
                                amqp_cstring_bytes(routing_key), 1, 0, &p, b);
    if (rc != AMQP_STATUS_OK) {
        return status_error(s, rc, "publishing");
    }
    return end_publish(s, seq);
}

int warren__session_publish_delivery(warren__session *s, const char *exchange,
                                     const char *routing_key,
                                     const warren__props *props,
                                     const warren__delivery *d, uint64_t *seq) {
    if (!d->spooled) {
        if (d->body_lost) {
            set_err(s, "the %llu-byte body was not kept",
                    (unsigned long long)d->msg.body_size_announced);
            return WARREN_ERR_INVAL;
        }
        return warren__session_publish(s, exchange, routing_key, props,
                                       d->msg.body, d->msg.body_len, seq);
    }
    /* What amqp_basic_publish() sends, with the body frames read from the
     * spool file one at a time. */
    amqp_basic_properties_t p;
    if (begin_publish(s, props, &p) != 0) {
        return WARREN_ERR_NOMEM;
    }
    size_t chunk = warren__session_frame_max(s) - 8; /* frame header, end */
    uint8_t *buf = malloc(chunk);
    if (buf == NULL) {
        return WARREN_ERR_NOMEM;
    }
    amqp_basic_publish_t m = {.ticket = 0,
                              .exchange = amqp_cstring_bytes(exchange),
                              .routing_key = amqp_cstring_bytes(routing_key),
                              .mandatory = 1,
                              .immediate = 0};
    int rc = amqp_send_method(s->conn, CHANNEL, AMQP_BASIC_PUBLISH_METHOD, &m);
    if (rc == AMQP_STATUS_OK) {
        amqp_frame_t f;
        f.frame_type = AMQP_FRAME_HEADER;
        f.channel = CHANNEL;
        f.payload.properties.class_id = AMQP_BASIC_CLASS;
        f.payload.properties.body_size = d->spool_len;
        f.payload.properties.decoded = &p;
        rc = amqp_send_frame(s->conn, &f);
    }
    uint64_t off = 0, dropped = 0;
    while (rc == AMQP_STATUS_OK && off < d->spool_len) {
        size_t want =
            d->spool_len - off < chunk ? (size_t)(d->spool_len - off) : chunk;
        ssize_t n = pread(d->spool_fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            /* Half a message is on the wire: nothing can follow it. */
            free(buf);
            s->broken = 1;
            set_err(s, "reading a spooled body to publish it: %s",
                    n < 0 ? strerror(errno) : "file shorter than the body");
            return WARREN_ERR_IO;
        }
        amqp_frame_t f;
        f.frame_type = AMQP_FRAME_BODY;
        f.channel = CHANNEL;
        f.payload.body_fragment.bytes = buf;
        f.payload.body_fragment.len = (size_t)n;
        rc = amqp_send_frame(s->conn, &f);
        off += (uint64_t)n;
        if (off - dropped >= SPOOL_FLUSH_BYTES) {
            posix_fadvise(d->spool_fd, 0, 0, POSIX_FADV_DONTNEED);
            dropped = off;
        }
    }
    free(buf);
    if (rc != AMQP_STATUS_OK) {
        return status_error(s, rc, "publishing");
    }
    return end_publish(s, seq);
}

int warren__session_wait_confirms(warren__session *s, int timeout_ms) {
    int64_t deadline = warren__mono_ms() + timeout_ms;
    while (s->n_unconfirmed > 0) {
        int64_t left = deadline - warren__mono_ms();
        if (left <= 0) {
            /* Their confirms may still come (or a nack): on this channel
             * they would be taken for the next wait's. */
            s->broken = 1;
            set_err(s,
                    "%zu publishes not confirmed within %d ms "
                    "(broker.confirm_timeout_ms); reconnecting",
                    s->n_unconfirmed, timeout_ms);
            return WARREN_ERR_TIMEOUT;
        }
        int rc = pump(s, NULL, UINT64_MAX, (int)left);
        if (rc < 0) {
            return rc;
        }
    }
    if (s->publish_failed) {
        s->publish_failed = 0;
        set_err(s, "%s", s->publish_err);
        return WARREN_ERR_PUBLISH;
    }
    return 0;
}

int warren__session_get(warren__session *s, const char *queue,
                        warren__delivery *d, uint64_t max_body) {
    amqp_rpc_reply_t r =
        amqp_basic_get(s->conn, CHANNEL, amqp_cstring_bytes(queue), 0);
    int rc = reply_error(s, r, "basic.get");
    if (rc != 0) {
        if (rc == WARREN_ERR_NOT_FOUND) {
            set_err(s, "queue '%s' does not exist", queue);
            reopen_channel(s);
        }
        return rc;
    }
    if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) {
        return 0;
    }
    amqp_basic_get_ok_t *ok = r.reply.decoded;
    bytes_to_cstr(ok->exchange, d->exchange, sizeof d->exchange);
    bytes_to_cstr(ok->routing_key, d->routing_key, sizeof d->routing_key);
    uint64_t tag = ok->delivery_tag;
    int redelivered = ok->redelivered;
    rc = read_content(s, d, max_body, 0);
    if (rc < 0) {
        return rc;
    }
    fill_view(d, tag, redelivered);
    amqp_maybe_release_buffers(s->conn);
    return 1;
}

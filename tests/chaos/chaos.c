/*
 * chaos.c - the chaos suite's harness (see chaos.h): a producer that knows
 * which of its publishes the broker confirmed, handlers whose effects can be
 * counted per id, a drain that awaits the end state instead of sleeping,
 * and the checker that turns all of it into one row per scenario. The
 * producer is a forked child talking rabbitmq-c directly, so it keeps
 * publishing while the test process breaks things. The store is read
 * through chaos_store_count() and count_ledger(), the only places that know
 * whether it is a SQLite file or a PostgreSQL database.
 */
#include "chaos.h"

#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <amqp_tcp_socket.h>
#include <libpq-fe.h>

/* The exec handler: bodies that are not JSON are a permanent failure, ids
 * ending in 1 mod 5 fail once (a retry), every CHAOS_SLOW_EVERY-th id
 * sleeps; the effect is one line "ID WORKER_PID" appended at success. The
 * worker is the script's parent, which tells the checker whether an
 * earlier effect came from a worker that was killed. */
static const char *handler_script =
    "#!/bin/sh\n"
    "body=$(cat)\n"
    "case \"$body\" in '{'*) ;; *) echo 'chaos: not JSON' >&2; exit 65;; "
    "esac\n"
    "n=${WARREN_MESSAGE_ID##*-}\n"
    "if [ \"$WARREN_ATTEMPT\" = 1 ] && [ $((n % 5)) -eq 1 ]; then\n"
    "  echo 'chaos: transient' >&2; exit 75\n"
    "fi\n"
    "if [ \"${CHAOS_SLOW_EVERY:-0}\" -gt 0 ] && "
    "[ $((n % CHAOS_SLOW_EVERY)) -eq 0 ]; then\n"
    "  sleep \"$CHAOS_SLOW_S\"\n"
    "fi\n"
    "echo \"$WARREN_MESSAGE_ID $PPID\" >> \"$CHAOS_EFFECTS\"\n";

/* Ids i with i % 7 == 3 carry a body no handler accepts: they must end in
 * the DLQ, never be handled. */
static int is_bad(int i) {
    return i % 7 == 3;
}

int64_t chaos_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- setup ------------------------------------------------------------- */

static void bind_queue(amqp_connection_state_t c, const char *q,
                       const char *ex) {
    amqp_queue_bind(c, 1, amqp_cstring_bytes(q), amqp_cstring_bytes(ex),
                    amqp_cstring_bytes(""), amqp_empty_table);
    amqp_rpc_reply_t rep = amqp_get_rpc_reply(c);
    assert_int_equal(rep.reply_type, AMQP_RESPONSE_NORMAL);
}

static void consumer_json(char *out, size_t len, const chaos_run *r,
                          const char *queue, const char *handler, int workers) {
    snprintf(out, len,
             "  {\"queue\": \"%s\", \"handler\": \"%s\", \"workers\": %d,\n"
             "   \"prefetch\": %d, \"batch_max\": %d%s%s,\n"
             "   \"retry\": {\"max_attempts\": 10, \"jitter\": 0,\n"
             "     \"backoff\": {\"kind\": \"fixed\", \"delay_ms\": 200}}}",
             queue, handler, workers, r->o.prefetch, r->o.batch,
             r->o.consumer_extra[0] ? ", " : "", r->o.consumer_extra);
}

/* ---- the store: SQLite or PostgreSQL ------------------------------------ */

/* One connection per test process, made on first use and remade after an
 * error (a scenario may restart the server under it). */
static PGconn *pgc;

static PGconn *pg_conn(const chaos_run *r) {
    if (pgc != NULL && PQstatus(pgc) == CONNECTION_OK) {
        return pgc;
    }
    if (pgc != NULL) {
        PQfinish(pgc);
    }
    pgc = PQconnectdb(r->store_url);
    if (PQstatus(pgc) != CONNECTION_OK) {
        PQfinish(pgc);
        pgc = NULL;
    }
    return pgc;
}

/* Runs `sql` (with $1 = param when param != NULL) on PostgreSQL; the result
 * or NULL. A failed statement drops the connection, so the next call
 * reconnects. */
static PGresult *pg_query(const chaos_run *r, const char *sql,
                          const char *param) {
    PGconn *c = pg_conn(r);
    if (c == NULL) {
        return NULL;
    }
    PGresult *res =
        PQexecParams(c, sql, param ? 1 : 0, NULL, &param, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        PQclear(res);
        if (PQstatus(c) != CONNECTION_OK) {
            PQfinish(pgc);
            pgc = NULL;
        }
        return NULL;
    }
    return res;
}

/* The base server URL with its database replaced by `db`. */
static void pg_url_with_db(char *out, size_t len, const char *base,
                           const char *db) {
    const char *hp = strstr(base, "://");
    hp = hp ? hp + 3 : base;
    const char *slash = strchr(hp, '/');
    const char *query = strchr(hp, '?');
    size_t head = slash ? (size_t)(slash - base)
                        : (query ? (size_t)(query - base) : strlen(base));
    snprintf(out, len, "%.*s/%s%s", (int)head, base, db, query ? query : "");
}

/* Server notices ("database ... does not exist, skipping") are not news. */
static void quiet_notice(void *arg, const char *message) {
    (void)arg;
    (void)message;
}

/* Makes the scenario's own database on the server of WARREN_TEST_PG_URL
 * (dropping one an earlier run left) and points r->store_url at it. */
static void pg_setup(chaos_run *r) {
    const char *base = getenv("WARREN_TEST_PG_URL");
    if (base == NULL || base[0] == '\0') {
        fail_msg("chaos: store \"postgresql\" needs WARREN_TEST_PG_URL (and "
                 "PGPASSFILE); scripts/test sets both");
    }
    snprintf(r->pg_db, sizeof r->pg_db, "chaos_%s", r->o.name);
    for (char *c = r->pg_db; *c; c++) {
        if (*c == '.') {
            *c = '_'; /* names are [a-z0-9_.]: an identifier now */
        }
    }
    PGconn *admin = PQconnectdb(base);
    PQsetNoticeProcessor(admin, quiet_notice, NULL);
    if (PQstatus(admin) != CONNECTION_OK) {
        char e[512];
        snprintf(e, sizeof e, "%s", PQerrorMessage(admin));
        PQfinish(admin);
        fail_msg("chaos: cannot connect to %s: %s", base, e);
    }
    char sql[256];
    const char *steps[2] = {"DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)",
                            "CREATE DATABASE \"%s\""};
    for (int k = 0; k < 2; k++) {
        snprintf(sql, sizeof sql, steps[k], r->pg_db);
        PGresult *res = PQexec(admin, sql);
        int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        if (!ok) {
            char e[512];
            snprintf(e, sizeof e, "%s", PQerrorMessage(admin));
            PQfinish(admin);
            fail_msg("chaos: %s: %s", sql, e);
        }
    }
    PQfinish(admin);
    pg_url_with_db(r->store_url, sizeof r->store_url, base, r->pg_db);
}

static void pg_teardown(chaos_run *r) {
    const char *base = getenv("WARREN_TEST_PG_URL");
    if (pgc != NULL) {
        PQfinish(pgc);
        pgc = NULL;
    }
    if (!r->pg || base == NULL || getenv("CHAOS_KEEP") != NULL) {
        return;
    }
    PGconn *admin = PQconnectdb(base);
    PQsetNoticeProcessor(admin, quiet_notice, NULL);
    if (PQstatus(admin) == CONNECTION_OK) {
        char sql[128];
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)",
                 r->pg_db);
        PQclear(PQexec(admin, sql));
    }
    PQfinish(admin);
}

long long chaos_store_count(chaos_run *r, const char *sql, const char *param) {
    char q[1024];
    snprintf(q, sizeof q, sql, r->pg ? "warren_messages" : "messages");
    long long v = -1;
    if (r->pg) {
        PGresult *res = pg_query(r, q, param);
        if (res && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)) {
            v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        }
        PQclear(res);
        return v;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(r->db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_busy_timeout(db, 2000) == SQLITE_OK &&
        sqlite3_prepare_v2(db, q, -1, &st, NULL) == SQLITE_OK &&
        (param == NULL ||
         sqlite3_bind_text(st, 1, param, -1, SQLITE_STATIC) == SQLITE_OK) &&
        sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* ---- setup (continued) ------------------------------------------------- */

/* The broker nodes: WARREN_TEST_CLUSTER_URLS, else WARREN_TEST_URL. */
static void read_urls(chaos_run *r) {
    const char *cl = getenv("WARREN_TEST_CLUSTER_URLS");
    r->n_urls = 0;
    if (cl != NULL) {
        char buf[2048];
        snprintf(buf, sizeof buf, "%s", cl);
        char *save = NULL;
        for (char *t = strtok_r(buf, " \t\n,", &save);
             t && r->n_urls < CHAOS_MAX_NODES;
             t = strtok_r(NULL, " \t\n,", &save)) {
            snprintf(r->urls[r->n_urls++], sizeof r->urls[0], "%s", t);
        }
    }
    if (r->n_urls == 0) {
        snprintf(r->urls[0], sizeof r->urls[0], "%s", itest_url());
        r->n_urls = 1;
    }
}

/* Host `k`'s config: the broker nodes from its own one round (so hosts
 * spread over the nodes and fail over to the others), the store, and the
 * consumers. */
static void write_host_config(chaos_run *r, int k, const char *consumers) {
    char urls[1400] = "", store[700], text[6000];
    if (r->n_urls > 1) {
        size_t l = 0;
        l += (size_t)snprintf(urls + l, sizeof urls - l, "\"urls\": [");
        for (int j = 0; j < r->n_urls && l < sizeof urls; j++) {
            l += (size_t)snprintf(urls + l, sizeof urls - l, "%s\"%s\"",
                                  j ? ", " : "", r->urls[(k + j) % r->n_urls]);
        }
        if (l < sizeof urls) {
            snprintf(urls + l, sizeof urls - l, "], ");
        }
    }
    char lease[48] = "";
    if (r->o.lease_s > 0) {
        snprintf(lease, sizeof lease, ", \"lease_s\": %d", r->o.lease_s);
    }
    if (r->pg) {
        snprintf(store, sizeof store, "{\"url\": \"%s\"%s}", r->store_url,
                 lease);
    } else {
        snprintf(store, sizeof store, "{\"path\": \"%s\"%s}", r->db, lease);
    }
    snprintf(text, sizeof text,
             "{\"broker\": {%s\"heartbeat_s\": %d, \"connect_timeout_s\": 3},\n"
             " \"store\": %s,\n"
             " \"shutdown_grace_s\": 20,\n"
             " \"consumers\": [\n%s]}\n",
             urls, r->o.heartbeat_s, store, consumers);
    itest_write_file(r->cfgs[k], text);
}

void chaos_setup(chaos_run *r, const chaos_opts *o) {
    char script[600], ce[1024] = "", cl[1024] = "", h[700], cs[2100];
    memset(r, 0, sizeof *r);
    r->o = *o;
    if (r->o.hosts <= 0) {
        r->o.hosts = 1;
    }
    if (r->o.producers <= 0) {
        r->o.producers = 1;
    }
    assert_true(r->o.hosts <= CHAOS_MAX_HOSTS);
    assert_true(r->o.producers <= CHAOS_MAX_NODES);
    if (r->o.store == NULL) {
        r->o.store = getenv("CHAOS_STORE") ? getenv("CHAOS_STORE") : "sqlite";
    }
    r->pg = strcmp(r->o.store, "postgresql") == 0;
    if (!r->pg && strcmp(r->o.store, "sqlite") != 0) {
        fail_msg("chaos: store \"%s\": expected sqlite or postgresql",
                 r->o.store);
    }
    if (r->o.heartbeat_s == 0) {
        r->o.heartbeat_s = 5;
    }
    if (r->o.prefetch == 0) {
        r->o.prefetch = 20;
    }
    if (r->o.batch == 0) {
        r->o.batch = 10;
    }
    if (r->o.consumer_extra == NULL) {
        r->o.consumer_extra = "";
    }
    r->dir = itest_tmpdir();
    r->t0_ms = mono_ms();
    snprintf(r->qexec, sizeof r->qexec, "chaos.%s.exec", o->name);
    snprintf(r->qledger, sizeof r->qledger, "chaos.%s.ledger", o->name);
    snprintf(r->exchange, sizeof r->exchange, "chaos.%s.fan", o->name);
    snprintf(r->cfg, sizeof r->cfg, "%s/warren.json", r->dir);
    snprintf(r->log, sizeof r->log, "%s/warren.log", r->dir);
    for (int k = 0; k < r->o.hosts; k++) {
        if (k == 0) {
            snprintf(r->cfgs[0], sizeof r->cfgs[0], "%s", r->cfg);
            snprintf(r->logs[0], sizeof r->logs[0], "%s", r->log);
        } else {
            snprintf(r->cfgs[k], sizeof r->cfgs[k], "%s/warren.%d.json", r->dir,
                     k);
            snprintf(r->logs[k], sizeof r->logs[k], "%s/warren.%d.log", r->dir,
                     k);
        }
    }
    snprintf(r->effects, sizeof r->effects, "%s/effects", r->dir);
    snprintf(r->db, sizeof r->db, "%s/warren.db", r->dir);
    snprintf(r->fpdir, sizeof r->fpdir, "%s/fp", r->dir);
    snprintf(r->prod_out, sizeof r->prod_out, "%s/produced", r->dir);
    for (int k = 0; k < r->o.producers; k++) {
        snprintf(r->prod_outs[k], sizeof r->prod_outs[k], "%s/produced.%d",
                 r->dir, k);
    }
    read_urls(r);
    if (r->pg) {
        pg_setup(r);
    }
    assert_int_equal(mkdir(r->fpdir, 0700), 0);
    snprintf(script, sizeof script, "%s/h.sh", r->dir);
    itest_write_file(script, handler_script);
    assert_int_equal(chmod(script, 0700), 0);

    if (o->exec_workers > 0) {
        snprintf(h, sizeof h, "exec:%s", script);
        consumer_json(ce, sizeof ce, r, r->qexec, h, o->exec_workers);
    }
    if (o->ledger_workers > 0) {
        snprintf(h, sizeof h, "plugin:%s/examples/ledger.so:ledger",
                 getenv("WARREN_BUILD_DIR"));
        consumer_json(cl, sizeof cl, r, r->qledger, h, o->ledger_workers);
    }
    snprintf(cs, sizeof cs, "%s%s%s", ce, ce[0] && cl[0] ? ",\n" : "", cl);
    for (int k = 0; k < r->o.hosts; k++) {
        write_host_config(r, k, cs);
    }
    setenv("CHAOS_EFFECTS", r->effects, 1);
    setenv("LEDGER_FAIL_EVERY", "7", 1);
    char num[32];
    snprintf(num, sizeof num, "%d", o->slow_every);
    setenv("CHAOS_SLOW_EVERY", num, 1);
    snprintf(num, sizeof num, "%g", o->slow_s);
    setenv("CHAOS_SLOW_S", num, 1);

    r->conn = itest_connect();
    /* Left over from an earlier, failed run of the same scenario. */
    itest_queue_delete(r->conn, r->qexec);
    itest_queue_delete(r->conn, r->qledger);
    char dlq[160];
    snprintf(dlq, sizeof dlq, "%s.dlq", r->qexec);
    itest_queue_delete(r->conn, dlq);
    snprintf(dlq, sizeof dlq, "%s.dlq", r->qledger);
    itest_queue_delete(r->conn, dlq);
    if (o->exec_workers > 0) {
        itest_queue_declare(r->conn, r->qexec);
    }
    if (o->ledger_workers > 0) {
        itest_queue_declare(r->conn, r->qledger);
    }
    if (o->exec_workers > 0 && o->ledger_workers > 0) {
        amqp_exchange_declare(r->conn, 1, amqp_cstring_bytes(r->exchange),
                              amqp_cstring_bytes("fanout"), 0, 1, 0, 0,
                              amqp_empty_table);
        assert_int_equal(amqp_get_rpc_reply(r->conn).reply_type,
                         AMQP_RESPONSE_NORMAL);
        bind_queue(r->conn, r->qexec, r->exchange);
        bind_queue(r->conn, r->qledger, r->exchange);
    }
}

void chaos_start_pool(chaos_run *r) {
    if (r->o.failpoint) {
        setenv("WARREN_FAILPOINT", r->o.failpoint, 1);
        setenv("WARREN_FAILPOINT_DIR", r->fpdir, 1);
    } else {
        unsetenv("WARREN_FAILPOINT");
        unsetenv("WARREN_FAILPOINT_DIR");
    }
    /* Host k first connects to node k (itest_spawn passes WARREN_TEST_URL
     * as WARREN_URL, which replaces the first of broker.urls). */
    char *test_url = strdup(itest_url());
    assert_non_null(test_url);
    for (int k = 0; k < r->o.hosts; k++) {
        char host_id[96];
        const char *args[] = {"run",
                              "-c",
                              r->cfgs[k],
                              "--log-level",
                              r->o.log_level ? r->o.log_level : "info",
                              NULL};
        if (r->o.hosts > 1) {
            snprintf(host_id, sizeof host_id, "chaos-%s-host%d", r->o.name, k);
            setenv("WARREN_HOST_ID", host_id, 1);
        }
        setenv("WARREN_TEST_URL", r->urls[k % r->n_urls], 1);
        r->pools[k] = itest_spawn_warren(args, r->logs[k]);
    }
    setenv("WARREN_TEST_URL", test_url, 1);
    free(test_url);
    unsetenv("WARREN_HOST_ID");
    r->pool = r->pools[0];
    unsetenv("WARREN_FAILPOINT");
    unsetenv("WARREN_FAILPOINT_DIR");
}

/* ---- the producer (a forked child; no cmocka in here) ------------------ */

enum {
    ST_UNSENT = 0,
    ST_PENDING,
    ST_CONFIRMED,
    ST_NACKED,
    ST_RETURNED,
    ST_INDET
};
static const char st_char[] = "UPCNRI";

/* One producer: it publishes ids[0..m) in order (an id may appear in two
 * producers' lists: a duplicate), and keeps a status per publish. */
typedef struct {
    const char *url, *exchange, *rk, *prefix;
    int n, m, rate, hb;
    int *ids; /* the id index of each publish */
    char *st; /* per publish */
    int64_t *conf_ms;
    int *tag_idx; /* publishes on this connection, by delivery tag - 1 */
    int n_tags, settled_upto;
} producer;

static amqp_connection_state_t prod_connect(producer *p) {
    char url[1024];
    struct amqp_connection_info ci;
    snprintf(url, sizeof url, "%s", p->url);
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK) {
        return NULL;
    }
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    struct timeval tv = {2, 0};
    if (s == NULL || amqp_socket_open_noblock(s, ci.host, ci.port, &tv) != 0) {
        amqp_destroy_connection(c);
        return NULL;
    }
    amqp_set_handshake_timeout(c, &tv);
    amqp_set_rpc_timeout(c, &tv);
    if (amqp_login(c, ci.vhost, 0, 131072, p->hb, AMQP_SASL_METHOD_PLAIN,
                   ci.user, ci.password)
                .reply_type != AMQP_RESPONSE_NORMAL ||
        amqp_channel_open(c, 1) == NULL || amqp_confirm_select(c, 1) == NULL) {
        amqp_destroy_connection(c);
        return NULL;
    }
    p->n_tags = 0;
    p->settled_upto = 0;
    return c;
}

static int id_index(const producer *p, const amqp_bytes_t id) {
    char buf[128];
    size_t pl = strlen(p->prefix);
    if (id.len >= sizeof buf || id.len <= pl + 1) {
        return -1;
    }
    memcpy(buf, id.bytes, id.len);
    buf[id.len] = '\0';
    long v = strtol(buf + pl + 1, NULL, 10);
    return v >= 0 && v < p->n ? (int)v : -1;
}

static void settle_tags(producer *p, uint64_t tag, int multiple, char to) {
    int64_t now = chaos_now_ms();
    int from = multiple ? p->settled_upto : (int)tag - 1;
    for (int k = from; k < (int)tag && k < p->n_tags; k++) {
        int i = p->tag_idx[k];
        if (p->st[i] == ST_PENDING) {
            p->st[i] = to; /* i: a publish, not an id */
            p->conf_ms[i] = now;
        }
    }
    if (multiple && (int)tag > p->settled_upto) {
        p->settled_upto = (int)tag;
    }
}

/* Reads what the broker sent until `until_ms` (monotonic). Returns 0, or -1
 * if the connection is unusable. */
static int prod_poll(producer *p, amqp_connection_state_t c, int64_t until_ms) {
    for (;;) {
        int64_t left = until_ms - mono_ms();
        struct timeval tv = {0, 0};
        if (left > 0) {
            tv.tv_sec = left / 1000;
            tv.tv_usec = (left % 1000) * 1000;
        }
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(c, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT) {
            return 0;
        }
        if (rc != AMQP_STATUS_OK) {
            return -1;
        }
        if (f.frame_type != AMQP_FRAME_METHOD) {
            continue;
        }
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            settle_tags(p, a->delivery_tag, a->multiple, ST_CONFIRMED);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            amqp_basic_nack_t *a = f.payload.method.decoded;
            settle_tags(p, a->delivery_tag, a->multiple, ST_NACKED);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            amqp_message_t m;
            if (amqp_read_message(c, f.channel, &m, 0).reply_type !=
                AMQP_RESPONSE_NORMAL) {
                return -1;
            }
            if (m.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
                int i = id_index(p, m.properties.message_id);
                /* The pending publish of that id on this connection. */
                for (int k = p->settled_upto; i >= 0 && k < p->n_tags; k++) {
                    int q = p->tag_idx[k];
                    if (p->ids[q] == i && p->st[q] == ST_PENDING) {
                        /* The ack that follows finds it settled already. */
                        p->st[q] = ST_RETURNED;
                        break;
                    }
                }
            }
            amqp_destroy_message(&m);
            break;
        }
        case AMQP_CONNECTION_CLOSE_METHOD:
        case AMQP_CHANNEL_CLOSE_METHOD:
            return -1;
        default:
            break; /* connection.blocked/unblocked: publishes just wait */
        }
    }
}

static void prod_drop(producer *p, amqp_connection_state_t *c) {
    for (int k = 0; k < p->n_tags; k++) {
        if (p->st[p->tag_idx[k]] == ST_PENDING) {
            p->st[p->tag_idx[k]] = ST_INDET;
        }
    }
    amqp_destroy_connection(*c);
    *c = NULL;
}

static int pending(const producer *p) {
    int n = 0;
    for (int k = p->settled_upto; k < p->n_tags; k++) {
        n += p->st[p->tag_idx[k]] == ST_PENDING;
    }
    return n;
}

static void producer_main(producer *p, const char *out_path) {
    amqp_connection_state_t c = NULL;
    int64_t start = mono_ms(), deadline = start + 240000;
    double gap_ms = 1000.0 / p->rate;
    for (int q = 0; q < p->m && mono_ms() < deadline; q++) {
        int i = p->ids[q];
        while (c == NULL && mono_ms() < deadline) {
            c = prod_connect(p);
            if (c == NULL) {
                struct timespec ts = {0, 250 * 1000000L};
                nanosleep(&ts, NULL); /* the broker is down: try again */
            }
        }
        if (c == NULL) {
            break;
        }
        /* Bounded backlog: while the broker withholds confirms (an alarm),
         * wait rather than buffer without end. */
        while (c && pending(p) > 500 && mono_ms() < deadline) {
            if (prod_poll(p, c, mono_ms() + 100) != 0) {
                prod_drop(p, &c);
            }
        }
        if (c == NULL) {
            q--;
            continue;
        }
        char id[128], body[128];
        snprintf(id, sizeof id, "%s-%d", p->prefix, i);
        int len = is_bad(i) ? snprintf(body, sizeof body, "not json %d", i)
                            : snprintf(body, sizeof body,
                                       "{\"account\":\"acct-%d\","
                                       "\"amount\":%d}",
                                       i % 10, i + 1);
        amqp_basic_properties_t props;
        props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG |
                       AMQP_BASIC_MESSAGE_ID_FLAG |
                       AMQP_BASIC_CONTENT_TYPE_FLAG;
        props.delivery_mode = 2;
        props.message_id = amqp_cstring_bytes(id);
        props.content_type = amqp_cstring_bytes("application/json");
        p->st[q] = ST_PENDING;
        p->tag_idx[p->n_tags++] = q;
        amqp_bytes_t b = {(size_t)len, body};
        if (amqp_basic_publish(c, 1, amqp_cstring_bytes(p->exchange),
                               amqp_cstring_bytes(p->rk), 1, 0, &props,
                               b) != AMQP_STATUS_OK) {
            prod_drop(p, &c);
            continue;
        }
        int64_t next = start + (int64_t)((q + 1) * gap_ms);
        if (prod_poll(p, c, next) != 0) {
            prod_drop(p, &c);
        }
    }
    /* The last confirms; whatever does not come is indeterminate. */
    int64_t end = mono_ms() + 60000;
    while (c && pending(p) > 0 && mono_ms() < end) {
        if (prod_poll(p, c, mono_ms() + 100) != 0) {
            prod_drop(p, &c);
        }
    }
    if (c) {
        prod_drop(p, &c);
    }
    FILE *fp = fopen(out_path, "w");
    if (fp == NULL) {
        _exit(3);
    }
    for (int q = 0; q < p->m; q++) {
        fprintf(fp, "%d %c %lld\n", p->ids[q], st_char[(int)p->st[q]],
                (long long)p->conf_ms[q]);
    }
    _exit(fclose(fp) == 0 ? 0 : 3);
}

/* The lag (in ids) of id i's second publish: 0, 20 or 40, in turn, so some
 * duplicates race their original and some come after it was handled. */
static int dup_lag(const chaos_run *r, int i) {
    return ((i / r->o.dup_every) % 3) * 20;
}

/* Producer k's publishes, in order: the ids i with i % producers == k, and
 * the second publish of every dup_every-th id, by the producer after the
 * one that published it first, dup_lag() ids later. Returns how many. */
static int producer_ids(const chaos_run *r, int k, int *ids) {
    int np = r->o.producers, m = 0;
    for (int t = 0; t < r->o.n + 41; t++) {
        if (t < r->o.n && t % np == k) {
            ids[m++] = t;
        }
        for (int lag = 0; r->o.dup_every > 0 && lag <= 40; lag += 20) {
            int i = t - lag;
            if (i >= 0 && i < r->o.n && i % r->o.dup_every == 0 &&
                dup_lag(r, i) == lag && (i % np + 1) % np == k) {
                ids[m++] = i;
            }
        }
    }
    return m;
}

void chaos_start_producer(chaos_run *r) {
    int both = r->o.exec_workers > 0 && r->o.ledger_workers > 0;
    for (int k = 0; k < r->o.producers; k++) {
        int *ids = calloc((size_t)r->o.n * 2 + 1, sizeof *ids);
        assert_non_null(ids);
        int m = producer_ids(r, k, ids);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            producer p = {0};
            p.url = r->urls[k % r->n_urls];
            p.exchange = both ? r->exchange : "";
            p.rk = both ? "" : (r->o.exec_workers > 0 ? r->qexec : r->qledger);
            p.prefix = r->o.name;
            p.n = r->o.n;
            p.m = m;
            p.ids = ids;
            /* The rate is the scenario's: shared by its producers. */
            p.rate =
                r->o.rate / r->o.producers > 0 ? r->o.rate / r->o.producers : 1;
            p.hb = r->o.heartbeat_s;
            p.st = calloc((size_t)m + 1, 1);
            p.conf_ms = calloc((size_t)m + 1, sizeof *p.conf_ms);
            p.tag_idx = calloc((size_t)m + 1, sizeof *p.tag_idx);
            if (!p.st || !p.conf_ms || !p.tag_idx) {
                _exit(4);
            }
            producer_main(&p, k == 0 ? r->prod_out : r->prod_outs[k]);
        }
        free(ids);
        r->producers[k] = pid;
    }
    r->producer = r->producers[0];
}

void chaos_wait_producer(chaos_run *r, double timeout_s) {
    for (int k = 0; k < r->o.producers; k++) {
        int status = 0;
        if (r->producers[k] <= 0) {
            continue;
        }
        if (!itest_wait_exit(r->producers[k], timeout_s, &status)) {
            for (int j = k; j < r->o.producers; j++) {
                kill(r->producers[j], SIGKILL);
                waitpid(r->producers[j], NULL, 0);
                r->producers[j] = 0;
            }
            r->producer = 0;
            fail_msg("%s: producer %d did not finish in %g s", r->o.name, k,
                     timeout_s);
        }
        r->producers[k] = 0;
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    r->producer = 0;
}

/* ---- counting ---------------------------------------------------------- */

typedef struct {
    int n;
    char *st; /* producer status per id (st_char) */
    int64_t *conf_ms;
    int *exec_count;   /* effect lines per id */
    int *exec_crashed; /* of those, lines written by a killed worker */
    int *ledger_count; /* ledger_log rows per id */
    int *dlq_exec, *dlq_ledger;
} tally;

static void tally_free(tally *t) {
    free(t->st);
    free(t->conf_ms);
    free(t->exec_count);
    free(t->exec_crashed);
    free(t->ledger_count);
    free(t->dlq_exec);
    free(t->dlq_ledger);
}

static int parse_index(const chaos_run *r, const char *id) {
    size_t pl = strlen(r->o.name);
    if (strncmp(id, r->o.name, pl) != 0 || id[pl] != '-') {
        return -1;
    }
    char *end;
    long v = strtol(id + pl + 1, &end, 10);
    return v >= 0 && v < r->o.n ? (int)v : -1;
}

/* Workers that died: those the test killed and those that reported a
 * failpoint ("warren: failpoint NAME hit, killing pid PID"). */
static int killed_pids(chaos_run *r, pid_t *out, int max) {
    int n = 0;
    for (int i = 0; i < r->n_killed && n < max; i++) {
        out[n++] = r->killed[i];
    }
    for (int h = 0; h < r->o.hosts; h++) {
        FILE *fp = fopen(r->logs[h], "r");
        char line[2048];
        while (fp && fgets(line, sizeof line, fp) && n < max) {
            const char *k = strstr(line, "hit, killing pid ");
            if (strstr(line, "warren: failpoint ") && k) {
                out[n++] = (pid_t)strtol(k + 17, NULL, 10);
            }
        }
        if (fp) {
            fclose(fp);
        }
    }
    return n;
}

static void count_exec(chaos_run *r, tally *t) {
    pid_t dead[CHAOS_MAX_KILLED * 2];
    int nd = killed_pids(r, dead, CHAOS_MAX_KILLED * 2);
    FILE *fp = fopen(r->effects, "r");
    char line[256], id[160];
    long ppid, line_no = -1;
    while (fp && fgets(line, sizeof line, fp)) {
        line_no++;
        if (sscanf(line, "%159s %ld", id, &ppid) != 2) {
            continue;
        }
        int i = parse_index(r, id);
        if (i < 0) {
            continue;
        }
        t->exec_count[i]++;
        if (line_no >= r->excuse_exec_from && line_no < r->excuse_exec_to) {
            t->exec_crashed[i]++; /* its outcome could not be recorded */
            continue;
        }
        if (ppid == 1) {
            /* Its worker was killed while the script ran: the script was
             * orphaned to init and still wrote its effect. */
            t->exec_crashed[i]++;
            continue;
        }
        for (int k = 0; k < nd; k++) {
            if (dead[k] == (pid_t)ppid) {
                t->exec_crashed[i]++;
                break;
            }
        }
    }
    if (fp) {
        fclose(fp);
    }
}

static void count_ledger(chaos_run *r, tally *t) {
    static const char sql[] = "SELECT id FROM ledger_log WHERE queue = $1";
    if (r->pg) {
        /* No table yet (no ledger call committed): no rows. */
        PGresult *res = pg_query(r, sql, r->qledger);
        for (int k = 0; res && k < PQntuples(res); k++) {
            int i = parse_index(r, PQgetvalue(res, k, 0));
            if (i >= 0) {
                t->ledger_count[i]++;
            }
        }
        PQclear(res);
        return;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(r->db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_busy_timeout(db, 2000) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, r->qledger, -1, SQLITE_STATIC);
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *id = (const char *)sqlite3_column_text(st, 0);
            int i = id ? parse_index(r, id) : -1;
            if (i >= 0) {
                t->ledger_count[i]++;
            }
        }
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* How sure a status is that the id reached the broker: an id published
 * twice takes the surer of its two (confirmed once is confirmed). */
static int st_rank(char c) {
    const char *order = "URNIC";
    const char *p = c ? strchr(order, c) : NULL;
    return p ? (int)(p - order) : -1;
}

static void read_produced(chaos_run *r, tally *t) {
    for (int k = 0; k < r->o.producers; k++) {
        FILE *fp = fopen(k == 0 ? r->prod_out : r->prod_outs[k], "r");
        assert_non_null(fp);
        int i;
        char c;
        long long ms;
        while (fscanf(fp, "%d %c %lld", &i, &c, &ms) == 3) {
            if (i < 0 || i >= t->n) {
                continue;
            }
            if (st_rank(c) > st_rank(t->st[i])) {
                t->st[i] = c;
                t->conf_ms[i] = ms;
            } else if (c == 'C' && t->st[i] == 'C' && ms < t->conf_ms[i]) {
                t->conf_ms[i] = ms; /* the earlier confirm */
            }
        }
        fclose(fp);
    }
}

static void tally_init(chaos_run *r, tally *t) {
    size_t n = (size_t)r->o.n;
    t->n = r->o.n;
    t->st = calloc(n, 1);
    t->conf_ms = calloc(n, sizeof *t->conf_ms);
    t->exec_count = calloc(n, sizeof(int));
    t->exec_crashed = calloc(n, sizeof(int));
    t->ledger_count = calloc(n, sizeof(int));
    t->dlq_exec = calloc(n, sizeof(int));
    t->dlq_ledger = calloc(n, sizeof(int));
    assert_true(t->st && t->conf_ms && t->exec_count && t->exec_crashed &&
                t->ledger_count && t->dlq_exec && t->dlq_ledger);
    read_produced(r, t);
    if (r->o.exec_workers > 0) {
        count_exec(r, t);
    }
    if (r->o.ledger_workers > 0) {
        count_ledger(r, t);
    }
}

long chaos_effects(chaos_run *r) {
    long n = r->o.exec_workers > 0 ? itest_count_lines(r->effects) : 0;
    if (n < 0) {
        n = 0;
    }
    if (r->o.ledger_workers > 0) {
        long long v = chaos_store_count(
            r, "SELECT count(*) FROM ledger_log WHERE queue = $1", r->qledger);
        n += v > 0 ? (long)v : 0;
    }
    return n;
}

typedef struct {
    chaos_run *r;
    long want;
} effects_arg;

static int effects_reached(void *arg) {
    effects_arg *a = arg;
    return chaos_effects(a->r) >= a->want;
}

void chaos_wait_effects(chaos_run *r, long want, double timeout_s) {
    effects_arg a = {r, want};
    if (!itest_wait_until(effects_reached, &a, timeout_s)) {
        fail_msg("%s: only %ld effects after %g s (wanted %ld); see %s",
                 r->o.name, chaos_effects(r), timeout_s, want, r->log);
    }
}

int chaos_workers(chaos_run *r, pid_t *out, int max) {
    return chaos_host_workers(r, 0, out, max);
}

int chaos_host_workers(chaos_run *r, int host, pid_t *out, int max) {
    char path[64], buf[1024];
    int n = 0;
    pid_t pool = host >= 0 && host < r->o.hosts ? r->pools[host] : 0;
    if (pool <= 0) {
        return 0;
    }
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pool,
             (int)pool);
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        return 0;
    }
    if (fgets(buf, sizeof buf, fp)) {
        char *save = NULL;
        for (char *t = strtok_r(buf, " \n", &save); t && n < max;
             t = strtok_r(NULL, " \n", &save)) {
            out[n++] = (pid_t)strtol(t, NULL, 10);
        }
    }
    fclose(fp);
    return n;
}

pid_t chaos_kill_worker(chaos_run *r, unsigned pick) {
    pid_t w[64];
    int n = chaos_workers(r, w, 64);
    if (n == 0 || r->n_killed >= CHAOS_MAX_KILLED) {
        return -1;
    }
    pid_t v = w[pick % (unsigned)n];
    if (kill(v, SIGKILL) != 0) {
        return -1;
    }
    r->killed[r->n_killed++] = v;
    return v;
}

int chaos_kill_host(chaos_run *r, int host) {
    pid_t w[64];
    int n = chaos_host_workers(r, host, w, 64), killed = 0;
    pid_t sup = r->pools[host];
    if (sup <= 0) {
        return 0;
    }
    /* The supervisor first, so it restarts nobody; then what it had. */
    if (kill(sup, SIGKILL) == 0) {
        killed++;
    }
    for (int i = 0; i < n; i++) {
        if (kill(w[i], SIGKILL) == 0 && r->n_killed < CHAOS_MAX_KILLED) {
            r->killed[r->n_killed++] = w[i];
            killed++;
        }
    }
    waitpid(sup, NULL, 0);
    r->pools[host] = 0;
    if (host == 0) {
        r->pool = 0;
    }
    return killed;
}

int chaos_sh(const char *cmd, char *out, size_t outlen) {
    FILE *fp = popen(cmd, "r");
    if (fp == NULL) {
        return -1;
    }
    size_t got = 0;
    char buf[512];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, fp)) > 0) {
        if (out && got + 1 < outlen) {
            size_t m = k < outlen - 1 - got ? k : outlen - 1 - got;
            memcpy(out + got, buf, m);
            got += m;
        }
    }
    if (out && outlen) {
        out[got] = '\0';
    }
    int st = pclose(fp);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int chaos_ctl(const char *const args[], char *out, size_t outlen) {
    const char *name = getenv("WARREN_BROKER_NAME");
    const char *src = getenv("WARREN_SOURCE_DIR");
    if (name == NULL || src == NULL) {
        skip();
    }
    char cmd[2048];
    int len =
        snprintf(cmd, sizeof cmd, "bash '%s/scripts/broker' ctl --name '%s' --",
                 src, name);
    for (int i = 0; args[i] && len < (int)sizeof cmd; i++) {
        /* Arguments are the test's own constants; quoted for the shell. */
        len += snprintf(cmd + len, sizeof cmd - (size_t)len, " '%s'", args[i]);
    }
    if (len >= (int)sizeof cmd - 8) {
        return -1;
    }
    snprintf(cmd + len, sizeof cmd - (size_t)len, " 2>&1");
    return chaos_sh(cmd, out, outlen);
}

/* ---- drain ------------------------------------------------------------- */

typedef struct {
    chaos_run *r;
    tally t;
    int64_t next_ctl_ms;
} drain_arg;

static int all_handled(drain_arg *a, int exec) {
    chaos_run *r = a->r;
    int *cnt = exec ? a->t.exec_count : a->t.ledger_count;
    long bad = 0;
    for (int i = 0; i < r->o.n; i++) {
        if (a->t.st[i] != 'C') {
            continue;
        }
        if (is_bad(i)) {
            bad++;
        } else if (cnt[i] == 0 && !(r->excuse_from_ms &&
                                    a->t.conf_ms[i] >= r->excuse_from_ms &&
                                    a->t.conf_ms[i] < r->excuse_to_ms)) {
            return 0;
        }
    }
    char dlq[160];
    snprintf(dlq, sizeof dlq, "%s.dlq", exec ? r->qexec : r->qledger);
    long depth = itest_queue_depth(r->conn, dlq);
    if (depth < bad && !r->excuse_from_ms) {
        return 0;
    }
    return itest_queue_depth(r->conn, exec ? r->qexec : r->qledger) == 0;
}

/* 1 if no work queue of the scenario has unacked deliveries (rabbitmqctl:
 * slow, so asked at most once a second and only when all else is done). */
static int nothing_unacked(drain_arg *a) {
    if (mono_ms() < a->next_ctl_ms) {
        return 0;
    }
    a->next_ctl_ms = mono_ms() + 1000;
    char out[8192];
    const char *args[] = {"list_queues", "-q", "name",
                          "messages_unacknowledged", NULL};
    if (chaos_ctl(args, out, sizeof out) != 0) {
        return 0;
    }
    for (char *save = NULL, *l = strtok_r(out, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save)) {
        char name[256];
        long un;
        if (sscanf(l, "%255s %ld", name, &un) == 2 &&
            strncmp(name, "chaos.", 6) == 0 && strstr(name, a->r->o.name) &&
            un != 0) {
            return 0;
        }
    }
    return 1;
}

static int drained(void *arg) {
    drain_arg *a = arg;
    chaos_run *r = a->r;
    memset(a->t.exec_count, 0, sizeof(int) * (size_t)r->o.n);
    memset(a->t.exec_crashed, 0, sizeof(int) * (size_t)r->o.n);
    memset(a->t.ledger_count, 0, sizeof(int) * (size_t)r->o.n);
    if (r->o.exec_workers > 0) {
        count_exec(r, &a->t);
        if (!all_handled(a, 1)) {
            return 0;
        }
    }
    if (r->o.ledger_workers > 0) {
        count_ledger(r, &a->t);
        if (!all_handled(a, 0)) {
            return 0;
        }
    }
    /* Claims and retry records of messages dropped with a deleted queue
     * stay behind (their leases and records age out): not awaited then. */
    if ((!r->excuse_from_ms &&
         chaos_store_count(r,
                           "SELECT count(*) FROM %s WHERE state IN "
                           "('processing', 'retrying')",
                           NULL) != 0) ||
        !itest_delay_cascade_empty(r->conn)) {
        return 0;
    }
    return nothing_unacked(a);
}

int chaos_drain(chaos_run *r, double timeout_s) {
    drain_arg a = {r, {0}, 0};
    tally_init(r, &a.t);
    int ok = itest_wait_until(drained, &a, timeout_s);
    tally_free(&a.t);
    return ok;
}

void chaos_stop_pool(chaos_run *r) {
    int status[CHAOS_MAX_HOSTS] = {0};
    /* All at once: each has the same grace. */
    for (int k = 0; k < r->o.hosts; k++) {
        if (r->pools[k] > 0) {
            kill(r->pools[k], SIGTERM);
        }
    }
    for (int k = 0; k < r->o.hosts; k++) {
        /* Not itest_terminate(): a second SIGTERM means "now". */
        if (r->pools[k] > 0 && !itest_wait_exit(r->pools[k], 40, &status[k])) {
            kill(r->pools[k], SIGKILL);
            waitpid(r->pools[k], &status[k], 0);
        }
    }
    pid_t was[CHAOS_MAX_HOSTS];
    memcpy(was, r->pools, sizeof was);
    memset(r->pools, 0, sizeof r->pools);
    r->pool = 0;
    for (int k = 0; k < r->o.hosts; k++) {
        if (was[k] > 0 &&
            (!WIFEXITED(status[k]) || WEXITSTATUS(status[k]) != 0)) {
            fail_msg("%s: host %d's pool did not stop cleanly (status %#x); "
                     "see %s",
                     r->o.name, k, status[k], r->logs[k]);
        }
    }
}

/* ---- the check --------------------------------------------------------- */

static long take_dlq(chaos_run *r, const char *queue, int *per_id) {
    char dlq[160];
    long n = 0;
    snprintf(dlq, sizeof dlq, "%s.dlq", queue);
    itest_msg m;
    while (itest_get(r->conn, dlq, &m, 0) == 1) {
        int i = parse_index(r, m.message_id);
        if (i >= 0) {
            per_id[i]++;
        }
        n++;
        itest_msg_free(&m);
    }
    return n;
}

static long depth0(chaos_run *r, const char *q) {
    long d = itest_queue_depth(r->conn, q);
    return d < 0 ? 0 : d;
}

long chaos_host_log_count(chaos_run *r, int host, const char *needle) {
    FILE *fp = fopen(r->logs[host], "r");
    char line[4096];
    long n = 0;
    while (fp && fgets(line, sizeof line, fp)) {
        n += strstr(line, needle) != NULL;
    }
    if (fp) {
        fclose(fp);
    }
    return n;
}

long chaos_log_count(chaos_run *r, const char *needle) {
    long n = 0;
    for (int k = 0; k < r->o.hosts; k++) {
        n += chaos_host_log_count(r, k, needle);
    }
    return n;
}

void chaos_check(chaos_run *r) {
    tally t = {0};
    tally_init(r, &t);
    r->good_dead = 0;
    int ex = r->o.exec_workers > 0, le = r->o.ledger_workers > 0;
    if (ex) {
        take_dlq(r, r->qexec, t.dlq_exec);
    }
    if (le) {
        take_dlq(r, r->qledger, t.dlq_ledger);
    }
    long sent = 0, conf = 0, nack = 0, ret = 0, indet = 0;
    long ex_once = 0, ex_multi = 0, ex_multi_unexplained = 0;
    long le_once = 0, le_multi = 0, in_dlq = 0, dlq_extra = 0, lost = 0;
    long dropped = 0;
    long wrong = 0; /* handled and dead-lettered, or a bad body handled */
    for (int i = 0; i < t.n; i++) {
        char s = t.st[i];
        sent += s != 'U';
        conf += s == 'C';
        nack += s == 'N';
        ret += s == 'R';
        indet += s == 'I';
        for (int k = 0; k < 2; k++) {
            int on = k == 0 ? ex : le;
            int cnt = k == 0 ? t.exec_count[i] : t.ledger_count[i];
            int dl = k == 0 ? t.dlq_exec[i] : t.dlq_ledger[i];
            if (!on) {
                continue;
            }
            in_dlq += dl > 0;
            dlq_extra += dl > 1 ? dl - 1 : 0;
            if (k == 0 && cnt == 1) {
                ex_once++;
            } else if (k == 0 && cnt > 1) {
                ex_multi++;
                /* A second run is allowed only after a crash of the worker
                 * that ran it first. */
                if (t.exec_crashed[i] < cnt - 1) {
                    ex_multi_unexplained++;
                }
            } else if (k == 1 && cnt == 1) {
                le_once++;
            } else if (k == 1 && cnt > 1) {
                le_multi++;
            }
            /* A dead-letter copy is at-least-once like any publish: a crash
             * or a lost connection between its confirm and the outcome
             * commit sends a second one. Handled *and* dead is wrong. */
            if ((is_bad(i) && cnt > 0) || (cnt > 0 && dl > 0)) {
                wrong++;
            }
            if (!is_bad(i) && cnt == 0 && dl > 0) {
                r->good_dead++;
            }
            if (s == 'C' && cnt == 0 && dl == 0) {
                if (r->excuse_from_ms && t.conf_ms[i] >= r->excuse_from_ms &&
                    t.conf_ms[i] < r->excuse_to_ms) {
                    dropped++;
                } else {
                    lost++;
                }
            }
        }
    }
    long left = 0;
    const char *qs[2] = {ex ? r->qexec : NULL, le ? r->qledger : NULL};
    for (int k = 0; k < 2; k++) {
        char q[160];
        if (qs[k] == NULL) {
            continue;
        }
        left += depth0(r, qs[k]);
        snprintf(q, sizeof q, "%s.retry", qs[k]);
        left += depth0(r, q);
        snprintf(q, sizeof q, "%s.dlq", qs[k]);
        left += depth0(r, q);
    }
    int cascade_empty = itest_delay_cascade_empty(r->conn);
    int empty = left == 0 && cascade_empty;
    int pass = lost == 0 && le_multi == 0 && ex_multi_unexplained == 0 &&
               wrong == 0 && empty && conf > 0;
    if (dropped) {
        size_t l = strlen(r->note);
        snprintf(r->note + l, sizeof r->note - l,
                 "%s%ld confirmed ids dropped with the deleted queue",
                 l ? "; " : "", dropped);
    }
    char ex_once_s[16] = "-", ex_multi_s[48] = "-", le_once_s[16] = "-",
         le_multi_s[16] = "-";
    if (ex) {
        snprintf(ex_once_s, sizeof ex_once_s, "%ld", ex_once);
        snprintf(ex_multi_s, sizeof ex_multi_s, "%ld%s", ex_multi,
                 ex_multi == 0 ? ""
                 : ex_multi_unexplained == 0
                     ? (r->excuse_exec_to ? " (all in flight at a crash or "
                                            "the outage)"
                                          : " (all in flight at a crash)")
                     : " (NOT all at a crash)");
    }
    if (le) {
        snprintf(le_once_s, sizeof le_once_s, "%ld", le_once);
        snprintf(le_multi_s, sizeof le_multi_s, "%ld", le_multi);
    }
    double secs = (double)(mono_ms() - r->t0_ms) / 1000.0;
    char row[1024];
    snprintf(
        row, sizeof row,
        "| %s%s | %ld | %ld | %ld/%ld/%ld | %s | %s | %s | %s | %ld (+%ld) "
        "| %ld | %s | %.0f s | %s | %s |",
        r->o.name, r->pg ? "@pg" : "", sent, conf, nack, indet, ret, ex_once_s,
        ex_multi_s, le_once_s, le_multi_s, in_dlq, dlq_extra, lost,
        empty ? "yes" : "NO", secs, pass ? "pass" : "FAIL",
        r->note[0] ? r->note : "");
    printf("%s\n", row);
    fflush(stdout);
    const char *out = getenv("CHAOS_RESULTS");
    char path[1024];
    if (out == NULL) {
        snprintf(path, sizeof path, "%s/chaos-results.md",
                 getenv("WARREN_BUILD_DIR") ? getenv("WARREN_BUILD_DIR")
                                            : "/tmp");
        out = path;
    }
    FILE *fp = fopen(out, "a");
    if (fp) {
        fprintf(fp, "%s\n", row);
        fclose(fp);
    }
    tally_free(&t);
    if (!pass) {
        fail_msg("%s: invariant broken (lost %ld, ledger doubles %ld, "
                 "unexplained exec doubles %ld, misplaced %ld, left in "
                 "queues %ld, cascade empty %d); see %s",
                 r->o.name, lost, le_multi, ex_multi_unexplained, wrong, left,
                 cascade_empty, r->log);
    }
}

void chaos_teardown(chaos_run *r) {
    for (int k = 0; k < CHAOS_MAX_NODES; k++) {
        if (r->producers[k] > 0) {
            kill(r->producers[k], SIGKILL);
            waitpid(r->producers[k], NULL, 0);
        }
    }
    for (int k = 0; k < CHAOS_MAX_HOSTS; k++) {
        if (r->pools[k] > 0) {
            itest_terminate(r->pools[k], 10);
        }
    }
    pg_teardown(r);
    const char *qs[2] = {r->qexec, r->qledger};
    for (int k = 0; k < 2; k++) {
        char q[160];
        itest_queue_delete(r->conn, qs[k]);
        snprintf(q, sizeof q, "%s.dlq", qs[k]);
        itest_queue_delete(r->conn, q);
        snprintf(q, sizeof q, "%s.retry", qs[k]);
        itest_queue_delete(r->conn, q);
    }
    if (r->o.exec_workers > 0 && r->o.ledger_workers > 0) {
        amqp_exchange_delete(r->conn, 1, amqp_cstring_bytes(r->exchange), 0);
        amqp_get_rpc_reply(r->conn);
    }
    itest_disconnect(r->conn);
    if (getenv("CHAOS_KEEP") == NULL) {
        itest_rmtree(r->dir);
    } else {
        printf("%s: kept %s\n", r->o.name, r->dir);
    }
    free(r->dir);
}

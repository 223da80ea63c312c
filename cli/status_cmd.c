/*
 * status_cmd.c - `warren status`: per consumer, what is waiting where:
 * the work queue (ready messages and consumers attached), the retry delay
 * cascade, the dead-letter queue with the age of its oldest letter, and the
 * store's records by state. Read-only apart from peeking at the head of
 * each DLQ (taken and put straight back, keeping its position).
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "dlq.h"
#include "log.h"
#include "failover.h"
#include "session.h"
#include "store.h"
#include "topology.h"

typedef struct {
    const char *queue;
    cJSON *states; /* object state -> rows */
} store_rows;

static void add_row(const char *queue, const char *state, int64_t rows,
                    void *user) {
    store_rows *sr = user;
    if (strcmp(queue, sr->queue) == 0) {
        cJSON_AddNumberToObject(sr->states, state, (double)rows);
    }
}

/* Depth of `queue`, -1 if it does not exist. */
static long depth(warren__session *s, const char *queue, long *consumers) {
    uint32_t m = 0, c = 0;
    if (warren__session_queue_info(s, queue, &m, &c) != 0) {
        if (consumers) {
            *consumers = -1;
        }
        return -1;
    }
    if (consumers) {
        *consumers = (long)c;
    }
    return (long)m;
}

/* Age in seconds of the oldest dead letter (its x-warren-dead-at, or the
 * time in x-death for one the broker dead-lettered), or -1. The head is
 * read with basic.get and rejected with requeue, which puts it back where
 * it was. */
static long oldest_age_s(warren__session *s, const warren__consumer_cfg *c,
                         const char *dlq) {
    warren__delivery d;
    warren__dlq_entry e;
    long age = -1;
    warren__delivery_init(&d);
    if (warren__session_get(s, dlq, &d, 1u << 20) == 1) {
        warren__dlq_entry_fill(&e, c, &d.msg);
        if (e.dead_at_ms > 0) {
            age = (long)((warren__now_ms() - e.dead_at_ms) / 1000);
        }
        warren__session_nack(s, d.msg.delivery_tag, 0, 1);
    }
    warren__delivery_free(&d);
    return age;
}

int cmd_status(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"json", no_argument, 0, 'j'},
                                         {0, 0, 0, 0}};
    const char *path = NULL;
    int json = 0, opt, rc;
    char err[1024];
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:j", opts, NULL)) != -1) {
        if (opt == 'c') {
            path = optarg;
        } else if (opt == 'j') {
            json = 1;
        } else {
            return EXIT_USAGE;
        }
    }
    if (cli_log_init(NULL) != 0) {
        return EXIT_USAGE;
    }
    warren_config *cfg = cli_load_config(path);
    if (cfg == NULL) {
        return EXIT_USAGE;
    }
    /* The store is only looked at, never created: a missing file means the
     * config names another store than the workers' (a relative path from
     * another directory), and counts from a new empty one would mislead. */
    warren__store *st = NULL;
    int any_dedup = 0;
    for (int i = 0; i < cfg->n_consumers; i++) {
        any_dedup |= cfg->consumers[i].dedup;
    }
    if (any_dedup) {
        rc = warren__store_open_config(cfg, NULL, WARREN__STORE_F_MUST_EXIST,
                                       &st, err, sizeof err);
        if (rc == WARREN_ERR_NOT_FOUND) {
            cli_error("%s", err);
            warren_config_free(cfg);
            return EXIT_USAGE;
        }
        if (rc != 0) {
            cli_error("%s (store counts left out)", err);
        }
    }
    warren__session *s = NULL;
    rc = warren__session_connect_any(cfg, 0, &s, NULL, err, sizeof err);
    if (rc != 0) {
        cli_error("%s", err);
        warren__store_close(st);
        warren_config_free(cfg);
        return cli_exit_code(rc);
    }

    cJSON *all = cJSON_CreateArray();
    for (int i = 0; i < cfg->n_consumers; i++) {
        const warren__consumer_cfg *c = &cfg->consumers[i];
        int quorum = c->queue_type == WARREN__QUEUE_QUORUM;
        cJSON *o = cJSON_CreateObject();
        long consumers = 0, retry = 0;
        char name[WARREN__NAME_MAX + 16];
        cJSON_AddStringToObject(o, "queue", c->queue);
        cJSON_AddNumberToObject(o, "ready",
                                (double)depth(s, c->queue, &consumers));
        cJSON_AddNumberToObject(o, "consumers", (double)consumers);
        cJSON *tiers = cJSON_AddObjectToObject(o, "retry_tiers");
        for (int l = 0; l < WARREN__DELAY_LEVELS; l++) {
            snprintf(name, sizeof name, "warren.%sdelay.%d", quorum ? "q" : "",
                     l);
            long d = depth(s, name, NULL);
            if (d > 0) {
                cJSON_AddNumberToObject(tiers, name, (double)d);
                retry += d;
            }
        }
        if (c->retry.mode == WARREN__RETRY_NACK) {
            snprintf(name, sizeof name, "%s.retry", c->queue);
            long d = depth(s, name, NULL);
            cJSON_AddNumberToObject(tiers, name, (double)d);
            retry += d > 0 ? d : 0;
        }
        cJSON_AddNumberToObject(o, "retrying", (double)retry);
        const char *dlq = warren__dlq_name(c);
        long dd = depth(s, dlq, NULL);
        cJSON_AddStringToObject(o, "dlq", dlq);
        cJSON_AddNumberToObject(o, "dlq_depth", (double)dd);
        cJSON_AddNumberToObject(
            o, "dlq_oldest_age_s",
            (double)(dd > 0 ? oldest_age_s(s, c, dlq) : -1));
        store_rows sr = {c->queue, cJSON_AddObjectToObject(o, "store")};
        if (st) {
            warren__store_stats(st, add_row, &sr);
        }
        cJSON_AddItemToArray(all, o);
    }
    if (json) {
        char *text = cJSON_Print(all);
        puts(text);
        cJSON_free(text);
    } else {
        cJSON *o;
        cJSON_ArrayForEach(o, all) {
            printf("%s\n", cJSON_GetObjectItem(o, "queue")->valuestring);
            printf("  ready %-10.0f consumers %.0f\n",
                   cJSON_GetObjectItem(o, "ready")->valuedouble,
                   cJSON_GetObjectItem(o, "consumers")->valuedouble);
            printf("  retrying %.0f (in the delay cascade)\n",
                   cJSON_GetObjectItem(o, "retrying")->valuedouble);
            printf("  dead letters %.0f in %s, oldest %.0f s\n",
                   cJSON_GetObjectItem(o, "dlq_depth")->valuedouble,
                   cJSON_GetObjectItem(o, "dlq")->valuestring,
                   cJSON_GetObjectItem(o, "dlq_oldest_age_s")->valuedouble);
            cJSON *state;
            printf("  store:");
            cJSON_ArrayForEach(state, cJSON_GetObjectItem(o, "store")) {
                printf(" %s %.0f", state->string, state->valuedouble);
            }
            printf("\n");
        }
    }
    cJSON_Delete(all);
    warren__store_close(st);
    warren__session_free(s);
    warren_config_free(cfg);
    return EXIT_OK;
}

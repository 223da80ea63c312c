/*
 * topology_cmd.c - `warren topology declare|show`: the queues, exchanges
 * and bindings every consumer in a config needs, shown without touching the
 * broker, or declared idempotently (what workers also do at start).
 */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "failover.h"
#include "session.h"
#include "topology.h"

static void show_op(const warren__topo_op *op) {
    switch (op->kind) {
    case WARREN__OP_EXCHANGE:
        printf("exchange %s (%s, durable)\n", op->name, op->type);
        break;
    case WARREN__OP_QUEUE:
        printf("queue    %s (durable)", op->name);
        for (int i = 0; i < op->n_args; i++) {
            if (op->args[i].type == WARREN__ARG_STR) {
                printf(" %s=%s", op->args[i].key, op->args[i].str);
            } else {
                printf(" %s=%lld", op->args[i].key, (long long)op->args[i].num);
            }
        }
        printf("\n");
        break;
    case WARREN__OP_BIND_QUEUE:
        printf("bind     queue %s <- exchange %s key %s\n", op->name,
               op->source, op->key);
        break;
    case WARREN__OP_BIND_EXCHANGE:
        printf("bind     exchange %s <- exchange %s key %s\n", op->name,
               op->source, op->key);
        break;
    }
}

int cmd_topology(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {0, 0, 0, 0}};
    const char *path = NULL;
    int opt, rc = 0;
    if (argc < 2 || (strcmp(argv[1], "declare") && strcmp(argv[1], "show"))) {
        cli_error("usage: warren topology declare|show -c FILE");
        return EXIT_USAGE;
    }
    int declare = strcmp(argv[1], "declare") == 0;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
        if (opt == 'c') {
            path = optarg;
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
    warren__topo_op *ops = calloc(WARREN__TOPO_MAX_OPS, sizeof *ops);
    warren__session *s = NULL;
    char err[1024];
    if (ops == NULL) {
        rc = WARREN_ERR_NOMEM;
    } else if (declare) {
        rc = warren__session_connect_any(cfg, 0, &s, NULL, err, sizeof err);
        if (rc != 0) {
            cli_error("%s", err);
        }
    }
    for (int i = 0; rc == 0 && i < cfg->n_consumers; i++) {
        int n = warren__topology_plan(&cfg->consumers[i], ops,
                                      WARREN__TOPO_MAX_OPS);
        if (n < 0) {
            cli_error("consumer '%s': cannot plan its topology",
                      cfg->consumers[i].queue);
            rc = WARREN_ERR_CONFIG;
            break;
        }
        printf("# consumer %s\n", cfg->consumers[i].queue);
        for (int j = 0; j < n; j++) {
            show_op(&ops[j]);
        }
        if (declare) {
            rc = warren__session_apply(s, ops, n);
            if (rc != 0) {
                cli_error("%s", warren__session_errstr(s));
            }
        }
    }
    if (declare && rc == 0) {
        printf("declared.\n");
    }
    warren__session_free(s);
    free(ops);
    warren_config_free(cfg);
    return cli_exit_code(rc);
}

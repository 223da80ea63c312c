/*
 * store_cmd.c - `warren store stats|forget|prune|migrate`: an operator's
 * view of the message store, working on the same file or database the
 * workers use (safe while they run: every write is its own short
 * transaction).
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "store.h"

typedef struct {
    cJSON *rows; /* --json */
} stats_ctx;

static void print_row(const char *queue, const char *state, int64_t rows,
                      void *user) {
    stats_ctx *sc = user;
    if (sc->rows) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "queue", queue);
        cJSON_AddStringToObject(o, "state", state);
        cJSON_AddNumberToObject(o, "rows", (double)rows);
        cJSON_AddItemToArray(sc->rows, o);
    } else {
        printf("%-32s %-12s %12lld\n", queue, state, (long long)rows);
    }
}

static int open_for_cli(const warren_config *cfg, unsigned flags,
                        warren__store **st) {
    char err[1024];
    int rc = warren__store_open_config(cfg, NULL, flags, st, err, sizeof err);
    if (rc != 0) {
        cli_error("%s", err);
    }
    return rc;
}

int cmd_store(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"queue", required_argument, 0, 'q'},
                                         {"id", required_argument, 0, 'i'},
                                         {"json", no_argument, 0, 'j'},
                                         {"out", required_argument, 0, 'o'},
                                         {"in", required_argument, 0, 'n'},
                                         {"force", no_argument, 0, 'f'},
                                         {0, 0, 0, 0}};
    const char *path = NULL, *queue = NULL, *id = NULL, *sub;
    const char *out = NULL, *in = NULL;
    int json = 0, force = 0, opt, rc;
    if (argc < 2) {
        cli_error("usage: warren store stats|forget|prune|migrate|export|"
                  "import -c FILE");
        return EXIT_USAGE;
    }
    sub = argv[1];
    optind = 2;
    while ((opt = getopt_long(argc, argv, "c:q:i:jo:n:f", opts, NULL)) != -1) {
        switch (opt) {
        case 'o':
            out = optarg;
            break;
        case 'n':
            in = optarg;
            break;
        case 'f':
            force = 1;
            break;
        case 'c':
            path = optarg;
            break;
        case 'q':
            queue = optarg;
            break;
        case 'i':
            id = optarg;
            break;
        case 'j':
            json = 1;
            break;
        default:
            return EXIT_USAGE;
        }
    }
    if (strcmp(sub, "stats") && strcmp(sub, "forget") && strcmp(sub, "prune") &&
        strcmp(sub, "migrate") && strcmp(sub, "export") &&
        strcmp(sub, "import")) {
        cli_error("store: unknown subcommand '%s' (stats, forget, prune, "
                  "migrate, export, import)",
                  sub);
        return EXIT_USAGE;
    }
    if (strcmp(sub, "forget") == 0 && (queue == NULL || id == NULL)) {
        cli_error("store forget: needs --queue Q and --id ID");
        return EXIT_USAGE;
    }
    warren_config *cfg = cli_load_config(path);
    if (cfg == NULL) {
        return EXIT_USAGE;
    }
    warren__store *st = NULL;
    /* Only migrate creates or upgrades the store (as `warren run` does). */
    int migrate = strcmp(sub, "migrate") == 0 || strcmp(sub, "import") == 0;
    rc = open_for_cli(cfg, migrate ? 0 : WARREN__STORE_F_MUST_EXIST, &st);
    if (rc == WARREN_ERR_NOT_FOUND) {
        /* No such file: the config names another store than the workers'
         * (they create it); an empty new one would show nothing. */
        warren_config_free(cfg);
        return EXIT_USAGE;
    }
    if (rc == 0 && (strcmp(sub, "export") == 0 || strcmp(sub, "import") == 0)) {
        int code = sub[0] == 'e' ? cli_store_export(st, out, force)
                                 : cli_store_import(st, in);
        warren__store_close(st);
        warren_config_free(cfg);
        return code;
    }
    if (rc == 0 && migrate) {
        printf("store %s (%s): schema up to date\n", warren__store_path(st),
               warren__store_backend(st));
    } else if (rc == 0 && strcmp(sub, "stats") == 0) {
        stats_ctx sc = {json ? cJSON_CreateArray() : NULL};
        struct stat sb;
        /* A database server's size is not ours to report: -1. */
        long long size =
            cfg->store.url == NULL && stat(cfg->store.path, &sb) == 0
                ? sb.st_size
                : -1;
        if (!json && cfg->store.url) {
            printf("store %s (postgresql)\n", warren__store_path(st));
            printf("%-32s %-12s %12s\n", "QUEUE", "STATE", "ROWS");
        } else if (!json) {
            printf("store %s (%lld bytes)\n", cfg->store.path, size);
            printf("%-32s %-12s %12s\n", "QUEUE", "STATE", "ROWS");
        }
        rc = warren__store_stats(st, print_row, &sc);
        if (json && rc == 0) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "path", warren__store_path(st));
            cJSON_AddStringToObject(o, "backend", warren__store_backend(st));
            cJSON_AddNumberToObject(o, "bytes", (double)size);
            cJSON_AddItemToObject(o, "rows", sc.rows);
            char *text = cJSON_Print(o);
            puts(text);
            cJSON_free(text);
            cJSON_Delete(o);
        } else if (sc.rows) {
            cJSON_Delete(sc.rows);
        }
    } else if (rc == 0 && strcmp(sub, "forget") == 0) {
        rc = warren__store_forget(st, queue, id, warren__now_ms());
        if (rc == 0) {
            printf("forgot %s/%s: it will run again if delivered\n", queue, id);
        }
    } else if (rc == 0) {
        int total = 0, deleted;
        do {
            rc = warren__store_prune(st, warren__now_ms(),
                                     cfg->store.retention_s, 1000, &deleted);
            total += rc == 0 ? deleted : 0;
        } while (rc == 0 && deleted == 1000);
        if (rc == 0) {
            printf("pruned %d records older than %u s\n", total,
                   cfg->store.retention_s);
        }
    }
    if (rc != 0 && st) {
        cli_error("%s", warren__store_errstr(st));
    }
    warren__store_close(st);
    warren_config_free(cfg);
    if (rc == WARREN_ERR_NOT_FOUND) {
        return EXIT_FAILURE_RUNTIME;
    }
    return cli_exit_code(rc);
}

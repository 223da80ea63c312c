/*
 * main.c - the `warren` command: dispatches subcommands, prints help, and
 * maps library errors to the documented exit codes. It is the only place
 * that decides how the process exits.
 */
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "hostid.h"

static const char *usage_main =
    "usage: warren <command> [options]\n"
    "\n"
    "commands:\n"
    "  run -c FILE        run the consumers of FILE (a supervised worker "
    "pool)\n"
    "  topology declare|show -c FILE\n"
    "                     declare or show the queues and exchanges FILE needs\n"
    "  store stats|forget|prune -c FILE\n"
    "                     inspect and maintain the message store\n"
    "  dlq list|show|replay|purge|export|import -c FILE --queue Q\n"
    "                     inspect and replay dead letters\n"
    "  status -c FILE     queue depths, retries, dead letters, store counts\n"
    "  help [COMMAND]     this text, or a command's\n"
    "  --version          print the version\n"
    "\n"
    "The broker URL comes from WARREN_URL (preferred: keeps credentials off\n"
    "the command line) or broker.url in the config.\n"
    "\n"
    "exit codes:\n"
    "  0  success (also after SIGTERM/SIGINT with a clean stop)\n"
    "  1  unexpected runtime failure\n"
    "  2  bad command line or configuration\n"
    "  3  broker unreachable\n"
    "  4  authentication refused\n"
    "  5  virtual host missing or not permitted\n"
    "  6  a queue or exchange exists with other arguments\n"
    "  7  handler failed to load\n"
    "  8  message store unusable (corrupt, full, locked, read-only)\n"
    "  9  TLS setup or peer verification failed\n"
    "  10 some items of a batch operation failed\n"
    "  11 run: metrics.listen cannot be bound (port in use)\n"
    "warren run stops with: 2 7 8 (whenever a worker meets them); 3 4 5 6 9\n"
    "(in the pool's first 10 s; later they are retried); a worker that fails\n"
    "otherwise, or finds the store locked, is restarted with backoff.\n";

static const char *usage_run =
    "usage: warren run -c FILE [--workers N] [--log-level LEVEL]\n"
    "\n"
    "Runs every consumer in FILE: \"workers\" processes each (or N), each "
    "with\n"
    "its own connection and store handle, supervised and restarted with\n"
    "backoff if one dies. SIGTERM/SIGINT: finish the messages in hand, "
    "commit,\n"
    "ack, close, exit 0. SIGHUP: re-read FILE and replace, one at a time, the\n"
    "workers of consumers whose config changed (all of them if broker or\n"
    "store did; an invalid FILE is refused, the pool keeps running). With\n"
    "metrics.listen, Prometheus metrics are served on /metrics. Logs are\n"
    "JSON lines on stderr; LEVEL is debug, info (default, or\n"
    "$WARREN_LOG_LEVEL), warn or error.\n";

static const char *usage_store =
    "usage: warren store stats -c FILE [--json]\n"
    "       warren store forget -c FILE --queue Q --id ID\n"
    "       warren store prune -c FILE\n"
    "       warren store migrate -c FILE\n"
    "       warren store export -c FILE [--out FILE.jsonl [--force]]\n"
    "       warren store import -c FILE [--in FILE.jsonl]\n"
    "\n"
    "stats   rows per queue and state, and the file size\n"
    "forget  delete the record of one id so it may run again\n"
    "prune   delete done/dead records older than store.retention_s now\n"
    "migrate create the store or upgrade its schema to this warren's\n"
    "        (workers do it on start; for a PostgreSQL store set up ahead)\n"
    "export  write every record as JSON lines (stop the workers first) to\n"
    "        --out (created 0600) or stdout\n"
    "import  add the records of an export (--in, or stdin) to this config's\n"
    "        store, keeping any already there: SQLite -> PostgreSQL and back\n";

static const char *usage_topology =
    "usage: warren topology declare -c FILE\n"
    "       warren topology show -c FILE\n"
    "\n"
    "declare  declare every queue, exchange and binding the consumers need\n"
    "         (idempotent; refuses, saying what differs, if one exists with\n"
    "         other arguments)\n"
    "show     print them without touching the broker\n";

static const char *usage_dlq =
    "usage: warren dlq list   -c FILE --queue Q [FILTERS] [--json]\n"
    "       warren dlq show   -c FILE --queue Q ID\n"
    "       warren dlq replay -c FILE --queue Q (FILTERS | --all [--yes])\n"
    "                         [--to QUEUE] [--clean] [--dry-run] [--rate N]\n"
    "       warren dlq purge  -c FILE --queue Q (FILTERS | --all [--yes])\n"
    "                         [--dry-run]\n"
    "       warren dlq export -c FILE --queue Q [FILTERS] --out FILE.jsonl\n"
    "                         [--force] [--remove]\n"
    "       warren dlq import -c FILE --queue Q --in FILE.jsonl [--to QUEUE]\n"
    "                         [--skip-bad]\n"
    "\n"
    "Q is a consumer's queue in FILE; its dead-letter queue is derived.\n"
    "Reading never loses or reorders dead letters: what is only looked at\n"
    "goes back where it was (flagged redelivered by RabbitMQ).\n"
    "\n"
    "FILTERS (all must hold):\n"
    "  --error TEXT      error reason contains TEXT\n"
    "  --error-re RE     error reason matches POSIX extended regex RE\n"
    "  --since T         dead at or after T: 2026-11-26T05:00:00Z, or 2h, 3d\n"
    "  --until T         dead before T (same forms)\n"
    "  --id ID           this message id (repeatable)\n"
    "  --limit N         act on at most N matches\n"
    "  --max-body BYTES  read bodies up to BYTES (default 256 MiB); a larger\n"
    "                    letter is listed by size, refused by export\n"
    "\n"
    "replay   republish to the original queue (or --to) with confirms, the\n"
    "         attempt count reset, failure headers kept as\n"
    "         x-warren-replayed-* (dropped with --clean) and the replay\n"
    "         generation raised, so no store's dead record swallows the\n"
    "         copy; the DLQ copy is removed after the confirm.\n"
    "         --rate N: at most N per second. Ctrl-C stops cleanly.\n"
    "purge    remove the selected dead letters, printing each\n"
    "export   write JSON lines (file created 0600; --force overwrites;\n"
    "         --remove removes them once written and synced)\n"
    "import   publish each line to the DLQ (or --to) with confirms; a bad\n"
    "         line stops the import there unless --skip-bad\n"
    "--all needs a typed confirmation on a terminal, --yes otherwise.\n"
    "\n"
    "exit codes: 0 done (also after Ctrl-C), 1 runtime failure or show ID\n"
    "not found, 2 bad usage/config/filter/JSONL or no such DLQ, 3 broker\n"
    "unreachable, 8 store unusable, 10 some messages failed. See "
    "docs/dlq.md.\n";

void cli_error(const char *fmt, ...) {
    va_list ap;
    fputs("warren: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int cli_exit_code(int err) {
    return warren_err_exit_code(err); /* the table in warren.h */
}

warren_config *cli_load_config(const char *path) {
    warren_config *cfg = NULL;
    char err[2048];
    if (path == NULL) {
        cli_error("missing -c FILE (the config)");
        return NULL;
    }
    if (warren_config_load(path, &cfg, err, sizeof err) != 0) {
        cli_error("%s", err);
        return NULL;
    }
    return cfg;
}

static int help(const char *cmd) {
    if (cmd == NULL) {
        fputs(usage_main, stdout);
    } else if (strcmp(cmd, "run") == 0) {
        fputs(usage_run, stdout);
    } else if (strcmp(cmd, "store") == 0) {
        fputs(usage_store, stdout);
    } else if (strcmp(cmd, "topology") == 0) {
        fputs(usage_topology, stdout);
    } else if (strcmp(cmd, "dlq") == 0) {
        fputs(usage_dlq, stdout);
    } else if (strcmp(cmd, "status") == 0) {
        fputs(
            "usage: warren status -c FILE [--json]\n"
            "\n"
            "Per consumer: ready messages and consumers attached, messages\n"
            "waiting in the retry delay cascade, dead letters and the age of\n"
            "the oldest, and the store's records by state.\n",
            stdout);
    } else {
        cli_error("no such command '%s'; try `warren help`", cmd);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage_main, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("warren %s (ABI %d)\n", WARREN_VERSION_STRING,
               WARREN_ABI_VERSION);
        return EXIT_OK;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 ||
        strcmp(cmd, "-h") == 0) {
        return help(argc > 2 ? argv[2] : NULL);
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            return help(cmd);
        }
    }
    /* Every command that opens the store names this host in it: an
     * override that cannot be used is refused before anything starts. */
    char host[WARREN__HOST_ID_MAX + 1], host_err[256];
    if (warren__host_id(host, sizeof host, host_err, sizeof host_err) != 0) {
        cli_error("%s", host_err);
        return EXIT_USAGE;
    }
    if (strcmp(cmd, "run") == 0) {
        return cmd_run(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "store") == 0) {
        return cmd_store(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "topology") == 0) {
        return cmd_topology(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "dlq") == 0) {
        return cmd_dlq(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "status") == 0) {
        return cmd_status(argc - 1, argv + 1);
    }
    cli_error("unknown command '%s'; try `warren help`", cmd);
    return EXIT_USAGE;
}

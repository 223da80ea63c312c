/*
 * cli.h - what the `warren` subcommands share: exit codes, option parsing
 * helpers and the JSON-lines logger. Only main() and the subcommands use it;
 * the library never decides an exit code.
 */
#ifndef WARREN_CLI_H
#define WARREN_CLI_H

#include "warren.h"

/* Exit codes, documented in the README and `warren help`. */
enum {
    EXIT_OK = 0,
    EXIT_FAILURE_RUNTIME = 1, /* unexpected runtime failure */
    EXIT_USAGE = 2,           /* bad command line or config */
    EXIT_UNREACHABLE = 3,     /* broker unreachable */
    EXIT_AUTH = 4,            /* authentication refused */
    EXIT_VHOST = 5,           /* vhost missing or not permitted */
    EXIT_TOPOLOGY = 6,        /* queue exists with other arguments */
    EXIT_HANDLER = 7,         /* handler failed to load */
    EXIT_STORE = 8,           /* store unusable: corrupt, full, locked, RO */
    EXIT_TLS = 9,             /* TLS setup or verification failed */
    EXIT_PARTIAL = 10         /* some items failed (dlq replay/import) */
};

/* Maps a WARREN_ERR_* code to the exit code above. */
int cli_exit_code(int err);

/* Installs the JSON-lines stderr logger at `level` ("info" if NULL). Returns
 * 0, or -1 (message printed) if the level is not a level. */
int cli_log_init(const char *level);

/* Loads the config named by -c, printing the error and returning NULL. */
warren_config *cli_load_config(const char *path);

/* Prints "warren: " + message to stderr. */
void cli_error(const char *fmt, ...) WARREN_PRINTF(1, 2);

int cmd_run(int argc, char **argv);
int cmd_store(int argc, char **argv);
int cmd_topology(int argc, char **argv);
int cmd_dlq(int argc, char **argv);
int cmd_status(int argc, char **argv);

#endif /* WARREN_CLI_H */

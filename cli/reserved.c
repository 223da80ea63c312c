/*
 * reserved.c - subcommand names reserved for later work (`dlq`, `status`).
 * They say plainly that this build lacks them and exit 2, rather than
 * pretend to work.
 */
#include "cli.h"

int cmd_dlq(int argc, char **argv) {
    (void)argc;
    (void)argv;
    cli_error("dlq: not available in this build yet (see `warren help`)");
    return EXIT_USAGE;
}

int cmd_status(int argc, char **argv) {
    (void)argc;
    (void)argv;
    cli_error("status: not available in this build yet (see `warren help`)");
    return EXIT_USAGE;
}

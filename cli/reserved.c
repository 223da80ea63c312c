/*
 * reserved.c - subcommand names reserved for later work (`status`).
 * It says plainly that this build lacks them and exit 2, rather than
 * pretend to work.
 */
#include "cli.h"

int cmd_status(int argc, char **argv) {
    (void)argc;
    (void)argv;
    cli_error("status: not available in this build yet (see `warren help`)");
    return EXIT_USAGE;
}

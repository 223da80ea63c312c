/*
 * error.c - names, descriptions, exit codes, retriability and fatality of
 * WARREN_ERR_* codes, all generated from the one WARREN_ERRORS list in
 * warren.h, so no other file keeps its own list of which errors are fatal.
 */
#include "warren.h"

#define ERR_CASE_DESC(name, code, exit, retriable, fatal, desc)                \
    case code:                                                                 \
        return desc;
#define ERR_CASE_NAME(name, code, exit, retriable, fatal, desc)                \
    case code:                                                                 \
        return "WARREN_ERR_" #name;
#define ERR_CASE_RETRY(name, code, exit, retriable, fatal, desc)               \
    case code:                                                                 \
        return retriable;
#define ERR_CASE_EXIT(name, code, exit, retriable, fatal, desc)                \
    case code:                                                                 \
        return exit;
#define ERR_CASE_FATAL(name, code, exit, retriable, fatal, desc)               \
    case code:                                                                 \
        return WARREN_FATAL_##fatal;

const char *warren_strerror(int err) {
    switch (err) {
        WARREN_ERRORS(ERR_CASE_DESC)
    default:
        return "unknown error";
    }
}

const char *warren_errname(int err) {
    switch (err) {
        WARREN_ERRORS(ERR_CASE_NAME)
    default:
        return "WARREN_ERR_UNKNOWN";
    }
}

int warren_err_is_retriable(int err) {
    switch (err) {
        WARREN_ERRORS(ERR_CASE_RETRY)
    default:
        return 0;
    }
}

int warren_err_exit_code(int err) {
    switch (err) {
        WARREN_ERRORS(ERR_CASE_EXIT)
    default:
        return 1;
    }
}

int warren_err_fatal(int err) {
    switch (err) {
        WARREN_ERRORS(ERR_CASE_FATAL)
    default:
        return WARREN_FATAL_NEVER;
    }
}

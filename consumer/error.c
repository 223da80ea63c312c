/*
 * error.c - names, descriptions and retriability of WARREN_ERR_* codes,
 * all generated from the one WARREN_ERRORS list in warren.h.
 */
#include "warren.h"

#define ERR_CASE_DESC(name, code, retriable, desc)                             \
    case code:                                                                 \
        return desc;
#define ERR_CASE_NAME(name, code, retriable, desc)                             \
    case code:                                                                 \
        return "WARREN_ERR_" #name;
#define ERR_CASE_RETRY(name, code, retriable, desc)                            \
    case code:                                                                 \
        return retriable;

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

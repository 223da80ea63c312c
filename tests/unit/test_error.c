/*
 * test_error.c - the one error policy (WARREN_ERRORS in warren.h): walks
 * the table and checks that every accessor answers from it, that its
 * columns agree with each other (a retriable error never stops the pool;
 * an error that stops it has an exit code the supervisor can tell from
 * "restart me"), and that `warren help` and README's exit-code table say
 * what it says.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "warren.h"

typedef struct {
    const char *name;
    int code, exit, retriable, fatal;
    const char *desc;
} row;

#define ROW(name, code, exit, retriable, fatal, desc)                          \
    {"WARREN_ERR_" #name, code, exit, retriable, WARREN_FATAL_##fatal, desc},
static const row table[] = {WARREN_ERRORS(ROW)};
#undef ROW
#define N_ROWS (sizeof table / sizeof table[0])

static void test_every_accessor_answers_from_the_table(void **state) {
    (void)state;
    for (size_t i = 0; i < N_ROWS; i++) {
        const row *r = &table[i];
        assert_string_equal(warren_errname(r->code), r->name);
        assert_string_equal(warren_strerror(r->code), r->desc);
        assert_int_equal(warren_err_exit_code(r->code), r->exit);
        assert_int_equal(warren_err_is_retriable(r->code), r->retriable);
        assert_int_equal(warren_err_fatal(r->code), r->fatal);
        for (size_t j = 0; j < i; j++) {
            assert_int_not_equal(table[j].code, r->code);
        }
    }
    /* Unknown codes: a runtime failure, retried, never a stop. */
    assert_string_equal(warren_errname(-999), "WARREN_ERR_UNKNOWN");
    assert_int_equal(warren_err_exit_code(-999), 1);
    assert_int_equal(warren_err_is_retriable(-999), 0);
    assert_int_equal(warren_err_fatal(-999), WARREN_FATAL_NEVER);
}

static void test_columns_agree_with_each_other(void **state) {
    (void)state;
    for (size_t i = 0; i < N_ROWS; i++) {
        const row *r = &table[i];
        int ok_like = r->code == WARREN_ERR_OK || r->code == WARREN_ERR_STOPPED;
        if (r->retriable && r->fatal == WARREN_FATAL_ALWAYS) {
            fail_msg("%s is retriable yet always stops the pool", r->name);
        }
        /* A worker says "stop the pool" with its exit code: 0 and 1 mean
         * "stopped" and "restart me". */
        if (r->fatal != WARREN_FATAL_NEVER && (r->exit == 0 || r->exit == 1)) {
            fail_msg("%s stops the pool but exits %d", r->name, r->exit);
        }
        if ((r->exit == 0) != ok_like) {
            fail_msg("%s exits %d", r->name, r->exit);
        }
        /* Only non-failures and lookups are neither retriable nor able to
         * stop the pool; every runtime failure is one or the other. */
        if (!r->retriable && r->fatal == WARREN_FATAL_NEVER && !ok_like &&
            r->code != WARREN_ERR_NOT_FOUND) {
            fail_msg("%s: not retriable, yet retried forever", r->name);
        }
    }
    /* The two the issue named: a locked store is retried, not a stop. */
    assert_int_equal(warren_err_fatal(WARREN_ERR_STORE_BUSY),
                     WARREN_FATAL_NEVER);
    assert_true(warren_err_is_retriable(WARREN_ERR_STORE_BUSY));
    assert_int_equal(warren_err_fatal(WARREN_ERR_AUTH), WARREN_FATAL_AT_START);
}

/* Reads the output of `cmd` (at most 64 KiB). */
static char *run(const char *cmd) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char *buf = calloc(1, 65536);
    assert_non_null(buf);
    size_t n = fread(buf, 1, 65535, p);
    buf[n] = '\0';
    assert_int_equal(pclose(p), 0);
    return buf;
}

/* Parses "N N N (" after `at` into a bitmask of exit codes; returns the
 * position of the '('. */
static const char *codes(const char *at, unsigned *mask) {
    *mask = 0;
    while (*at && *at != '(') {
        char *end;
        long v = strtol(at, &end, 10);
        if (end == at) {
            at++;
            continue;
        }
        assert_true(v >= 0 && v < 32);
        *mask |= 1u << v;
        at = end;
    }
    return at;
}

static void test_warren_help_and_readme_say_what_the_table_says(void **state) {
    (void)state;
    const char *build = getenv("WARREN_BUILD_DIR");
    const char *src = getenv("WARREN_SOURCE_DIR");
    if (build == NULL || src == NULL) {
        skip(); /* ctest sets both */
    }
    char cmd[1200];
    unsigned always = 0, at_start = 0, help_always, help_start;
    for (size_t i = 0; i < N_ROWS; i++) {
        if (table[i].fatal == WARREN_FATAL_ALWAYS) {
            always |= 1u << table[i].exit;
        } else if (table[i].fatal == WARREN_FATAL_AT_START) {
            at_start |= 1u << table[i].exit;
        }
    }

    snprintf(cmd, sizeof cmd, "'%s/bin/warren' help", build);
    char *help = run(cmd);
    snprintf(cmd, sizeof cmd, "cat '%s/README.md'", src);
    char *readme = run(cmd);
    for (size_t i = 0; i < N_ROWS; i++) {
        char line[32];
        snprintf(line, sizeof line, "\n  %d ", table[i].exit);
        if (strstr(help, line) == NULL) {
            fail_msg("`warren help` lists no exit code %d (%s)", table[i].exit,
                     table[i].name);
        }
        snprintf(line, sizeof line, "\n| %d | ", table[i].exit);
        if (strstr(readme, line) == NULL) {
            fail_msg("README's exit codes lack %d (%s)", table[i].exit,
                     table[i].name);
        }
    }
    /* "warren run stops with: A B (whenever ...); C D (in its first ...". */
    const char *docs[] = {help, readme};
    for (int d = 0; d < 2; d++) {
        const char *p = strstr(docs[d], "warren run` stops with:");
        if (p == NULL) {
            p = strstr(docs[d], "warren run stops with:");
        }
        assert_non_null(p);
        p = codes(strchr(p, ':') + 1, &help_always);
        p = strchr(p, ';');
        assert_non_null(p);
        codes(p + 1, &help_start);
        assert_int_equal(help_always, always);
        assert_int_equal(help_start, at_start);
    }
    free(help);
    free(readme);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_accessor_answers_from_the_table),
        cmocka_unit_test(test_columns_agree_with_each_other),
        cmocka_unit_test(test_warren_help_and_readme_say_what_the_table_says),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_hostid.c - the owner host name claims carry: gethostname() without
 * WARREN_HOST_ID, the override when it is valid, and a clear config error
 * (never a truncated or silently ignored name) when it is empty, too long
 * or holds a character outside [A-Za-z0-9_.:-].
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hostid.h"
#include "warren.h"

static char buf[WARREN__HOST_ID_MAX + 1];
static char err[256];

static int teardown(void **state) {
    (void)state;
    unsetenv("WARREN_HOST_ID");
    return 0;
}

static void test_without_override_the_system_host_name(void **state) {
    (void)state;
    char sys[sizeof buf] = "localhost";
    unsetenv("WARREN_HOST_ID");
    gethostname(sys, sizeof sys);
    sys[sizeof sys - 1] = '\0';
    assert_int_equal(warren__host_id(buf, sizeof buf, err, sizeof err), 0);
    assert_string_equal(buf, sys);
}

static void test_valid_override_is_used_as_given(void **state) {
    (void)state;
    const char *ok[] = {"host-a", "a", "node_2.example.com:pool-1", "a_b",
                        "0123456789012345678901234567890123456789012345678901"
                        "234567890123"}; /* 64 characters */
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        setenv("WARREN_HOST_ID", ok[i], 1);
        assert_int_equal(warren__host_id(buf, sizeof buf, err, sizeof err), 0);
        assert_string_equal(buf, ok[i]);
    }
}

static void
test_bad_override_is_a_config_error_naming_the_variable(void **state) {
    (void)state;
    const char *bad[] = {"",
                         "host a",
                         "host/a",
                         "h\xc3\xa9",
                         "a\nb",
                         "01234567890123456789012345678901234567890123456789"
                         "0123456789012345"}; /* 65 characters */
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("WARREN_HOST_ID", bad[i], 1);
        err[0] = '\0';
        assert_int_equal(warren__host_id(buf, sizeof buf, err, sizeof err),
                         WARREN_ERR_CONFIG);
        assert_non_null(strstr(err, "WARREN_HOST_ID"));
        assert_non_null(strstr(err, "[A-Za-z0-9_.:-]"));
        assert_string_equal(buf, "localhost");
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_without_override_the_system_host_name,
                                  teardown),
        cmocka_unit_test_teardown(test_valid_override_is_used_as_given,
                                  teardown),
        cmocka_unit_test_teardown(
            test_bad_override_is_a_config_error_naming_the_variable, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

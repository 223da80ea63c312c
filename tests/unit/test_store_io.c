/*
 * test_store_io.c - `warren store export|import` (cli/store_io.c): a store
 * moved SQLite -> PostgreSQL -> SQLite comes back record for record (every
 * state, failure history, replay generation, crash reason, owner token),
 * and behaves the same after the move (a done id is a duplicate, a dead one
 * stays dead); importing twice keeps what is there; a bad line is refused
 * naming the file, line and field, with nothing of its batch committed.
 * The PostgreSQL leg runs when WARREN_TEST_PG_URL names a server.
 */
#include "cli.h"
#include "store.h"
#include "warren.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "../pg_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define Q "orders"

/* The CLI's helpers store_io.c calls, here collecting what it prints
 * (every message since the test began, one per line). */
static char last_error[8192];

void cli_error(const char *fmt, ...) {
    size_t n = strlen(last_error);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error + n, sizeof last_error - n, fmt, ap);
    va_end(ap);
    n = strlen(last_error);
    if (n + 1 < sizeof last_error) {
        last_error[n] = '\n';
        last_error[n + 1] = '\0';
    }
}

int cli_exit_code(int err) {
    return warren_err_exit_code(err);
}

typedef struct {
    char dir[64];
    char pg_url[1024];
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/warren_store_io_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    if (pg_fresh_schema("wt_store_io", f->pg_url, sizeof f->pg_url) != 0) {
        f->pg_url[0] = '\0';
    }
    last_error[0] = '\0';
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static warren__store_opts opts(void) {
    warren__store_opts o = {.synchronous = WARREN__SYNC_FULL,
                            .busy_timeout_ms = 2000,
                            .lease_s = 60,
                            .owner_host = "host-a",
                            .owner_pid = 1000,
                            .flags = WARREN__STORE_F_CALLER_CLOCK};
    return o;
}

static warren__store *open_lite(fixture *f, const char *name) {
    char path[128], err[512];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    warren__store_opts o = opts();
    warren__store *s = NULL;
    if (warren__store_open(path, &o, &s, err, sizeof err) != 0) {
        fail_msg("open %s: %s", path, err);
    }
    return s;
}

static warren__store *open_pg(fixture *f) {
    char err[512];
    warren__store_opts o = opts();
    warren__store *s = NULL;
    if (warren__store_open_url(f->pg_url, &o, &s, err, sizeof err) != 0) {
        fail_msg("open %s: %s", f->pg_url, err);
    }
    return s;
}

static int claim(warren__store *s, const char *id, int64_t replays, int64_t now,
                 warren__claim *c) {
    memset(c, 0, sizeof *c);
    c->queue = Q;
    c->id = id;
    c->replays = replays;
    return warren__store_claim_batch(s, c, 1, 5, now);
}

static void outcome(warren__store *s, const char *id, warren__outcome_kind k,
                    const char *why, int64_t now) {
    assert_int_equal(warren__store_begin(s), 0);
    assert_int_equal(warren__store_record(s, Q, id, k, why, now), 0);
    assert_int_equal(warren__store_commit(s), 0);
}

/* One record of each kind, created a millisecond apart (the export order
 * of both backends is creation order). */
static void fill(warren__store *s) {
    warren__claim c;
    int64_t t = 1700000000000LL;
    assert_int_equal(claim(s, "done-1", 0, t + 1, &c), 0);
    outcome(s, "done-1", WARREN__OUT_DONE, NULL, t + 10);
    assert_int_equal(claim(s, "dead-\xc3\xa9", 2, t + 2, &c), 0);
    outcome(s, "dead-\xc3\xa9", WARREN__OUT_DEAD, "poison: \"quoted\"\nline",
            t + 11);
    assert_int_equal(claim(s, "retry-1", 0, t + 3, &c), 0);
    outcome(s, "retry-1", WARREN__OUT_RETRYING, "timeout", t + 12);
    assert_int_equal(claim(s, "running-1", 0, t + 4, &c), 0);
    int marked = 0;
    assert_int_equal(warren__store_mark_crashed(s, Q, "running-1", 1000,
                                                "killed by signal 9", &marked),
                     0);
    assert_int_equal(marked, 1);
}

static char *slurp(const char *path) {
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    static char buf[3][16384];
    static int k;
    char *b = buf[k++ % 3];
    size_t n = fread(b, 1, sizeof buf[0] - 1, fp);
    b[n] = '\0';
    fclose(fp);
    return b;
}

static void export_to(warren__store *s, fixture *f, const char *name,
                      char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", f->dir, name);
    assert_int_equal(cli_store_export(s, path, 0), EXIT_OK);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
}

/* After a move, the records still decide claims as before. */
static void assert_behaves(warren__store *s) {
    warren__claim c;
    assert_int_equal(claim(s, "done-1", 0, 1700000100000LL, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DUPLICATE);
    assert_int_equal(claim(s, "dead-\xc3\xa9", 2, 1700000100000LL, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_DEAD);
    assert_string_equal(c.last_error, "poison: \"quoted\"\nline");
    assert_int_equal(claim(s, "retry-1", 0, 1700000100000LL, &c), 0);
    assert_int_equal(c.status, WARREN__CLAIM_RUN);
    assert_int_equal(c.attempt, 2);
}

static void test_sqlite_to_postgresql_to_sqlite_round_trip(void **state) {
    fixture *f = *state;
    if (f->pg_url[0] == '\0') {
        skip(); /* pg_fresh_schema() said why */
    }
    char p1[128], p2[128], p3[128];
    warren__store *a = open_lite(f, "a.db");
    fill(a);
    export_to(a, f, "a.jsonl", p1, sizeof p1);
    warren__store_close(a);

    warren__store *pg = open_pg(f);
    assert_int_equal(cli_store_import(pg, p1), EXIT_OK);
    export_to(pg, f, "pg.jsonl", p2, sizeof p2);
    /* Twice: everything is there already and kept. */
    assert_int_equal(cli_store_import(pg, p1), EXIT_OK);
    warren__store *b = open_lite(f, "b.db");
    assert_int_equal(cli_store_import(b, p2), EXIT_OK);
    export_to(b, f, "b.jsonl", p3, sizeof p3);

    const char *t1 = slurp(p1), *t2 = slurp(p2), *t3 = slurp(p3);
    assert_int_equal(strlen(t1) > 0, 1);
    assert_string_equal(t1, t2);
    assert_string_equal(t1, t3);
    /* The owner token survived whole (a string, not a double). */
    assert_non_null(strstr(t1, "\"owner_token\":\""));
    assert_non_null(strstr(t1, "\"crashed_reason\":\"killed by signal 9\""));

    assert_behaves(pg);
    assert_behaves(b);
    warren__store_close(pg);
    warren__store_close(b);
}

static void
test_sqlite_export_import_round_trip_and_reimport_keeps(void **state) {
    fixture *f = *state;
    char p1[128], p2[128];
    warren__store *a = open_lite(f, "a.db");
    fill(a);
    export_to(a, f, "a.jsonl", p1, sizeof p1);
    /* An existing file is not overwritten without --force. */
    assert_int_equal(cli_store_export(a, p1, 0), EXIT_USAGE);
    assert_non_null(strstr(last_error, "exists; add --force"));
    assert_int_equal(cli_store_export(a, p1, 1), EXIT_OK);
    warren__store_close(a);
    warren__store *b = open_lite(f, "b.db");
    assert_int_equal(cli_store_import(b, p1), EXIT_OK);
    assert_int_equal(cli_store_import(b, p1), EXIT_OK);
    export_to(b, f, "b.jsonl", p2, sizeof p2);
    assert_string_equal(slurp(p1), slurp(p2));
    assert_behaves(b);
    warren__store_close(b);
}

static int64_t count_rows(warren__store *s) {
    char p[256];
    snprintf(p, sizeof p, "/tmp/warren_store_io_count_%d.jsonl", (int)getpid());
    unlink(p);
    assert_int_equal(cli_store_export(s, p, 1), EXIT_OK);
    int64_t n = 0;
    for (const char *t = slurp(p); *t; t++) {
        n += *t == '\n';
    }
    unlink(p);
    return n;
}

static void test_bad_line_is_refused_naming_line_and_field(void **state) {
    fixture *f = *state;
    char in[128];
    snprintf(in, sizeof in, "%s/bad.jsonl", f->dir);
    FILE *fp = fopen(in, "w");
    assert_non_null(fp);
    fputs("{\"queue\":\"orders\",\"id\":\"ok-1\",\"state\":\"done\","
          "\"attempts\":1,\"deliveries\":0,\"owner_pid\":0,"
          "\"lease_until\":0,\"first_failed_at\":0,\"created_at\":1,"
          "\"updated_at\":1,\"replays\":0}\n",
          fp);
    fputs("{\"queue\":\"orders\",\"id\":\"bad-1\",\"state\":\"done\","
          "\"attempts\":\"one\"}\n",
          fp);
    fclose(fp);
    warren__store *b = open_lite(f, "b.db");
    assert_int_equal(cli_store_import(b, in), EXIT_USAGE);
    assert_non_null(strstr(last_error, "committed before line 2"));
    assert_int_equal(count_rows(b), 0);

    fp = fopen(in, "w");
    fputs("{\"queue\":\"orders\",\"id\":\"x\",\"state\":\"finished\","
          "\"attempts\":1,\"deliveries\":0,\"owner_pid\":0,"
          "\"lease_until\":0,\"first_failed_at\":0,\"created_at\":1,"
          "\"updated_at\":1,\"replays\":0}\n",
          fp);
    fclose(fp);
    assert_int_equal(cli_store_import(b, in), EXIT_USAGE);
    assert_int_equal(count_rows(b), 0);

    fp = fopen(in, "w");
    fputs("not json\n", fp);
    fclose(fp);
    assert_int_equal(cli_store_import(b, in), EXIT_USAGE);
    assert_non_null(strstr(last_error, ":1: (line): expected a JSON object"));
    assert_non_null(strstr(last_error, "state \"finished\" is not one of"));
    assert_int_equal(count_rows(b), 0);
    warren__store_close(b);
}

/* The field error itself names file, line and field. */
static void test_field_error_names_file_line_field(void **state) {
    fixture *f = *state;
    char in[128];
    snprintf(in, sizeof in, "%s/bad.jsonl", f->dir);
    FILE *fp = fopen(in, "w");
    assert_non_null(fp);
    fputs("\n{\"queue\":\"orders\",\"id\":\"bad-1\",\"state\":\"done\","
          "\"attempts\":\"one\"}\n",
          fp);
    fclose(fp);
    warren__store *b = open_lite(f, "b.db");
    assert_int_equal(cli_store_import(b, in), EXIT_USAGE);
    char want[256];
    snprintf(want, sizeof want,
             "store import: %s:2: attempts: expected a non-negative integer",
             in);
    if (strstr(last_error, want) == NULL) {
        fail_msg("wanted \"%s\" in: %s", want, last_error);
    }
    warren__store_close(b);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_sqlite_export_import_round_trip_and_reimport_keeps),
        T(test_sqlite_to_postgresql_to_sqlite_round_trip),
        T(test_bad_line_is_refused_naming_line_and_field),
        T(test_field_error_names_file_line_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

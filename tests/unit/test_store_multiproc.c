/*
 * test_store_multiproc.c - several worker processes on one store file.
 *
 * Four forked processes, each opening its own connection after fork, claim
 * the same 10,000 ids in batches of 100 and record DONE for those they won.
 * The ids each one ran come back through a pipe; the test asserts that every
 * id was won (RUN) exactly once overall and that all of them ended done.
 */
#include "log.h"
#include "store.h"
#include "warren.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROCS 4
#define IDS 10000
#define BATCH 100
#define Q "orders"

/* Child exit codes, so a failure says where it happened. */
enum { CHILD_OK = 0, CHILD_OPEN = 10, CHILD_CLAIM, CHILD_RECORD, CHILD_PIPE };

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Claims with a bounded number of tries: STORE_BUSY is retriable. */
static int claim_retry(warren__store *s, warren__claim *c, size_t n) {
    int rc = WARREN_ERR_STORE_BUSY;
    for (int tries = 0; tries < 20 && rc == WARREN_ERR_STORE_BUSY; tries++) {
        rc = warren__store_claim_batch(s, c, n, 10, warren__now_ms());
    }
    return rc;
}

static int child(const char *path, int worker, int ready_fd, int start_fd,
                 int out_fd) {
    static warren__claim c[BATCH];
    static char ids[BATCH][16];
    char go = 'r';
    warren__store_opts o = {
        .synchronous = WARREN__SYNC_NORMAL,
        .busy_timeout_ms = 10000,
        .lease_s = 300,
        .owner_host = "test-host",
        .owner_pid = (int)getpid(),
    };
    warren__store *s = NULL;
    char err[512];
    if (warren__store_open(path, &o, &s, err, sizeof err) != 0) {
        fprintf(stderr, "worker %d: %s\n", worker, err);
        return CHILD_OPEN;
    }
    /* Everyone opens, then all start at once, for as much contention as
     * possible. */
    if (write_all(ready_fd, &go, 1) != 0 || read(start_fd, &go, 1) < 0) {
        warren__store_close(s);
        return CHILD_PIPE;
    }
    for (int b = 0; b < IDS / BATCH; b++) {
        /* Workers walk the ids from different ends and offsets, so they
         * meet on the same ids in the same batches. */
        int base = (worker % 2 ? IDS / BATCH - 1 - b : b) * BATCH;
        for (int i = 0; i < BATCH; i++) {
            int id = base + (i + worker * 25) % BATCH;
            snprintf(ids[i], sizeof ids[i], "id-%d", id);
            c[i] = (warren__claim){.queue = Q, .id = ids[i]};
        }
        int rc = claim_retry(s, c, BATCH);
        if (rc != 0) {
            fprintf(stderr, "worker %d: %s\n", worker, warren__store_errstr(s));
            warren__store_close(s);
            return CHILD_CLAIM;
        }
        uint32_t won[BATCH];
        int n_won = 0;
        rc = warren__store_begin(s);
        for (int i = 0; rc == 0 && i < BATCH; i++) {
            if (c[i].status != WARREN__CLAIM_RUN) {
                continue;
            }
            won[n_won++] = (uint32_t)atoi(ids[i] + 3);
            rc = warren__store_record(s, Q, ids[i], WARREN__OUT_DONE, NULL,
                                      warren__now_ms());
        }
        if (rc == 0) {
            rc = warren__store_commit(s);
        }
        if (rc != 0) {
            fprintf(stderr, "worker %d: %s\n", worker, warren__store_errstr(s));
            warren__store_close(s);
            return CHILD_RECORD;
        }
        /* At most 400 bytes: below PIPE_BUF, so writes never interleave. */
        if (n_won > 0 &&
            write_all(out_fd, won, (size_t)n_won * sizeof won[0]) != 0) {
            warren__store_close(s);
            return CHILD_PIPE;
        }
    }
    warren__store_close(s);
    return CHILD_OK;
}

static void test_four_processes_win_each_id_exactly_once(void **state) {
    (void)state;
    char dir[] = "/tmp/warren_store_mp_XXXXXX";
    char path[128], p[160];
    int ready[2], start[2], out[2];
    pid_t pids[PROCS];
    static int wins[IDS];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/store.db", dir);
    memset(wins, 0, sizeof wins);
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(start), 0);
    assert_int_equal(pipe(out), 0);
    for (int w = 0; w < PROCS; w++) {
        pids[w] = fork();
        assert_true(pids[w] >= 0);
        if (pids[w] == 0) {
            close(ready[0]);
            close(start[1]);
            close(out[0]);
            _exit(child(path, w, ready[1], start[0], out[1]));
        }
    }
    close(ready[1]);
    close(start[0]);
    close(out[1]);
    /* Each child says ready once its store is open; a child that failed
     * to open closes its end early, which ends this wait too. */
    char r;
    for (int w = 0; w < PROCS; w++) {
        if (read(ready[0], &r, 1) != 1) {
            break;
        }
    }
    close(ready[0]);
    close(start[1]); /* EOF on the start pipe: go */

    uint32_t buf[BATCH];
    size_t have = 0; /* bytes of a partial id left in buf */
    for (;;) {
        ssize_t n = read(out[0], (char *)buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        assert_true(n >= 0);
        if (n == 0) {
            break; /* every child closed its end */
        }
        have += (size_t)n;
        size_t whole = have / sizeof buf[0];
        for (size_t i = 0; i < whole; i++) {
            assert_true(buf[i] < IDS);
            wins[buf[i]]++;
        }
        have -= whole * sizeof buf[0];
        memmove(buf, (char *)buf + whole * sizeof buf[0], have);
    }
    close(out[0]);
    assert_int_equal(have, 0);
    for (int w = 0; w < PROCS; w++) {
        int status = 0;
        assert_int_equal(waitpid(pids[w], &status, 0), pids[w]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), CHILD_OK);
    }
    for (int i = 0; i < IDS; i++) {
        if (wins[i] != 1) {
            fail_msg("id-%d was won %d times", i, wins[i]);
        }
    }

    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT count(*) FROM messages WHERE "
                                        "state = 'done' AND attempts = 1",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), IDS);
    sqlite3_finalize(st);
    sqlite3_close(db);

    const char *sfx[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", path, sfx[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* Regression: several workers starting together on a store file that does
 * not exist yet all open it (switching a new file to WAL once answered
 * SQLITE_BUSY at once, and the pool stopped with a store error). */
static void
test_processes_opening_a_new_store_at_once_all_succeed(void **state) {
    (void)state;
    enum { OPENERS = 8, ROUNDS = 5 };
    for (int round = 0; round < ROUNDS; round++) {
        char dir[] = "/tmp/warren_store_open_XXXXXX";
        char path[128], p[160];
        int start[2];
        pid_t pids[OPENERS];
        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/store.db", dir);
        assert_int_equal(pipe(start), 0);
        for (int w = 0; w < OPENERS; w++) {
            pids[w] = fork();
            assert_true(pids[w] >= 0);
            if (pids[w] == 0) {
                char c, err[512];
                warren__store *st = NULL;
                warren__store_opts o = {.synchronous = WARREN__SYNC_FULL,
                                        .busy_timeout_ms = 5000,
                                        .lease_s = 60,
                                        .owner_host = "test",
                                        .owner_pid = (int)getpid()};
                close(start[1]);
                if (read(start[0], &c, 1) < 0) {
                    _exit(CHILD_PIPE);
                }
                int rc = warren__store_open(path, &o, &st, err, sizeof err);
                if (rc != 0) {
                    fprintf(stderr, "open failed: %s\n", err);
                }
                warren__store_close(st);
                _exit(rc == 0 ? CHILD_OK : CHILD_OPEN);
            }
        }
        close(start[0]);
        close(start[1]); /* all children wake at once */
        for (int w = 0; w < OPENERS; w++) {
            int status = 0;
            assert_int_equal(waitpid(pids[w], &status, 0), pids[w]);
            assert_true(WIFEXITED(status));
            assert_int_equal(WEXITSTATUS(status), CHILD_OK);
        }
        const char *sfx[] = {"", "-wal", "-shm"};
        for (size_t i = 0; i < 3; i++) {
            snprintf(p, sizeof p, "%s%s", path, sfx[i]);
            unlink(p);
        }
        rmdir(dir);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_four_processes_win_each_id_exactly_once),
        cmocka_unit_test(
            test_processes_opening_a_new_store_at_once_all_succeed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

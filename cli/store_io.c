/*
 * store_io.c - `warren store export|import`: every record of a store as
 * JSON lines, and back, whatever the backend on either side. This is the
 * migration path from a SQLite file to a PostgreSQL database (and back):
 * export with the workers stopped, import into the new store, point the
 * config at it.
 *
 * It promises that an export file is created mode 0600 and never
 * overwritten without --force, that import keeps a record already present
 * in the target (the target's is newer) and counts it, that a bad line is
 * refused naming the file, the line and the field with nothing of its batch
 * committed, and that the owner token (a 63-bit number, more than a JSON
 * double holds exactly) travels as a string.
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"

/* Longest line import reads: a record is at most two 1 KiB reasons, a
 * 256-byte id, a queue name and numbers. */
#define LINE_MAX_BYTES (64 * 1024)
/* Records per import transaction. */
#define IMPORT_BATCH 1000

typedef struct {
    FILE *fp;
    long rows;
} export_ctx;

static void add_opt_str(cJSON *o, const char *key, const char *v) {
    if (v) {
        cJSON_AddStringToObject(o, key, v);
    } else {
        cJSON_AddNullToObject(o, key);
    }
}

static int write_row(const warren__store_entry *r, void *user) {
    export_ctx *x = user;
    char token[32];
    cJSON *o = cJSON_CreateObject();
    if (o == NULL) {
        return WARREN_ERR_NOMEM;
    }
    cJSON_AddStringToObject(o, "queue", r->queue);
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "state", r->state);
    cJSON_AddNumberToObject(o, "attempts", r->attempts);
    cJSON_AddNumberToObject(o, "deliveries", r->deliveries);
    add_opt_str(o, "owner_host", r->owner_host);
    cJSON_AddNumberToObject(o, "owner_pid", r->owner_pid);
    snprintf(token, sizeof token, "%" PRId64, r->owner_token);
    cJSON_AddStringToObject(o, "owner_token", token);
    cJSON_AddNumberToObject(o, "lease_until", (double)r->lease_until);
    cJSON_AddNumberToObject(o, "first_failed_at", (double)r->first_failed_at);
    add_opt_str(o, "last_error", r->last_error);
    cJSON_AddNumberToObject(o, "created_at", (double)r->created_at);
    cJSON_AddNumberToObject(o, "updated_at", (double)r->updated_at);
    cJSON_AddNumberToObject(o, "replays", (double)r->replays);
    add_opt_str(o, "crashed_reason", r->crashed_reason);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text == NULL) {
        return WARREN_ERR_NOMEM;
    }
    int ok = fputs(text, x->fp) >= 0 && fputc('\n', x->fp) != EOF;
    cJSON_free(text);
    if (!ok) {
        return WARREN_ERR_IO;
    }
    x->rows++;
    return 0;
}

/* Opens the export's file, or stdout for NULL or "-": returns it, or NULL
 * with the message printed and *code set. */
static FILE *open_out(const char *out, int force, int *code) {
    if (out == NULL || strcmp(out, "-") == 0) {
        return stdout;
    }
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (force ? O_TRUNC : O_EXCL);
    int fd = open(out, flags, 0600);
    *code = EXIT_USAGE;
    if (fd < 0) {
        if (errno == EEXIST) {
            cli_error("store export: %s exists; add --force to overwrite it",
                      out);
        } else {
            cli_error("store export: %s: %s", out, strerror(errno));
        }
        return NULL;
    }
    *code = EXIT_FAILURE_RUNTIME;
    if (fchmod(fd, 0600) != 0) {
        cli_error("store export: %s: chmod 0600: %s", out, strerror(errno));
        close(fd);
        return NULL;
    }
    FILE *fp = fdopen(fd, "w");
    if (fp == NULL) {
        close(fd);
        cli_error("store export: %s: %s", out, strerror(errno));
    }
    return fp;
}

int cli_store_export(warren__store *st, const char *out, int force) {
    int code = EXIT_OK;
    export_ctx x = {open_out(out, force, &code), 0};
    if (x.fp == NULL) {
        return code;
    }
    int to_stdout = x.fp == stdout;
    if (to_stdout) {
        out = "stdout";
    }
    int rc = warren__store_each(st, write_row, &x);
    int closed = to_stdout ? fflush(stdout) : fclose(x.fp);
    if (rc == WARREN_ERR_IO || (rc == 0 && closed != 0)) {
        cli_error("store export: %s: write failed: %s", out, strerror(errno));
        return EXIT_FAILURE_RUNTIME;
    }
    if (rc != 0) {
        cli_error("store export: %s", warren__store_errstr(st));
        return cli_exit_code(rc);
    }
    /* The summary goes where the records do not. */
    fprintf(to_stdout ? stderr : stdout, "exported %ld records from %s to %s\n",
            x.rows, warren__store_path(st), out);
    return EXIT_OK;
}

/* Reads the fields of one line into `r` (strings borrowed from `o`).
 * Returns NULL, or the name of the first field that is missing or of the
 * wrong type, with what it should be in *want. */
static const char *parse_row(const cJSON *o, warren__store_entry *r,
                             const char **want) {
    static const struct {
        const char *key;
        int required;
    } strs[] = {{"queue", 1},      {"id", 1},         {"state", 1},
                {"owner_host", 0}, {"last_error", 0}, {"crashed_reason", 0}};
    const char **dst[] = {&r->queue,      &r->id,         &r->state,
                          &r->owner_host, &r->last_error, &r->crashed_reason};
    memset(r, 0, sizeof *r);
    if (!cJSON_IsObject(o)) {
        *want = "a JSON object per line";
        return "(line)";
    }
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, strs[i].key);
        if (cJSON_IsString(v)) {
            *dst[i] = v->valuestring;
        } else if (strs[i].required || (v && !cJSON_IsNull(v))) {
            *want = strs[i].required ? "a string" : "a string or null";
            return strs[i].key;
        }
    }
    static const char *const nums[] = {
        "attempts",        "deliveries", "owner_pid",  "lease_until",
        "first_failed_at", "created_at", "updated_at", "replays"};
    int64_t val[8];
    for (size_t i = 0; i < 8; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, nums[i]);
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 ||
            v->valuedouble > 9.0e15 ||
            v->valuedouble != (double)(int64_t)v->valuedouble) {
            *want = "a non-negative integer";
            return nums[i];
        }
        val[i] = (int64_t)v->valuedouble;
    }
    if (val[0] > 1000000 || val[1] > 1000000 || val[2] > 0x7fffffff) {
        *want = "a non-negative integer in range";
        return val[0] > 1000000   ? "attempts"
               : val[1] > 1000000 ? "deliveries"
                                  : "owner_pid";
    }
    r->attempts = (int)val[0];
    r->deliveries = (int)val[1];
    r->owner_pid = (int)val[2];
    r->lease_until = val[3];
    r->first_failed_at = val[4];
    r->created_at = val[5];
    r->updated_at = val[6];
    r->replays = val[7];
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "owner_token");
    if (cJSON_IsString(t)) {
        char *end;
        errno = 0;
        long long tok = strtoll(t->valuestring, &end, 10);
        if (errno != 0 || end == t->valuestring || *end != '\0' || tok < 0) {
            *want = "a non-negative integer as a string";
            return "owner_token";
        }
        r->owner_token = tok;
    } else if (t && !cJSON_IsNull(t)) {
        *want = "a non-negative integer as a string";
        return "owner_token";
    }
    return NULL;
}

/* Commits the open batch; on failure prints why and returns the exit. */
static int commit_batch(warren__store *st) {
    int rc = warren__store_commit(st);
    if (rc != 0) {
        cli_error("store import: %s", warren__store_errstr(st));
        warren__store_rollback(st);
        return cli_exit_code(rc);
    }
    return EXIT_OK;
}

int cli_store_import(warren__store *st, const char *in) {
    int from_stdin = in == NULL || strcmp(in, "-") == 0;
    if (from_stdin) {
        in = "stdin";
    }
    FILE *fp = from_stdin ? stdin : fopen(in, "re");
    if (fp == NULL) {
        cli_error("store import: %s: %s", in, strerror(errno));
        return EXIT_USAGE;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0, added = 0, kept = 0, in_batch = 0, committed = 0;
    int code = EXIT_OK;
    while (code == EXIT_OK && (len = getline(&line, &cap, fp)) != -1) {
        lineno++;
        if (len > LINE_MAX_BYTES) {
            cli_error("store import: %s:%ld: line longer than %d bytes", in,
                      lineno, LINE_MAX_BYTES);
            code = EXIT_USAGE;
            break;
        }
        if (strspn(line, " \t\r\n") == (size_t)len) {
            continue; /* blank line */
        }
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        warren__store_entry r;
        const char *want = NULL;
        const char *bad = o ? parse_row(o, &r, &want) : "(line)";
        if (bad) {
            cli_error("store import: %s:%ld: %s: expected %s", in, lineno, bad,
                      o ? want : "a JSON object per line");
            cJSON_Delete(o);
            code = EXIT_USAGE;
            break;
        }
        int rc = in_batch == 0 ? warren__store_begin(st) : 0;
        int inserted = 0;
        if (rc == 0) {
            rc = warren__store_put(st, &r, &inserted);
        }
        cJSON_Delete(o);
        if (rc != 0) {
            cli_error("store import: %s:%ld: %s", in, lineno,
                      warren__store_errstr(st));
            code = rc == WARREN_ERR_INVAL ? EXIT_USAGE : cli_exit_code(rc);
            break;
        }
        added += inserted;
        kept += !inserted;
        if (++in_batch == IMPORT_BATCH) {
            code = commit_batch(st);
            committed = added;
            in_batch = 0;
        }
    }
    if (code == EXIT_OK && ferror(fp)) {
        cli_error("store import: %s: read failed", in);
        code = EXIT_FAILURE_RUNTIME;
    }
    if (code == EXIT_OK && in_batch > 0) {
        code = commit_batch(st);
        committed = added;
    }
    if (code != EXIT_OK) {
        warren__store_rollback(st);
        cli_error("store import: stopped; %ld records committed before line "
                  "%ld (importing the file again keeps them)",
                  committed, lineno);
    } else {
        printf("imported %ld records into %s (%ld already there, kept)\n",
               added, warren__store_path(st), kept);
    }
    free(line);
    if (!from_stdin) {
        fclose(fp);
    }
    return code;
}

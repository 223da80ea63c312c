/*
 * dlq_cmd.c - `warren dlq list|show|replay|purge|export|import`: the
 * operator's tool for a consumer's dead-letter queue. Option parsing,
 * confirmation prompts, terminal output and exit codes live here; reading
 * the DLQ, selecting and replaying live in dlq/ (see docs/dlq.md).
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "dlq.h"
#include "log.h"
#include "msgid.h"
#include "store.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

typedef struct {
    const char *sub, *config, *queue, *to, *out, *in, *show_id;
    warren__dlq_filter f;
    int json, all, yes, clean, dry_run, force, remove, skip_bad;
    double rate;
    uint64_t max_body; /* --max-body; 0: WARREN__DLQ_MAX_BODY */
    /* run state */
    warren__dlq *q;
    FILE *fp;
    int fd;
    int width;
    int tty;
    int64_t start_ms;
    uint64_t printed;
    uint64_t unread; /* export: left in place, body over --max-body */
} opts;

static int term_width(void) {
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40) {
        return ws.ws_col;
    }
    return 100;
}

static void local_time(int64_t ms, char *out, size_t len) {
    /* list formats one time per row, and dead letters come in bursts of the
     * same second: the last conversion is kept (localtime_r and strftime
     * are the costliest part of a row). */
    static time_t last = (time_t)-1;
    static char last_text[32];
    struct tm tm;
    time_t t = (time_t)(ms / 1000);
    if (ms <= 0) {
        snprintf(out, len, "-");
        return;
    }
    if (t != last) {
        if (localtime_r(&t, &tm) == NULL) {
            snprintf(out, len, "-");
            return;
        }
        strftime(last_text, sizeof last_text, "%Y-%m-%d %H:%M:%S", &tm);
        last = t;
    }
    snprintf(out, len, "%s", last_text);
}

/* Prints at most `max` characters of `s`, control characters as spaces,
 * with one write. */
static void print_clipped(const char *s, int max) {
    char buf[1100];
    size_t n = strlen(s), cap = sizeof buf - 4;
    size_t lim = max > 0 ? (size_t)max : 0;
    if (lim > cap) {
        lim = cap;
    }
    int cut = n > lim;
    size_t keep = cut ? (lim > 3 ? lim - 3 : 0) : n;
    for (size_t i = 0; i < keep; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
    }
    if (cut) {
        memcpy(buf + keep, "...", 3);
        keep += 3;
    }
    fwrite(buf, 1, keep, stdout);
}

/* ---- list ------------------------------------------------------------- */

static cJSON *entry_json(const warren__dlq_entry *e,
                         const warren__delivery *d) {
    cJSON *o = warren__dlq_to_json(d->msg.props, d->msg.body, d->msg.body_len);
    char when[64];
    if (o == NULL) {
        return NULL;
    }
    cJSON_AddStringToObject(o, "id", e->id);
    cJSON_AddNumberToObject(o, "position", (double)e->position);
    cJSON_AddStringToObject(o, "queue", e->queue);
    cJSON_AddStringToObject(o, "exchange", e->exchange);
    cJSON_AddStringToObject(o, "routing_key", e->routing_key);
    cJSON_AddNumberToObject(o, "attempts", (double)e->attempts);
    cJSON_AddStringToObject(o, "error", e->error);
    cJSON_AddNumberToObject(o, "dead_at_ms", (double)e->dead_at_ms);
    local_time(e->dead_at_ms, when, sizeof when);
    cJSON_AddStringToObject(o, "dead_at", when);
    cJSON_AddNumberToObject(o, "first_failed_at_ms",
                            (double)e->first_failed_at_ms);
    cJSON_AddStringToObject(o, "worker", e->worker);
    cJSON_AddNumberToObject(o, "replays", (double)e->replays);
    cJSON_AddNumberToObject(o, "body_bytes", (double)e->body_len);
    if (e->body_unread) {
        /* Not an empty body: one not read. null keeps the line from being
         * imported as if it were the message. */
        cJSON_ReplaceItemInObjectCaseSensitive(o, "body", cJSON_CreateNull());
        cJSON_AddBoolToObject(o, "body_unread", 1);
    }
    cJSON_AddBoolToObject(o, "redelivered", d->msg.redelivered);
    return o;
}

static void print_header_row(const opts *o) {
    (void)o;
    printf("%-24s %4s  %-19s  %-20s  %s\n", "ID", "ATT", "DEAD-AT (local)",
           "ROUTING-KEY", "ERROR");
}

static void print_row(const opts *o, const warren__dlq_entry *e) {
    char when[64];
    local_time(e->dead_at_ms, when, sizeof when);
    int used = printf("%-24s %4lld  %-19s  %-20s  ", e->id,
                      (long long)e->attempts, when, e->routing_key);
    int left = o->width - used;
    print_clipped(e->error, left > 10 ? left : 10);
    putchar('\n');
}

static int list_match(const warren__dlq_entry *e, const warren__delivery *d,
                      void *user) {
    opts *o = user;
    if (o->json) {
        cJSON *j = entry_json(e, d);
        char *text = j ? cJSON_PrintUnformatted(j) : NULL;
        cJSON_Delete(j);
        if (text == NULL) {
            return WARREN_ERR_NOMEM;
        }
        puts(text);
        cJSON_free(text);
    } else {
        print_row(o, e);
    }
    o->printed++;
    return WARREN__DLQ_KEEP;
}

/* ---- show ------------------------------------------------------------- */

static void print_value_list(const cJSON *arr, int indent);

static void print_typed(const cJSON *item, const char *name, int indent) {
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(item, "kind");
    const cJSON *val = cJSON_GetObjectItemCaseSensitive(item, "value");
    const char *k = cJSON_IsString(kind) ? kind->valuestring : "?";
    printf("%*s%s (%s)", indent, "", name, k);
    if (strcmp(k, "table") == 0 || strcmp(k, "array") == 0) {
        printf(":\n");
        print_value_list(val, indent + 2);
        return;
    }
    size_t nl = strlen(name);
    int is_int = strcmp(k, "i64") == 0 || strcmp(k, "u64") == 0 ||
                 strcmp(k, "timestamp") == 0;
    char *text = is_int ? NULL : cJSON_PrintUnformatted(val);
    /* 64-bit integers travel as strings in JSON; show them as numbers. */
    printf(": %s", is_int && cJSON_IsString(val) ? val->valuestring
                   : text                        ? text
                                                 : "?");
    cJSON_free(text);
    if (strcmp(k, "i64") == 0 && cJSON_IsString(val) && nl > 3 &&
        strcmp(name + nl - 3, "-at") == 0) {
        char when[64];
        local_time(strtoll(val->valuestring, NULL, 10), when, sizeof when);
        printf("  (%s local)", when);
    }
    putchar('\n');
}

static void print_value_list(const cJSON *arr, int indent) {
    const cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, arr) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
        char buf[300];
        if (cJSON_IsString(name)) {
            snprintf(buf, sizeof buf, "%s", name->valuestring);
        } else if (name) {
            char *t = cJSON_PrintUnformatted(name);
            snprintf(buf, sizeof buf, "%s", t ? t : "?");
            cJSON_free(t);
        } else {
            snprintf(buf, sizeof buf, "[%d]", i);
        }
        print_typed(it, buf, indent);
        i++;
    }
}

static void hex_dump(const uint8_t *b, size_t len) {
    for (size_t off = 0; off < len; off += 16) {
        printf("  %04zx  ", off);
        for (size_t i = 0; i < 16; i++) {
            if (off + i < len) {
                printf("%02x ", b[off + i]);
            } else {
                fputs("   ", stdout);
            }
        }
        fputs(" |", stdout);
        for (size_t i = 0; i < 16 && off + i < len; i++) {
            unsigned char c = b[off + i];
            putchar(c >= 0x20 && c < 0x7f ? c : '.');
        }
        fputs("|\n", stdout);
    }
}

static int show_match(const warren__dlq_entry *e, const warren__delivery *d,
                      void *user) {
    opts *o = user;
    cJSON *j = warren__dlq_to_json(d->msg.props, d->msg.body, d->msg.body_len);
    if (j == NULL) {
        return WARREN_ERR_NOMEM;
    }
    printf("id:        %s%s\n", e->id,
           e->has_dedup_id ? "" : " (no dedup id: AMQP message_id)");
    printf("position:  %llu of %u in %s\n", (unsigned long long)e->position,
           warren__dlq_depth(o->q), warren__dlq_name_of(o->q));
    if (e->error[0]) {
        /* x-warren-error, or for a letter the broker dead-lettered, what
         * its x-death says (shown in full below). */
        char when[64];
        local_time(e->dead_at_ms, when, sizeof when);
        printf("error:     %s\n", e->error);
        printf("dead at:   %s (local)\n", when);
    }
    printf("properties:\n");
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "properties")) {
        char *t = cJSON_PrintUnformatted(it);
        printf("  %s: %s\n", it->string, t ? t : "?");
        cJSON_free(t);
    }
    printf("headers:\n");
    print_value_list(cJSON_GetObjectItemCaseSensitive(j, "headers"), 2);
    cJSON_Delete(j);
    const char *body = (const char *)d->msg.body;
    size_t len = d->msg.body_len;
    cJSON *parsed = NULL;
    if (e->body_unread) {
        printf("body (%llu bytes): not read, larger than --max-body %llu\n",
               (unsigned long long)e->body_len,
               (unsigned long long)(o->max_body ? o->max_body
                                                : WARREN__DLQ_MAX_BODY));
        o->printed++;
        return WARREN__DLQ_STOP;
    }
    if (warren__utf8_valid(body, len)) {
        parsed = cJSON_ParseWithLength(body, len);
    }
    if (parsed) {
        char *t = cJSON_Print(parsed);
        printf("body (%zu bytes, JSON):\n%s\n", len, t ? t : "");
        cJSON_free(t);
        cJSON_Delete(parsed);
    } else {
        printf("body (%zu bytes%s):\n", len,
               len > 256 ? ", first 256 shown" : "");
        hex_dump(d->msg.body, len > 256 ? 256 : len);
    }
    o->printed++;
    return WARREN__DLQ_STOP;
}

/* ---- replay / purge --------------------------------------------------- */

static int replay_match(const warren__dlq_entry *e, const warren__delivery *d,
                        void *user) {
    opts *o = user;
    (void)d;
    if (o->dry_run) {
        printf("would replay %-24s to %-20s %s\n", e->id,
               o->to ? o->to : e->queue, e->error);
        o->printed++;
        return WARREN__DLQ_KEEP;
    }
    return WARREN__DLQ_REPLAY;
}

static int purge_match(const warren__dlq_entry *e, const warren__delivery *d,
                       void *user) {
    opts *o = user;
    (void)d;
    printf("%s %-24s %s\n", o->dry_run ? "would remove" : "removing", e->id,
           e->error);
    o->printed++;
    return o->dry_run ? WARREN__DLQ_KEEP : WARREN__DLQ_REMOVE;
}

static void progress(const warren__dlq_stats *st, void *user) {
    opts *o = user;
    if (!o->tty) {
        return;
    }
    double s = (double)(warren__mono_ms() - o->start_ms) / 1000.0;
    double rate = s > 0 ? (double)st->replayed / s : 0;
    uint64_t left = st->depth > st->scanned ? st->depth - st->scanned : 0;
    fprintf(stderr, "\r%llu replayed, %llu of %llu read, %.0f/s, ETA %.0f s   ",
            (unsigned long long)st->replayed, (unsigned long long)st->scanned,
            (unsigned long long)st->depth, rate,
            rate > 0 ? (double)left / rate : 0.0);
}

/* ---- export ----------------------------------------------------------- */

static int export_match(const warren__dlq_entry *e, const warren__delivery *d,
                        void *user) {
    opts *o = user;
    if (e->body_unread) {
        /* Never written without its whole body, so never removed. */
        cli_error("export: %s (position %llu): its %llu-byte body is larger "
                  "than --max-body %llu: not exported, left in the DLQ "
                  "(raise --max-body to export it)",
                  e->id[0] ? e->id : "(no id)", (unsigned long long)e->position,
                  (unsigned long long)e->body_len,
                  (unsigned long long)(o->max_body ? o->max_body
                                                   : WARREN__DLQ_MAX_BODY));
        o->unread++;
        return WARREN__DLQ_KEEP;
    }
    cJSON *j = warren__dlq_to_json(d->msg.props, d->msg.body, d->msg.body_len);
    if (j == NULL) {
        return WARREN_ERR_NOMEM;
    }
    /* Informative only: import reads properties, headers and body. The
     * error is also derived for letters the broker dead-lettered. */
    cJSON_AddStringToObject(j, "id", e->id);
    cJSON_AddStringToObject(j, "error", e->error);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (text == NULL) {
        return WARREN_ERR_NOMEM;
    }
    int bad = fputs(text, o->fp) < 0 || fputc('\n', o->fp) == EOF;
    cJSON_free(text);
    if (bad) {
        cli_error("export: writing %s: %s", o->out, strerror(errno));
        return WARREN_ERR_IO;
    }
    o->printed++;
    return o->remove ? WARREN__DLQ_REMOVE : WARREN__DLQ_KEEP;
}

static int export_sync(void *user) {
    opts *o = user;
    if (fflush(o->fp) != 0 || fsync(fileno(o->fp)) != 0) {
        cli_error("export: writing %s: %s", o->out, strerror(errno));
        return WARREN_ERR_IO;
    }
    return 0;
}

/* ---- import ----------------------------------------------------------- */

static int do_import(opts *o) {
    FILE *fp = fopen(o->in, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0, imported = 0, skipped = 0;
    int rc = 0, bad_stop = 0;
    warren__arena pool;
    const char *to = o->to ? o->to : warren__dlq_name_of(o->q);
    if (fp == NULL) {
        cli_error("import: cannot open %s: %s", o->in, strerror(errno));
        return EXIT_USAGE;
    }
    warren__arena_init(&pool, 16384);
    while ((n = getline(&line, &cap, fp)) != -1) {
        char err[512];
        warren__props p;
        uint8_t *body;
        size_t len;
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
            line[--n] = '\0';
        }
        if (n == 0) {
            continue;
        }
        warren__arena_recycle(&pool);
        if (warren__dlq_from_json(line, (size_t)n, &pool, &p, &body, &len, err,
                                  sizeof err) != 0) {
            cli_error("%s:%ld: %s", o->in, lineno, err);
            skipped++;
            if (!o->skip_bad) {
                bad_stop = 1;
                break;
            }
            continue;
        }
        rc = warren__dlq_publish(o->q, to, &p, body, len);
        free(body);
        if (rc != 0) {
            break;
        }
        imported++;
    }
    if (rc == 0) {
        rc = warren__dlq_flush(o->q);
    }
    free(line);
    fclose(fp);
    warren__arena_empty(&pool);
    if (rc != 0) {
        cli_error("import: %s (messages not confirmed may or may not be in "
                  "%s)",
                  warren__dlq_errstr(o->q), to);
        printf("imported %ld (unconfirmed ones included), skipped %ld\n",
               imported, skipped);
        return imported ? EXIT_PARTIAL : cli_exit_code(rc);
    }
    printf("imported %ld into %s, skipped %ld bad line(s)%s\n", imported, to,
           skipped, bad_stop ? "; stopped at the bad line" : "");
    if (bad_stop) {
        return EXIT_USAGE;
    }
    return skipped ? EXIT_PARTIAL : EXIT_OK;
}

/* ---- option parsing --------------------------------------------------- */

static int parse_args(int argc, char **argv, opts *o) {
    enum {
        O_QUEUE = 1000,
        O_ERROR,
        O_ERROR_RE,
        O_SINCE,
        O_UNTIL,
        O_ID,
        O_LIMIT,
        O_JSON,
        O_ALL,
        O_YES,
        O_TO,
        O_CLEAN,
        O_DRY,
        O_RATE,
        O_OUT,
        O_IN,
        O_FORCE,
        O_REMOVE,
        O_SKIP_BAD,
        O_MAX_BODY
    };
    static const struct option lo[] = {
        {"config", required_argument, 0, 'c'},
        {"queue", required_argument, 0, O_QUEUE},
        {"error", required_argument, 0, O_ERROR},
        {"error-re", required_argument, 0, O_ERROR_RE},
        {"since", required_argument, 0, O_SINCE},
        {"until", required_argument, 0, O_UNTIL},
        {"id", required_argument, 0, O_ID},
        {"limit", required_argument, 0, O_LIMIT},
        {"json", no_argument, 0, O_JSON},
        {"all", no_argument, 0, O_ALL},
        {"yes", no_argument, 0, O_YES},
        {"to", required_argument, 0, O_TO},
        {"clean", no_argument, 0, O_CLEAN},
        {"dry-run", no_argument, 0, O_DRY},
        {"rate", required_argument, 0, O_RATE},
        {"out", required_argument, 0, O_OUT},
        {"in", required_argument, 0, O_IN},
        {"force", no_argument, 0, O_FORCE},
        {"remove", no_argument, 0, O_REMOVE},
        {"skip-bad", no_argument, 0, O_SKIP_BAD},
        {"max-body", required_argument, 0, O_MAX_BODY},
        {0, 0, 0, 0}};
    char err[512], *end;
    int opt;
    int64_t now = warren__now_ms();
    optind = 2;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":c:", lo, NULL)) != -1) {
        switch (opt) {
        case 'c':
            o->config = optarg;
            break;
        case O_QUEUE:
            o->queue = optarg;
            break;
        case O_ERROR:
            o->f.error_sub = optarg;
            break;
        case O_ERROR_RE:
            if (warren__dlq_filter_set_re(&o->f, optarg, err, sizeof err)) {
                cli_error("dlq: %s", err);
                return -1;
            }
            break;
        case O_SINCE:
        case O_UNTIL:
            if (warren__dlq_parse_time(optarg, now,
                                       opt == O_SINCE ? &o->f.since_ms
                                                      : &o->f.until_ms,
                                       err, sizeof err)) {
                cli_error("dlq: --%s: %s", opt == O_SINCE ? "since" : "until",
                          err);
                return -1;
            }
            break;
        case O_ID:
            if (warren__dlq_filter_add_id(&o->f, optarg)) {
                cli_error("dlq: at most %d --id options", WARREN__DLQ_MAX_IDS);
                return -1;
            }
            break;
        case O_LIMIT:
            errno = 0;
            o->f.limit = strtol(optarg, &end, 10);
            if (*end || errno || o->f.limit <= 0) {
                cli_error("dlq: --limit '%s': expected a positive integer",
                          optarg);
                return -1;
            }
            break;
        case O_RATE:
            errno = 0;
            o->rate = strtod(optarg, &end);
            if (*end || errno || !(o->rate > 0) || o->rate > 1e6) {
                cli_error("dlq: --rate '%s': expected messages per second "
                          "(> 0)",
                          optarg);
                return -1;
            }
            break;
        case O_JSON:
            o->json = 1;
            break;
        case O_ALL:
            o->all = 1;
            break;
        case O_YES:
            o->yes = 1;
            break;
        case O_TO:
            o->to = optarg;
            break;
        case O_CLEAN:
            o->clean = 1;
            break;
        case O_DRY:
            o->dry_run = 1;
            break;
        case O_OUT:
            o->out = optarg;
            break;
        case O_IN:
            o->in = optarg;
            break;
        case O_FORCE:
            o->force = 1;
            break;
        case O_REMOVE:
            o->remove = 1;
            break;
        case O_SKIP_BAD:
            o->skip_bad = 1;
            break;
        case O_MAX_BODY: {
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (*end || errno || optarg[0] == '-' || v == 0 ||
                v > ((unsigned long long)1 << 32)) {
                cli_error("dlq: --max-body '%s': expected bytes, 1 to "
                          "4294967296",
                          optarg);
                return -1;
            }
            o->max_body = v;
            break;
        }
        case ':':
            cli_error("dlq: %s needs a value", argv[optind - 1]);
            return -1;
        default:
            cli_error("dlq %s: unknown option '%s' (see `warren help dlq`)",
                      o->sub, argv[optind - 1]);
            return -1;
        }
    }
    if (strcmp(o->sub, "show") == 0) {
        if (optind != argc - 1) {
            cli_error("dlq show: needs exactly one ID");
            return -1;
        }
        o->show_id = argv[optind];
        warren__dlq_filter_add_id(&o->f, o->show_id);
    } else if (optind < argc) {
        cli_error("dlq %s: unexpected argument '%s'", o->sub, argv[optind]);
        return -1;
    }
    if (o->queue == NULL) {
        cli_error("dlq %s: needs --queue Q (a consumer's queue in the config)",
                  o->sub);
        return -1;
    }
    int selecting =
        strcmp(o->sub, "replay") == 0 || strcmp(o->sub, "purge") == 0;
    if (selecting && !o->all && warren__dlq_filter_is_empty(&o->f)) {
        cli_error("dlq %s: say which dead letters: --id, --error, --error-re, "
                  "--since, --until, or --all",
                  o->sub);
        return -1;
    }
    if (o->all && !warren__dlq_filter_is_empty(&o->f)) {
        cli_error("dlq %s: --all cannot be combined with filters", o->sub);
        return -1;
    }
    if (strcmp(o->sub, "export") == 0 && o->out == NULL) {
        cli_error("dlq export: needs --out FILE.jsonl");
        return -1;
    }
    if (strcmp(o->sub, "import") == 0 && o->in == NULL) {
        cli_error("dlq import: needs --in FILE.jsonl");
        return -1;
    }
    return 0;
}

/* --all: a typed "yes" on a terminal, --yes otherwise. */
static int confirm_all(const opts *o, const char *verb) {
    char answer[16];
    if (!o->all || o->yes || o->dry_run) {
        return 0;
    }
    if (!isatty(STDIN_FILENO) || !isatty(STDERR_FILENO)) {
        cli_error("dlq %s --all: not on a terminal, so add --yes to confirm",
                  o->sub);
        return -1;
    }
    fprintf(stderr, "%s ALL %u dead letters in %s? type yes: ", verb,
            warren__dlq_depth(o->q), warren__dlq_name_of(o->q));
    if (fgets(answer, sizeof answer, stdin) == NULL ||
        strcmp(answer, "yes\n") != 0) {
        cli_error("dlq %s: not confirmed; nothing changed", o->sub);
        return -1;
    }
    return 0;
}

static int open_store(const warren_config *cfg, warren__store **st) {
    char err[1024];
    int rc = warren__store_open_config(cfg, NULL, WARREN__STORE_F_MUST_EXIST,
                                       st, err, sizeof err);
    if (rc != 0) {
        cli_error("%s", err);
    }
    return rc;
}

static int open_export(opts *o) {
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (o->force ? O_TRUNC : O_EXCL);
    int fd = open(o->out, flags, 0600);
    if (fd < 0) {
        if (errno == EEXIST) {
            cli_error("dlq export: %s exists; add --force to overwrite it",
                      o->out);
        } else {
            cli_error("dlq export: cannot create %s: %s", o->out,
                      strerror(errno));
        }
        return -1;
    }
    o->fp = fdopen(fd, "w");
    if (o->fp == NULL) {
        close(fd);
        return -1;
    }
    return 0;
}

int cmd_dlq(int argc, char **argv) {
    opts o;
    warren__dlq_ops ops;
    warren__dlq_stats st;
    warren_config *cfg = NULL;
    warren__store *store = NULL;
    char err[2048];
    int rc, code = EXIT_OK;
    static const char *subs[] = {"list",  "show",   "replay",
                                 "purge", "export", "import"};
    memset(&o, 0, sizeof o);
    memset(&ops, 0, sizeof ops);
    memset(&st, 0, sizeof st);
    warren__dlq_filter_init(&o.f);
    if (argc < 2) {
        cli_error("usage: warren dlq list|show|replay|purge|export|import "
                  "-c FILE --queue Q ... (see `warren help dlq`)");
        return EXIT_USAGE;
    }
    o.sub = argv[1];
    size_t k;
    for (k = 0; k < sizeof subs / sizeof subs[0]; k++) {
        if (strcmp(o.sub, subs[k]) == 0) {
            break;
        }
    }
    if (k == sizeof subs / sizeof subs[0]) {
        cli_error("dlq: unknown subcommand '%s' (list, show, replay, purge, "
                  "export, import)",
                  o.sub);
        return EXIT_USAGE;
    }
    if (parse_args(argc, argv, &o) != 0) {
        warren__dlq_filter_free(&o.f);
        return EXIT_USAGE;
    }
    if (cli_log_init(getenv("WARREN_LOG_LEVEL") ? getenv("WARREN_LOG_LEVEL")
                                                : "warn") != 0) {
        warren__dlq_filter_free(&o.f);
        return EXIT_USAGE;
    }
    cfg = cli_load_config(o.config);
    if (cfg == NULL) {
        warren__dlq_filter_free(&o.f);
        return EXIT_USAGE;
    }
    rc = warren__dlq_open(cfg, o.queue, &o.q, err, sizeof err);
    if (rc != 0) {
        cli_error("dlq: %s", err);
        code = rc == WARREN_ERR_NOT_FOUND ? EXIT_USAGE : cli_exit_code(rc);
        goto out;
    }
    o.width = term_width();
    o.tty = isatty(STDERR_FILENO);
    o.start_ms = warren__mono_ms();
    ops.user = &o;
    ops.stop = &g_stop;
    ops.max_body = o.max_body;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (strcmp(o.sub, "import") == 0) {
        code = do_import(&o);
        goto out;
    }
    if (strcmp(o.sub, "list") == 0) {
        /* Rows go out in large writes when not on a terminal (a pipe or a
         * file would otherwise get 4 KiB writes). */
        if (!isatty(STDOUT_FILENO)) {
            setvbuf(stdout, NULL, _IOFBF, 1 << 16);
        }
        ops.on_match = list_match;
        if (!o.json) {
            print_header_row(&o);
        }
    } else if (strcmp(o.sub, "show") == 0) {
        ops.on_match = show_match;
    } else if (strcmp(o.sub, "replay") == 0) {
        if (confirm_all(&o, "Replay") != 0) {
            code = EXIT_USAGE;
            goto out;
        }
        ops.on_match = replay_match;
        ops.progress = progress;
        ops.to_queue = o.to;
        ops.clean = o.clean;
        ops.rate_per_s = o.rate;
        /* --all acks nearly everything it reads, so the broker need not
         * send more than a few windows ahead; without the limit, every
         * delivery arriving while confirms are awaited is buffered, up to
         * the whole DLQ (~5 KB each). */
        if (o.all && !o.dry_run && o.f.limit == 0) {
            ops.prefetch = 8192;
        }
        if (!o.dry_run && warren__dlq_consumer(o.q)->dedup) {
            rc = open_store(cfg, &store);
            if (rc != 0) {
                /* A missing store is the config naming another file than
                 * the workers': nothing replayed, the DLQ untouched. */
                code =
                    rc == WARREN_ERR_NOT_FOUND ? EXIT_USAGE : cli_exit_code(rc);
                goto out;
            }
            warren__dlq_set_store(o.q, store);
        }
    } else if (strcmp(o.sub, "purge") == 0) {
        if (confirm_all(&o, "Remove") != 0) {
            code = EXIT_USAGE;
            goto out;
        }
        ops.on_match = purge_match;
    } else { /* export */
        if (open_export(&o) != 0) {
            code = EXIT_USAGE;
            goto out;
        }
        ops.on_match = export_match;
        ops.before_ack = export_sync;
    }
    rc = warren__dlq_scan(o.q, &o.f, &ops, &st);
    if (o.tty && ops.progress && st.replayed > 0) {
        fputc('\n', stderr);
    }
    if (o.fp) {
        if (export_sync(&o) != 0 && rc == 0) {
            rc = WARREN_ERR_IO;
        }
        fclose(o.fp);
        o.fp = NULL;
    }
    if (rc != 0) {
        cli_error("dlq %s: %s", o.sub, warren__dlq_errstr(o.q));
    }
    if (strcmp(o.sub, "list") == 0) {
        FILE *to = o.json ? stderr : stdout;
        /* The rows first: with 2>&1 the count line must not land inside
         * a JSON line still in stdout's buffer. */
        fflush(stdout);
        fprintf(to,
                "%llu dead letter(s) shown, %llu matched of %llu read "
                "(%llu in %s)\n",
                (unsigned long long)o.printed, (unsigned long long)st.matched,
                (unsigned long long)st.scanned, (unsigned long long)st.depth,
                warren__dlq_name_of(o.q));
    } else if (strcmp(o.sub, "show") == 0 && rc == 0 && o.printed == 0) {
        cli_error("dlq show: no dead letter with id '%s' in %s", o.show_id,
                  warren__dlq_name_of(o.q));
        code = EXIT_FAILURE_RUNTIME;
    } else if (strcmp(o.sub, "replay") == 0) {
        if (o.dry_run) {
            printf("dry run: would replay %llu, nothing changed\n",
                   (unsigned long long)o.printed);
        } else {
            printf("replayed %llu, skipped %llu, failed %llu%s\n",
                   (unsigned long long)st.replayed,
                   (unsigned long long)st.skipped,
                   (unsigned long long)st.failed,
                   st.interrupted ? " (interrupted)" : "");
        }
    } else if (strcmp(o.sub, "purge") == 0) {
        printf("%s %llu\n", o.dry_run ? "dry run: would remove" : "removed",
               (unsigned long long)(o.dry_run ? o.printed : st.removed));
    } else if (strcmp(o.sub, "export") == 0) {
        printf("exported %llu to %s%s\n", (unsigned long long)o.printed, o.out,
               o.remove ? " (removed from the DLQ once written)" : "");
        if (o.unread > 0) {
            printf("not exported: %llu with a body over --max-body, left in "
                   "the DLQ\n",
                   (unsigned long long)o.unread);
            code = EXIT_PARTIAL;
        }
    }
    if (code == EXIT_OK) {
        if (st.failed > 0) {
            code = EXIT_PARTIAL;
        } else if (rc != 0) {
            code = cli_exit_code(rc);
        }
    }
out:
    warren__dlq_close(o.q);
    warren__store_close(store);
    warren_config_free(cfg);
    warren__dlq_filter_free(&o.f);
    return code;
}

/*
 * config.c - reads the JSON configuration into struct warren_config and
 * refuses, before anything connects, whatever it does not understand.
 *
 * Promises: on success every field of the struct is in range and defaulted
 * (docs/config.md); on failure exactly one line "FILE: FIELD: expected WHAT,
 * got WHAT" (or "FILE:LINE:COL: invalid JSON: ...") is written, with URL
 * passwords redacted, and nothing leaks. No input, however malformed, makes
 * it crash: everything read is bounded (1 MiB per file, cJSON's nesting
 * limit, fixed-size messages).
 */
#include "config.h"

#include "log.h"
#include "url.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CONFIG_MAX_BYTES (1024 * 1024)
#define FIELD_MAX 256 /* a JSON path in an error message */
#define SHOW_MAX 48   /* bytes of a bad value quoted in an error message */
#define MAX_CONSUMERS 64
#define MAX_URLS 16
/* The delayed-retry routing key is 28 binary digits, each followed by a dot,
 * then the queue name, and must fit an AMQP short string: 56 + 199 = 255. */
#define QUEUE_MAX 199
#define DLQ_MAX 255 /* AMQP short string */
#define PATH_STR_MAX 4096
#define ID_ARG_MAX 255
#define DELAY_MAX                                                              \
    268435455 /* 2^28 - 1 ms: what the delay cascade expresses                 \
               */

static const char DEFAULT_URL[] = "amqp://guest:guest@127.0.0.1:5672/%2f";

typedef struct {
    const char *name; /* file name, for messages */
    char *err;
    size_t errlen;
    int rc;                /* first failure; later ones are not reported */
    int file_has_password; /* a URL in the file itself carries a password */
} parser;

/* ---- error reporting ---------------------------------------------------- */

/* Makes `s` safe to show on one line: control bytes become '?', and the
 * text is cut (with "...") at SHOW_MAX bytes. URL passwords are redacted. */
static void show_text(const char *s, char *out, size_t outlen) {
    char cut[SHOW_MAX + 4];
    size_t n = strnlen(s, SHOW_MAX + 1);
    if (n > SHOW_MAX) {
        memcpy(cut, s, SHOW_MAX);
        memcpy(cut + SHOW_MAX, "...", 4);
    } else {
        memcpy(cut, s, n + 1);
    }
    for (char *c = cut; *c; c++) {
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            *c = '?';
        }
    }
    warren__redact_text(cut, out, outlen);
}

/* "a string \"x\"", "the number 3.5", "an object", ... for "got WHAT". */
static void describe(const cJSON *v, char *out, size_t outlen) {
    char text[SHOW_MAX * 2];
    if (cJSON_IsString(v)) {
        show_text(v->valuestring ? v->valuestring : "", text, sizeof text);
        snprintf(out, outlen, "\"%s\"", text);
    } else if (cJSON_IsNumber(v)) {
        snprintf(out, outlen, "%.15g", v->valuedouble);
    } else if (cJSON_IsTrue(v)) {
        snprintf(out, outlen, "true");
    } else if (cJSON_IsFalse(v)) {
        snprintf(out, outlen, "false");
    } else if (cJSON_IsNull(v)) {
        snprintf(out, outlen, "null");
    } else if (cJSON_IsArray(v)) {
        snprintf(out, outlen, v->child ? "an array" : "an empty array");
    } else if (cJSON_IsObject(v)) {
        snprintf(out, outlen, "an object");
    } else {
        snprintf(out, outlen, "an unknown value");
    }
}

/* Replaces anything that would break the one-line promise. */
static void one_line(char *s) {
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f) {
            *s = '?';
        }
    }
}

static int fail(parser *p, const char *field, const char *fmt, ...)
    WARREN_PRINTF(3, 4);

/* Records the first failure as "FILE: FIELD: <text>". Returns p->rc. */
static int fail(parser *p, const char *field, const char *fmt, ...) {
    char text[512];
    va_list ap;

    if (p->rc != 0) {
        return p->rc;
    }
    p->rc = WARREN_ERR_CONFIG;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (p->err != NULL && p->errlen > 0) {
        snprintf(p->err, p->errlen, "%s: %s: %s", p->name, field, text);
        one_line(p->err);
    }
    return p->rc;
}

/* "expected WHAT, got <value>" for the value `v` at `field`. */
static int fail_got(parser *p, const char *field, const cJSON *v,
                    const char *what) {
    char got[SHOW_MAX * 2 + 8];
    describe(v, got, sizeof got);
    return fail(p, field, "expected %s, got %s", what, got);
}

static int oom(parser *p) {
    if (p->rc == 0 || p->rc == WARREN_ERR_CONFIG) {
        if (p->err != NULL && p->errlen > 0) {
            snprintf(p->err, p->errlen, "%s: out of memory", p->name);
        }
    }
    p->rc = WARREN_ERR_NOMEM;
    return p->rc;
}

static char *dup_or_oom(parser *p, const char *s) {
    if (s == NULL) {
        return NULL;
    }
    char *d = strdup(s);
    if (d == NULL) {
        oom(p);
    }
    return d;
}

/* ---- unknown keys -------------------------------------------------------- */

/* Edit distance, case-insensitive, for "did you mean". Keys longer than 64
 * bytes never get a suggestion, which keeps the work bounded. */
static size_t distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), row[66];
    if (la > 64 || lb > 64) {
        return (size_t)-1;
    }
    for (size_t j = 0; j <= lb; j++) {
        row[j] = j;
    }
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            int ca = a[i - 1] | 0x20, cb = b[j - 1] | 0x20;
            size_t best = diag + (ca == cb ? 0 : 1);
            if (up + 1 < best) {
                best = up + 1;
            }
            if (row[j - 1] + 1 < best) {
                best = row[j - 1] + 1;
            }
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

/* out = "base.key" (or "key" at the top level), cut to fit. Written by
 * hand because snprintf's truncation warnings cannot see the bound. */
static void sub(char *out, size_t outlen, const char *base, const char *key) {
    size_t o = 0;
    if (outlen == 0) {
        return;
    }
    for (const char *s = base; *s && o + 1 < outlen; s++) {
        out[o++] = *s;
    }
    if (base[0] != '\0' && o + 1 < outlen) {
        out[o++] = '.';
    }
    for (const char *s = key; *s && o + 1 < outlen; s++) {
        out[o++] = *s;
    }
    out[o] = '\0';
}

/* Every key of object `obj` (at path `base`) must be one of `keys`, at most
 * once. n <= 32. */
static int check_keys(parser *p, const cJSON *obj, const char *base,
                      const char *const *keys, size_t n) {
    uint32_t seen = 0;
    for (const cJSON *c = obj->child; c != NULL; c = c->next) {
        const char *k = c->string ? c->string : "";
        char shown[SHOW_MAX * 2], field[FIELD_MAX];
        size_t i;
        for (i = 0; i < n && strcmp(k, keys[i]) != 0; i++) {
        }
        show_text(k, shown, sizeof shown);
        sub(field, sizeof field, base, shown);
        if (i == n) {
            const char *best = NULL;
            size_t best_d = (size_t)-1;
            char list[512] = "";
            size_t used = 0;
            for (size_t j = 0; j < n; j++) {
                size_t d = distance(k, keys[j]);
                size_t limit = strlen(keys[j]) <= 4 ? 1 : 2;
                if (d <= limit && d < best_d) {
                    best = keys[j];
                    best_d = d;
                }
                int w = snprintf(list + used, sizeof list - used, "%s%s",
                                 j ? ", " : "", keys[j]);
                if (w > 0 && (size_t)w < sizeof list - used) {
                    used += (size_t)w;
                }
            }
            if (best != NULL) {
                return fail(p, field,
                            "expected a known key, got unknown key \"%s\" "
                            "(did you mean \"%s\"?)",
                            shown, best);
            }
            return fail(p, field,
                        "expected a known key (%s), got unknown key \"%s\"",
                        list, shown);
        }
        if (seen & (1u << i)) {
            return fail(p, field,
                        "expected each key once, got \"%s\" a second time",
                        shown);
        }
        seen |= 1u << i;
    }
    return 0;
}

/* ---- typed getters: absent keys leave *out (the default) alone ---------- */

static const cJSON *item(const cJSON *obj, const char *key) {
    return obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

/* Returns the object at obj.key, NULL when absent (or on a type error,
 * which is then recorded). */
static const cJSON *get_obj(parser *p, const cJSON *obj, const char *base,
                            const char *key) {
    const cJSON *v = item(obj, key);
    char field[FIELD_MAX];
    if (v == NULL || p->rc != 0) {
        return NULL;
    }
    if (!cJSON_IsObject(v)) {
        sub(field, sizeof field, base, key);
        fail_got(p, field, v, "an object");
        return NULL;
    }
    return v;
}

/* Checks an integer value `v` shown at `field`. */
static int int_value(parser *p, const char *field, const cJSON *v, int64_t lo,
                     int64_t hi, int64_t *out) {
    char what[96];
    if (hi >= (int64_t)UINT32_MAX) {
        snprintf(what, sizeof what, "an integer >= %lld", (long long)lo);
    } else {
        snprintf(what, sizeof what, "an integer from %lld to %lld",
                 (long long)lo, (long long)hi);
    }
    if (!cJSON_IsNumber(v)) {
        return fail_got(p, field, v, what);
    }
    double d = v->valuedouble;
    /* The range test comes first so the cast below is always defined;
     * it also rejects NaN and infinities. */
    if (!(d >= (double)lo && d <= (double)hi) || (double)(int64_t)d != d) {
        return fail_got(p, field, v, what);
    }
    *out = (int64_t)d;
    return 0;
}

static int get_int(parser *p, const cJSON *obj, const char *base,
                   const char *key, int64_t lo, int64_t hi, int64_t *out) {
    const cJSON *v = item(obj, key);
    char field[FIELD_MAX];
    if (v == NULL || p->rc != 0) {
        return p->rc;
    }
    sub(field, sizeof field, base, key);
    return int_value(p, field, v, lo, hi, out);
}

/* Integer getters for the struct's field types. */
static void get_i(parser *p, const cJSON *obj, const char *base,
                  const char *key, int64_t lo, int64_t hi, int *out) {
    int64_t v = *out;
    if (get_int(p, obj, base, key, lo, hi, &v) == 0) {
        *out = (int)v;
    }
}

static void get_u32(parser *p, const cJSON *obj, const char *base,
                    const char *key, int64_t lo, int64_t hi, uint32_t *out) {
    int64_t v = *out;
    if (get_int(p, obj, base, key, lo, hi, &v) == 0) {
        *out = (uint32_t)v;
    }
}

static void get_num(parser *p, const cJSON *obj, const char *base,
                    const char *key, double lo, double hi, double *out) {
    const cJSON *v = item(obj, key);
    char field[FIELD_MAX], what[96];
    if (v == NULL || p->rc != 0) {
        return;
    }
    sub(field, sizeof field, base, key);
    snprintf(what, sizeof what, "a number from %g to %g", lo, hi);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) {
        fail_got(p, field, v, what);
        return;
    }
    *out = v->valuedouble;
}

static void get_bool(parser *p, const cJSON *obj, const char *base,
                     const char *key, bool *out) {
    const cJSON *v = item(obj, key);
    char field[FIELD_MAX];
    if (v == NULL || p->rc != 0) {
        return;
    }
    if (!cJSON_IsBool(v)) {
        sub(field, sizeof field, base, key);
        fail_got(p, field, v, "true or false");
        return;
    }
    *out = cJSON_IsTrue(v) != 0;
}

/* Checks a string value: length minlen..maxlen, no control characters. */
static int str_value(parser *p, const char *field, const cJSON *v,
                     size_t minlen, size_t maxlen, const char **out) {
    char what[96];
    size_t n;
    snprintf(what, sizeof what, "a string of %zu to %zu bytes", minlen, maxlen);
    if (!cJSON_IsString(v) || v->valuestring == NULL) {
        return fail_got(p, field, v, what);
    }
    n = strnlen(v->valuestring, maxlen + 1);
    if (n < minlen || n > maxlen) {
        return fail_got(p, field, v, what);
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v->valuestring[i];
        if (ch < 0x20 || ch == 0x7f) {
            return fail_got(p, field, v, "a string without control characters");
        }
    }
    *out = v->valuestring;
    return 0;
}

static int get_str(parser *p, const cJSON *obj, const char *base,
                   const char *key, size_t minlen, size_t maxlen,
                   const char **out) {
    const cJSON *v = item(obj, key);
    char field[FIELD_MAX];
    if (v == NULL || p->rc != 0) {
        return p->rc;
    }
    sub(field, sizeof field, base, key);
    return str_value(p, field, v, minlen, maxlen, out);
}

/* Like get_str, but stores a copy in *out (replacing a previous copy). */
static void get_str_dup(parser *p, const cJSON *obj, const char *base,
                        const char *key, size_t maxlen, char **out) {
    const char *s = NULL;
    if (get_str(p, obj, base, key, 1, maxlen, &s) == 0 && s != NULL) {
        char *d = dup_or_oom(p, s);
        if (d != NULL) {
            free(*out);
            *out = d;
        }
    }
}

/* One of `names` (n of them); *out is its index. */
static void get_enum(parser *p, const cJSON *obj, const char *base,
                     const char *key, const char *const *names, size_t n,
                     int *out) {
    const cJSON *v = item(obj, key);
    char field[FIELD_MAX], what[160] = "one of";
    if (v == NULL || p->rc != 0) {
        return;
    }
    if (cJSON_IsString(v) && v->valuestring != NULL) {
        for (size_t i = 0; i < n; i++) {
            if (strcmp(v->valuestring, names[i]) == 0) {
                *out = (int)i;
                return;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        size_t used = strlen(what);
        snprintf(what + used, sizeof what - used, "%s\"%s\"", i ? ", " : " ",
                 names[i]);
    }
    sub(field, sizeof field, base, key);
    fail_got(p, field, v, what);
}

/* ---- sections ------------------------------------------------------------ */

static int add_url(parser *p, warren_config *cfg, const char *field,
                   const char *url) {
    char why[160], shown[SHOW_MAX * 2];
    int rc = warren__url_check(url, why, sizeof why);
    if (rc == WARREN_ERR_NOMEM) {
        return oom(p);
    }
    if (rc != 0) {
        show_text(url, shown, sizeof shown);
        return fail(p, field,
                    "expected an amqp:// or amqps:// URL, got \"%s\" (%s)",
                    shown, why);
    }
    char *d = dup_or_oom(p, url);
    if (d == NULL) {
        return p->rc;
    }
    cfg->broker.urls[cfg->broker.n_urls++] = d;
    if (warren__url_has_password(url)) {
        p->file_has_password = 1;
    }
    return 0;
}

static void parse_tls(parser *p, const cJSON *tls, warren_config *cfg) {
    static const char *const keys[] = {"ca_cert", "client_cert", "client_key",
                                       "verify_peer", "verify_hostname"};
    const char *base = "broker.tls";
    if (tls == NULL || check_keys(p, tls, base, keys, 5) != 0) {
        return;
    }
    get_str_dup(p, tls, base, "ca_cert", PATH_STR_MAX, &cfg->broker.ca_cert);
    get_str_dup(p, tls, base, "client_cert", PATH_STR_MAX,
                &cfg->broker.client_cert);
    get_str_dup(p, tls, base, "client_key", PATH_STR_MAX,
                &cfg->broker.client_key);
    get_bool(p, tls, base, "verify_peer", &cfg->broker.verify_peer);
    get_bool(p, tls, base, "verify_hostname", &cfg->broker.verify_hostname);
    if (p->rc == 0 &&
        (cfg->broker.client_cert == NULL) != (cfg->broker.client_key == NULL)) {
        /* rabbitmq-c loads the certificate and its key together. */
        if (cfg->broker.client_cert == NULL) {
            fail(p, "broker.tls.client_cert",
                 "expected a certificate file to go with client_key, got "
                 "none");
        } else {
            fail(p, "broker.tls.client_key",
                 "expected a key file to go with client_cert, got none");
        }
    }
}

/* WARREN_BROKER_PASSWORD: the password of every broker URL that names a
 * user but no password ("amqps://orders@mq1/prod"), so that a cluster's
 * URLs can sit in the config file without a secret. Percent-encoded into
 * the URL (amqp_parse_url decodes it); URLs without a user keep rabbitmq-c's
 * default (guest) and URLs with a password keep theirs. */
static void add_broker_password(parser *p, warren_config *cfg) {
    const char *pw = getenv("WARREN_BROKER_PASSWORD");
    static const char hex[] = "0123456789ABCDEF";
    char enc[3 * 256 + 1];
    size_t e = 0, n;

    if (p->rc != 0 || pw == NULL || pw[0] == '\0') {
        return;
    }
    n = strnlen(pw, 257);
    if (n > 256) {
        fail(p, "WARREN_BROKER_PASSWORD",
             "expected at most 256 bytes, got more");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)pw[i];
        if (ch < 0x20 || ch == 0x7f) {
            fail(p, "WARREN_BROKER_PASSWORD",
                 "expected a password without control characters, got one "
                 "at byte %zu",
                 i + 1);
            return;
        }
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
            (ch >= '0' && ch <= '9') || strchr("-._~", ch) != NULL) {
            enc[e++] = (char)ch;
        } else {
            enc[e++] = '%';
            enc[e++] = hex[ch >> 4];
            enc[e++] = hex[ch & 15];
        }
    }
    enc[e] = '\0';
    for (int i = 0; i < cfg->broker.n_urls && p->rc == 0; i++) {
        const char *url = cfg->broker.urls[i];
        const char *auth = url != NULL ? strstr(url, "://") : NULL;
        const char *end, *at = NULL;
        char why[160];
        if (auth == NULL) {
            continue;
        }
        auth += 3;
        end = auth + strcspn(auth, "/?#");
        for (const char *q = auth; q < end; q++) {
            if (*q == '@') {
                at = q;
            }
        }
        if (at == NULL || at == auth ||
            memchr(auth, ':', (size_t)(at - auth))) {
            continue; /* no user, or a password of its own */
        }
        size_t len = strlen(url) + 1 + e + 1;
        char *with = malloc(len);
        if (with == NULL) {
            oom(p);
            return;
        }
        snprintf(with, len, "%.*s:%s%s", (int)(at - url), url, enc, at);
        int rc = warren__url_check(with, why, sizeof why);
        if (rc != 0) {
            free(with);
            if (rc == WARREN_ERR_NOMEM) {
                oom(p);
            } else {
                fail(p, "WARREN_BROKER_PASSWORD",
                     "expected a password that makes a valid URL of "
                     "broker.urls[%d], got one that does not (%s)",
                     i, why);
            }
            return;
        }
        free(cfg->broker.urls[i]);
        cfg->broker.urls[i] = with;
    }
}

static void parse_broker(parser *p, const cJSON *root, warren_config *cfg) {
    static const char *const keys[] = {
        "url", "urls", "heartbeat_s", "connect_timeout_s", "confirm_timeout_ms",
        "tls"};
    const cJSON *b = get_obj(p, root, "", "broker");
    const cJSON *url = item(b, "url"), *urls = item(b, "urls");
    const char *env = getenv("WARREN_URL");

    cfg->broker.urls = calloc(MAX_URLS, sizeof *cfg->broker.urls);
    if (cfg->broker.urls == NULL) {
        oom(p);
        return;
    }
    if (b != NULL && check_keys(p, b, "broker", keys, 6) == 0) {
        get_i(p, b, "broker", "heartbeat_s", 0, 3600, &cfg->broker.heartbeat_s);
        get_i(p, b, "broker", "confirm_timeout_ms", 100, 3600000,
              &cfg->broker.confirm_timeout_ms);
        get_num(p, b, "broker", "connect_timeout_s", 0.1, 300,
                &cfg->broker.connect_timeout_s);
        parse_tls(p, get_obj(p, b, "broker", "tls"), cfg);
        if (url != NULL && urls != NULL && p->rc == 0) {
            fail(p, "broker.urls",
                 "expected either broker.url or broker.urls, got both");
        }
        if (url != NULL && p->rc == 0) {
            const char *s;
            if (str_value(p, "broker.url", url, 1, WARREN__URL_MAX, &s) == 0) {
                add_url(p, cfg, "broker.url", s);
            }
        }
        if (urls != NULL && p->rc == 0) {
            char what[64];
            int n = cJSON_IsArray(urls) ? cJSON_GetArraySize(urls) : -1;
            snprintf(what, sizeof what, "an array of 1 to %d URL strings",
                     MAX_URLS);
            if (n > MAX_URLS) {
                fail(p, "broker.urls", "expected %s, got %d entries", what, n);
            } else if (n < 1) {
                fail_got(p, "broker.urls", urls, what);
            }
            int i = 0;
            for (const cJSON *u = urls->child; u != NULL && p->rc == 0;
                 u = u->next, i++) {
                char field[FIELD_MAX];
                const char *s;
                snprintf(field, sizeof field, "broker.urls[%d]", i);
                if (str_value(p, field, u, 1, WARREN__URL_MAX, &s) == 0) {
                    add_url(p, cfg, field, s);
                }
            }
        }
    }
    if (p->rc != 0) {
        return;
    }
    /* WARREN_URL keeps credentials off argv and out of the file; an empty
     * value counts as unset, as most tools treat it. */
    if (env != NULL && env[0] != '\0') {
        int had_file_password = p->file_has_password;
        char *keep = cfg->broker.n_urls > 0 ? cfg->broker.urls[0] : NULL;
        int n = cfg->broker.n_urls;
        cfg->broker.n_urls = 0;
        if (add_url(p, cfg, "WARREN_URL", env) != 0) {
            cfg->broker.urls[0] = keep;
            cfg->broker.n_urls = n;
            return;
        }
        free(keep);
        cfg->broker.n_urls = n > 0 ? n : 1;
        p->file_has_password = had_file_password;
    } else if (cfg->broker.n_urls == 0) {
        int had_file_password = p->file_has_password;
        add_url(p, cfg, "broker.url", DEFAULT_URL);
        p->file_has_password = had_file_password;
    }
    add_broker_password(p, cfg);
}

static void parse_store(parser *p, const cJSON *root, warren_config *cfg) {
    static const char *const keys[] = {"path",        "synchronous",
                                       "retention_s", "busy_timeout_ms",
                                       "lease_s",     "url"};
    static const char *const sync[] = {"full", "normal"};
    const cJSON *s = get_obj(p, root, "", "store");
    int mode = (int)cfg->store.synchronous;
    if (s == NULL || check_keys(p, s, "store", keys, 6) != 0) {
        return;
    }
    get_str_dup(p, s, "store", "path", PATH_STR_MAX, &cfg->store.path);
    get_str_dup(p, s, "store", "url", PATH_STR_MAX, &cfg->store.url);
    const char *url = cfg->store.url;
    if (p->rc == 0 && url != NULL) {
        /* path means SQLite, url PostgreSQL: one store, not a guess. */
        if (cfg->store.path != NULL) {
            fail(p, "store.url",
                 "store.path and store.url both given: path is a SQLite "
                 "file, url a PostgreSQL database; keep one");
        } else if (strncmp(url, "postgresql://", 13) != 0 &&
                   strncmp(url, "postgres://", 11) != 0) {
            fail(p, "store.url",
                 "expected a postgresql://user@host:port/database URL");
        } else if (warren__url_has_password(url) ||
                   strstr(url, "password=") != NULL) {
            fail(p, "store.url",
                 "a password in the URL is not allowed: set PGPASSWORD, "
                 "WARREN_STORE_PASSWORD or ~/.pgpass instead");
        }
    }
    get_enum(p, s, "store", "synchronous", sync, 2, &mode);
    cfg->store.synchronous = (warren__sync_mode)mode;
    get_u32(p, s, "store", "retention_s", 0, UINT32_MAX,
            &cfg->store.retention_s);
    get_u32(p, s, "store", "busy_timeout_ms", 0, 600000,
            &cfg->store.busy_timeout_ms);
    get_u32(p, s, "store", "lease_s", 1, 86400, &cfg->store.lease_s);
}

static void parse_metrics(parser *p, const cJSON *root, warren_config *cfg) {
    static const char *const keys[] = {"listen"};
    const cJSON *m = get_obj(p, root, "", "metrics");
    const char *s = NULL;
    if (m == NULL || check_keys(p, m, "metrics", keys, 1) != 0) {
        return;
    }
    if (get_str(p, m, "metrics", "listen", 3, 255, &s) != 0 || s == NULL) {
        return;
    }
    /* HOST:PORT, where HOST may be a bracketed IPv6 address. */
    const char *colon = strrchr(s, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    int ok = colon != NULL && colon != s && colon[1] >= '0' &&
             colon[1] <= '9' && end != NULL && *end == '\0' && port >= 1 &&
             port <= 65535 && strchr(s, ' ') == NULL;
    if (ok && s[0] == '[') {
        ok = colon[-1] == ']' && colon - s > 2;
    } else if (ok) {
        ok = memchr(s, ':', (size_t)(colon - s)) == NULL;
    }
    if (!ok) {
        fail_got(p, "metrics.listen", item(m, "listen"),
                 "\"HOST:PORT\" with a port from 1 to 65535");
        return;
    }
    cfg->metrics_listen = dup_or_oom(p, s);
}

/* ---- consumers ----------------------------------------------------------- */

/* Structural UTF-8 check (no overlongs or surrogates accepted); queue names
 * are AMQP short strings the broker requires to be valid UTF-8. */
static int valid_utf8(const unsigned char *s) {
    while (*s) {
        int n;
        uint32_t cp;
        if (*s < 0x80) {
            s++;
            continue;
        } else if ((*s & 0xe0) == 0xc0) {
            n = 1;
            cp = *s & 0x1f;
        } else if ((*s & 0xf0) == 0xe0) {
            n = 2;
            cp = *s & 0x0f;
        } else if ((*s & 0xf8) == 0xf0) {
            n = 3;
            cp = *s & 0x07;
        } else {
            return 0;
        }
        for (int i = 1; i <= n; i++) {
            if ((s[i] & 0xc0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (s[i] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) ||
            (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff)) {
            return 0;
        }
        s += n + 1;
    }
    return 1;
}

/* A queue name we can route to: no wildcards (topic bindings of the retry
 * cascade use the name), no whitespace, valid UTF-8, and not "amq." which
 * the broker reserves. */
static int queue_value(parser *p, const char *field, const cJSON *v,
                       size_t maxlen, const char **out) {
    const char *s = NULL;
    if (str_value(p, field, v, 1, maxlen, &s) != 0) {
        return p->rc;
    }
    if (strpbrk(s, "*# \t") != NULL) {
        return fail_got(p, field, v,
                        "a queue name without '*', '#' or whitespace");
    }
    if (!valid_utf8((const unsigned char *)s)) {
        return fail_got(p, field, v, "a queue name in valid UTF-8");
    }
    if (strncmp(s, "amq.", 4) == 0) {
        return fail_got(p, field, v,
                        "a queue name not starting with \"amq.\" (reserved "
                        "by the broker)");
    }
    *out = s;
    return 0;
}

static void parse_message_id(parser *p, const cJSON *o, const char *base,
                             warren__consumer_cfg *c) {
    const cJSON *v = item(o, "message_id");
    const char *s = NULL;
    char field[FIELD_MAX];
    static const char what[] =
        "\"property\", \"sha256\", \"header:NAME\" or \"json:PATH\"";
    if (v == NULL || p->rc != 0) {
        return;
    }
    sub(field, sizeof field, base, "message_id");
    if (str_value(p, field, v, 1, ID_ARG_MAX + 7, &s) != 0) {
        return;
    }
    if (strcmp(s, "property") == 0) {
        c->id_source = WARREN__ID_PROPERTY;
    } else if (strcmp(s, "sha256") == 0) {
        c->id_source = WARREN__ID_SHA256;
    } else if (strncmp(s, "header:", 7) == 0 && s[7] != '\0') {
        c->id_source = WARREN__ID_HEADER;
        c->id_arg = dup_or_oom(p, s + 7);
    } else if (strncmp(s, "json:", 5) == 0 && s[5] != '\0') {
        /* A dotted path: no empty segments ("a..b", ".a", "a."). */
        const char *path = s + 5;
        size_t n = strlen(path);
        if (path[0] == '.' || path[n - 1] == '.' || strstr(path, "..")) {
            fail_got(p, field, v,
                     "\"json:PATH\" with a dotted PATH like \"order.id\"");
            return;
        }
        c->id_source = WARREN__ID_JSON;
        c->id_arg = dup_or_oom(p, path);
    } else {
        fail_got(p, field, v, what);
    }
}

static void parse_backoff(parser *p, const cJSON *o, const char *base,
                          warren__backoff_cfg *b) {
    static const char *const kinds[] = {"fixed", "exponential", "list"};
    static const char *const k_fixed[] = {"kind", "delay_ms"};
    static const char *const k_exp[] = {"kind", "initial_ms", "multiplier",
                                        "max_ms"};
    static const char *const k_list[] = {"kind", "delays_ms"};
    char bbase[FIELD_MAX], field[FIELD_MAX];
    const cJSON *bo = get_obj(p, o, base, "backoff");
    int kind = -1;

    if (bo == NULL) {
        return;
    }
    sub(bbase, sizeof bbase, base, "backoff");
    sub(field, sizeof field, bbase, "kind");
    if (item(bo, "kind") == NULL) {
        fail(p, field,
             "expected \"fixed\", \"exponential\" or \"list\", got nothing "
             "(kind is required in a backoff)");
        return;
    }
    get_enum(p, bo, bbase, "kind", kinds, 3, &kind);
    if (p->rc != 0) {
        return;
    }
    b->kind = (warren__backoff_kind)kind;
    if (b->kind == WARREN__BACKOFF_FIXED) {
        if (check_keys(p, bo, bbase, k_fixed, 2) != 0) {
            return;
        }
        if (item(bo, "delay_ms") == NULL) {
            sub(field, sizeof field, bbase, "delay_ms");
            fail(p, field,
                 "expected an integer from 0 to %d, got nothing (required "
                 "for kind \"fixed\")",
                 DELAY_MAX);
            return;
        }
        get_u32(p, bo, bbase, "delay_ms", 0, DELAY_MAX, &b->delay_ms);
        b->max_ms = DELAY_MAX;
    } else if (b->kind == WARREN__BACKOFF_EXPONENTIAL) {
        if (check_keys(p, bo, bbase, k_exp, 4) != 0) {
            return;
        }
        get_u32(p, bo, bbase, "initial_ms", 0, DELAY_MAX, &b->initial_ms);
        get_num(p, bo, bbase, "multiplier", 1, 1000, &b->multiplier);
        get_u32(p, bo, bbase, "max_ms", 0, DELAY_MAX, &b->max_ms);
        if (p->rc == 0 && b->max_ms < b->initial_ms) {
            sub(field, sizeof field, bbase, "max_ms");
            fail(p, field,
                 "expected an integer from initial_ms (%u) to %d, got %u",
                 (unsigned)b->initial_ms, DELAY_MAX, (unsigned)b->max_ms);
        }
    } else {
        const cJSON *arr = item(bo, "delays_ms");
        char what[64];
        int n, i = 0;
        if (check_keys(p, bo, bbase, k_list, 2) != 0) {
            return;
        }
        sub(field, sizeof field, bbase, "delays_ms");
        snprintf(what, sizeof what, "an array of 1 to 100 integers");
        if (arr == NULL) {
            fail(p, field,
                 "expected %s, got nothing (required for kind "
                 "\"list\")",
                 what);
            return;
        }
        n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
        if (n > 100) {
            fail(p, field, "expected %s, got %d entries", what, n);
            return;
        }
        if (n < 1) {
            fail_got(p, field, arr, what);
            return;
        }
        b->delays_ms = calloc((size_t)n, sizeof *b->delays_ms);
        if (b->delays_ms == NULL) {
            oom(p);
            return;
        }
        for (const cJSON *d = arr->child; d != NULL && i < n;
             d = d->next, i++) {
            char efield[FIELD_MAX + 16];
            int64_t v = 0;
            snprintf(efield, sizeof efield, "%s[%d]", field, i);
            if (int_value(p, efield, d, 0, DELAY_MAX, &v) != 0) {
                return;
            }
            b->delays_ms[i] = (uint32_t)v;
        }
        b->n_delays = (size_t)i;
        /* The list caps itself; max_ms must not cut it short. */
        b->max_ms = DELAY_MAX;
    }
}

/* retry.budget: {max_tokens, token_ratio, when_exhausted}; present means
 * on, with gRPC's example figures as defaults. */
static void parse_budget(parser *p, const cJSON *o, const char *base,
                         warren__budget_cfg *b) {
    static const char *const keys[] = {"max_tokens", "token_ratio",
                                       "when_exhausted"};
    static const char *const whens[] = {"dead", "pause"};
    char bbase[FIELD_MAX];
    const cJSON *bo = get_obj(p, o, base, "budget");
    int when = (int)b->when_exhausted;
    if (bo == NULL) {
        return;
    }
    sub(bbase, sizeof bbase, base, "budget");
    if (check_keys(p, bo, bbase, keys, 3) != 0) {
        return;
    }
    b->max_tokens = 10;
    b->token_ratio = 0.1;
    get_num(p, bo, bbase, "max_tokens", 1, 1000, &b->max_tokens);
    get_num(p, bo, bbase, "token_ratio", 0.001, 1, &b->token_ratio);
    get_enum(p, bo, bbase, "when_exhausted", whens, 2, &when);
    b->when_exhausted = (warren__budget_exhausted)when;
}

static void parse_retry(parser *p, const cJSON *o, const char *base,
                        warren__consumer_cfg *c) {
    static const char *const keys[] = {
        "max_attempts", "mode",      "backoff", "jitter",
        "jitter_style", "max_age_s", "budget"};
    static const char *const styles[] = {"proportional", "full"};
    static const char *const modes[] = {"republish", "nack"};
    char rbase[FIELD_MAX];
    const cJSON *r = get_obj(p, o, base, "retry");
    int mode = (int)c->retry.mode;
    int style = (int)c->retry.backoff.jitter_style;
    if (r == NULL) {
        return;
    }
    sub(rbase, sizeof rbase, base, "retry");
    if (check_keys(p, r, rbase, keys, sizeof keys / sizeof keys[0]) != 0) {
        return;
    }
    get_i(p, r, rbase, "max_attempts", 1, 1000, &c->retry.max_attempts);
    get_enum(p, r, rbase, "mode", modes, 2, &mode);
    c->retry.mode = (warren__retry_mode)mode;
    parse_backoff(p, r, rbase, &c->retry.backoff);
    get_num(p, r, rbase, "jitter", 0, 1, &c->retry.backoff.jitter);
    get_enum(p, r, rbase, "jitter_style", styles, 2, &style);
    c->retry.backoff.jitter_style = (warren__jitter_style)style;
    get_u32(p, r, rbase, "max_age_s", 0, UINT32_MAX, &c->retry.max_age_s);
    parse_budget(p, r, rbase, &c->retry.budget);
    if (p->rc == 0 && c->retry.mode == WARREN__RETRY_NACK &&
        c->retry.backoff.kind != WARREN__BACKOFF_FIXED) {
        char field[FIELD_MAX];
        sub(field, sizeof field, rbase, "mode");
        fail(p, field,
             "expected \"republish\" with backoff kind \"%s\", got \"nack\" "
             "(nack mode delays through one queue TTL, so it needs "
             "\"backoff\": {\"kind\": \"fixed\", \"delay_ms\": N})",
             c->retry.backoff.kind == WARREN__BACKOFF_LIST ? "list"
                                                           : "exponential");
    }
}

/* breaker.fallback: any handler kind, checked like "handler". */
static void parse_fallback(parser *p, const cJSON *br, const char *bbase,
                           warren__breaker_cfg *b) {
    const cJSON *v = item(br, "fallback");
    const char *s = NULL;
    char field[FIELD_MAX];
    if (v == NULL || p->rc != 0) {
        return;
    }
    sub(field, sizeof field, bbase, "fallback");
    if (str_value(p, field, v, 1, PATH_STR_MAX, &s) != 0) {
        return;
    }
    if (!((strncmp(s, "exec:", 5) == 0 && s[5] != '\0') ||
          (strncmp(s, "plugin:", 7) == 0 && s[7] != '\0') ||
          (strncmp(s, "builtin:", 8) == 0 && s[8] != '\0'))) {
        fail_got(p, field, v,
                 "a handler starting with \"exec:\", \"plugin:\" or "
                 "\"builtin:\"");
        return;
    }
    b->fallback = dup_or_oom(p, s);
}

static void parse_breaker(parser *p, const cJSON *o, const char *base,
                          warren__breaker_cfg *b) {
    static const char *const keys[] = {
        "consecutive_failures", "failure_ratio", "window_s", "open_s",
        "half_open_max",        "fallback"};
    char bbase[FIELD_MAX];
    const cJSON *br = get_obj(p, o, base, "breaker");
    if (br == NULL) {
        return;
    }
    sub(bbase, sizeof bbase, base, "breaker");
    if (check_keys(p, br, bbase, keys, sizeof keys / sizeof keys[0]) != 0) {
        return;
    }
    parse_fallback(p, br, bbase, b);
    get_u32(p, br, bbase, "consecutive_failures", 0, 1000000,
            &b->consecutive_failures);
    get_num(p, br, bbase, "failure_ratio", 0, 1, &b->failure_ratio);
    get_u32(p, br, bbase, "window_s", 1, 86400, &b->window_s);
    get_u32(p, br, bbase, "open_s", 1, 86400, &b->open_s);
    get_u32(p, br, bbase, "half_open_max", 1, 65535, &b->half_open_max);
}

static void consumer_defaults(warren__consumer_cfg *c) {
    c->queue_type = WARREN__QUEUE_CLASSIC;
    c->prefetch = 50;
    c->workers = 1;
    c->batch_max = -1; /* computed from prefetch */
    c->id_source = WARREN__ID_PROPERTY;
    c->on_missing_id = WARREN__MISSING_DEAD;
    c->dedup = true;
    c->max_deliveries = -1; /* computed from max_attempts */
    c->delivery_limit = -1; /* computed from max_deliveries */
    c->retry.max_attempts = 5;
    c->retry.mode = WARREN__RETRY_REPUBLISH;
    c->retry.backoff.kind = WARREN__BACKOFF_EXPONENTIAL;
    c->retry.backoff.initial_ms = 1000;
    c->retry.backoff.multiplier = 2.0;
    c->retry.backoff.max_ms = 300000;
    c->retry.backoff.jitter = 0.1;
    c->retry.max_age_s = 0;
    c->max_message_bytes = 16777216;
    c->timeout_s = 0;
    c->breaker.consecutive_failures = 0;
    c->breaker.failure_ratio = 0;
    c->breaker.window_s = 60;
    c->breaker.open_s = 30;
    c->breaker.half_open_max = 1;
    c->rate_limit_per_s = 0;
}

/* A quorum queue's x-delivery-limit. Before RabbitMQ 4.3 every return
 * counts against it: warren's own requeues (a busy store, a stop or
 * reload; a breaker pause holds its messages and returns none) as well as
 * crashes. So the
 * default leaves room for WARREN__REQUEUE_ALLOWANCE of those on top of
 * warren's own poison cap, and an explicit value must stay above that cap,
 * or the broker would drop a crashing message before warren can count it
 * and dead-letter it with its reason. */
static void parse_delivery_limit(parser *p, const cJSON *o, const char *base,
                                 warren__consumer_cfg *c) {
    char field[FIELD_MAX];
    const cJSON *v = item(o, "delivery_limit");
    get_i(p, o, base, "delivery_limit", 2, 1000000, &c->delivery_limit);
    if (p->rc != 0) {
        return;
    }
    if (v == NULL) {
        c->delivery_limit = c->max_deliveries + 2 + WARREN__REQUEUE_ALLOWANCE;
    } else if (c->delivery_limit <= c->max_deliveries + 1) {
        sub(field, sizeof field, base, "delivery_limit");
        fail_got(p, field, v,
                 "a number above max_deliveries + 1 (so the broker's limit "
                 "never fires before warren's own poison cap)");
    }
}

static void parse_consumer(parser *p, const cJSON *o, int idx,
                           warren__consumer_cfg *c) {
    static const char *const keys[] = {
        "queue",          "handler",           "queue_type",
        "prefetch",       "workers",           "batch_max",
        "message_id",     "on_missing_id",     "dedup",
        "max_deliveries", "delivery_limit",    "retry",
        "dead_letter",    "max_message_bytes", "timeout_s",
        "breaker",        "rate_limit_per_s"};
    static const char *const qtypes[] = {"classic", "quorum"};
    static const char *const missing[] = {"dead", "hash", "process"};
    char base[32], field[FIELD_MAX];
    const cJSON *v;
    const char *s = NULL;
    int64_t n;
    int e;

    consumer_defaults(c);
    snprintf(base, sizeof base, "consumers[%d]", idx);
    if (!cJSON_IsObject(o)) {
        fail_got(p, base, o, "an object");
        return;
    }
    if (check_keys(p, o, base, keys, sizeof keys / sizeof keys[0]) != 0) {
        return;
    }

    sub(field, sizeof field, base, "queue");
    if ((v = item(o, "queue")) == NULL) {
        fail(p, field, "expected a queue name, got nothing (required)");
        return;
    }
    if (queue_value(p, field, v, QUEUE_MAX, &s) != 0 ||
        (c->queue = dup_or_oom(p, s)) == NULL) {
        return;
    }

    sub(field, sizeof field, base, "handler");
    if ((v = item(o, "handler")) == NULL) {
        fail(p, field,
             "expected \"exec:...\", \"plugin:...\" or \"builtin:...\", got "
             "nothing (required)");
        return;
    }
    if (str_value(p, field, v, 1, PATH_STR_MAX, &s) != 0) {
        return;
    }
    if (!((strncmp(s, "exec:", 5) == 0 && s[5] != '\0') ||
          (strncmp(s, "plugin:", 7) == 0 && s[7] != '\0') ||
          (strncmp(s, "builtin:", 8) == 0 && s[8] != '\0'))) {
        fail_got(p, field, v,
                 "a handler starting with \"exec:\", \"plugin:\" or "
                 "\"builtin:\"");
        return;
    }
    if ((c->handler = dup_or_oom(p, s)) == NULL) {
        return;
    }

    e = (int)c->queue_type;
    get_enum(p, o, base, "queue_type", qtypes, 2, &e);
    c->queue_type = (warren__queue_type)e;
    n = c->prefetch;
    if (get_int(p, o, base, "prefetch", 1, 65535, &n) == 0) {
        c->prefetch = (uint16_t)n;
    }
    get_i(p, o, base, "workers", 1, 256, &c->workers);
    get_i(p, o, base, "batch_max", 1, c->prefetch, &c->batch_max);
    if (c->batch_max < 0) {
        c->batch_max = c->prefetch < 100 ? c->prefetch : 100;
    }
    parse_message_id(p, o, base, c);
    e = (int)c->on_missing_id;
    get_enum(p, o, base, "on_missing_id", missing, 3, &e);
    c->on_missing_id = (warren__missing_id)e;
    get_bool(p, o, base, "dedup", &c->dedup);
    parse_retry(p, o, base, c);
    get_i(p, o, base, "max_deliveries", 1, 10000, &c->max_deliveries);
    if (c->max_deliveries < 0) {
        c->max_deliveries = c->retry.max_attempts + 2;
    }
    parse_delivery_limit(p, o, base, c);

    const cJSON *dl = get_obj(p, o, base, "dead_letter");
    if (dl != NULL) {
        static const char *const dkeys[] = {"queue"};
        char dbase[FIELD_MAX];
        sub(dbase, sizeof dbase, base, "dead_letter");
        sub(field, sizeof field, dbase, "queue");
        if (check_keys(p, dl, dbase, dkeys, 1) == 0 &&
            (v = item(dl, "queue")) != NULL &&
            queue_value(p, field, v, DLQ_MAX, &s) == 0) {
            if (strcmp(s, c->queue) == 0) {
                fail_got(p, field, v,
                         "a queue other than the consumer's own queue");
            } else {
                c->dlq_queue = dup_or_oom(p, s);
            }
        }
    }
    if (p->rc == 0 && c->dlq_queue == NULL) {
        size_t len = strlen(c->queue) + 5;
        c->dlq_queue = malloc(len);
        if (c->dlq_queue == NULL) {
            oom(p);
            return;
        }
        snprintf(c->dlq_queue, len, "%s.dlq", c->queue);
    }

    n = (int64_t)c->max_message_bytes;
    if (get_int(p, o, base, "max_message_bytes", 1, 134217728, &n) == 0) {
        c->max_message_bytes = (uint64_t)n;
    }
    get_num(p, o, base, "timeout_s", 0, 86400, &c->timeout_s);
    parse_breaker(p, o, base, &c->breaker);
    get_num(p, o, base, "rate_limit_per_s", 0, 1e6, &c->rate_limit_per_s);
}

static void parse_consumers(parser *p, const cJSON *root, warren_config *cfg) {
    const cJSON *arr = item(root, "consumers");
    char what[64];
    int n, i = 0;

    snprintf(what, sizeof what, "an array of 1 to %d consumer objects",
             MAX_CONSUMERS);
    if (p->rc != 0) {
        return;
    }
    if (arr == NULL) {
        fail(p, "consumers", "expected %s, got nothing (required)", what);
        return;
    }
    n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
    if (n > MAX_CONSUMERS) {
        fail(p, "consumers", "expected %s, got %d entries", what, n);
        return;
    }
    if (n < 1) {
        fail_got(p, "consumers", arr, what);
        return;
    }
    cfg->consumers = calloc((size_t)n, sizeof *cfg->consumers);
    if (cfg->consumers == NULL) {
        oom(p);
        return;
    }
    cfg->n_consumers = n;
    for (const cJSON *o = arr->child; o != NULL && i < n && p->rc == 0;
         o = o->next, i++) {
        parse_consumer(p, o, i, &cfg->consumers[i]);
    }
    /* Two workers on one queue under two configs would fight over one
     * store key space and one retry topology; one DLQ that is also a work
     * queue would feed dead letters back into a handler forever. */
    for (i = 0; i < n && p->rc == 0; i++) {
        for (int j = 0; j < n && p->rc == 0; j++) {
            char field[FIELD_MAX];
            if (cfg->consumers[i].queue == NULL ||
                cfg->consumers[j].queue == NULL) {
                continue; /* only after out of memory, already reported */
            }
            if (j < i &&
                strcmp(cfg->consumers[i].queue, cfg->consumers[j].queue) == 0) {
                snprintf(field, sizeof field, "consumers[%d].queue", i);
                fail(p, field,
                     "expected a queue name unique across consumers, got "
                     "\"%s\" again (also consumers[%d].queue)",
                     cfg->consumers[i].queue, j);
            } else if (cfg->consumers[i].dlq_queue &&
                       strcmp(cfg->consumers[i].dlq_queue,
                              cfg->consumers[j].queue) == 0) {
                snprintf(field, sizeof field, "consumers[%d].dead_letter.queue",
                         i);
                fail(p, field,
                     "expected a queue that no consumer reads, got \"%s\" "
                     "(consumers[%d].queue)",
                     cfg->consumers[i].dlq_queue, j);
            }
        }
    }
}

/* ---- entry points -------------------------------------------------------- */

static void set_defaults(warren_config *cfg) {
    cfg->broker.heartbeat_s = 30;
    cfg->broker.connect_timeout_s = 10;
    cfg->broker.confirm_timeout_ms = 30000;
    cfg->broker.verify_peer = true;
    cfg->broker.verify_hostname = true;
    cfg->store.synchronous = WARREN__SYNC_FULL;
    cfg->store.retention_s = 604800;
    cfg->store.busy_timeout_ms = 5000;
    cfg->store.lease_s = 300;
    cfg->shutdown_grace_s = 30;
}

/* Writes "NAME:LINE:COL: invalid JSON: ..." for a parse error at `at`. */
static void json_error(parser *p, const char *json, size_t len, const char *at,
                       const char *why) {
    size_t line = 1, col = 1, off;
    char near[SHOW_MAX * 2];

    if (at == NULL || at < json || at > json + len) {
        at = json + len;
    }
    off = (size_t)(at - json);
    for (size_t i = 0; i < off; i++) {
        if (json[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    p->rc = WARREN_ERR_CONFIG;
    if (p->err == NULL || p->errlen == 0) {
        return;
    }
    if (why != NULL) {
        snprintf(p->err, p->errlen, "%s:%zu:%zu: invalid JSON: %s", p->name,
                 line, col, why);
    } else if (off >= len) {
        snprintf(p->err, p->errlen,
                 "%s:%zu:%zu: invalid JSON: unexpected end of input", p->name,
                 line, col);
    } else {
        /* Sized for show_text(), which may read up to SHOW_MAX bytes
         * (an optimised build cannot prove the 16-byte cut stops it). */
        char snippet[SHOW_MAX + 1];
        size_t n = len - off < 16 ? len - off : 16;
        memcpy(snippet, at, n);
        snippet[n] = '\0';
        show_text(snippet, near, sizeof near);
        snprintf(p->err, p->errlen, "%s:%zu:%zu: invalid JSON: near \"%s\"",
                 p->name, line, col, near);
    }
    one_line(p->err);
}

/* Parses `len` bytes at `json` (NUL-terminated at json[len]). */
static int parse_buffer(parser *p, const char *json, size_t len,
                        warren_config **out) {
    static const char *const keys[] = {"broker", "store", "shutdown_grace_s",
                                       "metrics", "consumers"};
    const char *end = NULL;
    const char *nul = memchr(json, '\0', len);
    warren_config *cfg;
    cJSON *root;

    if (nul != NULL) {
        json_error(p, json, len, nul, "NUL byte");
        return p->rc;
    }
    root = cJSON_ParseWithOpts(json, &end, 1);
    if (root == NULL) {
        json_error(p, json, len, end, NULL);
        return p->rc;
    }
    cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL) {
        cJSON_Delete(root);
        return oom(p);
    }
    set_defaults(cfg);
    cfg->path = dup_or_oom(p, p->name);
    if (!cJSON_IsObject(root)) {
        fail_got(p, "(top level)", root, "an object");
    } else if (check_keys(p, root, "", keys, 5) == 0) {
        parse_broker(p, root, cfg);
        parse_store(p, root, cfg);
        get_num(p, root, "", "shutdown_grace_s", 0, 3600,
                &cfg->shutdown_grace_s);
        parse_metrics(p, root, cfg);
        parse_consumers(p, root, cfg);
    }
    if (p->rc == 0 && cfg->store.path == NULL && cfg->store.url == NULL) {
        cfg->store.path = dup_or_oom(p, "warren.db");
    }
    cJSON_Delete(root);
    if (p->rc != 0) {
        warren_config_free(cfg);
        return p->rc;
    }
    *out = cfg;
    return 0;
}

static void start(parser *p, const char *name, warren_config **out, char *err,
                  size_t errlen) {
    memset(p, 0, sizeof *p);
    p->name = name ? name : "(config)";
    p->err = err;
    p->errlen = err ? errlen : 0;
    if (p->errlen > 0) {
        err[0] = '\0';
    }
    if (out != NULL) {
        *out = NULL;
    }
}

int warren_config_parse(const char *json, const char *name, warren_config **out,
                        char *err, size_t errlen) {
    parser p;
    size_t len;

    start(&p, name, out, err, errlen);
    if (json == NULL || out == NULL) {
        fail(&p, "(arguments)", "expected a JSON text and an output pointer");
        return WARREN_ERR_INVAL;
    }
    len = strnlen(json, CONFIG_MAX_BYTES + 1);
    if (len > CONFIG_MAX_BYTES) {
        fail(&p, "(top level)", "expected at most 1 MiB of JSON, got more");
        return p.rc;
    }
    return parse_buffer(&p, json, len, out);
}

int warren_config_load(const char *path, warren_config **out, char *err,
                       size_t errlen) {
    parser p;
    struct stat sb = {0};
    char *buf;
    size_t len = 0;
    FILE *f;
    int rc, e = 0;

    start(&p, path, out, err, errlen);
    if (path == NULL || out == NULL) {
        fail(&p, "(arguments)", "expected a file name and an output pointer");
        return WARREN_ERR_INVAL;
    }
    f = fopen(path, "r");
    if (f == NULL) {
        e = errno;
        if (p.errlen > 0) {
            snprintf(err, errlen, "%s: cannot read: %s", path, strerror(e));
            one_line(err);
        }
        return WARREN_ERR_CONFIG;
    }
    /* One byte more than the limit tells "exactly 1 MiB" from "larger". */
    buf = malloc(CONFIG_MAX_BYTES + 2);
    if (buf == NULL) {
        fclose(f);
        return oom(&p);
    }
    while (len <= CONFIG_MAX_BYTES) {
        size_t got = fread(buf + len, 1, CONFIG_MAX_BYTES + 1 - len, f);
        if (got == 0) {
            break;
        }
        len += got;
    }
    if (ferror(f)) {
        e = errno ? errno : EIO;
    }
    if (e == 0 && fstat(fileno(f), &sb) != 0) {
        memset(&sb, 0, sizeof sb);
    }
    fclose(f);
    if (e != 0) {
        free(buf);
        if (p.errlen > 0) {
            snprintf(err, errlen, "%s: cannot read: %s", path, strerror(e));
            one_line(err);
        }
        return WARREN_ERR_CONFIG;
    }
    if (len > CONFIG_MAX_BYTES) {
        free(buf);
        if (p.errlen > 0) {
            snprintf(err, errlen,
                     "%s: cannot read: larger than 1 MiB (a config file "
                     "never needs to be)",
                     path);
            one_line(err);
        }
        return WARREN_ERR_CONFIG;
    }
    buf[len] = '\0';
    rc = parse_buffer(&p, buf, len, out);
    free(buf);
    if (rc == 0 && p.file_has_password && (sb.st_mode & 077) != 0) {
        warren__log(WARREN_LOG_WARN, NULL,
                    "%s holds a broker password but is readable by group or "
                    "others (mode %03o); chmod 600 it or pass the URL in "
                    "WARREN_URL",
                    path, (unsigned)(sb.st_mode & 0777));
    }
    return rc;
}

void warren_config_free(warren_config *cfg) {
    if (cfg == NULL) {
        return;
    }
    free(cfg->path);
    if (cfg->broker.urls != NULL) {
        for (int i = 0; i < cfg->broker.n_urls; i++) {
            free(cfg->broker.urls[i]);
        }
        free(cfg->broker.urls);
    }
    free(cfg->broker.ca_cert);
    free(cfg->broker.client_cert);
    free(cfg->broker.client_key);
    free(cfg->store.path);
    free(cfg->store.url);
    free(cfg->metrics_listen);
    for (int i = 0; cfg->consumers != NULL && i < cfg->n_consumers; i++) {
        warren__consumer_cfg *c = &cfg->consumers[i];
        free(c->queue);
        free(c->handler);
        free(c->id_arg);
        free(c->dlq_queue);
        free(c->retry.backoff.delays_ms);
        free(c->breaker.fallback);
    }
    free(cfg->consumers);
    free(cfg);
}

int warren_config_consumer_count(const warren_config *cfg) {
    return cfg ? cfg->n_consumers : 0;
}

const char *warren_config_consumer_queue(const warren_config *cfg, int i) {
    if (cfg == NULL || i < 0 || i >= cfg->n_consumers) {
        return NULL;
    }
    return cfg->consumers[i].queue;
}

/* ---- comparing configurations (SIGHUP: which workers to replace) ------- */

/* Every field of these structs is compared below; unit_test_config_equal
 * pins their sizes, so a field added without a comparison fails a test. */
static int str_eq(const char *a, const char *b) {
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static int backoff_eq(const warren__backoff_cfg *a,
                      const warren__backoff_cfg *b) {
    if (a->kind != b->kind || a->delay_ms != b->delay_ms ||
        a->initial_ms != b->initial_ms || a->multiplier != b->multiplier ||
        a->max_ms != b->max_ms || a->n_delays != b->n_delays ||
        a->jitter != b->jitter || a->jitter_style != b->jitter_style) {
        return 0;
    }
    for (size_t i = 0; i < a->n_delays; i++) {
        if (a->delays_ms[i] != b->delays_ms[i]) {
            return 0;
        }
    }
    return 1;
}

int warren__config_consumer_equal(const warren__consumer_cfg *a,
                                  const warren__consumer_cfg *b) {
    return str_eq(a->queue, b->queue) && str_eq(a->handler, b->handler) &&
           a->queue_type == b->queue_type && a->prefetch == b->prefetch &&
           a->workers == b->workers && a->batch_max == b->batch_max &&
           a->id_source == b->id_source && str_eq(a->id_arg, b->id_arg) &&
           a->on_missing_id == b->on_missing_id &&
           a->max_deliveries == b->max_deliveries &&
           a->delivery_limit == b->delivery_limit &&
           a->retry.max_attempts == b->retry.max_attempts &&
           a->retry.mode == b->retry.mode &&
           backoff_eq(&a->retry.backoff, &b->retry.backoff) &&
           a->retry.max_age_s == b->retry.max_age_s &&
           a->retry.budget.max_tokens == b->retry.budget.max_tokens &&
           a->retry.budget.token_ratio == b->retry.budget.token_ratio &&
           a->retry.budget.when_exhausted == b->retry.budget.when_exhausted &&
           str_eq(a->dlq_queue, b->dlq_queue) &&
           a->max_message_bytes == b->max_message_bytes &&
           a->timeout_s == b->timeout_s && a->dedup == b->dedup &&
           a->breaker.consecutive_failures == b->breaker.consecutive_failures &&
           a->breaker.failure_ratio == b->breaker.failure_ratio &&
           a->breaker.window_s == b->breaker.window_s &&
           a->breaker.open_s == b->breaker.open_s &&
           a->breaker.half_open_max == b->breaker.half_open_max &&
           str_eq(a->breaker.fallback, b->breaker.fallback) &&
           a->rate_limit_per_s == b->rate_limit_per_s;
}

int warren__config_worker_globals_equal(const warren_config *a,
                                        const warren_config *b) {
    if (a->broker.n_urls != b->broker.n_urls) {
        return 0;
    }
    for (int i = 0; i < a->broker.n_urls; i++) {
        if (!str_eq(a->broker.urls[i], b->broker.urls[i])) {
            return 0;
        }
    }
    return a->broker.heartbeat_s == b->broker.heartbeat_s &&
           a->broker.connect_timeout_s == b->broker.connect_timeout_s &&
           a->broker.confirm_timeout_ms == b->broker.confirm_timeout_ms &&
           str_eq(a->broker.ca_cert, b->broker.ca_cert) &&
           str_eq(a->broker.client_cert, b->broker.client_cert) &&
           str_eq(a->broker.client_key, b->broker.client_key) &&
           a->broker.verify_peer == b->broker.verify_peer &&
           a->broker.verify_hostname == b->broker.verify_hostname &&
           str_eq(a->store.path, b->store.path) &&
           str_eq(a->store.url, b->store.url) &&
           a->store.synchronous == b->store.synchronous &&
           a->store.retention_s == b->store.retention_s &&
           a->store.busy_timeout_ms == b->store.busy_timeout_ms &&
           a->store.lease_s == b->store.lease_s;
}

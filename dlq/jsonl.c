/*
 * jsonl.c - the export/import line format: one JSON object per message
 * with every AMQP property, every header with its wire type (nested tables
 * and arrays included, in their order) and the body, so that an export
 * then an import publishes the same bytes. Text that is valid UTF-8 is
 * written as a JSON string; anything else as {"base64": "..."}. 64-bit
 * integers are written as decimal strings because JSON numbers are doubles.
 */
#include "dlq.h"

#include "msgid.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- base64 ------------------------------------------------------------ */

int warren__base64_encode(const void *in, size_t len, char **out) {
    if (len > (size_t)INT32_MAX / 2) {
        return WARREN_ERR_INVAL;
    }
    char *s = malloc(4 * ((len + 2) / 3) + 1);
    if (s == NULL) {
        return WARREN_ERR_NOMEM;
    }
    EVP_EncodeBlock((unsigned char *)s, in, (int)len);
    *out = s;
    return 0;
}

int warren__base64_decode(const char *in, size_t len, uint8_t **out,
                          size_t *outlen) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (len % 4 != 0 || len > (size_t)INT32_MAX / 2) {
        return WARREN_ERR_INVAL;
    }
    size_t pad = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '=') {
            /* Padding only at the end, at most two. */
            if (i + 2 < len || (i + 1 < len && in[i + 1] != '=')) {
                return WARREN_ERR_INVAL;
            }
            pad++;
        } else if (in[i] == '\0' || strchr(alphabet, in[i]) == NULL) {
            return WARREN_ERR_INVAL;
        }
    }
    uint8_t *b = malloc(len / 4 * 3 + 1);
    if (b == NULL) {
        return WARREN_ERR_NOMEM;
    }
    int n = len ? EVP_DecodeBlock(b, (const unsigned char *)in, (int)len) : 0;
    if (n < 0 || (size_t)n < pad) {
        free(b);
        return WARREN_ERR_INVAL;
    }
    /* EVP_DecodeBlock counts padding as zero bytes. */
    *outlen = (size_t)n - pad;
    *out = b;
    return 0;
}

/* ---- encode ------------------------------------------------------------ */

/* Text as a string, anything else as {"base64": ...}. NULL on NOMEM. */
static cJSON *bytes_json(warren__bytes b) {
    if (warren__utf8_valid(b.bytes, b.len)) {
        char *s = malloc(b.len + 1);
        if (s == NULL) {
            return NULL;
        }
        if (b.len) {
            memcpy(s, b.bytes, b.len);
        }
        s[b.len] = '\0';
        cJSON *j = cJSON_CreateString(s);
        free(s);
        return j;
    }
    char *enc;
    if (warren__base64_encode(b.bytes, b.len, &enc) != 0) {
        return NULL;
    }
    cJSON *o = cJSON_CreateObject();
    if (o) {
        cJSON_AddStringToObject(o, "base64", enc);
    }
    free(enc);
    return o;
}

static cJSON *i64_json(int64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return cJSON_CreateString(buf);
}

static cJSON *u64_json(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return cJSON_CreateString(buf);
}

static cJSON *double_json(double v) {
    if (isnan(v)) {
        return cJSON_CreateString("nan");
    }
    if (isinf(v)) {
        return cJSON_CreateString(v > 0 ? "inf" : "-inf");
    }
    /* cJSON prints 15 digits when they compare "close enough", which
     * loses bits; 17 significant digits always read back exactly. */
    char buf[40];
    snprintf(buf, sizeof buf, "%.17g", v);
    return cJSON_CreateRaw(buf);
}

static cJSON *table_json(const warren__table *t);
static cJSON *array_json(const warren__array *a);

/* {"kind": K, "value": V} for one field value. */
static cJSON *value_json(const warren__field *v) {
    cJSON *o = cJSON_CreateObject();
    cJSON *val = NULL;
    const char *kind;
    if (o == NULL) {
        return NULL;
    }
    switch (v->kind) {
    case WARREN__FIELD_BOOLEAN:
        kind = "bool";
        val = cJSON_CreateBool(v->value.boolean);
        break;
    case WARREN__FIELD_I8:
        kind = "i8";
        val = cJSON_CreateNumber(v->value.i8);
        break;
    case WARREN__FIELD_U8:
        kind = "u8";
        val = cJSON_CreateNumber(v->value.u8);
        break;
    case WARREN__FIELD_I16:
        kind = "i16";
        val = cJSON_CreateNumber(v->value.i16);
        break;
    case WARREN__FIELD_U16:
        kind = "u16";
        val = cJSON_CreateNumber(v->value.u16);
        break;
    case WARREN__FIELD_I32:
        kind = "i32";
        val = cJSON_CreateNumber(v->value.i32);
        break;
    case WARREN__FIELD_U32:
        kind = "u32";
        val = cJSON_CreateNumber(v->value.u32);
        break;
    case WARREN__FIELD_I64:
        kind = "i64";
        val = i64_json(v->value.i64);
        break;
    case WARREN__FIELD_U64:
        kind = "u64";
        val = u64_json(v->value.u64);
        break;
    case WARREN__FIELD_TIMESTAMP:
        kind = "timestamp";
        val = u64_json(v->value.u64);
        break;
    case WARREN__FIELD_F32:
        kind = "f32";
        val = double_json(v->value.f32);
        break;
    case WARREN__FIELD_F64:
        kind = "f64";
        val = double_json(v->value.f64);
        break;
    case WARREN__FIELD_DECIMAL:
        kind = "decimal";
        cJSON_AddNumberToObject(o, "decimals", v->value.decimal.decimals);
        val = cJSON_CreateNumber(v->value.decimal.value);
        break;
    case WARREN__FIELD_UTF8:
        kind = "string";
        val = bytes_json(v->value.bytes);
        break;
    case WARREN__FIELD_BYTES:
        kind = "bytes";
        val = bytes_json(v->value.bytes);
        break;
    case WARREN__FIELD_ARRAY:
        kind = "array";
        val = array_json(&v->value.array);
        break;
    case WARREN__FIELD_TABLE:
        kind = "table";
        val = table_json(&v->value.table);
        break;
    case WARREN__FIELD_VOID:
        kind = "void";
        val = cJSON_CreateNull();
        break;
    default:
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddStringToObject(o, "kind", kind);
    if (val == NULL) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddItemToObject(o, "value", val);
    return o;
}

/* An array keeps order and duplicate keys, which an object would not. */
static cJSON *table_json(const warren__table *t) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < t->num_entries; i++) {
        cJSON *o = value_json(&t->entries[i].value);
        cJSON *name = bytes_json(t->entries[i].key);
        if (o == NULL || name == NULL) {
            cJSON_Delete(o);
            cJSON_Delete(name);
            cJSON_Delete(a);
            return NULL;
        }
        /* "name" first, for people reading the file. */
        cJSON_AddItemToObject(o, "name", name);
        cJSON_AddItemToArray(a, o);
    }
    return a;
}

static cJSON *array_json(const warren__array *arr) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < arr->num_entries; i++) {
        cJSON *o = value_json(&arr->entries[i]);
        if (o == NULL) {
            cJSON_Delete(a);
            return NULL;
        }
        cJSON_AddItemToArray(a, o);
    }
    return a;
}

static const struct {
    const char *name;
    uint32_t flag;
    size_t off;
} str_props[] = {
    {"content_type", WARREN__PROP_CONTENT_TYPE,
     offsetof(warren__props, content_type)},
    {"content_encoding", WARREN__PROP_CONTENT_ENCODING,
     offsetof(warren__props, content_encoding)},
    {"correlation_id", WARREN__PROP_CORRELATION_ID,
     offsetof(warren__props, correlation_id)},
    {"reply_to", WARREN__PROP_REPLY_TO, offsetof(warren__props, reply_to)},
    {"expiration", WARREN__PROP_EXPIRATION,
     offsetof(warren__props, expiration)},
    {"message_id", WARREN__PROP_MESSAGE_ID,
     offsetof(warren__props, message_id)},
    {"type", WARREN__PROP_TYPE, offsetof(warren__props, type)},
    {"user_id", WARREN__PROP_USER_ID, offsetof(warren__props, user_id)},
    {"app_id", WARREN__PROP_APP_ID, offsetof(warren__props, app_id)},
    {"cluster_id", WARREN__PROP_CLUSTER_ID,
     offsetof(warren__props, cluster_id)},
};
#define N_STR_PROPS (sizeof str_props / sizeof str_props[0])

cJSON *warren__dlq_to_json(const warren__props *p, const void *body,
                           size_t len) {
    cJSON *root = cJSON_CreateObject();
    cJSON *props = cJSON_CreateObject();
    cJSON *headers = NULL, *b = NULL;
    if (root == NULL || props == NULL) {
        goto fail;
    }
    cJSON_AddNumberToObject(root, "v", 1);
    for (size_t i = 0; i < N_STR_PROPS; i++) {
        if (p->flags & str_props[i].flag) {
            const warren__bytes *v =
                (const warren__bytes *)((const char *)p + str_props[i].off);
            cJSON *j = bytes_json(*v);
            if (j == NULL) {
                goto fail;
            }
            cJSON_AddItemToObject(props, str_props[i].name, j);
        }
    }
    if (p->flags & WARREN__PROP_DELIVERY_MODE) {
        cJSON_AddNumberToObject(props, "delivery_mode", p->delivery_mode);
    }
    if (p->flags & WARREN__PROP_PRIORITY) {
        cJSON_AddNumberToObject(props, "priority", p->priority);
    }
    if (p->flags & WARREN__PROP_TIMESTAMP) {
        cJSON_AddItemToObject(props, "timestamp", u64_json(p->timestamp));
    }
    cJSON_AddItemToObject(root, "properties", props);
    props = NULL;
    if (p->flags & WARREN__PROP_HEADERS) {
        headers = table_json(&p->headers);
        if (headers == NULL) {
            goto fail;
        }
        cJSON_AddItemToObject(root, "headers", headers);
    }
    b = bytes_json((warren__bytes){len, (void *)body});
    if (b == NULL) {
        goto fail;
    }
    cJSON_AddItemToObject(root, "body", b);
    return root;
fail:
    cJSON_Delete(props);
    cJSON_Delete(root);
    return NULL;
}

/* ---- decode ------------------------------------------------------------ */

typedef struct {
    warren__arena *pool;
    char *err;
    size_t errlen;
} dec;

static int bad(dec *d, const char *fmt, ...) WARREN_PRINTF(2, 3);

static int bad(dec *d, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err, d->errlen, fmt, ap);
    va_end(ap);
    return WARREN_ERR_INVAL;
}

/* A string or {"base64": ...} into pool bytes. */
static int bytes_from(dec *d, const cJSON *j, const char *what,
                      warren__bytes *out) {
    const uint8_t *src;
    size_t len;
    uint8_t *tmp = NULL;
    if (cJSON_IsString(j)) {
        src = (const uint8_t *)j->valuestring;
        len = strlen(j->valuestring);
    } else if (cJSON_IsObject(j) &&
               cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "base64"))) {
        const char *s =
            cJSON_GetObjectItemCaseSensitive(j, "base64")->valuestring;
        int rc = warren__base64_decode(s, strlen(s), &tmp, &len);
        if (rc != 0) {
            return rc == WARREN_ERR_NOMEM
                       ? rc
                       : bad(d, "%s: \"base64\" is not valid base64", what);
        }
        src = tmp;
    } else {
        return bad(d, "%s: expected a string or {\"base64\": \"...\"}", what);
    }
    if (len == 0) {
        *out = ((warren__bytes){0, NULL});
    } else {
        warren__arena_alloc_bytes(d->pool, len, out);
        if (out->bytes == NULL) {
            free(tmp);
            return WARREN_ERR_NOMEM;
        }
        memcpy(out->bytes, src, len);
    }
    free(tmp);
    return 0;
}

/* Accepts a JSON number that is an exact integer within [lo, hi]. */
static int int_from(dec *d, const cJSON *j, const char *what, double lo,
                    double hi, double *out) {
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) ||
        j->valuedouble < lo || j->valuedouble > hi) {
        return bad(d, "%s: expected an integer in %.0f..%.0f", what, lo, hi);
    }
    *out = j->valuedouble;
    return 0;
}

static int i64_from(dec *d, const cJSON *j, const char *what, int64_t *out) {
    char *end;
    if (!cJSON_IsString(j) || j->valuestring[0] == '\0') {
        return bad(d, "%s: expected a decimal string", what);
    }
    errno = 0;
    long long v = strtoll(j->valuestring, &end, 10);
    if (*end != '\0' || errno != 0) {
        return bad(d, "%s: '%s' is not a 64-bit integer", what, j->valuestring);
    }
    *out = v;
    return 0;
}

static int u64_from(dec *d, const cJSON *j, const char *what, uint64_t *out) {
    char *end;
    if (!cJSON_IsString(j) || j->valuestring[0] == '\0' ||
        j->valuestring[0] == '-') {
        return bad(d, "%s: expected an unsigned decimal string", what);
    }
    errno = 0;
    unsigned long long v = strtoull(j->valuestring, &end, 10);
    if (*end != '\0' || errno != 0) {
        return bad(d, "%s: '%s' is not an unsigned 64-bit integer", what,
                   j->valuestring);
    }
    *out = v;
    return 0;
}

static int double_from(dec *d, const cJSON *j, const char *what, double *out) {
    if (cJSON_IsNumber(j)) {
        *out = j->valuedouble;
        return 0;
    }
    if (cJSON_IsString(j)) {
        if (strcmp(j->valuestring, "nan") == 0) {
            *out = NAN;
            return 0;
        }
        if (strcmp(j->valuestring, "inf") == 0) {
            *out = INFINITY;
            return 0;
        }
        if (strcmp(j->valuestring, "-inf") == 0) {
            *out = -INFINITY;
            return 0;
        }
    }
    return bad(d, "%s: expected a number, \"nan\", \"inf\" or \"-inf\"", what);
}

static int table_from(dec *d, const cJSON *j, const char *what, int depth,
                      warren__table *out);
static int array_from(dec *d, const cJSON *j, const char *what, int depth,
                      warren__array *out);

#define MAX_DEPTH 32

static int value_from(dec *d, const cJSON *o, const char *what, int depth,
                      warren__field *v) {
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(o, "kind");
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, "value");
    double n = 0;
    int rc;
    if (!cJSON_IsObject(o) || !cJSON_IsString(k)) {
        return bad(d, "%s: expected {\"kind\": ..., \"value\": ...}", what);
    }
    const char *kind = k->valuestring;
    if (j == NULL) {
        return bad(d, "%s: \"value\" missing", what);
    }
    if (strcmp(kind, "bool") == 0) {
        if (!cJSON_IsBool(j)) {
            return bad(d, "%s: expected true or false", what);
        }
        v->kind = WARREN__FIELD_BOOLEAN;
        v->value.boolean = cJSON_IsTrue(j);
    } else if (strcmp(kind, "i8") == 0) {
        rc = int_from(d, j, what, INT8_MIN, INT8_MAX, &n);
        v->kind = WARREN__FIELD_I8;
        v->value.i8 = (int8_t)n;
        return rc;
    } else if (strcmp(kind, "u8") == 0) {
        rc = int_from(d, j, what, 0, UINT8_MAX, &n);
        v->kind = WARREN__FIELD_U8;
        v->value.u8 = (uint8_t)n;
        return rc;
    } else if (strcmp(kind, "i16") == 0) {
        rc = int_from(d, j, what, INT16_MIN, INT16_MAX, &n);
        v->kind = WARREN__FIELD_I16;
        v->value.i16 = (int16_t)n;
        return rc;
    } else if (strcmp(kind, "u16") == 0) {
        rc = int_from(d, j, what, 0, UINT16_MAX, &n);
        v->kind = WARREN__FIELD_U16;
        v->value.u16 = (uint16_t)n;
        return rc;
    } else if (strcmp(kind, "i32") == 0) {
        rc = int_from(d, j, what, INT32_MIN, INT32_MAX, &n);
        v->kind = WARREN__FIELD_I32;
        v->value.i32 = (int32_t)n;
        return rc;
    } else if (strcmp(kind, "u32") == 0) {
        rc = int_from(d, j, what, 0, UINT32_MAX, &n);
        v->kind = WARREN__FIELD_U32;
        v->value.u32 = (uint32_t)n;
        return rc;
    } else if (strcmp(kind, "i64") == 0) {
        v->kind = WARREN__FIELD_I64;
        return i64_from(d, j, what, &v->value.i64);
    } else if (strcmp(kind, "u64") == 0) {
        v->kind = WARREN__FIELD_U64;
        return u64_from(d, j, what, &v->value.u64);
    } else if (strcmp(kind, "timestamp") == 0) {
        v->kind = WARREN__FIELD_TIMESTAMP;
        return u64_from(d, j, what, &v->value.u64);
    } else if (strcmp(kind, "f32") == 0) {
        v->kind = WARREN__FIELD_F32;
        rc = double_from(d, j, what, &n);
        v->value.f32 = (float)n;
        return rc;
    } else if (strcmp(kind, "f64") == 0) {
        v->kind = WARREN__FIELD_F64;
        return double_from(d, j, what, &v->value.f64);
    } else if (strcmp(kind, "decimal") == 0) {
        double dec_places = 0;
        rc = int_from(d, cJSON_GetObjectItemCaseSensitive(o, "decimals"), what,
                      0, UINT8_MAX, &dec_places);
        if (rc == 0) {
            rc = int_from(d, j, what, 0, UINT32_MAX, &n);
        }
        v->kind = WARREN__FIELD_DECIMAL;
        v->value.decimal.decimals = (uint8_t)dec_places;
        v->value.decimal.value = (uint32_t)n;
        return rc;
    } else if (strcmp(kind, "string") == 0) {
        v->kind = WARREN__FIELD_UTF8;
        return bytes_from(d, j, what, &v->value.bytes);
    } else if (strcmp(kind, "bytes") == 0) {
        v->kind = WARREN__FIELD_BYTES;
        return bytes_from(d, j, what, &v->value.bytes);
    } else if (strcmp(kind, "array") == 0) {
        v->kind = WARREN__FIELD_ARRAY;
        return array_from(d, j, what, depth + 1, &v->value.array);
    } else if (strcmp(kind, "table") == 0) {
        v->kind = WARREN__FIELD_TABLE;
        return table_from(d, j, what, depth + 1, &v->value.table);
    } else if (strcmp(kind, "void") == 0) {
        v->kind = WARREN__FIELD_VOID;
    } else {
        return bad(d, "%s: unknown kind '%s'", what, kind);
    }
    return 0;
}

static int table_from(dec *d, const cJSON *j, const char *what, int depth,
                      warren__table *out) {
    if (depth > MAX_DEPTH) {
        return bad(d, "%s: nested deeper than %d", what, MAX_DEPTH);
    }
    if (!cJSON_IsArray(j)) {
        return bad(d,
                   "%s: expected an array of {\"name\", \"kind\", "
                   "\"value\"}",
                   what);
    }
    int n = cJSON_GetArraySize(j), i = 0;
    out->num_entries = n;
    out->entries =
        n ? warren__arena_alloc(d->pool, sizeof *out->entries * n) : NULL;
    if (n && out->entries == NULL) {
        return WARREN_ERR_NOMEM;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, j) {
        char sub[200];
        if (i >= n) {
            break; /* never: the size was counted above; tells analyzers */
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
        snprintf(sub, sizeof sub, "%s[%d]", what, i);
        if (name == NULL) {
            return bad(d, "%s: \"name\" missing", sub);
        }
        int rc = bytes_from(d, name, sub, &out->entries[i].key);
        if (rc == 0) {
            if (cJSON_IsString(name)) {
                snprintf(sub, sizeof sub, "%s \"%.60s\"", what,
                         name->valuestring);
            }
            rc = value_from(d, it, sub, depth, &out->entries[i].value);
        }
        if (rc != 0) {
            return rc;
        }
        i++;
    }
    return 0;
}

static int array_from(dec *d, const cJSON *j, const char *what, int depth,
                      warren__array *out) {
    if (depth > MAX_DEPTH) {
        return bad(d, "%s: nested deeper than %d", what, MAX_DEPTH);
    }
    if (!cJSON_IsArray(j)) {
        return bad(d, "%s: expected an array", what);
    }
    int n = cJSON_GetArraySize(j), i = 0;
    out->num_entries = n;
    out->entries =
        n ? warren__arena_alloc(d->pool, sizeof *out->entries * n) : NULL;
    if (n && out->entries == NULL) {
        return WARREN_ERR_NOMEM;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, j) {
        char sub[200];
        if (i >= n) {
            break; /* never: the size was counted above; tells analyzers */
        }
        snprintf(sub, sizeof sub, "%s[%d]", what, i);
        int rc = value_from(d, it, sub, depth, &out->entries[i]);
        if (rc != 0) {
            return rc;
        }
        i++;
    }
    return 0;
}

int warren__dlq_from_json(const char *line, size_t len, warren__arena *pool,
                          warren__props *p, uint8_t **body, size_t *body_len,
                          char *err, size_t errlen) {
    dec d = {pool, err, errlen};
    warren__bytes b = {0, NULL};
    int rc;
    memset(p, 0, sizeof *p);
    *body = NULL;
    *body_len = 0;
    cJSON *root = cJSON_ParseWithLength(line, len);
    if (root == NULL) {
        const char *at = cJSON_GetErrorPtr();
        long off =
            at && at >= line && at <= line + len ? (long)(at - line) : -1;
        rc = bad(&d, "not valid JSON (near byte %ld)", off + 1);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        rc = bad(&d, "expected a JSON object");
        goto out;
    }
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "v");
    if (!cJSON_IsNumber(ver) || ver->valuedouble != 1) {
        rc = bad(&d, "\"v\": expected 1 (the format version)");
        goto out;
    }
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(root, "properties");
    if (props && !cJSON_IsObject(props)) {
        rc = bad(&d, "\"properties\": expected an object");
        goto out;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, props) {
        size_t i;
        double n = 0;
        for (i = 0; i < N_STR_PROPS; i++) {
            if (strcmp(it->string, str_props[i].name) == 0) {
                break;
            }
        }
        char what[80];
        snprintf(what, sizeof what, "properties.%s", it->string);
        if (i < N_STR_PROPS) {
            rc = bytes_from(&d, it, what,
                            (warren__bytes *)((char *)p + str_props[i].off));
            p->flags |= str_props[i].flag;
        } else if (strcmp(it->string, "delivery_mode") == 0) {
            rc = int_from(&d, it, what, 0, 255, &n);
            p->delivery_mode = (uint8_t)n;
            p->flags |= WARREN__PROP_DELIVERY_MODE;
        } else if (strcmp(it->string, "priority") == 0) {
            rc = int_from(&d, it, what, 0, 255, &n);
            p->priority = (uint8_t)n;
            p->flags |= WARREN__PROP_PRIORITY;
        } else if (strcmp(it->string, "timestamp") == 0) {
            rc = u64_from(&d, it, what, &p->timestamp);
            p->flags |= WARREN__PROP_TIMESTAMP;
        } else {
            rc = bad(&d, "%s: unknown property", what);
        }
        if (rc != 0) {
            goto out;
        }
    }
    const cJSON *headers = cJSON_GetObjectItemCaseSensitive(root, "headers");
    if (headers) {
        rc = table_from(&d, headers, "headers", 0, &p->headers);
        if (rc != 0) {
            goto out;
        }
        p->flags |= WARREN__PROP_HEADERS;
    }
    const cJSON *jb = cJSON_GetObjectItemCaseSensitive(root, "body");
    if (jb == NULL) {
        rc = bad(&d, "\"body\" missing");
        goto out;
    }
    rc = bytes_from(&d, jb, "body", &b);
    if (rc != 0) {
        goto out;
    }
    *body = malloc(b.len + 1);
    if (*body == NULL) {
        rc = WARREN_ERR_NOMEM;
        goto out;
    }
    if (b.len) {
        memcpy(*body, b.bytes, b.len);
    }
    *body_len = b.len;
out:
    if (rc == WARREN_ERR_NOMEM) {
        snprintf(err, errlen, "out of memory");
    }
    cJSON_Delete(root);
    return rc;
}

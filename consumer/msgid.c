/*
 * msgid.c - derives the id a message is deduplicated on, per the consumer's
 * "message_id" and "on_missing_id" policies.
 *
 * An id is used exactly as found or not at all: an empty id, one longer
 * than WARREN__ID_MAX bytes, or one that is not strict UTF-8 (or contains a
 * NUL) is treated like a missing one, with a reason naming the policy and
 * what was wrong. A "json:" integer id is its digits as sent, never a
 * rounded double. Never allocates except inside cJSON for "json:" policies,
 * and never fails: every outcome is a verdict.
 */
#include "msgid.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

int warren__utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    if (s == NULL) {
        return len == 0;
    }
    while (i < len) {
        unsigned c = p[i];
        unsigned need;
        uint32_t cp, min;
        if (c == 0) {
            return 0;
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
            min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
            min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
            min = 0x10000;
        } else {
            return 0; /* continuation byte, C0/C1 overlong lead, or > F4 */
        }
        if (len - i <= need) {
            return 0;
        }
        for (unsigned k = 1; k <= need; k++) {
            if ((p[i + k] & 0xC0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        /* Overlong encodings would let two byte strings name one id;
         * surrogates and values above U+10FFFF are not characters. */
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return 0;
        }
        i += need + 1;
    }
    return 1;
}

static int sha256_hex(const void *data, size_t len, char out[65]) {
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data ? data : "", len, md, &mdlen, EVP_sha256(), NULL) !=
            1 ||
        mdlen != 32) {
        out[0] = '\0';
        return -1;
    }
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 0x0F];
    }
    out[64] = '\0';
    return 0;
}

void warren__sha256_hex(const void *data, size_t len, char out[65]) {
    (void)sha256_hex(data, len, out);
}

/* Copies a candidate id into `out` if usable; otherwise explains in `why`.
 * Returns 1 if usable. */
static int accept_id(const char *id, size_t len, char *out, char *why,
                     size_t whylen) {
    if (len == 0) {
        snprintf(why, whylen, "is empty");
        return 0;
    }
    if (len > WARREN__ID_MAX) {
        snprintf(why, whylen, "is %zu bytes, longer than %d", len,
                 WARREN__ID_MAX);
        return 0;
    }
    if (!warren__utf8_valid(id, len)) {
        snprintf(why, whylen, "is not valid UTF-8 (or contains a NUL byte)");
        return 0;
    }
    memcpy(out, id, len);
    out[len] = '\0';
    return 1;
}

static int from_property(const struct warren_msg *msg, char *out, char *why,
                         size_t whylen) {
    const char *id = msg->message_id_prop;
    size_t len = id ? strlen(id) : 0;
    if (id == NULL) {
        snprintf(why, whylen, "no message_id property");
        return 0;
    }
    /* message_id_prop is a C string and ends at the first NUL byte: take
     * the property's counted bytes instead, so "a\0b" is refused rather
     * than becoming the id "a" (and colliding with a real "a"). */
    if (msg->props && (msg->props->flags & WARREN__PROP_MESSAGE_ID)) {
        len = msg->props->message_id.len;
        id = len ? (const char *)msg->props->message_id.bytes : "";
    }
    char detail[96];
    if (accept_id(id, len, out, detail, sizeof detail)) {
        return 1;
    }
    snprintf(why, whylen, "the message_id property %s", detail);
    return 0;
}

static const char *type_name(warren_hdr_type t) {
    switch (t) {
    case WARREN_HDR_DOUBLE:
        return "a floating-point number";
    case WARREN_HDR_BOOL:
        return "a boolean";
    case WARREN_HDR_TIMESTAMP:
        return "a timestamp";
    default:
        return "a table, array, decimal, void or oversized integer";
    }
}

static int from_header(const struct warren_msg *msg, const char *name,
                       char *out, char *why, size_t whylen) {
    char detail[96];
    const char *val = NULL;
    size_t len = 0;
    int64_t num = 0;
    warren_hdr_type t = warren_msg_header_type(msg, name);
    switch (t) {
    case WARREN_HDR_NONE:
        snprintf(why, whylen, "no header '%s'", name);
        return 0;
    case WARREN_HDR_STRING:
    case WARREN_HDR_BYTES:
        (void)warren_msg_header_str(msg, name, &val, &len);
        if (accept_id(val, len, out, detail, sizeof detail)) {
            return 1;
        }
        snprintf(why, whylen, "header '%s' %s", name, detail);
        return 0;
    case WARREN_HDR_INT:
        (void)warren_msg_header_int(msg, name, &num);
        snprintf(out, WARREN__ID_MAX + 1, "%" PRId64, num);
        return 1;
    default:
        snprintf(why, whylen, "header '%s' is %s, not a string or integer",
                 name, type_name(t));
        return 0;
    }
}

/* Walks the dotted `path` from `root`; NULL (with `why`) if absent. */
static const cJSON *walk(const cJSON *root, const char *path, char *why,
                         size_t whylen) {
    const cJSON *cur = root;
    const char *p = path;
    char seg[WARREN__ID_MAX + 1];
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n == 0 || n >= sizeof seg) {
            snprintf(why, whylen, "JSON path '%s' is malformed", path);
            return NULL;
        }
        memcpy(seg, p, n);
        seg[n] = '\0';
        if (!cJSON_IsObject(cur)) {
            snprintf(why, whylen,
                     "JSON path '%s': the value before '%s' is not an object",
                     path, seg);
            return NULL;
        }
        cur = cJSON_GetObjectItemCaseSensitive(cur, seg);
        if (cur == NULL) {
            snprintf(why, whylen, "JSON path '%s' not found in the body", path);
            return NULL;
        }
        if (dot == NULL) {
            return cur;
        }
        p = dot + 1;
    }
}

/* The raw text of the value at a path. cJSON keeps neither a string's
 * length nor a number's digits, so after cJSON has accepted the body (and
 * found the path) this second, non-recursive pass finds the value's bytes.
 * It follows cJSON's reading: bytes <= 32 are whitespace, a leading UTF-8
 * BOM is skipped, keys compare as cJSON decodes them, the first of
 * duplicate keys wins. */

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (unsigned char)*p <= 32) {
        p++;
    }
    return p;
}

/* `p` at the opening quote; returns just past the closing one. */
static const char *skip_string(const char *p, const char *end) {
    for (p++; p < end && *p != '"'; p++) {
        if (*p == '\\' && p + 1 < end) {
            p++;
        }
    }
    return p < end ? p + 1 : end;
}

static const char *skip_value(const char *p, const char *end) {
    size_t depth = 0;
    if (p < end && *p != '"' && *p != '{' && *p != '[') {
        while (p < end && (unsigned char)*p > 32 && *p != ',' && *p != '}' &&
               *p != ']') {
            p++;
        }
        return p;
    }
    while (p < end) {
        if (*p == '"') {
            p = skip_string(p, end);
        } else {
            if (*p == '{' || *p == '[') {
                depth++;
            } else if ((*p == '}' || *p == ']') && --depth == 0) {
                return p + 1;
            }
            p++;
        }
        if (depth == 0) {
            return p;
        }
    }
    return end;
}

/* 1 if the JSON string token [k, kend) decodes (as cJSON compares keys,
 * up to a NUL) to `seg`. */
static int key_equals(const char *k, const char *kend, const char *seg) {
    size_t n = (size_t)(kend - k);
    if (n >= 2 && memchr(k, '\\', n) == NULL && memchr(k, '\0', n) == NULL) {
        return n - 2 == strlen(seg) && memcmp(k + 1, seg, n - 2) == 0;
    }
    cJSON *key = cJSON_ParseWithLength(k, n);
    int eq = cJSON_IsString(key) && strcmp(key->valuestring, seg) == 0;
    cJSON_Delete(key);
    return eq;
}

static int raw_value(const char *body, size_t blen, const char *path,
                     const char **raw, size_t *rawlen) {
    const char *end = body + blen;
    const char *p = body;
    if (blen >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) {
        p += 3;
    }
    p = skip_ws(p, end);
    const char *seg = path;
    char name[WARREN__ID_MAX + 1];
    for (;;) {
        const char *dot = strchr(seg, '.');
        size_t n = dot ? (size_t)(dot - seg) : strlen(seg);
        if (n == 0 || n >= sizeof name || p >= end || *p != '{') {
            return -1;
        }
        memcpy(name, seg, n);
        name[n] = '\0';
        p = skip_ws(p + 1, end);
        for (;;) {
            if (p >= end || *p != '"') {
                return -1;
            }
            const char *k = p;
            p = skip_string(p, end);
            int match = key_equals(k, p, name);
            p = skip_ws(p, end);
            if (p >= end || *p != ':') {
                return -1;
            }
            p = skip_ws(p + 1, end);
            const char *vend = skip_value(p, end);
            if (match) {
                break;
            }
            p = skip_ws(vend, end);
            if (p >= end || *p != ',') {
                return -1;
            }
            p = skip_ws(p + 1, end);
        }
        if (dot == NULL) {
            *raw = p;
            *rawlen = (size_t)(skip_value(p, end) - p);
            return 0;
        }
        seg = dot + 1;
    }
}

/* 1 if the string token decodes to text containing U+0000. */
static int raw_string_has_nul(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\0') {
            return 1;
        }
        if (s[i] == '\\' && i + 1 < n) {
            i++;
            if (s[i] == 'u' && i + 4 < n && memcmp(s + i + 1, "0000", 4) == 0) {
                return 1;
            }
        }
    }
    return 0;
}

/* 1 if the number token is -?(0|[1-9][0-9]*), the one spelling of an
 * integer; "-0" is refused as a second spelling of 0. */
static int raw_is_integer(const char *s, size_t n) {
    size_t i = 0;
    if (i < n && s[i] == '-') {
        i++;
    }
    if (i >= n || s[i] < '0' || s[i] > '9' || (s[i] == '0' && n != 1)) {
        return 0;
    }
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    return 1;
}

static int from_json(const struct warren_msg *msg, const char *path, char *out,
                     char *why, size_t whylen) {
    size_t blen = 0;
    const char *body = warren_msg_body(msg, &blen);
    char detail[96];
    const char *raw = NULL;
    size_t rawlen = 0;
    int ok = 0;
    /* cJSON refuses nesting beyond CJSON_NESTING_LIMIT (1000) instead of
     * recursing on, so a hostile body cannot exhaust the stack here. */
    cJSON *root = cJSON_ParseWithLength(body, blen);
    if (root == NULL) {
        snprintf(why, whylen,
                 "body is not valid JSON (or nested too deeply) for path "
                 "'%s'",
                 path);
        return 0;
    }
    if (!cJSON_IsObject(root)) {
        snprintf(why, whylen, "body is not a JSON object (path '%s')", path);
        cJSON_Delete(root);
        return 0;
    }
    const cJSON *v = walk(root, path, why, whylen);
    if (v == NULL) {
        /* why is set */
    } else if (raw_value(body, blen, path, &raw, &rawlen) != 0) {
        /* cJSON found it, so this cannot happen; refuse rather than guess. */
        snprintf(why, whylen, "JSON path '%s' could not be located", path);
    } else if (cJSON_IsString(v)) {
        if (raw_string_has_nul(raw, rawlen)) {
            /* valuestring would end at the NUL and name another id. */
            snprintf(why, whylen, "JSON path '%s' contains a NUL character",
                     path);
        } else {
            ok = accept_id(v->valuestring, strlen(v->valuestring), out, detail,
                           sizeof detail);
            if (!ok) {
                snprintf(why, whylen, "JSON path '%s' %s", path, detail);
            }
        }
    } else if (cJSON_IsNumber(v)) {
        /* cJSON keeps numbers as doubles, which merge integers above 2^53:
         * the id is the integer's digits as sent, and only plain integer
         * literals have digits that are the number itself. */
        if (!raw_is_integer(raw, rawlen)) {
            snprintf(why, whylen,
                     "JSON path '%s' is a number that is not an integer "
                     "written in plain digits",
                     path);
        } else {
            ok = accept_id(raw, rawlen, out, detail, sizeof detail);
            if (!ok) {
                snprintf(why, whylen, "JSON path '%s' %s", path, detail);
            }
        }
    } else {
        snprintf(why, whylen,
                 "JSON path '%s' is not a string or integer (object, array, "
                 "boolean or null)",
                 path);
    }
    cJSON_Delete(root);
    return ok;
}

static const char *policy_name(const warren__consumer_cfg *c, char *buf,
                               size_t len) {
    switch (c->id_source) {
    case WARREN__ID_PROPERTY:
        return "property";
    case WARREN__ID_HEADER:
        snprintf(buf, len, "header:%s", c->id_arg ? c->id_arg : "");
        return buf;
    case WARREN__ID_JSON:
        snprintf(buf, len, "json:%s", c->id_arg ? c->id_arg : "");
        return buf;
    default:
        return "sha256";
    }
}

warren__id_verdict warren__msgid_extract(const warren__consumer_cfg *c,
                                         const struct warren_msg *msg,
                                         char *out, char *why, size_t whylen) {
    char problem[512];
    char pname[WARREN__ID_MAX + 16];
    size_t blen = 0;
    const void *body = warren_msg_body(msg, &blen);
    int ok = 0;
    out[0] = '\0';
    problem[0] = '\0';
    switch (c->id_source) {
    case WARREN__ID_PROPERTY:
        ok = from_property(msg, out, problem, sizeof problem);
        break;
    case WARREN__ID_HEADER:
        ok = from_header(msg, c->id_arg ? c->id_arg : "", out, problem,
                         sizeof problem);
        break;
    case WARREN__ID_JSON:
        ok = from_json(msg, c->id_arg ? c->id_arg : "", out, problem,
                       sizeof problem);
        break;
    case WARREN__ID_SHA256:
        ok = sha256_hex(body, blen, out) == 0;
        if (!ok) {
            snprintf(problem, sizeof problem, "SHA-256 of the body failed");
        }
        break;
    }
    if (ok) {
        return WARREN__ID_USE;
    }
    out[0] = '\0';
    const char *pol = policy_name(c, pname, sizeof pname);
    switch (c->on_missing_id) {
    case WARREN__MISSING_HASH:
        if (sha256_hex(body, blen, out) == 0) {
            return WARREN__ID_USE;
        }
        snprintf(why, whylen,
                 "message id unusable (message_id \"%s\"): %s; SHA-256 "
                 "fallback failed",
                 pol, problem);
        return WARREN__ID_REJECT;
    case WARREN__MISSING_PROCESS:
        snprintf(why, whylen,
                 "message id unusable (message_id \"%s\"): %s; processing "
                 "without dedup",
                 pol, problem);
        return WARREN__ID_NONE;
    default:
        snprintf(why, whylen, "message id unusable (message_id \"%s\"): %s",
                 pol, problem);
        return WARREN__ID_REJECT;
    }
}

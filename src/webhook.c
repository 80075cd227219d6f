#include "webhook.h"

#include <json-c/json.h>
#include <limits.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define MAC_LEN 32
#define HEX_LEN (2 * MAC_LEN)
#define MAX_T_DIGITS 15   /* far beyond any real Unix time, far below overflow */

/* One "key=value" item of a comma-separated header value, blanks trimmed around
 * the item, the key and the value. An item without '=' has key == NULL. */
struct item {
    const char *key, *val;
    size_t klen, vlen;
};

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static void trim(const char **s, size_t *n)
{
    while (*n && is_blank(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n && is_blank((*s)[*n - 1]))
        (*n)--;
}

/* Reads the item at *p and advances *p past it and its comma. False at the end. */
static bool next_item(const char **p, struct item *it)
{
    if (!*p)
        return false;
    const char *s = *p;
    const char *comma = strchr(s, ',');
    size_t n = comma ? (size_t)(comma - s) : strlen(s);
    *p = comma ? comma + 1 : NULL;
    trim(&s, &n);
    const char *eq = memchr(s, '=', n);
    if (!eq) {
        it->key = NULL;
        it->klen = 0;
        it->val = s;
        it->vlen = n;
        return true;
    }
    it->key = s;
    it->klen = (size_t)(eq - s);
    it->val = eq + 1;
    it->vlen = n - it->klen - 1;
    trim(&it->key, &it->klen);
    trim(&it->val, &it->vlen);
    return true;
}

static bool key_is(const struct item *it, const char *key)
{
    return it->key && it->klen == strlen(key) && memcmp(it->key, key, it->klen) == 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Exactly 64 hex digits, either case, into 32 bytes. */
static bool hex_decode(const char *s, size_t n, unsigned char out[MAC_LEN])
{
    if (n != HEX_LEN)
        return false;
    for (size_t i = 0; i < MAC_LEN; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* HMAC-SHA256(key, prefix || body); prefix may be NULL. */
static bool hmac_sha256(const char *key, const char *prefix, size_t plen, const char *body, size_t blen,
                        unsigned char out[MAC_LEN])
{
    bool ok = false;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    if (ctx) {
        char digest[] = "SHA256";
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
            OSSL_PARAM_construct_end(),
        };
        size_t outlen = 0;
        ok = EVP_MAC_init(ctx, (const unsigned char *)key, strlen(key), params) &&
             (!prefix || EVP_MAC_update(ctx, (const unsigned char *)prefix, plen)) &&
             EVP_MAC_update(ctx, (const unsigned char *)body, blen) &&
             EVP_MAC_final(ctx, out, &outlen, MAC_LEN) && outlen == MAC_LEN;
    }
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return ok;
}

/* "t=<unix>,v1=<hex>[,v1=<hex>...]" plus any other keys. */
static enum sig_result verify_timestamped(const char *secret, const char *header, const char *body,
                                          size_t len, double now)
{
    const char *t = NULL;
    size_t tlen = 0;
    int nv1 = 0;
    unsigned char sig[MAC_LEN];
    struct item it;

    for (const char *p = header; next_item(&p, &it);) {
        if (key_is(&it, "t")) {
            if (t || it.vlen == 0 || it.vlen > MAX_T_DIGITS)
                return SIG_MALFORMED;
            for (size_t i = 0; i < it.vlen; i++)
                if (it.val[i] < '0' || it.val[i] > '9')
                    return SIG_MALFORMED;
            t = it.val;
            tlen = it.vlen;
        } else if (key_is(&it, "v1") && hex_decode(it.val, it.vlen, sig)) {
            nv1++;
        }
    }
    if (!t || nv1 == 0)
        return SIG_MALFORMED;

    /* The signed payload is "<t as sent>.<raw body>". */
    char prefix[MAX_T_DIGITS + 2];
    memcpy(prefix, t, tlen);
    prefix[tlen] = '.';
    unsigned char want[MAC_LEN];
    if (!hmac_sha256(secret, prefix, tlen + 1, body, len, want))
        return SIG_MISMATCH;

    int matched = 0;
    for (const char *p = header; next_item(&p, &it);)
        if (key_is(&it, "v1") && hex_decode(it.val, it.vlen, sig))
            matched |= CRYPTO_memcmp(sig, want, MAC_LEN) == 0;
    OPENSSL_cleanse(want, sizeof want);
    if (!matched)
        return SIG_MISMATCH;

    double ts = 0;
    for (size_t i = 0; i < tlen; i++)
        ts = ts * 10 + (t[i] - '0');
    double age = now - ts;
    if (age > WEBHOOK_TOLERANCE || age < -WEBHOOK_TOLERANCE)
        return SIG_STALE;
    return SIG_OK;
}

/* "<hex>" or "sha256=<hex>" over the raw body. */
static enum sig_result verify_body(const char *secret, const struct item *it, const char *body, size_t len)
{
    const char *hex = it->val;
    size_t n = it->vlen;
    if (it->key) {
        if (it->klen != 6 || strncasecmp(it->key, "sha256", 6) != 0)
            return SIG_MALFORMED;
    }
    unsigned char sig[MAC_LEN], want[MAC_LEN];
    if (!hex_decode(hex, n, sig))
        return SIG_MALFORMED;
    if (!hmac_sha256(secret, NULL, 0, body, len, want))
        return SIG_MISMATCH;
    bool ok = CRYPTO_memcmp(sig, want, MAC_LEN) == 0;
    OPENSSL_cleanse(want, sizeof want);
    return ok ? SIG_OK : SIG_MISMATCH;
}

enum sig_result webhook_verify(const char *secret, const char *header, const char *body, size_t len,
                               double now, const char **scheme_out)
{
    const char *scheme = "none";
    enum sig_result r;
    struct item it, first = {0};
    int items = 0;
    bool timestamped = false;

    if (!body)
        body = "";
    for (const char *p = header; next_item(&p, &it);) {
        if (items++ == 0)
            first = it;
        if (key_is(&it, "t") || key_is(&it, "v1"))
            timestamped = true;
    }
    if (items == 0 || (items == 1 && !first.key && first.vlen == 0)) {
        r = SIG_MISSING;
    } else if (timestamped) {
        scheme = "timestamped";
        r = secret && *secret ? verify_timestamped(secret, header, body, len, now) : SIG_MISMATCH;
        if (r == SIG_MALFORMED)
            scheme = "none";
    } else if (items == 1) {
        scheme = "body";
        r = secret && *secret ? verify_body(secret, &first, body, len) : SIG_MISMATCH;
        if (r == SIG_MALFORMED)
            scheme = "none";
    } else {
        r = SIG_MALFORMED;
    }
    if (scheme_out)
        *scheme_out = scheme;
    return r;
}

const char *webhook_sig_str(enum sig_result r)
{
    switch (r) {
    case SIG_OK: return "valid signature";
    case SIG_MISSING: return "missing signature";
    case SIG_MALFORMED: return "malformed signature";
    case SIG_MISMATCH: return "invalid signature";
    case SIG_STALE: return "signature timestamp outside the tolerance";
    }
    return "invalid signature";
}

/* Copies a non-empty string member into out; 0 absent/empty/not a string, -1 too long. */
static int get_string(json_object *obj, const char *key, char *out, size_t size)
{
    json_object *v;
    if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
        return 0;
    size_t n = (size_t)json_object_get_string_len(v);
    const char *s = json_object_get_string(v);
    if (n == 0)
        return 0;
    if (n >= size || memchr(s, '\0', n))
        return -1;
    memcpy(out, s, n);
    out[n] = '\0';
    return 1;
}

bool webhook_parse(const char *body, size_t len, char *event_id, size_t id_size, char *type,
                   size_t type_size)
{
    if (!event_id || !type || id_size == 0 || type_size == 0)
        return false;
    event_id[0] = type[0] = '\0';
    if (!body || len == 0 || len > INT_MAX)
        return false;
    /* The body goes to PostgreSQL as a text parameter: a NUL would cut it short. */
    if (memchr(body, '\0', len))
        return false;

    json_tokener *tok = json_tokener_new();
    if (!tok)
        return false;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *obj = json_tokener_parse_ex(tok, body, (int)len);
    bool ok = obj && json_tokener_get_error(tok) == json_tokener_success &&
              json_object_is_type(obj, json_type_object);
    if (ok) {
        for (size_t i = json_tokener_get_parse_end(tok); i < len; i++) {
            char c = body[i];
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                ok = false;
                break;
            }
        }
    }
    json_tokener_free(tok);

    if (ok) {
        int r = get_string(obj, "id", event_id, id_size);
        if (r < 0) {
            ok = false;
        } else if (r == 0) {
            unsigned char md[32];
            unsigned int mdlen = 0;
            if (id_size < 7 + 64 + 1 || !EVP_Digest(body, len, md, &mdlen, EVP_sha256(), NULL) ||
                mdlen != sizeof md) {
                ok = false;
            } else {
                memcpy(event_id, "sha256:", 7);
                hex_encode(md, sizeof md, event_id + 7);
            }
        }
    }
    if (ok) {
        int r = get_string(obj, "type", type, type_size);
        if (r == 0)
            r = get_string(obj, "event", type, type_size);
        if (r < 0)
            ok = false;
        else if (r == 0)
            ok = snprintf(type, type_size, "unknown") < (int)type_size;
    }
    json_object_put(obj);
    if (!ok)
        event_id[0] = type[0] = '\0';
    return ok;
}

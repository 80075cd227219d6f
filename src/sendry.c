#include "sendry.h"

#include <ctype.h>
#include <curl/curl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <time.h>

#include "xalloc.h"

char *sendry_normalize_email(const char *email)
{
    if (!email)
        return NULL;
    while (*email && isspace((unsigned char)*email))
        email++;
    size_t len = strlen(email);
    while (len > 0 && isspace((unsigned char)email[len - 1]))
        len--;
    char *out = xmalloc(len + 1);
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)email[i]);
    out[len] = '\0';
    return out;
}

/* Sendry's limits: names up to 200 characters, metadata values up to 1000. Cut at a
 * UTF-8 character boundary. */
static json_object *limited_string(const char *s, size_t max_chars)
{
    size_t chars = 0, i = 0;
    while (s[i]) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (chars == max_chars)
                break;
            chars++;
        }
        i++;
    }
    return json_object_new_string_len(s, (int)i);
}

/* The contact object for an email and a parsed payload (or NULL): email, first_name,
 * last_name, metadata (every value a string; others are converted), never
 * `unsubscribed`. New reference. */
static json_object *contact_object(const char *email, json_object *p)
{
    json_object *c = xcheck(json_object_new_object());
    json_object_object_add(c, "email", json_object_new_string(email));
    if (p && json_object_is_type(p, json_type_object)) {
        static const char *const names[] = {"first_name", "last_name"};
        for (size_t i = 0; i < 2; i++) {
            json_object *v;
            if (json_object_object_get_ex(p, names[i], &v) && json_object_is_type(v, json_type_string) &&
                json_object_get_string_len(v) > 0)
                json_object_object_add(c, names[i], limited_string(json_object_get_string(v), 200));
        }
        json_object *meta;
        if (json_object_object_get_ex(p, "metadata", &meta) && json_object_is_type(meta, json_type_object)) {
            /* Sendry takes string values only: a number or boolean from a hand-written
             * backfill becomes its JSON text; null and nested values are dropped. */
            json_object *m = json_object_new_object();
            json_object_object_foreach(meta, key, val) {
                enum json_type t = json_object_get_type(val);
                if (t == json_type_string)
                    json_object_object_add(m, key, limited_string(json_object_get_string(val), 1000));
                else if (t == json_type_int || t == json_type_double || t == json_type_boolean)
                    json_object_object_add(m, key, json_object_new_string(
                        json_object_to_json_string_ext(val, JSON_C_TO_STRING_PLAIN)));
            }
            json_object_object_add(c, "metadata", m);
        }
    }
    /* Never "unsubscribed": an upsert must not re-subscribe someone who opted out. */
    return c;
}

static char *dup_json(json_object *o)
{
    char *out = xstrdup(xcheck((void *)json_object_to_json_string_ext(
        o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)));
    json_object_put(o);
    return out;
}

/* Appends s[0..len) to the buffer at *out (of *used bytes, *cap allocated). */
static void append(char **out, size_t *used, size_t *cap, const char *s, size_t len)
{
    if (*used + len + 1 > *cap) {
        *cap = (*used + len + 1) * 2;
        *out = xrealloc(*out, *cap);
    }
    memcpy(*out + *used, s, len);
    *used += len;
    (*out)[*used] = '\0';
}

/* ,"audience_id":"<id, JSON-escaped>" */
static void append_audience(char **out, size_t *used, size_t *cap, const char *audience_id)
{
    json_object *id = xcheck(json_object_new_string(audience_id));
    const char *text = json_object_to_json_string_ext(id, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    append(out, used, cap, ",\"audience_id\":", 15);
    append(out, used, cap, text, strlen(text));
    json_object_put(id);
}

/* The contacts are JSON text already (rendered at the claim): the body is put together
 * around them, as json-c would print it. */
char *sendry_import_body(struct row *const *rows, size_t n, const char *audience_id)
{
    size_t used = 0, cap = 64;
    for (size_t i = 0; i < n; i++)
        cap += strlen(rows[i]->contact) + 1;
    char *out = xmalloc(cap);
    append(&out, &used, &cap, "{\"contacts\":[", 13);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            append(&out, &used, &cap, ",", 1);
        append(&out, &used, &cap, rows[i]->contact, strlen(rows[i]->contact));
    }
    append(&out, &used, &cap, "]", 1);
    if (audience_id)
        append_audience(&out, &used, &cap, audience_id);
    append(&out, &used, &cap, "}", 1);
    return out;
}

char *sendry_contact_body(const struct row *r, const char *audience_id)
{
    size_t len = strlen(r->contact), used = 0, cap = len + 64;
    char *out = xmalloc(cap);
    append(&out, &used, &cap, r->contact, len - 1);   /* without its closing brace */
    if (audience_id)
        append_audience(&out, &used, &cap, audience_id);
    append(&out, &used, &cap, "}", 1);
    return out;
}

static bool listed(char *const *list, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], s) == 0)
            return true;
    return false;
}

/* The strings of payload[key], "default" resolved, without repeats or those in `not`. */
static char **audience_list(json_object *payload, const char *key, const char *dflt,
                            char *const *not, size_t nnot, size_t *n)
{
    json_object *arr = NULL;
    *n = 0;
    if (!payload || !json_object_object_get_ex(payload, key, &arr) || !json_object_is_type(arr, json_type_array))
        return NULL;
    size_t len = json_object_array_length(arr);
    char **out = xcalloc(len ? len : 1, sizeof *out);
    for (size_t i = 0; i < len; i++) {
        json_object *v = json_object_array_get_idx(arr, i);
        if (!json_object_is_type(v, json_type_string))
            continue;
        const char *id = strcmp(json_object_get_string(v), "default") == 0 ? dflt : json_object_get_string(v);
        if (!listed(out, *n, id) && !listed(not, nnot, id))
            out[(*n)++] = xstrdup(id);
    }
    return out;
}

static void contact_audiences(struct row *r, json_object *payload, const char *default_audience)
{
    json_object *v = NULL;
    bool named = payload && json_object_object_get_ex(payload, "audiences", &v) &&
                 json_object_is_type(v, json_type_array);
    if (named) {
        r->audiences = audience_list(payload, "audiences", default_audience, NULL, 0, &r->naudiences);
    } else {
        r->audiences = xcalloc(1, sizeof *r->audiences);
        r->audiences[0] = xstrdup(default_audience);
        r->naudiences = 1;
    }
    r->leave = audience_list(payload, "leave_audiences", default_audience, r->audiences,
                             r->naudiences, &r->nleave);
}

void sendry_row_payload(struct row *r, const char *payload, const char *default_audience)
{
    json_object *p = payload ? json_tokener_parse(payload) : NULL;
    if (!json_object_is_type(p, json_type_object)) {
        json_object_put(p);
        p = NULL;
    }
    r->contact = dup_json(contact_object(r->email, p));
    json_object *mode;
    r->remove_only = p && json_object_object_get_ex(p, "delete_mode", &mode) &&
                     json_object_is_type(mode, json_type_string) &&
                     strcmp(json_object_get_string(mode), "remove_from_audience") == 0;
    contact_audiences(r, p, default_audience);
    json_object_put(p);
}

void sendry_event_payload(struct row *r, const char *payload, const char *event_id)
{
    json_object *p = payload ? json_tokener_parse(payload) : NULL, *name = NULL, *data = NULL;
    if (p && json_object_is_type(p, json_type_object)) {
        json_object_object_get_ex(p, "name", &name);
        json_object_object_get_ex(p, "payload", &data);
    }
    json_object *body = xcheck(json_object_new_object());
    json_object_object_add(body, "name", json_object_get(name));
    json_object_object_add(body, "contact_email", xcheck(json_object_new_string(r->email)));
    json_object_object_add(body, "payload", data ? json_object_get(data) : xcheck(json_object_new_object()));
    if (event_id && *event_id)
        json_object_object_add(body, "event_id", xcheck(json_object_new_string(event_id)));
    r->event_name = xstrdup(json_object_is_type(name, json_type_string) ? json_object_get_string(name) : "");
    r->event = dup_json(body);
    json_object_put(p);
}

bool sendry_event_deduped(const char *body, size_t len)
{
    if (!body || !len)
        return false;
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return false;
    json_object *root = json_tokener_parse_ex(tok, body, (int)len), *v, *data;
    json_tokener_free(tok);
    json_object *obj = root;
    if (root && json_object_object_get_ex(root, "data", &data) && json_object_is_type(data, json_type_object))
        obj = data;   /* tolerate an envelope, as for contacts */
    bool deduped = obj && json_object_object_get_ex(obj, "deduped", &v) &&
                   json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
    json_object_put(root);
    return deduped;
}

char *sendry_move_body(const struct row *r)
{
    return xstrdup(r->contact);
}

char *sendry_url_encode(const char *s)
{
    char *enc = xcheck(curl_easy_escape(NULL, s, 0));
    char *out = xstrdup(enc);
    curl_free(enc);
    return out;
}

bool sendry_contact_id(const char *body, size_t len, char *id, size_t id_size)
{
    if (!body || !len)
        return false;
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return false;
    json_object *root = json_tokener_parse_ex(tok, body, (int)len);
    json_tokener_free(tok);
    json_object *v, *data, *obj = root;
    bool ok = false;
    /* Tolerate an envelope: {"data": {...contact...}}. */
    if (root && json_object_object_get_ex(root, "data", &data) && json_object_is_type(data, json_type_object))
        obj = data;
    if (obj && json_object_object_get_ex(obj, "id", &v) && json_object_is_type(v, json_type_string) &&
        json_object_get_string_len(v) > 0 && (size_t)json_object_get_string_len(v) < id_size) {
        snprintf(id, id_size, "%s", json_object_get_string(v));
        ok = true;
    }
    json_object_put(root);
    return ok;
}

enum outcome sendry_classify(bool transport_ok, long status, bool audience_request)
{
    if (!transport_ok)
        return OUTCOME_RETRY;
    if (status >= 200 && status < 300)
        return OUTCOME_SENT;
    switch (status) {
    case 401:
    case 402:
    case 403:
        return OUTCOME_STOP;
    case 404:
        return audience_request ? OUTCOME_STOP : OUTCOME_INVALID;
    case 408:
        return OUTCOME_RETRY;
    case 429:
        return OUTCOME_RATE_LIMITED;
    default:
        break;
    }
    if (status >= 500 || status < 200)
        return OUTCOME_RETRY;   /* 5xx, and 1xx/0 that should never end a request */
    if (status >= 300 && status < 400)
        return OUTCOME_INVALID; /* a redirect we do not follow: the URL is wrong */
    return OUTCOME_INVALID;
}

const char *outcome_name(enum outcome o)
{
    switch (o) {
    case OUTCOME_SENT: return "sent";
    case OUTCOME_RETRY: return "retry";
    case OUTCOME_RATE_LIMITED: return "rate_limited";
    case OUTCOME_INVALID: return "invalid";
    case OUTCOME_STOP: return "stop";
    }
    return "?";
}

/* Drops an incomplete UTF-8 sequence that cutting left at the end of s. */
static void utf8_cut(char *s)
{
    size_t n = strlen(s), i = n;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
        i--;
    if (i == 0)
        return;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    if (n - (i - 1) < need)
        s[i - 1] = '\0';
}

/* Copies a string field, cut at a UTF-8 character boundary to fit. */
static void copy_string_field(json_object *obj, const char *key, char *buf, size_t size)
{
    json_object *v;
    if (!size || !json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
        return;
    const char *s = json_object_get_string(v);
    size_t n = strlen(s);
    if (n >= size) {
        n = size - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--; /* s[n] would be the first byte left out: do not split its character */
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
}

static void copy_number_field(json_object *obj, const char *key, double *out)
{
    json_object *v;
    if (!out || !json_object_object_get_ex(obj, key, &v))
        return;
    if (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double))
        *out = json_object_get_double(v);
    else if (json_object_is_type(v, json_type_string)) {
        char *end;
        double d = strtod(json_object_get_string(v), &end);
        if (end != json_object_get_string(v) && *end == '\0')
            *out = d;
    }
}

/* A body that is not JSON, as readable text: tags dropped, white space folded. */
static void text_of(const char *body, size_t len, char *out, size_t size)
{
    size_t o = 0;
    bool in_tag = false, space = true;
    for (size_t i = 0; i < len && body[i] && o + 1 < size; i++) {
        char ch = body[i];
        if (ch == '<') {
            in_tag = true;
        } else if (ch == '>' && in_tag) {
            in_tag = false;
            ch = ' ';
        }
        if (in_tag)
            continue;
        bool blank = ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
        if (blank && space)
            continue;
        out[o++] = blank ? ' ' : ch;
        space = blank;
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
    utf8_cut(out);
}

/* The answer's details (error.details, details, or problem+json's errors), compact. */
static void copy_details(json_object *src, json_object *root, char *out, size_t size)
{
    json_object *d = NULL;
    if (!json_object_object_get_ex(src, "details", &d) && !json_object_object_get_ex(root, "details", &d))
        json_object_object_get_ex(root, "errors", &d);
    if (!d || json_object_is_type(d, json_type_null))
        return;
    if ((json_object_is_type(d, json_type_object) && json_object_object_length(d) == 0) ||
        (json_object_is_type(d, json_type_array) && json_object_array_length(d) == 0))
        return;
    const char *text = json_object_to_json_string_ext(d, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    snprintf(out, size, "%s", text ? text : "");
    utf8_cut(out);
}

void sendry_read_error(const char *body, size_t len, struct sendry_error *out)
{
    memset(out, 0, sizeof *out);
    out->retry_after = -1;
    if (!body || len == 0)
        return;
    json_tokener *tok = xcheck(json_tokener_new());
    json_object *root = json_tokener_parse_ex(tok, body, (int)len);
    json_tokener_free(tok);
    if (!root || !json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        text_of(body, len, out->message, sizeof out->message);
        return;
    }
    json_object *err, *src = root;
    if (json_object_object_get_ex(root, "error", &err)) {
        if (json_object_is_type(err, json_type_object))
            src = err;
        else if (json_object_is_type(err, json_type_string))
            snprintf(out->message, sizeof out->message, "%s", json_object_get_string(err));
    }
    copy_string_field(src, "code", out->code, sizeof out->code);
    copy_string_field(src, "message", out->message, sizeof out->message);
    if (!out->message[0])   /* problem+json */
        copy_string_field(root, "detail", out->message, sizeof out->message);
    if (!out->message[0])
        copy_string_field(root, "title", out->message, sizeof out->message);
    copy_number_field(src, "retry_after", &out->retry_after);
    json_object *details;
    if (json_object_object_get_ex(src, "details", &details) && json_object_is_type(details, json_type_object))
        copy_number_field(details, "retry_after", &out->retry_after);
    copy_details(src, root, out->details, sizeof out->details);
    json_object_put(root);
}

void sendry_parse_error(const char *body, size_t len, char *code, size_t code_size,
                        char *message, size_t message_size, double *retry_after)
{
    struct sendry_error e;
    sendry_read_error(body, len, &e);
    if (e.code[0])
        snprintf(code, code_size, "%s", e.code);
    if (e.message[0] && body && len && (body[0] == '{' || body[0] == ' ' || body[0] == '\n'))
        snprintf(message, message_size, "%s", e.message);
    if (retry_after && e.retry_after >= 0)
        *retry_after = e.retry_after;
}

double sendry_retry_after(const char *header, double now)
{
    if (!header)
        return -1;
    while (*header == ' ' || *header == '\t')
        header++;
    if (!*header)
        return -1;
    /* delay-seconds is 1*DIGIT (RFC 9110 10.2.3): no sign, no point, no hex, no "inf". */
    if (isdigit((unsigned char)*header)) {
        const char *p = header;
        double secs = 0;
        while (isdigit((unsigned char)*p))
            secs = secs * 10 + (*p++ - '0');
        while (*p == ' ' || *p == '\t')
            p++;
        return *p == '\0' && isfinite(secs) ? secs : -1;
    }
    /* An HTTP-date ("Sun, 06 Nov 1994 08:49:37 GMT"): libcurl parses it. */
    time_t when = curl_getdate(header, NULL);
    if (when == (time_t)-1)
        return -1;
    return (double)when > now ? (double)when - now : 0;
}

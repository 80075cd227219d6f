/* Unit tests for webhook signature checks, envelope parsing and the metrics text.
 * The expected MACs and digests were computed independently with Python's hmac and
 * hashlib modules, e.g.
 *   hmac.new(b"whsec_test_secret", b"1767225600." + BODY1, hashlib.sha256).hexdigest()
 * Prints "webhook: N passed, N failed" and exits 1 on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "webhook.h"

#include "check.h"

#define CHECK_SIG(expr, want)                                                            \
    do {                                                                                 \
        enum sig_result got_ = (expr);                                                   \
        if (got_ == (want))                                                              \
            passed++;                                                                    \
        else {                                                                           \
            failed++;                                                                    \
            fprintf(stderr, "FAIL %s:%d: %s = %d, want %s\n", __FILE__, __LINE__, #expr, \
                    (int)got_, #want);                                                   \
        }                                                                                \
    } while (0)

static const char SECRET[] = "whsec_test_secret";
static const char BODY1[] = "{\"id\":\"evt_123\",\"type\":\"contact.updated\",\"created_at\":"
                            "\"2026-01-01T00:00:00Z\",\"data\":{\"email\":\"a@example.com\","
                            "\"unsubscribed\":true}}";
static const char BODY2[] = "{\"event\":\"email.bounced\",\"data\":{\"email_id\":\"em_1\",\"bounce_type\":\"hard\"}}";

#define T1 1767225600.0
/* HMAC-SHA256(SECRET, BODY1) */
#define SIG_BODY1 "e32b251ddb24d7abafd5809cff345e43ba37d86ac345d9c463d538c5cd2bd3bf"
/* HMAC-SHA256(SECRET, "1767225600." BODY1) */
#define SIG_TS1 "a487e82b82a5050ced94d91a45141d1b2b8dd2583b1ca8842c12a0e287e94836"
/* HMAC-SHA256("whsec_other", BODY1) */
#define SIG_OTHER "ebdb7af1e19e70ed3d11a5284a119a1c8f119d41b4826636161ef3088a134edc"
/* HMAC-SHA256("test_secret", BODY1): the key without its whsec_ prefix */
#define SIG_NOPREFIX "57a7f31ecb44521f8e03760dbcf1c02116e13fa6d9d2c24b94184fbbc4c14db5"
/* HMAC-SHA256(SECRET, BODY2), SHA-256(BODY2) */
#define SIG_BODY2 "cc3b095a01017160b73489118cc78ed8b12a1f1e6a3f2584384751c4b3c32f81"
#define SHA_BODY2 "33c449baf97b96754aa2ee1bd301c89bcb7383780f5e8c231e5c9346e0d66ca8"

static enum sig_result verify(const char *header, const char *body, double now, const char **scheme)
{
    return webhook_verify(SECRET, header, body, strlen(body), now, scheme);
}

static void upper(char *s)
{
    for (; *s; s++)
        if (*s >= 'a' && *s <= 'f')
            *s = (char)(*s - 'a' + 'A');
}

static void test_verify_body(void)
{
    const char *scheme = NULL;
    CHECK_SIG(verify(SIG_BODY1, BODY1, T1, &scheme), SIG_OK);
    CHECK_STR(scheme, "body");
    CHECK_SIG(verify("sha256=" SIG_BODY1, BODY1, T1, &scheme), SIG_OK);
    CHECK_STR(scheme, "body");
    CHECK_SIG(verify("SHA256=" SIG_BODY1, BODY1, T1, NULL), SIG_OK);
    CHECK_SIG(verify("  sha256=" SIG_BODY1 " ", BODY1, T1, NULL), SIG_OK);
    CHECK_SIG(verify(SIG_BODY2, BODY2, T1, NULL), SIG_OK);

    char up[80] = "sha256=" SIG_BODY1;
    upper(up + 7);
    CHECK_SIG(verify(up, BODY1, T1, NULL), SIG_OK);
    char mixed[80] = SIG_BODY1;
    upper(mixed + 10);
    CHECK_SIG(verify(mixed, BODY1, T1, NULL), SIG_OK);

    /* The body scheme has no timestamp: the time does not matter. */
    CHECK_SIG(verify(SIG_BODY1, BODY1, 0, NULL), SIG_OK);

    /* Wrong secret, key without prefix, other body, one flipped digit. */
    CHECK_SIG(verify(SIG_OTHER, BODY1, T1, &scheme), SIG_MISMATCH);
    CHECK_STR(scheme, "body");
    CHECK_SIG(verify(SIG_NOPREFIX, BODY1, T1, NULL), SIG_MISMATCH);
    CHECK_SIG(verify(SIG_BODY1, BODY2, T1, NULL), SIG_MISMATCH);
    CHECK_SIG(webhook_verify("whsec_other", SIG_OTHER, BODY1, strlen(BODY1), T1, NULL), SIG_OK);
    CHECK_SIG(webhook_verify("test_secret", SIG_NOPREFIX, BODY1, strlen(BODY1), T1, NULL), SIG_OK);
    char flipped[80] = SIG_BODY1;
    flipped[63] = flipped[63] == '0' ? '1' : '0';
    CHECK_SIG(verify(flipped, BODY1, T1, NULL), SIG_MISMATCH);
    /* The raw body counts byte for byte: a trailing newline changes it. */
    char body_nl[sizeof BODY1 + 1];
    snprintf(body_nl, sizeof body_nl, "%s\n", BODY1);
    CHECK_SIG(verify(SIG_BODY1, body_nl, T1, NULL), SIG_MISMATCH);
    /* Only the first len bytes are signed. */
    CHECK_SIG(webhook_verify(SECRET, SIG_BODY1, body_nl, strlen(BODY1), T1, NULL), SIG_OK);

    /* No secret never verifies. */
    CHECK_SIG(webhook_verify("", SIG_BODY1, BODY1, strlen(BODY1), T1, NULL), SIG_MISMATCH);
    CHECK_SIG(webhook_verify(NULL, SIG_BODY1, BODY1, strlen(BODY1), T1, NULL), SIG_MISMATCH);
}

static void test_verify_timestamped(void)
{
    const char *scheme = NULL;
    CHECK_SIG(verify("t=1767225600,v1=" SIG_TS1, BODY1, T1, &scheme), SIG_OK);
    CHECK_STR(scheme, "timestamped");
    CHECK_SIG(verify("t=1767225600, v1=" SIG_TS1, BODY1, T1 + 12.5, NULL), SIG_OK);
    CHECK_SIG(verify(" v1 = " SIG_TS1 " , t = 1767225600 ", BODY1, T1, NULL), SIG_OK);
    /* Other keys and several v1 entries: any match wins. */
    CHECK_SIG(verify("t=1767225600,v0=abc,v1=" SIG_OTHER ",v1=" SIG_TS1, BODY1, T1, NULL), SIG_OK);
    CHECK_SIG(verify("t=1767225600,v1=zz,v1=" SIG_TS1, BODY1, T1, NULL), SIG_OK);
    char up[128] = "t=1767225600,v1=" SIG_TS1;
    upper(up + 16);
    CHECK_SIG(verify(up, BODY1, T1, NULL), SIG_OK);

    /* Tolerance: 300 s either way is fine, beyond is stale. */
    CHECK_SIG(verify("t=1767225600,v1=" SIG_TS1, BODY1, T1 + 300, NULL), SIG_OK);
    CHECK_SIG(verify("t=1767225600,v1=" SIG_TS1, BODY1, T1 - 300, NULL), SIG_OK);
    CHECK_SIG(verify("t=1767225600,v1=" SIG_TS1, BODY1, T1 + 301, &scheme), SIG_STALE);
    CHECK_STR(scheme, "timestamped");
    CHECK_SIG(verify("t=1767225600,v1=" SIG_TS1, BODY1, T1 - 301, NULL), SIG_STALE);   /* future */
    CHECK_SIG(verify("t=1767225600,v1=" SIG_TS1, BODY1, T1 + 86400, NULL), SIG_STALE);

    /* Signature first: a forged stale header is a mismatch, not "stale". */
    CHECK_SIG(verify("t=1767225600,v1=" SIG_OTHER, BODY1, T1 + 86400, NULL), SIG_MISMATCH);
    CHECK_SIG(verify("t=1767225600,v1=" SIG_OTHER, BODY1, T1, NULL), SIG_MISMATCH);
    /* The timestamp is signed: another t does not match. */
    CHECK_SIG(verify("t=1767225601,v1=" SIG_TS1, BODY1, T1, NULL), SIG_MISMATCH);
    /* The body-scheme MAC does not pass as v1, nor v1 as a body MAC. */
    CHECK_SIG(verify("t=1767225600,v1=" SIG_BODY1, BODY1, T1, NULL), SIG_MISMATCH);
    CHECK_SIG(verify(SIG_TS1, BODY1, T1, NULL), SIG_MISMATCH);
}

static void test_verify_malformed(void)
{
    const char *scheme = "x";
    CHECK_SIG(verify(NULL, BODY1, T1, &scheme), SIG_MISSING);
    CHECK_STR(scheme, "none");
    CHECK_SIG(verify("", BODY1, T1, NULL), SIG_MISSING);
    CHECK_SIG(verify("   ", BODY1, T1, NULL), SIG_MISSING);

    /* Wrong length, non-hex, bad prefix. */
    CHECK_SIG(verify("abcdef", BODY1, T1, &scheme), SIG_MALFORMED);
    CHECK_STR(scheme, "none");
    char longer[80] = SIG_BODY1 "0";
    CHECK_SIG(verify(longer, BODY1, T1, NULL), SIG_MALFORMED);
    char shorter[80] = SIG_BODY1;
    shorter[63] = '\0';
    CHECK_SIG(verify(shorter, BODY1, T1, NULL), SIG_MALFORMED);
    char nonhex[80] = SIG_BODY1;
    nonhex[5] = 'g';
    CHECK_SIG(verify(nonhex, BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify("sha256=", BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify("sha1=" SIG_BODY1, BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify("sha256=" SIG_BODY1 "," SIG_BODY1, BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify(",", BODY1, T1, NULL), SIG_MALFORMED);

    /* Timestamped without a usable part. */
    CHECK_SIG(verify("t=1767225600", BODY1, T1, &scheme), SIG_MALFORMED);
    CHECK_STR(scheme, "none");
    CHECK_SIG(verify("t=1767225600,v1=", BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify("t=1767225600,v1=abc", BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify("v1=" SIG_TS1, BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify("t=,v1=" SIG_TS1, BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify("t=-5,v1=" SIG_TS1, BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify("t=17672256x0,v1=" SIG_TS1, BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify("t=99999999999999999999,v1=" SIG_TS1, BODY1, T1, NULL), SIG_MALFORMED);
    CHECK_SIG(verify("t=1767225600,t=1767225600,v1=" SIG_TS1, BODY1, T1, NULL), SIG_MALFORMED);

    /* Descriptions for the 401 bodies. */
    CHECK_STR(webhook_sig_str(SIG_STALE), "signature timestamp outside the tolerance");
    CHECK_STR(webhook_sig_str(SIG_MISSING), "missing signature");
}

static bool parse(const char *body, char *id, char *type)
{
    return webhook_parse(body, strlen(body), id, WEBHOOK_ID_SIZE, type, WEBHOOK_TYPE_SIZE);
}

static void test_parse(void)
{
    char id[WEBHOOK_ID_SIZE], type[WEBHOOK_TYPE_SIZE];

    CHECK(parse(BODY1, id, type));
    CHECK_STR(id, "evt_123");
    CHECK_STR(type, "contact.updated");

    /* No id: the SHA-256 of the raw body; legacy "event" names the type. */
    CHECK(parse(BODY2, id, type));
    CHECK_STR(id, "sha256:" SHA_BODY2);
    CHECK_STR(type, "email.bounced");
    (void)SIG_BODY2;

    /* "type" wins over "event"; an empty or non-string id or type does not count. */
    CHECK(parse("{\"type\":\"email.opened\",\"event\":\"email.clicked\",\"id\":\"e1\"}", id, type));
    CHECK_STR(type, "email.opened");
    CHECK(parse("{\"id\":\"\",\"type\":\"\",\"event\":\"contact.deleted\"}", id, type));
    CHECK(strncmp(id, "sha256:", 7) == 0 && strlen(id) == 71);
    CHECK_STR(type, "contact.deleted");
    CHECK(parse("{\"id\":42,\"type\":7}", id, type));
    CHECK(strncmp(id, "sha256:", 7) == 0);
    CHECK_STR(type, "unknown");
    CHECK(parse("{}", id, type));
    CHECK_STR(type, "unknown");
    CHECK(parse(" {\"id\":\"a\\\"b\"}\r\n", id, type));   /* whitespace around is fine */
    CHECK_STR(id, "a\"b");

    /* Not one JSON object. */
    CHECK(!parse("not json", id, type));
    CHECK_STR(id, "");
    CHECK(!parse("[{\"id\":\"x\"}]", id, type));
    CHECK(!parse("\"text\"", id, type));
    CHECK(!parse("42", id, type));
    CHECK(!parse("null", id, type));
    CHECK(!parse("", id, type));
    CHECK(!parse("{\"id\":\"x\"", id, type));                /* truncated */
    CHECK(!parse("{\"id\":\"x\"} garbage", id, type));       /* trailing garbage */
    CHECK(!parse("{\"id\":\"x\"}{\"id\":\"y\"}", id, type));  /* two objects */
    CHECK(!parse("{'id':'x'}", id, type));                    /* not strict JSON */
    CHECK(!parse("{\"id\":\"\xff\"}", id, type));             /* not UTF-8 */
    CHECK(!parse("{\"id\":\"a\\u0000b\"}", id, type));        /* NUL in the id */
    CHECK(!webhook_parse("{}\0", 3, id, sizeof id, type, sizeof type));   /* raw NUL */
    /* The exact length counts: the object ends where len says. */
    CHECK(webhook_parse("{\"id\":\"x\"}trailing", 10, id, sizeof id, type, sizeof type));
    CHECK_STR(id, "x");

    /* Outputs that do not fit fail rather than truncate. */
    char small[8];
    char tiny[4];
    const char *b = "{\"id\":\"evt_0123456789\"}";
    CHECK(!webhook_parse(b, strlen(b), small, sizeof small, type, sizeof type));
    b = "{\"type\":\"contact.updated\"}";
    CHECK(!webhook_parse(b, strlen(b), id, sizeof id, small, sizeof small));
    b = "{\"type\":\"a.b\",\"id\":\"evt_123\"}";
    CHECK(webhook_parse(b, strlen(b), small, sizeof small, tiny, sizeof tiny));
    CHECK_STR(small, "evt_123");
    CHECK_STR(tiny, "a.b");
    /* The body-hash id needs 72 bytes. */
    CHECK(!webhook_parse("{}", 2, small, sizeof small, type, sizeof type));
}

static bool contains(const char *text, const char *line)
{
    return text && strstr(text, line) != NULL;
}

static void test_metrics(void)
{
    metrics_reset();
    metrics.rows_sent += 3;
    metrics.rows_failed += 1;
    metrics.rows_retried += 2;
    metrics.rate_limit_waits++;
    metrics_http(200);
    metrics_http(200);
    metrics_http(429);
    metrics_http(0);
    metrics_http(1000);   /* out of range: a transport error */
    metrics_claim(0);
    metrics_claim(1);
    metrics_claim(7);
    metrics_claim(250);
    metrics_claim(1000);
    metrics_claim(5000);
    metrics.backlog_due = 12;
    metrics.oldest_due_age_seconds = 1.5;
    metrics.db_connected = true;
    metrics_set_stopped(true, "401 from Sendry: bad API key");
    metrics_webhook("contact.updated", "applied");
    metrics_webhook("contact.updated", "applied");
    metrics_webhook("contact.updated", "duplicate");
    metrics_webhook("invalid", "unauthorized");
    metrics_webhook("we\"ird\\type\nx", "ignored");

    char *text = metrics_render();
    CHECK(text != NULL);
    CHECK(contains(text, "# TYPE sendry_sync_rows_total counter\n"));
    CHECK(contains(text, "\nsendry_sync_rows_total{outcome=\"sent\"} 3\n"));
    CHECK(contains(text, "\nsendry_sync_rows_total{outcome=\"failed\"} 1\n"));
    CHECK(contains(text, "\nsendry_sync_rows_total{outcome=\"retried\"} 2\n"));
    CHECK(contains(text, "\nsendry_sync_http_responses_total{status=\"200\"} 2\n"));
    CHECK(contains(text, "\nsendry_sync_http_responses_total{status=\"429\"} 1\n"));
    CHECK(contains(text, "\nsendry_sync_http_responses_total{status=\"error\"} 2\n"));
    CHECK(!contains(text, "status=\"500\""));
    CHECK(contains(text, "\nsendry_sync_rate_limit_waits_total 1\n"));
    CHECK(contains(text, "# TYPE sendry_sync_claim_batch_rows histogram\n"));
    CHECK(contains(text, "\nsendry_sync_claim_batch_rows_bucket{le=\"1\"} 2\n"));
    CHECK(contains(text, "\nsendry_sync_claim_batch_rows_bucket{le=\"10\"} 3\n"));
    CHECK(contains(text, "\nsendry_sync_claim_batch_rows_bucket{le=\"100\"} 3\n"));
    CHECK(contains(text, "\nsendry_sync_claim_batch_rows_bucket{le=\"500\"} 4\n"));
    CHECK(contains(text, "\nsendry_sync_claim_batch_rows_bucket{le=\"1000\"} 5\n"));
    CHECK(contains(text, "\nsendry_sync_claim_batch_rows_bucket{le=\"+Inf\"} 6\n"));
    CHECK(contains(text, "\nsendry_sync_claim_batch_rows_sum 6258\n"));
    CHECK(contains(text, "\nsendry_sync_claim_batch_rows_count 6\n"));
    CHECK(contains(text, "\nsendry_sync_backlog_due_rows 12\n"));
    CHECK(contains(text, "\nsendry_sync_oldest_due_age_seconds 1.5\n"));
    CHECK(contains(text, "\nsendry_sync_webhook_events_total{type=\"contact.updated\",result=\"applied\"} 2\n"));
    CHECK(contains(text, "\nsendry_sync_webhook_events_total{type=\"contact.updated\",result=\"duplicate\"} 1\n"));
    CHECK(contains(text, "\nsendry_sync_webhook_events_total{type=\"invalid\",result=\"unauthorized\"} 1\n"));
    /* quote and backslash escaped, the control byte replaced */
    CHECK(contains(text, "\nsendry_sync_webhook_events_total{type=\"we\\\"ird\\\\type_x\",result=\"ignored\"} 1\n"));
    CHECK(contains(text, "\nsendry_sync_db_connected 1\n"));
    CHECK(contains(text, "\nsendry_sync_sending_stopped 1\n"));
    CHECK(contains(text, "# HELP sendry_sync_sending_stopped "));
    CHECK(text && text[strlen(text) - 1] == '\n');
    /* every sample line is "name[{labels}] value" with a known prefix */
    int bad = 0;
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (!nl)
            break;
        if (line[0] != '#' && strncmp(line, "sendry_sync_", 12) != 0)
            bad++;
        line = nl + 1;
    }
    CHECK(bad == 0);
    free(text);

    /* The type table: long types cut to 64, overflow into "other", then unrecorded. */
    metrics_reset();
    char longtype[200];
    memset(longtype, 'a', sizeof longtype - 1);
    longtype[sizeof longtype - 1] = '\0';
    metrics_webhook(longtype, "applied");
    CHECK(strlen(metrics.webhook[0].type) == METRICS_TYPE_MAX);
    for (int i = 0; i < 100; i++) {
        char t[32];
        snprintf(t, sizeof t, "type.%d", i);
        metrics_webhook(t, "applied");
    }
    CHECK(metrics.webhook_used == METRICS_WEBHOOK_SLOTS - METRICS_WEBHOOK_RESERVED + 1);   /* + other */
    metrics_webhook("type.99", "applied");
    metrics_webhook("type.7", "applied");
    text = metrics_render();
    CHECK(contains(text, "\nsendry_sync_webhook_events_total{type=\"other\",result=\"applied\"} 46\n"));
    CHECK(contains(text, "\nsendry_sync_webhook_events_total{type=\"type.7\",result=\"applied\"} 2\n"));
    free(text);
    for (int i = 0; i < 20; i++) {
        char r[32];
        snprintf(r, sizeof r, "r%d", i);
        metrics_webhook("x", r);
    }
    CHECK(metrics.webhook_used == METRICS_WEBHOOK_SLOTS);
    CHECK(metrics.webhook_unrecorded == 20 - (METRICS_WEBHOOK_RESERVED - 1));
    metrics_set_stopped(false, "ignored");
    CHECK(!metrics.sending_stopped && metrics.stop_reason[0] == '\0');

    /* Events by name and result: their own table, bounded the same way. */
    metrics_reset();
    metrics_event("user.signed_up", "sent");
    metrics_event("user.signed_up", "sent");
    metrics_event("user.signed_up", "deduped");
    metrics_event("trial \"x\"\n", "failed");
    for (int i = 0; i < 400; i++) {
        char n[32];
        snprintf(n, sizeof n, "name.%d", i);
        metrics_event(n, "sent");
    }
    CHECK(metrics.event_used == METRICS_EVENT_SLOTS - METRICS_EVENT_RESERVED + 1);   /* + other */
    CHECK(metrics.webhook_used == 0);
    text = metrics_render();
    CHECK(contains(text, "\nsendry_sync_events_total{name=\"user.signed_up\",result=\"sent\"} 2\n"));
    CHECK(contains(text, "\nsendry_sync_events_total{name=\"user.signed_up\",result=\"deduped\"} 1\n"));
    CHECK(contains(text, "\nsendry_sync_events_total{name=\"trial \\\"x\\\"_\",result=\"failed\"} 1\n"));
    CHECK(contains(text, "\nsendry_sync_events_total{name=\"other\",result=\"sent\"} "));
    CHECK(contains(text, "\nsendry_sync_events_unrecorded_total 0\n"));
    free(text);
    metrics_reset();
}

int main(void)
{
    test_verify_body();
    test_verify_timestamped();
    test_verify_malformed();
    test_parse();
    test_metrics();
    printf("webhook: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

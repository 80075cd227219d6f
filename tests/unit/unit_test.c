/* Unit tests for the pure modules: payload building, response classes, error bodies,
 * Retry-After, backoff, the token bucket, the gate on an injected clock, email masking
 * and configuration.
 * Built with the sanitizers by `make check-unit`. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "config.h"
#include "db_named.h"
#include "budget.h"
#include "gate.h"
#include "log.h"
#include "sendry.h"

#include "check.h"

static struct row *make_row(long long id, const char *email, const char *payload)
{
    struct row *r = calloc(1, sizeof *r);
    r->id = id;
    r->email = sendry_normalize_email(email);
    sendry_row_payload(r, payload, "aud_default");
    r->attempts = 1;
    r->max_attempts = 5;
    return r;
}

static void free_row(struct row *r)
{
    free(r->email);
    free(r->contact);
    for (size_t i = 0; i < r->naudiences; i++)
        free(r->audiences[i]);
    free(r->audiences);
    for (size_t i = 0; i < r->nleave; i++)
        free(r->leave[i]);
    free(r->leave);
    free(r);
}

static void test_payload(void)
{
    struct row *a = make_row(1, "  Ada@Example.COM ",
                             "{\"email\":\"ada@example.com\",\"first_name\":\"Ada\",\"last_name\":\"O'Brien \\\"Q\\\"\","
                             "\"metadata\":{\"supabase_user_id\":\"u1\",\"signup_source\":\"supabase\",\"n\":42,"
                             "\"b\":true,\"nested\":{\"x\":1},\"nul\":null},\"unsubscribed\":false}");
    struct row *b = make_row(2, "zoe@example.com", "{\"first_name\":\"Zo\xc3\xab\"}");
    struct row *c = make_row(3, "x@example.com", NULL);
    CHECK_STR(a->email, "ada@example.com");

    char *single = sendry_contact_body(a, "aud_1");
    CHECK_STR(single, "{\"email\":\"ada@example.com\",\"first_name\":\"Ada\",\"last_name\":\"O'Brien \\\"Q\\\"\","
                      "\"metadata\":{\"supabase_user_id\":\"u1\",\"signup_source\":\"supabase\",\"n\":\"42\","
                      "\"b\":\"true\"},\"audience_id\":\"aud_1\"}");
    CHECK(single && !strstr(single, "unsubscribed"));
    free(single);

    struct row *rows[] = {a, b, c};
    char *batch = sendry_import_body(rows, 3, "aud_1");
    json_object *o = json_tokener_parse(batch);
    json_object *contacts, *aud;
    CHECK(json_object_object_get_ex(o, "contacts", &contacts));
    CHECK(json_object_array_length(contacts) == 3);
    CHECK(json_object_object_get_ex(o, "audience_id", &aud));
    CHECK_STR(json_object_get_string(aud), "aud_1");
    json_object *c1 = json_object_array_get_idx(contacts, 1), *fn;
    CHECK(json_object_object_get_ex(c1, "first_name", &fn));
    CHECK_STR(json_object_get_string(fn), "Zo\xc3\xab");
    json_object *c2 = json_object_array_get_idx(contacts, 2);
    CHECK(json_object_object_length(c2) == 1); /* email only */
    CHECK(!strstr(batch, "unsubscribed"));
    json_object_put(o);
    free(batch);

    /* Names are cut at 200 characters, at a character boundary. */
    char payload[2000] = "{\"first_name\":\"";
    for (int i = 0; i < 300; i++)
        strcat(payload, "\xc3\xab");
    strcat(payload, "\"}");
    struct row *d = make_row(4, "d@example.com", payload);
    json_object *cd = json_tokener_parse(d->contact);
    CHECK(json_object_object_get_ex(cd, "first_name", &fn));
    CHECK(json_object_get_string_len(fn) == 400);
    json_object_put(cd);

    /* The bodies are put together around the contacts' text, as json-c prints them. */
    struct row *pair[] = {b, c};
    char *two = sendry_import_body(pair, 2, "aud\"2");
    CHECK_STR(two, "{\"contacts\":[{\"email\":\"zoe@example.com\",\"first_name\":\"Zo\xc3\xab\"},"
                   "{\"email\":\"x@example.com\"}],\"audience_id\":\"aud\\\"2\"}");
    free(two);
    two = sendry_import_body(pair, 2, NULL);
    CHECK_STR(two, "{\"contacts\":[{\"email\":\"zoe@example.com\",\"first_name\":\"Zo\xc3\xab\"},"
                   "{\"email\":\"x@example.com\"}]}");
    free(two);
    two = sendry_contact_body(c, NULL);
    CHECK_STR(two, "{\"email\":\"x@example.com\"}");
    free(two);
    two = sendry_move_body(b);
    CHECK_STR(two, "{\"email\":\"zoe@example.com\",\"first_name\":\"Zo\xc3\xab\"}");
    free(two);

    /* What else the payload says is read at the same time. */
    struct row *e = make_row(5, "e@example.com", "{\"delete_mode\":\"remove_from_audience\","
                                                 "\"audiences\":[\"default\",\"aud_2\",\"aud_2\"],"
                                                 "\"leave_audiences\":[\"aud_3\",\"default\"]}");
    CHECK(e->remove_only && !a->remove_only);
    CHECK(e->naudiences == 2 && e->nleave == 1);
    CHECK_STR(e->audiences[0], "aud_default");
    CHECK_STR(e->audiences[1], "aud_2");
    CHECK_STR(e->leave[0], "aud_3");
    CHECK(c->naudiences == 1 && c->nleave == 0);
    CHECK_STR(c->audiences[0], "aud_default");

    free_row(a);
    free_row(b);
    free_row(c);
    free_row(d);
    free_row(e);
}

/* An event row's body: name, contact_email, payload and event_id, whatever the payload
 * holds; a malformed payload still makes a body Sendry can reject with a reason. */
static void test_event_body(void)
{
    struct row r = {.email = sendry_normalize_email(" Ada@Example.com")};
    sendry_event_payload(&r, "{\"name\":\"trial_started\",\"payload\":{\"plan\":\"pro\",\"n\":2}}", "ss-x-7");
    CHECK_STR(r.event, "{\"name\":\"trial_started\",\"contact_email\":\"ada@example.com\","
                       "\"payload\":{\"plan\":\"pro\",\"n\":2},\"event_id\":\"ss-x-7\"}");
    CHECK_STR(r.event_name, "trial_started");
    free(r.event);
    free(r.event_name);
    sendry_event_payload(&r, "[1]", "ss-x-8");
    CHECK_STR(r.event, "{\"name\":null,\"contact_email\":\"ada@example.com\",\"payload\":{},"
                       "\"event_id\":\"ss-x-8\"}");
    CHECK_STR(r.event_name, "");
    free(r.event);
    free(r.event_name);
    free(r.email);

    const char *dup = "{\"id\":\"evt_1\",\"deduped\":true}", *fresh = "{\"id\":\"evt_2\"}";
    const char *enveloped = "{\"data\":{\"id\":\"evt_1\",\"deduped\":true}}", *no = "{\"deduped\":false}";
    CHECK(sendry_event_deduped(dup, strlen(dup)));
    CHECK(sendry_event_deduped(enveloped, strlen(enveloped)));
    CHECK(!sendry_event_deduped(fresh, strlen(fresh)));
    CHECK(!sendry_event_deduped(no, strlen(no)));
    CHECK(!sendry_event_deduped("not json", 8));
    CHECK(!sendry_event_deduped(NULL, 0));
}

static void test_classify(void)
{
    CHECK(sendry_classify(true, 200, true) == OUTCOME_SENT);
    CHECK(sendry_classify(true, 204, true) == OUTCOME_SENT);
    CHECK(sendry_classify(false, 0, true) == OUTCOME_RETRY);
    CHECK(sendry_classify(true, 408, true) == OUTCOME_RETRY);
    CHECK(sendry_classify(true, 500, true) == OUTCOME_RETRY);
    CHECK(sendry_classify(true, 503, true) == OUTCOME_RETRY);
    CHECK(sendry_classify(true, 429, true) == OUTCOME_RATE_LIMITED);
    CHECK(sendry_classify(true, 400, true) == OUTCOME_INVALID);
    CHECK(sendry_classify(true, 409, true) == OUTCOME_INVALID);
    CHECK(sendry_classify(true, 422, true) == OUTCOME_INVALID);
    CHECK(sendry_classify(true, 404, false) == OUTCOME_INVALID);
    CHECK(sendry_classify(true, 404, true) == OUTCOME_STOP);
    CHECK(sendry_classify(true, 401, true) == OUTCOME_STOP);
    CHECK(sendry_classify(true, 402, true) == OUTCOME_STOP);
    CHECK(sendry_classify(true, 403, true) == OUTCOME_STOP);
}

static void test_errors(void)
{
    char code[64], msg[128];
    double ra;

    const char *nested = "{\"error\":{\"code\":\"rate_limited\",\"message\":\"Slow down\",\"retry_after\":7}}";
    code[0] = msg[0] = '\0';
    ra = -1;
    sendry_parse_error(nested, strlen(nested), code, sizeof code, msg, sizeof msg, &ra);
    CHECK_STR(code, "rate_limited");
    CHECK_STR(msg, "Slow down");
    CHECK(ra == 7);

    const char *flat = "{\"statusCode\":403,\"code\":\"insufficient_scope\",\"message\":\"needs full_access\",\"details\":{}}";
    code[0] = msg[0] = '\0';
    ra = -1;
    sendry_parse_error(flat, strlen(flat), code, sizeof code, msg, sizeof msg, &ra);
    CHECK_STR(code, "insufficient_scope");
    CHECK_STR(msg, "needs full_access");
    CHECK(ra == -1);

    const char *junk = "<html>Bad Gateway</html>";
    code[0] = msg[0] = '\0';
    sendry_parse_error(junk, strlen(junk), code, sizeof code, msg, sizeof msg, &ra);
    CHECK_STR(code, "");
    CHECK_STR(msg, "");

    /* Truncated body: no crash, nothing found. */
    sendry_parse_error(nested, 10, code, sizeof code, msg, sizeof msg, &ra);

    CHECK(sendry_retry_after("3", 0) == 3);
    CHECK(sendry_retry_after(" 15 ", 0) == 15);
    /* Retry-After is delay-seconds (1*DIGIT) or an HTTP-date: nothing else is a delay. */
    const char *not_delays[] = {"1.5", "nan", "NaN", "inf", "-inf", "-3", "+3", "0x10", "1e3",
                                "3 s", "3;", "infinity"};
    for (size_t i = 0; i < sizeof not_delays / sizeof not_delays[0]; i++)
        CHECK(sendry_retry_after(not_delays[i], 0) == -1);
    CHECK(sendry_retry_after("", 0) == -1);
    CHECK(sendry_retry_after(NULL, 0) == -1);
    CHECK(sendry_retry_after("soon", 0) == -1);
    /* Sun, 06 Nov 1994 08:49:37 GMT = 784111777 */
    CHECK(sendry_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111770) == 7);
    CHECK(sendry_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111800) == 0);
}

static void test_backoff(void)
{
    CHECK(backoff_delay(1, 3600, 1, 0.5) == 0.5);
    CHECK(backoff_delay(1, 3600, 3, 0.5) == 2.0);
    CHECK(backoff_delay(1, 3600, 30, 0.5) == 1800);
    CHECK(backoff_delay(1, 3600, 1000, 0.5) == 1800);
    CHECK(backoff_delay(1, 10, 5, 0.0) == 0);
    CHECK(backoff_delay(1, 10, 5, 1.0) < 10);

    uint64_t seed = 42;
    double lo = 1, hi = 0;
    for (int i = 0; i < 10000; i++) {
        double u = rand_unit(&seed);
        lo = fmin(lo, u);
        hi = fmax(hi, u);
    }
    CHECK(lo >= 0 && hi < 1);
    CHECK(lo < 0.01 && hi > 0.99);

    struct token_bucket b;
    bucket_init(&b, 9, 9, 100.0);
    int got = 0;
    for (int i = 0; i < 20; i++)
        if (bucket_take(&b, 100.0) == 0)
            got++;
    CHECK(got == 9);
    double wait = bucket_take(&b, 100.0);
    CHECK(wait > 0.1 && wait < 0.12);
    CHECK(bucket_take(&b, 100.0 + 1.0 / 9 + 1e-9) == 0);
    /* Over any 10 s, at most burst + 10 * rate = 99 requests: under Sendry's 100. */
    bucket_init(&b, 9, 9, 0);
    got = 0;
    for (double t = 0; t < 10.0; t += 0.001)
        while (bucket_take(&b, t) == 0)
            got++;
    CHECK(got <= 99);
    struct token_bucket unl;
    bucket_init(&unl, 0, 0, 0);
    CHECK(bucket_take(&unl, 0) == 0);
}

/* The gate on a clock the test sets: "wall-clock" steps are what the test does to it. */
static double fake_clock(void *ud)
{
    return *(double *)ud;
}

static void test_gate_clock(void)
{
    double t = 1000;
    struct gate *g = gate_new(10, 2, 0, fake_clock, &t);
    CHECK(gate_ask(g, GATE_LIVE) == 0 && gate_ask(g, GATE_LIVE) == 0);
    double w = gate_ask(g, GATE_LIVE);
    CHECK(w > 0.09 && w < 0.11);
    t -= 3600;                            /* a step back: never an hour without tokens */
    w = gate_ask(g, GATE_LIVE);
    CHECK(w > 0 && w <= 0.11);
    t += 0.11;
    CHECK(gate_ask(g, GATE_LIVE) == 0);

    CHECK(gate_pause(g, 30, 0) == 30);    /* a 429 with Retry-After: 30 */
    CHECK(gate_state(g) == GATE_PAUSED);
    t -= 600;                             /* a step back neither lengthens the pause */
    w = gate_peek(g, GATE_LIVE);
    CHECK(w > 29.9 && w <= 30);
    t += 29.9;                            /* nor does time short of it end it */
    CHECK(gate_state(g) == GATE_PAUSED && gate_ask(g, GATE_LIVE) > 0);
    t += 0.1;
    CHECK(gate_state(g) == GATE_OPEN && gate_ask(g, GATE_LIVE) == 0);
    gate_free(g);

    /* The real clock is monotonic: readings never go back. */
    struct gate *m = gate_new(0, 0, 0, NULL, NULL);
    double a = gate_now(m), b = gate_now(m);
    CHECK(b >= a);
    gate_free(m);
}

static void test_gate_pause_values(void)
{
    double t = 0;
    struct gate *g = gate_new(0, 0, 0, fake_clock, &t);
    gate_set_backoff(g, 1, 60);
    /* No delay, or one no limit needs (NaN, infinity, a day): the backoff, within its cap. */
    double odd[] = {-1, NAN, INFINITY, -INFINITY, 86400, GATE_PAUSE_CAP + 1};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        double p = gate_pause(g, odd[i], 0.5);
        CHECK(p >= 0 && p <= 60);
        t += 61;
    }
    CHECK(gate_pause(g, GATE_PAUSE_CAP, 0) == GATE_PAUSE_CAP);
    CHECK(gate_pause(g, 5, 0) == 5);          /* a shorter pause keeps the longer one */
    CHECK(gate_peek(g, GATE_LIVE) > GATE_PAUSE_CAP - 1);
    gate_free(g);
}

static void test_gate_stop_and_probes(void)
{
    double t = 0;
    struct gate *g = gate_new(0, 0, 0, fake_clock, &t);
    CHECK(gate_stop(g, "401 invalid key", t));
    CHECK(gate_state(g) == GATE_STOPPED && strcmp(gate_cause(g), "401 invalid key") == 0);
    CHECK(gate_ask(g, GATE_LIVE) == GATE_PROBE_FIRST);
    t += GATE_PROBE_FIRST;
    CHECK(gate_ask(g, GATE_LIVE) == 0);       /* the period's one probe */
    CHECK(gate_ask(g, GATE_LIVE) == GATE_PROBE_FIRST);
    CHECK(!gate_stop(g, "late", -1));         /* started before the stop began: no news */
    CHECK(gate_probe_in(g) == GATE_PROBE_FIRST);
    CHECK(gate_stop(g, "401 again", t));      /* the probe's refusal: the wait doubles */
    CHECK(gate_probe_in(g) == 2 * GATE_PROBE_FIRST);
    for (int i = 0; i < 10; i++)
        gate_stop(g, "401", gate_now(g));
    CHECK(gate_probe_in(g) == GATE_PROBE_MAX);
    gate_probe_now(g);                        /* a new key: probe at once */
    CHECK(gate_ask(g, GATE_LIVE) == 0);
    CHECK(gate_accepted(g) && gate_state(g) == GATE_OPEN && gate_cause(g)[0] == '\0');
    CHECK(!gate_accepted(g));
    gate_free(g);
}

/* Transient failures across the board: the third in a row stops sending (an outage),
 * with probes from 5 s doubling to 60 s; any answer in between ends the run; failures
 * while stopped are not the rows' own; an answer resumes. */
static void test_gate_outage(void)
{
    double t = 100;
    struct gate *g = gate_new(0, 0, 0, fake_clock, &t);
    CHECK(!gate_transient(g, "503", t) && !gate_transient(g, "503", t));
    CHECK(!gate_answered(g));                  /* a 422 between: the provider is up */
    CHECK(!gate_transient(g, "503", t) && !gate_transient(g, "503", t));
    CHECK(gate_transient(g, "503", t));        /* the third in a row */
    CHECK(gate_state(g) == GATE_STOPPED && gate_outage(g));
    CHECK(gate_probe_in(g) == GATE_PROBE_SOON && GATE_PROBE_SOON <= 5);
    CHECK(gate_transient(g, "late", t - 1));   /* in flight when the pause began: not counted */
    CHECK(gate_probe_in(g) == GATE_PROBE_SOON); /* ... and says nothing new */
    t += GATE_PROBE_SOON;
    CHECK(gate_ask(g, GATE_LIVE) == 0);        /* the probe */
    CHECK(gate_transient(g, "refused", t));    /* fails: the wait doubles */
    CHECK(gate_probe_in(g) == 2 * GATE_PROBE_SOON);
    for (int i = 0; i < 10; i++)
        gate_transient(g, "refused", gate_now(g));
    CHECK(gate_probe_in(g) == GATE_PROBE_SOON_MAX);
    CHECK(gate_answered(g) && gate_state(g) == GATE_OPEN);   /* any answer resumes */
    CHECK(!gate_outage(g));
    /* A refusal is not an outage: its first probe waits a minute; transient failures
     * while refused count nothing and change nothing. */
    CHECK(gate_stop(g, "401", gate_now(g)));
    CHECK(gate_transient(g, "503", gate_now(g)) && !gate_outage(g));
    CHECK(gate_probe_in(g) == GATE_PROBE_FIRST);
    CHECK(!gate_answered(g) && gate_state(g) == GATE_STOPPED);
    gate_probe_soon(g);                        /* the cause may pass by itself after all */
    CHECK(gate_probe_in(g) == GATE_PROBE_SOON);
    gate_free(g);
}

/* The key's budget never lets a window of the provider's length carry more than
 * rate x window requests: the burst plus what fills in the window, the margin and the
 * hold of a token. */
static void test_budget_fits_the_window(void)
{
    const double rates[] = {0.5, 1.8, 2, 9, 10, 40, 1000}, windows[] = {1, 2, 10, 60};
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        for (size_t k = 0; k < sizeof windows / sizeof windows[0]; k++) {
            double r = rates[i], w = windows[k];
            double burst = budget_burst(r), fill = budget_fill_rate(r, w);
            CHECK(burst >= 2 && fill > 0);
            if (r * w > burst)
                CHECK(burst + fill * (w * (1 + BUDGET_MARGIN) + BUDGET_HOLD) <= r * w + 1e-9);
        }
    }
    CHECK(budget_fill_rate(2, 10) > 0.8 * 2);   /* 20 per 10 s: some 82 % of it */
    CHECK(budget_fill_rate(9, 10) > 0.85 * 9);
}

static void test_gate_live_share(void)
{
    double t = 0;
    struct gate *g = gate_new(1, 10, 0.2, fake_clock, &t);
    CHECK(gate_reserve(g) == 2);
    int bulk = 0;
    while (gate_ask(g, GATE_BULK) == 0)
        bulk++;
    CHECK(bulk == 8);                         /* bulk leaves the live share */
    CHECK(gate_ask(g, GATE_LIVE) == 0 && gate_ask(g, GATE_LIVE) == 0);
    CHECK(gate_ask(g, GATE_LIVE) > 0);
    gate_free(g);
}

static void test_mask(void)
{
    char buf[64];
    mask_email("john@example.com", buf, sizeof buf);
    CHECK_STR(buf, "j***@example.com");
    mask_email("noatsign", buf, sizeof buf);
    CHECK_STR(buf, "***");
    mask_email("@x.com", buf, sizeof buf);
    CHECK_STR(buf, "***");
    mask_email("", buf, sizeof buf);
    CHECK_STR(buf, "(none)");
    mask_email(NULL, buf, sizeof buf);
    CHECK_STR(buf, "(none)");

    char out[128];
    mask_emails_in("email 'John.Doe+x@Example.com' is invalid; also a@b.co.", out, sizeof out);
    CHECK_STR(out, "email 'J***@Example.com' is invalid; also a***@b.co.");
    mask_emails_in("no address @ here, user@ nor @host", out, sizeof out);
    CHECK_STR(out, "no address @ here, user@ nor @host");
    mask_emails_in("x@y.z", out, 4);
    CHECK(strlen(out) == 3);

    char s1[] = "ok \xc3\xab \xff end";
    utf8_sanitize(s1);
    CHECK_STR(s1, "ok \xc3\xab ? end");
    char s2[] = "cut \xe2\x82";       /* a 3-byte character missing its last byte */
    utf8_sanitize(s2);
    CHECK_STR(s2, "cut ");
    char s3[] = "\xc3x";               /* a lead byte followed by ASCII */
    utf8_sanitize(s3);
    CHECK_STR(s3, "?x");
}

static void test_config(void)
{
    struct config cfg;
    char err[256];
    setenv("DATABASE_URL", "host=/tmp", 1);
    setenv("SENDRY_API_KEY", "sn_test_secret", 1);
    setenv("SENDRY_AUDIENCE_ID", "aud_1", 1);
    unsetenv("SENDRY_API_KEY_FILE");
    unsetenv("SENDRY_API_URL");

    char *ok[] = {"sendry-sync", "--batch-size", "10", "--rate=0", "--mode", "single", "--once", NULL};
    CHECK(config_load(&cfg, 7, ok, err, sizeof err));
    CHECK(cfg.batch_size == 10 && cfg.rate == 0 && cfg.mode == MODE_SINGLE && cfg.once);
    CHECK_STR(cfg.api_url, "https://api.sendry.online");
    config_free(&cfg);

    char *big[] = {"sendry-sync", "--batch-size", "1001", NULL};
    CHECK(!config_load(&cfg, 3, big, err, sizeof err));
    CHECK(strstr(err, "--batch-size") != NULL);
    config_free(&cfg);

    char *unknown[] = {"sendry-sync", "--frobnicate", NULL};
    CHECK(!config_load(&cfg, 2, unknown, err, sizeof err));
    CHECK(strstr(err, "--frobnicate") != NULL);
    config_free(&cfg);

    char *missing[] = {"sendry-sync", "--lease", NULL};
    CHECK(!config_load(&cfg, 2, missing, err, sizeof err));
    CHECK(strstr(err, "--lease needs a value") != NULL);
    config_free(&cfg);

    char *migrate[] = {"sendry-sync", "migrate", NULL};
    unsetenv("SENDRY_API_KEY");
    CHECK(config_load(&cfg, 2, migrate, err, sizeof err));
    CHECK(cfg.command == CMD_MIGRATE);
    config_free(&cfg);

    char *run[] = {"sendry-sync", NULL};
    CHECK(!config_load(&cfg, 1, run, err, sizeof err));
    CHECK(strstr(err, "SENDRY_API_KEY") != NULL);
    config_free(&cfg);

    setenv("SENDRY_API_KEY", "sn_test_secret", 1);
    setenv("SENDRY_API_URL", "ftp://example.com", 1);
    CHECK(!config_load(&cfg, 1, run, err, sizeof err));
    CHECK(strstr(err, "SENDRY_API_URL") != NULL);
    CHECK(strstr(err, "sn_test_secret") == NULL);
    config_free(&cfg);

    setenv("SENDRY_API_URL", "http://127.0.0.1:1/", 1);
    CHECK(config_load(&cfg, 1, run, err, sizeof err));
    CHECK_STR(cfg.api_url, "http://127.0.0.1:1");
    config_free(&cfg);

    setenv("SENDRY_AUDIENCE_ID", "aud/../x", 1);
    CHECK(!config_load(&cfg, 1, run, err, sizeof err));
    CHECK(strstr(err, "SENDRY_AUDIENCE_ID") != NULL);
    config_free(&cfg);
}

/* The key sources, the commands and the flags that belong to one command. */
static void test_config_commands(void)
{
    struct config cfg;
    char err[256];
    setenv("DATABASE_URL", "host=/tmp", 1);
    setenv("SENDRY_AUDIENCE_ID", "aud_1", 1);
    unsetenv("SENDRY_API_URL");
    unsetenv("SENDRY_API_KEY_FILE");
    unsetenv("SENDRY_LISTEN");
    char *run[] = {"sendry-sync", NULL};

    setenv("SENDRY_API_KEY", "sn_test_secret", 1);
    setenv("SENDRY_API_KEY_VAULT", "sendry_api_key", 1);
    CHECK(!config_load(&cfg, 1, run, err, sizeof err));
    CHECK(strstr(err, "SENDRY_API_KEY and SENDRY_API_KEY_VAULT are both set") != NULL);
    CHECK(strstr(err, "sn_test_secret") == NULL);
    config_free(&cfg);

    unsetenv("SENDRY_API_KEY");
    CHECK(config_load(&cfg, 1, run, err, sizeof err));
    CHECK(cfg.key_source == KEY_VAULT && cfg.api_key == NULL);
    CHECK_STR(cfg.api_key_vault, "sendry_api_key");
    config_free(&cfg);

    char *file_flag[] = {"sendry-sync", "--api-key-file", "/nonexistent/key", NULL};
    CHECK(!config_load(&cfg, 3, file_flag, err, sizeof err));
    CHECK(strstr(err, "/nonexistent/key") != NULL);
    config_free(&cfg);
    unsetenv("SENDRY_API_KEY_VAULT");

    char *json_run[] = {"sendry-sync", "--json", NULL};
    setenv("SENDRY_API_KEY", "sn_test_secret", 1);
    CHECK(!config_load(&cfg, 2, json_run, err, sizeof err));
    CHECK(strstr(err, "--json does not apply to the worker") != NULL);
    config_free(&cfg);

    unsetenv("SENDRY_API_KEY");
    char *doctor[] = {"sendry-sync", "doctor", "--json", NULL};
    CHECK(config_load(&cfg, 3, doctor, err, sizeof err)); /* doctor reports a missing key itself */
    CHECK(cfg.command == CMD_DOCTOR && cfg.output == OUTPUT_JSON && cfg.key_source == KEY_NONE);
    config_free(&cfg);

    unsetenv("DATABASE_URL");
    char *print[] = {"sendry-sync", "migrate", "--print", NULL};
    CHECK(config_load(&cfg, 3, print, err, sizeof err));
    CHECK(cfg.command == CMD_MIGRATE && cfg.migrate_action == MIGRATE_PRINT);
    config_free(&cfg);

    char *health[] = {"sendry-sync", "healthcheck", NULL};
    CHECK(!config_load(&cfg, 2, health, err, sizeof err));
    CHECK(strstr(err, "DATABASE_URL") != NULL);
    config_free(&cfg);
    setenv("SENDRY_LISTEN", ":8080", 1);
    CHECK(config_load(&cfg, 2, health, err, sizeof err)); /* asks /healthz: no database needed */
    CHECK(cfg.command == CMD_HEALTHCHECK);
    CHECK_STR(cfg.listen, ":8080");
    config_free(&cfg);
    unsetenv("SENDRY_LISTEN");

    CHECK(config_check_api_key("sn_test_ok", "X", err, sizeof err));
    CHECK(!config_check_api_key("sn test", "X", err, sizeof err));
    CHECK(strstr(err, "X: the API key contains whitespace") != NULL);
    CHECK(!config_check_api_key("", "X", err, sizeof err));
}

/* db_named: what each answer to a named statement's send asks for next. */
static void test_named(void)
{
    static const char claim[] = "claim", done[] = "done";
    struct db_named nm = {0};
    struct named_try t = {0};
    char name[32];
    CHECK(db_named_step(&nm, NULL, &t, name, sizeof name) == NAMED_PLAIN);
    /* First run: prepare, then execute; the second run executes at once. */
    CHECK(db_named_step(&nm, claim, &t, name, sizeof name) == NAMED_PREPARE);
    CHECK(strcmp(name, "claim_0") == 0);
    CHECK(db_named_answer(&nm, claim, &t, true, NULL) == NAMED_SEND);
    CHECK(db_named_step(&nm, claim, &t, name, sizeof name) == NAMED_EXECUTE);
    CHECK(db_named_answer(&nm, claim, &t, false, "42501") == NAMED_DONE);   /* its own error */
    struct named_try t2 = {0};
    CHECK(db_named_step(&nm, claim, &t2, name, sizeof name) == NAMED_EXECUTE);
    /* Stale (0A000): prepared again once, under the next name; stale again: its error. */
    CHECK(db_named_answer(&nm, claim, &t2, false, "0A000") == NAMED_SEND_STALE);
    CHECK(db_named_step(&nm, claim, &t2, name, sizeof name) == NAMED_PREPARE);
    CHECK(strcmp(name, "claim_1") == 0);
    CHECK(db_named_answer(&nm, claim, &t2, true, NULL) == NAMED_SEND);
    CHECK(db_named_step(&nm, claim, &t2, name, sizeof name) == NAMED_EXECUTE);
    CHECK(db_named_answer(&nm, claim, &t2, false, "0A000") == NAMED_DONE);
    /* A name taken (42P05): every statement moves on, at most DB_MAX_NAMED times. */
    struct named_try t3 = {0};
    CHECK(db_named_step(&nm, done, &t3, name, sizeof name) == NAMED_PREPARE);
    for (int i = 0; i < DB_MAX_NAMED; i++)
        CHECK(db_named_answer(&nm, done, &t3, false, "42P05") == NAMED_SEND_TAKEN);
    CHECK(db_named_answer(&nm, done, &t3, false, "42P05") == NAMED_DONE);
    CHECK(nm.n == 0 && nm.generation == 1 + DB_MAX_NAMED);
    /* Gone (26000) twice: preparing stops, and the query goes plain. */
    struct named_try t4 = {0};
    CHECK(db_named_step(&nm, claim, &t4, name, sizeof name) == NAMED_PREPARE);
    CHECK(db_named_answer(&nm, claim, &t4, true, NULL) == NAMED_SEND);
    CHECK(db_named_step(&nm, claim, &t4, name, sizeof name) == NAMED_EXECUTE);
    CHECK(db_named_answer(&nm, claim, &t4, false, "26000") == NAMED_SEND_STALE);
    CHECK(db_named_step(&nm, claim, &t4, name, sizeof name) == NAMED_PREPARE);
    CHECK(db_named_answer(&nm, claim, &t4, true, NULL) == NAMED_SEND);
    CHECK(db_named_step(&nm, claim, &t4, name, sizeof name) == NAMED_EXECUTE);
    CHECK(db_named_answer(&nm, claim, &t4, false, "26000") == NAMED_SEND_OFF);
    CHECK(db_named_step(&nm, claim, &t4, name, sizeof name) == NAMED_PLAIN);
    /* Replan: the old names given back once, then nothing to deallocate. */
    struct db_named r = {0};
    struct named_try t5 = {0};
    db_named_step(&r, claim, &t5, name, sizeof name);
    db_named_answer(&r, claim, &t5, true, NULL);
    size_t old;
    unsigned gen;
    db_named_replan(&r, &old, &gen);
    CHECK(old == 1 && gen == 0 && r.prepared[0] == claim && r.generation == 1);
    db_named_replan(&r, &old, &gen);
    CHECK(old == 0 && r.generation == 1);
}

int main(void)
{
    test_payload();
    test_event_body();
    test_classify();
    test_errors();
    test_backoff();
    test_gate_clock();
    test_gate_pause_values();
    test_gate_stop_and_probes();
    test_gate_live_share();
    test_gate_outage();
    test_budget_fits_the_window();
    test_mask();
    test_config();
    test_config_commands();
    test_named();
    printf("unit: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

/* doctor_api: Sendry as the worker will meet it: the API key (from the configuration
 * or read from Vault on the doctor's connection), whether Sendry accepts it and lets it
 * write contacts and send events, the audience, and the webhook secret --listen needs. Run by doctor.c
 * (see doctor_priv.h). */
#include "doctor_priv.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events_scope.h"
#include "probe.h"
#include "vault.h"

#define API_TIMEOUT_MS 15000L

/* The key, from the configuration or read from Vault on the doctor's connection. */
static bool find_key(struct doctor *d, struct check *c)
{
    const struct config *cfg = d->cfg;
    if (cfg->key_source != KEY_VAULT) {
        d->key = cfg->api_key && *cfg->api_key ? cfg->api_key : NULL;
        if (!d->key) {
            doctor_report(c, CHECK_FAIL, "no API key configured");
            doctor_fix(c, "set SENDRY_API_KEY_FILE (a file holding the key), SENDRY_API_KEY, or "
                          "SENDRY_API_KEY_VAULT (a secret in Supabase Vault)");
        }
        return d->key != NULL;
    }
    if (!d->conn) {
        doctor_report(c, CHECK_SKIP, "the key is in Vault and there is no database connection");
        return false;
    }
    char err[1024];
    if (vault_read_key(d->conn, cfg->api_key_vault, &d->vault_key, err, sizeof err) != VAULT_OK) {
        doctor_report(c, CHECK_FAIL, "%s", err);
        doctor_fix(c, "see the message: create the secret, install Vault or grant the role access");
        return false;
    }
    d->key = d->vault_key;
    return true;
}

static char *api_url(const struct doctor *d, const char *path)
{
    size_t n = strlen(d->cfg->api_url) + strlen(path) + 1;
    char *url = malloc(n);
    if (url)
        snprintf(url, n, "%s%s", d->cfg->api_url, path);
    return url;
}

/* What to do about a request that did not run: the hint in its error names a TLS cause
 * (http_error_hint); else the URL, the network, a proxy, a CA. */
static const char *api_fix(const struct doctor *d, const struct probe *p)
{
    if (strstr(p->error, "not for this host name"))
        return "check the host in SENDRY_API_URL; a proxy or a private CA must issue the certificate for it";
    if (strstr(p->error, "signed the server's certificate") && d->cfg->ca_file)
        return "give in --ca-file / SENDRY_CA_FILE the certificate of the CA that signed the server's";
    return "check SENDRY_API_URL and the network; through a proxy set https_proxy (and NO_PROXY); "
           "for a private CA or a TLS-intercepting proxy --ca-file / SENDRY_CA_FILE";
}

/* One request to Sendry with the key; false (with the reason in c) if it did not run. */
static bool call_api(struct doctor *d, struct check *c, struct probe *p, const char *method,
                     const char *path, const char *body)
{
    char *url = api_url(d, path);
    *p = (struct probe){.method = method, .url = url, .body = body, .api_key = d->key,
                        .ca_file = d->cfg->ca_file, .timeout_ms = API_TIMEOUT_MS};
    bool ok = url && probe_run(p);
    if (!ok) {
        doctor_report(c, CHECK_FAIL, "%s %s: %s", method, url ? url : path,
                      url ? p->error : "out of memory");
        doctor_fix(c, "%s", api_fix(d, p));
    }
    free(url);
    p->url = NULL;
    return ok;
}

static void remember_audience(struct doctor *d, const struct probe *p)
{
    d->audience_status = p->status;
    if (p->status != 200)
        return;
    json_object *o = json_tokener_parse(p->response ? p->response : ""), *name = NULL, *count = NULL;
    if (o) {
        json_object_object_get_ex(o, "name", &name);
        json_object_object_get_ex(o, "member_count", &count);
    }
    snprintf(d->audience_summary, sizeof d->audience_summary, "\"%s\", %s members",
             name ? json_object_get_string(name) : "?", count ? json_object_get_string(count) : "?");
    json_object_put(o);
}

/* GET /v1/audiences/{id} (or the list, without an audience): 401 is a bad key. */
void doctor_check_api_key(struct doctor *d, struct check *c)
{
    if (!find_key(d, c))
        return;
    char path[256];
    if (d->cfg->audience_id)
        snprintf(path, sizeof path, "/v1/audiences/%s", d->cfg->audience_id);
    else
        snprintf(path, sizeof path, "/v1/audiences?limit=1");
    struct probe p;
    if (!call_api(d, c, &p, "GET", path, NULL))
        return;
    const char *source = config_key_source_name(d->cfg->key_source);
    if (p.status == 401 || p.status == 403) {
        d->key_verdict = KEY_REFUSED;
        doctor_report(c, CHECK_FAIL, "GET %s: HTTP %ld: Sendry %s the key from %s", path, p.status,
                      p.status == 401 ? "does not know or no longer accepts" : "refuses a read with",
                      source);
        doctor_fix(c, "create a full_access key in Sendry (sn_live_...) and put it in %s", source);
    } else if (p.status == 200 || p.status == 404) {
        d->key_verdict = KEY_ACCEPTED;
        remember_audience(d, &p);
        doctor_report(c, CHECK_OK, "Sendry accepts the key from %s (%s)", source, d->cfg->api_url);
    } else {
        doctor_report(c, CHECK_WARN, "GET %s answered HTTP %ld: the key could not be checked", path,
                      p.status);
        doctor_fix(c, "run doctor again later; 429 means this key is rate limited right now");
    }
    probe_free(&p);
}

void doctor_check_audience(struct doctor *d, struct check *c)
{
    if (!d->cfg->audience_id) {
        doctor_report(c, CHECK_FAIL, "SENDRY_AUDIENCE_ID is not set");
        doctor_fix(c, "set SENDRY_AUDIENCE_ID (or --audience-id) to the id of the audience (aud_...)");
    } else if (d->key_verdict != KEY_ACCEPTED || d->audience_status == 0) {
        doctor_report(c, CHECK_SKIP, "needs an accepted key");
    } else if (d->audience_status == 404) {
        doctor_report(c, CHECK_FAIL, "no audience %s that this key can see (404)", d->cfg->audience_id);
        doctor_fix(c, "set SENDRY_AUDIENCE_ID to an audience of this key's account (Sendry dashboard, "
                      "or GET /v1/audiences)");
    } else {
        doctor_report(c, CHECK_OK, "audience %s exists (%s)", d->cfg->audience_id, d->audience_summary);
    }
}

/* Scope cannot be read with a read-only call. An import of no contacts is a write that
 * changes nothing: a key without write scope gets 403; a key with it gets 2xx, or a 422
 * for the empty list (Sendry checks the key's scope before the body, as the fake does). */
void doctor_check_scope(struct doctor *d, struct check *c)
{
    if (d->key_verdict != KEY_ACCEPTED) {
        doctor_report(c, CHECK_SKIP, "needs an accepted key");
        return;
    }
    struct probe p;
    if (!call_api(d, c, &p, "POST", "/v1/contacts/import", "{\"contacts\":[]}"))
        return;
    long st = p.status;
    if (st >= 200 && st < 300) {
        doctor_report(c, CHECK_OK, "an import of no contacts was accepted (HTTP %ld): the key may write "
                      "contacts", st);
    } else if (st == 400 || st == 422) {
        doctor_report(c, CHECK_OK, "an import of no contacts was refused as invalid (HTTP %ld), not for "
                      "the key's scope (403): the key may write contacts", st);
    } else if (st == 403) {
        doctor_report(c, CHECK_FAIL, "POST /v1/contacts/import: HTTP 403: the key lacks the scope to "
                      "write contacts (read_only or sending_access)");
        doctor_fix(c, "create a full_access key in Sendry and put it in %s",
                   config_key_source_name(d->cfg->key_source));
    } else {
        doctor_report(c, CHECK_WARN, "POST /v1/contacts/import answered HTTP %ld: the scope stays unknown "
                      "until the first write (a 403 there stops sending)", st);
        doctor_fix(c, "run doctor again later");
    }
    probe_free(&p);
}

/* GET /v1/events?limit=1, as the worker asks at start: a key without the scope for events
 * is refused with 403 (a read, so nothing is written). */
void doctor_check_events_scope(struct doctor *d, struct check *c)
{
    if (d->key_verdict != KEY_ACCEPTED) {
        doctor_report(c, CHECK_SKIP, "needs an accepted key");
        return;
    }
    struct probe p;
    if (!call_api(d, c, &p, "GET", "/v1/events?limit=1", NULL))
        return;
    switch (events_scope_verdict(true, p.status)) {
    case EVENTS_SCOPE_GRANTED:
        doctor_report(c, CHECK_OK, "GET /v1/events answered HTTP %ld: the key may send events", p.status);
        break;
    case EVENTS_SCOPE_MISSING:
        doctor_report(c, CHECK_FAIL, "GET /v1/events: HTTP 403: %s; contacts sync, but the first event "
                      "due (sendry_settings.events, sendry_track) stops sending", EVENTS_SCOPE_HINT);
        doctor_fix(c, "create a full_access key in Sendry and put it in %s",
                   config_key_source_name(d->cfg->key_source));
        break;
    case EVENTS_SCOPE_UNKNOWN:
        doctor_report(c, CHECK_WARN, "GET /v1/events answered HTTP %ld: the events scope stays unknown "
                      "until the first event (a 403 there stops sending)", p.status);
        doctor_fix(c, "run doctor again later");
        break;
    }
    probe_free(&p);
}

void doctor_check_webhook(struct doctor *d, struct check *c)
{
    const struct config *cfg = d->cfg;
    if (!cfg->listen) {
        doctor_report(c, CHECK_SKIP, "no --listen: no webhook endpoint");
    } else if (!cfg->webhook_secret || strlen(cfg->webhook_secret) < 16) {
        doctor_report(c, CHECK_FAIL, "--listen %s is set but SENDRY_WEBHOOK_SECRET is %s", cfg->listen,
                      cfg->webhook_secret ? "shorter than 16 characters" : "not set");
        doctor_fix(c, "set SENDRY_WEBHOOK_SECRET to the signing secret (whsec_...) Sendry showed when the "
                      "webhook was created");
    } else {
        doctor_report(c, CHECK_OK, "--listen %s with a webhook secret", cfg->listen);
    }
}


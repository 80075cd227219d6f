#include "doctor.h"

#include <json-c/json.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dbsync.h"
#include "http.h"
#include "log.h"
#include "migrate.h"
#include "probe.h"
#include "vault.h"

/* ---- what install.sql creates: the one list to keep in step with it ------------------- */

enum object_kind { OBJ_TABLE, OBJ_VIEW, OBJ_INDEX, OBJ_FUNCTION, OBJ_USERS_TRIGGER };
enum object_scope { EVERYWHERE, WITH_AUTH_USERS };   /* only where auth.users exists */

static const struct expected {
    enum object_kind kind;
    const char *name;      /* a relation, a function's signature, or a trigger on auth.users */
    enum object_scope scope;
} expected[] = {
    {OBJ_TABLE, "public.sendry_outbox", EVERYWHERE},
    {OBJ_TABLE, "public.sendry_settings", EVERYWHERE},
    {OBJ_TABLE, "public.sendry_inbox", EVERYWHERE},
    {OBJ_TABLE, "public.sendry_sync_state", EVERYWHERE},
    {OBJ_VIEW, "public.sendry_outbox_stats", EVERYWHERE},
    {OBJ_INDEX, "public.sendry_outbox_claim_idx", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_schema_version()", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_outbox_notify_insert()", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_outbox_notify_update()", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_inbox_receive(text, text, jsonb, text)", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_contact_payload(auth.users)", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_inbox_apply(bigint)", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_auth_users_inserted()", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_auth_users_updated()", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_auth_users_deleted()", WITH_AUTH_USERS},
    {OBJ_USERS_TRIGGER, "sendry_sync_users_insert", WITH_AUTH_USERS},
    {OBJ_USERS_TRIGGER, "sendry_sync_users_update", WITH_AUTH_USERS},
    {OBJ_USERS_TRIGGER, "sendry_sync_users_delete", WITH_AUTH_USERS},
};

#define N_EXPECTED (sizeof expected / sizeof expected[0])
#define KIND(k) (1u << (k))

/* Thresholds of the warnings. */
#define NOTIFY_WAIT_MS 3000
#define HORIZON_MAX_XIDS 10000000LL       /* transactions behind the oldest xmin */
#define HORIZON_MAX_SECONDS 3600.0        /* the oldest transaction holding it */
#define DEAD_ROWS_MIN 10000LL             /* and more than autovacuum's 20% + 50 */
#define API_TIMEOUT_MS 15000L

/* ---- results ------------------------------------------------------------------------ */

enum check_state { CHECK_OK, CHECK_WARN, CHECK_FAIL, CHECK_SKIP };
static const char *const state_names[] = {"ok", "warn", "fail", "skip"};
static const char *const state_labels[] = {"ok  ", "WARN", "FAIL", "skip"};

struct check {
    const char *name;
    enum check_state state;
    char detail[1024];
    char fix[1024];
};

enum key_verdict { KEY_UNTRIED, KEY_ACCEPTED, KEY_REFUSED };
enum users_table { USERS_UNKNOWN, USERS_PRESENT, USERS_ABSENT };

struct doctor {
    const struct config *cfg;
    PGconn *conn;              /* NULL when the database check failed */
    enum users_table users;
    char *vault_key;           /* owned, wiped: the key read from Vault */
    const char *key;           /* cfg->api_key or vault_key, NULL if none */
    enum key_verdict key_verdict;
    long audience_status;      /* of GET /v1/audiences/{id}; 0 = not asked */
    char audience_summary[256];
};

static void report(struct check *c, enum check_state st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void report(struct check *c, enum check_state st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail, sizeof c->detail, fmt, ap);
    va_end(ap);
    c->state = st;
}

static void fix(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fix(struct check *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->fix, sizeof c->fix, fmt, ap);
    va_end(ap);
}

/* Appends ", name" (or "name" first) to a list in buf. */
static void list_add(char *buf, size_t size, const char *name)
{
    size_t n = strlen(buf);
    snprintf(buf + n, size - n, "%s%s", n ? ", " : "", name);
}

static bool skip_without_db(struct doctor *d, struct check *c)
{
    if (d->conn)
        return false;
    report(c, CHECK_SKIP, "no database connection");
    return true;
}

/* One value of a one-row query with text parameters; false (err in out) on error. */
static bool value(struct doctor *d, const char *sql, int n, const char *const *params, char *out,
                  size_t size)
{
    return dbsync_scalar(d->conn, sql, n, params, out, size);
}

/* ---- the database --------------------------------------------------------------------- */

static void check_database(struct doctor *d, struct check *c)
{
    char err[1024], info[512];
    d->conn = dbsync_connect(d->cfg->database_url, "sendry-sync doctor", 10, err, sizeof err);
    if (!d->conn) {
        report(c, CHECK_FAIL, "%s", err);
        fix(c, "check DATABASE_URL: host, port (5432 direct, or the session-mode pooler), "
               "user, password, sslmode; the database must accept this machine's address");
        return;
    }
    if (!value(d, "SELECT format('%s on PostgreSQL %s, database %s%s', current_user,"
                  " current_setting('server_version'), current_database(),"
                  " CASE WHEN r.rolsuper THEN ', a superuser' ELSE '' END)"
                  " FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
               0, NULL, info, sizeof info)) {
        report(c, CHECK_FAIL, "connected, but a first query failed: %s", info);
        fix(c, "check that role %s may use this database", PQuser(d->conn));
        return;
    }
    char users[8];
    if (value(d, "SELECT pg_catalog.to_regclass('auth.users') IS NOT NULL", 0, NULL, users, sizeof users))
        d->users = users[0] == 't' ? USERS_PRESENT : USERS_ABSENT;
    report(c, CHECK_OK, "connected as %s%s", info,
           d->users == USERS_ABSENT ? " (no auth.users: not a Supabase database)" : "");
}

/* Waits up to ms for a notification on channel; true if it came. */
static bool await_notify(PGconn *conn, const char *channel, int ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        PQconsumeInput(conn);
        PGnotify *n;
        bool seen = false;
        while ((n = PQnotifies(conn))) {
            seen = seen || strcmp(n->relname, channel) == 0;
            PQfreemem(n);
        }
        if (seen)
            return true;
        clock_gettime(CLOCK_MONOTONIC, &t);
        long left = ms - ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0)
            return false;
        struct pollfd p = {.fd = PQsocket(conn), .events = POLLIN};
        if (p.fd < 0 || poll(&p, 1, (int)left) < 0)
            return false;
    }
}

static bool exec_ok(PGconn *conn, const char *sql, char *err, size_t errsize)
{
    PGresult *res = PQexec(conn, sql);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        dbsync_result_error(res, err, errsize);
    PQclear(res);
    return ok;
}

/* LISTEN on one connection, NOTIFY from another, as the worker and the triggers do. */
static void check_notify(struct doctor *d, struct check *c)
{
    if (skip_without_db(d, c))
        return;
    char err[1024] = "", channel[64], sql[128];
    snprintf(channel, sizeof channel, "sendry_doctor_%ld", (long)getpid());
    PGconn *listener = dbsync_connect(d->cfg->database_url, "sendry-sync doctor", 10, err, sizeof err);
    PGconn *sender = listener ? dbsync_connect(d->cfg->database_url, "sendry-sync doctor", 10, err,
                                               sizeof err) : NULL;
    snprintf(sql, sizeof sql, "LISTEN %s", channel);
    bool sent = sender && exec_ok(listener, sql, err, sizeof err);
    snprintf(sql, sizeof sql, "NOTIFY %s, 'doctor'", channel);
    sent = sent && exec_ok(sender, sql, err, sizeof err);
    if (!sent) {
        report(c, CHECK_FAIL, "LISTEN/NOTIFY could not be tried: %s", err);
        fix(c, "the worker needs LISTEN and NOTIFY on this connection; check DATABASE_URL");
    } else if (await_notify(listener, channel, NOTIFY_WAIT_MS)) {
        report(c, CHECK_OK, "a NOTIFY from another session arrived on a LISTENing connection");
    } else {
        report(c, CHECK_WARN, "a NOTIFY from another session did not arrive within %d s: this "
               "connection goes through a transaction-mode pooler (Supabase's port 6543, PgBouncer "
               "pool_mode = transaction), which does not deliver notifications; the worker then "
               "finds new rows only by its --poll-interval", NOTIFY_WAIT_MS / 1000);
        fix(c, "connect directly (port 5432) or through the session-mode pooler (Supabase: "
               "port 5432 of the pooler host, PgBouncer: pool_mode = session)");
    }
    PQfinish(sender);
    PQfinish(listener);
}

/* ---- install.sql -------------------------------------------------------------------- */

static void check_schema(struct doctor *d, struct check *c)
{
    if (skip_without_db(d, c))
        return;
    char installed[128] = "", outbox[8] = "";
    value(d, "SELECT pg_catalog.to_regclass('public.sendry_outbox') IS NOT NULL", 0, NULL, outbox,
          sizeof outbox);
    if (!value(d, "SELECT pg_catalog.to_regprocedure('public.sendry_schema_version()') IS NOT NULL",
               0, NULL, installed, sizeof installed) || installed[0] != 't') {
        report(c, CHECK_FAIL, outbox[0] == 't' ? "install.sql is installed, but from before schema "
               "versions (no public.sendry_schema_version()); this binary embeds version %s"
               : "install.sql is not installed (no public.sendry_outbox); this binary embeds version %s",
               sendry_schema_version);
        fix(c, "sendry-sync migrate (or, with the Supabase CLI: sendry-sync migrate --print > "
               "supabase/migrations/<timestamp>_sendry_sync.sql && supabase db push)");
        return;
    }
    if (!value(d, "SELECT public.sendry_schema_version()", 0, NULL, installed, sizeof installed)) {
        report(c, CHECK_FAIL, "public.sendry_schema_version() failed: %s", installed);
        fix(c, "sendry-sync migrate");
    } else if (strcmp(installed, sendry_schema_version) != 0) {
        report(c, CHECK_FAIL, "the database has install.sql version %s, this binary embeds %s",
               installed, sendry_schema_version);
        fix(c, "apply this binary's SQL: sendry-sync migrate (or a new Supabase migration from "
               "sendry-sync migrate --print); or run the binary that matches the database");
    } else {
        report(c, CHECK_OK, "install.sql version %s, as this binary embeds", installed);
    }
}

/* Does one expected object exist? For a trigger, enabled holds pg_trigger.tgenabled. */
static bool object_exists(struct doctor *d, const struct expected *e, char *enabled, size_t size)
{
    static const char relkinds[] = {[OBJ_TABLE] = 'r', [OBJ_VIEW] = 'v', [OBJ_INDEX] = 'i'};
    const char *params[1] = {e->name};
    char out[64] = "";
    switch (e->kind) {
    case OBJ_FUNCTION:
        return value(d, "SELECT pg_catalog.to_regprocedure($1) IS NOT NULL", 1, params, out, sizeof out) &&
               out[0] == 't';
    case OBJ_USERS_TRIGGER:
        return value(d, "SELECT tgenabled FROM pg_catalog.pg_trigger WHERE tgname = $1 AND"
                        " tgrelid = pg_catalog.to_regclass('auth.users')", 1, params, enabled, size);
    default:
        return value(d, "SELECT relkind FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)",
                     1, params, out, sizeof out) && out[0] == relkinds[e->kind];
    }
}

/* The expected objects of the given kinds that are missing, as a list in buf. */
static int missing_objects(struct doctor *d, unsigned kinds, char *buf, size_t size)
{
    int missing = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_EXPECTED; i++) {
        const struct expected *e = &expected[i];
        char enabled[8];
        if (!(kinds & KIND(e->kind)) || (e->scope == WITH_AUTH_USERS && d->users != USERS_PRESENT))
            continue;
        if (!object_exists(d, e, enabled, sizeof enabled)) {
            list_add(buf, size, e->name);
            missing++;
        }
    }
    return missing;
}

static void check_objects(struct doctor *d, struct check *c)
{
    if (skip_without_db(d, c))
        return;
    char missing[768], rights[8] = "";
    if (missing_objects(d, KIND(OBJ_TABLE) | KIND(OBJ_VIEW) | KIND(OBJ_FUNCTION), missing, sizeof missing)) {
        report(c, CHECK_FAIL, "missing: %s", missing);
        fix(c, "sendry-sync migrate (install.sql re-creates what is missing and changes nothing else)");
        return;
    }
    value(d, "SELECT has_table_privilege('public.sendry_outbox', 'SELECT')"
             " AND has_table_privilege('public.sendry_outbox', 'UPDATE')", 0, NULL, rights, sizeof rights);
    if (rights[0] != 't') {
        report(c, CHECK_FAIL, "role %s may not SELECT and UPDATE public.sendry_outbox", PQuser(d->conn));
        fix(c, "connect as the owner of the outbox (postgres in Supabase), or GRANT SELECT, UPDATE "
               "ON public.sendry_outbox TO %s", PQuser(d->conn));
        return;
    }
    report(c, CHECK_OK, "the tables, the stats view and the functions exist; role %s may use the outbox",
           PQuser(d->conn));
}

static void check_triggers(struct doctor *d, struct check *c)
{
    if (skip_without_db(d, c))
        return;
    if (d->users != USERS_PRESENT) {
        report(c, CHECK_SKIP, "no auth.users: nothing enqueues sign-ups but your own trigger");
        return;
    }
    char missing[512] = "", disabled[512] = "";
    for (size_t i = 0; i < N_EXPECTED; i++) {
        char enabled[8] = "";
        if (expected[i].kind != OBJ_USERS_TRIGGER)
            continue;
        if (!object_exists(d, &expected[i], enabled, sizeof enabled))
            list_add(missing, sizeof missing, expected[i].name);
        else if (enabled[0] == 'D' || enabled[0] == 'R')
            list_add(disabled, sizeof disabled, expected[i].name);
    }
    if (missing[0]) {
        report(c, CHECK_FAIL, "missing on auth.users: %s: sign-ups, email changes or deletions are "
               "not enqueued", missing);
        fix(c, "sendry-sync migrate (creates them; needs the TRIGGER privilege on auth.users, "
               "which postgres has in Supabase)");
    } else if (disabled[0]) {
        report(c, CHECK_FAIL, "disabled on auth.users (or replica-only): %s", disabled);
        fix(c, "sendry-sync migrate (re-creates them enabled), or ALTER TABLE auth.users ENABLE "
               "TRIGGER <name>; as the table's owner (in Supabase: the SQL editor)");
    } else {
        report(c, CHECK_OK, "sendry_sync_users_insert, _update and _delete exist and are enabled");
    }
}

static void check_claim_index(struct doctor *d, struct check *c)
{
    if (skip_without_db(d, c))
        return;
    char missing[256];
    if (missing_objects(d, KIND(OBJ_INDEX), missing, sizeof missing)) {
        report(c, CHECK_FAIL, "missing: %s: every claim scans the whole outbox", missing);
        fix(c, "sendry-sync migrate");
        return;
    }
    report(c, CHECK_OK, "public.sendry_outbox_claim_idx exists");
}

/* What `role` may do with the expected tables, views and functions, listed in buf. */
static void role_reach(struct doctor *d, const char *role, char *buf, size_t size)
{
    for (size_t i = 0; i < N_EXPECTED; i++) {
        const struct expected *e = &expected[i];
        const char *params[2] = {role, e->name};
        char yes[8] = "";
        if (e->kind == OBJ_TABLE || e->kind == OBJ_VIEW)
            value(d, "SELECT coalesce(has_table_privilege($1, pg_catalog.to_regclass($2),"
                     " 'SELECT, INSERT, UPDATE, DELETE'), false)", 2, params, yes, sizeof yes);
        else if (e->kind == OBJ_FUNCTION)
            value(d, "SELECT coalesce(has_function_privilege($1, pg_catalog.to_regprocedure($2),"
                     " 'EXECUTE'), false)", 2, params, yes, sizeof yes);
        if (yes[0] == 't')
            list_add(buf, size, e->name);
    }
}

static void check_exposure(struct doctor *d, struct check *c)
{
    if (skip_without_db(d, c))
        return;
    static const char *const roles[] = {"anon", "authenticated"};
    char exposed[1024] = "", present[64] = "";
    for (size_t r = 0; r < 2; r++) {
        const char *params[1] = {roles[r]};
        char exists[8] = "", reach[768] = "";
        if (!value(d, "SELECT count(*) > 0 FROM pg_catalog.pg_roles WHERE rolname = $1", 1, params,
                   exists, sizeof exists) || exists[0] != 't')
            continue;
        list_add(present, sizeof present, roles[r]);
        role_reach(d, roles[r], reach, sizeof reach);
        if (reach[0]) {
            size_t n = strlen(exposed);
            snprintf(exposed + n, sizeof exposed - n, "%s%s: %s", n ? "; " : "", roles[r], reach);
        }
    }
    if (!present[0]) {
        report(c, CHECK_SKIP, "no anon or authenticated role here (not Supabase)");
    } else if (exposed[0]) {
        report(c, CHECK_FAIL, "reachable over PostgREST with the anon key or a user's JWT: %s", exposed);
        fix(c, "sendry-sync migrate (install.sql revokes every privilege on sendry_* from PUBLIC, "
               "anon and authenticated); look for a later GRANT that gave them back");
    } else {
        report(c, CHECK_OK, "%s cannot read or change the outbox, the inbox or the settings, nor call "
               "the functions", present);
    }
}

/* ---- Sendry ------------------------------------------------------------------------- */

/* The key, from the configuration or read from Vault on the doctor's connection. */
static bool find_key(struct doctor *d, struct check *c)
{
    const struct config *cfg = d->cfg;
    if (cfg->key_source != KEY_VAULT) {
        d->key = cfg->api_key && *cfg->api_key ? cfg->api_key : NULL;
        if (!d->key) {
            report(c, CHECK_FAIL, "no API key configured");
            fix(c, "set SENDRY_API_KEY_FILE (a file holding the key), SENDRY_API_KEY, or "
                   "SENDRY_API_KEY_VAULT (a secret in Supabase Vault)");
        }
        return d->key != NULL;
    }
    if (!d->conn) {
        report(c, CHECK_SKIP, "the key is in Vault and there is no database connection");
        return false;
    }
    char err[1024];
    if (vault_read_key(d->conn, cfg->api_key_vault, &d->vault_key, err, sizeof err) != VAULT_OK) {
        report(c, CHECK_FAIL, "%s", err);
        fix(c, "see the message: create the secret, install Vault or grant the role access");
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

/* One request to Sendry with the key; false (with the reason in c) if it did not run. */
static bool call_api(struct doctor *d, struct check *c, struct probe *p, const char *method,
                     const char *path, const char *body)
{
    char *url = api_url(d, path);
    *p = (struct probe){.method = method, .url = url, .body = body, .api_key = d->key,
                        .ca_file = d->cfg->ca_file, .timeout_ms = API_TIMEOUT_MS};
    bool ok = url && probe_run(p);
    if (!ok) {
        report(c, CHECK_FAIL, "%s %s: %s", method, url ? url : path, url ? p->error : "out of memory");
        fix(c, "check SENDRY_API_URL and the network; through a proxy set https_proxy (and NO_PROXY); "
               "for a private CA or a TLS-intercepting proxy --ca-file / SENDRY_CA_FILE");
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
static void check_api_key(struct doctor *d, struct check *c)
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
        report(c, CHECK_FAIL, "GET %s: HTTP %ld: Sendry %s the key from %s", path, p.status,
               p.status == 401 ? "does not know or no longer accepts" : "refuses a read with", source);
        fix(c, "create a full_access key in Sendry (sn_live_...) and put it in %s", source);
    } else if (p.status == 200 || p.status == 404) {
        d->key_verdict = KEY_ACCEPTED;
        remember_audience(d, &p);
        report(c, CHECK_OK, "Sendry accepts the key from %s (%s)", source, d->cfg->api_url);
    } else {
        report(c, CHECK_WARN, "GET %s answered HTTP %ld: the key could not be checked", path, p.status);
        fix(c, "run doctor again later; 429 means this key is rate limited right now");
    }
    probe_free(&p);
}

static void check_audience(struct doctor *d, struct check *c)
{
    if (!d->cfg->audience_id) {
        report(c, CHECK_FAIL, "SENDRY_AUDIENCE_ID is not set");
        fix(c, "set SENDRY_AUDIENCE_ID (or --audience-id) to the id of the audience (aud_...)");
    } else if (d->key_verdict != KEY_ACCEPTED || d->audience_status == 0) {
        report(c, CHECK_SKIP, "needs an accepted key");
    } else if (d->audience_status == 404) {
        report(c, CHECK_FAIL, "no audience %s that this key can see (404)", d->cfg->audience_id);
        fix(c, "set SENDRY_AUDIENCE_ID to an audience of this key's account (Sendry dashboard, "
               "or GET /v1/audiences)");
    } else {
        report(c, CHECK_OK, "audience %s exists (%s)", d->cfg->audience_id, d->audience_summary);
    }
}

/* Scope cannot be read with a read-only call. An import of no contacts is a write that
 * changes nothing: a key without write scope gets 403; a key with it gets 2xx, or a 422
 * for the empty list (Sendry checks the key's scope before the body, as the fake does). */
static void check_scope(struct doctor *d, struct check *c)
{
    if (d->key_verdict != KEY_ACCEPTED) {
        report(c, CHECK_SKIP, "needs an accepted key");
        return;
    }
    struct probe p;
    if (!call_api(d, c, &p, "POST", "/v1/contacts/import", "{\"contacts\":[]}"))
        return;
    long st = p.status;
    if (st >= 200 && st < 300) {
        report(c, CHECK_OK, "an import of no contacts was accepted (HTTP %ld): the key may write "
               "contacts", st);
    } else if (st == 400 || st == 422) {
        report(c, CHECK_OK, "an import of no contacts was refused as invalid (HTTP %ld), not for "
               "the key's scope (403): the key may write contacts", st);
    } else if (st == 403) {
        report(c, CHECK_FAIL, "POST /v1/contacts/import: HTTP 403: the key lacks the scope to "
               "write contacts (read_only or sending_access)");
        fix(c, "create a full_access key in Sendry and put it in %s",
            config_key_source_name(d->cfg->key_source));
    } else {
        report(c, CHECK_WARN, "POST /v1/contacts/import answered HTTP %ld: the scope stays unknown "
               "until the first write (a 403 there stops sending)", st);
        fix(c, "run doctor again later");
    }
    probe_free(&p);
}

static void check_webhook(struct doctor *d, struct check *c)
{
    const struct config *cfg = d->cfg;
    if (!cfg->listen) {
        report(c, CHECK_SKIP, "no --listen: no webhook endpoint");
    } else if (!cfg->webhook_secret || strlen(cfg->webhook_secret) < 16) {
        report(c, CHECK_FAIL, "--listen %s is set but SENDRY_WEBHOOK_SECRET is %s", cfg->listen,
               cfg->webhook_secret ? "shorter than 16 characters" : "not set");
        fix(c, "set SENDRY_WEBHOOK_SECRET to the signing secret (whsec_...) Sendry showed when the "
               "webhook was created");
    } else {
        report(c, CHECK_OK, "--listen %s with a webhook secret", cfg->listen);
    }
}

/* ---- vacuum ------------------------------------------------------------------------- */

/* What holds the oldest xmin back: a session, a replication slot or a prepared
 * transaction, with its age in transactions and (for sessions) seconds. */
static const char HORIZON_SQL[] =
    "SELECT kind, who, xids, seconds FROM ("
    " SELECT 'session' AS kind, format('pid %s (%s, %s)', pid, coalesce(nullif(application_name, ''),"
    "  backend_type), coalesce(state, '?')) AS who, age(backend_xmin)::bigint AS xids,"
    "  EXTRACT(EPOCH FROM now() - xact_start)::float8 AS seconds"
    "  FROM pg_catalog.pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()"
    " UNION ALL SELECT 'replication slot', format('%s (%s)', slot_name,"
    "  CASE WHEN active THEN 'active' ELSE 'inactive' END),"
    "  greatest(age(xmin), age(catalog_xmin))::bigint, NULL"
    "  FROM pg_catalog.pg_replication_slots WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL"
    " UNION ALL SELECT 'prepared transaction', gid, age(transaction)::bigint,"
    "  EXTRACT(EPOCH FROM now() - prepared)::float8 FROM pg_catalog.pg_prepared_xacts"
    ") h ORDER BY xids DESC, seconds DESC NULLS LAST LIMIT 1";

static void check_horizon(struct doctor *d, struct check *c)
{
    if (skip_without_db(d, c))
        return;
    PGresult *res = PQexec(d->conn, HORIZON_SQL);
    char err[512];
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        report(c, CHECK_WARN, "cannot read the xmin horizon: %s",
               dbsync_result_error(res, err, sizeof err));
        fix(c, "grant the role pg_monitor (or pg_read_all_stats) to let doctor see it");
    } else if (PQntuples(res) == 0) {
        report(c, CHECK_OK, "no other session, slot or prepared transaction holds the xmin horizon");
    } else {
        long long xids = atoll(PQgetvalue(res, 0, 2));
        double secs = PQgetisnull(res, 0, 3) ? 0 : atof(PQgetvalue(res, 0, 3));
        bool old = xids > HORIZON_MAX_XIDS || secs > HORIZON_MAX_SECONDS;
        char open_for[64] = "";
        if (!PQgetisnull(res, 0, 3))
            snprintf(open_for, sizeof open_for, ", open for %.0f s", secs);
        report(c, old ? CHECK_WARN : CHECK_OK, "the oldest xmin is held by %s %s: %lld transactions "
               "old%s%s", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), xids, open_for,
               old ? ": VACUUM cannot remove the outbox's dead rows younger than it" : "");
        if (old)
            fix(c, "end that transaction (SELECT pg_terminate_backend(<pid>)), COMMIT or ROLLBACK "
                   "PREPARED it, or drop the unused slot (SELECT pg_drop_replication_slot('<name>'))");
    }
    PQclear(res);
}

static void check_dead_rows(struct doctor *d, struct check *c)
{
    if (skip_without_db(d, c))
        return;
    PGresult *res = PQexec(d->conn,
        "SELECT n_live_tup, n_dead_tup, coalesce(to_char(greatest(last_autovacuum, last_vacuum),"
        " 'YYYY-MM-DD HH24:MI:SSOF'), 'never') FROM pg_catalog.pg_stat_user_tables"
        " WHERE relid = pg_catalog.to_regclass('public.sendry_outbox')");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        report(c, CHECK_SKIP, "no statistics for public.sendry_outbox");
        PQclear(res);
        return;
    }
    long long live = atoll(PQgetvalue(res, 0, 0)), dead = atoll(PQgetvalue(res, 0, 1));
    bool many = dead > DEAD_ROWS_MIN && dead > 50 + live / 5;
    report(c, many ? CHECK_WARN : CHECK_OK, "public.sendry_outbox: %lld live rows, %lld dead rows; "
           "last vacuumed %s", live, dead, PQgetvalue(res, 0, 2));
    if (many)
        fix(c, "VACUUM (VERBOSE) public.sendry_outbox; if the dead rows stay, the xmin horizon above "
               "holds them; check that autovacuum is on for the table");
    PQclear(res);
}

/* ---- running and reporting ---------------------------------------------------------- */

static const struct {
    const char *name;
    void (*run)(struct doctor *d, struct check *c);
} checks[] = {
    {"database", check_database},       {"listen/notify", check_notify},
    {"schema version", check_schema},   {"objects", check_objects},
    {"triggers", check_triggers},       {"claim index", check_claim_index},
    {"exposure", check_exposure},       {"api key", check_api_key},
    {"audience", check_audience},       {"write scope", check_scope},
    {"webhook secret", check_webhook},  {"xmin horizon", check_horizon},
    {"dead rows", check_dead_rows},
};

#define N_CHECKS (sizeof checks / sizeof checks[0])

static int exit_status(const struct check *results, int counts[4])
{
    for (size_t i = 0; i < N_CHECKS; i++)
        counts[results[i].state]++;
    return counts[CHECK_FAIL] ? 2 : counts[CHECK_WARN] ? 1 : 0;
}

static void print_json(const struct doctor *d, const struct check *results, int status, const int counts[4])
{
    json_object *o = json_object_new_object(), *a = json_object_new_array();
    json_object_object_add(o, "version", json_object_new_string(SENDRY_SYNC_VERSION));
    json_object_object_add(o, "schema_version", json_object_new_string(sendry_schema_version));
    json_object_object_add(o, "api_url", json_object_new_string(d->cfg->api_url));
    for (size_t i = 0; i < N_CHECKS; i++) {
        json_object *c = json_object_new_object();
        json_object_object_add(c, "name", json_object_new_string(results[i].name));
        json_object_object_add(c, "status", json_object_new_string(state_names[results[i].state]));
        json_object_object_add(c, "detail", json_object_new_string(results[i].detail));
        json_object_object_add(c, "fix", results[i].fix[0] ? json_object_new_string(results[i].fix) : NULL);
        json_object_array_add(a, c);
    }
    json_object_object_add(o, "checks", a);
    static const char *const keys[] = {"ok", "warnings", "failures", "skipped"};
    for (int i = 0; i < 4; i++)
        json_object_object_add(o, keys[i], json_object_new_int(counts[i]));
    json_object_object_add(o, "exit_status", json_object_new_int(status));
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

static void print_text(const struct doctor *d, const struct check *results, int status, const int counts[4])
{
    printf("sendry-sync doctor %s (install.sql version %s), API %s\n\n", SENDRY_SYNC_VERSION,
           sendry_schema_version, d->cfg->api_url);
    for (size_t i = 0; i < N_CHECKS; i++) {
        printf("  %s  %-15s %s\n", state_labels[results[i].state], results[i].name, results[i].detail);
        if (results[i].fix[0] && (results[i].state == CHECK_WARN || results[i].state == CHECK_FAIL))
            printf("  %4s  %-15s fix: %s\n", "", "", results[i].fix);
    }
    printf("\n%d ok, %d warning%s, %d failure%s, %d skipped: exit status %d\n", counts[CHECK_OK],
           counts[CHECK_WARN], counts[CHECK_WARN] == 1 ? "" : "s", counts[CHECK_FAIL],
           counts[CHECK_FAIL] == 1 ? "" : "s", counts[CHECK_SKIP], status);
}

int doctor_run(const struct config *cfg)
{
    struct doctor d = {.cfg = cfg};
    struct check results[N_CHECKS];
    memset(results, 0, sizeof results);
    for (size_t i = 0; i < N_CHECKS; i++) {
        results[i].name = checks[i].name;
        checks[i].run(&d, &results[i]);
    }
    int counts[4] = {0};
    int status = exit_status(results, counts);
    if (cfg->output == OUTPUT_JSON)
        print_json(&d, results, status, counts);
    else
        print_text(&d, results, status, counts);
    fflush(stdout);
    PQfinish(d.conn);
    if (d.vault_key) {
        memset(d.vault_key, 0, strlen(d.vault_key));
        free(d.vault_key);
    }
    return status;
}

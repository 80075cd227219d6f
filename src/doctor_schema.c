/* doctor_schema: what sql/install.sql creates, checked against the one table of
 * expected objects below (change it with install.sql): the schema version against the
 * binary's, the tables, the view and the functions, the triggers on auth.users, the
 * claim index, and what anon and authenticated can reach. Run by doctor.c (see
 * doctor_priv.h). */
#include "doctor_priv.h"

#include <stdio.h>
#include <string.h>

#include "migrate.h"

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
    {OBJ_TABLE, "public.sendry_rate_budget", EVERYWHERE},
    {OBJ_TABLE, "public.sendry_contact_state", EVERYWHERE},
    {OBJ_TABLE, "public.sendry_enqueue_errors", EVERYWHERE},
    {OBJ_TABLE, "public.sendry_changed_users", EVERYWHERE},
    {OBJ_VIEW, "public.sendry_outbox_stats", EVERYWHERE},
    {OBJ_INDEX, "public.sendry_outbox_claim_idx", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_schema_version()", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_outbox_notify_insert()", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_outbox_notify_update()", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_inbox_receive(text, text, jsonb, text)", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_rate_take(text, double precision, double precision, integer, "
                   "double precision)", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_rate_pause(text, double precision)", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_event_id(bigint)", EVERYWHERE},
    {OBJ_FUNCTION, "public.sendry_track_email(text, text, jsonb, boolean)", EVERYWHERE},
    {OBJ_VIEW, "public.sendry_contacts", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_reconcile_contacts(integer)", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_contact_payload(auth.users)", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_claim_render(uuid[])", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_inbox_apply(bigint)", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_track(text, uuid, jsonb, boolean)", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_auth_users_inserted()", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_auth_users_noted()", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_auth_users_updated()", WITH_AUTH_USERS},
    {OBJ_FUNCTION, "public.sendry_auth_users_deleted()", WITH_AUTH_USERS},
    {OBJ_USERS_TRIGGER, "sendry_sync_users_insert", WITH_AUTH_USERS},
    {OBJ_USERS_TRIGGER, "sendry_sync_users_update", WITH_AUTH_USERS},
    {OBJ_USERS_TRIGGER, "sendry_sync_users_updated", WITH_AUTH_USERS},
    {OBJ_USERS_TRIGGER, "sendry_sync_users_delete", WITH_AUTH_USERS},
};

#define N_EXPECTED (sizeof expected / sizeof expected[0])
#define KIND(k) (1u << (k))

/* The embedded steps sendry_migrations has not recorded (a repeatable one: not with its
 * current text), listed in buf; -1 when the table cannot be read. */
static int pending_steps(struct doctor *d, char *buf, size_t size)
{
    char have[256] = "";
    buf[0] = '\0';
    if (!doctor_value(d, "SELECT pg_catalog.to_regclass('public.sendry_migrations') IS NOT NULL", 0, NULL,
                      have, sizeof have)) {
        snprintf(buf, size, "%s", have);
        return -1;
    }
    bool table = have[0] == 't';
    int pending = 0;
    for (size_t i = 0; i < sendry_migrate_nsteps; i++) {
        const struct migrate_step *s = &sendry_migrate_steps[i];
        const char *params[1] = {s->name};
        if (strstr(s->options, "requires auth.users") && d->users != USERS_PRESENT)
            continue;
        have[0] = '\0';
        if (table && !doctor_value(d, "SELECT coalesce((SELECT checksum FROM public.sendry_migrations"
                                      " WHERE name = $1), '')", 1, params, have, sizeof have)) {
            snprintf(buf, size, "%s", have);
            return -1;
        }
        if (!have[0] || (!strcmp(s->kind, "repeatable") && strcmp(have, s->checksum) != 0)) {
            doctor_list_add(buf, size, s->name);
            pending++;
        }
    }
    return pending;
}

void doctor_check_schema(struct doctor *d, struct check *c)
{
    if (doctor_skip_without_db(d, c))
        return;
    char installed[128] = "", outbox[8] = "";
    doctor_value(d, "SELECT pg_catalog.to_regclass('public.sendry_outbox') IS NOT NULL", 0, NULL, outbox,
                 sizeof outbox);
    if (!doctor_value(d, "SELECT pg_catalog.to_regprocedure('public.sendry_schema_version()') IS NOT NULL",
                      0, NULL, installed, sizeof installed) || installed[0] != 't') {
        doctor_report(c, CHECK_FAIL, outbox[0] == 't'
                      ? "install.sql is installed, but from before schema versions (no "
                        "public.sendry_schema_version()); this binary embeds version %s"
                      : "install.sql is not installed (no public.sendry_outbox); this binary "
                        "embeds version %s",
                      sendry_schema_version);
        doctor_fix(c, "sendry-sync migrate (or, with the Supabase CLI: sendry-sync migrate --print > "
                      "supabase/migrations/<timestamp>_sendry_sync.sql && supabase db push)");
        return;
    }
    char may[8] = "";
    doctor_value(d, "SELECT has_function_privilege('public.sendry_schema_version()', 'EXECUTE')", 0, NULL,
                 may, sizeof may);
    if (may[0] == 'f') {
        /* Installed, but this role may not use it: a missing privilege, not a missing schema. */
        doctor_report(c, CHECK_FAIL, "role %s lacks the EXECUTE privilege on public.sendry_schema_version() "
                      "(install.sql grants nothing to other roles)", PQuser(d->conn));
        doctor_fix(c, "connect as the owner of the sendry_* objects (postgres in Supabase), or GRANT EXECUTE "
                      "ON FUNCTION public.sendry_schema_version() TO %s", PQuser(d->conn));
    } else if (!doctor_value(d, "SELECT public.sendry_schema_version()", 0, NULL, installed, sizeof installed)) {
        doctor_report(c, CHECK_FAIL, "public.sendry_schema_version() failed: %s", installed);
        doctor_fix(c, "sendry-sync migrate");
    } else if (strcmp(installed, sendry_schema_version) != 0) {
        char pending[768];
        if (pending_steps(d, pending, sizeof pending) > 0)
            doctor_report(c, CHECK_FAIL, "the database has schema version %s, this binary embeds %s; "
                          "not applied: %s", installed, sendry_schema_version, pending);
        else
            doctor_report(c, CHECK_FAIL, "the database has schema version %s, this binary embeds %s",
                          installed, sendry_schema_version);
        doctor_fix(c, "apply this binary's SQL: sendry-sync migrate (or a new Supabase migration from "
                      "sendry-sync migrate --print); or run the binary that matches the database");
    } else {
        char pending[768];
        int n = pending_steps(d, pending, sizeof pending);
        if (n > 0) {
            doctor_report(c, CHECK_FAIL, "schema version %s, as this binary embeds, but %d step(s) of its SQL "
                          "are not applied: %s", installed, n, pending);
            doctor_fix(c, "sendry-sync migrate (sendry-sync migrate --status lists the steps; or a new "
                          "Supabase migration from sendry-sync migrate --print)");
        } else if (n < 0) {
            doctor_report(c, CHECK_FAIL, "schema version %s, but public.sendry_migrations cannot be read: %s",
                          installed, pending);
            doctor_fix(c, "connect as the owner of the sendry_* tables (postgres in Supabase)");
        } else {
            doctor_report(c, CHECK_OK, "schema version %s, as this binary embeds; every step applied", installed);
        }
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
        return doctor_value(d, "SELECT pg_catalog.to_regprocedure($1) IS NOT NULL", 1, params, out,
                            sizeof out) && out[0] == 't';
    case OBJ_USERS_TRIGGER:
        return doctor_value(d, "SELECT tgenabled FROM pg_catalog.pg_trigger WHERE tgname = $1 AND"
                               " tgrelid = pg_catalog.to_regclass('auth.users')", 1, params, enabled, size);
    default:
        return doctor_value(d, "SELECT relkind FROM pg_catalog.pg_class"
                               " WHERE oid = pg_catalog.to_regclass($1)",
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
            doctor_list_add(buf, size, e->name);
            missing++;
        }
    }
    return missing;
}

void doctor_check_objects(struct doctor *d, struct check *c)
{
    if (doctor_skip_without_db(d, c))
        return;
    char missing[768], rights[8] = "";
    if (missing_objects(d, KIND(OBJ_TABLE) | KIND(OBJ_VIEW) | KIND(OBJ_FUNCTION), missing, sizeof missing)) {
        doctor_report(c, CHECK_FAIL, "missing: %s", missing);
        doctor_fix(c, "sendry-sync migrate (install.sql re-creates what is missing and changes "
                      "nothing else)");
        return;
    }
    /* The claim renders captured rows through sendry_claim_render (where auth.users is). */
    doctor_value(d, "SELECT has_table_privilege('public.sendry_outbox', 'SELECT')"
                    " AND has_table_privilege('public.sendry_outbox', 'UPDATE')"
                    " AND has_table_privilege('public.sendry_contact_state', 'SELECT, INSERT, UPDATE')"
                    " AND has_function_privilege('public.sendry_event_id(bigint)', 'EXECUTE')"
                    " AND COALESCE(has_function_privilege(pg_catalog.to_regprocedure("
                    "'public.sendry_claim_render(uuid[])'), 'EXECUTE'), true)", 0, NULL, rights,
                 sizeof rights);
    if (rights[0] != 't') {
        doctor_report(c, CHECK_FAIL, "role %s lacks the SELECT and UPDATE privileges on "
                      "public.sendry_outbox, SELECT, INSERT and UPDATE on public.sendry_contact_state, or "
                      "EXECUTE on public.sendry_event_id(bigint) or public.sendry_claim_render(uuid[]): every "
                      "claim would fail with \"permission denied\"", PQuser(d->conn));
        doctor_fix(c, "connect as the owner of the outbox (postgres in Supabase), or GRANT SELECT, UPDATE "
                      "ON public.sendry_outbox TO %s; GRANT SELECT, INSERT, UPDATE ON "
                      "public.sendry_contact_state TO %s; GRANT EXECUTE ON FUNCTION "
                      "public.sendry_event_id(bigint), public.sendry_claim_render(uuid[]) TO %s (and BYPASSRLS "
                      "or a policy: RLS is on)", PQuser(d->conn), PQuser(d->conn), PQuser(d->conn));
        return;
    }
    /* RLS is on and has no policy: a role that neither owns the table nor bypasses RLS
     * sees no row at all, and would claim nothing without an error. */
    doctor_value(d, "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') OR r.rolbypassrls"
                    " OR NOT c.relrowsecurity"
                    " FROM pg_catalog.pg_class c, pg_catalog.pg_roles r"
                    " WHERE c.oid = 'public.sendry_outbox'::regclass AND r.rolname = current_user",
                 0, NULL, rights, sizeof rights);
    if (rights[0] == 'f') {
        doctor_report(c, CHECK_FAIL, "role %s may SELECT and UPDATE public.sendry_outbox but row level "
                      "security hides every row from it: it would claim nothing", PQuser(d->conn));
        doctor_fix(c, "connect as the owner of the outbox (postgres in Supabase), or ALTER ROLE %s "
                      "BYPASSRLS (as a superuser)", PQuser(d->conn));
        return;
    }
    /* Every event row's event_id needs the database's identity (migration 0005). */
    char event_id[512] = "";
    if (!doctor_value(d, "SELECT public.sendry_event_id(0)", 0, NULL, event_id, sizeof event_id)) {
        doctor_report(c, CHECK_FAIL, "public.sendry_event_id() fails, so no event can be sent: %s", event_id);
        doctor_fix(c, "restore the row database_id of public.sendry_sync_state from a backup (see "
                      "docs/sql.md: a new one only if no event was ever sent)");
        return;
    }
    doctor_report(c, CHECK_OK, "the tables, the stats view and the functions exist; role %s may use "
                  "the outbox", PQuser(d->conn));
}

void doctor_check_triggers(struct doctor *d, struct check *c)
{
    if (doctor_skip_without_db(d, c))
        return;
    if (d->users != USERS_PRESENT) {
        doctor_report(c, CHECK_SKIP, "no auth.users: nothing enqueues sign-ups but your own trigger");
        return;
    }
    char missing[512] = "", disabled[512] = "";
    for (size_t i = 0; i < N_EXPECTED; i++) {
        char enabled[8] = "";
        if (expected[i].kind != OBJ_USERS_TRIGGER)
            continue;
        if (!object_exists(d, &expected[i], enabled, sizeof enabled))
            doctor_list_add(missing, sizeof missing, expected[i].name);
        else if (enabled[0] == 'D' || enabled[0] == 'R')
            doctor_list_add(disabled, sizeof disabled, expected[i].name);
    }
    if (missing[0]) {
        doctor_report(c, CHECK_FAIL, "missing on auth.users: %s: sign-ups, email changes or deletions are "
                      "not enqueued", missing);
        doctor_fix(c, "sendry-sync migrate (creates them; needs the TRIGGER privilege on auth.users, "
                      "which postgres has in Supabase)");
    } else if (disabled[0]) {
        doctor_report(c, CHECK_FAIL, "disabled on auth.users (or replica-only): %s", disabled);
        doctor_fix(c, "sendry-sync migrate (re-creates them enabled), or ALTER TABLE auth.users ENABLE "
                      "TRIGGER <name>; as the table's owner (in Supabase: the SQL editor)");
    } else {
        doctor_report(c, CHECK_OK, "sendry_sync_users_insert, _update, _updated and _delete exist and are enabled");
    }
}

void doctor_check_claim_index(struct doctor *d, struct check *c)
{
    if (doctor_skip_without_db(d, c))
        return;
    char missing[256];
    if (missing_objects(d, KIND(OBJ_INDEX), missing, sizeof missing)) {
        doctor_report(c, CHECK_FAIL, "missing: %s: every claim scans the whole outbox", missing);
        doctor_fix(c, "sendry-sync migrate");
        return;
    }
    doctor_report(c, CHECK_OK, "public.sendry_outbox_claim_idx exists");
}

/* What `role` may do with the expected tables, views and functions, listed in buf. */
static void role_reach(struct doctor *d, const char *role, char *buf, size_t size)
{
    for (size_t i = 0; i < N_EXPECTED; i++) {
        const struct expected *e = &expected[i];
        const char *params[2] = {role, e->name};
        char yes[8] = "";
        if (e->kind == OBJ_TABLE || e->kind == OBJ_VIEW)
            doctor_value(d, "SELECT coalesce(has_table_privilege($1, pg_catalog.to_regclass($2),"
                            " 'SELECT, INSERT, UPDATE, DELETE'), false)", 2, params, yes, sizeof yes);
        else if (e->kind == OBJ_FUNCTION)
            doctor_value(d, "SELECT coalesce(has_function_privilege($1, pg_catalog.to_regprocedure($2),"
                            " 'EXECUTE'), false)", 2, params, yes, sizeof yes);
        if (yes[0] == 't')
            doctor_list_add(buf, size, e->name);
    }
}

void doctor_check_exposure(struct doctor *d, struct check *c)
{
    if (doctor_skip_without_db(d, c))
        return;
    char outbox[8] = "";
    if (doctor_value(d, "SELECT pg_catalog.to_regclass('public.sendry_outbox') IS NOT NULL", 0, NULL, outbox,
                     sizeof outbox) && outbox[0] == 'f') {
        doctor_report(c, CHECK_SKIP, "nothing installed yet (no public.sendry_outbox), nothing to expose");
        return;
    }
    static const char *const roles[] = {"anon", "authenticated"};
    char exposed[1024] = "", present[64] = "";
    for (size_t r = 0; r < 2; r++) {
        const char *params[1] = {roles[r]};
        char exists[8] = "", reach[768] = "";
        if (!doctor_value(d, "SELECT count(*) > 0 FROM pg_catalog.pg_roles WHERE rolname = $1", 1, params,
                          exists, sizeof exists) || exists[0] != 't')
            continue;
        doctor_list_add(present, sizeof present, roles[r]);
        role_reach(d, roles[r], reach, sizeof reach);
        if (reach[0]) {
            size_t n = strlen(exposed);
            snprintf(exposed + n, sizeof exposed - n, "%s%s: %s", n ? "; " : "", roles[r], reach);
        }
    }
    if (!present[0]) {
        doctor_report(c, CHECK_SKIP, "no anon or authenticated role here (not Supabase)");
    } else if (exposed[0]) {
        doctor_report(c, CHECK_FAIL, "reachable over PostgREST with the anon key or a user's JWT: %s",
                      exposed);
        doctor_fix(c, "sendry-sync migrate (install.sql revokes every privilege on sendry_* from PUBLIC, "
                      "anon and authenticated); look for a later GRANT that gave them back");
    } else {
        doctor_report(c, CHECK_OK, "%s cannot read or change the outbox, the inbox or the settings, "
                      "nor call the functions", present);
    }
}


#include "migrate.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dbsync.h"
#include "log.h"

/* What sendry_migrate_step did with one step (its return value). */
enum step_result { STEP_UNCHANGED, STEP_APPLIED, STEP_RECORDED, STEP_SKIPPED };

static int print_sql(void)
{
    size_t n = strlen(sendry_install_sql);
    if (fwrite(sendry_install_sql, 1, n, stdout) != n || fflush(stdout) != 0) {
        log_error("migrate --print: cannot write to stdout");
        return 1;
    }
    return 0;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The session's timeouts (a step may retry its locks for the whole deadline, then do its
 * work), the step function's settings, and its NOTICEs off: the lines here say it. */
static bool set_session(PGconn *conn, const struct config *cfg, char *err, size_t errsize)
{
    char lock_timeout[32], deadline[32], statement_timeout[32];
    snprintf(lock_timeout, sizeof lock_timeout, "%dms", (int)(cfg->migrate_lock_timeout * 1000 + 0.5));
    snprintf(deadline, sizeof deadline, "%dms", (int)(cfg->migrate_deadline * 1000 + 0.5));
    snprintf(statement_timeout, sizeof statement_timeout, "%ds", (int)cfg->migrate_deadline + 600);
    const char *params[] = {lock_timeout, deadline, statement_timeout};
    PGresult *res = PQexecParams(conn,
        "SELECT pg_catalog.set_config('lock_timeout', $1, false),"
        " pg_catalog.set_config('sendry.migrate_lock_timeout', $1, false),"
        " pg_catalog.set_config('sendry.migrate_deadline', $2, false),"
        " pg_catalog.set_config('statement_timeout', $3, false),"
        " pg_catalog.set_config('idle_in_transaction_session_timeout', '60s', false),"
        " pg_catalog.set_config('sendry.migrate_quiet', 'on', false)",
        3, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok)
        dbsync_result_error(res, err, errsize);
    PQclear(res);
    return ok;
}

/* One step through public.sendry_migrate_step; false with the one-line error in err. */
static bool apply_step(PGconn *conn, const struct migrate_step *s, enum step_result *out,
                       char *err, size_t errsize)
{
    const char *params[] = {s->kind, s->name, s->sql, s->options};
    PGresult *res = PQexecParams(conn, "SELECT public.sendry_migrate_step($1, $2, $3, $4::text[])",
                                 4, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    if (!ok) {
        dbsync_result_error(res, err, errsize);
    } else {
        const char *r = PQgetvalue(res, 0, 0);
        *out = !strcmp(r, "applied") ? STEP_APPLIED
             : !strcmp(r, "recorded") ? STEP_RECORDED
             : !strncmp(r, "skipped", 7) ? STEP_SKIPPED : STEP_UNCHANGED;
    }
    PQclear(res);
    return ok;
}

static int apply_all(PGconn *conn)
{
    char err[2048];
    PGresult *res = PQexec(conn, sendry_migrate_bootstrap);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        log_error("migrate: setting up public.sendry_migrations failed: %s",
                  dbsync_result_error(res, err, sizeof err));
        PQclear(res);
        return 1;
    }
    PQclear(res);
    int applied = 0, skipped = 0;
    for (size_t i = 0; i < sendry_migrate_nsteps; i++) {
        const struct migrate_step *s = &sendry_migrate_steps[i];
        enum step_result r = STEP_UNCHANGED;
        double t0 = now_ms();
        if (!apply_step(conn, s, &r, err, sizeof err)) {
            log_error("migrate: %s failed, nothing of it applied%s: %s", s->name,
                      applied ? " (the steps before it are)" : "", err);
            return 1;
        }
        if (r == STEP_APPLIED) {
            log_info("migrate: applied %s (%s, %.0f ms)", s->name, s->kind, now_ms() - t0);
            applied++;
        } else if (r == STEP_RECORDED) {
            log_info("migrate: recorded %s as applied without running it: the previous release"
                     " installed it (rows and the contact mapping kept)", s->name);
            applied++;
        } else if (r == STEP_SKIPPED) {
            skipped++;
        }
    }
    if (skipped)
        log_info("migrate: no table auth.users here: %d step(s) for it skipped; the outbox is"
                 " installed (README, \"Without Supabase\")", skipped);
    if (applied)
        log_info("migrate: done, %d step(s) applied; schema version %s (as role %s)",
                 applied, sendry_schema_version, PQuser(conn));
    else
        log_info("migrate: nothing to do; schema version %s", sendry_schema_version);
    return 0;
}

/* The row of sendry_migrations (from res) named name, or -1. */
static int find_row(const PGresult *res, const char *name)
{
    for (int i = 0; i < PQntuples(res); i++)
        if (!strcmp(PQgetvalue(res, i, 0), name))
            return i;
    return -1;
}

static bool is_embedded(const char *name)
{
    for (size_t i = 0; i < sendry_migrate_nsteps; i++)
        if (!strcmp(sendry_migrate_steps[i].name, name))
            return true;
    return false;
}

static void print_step(const struct migrate_step *s, const PGresult *res, bool has_auth, int *pending)
{
    int row = res ? find_row(res, s->name) : -1;
    if (row < 0 && strstr(s->options, "requires auth.users") && !has_auth) {
        printf("  %-9s %-34s %s\n", "n/a", s->name, "no auth.users here");
    } else if (row < 0) {
        printf("  %-9s %-34s %s\n", "pending", s->name, s->kind);
        (*pending)++;
    } else if (!strcmp(s->kind, "repeatable") && strcmp(PQgetvalue(res, row, 1), s->checksum) != 0) {
        printf("  %-9s %-34s %s, changed since it was applied %s\n", "pending", s->name, s->kind,
               PQgetvalue(res, row, 2));
        (*pending)++;
    } else if (!strcmp(PQgetvalue(res, row, 3), "recorded")) {
        printf("  %-9s %-34s %s, recorded %s (installed by the previous release)\n", "applied",
               s->name, s->kind, PQgetvalue(res, row, 2));
    } else {
        printf("  %-9s %-34s %s, %s (%s ms, %s attempt(s))\n", "applied", s->name, s->kind,
               PQgetvalue(res, row, 2), PQgetvalue(res, row, 4), PQgetvalue(res, row, 5));
    }
}

static int show_status(PGconn *conn)
{
    char err[1024], installed[64], has_auth[8];
    if (!dbsync_scalar(conn, "SELECT pg_catalog.to_regclass('auth.users') IS NOT NULL", 0, NULL,
                       has_auth, sizeof has_auth)) {
        log_error("migrate --status: %s", has_auth);
        return 1;
    }
    if (!dbsync_scalar(conn, "SELECT pg_catalog.to_regprocedure('public.sendry_schema_version()') IS NOT NULL",
                       0, NULL, installed, sizeof installed)) {
        log_error("migrate --status: %s", installed);
        return 1;
    }
    if (strcmp(installed, "t") != 0)
        snprintf(installed, sizeof installed, "none");
    else if (!dbsync_scalar(conn, "SELECT public.sendry_schema_version()", 0, NULL, installed, sizeof installed)) {
        log_error("migrate --status: %s", installed);
        return 1;
    }
    PGresult *res = PQexec(conn,
        "SELECT name, checksum, to_char(applied_at, 'YYYY-MM-DD HH24:MI:SS TZ'), how,"
        " round(EXTRACT(EPOCH FROM duration) * 1000), attempts"
        " FROM public.sendry_migrations ORDER BY kind DESC, name");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (!state || strcmp(state, "42P01") != 0) {   /* undefined_table: nothing recorded yet */
            log_error("migrate --status: %s", dbsync_result_error(res, err, sizeof err));
            PQclear(res);
            return 1;
        }
        PQclear(res);
        res = NULL;
    }
    printf("schema version: %s installed, %s in this binary\n", installed, sendry_schema_version);
    int pending = 0;
    for (size_t i = 0; i < sendry_migrate_nsteps; i++)
        print_step(&sendry_migrate_steps[i], res, !strcmp(has_auth, "t"), &pending);
    for (int i = 0; res && i < PQntuples(res); i++)
        if (!is_embedded(PQgetvalue(res, i, 0)))
            printf("  %-9s %-34s not in this binary (a newer release applied it?)\n", "unknown",
                   PQgetvalue(res, i, 0));
    if (pending)
        printf("%d step(s) pending: sendry-sync migrate applies them\n", pending);
    else
        printf("nothing pending\n");
    PQclear(res);
    return fflush(stdout) == 0 ? 0 : 1;
}

int migrate_run(const struct config *cfg)
{
    if (cfg->migrate_action == MIGRATE_PRINT)
        return print_sql();
    char err[1024];
    PGconn *conn = dbsync_connect(cfg->database_url, "sendry-sync migrate", 30, err, sizeof err);
    if (!conn) {
        log_error("migrate: %s", err);
        return 1;
    }
    int status;
    if (!set_session(conn, cfg, err, sizeof err)) {
        log_error("migrate: %s", err);
        status = 1;
    } else {
        status = cfg->migrate_action == MIGRATE_STATUS ? show_status(conn) : apply_all(conn);
    }
    PQfinish(conn);
    return status;
}

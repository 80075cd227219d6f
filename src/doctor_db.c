/* doctor_db: the database server as the worker will meet it: the connection and the
 * role, LISTEN/NOTIFY through this connection (a transaction-mode pooler drops it),
 * what holds the xmin horizon back and the outbox's dead rows; and the helpers the
 * other database checks use. Run by doctor.c (see doctor_priv.h). */
#include "doctor_priv.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dbsync.h"

/* Thresholds of the warnings. */
#define NOTIFY_WAIT_MS 3000
#define HORIZON_MAX_XIDS 10000000LL       /* transactions behind the oldest xmin */
#define HORIZON_MAX_SECONDS 3600.0        /* the oldest transaction holding it */
#define DEAD_ROWS_MIN 10000LL             /* and more than autovacuum's 20% + 50 */

bool doctor_skip_without_db(struct doctor *d, struct check *c)
{
    if (d->conn)
        return false;
    doctor_report(c, CHECK_SKIP, "no database connection");
    return true;
}

/* One value of a one-row query with text parameters; false (err in out) on error. */
bool doctor_value(struct doctor *d, const char *sql, int n, const char *const *params, char *out,
                  size_t size)
{
    return dbsync_scalar(d->conn, sql, n, params, out, size);
}

void doctor_check_database(struct doctor *d, struct check *c)
{
    char err[1024], info[512];
    d->conn = dbsync_connect(d->cfg->database_url, "sendry-sync doctor", 10, err, sizeof err);
    if (!d->conn) {
        doctor_report(c, CHECK_FAIL, "%s", err);
        doctor_fix(c, "check DATABASE_URL: host, port (5432 direct, or the session-mode pooler), "
                      "user, password, sslmode; the database must accept this machine's address");
        return;
    }
    if (!doctor_value(d, "SELECT format('%s on PostgreSQL %s, database %s%s', current_user,"
                         " current_setting('server_version'), current_database(),"
                         " CASE WHEN r.rolsuper THEN ', a superuser' ELSE '' END)"
                         " FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
                      0, NULL, info, sizeof info)) {
        doctor_report(c, CHECK_FAIL, "connected, but a first query failed: %s", info);
        doctor_fix(c, "check that role %s may use this database", PQuser(d->conn));
        return;
    }
    char users[8];
    if (doctor_value(d, "SELECT pg_catalog.to_regclass('auth.users') IS NOT NULL", 0, NULL, users,
                     sizeof users))
        d->users = users[0] == 't' ? USERS_PRESENT : USERS_ABSENT;
    doctor_report(c, CHECK_OK, "connected as %s%s", info,
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

/* LISTEN on one connection, NOTIFY from another, as the worker and the triggers do. */
void doctor_check_notify(struct doctor *d, struct check *c)
{
    if (doctor_skip_without_db(d, c))
        return;
    char err[1024] = "", channel[64], sql[128];
    snprintf(channel, sizeof channel, "sendry_doctor_%ld", (long)getpid());
    PGconn *listener = dbsync_connect(d->cfg->database_url, "sendry-sync doctor", 10, err, sizeof err);
    PGconn *sender = listener ? dbsync_connect(d->cfg->database_url, "sendry-sync doctor", 10, err,
                                               sizeof err) : NULL;
    snprintf(sql, sizeof sql, "LISTEN %s", channel);
    bool sent = sender && dbsync_exec(listener, sql, err, sizeof err);
    snprintf(sql, sizeof sql, "NOTIFY %s, 'doctor'", channel);
    sent = sent && dbsync_exec(sender, sql, err, sizeof err);
    if (!sent) {
        doctor_report(c, CHECK_FAIL, "LISTEN/NOTIFY could not be tried: %s", err);
        doctor_fix(c, "the worker needs LISTEN and NOTIFY on this connection; check DATABASE_URL");
    } else if (await_notify(listener, channel, NOTIFY_WAIT_MS)) {
        doctor_report(c, CHECK_OK, "a NOTIFY from another session arrived on a LISTENing connection");
    } else {
        doctor_report(c, CHECK_WARN, "a NOTIFY from another session did not arrive within %d s: this "
                      "connection goes through a transaction-mode pooler (Supabase's port 6543, PgBouncer "
                      "pool_mode = transaction), which does not deliver notifications; the worker then "
                      "finds new rows only by its --poll-interval", NOTIFY_WAIT_MS / 1000);
        doctor_fix(c, "connect directly (port 5432) or through the session-mode pooler (Supabase: "
                      "port 5432 of the pooler host, PgBouncer: pool_mode = session)");
    }
    PQfinish(sender);
    PQfinish(listener);
}


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

void doctor_check_horizon(struct doctor *d, struct check *c)
{
    if (doctor_skip_without_db(d, c))
        return;
    PGresult *res = PQexec(d->conn, HORIZON_SQL);
    char err[512];
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        doctor_report(c, CHECK_WARN, "cannot read the xmin horizon: %s",
                      dbsync_result_error(res, err, sizeof err));
        doctor_fix(c, "grant the role pg_monitor (or pg_read_all_stats) to let doctor see it");
    } else if (PQntuples(res) == 0) {
        doctor_report(c, CHECK_OK, "no other session, slot or prepared transaction holds the xmin horizon");
    } else {
        long long xids = atoll(PQgetvalue(res, 0, 2));
        double secs = PQgetisnull(res, 0, 3) ? 0 : atof(PQgetvalue(res, 0, 3));
        bool old = xids > HORIZON_MAX_XIDS || secs > HORIZON_MAX_SECONDS;
        char open_for[64] = "";
        if (!PQgetisnull(res, 0, 3))
            snprintf(open_for, sizeof open_for, ", open for %.0f s", secs);
        doctor_report(c, old ? CHECK_WARN : CHECK_OK, "the oldest xmin is held by %s %s: %lld transactions "
                      "old%s%s", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), xids, open_for,
                      old ? ": VACUUM cannot remove the outbox's dead rows younger than it" : "");
        if (old)
            doctor_fix(c, "end that transaction (SELECT pg_terminate_backend(<pid>)), COMMIT or "
                          "ROLLBACK PREPARED it, or drop the unused slot (SELECT "
                          "pg_drop_replication_slot('<name>'))");
    }
    PQclear(res);
}

void doctor_check_dead_rows(struct doctor *d, struct check *c)
{
    if (doctor_skip_without_db(d, c))
        return;
    PGresult *res = PQexec(d->conn,
        "SELECT n_live_tup, n_dead_tup, coalesce(to_char(greatest(last_autovacuum, last_vacuum),"
        " 'YYYY-MM-DD HH24:MI:SSOF'), 'never') FROM pg_catalog.pg_stat_user_tables"
        " WHERE relid = pg_catalog.to_regclass('public.sendry_outbox')");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        doctor_report(c, CHECK_SKIP, "no statistics for public.sendry_outbox");
        PQclear(res);
        return;
    }
    long long live = atoll(PQgetvalue(res, 0, 0)), dead = atoll(PQgetvalue(res, 0, 1));
    bool many = dead > DEAD_ROWS_MIN && dead > 50 + live / 5;
    doctor_report(c, many ? CHECK_WARN : CHECK_OK, "public.sendry_outbox: %lld live rows, %lld dead rows; "
                  "last vacuumed %s", live, dead, PQgetvalue(res, 0, 2));
    if (many)
        doctor_fix(c, "VACUUM (VERBOSE) public.sendry_outbox; if the dead rows stay, the xmin horizon above "
                      "holds them; check that autovacuum is on for the table");
    PQclear(res);
}


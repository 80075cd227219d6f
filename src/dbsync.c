#include "dbsync.h"

#include <stdio.h>
#include <string.h>

#include "db.h"
#include "log.h"

/* Server notices (install.sql's NOTICE on a plain PostgreSQL) go through the logger, so
 * --log-format json stays one JSON object per line. */
static void notice_to_log(void *arg, const char *message)
{
    (void)arg;
    char line[1024];
    log_info("db: %s", dbsync_error(message, line, sizeof line));
}

const char *dbsync_error(const char *msg, char *buf, size_t bufsize)
{
    if (!bufsize)
        return "";
    size_t n = 0;
    for (const char *p = msg ? msg : ""; *p && n + 1 < bufsize; p++) {
        char c = *p == '\n' || *p == '\t' || *p == '\r' ? ' ' : *p;
        if (c == ' ' && (n == 0 || buf[n - 1] == ' '))
            continue;
        buf[n++] = c;
    }
    while (n > 0 && buf[n - 1] == ' ')
        n--;
    buf[n] = '\0';
    return buf;
}

const char *dbsync_result_error(const PGresult *res, char *buf, size_t bufsize)
{
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    return dbsync_error(primary ? primary : res ? PQresultErrorMessage(res) : "out of memory", buf, bufsize);
}

static struct db_session session;

void dbsync_set_session(const struct db_session *s)
{
    session = *s;
}

PGconn *dbsync_connect(const char *conninfo, const char *appname, int timeout_s, char *err,
                       size_t errsize)
{
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", timeout_s);
    /* dbname last: what the connection string sets wins over the defaults before it. */
    const char *keys[] = {"fallback_application_name", "connect_timeout", "dbname", NULL};
    const char *vals[] = {appname, timeout, conninfo, NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn) {
        snprintf(err, errsize, "cannot connect to the database: out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        char line[768];
        snprintf(err, errsize, "cannot connect to the database: %s",
                 dbsync_error(PQerrorMessage(conn), line, sizeof line));
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeProcessor(conn, notice_to_log, NULL);
    char sets[256];
    if (*db_session_sql(&session, sets, sizeof sets)) {
        PGresult *res = PQexec(conn, sets);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            char line[768];
            snprintf(err, errsize, "cannot set up the session (%s): %s", sets,
                     dbsync_result_error(res, line, sizeof line));
            PQclear(res);
            PQfinish(conn);
            return NULL;
        }
        PQclear(res);
    }
    return conn;
}

bool dbsync_exec(PGconn *conn, const char *sql, char *err, size_t errsize)
{
    PGresult *res = PQexec(conn, sql);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        dbsync_result_error(res, err, errsize);
    PQclear(res);
    return ok;
}

PGresult *dbsync_rows(PGconn *conn, const char *sql, int nparams, const char *const *params, char *err,
                      size_t errsize)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        return res;
    dbsync_result_error(res, err, errsize);
    PQclear(res);
    return NULL;
}

bool dbsync_scalar(PGconn *conn, const char *sql, int nparams, const char *const *params,
                  char *out, size_t outsize)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) >= 1;
    if (ok)
        snprintf(out, outsize, "%s", PQgetvalue(res, 0, 0));
    else if (PQresultStatus(res) == PGRES_TUPLES_OK)
        snprintf(out, outsize, "expected one row, got %d", PQntuples(res));
    else
        dbsync_result_error(res, out, outsize);
    PQclear(res);
    return ok;
}

int dbsync_preflight(const char *conninfo, char *err, size_t errsize)
{
    char *perr = NULL, line[768];
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (!opts) {
        snprintf(err, errsize, "DATABASE_URL: not a connection string or URL: %s",
                 perr ? dbsync_error(perr, line, sizeof line) : "out of memory");
        PQfreemem(perr);
        return 2;
    }
    PQconninfoFree(opts);
    char why[900];
    PGconn *conn = dbsync_connect(conninfo, "sendry-sync", 5, why, sizeof why);
    if (conn) {
        PQfinish(conn);
        return 0;
    }
    if (!db_error_is_permanent(why))
        return 0;   /* only down: the worker's reconnects say so, and retry */
    snprintf(err, errsize, "DATABASE_URL: %s", why);
    return 2;
}

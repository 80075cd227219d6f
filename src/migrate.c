#include "migrate.h"

#include <stdio.h>
#include <string.h>

#include "dbsync.h"
#include "log.h"

static int print_sql(void)
{
    size_t n = strlen(sendry_install_sql);
    if (fwrite(sendry_install_sql, 1, n, stdout) != n || fflush(stdout) != 0) {
        log_error("migrate --print: cannot write to stdout");
        return 1;
    }
    return 0;
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
    PGresult *res = PQexec(conn, sendry_install_sql);
    int status = 0;
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_error("migrate: install.sql failed: %s", PQresultErrorMessage(res));
        status = 1;
    } else {
        log_info("migrate: sql/install.sql (schema version %s) applied (as role %s)",
                 sendry_schema_version, PQuser(conn));
    }
    PQclear(res);
    PQfinish(conn);
    return status;
}

#include "dbfault.h"

#include <stdio.h>
#include <string.h>

enum db_fault db_fault_of(const PGresult *res)
{
    if (!res)
        return DB_FAULT_TRANSIENT;
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return DB_FAULT_NONE;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (!state || strlen(state) != 5)
        return DB_FAULT_PASSING;
    if (strcmp(state, "42501") == 0)
        return DB_FAULT_PRIVILEGE;
    if (strncmp(state, "42", 2) == 0 || strcmp(state, "3F000") == 0 || strcmp(state, "0A000") == 0)
        return DB_FAULT_SCHEMA;
    if (strcmp(state, "55000") == 0)
        return DB_FAULT_STATE;
    static const char *const transient[] = {"57014", "55P03", "40", "53", "08", "57P01", "57P02", "57P03"};
    for (size_t i = 0; i < sizeof transient / sizeof transient[0]; i++)
        if (strncmp(state, transient[i], strlen(transient[i])) == 0)
            return DB_FAULT_TRANSIENT;
    return DB_FAULT_PASSING;
}

const char *db_fault_describe(enum db_fault fault, const PGresult *res, const char *what,
                              const char *role, char *buf, size_t size)
{
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char server[300];
    snprintf(server, sizeof server, "%s (SQLSTATE %s)", msg ? msg : "error", state ? state : "?");
    for (char *p = server; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    const char *who = role && *role ? role : "<the worker's role>";
    switch (fault) {
    case DB_FAULT_PRIVILEGE:
        snprintf(buf, size, "%s failed: %s: role %s lacks a privilege; fix: connect as the owner of "
                 "the outbox (postgres in Supabase), or run GRANT SELECT, UPDATE ON public.sendry_outbox "
                 "TO %s; GRANT SELECT, INSERT, UPDATE ON public.sendry_contact_state TO %s; GRANT EXECUTE "
                 "ON FUNCTION public.sendry_event_id(bigint), public.sendry_claim_render(uuid[]) TO %s "
                 "(and, as RLS is on, give it BYPASSRLS or a policy)", what, server, who, who, who, who);
        break;
    case DB_FAULT_SCHEMA:
        snprintf(buf, size, "%s failed: %s: the schema is missing or older than this binary; fix: "
                 "sendry-sync migrate (or apply sql/install.sql)", what, server);
        break;
    case DB_FAULT_STATE: {
        const char *hint = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
        snprintf(buf, size, "%s failed: %s; fix: %s", what, server,
                 hint ? hint : "see the message, and sendry-sync doctor");
        break;
    }
    case DB_FAULT_NONE:
    case DB_FAULT_TRANSIENT:
    case DB_FAULT_PASSING:
        snprintf(buf, size, "%s failed: %s", what, server);
        break;
    }
    return buf;
}

#include "inbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "xalloc.h"

static const char RECEIVE_SQL[] = "SELECT public.sendry_inbox_receive($1, $2, $3::jsonb)";

struct inbox {
    struct db *db;
};

/* One event on its way through the database. */
struct pending {
    inbox_cb cb;
    void *arg;
    char event_id[256];
    char type[128];
};

struct inbox *inbox_new(struct db *db)
{
    struct inbox *in = xcalloc(1, sizeof *in);
    in->db = db;
    return in;
}

void inbox_free(struct inbox *in)
{
    free(in);
}

bool inbox_ready(const struct inbox *in)
{
    return db_connected(in->db);
}

static enum inbox_result result_of(const char *text)
{
    if (strcmp(text, "applied") == 0)
        return INBOX_APPLIED;
    if (strcmp(text, "duplicate") == 0)
        return INBOX_DUPLICATE;
    if (strncmp(text, "ignored", 7) == 0)
        return INBOX_IGNORED;
    if (strncmp(text, "error", 5) == 0)
        return INBOX_APPLY_ERROR;
    return INBOX_OTHER;
}

/* The query failed: only the primary message and SQLSTATE are logged (the detail may
 * quote the body). Class 22 (a data exception, e.g. JSON PostgreSQL refuses) cannot be
 * helped by a redelivery. */
static enum inbox_result failure_of(const struct pending *p, PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        msg = "unexpected result shape";
    log_error("webhook: id=%s type=%s: sendry_inbox_receive failed: %s (SQLSTATE %s)", p->event_id,
              p->type, msg ? msg : PQresStatus(st), state ? state : "-");
    return state && strncmp(state, "22", 2) == 0 ? INBOX_REJECTED : INBOX_UNAVAILABLE;
}

static void on_result(PGresult *res, void *arg)
{
    struct pending *p = arg;
    if (!res) {
        log_warn("webhook: id=%s: database connection lost, outcome unknown", p->event_id);
        p->cb(p->arg, INBOX_UNAVAILABLE, "database unavailable");
    } else if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) >= 1 &&
               !PQgetisnull(res, 0, 0)) {
        const char *text = PQgetvalue(res, 0, 0);
        p->cb(p->arg, result_of(text), text);
    } else {
        enum inbox_result r = failure_of(p, res);
        p->cb(p->arg, r, r == INBOX_REJECTED ? "rejected by the database" : "database unavailable");
    }
    free(p);
}

void inbox_receive(struct inbox *in, const char *event_id, const char *type, const char *body,
                   inbox_cb cb, void *arg)
{
    struct pending *p = xcalloc(1, sizeof *p);
    p->cb = cb;
    p->arg = arg;
    snprintf(p->event_id, sizeof p->event_id, "%s", event_id);
    snprintf(p->type, sizeof p->type, "%s", type);
    const char *params[3] = {event_id, type, body};
    db_query(in->db, RECEIVE_SQL, 3, params, on_result, p);
}

const char *inbox_result_class(enum inbox_result r)
{
    switch (r) {
    case INBOX_APPLIED: return "applied";
    case INBOX_DUPLICATE: return "duplicate";
    case INBOX_IGNORED: return "ignored";
    case INBOX_APPLY_ERROR: return "error";
    case INBOX_OTHER: return "other";
    case INBOX_REJECTED: return "bad_request";
    case INBOX_UNAVAILABLE: return "error";
    }
    return "other";
}

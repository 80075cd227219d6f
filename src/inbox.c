#include "inbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "xalloc.h"

static const char RECEIVE_SQL[] = "SELECT public.sendry_inbox_receive($1, $2, $3::jsonb)";

/* One page of the events an error left 'received', applied again (through
 * sendry_inbox_received_idx: its size is those events, not the inbox). */
static const char RETRY_SQL[] =
    "SELECT count(*) FILTER (WHERE r NOT LIKE 'error%'), count(*) FILTER (WHERE r LIKE 'error%')"
    " FROM (SELECT public.sendry_inbox_apply(id) AS r FROM public.sendry_inbox"
    "       WHERE status = 'received' ORDER BY id LIMIT 100) x";

#define RETRY_MAX 3600.0

struct inbox {
    struct ev_loop *loop;
    struct db *db;
    double retry_first;    /* the first wait, and the wait while nothing fails */
    double retry_wait;
    bool retrying;         /* a retry query is in flight */
    ev_timer retry;
};

/* One event on its way through the database. */
struct pending {
    inbox_cb cb;
    void *arg;
    char event_id[256];
    char type[128];
};

static void on_retried(PGresult *res, void *arg)
{
    struct inbox *in = arg;
    in->retrying = false;
    long long applied = 0, failed = 0;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        applied = atoll(PQgetvalue(res, 0, 0));
        failed = atoll(PQgetvalue(res, 0, 1));
    }
    metrics.inbox_retried += (unsigned long long)applied;
    metrics.inbox_retry_failed += (unsigned long long)failed;
    if (applied || failed)
        log_info("inbox: applied %lld stored events again; %lld still fail", applied, failed);
    /* A full page applied: the next one soon. Errors: back off. Nothing: the usual wait. */
    in->retry_wait = failed ? (in->retry_wait * 2 > RETRY_MAX ? RETRY_MAX : in->retry_wait * 2)
                            : in->retry_first;
    ev_timer_set(&in->retry, applied + failed >= 100 && !failed ? 1. : in->retry_wait, 0.);
    ev_timer_start(in->loop, &in->retry);
}

static void on_retry_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct inbox *in = w->data;
    if (in->retrying || !db_connected(in->db)) {
        ev_timer_set(w, in->retry_wait, 0.);
        ev_timer_start(in->loop, w);
        return;
    }
    in->retrying = true;
    db_query(in->db, RETRY_SQL, 0, NULL, on_retried, in);
}

struct inbox *inbox_new(struct ev_loop *loop, struct db *db, double retry_first)
{
    struct inbox *in = xcalloc(1, sizeof *in);
    in->loop = loop;
    in->db = db;
    in->retry_first = in->retry_wait = retry_first;
    ev_timer_init(&in->retry, on_retry_timer, retry_first, 0.);
    in->retry.data = in;
    return in;
}

void inbox_retry_start(struct inbox *in)
{
    ev_timer_start(in->loop, &in->retry);
}

void inbox_retry_stop(struct inbox *in)
{
    ev_timer_stop(in->loop, &in->retry);
}

void inbox_free(struct inbox *in)
{
    inbox_retry_stop(in);
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
    if (strcmp(text, "reapplied") == 0)
        return INBOX_REAPPLIED;
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
    case INBOX_REAPPLIED: return "reapplied";
    case INBOX_DUPLICATE: return "duplicate";
    case INBOX_IGNORED: return "ignored";
    case INBOX_APPLY_ERROR: return "error";
    case INBOX_OTHER: return "other";
    case INBOX_REJECTED: return "bad_request";
    case INBOX_UNAVAILABLE: return "error";
    }
    return "other";
}

#include "health.h"

#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "metrics.h"
#include "xalloc.h"

/* Rows due now (counted up to $1 in each class: past it the figure is a floor, and
 * counting more would cost the user's database time for a number nobody reads exactly)
 * and the oldest one's age, each through the claim index: a range scan of due rows in
 * its order (so that no statistics can make a sequential scan look cheaper) and one
 * probe per class, never a scan of the table. */
static const char BACKLOG_SQL[] =
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM public.sendry_outbox"
    "                              WHERE class = 'live' AND status = 'pending' AND next_attempt_at <= now()"
    "                              ORDER BY next_attempt_at LIMIT $1) d)"
    "     + (SELECT count(*) FROM (SELECT 1 FROM public.sendry_outbox"
    "                              WHERE class = 'bulk' AND status = 'pending' AND next_attempt_at <= now()"
    "                              ORDER BY next_attempt_at LIMIT $1) d),"
    "       COALESCE(EXTRACT(EPOCH FROM now() - LEAST("
    "           (SELECT next_attempt_at FROM public.sendry_outbox"
    "            WHERE class = 'live' AND status = 'pending' AND next_attempt_at <= now()"
    "            ORDER BY next_attempt_at LIMIT 1),"
    "           (SELECT next_attempt_at FROM public.sendry_outbox"
    "            WHERE class = 'bulk' AND status = 'pending' AND next_attempt_at <= now()"
    "            ORDER BY next_attempt_at LIMIT 1))), 0)::float8";

/* Errors the triggers on auth.users turned into a WARNING in the last hour (the user's
 * write succeeded, but no outbox row was written for it) that nothing has repaired yet:
 * not one before the start of the last complete repair walk (sendry_reconcile_contacts,
 * `sendry-sync reconcile-contacts`), nor one all of whose users' contacts Sendry has
 * accepted since (sendry_contact_state.updated_at: written by the completion when Sendry
 * accepts a contact, or when the claim finds it unchanged; so a repair by user, as the
 * README's, counts once the worker has delivered what it enqueued). A
 * separate statement: a role that may not read the table loses this figure, not the
 * backlog. The errors of an hour are few; each user is a primary-key probe. */
static const char ENQUEUE_ERRORS_SQL[] =
    "SELECT count(*) FROM public.sendry_enqueue_errors e"
    " WHERE e.occurred_at > now() - interval '1 hour'"
    "   AND e.occurred_at >= COALESCE((SELECT st.value::timestamptz FROM public.sendry_sync_state st"
    "                                   WHERE st.key = 'contacts_repaired_before'), '-infinity')"
    "   AND (e.user_ids IS NULL OR cardinality(e.user_ids) = 0"
    "        OR EXISTS (SELECT 1 FROM unnest(e.user_ids) AS u (id)"
    "                    WHERE NOT EXISTS (SELECT 1 FROM public.sendry_contact_state s"
    "                                       WHERE s.user_id = u.id AND s.updated_at > e.occurred_at)))";

#define BACKLOG_EVERY 10.0
#define BACKLOG_CAP "100000"  /* per class; README: sendry_sync_backlog_due_rows */
/* Counting a big backlog is not free for the user's database: the count waits at least
 * a hundred times as long as it took (a 0.5 s count of 1M due rows: every 50 s). */
#define BACKLOG_COST_FACTOR 100.0
#define PROGRESS_EVERY 10.0

struct health {
    struct ev_loop *loop;
    const struct config *cfg;
    struct db *db, *aux;
    struct gate *gate;
    double last_progress;      /* gate clock */
    double backlog_due, backlog_at;
    double asked_at;           /* when the backlog query went out (gate clock) */
    long long enqueue_errors;  /* in the last hour, as last read; -1 unknown */
    bool asking;
    struct health_totals all, window;
    ev_timer timer;            /* the backlog gauge */
    ev_timer progress;         /* the progress line */
};

static void on_enqueue_errors(PGresult *res, void *arg)
{
    struct health *h = arg;
    h->asking = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        h->enqueue_errors = -1;
        return;
    }
    long long n = atoll(PQgetvalue(res, 0, 0));
    if (n > h->enqueue_errors && h->enqueue_errors >= 0)
        log_warn("%lld writes to auth.users in the last hour enqueued nothing: a trigger's error was "
                 "turned into a WARNING (see public.sendry_enqueue_errors and docs/operations.md, \"Nothing lost "
                 "silently\" for the repair)", n);
    h->enqueue_errors = n;
    metrics.enqueue_errors_last_hour = (double)n;
}

static void on_backlog(PGresult *res, void *arg)
{
    struct health *h = arg;
    h->asking = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return;
    h->backlog_due = metrics.backlog_due = atof(PQgetvalue(res, 0, 0));
    metrics.oldest_due_age_seconds = atof(PQgetvalue(res, 0, 1));
    h->backlog_at = gate_now(h->gate);
    double every = BACKLOG_COST_FACTOR * (h->backlog_at - h->asked_at);
    h->timer.repeat = every > BACKLOG_EVERY ? every : BACKLOG_EVERY;
    if (ev_is_active(&h->timer))   /* not after health_stop */
        ev_timer_again(h->loop, &h->timer);
    h->asking = true;
    db_query(h->aux, ENQUEUE_ERRORS_SQL, 0, NULL, on_enqueue_errors, h);
}

/* "2 h 5 min", "3 min 20 s", "40 s" */
static void span(double s, char *out, size_t size)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, size, "%ld h %ld min", t / 3600, t % 3600 / 60);
    else if (t >= 60)
        snprintf(out, size, "%ld min %ld s", t / 60, t % 60);
    else
        snprintf(out, size, "%ld s", t);
}

/* Every 10 s while rows are being settled: what went, how fast, what is left (the due
 * rows of every worker) and when it will be done at this pace. */
static void on_progress(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct health *h = w->data;
    struct health_totals *win = &h->window;
    double rate = (double)win->sent / w->repeat;
    metrics.send_rate = rate;
    metrics.backlog_eta_seconds = rate > 0 ? h->backlog_due / rate : 0;
    if (win->sent || win->failed || win->retried) {
        char eta[64] = "";
        if (rate > 0 && h->backlog_due > 0)
            span(h->backlog_due / rate, eta, sizeof eta);
        log_info("progress: %lld sent (%.0f/s), %lld failed, %lld to retry in the last %.0f s; "
                 "%lld sent in all; %.0f due left%s%s", win->sent, rate, win->failed, win->retried,
                 w->repeat, h->all.sent, h->backlog_due, eta[0] ? ", done in about " : "", eta);
    }
    *win = (struct health_totals){0};
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct health *h = w->data;
    if (h->asking || !db_connected(h->aux))
        return;
    h->asking = true;
    h->asked_at = gate_now(h->gate);
    const char *params[1] = {BACKLOG_CAP};
    db_query(h->aux, BACKLOG_SQL, 1, params, on_backlog, h);
}

struct health *health_new(struct ev_loop *loop, const struct config *cfg, struct db *db,
                          struct db *aux, struct gate *gate)
{
    struct health *h = xcalloc(1, sizeof *h);
    *h = (struct health){.loop = loop, .cfg = cfg, .db = db, .aux = aux, .gate = gate};
    h->last_progress = gate_now(gate);
    ev_timer_init(&h->timer, on_timer, 1., BACKLOG_EVERY);
    ev_timer_init(&h->progress, on_progress, PROGRESS_EVERY, PROGRESS_EVERY);
    h->timer.data = h->progress.data = h;
    return h;
}

void health_stop(struct health *h)
{
    ev_timer_stop(h->loop, &h->timer);
    ev_timer_stop(h->loop, &h->progress);
}

void health_free(struct health *h)
{
    health_stop(h);
    free(h);
}

void health_start(struct health *h)
{
    ev_timer_start(h->loop, &h->progress);
    ev_timer_start(h->loop, &h->timer);
}

void health_progress(struct health *h)
{
    h->last_progress = gate_now(h->gate);
}

static void add(struct health_totals *t, const struct complete_report *rep)
{
    t->sent += rep->sent;
    t->failed += rep->failed;
    t->retried += rep->retried;
}

/* The due rows as last counted, less those settled since: the progress line, the ETA
 * and /metrics follow the live state between two counts (a count can be minutes old on
 * a big backlog, and said "3000 due left" after everything was sent). */
static void settled(struct health *h, long long rows)
{
    h->backlog_due = h->backlog_due > (double)rows ? h->backlog_due - (double)rows : 0;
    metrics.backlog_due = h->backlog_due;
    if (h->backlog_due == 0)
        metrics.oldest_due_age_seconds = 0;
}

void health_completed(struct health *h, const struct complete_report *rep)
{
    if (!rep->statement_failed)
        health_progress(h);
    add(&h->all, rep);
    add(&h->window, rep);
    settled(h, rep->sent + rep->failed + rep->retried);
    metrics.rows_sent += (unsigned long long)rep->sent;
    metrics.rows_failed += (unsigned long long)rep->failed;
    metrics.rows_retried += (unsigned long long)rep->retried;
}

struct health_totals health_totals(const struct health *h)
{
    return h->all;
}

static bool wedged(struct health *h, double *idle)
{
    const struct config *c = h->cfg;
    double now = gate_now(h->gate);
    double limit = 3 * c->poll_interval + c->http_timeout + (c->rate > 0 ? 1 / c->rate : 0);
    *idle = now - h->last_progress;
    return h->backlog_due > 0 && now - h->backlog_at < 2 * h->timer.repeat && *idle > limit;
}

bool health_check(struct health *h, enum health_activity activity, const char *stop_cause,
                  char *reason, size_t size)
{
    double idle;
    if (activity == HEALTH_SHUTTING_DOWN)
        snprintf(reason, size, "shutting down");
    else if (!db_connected(h->db) || !db_connected(h->aux))
        snprintf(reason, size, "database disconnected%s", db_connected(h->db) ? " (aux connection)" : "");
    else if (activity == HEALTH_STOPPED)
        snprintf(reason, size, "%s", stop_cause && *stop_cause ? stop_cause : "sending stopped");
    else if (activity == HEALTH_SENDING && wedged(h, &idle))
        snprintf(reason, size, "wedged: %.0f rows are due and no claim or completion succeeded for %.0f s%s%s%s",
                 h->backlog_due, idle, *db_overdue(h->db) ? " (" : "", db_overdue(h->db),
                 *db_overdue(h->db) ? ")" : "");
    else if (*db_overdue(h->db) || *db_overdue(h->aux))   /* a query past its deadline */
        snprintf(reason, size, "%s", *db_overdue(h->db) ? db_overdue(h->db) : db_overdue(h->aux));
    else {
        if (h->enqueue_errors > 0)   /* healthy, but someone should look */
            snprintf(reason, size, "degraded: %lld writes to auth.users in the last hour enqueued "
                     "nothing (public.sendry_enqueue_errors)", h->enqueue_errors);
        return true;
    }
    return false;
}

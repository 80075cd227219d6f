#include "prune.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "metrics.h"
#include "xalloc.h"

/* One step: the next 1000 rows by id from $1, those of them sent before the cutoff
 * deleted. Returns how many it deleted, the last id it looked at, and whether that
 * row was created after the cutoff (nothing older is left beyond it). */
static const char PRUNE_SQL[] =
    "WITH look AS MATERIALIZED ("
    "   SELECT id, created_at FROM public.sendry_outbox WHERE id > $1 ORDER BY id LIMIT 1000),"
    " gone AS ("
    "   DELETE FROM public.sendry_outbox o"
    "   WHERE o.ctid = ANY (ARRAY(SELECT e.ctid FROM public.sendry_outbox e"
    "                             WHERE e.id IN (SELECT id FROM look) AND e.status = 'sent'"
    "                               AND e.sent_at < now() - $2 * interval '1 day'"
    "                             FOR UPDATE SKIP LOCKED))"
    "   RETURNING 1)"
    " SELECT (SELECT count(*) FROM gone), (SELECT max(id) FROM look),"
    "        COALESCE((SELECT max(created_at) FROM look) > now() - $2 * interval '1 day', true)";

#define PRUNE_EVERY 60.0

struct pruner {
    struct ev_loop *loop;
    struct db *db;
    double retain_days;
    long long after;       /* the walk's position (an id), 0 = from the start */
    long long deleted;     /* in this walk */
    bool busy;
    ev_timer timer;
};

static void again_in(struct pruner *p, double s)
{
    ev_timer_stop(p->loop, &p->timer);
    ev_timer_set(&p->timer, s, 0.);
    ev_timer_start(p->loop, &p->timer);
}

static void on_pruned(PGresult *res, void *arg)
{
    struct pruner *p = arg;
    p->busy = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        if (res)
            log_warn("prune: deleting old sent rows failed: %s", PQresultErrorMessage(res));
        again_in(p, PRUNE_EVERY);
        return;
    }
    long long n = atoll(PQgetvalue(res, 0, 0));
    bool end = PQgetisnull(res, 0, 1) || *PQgetvalue(res, 0, 2) == 't';
    p->deleted += n;
    metrics.rows_pruned += (unsigned long long)n;
    if (!end) {
        p->after = atoll(PQgetvalue(res, 0, 1));
        again_in(p, 0.05);   /* more to walk: soon, but never back to back */
        return;
    }
    if (p->deleted)
        log_info("prune: deleted %lld sent rows older than %g days", p->deleted, p->retain_days);
    p->after = p->deleted = 0;
    again_in(p, PRUNE_EVERY);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct pruner *p = w->data;
    if (p->busy || !db_connected(p->db)) {
        again_in(p, PRUNE_EVERY);
        return;
    }
    char after[32], days[32];
    snprintf(after, sizeof after, "%lld", p->after);
    snprintf(days, sizeof days, "%g", p->retain_days);
    const char *params[2] = {after, days};
    p->busy = true;
    db_query(p->db, PRUNE_SQL, 2, params, on_pruned, p);
}

struct pruner *prune_new(struct ev_loop *loop, struct db *db, double retain_days)
{
    struct pruner *p = xcalloc(1, sizeof *p);
    *p = (struct pruner){.loop = loop, .db = db, .retain_days = retain_days};
    ev_init(&p->timer, on_timer);
    p->timer.data = p;
    return p;
}

void prune_start(struct pruner *p)
{
    if (p->retain_days > 0)
        again_in(p, 5.);
}

void prune_stop(struct pruner *p)
{
    ev_timer_stop(p->loop, &p->timer);
}

void prune_free(struct pruner *p)
{
    prune_stop(p);
    free(p);
}

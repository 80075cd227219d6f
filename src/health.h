/* health: is this worker well, and how far along is it? The relay's answer to
 * GET /healthz, the backlog gauge and the progress lines.
 *
 * Every 10 s (or, for a backlog so big that counting it takes a while, a hundred times
 * as long as the count took) a query on the aux connection counts the due rows (the
 * backlog) for /metrics and the progress line, and another the trigger errors of the
 * last hour. The relay reports each claim that succeeded and hands in every completion
 * report; the worker is wedged when rows are due and none has succeeded for longer than
 * any pause of a healthy relay (three polls, a request's timeout, a token's wait). While
 * rows are being settled, a progress line is logged every 10 s: rows sent and per
 * second, the due rows left and when they will be done at this pace. A connection past
 * its query deadline (db_overdue) is unhealthy, with db.c's reason. Owned by the relay,
 * which passes in what only it knows (its state, why sending stopped). */
#ifndef SENDRY_HEALTH_H
#define SENDRY_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "complete.h"
#include "config.h"
#include "db.h"
#include "gate.h"

/* Rows this run settled. */
struct health_totals {
    long long sent, failed, retried;
};

struct health;

/* db and aux are the relay's two connections (borrowed); the gate gives the clock. */
struct health *health_new(struct ev_loop *loop, const struct config *cfg, struct db *db,
                          struct db *aux, struct gate *gate);
void health_free(struct health *h);

void health_start(struct health *h);     /* the backlog gauge and the progress lines */
void health_stop(struct health *h);
void health_progress(struct health *h);  /* a claim succeeded */
/* A completion statement ran: counts its rows (and /metrics), and it is progress. */
void health_completed(struct health *h, const struct complete_report *rep);
struct health_totals health_totals(const struct health *h);

/* What the relay is doing, for the answer. */
enum health_activity { HEALTH_SENDING, HEALTH_IDLE_OK, HEALTH_STOPPED, HEALTH_SHUTTING_DOWN };

/* true: healthy (reason "degraded: ..." when triggers on auth.users failed to enqueue in
 * the last hour, else ""); false: one line in reason. sending: the relay is running (only then can
 * it be wedged); stop_cause: why sending stopped, or NULL. */
bool health_check(struct health *h, enum health_activity activity, const char *stop_cause,
                  char *reason, size_t size);

#endif

/* backfill_priv: the chunked walk over auth.users that backfill.c (the contacts) and
 * backfill_events.c (`backfill --events`: user.signed_up) share: its counts, progress
 * (a bar on a terminal, a log line every 5 s otherwise) and interruption (Ctrl-C: exit 1,
 * run it again to go on). Nothing else includes it. */
#ifndef SENDRY_BACKFILL_PRIV_H
#define SENDRY_BACKFILL_PRIV_H

#include <stdbool.h>

#include <libpq-fe.h>

#include "config.h"

struct walk {
    long long enqueued, failed, examined;
    double started, shown;
    long long total;        /* users in auth.users, for the bar */
    bool tty;
    const char *what;       /* "backfill", "backfill --events" or "reconcile-contacts" */
    bool dry;               /* --dry-run: counts what the run would enqueue, writes nothing */
    bool events;            /* the walk enqueues user.signed_up events, not contacts */
    char after[40];         /* the position: the last id examined, "" at first */
};

/* One chunk; false when the walk is over (or failed: *status set). */
typedef bool backfill_step_fn(PGconn *conn, const struct config *cfg, struct walk *w, int *status);

/* Runs one chunk statement ($1 the last id examined or NULL, $2 the chunk size, then
 * params[2..]) whose one row is (examined, the last id, enqueued[, failed]), and adds it
 * to the walk; false when the walk is over, or the statement failed (logged, *status 1). */
bool backfill_chunk(PGconn *conn, const struct config *cfg, struct walk *w, const char *sql,
                    int nparams, const char **params, int *status);

double backfill_now(void);                       /* a monotonic clock, in s */
void backfill_show(struct walk *w, bool last);   /* the progress */
/* Steps until the walk is over, interrupted (1: run it again to go on) or failed (1). */
int backfill_walk(PGconn *conn, const struct config *cfg, struct walk *w, backfill_step_fn *next);

/* backfill_events.c: `backfill --events` after the contacts' walk: 0 done, 1 failed. */
int backfill_events(PGconn *conn, const struct config *cfg, long long total_users);

#endif

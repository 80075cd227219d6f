#include "backfill.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backfill_priv.h"
#include "dbsync.h"
#include "log.h"

/* What the walk examines: every user, in id order. */
static const char TOTAL_SQL[] = "SELECT count(*) FROM auth.users";

static const char STEP_SQL[] = "SELECT enqueued, failed, examined, more FROM public.sendry_reconcile_contacts($1)";

/* The dry run's chunk: the same users the real step takes, and what it would enqueue for
 * them (sendry_changed_contacts, the function the real step writes from, less the users
 * with a captured row still pending, as sendry_enqueue_contacts skips them), read-only.
 * Returns the users examined, the last id, the contacts that would be enqueued, and how
 * many of those the mapping renders wrongly (enqueued failed). */
static const char DRY_STEP_SQL[] =
    "WITH chunk AS MATERIALIZED ("
    "  SELECT u.id, public.sendry_user_is_synced(u, COALESCE((SELECT s.sync_on FROM public.sendry_settings s"
    "                                                         LIMIT 1), 'signup')) AS synced"
    "    FROM auth.users u WHERE $1::uuid IS NULL OR u.id > $1::uuid ORDER BY u.id LIMIT $2)"
    " SELECT (SELECT count(*) FROM chunk), (SELECT id::text FROM chunk ORDER BY id DESC LIMIT 1),"
    "        count(c.user_id), count(c.user_id) FILTER (WHERE c.problem IS NOT NULL)"
    "   FROM public.sendry_changed_contacts(ARRAY(SELECT id FROM chunk WHERE synced)) c"
    "  WHERE NOT EXISTS (SELECT 1 FROM public.sendry_outbox o"
    "                     WHERE o.user_id = c.user_id AND o.status <> 'sent' AND o.status <> 'failed'"
    "                       AND o.status <> 'processing' AND o.op = 'upsert' AND o.payload IS NULL OFFSET 0)";

/* The deletions the walk would enqueue: contacts recorded for users deleted since. */
static const char DRY_DELETES_SQL[] =
    "SELECT count(*) FROM public.sendry_contact_state s"
    " WHERE s.email IS NOT NULL"
    "   AND COALESCE((SELECT on_delete FROM public.sendry_settings LIMIT 1), 'delete_contact') <> 'keep'"
    "   AND NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = s.user_id AND u.deleted_at IS NULL)";

static const char POSITION_SQL[] =
    "SELECT value IS NOT NULL FROM public.sendry_sync_state WHERE key = 'contacts_reconcile_after'";

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

double backfill_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void backfill_show(struct walk *w, bool last)
{
    double t = backfill_now(), rate = w->examined / fmax(t - w->started, 1e-3);
    if (w->tty) {
        int width = 30, filled = w->total > 0 ? (int)(width * fmin(1.0, (double)w->examined / w->total)) : 0;
        fprintf(stderr, "\r[%.*s%.*s] %lld/%lld users, %lld %s%s, %.0f users/s%s", filled,
                "##############################", width - filled, "                              ",
                w->examined, w->total, w->enqueued, w->events ? "events " : "",
                w->dry ? "to enqueue" : "enqueued", rate, last ? "\n" : "");
        fflush(stderr);
    } else if ((last || t - w->shown >= 5) && w->events) {
        log_info("%s: %lld of %lld users examined, %lld user.signed_up events %s (%.0f users/s)",
                 w->what, w->examined, w->examined > w->total ? w->examined : w->total, w->enqueued,
                 w->dry ? "to enqueue" : "enqueued", rate);
        w->shown = t;
    } else if (last || t - w->shown >= 5) {
        log_info("%s: %lld of %lld users examined, %lld %s, %lld failing the mapping (%.0f users/s)",
                 w->what, w->examined, w->examined > w->total ? w->examined : w->total, w->enqueued,
                 w->dry ? "to enqueue" : "enqueued", w->failed, rate);
        w->shown = t;
    }
}

/* One chunk; false when the walk is over (or failed: *status set). */
static bool step(PGconn *conn, const struct config *cfg, struct walk *w, int *status)
{
    char chunk[16];
    snprintf(chunk, sizeof chunk, "%d", cfg->chunk_size);
    const char *params[1] = {chunk};
    PGresult *res = PQexecParams(conn, STEP_SQL, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        char line[768];
        log_error("%s: %s", w->what, dbsync_result_error(res, line, sizeof line));
        PQclear(res);
        *status = 1;
        return false;
    }
    w->enqueued += atoll(PQgetvalue(res, 0, 0));
    w->failed += atoll(PQgetvalue(res, 0, 1));
    w->examined += atoll(PQgetvalue(res, 0, 2));
    bool more = *PQgetvalue(res, 0, 3) == 't';
    PQclear(res);
    backfill_show(w, !more);
    return more;
}

/* One chunk of the dry run, read-only; false when the walk is over (or failed). */
bool backfill_chunk(PGconn *conn, const struct config *cfg, struct walk *w, const char *sql,
                    int nparams, const char **params, int *status)
{
    char chunk[16];
    snprintf(chunk, sizeof chunk, "%d", cfg->chunk_size);
    params[0] = w->after[0] ? w->after : NULL;
    params[1] = chunk;
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        char line[768];
        log_error("%s%s: %s", w->what, w->dry ? " --dry-run" : "", dbsync_result_error(res, line, sizeof line));
        PQclear(res);
        *status = 1;
        return false;
    }
    long long examined = atoll(PQgetvalue(res, 0, 0));
    w->examined += examined;
    w->enqueued += atoll(PQgetvalue(res, 0, 2));
    if (PQnfields(res) > 3)
        w->failed += atoll(PQgetvalue(res, 0, 3));
    if (!PQgetisnull(res, 0, 1))
        snprintf(w->after, sizeof w->after, "%s", PQgetvalue(res, 0, 1));
    PQclear(res);
    bool more = examined == cfg->chunk_size;
    backfill_show(w, !more);
    return more;
}

static bool dry_step(PGconn *conn, const struct config *cfg, struct walk *w, int *status)
{
    const char *params[2];
    return backfill_chunk(conn, cfg, w, DRY_STEP_SQL, 2, params, status);
}

int backfill_walk(PGconn *conn, const struct config *cfg, struct walk *w, backfill_step_fn *next)
{
    struct sigaction sa = {.sa_handler = on_interrupt};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int status = 0;
    while (next(conn, cfg, w, &status)) {
        if (interrupted) {
            if (w->tty)
                fputc('\n', stderr);
            log_warn("%s: interrupted after %lld users (%lld %s)%s", w->what, w->examined, w->enqueued,
                     w->dry ? "to enqueue" : "enqueued", w->dry ? "" : "; run it again to go on from there");
            return 1;
        }
    }
    if (status == 0 && !w->dry && w->events)
        log_info("%s: done: %lld users examined, %lld user.signed_up events enqueued, in %.1f s",
                 w->what, w->examined, w->enqueued, backfill_now() - w->started);
    else if (status == 0 && !w->dry)
        log_info("%s: done: %lld users examined, %lld enqueued, %lld failed the mapping (see "
                 "last_error), in %.1f s", w->what, w->examined, w->enqueued, w->failed, backfill_now() - w->started);
    return status;
}

/* What the walk found it would do, at the worker's --rate and --batch-size. */
static void estimate(PGconn *conn, const struct config *cfg, const struct walk *w)
{
    char deletes_s[32] = "0";
    dbsync_scalar(conn, DRY_DELETES_SQL, 0, NULL, deletes_s, sizeof deletes_s);
    long long deletes = atoll(deletes_s), upserts = w->enqueued - w->failed;
    long long per = cfg->mode == MODE_IMPORT ? cfg->batch_size : 1;
    long long requests = (upserts + per - 1) / per + deletes;
    printf("%s --dry-run: %lld users examined; the run would enqueue %lld rows: %lld contacts to send "
           "(%lld requests, %s of up to %lld), %lld failing the mapping (marked failed at once), "
           "%lld deletions of users gone", w->what, w->examined, w->enqueued + deletes, upserts,
           requests - deletes, cfg->mode == MODE_IMPORT ? "imports" : "creates", per, w->failed, deletes);
    if (cfg->rate > 0)
        printf("; about %.0f s at --rate %g", (double)requests / cfg->rate, cfg->rate);
    printf(". Nothing was changed.\n");
    fflush(stdout);
}

static int run(const struct config *cfg, bool backfill)
{
    char err[1024], line[768], total[32] = "";
    PGconn *conn = dbsync_connect(cfg->database_url, "sendry-sync backfill", 10, err, sizeof err);
    if (!conn) {
        log_error("%s", err);
        return 1;
    }
    const char *what = backfill ? "backfill" : "reconcile-contacts";
    if (!dbsync_scalar(conn, TOTAL_SQL, 0, NULL, total, sizeof total)) {
        log_error("%s: cannot count the users: %s (is sql/install.sql installed, with auth.users?)", what,
                  dbsync_error(total, line, sizeof line));
        PQfinish(conn);
        return 1;
    }
    struct walk w = {.started = backfill_now(), .total = atoll(total), .tty = isatty(STDERR_FILENO), .what = what,
                     .dry = cfg->dry_run};
    w.shown = w.started;
    int status;
    if (w.dry) {
        status = backfill_walk(conn, cfg, &w, dry_step);
        if (status == 0)
            estimate(conn, cfg, &w);
    } else {
        char resuming[8] = "";
        dbsync_scalar(conn, POSITION_SQL, 0, NULL, resuming, sizeof resuming);
        log_info("%s: examining %lld users in chunks of %d; a user whose contact differs from the one "
                 "Sendry last accepted is enqueued%s", what, w.total, cfg->chunk_size,
                 strcmp(resuming, "t") == 0 ? " (an earlier run was interrupted: going on from there)" : "");
        status = backfill_walk(conn, cfg, &w, step);
    }
    if (status == 0 && backfill && cfg->backfill_events)
        status = backfill_events(conn, cfg, w.total);
    PQfinish(conn);
    return status;
}

int backfill_run(const struct config *cfg)
{
    return run(cfg, true);
}

int reconcile_contacts_run(const struct config *cfg)
{
    return run(cfg, false);
}

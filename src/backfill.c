#include "backfill.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dbsync.h"
#include "log.h"

/* Users the triggers would sync that have no contact enqueued yet, and all synced users. */
static const char COUNT_SQL[] =
    "SELECT count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM public.sendry_contact_state s"
    "                                          WHERE s.user_id = u.id)), count(*)"
    " FROM auth.users u"
    " WHERE public.sendry_user_is_synced(u, COALESCE((SELECT sync_on FROM public.sendry_settings LIMIT 1),"
    "                                                 'signup'))";

static const char STEP_SQL[] = "SELECT enqueued, failed, examined, more FROM public.sendry_reconcile_contacts($1)";

static const char POSITION_SQL[] =
    "SELECT value IS NOT NULL FROM public.sendry_sync_state WHERE key = 'contacts_reconcile_after'";

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

struct walk {
    long long enqueued, failed, examined;
    double started, shown;
    long long total;        /* synced users, for the bar */
    bool tty;
    const char *what;       /* "backfill" or "reconcile-contacts" */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void show(struct walk *w, bool last)
{
    double t = now_s(), rate = w->examined / fmax(t - w->started, 1e-3);
    if (w->tty) {
        int width = 30, filled = w->total > 0 ? (int)(width * fmin(1.0, (double)w->examined / w->total)) : 0;
        fprintf(stderr, "\r[%.*s%.*s] %lld/%lld users, %lld enqueued, %.0f users/s%s", filled,
                "##############################", width - filled, "                              ",
                w->examined, w->total, w->enqueued, rate, last ? "\n" : "");
        fflush(stderr);
    } else if (last || t - w->shown >= 5) {
        log_info("%s: %lld of about %lld users examined, %lld enqueued, %lld failed the mapping "
                 "(%.0f users/s)", w->what, w->examined, w->total, w->enqueued, w->failed, rate);
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
    show(w, !more);
    return more;
}

static int walk(PGconn *conn, const struct config *cfg, long long total, const char *what)
{
    struct walk w = {.started = now_s(), .total = total, .tty = isatty(STDERR_FILENO), .what = what};
    w.shown = w.started;
    struct sigaction sa = {.sa_handler = on_interrupt};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int status = 0;
    while (step(conn, cfg, &w, &status)) {
        if (interrupted) {
            if (w.tty)
                fputc('\n', stderr);
            log_warn("%s: interrupted after %lld users (%lld enqueued); run it again to go on from "
                     "there", what, w.examined, w.enqueued);
            return 1;
        }
    }
    if (status == 0)
        log_info("%s: done: %lld users examined, %lld enqueued, %lld failed the mapping (see "
                 "last_error), in %.1f s", what, w.examined, w.enqueued, w.failed, now_s() - w.started);
    return status;
}

/* What the backfill will do, at the worker's --rate and --batch-size. */
static void estimate(PGconn *conn, const struct config *cfg, const char *what, long long todo,
                     long long synced)
{
    long long per = cfg->mode == MODE_IMPORT ? cfg->batch_size : 1;
    long long requests = (todo + per - 1) / per;
    char resuming[8] = "";
    dbsync_scalar(conn, POSITION_SQL, 0, NULL, resuming, sizeof resuming);
    printf("%s: %lld of %lld synced users have no contact enqueued yet: %lld rows, %lld requests "
           "(%s of %lld)", what, todo, synced, todo, requests, cfg->mode == MODE_IMPORT ? "imports" : "creates",
           per);
    if (cfg->rate > 0)
        printf(", about %.0f s at --rate %g", (double)requests / cfg->rate, cfg->rate);
    printf(".\n  Users whose contact changed since it was enqueued are enqueued too. In chunks of "
           "%d users%s.\n", cfg->chunk_size,
           strcmp(resuming, "t") == 0 ? "; an earlier run was interrupted: this one goes on from there" : "");
    fflush(stdout);
}

static int run(const struct config *cfg, bool backfill)
{
    char err[1024], line[768];
    PGconn *conn = dbsync_connect(cfg->database_url, "sendry-sync backfill", 10, err, sizeof err);
    if (!conn) {
        log_error("%s", err);
        return 1;
    }
    PGresult *res = PQexec(conn, COUNT_SQL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_error("backfill: cannot count the users: %s (is sql/install.sql installed, with auth.users?)",
                  dbsync_result_error(res, line, sizeof line));
        PQclear(res);
        PQfinish(conn);
        return 1;
    }
    long long todo = atoll(PQgetvalue(res, 0, 0)), synced = atoll(PQgetvalue(res, 0, 1));
    PQclear(res);
    const char *what = backfill ? "backfill" : "reconcile-contacts";
    estimate(conn, cfg, what, todo, synced);
    int status = cfg->dry_run ? 0 : walk(conn, cfg, synced, what);
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

/* backfill_events: `sendry-sync backfill --events`, the sign-ups replayed as events for
 * the users already there (see backfill_priv.h for the walk it shares with backfill.c).
 *
 * After the contacts' walk (so each user's contact row comes before the event), it walks
 * auth.users in id order, --chunk-size users per statement, and enqueues for each synced
 * user (sendry_user_is_synced, as the contact: an address, not deleted, not anonymous,
 * confirmed under sync_on = 'confirmed') created before the run began one event row of
 * the contract's shape: op 'event', class 'bulk' (below live work, within the key's
 * budget), email lower(btrim(email)), payload {"name": "user.signed_up", "payload":
 * {"user_id", "provider" when known}}. A user that already has a user.signed_up event
 * row (the trigger's, or an earlier backfill's; pending, sent or failed) is skipped, so
 * a second run, or one after an interruption, enqueues nothing twice; users who sign up
 * during the run get theirs from the trigger. --dry-run counts the same users read-only.
 *
 * The users that have one are read once, at the start, into a temporary table (one pass
 * over the outbox: it has no index of sent rows by user); each chunk also looks at the
 * unfinished rows by user (sendry_outbox_user_idx) for those enqueued since. Sent rows
 * deleted by --retain-sent are not seen: a run after that enqueues their users again,
 * with new event ids (Sendry's reentry policy of the automation still applies). */
#include "backfill_priv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dbsync.h"
#include "log.h"

/* The users that have a user.signed_up event row now, and the time the run starts at. */
static const char SEEN_SQL[] =
    "CREATE TEMPORARY TABLE sendry_backfill_signed_up ON COMMIT PRESERVE ROWS AS"
    " SELECT DISTINCT user_id FROM public.sendry_outbox"
    " WHERE op = 'event' AND user_id IS NOT NULL AND payload ->> 'name' = 'user.signed_up'";
static const char SEEN_INDEX_SQL[] =
    "CREATE UNIQUE INDEX ON pg_temp.sendry_backfill_signed_up (user_id); ANALYZE pg_temp.sendry_backfill_signed_up";
static const char START_SQL[] = "SELECT now()::text";

/* One chunk: $1 the last id of the previous chunk (NULL at first), $2 the chunk's size,
 * $3 when the run started. Returns the users examined, the last id, and the events
 * enqueued (STEP_SQL) or that would be (DRY_STEP_SQL, read-only). */
#define CHUNK_CTES \
    "WITH chunk AS MATERIALIZED (" \
    "  SELECT u.id, u.email, u.raw_app_meta_data ->> 'provider' AS provider," \
    "         u.created_at <= $3::timestamptz" \
    "         AND public.sendry_user_is_synced(u, COALESCE((SELECT s.sync_on FROM public.sendry_settings s" \
    "                                                       LIMIT 1), 'signup')) AS synced" \
    "    FROM auth.users u WHERE $1::uuid IS NULL OR u.id > $1::uuid ORDER BY u.id LIMIT $2)," \
    " todo AS MATERIALIZED (" \
    "  SELECT c.* FROM chunk c" \
    "   WHERE c.synced" \
    "     AND NOT EXISTS (SELECT 1 FROM pg_temp.sendry_backfill_signed_up s WHERE s.user_id = c.id)" \
    "     AND NOT EXISTS (SELECT 1 FROM public.sendry_outbox o" \
    "                      WHERE o.user_id = c.id AND o.status <> 'sent' AND o.status <> 'failed'" \
    "                        AND o.op = 'event' AND o.payload ->> 'name' = 'user.signed_up'))"
#define CHUNK_FIGURES \
    " SELECT (SELECT count(*) FROM chunk), (SELECT id::text FROM chunk ORDER BY id DESC LIMIT 1),"

static const char STEP_SQL[] =
    CHUNK_CTES ","
    " ins AS ("
    "  INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)"
    "  SELECT 'bulk', 'event', t.id, pg_catalog.lower(pg_catalog.btrim(t.email)),"
    "         pg_catalog.jsonb_build_object('name', 'user.signed_up', 'payload',"
    "             pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object("
    "                 'user_id', t.id::text, 'provider', NULLIF(t.provider, ''))))"
    "    FROM todo t ORDER BY t.id"
    "  RETURNING 1)"
    CHUNK_FIGURES " (SELECT count(*) FROM ins)";

static const char DRY_STEP_SQL[] = CHUNK_CTES CHUNK_FIGURES " (SELECT count(*) FROM todo)";

static char started_at[64];

static bool step(PGconn *conn, const struct config *cfg, struct walk *w, int *status)
{
    const char *params[3] = {NULL, NULL, started_at};
    return backfill_chunk(conn, cfg, w, w->dry ? DRY_STEP_SQL : STEP_SQL, 3, params, status);
}

/* The users that have a user.signed_up event row already, and the run's start. */
static bool prepare(PGconn *conn, const char *what)
{
    char err[768];
    if (!dbsync_exec(conn, SEEN_SQL, err, sizeof err) || !dbsync_exec(conn, SEEN_INDEX_SQL, err, sizeof err)) {
        log_error("%s: cannot read the user.signed_up events already enqueued: %s (is the schema at "
                  "version 5? sendry-sync migrate)", what, err);
        return false;
    }
    if (!dbsync_scalar(conn, START_SQL, 0, NULL, started_at, sizeof started_at)) {
        log_error("%s: %s", what, dbsync_error(started_at, err, sizeof err));
        return false;
    }
    return true;
}

int backfill_events(PGconn *conn, const struct config *cfg, long long total_users)
{
    struct walk w = {.started = backfill_now(), .total = total_users, .tty = isatty(STDERR_FILENO),
                     .what = "backfill --events", .dry = cfg->dry_run, .events = true};
    w.shown = w.started;
    if (!prepare(conn, w.what))
        return 1;
    if (!w.dry)
        log_info("%s: replaying user.signed_up for the synced users that have no such event row, "
                 "in chunks of %d users (bulk rows, after their contact)", w.what, cfg->chunk_size);
    int status = backfill_walk(conn, cfg, &w, step);
    if (status == 0 && w.dry) {
        printf("%s --dry-run: %lld users examined; the run would enqueue %lld user.signed_up events "
               "(%lld requests", w.what, w.examined, w.enqueued, w.enqueued);
        if (cfg->rate > 0)
            printf(", about %.0f s at --rate %g", (double)w.enqueued / cfg->rate, cfg->rate);
        printf("). Nothing was changed.\n");
        fflush(stdout);
    }
    return status;
}

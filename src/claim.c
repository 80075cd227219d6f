#include "claim.h"
#include "claim_rows.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "log.h"
#include "metrics.h"
#include "xalloc.h"

/* Due rows: pending and due, or processing with an expired lease (a claim sets
 * next_attempt_at to the lease's end, so both are one range of the claim index), live
 * rows first, then bulk ones ($1 contacts at most, of which $2 bulk).
 *
 * A contact is its user (or, without a user, its row). One claim takes all the
 * unfinished rows of a contact together, and the worker sends their newest state once:
 * a burst of changes costs one request, and a live change never waits behind an older
 * bulk row of the same user. A contact is skipped while one of its rows is in flight
 * (processing under a lease that has not run out), while another worker holds one of
 * its rows (all of them must be ours), and while an older unfinished row of another
 * contact uses its address or the address it moves away from: so changes to one
 * contact, and to one address, reach Sendry one at a time and in order.
 *
 * The plan must stay O(batch) whatever the table holds and whatever the statistics say
 * (fresh, stale, absent): the candidates are a range scan of the claim index with a
 * LIMIT (the batch and 16 more: locking twice the batch cost 15% more CPU a row; the
 * last column says whether the candidates filled it, so a short claim claims again),
 * each check is one probe of an index of its own (each index's predicate can be proved
 * only by its own probe, see install.sql), OFFSET 0 keeps each check a per-row
 * subplan (an anti-join could scan a whole index believed empty), the checks run only
 * until $1 contacts passed them, and the UPDATE finds its rows by ctid (a TID scan).
 * Candidates left out are unlocked when the statement ends, a moment later.
 * claim_id ($6) is chosen by the worker at random for each claim: the token its outcomes
 * carry, unique even across a crash of the database (a transaction id could be handed
 * out again after lost commits).
 * Each returned row names its contact's head (the row that led the claim), and an event
 * row its event_id (sendry_event_id(): stable for the row for ever, so that Sendry
 * dedupes a repeat). Event rows are claimed with their user's other rows: fill_batch
 * chains them after the contact (struct row's then).
 * A captured row (an upsert with no payload: what the triggers write) is rendered here,
 * once per user for the whole claim (sendry_claim_render, set-wise, by key): its address
 * now (the last column; each row keeps the address it was captured with, for the moves),
 * its body, where Sendry has it (the state's address, when there is a state) and the
 * verdict (send, same, gone, failed; see enum render), with the hash and audiences the
 * completion records in sendry_contact_state when Sendry accepts it. The render comes
 * before the UPDATE, which writes the rendered address into a captured row that came
 * without one (the short backfill): each attempt's row names the address it went to, so
 * that a later claim moves the contact from there if that attempt's outcome was lost. */
static const char CLAIM_SQL[] =
    "WITH live AS MATERIALIZED ("
    "     SELECT ctid AS tid, id, user_id, email, old_email, 0 AS rank, next_attempt_at AS due_at"
    "     FROM public.sendry_outbox"
    "     WHERE class = 'live' AND status IN ('pending', 'processing') AND next_attempt_at <= now()"
    "     ORDER BY next_attempt_at, id LIMIT $1 + LEAST($1, 16) FOR UPDATE SKIP LOCKED),"
    "  bulk AS MATERIALIZED ("
    "     SELECT ctid AS tid, id, user_id, email, old_email, 1 AS rank, next_attempt_at AS due_at"
    "     FROM public.sendry_outbox"
    "     WHERE class = 'bulk' AND status IN ('pending', 'processing') AND next_attempt_at <= now()"
    "     ORDER BY next_attempt_at, id LIMIT $2 + LEAST($2, 16) FOR UPDATE SKIP LOCKED),"
    "  firsts AS MATERIALIZED ("
    "     SELECT * FROM ("
    "         SELECT c.*, row_number() OVER (PARTITION BY c.user_id, CASE WHEN c.user_id IS NULL THEN c.id END"
    "                                        ORDER BY c.rank, c.due_at, c.id) AS nth"
    "         FROM (SELECT * FROM live UNION ALL SELECT * FROM bulk) c) x"
    "     WHERE x.nth = 1),"
    "  heads AS MATERIALIZED ("
    "     SELECT * FROM ("
    "         SELECT f.*, u.unfinished"
    "         FROM (SELECT * FROM firsts ORDER BY rank, due_at, id OFFSET 0) f"
    "         CROSS JOIN LATERAL ("
    "             SELECT count(*) AS unfinished,"
    "                    count(*) FILTER (WHERE e.next_attempt_at > now() AND e.id <> f.id) AS busy"
    "             FROM public.sendry_outbox e"
    "             WHERE e.user_id = f.user_id AND e.status <> 'sent' AND e.status <> 'failed') u"
    "         WHERE u.busy = 0"
    "           AND NOT EXISTS (SELECT 1 FROM public.sendry_outbox e"
    "                           WHERE e.email = f.email AND e.id < f.id"
    "                             AND e.status <> 'sent' AND e.status <> 'failed'"
    "                             AND (f.user_id IS NULL OR e.user_id IS DISTINCT FROM f.user_id) OFFSET 0)"
    "           AND NOT EXISTS (SELECT 1 FROM public.sendry_outbox e"
    "                           WHERE e.old_email = f.email AND e.id < f.id"
    "                             AND e.status <> 'sent' AND e.status <> 'failed'"
    "                             AND (f.user_id IS NULL OR e.user_id IS DISTINCT FROM f.user_id) OFFSET 0)"
    "           AND (f.old_email IS NULL"
    "                OR (NOT EXISTS (SELECT 1 FROM public.sendry_outbox e"
    "                                WHERE e.email = f.old_email AND e.id < f.id"
    "                                  AND e.status <> 'sent' AND e.status <> 'failed'"
    "                                  AND (f.user_id IS NULL OR e.user_id IS DISTINCT FROM f.user_id) OFFSET 0)"
    "                    AND NOT EXISTS (SELECT 1 FROM public.sendry_outbox e"
    "                                    WHERE e.old_email = f.old_email AND e.id < f.id"
    "                                      AND e.status <> 'sent' AND e.status <> 'failed'"
    "                                      AND (f.user_id IS NULL OR e.user_id IS DISTINCT FROM f.user_id)"
    "                                    OFFSET 0)))) h"
    "     LIMIT $1),"
    "  members AS MATERIALIZED ("
    "     SELECT h.id AS head, m.tid, h.user_id FROM heads h"
    "     CROSS JOIN LATERAL (SELECT e.ctid AS tid FROM public.sendry_outbox e"
    "                         WHERE e.user_id = h.user_id AND e.id <> h.id"
    "                           AND e.status <> 'sent' AND e.status <> 'failed'"
    "                         FOR UPDATE SKIP LOCKED) m"
    "     WHERE h.unfinished > 1),"
    "  sizes AS (SELECT m.head, count(*) AS n FROM members m GROUP BY m.head),"
    "  whole AS MATERIALIZED ("
    "     SELECT h.id, h.tid, h.user_id FROM heads h LEFT JOIN sizes s ON s.head = h.id"
    "     WHERE h.user_id IS NULL OR h.unfinished = 1 + COALESCE(s.n, 0)),"
    "  claim AS ("
    "     SELECT w.id AS head, w.tid, w.user_id FROM whole w"
    "     UNION ALL"
    "     SELECT m.head, m.tid, m.user_id FROM members m WHERE m.head IN (SELECT w.id FROM whole w)),"
    "  rendered AS MATERIALIZED ("
    "     SELECT * FROM public.sendry_claim_render(ARRAY(SELECT w.user_id FROM whole w"
    "                                                    WHERE w.user_id IS NOT NULL))),"
    "  taken AS ("
    "     UPDATE public.sendry_outbox o"
    "     SET status = 'processing', locked_by = $3,"
    "         locked_until = now() + $4 * interval '1 second',"
    "         next_attempt_at = now() + $4 * interval '1 second',"
    "         claim_id = $6,"
    "         attempts = o.attempts + 1, updated_at = now(),"
    "         email = CASE WHEN o.email IS NULL AND o.op = 'upsert' AND o.payload IS NULL THEN r.email"
    "                      ELSE o.email END"
    "     FROM claim c LEFT JOIN rendered r ON r.user_id = c.user_id"
    "     WHERE o.ctid = c.tid"
    "     RETURNING c.head, o.id, o.email, o.payload, o.attempts, COALESCE(o.max_attempts, $5) AS max_attempts,"
    "               EXTRACT(EPOCH FROM now() - o.created_at)::float8 AS age, o.op, o.old_email, o.claim_id,"
    "               o.class = 'live' AS live, o.user_id, o.op = 'upsert' AND o.payload IS NULL AS captured)"
    " SELECT t.head, t.id, t.email,"
    "        CASE WHEN t.captured THEN r.payload::text ELSE t.payload::text END,"
    "        t.attempts, t.max_attempts, t.age, t.op,"
    "        CASE WHEN t.captured AND r.known THEN r.state_email ELSE t.old_email END,"
    "        t.claim_id, t.live, EXTRACT(EPOCH FROM now())::float8,"
    "        (SELECT count(*) FROM live) >= $1 + LEAST($1, 16) OR (SELECT count(*) FROM bulk) >= $2 + LEAST($2, 16),"
    "        CASE WHEN t.op = 'event' THEN public.sendry_event_id(t.id) END,"
    "        t.user_id, CASE WHEN t.captured THEN COALESCE(r.verdict, 'gone') END, r.hash,"
    "        to_jsonb(r.audiences)::text, r.problem, r.email"
    " FROM taken t LEFT JOIN rendered r ON t.captured AND r.user_id = t.user_id";

/* The rows this worker holds that it no longer tracks (after a reconnect), through the
 * index of rows in flight (sendry_outbox_processing_idx: its size is the rows being
 * sent, not the backlog). */
static const char RELEASE_ORPHANS_SQL[] =
    "UPDATE public.sendry_outbox"
    " SET status = 'pending', attempts = attempts - 1, next_attempt_at = now(),"
    "     locked_by = NULL, locked_until = NULL, updated_at = now()"
    " WHERE locked_by = $1 AND status = 'processing'"
    "   AND id NOT IN (SELECT value::bigint FROM jsonb_array_elements_text($2::jsonb))";

/* Rows this worker holds longer than a moment (a 429 pause, a move of several requests,
 * a slow answer) keep their lease: only the columns of the lease change. Returns the rows
 * no longer ours, each with whether another worker holds it now (else the claim is gone:
 * the database lost its commit, or someone changed the row).
 * By key whatever the statistics: one probe of the primary key per held row, locked
 * (FOR UPDATE: the lock returns the row's latest version, whose claim is checked outside
 * the probe), then the UPDATE by the ctids found. Renewals are rare (rows held longer
 * than a third of the lease), so their lock records cost little. */
static const char RENEW_SQL[] =
    "WITH held AS MATERIALIZED ("
    "   SELECT h.id, t.tid"
    "   FROM jsonb_to_recordset($1::jsonb) AS h(id bigint, claim_id bigint)"
    "   LEFT JOIN LATERAL ("
    "       SELECT e.ctid AS tid FROM ("
    "           SELECT e.ctid, e.claim_id, e.locked_by, e.status FROM public.sendry_outbox e"
    "           WHERE e.id = h.id OFFSET 0 FOR UPDATE) e"
    "       WHERE e.claim_id = h.claim_id AND e.locked_by = $3 AND e.status = 'processing') t ON true),"
    " renewed AS ("
    "   UPDATE public.sendry_outbox o"
    "   SET locked_until = now() + $2 * interval '1 second',"
    "       next_attempt_at = now() + $2 * interval '1 second'"
    "   WHERE o.ctid = ANY (ARRAY(SELECT tid FROM held WHERE tid IS NOT NULL)))"
    " SELECT h.id, o.taken"
    " FROM held h"
    " LEFT JOIN LATERAL (SELECT e.status = 'processing' AND e.locked_by <> $3 AS taken"
    "                    FROM public.sendry_outbox e WHERE e.id = h.id OFFSET 0) o ON true"
    " WHERE h.tid IS NULL";

/* Hidden: RLS on, no policy, the role neither the owner nor BYPASSRLS, and allowed to read
 * the table (a role without SELECT gets "permission denied" from the claim: that is its
 * fault, named with its GRANT; RLS is said once the GRANT is there). */
static const char HIDDEN_SQL[] =
    "SELECT c.relrowsecurity AND NOT (pg_catalog.pg_has_role(c.relowner, 'USAGE') OR r.rolbypassrls)"
    "       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)"
    "       AND pg_catalog.has_table_privilege(c.oid, 'SELECT'),"
    "       current_user"
    " FROM pg_catalog.pg_class c, pg_catalog.pg_roles r"
    " WHERE c.oid = pg_catalog.to_regclass('public.sendry_outbox') AND r.rolname = current_user";

/* When the next row is due: the first entry of each class in the claim index (ORDER BY
 * ... LIMIT 1 rather than min(): without statistics the planner believes a class has a
 * row or two and would aggregate them all). */
static const char NEXT_DUE_SQL[] =
    "SELECT EXTRACT(EPOCH FROM LEAST("
    "   (SELECT next_attempt_at FROM public.sendry_outbox"
    "    WHERE class = 'live' AND status IN ('pending', 'processing') ORDER BY next_attempt_at LIMIT 1),"
    "   (SELECT next_attempt_at FROM public.sendry_outbox"
    "    WHERE class = 'bulk' AND status IN ('pending', 'processing') ORDER BY next_attempt_at LIMIT 1))"
    " - now())::float8";

struct claimer {
    struct db *db;
    const struct config *cfg;
    char *locked_by;
    claim_cb claimed;
    next_due_cb next_due;
    void *ud;
    bool busy;             /* a claim is in flight */
    bool asking;           /* a next-due question is in flight */
    renew_cb renewed;      /* of the renewal in flight, or NULL */
    hidden_cb hidden;      /* of the RLS question in flight, or NULL */
    uint64_t rng;          /* claim ids */
    int limit;
    double fresh_window;
};

struct claimer *claim_new(struct db *db, const struct config *cfg, const char *locked_by,
                          claim_cb claimed, next_due_cb next_due, void *ud)
{
    struct claimer *c = xcalloc(1, sizeof *c);
    *c = (struct claimer){.db = db, .cfg = cfg, .locked_by = xstrdup(locked_by),
                          .claimed = claimed, .next_due = next_due, .ud = ud};
    c->rng = rand_seed(c);
    return c;
}

void claim_free(struct claimer *c)
{
    if (!c)
        return;
    free(c->locked_by);
    free(c);
}

static void on_claimed(PGresult *res, void *arg)
{
    struct claimer *c = arg;
    c->busy = false;
    struct claim_batch batch = {.limit = c->limit};
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* Lost connection: release_orphans sorts it out after the reconnect. */
        if (res)
            log_error("db: claim failed: %s", PQresultErrorMessage(res));
        batch.failed = true;
        batch.error = res;
        c->claimed(c->ud, &batch);
        return;
    }
    metrics_claim(PQntuples(res));
    claim_rows_fill(res, c->cfg->audience_id, c->fresh_window, &batch);
    batch.more = PQntuples(res) > 0 && *PQgetvalue(res, 0, 12) == 't';
    if (batch.n > 0)
        log_debug("claimed %d rows of %zu contacts", PQntuples(res), batch.n);
    c->claimed(c->ud, &batch);
    free(batch.rows);
}

void claim_take(struct claimer *c, int limit, int bulk_limit, double connected_for)
{
    char slimit[16], sbulk[16], slease[32], smax[16];
    snprintf(slimit, sizeof slimit, "%d", limit);
    snprintf(sbulk, sizeof sbulk, "%d", bulk_limit);
    snprintf(slease, sizeof slease, "%.3f", c->cfg->lease);
    snprintf(smax, sizeof smax, "%d", c->cfg->max_attempts);
    char sclaim[32];
    snprintf(sclaim, sizeof sclaim, "%lld", (long long)(rand_unit(&c->rng) * 4e18) + 1);
    const char *params[6] = {slimit, sbulk, c->locked_by, slease, smax, sclaim};
    db_query_named(c->db, "sendry_claim", CLAIM_SQL, 6, params, on_claimed, c);
    c->busy = true;
    c->limit = limit;
    c->fresh_window = connected_for;
}

bool claim_busy(const struct claimer *c)
{
    return c->busy;
}

static void on_next_due(PGresult *res, void *arg)
{
    struct claimer *c = arg;
    c->asking = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return;
    c->next_due(c->ud, PQgetisnull(res, 0, 0) ? -1 : atof(PQgetvalue(res, 0, 0)));
}

void claim_next_due(struct claimer *c)
{
    if (c->asking)
        return;
    c->asking = true;
    db_query(c->db, NEXT_DUE_SQL, 0, NULL, on_next_due, c);
}

void claim_release_orphans(struct claimer *c, json_object *held)
{
    const char *params[2] = {c->locked_by, json_object_to_json_string_ext(held, JSON_C_TO_STRING_PLAIN)};
    /* First: a claim queued while the connection was going down runs after it, or this
     * would give back the rows that claim takes (held lists only what came before it). */
    db_query_first(c->db, RELEASE_ORPHANS_SQL, 2, params, NULL, NULL);
}

static void on_renewed(PGresult *res, void *arg)
{
    struct claimer *c = arg;
    renew_cb done = c->renewed;
    c->renewed = NULL;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (res)
            log_error("db: renewing leases failed: %s", PQresultErrorMessage(res));
        return;   /* tried again at the next renewal, and after a reconnect */
    }
    size_t n = (size_t)PQntuples(res), taken = 0;
    long long *lost = xcalloc(n ? n : 1, sizeof *lost);
    for (size_t i = 0; i < n; i++) {
        lost[i] = atoll(PQgetvalue(res, (int)i, 0));
        taken += *PQgetvalue(res, (int)i, 1) == 't';
    }
    done(c->ud, lost, n, taken);
    free(lost);
}

void claim_renew(struct claimer *c, json_object *refs, renew_cb done)
{
    if (c->renewed || json_object_array_length(refs) == 0)
        return;
    char slease[32];
    snprintf(slease, sizeof slease, "%.3f", c->cfg->lease);
    const char *params[3] = {json_object_to_json_string_ext(refs, JSON_C_TO_STRING_PLAIN), slease,
                             c->locked_by};
    c->renewed = done;
    db_query_named(c->db, "sendry_renew", RENEW_SQL, 3, params, on_renewed, c);
}

static void on_hidden(PGresult *res, void *arg)
{
    struct claimer *c = arg;
    hidden_cb done = c->hidden;
    c->hidden = NULL;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return;   /* no outbox, or a role that may not read the catalog: the claim says why */
    done(c->ud, *PQgetvalue(res, 0, 0) == 't', PQgetvalue(res, 0, 1));
}

void claim_check_hidden(struct claimer *c, hidden_cb done)
{
    if (c->hidden)
        return;
    c->hidden = done;
    db_query(c->db, HIDDEN_SQL, 0, NULL, on_hidden, c);
    /* Whatever it answers, the next claim is planned anew: a claim planned while row
     * level security hid the rows keeps hiding them after the role may see them. */
    db_replan(c->db);
}

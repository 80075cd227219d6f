#include "complete.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/linkhash.h>
#include <json-c/printbuf.h>

#include "dbfault.h"
#include "log.h"
#include "xalloc.h"

/* uncount takes back the attempt the claim counted, for rows that were never really
 * tried (429, stopped sending, shutdown).
 * By key whatever the outbox's statistics: each outcome finds its row with one probe of
 * the primary key (OFFSET 0 keeps the probe a per-outcome subquery; as a plain join, a
 * planner without statistics believes this worker holds one row, reads the rows it
 * holds and compares each with every outcome, running jsonb_to_recordset again for
 * each: 261 ms a call at a 10,000-row backlog right after install). The claim is checked
 * outside the probe, so that it cannot become a scan of the rows this worker holds
 * (sendry_outbox_processing_idx) for each outcome. The UPDATE goes to exactly the
 * versions found, by ctid (the array of them, or one TID probe per outcome: never a scan
 * that could read the table; tests/test_hot_plans.py, tests/test_backlog_after_install.py),
 * with the claim checked in its own WHERE (status by IS NOT DISTINCT FROM: a form the
 * planner cannot match with that index's predicate). No row lock is taken first (one
 * Heap/LOCK record and 56 B of WAL a row less, make bench's bench_lifecycle.py): a row
 * changed by anyone after this statement began is waited for, then checked again on its
 * latest version, whose ctid is no longer the one found, so the outcome is not written.
 * Never over another claim (tests/test_complete_race.py): that outcome is reported
 * unrecorded, "changed by someone else", and the row comes back after its lease.
 * A rendered contact settled sent (accepted by Sendry, or found unchanged at the claim)
 * records what Sendry now has in sendry_contact_state (by its primary key), in the same
 * statement and only under the claim that sent it: the state is what Sendry accepted. */
static const char COMPLETE_SQL[] =
    "WITH c AS MATERIALIZED ("
    "   SELECT h.*, t.tid"
    "   FROM jsonb_to_recordset($1::jsonb)"
    "        AS h(id bigint, claim_id bigint, status text, http_status int, error text,"
    "             delay_ms bigint, uncount int, deduped boolean,"
    "             user_id uuid, state_email text, state_audiences text[], hash bigint)"
    "   CROSS JOIN LATERAL ("
    "       SELECT e.ctid AS tid FROM public.sendry_outbox e WHERE e.id = h.id OFFSET 0) t),"
    " done AS ("
    "   UPDATE public.sendry_outbox o"
    "   SET status = c.status,"
    "       attempts = o.attempts - c.uncount,"
    "       next_attempt_at = CASE WHEN c.status = 'pending'"
    "                         THEN now() + c.delay_ms * interval '1 millisecond'"
    "                         ELSE o.next_attempt_at END,"
    "       sent_at = CASE WHEN c.status = 'sent' THEN now() ELSE o.sent_at END,"
    "       last_http_status = COALESCE(c.http_status, o.last_http_status),"
    "       last_error = CASE WHEN c.status = 'sent' THEN NULL ELSE COALESCE(c.error, o.last_error) END,"
    "       deduped = CASE WHEN c.status = 'sent' THEN c.deduped ELSE o.deduped END,"
    "       locked_by = NULL, locked_until = NULL, updated_at = now()"
    "   FROM c WHERE o.ctid = ANY (ARRAY(SELECT tid FROM c)) AND o.ctid = c.tid"
    "     AND o.claim_id = c.claim_id AND o.locked_by = $2"
    "     AND o.status IS NOT DISTINCT FROM 'processing'"
    "   RETURNING o.id, o.claim_id, c.status, c.user_id, c.state_email, c.state_audiences, c.hash),"
    " accepted AS ("
    "   INSERT INTO public.sendry_contact_state AS s (user_id, email, audiences, contact_hash)"
    "   SELECT DISTINCT ON (d.user_id) d.user_id, d.state_email, d.state_audiences, d.hash FROM done d"
    "   WHERE d.status = 'sent' AND d.hash IS NOT NULL ORDER BY d.user_id, d.id DESC"
    "   ON CONFLICT (user_id) DO UPDATE"
    "   SET email = EXCLUDED.email, audiences = EXCLUDED.audiences,"
    "       contact_hash = EXCLUDED.contact_hash, updated_at = now())"
    " SELECT d.id, d.claim_id FROM done d";

/* Outcomes the completion could not record: what happened to those rows since. A claim
 * sets updated_at to its own time and counts an attempt, so a row last changed before our
 * claim never saw it (the database lost that commit); one this worker holds again under
 * another claim came back to it after that loss; one claimed again since, with no more
 * attempts than ours had, went back to its state from before our claim first (the next
 * claim counted the same attempt again); more attempts: claimed again after our lease ran
 * out. The same claim, no longer ours as we left it: someone's UPDATE. */
static const char EXPLAIN_SQL[] =
    "SELECT count(*) FILTER (WHERE o.id IS NULL),"
    "       count(*) FILTER (WHERE o.updated_at < to_timestamp(h.claimed_at)"
    "                          OR (o.claim_id IS DISTINCT FROM h.claim_id AND o.locked_by IS DISTINCT FROM $2"
    "                              AND o.attempts <= h.attempts)),"
    "       count(*) FILTER (WHERE o.updated_at >= to_timestamp(h.claimed_at)"
    "                          AND o.claim_id IS DISTINCT FROM h.claim_id AND o.locked_by IS DISTINCT FROM $2"
    "                          AND o.attempts > h.attempts),"
    "       count(*) FILTER (WHERE o.updated_at >= to_timestamp(h.claimed_at) AND o.claim_id = h.claim_id),"
    "       string_agg(DISTINCT o.locked_by, ', ') FILTER (WHERE o.claim_id IS DISTINCT FROM h.claim_id"
    "                                                        AND o.attempts > h.attempts AND o.locked_by <> $2),"
    "       count(*) FILTER (WHERE o.updated_at >= to_timestamp(h.claimed_at)"
    "                          AND o.claim_id IS DISTINCT FROM h.claim_id AND o.locked_by = $2)"
    " FROM jsonb_to_recordset($1::jsonb) AS h(id bigint, claim_id bigint, claimed_at float8, attempts int)"
    " LEFT JOIN public.sendry_outbox o ON o.id = h.id";

struct outcome_rec {
    long long id, claim_id;
    double claimed_at;
    int attempts;          /* the row's attempts as our claim left them */
    enum row_result result;
    int http_status;       /* 0 = none */
    char *error;           /* owned, may be NULL */
    long long delay_ms;
    enum { DEDUPED_NONE, DEDUPED_NO, DEDUPED_YES } deduped;   /* a sent event's */
    bool unsent;            /* settled without a request: its attempt is not counted */
    struct accepted state;  /* owned: a rendered contact's, for sendry_contact_state */
    char *state_email;      /* owned: its address */
};

struct completer {
    struct db *db;
    struct lh_table *waiting;  /* complete_track_waiting: ids made pending again, not yet settled */
    struct db *aux;        /* where unrecorded outcomes are looked into */
    char *locked_by;
    complete_cb done;
    void *ud;
    struct outcome_rec *recs;
    size_t n, cap;
    size_t in_flight;      /* the first in_flight records are being written */
};

static void rec_free(struct outcome_rec *r)
{
    free(r->error);
    free(r->state.user_id);
    free(r->state.hash);
    free(r->state.audiences);
    free(r->state_email);
}

struct completer *complete_new(struct db *db, struct db *aux, const char *locked_by,
                               complete_cb done, void *ud)
{
    struct completer *c = xcalloc(1, sizeof *c);
    c->db = db;
    c->aux = aux;
    c->locked_by = xstrdup(locked_by);
    c->done = done;
    c->ud = ud;
    return c;
}

void complete_free(struct completer *c)
{
    if (c->waiting)
        lh_table_free(c->waiting);
    for (size_t i = 0; i < c->n; i++)
        rec_free(&c->recs[i]);
    free(c->recs);
    free(c->locked_by);
    free(c);
}

void complete_row(struct completer *c, const struct row_ref *ref, enum row_result result,
                  int http_status, const char *error, double delay)
{
    xgrow((void **)&c->recs, &c->cap, c->n + 1, sizeof *c->recs);
    c->recs[c->n++] = (struct outcome_rec){
        .id = ref->id, .claim_id = ref->claim_id, .claimed_at = ref->claimed_at,
        .attempts = ref->attempts, .result = result, .http_status = http_status,
        .error = error ? xstrdup(error) : NULL, .delay_ms = (long long)(delay * 1000)};
}

void complete_contact(struct completer *c, const struct row *row, enum row_result result,
                      int http_status, const char *error, double delay)
{
    for (size_t i = 0; i < row->nrefs; i++)
        complete_row(c, &row->refs[i], result, http_status, error, delay);
    if (result == RESULT_SENT && (row->render == RENDER_SEND || row->render == RENDER_SAME)) {
        struct outcome_rec *newest = &c->recs[c->n - 1];
        assert(row->nrefs > 0 && newest->id == row->refs[row->nrefs - 1].id && row->state.hash);
        newest->state = (struct accepted){
            .user_id = xstrdup(row->state.user_id), .hash = xstrdup(row->state.hash),
            .audiences = row->state.audiences ? xstrdup(row->state.audiences) : NULL};
        newest->state_email = xstrdup(row->email);
    }
    bool settled = result == RESULT_SENT || result == RESULT_FAILED;
    for (const struct row *next = row->then; next; next = next->then)
        for (size_t i = 0; i < next->nrefs; i++)
            complete_row(c, &next->refs[i], RESULT_RELEASE, 0, NULL, settled ? 0 : delay);
}

void complete_contact_unsent(struct completer *c, const struct row *row, enum row_result result,
                             const char *error)
{
    size_t first = c->n;
    complete_contact(c, row, result, 0, error, 0);
    for (size_t i = first; i < first + row->nrefs; i++)
        c->recs[i].unsent = true;
}

void complete_event_sent(struct completer *c, const struct row *row, int http_status, bool deduped)
{
    assert(row->op == OP_EVENT && row->nrefs == 1 && !row->then);
    complete_row(c, &row->refs[0], RESULT_SENT, http_status, NULL, 0);
    c->recs[c->n - 1].deduped = deduped ? DEDUPED_YES : DEDUPED_NO;
}

static const char *status_of(enum row_result r)
{
    switch (r) {
    case RESULT_SENT: return "sent";
    case RESULT_FAILED: return "failed";
    case RESULT_RETRY:
    case RESULT_RELEASE: break;
    }
    return "pending";
}

static json_object *rec_json(const struct outcome_rec *r)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_int64(r->id));
    json_object_object_add(o, "claim_id", json_object_new_int64(r->claim_id));
    json_object_object_add(o, "status", json_object_new_string(status_of(r->result)));
    json_object_object_add(o, "http_status", r->http_status ? json_object_new_int(r->http_status) : NULL);
    json_object_object_add(o, "error", r->error ? json_object_new_string(r->error) : NULL);
    json_object_object_add(o, "delay_ms", json_object_new_int64(r->delay_ms));
    json_object_object_add(o, "uncount", json_object_new_int(r->result == RESULT_RELEASE || r->unsent));
    json_object_object_add(o, "deduped", r->deduped == DEDUPED_NONE ? NULL
                                         : json_object_new_boolean(r->deduped == DEDUPED_YES));
    if (r->state.hash) {
        json_object_object_add(o, "user_id", json_object_new_string(r->state.user_id));
        json_object_object_add(o, "state_email", json_object_new_string(r->state_email));
        json_object_object_add(o, "hash", json_object_new_string(r->state.hash));
        json_object_object_add(o, "state_audiences",
                               r->state.audiences ? json_tokener_parse(r->state.audiences) : NULL);
    }
    return o;
}

/* Counts what the written records did, then drops them. */
/* A row's id as a key of the waiting set (ids are positive: never LH_EMPTY or LH_FREED). */
static const void *key_of(long long id)
{
    return (const void *)(uintptr_t)id;
}

static void track(struct completer *c, const struct outcome_rec *r)
{
    if (!c->waiting)
        return;
    bool waits = r->result == RESULT_RETRY || r->result == RESULT_RELEASE;
    bool known = lh_table_lookup_ex(c->waiting, key_of(r->id), NULL);
    if (waits && !known)
        lh_table_insert(c->waiting, key_of(r->id), NULL);
    else if (!waits && known)
        lh_table_delete(c->waiting, key_of(r->id));
}

static void settle(struct completer *c, struct complete_report *rep)
{
    size_t n = c->in_flight;
    rep->rows = n;
    rep->soonest = -1;
    for (size_t i = 0; i < n; i++) {
        struct outcome_rec *r = &c->recs[i];
        track(c, r);
        if (r->result == RESULT_SENT)
            rep->sent++;
        else if (r->result == RESULT_FAILED)
            rep->failed++;
        else {
            rep->retried += r->result == RESULT_RETRY;
            double in = (double)r->delay_ms / 1000.0;
            if (rep->soonest < 0 || in < rep->soonest)
                rep->soonest = in;
        }
        rec_free(r);
    }
    memmove(c->recs, c->recs + n, (c->n - n) * sizeof *c->recs);
    c->n -= n;
    c->in_flight = 0;
}

static void on_explained(PGresult *res, void *arg)
{
    (void)arg;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return;
    long long gone = atoll(PQgetvalue(res, 0, 0)), lost = atoll(PQgetvalue(res, 0, 1));
    long long taken = atoll(PQgetvalue(res, 0, 2)), changed = atoll(PQgetvalue(res, 0, 3));
    long long again = atoll(PQgetvalue(res, 0, 5));
    const char *who = PQgetisnull(res, 0, 4) ? "" : PQgetvalue(res, 0, 4);
    if (taken)
        log_warn("db: %lld outcomes not recorded: their rows were claimed again after their lease "
                 "ran out%s%s; that claim's outcome stands", taken, *who ? ", by " : "", who);
    if (again)
        log_warn("db: %lld outcomes not recorded: the database lost the claim that took their rows "
                 "(an immediate restart with synchronous_commit off?) and this worker claimed them "
                 "again; that claim's outcome stands", again);
    if (lost)
        log_warn("db: %lld outcomes not recorded: the database no longer has the claim that took "
                 "their rows (its last commits were lost: an immediate restart with "
                 "synchronous_commit off?); the rows were due again and are sent again", lost);
    if (gone)
        log_warn("db: %lld outcomes not recorded: their rows were deleted meanwhile", gone);
    if (changed)
        log_warn("db: %lld outcomes not recorded: their rows were changed by someone else while "
                 "this worker held them (an operator's UPDATE?)", changed);
}

/* Looks into the outcomes of the last statement that it did not record. A row can be
 * in it twice, under two claims (its first claim lost, this worker claimed it again): an
 * outcome was recorded when its row and its claim came back. */
static void explain_unrecorded(struct completer *c, PGresult *res)
{
    size_t n = c->in_flight, found = (size_t)PQntuples(res);
    char *seen = xcalloc(n ? n : 1, 1);
    for (size_t k = 0; k < found; k++) {
        long long id = atoll(PQgetvalue(res, (int)k, 0)), claim_id = atoll(PQgetvalue(res, (int)k, 1));
        for (size_t i = 0; i < n; i++)
            if (c->recs[i].id == id && c->recs[i].claim_id == claim_id)
                seen[i] = 1;
    }
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        if (seen[i])
            continue;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_int64(c->recs[i].id));
        json_object_object_add(o, "claim_id", json_object_new_int64(c->recs[i].claim_id));
        json_object_object_add(o, "claimed_at", json_object_new_double(c->recs[i].claimed_at));
        json_object_object_add(o, "attempts", json_object_new_int(c->recs[i].attempts));
        json_object_array_add(arr, o);
    }
    const char *params[2] = {json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN), c->locked_by};
    db_query(c->aux, EXPLAIN_SQL, 2, params, on_explained, c);
    json_object_put(arr);
    free(seen);
}

static void on_written(PGresult *res, void *arg)
{
    struct completer *c = arg;
    if (!res) {
        c->in_flight = 0;   /* connection lost: kept, written after the reconnect */
        return;
    }
    struct complete_report rep = {0};
    if (PQresultStatus(res) != PGRES_TUPLES_OK && db_fault_of(res) == DB_FAULT_TRANSIENT) {
        /* A statement or lock timeout, a deadlock: it passes, and dropping the outcomes
         * would send their rows again. Kept and written with the next statement (the
         * relay flushes again at once; each try waits at most the lock timeout). */
        log_warn("db: recording %zu outcomes failed: %s; trying again", c->in_flight,
                 PQresultErrorMessage(res));
        c->in_flight = 0;
        rep = (struct complete_report){.statement_failed = true, .error = res, .soonest = -1};
        c->done(c->ud, &rep);
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* Not the connection: the statement itself failed, and sending it again would
         * fail again and hold up every later outcome. Drop these; their rows are still
         * processing and come back when their lease runs out (nothing is lost). */
        log_error("db: recording %zu outcomes failed: %s; those rows will be retried after "
                  "their lease", c->in_flight, PQresultErrorMessage(res));
        rep.statement_failed = true;
        rep.error = res;
    } else {
        rep.recorded = PQntuples(res);
        if (rep.recorded != (long long)c->in_flight)
            explain_unrecorded(c, res);
    }
    settle(c, &rep);
    c->done(c->ud, &rep);
}

void complete_flush(struct completer *c)
{
    if (c->in_flight || c->n == 0 || !db_connected(c->db))
        return;
    /* The array's text, one record's tree at a time (a tree of a thousand records took
     * about a MiB at its peak; the text is a tenth of that). */
    struct printbuf *text = xcheck(printbuf_new());
    for (size_t i = 0; i < c->n; i++) {
        json_object *rec = rec_json(&c->recs[i]);
        printbuf_memappend(text, i ? "," : "[", 1);
        const char *one = json_object_to_json_string_ext(rec, JSON_C_TO_STRING_PLAIN);
        printbuf_memappend(text, one, (int)strlen(one));
        json_object_put(rec);
    }
    printbuf_strappend(text, "]");
    const char *params[2] = {text->buf, c->locked_by};
    db_query_named(c->db, "sendry_complete", COMPLETE_SQL, 2, params, on_written, c);
    c->in_flight = c->n;
    printbuf_free(text);
}

void complete_track_waiting(struct completer *c)
{
    if (!c->waiting)
        c->waiting = lh_kptr_table_new(64, NULL);
}

long long complete_waiting(const struct completer *c)
{
    return c->waiting ? lh_table_length(c->waiting) : 0;
}

size_t complete_pending(const struct completer *c)
{
    return c->n;
}

void complete_add_ids(const struct completer *c, json_object *ids)
{
    for (size_t i = 0; i < c->n; i++)
        json_object_array_add(ids, json_object_new_int64(c->recs[i].id));
}

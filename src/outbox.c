#include "outbox.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "db.h"
#include "http.h"
#include "httpd.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "sendry.h"
#include "vault.h"

/* ---- SQL --------------------------------------------------------------------------- */

/* Due rows: pending and due, or processing with an expired lease (a claim sets
 * next_attempt_at to the lease's end, so both are one range of the partial index).
 *
 * Changes to one contact go out one at a time, oldest first: a row waits while an older
 * one for the same user or address is unfinished (in flight, or waiting for its retry),
 * so a later change is never overwritten by an earlier one.
 *
 * The plan must stay O(batch) even before the table has statistics (a backfill of a
 * million rows claimed at once): the oldest due rows are locked first, by themselves
 * (four times the batch, so that rows held back still leave a full batch), and only
 * those are checked for an older unfinished row, a few index probes each (OFFSET 0
 * keeps the check a per-row subplan instead of an anti-join over every unfinished row).
 * The candidates left out are unlocked when the statement ends, a moment later. */
static const char CLAIM_SQL[] =
    "WITH oldest AS MATERIALIZED ("
    " SELECT id, user_id, email, old_email FROM public.sendry_outbox"
    " WHERE status IN ('pending', 'processing') AND next_attempt_at <= now()"
    " ORDER BY next_attempt_at, id"
    " LIMIT $1 * 4"
    " FOR UPDATE SKIP LOCKED),"
    " due AS MATERIALIZED ("
    " SELECT c.id FROM oldest c"
    " WHERE NOT EXISTS (SELECT 1 FROM public.sendry_outbox e"
    "                   WHERE e.status IN ('pending', 'processing') AND e.id < c.id"
    "                     AND (e.user_id = c.user_id OR e.email = c.email OR e.email = c.old_email"
    "                          OR e.old_email = c.email OR e.old_email = c.old_email)"
    "                   OFFSET 0)"
    " LIMIT $1)"
    " UPDATE public.sendry_outbox o"
    " SET status = 'processing', locked_by = $2,"
    "     locked_until = now() + $3 * interval '1 second',"
    "     next_attempt_at = now() + $3 * interval '1 second',"
    "     attempts = o.attempts + 1, updated_at = now()"
    " FROM due WHERE o.id = due.id"
    " RETURNING o.id, o.email, o.payload::text, o.attempts, COALESCE(o.max_attempts, $4),"
    "           EXTRACT(EPOCH FROM now() - o.created_at)::float8, o.op, o.old_email";

/* One statement per batch. uncount takes back the attempt the claim counted, for
 * rows that were never really tried (429, stopped sending, shutdown). Only rows this
 * worker still holds are touched: a row whose lease was taken over is left alone. */
static const char COMPLETE_SQL[] =
    "UPDATE public.sendry_outbox o"
    " SET status = c.status,"
    "     attempts = o.attempts - c.uncount,"
    "     next_attempt_at = CASE WHEN c.status = 'pending'"
    "                       THEN now() + c.delay_ms * interval '1 millisecond'"
    "                       ELSE o.next_attempt_at END,"
    "     sent_at = CASE WHEN c.status = 'sent' THEN now() ELSE o.sent_at END,"
    "     last_http_status = COALESCE(c.http_status, o.last_http_status),"
    "     last_error = CASE WHEN c.status = 'sent' THEN NULL ELSE COALESCE(c.error, o.last_error) END,"
    "     locked_by = NULL, locked_until = NULL, updated_at = now()"
    " FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::bigint[], $6::int[])"
    "      AS c(id, status, http_status, error, delay_ms, uncount)"
    " WHERE o.id = c.id AND o.locked_by = $7 AND o.status = 'processing'";

/* After a reconnect: rows a lost claim marked for us that we never saw. */
static const char RELEASE_ORPHANS_SQL[] =
    "UPDATE public.sendry_outbox"
    " SET status = 'pending', attempts = attempts - 1, next_attempt_at = now(),"
    "     locked_by = NULL, locked_until = NULL, updated_at = now()"
    " WHERE locked_by = $1 AND status = 'processing' AND NOT (id = ANY ($2::bigint[]))";

/* Reconciliation: one page of Sendry's unsubscribes or suppressions into the inbox,
 * and the cursor to start from next time, in one statement. */
static const char RECONCILE_CURSOR_SQL[] =
    "SELECT value FROM public.sendry_sync_state WHERE key = $1";
static const char RECONCILE_STORE_SQL[] =
    "WITH received AS ("
    "  SELECT public.sendry_inbox_receive(e ->> 'event_id', e ->> 'type', e -> 'payload', 'reconcile') AS r"
    "  FROM jsonb_array_elements($1::jsonb) e),"
    " cursor AS ("
    "  INSERT INTO public.sendry_sync_state (key, value) SELECT $2::text, $3::text WHERE $3::text IS NOT NULL"
    "  ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now())"
    " SELECT count(*) FILTER (WHERE r = 'applied'), count(*) FILTER (WHERE r = 'duplicate'), count(*)"
    " FROM received";

/* For /metrics: rows due now and the oldest one's age, through the partial index. */
static const char BACKLOG_SQL[] =
    "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)), 0)::float8"
    " FROM public.sendry_outbox WHERE status = 'pending' AND next_attempt_at <= now()";

static const char NEXT_DUE_SQL[] =
    "SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now())::float8"
    " FROM public.sendry_outbox WHERE status IN ('pending', 'processing')";

/* ---- state ------------------------------------------------------------------------- */

/* The request a job sends next. Upserts go out as one import (or one create in single
 * mode); an email change and a deletion are short sequences of single-row requests. */
enum req_kind {
    REQ_IMPORT,          /* POST /v1/contacts/import: upsert by email, into the audience */
    REQ_CREATE,          /* POST /v1/contacts (--mode single) */
    REQ_MOVE,            /* PATCH /v1/contacts/by-email?email=<old>: the new address */
    REQ_LOOKUP,          /* GET /v1/contacts/by-email?email=<address>: the contact's id */
    REQ_DELETE_CONTACT,  /* DELETE /v1/contacts/{id} */
    REQ_REMOVE_MEMBER    /* DELETE /v1/audiences/{audience}/contacts/{id} */
};

/* One HTTP request's worth of rows. */
struct job {
    enum req_kind req;
    bool then_delete_old;  /* an email change found both addresses: delete the old one */
    const char *lookup;    /* REQ_LOOKUP: the address to look up (borrowed from the row) */
    char contact_id[128];  /* from REQ_LOOKUP */
    struct row **rows;
    size_t n;
    struct relay *relay;
    double started_at;     /* ev_now when its request started */
    struct job *next, *prev;   /* in the waiting queue (next only) or the in-flight list */
};

/* An outcome waiting to be written to its row. */
struct completion {
    long long id;
    const char *status;    /* static string */
    int http_status;       /* 0 = none */
    char *error;           /* owned, may be NULL */
    long long delay_ms;
    int uncount;
};

struct relay {
    struct ev_loop *loop;
    const struct config *cfg;
    struct db *db;
    struct http *http;
    struct httpd *httpd;       /* --listen, or NULL */
    struct vault_watch *vault; /* ops hook: SENDRY_API_KEY_VAULT, re-read after a 401/403; or NULL */
    bool backlog_in_flight;
    char locked_by[256];
    uint64_t rng;

    /* gates */
    bool verified;
    bool stopping;
    bool finished;
    int exit_status;
    bool claim_in_flight;
    bool claim_wanted;
    bool next_due_in_flight;
    double pause_until;        /* 429: no request before this (ev_now) */
    int rate_limited_streak;
    bool stopped;              /* 401/402/403/unknown audience */
    double stop_since;
    char stop_cause[768];
    double stop_until;         /* next probe */
    double stop_backoff;
    double stop_logged_at;
    struct token_bucket bucket;

    /* work */
    struct job *waiting_head, *waiting_tail;
    struct job *inflight;      /* jobs whose request is under way */
    int jobs_in_flight;
    int claim_limit;           /* the LIMIT of the claim in flight */
    double claim_sent_at;      /* ev_now when it was sent */
    size_t rows_held;          /* claimed and not yet completed in the database */
    struct completion *done;   /* outcomes not yet written */
    size_t n_done, cap_done;
    size_t n_done_in_flight;   /* the first n_done_in_flight entries are being written */

    /* NOTIFY health */
    double connected_at;
    long notifies_since_connect;
    bool warned_no_notify;

    /* counters */
    long long sent, failed, retried, http_calls;
    long long progress_sent, progress_failed, progress_retried;
    bool any_failed;
    bool drain_expired;

    /* reconciliation of unsubscribes and suppressions */
    int rec_list;              /* index into reconcile_lists, -1 = idle */
    char *rec_cursor;          /* cursor of the page being fetched, NULL = first page */
    bool rec_busy;             /* a request or a query of the run is under way */
    long long rec_applied, rec_seen;

    ev_timer poll_timer, due_timer, pace_timer, drain_timer, progress_timer, stop_log_timer;
    ev_timer reconcile_timer, reconcile_step, backlog_timer;
    ev_timer once_db_deadline;     /* --once: give up when the database stays unreachable */
    ev_idle kick;
};

static void maybe_claim(struct relay *r);
static void start_jobs(struct relay *r);
static void flush_completions(struct relay *r);
static void check_finished(struct relay *r);
static void release_waiting(struct relay *r);

/* ---- small helpers ----------------------------------------------------------------- */

/* A growable string for array literals. */
struct buf {
    char *s;
    size_t len, cap;
    bool oom;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *grown = realloc(b->s, cap);
        if (!grown) {
            b->oom = true;
            return;
        }
        b->s = grown;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    buf_add(b, tmp, n < 0 ? 0 : (size_t)n);
}

/* An element of a PostgreSQL array literal: double-quoted, \ and " escaped. */
static void buf_array_text(struct buf *b, const char *s)
{
    if (!s) {
        buf_add(b, "NULL", 4);
        return;
    }
    buf_add(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            buf_add(b, "\\", 1);
        buf_add(b, p, 1);
    }
    buf_add(b, "\"", 1);
}

static void row_free(struct row *row)
{
    if (!row)
        return;
    free(row->email);
    free(row->old_email);
    json_object_put(row->payload);
    free(row);
}

static void job_free(struct job *job)
{
    if (!job)
        return;
    for (size_t i = 0; i < job->n; i++)
        row_free(job->rows[i]);
    free(job->rows);
    free(job);
}

static double now_of(struct relay *r)
{
    return ev_now(r->loop);
}

static void kick(struct relay *r)
{
    ev_idle_start(r->loop, &r->kick);
}

/* ---- completions ------------------------------------------------------------------- */

static void complete_row(struct relay *r, struct row *row, const char *status, int http_status,
                         const char *error, double delay, int uncount)
{
    if (r->n_done == r->cap_done) {
        size_t cap = r->cap_done ? r->cap_done * 2 : 1024;
        struct completion *grown = realloc(r->done, cap * sizeof *grown);
        if (!grown) {
            /* The row stays processing until its lease runs out: nothing is lost. */
            log_error("out of memory recording the outcome of row %lld", row->id);
            r->rows_held--;
            return;
        }
        r->done = grown;
        r->cap_done = cap;
    }
    struct completion *c = &r->done[r->n_done++];
    c->id = row->id;
    c->status = status;
    c->http_status = http_status;
    c->error = error ? strdup(error) : NULL;
    c->delay_ms = (long long)(delay * 1000);
    c->uncount = uncount;
}

static void on_completed(PGresult *res, void *arg)
{
    struct relay *r = arg;
    size_t n = r->n_done_in_flight;
    r->n_done_in_flight = 0;
    if (!res)
        return; /* connection lost: kept in memory and written after the reconnect */
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        /* Not the connection: the statement itself failed, and sending it again would
         * fail again and hold up every later outcome. Drop these; their rows are still
         * processing and come back when their lease runs out (nothing is lost). */
        log_error("db: recording %zu outcomes failed: %s; those rows will be retried after "
                  "their lease (%.0f s)", n, PQresultErrorMessage(res), r->cfg->lease);
        for (size_t i = 0; i < n; i++)
            free(r->done[i].error);
        memmove(r->done, r->done + n, (r->n_done - n) * sizeof *r->done);
        r->n_done -= n;
        r->rows_held -= n;
        flush_completions(r);
        kick(r);
        return;
    }
    long long sent = 0, failed = 0, retried = 0;
    long long soonest_ms = -1;
    for (size_t i = 0; i < n; i++) {
        struct completion *c = &r->done[i];
        if (strcmp(c->status, "sent") == 0)
            sent++;
        else if (strcmp(c->status, "failed") == 0)
            failed++;
        else {
            if (c->uncount == 0)
                retried++;
            if (soonest_ms < 0 || c->delay_ms < soonest_ms)
                soonest_ms = c->delay_ms;
        }
        free(c->error);
    }
    /* Wake up when the soonest retry is due, not at the next poll. */
    if (soonest_ms >= 0 && !r->stopping) {
        double at = (double)soonest_ms / 1000.0 + 0.01;
        if (!ev_is_active(&r->due_timer) || ev_timer_remaining(r->loop, &r->due_timer) > at) {
            ev_timer_stop(r->loop, &r->due_timer);
            ev_timer_set(&r->due_timer, at, 0.);
            ev_timer_start(r->loop, &r->due_timer);
        }
    }
    const char *affected = PQcmdTuples(res);
    if (atoll(affected) != (long long)n)
        log_warn("db: %lld of %zu outcomes recorded; the rest were taken over by another worker "
                 "after their lease (--lease %.0f s) ran out", atoll(affected), n, r->cfg->lease);
    memmove(r->done, r->done + n, (r->n_done - n) * sizeof *r->done);
    r->n_done -= n;
    r->rows_held -= n;
    r->sent += sent;
    r->failed += failed;
    r->retried += retried;
    r->progress_sent += sent;
    r->progress_failed += failed;
    r->progress_retried += retried;
    metrics.rows_sent += (unsigned long long)sent;
    metrics.rows_failed += (unsigned long long)failed;
    metrics.rows_retried += (unsigned long long)retried;
    if (failed)
        r->any_failed = true;
    /* A finished row may unblock a later change for the same contact. */
    if (sent || failed)
        r->claim_wanted = true;
    flush_completions(r);
    kick(r);
}

static void flush_completions(struct relay *r)
{
    if (r->n_done_in_flight || r->n_done == 0 || !db_connected(r->db))
        return;
    size_t n = r->n_done;
    struct buf ids = {0}, statuses = {0}, https = {0}, errors = {0}, delays = {0}, uncounts = {0};
    buf_add(&ids, "{", 1);
    buf_add(&statuses, "{", 1);
    buf_add(&https, "{", 1);
    buf_add(&errors, "{", 1);
    buf_add(&delays, "{", 1);
    buf_add(&uncounts, "{", 1);
    for (size_t i = 0; i < n; i++) {
        struct completion *c = &r->done[i];
        const char *sep = i ? "," : "";
        buf_printf(&ids, "%s%lld", sep, c->id);
        buf_printf(&statuses, "%s%s", sep, c->status);
        if (c->http_status)
            buf_printf(&https, "%s%d", sep, c->http_status);
        else
            buf_printf(&https, "%sNULL", sep);
        buf_add(&errors, sep, strlen(sep));
        buf_array_text(&errors, c->error);
        buf_printf(&delays, "%s%lld", sep, c->delay_ms);
        buf_printf(&uncounts, "%s%d", sep, c->uncount);
    }
    buf_add(&ids, "}", 1);
    buf_add(&statuses, "}", 1);
    buf_add(&https, "}", 1);
    buf_add(&errors, "}", 1);
    buf_add(&delays, "}", 1);
    buf_add(&uncounts, "}", 1);
    bool oom = ids.oom || statuses.oom || https.oom || errors.oom || delays.oom || uncounts.oom;
    if (!oom) {
        const char *params[7] = {ids.s, statuses.s, https.s, errors.s, delays.s, uncounts.s, r->locked_by};
        if (db_query(r->db, COMPLETE_SQL, 7, params, on_completed, r))
            r->n_done_in_flight = n;
        else
            oom = true;
    }
    if (oom)
        log_error("out of memory writing %zu outcomes; will try again", n);
    free(ids.s);
    free(statuses.s);
    free(https.s);
    free(errors.s);
    free(delays.s);
    free(uncounts.s);
}

/* ---- outcomes ---------------------------------------------------------------------- */

static void describe_error(const struct http_request *req, char *out, size_t size, char *code,
                           size_t code_size, double *retry_after)
{
    if (!req->transport_ok) {
        snprintf(out, size, "network: %s", req->error);
        utf8_sanitize(out);
        return;
    }
    char message[300] = "";
    sendry_parse_error(req->response, req->response_len, code, code_size, message, sizeof message,
                       retry_after);
    if (!message[0] && req->response_len && req->response_len < 200 && req->response[0] != '{')
        snprintf(message, sizeof message, "%s", req->response);
    snprintf(out, size, "HTTP %ld%s%s%s%s", req->status, code[0] ? " " : "", code,
             message[0] ? ": " : "", message);
    utf8_sanitize(out); /* it goes into a text column: never let it break the UPDATE */
}

/* Stops sending after 401/402/403 or an unknown audience. A request that started
 * before the stop began says nothing new; a probe that fails again doubles the wait. */
static void enter_stopped(struct relay *r, const char *cause, double request_started)
{
    double now = now_of(r);
    if (r->stopped && request_started < r->stop_since)
        return;
    if (!r->stopped) {
        r->stopped = true;
        r->stop_backoff = 60;
        r->stop_logged_at = 0;
    } else {
        r->stop_backoff = r->stop_backoff * 2 > 900 ? 900 : r->stop_backoff * 2;
    }
    r->stop_since = now;
    snprintf(r->stop_cause, sizeof r->stop_cause, "%s", cause);
    metrics_set_stopped(true, r->stop_cause);
    notify_status("sending stopped: %s", r->stop_cause); /* ops hook: systemd STATUS= */
    r->stop_until = now + r->stop_backoff;
    if (now - r->stop_logged_at >= 60) {
        log_error("sending stopped: %s; rows stay pending; trying again in %.0f s", r->stop_cause,
                  r->stop_backoff);
        r->stop_logged_at = now;
    }
    if (!ev_is_active(&r->stop_log_timer))
        ev_timer_again(r->loop, &r->stop_log_timer);
    ev_timer_stop(r->loop, &r->due_timer);
    ev_timer_set(&r->due_timer, r->stop_backoff, 0.);
    ev_timer_start(r->loop, &r->due_timer);
}

static const char *stop_hint(long status)
{
    switch (status) {
    case 401: return "the API key is missing, malformed, unknown or expired (401)";
    case 402: return "the Sendry account needs payment (402)";
    case 403: return "the API key lacks the scope to write contacts: it needs full_access (403)";
    case 404: return "the audience does not exist (404): check SENDRY_AUDIENCE_ID";
    default: return "Sendry refused the request";
    }
}

static void push_front(struct relay *r, struct job *job)
{
    job->next = r->waiting_head;
    r->waiting_head = job;
    if (!r->waiting_tail)
        r->waiting_tail = job;
}

/* Splits a rejected batch in halves, so that one bad address never blocks the rest. */
static bool split_job(struct relay *r, struct job *job)
{
    size_t half = job->n / 2;
    struct job *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    struct row **ra = malloc(half * sizeof *ra), **rb = malloc((job->n - half) * sizeof *rb);
    if (!a || !b || !ra || !rb) {
        free(a);
        free(b);
        free(ra);
        free(rb);
        return false;
    }
    memcpy(ra, job->rows, half * sizeof *ra);
    memcpy(rb, job->rows + half, (job->n - half) * sizeof *rb);
    *a = (struct job){.req = job->req, .rows = ra, .n = half, .relay = r};
    *b = (struct job){.req = job->req, .rows = rb, .n = job->n - half, .relay = r};
    push_front(r, b);
    push_front(r, a);
    free(job->rows);
    free(job);
    return true;
}

/* The steps of an email change and of a deletion: what an answer means for the job. */
enum advance {
    ADV_CLASSIFY,   /* the usual classification of the answer applies */
    ADV_NEXT,       /* another request for the same job is set up in job */
    ADV_DONE,       /* the row is done although the answer is not a 2xx (404 on a delete) */
    ADV_RETRY       /* a 2xx we cannot use: retry the row with backoff */
};

static enum advance advance_job(struct job *job, const struct http_request *req)
{
    long st = req->status;
    bool ok = st >= 200 && st < 300;
    struct row *row = job->rows[0];
    switch (job->req) {
    case REQ_MOVE:
        if (st == 404 || st == 409) {
            /* 404: Sendry never had the old address: upsert the new one.
             * 409: both addresses exist: upsert the new one, then delete the old. */
            job->req = REQ_IMPORT;
            job->then_delete_old = st == 409;
            return ADV_NEXT;
        }
        return ADV_CLASSIFY;
    case REQ_IMPORT:
        if (ok && job->then_delete_old) {
            job->then_delete_old = false;
            job->req = REQ_LOOKUP;
            job->lookup = row->old_email;
            return ADV_NEXT;
        }
        return ADV_CLASSIFY;
    case REQ_LOOKUP:
        if (st == 404)
            return ADV_DONE; /* nothing to delete */
        if (!ok)
            return ADV_CLASSIFY;
        if (!sendry_contact_id(req->response, req->response_len, job->contact_id, sizeof job->contact_id))
            return ADV_RETRY;
        job->req = row->op == OP_DELETE && sendry_delete_removes_from_audience(row) ? REQ_REMOVE_MEMBER
                                                                                  : REQ_DELETE_CONTACT;
        return ADV_NEXT;
    case REQ_DELETE_CONTACT:
    case REQ_REMOVE_MEMBER:
        return st == 404 ? ADV_DONE : ADV_CLASSIFY; /* 404: already gone */
    case REQ_CREATE:
        break;
    }
    return ADV_CLASSIFY;
}

static void on_http_done(struct http_request *req, void *arg)
{
    struct job *job = arg;
    struct relay *r = job->relay;
    r->jobs_in_flight--;
    if (job->prev)
        job->prev->next = job->next;
    else
        r->inflight = job->next;
    if (job->next)
        job->next->prev = job->prev;
    job->next = job->prev = NULL;
    double now = now_of(r);

    bool aborted = !req->transport_ok && strcmp(req->error, "aborted") == 0;
    if (!aborted)
        metrics_http(req->transport_ok ? req->status : 0);
    enum advance adv = req->transport_ok ? advance_job(job, req) : ADV_CLASSIFY;
    if (adv == ADV_NEXT && r->stopping) {
        /* Half-way through a move or a deletion: give the row back, to start over. */
        for (size_t i = 0; i < job->n; i++)
            complete_row(r, job->rows[i], "pending", 0, NULL, 0, 1);
        goto done;
    }
    if (adv == ADV_NEXT) {
        http_request_free(req);
        push_front(r, job);
        start_jobs(r);
        kick(r);
        return;
    }
    /* Only an import or a create names the audience: a 404 there means it is gone. */
    enum outcome oc = adv == ADV_DONE    ? OUTCOME_SENT
                      : adv == ADV_RETRY ? OUTCOME_RETRY
                                         : sendry_classify(req->transport_ok, req->status,
                                                           job->req == REQ_IMPORT || job->req == REQ_CREATE);
    char error[600] = "", code[64] = "";
    double retry_after = -1;
    if (adv == ADV_RETRY)
        snprintf(error, sizeof error, "HTTP %ld without a contact id", req->status);
    else if (oc != OUTCOME_SENT)
        describe_error(req, error, sizeof error, code, sizeof code, &retry_after);
    log_debug("http: %s %s -> %ld (%s, %zu rows, %.3f s)", req->method, req->url, req->status,
              outcome_name(oc), job->n, req->elapsed);
    int http_status = req->transport_ok ? (int)req->status : 0;

    if (r->stopping && aborted) {
        /* Shutdown deadline: not sent as far as we know; give the rows back untouched. */
        for (size_t i = 0; i < job->n; i++)
            complete_row(r, job->rows[i], "pending", 0, NULL, 0, 1);
        goto done;
    }

    switch (oc) {
    case OUTCOME_SENT:
        if (r->stopped) {
            log_info("sending resumed: Sendry accepted a request again");
            r->stopped = false;
            metrics_set_stopped(false, NULL);
            notify_status("delivering the outbox to Sendry"); /* ops hook: systemd STATUS= */
            if (r->vault)
                vault_watch_calm(r->vault); /* ops hook: the key works, stop re-reading it */
            ev_timer_stop(r->loop, &r->stop_log_timer);
        }
        r->rate_limited_streak = 0;
        for (size_t i = 0; i < job->n; i++)
            complete_row(r, job->rows[i], "sent", http_status, NULL, 0, 0);
        break;

    case OUTCOME_RETRY: {
        size_t gave_up = 0;
        for (size_t i = 0; i < job->n; i++) {
            struct row *row = job->rows[i];
            if (row->attempts >= row->max_attempts) {
                char who[128];
                char shown[700];
                if (gave_up++ == 0)
                    log_warn("row %lld (%s) failed after %d attempts: %s", row->id,
                             log_email(row->email, who, sizeof who), row->attempts,
                             log_text(error, shown, sizeof shown));
                complete_row(r, row, "failed", http_status, error, 0, 0);
            } else {
                double delay = backoff_delay(r->cfg->backoff_base, r->cfg->backoff_cap, row->attempts,
                                             rand_unit(&r->rng));
                complete_row(r, row, "pending", http_status, error, delay, 0);
            }
        }
        if (gave_up > 1)
            log_warn("%zu rows of that request failed after their last attempt", gave_up);
        char shown[700];
        if (gave_up < job->n)
            log_warn("%s (%zu rows): will retry with backoff", log_text(error, shown, sizeof shown),
                     job->n - gave_up);
        break;
    }

    case OUTCOME_RATE_LIMITED: {
        double wait = sendry_retry_after(req->retry_after, (double)time(NULL));
        if (wait < 0)
            wait = retry_after;
        r->rate_limited_streak++;
        if (wait < 0)
            wait = backoff_delay(r->cfg->backoff_base, r->cfg->backoff_cap, r->rate_limited_streak,
                                 0.5 + rand_unit(&r->rng) / 2);
        if (wait > 3600)
            wait = 3600;
        if (now + wait > r->pause_until)
            r->pause_until = now + wait;
        log_warn("rate limited by Sendry (429): pausing all requests for %.1f s", wait);
        metrics.rate_limit_waits++;
        /* Other workers share the key: leave the rows due after the pause. A --once run
         * pauses in memory and must find them due when it claims again. */
        for (size_t i = 0; i < job->n; i++)
            complete_row(r, job->rows[i], "pending", http_status, error, r->cfg->once ? 0 : wait, 1);
        ev_timer_stop(r->loop, &r->pace_timer);
        ev_timer_set(&r->pace_timer, r->pause_until - now, 0.);
        ev_timer_start(r->loop, &r->pace_timer);
        break;
    }

    case OUTCOME_INVALID:
        if ((req->status == 400 || req->status == 422) && job->n > 1) {
            char shown[700];
            log_info("batch of %zu rejected (%s): splitting it to find the bad rows", job->n,
                     log_text(error, shown, sizeof shown));
            if (split_job(r, job)) {
                http_request_free(req);
                if (r->stopping)
                    release_waiting(r); /* the halves will not be sent now */
                start_jobs(r);
                kick(r);
                return;
            }
        }
        for (size_t i = 0; i < job->n; i++) {
            char who[128], shown[700];
            if (i == 0)
                log_warn("row %lld (%s)%s rejected: %s", job->rows[i]->id,
                         log_email(job->rows[i]->email, who, sizeof who),
                         job->n > 1 ? " and the rest of its request" : "",
                         log_text(error, shown, sizeof shown));
            complete_row(r, job->rows[i], "failed", http_status, error, 0, 0);
        }
        break;

    case OUTCOME_STOP: {
        char cause[700];
        char shown[700];
        snprintf(cause, sizeof cause, "%s [%s]", stop_hint(req->status), log_text(error, shown, sizeof shown));
        enter_stopped(r, cause, job->started_at);
        /* ops hook: with the key in Vault, read it again; the rows stay due for the new key. */
        if (r->vault && (req->status == 401 || req->status == 403))
            vault_watch_kick(r->vault);
        for (size_t i = 0; i < job->n; i++)
            complete_row(r, job->rows[i], "pending", http_status, error, r->vault ? 0 : r->stop_backoff, 1);
        break;
    }
    }

done:
    http_request_free(req);
    job_free(job);
    flush_completions(r);
    kick(r);
}

/* ---- delivery ---------------------------------------------------------------------- */

static char *url_of(struct relay *r, const char *path)
{
    size_t n = strlen(r->cfg->api_url) + strlen(path) + 1;
    char *url = malloc(n);
    if (url)
        snprintf(url, n, "%s%s", r->cfg->api_url, path);
    return url;
}

/* "/v1/contacts/by-email?email=<address>" */
static char *by_email_path(const char *address)
{
    char *enc = sendry_url_encode(address);
    if (!enc)
        return NULL;
    size_t n = strlen(enc) + 40;
    char *path = malloc(n);
    if (path)
        snprintf(path, n, "/v1/contacts/by-email?email=%s", enc);
    free(enc);
    return path;
}

static bool start_job(struct relay *r, struct job *job)
{
    char *body = NULL, *url = NULL, *path = NULL;
    const char *method = "POST";
    char idpath[512];
    struct row *first = job->rows[0];
    switch (job->req) {
    case REQ_IMPORT:
        body = sendry_import_body(job->rows, job->n, r->cfg->audience_id);
        url = url_of(r, "/v1/contacts/import");
        break;
    case REQ_CREATE:
        body = sendry_contact_body(first, r->cfg->audience_id);
        url = url_of(r, "/v1/contacts");
        break;
    case REQ_MOVE:
        method = "PATCH";
        body = sendry_move_body(first);
        path = by_email_path(first->old_email);
        url = path ? url_of(r, path) : NULL;
        break;
    case REQ_LOOKUP:
        method = "GET";
        path = by_email_path(job->lookup);
        url = path ? url_of(r, path) : NULL;
        break;
    case REQ_DELETE_CONTACT:
    case REQ_REMOVE_MEMBER: {
        method = "DELETE";
        char *enc = sendry_url_encode(job->contact_id);
        if (enc) {
            if (job->req == REQ_DELETE_CONTACT)
                snprintf(idpath, sizeof idpath, "/v1/contacts/%s", enc);
            else
                snprintf(idpath, sizeof idpath, "/v1/audiences/%s/contacts/%s", r->cfg->audience_id, enc);
            url = url_of(r, idpath);
        }
        free(enc);
        break;
    }
    }
    free(path);
    bool needs_body = job->req == REQ_IMPORT || job->req == REQ_CREATE || job->req == REQ_MOVE;
    if (!url || (needs_body && !body)) {
        free(body);
        free(url);
        return false;
    }
    struct http_request *req = http_request_new(method, url, body);
    if (!req)
        return false;
    req->done = on_http_done;
    req->arg = job;
    if (!http_start(r->http, req)) {
        http_request_free(req);
        return false;
    }
    r->jobs_in_flight++;
    r->http_calls++;
    job->started_at = now_of(r);
    job->prev = NULL;
    job->next = r->inflight;
    if (r->inflight)
        r->inflight->prev = job;
    r->inflight = job;
    return true;
}

static bool paused(struct relay *r)
{
    return now_of(r) < r->pause_until;
}

/* Starts waiting jobs while there is room, a token, and no 429 pause. */
static void start_jobs(struct relay *r)
{
    while (r->waiting_head && !r->stopping && !paused(r) && r->jobs_in_flight < r->cfg->concurrency) {
        double wait = bucket_take(&r->bucket, now_of(r));
        if (wait > 0) {
            if (!ev_is_active(&r->pace_timer)) {
                ev_timer_set(&r->pace_timer, wait, 0.);
                ev_timer_start(r->loop, &r->pace_timer);
            }
            return;
        }
        struct job *job = r->waiting_head;
        r->waiting_head = job->next;
        if (!r->waiting_head)
            r->waiting_tail = NULL;
        job->next = NULL;
        if (!start_job(r, job)) {
            /* Could not even start: count it as a failed attempt with backoff. */
            log_error("could not start a request for %zu rows (out of memory?)", job->n);
            for (size_t i = 0; i < job->n; i++)
                complete_row(r, job->rows[i], "pending", 0, "worker: could not start request",
                             backoff_delay(r->cfg->backoff_base, r->cfg->backoff_cap,
                                           job->rows[i]->attempts, rand_unit(&r->rng)), 0);
            job_free(job);
            flush_completions(r);
        }
    }
}

static void enqueue_job(struct relay *r, struct job *job)
{
    job->next = NULL;
    if (r->waiting_tail)
        r->waiting_tail->next = job;
    else
        r->waiting_head = job;
    r->waiting_tail = job;
}

static struct job *job_new(struct relay *r, enum req_kind kind, size_t n)
{
    struct job *job = calloc(1, sizeof *job);
    if (!job)
        return NULL;
    job->rows = calloc(n ? n : 1, sizeof *job->rows);
    if (!job->rows) {
        free(job);
        return NULL;
    }
    job->req = kind;
    job->relay = r;
    return job;
}

/* Rows claimed but not sent go back to pending at once, their attempt not counted. */
static void release_waiting(struct relay *r)
{
    while (r->waiting_head) {
        struct job *job = r->waiting_head;
        r->waiting_head = job->next;
        for (size_t i = 0; i < job->n; i++)
            complete_row(r, job->rows[i], "pending", 0, NULL, 0, 1);
        job_free(job);
    }
    r->waiting_tail = NULL;
    flush_completions(r);
}

/* ---- claiming ---------------------------------------------------------------------- */

static void on_next_due(PGresult *res, void *arg)
{
    struct relay *r = arg;
    r->next_due_in_flight = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        return;
    double in = atof(PQgetvalue(res, 0, 0));
    /* Due already, yet not claimed: held back behind an older change in flight, or
     * locked by another worker. A completion or a NOTIFY wakes us for those; do not
     * spin on them. */
    if (in <= 0)
        in = r->cfg->poll_interval < 1 ? r->cfg->poll_interval : 1;
    if (in >= r->cfg->poll_interval)
        return; /* the poll will come first */
    ev_timer_stop(r->loop, &r->due_timer);
    ev_timer_set(&r->due_timer, in, 0.);
    ev_timer_start(r->loop, &r->due_timer);
}

static void on_claimed(PGresult *res, void *arg)
{
    struct relay *r = arg;
    r->claim_in_flight = false;
    if (!res)
        return; /* connection lost: RELEASE_ORPHANS_SQL sorts it out after the reconnect */
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_error("db: claim failed: %s", PQresultErrorMessage(res));
        r->claim_wanted = false; /* the poll timer tries again */
        return;
    }
    int n = PQntuples(res);
    metrics_claim(n);
    size_t limit = r->cfg->mode == MODE_IMPORT ? (size_t)r->cfg->batch_size : 1;
    struct job *job = NULL;
    bool fresh_rows = false;
    /* Measured when the claim was sent, as the rows' ages are (the database's now()). */
    double connected_for = r->claim_sent_at - r->connected_at;
    for (int i = 0; i < n; i++) {
        struct row *row = calloc(1, sizeof *row);
        if (!row) {
            log_error("out of memory holding claimed row %s; its lease will return it",
                      PQgetvalue(res, i, 0));
            continue;
        }
        row->id = atoll(PQgetvalue(res, i, 0));
        row->email = sendry_normalize_email(PQgetvalue(res, i, 1));
        row->payload = json_tokener_parse(PQgetvalue(res, i, 2));
        row->attempts = atoi(PQgetvalue(res, i, 3));
        row->max_attempts = atoi(PQgetvalue(res, i, 4));
        double age = atof(PQgetvalue(res, i, 5));
        row->op = strcmp(PQgetvalue(res, i, 6), "delete") == 0 ? OP_DELETE : OP_UPSERT;
        if (!PQgetisnull(res, i, 7))
            row->old_email = sendry_normalize_email(PQgetvalue(res, i, 7));
        if (row->attempts == 1 && age < connected_for - 1)
            fresh_rows = true;
        r->rows_held++;

        /* Plain upserts share an import request; a move or a deletion is its own job. */
        struct job *own = NULL;
        if (row->op == OP_DELETE) {
            own = job_new(r, REQ_LOOKUP, 1);
            if (own)
                own->lookup = row->email;
        } else if (row->old_email && strcmp(row->old_email, row->email) != 0) {
            own = job_new(r, REQ_MOVE, 1);
        } else if (!job || job->n == limit) {
            if (job)
                enqueue_job(r, job);
            job = job_new(r, r->cfg->mode == MODE_IMPORT ? REQ_IMPORT : REQ_CREATE, limit);
            if (job) {
                job->rows[job->n++] = row;
                continue;
            }
        } else {
            job->rows[job->n++] = row;
            continue;
        }
        if (!own) {
            log_error("out of memory; row %lld will be retried", row->id);
            complete_row(r, row, "pending", 0, NULL, 1, 1);
            row_free(row);
            continue;
        }
        own->rows[own->n++] = row;
        enqueue_job(r, own);
    }
    if (job)
        enqueue_job(r, job);
    if (n > 0)
        log_debug("claimed %d rows", n);

    if (fresh_rows && r->notifies_since_connect == 0 && !r->warned_no_notify) {
        r->warned_no_notify = true;
        log_warn("found new due rows by polling but no NOTIFY arrived since connecting: "
                 "notifications are not reaching this worker. Connect directly (port 5432) or "
                 "through the session-mode pooler, not the transaction-mode pooler (port 6543); "
                 "until then rows wait up to --poll-interval (%.0f s)", r->cfg->poll_interval);
    }

    if (r->stopping)
        release_waiting(r);
    else if (n < r->claim_limit) {
        /* Nothing more is due now: wake up when the next row is. */
        r->claim_wanted = false;
        if (!r->next_due_in_flight)
            r->next_due_in_flight = db_query(r->db, NEXT_DUE_SQL, 0, NULL, on_next_due, r);
    }
    start_jobs(r);
    flush_completions(r);
    kick(r);
}

static void maybe_claim(struct relay *r)
{
    if (!r->verified || r->stopping || r->finished || r->claim_in_flight || !r->claim_wanted)
        return;
    if (!db_connected(r->db) || paused(r) || r->waiting_head)
        return;
    if (r->stopped && now_of(r) < r->stop_until)
        return;
    int free_slots = r->cfg->concurrency - r->jobs_in_flight;
    if (free_slots <= 0)
        return;
    int tokens = bucket_available(&r->bucket, now_of(r));
    if (tokens < 1) {
        if (!ev_is_active(&r->pace_timer)) {
            ev_timer_set(&r->pace_timer, 1.0 / r->cfg->rate, 0.);
            ev_timer_start(r->loop, &r->pace_timer);
        }
        return;
    }
    int limit;
    if (r->cfg->mode == MODE_IMPORT)
        limit = r->cfg->batch_size;
    else {
        limit = free_slots < tokens ? free_slots : tokens;
        if (limit > r->cfg->batch_size)
            limit = r->cfg->batch_size;
    }
    char slimit[16], slease[32], smax[16];
    snprintf(slimit, sizeof slimit, "%d", limit);
    snprintf(slease, sizeof slease, "%.3f", r->cfg->lease);
    snprintf(smax, sizeof smax, "%d", r->cfg->max_attempts);
    const char *params[4] = {slimit, r->locked_by, slease, smax};
    if (db_query(r->db, CLAIM_SQL, 4, params, on_claimed, r)) {
        r->claim_in_flight = true;
        r->claim_limit = limit;
        r->claim_sent_at = now_of(r);
        if (r->stopped)
            r->stop_until = now_of(r) + r->stop_backoff; /* one probe per period */
    }
}

/* ---- reconciliation ---------------------------------------------------------------- */

/* Webhook delivery is not guaranteed: every --reconcile-interval, page through Sendry's
 * unsubscribes and suppressions since the last cursor and feed them through the inbox,
 * where event ids deduplicate what the webhook already brought. */
static const struct {
    const char *path, *type, *state_key;
} reconcile_lists[] = {
    {"/v1/unsubscribes", "unsubscribe", "reconcile.unsubscribes.cursor"},
    {"/v1/suppression", "suppression", "reconcile.suppression.cursor"},
};
#define N_RECONCILE_LISTS 2

static void reconcile_fetch(struct relay *r);

static void reconcile_end(struct relay *r, const char *why)
{
    if (why)
        log_warn("reconcile: stopped early: %s; next run in %.0f s", why, r->cfg->reconcile_interval);
    else if (r->rec_seen)
        log_info("reconcile: %lld entries read, %lld new opt-outs applied", r->rec_seen, r->rec_applied);
    r->rec_list = -1;
    r->rec_busy = false;
    free(r->rec_cursor);
    r->rec_cursor = NULL;
    kick(r);
}

static void reconcile_next_list(struct relay *r);

static void on_reconcile_cursor(PGresult *res, void *arg)
{
    struct relay *r = arg;
    r->rec_busy = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        reconcile_end(r, res ? PQresultErrorMessage(res) : "database connection lost");
        return;
    }
    free(r->rec_cursor);
    r->rec_cursor = PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) ? strdup(PQgetvalue(res, 0, 0)) : NULL;
    reconcile_fetch(r);
}

static void reconcile_next_list(struct relay *r)
{
    r->rec_list++;
    if (r->rec_list >= N_RECONCILE_LISTS) {
        reconcile_end(r, NULL);
        return;
    }
    const char *params[1] = {reconcile_lists[r->rec_list].state_key};
    r->rec_busy = db_query(r->db, RECONCILE_CURSOR_SQL, 1, params, on_reconcile_cursor, r);
    if (!r->rec_busy)
        reconcile_end(r, "out of memory");
}

static void on_reconcile_stored(PGresult *res, void *arg)
{
    struct relay *r = arg;
    r->rec_busy = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        reconcile_end(r, res ? PQresultErrorMessage(res) : "database connection lost");
        return;
    }
    r->rec_applied += atoll(PQgetvalue(res, 0, 0));
    r->rec_seen += atoll(PQgetvalue(res, 0, 2));
    if (r->rec_cursor)
        reconcile_fetch(r);      /* has_more: the next page */
    else
        reconcile_next_list(r);
}

static void on_reconcile_page(struct http_request *req, void *arg)
{
    struct relay *r = arg;
    r->rec_busy = false;
    if (r->stopping) {
        http_request_free(req);
        reconcile_end(r, NULL);
        return;
    }
    if (!req->transport_ok || req->status != 200) {
        char error[600] = "", code[64] = "";
        double retry_after = -1;
        describe_error(req, error, sizeof error, code, sizeof code, &retry_after);
        if (req->transport_ok && req->status == 429) {
            double wait = sendry_retry_after(req->retry_after, (double)time(NULL));
            if (wait < 0)
                wait = retry_after > 0 ? retry_after : 10;
            if (now_of(r) + wait > r->pause_until)
                r->pause_until = now_of(r) + wait;
            /* Try the same page again after the pause. */
            http_request_free(req);
            ev_timer_set(&r->reconcile_step, wait, 0.);
            ev_timer_start(r->loop, &r->reconcile_step);
            r->rec_busy = true;
            return;
        }
        char why[700];
        snprintf(why, sizeof why, "GET %s: %s", reconcile_lists[r->rec_list].path, error);
        http_request_free(req);
        reconcile_end(r, why);
        return;
    }
    json_tokener *tok = json_tokener_new();
    json_object *root = tok ? json_tokener_parse_ex(tok, req->response ? req->response : "",
                                                   (int)req->response_len) : NULL;
    json_tokener_free(tok);
    json_object *data = NULL, *more = NULL, *next = NULL;
    if (!root || !json_object_object_get_ex(root, "data", &data) ||
        !json_object_is_type(data, json_type_array)) {
        json_object_put(root);
        http_request_free(req);
        reconcile_end(r, "the list answer has no data array");
        return;
    }
    json_object_object_get_ex(root, "has_more", &more);
    json_object_object_get_ex(root, "next_cursor", &next);
    const char *type = reconcile_lists[r->rec_list].type;
    json_object *events = json_object_new_array();
    size_t n = json_object_array_length(data);
    for (size_t i = 0; i < n; i++) {
        json_object *item = json_object_array_get_idx(data, i), *v;
        char event_id[600];
        if (json_object_object_get_ex(item, "id", &v) && json_object_is_type(v, json_type_string))
            snprintf(event_id, sizeof event_id, "%s:%s", type, json_object_get_string(v));
        else {
            json_object *email = NULL, *at = NULL;
            json_object_object_get_ex(item, "email", &email);
            json_object_object_get_ex(item, "created_at", &at);
            snprintf(event_id, sizeof event_id, "%s:%s:%s", type, email ? json_object_get_string(email) : "",
                     at ? json_object_get_string(at) : "");
        }
        json_object *payload = json_object_new_object();
        json_object_object_add(payload, "type", json_object_new_string(type));
        json_object_object_add(payload, "data", json_object_get(item));
        json_object *ev = json_object_new_object();
        json_object_object_add(ev, "event_id", json_object_new_string(event_id));
        json_object_object_add(ev, "type", json_object_new_string(type));
        json_object_object_add(ev, "payload", payload);
        json_object_array_add(events, ev);
    }
    /* Remember where the next run starts: the next page, or this page again at the end
     * (the inbox deduplicates what it sees twice). */
    bool has_more = more && json_object_get_boolean(more) && next && json_object_is_type(next, json_type_string);
    char *store_cursor = has_more ? strdup(json_object_get_string(next)) : (r->rec_cursor ? strdup(r->rec_cursor) : NULL);
    const char *params[3] = {json_object_to_json_string_ext(events, JSON_C_TO_STRING_PLAIN),
                             reconcile_lists[r->rec_list].state_key, store_cursor};
    r->rec_busy = db_query(r->db, RECONCILE_STORE_SQL, 3, params, on_reconcile_stored, r);
    free(r->rec_cursor);
    r->rec_cursor = has_more ? store_cursor : NULL;
    if (!has_more)
        free(store_cursor);
    json_object_put(events);
    json_object_put(root);
    http_request_free(req);
    if (!r->rec_busy)
        reconcile_end(r, "out of memory");
}

/* Fetches the page at rec_cursor of the current list, when pacing allows. */
static void reconcile_fetch(struct relay *r)
{
    if (r->stopping) {
        reconcile_end(r, NULL);
        return;
    }
    double wait = paused(r) ? r->pause_until - now_of(r) : bucket_take(&r->bucket, now_of(r));
    if (wait > 0) {
        r->rec_busy = true;
        ev_timer_set(&r->reconcile_step, wait, 0.);
        ev_timer_start(r->loop, &r->reconcile_step);
        return;
    }
    char path[1200];
    char *enc = r->rec_cursor ? sendry_url_encode(r->rec_cursor) : NULL;
    snprintf(path, sizeof path, "%s?limit=100%s%s", reconcile_lists[r->rec_list].path, enc ? "&cursor=" : "",
             enc ? enc : "");
    free(enc);
    char *url = url_of(r, path);
    struct http_request *req = url ? http_request_new("GET", url, NULL) : NULL;
    if (!req) {
        reconcile_end(r, "out of memory");
        return;
    }
    req->done = on_reconcile_page;
    req->arg = r;
    if (!http_start(r->http, req)) {
        http_request_free(req);
        reconcile_end(r, "could not start a request");
        return;
    }
    r->rec_busy = true;
    r->http_calls++;
}

static void on_reconcile_step(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = w->data;
    r->rec_busy = false;
    reconcile_fetch(r);
}

static void on_reconcile_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = w->data;
    if (r->rec_list >= 0 || r->stopping || !r->verified || !db_connected(r->db) || r->stopped)
        return; /* a run is still going, or this one is skipped */
    r->rec_applied = r->rec_seen = 0;
    r->rec_list = -1;
    reconcile_next_list(r);
}

/* ---- metrics ----------------------------------------------------------------------- */

static void on_backlog(PGresult *res, void *arg)
{
    struct relay *r = arg;
    r->backlog_in_flight = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return;
    metrics.backlog_due = atof(PQgetvalue(res, 0, 0));
    metrics.oldest_due_age_seconds = atof(PQgetvalue(res, 0, 1));
}

static void on_backlog_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = w->data;
    if (!r->backlog_in_flight && db_connected(r->db) && !r->stopping)
        r->backlog_in_flight = db_query(r->db, BACKLOG_SQL, 0, NULL, on_backlog, r);
}

bool relay_listen(struct relay *r, char *err, size_t errsize)
{
    if (!r->cfg->listen)
        return true;
    r->httpd = httpd_start(r->loop, r->cfg->listen, r->cfg->webhook_secret, r->db,
                           r->cfg->webhook_max_body, err, errsize);
    if (!r->httpd)
        return false;
    log_info("listening on %s (POST /webhooks/sendry, GET /healthz, GET /metrics)", r->cfg->listen);
    ev_timer_init(&r->backlog_timer, on_backlog_timer, 1., 15.);
    r->backlog_timer.data = r;
    ev_timer_start(r->loop, &r->backlog_timer);
    return true;
}

/* ---- lifecycle --------------------------------------------------------------------- */

static void finish(struct relay *r, int status)
{
    if (r->finished)
        return;
    r->finished = true;
    r->exit_status = status;
    ev_break(r->loop, EVBREAK_ALL);
}

static bool all_settled(struct relay *r)
{
    return !r->claim_in_flight && !r->waiting_head && r->jobs_in_flight == 0 && r->rows_held == 0 &&
           r->n_done == 0 && !r->rec_busy && http_in_flight(r->http) == 0 &&
           (!r->httpd || httpd_pending(r->httpd) == 0);
}

static void check_finished(struct relay *r)
{
    if (r->finished)
        return;
    if (r->stopping) {
        if (all_settled(r)) {
            log_info("stopped: %lld sent, %lld failed, %lld retried in this run", r->sent, r->failed,
                     r->retried);
            finish(r, r->exit_status);
        }
        return;
    }
    if (r->cfg->once && r->verified && db_connected(r->db) && !r->claim_wanted && !paused(r) &&
        all_settled(r)) {
        if (r->stopped) {
            log_error("--once: sending is stopped (%s); rows left pending", r->stop_cause);
            finish(r, 1);
            return;
        }
        log_info("--once: done: %lld sent, %lld failed, %lld retried later", r->sent, r->failed,
                 r->retried);
        finish(r, r->any_failed ? 1 : 0);
    }
}

/* Runs once per loop iteration after something changed: the one place that moves work. */
static void on_kick(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)revents;
    struct relay *r = w->data;
    ev_idle_stop(loop, w);
    start_jobs(r);
    maybe_claim(r);
    flush_completions(r);
    check_finished(r);
}

static void on_poll(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = w->data;
    r->claim_wanted = true;
    kick(r);
}

static void on_timer_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = w->data;
    if (w == &r->due_timer || !paused(r))
        r->claim_wanted = true;
    kick(r);
}

static void on_progress(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = w->data;
    if (r->progress_sent || r->progress_failed || r->progress_retried)
        log_info("progress: %lld sent (%.0f/s), %lld failed, %lld to retry in the last %.0f s; "
                 "%lld sent in all",
                 r->progress_sent, (double)r->progress_sent / w->repeat, r->progress_failed,
                 r->progress_retried, w->repeat, r->sent);
    r->progress_sent = r->progress_failed = r->progress_retried = 0;
}

static void on_stop_log(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = w->data;
    if (!r->stopped) {
        ev_timer_stop(r->loop, w);
        return;
    }
    log_error("sending stopped: %s; rows stay pending; next try in %.0f s", r->stop_cause,
              r->stop_until - now_of(r) > 0 ? r->stop_until - now_of(r) : 0);
    r->stop_logged_at = now_of(r);
}

/* First expiry: abort what is still in flight (its rows are released). Second, a few
 * seconds later: stop even if the database never confirmed the releases. */
static void on_drain_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = w->data;
    if (!r->drain_expired) {
        r->drain_expired = true;
        if (http_in_flight(r->http) > 0) {
            log_warn("drain timeout: abandoning %d requests in flight; their rows go back to pending",
                     http_in_flight(r->http));
            http_abort_all(r->http);
        }
        ev_timer_set(w, 5., 0.);
        ev_timer_start(r->loop, w);
        kick(r);
        return;
    }
    log_warn("stopping with %zu rows not released (database %s): they return to pending when "
             "their lease runs out", r->rows_held, db_connected(r->db) ? "slow" : "unreachable");
    finish(r, r->exit_status);
}

#define ONCE_DB_TIMEOUT 30.0

static void on_once_db_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = w->data;
    log_error("--once: no database connection for %.0f s (%s); giving up", ONCE_DB_TIMEOUT,
              db_last_error(r->db));
    finish(r, 1);
}

static void on_db_connected(void *ud)
{
    struct relay *r = ud;
    metrics.db_connected = true;
    ev_timer_stop(r->loop, &r->once_db_deadline);
    r->connected_at = now_of(r);
    r->notifies_since_connect = 0;
    /* Rows a lost claim may have marked for us, that we do not hold in memory. */
    struct buf held = {0};
    buf_add(&held, "{", 1);
    bool first = true;
    for (struct job *j = r->waiting_head; j; j = j->next)
        for (size_t i = 0; i < j->n; i++, first = false)
            buf_printf(&held, "%s%lld", first ? "" : ",", j->rows[i]->id);
    for (struct job *j = r->inflight; j; j = j->next)
        for (size_t i = 0; i < j->n; i++, first = false)
            buf_printf(&held, "%s%lld", first ? "" : ",", j->rows[i]->id);
    for (size_t i = 0; i < r->n_done; i++, first = false)
        buf_printf(&held, "%s%lld", first ? "" : ",", r->done[i].id);
    buf_add(&held, "}", 1);
    if (!held.oom) {
        const char *params[2] = {r->locked_by, held.s};
        db_query(r->db, RELEASE_ORPHANS_SQL, 2, params, NULL, NULL);
    }
    free(held.s);
    r->claim_wanted = true; /* catch up on what was inserted while we were away */
    kick(r);
    if (r->verified)
        notify_ready(); /* ops hook: systemd READY=1, connected and verified */
}

static void on_db_disconnected(void *ud)
{
    struct relay *r = ud;
    metrics.db_connected = false;
    if (r->cfg->once && !r->stopping) {
        ev_timer_set(&r->once_db_deadline, ONCE_DB_TIMEOUT, 0.);
        ev_timer_start(r->loop, &r->once_db_deadline);
    }
    r->claim_in_flight = false;
    r->next_due_in_flight = false;
    r->backlog_in_flight = false;
}

static void on_db_notified(void *ud)
{
    struct relay *r = ud;
    r->notifies_since_connect++;
    r->claim_wanted = true;
    kick(r);
}

static void on_verified(struct http_request *req, void *arg)
{
    struct relay *r = arg;
    char error[600] = "", code[64] = "";
    double ignored = -1;
    if (req->transport_ok && req->status == 200) {
        json_object *o = json_tokener_parse(req->response ? req->response : "");
        json_object *name = NULL, *count = NULL;
        if (o) {
            json_object_object_get_ex(o, "name", &name);
            json_object_object_get_ex(o, "member_count", &count);
        }
        log_info("audience %s (\"%s\", %s members) verified", r->cfg->audience_id,
                 name ? json_object_get_string(name) : "?", count ? json_object_get_string(count) : "?");
        json_object_put(o);
        r->verified = true;
    } else {
        describe_error(req, error, sizeof error, code, sizeof code, &ignored);
        if (req->transport_ok && (req->status == 401 || req->status == 403 || req->status == 404 ||
                                  req->status == 402)) {
            log_error("startup check GET /v1/audiences/%s failed: %s; %s", r->cfg->audience_id, error,
                      stop_hint(req->status));
            http_request_free(req);
            r->stopping = true;
            finish(r, 2);
            return;
        }
        log_warn("startup check of the audience failed (%s); starting anyway, requests will be "
                 "retried", error);
        r->verified = true;
    }
    http_request_free(req);
    kick(r);
    if (db_connected(r->db))
        notify_ready(); /* ops hook: systemd READY=1, connected and verified */
}

/* ops hook: Vault holds a new key: send it from now on and probe at once; a 401 of a
 * request that started before now says nothing about it. */
static void on_key_rotated(const char *key, void *ud)
{
    struct relay *r = ud;
    if (!http_set_api_key(r->http, key)) {
        log_error("out of memory taking the new API key; keeping the old one");
        return;
    }
    r->stop_since = r->stop_until = now_of(r);
    r->claim_wanted = true;
    kick(r);
}

struct relay *relay_new(struct ev_loop *loop, const struct config *cfg)
{
    struct relay *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->loop = loop;
    r->cfg = cfg;
    char host[128] = "localhost";
    gethostname(host, sizeof host - 1);
    snprintf(r->locked_by, sizeof r->locked_by, "%s:%ld:%lld", host, (long)getpid(),
             (long long)time(NULL));
    r->rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    struct db_callbacks cbs = {on_db_connected, on_db_disconnected, on_db_notified, r};
    r->db = db_new(loop, cfg->database_url, "sendry_outbox", cbs);
    r->http = http_new(loop, cfg->api_key, cfg->http_timeout);
    if (!r->db || !r->http || !http_set_ca_file(r->http, cfg->ca_file) /* ops hook: --ca-file */) {
        relay_free(r);
        return NULL;
    }
    /* ops hook: the key from Vault is read again after a 401/403 (see on_key_rotated). */
    if (cfg->key_source == KEY_VAULT &&
        !(r->vault = vault_watch_new(loop, r->db, cfg->api_key_vault, cfg->api_key, on_key_rotated, r))) {
        relay_free(r);
        return NULL;
    }
    bucket_init(&r->bucket, cfg->rate, cfg->rate, ev_now(loop));
    ev_timer_init(&r->poll_timer, on_poll, cfg->poll_interval, cfg->poll_interval);
    ev_init(&r->due_timer, on_timer_kick);
    ev_init(&r->pace_timer, on_timer_kick);
    ev_init(&r->drain_timer, on_drain_deadline);
    ev_timer_init(&r->progress_timer, on_progress, 10., 10.);
    ev_init(&r->stop_log_timer, on_stop_log);
    r->stop_log_timer.repeat = 60.;
    ev_idle_init(&r->kick, on_kick);
    ev_init(&r->once_db_deadline, on_once_db_deadline);
    r->once_db_deadline.data = r;
    r->rec_list = -1;
    /* The first run soon after start, then every interval. */
    ev_timer_init(&r->reconcile_timer, on_reconcile_timer, 2., cfg->reconcile_interval);
    ev_init(&r->reconcile_step, on_reconcile_step);
    r->reconcile_timer.data = r->reconcile_step.data = r;
    r->poll_timer.data = r->due_timer.data = r->pace_timer.data = r->drain_timer.data = r;
    r->progress_timer.data = r->stop_log_timer.data = r->kick.data = r;
    return r;
}

void relay_start(struct relay *r)
{
    log_info("sendry-sync %s starting: worker %s, mode %s, batch %d, concurrency %d, rate %g/s, "
             "lease %.0f s, API %s", SENDRY_SYNC_VERSION, r->locked_by,
             r->cfg->mode == MODE_IMPORT ? "import" : "single", r->cfg->batch_size,
             r->cfg->concurrency, r->cfg->rate, r->cfg->lease, r->cfg->api_url);
    ev_timer_start(r->loop, &r->poll_timer);
    ev_timer_start(r->loop, &r->progress_timer);
    if (r->cfg->reconcile_interval > 0 && !r->cfg->once)
        ev_timer_start(r->loop, &r->reconcile_timer);
    if (r->cfg->once) {
        ev_timer_set(&r->once_db_deadline, ONCE_DB_TIMEOUT, 0.);
        ev_timer_start(r->loop, &r->once_db_deadline);
    }
    db_start(r->db);
    if (r->cfg->verify) {
        size_t n = strlen(r->cfg->audience_id) + 32;
        char *path = malloc(n);
        char *url = NULL;
        if (path) {
            snprintf(path, n, "/v1/audiences/%s", r->cfg->audience_id);
            url = url_of(r, path);
            free(path);
        }
        struct http_request *req = url ? http_request_new("GET", url, NULL) : NULL;
        if (req) {
            req->done = on_verified;
            req->arg = r;
            if (http_start(r->http, req))
                return;
            http_request_free(req);
        }
        log_warn("could not start the audience check; starting anyway");
    }
    r->verified = true;
}

void relay_shutdown(struct relay *r)
{
    if (r->stopping) {
        log_warn("second signal: exiting now; rows in flight stay processing until their lease "
                 "runs out");
        finish(r, r->exit_status);
        return;
    }
    r->stopping = true;
    log_info("stopping: no more claims; waiting up to %.0f s for %d requests in flight",
             r->cfg->drain_timeout, r->jobs_in_flight);
    ev_timer_stop(r->loop, &r->poll_timer);
    ev_timer_stop(r->loop, &r->due_timer);
    ev_timer_stop(r->loop, &r->reconcile_timer);
    if (ev_is_active(&r->reconcile_step)) {
        ev_timer_stop(r->loop, &r->reconcile_step);
        reconcile_end(r, NULL);
    }
    release_waiting(r);
    ev_timer_set(&r->drain_timer, r->cfg->drain_timeout, 0.);
    ev_timer_start(r->loop, &r->drain_timer);
    flush_completions(r);
    kick(r);
}

int relay_exit_status(const struct relay *r)
{
    return r->exit_status;
}

void relay_free(struct relay *r)
{
    if (!r)
        return;
    ev_timer_stop(r->loop, &r->poll_timer);
    ev_timer_stop(r->loop, &r->due_timer);
    ev_timer_stop(r->loop, &r->pace_timer);
    ev_timer_stop(r->loop, &r->drain_timer);
    ev_timer_stop(r->loop, &r->progress_timer);
    ev_timer_stop(r->loop, &r->stop_log_timer);
    ev_timer_stop(r->loop, &r->reconcile_timer);
    ev_timer_stop(r->loop, &r->reconcile_step);
    ev_timer_stop(r->loop, &r->once_db_deadline);
    if (r->httpd) {
        ev_timer_stop(r->loop, &r->backlog_timer);
        httpd_stop(r->httpd);
        r->httpd = NULL;
    }
    /* Requests still in flight (a second signal) end through their callbacks, which
     * free their jobs; their outcomes are not written any more. */
    r->stopping = true;
    if (r->http)
        http_abort_all(r->http);
    ev_idle_stop(r->loop, &r->kick);
    http_free(r->http);
    while (r->waiting_head) {
        struct job *job = r->waiting_head;
        r->waiting_head = job->next;
        job_free(job);
    }
    for (size_t i = 0; i < r->n_done; i++)
        free(r->done[i].error);
    free(r->done);
    free(r->rec_cursor);
    db_free(r->db);
    vault_watch_free(r->vault); /* ops hook: after db_free, which drops its query */
    free(r);
}

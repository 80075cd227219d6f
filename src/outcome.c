#include "outcome.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "backoff.h"
#include "claim.h"
#include "events_scope.h"
#include "log.h"
#include "metrics.h"
#include "xalloc.h"

void outcome_describe(const struct http_request *req, char *out, size_t size, double *retry_after)
{
    if (!req->transport_ok) {
        snprintf(out, size, "network: %s", req->error);
        utf8_sanitize(out);
        return;
    }
    struct sendry_error e;
    sendry_read_error(req->response, req->response_len, &e);
    if (retry_after && e.retry_after >= 0)
        *retry_after = e.retry_after;
    snprintf(out, size, "HTTP %ld%s%s%s%s%s%s%s", req->status, e.code[0] ? " " : "", e.code,
             e.message[0] ? ": " : "", e.message, e.details[0] ? " (details: " : "", e.details,
             e.details[0] ? ")" : "");
    utf8_sanitize(out); /* it goes into a text column: never let it break the UPDATE */
}

const char *outcome_stop_hint(long status)
{
    switch (status) {
    case 401: return "the API key is missing, malformed, unknown or expired (401)";
    case 402: return "the Sendry account needs payment (402)";
    case 403: return "the API key lacks the scope to write contacts: it needs full_access (403)";
    case 404: return "the audience does not exist (404): check SENDRY_AUDIENCE_ID";
    default: return "Sendry refused the request";
    }
}

/* What the rest of a row's chain does once the row's outcome is known. */
enum chain_next {
    CHAIN_GO,        /* the row was settled: the next link is sent next */
    CHAIN_WAIT,      /* the row waits (retried, paused, given back): the rest waits with it */
    CHAIN_FAIL       /* a contact failed for good: its events fail too, never sent to a
                      * contact Sendry does not have */
};

static void count_event(const struct row *row, const char *result)
{
    if (row->op == OP_EVENT)
        metrics_event(row->event_name, result);
}

/* The rest of a row's chain: sent next, given back due with the row (`delay`), or
 * failed with `error`; dropped if another claim holds the row now. */
static void chain_after(struct outcome_env *env, struct row *row, enum chain_next next, double delay,
                        const char *error)
{
    struct row *rest = row->then;
    if (!rest)
        return;
    row->then = NULL;
    if (next == CHAIN_GO && !row->lost) {
        xgrow((void **)&env->next, &env->capnext, env->nnext + 1, sizeof *env->next);
        env->next[env->nnext++] = rest;
        return;
    }
    char why[700];
    snprintf(why, sizeof why, "not sent: the contact before it failed (%.600s)", error ? error : "");
    utf8_sanitize(why);
    for (struct row *r = rest; r && !row->lost; r = r->then) {
        for (size_t k = 0; k < r->nrefs; k++) {
            if (next == CHAIN_FAIL)
                complete_row(env->complete, &r->refs[k], RESULT_FAILED, 0, why, 0);
            else
                complete_row(env->complete, &r->refs[k], RESULT_RELEASE, 0, NULL, delay);
        }
        if (next == CHAIN_FAIL)
            count_event(r, "failed");
    }
    row_free(rest);
}

/* After a row settled: its chain goes on, unless a contact failed for good. */
static enum chain_next after_settled(const struct row *row, enum row_result result)
{
    return result == RESULT_FAILED && row->op != OP_EVENT ? CHAIN_FAIL : CHAIN_GO;
}

static void all_rows(struct outcome_env *env, struct job *job, enum row_result result, int http,
                     const char *error, double delay)
{
    bool settled = result == RESULT_SENT || result == RESULT_FAILED;
    for (size_t i = 0; i < job->n; i++) {
        chain_after(env, job->rows[i], settled ? after_settled(job->rows[i], result) : CHAIN_WAIT, delay, error);
        complete_contact(env->complete, job->rows[i], result, http, error, delay);
        if (result == RESULT_FAILED)
            count_event(job->rows[i], "failed");
    }
}

static void on_sent(struct outcome_env *env, struct job *job, const struct http_request *req, int http)
{
    if (gate_accepted(env->gate)) {
        log_info("sending resumed: Sendry accepted a request again");
        metrics_set_stopped(false, NULL);
    }
    if (job->req != REQ_EVENT) {
        all_rows(env, job, RESULT_SENT, http, NULL, 0);
        return;
    }
    struct row *row = job->rows[0];
    bool deduped = sendry_event_deduped(req->response, req->response_len);
    chain_after(env, row, CHAIN_GO, 0, NULL);
    complete_event_sent(env->complete, row, http, deduped);
    count_event(row, deduped ? "deduped" : "sent");
    char name[256];
    if (deduped)
        log_info("event %lld (%s) was already at Sendry (deduped by its event_id)", row->id,
                 log_text(row->event_name, name, sizeof name));
}

void outcome_settle_unsent(struct outcome_env *env, struct row *row)
{
    assert(row->render == RENDER_SAME || row->render == RENDER_GONE || row->render == RENDER_FAILED);
    enum row_result result = row->render == RENDER_FAILED ? RESULT_FAILED : RESULT_SENT;
    if (row->render == RENDER_FAILED)
        log_warn("row %lld: not sent, %s", row->id, row->problem);
    else
        log_debug("row %lld: nothing to send (%s)", row->id,
                  row->render == RENDER_SAME ? "Sendry has this contact already" : "the user is not synced");
    metrics_unsent(row->render == RENDER_FAILED ? "failed" : row->render == RENDER_SAME ? "same" : "gone");
    chain_after(env, row, after_settled(row, result), 0, row->problem);
    complete_contact_unsent(env->complete, row, result, row->problem);
    row_free(row);
}

/* A row gives up on its own transient failures only when it has had its attempts and
 * has been retried for --retry-for since it was enqueued. */
static bool gives_up(const struct outcome_env *env, const struct row_ref *ref)
{
    return ref->attempts >= ref->max_attempts && ref->age >= env->cfg->retry_for;
}

/* Every row of the contact gave up: the contact is settled, its chain goes on. */
static bool all_give_up(const struct outcome_env *env, const struct row *row)
{
    for (size_t k = 0; k < row->nrefs; k++)
        if (!gives_up(env, &row->refs[k]))
            return false;
    return true;
}

/* The provider is down across the board: nothing of this request counts against its
 * rows; they wait for the gate's probe (due again after it, so that a probe that fails
 * again leaves the next probe to another row, if there is one). */
static void on_outage(struct outcome_env *env, struct job *job, int http, const char *error,
                      bool began)
{
    char shown[700];
    if (began) {
        metrics_set_stopped(true, gate_cause(env->gate));
        log_error("sending paused: %s; rows keep their attempts; first probe in %.0f s",
                  gate_cause(env->gate), gate_probe_in(env->gate));
    } else {
        log_warn("%s (%zu rows): sending is stopped, the attempt is not counted; next probe in %.0f s",
                 log_text(error, shown, sizeof shown), job->n, gate_probe_in(env->gate));
    }
    all_rows(env, job, RESULT_RELEASE, http, error, env->cfg->once ? 0 : gate_probe_in(env->gate));
}

/* Each held row is retried, or fails when it gave up (a contact's newer rows then go
 * on without the exhausted older one); unless the failure is across the board. */
static void on_retry(struct outcome_env *env, struct job *job, int http, const char *error,
                     bool transient)
{
    bool was_outage = gate_outage(env->gate);
    char cause[800], shown[700], who[128];
    snprintf(cause, sizeof cause, "Sendry unavailable (%d requests in a row failed: %s)",
             GATE_OUTAGE_AFTER, log_text(error, shown, sizeof shown));
    if (transient && gate_transient(env->gate, cause, job->started_at)) {
        on_outage(env, job, http, error, !was_outage && gate_outage(env->gate));
        return;
    }
    size_t gave_up = 0, rows = 0;
    for (size_t i = 0; i < job->n; i++) {
        struct row *row = job->rows[i];
        double delay = backoff_delay(env->cfg->backoff_base, env->cfg->backoff_cap, row->attempts,
                                     rand_unit(env->rng));
        bool done = all_give_up(env, row);
        chain_after(env, row, done ? after_settled(row, RESULT_FAILED) : CHAIN_WAIT, delay, error);
        count_event(row, done ? "failed" : "retried");
        for (size_t k = 0; k < row->nrefs; k++, rows++) {
            const struct row_ref *ref = &row->refs[k];
            if (!gives_up(env, ref)) {
                complete_row(env->complete, ref, RESULT_RETRY, http, error, delay);
                continue;
            }
            if (gave_up++ == 0)
                log_warn("row %lld (%s) failed after %d attempts: %s", ref->id,
                         log_email(row->email, who, sizeof who), ref->attempts,
                         log_text(error, shown, sizeof shown));
            complete_row(env->complete, ref, RESULT_FAILED, http, error, 0);
        }
    }
    if (gave_up > 1)
        log_warn("%zu rows of that request failed after their last attempt", gave_up);
    if (gave_up < rows)
        log_warn("%s (%zu rows): will retry with backoff", log_text(error, shown, sizeof shown),
                 rows - gave_up);
}

static void on_rate_limited(struct outcome_env *env, struct job *job, const struct http_request *req,
                            const char *error, double body_retry_after)
{
    double wait = sendry_retry_after(req->retry_after, (double)time(NULL));
    if (wait < 0)
        wait = body_retry_after;
    wait = gate_pause(env->gate, wait, rand_unit(env->rng));
    log_warn("rate limited by Sendry (429): pausing all requests for %.1f s", wait);
    metrics.rate_limit_waits++;
    /* Other workers share the key: leave the rows due after the pause. A --once run
     * pauses in memory and must find them due when it claims again. */
    all_rows(env, job, RESULT_RELEASE, (int)req->status, error, env->cfg->once ? 0 : wait);
}

/* 400/404/409/422: fails the rows, or splits a batch rejected as a whole. */
static size_t on_invalid(struct outcome_env *env, struct job *job, const struct http_request *req,
                         const char *error, struct job *again[2])
{
    char shown[700], who[128];
    if ((req->status == 400 || req->status == 422) && job->n > 1) {
        log_info("batch of %zu rejected (%s): splitting it to find the bad rows", job->n,
                 log_text(error, shown, sizeof shown));
        job_split(job, &again[0], &again[1]);
        return 2;
    }
    log_warn("row %lld (%s)%s rejected: %s", job->rows[0]->id,
             log_email(job->rows[0]->email, who, sizeof who),
             job->n > 1 ? " and the rest of its request" : "", log_text(error, shown, sizeof shown));
    all_rows(env, job, RESULT_FAILED, (int)req->status, error, 0);
    job_free(job);
    return 0;
}

static void stop_with(struct outcome_env *env, const char *cause, double started)
{
    bool was_stopped = gate_state(env->gate) == GATE_STOPPED;
    if (!gate_stop(env->gate, cause, started))
        return;
    metrics_set_stopped(true, cause);
    if (!was_stopped)
        log_error("sending stopped: %s; rows stay pending; trying again in %.0f s", cause,
                  gate_probe_in(env->gate));
}

/* Whether a 404 answer says the audience is what is missing. */
static bool names_audience(const struct http_request *req)
{
    struct sendry_error e;
    sendry_read_error(req->response, req->response_len, &e);
    return strstr(e.code, "audience") || strstr(e.message, "audience") || strstr(e.message, "Audience");
}

static void on_stop(struct outcome_env *env, struct job *job, const struct http_request *req,
                    const char *error)
{
    char cause[900], shown[600];
    log_text(error, shown, sizeof shown);
    if (req->status == 404 && !names_audience(req)) {
        snprintf(cause, sizeof cause, "Sendry answered 404 to %s %s [%s]; checking whether the "
                 "audience exists", req->method, job_path(job), shown);
        env->recheck_audience = true;
    } else if (req->status == 403 && strstr(req->url, "/v1/events")) {
        snprintf(cause, sizeof cause, "%s [%s]", EVENTS_SCOPE_HINT, shown);
    } else {
        snprintf(cause, sizeof cause, "%s [%s]", outcome_stop_hint(req->status), shown);
    }
    stop_with(env, cause, job->started_at);
    /* Due again at once: the gate's probe timer paces the retries, and a worker
     * restarted with the right key sends them right away. */
    all_rows(env, job, RESULT_RELEASE, (int)req->status, error, 0);
}

void outcome_audience_rechecked(struct gate *gate, const struct config *cfg, long status)
{
    char cause[900];
    if (status == 404)
        snprintf(cause, sizeof cause, "%s", outcome_stop_hint(404));
    else if (status >= 200 && status < 300)
        snprintf(cause, sizeof cause, "Sendry answered 404 to a contact write, but GET /v1/audiences/%s "
                 "finds the audience: the write's URL is wrong; check SENDRY_API_URL (%s), and any "
                 "proxy that rewrites paths", cfg->audience_id, cfg->api_url);
    else
        return;
    if (gate_state(gate) != GATE_STOPPED)
        return;
    gate_set_cause(gate, cause);
    if (status >= 200 && status < 300)
        gate_probe_soon(gate);   /* a rewritten URL may be put right: probe within seconds */
    metrics_set_stopped(true, cause);
    log_error("sending stopped: %s", cause);
}

size_t outcome_settle(struct outcome_env *env, struct job *job, const struct http_request *req,
                      struct job *again[2])
{
    bool aborted = !req->transport_ok && strcmp(req->error, "aborted") == 0;
    if (aborted) {
        /* The drain deadline: not sent as far as we know; give the rows back untouched. */
        all_rows(env, job, RESULT_RELEASE, 0, NULL, 0);
        job_free(job);
        return 0;
    }
    enum advance adv = req->transport_ok ? job_advance(job, req, env->cfg) : ADV_CLASSIFY;
    if (adv == ADV_NEXT) {
        again[0] = job;
        return 1;
    }
    enum outcome oc = adv == ADV_DONE    ? OUTCOME_SENT
                      : adv == ADV_RETRY ? OUTCOME_RETRY
                                         : sendry_classify(req->transport_ok, req->status,
                                                           job_names_audience(job, env->cfg));
    char error[600] = "";
    double body_retry_after = -1;
    const char *other = job_other_audience(job, env->cfg);
    if (adv == ADV_RETRY)
        snprintf(error, sizeof error, "HTTP %ld without a contact id", req->status);
    else if (oc != OUTCOME_SENT)
        outcome_describe(req, error, sizeof error, &body_retry_after);
    if (other && req->transport_ok && req->status == 404) {
        char said[400];
        snprintf(said, sizeof said, "%.399s", error);   /* cut; the sanitizer mends a cut character */
        utf8_sanitize(said);
        snprintf(error, sizeof error, "audience %.100s (named by the mapping) does not exist: %s", other, said);
    }
    log_debug("http: %s %s -> %ld (%s, %zu rows, %.3f s)", req->method, req->url, req->status,
              outcome_name(oc), job->n, req->elapsed);
    int http = req->transport_ok ? (int)req->status : 0;
    bool transient = oc == OUTCOME_RETRY && adv != ADV_RETRY;   /* no answer, 408, 5xx */
    if (!transient && oc != OUTCOME_SENT && oc != OUTCOME_STOP && gate_answered(env->gate)) {
        log_info("sending resumed: Sendry answers again (HTTP %d)", http);
        metrics_set_stopped(false, NULL);
    }
    switch (oc) {
    case OUTCOME_SENT: on_sent(env, job, req, http); break;
    case OUTCOME_RETRY: on_retry(env, job, http, error, transient); break;
    case OUTCOME_RATE_LIMITED: on_rate_limited(env, job, req, error, body_retry_after); break;
    case OUTCOME_INVALID: return on_invalid(env, job, req, error, again);
    case OUTCOME_STOP: on_stop(env, job, req, error); break;
    }
    job_free(job);
    return 0;
}

/* outcome: what an answer from Sendry means for the rows of its job.
 *
 *   2xx                    sent
 *   network error, 408, 5xx   pending again after exponential backoff with full jitter;
 *                          failed after max_attempts and --retry-for since enqueued;
 *                          but when GATE_OUTAGE_AFTER fail in a row (the provider is down
 *                          across the board), the gate stops for an outage and the rows
 *                          are pending again with the attempt not counted, as are those
 *                          failing while it is stopped; any other answer resumes
 *   429                    the gate pauses every request for Retry-After (header, else
 *                          error.retry_after, else backoff); rows pending, attempt not counted
 *   400/404/409/422        failed with the reason; a rejected batch is split in halves
 *                          until the bad row stands alone
 *   an event's 2xx         sent, and whether Sendry said deduped (it had the event_id)
 *
 * A row settled for good (sent, failed) hands the rest of its user's chain (struct row's
 * then: the events after the contact) to the caller, to send next; any other outcome
 * gives the rest back (pending, attempt not counted, due with the row), so that nothing
 * of a user overtakes a change of theirs still to be accepted.
 *   401/402/403            the gate stops sending; rows pending, not counted
 *   404 to an import or a create   the same; unless the answer names the audience, the
 *                          caller checks GET /v1/audiences/{id} to say which it is (the
 *                          audience is gone, or the URL is wrong: a proxy rewriting it)
 *
 * Called by deliver.c when a request ends; writes outcomes into the completer and tells
 * the gate. Owns nothing beyond the job it is handed. */
#ifndef SENDRY_OUTCOME_H
#define SENDRY_OUTCOME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "complete.h"
#include "config.h"
#include "gate.h"
#include "http.h"
#include "job.h"

struct outcome_env {
    const struct config *cfg;
    struct gate *gate;
    struct completer *complete;
    uint64_t *rng;
    bool recheck_audience;   /* out: a 404 that does not say whether the audience exists */
    struct row **next;       /* out: links of chains whose row before them was settled for
                              * good (sent or failed), to send next; the caller owns them
                              * and the array (free it) */
    size_t nnext, capnext;
};

/* Settles a finished request of `job`. Returns how many jobs (0 to 2) it put into
 * `again`: the same job with its next step, or the two halves of a split batch, to be
 * sent next. Every other row is completed, and the job freed. req stays the caller's. */
size_t outcome_settle(struct outcome_env *env, struct job *job, const struct http_request *req,
                      struct job *again[2]);

/* Settles a contact the claim's render decided needs no request (RENDER_SAME,
 * RENDER_GONE: sent; RENDER_FAILED: failed with its problem, its events failed unsent),
 * and frees it. Its chain's next link goes to env->next. */
void outcome_settle_unsent(struct outcome_env *env, struct row *row);

/* "HTTP 422 validation_error: ..." or "network: ...", valid UTF-8, for last_error and
 * logs; *retry_after is set from the body when it has one. */
void outcome_describe(const struct http_request *req, char *out, size_t size, double *retry_after);

/* The operator's hint for a refusal that stops sending (401, 402, 403, 404). */
const char *outcome_stop_hint(long status);
/* The stop's cause once GET /v1/audiences/{id} answered `status` after a write's 404
 * (404: the audience is gone; 200: it exists, so the write's URL is wrong). */
void outcome_audience_rechecked(struct gate *gate, const struct config *cfg, long status);

#endif

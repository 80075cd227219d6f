/* metrics: process-wide counters and gauges, rendered in the Prometheus text format.
 *
 * Everything runs on the one libev loop, so the fields are plain variables: modules
 * update them directly (metrics.rows_sent += n) or through the helpers below, and
 * GET /metrics renders them. Counters only grow; the gauges are set by their owner:
 *   health.c     rows_sent/failed/retried, backlog_due, oldest_due_age_seconds,
 *                send_rate, backlog_eta_seconds, enqueue_errors_last_hour
 *   outcome.c    rate_limit_waits, sending_stopped + stop_reason (metrics_set_stopped()),
 *                metrics_event(), metrics_unsent()
 *   claim.c      metrics_claim();  deliver.c  metrics_http()
 *   relay.c      db_connected;  prune.c  rows_pruned;  inbox.c  inbox_retr*
 *   events_scope.c  events_scope_missing
 *   receiver.c   metrics_webhook(), webhook_queue_depth/limit/full */
#ifndef SENDRY_METRICS_H
#define SENDRY_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#define METRICS_STATUS_MIN 100
#define METRICS_STATUS_MAX 599
#define METRICS_CLAIM_BUCKETS 5            /* le 1, 10, 100, 500, 1000 (+Inf = count) */
#define METRICS_WEBHOOK_SLOTS 64           /* distinct (type, result) pairs kept */
#define METRICS_WEBHOOK_RESERVED 8         /* of which kept for type "other" */
#define METRICS_EVENT_SLOTS 264            /* distinct (name, result) pairs kept: 64 names of 4... */
#define METRICS_EVENT_RESERVED 8           /* ... of which kept for name "other" */
#define METRICS_TYPE_MAX 64                /* longer types and names are truncated */
#define METRICS_RESULT_MAX 32

struct metrics_webhook_slot {
    char type[METRICS_TYPE_MAX + 1];
    char result[METRICS_RESULT_MAX + 1];
    unsigned long long count;
};

struct metrics {
    /* rows completed by the relay */
    unsigned long long rows_sent;
    unsigned long long rows_failed;
    unsigned long long rows_retried;
    unsigned long long unsent_same, unsent_gone, unsent_failed;   /* metrics_unsent() */
    /* Sendry API responses: http_status[status - 100]; no response at all */
    unsigned long long http_status[METRICS_STATUS_MAX - METRICS_STATUS_MIN + 1];
    unsigned long long http_transport_errors;
    unsigned long long rate_limit_waits;     /* 429 pauses and pacing waits */
    /* claim batch sizes: per-bucket (non-cumulative) counts, sum and count */
    unsigned long long claim_bucket[METRICS_CLAIM_BUCKETS];
    unsigned long long claim_count;
    unsigned long long claim_sum;
    /* gauges from the stats view */
    double backlog_due;                       /* rows due now */
    double enqueue_errors_last_hour;          /* trigger errors turned into WARNINGs */
    double oldest_due_age_seconds;            /* age of the oldest due row, 0 if none */
    double send_rate;                         /* rows sent a second over the last 10 s */
    double backlog_eta_seconds;               /* the due rows at that pace, 0 if none */
    /* webhooks by (type, result) */
    struct metrics_webhook_slot webhook[METRICS_WEBHOOK_SLOTS];
    size_t webhook_used;
    unsigned long long webhook_unrecorded;    /* table full even for "other" */
    /* events (POST /v1/events) by (name, result) */
    struct metrics_webhook_slot event[METRICS_EVENT_SLOTS];
    size_t event_used;
    unsigned long long event_unrecorded;
    /* webhooks waiting for the database (receiver.c), and those answered 503 because
     * --webhook-queue of them were waiting already */
    unsigned long long webhook_queue_depth;
    unsigned long long webhook_queue_limit;
    unsigned long long webhook_queue_full;
    /* inbox events applied again by the retry timer, and those that failed again */
    unsigned long long rows_pruned;          /* sent rows deleted after --retain-sent */
    unsigned long long inbox_retried;
    unsigned long long inbox_retry_failed;
    /* health */
    bool db_connected;
    bool sending_stopped;
    bool events_scope_missing;                /* events_scope.c: GET /v1/events got 403 */
    char stop_reason[512];                    /* why sending stopped; no secrets */
};

extern struct metrics metrics;

/* One Sendry API response: status 100..599, or 0 (or anything outside that range)
 * for a transport error (connect, TLS, timeout, ...). */
void metrics_http(long status_or_0_for_transport_error);

/* One claim that returned `rows` rows (0 included). */
void metrics_claim(int rows);

/* One webhook request. `type` is the event type ("invalid" before the body could be
 * trusted), cut to 64 bytes, bytes outside printable ASCII replaced with '_'. When 56
 * distinct pairs are in use, new types are counted as "other". `result` is a class:
 * applied, duplicate, ignored, unauthorized, bad_request, too_large, busy (the queue was
 * full), error. */
void metrics_webhook(const char *type, const char *result);

/* One event settled: `name` as for webhook types; `result` sent, deduped, failed or
 * retried. New names past the table's room are counted as "other". */
void metrics_event(const char *name, const char *result);
/* A contact the claim's render settled without a request: "same", "gone" or "failed". */
void metrics_unsent(const char *reason);

/* Sets sending_stopped and stop_reason (NULL reason = running again). */
void metrics_set_stopped(bool stopped, const char *reason);

/* The Prometheus text exposition (format 0.0.4) of everything above, malloc'd and
 * owned by the caller; NULL on allocation failure. */
char *metrics_render(void);

/* Clears everything (tests). */
void metrics_reset(void);

#endif

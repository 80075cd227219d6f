#include "metrics.h"

#include "xalloc.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metrics metrics;

static const unsigned claim_le[METRICS_CLAIM_BUCKETS] = {1, 10, 100, 500, 1000};

void metrics_http(long status)
{
    if (status >= METRICS_STATUS_MIN && status <= METRICS_STATUS_MAX)
        metrics.http_status[status - METRICS_STATUS_MIN]++;
    else
        metrics.http_transport_errors++;
}

void metrics_claim(int rows)
{
    if (rows < 0)
        rows = 0;
    metrics.claim_count++;
    metrics.claim_sum += (unsigned long long)rows;
    for (int i = 0; i < METRICS_CLAIM_BUCKETS; i++) {
        if ((unsigned)rows <= claim_le[i]) {
            metrics.claim_bucket[i]++;
            break;
        }
    }
    /* above the last bucket: only in +Inf, i.e. claim_count */
}

/* Label values stay printable ASCII: anything else (control bytes, bytes of UTF-8
 * sequences that truncation could split) becomes '_'. */
static void clean_label(char *out, size_t size, const char *in)
{
    size_t n = 0;
    for (; in && in[n] && n + 1 < size; n++) {
        unsigned char c = (unsigned char)in[n];
        out[n] = c >= 0x20 && c < 0x7f ? (char)c : '_';
    }
    out[n] = '\0';
}

/* A table of (label, result) counters: metrics.webhook (by type) and metrics.event (by
 * name). */
struct slots {
    struct metrics_webhook_slot *slot;
    size_t *used, size, reserved;     /* `reserved` of `size` kept for "other" */
    unsigned long long *unrecorded;
};

static struct metrics_webhook_slot *find_slot(const struct slots *t, const char *type, const char *result)
{
    for (size_t i = 0; i < *t->used; i++)
        if (strcmp(t->slot[i].type, type) == 0 && strcmp(t->slot[i].result, result) == 0)
            return &t->slot[i];
    return NULL;
}

static struct metrics_webhook_slot *add_slot(const struct slots *t, const char *type, const char *result)
{
    struct metrics_webhook_slot *s = &t->slot[(*t->used)++];
    snprintf(s->type, sizeof s->type, "%s", type);
    snprintf(s->result, sizeof s->result, "%s", result);
    s->count = 0;
    return s;
}

/* Counts one (label, result); past the table's room for new labels, as "other". */
static void count_in(const struct slots *t, const char *label, const char *result)
{
    char l[METRICS_TYPE_MAX + 1], r[METRICS_RESULT_MAX + 1];
    clean_label(l, sizeof l, label && *label ? label : "unknown");
    clean_label(r, sizeof r, result && *result ? result : "unknown");

    struct metrics_webhook_slot *s = find_slot(t, l, r);
    if (!s && strcmp(l, "other") != 0 && *t->used < t->size - t->reserved)
        s = add_slot(t, l, r);
    if (!s)
        s = find_slot(t, "other", r);
    if (!s && *t->used < t->size)
        s = add_slot(t, "other", r);
    if (s)
        s->count++;
    else
        (*t->unrecorded)++;
}

void metrics_webhook(const char *type, const char *result)
{
    struct slots t = {metrics.webhook, &metrics.webhook_used, METRICS_WEBHOOK_SLOTS,
                      METRICS_WEBHOOK_RESERVED, &metrics.webhook_unrecorded};
    count_in(&t, type, result);
}

void metrics_event(const char *name, const char *result)
{
    struct slots t = {metrics.event, &metrics.event_used, METRICS_EVENT_SLOTS,
                      METRICS_EVENT_RESERVED, &metrics.event_unrecorded};
    count_in(&t, name, result);
}

void metrics_unsent(const char *reason)
{
    if (strcmp(reason, "same") == 0)
        metrics.unsent_same++;
    else if (strcmp(reason, "gone") == 0)
        metrics.unsent_gone++;
    else
        metrics.unsent_failed++;
}

void metrics_set_stopped(bool stopped, const char *reason)
{
    metrics.sending_stopped = stopped;
    snprintf(metrics.stop_reason, sizeof metrics.stop_reason, "%s", stopped && reason ? reason : "");
}

void metrics_reset(void)
{
    memset(&metrics, 0, sizeof metrics);
}

/* A growing output buffer; after a failed allocation every append is a no-op. */
struct buf {
    char *p;
    size_t len, cap;
    bool failed;
};

__attribute__((format(printf, 2, 3))) static void put(struct buf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 > b->len + (size_t)n + 1 ? b->cap * 2 : b->len + (size_t)n + 1;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
}

/* A label value escaped per the text format: backslash, double quote, line feed. */
static void put_label(struct buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            put(b, "\\\\");
        else if (*s == '"')
            put(b, "\\\"");
        else if (*s == '\n')
            put(b, "\\n");
        else
            put(b, "%c", *s);
    }
}

static void put_double(struct buf *b, double v)
{
    if (isnan(v))
        put(b, "NaN");
    else if (isinf(v))
        put(b, v > 0 ? "+Inf" : "-Inf");
    else
        put(b, "%.17g", v);
}

static void header(struct buf *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP sendry_sync_%s %s\n# TYPE sendry_sync_%s %s\n", name, help, name, type);
}

/* One gauge holding a double (NaN and the infinities as the text format spells them). */
static void gauge(struct buf *b, const char *name, const char *help, double v)
{
    header(b, name, "gauge", help);
    put(b, "sendry_sync_%s ", name);
    put_double(b, v);
    put(b, "\n");
}

static void render_rows(struct buf *b)
{
    header(b, "rows_total", "counter", "Outbox rows completed by the relay, by outcome.");
    put(b, "sendry_sync_rows_total{outcome=\"sent\"} %llu\n", metrics.rows_sent);
    put(b, "sendry_sync_rows_total{outcome=\"failed\"} %llu\n", metrics.rows_failed);
    put(b, "sendry_sync_rows_total{outcome=\"retried\"} %llu\n", metrics.rows_retried);
    header(b, "contacts_unsent_total", "counter",
           "Contacts the claim rendered and settled without a request, by reason.");
    put(b, "sendry_sync_contacts_unsent_total{reason=\"same\"} %llu\n", metrics.unsent_same);
    put(b, "sendry_sync_contacts_unsent_total{reason=\"gone\"} %llu\n", metrics.unsent_gone);
    put(b, "sendry_sync_contacts_unsent_total{reason=\"failed\"} %llu\n", metrics.unsent_failed);
}

/* Sendry's answers by status, and the waits its rate limit caused. */
static void render_http(struct buf *b)
{
    header(b, "http_responses_total", "counter",
           "Sendry API responses by HTTP status; status=\"error\" counts transport errors.");
    for (int i = 0; i <= METRICS_STATUS_MAX - METRICS_STATUS_MIN; i++)
        if (metrics.http_status[i])
            put(b, "sendry_sync_http_responses_total{status=\"%d\"} %llu\n", i + METRICS_STATUS_MIN,
                metrics.http_status[i]);
    put(b, "sendry_sync_http_responses_total{status=\"error\"} %llu\n", metrics.http_transport_errors);

    header(b, "rate_limit_waits_total", "counter", "Times sending waited for the Sendry rate limit.");
    put(b, "sendry_sync_rate_limit_waits_total %llu\n", metrics.rate_limit_waits);
}

/* The claim histogram: the buckets are kept per bucket and rendered cumulative. */
static void render_claims(struct buf *b)
{
    header(b, "claim_batch_rows", "histogram", "Rows returned by each outbox claim.");
    unsigned long long cumulative = 0;
    for (int i = 0; i < METRICS_CLAIM_BUCKETS; i++) {
        cumulative += metrics.claim_bucket[i];
        put(b, "sendry_sync_claim_batch_rows_bucket{le=\"%u\"} %llu\n", claim_le[i], cumulative);
    }
    put(b, "sendry_sync_claim_batch_rows_bucket{le=\"+Inf\"} %llu\n", metrics.claim_count);
    put(b, "sendry_sync_claim_batch_rows_sum %llu\n", metrics.claim_sum);
    put(b, "sendry_sync_claim_batch_rows_count %llu\n", metrics.claim_count);
}

/* One sample per (label, result) slot of a table. */
static void render_slots(struct buf *b, const char *metric, const char *label,
                         const struct metrics_webhook_slot *slot, size_t used)
{
    for (size_t i = 0; i < used; i++) {
        put(b, "%s{%s=\"", metric, label);
        put_label(b, slot[i].type);
        put(b, "\",result=\"");
        put_label(b, slot[i].result);
        put(b, "\"} %llu\n", slot[i].count);
    }
}

static void render_webhooks(struct buf *b)
{
    header(b, "webhook_events_total", "counter", "Webhook requests received, by event type and result.");
    render_slots(b, "sendry_sync_webhook_events_total", "type", metrics.webhook, metrics.webhook_used);
    header(b, "webhook_events_unrecorded_total", "counter",
           "Webhook requests not counted by type because the label table was full.");
    put(b, "sendry_sync_webhook_events_unrecorded_total %llu\n", metrics.webhook_unrecorded);
    header(b, "webhook_queue_depth", "gauge", "Webhooks waiting for the database now.");
    put(b, "sendry_sync_webhook_queue_depth %llu\n", metrics.webhook_queue_depth);
    header(b, "webhook_queue_limit", "gauge",
           "Webhooks that may wait for the database at once (--webhook-queue).");
    put(b, "sendry_sync_webhook_queue_limit %llu\n", metrics.webhook_queue_limit);
    header(b, "webhook_queue_rejections_total", "counter",
           "Webhooks answered 503 with Retry-After because the queue was full (Sendry redelivers).");
    put(b, "sendry_sync_webhook_queue_rejections_total %llu\n", metrics.webhook_queue_full);
}

static void render_events(struct buf *b)
{
    header(b, "events_total", "counter",
           "Events (POST /v1/events) settled, by name and result (sent, deduped, failed, retried).");
    render_slots(b, "sendry_sync_events_total", "name", metrics.event, metrics.event_used);
    header(b, "events_unrecorded_total", "counter",
           "Events not counted by name because the label table was full.");
    put(b, "sendry_sync_events_unrecorded_total %llu\n", metrics.event_unrecorded);
}

static void render_health(struct buf *b)
{
    header(b, "db_connected", "gauge", "1 if the PostgreSQL connection is up.");
    put(b, "sendry_sync_db_connected %d\n", metrics.db_connected ? 1 : 0);

    header(b, "sending_stopped", "gauge",
           "1 if sending stopped on a condition retries cannot fix (bad key, unknown audience...).");
    put(b, "sendry_sync_sending_stopped %d\n", metrics.sending_stopped ? 1 : 0);

    header(b, "events_scope_missing", "gauge",
           "1 if the API key lacks the scope for events (GET /v1/events answered 403 at start).");
    put(b, "sendry_sync_events_scope_missing %d\n", metrics.events_scope_missing ? 1 : 0);
}

/* The housekeeping: sent rows pruned, inbox events applied again. */
static void render_upkeep(struct buf *b)
{
    header(b, "rows_pruned_total", "counter", "Sent rows deleted after --retain-sent days.");
    put(b, "sendry_sync_rows_pruned_total %llu\n", metrics.rows_pruned);
    header(b, "inbox_retries_total", "counter",
           "Stored inbox events an error had left unapplied, applied again, by result.");
    put(b, "sendry_sync_inbox_retries_total{result=\"applied\"} %llu\n", metrics.inbox_retried);
    put(b, "sendry_sync_inbox_retries_total{result=\"error\"} %llu\n", metrics.inbox_retry_failed);
}

char *metrics_render(void)
{
    struct buf b = {.p = xmalloc(8192), .cap = 8192};
    b.p[0] = '\0';
    render_rows(&b);
    render_http(&b);
    render_claims(&b);
    gauge(&b, "backlog_due_rows", "Outbox rows due for delivery now.", metrics.backlog_due);
    gauge(&b, "oldest_due_age_seconds", "Age of the oldest outbox row due for delivery.",
          metrics.oldest_due_age_seconds);
    gauge(&b, "send_rate_rows_per_second", "Rows this worker sent a second over the last 10 s.",
          metrics.send_rate);
    gauge(&b, "enqueue_errors_last_hour", "Writes to auth.users whose trigger error enqueued nothing, last hour.",
          metrics.enqueue_errors_last_hour);
    gauge(&b, "backlog_eta_seconds", "When the rows due now will be sent at that pace (0 if none).",
          metrics.backlog_eta_seconds);
    render_webhooks(&b);
    render_events(&b);
    render_upkeep(&b);
    render_health(&b);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

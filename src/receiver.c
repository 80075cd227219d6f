/* receiver: one POST /webhooks/sendry request, from its first byte to its answer.
 * The body is read (capped at max_body: 413 as soon as it is known to be too large),
 * verified (webhook.h), parsed, then handed to the inbox while the connection is
 * suspended; the inbox's answer (or a 20 s timeout) resumes it. See httpd.h. */
#include "httpd_priv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "list.h"
#include "log.h"
#include "metrics.h"
#include "xalloc.h"

static void pending_unlink(struct webhook *w)
{
    if (!w->h)
        return;
    LIST_REMOVE(w->h->pending, w);
    w->h->npending--;
    metrics.webhook_queue_depth = w->h->npending;
}

static void pending_link(struct webhook *w)
{
    LIST_PUSH(w->h->pending, w);
    w->h->npending++;
    metrics.webhook_queue_depth = w->h->npending;
}

static void webhook_free(struct webhook *w)
{
    ev_timer_stop(w->loop, &w->timeout);
    free(w->body);
    free(w->answer);
    free(w);
}

/* Sets the answer once, counts it and logs the one line per webhook. `answer` is
 * owned (NULL: out of memory, answered with a fixed body). */
static void decide(struct webhook *w, unsigned status, const char *result, char *answer,
                   const char *detail)
{
    if (w->answered) {
        free(answer);
        return;
    }
    w->answered = true;
    w->status = status;
    w->answer = answer;
    const char *type = w->type[0] ? w->type : "invalid";
    metrics_webhook(type, result);
    log_info("webhook: type=%s id=%s result=%s status=%u signature=%s%s%s", type,
             w->event_id[0] ? w->event_id : "-", result, status, w->scheme ? w->scheme : "none",
             detail ? ": " : "", detail ? detail : "");
}

static void decide_error(struct webhook *w, unsigned status, const char *result, const char *message)
{
    decide(w, status, result, httpd_json2("error", message, NULL, NULL), message);
}

enum MHD_Result receiver_answer(struct webhook *w, struct MHD_Connection *conn)
{
    return httpd_reply_webhook(conn, w->status, w->answer ? w->answer : "{\"error\":\"out of memory\"}");
}

/* Wakes the client after the db answered or gave up. */
static void webhook_resume(struct webhook *w)
{
    if (!w->suspended || !w->conn)
        return;
    w->suspended = false;
    MHD_resume_connection(w->conn);
    if (w->h)
        httpd_kick(w->h);
}

static void on_inbox(void *arg, enum inbox_result result, const char *text)
{
    struct webhook *w = arg;
    w->db_pending = false;
    pending_unlink(w);
    ev_timer_stop(w->loop, &w->timeout);
    if (w->answered)
        log_warn("webhook: id=%s: result %s came after the client was answered", w->event_id,
                 inbox_result_class(result));
    switch (result) {
    case INBOX_REJECTED:
        decide_error(w, MHD_HTTP_BAD_REQUEST, "bad_request", text);
        break;
    case INBOX_UNAVAILABLE:
        decide_error(w, MHD_HTTP_SERVICE_UNAVAILABLE, "error", text);
        break;
    default:
        decide(w, MHD_HTTP_OK, inbox_result_class(result), httpd_json2("result", text, NULL, NULL), NULL);
        break;
    }
    webhook_resume(w);
    if (w->mhd_done)
        webhook_free(w);
}

static void on_db_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct webhook *w = t->data;
    log_warn("webhook: id=%s: no database answer after %.0f s", w->event_id, DB_TIMEOUT);
    decide_error(w, MHD_HTTP_SERVICE_UNAVAILABLE, "error", "database unavailable");
    webhook_resume(w);   /* the context stays until the inbox callback runs */
}

/* The whole body is in: verify, parse, then hand over to the database. */
enum MHD_Result receiver_process(struct httpd *h, struct webhook *w, struct MHD_Connection *conn)
{
    const char *sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Sendry-Signature");
    if (!sig)
        sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sendry-Signature");
    const char *body = w->body ? w->body : "";

    enum sig_result sr = webhook_verify(h->secret, sig, body, w->len, ev_time(), &w->scheme);
    if (sr != SIG_OK) {
        decide_error(w, MHD_HTTP_UNAUTHORIZED, "unauthorized", webhook_sig_str(sr));
        return receiver_answer(w, conn);
    }
    if (!webhook_parse(body, w->len, w->event_id, sizeof w->event_id, w->type, sizeof w->type)) {
        decide_error(w, MHD_HTTP_BAD_REQUEST, "bad_request", "body is not a JSON object");
        return receiver_answer(w, conn);
    }
    if (!inbox_ready(h->hooks.inbox)) {
        decide_error(w, MHD_HTTP_SERVICE_UNAVAILABLE, "error", "database unavailable");
        return receiver_answer(w, conn);
    }
    if (h->npending >= h->max_queue) {
        /* The database is slow: hold no more bodies; Sendry redelivers after Retry-After. */
        metrics.webhook_queue_full++;
        decide_error(w, MHD_HTTP_SERVICE_UNAVAILABLE, "busy", "too many webhooks waiting for the database");
        return receiver_answer(w, conn);
    }

    w->db_pending = true;
    pending_link(w);
    inbox_receive(h->hooks.inbox, w->event_id, w->type, body, on_inbox, w);
    free(w->body);   /* the query holds its own copy: keep the body once */
    w->body = NULL;
    w->len = w->cap = 0;
    MHD_suspend_connection(conn);
    w->suspended = true;
    ev_timer_set(&w->timeout, DB_TIMEOUT, 0.);
    ev_timer_start(w->loop, &w->timeout);
    return MHD_YES;
}

enum MHD_Result receiver_start(struct httpd *h, struct MHD_Connection *conn, void **con_cls)
{
    struct webhook *w = xcalloc(1, sizeof *w);
    w->h = h;
    w->loop = h->loop;
    w->conn = conn;
    ev_init(&w->timeout, on_db_timeout);
    w->timeout.data = w;
    *con_cls = w;

    /* Refuse a declared oversized body before reading it (and before 100 Continue). */
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (end != cl && (errno == ERANGE || n > h->max_body)) {
            w->too_large = true;
            decide_error(w, MHD_HTTP_CONTENT_TOO_LARGE, "too_large", "body too large");
            return receiver_answer(w, conn);
        }
    }
    return MHD_YES;
}

/* A part of the body: keep it while it fits, else answer 413 as soon as MHD lets us. */
enum MHD_Result receiver_upload(struct httpd *h, struct webhook *w, struct MHD_Connection *conn,
                                      const char *data, size_t *size)
{
    size_t n = *size;
    *size = 0;
    if (!w->too_large && n > h->max_body - w->len) {
        w->too_large = true;
        free(w->body);
        w->body = NULL;
        w->len = w->cap = 0;
        decide_error(w, MHD_HTTP_CONTENT_TOO_LARGE, "too_large", "body too large");
        /* MHD may refuse a response while the body is still arriving: then it is sent
         * after the last part, and a body that keeps coming closes the connection. */
        if (receiver_answer(w, conn) == MHD_YES)
            return MHD_YES;
    }
    if (w->too_large) {
        w->discarded += n;
        return w->discarded > DISCARD_LIMIT ? MHD_NO : MHD_YES;
    }
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n + 1)
            cap *= 2;
        if (cap > h->max_body + 1)
            cap = h->max_body + 1;
        w->body = xrealloc(w->body, cap);
        w->cap = cap;
    }
    memcpy(w->body + w->len, data, n);
    w->len += n;
    w->body[w->len] = '\0';
    return MHD_YES;
}


void receiver_completed(struct webhook *w)
{
    w->conn = NULL;
    w->suspended = false;
    w->mhd_done = true;
    if (!w->db_pending)
        webhook_free(w);
}

void receiver_answer_waiting(struct httpd *h)
{
    for (struct webhook *w = h->pending; w; w = w->next) {
        ev_timer_stop(h->loop, &w->timeout);
        if (w->suspended) {
            decide_error(w, MHD_HTTP_SERVICE_UNAVAILABLE, "error", "shutting down");
            w->suspended = false;
            MHD_resume_connection(w->conn);
        }
    }
}

void receiver_detach_all(struct httpd *h)
{
    while (h->pending) {
        struct webhook *w = h->pending;
        pending_unlink(w);
        w->h = NULL;
    }
}

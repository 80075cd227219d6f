#include "httpd.h"

#include <errno.h>
#include <json-c/json.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "metrics.h"
#include "webhook.h"

#define CONNECTION_TIMEOUT 30u     /* seconds of client inactivity (not while suspended) */
#define CONNECTION_LIMIT 256u
#define DB_TIMEOUT 20.0            /* seconds a webhook waits for its query */
#define DISCARD_LIMIT (4u << 20)   /* bytes of an oversized chunked body read before closing */

#define RECEIVE_SQL "SELECT public.sendry_inbox_receive($1, $2, $3::jsonb)"

struct httpd {
    struct ev_loop *loop;
    struct MHD_Daemon *mhd;
    struct db *db;
    char *secret;                /* NULL: webhook route disabled */
    size_t max_body;
    int port;
    ev_io io;                    /* MHD's epoll fd */
    ev_timer timer;              /* MHD's timeout; also "run soon" after a resume */
    struct webhook *pending;     /* webhooks whose db query has not answered yet */
    size_t npending;
    char *start_err;             /* during httpd_start: where MHD's messages go */
    size_t start_errsize;
};

/* One POST /webhooks/sendry request. Owned by MHD's connection (con_cls) and, while
 * its query is queued, by the db callback too: freed when both are done with it. */
struct webhook {
    struct httpd *h;             /* NULL once httpd_stop() detached it */
    struct ev_loop *loop;
    struct MHD_Connection *conn; /* NULL once MHD completed the request */
    char *body;                  /* NUL-terminated */
    size_t len, cap, discarded;
    bool too_large;
    bool suspended;              /* MHD_suspend_connection() without the resume yet */
    bool db_pending;             /* our db callback has not run yet */
    bool mhd_done;               /* MHD's request-completed callback ran */
    bool answered;               /* status/answer are set (and counted) */
    unsigned status;
    char *answer;                /* JSON body of the answer */
    const char *scheme;          /* signature scheme, static */
    char event_id[WEBHOOK_ID_SIZE];
    char type[WEBHOOK_TYPE_SIZE];
    ev_timer timeout;
    struct webhook *prev, *next; /* in h->pending while db_pending and attached */
};

/* ---- the loop side --------------------------------------------------------------- */

static void rearm(struct httpd *h)
{
    MHD_UNSIGNED_LONG_LONG ms = 0;
    ev_timer_stop(h->loop, &h->timer);
    if (MHD_get_timeout(h->mhd, &ms) == MHD_YES) {
        ev_timer_set(&h->timer, (double)ms / 1000.0, 0.);
        ev_timer_start(h->loop, &h->timer);
    }
}

static void run(struct httpd *h)
{
    if (MHD_run(h->mhd) != MHD_YES)
        log_debug("httpd: MHD_run failed");
    rearm(h);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    run(w->data);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    run(w->data);
}

/* MHD must run soon after a resume; the ITC wakes the epoll fd too, this is the backstop. */
static void kick(struct httpd *h)
{
    ev_timer_stop(h->loop, &h->timer);
    ev_timer_set(&h->timer, 0., 0.);
    ev_timer_start(h->loop, &h->timer);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct httpd *h = cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    if (h->start_err)
        snprintf(h->start_err, h->start_errsize, "%s", msg);
    else
        log_debug("httpd: %s", msg);
}

/* ---- responses ----------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
                             const char *body, const char *allow)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body,
                                                             MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_json(struct MHD_Connection *conn, unsigned status, const char *body)
{
    return reply(conn, status, "application/json", body, NULL);
}

/* {"<key>":"<value>"[,"<key2>":"<value2>"]}, escaped by json-c; malloc'd. */
static char *json2(const char *k1, const char *v1, const char *k2, const char *v2)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, k1, json_object_new_string(v1));
    if (k2)
        json_object_object_add(o, k2, json_object_new_string(v2));
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    char *copy = s ? strdup(s) : NULL;
    json_object_put(o);
    return copy;
}

static enum MHD_Result healthz(struct MHD_Connection *conn)
{
    if (metrics.db_connected && !metrics.sending_stopped)
        return reply_json(conn, MHD_HTTP_OK, "{\"status\":\"ok\"}");
    const char *reason = !metrics.db_connected ? "database disconnected"
                         : metrics.stop_reason[0] ? metrics.stop_reason
                                                  : "sending stopped";
    char *body = json2("status", "unhealthy", "reason", reason);
    enum MHD_Result r = body ? reply_json(conn, MHD_HTTP_SERVICE_UNAVAILABLE, body) : MHD_NO;
    free(body);
    return r;
}

static enum MHD_Result metrics_page(struct MHD_Connection *conn)
{
    char *text = metrics_render();
    if (!text)
        return reply_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "{\"error\":\"out of memory\"}");
    enum MHD_Result r = reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, NULL);
    free(text);
    return r;
}

/* ---- webhooks ------------------------------------------------------------------ */

static void pending_unlink(struct webhook *w)
{
    struct httpd *h = w->h;
    if (!h)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else if (h->pending == w)
        h->pending = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
    h->npending--;
}

static void pending_link(struct webhook *w)
{
    struct httpd *h = w->h;
    w->prev = NULL;
    w->next = h->pending;
    if (h->pending)
        h->pending->prev = w;
    h->pending = w;
    h->npending++;
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
    decide(w, status, result, json2("error", message, NULL, NULL), message);
}

static enum MHD_Result queue_answer(struct webhook *w, struct MHD_Connection *conn)
{
    return reply_json(conn, w->status, w->answer ? w->answer : "{\"error\":\"out of memory\"}");
}

/* Wakes the client after the db answered or gave up. */
static void webhook_resume(struct webhook *w)
{
    if (!w->suspended || !w->conn)
        return;
    w->suspended = false;
    MHD_resume_connection(w->conn);
    if (w->h)
        kick(w->h);
}

static const char *result_class(const char *text)
{
    if (strcmp(text, "applied") == 0)
        return "applied";
    if (strcmp(text, "duplicate") == 0)
        return "duplicate";
    if (strncmp(text, "ignored", 7) == 0)
        return "ignored";
    if (strncmp(text, "error", 5) == 0)   /* stored, but applying it failed */
        return "error";
    return "other";
}

static void on_db_result(PGresult *res, void *arg)
{
    struct webhook *w = arg;
    w->db_pending = false;
    pending_unlink(w);
    ev_timer_stop(w->loop, &w->timeout);
    bool late = w->answered;

    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (res && st == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) >= 1 && !PQgetisnull(res, 0, 0)) {
        const char *text = PQgetvalue(res, 0, 0);
        if (late)
            log_warn("webhook: id=%s: result %s came after the client was answered", w->event_id,
                     result_class(text));
        decide(w, MHD_HTTP_OK, result_class(text), json2("result", text, NULL, NULL), NULL);
    } else if (!res) {
        log_warn("webhook: id=%s: database connection lost, outcome unknown", w->event_id);
        decide_error(w, MHD_HTTP_SERVICE_UNAVAILABLE, "error", "database unavailable");
    } else {
        /* Only the primary message and SQLSTATE: the detail may quote the body. */
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
            msg = "unexpected result shape";
        log_error("webhook: id=%s type=%s: sendry_inbox_receive failed: %s (SQLSTATE %s)", w->event_id,
                  w->type, msg ? msg : PQresStatus(st), state ? state : "-");
        /* Class 22 (data exception, e.g. JSON PostgreSQL refuses): redelivery cannot help. */
        if (state && strncmp(state, "22", 2) == 0)
            decide_error(w, MHD_HTTP_BAD_REQUEST, "bad_request", "rejected by the database");
        else
            decide_error(w, MHD_HTTP_SERVICE_UNAVAILABLE, "error", "database unavailable");
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
    webhook_resume(w);   /* the context stays until the db callback runs */
}

/* The whole body is in: verify, parse, then hand over to the database. */
static enum MHD_Result webhook_process(struct httpd *h, struct webhook *w, struct MHD_Connection *conn)
{
    const char *sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Sendry-Signature");
    if (!sig)
        sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sendry-Signature");
    const char *body = w->body ? w->body : "";

    enum sig_result sr = webhook_verify(h->secret, sig, body, w->len, ev_time(), &w->scheme);
    if (sr != SIG_OK) {
        decide_error(w, MHD_HTTP_UNAUTHORIZED, "unauthorized", webhook_sig_str(sr));
        return queue_answer(w, conn);
    }
    if (!webhook_parse(body, w->len, w->event_id, sizeof w->event_id, w->type, sizeof w->type)) {
        decide_error(w, MHD_HTTP_BAD_REQUEST, "bad_request", "body is not a JSON object");
        return queue_answer(w, conn);
    }
    if (!db_connected(h->db)) {
        decide_error(w, MHD_HTTP_SERVICE_UNAVAILABLE, "error", "database unavailable");
        return queue_answer(w, conn);
    }

    const char *params[3] = {w->event_id, w->type, body};
    w->db_pending = true;
    pending_link(w);
    if (!db_query(h->db, RECEIVE_SQL, 3, params, on_db_result, w)) {
        w->db_pending = false;
        pending_unlink(w);
        decide_error(w, MHD_HTTP_SERVICE_UNAVAILABLE, "error", "database unavailable");
        return queue_answer(w, conn);
    }
    if (!w->db_pending)   /* db failed the query synchronously: the answer is set */
        return queue_answer(w, conn);

    MHD_suspend_connection(conn);
    w->suspended = true;
    ev_timer_set(&w->timeout, DB_TIMEOUT, 0.);
    ev_timer_start(w->loop, &w->timeout);
    return MHD_YES;
}

static enum MHD_Result webhook_start(struct httpd *h, struct MHD_Connection *conn, void **con_cls)
{
    struct webhook *w = calloc(1, sizeof *w);
    if (!w)
        return MHD_NO;
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
            return queue_answer(w, conn);
        }
    }
    return MHD_YES;
}

/* A part of the body: keep it while it fits, else answer 413 as soon as MHD lets us. */
static enum MHD_Result webhook_upload(struct httpd *h, struct webhook *w, struct MHD_Connection *conn,
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
        if (queue_answer(w, conn) == MHD_YES)
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
        char *p = realloc(w->body, cap);
        if (!p)
            return MHD_NO;
        w->body = p;
        w->cap = cap;
    }
    memcpy(w->body + w->len, data, n);
    w->len += n;
    w->body[w->len] = '\0';
    return MHD_YES;
}

/* ---- MHD callbacks --------------------------------------------------------------- */

static bool is_get(const char *method)
{
    return strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    struct httpd *h = cls;
    struct webhook *w = *con_cls;

    if (!w) {
        /* First call, headers in: every route but the webhook answers right away. */
        if (strcmp(url, "/healthz") == 0)
            return is_get(method) ? healthz(conn)
                                  : reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "application/json",
                                          "{\"error\":\"method not allowed\"}", "GET, HEAD");
        if (strcmp(url, "/metrics") == 0)
            return is_get(method) ? metrics_page(conn)
                                  : reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "application/json",
                                          "{\"error\":\"method not allowed\"}", "GET, HEAD");
        if (strcmp(url, "/webhooks/sendry") != 0 || !h->secret)
            return reply_json(conn, MHD_HTTP_NOT_FOUND, "{\"error\":\"not found\"}");
        if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
            return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "application/json",
                         "{\"error\":\"method not allowed\"}", "POST");
        return webhook_start(h, conn, con_cls);
    }

    if (*upload_data_size)
        return webhook_upload(h, w, conn, upload_data, upload_data_size);

    /* The body is complete (or we were resumed with the answer set). */
    if (w->answered)
        return queue_answer(w, conn);
    return webhook_process(h, w, conn);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    struct webhook *w = *con_cls;
    if (!w)
        return;
    *con_cls = NULL;
    if (!w->answered)
        log_debug("webhook: request ended before an answer (MHD code %d)", (int)toe);
    w->conn = NULL;
    w->suspended = false;
    w->mhd_done = true;
    if (!w->db_pending)
        webhook_free(w);
}

/* ---- start / stop ------------------------------------------------------------------ */

/* Splits "host:port", "[v6]:port" or ":port". host is "" for every interface. */
static bool parse_listen(const char *listen, char *host, size_t hostsize, unsigned *port, char *err,
                         size_t errsize)
{
    const char *colon, *hs = listen;
    size_t hl;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':') {
            snprintf(err, errsize, "--listen %s: expected [IPv6]:PORT", listen);
            return false;
        }
        hs = listen + 1;
        hl = (size_t)(close - hs);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon) {
            snprintf(err, errsize, "--listen %s: expected ADDR:PORT or :PORT", listen);
            return false;
        }
        hl = (size_t)(colon - listen);
        if (memchr(listen, ':', hl)) {
            snprintf(err, errsize, "--listen %s: write IPv6 addresses as [ADDR]:PORT", listen);
            return false;
        }
    }
    if (hl >= hostsize) {
        snprintf(err, errsize, "--listen %s: address too long", listen);
        return false;
    }
    memcpy(host, hs, hl);
    host[hl] = '\0';
    const char *p = colon + 1;
    unsigned long v = 0;
    if (!*p || strlen(p) > 5) {
        snprintf(err, errsize, "--listen %s: bad port", listen);
        return false;
    }
    for (; *p; p++) {
        if (*p < '0' || *p > '9') {
            snprintf(err, errsize, "--listen %s: bad port", listen);
            return false;
        }
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v > 65535) {
        snprintf(err, errsize, "--listen %s: port out of range", listen);
        return false;
    }
    *port = (unsigned)v;
    return true;
}

static struct MHD_Daemon *start_daemon(struct httpd *h, unsigned flags, unsigned port,
                                       const struct sockaddr *sa)
{
    flags |= MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (sa)
        return MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, h,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                                MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h,
                                MHD_OPTION_CONNECTION_TIMEOUT, CONNECTION_TIMEOUT,
                                MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT,
                                MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_END);
    return MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, h,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h,
                            MHD_OPTION_CONNECTION_TIMEOUT, CONNECTION_TIMEOUT,
                            MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT, MHD_OPTION_END);
}

struct httpd *httpd_start(struct ev_loop *loop, const char *listen, const char *webhook_secret,
                          struct db *db, size_t max_body, char *err, size_t errsize)
{
    char host[256];
    unsigned port;
    if (!listen || !parse_listen(listen, host, sizeof host, &port, err, errsize))
        return NULL;

    struct httpd *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errsize, "--listen %s: out of memory", listen);
        return NULL;
    }
    h->loop = loop;
    h->db = db;
    h->max_body = max_body ? max_body : HTTPD_DEFAULT_MAX_BODY;
    if (webhook_secret && *webhook_secret && !(h->secret = strdup(webhook_secret))) {
        free(h);
        snprintf(err, errsize, "--listen %s: out of memory", listen);
        return NULL;
    }

    char mhd_err[256] = "";
    h->start_err = mhd_err;
    h->start_errsize = sizeof mhd_err;
    if (!host[0]) {
        /* Every interface: IPv6 and IPv4 on one socket, IPv4 alone without IPv6. */
        h->mhd = start_daemon(h, MHD_USE_DUAL_STACK, port, NULL);
        if (!h->mhd)
            h->mhd = start_daemon(h, 0, port, NULL);
    } else {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
        struct addrinfo *ai = NULL;
        char portstr[8];
        snprintf(portstr, sizeof portstr, "%u", port);
        int rc = getaddrinfo(host, portstr, &hints, &ai);
        if (rc != 0 || !ai) {
            snprintf(mhd_err, sizeof mhd_err, "cannot resolve the address: %s",
                     rc ? gai_strerror(rc) : "no address");
        } else {
            h->mhd = start_daemon(h, ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0, port, ai->ai_addr);
        }
        if (ai)
            freeaddrinfo(ai);
    }
    h->start_err = NULL;
    if (!h->mhd) {
        snprintf(err, errsize, "--listen %s: %s", listen, mhd_err[0] ? mhd_err : "cannot start the HTTP server");
        free(h->secret);
        free(h);
        return NULL;
    }

    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info || info->epoll_fd < 0) {
        snprintf(err, errsize, "--listen %s: libmicrohttpd has no epoll support", listen);
        MHD_stop_daemon(h->mhd);
        free(h->secret);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *pinfo = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    h->port = pinfo ? pinfo->port : (int)port;

    ev_io_init(&h->io, on_io, info->epoll_fd, EV_READ);
    h->io.data = h;
    ev_io_start(loop, &h->io);
    ev_init(&h->timer, on_timer);
    h->timer.data = h;
    rearm(h);
    log_info("httpd: listening on %s (port %d)%s", listen, h->port,
             h->secret ? "" : "; no webhook secret, /webhooks/sendry disabled");
    return h;
}

int httpd_port(const struct httpd *h)
{
    return h->port;
}

size_t httpd_pending(const struct httpd *h)
{
    return h->npending;
}

void httpd_stop(struct httpd *h)
{
    if (!h)
        return;
    /* MHD_stop_daemon() must not meet a suspended connection, and a resume only takes
     * effect in MHD_run(): answer the waiting webhooks, resume them, let MHD take them
     * back, then detach them (their db callback frees them later). */
    for (struct webhook *w = h->pending; w; w = w->next) {
        ev_timer_stop(h->loop, &w->timeout);
        if (w->suspended) {
            decide_error(w, MHD_HTTP_SERVICE_UNAVAILABLE, "error", "shutting down");
            w->suspended = false;
            MHD_resume_connection(w->conn);
        }
    }
    for (int i = 0; i < 3; i++)
        MHD_run(h->mhd);
    while (h->pending) {
        struct webhook *w = h->pending;
        pending_unlink(w);
        w->h = NULL;
    }
    ev_io_stop(h->loop, &h->io);
    ev_timer_stop(h->loop, &h->timer);
    MHD_stop_daemon(h->mhd);
    free(h->secret);
    free(h);
}

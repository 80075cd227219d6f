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

#include "httpd_priv.h"
#include "log.h"
#include "metrics.h"
#include "xalloc.h"


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
void httpd_kick(struct httpd *h)
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
                             const char *body, const char *allow, const char *retry_after)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body,
                                                             MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    if (retry_after)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result httpd_reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
                            const char *body, const char *allow)
{
    return reply(conn, status, ctype, body, allow, NULL);
}

enum MHD_Result httpd_reply_webhook(struct MHD_Connection *conn, unsigned status, const char *body)
{
    return reply(conn, status, "application/json", body, NULL,
                 status == MHD_HTTP_SERVICE_UNAVAILABLE ? HTTPD_RETRY_AFTER : NULL);
}

enum MHD_Result httpd_reply_json(struct MHD_Connection *conn, unsigned status, const char *body)
{
    return httpd_reply(conn, status, "application/json", body, NULL);
}

/* {"<key>":"<value>"[,"<key2>":"<value2>"]}, escaped by json-c; malloc'd. */
char *httpd_json2(const char *k1, const char *v1, const char *k2, const char *v2)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, k1, json_object_new_string(v1));
    if (k2)
        json_object_object_add(o, k2, json_object_new_string(v2));
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    char *copy = xstrdup(xcheck((void *)s));
    json_object_put(o);
    return copy;
}

static enum MHD_Result healthz(struct httpd *h, struct MHD_Connection *conn)
{
    char reason[600] = "";
    bool well = h->hooks.health(h->hooks.ud, reason, sizeof reason);
    if (well && !reason[0])
        return httpd_reply_json(conn, MHD_HTTP_OK, "{\"status\":\"ok\"}");
    char *body = httpd_json2("status", well ? "degraded" : "unhealthy", "reason", reason[0] ? reason : "unhealthy");
    enum MHD_Result r = body ? httpd_reply_json(conn, well ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, body) : MHD_NO;
    free(body);
    return r;
}

static enum MHD_Result metrics_page(struct MHD_Connection *conn)
{
    char *text = metrics_render();
    if (!text)
        return httpd_reply_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "{\"error\":\"out of memory\"}");
    enum MHD_Result r = httpd_reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, NULL);
    free(text);
    return r;
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
            return is_get(method) ? healthz(h, conn)
                                  : httpd_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "application/json",
                                          "{\"error\":\"method not allowed\"}", "GET, HEAD");
        if (strcmp(url, "/metrics") == 0)
            return is_get(method) ? metrics_page(conn)
                                  : httpd_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "application/json",
                                          "{\"error\":\"method not allowed\"}", "GET, HEAD");
        if (strcmp(url, "/webhooks/sendry") != 0 || !h->secret)
            return httpd_reply_json(conn, MHD_HTTP_NOT_FOUND, "{\"error\":\"not found\"}");
        if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
            return httpd_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "application/json",
                         "{\"error\":\"method not allowed\"}", "POST");
        return receiver_start(h, conn, con_cls);
    }

    if (*upload_data_size)
        return receiver_upload(h, w, conn, upload_data, upload_data_size);

    /* The body is complete (or we were resumed with the answer set). */
    if (w->answered)
        return receiver_answer(w, conn);
    return receiver_process(h, w, conn);
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
    receiver_completed(w);
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

/* Starts MHD on the address; on failure, why goes into mhd_err. */
static void bind_daemon(struct httpd *h, const char *host, unsigned port, char *mhd_err, size_t size)
{
    if (!host[0]) {
        /* Every interface: IPv6 and IPv4 on one socket, IPv4 alone without IPv6. */
        h->mhd = start_daemon(h, MHD_USE_DUAL_STACK, port, NULL);
        if (!h->mhd)
            h->mhd = start_daemon(h, 0, port, NULL);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%u", port);
    int rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0 || !ai)
        snprintf(mhd_err, size, "cannot resolve the address: %s", rc ? gai_strerror(rc) : "no address");
    else
        h->mhd = start_daemon(h, ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0, port, ai->ai_addr);
    if (ai)
        freeaddrinfo(ai);
}

static struct httpd *failed(struct httpd *h, char *err, size_t errsize, const char *listen, const char *why)
{
    snprintf(err, errsize, "--listen %s: %s", listen, why);
    if (h->mhd)
        MHD_stop_daemon(h->mhd);
    free(h->secret);
    free(h);
    return NULL;
}

struct httpd *httpd_start(struct ev_loop *loop, const char *listen, const char *webhook_secret,
                          const struct httpd_hooks *hooks, size_t max_body, char *err, size_t errsize)
{
    char host[256];
    unsigned port;
    if (!listen || !parse_listen(listen, host, sizeof host, &port, err, errsize))
        return NULL;
    struct httpd *h = xcalloc(1, sizeof *h);
    h->loop = loop;
    h->hooks = *hooks;
    h->max_body = max_body ? max_body : HTTPD_DEFAULT_MAX_BODY;
    h->max_queue = hooks->max_queue ? hooks->max_queue : HTTPD_DEFAULT_MAX_QUEUE;
    metrics.webhook_queue_limit = h->max_queue;
    if (webhook_secret && *webhook_secret)
        h->secret = xstrdup(webhook_secret);

    char mhd_err[256] = "";
    h->start_err = mhd_err;
    h->start_errsize = sizeof mhd_err;
    bind_daemon(h, host, port, mhd_err, sizeof mhd_err);
    h->start_err = NULL;
    if (!h->mhd)
        return failed(h, err, errsize, listen, mhd_err[0] ? mhd_err : "cannot start the HTTP server");
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info || info->epoll_fd < 0)
        return failed(h, err, errsize, listen, "libmicrohttpd has no epoll support");
    const union MHD_DaemonInfo *pinfo = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    h->port = pinfo ? pinfo->port : (int)port;

    ev_io_init(&h->io, on_io, info->epoll_fd, EV_READ);
    h->io.data = h;
    ev_io_start(loop, &h->io);
    ev_init(&h->timer, on_timer);
    h->timer.data = h;
    rearm(h);
    log_info("httpd: listening on %s (port %d): %sGET /healthz, GET /metrics", listen, h->port,
             h->secret ? "POST /webhooks/sendry, " : "no webhook secret, so no /webhooks/sendry; ");
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
     * back, then detach them (their inbox callback frees them later). */
    receiver_answer_waiting(h);
    for (int i = 0; i < 3; i++)
        MHD_run(h->mhd);
    receiver_detach_all(h);
    ev_io_stop(h->loop, &h->io);
    ev_timer_stop(h->loop, &h->timer);
    MHD_stop_daemon(h->mhd);
    free(h->secret);
    free(h);
}

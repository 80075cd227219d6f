/* httpd: the --listen server (health, metrics, Sendry webhooks) on the caller's loop.
 *
 * libmicrohttpd runs without threads of its own: its epoll fd is watched by an ev_io
 * and its timeout by an ev_timer, and MHD_run() is called from those watchers only.
 *
 *   GET  /healthz          200 {"status":"ok"} if the relay says it is healthy (the
 *                          health hook), else 503 {"status":"unhealthy","reason":...}
 *   GET  /metrics          200 text/plain; version=0.0.4, metrics_render()
 *   POST /webhooks/sendry  signature check (webhook.h), then the event goes to the
 *                          inbox (inbox.h) while the connection is suspended;
 *                          200 {"result":"<its text>"},
 *                          401 bad signature, 400 not a JSON object, 413 body > max_body,
 *                          503 database unavailable, or hooks.max_queue webhooks wait for
 *                          it already (with Retry-After: Sendry redelivers), 404 if no secret
 *   anything else          404, or 405 with Allow for a known path
 *
 * A webhook waits at most 20 s for the inbox; after that the client gets 503 and the
 * late result is only logged. Routes and server glue only: the answers come from the
 * hooks, which the caller owns. */
#ifndef SENDRY_HTTPD_H
#define SENDRY_HTTPD_H

#include <stddef.h>

#include <ev.h>

#include <stdbool.h>

#include "inbox.h"

#define HTTPD_DEFAULT_MAX_BODY (256 * 1024)
#define HTTPD_DEFAULT_MAX_QUEUE 64
#define HTTPD_RETRY_AFTER "5"   /* seconds, with every 503 */

struct httpd;

/* What the server asks its owner. */
struct httpd_hooks {
    /* true: healthy. false: writes the reason (no secrets) into reason. */
    bool (*health)(void *ud, char *reason, size_t size);
    struct inbox *inbox;    /* where webhook events go; borrowed */
    size_t max_queue;       /* webhooks waiting for the inbox at most; more: 503 (0: 64) */
    void *ud;
};

/* Starts listening on `listen`: "127.0.0.1:8080", "[::1]:8080", "host:8080" (resolved
 * once, here) or ":8080" (every interface, IPv6 and IPv4). Port 0 picks a free port
 * (see httpd_port). webhook_secret is copied; NULL or "" disables the webhook route.
 * max_body caps a webhook body (0 = HTTPD_DEFAULT_MAX_BODY, 256 KiB). hooks is copied;
 * what it points to must outlive the server. On failure returns NULL with a one-line
 * reason in err. */
struct httpd *httpd_start(struct ev_loop *loop, const char *listen, const char *webhook_secret,
                          const struct httpd_hooks *hooks, size_t max_body, char *err, size_t errsize);

/* The port actually bound. */
int httpd_port(const struct httpd *h);

/* Webhooks still waiting for the inbox (for a graceful shutdown: wait until it is 0,
 * while the loop runs, before httpd_stop()). */
size_t httpd_pending(const struct httpd *h);

/* Answers suspended webhooks with 503 "shutting down", closes every connection and
 * frees the server. Call it before db_free(). A webhook still queued in the inbox keeps
 * a small context that its callback frees when it runs; db_free() drops queued
 * callbacks, so for a leak-free exit let the loop run until db_idle() (or the
 * connection is lost) between httpd_stop() and db_free(). NULL is a no-op. */
void httpd_stop(struct httpd *h);

#endif

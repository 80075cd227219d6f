/* httpd: the --listen server (health, metrics, Sendry webhooks) on the caller's loop.
 *
 * libmicrohttpd runs without threads of its own: its epoll fd is watched by an ev_io
 * and its timeout by an ev_timer, and MHD_run() is called from those watchers only.
 *
 *   GET  /healthz          200 {"status":"ok"} if metrics.db_connected and sending is
 *                          not stopped, else 503 {"status":"unhealthy","reason":...}
 *   GET  /metrics          200 text/plain; version=0.0.4, metrics_render()
 *   POST /webhooks/sendry  signature check (webhook.h), then
 *                          SELECT public.sendry_inbox_receive($1 id, $2 type, $3 body::jsonb)
 *                          while the connection is suspended; 200 {"result":"<its text>"},
 *                          401 bad signature, 400 not a JSON object, 413 body > max_body,
 *                          503 database unavailable (Sendry redelivers), 404 if no secret
 *   anything else          404, or 405 with Allow for a known path
 *
 * A webhook query waits at most 20 s for its result; after that the client gets 503
 * and the late result is only logged. */
#ifndef SENDRY_HTTPD_H
#define SENDRY_HTTPD_H

#include <stddef.h>

#include <ev.h>

#include "db.h"

#define HTTPD_DEFAULT_MAX_BODY (256 * 1024)

struct httpd;

/* Starts listening on `listen`: "127.0.0.1:8080", "[::1]:8080", "host:8080" (resolved
 * once, here) or ":8080" (every interface, IPv6 and IPv4). Port 0 picks a free port
 * (see httpd_port). webhook_secret is copied; NULL or "" disables the webhook route.
 * max_body caps a webhook body (0 = HTTPD_DEFAULT_MAX_BODY, 256 KiB). db is borrowed
 * and must outlive the server. On failure returns NULL with a
 * one-line reason in err. */
struct httpd *httpd_start(struct ev_loop *loop, const char *listen, const char *webhook_secret,
                          struct db *db, size_t max_body, char *err, size_t errsize);

/* The port actually bound. */
int httpd_port(const struct httpd *h);

/* Webhook queries still waiting for their db result (for a graceful shutdown: wait
 * until it is 0, while the loop runs, before httpd_stop()). */
size_t httpd_pending(const struct httpd *h);

/* Answers suspended webhooks with 503 "shutting down", closes every connection and
 * frees the server. Call it before db_free(). A webhook query still queued in db keeps
 * a small context that its db callback frees when it runs; db_free() drops queued
 * callbacks, so for a leak-free exit let the loop run until db_idle() (or the
 * connection is lost) between httpd_stop() and db_free(). NULL is a no-op. */
void httpd_stop(struct httpd *h);

#endif

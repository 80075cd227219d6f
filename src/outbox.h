/* outbox: the relay. Claims due rows of public.sendry_outbox, delivers them to Sendry,
 * and records each outcome on its row.
 *
 *   claim    one short statement (FOR UPDATE SKIP LOCKED) that marks rows processing
 *            under a lease; no transaction stays open during HTTP
 *   deliver  one import request per claimed batch (or one request per row in single
 *            mode), paced by a token bucket, 429 pausing everything
 *   complete one statement per batch (arrays + unnest), only for rows still ours
 *
 * Everything runs on the caller's libev loop. The relay owns its db connection and
 * HTTP client; the config is borrowed and must outlive it. */
#ifndef SENDRY_OUTBOX_H
#define SENDRY_OUTBOX_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"

struct relay;

struct relay *relay_new(struct ev_loop *loop, const struct config *cfg);
/* Starts the --listen HTTP server (webhooks, health, metrics), if configured. Returns
 * false with one line in err when it cannot (bad address, port in use). */
bool relay_listen(struct relay *r, char *err, size_t errsize);
/* Verifies the audience (unless --no-verify), connects, and starts delivering. */
void relay_start(struct relay *r);
/* Graceful stop (SIGTERM): no more claims; waits for requests in flight up to the
 * drain timeout, releases what it holds but did not send, then breaks the loop. */
void relay_shutdown(struct relay *r);
/* The process exit status once the loop has returned (see --help). */
int relay_exit_status(const struct relay *r);
void relay_free(struct relay *r);

#endif

/* reconcile: pages Sendry's unsubscribe and suppression lists into the inbox.
 *
 * Webhook delivery is not guaranteed: every --reconcile-interval, a run pages through
 * GET /v1/unsubscribes and GET /v1/suppression from the cursor the last run stored and
 * feeds each page to public.sendry_inbox_receive (event ids deduplicate what the webhook
 * already brought), storing the next cursor in the same statement. Requests ask the
 * gate like deliveries do (they spend the same key's budget; a 429 pauses everything,
 * capped). A run stops early, with a warning, on an error or on a cursor it already saw.
 *
 * Owned by the relay, which starts runs; uses the aux db connection (never the relay's,
 * so a long run never holds up delivery) and borrows the HTTP client and the gate. */
#ifndef SENDRY_RECONCILE_H
#define SENDRY_RECONCILE_H

#include <stdbool.h>

#include <ev.h>

#include "config.h"
#include "db.h"
#include "gate.h"
#include "http.h"

struct reconciler;

struct reconciler *reconcile_new(struct ev_loop *loop, const struct config *cfg, struct db *db,
                                 struct http *http, struct gate *gate, void (*changed)(void *ud),
                                 void *ud);
void reconcile_free(struct reconciler *r);

/* Starts a run unless one is going. */
void reconcile_start(struct reconciler *r);
/* Ends the run at the next step (a request in flight still finishes). */
void reconcile_stop(struct reconciler *r);
bool reconcile_busy(const struct reconciler *r);   /* a request or query is under way */

#endif

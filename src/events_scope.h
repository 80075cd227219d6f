/* events_scope: whether the API key may send events, asked once at start (and again
 * after the key changes): GET /v1/events?limit=1, on the loop, like the audience check.
 *
 * A key may write contacts and still lack the scope for events. Nothing stops at start
 * for that (contacts keep syncing, and a project that sends no events never needs it),
 * but the first event due would be refused with 403 and stop sending; so a 403 here is
 * logged at once, one error line with the fix, and the gauge
 * sendry_sync_events_scope_missing is 1. 2xx: the gauge is 0, nothing is logged.
 * Anything else (network, 5xx, 429, 401: the audience check speaks for the key) says
 * nothing about the scope and leaves the gauge as it was. Called by relay_setup.c;
 * doctor_api.c and outcome.c use the same hint. Owns nothing after the request ends. */
#ifndef SENDRY_EVENTS_SCOPE_H
#define SENDRY_EVENTS_SCOPE_H

#include <stdbool.h>

#include "config.h"
#include "http.h"

/* The fix, for every place that meets a 403 on /v1/events. */
#define EVENTS_SCOPE_HINT "the API key lacks the scope for events: it needs full_access (403)"

enum events_scope_verdict {
    EVENTS_SCOPE_UNKNOWN,   /* no answer that says (network, 5xx, 429, 401) */
    EVENTS_SCOPE_GRANTED,   /* 2xx */
    EVENTS_SCOPE_MISSING    /* 403 */
};

/* What an answer (transport_ok, HTTP status) says about the scope (pure). */
enum events_scope_verdict events_scope_verdict(bool transport_ok, long status);

/* Starts the request; its answer is logged and sets the gauge. The request belongs to
 * `http`: aborting it (teardown) logs nothing. Not started: logged at debug level. */
void events_scope_check(struct http *http, const struct config *cfg);

#endif

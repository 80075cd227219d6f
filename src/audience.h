/* audience: the startup check, GET /v1/audiences/{id}.
 *
 * 200: the key is accepted and the audience exists (its name and member count are
 * logged). 401/402/403/404: a configuration that can never work (the caller exits 2).
 * Anything else (network, 5xx): the worker starts anyway and requests are retried.
 * The HTTP client is borrowed. */
#ifndef SENDRY_AUDIENCE_H
#define SENDRY_AUDIENCE_H

#include "config.h"
#include "http.h"

enum audience_verdict {
    AUDIENCE_OK,          /* verified */
    AUDIENCE_UNCHECKED,   /* could not tell (network, 5xx): start anyway */
    AUDIENCE_REFUSED      /* the key or the audience is wrong: exit 2 */
};

typedef void (*audience_cb)(void *ud, enum audience_verdict verdict);

/* Starts the check; cb runs once, from the loop (also when the request cannot start). */
void audience_check(struct ev_loop *loop, struct http *http, const struct config *cfg,
                    audience_cb cb, void *ud);

#endif

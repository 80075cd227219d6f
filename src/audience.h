/* audience: GET /v1/audiences/{id}, at start and after a contact write answered 404.
 *
 * 200: the key is accepted and the audience exists (its name and member count are
 * logged). 401/402/403/404: a configuration that can never work (at start the caller
 * exits 2). Anything else (network, 5xx): the worker starts anyway and requests are
 * retried. The HTTP client is borrowed. */
#ifndef SENDRY_AUDIENCE_H
#define SENDRY_AUDIENCE_H

#include "config.h"
#include "http.h"

enum audience_verdict {
    AUDIENCE_OK,          /* verified */
    AUDIENCE_UNCHECKED,   /* could not tell (network, 5xx): start anyway */
    AUDIENCE_REFUSED      /* the key or the audience is wrong: exit 2 */
};

/* status: the answer's HTTP status, 0 if none. */
typedef void (*audience_cb)(void *ud, enum audience_verdict verdict, long status);

/* Starts the check; cb runs once, from the loop (also when the request cannot start).
 * `what` names it in the log ("startup check"). */
void audience_check(struct ev_loop *loop, struct http *http, const struct config *cfg,
                    const char *what, audience_cb cb, void *ud);

/* After the startup check: every other audience the mapping names that the database can
 * show (in unfinished rows and in what was last enqueued; a bounded look) is checked the
 * same way, one after another, each request asking the gate. An audience Sendry does
 * not know is logged as a warning: the rows naming it fail, not the worker. */
struct db;
struct gate;
struct audience_named;
struct audience_named *audience_check_named(struct ev_loop *loop, struct http *http, struct db *db,
                                            struct gate *gate, const struct config *cfg);
/* stop: no further request (before the relay aborts what is in flight); free: after the
 * HTTP client and the connection are gone, which drop their callbacks. */
void audience_named_stop(struct audience_named *nm);
void audience_named_free(struct audience_named *nm);

#endif

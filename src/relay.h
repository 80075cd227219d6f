/* relay: the worker's orchestrator. Owns every part of the delivery pipeline and decides,
 * in one place (relay_step), what runs next:
 *
 *   claim.c      due rows in, under a lease        (relay db connection)
 *   deliver.c    jobs out to Sendry, as the gate allows
 *   outcome.c    what each answer means for its rows
 *   complete.c   outcomes back into the outbox     (relay db connection)
 *   reconcile.c  Sendry's opt-out lists into the inbox (aux db connection)
 *   inbox.c      webhook events into the inbox     (aux db connection, via httpd.c)
 *   gate.c       "may I send now?": pacing, the 429 pause, the stopped state
 *
 * Its state is one enum (starting, running, paused for 429, stopped by a refused key or
 * audience, draining, done). It answers health; httpd.c asks. Everything runs on the
 * caller's libev loop; the config is borrowed and must outlive the relay. */
#ifndef SENDRY_RELAY_H
#define SENDRY_RELAY_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"

enum relay_state {
    RELAY_STARTING,   /* checking the audience, connecting */
    RELAY_RUNNING,
    RELAY_PAUSED,     /* a 429: every request waits */
    RELAY_STOPPED,    /* 401/402/403 or an unknown audience: only probes go */
    RELAY_DRAINING,   /* SIGTERM: no claims; finishing or releasing what it holds */
    RELAY_DONE        /* the loop is told to end */
};

struct relay;

struct relay *relay_new(struct ev_loop *loop, const struct config *cfg);
/* Starts the --listen HTTP server (webhooks, health, metrics), if configured. Returns
 * false with one line in err when it cannot (bad address, port in use). */
bool relay_listen(struct relay *r, char *err, size_t errsize);
/* Verifies the audience (unless --no-verify), connects, and starts delivering. */
void relay_start(struct relay *r);
/* Graceful stop (SIGTERM): no more claims; waits for requests in flight up to the
 * drain timeout, releases what it holds but did not send, then breaks the loop. A second
 * call exits at once. */
void relay_shutdown(struct relay *r);
/* SIGHUP: reads the API key again from its file or from Vault and sends it from then on
 * (a key in SENDRY_API_KEY cannot be read again: it says so). Nothing else is reloaded. */
void relay_reload_key(struct relay *r);
/* The process exit status once the loop has returned (see --help). */
int relay_exit_status(const struct relay *r);
void relay_free(struct relay *r);

enum relay_state relay_state(const struct relay *r);
const char *relay_state_name(enum relay_state s);
/* true: healthy. false: the reason, one line, in reason. */
bool relay_health(struct relay *r, char *reason, size_t size);

#endif

/* healthcheck: `sendry-sync healthcheck`, for a container's HEALTHCHECK. With --listen
 * (or SENDRY_LISTEN, which is what a HEALTHCHECK process sees) it asks the running
 * worker's GET /healthz on that port over loopback, never through a proxy; without it,
 * it connects to the database and runs SELECT 1. Prints one line; returns 0 (healthy)
 * or 1 (not), never 2 (Docker reserves it). Blocking: it runs without the event loop. */
#ifndef SENDRY_HEALTHCHECK_H
#define SENDRY_HEALTHCHECK_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

#define HEALTHCHECK_TIMEOUT_MS 5000

int healthcheck_run(const struct config *cfg);

/* The /healthz URL for a --listen address: ":8080" and "0.0.0.0:8080" ask 127.0.0.1,
 * "[::]:8080" asks [::1], anything else as given. False if it does not fit. */
bool healthcheck_url(const char *listen, char *url, size_t size);

#endif

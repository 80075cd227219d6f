/* status: `sendry-sync status`, the outbox at a glance: the stats view, what was sent in
 * the last hour (per 10 minutes), the events by name (status_events.c), failed and
 * retrying rows grouped by (last_http_status, last_error) with counts, and the oldest
 * due row; as a plain table, or --json. Email
 * addresses are masked unless --verbose. Blocking libpq: it runs without the event loop.
 * Returns the exit status: 0, or 1 when the database cannot be read. */
#ifndef SENDRY_STATUS_H
#define SENDRY_STATUS_H

#include "config.h"

int status_run(const struct config *cfg);

#endif

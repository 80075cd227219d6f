/* status_events: the events part of `sendry-sync status`: per event name, the rows
 * pending, sent (of which Sendry deduped) and failed. Bounded like the rest of status
 * (status.c): pending and failed event rows are counted among the first COUNT_CAP rows
 * of the claim index (per class) and of the index of failed rows, so a count is "at
 * least" when the outbox's own count stopped at the cap; sent ones are counted in the
 * same page sample as the sent rows, scaled, and marked estimated beyond it. Called by
 * status.c only. */
#ifndef SENDRY_STATUS_EVENTS_H
#define SENDRY_STATUS_EVENTS_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>
#include <libpq-fe.h>

/* The names shown at most (the others are left out, and the output says so). */
#define STATUS_EVENT_NAMES 50

/* [{"name","pending","sent","deduped","failed"}] sorted by name, the first
 * STATUS_EVENT_NAMES (*more: there were others), [] when the outbox holds no event row
 * that these bounded reads see; `count_cap` and `sample_pages` as status.c passes them,
 * `sampled_percent` the share of the pages its sample reads (100: exact). NULL with the
 * reason in err. */
json_object *status_events_collect(PGconn *conn, const char *count_cap, const char *sample_pages,
                                   double sampled_percent, bool *more, char *err, size_t errsize);

/* The table, nothing when `events` is empty. "+" after a pending or failed count when the
 * outbox's count of that status stopped at count_cap; "~" before sent counts estimated. */
void status_events_print(json_object *events, bool more, const char *count_cap, bool pending_capped,
                         bool failed_capped, bool sent_estimated);

#endif

/* complete: the outcome of each delivered row, written back to public.sendry_outbox.
 *
 * Outcomes queue in memory and go out one statement at a time, as one jsonb parameter
 * (built with json-c, read with jsonb_to_recordset). A statement only touches rows that
 * the claim which produced the outcome still holds (same claim_id, still processing, our
 * locked_by): a worker whose lease ran out never overwrites a later claim's row.
 * Outcomes survive a lost connection and are written after the reconnect, and a
 * statement that failed on a timeout or a deadlock (dbfault.h: transient) is sent again.
 *
 * Owned by the relay, which calls complete_flush() when the connection is free; deliver.c
 * and outcome.c add outcomes. The relay db connection is borrowed. */
#ifndef SENDRY_COMPLETE_H
#define SENDRY_COMPLETE_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include "db.h"
#include "sendry.h"

enum row_result {
    RESULT_SENT,       /* sent, sent_at = now() */
    RESULT_RETRY,      /* pending again after `delay`, the attempt counted */
    RESULT_FAILED,     /* failed, for good (until an operator requeues it) */
    RESULT_RELEASE     /* pending again after `delay`, the attempt not counted */
};

/* What one completion statement did. */
struct complete_report {
    size_t rows;              /* outcomes the statement carried */
    long long recorded;       /* rows it updated */
    long long sent, failed, retried;
    double soonest;           /* seconds to the soonest row made pending again, -1 if none */
    bool statement_failed;    /* the statement itself failed: its outcomes were dropped */
    const PGresult *error;    /* then its error (borrowed, valid during the callback) */
};

typedef void (*complete_cb)(void *ud, const struct complete_report *report);

struct completer;

/* locked_by is copied. done runs after every statement (from the loop). Outcomes a
 * statement could not record are looked into on `aux`, and what happened to their rows
 * is logged (claimed again by another worker; a claim the database lost; deleted). */
struct completer *complete_new(struct db *db, struct db *aux, const char *locked_by,
                               complete_cb done, void *ud);
void complete_free(struct completer *c);

/* Queues the outcome of one held row. error may be NULL; it is copied. */
void complete_row(struct completer *c, const struct row_ref *ref, enum row_result result,
                  int http_status, const char *error, double delay);
/* The same outcome for every row of a contact. The rest of its chain (row->then), if
 * still attached, goes back to pending with its attempt not counted: due with the
 * contact (retried or released), or at once (settled). */
void complete_contact(struct completer *c, const struct row *row, enum row_result result,
                      int http_status, const char *error, double delay);
/* The same, for a contact settled without a request (the claim's render found nothing to
 * send, or a mapping problem): its rows' attempts are not counted. */
void complete_contact_unsent(struct completer *c, const struct row *row, enum row_result result,
                             const char *error);
/* A sent event (its chain detached), and whether Sendry said deduped. */
void complete_event_sent(struct completer *c, const struct row *row, int http_status, bool deduped);

/* Sends the queued outcomes if no statement is running and the connection is up. */
void complete_flush(struct completer *c);

/* Outcomes queued or being written (their rows are still processing in the database). */
size_t complete_pending(const struct completer *c);
/* For --once: remember the rows this run made pending again (a retry, a release) until
 * a later outcome of theirs settles them; complete_waiting() counts those left. */
void complete_track_waiting(struct completer *c);
long long complete_waiting(const struct completer *c);
/* Appends the ids of those rows to `ids` (a json array). */
void complete_add_ids(const struct completer *c, json_object *ids);

#endif

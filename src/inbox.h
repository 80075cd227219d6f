/* inbox: a verified webhook event into public.sendry_inbox.
 *
 * SELECT public.sendry_inbox_receive($1 event id, $2 type, $3 body) stores the event
 * (deduplicated by its id) and applies it in one transaction, so a webhook is answered
 * 2xx only after its event committed. This module runs that query on the aux db
 * connection and says what the answer means; httpd.c turns it into an HTTP answer.
 *
 * Events that were stored but could not be applied (an error, kept 'received') are
 * applied again on a timer: after `retry_first` (six polls: 30 s by default), the wait
 * doubling to an hour while errors remain. Owned by the relay, which starts the timer; the db connection is borrowed. */
#ifndef SENDRY_INBOX_H
#define SENDRY_INBOX_H

#include <stdbool.h>

#include <ev.h>

#include "db.h"

enum inbox_result {
    INBOX_APPLIED,       /* stored and applied */
    INBOX_REAPPLIED,     /* a redelivery of an event that could not be applied before: applied now */
    INBOX_DUPLICATE,     /* seen before */
    INBOX_IGNORED,       /* stored, nothing to apply (unknown email, event type, ...) */
    INBOX_APPLY_ERROR,   /* stored, applying failed (it stays 'received') */
    INBOX_OTHER,         /* stored, an answer this version does not know */
    INBOX_REJECTED,      /* the database refused the event itself: redelivery cannot help */
    INBOX_UNAVAILABLE    /* the database is unavailable: the sender should redeliver */
};

/* text: the function's answer (or the error message); valid during the call only. */
typedef void (*inbox_cb)(void *arg, enum inbox_result result, const char *text);

struct inbox;

struct inbox *inbox_new(struct ev_loop *loop, struct db *db, double retry_first);
void inbox_free(struct inbox *in);

/* Starts (or stops) applying the events left 'received' again, on the timer. */
void inbox_retry_start(struct inbox *in);
void inbox_retry_stop(struct inbox *in);

/* The connection is up: an event handed in now gets an answer from the database. */
bool inbox_ready(const struct inbox *in);

/* Stores and applies one event; cb runs once, from the loop. Strings are copied. */
void inbox_receive(struct inbox *in, const char *event_id, const char *type, const char *body,
                   inbox_cb cb, void *arg);

/* "applied", "duplicate", "ignored", "error", "other", "bad_request": the metrics class. */
const char *inbox_result_class(enum inbox_result r);

#endif

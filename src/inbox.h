/* inbox: a verified webhook event into public.sendry_inbox.
 *
 * SELECT public.sendry_inbox_receive($1 event id, $2 type, $3 body) stores the event
 * (deduplicated by its id) and applies it in one transaction, so a webhook is answered
 * 2xx only after its event committed. This module runs that query on the aux db
 * connection and says what the answer means; httpd.c turns it into an HTTP answer.
 * The db connection is borrowed. */
#ifndef SENDRY_INBOX_H
#define SENDRY_INBOX_H

#include <stdbool.h>

#include "db.h"

enum inbox_result {
    INBOX_APPLIED,       /* stored and applied */
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

struct inbox *inbox_new(struct db *db);
void inbox_free(struct inbox *in);

/* The connection is up: an event handed in now gets an answer from the database. */
bool inbox_ready(const struct inbox *in);

/* Stores and applies one event; cb runs once, from the loop. Strings are copied. */
void inbox_receive(struct inbox *in, const char *event_id, const char *type, const char *body,
                   inbox_cb cb, void *arg);

/* "applied", "duplicate", "ignored", "error", "other", "bad_request": the metrics class. */
const char *inbox_result_class(enum inbox_result r);

#endif

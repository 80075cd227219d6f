/* job: one HTTP request's worth of rows, and the request it sends next.
 *
 * Plain upserts share one import (or, in --mode single, one create per row); an email
 * change and a deletion are short sequences of single-row requests, stepped here:
 *   move    PATCH /v1/contacts/by-email?email=<old>; 404 (Sendry never had the old
 *           address) -> the same from each address of the contact's older rows (a move
 *           Sendry applied whose outcome was lost), then import the new one; 409 (both
 *           exist) -> import the new one, then look up and delete the old one
 *   audiences  a contact in other audiences than the default one alone, or that left
 *           some: an import into each of its audiences, then a look-up of its id and
 *           DELETE /v1/audiences/{audience}/contacts/{id} for each it left (a contact is
 *           never deleted for leaving an audience)
 *   delete  GET /v1/contacts/by-email?email=<address> -> DELETE /v1/contacts/{id}, or
 *           DELETE /v1/audiences/{audience}/contacts/{id}; 404 at any step: done; then
 *           the same for the old address, when the deleted contact was still moving
 *   event   POST /v1/events, one row per request
 * Pure: builds requests and reads answers; deliver.c sends them and outcome.c decides
 * what an answer means for the rows. A job owns its rows. */
#ifndef SENDRY_JOB_H
#define SENDRY_JOB_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "http.h"
#include "sendry.h"

enum req_kind {
    REQ_IMPORT,          /* POST /v1/contacts/import: upsert by email, into the audience */
    REQ_CREATE,          /* POST /v1/contacts (--mode single) */
    REQ_MOVE,            /* PATCH /v1/contacts/by-email?email=<old>: the new address */
    REQ_LOOKUP,          /* GET /v1/contacts/by-email?email=<address>: the contact's id */
    REQ_DELETE_CONTACT,  /* DELETE /v1/contacts/{id} */
    REQ_REMOVE_MEMBER,   /* DELETE /v1/audiences/{audience}/contacts/{id} */
    REQ_EVENT            /* POST /v1/events: one event (no batch endpoint) */
};

/* What a look-up of a contact's id is for. */
enum lookup_for { LOOKUP_DELETE, LOOKUP_OLD, LOOKUP_LEAVE };

struct job {
    enum req_kind req;
    bool live;             /* one of its rows is live: it may use every token */
    bool shared;           /* the import (or create) of several contacts' one audience */
    bool split;            /* a half of a rejected batch: never merged into another request */
    bool delete_old;       /* after this step: look up and delete the old address too */
    enum lookup_for lookup_for;
    const char *lookup;    /* REQ_LOOKUP: the address to look up (borrowed from the row) */
    char *audience;        /* import, create, remove: which audience (NULL: none); owned */
    size_t next_audience;  /* a single-row job: the next of its audiences to import into */
    size_t next_leave;     /* ... and the next audience it left, to take it out of */
    char contact_id[128];  /* from REQ_LOOKUP */
    struct row **rows;     /* owned */
    size_t n, cap;
    double started_at;     /* gate clock, when its current request started */
    void *owner;           /* the deliverer sending it */
    struct job *next, *prev;   /* in deliver.c's queue or in-flight list */
};

/* What an answer means for the job's steps. */
enum advance {
    ADV_CLASSIFY,   /* the usual classification of the answer applies */
    ADV_NEXT,       /* another request of the same job is set up */
    ADV_DONE,       /* the row is done although the answer is not a 2xx (404 on a delete) */
    ADV_RETRY       /* a 2xx we cannot use: retry the row with backoff */
};

struct job *job_new(enum req_kind req, size_t cap);
/* Sets the audience of the job's next request (copied; NULL: none). */
void job_set_audience(struct job *job, const char *audience);
void job_add(struct job *job, struct row *row);
/* The job a row starts: its own for an event, a move, a deletion or a change of audiences, else
 * NULL: it shares the import (or, in --mode single, the create) of its one audience. */
struct job *job_for_row(struct row *row, const struct config *cfg);
void job_free(struct job *job);

/* The request for the job's current step (never NULL). */
struct http_request *job_request(const struct job *job, const struct config *cfg);
/* The path of the job's current request, without the query (for messages). */
const char *job_path(const struct job *job);
/* True when the request names the configured audience (a 404 may mean it is gone). */
bool job_names_audience(const struct job *job, const struct config *cfg);
/* The other audience a request names, whose 404 fails the rows (not the worker), or NULL. */
const char *job_other_audience(const struct job *job, const struct config *cfg);

/* Moves the job along its steps after an answer (transport_ok answers only). */
enum advance job_advance(struct job *job, const struct http_request *req, const struct config *cfg);

/* Halves a batch rejected as a whole; the job's rows move to *a and *b. */
void job_split(struct job *job, struct job **a, struct job **b);

#endif

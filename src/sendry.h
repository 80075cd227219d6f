/* sendry: what the Sendry API expects and what its answers mean (see
 * ../shared/docs/sendry-api.md). Pure functions: request bodies, response classes,
 * error bodies, Retry-After. No I/O. */
#ifndef SENDRY_SENDRY_H
#define SENDRY_SENDRY_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

enum row_op { OP_UPSERT, OP_DELETE, OP_EVENT };

/* How a contact's body came to be. A captured row (an upsert written by a trigger or a
 * short backfill: payload NULL) is rendered through the mapping at the claim
 * (sendry_claim_render) and compared with what Sendry last accepted. */
enum render {
    RENDER_GIVEN,      /* the newest row carried its payload: sent as given */
    RENDER_SEND,       /* rendered, differs from the state: sent, the state written on acceptance */
    RENDER_SAME,       /* rendered, what Sendry already has: settled sent without a request */
    RENDER_GONE,       /* the user is not synced any more: settled sent without a request */
    RENDER_FAILED      /* the mapping renders something Sendry would reject: failed, unsent */
};

/* What sendry_contact_state records once Sendry has accepted a rendered contact. */
struct accepted {
    char *user_id;          /* owned, uuid text */
    char *hash;             /* owned, the rendered body's hash (bigint text) */
    char *audiences;        /* owned, JSON array text, or NULL: the default audience */
};

/* An outbox row held under a claim: what its outcome is written against. */
struct row_ref {
    long long id;
    long long claim_id;     /* the claim that holds it (outcomes are tied to it) */
    double claimed_at;      /* when, on the database's clock (seconds) */
    int attempts;           /* including the current one */
    int max_attempts;
    double age;             /* seconds since it was enqueued, at the claim */
};

/* One contact as the worker delivers it: the newest state of the rows of one contact
 * that a claim took together (several pending changes go out as one); or one event
 * (OP_EVENT: one outbox row, one POST /v1/events).
 * A claim's rows of one user form a chain (`then`): its contact, then its events in
 * order (the events first when the contact is being deleted). Each link goes out only
 * after the one before it was settled for good (sent, or failed): an event never
 * reaches Sendry before the contact upsert enqueued before it was accepted. */
struct row {
    long long id;           /* the newest row's id (for logs) */
    enum row_op op;
    char *email;            /* owned; normalised (trimmed, lower-case) */
    char *old_email;        /* owned, NULL unless the contact moves: the address Sendry knows */
    char **via;             /* owned: the addresses of its older rows (oldest first), where
                             * the contact is if Sendry applied an older move whose outcome
                             * was never recorded; a move that finds nothing at old_email
                             * tries them, from the last */
    size_t nvia;
    char *contact;          /* owned: the contact as Sendry takes it, JSON text ({"email",
                             * names, metadata}), rendered once from the payload at the
                             * claim (the parsed payload is not kept: a json-c tree takes
                             * some 2 KB a row, the text about 150 bytes) */
    bool remove_only;       /* a delete whose payload says delete_mode remove_from_audience */
    bool live;              /* one of its rows is live (a change made now, not a backfill) */
    char **audiences;       /* owned: the audiences it belongs to (the default one resolved) */
    size_t naudiences;
    char **leave;           /* owned: audiences it left (never among `audiences`) */
    size_t nleave;
    int attempts;           /* the most of its rows' attempts (for the backoff) */
    int max_attempts;
    struct row_ref *refs;   /* owned: every row this contact's claim holds, oldest first */
    size_t nrefs;
    double held_since;      /* gate clock: claimed, or its lease last renewed */
    bool lost;              /* another claim took its lease: send nothing more for it */
    char *event;            /* owned, OP_EVENT: the body of POST /v1/events */
    char *event_name;       /* owned, OP_EVENT: its name (metrics, logs) */
    struct row *then;       /* owned: the next link of its user's chain, or NULL */
    enum render render;
    char *problem;          /* owned, RENDER_FAILED: "mapping: ..." */
    struct accepted state;  /* RENDER_SEND, RENDER_SAME: written when it settles sent */
};

/* Body of PATCH /v1/contacts/by-email?email=<old>: the new email and the names and
 * metadata, never `unsubscribed`. Caller frees. */
char *sendry_move_body(const struct row *r);


/* Percent-encodes s for a URL query value (RFC 3986 unreserved kept). Caller frees. */
char *sendry_url_encode(const char *s);

/* The "id" of a contact object in a response body, copied into id (false if none). */
bool sendry_contact_id(const char *body, size_t len, char *id, size_t id_size);

/* Reads a row's payload (JSON text, or NULL) once, with r->email set: r->contact (email,
 * first_name, last_name, metadata with every value a string, never `unsubscribed`),
 * r->remove_only ("remove_from_audience" in a delete's delete_mode asks
 * to take the contact out of its audiences and keep it; anything else deletes it), and
 * the audiences it names: "audiences" (absent or null: the default one; "default" in it:
 * the default one) and "leave_audiences" (minus those it is in), each without repeats,
 * into r->audiences and r->leave. The row owns all of them from then on. */
void sendry_row_payload(struct row *r, const char *payload, const char *default_audience);

/* Body of POST /v1/contacts/import for rows[0..n): {"contacts":[...],"audience_id":...}
 * (no audience_id when audience_id is NULL). Caller frees. */
char *sendry_import_body(struct row *const *rows, size_t n, const char *audience_id);

/* Body of POST /v1/contacts for one row, with audience_id (unless NULL). Caller frees. */
char *sendry_contact_body(const struct row *r, const char *audience_id);

/* Reads an event row's payload ({"name", "payload"}, see docs/sql.md) into r->event,
 * the body of POST /v1/events ({name, contact_email, payload, event_id}), and
 * r->event_name, with r->email set. A payload that is not that shape still makes a body
 * (Sendry's 422 then names the problem, and fails the row with it). */
void sendry_event_payload(struct row *r, const char *payload, const char *event_id);

/* Whether a 2xx answer to POST /v1/events says `deduped: true` (Sendry had the event_id
 * already and answered with the original event). */
bool sendry_event_deduped(const char *body, size_t len);

/* Trims ASCII whitespace and lower-cases; returns a malloc'd copy. */
char *sendry_normalize_email(const char *email);

enum outcome {
    OUTCOME_SENT,          /* 2xx */
    OUTCOME_RETRY,         /* network error, timeout, 408, 5xx: back off, count the attempt */
    OUTCOME_RATE_LIMITED,  /* 429: pause everything, do not count the attempt */
    OUTCOME_INVALID,       /* 400, 404 (not the audience), 409, 422, other 4xx: fail the row(s) */
    OUTCOME_STOP           /* 401, 402, 403, unknown audience: stop sending, keep rows pending */
};

/* Classifies a finished request. transport_ok is false for network errors and
 * timeouts. audience_request: a 404 means the configured audience is unknown. */
enum outcome sendry_classify(bool transport_ok, long status, bool audience_request);

const char *outcome_name(enum outcome o);

/* What an error answer says: Sendry's two documented shapes ({"error":{...}} and the
 * flat {"statusCode","code","message","details"}), RFC 9457 problem+json ("title",
 * "detail"), and anything else (HTML from a proxy, plain text) as text: tags dropped,
 * white space folded, cut at a UTF-8 boundary. Never NUL-free guarantees beyond that:
 * mask email addresses before logging it (log_text). */
struct sendry_error {
    char code[64];
    char message[300];
    char details[400];      /* the answer's details (which field, why), compact JSON, cut */
    double retry_after;     /* the body's retry_after, -1 if none */
};
void sendry_read_error(const char *body, size_t len, struct sendry_error *out);

/* Error details from a response body in either documented shape:
 * {"error":{"code","message","retry_after"}} or {"statusCode","code","message"}.
 * Fields not found are left untouched (set them to defaults first). code and message
 * are copied into the caller's buffers; *retry_after is set when the body has one. */
void sendry_parse_error(const char *body, size_t len, char *code, size_t code_size,
                        char *message, size_t message_size, double *retry_after);

/* Seconds to wait from a Retry-After header value: delta-seconds or an HTTP-date
 * (relative to `now`, Unix seconds). Returns -1 if the value is not understood. */
double sendry_retry_after(const char *header, double now);

#endif

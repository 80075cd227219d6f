/* claim: takes due rows of public.sendry_outbox for this worker, under a lease.
 *
 * One short statement (FOR UPDATE SKIP LOCKED) marks rows processing with locked_by, a
 * lease and a claim_id, and returns them; no transaction stays open during HTTP. Changes
 * to one contact go out one at a time, oldest first. Also here: when the next row falls
 * due, and the release of rows a lost claim marked for us that we never saw.
 *
 * Owned by the relay, which decides when to claim; the relay db connection is borrowed.
 * Rows handed to the callback belong to it. */
#ifndef SENDRY_CLAIM_H
#define SENDRY_CLAIM_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include "config.h"
#include "db.h"
#include "sendry.h"

/* What one claim returned. */
struct claim_batch {
    struct row **rows;     /* n contacts, each owned by the callee (free with row_free) */
    size_t n;
    int limit;             /* the contacts asked for */
    bool more;             /* the candidates filled their limit: more may be due (n < limit
                            * then means some were held back or coalesced, not none left) */
    size_t fresh;          /* first attempts created after the connection began */
    bool failed;           /* the claim failed (connection lost or statement error) */
    const PGresult *error; /* the statement's error (borrowed, for the callback); NULL if none
                            * or the connection was lost */
};

typedef void (*claim_cb)(void *ud, struct claim_batch *batch);
/* seconds until the next unfinished row falls due; < 0 if none. */
typedef void (*next_due_cb)(void *ud, double seconds);

struct claimer;

/* locked_by is copied. */
struct claimer *claim_new(struct db *db, const struct config *cfg, const char *locked_by,
                          claim_cb claimed, next_due_cb next_due, void *ud);
void claim_free(struct claimer *c);

/* Claims up to `limit` due contacts, at most `bulk_limit` of them bulk. `connected_for`:
 * seconds the connection has been up (rows younger than that, on their first attempt,
 * count as fresh). */
void claim_take(struct claimer *c, int limit, int bulk_limit, double connected_for);
bool claim_busy(const struct claimer *c);       /* a claim is in flight */

/* Asks when the next unfinished row falls due (at most one question in flight). */
void claim_next_due(struct claimer *c);

/* After a reconnect: rows still marked processing for us that are not in `held` (a json
 * array of ids we hold in memory) go back to pending, their attempt not counted. Runs
 * ahead of every statement queued on the connection (a claim queued before it went
 * down takes rows `held` cannot list). */
void claim_release_orphans(struct claimer *c, json_object *held);

/* The rows of `refs` (a json array of {"id", "claim_id"}) that are not ours any more:
 * ids[0..n) are those the renewal did not find under our claim; `taken` of them another
 * worker holds now, the others' claim is gone (its commit lost in a crash of the
 * database, or the row changed by someone). */
typedef void (*renew_cb)(void *ud, const long long *lost, size_t n, size_t taken);

/* Renews the lease of the rows in `refs` that are still ours (same claim, processing,
 * our locked_by), for another --lease from now. */
void claim_renew(struct claimer *c, json_object *refs, renew_cb done);

/* Whether row level security hides every outbox row from the connection's role (RLS on,
 * no policy, neither the owner nor BYPASSRLS, SELECT granted: without it the claim's own
 * "permission denied" names the fault): then every claim finds nothing, without an
 * error. done gets the answer and the role (not called if the question failed). */
typedef void (*hidden_cb)(void *ud, bool hidden, const char *role);
void claim_check_hidden(struct claimer *c, hidden_cb done);

/* Frees a contact handed out by a claim (not NULL). */
void row_free(struct row *row);

#endif

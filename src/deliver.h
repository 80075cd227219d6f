/* deliver: the jobs a worker holds, and their HTTP requests.
 *
 * Claimed rows become jobs (deliver_take): plain upserts share one import request of up
 * to --batch-size rows (one create each in --mode single), an email change or a deletion
 * gets a job of its own. Jobs wait in a queue and start while a request slot is free
 * (--concurrency) and the gate lets them go; when it does not, a timer asks again. When a
 * request ends, outcome.c decides what it means for the rows.
 *
 * Owned by the relay; borrows the HTTP client, the gate and the completer. `changed`
 * runs (from the loop) whenever rows were completed or a slot came free. */
#ifndef SENDRY_DELIVER_H
#define SENDRY_DELIVER_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>
#include <json-c/json.h>

#include "claim.h"
#include "complete.h"
#include "config.h"
#include "gate.h"
#include "http.h"

struct deliverer;

struct deliverer *deliver_new(struct ev_loop *loop, const struct config *cfg, struct http *http,
                              struct gate *gate, struct completer *complete,
                              void (*changed)(void *ud), void *ud);
/* Frees the waiting jobs without completing them (their rows come back by lease). */
void deliver_free(struct deliverer *d);

/* Takes the rows of a claim (the batch's rows array is left empty). */
void deliver_take(struct deliverer *d, struct claim_batch *batch);
/* Starts waiting jobs while a slot is free and the gate lets them go. */
void deliver_pump(struct deliverer *d);

bool deliver_waiting(const struct deliverer *d);     /* jobs are queued */
size_t deliver_waiting_rows(const struct deliverer *d);   /* contacts in the queued jobs */
int deliver_in_flight(const struct deliverer *d);    /* requests under way */

/* Draining: no new request starts; waiting rows and the next steps of moves and
 * deletions are given back (pending, attempt not counted). */
void deliver_drain(struct deliverer *d);
/* Gives every waiting row back now. */
void deliver_release_waiting(struct deliverer *d);

/* Appends {"id", "claim_id"} of every row held since before `before` (gate clock) to
 * `refs`, and counts them as renewed now. */
void deliver_add_held(struct deliverer *d, double before, double now, json_object *refs);
/* Rows whose lease another claim took: waiting ones are dropped without a word to the
 * database (the row is the other claim's now); in flight ones end as usual, and their
 * outcome is refused by the completion statement. */
void deliver_forget(struct deliverer *d, const long long *ids, size_t n);

/* Appends the ids of every row held here (waiting or in flight) to `ids`. */
void deliver_add_ids(const struct deliverer *d, json_object *ids);

#endif

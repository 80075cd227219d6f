/* budget: the API key's request budget, shared through PostgreSQL by every worker that
 * uses the key, so that N workers together stay under --rate (Sendry's limit is per key).
 *
 * A token bucket in public.sendry_rate_budget, on the database's clock: the worker takes
 * a few requests at a time (sendry_rate_take) into a local pool and spends them; bulk
 * work leaves the live share in the shared bucket, so a sign-up on any worker finds a
 * token. A 429 that any worker meets pauses all of them (sendry_rate_pause). The row is
 * named by a fingerprint of the key (a SHA-256 prefix), never the key.
 *
 * Owned by the relay and asked by the gate; grants are queries on the aux connection
 * (borrowed), and `granted` runs when one answered (so the relay can try again). */
#ifndef SENDRY_BUDGET_H
#define SENDRY_BUDGET_H

#include <stdbool.h>

#include <ev.h>

#include "db.h"

struct budget;

/* rate requests a second, burst, and the tokens bulk asks leave behind (the live share). */
struct budget *budget_new(struct ev_loop *loop, struct db *db, const char *api_key, double rate,
                          double burst, double reserve, void (*granted)(void *ud), void *ud);
void budget_free(struct budget *b);

/* One request now: 0 if it may go (a token taken, unless peek), else the seconds after
 * which asking again makes sense (a grant has been asked for; `granted` will run). */
double budget_take(struct budget *b, bool bulk, bool peek);
/* Seconds the shared bucket says every worker must still wait (a 429 elsewhere), 0 if none. */
double budget_paused(const struct budget *b);
/* Shares a 429's pause with the other workers of the key. */
void budget_pause(struct budget *b, double seconds);
/* A new API key: its own bucket. */
void budget_set_key(struct budget *b, const char *api_key);

#endif

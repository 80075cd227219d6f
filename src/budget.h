/* budget: the API key's request budget, shared through PostgreSQL by every worker that
 * uses the key, so that N workers together stay under --rate (Sendry's limit is per key).
 *
 * A token bucket in public.sendry_rate_budget, on the database's clock: the worker takes
 * a few requests at a time (sendry_rate_take) into a local pool and spends them; bulk
 * work leaves the live share in the shared bucket, so a sign-up on any worker finds a
 * token. A 429 that any worker meets pauses all of them (sendry_rate_pause). The row is
 * named by a fingerprint of the key (a SHA-256 prefix), never the key.
 *
 * The burst fits the provider's window (--rate-window W): the provider allows N = rate x W
 * requests in any W seconds. The bucket holds at most `burst` tokens (BUDGET_BURST) and
 * fills at N - burst over W + BUDGET_MARGIN + BUDGET_HOLD seconds; a token not spent
 * within BUDGET_HOLD of its grant is dropped, and a request that went out without a token
 * (the startup check of the audience) is paid for at the next grant. So the requests of
 * every worker of the key that reach the provider within any W seconds, even with up to
 * BUDGET_MARGIN of network jitter, were granted within W + margin + hold seconds: at
 * most burst + (N - burst) = N.
 *
 * Owned by the relay and asked by the gate; grants are queries on the relay's connection
 * (borrowed: claims and completions are short, while the aux connection carries webhooks,
 * reconciliation and pruning, which a live sign-up must not wait behind), and `granted`
 * runs when one answered (so the relay can try again). */
#ifndef SENDRY_BUDGET_H
#define SENDRY_BUDGET_H

#include <stdbool.h>

#include <ev.h>

#include "db.h"

struct budget;

#define BUDGET_HOLD 0.25     /* seconds a granted token may wait in the pool */
#define BUDGET_MARGIN 0.05   /* of the window: network jitter the budget leaves room for */

/* The bucket's size for `rate`: at least 2 (a live token besides the bulk ones). */
double budget_burst(double rate);
/* The rate the shared bucket fills at, so that no `window` seconds carry more than
 * rate x window requests (see above). */
double budget_fill_rate(double rate, double window);

/* rate requests a second at most over any `window` seconds, and the tokens bulk asks
 * leave behind (the live share). */
struct budget *budget_new(struct ev_loop *loop, struct db *db, const char *api_key, double rate,
                          double window, double reserve, void (*granted)(void *ud), void *ud);
void budget_free(struct budget *b);

/* One request now: 0 if it may go (a token taken), else the seconds after which asking
 * again makes sense (a grant has been asked for; `granted` will run). peek: only whether
 * the pool holds a token; nothing is taken or asked for. */
double budget_take(struct budget *b, bool bulk, bool peek);
/* A request went out without a token (the startup check): paid at the next grant. */
void budget_spent(struct budget *b);
/* The connection is up: pays what is owed now. */
void budget_connected(struct budget *b);
/* Seconds the shared bucket says every worker must still wait (a 429 elsewhere), 0 if none. */
double budget_paused(const struct budget *b);
/* Shares a 429's pause with the other workers of the key. */
void budget_pause(struct budget *b, double seconds);
/* A new API key: its own bucket. */
void budget_set_key(struct budget *b, const char *api_key);

#endif

/* gate: "may I send now?", one per worker, asked by delivery and reconciliation alike.
 *
 * Owns the token bucket (--rate; or the key's budget shared with other workers through
 * the database, budget.h), the 429 pause and the stopped state (401/402/403 or an
 * unknown audience) with its probes. Live requests (changes made by users now) may take
 * any token; bulk requests (backfills, reconciliation) leave a share of the bucket
 * (--live-share) to them, so a live change never waits for a token behind a backfill.
 * While stopped, one request per probe period may go, the wait doubling while the answer
 * stays the same: from 60 s to 15 min for a refusal (401/402/403, the audience gone),
 * from 5 s to 60 s for a cause that may pass by itself (an outage: GATE_OUTAGE_AFTER
 * transient failures in a row, network errors, 408 or 5xx, across every request; a 404
 * that the audience re-check contradicts). Every pause, from any path, is capped at
 * GATE_PAUSE_CAP.
 *
 * Time is a monotonic clock (CLOCK_MONOTONIC unless the caller injects one, as the unit
 * tests do): a wall-clock step backwards never stops sending and a step forwards never
 * cuts a pause short. An injected clock that steps back is carried on from its last
 * reading, so even then nothing waits out the step. Pure bookkeeping: no timers and no I/O; callers arm their own
 * timers from the waits it returns. Owned by the relay; deliver.c and reconcile.c borrow it. */
#ifndef SENDRY_GATE_H
#define SENDRY_GATE_H

#include <stdbool.h>

#define GATE_PAUSE_CAP 3600.0      /* the longest 429 pause, whatever Retry-After says */
#define GATE_PROBE_FIRST 60.0      /* first wait after a refusal */
#define GATE_PROBE_MAX 900.0       /* longest wait between probes */
#define GATE_PROBE_SOON 5.0        /* first wait when the cause may pass by itself */
#define GATE_PROBE_SOON_MAX 60.0   /* longest wait between such probes */
#define GATE_OUTAGE_AFTER 3        /* transient failures in a row that stop sending */

enum gate_state {
    GATE_OPEN,      /* send when the bucket has a token */
    GATE_PAUSED,    /* a 429: nothing goes until the pause ends */
    GATE_STOPPED    /* the key or the audience was refused: only probes go */
};

/* Who asks: live work may use every token, bulk work leaves the live share. */
enum gate_class { GATE_LIVE, GATE_BULK };

struct budget;

/* Seconds on a monotonic clock. */
typedef double (*gate_clock_fn)(void *ud);

struct gate;

/* rate: requests per second (0 = unlimited), burst: bucket size, live_share: the part
 * of the bucket (0..1) bulk requests leave for live ones. clock NULL: monotonic. */
struct gate *gate_new(double rate, double burst, double live_share, gate_clock_fn clock,
                      void *clock_ud);
void gate_free(struct gate *g);
/* Takes tokens from the key's shared budget (budget.h) instead of the local bucket; the
 * budget is borrowed. A pause the budget reports (a 429 another worker met) pauses here. */
void gate_use_budget(struct gate *g, struct budget *b);
/* The tokens bulk requests leave to live ones. */
double gate_reserve(const struct gate *g);

double gate_now(struct gate *g);   /* monotonic seconds; never smaller than before */
enum gate_state gate_state(struct gate *g);   /* a pause that ended is OPEN again */

/* Asks to send one request now. 0: go (a token is taken; while stopped this request is
 * the period's probe). > 0: the seconds after which asking again makes sense. */
double gate_ask(struct gate *g, enum gate_class c);
/* A request went out without asking (the startup check of the audience): the bucket or
 * the key's budget counts it all the same. */
void gate_spent(struct gate *g);
/* The same question without taking anything: 0 if a request could go now. */
double gate_peek(struct gate *g, enum gate_class c);

/* A 429: nothing goes for `seconds` (a longer pause already running is kept). When the
 * answer named no delay (seconds < 0), or one beyond GATE_PAUSE_CAP (an absurd value,
 * NaN and infinity included): exponential backoff over the 429s in a row, from
 * backoff_base up to the smaller of backoff_cap and GATE_PAUSE_CAP (gate_set_backoff),
 * jittered by `unit` in [0, 1). Returns the pause applied. */
double gate_pause(struct gate *g, double seconds, double unit);
void gate_set_backoff(struct gate *g, double base, double cap);

/* A refusal that retrying cannot fix. `cause` is copied (no secrets in it). A request
 * started (gate_now) before the current stop began says nothing new and is ignored;
 * otherwise the next probe waits GATE_PROBE_FIRST, doubling up to GATE_PROBE_MAX.
 * Returns true if this call changed something. */
bool gate_stop(struct gate *g, const char *cause, double request_started);
/* A request was accepted: leaves the stopped state and ends the run of 429s. Returns
 * true if it was stopped. */
bool gate_accepted(struct gate *g);

/* A request failed transiently (network error, 408, 5xx) with `cause`. Returns true when
 * the provider counts as down across the board, so the failure is not the row's own (its
 * attempt is not counted): GATE_OUTAGE_AFTER such failures in a row (no other answer in
 * between), or any while sending is stopped. The one that completes the run stops
 * sending (an outage: the first probe after GATE_PROBE_SOON, then doubling); a probe that
 * fails again doubles the wait. */
bool gate_transient(struct gate *g, const char *cause, double request_started);
/* Any answer that is not a transient failure (the provider is up): ends the run, and
 * an outage stop (returns true if it did). */
bool gate_answered(struct gate *g);
/* Stopped for an outage (may pass by itself), not for a refusal. */
bool gate_outage(const struct gate *g);
/* The current stop may pass by itself (a 404 the re-check contradicts): the next probe
 * within GATE_PROBE_SOON, unless the wait is already on that scale. */
void gate_probe_soon(struct gate *g);

/* A new key to try (a rotation): while stopped, the next request is a probe now, and
 * refusals of requests that started before this say nothing about the new key. */
void gate_probe_now(struct gate *g);

const char *gate_cause(const struct gate *g);   /* "" unless stopped */
void gate_set_cause(struct gate *g, const char *cause);   /* a better word for the stop */
double gate_probe_in(struct gate *g);             /* seconds to the next probe, if stopped */

#endif

#include "gate.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backoff.h"
#include "budget.h"
#include "xalloc.h"

struct gate {
    gate_clock_fn clock;
    void *clock_ud;
    double clock_last, clock_skew; /* a clock that steps back is carried on from its last reading */
    struct token_bucket bucket;
    struct budget *budget;     /* shared with other workers, or NULL: the local bucket */
    double reserve;            /* tokens bulk requests leave for live ones */
    double pause_until;        /* GATE_PAUSED until then */
    int rate_limited_streak;   /* 429s in a row */
    double backoff_base, backoff_cap;
    bool stopped;
    bool soon;                 /* the stop may pass by itself: probes from GATE_PROBE_SOON */
    bool outage;               /* stopped by transient failures across the board */
    int transient_streak;      /* transient failures in a row */
    double stop_since;         /* when the current refusal was recorded */
    double probe_at;           /* the next probe may go then */
    double probe_wait;         /* the current wait between probes */
    char cause[768];
};

static double monotonic(void *ud)
{
    (void)ud;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct gate *gate_new(double rate, double burst, double live_share, gate_clock_fn clock,
                      void *clock_ud)
{
    struct gate *g = xcalloc(1, sizeof *g);
    g->clock = clock ? clock : monotonic;
    g->clock_ud = clock_ud;
    g->clock_last = g->clock(clock_ud);
    bucket_init(&g->bucket, rate, burst, gate_now(g));
    g->reserve = live_share > 0 ? live_share * g->bucket.burst : 0;
    if (live_share > 0 && g->reserve < 1)
        g->reserve = 1;
    g->backoff_base = 1;
    g->backoff_cap = 60;
    return g;
}

void gate_use_budget(struct gate *g, struct budget *b)
{
    g->budget = b;
}

double gate_reserve(const struct gate *g)
{
    return g->reserve;
}

void gate_free(struct gate *g)
{
    free(g);
}

/* Never backwards: CLOCK_MONOTONIC cannot step back, and an injected clock that does is
 * taken as standing still, so no pause, probe or token waits out the step. */
double gate_now(struct gate *g)
{
    double raw = g->clock(g->clock_ud);
    if (raw < g->clock_last)
        g->clock_skew += g->clock_last - raw;
    g->clock_last = raw;
    return raw + g->clock_skew;
}

enum gate_state gate_state(struct gate *g)
{
    if (g->stopped)
        return GATE_STOPPED;
    return gate_now(g) < g->pause_until ? GATE_PAUSED : GATE_OPEN;
}

/* A token from the shared budget or the local bucket: 0, or the seconds to wait. */
static double token(struct gate *g, enum gate_class c, bool take, double now)
{
    if (g->budget) {
        double paused = budget_paused(g->budget);
        if (paused > 0 && now + paused > g->pause_until)
            g->pause_until = now + paused;
        return paused > 0 ? paused : budget_take(g->budget, c == GATE_BULK, !take);
    }
    struct token_bucket copy = g->bucket;
    return bucket_take_above(take ? &g->bucket : &copy, now, c == GATE_BULK ? g->reserve : 0);
}

static double wait_of(struct gate *g, enum gate_class c, bool take)
{
    double now = gate_now(g);
    if (now < g->pause_until)
        return g->pause_until - now;
    if (g->stopped && now < g->probe_at)
        return g->probe_at - now;
    double wait = token(g, c, take, now);
    if (wait > 0 || !take)
        return wait;
    if (g->stopped)
        g->probe_at = now + g->probe_wait;   /* one probe per period */
    return 0;
}

double gate_ask(struct gate *g, enum gate_class c)
{
    return wait_of(g, c, true);
}

void gate_spent(struct gate *g)
{
    if (g->budget)
        budget_spent(g->budget);
    else if (g->bucket.rate > 0)
        g->bucket.tokens -= 1;   /* may go below 0: the next token waits longer */
}

double gate_peek(struct gate *g, enum gate_class c)
{
    return wait_of(g, c, false);
}

void gate_set_backoff(struct gate *g, double base, double cap)
{
    g->backoff_base = base;
    g->backoff_cap = cap;
}

double gate_pause(struct gate *g, double seconds, double unit)
{
    g->rate_limited_streak++;
    g->transient_streak = 0;   /* an answer: the provider is up */
    /* No delay named, or one no limit of Sendry's needs (NaN included): back off. */
    if (!(seconds >= 0 && seconds <= GATE_PAUSE_CAP)) {
        double cap = g->backoff_cap < GATE_PAUSE_CAP ? g->backoff_cap : GATE_PAUSE_CAP;
        seconds = backoff_delay(g->backoff_base, cap, g->rate_limited_streak, 0.5 + unit / 2);
    }
    double until = gate_now(g) + seconds;
    if (until > g->pause_until)
        g->pause_until = until;
    if (g->budget)
        budget_pause(g->budget, seconds);   /* the other workers of the key wait too */
    return seconds;
}

/* Stops (or, already stopped for the same kind of cause, doubles the wait). */
static bool stop(struct gate *g, const char *cause, double request_started, bool soon)
{
    double now = gate_now(g);
    if (g->stopped && request_started < g->stop_since)
        return false;
    double first = soon ? GATE_PROBE_SOON : GATE_PROBE_FIRST;
    double max = soon ? GATE_PROBE_SOON_MAX : GATE_PROBE_MAX;
    if (!g->stopped || g->soon != soon)
        g->probe_wait = first;
    else
        g->probe_wait = g->probe_wait * 2 > max ? max : g->probe_wait * 2;
    g->stopped = true;
    g->soon = g->outage = soon;
    g->stop_since = now;
    g->probe_at = now + g->probe_wait;
    snprintf(g->cause, sizeof g->cause, "%s", cause);
    return true;
}

bool gate_stop(struct gate *g, const char *cause, double request_started)
{
    g->transient_streak = 0;   /* an answer: the provider is up */
    return stop(g, cause, request_started, false);
}

bool gate_transient(struct gate *g, const char *cause, double request_started)
{
    if (g->stopped) {
        if (g->outage)
            stop(g, cause, request_started, true);   /* a probe failed again: wait longer */
        return true;
    }
    if (++g->transient_streak < GATE_OUTAGE_AFTER)
        return false;
    stop(g, cause, request_started, true);
    return true;
}

bool gate_answered(struct gate *g)
{
    g->transient_streak = 0;
    return g->stopped && g->outage && gate_accepted(g);
}

bool gate_outage(const struct gate *g)
{
    return g->stopped && g->outage;
}

void gate_probe_soon(struct gate *g)
{
    if (!g->stopped || g->soon)
        return;
    g->soon = true;
    g->probe_wait = GATE_PROBE_SOON;
    if (g->probe_at > g->stop_since + GATE_PROBE_SOON)
        g->probe_at = g->stop_since + GATE_PROBE_SOON;
}

bool gate_accepted(struct gate *g)
{
    bool was = g->stopped;
    g->stopped = g->soon = g->outage = false;
    g->rate_limited_streak = g->transient_streak = 0;
    g->cause[0] = '\0';
    return was;
}

void gate_probe_now(struct gate *g)
{
    if (!g->stopped)
        return;
    g->stop_since = g->probe_at = gate_now(g);
    g->probe_wait = g->soon ? GATE_PROBE_SOON : GATE_PROBE_FIRST;
}

const char *gate_cause(const struct gate *g)
{
    return g->stopped ? g->cause : "";
}

void gate_set_cause(struct gate *g, const char *cause)
{
    if (g->stopped)
        snprintf(g->cause, sizeof g->cause, "%s", cause);
}

double gate_probe_in(struct gate *g)
{
    double in = g->probe_at - gate_now(g);
    return g->stopped && in > 0 ? in : 0;
}

/* backoff: retry delays and request pacing. Pure functions over the caller's state;
 * no clock reads or randomness of their own (callers pass both), so tests are exact. */
#ifndef SENDRY_BACKOFF_H
#define SENDRY_BACKOFF_H

#include <stdint.h>

/* Exponential backoff with full jitter: a delay in [0, min(cap, base * 2^(attempt-1))],
 * chosen by `unit`, a random number in [0, 1). attempt counts from 1. */
double backoff_delay(double base, double cap, int attempt, double unit);

/* A token bucket: `rate` tokens per second, holding at most `burst`. rate 0 = unlimited. */
struct token_bucket {
    double rate;
    double burst;
    double tokens;
    double updated;     /* time of the last refill, seconds on the caller's clock */
};

void bucket_init(struct token_bucket *b, double rate, double burst, double now);
/* Takes one token if there is one and returns 0; else returns the seconds until one
 * will be there (and takes nothing). */
double bucket_take(struct token_bucket *b, double now);
/* Takes one token only if at least `floor` tokens stay behind, and returns 0; else
 * returns the seconds until that will be so (and takes nothing). */
double bucket_take_above(struct token_bucket *b, double now, double floor);
/* Tokens available now, without taking any. */
int bucket_available(struct token_bucket *b, double now);

/* A random number in [0, 1) from a small xorshift generator seeded by the caller. */
double rand_unit(uint64_t *state);
/* A seed for rand_unit, different for every process and every `salt` (an object's
 * address): the time, the pid and the salt mixed (splitmix64), so that workers started
 * together, and the two connections of one worker, never back off in lockstep. */
uint64_t rand_seed(const void *salt);

#endif

#include "backoff.h"

#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include <math.h>

double backoff_delay(double base, double cap, int attempt, double unit)
{
    if (attempt < 1)
        attempt = 1;
    /* 2^(attempt-1) overflows nothing we care about once it is past the cap. */
    double ceiling = attempt > 60 ? cap : fmin(cap, base * ldexp(1.0, attempt - 1));
    if (unit < 0)
        unit = 0;
    if (unit >= 1)
        unit = 0.999999;
    return ceiling * unit;
}

/* A clock that went backwards restarts the count from now: never a stall. */
static void refill(struct token_bucket *b, double now)
{
    if (now > b->updated)
        b->tokens = fmin(b->burst, b->tokens + (now - b->updated) * b->rate);
    b->updated = now;
}

void bucket_init(struct token_bucket *b, double rate, double burst, double now)
{
    b->rate = rate;
    b->burst = burst < 1 ? 1 : burst;
    b->tokens = b->burst;
    b->updated = now;
}

double bucket_take(struct token_bucket *b, double now)
{
    return bucket_take_above(b, now, 0);
}

double bucket_take_above(struct token_bucket *b, double now, double floor)
{
    if (b->rate <= 0)
        return 0;
    if (floor > b->burst - 1)
        floor = b->burst - 1;
    if (floor < 0)
        floor = 0;
    refill(b, now);
    if (b->tokens >= 1 + floor) {
        b->tokens -= 1;
        return 0;
    }
    return (1 + floor - b->tokens) / b->rate;
}

int bucket_available(struct token_bucket *b, double now)
{
    if (b->rate <= 0)
        return 1 << 30;
    refill(b, now);
    return (int)b->tokens;
}

uint64_t rand_seed(const void *salt)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t z = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    z ^= (uint64_t)getpid() << 40 ^ (uint64_t)(uintptr_t)salt;
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z ? z : 1;
}

double rand_unit(uint64_t *state)
{
    uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return (double)(x >> 11) / 9007199254740992.0; /* 2^53 */
}

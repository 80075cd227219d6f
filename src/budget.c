#include "budget.h"

#include <math.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "xalloc.h"

static const char TAKE_SQL[] = "SELECT granted, wait FROM public.sendry_rate_take($1, $2, $3, $4, $5)";
static const char PAUSE_SQL[] = "SELECT public.sendry_rate_pause($1, $2)";

struct budget {
    struct ev_loop *loop;
    struct db *db;
    char key[32];          /* the fingerprint */
    double rate, burst, reserve;   /* rate: the bucket's fill rate */
    int want;              /* requests asked for at a time */
    int tokens;            /* the local pool */
    double granted_at;     /* monotonic: when the pool was granted (it lasts BUDGET_HOLD) */
    int debt;              /* requests sent without a token, to pay at the next grant */
    bool asking;
    double asked_floor;    /* the tokens the ask in flight leaves behind */
    double ask_after;      /* monotonic: the bucket said wait until then */
    double paused_until;   /* monotonic: a pause set by any worker */
    void (*granted)(void *ud);
    void *ud;
};

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void budget_set_key(struct budget *b, const char *api_key)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)api_key, strlen(api_key), md);
    for (int i = 0; i < 8; i++)
        snprintf(b->key + 2 * i, sizeof b->key - 2 * i, "%02x", md[i]);
    b->tokens = 0;
}

double budget_burst(double rate)
{
    return fmax(2, rate / 2);
}

double budget_fill_rate(double rate, double window)
{
    double n = rate * window, burst = budget_burst(rate);
    double fill = (n - burst) / (window * (1 + BUDGET_MARGIN) + BUDGET_HOLD);
    /* A window too short for the burst: the rate alone, spread over the margin. */
    return fill > 0 ? fill : rate / (1 + BUDGET_MARGIN);
}

struct budget *budget_new(struct ev_loop *loop, struct db *db, const char *api_key, double rate,
                          double window, double reserve, void (*granted)(void *ud), void *ud)
{
    struct budget *b = xcalloc(1, sizeof *b);
    *b = (struct budget){.loop = loop, .db = db, .rate = budget_fill_rate(rate, window),
                         .burst = budget_burst(rate), .reserve = reserve,
                         .granted = granted, .ud = ud};
    /* A few requests a grant: a fifth of a second's worth (less than BUDGET_HOLD), so
     * that several workers share the bucket finely and little is left unspent in a pool. */
    b->want = (int)fmax(1, floor(b->rate / 5));
    budget_set_key(b, api_key);
    return b;
}

void budget_free(struct budget *b)
{
    free(b);   /* NULL is fine */
}

static void on_granted(PGresult *res, void *arg)
{
    struct budget *b = arg;
    b->asking = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        if (res)
            log_warn("budget: taking requests from the shared budget failed: %s", PQresultErrorMessage(res));
        b->ask_after = mono() + 1;
    } else {
        int granted = atoi(PQgetvalue(res, 0, 0));
        double wait = atof(PQgetvalue(res, 0, 1));
        int paid = granted < b->debt ? granted : b->debt;
        b->debt -= paid;
        b->tokens = granted - paid;   /* a pool left over is older than its hold by now */
        b->granted_at = mono();
        b->ask_after = granted ? 0 : mono() + wait;
        /* Nothing granted and longer to wait than a token (above the floor a bulk ask
         * leaves) takes: a pause (a 429). A bulk ask's wait is no pause for live work. */
        b->paused_until = !granted && wait > (1.5 + b->asked_floor) / b->rate ? mono() + wait : 0;
    }
    b->granted(b->ud);
}

static void ask(struct budget *b, bool bulk)
{
    if (b->asking || !db_connected(b->db) || mono() < b->ask_after)
        return;
    char rate[32], burst[32], want[16], floor_[32];
    snprintf(rate, sizeof rate, "%g", b->rate);
    snprintf(burst, sizeof burst, "%g", b->burst);
    snprintf(want, sizeof want, "%d", b->want + b->debt);
    b->asked_floor = bulk ? b->reserve : 0;
    snprintf(floor_, sizeof floor_, "%g", b->asked_floor);
    const char *params[5] = {b->key, rate, burst, want, floor_};
    b->asking = true;
    db_query(b->db, TAKE_SQL, 5, params, on_granted, b);
}

/* The debt is paid as bulk work asks: it leaves the live share. */
void budget_spent(struct budget *b)
{
    b->debt++;
    ask(b, true);
}

void budget_connected(struct budget *b)
{
    if (b->debt)
        ask(b, true);
}

double budget_take(struct budget *b, bool bulk, bool peek)
{
    if (b->tokens > 0 && mono() - b->granted_at > BUDGET_HOLD)
        b->tokens = 0;   /* held too long: spent now, it could exceed the window */
    if (b->tokens > 0) {
        if (!peek)
            b->tokens--;
        return 0;
    }
    if (!peek)
        ask(b, bulk);   /* a question takes nothing: a token it took could go unspent */
    double now = mono(), later = b->ask_after > now ? b->ask_after - now : 1.0 / b->rate;
    return later > 0.001 ? later : 0.001;
}

double budget_paused(const struct budget *b)
{
    double left = b->paused_until - mono();
    return left > 0 ? left : 0;
}

void budget_pause(struct budget *b, double seconds)
{
    if (!db_connected(b->db))
        return;
    char s[32];
    snprintf(s, sizeof s, "%g", seconds);
    const char *params[2] = {b->key, s};
    db_query(b->db, PAUSE_SQL, 2, params, NULL, NULL);
    b->tokens = 0;   /* this worker's pool is not to be spent during the pause either */
}

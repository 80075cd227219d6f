#include "deliver.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "audience.h"
#include "backoff.h"
#include "job.h"
#include "list.h"
#include "log.h"
#include "metrics.h"
#include "outcome.h"
#include "xalloc.h"

struct deliverer {
    struct ev_loop *loop;
    const struct config *cfg;
    struct http *http;
    struct gate *gate;
    struct completer *complete;
    void (*changed)(void *ud);
    void *ud;
    uint64_t rng;
    bool draining;
    bool rechecking;           /* GET /v1/audiences/{id} after a write's 404 is under way */
    struct queue {
        struct job *head, *tail;
    } live, bulk;              /* waiting, in order: live jobs go first */
    struct job *inflight;      /* requests under way */
    int in_flight;
    ev_timer wait_timer;       /* the gate said "not yet" */
};

static void on_wait_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct deliverer *d = w->data;
    deliver_pump(d);
}

struct deliverer *deliver_new(struct ev_loop *loop, const struct config *cfg, struct http *http,
                              struct gate *gate, struct completer *complete,
                              void (*changed)(void *ud), void *ud)
{
    struct deliverer *d = xcalloc(1, sizeof *d);
    *d = (struct deliverer){.loop = loop, .cfg = cfg, .http = http, .gate = gate,
                            .complete = complete, .changed = changed, .ud = ud};
    d->rng = rand_seed(d);
    ev_init(&d->wait_timer, on_wait_timer);
    d->wait_timer.data = d;
    return d;
}

static struct job *pop_front(struct queue *q)
{
    struct job *job = q->head;
    q->head = job->next;
    if (!q->head)
        q->tail = NULL;
    job->next = NULL;
    return job;
}

static struct queue *queue_of(struct deliverer *d, const struct job *job)
{
    return job->live ? &d->live : &d->bulk;
}

static void push_back(struct deliverer *d, struct job *job)
{
    struct queue *q = queue_of(d, job);
    job->next = NULL;
    if (q->tail)
        q->tail->next = job;
    else
        q->head = job;
    q->tail = job;
}

static void push_front(struct deliverer *d, struct job *job)
{
    struct queue *q = queue_of(d, job);
    job->next = q->head;
    q->head = job;
    if (!q->tail)
        q->tail = job;
}

void deliver_free(struct deliverer *d)
{
    if (!d)
        return;
    ev_timer_stop(d->loop, &d->wait_timer);
    while (d->live.head)
        job_free(pop_front(&d->live));
    while (d->bulk.head)
        job_free(pop_front(&d->bulk));
    free(d);
}

/* The shared request, waiting to fill, of contacts of one class in one audience. */
struct filling {
    struct job *job;
    const char *audience;
};

static struct job *shared_job(struct deliverer *d, struct filling *f, size_t *nf, const struct row *row)
{
    size_t limit = d->cfg->mode == MODE_IMPORT ? (size_t)d->cfg->batch_size : 1;
    const char *audience = row->naudiences ? row->audiences[0] : NULL;
    for (size_t i = 0; i < *nf; i++) {
        bool same = f[i].job->live == row->live &&
                    (audience && f[i].audience ? strcmp(audience, f[i].audience) == 0 : audience == f[i].audience);
        if (!same)
            continue;
        if (f[i].job->n < limit)
            return f[i].job;
        push_back(d, f[i].job);
        f[i] = f[--*nf];
        break;
    }
    struct job *job = job_new(d->cfg->mode == MODE_IMPORT ? REQ_IMPORT : REQ_CREATE, limit);
    job->shared = true;
    job_set_audience(job, audience);
    job->live = row->live;
    f[(*nf)++] = (struct filling){job, audience};
    return job;
}

static void follow_chains(struct deliverer *d, struct outcome_env *env);

/* A claim's contacts, queued: those the render settled without a request are completed
 * at once (the next link of their chain queued instead); the others join this claim's
 * shared imports, or a job of their own. */
void deliver_take(struct deliverer *d, struct claim_batch *batch)
{
    struct filling *f = xcalloc(batch->n ? batch->n : 1, sizeof *f);
    size_t nf = 0;
    struct outcome_env env = {.cfg = d->cfg, .gate = d->gate, .complete = d->complete, .rng = &d->rng};
    for (size_t i = 0; i < batch->n; i++) {
        struct row *row = batch->rows[i];
        if (row->render == RENDER_SAME || row->render == RENDER_GONE || row->render == RENDER_FAILED) {
            outcome_settle_unsent(&env, row);
            continue;
        }
        struct job *own = job_for_row(row, d->cfg);
        if (own)
            push_back(d, own);
        else
            job_add(shared_job(d, f, &nf, row), row);
    }
    for (size_t i = 0; i < nf; i++)
        push_back(d, f[i].job);
    free(f);
    follow_chains(d, &env);
    batch->n = 0;
}

static void link_in_flight(struct deliverer *d, struct job *job)
{
    LIST_PUSH(d->inflight, job);
    d->in_flight++;
}

static void unlink_in_flight(struct deliverer *d, struct job *job)
{
    LIST_REMOVE(d->inflight, job);
    d->in_flight--;
}

static void release_job(struct deliverer *d, struct job *job)
{
    for (size_t i = 0; i < job->n; i++)
        complete_contact(d->complete, job->rows[i], RESULT_RELEASE, 0, NULL, 0);
    job_free(job);
}

static void on_http_done(struct http_request *req, void *arg);

/* Starts one job's request; a request that cannot even start counts as a failed attempt. */
static void start_job(struct deliverer *d, struct job *job)
{
    struct http_request *req = job_request(job, d->cfg);
    req->done = on_http_done;
    req->arg = job;
    job->owner = d;
    job->started_at = gate_now(d->gate);
    if (http_start(d->http, req)) {
        link_in_flight(d, job);
        return;
    }
    http_request_free(req);
    log_error("could not start a request for %zu rows", job->n);
    for (size_t i = 0; i < job->n; i++)
        complete_contact(d->complete, job->rows[i], RESULT_RETRY, 0, "worker: could not start request",
                     backoff_delay(d->cfg->backoff_base, d->cfg->backoff_cap, job->rows[i]->attempts,
                                   rand_unit(&d->rng)));
    job_free(job);
    d->changed(d->ud);
}

/* The next job to start: a live one if any (it may use every token), else a bulk one. */
static struct queue *next_queue(struct deliverer *d, enum gate_class *c)
{
    *c = d->live.head ? GATE_LIVE : GATE_BULK;
    return d->live.head ? &d->live : d->bulk.head ? &d->bulk : NULL;
}

static bool mergeable(const struct job *job)
{
    return job->shared && !job->split && job->req == REQ_IMPORT;
}

static bool same_audience(const struct job *a, const struct job *b)
{
    return a->audience && b->audience ? strcmp(a->audience, b->audience) == 0 : a->audience == b->audience;
}

/* Shared imports queued one behind the other (live changes arrive a claim at a time)
 * go out as one request, up to a batch: a burst of sign-ups costs one token, not one
 * each. Their contacts are distinct: a claim skips a contact with a row held here. The
 * halves of a batch split to find a bad row stay apart. */
static void absorb(struct deliverer *d, struct queue *q, struct job *job)
{
    size_t limit = (size_t)d->cfg->batch_size;
    if (!mergeable(job))
        return;
    while (q->head && mergeable(q->head) && same_audience(job, q->head) && job->n + q->head->n <= limit) {
        struct job *next = pop_front(q);
        for (size_t i = 0; i < next->n; i++)
            job_add(job, next->rows[i]);
        next->n = 0;
        job_free(next);
    }
}

void deliver_pump(struct deliverer *d)
{
    struct queue *q;
    enum gate_class c;
    while ((q = next_queue(d, &c)) && !d->draining && d->in_flight < d->cfg->concurrency) {
        double wait = gate_ask(d->gate, c);
        if (wait > 0) {
            if (!ev_is_active(&d->wait_timer) || ev_timer_remaining(d->loop, &d->wait_timer) > wait) {
                ev_timer_stop(d->loop, &d->wait_timer);
                ev_timer_set(&d->wait_timer, wait, 0.);
                ev_timer_start(d->loop, &d->wait_timer);
            }
            return;
        }
        struct job *job = pop_front(q);
        absorb(d, q, job);
        start_job(d, job);
    }
}

/* The next links of chains whose row before them was settled: each its own job, first
 * in its queue (its user's rows are held; it is part of a claim already under way). A
 * link after the first is an event or a deletion (claim.c's chain_of): never a shared
 * import. */
static void follow_chains(struct deliverer *d, struct outcome_env *env)
{
    for (size_t i = 0; i < env->nnext; i++) {
        struct row *row = env->next[i];
        assert(row->op == OP_EVENT || row->op == OP_DELETE);
        struct job *job = job_for_row(row, d->cfg);
        assert(job);
        if (d->draining)
            release_job(d, job);
        else
            push_front(d, job);
    }
    free(env->next);
}

static void on_rechecked(void *ud, enum audience_verdict v, long status)
{
    (void)v;
    struct deliverer *d = ud;
    d->rechecking = false;
    outcome_audience_rechecked(d->gate, d->cfg, status);
    d->changed(d->ud);
}

static void on_http_done(struct http_request *req, void *arg)
{
    struct job *job = arg;
    struct deliverer *d = job->owner;
    unlink_in_flight(d, job);
    bool aborted = !req->transport_ok && strcmp(req->error, "aborted") == 0;
    if (!aborted)
        metrics_http(req->transport_ok ? req->status : 0);
    struct outcome_env env = {.cfg = d->cfg, .gate = d->gate, .complete = d->complete, .rng = &d->rng};
    struct job *again[2];
    size_t n = outcome_settle(&env, job, req, again);
    follow_chains(d, &env);
    http_request_free(req);
    if (env.recheck_audience && !d->rechecking) {
        d->rechecking = true;
        gate_spent(d->gate);
        audience_check(d->loop, d->http, d->cfg, "re-check after a 404", on_rechecked, d);
    }
    /* The next step of a move or a deletion, or the halves of a split batch, go first;
     * while draining they are given back instead, to start over later. */
    for (size_t i = n; i-- > 0;) {
        if (again[i]->n == 1 && again[i]->rows[0]->lost)
            job_free(again[i]);          /* the next step belongs to the other claim */
        else if (d->draining)
            release_job(d, again[i]);
        else
            push_front(d, again[i]);
    }
    if (gate_state(d->gate) == GATE_STOPPED)
        deliver_release_waiting(d);   /* not sent while stopped, nor held for an unknown time */
    deliver_pump(d);
    d->changed(d->ud);
}

bool deliver_waiting(const struct deliverer *d)
{
    return d->live.head || d->bulk.head;
}

static size_t rows_in(const struct job *job)
{
    size_t n = 0;
    for (; job; job = job->next)
        for (size_t i = 0; i < job->n; i++)
            for (const struct row *r = job->rows[i]; r; r = r->then)   /* and its chain */
                n++;
    return n;
}

size_t deliver_waiting_rows(const struct deliverer *d)
{
    return rows_in(d->live.head) + rows_in(d->bulk.head);
}

int deliver_in_flight(const struct deliverer *d)
{
    return d->in_flight;
}

void deliver_release_waiting(struct deliverer *d)
{
    while (d->live.head)
        release_job(d, pop_front(&d->live));
    while (d->bulk.head)
        release_job(d, pop_front(&d->bulk));
}

void deliver_drain(struct deliverer *d)
{
    d->draining = true;
    ev_timer_stop(d->loop, &d->wait_timer);
    deliver_release_waiting(d);
}

static void add_job_ids(const struct job *job, json_object *ids)
{
    for (; job; job = job->next)
        for (size_t i = 0; i < job->n; i++)
            for (const struct row *r = job->rows[i]; r; r = r->then)
                for (size_t k = 0; k < r->nrefs; k++)
                    json_object_array_add(ids, json_object_new_int64(r->refs[k].id));
}

void deliver_add_ids(const struct deliverer *d, json_object *ids)
{
    add_job_ids(d->live.head, ids);
    add_job_ids(d->bulk.head, ids);
    add_job_ids(d->inflight, ids);
}

static void add_held(struct job *job, double before, double now, json_object *refs)
{
    for (; job; job = job->next) {
        for (size_t i = 0; i < job->n; i++) {
            struct row *row = job->rows[i];
            if (row->held_since >= before)
                continue;
            row->held_since = now;
            for (const struct row *r = row; r; r = r->then) {   /* its chain is held too */
                for (size_t k = 0; k < r->nrefs; k++) {
                    json_object *o = json_object_new_object();
                    json_object_object_add(o, "id", json_object_new_int64(r->refs[k].id));
                    json_object_object_add(o, "claim_id", json_object_new_int64(r->refs[k].claim_id));
                    json_object_array_add(refs, o);
                }
            }
        }
    }
}

void deliver_add_held(struct deliverer *d, double before, double now, json_object *refs)
{
    add_held(d->live.head, before, now, refs);
    add_held(d->bulk.head, before, now, refs);
    add_held(d->inflight, before, now, refs);
}

static bool lost_row(const struct row *row, const long long *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < row->nrefs; k++)
            if (row->refs[k].id == ids[i])
                return true;
    return false;
}

/* Drops the lost rows of the waiting jobs of q, and the jobs left empty. */
static void forget_in(struct queue *q, const long long *ids, size_t n)
{
    struct job **link = &q->head, *last = NULL;
    while (*link) {
        struct job *job = *link;
        size_t kept = 0;
        for (size_t i = 0; i < job->n; i++) {
            if (lost_row(job->rows[i], ids, n))
                row_free(job->rows[i]);
            else
                job->rows[kept++] = job->rows[i];
        }
        job->n = kept;
        if (kept == 0) {
            *link = job->next;
            job_free(job);
            continue;
        }
        last = job;
        link = &job->next;
    }
    q->tail = last;
}

void deliver_forget(struct deliverer *d, const long long *ids, size_t n)
{
    forget_in(&d->live, ids, n);
    forget_in(&d->bulk, ids, n);
    for (struct job *job = d->inflight; job; job = job->next)
        for (size_t i = 0; i < job->n; i++)
            job->rows[i]->lost |= lost_row(job->rows[i], ids, n);
}

#include "job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "claim.h"
#include "config.h"
#include "xalloc.h"

struct job *job_new(enum req_kind req, size_t cap)
{
    struct job *job = xcalloc(1, sizeof *job);
    job->req = req;
    job->cap = cap ? cap : 1;
    job->rows = xcalloc(job->cap, sizeof *job->rows);
    return job;
}

void job_set_audience(struct job *job, const char *audience)
{
    char *copy = audience ? xstrdup(audience) : NULL;   /* audience may be job->audience */
    free(job->audience);
    job->audience = copy;
}

void job_add(struct job *job, struct row *row)
{
    xgrow((void **)&job->rows, &job->cap, job->n + 1, sizeof *job->rows);
    job->rows[job->n++] = row;
    job->live |= row->live;
}

/* A contact that is in the default audience alone and left none. */
static bool default_only(const struct row *row, const struct config *cfg)
{
    return row->naudiences == 1 && strcmp(row->audiences[0], cfg->audience_id) == 0 && row->nleave == 0;
}

struct job *job_for_row(struct row *row, const struct config *cfg)
{
    struct job *own = NULL;
    if (row->op == OP_EVENT) {
        own = job_new(REQ_EVENT, 1);
    } else if (row->op == OP_DELETE) {
        own = job_new(REQ_LOOKUP, 1);
        own->lookup = row->email;
        own->lookup_for = LOOKUP_DELETE;
        own->delete_old = row->old_email != NULL;
    } else if (row->old_email && strcmp(row->old_email, row->email) != 0) {
        own = job_new(REQ_MOVE, 1);
    } else if (row->naudiences != 1 || row->nleave > 0) {
        own = job_new(REQ_IMPORT, 1);
        job_set_audience(own, row->naudiences ? row->audiences[0] : NULL);
        own->next_audience = 1;
    }
    (void)cfg;
    if (own)
        job_add(own, row);
    return own;
}

void job_free(struct job *job)
{
    if (!job)
        return;
    for (size_t i = 0; i < job->n; i++)
        row_free(job->rows[i]);
    free(job->rows);
    free(job->audience);
    free(job);
}

static char *url_of(const struct config *cfg, const char *path)
{
    size_t n = strlen(cfg->api_url) + strlen(path) + 1;
    char *url = xmalloc(n);
    snprintf(url, n, "%s%s", cfg->api_url, path);
    return url;
}

/* api_url + fmt, where each %s is one URL part, percent-encoded. */
static char *url_with(const struct config *cfg, const char *fmt, const char *a, const char *b)
{
    char *ea = sendry_url_encode(a), *eb = b ? sendry_url_encode(b) : NULL;
    size_t n = strlen(fmt) + strlen(ea) + (eb ? strlen(eb) : 0) + 1;
    char *path = xmalloc(n);
    snprintf(path, n, fmt, ea, eb ? eb : "");
    char *url = url_of(cfg, path);
    free(ea);
    free(eb);
    free(path);
    return url;
}

struct http_request *job_request(const struct job *job, const struct config *cfg)
{
    const struct row *first = job->rows[0];
    switch (job->req) {
    case REQ_IMPORT:
        return http_request_new("POST", url_of(cfg, "/v1/contacts/import"),
                                sendry_import_body(job->rows, job->n, job->audience));
    case REQ_CREATE:
        return http_request_new("POST", url_of(cfg, "/v1/contacts"),
                                sendry_contact_body(first, job->audience));
    case REQ_MOVE:
        return http_request_new("PATCH", url_with(cfg, "/v1/contacts/by-email?email=%s", first->old_email, NULL),
                                sendry_move_body(first));
    case REQ_LOOKUP:
        return http_request_new("GET", url_with(cfg, "/v1/contacts/by-email?email=%s", job->lookup, NULL), NULL);
    case REQ_DELETE_CONTACT:
        return http_request_new("DELETE", url_with(cfg, "/v1/contacts/%s", job->contact_id, NULL), NULL);
    case REQ_EVENT:
        return http_request_new("POST", url_of(cfg, "/v1/events"), xstrdup(first->event));
    case REQ_REMOVE_MEMBER:
        break;
    }
    return http_request_new("DELETE", url_with(cfg, "/v1/audiences/%s/contacts/%s",
                                               job->audience ? job->audience : cfg->audience_id,
                                               job->contact_id), NULL);
}

const char *job_path(const struct job *job)
{
    switch (job->req) {
    case REQ_IMPORT: return "/v1/contacts/import";
    case REQ_CREATE: return "/v1/contacts";
    case REQ_MOVE:
    case REQ_LOOKUP: return "/v1/contacts/by-email";
    case REQ_DELETE_CONTACT: return "/v1/contacts/{id}";
    case REQ_EVENT: return "/v1/events";
    case REQ_REMOVE_MEMBER: break;
    }
    return "/v1/audiences/{id}/contacts/{id}";
}

bool job_names_audience(const struct job *job, const struct config *cfg)
{
    return (job->req == REQ_IMPORT || job->req == REQ_CREATE) && job->audience &&
           strcmp(job->audience, cfg->audience_id) == 0;
}

const char *job_other_audience(const struct job *job, const struct config *cfg)
{
    bool writes = job->req == REQ_IMPORT || job->req == REQ_CREATE;
    return writes && job->audience && strcmp(job->audience, cfg->audience_id) != 0 ? job->audience : NULL;
}

static enum advance look_up(struct job *job, const char *address, enum lookup_for why)
{
    job->req = REQ_LOOKUP;
    job->lookup = address;
    job->lookup_for = why;
    job->contact_id[0] = '\0';
    return ADV_NEXT;
}

/* A contact's upsert went through: its other audiences, the old address to delete (a
 * move that found both), then the audiences it left. */
static enum advance memberships(struct job *job)
{
    const struct row *row = job->rows[0];
    if (job->shared || row->op == OP_DELETE)
        return ADV_DONE;
    if (job->next_audience < row->naudiences) {
        job->req = REQ_IMPORT;
        job_set_audience(job, row->audiences[job->next_audience++]);
        return ADV_NEXT;
    }
    if (job->delete_old) {
        job->delete_old = false;
        return look_up(job, row->old_email, LOOKUP_OLD);
    }
    if (job->next_leave < row->nleave) {
        if (job->lookup_for != LOOKUP_LEAVE || !job->contact_id[0])
            return look_up(job, row->email, LOOKUP_LEAVE);
        job->req = REQ_REMOVE_MEMBER;
        job_set_audience(job, row->leave[job->next_leave++]);
        return ADV_NEXT;
    }
    return ADV_DONE;
}

/* A deletion's address is gone: the job is done, or the old address is next. */
static enum advance deleted_one(struct job *job)
{
    if (!job->delete_old)
        return ADV_DONE;
    job->delete_old = false;
    return look_up(job, job->rows[0]->old_email, LOOKUP_DELETE);
}

/* A step of taking something away ended (2xx, or 404: already gone). */
static enum advance removed(struct job *job)
{
    return job->rows[0]->op == OP_DELETE ? deleted_one(job) : memberships(job);
}

static enum advance after_lookup(struct job *job, const struct http_request *req, bool ok,
                                 const struct config *cfg)
{
    if (req->status == 404)
        return removed(job);   /* nothing to delete or take out */
    if (!ok)
        return ADV_CLASSIFY;
    if (!sendry_contact_id(req->response, req->response_len, job->contact_id, sizeof job->contact_id))
        return ADV_RETRY;
    const struct row *row = job->rows[0];
    if (job->lookup_for == LOOKUP_LEAVE)
        return memberships(job);
    if (job->lookup_for == LOOKUP_DELETE && row->remove_only) {
        job->req = REQ_REMOVE_MEMBER;
        job_set_audience(job, cfg->audience_id);
    } else {
        job->req = REQ_DELETE_CONTACT;
    }
    return ADV_NEXT;
}

/* Sendry has no contact at the address the move is from: the next address it may be
 * at (an older row's, see struct row's via), if any is left. */
static bool move_from_next(struct row *row)
{
    if (row->nvia == 0)
        return false;
    free(row->old_email);
    row->old_email = row->via[--row->nvia];
    return true;
}

/* The move went through, or is tried from the next address the contact may be at, or
 * fell back to an import (404: Sendry never had the old address; 409: both exist, the
 * old one to delete after the import). */
static enum advance after_move(struct job *job, long st, bool ok, const struct config *cfg)
{
    struct row *row = job->rows[0];
    if (ok)
        return default_only(row, cfg) ? ADV_CLASSIFY : memberships(job);
    if (st != 404 && st != 409)
        return ADV_CLASSIFY;
    if (st == 404 && move_from_next(row))
        return ADV_NEXT;
    job->req = REQ_IMPORT;
    job_set_audience(job, row->naudiences ? row->audiences[0] : NULL);
    job->next_audience = 1;
    job->delete_old = st == 409;
    return ADV_NEXT;
}

enum advance job_advance(struct job *job, const struct http_request *req, const struct config *cfg)
{
    long st = req->status;
    bool ok = st >= 200 && st < 300;
    switch (job->req) {
    case REQ_MOVE:
        return after_move(job, st, ok, cfg);
    case REQ_IMPORT:
    case REQ_CREATE:
        if (!ok || job->shared)
            return ADV_CLASSIFY;
        return memberships(job) == ADV_NEXT ? ADV_NEXT : ADV_CLASSIFY;
    case REQ_LOOKUP:
        return after_lookup(job, req, ok, cfg);
    case REQ_DELETE_CONTACT:
    case REQ_REMOVE_MEMBER:
        return st == 404 || ok ? removed(job) : ADV_CLASSIFY;
    case REQ_EVENT:
        return ADV_CLASSIFY;
    }
    return ADV_CLASSIFY;
}

void job_split(struct job *job, struct job **a, struct job **b)
{
    size_t half = job->n / 2;
    *a = job_new(job->req, half);
    *b = job_new(job->req, job->n - half);
    (*a)->shared = (*b)->shared = job->shared;
    (*a)->split = (*b)->split = true;
    job_set_audience(*a, job->audience);
    job_set_audience(*b, job->audience);
    for (size_t i = 0; i < job->n; i++)
        job_add(i < half ? *a : *b, job->rows[i]);
    job->n = 0;
    job_free(job);
}

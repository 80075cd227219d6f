#include "job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "claim.h"
#include "xalloc.h"

struct job *job_new(enum req_kind req, size_t cap)
{
    struct job *job = xcalloc(1, sizeof *job);
    job->req = req;
    job->cap = cap ? cap : 1;
    job->rows = xcalloc(job->cap, sizeof *job->rows);
    return job;
}

void job_add(struct job *job, struct row *row)
{
    xgrow((void **)&job->rows, &job->cap, job->n + 1, sizeof *job->rows);
    job->rows[job->n++] = row;
    job->live |= row->live;
}

struct job *job_for_row(struct row *row)
{
    struct job *own = NULL;
    if (row->op == OP_DELETE) {
        own = job_new(REQ_LOOKUP, 1);
        own->lookup = row->email;
        own->delete_old = row->old_email != NULL;
    } else if (row->old_email && strcmp(row->old_email, row->email) != 0) {
        own = job_new(REQ_MOVE, 1);
    }
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
                                sendry_import_body(job->rows, job->n, cfg->audience_id));
    case REQ_CREATE:
        return http_request_new("POST", url_of(cfg, "/v1/contacts"),
                                sendry_contact_body(first, cfg->audience_id));
    case REQ_MOVE:
        return http_request_new("PATCH", url_with(cfg, "/v1/contacts/by-email?email=%s", first->old_email, NULL),
                                sendry_move_body(first));
    case REQ_LOOKUP:
        return http_request_new("GET", url_with(cfg, "/v1/contacts/by-email?email=%s", job->lookup, NULL), NULL);
    case REQ_DELETE_CONTACT:
        return http_request_new("DELETE", url_with(cfg, "/v1/contacts/%s", job->contact_id, NULL), NULL);
    case REQ_REMOVE_MEMBER:
        break;
    }
    return http_request_new("DELETE", url_with(cfg, "/v1/audiences/%s/contacts/%s", cfg->audience_id,
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
    case REQ_REMOVE_MEMBER: break;
    }
    return "/v1/audiences/{id}/contacts/{id}";
}

bool job_names_audience(const struct job *job)
{
    return job->req == REQ_IMPORT || job->req == REQ_CREATE;
}

/* One address is gone: the job is done, or the old address is next. */
static enum advance deleted_one(struct job *job)
{
    if (!job->delete_old)
        return ADV_DONE;
    job->delete_old = false;
    job->req = REQ_LOOKUP;
    job->lookup = job->rows[0]->old_email;
    return ADV_NEXT;
}

static enum advance after_lookup(struct job *job, const struct http_request *req, bool ok)
{
    if (req->status == 404)
        return deleted_one(job); /* nothing to delete */
    if (!ok)
        return ADV_CLASSIFY;
    if (!sendry_contact_id(req->response, req->response_len, job->contact_id, sizeof job->contact_id))
        return ADV_RETRY;
    const struct row *row = job->rows[0];
    job->req = row->op == OP_DELETE && sendry_delete_removes_from_audience(row) ? REQ_REMOVE_MEMBER
                                                                              : REQ_DELETE_CONTACT;
    return ADV_NEXT;
}

enum advance job_advance(struct job *job, const struct http_request *req)
{
    long st = req->status;
    bool ok = st >= 200 && st < 300;
    switch (job->req) {
    case REQ_MOVE:
        if (st == 404 || st == 409) {
            /* 404: Sendry never had the old address: upsert the new one.
             * 409: both addresses exist: upsert the new one, then delete the old. */
            job->req = REQ_IMPORT;
            job->delete_old = st == 409;
            return ADV_NEXT;
        }
        return ADV_CLASSIFY;
    case REQ_IMPORT:
        return ok && job->delete_old ? deleted_one(job) : ADV_CLASSIFY;
    case REQ_LOOKUP:
        return after_lookup(job, req, ok);
    case REQ_DELETE_CONTACT:
    case REQ_REMOVE_MEMBER:
        return st == 404 || ok ? deleted_one(job) : ADV_CLASSIFY; /* 404: already gone */
    case REQ_CREATE:
        break;
    }
    return ADV_CLASSIFY;
}

void job_split(struct job *job, struct job **a, struct job **b)
{
    size_t half = job->n / 2;
    *a = job_new(job->req, half);
    *b = job_new(job->req, job->n - half);
    for (size_t i = 0; i < job->n; i++)
        job_add(i < half ? *a : *b, job->rows[i]);
    job->n = 0;
    job_free(job);
}

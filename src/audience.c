#include "audience.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "gate.h"
#include "log.h"
#include "outcome.h"
#include "sendry.h"
#include "xalloc.h"

struct check {
    const struct config *cfg;
    const char *what;
    audience_cb cb;
    void *ud;
    ev_timer later;          /* a request that could not start still answers from the loop */
    struct ev_loop *loop;
};

static void log_verified(const struct config *cfg, const struct http_request *req)
{
    json_object *o = json_tokener_parse(req->response ? req->response : "");
    json_object *name = NULL, *count = NULL;
    if (o) {
        json_object_object_get_ex(o, "name", &name);
        json_object_object_get_ex(o, "member_count", &count);
    }
    log_info("audience %s (\"%s\", %s members) verified", cfg->audience_id,
             name ? json_object_get_string(name) : "?", count ? json_object_get_string(count) : "?");
    json_object_put(o);
}

static enum audience_verdict verdict_of(const struct config *cfg, const char *what,
                                        const struct http_request *req)
{
    if (req->transport_ok && req->status == 200) {
        log_verified(cfg, req);
        return AUDIENCE_OK;
    }
    char error[600];
    double ignored = -1;
    outcome_describe(req, error, sizeof error, &ignored);
    long st = req->status;
    if (req->transport_ok && (st == 401 || st == 402 || st == 403 || st == 404)) {
        log_error("%s GET /v1/audiences/%s failed: %s; %s", what, cfg->audience_id, error,
                  outcome_stop_hint(st));
        return AUDIENCE_REFUSED;
    }
    log_warn("%s of the audience failed (%s); going on, requests will be retried", what, error);
    return AUDIENCE_UNCHECKED;
}

static void on_done(struct http_request *req, void *arg)
{
    struct check *c = arg;
    enum audience_verdict v = verdict_of(c->cfg, c->what, req);
    long status = req->transport_ok ? req->status : 0;
    http_request_free(req);
    c->cb(c->ud, v, status);
    free(c);
}

static void on_later(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct check *c = w->data;
    log_warn("could not start the %s of the audience; going on", c->what);
    c->cb(c->ud, AUDIENCE_UNCHECKED, 0);
    free(c);
}

void audience_check(struct ev_loop *loop, struct http *http, const struct config *cfg,
                    const char *what, audience_cb cb, void *ud)
{
    struct check *c = xcalloc(1, sizeof *c);
    *c = (struct check){.cfg = cfg, .what = what, .cb = cb, .ud = ud, .loop = loop};
    char *id = sendry_url_encode(cfg->audience_id);
    size_t n = strlen(cfg->api_url) + strlen(id) + 32;
    char *url = xmalloc(n);
    snprintf(url, n, "%s/v1/audiences/%s", cfg->api_url, id);
    free(id);
    struct http_request *req = http_request_new("GET", url, NULL);
    req->done = on_done;
    req->arg = c;
    if (http_start(http, req))
        return;
    http_request_free(req);
    ev_timer_init(&c->later, on_later, 0., 0.);
    c->later.data = c;
    ev_timer_start(loop, &c->later);
}

/* The audiences the mapping names, other than the configured one: a bounded look at the
 * rows waiting (their payload, or, for a captured row, its user rendered through the
 * mapping: sendry_claim_render, at most 1000 users) and at what Sendry accepted (the
 * first 100,000 states by user id: a scan of the primary key that stops there, never the
 * whole table; tests/test_hot_plans.py). */
static const char NAMED_SQL[] =
    "WITH waiting AS MATERIALIZED ("
    "   SELECT payload, user_id FROM public.sendry_outbox WHERE status IN ('pending', 'processing')"
    "   AND class IN ('live', 'bulk') LIMIT 10000)"
    " SELECT DISTINCT a FROM ("
    "   SELECT jsonb_array_elements_text(o.payload -> 'audiences') AS a FROM waiting o"
    "   WHERE jsonb_typeof(o.payload -> 'audiences') = 'array'"
    "   UNION"
    "   SELECT unnest(r.audiences) FROM public.sendry_claim_render(ARRAY("
    "       SELECT DISTINCT w.user_id FROM waiting w WHERE w.payload IS NULL AND w.user_id IS NOT NULL"
    "       LIMIT 1000)) r"
    "   UNION"
    "   SELECT unnest(s.audiences) FROM (SELECT st.audiences FROM public.sendry_contact_state st"
    "                                    ORDER BY st.user_id LIMIT 100000) s"
    "   WHERE s.audiences IS NOT NULL) x"
    " WHERE a <> 'default' AND a <> $1 AND a ~ '^[A-Za-z0-9_-]+$' ORDER BY 1 LIMIT 50";

enum named_state { NAMED_QUERY, NAMED_WAIT, NAMED_HTTP, NAMED_DONE };

struct audience_named {
    struct ev_loop *loop;
    struct http *http;
    struct gate *gate;
    const struct config *cfg;
    enum named_state state;
    char **ids;
    size_t n, next;
    ev_timer wait;
};

static void named_next(struct audience_named *nm);

static void on_named(struct http_request *req, void *arg)
{
    struct audience_named *nm = arg;
    const char *id = nm->ids[nm->next - 1];
    if (req->transport_ok && req->status == 200)
        log_info("audience %s, named by the mapping, exists", id);
    else if (req->transport_ok && req->status == 404)
        log_warn("audience %s, named by the mapping (sendry_contacts), does not exist at Sendry: the rows "
                 "naming it will fail (create it, or fix the mapping)", id);
    http_request_free(req);
    if (nm->state == NAMED_HTTP)
        named_next(nm);
}

static void on_named_wait(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    named_next(w->data);
}

static void named_next(struct audience_named *nm)
{
    nm->state = NAMED_DONE;
    if (nm->next >= nm->n)
        return;
    double wait = gate_ask(nm->gate, GATE_BULK);
    if (wait > 0) {
        nm->state = NAMED_WAIT;
        ev_timer_set(&nm->wait, wait, 0.);
        ev_timer_start(nm->loop, &nm->wait);
        return;
    }
    char *id = sendry_url_encode(nm->ids[nm->next++]);
    size_t n = strlen(nm->cfg->api_url) + strlen(id) + 32;
    char *url = xmalloc(n);
    snprintf(url, n, "%s/v1/audiences/%s", nm->cfg->api_url, id);
    free(id);
    struct http_request *req = http_request_new("GET", url, NULL);
    req->done = on_named;
    req->arg = nm;
    if (http_start(nm->http, req))
        nm->state = NAMED_HTTP;
    else
        http_request_free(req);
}

static void on_named_rows(PGresult *res, void *arg)
{
    struct audience_named *nm = arg;
    nm->state = NAMED_DONE;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) == 0)
        return;
    nm->n = (size_t)PQntuples(res);
    nm->ids = xcalloc(nm->n, sizeof *nm->ids);
    for (size_t i = 0; i < nm->n; i++)
        nm->ids[i] = xstrdup(PQgetvalue(res, (int)i, 0));
    named_next(nm);
}

struct audience_named *audience_check_named(struct ev_loop *loop, struct http *http, struct db *db,
                                            struct gate *gate, const struct config *cfg)
{
    struct audience_named *nm = xcalloc(1, sizeof *nm);
    *nm = (struct audience_named){.loop = loop, .http = http, .gate = gate, .cfg = cfg,
                                  .state = NAMED_QUERY};
    ev_init(&nm->wait, on_named_wait);
    nm->wait.data = nm;
    const char *params[1] = {cfg->audience_id};
    db_query(db, NAMED_SQL, 1, params, on_named_rows, nm);
    return nm;
}

void audience_named_stop(struct audience_named *nm)
{
    if (!nm)
        return;
    ev_timer_stop(nm->loop, &nm->wait);
    nm->state = NAMED_DONE;
}

void audience_named_free(struct audience_named *nm)
{
    if (!nm)
        return;
    audience_named_stop(nm);
    for (size_t i = 0; i < nm->n; i++)
        free(nm->ids[i]);
    free(nm->ids);
    free(nm);
}

#include "audience.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

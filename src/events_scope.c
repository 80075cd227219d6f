#include "events_scope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "outcome.h"
#include "xalloc.h"

enum events_scope_verdict events_scope_verdict(bool transport_ok, long status)
{
    if (!transport_ok)
        return EVENTS_SCOPE_UNKNOWN;
    if (status >= 200 && status < 300)
        return EVENTS_SCOPE_GRANTED;
    return status == 403 ? EVENTS_SCOPE_MISSING : EVENTS_SCOPE_UNKNOWN;
}

static void log_missing(const struct config *cfg, const struct http_request *req)
{
    char error[600], shown[600];
    double ignored = -1;
    outcome_describe(req, error, sizeof error, &ignored);
    log_text(error, shown, sizeof shown);
    log_error("the API key lacks the scope for events (GET /v1/events: %s): contacts keep "
              "syncing, but the first event due (one named in sendry_settings.events, or from "
              "sendry_track) will be refused and stop sending; put a full_access key in %s",
              shown, config_key_source_name(cfg->key_source));
}

static void on_answer(struct http_request *req, void *arg)
{
    const struct config *cfg = arg;
    switch (events_scope_verdict(req->transport_ok, req->status)) {
    case EVENTS_SCOPE_MISSING:
        metrics.events_scope_missing = true;
        log_missing(cfg, req);
        break;
    case EVENTS_SCOPE_GRANTED:
        metrics.events_scope_missing = false;
        log_debug("the API key may send events (GET /v1/events: HTTP %ld)", req->status);
        break;
    case EVENTS_SCOPE_UNKNOWN:
        log_debug("the events scope stays unknown (GET /v1/events: %s)",
                  req->transport_ok ? "no 2xx or 403" : req->error);
        break;
    }
    http_request_free(req);
}

void events_scope_check(struct http *http, const struct config *cfg)
{
    size_t n = strlen(cfg->api_url) + 32;
    char *url = xmalloc(n);
    snprintf(url, n, "%s/v1/events?limit=1", cfg->api_url);
    struct http_request *req = http_request_new("GET", url, NULL);
    req->done = on_answer;
    req->arg = (void *)cfg;
    if (!http_start(http, req)) {
        log_debug("could not start the check of the events scope");
        http_request_free(req);
    }
}

#include "reconcile.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "outcome.h"
#include "sendry.h"
#include "xalloc.h"

static const char CURSOR_SQL[] = "SELECT value FROM public.sendry_sync_state WHERE key = $1";

/* One page into the inbox, and the cursor to start from next time, in one statement. */
static const char STORE_SQL[] =
    "WITH received AS ("
    "  SELECT public.sendry_inbox_receive(e ->> 'event_id', e ->> 'type', e -> 'payload', 'reconcile') AS r"
    "  FROM jsonb_array_elements($1::jsonb) e),"
    " cursor AS ("
    "  INSERT INTO public.sendry_sync_state (key, value) SELECT $2::text, $3::text WHERE $3::text IS NOT NULL"
    "  ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now())"
    " SELECT count(*) FILTER (WHERE r = 'applied'), count(*) FILTER (WHERE r = 'duplicate'), count(*)"
    " FROM received";

static const struct {
    const char *path, *type, *state_key;
} lists[] = {
    {"/v1/unsubscribes", "unsubscribe", "reconcile.unsubscribes.cursor"},
    {"/v1/suppression", "suppression", "reconcile.suppression.cursor"},
};
#define N_LISTS 2

struct reconciler {
    struct ev_loop *loop;
    const struct config *cfg;
    struct db *db;
    struct http *http;
    struct gate *gate;
    void (*changed)(void *ud);
    void *ud;
    int list;              /* index into lists, -1 = no run */
    char *cursor;          /* of the page being fetched, NULL = the first page */
    char **seen;           /* cursors fetched in this run */
    size_t nseen, capseen;
    bool busy;             /* a request or a query of the run is under way */
    bool stopping;
    long long applied, read;
    ev_timer step;         /* waits for the gate, then fetches */
};

static void fetch(struct reconciler *r);
static void next_list(struct reconciler *r);

static void forget_seen(struct reconciler *r)
{
    for (size_t i = 0; i < r->nseen; i++)
        free(r->seen[i]);
    r->nseen = 0;
}

static void end_run(struct reconciler *r, const char *why)
{
    if (why)
        log_warn("reconcile: stopped early: %s; next run in %.0f s", why, r->cfg->reconcile_interval);
    else if (r->read)
        log_info("reconcile: %lld entries read, %lld new opt-outs applied", r->read, r->applied);
    r->list = -1;
    r->busy = false;
    free(r->cursor);
    r->cursor = NULL;
    forget_seen(r);
    ev_timer_stop(r->loop, &r->step);
    r->changed(r->ud);
}

/* A query of the run answered: true if it succeeded, else the run ends. */
static bool answered(struct reconciler *r, PGresult *res)
{
    r->busy = false;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
        return true;
    end_run(r, res ? PQresultErrorMessage(res) : "database connection lost");
    return false;
}

static void on_cursor(PGresult *res, void *arg)
{
    struct reconciler *r = arg;
    if (!answered(r, res))
        return;
    free(r->cursor);
    r->cursor = PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) ? xstrdup(PQgetvalue(res, 0, 0)) : NULL;
    fetch(r);
}

static void next_list(struct reconciler *r)
{
    if (++r->list >= N_LISTS) {
        end_run(r, NULL);
        return;
    }
    forget_seen(r);
    const char *params[1] = {lists[r->list].state_key};
    db_query(r->db, CURSOR_SQL, 1, params, on_cursor, r);
    r->busy = true;
}

static void on_stored(PGresult *res, void *arg)
{
    struct reconciler *r = arg;
    if (!answered(r, res))
        return;
    r->applied += atoll(PQgetvalue(res, 0, 0));
    r->read += atoll(PQgetvalue(res, 0, 2));
    if (r->cursor)
        fetch(r);      /* has_more: the next page */
    else
        next_list(r);
}

/* The inbox event of one list entry: its id ("<type>:<entry id>", or type, email and
 * time when the entry has no id) and the entry itself as the payload's data. */
static json_object *event_of(json_object *item, const char *type)
{
    char event_id[600];
    json_object *v, *email = NULL, *at = NULL;
    if (json_object_object_get_ex(item, "id", &v) && json_object_is_type(v, json_type_string)) {
        snprintf(event_id, sizeof event_id, "%s:%s", type, json_object_get_string(v));
    } else {
        json_object_object_get_ex(item, "email", &email);
        json_object_object_get_ex(item, "created_at", &at);
        snprintf(event_id, sizeof event_id, "%s:%s:%s", type, email ? json_object_get_string(email) : "",
                 at ? json_object_get_string(at) : "");
    }
    json_object *payload = json_object_new_object();
    json_object_object_add(payload, "type", json_object_new_string(type));
    json_object_object_add(payload, "data", json_object_get(item));
    json_object *ev = json_object_new_object();
    json_object_object_add(ev, "event_id", json_object_new_string(event_id));
    json_object_object_add(ev, "type", json_object_new_string(type));
    json_object_object_add(ev, "payload", payload);
    return ev;
}

/* True if this run already fetched `cursor` (a list that answers the same next_cursor
 * again would be paged forever); remembers it otherwise. */
static bool seen_before(struct reconciler *r, const char *cursor)
{
    for (size_t i = 0; i < r->nseen; i++)
        if (strcmp(r->seen[i], cursor) == 0)
            return true;
    xgrow((void **)&r->seen, &r->capseen, r->nseen + 1, sizeof *r->seen);
    r->seen[r->nseen++] = xstrdup(cursor);
    return false;
}

/* Stores one page and where the next run starts: the next page, or this page again at
 * the end (the inbox deduplicates what it sees twice). */
static void store_page(struct reconciler *r, json_object *data, const char *next)
{
    json_object *events = json_object_new_array();
    size_t n = json_object_array_length(data);
    for (size_t i = 0; i < n; i++)
        json_object_array_add(events, event_of(json_object_array_get_idx(data, i), lists[r->list].type));
    char *store = next ? xstrdup(next) : (r->cursor ? xstrdup(r->cursor) : NULL);
    const char *params[3] = {json_object_to_json_string_ext(events, JSON_C_TO_STRING_PLAIN),
                             lists[r->list].state_key, store};
    db_query(r->db, STORE_SQL, 3, params, on_stored, r);
    r->busy = true;
    free(r->cursor);
    r->cursor = next ? store : NULL;
    if (!next)
        free(store);
    json_object_put(events);
}

static void on_page_ok(struct reconciler *r, const struct http_request *req)
{
    json_object *root = req->response ? json_tokener_parse(req->response) : NULL;
    json_object *data = NULL, *more = NULL, *next = NULL;
    if (!root || !json_object_object_get_ex(root, "data", &data) ||
        !json_object_is_type(data, json_type_array)) {
        json_object_put(root);
        end_run(r, "the list answer has no data array");
        return;
    }
    json_object_object_get_ex(root, "has_more", &more);
    json_object_object_get_ex(root, "next_cursor", &next);
    bool has_more = more && json_object_get_boolean(more) && next && json_object_is_type(next, json_type_string);
    const char *next_cursor = has_more ? json_object_get_string(next) : NULL;
    if (next_cursor && seen_before(r, next_cursor)) {
        char why[300];
        snprintf(why, sizeof why, "GET %s answered a next_cursor it had already given in this run",
                 lists[r->list].path);
        next_cursor = NULL;   /* store this page, then stop */
        store_page(r, data, NULL);
        json_object_put(root);
        log_warn("reconcile: %s; stopping this list", why);
        return;
    }
    store_page(r, data, next_cursor);
    json_object_put(root);
}

static void on_page(struct http_request *req, void *arg)
{
    struct reconciler *r = arg;
    r->busy = false;
    if (r->stopping) {
        http_request_free(req);
        end_run(r, NULL);
        return;
    }
    if (req->transport_ok && req->status == 200) {
        on_page_ok(r, req);
    } else if (req->transport_ok && req->status == 429) {
        char error[600];
        double body_wait = -1;
        outcome_describe(req, error, sizeof error, &body_wait);
        double wait = sendry_retry_after(req->retry_after, (double)time(NULL));
        wait = gate_pause(r->gate, wait >= 0 ? wait : body_wait, 0.5);
        log_warn("reconcile: rate limited by Sendry (429): pausing all requests for %.1f s", wait);
        fetch(r);   /* the same page, once the gate opens */
    } else {
        char error[600], why[700];
        double ignored = -1;
        outcome_describe(req, error, sizeof error, &ignored);
        snprintf(why, sizeof why, "GET %s: %s", lists[r->list].path, error);
        end_run(r, why);
    }
    http_request_free(req);
}

/* Fetches the page at r->cursor of the current list, when the gate allows. */
static void fetch(struct reconciler *r)
{
    if (r->stopping) {
        end_run(r, NULL);
        return;
    }
    double wait = gate_ask(r->gate, GATE_BULK);
    if (wait > 0) {
        r->busy = true;
        ev_timer_set(&r->step, wait, 0.);
        ev_timer_start(r->loop, &r->step);
        return;
    }
    char *enc = r->cursor ? sendry_url_encode(r->cursor) : NULL;
    size_t n = strlen(r->cfg->api_url) + strlen(lists[r->list].path) + (enc ? strlen(enc) : 0) + 32;
    char *url = xmalloc(n);
    snprintf(url, n, "%s%s?limit=100%s%s", r->cfg->api_url, lists[r->list].path, enc ? "&cursor=" : "",
             enc ? enc : "");
    free(enc);
    struct http_request *req = http_request_new("GET", url, NULL);
    req->done = on_page;
    req->arg = r;
    if (!http_start(r->http, req)) {
        http_request_free(req);
        end_run(r, "could not start a request");
        return;
    }
    r->busy = true;
}

static void on_step(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct reconciler *r = w->data;
    r->busy = false;
    fetch(r);
}

struct reconciler *reconcile_new(struct ev_loop *loop, const struct config *cfg, struct db *db,
                                 struct http *http, struct gate *gate, void (*changed)(void *ud),
                                 void *ud)
{
    struct reconciler *r = xcalloc(1, sizeof *r);
    *r = (struct reconciler){.loop = loop, .cfg = cfg, .db = db, .http = http, .gate = gate,
                             .changed = changed, .ud = ud, .list = -1};
    ev_init(&r->step, on_step);
    r->step.data = r;
    return r;
}

void reconcile_free(struct reconciler *r)
{
    if (!r)
        return;
    ev_timer_stop(r->loop, &r->step);
    free(r->cursor);
    forget_seen(r);
    free(r->seen);
    free(r);
}

void reconcile_start(struct reconciler *r)
{
    if (r->list >= 0 || r->stopping)
        return;
    r->applied = r->read = 0;
    next_list(r);
}

void reconcile_stop(struct reconciler *r)
{
    r->stopping = true;
    if (ev_is_active(&r->step))
        end_run(r, NULL);
}

bool reconcile_busy(const struct reconciler *r)
{
    return r->busy;
}

/* relay_setup: building the relay from its parts, starting it, draining it on SIGTERM,
 * --once's database deadline, and tearing it down. What runs next is in relay.c. */
#include "relay_priv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>
#include <unistd.h>

#include "backoff.h"
#include "events_scope.h"

#include "log.h"
#include "notify.h"
#include "xalloc.h"

static struct relay *relay_of(ev_timer *w)
{
    return w->data;
}

static void on_stop_log(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = relay_of(w);
    log_error("sending stopped: %s; rows stay pending; next try in %.0f s", gate_cause(r->gate),
              gate_probe_in(r->gate));
}

/* First expiry: abort what is still in flight (its rows are released). Second, a few
 * seconds later: stop even if the database never confirmed the releases. */
static void on_drain_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = relay_of(w);
    if (!r->drain_expired) {
        r->drain_expired = true;
        if (http_in_flight(r->http) > 0) {
            log_warn("drain timeout: abandoning %d requests in flight; their rows go back to pending",
                     http_in_flight(r->http));
            http_abort_all(r->http);
        }
        ev_timer_set(w, 5., 0.);
        ev_timer_start(r->loop, w);
        relay_kick(r);
        return;
    }
    log_warn("stopping with %zu outcomes not written (database %s): their rows return to pending "
             "when their lease runs out", complete_pending(r->complete),
             db_connected(r->db) ? "slow" : "unreachable");
    relay_finish(r, r->exit_status);
}

static void on_once_db_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = relay_of(w);
    log_error("--once: no database connection for %.0f s (%s); giving up", ONCE_DB_TIMEOUT,
              db_last_error(r->db));
    relay_finish(r, 1);
}

static void on_reconcile_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = relay_of(w);
    if (r->state == RELAY_RUNNING && db_connected(r->aux))
        reconcile_start(r->reconcile);   /* skipped while paused, stopped or a run is going */
}

/* ---- lifecycle --------------------------------------------------------------------- */

/* After the audience check, and after the key changed: may the key send events? A
 * request like the startup check, paid from the key's budget. Not for --once (it would
 * end before the answer) nor --no-verify. */
static void check_events_scope(struct relay *r)
{
    if (!r->cfg->verify || r->cfg->once)
        return;
    gate_spent(r->gate);
    events_scope_check(r->http, r->cfg);
}

static void on_verified(void *ud, enum audience_verdict v, long status)
{
    (void)status;
    struct relay *r = ud;
    if (r->state != RELAY_STARTING)
        return;
    if (v == AUDIENCE_REFUSED) {
        relay_finish(r, 2);
        return;
    }
    relay_set_state(r, RELAY_RUNNING);
    if (db_connected(r->db))
        notify_ready();
    if (r->cfg->verify && !r->cfg->once && !r->named)
        r->named = audience_check_named(r->loop, r->http, r->aux, r->gate, r->cfg);
    check_events_scope(r);
    relay_kick(r);
}

static void init_timer(struct relay *r, ev_timer *t, void (*cb)(struct ev_loop *, ev_timer *, int),
                       double repeat)
{
    ev_init(t, cb);
    t->repeat = repeat;
    t->data = r;
}

static void init_timers(struct relay *r)
{
    const struct config *c = r->cfg;
    init_timer(r, &r->poll_timer, relay_on_wake, c->poll_interval);
    init_timer(r, &r->due_timer, relay_on_wake, 0);
    init_timer(r, &r->claim_timer, relay_on_wake, 0);
    init_timer(r, &r->drain_timer, on_drain_deadline, 0);
    init_timer(r, &r->stop_log_timer, on_stop_log, 60.);
    init_timer(r, &r->once_db_deadline, on_once_db_deadline, 0);
    init_timer(r, &r->renew_timer, relay_on_renew_timer, c->lease / 3 > 0.5 ? c->lease / 3 : 0.5);
    /* The first reconciliation soon after start, then every interval. */
    ev_timer_init(&r->reconcile_timer, on_reconcile_timer, 2., c->reconcile_interval);
    r->reconcile_timer.data = r;
    ev_idle_init(&r->kick_w, relay_on_kick);
    r->kick_w.data = r;
}

/* Vault holds a new key: send it from now on and probe at once. */
static void on_key_rotated(const char *key, void *ud)
{
    struct relay *r = ud;
    http_set_api_key(r->http, key);
    if (r->budget)
        budget_set_key(r->budget, key);
    gate_probe_now(r->gate);
    r->claim_wanted = true;
    if (r->state != RELAY_STARTING && r->state != RELAY_DRAINING && r->state != RELAY_DONE)
        check_events_scope(r);
    relay_kick(r);
}

void relay_reload_key(struct relay *r)
{
    const struct config *c = r->cfg;
    char err[600], *key = NULL;
    switch (c->key_source) {
    case KEY_FILE:
        if (!config_reread_key_file(c, &key, err, sizeof err)) {
            log_error("SIGHUP: %s; keeping the key in use", err);
            return;
        }
        on_key_rotated(key, r);
        memset(key, 0, strlen(key));
        free(key);
        log_info("SIGHUP: read the API key again from SENDRY_API_KEY_FILE (%s)", c->api_key_file);
        return;
    case KEY_VAULT:
        log_info("SIGHUP: reading the API key again from Vault (secret \"%s\")", c->api_key_vault);
        vault_watch_kick(r->vault);
        return;
    case KEY_ENV:
    case KEY_NONE:
        break;
    }
    log_warn("SIGHUP: the API key comes from SENDRY_API_KEY, which a running process cannot read "
             "again: restart the worker to change it (or use SENDRY_API_KEY_FILE)");
}

/* The worker's identity (locked_by): host:pid:<64 random bits>. The host and the pid say
 * where it runs; the random part makes it unique per process, chosen at start: two
 * containers with the host's name and a PID namespace of their own (both pid 1) never
 * share one, nor does a restart that gets the same pid. */
static void worker_identity(char *out, size_t size)
{
    char host[128] = "localhost";
    gethostname(host, sizeof host - 1);
    uint64_t bits = 0;
    if (getrandom(&bits, sizeof bits, 0) != (ssize_t)sizeof bits) {
        /* No getrandom (a kernel before 3.17): the clock, the pid and an address. */
        bits = rand_seed(&bits) ^ rand_seed(out);
    }
    snprintf(out, size, "%s:%ld:%016llx", host, (long)getpid(), (unsigned long long)bits);
}

struct relay *relay_new(struct ev_loop *loop, const struct config *cfg)
{
    struct relay *r = xcalloc(1, sizeof *r);
    r->loop = loop;
    r->cfg = cfg;
    worker_identity(r->locked_by, sizeof r->locked_by);
    r->gate = gate_new(cfg->rate, budget_burst(cfg->rate), cfg->live_share / 100, NULL, NULL);
    gate_set_backoff(r->gate, cfg->backoff_base, cfg->backoff_cap);
    r->http = http_new(loop, cfg->api_key, cfg->http_timeout);
    http_set_ca_file(r->http, cfg->ca_file);
    r->db = db_new(loop, "relay", cfg->database_url, "sendry_outbox",
                   (struct db_callbacks){.connected = relay_on_db_connected,
                                         .disconnected = relay_on_db_disconnected,
                                         .notified = relay_on_db_notified,
                                         .refused = relay_on_db_refused, .ud = r});
    r->aux = db_new(loop, "aux", cfg->database_url, NULL,
                    (struct db_callbacks){.connected = relay_on_aux_changed,
                                          .disconnected = relay_on_aux_changed, .ud = r});
    struct db_session session = {cfg->statement_timeout, cfg->lock_timeout,
                                 cfg->idle_in_transaction_timeout};
    db_set_session(r->db, &session);
    db_set_session(r->aux, &session);
    if (cfg->rate > 0) {
        r->budget = budget_new(loop, r->db, cfg->api_key, cfg->rate, cfg->rate_window,
                               gate_reserve(r->gate), relay_kick_cb, r);
        gate_use_budget(r->gate, r->budget);
    }
    r->complete = complete_new(r->db, r->aux, r->locked_by, relay_on_completed, r);
    if (cfg->once)
        complete_track_waiting(r->complete);   /* exit 3 counts what still waits */
    r->claim = claim_new(r->db, cfg, r->locked_by, relay_on_claimed, relay_on_next_due, r);
    r->deliver = deliver_new(loop, cfg, r->http, r->gate, r->complete, relay_kick_cb, r);
    r->reconcile = reconcile_new(loop, cfg, r->aux, r->http, r->gate, relay_kick_cb, r);
    r->inbox = inbox_new(loop, r->aux, 6 * cfg->poll_interval);
    r->health = health_new(loop, cfg, r->db, r->aux, r->gate);
    r->prune = prune_new(loop, r->aux, cfg->once ? 0 : cfg->retain_sent);
    if (cfg->key_source == KEY_VAULT)
        r->vault = vault_watch_new(loop, r->aux, cfg->api_key_vault, cfg->api_key, on_key_rotated, r);
    init_timers(r);
    return r;
}

bool relay_listen(struct relay *r, char *err, size_t errsize)
{
    if (!r->cfg->listen)
        return true;
    struct httpd_hooks hooks = {.health = relay_health_hook, .inbox = r->inbox,
                                .max_queue = (size_t)r->cfg->webhook_queue, .ud = r};
    r->httpd = httpd_start(r->loop, r->cfg->listen, r->cfg->webhook_secret, &hooks,
                           r->cfg->webhook_max_body, err, errsize);
    return r->httpd != NULL;   /* httpd_start logs the one "listening" line */
}

void relay_start(struct relay *r)
{
    const struct config *c = r->cfg;
    log_info("sendry-sync %s starting: worker %s, mode %s, batch %d, concurrency %d, rate %g/s, "
             "lease %.0f s, API %s", SENDRY_SYNC_VERSION, r->locked_by,
             c->mode == MODE_IMPORT ? "import" : "single", c->batch_size, c->concurrency, c->rate,
             c->lease, c->api_url);
    ev_timer_again(r->loop, &r->poll_timer);
    ev_timer_again(r->loop, &r->renew_timer);
    health_start(r->health);
    if (c->reconcile_interval > 0 && !c->once)
        ev_timer_start(r->loop, &r->reconcile_timer);
    if (!c->once)
        inbox_retry_start(r->inbox);
    prune_start(r->prune);
    if (c->once)
        relay_arm(r, &r->once_db_deadline, ONCE_DB_TIMEOUT);
    db_start(r->db);
    db_start(r->aux);
    if (c->verify) {
        gate_spent(r->gate);   /* a request to the key's budget like any other */
        audience_check(r->loop, r->http, c, "startup check", on_verified, r);
    }
    else
        on_verified(r, AUDIENCE_UNCHECKED, 0);
}

void relay_shutdown(struct relay *r)
{
    if (r->state == RELAY_DRAINING || r->state == RELAY_DONE) {
        log_warn("second signal: exiting now; rows in flight stay processing until their lease "
                 "runs out");
        relay_finish(r, r->exit_status);
        return;
    }
    relay_set_state(r, RELAY_DRAINING);
    log_info("stopping: no more claims; waiting up to %.0f s for %d requests in flight",
             r->cfg->drain_timeout, deliver_in_flight(r->deliver));
    ev_timer_stop(r->loop, &r->poll_timer);
    ev_timer_stop(r->loop, &r->due_timer);
    ev_timer_stop(r->loop, &r->claim_timer);
    ev_timer_stop(r->loop, &r->reconcile_timer);
    health_stop(r->health);
    inbox_retry_stop(r->inbox);
    prune_stop(r->prune);
    reconcile_stop(r->reconcile);
    deliver_drain(r->deliver);
    relay_arm(r, &r->drain_timer, r->cfg->drain_timeout);
    relay_kick(r);
}

int relay_exit_status(const struct relay *r)
{
    return r->exit_status;
}

void relay_free(struct relay *r)
{
    if (!r)
        return;
    ev_timer *timers[] = {&r->poll_timer, &r->due_timer, &r->claim_timer, &r->drain_timer,
                          &r->stop_log_timer, &r->reconcile_timer, &r->once_db_deadline,
                          &r->renew_timer};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
        ev_timer_stop(r->loop, timers[i]);
    httpd_stop(r->httpd);
    /* Requests still in flight (a second signal) end through their callbacks, which
     * free their jobs; their outcomes are not written any more. */
    r->state = RELAY_DONE;
    deliver_drain(r->deliver);
    reconcile_stop(r->reconcile);
    audience_named_stop(r->named);
    http_abort_all(r->http);
    ev_idle_stop(r->loop, &r->kick_w);
    deliver_free(r->deliver);
    http_free(r->http);
    reconcile_free(r->reconcile);
    claim_free(r->claim);
    complete_free(r->complete);
    health_free(r->health);
    prune_free(r->prune);
    inbox_free(r->inbox);
    db_free(r->db);
    db_free(r->aux);
    vault_watch_free(r->vault);   /* after db_free, which drops its query */
    audience_named_free(r->named); /* likewise */
    gate_free(r->gate);
    budget_free(r->budget);
    free(r);
}

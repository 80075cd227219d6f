/* relay: what runs next. See relay.h; building, starting and stopping are in
 * relay_setup.c. */
#include "relay_priv.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "notify.h"

static double now_of(const struct relay *r)
{
    return gate_now(r->gate);
}

void relay_kick(struct relay *r)
{
    ev_idle_start(r->loop, &r->kick_w);
}

void relay_kick_cb(void *ud)
{
    relay_kick(ud);
}

void relay_arm(struct relay *r, ev_timer *t, double in)
{
    if (ev_is_active(t) && ev_timer_remaining(r->loop, t) <= in)
        return;
    ev_timer_stop(r->loop, t);
    ev_timer_set(t, in, 0.);
    ev_timer_start(r->loop, t);
}

/* ---- state ------------------------------------------------------------------------- */

const char *relay_state_name(enum relay_state s)
{
    switch (s) {
    case RELAY_STARTING: return "starting";
    case RELAY_RUNNING: return "running";
    case RELAY_PAUSED: return "paused";
    case RELAY_STOPPED: return "stopped";
    case RELAY_DRAINING: return "draining";
    case RELAY_DONE: return "done";
    }
    return "?";
}

enum relay_state relay_state(const struct relay *r)
{
    return r->state;
}

/* Sending stopped or resumed: the log timer, systemd's status line, and the key in
 * Vault, which is read again while Sendry refuses the one in use. */
static void stopped_changed(struct relay *r, bool stopped)
{
    if (stopped) {
        ev_timer_again(r->loop, &r->stop_log_timer);
        notify_status("sending stopped: %s", gate_cause(r->gate));
        if (r->vault)
            vault_watch_kick(r->vault);
        return;
    }
    ev_timer_stop(r->loop, &r->stop_log_timer);
    notify_status("delivering the outbox to Sendry");
    if (r->vault)
        vault_watch_calm(r->vault);
}

void relay_set_state(struct relay *r, enum relay_state s)
{
    if (r->state == s)
        return;
    log_debug("relay: %s -> %s", relay_state_name(r->state), relay_state_name(s));
    if ((s == RELAY_STOPPED) != (r->state == RELAY_STOPPED))
        stopped_changed(r, s == RELAY_STOPPED);
    r->state = s;
}

/* While sending: the gate says whether it is running, paused or stopped. */
static void follow_gate(struct relay *r)
{
    if (r->state != RELAY_RUNNING && r->state != RELAY_PAUSED && r->state != RELAY_STOPPED)
        return;
    switch (gate_state(r->gate)) {
    case GATE_OPEN: relay_set_state(r, RELAY_RUNNING); break;
    case GATE_PAUSED: relay_set_state(r, RELAY_PAUSED); break;
    case GATE_STOPPED: relay_set_state(r, RELAY_STOPPED); break;
    }
}

void relay_finish(struct relay *r, int status)
{
    if (r->state == RELAY_DONE)
        return;
    relay_set_state(r, RELAY_DONE);
    r->exit_status = status;
    ev_break(r->loop, EVBREAK_ALL);
}

/* ---- claiming ---------------------------------------------------------------------- */

/* Claims when something may be due and sending is not paused. Claims run ahead of the
 * requests: up to a batch of contacts waits queued, its leases renewed, so a request
 * slot never waits for a claim. Live rows jump that queue: while it is full, a NOTIFY,
 * a poll or a due row still claims the live rows alone. */
static void maybe_claim(struct relay *r)
{
    if (!r->claim_wanted || claim_busy(r->claim) || !db_connected(r->db))
        return;
    enum gate_state gs = gate_state(r->gate);
    double wait = gs == GATE_PAUSED ? gate_peek(r->gate, GATE_LIVE) : gate_probe_in(r->gate);
    if (gs == GATE_PAUSED || (gs == GATE_STOPPED && wait > 0)) {
        relay_arm(r, &r->claim_timer, wait);   /* the pause's end, or the next probe */
        return;
    }
    int batch = r->cfg->batch_size, room = batch - (int)deliver_waiting_rows(r->deliver);
    if (room < 0)
        room = 0;
    if (room == 0 && !r->live_wanted)
        return;   /* the queue is full; a job that starts makes room and claims again */
    r->bulk_held_back = room < batch;
    r->live_wanted = false;
    claim_take(r->claim, gs == GATE_STOPPED ? 1 : batch, gs == GATE_STOPPED ? 1 : room,
               now_of(r) - r->connected_at);
}

static void warn_no_notify(struct relay *r, size_t fresh)
{
    if (!fresh || r->notifies_since_connect || r->warned_no_notify)
        return;
    r->warned_no_notify = true;
    log_warn("found new due rows by polling but no NOTIFY arrived since connecting: "
             "notifications are not reaching this worker. Connect directly (port 5432) or "
             "through the session-mode pooler, not the transaction-mode pooler (port 6543); "
             "until then rows wait up to --poll-interval (%.0f s)", r->cfg->poll_interval);
}

void relay_on_claimed(void *ud, struct claim_batch *batch)
{
    struct relay *r = ud;
    relay_note_fault(r, RELAY_FAULT_CLAIM, batch->error, batch->failed);
    if (batch->failed) {
        r->claim_wanted = false; /* the poll timer, or the reconnect, tries again */
        if (relay_first_fault(r))
            relay_kick(r);       /* --once: a fault that needs someone ends the run */
        return;
    }
    health_progress(r->health);
    warn_no_notify(r, batch->fresh);
    for (size_t i = 0; i < batch->n; i++)
        batch->rows[i]->held_since = now_of(r);
    bool all_due = (int)batch->n >= batch->limit || batch->more;
    deliver_take(r->deliver, batch);
    bool no_probe_now = gate_state(r->gate) == GATE_STOPPED && gate_probe_in(r->gate) > 0;
    if (r->state == RELAY_DRAINING || no_probe_now) {
        /* Draining, or sending stopped while this claim ran: give them back now rather
         * than hold them until the next probe (another worker may have a working key). */
        deliver_release_waiting(r->deliver);
    } else if (r->bulk_held_back) {
        /* Bulk rows were left for when the queue has room: a job starting claims again. */
    } else if (!all_due) {
        r->claim_wanted = false;   /* nothing more is due now: wake up when the next row is */
        claim_next_due(r->claim);
    }
    relay_kick(r);
}

void relay_on_next_due(void *ud, double in)
{
    struct relay *r = ud;
    if (in < 0 || r->state == RELAY_DRAINING || r->state == RELAY_DONE)
        return;
    /* Due already, yet not claimed: held back behind an older change in flight, or
     * locked by another worker. A completion or a NOTIFY wakes us for those; do not
     * spin on them. */
    if (in <= 0)
        in = r->cfg->poll_interval < 1 ? r->cfg->poll_interval : 1;
    if (in < r->cfg->poll_interval)
        relay_arm(r, &r->due_timer, in);
}

/* ---- completions ------------------------------------------------------------------- */

void relay_on_completed(void *ud, const struct complete_report *rep)
{
    struct relay *r = ud;
    relay_note_fault(r, RELAY_FAULT_COMPLETE, rep->error, rep->statement_failed);
    health_completed(r->health, rep);
    if (rep->sent || rep->failed || rep->statement_failed)
        r->claim_wanted = true;   /* a finished row may unblock a later change of its contact */
    /* Wake up when the soonest retry is due, not at the next poll. */
    if (rep->soonest >= 0 && r->state != RELAY_DRAINING)
        relay_arm(r, &r->due_timer, rep->soonest + 0.01);
    relay_kick(r);
}

/* ---- the one place that decides what runs next ------------------------------------- */

static bool all_settled(struct relay *r)
{
    return !claim_busy(r->claim) && !deliver_waiting(r->deliver) && deliver_in_flight(r->deliver) == 0 &&
           complete_pending(r->complete) == 0 && !reconcile_busy(r->reconcile) &&
           http_in_flight(r->http) == 0 && (!r->httpd || httpd_pending(r->httpd) == 0);
}

/* --once ends when everything it holds is settled and nothing more can go now: rows
 * were refused (stopped: exit 1), or nothing due is left: exit 1 if a row failed for
 * good, 3 if rows could not be delivered now (network, 5xx: they wait for their retry),
 * else 0. */
static void check_once(struct relay *r)
{
    if (!r->cfg->once || !db_connected(r->db) || r->state == RELAY_PAUSED || !all_settled(r))
        return;
    if (r->state == RELAY_STOPPED && gate_outage(r->gate)) {
        log_warn("--once: %s; rows left pending with their attempts (exit 3)", gate_cause(r->gate));
        relay_finish(r, 3);
        return;
    }
    if (r->state == RELAY_STOPPED) {
        log_error("--once: sending is stopped (%s); rows left pending", gate_cause(r->gate));
        relay_finish(r, 1);
        return;
    }
    const char *fault = relay_first_fault(r);
    if (fault) {
        log_error("--once: %s; exiting 1", fault);
        relay_finish(r, 1);
        return;
    }
    if (r->claim_wanted)
        return;
    struct health_totals t = health_totals(r->health);
    long long waiting = complete_waiting(r->complete);   /* retried, and not sent since */
    log_info("--once: done: %lld sent, %lld failed, %lld retried (%lld of them still waiting)",
             t.sent, t.failed, t.retried, waiting);
    if (waiting && !t.failed)
        log_warn("--once: %lld rows could not be delivered now and wait for their retry (exit 3)", waiting);
    relay_finish(r, t.failed ? 1 : waiting ? 3 : 0);
}

static void relay_step(struct relay *r)
{
    follow_gate(r);
    switch (r->state) {
    case RELAY_STARTING:
    case RELAY_DONE:
        return;
    case RELAY_RUNNING:
    case RELAY_PAUSED:
    case RELAY_STOPPED:
        deliver_pump(r->deliver);
        maybe_claim(r);
        complete_flush(r->complete);
        check_once(r);
        return;
    case RELAY_DRAINING:
        complete_flush(r->complete);
        if (all_settled(r)) {
            struct health_totals t = health_totals(r->health);
            log_info("stopped: %lld sent, %lld failed, %lld retried in this run", t.sent, t.failed, t.retried);
            relay_finish(r, r->exit_status);
        }
        return;
    }
}

void relay_on_kick(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)revents;
    ev_idle_stop(loop, w);
    relay_step(w->data);
}

/* ---- timers ------------------------------------------------------------------------ */

static struct relay *relay_of(ev_timer *w)
{
    return w->data;
}

void relay_on_wake(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = relay_of(w);
    r->claim_wanted = r->live_wanted = true;   /* the poll, a due row, the gate opening again */
    if (r->fault[RELAY_FAULT_HIDDEN][0] && db_connected(r->db))
        relay_check_hidden(r);
    relay_kick(r);
}

/* ---- leases ------------------------------------------------------------------------ */

static void on_renewed(void *ud, const long long *lost, size_t n, size_t taken)
{
    struct relay *r = ud;
    if (n == 0)
        return;
    if (taken)
        log_warn("%zu rows this worker held were claimed again by another worker after their lease "
                 "(--lease %.0f s) ran out: they are theirs now, and are not sent from here", taken,
                 r->cfg->lease);
    if (n > taken)
        log_warn("%zu rows this worker held are no longer its claim: the database lost the claim's "
                 "commit (an immediate restart with synchronous_commit off?), or someone changed "
                 "them; they are not sent from here under that claim", n - taken);
    deliver_forget(r->deliver, lost, n);
    relay_kick(r);
}

/* Renews the lease of rows held since before `before`, before it can run out. */
static void renew_leases(struct relay *r, double before)
{
    if (!db_connected(r->db))
        return;
    json_object *refs = json_object_new_array();
    deliver_add_held(r->deliver, before, now_of(r), refs);
    claim_renew(r->claim, refs, on_renewed);
    json_object_put(refs);
}

void relay_on_renew_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct relay *r = w->data;
    renew_leases(r, now_of(r) - r->cfg->lease / 3);
}

/* ---- database events --------------------------------------------------------------- */

void relay_on_db_connected(void *ud)
{
    struct relay *r = ud;
    if (r->state != RELAY_STARTING)
        notify_ready();
    metrics.db_connected = db_connected(r->aux);
    ev_timer_stop(r->loop, &r->once_db_deadline);
    r->connected_at = now_of(r);
    health_progress(r->health);
    r->notifies_since_connect = 0;
    /* Rows a lost claim may have marked for us, that we do not hold in memory. */
    json_object *held = json_object_new_array();
    deliver_add_ids(r->deliver, held);
    complete_add_ids(r->complete, held);
    claim_release_orphans(r->claim, held);
    json_object_put(held);
    renew_leases(r, now_of(r));   /* all we hold, before any claim could take it again */
    if (r->budget)
        budget_connected(r->budget);   /* the startup check's request */
    relay_check_hidden(r);
    r->claim_wanted = r->live_wanted = true; /* catch up on what came while we were away */
    relay_kick(r);
}

void relay_on_db_disconnected(void *ud)
{
    struct relay *r = ud;
    metrics.db_connected = false;
    if (r->cfg->once && r->state != RELAY_DRAINING)
        relay_arm(r, &r->once_db_deadline, ONCE_DB_TIMEOUT);
}

/* The first connection was refused for good (the preflight in main passed, so this is
 * rare: the password changed meanwhile, say): exit 2 rather than retry forever. */
void relay_on_db_refused(void *ud, const char *why)
{
    struct relay *r = ud;
    log_error("DATABASE_URL: %s; exiting", why);
    relay_finish(r, 2);
}

void relay_on_db_notified(void *ud)
{
    struct relay *r = ud;
    r->notifies_since_connect++;
    r->claim_wanted = r->live_wanted = true;
    relay_kick(r);
}

void relay_on_aux_changed(void *ud)
{
    struct relay *r = ud;
    metrics.db_connected = db_connected(r->db) && db_connected(r->aux);
    relay_kick(r);
}

/* ---- health ------------------------------------------------------------------------ */

bool relay_health(struct relay *r, char *reason, size_t size)
{
    enum health_activity a = HEALTH_IDLE_OK;
    switch (r->state) {
    case RELAY_RUNNING: a = HEALTH_SENDING; break;
    case RELAY_STOPPED: a = HEALTH_STOPPED; break;
    case RELAY_DRAINING:
    case RELAY_DONE: a = HEALTH_SHUTTING_DOWN; break;
    case RELAY_STARTING:
    case RELAY_PAUSED: break;
    }
    const char *fault = relay_first_fault(r);
    if (fault && a != HEALTH_SHUTTING_DOWN) {
        snprintf(reason, size, "%s", fault);
        return false;
    }
    return health_check(r->health, a, gate_cause(r->gate), reason, size);
}

bool relay_health_hook(void *ud, char *reason, size_t size)
{
    return relay_health(ud, reason, size);
}


/* relay_priv: the relay's parts and state, shared by relay.c (what runs next),
 * relay_setup.c (building and tearing down) and relay_faults.c (what needs someone).
 * Nothing else includes it. */
#ifndef SENDRY_RELAY_PRIV_H
#define SENDRY_RELAY_PRIV_H

#include "relay.h"

#include "audience.h"
#include "budget.h"
#include "claim.h"
#include "complete.h"
#include "db.h"
#include "deliver.h"
#include "gate.h"
#include "health.h"
#include "http.h"
#include "httpd.h"
#include "inbox.h"
#include "prune.h"
#include "reconcile.h"
#include "vault.h"

#define ONCE_DB_TIMEOUT 30.0      /* --once gives up on an unreachable database */

enum relay_fault { RELAY_FAULT_CLAIM, RELAY_FAULT_COMPLETE, RELAY_FAULT_HIDDEN, RELAY_FAULTS };

struct relay {
    struct ev_loop *loop;
    const struct config *cfg;
    enum relay_state state;
    int exit_status;
    bool claim_wanted;         /* something may be due: claim when the gate allows */
    bool live_wanted;          /* a NOTIFY, a poll or a due row: live rows may be there */
    bool bulk_held_back;       /* the last claim left bulk rows for when the queue has room */
    char locked_by[256];
    /* A claim or a completion failed for a reason that will not pass by itself (see
     * dbfault.h): one line with the fix, "" while they work. */
    char fault[RELAY_FAULTS][1024];

    struct gate *gate;
    struct budget *budget;     /* the key's requests, shared by its workers; NULL at --rate 0 */
    struct http *http;
    struct db *db;             /* the relay's connection: claim, complete, LISTEN, the budget */
    struct db *aux;            /* webhooks, reconciliation, health, pruning: never the budget */
    struct claimer *claim;
    struct deliverer *deliver;
    struct completer *complete;
    struct reconciler *reconcile;
    struct inbox *inbox;
    struct health *health;
    struct pruner *prune;
    struct audience_named *named; /* the check of the mapping's other audiences, or NULL */
    struct httpd *httpd;       /* --listen, or NULL */
    struct vault_watch *vault; /* SENDRY_API_KEY_VAULT: read again after a refusal; or NULL */

    /* NOTIFY health */
    double connected_at;       /* gate clock */
    long notifies_since_connect;
    bool warned_no_notify;

    bool drain_expired;

    ev_timer poll_timer, due_timer, claim_timer, drain_timer, stop_log_timer;
    ev_timer reconcile_timer, once_db_deadline, renew_timer;
    ev_idle kick_w;
};

/* relay.c, for relay_setup.c */
void relay_kick(struct relay *r);
void relay_kick_cb(void *ud);
void relay_arm(struct relay *r, ev_timer *t, double in);
void relay_set_state(struct relay *r, enum relay_state s);
void relay_finish(struct relay *r, int status);
void relay_on_kick(struct ev_loop *loop, ev_idle *w, int revents);
void relay_on_wake(struct ev_loop *loop, ev_timer *w, int revents);
void relay_on_claimed(void *ud, struct claim_batch *batch);
void relay_on_next_due(void *ud, double in);
void relay_on_completed(void *ud, const struct complete_report *rep);
void relay_on_db_connected(void *ud);
void relay_on_renew_timer(struct ev_loop *loop, ev_timer *w, int revents);
void relay_on_db_disconnected(void *ud);
void relay_on_db_notified(void *ud);
void relay_on_db_refused(void *ud, const char *why);
void relay_on_aux_changed(void *ud);
bool relay_health_hook(void *ud, char *reason, size_t size);

/* relay_faults.c: a claim's or completion's answer (failed: its error, NULL if the
 * connection was lost); the first fault that needs someone, or NULL; ask whether row level
 * security hides the outbox (after a connect, and at each poll while it does). */
void relay_note_fault(struct relay *r, enum relay_fault which, const PGresult *error, bool failed);
const char *relay_first_fault(const struct relay *r);
void relay_check_hidden(struct relay *r);

#endif

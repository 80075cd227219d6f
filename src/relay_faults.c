/* relay_faults: what the relay's database says needs someone, kept for /healthz and
 * --once: a claim or completion failing for a reason that will not pass by itself
 * (dbfault.h: a privilege, a missing table, column or function), and row level security
 * hiding every outbox row from the worker's role (claims succeed and find nothing). Each
 * is logged once with its fix and cleared when it no longer holds. See relay_priv.h. */
#include "relay_priv.h"

#include <stdio.h>
#include <string.h>

#include "dbfault.h"
#include "log.h"

/* Row level security hides the outbox from our role: claims find nothing, with no error
 * to see. Asked after each connect, and at each poll while it is so. */
static void on_hidden(void *ud, bool hidden, const char *role)
{
    struct relay *r = ud;
    char *slot = r->fault[RELAY_FAULT_HIDDEN];
    if (!hidden) {
        if (*slot)
            log_info("db: row level security no longer hides the outbox from role %s", role);
        *slot = '\0';
        return;
    }
    if (!*slot)
        log_error("db: row level security hides every row of public.sendry_outbox from role %s (not its "
                  "owner, no BYPASSRLS, no policy): every claim finds nothing; fix: connect as the owner of "
                  "the outbox (postgres in Supabase), or ALTER ROLE %s BYPASSRLS (as a superuser)", role, role);
    snprintf(slot, sizeof r->fault[0], "reading the outbox: row level security hides every row of "
             "public.sendry_outbox from role %s; fix: connect as the owner of the outbox (postgres in "
             "Supabase), or ALTER ROLE %s BYPASSRLS", role, role);
    relay_kick(r);   /* --once: ends the run */
}

/* A claim or completion answered: a failure that will not pass by itself is logged
 * once with its fix and kept for /healthz (and --once's exit) until the same kind of
 * statement works again. A failure that may pass (a timeout, a lost connection) changes
 * nothing here. */
void relay_note_fault(struct relay *r, enum relay_fault which, const PGresult *error, bool failed)
{
    static const char *const what[RELAY_FAULTS] = {"claiming rows", "recording outcomes", "reading the outbox"};
    char *slot = r->fault[which];
    enum db_fault f = failed ? db_fault_of(error) : DB_FAULT_NONE;
    if (f == DB_FAULT_TRANSIENT || f == DB_FAULT_PASSING)
        return;
    if (f == DB_FAULT_NONE) {
        if (*slot) {
            log_info("db: %s works again", what[which]);
            if (which == RELAY_FAULT_CLAIM)   /* a GRANT alone may leave the rows hidden */
                relay_check_hidden(r);
        }
        *slot = '\0';
        return;
    }
    char line[sizeof r->fault[0]];
    db_fault_describe(f, error, what[which], db_user(r->db), line, sizeof line);
    if (strcmp(line, slot) != 0)
        log_error("db: %s", line);
    snprintf(slot, sizeof r->fault[0], "%s", line);
}

const char *relay_first_fault(const struct relay *r)
{
    for (int i = 0; i < RELAY_FAULTS; i++)
        if (r->fault[i][0])
            return r->fault[i];
    return NULL;
}

void relay_check_hidden(struct relay *r)
{
    claim_check_hidden(r->claim, on_hidden);
}

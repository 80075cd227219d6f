/* doctor_priv: what the parts of `sendry-sync doctor` share: one check's result, the
 * state the checks hand on (the connection, the key and what Sendry said of it), and
 * the checks, each filling in one struct check. doctor.c runs them in order:
 *   doctor.c         the run, the results, text or --json output, the exit status
 *   doctor_db.c      the connection and the role, LISTEN/NOTIFY, the xmin horizon, dead rows
 *   doctor_schema.c  what install.sql creates (the one table of expected objects): its
 *                    version, the objects, the triggers, the claim index, the exposure
 *   doctor_api.c     the API key and its scopes (contacts, events), the audience, the
 *                    webhook secret
 * Nothing else includes it. */
#ifndef SENDRY_DOCTOR_PRIV_H
#define SENDRY_DOCTOR_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "config.h"

enum check_state { CHECK_OK, CHECK_WARN, CHECK_FAIL, CHECK_SKIP };

struct check {
    const char *name;
    enum check_state state;
    char detail[1024];
    char fix[1024];
};

enum key_verdict { KEY_UNTRIED, KEY_ACCEPTED, KEY_REFUSED };
enum users_table { USERS_UNKNOWN, USERS_PRESENT, USERS_ABSENT };

struct doctor {
    const struct config *cfg;
    PGconn *conn;              /* NULL when the database check failed */
    enum users_table users;
    char *vault_key;           /* owned, wiped: the key read from Vault */
    const char *key;           /* cfg->api_key or vault_key, NULL if none */
    enum key_verdict key_verdict;
    long audience_status;      /* of GET /v1/audiences/{id}; 0 = not asked */
    char audience_summary[256];
};

/* doctor.c: a check's state and detail, and how to fix it (printf formats); ", name"
 * (or "name" first) appended to a list in buf. */
void doctor_report(struct check *c, enum check_state st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void doctor_fix(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void doctor_list_add(char *buf, size_t size, const char *name);

/* doctor_db.c: true, with the check skipped, when there is no database connection; one
 * value of a one-row query with text parameters, false (the error in out) on error. */
bool doctor_skip_without_db(struct doctor *d, struct check *c);
bool doctor_value(struct doctor *d, const char *sql, int n, const char *const *params, char *out,
                  size_t size);

/* The checks, in the order they run. The database check opens d->conn and finds out
 * whether auth.users exists; the API key check sets key_verdict and what the audience
 * answered, which the audience and write scope checks read. */
void doctor_check_database(struct doctor *d, struct check *c);     /* doctor_db.c */
void doctor_check_notify(struct doctor *d, struct check *c);
void doctor_check_schema(struct doctor *d, struct check *c);       /* doctor_schema.c */
void doctor_check_objects(struct doctor *d, struct check *c);
void doctor_check_triggers(struct doctor *d, struct check *c);
void doctor_check_claim_index(struct doctor *d, struct check *c);
void doctor_check_exposure(struct doctor *d, struct check *c);
void doctor_check_api_key(struct doctor *d, struct check *c);      /* doctor_api.c */
void doctor_check_audience(struct doctor *d, struct check *c);
void doctor_check_scope(struct doctor *d, struct check *c);
void doctor_check_events_scope(struct doctor *d, struct check *c);
void doctor_check_webhook(struct doctor *d, struct check *c);
void doctor_check_horizon(struct doctor *d, struct check *c);      /* doctor_db.c */
void doctor_check_dead_rows(struct doctor *d, struct check *c);

#endif

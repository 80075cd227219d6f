#include "db_session.h"

#include <stdio.h>
#include <string.h>

const char *db_session_sql(const struct db_session *s, char *buf, size_t size)
{
    static const char *const names[] = {"statement_timeout", "lock_timeout",
                                        "idle_in_transaction_session_timeout"};
    const double secs[] = {s->statement_timeout, s->lock_timeout, s->idle_in_transaction_timeout};
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof secs / sizeof secs[0] && n < size; i++) {
        if (secs[i] <= 0)
            continue;
        long ms = (long)(secs[i] * 1000 + 0.5);
        int w = snprintf(buf + n, size - n, "%sSET %s = %ld", n ? "; " : "", names[i], ms > 0 ? ms : 1);
        n += w > 0 ? (size_t)w : 0;
    }
    return buf;
}

double db_answer_deadline(const struct db_session *s)
{
    double t = s->statement_timeout;
    return t + (t < DB_ANSWER_GRACE ? t : DB_ANSWER_GRACE);
}

/* 57014 is also a cancel by someone else, which is as much a statement that did not
 * finish. */
bool db_overdue_answer(struct db_overdue *o, const char *name, const struct db_session *s,
                       const PGresult *res, double now)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (state && strcmp(state, "57014") == 0) {
        snprintf(o->text, sizeof o->text, "%s connection: a query was cancelled at its %g s "
                 "deadline (--statement-timeout): %s", name, s->statement_timeout, msg ? msg : "canceled");
    } else if (state && strcmp(state, "55P03") == 0) {
        snprintf(o->text, sizeof o->text, "%s connection: a query waited for a lock longer than its %g s "
                 "deadline (--lock-timeout): %s", name, s->lock_timeout, msg ? msg : "lock not available");
    } else {
        /* A query that keeps getting stuck while others pass in between stays reported. */
        double hold = 2 * db_answer_deadline(s);
        if (now - o->at > (hold < DB_OVERDUE_HOLD ? hold : DB_OVERDUE_HOLD))
            o->text[0] = '\0';
        return false;
    }
    o->at = now;
    return true;
}

void db_overdue_silence(struct db_overdue *o, const char *name, const struct db_session *s, double now)
{
    snprintf(o->text, sizeof o->text, "%s connection: a query got no answer for %.0f s, past its %g s "
             "deadline (--statement-timeout); the connection was dropped and is reconnected",
             name, db_answer_deadline(s), s->statement_timeout);
    o->at = now;
}

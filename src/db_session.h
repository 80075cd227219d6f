/* db_session: what a connection's session promises, apart from the connection itself
 * (db.c): its settings as the SQL that sets them, how long a query may go unanswered,
 * and the report of a connection past its deadline (db_overdue(), /healthz) with the
 * rule that clears it. Pure: no I/O, the clock is passed in. Called by db.c (and
 * db_session_sql() by dbsync.c, through db.h). */
#ifndef SENDRY_DB_SESSION_H
#define SENDRY_DB_SESSION_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "db.h"

/* A connection's deadline report: "" while its queries are answered in time. */
struct db_overdue {
    char text[512];
    double at;          /* when the last query passed its deadline (the loop's clock) */
};

/* The running query's deadline: its statement_timeout, then as long again, at most
 * DB_ANSWER_GRACE, for the server's answer to arrive. */
double db_answer_deadline(const struct db_session *s);

/* An answer arrived at `now`: a statement or lock timeout (57014, 55P03) sets the report
 * and returns true (the caller logs it); any other answer clears an old report once no
 * query passed its deadline for two deadlines, at most DB_OVERDUE_HOLD. */
bool db_overdue_answer(struct db_overdue *o, const char *name, const struct db_session *s,
                       const PGresult *res, double now);

/* No answer by db_answer_deadline(): sets the report (the caller drops the connection). */
void db_overdue_silence(struct db_overdue *o, const char *name, const struct db_session *s, double now);

#endif

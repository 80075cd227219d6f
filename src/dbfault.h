/* dbfault: what a failed statement's SQLSTATE says about the database, for the relay's
 * claim and completion: a failure that passes by itself (a timeout, a deadlock, a
 * serialization failure, a lost connection, a server shutting down) is retried quietly;
 * one that will not (no privilege on the table, a table, column or function that does
 * not exist: the schema is missing or older than the binary; a row our functions need
 * deleted by hand) needs someone, so it is
 * named with its fix on /healthz, in the log and in --once's exit status.
 *
 * Pure functions over a PGresult; called by relay.c. */
#ifndef SENDRY_DBFAULT_H
#define SENDRY_DBFAULT_H

#include <stddef.h>

#include <libpq-fe.h>

enum db_fault {
    DB_FAULT_NONE,        /* no error */
    DB_FAULT_TRANSIENT,   /* passes by itself, and the same statement may simply run again:
                           * a statement or lock timeout (57014, 55P03), a serialization
                           * failure or deadlock (class 40), resources (class 53), the
                           * connection (class 08, 57P01-57P03) */
    DB_FAULT_PASSING,     /* anything else that needs no one: retried as the caller does
                           * (it may fail again with the same data: a check violation) */
    DB_FAULT_PRIVILEGE,   /* 42501 insufficient_privilege: a GRANT (or the owner's role) */
    DB_FAULT_SCHEMA,      /* class 42 otherwise (undefined table, column, function...), 3F000
                           * invalid_schema_name, 0A000 feature_not_supported: migrate */
    DB_FAULT_STATE        /* 55000 object_not_in_prerequisite_state: something our SQL needs
                           * is gone (sendry_event_id without the database_id row): the
                           * error's hint says what to do */
};

/* NULL (a lost connection) is TRANSIENT; a result that is not an error is NONE. */
enum db_fault db_fault_of(const PGresult *res);

/* One line: what failed (`what`: "claiming rows"), the server's message and the fix,
 * naming the role (`role`, may be NULL) in the GRANT. For PRIVILEGE, SCHEMA and STATE. */
const char *db_fault_describe(enum db_fault fault, const PGresult *res, const char *what,
                              const char *role, char *buf, size_t size);

#endif

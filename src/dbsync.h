/* dbsync: blocking libpq for the commands that run before or without the event loop
 * (migrate, doctor, status, healthcheck, and reading the API key from Vault at start).
 * Never call these from a libev callback.
 *
 * dbsync_connect() returns an open connection (the caller PQfinish()es it) whose server
 * notices go through the logger, or NULL with one line in err. dbsync_error() flattens
 * libpq's multi-line messages into one line. */
#ifndef SENDRY_DBSYNC_H
#define SENDRY_DBSYNC_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "db.h"

/* The session settings every connection dbsync_connect() opens SETs first (main sets
 * them once from the configuration; until then none): the commands' statements have the
 * same statement, lock and idle-in-transaction timeouts as the worker's. */
void dbsync_set_session(const struct db_session *session);

/* application_name defaults to appname; connect_timeout to timeout_s, unless the
 * connection string sets them. */
PGconn *dbsync_connect(const char *conninfo, const char *appname, int timeout_s, char *err,
                       size_t errsize);

/* The worker's check of DATABASE_URL before its loop starts: 2 with one line in err when
 * it can never work (not a connection string; the server refuses the password, the role
 * or the database; the host name does not resolve), else 0 (a server that is only down
 * or starting is left to the worker's reconnects). */
int dbsync_preflight(const char *conninfo, char *err, size_t errsize);

/* msg with newlines and tabs turned into spaces and the ends trimmed, into buf. */
const char *dbsync_error(const char *msg, char *buf, size_t bufsize);

/* A failed result's message in one line: the primary message ("permission denied for
 * ..."), without libpq's "ERROR:" prefix; the whole text if it has none. */
const char *dbsync_result_error(const PGresult *res, char *buf, size_t bufsize);

/* A statement that returns no rows: true, or false with the one-line error in err. */
bool dbsync_exec(PGconn *conn, const char *sql, char *err, size_t errsize);

/* A query with optional text parameters that returns rows: its result (the caller
 * PQclears it), or NULL with the one-line error in err. */
PGresult *dbsync_rows(PGconn *conn, const char *sql, int nparams, const char *const *params, char *err,
                      size_t errsize);

/* A one-row, one-column query with optional text parameters: the value copied into
 * out (the empty string for NULL). Returns false with the one-line error in out. */
bool dbsync_scalar(PGconn *conn, const char *sql, int nparams, const char *const *params,
                  char *out, size_t outsize);

#endif

/* db: one PostgreSQL connection driven by a libev loop, never blocking.
 *
 * Connects with PQconnectStartParams, optionally LISTENs on a channel, runs queued
 * queries one at a time (PQsendQueryParams; a named statement, db_query_named, is
 * prepared once per connection and then executed by name), hands notifications to a
 * callback, and
 * reconnects with capped exponential backoff (jittered per process) when the connection
 * is lost. A worker holds two: one for the relay (claim, complete) and one for
 * everything else (webhooks, reconciliation, metrics), so neither waits behind the other.
 *
 * Callbacks never run inside the call that caused them: db_query() only queues and
 * returns; results, failures and connection events are delivered from the loop.
 * Queries queued while disconnected wait for the next connection; a query in flight when
 * the connection drops gets its callback with res == NULL (its outcome is unknown).
 *
 * Timeouts (db_set_session): every new connection first SETs statement_timeout,
 * lock_timeout and idle_in_transaction_session_timeout, so the server itself ends a
 * statement of ours that runs or waits for a lock too long (it fails with SQLSTATE 57014
 * or 55P03, and its locks are gone). Every query also has a deadline of its own: the
 * statement timeout and as long again, at most DB_ANSWER_GRACE, more. A query with no answer by then (the server
 * or the network stopped answering, or something reset our statement_timeout) drops the
 * connection: libpq 15's PQcancel opens a new connection and blocks, which a libev
 * callback must not do, and a server that does not answer would not act on a cancel
 * either; a live server ends the statement at its statement_timeout. Both count as the
 * connection being past its deadline (db_overdue). */
#ifndef SENDRY_DB_H
#define SENDRY_DB_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>
#include <libpq-fe.h>

struct db;

/* The session settings, in seconds (0: left as the server has them). */
struct db_session {
    double statement_timeout, lock_timeout, idle_in_transaction_timeout;
};

/* A query with no answer this long (or its statement_timeout if shorter) after its
 * statement_timeout drops the connection. */
#define DB_ANSWER_GRACE 5.0
/* A connection past its deadline is reported (db_overdue) at most this long after the
 * last query that passed it, once queries are answered in time again. */
#define DB_OVERDUE_HOLD 30.0

/* res is borrowed: valid only during the callback. NULL: the connection was lost. */
typedef void (*db_result_cb)(PGresult *res, void *arg);

struct db_callbacks {
    void (*connected)(void *ud);      /* after LISTEN (if any) succeeded, on every (re)connect */
    void (*disconnected)(void *ud);   /* the connection was lost; a reconnect is scheduled */
    void (*notified)(void *ud);       /* a NOTIFY arrived on the channel */
    /* Before the first connection: the server refused it in a way no retry can mend (a
     * wrong password, a role or database that does not exist, a host name that does not
     * resolve). Retries go on; the caller decides (the worker exits 2). May be NULL. */
    void (*refused)(void *ud, const char *why);
    void *ud;
};

/* name labels log lines ("relay", "aux"); channel NULL: no LISTEN. Strings are copied. */
struct db *db_new(struct ev_loop *loop, const char *name, const char *conninfo,
                  const char *channel, struct db_callbacks cbs);
/* Before db_start: the timeouts every connection sets (copied). */
void db_set_session(struct db *db, const struct db_session *session);
void db_start(struct db *db);
/* Closes the connection. Queued and running queries get no callback. */
void db_free(struct db *db);

/* Queues a query (params are copied) and returns; cb (may be NULL) runs from the loop. */
void db_query(struct db *db, const char *sql, int nparams, const char *const *params,
              db_result_cb cb, void *arg);
/* db_query for a statement run often: prepared on the connection the first time
 * (PQsendPrepare), then executed by name, so that it is not planned at every run (the
 * claim's planning took longer than its execution for a row or two). The server may run
 * it with a generic plan after a few runs: tests/test_hot_plans.py checks that plan too.
 * name identifies sql: a string in static storage, the same pointer for the same sql,
 * at most DB_MAX_NAMED of them (db_named.h, which owns what is prepared). A prepared statement the server no longer has or whose
 * result type an upgrade changed is prepared again, once (the failed execution did
 * nothing); through a transaction-mode pooler preparing stops. */
void db_query_named(struct db *db, const char *name, const char *sql, int nparams,
                    const char *const *params, db_result_cb cb, void *arg);
/* The named statements are prepared (planned) anew, under new names, after the queries
 * queued now; the old ones are deallocated by name (never DEALLOCATE ALL: through a
 * pooler that would drop other clients' statements). A plan keeps what held when it was
 * made, row level security among them (a role given BYPASSRLS still finds nothing with a
 * plan made before). */
void db_replan(struct db *db);
/* db_query, ahead of every query queued: for what must run first on a new connection,
 * before statements queued while the last one was going down (a claim among them). */
void db_query_first(struct db *db, const char *sql, int nparams, const char *const *params,
                    db_result_cb cb, void *arg);

/* True for a connection failure no retry can mend: a wrong password, a role or database
 * that does not exist, a host name that does not resolve, a bad connection option. */
bool db_error_is_permanent(const char *err);

bool db_connected(const struct db *db);
bool db_idle(const struct db *db);    /* connected, nothing running or queued */
/* Why the last connection attempt or the connection failed ("" if none). */
const char *db_last_error(const struct db *db);
/* "" or one line saying that a query on this connection passed its deadline (the server
 * cancelled it at its statement or lock timeout, or no answer came and the connection was
 * dropped), until a later query on it is answered in time, two deadlines (at most
 * DB_OVERDUE_HOLD) after the last one that was not. */
const char *db_overdue(const struct db *db);
/* The role the connection is logged in as ("" while disconnected). */
const char *db_user(const struct db *db);

/* The SET statements of `session` (one string, semicolon-separated) into buf; "" when it
 * sets nothing. Used for the worker's connections and the commands' (dbsync.c). */
const char *db_session_sql(const struct db_session *session, char *buf, size_t size);

#endif

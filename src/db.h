/* db: one PostgreSQL connection driven by a libev loop, never blocking.
 *
 * Connects with PQconnectStartParams, optionally LISTENs on a channel, runs queued
 * queries one at a time (PQsendQueryParams), hands notifications to a callback, and
 * reconnects with capped exponential backoff (jittered per process) when the connection
 * is lost. A worker holds two: one for the relay (claim, complete) and one for
 * everything else (webhooks, reconciliation, metrics), so neither waits behind the other.
 *
 * Callbacks never run inside the call that caused them: db_query() only queues and
 * returns; results, failures and connection events are delivered from the loop.
 * Queries queued while disconnected wait for the next connection; a query in flight when
 * the connection drops gets its callback with res == NULL (its outcome is unknown). */
#ifndef SENDRY_DB_H
#define SENDRY_DB_H

#include <stdbool.h>

#include <ev.h>
#include <libpq-fe.h>

struct db;

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
void db_start(struct db *db);
/* Closes the connection. Queued and running queries get no callback. */
void db_free(struct db *db);

/* Queues a query (params are copied) and returns; cb (may be NULL) runs from the loop. */
void db_query(struct db *db, const char *sql, int nparams, const char *const *params,
              db_result_cb cb, void *arg);
/* The same, ahead of every query queued: for what must run first on a new connection,
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

#endif

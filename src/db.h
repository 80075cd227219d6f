/* db: one PostgreSQL connection driven by a libev loop, never blocking.
 *
 * Connects with PQconnectStartParams, LISTENs on a channel, runs queued queries one at
 * a time (PQsendQueryParams), hands notifications to a callback, and reconnects with
 * capped exponential backoff when the connection is lost. Queries queued while
 * disconnected wait for the next connection; a query in flight when the connection
 * drops gets its callback with res == NULL (its outcome is unknown). */
#ifndef SENDRY_DB_H
#define SENDRY_DB_H

#include <stdbool.h>

#include <ev.h>
#include <libpq-fe.h>

struct db;

/* res is borrowed: valid only during the callback. NULL: the connection was lost. */
typedef void (*db_result_cb)(PGresult *res, void *arg);

struct db_callbacks {
    void (*connected)(void *ud);      /* after LISTEN succeeded, on every (re)connect */
    void (*disconnected)(void *ud);   /* the connection was lost; a reconnect is scheduled */
    void (*notified)(void *ud);       /* a NOTIFY arrived on the channel */
    void *ud;
};

struct db *db_new(struct ev_loop *loop, const char *conninfo, const char *channel,
                  struct db_callbacks cbs);
void db_start(struct db *db);
void db_free(struct db *db);   /* closes the connection; queued callbacks are not called */

/* Queues a query; params are copied. Returns false on allocation failure. */
bool db_query(struct db *db, const char *sql, int nparams, const char *const *params,
              db_result_cb cb, void *arg);

bool db_connected(const struct db *db);
bool db_idle(const struct db *db);    /* connected, nothing running or queued */
/* Why the last connection attempt or the connection failed ("" if none). */
const char *db_last_error(const struct db *db);

#endif

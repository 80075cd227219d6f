/* prune: sent rows do not pile up. Every minute (sooner while there is more to do), sent
 * rows older than --retain-sent days are deleted, at most 1000 a statement, walking the
 * primary key from the oldest rows: each statement is a short transaction of its own,
 * locks only the rows it deletes (SKIP LOCKED, so workers never wait for each other),
 * and needs no index beyond the primary key. Pending and failed rows are never
 * deleted: failed ones stay until an operator requeues or deletes them.
 * Owned by the relay; runs on the aux connection (borrowed). */
#ifndef SENDRY_PRUNE_H
#define SENDRY_PRUNE_H

#include <ev.h>

#include "db.h"

struct pruner;

/* retain_days 0: never started (sent rows are kept). */
struct pruner *prune_new(struct ev_loop *loop, struct db *db, double retain_days);
void prune_start(struct pruner *p);
void prune_stop(struct pruner *p);
void prune_free(struct pruner *p);

#endif

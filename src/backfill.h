/* backfill: `sendry-sync backfill` and `sendry-sync reconcile-contacts`, the README's
 * backfill INSERT ... SELECT for people who prefer a command, and the repair pass.
 *
 * Both walk auth.users in id order, --chunk-size users per transaction, through
 * public.sendry_reconcile_contacts(): a user whose contact, as the mapping renders it
 * now, is what was last enqueued (pending or sent) is skipped, the others are enqueued
 * as bulk rows (below live changes, within the key's budget). The position is kept in
 * the database, so an interrupted run (Ctrl-C, a lost connection) goes on where it
 * stopped and enqueues nothing twice. --dry-run walks the same users, read-only, through
 * sendry_changed_contacts() (what the real step writes from) and prints exactly what the
 * run would enqueue, the requests and the time they take at --rate. Progress (of every
 * user in auth.users): a bar on a terminal, a log line every 5 s otherwise. Blocking
 * libpq: runs without the loop. */
#ifndef SENDRY_BACKFILL_H
#define SENDRY_BACKFILL_H

#include "config.h"

/* Exit status: 0 done, 1 a database error or interrupted (run it again to go on). */
int backfill_run(const struct config *cfg);
int reconcile_contacts_run(const struct config *cfg);

#endif

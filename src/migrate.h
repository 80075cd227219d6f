/* migrate: `sendry-sync migrate` applies the sql/install.sql embedded in the binary
 * (blocking libpq: it runs without the event loop); `migrate --print` writes it to
 * stdout instead, byte for byte, for a Supabase migration file. Returns the exit status. */
#ifndef SENDRY_MIGRATE_H
#define SENDRY_MIGRATE_H

#include "config.h"

/* sql/install.sql, and the version its sendry_schema_version() returns, embedded at
 * build time (see the Makefile). */
extern const char sendry_install_sql[];
extern const char sendry_schema_version[];

int migrate_run(const struct config *cfg);

#endif

/* doctor: `sendry-sync doctor`, one command that checks what breaks in production and
 * says how to fix each thing: the database and the role, LISTEN/NOTIFY through this
 * connection (a transaction-mode pooler drops it), install.sql and its version, the
 * triggers on auth.users, the claim index, what anon and authenticated can reach, the
 * API key, its scope and the audience, the webhook secret, the xmin horizon and the
 * outbox's dead rows. Text or --json on stdout.
 *
 * Blocking libpq and libcurl (it runs without the event loop). Called by main.c for
 * CMD_DOCTOR; returns the exit status: 0 all good, 1 warnings, 2 failures. The checks
 * are in doctor_db.c, doctor_schema.c and doctor_api.c, run and reported by doctor.c
 * (see doctor_priv.h). The objects it expects are one table in doctor_schema.c
 * (`expected`): change it with sql/install.sql. */
#ifndef SENDRY_DOCTOR_H
#define SENDRY_DOCTOR_H

#include "config.h"

int doctor_run(const struct config *cfg);

#endif

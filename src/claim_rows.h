/* claim_rows: a claim's result put together into contacts and chains (struct row): the
 * rows of one user coalesced into their newest contact (its render at the claim, the
 * move from where Sendry may hold it), then its events in order. Pure: reads the
 * PGresult of claim.c's CLAIM_SQL, no I/O. */
#ifndef SENDRY_CLAIM_ROWS_H
#define SENDRY_CLAIM_ROWS_H

#include <libpq-fe.h>

#include "claim.h"

/* Fills batch->rows and batch->n (and counts batch->fresh: first attempts younger than
 * fresh_window seconds) from the claim's result; audience_id is the default audience. */
void claim_rows_fill(PGresult *res, const char *audience_id, double fresh_window, struct claim_batch *batch);

#endif

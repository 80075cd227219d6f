/* webhook: checks and reads the events Sendry POSTs to us. Pure functions, no I/O.
 *
 * Sendry's sources disagree on the signature (sendry-api.md section 6), so both schemes
 * are accepted, told apart by the header value itself:
 *   timestamped  "t=<unix>,v1=<hex>"   HMAC-SHA256(secret, "<t>.<raw body>"), |now - t| <= 300 s
 *   body         "<hex>" | "sha256=<hex>"  HMAC-SHA256(secret, raw body)
 * The key is the secret string as-is, "whsec_" prefix included. Signatures are 64 hex
 * digits (either case) and are compared as 32 raw bytes in constant time. */
#ifndef SENDRY_WEBHOOK_H
#define SENDRY_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>

/* How far the timestamp of the timestamped scheme may be from now, either way. */
#define WEBHOOK_TOLERANCE 300.0

/* Buffer sizes that always fit webhook_parse()'s outputs for the ids and types the
 * receiver accepts (longer ones make webhook_parse() fail). */
#define WEBHOOK_ID_SIZE 256
#define WEBHOOK_TYPE_SIZE 128

enum sig_result {
    SIG_OK,          /* a signature matched (and, if timestamped, the time is within tolerance) */
    SIG_MISSING,     /* no header, or only blanks */
    SIG_MALFORMED,   /* neither scheme: bad hex, wrong length, t= without v1=, ... */
    SIG_MISMATCH,    /* well-formed, but no signature matches */
    SIG_STALE        /* timestamped, the MAC matches, but t is more than 300 s from now */
};

/* Verifies `header` (the signature header value, NULL if absent) against the raw body
 * of `len` bytes. `now` is the current Unix time. The MAC is checked before the
 * timestamp's age, so SIG_STALE is only ever reported for a genuine signature.
 * *scheme_out (if scheme_out is not NULL) is set to a static string, "timestamped" or
 * "body", once the scheme is known, else to "none". A NULL or empty secret never verifies. */
enum sig_result webhook_verify(const char *secret, const char *header, const char *body, size_t len,
                               double now, const char **scheme_out);

/* A short static description of a result, for logs and error bodies. */
const char *webhook_sig_str(enum sig_result r);

/* Reads the envelope of an event body of `len` bytes (not NUL-terminated necessarily).
 * Returns false if the body is not exactly one JSON object (strict JSON, valid UTF-8,
 * no NUL byte, nothing but whitespace after it), or if an output does not fit its
 * buffer (no silent truncation: the id deduplicates and the type selects the action).
 * event_id: the envelope's "id" if it is a non-empty string, else "sha256:" followed by
 * the lower-case hex SHA-256 of the raw body (71 characters).
 * type: "type" if it is a non-empty string, else the legacy "event", else "unknown".
 * On failure both outputs are empty strings. */
bool webhook_parse(const char *body, size_t len, char *event_id, size_t id_size, char *type,
                   size_t type_size);

#endif

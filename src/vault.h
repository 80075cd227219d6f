/* vault: the Sendry API key from Supabase Vault (SENDRY_API_KEY_VAULT=<secret name>).
 *
 *   vault_load_key()   main, before the event loop starts: connects (blocking), reads
 *                      the secret from vault.decrypted_secrets into cfg->api_key.
 *   vault_read_key()   the same on a connection the caller holds (doctor).
 *   vault_watch        the relay's: after Sendry rejects the key (401/403) the relay calls
 *                      vault_watch_kick(); the watch reads the secret again through the
 *                      relay's async connection (db_query), at once and then with backoff
 *                      (2 s doubling to 60 s) until it holds another key, hands that key to
 *                      its callback (which swaps it into the HTTP client) and stops.
 *                      vault_watch_calm() stops it early (Sendry accepted the key again).
 *
 * The key is never logged; the watch's copy is wiped when replaced or freed. Errors are
 * one line naming SENDRY_API_KEY_VAULT and the fix. */
#ifndef SENDRY_VAULT_H
#define SENDRY_VAULT_H

#include <stddef.h>

#include <ev.h>
#include <libpq-fe.h>

#include "config.h"
#include "db.h"

enum vault_status {
    VAULT_OK = 0,
    VAULT_NO_SECRET,      /* no row with that name */
    VAULT_NOT_INSTALLED,  /* no schema vault / view vault.decrypted_secrets */
    VAULT_NO_PRIVILEGE,   /* the role may not read it */
    VAULT_BAD_SECRET,     /* NULL (not decryptable), empty, or not a key */
    VAULT_DB_ERROR        /* anything else, the connection included */
};

/* Exit status: 0 (cfg->api_key set), 1 (database unreachable: a restart may help) or
 * 2 (a missing secret, extension or privilege: one line in err). */
int vault_load_key(struct config *cfg, char *err, size_t errsize);

/* Reads secret `name` on conn into *key (malloc'd; the caller wipes and frees it). */
enum vault_status vault_read_key(PGconn *conn, const char *name, char **key, char *err,
                                 size_t errsize);

struct vault_watch;
typedef void (*vault_key_cb)(const char *new_key, void *ud);

/* db is borrowed and must outlive the watch; name and current_key are copied. */
struct vault_watch *vault_watch_new(struct ev_loop *loop, struct db *db, const char *name,
                                    const char *current_key, vault_key_cb cb, void *ud);
void vault_watch_kick(struct vault_watch *w);
void vault_watch_calm(struct vault_watch *w);
/* Call after db_free() (which drops a query in flight without its callback), or while
 * no query is in flight. NULL is a no-op. */
void vault_watch_free(struct vault_watch *w);

#endif

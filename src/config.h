/* config: the worker's settings, from the environment first, then flags.
 *
 * config_load() fills a struct config or writes one line naming the bad setting into
 * err and returns false (the caller exits 2). Strings in struct config are owned by it
 * and freed by config_free(). The API key is read but never printed.
 *
 * Called by main.c (config_load, config_usage), vault.c (config_check_api_key) and
 * doctor (config_key_source_name). config.c loads; the option table and --help are in
 * config_options.c, the key sources in config_keys.c, the checks in config_validate.c
 * (see config_priv.h). */
#ifndef SENDRY_CONFIG_H
#define SENDRY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "log.h"

#define SENDRY_SYNC_VERSION "0.1.0"

/* The shortest webhook signing secret --listen accepts. */
#define WEBHOOK_SECRET_MIN 16
#define SENDRY_MAX_BATCH 1000
/* The most requests one job makes: an email change that finds both addresses (move,
 * import, look-up, delete). */
#define SENDRY_JOB_MAX_REQUESTS 4

enum send_mode { MODE_IMPORT = 0, MODE_SINGLE };
/* The first argument picks the command; the worker (CMD_RUN) when there is none. */
enum command { CMD_RUN = 0, CMD_MIGRATE, CMD_DOCTOR, CMD_STATUS, CMD_HEALTHCHECK, CMD_BACKFILL,
               CMD_RECONCILE_CONTACTS, CMD_HELP, CMD_VERSION };
/* Where the API key comes from: exactly one of SENDRY_API_KEY, SENDRY_API_KEY_FILE
 * (--api-key-file) and SENDRY_API_KEY_VAULT (--api-key-vault). */
enum key_source { KEY_NONE = 0, KEY_ENV, KEY_FILE, KEY_VAULT };
enum output_format { OUTPUT_TEXT = 0, OUTPUT_JSON };       /* doctor, status: --json */
enum migrate_action { MIGRATE_APPLY = 0, MIGRATE_PRINT, MIGRATE_STATUS }; /* migrate --print, --status */

struct config {
    enum command command;
    char *database_url;
    char *api_key;          /* NULL with KEY_VAULT until vault_load_key() read it */
    enum key_source key_source;
    char *api_key_vault;    /* KEY_VAULT: the secret's name in vault.decrypted_secrets */
    char *api_key_file;     /* KEY_FILE: the file, read again on SIGHUP */
    char *ca_file;          /* --ca-file / SENDRY_CA_FILE: CA bundle for the API, or NULL */
    char *audience_id;
    char *api_url;          /* without a trailing slash */
    int batch_size;         /* 1..1000 */
    int concurrency;        /* requests in flight */
    double rate;            /* requests per second, 0 = unlimited */
    double live_share;      /* percent of the request budget bulk work leaves to live rows */
    double lease;           /* seconds */
    int max_attempts;
    double poll_interval;   /* seconds */
    double backoff_base;    /* seconds */
    double backoff_cap;     /* seconds */
    double http_timeout;    /* seconds */
    double drain_timeout;   /* seconds to wait for in-flight requests on SIGTERM */
    double statement_timeout; /* seconds: every session's statement_timeout (the relay's: at most lease / 6) */
    double lock_timeout;    /* seconds: every session's lock_timeout */
    double idle_in_transaction_timeout; /* seconds: idle_in_transaction_session_timeout */
    double reconcile_interval; /* seconds between reconciliations, 0 = off */
    double retain_sent;     /* days sent rows are kept, 0 = forever */
    int chunk_size;         /* backfill, reconcile-contacts: users per transaction */
    bool dry_run;           /* backfill: count and estimate only */
    bool backfill_events;   /* backfill --events: also replay user.signed_up (bulk event rows) */
    char *listen;           /* --listen / SENDRY_LISTEN ADDR:PORT, NULL = no HTTP server */
    char *webhook_secret;   /* SENDRY_WEBHOOK_SECRET, at least WEBHOOK_SECRET_MIN characters */
    size_t webhook_max_body;
    int webhook_queue;      /* webhooks waiting for the database at most; more: 503 */
    double retry_for;       /* seconds since enqueued before a transient failure may fail a row */
    double rate_window;     /* seconds: the provider counts --rate x this per window */
    enum send_mode mode;
    bool once;
    bool verify;
    enum log_format log_format;
    enum log_level log_level;
    enum output_format output;
    enum migrate_action migrate_action;
    bool migrate_status;    /* migrate --status (with --print: an error) */
    double migrate_deadline; /* migrate: seconds a step may retry its locks (--lock-deadline) */
    double migrate_lock_timeout; /* migrate: lock_timeout of a step's attempt, seconds */
};

/* Parses argv (argv[0] is the program) over the environment. */
bool config_load(struct config *cfg, int argc, char **argv, char *err, size_t errsize);
void config_free(struct config *cfg);

/* Checks an API key read after config_load() (from Vault): not empty, no whitespace or
 * control characters. `source` names it in the message ("SENDRY_API_KEY_VAULT ..."). */
bool config_check_api_key(const char *key, const char *source, char *err, size_t errsize);

/* The key file read again (SIGHUP): the new key in *key (malloc'd; the caller wipes and
 * frees it), or false with one line in err. */
bool config_reread_key_file(const struct config *cfg, char **key, char *err, size_t errsize);

/* "SENDRY_API_KEY", "SENDRY_API_KEY_FILE" or "SENDRY_API_KEY_VAULT" (for messages). */
const char *config_key_source_name(enum key_source source);

/* The --help text. */
void config_usage(FILE *out);

#endif

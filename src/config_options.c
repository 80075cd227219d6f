/* config_options: the option table, --help generated from it, and one flag's value
 * into struct config (a parser per kind of value). Called by config.c; see config_priv.h. */
#include "config_priv.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct option_def options[] = {
    {"database-url", OPT_STRING, OFF(database_url), 0, 0, "URL",
     "PostgreSQL connection string (env DATABASE_URL)", ALL},
    {"audience-id", OPT_STRING, OFF(audience_id), 0, 0, "ID",
     "Sendry audience to add contacts to (env SENDRY_AUDIENCE_ID)", ALL},
    {"api-url", OPT_STRING, OFF(api_url), 0, 0, "URL",
     "Sendry API base URL (env SENDRY_API_URL, default https://api.sendry.online)", ALL},
    {"api-key-file", OPT_STRING, OFF(api_key), 0, 0, "FILE",
     "read the API key from FILE (env SENDRY_API_KEY_FILE; or env SENDRY_API_KEY)", ALL},
    {"api-key-vault", OPT_STRING, OFF(api_key_vault), 0, 0, "NAME",
     "read the API key from Supabase Vault (secret NAME in vault.decrypted_secrets),\n"
     "at start and after a 401 (env SENDRY_API_KEY_VAULT)", ALL},
    {"ca-file", OPT_STRING, OFF(ca_file), 0, 0, "FILE",
     "trust the CA certificates in FILE (PEM) for the API: a private CA or a\n"
     "TLS-intercepting proxy (env SENDRY_CA_FILE; default the system's bundle)", ALL},
    {"mode", OPT_MODE, OFF(mode), 0, 0, "import|single",
     "import: POST /v1/contacts/import, one request per claimed batch (default);\n"
     "single: POST /v1/contacts, one request per row", ALL},
    {"batch-size", OPT_INT, OFF(batch_size), 1, SENDRY_MAX_BATCH, "N",
     "rows per claim and per import request, 1-1000 (default 1000)", ALL},
    {"concurrency", OPT_INT, OFF(concurrency), 1, 64, "N",
     "HTTP requests in flight at once, 1-64 (default 4)", ALL},
    {"rate", OPT_RATE, OFF(rate), 0, 1000, "N",
     "requests per second, 0 = unlimited (default 9; Sendry allows 100 per 10 s)", ALL},
    {"rate-window", OPT_SECONDS, OFF(rate_window), 1, 3600, "SECONDS",
     "the provider's rate-limit window: no window this long carries more than\n"
     "--rate x SECONDS requests from all workers of the key (default 10, Sendry's)", ALL},
    {"live-share", OPT_RATE, OFF(live_share), 0, 90, "PERCENT",
     "share of the request budget that bulk work (backfills, reconciliation)\n"
     "leaves to live changes, 0-90 (default 20)", ALL},
    {"lease", OPT_SECONDS, OFF(lease), 1, 86400, "SECONDS",
     "how long a claimed row is held before another worker may take it, renewed\n"
     "every third of it while held: a killed worker's rows are free after it (default 30)", ALL},
    {"max-attempts", OPT_INT, OFF(max_attempts), 1, 1000, "N",
     "attempts before a row may be marked failed (with --retry-for), unless the row\n"
     "sets max_attempts (default 12)", ALL},
    {"retry-for", OPT_SECONDS, OFF(retry_for), 0, 31536000, "SECONDS",
     "a row's own transient failures (network, 408, 5xx) fail it only after\n"
     "--max-attempts attempts and this long since it was enqueued (default 259200: 72 h)", ALL},
    {"poll-interval", OPT_SECONDS, OFF(poll_interval), 0.05, 86400, "SECONDS",
     "look for due rows this often even without a NOTIFY (default 5)", ALL},
    {"backoff-base", OPT_SECONDS, OFF(backoff_base), 0.001, 86400, "SECONDS",
     "first retry delay; doubles each attempt, with full jitter (default 1)", ALL},
    {"backoff-cap", OPT_SECONDS, OFF(backoff_cap), 0.001, 604800, "SECONDS",
     "longest retry delay (default 3600)", ALL},
    {"http-timeout", OPT_SECONDS, OFF(http_timeout), 0.1, 600, "SECONDS",
     "timeout of one HTTP request (default 30)", ALL},
    {"statement-timeout", OPT_SECONDS, OFF(statement_timeout), 0.1, 86400, "SECONDS",
     "the server ends a statement of ours after this (statement_timeout); a query\n"
     "with no answer by then and as long again (at most 5 s) more drops its\n"
     "connection (default 30)", ALL},
    {"lock-timeout", OPT_SECONDS, OFF(lock_timeout), 0.1, 86400, "SECONDS",
     "a statement of ours waits at most this for a lock (lock_timeout; default 2)", ALL},
    {"idle-in-transaction-timeout", OPT_SECONDS, OFF(idle_in_transaction_timeout), 1, 86400, "SECONDS",
     "the server ends a session of ours left idle inside a transaction\n"
     "(idle_in_transaction_session_timeout; default 60)", ALL},
    {"drain-timeout", OPT_SECONDS, OFF(drain_timeout), 0, 600, "SECONDS",
     "on SIGTERM, wait this long for requests in flight (default 10)", ALL},
    {"reconcile-interval", OPT_SECONDS, OFF(reconcile_interval), 0, 604800, "SECONDS",
     "page Sendry's unsubscribes and suppressions into the inbox this often,\n"
     "0 = off (default 3600)", ALL},
    {"retain-sent", OPT_RATE, OFF(retain_sent), 0, 3650, "DAYS",
     "delete sent rows older than this, in small batches; 0 = keep them (default 7)",
     FOR(CMD_RUN)},
    {"chunk-size", OPT_INT, OFF(chunk_size), 1, 100000, "N",
     "backfill, reconcile-contacts: users per transaction (default 5000)",
     FOR(CMD_BACKFILL) | FOR(CMD_RECONCILE_CONTACTS)},
    {"dry-run", OPT_FLAG, OFF(dry_run), 0, 0, NULL,
     "backfill, reconcile-contacts: count and estimate, change nothing",
     FOR(CMD_BACKFILL) | FOR(CMD_RECONCILE_CONTACTS)},
    {"listen", OPT_STRING, OFF(listen), 0, 0, "ADDR:PORT",
     "serve POST /webhooks/sendry, GET /healthz and GET /metrics\n"
     "(env SENDRY_LISTEN; off by default; needs SENDRY_WEBHOOK_SECRET)", ALL},
    {"webhook-queue", OPT_INT, OFF(webhook_queue), 1, 10000, "N",
     "webhooks waiting for the database at most; more are answered 503 with\n"
     "Retry-After (Sendry redelivers them) (default 64)", FOR(CMD_RUN)},
    {"once", OPT_FLAG, OFF(once), 0, 0, NULL,
     "deliver what is due now, wait for the results, exit (1 if a row failed)", FOR(CMD_RUN)},
    {"no-verify", OPT_FLAG, OFF(verify), 0, 0, NULL,
     "skip the startup check of the audience (GET /v1/audiences/{id})", FOR(CMD_RUN)},
    {"json", OPT_FLAG, OFF(output), 0, 0, NULL,
     "doctor, status: print one JSON object instead of text", FOR(CMD_DOCTOR) | FOR(CMD_STATUS)},
    {"print", OPT_FLAG, OFF(migrate_action), 0, 0, NULL,
     "migrate: write sql/install.sql (the steps, for psql or supabase/migrations)\n"
     "to stdout instead of applying them", FOR(CMD_MIGRATE)},
    {"status", OPT_FLAG, OFF(migrate_status), 0, 0, NULL,
     "migrate: list the steps applied and pending, apply nothing", FOR(CMD_MIGRATE)},
    {"lock-deadline", OPT_SECONDS, OFF(migrate_deadline), 1, 3600, "SECONDS",
     "migrate: how long a step may retry its locks before it gives up, changing\n"
     "nothing (default 60)", FOR(CMD_MIGRATE)},
    {"step-lock-timeout", OPT_SECONDS, OFF(migrate_lock_timeout), 0.01, 10, "SECONDS",
     "migrate: the lock_timeout of each attempt: the longest a write to auth.users or\n"
     "the outbox may queue behind a step (default 0.1)", FOR(CMD_MIGRATE)},
    {"log-format", OPT_LOGFMT, OFF(log_format), 0, 0, "text|json",
     "log lines as text (default) or one JSON object per line", ALL},
    {"verbose", OPT_FLAG, OFF(log_level), 0, 0, NULL,
     "debug logging (shows full email addresses)", ALL},
};

#define N_OPTIONS (sizeof options / sizeof options[0])

void config_usage(FILE *out)
{
    fprintf(out,
            "Usage: sendry-sync [OPTIONS]          deliver the outbox to Sendry\n"
            "       sendry-sync migrate [--status|--print]  apply the pending SQL steps (or list them, or print install.sql)\n"
            "       sendry-sync doctor [--json]    check what breaks in production, say how to fix it\n"
            "       sendry-sync status [--json]    the outbox at a glance\n"
            "       sendry-sync healthcheck        0 if healthy (the local /healthz with --listen,\n"
            "                                      else the database), 1 if not\n"
            "       sendry-sync backfill [--dry-run] [--chunk-size N]\n"
            "                                      enqueue every user not yet pending or sent\n"
            "       sendry-sync reconcile-contacts [--dry-run] [--chunk-size N]\n"
            "                                      enqueue users whose contact differs from the last sent\n"
            "       sendry-sync --help | --version\n\n"
            "Environment: DATABASE_URL, SENDRY_API_KEY or SENDRY_API_KEY_FILE or\n"
            "SENDRY_API_KEY_VAULT, SENDRY_AUDIENCE_ID, SENDRY_API_URL, SENDRY_CA_FILE,\n"
            "SENDRY_LISTEN, SENDRY_WEBHOOK_SECRET. Flags override the environment.\n"
            "Proxies: https_proxy (or HTTPS_PROXY) and NO_PROXY, as libcurl reads them.\n\n"
            "Options:\n");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        char head[64];
        snprintf(head, sizeof head, "--%s%s%s", options[i].name, options[i].arg ? " " : "",
                 options[i].arg ? options[i].arg : "");
        const char *h = options[i].help;
        fprintf(out, "  %-26s ", head);
        for (const char *p = h; *p; p++) {
            fputc(*p, out);
            if (*p == '\n')
                fprintf(out, "  %-26s ", "");
        }
        fputc('\n', out);
    }
    fprintf(out, "  %-26s show this help\n  %-26s show the version\n\n"
                 "Exit status: 0 done (or stopped by SIGTERM/SIGINT), 1 runtime error\n"
                 "(or, with --once, a row failed), 2 bad configuration or rejected API key/audience,\n"
                 "3 (--once) rows could not be delivered now and wait for their retry.\n"
                 "SIGHUP reads the API key again (file or Vault).\n"
                 "doctor: 0 all good, 1 warnings, 2 failures. healthcheck: 0 healthy, 1 not.\n",
            "-h, --help", "-V, --version");
}

const struct option_def *config_find_option(const char *name, size_t name_len)
{
    for (size_t k = 0; k < N_OPTIONS; k++)
        if (strlen(options[k].name) == name_len && strncmp(options[k].name, name, name_len) == 0)
            return &options[k];
    return NULL;
}

static bool parse_number(const char *value, double *out)
{
    if (!value || !*value)
        return false;
    char *end;
    errno = 0;
    double d = strtod(value, &end);
    if (errno || *end || !isfinite(d))
        return false;
    *out = d;
    return true;
}

/* OPT_INT (a whole number), OPT_SECONDS and OPT_RATE, within the option's bounds. */
static bool apply_number(struct config *cfg, const struct option_def *o, const char *value,
                         char *err, size_t errsize)
{
    bool whole = o->kind == OPT_INT;
    double d;
    if (!parse_number(value, &d) || (whole && d != floor(d)) || d < o->min || d > o->max) {
        snprintf(err, errsize, "--%s: expected %s from %g to %g, got \"%s\"", o->name,
                 whole ? "a whole number" : "a number", o->min, o->max, value);
        return false;
    }
    if (whole)
        *(int *)((char *)cfg + o->offset) = (int)d;
    else
        *(double *)((char *)cfg + o->offset) = d;
    return true;
}

/* A string; the two key options also choose where the API key comes from. */
static bool apply_string(struct config *cfg, const struct option_def *o, const char *value,
                         char *err, size_t errsize)
{
    if (!*value) {
        snprintf(err, errsize, "--%s: empty value", o->name);
        return false;
    }
    if (o->offset == OFF(api_key))
        return config_use_key_file(cfg, value, err, errsize);
    if (o->offset == OFF(api_key_vault))
        config_use_key_vault(cfg, value);
    else
        config_set_string((char **)((char *)cfg + o->offset), value);
    return true;
}

/* OPT_MODE and OPT_LOGFMT: one of two words, the first the default. */
static bool apply_choice(struct config *cfg, const struct option_def *o, const char *value,
                         char *err, size_t errsize)
{
    static const char *const words[][2] = {
        [OPT_MODE] = {"import", "single"}, [OPT_LOGFMT] = {"text", "json"},
    };
    const char *const *w = words[o->kind];
    bool second = strcmp(value, w[1]) == 0;
    if (!second && strcmp(value, w[0]) != 0) {
        snprintf(err, errsize, "--%s: expected %s or %s, got \"%s\"", o->name, w[0], w[1], value);
        return false;
    }
    if (o->kind == OPT_MODE)
        cfg->mode = second ? MODE_SINGLE : MODE_IMPORT;
    else
        cfg->log_format = second ? LOG_JSON : LOG_TEXT;
    return true;
}

/* A flag sets its field to the value that is not the default. */
static void apply_flag(struct config *cfg, const struct option_def *o)
{
    if (o->offset == OFF(once))
        cfg->once = true;
    else if (o->offset == OFF(verify))
        cfg->verify = false;
    else if (o->offset == OFF(log_level))
        cfg->log_level = LOG_DEBUG;
    else if (o->offset == OFF(output))
        cfg->output = OUTPUT_JSON;
    else if (o->offset == OFF(migrate_action))
        cfg->migrate_action = MIGRATE_PRINT;
    else if (o->offset == OFF(migrate_status))
        cfg->migrate_status = true;
    else if (o->offset == OFF(dry_run))
        cfg->dry_run = true;
}

bool config_apply_option(struct config *cfg, const struct option_def *o, const char *value,
                         char *err, size_t errsize)
{
    switch (o->kind) {
    case OPT_INT:
    case OPT_SECONDS:
    case OPT_RATE:
        return apply_number(cfg, o, value, err, errsize);
    case OPT_STRING:
        return apply_string(cfg, o, value, err, errsize);
    case OPT_MODE:
    case OPT_LOGFMT:
        return apply_choice(cfg, o, value, err, errsize);
    case OPT_FLAG:
        apply_flag(cfg, o);
        return true;
    }
    return false;
}

/* config_options: the table of settings, --help generated from it, and one value into
 * struct config (a parser per kind of value). Called by config.c and tools/settings_doc.c;
 * see config_priv.h. */
#include "config_priv.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One row per setting: the flag (NULL: environment only), what it takes, where it goes,
 * its bounds, its value's name, its default (as the flag would give it; NULL: none), its
 * environment variable (NULL: none), the help, and the commands it applies to (0: all).
 * The defaults, the environment, --help and the reference in docs/configuration.md and
 * the man page (tools/settings_doc.c, `make docs`) all come from here. */
static const struct option_def options[] = {
    {"database-url", OPT_STRING, OFF(database_url), 0, 0, "URL", NULL, "DATABASE_URL",
     "PostgreSQL connection string or URL (required)", ALL},
    {"audience-id", OPT_STRING, OFF(audience_id), 0, 0, "ID", NULL, "SENDRY_AUDIENCE_ID",
     "Sendry audience to add contacts to (required by the worker)", ALL},
    {"api-url", OPT_STRING, OFF(api_url), 0, 0, "URL", "https://api.sendry.online", "SENDRY_API_URL",
     "Sendry API base URL, without /v1", ALL},
    {NULL, OPT_STRING, OFF(api_key), 0, 0, "KEY", NULL, "SENDRY_API_KEY",
     "the API key itself (never logged); exactly one of SENDRY_API_KEY,\n"
     "SENDRY_API_KEY_FILE and SENDRY_API_KEY_VAULT", ALL},
    {"api-key-file", OPT_STRING, OFF(api_key), 0, 0, "FILE", NULL, "SENDRY_API_KEY_FILE",
     "read the API key from FILE (surrounding whitespace trimmed)", ALL},
    {"api-key-vault", OPT_STRING, OFF(api_key_vault), 0, 0, "NAME", NULL, "SENDRY_API_KEY_VAULT",
     "read the API key from Supabase Vault (secret NAME in vault.decrypted_secrets),\n"
     "at start and after a 401", ALL},
    {"ca-file", OPT_STRING, OFF(ca_file), 0, 0, "FILE", NULL, "SENDRY_CA_FILE",
     "trust the CA certificates in FILE (PEM) for the API: a private CA or a\n"
     "TLS-intercepting proxy (otherwise the system's bundle)", ALL},
    {"mode", OPT_MODE, OFF(mode), 0, 0, "import|single", "import", NULL,
     "import: POST /v1/contacts/import, one request per claimed batch;\n"
     "single: POST /v1/contacts, one request per row", ALL},
    {"batch-size", OPT_INT, OFF(batch_size), 1, SENDRY_MAX_BATCH, "N", "1000", NULL,
     "rows per claim and per import request", ALL},
    {"concurrency", OPT_INT, OFF(concurrency), 1, 64, "N", "4", NULL,
     "HTTP requests in flight at once", ALL},
    {"rate", OPT_RATE, OFF(rate), 0, 1000, "N", "9", NULL,
     "requests per second for the key, shared by its workers; 0 = unlimited\n"
     "(Sendry allows 100 per 10 s)", ALL},
    {"rate-window", OPT_SECONDS, OFF(rate_window), 1, 3600, "SECONDS", "10", NULL,
     "the provider's rate-limit window: no window this long carries more than\n"
     "--rate x SECONDS requests from all workers of the key (Sendry's: 10)", ALL},
    {"live-share", OPT_RATE, OFF(live_share), 0, 90, "PERCENT", "20", NULL,
     "share of the request budget that bulk work (backfills, reconciliation)\n"
     "leaves to live changes", ALL},
    {"lease", OPT_SECONDS, OFF(lease), 1, 86400, "SECONDS", "30", NULL,
     "how long a claimed row is held before another worker may take it, renewed\n"
     "every third of it while held: a killed worker's rows are free after it", ALL},
    {"max-attempts", OPT_INT, OFF(max_attempts), 1, 1000, "N", "12", NULL,
     "attempts before a row may be marked failed (with --retry-for), unless the row\n"
     "sets max_attempts", ALL},
    {"retry-for", OPT_SECONDS, OFF(retry_for), 0, 31536000, "SECONDS", "259200", NULL,
     "a row's own transient failures (network, 408, 5xx) fail it only after\n"
     "--max-attempts attempts and this long since it was enqueued (72 h)", ALL},
    {"poll-interval", OPT_SECONDS, OFF(poll_interval), 0.05, 86400, "SECONDS", "5", NULL,
     "look for due rows this often even without a NOTIFY", ALL},
    {"backoff-base", OPT_SECONDS, OFF(backoff_base), 0.001, 86400, "SECONDS", "1", NULL,
     "first retry delay; doubles each attempt, with full jitter", ALL},
    {"backoff-cap", OPT_SECONDS, OFF(backoff_cap), 0.001, 604800, "SECONDS", "3600", NULL,
     "longest retry delay", ALL},
    {"http-timeout", OPT_SECONDS, OFF(http_timeout), 0.1, 600, "SECONDS", "30", NULL,
     "timeout of one HTTP request", ALL},
    {"statement-timeout", OPT_SECONDS, OFF(statement_timeout), 0.1, 86400, "SECONDS", "30", NULL,
     "the server ends a statement of ours after this (statement_timeout); a query\n"
     "with no answer by then and as long again (at most 5 s) more drops its\n"
     "connection", ALL},
    {"lock-timeout", OPT_SECONDS, OFF(lock_timeout), 0.1, 86400, "SECONDS", "2", NULL,
     "a statement of ours waits at most this for a lock (lock_timeout)", ALL},
    {"idle-in-transaction-timeout", OPT_SECONDS, OFF(idle_in_transaction_timeout), 1, 86400, "SECONDS", "60",
     NULL, "the server ends a session of ours left idle inside a transaction\n"
     "(idle_in_transaction_session_timeout)", ALL},
    {"drain-timeout", OPT_SECONDS, OFF(drain_timeout), 0, 600, "SECONDS", "10", NULL,
     "on SIGTERM, wait this long for requests in flight", ALL},
    {"reconcile-interval", OPT_SECONDS, OFF(reconcile_interval), 0, 604800, "SECONDS", "3600", NULL,
     "page Sendry's unsubscribes and suppressions into the inbox this often; 0 = off", ALL},
    {"retain-sent", OPT_RATE, OFF(retain_sent), 0, 3650, "DAYS", "7", NULL,
     "delete sent rows older than this, in small batches; 0 = keep them", FOR(CMD_RUN)},
    {"chunk-size", OPT_INT, OFF(chunk_size), 1, 100000, "N", "5000", NULL,
     "backfill, reconcile-contacts: users per transaction",
     FOR(CMD_BACKFILL) | FOR(CMD_RECONCILE_CONTACTS)},
    {"dry-run", OPT_FLAG, OFF(dry_run), 0, 0, NULL, NULL, NULL,
     "backfill, reconcile-contacts: walk the users read-only and count exactly what\n"
     "the run would enqueue; change nothing", FOR(CMD_BACKFILL) | FOR(CMD_RECONCILE_CONTACTS)},
    {"events", OPT_FLAG, OFF(backfill_events), 0, 0, NULL, NULL, NULL,
     "backfill: after the contacts, replay user.signed_up (bulk event rows) for the\n"
     "synced users that have no user.signed_up event row yet", FOR(CMD_BACKFILL)},
    {"listen", OPT_STRING, OFF(listen), 0, 0, "ADDR:PORT", NULL, "SENDRY_LISTEN",
     "serve POST /webhooks/sendry, GET /healthz and GET /metrics (off without it;\n"
     "needs SENDRY_WEBHOOK_SECRET)", ALL},
    {NULL, OPT_STRING, OFF(webhook_secret), 0, 0, "SECRET", NULL, "SENDRY_WEBHOOK_SECRET",
     "the webhooks' signing secret, at least 16 characters (never logged)", ALL},
    {"webhook-queue", OPT_INT, OFF(webhook_queue), 1, 10000, "N", "64", NULL,
     "webhooks waiting for the database at most; more are answered 503 with\n"
     "Retry-After (Sendry redelivers them)", FOR(CMD_RUN)},
    {"once", OPT_FLAG, OFF(once), 0, 0, NULL, NULL, NULL,
     "deliver what is due now, wait for the results, exit (1 if a row failed)", FOR(CMD_RUN)},
    {"no-verify", OPT_FLAG, OFF(verify), 0, 0, NULL, NULL, NULL,
     "skip the startup checks of the audience (GET /v1/audiences/{id}) and of\n"
     "the events scope (GET /v1/events?limit=1)", FOR(CMD_RUN)},
    {"json", OPT_FLAG, OFF(output), 0, 0, NULL, NULL, NULL,
     "doctor, status: print one JSON object instead of text", FOR(CMD_DOCTOR) | FOR(CMD_STATUS)},
    {"print", OPT_FLAG, OFF(migrate_action), 0, 0, NULL, NULL, NULL,
     "migrate: write sql/install.sql (the steps, for psql or supabase/migrations)\n"
     "to stdout instead of applying them", FOR(CMD_MIGRATE)},
    {"status", OPT_FLAG, OFF(migrate_status), 0, 0, NULL, NULL, NULL,
     "migrate: list the steps applied and pending, apply nothing", FOR(CMD_MIGRATE)},
    {"lock-deadline", OPT_SECONDS, OFF(migrate_deadline), 1, 3600, "SECONDS", "60", NULL,
     "migrate: how long a step may retry its locks before it gives up, changing\n"
     "nothing", FOR(CMD_MIGRATE)},
    {"step-lock-timeout", OPT_SECONDS, OFF(migrate_lock_timeout), 0.01, 10, "SECONDS", "0.1", NULL,
     "migrate: the lock_timeout of each attempt: the longest a write to auth.users or\n"
     "the outbox may queue behind a step", FOR(CMD_MIGRATE)},
    {"log-format", OPT_LOGFMT, OFF(log_format), 0, 0, "text|json", "text", NULL,
     "log lines as text or one JSON object per line", ALL},
    {"verbose", OPT_FLAG, OFF(log_level), 0, 0, NULL, NULL, NULL,
     "debug logging (shows full email addresses)", ALL},
};

#define N_OPTIONS (sizeof options / sizeof options[0])

const struct option_def *config_option(size_t i)
{
    return i < N_OPTIONS ? &options[i] : NULL;
}

bool config_option_is_number(const struct option_def *o)
{
    return o->kind == OPT_INT || o->kind == OPT_SECONDS || o->kind == OPT_RATE;
}

/* The table's columns for a setting, as "0-1000; default 9; env X" (empty: none). */
void config_option_facts(const struct option_def *o, char *buf, size_t size)
{
    size_t n = 0;
    buf[0] = '\0';
    if (config_option_is_number(o))
        n += (size_t)snprintf(buf + n, size - n, "%g-%g", o->min, o->max);
    if (o->def && n < size)
        n += (size_t)snprintf(buf + n, size - n, "%sdefault %s", n ? "; " : "", o->def);
    if (o->env && n < size)
        snprintf(buf + n, size - n, "%senv %s", n ? "; " : "", o->env);
}

/* One option of --help: the flag and its value's name, the help, then its bounds, its
 * default and its variable from the table's columns. */
static void usage_option(FILE *out, const struct option_def *o)
{
    char head[64], facts[160];
    snprintf(head, sizeof head, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
    fprintf(out, "  %-26s ", head);
    for (const char *p = o->help; *p; p++) {
        fputc(*p, out);
        if (*p == '\n')
            fprintf(out, "  %-26s ", "");
    }
    config_option_facts(o, facts, sizeof facts);
    if (facts[0])
        fprintf(out, " (%s)", facts);
    fputc('\n', out);
}

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
            "       sendry-sync --help | --version\n\nEnvironment (flags override it):");
    int col = 33;
    const char *sep = "";
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (!options[i].env)
            continue;
        int w = (int)strlen(options[i].env) + 2;
        if (col + w > 90) {
            fprintf(out, "%s\n ", sep);
            sep = "";
            col = 1;
        }
        fprintf(out, "%s %s", sep, options[i].env);
        sep = ",";
        col += w;
    }
    fprintf(out, ".\nWithout a flag (secrets stay off the command line):");
    sep = "";
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (options[i].env && !options[i].name) {
            fprintf(out, "%s %s", sep, options[i].env);
            sep = ",";
        }
    }
    fprintf(out, ".\n"
                 "Proxies: https_proxy (or HTTPS_PROXY) and NO_PROXY, as libcurl reads them.\n\n"
                 "Options:\n");
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (options[i].name)
            usage_option(out, &options[i]);
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
        if (options[k].name && strlen(options[k].name) == name_len &&
            strncmp(options[k].name, name, name_len) == 0)
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
    else if (o->offset == OFF(backfill_events))
        cfg->backfill_events = true;
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

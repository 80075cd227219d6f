#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One table for every flag: name, what it takes, where it goes, its bounds, and the
 * help line. --help is generated from it, so the two cannot disagree. */
enum opt_kind { OPT_INT, OPT_SECONDS, OPT_RATE, OPT_STRING, OPT_FLAG, OPT_MODE, OPT_LOGFMT };

struct option_def {
    const char *name;
    enum opt_kind kind;
    size_t offset;
    double min, max;
    const char *arg;
    const char *help;
};

#define OFF(field) offsetof(struct config, field)

static const struct option_def options[] = {
    {"database-url", OPT_STRING, OFF(database_url), 0, 0, "URL",
     "PostgreSQL connection string (env DATABASE_URL)"},
    {"audience-id", OPT_STRING, OFF(audience_id), 0, 0, "ID",
     "Sendry audience to add contacts to (env SENDRY_AUDIENCE_ID)"},
    {"api-url", OPT_STRING, OFF(api_url), 0, 0, "URL",
     "Sendry API base URL (env SENDRY_API_URL, default https://api.sendry.online)"},
    {"api-key-file", OPT_STRING, OFF(api_key), 0, 0, "FILE",
     "read the API key from FILE (env SENDRY_API_KEY_FILE; or env SENDRY_API_KEY)"},
    {"mode", OPT_MODE, OFF(mode), 0, 0, "import|single",
     "import: POST /v1/contacts/import, one request per claimed batch (default);\n"
     "single: POST /v1/contacts, one request per row"},
    {"batch-size", OPT_INT, OFF(batch_size), 1, SENDRY_MAX_BATCH, "N",
     "rows per claim and per import request, 1-1000 (default 1000)"},
    {"concurrency", OPT_INT, OFF(concurrency), 1, 64, "N",
     "HTTP requests in flight at once, 1-64 (default 4)"},
    {"rate", OPT_RATE, OFF(rate), 0, 1000, "N",
     "requests per second, 0 = unlimited (default 9; Sendry allows 100 per 10 s)"},
    {"live-share", OPT_RATE, OFF(live_share), 0, 90, "PERCENT",
     "share of the request budget that bulk work (backfills, reconciliation)\n"
     "leaves to live changes, 0-90 (default 20)"},
    {"lease", OPT_SECONDS, OFF(lease), 1, 86400, "SECONDS",
     "how long a claimed row is held before another worker may take it (default 60)"},
    {"max-attempts", OPT_INT, OFF(max_attempts), 1, 1000, "N",
     "attempts before a row is marked failed, unless the row sets max_attempts (default 12)"},
    {"poll-interval", OPT_SECONDS, OFF(poll_interval), 0.05, 86400, "SECONDS",
     "look for due rows this often even without a NOTIFY (default 5)"},
    {"backoff-base", OPT_SECONDS, OFF(backoff_base), 0.001, 86400, "SECONDS",
     "first retry delay; doubles each attempt, with full jitter (default 1)"},
    {"backoff-cap", OPT_SECONDS, OFF(backoff_cap), 0.001, 604800, "SECONDS",
     "longest retry delay (default 3600)"},
    {"http-timeout", OPT_SECONDS, OFF(http_timeout), 0.1, 600, "SECONDS",
     "timeout of one HTTP request (default 30)"},
    {"drain-timeout", OPT_SECONDS, OFF(drain_timeout), 0, 600, "SECONDS",
     "on SIGTERM, wait this long for requests in flight (default 10)"},
    {"reconcile-interval", OPT_SECONDS, OFF(reconcile_interval), 0, 604800, "SECONDS",
     "page Sendry's unsubscribes and suppressions into the inbox this often,\n"
     "0 = off (default 3600)"},
    {"listen", OPT_STRING, OFF(listen), 0, 0, "ADDR:PORT",
     "serve POST /webhooks/sendry, GET /healthz and GET /metrics (off by default;\n"
     "needs SENDRY_WEBHOOK_SECRET)"},
    {"once", OPT_FLAG, OFF(once), 0, 0, NULL,
     "deliver what is due now, wait for the results, exit (1 if a row failed)"},
    {"no-verify", OPT_FLAG, OFF(verify), 0, 0, NULL,
     "skip the startup check of the audience (GET /v1/audiences/{id})"},
    {"log-format", OPT_LOGFMT, OFF(log_format), 0, 0, "text|json",
     "log lines as text (default) or one JSON object per line"},
    {"verbose", OPT_FLAG, OFF(log_level), 0, 0, NULL,
     "debug logging (shows full email addresses)"},
};

#define N_OPTIONS (sizeof options / sizeof options[0])

void config_usage(FILE *out)
{
    fprintf(out,
            "Usage: sendry-sync [OPTIONS]          deliver the outbox to Sendry\n"
            "       sendry-sync migrate            apply the embedded sql/install.sql\n"
            "       sendry-sync --help | --version\n\n"
            "Environment: DATABASE_URL, SENDRY_API_KEY or SENDRY_API_KEY_FILE,\n"
            "SENDRY_AUDIENCE_ID, SENDRY_API_URL, SENDRY_WEBHOOK_SECRET.\n"
            "Flags override the environment.\n\n"
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
                 "(or, with --once, a row failed), 2 bad configuration or rejected API key/audience.\n",
            "-h, --help", "-V, --version");
}

static bool set_string(char **dst, const char *value)
{
    char *copy = strdup(value);
    if (!copy)
        return false;
    free(*dst);
    *dst = copy;
    return true;
}

/* Reads a whole small file (the API key), trimming surrounding whitespace. */
static bool read_key_file(const char *path, char **out, char *err, size_t errsize)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errsize, "SENDRY_API_KEY_FILE: cannot read %s: %s", path, strerror(errno));
        return false;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    bool too_long = !feof(f);
    fclose(f);
    if (too_long) {
        snprintf(err, errsize, "SENDRY_API_KEY_FILE: %s is larger than an API key", path);
        return false;
    }
    buf[n] = '\0';
    char *s = buf;
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    size_t len = strlen(s);
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\n' ||
                       s[len - 1] == '\r'))
        s[--len] = '\0';
    bool ok = set_string(out, s);
    memset(buf, 0, sizeof buf);
    return ok;
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

static bool apply_option(struct config *cfg, const struct option_def *o, const char *value,
                         char *err, size_t errsize)
{
    char *base = (char *)cfg;
    double d;
    switch (o->kind) {
    case OPT_INT:
        if (!parse_number(value, &d) || d != floor(d) || d < o->min || d > o->max) {
            snprintf(err, errsize, "--%s: expected a whole number from %g to %g, got \"%s\"",
                     o->name, o->min, o->max, value);
            return false;
        }
        *(int *)(base + o->offset) = (int)d;
        return true;
    case OPT_SECONDS:
    case OPT_RATE:
        if (!parse_number(value, &d) || d < o->min || d > o->max) {
            snprintf(err, errsize, "--%s: expected a number from %g to %g, got \"%s\"", o->name,
                     o->min, o->max, value);
            return false;
        }
        *(double *)(base + o->offset) = d;
        return true;
    case OPT_STRING:
        if (!*value) {
            snprintf(err, errsize, "--%s: empty value", o->name);
            return false;
        }
        if (o->offset == OFF(api_key))
            return read_key_file(value, &cfg->api_key, err, errsize);
        if (!set_string((char **)(base + o->offset), value)) {
            snprintf(err, errsize, "out of memory");
            return false;
        }
        return true;
    case OPT_MODE:
        if (strcmp(value, "import") == 0)
            cfg->mode = MODE_IMPORT;
        else if (strcmp(value, "single") == 0)
            cfg->mode = MODE_SINGLE;
        else {
            snprintf(err, errsize, "--mode: expected import or single, got \"%s\"", value);
            return false;
        }
        return true;
    case OPT_LOGFMT:
        if (strcmp(value, "text") == 0)
            cfg->log_format = LOG_TEXT;
        else if (strcmp(value, "json") == 0)
            cfg->log_format = LOG_JSON;
        else {
            snprintf(err, errsize, "--log-format: expected text or json, got \"%s\"", value);
            return false;
        }
        return true;
    case OPT_FLAG:
        if (o->offset == OFF(once))
            cfg->once = true;
        else if (o->offset == OFF(verify))
            cfg->verify = false;
        else if (o->offset == OFF(log_level))
            cfg->log_level = LOG_DEBUG;
        return true;
    }
    return false;
}

static void defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->batch_size = SENDRY_MAX_BATCH;
    cfg->concurrency = 4;
    cfg->rate = 9;
    cfg->live_share = 20;
    cfg->lease = 60;
    cfg->max_attempts = 12;
    cfg->poll_interval = 5;
    cfg->backoff_base = 1;
    cfg->backoff_cap = 3600;
    cfg->http_timeout = 30;
    cfg->drain_timeout = 10;
    cfg->reconcile_interval = 3600;
    cfg->webhook_max_body = 256 * 1024;
    cfg->mode = MODE_IMPORT;
    cfg->verify = true;
    cfg->log_format = LOG_TEXT;
    cfg->log_level = LOG_INFO;
}

static bool from_env(struct config *cfg, char *err, size_t errsize)
{
    const char *v;
    if ((v = getenv("DATABASE_URL")) && *v && !set_string(&cfg->database_url, v))
        goto oom;
    if ((v = getenv("SENDRY_AUDIENCE_ID")) && *v && !set_string(&cfg->audience_id, v))
        goto oom;
    if ((v = getenv("SENDRY_API_URL")) && *v && !set_string(&cfg->api_url, v))
        goto oom;
    if ((v = getenv("SENDRY_WEBHOOK_SECRET")) && *v && !set_string(&cfg->webhook_secret, v))
        goto oom;
    const char *key = getenv("SENDRY_API_KEY");
    const char *key_file = getenv("SENDRY_API_KEY_FILE");
    if (key && *key && key_file && *key_file) {
        snprintf(err, errsize, "SENDRY_API_KEY and SENDRY_API_KEY_FILE are both set: keep one");
        return false;
    }
    if (key && *key && !set_string(&cfg->api_key, key))
        goto oom;
    if (key_file && *key_file && !read_key_file(key_file, &cfg->api_key, err, errsize))
        return false;
    return true;
oom:
    snprintf(err, errsize, "out of memory");
    return false;
}

static bool validate(struct config *cfg, char *err, size_t errsize)
{
    if (!cfg->database_url) {
        snprintf(err, errsize, "DATABASE_URL is not set (or pass --database-url)");
        return false;
    }
    if (cfg->command == CMD_MIGRATE)
        return true;
    if (!cfg->api_key || !*cfg->api_key) {
        snprintf(err, errsize, "SENDRY_API_KEY is not set (or SENDRY_API_KEY_FILE)");
        return false;
    }
    for (const char *p = cfg->api_key; *p; p++) {
        if (*p <= ' ' || *p == 0x7f) {
            snprintf(err, errsize, "SENDRY_API_KEY contains whitespace or control characters");
            return false;
        }
    }
    if (!cfg->audience_id) {
        snprintf(err, errsize, "SENDRY_AUDIENCE_ID is not set (or pass --audience-id)");
        return false;
    }
    for (const char *p = cfg->audience_id; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-')) {
            snprintf(err, errsize, "SENDRY_AUDIENCE_ID: \"%s\" is not an audience id "
                                   "(letters, digits, _ and - only)", cfg->audience_id);
            return false;
        }
    }
    if (!cfg->api_url && !set_string(&cfg->api_url, "https://api.sendry.online")) {
        snprintf(err, errsize, "out of memory");
        return false;
    }
    if (strncmp(cfg->api_url, "https://", 8) != 0 && strncmp(cfg->api_url, "http://", 7) != 0) {
        snprintf(err, errsize, "SENDRY_API_URL: \"%s\" is not an http(s) URL", cfg->api_url);
        return false;
    }
    size_t len = strlen(cfg->api_url);
    while (len > 0 && cfg->api_url[len - 1] == '/')
        cfg->api_url[--len] = '\0';
    if (cfg->listen && (!cfg->webhook_secret || strlen(cfg->webhook_secret) < 16)) {
        snprintf(err, errsize, "--listen needs SENDRY_WEBHOOK_SECRET (the webhook's signing secret, "
                               "at least 16 characters): the webhook endpoint never runs unauthenticated");
        return false;
    }
    if (cfg->listen && !strchr(cfg->listen, ':')) {
        snprintf(err, errsize, "--listen: expected ADDR:PORT (e.g. 127.0.0.1:8080 or :8080), got \"%s\"",
                 cfg->listen);
        return false;
    }
    if (cfg->backoff_cap < cfg->backoff_base) {
        snprintf(err, errsize, "--backoff-cap (%g) is shorter than --backoff-base (%g)",
                 cfg->backoff_cap, cfg->backoff_base);
        return false;
    }
    return true;
}

bool config_load(struct config *cfg, int argc, char **argv, char *err, size_t errsize)
{
    defaults(cfg);
    if (!from_env(cfg, err, errsize))
        return false;

    int i = 1;
    if (argc > 1 && strcmp(argv[1], "migrate") == 0) {
        cfg->command = CMD_MIGRATE;
        i = 2;
    }
    for (; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            cfg->command = CMD_HELP;
            return true;
        }
        if (strcmp(arg, "-V") == 0 || strcmp(arg, "--version") == 0) {
            cfg->command = CMD_VERSION;
            return true;
        }
        if (strcmp(arg, "-v") == 0)
            arg = "--verbose";
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(err, errsize, "unexpected argument \"%s\" (see --help)", arg);
            return false;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const struct option_def *o = NULL;
        for (size_t k = 0; k < N_OPTIONS; k++) {
            if (strlen(options[k].name) == name_len && strncmp(options[k].name, name, name_len) == 0) {
                o = &options[k];
                break;
            }
        }
        if (!o) {
            snprintf(err, errsize, "unknown option --%.*s (see --help)", (int)name_len, name);
            return false;
        }
        const char *value = NULL;
        if (o->kind == OPT_FLAG) {
            if (eq) {
                snprintf(err, errsize, "--%s takes no value", o->name);
                return false;
            }
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            snprintf(err, errsize, "--%s needs a value (%s)", o->name, o->arg);
            return false;
        }
        if (!apply_option(cfg, o, value, err, errsize))
            return false;
    }
    return validate(cfg, err, errsize);
}

void config_free(struct config *cfg)
{
    if (cfg->api_key)
        memset(cfg->api_key, 0, strlen(cfg->api_key));
    free(cfg->api_key);
    if (cfg->webhook_secret)
        memset(cfg->webhook_secret, 0, strlen(cfg->webhook_secret));
    free(cfg->webhook_secret);
    free(cfg->listen);
    free(cfg->database_url);
    free(cfg->audience_id);
    free(cfg->api_url);
    memset(cfg, 0, sizeof *cfg);
}

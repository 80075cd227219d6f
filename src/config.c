#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One table for every flag: name, what it takes, where it goes, its bounds, the help
 * line, and the commands it applies to (0: all). --help is generated from it, so the
 * two cannot disagree. */
enum opt_kind { OPT_INT, OPT_SECONDS, OPT_RATE, OPT_STRING, OPT_FLAG, OPT_MODE, OPT_LOGFMT };

#define FOR(cmd) (1u << (cmd))
#define ALL 0u

struct option_def {
    const char *name;
    enum opt_kind kind;
    size_t offset;
    double min, max;
    const char *arg;
    const char *help;
    unsigned commands;
};

#define OFF(field) offsetof(struct config, field)

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
    {"live-share", OPT_RATE, OFF(live_share), 0, 90, "PERCENT",
     "share of the request budget that bulk work (backfills, reconciliation)\n"
     "leaves to live changes, 0-90 (default 20)", ALL},
    {"lease", OPT_SECONDS, OFF(lease), 1, 86400, "SECONDS",
     "how long a claimed row is held before another worker may take it (default 60)", ALL},
    {"max-attempts", OPT_INT, OFF(max_attempts), 1, 1000, "N",
     "attempts before a row is marked failed, unless the row sets max_attempts (default 12)", ALL},
    {"poll-interval", OPT_SECONDS, OFF(poll_interval), 0.05, 86400, "SECONDS",
     "look for due rows this often even without a NOTIFY (default 5)", ALL},
    {"backoff-base", OPT_SECONDS, OFF(backoff_base), 0.001, 86400, "SECONDS",
     "first retry delay; doubles each attempt, with full jitter (default 1)", ALL},
    {"backoff-cap", OPT_SECONDS, OFF(backoff_cap), 0.001, 604800, "SECONDS",
     "longest retry delay (default 3600)", ALL},
    {"http-timeout", OPT_SECONDS, OFF(http_timeout), 0.1, 600, "SECONDS",
     "timeout of one HTTP request (default 30)", ALL},
    {"drain-timeout", OPT_SECONDS, OFF(drain_timeout), 0, 600, "SECONDS",
     "on SIGTERM, wait this long for requests in flight (default 10)", ALL},
    {"reconcile-interval", OPT_SECONDS, OFF(reconcile_interval), 0, 604800, "SECONDS",
     "page Sendry's unsubscribes and suppressions into the inbox this often,\n"
     "0 = off (default 3600)", ALL},
    {"listen", OPT_STRING, OFF(listen), 0, 0, "ADDR:PORT",
     "serve POST /webhooks/sendry, GET /healthz and GET /metrics\n"
     "(env SENDRY_LISTEN; off by default; needs SENDRY_WEBHOOK_SECRET)", ALL},
    {"once", OPT_FLAG, OFF(once), 0, 0, NULL,
     "deliver what is due now, wait for the results, exit (1 if a row failed)", FOR(CMD_RUN)},
    {"no-verify", OPT_FLAG, OFF(verify), 0, 0, NULL,
     "skip the startup check of the audience (GET /v1/audiences/{id})", FOR(CMD_RUN)},
    {"json", OPT_FLAG, OFF(output), 0, 0, NULL,
     "doctor, status: print one JSON object instead of text", FOR(CMD_DOCTOR) | FOR(CMD_STATUS)},
    {"print", OPT_FLAG, OFF(migrate_action), 0, 0, NULL,
     "migrate: write the embedded SQL to stdout instead of applying it", FOR(CMD_MIGRATE)},
    {"log-format", OPT_LOGFMT, OFF(log_format), 0, 0, "text|json",
     "log lines as text (default) or one JSON object per line", ALL},
    {"verbose", OPT_FLAG, OFF(log_level), 0, 0, NULL,
     "debug logging (shows full email addresses)", ALL},
};

/* The commands named by the first argument. */
static const char *const command_names[] = {
    [CMD_RUN] = NULL, [CMD_MIGRATE] = "migrate", [CMD_DOCTOR] = "doctor",
    [CMD_STATUS] = "status", [CMD_HEALTHCHECK] = "healthcheck",
};

#define N_OPTIONS (sizeof options / sizeof options[0])

void config_usage(FILE *out)
{
    fprintf(out,
            "Usage: sendry-sync [OPTIONS]          deliver the outbox to Sendry\n"
            "       sendry-sync migrate [--print]  apply the embedded sql/install.sql (or print it)\n"
            "       sendry-sync doctor [--json]    check what breaks in production, say how to fix it\n"
            "       sendry-sync status [--json]    the outbox at a glance\n"
            "       sendry-sync healthcheck        0 if healthy (the local /healthz with --listen,\n"
            "                                      else the database), 1 if not\n"
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
                 "(or, with --once, a row failed), 2 bad configuration or rejected API key/audience.\n"
                 "doctor: 0 all good, 1 warnings, 2 failures. healthcheck: 0 healthy, 1 not.\n",
            "-h, --help", "-V, --version");
}

const char *config_key_source_name(enum key_source source)
{
    switch (source) {
    case KEY_ENV: return "SENDRY_API_KEY";
    case KEY_FILE: return "SENDRY_API_KEY_FILE";
    case KEY_VAULT: return "SENDRY_API_KEY_VAULT";
    case KEY_NONE: break;
    }
    return "SENDRY_API_KEY";
}

/* Frees a string that may hold a secret, wiping it first. */
static void free_secret(char **s)
{
    if (*s)
        memset(*s, 0, strlen(*s));
    free(*s);
    *s = NULL;
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
        if (o->offset == OFF(api_key)) {
            free(cfg->api_key_vault);
            cfg->api_key_vault = NULL;
            cfg->key_source = KEY_FILE;
            return read_key_file(value, &cfg->api_key, err, errsize);
        }
        if (o->offset == OFF(api_key_vault)) {
            free_secret(&cfg->api_key);
            cfg->key_source = KEY_VAULT;
        }
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
        else if (o->offset == OFF(output))
            cfg->output = OUTPUT_JSON;
        else if (o->offset == OFF(migrate_action))
            cfg->migrate_action = MIGRATE_PRINT;
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

/* At most one of the three key variables may be set. */
static bool key_from_env(struct config *cfg, char *err, size_t errsize)
{
    static const char *const names[] = {"SENDRY_API_KEY", "SENDRY_API_KEY_FILE", "SENDRY_API_KEY_VAULT"};
    static const enum key_source sources[] = {KEY_ENV, KEY_FILE, KEY_VAULT};
    const char *value = NULL;
    int chosen = -1;
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(names[i]);
        if (!v || !*v)
            continue;
        if (chosen >= 0) {
            snprintf(err, errsize, "%s and %s are both set: keep one way to give the API key",
                     names[chosen], names[i]);
            return false;
        }
        chosen = i;
        value = v;
    }
    if (chosen < 0)
        return true;
    cfg->key_source = sources[chosen];
    bool ok = true;
    if (cfg->key_source == KEY_ENV)
        ok = set_string(&cfg->api_key, value);
    else if (cfg->key_source == KEY_VAULT)
        ok = set_string(&cfg->api_key_vault, value);
    else
        return read_key_file(value, &cfg->api_key, err, errsize);
    if (!ok)
        snprintf(err, errsize, "out of memory");
    return ok;
}

static bool from_env(struct config *cfg, char *err, size_t errsize)
{
    static const struct { const char *name; size_t offset; } vars[] = {
        {"DATABASE_URL", OFF(database_url)},   {"SENDRY_AUDIENCE_ID", OFF(audience_id)},
        {"SENDRY_API_URL", OFF(api_url)},      {"SENDRY_WEBHOOK_SECRET", OFF(webhook_secret)},
        {"SENDRY_CA_FILE", OFF(ca_file)},      {"SENDRY_LISTEN", OFF(listen)},
    };
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i].name);
        if (v && *v && !set_string((char **)((char *)cfg + vars[i].offset), v)) {
            snprintf(err, errsize, "out of memory");
            return false;
        }
    }
    return key_from_env(cfg, err, errsize);
}

bool config_check_api_key(const char *key, const char *source, char *err, size_t errsize)
{
    if (!key || !*key) {
        snprintf(err, errsize, "%s: the API key is empty", source);
        return false;
    }
    for (const char *p = key; *p; p++) {
        if (*p <= ' ' || *p == 0x7f) {
            snprintf(err, errsize, "%s: the API key contains whitespace or control characters", source);
            return false;
        }
    }
    return true;
}

/* The API URL (default, scheme, no trailing slash), the audience id's characters and
 * the CA file: what the worker and doctor both use. */
static bool validate_api(struct config *cfg, char *err, size_t errsize)
{
    if (cfg->audience_id) {
        for (const char *p = cfg->audience_id; *p; p++) {
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                  *p == '_' || *p == '-')) {
                snprintf(err, errsize, "SENDRY_AUDIENCE_ID: \"%s\" is not an audience id "
                                       "(letters, digits, _ and - only)", cfg->audience_id);
                return false;
            }
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
    if (cfg->ca_file) {
        FILE *f = fopen(cfg->ca_file, "r");
        if (!f) {
            snprintf(err, errsize, "SENDRY_CA_FILE (--ca-file): cannot read %s: %s", cfg->ca_file,
                     strerror(errno));
            return false;
        }
        fclose(f);
    }
    return true;
}

/* What the worker itself needs on top of validate_api(). */
static bool validate_run(struct config *cfg, char *err, size_t errsize)
{
    if (cfg->key_source != KEY_VAULT) {
        if (!cfg->api_key || !*cfg->api_key) {
            snprintf(err, errsize, "SENDRY_API_KEY is not set (or SENDRY_API_KEY_FILE, or "
                                   "SENDRY_API_KEY_VAULT)");
            return false;
        }
        if (!config_check_api_key(cfg->api_key, config_key_source_name(cfg->key_source), err, errsize))
            return false;
    }
    if (!cfg->audience_id) {
        snprintf(err, errsize, "SENDRY_AUDIENCE_ID is not set (or pass --audience-id)");
        return false;
    }
    if (cfg->listen && (!cfg->webhook_secret || strlen(cfg->webhook_secret) < 16)) {
        snprintf(err, errsize, "--listen needs SENDRY_WEBHOOK_SECRET (the webhook's signing secret, "
                               "at least 16 characters): the webhook endpoint never runs unauthenticated");
        return false;
    }
    if (cfg->backoff_cap < cfg->backoff_base) {
        snprintf(err, errsize, "--backoff-cap (%g) is shorter than --backoff-base (%g)",
                 cfg->backoff_cap, cfg->backoff_base);
        return false;
    }
    return true;
}

/* Each command checks what it uses: migrate and status the database, healthcheck the
 * database or the --listen address, doctor what it cannot report as a failed check. */
static bool validate(struct config *cfg, char *err, size_t errsize)
{
    if (cfg->command == CMD_MIGRATE && cfg->migrate_action == MIGRATE_PRINT)
        return true;
    if (!cfg->database_url && !(cfg->command == CMD_HEALTHCHECK && cfg->listen)) {
        snprintf(err, errsize, "DATABASE_URL is not set (or pass --database-url)");
        return false;
    }
    if (cfg->command == CMD_RUN && !validate_run(cfg, err, errsize))
        return false;
    if (cfg->listen && !strchr(cfg->listen, ':')) {
        snprintf(err, errsize, "--listen: expected ADDR:PORT (e.g. 127.0.0.1:8080 or :8080), got \"%s\"",
                 cfg->listen);
        return false;
    }
    if (cfg->command == CMD_RUN || cfg->command == CMD_DOCTOR)
        return validate_api(cfg, err, errsize);
    return true;
}

/* The command named by argv[1], or CMD_RUN (and *first stays 1). */
static enum command parse_command(int argc, char **argv, int *first)
{
    *first = 1;
    if (argc < 2)
        return CMD_RUN;
    for (size_t c = 0; c < sizeof command_names / sizeof command_names[0]; c++) {
        if (command_names[c] && strcmp(argv[1], command_names[c]) == 0) {
            *first = 2;
            return (enum command)c;
        }
    }
    return CMD_RUN;
}

static const struct option_def *find_option(const char *name, size_t name_len)
{
    for (size_t k = 0; k < N_OPTIONS; k++)
        if (strlen(options[k].name) == name_len && strncmp(options[k].name, name, name_len) == 0)
            return &options[k];
    return NULL;
}

/* One argument (and its value, from "=" or the next argument). */
static bool parse_option(struct config *cfg, int argc, char **argv, int *i, char *err, size_t errsize)
{
    const char *arg = strcmp(argv[*i], "-v") == 0 ? "--verbose" : argv[*i];
    if (strncmp(arg, "--", 2) != 0) {
        snprintf(err, errsize, "unexpected argument \"%s\" (see --help)", arg);
        return false;
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
    const struct option_def *o = find_option(name, name_len);
    if (!o) {
        snprintf(err, errsize, "unknown option --%.*s (see --help)", (int)name_len, name);
        return false;
    }
    if (o->commands && !(o->commands & FOR(cfg->command))) {
        snprintf(err, errsize, "--%s does not apply to %s (see --help)", o->name,
                 command_names[cfg->command] ? command_names[cfg->command] : "the worker");
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
    } else if (*i + 1 < argc) {
        value = argv[++*i];
    } else {
        snprintf(err, errsize, "--%s needs a value (%s)", o->name, o->arg);
        return false;
    }
    return apply_option(cfg, o, value, err, errsize);
}

bool config_load(struct config *cfg, int argc, char **argv, char *err, size_t errsize)
{
    defaults(cfg);
    int i;
    cfg->command = parse_command(argc, argv, &i);
    if (!from_env(cfg, err, errsize))
        return false;
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
        if (!parse_option(cfg, argc, argv, &i, err, errsize))
            return false;
    }
    return validate(cfg, err, errsize);
}

void config_free(struct config *cfg)
{
    free_secret(&cfg->api_key);
    free_secret(&cfg->webhook_secret);
    free(cfg->api_key_vault);
    free(cfg->ca_file);
    free(cfg->listen);
    free(cfg->database_url);
    free(cfg->audience_id);
    free(cfg->api_url);
    memset(cfg, 0, sizeof *cfg);
}

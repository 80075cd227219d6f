/* config: loading the settings in their order: defaults, the environment, the
 * flags, then the checks of the command. See config.h; the parts are named in
 * config_priv.h. */
#include "config_priv.h"

#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

/* The commands named by the first argument. */
static const char *const command_names[] = {
    [CMD_RUN] = NULL, [CMD_MIGRATE] = "migrate", [CMD_DOCTOR] = "doctor",
    [CMD_STATUS] = "status", [CMD_HEALTHCHECK] = "healthcheck", [CMD_BACKFILL] = "backfill",
    [CMD_RECONCILE_CONTACTS] = "reconcile-contacts",
};

void config_set_string(char **dst, const char *value)
{
    char *copy = xstrdup(value);
    free(*dst);
    *dst = copy;
}

void config_free_secret(char **s)
{
    if (*s)
        memset(*s, 0, strlen(*s));
    free(*s);
    *s = NULL;
}

static void defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->batch_size = SENDRY_MAX_BATCH;
    cfg->concurrency = 4;
    cfg->rate = 9;
    cfg->live_share = 20;
    cfg->lease = 30;
    cfg->retain_sent = 7;
    cfg->chunk_size = 5000;
    cfg->max_attempts = 12;
    cfg->poll_interval = 5;
    cfg->backoff_base = 1;
    cfg->backoff_cap = 3600;
    cfg->http_timeout = 30;
    cfg->drain_timeout = 10;
    cfg->migrate_deadline = 60;
    cfg->migrate_lock_timeout = 0.1;
    cfg->statement_timeout = 30;
    cfg->lock_timeout = 2;
    cfg->idle_in_transaction_timeout = 60;
    cfg->reconcile_interval = 3600;
    cfg->webhook_max_body = 256 * 1024;
    cfg->webhook_queue = 64;
    cfg->retry_for = 72 * 3600;
    cfg->rate_window = 10;
    cfg->mode = MODE_IMPORT;
    cfg->verify = true;
    cfg->log_format = LOG_TEXT;
    cfg->log_level = LOG_INFO;
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
        if (v && *v)
            config_set_string((char **)((char *)cfg + vars[i].offset), v);
    }
    return config_key_from_env(cfg, err, errsize);
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
    const struct option_def *o = config_find_option(name, name_len);
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
    return config_apply_option(cfg, o, value, err, errsize);
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
    return config_validate(cfg, err, errsize);
}

void config_free(struct config *cfg)
{
    config_free_secret(&cfg->api_key);
    config_free_secret(&cfg->webhook_secret);
    free(cfg->api_key_vault);
    free(cfg->api_key_file);
    free(cfg->ca_file);
    free(cfg->listen);
    free(cfg->database_url);
    free(cfg->audience_id);
    free(cfg->api_url);
    memset(cfg, 0, sizeof *cfg);
}

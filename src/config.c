/* config: loading the settings in their order: defaults, the environment, the
 * flags, then the checks of the command. See config.h; the parts are named in
 * config_priv.h. */
#include "config_priv.h"

#include <stdio.h>
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

/* The table's defaults; then what has no flag: the webhook body's bound, and the flags'
 * off states (--no-verify, --verbose). A default the table's own parser refuses is a bug. */
static void defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->webhook_max_body = 256 * 1024;
    cfg->verify = true;
    cfg->log_level = LOG_INFO;
    const struct option_def *o;
    for (size_t i = 0; (o = config_option(i)); i++) {
        char err[256];
        if (o->def && !config_apply_option(cfg, o, o->def, err, sizeof err)) {
            fprintf(stderr, "sendry-sync: bad default in the option table: %s\n", err);
            abort();
        }
    }
}

/* The table's variables; the API key's three (at most one set) by config_keys.c. */
static bool from_env(struct config *cfg, char *err, size_t errsize)
{
    const struct option_def *o;
    for (size_t i = 0; (o = config_option(i)); i++) {
        if (!o->env || o->offset == OFF(api_key) || o->offset == OFF(api_key_vault))
            continue;
        const char *v = getenv(o->env);
        if (v && *v && !config_apply_option(cfg, o, v, err, errsize))
            return false;
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

/* config_priv: what the parts of config.h share. config.c loads (defaults, then the
 * environment, then the flags, then the checks) and calls the others:
 *   config_options.c   the option table, --help, one flag's value into struct config
 *   config_keys.c      where the API key comes from (variable, file or Vault), its checks
 *   config_validate.c  what each command needs, after everything is read
 * Nothing else includes it. */
#ifndef SENDRY_CONFIG_PRIV_H
#define SENDRY_CONFIG_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* One table for every setting (config_options.c): the flag (NULL: environment only),
 * what it takes, where it goes, its bounds, its value's name, its default and its
 * environment variable, the help line, and the commands it applies to (0: all). The
 * defaults, the environment, --help and the docs' reference (tools/settings_doc.c) are
 * all generated from it, so they cannot disagree. */
enum opt_kind { OPT_INT, OPT_SECONDS, OPT_RATE, OPT_STRING, OPT_FLAG, OPT_MODE, OPT_LOGFMT };

#define FOR(cmd) (1u << (cmd))
#define ALL 0u
#define OFF(field) offsetof(struct config, field)

struct option_def {
    const char *name;       /* the flag without "--"; NULL: set by the environment only */
    enum opt_kind kind;
    size_t offset;
    double min, max;        /* numbers' bounds */
    const char *arg;        /* the value's name in --help; NULL for a flag */
    const char *def;        /* the default, as the flag's value would give it; NULL: none */
    const char *env;        /* the environment variable; NULL: none */
    const char *help;
    unsigned commands;
};

/* config_options.c: the i-th row of the table, or NULL past the last; whether it takes
 * a number; its bounds, default and variable as text ("1-1000; default 9; env X"). */
const struct option_def *config_option(size_t i);
bool config_option_is_number(const struct option_def *o);
void config_option_facts(const struct option_def *o, char *buf, size_t size);

/* config_options.c: the option called name (name_len bytes, without "--"), or NULL;
 * and one value (NULL for a flag) into cfg, or false with one line in err. */
const struct option_def *config_find_option(const char *name, size_t name_len);
bool config_apply_option(struct config *cfg, const struct option_def *o, const char *value,
                         char *err, size_t errsize);

/* config_keys.c: the key variables of the environment (at most one may be set); a key
 * file (--api-key-file, SENDRY_API_KEY_FILE) or a Vault secret's name (--api-key-vault,
 * SENDRY_API_KEY_VAULT), each replacing the key source given before it. */
bool config_key_from_env(struct config *cfg, char *err, size_t errsize);
bool config_use_key_file(struct config *cfg, const char *path, char *err, size_t errsize);
void config_use_key_vault(struct config *cfg, const char *name);

/* config_validate.c: what the command needs, once the environment and flags are in. */
bool config_validate(struct config *cfg, char *err, size_t errsize);

/* config.c: *dst becomes a copy of value (the old one freed); a string that may hold a
 * secret wiped, freed and set to NULL. */
void config_set_string(char **dst, const char *value);
void config_free_secret(char **s);

#endif

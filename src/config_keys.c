/* config_keys: where the API key comes from (exactly one of SENDRY_API_KEY,
 * SENDRY_API_KEY_FILE / --api-key-file and SENDRY_API_KEY_VAULT / --api-key-vault),
 * reading the key file, and checking a key. Called by config.c and config_options.c
 * (see config_priv.h); config_check_api_key() also by vault.c. */
#include "config_priv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    config_set_string(out, s);
    memset(buf, 0, sizeof buf);
    return true;
}

bool config_use_key_file(struct config *cfg, const char *path, char *err, size_t errsize)
{
    free(cfg->api_key_vault);
    cfg->api_key_vault = NULL;
    cfg->key_source = KEY_FILE;
    config_set_string(&cfg->api_key_file, path);
    return read_key_file(path, &cfg->api_key, err, errsize);
}

bool config_reread_key_file(const struct config *cfg, char **key, char *err, size_t errsize)
{
    return read_key_file(cfg->api_key_file, key, err, errsize) &&
           config_check_api_key(*key, "SENDRY_API_KEY_FILE", err, errsize);
}

void config_use_key_vault(struct config *cfg, const char *name)
{
    config_free_secret(&cfg->api_key);
    free(cfg->api_key_file);
    cfg->api_key_file = NULL;
    cfg->key_source = KEY_VAULT;
    config_set_string(&cfg->api_key_vault, name);
}

/* At most one of the three key variables may be set. */
bool config_key_from_env(struct config *cfg, char *err, size_t errsize)
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
    if (sources[chosen] == KEY_FILE)
        return config_use_key_file(cfg, value, err, errsize);
    if (sources[chosen] == KEY_VAULT) {
        config_use_key_vault(cfg, value);
    } else {
        cfg->key_source = KEY_ENV;
        config_set_string(&cfg->api_key, value);
    }
    return true;
}

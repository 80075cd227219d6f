/* config_validate: what each command needs once the environment and the flags are
 * read: the database, the key and the audience for the worker, the webhook secret with
 * --listen, the API URL and the CA file for the worker and doctor. Called by config.c
 * (see config_priv.h); the messages name the setting, and the caller exits 2. */
#include "config_priv.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

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
    if (!cfg->api_url)
        config_set_string(&cfg->api_url, "https://api.sendry.online");
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
bool config_validate(struct config *cfg, char *err, size_t errsize)
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


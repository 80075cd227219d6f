/* config_validate: what each command needs once the environment and the flags are
 * read: the database, the key and the audience for the worker, the webhook secret with
 * --listen, the API URL and the CA file for the worker and doctor. Called by config.c
 * (see config_priv.h); the messages name the setting, and the caller exits 2. */
#include "config_priv.h"

#include <errno.h>
#include <libpq-fe.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>

/* How many certificates a PEM file holds (0: none, or not PEM); -1 if it cannot be read. */
static int pem_certificates(const char *path)
{
    BIO *bio = BIO_new_file(path, "r");
    if (!bio)
        return -1;
    STACK_OF(X509_INFO) *infos = PEM_X509_INFO_read_bio(bio, NULL, NULL, NULL);
    int n = 0;
    for (int i = 0; infos && i < sk_X509_INFO_num(infos); i++)
        n += sk_X509_INFO_value(infos, i)->x509 != NULL;
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    BIO_free(bio);
    ERR_clear_error();
    return n;
}

/* The CA file: readable, and at least one PEM certificate (libcurl would otherwise fail
 * every request with "error setting certificate file", for ever). */
static bool validate_ca_file(const char *path, char *err, size_t errsize)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errsize, "SENDRY_CA_FILE (--ca-file): cannot read %s: %s", path, strerror(errno));
        return false;
    }
    fclose(f);
    if (pem_certificates(path) <= 0) {
        snprintf(err, errsize, "SENDRY_CA_FILE (--ca-file): %s holds no PEM certificate "
                               "(-----BEGIN CERTIFICATE-----); convert a DER file with "
                               "`openssl x509 -inform der -in FILE -out FILE.pem`", path);
        return false;
    }
    return true;
}

/* The API URL is the base: the paths the worker calls start with /v1. */
static bool ends_with_v1(const char *url)
{
    size_t len = strlen(url);
    return len >= 3 && strcmp(url + len - 3, "/v1") == 0;
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
    if (strncmp(cfg->api_url, "https://", 8) != 0 && strncmp(cfg->api_url, "http://", 7) != 0) {
        snprintf(err, errsize, "SENDRY_API_URL: \"%s\" is not an http(s) URL", cfg->api_url);
        return false;
    }
    size_t len = strlen(cfg->api_url);
    while (len > 0 && cfg->api_url[len - 1] == '/')
        cfg->api_url[--len] = '\0';
    if (ends_with_v1(cfg->api_url)) {
        snprintf(err, errsize, "SENDRY_API_URL: \"%s\" ends in /v1: give the base URL without it "
                               "(e.g. https://api.sendry.online); the worker adds /v1/... itself", cfg->api_url);
        return false;
    }
    if (cfg->ca_file && !validate_ca_file(cfg->ca_file, err, errsize))
        return false;
    return true;
}

/* What the worker itself needs on top of validate_api(). */
static bool validate_run(struct config *cfg, char *err, size_t errsize)
{
    if (cfg->key_source == KEY_FILE && (!cfg->api_key || !*cfg->api_key)) {
        snprintf(err, errsize, "SENDRY_API_KEY_FILE: %s is empty (it should hold the API key, sn_...)",
                 cfg->api_key_file);
        return false;
    }
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
    if (cfg->listen && (!cfg->webhook_secret || !*cfg->webhook_secret)) {
        snprintf(err, errsize, "--listen needs SENDRY_WEBHOOK_SECRET (the webhook's signing secret, "
                               "at least %d characters): the webhook endpoint never runs unauthenticated",
                 WEBHOOK_SECRET_MIN);
        return false;
    }
    if (cfg->listen && strlen(cfg->webhook_secret) < WEBHOOK_SECRET_MIN) {
        snprintf(err, errsize, "SENDRY_WEBHOOK_SECRET is %zu characters: a signing secret must have at "
                               "least %d (copy the endpoint's secret from Sendry)",
                 strlen(cfg->webhook_secret), WEBHOOK_SECRET_MIN);
        return false;
    }
    if (cfg->backoff_cap < cfg->backoff_base) {
        snprintf(err, errsize, "--backoff-cap (%g) is shorter than --backoff-base (%g)",
                 cfg->backoff_cap, cfg->backoff_base);
        return false;
    }
    return true;
}

/* A connection string (key=value ...) or a postgres:// URL: libpq would take anything
 * else as a database name, and every command would fail later with a misleading error. */
static bool validate_database_url(const char *url, char *err, size_t errsize)
{
    bool uri = strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0;
    char *perr = NULL;
    PQconninfoOption *opts = (uri || strchr(url, '=')) ? PQconninfoParse(url, &perr) : NULL;
    if (opts) {
        PQconninfoFree(opts);
        return true;
    }
    size_t n = perr ? strcspn(perr, "\n") : 0;
    snprintf(err, errsize, "DATABASE_URL: not a connection string or URL%s%.*s (expected "
                           "postgresql://USER:PASSWORD@HOST:5432/DATABASE or host=... dbname=...)",
             n ? ": " : "", (int)n, perr ? perr : "");
    PQfreemem(perr);
    return false;
}

/* Each command checks what it uses: migrate and status the database, healthcheck the
 * database or the --listen address, doctor what it cannot report as a failed check. */
bool config_validate(struct config *cfg, char *err, size_t errsize)
{
    if (cfg->command == CMD_MIGRATE && cfg->migrate_status) {
        if (cfg->migrate_action == MIGRATE_PRINT) {
            snprintf(err, errsize, "migrate: --status and --print exclude each other");
            return false;
        }
        cfg->migrate_action = MIGRATE_STATUS;
    }
    if (cfg->command == CMD_MIGRATE && cfg->migrate_action == MIGRATE_PRINT)
        return true;
    if (!cfg->database_url && !(cfg->command == CMD_HEALTHCHECK && cfg->listen)) {
        snprintf(err, errsize, "DATABASE_URL is not set (or pass --database-url)");
        return false;
    }
    if (cfg->database_url && !validate_database_url(cfg->database_url, err, errsize))
        return false;
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


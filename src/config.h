/* config: the worker's settings, from the environment first, then flags.
 *
 * config_load() fills a struct config or writes one line naming the bad setting into
 * err and returns false (the caller exits 2). Strings in struct config are owned by it
 * and freed by config_free(). The API key is read but never printed. */
#ifndef SENDRY_CONFIG_H
#define SENDRY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "log.h"

#define SENDRY_SYNC_VERSION "0.1.0"
#define SENDRY_MAX_BATCH 1000

enum send_mode { MODE_IMPORT = 0, MODE_SINGLE };
enum command { CMD_RUN = 0, CMD_MIGRATE, CMD_HELP, CMD_VERSION };

struct config {
    enum command command;
    char *database_url;
    char *api_key;
    char *audience_id;
    char *api_url;          /* without a trailing slash */
    int batch_size;         /* 1..1000 */
    int concurrency;        /* requests in flight */
    double rate;            /* requests per second, 0 = unlimited */
    double live_share;      /* percent of the request budget bulk work leaves to live rows */
    double lease;           /* seconds */
    int max_attempts;
    double poll_interval;   /* seconds */
    double backoff_base;    /* seconds */
    double backoff_cap;     /* seconds */
    double http_timeout;    /* seconds */
    double drain_timeout;   /* seconds to wait for in-flight requests on SIGTERM */
    double reconcile_interval; /* seconds between reconciliations, 0 = off */
    char *listen;           /* --listen ADDR:PORT, NULL = no HTTP server */
    char *webhook_secret;   /* SENDRY_WEBHOOK_SECRET */
    size_t webhook_max_body;
    enum send_mode mode;
    bool once;
    bool verify;
    enum log_format log_format;
    enum log_level log_level;
};

/* Parses argv (argv[0] is the program) over the environment. */
bool config_load(struct config *cfg, int argc, char **argv, char *err, size_t errsize);
void config_free(struct config *cfg);

/* The --help text. */
void config_usage(FILE *out);

#endif

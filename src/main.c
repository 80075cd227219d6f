/* sendry-sync: delivers public.sendry_outbox to Sendry. See README.md.
 *
 * Set-up order: configuration (exit 2 on a bad setting), logging, libcurl, then either a
 * command that runs without the event loop (migrate, doctor, status, healthcheck), or
 * the worker: the API key from Vault if configured (blocking, before the loop), the
 * event loop and its signal watchers, the relay (database + HTTP), the systemd
 * watchdog. One thread. */
#include <curl/curl.h>
#include <ev.h>
#include <json-c/json.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backfill.h"
#include "config.h"
#include "dbsync.h"
#include "doctor.h"
#include "healthcheck.h"
#include "log.h"
#include "migrate.h"
#include "notify.h"
#include "relay.h"
#include "status.h"
#include "vault.h"

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    relay_reload_key(w->data);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    log_info("received %s", w->signum == SIGTERM ? "SIGTERM" : "SIGINT");
    notify_stopping();
    relay_shutdown(w->data);
}

/* The commands that run without the event loop; -1 for the worker. */
static int run_command(const struct config *cfg)
{
    switch (cfg->command) {
    case CMD_MIGRATE: return migrate_run(cfg);
    case CMD_DOCTOR: return doctor_run(cfg);
    case CMD_STATUS: return status_run(cfg);
    case CMD_HEALTHCHECK: return healthcheck_run(cfg);
    case CMD_BACKFILL: return backfill_run(cfg);
    case CMD_RECONCILE_CONTACTS: return reconcile_contacts_run(cfg);
    default: return -1;
    }
}

/* The worker: the relay on the default loop until it stops. */
static int run_worker(struct config *cfg)
{
    char err[1024];
    int checked = dbsync_preflight(cfg->database_url, err, sizeof err);
    if (checked != 0) {
        fprintf(stderr, "sendry-sync: %s\n", err);
        return checked;
    }
    if (cfg->key_source == KEY_VAULT) {
        int status = vault_load_key(cfg, err, sizeof err);
        if (status != 0) {
            fprintf(stderr, "sendry-sync: %s\n", err);
            return status;
        }
    }
    struct ev_loop *loop = EV_DEFAULT;
    struct relay *relay = relay_new(loop, cfg);
    if (!relay_listen(relay, err, sizeof err)) {
        fprintf(stderr, "sendry-sync: %s\n", err);
        relay_free(relay);
        ev_loop_destroy(loop);
        return 2;
    }
    ev_signal sigterm, sigint, sighup;
    ev_signal_init(&sigterm, on_signal, SIGTERM);
    ev_signal_init(&sigint, on_signal, SIGINT);
    ev_signal_init(&sighup, on_hup, SIGHUP);
    sigterm.data = sigint.data = sighup.data = relay;
    ev_signal_start(loop, &sigterm);
    ev_signal_start(loop, &sigint);
    ev_signal_start(loop, &sighup);

    relay_start(relay);
    notify_watchdog_start(loop); /* WATCHDOG=1 only while the loop runs */
    ev_run(loop, 0);
    notify_watchdog_stop(loop);

    int status = relay_exit_status(relay);
    relay_free(relay);
    ev_signal_stop(loop, &sigterm);
    ev_signal_stop(loop, &sigint);
    ev_signal_stop(loop, &sighup);
    ev_loop_destroy(loop);
    return status;
}

int main(int argc, char **argv)
{
    struct config cfg;
    char err[512];
    if (!config_load(&cfg, argc, argv, err, sizeof err)) {
        fprintf(stderr, "sendry-sync: %s\n", err);
        /* Docker reserves a HEALTHCHECK's exit status 2: unhealthy is 1. */
        int status = cfg.command == CMD_HEALTHCHECK ? 1 : 2;
        config_free(&cfg);
        return status;
    }
    if (cfg.command == CMD_HELP) {
        config_usage(stdout);
        config_free(&cfg);
        return 0;
    }
    if (cfg.command == CMD_VERSION) {
        printf("sendry-sync %s (libcurl %s, libpq %d, json-c %s, libev %d.%d)\n", SENDRY_SYNC_VERSION,
               curl_version_info(CURLVERSION_NOW)->version, PQlibVersion(), json_c_version(),
               ev_version_major(), ev_version_minor());
        config_free(&cfg);
        return 0;
    }
    log_setup(cfg.log_level, cfg.log_format);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("libcurl failed to initialise");
        config_free(&cfg);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    dbsync_set_session(&(struct db_session){cfg.statement_timeout, cfg.lock_timeout,
                                            cfg.idle_in_transaction_timeout});
    int status = run_command(&cfg);
    if (status < 0) {
        if (!(curl_version_info(CURLVERSION_NOW)->features & CURL_VERSION_ASYNCHDNS))
            log_warn("libcurl has no asynchronous resolver: DNS lookups of the API host block the loop");
        status = run_worker(&cfg);
    }
    curl_global_cleanup();
    config_free(&cfg);
    return status;
}

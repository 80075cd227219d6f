/* sendry-sync: delivers public.sendry_outbox to Sendry. See README.md.
 *
 * Set-up order: configuration (exit 2 on a bad setting), logging, libcurl, the event
 * loop and its signal watchers, then the relay (database + HTTP). One thread. */
#include <curl/curl.h>
#include <ev.h>
#include <json-c/json.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "relay.h"

/* sql/install.sql, embedded at build time (see Makefile). */
extern const char sendry_install_sql[];

/* Server notices (install.sql's NOTICE on a plain PostgreSQL) go through the logger,
 * so --log-format json stays one JSON object per line. */
static void notice_to_log(void *arg, const char *message)
{
    (void)arg;
    log_info("db: %s", message);
}

/* `sendry-sync migrate`: runs outside any event loop, so blocking libpq is fine. */
static int migrate(const struct config *cfg)
{
    const char *keys[] = {"fallback_application_name", "dbname", NULL};
    const char *vals[] = {"sendry-sync migrate", cfg->database_url, NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        log_error("migrate: cannot connect: %s", conn ? PQerrorMessage(conn) : "out of memory");
        PQfinish(conn);
        return 1;
    }
    PQsetNoticeProcessor(conn, notice_to_log, NULL);
    PGresult *res = PQexec(conn, sendry_install_sql);
    int status = 0;
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_error("migrate: install.sql failed: %s", PQresultErrorMessage(res));
        status = 1;
    } else {
        log_info("migrate: sql/install.sql applied (as role %s)", PQuser(conn));
    }
    PQclear(res);
    PQfinish(conn);
    return status;
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    log_info("received %s", w->signum == SIGTERM ? "SIGTERM" : "SIGINT");
    relay_shutdown(w->data);
}

int main(int argc, char **argv)
{
    struct config cfg;
    char err[512];
    if (!config_load(&cfg, argc, argv, err, sizeof err)) {
        fprintf(stderr, "sendry-sync: %s\n", err);
        config_free(&cfg);
        return 2;
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
    if (cfg.command == CMD_MIGRATE) {
        int status = migrate(&cfg);
        config_free(&cfg);
        return status;
    }

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("libcurl failed to initialise");
        config_free(&cfg);
        return 1;
    }
    if (!(curl_version_info(CURLVERSION_NOW)->features & CURL_VERSION_ASYNCHDNS))
        log_warn("libcurl has no asynchronous resolver: DNS lookups of the API host block the loop");
    signal(SIGPIPE, SIG_IGN);

    struct ev_loop *loop = EV_DEFAULT;
    struct relay *relay = relay_new(loop, &cfg);
    if (!relay_listen(relay, err, sizeof err)) {
        fprintf(stderr, "sendry-sync: %s\n", err);
        relay_free(relay);
        ev_loop_destroy(loop);
        curl_global_cleanup();
        config_free(&cfg);
        return 2;
    }
    ev_signal sigterm, sigint;
    ev_signal_init(&sigterm, on_signal, SIGTERM);
    ev_signal_init(&sigint, on_signal, SIGINT);
    sigterm.data = sigint.data = relay;
    ev_signal_start(loop, &sigterm);
    ev_signal_start(loop, &sigint);

    relay_start(relay);
    ev_run(loop, 0);

    int status = relay_exit_status(relay);
    relay_free(relay);
    ev_signal_stop(loop, &sigterm);
    ev_signal_stop(loop, &sigint);
    ev_loop_destroy(loop);
    curl_global_cleanup();
    config_free(&cfg);
    return status;
}

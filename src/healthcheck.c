#include "healthcheck.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "dbsync.h"
#include "probe.h"

bool healthcheck_url(const char *listen, char *url, size_t size)
{
    const char *colon = strrchr(listen, ':');
    if (!colon || !colon[1])
        return false;
    size_t host_len = (size_t)(colon - listen);
    const char *host = listen;
    if (host_len == 0 || (host_len == 7 && strncmp(listen, "0.0.0.0", 7) == 0)) {
        host = "127.0.0.1";
        host_len = strlen(host);
    } else if (host_len == 4 && strncmp(listen, "[::]", 4) == 0) {
        host = "[::1]";
        host_len = strlen(host);
    }
    int n = snprintf(url, size, "http://%.*s:%s/healthz", (int)host_len, host, colon + 1);
    return n > 0 && (size_t)n < size;
}

/* The reason in a 503 {"status":"unhealthy","reason":...} (or a 200 "degraded"), or the
 * status code. */
static void describe(const struct probe *p, char *out, size_t size)
{
    json_object *o = json_tokener_parse(p->response ? p->response : "");
    json_object *reason = NULL;
    if (o && json_object_object_get_ex(o, "reason", &reason))
        snprintf(out, size, "HTTP %ld: %s", p->status, json_object_get_string(reason));
    else
        snprintf(out, size, "HTTP %ld", p->status);
    json_object_put(o);
}

static int check_healthz(const char *listen)
{
    char url[512], why[600];
    if (!healthcheck_url(listen, url, sizeof url)) {
        printf("unhealthy: --listen \"%s\" is not ADDR:PORT\n", listen);
        return 1;
    }
    struct probe p = {.method = "GET", .url = url, .timeout_ms = HEALTHCHECK_TIMEOUT_MS,
                      .proxy = PROBE_NO_PROXY};
    int status = 1;
    if (!probe_run(&p)) {
        printf("unhealthy: %s: %s\n", url, p.error);
    } else if (p.status == 200) {
        describe(&p, why, sizeof why);   /* a reason too: {"status":"degraded",...} */
        printf("healthy: %s answered %s\n", url, strcmp(why, "HTTP 200") == 0 ? "200" : why);
        status = 0;
    } else {
        describe(&p, why, sizeof why);
        printf("unhealthy: %s answered %s\n", url, why);
    }
    probe_free(&p);
    return status;
}

static int check_database(const char *conninfo)
{
    char err[1024], one[64];
    PGconn *conn = dbsync_connect(conninfo, "sendry-sync healthcheck",
                                  HEALTHCHECK_TIMEOUT_MS / 1000, err, sizeof err);
    if (!conn) {
        printf("unhealthy: %s\n", err);
        return 1;
    }
    int status = dbsync_scalar(conn, "SELECT 1", 0, NULL, one, sizeof one) ? 0 : 1;
    if (status == 0)
        printf("healthy: the database answers (as role %s)\n", PQuser(conn));
    else
        printf("unhealthy: SELECT 1 failed: %s\n", one);
    PQfinish(conn);
    return status;
}

int healthcheck_run(const struct config *cfg)
{
    int status = cfg->listen ? check_healthz(cfg->listen) : check_database(cfg->database_url);
    fflush(stdout);
    return status;
}

#include "vault.h"

#include <stdlib.h>
#include <string.h>

#include "dbsync.h"
#include "log.h"
#include "xalloc.h"

static const char READ_SQL[] =
    "SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = $1";

#define WATCH_FIRST_RETRY 2.0
#define WATCH_MAX_RETRY 60.0

static void wipe_free(char *s)
{
    if (s)
        memset(s, 0, strlen(s));
    free(s);
}

/* The secret's value, trimmed, checked like any key; or why there is none. */
static enum vault_status take_value(PGresult *res, const char *name, char **key, char *err,
                                    size_t errsize)
{
    if (PQntuples(res) == 0) {
        snprintf(err, errsize, "SENDRY_API_KEY_VAULT: no secret named \"%s\" in "
                 "vault.decrypted_secrets: create it with SELECT vault.create_secret('sn_live_...', '%s')",
                 name, name);
        return VAULT_NO_SECRET;
    }
    if (PQgetisnull(res, 0, 0)) {
        snprintf(err, errsize, "SENDRY_API_KEY_VAULT: secret \"%s\" cannot be decrypted "
                 "(decrypted_secret is NULL): store the key again with vault.update_secret", name);
        return VAULT_BAD_SECRET;
    }
    const char *v = PQgetvalue(res, 0, 0);
    while (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')
        v++;
    size_t len = strlen(v);
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t' || v[len - 1] == '\n' || v[len - 1] == '\r'))
        len--;
    char *copy = strndup(v, len);
    if (!copy) {
        snprintf(err, errsize, "out of memory");
        return VAULT_DB_ERROR;
    }
    char source[160];
    snprintf(source, sizeof source, "SENDRY_API_KEY_VAULT: secret \"%s\"", name);
    if (!config_check_api_key(copy, source, err, errsize)) {
        wipe_free(copy);
        return VAULT_BAD_SECRET;
    }
    *key = copy;
    return VAULT_OK;
}

/* What a failed read means, by SQLSTATE. role may be NULL (the async path). */
static enum vault_status explain(PGresult *res, const char *role, char *err, size_t errsize)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char msg[512];
    if (res)
        dbsync_result_error(res, msg, sizeof msg);
    else
        snprintf(msg, sizeof msg, "connection lost");
    if (state && strcmp(state, "42501") == 0) {
        const char *who = role ? role : "the worker's role";
        snprintf(err, errsize, "SENDRY_API_KEY_VAULT: role %s may not read vault.decrypted_secrets "
                 "(%s): connect as a role that may, or GRANT USAGE ON SCHEMA vault TO %s; "
                 "GRANT SELECT ON vault.decrypted_secrets TO %s; GRANT EXECUTE ON FUNCTION "
                 "vault._crypto_aead_det_decrypt TO %s", who, msg, who, who, who);
        return VAULT_NO_PRIVILEGE;
    }
    if (state && (strcmp(state, "3F000") == 0 || strcmp(state, "42P01") == 0)) {
        snprintf(err, errsize, "SENDRY_API_KEY_VAULT: this database has no vault.decrypted_secrets "
                 "(%s): Supabase Vault is not installed (CREATE EXTENSION supabase_vault CASCADE); "
                 "or give the key with SENDRY_API_KEY_FILE", msg);
        return VAULT_NOT_INSTALLED;
    }
    snprintf(err, errsize, "SENDRY_API_KEY_VAULT: reading vault.decrypted_secrets failed: %s", msg);
    return VAULT_DB_ERROR;
}

enum vault_status vault_read_key(PGconn *conn, const char *name, char **key, char *err,
                                 size_t errsize)
{
    const char *params[1] = {name};
    PGresult *res = PQexecParams(conn, READ_SQL, 1, NULL, params, NULL, NULL, 0);
    enum vault_status st = PQresultStatus(res) == PGRES_TUPLES_OK
                               ? take_value(res, name, key, err, errsize)
                               : explain(res, PQuser(conn), err, errsize);
    PQclear(res);
    return st;
}

int vault_load_key(struct config *cfg, char *err, size_t errsize)
{
    PGconn *conn = dbsync_connect(cfg->database_url, "sendry-sync", 15, err, errsize);
    if (!conn) {
        size_t n = strlen(err);
        snprintf(err + n, errsize - n, " (needed to read SENDRY_API_KEY_VAULT)");
        return 1;
    }
    char *key = NULL;
    enum vault_status st = vault_read_key(conn, cfg->api_key_vault, &key, err, errsize);
    PQfinish(conn);
    if (st != VAULT_OK)
        return st == VAULT_DB_ERROR ? 1 : 2;
    wipe_free(cfg->api_key);
    cfg->api_key = key;
    return 0;
}

/* ---- the watch ---------------------------------------------------------------------- */

enum watch_state {
    WATCH_IDLE,       /* the key in use is believed good */
    WATCH_WAITING,    /* rejected; the retry timer runs */
    WATCH_QUERYING    /* rejected; a read is queued or running */
};

struct vault_watch {
    struct ev_loop *loop;
    struct db *db;
    char *name;
    char *key;             /* the key in use: compared with what the vault holds */
    vault_key_cb cb;
    void *ud;
    enum watch_state state;
    enum watch_state after_read;   /* WATCH_IDLE if calmed while the read ran */
    double retry;
    ev_timer timer;
};

static void start_read(struct vault_watch *w);

static void schedule_retry(struct vault_watch *w)
{
    w->state = WATCH_WAITING;
    ev_timer_set(&w->timer, w->retry, 0.);
    ev_timer_start(w->loop, &w->timer);
    w->retry = w->retry * 2 > WATCH_MAX_RETRY ? WATCH_MAX_RETRY : w->retry * 2;
}

static void on_read(PGresult *res, void *arg)
{
    struct vault_watch *w = arg;
    bool calmed = w->after_read == WATCH_IDLE;
    w->state = WATCH_IDLE;
    char err[1024];
    char *key = NULL;
    enum vault_status st = res && PQresultStatus(res) == PGRES_TUPLES_OK
                               ? take_value(res, w->name, &key, err, sizeof err)
                               : explain(res, NULL, err, sizeof err);
    if (st == VAULT_OK && strcmp(key, w->key) != 0) {
        wipe_free(w->key);
        w->key = key;
        w->retry = WATCH_FIRST_RETRY;
        log_info("vault: secret \"%s\" holds a new API key: using it from now on", w->name);
        w->cb(w->key, w->ud);
        return;
    }
    wipe_free(key);
    if (calmed)
        return;
    if (st == VAULT_OK)
        log_info("vault: secret \"%s\" still holds the rejected key; reading it again in %.0f s",
                 w->name, w->retry);
    else
        log_warn("%s; reading it again in %.0f s", err, w->retry);
    schedule_retry(w);
}

static void start_read(struct vault_watch *w)
{
    const char *params[1] = {w->name};
    w->after_read = WATCH_QUERYING;
    db_query(w->db, READ_SQL, 1, params, on_read, w);
    w->state = WATCH_QUERYING;
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct vault_watch *w = t->data;
    start_read(w);
}

struct vault_watch *vault_watch_new(struct ev_loop *loop, struct db *db, const char *name,
                                    const char *current_key, vault_key_cb cb, void *ud)
{
    struct vault_watch *w = xcalloc(1, sizeof *w);
    *w = (struct vault_watch){.loop = loop, .db = db, .name = xstrdup(name),
                              .key = xstrdup(current_key ? current_key : ""), .cb = cb, .ud = ud,
                              .state = WATCH_IDLE, .retry = WATCH_FIRST_RETRY};
    ev_init(&w->timer, on_timer);
    w->timer.data = w;
    return w;
}

void vault_watch_kick(struct vault_watch *w)
{
    if (w->state == WATCH_QUERYING) {
        w->after_read = WATCH_QUERYING;
        return;
    }
    ev_timer_stop(w->loop, &w->timer);
    if (w->state == WATCH_IDLE) {
        w->retry = WATCH_FIRST_RETRY;
        log_info("vault: Sendry rejected the API key; reading secret \"%s\" again", w->name);
    }
    start_read(w);
}

void vault_watch_calm(struct vault_watch *w)
{
    ev_timer_stop(w->loop, &w->timer);
    if (w->state == WATCH_QUERYING)
        w->after_read = WATCH_IDLE;
    else
        w->state = WATCH_IDLE;
}

void vault_watch_free(struct vault_watch *w)
{
    if (!w)
        return;
    ev_timer_stop(w->loop, &w->timer);
    free(w->name);
    wipe_free(w->key);
    free(w);
}

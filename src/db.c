#include "db.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "db_named.h"
#include "db_session.h"
#include "log.h"
#include "xalloc.h"

enum db_state {
    DB_DISCONNECTED,   /* waiting for the reconnect timer */
    DB_CONNECTING,     /* PQconnectPoll in progress */
    DB_SETTING_UP,     /* the session's SETs and LISTEN (if any) sent, waiting for them */
    DB_READY           /* idle, or running `running` */
};

struct query {
    char *sql;
    const char *name;        /* NULL, or a named statement's name (static storage) */
    struct named_try named;  /* its sends, if named */
    int nparams;
    char **params;
    db_result_cb cb;
    void *arg;
    struct query *next;
};

struct db {
    struct ev_loop *loop;
    char *name;
    char *conninfo;
    char *listen_sql;        /* NULL: no LISTEN */
    struct db_session session;
    char *setup_sql;         /* the SETs, then the LISTEN; NULL: nothing to set up */
    struct db_callbacks cbs;
    enum db_state state;
    PGconn *conn;
    ev_io io;
    int io_events;
    ev_timer retry;          /* reconnect after backoff */
    ev_timer deadline;       /* connection attempt timeout */
    ev_timer answer;         /* the running query's deadline */
    ev_idle pump_w;          /* db_query() sends from the loop, never inside the call */
    double backoff;
    uint64_t rng;            /* reconnect jitter, seeded per process */
    bool ever_connected;
    unsigned quiet_attempts; /* failed attempts at the longest delay */
    bool flushing;
    struct query *head, *tail;
    struct query *running;   /* sent, results not all read */
    PGresult *result;        /* the last result of `running` */
    char err[512];
    struct db_overdue overdue; /* db_overdue(): "" while queries are answered in time */
    struct db_named named;   /* the named statements prepared on the connection */
};

#define CONNECT_TIMEOUT 15.0
#define BACKOFF_MIN 0.25
#define BACKOFF_MAX 30.0

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void connect_start(struct db *db);

static void query_free(struct query *q)
{
    if (!q)
        return;
    for (int i = 0; i < q->nparams; i++)
        free(q->params[i]);
    free(q->params);
    free(q->sql);
    free(q);
}

/* (Re-)arms the watcher on the connection's current socket: the socket may change
 * between PQconnectPoll calls, and only ev_io_set tells libev about a new one. */
static void arm(struct db *db, int events)
{
    int fd = PQsocket(db->conn);
    if (ev_is_active(&db->io) && db->io.fd == fd && db->io_events == events)
        return;
    ev_io_stop(db->loop, &db->io);
    if (fd < 0)
        return;
    ev_io_set(&db->io, fd, events);
    db->io_events = events;
    ev_io_start(db->loop, &db->io);
}

static void set_error(struct db *db, const char *prefix)
{
    const char *msg = db->conn ? PQerrorMessage(db->conn) : "out of memory";
    snprintf(db->err, sizeof db->err, "%s%s", prefix, msg && *msg ? msg : "connection lost");
    size_t n = strlen(db->err);
    while (n > 0 && (db->err[n - 1] == '\n' || db->err[n - 1] == ' '))
        db->err[--n] = '\0';
    for (char *p = db->err; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
}

/* A connection the server will refuse however often it is tried: the password, the
 * role, the database, the host name. libpq gives no SQLSTATE before a connection
 * exists, so its (English) messages are read; anything else counts as "down". */
bool db_error_is_permanent(const char *err)
{
    static const char *const fatal[] = {
        "password authentication failed", "no password supplied", "does not exist",
        "no pg_hba.conf entry", "could not translate host name", "invalid connection option",
        "SSL is not enabled on the server", "server does not support SSL"};
    for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
        if (strstr(err, fatal[i]))
            return true;
    return false;
}

/* The next attempt after backoff. A server that stays down is told once each time the
 * delay grows, then once every ten attempts. */
static void schedule_reconnect(struct db *db, bool was_up)
{
    double jitter = 0.5 + rand_unit(&db->rng) / 2;   /* 0.5 .. 1.0 */
    double delay = db->backoff * jitter;
    bool grew = db->backoff < BACKOFF_MAX;
    db->backoff = db->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : db->backoff * 2;
    ev_timer_stop(db->loop, &db->retry);
    ev_timer_set(&db->retry, delay, 0.);
    ev_timer_start(db->loop, &db->retry);
    if (was_up || grew || ++db->quiet_attempts % 10 == 0)
        log_error("db: %s (%s connection); reconnecting in %.2f s", db->err, db->name, delay);
}

/* Drops the connection: stop the watcher before PQfinish (the fd number may be reused
 * by the next socket), fail the query in flight, keep the queue for the next one. */
static void lost(struct db *db, const char *why)
{
    bool was_up = db->state == DB_READY || db->state == DB_SETTING_UP;
    if (why)
        set_error(db, why);
    if (!was_up && !db->ever_connected && db_error_is_permanent(db->err) && db->cbs.refused)
        db->cbs.refused(db->cbs.ud, db->err);
    ev_io_stop(db->loop, &db->io);
    ev_timer_stop(db->loop, &db->deadline);
    ev_timer_stop(db->loop, &db->answer);
    if (db->conn)
        PQfinish(db->conn);
    db->conn = NULL;
    db->state = DB_DISCONNECTED;
    db->flushing = false;
    db_named_forget(&db->named);
    PQclear(db->result);
    db->result = NULL;
    struct query *q = db->running;
    db->running = NULL;
    if (q) {
        if (q->cb)
            q->cb(NULL, q->arg);
        query_free(q);
    }
    if (was_up && db->cbs.disconnected)
        db->cbs.disconnected(db->cbs.ud);
    if (db->state == DB_DISCONNECTED && !ev_is_active(&db->retry))
        schedule_reconnect(db, was_up);
}

static void flush(struct db *db)
{
    int r = PQflush(db->conn);
    if (r < 0) {
        lost(db, "send failed: ");
        return;
    }
    db->flushing = r == 1;
    arm(db, EV_READ | (db->flushing ? EV_WRITE : 0));
}

/* After a send: the answer's deadline starts, and what libpq could not write yet goes out
 * as the socket takes it. */
static void sent(struct db *db)
{
    if (db->session.statement_timeout > 0) {
        ev_timer_set(&db->answer, db_answer_deadline(&db->session), 0.);
        ev_timer_start(db->loop, &db->answer);
    }
    flush(db);
}

/* Sends q as db_named_step says: as it is, or its preparation, or its execution by name. */
static bool send_query(struct db *db, struct query *q)
{
    const char *const *params = (const char *const *)q->params;
    char name[64];
    switch (db_named_step(&db->named, q->name, &q->named, name, sizeof name)) {
    case NAMED_PREPARE: return PQsendPrepare(db->conn, name, q->sql, q->nparams, NULL);
    case NAMED_EXECUTE: return PQsendQueryPrepared(db->conn, name, q->nparams, params, NULL, NULL, 0);
    case NAMED_PLAIN: break;
    }
    return PQsendQueryParams(db->conn, q->sql, q->nparams, NULL, params, NULL, NULL, 0);
}

/* Sends the running query (again) and starts its deadline. */
static void send_running(struct db *db)
{
    if (!send_query(db, db->running)) {
        lost(db, "could not send query: ");
        return;
    }
    sent(db);
}

/* Sends the next queued query if the connection is free. */
static void pump(struct db *db)
{
    if (db->state != DB_READY || db->running || !db->head)
        return;
    struct query *q = db->head;
    db->head = q->next;
    if (!db->head)
        db->tail = NULL;
    q->next = NULL;
    db->running = q;
    send_running(db);
}

/* Whether the answer asks for another send rather than the query's callback (a named
 * statement's preparation, or a retry: db_named_answer), saying why when it is news. */
static bool resend_after(struct db *db, struct query *q, const PGresult *res)
{
    enum named_answer a = db_named_answer(&db->named, q->name, &q->named,
                                          PQresultStatus(res) == PGRES_COMMAND_OK,
                                          PQresultErrorField(res, PG_DIAG_SQLSTATE));
    switch (a) {
    case NAMED_DONE: return false;
    case NAMED_SEND: break;
    case NAMED_SEND_TAKEN:
        log_info("db: statement %s: its name is taken on the %s connection (a session pooler that "
                 "keeps what its last client prepared?): another name", q->name, db->name);
        break;
    case NAMED_SEND_STALE:
        log_info("db: statement %s prepared again (%s)", q->name,
                 PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
        break;
    case NAMED_SEND_OFF:
        log_warn("db: prepared statements do not last on the %s connection (a transaction-mode "
                 "pooler?); every statement is planned anew from now on", db->name);
        break;
    }
    return true;
}

static void drain_notifies(struct db *db)
{
    bool any = false;
    PGnotify *n;
    while (db->conn && (n = PQnotifies(db->conn))) {
        any = true;
        PQfreemem(n);
    }
    if (any && db->cbs.notified)
        db->cbs.notified(db->cbs.ud);
}

static void became_ready(struct db *db)
{
    db->state = DB_READY;
    db->backoff = BACKOFF_MIN;
    db->ever_connected = true;
    db->quiet_attempts = 0;
    const char *version = PQparameterStatus(db->conn, "server_version");
    log_info("db: connected (%s connection, PostgreSQL %s%s%s)", db->name, version ? version : "?",
             db->listen_sql ? ", " : "", db->listen_sql ? db->listen_sql : "");
    if (db->cbs.connected)
        db->cbs.connected(db->cbs.ud);
}

static void on_setup_done(struct db *db, PGresult *res)
{
    ev_timer_stop(db->loop, &db->answer);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        snprintf(db->err, sizeof db->err, "setting up the session (%s) failed: %s", db->setup_sql,
                 PQresultErrorMessage(res));
        lost(db, NULL);
        return;
    }
    became_ready(db);
}

/* A statement or lock timeout in the answer reports the connection past its deadline. */
static void note_answer(struct db *db, const PGresult *res)
{
    if (db_overdue_answer(&db->overdue, db->name, &db->session, res, ev_now(db->loop)))
        log_warn("db: %s", db->overdue.text);
}

/* Reads whatever results are complete; a NULL from PQgetResult ends a query. */
static void read_results(struct db *db)
{
    while (db->conn && (db->running || db->state == DB_SETTING_UP) && !PQisBusy(db->conn)) {
        PGresult *res = PQgetResult(db->conn);
        if (res) {
            PQclear(db->result);
            db->result = res;
            continue;
        }
        res = db->result;
        db->result = NULL;
        if (db->state == DB_SETTING_UP) {
            on_setup_done(db, res);
        } else {
            struct query *q = db->running;
            ev_timer_stop(db->loop, &db->answer);
            if (resend_after(db, q, res)) {
                PQclear(res);
                send_running(db);
                continue;
            }
            db->running = NULL;
            note_answer(db, res);
            if (q->cb)
                q->cb(res, q->arg);
            query_free(q);
        }
        PQclear(res);
    }
}

/* One step of PQconnectPoll; once connected: non-blocking mode, then LISTEN (if any). */
static void connect_step(struct db *db)
{
    switch (PQconnectPoll(db->conn)) {
    case PGRES_POLLING_FAILED:
        lost(db, "connect failed: ");
        return;
    case PGRES_POLLING_READING:
        arm(db, EV_READ);
        return;
    case PGRES_POLLING_WRITING:
        arm(db, EV_WRITE);
        return;
    case PGRES_POLLING_OK:
        break;
    default:
        return;
    }
    ev_timer_stop(db->loop, &db->deadline);
    if (PQsetnonblocking(db->conn, 1) != 0) {
        lost(db, "PQsetnonblocking: ");
        return;
    }
    if (!db->setup_sql) {
        arm(db, EV_READ);
        became_ready(db);
        pump(db);
        return;
    }
    /* One simple-protocol string: the SETs, then the LISTEN; the last result says whether
     * all of it went through (an error skips the statements after it). */
    db->state = DB_SETTING_UP;
    if (!PQsendQuery(db->conn, db->setup_sql)) {
        lost(db, "could not set up the session: ");
        return;
    }
    sent(db);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct db *db = w->data;
    if (db->state == DB_CONNECTING) {
        connect_step(db);
        return;
    }
    if ((revents & EV_WRITE) && db->flushing) {
        flush(db);
        if (!db->conn)
            return;
    }
    if (revents & EV_READ) {
        if (!PQconsumeInput(db->conn)) {
            lost(db, "");
            return;
        }
        read_results(db);
        if (!db->conn)
            return;
        /* Any read can absorb notifications, and PQnotifies itself never reads. */
        drain_notifies(db);
        if (!db->conn)
            return;
        if (PQstatus(db->conn) == CONNECTION_BAD) {
            lost(db, "");
            return;
        }
    }
    pump(db);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    connect_start(w->data);
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct db *db = w->data;
    snprintf(db->err, sizeof db->err, "connect timed out after %.0f s", CONNECT_TIMEOUT);
    lost(db, NULL);
}

/* No answer to the running query past its statement_timeout and the grace: drop the
 * connection (see db.h for why not PQcancel); its callback gets NULL, as on any loss. */
static void on_answer_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct db *db = w->data;
    db_overdue_silence(&db->overdue, db->name, &db->session, ev_now(db->loop));
    log_error("db: %s", db->overdue.text);
    snprintf(db->err, sizeof db->err, "no answer to a query for %.0f s", db_answer_deadline(&db->session));
    lost(db, NULL);
}

static void notice_processor(void *arg, const char *message)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", message);
    size_t n = strlen(buf);
    while (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    log_info("db: %s (%s connection)", buf, ((struct db *)arg)->name);
}

static void connect_start(struct db *db)
{
    /* Our defaults first: values in DATABASE_URL (expanded from dbname) override them.
     * Keepalives notice a dead server while the connection is idle. */
    const char *keys[] = {"fallback_application_name", "keepalives", "keepalives_idle",
                          "keepalives_interval", "keepalives_count", "dbname", NULL};
    const char *vals[] = {"sendry-sync", "1", "30", "10", "3", db->conninfo, NULL};
    db->conn = PQconnectStartParams(keys, vals, 1);
    if (!db->conn || PQstatus(db->conn) == CONNECTION_BAD) {
        lost(db, "connect failed: ");
        return;
    }
    PQsetNoticeProcessor(db->conn, notice_processor, db);
    db->state = DB_CONNECTING;
    ev_timer_set(&db->deadline, CONNECT_TIMEOUT, 0.);
    ev_timer_start(db->loop, &db->deadline);
    arm(db, EV_WRITE);
}

static void on_pump(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)revents;
    ev_idle_stop(loop, w);
    pump(w->data);
}

struct db *db_new(struct ev_loop *loop, const char *name, const char *conninfo,
                  const char *channel, struct db_callbacks cbs)
{
    struct db *db = xcalloc(1, sizeof *db);
    db->loop = loop;
    db->cbs = cbs;
    db->name = xstrdup(name);
    db->conninfo = xstrdup(conninfo);
    if (channel) {
        size_t n = strlen(channel) + 16;
        db->listen_sql = xmalloc(n);
        snprintf(db->listen_sql, n, "LISTEN %s", channel);
    }
    db->backoff = BACKOFF_MIN;
    db->rng = rand_seed(db);
    if (db->listen_sql)
        db->setup_sql = xstrdup(db->listen_sql);
    ev_init(&db->io, on_io);
    db->io.data = db;
    ev_init(&db->retry, on_retry);
    db->retry.data = db;
    ev_init(&db->deadline, on_deadline);
    db->deadline.data = db;
    ev_init(&db->answer, on_answer_deadline);
    db->answer.data = db;
    ev_idle_init(&db->pump_w, on_pump);
    db->pump_w.data = db;
    return db;
}

void db_set_session(struct db *db, const struct db_session *session)
{
    assert(db->state == DB_DISCONNECTED && !db->conn);
    db->session = *session;
    char sets[256];
    db_session_sql(session, sets, sizeof sets);
    free(db->setup_sql);
    db->setup_sql = NULL;
    if (!*sets && !db->listen_sql)
        return;
    size_t n = strlen(sets) + (db->listen_sql ? strlen(db->listen_sql) : 0) + 3;
    db->setup_sql = xmalloc(n);
    snprintf(db->setup_sql, n, "%s%s%s", sets, *sets && db->listen_sql ? "; " : "",
             db->listen_sql ? db->listen_sql : "");
}

void db_start(struct db *db)
{
    connect_start(db);
}

void db_free(struct db *db)
{
    if (!db)
        return;
    ev_io_stop(db->loop, &db->io);
    ev_timer_stop(db->loop, &db->retry);
    ev_timer_stop(db->loop, &db->deadline);
    ev_timer_stop(db->loop, &db->answer);
    ev_idle_stop(db->loop, &db->pump_w);
    if (db->conn)
        PQfinish(db->conn);
    PQclear(db->result);
    query_free(db->running);
    while (db->head) {
        struct query *q = db->head;
        db->head = q->next;
        query_free(q);
    }
    free(db->name);
    free(db->conninfo);
    free(db->listen_sql);
    free(db->setup_sql);
    free(db);
}

static struct query *query_new(const char *sql, int nparams, const char *const *params,
                               db_result_cb cb, void *arg)
{
    struct query *q = xcalloc(1, sizeof *q);
    q->sql = xstrdup(sql);
    q->params = xcalloc((size_t)(nparams ? nparams : 1), sizeof *q->params);
    q->nparams = nparams;
    q->cb = cb;
    q->arg = arg;
    for (int i = 0; i < nparams; i++)
        q->params[i] = params[i] ? xstrdup(params[i]) : NULL;
    return q;
}

void db_query(struct db *db, const char *sql, int nparams, const char *const *params,
              db_result_cb cb, void *arg)
{
    struct query *q = query_new(sql, nparams, params, cb, arg);
    if (db->tail)
        db->tail->next = q;
    else
        db->head = q;
    db->tail = q;
    ev_idle_start(db->loop, &db->pump_w);
}

void db_query_named(struct db *db, const char *name, const char *sql, int nparams,
                    const char *const *params, db_result_cb cb, void *arg)
{
    db_query(db, sql, nparams, params, cb, arg);
    db->tail->name = name;
}

void db_replan(struct db *db)
{
    size_t old;
    unsigned generation;
    db_named_replan(&db->named, &old, &generation);
    char sql[96];
    for (size_t i = 0; i < old; i++) {
        snprintf(sql, sizeof sql, "DEALLOCATE %s_%u", db->named.prepared[i], generation);
        db_query(db, sql, 0, NULL, NULL, NULL);
    }
}

void db_query_first(struct db *db, const char *sql, int nparams, const char *const *params,
                    db_result_cb cb, void *arg)
{
    struct query *q = query_new(sql, nparams, params, cb, arg);
    q->next = db->head;
    db->head = q;
    if (!db->tail)
        db->tail = q;
    ev_idle_start(db->loop, &db->pump_w);
}

bool db_connected(const struct db *db)
{
    return db->state == DB_READY;
}

bool db_idle(const struct db *db)
{
    return db->state == DB_READY && !db->running && !db->head;
}

const char *db_last_error(const struct db *db)
{
    return db->err;
}

const char *db_overdue(const struct db *db)
{
    return db->overdue.text;
}

const char *db_user(const struct db *db)
{
    const char *u = db->conn ? PQuser(db->conn) : NULL;
    return u ? u : "";
}

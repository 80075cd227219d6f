/* db_test: src/db.c against a real PostgreSQL (run under tests/pgharness.py, which
 * exports PGHOST/PGPORT/PGDATABASE/PGUSER).
 *
 *   1. A query whose send fails at once (more than 65535 parameters: libpq refuses it
 *      before anything goes on the wire) gets its callback with res == NULL only after
 *      db_query() has returned, from the loop, never inside the call.
 *   2. The connection comes back after that failure, and a query queued while it was
 *      down runs once it is up.
 *   3. A plain query's callback also runs after db_query() returned.
 *   4. After the connection is lost with a query queued behind the one in flight, a
 *      query put first (db_query_first) from the connected callback runs before the
 *      queued one (the relay's orphan release must run before a claim queued earlier).
 *   5. A connection with session settings SETs them at connect (SHOW reads them back);
 *      a statement the server ends at its statement_timeout marks the connection past
 *      its deadline (db_overdue) until a query is answered two deadlines after the last
 *      one that was not.
 *   6. A query with no answer (its backend stopped with SIGSTOP) drops the connection
 *      at twice its statement_timeout (0.5 s; the grace is at most DB_ANSWER_GRACE):
 *      its callback gets NULL, db_overdue says
 *      so, and the connection comes back.
 *   7. dbfault.c on real errors: an undefined table or column (class 42) needs a migrate,
 *      insufficient_privilege a GRANT, a statement timeout passes by itself (transient),
 *      a division by zero is neither (passing), a lost connection is transient.
 *   8. A named statement (db_query_named) is prepared on its first run and executed by
 *      name after (the session holds it once); db_replan deallocates it, and the next
 *      run prepares it again under the next name; its callback, as any query's, runs
 *      after the call returned.
 * Every wait is a loop run with a deadline timer. */
#include <errno.h>
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "dbfault.h"
#include "log.h"

#include "check.h"

#define DEADLINE 20.0

static struct ev_loop *loop;
static int connected_count, disconnected_count;
static bool returned;          /* set right after db_query() returns */
static int calls;
static bool called_before_return;
static bool got_null, got_rows;
static char value[64];

static char order[16];          /* test 4: the order the results came in */
static struct db *first_on_connect;  /* test 4: where the connected callback puts a query first */

static void on_ordered(PGresult *res, void *arg)
{
    size_t n = strlen(order);
    if (n + 1 < sizeof order)
        order[n] = res && PQresultStatus(res) == PGRES_TUPLES_OK ? *(const char *)arg : 'x';
    ev_break(loop, EVBREAK_ONE);
}

static void on_connected(void *ud)
{
    (void)ud;
    connected_count++;
    if (first_on_connect)
        db_query_first(first_on_connect, "SELECT 1", 0, NULL, on_ordered, "F");
    first_on_connect = NULL;
    ev_break(loop, EVBREAK_ONE);
}

static void on_disconnected(void *ud)
{
    (void)ud;
    disconnected_count++;
}

static void on_result(PGresult *res, void *arg)
{
    (void)arg;
    calls++;
    if (!returned)
        called_before_return = true;
    got_null = res == NULL;
    got_rows = res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    snprintf(value, sizeof value, "%s", got_rows ? PQgetvalue(res, 0, 0) : "");
    ev_break(loop, EVBREAK_ONE);
}

static void on_deadline(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    fprintf(stderr, "db_test: deadline of %.0f s passed\n", DEADLINE);
    ev_break(l, EVBREAK_ALL);
}

/* Runs the loop until a callback breaks it, or the deadline passes (returns false). */
static bool run_until_break(void)
{
    ev_timer deadline;
    ev_timer_init(&deadline, on_deadline, DEADLINE, 0.);
    ev_timer_start(loop, &deadline);
    ev_run(loop, 0);
    bool in_time = ev_is_active(&deadline);
    ev_timer_stop(loop, &deadline);
    return in_time;
}

static enum db_fault fault;    /* test 7 */
static char described[1024];

static void on_fault(PGresult *res, void *arg)
{
    fault = db_fault_of(res);
    db_fault_describe(fault, res, "claiming rows", "worker_role", described, sizeof described);
    (void)arg;
    ev_break(loop, EVBREAK_ONE);
}

static enum db_fault fault_of(struct db *db, const char *sql)
{
    fault = DB_FAULT_NONE;
    described[0] = '\0';
    db_query(db, sql, 0, NULL, on_fault, NULL);
    CHECK(run_until_break());
    return fault;
}

static void query(struct db *db, const char *sql, int nparams, const char *const *params)
{
    returned = false;
    calls = 0;
    db_query(db, sql, nparams, params, on_result, NULL);
    returned = true;
    CHECK(calls == 0);   /* nothing ran inside the call */
}

int main(void)
{
    log_setup(LOG_WARN, LOG_TEXT);
    loop = EV_DEFAULT;
    struct db_callbacks cbs = {.connected = on_connected, .disconnected = on_disconnected};
    struct db *db = db_new(loop, "test", "", NULL, cbs);
    db_start(db);
    CHECK(run_until_break() && connected_count == 1);

    /* 1. A send that fails inside PQsendQueryParams. */
    enum { TOO_MANY = 70000 };
    const char **params = calloc(TOO_MANY, sizeof *params);
    query(db, "SELECT 1", TOO_MANY, params);
    free(params);
    CHECK(run_until_break());
    CHECK(calls == 1);
    CHECK(!called_before_return);
    CHECK(got_null);

    /* 2. It reconnects; a query queued while down runs when it is up. */
    CHECK(disconnected_count == 1);
    CHECK(!db_connected(db));
    const char *p1[1] = {"forty-two"};
    query(db, "SELECT $1::text", 1, p1);
    CHECK(run_until_break());           /* the reconnect */
    CHECK(connected_count == 2);
    if (calls == 0)
        CHECK(run_until_break());       /* the result */
    CHECK(calls == 1 && got_rows && !called_before_return);
    CHECK_STR(value, "forty-two");

    /* 3. A plain query. */
    query(db, "SELECT 7", 0, NULL);
    CHECK(run_until_break());
    CHECK(calls == 1 && got_rows && !called_before_return);
    CHECK_STR(value, "7");

    /* 4. A query in flight when the backend is terminated, one queued behind it; on the
     *    reconnect a query is put first. Order: the lost one (x), the first (F), the
     *    queued one (Q). */
    struct db *killer = db_new(loop, "killer", "", NULL, (struct db_callbacks){.connected = on_connected});
    db_start(killer);
    CHECK(run_until_break());
    query(db, "SELECT pg_backend_pid()::text", 0, NULL);
    CHECK(run_until_break() && got_rows);
    char pid[64];
    snprintf(pid, sizeof pid, "%s", value);
    db_query(db, "SELECT pg_sleep(30)", 0, NULL, on_ordered, "S");
    db_query(db, "SELECT 2", 0, NULL, on_ordered, "Q");
    first_on_connect = db;
    const char *kp[1] = {pid};
    query(killer, "SELECT pg_terminate_backend($1::int)::text, pg_sleep(0.2)::text", 1, kp);
    while (strlen(order) < 3 && run_until_break())
        ;
    CHECK_STR(order, "xFQ");

    db_free(killer);
    db_free(db);

    /* 5. Session settings and the server's statement timeout. */
    struct db *timed = db_new(loop, "timed", "", NULL, cbs);
    db_set_session(timed, &(struct db_session){.statement_timeout = 0.5, .lock_timeout = 0.25,
                                               .idle_in_transaction_timeout = 61});
    db_start(timed);
    CHECK(run_until_break());
    query(timed, "SELECT current_setting('statement_timeout') || ' ' || current_setting('lock_timeout')"
                 " || ' ' || current_setting('idle_in_transaction_session_timeout')", 0, NULL);
    CHECK(run_until_break() && got_rows);
    CHECK_STR(value, "500ms 250ms 61s");
    CHECK_STR(db_overdue(timed), "");
    query(timed, "SELECT pg_sleep(3)::text", 0, NULL);
    CHECK(run_until_break() && calls == 1 && !got_null && !got_rows);
    CHECK(strstr(db_overdue(timed), "timed connection: a query was cancelled at its 0.5 s deadline") != NULL);
    query(timed, "SELECT 1", 0, NULL);       /* answered, but within two deadlines: still reported */
    CHECK(run_until_break() && got_rows);
    CHECK(*db_overdue(timed));
    query(timed, "SELECT pg_sleep(2.1)::text", 0, NULL);   /* ... ended by statement_timeout */
    CHECK(run_until_break() && !got_rows);
    usleep(2100 * 1000);                     /* two deadlines (2 x 1 s) since the last miss */
    ev_now_update(loop);
    query(timed, "SELECT 1", 0, NULL);
    CHECK(run_until_break() && got_rows);
    CHECK_STR(db_overdue(timed), "");

    /* 6. No answer at all: the backend stopped. */
    query(timed, "SELECT pg_backend_pid()::text", 0, NULL);
    CHECK(run_until_break() && got_rows);
    pid_t backend = (pid_t)atoi(value);
    if (kill(backend, SIGSTOP) != 0) {
        printf("db_test: 6 skipped: cannot stop the backend (%s)\n", strerror(errno));
    } else {
        int before = connected_count;
        ev_tstamp sent = ev_now(loop);
        query(timed, "SELECT 1", 0, NULL);
        CHECK(run_until_break() && calls == 1 && got_null);
        ev_now_update(loop);
        double waited = ev_now(loop) - sent;
        CHECK(waited >= 1.0 - 0.1 && waited < 1.0 + 2);   /* 0.5 s, and as long again */
        CHECK(strstr(db_overdue(timed), "no answer for 1 s, past its 0.5 s deadline") != NULL);
        kill(backend, SIGCONT);
        while (connected_count == before && run_until_break())
            ;
        CHECK(connected_count == before + 1);
        usleep(2100 * 1000);
        ev_now_update(loop);
        query(timed, "SELECT 1", 0, NULL);
        CHECK(run_until_break() && got_rows);
        CHECK_STR(db_overdue(timed), "");
    }

    /* 7. What failed statements say. */
    CHECK(fault_of(timed, "SELECT 1") == DB_FAULT_NONE);
    CHECK(fault_of(timed, "SELECT * FROM public.no_such_table") == DB_FAULT_SCHEMA);
    CHECK(strstr(described, "(SQLSTATE 42P01)") && strstr(described, "fix: sendry-sync migrate"));
    CHECK(fault_of(timed, "SELECT no_such_column FROM pg_class") == DB_FAULT_SCHEMA);
    CHECK(fault_of(timed, "SELECT 1 / 0") == DB_FAULT_PASSING);
    CHECK(fault_of(timed, "SELECT pg_sleep(3)") == DB_FAULT_TRANSIENT);
    CHECK(fault_of(timed, "DO $$ BEGIN RAISE insufficient_privilege USING MESSAGE = 'permission denied for "
                          "table sendry_outbox'; END $$") == DB_FAULT_PRIVILEGE);
    CHECK(strstr(described, "permission denied for table sendry_outbox (SQLSTATE 42501)") &&
          strstr(described, "GRANT SELECT, UPDATE ON public.sendry_outbox TO worker_role; GRANT SELECT, INSERT, "
                                    "UPDATE ON public.sendry_contact_state TO worker_role; GRANT EXECUTE ON "
                                    "FUNCTION public.sendry_event_id(bigint), public.sendry_claim_render(uuid[]) "
                                    "TO worker_role"));
    CHECK(fault_of(timed, "DO $$ BEGIN RAISE object_not_in_prerequisite_state USING MESSAGE = 'no database_id',"
                          " HINT = 'restore the row'; END $$") == DB_FAULT_STATE);
    CHECK(strstr(described, "no database_id (SQLSTATE 55000); fix: restore the row"));
    CHECK(db_fault_of(NULL) == DB_FAULT_TRANSIENT);

    /* 8. Named statements. */
    const char *prepared_sql = "SELECT COALESCE(string_agg(name, ','), '-') FROM pg_prepared_statements";
    const char *np[1] = {"9"};
    for (int run = 0; run < 3; run++) {
        if (run == 2)
            db_replan(timed);
        returned = false;
        calls = 0;
        db_query_named(timed, "db_test_named", "SELECT ($1::int + 1)::text", 1, np, on_result, NULL);
        returned = true;
        CHECK(calls == 0);
        CHECK(run_until_break() && got_rows && !called_before_return);
        CHECK_STR(value, "10");
        query(timed, prepared_sql, 0, NULL);
        CHECK(run_until_break() && got_rows);
        CHECK_STR(value, run < 2 ? "db_test_named_0" : "db_test_named_1");
    }
    db_replan(timed);
    query(timed, prepared_sql, 0, NULL);
    CHECK(run_until_break() && got_rows);
    CHECK_STR(value, "-");
    db_free(timed);
    ev_loop_destroy(loop);
    printf("db: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

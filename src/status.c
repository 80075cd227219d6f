#include "status.h"

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbsync.h"
#include "log.h"
#include "status_events.h"

/* Every figure is bounded, whatever the size of the outbox (tests/test_hot_plans.py):
 * a count reads at most COUNT_CAP entries of a partial index (of each class in the
 * claim index for pending and due rows, the index of rows in flight, the index of
 * failed rows), in the index's order (no statistics can then make a sequential scan
 * with a LIMIT look cheaper), and says so when it stops there; sent rows have no index of their own, so their total is an
 * estimate (PostgreSQL's count of live rows less the others) and the last hour's sends
 * are counted in a sample of at most SAMPLE_PAGES pages of the table (exact while the
 * table is no bigger, scaled and marked estimated beyond). */
#define STR_(x) #x
#define STR(x) STR_(x)
#define COUNT_CAP "1000000"
#define SAMPLE_PAGES "2000"

static const char STATS_SQL[] =
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM public.sendry_outbox"
    "                              WHERE class = 'live' AND status = 'pending'"
    "                              ORDER BY next_attempt_at LIMIT $1) x)"
    "     + (SELECT count(*) FROM (SELECT 1 FROM public.sendry_outbox"
    "                              WHERE class = 'bulk' AND status = 'pending'"
    "                              ORDER BY next_attempt_at LIMIT $1) x),"
    "       (SELECT count(*) FROM (SELECT 1 FROM public.sendry_outbox"
    "                              WHERE class = 'live' AND status = 'pending' AND next_attempt_at <= now()"
    "                              ORDER BY next_attempt_at LIMIT $1) x)"
    "     + (SELECT count(*) FROM (SELECT 1 FROM public.sendry_outbox"
    "                              WHERE class = 'bulk' AND status = 'pending' AND next_attempt_at <= now()"
    "                              ORDER BY next_attempt_at LIMIT $1) x),"
    "       (SELECT count(*) FROM (SELECT 1 FROM public.sendry_outbox"
    "                              WHERE status = 'processing' AND locked_by IS NOT NULL"
    "                              ORDER BY locked_by LIMIT $1) x),"
    "       NULL::bigint,"   /* sent: from SENT_SQL's sample */
    "       (SELECT count(*) FROM (SELECT 1 FROM public.sendry_outbox"
    "                              WHERE status = 'failed' AND updated_at IS NOT NULL"
    "                              ORDER BY updated_at DESC LIMIT $1) x),"
    "       EXTRACT(EPOCH FROM now() - LEAST("
    "           (SELECT next_attempt_at FROM public.sendry_outbox"
    "            WHERE class = 'live' AND status = 'pending' AND next_attempt_at <= now()"
    "            ORDER BY next_attempt_at LIMIT 1),"
    "           (SELECT next_attempt_at FROM public.sendry_outbox"
    "            WHERE class = 'bulk' AND status = 'pending' AND next_attempt_at <= now()"
    "            ORDER BY next_attempt_at LIMIT 1)))::float8,"
    "       (SELECT count(*) FROM (SELECT 1 FROM public.sendry_outbox"
    "                              WHERE status = 'failed' AND updated_at > now() - interval '1 hour'"
    "                              ORDER BY updated_at DESC LIMIT $1) x),"
    "       current_database(), current_user, to_char(now(), 'YYYY-MM-DD HH24:MI:SSOF')";

/* Sent rows in a sample of the table's pages ($1 of them at most), per 10 minutes ago
 * (0 = the last 10 minutes, 6 = longer ago than an hour), with the newest. */
static const char SENT_SQL[] =
    "WITH s AS (SELECT LEAST(100, 100.0 * $1 / GREATEST(1, pg_catalog.pg_relation_size('public.sendry_outbox')"
    "                                            / current_setting('block_size')::int))::float4 AS pct)"
    " SELECT CASE WHEN o.sent_at > now() - interval '1 hour'"
    "             THEN least(5, greatest(0, floor(EXTRACT(EPOCH FROM now() - o.sent_at) / 600)))::int"
    "             ELSE 6 END,"
    "        count(*), EXTRACT(EPOCH FROM now() - max(o.sent_at))::float8"
    " FROM public.sendry_outbox o TABLESAMPLE SYSTEM ((SELECT pct FROM s))"
    " WHERE o.status = 'sent' GROUP BY 1";

/* The workers holding rows now (the index of rows in flight), and the share of the
 * table's pages SENT_SQL's sample reads, in percent (100: all of them, exact). */
static const char LAST_SQL[] =
    "SELECT (SELECT count(DISTINCT locked_by) FROM public.sendry_outbox"
    "        WHERE status = 'processing' AND locked_by IS NOT NULL AND locked_until > now()),"
    "       LEAST(100, 100.0 * $1 / GREATEST(1, pg_catalog.pg_relation_size('public.sendry_outbox')"
    "                                        / current_setting('block_size')::int))::float8";

#define MAX_REASONS 20
/* The most recent failed rows (the index of failed rows, newest first) and the retrying
 * ones among the first pending rows of each class (the claim index), $1 of each. */
static const char FAILURES_SQL[] =
    "SELECT state, http, error, count(*) FROM ("
    "   (SELECT 'failed' AS state, last_http_status AS http, coalesce(last_error, '') AS error"
    "    FROM public.sendry_outbox WHERE status = 'failed' AND updated_at IS NOT NULL"
    "    ORDER BY updated_at DESC LIMIT $1)"
    "   UNION ALL"
    "   SELECT 'retrying', last_http_status, coalesce(last_error, '') FROM ("
    "       (SELECT last_http_status, last_error FROM public.sendry_outbox"
    "        WHERE class = 'live' AND status = 'pending' ORDER BY next_attempt_at LIMIT $1)"
    "       UNION ALL"
    "       (SELECT last_http_status, last_error FROM public.sendry_outbox"
    "        WHERE class = 'bulk' AND status = 'pending' ORDER BY next_attempt_at LIMIT $1)) r"
    "   WHERE last_error IS NOT NULL) f"
    " GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3 LIMIT 20";

/* The oldest due row: the first due entry of each class in the claim index. */
/* The workers holding rows under a lease that has not run out, by their identity
 * (locked_by: host:pid:random), with how many rows each: the in-flight index
 * (sendry_outbox_processing_idx), whose size is the rows being sent. $1: how many. */
#define MAX_WORKERS 20
static const char WORKERS_SQL[] =
    "SELECT locked_by, count(*) FROM public.sendry_outbox"
    " WHERE status = 'processing' AND locked_by IS NOT NULL AND locked_until > now()"
    " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $1";

static const char OLDEST_SQL[] =
    "SELECT id, op, email, attempts, EXTRACT(EPOCH FROM now() - next_attempt_at)::float8,"
    " last_http_status, coalesce(last_error, '')"
    " FROM ((SELECT * FROM public.sendry_outbox WHERE class = 'live' AND status = 'pending'"
    "        AND next_attempt_at <= now() ORDER BY next_attempt_at, id LIMIT 1)"
    "       UNION ALL"
    "       (SELECT * FROM public.sendry_outbox WHERE class = 'bulk' AND status = 'pending'"
    "        AND next_attempt_at <= now() ORDER BY next_attempt_at, id LIMIT 1)) o"
    " ORDER BY next_attempt_at, id LIMIT $1";

/* ---- queries into one JSON object ---------------------------------------------------- */

/* A number column as a JSON integer or double; NULL as null. */
static json_object *num(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return NULL;
    const char *v = PQgetvalue(res, row, col);
    if (strpbrk(v, ".eE"))
        return json_object_new_double(atof(v));
    return json_object_new_int64(atoll(v));
}

/* The counts stop at COUNT_CAP ("<name>_capped": true). */
static json_object *stats_json(const PGresult *res)
{
    static const char *const names[] = {"pending", "due", "processing", "sent", "failed",
                                        "oldest_due_age_seconds", "failed_last_hour"};
    json_object *o = json_object_new_object();
    for (int i = 0; i < 7; i++) {
        if (i == 3)
            continue;   /* throughput_json's */
        json_object_object_add(o, names[i], i == 5 && PQgetisnull(res, 0, i)
                                                ? json_object_new_int(0) : num(res, 0, i));
        if (i == 5)
            continue;
        char key[64];
        snprintf(key, sizeof key, "%s_capped", names[i]);
        json_object_object_add(o, key, json_object_new_boolean(atoll(PQgetvalue(res, 0, i)) >= atoll(COUNT_CAP)));
    }
    return o;
}

/* The sample's counts, scaled up when it read only a share of the pages (then marked
 * estimated); the total goes into the outbox's figures as "sent". */
static json_object *throughput_json(const PGresult *buckets, const PGresult *last, json_object *outbox)
{
    long long per[7] = {0}, total = 0;
    double pct = atof(PQgetvalue(last, 0, 1)), newest = -1;
    double scale = pct > 0 && pct < 100 ? 100 / pct : 1;
    for (int i = 0; i < PQntuples(buckets); i++) {
        int ago = atoi(PQgetvalue(buckets, i, 0));
        if (ago >= 0 && ago < 7)
            per[ago] += llround(atoll(PQgetvalue(buckets, i, 1)) * scale);
        double age = atof(PQgetvalue(buckets, i, 2));
        if (newest < 0 || age < newest)
            newest = age;
    }
    json_object *o = json_object_new_object(), *series = json_object_new_array();
    for (int i = 5; i >= 0; i--) {
        json_object_array_add(series, json_object_new_int64(per[i]));
        total += per[i];
    }
    json_object_object_add(outbox, "sent", json_object_new_int64(total + per[6]));
    json_object_object_add(outbox, "sent_estimated", json_object_new_boolean(scale > 1));
    json_object_object_add(o, "sent_last_hour", json_object_new_int64(total));
    json_object_object_add(o, "sent_last_10_minutes", json_object_new_int64(per[0]));
    json_object_object_add(o, "per_10_minutes_oldest_first", series);
    json_object_object_add(o, "last_sent_seconds_ago", newest >= 0 ? json_object_new_double(newest) : NULL);
    json_object_object_add(o, "workers_holding_rows", num(last, 0, 0));
    json_object_object_add(o, "estimated", json_object_new_boolean(scale > 1));
    json_object_object_add(o, "sampled_percent", json_object_new_double(pct < 100 ? pct : 100));
    return o;
}

static json_object *failures_json(const PGresult *res)
{
    json_object *a = json_object_new_array();
    for (int i = 0; i < PQntuples(res); i++) {
        char shown[1024];
        json_object *f = json_object_new_object();
        json_object_object_add(f, "state", json_object_new_string(PQgetvalue(res, i, 0)));
        json_object_object_add(f, "last_http_status", num(res, i, 1));
        json_object_object_add(f, "last_error",
                               json_object_new_string(log_text(PQgetvalue(res, i, 2), shown, sizeof shown)));
        json_object_object_add(f, "rows", num(res, i, 3));
        json_object_array_add(a, f);
    }
    return a;
}

static json_object *workers_json(const PGresult *res)
{
    json_object *a = json_object_new_array();
    for (int i = 0; i < PQntuples(res); i++) {
        json_object *w = json_object_new_object();
        json_object_object_add(w, "worker", json_object_new_string(PQgetvalue(res, i, 0)));
        json_object_object_add(w, "rows", num(res, i, 1));
        json_object_array_add(a, w);
    }
    return a;
}

static json_object *oldest_json(const PGresult *res)
{
    if (PQntuples(res) == 0)
        return NULL;
    char who[256], shown[1024];
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", num(res, 0, 0));
    json_object_object_add(o, "op", json_object_new_string(PQgetvalue(res, 0, 1)));
    json_object_object_add(o, "email", json_object_new_string(log_email(PQgetvalue(res, 0, 2), who, sizeof who)));
    json_object_object_add(o, "attempts", num(res, 0, 3));
    json_object_object_add(o, "due_for_seconds", num(res, 0, 4));
    json_object_object_add(o, "last_http_status", num(res, 0, 5));
    json_object_object_add(o, "last_error",
                           json_object_new_string(log_text(PQgetvalue(res, 0, 6), shown, sizeof shown)));
    return o;
}

/* Everything status shows, or NULL with the reason in err. */
static json_object *collect(PGconn *conn, char *err, size_t errsize)
{
    const char *sqls[] = {STATS_SQL, SENT_SQL, LAST_SQL, FAILURES_SQL, OLDEST_SQL, WORKERS_SQL};
    const char *params[] = {COUNT_CAP, SAMPLE_PAGES, SAMPLE_PAGES, COUNT_CAP, "1", STR(MAX_WORKERS)};
    enum { N = sizeof sqls / sizeof sqls[0] };
    PGresult *res[N] = {0};
    json_object *out = NULL;
    for (int i = 0; i < N; i++)
        if (!(res[i] = dbsync_rows(conn, sqls[i], 1, &params[i], err, errsize)))
            goto done;
    if (PQntuples(res[0]) != 1 || PQntuples(res[2]) != 1) {
        snprintf(err, errsize, "public.sendry_outbox: no figures returned");
        goto done;
    }
    out = json_object_new_object();
    json_object_object_add(out, "database", json_object_new_string(PQgetvalue(res[0], 0, 7)));
    json_object_object_add(out, "role", json_object_new_string(PQgetvalue(res[0], 0, 8)));
    json_object_object_add(out, "at", json_object_new_string(PQgetvalue(res[0], 0, 9)));
    json_object *outbox = stats_json(res[0]);
    json_object_object_add(out, "outbox", outbox);
    json_object_object_add(out, "throughput", throughput_json(res[1], res[2], outbox));
    json_object_object_add(out, "failures", failures_json(res[3]));
    json_object_object_add(out, "oldest_due", oldest_json(res[4]));
    json_object_object_add(out, "workers", workers_json(res[5]));
    bool more = false;
    json_object *events = status_events_collect(conn, COUNT_CAP, SAMPLE_PAGES, atof(PQgetvalue(res[2], 0, 1)),
                                                &more, err, errsize);
    if (!events) {
        json_object_put(out);
        out = NULL;
        goto done;
    }
    json_object_object_add(out, "events", events);
    json_object_object_add(out, "events_more_names", json_object_new_boolean(more));
done:
    for (int i = 0; i < N; i++)
        PQclear(res[i]);
    return out;
}

/* ---- the terminal table ------------------------------------------------------------ */

static long long get_int(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) && v ? json_object_get_int64(v) : 0;
}

static double get_num(json_object *o, const char *key, double fallback)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) && v ? json_object_get_double(v) : fallback;
}

static const char *get_str(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "";
}

/* "45 s", "2 min 31 s", "3 h 4 min", "2 d 5 h". */
static const char *duration(double seconds, char *buf, size_t size)
{
    long long s = seconds > 0 ? (long long)llround(seconds) : 0;
    if (s < 60)
        snprintf(buf, size, "%lld s", s);
    else if (s < 3600)
        snprintf(buf, size, "%lld min %lld s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, size, "%lld h %lld min", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, size, "%lld d %lld h", s / 86400, s % 86400 / 3600);
    return buf;
}

/* A count as printed: "1000000+" when it stopped at the cap, "~1200" for an estimate. */
static const char *count_text(json_object *st, const char *key, bool est, char *buf, size_t size)
{
    json_object *v = NULL, *capped = NULL;
    char ck[64];
    snprintf(ck, sizeof ck, "%s_capped", key);
    json_object_object_get_ex(st, ck, &capped);
    if (!json_object_object_get_ex(st, key, &v) || !v)
        snprintf(buf, size, "?");
    else
        snprintf(buf, size, "%s%lld%s", est ? "~" : "",
                 (long long)json_object_get_int64(v), capped && json_object_get_boolean(capped) ? "+" : "");
    return buf;
}

static void print_workers(json_object *workers)
{
    size_t n = json_object_array_length(workers);
    for (size_t i = 0; i < n; i++) {
        json_object *w = json_object_array_get_idx(workers, i);
        printf("  %-11s %8s   %lld rows held by worker %s\n", "", "", get_int(w, "rows"), get_str(w, "worker"));
    }
    if (n == MAX_WORKERS)
        printf("  %-11s %8s   (the %d workers holding the most rows)\n", "", "", MAX_WORKERS);
}

static void print_outbox(json_object *root, json_object *st, json_object *tp)
{
    char d1[32], d2[32], n1[32], n2[32];
    bool est = get_int(tp, "estimated") != 0;
    printf("outbox\n");
    printf("  %-11s %8s   %s due now", "pending", count_text(st, "pending", false, n1, sizeof n1),
           count_text(st, "due", false, n2, sizeof n2));
    if (get_int(st, "due") > 0)
        printf(", the oldest due for %s", duration(get_num(st, "oldest_due_age_seconds", 0), d1, sizeof d1));
    printf("\n  %-11s %8s   held by %lld worker(s)\n", "processing", count_text(st, "processing", false, n1, sizeof n1),
           get_int(tp, "workers_holding_rows"));
    json_object *workers = NULL;
    if (json_object_object_get_ex(root, "workers", &workers))
        print_workers(workers);
    printf("  %-11s %8s   %s%lld in the last hour, %s%lld in the last 10 min", "sent",
           count_text(st, "sent", est, n1, sizeof n1), est ? "~" : "", get_int(tp, "sent_last_hour"),
           est ? "~" : "", get_int(tp, "sent_last_10_minutes"));
    double last = get_num(tp, "last_sent_seconds_ago", -1);
    if (last >= 0)
        printf("; the last %s%s ago", est ? "at most " : "", duration(last, d2, sizeof d2));
    printf("\n  %-11s %8s   %s in the last hour\n", "failed", count_text(st, "failed", false, n1, sizeof n1),
           count_text(st, "failed_last_hour", false, n2, sizeof n2));
    if (est)
        printf("  (~: sent rows counted in a sample of %.1f%% of the table's pages)\n",
               get_num(tp, "sampled_percent", 100));
    printf("\n");
    json_object *series = NULL;
    json_object_object_get_ex(tp, "per_10_minutes_oldest_first", &series);
    printf("sent per 10 minutes (minutes ago)%s\n  %7s%7s%7s%7s%7s%7s\n  ", est ? ", estimated" : "",
           "60-50", "50-40", "40-30", "30-20", "20-10", "10-0");
    for (size_t i = 0; i < json_object_array_length(series); i++)
        printf("%7lld", (long long)json_object_get_int64(json_object_array_get_idx(series, i)));
    printf("\n\n");
}

static void print_failures(json_object *failures)
{
    size_t n = json_object_array_length(failures);
    if (n == 0) {
        printf("failures: none\n\n");
        return;
    }
    printf("failures by reason%s\n  %-9s %8s  %4s  %s\n", n == MAX_REASONS ? " (the 20 largest groups)" : "",
           "state", "rows", "http", "reason");
    for (size_t i = 0; i < n; i++) {
        json_object *f = json_object_array_get_idx(failures, i);
        json_object *http = NULL;
        json_object_object_get_ex(f, "last_http_status", &http);
        char code[8];
        snprintf(code, sizeof code, "%s", http ? json_object_get_string(http) : "-");
        const char *reason = get_str(f, "last_error");
        printf("  %-9s %8lld  %4s  %.90s%s\n", get_str(f, "state"), get_int(f, "rows"), code,
               *reason ? reason : "(none recorded)", strlen(reason) > 90 ? "..." : "");
    }
    printf("\n");
}

static void print_oldest(json_object *o)
{
    char d[32];
    if (!o) {
        printf("oldest due row: none, nothing is due\n");
        return;
    }
    const char *err = get_str(o, "last_error");
    printf("oldest due row\n  id %lld (%s %s), due for %s, %lld attempt(s) so far%s%.90s\n",
           get_int(o, "id"), get_str(o, "op"), get_str(o, "email"),
           duration(get_num(o, "due_for_seconds", 0), d, sizeof d), get_int(o, "attempts"),
           *err ? "; last error: " : "", err);
}

static void print_text(json_object *s)
{
    json_object *outbox = NULL, *tp = NULL, *failures = NULL, *oldest = NULL;
    json_object_object_get_ex(s, "outbox", &outbox);
    json_object_object_get_ex(s, "throughput", &tp);
    json_object_object_get_ex(s, "failures", &failures);
    json_object_object_get_ex(s, "oldest_due", &oldest);
    printf("sendry-sync status: database %s as %s, %s\n\n", get_str(s, "database"), get_str(s, "role"),
           get_str(s, "at"));
    print_outbox(s, outbox, tp);
    json_object *events = NULL, *more = NULL;
    if (json_object_object_get_ex(s, "events", &events) && events) {
        json_object_object_get_ex(s, "events_more_names", &more);
        status_events_print(events, more && json_object_get_boolean(more), COUNT_CAP,
                            get_int(outbox, "pending_capped") != 0, get_int(outbox, "failed_capped") != 0,
                            get_int(tp, "estimated") != 0);
    }
    print_failures(failures);
    print_oldest(oldest);
}

int status_run(const struct config *cfg)
{
    char err[1024];
    PGconn *conn = dbsync_connect(cfg->database_url, "sendry-sync status", 15, err, sizeof err);
    if (!conn) {
        log_error("status: %s", err);
        return 1;
    }
    json_object *s = collect(conn, err, sizeof err);
    PQfinish(conn);
    if (!s) {
        log_error("status: %s (is the migration installed? sendry-sync migrate)", err);
        return 1;
    }
    if (cfg->output == OUTPUT_JSON)
        printf("%s\n", json_object_to_json_string_ext(s, JSON_C_TO_STRING_PLAIN));
    else
        print_text(s);
    fflush(stdout);
    json_object_put(s);
    return 0;
}

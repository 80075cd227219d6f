#include "status.h"

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbsync.h"
#include "log.h"

static const char STATS_SQL[] =
    "SELECT pending, due, processing, sent, failed,"
    " EXTRACT(EPOCH FROM oldest_due_age)::float8, failed_last_hour,"
    " current_database(), current_user, to_char(now(), 'YYYY-MM-DD HH24:MI:SSOF')"
    " FROM public.sendry_outbox_stats";

/* Rows sent in the last hour, per 10 minutes ago (0 = the last 10 minutes). */
static const char SENT_SQL[] =
    "SELECT least(5, greatest(0, floor(EXTRACT(EPOCH FROM now() - sent_at) / 600)))::int, count(*)"
    " FROM public.sendry_outbox"
    " WHERE status = 'sent' AND sent_at > now() - interval '1 hour' GROUP BY 1";

static const char LAST_SQL[] =
    "SELECT EXTRACT(EPOCH FROM now() - max(sent_at))::float8,"
    " count(DISTINCT locked_by) FILTER (WHERE status = 'processing' AND locked_until > now())"
    " FROM public.sendry_outbox";

/* The workers holding rows under a lease that has not run out, by their identity
 * (locked_by: host:pid:random), with how many rows each. A held row's next_attempt_at is
 * its lease's end, so these are a range of the claim index (class, next_attempt_at). */
#define MAX_WORKERS 20
static const char WORKERS_SQL[] =
    "SELECT locked_by, count(*) FROM public.sendry_outbox"
    " WHERE class IN ('live', 'bulk') AND status IN ('pending', 'processing') AND next_attempt_at > now()"
    "   AND status = 'processing' AND locked_until > now() AND locked_by IS NOT NULL"
    " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20";

#define MAX_REASONS 20
static const char FAILURES_SQL[] =
    "SELECT CASE status WHEN 'failed' THEN 'failed' ELSE 'retrying' END, last_http_status,"
    " coalesce(last_error, ''), count(*)"
    " FROM public.sendry_outbox"
    " WHERE status = 'failed' OR (status = 'pending' AND last_error IS NOT NULL)"
    " GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3 LIMIT 20";

static const char OLDEST_SQL[] =
    "SELECT id, op, email, attempts, EXTRACT(EPOCH FROM now() - next_attempt_at)::float8,"
    " last_http_status, coalesce(last_error, '')"
    " FROM public.sendry_outbox WHERE status = 'pending' AND next_attempt_at <= now()"
    " ORDER BY next_attempt_at, id LIMIT 1";

/* ---- queries into one JSON object ---------------------------------------------------- */

static PGresult *run(PGconn *conn, const char *sql, char *err, size_t errsize)
{
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        return res;
    dbsync_result_error(res, err, errsize);
    PQclear(res);
    return NULL;
}

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

static json_object *stats_json(const PGresult *res)
{
    static const char *const names[] = {"pending", "due", "processing", "sent", "failed",
                                        "oldest_due_age_seconds", "failed_last_hour"};
    json_object *o = json_object_new_object();
    for (int i = 0; i < 7; i++)
        json_object_object_add(o, names[i], i == 5 && PQgetisnull(res, 0, i)
                                                ? json_object_new_int(0) : num(res, 0, i));
    return o;
}

static json_object *throughput_json(const PGresult *buckets, const PGresult *last)
{
    long long per[6] = {0}, total = 0;
    for (int i = 0; i < PQntuples(buckets); i++) {
        int ago = atoi(PQgetvalue(buckets, i, 0));
        if (ago >= 0 && ago < 6)
            per[ago] += atoll(PQgetvalue(buckets, i, 1));
    }
    json_object *o = json_object_new_object(), *series = json_object_new_array();
    for (int i = 5; i >= 0; i--) {
        json_object_array_add(series, json_object_new_int64(per[i]));
        total += per[i];
    }
    json_object_object_add(o, "sent_last_hour", json_object_new_int64(total));
    json_object_object_add(o, "sent_last_10_minutes", json_object_new_int64(per[0]));
    json_object_object_add(o, "per_10_minutes_oldest_first", series);
    json_object_object_add(o, "last_sent_seconds_ago", num(last, 0, 0));
    json_object_object_add(o, "workers_holding_rows", num(last, 0, 1));
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
    enum { N = sizeof sqls / sizeof sqls[0] };
    PGresult *res[N] = {0};
    json_object *out = NULL;
    for (int i = 0; i < N; i++)
        if (!(res[i] = run(conn, sqls[i], err, errsize)))
            goto done;
    if (PQntuples(res[0]) != 1 || PQntuples(res[2]) != 1) {
        snprintf(err, errsize, "public.sendry_outbox_stats returned no row");
        goto done;
    }
    out = json_object_new_object();
    json_object_object_add(out, "database", json_object_new_string(PQgetvalue(res[0], 0, 7)));
    json_object_object_add(out, "role", json_object_new_string(PQgetvalue(res[0], 0, 8)));
    json_object_object_add(out, "at", json_object_new_string(PQgetvalue(res[0], 0, 9)));
    json_object_object_add(out, "outbox", stats_json(res[0]));
    json_object_object_add(out, "throughput", throughput_json(res[1], res[2]));
    json_object_object_add(out, "failures", failures_json(res[3]));
    json_object_object_add(out, "oldest_due", oldest_json(res[4]));
    json_object_object_add(out, "workers", workers_json(res[5]));
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

static void print_outbox(json_object *s_root, json_object *st, json_object *tp)
{
    char d1[32], d2[32];
    printf("outbox\n");
    printf("  %-11s %8lld   %lld due now", "pending", get_int(st, "pending"), get_int(st, "due"));
    if (get_int(st, "due") > 0)
        printf(", the oldest due for %s", duration(get_num(st, "oldest_due_age_seconds", 0), d1, sizeof d1));
    printf("\n  %-11s %8lld   held by %lld worker(s)\n", "processing", get_int(st, "processing"),
           get_int(tp, "workers_holding_rows"));
    json_object *workers = NULL;
    if (json_object_object_get_ex(s_root, "workers", &workers))
        print_workers(workers);
    printf("  %-11s %8lld   %lld in the last hour, %lld in the last 10 min", "sent",
           get_int(st, "sent"), get_int(tp, "sent_last_hour"), get_int(tp, "sent_last_10_minutes"));
    double last = get_num(tp, "last_sent_seconds_ago", -1);
    if (last >= 0)
        printf("; the last %s ago", duration(last, d2, sizeof d2));
    printf("\n  %-11s %8lld   %lld in the last hour\n\n", "failed", get_int(st, "failed"),
           get_int(st, "failed_last_hour"));
    json_object *series = NULL;
    json_object_object_get_ex(tp, "per_10_minutes_oldest_first", &series);
    printf("sent per 10 minutes (minutes ago)\n  %7s%7s%7s%7s%7s%7s\n  ", "60-50", "50-40", "40-30",
           "30-20", "20-10", "10-0");
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

#include "status_events.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbsync.h"

#define STR_(x) #x
#define STR(x) STR_(x)

/* Pending and failed event rows by name, among the first $1 pending rows of each class
 * (the claim index's order) and the $1 most recent failed rows (the failed index). */
static const char EVENTS_SQL[] =
    "SELECT name, sum(pending)::bigint, sum(failed)::bigint FROM ("
    "   SELECT left(coalesce(payload ->> 'name', '(no name)'), 200) AS name, 1 AS pending, 0 AS failed"
    "   FROM ((SELECT op, payload FROM public.sendry_outbox"
    "          WHERE class = 'live' AND status = 'pending' ORDER BY next_attempt_at LIMIT $1)"
    "         UNION ALL"
    "         (SELECT op, payload FROM public.sendry_outbox"
    "          WHERE class = 'bulk' AND status = 'pending' ORDER BY next_attempt_at LIMIT $1)) p"
    "   WHERE op = 'event'"
    "   UNION ALL"
    "   SELECT left(coalesce(payload ->> 'name', '(no name)'), 200), 0, 1"
    "   FROM (SELECT op, payload FROM public.sendry_outbox WHERE status = 'failed'"
    "         AND updated_at IS NOT NULL ORDER BY updated_at DESC LIMIT $1) f"
    "   WHERE op = 'event') x"
    " GROUP BY 1 ORDER BY 1 LIMIT 51";

/* Sent event rows by name, and how many of them Sendry deduped, in a sample of at most
 * $1 of the table's pages (status.c's SENT_SQL reads the same share). */
static const char EVENTS_SENT_SQL[] =
    "WITH s AS (SELECT LEAST(100, 100.0 * $1 / GREATEST(1, pg_catalog.pg_relation_size('public.sendry_outbox')"
    "                                            / current_setting('block_size')::int))::float4 AS pct)"
    " SELECT left(coalesce(o.payload ->> 'name', '(no name)'), 200), count(*),"
    "        count(*) FILTER (WHERE o.deduped)"
    " FROM public.sendry_outbox o TABLESAMPLE SYSTEM ((SELECT pct FROM s))"
    " WHERE o.status = 'sent' AND o.op = 'event' GROUP BY 1 ORDER BY 1 LIMIT 51";

static json_object *entry(json_object *by_name, const char *name)
{
    json_object *e = NULL;
    if (json_object_object_get_ex(by_name, name, &e))
        return e;
    e = json_object_new_object();
    json_object_object_add(e, "name", json_object_new_string(name));
    static const char *const zero[] = {"pending", "sent", "deduped", "failed"};
    for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++)
        json_object_object_add(e, zero[i], json_object_new_int64(0));
    json_object_object_add(by_name, name, e);
    return e;
}

static void set(json_object *e, const char *key, long long v)
{
    json_object_object_add(e, key, json_object_new_int64(v));
}

static int by_name(const void *a, const void *b)
{
    json_object *const *x = a, *const *y = b;
    json_object *nx = NULL, *ny = NULL;
    json_object_object_get_ex(*x, "name", &nx);
    json_object_object_get_ex(*y, "name", &ny);
    return strcmp(json_object_get_string(nx), json_object_get_string(ny));
}

json_object *status_events_collect(PGconn *conn, const char *count_cap, const char *sample_pages,
                                   double sampled_percent, bool *more, char *err, size_t errsize)
{
    PGresult *counts = dbsync_rows(conn, EVENTS_SQL, 1, &count_cap, err, errsize), *sent = NULL;
    if (!counts || !(sent = dbsync_rows(conn, EVENTS_SENT_SQL, 1, &sample_pages, err, errsize))) {
        PQclear(counts);
        return NULL;
    }
    double scale = sampled_percent > 0 && sampled_percent < 100 ? 100 / sampled_percent : 1;
    json_object *names = json_object_new_object();
    for (int i = 0; i < PQntuples(counts); i++) {
        json_object *e = entry(names, PQgetvalue(counts, i, 0));
        set(e, "pending", atoll(PQgetvalue(counts, i, 1)));
        set(e, "failed", atoll(PQgetvalue(counts, i, 2)));
    }
    for (int i = 0; i < PQntuples(sent); i++) {
        json_object *e = entry(names, PQgetvalue(sent, i, 0));
        set(e, "sent", llround(atoll(PQgetvalue(sent, i, 1)) * scale));
        set(e, "deduped", llround(atoll(PQgetvalue(sent, i, 2)) * scale));
    }
    PQclear(counts);
    PQclear(sent);
    json_object *list = json_object_new_array();
    json_object_object_foreach(names, key, val) {
        (void)key;
        json_object_array_add(list, json_object_get(val));
    }
    json_object_put(names);
    json_object_array_sort(list, by_name);
    *more = json_object_array_length(list) > STATUS_EVENT_NAMES;
    if (*more)
        json_object_array_del_idx(list, STATUS_EVENT_NAMES, json_object_array_length(list) - STATUS_EVENT_NAMES);
    return list;
}

static long long get_int(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) && v ? json_object_get_int64(v) : 0;
}

/* A name as the terminal shows it: printable ASCII, other bytes '?', at most 32. */
static const char *shown_name(json_object *e, char *buf, size_t size)
{
    json_object *v = NULL;
    json_object_object_get_ex(e, "name", &v);
    snprintf(buf, size, "%s", v ? json_object_get_string(v) : "");
    for (char *p = buf; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
    if (strlen(buf) > 32)
        strcpy(buf + 29, "...");
    return buf;
}

void status_events_print(json_object *events, bool more, const char *count_cap, bool pending_capped,
                         bool failed_capped, bool sent_estimated)
{
    size_t n = json_object_array_length(events);
    if (n == 0)
        return;
    const char *est = sent_estimated ? "~" : "", *pc = pending_capped ? "+" : "", *fc = failed_capped ? "+" : "";
    printf("events%s\n  %-32s %9s %18s %9s\n", more ? " (the first " STR(STATUS_EVENT_NAMES) " names)" : "",
           "name", "pending", "sent (deduped)", "failed");
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(events, i);
        char name[64], pending[32], sent[48], failed[32];
        snprintf(pending, sizeof pending, "%lld%s", get_int(e, "pending"), pc);
        snprintf(sent, sizeof sent, "%s%lld (%s%lld)", est, get_int(e, "sent"), est, get_int(e, "deduped"));
        snprintf(failed, sizeof failed, "%lld%s", get_int(e, "failed"), fc);
        printf("  %-32s %9s %18s %9s\n", shown_name(e, name, sizeof name), pending, sent, failed);
    }
    if (pending_capped || failed_capped)
        printf("  (+: counted among the first %s rows of that status)\n", count_cap);
    printf("\n");
}

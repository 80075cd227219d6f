/* doctor: running the checks in order (see doctor_priv.h for where each one lives),
 * their results, the text or --json report and the exit status. See doctor.h. */
#include "doctor.h"

#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doctor_priv.h"
#include "migrate.h"

static const char *const state_names[] = {"ok", "warn", "fail", "skip"};
static const char *const state_labels[] = {"ok  ", "WARN", "FAIL", "skip"};

void doctor_report(struct check *c, enum check_state st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail, sizeof c->detail, fmt, ap);
    va_end(ap);
    c->state = st;
}

void doctor_fix(struct check *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->fix, sizeof c->fix, fmt, ap);
    va_end(ap);
}

/* Appends ", name" (or "name" first) to a list in buf. */
void doctor_list_add(char *buf, size_t size, const char *name)
{
    size_t n = strlen(buf);
    snprintf(buf + n, size - n, "%s%s", n ? ", " : "", name);
}

static const struct {
    const char *name;
    void (*run)(struct doctor *d, struct check *c);
} checks[] = {
    {"database", doctor_check_database},          {"listen/notify", doctor_check_notify},
    {"schema version", doctor_check_schema},      {"objects", doctor_check_objects},
    {"triggers", doctor_check_triggers},          {"claim index", doctor_check_claim_index},
    {"exposure", doctor_check_exposure},          {"api key", doctor_check_api_key},
    {"audience", doctor_check_audience},          {"write scope", doctor_check_scope},
    {"events scope", doctor_check_events_scope},  {"webhook secret", doctor_check_webhook},
    {"xmin horizon", doctor_check_horizon},       {"dead rows", doctor_check_dead_rows},
};

#define N_CHECKS (sizeof checks / sizeof checks[0])

static int exit_status(const struct check *results, int counts[4])
{
    for (size_t i = 0; i < N_CHECKS; i++)
        counts[results[i].state]++;
    return counts[CHECK_FAIL] ? 2 : counts[CHECK_WARN] ? 1 : 0;
}

static void print_json(const struct doctor *d, const struct check *results, int status, const int counts[4])
{
    json_object *o = json_object_new_object(), *a = json_object_new_array();
    json_object_object_add(o, "version", json_object_new_string(SENDRY_SYNC_VERSION));
    json_object_object_add(o, "schema_version", json_object_new_string(sendry_schema_version));
    json_object_object_add(o, "api_url", json_object_new_string(d->cfg->api_url));
    for (size_t i = 0; i < N_CHECKS; i++) {
        json_object *c = json_object_new_object();
        json_object_object_add(c, "name", json_object_new_string(results[i].name));
        json_object_object_add(c, "status", json_object_new_string(state_names[results[i].state]));
        json_object_object_add(c, "detail", json_object_new_string(results[i].detail));
        json_object_object_add(c, "fix", results[i].fix[0] ? json_object_new_string(results[i].fix) : NULL);
        json_object_array_add(a, c);
    }
    json_object_object_add(o, "checks", a);
    static const char *const keys[] = {"ok", "warnings", "failures", "skipped"};
    for (int i = 0; i < 4; i++)
        json_object_object_add(o, keys[i], json_object_new_int(counts[i]));
    json_object_object_add(o, "exit_status", json_object_new_int(status));
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

static void print_text(const struct doctor *d, const struct check *results, int status, const int counts[4])
{
    printf("sendry-sync doctor %s (install.sql version %s), API %s\n\n", SENDRY_SYNC_VERSION,
           sendry_schema_version, d->cfg->api_url);
    for (size_t i = 0; i < N_CHECKS; i++) {
        printf("  %s  %-15s %s\n", state_labels[results[i].state], results[i].name, results[i].detail);
        if (results[i].fix[0] && (results[i].state == CHECK_WARN || results[i].state == CHECK_FAIL))
            printf("  %4s  %-15s fix: %s\n", "", "", results[i].fix);
    }
    printf("\n%d ok, %d warning%s, %d failure%s, %d skipped: exit status %d\n", counts[CHECK_OK],
           counts[CHECK_WARN], counts[CHECK_WARN] == 1 ? "" : "s", counts[CHECK_FAIL],
           counts[CHECK_FAIL] == 1 ? "" : "s", counts[CHECK_SKIP], status);
}

int doctor_run(const struct config *cfg)
{
    struct doctor d = {.cfg = cfg};
    struct check results[N_CHECKS];
    memset(results, 0, sizeof results);
    for (size_t i = 0; i < N_CHECKS; i++) {
        results[i].name = checks[i].name;
        checks[i].run(&d, &results[i]);
    }
    int counts[4] = {0};
    int status = exit_status(results, counts);
    if (cfg->output == OUTPUT_JSON)
        print_json(&d, results, status, counts);
    else
        print_text(&d, results, status, counts);
    fflush(stdout);
    PQfinish(d.conn);
    if (d.vault_key) {
        memset(d.vault_key, 0, strlen(d.vault_key));
        free(d.vault_key);
    }
    return status;
}

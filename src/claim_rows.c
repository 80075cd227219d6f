#include "claim_rows.h"

#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

static void free_list(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

void row_free(struct row *row)
{
    while (row) {
        struct row *then = row->then;
        free_list(row->audiences, row->naudiences);
        free_list(row->leave, row->nleave);
        free_list(row->via, row->nvia);
        free(row->email);
        free(row->old_email);
        free(row->contact);
        free(row->event);
        free(row->event_name);
        free(row->refs);
        free(row->problem);
        free(row->state.user_id);
        free(row->state.hash);
        free(row->state.audiences);
        free(row);
        row = then;
    }
}

/* One returned row, before its contact is put together. */
struct claimed {
    long long head, id, claim_id;
    double claimed_at;     /* the database's clock, seconds */
    double age;            /* seconds since the row was enqueued */
    int attempts, max_attempts;
    int index;             /* its row in the result */
};

static int by_head_then_id(const void *a, const void *b)
{
    const struct claimed *x = a, *y = b;
    if (x->head != y->head)
        return x->head < y->head ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static struct row_ref ref_of(const struct claimed *g)
{
    return (struct row_ref){.id = g->id, .claim_id = g->claim_id, .claimed_at = g->claimed_at,
                            .attempts = g->attempts, .max_attempts = g->max_attempts, .age = g->age};
}

/* The addresses of the older rows g[0..n-1) that are neither the contact's nor the one
 * it moves from, each once: Sendry may hold the contact there (a move of an earlier
 * claim that Sendry applied, its outcome lost with a killed worker). */
static void add_via(struct row *row, PGresult *res, const struct claimed *g, size_t n, const char *from)
{
    row->via = xcalloc(n, sizeof *row->via);
    for (size_t i = 0; i + 1 < n; i++) {
        char *e = sendry_normalize_email(PQgetvalue(res, g[i].index, 2));
        bool known = !*e || strcmp(e, row->email) == 0 || strcmp(e, from) == 0;
        for (size_t k = 0; k < row->nvia && !known; k++)
            known = strcmp(e, row->via[k]) == 0;
        if (known)
            free(e);
        else
            row->via[row->nvia++] = e;
    }
    if (!row->old_email && row->nvia)
        row->old_email = row->via[--row->nvia];   /* back to an earlier address: move from the last */
}

/* The verdict of a contact's newest row, rendered at the claim (RENDER_GIVEN: it was not
 * captured), and what the state records when Sendry accepts it. */
static void render_of(struct row *row, PGresult *res, int i)
{
    if (PQgetisnull(res, i, 15))
        return;
    const char *v = PQgetvalue(res, i, 15);
    row->render = strcmp(v, "given") == 0  ? RENDER_GIVEN   /* no auth.users: functions/claim_render.sql */
                  : strcmp(v, "send") == 0 ? RENDER_SEND
                  : strcmp(v, "same") == 0 ? RENDER_SAME
                  : strcmp(v, "gone") == 0 ? RENDER_GONE
                                           : RENDER_FAILED;
    if (row->render == RENDER_FAILED)
        row->problem = xstrdup(PQgetisnull(res, i, 18) ? "mapping: sendry_claim_render gave no verdict"
                                                        : PQgetvalue(res, i, 18));
    if (row->render == RENDER_SEND || row->render == RENDER_SAME) {
        row->state.user_id = xstrdup(PQgetvalue(res, i, 14));
        row->state.hash = xstrdup(PQgetvalue(res, i, 16));
        row->state.audiences = PQgetisnull(res, i, 17) ? NULL : xstrdup(PQgetvalue(res, i, 17));
    }
}

/* The contact of rows g[0..n) (oldest first): the newest row's state, moving from the
 * address Sendry knew before the oldest one, if that is another. */
static struct row *contact_of(const char *audience_id, PGresult *res, const struct claimed *g, size_t n)
{
    int newest = g[n - 1].index, oldest = g[0].index;
    struct row *row = xcalloc(1, sizeof *row);
    row->id = g[n - 1].id;
    /* A rendered contact's address is the mapping's now; the rows keep theirs (the moves). */
    row->email = sendry_normalize_email(PQgetvalue(res, newest, PQgetisnull(res, newest, 19) ? 2 : 19));
    row->op = strcmp(PQgetvalue(res, newest, 7), "delete") == 0 ? OP_DELETE : OP_UPSERT;
    sendry_row_payload(row, PQgetisnull(res, newest, 3) ? NULL : PQgetvalue(res, newest, 3),
                       audience_id);
    render_of(row, res, newest);
    const char *before = PQgetisnull(res, oldest, 8) ? PQgetvalue(res, oldest, 2) : PQgetvalue(res, oldest, 8);
    char *old = sendry_normalize_email(before);   /* "": a captured row without an address */
    if (*old && strcmp(old, row->email) != 0)
        row->old_email = xstrdup(old);
    add_via(row, res, g, n, old);
    free(old);
    /* "Same" compares with what Sendry accepted as far as we know: a move among its rows
     * (one applied, its outcome lost with a killed worker, then changed back) may have
     * put the contact elsewhere since. Sent again, through the move's steps. */
    if (row->render == RENDER_SAME && (row->old_email || row->nvia))
        row->render = RENDER_SEND;
    row->refs = xcalloc(n, sizeof *row->refs);
    row->nrefs = n;
    for (size_t i = 0; i < n; i++) {
        row->refs[i] = ref_of(&g[i]);
        if (g[i].attempts > row->attempts)
            row->attempts = g[i].attempts;
        row->live |= *PQgetvalue(res, g[i].index, 10) == 't';
        row->max_attempts = g[i].max_attempts;
    }
    return row;
}

static bool is_event(PGresult *res, const struct claimed *g)
{
    return strcmp(PQgetvalue(res, g->index, 7), "event") == 0;
}

/* One event row: its own link, sent as one POST /v1/events, to `address` (the contact's,
 * see chain_of) or, when NULL, to the row's own. */
static struct row *event_of(PGresult *res, const struct claimed *g, const char *address)
{
    struct row *row = xcalloc(1, sizeof *row);
    row->id = g->id;
    row->op = OP_EVENT;
    row->email = address ? xstrdup(address) : sendry_normalize_email(PQgetvalue(res, g->index, 2));
    sendry_event_payload(row, PQgetisnull(res, g->index, 3) ? NULL : PQgetvalue(res, g->index, 3),
                         PQgetvalue(res, g->index, 13));
    row->refs = xcalloc(1, sizeof *row->refs);
    row->refs[0] = ref_of(g);
    row->nrefs = 1;
    row->attempts = g->attempts;
    row->max_attempts = g->max_attempts;
    row->live = *PQgetvalue(res, g->index, 10) == 't';
    return row;
}

/* The chain of a user's rows g[0..n) (oldest first): the contact of its contact rows,
 * then its events in order; the events first when the contact is being deleted (a
 * user.deleted event goes before the deletion). The events go to the address the
 * contact is at when they are sent: after the upsert, its address (an email change
 * enqueued after an event moves the contact before the event goes); before a deletion,
 * the address Sendry knows it at. An automation they start then finds the contact. */
static struct row *chain_of(const char *audience_id, PGresult *res, struct claimed *g, size_t n)
{
    struct claimed *rest = xcalloc(n, sizeof *rest);
    size_t nc = 0;
    for (size_t i = 0; i < n; i++)
        if (!is_event(res, &g[i]))
            rest[nc++] = g[i];
    struct row *contact = nc > 0 ? contact_of(audience_id, res, rest, nc) : NULL;
    const char *address = NULL;
    if (contact && contact->render != RENDER_GONE)   /* gone: each event keeps its own address */
        address = contact->op == OP_DELETE && contact->old_email ? contact->old_email : contact->email;
    struct row *events = NULL, **tail = &events;
    for (size_t i = 0; i < n; i++) {
        if (is_event(res, &g[i])) {
            *tail = event_of(res, &g[i], address);
            tail = &(*tail)->then;
        }
    }
    free(rest);
    if (!contact)
        return events;
    if (contact->op == OP_DELETE) {
        *tail = contact;
        return events;
    }
    contact->then = events;
    return contact;
}

/* Puts the returned rows together into contacts, counting the fresh first attempts. */
void claim_rows_fill(PGresult *res, const char *audience_id, double fresh_window, struct claim_batch *batch)
{
    int n = PQntuples(res);
    struct claimed *all = xcalloc((size_t)(n ? n : 1), sizeof *all);
    for (int i = 0; i < n; i++) {
        all[i] = (struct claimed){.head = atoll(PQgetvalue(res, i, 0)), .id = atoll(PQgetvalue(res, i, 1)),
                                  .attempts = atoi(PQgetvalue(res, i, 4)),
                                  .max_attempts = atoi(PQgetvalue(res, i, 5)),
                                  .claim_id = atoll(PQgetvalue(res, i, 9)),
                                  .claimed_at = atof(PQgetvalue(res, i, 11)),
                                  .age = atof(PQgetvalue(res, i, 6)), .index = i};
        if (all[i].attempts == 1 && all[i].age < fresh_window - 1)
            batch->fresh++;
    }
    qsort(all, (size_t)n, sizeof *all, by_head_then_id);
    batch->rows = xcalloc((size_t)(n ? n : 1), sizeof *batch->rows);
    for (int i = 0, j; i < n; i = j) {
        for (j = i; j < n && all[j].head == all[i].head; j++)
            ;
        batch->rows[batch->n++] = chain_of(audience_id, res, all + i, (size_t)(j - i));
    }
    free(all);
}


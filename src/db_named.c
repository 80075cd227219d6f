#include "db_named.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

static bool is_prepared(const struct db_named *nm, const char *name)
{
    for (size_t i = 0; i < nm->n; i++)
        if (nm->prepared[i] == name)
            return true;
    return false;
}

enum named_step db_named_step(const struct db_named *nm, const char *name, struct named_try *t,
                              char *buf, size_t size)
{
    if (!name || nm->off)
        t->step = NAMED_PLAIN;
    else
        t->step = is_prepared(nm, name) ? NAMED_EXECUTE : NAMED_PREPARE;
    if (t->step != NAMED_PLAIN)
        snprintf(buf, size, "%s_%u", name, nm->generation);
    return t->step;
}

/* Every statement under the next generation's names. */
static void next_generation(struct db_named *nm)
{
    nm->n = 0;
    nm->generation++;
}

static enum named_answer prepared(struct db_named *nm, const char *name, struct named_try *t, bool ok,
                                  const char *sqlstate)
{
    if (ok) {
        assert(nm->n < DB_MAX_NAMED);
        nm->prepared[nm->n++] = name;
        return NAMED_SEND;
    }
    /* 42P05: a session pooler that does not reset its server connections handed us one
     * with statements of that name left by an earlier client. Anything else is the
     * statement's own error. */
    if (!sqlstate || strcmp(sqlstate, "42P05") || ++t->renamed > DB_MAX_NAMED)
        return NAMED_DONE;
    next_generation(nm);
    return NAMED_SEND_TAKEN;
}

/* An execution that found its statement gone (26000: a pooler gave us another server
 * connection) or stale (0A000, "cached plan must not change result type": an upgrade
 * changed a column it returns) did nothing: prepared again, once; gone again, preparing
 * stops. */
static enum named_answer executed(struct db_named *nm, struct named_try *t, const char *sqlstate)
{
    bool gone = sqlstate && !strcmp(sqlstate, "26000");
    bool stale = sqlstate && !strcmp(sqlstate, "0A000");
    if (!gone && !stale)
        return NAMED_DONE;
    if (t->retried) {
        if (!gone)
            return NAMED_DONE;
        nm->off = true;
        return NAMED_SEND_OFF;
    }
    t->retried = true;
    next_generation(nm);
    return NAMED_SEND_STALE;
}

enum named_answer db_named_answer(struct db_named *nm, const char *name, struct named_try *t, bool ok,
                                  const char *sqlstate)
{
    switch (t->step) {
    case NAMED_PREPARE: return prepared(nm, name, t, ok, sqlstate);
    case NAMED_EXECUTE: return executed(nm, t, sqlstate);
    case NAMED_PLAIN: break;
    }
    return NAMED_DONE;
}

void db_named_replan(struct db_named *nm, size_t *old, unsigned *gen)
{
    *old = nm->n;
    *gen = nm->generation;
    if (nm->n)
        next_generation(nm);   /* a query sent before the DEALLOCATEs prepares a name they keep */
}

void db_named_forget(struct db_named *nm)
{
    nm->n = 0;
}

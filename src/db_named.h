/* db_named: the named statements of one connection (db_query_named in db.h), pure.
 *
 * Owns which statements are prepared on the connection, the names they carry on the
 * server (the statement's name and a generation: "sendry_claim_3"), whether preparing is
 * off for good (a transaction-mode pooler), and what an answer to a preparation or an
 * execution asks for next. Sends nothing: db.c sends what db_named_step says, and asks
 * db_named_answer what to do with the answer. */
#ifndef SENDRY_DB_NAMED_H
#define SENDRY_DB_NAMED_H

#include <stdbool.h>
#include <stddef.h>

/* At most this many named statements per connection. */
#define DB_MAX_NAMED 8

struct db_named {
    const char *prepared[DB_MAX_NAMED];   /* names (static storage), compared by pointer */
    size_t n;
    unsigned generation;
    bool off;
};

/* What a send of one query asks of the server. */
enum named_step { NAMED_PLAIN, NAMED_PREPARE, NAMED_EXECUTE };

/* One query's tries (zeroed with the query). */
struct named_try {
    enum named_step step;
    bool retried;   /* prepared again once after a failed execution */
    int renamed;    /* names found taken when preparing it (42P05) */
};

/* The next send for the statement `name` (NULL: not a named one), its server-side name
 * into buf; records the step in t. */
enum named_step db_named_step(const struct db_named *nm, const char *name, struct named_try *t,
                              char *buf, size_t size);

/* What an answer asks for next. */
enum named_answer {
    NAMED_DONE,        /* the query's answer: its callback's */
    NAMED_SEND,        /* send the query again (its execution, or its preparation anew) */
    NAMED_SEND_TAKEN,  /* the same, after a name found taken (42P05): say so */
    NAMED_SEND_STALE,  /* the same, after a statement gone or stale (26000, 0A000): say so */
    NAMED_SEND_OFF     /* the same, unprepared from now on (26000 again): warn once */
};

/* After the answer to the send t recorded: ok (the preparation went through) and the
 * error's SQLSTATE (NULL if none). Updates what is prepared. */
enum named_answer db_named_answer(struct db_named *nm, const char *name, struct named_try *t, bool ok,
                                  const char *sqlstate);

/* Every statement planned anew under the next generation's names; the old ones (to
 * deallocate) are nm->prepared[0 .. *old) with generation *gen, given back. */
void db_named_replan(struct db_named *nm, size_t *old, unsigned *gen);

/* The connection is gone: nothing is prepared on the next one. */
void db_named_forget(struct db_named *nm);

#endif

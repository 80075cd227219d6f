/* xalloc: allocation that cannot fail. On out of memory the process writes one line to
 * stderr and aborts: every piece of state that matters lives in the database, and a crash
 * is already safe (claimed rows come back when their lease runs out), so no caller keeps a
 * recovery branch of its own. */
#ifndef SENDRY_XALLOC_H
#define SENDRY_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);
/* Returns p, or aborts like xmalloc when a library reports out of memory with NULL. */
void *xcheck(void *p);
/* Grows *p (an array of *cap elements of `size` bytes) to hold at least `need`. */
void xgrow(void **p, size_t *cap, size_t need, size_t size);

#endif

/* check.h: the assertions of the unit tests. Each test binary counts into these two
 * variables and prints "<name>: N passed, N failed" at the end. */
#ifndef SENDRY_TEST_CHECK_H
#define SENDRY_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int passed, failed;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (cond)                                                                        \
            passed++;                                                                    \
        else {                                                                           \
            failed++;                                                                    \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);             \
        }                                                                                \
    } while (0)

#define CHECK_STR(a, b)                                                                  \
    do {                                                                                 \
        const char *a_ = (a), *b_ = (b);                                                 \
        if (a_ && b_ && strcmp(a_, b_) == 0)                                             \
            passed++;                                                                    \
        else {                                                                           \
            failed++;                                                                    \
            fprintf(stderr, "FAIL %s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__,        \
                    a_ ? a_ : "(null)", b_ ? b_ : "(null)");                             \
        }                                                                                \
    } while (0)

#endif

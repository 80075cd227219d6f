/* list: intrusive doubly linked lists, for structs with `next` and `prev` members
 * (requests in flight, jobs in flight, webhooks waiting). The list is its head pointer;
 * an item is on at most one list at a time. */
#ifndef SENDRY_LIST_H
#define SENDRY_LIST_H

#include <stddef.h>

/* Puts item first on the list. */
#define LIST_PUSH(head, item)                                                            \
    do {                                                                                 \
        (item)->prev = NULL;                                                             \
        (item)->next = (head);                                                           \
        if (head)                                                                        \
            (head)->prev = (item);                                                       \
        (head) = (item);                                                                 \
    } while (0)

/* Takes item off the list it is on. */
#define LIST_REMOVE(head, item)                                                          \
    do {                                                                                 \
        if ((item)->prev)                                                                \
            (item)->prev->next = (item)->next;                                           \
        else                                                                             \
            (head) = (item)->next;                                                       \
        if ((item)->next)                                                                \
            (item)->next->prev = (item)->prev;                                           \
        (item)->next = (item)->prev = NULL;                                              \
    } while (0)

#endif

/* httpd_priv: what httpd.c (the server, its loop glue and routes) and receiver.c (one
 * webhook request from its first byte to its answer) share. Nothing else includes it. */
#ifndef SENDRY_HTTPD_PRIV_H
#define SENDRY_HTTPD_PRIV_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

#include "httpd.h"
#include "webhook.h"

#define CONNECTION_TIMEOUT 30u     /* seconds of client inactivity (not while suspended) */
#define CONNECTION_LIMIT 256u
#define DB_TIMEOUT 20.0            /* seconds a webhook waits for the inbox */
#define DISCARD_LIMIT (4u << 20)   /* bytes of an oversized chunked body read before closing */

struct httpd {
    struct ev_loop *loop;
    struct MHD_Daemon *mhd;
    struct httpd_hooks hooks;
    char *secret;                /* NULL: webhook route disabled */
    size_t max_body;
    size_t max_queue;            /* npending at most */
    int port;
    ev_io io;                    /* MHD's epoll fd */
    ev_timer timer;              /* MHD's timeout; also "run soon" after a resume */
    struct webhook *pending;     /* webhooks whose db query has not answered yet */
    size_t npending;
    char *start_err;             /* during httpd_start: where MHD's messages go */
    size_t start_errsize;
};

/* One POST /webhooks/sendry request. Owned by MHD's connection (con_cls) and, while
 * its event is in the inbox's hands, by the inbox callback too: freed when both are
 * done with it. */
struct webhook {
    struct httpd *h;             /* NULL once httpd_stop() detached it */
    struct ev_loop *loop;
    struct MHD_Connection *conn; /* NULL once MHD completed the request */
    char *body;                  /* NUL-terminated */
    size_t len, cap, discarded;
    bool too_large;
    bool suspended;              /* MHD_suspend_connection() without the resume yet */
    bool db_pending;             /* our inbox callback has not run yet */
    bool mhd_done;               /* MHD's request-completed callback ran */
    bool answered;               /* status/answer are set (and counted) */
    unsigned status;
    char *answer;                /* JSON body of the answer */
    const char *scheme;          /* signature scheme, static */
    char event_id[WEBHOOK_ID_SIZE];
    char type[WEBHOOK_TYPE_SIZE];
    ev_timer timeout;
    struct webhook *prev, *next; /* in h->pending while db_pending and attached */
};

/* httpd.c */
void httpd_kick(struct httpd *h);   /* run MHD soon (after a resume) */
enum MHD_Result httpd_reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
                            const char *body, const char *allow);
enum MHD_Result httpd_reply_json(struct MHD_Connection *conn, unsigned status, const char *body);
/* The same; a 503 carries Retry-After (HTTPD_RETRY_AFTER). */
enum MHD_Result httpd_reply_webhook(struct MHD_Connection *conn, unsigned status, const char *body);
/* {"<k1>":"<v1>"[,"<k2>":"<v2>"]}, escaped by json-c; malloc'd. */
char *httpd_json2(const char *k1, const char *v1, const char *k2, const char *v2);

/* receiver.c: the MHD request callbacks of POST /webhooks/sendry */
enum MHD_Result receiver_start(struct httpd *h, struct MHD_Connection *conn, void **con_cls);
enum MHD_Result receiver_upload(struct httpd *h, struct webhook *w, struct MHD_Connection *conn,
                                const char *data, size_t *size);
enum MHD_Result receiver_process(struct httpd *h, struct webhook *w, struct MHD_Connection *conn);
enum MHD_Result receiver_answer(struct webhook *w, struct MHD_Connection *conn);
/* MHD is done with the connection. */
void receiver_completed(struct webhook *w);
/* httpd_stop(): answer the waiting webhooks 503 and resume them (before MHD_run), then
 * detach them (after): their inbox callbacks free them later. */
void receiver_answer_waiting(struct httpd *h);
void receiver_detach_all(struct httpd *h);

#endif

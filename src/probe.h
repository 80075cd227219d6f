/* probe: one blocking HTTP request (libcurl easy), for the commands that run without the
 * event loop: doctor (Sendry's API) and healthcheck (the local /healthz). Never call it
 * from a libev callback.
 *
 * The caller owns struct probe and frees it with probe_free(); the body is cut at
 * PROBE_MAX_BODY bytes. Requests to Sendry use http_easy_common() (user agent, timeouts,
 * --ca-file), the same options the worker's requests use. */
#ifndef SENDRY_PROBE_H
#define SENDRY_PROBE_H

#include <stdbool.h>
#include <stddef.h>

#define PROBE_MAX_BODY (64 * 1024)

enum probe_proxy { PROBE_PROXY_FROM_ENV = 0, PROBE_NO_PROXY };

struct probe {
    /* filled by the caller */
    const char *method;       /* "GET", "POST" */
    const char *url;
    const char *body;         /* JSON, or NULL */
    const char *api_key;      /* Authorization: Bearer, or NULL */
    const char *ca_file;      /* or NULL */
    long timeout_ms;
    enum probe_proxy proxy;   /* PROBE_NO_PROXY for 127.0.0.1 */
    /* results */
    bool transport_ok;        /* false: no HTTP response; see error */
    long status;
    char error[512];          /* curl's message with http_error_hint() */
    char *response;           /* NUL-terminated, owned */
    size_t response_len;
};

/* Runs the request; returns transport_ok. */
bool probe_run(struct probe *p);
void probe_free(struct probe *p);

#endif

/* http: HTTP requests on libcurl's multi-socket interface, driven by a libev loop
 * (the pattern of curl's docs/examples/evhiperfifo.c). Never blocks.
 *
 * A request is created with http_request_new(), filled, then started with
 * http_start(); its done callback runs once, from the loop, with the result, after
 * which the request belongs to the callback (free it with http_request_free()). */
#ifndef SENDRY_HTTP_H
#define SENDRY_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

struct http;
struct http_request;

typedef void (*http_done_cb)(struct http_request *req, void *arg);

struct http_request {
    /* filled by the caller */
    char method[8];
    char *url;              /* owned */
    char *body;             /* owned, may be NULL */
    http_done_cb done;
    void *arg;
    /* results, valid in the done callback */
    bool transport_ok;      /* false: no HTTP response (network error, timeout) */
    long status;
    char error[256];        /* curl's error text when !transport_ok */
    char *response;         /* NUL-terminated, owned; at most HTTP_MAX_RESPONSE bytes */
    size_t response_len;
    char retry_after[64];   /* Retry-After header value, "" if none */
    double elapsed;         /* seconds */
    /* private */
    void *easy;
    struct http_headers *headers;  /* the header list it was started with (a reference) */
    struct http *owner;
    struct http_request *next, *prev;
};

#define HTTP_MAX_RESPONSE (1024 * 1024)

/* Creates the client (never NULL): api_key goes into every Authorization header;
 * timeout in s. */
struct http *http_new(struct ev_loop *loop, const char *api_key, double timeout);
void http_free(struct http *h);    /* aborts what is in flight without callbacks */

/* A new API key (a rotation read from Vault): requests started from now on send it.
 * Requests in flight keep the header list they started with; the old Authorization
 * header is wiped when the last of them ends. */
void http_set_api_key(struct http *h, const char *api_key);

/* CA certificates (PEM file) to verify the API's TLS certificate with, instead of the
 * system's bundle (--ca-file); NULL restores the default. Copied. */
void http_set_ca_file(struct http *h, const char *ca_file);

/* The options every request to Sendry sets, for this client's and for blocking easy
 * handles (doctor): user agent, timeouts, no signals, http(s) only, no redirects, and
 * CURLOPT_CAINFO when ca_file is not NULL. `easy` is a CURL *. */
void http_easy_common(void *easy, const char *ca_file, long timeout_ms);

/* A hint to append to curl's message (`message`, may be NULL) for a TLS verification
 * failure (code is a CURLcode): a host name mismatch, or a CA that is not trusted (in
 * the --ca-file when one was given), or "" for other errors. */
const char *http_error_hint(int curl_code, const char *message, bool ca_file_given);

/* Never NULL; takes ownership of url and body (body may be NULL). */
struct http_request *http_request_new(const char *method, char *url_owned, char *body_owned);
void http_request_free(struct http_request *req);

/* Starts the request. Returns false (and does not call done) if it could not start. */
bool http_start(struct http *h, struct http_request *req);

/* Aborts every request in flight; each gets its done callback with transport_ok false
 * and error "aborted". */
void http_abort_all(struct http *h);

int http_in_flight(const struct http *h);

/* "sendry-sync/<version>" */
const char *http_user_agent(void);

#endif

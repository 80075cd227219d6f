#include "http.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "list.h"
#include "log.h"
#include "xalloc.h"

/* The headers every request sends; the first one is Authorization, a secret. The client
 * holds one reference to its current list and each request in flight one to the list it
 * started with, so a key rotation never frees a list curl still uses. */
struct http_headers {
    struct curl_slist *list;
    int refs;
};

struct http {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer timer;
    struct http_headers *headers;   /* the current list */
    char *ca_file;                  /* --ca-file, or NULL */
    long timeout_ms;
    int in_flight;
    struct http_request *active;    /* doubly linked list of started requests */
};

/* One per socket curl asks us to watch (curl_multi_assign). */
struct sock {
    ev_io io;
    struct http *h;
};

static void drain(struct http *h);

const char *http_user_agent(void)
{
    return "sendry-sync/" SENDRY_SYNC_VERSION;
}

static void on_sock_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct sock *sk = (struct sock *)w;
    struct http *h = sk->h;
    int mask = (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    CURLMcode rc = curl_multi_socket_action(h->multi, w->fd, mask, &running);
    if (rc != CURLM_OK)
        log_error("http: curl_multi_socket_action: %s", curl_multi_strerror(rc));
    drain(h);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct http *h = w->data;
    int running;
    CURLMcode rc = curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (rc != CURLM_OK)
        log_error("http: curl_multi_socket_action: %s", curl_multi_strerror(rc));
    drain(h);
}

/* CURLMOPT_SOCKETFUNCTION: watch, re-arm or forget one socket. Never closes it. */
static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    struct http *h = userp;
    struct sock *sk = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sk) {
            ev_io_stop(h->loop, &sk->io);
            free(sk);
        }
        curl_multi_assign(h->multi, s, NULL);
        return 0;
    }
    if (!sk) {
        sk = xcalloc(1, sizeof *sk);
        sk->h = h;
        ev_init(&sk->io, on_sock_io);
        curl_multi_assign(h->multi, s, sk);
    } else {
        ev_io_stop(h->loop, &sk->io);
    }
    ev_io_set(&sk->io, s, (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0));
    ev_io_start(h->loop, &sk->io);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: one timer, re-set on every call; -1 stops it. 0 fires on the
 * next loop iteration, never from inside this callback. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct http *h = userp;
    ev_timer_stop(h->loop, &h->timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&h->timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(h->loop, &h->timer);
    }
    return 0;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    struct http_request *req = userp;
    size_t n = size * nmemb;
    if (req->response_len + n > HTTP_MAX_RESPONSE)
        return 0; /* CURLE_WRITE_ERROR: a response this large is not Sendry's */
    req->response = xrealloc(req->response, req->response_len + n + 1);
    memcpy(req->response + req->response_len, data, n);
    req->response_len += n;
    req->response[req->response_len] = '\0';
    return n;
}

static size_t header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    struct http_request *req = userp;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";
    if (n > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
        size_t vlen = n - (sizeof name - 1);
        const char *v = data + sizeof name - 1;
        while (vlen && (*v == ' ' || *v == '\t')) {
            v++;
            vlen--;
        }
        while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
            vlen--;
        if (vlen >= sizeof req->retry_after)
            vlen = sizeof req->retry_after - 1;
        memcpy(req->retry_after, v, vlen);
        req->retry_after[vlen] = '\0';
    } else if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        req->retry_after[0] = '\0'; /* a new response (after 100 Continue) starts over */
    }
    return n;
}

static void headers_unref(struct http_headers *hd)
{
    if (!hd || --hd->refs > 0)
        return;
    if (hd->list) /* the Authorization value is a secret: wipe it before freeing */
        memset(hd->list->data, 0, strlen(hd->list->data));
    curl_slist_free_all(hd->list);
    free(hd);
}

static struct http_headers *headers_new(const char *api_key)
{
    struct http_headers *hd = xcalloc(1, sizeof *hd);
    size_t alen = strlen(api_key) + 32;
    char *auth = xmalloc(alen);
    snprintf(auth, alen, "Authorization: Bearer %s", api_key);
    struct curl_slist *l = xcheck(curl_slist_append(NULL, auth));
    memset(auth, 0, alen);
    free(auth);
    l = xcheck(curl_slist_append(l, "Content-Type: application/json"));
    l = xcheck(curl_slist_append(l, "Accept: application/json"));
    l = xcheck(curl_slist_append(l, "Expect:")); /* no 100-continue round trip */
    hd->list = l;
    hd->refs = 1;
    return hd;
}

static void unlink_request(struct http *h, struct http_request *req)
{
    headers_unref(req->headers);
    req->headers = NULL;
    LIST_REMOVE(h->active, req);
    h->in_flight--;
}

static void finish(struct http *h, struct http_request *req, CURLcode result)
{
    CURL *easy = req->easy;
    curl_multi_remove_handle(h->multi, easy);
    if (result == CURLE_OK) {
        req->transport_ok = true;
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &req->status);
    } else {
        req->transport_ok = false;
        if (!req->error[0])
            snprintf(req->error, sizeof req->error, "%s", curl_easy_strerror(result));
        size_t len = strlen(req->error);
        snprintf(req->error + len, sizeof req->error - len, "%s",
                 http_error_hint(result, req->error, h->ca_file != NULL));
    }
    curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME, &req->elapsed);
    curl_easy_cleanup(easy);
    req->easy = NULL;
    unlink_request(h, req);
    req->done(req, req->arg);
}

/* Reaps finished transfers. Runs after every socket_action, whatever it reported. */
static void drain(struct http *h)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(h->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct http_request *req = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&req);
        finish(h, req, msg->data.result);
    }
}

struct http *http_new(struct ev_loop *loop, const char *api_key, double timeout)
{
    struct http *h = xcalloc(1, sizeof *h);
    h->loop = loop;
    h->timeout_ms = (long)(timeout * 1000);
    h->multi = xcheck(curl_multi_init());
    h->headers = headers_new(api_key);
    ev_init(&h->timer, on_timer);
    h->timer.data = h;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 16L);
    curl_multi_setopt(h->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, 16L);
    return h;
}

void http_set_api_key(struct http *h, const char *api_key)
{
    struct http_headers *hd = headers_new(api_key);
    headers_unref(h->headers);
    h->headers = hd;
}

void http_set_ca_file(struct http *h, const char *ca_file)
{
    free(h->ca_file);
    h->ca_file = ca_file ? xstrdup(ca_file) : NULL;
}

void http_easy_common(void *easy, const char *ca_file, long timeout_ms)
{
    CURL *e = easy;
    curl_easy_setopt(e, CURLOPT_USERAGENT, http_user_agent());
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 10000 ? timeout_ms : 10000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    if (ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
}

const char *http_error_hint(int curl_code, const char *message, bool ca_file_given)
{
    switch ((CURLcode)curl_code) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_ISSUER_ERROR:
        /* OpenSSL's words for a name mismatch: "no alternative certificate subject name
         * matches target host name", "certificate subject name ... does not match". */
        if (message && (strstr(message, "subject name") || strstr(message, "host name")))
            return " (the server's certificate is not for this host name: check the host in "
                   "SENDRY_API_URL, or have the proxy or private CA issue the certificate for it)";
        if (ca_file_given)
            return " (no CA in --ca-file / SENDRY_CA_FILE signed the server's certificate: give "
                   "the certificate of the CA that did)";
        return " (no trusted CA signed the server's certificate: for a private CA or a "
               "TLS-intercepting proxy give its certificate with --ca-file / SENDRY_CA_FILE)";
    case CURLE_SSL_CACERT_BADFILE:
        return " (the CA file cannot be used: check --ca-file / SENDRY_CA_FILE)";
    default:
        return "";
    }
}

void http_free(struct http *h)
{
    if (!h)
        return;
    while (h->active) {
        struct http_request *req = h->active;
        curl_multi_remove_handle(h->multi, req->easy);
        curl_easy_cleanup(req->easy);
        req->easy = NULL;
        unlink_request(h, req);
        http_request_free(req);
    }
    if (h->multi)
        curl_multi_cleanup(h->multi); /* while the loop and our watchers still exist */
    ev_timer_stop(h->loop, &h->timer);
    headers_unref(h->headers);
    free(h->ca_file);
    free(h);
}

struct http_request *http_request_new(const char *method, char *url_owned, char *body_owned)
{
    struct http_request *req = xcalloc(1, sizeof *req);
    snprintf(req->method, sizeof req->method, "%s", method);
    req->url = url_owned;
    req->body = body_owned;
    return req;
}

void http_request_free(struct http_request *req)
{
    if (!req)
        return;
    free(req->url);
    free(req->body);
    free(req->response);
    free(req);
}

bool http_start(struct http *h, struct http_request *req)
{
    CURL *e = xcheck(curl_easy_init());
    req->easy = e;
    req->owner = h;
    req->transport_ok = false;
    req->status = 0;
    req->error[0] = '\0';
    req->retry_after[0] = '\0';
    free(req->response);
    req->response = NULL;
    req->response_len = 0;

    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)req);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->error);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->headers->list);
    http_easy_common(e, h->ca_file, h->timeout_ms);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    if (strcmp(req->method, "GET") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    if (req->body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(req->body));
    }

    CURLMcode rc = curl_multi_add_handle(h->multi, e);
    if (rc != CURLM_OK) {
        log_error("http: curl_multi_add_handle: %s", curl_multi_strerror(rc));
        curl_easy_cleanup(e);
        req->easy = NULL;
        return false;
    }
    LIST_PUSH(h->active, req);
    h->in_flight++;
    req->headers = h->headers;
    h->headers->refs++;
    return true;
}

void http_abort_all(struct http *h)
{
    while (h->active) {
        struct http_request *req = h->active;
        snprintf(req->error, sizeof req->error, "aborted");
        finish(h, req, CURLE_ABORTED_BY_CALLBACK);
    }
}

int http_in_flight(const struct http *h)
{
    return h->in_flight;
}

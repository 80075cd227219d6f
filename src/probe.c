#include "probe.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static size_t on_data(char *data, size_t size, size_t nmemb, void *userp)
{
    struct probe *p = userp;
    size_t n = size * nmemb;
    size_t keep = p->response_len + n > PROBE_MAX_BODY ? PROBE_MAX_BODY - p->response_len : n;
    char *grown = realloc(p->response, p->response_len + keep + 1);
    if (!grown)
        return 0;
    p->response = grown;
    memcpy(p->response + p->response_len, data, keep);
    p->response_len += keep;
    p->response[p->response_len] = '\0';
    return n;
}

static void free_headers(struct curl_slist *l, bool first_is_secret)
{
    if (l && first_is_secret)
        memset(l->data, 0, strlen(l->data));
    curl_slist_free_all(l);
}

/* The request headers: Authorization first (wiped by free_headers), JSON. */
static struct curl_slist *headers_for(const struct probe *p)
{
    struct curl_slist *l = NULL;
    if (p->api_key) {
        size_t n = strlen(p->api_key) + 32;
        char *auth = malloc(n);
        if (!auth)
            return NULL;
        snprintf(auth, n, "Authorization: Bearer %s", p->api_key);
        l = curl_slist_append(NULL, auth);
        memset(auth, 0, n);
        free(auth);
        if (!l)
            return NULL;
    }
    const char *rest[] = {"Accept: application/json", p->body ? "Content-Type: application/json" : NULL};
    for (size_t i = 0; i < 2 && rest[i]; i++) {
        struct curl_slist *more = curl_slist_append(l, rest[i]);
        if (!more) {
            free_headers(l, p->api_key != NULL);
            return NULL;
        }
        l = more;
    }
    return l;
}

bool probe_run(struct probe *p)
{
    p->transport_ok = false;
    p->status = 0;
    p->error[0] = '\0';
    CURL *e = curl_easy_init();
    struct curl_slist *headers = e ? headers_for(p) : NULL;
    if (!e || !headers) {
        snprintf(p->error, sizeof p->error, "out of memory");
        curl_easy_cleanup(e);
        return false;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    http_easy_common(e, p->ca_file, p->timeout_ms);
    curl_easy_setopt(e, CURLOPT_URL, p->url);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, p);
    if (p->proxy == PROBE_NO_PROXY)
        curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    if (strcmp(p->method, "GET") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, p->method);
    if (p->body)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, p->body);
    CURLcode rc = curl_easy_perform(e);
    if (rc == CURLE_OK) {
        p->transport_ok = true;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &p->status);
    } else {
        const char *message = errbuf[0] ? errbuf : curl_easy_strerror(rc);
        snprintf(p->error, sizeof p->error, "%s%s", message, http_error_hint(rc, message, p->ca_file != NULL));
    }
    curl_easy_cleanup(e);
    free_headers(headers, p->api_key != NULL);
    return p->transport_ok;
}

void probe_free(struct probe *p)
{
    free(p->response);
    p->response = NULL;
    p->response_len = 0;
}

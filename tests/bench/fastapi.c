/* fastapi: a fake Sendry API for make bench that is never the bottleneck.
 *
 *   build/fastapi [--port N] [--port-file FILE] [--rate-limit N/SECONDS]
 *                 [--email-log FILE] [--request-log FILE]
 *
 * One thread, epoll, non-blocking sockets, HTTP/1.1 keep-alive with Content-Length
 * bodies (chunked bodies are refused with 411), TCP_NODELAY on every connection.
 * It answers
 *   GET  /v1/audiences/<id>   an audience object
 *   POST /v1/contacts/import  {"created":N,"updated":0,"total":N}, N = contacts in the body
 *   POST /v1/contacts         a contact object {"id":"ct_<n>","email":...}
 *   POST /v1/events           an event {"id":"evt_<n>",...,"triggered_runs":0} (never deduped)
 *   GET  /_stats              its counters as JSON (not counted, never rate limited)
 *   GET  anything else        {"data":[],"has_more":false} (empty lists for reconciliation)
 *   anything else             200 {}
 * --rate-limit N/SECONDS admits at most N requests in any sliding window of SECONDS and
 * answers the others 429 with Retry-After (as Sendry: 100 per 10 s per key; one key here).
 * --email-log writes "<CLOCK_REALTIME seconds> <email>" for every "email":"..." seen in a
 * request body, and "<realtime> event:<address>" for an event's "contact_email"; --request-log writes "<realtime> <status> <contacts> <path>" per request.
 * Both are flushed after every batch of events and at exit (SIGTERM, SIGINT).
 * The bench (tests/bench/bench.py) starts one per scenario; nothing else uses it. */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADER (64 * 1024)
#define MAX_BODY (64 * 1024 * 1024)
#define MAX_EVENTS 64

enum conn_state {
    CONN_OPEN,       /* reading requests, answering them */
    CONN_CLOSING     /* answer what is queued, then close */
};

struct buf {
    char *p;
    size_t len, cap;
};

struct conn {
    int fd;
    enum conn_state state;
    struct buf in, out;
    size_t out_off;          /* bytes of out already written */
    bool continue_sent;      /* "100 Continue" sent for the request being read */
    bool want_write;         /* EPOLLOUT armed */
};

/* Admitted requests' times (CLOCK_MONOTONIC) in a ring: the sliding window. */
struct limiter {
    int limit;               /* 0 = no limit */
    double window;
    double *times;
    int head, count;
};

struct stats {
    long long requests, imports, creates, audiences, other, contacts, status_429, events;
};

struct server {
    int lfd, ep;
    struct limiter lim;
    struct stats st;
    FILE *email_log, *request_log;
    long long next_contact;
};

struct request {
    char method[16];
    char path[512];
    const char *body;
    size_t body_len;
    bool close;              /* Connection: close */
};

struct response {
    int status;
    int retry_after;         /* seconds, 0 = none */
    char *body;              /* owned */
};

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fprint_realtime(FILE *f)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    fprintf(f, "%lld.%09ld", (long long)ts.tv_sec, ts.tv_nsec);
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* ---- buffers ------------------------------------------------------------------------ */

static void buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 16384;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        die("realloc");
    b->p = p;
    b->cap = cap;
}

static void buf_append(struct buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void buf_consume(struct buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        die("vasprintf");
    va_end(ap);
    return s;
}

/* ---- the rate limit ------------------------------------------------------------------ */

/* 0 when admitted (and counted), else the seconds to put in Retry-After. */
static int limiter_check(struct limiter *l)
{
    if (l->limit <= 0)
        return 0;
    double now = now_mono();
    while (l->count > 0 && l->times[l->head] <= now - l->window) {
        l->head = (l->head + 1) % l->limit;
        l->count--;
    }
    if (l->count >= l->limit) {
        int retry = (int)ceil(l->times[l->head] + l->window - now);
        return retry < 1 ? 1 : retry;
    }
    l->times[(l->head + l->count) % l->limit] = now;
    l->count++;
    return 0;
}

/* ---- the API ------------------------------------------------------------------------- */

/* Counts the values of `key` ("\"email\"") in a body, logging each with its arrival time
 * (after `prefix`); copies the first into first (for a create's answer). */
static long long scan_values(struct server *s, const char *body, size_t len, const char *key,
                             const char *prefix, char *first, size_t first_size)
{
    long long n = 0;
    size_t klen = strlen(key);
    const char *p = body, *end = body + len;
    while ((p = memmem(p, (size_t)(end - p), key, klen)) != NULL) {
        p += klen;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        if (p >= end || *p != ':')
            continue;
        for (p++; p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'); p++)
            ;
        if (p >= end || *p != '"')
            continue;
        const char *v = ++p;
        while (p < end && *p != '"')
            p += (*p == '\\' && p + 1 < end) ? 2 : 1;
        size_t vlen = (size_t)((p < end ? p : end) - v);
        if (n == 0 && first)
            snprintf(first, first_size, "%.*s", (int)vlen, v);
        if (s->email_log) {
            fprint_realtime(s->email_log);
            fprintf(s->email_log, " %s%.*s\n", prefix, (int)vlen, v);
        }
        n++;
    }
    return n;
}

static long long scan_emails(struct server *s, const char *body, size_t len, char *first,
                             size_t first_size)
{
    return scan_values(s, body, len, "\"email\"", "", first, first_size);
}

static char *stats_json(const struct server *s)
{
    const struct stats *t = &s->st;
    return xasprintf("{\"requests\":%lld,\"imports\":%lld,\"creates\":%lld,\"audiences\":%lld,"
                     "\"other\":%lld,\"contacts\":%lld,\"status_429\":%lld,\"events\":%lld}",
                     t->requests, t->imports, t->creates, t->audiences, t->other, t->contacts,
                     t->status_429, t->events);
}

/* The answer to an admitted request; *contacts is set to the contacts it carried. */
static struct response api_answer(struct server *s, const struct request *q, long long *contacts)
{
    struct response r = {200, 0, NULL};
    bool post = strcmp(q->method, "POST") == 0, get = strcmp(q->method, "GET") == 0;
    char email[320] = "";
    if (post && strcmp(q->path, "/v1/contacts/import") == 0) {
        *contacts = scan_emails(s, q->body, q->body_len, NULL, 0);
        s->st.imports++;
        r.body = xasprintf("{\"created\":%lld,\"updated\":0,\"total\":%lld}", *contacts, *contacts);
    } else if (post && strcmp(q->path, "/v1/contacts") == 0) {
        *contacts = scan_emails(s, q->body, q->body_len, email, sizeof email);
        s->st.creates++;
        r.status = 201;
        r.body = xasprintf("{\"id\":\"ct_%lld\",\"email\":\"%s\",\"unsubscribed\":false}",
                           ++s->next_contact, email);
    } else if (post && (strcmp(q->path, "/v1/events") == 0 || strcmp(q->path, "/v1/events/") == 0)) {
        scan_values(s, q->body, q->body_len, "\"contact_email\"", "event:", NULL, 0);
        s->st.events++;
        r.body = xasprintf("{\"id\":\"evt_%lld\",\"external_id\":null,\"name\":\"event\",\"contact_email\":null,"
                           "\"contact_id\":null,\"payload\":{},\"received_at\":\"2026-01-01T00:00:00.000Z\","
                           "\"processed_at\":null,\"triggered_runs\":0}", s->st.events);
    } else if (get && strncmp(q->path, "/v1/audiences/", 14) == 0 && !strchr(q->path + 14, '/')) {
        s->st.audiences++;
        r.body = xasprintf("{\"id\":\"%s\",\"name\":\"Bench audience\",\"description\":null,"
                           "\"member_count\":0,\"created_at\":\"2026-01-01T00:00:00.000Z\","
                           "\"updated_at\":\"2026-01-01T00:00:00.000Z\"}", q->path + 14);
    } else {
        s->st.other++;
        r.body = xasprintf("%s", get ? "{\"data\":[],\"has_more\":false,\"next_cursor\":null}" : "{}");
    }
    s->st.contacts += *contacts;
    return r;
}

static struct response handle(struct server *s, const struct request *q)
{
    if (strcmp(q->path, "/_stats") == 0)
        return (struct response){200, 0, stats_json(s)};
    s->st.requests++;
    long long contacts = 0;
    struct response r;
    int retry = limiter_check(&s->lim);
    if (retry) {
        s->st.status_429++;
        r = (struct response){429, retry, NULL};
        r.body = xasprintf("{\"error\":{\"code\":\"rate_limited\",\"message\":\"Too many "
                           "requests\",\"retry_after\":%d}}", retry);
    } else {
        r = api_answer(s, q, &contacts);
    }
    if (s->request_log) {
        fprint_realtime(s->request_log);
        fprintf(s->request_log, " %d %lld %s\n", r.status, contacts, q->path);
    }
    return r;
}

/* ---- HTTP ----------------------------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    default: return "Status";
    }
}

static void queue_response(struct conn *c, const struct response *r)
{
    char head[512];
    size_t blen = r->body ? strlen(r->body) : 0;
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n",
                     r->status, reason(r->status), blen);
    if (r->retry_after)
        n += snprintf(head + n, sizeof head - (size_t)n, "Retry-After: %d\r\n", r->retry_after);
    if (c->state == CONN_CLOSING)
        n += snprintf(head + n, sizeof head - (size_t)n, "Connection: close\r\n");
    n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    buf_append(&c->out, head, (size_t)n);
    if (blen)
        buf_append(&c->out, r->body, blen);
}

static void refuse(struct conn *c, int status)
{
    c->state = CONN_CLOSING;
    struct response r = {status, 0, NULL};
    r.body = xasprintf("{\"error\":{\"code\":\"bad_request\",\"message\":\"%s\"}}", reason(status));
    queue_response(c, &r);
    free(r.body);
}

/* The value of header `name` within [h, end) (case-insensitive), or NULL. */
static const char *header_value(const char *h, const char *end, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    for (const char *line = h; line < end;) {
        const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (!eol)
            eol = end;
        if ((size_t)(eol - line) > nlen && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            *len = (size_t)(eol - v);
            return v;
        }
        line = eol + 2;
    }
    return NULL;
}

static bool value_is(const char *v, size_t len, const char *want)
{
    return v && len == strlen(want) && strncasecmp(v, want, len) == 0;
}

/* Parses the request line and headers [p, p + hlen). Returns the body's length, or -status
 * for a request to refuse. */
static long long parse_head(struct conn *c, const char *p, size_t hlen, struct request *q)
{
    const char *end = p + hlen, *eol = memmem(p, hlen, "\r\n", 2);
    if (!eol || sscanf(p, "%15s %511s", q->method, q->path) != 2)
        return -400;
    char *query = strchr(q->path, '?');
    if (query)
        *query = '\0';
    size_t len;
    const char *v = header_value(eol + 2, end, "Transfer-Encoding", &len);
    if (v && !value_is(v, len, "identity"))
        return -411;
    v = header_value(eol + 2, end, "Connection", &len);
    q->close = value_is(v, len, "close");
    long long clen = 0;
    v = header_value(eol + 2, end, "Content-Length", &len);
    if (v && (clen = strtoll(v, NULL, 10)) < 0)
        return -400;
    if (clen > MAX_BODY)
        return -413;
    v = header_value(eol + 2, end, "Expect", &len);
    if (value_is(v, len, "100-continue") && !c->continue_sent && c->in.len < hlen + (size_t)clen) {
        buf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        c->continue_sent = true;
    }
    return clen;
}

/* Answers every complete request in c->in (pipelining allowed). */
static void serve_requests(struct server *s, struct conn *c)
{
    while (c->state == CONN_OPEN && c->in.len > 0) {
        const char *hend = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
        if (!hend) {
            if (c->in.len > MAX_HEADER)
                refuse(c, 431);
            return;
        }
        size_t hlen = (size_t)(hend - c->in.p) + 4;
        struct request q = {0};
        long long clen = parse_head(c, c->in.p, hlen, &q);
        if (clen < 0) {
            refuse(c, (int)-clen);
            return;
        }
        if (c->in.len < hlen + (size_t)clen)
            return;                        /* the body is still arriving */
        q.body = c->in.p + hlen;
        q.body_len = (size_t)clen;
        struct response r = handle(s, &q);
        if (q.close)
            c->state = CONN_CLOSING;
        queue_response(c, &r);
        free(r.body);
        buf_consume(&c->in, hlen + (size_t)clen);
        c->continue_sent = false;
    }
}

/* ---- connections ---------------------------------------------------------------------- */

static void conn_close(struct server *s, struct conn *c)
{
    epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in.p);
    free(c->out.p);
    free(c);
}

static void arm(struct server *s, struct conn *c, bool want_write)
{
    if (c->want_write == want_write)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_write ? EPOLLOUT : 0u), .data.ptr = c};
    if (epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->want_write = want_write;
}

/* Writes what it can; false when the connection is done with (closed). */
static bool conn_flush(struct server *s, struct conn *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = write(c->fd, c->out.p + c->out_off, c->out.len - c->out_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            arm(s, c, true);
            return true;
        }
        if (n <= 0) {
            conn_close(s, c);
            return false;
        }
        c->out_off += (size_t)n;
    }
    c->out.len = c->out_off = 0;
    if (c->state == CONN_CLOSING) {
        conn_close(s, c);
        return false;
    }
    arm(s, c, false);
    return true;
}

static void conn_readable(struct server *s, struct conn *c)
{
    for (;;) {
        buf_reserve(&c->in, 65536);
        ssize_t n = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {                      /* the peer closed, or an error */
            conn_close(s, c);
            return;
        }
        c->in.len += (size_t)n;
    }
    serve_requests(s, c);
    conn_flush(s, c);
}

static void accept_all(struct server *s)
{
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                perror("accept4");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c)
            die("calloc");
        c->fd = fd;
        c->state = CONN_OPEN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl");
    }
}

/* ---- set-up and the loop -------------------------------------------------------------- */

static int listen_on(int port, const char *port_file)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 512) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0)
        die("bind/listen");
    port = ntohs(a.sin_port);
    if (port_file) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, port_file) != 0)
            die(port_file);
    }
    printf("fastapi listening on http://127.0.0.1:%d\n", port);
    fflush(stdout);
    return fd;
}

static FILE *open_log(const char *path)
{
    if (!path)
        return NULL;
    FILE *f = fopen(path, "w");
    if (!f)
        die(path);
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    return f;
}

static void usage(void)
{
    fprintf(stderr, "usage: fastapi [--port N] [--port-file FILE] [--rate-limit N/SECONDS] "
                    "[--email-log FILE] [--request-log FILE]\n");
    exit(2);
}

static void parse_args(int argc, char **argv, struct server *s, int *port, const char **port_file)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (strcmp(a, "--port") == 0)
            *port = atoi(v);
        else if (strcmp(a, "--port-file") == 0)
            *port_file = v;
        else if (strcmp(a, "--email-log") == 0)
            s->email_log = open_log(v);
        else if (strcmp(a, "--request-log") == 0)
            s->request_log = open_log(v);
        else if (strcmp(a, "--rate-limit") == 0) {
            if (sscanf(v, "%d/%lf", &s->lim.limit, &s->lim.window) != 2 || s->lim.limit < 1 ||
                s->lim.window <= 0) {
                fprintf(stderr, "fastapi: --rate-limit must be N/SECONDS, e.g. 100/10\n");
                exit(2);
            }
            if (!(s->lim.times = calloc((size_t)s->lim.limit, sizeof *s->lim.times)))
                die("calloc");
        } else
            usage();
        i++;
    }
}

static void flush_logs(struct server *s)
{
    if (s->email_log)
        fflush(s->email_log);
    if (s->request_log)
        fflush(s->request_log);
}

int main(int argc, char **argv)
{
    struct server s = {0};
    int port = 0;
    const char *port_file = NULL;
    parse_args(argc, argv, &s, &port, &port_file);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    s.lfd = listen_on(port, port_file);
    if ((s.ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(s.ep, EPOLL_CTL_ADD, s.lfd, &lev) < 0)
        die("epoll_ctl");
    struct epoll_event evs[MAX_EVENTS];
    while (!stop_flag) {
        int n = epoll_wait(s.ep, evs, MAX_EVENTS, 1000);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c)
                accept_all(&s);
            else if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                conn_readable(&s, c);
            else if (evs[i].events & EPOLLOUT)
                conn_flush(&s, c);
        }
        flush_logs(&s);
    }
    flush_logs(&s);
    char *st = stats_json(&s);
    printf("fastapi stats %s\n", st);
    free(st);
    return 0;
}

/* fastload: how many requests a second an HTTP server on 127.0.0.1 answers.
 *
 *   build/fastload --port N [--connections C] [--seconds S] [--path PATH] [--body-file FILE]
 *
 * C keep-alive connections (TCP_NODELAY), each sending the same request again as soon as
 * the previous answer (Content-Length framed) is in: a POST of FILE's bytes, or a GET
 * without --body-file. Prints one line:
 *   requests=N ok=N seconds=S rps=R
 * (ok: answers with a 2xx status). make bench uses it to measure the ceiling of
 * build/fastapi in the same run. */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

#define MAX_CONNS 64

enum client_state {
    CLIENT_SENDING,    /* writing the request */
    CLIENT_RECEIVING   /* reading the answer */
};

struct client {
    int fd;
    enum client_state state;
    size_t sent;                 /* bytes of the request written */
    char *in;                    /* the answer so far */
    size_t in_len, in_cap;
};

struct load {
    int ep, port;
    char *req;                   /* the whole request, head and body */
    size_t req_len;
    long long requests, ok;
};

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die(path);
    char *p = NULL;
    size_t cap = 0, n;
    *len = 0;
    do {
        if (*len == cap && !(p = realloc(p, cap = cap ? cap * 2 : 65536)))
            die("realloc");
        n = fread(p + *len, 1, cap - *len, f);
        *len += n;
    } while (n > 0);
    fclose(f);
    return p;
}

static char *build_request(const char *path, const char *body_file, size_t *len)
{
    size_t blen = 0;
    char *body = body_file ? read_file(body_file, &blen) : NULL;
    char head[1024];
    int n = body_file
        ? snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   "Authorization: Bearer sn_test_fake\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\n\r\n", path, blen)
        : snprintf(head, sizeof head, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   "Authorization: Bearer sn_test_fake\r\n\r\n", path);
    char *req = malloc((size_t)n + blen);
    if (!req)
        die("malloc");
    memcpy(req, head, (size_t)n);
    if (blen)
        memcpy(req + n, body, blen);
    free(body);
    *len = (size_t)n + blen;
    return req;
}

static void watch(struct load *l, struct client *c, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(l->ep, op, c->fd, &ev) < 0)
        die("epoll_ctl");
}

static void client_connect(struct load *l, struct client *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)l->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0)
        die("fcntl");
    c->state = CLIENT_SENDING;
    c->sent = 0;
    watch(l, c, EPOLL_CTL_ADD, EPOLLOUT);
}

static void client_send(struct load *l, struct client *c)
{
    while (c->sent < l->req_len) {
        ssize_t n = write(c->fd, l->req + c->sent, l->req_len - c->sent);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n < 0)
            die("write");
        c->sent += (size_t)n;
    }
    c->state = CLIENT_RECEIVING;
    c->in_len = 0;
    watch(l, c, EPOLL_CTL_MOD, EPOLLIN);
}

/* The length of a complete answer at the start of c->in, or 0 while it is incomplete. */
static size_t answer_length(const struct client *c)
{
    const char *hend = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!hend)
        return 0;
    size_t hlen = (size_t)(hend - c->in) + 4, clen = 0;
    for (const char *p = c->in; p < hend; p++)
        if ((p == c->in || p[-1] == '\n') && strncasecmp(p, "Content-Length:", 15) == 0)
            clen = strtoul(p + 15, NULL, 10);
    return c->in_len >= hlen + clen ? hlen + clen : 0;
}

static void client_receive(struct load *l, struct client *c)
{
    for (;;) {
        if (c->in_len == c->in_cap && !(c->in = realloc(c->in, c->in_cap = c->in_cap ? c->in_cap * 2 : 65536)))
            die("realloc");
        ssize_t n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) {
            fprintf(stderr, "fastload: the server closed a connection\n");
            exit(1);
        }
        c->in_len += (size_t)n;
    }
    if (answer_length(c) == 0)
        return;
    l->requests++;
    if (c->in_len > 9 && c->in[9] == '2')   /* "HTTP/1.1 2xx" */
        l->ok++;
    c->state = CLIENT_SENDING;
    c->sent = 0;
    watch(l, c, EPOLL_CTL_MOD, EPOLLOUT);
    client_send(l, c);
}

static void parse_args(int argc, char **argv, struct load *l, int *conns, double *seconds,
                       const char **path, const char **body_file)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (strcmp(a, "--port") == 0)
            l->port = atoi(v);
        else if (strcmp(a, "--connections") == 0)
            *conns = atoi(v);
        else if (strcmp(a, "--seconds") == 0)
            *seconds = atof(v);
        else if (strcmp(a, "--path") == 0)
            *path = v;
        else if (strcmp(a, "--body-file") == 0)
            *body_file = v;
        else
            break;
    }
    if (argc % 2 == 0 || l->port <= 0 || *conns < 1 || *conns > MAX_CONNS || *seconds <= 0) {
        fprintf(stderr, "usage: fastload --port N [--connections 1-%d] [--seconds S] [--path PATH] "
                        "[--body-file FILE]\n", MAX_CONNS);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    struct load l = {0};
    int conns = 4;
    double seconds = 2;
    const char *path = "/", *body_file = NULL;
    parse_args(argc, argv, &l, &conns, &seconds, &path, &body_file);
    l.req = build_request(path, body_file, &l.req_len);
    if ((l.ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1");
    static struct client clients[MAX_CONNS];
    for (int i = 0; i < conns; i++)
        client_connect(&l, &clients[i]);
    double start = now_mono(), end = start + seconds, now = start;
    struct epoll_event evs[MAX_CONNS];
    while ((now = now_mono()) < end) {
        int n = epoll_wait(l.ep, evs, MAX_CONNS, 100);
        for (int i = 0; i < n; i++) {
            struct client *c = evs[i].data.ptr;
            if (c->state == CLIENT_SENDING)
                client_send(&l, c);
            else
                client_receive(&l, c);
        }
    }
    double took = now - start;
    printf("requests=%lld ok=%lld seconds=%.3f rps=%.0f\n", l.requests, l.ok, took,
           (double)l.requests / took);
    return 0;
}

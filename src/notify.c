#include "notify.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "log.h"

enum ready_state { NOT_READY = 0, READY_SENT };

static enum ready_state ready;
static ev_timer watchdog;

void notify_ready(void)
{
    if (ready == READY_SENT)
        return;
    ready = READY_SENT;
    sd_notify(0, "READY=1\nSTATUS=delivering the outbox to Sendry");
}

void notify_stopping(void)
{
    sd_notify(0, "STOPPING=1\nSTATUS=stopping: draining requests in flight");
}

void notify_status(const char *fmt, ...)
{
    char line[512];
    int n = snprintf(line, sizeof line, "STATUS=");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    for (char *p = line; *p; p++)
        if (*p == '\n')
            *p = ' '; /* one assignment per line: a newline would start another */
    sd_notify(0, line);
}

static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    sd_notify(0, "WATCHDOG=1");
}

void notify_watchdog_start(struct ev_loop *loop)
{
    uint64_t usec = 0;
    int r = sd_watchdog_enabled(0, &usec);
    if (r <= 0 || usec == 0) {
        if (r < 0)
            log_warn("systemd watchdog: WATCHDOG_USEC is not understood (%s); not sending WATCHDOG=1",
                     strerror(-r));
        return;
    }
    double half = (double)usec / 2e6;
    ev_timer_init(&watchdog, on_watchdog, 0., half);
    ev_timer_start(loop, &watchdog);
    log_debug("systemd watchdog: WATCHDOG=1 every %.3f s", half);
}

void notify_watchdog_stop(struct ev_loop *loop)
{
    if (ev_is_active(&watchdog))
        ev_timer_stop(loop, &watchdog);
}

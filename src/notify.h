/* notify: systemd's service notifications through libsystemd's sd_notify(). Each call
 * is a no-op without NOTIFY_SOCKET (not started by systemd with Type=notify).
 *
 *   notify_ready()          READY=1, once: the relay calls it when the database is
 *                           connected and the audience verified (or not to be verified)
 *   notify_stopping()       STOPPING=1: main, on SIGTERM/SIGINT
 *   notify_status(...)      STATUS=<one line>: what `systemctl status` shows
 *   notify_watchdog_start() WATCHDOG=1 every half of WatchdogSec= (WATCHDOG_USEC), from a
 *                           libev timer, so only while the loop runs; main starts it
 *                           before ev_run() and stops it after.
 * Nothing here blocks: sd_notify sends one datagram on a Unix socket. */
#ifndef SENDRY_NOTIFY_H
#define SENDRY_NOTIFY_H

#include <ev.h>

void notify_ready(void);
void notify_stopping(void);
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void notify_watchdog_start(struct ev_loop *loop);
void notify_watchdog_stop(struct ev_loop *loop);

#endif

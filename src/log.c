#include "log.h"

#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static enum log_level min_level = LOG_INFO;
static enum log_format format = LOG_TEXT;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_setup(enum log_level level, enum log_format fmt)
{
    min_level = level;
    format = fmt;
}

bool log_enabled(enum log_level level)
{
    return level >= min_level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;

    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One event, one line: fold the newlines PostgreSQL puts in its messages. */
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        msg[--len] = '\0';
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[40];
    size_t n = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp + n, sizeof stamp - n, ".%03ldZ", ts.tv_nsec / 1000000);

    if (format == LOG_JSON) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "ts", json_object_new_string(stamp));
        json_object_object_add(o, "level", json_object_new_string(level_names[level]));
        json_object_object_add(o, "msg", json_object_new_string(msg));
        fprintf(stderr, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
    } else {
        fprintf(stderr, "%s %-5s %s\n", stamp, level_names[level], msg);
    }
}

void mask_email(const char *email, char *buf, size_t bufsize)
{
    if (bufsize == 0)
        return;
    const char *at = email ? strrchr(email, '@') : NULL;
    if (!email || !*email) {
        snprintf(buf, bufsize, "(none)");
    } else if (!at || at == email) {
        snprintf(buf, bufsize, "***");
    } else {
        snprintf(buf, bufsize, "%c***%s", email[0], at);
    }
}

const char *log_email(const char *email, char *buf, size_t bufsize)
{
    if (log_enabled(LOG_DEBUG))
        snprintf(buf, bufsize, "%s", email ? email : "(none)");
    else
        mask_email(email, buf, bufsize);
    return buf;
}

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

static bool email_char(char c, bool domain)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || (!domain && (c == '_' || c == '+' || c == '%'));
}

void mask_emails_in(const char *text, char *buf, size_t bufsize)
{
    if (bufsize == 0)
        return;
    size_t o = 0;
    const char *p = text ? text : "";
    while (*p && o + 1 < bufsize) {
        /* At the start of a local part followed by '@': write its first character,
         * then "***", and skip to the '@'. */
        if (email_char(*p, false) && (p == text || !email_char(p[-1], false))) {
            const char *q = p;
            while (email_char(*q, false))
                q++;
            if (*q == '@' && email_char(q[1], true)) {
                buf[o++] = *p;
                for (const char *m = "***"; *m && o + 1 < bufsize; m++)
                    buf[o++] = *m;
                p = q;
                continue;
            }
        }
        buf[o++] = *p++;
    }
    buf[o] = '\0';
}

const char *log_text(const char *text, char *buf, size_t bufsize)
{
    if (log_enabled(LOG_DEBUG))
        snprintf(buf, bufsize, "%s", text ? text : "");
    else
        mask_emails_in(text, buf, bufsize);
    return buf;
}

void utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int len = *p < 0x80 ? 1 : (*p & 0xE0) == 0xC0 ? 2 : (*p & 0xF0) == 0xE0 ? 3 : (*p & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || (len == 2 && *p < 0xC2) || (len == 4 && *p > 0xF4)) {
            *p++ = '?';
            continue;
        }
        int i = 1;
        while (i < len && (p[i] & 0xC0) == 0x80)
            i++;
        if (i < len) {
            if (p[i] == 0) {      /* cut short at the end */
                *p = 0;
                return;
            }
            *p++ = '?';           /* a lead byte without its continuation bytes */
            continue;
        }
        p += len;
    }
}

/* log: leveled logging to stderr, as text or one JSON object per line.
 *
 * Messages are printf-formatted. Never pass a secret; pass email addresses through
 * log_email(), which masks them (j***@example.com) unless the level is debug. */
#ifndef SENDRY_LOG_H
#define SENDRY_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_TEXT = 0, LOG_JSON };

void log_setup(enum log_level min_level, enum log_format format);
bool log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/* Writes a printable form of `email` into buf (always NUL-terminated) and returns buf:
 * the full address at debug level, else first character + "***" + "@domain". */
const char *log_email(const char *email, char *buf, size_t bufsize);

/* The masking itself, independent of the level (unit-tested). */
void mask_email(const char *email, char *buf, size_t bufsize);

/* Copies free text (an API's error message) into buf, masking every email address in
 * it unless the level is debug. Returns buf. */
const char *log_text(const char *text, char *buf, size_t bufsize);
void mask_emails_in(const char *text, char *buf, size_t bufsize);

/* Makes s valid UTF-8 in place: invalid bytes become '?', and an incomplete sequence
 * at the end is cut. */
void utf8_sanitize(char *s);

#endif

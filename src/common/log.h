/* Logging: syslog (facility mail) by default, stderr when log_init(.., true).
 * log_warn appends strerror(errno); log_warnx does not. fatal/fatalx exit(70).
 * Never pass passwords, hashes or AUTH payloads; sanitise peer text first
 * (str_sanitize in util.h). */
#ifndef POPBOX_LOG_H
#define POPBOX_LOG_H

#include "common/util.h"

void log_init(const char *ident, bool to_stderr, bool debug);

/* popboxd's log_format and log_target (popboxd.conf(5)): text lines or one
 * JSON object a line; syslog (facility mail), standard error, or the
 * systemd journal (sd_journal_send, the fields as POPBOX_* fields). */
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON };
enum log_target { LOG_TARGET_DEFAULT = 0, LOG_TARGET_SYSLOG, LOG_TARGET_STDERR, LOG_TARGET_JOURNAL };
/* After log_init; LOG_TARGET_DEFAULT keeps log_init's choice. */
void log_configure(enum log_format format, enum log_target target);

/* One named value of a structured line (log_event). */
struct log_field {
	const char *key;      /* lower case, [a-z_] */
	const char *str;      /* NULL: the number */
	long long num;
};
#define LOG_STR(k, v) ((struct log_field){ .key = (k), .str = (v) })
#define LOG_NUM(k, v) ((struct log_field){ .key = (k), .num = (long long)(v) })
/* A structured line, info (or debug when debug is true, then only with
 * debug logging on): the text (fmt) in the text format; the fields, and
 * the text as "msg", in JSON; the text as MESSAGE and the fields as
 * POPBOX_KEY in the journal. Fields whose str is "" are left out. */
void log_event(bool debug, const struct log_field *fields, size_t n, const char *fmt, ...)
    PRINTF_LIKE(4, 5);
/* Change the prefix (e.g. "popboxd[worker 1]") after fork. */
void log_set_procname(const char *procname);
bool log_debug_enabled(void);

void log_warn(const char *fmt, ...) PRINTF_LIKE(1, 2);
void log_warnx(const char *fmt, ...) PRINTF_LIKE(1, 2);
void log_info(const char *fmt, ...) PRINTF_LIKE(1, 2);
void log_debug(const char *fmt, ...) PRINTF_LIKE(1, 2);
void fatal(const char *fmt, ...) PRINTF_LIKE(1, 2) NORETURN;
void fatalx(const char *fmt, ...) PRINTF_LIKE(1, 2) NORETURN;

#endif

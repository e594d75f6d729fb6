/* Logging: syslog (facility mail) by default, stderr when log_init(.., true).
 * log_warn appends strerror(errno); log_warnx does not. fatal/fatalx exit(70).
 * Never pass passwords, hashes or AUTH payloads; sanitise peer text first
 * (str_sanitize in util.h). */
#ifndef POPBOX_LOG_H
#define POPBOX_LOG_H

#include "common/util.h"

void log_init(const char *ident, bool to_stderr, bool debug);
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

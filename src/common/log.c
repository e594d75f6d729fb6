#include "common/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static bool log_to_stderr = true;
static bool log_debug_on;
static char log_procname[64] = "popbox";

void
log_init(const char *ident, bool to_stderr, bool debug)
{
	log_to_stderr = to_stderr;
	log_debug_on = debug;
	snprintf(log_procname, sizeof(log_procname), "%s", ident);
	if (!to_stderr)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void
log_set_procname(const char *procname)
{
	snprintf(log_procname, sizeof(log_procname), "%s", procname);
}

bool
log_debug_enabled(void)
{
	return log_debug_on;
}

static void
log_vwrite(int pri, const char *fmt, va_list ap, int errnum)
{
	char msg[2048];
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (n < 0)
		return;
	if (errnum != 0) {
		size_t len = strlen(msg);
		snprintf(msg + len, sizeof(msg) - len, ": %s", strerror(errnum));
	}
	if (log_to_stderr) {
		const char *lvl = pri == LOG_DEBUG ? "debug" : pri == LOG_INFO ? "info"
		    : pri == LOG_WARNING ? "warning" : "error";
		fprintf(stderr, "%s[%d]: %s: %s\n", log_procname, (int)getpid(), lvl, msg);
	} else {
		syslog(pri, "%s: %s", log_procname, msg);
	}
}

#define LOG_BODY(pri, errnum) do { va_list ap; va_start(ap, fmt); \
	log_vwrite(pri, fmt, ap, errnum); va_end(ap); } while (0)

void log_warn(const char *fmt, ...) { int e = errno; LOG_BODY(LOG_WARNING, e); errno = e; }
void log_warnx(const char *fmt, ...) { LOG_BODY(LOG_WARNING, 0); }
void log_info(const char *fmt, ...) { LOG_BODY(LOG_INFO, 0); }

void
log_debug(const char *fmt, ...)
{
	if (log_debug_on)
		LOG_BODY(LOG_DEBUG, 0);
}

void
fatal(const char *fmt, ...)
{
	int e = errno;
	LOG_BODY(LOG_ERR, e);
	exit(70);
}

void
fatalx(const char *fmt, ...)
{
	LOG_BODY(LOG_ERR, 0);
	exit(70);
}

#include "common/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-journal.h>

static bool log_to_stderr = true;
static enum log_format log_format = LOG_FORMAT_TEXT;
static enum log_target log_target = LOG_TARGET_DEFAULT;
static bool log_debug_on;
static char log_procname[64] = "popbox";
/* getpid() for the stderr prefix, asked once per process (a system call
 * per log line otherwise, two per POP3 session); forgotten in a child. */
static pid_t log_pid;

static void
log_forget_pid(void)
{
	log_pid = 0;
}

static pid_t
log_getpid(void)
{
	if (log_pid == 0)
		log_pid = getpid();
	return log_pid;
}

void
log_init(const char *ident, bool to_stderr, bool debug)
{
	static bool atfork;
	if (!atfork) {
		atfork = true;
		(void)pthread_atfork(NULL, NULL, log_forget_pid);
	}
	log_to_stderr = to_stderr;
	log_debug_on = debug;
	snprintf(log_procname, sizeof(log_procname), "%s", ident);
	if (!to_stderr)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void
log_configure(enum log_format format, enum log_target target)
{
	log_format = format;
	if (target == LOG_TARGET_DEFAULT)
		return;
	if (target == LOG_TARGET_SYSLOG && log_to_stderr)
		openlog(log_procname, LOG_PID | LOG_NDELAY, LOG_MAIL);
	log_target = target;
	log_to_stderr = target == LOG_TARGET_STDERR;
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

static const char *
log_level_name(int pri)
{
	return pri == LOG_DEBUG ? "debug" : pri == LOG_INFO ? "info" : pri == LOG_WARNING ?
	    "warning" : "error";
}

/* text as a JSON string body: quotes, backslashes, control characters and
 * every octet above 0x7e escaped, so the line is valid JSON (and ASCII)
 * whatever the text holds. */
static void
json_escape(FILE *f, const char *text)
{
	for (const unsigned char *c = (const unsigned char *)text; *c != '\0'; c++) {
		if (*c == '"' || *c == '\\')
			fprintf(f, "\\%c", *c);
		else if (*c < 0x20 || *c > 0x7e)
			fprintf(f, "\\u%04x", *c);
		else
			fputc(*c, f);
	}
}

static void
log_write(int pri, const char *msg, const struct log_field *fields, size_t n)
{
	if (log_target == LOG_TARGET_JOURNAL) {
		/* MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and the fields, each
		 * "POPBOX_KEY=value" (keys upper-cased). */
		struct iovec iov[40];
		char *parts[40];
		size_t k = 0;
		parts[k++] = xasprintf("MESSAGE=%s", msg);
		parts[k++] = xasprintf("PRIORITY=%d", pri);
		parts[k++] = xasprintf("SYSLOG_IDENTIFIER=%s", log_procname);
		parts[k++] = xasprintf("SYSLOG_FACILITY=%d", LOG_MAIL >> 3);
		for (size_t i = 0; i < n && k < N_ELEMENTS(parts); i++) {
			if (fields[i].str != NULL && fields[i].str[0] == '\0')
				continue;
			char key[64];
			size_t j;
			for (j = 0; fields[i].key[j] != '\0' && j < sizeof(key) - 1; j++)
				key[j] = (char)(fields[i].key[j] >= 'a' && fields[i].key[j] <= 'z' ?
				    fields[i].key[j] - 32 : fields[i].key[j]);
			key[j] = '\0';
			parts[k++] = fields[i].str != NULL ? xasprintf("POPBOX_%s=%s", key, fields[i].str)
			    : xasprintf("POPBOX_%s=%lld", key, fields[i].num);
		}
		for (size_t i = 0; i < k; i++)
			iov[i] = (struct iovec){ .iov_base = parts[i], .iov_len = strlen(parts[i]) };
		(void)sd_journal_sendv(iov, (int)k);
		for (size_t i = 0; i < k; i++)
			free(parts[i]);
		return;
	}
	if (log_format == LOG_FORMAT_JSON) {
		char *line = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&line, &len);
		if (f == NULL)
			return;
		struct timeval tv;
		struct tm tm;
		gettimeofday(&tv, NULL);
		gmtime_r(&tv.tv_sec, &tm);
		fprintf(f, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\","
		    "\"process\":\"", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		    tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000), log_level_name(pri));
		json_escape(f, log_procname);
		fprintf(f, "\",\"pid\":%d", (int)log_getpid());
		for (size_t i = 0; i < n; i++) {
			if (fields[i].str != NULL && fields[i].str[0] == '\0')
				continue;
			fprintf(f, ",\"%s\":", fields[i].key);
			if (fields[i].str != NULL) {
				fputc('"', f);
				json_escape(f, fields[i].str);
				fputc('"', f);
			} else {
				fprintf(f, "%lld", fields[i].num);
			}
		}
		fputs(",\"msg\":\"", f);
		json_escape(f, msg);
		fputs("\"}", f);
		if (fclose(f) != 0) {
			free(line);
			return;
		}
		if (log_to_stderr)
			fprintf(stderr, "%s\n", line);
		else
			syslog(pri, "%s", line);
		free(line);
		return;
	}
	if (log_to_stderr)
		fprintf(stderr, "%s[%d]: %s: %s\n", log_procname, (int)log_getpid(), log_level_name(pri), msg);
	else
		syslog(pri, "%s: %s", log_procname, msg);
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
	log_write(pri, msg, NULL, 0);
}

void
log_event(bool debug, const struct log_field *fields, size_t n, const char *fmt, ...)
{
	if (debug && !log_debug_on)
		return;
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (r < 0)
		return;
	log_write(debug ? LOG_DEBUG : LOG_INFO, msg, fields, n);
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

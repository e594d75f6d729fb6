/* popbox fetch --daemon: fetch the selected accounts on a schedule until
 * SIGTERM or SIGINT (docs/popbox.1, DAEMON; docs/DESIGN.md "popbox fetch:
 * daemon").
 *
 * Each account has its own next time. After a run that worked it is the
 * interval, or the server's LOGIN-DELAY (RFC 2449 §6.5) when that is
 * longer, counted from the start of the run (the login). After a run that
 * failed the wait doubles with each failure in a row, up to
 * FETCH_DAEMON_MAX_BACKOFF (or the interval when that is longer): [IN-USE]
 * (another client has the maildrop), [SYS/TEMP], [LOGIN-DELAY], the
 * network, and also a refused login or a configuration error, which the
 * next attempt will not fix by itself and must not hammer the provider.
 * The runs themselves are fetch_parallel()'s child processes, so an
 * account's crash never ends the daemon. */
#include "client/fetch.h"
#include "common/pop3_proto.h"
#include "common/util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Default interval: what a cron line or a mail client would use. */
#define FETCH_DAEMON_DEFAULT_INTERVAL 300
/* The longest a failing account waits between attempts (unless the
 * interval is longer): an hour, so a fixed problem is noticed soon. */
#define FETCH_DAEMON_MAX_BACKOFF 3600
/* Longest duration --interval takes: a week. */
#define FETCH_MAX_DURATION (7L * 86400)

static volatile sig_atomic_t daemon_stop;

static void
on_stop(int sig)
{
	daemon_stop = sig;
}

bool
fetch_parse_duration(const char *s, long *seconds)
{
	char num[24];
	size_t n = strlen(s);
	long mult = 1;
	uint64_t v;
	if (n == 0 || n >= sizeof(num))
		return false;
	memcpy(num, s, n + 1);
	switch (num[n - 1]) {
	case 's': mult = 1; break;
	case 'm': mult = 60; break;
	case 'h': mult = 3600; break;
	case 'd': mult = 86400; break;
	default: mult = 0; break;
	}
	if (mult != 0)
		num[n - 1] = '\0';
	else
		mult = 1;
	if (!parse_u64(num, (uint64_t)(FETCH_MAX_DURATION / mult), &v) || v == 0)
		return false;
	*seconds = (long)v * mult;
	return true;
}

static double
mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

struct schedule {
	double due;
	int failures;           /* runs in a row that failed */
};

static const char *
reason(const struct fetch_result *r)
{
	switch (r->resp_code) {
	case POP3_CODE_IN_USE: return "[IN-USE]: another client has the maildrop";
	case POP3_CODE_SYS_TEMP: return "[SYS/TEMP]: the server has a temporary problem";
	case POP3_CODE_LOGIN_DELAY: return "[LOGIN-DELAY]: the server wants fewer logins";
	default: break;
	}
	return r->status == EX_TEMPFAIL ? "a temporary failure" : "the error above";
}

/* When account k is due again after a run that started at start. */
static void
reschedule(const struct account *a, struct schedule *s, const struct fetch_result *r,
    long interval, double start, bool quiet)
{
	long base = interval;
	if (r->login_delay > base)
		base = r->login_delay;
	if (r->status == 0) {
		s->failures = 0;
		s->due = start + (double)base;
		return;
	}
	s->failures++;
	long cap = base > FETCH_DAEMON_MAX_BACKOFF ? base : FETCH_DAEMON_MAX_BACKOFF;
	long wait = base;
	for (int i = 1; i < s->failures && wait < cap; i++)
		wait *= 2;
	if (wait > cap)
		wait = cap;
	s->due = start + (double)wait;
	if (!quiet)
		fprintf(stderr, "popbox: %s: %s (exit %d, %d in a row); next attempt in %ld s\n",
		    a->name, reason(r), r->status, s->failures, wait);
}

int
fetch_daemon(struct account *accts, const bool *selected, int nacct,
    const struct fetch_options *o)
{
	long interval = o->interval > 0 ? o->interval : FETCH_DAEMON_DEFAULT_INTERVAL;
	struct schedule *sched = xcalloc((size_t)nacct, sizeof(*sched));
	struct fetch_result *results = xcalloc((size_t)nacct, sizeof(*results));
	bool *due = xcalloc((size_t)nacct, sizeof(*due));
	struct sigaction sa = { .sa_handler = on_stop }, old_term, old_int;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, &old_term);
	sigaction(SIGINT, &sa, &old_int);
	double now = mono();
	for (int k = 0; k < nacct; k++)
		sched[k].due = now;
	struct fetch_options co = *o;
	if (co.jobs < 1)
		co.jobs = 1;

	if (!o->quiet)
		fprintf(stderr, "popbox: daemon: fetching every %ld s; stop with SIGTERM\n",
		    interval);
	while (!daemon_stop) {
		now = mono();
		bool any = false;
		double next = 0;
		for (int k = 0; k < nacct; k++) {
			due[k] = selected[k] && sched[k].due <= now;
			any = any || due[k];
			if (selected[k] && (next == 0 || sched[k].due < next))
				next = sched[k].due;
		}
		if (any) {
			for (int k = 0; k < nacct; k++)
				results[k] = (struct fetch_result){ .status = 0, .login_delay = -1 };
			(void)fetch_parallel(accts, due, nacct, &co, results);
			for (int k = 0; k < nacct; k++)
				if (due[k])
					reschedule(&accts[k], &sched[k], &results[k], interval, now,
					    o->quiet);
			fflush(stdout);
			continue;
		}
		if (next <= 0)
			break;	/* nothing selected */
		double wait = next - now;
		struct timespec ts = { .tv_sec = (time_t)wait,
		    .tv_nsec = (long)((wait - (double)(time_t)wait) * 1e9) };
		/* a signal ends the sleep; the loop then sees daemon_stop */
		(void)nanosleep(&ts, NULL);
	}
	if (!o->quiet)
		fprintf(stderr, "popbox: daemon: stopping (signal %d)\n", (int)daemon_stop);
	sigaction(SIGTERM, &old_term, NULL);
	sigaction(SIGINT, &old_int, NULL);
	free(due);
	free(results);
	free(sched);
	return 0;
}

/* popbox fetch: what the user sees of a run (fetch_run.h): the progress
 * line, the --list table and the summary line. */
#include "client/fetch_run.h"
#include "common/util.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Progress line refresh interval, in milliseconds. */
#define FETCH_PROGRESS_MS 200

static void
human_size(uint64_t n, char *out, size_t size)
{
	if (n < 1024)
		snprintf(out, size, "%" PRIu64 " B", n);
	else if (n < 1024 * 1024)
		snprintf(out, size, "%.1f KB", n / 1024.0);
	else if (n < 1024ULL * 1024 * 1024)
		snprintf(out, size, "%.1f MB", n / (1024.0 * 1024));
	else
		snprintf(out, size, "%.2f GB", n / (1024.0 * 1024 * 1024));
}

/* A record on the progress pipe of fetch_parallel: one line, written
 * whole (a pipe write under PIPE_BUF is atomic); a full pipe drops it
 * (the descriptor is non-blocking: progress is never worth a wait). */
static void
progress_record(int fd, const char *fmt, ...) PRINTF_LIKE(2, 3);

static void
progress_record(int fd, const char *fmt, ...)
{
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0 && (size_t)n < sizeof(line))
		(void)!write(fd, line, (size_t)n);
}

void
fetch_report_final(const struct run *r, const struct fetch_error *err)
{
	if (r->o->progress_fd < 0)
		return;
	progress_record(r->o->progress_fd, "S %u %" PRIu64 " %u %u %u %u %.1f %d %ld %d\n",
	    r->n_fetched, r->bytes_fetched, r->n_deleted, r->n_kept, r->n_skipped,
	    r->n_failed + r->n_too_big, fetch_now() - r->t0, err->code != 0 ? 1 : 0,
	    r->login_delay, err->resp_code);
}

void
fetch_report_progress(struct run *r, bool force)
{
	if (!r->progress_on && r->o->progress_fd < 0)
		return;
	double t = fetch_now();
	if (!force && (t - r->last_progress) * 1000 < FETCH_PROGRESS_MS)
		return;
	r->last_progress = t;
	if (r->o->progress_fd >= 0) {
		progress_record(r->o->progress_fd, "P %u %u %" PRIu64 " %" PRIu64 "\n",
		    r->n_fetched + r->n_failed, r->n_fetch_planned, r->bytes_fetched,
		    r->bytes_planned);
		return;
	}
	char done[32], rate[32], eta[32] = "--:--";
	double el = t - r->t0;
	double bps = el > 0.05 ? r->bytes_fetched / el : 0;
	human_size(r->bytes_fetched, done, sizeof(done));
	human_size((uint64_t)bps, rate, sizeof(rate));
	if (bps > 0 && r->bytes_planned >= r->bytes_fetched) {
		uint64_t left = (uint64_t)((r->bytes_planned - r->bytes_fetched) / bps);
		snprintf(eta, sizeof(eta), "%" PRIu64 ":%02" PRIu64, left / 60, left % 60);
	}
	fprintf(stderr, "\r\033[K%s: message %u/%u, %s, %s/s, ETA %s", r->a->name,
	    r->n_fetched + r->n_failed, r->n_fetch_planned, done, rate, eta);
	fflush(stderr);
}

void
fetch_report_clear(struct run *r)
{
	if (r->progress_on) {
		fprintf(stderr, "\r\033[K");
		fflush(stderr);
	}
}

void
fetch_report_list(const struct run *r)
{
	static const char *const what[ACT_COUNT] = { "", "fetch", "delete (already delivered)",
	    "keep (already delivered)", "skip (larger than max_size)",
	    "not fetched (larger than max_message_size)" };
	uint32_t n[ACT_COUNT] = { 0 };
	printf("%s: %u messages on the server\n", r->a->name, r->count);
	for (uint32_t i = 0; i < r->count; i++) {
		char clean[80];
		const struct msg *m = &r->m[i];
		str_sanitize(clean, sizeof(clean), m->uidl ? m->uidl : "-",
		    strlen(m->uidl ? m->uidl : "-"));
		printf("%6u %10" PRIu64 "  %-24s %s\n", i + 1, m->size, clean, what[m->action]);
		n[m->action]++;
	}
	char sz[32];
	human_size(r->bytes_planned, sz, sizeof(sz));
	printf("%s: would fetch %u (%s), delete %u, keep %u, skip %u", r->a->name,
	    n[ACT_FETCH], sz, n[ACT_DELE] + (r->a->keep ? 0 : n[ACT_FETCH]), n[ACT_KEEP],
	    n[ACT_SKIP_SIZE]);
	if (n[ACT_TOO_BIG] > 0)
		printf(", %u larger than max_message_size", n[ACT_TOO_BIG]);
	printf("\n");
}

void
fetch_report_summary(const struct run *r, bool aborted)
{
	char sz[32];
	human_size(r->bytes_fetched, sz, sizeof(sz));
	double el = fetch_now() - r->t0;
	printf("%s: fetched %u (%s) in %.1fs, deleted %u, kept %u, skipped %u, "
	    "failed %u%s\n", r->a->name, r->n_fetched, sz, el, r->n_deleted, r->n_kept,
	    r->n_skipped, r->n_failed + r->n_too_big, aborted ? " (aborted)" : "");
}

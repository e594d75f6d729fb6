/* popbox fetch over several accounts at once (fetch.h, fetch_parallel):
 * one child process per account, at most jobs at a time.
 *
 * Why processes: a fetch is blocking I/O with socket timeouts (conn.h),
 * and each account already has its own lock, state file and delivery
 * target; a process per account keeps every account's failure (even a
 * crash) to itself and needs no locking inside popbox. The parent owns
 * the terminal: the children's stdout and stderr come to it through pipes
 * and are passed on whole lines at a time, and their progress comes as
 * small records on a third pipe ("P done planned bytes bytes_planned",
 * and at the end "S ..." with the counts: fetch_report.c), from which the
 * parent draws one line per account on a terminal and the table at the
 * end. */
#include "client/fetch.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A child's output line longer than this is passed on in pieces. */
#define PARALLEL_LINE_MAX 4096
/* How often the progress lines are redrawn, in milliseconds. */
#define PARALLEL_REDRAW_MS 200

enum { OUT_STDOUT, OUT_STDERR, OUT_PROGRESS, OUT_COUNT };
enum job_state { JOB_WAITING, JOB_RUNNING, JOB_DONE };

struct linebuf {
	char data[PARALLEL_LINE_MAX];
	size_t len;
};

struct job {
	struct account *a;
	enum job_state state;
	pid_t pid;
	int fd[OUT_COUNT];
	struct linebuf buf[OUT_COUNT];
	int status;
	bool exited;
	/* from the progress records */
	unsigned done, planned;
	uint64_t bytes, bytes_planned;
	bool final;
	unsigned fetched, deleted, kept, skipped, failed, aborted;
	long login_delay;
	int resp_code;
	int index;              /* in the caller's account array */
	uint64_t fetched_bytes;
	double seconds;
};

struct parallel {
	struct job *jobs;
	int njobs;
	bool tty;               /* progress lines on stderr */
	int drawn;              /* lines of the block now on the screen */
	double last_draw;
};

/* Worst first: what needs a person most (local delivery, the
 * configuration, credentials), a temporary failure (cron retries it)
 * last. */
static int
status_rank(int s)
{
	static const int order[] = { EX_IOERR, EX_CANTCREAT, EX_SOFTWARE, EX_CONFIG, EX_NOPERM,
	    EX_UNAVAILABLE, EX_NOHOST, EX_PROTOCOL, EX_TEMPFAIL };
	if (s == 0)
		return 0;
	for (size_t i = 0; i < N_ELEMENTS(order); i++)
		if (s == order[i])
			return 100 - (int)i;
	return 100 - 3;	/* anything else: next to an internal error */
}

int
fetch_status_worse(int a, int b)
{
	return status_rank(b) > status_rank(a) ? b : a;
}

static double
now_sec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
size_text(uint64_t n, char *out, size_t size)
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

static const char *
status_text(int s)
{
	switch (s) {
	case 0: return "ok";
	case EX_TEMPFAIL: return "temporary failure";
	case EX_NOPERM: return "login refused";
	case EX_CONFIG: return "configuration";
	case EX_IOERR: return "delivery failed";
	case EX_CANTCREAT: return "cannot create";
	case EX_UNAVAILABLE: return "unavailable";
	case EX_PROTOCOL: return "protocol error";
	case EX_NOHOST: return "unknown host";
	default: return "failed";
	}
}

/* ---- the progress block on a terminal ---- */

static void
block_erase(struct parallel *p)
{
	if (!p->tty || p->drawn == 0)
		return;
	fprintf(stderr, "\033[%dA\r\033[J", p->drawn);
	p->drawn = 0;
}

static void
block_draw(struct parallel *p, bool force)
{
	if (!p->tty)
		return;
	double t = now_sec();
	if (!force && (t - p->last_draw) * 1000 < PARALLEL_REDRAW_MS)
		return;
	p->last_draw = t;
	block_erase(p);
	/* each line cut to the terminal's width: a line that wrapped would
	 * take two rows, and the cursor-up of the next redraw one too few */
	struct winsize ws;
	size_t cols = ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 ? ws.ws_col - 1 : 79;
	for (int i = 0; i < p->njobs; i++) {
		struct job *j = &p->jobs[i];
		char sz[32], line[512];
		size_text(j->state == JOB_DONE ? j->fetched_bytes : j->bytes, sz, sizeof(sz));
		if (j->state == JOB_WAITING)
			snprintf(line, sizeof(line), "%s: waiting", j->a->name);
		else if (j->state == JOB_RUNNING && j->planned == 0 && j->done == 0)
			snprintf(line, sizeof(line), "%s: connecting", j->a->name);
		else if (j->state == JOB_RUNNING)
			snprintf(line, sizeof(line), "%s: message %u/%u, %s", j->a->name, j->done,
			    j->planned, sz);
		else if (j->status == 0)
			snprintf(line, sizeof(line), "%s: done, fetched %u (%s)", j->a->name,
			    j->fetched, sz);
		else
			snprintf(line, sizeof(line), "%s: %s (exit %d)", j->a->name,
			    status_text(j->status), j->status);
		fprintf(stderr, "%.*s\n", (int)(cols < sizeof(line) ? cols : sizeof(line)), line);
		p->drawn++;
	}
	fflush(stderr);
}

/* ---- the children's output ---- */

static void
progress_line(struct job *j, const char *line)
{
	if (line[0] == 'P') {
		(void)sscanf(line, "P %u %u %" SCNu64 " %" SCNu64, &j->done, &j->planned, &j->bytes,
		    &j->bytes_planned);
	} else if (line[0] == 'S') {
		if (sscanf(line, "S %u %" SCNu64 " %u %u %u %u %lf %u %ld %d", &j->fetched,
		    &j->fetched_bytes, &j->deleted, &j->kept, &j->skipped, &j->failed,
		    &j->seconds, &j->aborted, &j->login_delay, &j->resp_code) == 10)
			j->final = true;
	}
}

static void
emit(struct parallel *p, struct job *j, int which, const char *line, size_t len)
{
	if (which == OUT_PROGRESS) {
		char tmp[PARALLEL_LINE_MAX + 1];
		memcpy(tmp, line, len);
		tmp[len] = '\0';
		progress_line(j, tmp);
		return;
	}
	block_erase(p);
	FILE *f = which == OUT_STDOUT ? stdout : stderr;
	fwrite(line, 1, len, f);
	fputc('\n', f);
	fflush(f);
}

/* Read what fd has; false at EOF or error (the caller closes it). */
static bool
drain(struct parallel *p, struct job *j, int which)
{
	struct linebuf *b = &j->buf[which];
	for (;;) {
		ssize_t n = read(j->fd[which], b->data + b->len, sizeof(b->data) - b->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		if (n <= 0) {
			if (b->len > 0)
				emit(p, j, which, b->data, b->len);
			b->len = 0;
			return false;
		}
		b->len += (size_t)n;
		char *start = b->data, *nl;
		while ((nl = memchr(start, '\n', b->len - (size_t)(start - b->data))) != NULL) {
			emit(p, j, which, start, (size_t)(nl - start));
			start = nl + 1;
		}
		size_t left = b->len - (size_t)(start - b->data);
		memmove(b->data, start, left);
		b->len = left;
		if (b->len == sizeof(b->data)) {
			emit(p, j, which, b->data, b->len);
			b->len = 0;
		}
	}
}

static void
close_out(struct job *j, int which)
{
	if (j->fd[which] >= 0)
		close(j->fd[which]);
	j->fd[which] = -1;
}

/* ---- starting and ending children ---- */

static bool
job_start(struct parallel *p, struct job *j, const struct fetch_options *o)
{
	int pipes[OUT_COUNT][2];
	for (int k = 0; k < OUT_COUNT; k++) {
		if (pipe2(pipes[k], O_CLOEXEC) < 0) {
			for (int m = 0; m < k; m++) {
				close(pipes[m][0]);
				close(pipes[m][1]);
			}
			return false;
		}
	}
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		for (int k = 0; k < OUT_COUNT; k++) {
			close(pipes[k][0]);
			close(pipes[k][1]);
		}
		return false;
	}
	if (pid == 0) {
		/* the child: its account only; the other jobs' pipes are the
		 * parent's (and close on exec), never written here */
		for (int i = 0; i < p->njobs; i++)
			for (int k = 0; k < OUT_COUNT; k++)
				if (p->jobs[i].fd[k] >= 0)
					close(p->jobs[i].fd[k]);
		if (dup2(pipes[OUT_STDOUT][1], 1) < 0 || dup2(pipes[OUT_STDERR][1], 2) < 0)
			_exit(EX_OSERR);
		/* the daemon's handlers (fetch_daemon.c) are the parent's: a
		 * child stopped by SIGTERM drops its session (no QUIT, nothing
		 * deleted) as a plain popbox fetch would */
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		for (int k = 0; k < OUT_COUNT; k++)
			close(pipes[k][0]);
		close(pipes[OUT_STDOUT][1]);
		close(pipes[OUT_STDERR][1]);
		int fl = fcntl(pipes[OUT_PROGRESS][1], F_GETFL);
		(void)fcntl(pipes[OUT_PROGRESS][1], F_SETFL, fl | O_NONBLOCK);
		struct fetch_options co = *o;
		co.progress_fd = pipes[OUT_PROGRESS][1];
		setvbuf(stdout, NULL, _IOLBF, 0);
		int rc = fetch_one(j->a, &co);
		fflush(stdout);
		fflush(stderr);
		_exit(rc);
	}
	for (int k = 0; k < OUT_COUNT; k++) {
		close(pipes[k][1]);
		j->fd[k] = pipes[k][0];
		int fl = fcntl(j->fd[k], F_GETFL);
		(void)fcntl(j->fd[k], F_SETFL, fl | O_NONBLOCK);
	}
	j->pid = pid;
	j->state = JOB_RUNNING;
	return true;
}

/* Reap j if it has exited (block: wait for it). */
static void
job_reap(struct parallel *p, struct job *j, bool block)
{
	int st;
	pid_t r;
	do
		r = waitpid(j->pid, &st, block ? 0 : WNOHANG);
	while (r < 0 && errno == EINTR);
	if (r != j->pid)
		return;
	j->exited = true;
	j->status = WIFEXITED(st) ? WEXITSTATUS(st) : EX_SOFTWARE;
	if (WIFSIGNALED(st)) {
		block_erase(p);
		fprintf(stderr, "popbox: %s: the fetch process was killed by signal %d\n",
		    j->a->name, WTERMSIG(st));
	}
}

static void
job_finish_if_over(struct parallel *p, struct job *j)
{
	if (j->state != JOB_RUNNING)
		return;
	if (!j->exited)
		job_reap(p, j, false);
	if (!j->exited)
		return;
	/* exited: what is left in the pipes is read now (a grandchild that
	 * still holds one, a stray mda, does not keep the run waiting) */
	for (int k = 0; k < OUT_COUNT; k++) {
		if (j->fd[k] >= 0)
			(void)drain(p, j, k);
		close_out(j, k);
	}
	j->state = JOB_DONE;
}

static void
print_table(const struct parallel *p)
{
	int w = 7;
	for (int i = 0; i < p->njobs; i++) {
		int n = (int)strlen(p->jobs[i].a->name);
		if (n > w)
			w = n;
	}
	if (w > 40)
		w = 40;
	printf("%-*s  %-22s %8s %10s %8s %6s %7s %8s\n", w, "ACCOUNT", "STATUS", "FETCHED", "SIZE",
	    "DELETED", "KEPT", "FAILED", "TIME");
	for (int i = 0; i < p->njobs; i++) {
		const struct job *j = &p->jobs[i];
		char st[40], sz[32];
		if (j->status == 0)
			snprintf(st, sizeof(st), "ok");
		else
			snprintf(st, sizeof(st), "%s (%d)", status_text(j->status), j->status);
		size_text(j->fetched_bytes, sz, sizeof(sz));
		if (j->final)
			printf("%-*.*s  %-22s %8u %10s %8u %6u %7u %7.1fs\n", w, w, j->a->name, st,
			    j->fetched, sz, j->deleted, j->kept, j->failed, j->seconds);
		else
			printf("%-*.*s  %-22s %8s %10s %8s %6s %7s %8s\n", w, w, j->a->name, st,
			    "-", "-", "-", "-", "-", "-");
	}
	fflush(stdout);
}

int
fetch_parallel(struct account *accts, const bool *selected, int nacct,
    const struct fetch_options *o, struct fetch_result *results)
{
	struct parallel p = { 0 };
	p.jobs = xcalloc((size_t)nacct, sizeof(*p.jobs));
	for (int k = 0; k < nacct; k++) {
		if (!selected[k])
			continue;
		struct job *j = &p.jobs[p.njobs++];
		j->a = &accts[k];
		j->index = k;
		j->login_delay = -1;
		for (int m = 0; m < OUT_COUNT; m++)
			j->fd[m] = -1;
	}
	p.tty = !o->quiet && !o->daemon && isatty(2);
	int running = 0, next = 0, status = 0;
	struct pollfd *pfd = xcalloc((size_t)p.njobs * OUT_COUNT, sizeof(*pfd));
	struct pollmap {
		int job, which;
	} *map = xcalloc((size_t)p.njobs * OUT_COUNT, sizeof(*map));

	for (;;) {
		while (running < o->jobs && next < p.njobs) {
			struct job *j = &p.jobs[next++];
			if (job_start(&p, j, o)) {
				running++;
			} else {
				block_erase(&p);
				fprintf(stderr, "popbox: %s: cannot start a fetch process: %s\n",
				    j->a->name, strerror(errno));
				j->state = JOB_DONE;
				j->status = EX_OSERR;
			}
		}
		if (running == 0 && next == p.njobs)
			break;
		block_draw(&p, false);
		size_t n = 0;
		for (int i = 0; i < p.njobs; i++)
			for (int k = 0; k < OUT_COUNT; k++)
				if (p.jobs[i].fd[k] >= 0) {
					pfd[n] = (struct pollfd){ .fd = p.jobs[i].fd[k], .events = POLLIN };
					map[n].job = i;
					map[n].which = k;
					n++;
				}
		int r = poll(pfd, n, PARALLEL_REDRAW_MS);
		if (r < 0 && errno != EINTR)
			break;
		for (size_t m = 0; r > 0 && m < n; m++) {
			if (pfd[m].revents == 0)
				continue;
			struct job *j = &p.jobs[map[m].job];
			if (!drain(&p, j, map[m].which))
				close_out(j, map[m].which);
		}
		for (int i = 0; i < p.njobs; i++) {
			struct job *j = &p.jobs[i];
			bool all_closed = j->fd[0] < 0 && j->fd[1] < 0 && j->fd[2] < 0;
			if (j->state == JOB_RUNNING && all_closed && !j->exited)
				job_reap(&p, j, true);	/* its pipes are shut: it is ending */
			enum job_state before = j->state;
			job_finish_if_over(&p, j);
			if (before == JOB_RUNNING && j->state == JOB_DONE) {
				running--;
				block_draw(&p, true);
			}
		}
	}
	block_draw(&p, true);
	p.drawn = 0;	/* the final state of every account stays on the screen */
	for (int i = 0; i < p.njobs; i++) {
		const struct job *j = &p.jobs[i];
		status = fetch_status_worse(status, j->status);
		if (results != NULL)
			results[j->index] = (struct fetch_result){ .status = j->status,
			    .login_delay = j->final ? j->login_delay : -1,
			    .resp_code = j->final ? j->resp_code : 0 };
	}
	if (!o->quiet && !o->daemon)
		print_table(&p);
	free(pfd);
	free(map);
	free(p.jobs);
	return status;
}

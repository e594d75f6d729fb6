/* The store thread of a worker (see store_pool.h): a thread_pool whose jobs
 * open a maildrop or expunge one, and whose completion calls the job's own
 * callback. */
#include "server/store_pool.h"

#include <stdint.h>
#include <stdlib.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/util.h"
#include "server/metrics.h"

/* Store threads per worker: maildrop work is disk-bound, and two workers
 * already give two; more threads would only seek against each other. */
#define STORE_POOL_THREADS 1

/* Quick opens run on the loop instead of the store thread (docs/DESIGN.md
 * "Quick opens on the loop"): the hop to the thread and back (a futex
 * wake, an eventfd write and read, an epoll round, two thread switches)
 * was about a tenth of a plain session's server CPU. A maildrop whose last
 * open on this worker succeeded with at most STORE_QUICK_MAX_MESSAGES is
 * opened on the loop with quick_only: from its index alone, or not at all
 * (STORE_AGAIN: new mail, a changed directory; then the thread does it). */
#define STORE_QUICK_SLOTS 1024      /* direct-mapped, 8 KiB per worker */

struct store_pool {
	struct thread_pool *threads;   /* NULL: inline (store_pool_new_inline) */
	struct event_base *base;
	uint64_t quick[STORE_QUICK_SLOTS];   /* path hashes (| 1); loop thread only */
};

static uint64_t
store_path_hash(const char *path)
{
	uint64_t h = 14695981039346656037ULL;   /* FNV-1a */
	for (const unsigned char *p = (const unsigned char *)path; *p != '\0'; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h | 1;   /* 0 is an empty slot */
}

/* An open that may be tried on the loop: a Maildir (mbox may wait for a
 * lock), no device state to read or write, nothing queued for the thread
 * (an expunge of the same maildrop must finish first), small last time. */
static bool
store_open_may_inline(const struct store_pool *p, const struct store_job *j)
{
	if (j->kind != STORE_JOB_OPEN || j->backend != &store_maildir ||
	    j->devices.device != NULL || j->devices.login_delay != 0 ||
	    j->devices.expire_days != DEVICES_EXPIRE_NEVER ||
	    thread_pool_pending(p->threads) != 0)
		return false;
	uint64_t h = store_path_hash(j->path);
	return p->quick[h % STORE_QUICK_SLOTS] == h;
}

/* On the loop, after an open (wherever it ran), before done() takes the
 * store: remember whether it could be done on the loop next time (small,
 * from the index alone: not on a file system whose ctime is not trusted,
 * not while new mail keeps arriving). */
static void
store_open_note(struct store_pool *p, const struct store_job *j)
{
	if (j->kind != STORE_JOB_OPEN || p == NULL)
		return;
	uint64_t h = store_path_hash(j->path);
	uint64_t *slot = &p->quick[h % STORE_QUICK_SLOTS];
	if (j->status == STORE_OK && j->store != NULL && j->store->count <= STORE_QUICK_MAX_MESSAGES &&
	    j->store->from_index)
		*slot = h;
	else if (*slot == h)
		*slot = 0;
}

_Static_assert(offsetof(struct store_job, pool_job) == 0,
    "a store job is reached from its pool job by a cast");

static void
store_job_free(struct store_job *job)
{
	devices_login_clear(&job->devices);
	devices_free(job->device_state);
	if (job->store != NULL)
		job->store->backend->close(job->store);   /* no UPDATE for an open */
	free(job->path);
	free(job->uidl_template);
	free(job->deleted);
	free(job->retrieved);
	free(job->error);
	free(job);
}

/* On the store thread. */
static void
store_job_run(struct thread_pool_job *pool_job)
{
	struct store_job *j = (struct store_job *)pool_job;

	if (j->kind == STORE_JOB_OPEN) {
		j->options.dovecot_uidl_format = j->uidl_template;
		j->status = j->backend->open_with != NULL ?
		    j->backend->open_with(j->path, &j->options, &j->store, &j->error) :
		    j->backend->open(j->path, &j->store, &j->error);
		if (j->status != STORE_OK)
			j->store = NULL;
		else
			j->status = devices_login_run(&j->devices, j->store, &j->error);
	} else if (j->device_state != NULL) {
		j->status = devices_update_run(j->device_state, j->device_slot, j->device_idle_days,
		    j->expire_days, j->store, j->deleted, j->retrieved, &j->removed, &j->error);
	} else {
		j->status = j->store->backend->expunge(j->store, j->deleted, &j->error);
		if (j->status == STORE_OK)
			for (uint32_t i = 0; i < j->store->count; i++)
				j->removed += j->deleted[i];
	}
}

/* On the event loop. Nobody waits when arg is NULL: an open's store is
 * closed (no UPDATE), an expunge has already happened and is durable. */
static void
store_job_done(struct thread_pool_job *pool_job)
{
	struct store_job *j = (struct store_job *)pool_job;

	store_open_note(j->pool, j);
	if (j->arg != NULL)
		j->done(j, j->arg);
	store_job_free(j);
}

struct store_pool *
store_pool_new_threads(struct event_base *base, unsigned threads)
{
	struct store_pool *p = xcalloc(1, sizeof(*p));

	p->base = base;
	p->threads = thread_pool_new(base, threads, 0);
	return p;
}

struct store_pool *
store_pool_new(struct event_base *base)
{
	return store_pool_new_threads(base, STORE_POOL_THREADS);
}

struct store_pool *
store_pool_new_inline(struct event_base *base)
{
	struct store_pool *p = xcalloc(1, sizeof(*p));

	p->base = base;
	return p;
}

static void
store_job_done_cb(evutil_socket_t fd, short what, void *arg)
{
	store_job_done(arg);
}

void
store_pool_submit(struct store_pool *p, struct store_job *job)
{
	job->pool_job.run = store_job_run;
	job->pool_job.done = store_job_done;
	if (p->threads != NULL) {
		job->pool = p;
		bool quick = store_open_may_inline(p, job);
		if (quick) {
			job->options.quick_only = true;
			store_job_run(&job->pool_job);
			job->options.quick_only = false;
			if (job->status != STORE_AGAIN) {
				METRICS_INC(maildrop_opens[METRICS_OPEN_LOOP]);
				struct timeval zero = { 0, 0 };
				if (event_base_once(p->base, -1, EV_TIMEOUT, store_job_done_cb, job,
				    &zero) < 0)
					fatalx("event_base_once failed");
				return;
			}
			/* More than the index: the thread opens it. */
			METRICS_INC(maildrop_quick_fallbacks);
			free(job->error);
			job->error = NULL;
			job->status = STORE_OK;
		}
		if (job->kind == STORE_JOB_OPEN)
			METRICS_INC(maildrop_opens[METRICS_OPEN_THREAD]);
		thread_pool_queue(p->threads, &job->pool_job);
		return;
	}
	/* Inline: the work now, the callback from the loop, as from a thread
	 * (never inside the submitter's own call). */
	store_job_run(&job->pool_job);
	struct timeval zero = { 0, 0 };
	if (event_base_once(p->base, -1, EV_TIMEOUT, store_job_done_cb, job, &zero) < 0)
		fatalx("event_base_once failed");
}

static void
store_pool_run_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct thread_pool_job *job = arg;
	job->done(job);
}

void
store_pool_run(struct store_pool *p, struct thread_pool_job *job)
{
	if (p->threads != NULL) {
		thread_pool_queue(p->threads, job);
		return;
	}
	job->run(job);
	struct timeval zero = { 0, 0 };
	if (event_base_once(p->base, -1, EV_TIMEOUT, store_pool_run_done_cb, job, &zero) < 0)
		fatalx("event_base_once failed");
}

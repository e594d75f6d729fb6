/* The store thread of a worker (see store_pool.h): a thread_pool whose jobs
 * open a maildrop or expunge one, and whose completion calls the job's own
 * callback. */
#include "server/store_pool.h"

#include <stdlib.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/util.h"

/* Store threads per worker: maildrop work is disk-bound, and two workers
 * already give two; more threads would only seek against each other. */
#define STORE_POOL_THREADS 1

struct store_pool {
	struct thread_pool *threads;   /* NULL: inline (store_pool_new_inline) */
	struct event_base *base;
};

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

	if (j->arg != NULL)
		j->done(j, j->arg);
	store_job_free(j);
}

struct store_pool *
store_pool_new_threads(struct event_base *base, unsigned threads)
{
	struct store_pool *p = xcalloc(1, sizeof(*p));

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

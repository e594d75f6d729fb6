/* The store thread of a worker: jobs are queued under a mutex, run on the
 * thread, and reported back to the event loop through an eventfd, where
 * each job's own callback runs (see store_pool.h). */
#include "server/store_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/log.h"

/* Store threads per worker: maildrop work is disk-bound, and two workers
 * already give two; more threads would only seek against each other. */
#define STORE_POOL_THREADS 1

struct store_pool {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct store_job *queue_head, *queue_tail;
	struct store_job *done;
	int done_fd;
	struct event *done_ev;
};

static void
store_job_free(struct store_job *job)
{
	if (job->store != NULL)
		job->store->backend->close(job->store);   /* no UPDATE for an open */
	free(job->path);
	free(job->deleted);
	free(job->error);
	free(job);
}

static void *
store_pool_thread(void *arg)
{
	struct store_pool *p = arg;
	for (;;) {
		pthread_mutex_lock(&p->lock);
		while (p->queue_head == NULL)
			pthread_cond_wait(&p->cond, &p->lock);
		struct store_job *j = p->queue_head;
		p->queue_head = j->next;
		if (p->queue_head == NULL)
			p->queue_tail = NULL;
		pthread_mutex_unlock(&p->lock);

		if (j->kind == STORE_JOB_OPEN)
			j->status = j->backend->open(j->path, &j->store, &j->error);
		else
			j->status = j->store->backend->expunge(j->store, j->deleted, &j->error);
		if (j->kind == STORE_JOB_OPEN && j->status != STORE_OK)
			j->store = NULL;

		pthread_mutex_lock(&p->lock);
		j->next = p->done;
		p->done = j;
		pthread_mutex_unlock(&p->lock);
		uint64_t one = 1;
		if (write(p->done_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			log_warn("store pool: eventfd");
	}
	return NULL;
}

static void
store_pool_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct store_pool *p = arg;
	uint64_t n;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		log_warn("store pool: eventfd");
	pthread_mutex_lock(&p->lock);
	struct store_job *list = p->done;
	p->done = NULL;
	pthread_mutex_unlock(&p->lock);
	/* The list is newest first; answer in submission order. */
	struct store_job *rev = NULL;
	while (list != NULL) {
		struct store_job *next = list->next;
		list->next = rev;
		rev = list;
		list = next;
	}
	while (rev != NULL) {
		struct store_job *next = rev->next;
		/* Nobody waits when arg is NULL: an open's store is closed (no
		 * UPDATE), an expunge has already happened and is durable. */
		if (rev->arg != NULL)
			rev->done(rev, rev->arg);
		store_job_free(rev);
		rev = next;
	}
}

struct store_pool *
store_pool_new(struct event_base *base)
{
	struct store_pool *p = xcalloc(1, sizeof(*p));
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	p->done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->done_fd < 0)
		fatal("eventfd");
	p->done_ev = event_new(base, p->done_fd, EV_READ | EV_PERSIST, store_pool_done_cb, p);
	event_add(p->done_ev, NULL);
	for (int i = 0; i < STORE_POOL_THREADS; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, store_pool_thread, p) != 0)
			fatalx("cannot start store thread");
		pthread_detach(t);
	}
	return p;
}

void
store_pool_submit(struct store_pool *p, struct store_job *job)
{
	job->next = NULL;
	pthread_mutex_lock(&p->lock);
	if (p->queue_tail != NULL)
		p->queue_tail->next = job;
	else
		p->queue_head = job;
	p->queue_tail = job;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

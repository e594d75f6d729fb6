/* Thread pool beside an event loop. Contract in thread_pool.h. */
#include "server/thread_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/util.h"

struct thread_pool {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct thread_pool_job *queue_head, *queue_tail;  /* under lock */
	struct thread_pool_job *done;                     /* under lock */
	bool stopping;                                  /* under lock */
	unsigned pending;       /* event loop thread only */
	int nice;
	int done_fd;            /* eventfd: threads -> loop */
	struct event *done_ev;
	pthread_t *threads;
	unsigned n_threads;
};

static void *
pool_thread(void *arg)
{
	struct thread_pool *pool = arg;
	/* With a positive niceness the pool yields to serving: when the CPUs
	 * are full, the workers' event loops (sessions already logged in) and
	 * the auth process's own loop run before the next login's hash. On
	 * Linux the priority of a thread is its own (PRIO_PROCESS with its
	 * thread id). */
	if (pool->nice != 0)
		(void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), pool->nice);
	for (;;) {
		pthread_mutex_lock(&pool->lock);
		while (pool->queue_head == NULL && !pool->stopping)
			pthread_cond_wait(&pool->cond, &pool->lock);
		struct thread_pool_job *j = pool->queue_head;
		if (j == NULL) {
			pthread_mutex_unlock(&pool->lock);
			return NULL;    /* stopping, and nothing left */
		}
		pool->queue_head = j->next;
		if (pool->queue_head == NULL)
			pool->queue_tail = NULL;
		pthread_mutex_unlock(&pool->lock);

		j->run(j);

		pthread_mutex_lock(&pool->lock);
		j->next = pool->done;
		pool->done = j;
		pthread_mutex_unlock(&pool->lock);
		uint64_t one = 1;
		if (write(pool->done_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			log_warn("eventfd write");
	}
}

static void
pool_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct thread_pool *pool = arg;
	uint64_t n;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		log_warn("eventfd read");
	pthread_mutex_lock(&pool->lock);
	struct thread_pool_job *list = pool->done;
	pool->done = NULL;
	pthread_mutex_unlock(&pool->lock);
	/* The list is newest first; answer in the order they finished. */
	struct thread_pool_job *rev = NULL;
	while (list != NULL) {
		struct thread_pool_job *next = list->next;
		list->next = rev;
		rev = list;
		list = next;
	}
	while (rev != NULL) {
		struct thread_pool_job *next = rev->next;
		pool->pending--;
		rev->done(rev);
		rev = next;
	}
}

struct thread_pool *
thread_pool_new(struct event_base *base, unsigned threads, int nice)
{
	struct thread_pool *pool = xcalloc(1, sizeof(*pool));
	pthread_mutex_init(&pool->lock, NULL);
	pthread_cond_init(&pool->cond, NULL);
	pool->nice = nice;
	pool->done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (pool->done_fd < 0)
		fatal("eventfd");
	pool->done_ev = event_new(base, pool->done_fd, EV_READ | EV_PERSIST, pool_done_cb, pool);
	if (pool->done_ev == NULL || event_add(pool->done_ev, NULL) < 0)
		fatalx("cannot watch the thread pool");
	if (threads == 0)
		threads = 1;
	pool->threads = xcalloc(threads, sizeof(*pool->threads));
	for (unsigned i = 0; i < threads; i++) {
		if (pthread_create(&pool->threads[i], NULL, pool_thread, pool) != 0)
			fatalx("cannot start a pool thread");
		pool->n_threads++;
	}
	return pool;
}

void
thread_pool_free(struct thread_pool *pool)
{
	if (pool == NULL)
		return;
	pthread_mutex_lock(&pool->lock);
	pool->stopping = true;
	pthread_cond_broadcast(&pool->cond);
	pthread_mutex_unlock(&pool->lock);
	for (unsigned i = 0; i < pool->n_threads; i++)
		pthread_join(pool->threads[i], NULL);
	event_free(pool->done_ev);
	close(pool->done_fd);
	pthread_mutex_destroy(&pool->lock);
	pthread_cond_destroy(&pool->cond);
	free(pool->threads);
	free(pool);
}

void
thread_pool_queue(struct thread_pool *pool, struct thread_pool_job *job)
{
	pool->pending++;
	pthread_mutex_lock(&pool->lock);
	job->next = NULL;
	if (pool->queue_tail != NULL)
		pool->queue_tail->next = job;
	else
		pool->queue_head = job;
	pool->queue_tail = job;
	pthread_cond_signal(&pool->cond);
	pthread_mutex_unlock(&pool->lock);
}

unsigned
thread_pool_pending(const struct thread_pool *pool)
{
	return pool->pending;
}

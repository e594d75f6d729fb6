/* A thread pool beside an event loop: work that may be slow runs on a few
 * threads, so the loop never waits for it. The auth process runs hashes
 * (crypt: tens of ms, SCRAM's PBKDF2: a few) and users-file parses on one
 * (auth.c), each worker its maildrop opens and expunges (store_pool.c).
 *
 * A job is a struct the caller embeds thread_pool_job in: run() is called on a
 * pool thread, then done() on the event loop thread (woken by an eventfd),
 * where the job may be freed. Jobs start in the order queued, several at
 * once with several threads; done() calls come in the order the jobs
 * finished, and in the order queued for jobs that finished together.
 * The threads run at the niceness given: the auth process's hashing yields
 * to the event loops of the process and the workers. */
#ifndef POPBOX_THREAD_POOL_H
#define POPBOX_THREAD_POOL_H

struct event_base;

struct thread_pool_job {
	struct thread_pool_job *next;               /* the pool's */
	void (*run)(struct thread_pool_job *job);   /* on a pool thread */
	void (*done)(struct thread_pool_job *job);  /* then on the event loop */
};

struct thread_pool;

/* threads threads (0 counts as 1) at niceness nice; fatal when they cannot start. */
struct thread_pool *thread_pool_new(struct event_base *base, unsigned threads, int nice);
/* Stop the threads (after the jobs queued) and free; done() is not called
 * for jobs still unfinished. For tests: the auth process never stops it. */
void thread_pool_free(struct thread_pool *pool);
void thread_pool_queue(struct thread_pool *pool, struct thread_pool_job *job);
/* Jobs queued whose done() has not run yet. */
unsigned thread_pool_pending(const struct thread_pool *pool);

#endif

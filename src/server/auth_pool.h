/* The auth process's thread pool: work that may be slow (crypt hashes take
 * tens of ms, SCRAM's PBKDF2 a few, parsing a large users file seconds) runs
 * on a few threads, so the event loop never waits for it.
 *
 * A job is a struct the caller embeds auth_pool_job in: run() is called on a
 * pool thread, then done() on the event loop thread (woken by an eventfd),
 * where the job may be freed. Jobs run in the order queued, several at once.
 * The threads run at a lower priority (niceness) than the event loops of
 * the process and the workers. */
#ifndef POPBOX_AUTH_POOL_H
#define POPBOX_AUTH_POOL_H

struct event_base;

struct auth_pool_job {
	struct auth_pool_job *next;               /* the pool's */
	void (*run)(struct auth_pool_job *job);   /* on a pool thread */
	void (*done)(struct auth_pool_job *job);  /* then on the event loop */
};

struct auth_pool;

/* threads threads (0 counts as 1) at niceness nice; fatal when they cannot start. */
struct auth_pool *auth_pool_new(struct event_base *base, unsigned threads, int nice);
/* Stop the threads (after the jobs queued) and free; done() is not called
 * for jobs still unfinished. For tests: the auth process never stops it. */
void auth_pool_free(struct auth_pool *pool);
void auth_pool_queue(struct auth_pool *pool, struct auth_pool_job *job);
/* Jobs queued whose done() has not run yet. */
unsigned auth_pool_pending(const struct auth_pool *pool);

#endif

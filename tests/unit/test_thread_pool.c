/* The auth process's thread pool (src/server/thread_pool.c): jobs run on pool
 * threads, their done() back on the event loop thread, in queue order with
 * one thread, and the pending count follows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include <event2/event.h>

#include "common/util.h"
#include "server/thread_pool.h"

struct test_job {
	struct thread_pool_job job;
	unsigned index;
	pthread_t ran_on;
	bool done_on_loop;
};

static pthread_t loop_thread;
static unsigned run_order[64], n_run;      /* touched by the pool thread (one) */
static unsigned done_order[64], n_done;
static pthread_mutex_t order_lock = PTHREAD_MUTEX_INITIALIZER;

static void
job_run(struct thread_pool_job *job)
{
	struct test_job *j = (struct test_job *)job;
	j->ran_on = pthread_self();
	pthread_mutex_lock(&order_lock);
	run_order[n_run++] = j->index;
	pthread_mutex_unlock(&order_lock);
}

static void
job_done(struct thread_pool_job *job)
{
	struct test_job *j = (struct test_job *)job;
	j->done_on_loop = pthread_equal(pthread_self(), loop_thread);
	done_order[n_done++] = j->index;
}

/* Run the loop until n jobs are done (each done() is one event). */
static void
loop_until_done(struct event_base *base, unsigned n)
{
	while (n_done < n)
		assert_int_equal(event_base_loop(base, EVLOOP_ONCE), 0);
}

static void
test_jobs_run_on_threads_done_on_loop(void **state)
{
	struct event_base *base = event_base_new();
	loop_thread = pthread_self();
	n_run = n_done = 0;
	struct thread_pool *pool = thread_pool_new(base, 2, 0);
	struct test_job jobs[32];
	for (unsigned i = 0; i < 32; i++) {
		jobs[i] = (struct test_job){ .job.run = job_run, .job.done = job_done, .index = i };
		thread_pool_queue(pool, &jobs[i].job);
	}
	assert_int_equal(thread_pool_pending(pool), 32);
	loop_until_done(base, 32);
	assert_int_equal(thread_pool_pending(pool), 0);
	for (unsigned i = 0; i < 32; i++) {
		assert_false(pthread_equal(jobs[i].ran_on, loop_thread));
		assert_true(jobs[i].done_on_loop);
	}
	thread_pool_free(pool);
	event_base_free(base);
}

static void
test_one_thread_keeps_queue_order(void **state)
{
	struct event_base *base = event_base_new();
	loop_thread = pthread_self();
	n_run = n_done = 0;
	struct thread_pool *pool = thread_pool_new(base, 1, 0);
	struct test_job jobs[16];
	for (unsigned i = 0; i < 16; i++) {
		jobs[i] = (struct test_job){ .job.run = job_run, .job.done = job_done, .index = i };
		thread_pool_queue(pool, &jobs[i].job);
	}
	loop_until_done(base, 16);
	for (unsigned i = 0; i < 16; i++)
		assert_int_equal(run_order[i], i);
	thread_pool_free(pool);
	event_base_free(base);
}

static void
test_free_runs_what_was_queued(void **state)
{
	/* thread_pool_free lets the threads finish the queue (done() is not
	 * called any more): nothing queued is lost half-way. */
	struct event_base *base = event_base_new();
	n_run = n_done = 0;
	struct thread_pool *pool = thread_pool_new(base, 0, 0);   /* 0 counts as 1 */
	struct test_job jobs[8];
	for (unsigned i = 0; i < 8; i++) {
		jobs[i] = (struct test_job){ .job.run = job_run, .job.done = job_done, .index = i };
		thread_pool_queue(pool, &jobs[i].job);
	}
	thread_pool_free(pool);
	assert_int_equal(n_run, 8);
	assert_int_equal(n_done, 0);
	event_base_free(base);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_jobs_run_on_threads_done_on_loop),
		cmocka_unit_test(test_one_thread_keeps_queue_order),
		cmocka_unit_test(test_free_runs_what_was_queued),
	};
	return cmocka_run_group_tests_name("thread_pool", tests, NULL, NULL);
}

/* The store thread of a worker (store_pool.c): maildrop work that can take
 * long (scanning 100 000 files, unlinking many) runs there, never on the
 * event loop (docs/DESIGN.md "Process model"). A job names its own completion callback, so the
 * pool knows nothing of sessions or commands. */
#ifndef POPBOX_STORE_POOL_H
#define POPBOX_STORE_POOL_H

#include <stdbool.h>

#include "server/devices_session.h"
#include "server/store.h"
#include "server/thread_pool.h"

struct event_base;

enum store_job_kind { STORE_JOB_OPEN, STORE_JOB_EXPUNGE };

struct store_job {
	struct thread_pool_job pool_job;   /* the pool's; first member */
	enum store_job_kind kind;
	const struct store_backend *backend;  /* OPEN */
	char *path;                   /* OPEN */
	/* OPEN: options.dovecot_uidl_format is uidl_template (owned: a reload
	 * may free the config meanwhile). */
	struct store_open_options options;
	char *uidl_template;
	struct store *store;          /* OPEN: result; EXPUNGE: owned by the job */
	bool *deleted;                /* EXPUNGE: copy of the marks, by store index */
	/* OPEN: the device part of the login (devices_session.h); its
	 * outputs are the job's until done() takes them. */
	struct devices_login devices;
	/* EXPUNGE of a session with device state (a device's, or a classic
	 * one with EXPIRE or LOGIN-DELAY): the state (owned by the job), the
	 * slot (0: classic), the policy and what RETR fetched (by store
	 * index, owned); NULL state: a plain expunge. */
	struct devices *device_state;
	int device_slot;
	unsigned device_idle_days;
	int expire_days;
	bool *retrieved;
	uint32_t removed;             /* EXPUNGE: files removed */
	enum store_status status;
	char *error;
	/* Called on the event loop when the job is done, with arg; not called
	 * when arg was set to NULL meanwhile (whoever waited went away). The
	 * pool frees the job afterwards, closing job->store if it is still set:
	 * done() takes the store by setting job->store to NULL. */
	void (*done)(struct store_job *job, void *arg);
	void *arg;
	/* the pool's own */
	struct store_pool *pool;      /* a threaded pool: to note quick opens */
};

/* The store thread(s) of a worker, reporting on base. */
struct store_pool *store_pool_new(struct event_base *base);
/* A pool without a thread: each job runs inside store_pool_submit, its
 * done() from the next loop round. For a session process, which serves
 * one session: nothing else waits on its loop, and a thread would cost
 * more than the work (docs/DESIGN.md "A process per user session"). */
struct store_pool *store_pool_new_inline(struct event_base *base);
/* A pool of threads threads (LMTP's delivery threads: worker.h). */
struct store_pool *store_pool_new_threads(struct event_base *base, unsigned threads);
/* Queue job (kind and its inputs, done and arg set); the pool owns it. */
void store_pool_submit(struct store_pool *pool, struct store_job *job);
/* Queue a job of another module's own kind (LMTP's spool writes and
 * deliveries: lmtp_session.c) on the same store thread, so that maildrop
 * work of every protocol is done in one place and in order. */
void store_pool_run(struct store_pool *pool, struct thread_pool_job *job);

#endif

/* Local delivery backends: maildir (exactly once, with the UIDL marker in
 * the file name), mbox (mboxrd, fcntl + dotlock) and mda (a command).
 * Each lives in its own file (deliver_maildir.c, deliver_mbox.c,
 * deliver_mda.c) and keeps its state there, in a struct that embeds
 * struct deliverer; the rest of popbox sees only struct deliverer and the
 * backend's ops table, found by deliver_backend().
 *
 * Life of one message: begin() -> write()* -> commit() or abort().
 * commit() returns only when the message is durable (file and directory
 * fsynced, or the command exited 0). abort() leaves no trace of a partial
 * message. Bytes are written exactly as given: no header is added.
 *
 * Batches (Maildir only; end and sync are NULL elsewhere): end() instead
 * of commit() completes the message in tmp/ without making it durable or
 * visible; sync() then makes every ended message durable and moves it
 * into new/ at once (one file system sync, one directory fsync for the
 * whole batch). Only a true return from sync() means "delivered"; after a
 * false return none of the batch may be counted: the ones already moved
 * stay in new/ only if new/ could still be fsynced (the next run finds
 * their markers and deletes them), else they are removed again (fetched
 * again next run). destroy() removes ended messages that were never
 * synced.
 *
 * Errors: every failing operation fills err (fetch_error.h) and returns
 * false: EX_IOERR for a local disk or command failure, EX_TEMPFAIL for a
 * lock held too long by another program, EX_OSERR when no pipe or process
 * could be made, EX_CANTCREAT for a Maildir that cannot be created.
 */
#ifndef POPBOX_DELIVER_H
#define POPBOX_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/fetch_error.h"

struct deliver_message {
	const char *uidl;          /* may be NULL (server without UIDL) */
	const char *marker;        /* 16 hex digits identifying account+UIDL, or NULL */
	uint32_t number;
	uint64_t list_size;
};

/* What every backend has; each backend's own state is a struct in its
 * file that embeds this one as its member `base` (DELIVER_STATE). */
struct deliverer {
	const struct deliver_ops *ops;
	char *target;               /* path or command; owned, freed by deliver_close() */
	const char *account_name;   /* borrowed: the account outlives the deliverer */
};

/* In a backend: its state from the struct deliverer it embeds as `base`. */
#define DELIVER_STATE(d, type) ((type *)(void *)((char *)(d) - offsetof(type, base)))

/* A marker found in a target's file names (scan). */
typedef void deliver_marker_fn(void *ctx, const char *marker, int64_t delivered_at);

struct deliver_ops {
	const char *name;
	/* Allocate the backend's state (zeroed apart from what the backend
	 * must set, such as descriptors to -1) and return its struct
	 * deliverer; nothing is opened yet. Cannot fail (xmalloc aborts). */
	struct deliverer *(*create)(void);
	/* Abort a message in progress, drop ended but unsynced messages,
	 * release every descriptor and free what create() allocated (not
	 * target). */
	void (*destroy)(struct deliverer *d);
	/* Start message m (m is borrowed for the call). False: nothing was
	 * started, nothing to abort. */
	bool (*begin)(struct deliverer *d, const struct deliver_message *m,
	    struct fetch_error *err);
	/* Append len bytes of the message. False: the caller must abort(). */
	bool (*write)(struct deliverer *d, const char *data, size_t len, struct fetch_error *err);
	/* Make the message durable. False: not delivered, and nothing of it
	 * is left (no abort() needed). */
	bool (*commit)(struct deliverer *d, struct fetch_error *err);
	/* Take the message in progress away again; safe after a failed
	 * write() and when no message is in progress. */
	void (*abort)(struct deliverer *d);
	/* Batches: see above; NULL where the backend commits one by one. */
	bool (*end)(struct deliverer *d, struct fetch_error *err);
	bool (*sync)(struct deliverer *d, struct fetch_error *err);
	/* Call fn for every marker the target's file names carry (what was
	 * delivered before); NULL where the target records none. A target
	 * that does not exist yet has none. */
	bool (*scan)(const char *target, deliver_marker_fn *fn, void *ctx,
	    struct fetch_error *err);
	/* true: a message that fails (begin, write or commit) with any error
	 * but EX_OSERR was refused by the target itself (the command's exit
	 * status): the run leaves it on the server and goes on with the
	 * others. false: any failure is local trouble that stops the run. */
	bool refusal_per_message;
};

/* The backend for a delivery kind (enum deliver_kind, account.h), or NULL
 * for DELIVER_NONE and unknown kinds. */
const struct deliver_ops *deliver_backend(int kind);

/* Open a deliverer of that kind for target (copied) on behalf of the
 * account named account_name (borrowed). Nothing is touched on disk until
 * the first begin() (a missing Maildir is created then). NULL with
 * EX_CONFIG for a kind without a backend. Close with deliver_close(). */
struct deliverer *deliver_open(int kind, const char *target, const char *account_name,
    struct fetch_error *err);
/* destroy() and free; NULL is ignored. */
void deliver_close(struct deliverer *d);

extern const struct deliver_ops deliver_maildir_ops, deliver_mbox_ops, deliver_mda_ops;

/* Maildir: add every marker found in new/ and cur/ file names to fn, after
 * an fsync of each directory (a marker is trusted only once durable).
 * EX_IOERR when a directory cannot be read or fsynced. */
bool deliver_maildir_scan(const char *path, deliver_marker_fn *fn, void *ctx,
    struct fetch_error *err);

/* The marker (16 lower-case hex digits + NUL) for an account key and UIDL. */
void deliver_marker(const char *account_key, const char *uidl, char out[17]);

/* For the backends: write all of data to fd, retrying after EINTR, and add
 * what was written to *written (may be NULL). False with errno set when a
 * write fails; what came before it was written. */
bool deliver_write_all(int fd, const char *data, size_t len, uint64_t *written);

#endif

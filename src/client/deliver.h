/* Local delivery backends: maildir (exactly once, with the UIDL marker in
 * the file name), mbox (mboxrd, fcntl + dotlock) and mda (a command).
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
 * again next run). close() removes ended messages that were never synced.
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

struct deliverer;

struct deliver_ops {
	const char *name;
	bool (*begin)(struct deliverer *d, const struct deliver_message *m, struct fetch_error *err);
	bool (*write)(struct deliverer *d, const char *data, size_t len, struct fetch_error *err);
	bool (*commit)(struct deliverer *d, struct fetch_error *err);
	void (*abort)(struct deliverer *d);
	void (*close)(struct deliverer *d);
	bool (*end)(struct deliverer *d, struct fetch_error *err);
	bool (*sync)(struct deliverer *d, struct fetch_error *err);
};

/* A Maildir message written to tmp/, not yet durable. */
struct deliver_pending {
	int fd;
	char *tmp_path;
	uint64_t written;
	char *new_name;            /* its name in new/ once moved by sync() */
};

struct deliverer {
	const struct deliver_ops *ops;
	char *target;               /* path or command */
	const char *account_name;
	/* backend state */
	int fd;
	char *tmp_path;
	uint64_t written;
	uint64_t start_offset;      /* mbox: size before this message */
	int child_pid;              /* mda */
	bool at_bol;                /* mbox: at the start of a line */
	int gt_count, from_match;   /* mbox: ">*From " quoting state */
	bool broken_pipe;
	unsigned seq;
	const struct deliver_message *msg;
	/* maildir */
	struct deliver_pending *pending;   /* ended, not yet synced */
	size_t npending, cappending;
	int tmpfd, newfd;                  /* tmp/ and new/, open from the first message */
	bool use_syncfs;
	bool no_renameat2;                 /* EINVAL/ENOSYS/EOPNOTSUPP seen: link + unlink */
	char *host;                        /* the host part of unique names */
	long pid;
};

/* Open a deliverer for "maildir:", "mbox:" or "mda:" targets (kind from
 * account.h). Creates a missing Maildir. */
struct deliverer *deliver_open(int kind, const char *target, const char *account_name,
    struct fetch_error *err);
void deliver_close(struct deliverer *d);

extern const struct deliver_ops deliver_maildir_ops, deliver_mbox_ops, deliver_mda_ops;

/* Maildir: add every marker found in new/ and cur/ file names to fn. */
bool deliver_maildir_scan(const char *path,
    void (*fn)(void *ctx, const char *marker, int64_t delivered_at), void *ctx,
    struct fetch_error *err);

/* The marker (16 lower-case hex digits + NUL) for an account key and UIDL. */
void deliver_marker(const char *account_key, const char *uidl, char out[17]);

#endif

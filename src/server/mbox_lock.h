/* The mbox lock that Debian's MTAs and mail readers share (Debian Policy
 * §11.6; Postfix local, Exim, procmail, mutt): an fcntl lock on the mbox
 * file, then a dot-lock FILE.lock next to it. Used by store_mbox.c around
 * the scan, each message's opening and the expunge; not held in between,
 * so deliveries go on during a POP3 session (docs/DESIGN.md "mbox").
 *
 * - fcntl: an open-file-description lock (F_OFD_SETLK). It conflicts with
 *   the classic fcntl locks of other programs like a classic one, but it
 *   belongs to the descriptor, so closing another descriptor of the same
 *   file in this process (a thread, a second session) cannot drop it.
 * - dot-lock: created the NFS-safe way (a unique file holding "PID:HOST",
 *   link()ed to FILE.lock, success judged by the unique file's link count,
 *   as the link reply can be lost on NFS). Another program's dot-lock is
 *   broken at once when it names a process of this host that is gone, and
 *   after MBOX_DOTLOCK_STALE_SEC otherwise (lockfile-progs' rule). Where the
 *   directory is not writable by us, a dot-lock of others is still waited
 *   for, ours is skipped (fcntl alone).
 * - Neither is waited for while the other is held: a program that takes
 *   them in the other order cannot deadlock with us.
 */
#ifndef POPBOX_MBOX_LOCK_H
#define POPBOX_MBOX_LOCK_H

#include <stdbool.h>

#include "server/lock.h"

/* lockfile-progs and liblockfile: a dot-lock older than 5 minutes is stale. */
#define MBOX_DOTLOCK_STALE_SEC 300

struct mbox_lock {
	int fd;          /* the mbox (-1: it does not exist; dot-lock only) */
	bool fcntl_held;
	bool dot_held;
	int dir_fd;
	char *dot_name;  /* "BASE.lock", relative to dir_fd */
};

/* Take both locks on mbox fd (open for reading; for writing when write)
 * whose name in dir_fd is base, waiting up to wait_ms for other holders.
 * LOCK_OK: *lock filled, release with mbox_lock_release. LOCK_HELD: still
 * held by another program after wait_ms. LOCK_ERROR: *error_r (malloc'd). */
enum lock_status mbox_lock_take(struct mbox_lock *lock, int dir_fd, const char *base, int fd,
    bool write, unsigned wait_ms, char **error_r);
void mbox_lock_release(struct mbox_lock *lock);
/* Keep a held dot-lock from looking stale during long work. */
void mbox_lock_touch(struct mbox_lock *lock);

#endif

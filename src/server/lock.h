/* Exclusive, non-blocking session lock on a maildrop (docs/PROTOCOL.md §2): excludes sessions in this process (other threads or the same event
 * loop), in other processes on this host and, through the file system's
 * flock, on other hosts sharing the directory (NFSv4, CephFS).
 *
 * flock alone is not enough: NFS maps flock to fcntl byte-range locks, which
 * are per process and so never conflict with the same process. An in-process
 * table of held lock files (by device and inode, so two spellings of one path
 * are one lock) covers that. The lock dies with the process (kill -9 leaves no
 * stale lock). */
#ifndef POPBOX_LOCK_H
#define POPBOX_LOCK_H

enum lock_status {
	LOCK_OK = 0,
	LOCK_HELD,      /* another session holds it: do not wait, report IN-USE */
	LOCK_ERROR,     /* could not open or lock the file; errno kept */
};

struct lock;

/* Open (creating with mode 0600 if missing, never following a symlink) the
 * lock file name relative to dir_fd (AT_FDCWD for a plain path) and lock it.
 * On LOCK_OK *lock_r is set; on LOCK_ERROR *error_r is set (malloc'd). Safe to
 * call from several threads. */
enum lock_status lock_acquire(int dir_fd, const char *name, struct lock **lock_r,
    char **error_r);

/* Release and free; NULL is fine. */
void lock_release(struct lock *lock);

#endif

/* The parts of the Maildir backend that its two halves share: the session
 * store (store_maildir.c) and delivery (store_maildir_deliver.c). Not for
 * other modules: they use store.h and store_deliver.h. */
#ifndef POPBOX_STORE_MAILDIR_INT_H
#define POPBOX_STORE_MAILDIR_INT_H

#include <stdbool.h>
#include <sys/stat.h>

#include "server/store.h"

/* New directories: the maildrop is private to its owner. */
#define MAILDIR_DIR_MODE 0700

/* STORE_PERM for conditions an administrator must fix (EACCES, ELOOP, ...),
 * STORE_TEMP for anything that may pass (EIO, ENOSPC, EMFILE, ...). */
enum store_status store_maildir_errno_status(int err);
/* mkdirat(dir_fd, name) unless it exists: 0, or -1 with errno. */
int store_maildir_mkdir(int dir_fd, const char *name);
/* fd (what, of maildrop path) belongs to the effective uid and nobody else
 * may write it; false with *error_r (malloc'd) otherwise. */
bool store_maildir_check_owner(int fd, const char *path, const char *what, char **error_r);
bool store_maildir_check_owner_st(int fd, const char *path, const char *what, uid_t euid,
    struct stat *st_out, char **error_r);
/* Open the maildrop directory path (created when its last component is
 * missing) without following a link the mail user could have placed
 * (store_maildir.c says which). Returns the descriptor, or -1 with errno
 * and *error_r (malloc'd). */
int store_maildir_open_root(const char *path, char **error_r);

#endif

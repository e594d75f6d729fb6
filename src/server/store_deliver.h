/* Delivery into a maildrop: the half of the store that mail coming in uses
 * (popbox deliver, LMTP; docs/DESIGN.md "Mail in"). Maildir only for now;
 * an mbox backend adds its own functions of the same shape.
 *
 * A delivery takes no session lock: a POP3 session's store is a snapshot
 * (store.h) and sees the message at its next login. A message becomes
 * visible in new/ whole or not at all: it is written to an anonymous file
 * (O_TMPFILE) in tmp/, fsynced, linked into new/ under a unique name, and
 * new/ is fsynced before success is returned. On any failure nothing is
 * left in tmp/ or new/ (an anonymous file vanishes with its descriptor,
 * also when the process is killed).
 *
 * The maildrop's popbox.index is not written here (it belongs to the lock
 * holder); the next login finds the message by the changed new/ and reads
 * only its file for the size (docs/DESIGN.md "Mail in" says why that keeps
 * logins warm). */
#ifndef POPBOX_STORE_DELIVER_H
#define POPBOX_STORE_DELIVER_H

#include <stdint.h>

#include "common/wire.h"

enum delivery_status {
	DELIVERY_OK = 0,
	DELIVERY_TEMP,        /* I/O error, disk full, ...: try again later */
	DELIVERY_PERM,        /* the maildrop cannot be used (owner, mode, link) */
	DELIVERY_OVER_QUOTA,  /* max_maildrop_size would be passed */
	DELIVERY_TOO_BIG,     /* the message is over max_message_size */
};

struct delivery_target {
	const char *path;             /* the maildrop (maildir path, scheme removed) */
	/* 0: no limit. The maildrop's stored octets (new/ and cur/) plus the
	 * message's wire octets must stay within it. */
	uint64_t max_maildrop_size;
};

struct delivery_result {
	char *file;           /* "new/NAME" (malloc'd, caller frees), NULL on failure */
	uint64_t size;        /* the message's wire size (RETR octets, store.h) */
};

/* Deliver the message read from in_fd until EOF, with header (text with LF
 * line ends, e.g. "Return-Path: <a@b>\n", or NULL) put before it. Line ends
 * are converted as common/eol.h says. Memory is bounded whatever the size:
 * the input is streamed. max_message_size 0: no limit; the message is
 * refused when its stored octets would pass it. error_r (malloc'd) says why
 * on failure. */
enum delivery_status store_maildir_deliver_stream(const struct delivery_target *t,
    const char *header, int in_fd, uint64_t max_message_size,
    struct delivery_result *result_r, char **error_r);

/* Deliver a finished, fsynced message file (an LMTP spool: open, its
 * contents final, LF line ends) of wire size wire_size: hard-linked into
 * new/, or copied when the maildrop is on another file system. */
enum delivery_status store_maildir_deliver_file(const struct delivery_target *t,
    int file_fd, uint64_t wire_size, struct delivery_result *result_r, char **error_r);

/* LMTP's spool file for one transaction: an anonymous file (O_TMPFILE) in
 * the tmp/ of the maildrop at path (made as a login would make it), so
 * that store_maildir_deliver_file can hard-link it into this and every
 * maildrop on the same file system. *fd_r is the descriptor (read-write);
 * on failure -1, with the status and *error_r (malloc'd). */
enum delivery_status store_maildir_spool_open(const char *path, int *fd_r, char **error_r);

/* Would size more octets pass t->max_maildrop_size (LMTP's RCPT check,
 * size 0 when the sender declared none)? DELIVERY_OK when not, or when
 * there is no limit (then nothing is read); DELIVERY_OVER_QUOTA, or
 * DELIVERY_TEMP/PERM when the maildrop cannot be read. */
enum delivery_status store_maildir_deliver_check(const struct delivery_target *t,
    uint64_t size, char **error_r);

/* The delivery's message file: an anonymous file (O_TMPFILE) in dir_fd,
 * e.g. an LMTP spool directory. Returns the descriptor or -1 with errno. */
int store_deliver_tmpfile(int dir_fd);

const char *delivery_status_name(enum delivery_status status);

/* mbox (store_mbox.c): the message is spooled to an anonymous file next to
 * the mbox (CRLF to LF, From_ lines quoted as the store reads them back,
 * wire size counted), then, under the mbox lock (fcntl + dot-lock, waiting
 * up to lock_wait_ms, else DELIVERY_TEMP), the spool is named as the
 * delivery's journal and appended after a From_ line and before an empty
 * line, and the mbox fsynced. A failure cuts the mbox back; a crash is
 * repaired by the next lock holder (a login, a delivery), which cuts off
 * a partial append unless other mail follows it (then nothing is removed).
 * result_r->file is the mbox's name. */
struct mbox_delivery_options {
	enum wire_from_quoting quoting;  /* the config's mbox_format */
	unsigned lock_wait_ms;
	const char *sender;              /* envelope sender for the From_ line; NULL: MAILER-DAEMON */
};
enum delivery_status store_mbox_deliver_stream(const struct delivery_target *t,
    const struct mbox_delivery_options *o, const char *header, int in_fd,
    uint64_t max_message_size, struct delivery_result *result_r, char **error_r);
/* LMTP's spool for a message to an mbox: an anonymous file in the mbox's
 * directory (the same file system, the same quota). */
enum delivery_status store_mbox_spool_open(const char *path, int *fd_r, char **error_r);
/* As store_maildir_deliver_check (LMTP's RCPT): the mbox's size plus
 * size octets against t->max_maildrop_size (a missing mbox is empty). */
enum delivery_status store_mbox_deliver_check(const struct delivery_target *t,
    uint64_t size, char **error_r);
/* A finished spool file (LMTP: LF line ends, read with pread from 0). */
enum delivery_status store_mbox_deliver_file(const struct delivery_target *t,
    const struct mbox_delivery_options *o, int file_fd, struct delivery_result *result_r,
    char **error_r);

#endif

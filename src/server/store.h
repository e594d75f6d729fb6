/* Maildrop store interface. One backend per file (store_maildir.c, later
 * store_mbox.c); the session code never knows which backend it talks to.
 *
 * Life cycle: store_open() -> (message_open()...) -> expunge() at UPDATE only
 * -> close(). A store is a snapshot taken at open: messages delivered later are
 * not seen by this store (docs/PROTOCOL.md §2); message numbers never change.
 */
#ifndef POPBOX_STORE_H
#define POPBOX_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/wire.h"
#include "server/uidl_migrate.h"

enum store_status {
	STORE_OK = 0,
	STORE_IN_USE,   /* another session holds the maildrop lock -> [IN-USE] */
	STORE_TEMP,     /* I/O or resource error, try later -> [SYS/TEMP] */
	STORE_PERM,     /* bad location, too many messages, ... -> [SYS/PERM] */
	STORE_GONE,     /* message_open: the file vanished (expunged elsewhere) */
	STORE_AGAIN,    /* open with quick_only: more than the index needed */
};

struct store_message {
	char *uidl;      /* 1..70 chars in 0x21..0x7E, unique in the maildrop */
	uint64_t size;   /* exact wire octets of RETR, see common/wire.h */
	char *name;      /* backend-private (maildir: "cur/<file>" relative) */
};

struct store_stream {
	int fd;          /* caller closes */
	off_t offset;    /* where the message starts in fd */
	off_t length;    /* bytes of stored message, -1 = until EOF */
	/* mbox: quoted From_ lines to unquote while encoding (wire.h) */
	enum wire_from_quoting from_quoting;
};

struct store;

/* Where a message's UIDL came from (store_open_options.report). */
enum store_uidl_source {
	STORE_UIDL_REMEMBERED,   /* popbox.index: served before, kept */
	STORE_UIDL_OLD,          /* the old server's list */
	STORE_UIDL_OWN,          /* its base name (store.h), see the miss for why */
	STORE_UIDL_REPLACED,     /* it collided with another message's, replaced */
};

/* How a maildrop's messages get their UIDLs at their first login under
 * popboxd (uidl_migrate.h); afterwards the index remembers each one. */
/* The largest maildrop a quick_only open serves (store_open_options). */
#define STORE_QUICK_MAX_MESSAGES 1000

struct store_open_options {
	enum uidl_format uidl_format;      /* UIDL_FORMAT_POPBOX (or UNSET): base names */
	const char *dovecot_uidl_format;   /* a checked pop3_uidl_format; NULL: Dovecot's default */
	/* popbox migrate-uidls: leave popbox.index as it is (a report) */
	bool keep_index;
	/* Keep the maildrop's directory open (store.state_dir_fd). */
	bool keep_state_dir;
	/* Maildir: open only when the index is the scan (new/ and cur/ as it
	 * recorded them, at most STORE_QUICK_MAX_MESSAGES): no directory
	 * read, no message file read, nothing written; else STORE_AGAIN with
	 * nothing changed (store_pool.c's quick opens on the worker's loop). */
	bool quick_only;
	/* Called for each message, in order, during the open (NULL: not). */
	void (*report)(void *arg, const char *name, const char *uidl,
	    enum store_uidl_source source, enum uidl_old_miss miss);
	void *report_arg;
	/* mbox stores (store_mbox.c): how ">From " lines are read, and how
	 * long to wait for another program's mbox lock (ms). */
	enum wire_from_quoting mbox_quoting;
	unsigned mbox_lock_wait_ms;
};

struct store_backend {
	const char *scheme; /* "maildir" */
	/* Open the maildrop at path (expanded, scheme prefix removed), create it
	 * if it does not exist, take the exclusive session lock, scan it. On
	 * failure returns status != STORE_OK and sets *error_r (malloc'd, for the
	 * log; never shown to the client). */
	enum store_status (*open)(const char *path, struct store **store_r, char **error_r);
	/* The same, with options (NULL: the defaults, as open). */
	enum store_status (*open_with)(const char *path, const struct store_open_options *options,
	    struct store **store_r, char **error_r);
	/* Open message idx (0-based) for reading. */
	enum store_status (*message_open)(struct store *store, uint32_t idx,
	    struct store_stream *stream_r, char **error_r);
	/* UPDATE: remove every message whose deleted[idx] is true, make the
	 * removal durable (fsync the directories), then return STORE_OK. A
	 * message already gone counts as removed. Never removes any other. */
	enum store_status (*expunge)(struct store *store, const bool *deleted, char **error_r);
	/* Release the lock and free everything. */
	void (*close)(struct store *store);
};

/* The common part every backend's store starts with. */
struct store {
	const struct store_backend *backend;
	struct store_message *messages;
	uint32_t count;
	uint64_t total_size;
	const char *path;    /* the maildrop, for log lines */
	/* The maildrop's directory, where state beside the index lives (the
	 * device state, devices.h), open while the store is: only with
	 * store_open_options.keep_state_dir, else -1. */
	int state_dir_fd;
	/* Maildir: the list came from popbox.index alone (what a quick_only
	 * open can do again while nothing changes). */
	bool from_index;
};

/* "maildir:PATH" -> backend and *path_r pointing into location; NULL if the
 * scheme is unknown. */
const struct store_backend *store_backend_for(const char *location, const char **path_r);

/* UIDL for a Maildir base name (the file name up to the first ':'): the name
 * itself when it is 1..70 chars of 0x21..0x7E, else "H" + 40 hex chars of its
 * SHA-256 (fixed length, cannot collide with a real name in practice). Returns a
 * malloc'd string. */
/* RFC 1939 §7: a unique-id is 1 to 70 characters 0x21..0x7E. */
#define UIDL_MAX_LEN 70
char *maildir_uidl_from_name(const char *base, size_t len);
/* "H" + 40 hex chars of the SHA-256 of the base name and salt: a stand-in
 * for a UIDL that another message already has (uidl_make_unique). */
char *maildir_uidl_salted(const char *base, size_t len, unsigned salt);

extern const struct store_backend store_maildir;
extern const struct store_backend store_mbox;
/* How old the ctime of new/ and cur/ must be before popbox.index records it
 * (store_maildir.c); a variable only so that tests can shorten it. */
extern unsigned store_maildir_settle_ms;

/* Whether an unchanged inode and ctime of new/ and cur/ may stand for a scan
 * (maildir_trust_ctime): AUTO trusts them on local file systems only. On a
 * network file system another node's delivery need not move the ctime this
 * node sees (attribute caching), so the directories are read every time
 * (docs/DESIGN.md "Beyond one machine"). Set by the workers from the
 * config. */
enum store_trust_ctime { STORE_TRUST_CTIME_AUTO = 0, STORE_TRUST_CTIME_YES, STORE_TRUST_CTIME_NO };
extern enum store_trust_ctime store_maildir_trust_ctime;
/* statfs(2)'s f_type of a network or cluster file system (NFS, CIFS/SMB,
 * Ceph, GlusterFS and other FUSE, GFS2, OCFS2, AFS, 9P, Lustre ...). */
bool store_fs_type_is_network(unsigned long f_type);

#endif

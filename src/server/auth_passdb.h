/* The password database interface of the auth process (docs/DESIGN.md,
 * "The auth process"). A backend is a table of functions; the users file
 * (auth_passwdfile.c) is one, and another (PAM) plugs in as another table
 * without changes to auth.c or auth_sasl.c, which know users only through
 * these functions.
 *
 * A loaded database (struct passdb) is immutable (PAM's cache of system
 * accounts guards itself with a mutex): pool threads read it without locks. A reload builds a new one and auth.c swaps it in; requests
 * under way keep the one they started with, through a reference
 * (struct passdb_ref), counted on the event loop thread only.
 *
 * Users are struct passwd_entry (passwd.h): every backend fills user and
 * home (for the mail location); the secret fields are the backend's own
 * and read only through the functions below. */
#ifndef POPBOX_AUTH_PASSDB_H
#define POPBOX_AUTH_PASSDB_H

#include <stdbool.h>
#include <stddef.h>

#include "common/scram.h"
#include "server/config.h"
#include "server/passwd.h"

struct passdb;

struct passdb_ops {
	const char *name;     /* for log lines: "users file" */

	/* --- reload: where the data comes from and when to re-read it --- */
	/* The file the master opens for load() (as root: the file may be
	 * readable by root alone), or NULL when the backend reads no file.
	 * Points into config. */
	const char *(*source)(const struct config *config);
	/* Whether source differs from what db was loaded from. Cheap (a
	 * stat), called on the event loop from a timer. */
	bool (*changed)(const struct passdb *db, const char *source);
	/* Build a database. fd: source opened by the master (read from offset
	 * 0; the caller closes it), or -1 when source is NULL. Runs on a pool
	 * thread: must not touch anything but its arguments. NULL with
	 * *error_r when nothing could be loaded. */
	struct passdb *(*load)(const char *source, int fd, char **error_r);
	size_t (*count)(const struct passdb *db);   /* users, for the log */
	void (*free)(struct passdb *db);

	/* --- users and secrets; db is never NULL --- */
	/* Exact lookup; NULL for an unknown user. Cheap. */
	const struct passwd_entry *(*lookup)(const struct passdb *db, const char *user);
	/* Check a password. e == NULL (unknown user), a disabled entry and a
	 * wrong password cost the same work, whatever kind of secret most
	 * users have (no user enumeration by timing). May be slow: pool
	 * threads only, unless verify_is_cheap(db, e). */
	enum password_result (*verify)(const struct passdb *db, const struct passwd_entry *e,
	    const char *password);
	bool (*verify_is_cheap)(const struct passdb *db, const struct passwd_entry *e);
	/* The plaintext secret (APOP, CRAM-MD5, SCRAM from a plaintext), or
	 * NULL when the backend does not have it. */
	const char *(*plaintext)(const struct passwd_entry *e);
	/* A stored SCRAM secret: 0 and *secret filled (scram_secret_clear it),
	 * or -1 when the user has none (or an unusable one). */
	int (*scram_secret)(const struct passwd_entry *e, struct scram_secret *secret);
	/* What SCRAM announces for a user without a stored secret of its
	 * mechanism (unknown, {PLAIN}, other schemes): the iteration count and
	 * salt length most stored SCRAM secrets have, so that every account's
	 * first challenge looks alike. */
	void (*scram_defaults)(const struct passdb *db, unsigned *iterations_r, size_t *salt_len_r);
	/* IPC_POLICY_* flags: which settings some users have of their own
	 * (CAPA's "USER" tags). NULL: none. */
	unsigned (*policy_flags)(const struct passdb *db);
};

/* The backends. */
extern const struct passdb_ops passdb_passwdfile;   /* users file: auth_passwdfile.c */
/* Unix accounts through PAM (users = pam): auth_pam.c. Its database is a
 * cache of the accounts looked up, guarded by a mutex, not immutable;
 * lookup may block (getpwnam_r) and verify runs one PAM conversation at a
 * time. */
extern const struct passdb_ops passdb_pam;
/* The settings (pam_service, first_valid_uid, deny_users) the next load
 * of passdb_pam uses: call at start and after each reload, on the event
 * loop. Copies what it needs. */
void auth_pam_configure(const struct config *config);

/* A reference-counted loaded database. */
struct passdb_ref {
	const struct passdb_ops *ops;
	struct passdb *db;
	unsigned refs;        /* event loop thread only */
};

/* A reference to a new db (refs = 1). */
struct passdb_ref *passdb_ref_new(const struct passdb_ops *ops, struct passdb *db);
/* Take another reference; returns ref. */
struct passdb_ref *passdb_ref_hold(struct passdb_ref *ref);
/* Drop one; the last frees the database. NULL is fine. */
void passdb_ref_release(struct passdb_ref *ref);

#endif

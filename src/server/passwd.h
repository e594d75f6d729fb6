/* Users file in Dovecot passwd-file format and password verification.
 * Only the auth process includes this (design §3): workers never see secrets.
 *
 * Line: user:password[:uid:gid:gecos:home:shell:extra_fields], '#' comments,
 * blank lines skipped. password is "{SCHEME}data" or a bare crypt(3) string. */
#ifndef POPBOX_PASSWD_H
#define POPBOX_PASSWD_H

#include <stdbool.h>
#include <stddef.h>

struct passwd_entry {
	char *user;       /* as written, e.g. "alice" or "alice@example.org" */
	char *password;   /* secret as written; may be "" (account disabled) */
	char *uid, *gid;  /* may be "" */
	char *home;       /* may be "" */
};

struct passwd_db;

/* Load a users file. Lines that cannot be parsed are skipped with a warning
 * naming the line (a typo must not lock out every user). Returns -1 and
 * *error_r only when the file cannot be read at all. */
int passwd_db_load(const char *path, struct passwd_db **db_r, char **error_r);
int passwd_db_parse(const char *name, const char *text, struct passwd_db **db_r, char **error_r);
void passwd_db_free(struct passwd_db *db);
/* Exact, case-sensitive lookup; NULL if absent. */
const struct passwd_entry *passwd_db_lookup(const struct passwd_db *db, const char *user);
size_t passwd_db_count(const struct passwd_db *db);

enum password_result {
	PASSWORD_OK = 0,
	PASSWORD_MISMATCH,
	PASSWORD_BAD_SCHEME, /* unknown {SCHEME} or unverifiable hash: logged, login fails */
};

/* Verify plain against a stored secret: {PLAIN}, {CLEARTEXT}, {CRYPT},
 * {SHA512-CRYPT}, {SHA256-CRYPT}, {MD5-CRYPT}, {BLF-CRYPT} and bare crypt(3)
 * strings (anything crypt_r verifies), comparisons in constant time. May take
 * tens of milliseconds (strong hashes): never call on an event loop thread. */
enum password_result password_verify(const char *stored, const char *plain);

/* Burn the same time as verifying against the users of db would, for an
 * unknown user (no user enumeration by timing). */
void password_verify_dummy(const struct passwd_db *db, const char *plain);

/* The plaintext of a {PLAIN}/{CLEARTEXT} secret (APOP, CRAM-MD5), else NULL. */
const char *password_plaintext(const char *stored);

/* Expand a mail location template for an entry: %u user, %n local part,
 * %d domain (empty without '@'), %% percent, a leading "~" or "~/" the home
 * field (error if home is empty). Users with '/' or a leading '.' in a
 * component used by %u/%n/%d are refused (path traversal). Returns malloc'd
 * string or NULL with *error_r. */
char *mail_location_expand(const char *template, const struct passwd_entry *entry, char **error_r);

#endif

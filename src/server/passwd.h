/* Users file in Dovecot passwd-file format and password verification.
 * Only the auth process includes this (docs/DESIGN.md "Process model"): workers never see secrets.
 *
 * Line: user:password[:uid:gid:gecos:home:shell:extra_fields], '#' comments,
 * blank lines skipped. password is "{SCHEME}data" or a bare crypt(3) string. */
#ifndef POPBOX_PASSWD_H
#define POPBOX_PASSWD_H

#include <stdbool.h>
#include <stddef.h>

#include "server/uidl_migrate.h"

struct passwd_entry {
	char *user;       /* as written, e.g. "alice" or "alice@example.org" */
	char *password;   /* secret as written; may be "" (account disabled) */
	char *uid, *gid;  /* may be "" */
	char *home;       /* may be "" */
	/* From the extra fields: "uidl_format=popbox|dovecot|courier" (or
	 * userdb_uidl_format=, Dovecot's spelling); UIDL_FORMAT_UNSET without.
	 * A line with another value is skipped (logged): serving the user's
	 * mail with UIDLs the admin did not choose would make clients fetch
	 * it all again. */
	enum uidl_format uidl_format;
	/* "expire_days=N|never" and "login_delay=SECONDS" (devices.h), the
	 * user's own EXPIRE and LOGIN-DELAY: 0 = not set (the config's), else
	 * for expire 1 = never, 2 + N = N days, for login_delay 1 + N = N
	 * seconds (so that a zeroed entry sets nothing). */
	unsigned expire;
	unsigned login_delay;
};

struct passwd_db;

/* Load a users file. Lines that cannot be parsed are skipped with a warning
 * naming the line (a typo must not lock out every user). Returns -1 and
 * *error_r only when the file cannot be read at all.
 * Details: the user name must be non-empty, at most 320 bytes, without
 * whitespace or control characters; a line needs at least "user:" (an empty
 * password disables the account); fields after home are ignored; lines whose
 * first non-blank character is '#' are comments; CRLF is accepted. For a
 * duplicate user the first line wins and the later one is logged. Lines over
 * 16 KiB are skipped; at most 10 million users are loaded. Warnings name
 * FILE:LINE and never contain passwords. passwd_db_parse copies text, never
 * fails, and uses name in warnings. */
int passwd_db_load(const char *path, struct passwd_db **db_r, char **error_r);
/* Same from a descriptor open on the file (the auth process gets one from
 * the master); name is used in messages. Reads from offset 0. */
int passwd_db_load_fd(const char *name, int fd, struct passwd_db **db_r, char **error_r);
int passwd_db_parse(const char *name, const char *text, struct passwd_db **db_r, char **error_r);
void passwd_db_free(struct passwd_db *db);
/* Exact, case-sensitive lookup; NULL if absent. */
const struct passwd_entry *passwd_db_lookup(const struct passwd_db *db, const char *user);
size_t passwd_db_count(const struct passwd_db *db);
/* Entry i (0 <= i < passwd_db_count) in file order, else NULL. */
const struct passwd_entry *passwd_db_entry(const struct passwd_db *db, size_t i);

enum password_result {
	PASSWORD_OK = 0,
	PASSWORD_MISMATCH,
	PASSWORD_BAD_SCHEME, /* unknown {SCHEME} or unverifiable hash: logged, login fails */
};

/* Verify plain against a stored secret: {PLAIN}, {CLEARTEXT}, {CRYPT},
 * {SHA512-CRYPT}, {SHA256-CRYPT}, {MD5-CRYPT}, {BLF-CRYPT} and bare crypt(3)
 * strings (anything crypt_r verifies), comparisons in constant time. May take
 * tens of milliseconds (strong hashes): never call on an event loop thread.
 * Details: scheme names are case-insensitive; {PLAIN.B64}/{PLAIN.HEX} (and
 * CLEARTEXT) are decoded; the named *-CRYPT schemes require their method's
 * prefix ($1$, $5$, $6$, $2a$/$2b$/$2y$), else PASSWORD_BAD_SCHEME. An empty
 * secret, or one starting with '!' or '*' (locked, as in shadow(5)), gives
 * PASSWORD_MISMATCH for every password ("!hash" still costs a verify of hash).
 * An empty plain, or one over 4096 bytes, never matches. Nothing secret is
 * logged. An empty secret returns at once: callers that care about timing
 * call password_verify_dummy for such entries too. */
enum password_result password_verify(const char *stored, const char *plain);

/* Burn the same time as verifying against the users of db would, for an
 * unknown user (no user enumeration by timing). */
void password_verify_dummy(const struct passwd_db *db, const char *plain);

/* Verify plain for entry e of db (NULL: an unknown user) so that unknown
 * users, disabled entries (empty, "*", "!"), unknown schemes and {PLAIN}
 * secrets in a file of hashes cost at least the work of
 * password_verify_dummy: the work of the most common kind of secret in the
 * file, SCRAM's PBKDF2 included (no user enumeration by timing). A user
 * whose hash is costlier than most users' costs its own work. Pool threads
 * only, unless passwd_db_verify_is_cheap(db, e). */
enum password_result passwd_db_verify(const struct passwd_db *db, const struct passwd_entry *e,
    const char *plain);
/* Whether passwd_db_verify(db, e, ...) costs next to nothing: the file is
 * mostly {PLAIN} (or has nothing to verify) and e is {PLAIN}, disabled or
 * unknown. */
bool passwd_db_verify_is_cheap(const struct passwd_db *db, const struct passwd_entry *e);

/* The iteration count and salt length (octets) that most {SCRAM-*}
 * secrets of db have; SCRAM_ITERATIONS_DEFAULT and SCRAM_SALT_SIZE when it
 * has none. SCRAM announces them for users without a secret of its own. */
void passwd_db_scram_defaults(const struct passwd_db *db, unsigned *iterations_r,
    size_t *salt_len_r);

/* The secret password_verify_dummy verifies against: a hash of a fixed
 * phrase with the method, cost and {SCHEME} prefix most users of db have
 * (e.g. "{SHA512-CRYPT}$6$rounds=10000$...", "{SCRAM-SHA-256}4096,..."),
 * "{PLAIN}..." when most are plaintext, NULL for a db without verifiable
 * users. For tests. */
const char *passwd_db_dummy_secret(const struct passwd_db *db);

/* The plaintext of a {PLAIN}/{CLEARTEXT} secret (APOP, CRAM-MD5), else NULL. */
const char *password_plaintext(const char *stored);

/* Expand a mail location template for an entry: %u user, %n local part,
 * %d domain (empty without '@'), %% percent, a leading "~" or "~/" the home
 * field (error if home is empty). Users with '/' or a leading '.' in a
 * component used by %u/%n/%d are refused (path traversal). Returns malloc'd
 * string or NULL with *error_r.
 * Details: a leading "type:" prefix ([a-z]+:, e.g. "maildir:") is copied and
 * "~" is recognised right after it; home must be an absolute path. %d may be
 * empty, %u and %n may not. Values containing control characters are refused
 * too, and so is any result with a "." or ".." path component (wherever it
 * came from) or longer than PATH_MAX. The local part and domain split at the
 * first '@'. Messages in *error_r name the (sanitised) user, never a secret. */
char *mail_location_expand(const char *template, const struct passwd_entry *entry, char **error_r);

#endif

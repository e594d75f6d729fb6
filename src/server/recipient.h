/* Which user a delivery address names (docs/DESIGN.md "Mail in"): the same
 * for popbox deliver and LMTP's RCPT. The address is looked up as the users
 * file names users: the full address (domain compared case-insensitively),
 * else the bare local part; with a recipient_delimiter ("+", or several
 * characters, any of which counts) a "+detail" is removed from the local
 * part first. */
#ifndef POPBOX_RECIPIENT_H
#define POPBOX_RECIPIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "server/passwd.h"

/* At most: the address as given, with its domain in lower case, the bare
 * local part. */
#define RECIPIENT_CANDIDATES 3

/* The user names to try, in order, without repeats: written into
 * out[0..n) (each malloc'd; the caller frees them) and n returned; 0 when
 * address is no usable address (empty, over the users file's name limit,
 * spaces or control characters, empty local part). delimiters may be NULL
 * or "". Pure: no file or database is read. */
size_t recipient_candidates(const char *address, const char *delimiters,
    char *out[RECIPIENT_CANDIDATES]);

/* The entry of db that address names, or NULL. */
const struct passwd_entry *recipient_lookup(const struct passwd_db *db, const char *address,
    const char *delimiters);

/* users = pam: whether the Unix account name with uid may get mail (and
 * log in): not root, uid at least first_valid_uid, not named in
 * deny_users (" a b ", config.h). popbox deliver, LMTP's RCPT (auth
 * process) and the master before it forks a delivery as the account all
 * apply this one rule. */
bool recipient_system_account_ok(const char *name, uid_t uid, unsigned first_valid_uid,
    const char *deny_users);

#endif

/* The popbox subcommands that work on popboxd's mail store (deliver,
 * migrate-uidls) touch mail as popboxd's workers do: as run_as, never as
 * root. */
#ifndef POPBOX_MAIL_OWNER_H
#define POPBOX_MAIL_OWNER_H

#include "server/config.h"

#include <pwd.h>
#include <stdbool.h>
#include <sys/types.h>

/* Started as root: become config->run_as (groups, gid, uid; no way back).
 * Not root: stay who we are. Returns 0, or -1 after printing why on stderr
 * (prefixed with prog): run_as unknown, the change failed, or we would still
 * be root afterwards (run_as = root). */
int mail_owner_become(const struct config *config, const char *prog);

/* users = pam: whether the Unix account pw gets mail, by popboxd's login
 * rules: not root, uid at least first_valid_uid, not in deny_users. */
bool mail_owner_is_mail_user(const struct config *config, const struct passwd *pw);

/* users = pam, started as root: become the account user (uid, its gid
 * gid, plus mail_privileged_group for an mbox: the dot-lock is made in
 * /var/mail, root:mail 2775 on Debian); no way back. Returns 0, or -1
 * after printing why on stderr (prefixed with prog). */
int mail_owner_become_account(const struct config *config, const char *user, uid_t uid,
    gid_t gid, bool mbox, const char *prog);

#endif

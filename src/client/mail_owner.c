/* Becoming the mail owner (mail_owner.h). */
#include "client/mail_owner.h"

#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <unistd.h>

#include "server/recipient.h"

int
mail_owner_become(const struct config *config, const char *prog)
{
	struct passwd *pw;

	if (geteuid() != 0 && getuid() != 0)
		return 0;
	if ((pw = getpwnam(config->run_as)) == NULL) {
		fprintf(stderr, "%s: run_as user %s does not exist\n", prog, config->run_as);
		return -1;
	}
	gid_t gid = pw->pw_gid;
	if (setgroups(1, &gid) < 0 || setresgid(gid, gid, gid) < 0 ||
	    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0 || setuid(0) == 0 ||
	    geteuid() == 0) {
		fprintf(stderr, "%s: cannot drop privileges to %s (never works on mail as root)\n",
		    prog, config->run_as);
		return -1;
	}
	return 0;
}

bool
mail_owner_is_mail_user(const struct config *config, const struct passwd *pw)
{
	return recipient_system_account_ok(pw->pw_name, pw->pw_uid, config->first_valid_uid,
	    config->deny_users);
}

int
mail_owner_become_account(const struct config *config, const char *user, uid_t uid, gid_t gid,
    bool mbox, const char *prog)
{
	gid_t groups[2] = { gid, gid };
	int ngroups = 1;
	if (mbox && config->mail_privileged_group != NULL &&
	    config->mail_privileged_group[0] != '\0') {
		struct group *gr = getgrnam(config->mail_privileged_group);
		if (gr == NULL) {
			fprintf(stderr, "%s: mail_privileged_group %s does not exist\n", prog,
			    config->mail_privileged_group);
			return -1;
		}
		groups[ngroups++] = gr->gr_gid;
	}
	if (setgroups((size_t)ngroups, groups) < 0 || setresgid(gid, gid, gid) < 0 ||
	    setresuid(uid, uid, uid) < 0 || setuid(0) == 0 || geteuid() == 0) {
		fprintf(stderr, "%s: cannot become %s\n", prog, user);
		return -1;
	}
	return 0;
}

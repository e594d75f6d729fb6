/* Becoming the mail owner (mail_owner.h). */
#include "client/mail_owner.h"

#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <unistd.h>

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

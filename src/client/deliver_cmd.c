/* popbox deliver (deliver_cmd.h). The store does the delivery; this file
 * turns the command line into a target and the outcome into an exit code
 * and one log line. */
#include "client/deliver_cmd.h"
#include "client/mail_owner.h"
#include "common/log.h"
#include "common/util.h"
#include "server/config.h"
#include "server/passwd.h"
#include "server/recipient.h"
#include "server/store.h"
#include "server/store_deliver.h"

#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#define DELIVER_DEFAULT_CONFIG "/etc/popbox/popboxd.conf"
#define DELIVER_PROG "popbox deliver"
/* An envelope sender is a mailbox (RFC 5321 §4.5.3.1.3: a path is at most
 * 256 octets); a longer one is refused rather than cut. */
#define DELIVER_SENDER_MAX 256
/* Postfix's local(8) exports the queue id of the mail it delivers. */
#define DELIVER_QUEUE_ID_ENV "QUEUE_ID"

static void
deliver_usage(FILE *f)
{
	fprintf(f, "usage: popbox deliver [-c CONF] [-f SENDER] [-a ADDRESS] USER < message\n"
	    "  deliver one message into USER's maildrop; exit 0 delivered, 67 unknown user,\n"
	    "  75 try again later, 77 refused for good, 78 configuration error\n");
}

/* "Return-Path: <sender>\n", or NULL with *error_r for a sender that cannot
 * be one (control characters, spaces, too long). "<a@b>" and "a@b" both
 * give <a@b>; "" and "<>" the null sender. */
static char *
deliver_return_path(const char *sender, const char **error_r)
{
	size_t len = strlen(sender);

	if (len >= 2 && sender[0] == '<' && sender[len - 1] == '>') {
		sender++;
		len -= 2;
	}
	if (len > DELIVER_SENDER_MAX) {
		*error_r = "sender address too long";
		return NULL;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)sender[i];
		if (c <= 0x20 || c == 0x7f || c == '<' || c == '>') {
			*error_r = "sender address with spaces, brackets or control characters";
			return NULL;
		}
	}
	return xasprintf("Return-Path: <%.*s>\n", (int)len, sender);
}

static int
deliver_exit_code(enum delivery_status st, const struct config *config)
{
	switch (st) {
	case DELIVERY_OK:
		return 0;
	case DELIVERY_OVER_QUOTA:
		return config->max_maildrop_size_bounce ? EX_NOPERM : EX_TEMPFAIL;
	case DELIVERY_TOO_BIG:
		return EX_NOPERM;
	case DELIVERY_PERM:
		return EX_CONFIG;
	case DELIVERY_TEMP:
		break;
	}
	return EX_TEMPFAIL;
}

/* The recipient's Unix account (users = pam): uid and gid, set by
 * deliver_find_system_user. */
struct deliver_account {
	bool system;
	uid_t uid;
	gid_t gid;
};

/* The mail location of entry as a path: 0, or an exit code. */
static int
deliver_location(const struct config *config, const struct passwd_entry *e, char **user_r,
    char **path_r, bool *mbox_r)
{
	char *error = NULL;
	const char *path;
	int rc = 0;
	char *location = mail_location_expand(config->mail, e, &error);
	if (location == NULL) {
		fprintf(stderr, DELIVER_PROG ": %s\n", error);
		free(error);
		rc = EX_CONFIG;
	} else if (store_backend_for(location, &path) == NULL) {
		fprintf(stderr, DELIVER_PROG ": %s: mail location is not a Maildir or mbox\n", e->user);
		rc = EX_CONFIG;
	} else {
		*mbox_r = store_backend_for(location, &path) == &store_mbox;
		*user_r = xstrdup(e->user);
		*path_r = xstrdup(path);
	}
	free(location);
	return rc;
}

/* users = pam: the system account the address names, as popboxd's login
 * and LMTP's RCPT find it (recipient_candidates, getpwnam); an account
 * below first_valid_uid or in deny_users is no mail user. */
static int
deliver_find_system_user(const struct config *config, const char *address, char **user_r,
    char **path_r, bool *mbox_r, struct deliver_account *acct)
{
	char *names[RECIPIENT_CANDIDATES];
	size_t n = recipient_candidates(address, config->recipient_delimiter, names);
	struct passwd *pw = NULL;
	int rc = EX_NOUSER;

	for (size_t i = 0; i < n; i++) {
		if (pw == NULL) {
			errno = 0;
			struct passwd *p = getpwnam(names[i]);
			if (p == NULL && errno != 0 && errno != ENOENT && errno != ESRCH) {
				fprintf(stderr, DELIVER_PROG ": looking up %s: %s\n", names[i], strerror(errno));
				rc = EX_TEMPFAIL;
				break;
			}
			if (p != NULL && strcmp(p->pw_name, names[i]) == 0 &&
			    recipient_system_account_ok(names[i], p->pw_uid, config->first_valid_uid,
			    config->deny_users))
				pw = p;
		}
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	if (pw == NULL) {
		if (rc == EX_NOUSER) {
			char a[128];
			str_sanitize(a, sizeof(a), address, strlen(address));
			fprintf(stderr, DELIVER_PROG ": %s: no such user\n", a);
		}
		return rc;
	}
	char uid[32], gid[32];
	snprintf(uid, sizeof(uid), "%u", (unsigned)pw->pw_uid);
	snprintf(gid, sizeof(gid), "%u", (unsigned)pw->pw_gid);
	struct passwd_entry e = { .user = pw->pw_name, .password = (char *)"", .uid = uid,
	    .gid = gid, .home = pw->pw_dir, .uidl_format = UIDL_FORMAT_UNSET };
	acct->system = true;
	acct->uid = pw->pw_uid;
	acct->gid = pw->pw_gid;
	return deliver_location(config, &e, user_r, path_r, mbox_r);
}

/* users = pam: deliver as the recipient. Started as root: become the
 * user (its gid, plus mail_privileged_group for an mbox: the dot-lock is
 * made in /var/mail, root:mail 2775 on Debian). Started as someone else
 * (Postfix's mailbox_command runs as the recipient): that must be the
 * recipient. */
static int
deliver_become_recipient(const struct config *config, const char *user,
    const struct deliver_account *acct, bool mbox)
{
	if (geteuid() != 0 && getuid() != 0) {
		if (geteuid() != acct->uid) {
			fprintf(stderr, DELIVER_PROG ": %s: runs as uid %lu, not as the recipient "
			    "(start it as root or as %s)\n", user, (unsigned long)geteuid(), user);
			return -1;
		}
		return 0;
	}
	return mail_owner_become_account(config, user, acct->uid, acct->gid, mbox, DELIVER_PROG);
}

/* The maildrop path of USER (address), or an exit code. */
static int
deliver_find_user(const struct config *config, const char *address, char **user_r,
    char **path_r, bool *mbox_r)
{
	struct passwd_db *db = NULL;
	char *error = NULL;
	int rc = 0;

	if (passwd_db_load(config->users, &db, &error) < 0) {
		fprintf(stderr, DELIVER_PROG ": %s\n", error);
		free(error);
		return EX_CONFIG;
	}
	const struct passwd_entry *e = recipient_lookup(db, address, config->recipient_delimiter);
	if (e == NULL) {
		char a[128];
		str_sanitize(a, sizeof(a), address, strlen(address));
		fprintf(stderr, DELIVER_PROG ": %s: no such user\n", a);
		rc = EX_NOUSER;
	} else {
		rc = deliver_location(config, e, user_r, path_r, mbox_r);
	}
	passwd_db_free(db);
	return rc;
}

int
deliver_cmd_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *conf = DELIVER_DEFAULT_CONFIG, *sender = NULL, *address = NULL;
	const char *problem = NULL, *queue_id = getenv(DELIVER_QUEUE_ID_ENV);
	char *header = NULL, *user = NULL, *path = NULL, *error = NULL;
	struct config *config = NULL;
	struct delivery_result result = { NULL, 0 };
	int ch, rc;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "c:f:a:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': conf = optarg; break;
		case 'f': sender = optarg; break;
		case 'a': address = optarg; break;
		case 'h': deliver_usage(stdout); return 0;
		default: deliver_usage(stderr); return EX_USAGE;
		}
	}
	if (argc - optind != 1) {
		deliver_usage(stderr);
		return EX_USAGE;
	}
	if (sender != NULL && (header = deliver_return_path(sender, &problem)) == NULL) {
		fprintf(stderr, DELIVER_PROG ": %s\n", problem);
		return EX_USAGE;
	}
	/* the delivery line goes to syslog (mail), errors to the MTA too */
	log_init("popbox-deliver", false, false);
	if (config_load(conf, &config, &error) < 0) {
		fprintf(stderr, DELIVER_PROG ": %s\n", error);
		free(error);
		free(header);
		return EX_CONFIG;
	}
	bool mbox = false;
	struct deliver_account acct = { false, 0, 0 };
	if (config->passdb_pam) {
		rc = deliver_find_system_user(config, argv[optind], &user, &path, &mbox, &acct);
		if (rc == 0 && deliver_become_recipient(config, user, &acct, mbox) < 0)
			rc = EX_CONFIG;
	} else {
		rc = deliver_find_user(config, argv[optind], &user, &path, &mbox);
		if (rc == 0 && mail_owner_become(config, DELIVER_PROG) < 0)
			rc = EX_CONFIG;
	}
	if (rc == 0) {
		struct delivery_target t = {
			.path = path,
			.max_maildrop_size = config->max_maildrop_size,
		};
		/* mbox: the From_ line names the envelope sender when it is one
		 * word (as Postfix writes it), else MAILER-DAEMON */
		struct mbox_delivery_options mo = {
			.quoting = config->mbox_format,
			.lock_wait_ms = config->lock_wait * 1000u,
			.sender = sender != NULL && sender[0] != '\0' &&
			    strcspn(sender, " \t\r\n") == strlen(sender) ? sender : NULL,
		};
		enum delivery_status st = mbox ?
		    store_mbox_deliver_stream(&t, &mo, header, STDIN_FILENO, config->max_message_size,
			&result, &error) :
		    store_maildir_deliver_stream(&t, header, STDIN_FILENO,
			config->max_message_size, &result, &error);
		rc = deliver_exit_code(st, config);
		if (st != DELIVERY_OK)
			fprintf(stderr, DELIVER_PROG ": %s: %s\n", user,
			    error != NULL ? error : delivery_status_name(st));
		char a[128];
		str_sanitize(a, sizeof(a), address != NULL ? address : argv[optind],
		    strlen(address != NULL ? address : argv[optind]));
		log_info("delivery queue_id=%.32s to=%s user=%s size=%llu result=%s%s%s exit=%d",
		    queue_id != NULL ? queue_id : "-", a, user, (unsigned long long)result.size,
		    delivery_status_name(st), error != NULL ? ": " : "", error != NULL ? error : "", rc);
		free(error);
	}
	free(result.file);
	free(user);
	free(path);
	free(header);
	config_free(config);
	return rc;
}

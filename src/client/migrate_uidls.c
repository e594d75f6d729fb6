/* popbox migrate-uidls (migrate_uidls.h). The store does the work: a
 * maildrop (Maildir or mbox) is opened with the user's UIDL options and a
 * report callback, with its index left alone unless --freeze. With users =
 * pam each account's maildrop is opened by a child process that became
 * the account (as popboxd's session process does). */
#include "client/migrate_uidls.h"
#include "client/mail_owner.h"
#include "common/log.h"
#include "common/util.h"
#include "server/config.h"
#include "server/passwd.h"
#include "server/store.h"

#include <errno.h>
#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <unistd.h>

#define MIGRATE_DEFAULT_CONFIG "/etc/popbox/popboxd.conf"

/* What one maildrop's messages do (the report callback's sums). */
struct migrate_counts {
	bool verbose;
	unsigned total, kept, remembered, own, replaced;
	unsigned not_listed, invalid, no_list;
};

/* One user's maildrop to look at, resolved while the users file is read. */
struct migrate_user {
	char *user;
	char *path;               /* the Maildir or mbox, scheme removed */
	const struct store_backend *backend;
	enum uidl_format format;
	bool system;              /* users = pam: the Unix account uid, gid */
	uid_t uid;
	gid_t gid;
};

static const char *
migrate_miss_text(enum uidl_old_miss miss)
{
	switch (miss) {
	case UIDL_OLD_NOT_LISTED:
		return "not in the old server's list (delivered since?)";
	case UIDL_OLD_INVALID:
		return "the old server's UIDL is not a valid UIDL";
	case UIDL_OLD_NO_LIST:
		return "no usable old list";
	default:
		return "";
	}
}

static void
migrate_report(void *arg, const char *name, const char *uidl, enum store_uidl_source source,
    enum uidl_old_miss miss)
{
	struct migrate_counts *c = arg;
	char n[96];

	c->total++;
	str_sanitize(n, sizeof(n), name, strlen(name));
	switch (source) {
	case STORE_UIDL_REMEMBERED:
		c->remembered++;
		return;
	case STORE_UIDL_OLD:
		c->kept++;
		return;
	case STORE_UIDL_REPLACED:
		c->replaced++;
		if (c->verbose)
			printf("  %s: new UIDL %s (its old UIDL is another message's)\n", n, uidl);
		return;
	case STORE_UIDL_OWN:
		c->own++;
		c->not_listed += miss == UIDL_OLD_NOT_LISTED;
		c->invalid += miss == UIDL_OLD_INVALID;
		c->no_list += miss == UIDL_OLD_NO_LIST;
		if (c->verbose)
			printf("  %s: new UIDL %s (%s)\n", n, uidl, migrate_miss_text(miss));
		return;
	}
}

static void
migrate_print(const struct migrate_user *u, const struct migrate_counts *c, bool freeze)
{
	printf("%s: %u messages (uidl_format %s): %u keep the old server's UIDL, %u already "
	    "served by popboxd, %u get a new UIDL", u->user, c->total, uidl_format_name(u->format),
	    c->kept, c->remembered, c->own + c->replaced);
	if (c->own + c->replaced > 0)
		printf(" (%u not in the old list, %u invalid, %u colliding, %u without a list)",
		    c->not_listed, c->invalid, c->replaced, c->no_list);
	printf("%s\n", !freeze ? "" : u->backend == &store_mbox ? "; recorded in the mbox's index" :
	    "; recorded in popbox.index");
}

/* Open one maildrop as a login does, report, close. Returns a sysexits code. */
static int
migrate_one(const struct config *config, const struct migrate_user *u, bool freeze, bool verbose)
{
	struct migrate_counts c = { .verbose = verbose };
	struct store_open_options o = {
		.uidl_format = u->format,
		.dovecot_uidl_format = config->dovecot_uidl_format,
		.keep_index = !freeze,
		.report = migrate_report,
		.report_arg = &c,
		.mbox_quoting = config->mbox_format,
		.mbox_lock_wait_ms = config->lock_wait * 1000u,
	};
	struct store *store = NULL;
	char *error = NULL;
	struct stat sb;

	/* A login would create it; a report must not. */
	if (lstat(u->path, &sb) < 0 && errno == ENOENT) {
		printf("%s: no maildrop yet, nothing to keep\n", u->user);
		return 0;
	}
	enum store_status st = u->backend->open_with(u->path, &o, &store, &error);
	if (st != STORE_OK) {
		fprintf(stderr, "popbox migrate-uidls: %s: %s%s\n", u->user,
		    st != STORE_IN_USE ? "" : u->backend == &store_mbox ?
		    "in a POP3 session now or locked by another program, skipped: " :
		    "in a POP3 session now, skipped: ",
		    error != NULL ? error : "cannot open the maildrop");
		free(error);
		return st == STORE_PERM ? EX_NOPERM : EX_TEMPFAIL;
	}
	migrate_print(u, &c, freeze);
	store->backend->close(store);
	return 0;
}

/* The maildrop of users file entry e (with pw: of that Unix account), or
 * false (told why). */
static bool
migrate_resolve(const struct config *config, const struct passwd_entry *e,
    const struct passwd *pw, struct migrate_user *u)
{
	char *error = NULL, *location = mail_location_expand(config->mail, e, &error);
	const char *path;
	const struct store_backend *b;

	if (location == NULL) {
		fprintf(stderr, "popbox migrate-uidls: %s: %s\n", e->user, error);
		free(error);
		return false;
	}
	b = store_backend_for(location, &path);
	if (b != &store_maildir && b != &store_mbox) {
		fprintf(stderr, "popbox migrate-uidls: %s: not a Maildir or mbox, skipped\n", e->user);
		free(location);
		return false;
	}
	u->user = xstrdup(e->user);
	u->path = xstrdup(path);
	u->backend = b;
	u->format = e->uidl_format != UIDL_FORMAT_UNSET ? e->uidl_format : config->uidl_format;
	if (pw != NULL) {
		u->system = true;
		u->uid = pw->pw_uid;
		u->gid = pw->pw_gid;
	}
	free(location);
	return true;
}

/* users = pam: the user's Unix account as popboxd's login finds it. */
static bool
migrate_resolve_account(const struct config *config, const struct passwd *pw,
    struct migrate_user *u)
{
	char uid[32], gid[32];
	snprintf(uid, sizeof(uid), "%u", (unsigned)pw->pw_uid);
	snprintf(gid, sizeof(gid), "%u", (unsigned)pw->pw_gid);
	struct passwd_entry e = { .user = pw->pw_name, .password = (char *)"", .uid = uid,
	    .gid = gid, .home = pw->pw_dir, .uidl_format = UIDL_FORMAT_UNSET };
	return migrate_resolve(config, &e, pw, u);
}

/* users = pam: the named accounts, or every account that gets mail. */
static int
migrate_accounts(const struct config *config, int argc, char **argv,
    struct migrate_user **users_r, size_t *n_r)
{
	size_t n = 0, cap = argc > 0 ? (size_t)argc : 64;
	struct migrate_user *users = xcalloc(cap, sizeof(*users));
	int rc = 0;

	if (argc > 0) {
		for (int i = 0; i < argc; i++) {
			struct passwd *pw = getpwnam(argv[i]);
			if (pw == NULL || strcmp(pw->pw_name, argv[i]) != 0 ||
			    !mail_owner_is_mail_user(config, pw)) {
				fprintf(stderr, "popbox migrate-uidls: %s: no such user\n", argv[i]);
				rc = EX_NOUSER;
			} else if (migrate_resolve_account(config, pw, &users[n])) {
				n++;
			} else if (rc == 0) {
				rc = EX_CONFIG;
			}
		}
	} else {
		struct passwd *pw;
		setpwent();
		while ((pw = getpwent()) != NULL) {
			if (!mail_owner_is_mail_user(config, pw))
				continue;
			if (n == cap) {
				cap *= 2;
				users = xrealloc(users, cap * sizeof(*users));
			}
			memset(&users[n], 0, sizeof(users[n]));
			if (migrate_resolve_account(config, pw, &users[n]))
				n++;
			else if (rc == 0)
				rc = EX_CONFIG;
		}
		endpwent();
	}
	*users_r = users;
	*n_r = n;
	return rc;
}

/* users = pam, started as root: the account's maildrop is opened by a
 * child that became the account. Returns a sysexits code. */
static int
migrate_one_as_account(const struct config *config, const struct migrate_user *u, bool freeze,
    bool verbose)
{
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "popbox migrate-uidls: %s: fork: %s\n", u->user, strerror(errno));
		return EX_OSERR;
	}
	if (pid == 0) {
		int r = EX_NOPERM;
		if (mail_owner_become_account(config, u->user, u->uid, u->gid,
		    u->backend == &store_mbox, "popbox migrate-uidls") == 0)
			r = migrate_one(config, u, freeze, verbose);
		fflush(stdout);
		fflush(stderr);
		_exit(r);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			fprintf(stderr, "popbox migrate-uidls: %s: waitpid: %s\n", u->user,
			    strerror(errno));
			return EX_OSERR;
		}
	}
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	fprintf(stderr, "popbox migrate-uidls: %s: the process ended by signal %d\n", u->user,
	    WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	return EX_SOFTWARE;
}

static void
migrate_usage(FILE *f)
{
	fprintf(f, "usage: popbox migrate-uidls [-c CONF] [--freeze] [--verbose] [USER...]\n"
	    "  report which messages keep the UIDL of the server popboxd replaces;\n"
	    "  --freeze records the UIDLs in each maildrop's popbox.index\n");
}

/* The users to look at: the named ones, or all. Returns a sysexits code. */
static int
migrate_users(const struct config *config, int argc, char **argv,
    struct migrate_user **users_r, size_t *n_r)
{
	struct passwd_db *db = NULL;
	char *error = NULL;
	int rc = 0;

	if (config->passdb_pam)
		return migrate_accounts(config, argc, argv, users_r, n_r);
	if (passwd_db_load(config->users, &db, &error) < 0) {
		fprintf(stderr, "popbox migrate-uidls: %s\n", error);
		free(error);
		return EX_NOINPUT;
	}
	size_t n = argc > 0 ? (size_t)argc : passwd_db_count(db);
	struct migrate_user *users = xcalloc(n > 0 ? n : 1, sizeof(*users));
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		const struct passwd_entry *e = argc > 0 ? passwd_db_lookup(db, argv[i]) :
		    passwd_db_entry(db, i);
		if (e == NULL) {
			fprintf(stderr, "popbox migrate-uidls: %s: no such user\n", argv[i]);
			rc = EX_NOUSER;
		} else if (migrate_resolve(config, e, NULL, &users[k])) {
			k++;
		} else if (rc == 0) {
			rc = EX_CONFIG;
		}
	}
	passwd_db_free(db);
	*users_r = users;
	*n_r = k;
	return rc;
}

int
migrate_uidls_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "freeze", no_argument, NULL, 'f' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *conf = MIGRATE_DEFAULT_CONFIG;
	bool freeze = false, verbose = false;
	struct config *config = NULL;
	struct migrate_user *users = NULL;
	size_t n = 0;
	char *error = NULL;
	int ch, rc;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "c:fvh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': conf = optarg; break;
		case 'f': freeze = true; break;
		case 'v': verbose = true; break;
		case 'h': migrate_usage(stdout); return 0;
		default: migrate_usage(stderr); return EX_USAGE;
		}
	}
	if (config_load(conf, &config, &error) < 0) {
		fprintf(stderr, "popbox migrate-uidls: %s\n", error);
		free(error);
		return EX_CONFIG;
	}
	rc = migrate_users(config, argc - optind, argv + optind, &users, &n);
	size_t todo = n;
	bool as_accounts = config->passdb_pam && (geteuid() == 0 || getuid() == 0);
	if (!as_accounts && mail_owner_become(config, "popbox migrate-uidls") < 0) {
		rc = EX_NOPERM;
		todo = 0;       /* nothing is opened as root */
	}
	for (size_t i = 0; i < todo; i++) {
		int r = as_accounts ? migrate_one_as_account(config, &users[i], freeze, verbose) :
		    migrate_one(config, &users[i], freeze, verbose);
		if (r != 0 && rc == 0)
			rc = r;
	}
	for (size_t i = 0; i < n; i++) {
		free(users[i].user);
		free(users[i].path);
	}
	free(users);
	config_free(config);
	return rc;
}

/* popbox migrate-uidls (migrate_uidls.h). The store does the work: a
 * maildrop is opened with the user's UIDL options and a report callback,
 * with popbox.index left alone unless --freeze. */
#include "client/migrate_uidls.h"
#include "client/mail_owner.h"
#include "common/log.h"
#include "common/util.h"
#include "server/config.h"
#include "server/passwd.h"
#include "server/store.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
	char *path;               /* the Maildir, scheme removed */
	enum uidl_format format;
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
	printf("%s\n", freeze ? "; recorded in popbox.index" : "");
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
	};
	struct store *store = NULL;
	char *error = NULL;
	struct stat sb;

	/* A login would create it; a report must not. */
	if (lstat(u->path, &sb) < 0 && errno == ENOENT) {
		printf("%s: no maildrop yet, nothing to keep\n", u->user);
		return 0;
	}
	enum store_status st = store_maildir.open_with(u->path, &o, &store, &error);
	if (st != STORE_OK) {
		fprintf(stderr, "popbox migrate-uidls: %s: %s%s\n", u->user,
		    st == STORE_IN_USE ? "in a POP3 session now, skipped: " : "",
		    error != NULL ? error : "cannot open the maildrop");
		free(error);
		return st == STORE_PERM ? EX_NOPERM : EX_TEMPFAIL;
	}
	migrate_print(u, &c, freeze);
	store->backend->close(store);
	return 0;
}

/* The maildrop of users file entry e, or false (told why). */
static bool
migrate_resolve(const struct config *config, const struct passwd_entry *e,
    struct migrate_user *u)
{
	char *error = NULL, *location = mail_location_expand(config->mail, e, &error);
	const char *path;

	if (location == NULL) {
		fprintf(stderr, "popbox migrate-uidls: %s: %s\n", e->user, error);
		free(error);
		return false;
	}
	if (store_backend_for(location, &path) != &store_maildir) {
		fprintf(stderr, "popbox migrate-uidls: %s: not a Maildir, skipped\n", e->user);
		free(location);
		return false;
	}
	u->user = xstrdup(e->user);
	u->path = xstrdup(path);
	u->format = e->uidl_format != UIDL_FORMAT_UNSET ? e->uidl_format : config->uidl_format;
	free(location);
	return true;
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
		} else if (migrate_resolve(config, e, &users[k])) {
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
	if (mail_owner_become(config, "popbox migrate-uidls") < 0) {
		rc = EX_NOPERM;
		todo = 0;       /* nothing is opened as root */
	}
	for (size_t i = 0; i < todo; i++) {
		int r = migrate_one(config, &users[i], freeze, verbose);
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

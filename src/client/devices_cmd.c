/* popbox devices, popbox expire (devices_cmd.h). */
#include "client/devices_cmd.h"
#include "client/mail_owner.h"
#include "common/util.h"
#include "server/config.h"
#include "server/devices.h"
#include "server/devices_session.h"
#include "server/passwd.h"
#include "server/store.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <time.h>

#define DEVICES_CMD_DEFAULT_CONFIG "/etc/popbox/popboxd.conf"
#define DAY_SECONDS ((int64_t)86400)

struct cmd_user {
	char *user;
	char *path;          /* the Maildir */
	int expire_days;     /* the user's EXPIRE */
};

static const char *cmd_name = "popbox";

/* The users to work on: the named ones, or all. Returns a sysexits code. */
static int
cmd_users(const struct config *config, int argc, char **argv, struct cmd_user **users_r,
    size_t *n_r)
{
	struct passwd_db *db = NULL;
	char *error = NULL;
	int rc = 0;
	if (passwd_db_load(config->users, &db, &error) < 0) {
		fprintf(stderr, "%s: %s\n", cmd_name, error);
		free(error);
		return EX_NOINPUT;
	}
	size_t n = argc > 0 ? (size_t)argc : passwd_db_count(db);
	struct cmd_user *users = xcalloc(n > 0 ? n : 1, sizeof(*users));
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		const struct passwd_entry *e = argc > 0 ? passwd_db_lookup(db, argv[i]) :
		    passwd_db_entry(db, i);
		if (e == NULL) {
			fprintf(stderr, "%s: %s: no such user\n", cmd_name, argv[i]);
			rc = EX_NOUSER;
			continue;
		}
		char *location = mail_location_expand(config->mail, e, &error);
		const char *path;
		if (location == NULL || store_backend_for(location, &path) != &store_maildir) {
			fprintf(stderr, "%s: %s: %s\n", cmd_name, e->user,
			    location == NULL ? error : "not a Maildir, skipped");
			free(error);
			error = NULL;
			free(location);
			if (rc == 0)
				rc = EX_CONFIG;
			continue;
		}
		users[k].user = xstrdup(e->user);
		users[k].path = xstrdup(path);
		users[k].expire_days = e->expire == 0 ? config->expire_days :
		    e->expire == 1 ? DEVICES_EXPIRE_NEVER : (int)e->expire - 2;
		k++;
		free(location);
	}
	passwd_db_free(db);
	*users_r = users;
	*n_r = k;
	return rc;
}

static void
cmd_users_free(struct cmd_user *users, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(users[i].user);
		free(users[i].path);
	}
	free(users);
}

/* Open u's maildrop (locked) and its device state. Returns 0, or a
 * sysexits code (told why); *state_r NULL: the maildrop has no state. */
static int
cmd_open(const struct cmd_user *u, struct store **store_r, struct devices **state_r)
{
	struct store_open_options o = { .keep_state_dir = true };
	char *error = NULL;
	struct stat sb;
	*store_r = NULL;
	*state_r = NULL;
	if (lstat(u->path, &sb) < 0 && errno == ENOENT)
		return 0;    /* no maildrop yet: a login would make it, we do not */
	enum store_status st = store_maildir.open_with(u->path, &o, store_r, &error);
	if (st != STORE_OK) {
		fprintf(stderr, "%s: %s: %s%s\n", cmd_name, u->user,
		    st == STORE_IN_USE ? "in a POP3 session now, skipped: " : "",
		    error != NULL ? error : "cannot open the maildrop");
		free(error);
		return st == STORE_PERM ? EX_NOPERM : EX_TEMPFAIL;
	}
	if (devices_open((*store_r)->state_dir_fd, u->path, false, devices_now(), state_r,
	    &error) < 0) {
		fprintf(stderr, "%s: %s: %s\n", cmd_name, u->user, error);
		free(error);
		(*store_r)->backend->close(*store_r);
		*store_r = NULL;
		return EX_TEMPFAIL;
	}
	return 0;
}

static void
cmd_time(char *buf, size_t size, int64_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	if (t == 0 || gmtime_r(&tt, &tm) == NULL)
		snprintf(buf, size, "-");
	else
		strftime(buf, size, "%Y-%m-%d %H:%M UTC", &tm);
}

static int
cmd_config(const char *conf, struct config **config_r)
{
	char *error = NULL;
	if (config_load(conf, config_r, &error) < 0) {
		fprintf(stderr, "%s: %s\n", cmd_name, error);
		free(error);
		return EX_CONFIG;
	}
	return 0;
}

/* --- popbox devices ------------------------------------------------------ */

static void
devices_usage(FILE *f)
{
	fprintf(f, "usage: popbox devices [-c CONF] USER [--forget DEVICE]\n"
	    "  list USER's devices (logins USER#DEVICE): first and last login, active or\n"
	    "  idle, messages each still holds back; --forget DEVICE frees its place\n");
}

static void
devices_list(const struct config *config, const struct cmd_user *u, struct store *store,
    const struct devices *d)
{
	int64_t now = devices_now(), idle = (int64_t)config->device_idle_days * DAY_SECONDS;
	unsigned shown = 0;
	printf("%s: %u messages; devices (max_devices %u, idle after %u days):\n", u->user,
	    store->count, config->max_devices, config->device_idle_days);
	for (int slot = 1; d != NULL && slot < DEVICES_SLOTS; slot++) {
		if (!d->dev[slot].used)
			continue;
		char first[32], last[32];
		cmd_time(first, sizeof(first), d->dev[slot].first_login);
		cmd_time(last, sizeof(last), d->dev[slot].last_login);
		bool active = devices_active(d, slot, now, idle);
		uint32_t held = 0;
		for (uint32_t i = 0; active && i < store->count; i++)
			held += !devices_deleted(d, slot, store->messages[i].uidl);
		printf("  %-32s %-7s first %s  last %s  holds back %u\n", d->dev[slot].name,
		    active ? "active" : "idle", first, last, held);
		shown++;
	}
	if (shown == 0)
		printf("  (none)\n");
}

int
devices_cmd_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "forget", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *conf = DEVICES_CMD_DEFAULT_CONFIG, *forget = NULL;
	struct config *config = NULL;
	struct cmd_user *users = NULL;
	size_t n = 0;
	int ch, rc;
	cmd_name = "popbox devices";
	optind = 1;
	while ((ch = getopt_long(argc, argv, "c:f:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': conf = optarg; break;
		case 'f': forget = optarg; break;
		case 'h': devices_usage(stdout); return 0;
		default: devices_usage(stderr); return EX_USAGE;
		}
	}
	if (argc - optind != 1) {
		devices_usage(stderr);
		return EX_USAGE;
	}
	if ((rc = cmd_config(conf, &config)) != 0)
		return rc;
	rc = cmd_users(config, 1, argv + optind, &users, &n);
	if (n == 1 && mail_owner_become(config, cmd_name) < 0)
		rc = EX_NOPERM, n = 0;
	if (n == 1) {
		struct store *store;
		struct devices *d;
		int r = cmd_open(&users[0], &store, &d);
		if (r != 0) {
			rc = r;
		} else if (forget == NULL) {
			if (store != NULL)
				devices_list(config, &users[0], store, d);
			else
				printf("%s: no maildrop yet\n", users[0].user);
		} else {
			int slot = d != NULL ? devices_find(d, forget) : -1;
			char *error = NULL;
			uint32_t held, expired;
			if (slot < 0) {
				fprintf(stderr, "%s: %s has no device %s\n", cmd_name, users[0].user, forget);
				rc = EX_NOUSER;
			} else {
				devices_note_forget(d, slot);
				if (devices_commit(d, true, &error) < 0 ||
				    devices_sweep(d, store, config->device_idle_days,
				    DEVICES_EXPIRE_NEVER, &held, &expired, &error) != STORE_OK) {
					fprintf(stderr, "%s: %s: %s\n", cmd_name, users[0].user, error);
					free(error);
					rc = EX_TEMPFAIL;
				} else {
					printf("%s: device %s forgotten; %u messages no active device "
					    "holds any more were removed\n", users[0].user, forget, held);
				}
			}
		}
		devices_free(d);
		if (store != NULL)
			store->backend->close(store);
	}
	cmd_users_free(users, n);
	config_free(config);
	return rc;
}

/* --- popbox expire -------------------------------------------------------- */

static void
expire_usage(FILE *f)
{
	fprintf(f, "usage: popbox expire [-c CONF] [USER...]\n"
	    "  remove, for every user (or those named), the messages every active device\n"
	    "  deleted and those EXPIRE (expire_days) says have expired; for cron or a\n"
	    "  systemd timer\n");
}

int
expire_cmd_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *conf = DEVICES_CMD_DEFAULT_CONFIG;
	struct config *config = NULL;
	struct cmd_user *users = NULL;
	size_t n = 0;
	int ch, rc;
	unsigned long long total_held = 0, total_expired = 0, done = 0;
	cmd_name = "popbox expire";
	optind = 1;
	while ((ch = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': conf = optarg; break;
		case 'h': expire_usage(stdout); return 0;
		default: expire_usage(stderr); return EX_USAGE;
		}
	}
	if ((rc = cmd_config(conf, &config)) != 0)
		return rc;
	rc = cmd_users(config, argc - optind, argv + optind, &users, &n);
	size_t todo = n;
	if (mail_owner_become(config, cmd_name) < 0) {
		rc = EX_NOPERM;
		todo = 0;       /* nothing is opened as root */
	}
	for (size_t i = 0; i < todo; i++) {
		struct store *store;
		struct devices *d;
		int r = cmd_open(&users[i], &store, &d);
		if (r != 0) {
			if (rc == 0 || rc == EX_TEMPFAIL)
				rc = r;
			continue;
		}
		if (d != NULL) {
			uint32_t held, expired;
			char *error = NULL;
			if (devices_sweep(d, store, config->device_idle_days, users[i].expire_days,
			    &held, &expired, &error) != STORE_OK) {
				fprintf(stderr, "%s: %s: %s\n", cmd_name, users[i].user, error);
				free(error);
				if (rc == 0)
					rc = EX_TEMPFAIL;
			} else {
				if (held + expired > 0)
					printf("%s: %u removed (deleted by every active device), %u expired\n",
					    users[i].user, held, expired);
				total_held += held;
				total_expired += expired;
			}
			devices_free(d);
		}
		if (store != NULL)
			store->backend->close(store);
		done++;
	}
	printf("popbox expire: %llu of %zu users done, %llu messages removed (deleted by every "
	    "active device), %llu expired\n", done, n, total_held, total_expired);
	cmd_users_free(users, n);
	config_free(config);
	return rc;
}

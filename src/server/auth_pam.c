/* Unix accounts as a password database (auth_passdb.h): users = pam
 * (docs/DESIGN.md, "Unix users: PAM"). The password and the account
 * checks (expired, locked) go through libpam with service pam_service;
 * who the user is (uid, home) comes from the system (getpwnam_r).
 *
 * Refused accounts (uid below first_valid_uid, named in deny_users) run
 * the same PAM conversation as everyone and are refused afterwards, so
 * their answer and its timing are those of a wrong password. An unknown
 * user runs it too, under a name no account has.
 *
 * PAM modules are not promised to be thread-safe (Dovecot runs each
 * conversation in a process of its own for that reason): conversations
 * run on the auth process's pool threads (never on its event loop) one
 * at a time, under pam_lock. pam_unix verifies in a few milliseconds.
 * libpam's failure delay (pam_unix asks for 2 s) is replaced by a no-op:
 * the auth process's own penalty holds failed answers without blocking
 * a thread.
 *
 * The database is a cache of the users looked up since it was loaded,
 * guarded by a mutex (lookups come from the event loop and pool threads);
 * entries live as long as the database, which is replaced (and the old
 * one freed when the last request lets go) when /etc/passwd changes or
 * the cache is full. */
#include "server/auth_passdb.h"

#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <security/pam_appl.h>

#include "common/log.h"
#include "common/util.h"
#include "server/limits_popboxd.h"

/* Where the system's accounts live: a change reloads the cache. */
#define PAM_PASSWD_FILE "/etc/passwd"
/* Users cached per database; one more makes the next check reload. The
 * accounts of one host are far fewer. */
#define PAM_CACHE_MAX 65536
/* getpwnam_r's buffer (sysconf gives a hint only; 16 KiB holds any sane
 * passwd line). */
#define PAM_PWBUF_SIZE 16384
/* The name PAM is asked about for an unknown user: no account can have
 * it (':' is the passwd field separator). */
#define PAM_NO_USER "popbox:no-such-user"

struct pam_user {
	struct passwd_entry entry;   /* first: the passdb hands out &entry */
	uid_t uid;
	bool refused;                /* uid below first_valid_uid or denied */
	struct pam_user *next;
};

struct passdb {
	char *service;
	unsigned first_valid_uid;
	char *deny_users;            /* " a b " */
	struct stat passwd_st;       /* of /etc/passwd when loaded */
	pthread_mutex_t lock;        /* users, n_users */
	struct pam_user *users;
	size_t n_users;
};

/* One conversation at a time (see the top of the file). */
static pthread_mutex_t pam_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *
pam_source(const struct config *config)
{
	return NULL;   /* nothing for the master to open */
}

static bool
pam_changed(const struct passdb *db, const char *source)
{
	struct stat st;
	pthread_mutex_t *lock = (pthread_mutex_t *)&db->lock;
	pthread_mutex_lock(lock);
	bool full = db->n_users >= PAM_CACHE_MAX;
	pthread_mutex_unlock(lock);
	if (full)
		return true;
	if (stat(PAM_PASSWD_FILE, &st) < 0)
		return false;
	return st.st_ino != db->passwd_st.st_ino || st.st_mtim.tv_sec != db->passwd_st.st_mtim.tv_sec ||
	    st.st_mtim.tv_nsec != db->passwd_st.st_mtim.tv_nsec || st.st_size != db->passwd_st.st_size;
}

/* The settings of the next load: copied from the config on the event
 * loop (auth_pam_configure), read by the load on a pool thread. */
static struct {
	pthread_mutex_t lock;
	char *service;
	unsigned first_valid_uid;
	char *deny_users;
} pam_settings = { .lock = PTHREAD_MUTEX_INITIALIZER };

void
auth_pam_configure(const struct config *config)
{
	pthread_mutex_lock(&pam_settings.lock);
	free(pam_settings.service);
	free(pam_settings.deny_users);
	pam_settings.service = xstrdup(config->pam_service);
	pam_settings.first_valid_uid = config->first_valid_uid;
	pam_settings.deny_users = xstrdup(config->deny_users);
	pthread_mutex_unlock(&pam_settings.lock);
}

static struct passdb *
pam_load(const char *source, int fd, char **error_r)
{
	pthread_mutex_lock(&pam_settings.lock);
	if (pam_settings.service == NULL) {
		pthread_mutex_unlock(&pam_settings.lock);
		*error_r = xstrdup("PAM passdb used without its settings");
		return NULL;
	}
	struct passdb *db = xcalloc(1, sizeof(*db));
	db->service = xstrdup(pam_settings.service);
	db->first_valid_uid = pam_settings.first_valid_uid;
	db->deny_users = xstrdup(pam_settings.deny_users);
	pthread_mutex_unlock(&pam_settings.lock);
	(void)stat(PAM_PASSWD_FILE, &db->passwd_st);
	pthread_mutex_init(&db->lock, NULL);
	return db;
}

static size_t
pam_count(const struct passdb *db)
{
	return 0;   /* the system's accounts are not counted */
}

static void
pam_user_free(struct pam_user *u)
{
	free(u->entry.user);
	free(u->entry.password);
	free(u->entry.uid);
	free(u->entry.gid);
	free(u->entry.home);
	free(u);
}

static void
pam_free(struct passdb *db)
{
	if (db == NULL)
		return;
	for (struct pam_user *u = db->users, *next; u != NULL; u = next) {
		next = u->next;
		pam_user_free(u);
	}
	pthread_mutex_destroy(&db->lock);
	free(db->service);
	free(db->deny_users);
	free(db);
}

static bool
pam_user_denied(const struct passdb *db, const char *user)
{
	char *needle = xasprintf(" %s ", user);
	bool denied = strstr(db->deny_users, needle) != NULL;
	free(needle);
	return denied;
}

/* The system's account, or NULL. Names the passwd-file parser would
 * refuse (whitespace, control characters, too long) are unknown. */
static struct pam_user *
pam_user_new(const struct passdb *db, const char *user)
{
	if (user[0] == '\0' || strlen(user) > POPBOXD_USER_MAX || strpbrk(user, ":/") != NULL)
		return NULL;
	for (const char *c = user; *c != '\0'; c++)
		if ((unsigned char)*c <= 0x20 || *c == 0x7f)
			return NULL;
	struct passwd pw, *found = NULL;
	char *buf = xmalloc(PAM_PWBUF_SIZE);
	int r = getpwnam_r(user, &pw, buf, PAM_PWBUF_SIZE, &found);
	if (r != 0 || found == NULL || strcmp(pw.pw_name, user) != 0) {
		free(buf);
		return NULL;
	}
	struct pam_user *u = xcalloc(1, sizeof(*u));
	u->entry.user = xstrdup(pw.pw_name);
	u->entry.password = xstrdup("");
	u->entry.uid = xasprintf("%u", (unsigned)pw.pw_uid);
	u->entry.gid = xasprintf("%u", (unsigned)pw.pw_gid);
	u->entry.home = xstrdup(pw.pw_dir);
	u->entry.uidl_format = UIDL_FORMAT_UNSET;
	u->uid = pw.pw_uid;
	u->refused = pw.pw_uid < db->first_valid_uid || pam_user_denied(db, user);
	free(buf);
	return u;
}

static const struct passwd_entry *
pam_lookup(const struct passdb *cdb, const char *user)
{
	struct passdb *db = (struct passdb *)cdb;   /* only the cache changes */
	pthread_mutex_lock(&db->lock);
	for (struct pam_user *u = db->users; u != NULL; u = u->next) {
		if (strcmp(u->entry.user, user) == 0) {
			pthread_mutex_unlock(&db->lock);
			return &u->entry;
		}
	}
	pthread_mutex_unlock(&db->lock);
	/* Not under the lock: getpwnam_r may ask a network service. Two
	 * threads looking up one user at once both add it; the first copy
	 * found wins and both live until the database goes. */
	struct pam_user *u = pam_user_new(db, user);
	if (u == NULL)
		return NULL;
	pthread_mutex_lock(&db->lock);
	u->next = db->users;
	db->users = u;
	db->n_users++;
	pthread_mutex_unlock(&db->lock);
	return &u->entry;
}

struct pam_conv_data {
	const char *user;
	const char *password;
};

/* PAM asks for the password (echo off) and perhaps the name (echo on);
 * informational messages are dropped. Answers are malloc'd: PAM frees
 * them. */
static int
pam_conversation(int n, const struct pam_message **msg, struct pam_response **resp_r, void *arg)
{
	const struct pam_conv_data *d = arg;
	if (n <= 0 || n > PAM_MAX_NUM_MSG)
		return PAM_CONV_ERR;
	struct pam_response *resp = calloc((size_t)n, sizeof(*resp));
	if (resp == NULL)
		return PAM_BUF_ERR;
	for (int i = 0; i < n; i++) {
		const char *answer = NULL;
		switch (msg[i]->msg_style) {
		case PAM_PROMPT_ECHO_OFF:
			answer = d->password;
			break;
		case PAM_PROMPT_ECHO_ON:
			answer = d->user;
			break;
		case PAM_ERROR_MSG:
		case PAM_TEXT_INFO:
			continue;
		default:
			for (int k = 0; k < i; k++)
				free_secret(resp[k].resp);
			free(resp);
			return PAM_CONV_ERR;
		}
		resp[i].resp = strdup(answer);
		if (resp[i].resp == NULL) {
			for (int k = 0; k < i; k++)
				free_secret(resp[k].resp);
			free(resp);
			return PAM_BUF_ERR;
		}
	}
	*resp_r = resp;
	return PAM_SUCCESS;
}

/* libpam calls this instead of sleeping after a failure. */
static void
pam_no_delay(int retval, unsigned usec_delay, void *arg)
{
}

/* Authenticate and check the account (expired, locked) of user. */
static int
pam_check(const char *service, const char *user, const char *password)
{
	struct pam_conv_data d = { .user = user, .password = password };
	const struct pam_conv conv = { .conv = pam_conversation, .appdata_ptr = &d };
	pam_handle_t *pamh = NULL;
	pthread_mutex_lock(&pam_lock);
	int r = pam_start(service, user, &conv, &pamh);
	if (r == PAM_SUCCESS)
		r = pam_set_item(pamh, PAM_FAIL_DELAY, (const void *)pam_no_delay);
	if (r == PAM_SUCCESS)
		r = pam_authenticate(pamh, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
	if (r == PAM_SUCCESS)
		r = pam_acct_mgmt(pamh, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
	if (pamh != NULL)
		pam_end(pamh, r);
	pthread_mutex_unlock(&pam_lock);
	return r;
}

static enum password_result
pam_verify(const struct passdb *db, const struct passwd_entry *e, const char *password)
{
	const struct pam_user *u = (const struct pam_user *)e;
	int r = pam_check(db->service, u != NULL ? u->entry.user : PAM_NO_USER, password);
	if (u != NULL && u->refused)
		log_info("user %s refused: uid %u below first_valid_uid %u or in deny_users",
		    u->entry.user, (unsigned)u->uid, db->first_valid_uid);
	else if (r != PAM_SUCCESS && r != PAM_AUTH_ERR && r != PAM_USER_UNKNOWN && u != NULL)
		log_info("PAM service %s, user %s: %s", db->service, u->entry.user,
		    pam_strerror(NULL, r));
	return r == PAM_SUCCESS && u != NULL && !u->refused ? PASSWORD_OK : PASSWORD_MISMATCH;
}

static bool
pam_verify_is_cheap(const struct passdb *db, const struct passwd_entry *e)
{
	return false;   /* a hash, a module that may ask a network service */
}

static const char *
pam_plaintext(const struct passwd_entry *e)
{
	return NULL;
}

static int
pam_scram_secret(const struct passwd_entry *e, struct scram_secret *secret)
{
	return -1;
}

static void
pam_scram_defaults(const struct passdb *db, unsigned *iterations_r, size_t *salt_len_r)
{
	/* Never used: config.c offers no SCRAM with users = pam. */
	*iterations_r = 4096;
	*salt_len_r = 16;
}

const struct passdb_ops passdb_pam = {
	.name = "PAM",
	.source = pam_source,
	.changed = pam_changed,
	.load = pam_load,
	.count = pam_count,
	.free = pam_free,
	.lookup = pam_lookup,
	.verify = pam_verify,
	.verify_is_cheap = pam_verify_is_cheap,
	.plaintext = pam_plaintext,
	.scram_secret = pam_scram_secret,
	.scram_defaults = pam_scram_defaults,
};

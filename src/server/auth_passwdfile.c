/* The users file as a password database (auth_passdb.h): Dovecot's
 * passwd-file format, parsed by passwd.c. The master opens the file (it may
 * be readable by root alone) and the auth process reads the descriptor on
 * a pool thread; a change is noticed by stat (inode, size, modification
 * time: stat needs no read permission). */
#include "server/auth_passdb.h"
#include "server/ipc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"

struct passdb {
	struct passwd_db *users;
	struct stat st;         /* of the file when loaded */
};

static unsigned
passwdfile_policy_flags(const struct passdb *db)
{
	unsigned flags = 0;
	for (size_t i = 0; i < passwd_db_count(db->users); i++) {
		const struct passwd_entry *e = passwd_db_entry(db->users, i);
		if (e->expire != 0)
			flags |= IPC_POLICY_EXPIRE_DIFFERS;
		if (e->login_delay != 0)
			flags |= IPC_POLICY_DELAY_DIFFERS;
	}
	return flags;
}

static const char *
passwdfile_source(const struct config *config)
{
	return config->users;
}

static bool
passwdfile_changed(const struct passdb *db, const char *source)
{
	struct stat st;
	/* A file that is gone or unreadable keeps the loaded users (a reload
	 * would fail anyway); the error shows at the next SIGHUP. */
	if (stat(source, &st) < 0)
		return false;
	return st.st_ino != db->st.st_ino || st.st_size != db->st.st_size ||
	    st.st_mtim.tv_sec != db->st.st_mtim.tv_sec || st.st_mtim.tv_nsec != db->st.st_mtim.tv_nsec;
}

static struct passdb *
passwdfile_load(const char *source, int fd, char **error_r)
{
	struct stat st;
	struct passwd_db *users;
	if (fd < 0 || fstat(fd, &st) < 0) {
		*error_r = xasprintf("%s: %s", source, strerror(fd < 0 ? EBADF : errno));
		return NULL;
	}
	if (passwd_db_load_fd(source, fd, &users, error_r) < 0)
		return NULL;
	struct passdb *db = xcalloc(1, sizeof(*db));
	db->users = users;
	db->st = st;
	return db;
}

static size_t
passwdfile_count(const struct passdb *db)
{
	return passwd_db_count(db->users);
}

static void
passwdfile_free(struct passdb *db)
{
	if (db == NULL)
		return;
	passwd_db_free(db->users);
	free(db);
}

static const struct passwd_entry *
passwdfile_lookup(const struct passdb *db, const char *user)
{
	return passwd_db_lookup(db->users, user);
}

/* Unknown and disabled users cost the dummy's work (passwd.h). */
static enum password_result
passwdfile_verify(const struct passdb *db, const struct passwd_entry *e, const char *password)
{
	return passwd_db_verify(db->users, e, password);
}

/* In a file of {PLAIN} secrets, checked on the event loop. */
static bool
passwdfile_verify_is_cheap(const struct passdb *db, const struct passwd_entry *e)
{
	return passwd_db_verify_is_cheap(db->users, e);
}

static const char *
passwdfile_plaintext(const struct passwd_entry *e)
{
	return password_plaintext(e->password);
}

static int
passwdfile_scram_secret(const struct passwd_entry *e, struct scram_secret *secret)
{
	char *error = NULL;
	if (scram_secret_parse(e->password, secret, &error) < 0) {
		free(error);   /* not a SCRAM secret: most users have none */
		return -1;
	}
	return 0;
}

static void
passwdfile_scram_defaults(const struct passdb *db, unsigned *iterations_r, size_t *salt_len_r)
{
	passwd_db_scram_defaults(db->users, iterations_r, salt_len_r);
}

const struct passdb_ops passdb_passwdfile = {
	.name = "users file",
	.source = passwdfile_source,
	.changed = passwdfile_changed,
	.load = passwdfile_load,
	.count = passwdfile_count,
	.free = passwdfile_free,
	.lookup = passwdfile_lookup,
	.verify = passwdfile_verify,
	.verify_is_cheap = passwdfile_verify_is_cheap,
	.plaintext = passwdfile_plaintext,
	.scram_secret = passwdfile_scram_secret,
	.scram_defaults = passwdfile_scram_defaults,
	.policy_flags = passwdfile_policy_flags,
};

/* The auth process: the only process that reads the users file and the
 * password hashes (design §3). Workers send it credentials over their
 * socketpairs; it answers "ok + mail location" or "fail". Hash verification
 * (tens of ms for SHA512-CRYPT or bcrypt) runs on a small thread pool so one
 * slow hash never delays the other logins; {PLAIN} secrets are checked inline. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>

#include "common/log.h"
#include "server/ipc.h"
#include "server/passwd.h"
#include "server/popboxd.h"

/* Hashing threads: one per core keeps both cores busy under a login storm;
 * more would only queue inside the kernel. */
#define AUTH_MAX_THREADS 16
/* Pending hash jobs beyond this are answered "temp" at once: a flood of
 * logins must not grow memory without bound. */
#define AUTH_MAX_PENDING 4096

struct db_ref {
	struct passwd_db *db;
	unsigned refs;          /* touched by the main thread only */
	struct stat st;         /* of the users file when loaded */
};

struct job {
	struct job *next;
	int fd;                 /* worker channel to answer on */
	uint64_t id;
	struct db_ref *ref;
	char *user;
	char *password;         /* wiped and freed after use */
	char *stored;           /* NULL = unknown user: dummy verify */
	char *location;
	char peer[64];
	enum password_result result;
};

static struct {
	struct event_base *base;
	struct config *config;
	struct db_ref *db;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *queue_head, *queue_tail;
	struct job *done;
	unsigned pending;
	int done_fd;            /* eventfd: threads -> loop */
	bool stopping;
} auth;

static void
db_ref_release(struct db_ref *ref)
{
	if (ref != NULL && --ref->refs == 0) {
		passwd_db_free(ref->db);
		free(ref);
	}
}

/* Reload the users file when it changed (mtime, size or inode), so an
 * administrator's edit takes effect at the next login even without SIGHUP. */
static struct db_ref *
auth_db_current(void)
{
	struct stat st;
	char *error = NULL;

	if (stat(auth.config->users, &st) < 0) {
		if (auth.db == NULL)
			log_warn("users file %s", auth.config->users);
		return auth.db;
	}
	if (auth.db != NULL && st.st_ino == auth.db->st.st_ino && st.st_size == auth.db->st.st_size &&
	    st.st_mtim.tv_sec == auth.db->st.st_mtim.tv_sec &&
	    st.st_mtim.tv_nsec == auth.db->st.st_mtim.tv_nsec)
		return auth.db;
	struct passwd_db *db;
	if (passwd_db_load(auth.config->users, &db, &error) < 0) {
		log_warnx("cannot load users file: %s", error);
		free(error);
		return auth.db;
	}
	struct db_ref *ref = xcalloc(1, sizeof(*ref));
	ref->db = db;
	ref->refs = 1;
	ref->st = st;
	if (auth.db != NULL)
		log_info("users file %s reloaded: %zu users", auth.config->users, passwd_db_count(db));
	db_ref_release(auth.db);
	auth.db = ref;
	return ref;
}

static void
auth_reply(int fd, uint64_t id, const char *status, const char *user, const char *location)
{
	const char *fields[] = { status, user ? user : "", location ? location : "" };
	if (ipc_send(fd, IPC_AUTH_RESULT, id, fields, 3) < 0)
		log_warn("auth: cannot answer worker");
}

static void
job_free(struct job *j)
{
	free_secret(j->password);
	free(j->user);
	free(j->stored);
	free(j->location);
	free(j);
}

static void
job_finish(struct job *j)
{
	if (j->stored != NULL && j->result == PASSWORD_OK) {
		auth_reply(j->fd, j->id, "ok", j->user, j->location);
	} else {
		char user[64];
		str_sanitize(user, sizeof(user), j->user, strlen(j->user));
		if (j->stored == NULL)
			log_info("login failed: user=%s peer=%s: unknown user", user, j->peer);
		else if (j->result == PASSWORD_BAD_SCHEME)
			log_warnx("login failed: user=%s peer=%s: unusable password scheme in %s",
			    user, j->peer, auth.config->users);
		else
			log_info("login failed: user=%s peer=%s: wrong password", user, j->peer);
		auth_reply(j->fd, j->id, "fail", j->user, NULL);
	}
	db_ref_release(j->ref);
	job_free(j);
}

static void
job_verify(struct job *j)
{
	if (j->stored == NULL) {
		password_verify_dummy(j->ref->db, j->password);
		j->result = PASSWORD_MISMATCH;
	} else {
		j->result = password_verify(j->stored, j->password);
	}
	secure_wipe(j->password, strlen(j->password));
}

static void *
auth_thread(void *arg)
{
	for (;;) {
		pthread_mutex_lock(&auth.lock);
		while (auth.queue_head == NULL)
			pthread_cond_wait(&auth.cond, &auth.lock);
		struct job *j = auth.queue_head;
		auth.queue_head = j->next;
		if (auth.queue_head == NULL)
			auth.queue_tail = NULL;
		pthread_mutex_unlock(&auth.lock);

		job_verify(j);

		pthread_mutex_lock(&auth.lock);
		j->next = auth.done;
		auth.done = j;
		pthread_mutex_unlock(&auth.lock);
		uint64_t one = 1;
		if (write(auth.done_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			log_warn("auth: eventfd write");
	}
	return NULL;
}

static void
done_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t n;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		log_warn("auth: eventfd read");
	pthread_mutex_lock(&auth.lock);
	struct job *list = auth.done;
	auth.done = NULL;
	pthread_mutex_unlock(&auth.lock);
	while (list != NULL) {
		struct job *next = list->next;
		auth.pending--;
		job_finish(list);
		list = next;
	}
}

static bool
secret_is_cheap(const char *stored)
{
	return password_plaintext(stored) != NULL || stored[0] == '\0';
}

static void
auth_handle_pass(int fd, const struct ipc_msg *msg)
{
	struct db_ref *ref = auth_db_current();
	if (ref == NULL) {
		auth_reply(fd, msg->id, "temp", msg->fields[0], NULL);
		return;
	}
	if (auth.pending >= AUTH_MAX_PENDING) {
		log_warnx("auth: %u logins pending, refusing more for now", auth.pending);
		auth_reply(fd, msg->id, "temp", msg->fields[0], NULL);
		return;
	}
	struct job *j = xcalloc(1, sizeof(*j));
	j->fd = fd;
	j->id = msg->id;
	j->user = xstrdup(msg->fields[0]);
	j->password = xstrdup(msg->fields[1]);
	str_sanitize(j->peer, sizeof(j->peer), msg->fields[2], msg->lens[2]);
	j->ref = ref;
	ref->refs++;
	const struct passwd_entry *e = passwd_db_lookup(ref->db, j->user);
	if (e != NULL) {
		char *error = NULL;
		j->location = mail_location_expand(auth.config->mail, e, &error);
		if (j->location == NULL) {
			log_warnx("user %s: mail location: %s", j->user, error);
			free(error);
			auth_reply(fd, j->id, "temp", j->user, NULL);
			db_ref_release(ref);
			job_free(j);
			return;
		}
		j->stored = xstrdup(e->password);
	}
	/* Plain secrets and unknown users of a plain-secret file are cheap: answer
	 * now. Anything else goes to the pool. */
	if (j->stored != NULL ? secret_is_cheap(j->stored) : false) {
		job_verify(j);
		job_finish(j);
		return;
	}
	auth.pending++;
	pthread_mutex_lock(&auth.lock);
	if (auth.queue_tail != NULL)
		auth.queue_tail->next = j;
	else
		auth.queue_head = j;
	auth.queue_tail = j;
	pthread_cond_signal(&auth.cond);
	pthread_mutex_unlock(&auth.lock);
}

/* APOP (RFC 1939 §7): digest = MD5(timestamp + shared secret), so it needs the
 * plaintext secret; users whose secret is a hash cannot use APOP. */
static void
auth_handle_apop(int fd, const struct ipc_msg *msg)
{
	const char *user = msg->fields[0], *stamp = msg->fields[1], *digest = msg->fields[2];
	struct db_ref *ref = auth_db_current();
	const struct passwd_entry *e = ref ? passwd_db_lookup(ref->db, user) : NULL;
	const char *plain = e ? password_plaintext(e->password) : NULL;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char hex[2 * EVP_MAX_MD_SIZE + 1];
	bool ok = false;

	if (!auth.config->apop || ref == NULL) {
		auth_reply(fd, msg->id, "fail", user, NULL);
		return;
	}
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (ctx != NULL && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) &&
	    EVP_DigestUpdate(ctx, stamp, strlen(stamp)) &&
	    EVP_DigestUpdate(ctx, plain ? plain : "", plain ? strlen(plain) : 0) &&
	    EVP_DigestFinal_ex(ctx, md, &mdlen)) {
		for (unsigned i = 0; i < mdlen; i++)
			snprintf(hex + 2 * i, 3, "%02x", md[i]);
		size_t dlen = strlen(digest);
		if (plain != NULL && dlen == 2 * mdlen) {
			char lower[2 * EVP_MAX_MD_SIZE + 1];
			for (size_t i = 0; i < dlen; i++)
				lower[i] = (digest[i] >= 'A' && digest[i] <= 'F') ? (char)(digest[i] + 32) : digest[i];
			ok = const_time_eq(lower, hex, dlen);
		}
	}
	EVP_MD_CTX_free(ctx);
	if (!ok) {
		auth_reply(fd, msg->id, "fail", user, NULL);
		return;
	}
	char *error = NULL;
	char *location = mail_location_expand(auth.config->mail, e, &error);
	if (location == NULL) {
		log_warnx("user %s: mail location: %s", user, error);
		free(error);
		auth_reply(fd, msg->id, "temp", user, NULL);
		return;
	}
	auth_reply(fd, msg->id, "ok", user, location);
	free(location);
}

static void
worker_channel_cb(evutil_socket_t fd, short what, void *arg)
{
	static char buf[IPC_MAX_MSG];
	struct ipc_msg msg;
	/* Drain a bounded batch per wake-up so one busy worker cannot starve the others. */
	for (int i = 0; i < 64; i++) {
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				log_warn("auth: recv from worker");
			return;
		}
		if (n == 0)
			return;
		if (ipc_parse(buf, (size_t)n, &msg) < 0) {
			log_warnx("auth: malformed message from worker, ignored");
			continue;
		}
		if (msg.type == IPC_AUTH_PASS && msg.nfields == 3)
			auth_handle_pass(fd, &msg);
		else if (msg.type == IPC_AUTH_APOP && msg.nfields == 4)
			auth_handle_apop(fd, &msg);
		else
			log_warnx("auth: unexpected message type %u from worker", msg.type);
		secure_wipe(buf, (size_t)n);
	}
}

static void
control_cb(evutil_socket_t fd, short what, void *arg)
{
	static char buf[IPC_MAX_MSG];
	struct ipc_msg msg;
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n == 0) {
		/* The master is gone: nothing supervises us any more. */
		log_warnx("auth: master went away, exiting");
		exit(0);
	}
	if (n < 0 || ipc_parse(buf, (size_t)n, &msg) < 0 || msg.type != IPC_RELOAD || msg.nfields != 2)
		return;
	struct config *next;
	char *error = NULL;
	if (config_parse(msg.fields[0], msg.fields[1], &next, &error) < 0) {
		log_warnx("auth: reload: %s", error);
		free(error);
		return;
	}
	auth.config = next; /* the old one is leaked on purpose: jobs may point into it */
	/* Force a users file reload even if its mtime did not change. */
	if (auth.db != NULL)
		auth.db->st.st_ino = 0;
	auth_db_current();
}

static void
sigterm_cb(evutil_socket_t sig, short what, void *arg)
{
	exit(0);
}

void
auth_main(struct child_env *env)
{
	prctl(PR_SET_NAME, "popboxd-auth");
	log_set_procname("popboxd-auth");
	for (size_t i = 0; i < env->n_listeners; i++)
		close(env->listeners[i].fd);
	for (unsigned i = 0; i < env->n_workers; i++)
		close(env->worker_fds[i]);
	privileges_drop(env);

	auth.config = env->config;
	auth.base = event_base_new();
	if (auth.base == NULL)
		fatalx("auth: event_base_new failed");
	pthread_mutex_init(&auth.lock, NULL);
	pthread_cond_init(&auth.cond, NULL);
	auth.done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (auth.done_fd < 0)
		fatal("auth: eventfd");
	auth_db_current();

	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int nthreads = ncpu < 1 ? 1 : ncpu > AUTH_MAX_THREADS ? AUTH_MAX_THREADS : (int)ncpu;
	for (int i = 0; i < nthreads; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, auth_thread, NULL) != 0)
			fatalx("auth: cannot start hashing thread");
		pthread_detach(t);
	}

	struct event *ev = event_new(auth.base, auth.done_fd, EV_READ | EV_PERSIST, done_cb, NULL);
	event_add(ev, NULL);
	for (unsigned i = 0; i < env->n_workers; i++) {
		struct event *wev = event_new(auth.base, env->auth_fds[i], EV_READ | EV_PERSIST,
		    worker_channel_cb, NULL);
		event_add(wev, NULL);
	}
	struct event *cev = event_new(auth.base, env->control_fd, EV_READ | EV_PERSIST, control_cb, NULL);
	event_add(cev, NULL);
	struct event *tev = evsignal_new(auth.base, SIGTERM, sigterm_cb, NULL);
	evsignal_add(tev, NULL);

	event_base_dispatch(auth.base);
	exit(0);
}

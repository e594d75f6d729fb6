/* The auth process: the only process that reads the users file and the
 * password hashes (design §3). Workers send it credentials (USER/PASS, APOP)
 * or relay SASL lines (RFC 5034, run here with GNU SASL); it answers
 * OK + mail location, CONTINUE + challenge, FAIL or TEMP (ipc.h).
 *
 * Anything that may be slow (crypt hashes take tens of ms, SCRAM's PBKDF2 a
 * few) runs on a small thread pool, so one slow hash never delays the other
 * logins; {PLAIN} secrets are checked inline. Failed logins make later answers
 * to the same source address wait (the penalty), on a timer: nothing blocks. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <gsasl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "common/log.h"
#include "common/base64.h"
#include "common/scram.h"
#include "server/auth_penalty.h"
#include "server/ipc.h"
#include "server/passwd.h"
#include "server/popboxd.h"

/* Hashing threads: one per core keeps both cores busy under a login storm;
 * more would only queue inside the kernel. */
#define AUTH_MAX_THREADS 16
/* Niceness of the hashing threads (see auth_thread). */
#define AUTH_THREAD_NICE 10
/* Pending jobs beyond this are answered "temp" at once: a flood of logins
 * must not grow memory without bound. */
#define AUTH_MAX_PENDING 4096
/* SASL exchanges open at once, and how long one may sit between steps before
 * it is dropped (the worker's own timeout is shorter). */
#define AUTH_MAX_SASL 4096
#define AUTH_SASL_IDLE_SECONDS 300

struct db_ref {
	struct passwd_db *db;
	unsigned refs;          /* touched by the main thread only */
	struct stat st;         /* of the users file when loaded */
};

/* One SASL exchange of one worker session. */
struct sasl_conv {
	struct sasl_conv *next;
	int fd;
	uint64_t id;
	uint64_t session_id;    /* the worker's session, for log lines */
	Gsasl_session *sctx;
	struct db_ref *ref;
	char mech[32];
	char peer[64];
	bool busy;              /* a step is on the thread pool */
	bool validated;         /* PLAIN/LOGIN: password checked by our callback */
	bool unknown_user;
	time_t last;
};

enum job_kind { JOB_PASS, JOB_SASL };

struct job {
	struct job *next;
	enum job_kind kind;
	int fd;                 /* worker channel to answer on */
	uint64_t id;
	uint64_t session_id;    /* the worker's session, for log lines */
	struct db_ref *ref;
	char peer[64];
	/* JOB_PASS */
	char *user;
	char *password;         /* wiped and freed after use */
	char *stored;           /* NULL = unknown user: dummy verify */
	char *location;
	enum password_result result;
	/* JOB_SASL */
	struct sasl_conv *conv;
	char *input;            /* base64 from the client; NULL = no input yet */
	char *output;           /* base64 from gsasl */
	bool login_initial;     /* LOGIN with an initial response (the user name) */
	int rc;
};

static struct {
	struct event_base *base;
	struct config *config;
	struct db_ref *db;
	Gsasl *gsasl;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *queue_head, *queue_tail;
	struct job *done;
	unsigned pending;
	int done_fd;            /* eventfd: threads -> loop */
	struct sasl_conv *convs;
	unsigned n_convs;
	unsigned char fake_salt_key[32];  /* SCRAM salts for unknown users */
	struct auth_penalty *penalty;
	int control_fd;         /* to the master */
	bool force_reload;      /* re-read the users file at the next lookup */
} auth;

static void
db_ref_release(struct db_ref *ref)
{
	if (ref != NULL && --ref->refs == 0) {
		passwd_db_free(ref->db);
		free(ref);
	}
}

/* How long to wait for the master to hand over the users file. */
#define AUTH_USERS_FD_TIMEOUT_MS 5000

static void auth_apply_reload(const struct ipc_reload *msg);

/* Ask the master for an open descriptor of the users file: the file may be
 * readable by root only, so that no process running as run_as (a worker)
 * can open it. Control messages that arrive meanwhile (a reload) are applied
 * in order. Returns the descriptor or -1 with *error_r. */
static int
users_fd_fetch(char **error_r)
{
	static char buf[IPC_MAX_MSG];
	const struct ipc_users_open req = { .request_id = (uint64_t)time(NULL) };
	size_t len = ipc_users_open_encode(buf, sizeof(buf), &req);
	if (ipc_send(auth.control_fd, buf, len) < 0) {
		*error_r = xasprintf("cannot ask the master for the users file: %s", strerror(errno));
		return -1;
	}
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		long waited = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
		if (waited >= AUTH_USERS_FD_TIMEOUT_MS) {
			*error_r = xstrdup("the master did not hand over the users file");
			return -1;
		}
		struct pollfd pfd = { .fd = auth.control_fd, .events = POLLIN };
		if (poll(&pfd, 1, (int)(AUTH_USERS_FD_TIMEOUT_MS - waited)) <= 0)
			continue;
		int fd;
		ssize_t n = ipc_recv_fd(auth.control_fd, buf, sizeof(buf), &fd);
		if (n == 0)
			exit(0);   /* the master is gone */
		struct ipc_reload reload;
		struct ipc_users_fd answer;
		if (n > 0 && ipc_reload_decode(buf, (size_t)n, &reload)) {
			auth_apply_reload(&reload);
			secure_wipe(buf, (size_t)n);
			if (fd >= 0)
				close(fd);
			continue;
		}
		if (n < 0 || !ipc_users_fd_decode(buf, (size_t)n, &answer) ||
		    answer.request_id != req.request_id) {
			if (fd >= 0)
				close(fd);
			continue;
		}
		if (answer.error[0] != '\0' || fd < 0) {
			if (fd >= 0)
				close(fd);
			*error_r = xstrdup(answer.error[0] != '\0' ? answer.error : "no descriptor from the master");
			return -1;
		}
		return fd;
	}
}

/* The users database, reloaded when the file changed (inode, size or mtime:
 * stat needs no read permission), so an administrator's edit takes effect at
 * the next login even without SIGHUP. */
static struct db_ref *
auth_db_current(void)
{
	struct stat st;
	char *error = NULL;

	bool have_st = stat(auth.config->users, &st) == 0;
	if (auth.db != NULL && !auth.force_reload &&
	    (!have_st || (st.st_ino == auth.db->st.st_ino && st.st_size == auth.db->st.st_size &&
	    st.st_mtim.tv_sec == auth.db->st.st_mtim.tv_sec &&
	    st.st_mtim.tv_nsec == auth.db->st.st_mtim.tv_nsec)))
		return auth.db;
	auth.force_reload = false;
	int fd = users_fd_fetch(&error);
	struct passwd_db *db = NULL;
	if (fd >= 0) {
		if (fstat(fd, &st) == 0)
			(void)passwd_db_load_fd(auth.config->users, fd, &db, &error);
		else
			error = xasprintf("%s: %s", auth.config->users, strerror(errno));
		close(fd);
	}
	if (db == NULL) {
		log_warnx("cannot load users file: %s", error ? error : "unknown error");
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

/* --- answers, with the failed-login penalty ------------------------------ */

/* An answer held back by the penalty: the encoded message. */
struct delayed_reply {
	int fd;
	size_t len;
	unsigned char msg[];
};

/* The answer, encoded in a static buffer; one that breaks the message
 * limits becomes a plain "temp". Returns its length. */
static size_t
result_encode(const unsigned char **msg_r, uint64_t id, enum auth_result result, const char *user,
    const char *location, const char *data)
{
	static unsigned char buf[IPC_MAX_MSG];
	const struct ipc_auth_result m = { .request_id = id, .result = result, .user = user,
	    .location = location, .data = data };
	size_t len = ipc_auth_result_encode(buf, sizeof(buf), &m);
	if (len == 0) {
		log_warnx("answer to a worker over the message limits, sending temp");
		const struct ipc_auth_result temp = { .request_id = id, .result = AUTH_RESULT_TEMP };
		len = ipc_auth_result_encode(buf, sizeof(buf), &temp);
	}
	*msg_r = buf;
	return len;
}

static void
reply_send(int fd, uint64_t id, enum auth_result result, const char *user, const char *location,
    const char *data)
{
	const unsigned char *msg;
	size_t len = result_encode(&msg, id, result, user, location, data);
	if (ipc_send(fd, msg, len) < 0)
		log_warn("cannot answer worker");
}

static void
delayed_reply_cb(evutil_socket_t fd, short what, void *arg)
{
	struct delayed_reply *d = arg;
	if (ipc_send(d->fd, d->msg, d->len) < 0)
		log_warn("cannot answer worker");
	free(d);
}

/* Send a final or intermediate answer. Final answers to an address with
 * recent failures wait; a failure adds to the address's count, a success
 * clears it (issue: brute-force throttling without blocking anything). The
 * user and location go only with AUTH_RESULT_OK. */
static void
auth_answer(int fd, uint64_t id, const char *peer, enum auth_result result, const char *user,
    const char *location, const char *data)
{
	bool final = result != AUTH_RESULT_CONTINUE;
	unsigned delay_ms = final ? auth_penalty_delay_ms(auth.penalty, peer, time(NULL)) : 0;
	if (result == AUTH_RESULT_FAIL)
		auth_penalty_failed(auth.penalty, peer, time(NULL));
	else if (result == AUTH_RESULT_OK)
		auth_penalty_succeeded(auth.penalty, peer);
	if (result != AUTH_RESULT_OK)
		user = location = NULL;
	if (delay_ms == 0) {
		reply_send(fd, id, result, user, location, data);
		return;
	}
	const unsigned char *msg;
	size_t len = result_encode(&msg, id, result, user, location, data);
	struct delayed_reply *d = xmalloc(sizeof(*d) + len);
	d->fd = fd;
	d->len = len;
	memcpy(d->msg, msg, len);
	struct timeval tv = { .tv_sec = delay_ms / 1000, .tv_usec = (delay_ms % 1000) * 1000 };
	if (event_base_once(auth.base, -1, EV_TIMEOUT, delayed_reply_cb, d, &tv) < 0)
		delayed_reply_cb(-1, 0, d);
}

static void
log_failure(uint64_t session_id, const char *user, const char *peer, const char *why)
{
	char u[64];
	str_sanitize(u, sizeof(u), user ? user : "", user ? strlen(user) : 0);
	log_info("session %016llx: login failed: user=%s peer=%s: %s", (unsigned long long)session_id,
	    u, peer, why);
}

/* --- the thread pool ----------------------------------------------------- */

static void
job_free(struct job *j)
{
	free_secret(j->password);
	free(j->user);
	free(j->stored);
	free(j->location);
	free(j->input);
	free(j->output);
	free(j);
}

static void
job_run(struct job *j)
{
	if (j->kind == JOB_SASL) {
		j->output = NULL;
		if (j->login_initial) {
			/* GNU SASL's LOGIN ignores input at its first step; an
			 * initial response is the user name (as Dovecot takes it),
			 * so feed it to the second step. */
			char *skip = NULL;
			j->rc = gsasl_step64(j->conv->sctx, "", &skip);
			free(skip);
			if (j->rc != GSASL_NEEDS_MORE)
				return;
		}
		j->rc = gsasl_step64(j->conv->sctx, j->input ? j->input : "", &j->output);
		return;
	}
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
	/* Hashing yields to serving: when the CPUs are full, the workers'
	 * event loops (sessions already logged in) and this process's own
	 * loop run before the next login's hash. On Linux the priority of a
	 * thread is its own (PRIO_PROCESS with its thread id). */
	(void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), AUTH_THREAD_NICE);
	for (;;) {
		pthread_mutex_lock(&auth.lock);
		while (auth.queue_head == NULL)
			pthread_cond_wait(&auth.cond, &auth.lock);
		struct job *j = auth.queue_head;
		auth.queue_head = j->next;
		if (auth.queue_head == NULL)
			auth.queue_tail = NULL;
		pthread_mutex_unlock(&auth.lock);

		job_run(j);

		pthread_mutex_lock(&auth.lock);
		j->next = auth.done;
		auth.done = j;
		pthread_mutex_unlock(&auth.lock);
		uint64_t one = 1;
		if (write(auth.done_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			log_warn("eventfd write");
	}
	return NULL;
}

static void
job_queue(struct job *j)
{
	auth.pending++;
	pthread_mutex_lock(&auth.lock);
	j->next = NULL;
	if (auth.queue_tail != NULL)
		auth.queue_tail->next = j;
	else
		auth.queue_head = j;
	auth.queue_tail = j;
	pthread_cond_signal(&auth.cond);
	pthread_mutex_unlock(&auth.lock);
}

/* --- USER/PASS ------------------------------------------------------------ */

static void
pass_finish(struct job *j)
{
	if (j->stored != NULL && j->result == PASSWORD_OK) {
		auth_answer(j->fd, j->id, j->peer, AUTH_RESULT_OK, j->user, j->location, NULL);
	} else {
		log_failure(j->session_id, j->user, j->peer, j->stored == NULL ? "unknown user" :
		    j->result == PASSWORD_BAD_SCHEME ? "unusable password scheme in the users file" :
		    "wrong password");
		auth_answer(j->fd, j->id, j->peer, AUTH_RESULT_FAIL, NULL, NULL, NULL);
	}
	db_ref_release(j->ref);
	job_free(j);
}

static bool
secret_is_cheap(const char *stored)
{
	return password_plaintext(stored) != NULL || stored[0] == '\0';
}

static void
auth_handle_pass(int fd, const struct ipc_auth_pass *msg)
{
	char peer[64];
	str_sanitize(peer, sizeof(peer), msg->peer, strlen(msg->peer));
	struct db_ref *ref = auth_db_current();
	if (ref == NULL || auth.pending >= AUTH_MAX_PENDING) {
		if (ref != NULL)
			log_warnx("session %016llx: %u logins pending, refusing more for now",
			    (unsigned long long)msg->session_id, auth.pending);
		reply_send(fd, msg->request_id, AUTH_RESULT_TEMP, NULL, NULL, NULL);
		return;
	}
	struct job *j = xcalloc(1, sizeof(*j));
	j->kind = JOB_PASS;
	j->fd = fd;
	j->id = msg->request_id;
	j->session_id = msg->session_id;
	j->user = xstrdup(msg->user);
	j->password = xstrdup(msg->password);
	memcpy(j->peer, peer, sizeof(peer));
	j->ref = ref;
	ref->refs++;
	const struct passwd_entry *e = passwd_db_lookup(ref->db, j->user);
	if (e != NULL) {
		char *error = NULL;
		j->location = mail_location_expand(auth.config->mail, e, &error);
		if (j->location == NULL) {
			log_warnx("session %016llx: user %s: mail location: %s",
			    (unsigned long long)j->session_id, j->user, error);
			free(error);
			reply_send(fd, j->id, AUTH_RESULT_TEMP, NULL, NULL, NULL);
			db_ref_release(ref);
			job_free(j);
			return;
		}
		j->stored = xstrdup(e->password);
	}
	if (j->stored != NULL && secret_is_cheap(j->stored)) {
		job_run(j);
		pass_finish(j);
		return;
	}
	job_queue(j);
}

/* APOP (RFC 1939 §7): digest = MD5(timestamp + shared secret), so it needs the
 * plaintext secret; users whose secret is a hash cannot use APOP. */
static void
auth_handle_apop(int fd, const struct ipc_auth_apop *msg)
{
	const char *user = msg->user, *stamp = msg->stamp, *digest = msg->digest;
	char peer[64];
	str_sanitize(peer, sizeof(peer), msg->peer, strlen(msg->peer));
	struct db_ref *ref = auth_db_current();
	const struct passwd_entry *e = ref ? passwd_db_lookup(ref->db, user) : NULL;
	const char *plain = e ? password_plaintext(e->password) : NULL;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char hex[2 * EVP_MAX_MD_SIZE + 1];
	bool ok = false;

	if (!auth.config->apop || ref == NULL) {
		auth_answer(fd, msg->request_id, peer, AUTH_RESULT_FAIL, NULL, NULL, NULL);
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
		log_failure(msg->session_id, user, peer, e == NULL ? "unknown user (APOP)" :
		    plain == NULL ? "APOP needs a {PLAIN} secret" : "wrong APOP digest");
		auth_answer(fd, msg->request_id, peer, AUTH_RESULT_FAIL, NULL, NULL, NULL);
		return;
	}
	char *error = NULL;
	char *location = mail_location_expand(auth.config->mail, e, &error);
	if (location == NULL) {
		log_warnx("session %016llx: user %s: mail location: %s", (unsigned long long)msg->session_id,
		    user, error);
		free(error);
		reply_send(fd, msg->request_id, AUTH_RESULT_TEMP, NULL, NULL, NULL);
		return;
	}
	auth_answer(fd, msg->request_id, peer, AUTH_RESULT_OK, user, location, NULL);
	free(location);
}

/* --- SASL ------------------------------------------------------------------ */

static struct sasl_conv *
conv_find(int fd, uint64_t id)
{
	for (struct sasl_conv *c = auth.convs; c != NULL; c = c->next)
		if (c->fd == fd && c->id == id)
			return c;
	return NULL;
}

static void
conv_free(struct sasl_conv *c)
{
	struct sasl_conv **pp = &auth.convs;
	while (*pp != NULL && *pp != c)
		pp = &(*pp)->next;
	if (*pp == c)
		*pp = c->next;
	auth.n_convs--;
	gsasl_finish(c->sctx);
	db_ref_release(c->ref);
	free(c);
}

static char *
hex_to_base64(const char *hex)
{
	unsigned char bin[64];
	size_t n = strlen(hex) / 2;
	if (n > sizeof(bin))
		n = sizeof(bin);
	for (size_t i = 0; i < n; i++) {
		unsigned v = 0;
		sscanf(hex + 2 * i, "%2x", &v);
		bin[i] = (unsigned char)v;
	}
	return base64_encode(bin, n);
}

/* For a user who does not exist (or has no usable SCRAM secret), answer with
 * a salt that is stable per user name and keys nobody knows, so the exchange
 * looks the same as for a real user and fails only at the proof. */
static int
scram_fake(Gsasl_session *sctx, Gsasl_property prop, const char *authid, bool sha256)
{
	unsigned char mac[EVP_MAX_MD_SIZE], rnd[32];
	unsigned int maclen = 0;
	char *s;
	switch (prop) {
	case GSASL_SCRAM_ITER:
		gsasl_property_set(sctx, prop, "4096");
		return GSASL_OK;
	case GSASL_SCRAM_SALT:
		HMAC(EVP_sha256(), auth.fake_salt_key, sizeof(auth.fake_salt_key),
		    (const unsigned char *)authid, strlen(authid), mac, &maclen);
		s = base64_encode(mac, 16);
		gsasl_property_set(sctx, prop, s);
		free(s);
		return GSASL_OK;
	case GSASL_SCRAM_STOREDKEY:
	case GSASL_SCRAM_SERVERKEY:
		RAND_bytes(rnd, sizeof(rnd));
		s = base64_encode(rnd, sha256 ? 32 : 20);
		gsasl_property_set(sctx, prop, s);
		free(s);
		return GSASL_OK;
	default:
		return GSASL_NO_CALLBACK;
	}
}

/* Runs on a pool thread inside gsasl_step64(); reads only the conversation and
 * its (immutable, reference-held) users database. */
static int
sasl_callback(Gsasl *ctx, Gsasl_session *sctx, Gsasl_property prop)
{
	struct sasl_conv *c = gsasl_session_hook_get(sctx);
	const char *authid = gsasl_property_fast(sctx, GSASL_AUTHID);
	const struct passwd_entry *e = authid ? passwd_db_lookup(c->ref->db, authid) : NULL;
	bool sha256 = strncasecmp(c->mech, "SCRAM-SHA-256", 13) == 0;

	switch (prop) {
	case GSASL_VALIDATE_SIMPLE: {
		const char *pw = gsasl_property_fast(sctx, GSASL_PASSWORD);
		const char *authzid = gsasl_property_fast(sctx, GSASL_AUTHZID);
		if (authid == NULL || pw == NULL)
			return GSASL_AUTHENTICATION_ERROR;
		if (e == NULL) {
			password_verify_dummy(c->ref->db, pw);
			c->unknown_user = true;
			return GSASL_AUTHENTICATION_ERROR;
		}
		if (authzid != NULL && authzid[0] != '\0' && strcmp(authzid, authid) != 0)
			return GSASL_AUTHENTICATION_ERROR;
		if (password_verify(e->password, pw) != PASSWORD_OK)
			return GSASL_AUTHENTICATION_ERROR;
		c->validated = true;
		return GSASL_OK;
	}
	case GSASL_PASSWORD: {
		/* CRAM-MD5, and SCRAM for users with a {PLAIN} secret. */
		const char *plain = e ? password_plaintext(e->password) : NULL;
		if (plain == NULL) {
			c->unknown_user = e == NULL;
			return GSASL_NO_CALLBACK;
		}
		gsasl_property_set(sctx, prop, plain);
		return GSASL_OK;
	}
	case GSASL_SCRAM_ITER:
	case GSASL_SCRAM_SALT:
	case GSASL_SCRAM_STOREDKEY:
	case GSASL_SCRAM_SERVERKEY: {
		if (authid == NULL)
			return GSASL_NO_CALLBACK;
		if (e != NULL && password_plaintext(e->password) != NULL)
			return GSASL_NO_CALLBACK;   /* gsasl derives the keys from GSASL_PASSWORD */
		struct scram_secret sec;
		char *error = NULL;
		if (e == NULL || scram_secret_parse(e->password, &sec, &error) < 0) {
			free(error);
			c->unknown_user = e == NULL;
			return scram_fake(sctx, prop, authid, sha256);
		}
		bool match = strncasecmp(sec.mech, c->mech, strlen(sec.mech)) == 0 &&
		    (c->mech[strlen(sec.mech)] == '\0' || strcasecmp(c->mech + strlen(sec.mech), "-PLUS") == 0);
		int rc = GSASL_OK;
		if (!match) {
			rc = scram_fake(sctx, prop, authid, sha256);
		} else if (prop == GSASL_SCRAM_ITER) {
			char it[16];
			snprintf(it, sizeof(it), "%u", sec.iterations);
			gsasl_property_set(sctx, prop, it);
		} else if (prop == GSASL_SCRAM_SALT) {
			gsasl_property_set(sctx, prop, sec.salt_b64);
		} else {
			/* GNU SASL 2.2 takes the keys base64-encoded, whatever its
			 * header says (checked against libgsasl 2.2.0). */
			char *b64 = hex_to_base64(prop == GSASL_SCRAM_STOREDKEY ? sec.stored_key_hex
			    : sec.server_key_hex);
			gsasl_property_set(sctx, prop, b64);
			free(b64);
		}
		scram_secret_clear(&sec);
		return rc;
	}
	default:
		return GSASL_NO_CALLBACK;
	}
}

static void
sasl_fail(struct sasl_conv *c, const char *why)
{
	const char *authid = gsasl_property_fast(c->sctx, GSASL_AUTHID);
	log_failure(c->session_id, authid, c->peer, why);
	auth_answer(c->fd, c->id, c->peer, AUTH_RESULT_FAIL, NULL, NULL, NULL);
	conv_free(c);
}

static void
sasl_finish(struct job *j)
{
	struct sasl_conv *c = j->conv;
	c->busy = false;
	c->last = time(NULL);
	if (j->rc == GSASL_NEEDS_MORE) {
		auth_answer(c->fd, c->id, c->peer, AUTH_RESULT_CONTINUE, NULL, NULL, j->output);
		return;
	}
	if (j->rc != GSASL_OK) {
		sasl_fail(c, c->unknown_user ? "unknown user (SASL)" : gsasl_strerror(j->rc));
		return;
	}
	const char *authid = gsasl_property_fast(c->sctx, GSASL_AUTHID);
	const char *authzid = gsasl_property_fast(c->sctx, GSASL_AUTHZID);
	const struct passwd_entry *e = authid ? passwd_db_lookup(c->ref->db, authid) : NULL;
	if (e == NULL || c->unknown_user) {
		sasl_fail(c, "unknown user (SASL)");
		return;
	}
	if (authzid != NULL && authzid[0] != '\0' && strcmp(authzid, authid) != 0) {
		sasl_fail(c, "authorization identity differs from the user (not supported)");
		return;
	}
	if ((strcasecmp(c->mech, "PLAIN") == 0 || strcasecmp(c->mech, "LOGIN") == 0) && !c->validated) {
		sasl_fail(c, "password not validated");
		return;
	}
	char *error = NULL;
	char *location = mail_location_expand(auth.config->mail, e, &error);
	if (location == NULL) {
		log_warnx("session %016llx: user %s: mail location: %s", (unsigned long long)c->session_id,
		    authid, error);
		free(error);
		reply_send(c->fd, c->id, AUTH_RESULT_TEMP, NULL, NULL, NULL);
		conv_free(c);
		return;
	}
	auth_answer(c->fd, c->id, c->peer, AUTH_RESULT_OK, authid, location, j->output);
	free(location);
	conv_free(c);
}

static struct job *
sasl_step(struct sasl_conv *c, const char *input)
{
	struct job *j = xcalloc(1, sizeof(*j));
	j->kind = JOB_SASL;
	j->conv = c;
	j->input = input ? xstrdup(input) : NULL;
	c->busy = true;
	job_queue(j);
	return j;
}

static void
auth_handle_sasl_start(int fd, const struct ipc_sasl_start *msg)
{
	const char *mech = msg->mech;
	char peer[64];
	str_sanitize(peer, sizeof(peer), msg->peer, strlen(msg->peer));
	struct db_ref *ref = auth_db_current();
	if (ref == NULL || auth.n_convs >= AUTH_MAX_SASL || auth.pending >= AUTH_MAX_PENDING ||
	    conv_find(fd, msg->request_id) != NULL) {
		reply_send(fd, msg->request_id, AUTH_RESULT_TEMP, NULL, NULL, NULL);
		return;
	}
	struct sasl_conv *c = xcalloc(1, sizeof(*c));
	if (gsasl_server_start(auth.gsasl, mech, &c->sctx) != GSASL_OK) {
		free(c);
		reply_send(fd, msg->request_id, AUTH_RESULT_FAIL, NULL, NULL, NULL);
		return;
	}
	c->fd = fd;
	c->id = msg->request_id;
	c->session_id = msg->session_id;
	c->ref = ref;
	ref->refs++;
	snprintf(c->mech, sizeof(c->mech), "%s", mech);
	memcpy(c->peer, peer, sizeof(peer));
	c->last = time(NULL);
	gsasl_session_hook_set(c->sctx, c);
	if (msg->cb_exporter[0] != '\0')
		gsasl_property_set(c->sctx, GSASL_CB_TLS_EXPORTER, msg->cb_exporter);
	if (msg->cb_unique[0] != '\0')
		gsasl_property_set(c->sctx, GSASL_CB_TLS_UNIQUE, msg->cb_unique);
	c->next = auth.convs;
	auth.convs = c;
	auth.n_convs++;
	bool initial = msg->has_initial;
	/* Built here rather than by sasl_step(): the flag must be set before
	 * the job is queued, since a pool thread may pick it up at once. */
	struct job *j = xcalloc(1, sizeof(*j));
	j->kind = JOB_SASL;
	j->conv = c;
	j->input = initial ? xstrdup(msg->initial) : NULL;
	j->login_initial = initial && msg->initial[0] != '\0' && strcasecmp(mech, "LOGIN") == 0;
	c->busy = true;
	job_queue(j);
}

static void
auth_handle_sasl_step(int fd, const struct ipc_sasl_step *msg)
{
	struct sasl_conv *c = conv_find(fd, msg->request_id);
	if (c == NULL || c->busy) {
		reply_send(fd, msg->request_id, AUTH_RESULT_FAIL, NULL, NULL, NULL);
		return;
	}
	(void)sasl_step(c, msg->response);
}

static void
auth_handle_sasl_abort(int fd, const struct ipc_sasl_abort *msg)
{
	struct sasl_conv *c = conv_find(fd, msg->request_id);
	if (c == NULL)
		return;
	if (c->busy) {
		c->fd = -1;   /* freed when its step comes back */
		return;
	}
	conv_free(c);
}

static void
sasl_expire(void)
{
	time_t now = time(NULL);
	struct sasl_conv *c = auth.convs, *next;
	for (; c != NULL; c = next) {
		next = c->next;
		if (!c->busy && now - c->last > AUTH_SASL_IDLE_SECONDS)
			conv_free(c);
	}
}

/* --- event loop ------------------------------------------------------------ */

static void
done_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t n;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		log_warn("eventfd read");
	pthread_mutex_lock(&auth.lock);
	struct job *list = auth.done;
	auth.done = NULL;
	pthread_mutex_unlock(&auth.lock);
	while (list != NULL) {
		struct job *next = list->next;
		auth.pending--;
		if (list->kind == JOB_PASS) {
			pass_finish(list);
		} else {
			if (list->conv->fd < 0) {
				list->conv->busy = false;
				conv_free(list->conv);
			} else {
				sasl_finish(list);
			}
			job_free(list);
		}
		list = next;
	}
}

/* One request from a worker, decoded by its type; anything else is dropped. */
static void
worker_request(int fd, const void *buf, size_t len)
{
	union {
		struct ipc_auth_pass pass;
		struct ipc_auth_apop apop;
		struct ipc_sasl_start start;
		struct ipc_sasl_step step;
		struct ipc_sasl_abort abort;
	} m;
	uint32_t type = ipc_type(buf, len);
	switch (type) {
	case IPC_AUTH_PASS:
		if (ipc_auth_pass_decode(buf, len, &m.pass)) {
			auth_handle_pass(fd, &m.pass);
			return;
		}
		break;
	case IPC_AUTH_APOP:
		if (ipc_auth_apop_decode(buf, len, &m.apop)) {
			auth_handle_apop(fd, &m.apop);
			return;
		}
		break;
	case IPC_SASL_START:
		if (ipc_sasl_start_decode(buf, len, &m.start)) {
			auth_handle_sasl_start(fd, &m.start);
			return;
		}
		break;
	case IPC_SASL_STEP:
		if (ipc_sasl_step_decode(buf, len, &m.step)) {
			auth_handle_sasl_step(fd, &m.step);
			return;
		}
		break;
	case IPC_SASL_ABORT:
		if (ipc_sasl_abort_decode(buf, len, &m.abort)) {
			auth_handle_sasl_abort(fd, &m.abort);
			return;
		}
		break;
	default:
		log_warnx("unexpected message type %u from worker", type);
		return;
	}
	log_warnx("malformed message of type %u from worker, ignored", type);
}

static void
worker_channel_cb(evutil_socket_t fd, short what, void *arg)
{
	static char buf[IPC_MAX_MSG];
	/* Drain a bounded batch per wake-up so one busy worker cannot starve the others. */
	for (int i = 0; i < 64; i++) {
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				log_warn("recv from worker");
			return;
		}
		if (n == 0)
			return;
		worker_request(fd, buf, (size_t)n);
		secure_wipe(buf, (size_t)n);
	}
}

static void
housekeeping_cb(evutil_socket_t fd, short what, void *arg)
{
	sasl_expire();
	auth_penalty_expire(auth.penalty, time(NULL));
}

static void
auth_apply_reload(const struct ipc_reload *msg)
{
	struct config *next;
	char *error = NULL;
	if (config_parse(msg->path, msg->config, &next, &error) < 0) {
		log_warnx("reload: %s", error);
		free(error);
		return;
	}
	/* Nothing keeps pointers into the old config: jobs copy what they
	 * need, and pool threads never read it. */
	config_free(auth.config);
	auth.config = next;
	auth.force_reload = true;   /* re-read the users file even if unchanged */
}

static void
control_cb(evutil_socket_t fd, short what, void *arg)
{
	static char buf[IPC_MAX_MSG];
	struct ipc_reload msg;
	int passed;
	ssize_t n = ipc_recv_fd(fd, buf, sizeof(buf), &passed);
	if (passed >= 0)
		close(passed);   /* a late answer to a users file request */
	if (n == 0) {
		/* The master is gone: nothing supervises us any more. */
		log_warnx("master went away, exiting");
		exit(0);
	}
	if (n < 0 || !ipc_reload_decode(buf, (size_t)n, &msg))
		return;
	auth_apply_reload(&msg);
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

	auth.config = env->config;
	auth.control_fd = env->control_fd;
	auth.base = event_base_new();
	if (auth.base == NULL)
		fatalx("event_base_new failed");
	if (gsasl_init(&auth.gsasl) != GSASL_OK)
		fatalx("GNU SASL initialisation failed");
	gsasl_callback_set(auth.gsasl, sasl_callback);
	if (RAND_bytes(auth.fake_salt_key, sizeof(auth.fake_salt_key)) != 1)
		fatalx("no randomness");
	auth.penalty = auth_penalty_new();
	pthread_mutex_init(&auth.lock, NULL);
	pthread_cond_init(&auth.cond, NULL);
	auth.done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (auth.done_fd < 0)
		fatal("eventfd");
	auth_db_current();

	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int nthreads = ncpu < 1 ? 1 : ncpu > AUTH_MAX_THREADS ? AUTH_MAX_THREADS : (int)ncpu;
	for (int i = 0; i < nthreads; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, auth_thread, NULL) != 0)
			fatalx("cannot start hashing thread");
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
	struct event *hk = event_new(auth.base, -1, EV_PERSIST, housekeeping_cb, NULL);
	struct timeval minute = { .tv_sec = 60 };
	event_add(hk, &minute);

	event_base_dispatch(auth.base);
	exit(0);
}

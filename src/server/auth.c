/* The auth process: the only process that reads the users file and the
 * password hashes (docs/DESIGN.md "Process model"). Workers send it credentials (USER/PASS, APOP)
 * or relay SASL lines (RFC 5034, run here with GNU SASL); it answers
 * OK + mail location, CONTINUE + challenge, FAIL or TEMP (ipc.h).
 *
 * This file is the process: the messages from workers and the master, the
 * answers (with the failed-login penalty) and the password database's
 * loading and reloading. Users and secrets are read only through the passdb
 * interface (auth_passdb.h; the users file is auth_passwdfile.c), SASL
 * exchanges are auth_sasl.c, the thread pool thread_pool.c (docs/DESIGN.md,
 * "The auth process").
 *
 * Anything that may be slow (crypt hashes take tens of ms, SCRAM's PBKDF2 a
 * few, parsing a large users file seconds) runs on the thread pool, so one
 * slow hash never delays the other logins; {PLAIN} secrets are checked
 * inline. Failed logins make later answers to the same source address wait
 * (the penalty), on a timer: nothing blocks. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "server/auth_passdb.h"
#include "server/auth_penalty.h"
#include "server/metrics.h"
#include "server/thread_pool.h"
#include "server/auth_sasl.h"
#include "server/devices.h"
#include "server/ipc.h"
#include "server/ipc_queue.h"
#include "server/popboxd.h"
#include "server/recipient.h"

/* Hashing threads: one per core keeps both cores busy under a login storm;
 * more would only queue inside the kernel. */
#define AUTH_MAX_THREADS 16
/* Niceness of the hashing threads (see thread_pool.c). */
#define AUTH_THREAD_NICE 10
/* Pending jobs beyond this are answered "temp" at once: a flood of logins
 * must not grow memory without bound. */
#define AUTH_MAX_PENDING 4096
/* SASL exchanges open at once, and how long one may sit between steps before
 * it is dropped (the worker's own timeout is shorter). */
#define AUTH_MAX_SASL 4096
#define AUTH_SASL_IDLE_SECONDS 300
/* How often the password database's source is checked for a change (a stat
 * of the users file): an edit takes effect within about this long. */
#define AUTH_PASSDB_CHECK_MS 1000
/* How long the master may take to hand over the users file. */
#define AUTH_PASSDB_FD_TIMEOUT_SECONDS 5
/* After a failed load, a changed source is tried again this much later (a
 * SIGHUP tries at once): a broken file is not re-read every second. */
#define AUTH_PASSDB_RETRY_SECONDS 10

/* One SASL exchange of one worker session; the SASL side is the conv. */
struct sasl_exchange {
	struct sasl_exchange *next;
	int fd;                 /* worker channel; -1: aborted while busy */
	uint64_t id;
	uint64_t session_id;    /* the worker's session, for log lines */
	struct sasl_conv *conv;
	char peer[64];
	bool busy;              /* a step is on the thread pool */
	bool step_had_input;    /* the client gave data to the last step */
	bool challenged;        /* a challenge answered data from the client */
	time_t last;
};

/* USER/PASS: the password check, on the pool unless cheap. */
struct pass_job {
	struct thread_pool_job job;
	int fd;                 /* worker channel to answer on */
	uint64_t id;
	uint64_t session_id;    /* the worker's session, for log lines */
	char peer[64];
	struct passdb_ref *ref;
	const struct passwd_entry *entry;   /* in ref; NULL = unknown user */
	char *user;             /* the users-file name (without a device) */
	char *device;           /* "" for a classic login */
	char *password;         /* wiped and freed after use */
	enum password_result result;
};

/* One SASL step on the pool. */
struct sasl_job {
	struct thread_pool_job job;
	struct sasl_exchange *x;
	char *input;            /* base64 from the client; NULL = no input yet */
	char *output;           /* base64 from gsasl */
	int rc;
};

/* Loading the password database on the pool. */
struct passdb_load_job {
	struct thread_pool_job job;
	const struct passdb_ops *ops;
	char *source;           /* NULL: the backend reads no file */
	int fd;
	struct passdb *db;      /* the result, or NULL with error */
	char *error;
};

/* Where a reload of the password database stands. */
enum passdb_reload {
	PASSDB_IDLE,
	PASSDB_WAIT_FD,         /* asked the master for the file */
	PASSDB_LOADING,         /* a load job is on the pool */
};

static struct {
	struct event_base *base;
	struct config *config;
	const struct passdb_ops *passdb_ops;
	struct passdb_ref *passdb;      /* the current database; NULL if none loaded */
	enum passdb_reload reload;
	uint64_t reload_id;             /* of the IPC_USERS_OPEN asked */
	time_t reload_since;
	time_t reload_retry_after;      /* after a failure */
	bool reload_again;              /* a forced reload came during one */
	struct thread_pool *pool;
	struct auth_sasl *sasl;
	struct sasl_exchange *exchanges;
	unsigned n_exchanges;
	struct auth_penalty *penalty;
	int control_fd;                 /* to the master */
	/* The user settings an OK answer carries: set by auth_login_granted
	 * only while it encodes that answer (answers are encoded at once, a
	 * delayed one too). */
	enum uidl_format grant_uidl_format;
	const char *grant_device;
	const char *grant_ticket;       /* "" = the session stays in its worker */
	/* Per-user session processes: the workers' channels by slot, and
	 * whether the master can give a process the user's uid (root). */
	int worker_chans[POPBOXD_MAX_WORKERS];
	unsigned n_workers;
	bool drop_privileges;
	unsigned grant_expire, grant_login_delay;
	/* the workers' channels, for IPC_USERS_POLICY after a load */
	const int *worker_fds;
	unsigned n_worker_fds;
	/* what goes to each worker, in order, also while its side is full */
	struct ipc_queue *worker_q[POPBOXD_MAX_WORKERS];
} auth;

/* Send to the worker behind fd. A worker busy accepting a connect storm may
 * leave its side full for a while; the answer then waits in its queue
 * rather than being dropped (its client would wait for the login timeout). */
static int
worker_send(int fd, const void *msg, size_t len)
{
	for (unsigned i = 0; i < auth.n_worker_fds; i++)
		if (auth.worker_fds[i] == fd && auth.worker_q[i] != NULL)
			return ipc_queue_send(auth.worker_q[i], msg, len);
	return ipc_send(fd, msg, len);
}

/* IPC_USERS_POLICY to fd (-1: every worker): what users have of their own. */
static void
policy_send(int fd)
{
	unsigned char buf[IPC_HEADER_SIZE + 8];
	struct ipc_users_policy m = { .request_id = 0, .flags = 0 };
	if (auth.passdb != NULL && auth.passdb->ops->policy_flags != NULL)
		m.flags = auth.passdb->ops->policy_flags(auth.passdb->db);
	size_t len = ipc_users_policy_encode(buf, sizeof(buf), &m);
	for (unsigned i = 0; i < auth.n_worker_fds; i++)
		if (fd < 0 || auth.worker_fds[i] == fd)
			(void)worker_send(auth.worker_fds[i], buf, len);
}

/* The device separator in force ('\0': devices = no). */
static char
auth_device_separator(void)
{
	return auth.config->devices ? auth.config->device_separator : '\0';
}

/* Split a login name into the users-file name (*user_r, malloc'd) and the
 * device (*device_r, malloc'd: the separator and what follows it, "" for a
 * classic login, as IPC_AUTH_RESULT carries it): at the last
 * separator, so "alice#phone" is alice's device "phone" (docs/DESIGN.md).
 * The device is not checked here: a bad one is refused by the worker after
 * the login, so that the answer never tells whether the user exists. */
static void
auth_split_login(const char *name, char **user_r, char **device_r)
{
	size_t ulen;
	const char *dev = device_split(name, auth_device_separator(), &ulen);
	*user_r = dev != NULL ? xstrndup(name, ulen) : xstrdup(name);
	*device_r = xstrdup(dev != NULL ? dev - 1 : "");   /* with its separator */
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
	    .location = location, .data = data,
	    .uidl_format = result == AUTH_RESULT_OK ? auth.grant_uidl_format : UIDL_FORMAT_UNSET,
	    .device = result == AUTH_RESULT_OK ? auth.grant_device : "",
	    .ticket = result == AUTH_RESULT_OK ? auth.grant_ticket : "",
	    .expire = result == AUTH_RESULT_OK ? auth.grant_expire : 0,
	    .login_delay = result == AUTH_RESULT_OK ? auth.grant_login_delay : 0 };
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
	if (worker_send(fd, msg, len) < 0)
		log_warn("cannot answer worker");
}

static void
delayed_reply_cb(evutil_socket_t fd, short what, void *arg)
{
	struct delayed_reply *d = arg;
	if (worker_send(d->fd, d->msg, d->len) < 0)
		log_warn("cannot answer worker");
	free(d);
}

/* Send a final or intermediate answer. user: who logged in, or the name
 * that was tried (NULL if none was given). Final answers wait as the penalty
 * says (auth_penalty.h: per source and user, per user, per source); a
 * failure counts under the name tried, a success clears that user's counts.
 * Nothing blocks. The user and location go only with AUTH_RESULT_OK. */
static void
auth_answer(int fd, uint64_t id, const char *peer, enum auth_result result, const char *user,
    const char *location, const char *data)
{
	bool final = result != AUTH_RESULT_CONTINUE;
	const char *who = user != NULL ? user : "";
	time_t now = time(NULL);
	unsigned delay_ms = final ? auth_penalty_delay_ms(auth.penalty, peer, who, now) : 0;
	if (result == AUTH_RESULT_FAIL)
		auth_penalty_failed(auth.penalty, peer, who, now);
	else if (result == AUTH_RESULT_OK)
		auth_penalty_succeeded(auth.penalty, peer, who);
	if (result != AUTH_RESULT_OK)
		user = location = NULL;
	if (delay_ms > 0)
		METRICS_INC(penalties);
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

/* The uid and gid a per-user session process of e runs as: the account's
 * (PAM: getpwnam; users file: its uid and gid fields). Not started as root,
 * every process runs as the invoking user, and so does this one. */
static bool
grant_ids(const struct passwd_entry *e, uint32_t *uid_r, uint32_t *gid_r, const char **why_r)
{
	if (!auth.drop_privileges) {
		*uid_r = (uint32_t)getuid();
		*gid_r = (uint32_t)getgid();
		return true;
	}
	if (e->uid == NULL || e->gid == NULL || !parse_u32(e->uid, UINT32_MAX - 1, uid_r) ||
	    !parse_u32(e->gid, UINT32_MAX - 1, gid_r)) {
		*why_r = "no numeric uid and gid (session_process = per-user needs them in the users file)";
		return false;
	}
	if (*uid_r == 0 || *uid_r < auth.config->first_valid_uid) {
		*why_r = "uid below first_valid_uid (or root): no session process for it";
		return false;
	}
	return true;
}

/* Tell the master that the worker behind fd may hand session_id over to a
 * process of its own running as e's uid (docs/DESIGN.md "A process per
 * user session"); the ticket goes back to the worker with the OK answer, so
 * a worker can only hand over a session the auth process logged in.
 * False (logged) when there can be no such process. */
static bool
session_grant(int fd, uint64_t session_id, const struct passwd_entry *e, const char *location,
    char ticket[IPC_TICKET_LEN + 1])
{
	unsigned slot = auth.n_workers;
	for (unsigned i = 0; i < auth.n_workers; i++)
		if (auth.worker_chans[i] == fd)
			slot = i;
	uint32_t uid, gid;
	const char *why = "no worker slot";
	if (slot == auth.n_workers || !grant_ids(e, &uid, &gid, &why)) {
		log_warnx("session %016llx: user %s: %s", (unsigned long long)session_id, e->user, why);
		return false;
	}
	unsigned char rnd[IPC_TICKET_LEN / 2];
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		return false;
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(ticket + 2 * i, 3, "%02x", rnd[i]);
	const struct ipc_session_grant g = { .slot = slot, .session_id = session_id, .uid = uid,
	    .gid = gid, .ticket = ticket, .user = e->user, .location = location,
	    .uidl_format = e->uidl_format, .expire = e->expire, .login_delay = e->login_delay };
	unsigned char buf[IPC_HEADER_SIZE + 64 + IPC_MAX_TICKET + IPC_MAX_USER + IPC_MAX_LOCATION + 8];
	size_t len = ipc_session_grant_encode(buf, sizeof(buf), &g);
	if (len == 0 || ipc_send(auth.control_fd, buf, len) < 0) {
		log_warn("session %016llx: cannot tell the master about user %s's session process",
		    (unsigned long long)session_id, e->user);
		return false;
	}
	return true;
}

/* A login succeeded (USER/PASS, APOP or SASL): the one place that turns it
 * into the answer, OK with the user and the mail location, or TEMP when the
 * location cannot be made (logged; the session may try again later).
 * sasl_data: SCRAM's success data, or NULL. */
static void
auth_login_granted(int fd, uint64_t id, uint64_t session_id, const char *peer,
    const struct passwd_entry *e, const char *device, const char *sasl_data)
{
	char *error = NULL;
	char *location = mail_location_expand(auth.config->mail, e, &error);
	if (location == NULL) {
		log_warnx("session %016llx: user %s: mail location: %s", (unsigned long long)session_id,
		    e->user, error);
		free(error);
		/* Held by the penalty like any answer: an answer at once would
		 * tell a guesser under penalty that the password was right. */
		auth_answer(fd, id, peer, AUTH_RESULT_TEMP, e->user, NULL, NULL);
		return;
	}
	char ticket[IPC_TICKET_LEN + 1] = "";
	if (config_session_per_user(auth.config) &&
	    !session_grant(fd, session_id, e, location, ticket)) {
		auth_answer(fd, id, peer, AUTH_RESULT_TEMP, e->user, NULL, NULL);
		free(location);
		return;
	}
	auth.grant_uidl_format = e->uidl_format;
	auth.grant_device = device;
	auth.grant_ticket = ticket;
	auth.grant_expire = e->expire;
	auth.grant_login_delay = e->login_delay;
	auth_answer(fd, id, peer, AUTH_RESULT_OK, e->user, location, sasl_data);
	auth.grant_uidl_format = UIDL_FORMAT_UNSET;
	auth.grant_device = "";
	auth.grant_ticket = "";
	auth.grant_expire = auth.grant_login_delay = 0;
	free(location);
}

static void
log_failure(uint64_t session_id, const char *user, const char *peer, const char *why)
{
	char u[64];
	str_sanitize(u, sizeof(u), user ? user : "", user ? strlen(user) : 0);
	log_info("session %016llx: login failed: user=%s peer=%s: %s", (unsigned long long)session_id,
	    u, peer, why);
}

/* --- USER/PASS ------------------------------------------------------------ */

static void
pass_run(struct thread_pool_job *job)
{
	struct pass_job *j = (struct pass_job *)job;
	j->result = j->ref->ops->verify(j->ref->db, j->entry, j->password);
	secure_wipe(j->password, strlen(j->password));
}

static void
pass_done(struct thread_pool_job *job)
{
	struct pass_job *j = (struct pass_job *)job;
	if (j->entry != NULL && j->result == PASSWORD_OK) {
		auth_login_granted(j->fd, j->id, j->session_id, j->peer, j->entry, j->device, NULL);
	} else {
		char *why = j->entry == NULL ? xstrdup("unknown user") :
		    j->result == PASSWORD_BAD_SCHEME ?
		    xasprintf("unusable password scheme in the %s", j->ref->ops->name) :
		    xstrdup("wrong password");
		log_failure(j->session_id, j->user, j->peer, why);
		free(why);
		auth_answer(j->fd, j->id, j->peer, AUTH_RESULT_FAIL, j->user, NULL, NULL);
	}
	passdb_ref_release(j->ref);
	free_secret(j->password);
	free(j->user);
	free(j->device);
	free(j);
}

static void
auth_handle_pass(int fd, const struct ipc_auth_pass *msg)
{
	char peer[64];
	str_sanitize(peer, sizeof(peer), msg->peer, strlen(msg->peer));
	struct passdb_ref *ref = auth.passdb;
	if (ref == NULL || thread_pool_pending(auth.pool) >= AUTH_MAX_PENDING) {
		if (ref != NULL)
			log_warnx("session %016llx: %u logins pending, refusing more for now",
			    (unsigned long long)msg->session_id, thread_pool_pending(auth.pool));
		reply_send(fd, msg->request_id, AUTH_RESULT_TEMP, NULL, NULL, NULL);
		return;
	}
	struct pass_job *j = xcalloc(1, sizeof(*j));
	j->job.run = pass_run;
	j->job.done = pass_done;
	j->fd = fd;
	j->id = msg->request_id;
	j->session_id = msg->session_id;
	memcpy(j->peer, peer, sizeof(peer));
	j->ref = passdb_ref_hold(ref);
	auth_split_login(msg->user, &j->user, &j->device);
	j->password = xstrdup(msg->password);
	j->entry = ref->ops->lookup(ref->db, j->user);
	if (ref->ops->verify_is_cheap(ref->db, j->entry)) {
		pass_run(&j->job);
		pass_done(&j->job);
		return;
	}
	thread_pool_queue(auth.pool, &j->job);
}

/* --- APOP ------------------------------------------------------------------ */

/* RFC 1939 §7: digest = MD5(timestamp + shared secret), hex, compared in
 * constant time (case-insensitively). plain NULL (no plaintext secret, or
 * no user) never matches but costs the same. */
static bool
apop_digest_matches(const char *stamp, const char *plain, const char *digest)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char hex[2 * EVP_MAX_MD_SIZE + 1];
	bool ok = false;
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
	return ok;
}

/* APOP needs the plaintext secret; users whose secret is a hash (or whose
 * backend has no plaintext) cannot use it. */
static void
auth_handle_apop(int fd, const struct ipc_auth_apop *msg)
{
	char *user, *device;
	char peer[64];
	str_sanitize(peer, sizeof(peer), msg->peer, strlen(msg->peer));
	struct passdb_ref *ref = auth.passdb;
	auth_split_login(msg->user, &user, &device);
	if (!auth.config->apop || ref == NULL) {
		auth_answer(fd, msg->request_id, peer, AUTH_RESULT_FAIL, user, NULL, NULL);
		free(user);
		free(device);
		return;
	}
	const struct passwd_entry *e = ref->ops->lookup(ref->db, user);
	const char *plain = e ? ref->ops->plaintext(e) : NULL;
	if (!apop_digest_matches(msg->stamp, plain, msg->digest)) {
		log_failure(msg->session_id, user, peer, e == NULL ? "unknown user (APOP)" :
		    plain == NULL ? "APOP needs a {PLAIN} secret" : "wrong APOP digest");
		auth_answer(fd, msg->request_id, peer, AUTH_RESULT_FAIL, user, NULL, NULL);
		free(user);
		free(device);
		return;
	}
	auth_login_granted(fd, msg->request_id, msg->session_id, peer, e, device, NULL);
	free(user);
	free(device);
}

/* --- SASL ------------------------------------------------------------------ */

static struct sasl_exchange *
exchange_find(int fd, uint64_t id)
{
	for (struct sasl_exchange *x = auth.exchanges; x != NULL; x = x->next)
		if (x->fd == fd && x->id == id)
			return x;
	return NULL;
}

static void
exchange_free(struct sasl_exchange *x)
{
	struct sasl_exchange **pp = &auth.exchanges;
	while (*pp != NULL && *pp != x)
		pp = &(*pp)->next;
	if (*pp == x)
		*pp = x->next;
	auth.n_exchanges--;
	auth_sasl_conv_free(x->conv);
	free(x);
}

/* Answer a step: a challenge, the failure, or the login. */
static void
exchange_answer(struct sasl_exchange *x, int rc, const char *output)
{
	const struct passwd_entry *e;
	const char *user, *why;
	switch (auth_sasl_conv_outcome(x->conv, rc, &e, &user, &why)) {
	case SASL_OUTCOME_CONTINUE:
		x->challenged |= x->step_had_input;
		auth_answer(x->fd, x->id, x->peer, AUTH_RESULT_CONTINUE, NULL, NULL, output);
		return;
	case SASL_OUTCOME_FAILURE:
		log_failure(x->session_id, user, x->peer, why);
		auth_answer(x->fd, x->id, x->peer, AUTH_RESULT_FAIL, user, NULL, NULL);
		break;
	case SASL_OUTCOME_SUCCESS:
		auth_login_granted(x->fd, x->id, x->session_id, x->peer, e,
		    auth_sasl_conv_device(x->conv), output);
		break;
	}
	exchange_free(x);
}

static void
sasl_run(struct thread_pool_job *job)
{
	struct sasl_job *j = (struct sasl_job *)job;
	j->rc = auth_sasl_conv_step(j->x->conv, j->input, &j->output);
}

static void
sasl_done(struct thread_pool_job *job)
{
	struct sasl_job *j = (struct sasl_job *)job;
	struct sasl_exchange *x = j->x;
	x->busy = false;
	x->last = time(NULL);
	x->step_had_input = j->input != NULL && j->input[0] != '\0';
	if (x->fd < 0)
		exchange_free(x);   /* aborted while the step ran */
	else
		exchange_answer(x, j->rc, j->output);
	free(j->input);
	free(j->output);
	free(j);
}

static void
exchange_step(struct sasl_exchange *x, const char *input)
{
	struct sasl_job *j = xcalloc(1, sizeof(*j));
	j->job.run = sasl_run;
	j->job.done = sasl_done;
	j->x = x;
	j->input = input ? xstrdup(input) : NULL;
	x->busy = true;
	thread_pool_queue(auth.pool, &j->job);
}

static void
auth_handle_sasl_start(int fd, const struct ipc_sasl_start *msg)
{
	char peer[64];
	str_sanitize(peer, sizeof(peer), msg->peer, strlen(msg->peer));
	if (auth.passdb == NULL || auth.n_exchanges >= AUTH_MAX_SASL ||
	    thread_pool_pending(auth.pool) >= AUTH_MAX_PENDING ||
	    exchange_find(fd, msg->request_id) != NULL) {
		reply_send(fd, msg->request_id, AUTH_RESULT_TEMP, NULL, NULL, NULL);
		return;
	}
	struct sasl_conv *conv = auth_sasl_conv_new(auth.sasl, msg->mech, auth.passdb,
	    msg->cb_exporter, msg->cb_unique);
	if (conv == NULL) {
		reply_send(fd, msg->request_id, AUTH_RESULT_FAIL, NULL, NULL, NULL);
		return;
	}
	auth_sasl_conv_set_device_separator(conv, auth_device_separator());
	struct sasl_exchange *x = xcalloc(1, sizeof(*x));
	x->fd = fd;
	x->id = msg->request_id;
	x->session_id = msg->session_id;
	x->conv = conv;
	memcpy(x->peer, peer, sizeof(peer));
	x->last = time(NULL);
	x->next = auth.exchanges;
	auth.exchanges = x;
	auth.n_exchanges++;
	exchange_step(x, msg->has_initial ? msg->initial : NULL);
}

static void
auth_handle_sasl_step(int fd, const struct ipc_sasl_step *msg)
{
	struct sasl_exchange *x = exchange_find(fd, msg->request_id);
	if (x == NULL || x->busy) {
		reply_send(fd, msg->request_id, AUTH_RESULT_FAIL, NULL, NULL, NULL);
		return;
	}
	exchange_step(x, msg->response);
}

/* A cancel ("*") or a client gone after a challenge that answered its data
 * (a SCRAM salt, LOGIN's password prompt) counts as a failed login: the
 * client learnt what the exchange shows and left before the verdict, which
 * the penalty would have held. A cancel before that costs nothing. */
static void
auth_handle_sasl_abort(int fd, const struct ipc_sasl_abort *msg)
{
	struct sasl_exchange *x = exchange_find(fd, msg->request_id);
	if (x == NULL)
		return;
	if (x->challenged && !x->busy) {
		const char *user = auth_sasl_conv_user(x->conv);
		log_failure(x->session_id, user, x->peer, "exchange cancelled after a challenge");
		auth_penalty_failed(auth.penalty, x->peer, user, time(NULL));
	}
	if (x->busy) {
		x->fd = -1;   /* freed when its step comes back */
		return;
	}
	exchange_free(x);
}

static void
sasl_expire(void)
{
	time_t now = time(NULL);
	struct sasl_exchange *x = auth.exchanges, *next;
	for (; x != NULL; x = next) {
		next = x->next;
		if (!x->busy && now - x->last > AUTH_SASL_IDLE_SECONDS)
			exchange_free(x);
	}
}

/* --- the password database ------------------------------------------------
 * Loaded at start from the descriptor the master opened before forking us.
 * Reloads stay off the path of a login: a timer notices a changed source (or
 * SIGHUP forces a reload), the master is asked for a descriptor, the answer
 * arrives on the control channel, the load runs on the pool and the new
 * database is swapped in when it is done. Logins meanwhile use the current
 * one, and keep the one they started with until they finish. */

static void passdb_reload(bool force);

static void
passdb_install(const struct passdb_ops *ops, struct passdb *db, const char *source)
{
	if (auth.passdb != NULL)
		log_info("%s %s reloaded: %zu users", ops->name, source ? source : "",
		    ops->count(db));
	passdb_ref_release(auth.passdb);
	auth.passdb = passdb_ref_new(ops, db);
	policy_send(-1);
}

static void
passdb_load_failed(const char *error)
{
	log_warnx("cannot load %s: %s", auth.passdb_ops->name, error ? error : "unknown error");
	auth.reload_retry_after = time(NULL) + AUTH_PASSDB_RETRY_SECONDS;
}

/* The current load or request ended: run a reload that was forced meanwhile. */
static void
passdb_reload_ended(void)
{
	auth.reload = PASSDB_IDLE;
	if (auth.reload_again) {
		auth.reload_again = false;
		passdb_reload(true);
	}
}

static void
passdb_load_run(struct thread_pool_job *job)
{
	struct passdb_load_job *j = (struct passdb_load_job *)job;
	j->db = j->ops->load(j->source, j->fd, &j->error);
	if (j->fd >= 0)
		close(j->fd);
}

static void
passdb_load_done(struct thread_pool_job *job)
{
	struct passdb_load_job *j = (struct passdb_load_job *)job;
	if (j->db != NULL)
		passdb_install(j->ops, j->db, j->source);
	else
		passdb_load_failed(j->error);
	free(j->error);
	free(j->source);
	free(j);
	passdb_reload_ended();
}

/* Load from fd (the source opened by the master, or -1) on the pool. */
static void
passdb_load_queue(int fd)
{
	const char *source = auth.passdb_ops->source(auth.config);
	struct passdb_load_job *j = xcalloc(1, sizeof(*j));
	j->job.run = passdb_load_run;
	j->job.done = passdb_load_done;
	j->ops = auth.passdb_ops;
	j->source = source ? xstrdup(source) : NULL;
	j->fd = fd;
	auth.reload = PASSDB_LOADING;
	thread_pool_queue(auth.pool, &j->job);
}

/* Start a reload when forced (SIGHUP) or when the source changed. */
static void
passdb_reload(bool force)
{
	const struct passdb_ops *ops = auth.passdb_ops;
	const char *source = ops->source(auth.config);
	if (auth.reload != PASSDB_IDLE) {
		auth.reload_again |= force;
		return;
	}
	if (!force && (time(NULL) < auth.reload_retry_after ||
	    (auth.passdb != NULL && !ops->changed(auth.passdb->db, source))))
		return;
	if (source == NULL) {
		passdb_load_queue(-1);
		return;
	}
	/* The file may be readable by root only, so that no process running
	 * as run_as (a worker) can open it: the master opens it for us. */
	unsigned char buf[IPC_HEADER_SIZE];
	const struct ipc_users_open req = { .request_id = ++auth.reload_id };
	size_t len = ipc_users_open_encode(buf, sizeof(buf), &req);
	if (ipc_send(auth.control_fd, buf, len) < 0) {
		char *why = xasprintf("cannot ask the master for %s: %s", source, strerror(errno));
		passdb_load_failed(why);
		free(why);
		return;
	}
	auth.reload = PASSDB_WAIT_FD;
	auth.reload_since = time(NULL);
}

/* The master's answer to IPC_USERS_OPEN: a descriptor, or why not. */
static void
passdb_fd_received(const struct ipc_users_fd *answer, int fd)
{
	if (auth.reload != PASSDB_WAIT_FD || answer->request_id != auth.reload_id) {
		if (fd >= 0)
			close(fd);   /* a late answer to a request given up */
		return;
	}
	if (answer->error[0] != '\0' || fd < 0) {
		if (fd >= 0)
			close(fd);
		passdb_load_failed(answer->error[0] != '\0' ? answer->error :
		    "no descriptor from the master");
		passdb_reload_ended();
		return;
	}
	passdb_load_queue(fd);
}

static void
passdb_check_cb(evutil_socket_t fd, short what, void *arg)
{
	if (auth.reload == PASSDB_WAIT_FD &&
	    time(NULL) - auth.reload_since >= AUTH_PASSDB_FD_TIMEOUT_SECONDS) {
		passdb_load_failed("the master did not hand over the users file");
		passdb_reload_ended();
	}
	passdb_reload(false);
}

/* At start, before serving: from the descriptor the master opened for us
 * (users_fd < 0: it could not, users_errno says why). Without a database
 * every login is answered "temp" until a reload succeeds. */
static void
passdb_load_initial(int users_fd, int users_errno)
{
	const char *source = auth.passdb_ops->source(auth.config);
	char *error = NULL;
	struct passdb *db = NULL;
	if (source != NULL && users_fd < 0)
		error = xasprintf("%s: cannot open: %s", source, strerror(users_errno));
	else
		db = auth.passdb_ops->load(source, users_fd, &error);
	if (users_fd >= 0)
		close(users_fd);
	if (db != NULL)
		passdb_install(auth.passdb_ops, db, source);
	else
		passdb_load_failed(error);
	free(error);
}

/* --- event loop ------------------------------------------------------------ */

/* --- LMTP recipients ---------------------------------------------------- */

/* Which user a delivery address names (recipient.h: the full address, the
 * bare local part, recipient_delimiter), answered at once: a lookup is
 * cheap, and a known and an unknown recipient are told apart on purpose
 * (RCPT must answer 550 5.1.1), so there is nothing to hide by timing.
 * Not held by the penalty: no secret is tried. */
static void
auth_handle_rcpt_lookup(int fd, const struct ipc_rcpt_lookup *msg)
{
	struct passdb_ref *ref = auth.passdb;
	char *names[RECIPIENT_CANDIDATES];
	const struct passwd_entry *e = NULL;

	if (ref == NULL) {
		reply_send(fd, msg->request_id, AUTH_RESULT_TEMP, NULL, NULL, NULL);
		return;
	}
	size_t n = recipient_candidates(msg->address, auth.config->recipient_delimiter, names);
	for (size_t i = 0; i < n; i++) {
		if (e == NULL) {
			e = ref->ops->lookup(ref->db, names[i]);
			/* system accounts: root, uids below first_valid_uid and
			 * deny_users get no mail (as popbox deliver) */
			uint32_t uid;
			if (e != NULL && auth.config->passdb_pam && (e->uid == NULL ||
			    !parse_u32(e->uid, UINT32_MAX - 1, &uid) ||
			    !recipient_system_account_ok(e->user, (uid_t)uid,
			    auth.config->first_valid_uid, auth.config->deny_users)))
				e = NULL;
		}
		free(names[i]);
	}
	if (e == NULL) {
		reply_send(fd, msg->request_id, AUTH_RESULT_FAIL, NULL, NULL, NULL);
		return;
	}
	char *error = NULL;
	char *location = mail_location_expand(auth.config->mail, e, &error);
	if (location == NULL) {
		log_warnx("lmtp %016llx: user %s: mail location: %s",
		    (unsigned long long)msg->session_id, e->user, error);
		free(error);
		reply_send(fd, msg->request_id, AUTH_RESULT_TEMP, NULL, NULL, NULL);
		return;
	}
	reply_send(fd, msg->request_id, AUTH_RESULT_OK, e->user, location, NULL);
	free(location);
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
		struct ipc_rcpt_lookup rcpt;
		struct ipc_users_policy policy;
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
	case IPC_USERS_POLICY:
		if (ipc_users_policy_decode(buf, len, &m.policy)) {
			policy_send(fd);
			return;
		}
		break;
	case IPC_RCPT_LOOKUP:
		if (ipc_rcpt_lookup_decode(buf, len, &m.rcpt)) {
			auth_handle_rcpt_lookup(fd, &m.rcpt);
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
	auth_pam_configure(auth.config);
	passdb_reload(true);   /* re-read the users file even if unchanged */
}

/* Answer the master's ping (id 0: we are ready to serve); master.c restarts
 * an auth process that stops answering. */
static void
pong_send(uint64_t id)
{
	unsigned char buf[IPC_HEADER_SIZE];
	const struct ipc_ping pong = { .request_id = id };
	if (ipc_send(auth.control_fd, buf, ipc_pong_encode(buf, sizeof(buf), &pong)) < 0)
		log_warn("cannot answer the master's ping");
}

static void
control_cb(evutil_socket_t fd, short what, void *arg)
{
	static char buf[IPC_MAX_MSG];
	struct ipc_reload reload;
	struct ipc_users_fd users;
	struct ipc_ping ping;
	int passed;
	ssize_t n = ipc_recv_fd(fd, buf, sizeof(buf), &passed);
	if (n == 0) {
		/* The master is gone: nothing supervises us any more. */
		log_warnx("master went away, exiting");
		exit(0);
	}
	if (n > 0 && ipc_users_fd_decode(buf, (size_t)n, &users)) {
		passdb_fd_received(&users, passed);
		return;
	}
	if (n > 0 && ipc_ping_decode(buf, (size_t)n, &ping)) {
		pong_send(ping.request_id);
		return;
	}
	if (passed >= 0)
		close(passed);   /* nothing else carries a descriptor */
	if (n > 0 && ipc_reload_decode(buf, (size_t)n, &reload)) {
		auth_apply_reload(&reload);
		secure_wipe(buf, (size_t)n);   /* it holds the private key */
	}
}

static void
sigterm_cb(evutil_socket_t sig, short what, void *arg)
{
	exit(0);
}

/* The SCRAM salt key from the descriptor the master opened (its file is
 * not readable by us), into key; false when there is none. */
static bool
salt_key_read(int fd, unsigned char key[AUTH_SASL_KEY_SIZE])
{
	if (fd < 0)
		return false;
	ssize_t n = pread(fd, key, AUTH_SASL_KEY_SIZE, 0);
	close(fd);
	if (n != AUTH_SASL_KEY_SIZE) {
		log_warnx("cannot read the SCRAM salt key; salts of users without a SCRAM secret "
		    "change at each start of the auth process");
		return false;
	}
	return true;
}

void
auth_main(struct child_env *env)
{
	unsigned char salt_key[AUTH_SASL_KEY_SIZE];
	prctl(PR_SET_NAME, "popboxd-auth");
	log_set_procname("popboxd-auth");
	for (size_t i = 0; i < env->n_listeners; i++)
		close(env->listeners[i].fd);
	for (unsigned i = 0; i < env->n_workers; i++)
		close(env->worker_fds[i]);

	/* Forked from the master, we hold its TLS context and with it the
	 * private key: the auth process never serves TLS, so drop it first
	 * (OpenSSL wipes a private key when it frees it). Reloads bring no
	 * key either (master.c). */
	SSL_CTX_free(env->ssl_ctx);
	env->ssl_ctx = NULL;
	auth.config = env->config;
	auth.control_fd = env->control_fd;
	auth.grant_ticket = "";
	auth.n_workers = env->n_workers;
	for (unsigned i = 0; i < env->n_workers; i++)
		auth.worker_chans[i] = env->auth_fds[i];
	auth.drop_privileges = env->drop_privileges;
	auth.passdb_ops = auth.config->passdb_pam ? &passdb_pam : &passdb_passwdfile;
	auth_pam_configure(auth.config);
	auth.base = event_base_new();
	if (auth.base == NULL)
		fatalx("event_base_new failed");
	auth.sasl = auth_sasl_new(salt_key_read(env->salt_key_fd, salt_key) ? salt_key : NULL);
	secure_wipe(salt_key, sizeof(salt_key));
	auth.penalty = auth_penalty_new(auth.config->auth_penalty_ipv6_prefix);
	auth.worker_fds = env->auth_fds;
	auth.n_worker_fds = env->n_workers;
	for (unsigned i = 0; i < env->n_workers; i++)
		auth.worker_q[i] = ipc_queue_new(auth.base, env->auth_fds[i]);
	passdb_load_initial(env->users_fd, env->users_errno);

	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned nthreads = ncpu < 1 ? 1 : ncpu > AUTH_MAX_THREADS ? AUTH_MAX_THREADS : (unsigned)ncpu;
	auth.pool = thread_pool_new(auth.base, nthreads, AUTH_THREAD_NICE);

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
	struct event *pc = event_new(auth.base, -1, EV_PERSIST, passdb_check_cb, NULL);
	struct timeval check = { .tv_sec = AUTH_PASSDB_CHECK_MS / 1000,
	    .tv_usec = (AUTH_PASSDB_CHECK_MS % 1000) * 1000 };
	event_add(pc, &check);

	pong_send(0);
	event_base_dispatch(auth.base);
	exit(0);
}

/* Login inside a worker (login.h). The worker holds no secrets: credentials
 * go to the auth process as typed requests (ipc.h) that carry the session
 * id, and its answer (OK, FAIL, TEMP, CONTINUE) comes back through
 * login_auth_result(). A login completes when the maildrop has been opened
 * on the store thread; the job's own callback, login_maildrop_opened(),
 * finishes it. */
#include "server/login.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/log.h"
#include "server/metrics.h"
#include "server/cmd_trans.h"
#include "server/devices.h"
#include "server/ipc.h"
#include "server/store_pool.h"
#include "server/tls.h"

#define LOGIN_TEMP_REPLY "-ERR [SYS/TEMP] Authentication is temporarily unavailable, try again later"
#define LOGIN_FAILED_REPLY "-ERR [AUTH] Authentication failed"
#define LOGIN_TOO_MANY_REPLY "-ERR [AUTH] Authentication failed; too many failed logins, closing connection"
#define LOGIN_PLAINTEXT_REPLY \
	"-ERR [AUTH] Plaintext authentication is not allowed on an unencrypted connection"
/* RFC 1939 §7: the APOP digest is MD5 in hex. */
#define LOGIN_APOP_DIGEST_LEN 32

/* A SASL line must fit in a step request, the APOP digest in its field. */
_Static_assert(SESSION_MAX_SASL_LINE <= IPC_MAX_SASL_DATA, "SASL line over the IPC field limit");
_Static_assert(LOGIN_APOP_DIGEST_LEN <= IPC_MAX_APOP_DIGEST, "APOP digest over the IPC field limit");

/* Requests are encoded here (the worker is one thread) and wiped after
 * sending: they may hold a password. */
static unsigned char request_buf[IPC_MAX_MSG];

/* The one place that sets the name the client gave (NULL forgets it). */
static void
login_name_set(struct session *s, const char *name)
{
	free(s->login_name);
	s->login_name = name != NULL ? xstrdup(name) : NULL;
}

bool
login_plaintext_allowed(const struct session *s)
{
	switch (s->worker->config->plaintext_auth) {
	case PLAINTEXT_ALWAYS: return true;
	case PLAINTEXT_NEVER: return s->tls;
	case PLAINTEXT_TLS_OR_LOOPBACK: return s->tls || s->loopback;
	}
	return false;
}

/* --- requests to the auth process ---------------------------------------- */

static void
login_pending_remove(struct session *s)
{
	if (s->auth_request == 0)
		return;
	if (s->auth_prev)
		s->auth_prev->auth_next = s->auth_next;
	else
		s->worker->auth_pending = s->auth_next;
	if (s->auth_next)
		s->auth_next->auth_prev = s->auth_prev;
	s->auth_next = s->auth_prev = NULL;
	s->auth_request = 0;
}

/* Send request_buf[0..len) (0: the encoding failed) and wait for the answer
 * to request id. Returns false, having answered -ERR, when it cannot be sent. */
static bool
login_request(struct session *s, uint64_t id, size_t len)
{
	struct worker *w = s->worker;
	int r = worker_auth_send(w, request_buf, len);
	secure_wipe(request_buf, len);
	if (r < 0) {
		log_warn("session %016llx: cannot reach the auth process", (unsigned long long)s->id);
		session_reply(s, LOGIN_TEMP_REPLY);
		return false;
	}
	s->auth_request = id;
	s->auth_sent_us = monotonic_us();
	s->auth_prev = NULL;
	s->auth_next = w->auth_pending;
	if (w->auth_pending)
		w->auth_pending->auth_prev = s;
	w->auth_pending = s;
	session_enter_state(s, SESSION_AUTH_WAIT);
	return true;
}

static void login_failed(struct session *s, enum auth_result result);

/* --- the greeting, USER, PASS, APOP ----------------------------------------- */

void
login_greet(struct session *s)
{
	if (!s->worker->config->apop) {
		session_reply(s, "+OK popbox ready.");
		return;
	}
	/* RFC 1939 §7: a timestamp unique to this greeting, the APOP salt. */
	uint64_t rnd = 0;
	char hostname[64];
	if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
		rnd = (uint64_t)s->id;
	if (gethostname(hostname, sizeof(hostname)) < 0)
		snprintf(hostname, sizeof(hostname), "localhost");
	hostname[sizeof(hostname) - 1] = '\0';
	snprintf(s->apop_stamp, sizeof(s->apop_stamp), "<%d.%016llx@%s>", (int)getpid(),
	    (unsigned long long)rnd, hostname);
	session_reply(s, "+OK popbox ready. %s", s->apop_stamp);
}

/* Answers -ERR and returns true when USER/PASS may not be used now. */
static bool
login_plaintext_refused(struct session *s)
{
	if (login_plaintext_allowed(s))
		return false;
	session_reply(s, LOGIN_PLAINTEXT_REPLY);
	return true;
}

void
login_user(struct session *s, int argc, char **argv)
{
	if (login_plaintext_refused(s))
		return;
	login_name_set(s, argv[0]);
	session_reply(s, "+OK");
}

void
login_pass(struct session *s, int argc, char **argv)
{
	if (login_plaintext_refused(s))
		return;
	if (s->login_name == NULL) {
		session_reply(s, "-ERR USER first");
		return;
	}
	s->login_mech = METRICS_MECH_USER;
	const struct ipc_auth_pass m = { .request_id = ++s->worker->next_request, .session_id = s->id,
	    .user = s->login_name, .password = argv[0], .peer = s->peer_ip };
	login_request(s, m.request_id, ipc_auth_pass_encode(request_buf, sizeof(request_buf), &m));
}

void
login_apop(struct session *s, int argc, char **argv)
{
	if (s->apop_stamp[0] == '\0') {
		session_reply(s, "-ERR APOP is not enabled on this server");
		return;
	}
	size_t dlen = strlen(argv[1]);
	s->login_mech = METRICS_MECH_APOP;
	if (dlen != LOGIN_APOP_DIGEST_LEN || strspn(argv[1], "0123456789abcdefABCDEF") != dlen) {
		login_failed(s, AUTH_RESULT_FAIL);
		return;
	}
	login_name_set(s, argv[0]);
	const struct ipc_auth_apop m = { .request_id = ++s->worker->next_request, .session_id = s->id,
	    .user = s->login_name, .stamp = s->apop_stamp, .digest = argv[1], .peer = s->peer_ip };
	login_request(s, m.request_id, ipc_auth_apop_encode(request_buf, sizeof(request_buf), &m));
}

/* --- AUTH and its SASL exchange (RFC 5034) ----------------------------------- */

/* Tell the auth process to drop the exchange: no answer comes. */
static void
login_sasl_abort(struct session *s)
{
	unsigned char buf[IPC_HEADER_SIZE + 8];
	const struct ipc_sasl_abort m = { .request_id = s->sasl_id, .session_id = s->id };
	(void)worker_auth_send(s->worker, buf, ipc_sasl_abort_encode(buf, sizeof(buf), &m));
}

static void
login_sasl_end(struct session *s)
{
	s->sasl_id = 0;
	s->sasl_final = false;
	free(s->pending_user);
	s->pending_user = NULL;
	free(s->pending_location);
	s->pending_location = NULL;
	free(s->pending_device);
	s->pending_device = NULL;
	s->pending_ticket[0] = '\0';
}

/* The client ended the exchange, or broke it: back to AUTHORIZATION. */
static void
login_sasl_cancel(struct session *s)
{
	login_sasl_abort(s);
	login_sasl_end(s);
	session_enter_state(s, SESSION_AUTHORIZATION);
}

/* Whether -PLUS mechanisms are offered and the channel bindings go to the
 * auth process: only over TLS, and only with sasl_channel_binding = yes.
 * Without it GNU SASL sees a server that cannot bind, so a client's SCRAM
 * "y" flag is accepted, as RFC 5802 §6 requires when -PLUS is not offered
 * (docs/PROTOCOL.md §5). */
static bool
login_channel_binding(const struct session *s)
{
	return s->tls && s->worker->config->sasl_channel_binding;
}

const char *
login_sasl_mechanisms(const struct session *s)
{
	static char buf[256];
	char list[256];
	size_t len = 0;
	snprintf(list, sizeof(list), "%s", s->worker->config->auth_mechanisms);
	buf[0] = '\0';
	for (char *save = NULL, *m = strtok_r(list, " ", &save); m != NULL; m = strtok_r(NULL, " ", &save)) {
		size_t mlen = strlen(m);
		bool plus = mlen > 5 && strcmp(m + mlen - 5, "-PLUS") == 0;
		bool plain = strcmp(m, "PLAIN") == 0 || strcmp(m, "LOGIN") == 0;
		if (plus && !login_channel_binding(s))
			continue;
		if (plain && !login_plaintext_allowed(s))
			continue;
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%s%s", len ? " " : "", m);
		if (len >= sizeof(buf))
			break;
	}
	return buf;
}

/* Start an AUTH exchange (mechanism already checked). */
static void
login_sasl_start(struct session *s, const char *mech, const char *initial)
{
	char *cb_exporter = NULL, *cb_unique = NULL;
	struct ssl_st *ssl = session_ssl(s);
	s->login_mech = metrics_mech(mech);
	if (ssl != NULL && login_channel_binding(s)) {
		cb_exporter = tls_channel_binding_exporter(ssl);
		cb_unique = tls_channel_binding_unique(ssl);
	}
	/* RFC 5034 §4: "=" is an empty initial response. */
	const struct ipc_sasl_start m = { .request_id = ++s->worker->next_request, .session_id = s->id,
	    .mech = mech, .has_initial = initial != NULL,
	    .initial = initial == NULL || strcmp(initial, "=") == 0 ? "" : initial,
	    .peer = s->peer_ip, .cb_exporter = cb_exporter, .cb_unique = cb_unique };
	if (login_request(s, m.request_id, ipc_sasl_start_encode(request_buf, sizeof(request_buf), &m)))
		s->sasl_id = m.request_id;
	free(cb_exporter);
	free(cb_unique);
}

/* Write the offered mechanisms, one a line (old clients ask with a bare AUTH). */
static void
login_auth_list(struct session *s, const char *offered)
{
	char list[256];
	session_reply(s, "+OK Supported mechanisms follow");
	snprintf(list, sizeof(list), "%s", offered);
	for (char *save = NULL, *m = strtok_r(list, " ", &save); m != NULL; m = strtok_r(NULL, " ", &save))
		session_reply(s, "%s", m);
	session_reply(s, ".");
}

void
login_auth(struct session *s, int argc, char **argv)
{
	const char *offered = login_sasl_mechanisms(s);
	if (argc == 0) {
		login_auth_list(s, offered);   /* not in RFC 5034 */
		return;
	}
	char mech[IPC_MAX_SASL_MECH + 1];
	size_t mlen = strlen(argv[0]);
	bool found = false;
	if (mlen < sizeof(mech)) {
		for (size_t i = 0; i <= mlen; i++)
			mech[i] = (char)((argv[0][i] >= 'a' && argv[0][i] <= 'z') ? argv[0][i] - 32 : argv[0][i]);
		char list[256];
		snprintf(list, sizeof(list), "%s", offered);
		for (char *save = NULL, *m = strtok_r(list, " ", &save); m != NULL && !found;
		    m = strtok_r(NULL, " ", &save))
			found = strcmp(m, mech) == 0;
	}
	if (!found) {
		if (mlen < sizeof(mech) && (strcmp(mech, "PLAIN") == 0 || strcmp(mech, "LOGIN") == 0) &&
		    !login_plaintext_allowed(s))
			session_reply(s, LOGIN_PLAINTEXT_REPLY);
		else
			session_reply(s, "-ERR Unsupported authentication mechanism");
		return;
	}
	login_sasl_start(s, mech, argc == 2 ? argv[1] : NULL);
}

static void login_granted(struct session *s, const char *user, const char *location,
    enum uidl_format uidl_format, const char *device, const char *ticket, unsigned expire,
    unsigned login_delay);

/* The client's answer to our success data: only an empty line completes
 * the login. */
static void
login_sasl_final(struct session *s, size_t len)
{
	if (len != 0) {
		login_failed(s, AUTH_RESULT_FAIL);
		return;
	}
	char *user = s->pending_user, *location = s->pending_location;
	char *device = s->pending_device;
	s->pending_user = s->pending_location = s->pending_device = NULL;
	char ticket[sizeof(s->pending_ticket)];
	memcpy(ticket, s->pending_ticket, sizeof(ticket));
	login_sasl_end(s);
	login_granted(s, user, location, s->pending_uidl_format, device != NULL ? device : "", ticket,
	    s->pending_expire, s->pending_login_delay);
	free(user);
	free(location);
	free(device);
}

/* A line from the client during an AUTH exchange. */
static void
login_sasl_line(struct session *s, const char *line, size_t len)
{
	if (strcmp(line, "*") == 0) {
		/* RFC 5034 §4: "*" cancels; the server MUST answer -ERR. */
		login_sasl_cancel(s);
		session_reply(s, "-ERR [AUTH] Authentication cancelled");
		return;
	}
	if (s->sasl_final) {
		login_sasl_final(s, len);
		return;
	}
	unsigned char *raw;
	size_t rawlen;
	if (len > 0 && !base64_decode(line, len, &raw, &rawlen)) {
		/* RFC 5034 §4: undecodable base64 MUST be rejected with -ERR. */
		login_sasl_cancel(s);
		session_reply(s, "-ERR [AUTH] Invalid base64 in authentication response");
		return;
	}
	if (len > 0) {
		secure_wipe(raw, rawlen);
		free(raw);
	}
	const struct ipc_sasl_step m = { .request_id = s->sasl_id, .session_id = s->id, .response = line };
	if (!login_request(s, s->sasl_id, ipc_sasl_step_encode(request_buf, sizeof(request_buf), &m))) {
		login_sasl_end(s);
		session_enter_state(s, SESSION_AUTHORIZATION);
	}
}

void
login_sasl_input(struct session *s, enum session_input what, char *line, size_t len)
{
	switch (what) {
	case SESSION_INPUT_LINE:
		login_sasl_line(s, line, len);
		break;
	case SESSION_INPUT_TOO_LONG:
		login_sasl_cancel(s);
		session_bad_line(s, "[AUTH] Authentication response too long");
		break;
	case SESSION_INPUT_NUL:
		login_sasl_cancel(s);
		session_bad_line(s, "NUL byte in command");
		break;
	}
}

/* --- answers of the auth process, and the maildrop --------------------------- */

/* Any answer but success: back to AUTHORIZATION, the name forgotten. A
 * failed login (wrong credentials by USER/PASS, APOP or AUTH; not a TEMP
 * answer, not a cancelled exchange) counts, and the max_auth_failures-th
 * closes the session, so one connection cannot guess without end
 * (docs/DESIGN.md "Protocol"). */
static void
login_failed(struct session *s, enum auth_result result)
{
	login_sasl_end(s);
	session_enter_state(s, SESSION_AUTHORIZATION);
	login_name_set(s, NULL);
	METRICS_INC(logins[s->login_mech][result == AUTH_RESULT_TEMP ? METRICS_LOGIN_TEMP :
	    METRICS_LOGIN_FAIL]);
	if (result == AUTH_RESULT_TEMP) {
		session_reply(s, LOGIN_TEMP_REPLY);
		return;
	}
	if (++s->auth_failures >= s->worker->config->max_auth_failures) {
		log_info("session %016llx: %u failed logins from %s, closing", (unsigned long long)s->id,
		    s->auth_failures, s->peer);
		session_reply(s, LOGIN_TOO_MANY_REPLY);
		session_close_after_reply(s, "auth-failures");
		return;
	}
	session_reply(s, LOGIN_FAILED_REPLY);
}

/* Whether the maildrop job's result can be served; if not, say why (log
 * and client) and go back to AUTHORIZATION. */
static bool
login_maildrop_usable(struct session *s, struct store_job *job, const char *user)
{
	const struct config *c = s->worker->config;
	if (job->status != STORE_OK) {
		log_warnx("session %016llx: user %s: %s", (unsigned long long)s->id, user,
		    job->error ? job->error : "cannot open the maildrop");
		session_enter_state(s, SESSION_AUTHORIZATION);
		METRICS_INC(logins[s->login_mech][job->status == STORE_IN_USE ? METRICS_LOGIN_IN_USE :
		    METRICS_LOGIN_ERROR]);
		if (job->status == STORE_IN_USE)
			session_reply(s, "-ERR [IN-USE] Mailbox is locked by another POP3 session");
		else if (job->status == STORE_PERM)
			session_reply(s, "-ERR [SYS/PERM] Mailbox is not available, contact the administrator");
		else
			session_reply(s, "-ERR [SYS/TEMP] Mailbox is temporarily unavailable, try again later");
		return false;
	}
	if (job->store->count > c->max_maildrop_messages ||
	    (c->max_maildrop_size > 0 && job->store->total_size > c->max_maildrop_size)) {
		log_warnx("session %016llx: user %s: maildrop of %u messages, %llu octets is over "
		    "max_maildrop_messages/max_maildrop_size", (unsigned long long)s->id, user,
		    job->store->count, (unsigned long long)job->store->total_size);
		uint32_t count = job->store->count;
		/* Unlock before answering: the client may try again at once. */
		job->store->backend->close(job->store);
		job->store = NULL;
		session_enter_state(s, SESSION_AUTHORIZATION);
		METRICS_INC(logins[s->login_mech][METRICS_LOGIN_ERROR]);
		session_reply(s, "-ERR [SYS/PERM] Mailbox is too large for this server "
		    "(%u messages), contact the administrator", count);
		return false;
	}
	return true;
}

/* The store thread has opened (or failed to open) the maildrop of the user
 * in s->pending_user: the end of a login. */
static void
login_maildrop_opened(struct store_job *job, void *arg)
{
	struct session *s = arg;
	char *user = s->pending_user;
	char name[64];
	s->store_job = NULL;
	s->pending_user = NULL;
	str_sanitize(name, sizeof(name), user, strlen(user));
	if (!login_maildrop_usable(s, job, name)) {
		free(user);
		if (s->worker->session_process) {
			/* A session process serves one login; the client may
			 * log in again on a new connection. */
			session_close_after_reply(s, "maildrop-unavailable");
			return;
		}
		session_resume(s);
		return;
	}
	if (job->devices.refusal == DEVICES_DELAY) {
		log_info("session %016llx: user %s: login within the LOGIN-DELAY of %u s refused",
		    (unsigned long long)s->id, name, s->login_delay);
		free(user);
		devices_login_clear(&job->devices);
		job->store->backend->close(job->store);
		job->store = NULL;
		session_enter_state(s, SESSION_AUTHORIZATION);
		session_reply(s, "-ERR [LOGIN-DELAY] Logged in less than %u seconds ago, "
		    "try again later", s->login_delay);
		session_resume(s);
		return;
	}
	if (job->devices.refusal == DEVICES_TOO_MANY) {
		unsigned limit = s->worker->config->max_devices;
		log_info("session %016llx: user %s: new device %s refused: %u devices already",
		    (unsigned long long)s->id, name, job->devices.device, limit);
		free(user);
		/* Unlock before answering: the client may try again at once. */
		devices_login_clear(&job->devices);
		job->store->backend->close(job->store);
		job->store = NULL;
		session_enter_state(s, SESSION_AUTHORIZATION);
		session_reply(s, "-ERR [SYS/PERM] Too many devices for this user (max_devices %u): "
		    "log in from a device used before, or have the administrator free one "
		    "(popbox devices --forget)", limit);
		session_resume(s);
		return;
	}
	s->user = user;   /* the one place: logged in */
	METRICS_INC(logins[s->login_mech][METRICS_LOGIN_OK]);
	s->device = job->devices.device;
	job->devices.device = NULL;
	s->devices = job->devices.state;
	job->devices.state = NULL;
	s->device_slot = job->devices.slot;
	cmd_trans_begin(s, job->store, job->devices.view, job->devices.view_count,
	    job->devices.view_size);
	job->devices.view = NULL;
	job->store = NULL;
	if (s->device != NULL)
		log_info("session %016llx: login user=%s device=%s peer=%s messages=%u of %u",
		    (unsigned long long)s->id, name, s->device, s->peer, s->view_count, s->store->count);
	else
		log_info("session %016llx: login user=%s peer=%s messages=%u", (unsigned long long)s->id,
		    name, s->peer, s->store->count);
	session_reply(s, "+OK Logged in, %u messages (%llu octets)", s->view_count,
	    (unsigned long long)s->view_size);
	session_resume(s);
}

/* device: the separator and the name, or "" (ipc.h). Checked only after
 * the password: a refusal before would tell whether the user exists. Not a
 * failed login. True (answered) when the name is not a device name. */
static bool
login_device_refused(struct session *s, const char *user, const char *device)
{
	if (device[0] == '\0' || device_name_valid(device + 1))
		return false;
	char shown[48];
	str_sanitize(shown, sizeof(shown), device + 1, strlen(device + 1));
	log_info("session %016llx: user %s: invalid device name '%s'", (unsigned long long)s->id,
	    user, shown);
	session_enter_state(s, SESSION_AUTHORIZATION);
	session_reply(s, "-ERR [SYS/PERM] Invalid device name after '%c': use 1 to %d letters, "
	    "digits, '.', '_' or '-'", device[0], DEVICE_NAME_MAX);
	return true;
}

/* Open the maildrop at location on the store thread (a worker's, or a
 * session process's inline one); login_maildrop_opened() answers. expire,
 * login_delay: the user's own (ipc.h's encoding, 0: the config's). */
void
login_open_maildrop(struct session *s, const char *user, const char *location,
    enum uidl_format uidl_format, const char *device, unsigned expire, unsigned login_delay)
{
	const struct config *c = s->worker->config;
	const char *path;
	if (login_device_refused(s, user, device))
		return;
	const struct store_backend *backend = store_backend_for(location, &path);
	if (backend == NULL) {
		log_warnx("session %016llx: user %s: unknown mail location scheme", (unsigned long long)s->id, user);
		METRICS_INC(logins[s->login_mech][METRICS_LOGIN_ERROR]);
		session_enter_state(s, SESSION_AUTHORIZATION);
		session_reply(s, "-ERR [SYS/PERM] Mailbox is not available, contact the administrator");
		return;
	}
	s->pending_user = xstrdup(user);
	struct store_job *job = xcalloc(1, sizeof(*job));
	job->kind = STORE_JOB_OPEN;
	job->backend = backend;
	job->path = xstrdup(path);
	/* The user's own EXPIRE and LOGIN-DELAY (ipc.h's encoding), else
	 * the config's. */
	s->expire_days = expire == 0 ? c->expire_days : expire == 1 ? DEVICES_EXPIRE_NEVER :
	    (int)(expire - 2);
	s->login_delay = login_delay == 0 ? c->login_delay : login_delay - 1;
	job->devices.idle_days = c->device_idle_days;
	job->devices.max_devices = c->max_devices;
	job->devices.expire_days = s->expire_days;
	job->devices.login_delay = s->login_delay;
	if (device[0] != '\0')
		job->devices.device = xstrdup(device + 1);
	job->options.keep_state_dir = device[0] != '\0' || s->login_delay > 0 ||
	    s->expire_days != DEVICES_EXPIRE_NEVER;
	/* The user's own UIDL format (users file), else the config's. */
	job->options.uidl_format = uidl_format != UIDL_FORMAT_UNSET ? uidl_format : c->uidl_format;
	job->uidl_template = xstrdup(c->dovecot_uidl_format);
	job->options.mbox_quoting = c->mbox_format;
	job->options.mbox_lock_wait_ms = c->lock_wait * 1000u;
	job->done = login_maildrop_opened;
	job->arg = s;
	s->store_job = job;
	session_enter_state(s, SESSION_MAILDROP_WAIT);
	store_pool_submit(s->worker->store_pool, job);
}

/* The auth process said OK: serve the session here, or hand it to a
 * session process of its own (a ticket: docs/DESIGN.md "A process per
 * user session"). */
static void
login_granted(struct session *s, const char *user, const char *location,
    enum uidl_format uidl_format, const char *device, const char *ticket, unsigned expire,
    unsigned login_delay)
{
	if (ticket == NULL || ticket[0] == '\0') {
		login_open_maildrop(s, user, location, uidl_format, device, expire, login_delay);
		return;
	}
	if (login_device_refused(s, user, device))
		return;
	char name[64];
	str_sanitize(name, sizeof(name), user, strlen(user));
	log_info("session %016llx: login user=%s peer=%s: to its session process",
	    (unsigned long long)s->id, name, s->peer);
	free(s->user);
	s->user = xstrdup(user);   /* for this worker's log line; the process serves it */
	session_handover(s, ticket, device);
}

void
login_auth_result(struct worker *w, const struct ipc_auth_result *r)
{
	struct session *s;
	uint64_t id = r->request_id;
	for (s = w->auth_pending; s != NULL; s = s->auth_next)
		if (s->auth_request == id)
			break;
	if (s == NULL)
		return;  /* session gone, or an answer to a previous incarnation */
	metrics_auth_latency(monotonic_us() - s->auth_sent_us);
	login_pending_remove(s);
	if (s->freed_pending)
		return;  /* its connection ended in this loop round: it is freed next,
		          * so nothing may start for it (no maildrop job) */
	bool sasl = s->sasl_id == id;
	if (r->result == AUTH_RESULT_CONTINUE && sasl) {
		session_enter_state(s, SESSION_SASL);
		session_reply(s, "+ %s", r->data);
	} else if (r->result == AUTH_RESULT_OK && sasl && r->data[0] != '\0') {
		/* Success with data (SCRAM's server signature): send it as a
		 * last challenge; the empty answer completes the login. */
		s->sasl_final = true;
		s->pending_user = xstrdup(r->user);
		s->pending_location = xstrdup(r->location);
		s->pending_uidl_format = r->uidl_format;
		s->pending_device = xstrdup(r->device != NULL ? r->device : "");
		snprintf(s->pending_ticket, sizeof(s->pending_ticket), "%s", r->ticket ? r->ticket : "");
		s->pending_expire = r->expire;
		s->pending_login_delay = r->login_delay;
		session_enter_state(s, SESSION_SASL);
		session_reply(s, "+ %s", r->data);
	} else if (r->result == AUTH_RESULT_OK) {
		login_sasl_end(s);
		login_granted(s, r->user, r->location, r->uidl_format,
		    r->device != NULL ? r->device : "", r->ticket, r->expire, r->login_delay);
	} else {
		login_failed(s, r->result);
	}
	session_resume(s);
}

void
login_auth_timeout(struct session *s)
{
	login_pending_remove(s);
	log_warnx("session %016llx: no answer from the auth process", (unsigned long long)s->id);
	if (s->sasl_id != 0)
		login_sasl_abort(s);
	login_failed(s, AUTH_RESULT_TEMP);
	session_resume(s);
}

void
login_forget(struct session *s)
{
	login_name_set(s, NULL);
}

void
login_end(struct session *s)
{
	if (s->sasl_id != 0)
		login_sasl_abort(s);
	login_pending_remove(s);
	login_sasl_end(s);
	login_name_set(s, NULL);
	free(s->user);
}

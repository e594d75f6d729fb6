/* POP3 commands (RFC 1939, RFC 2449 CAPA): one table, checked before any
 * handler runs (state, argument count), one reply per command line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "common/log.h"
#include "server/ipc.h"
#include "server/session.h"

/* RFC 1939 §3: keywords are 3 or 4 characters; anything longer is junk. */
#define COMMAND_MAX_KEYWORD 4
/* RFC 1939 §3 and §7: at most two arguments for any command (TOP, APOP). */
#define COMMAND_MAX_ARGS 2

#define ST_AUTH (1u << SESSION_AUTHORIZATION)
#define ST_TRANS (1u << SESSION_TRANSACTION)

struct command {
	const char *name;
	unsigned states;
	int min_args, max_args;   /* max_args -1: the rest of the line is one argument */
	void (*handler)(struct session *s, int argc, char **argv);
};

static uint32_t
live_count(const struct session *s)
{
	return s->store->count - s->deleted_count;
}

static uint64_t
live_size(const struct session *s)
{
	return s->store->total_size - s->deleted_size;
}

/* Parse a message number argument strictly and check it names a message that
 * exists and is not deleted; answers -ERR itself when not. */
static bool
message_arg(struct session *s, const char *arg, uint32_t *idx_r)
{
	uint32_t n;
	if (!parse_u32(arg, UINT32_MAX, &n)) {
		session_reply(s, "-ERR Invalid message number");
		return false;
	}
	if (n == 0 || n > s->store->count) {
		session_reply(s, "-ERR There is no message %u", n);
		return false;
	}
	if (s->deleted[n - 1]) {
		session_reply(s, "-ERR Message %u is deleted", n);
		return false;
	}
	*idx_r = n - 1;
	return true;
}

static void
cmd_capa(struct session *s, int argc, char **argv)
{
	session_reply(s, "+OK Capability list follows");
	session_reply(s, "TOP");
	session_reply(s, "UIDL");
	session_reply(s, "RESP-CODES");
	session_reply(s, "AUTH-RESP-CODE");
	session_reply(s, "PIPELINING");
	if (s->state == SESSION_AUTHORIZATION) {
		if (session_plaintext_allowed(s))
			session_reply(s, "USER");
		const char *mechs = session_sasl_mechanisms(s);
		if (mechs[0] != '\0')
			session_reply(s, "SASL %s", mechs);
		if (s->worker->ssl_ctx != NULL && !s->tls)
			session_reply(s, "STLS");
	}
	session_reply(s, "IMPLEMENTATION popbox");
	session_reply(s, ".");
}

static void
cmd_user(struct session *s, int argc, char **argv)
{
	if (!session_plaintext_allowed(s)) {
		session_reply(s, "-ERR [AUTH] Plaintext authentication is not allowed on an unencrypted connection");
		return;
	}
	free(s->user);
	s->user = xstrdup(argv[0]);
	session_reply(s, "+OK");
}

static void
cmd_pass(struct session *s, int argc, char **argv)
{
	if (!session_plaintext_allowed(s)) {
		session_reply(s, "-ERR [AUTH] Plaintext authentication is not allowed on an unencrypted connection");
		return;
	}
	if (s->user == NULL) {
		session_reply(s, "-ERR USER first");
		return;
	}
	unsigned char buf[IPC_HEADER_SIZE + 8 + IPC_MAX_USER + IPC_MAX_PASSWORD + IPC_MAX_PEER + 3];
	const struct ipc_auth_pass m = { .request_id = ++s->worker->next_request, .session_id = s->id,
	    .user = s->user, .password = argv[0], .peer = s->peer_ip };
	size_t len = ipc_auth_pass_encode(buf, sizeof(buf), &m);
	session_auth_request(s, m.request_id, buf, len);
	secure_wipe(buf, len);
}

static void
cmd_apop(struct session *s, int argc, char **argv)
{
	if (s->apop_stamp[0] == '\0') {
		session_reply(s, "-ERR APOP is not enabled on this server");
		return;
	}
	size_t dlen = strlen(argv[1]);
	if (dlen != 32 || strspn(argv[1], "0123456789abcdefABCDEF") != dlen) {
		session_reply(s, "-ERR [AUTH] Authentication failed");
		return;
	}
	free(s->user);
	s->user = xstrdup(argv[0]);
	unsigned char buf[IPC_HEADER_SIZE + 8 + IPC_MAX_USER + IPC_MAX_APOP_STAMP + IPC_MAX_APOP_DIGEST +
	    IPC_MAX_PEER + 4];
	const struct ipc_auth_apop m = { .request_id = ++s->worker->next_request, .session_id = s->id,
	    .user = s->user, .stamp = s->apop_stamp, .digest = argv[1], .peer = s->peer_ip };
	session_auth_request(s, m.request_id, buf, ipc_auth_apop_encode(buf, sizeof(buf), &m));
}

static void
cmd_stls(struct session *s, int argc, char **argv)
{
	if (s->worker->ssl_ctx == NULL) {
		session_reply(s, "-ERR TLS is not configured on this server");
		return;
	}
	if (s->tls) {
		session_reply(s, "-ERR Already using TLS");
		return;
	}
	session_reply(s, "+OK Begin TLS negotiation now");
	session_starttls(s);
}

static void
cmd_auth(struct session *s, int argc, char **argv)
{
	const char *offered = session_sasl_mechanisms(s);
	if (argc == 0) {
		/* Not in RFC 5034, but old clients ask this way. */
		session_reply(s, "+OK Supported mechanisms follow");
		char list[256];
		snprintf(list, sizeof(list), "%s", offered);
		for (char *save = NULL, *m = strtok_r(list, " ", &save); m != NULL; m = strtok_r(NULL, " ", &save))
			session_reply(s, "%s", m);
		session_reply(s, ".");
		return;
	}
	char mech[32];
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
		    !session_plaintext_allowed(s))
			session_reply(s, "-ERR [AUTH] Plaintext authentication is not allowed on an unencrypted connection");
		else
			session_reply(s, "-ERR Unsupported authentication mechanism");
		return;
	}
	session_sasl_start(s, mech, argc == 2 ? argv[1] : NULL);
}

void
commands_login_done(struct session *s, const char *user, const char *location)
{
	const char *path;
	const struct store_backend *backend = store_backend_for(location, &path);

	free(s->user);
	s->user = xstrdup(user);
	if (backend == NULL) {
		log_warnx("session %016llx: user %s: unknown mail location scheme", (unsigned long long)s->id, user);
		session_enter_state(s, SESSION_AUTHORIZATION);
		session_reply(s, "-ERR [SYS/PERM] Mailbox is not available, contact the administrator");
		return;
	}
	struct store_job *job = xcalloc(1, sizeof(*job));
	job->kind = STORE_JOB_OPEN;
	job->session = s;
	job->backend = backend;
	job->path = xstrdup(path);
	s->store_job = job;
	session_enter_state(s, SESSION_MAILDROP_WAIT);
	worker_store_submit(s->worker, job);
}

void
commands_maildrop_opened(struct session *s, struct store_job *job)
{
	char user[64];
	str_sanitize(user, sizeof(user), s->user, strlen(s->user));
	if (job->status != STORE_OK) {
		log_warnx("session %016llx: user %s: %s", (unsigned long long)s->id, user,
		    job->error ? job->error : "cannot open the maildrop");
		session_enter_state(s, SESSION_AUTHORIZATION);
		switch (job->status) {
		case STORE_IN_USE:
			session_reply(s, "-ERR [IN-USE] Mailbox is locked by another POP3 session");
			break;
		case STORE_PERM:
			session_reply(s, "-ERR [SYS/PERM] Mailbox is not available, contact the administrator");
			break;
		default:
			session_reply(s, "-ERR [SYS/TEMP] Mailbox is temporarily unavailable, try again later");
			break;
		}
		return;
	}
	const struct config *c = s->worker->config;
	if (job->store->count > c->max_maildrop_messages ||
	    (c->max_maildrop_size > 0 && job->store->total_size > c->max_maildrop_size)) {
		log_warnx("session %016llx: user %s: maildrop of %u messages, %llu octets is over "
		    "max_maildrop_messages/max_maildrop_size", (unsigned long long)s->id, user,
		    job->store->count, (unsigned long long)job->store->total_size);
		uint32_t count = job->store->count;
		job->store->backend->close(job->store);
		job->store = NULL;
		session_enter_state(s, SESSION_AUTHORIZATION);
		session_reply(s, "-ERR [SYS/PERM] Mailbox is too large for this server "
		    "(%u messages), contact the administrator", count);
		return;
	}
	s->store = job->store;
	job->store = NULL;
	s->deleted = xcalloc(s->store->count ? s->store->count : 1, sizeof(bool));
	s->deleted_count = 0;
	s->deleted_size = 0;
	session_enter_state(s, SESSION_TRANSACTION);
	log_info("session %016llx: login user=%s peer=%s messages=%u", (unsigned long long)s->id,
	    user, s->peer, s->store->count);
	session_reply(s, "+OK Logged in, %u messages (%llu octets)", s->store->count,
	    (unsigned long long)s->store->total_size);
}

static void
cmd_stat(struct session *s, int argc, char **argv)
{
	session_reply(s, "+OK %u %llu", live_count(s), (unsigned long long)live_size(s));
}

/* Decimal digits of v at p, returns the end. */
static char *
put_u64(char *p, uint64_t v)
{
	char tmp[20];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	while (n > 0)
		*p++ = tmp[--n];
	return p;
}

/* The lines of a LIST or UIDL listing ("N SIZE" or "N UIDL"), formatted in
 * a local buffer and added in large pieces: evbuffer_add_printf per line was
 * a third of the time of a 100,000-message listing. */
static void
list_lines(struct session *s, bool uidl)
{
	struct evbuffer *out = session_output(s);
	char buf[16384], *p = buf;
	for (uint32_t i = 0; i < s->store->count; i++) {
		if (s->deleted[i])
			continue;
		/* "N " + UIDL (at most 70) or SIZE (at most 20) + CRLF */
		if (p > buf + sizeof(buf) - (10 + 1 + UIDL_MAX_LEN + 2)) {
			evbuffer_add(out, buf, (size_t)(p - buf));
			p = buf;
		}
		p = put_u64(p, i + 1);
		*p++ = ' ';
		if (uidl) {
			size_t n = strlen(s->store->messages[i].uidl);
			memcpy(p, s->store->messages[i].uidl, n);
			p += n;
		} else {
			p = put_u64(p, s->store->messages[i].size);
		}
		*p++ = '\r';
		*p++ = '\n';
	}
	memcpy(p, ".\r\n", 3);
	p += 3;
	evbuffer_add(out, buf, (size_t)(p - buf));
}

static void
cmd_list(struct session *s, int argc, char **argv)
{
	uint32_t idx;
	if (argc == 1) {
		if (message_arg(s, argv[0], &idx))
			session_reply(s, "+OK %u %llu", idx + 1, (unsigned long long)s->store->messages[idx].size);
		return;
	}
	session_reply(s, "+OK %u messages (%llu octets)", live_count(s), (unsigned long long)live_size(s));
	list_lines(s, false);
}

static void
cmd_uidl(struct session *s, int argc, char **argv)
{
	uint32_t idx;
	if (argc == 1) {
		if (message_arg(s, argv[0], &idx))
			session_reply(s, "+OK %u %s", idx + 1, s->store->messages[idx].uidl);
		return;
	}
	session_reply(s, "+OK Unique-ID listing follows");
	list_lines(s, true);
}

static void
cmd_retr(struct session *s, int argc, char **argv)
{
	uint32_t idx;
	if (!message_arg(s, argv[0], &idx))
		return;
	s->retr_count++;
	session_stream_start(s, idx, -1);
}

static void
cmd_top(struct session *s, int argc, char **argv)
{
	uint32_t idx, lines;
	if (!message_arg(s, argv[0], &idx))
		return;
	if (!parse_u32(argv[1], UINT32_MAX, &lines)) {
		session_reply(s, "-ERR Invalid number of lines");
		return;
	}
	s->top_count++;
	session_stream_start(s, idx, (int64_t)lines);
}

static void
cmd_dele(struct session *s, int argc, char **argv)
{
	uint32_t idx;
	if (!message_arg(s, argv[0], &idx))
		return;
	s->deleted[idx] = true;
	s->deleted_count++;
	s->deleted_size += s->store->messages[idx].size;
	session_reply(s, "+OK Message %u deleted", idx + 1);
}

static void
cmd_noop(struct session *s, int argc, char **argv)
{
	session_reply(s, "+OK");
}

static void
cmd_rset(struct session *s, int argc, char **argv)
{
	memset(s->deleted, 0, s->store->count * sizeof(bool));
	s->deleted_count = 0;
	s->deleted_size = 0;
	session_reply(s, "+OK %u messages (%llu octets)", s->store->count,
	    (unsigned long long)s->store->total_size);
}

static void
cmd_quit(struct session *s, int argc, char **argv)
{
	if (s->state == SESSION_AUTHORIZATION) {
		session_reply(s, "+OK Bye");
		session_close_after_reply(s, "quit");
		return;
	}
	/* RFC 1939 §6: UPDATE only after QUIT from TRANSACTION. The reply says
	 * +OK only once the removals are durable. */
	session_enter_state(s, SESSION_UPDATE);
	if (s->deleted_count == 0) {
		session_reply(s, "+OK Bye, 0 messages deleted");
		session_close_after_reply(s, "quit");
		return;
	}
	struct store_job *job = xcalloc(1, sizeof(*job));
	job->kind = STORE_JOB_EXPUNGE;
	job->session = s;
	job->store = s->store;               /* the job owns it now */
	job->deleted = xcalloc(s->store->count, sizeof(bool));
	memcpy(job->deleted, s->deleted, s->store->count * sizeof(bool));
	s->store = NULL;
	s->store_job = job;
	worker_store_submit(s->worker, job);
}

void
commands_expunge_done(struct session *s, struct store_job *job)
{
	uint32_t removed = 0;
	for (uint32_t i = 0; i < job->store->count; i++)
		removed += job->deleted[i];
	if (job->status != STORE_OK) {
		log_warnx("session %016llx: removing messages: %s", (unsigned long long)s->id,
		    job->error ? job->error : "failed");
		session_reply(s, "-ERR [SYS/TEMP] Some deleted messages could not be removed");
		job->store->backend->close(job->store);
		job->store = NULL;
		session_close_after_reply(s, "quit-expunge-failed");
		return;
	}
	/* Unlock before the client can read +OK (it may log in again at once). */
	job->store->backend->close(job->store);
	job->store = NULL;
	s->dele_count = removed;
	session_reply(s, "+OK Bye, %u messages deleted", removed);
	session_close_after_reply(s, "quit");
}

static const struct command command_table[] = {
	{ "CAPA", ST_AUTH | ST_TRANS, 0, 0, cmd_capa },
	{ "USER", ST_AUTH, 1, 1, cmd_user },
	{ "PASS", ST_AUTH, 1, -1, cmd_pass },
	{ "APOP", ST_AUTH, 2, 2, cmd_apop },
	{ "STLS", ST_AUTH, 0, 0, cmd_stls },
	{ "AUTH", ST_AUTH, 0, 2, cmd_auth },
	{ "QUIT", ST_AUTH | ST_TRANS, 0, 0, cmd_quit },
	{ "STAT", ST_TRANS, 0, 0, cmd_stat },
	{ "LIST", ST_TRANS, 0, 1, cmd_list },
	{ "UIDL", ST_TRANS, 0, 1, cmd_uidl },
	{ "RETR", ST_TRANS, 1, 1, cmd_retr },
	{ "TOP",  ST_TRANS, 2, 2, cmd_top },
	{ "DELE", ST_TRANS, 1, 1, cmd_dele },
	{ "NOOP", ST_TRANS, 0, 0, cmd_noop },
	{ "RSET", ST_TRANS, 0, 0, cmd_rset },
};

static void
bad_command(struct session *s, const char *what, const char *arg)
{
	char msg[128];
	snprintf(msg, sizeof(msg), "%s %s", what, arg);
	session_bad_line(s, msg);
}

void
commands_dispatch(struct session *s, char *line, size_t len)
{
	char *argv[COMMAND_MAX_ARGS + 1];
	int argc = 0;
	char *p = strchr(line, ' ');
	size_t klen = p ? (size_t)(p - line) : len;
	const struct command *cmd = NULL;

	if (klen >= 3 && klen <= COMMAND_MAX_KEYWORD) {
		for (size_t i = 0; i < N_ELEMENTS(command_table); i++)
			if (strlen(command_table[i].name) == klen &&
			    strncasecmp(command_table[i].name, line, klen) == 0) {
				cmd = &command_table[i];
				break;
			}
	}
	if (cmd == NULL) {
		char name[16];
		str_sanitize(name, sizeof(name), line, klen > 8 ? 8 : klen);
		bad_command(s, "Unknown command", name);
		return;
	}
	if (!(cmd->states & (1u << s->state))) {
		bad_command(s, "Not allowed in this state:", cmd->name);
		return;
	}
	if (p != NULL) {
		*p++ = '\0';
		if (cmd->max_args < 0) {
			argv[argc++] = p;       /* PASS: spaces belong to the password */
		} else {
			/* Arguments are separated by single spaces (RFC 1939 §3);
			 * trailing spaces are tolerated, empty arguments are not. */
			size_t end = strlen(p);
			while (end > 0 && p[end - 1] == ' ')
				p[--end] = '\0';
			while (*p != '\0') {
				if (argc == COMMAND_MAX_ARGS + 1 || *p == ' ') {
					argc = COMMAND_MAX_ARGS + 1;
					break;
				}
				argv[argc++] = p;
				char *sp = strchr(p, ' ');
				if (sp == NULL)
					break;
				*sp = '\0';
				p = sp + 1;
			}
		}
	}
	int max = cmd->max_args < 0 ? 1 : cmd->max_args;
	if (argc < cmd->min_args || argc > max) {
		bad_command(s, "Wrong number of arguments for", cmd->name);
		return;
	}
	cmd->handler(s, argc, argv);
}

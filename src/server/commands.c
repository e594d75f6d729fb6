/* POP3 commands (RFC 1939, RFC 2449 CAPA): one table, checked before any
 * handler runs (state, argument count), one reply per command line. The
 * handlers of login live in login.c, those of TRANSACTION in cmd_trans.c;
 * CAPA and STLS are here. This file is the session's handler (session.h):
 * every input line of a session comes through commands_input(). */
#include "server/commands.h"
#include "server/ipc.h"
#include "server/devices.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "server/metrics.h"
#include "server/cmd_trans.h"
#include "server/login.h"

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

/* EXPIRE (RFC 2449 §6.7) and LOGIN-DELAY (§6.5): before login the
 * config's value, with "USER" where some user has one of their own (the
 * auth process says so, ipc.h IPC_USERS_POLICY); after login the user's. */
static void
commands_capa_policy(struct session *s)
{
	const struct config *c = s->worker->config;
	bool before = s->state == SESSION_AUTHORIZATION;
	int expire = before ? c->expire_days : s->expire_days;
	unsigned delay = before ? c->login_delay : s->login_delay;
	const char *expire_user = before && (s->worker->users_policy & IPC_POLICY_EXPIRE_DIFFERS) ?
	    " USER" : "";
	const char *delay_user = before && (s->worker->users_policy & IPC_POLICY_DELAY_DIFFERS) ?
	    " USER" : "";
	if (expire == DEVICES_EXPIRE_NEVER)
		session_reply(s, "EXPIRE NEVER%s", expire_user);
	else
		session_reply(s, "EXPIRE %d%s", expire, expire_user);
	if (delay > 0 || delay_user[0] != '\0')
		session_reply(s, "LOGIN-DELAY %u%s", delay, delay_user);
}

static void
commands_capa(struct session *s, int argc, char **argv)
{
	session_reply(s, "+OK Capability list follows");
	session_reply(s, "TOP");
	session_reply(s, "UIDL");
	session_reply(s, "RESP-CODES");
	session_reply(s, "AUTH-RESP-CODE");
	session_reply(s, "PIPELINING");
	if (s->state == SESSION_AUTHORIZATION) {
		if (login_plaintext_allowed(s))
			session_reply(s, "USER");
		const char *mechs = login_sasl_mechanisms(s);
		if (mechs[0] != '\0')
			session_reply(s, "SASL %s", mechs);
		if (s->worker->ssl_ctx != NULL && !s->tls)
			session_reply(s, "STLS");
	}
	commands_capa_policy(s);
	session_reply(s, "IMPLEMENTATION popbox");
	session_reply(s, ".");
}

static void
commands_stls(struct session *s, int argc, char **argv)
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
	login_forget(s);   /* everything said in clear */
}

static const struct command command_table[] = {
	{ "CAPA", ST_AUTH | ST_TRANS, 0, 0, commands_capa },
	{ "USER", ST_AUTH, 1, 1, login_user },
	{ "PASS", ST_AUTH, 1, -1, login_pass },
	{ "APOP", ST_AUTH, 2, 2, login_apop },
	{ "STLS", ST_AUTH, 0, 0, commands_stls },
	{ "AUTH", ST_AUTH, 0, 2, login_auth },
	{ "QUIT", ST_AUTH | ST_TRANS, 0, 0, cmd_trans_quit },
	{ "STAT", ST_TRANS, 0, 0, cmd_trans_stat },
	{ "LIST", ST_TRANS, 0, 1, cmd_trans_list },
	{ "UIDL", ST_TRANS, 0, 1, cmd_trans_uidl },
	{ "RETR", ST_TRANS, 1, 1, cmd_trans_retr },
	{ "TOP",  ST_TRANS, 2, 2, cmd_trans_top },
	{ "DELE", ST_TRANS, 1, 1, cmd_trans_dele },
	{ "NOOP", ST_TRANS, 0, 0, cmd_trans_noop },
	{ "RSET", ST_TRANS, 0, 0, cmd_trans_rset },
};

static void
bad_command(struct session *s, const char *what, const char *arg)
{
	char msg[128];
	snprintf(msg, sizeof(msg), "%s %s", what, arg);
	session_bad_line(s, msg);
}

static void
commands_dispatch(struct session *s, char *line, size_t len)
{
	char *argv[COMMAND_MAX_ARGS + 1];
	int argc = 0;
	char *p = strchr(line, ' ');
	size_t klen = p ? (size_t)(p - line) : len;
	const struct command *cmd = NULL;

	metrics_command(line, klen);
	if (klen != 4 || strncasecmp(line, "QUIT", 4) != 0)
		s->probe = false;   /* more than a health check: logged */
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

static void
commands_input(struct session *s, enum session_input what, char *line, size_t len)
{
	if (s->state == SESSION_SASL) {
		login_sasl_input(s, what, line, len);
		return;
	}
	char msg[64];
	switch (what) {
	case SESSION_INPUT_LINE:
		commands_dispatch(s, line, len);
		break;
	case SESSION_INPUT_TOO_LONG:
		snprintf(msg, sizeof(msg), "Command line too long (at most %d octets)", SESSION_MAX_LINE);
		session_bad_line(s, msg);
		break;
	case SESSION_INPUT_NUL:
		session_bad_line(s, "NUL byte in command");
		break;
	}
}

const struct session_handler commands_handler = {
	.start = login_greet,
	.input = commands_input,
	.auth_timeout = login_auth_timeout,
	.end = login_end,
};

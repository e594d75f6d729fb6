/* popboxd.conf parser. The contract (keys, defaults, syntax) is in config.h;
 * this file says why the rules are what they are. */
#include "server/config.h"

#include "common/log.h"
#include "common/util.h"
#include "server/auth_penalty.h"
#include "server/devices.h"
#include "server/limits_popboxd.h"
#include "server/store.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>

/* A config file is written by hand; anything bigger than POPBOXD_CONFIG_MAX
 * (limits_popboxd.h: the same at start-up and reload) is a mistake (a binary
 * or a log given with -c), and refusing it keeps the parser's memory bounded.
 * Longest line: generous for paths and listen lists, still bounded. */
#define CONFIG_LINE_MAX 4096
/* Longest value echoed back in an error message (sanitised, truncated). */
#define CONFIG_ERROR_VALUE_MAX 80

/* Upper bound for durations: a day. Longer timeouts only keep dead sessions. */
#define CONFIG_DURATION_MAX (24u * 60 * 60)
/* RFC 1939 §3: the autologout timer MUST be at least 10 minutes. */
#define CONFIG_IDLE_TIMEOUT_RFC_MIN 600u
#define CONFIG_IDLE_TIMEOUT_DEFAULT 600u
#define CONFIG_LOGIN_TIMEOUT_DEFAULT 180u
/* Workers are per core; more than this is a typo, not a machine. */
#define CONFIG_WORKERS_MAX 64u
#define CONFIG_MAX_CONNECTIONS_DEFAULT 10000u
#define CONFIG_MAX_CONNECTIONS_LIMIT 1000000u
#define CONFIG_MAX_CONNECTIONS_PER_IP_DEFAULT 50u
#define CONFIG_MAX_BAD_COMMANDS_DEFAULT 20u
#define CONFIG_MAX_BAD_COMMANDS_LIMIT 10000u
/* Failed logins before a session is closed: a client with the right
 * password needs one or two tries; each try more is a guess. */
#define CONFIG_MAX_AUTH_FAILURES_DEFAULT 3u
#define CONFIG_MAX_AUTH_FAILURES_LIMIT 1000u
/* Listening sockets in total: each costs a file descriptor in every worker. */
#define CONFIG_LISTEN_MAX 64
#define CONFIG_PORT_MAX 65535u

#define CONFIG_DEFAULT_LISTEN_HOST "127.0.0.1"
#define CONFIG_DEFAULT_LISTEN_PORT "110"
#define CONFIG_DEFAULT_STATE_DIR "/run/popbox"
/* LMTP's spool with delivery as the recipient: anonymous files of the
 * workers, on disk (under systemd's PrivateTmp a directory of its own). */
#define CONFIG_DEFAULT_LMTP_SPOOL_DIR "/var/tmp"
#define CONFIG_DEFAULT_RUN_AS "popbox"
#define CONFIG_DEFAULT_AUTH_USER "popbox-auth"
#define CONFIG_DEFAULT_TLS_MIN_VERSION "TLSv1.2"
#define CONFIG_DEFAULT_PAM_SERVICE "popbox"
/* Debian's first uid of a person's account (adduser.conf FIRST_UID):
 * below are system accounts, which never read mail over POP3. */
#define CONFIG_DEFAULT_FIRST_VALID_UID 1000u
/* A PAM service is a file name in /etc/pam.d. */
#define CONFIG_PAM_SERVICE_MAX 64
/* How long a login waits for another program's mbox lock before
 * [IN-USE]: an MTA's append takes milliseconds, a mutt rewrite of a big
 * mbox seconds; a POP3 client times out after about a minute. */
#define CONFIG_DEFAULT_LOCK_WAIT 10u
/* Mail in (docs/DESIGN.md "Mail in"): LMTP's SIZE and popbox deliver's
 * bound, 64 MiB like the usual MTA defaults' order of magnitude. */
#define CONFIG_MAX_MESSAGE_SIZE_DEFAULT (64ull << 20)
#define CONFIG_LMTP_UNIX_PREFIX "unix:"
/* The LMTP socket: its owner (run_as unless lmtp_socket_owner) and group
 * may connect; Postfix's lmtp client runs as postfix, which the admin
 * names in lmtp_socket_owner or puts in the group. */
#define CONFIG_DEFAULT_LMTP_SOCKET_MODE 0660u
/* RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for the next
 * command; the same bounds each DATA read. */
#define CONFIG_DEFAULT_LMTP_TIMEOUT 300u

struct config_parser;
typedef int config_handler(struct config_parser *p, const char *key, const char *value);

struct config_key {
	const char *name;
	config_handler *handler;
	bool repeatable;
};

/* room for every key of config_keys[] (checked below the table) */
#define CONFIG_KEYS_MAX 128

struct config_parser {
	const char *name;      /* file name for messages */
	const char *base_dir;  /* relative paths resolve here; NULL = leave as is */
	struct config *config;
	unsigned line;
	char *error;
	/* listen and listen_tls collected apart: the struct lists plain first */
	struct config_listen *plain, *tls, *lmtp;
	size_t n_plain, n_tls, n_lmtp;
	bool listen_none;
	unsigned first_line[CONFIG_KEYS_MAX]; /* per config_keys index: line first seen, 0 = never */
};

static int config_error(struct config_parser *p, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void config_listens_free(struct config_listen *l, size_t n);

static int
config_error(struct config_parser *p, const char *fmt, ...)
{
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		fatalx("out of memory");
	va_end(ap);
	free(p->error);
	if (p->line > 0)
		p->error = xasprintf("%s:%u: %s", p->name, p->line, msg);
	else
		p->error = xasprintf("%s: %s", p->name, msg);
	free(msg);
	return -1;
}

/* Values are echoed into errors that end up in logs and terminals: never
 * raw control bytes, never unbounded. */
static void
config_sanitize(char *dst, size_t size, const char *s)
{
	size_t len = strlen(s);
	str_sanitize(dst, size, s, len);
	if (len >= size && size > 4)
		memcpy(dst + size - 4, "...", 4);
}

static int
config_bad_value(struct config_parser *p, const char *key, const char *value,
    const char *expected)
{
	char v[CONFIG_ERROR_VALUE_MAX + 1];
	config_sanitize(v, sizeof(v), value);
	return config_error(p, "bad value '%s' for key '%s': expected %s", v, key, expected);
}

static bool
config_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* Resolve a path relative to the config file's directory, so that a config
 * and its users file can be moved together and the daemon may chdir("/"). */
static char *
config_resolve_path(struct config_parser *p, const char *value)
{
	if (value[0] == '/' || p->base_dir == NULL)
		return xstrdup(value);
	return xasprintf("%s/%s", p->base_dir, value);
}

static int
config_set_string(char **field, char *value)
{
	free(*field);
	*field = value;
	return 0;
}

static int
config_parse_bool(struct config_parser *p, const char *key, const char *value, bool *out)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };

	for (size_t i = 0; i < N_ELEMENTS(yes); i++) {
		if (strcasecmp(value, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(value, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return config_bad_value(p, key, value, "yes or no");
}

/* "600", "600s", "10m", "1h": seconds unless suffixed. Strict like popa3d's
 * number parsing: no sign, no spaces, no fractions, no overflow. */
static int
config_parse_duration(struct config_parser *p, const char *key, const char *value,
    unsigned *out)
{
	size_t len = strlen(value);
	unsigned mult = 1;
	char digits[16];
	uint32_t n;

	if (len > 0) {
		switch (value[len - 1]) {
		case 's': mult = 1; len--; break;
		case 'm': mult = 60; len--; break;
		case 'h': mult = 3600; len--; break;
		default: break;
		}
	}
	if (len == 0 || len >= sizeof(digits))
		goto bad;
	memcpy(digits, value, len);
	digits[len] = '\0';
	if (!parse_u32(digits, CONFIG_DURATION_MAX, &n) || n == 0 ||
	    n > CONFIG_DURATION_MAX / mult)
		goto bad;
	*out = n * mult;
	return 0;
bad:
	return config_bad_value(p, key, value,
	    "a duration of 1 second to 24 hours: seconds, or a number with s, m or h");
}

static int
config_parse_number(struct config_parser *p, const char *key, const char *value,
    unsigned min, unsigned max, unsigned *out)
{
	uint32_t n;
	char expected[64];

	if (!parse_u32(value, max, &n) || n < min) {
		snprintf(expected, sizeof(expected), "a number from %u to %u", min, max);
		return config_bad_value(p, key, value, expected);
	}
	*out = n;
	return 0;
}

/* One "host:port" item. Hosts are kept unresolved (the listener resolves
 * them), but their shape is checked here so typos fail at start-up. */
enum config_listen_kind { CONFIG_LISTEN_PLAIN, CONFIG_LISTEN_TLS, CONFIG_LISTEN_LMTP };

static int
config_parse_listen_item(struct config_parser *p, const char *key, const char *item,
    enum config_listen_kind kind)
{
	const char *expected = "host:port, [IPv6]:port or *:port";
	const char *colon;
	char *host;
	uint32_t port;
	bool tls = kind == CONFIG_LISTEN_TLS;
	struct config_listen **list = kind == CONFIG_LISTEN_TLS ? &p->tls :
	    kind == CONFIG_LISTEN_LMTP ? &p->lmtp : &p->plain;
	size_t *n = kind == CONFIG_LISTEN_TLS ? &p->n_tls :
	    kind == CONFIG_LISTEN_LMTP ? &p->n_lmtp : &p->n_plain;

	if (item[0] == '[') {
		const char *end = strchr(item, ']');
		struct in6_addr a6;
		if (end == NULL || end[1] != ':')
			return config_bad_value(p, key, item, expected);
		host = xstrndup(item + 1, (size_t)(end - item - 1));
		colon = end + 1;
		if (inet_pton(AF_INET6, host, &a6) != 1) {
			free(host);
			return config_bad_value(p, key, item, "a valid IPv6 address in [...]:port");
		}
	} else {
		colon = strrchr(item, ':');
		if (colon == NULL || colon == item)
			return config_bad_value(p, key, item, expected);
		host = xstrndup(item, (size_t)(colon - item));
		if (strchr(host, ':') != NULL) {
			free(host);
			return config_bad_value(p, key, item, "IPv6 addresses in brackets, e.g. [::1]:110");
		}
		if (strcmp(host, "*") != 0) {
			for (const char *c = host; *c != '\0'; c++) {
				if (!(*c >= 'a' && *c <= 'z') && !(*c >= 'A' && *c <= 'Z') &&
				    !(*c >= '0' && *c <= '9') && *c != '.' && *c != '-' && *c != '_') {
					free(host);
					return config_bad_value(p, key, item, expected);
				}
			}
		}
	}
	if (!parse_u32(colon + 1, CONFIG_PORT_MAX, &port) || port == 0) {
		free(host);
		return config_bad_value(p, key, item, "a port from 1 to 65535");
	}
	if (p->n_plain + p->n_tls + p->n_lmtp >= CONFIG_LISTEN_MAX) {
		free(host);
		return config_error(p, "too many listen addresses (at most %d)", CONFIG_LISTEN_MAX);
	}
	/* Two sockets on one address would fail at bind time with a less
	 * helpful message; catch it here with the line number. */
	for (int pass = 0; pass < 3; pass++) {
		const struct config_listen *l = pass == 2 ? p->lmtp : pass ? p->tls : p->plain;
		size_t cnt = pass == 2 ? p->n_lmtp : pass ? p->n_tls : p->n_plain;
		for (size_t i = 0; i < cnt; i++) {
			if (strcmp(l[i].host, host) == 0 && (uint32_t)atoi(l[i].port) == port) {
				char v[CONFIG_ERROR_VALUE_MAX + 1];
				config_sanitize(v, sizeof(v), item);
				free(host);
				return config_error(p, "listen address '%s' given twice", v);
			}
		}
	}
	*list = xrealloc(*list, (*n + 1) * sizeof(**list));
	(*list)[*n].host = host;
	(*list)[*n].port = xasprintf("%u", port);
	(*list)[*n].tls = tls;
	(*n)++;
	return 0;
}

/* listen_lmtp's "unix:PATH": a socket in the file system, for an MTA on
 * this host (Postfix's lmtp:unix:). */
static int
config_parse_lmtp_unix(struct config_parser *p, const char *key, const char *item)
{
	const char *path = item + strlen(CONFIG_LMTP_UNIX_PREFIX);
	struct config *c = p->config;
	struct sockaddr_un sun;

	if (*path == '\0' || path[strlen(path) - 1] == '/')
		return config_bad_value(p, key, item, "unix:/path/of/the/socket");
	char *full = config_resolve_path(p, path);
	if (strlen(full) >= sizeof(sun.sun_path)) {
		free(full);
		return config_bad_value(p, key, item, "a socket path of at most 107 octets");
	}
	for (size_t i = 0; i < c->n_lmtp_unix; i++) {
		if (strcmp(c->lmtp_unix[i], full) == 0) {
			free(full);
			return config_bad_value(p, key, item, "each socket path once");
		}
	}
	if (p->n_plain + p->n_tls + p->n_lmtp + c->n_lmtp_unix >= CONFIG_LISTEN_MAX) {
		free(full);
		return config_error(p, "too many listen addresses (at most %d)", CONFIG_LISTEN_MAX);
	}
	c->lmtp_unix = xrealloc(c->lmtp_unix, (c->n_lmtp_unix + 1) * sizeof(char *));
	c->lmtp_unix[c->n_lmtp_unix++] = full;
	return 0;
}

static int
config_parse_listen_list(struct config_parser *p, const char *key, const char *value,
    enum config_listen_kind kind)
{
	const char *s = value;

	while (*s != '\0') {
		const char *comma = strchr(s, ',');
		size_t len = comma ? (size_t)(comma - s) : strlen(s);
		while (len > 0 && config_is_space(*s)) {
			s++;
			len--;
		}
		while (len > 0 && config_is_space(s[len - 1]))
			len--;
		if (len == 0)
			return config_bad_value(p, key, value, "a comma-separated list without empty items");
		char *item = xstrndup(s, len);
		int r = kind == CONFIG_LISTEN_LMTP &&
		    strncmp(item, CONFIG_LMTP_UNIX_PREFIX, strlen(CONFIG_LMTP_UNIX_PREFIX)) == 0 ?
		    config_parse_lmtp_unix(p, key, item) : config_parse_listen_item(p, key, item, kind);
		free(item);
		if (r < 0)
			return -1;
		if (comma == NULL)
			break;
		s = comma + 1;
		if (*s == '\0')
			return config_bad_value(p, key, value, "a comma-separated list without empty items");
	}
	return 0;
}

static int
config_key_listen(struct config_parser *p, const char *key, const char *value)
{
	/* "none": TLS-only set-ups must be able to turn the default off. */
	if (strcasecmp(value, "none") == 0) {
		if (p->n_plain > 0)
			return config_error(p, "'listen = none' cannot be combined with other listen addresses");
		p->listen_none = true;
		return 0;
	}
	if (p->listen_none)
		return config_error(p, "'listen = none' cannot be combined with other listen addresses");
	return config_parse_listen_list(p, key, value, CONFIG_LISTEN_PLAIN);
}

static int
config_key_listen_tls(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_listen_list(p, key, value, CONFIG_LISTEN_TLS);
}

static int
config_key_listen_lmtp(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_listen_list(p, key, value, CONFIG_LISTEN_LMTP);
}

/* Who may connect to an LMTP TCP listener besides loopback. */
static int
config_key_lmtp_trusted(struct config_parser *p, const char *key, const char *value)
{
	char *copy = xstrdup(value);
	for (char *save = NULL, *t = strtok_r(copy, " ,\t", &save); t != NULL;
	    t = strtok_r(NULL, " ,\t", &save)) {
		struct proxy_cidr cidr;
		if (!proxy_cidr_parse(t, &cidr)) {
			int r = config_bad_value(p, key, t, "networks like 192.0.2.0/24 or 2001:db8::/32");
			free(copy);
			return r;
		}
		struct config *c = p->config;
		c->lmtp_trusted = xrealloc(c->lmtp_trusted, (c->n_lmtp_trusted + 1) * sizeof(cidr));
		c->lmtp_trusted[c->n_lmtp_trusted++] = cidr;
	}
	free(copy);
	return 0;
}

/* An octal file mode of the LMTP socket: 0600, 0660, 0666. */
static int
config_key_lmtp_socket_mode(struct config_parser *p, const char *key, const char *value)
{
	unsigned mode = 0;
	size_t len = strlen(value);

	if (len < 3 || len > 4)
		goto bad;
	for (size_t i = 0; i < len; i++) {
		if (value[i] < '0' || value[i] > '7')
			goto bad;
		mode = mode * 8 + (unsigned)(value[i] - '0');
	}
	if (mode > 0777)
		goto bad;
	p->config->lmtp_socket_mode = mode;
	return 0;
bad:
	return config_bad_value(p, key, value, "an octal mode like 0660");
}

/* "user" or "user:group" (names; checked against the system when the
 * master makes the socket). */
static int
config_key_lmtp_socket_owner(struct config_parser *p, const char *key, const char *value)
{
	const char *colon = strchr(value, ':');
	if (colon == value || (colon != NULL && (colon[1] == '\0' || strchr(colon + 1, ':'))))
		return config_bad_value(p, key, value, "user or user:group");
	return config_set_string(&p->config->lmtp_socket_owner, xstrdup(value));
}

static int
config_key_lmtp_spool_dir(struct config_parser *p, const char *key, const char *value)
{
	return config_set_string(&p->config->lmtp_spool_dir, config_resolve_path(p, value));
}

static int
config_key_lmtp_timeout(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_duration(p, key, value, &p->config->lmtp_timeout);
}

/* One host:port, "none" (the default) turns it off. Parsed like a listen
 * item, into a list of its own. */
static int
config_key_metrics_listen(struct config_parser *p, const char *key, const char *value)
{
	if (strcasecmp(value, "none") == 0)
		return 0;
	if (strchr(value, ',') != NULL)
		return config_bad_value(p, key, value, "one host:port");
	struct config_listen *saved = p->plain;
	size_t n_saved = p->n_plain;
	p->plain = NULL;
	p->n_plain = 0;
	int r = config_parse_listen_item(p, key, value, false);
	struct config_listen *got = p->plain;
	p->plain = saved;
	p->n_plain = n_saved;
	if (r < 0)
		return r;
	if (strcmp(got->host, "*") == 0) {
		config_listens_free(got, 1);
		return config_bad_value(p, key, value, "an address (the metrics are not for everyone)");
	}
	p->config->metrics_listen = got;
	return 0;
}

static int
config_key_tls_cert(struct config_parser *p, const char *key, const char *value)
{
	return config_set_string(&p->config->tls_cert, config_resolve_path(p, value));
}

static int
config_key_tls_key(struct config_parser *p, const char *key, const char *value)
{
	return config_set_string(&p->config->tls_key, config_resolve_path(p, value));
}

static int
config_key_tls_min_version(struct config_parser *p, const char *key, const char *value)
{
	if (strcasecmp(value, "TLSv1.2") == 0)
		return config_set_string(&p->config->tls_min_version, xstrdup("TLSv1.2"));
	if (strcasecmp(value, "TLSv1.3") == 0)
		return config_set_string(&p->config->tls_min_version, xstrdup("TLSv1.3"));
	return config_bad_value(p, key, value, "TLSv1.2 or TLSv1.3");
}

static int
config_key_users(struct config_parser *p, const char *key, const char *value)
{
	/* "pam": Unix accounts through PAM (auth_pam.c), no file. */
	if (strcmp(value, CONFIG_USERS_PAM) == 0) {
		p->config->passdb_pam = true;
		return config_set_string(&p->config->users, xstrdup(value));
	}
	return config_set_string(&p->config->users, config_resolve_path(p, value));
}

static int
config_key_mail(struct config_parser *p, const char *key, const char *value)
{
	static const char *const schemes[] = { "maildir:", "mbox:" };
	const char *path = NULL, *scheme = NULL;

	for (size_t i = 0; i < N_ELEMENTS(schemes); i++) {
		size_t n = strlen(schemes[i]);
		if (strncmp(value, schemes[i], n) == 0 && value[n] != '\0') {
			scheme = schemes[i];
			path = value + n;
		}
	}
	if (path == NULL)
		return config_bad_value(p, key, value, "maildir:PATH or mbox:PATH");
	/* Catch template typos now instead of at every login. */
	for (const char *c = path; *c != '\0'; c++) {
		if (*c == '~' && c != path)
			return config_bad_value(p, key, value, "'~' only at the start of the path");
		if (*c == '~' && c[1] != '\0' && c[1] != '/')
			return config_bad_value(p, key, value, "'~' or '~/...' (the user's home)");
		if (*c != '%')
			continue;
		c++;
		if (*c != 'u' && *c != 'n' && *c != 'd' && *c != '%')
			return config_bad_value(p, key, value, "variables %u, %n, %d or %%");
	}
	/* A relative path is relative to the config file, like users: the
	 * daemon's working directory is not something admins control. The
	 * directory is a literal, so its '%' are escaped for the template. */
	if (path[0] != '/' && path[0] != '~' && p->base_dir != NULL) {
		size_t n = 0;
		for (const char *c = p->base_dir; *c != '\0'; c++)
			n += *c == '%' ? 2 : 1;
		char *dir = xmalloc(n + 1), *d = dir;
		for (const char *c = p->base_dir; *c != '\0'; c++) {
			*d++ = *c;
			if (*c == '%')
				*d++ = '%';
		}
		*d = '\0';
		char *mail = xasprintf("%s%s/%s", scheme, dir, path);
		free(dir);
		return config_set_string(&p->config->mail, mail);
	}
	return config_set_string(&p->config->mail, xstrdup(value));
}

static int
config_key_state_dir(struct config_parser *p, const char *key, const char *value)
{
	return config_set_string(&p->config->state_dir, config_resolve_path(p, value));
}

static int
config_key_run_as(struct config_parser *p, const char *key, const char *value)
{
	return config_set_string(&p->config->run_as, xstrdup(value));
}

static int
config_key_auth_user(struct config_parser *p, const char *key, const char *value)
{
	return config_set_string(&p->config->auth_user, xstrdup(value));
}

static int
config_key_plaintext_auth(struct config_parser *p, const char *key, const char *value)
{
	if (strcmp(value, "tls-or-loopback") == 0)
		p->config->plaintext_auth = PLAINTEXT_TLS_OR_LOOPBACK;
	else if (strcmp(value, "always") == 0)
		p->config->plaintext_auth = PLAINTEXT_ALWAYS;
	else if (strcmp(value, "never") == 0)
		p->config->plaintext_auth = PLAINTEXT_NEVER;
	else
		return config_bad_value(p, key, value, "tls-or-loopback, always or never");
	return 0;
}

static int
config_key_session_process(struct config_parser *p, const char *key, const char *value)
{
	if (strcmp(value, "auto") == 0)
		p->config->session_process = SESSION_PROCESS_AUTO;
	else if (strcmp(value, "worker") == 0)
		p->config->session_process = SESSION_PROCESS_WORKER;
	else if (strcmp(value, "per-user") == 0)
		p->config->session_process = SESSION_PROCESS_PER_USER;
	else
		return config_bad_value(p, key, value, "auto, worker or per-user");
	return 0;
}

static int
config_key_mail_privileged_group(struct config_parser *p, const char *key, const char *value)
{
	/* A group name as useradd takes it, or "none". */
	if (strcmp(value, "none") == 0)
		return config_set_string(&p->config->mail_privileged_group, xstrdup(""));
	if (strlen(value) > 32 || value[0] == '-' ||
	    strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
	    strlen(value))
		return config_bad_value(p, key, value, "a group name, or none");
	return config_set_string(&p->config->mail_privileged_group, xstrdup(value));
}

static int
config_key_session_process_linger(struct config_parser *p, const char *key, const char *value)
{
	if (strcmp(value, "0") == 0) {
		p->config->session_process_linger = 0;
		return 0;
	}
	return config_parse_duration(p, key, value, &p->config->session_process_linger);
}

bool
config_session_per_user(const struct config *config)
{
	return config->session_process == SESSION_PROCESS_PER_USER ||
	    (config->session_process == SESSION_PROCESS_AUTO && config->passdb_pam);
}

bool
config_lmtp_as_recipient(const struct config *config)
{
	return config_session_per_user(config) && config->passdb_pam;
}

static int
config_key_workers(struct config_parser *p, const char *key, const char *value)
{
	uint32_t n;

	if (strcmp(value, "auto") == 0) {
		p->config->workers = 0;
		return 0;
	}
	if (!parse_u32(value, CONFIG_WORKERS_MAX, &n) || n == 0)
		return config_bad_value(p, key, value, "auto or a number from 1 to 64");
	p->config->workers = n;
	return 0;
}

static int
config_key_apop(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_bool(p, key, value, &p->config->apop);
}

/* SASL mechanisms popboxd can serve (GNU SASL in the auth process). */
static const char *const config_known_mechanisms[] = {
	"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-1",
	"PLAIN", "LOGIN", "CRAM-MD5",
};

static int
config_key_auth_mechanisms(struct config_parser *p, const char *key, const char *value)
{
	char *copy = xstrdup(value), *out = xcalloc(1, strlen(value) + 1);
	size_t len = 0;
	for (char *save = NULL, *m = strtok_r(copy, " ,\t", &save); m != NULL;
	    m = strtok_r(NULL, " ,\t", &save)) {
		for (char *c = m; *c != '\0'; c++)
			if (*c >= 'a' && *c <= 'z')
				*c = (char)(*c - 32);
		bool known = false;
		for (size_t i = 0; i < N_ELEMENTS(config_known_mechanisms); i++)
			known |= strcmp(m, config_known_mechanisms[i]) == 0;
		if (!known) {
			int r = config_bad_value(p, key, m,
			    "SCRAM-SHA-256[-PLUS], SCRAM-SHA-1[-PLUS], PLAIN, LOGIN or CRAM-MD5");
			free(copy);
			free(out);
			return r;
		}
		len += (size_t)sprintf(out + len, "%s%s", len ? " " : "", m);
	}
	free(copy);
	return config_set_string(&p->config->auth_mechanisms, out);
}

static int
config_key_sasl_channel_binding(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_bool(p, key, value, &p->config->sasl_channel_binding);
}

static int
config_key_max_maildrop_messages(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_number(p, key, value, 1, 1000000, &p->config->max_maildrop_messages);
}

/* Sizes: octets, or with K, M, G (powers of 1024); 0 = no limit. */
/* A size in octets, or with K, M or G (binary multiples). */
static int
config_parse_size(struct config_parser *p, const char *key, const char *value,
    unsigned long long *out)
{
	char digits[32];
	size_t len = strlen(value);
	uint64_t mult = 1, n;
	if (len > 0 && len < sizeof(digits)) {
		memcpy(digits, value, len + 1);
		char last = digits[len - 1];
		if (last == 'K' || last == 'k' || last == 'M' || last == 'm' || last == 'G' || last == 'g') {
			mult = (last == 'K' || last == 'k') ? 1024ull :
			    (last == 'M' || last == 'm') ? 1024ull * 1024 : 1024ull * 1024 * 1024;
			digits[--len] = '\0';
		}
		if (parse_u64(digits, UINT64_MAX / mult, &n)) {
			*out = n * mult;
			return 0;
		}
	}
	return config_bad_value(p, key, value, "a size in octets, or with K, M or G (0 = no limit)");
}

static int
config_key_max_maildrop_size(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_size(p, key, value, &p->config->max_maildrop_size);
}

static int
config_key_max_message_size(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_size(p, key, value, &p->config->max_message_size);
}

static int
config_key_max_maildrop_size_bounce(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_bool(p, key, value, &p->config->max_maildrop_size_bounce);
}

/* Characters that start a "+detail" in a local part (Postfix's
 * recipient_delimiter): printable, no '@' or space. */
static int
config_key_recipient_delimiter(struct config_parser *p, const char *key, const char *value)
{
	for (const char *c = value; *c != '\0'; c++)
		if (*c == '@' || *c == ' ' || (unsigned char)*c > 0x7e)
			return config_bad_value(p, key, value, "characters like + or -, not @ or space");
	return config_set_string(&p->config->recipient_delimiter, xstrdup(value));
}

static int
config_key_proxy_protocol(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_bool(p, key, value, &p->config->proxy_protocol);
}

static int
config_key_proxy_trusted(struct config_parser *p, const char *key, const char *value)
{
	char *copy = xstrdup(value);
	for (char *save = NULL, *t = strtok_r(copy, " ,\t", &save); t != NULL;
	    t = strtok_r(NULL, " ,\t", &save)) {
		struct proxy_cidr cidr;
		if (!proxy_cidr_parse(t, &cidr)) {
			int r = config_bad_value(p, key, t, "networks like 192.0.2.0/24 or 2001:db8::/32");
			free(copy);
			return r;
		}
		struct config *c = p->config;
		c->proxy_trusted = xrealloc(c->proxy_trusted, (c->n_proxy_trusted + 1) * sizeof(cidr));
		c->proxy_trusted[c->n_proxy_trusted++] = cidr;
	}
	free(copy);
	return 0;
}

static int
config_key_log_debug(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_bool(p, key, value, &p->config->log_debug);
}

static int
config_key_idle_timeout(struct config_parser *p, const char *key, const char *value)
{
	if (config_parse_duration(p, key, value, &p->config->idle_timeout) < 0)
		return -1;
	/* Allowed (tests, hostile networks), but it breaks the RFC: say so. */
	if (p->config->idle_timeout < CONFIG_IDLE_TIMEOUT_RFC_MIN)
		log_warnx("%s:%u: idle_timeout %u s is below the 10 minutes RFC 1939 section 3 requires",
		    p->name, p->line, p->config->idle_timeout);
	return 0;
}

static int
config_key_login_timeout(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_duration(p, key, value, &p->config->login_timeout);
}

static int
config_key_max_connections(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_number(p, key, value, 1, CONFIG_MAX_CONNECTIONS_LIMIT,
	    &p->config->max_connections);
}

static int
config_key_max_connections_per_ip(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_number(p, key, value, 1, CONFIG_MAX_CONNECTIONS_LIMIT,
	    &p->config->max_connections_per_ip);
}

static int
config_key_max_bad_commands(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_number(p, key, value, 1, CONFIG_MAX_BAD_COMMANDS_LIMIT,
	    &p->config->max_bad_commands);
}

static int
config_key_max_auth_failures(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_number(p, key, value, 1, CONFIG_MAX_AUTH_FAILURES_LIMIT,
	    &p->config->max_auth_failures);
}

static int
config_key_auth_penalty_ipv6_prefix(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_number(p, key, value, AUTH_PENALTY_IPV6_PREFIX_MIN,
	    AUTH_PENALTY_IPV6_PREFIX_MAX, &p->config->auth_penalty_ipv6_prefix);
}

/* How an mbox's quoted ">From " lines are read (wire.h). */
static int
config_key_mbox_format(struct config_parser *p, const char *key, const char *value)
{
	if (strcmp(value, "mboxo") == 0)
		p->config->mbox_format = WIRE_FROM_MBOXO;
	else if (strcmp(value, "mboxrd") == 0)
		p->config->mbox_format = WIRE_FROM_MBOXRD;
	else if (strcmp(value, "none") == 0)
		p->config->mbox_format = WIRE_FROM_NONE;
	else
		return config_bad_value(p, key, value, "mboxo, mboxrd or none");
	return 0;
}

static int
config_key_lock_wait(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_duration(p, key, value, &p->config->lock_wait);
}

static int
config_key_uidl_format(struct config_parser *p, const char *key, const char *value)
{
	if (!uidl_format_parse(value, &p->config->uidl_format))
		return config_bad_value(p, key, value, "popbox, dovecot, courier or popa3d");
	return 0;
}

static int
config_key_maildir_trust_ctime(struct config_parser *p, const char *key, const char *value)
{
	if (strcasecmp(value, "auto") == 0)
		p->config->maildir_trust_ctime = STORE_TRUST_CTIME_AUTO;
	else if (strcasecmp(value, "yes") == 0)
		p->config->maildir_trust_ctime = STORE_TRUST_CTIME_YES;
	else if (strcasecmp(value, "no") == 0)
		p->config->maildir_trust_ctime = STORE_TRUST_CTIME_NO;
	else
		return config_bad_value(p, key, value, "auto, yes or no");
	return 0;
}

static int
config_key_log_format(struct config_parser *p, const char *key, const char *value)
{
	if (strcasecmp(value, "text") == 0)
		p->config->log_format = LOG_FORMAT_TEXT;
	else if (strcasecmp(value, "json") == 0)
		p->config->log_format = LOG_FORMAT_JSON;
	else
		return config_bad_value(p, key, value, "text or json");
	return 0;
}

static int
config_key_log_target(struct config_parser *p, const char *key, const char *value)
{
	if (strcasecmp(value, "syslog") == 0)
		p->config->log_target = LOG_TARGET_SYSLOG;
	else if (strcasecmp(value, "stderr") == 0)
		p->config->log_target = LOG_TARGET_STDERR;
	else if (strcasecmp(value, "journal") == 0)
		p->config->log_target = LOG_TARGET_JOURNAL;
	else
		return config_bad_value(p, key, value, "syslog, stderr or journal");
	return 0;
}

static int
config_key_dovecot_uidl_format(struct config_parser *p, const char *key, const char *value)
{
	char *error = NULL;
	if (!uidl_dovecot_template_check(value, &error)) {
		int r = config_error(p, "%s: %s", key, error);
		free(error);
		return r;
	}
	return config_set_string(&p->config->dovecot_uidl_format, xstrdup(value));
}

static int
config_key_pam_service(struct config_parser *p, const char *key, const char *value)
{
	/* A file name in /etc/pam.d: no path, nothing a shell or PAM reads
	 * specially. */
	if (strlen(value) > CONFIG_PAM_SERVICE_MAX || value[0] == '.' ||
	    strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
	    strlen(value))
		return config_bad_value(p, key, value, "a PAM service name (letters, digits, '.', '_', '-')");
	return config_set_string(&p->config->pam_service, xstrdup(value));
}

static int
config_key_first_valid_uid(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_number(p, key, value, 0, UINT32_MAX - 1, &p->config->first_valid_uid);
}

static int
config_key_deny_users(struct config_parser *p, const char *key, const char *value)
{
	/* Names separated by spaces or commas, kept as " a b c " so that a
	 * lookup is a search for " name ". */
	char *copy = xstrdup(value), *save = NULL;
	size_t len = strlen(p->config->deny_users), cap = len + strlen(value) + 3;
	char *list = xmalloc(cap);
	memcpy(list, p->config->deny_users, len + 1);
	for (char *w = strtok_r(copy, " ,\t", &save); w != NULL; w = strtok_r(NULL, " ,\t", &save)) {
		if (len == 0)
			list[len++] = ' ';
		len += (size_t)snprintf(list + len, cap - len, "%s ", w);
	}
	free(copy);
	free(p->config->deny_users);
	p->config->deny_users = list;
	return 0;
}

static int
config_key_devices(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_bool(p, key, value, &p->config->devices);
}

/* One printable character that cannot be in a device name, is not '@'
 * (addresses as user names) and not ':' (the users file's separator). */
static int
config_key_device_separator(struct config_parser *p, const char *key, const char *value)
{
	if (strlen(value) != 1 || (unsigned char)value[0] <= 0x20 || (unsigned char)value[0] > 0x7e ||
	    strchr("@:._-", value[0]) != NULL || isalnum((unsigned char)value[0]))
		return config_bad_value(p, key, value, "one character such as # or +, not a letter, "
		    "digit, space, @, :, '.', '_' or '-'");
	p->config->device_separator = value[0];
	return 0;
}

static int
config_key_device_idle_days(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_number(p, key, value, 1, CONFIG_DEVICE_IDLE_DAYS_MAX,
	    &p->config->device_idle_days);
}

static int
config_key_max_devices(struct config_parser *p, const char *key, const char *value)
{
	return config_parse_number(p, key, value, 1, DEVICES_MAX_LIMIT, &p->config->max_devices);
}

static int
config_key_expire_days(struct config_parser *p, const char *key, const char *value)
{
	if (!devices_parse_expire(value, &p->config->expire_days))
		return config_bad_value(p, key, value, "a number of days (0 to 3650) or never");
	return 0;
}

static int
config_key_login_delay(struct config_parser *p, const char *key, const char *value)
{
	if (!devices_parse_login_delay(value, &p->config->login_delay))
		return config_bad_value(p, key, value,
		    "seconds (0 to 86400), or a number with s, m or h");
	return 0;
}

enum {
	CONFIG_KEY_LISTEN_LMTP = 35,
	CONFIG_KEY_LISTEN_TLS = 1,
	CONFIG_KEY_TLS_CERT = 2,
	CONFIG_KEY_TLS_KEY = 3,
	CONFIG_KEY_USERS = 5,
	CONFIG_KEY_MAIL = 6,
};

/* Indexes above must match this table's order. */
static const struct config_key config_keys[] = {
	{ "listen", config_key_listen, true },
	{ "listen_tls", config_key_listen_tls, true },
	{ "tls_cert", config_key_tls_cert, false },
	{ "tls_key", config_key_tls_key, false },
	{ "tls_min_version", config_key_tls_min_version, false },
	{ "users", config_key_users, false },
	{ "mail", config_key_mail, false },
	{ "state_dir", config_key_state_dir, false },
	{ "run_as", config_key_run_as, false },
	{ "plaintext_auth", config_key_plaintext_auth, false },
	{ "workers", config_key_workers, false },
	{ "apop", config_key_apop, false },
	{ "idle_timeout", config_key_idle_timeout, false },
	{ "login_timeout", config_key_login_timeout, false },
	{ "max_connections", config_key_max_connections, false },
	{ "max_connections_per_ip", config_key_max_connections_per_ip, false },
	{ "max_bad_commands", config_key_max_bad_commands, false },
	{ "log_debug", config_key_log_debug, false },
	{ "auth_mechanisms", config_key_auth_mechanisms, false },
	{ "proxy_protocol", config_key_proxy_protocol, false },
	{ "max_maildrop_messages", config_key_max_maildrop_messages, false },
	{ "max_maildrop_size", config_key_max_maildrop_size, false },
	{ "proxy_trusted", config_key_proxy_trusted, true },
	{ "auth_user", config_key_auth_user, false },
	{ "sasl_channel_binding", config_key_sasl_channel_binding, false },
	{ "auth_penalty_ipv6_prefix", config_key_auth_penalty_ipv6_prefix, false },
	{ "max_auth_failures", config_key_max_auth_failures, false },
	{ "uidl_format", config_key_uidl_format, false },
	{ "dovecot_uidl_format", config_key_dovecot_uidl_format, false },
	{ "pam_service", config_key_pam_service, false },
	{ "first_valid_uid", config_key_first_valid_uid, false },
	{ "deny_users", config_key_deny_users, true },
	{ "max_message_size", config_key_max_message_size, false },
	{ "max_maildrop_size_bounce", config_key_max_maildrop_size_bounce, false },
	{ "recipient_delimiter", config_key_recipient_delimiter, false },
	{ "listen_lmtp", config_key_listen_lmtp, true },
	{ "lmtp_trusted", config_key_lmtp_trusted, true },
	{ "lmtp_socket_mode", config_key_lmtp_socket_mode, false },
	{ "lmtp_socket_owner", config_key_lmtp_socket_owner, false },
	{ "lmtp_timeout", config_key_lmtp_timeout, false },
	{ "devices", config_key_devices, false },
	{ "device_separator", config_key_device_separator, false },
	{ "device_idle_days", config_key_device_idle_days, false },
	{ "max_devices", config_key_max_devices, false },
	{ "metrics_listen", config_key_metrics_listen, false },
	{ "session_process", config_key_session_process, false },
	{ "mail_privileged_group", config_key_mail_privileged_group, false },
	/* new keys at the end: CONFIG_KEY_* above are indexes into this table */
	{ "mbox_format", config_key_mbox_format, false },
	{ "lock_wait", config_key_lock_wait, false },
	{ "expire_days", config_key_expire_days, false },
	{ "login_delay", config_key_login_delay, false },
	{ "maildir_trust_ctime", config_key_maildir_trust_ctime, false },
	{ "session_process_linger", config_key_session_process_linger, false },
	{ "log_format", config_key_log_format, false },
	{ "log_target", config_key_log_target, false },
	{ "lmtp_spool_dir", config_key_lmtp_spool_dir, false },
};

_Static_assert(N_ELEMENTS(config_keys) <= CONFIG_KEYS_MAX, "config_parser.first_line too small");

/* One non-blank, non-comment line, already trimmed. */
static int
config_parse_line(struct config_parser *p, char *line)
{
	char *eq = strchr(line, '=');
	char *key, *value, *end;
	char v[CONFIG_ERROR_VALUE_MAX + 1];
	size_t i;

	if (eq == NULL) {
		config_sanitize(v, sizeof(v), line);
		return config_error(p, "missing '=' in '%s' (expected key = value)", v);
	}
	key = line;
	end = eq;
	while (end > key && config_is_space(end[-1]))
		end--;
	*end = '\0';
	value = eq + 1;
	while (config_is_space(*value))
		value++;
	/* The line is trimmed already, so the value's end is the line's end. */
	if (*key == '\0')
		return config_error(p, "missing key before '='");

	for (i = 0; i < N_ELEMENTS(config_keys); i++)
		if (strcmp(key, config_keys[i].name) == 0)
			break;
	if (i == N_ELEMENTS(config_keys)) {
		config_sanitize(v, sizeof(v), key);
		return config_error(p, "unknown key '%s'", v);
	}

	/* Double quotes keep leading/trailing spaces and make intent explicit;
	 * there are no escapes, so a value cannot contain '"'. */
	if (*value == '"') {
		size_t len = strlen(value);
		if (len < 2 || value[len - 1] != '"' || memchr(value + 1, '"', len - 2) != NULL) {
			config_sanitize(v, sizeof(v), value);
			return config_error(p, "bad quoting in value '%s' for key '%s'", v, key);
		}
		value[len - 1] = '\0';
		value++;
	}
	if (*value == '\0')
		return config_error(p, "empty value for key '%s'", key);
	for (const char *c = value; *c != '\0'; c++) {
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			return config_bad_value(p, key, value, "no control characters");
	}

	if (p->first_line[i] != 0 && !config_keys[i].repeatable) {
		config_sanitize(v, sizeof(v), value);
		return config_error(p, "duplicate key '%s' = '%s' (first set on line %u)", key,
		    v, p->first_line[i]);
	}
	if (p->first_line[i] == 0)
		p->first_line[i] = p->line;
	return config_keys[i].handler(p, key, value);
}

static struct config *
config_new(const char *name)
{
	struct config *c = xcalloc(1, sizeof(*c));
	c->path = xstrdup(name);
	c->tls_min_version = xstrdup(CONFIG_DEFAULT_TLS_MIN_VERSION);
	c->state_dir = xstrdup(CONFIG_DEFAULT_STATE_DIR);
	c->run_as = xstrdup(CONFIG_DEFAULT_RUN_AS);
	c->auth_user = xstrdup(CONFIG_DEFAULT_AUTH_USER);
	c->plaintext_auth = PLAINTEXT_TLS_OR_LOOPBACK;
	c->workers = 0;
	c->apop = false;
	c->idle_timeout = CONFIG_IDLE_TIMEOUT_DEFAULT;
	c->login_timeout = CONFIG_LOGIN_TIMEOUT_DEFAULT;
	c->max_connections = CONFIG_MAX_CONNECTIONS_DEFAULT;
	c->max_connections_per_ip = CONFIG_MAX_CONNECTIONS_PER_IP_DEFAULT;
	c->max_bad_commands = CONFIG_MAX_BAD_COMMANDS_DEFAULT;
	c->max_auth_failures = CONFIG_MAX_AUTH_FAILURES_DEFAULT;
	c->auth_penalty_ipv6_prefix = AUTH_PENALTY_IPV6_PREFIX;
	c->log_debug = false;
	c->max_message_size = CONFIG_MAX_MESSAGE_SIZE_DEFAULT;
	c->auth_mechanisms = xstrdup(CONFIG_DEFAULT_AUTH_MECHANISMS);
	c->sasl_channel_binding = false;
	c->max_maildrop_messages = 1000000;
	c->max_maildrop_size = 0;
	c->uidl_format = UIDL_FORMAT_POPBOX;
	c->dovecot_uidl_format = xstrdup(UIDL_DOVECOT_DEFAULT_TEMPLATE);
	c->pam_service = xstrdup(CONFIG_DEFAULT_PAM_SERVICE);
	c->first_valid_uid = CONFIG_DEFAULT_FIRST_VALID_UID;
	c->deny_users = xstrdup("");
	c->session_process = SESSION_PROCESS_AUTO;
	c->mail_privileged_group = xstrdup(CONFIG_DEFAULT_MAIL_PRIVILEGED_GROUP);
	c->session_process_linger = CONFIG_DEFAULT_SESSION_PROCESS_LINGER;
	c->mbox_format = WIRE_FROM_MBOXO;
	c->lock_wait = CONFIG_DEFAULT_LOCK_WAIT;
	c->lmtp_socket_mode = CONFIG_DEFAULT_LMTP_SOCKET_MODE;
	c->lmtp_timeout = CONFIG_DEFAULT_LMTP_TIMEOUT;
	c->lmtp_spool_dir = xstrdup(CONFIG_DEFAULT_LMTP_SPOOL_DIR);
	c->devices = true;
	c->device_separator = '#';
	c->device_idle_days = CONFIG_DEVICE_IDLE_DAYS_DEFAULT;
	c->max_devices = CONFIG_MAX_DEVICES_DEFAULT;
	c->expire_days = DEVICES_EXPIRE_NEVER;
	c->login_delay = 0;
	return c;
}

static void
config_listens_free(struct config_listen *l, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(l[i].host);
		free(l[i].port);
	}
	free(l);
}

/* A host name of listen_lmtp that only this machine can reach. */
static bool
config_host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (strcmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return false;
}

/* users = pam: PAM checks a password and has no secrets to give, so
 * neither APOP nor SCRAM can work (docs/DESIGN.md, "Unix users"). */
static int
config_finish_pam(struct config_parser *p)
{
	struct config *c = p->config;
	if (c->apop)
		return config_error(p, "apop = yes needs stored secrets; users = pam has none");
	if (strcmp(c->auth_mechanisms, CONFIG_DEFAULT_AUTH_MECHANISMS) == 0)
		return config_set_string(&c->auth_mechanisms, xstrdup("PLAIN LOGIN"));
	char *list = xstrdup(c->auth_mechanisms), *save = NULL;
	for (char *m = strtok_r(list, " ", &save); m != NULL; m = strtok_r(NULL, " ", &save)) {
		if (strcmp(m, "PLAIN") != 0 && strcmp(m, "LOGIN") != 0) {
			int r = config_error(p, "auth_mechanisms: %s needs stored secrets; users = pam "
			    "offers PLAIN and LOGIN only", m);
			free(list);
			return r;
		}
	}
	free(list);
	return 0;
}

/* Checks that need the whole file. Line numbers point at the key that
 * needs the missing one, so the message leads the admin to the right place. */
static int
config_finish(struct config_parser *p)
{
	struct config *c = p->config;

	p->line = 0;
	if (c->users == NULL)
		return config_error(p, "missing required key 'users'");
	if (c->mail == NULL)
		return config_error(p, "missing required key 'mail'");
	if ((c->tls_cert == NULL) != (c->tls_key == NULL)) {
		bool has_cert = c->tls_cert != NULL;
		p->line = p->first_line[has_cert ? CONFIG_KEY_TLS_CERT : CONFIG_KEY_TLS_KEY];
		return config_error(p, "%s is set but %s is missing (give both or neither)",
		    has_cert ? "tls_cert" : "tls_key", has_cert ? "tls_key" : "tls_cert");
	}
	if (p->n_tls > 0 && c->tls_cert == NULL) {
		p->line = p->first_line[CONFIG_KEY_LISTEN_TLS];
		return config_error(p, "listen_tls requires tls_cert and tls_key");
	}
	if (!p->listen_none && p->n_plain == 0) {
		p->plain = xcalloc(1, sizeof(*p->plain));
		p->plain[0].host = xstrdup(CONFIG_DEFAULT_LISTEN_HOST);
		p->plain[0].port = xstrdup(CONFIG_DEFAULT_LISTEN_PORT);
		p->plain[0].tls = false;
		p->n_plain = 1;
	}
	if (p->n_plain + p->n_tls + p->n_lmtp + c->n_lmtp_unix == 0)
		return config_error(p, "no listen addresses ('listen = none' and no listen_tls)");
	/* Anyone who can reach an LMTP port can put mail into every maildrop:
	 * beyond this host only the networks the admin names. */
	for (size_t i = 0; i < p->n_lmtp; i++) {
		if (!config_host_is_loopback(p->lmtp[i].host) && c->n_lmtp_trusted == 0) {
			p->line = p->first_line[CONFIG_KEY_LISTEN_LMTP];
			return config_error(p, "listen_lmtp %s:%s is not a loopback address: "
			    "lmtp_trusted must name who may deliver", p->lmtp[i].host, p->lmtp[i].port);
		}
	}
	/* With per-user session processes the maildrops belong to their
	 * users, and LMTP delivers as the recipient: the master forks the
	 * delivery as the account it looks up itself, a system account
	 * (docs/DESIGN.md "Delivering as the recipient"). A users file's
	 * uid fields are the auth process's word, which a delivery does not
	 * take: there LMTP would write as run_as into maildrops that are not
	 * run_as's, and every delivery would fail for ever. */
	if (p->n_lmtp + c->n_lmtp_unix > 0 && config_session_per_user(c) && !c->passdb_pam) {
		p->line = p->first_line[CONFIG_KEY_LISTEN_LMTP];
		return config_error(p, "listen_lmtp with per-user session processes delivers as the "
		    "recipient's Unix account, which needs users = pam; with a users file use "
		    "session_process = worker");
	}
	if (c->passdb_pam && config_finish_pam(p) < 0)
		return -1;
	if (c->proxy_protocol && c->n_proxy_trusted == 0)
		return config_error(p, "proxy_protocol = yes needs proxy_trusted (the load balancers' networks)");

	c->n_listens = p->n_plain + p->n_tls;
	c->listens = xcalloc(c->n_listens, sizeof(*c->listens));
	if (p->n_plain > 0)
		memcpy(c->listens, p->plain, p->n_plain * sizeof(*p->plain));
	if (p->n_tls > 0)
		memcpy(c->listens + p->n_plain, p->tls, p->n_tls * sizeof(*p->tls));
	free(p->plain);
	free(p->tls);
	p->plain = p->tls = NULL;
	p->n_plain = p->n_tls = 0;
	c->lmtp_listens = p->lmtp;
	c->n_lmtp_listens = p->n_lmtp;
	p->lmtp = NULL;
	p->n_lmtp = 0;
	return 0;
}

static int
config_parse_text(const char *name, const char *base_dir, const char *text, size_t len,
    struct config **config_r, char **error_r)
{
	struct config_parser p;
	const char *s = text, *end = text + len;
	char *line;
	int ret = 0;

	memset(&p, 0, sizeof(p));
	p.name = name;
	p.base_dir = base_dir;
	p.config = config_new(name);
	line = xmalloc(CONFIG_LINE_MAX + 1);

	while (s < end && ret == 0) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		size_t n = nl ? (size_t)(nl - s) : (size_t)(end - s);
		char *a, *b;

		p.line++;
		if (n > CONFIG_LINE_MAX) {
			ret = config_error(&p, "line too long (more than %d bytes)", CONFIG_LINE_MAX);
			break;
		}
		if (memchr(s, '\0', n) != NULL) {
			ret = config_error(&p, "NUL byte in line");
			break;
		}
		memcpy(line, s, n);
		line[n] = '\0';
		s = nl ? nl + 1 : end;

		a = line;
		while (config_is_space(*a))
			a++;
		b = a + strlen(a);
		while (b > a && config_is_space(b[-1]))
			b--;
		*b = '\0';
		/* Comments are whole lines only: values (paths, hashes in
		 * future keys) may legitimately contain '#'. */
		if (*a == '\0' || *a == '#')
			continue;
		ret = config_parse_line(&p, a);
	}
	free(line);
	if (ret == 0)
		ret = config_finish(&p);
	config_listens_free(p.plain, p.n_plain);
	config_listens_free(p.tls, p.n_tls);
	config_listens_free(p.lmtp, p.n_lmtp);
	if (ret < 0) {
		config_free(p.config);
		*config_r = NULL;
		*error_r = p.error;
		return -1;
	}
	*config_r = p.config;
	return 0;
}

/* The directory part of name as written, or NULL when it has none (then
 * relative paths stay relative to the current directory). */
static char *
config_dir_of(const char *name)
{
	const char *slash = strrchr(name, '/');
	if (slash == NULL)
		return NULL;
	if (slash == name)
		return xstrdup("/");
	return xstrndup(name, (size_t)(slash - name));
}

int
config_parse(const char *name, const char *text, struct config **config_r, char **error_r)
{
	char *dir = config_dir_of(name);
	int r = config_parse_text(name, dir, text, strlen(text), config_r, error_r);
	free(dir);
	return r;
}

int
config_load(const char *path, struct config **config_r, char **error_r)
{
	return config_load_text(path, config_r, NULL, error_r);
}

int
config_load_text(const char *path, struct config **config_r, char **text_r, char **error_r)
{
	char *buf, *dir, *absdir;
	size_t len;
	int r;

	*config_r = NULL;
	if (util_read_path_bounded(path, POPBOXD_CONFIG_MAX, 0, &buf, &len, error_r) < 0)
		return -1;
	/* Absolute, so paths stay valid after the daemon changes directory. */
	dir = config_dir_of(path);
	absdir = realpath(dir != NULL ? dir : ".", NULL);
	if (absdir == NULL) {
		*error_r = xasprintf("%s: cannot resolve its directory: %s", path, strerror(errno));
		free(dir);
		free(buf);
		return -1;
	}
	r = config_parse_text(path, absdir, buf, len, config_r, error_r);
	free(absdir);
	free(dir);
	if (r == 0 && text_r != NULL)
		*text_r = buf;   /* parsed, so free of NUL bytes: a C string */
	else
		free(buf);
	return r;
}

void
config_free(struct config *config)
{
	if (config == NULL)
		return;
	free(config->path);
	config_listens_free(config->listens, config->n_listens);
	free(config->tls_cert);
	free(config->tls_key);
	free(config->tls_min_version);
	free(config->auth_mechanisms);
	free(config->proxy_trusted);
	free(config->users);
	free(config->mail);
	free(config->state_dir);
	free(config->run_as);
	free(config->auth_user);
	free(config->dovecot_uidl_format);
	free(config->pam_service);
	free(config->deny_users);
	free(config->mail_privileged_group);
	free(config->recipient_delimiter);
	config_listens_free(config->lmtp_listens, config->n_lmtp_listens);
	for (size_t i = 0; i < config->n_lmtp_unix; i++)
		free(config->lmtp_unix[i]);
	free(config->lmtp_unix);
	free(config->lmtp_trusted);
	free(config->lmtp_socket_owner);
	free(config->lmtp_spool_dir);
	if (config->metrics_listen != NULL)
		config_listens_free(config->metrics_listen, 1);
	free(config);
}

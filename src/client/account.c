#include "client/account.h"
#include "client/oauth2.h"
#include "common/log.h"
#include "common/util.h"

#include <ctype.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* A config line longer than this is an error, not silently cut. */
#define ACCOUNT_MAX_LINE 4096
/* password_command output: only the first line is used, and it is bounded. */
#define ACCOUNT_MAX_SECRET 4096

void
account_init(struct account *a)
{
	memset(a, 0, sizeof(*a));
	a->insecure = -1;
	a->keep = -1;
	a->keep_days = -1;
	a->max_size = -1;
	a->max_message_size = -1;
	a->timeout = -1;
	a->deadline = -1;
	a->allow_plaintext = -1;
	a->pipelining = -1;
}

/* The oauth2_* keys: plain strings (oauth2.c checks them). */
static const struct {
	const char *key;
	size_t offset;
} oauth2_keys[] = {
	{ "oauth2_token_command", offsetof(struct account_oauth2, token_command) },
	{ "oauth2_provider", offsetof(struct account_oauth2, provider) },
	{ "oauth2_client_id", offsetof(struct account_oauth2, client_id) },
	{ "oauth2_client_secret", offsetof(struct account_oauth2, client_secret) },
	{ "oauth2_client_secret_command", offsetof(struct account_oauth2, client_secret_command) },
	{ "oauth2_token_endpoint", offsetof(struct account_oauth2, token_endpoint) },
	{ "oauth2_device_endpoint", offsetof(struct account_oauth2, device_endpoint) },
	{ "oauth2_auth_endpoint", offsetof(struct account_oauth2, auth_endpoint) },
	{ "oauth2_scope", offsetof(struct account_oauth2, scope) },
	{ "oauth2_refresh_token_file", offsetof(struct account_oauth2, refresh_token_file) },
};

static char **
oauth2_field(struct account_oauth2 *o, size_t i)
{
	return (char **)((char *)o + oauth2_keys[i].offset);
}

bool
account_has_oauth2(const struct account *a)
{
	return a->oauth2.token_command != NULL || a->oauth2.client_id != NULL ||
	    a->oauth2.provider != NULL;
}

void
account_free(struct account *a)
{
	for (size_t i = 0; i < N_ELEMENTS(oauth2_keys); i++) {
		char **f = oauth2_field(&a->oauth2, i);
		if (!strcmp(oauth2_keys[i].key, "oauth2_client_secret"))
			free_secret(*f);
		else
			free(*f);
	}
	free(a->name);
	free(a->source);
	free(a->host);
	free(a->port);
	free(a->tls_trust_file);
	free(a->tls_fingerprint);
	free(a->user);
	free_secret(a->password);
	free(a->password_command);
	free(a->auth);
	free(a->deliver_target);
	account_init(a);
}

static bool
parse_bool(const char *v, int *out)
{
	if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcasecmp(v, "on") ||
	    !strcmp(v, "1")) {
		*out = 1;
		return true;
	}
	if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcasecmp(v, "off") ||
	    !strcmp(v, "0")) {
		*out = 0;
		return true;
	}
	return false;
}

bool
account_parse_size(const char *s, int64_t *out)
{
	char num[32];
	size_t n = strlen(s);
	uint64_t mult = 1, v;

	if (n == 0 || n >= sizeof(num))
		return false;
	memcpy(num, s, n + 1);
	char last = (char)toupper((unsigned char)num[n - 1]);
	if (last == 'K' || last == 'M' || last == 'G') {
		mult = last == 'K' ? 1024 : last == 'M' ? 1024 * 1024 : 1024 * 1024 * 1024;
		num[n - 1] = '\0';
	}
	if (!parse_u64(num, (uint64_t)INT64_MAX / mult, &v))
		return false;
	*out = (int64_t)(v * mult);
	return true;
}

static void
set_str(char **field, const char *value)
{
	free(*field);
	*field = xstrdup(value);
}

static bool
has_crlf_nul(const char *s)
{
	return strpbrk(s, "\r\n") != NULL;
}

static bool
set_tls(struct account *a, const char *value, const char *where, struct fetch_error *err)
{
	if (!strcmp(value, "implicit"))
		a->tls = TLS_IMPLICIT;
	else if (!strcmp(value, "starttls"))
		a->tls = TLS_STARTTLS;
	else if (!strcmp(value, "off"))
		a->tls = TLS_OFF;
	else
		return fetch_error_set(err, EX_CONFIG,
		    "%s: tls must be implicit, starttls or off", where);
	return true;
}

static bool
set_auth(struct account *a, const char *value, const char *where, struct fetch_error *err)
{
	static const char *const mechs[] = { "auto", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS",
	    "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER", "APOP", "USER" };
	size_t i;
	for (i = 0; i < N_ELEMENTS(mechs); i++)
		if (!strcasecmp(value, mechs[i]))
			break;
	if (i == N_ELEMENTS(mechs))
		return fetch_error_set(err, EX_CONFIG,
		    "%s: auth must be auto, scram-sha-256-plus, scram-sha-1-plus, scram-sha-256, "
		    "scram-sha-1, plain, login, "
		    "cram-md5, xoauth2, oauthbearer, apop or user", where);
	set_str(&a->auth, mechs[i]);
	return true;
}

/* "KIND:TARGET", KIND one of the delivery backends (deliver.h). */
static bool
set_deliver(struct account *a, const char *value, const char *where,
    struct fetch_error *err)
{
	const char *colon = strchr(value, ':');
	size_t n = colon ? (size_t)(colon - value) : 0;
	enum deliver_kind kind = DELIVER_NONE;

	if (colon != NULL && colon[1] != '\0') {
		if (n == 7 && !strncmp(value, "maildir", 7))
			kind = DELIVER_MAILDIR;
		else if (n == 4 && !strncmp(value, "mbox", 4))
			kind = DELIVER_MBOX;
		else if (n == 3 && !strncmp(value, "mda", 3))
			kind = DELIVER_MDA;
	}
	if (kind == DELIVER_NONE)
		return fetch_error_set(err, EX_CONFIG,
		    "%s: deliver must be maildir:PATH, mbox:PATH or mda:COMMAND", where);
	a->deliver_kind = kind;
	set_str(&a->deliver_target, colon + 1);
	return true;
}

static bool
set_oauth2(struct account *a, const char *key, const char *value, const char *where,
    bool allow_password, struct fetch_error *err)
{
	size_t i;
	for (i = 0; i < N_ELEMENTS(oauth2_keys); i++)
		if (!strcmp(key, oauth2_keys[i].key))
			break;
	if (i == N_ELEMENTS(oauth2_keys))
		return fetch_error_set(err, EX_CONFIG, "%s: unknown key '%s'", where, key);
	bool secret = !strcmp(key, "oauth2_client_secret");
	if (secret && !allow_password)
		return fetch_error_set(err, EX_CONFIG,
		    "%s: a client secret is never accepted on the command line (it would "
		    "show in ps); put it in the accounts file or use "
		    "--oauth2-client-secret-command", where);
	if (value[0] == '\0' || has_crlf_nul(value))
		return fetch_error_set(err, EX_CONFIG, "%s: invalid %s", where, key);
	if (!strcmp(key, "oauth2_provider") && !oauth2_provider_known(value))
		return fetch_error_set(err, EX_CONFIG,
		    "%s: oauth2_provider must be google or microsoft (or leave it out and "
		    "give oauth2_token_endpoint)", where);
	char **f = oauth2_field(&a->oauth2, i);
	if (secret) {
		free_secret(*f);
		*f = xstrdup(value);
	} else {
		set_str(f, value);
	}
	return true;
}

bool
account_set(struct account *a, const char *key, const char *value, const char *where,
    bool allow_password, struct fetch_error *err)
{
	uint64_t u;

	if (!strcmp(key, "host")) {
		set_str(&a->host, value);
	} else if (!strcmp(key, "port")) {
		if (!parse_u64(value, 65535, &u) || u == 0)
			return fetch_error_set(err, EX_CONFIG, "%s: port must be 1..65535", where);
		set_str(&a->port, value);
	} else if (!strcmp(key, "tls")) {
		return set_tls(a, value, where, err);
	} else if (!strcmp(key, "tls_trust_file")) {
		set_str(&a->tls_trust_file, value);
	} else if (!strcmp(key, "tls_fingerprint")) {
		set_str(&a->tls_fingerprint, value);
	} else if (!strcmp(key, "insecure")) {
		if (!parse_bool(value, &a->insecure))
			return fetch_error_set(err, EX_CONFIG, "%s: insecure must be yes or no", where);
	} else if (!strcmp(key, "user")) {
		if (has_crlf_nul(value) || value[0] == '\0')
			return fetch_error_set(err, EX_CONFIG, "%s: invalid user", where);
		set_str(&a->user, value);
	} else if (!strcmp(key, "password")) {
		if (!allow_password)
			return fetch_error_set(err, EX_CONFIG,
			    "%s: a password is never accepted on the command line (it would "
			    "show in ps); put it in the accounts file or use --password-command",
			    where);
		free_secret(a->password);
		a->password = xstrdup(value);
	} else if (!strcmp(key, "password_command")) {
		set_str(&a->password_command, value);
	} else if (!strcmp(key, "auth")) {
		return set_auth(a, value, where, err);
	} else if (!strcmp(key, "deliver")) {
		return set_deliver(a, value, where, err);
	} else if (!strcmp(key, "keep")) {
		if (!parse_bool(value, &a->keep))
			return fetch_error_set(err, EX_CONFIG, "%s: keep must be yes or no", where);
	} else if (!strcmp(key, "keep_days")) {
		if (!parse_u64(value, 100000, &u))
			return fetch_error_set(err, EX_CONFIG,
			    "%s: keep_days must be a number of days", where);
		a->keep_days = (int64_t)u;
	} else if (!strcmp(key, "max_size")) {
		if (!account_parse_size(value, &a->max_size))
			return fetch_error_set(err, EX_CONFIG,
			    "%s: max_size must be octets, optionally with K or M", where);
	} else if (!strcmp(key, "max_message_size")) {
		int64_t v;
		if (!account_parse_size(value, &v) || v == 0)
			return fetch_error_set(err, EX_CONFIG,
			    "%s: max_message_size must be octets (not 0), optionally with K, M "
			    "or G", where);
		a->max_message_size = v;
	} else if (!strcmp(key, "deadline")) {
		if (!parse_u64(value, ACCOUNT_MAX_DEADLINE, &u) || u == 0)
			return fetch_error_set(err, EX_CONFIG,
			    "%s: deadline must be 1..%d seconds", where, ACCOUNT_MAX_DEADLINE);
		a->deadline = (int64_t)u;
	} else if (!strcmp(key, "timeout")) {
		if (!parse_u64(value, 86400, &u) || u == 0)
			return fetch_error_set(err, EX_CONFIG,
			    "%s: timeout must be 1..86400 seconds", where);
		a->timeout = (int64_t)u;
	} else if (!strcmp(key, "allow_plaintext")) {
		if (!parse_bool(value, &a->allow_plaintext))
			return fetch_error_set(err, EX_CONFIG,
			    "%s: allow_plaintext must be yes or no", where);
	} else if (!strcmp(key, "pipelining")) {
		if (!strcmp(value, "auto"))
			a->pipelining = -1;
		else if (!parse_bool(value, &a->pipelining))
			return fetch_error_set(err, EX_CONFIG,
			    "%s: pipelining must be auto, yes or no", where);
	} else if (!strncmp(key, "oauth2_", 7)) {
		return set_oauth2(a, key, value, where, allow_password, err);
	} else {
		return fetch_error_set(err, EX_CONFIG, "%s: unknown key '%s'", where, key);
	}
	return true;
}

static void
over_str(char **dst, const char *src)
{
	if (src != NULL)
		set_str(dst, src);
}

void
account_override(struct account *dst, const struct account *src)
{
	over_str(&dst->host, src->host);
	over_str(&dst->port, src->port);
	if (src->tls != TLS_DEFAULT)
		dst->tls = src->tls;
	over_str(&dst->tls_trust_file, src->tls_trust_file);
	over_str(&dst->tls_fingerprint, src->tls_fingerprint);
	if (src->insecure >= 0)
		dst->insecure = src->insecure;
	over_str(&dst->user, src->user);
	if (src->password_command != NULL) {
		/* a command given for this run replaces a stored password */
		free_secret(dst->password);
		dst->password = NULL;
		set_str(&dst->password_command, src->password_command);
	}
	over_str(&dst->auth, src->auth);
	if (src->deliver_kind != DELIVER_NONE) {
		dst->deliver_kind = src->deliver_kind;
		set_str(&dst->deliver_target, src->deliver_target);
	}
	if (src->keep >= 0)
		dst->keep = src->keep;
	if (src->keep_days >= 0)
		dst->keep_days = src->keep_days;
	if (src->max_size >= 0)
		dst->max_size = src->max_size;
	if (src->max_message_size >= 0)
		dst->max_message_size = src->max_message_size;
	if (src->timeout >= 0)
		dst->timeout = src->timeout;
	if (src->deadline >= 0)
		dst->deadline = src->deadline;
	if (src->allow_plaintext >= 0)
		dst->allow_plaintext = src->allow_plaintext;
	if (src->pipelining >= 0)
		dst->pipelining = src->pipelining;
	for (size_t i = 0; i < N_ELEMENTS(oauth2_keys); i++) {
		char *const *from = oauth2_field((struct account_oauth2 *)&src->oauth2, i);
		if (*from != NULL)
			set_str(oauth2_field(&dst->oauth2, i), *from);
	}
}

static char *
expand_tilde(const char *path)
{
	if (path[0] == '~' && (path[1] == '/' || path[1] == '\0')) {
		const char *home = getenv("HOME");
		if (home != NULL && home[0] != '\0')
			return xasprintf("%s%s", home, path + 1);
	}
	return xstrdup(path);
}

bool
account_finish(struct account *a, struct fetch_error *err)
{
	const char *n = a->name ? a->name : "(command line)";

	if (a->host == NULL)
		return fetch_error_set(err, EX_CONFIG, "account %s: no host", n);
	if (a->user == NULL)
		return fetch_error_set(err, EX_CONFIG, "account %s: no user", n);
	if (a->deliver_kind == DELIVER_NONE)
		return fetch_error_set(err, EX_CONFIG,
		    "account %s: no deliver (maildir:PATH, mbox:PATH or mda:COMMAND)", n);
	if (a->tls == TLS_DEFAULT)
		a->tls = (a->port != NULL && !strcmp(a->port, "995")) || a->port == NULL ?
		    TLS_IMPLICIT : TLS_STARTTLS;
	if (a->port == NULL)
		a->port = xstrdup(a->tls == TLS_IMPLICIT ? "995" : "110");
	if (a->auth == NULL)
		a->auth = xstrdup("auto");
	if (a->keep < 0)
		a->keep = 0;
	if (a->timeout < 0)
		a->timeout = ACCOUNT_DEFAULT_TIMEOUT;
	if (a->max_message_size < 0)
		a->max_message_size = ACCOUNT_DEFAULT_MAX_MESSAGE_SIZE;
	if (a->deadline < 0)
		a->deadline = ACCOUNT_DEFAULT_DEADLINE;
	if (a->allow_plaintext < 0)
		a->allow_plaintext = 0;
	if (a->insecure < 0)
		a->insecure = 0;
	if (a->password != NULL && a->password_command != NULL)
		return fetch_error_set(err, EX_CONFIG,
		    "account %s: set password or password_command, not both", n);
	if (a->deliver_kind != DELIVER_MDA) {
		char *p = expand_tilde(a->deliver_target);
		free(a->deliver_target);
		a->deliver_target = p;
	}
	if (a->oauth2.refresh_token_file != NULL) {
		char *p = expand_tilde(a->oauth2.refresh_token_file);
		free(a->oauth2.refresh_token_file);
		a->oauth2.refresh_token_file = p;
	}
	if (account_has_oauth2(a) && strcmp(a->auth, "auto") != 0 &&
	    strcmp(a->auth, "XOAUTH2") != 0 && strcmp(a->auth, "OAUTHBEARER") != 0)
		return fetch_error_set(err, EX_CONFIG, "account %s: oauth2_* settings give an "
		    "OAuth2 token, which only auth = xoauth2, oauthbearer or auto can use (auth "
		    "is %s)", n, a->auth);
	if (a->oauth2.client_secret != NULL && a->oauth2.client_secret_command != NULL)
		return fetch_error_set(err, EX_CONFIG, "account %s: set oauth2_client_secret or "
		    "oauth2_client_secret_command, not both", n);
	if (a->tls_trust_file != NULL) {
		char *p = expand_tilde(a->tls_trust_file);
		free(a->tls_trust_file);
		a->tls_trust_file = p;
	}
	if (a->name == NULL)
		a->name = xasprintf("%s@%s", a->user, a->host);
	for (const char *p = a->name; *p; p++)
		if (*p == '/' || (unsigned char)*p < 0x20)
			return fetch_error_set(err, EX_CONFIG,
			    "account name '%s' may not contain '/' or control characters", a->name);
	return true;
}

char *
account_default_config_path(void)
{
	const char *x = getenv("XDG_CONFIG_HOME");
	if (x != NULL && x[0] == '/')
		return xasprintf("%s/popbox/accounts.conf", x);
	const char *home = getenv("HOME");
	return xasprintf("%s/.config/popbox/accounts.conf", home ? home : "");
}

static char *
trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = '\0';
	return s;
}

/* A "[account NAME]" line (s, trimmed): a new account at the end of
 * *list. */
static bool
add_section(struct account **list, int *n, char *s, const char *where,
    struct fetch_error *err)
{
	char *end = strchr(s, ']');
	if (end == NULL || *trim(end + 1) != '\0')
		return fetch_error_set(err, EX_CONFIG, "%s: bad section header", where);
	*end = '\0';
	char *inner = trim(s + 1);
	if (strncmp(inner, "account", 7) != 0 || (inner[7] != ' ' && inner[7] != '\t'))
		return fetch_error_set(err, EX_CONFIG, "%s: expected [account NAME]", where);
	char *name = trim(inner + 7);
	if (*name == '\0' || strpbrk(name, " \t/") != NULL)
		return fetch_error_set(err, EX_CONFIG,
		    "%s: account name must be one word without '/'", where);
	for (int i = 0; i < *n; i++)
		if (!strcmp((*list)[i].name, name))
			return fetch_error_set(err, EX_CONFIG, "%s: account %s defined twice",
			    where, name);
	*list = xrealloc(*list, sizeof(**list) * (size_t)(*n + 1));
	account_init(&(*list)[*n]);
	(*list)[*n].name = xstrdup(name);
	(*list)[*n].source = xstrdup(where);
	(*n)++;
	return true;
}

/* A file holding a password must not be readable by group or others. */
static bool
private_file(FILE *f, const char *path, struct fetch_error *err)
{
	struct stat st;
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077) != 0)
		return fetch_error_set(err, EX_CONFIG,
		    "%s holds a password and is readable by others (mode %04o); "
		    "refusing to use it. Fix with: chmod 600 %s",
		    path, (unsigned)(st.st_mode & 07777), path);
	return true;
}

bool
account_load_file(const char *path, bool must_exist, struct account **out, int *count,
    int *jobs, struct fetch_error *err)
{
	if (jobs != NULL)
		*jobs = 0;
	FILE *f = fopen(path, "re");
	struct account *list = NULL;
	int n = 0, lineno = 0;
	bool has_password = false, ok = false;
	char line[ACCOUNT_MAX_LINE + 2];

	*out = NULL;
	*count = 0;
	if (f == NULL) {
		if (errno == ENOENT && !must_exist)
			return true;
		return fetch_error_set(err, EX_CONFIG, "cannot read %s: %s", path, strerror(errno));
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		char where[512];
		lineno++;
		snprintf(where, sizeof(where), "%s:%d", path, lineno);
		size_t len = strlen(line);
		if (len > 0 && line[len - 1] == '\n')
			line[--len] = '\0';
		else if (!feof(f)) {
			fetch_error_set(err, EX_CONFIG, "%s: line too long", where);
			goto out;
		}
		char *s = trim(line);
		if (*s == '\0' || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			if (!add_section(&list, &n, s, where, err))
				goto out;
			continue;
		}
		char *eq = strchr(s, '=');
		if (eq == NULL) {
			fetch_error_set(err, EX_CONFIG, "%s: expected key = value", where);
			goto out;
		}
		*eq = '\0';
		char *key = trim(s), *value = trim(eq + 1);
		if (n == 0 && jobs != NULL && !strcmp(key, "jobs")) {
			uint64_t u;
			if (!parse_u64(value, ACCOUNT_MAX_JOBS, &u) || u == 0) {
				fetch_error_set(err, EX_CONFIG, "%s: jobs must be 1..%d", where,
				    ACCOUNT_MAX_JOBS);
				goto out;
			}
			*jobs = (int)u;
			continue;
		}
		if (n == 0) {
			fetch_error_set(err, EX_CONFIG,
			    "%s: '%s' outside an [account NAME] section", where, key);
			goto out;
		}
		if (!strcmp(key, "password") || !strcmp(key, "oauth2_client_secret"))
			has_password = true;
		if (!account_set(&list[n - 1], key, value, where, true, err))
			goto out;
	}
	if (ferror(f)) {
		fetch_error_set(err, EX_CONFIG, "error reading %s", path);
		goto out;
	}
	if (has_password && !private_file(f, path, err))
		goto out;
	ok = true;
out:
	fclose(f);
	secure_wipe(line, sizeof(line));
	if (!ok) {
		for (int i = 0; i < n; i++)
			account_free(&list[i]);
		free(list);
		errno = 0;	/* not ENOENT: the file is there (account.h) */
		return false;
	}
	*out = list;
	*count = n;
	return true;
}

bool
account_run_secret_command(const struct account *a, const char *command, const char *what,
    char **out, struct fetch_error *err)
{
	*out = NULL;
	FILE *p = popen(command, "re");
	if (p == NULL)
		return fetch_error_set(err, EX_CONFIG, "account %s: cannot run %s: %s",
		    a->name, what, strerror(errno));
	char *buf = xmalloc(ACCOUNT_MAX_SECRET + 2);
	size_t len = 0;
	bool got = fgets(buf, ACCOUNT_MAX_SECRET + 2, p) != NULL;
	if (got)
		len = strcspn(buf, "\r\n");
	/* drain so the command does not die of SIGPIPE */
	char sink[512];
	while (fread(sink, 1, sizeof(sink), p) > 0)
		;
	int st = pclose(p);
	if (!got || len == 0 || len > ACCOUNT_MAX_SECRET || st == -1 || !WIFEXITED(st) ||
	    WEXITSTATUS(st) != 0) {
		secure_wipe(buf, ACCOUNT_MAX_SECRET + 2);
		free(buf);
		return fetch_error_set(err, EX_CONFIG,
		    "account %s: %s failed or printed nothing (exit %d)",
		    a->name, what, st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	}
	buf[len] = '\0';
	*out = buf;
	return true;
}

bool
account_get_password(const struct account *a, char **password, struct fetch_error *err)
{
	*password = NULL;
	if (a->password != NULL) {
		*password = xstrdup(a->password);
		return true;
	}
	if (a->password_command == NULL)
		return true;	/* caller decides if a password was needed */
	return account_run_secret_command(a, a->password_command, "password_command", password,
	    err);
}

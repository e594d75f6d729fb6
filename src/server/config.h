/* popboxd configuration file (design §4, popboxd.conf(5)).
 * Lines "key = value", '#' comments, blank lines. Unknown keys, bad values and
 * duplicate single-valued keys are errors "FILE:LINE: problem". */
#ifndef POPBOX_CONFIG_H
#define POPBOX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

enum plaintext_auth {
	PLAINTEXT_TLS_OR_LOOPBACK = 0, /* default */
	PLAINTEXT_ALWAYS,
	PLAINTEXT_NEVER,
};

struct config_listen {
	char *host;      /* "127.0.0.1", "::1" (no brackets), "*" or "::" for any */
	char *port;      /* "110" */
	bool tls;        /* from listen_tls: implicit TLS */
};

struct config {
	char *path;
	struct config_listen *listens;  /* listen then listen_tls entries */
	size_t n_listens;
	char *tls_cert, *tls_key;       /* NULL = no TLS */
	char *tls_min_version;          /* "TLSv1.2" (default) or "TLSv1.3" */
	char *users;                    /* users file, required */
	char *mail;                     /* "maildir:PATH", required, %u %n %d ~ */
	char *state_dir;                /* default "/run/popbox" */
	char *run_as;                   /* default "popbox" */
	enum plaintext_auth plaintext_auth;
	unsigned workers;               /* 0 = auto (one per core) */
	bool apop;                      /* default no */
	unsigned idle_timeout;          /* seconds, default 600 (RFC 1939 §3) */
	unsigned login_timeout;         /* seconds before auth, default 180 */
	unsigned max_connections;       /* global, default 10000 */
	unsigned max_connections_per_ip;/* default 50 */
	unsigned max_bad_commands;      /* per session, default 20 */
	bool log_debug;                 /* default no */
};

/* Parse FILE. On error returns -1 and *error_r = "FILE:LINE: problem". */
int config_load(const char *path, struct config **config_r, char **error_r);
/* Same, from text in memory; name is used in messages. */
int config_parse(const char *name, const char *text, struct config **config_r, char **error_r);
void config_free(struct config *config);

#endif

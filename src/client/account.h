/* Accounts: the [account NAME] sections of accounts.conf (popbox-accounts.conf(5))
 * and the same keys given as command-line options (--key-with-dashes). */
#ifndef POPBOX_ACCOUNT_H
#define POPBOX_ACCOUNT_H

#include <stdbool.h>
#include <stdint.h>

#include "client/fetch_error.h"

enum account_tls { TLS_DEFAULT = 0, TLS_IMPLICIT, TLS_STARTTLS, TLS_OFF };
enum deliver_kind { DELIVER_NONE = 0, DELIVER_MAILDIR, DELIVER_MBOX, DELIVER_MDA };

/* Every field is "unset" (NULL / -1) until a file or an option sets it, so
 * command-line options can override file values key by key. */
struct account {
	char *name;
	char *source;              /* "FILE:LINE" of the section, or "command line" */
	char *host, *port;
	enum account_tls tls;
	char *tls_trust_file, *tls_fingerprint;
	int insecure;              /* -1 unset, 0, 1 */
	char *user, *password, *password_command;
	char *auth;                /* "auto" or a mechanism name (upper case) */
	enum deliver_kind deliver_kind;
	char *deliver_target;      /* path or command */
	int keep;                  /* -1 unset, 0, 1 */
	int64_t keep_days;         /* -1: keep forever */
	int64_t max_size;          /* -1: no limit */
	int64_t max_message_size;  /* octets, -1: default */
	int64_t timeout;           /* seconds, -1: default */
	int64_t deadline;          /* seconds, -1: default */
	int allow_plaintext;       /* -1 unset, 0, 1 */
	int pipelining;            /* -1 auto, 0 off, 1 on (if offered) */
	struct account_oauth2 {    /* OAuth2 token source (oauth2.h); all NULL: none */
		char *token_command;       /* prints an access token */
		char *provider;            /* preset: google, microsoft */
		char *client_id, *client_secret, *client_secret_command;
		char *token_endpoint, *device_endpoint, *auth_endpoint, *scope;
		char *refresh_token_file;  /* NULL: STATE_DIR/NAME.oauth2 */
	} oauth2;
};

#define ACCOUNT_DEFAULT_TIMEOUT 60
/* The most accounts fetched at once (jobs =): each is a process and a
 * connection; more only hammers the disk and the providers. */
#define ACCOUNT_MAX_JOBS 64
/* Limits against a hostile server (docs/DESIGN.md, "popbox fetch: limits
 * against a hostile server"): the most octets one message may take
 * whatever LIST says, and the longest a session may last. */
#define ACCOUNT_DEFAULT_MAX_MESSAGE_SIZE (INT64_C(1) << 30)
#define ACCOUNT_DEFAULT_DEADLINE 3600
#define ACCOUNT_MAX_DEADLINE (7 * 86400)

/* Every field unset; whatever a held is not freed. */
void account_init(struct account *a);
/* Free every string a owns (all of them) and make it unset again. */
void account_free(struct account *a);

/* Set key (underscore form) to value (copied) from `where` (for
 * messages). allow_password: false for the command line. False with
 * EX_CONFIG for an unknown key or a bad value; a is then unchanged. */
bool account_set(struct account *a, const char *key, const char *value,
    const char *where, bool allow_password, struct fetch_error *err);

/* Copy every set field of src over dst (strings copied). */
void account_override(struct account *dst, const struct account *src);

/* Fill defaults and check that the account is complete (host, user,
 * deliver). Expands ~ in paths. EX_CONFIG on failure. */
bool account_finish(struct account *a, struct fetch_error *err);

/* Read accounts.conf. Refuses (EX_CONFIG) a file that holds a password key
 * and is readable by group or others. Returns the number of accounts in
 * *count and the accounts in *out (xmalloc'd array: the caller frees each
 * with account_free(), then the array), or false with err set (EX_CONFIG)
 * and nothing to free (errno is ENOENT when the file was missing). A
 * missing file with must_exist false is zero accounts. The one key
 * allowed before the first section, jobs = N (1..FETCH_MAX_JOBS of
 * fetch.h), goes to *jobs (0 when absent; jobs may be NULL: then the key
 * is an error). */
bool account_load_file(const char *path, bool must_exist, struct account **out,
    int *count, int *jobs, struct fetch_error *err);

/* Default config path: $XDG_CONFIG_HOME/popbox/accounts.conf or
 * ~/.config/popbox/accounts.conf (xmalloc'd). */
char *account_default_config_path(void);

/* Get the password: the password key, or the first line of
 * password_command's output (run with /bin/sh -c). Caller frees with
 * free_secret(). */
bool account_get_password(const struct account *a, char **password,
    struct fetch_error *err);

/* Run command with /bin/sh -c and return the first line it printed
 * (xmalloc'd, free with free_secret()). what names it in the EX_CONFIG
 * error when it fails or prints nothing ("password_command"). */
bool account_run_secret_command(const struct account *a, const char *command,
    const char *what, char **out, struct fetch_error *err);

/* Does the account name an OAuth2 token source (oauth2_token_command, or
 * oauth2_client_id / oauth2_provider for the built-in refresh flow)? */
bool account_has_oauth2(const struct account *a);

/* Parse "123", "10K", "5M" (1024-based) into octets. */
bool account_parse_size(const char *s, int64_t *out);

#endif

/* popboxd configuration file (popboxd.conf(5)).
 * Lines "key = value", '#' comments, blank lines. Unknown keys, bad values and
 * duplicate single-valued keys are errors "FILE:LINE: problem".
 *
 * Syntax details:
 * - Comments are whole lines only (first non-blank character '#'): a '#'
 *   after a value is part of the value, since paths may contain '#'.
 * - Key and value are trimmed of blanks; a value may be put in double quotes
 *   (no escapes, so it cannot contain '"'); an empty value is an error.
 * - listen and listen_tls may repeat and take comma-separated lists of
 *   "host:port", "[IPv6]:port" or "*:port" (numeric ports). Without any
 *   listen key, plain POP3 listens on 127.0.0.1:110 (even when listen_tls is
 *   given); "listen = none" turns that default off for TLS-only set-ups.
 * - Relative paths in users, tls_cert, tls_key, state_dir and the maildir
 *   path of mail (unless it starts with '~') are resolved relative to the
 *   config file's directory, so the daemon's working directory never
 *   matters: config_load makes them absolute; config_parse uses the
 *   directory part of name, if any, else leaves them as written.
 * - Booleans: yes/no, true/false, on/off, 1/0 (case-insensitive).
 *   Durations: seconds, or a number with suffix s, m or h; 1 s to 24 h.
 *   idle_timeout below 600 s is accepted with a warning (RFC 1939 §3).
 * - mail must be "maildir:PATH" or "mbox:PATH" (a file);
 * - users = pam takes no file (relative paths do not apply); it refuses
 *   apop = yes and auth_mechanisms other than PLAIN and LOGIN;
 *   only %u %n %d %% and a leading "~" or "~/" are allowed in PATH.
 * - tls_cert and tls_key: both or neither; listen_tls requires them. */
#ifndef POPBOX_CONFIG_H
#define POPBOX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "common/wire.h"
#include "server/proxy.h"
#include "server/uidl_migrate.h"

/* Where a logged-in session runs (docs/DESIGN.md "A process per user
 * session"). */
enum session_process {
	SESSION_PROCESS_AUTO = 0,  /* per-user with users = pam, else worker */
	SESSION_PROCESS_WORKER,    /* in the worker that accepted it (run_as) */
	SESSION_PROCESS_PER_USER,  /* a process of its own, as the user's uid */
};

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
	char *auth_user;                /* the auth process's user, default "popbox-auth" */
	enum plaintext_auth plaintext_auth;
	unsigned workers;               /* 0 = auto (one per core) */
	bool apop;                      /* default no */
	unsigned idle_timeout;          /* seconds, default 600 (RFC 1939 §3) */
	unsigned login_timeout;         /* seconds before auth, default 180 */
	unsigned max_connections;       /* global, default 10000 */
	unsigned max_connections_per_ip;/* default 50 */
	unsigned max_bad_commands;      /* per session, default 20 */
	unsigned max_auth_failures;     /* failed logins per session, default 3 */
	/* The failed-login penalty counts an IPv6 source by this prefix
	 * (auth_penalty.h: default 64, bounds there); read at start only. */
	unsigned auth_penalty_ipv6_prefix;
	bool log_debug;                 /* default no */
	/* SASL mechanisms offered (upper case, space separated); PLAIN and LOGIN
	 * only where plaintext_auth allows, -PLUS only over TLS and with
	 * sasl_channel_binding. CRAM-MD5 is off by
	 * default: it needs plaintext-equivalent secrets. */
	char *auth_mechanisms;
	/* Offer the -PLUS mechanisms of auth_mechanisms over TLS and hand the
	 * TLS channel bindings to the auth process; default no (mutt 2.2 picks
	 * -PLUS, cannot bind, and falls out of step: docs/PROTOCOL.md §5). */
	bool sasl_channel_binding;
	/* PROXY protocol v1/v2 on every listener (behind a load balancer); only
	 * connections from proxy_trusted networks are accepted then. */
	/* A maildrop with more messages or octets is refused at login with
	 * [SYS/PERM] (bounded memory and time per session). */
	unsigned max_maildrop_messages;       /* default 1000000 */
	unsigned long long max_maildrop_size; /* octets, 0 = no limit (default) */
	bool proxy_protocol;
	struct proxy_cidr *proxy_trusted;
	size_t n_proxy_trusted;
	/* UIDLs of messages popboxd has not served yet: popbox (default),
	 * dovecot or courier (uidl_migrate.h); a user's "uidl_format=" extra
	 * field overrides it. dovecot_uidl_format: Dovecot's pop3_uidl_format
	 * (default "%08Xu%08Xv"), checked at load. */
	enum uidl_format uidl_format;
	char *dovecot_uidl_format;
	/* users = pam (CONFIG_USERS_PAM): Unix accounts through PAM service
	 * pam_service (default "popbox"); users whose uid is below
	 * first_valid_uid (default 1000) or who are named in deny_users are
	 * refused like a wrong password. deny_users is " a b " (empty: ""). */
	bool passdb_pam;
	char *pam_service;
	unsigned first_valid_uid;
	char *deny_users;
	/* mbox stores: how ">From " lines are read (default mboxo: Debian's
	 * Postfix local(8) quotes "From " lines only, so ">>From " in its
	 * files is text) and how long a login waits for another program's
	 * lock (seconds, default 10). */
	enum wire_from_quoting mbox_format;
	unsigned lock_wait;
	/* Mail in (docs/DESIGN.md "Mail in"). max_message_size: octets, 0 = no
	 * limit, default 64 MiB (LMTP SIZE). max_maildrop_size_bounce: a
	 * delivery over max_maildrop_size fails for good (77, 552) instead of
	 * for now (75, 452). recipient_delimiter: NULL = none. */
	unsigned long long max_message_size;
	bool max_maildrop_size_bounce;
	/* session_process (default auto) and the group a per-user session
	 * process of an mbox user also gets (dot-locks in /var/mail; default
	 * "mail"; "none" in the file, "" here: none). */
	enum session_process session_process;
	char *mail_privileged_group;
	/* How long a user's session process waits for the user's next login
	 * after its last session ended (seconds, default 60; 0: it ends with
	 * its session). */
	unsigned session_process_linger;
	char *recipient_delimiter;
	/* LMTP (docs/DESIGN.md "Mail in"): listen_lmtp's TCP addresses
	 * (tls always false) and unix socket paths (absolute); TCP beyond
	 * loopback needs lmtp_trusted, whose networks (and loopback) may
	 * connect. The unix sockets get lmtp_socket_mode (default 0660) and
	 * lmtp_socket_owner ("user[:group]", NULL = run_as). lmtp_timeout:
	 * seconds a session waits for a command or for more DATA (300). */
	struct config_listen *lmtp_listens;
	size_t n_lmtp_listens;
	char **lmtp_unix;
	size_t n_lmtp_unix;
	struct proxy_cidr *lmtp_trusted;
	size_t n_lmtp_trusted;
	unsigned lmtp_socket_mode;
	char *lmtp_socket_owner;
	unsigned lmtp_timeout;
	/* Where the workers spool LMTP messages when deliveries run as the
	 * recipient (config_lmtp_as_recipient; default /var/tmp): anonymous
	 * files, read by each recipient's delivery process. */
	char *lmtp_spool_dir;
	/* Every device gets every message (docs/DESIGN.md): "USER#DEVICE"
	 * logins when devices (default yes), split at the last
	 * device_separator (default '#'); a device idle for device_idle_days
	 * (default 30) no longer holds messages back; at most max_devices
	 * active devices per user (default 8, at most DEVICES_MAX_LIMIT). */
	bool devices;
	char device_separator;
	unsigned device_idle_days;
	unsigned max_devices;
	/* metrics_listen: where the metrics process serves GET /metrics
	 * (Prometheus text format, docs/DESIGN.md "Metrics"); NULL = off.
	 * Changes need a restart. */
	struct config_listen *metrics_listen;
	/* EXPIRE (RFC 2449 §6.7): days after the last retrieval by every
	 * active device (or by anyone, for a user without devices) when a
	 * message is removed; DEVICES_EXPIRE_NEVER (-1, the default) or
	 * 0..3650. LOGIN-DELAY (§6.5): seconds between two logins of one user
	 * and device, 0 (default) = none. Users may have their own
	 * (expire_days=, login_delay= in the users file). */
	int expire_days;
	unsigned login_delay;
	/* maildir_trust_ctime: enum store_trust_ctime (store.h), default auto. */
	int maildir_trust_ctime;
	/* log_format (enum log_format, default text) and log_target (enum
	 * log_target, default: syslog, stderr with -f); read at start only. */
	int log_format;
	int log_target;
};

#define CONFIG_DEVICE_IDLE_DAYS_DEFAULT 30
#define CONFIG_DEVICE_IDLE_DAYS_MAX 3650
#define CONFIG_MAX_DEVICES_DEFAULT 8

#define CONFIG_USERS_PAM "pam"
#define CONFIG_DEFAULT_MAIL_PRIVILEGED_GROUP "mail"
#define CONFIG_DEFAULT_SESSION_PROCESS_LINGER 60

/* Whether logins of this configuration get a session process of their own. */
bool config_session_per_user(const struct config *config);
/* Whether LMTP delivers as the recipient (a process the master forks as
 * the Unix account): per-user session processes with users = pam. */
bool config_lmtp_as_recipient(const struct config *config);

#define CONFIG_DEFAULT_AUTH_MECHANISMS \
	"SCRAM-SHA-256-PLUS SCRAM-SHA-256 SCRAM-SHA-1-PLUS SCRAM-SHA-1 PLAIN LOGIN"

/* Parse FILE. On error returns -1 and *error_r = "FILE:LINE: problem". A
 * file over POPBOXD_CONFIG_MAX bytes (limits_popboxd.h) is refused:
 * "FILE: file too large (more than N bytes)". */
int config_load(const char *path, struct config **config_r, char **error_r);
/* Same, and on success *text_r = the text parsed (malloc'd), when text_r is
 * not NULL: the master sends it to the children at reload, so they parse
 * exactly what it did. */
int config_load_text(const char *path, struct config **config_r, char **text_r, char **error_r);
/* Same, from text in memory; name is used in messages. */
int config_parse(const char *name, const char *text, struct config **config_r, char **error_r);
void config_free(struct config *config);

#endif

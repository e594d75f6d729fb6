/* popboxd process roles (docs/DESIGN.md "Process model"): master.c supervises, auth.c alone reads
 * secrets, worker.c runs the POP3 sessions on a libevent loop. */
#ifndef POPBOX_POPBOXD_H
#define POPBOX_POPBOXD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "server/config.h"

#define POPBOXD_VERSION "0.1"
#define POPBOXD_MAX_WORKERS 64

/* A bound listening socket, inherited by every worker. */
struct listener {
	int fd;
	bool tls;
	bool lmtp;          /* listen_lmtp: LMTP sessions (lmtp_session.h) */
	bool unix_socket;   /* ... on a unix socket: name is its path */
	dev_t dev;          /* unix_socket: the socket file, removed at exit */
	ino_t ino;          /*   only while it is still ours */
	char *name;         /* "127.0.0.1:110" for logs */
};

/* What a child process is handed by the master at fork. */
struct child_env {
	struct config *config;
	struct listener *listeners;
	size_t n_listeners;
	int auth_fds[POPBOXD_MAX_WORKERS]; /* auth ends, one per worker slot */
	int worker_fds[POPBOXD_MAX_WORKERS];
	unsigned n_workers;
	int control_fd;      /* master <-> this child, SOCK_SEQPACKET */
	unsigned slot;       /* worker slot number */
	uid_t uid;           /* run_as (only used when started as root) */
	gid_t gid;
	uid_t auth_uid;      /* auth_user: the auth process's (same) */
	gid_t auth_gid;
	/* users = pam: group shadow, so that pam_unix reads /etc/shadow in
	 * the auth process; (gid_t)-1 otherwise. */
	gid_t auth_shadow_gid;
	bool drop_privileges;
	struct ssl_ctx_st *ssl_ctx;  /* built by the master before fork; NULL = no TLS */
	struct iplimit *iplimit;     /* shared connection counts per address */
	/* Auth process only: the users file, opened by the master before the
	 * fork (it may be readable by root alone); -1 with users_errno. */
	int users_fd;
	int users_errno;
	/* Auth process only: the SCRAM salt key file in state_dir, opened by
	 * the master (master.c, salt_key_open), or -1. */
	int salt_key_fd;
	/* metrics_listen: the shared counters (metrics.h; NULL = off), and
	 * for the metrics process its bound socket and name. */
	struct metrics *metrics;
	int metrics_fd;
	char *metrics_name;
};

/* What a user's session process is started with (master.c forks it,
 * session_proc.c runs it; docs/DESIGN.md "A process per user session").
 * Connections come later, each as an IPC_SESSION_ADOPT on ctl. */
struct session_proc_start {
	int ctl;                /* SEQPACKET to the master */
	char *user;
	char *location;
	enum uidl_format uidl_format;
	unsigned expire, login_delay;   /* the user's own (ipc.h's encoding) */
};

/* What a delivery process is started with (master.c forks it as the
 * recipient, delivery_proc.c runs it; docs/DESIGN.md "Delivering as the
 * recipient"): every field is the master's but spool_fd (the worker's
 * spool) and sender (the envelope's, for an mbox's From_ line). */
struct delivery_proc_start {
	int ctl;                /* SEQPACKET to the master: the result */
	uint64_t request_id, session_id;
	bool check;             /* RCPT: room for size octets? else deliver */
	uint64_t size;
	int spool_fd;           /* deliver: the message (read with pread) */
	const char *path;       /* the maildrop, scheme removed */
	bool mbox;
	const char *sender;     /* "" null sender */
};

/* Each never returns. The master has already dropped privileges (when
 * env->drop_privileges) to env->auth_uid/auth_gid for auth_main, to
 * env->uid/gid for worker_main. */
void auth_main(struct child_env *env) __attribute__((noreturn));
void worker_main(struct child_env *env) __attribute__((noreturn));
void metrics_main(struct child_env *env) __attribute__((noreturn));
/* Already running as the user (master.c). */
void session_proc_main(struct child_env *env, struct session_proc_start *start)
    __attribute__((noreturn));
/* Already running as the recipient (master.c). */
void delivery_proc_main(const struct config *config, const struct delivery_proc_start *start)
    __attribute__((noreturn));

#endif

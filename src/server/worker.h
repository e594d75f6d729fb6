/* A worker process (worker.c): one libevent loop running every POP3 session
 * of the connections it accepts (docs/DESIGN.md "Process model"). What its sessions share lives
 * in struct worker. */
#ifndef POPBOX_WORKER_H
#define POPBOX_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/config.h"

struct session;
struct lmtp_session;
struct ipc_queue;

struct worker {
	struct event_base *base;
	struct config *config;         /* replaced on reload: read it at each use */
	unsigned slot;
	unsigned n_workers;
	int auth_fd;                   /* SEQPACKET to the auth process (ipc.h) */
	struct ipc_queue *auth_q;      /* sends on auth_fd in order (NULL: none) */
	unsigned users_policy;         /* IPC_POLICY_* from the auth process */
	struct event *auth_ev;
	uint64_t next_request;         /* auth request ids (login.c) */
	uint64_t next_session;         /* session ids (session.c) */
	struct session *auth_pending;  /* sessions waiting for the auth process (login.c) */
	struct session *all;           /* every live session (session.c) */
	char *read_buf;                /* SESSION_READ_CHUNK bytes, shared by sessions */
	char *line_buf;                /* SESSION_MAX_SASL_LINE + 1 bytes */
	char *send_buf;                /* SESSION_SEND_BUF bytes: a whole RETR answer (session.c) */
	struct ssl_ctx_st *ssl_ctx;    /* NULL = no TLS configured */
	struct iplimit *iplimit;       /* NULL = per-address limit not enforced */
	struct store_pool *store_pool; /* the maildrop thread (store_pool.h) */
	/* LMTP's spool writes, fsyncs and deliveries (lmtp_session.c): made
	 * at the first LMTP connection, NULL before. */
	struct store_pool *delivery_pool;
	unsigned sessions;
	struct lmtp_session *lmtp_all;          /* every LMTP session (lmtp_session.c) */
	struct lmtp_session *lmtp_auth_pending; /* waiting for a recipient lookup */
	struct lmtp_session *lmtp_master_pending; /* waiting for a delivery as the recipient */
	unsigned lmtp_sessions;
	struct evconnlistener **listeners;
	size_t n_listeners;
	bool stopping;
	int control_fd;                /* SEQPACKET to the master, -1 = none */
	/* A user's session process (session_proc.c): one login per
	 * connection; the loop ends with the last session once exit_when_idle
	 * is set; session_freed is told of each session's end. */
	bool session_process;
	bool exit_when_idle;
	void (*session_freed)(struct worker *w, uint64_t session_id);
	/* A worker's POP3 listeners are off while its connections
	 * could use up its open files (worker.c); told of each end. */
	void (*connection_ended)(struct worker *w);
};

/* A request to the auth process: sent, or kept in order until its side
 * takes it (ipc_queue.h). -1 with errno when neither. */
int worker_auth_send(struct worker *w, const void *msg, size_t len);

#endif

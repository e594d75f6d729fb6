/* One POP3 session (RFC 1939) inside a worker. Created on accept, freed when
 * the connection ends. Only session_enter_state() changes s->state. */
#ifndef POPBOX_SESSION_H
#define POPBOX_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "common/wire.h"
#include "server/config.h"
#include "server/store.h"

/* RFC 2449 §4: command lines up to 255 octets including CRLF. */
#define SESSION_MAX_LINE 255
/* Output queued beyond this pauses RETR streaming and command processing
 * until the client reads: a slow or hostile reader costs us at most this. */
#define SESSION_OUTPUT_HIGH (256 * 1024)
/* Unprocessed pipelined input beyond this stops reading from the socket. */
#define SESSION_INPUT_HIGH (64 * 1024)
/* File read size while streaming a message. */
#define SESSION_READ_CHUNK (64 * 1024)
/* How long a worker waits for the auth process before answering [SYS/TEMP]. */
#define SESSION_AUTH_TIMEOUT_SECONDS 30
/* SASL continuation lines (RFC 5034 §4) are not bound by the 255-octet
 * command limit; OAuth tokens and Kerberos tickets run to several KiB. */
#define SESSION_MAX_SASL_LINE (12 * 1024)

enum session_state {
	SESSION_AUTHORIZATION = 0,
	SESSION_AUTH_WAIT,      /* credentials sent to the auth process */
	SESSION_SASL,           /* AUTH exchange: next line is a SASL response */
	SESSION_MAILDROP_WAIT,  /* logged in, maildrop being opened off the loop */
	SESSION_TRANSACTION,
	SESSION_UPDATE,
	SESSION_CLOSING,        /* flushing the last reply, then free */
};

struct session {
	uint64_t id;
	struct worker *worker;
	struct bufferevent *bev;
	struct event *timer;          /* idle / login timeout */
	struct event *linger;         /* closing: waiting for TLS records to drain */
	enum session_state state;
	char peer[64];                /* "127.0.0.1:1234" */
	char peer_ip[48];
	bool loopback;
	bool tls;                     /* connection is encrypted */
	bool tls_listener;
	bool tls_shutdown;            /* close_notify sent */

	/* AUTHORIZATION */
	char *user;                   /* from USER, or the logged-in user */
	char apop_stamp[128];         /* greeting timestamp, "" if APOP off */
	uint64_t auth_request;        /* pending request id, 0 = none */
	uint64_t sasl_id;             /* SASL exchange id, 0 = none */
	bool sasl_final;              /* success data sent, waiting for the empty line */
	char *pending_location;       /* login to finish after sasl_final */
	struct session *auth_next, *auth_prev;  /* worker's pending list */
	unsigned bad_commands;
	unsigned auth_failures;

	/* TRANSACTION */
	struct store *store;
	bool *deleted;
	uint32_t deleted_count;
	uint64_t deleted_size;

	/* streaming RETR/TOP */
	bool streaming;
	struct store_stream stream;
	off_t stream_pos;
	struct wire_encoder enc;

	/* input framing */
	bool discarding;              /* inside an over-long line */

	/* accounting for the session log line */
	unsigned retr_count, top_count, dele_count;
	uint64_t bytes_out;
	const char *end_reason;
	bool freed_pending;
	bool ip_counted;              /* counted in worker->iplimit */
	bool total_counted;           /* counted in the all-workers total */
	struct session *all_next, *all_prev;    /* worker's list of sessions */
	struct store_job *store_job;  /* pending maildrop job, NULL = none */
};

/* Maildrop work that can take long (scanning 100 000 files, unlinking many)
 * runs on the worker's store thread, never on the event loop (design §3). */
enum store_job_kind { STORE_JOB_OPEN, STORE_JOB_EXPUNGE };

struct store_job {
	struct store_job *next;
	enum store_job_kind kind;
	struct session *session;      /* NULL once the session has gone */
	const struct store_backend *backend;
	char *path;                   /* OPEN */
	struct store *store;          /* OPEN: result; EXPUNGE: owned by the job */
	bool *deleted;                /* EXPUNGE: copy of the marks */
	enum store_status status;
	char *error;
};

struct worker {
	struct event_base *base;
	struct config *config;
	unsigned slot;
	unsigned n_workers;
	int auth_fd;
	struct event *auth_ev;
	uint64_t next_request;
	uint64_t next_session;
	struct session *auth_pending;  /* sessions waiting for the auth process */
	struct session *all;           /* every live session */
	char *read_buf;                /* SESSION_READ_CHUNK bytes, shared by sessions */
	char *line_buf;                /* SESSION_MAX_SASL_LINE + 1 bytes */
	struct ssl_ctx_st *ssl_ctx;    /* NULL = no TLS configured */
	struct iplimit *iplimit;       /* NULL = per-address limit not enforced */
	struct store_pool *store_pool;
	unsigned sessions;
	struct evconnlistener **listeners;
	size_t n_listeners;
	bool stopping;
};

/* Accept path: take ownership of fd. */
void session_create(struct worker *w, int fd, const struct sockaddr *sa, int salen, bool tls_listener);
/* The auth process answered (r->request_id names the request). */
struct ipc_auth_result;
void session_auth_result(struct worker *w, const struct ipc_auth_result *r);
/* Worker shutdown: end every session without UPDATE. */
void session_close_all(struct worker *w, const char *reason);

/* --- used by commands.c --------------------------------------------------- */
void session_enter_state(struct session *s, enum session_state state);
/* Queue one response line; CRLF is appended. */
void session_reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Queue raw bytes (multi-line bodies). */
void session_write(struct session *s, const void *data, size_t len);
/* The output buffer, with the write event on: use it for every write. */
struct evbuffer *session_output(struct session *s);
/* Flush what is queued, then close: no UPDATE unless done before. */
void session_close_after_reply(struct session *s, const char *reason);
/* Answer a bad command line with -ERR msg, counting it against
 * max_bad_commands (closes the session at the limit). */
void session_bad_line(struct session *s, const char *msg);
/* Whether USER/PASS may be used on this connection now. */
bool session_plaintext_allowed(const struct session *s);
/* Send an encoded request (ipc.h; len 0 = encoding failed) to the auth
 * process; the result for request id arrives in session_auth_result().
 * Returns false (and has answered -ERR) when it cannot be sent. */
bool session_auth_request(struct session *s, uint64_t id, const void *msg, size_t len);
/* Start TLS on this plain connection (STLS): the +OK must be queued. Throws
 * away anything the client sent after the STLS line. */
void session_starttls(struct session *s);
/* Start an AUTH exchange (mechanism already checked). */
void session_sasl_start(struct session *s, const char *mech, const char *initial);
/* Mechanisms offered on this connection now, space separated. */
const char *session_sasl_mechanisms(const struct session *s);
/* Start streaming message idx (RETR when top_lines < 0, else TOP). The +OK line
 * must already be queued. */
void session_stream_start(struct session *s, uint32_t idx, int64_t top_lines);
/* Hand a job to the worker's store thread; session_store_job_done() is
 * called on the event loop when it is finished. */
void worker_store_submit(struct worker *w, struct store_job *job);
/* The store thread(s) of a worker, reporting on base. */
struct store_pool *store_pool_new(struct event_base *base);
void session_store_job_done(struct store_job *job);
void store_job_free(struct store_job *job);
/* commands.c: continue after the maildrop was opened / expunged. */
void commands_maildrop_opened(struct session *s, struct store_job *job);
void commands_expunge_done(struct session *s, struct store_job *job);
/* Dispatch one command line (NUL-terminated, without CRLF). */
void commands_dispatch(struct session *s, char *line, size_t len);
/* After a successful login: open the maildrop and answer. */
void commands_login_done(struct session *s, const char *user, const char *location);

#endif

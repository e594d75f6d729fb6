/* One POP3 session (RFC 1939) inside a worker. Created on accept, freed when
 * the connection ends. Only session_enter_state() changes s->state.
 *
 * session.c is the connection: line framing, replies, back-pressure,
 * streaming of message bodies, the timers, STLS and close. What the lines
 * mean is the business of the session_handler it was created with
 * (commands.c: the command table, which hands login to login.c and the
 * transaction commands to cmd_trans.c); session.c calls nothing else above
 * it. */
#ifndef POPBOX_SESSION_H
#define POPBOX_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "common/wire.h"
#include "server/config.h"
#include "server/ipc.h"
#include "server/store.h"
#include "server/worker.h"

/* RFC 2449 §4: command lines up to 255 octets including CRLF. */
#define SESSION_MAX_LINE 255
/* Output queued beyond this pauses RETR streaming and command processing
 * until the client reads: a slow or hostile reader costs us at most this. */
#define SESSION_OUTPUT_HIGH (256 * 1024)
/* Unprocessed pipelined input beyond this stops reading from the socket. */
#define SESSION_INPUT_HIGH (64 * 1024)
/* File read size while streaming a message. */
#define SESSION_READ_CHUNK (64 * 1024)
/* A status line, one read's worth of message encoded, its end and the
 * terminator: the most one send of a whole RETR or TOP answer holds. */
#define SESSION_SEND_BUF (512 + WIRE_ENCODE_MAX(SESSION_READ_CHUNK) + WIRE_FINISH_MAX + 3)
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
	/* Per-user session processes (docs/DESIGN.md "A process per user
	 * session"), in the worker: */
	SESSION_HANDOVER,       /* logged in; the connection is going to its own process */
	SESSION_RELAY,          /* TLS: relaying plaintext to and from that process */
};

/* What the framing hands up: a complete line, or a line it refused. */
enum session_input {
	SESSION_INPUT_LINE,      /* NUL-terminated, without CRLF */
	SESSION_INPUT_TOO_LONG,  /* over the state's limit; consumed, line NULL */
	SESSION_INPUT_NUL,       /* had a NUL byte; wiped, line NULL */
};

/* The one way session.c calls up (the command-dispatch callback). */
struct session_handler {
	/* The connection is accepted and within the limits: greet. */
	void (*start)(struct session *s);
	/* In AUTHORIZATION, SASL and TRANSACTION, one input line at a time;
	 * no more while the state or back-pressure says wait. */
	void (*input)(struct session *s, enum session_input what, char *line, size_t len);
	/* SESSION_AUTH_WAIT lasted SESSION_AUTH_TIMEOUT_SECONDS. */
	void (*auth_timeout)(struct session *s);
	/* The session is being freed (its log line is written): let go of
	 * everything that refers to it. */
	void (*end)(struct session *s);
};

/* Produces a multi-line answer in pieces (LIST, UIDL): adds the next lines
 * to out and returns true once the answer, terminator included, is
 * complete (session_produce_start). */
typedef bool session_fill_fn(struct session *s, struct evbuffer *out);

struct session {
	uint64_t id;                  /* in every log line about this session */
	struct worker *worker;
	const struct session_handler *handler;
	struct bufferevent *bev;
	/* A plain connection's socket is read by the session itself
	 * (session_recv_cb: one recv per readiness into bev's input) instead
	 * of the bufferevent (ioctl(FIONREAD) + readv per read); NULL under
	 * TLS, after STLS and in a session process, where bev reads. */
	struct event *rev;
	bool read_on;                 /* reading wanted (rev), input high mark aside */
	bool rev_added;               /* rev is pending in the loop */
	struct event *timer;          /* idle / login timeout */
	unsigned timer_secs;          /* the timeout the timer was added with */
	int64_t timer_from;           /* last activity (ms, coarse monotonic clock) */
	struct event *linger;         /* closing: waiting for TLS records to drain */
	enum session_state state;
	char peer[80];                /* "127.0.0.1:1234", "unknown-via-10.0.0.1:1234" */
	char proxy_peer[64];          /* the balancer's side (PROXY header), "" = none */
	uint64_t started_us;          /* monotonic, for the session's duration */
	char peer_ip[48];             /* the client's address, or SESSION_PEER_UNKNOWN */
	bool loopback;
	bool tls;                     /* connection is encrypted */
	bool tls_listener;
	bool tls_shutdown;            /* close_notify sent */
	bool tls_done;                /* handshake completed or failed (counted) */
	/* A PROXY header without a client address (LOCAL, UNKNOWN): the
	 * balancer's own connection, a health check; its end is logged at
	 * debug level while it has sent nothing but QUIT. */
	bool probe;

	/* AUTHORIZATION: login.c owns these and sets each name in one place. */
	char *login_name;             /* the name the client gave (USER, APOP) */
	char *user;                   /* the user the auth process logged in */
	char apop_stamp[128];         /* greeting timestamp, "" if APOP is off */
	uint64_t auth_request;        /* pending request id, 0 = none */
	uint64_t sasl_id;             /* SASL exchange id, 0 = none */
	bool sasl_final;              /* success data sent, waiting for the empty line */
	char *pending_user;           /* the login to finish after sasl_final */
	char *pending_location;
	enum uidl_format pending_uidl_format;  /* with pending_location */
	char *pending_device;         /* with pending_location, as the auth process gave it */
	char pending_ticket[IPC_TICKET_LEN + 1];  /* with pending_location */
	unsigned pending_expire, pending_login_delay;   /* with pending_location (ipc.h) */
	struct session *auth_next, *auth_prev;  /* worker's pending list */
	unsigned auth_failures;       /* failed logins, closed at max_auth_failures */
	int login_mech;               /* enum metrics_mech of the login under way */
	uint64_t auth_sent_us;        /* when the pending request left (monotonic) */
	unsigned bad_commands;

	/* TRANSACTION (cmd_trans.c) */
	struct store *store;
	/* A device's session (docs/DESIGN.md "Every device gets every
	 * message"): its name, the maildrop's device state and the device's
	 * slot in it; the messages it sees are view[0..view_count) (store
	 * indexes), all of them when view is NULL. Message numbers, deleted[]
	 * and list_next count in the view. */
	char *device;
	struct devices *devices;
	int device_slot;
	uint32_t *view;
	uint32_t view_count;
	uint64_t view_size;
	/* The user's EXPIRE (days, DEVICES_EXPIRE_NEVER) and LOGIN-DELAY
	 * (seconds), set at login (the users file's, else the config's). */
	int expire_days;
	unsigned login_delay;
	bool *retrieved;              /* RETR by message (view), for EXPIRE */
	bool *deleted;
	uint32_t deleted_count;
	uint64_t deleted_size;
	uint32_t list_next;           /* LIST/UIDL: next message to list */

	/* a listing being produced as the client reads, NULL = none */
	session_fill_fn *producer;

	/* streaming RETR/TOP */
	bool streaming;
	bool stream_eof;              /* a read came back short: the file ended */
	struct store_stream stream;
	off_t stream_pos;
	ssize_t stream_primed;        /* bytes of the first read in read_buf, -1 = none */
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
	/* Pending maildrop job (store_pool.h), NULL = none. Whoever submits
	 * it sets this and its done() clears it; if the session ends first,
	 * it detaches the job (arg = NULL). */
	struct store_job *store_job;

	/* Handing over to a per-user session process (worker side). */
	char ticket[IPC_TICKET_LEN + 1];
	char *handover_device;        /* the auth answer's device ("" for none) */
	uint64_t handover_request;    /* the IPC_HANDOVER's id, 0 = none sent */
	bool handover_flushing;       /* plain: waiting for our output to drain */
	int relay_fd;                 /* TLS: our end of the relay pair until DONE, else -1 */
	/* Session process: adopted through a worker's TLS relay, which counts
	 * the octets the client gets (metrics). */
	bool relayed;
	struct bufferevent *relay;    /* TLS: the relay to the session process */
};

/* Who a connection handed over to a session process is (session_adopt). */
struct session_origin {
	uint64_t id;                  /* the worker's session id, kept for the logs */
	const char *peer;
	const char *peer_ip;
	bool loopback;
	bool tls;                     /* encrypted by the worker relaying it */
	int mech;                     /* the login's enum metrics_mech */
};

/* The client address of a session whose load balancer did not say who the
 * client is (PROXY v1 UNKNOWN, v2 LOCAL or UNSPEC): not the balancer's
 * address, never loopback; the failed-login penalty and the per-address
 * limit count all such clients as one (docs/DESIGN.md "Behind a load
 * balancer"). Not a numeric address, so it matches no real client. */
#define SESSION_PEER_UNKNOWN "unknown"

/* The buffers a worker's sessions share (read_buf, line_buf, send_buf):
 * made once per loop, before its first session; freed by
 * session_buffers_free. */
void session_buffers_new(struct worker *w);
void session_buffers_free(struct worker *w);

/* Accept path: take ownership of fd; the client is at sa; lines go to
 * handler. */
void session_create(struct worker *w, int fd, const struct sockaddr *sa, int salen, bool tls_listener,
    const struct session_handler *handler);
/* The same for a client at sa whose connection came through the load
 * balancer at via (a PROXY header with an address). */
void session_create_via(struct worker *w, int fd, const struct sockaddr *sa, int salen,
    const struct sockaddr *via, int vialen, bool tls_listener,
    const struct session_handler *handler);
/* The same for a connection from the load balancer at via whose PROXY
 * header gave no client address: the client is SESSION_PEER_UNKNOWN. */
void session_create_unknown(struct worker *w, int fd, const struct sockaddr *via, int vialen,
    bool tls_listener, const struct session_handler *handler);
/* A session process: serve the connection fd (the client's socket, or a
 * relay from the worker that keeps its TLS) whose session began in a
 * worker; input is what that worker had read and not yet run. The session
 * starts in SESSION_MAILDROP_WAIT (no greeting): open the maildrop next. */
struct session *session_adopt(struct worker *w, int fd, const struct session_origin *o,
    const void *input, size_t input_len, const struct session_handler *handler);
/* Worker: hand the logged-in session over to its session process (the
 * master starts it; ticket from the auth process's answer). Plain: the
 * descriptor itself goes, once our output is flushed; TLS: we keep the TLS
 * state and relay plaintext over a socketpair. Unprocessed input goes
 * along. On failure the session is back in AUTHORIZATION with -ERR
 * [SYS/TEMP]. */
void session_handover(struct session *s, const char *ticket, const char *device);
/* The master's answer to a handover. */
void session_handover_done(struct worker *w, const struct ipc_handover_done *m);
/* Worker shutdown: end every session without UPDATE. */
void session_close_all(struct worker *w, const char *reason);

/* --- for the handler (commands.c, login.c, cmd_trans.c) --------------------- */
void session_enter_state(struct session *s, enum session_state state);
/* Run the input lines already received while the session can take one. A
 * wait (auth answer, maildrop job) calls it when it ends. */
void session_process_input(struct session *s);
/* session_process_input, then write a plain session's queued replies at
 * once (after the auth process or the store thread answered). */
void session_resume(struct session *s);
void session_flush(struct session *s);
/* Queue one response line; CRLF is appended. */
void session_reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The output buffer, with the write event on: use it for every write. */
struct evbuffer *session_output(struct session *s);
/* Flush what is queued, then close: no UPDATE unless done before. */
void session_close_after_reply(struct session *s, const char *reason);
/* Answer a bad command line with -ERR msg, counting it against
 * max_bad_commands (closes the session at the limit). */
void session_bad_line(struct session *s, const char *msg);
/* Start TLS on this plain connection (STLS): the +OK must be queued. Throws
 * away anything the client sent after the STLS line. */
void session_starttls(struct session *s);
/* The connection's TLS object, NULL on a plain connection. */
struct ssl_st *session_ssl(const struct session *s);
/* Take the message in st (and its descriptor) for streaming and read its
 * first piece, before any status line is queued, so a file that cannot be
 * read gets an -ERR rather than a cut connection. false: the read failed
 * (errno set), the descriptor is closed and nothing is queued. */
bool session_stream_open(struct session *s, const struct store_stream *st);
/* Answer with the status line (status_len bytes, CRLF included) and the
 * message taken by session_stream_open as RETR's body (top_lines < 0) or
 * TOP's, dot-stuffed and terminated, pausing while the client does not
 * read. */
void session_stream_start(struct session *s, int64_t top_lines, const char *status,
    size_t status_len);
/* Send a multi-line answer made by fill (the status line must be queued)
 * as RETR's body is sent: fill is called while less than
 * SESSION_OUTPUT_HIGH is queued, again from the write callback as the
 * client reads, until it returns true; no command runs meanwhile. So a
 * listing of a huge maildrop costs at most the high mark and one piece of
 * memory, whatever its length and however slowly the client reads. */
void session_produce_start(struct session *s, session_fill_fn *fill);

#endif

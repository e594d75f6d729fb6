/* Messages between popboxd processes (docs/DESIGN.md "Process model").
 *
 * Transport: SOCK_SEQPACKET socketpairs, so one send() is one message and a
 * message is never split or merged. The users file's descriptor travels
 * with IPC_USERS_FD as SCM_RIGHTS.
 *
 * Encoding. A message is a 16-octet header
 *
 *     uint32 type    enum ipc_type
 *     uint32 nfields the number of fields that follow
 *     uint64 id      request id chosen by the requester (0 where unused)
 *
 * followed by exactly the fields its type lists below, in that order, of two
 * kinds:
 *
 *     number  8 octets, a uint64 (the header and numbers are in host byte
 *             order: both ends are the same binary on the same host)
 *     text    its octets, then one NUL; no NUL inside
 *
 * and nothing after the last field. Each type has a struct, an encode and a
 * decode function. The decoder treats every message as hostile and refuses
 * (returns false) anything but its own type, the type's field count, numbers
 * in the type's range (enums, flags), texts no longer than the field's
 * maximum and NUL-terminated, and no octet after the last field. Text fields
 * of a decoded struct point into the buffer it was decoded from. The encoder
 * refuses (returns 0) what the decoder would refuse, so a message that leaves
 * is one the other side accepts; every message has exactly one encoding.
 *
 * A receiver reads the type with ipc_type() and calls that type's decoder.
 */
#ifndef POPBOX_IPC_H
#define POPBOX_IPC_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "server/limits_popboxd.h"
#include "server/uidl_migrate.h"

/* IPC_MAX_MSG, the largest message (a config reload), and IPC_HEADER_SIZE
 * are in limits_popboxd.h, derived from the limits they must carry. */
#define IPC_MAX_FIELDS 10

/* Field maxima, in octets without the NUL. */
#define IPC_MAX_USER POPBOXD_USER_MAX            /* the users file's limit on a name */
#define IPC_MAX_PASSWORD 255      /* PASS fits in a 255-octet command line */
#define IPC_MAX_PEER 63           /* a numeric IPv6 address */
#define IPC_MAX_APOP_STAMP 127    /* "<pid.random@host>" of the greeting */
#define IPC_MAX_APOP_DIGEST 32    /* MD5 in hex */
#define IPC_MAX_LOCATION POPBOXD_MAIL_LOCATION_MAX  /* mail_location_expand's bound */
#define IPC_MAX_SASL_MECH 31
#define IPC_MAX_SASL_DATA (16 * 1024)     /* base64; above the 12 KiB SASL line */
#define IPC_MAX_CHANNEL_BINDING 128       /* base64 of at most 64 octets */
#define IPC_MAX_ERROR 1024
/* A login ticket (per-user session processes): 16 random octets in hex. */
#define IPC_TICKET_LEN 32
#define IPC_MAX_TICKET IPC_TICKET_LEN
#define IPC_MAX_PEER_NAME 79      /* "[v6]:port" or "unknown-via-[v6]:port" (session.h) */
/* Input a worker has read from a client but not yet run when it hands the
 * session over (pipelined commands): its read high mark plus a TLS
 * record; base64 in the message. */
#define IPC_MAX_HANDOVER_INPUT (96 * 1024)
#define IPC_MAX_HANDOVER_INPUT_B64 (4 * ((IPC_MAX_HANDOVER_INPUT + 2) / 3))

/* Worker <-> auth messages fit well within the largest message. */
_Static_assert(IPC_HEADER_SIZE + 32 + 2 * (IPC_MAX_USER + 1) + (IPC_MAX_LOCATION + 1) +
    (IPC_MAX_SASL_DATA + 1) + (IPC_MAX_TICKET + 1) <= IPC_MAX_MSG, "an auth result must fit");
/* A handover is sent on a worker's control socket, whose send buffer is the
 * kernel's default (208 KiB; a SEQPACKET message must fit in it, less 32). */
_Static_assert(IPC_HEADER_SIZE + 24 + (IPC_MAX_TICKET + 1) + (IPC_MAX_PEER_NAME + 1) +
    (IPC_MAX_PEER + 1) + (IPC_MAX_USER + 1) + (IPC_MAX_HANDOVER_INPUT_B64 + 1) <= 212992 - 32,
    "a handover must fit in a default socket buffer");
_Static_assert(IPC_HEADER_SIZE + 16 + (IPC_MAX_SASL_MECH + 1) + (IPC_MAX_SASL_DATA + 1) +
    (IPC_MAX_PEER + 1) + 2 * (IPC_MAX_CHANNEL_BINDING + 1) <= IPC_MAX_MSG,
    "a SASL start must fit");

enum ipc_type {
	/* worker -> auth; the id names the request, the answer carries it */
	IPC_AUTH_PASS = 1,
	IPC_AUTH_APOP,
	/* auth -> worker */
	IPC_AUTH_RESULT,
	/* master -> worker/auth */
	IPC_RELOAD,
	/* worker -> auth, SASL (RFC 5034); the id of SASL_START names the
	 * exchange and every later step of it */
	IPC_SASL_START,
	IPC_SASL_STEP,
	IPC_SASL_ABORT,
	/* auth <-> master: the users file is opened by the master (it may be
	 * readable by root only) and handed over as a descriptor */
	IPC_USERS_OPEN,
	IPC_USERS_FD,
	/* master -> auth: are you alive? auth -> master: yes (the ping's id;
	 * id 0 once at start, when the auth process begins to serve) */
	IPC_PING,
	IPC_PONG,
	/* worker -> auth: which user does this delivery address name (LMTP
	 * RCPT)? Answered with IPC_AUTH_RESULT: OK (user, location), FAIL (no
	 * such user) or TEMP. */
	IPC_RCPT_LOOKUP,
	/* per-user session processes (docs/DESIGN.md "A process per user
	 * session"): auth -> master, a login may become a session process;
	 * worker -> master, here is its connection (a descriptor comes along);
	 * master -> worker, it was or was not started */
	IPC_SESSION_GRANT,
	IPC_HANDOVER,
	IPC_HANDOVER_DONE,
	/* worker -> auth: what differs between users? (a worker asks when it
	 * starts); auth -> worker: the answer, and again after every load of
	 * the users file (CAPA's "USER" tags of EXPIRE and LOGIN-DELAY) */
	IPC_USERS_POLICY,
	/* master -> a user's session process: serve this connection (its
	 * descriptor comes along); session process -> master: a session
	 * ended */
	IPC_SESSION_ADOPT,
	IPC_SESSION_END,
	/* LMTP for system users (docs/DESIGN.md "Mail in", "Delivering as
	 * the recipient"): worker -> master, deliver the spool (its
	 * descriptor comes along) to a user, or check the user's room at
	 * RCPT; master -> worker, and a delivery process -> master: the
	 * result */
	IPC_LMTP_DELIVER,
	IPC_LMTP_RESULT,
	IPC_TYPE_MAX,
};

/* What the auth process answers to a request. */
enum auth_result {
	AUTH_RESULT_OK,        /* logged in: user and mail location */
	AUTH_RESULT_FAIL,      /* wrong credentials, unknown user, ... */
	AUTH_RESULT_TEMP,      /* try again later: [SYS/TEMP] */
	AUTH_RESULT_CONTINUE,  /* SASL: data is the next challenge */
};

/* Every worker -> auth request names the worker's session (the id its log
 * lines show), so that the auth process's log lines name it too. */

/* IPC_AUTH_PASS: USER/PASS. Fields: number session_id; texts user,
 * password, peer. */
struct ipc_auth_pass {
	uint64_t request_id;
	uint64_t session_id;
	const char *user;          /* at most IPC_MAX_USER */
	const char *password;      /* at most IPC_MAX_PASSWORD */
	const char *peer;          /* client address, at most IPC_MAX_PEER */
};

/* IPC_AUTH_APOP (RFC 1939 §7). Fields: number session_id; texts user,
 * stamp, digest, peer. */
struct ipc_auth_apop {
	uint64_t request_id;
	uint64_t session_id;
	const char *user;          /* at most IPC_MAX_USER */
	const char *stamp;         /* greeting timestamp, at most IPC_MAX_APOP_STAMP */
	const char *digest;        /* hex, at most IPC_MAX_APOP_DIGEST */
	const char *peer;          /* at most IPC_MAX_PEER */
};

/* IPC_AUTH_RESULT: the answer to any request but SASL_ABORT. Fields: number
 * result; texts user, location, data; number uidl_format; texts device, ticket;
 * numbers expire, login_delay. */
struct ipc_auth_result {
	uint64_t request_id;       /* the request's (SASL: the exchange's) */
	enum auth_result result;
	const char *user;          /* OK: the logged-in user, else ""; at most IPC_MAX_USER */
	const char *location;      /* OK: mail location, else ""; at most IPC_MAX_LOCATION */
	const char *data;          /* SASL challenge or success data (base64), may be "";
	                            * at most IPC_MAX_SASL_DATA */
	enum uidl_format uidl_format; /* OK: the user's own (users file), else UNSET */
	/* OK: the last device_separator of the login name and what followed
	 * it, as given ("#phone"; checked by the worker after the login:
	 * devices.h), "" for a classic login; at most IPC_MAX_USER */
	const char *device;
	const char *ticket;        /* OK: "" = serve the session here; else the
	                            * ticket of its session process (IPC_HANDOVER),
	                            * IPC_TICKET_LEN hex digits */
	/* OK: the user's own EXPIRE and LOGIN-DELAY (passwd.h's encoding: 0 =
	 * the config's; expire 1 = never, 2 + N = N days; login_delay 1 + N =
	 * N seconds) */
	unsigned expire;
	unsigned login_delay;
};

/* IPC_SESSION_GRANT, auth -> master, sent before the OK answer that carries
 * the ticket: the worker in slot may hand session_id over to a process
 * running as uid/gid that serves user's mail at location. Fields: numbers
 * slot, session_id, uid, gid; texts ticket, user, location; numbers
 * uidl_format, expire, login_delay. */
struct ipc_session_grant {
	uint64_t request_id;       /* 0 */
	unsigned slot;             /* below POPBOXD_MAX_WORKERS */
	uint64_t session_id;
	uint32_t uid, gid;         /* not root's (the master checks again) */
	const char *ticket;        /* IPC_TICKET_LEN hex digits */
	const char *user;          /* at most IPC_MAX_USER */
	const char *location;      /* at most IPC_MAX_LOCATION */
	enum uidl_format uidl_format;
	unsigned expire;           /* the user's own, as IPC_AUTH_RESULT has them */
	unsigned login_delay;
};

/* IPC_HANDOVER, worker -> master, with the descriptor of the connection
 * (plain) or of the worker's end of a relay socketpair (TLS: the worker
 * keeps TLS and relays plaintext). Fields: numbers session_id, flags, mech;
 * texts ticket, peer, peer_ip, device, input. */
#define IPC_HANDOVER_TLS 1u        /* the client's connection is encrypted */
#define IPC_HANDOVER_LOOPBACK 2u   /* the client is on loopback */
struct ipc_handover {
	uint64_t request_id;       /* the worker's; the DONE answer carries it */
	uint64_t session_id;
	unsigned flags;            /* IPC_HANDOVER_* */
	unsigned mech;             /* the login's enum metrics_mech (the session
	                            * process counts the login's result) */
	const char *ticket;        /* the auth answer's */
	const char *peer;          /* "host:port", at most IPC_MAX_PEER_NAME */
	const char *peer_ip;       /* at most IPC_MAX_PEER */
	const char *device;        /* the auth answer's ("#phone" or ""), at most IPC_MAX_USER */
	const char *input;         /* base64 of the unprocessed input, at most
	                            * IPC_MAX_HANDOVER_INPUT_B64 */
};

/* IPC_SESSION_ADOPT, master -> session process, with the connection's
 * descriptor: a handover of its user. Fields: numbers session_id, flags,
 * mech; texts peer, peer_ip, device, input (as in IPC_HANDOVER). */
struct ipc_session_adopt {
	uint64_t request_id;       /* 0 */
	uint64_t session_id;
	unsigned flags;            /* IPC_HANDOVER_* */
	unsigned mech;             /* as in IPC_HANDOVER */
	const char *peer;
	const char *peer_ip;
	const char *device;
	const char *input;
};

/* IPC_SESSION_END, session process -> master. Fields: number session_id. */
struct ipc_session_end {
	uint64_t request_id;       /* 0 */
	uint64_t session_id;
};

/* IPC_LMTP_DELIVER, worker -> master: a delivery as the recipient. The
 * master believes only the user's name (it looks the account up itself)
 * and the spool descriptor; the sender and the size shape the message
 * and an early refusal, nothing else. Fields: numbers session_id, kind,
 * size; texts user, sender. */
#define IPC_LMTP_CHECK 0u          /* RCPT: is there room for size octets? no descriptor */
#define IPC_LMTP_DELIVER_SPOOL 1u  /* DATA's end: deliver the spool (descriptor) */
#define IPC_MAX_SENDER 256         /* RFC 5321 §4.5.3.1.3: a path is at most 256 octets */
struct ipc_lmtp_deliver {
	uint64_t request_id;       /* the worker's; the result carries it */
	uint64_t session_id;       /* the LMTP session's, for log lines */
	unsigned kind;             /* IPC_LMTP_* */
	uint64_t size;             /* CHECK: the declared size, 0 = none */
	const char *user;          /* the recipient's account, at most IPC_MAX_USER */
	const char *sender;        /* envelope sender ("" null sender), at most IPC_MAX_SENDER */
};

/* IPC_LMTP_RESULT, master -> worker (and a delivery process -> master).
 * Fields: numbers session_id, status; text error. status: an enum
 * delivery_status (store_deliver.h) or IPC_LMTP_NO_USER. */
#define IPC_LMTP_NO_USER 5u        /* no account that may get mail has this name */
struct ipc_lmtp_result {
	uint64_t request_id;       /* the IPC_LMTP_DELIVER's */
	uint64_t session_id;
	unsigned status;
	const char *error;         /* why, "" on success; at most IPC_MAX_ERROR */
};

/* IPC_HANDOVER_DONE, master -> worker. Fields: numbers session_id, ok (0/1). */
struct ipc_handover_done {
	uint64_t request_id;       /* the HANDOVER's */
	uint64_t session_id;
	bool ok;                   /* the session process has the connection */
};

/* IPC_RELOAD: new configuration. Fields: texts path, config, cert_pem,
 * key_pem (each bounded by its limit in limits_popboxd.h). */
struct ipc_reload {
	uint64_t request_id;       /* 0 */
	const char *path;          /* of the config file, for messages */
	const char *config;        /* its text */
	const char *cert_pem;      /* "" with key_pem "" = keep the current TLS context */
	const char *key_pem;
};

/* IPC_SASL_START. Fields: numbers session_id, has_initial (0 or 1); texts
 * mech, initial, peer, cb_exporter, cb_unique. */
struct ipc_sasl_start {
	uint64_t request_id;       /* names the exchange */
	uint64_t session_id;
	const char *mech;          /* at most IPC_MAX_SASL_MECH */
	bool has_initial;          /* an initial response was given (maybe empty) */
	const char *initial;       /* base64, at most IPC_MAX_SASL_DATA */
	const char *peer;          /* at most IPC_MAX_PEER */
	const char *cb_exporter;   /* tls-exporter channel binding, base64, "" = none */
	const char *cb_unique;     /* tls-unique channel binding, base64, "" = none */
};

/* IPC_SASL_STEP: the client's next response. Fields: number session_id;
 * text response. */
struct ipc_sasl_step {
	uint64_t request_id;       /* the exchange's */
	uint64_t session_id;
	const char *response;      /* base64, at most IPC_MAX_SASL_DATA */
};

/* IPC_SASL_ABORT: client cancelled or went away; no answer. Fields: number
 * session_id. */
struct ipc_sasl_abort {
	uint64_t request_id;       /* the exchange's */
	uint64_t session_id;
};

/* IPC_USERS_OPEN, auth -> master. No fields. */
struct ipc_users_open {
	uint64_t request_id;
};

/* IPC_USERS_FD, master -> auth. Fields: text error. */
struct ipc_users_fd {
	uint64_t request_id;       /* the USERS_OPEN's */
	const char *error;         /* "" = the descriptor comes with this message;
	                            * else why not, at most IPC_MAX_ERROR */
};

/* IPC_PING, master -> auth, and IPC_PONG, auth -> master. No fields. The
 * master restarts an auth process that does not answer (master.c). */
struct ipc_ping {
	uint64_t request_id;       /* PONG: the PING's, or 0 (ready) */
};

/* IPC_RCPT_LOOKUP. Fields: number session_id; text address. The answer
 * is not held by the failed-login penalty: no secret is tried. */
struct ipc_rcpt_lookup {
	uint64_t request_id;
	uint64_t session_id;       /* the LMTP session's */
	const char *address;       /* RCPT's address, at most IPC_MAX_USER */
};

/* IPC_USERS_POLICY. Fields: number flags (the worker's question: 0). */
#define IPC_POLICY_EXPIRE_DIFFERS 1u       /* some user has expire_days= */
#define IPC_POLICY_DELAY_DIFFERS 2u        /* some user has login_delay= */
struct ipc_users_policy {
	uint64_t request_id;       /* 0 */
	unsigned flags;
};

/* Encode m into buf[0..size): returns the message's length, or 0 when a
 * field breaks its type's rules (see above) or the message does not fit. */
size_t ipc_auth_pass_encode(void *buf, size_t size, const struct ipc_auth_pass *m);
size_t ipc_auth_apop_encode(void *buf, size_t size, const struct ipc_auth_apop *m);
size_t ipc_auth_result_encode(void *buf, size_t size, const struct ipc_auth_result *m);
size_t ipc_users_policy_encode(void *buf, size_t size, const struct ipc_users_policy *m);
size_t ipc_reload_encode(void *buf, size_t size, const struct ipc_reload *m);
size_t ipc_sasl_start_encode(void *buf, size_t size, const struct ipc_sasl_start *m);
size_t ipc_sasl_step_encode(void *buf, size_t size, const struct ipc_sasl_step *m);
size_t ipc_sasl_abort_encode(void *buf, size_t size, const struct ipc_sasl_abort *m);
size_t ipc_users_open_encode(void *buf, size_t size, const struct ipc_users_open *m);
size_t ipc_users_fd_encode(void *buf, size_t size, const struct ipc_users_fd *m);
size_t ipc_ping_encode(void *buf, size_t size, const struct ipc_ping *m);
size_t ipc_pong_encode(void *buf, size_t size, const struct ipc_ping *m);
size_t ipc_rcpt_lookup_encode(void *buf, size_t size, const struct ipc_rcpt_lookup *m);
size_t ipc_session_grant_encode(void *buf, size_t size, const struct ipc_session_grant *m);
size_t ipc_handover_encode(void *buf, size_t size, const struct ipc_handover *m);
size_t ipc_handover_done_encode(void *buf, size_t size, const struct ipc_handover_done *m);
size_t ipc_session_adopt_encode(void *buf, size_t size, const struct ipc_session_adopt *m);
size_t ipc_session_end_encode(void *buf, size_t size, const struct ipc_session_end *m);
size_t ipc_lmtp_deliver_encode(void *buf, size_t size, const struct ipc_lmtp_deliver *m);
size_t ipc_lmtp_result_encode(void *buf, size_t size, const struct ipc_lmtp_result *m);

/* Decode buf[0..len) (one received message) into *m: true when it is a
 * well-formed message of this type, else false and *m undefined. */
bool ipc_auth_pass_decode(const void *buf, size_t len, struct ipc_auth_pass *m);
bool ipc_auth_apop_decode(const void *buf, size_t len, struct ipc_auth_apop *m);
bool ipc_auth_result_decode(const void *buf, size_t len, struct ipc_auth_result *m);
bool ipc_users_policy_decode(const void *buf, size_t len, struct ipc_users_policy *m);
bool ipc_reload_decode(const void *buf, size_t len, struct ipc_reload *m);
bool ipc_sasl_start_decode(const void *buf, size_t len, struct ipc_sasl_start *m);
bool ipc_sasl_step_decode(const void *buf, size_t len, struct ipc_sasl_step *m);
bool ipc_sasl_abort_decode(const void *buf, size_t len, struct ipc_sasl_abort *m);
bool ipc_users_open_decode(const void *buf, size_t len, struct ipc_users_open *m);
bool ipc_users_fd_decode(const void *buf, size_t len, struct ipc_users_fd *m);
bool ipc_ping_decode(const void *buf, size_t len, struct ipc_ping *m);
bool ipc_pong_decode(const void *buf, size_t len, struct ipc_ping *m);
bool ipc_rcpt_lookup_decode(const void *buf, size_t len, struct ipc_rcpt_lookup *m);
bool ipc_session_grant_decode(const void *buf, size_t len, struct ipc_session_grant *m);
bool ipc_handover_decode(const void *buf, size_t len, struct ipc_handover *m);
bool ipc_handover_done_decode(const void *buf, size_t len, struct ipc_handover_done *m);
bool ipc_session_adopt_decode(const void *buf, size_t len, struct ipc_session_adopt *m);
bool ipc_session_end_decode(const void *buf, size_t len, struct ipc_session_end *m);
bool ipc_lmtp_deliver_decode(const void *buf, size_t len, struct ipc_lmtp_deliver *m);
bool ipc_lmtp_result_decode(const void *buf, size_t len, struct ipc_lmtp_result *m);

/* The type in the header of buf[0..len), or 0 when there is no header. Only
 * picks the decoder: nothing else of the message is checked. */
uint32_t ipc_type(const void *buf, size_t len);

/* Send one encoded message; returns 0, or -1 with errno (EAGAIN on a full
 * socket). */
int ipc_send(int sock, const void *msg, size_t len);
/* Same, passing descriptor fd along (SCM_RIGHTS); fd < 0 sends none. */
int ipc_send_fd(int sock, const void *msg, size_t len, int fd);
/* recv() of one message that may carry a descriptor: *fd_r = it, or -1. */
ssize_t ipc_recv_fd(int sock, void *buf, size_t len, int *fd_r);

#endif

/* Messages between popboxd processes (design §3).
 *
 * Transport: SOCK_SEQPACKET socketpairs, so one send() is one message and a
 * message is never split or merged. A message is a fixed header followed by
 * up to IPC_MAX_FIELDS NUL-terminated string fields. The receiver treats every
 * message as hostile: ipc_parse() checks the size, the type range, that every
 * field is NUL-terminated and that the field count is what the type needs. */
#ifndef POPBOX_IPC_H
#define POPBOX_IPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Big enough for a SASL step (base64 of 8 KiB) plus user name and peer; and
 * for a config reload carrying the config text. */
#define IPC_MAX_MSG   (256 * 1024)
#define IPC_MAX_FIELDS 8

enum ipc_type {
	/* worker -> auth */
	IPC_AUTH_PASS = 1,  /* id; user, password, peer address */
	IPC_AUTH_APOP,      /* id; user, greeting timestamp, hex digest, peer */
	/* auth -> worker */
	IPC_AUTH_RESULT,    /* id; status ("ok"|"fail"|"temp"|"continue"), user,
	                     * mail location, SASL data (base64, may be "") */
	/* master -> worker/auth */
	IPC_RELOAD,         /* 0; config file path, config text, TLS cert PEM, key PEM
	                     * ("" = keep the current TLS context) */
	/* worker -> auth, SASL (RFC 5034); the id of SASL_START names the
	 * exchange and every later step of it */
	IPC_SASL_START,     /* id; mechanism, "1"/"0" initial response given, initial
	                     * response (base64), peer, tls-exporter cb, tls-unique cb */
	IPC_SASL_STEP,      /* id; client response (base64) */
	IPC_SASL_ABORT,     /* id; (none): client cancelled or went away, no answer */
	/* auth <-> master: the users file is opened by the master (it may be
	 * readable by root only) and handed over as a descriptor */
	IPC_USERS_OPEN,     /* auth -> master; (none) */
	IPC_USERS_FD,       /* master -> auth; "ok" + descriptor, or an error text */
	IPC_TYPE_MAX,
};

struct ipc_header {
	uint32_t type;
	uint32_t nfields;
	uint64_t id;        /* request id chosen by the requester */
};

struct ipc_msg {
	uint32_t type;
	uint64_t id;
	uint32_t nfields;
	const char *fields[IPC_MAX_FIELDS];
	size_t lens[IPC_MAX_FIELDS];   /* strlen of each field */
};

/* Send one message; returns 0, or -1 with errno (EAGAIN on a full socket). */
int ipc_send(int fd, uint32_t type, uint64_t id, const char *const *fields, uint32_t nfields);
/* Same, passing a descriptor along (SCM_RIGHTS); fd < 0 sends none. */
int ipc_send_fd(int sock, uint32_t type, uint64_t id, const char *const *fields, uint32_t nfields,
    int fd);
/* recv() of one message that may carry a descriptor: *fd_r = it, or -1. */
ssize_t ipc_recv_fd(int sock, void *buf, size_t len, int *fd_r);
/* Parse buf[0..len) (from one recv) into msg, fields point into buf.
 * Returns 0 or -1 when malformed. expected_fields is checked by the caller. */
int ipc_parse(const void *buf, size_t len, struct ipc_msg *msg);

#endif

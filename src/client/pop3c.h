/* POP3 client session: greeting, CAPA, STLS, authentication, and the
 * request/response primitives fetch.c and fetch_pipeline.c drive
 * (including pipelining and message bodies).
 *
 * Errors: every function that can fail fills a struct fetch_error
 * (fetch_error.h): EX_TEMPFAIL for the network and temporary -ERR codes,
 * EX_PROTOCOL for a server that breaks the protocol, EX_NOPERM for a
 * refused login, EX_UNAVAILABLE / EX_CONFIG for what cannot be done
 * safely. After any failure but an -ERR answer, the session is unusable:
 * only pop3c_abort() is left. */
#ifndef POPBOX_POP3C_H
#define POPBOX_POP3C_H

#include <stdbool.h>
#include <stdint.h>

#include "client/account.h"
#include "client/conn.h"
#include "common/pop3_proto.h"
#include "common/scram.h"

struct pop3c {
	struct conn *conn;                      /* owned */
	const struct account *account;          /* borrowed: must outlive the session */
	struct pop3_capa capa;
	char timestamp[POP3_MAX_RESPONSE_LINE];  /* APOP, "" if none */
	char line[POP3_MAX_RESPONSE_LINE + 512]; /* last status line */
	const char *text;                       /* text after +OK/-ERR in line */
	enum pop3_resp_code code;
	char mechanism[32];                      /* what authenticated us */
	char sasl_detail[128];                   /* the server's OAUTHBEARER error status */
	const char *cb_type;                     /* conn_channel_binding(), NULL: none */
	char *cb_data;                           /* its data, base64 (owned) */
	char body[CONN_BUF_SIZE + 1];            /* pop3c_read_body's output */
};

/* Connect, TLS per account (implicit, or STLS which is then mandatory:
 * a server without it is refused before any credentials are sent), read
 * the greeting, CAPA, authenticate. a is borrowed for the life of the
 * session, password only for the call (NULL is refused with EX_CONFIG).
 * Returns a session in the TRANSACTION state, to be ended with
 * pop3c_quit() or pop3c_abort(); on failure the connection is closed and
 * NULL returned with err set. */
struct pop3c *pop3c_open(const struct account *a, const char *password,
    struct fetch_error *err);

/* Send several command lines at once (each already ending in CRLF; no
 * secrets): one write for a pipelined group. The answers are read with
 * pop3c_status() (and a body reader), in order. */
bool pop3c_send_lines(struct pop3c *s, const char *lines, size_t len,
    struct fetch_error *err);

/* Send one command line (CRLF appended). secret_from: index in line from
 * which the trace shows asterisks (-1: show all). */
bool pop3c_send(struct pop3c *s, const char *line, int secret_from,
    struct fetch_error *err);

/* Read one status line into s->line (s->text, s->code: its text and
 * response code). Returns POP3_OK/POP3_ERR/POP3_CONT; anything else, or
 * a failed read, is POP3_INVALID with err set. */
enum pop3_status pop3c_status(struct pop3c *s, struct fetch_error *err);

/* Send cmd and read its status line. */
enum pop3_status pop3c_command(struct pop3c *s, const char *cmd, struct fetch_error *err);

/* Read the body of a multi-line response line by line (unstuffed, CRLF
 * removed), calling fn (may be NULL) for each; the line is valid only
 * during the call. More than max_lines lines is EX_PROTOCOL; fn returning
 * false stops the read (fn sets err). */
bool pop3c_read_lines(struct pop3c *s, uint32_t max_lines,
    bool (*fn)(void *ctx, const char *line, struct fetch_error *err), void *ctx,
    struct fetch_error *err);

/* How pop3c_read_body() ended. */
enum pop3c_body_status {
	POP3C_BODY_OK,          /* read up to and including its "." line */
	POP3C_BODY_TOO_LONG,    /* more than max_octets arrived (err not set) */
	POP3C_BODY_FAILED,      /* the connection failed or closed (err set) */
};

/* Read the body of a multi-line response whose +OK was just read (RETR),
 * up to its terminating "." line, unstuffed (dots removed, lines ending
 * in LF). fn, when not NULL, gets each decoded piece in order (data is
 * valid only during the call; pieces are never empty). max_octets bounds
 * the wire bytes read: once more have arrived the read stops with
 * POP3C_BODY_TOO_LONG, before the piece that crossed the bound is handed
 * to fn, and the rest of the body is left unread. After anything but
 * POP3C_BODY_OK the session cannot carry another command: only
 * pop3c_abort() is left. */
enum pop3c_body_status pop3c_read_body(struct pop3c *s, uint64_t max_octets,
    void (*fn)(void *ctx, const char *data, size_t len), void *ctx,
    struct fetch_error *err);

/* Read and throw away the body of a multi-line response (a RETR answer
 * that arrived after a local failure, in a pipeline). True when the whole
 * body was read; false with err set (EX_PROTOCOL past max_octets, or the
 * connection's error) otherwise, and the session is then unusable. */
bool pop3c_skip_body(struct pop3c *s, uint64_t max_octets, struct fetch_error *err);

/* The SCRAM iteration counts popbox fetch accepts from a server: at least
 * what RFC 5802 §5.1 asks for (and popbox hash writes by default), at most
 * what popbox hash and popboxd accept (src/common/scram.h), a few seconds
 * of CPU. Outside, the login is refused before any work on the password. */
#define POP3C_SCRAM_MIN_ITERATIONS SCRAM_ITERATIONS_MIN_GENERATE
#define POP3C_SCRAM_MAX_ITERATIONS SCRAM_ITERATIONS_MAX

/* The iteration count (i=) of a SCRAM server-first message (msg, len
 * octets, decoded from base64). True with *iter set when exactly one i=
 * attribute is there and is a positive decimal number of at most ten
 * digits without leading zeros (RFC 5802 §7); false otherwise. */
bool pop3c_scram_iterations(const unsigned char *msg, size_t len, uint64_t *iter);

/* Turn the last -ERR into an error: temporary codes -> EX_TEMPFAIL,
 * [SYS/PERM] -> EX_UNAVAILABLE, otherwise `code`. The message is `what`
 * and the server's text. Always returns false. */
bool pop3c_fail(struct pop3c *s, int code, const char *what, struct fetch_error *err);

/* QUIT and close, freeing s in every case; returns true if the server
 * confirmed with +OK (its UPDATE state ran: deletions are committed).
 * -ERR sets err (EX_TEMPFAIL). */
bool pop3c_quit(struct pop3c *s, struct fetch_error *err);

/* Close without QUIT and free s (NULL is ignored): the server deletes
 * nothing (RFC 1939 §6). */
void pop3c_abort(struct pop3c *s);

#endif

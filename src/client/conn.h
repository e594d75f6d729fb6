/* One connection to a POP3 server: TCP with timeouts, optional TLS
 * (implicit or after STLS), buffered line and chunk reading.
 *
 * Why blocking I/O with socket timeouts and not libevent: a fetch is one
 * conversation at a time per account; the code reads as the protocol does,
 * and SO_RCVTIMEO/SO_SNDTIMEO bound every wait (connect uses poll()). The
 * pipelining window is small enough that our writes never block while the
 * server is blocked writing to us. */
#ifndef POPBOX_CONN_H
#define POPBOX_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/fetch_error.h"

#define CONN_BUF_SIZE 65536

struct tls_options {
	const char *trust_file;      /* NULL: system store */
	const char *fingerprint;     /* SHA-256 pin (hex, colons optional) */
	bool insecure;               /* no verification at all (warned) */
	const char *host;            /* name to verify and send as SNI */
};

struct conn {
	int fd;
	void *ssl;                   /* SSL*, NULL before TLS */
	void *ssl_ctx;
	char buf[CONN_BUF_SIZE];
	size_t start, end;           /* unread bytes are buf[start..end) */
	bool eof;
	bool quickack_due;           /* written since the last read (conn.c) */
	uint64_t bytes_in;
	int timeout;                 /* seconds, for each read or write */
	long deadline_sec;           /* the whole connection's bound, 0: none */
	double deadline;             /* when it ends (CLOCK_MONOTONIC seconds) */
	long armed_ms;               /* what SO_RCVTIMEO/SO_SNDTIMEO are set to */
};

/* Connect to host:port (any address family getaddrinfo gives), each
 * attempt bounded by timeout seconds; socket reads/writes get the same
 * timeout. deadline (seconds from now, 0: none) bounds the whole
 * connection: connect, handshake, every read and write; a wait that would
 * end past it is cut short, and once it has passed every operation fails
 * with EX_TEMPFAIL and a message that names it (docs/DESIGN.md, "popbox
 * fetch: limits against a hostile server"). Returns a new conn (the
 * caller closes it with conn_close()) or NULL (EX_TEMPFAIL / EX_NOHOST). */
struct conn *conn_connect(const char *host, const char *port, int timeout, long deadline,
    struct fetch_error *err);

/* TLS handshake on the connection, verification as tls_options say.
 * Fails with EX_UNAVAILABLE and a message naming the reason and how to
 * trust the certificate, or EX_TEMPFAIL on network trouble. */
bool conn_start_tls(struct conn *c, const struct tls_options *opt,
    struct fetch_error *err);

/* Bytes buffered but not yet read (STLS injection check). */
size_t conn_buffered(const struct conn *c);
void conn_discard_buffer(struct conn *c);

/* Write all of data (through TLS once started). False with err set
 * (EX_TEMPFAIL) on a failed or timed-out write. */
bool conn_write(struct conn *c, const void *data, size_t len, struct fetch_error *err);

/* Read one line ending in LF; strips CRLF/LF. Lines longer than size-1 are
 * an error (EX_PROTOCOL), as is EOF before LF. */
bool conn_read_line(struct conn *c, char *out, size_t size, struct fetch_error *err);

/* Make sure some bytes are buffered (reads if empty). Returns false on
 * EOF/error. On success c->buf[c->start..c->end) is non-empty. */
bool conn_fill(struct conn *c, struct fetch_error *err);

/* The channel binding of the TLS session for SCRAM-*-PLUS (RFC 5056):
 * on TLS 1.3 "tls-exporter" (RFC 9266: 32 octets exported with the label
 * EXPORTER-Channel-Binding), on TLS 1.2 "tls-unique" (RFC 5929: the first
 * Finished message of the handshake), but only when the extended master
 * secret (RFC 7627) was negotiated: without it tls-unique can be made
 * equal on two different connections (the triple handshake attack).
 * Returns the type (a static string) and sets *data_b64 (xmalloc'd,
 * base64, the caller frees it), or returns NULL when the connection has
 * no binding to offer (no TLS, TLS 1.2 without extended master secret). */
const char *conn_channel_binding(struct conn *c, char **data_b64);

/* Description of the TLS session for -v, or "" without TLS. */
const char *conn_tls_description(struct conn *c);
bool conn_is_tls(const struct conn *c);

/* Shut TLS down, close the socket and free c; NULL is ignored. */
void conn_close(struct conn *c);

#endif

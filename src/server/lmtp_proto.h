/* The LMTP protocol's text (RFC 2033, RFC 5321 for what LMTP shares with
 * SMTP): command lines, MAIL and RCPT arguments, the DATA stream's
 * dot-unstuffing and terminator, and the MTA's queue id in the message.
 * Pure functions on bytes: no sockets, no files (lmtp_session.c is the
 * connection). Every parser here is strict and bounded; a fuzz target
 * (tests/fuzz/fuzz_lmtp.c) and tests/unit/test_lmtp_proto.c exercise it. */
#ifndef POPBOX_LMTP_PROTO_H
#define POPBOX_LMTP_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 5321 §4.5.3.1.3: a path (with its brackets) is at most 256 octets;
 * an address within one at most 254. */
#define LMTP_PATH_MAX 256

enum lmtp_verb {
	LMTP_VERB_UNKNOWN = 0,
	LMTP_VERB_LHLO,
	LMTP_VERB_MAIL,
	LMTP_VERB_RCPT,
	LMTP_VERB_DATA,
	LMTP_VERB_RSET,
	LMTP_VERB_NOOP,
	LMTP_VERB_QUIT,
	LMTP_VERB_VRFY,
	LMTP_VERB_HELO,     /* SMTP's greetings: refused in LMTP (RFC 2033 §4.1) */
	LMTP_VERB_EHLO,
};

/* The verb of a command line (case-insensitive, ended by the line's end or
 * one space) and *args_r the text after that space ("" when none). */
enum lmtp_verb lmtp_parse_verb(const char *line, const char **args_r);

enum lmtp_parse_result {
	LMTP_PARSE_OK = 0,
	LMTP_PARSE_SYNTAX,      /* 501: not "FROM:<path>" / "TO:<path>" */
	LMTP_PARSE_BAD_PARAM,   /* 555: a parameter we do not know or a bad value */
};

struct lmtp_mail_args {
	char sender[LMTP_PATH_MAX + 1];   /* without brackets; "" = null sender */
	bool has_size;
	uint64_t size;                    /* SIZE= (RFC 1870) */
};

/* MAIL's arguments, "FROM:<path> [SIZE=n] [BODY=7BIT|8BITMIME]". A space
 * after the colon is allowed (many clients send one); a source route
 * ("@a,@b:user@d") is dropped (RFC 5321 §4.1.1.3: accepted, ignored). The
 * path has printable ASCII without spaces, '<' or '>'. */
enum lmtp_parse_result lmtp_parse_mail(const char *args, struct lmtp_mail_args *out);

/* RCPT's arguments, "TO:<path>", no parameters (none are advertised). The
 * address (no brackets, not empty) goes into out (LMTP_PATH_MAX + 1). */
enum lmtp_parse_result lmtp_parse_rcpt(const char *args, char out[LMTP_PATH_MAX + 1]);

/* The DATA stream (RFC 5321 §4.5.2): a line that starts with '.' loses that
 * dot, and ".CRLF" at a line start ends the message. Only CRLF ends a line:
 * a bare LF is a byte of the message, so "LF . LF" ends nothing (no SMTP
 * smuggling past a hop that reads line ends differently). Streaming: input
 * may be cut anywhere. */
struct lmtp_data_decoder {
	int state;
};

void lmtp_data_decoder_init(struct lmtp_data_decoder *d);
/* Decode in[0..len) into out, which must hold len + 1 bytes; *out_len is
 * what was written. Returns the input octets consumed: all of them, or
 * fewer when the terminator was reached (its last octet included; *done =
 * true, the rest belongs to the next command). The message keeps the CRLF
 * before the terminator: it ends its last line. */
size_t lmtp_data_decode(struct lmtp_data_decoder *d, const char *in, size_t len, char *out,
    size_t *out_len, bool *done);

/* How much of a message's start lmtp_queue_id looks at: Postfix's own
 * Received header is its first. */
#define LMTP_QUEUE_ID_HEAD 4096
/* A queue id is short (Postfix: 10-16 characters); longer is cut. */
#define LMTP_QUEUE_ID_MAX 32

/* The MTA's queue id: the word after " id " in the first Received: header
 * of head[0..len) (the message's start, any line ends), letters and digits
 * only. True and out filled (NUL-terminated, size > 1), or false. */
bool lmtp_queue_id(const char *head, size_t len, char *out, size_t size);

#endif

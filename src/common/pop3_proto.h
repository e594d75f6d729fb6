/* POP3 protocol core for the client side (RFC 1939, RFC 2449, RFC 5034):
 * status-line and response-code parsing, CAPA, LIST/UIDL line parsing and a
 * streaming decoder that turns a multi-line response back into the message
 * (dot-unstuffing, CRLF -> LF, end-of-response detection). No I/O here: every
 * function works on bytes it is given, so each one is unit-tested and fuzzable.
 */
#ifndef POP3_PROTO_H
#define POP3_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 2449 §4: responses (status lines) are at most 512 octets incl. CRLF. */
#define POP3_MAX_RESPONSE_LINE 512
/* RFC 1939 §7: a unique-id is 1 to 70 characters in 0x21..0x7E. */
#define POP3_MAX_UIDL_LEN 70
/* Refuse drops larger than this many messages: a STAT claiming more is a
 * broken or hostile server (mpop uses the same bound). */
#define POP3_MAX_MESSAGES 1000000u

enum pop3_status { POP3_OK, POP3_ERR, POP3_CONT, POP3_INVALID };

/* RFC 2449 §8 / RFC 3206 response codes the client acts on. */
enum pop3_resp_code {
	POP3_CODE_NONE = 0,
	POP3_CODE_IN_USE,       /* temporary */
	POP3_CODE_LOGIN_DELAY,  /* temporary */
	POP3_CODE_SYS_TEMP,     /* temporary */
	POP3_CODE_SYS_PERM,     /* permanent */
	POP3_CODE_AUTH,         /* credentials refused: permanent */
	POP3_CODE_OTHER,
};

/* Parse a status line (CRLF already removed). "+OK[ text]", "-ERR[ text]",
 * "+ [base64]" (SASL continuation, RFC 5034). *text points into line at the
 * text after the status (may be ""), *code is the bracketed response code
 * if any (only meaningful for -ERR). */
enum pop3_status pop3_parse_status(const char *line, const char **text,
    enum pop3_resp_code *code);

/* True if a response code means "try again later" (EX_TEMPFAIL). */
bool pop3_code_is_temporary(enum pop3_resp_code code);

/* Capabilities from a CAPA response (RFC 2449). */
struct pop3_capa {
	bool have_capa;      /* server answered CAPA with +OK */
	bool top, uidl, user, stls, pipelining, resp_codes, auth_resp_code;
	char sasl[256];      /* space separated SASL mechanisms, upper case */
	long login_delay;    /* LOGIN-DELAY seconds (RFC 2449 §6.5), -1: not announced */
};
/* The longest LOGIN-DELAY taken from a server (a week); more is read as
 * this, so a hostile value cannot stop a schedule for ever. */
#define POP3_MAX_LOGIN_DELAY (7L * 86400)
void pop3_capa_init(struct pop3_capa *capa);
/* Feed one line of the CAPA multi-line body (dot-unstuffed, CRLF removed). */
void pop3_capa_add_line(struct pop3_capa *capa, const char *line);
/* True if mech (case-insensitive) is among the SASL mechanisms. */
bool pop3_capa_has_sasl(const struct pop3_capa *capa, const char *mech);

/* "+OK nn mm" of STAT. Strict numbers. */
bool pop3_parse_stat(const char *text, uint32_t *count, uint64_t *octets);
/* One LIST body line "msg size". */
bool pop3_parse_list_line(const char *line, uint32_t *msg, uint64_t *size);
/* One UIDL body line "msg uid"; *uid points into line. Tolerates several
 * spaces between the fields (seen in the wild), nothing after the uid. */
bool pop3_parse_uidl_line(const char *line, uint32_t *msg, const char **uid);
/* RFC 1939 unique-id syntax: 1..70 chars of 0x21..0x7E. */
bool pop3_uidl_valid(const char *uid);

/* APOP timestamp from a greeting ("<...@...>"), RFC 1939 §7. Copies it to
 * out (with the angle brackets) and returns true only if it is well formed:
 * printable ASCII, contains '@', at most size-1 chars. */
bool pop3_greeting_timestamp(const char *greeting, char *out, size_t size);

/* Streaming decoder for a multi-line response body. Input may be cut at any
 * byte. Lines end in CRLF (a bare LF is accepted as a line end too; a bare
 * CR is data). A line starting with '.' loses that dot; a line that is just
 * "." ends the response. Output: the lines joined with LF. */
struct pop3_unstuffer {
	int state;
	bool done;
	uint64_t in_bytes;   /* wire bytes consumed, terminator included */
	uint64_t out_bytes;  /* message bytes produced */
};
void pop3_unstuffer_init(struct pop3_unstuffer *u);
/* Decode in[0..inlen) into out (room for inlen + 1 bytes). Stops right after
 * the terminating line: *consumed tells how much input was used (the rest
 * belongs to the next response). Returns the bytes written to out. */
size_t pop3_unstuff(struct pop3_unstuffer *u, const char *in, size_t inlen,
    char *out, size_t *consumed);

#endif

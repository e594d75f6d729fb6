/* POP3 wire form of a stored message (RFC 1939 §3): every line ends in CRLF,
 * a line that starts with '.' gets one more '.', and a message whose last line
 * has no newline gets one. The terminating ".\r\n" is NOT written here.
 *
 * Canonical rule (also what the wire size counts, docs/PROTOCOL.md §4): split the file at
 * LF; a CR directly before that LF belongs to the line end and is dropped; every
 * other byte is passed through unchanged (bare CR, NUL, 8-bit); each line is sent
 * as its bytes + CRLF; a final segment without LF is sent as a line too (a CR at
 * its very end counts as its line end). An empty file has no lines.
 *
 * The encoder is streaming: input may be cut anywhere (even between CR and LF).
 *
 * mbox messages (wire_encoder_set_from_quoting): a line that a writer
 * quoted loses its quoting '>' before the rule above: WIRE_FROM_MBOXO takes
 * the '>' off ">From " only, WIRE_FROM_MBOXRD takes one '>' off any line
 * that matches ">+From " (docs/DESIGN.md "mbox"). The held '>' and up to
 * four letters of "From " are carried from one call to the next.
 */
#ifndef POPBOX_WIRE_H
#define POPBOX_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum wire_from_quoting {
	WIRE_FROM_NONE = 0,   /* bytes as stored (Maildir) */
	WIRE_FROM_MBOXO,      /* ">From " -> "From " */
	WIRE_FROM_MBOXRD,     /* ">>*From " -> one '>' less */
};

struct wire_encoder {
	bool at_line_start;   /* next byte starts a line */
	bool pending_cr;      /* last input byte was CR, LF may follow */
	bool line_empty;      /* current line has no bytes yet (header/body split) */
	bool in_body;         /* blank line after the headers seen */
	bool done;            /* TOP: line limit reached, ignore further input */
	int64_t body_lines;   /* TOP: body lines still to send; -1 = no limit */
	uint64_t stuffed;     /* dots added by dot-stuffing so far */
	uint64_t emitted;     /* bytes written so far, dots included */
	uint8_t from_quoting; /* enum wire_from_quoting */
	uint8_t lead;         /* 0, 1: a line's first '>' held, 2: and lead_match of "From " */
	uint8_t lead_match;
};

/* top_lines < 0: whole message (RETR); >= 0: headers, the blank line and that
 * many body lines (TOP msg n). */
void wire_encoder_init(struct wire_encoder *enc, int64_t top_lines);

/* Unquote ">From " lines as mode says (default WIRE_FROM_NONE); call
 * right after wire_encoder_init. */
void wire_encoder_set_from_quoting(struct wire_encoder *enc, enum wire_from_quoting mode);

/* Worst-case output for inlen input bytes: every byte may double, plus the
 * bytes held back from the previous call (a CR, a quoted line's lead). */
#define WIRE_ENCODE_MAX(inlen) (2 * (inlen) + 8)
/* Most wire_encode_finish writes. */
#define WIRE_FINISH_MAX 8

/* Convert in[0..inlen) into out, which must hold WIRE_ENCODE_MAX(inlen)
 * bytes. Returns the number of bytes written. After enc->done is set, input is
 * ignored and 0 returned. */
size_t wire_encode(struct wire_encoder *enc, const char *in, size_t inlen, char *out);

/* End of input: writes the missing final CRLF (if any) into out (>= WIRE_FINISH_MAX bytes)
 * and returns the byte count. */
size_t wire_encode_finish(struct wire_encoder *enc, char *out);

/* Wire size of a whole message as RETR sends it (dots not counted), from its
 * stored bytes. Convenience for a buffer in memory; stores stream through
 * wire_encoder and use emitted - stuffed. */
uint64_t wire_size_of(const char *data, size_t len);

#endif

/* mbox parser: finds the messages of an mbox file fed to it in pieces of
 * any size, with each message's exact POP3 wire size and an identity digest
 * for its UIDL (docs/DESIGN.md "mbox"). Pure: no file access, so the store
 * (store_mbox.c), the unit tests and the fuzz target drive the same code.
 *
 * Format (what Debian's MTAs write, what mutt and Python's mailbox read):
 * - A message starts with a From_ line: "From " at the start of the file or
 *   directly after an empty line. "From " lines elsewhere are message text
 *   (a writer that did not quote them is not trusted to have separated
 *   messages there either). Content-Length: headers are not used.
 * - The empty line before a From_ line, and an empty last line of the file,
 *   belong to the separator, not to the message.
 * - Lines end in LF or CRLF; a last line without a line end is a line.
 * - Quoted From_ lines (">From ", ">>From " for mboxrd) lose one '>' when
 *   served; the wire size counts that (common/wire.h, same rule).
 * - The identity digest is SHA-256 over the From_ line and the message,
 *   without the header lines that mail readers rewrite in place (Status:,
 *   X-Status:, X-Keywords:, X-UID:, Content-Length:, Lines:, ...), so a
 *   mutt or alpine flag change does not change it.
 * A file that does not start with a From_ line is not an mbox: an error,
 * never a guess (serving or expunging it could lose text).
 */
#ifndef POPBOX_MBOX_PARSE_H
#define POPBOX_MBOX_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/wire.h"

#define MBOX_DIGEST_LEN 32

struct mbox_message {
	uint64_t from_offset;   /* start of its From_ line */
	uint64_t data_offset;   /* first byte after the From_ line's LF */
	uint64_t data_length;   /* the message's bytes, separator excluded */
	uint64_t end_offset;    /* the next From_ line's offset, or the end */
	uint64_t size;          /* wire octets of RETR */
	unsigned char digest[MBOX_DIGEST_LEN];
	/* popa3d 1.0.3's UIDL of the message (uidl_format = popa3d): MD5 over
	 * its Date:, Message-ID: and Received: header fields (name matched
	 * without case, continuation lines and line ends included) in file
	 * order, up to and including the first Received:; the UIDL is the
	 * first two 32-bit words of the MD5 as little-endian numbers in
	 * %08x. Identical for messages with the same such headers. */
	char popa3d_uidl[17];
};

struct mbox_parser;

/* max_messages: more is an error (bounded memory). */
struct mbox_parser *mbox_parser_new(enum wire_from_quoting quoting, uint32_t max_messages);
/* Feed the next len bytes of the file. False on error (see error). */
bool mbox_parser_feed(struct mbox_parser *p, const char *data, size_t len);
/* End of file. False on error. */
bool mbox_parser_finish(struct mbox_parser *p);
/* After finish: the messages in file order (owned by the parser until
 * mbox_parser_take). */
const struct mbox_message *mbox_parser_messages(const struct mbox_parser *p, uint32_t *count_r);
/* Hand the array (malloc'd) to the caller; the parser forgets it. */
struct mbox_message *mbox_parser_take(struct mbox_parser *p, uint32_t *count_r);
/* Why feed or finish failed (static text). */
const char *mbox_parser_error(const struct mbox_parser *p);
void mbox_parser_free(struct mbox_parser *p);

#endif

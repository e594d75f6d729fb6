/* Line ends of mail coming in (popbox deliver, LMTP): CRLF becomes LF, the
 * Maildir convention other readers of the same maildrop expect, without
 * changing what POP3 sends (common/wire.h): a CR LF whose CR follows another
 * CR is kept as it is, since the wire rule would read the stored "CR LF" as a
 * line end and lose the first CR. So wire(eol_to_lf(x)) == wire(x) for every
 * x, which tests/unit/test_eol.c checks. Streaming: input may be cut anywhere.
 */
#ifndef POPBOX_EOL_H
#define POPBOX_EOL_H

#include <stdbool.h>
#include <stddef.h>

struct eol_converter {
	bool pending_cr;      /* the last input byte was a CR, not written yet */
	bool cr_before;       /* the byte before that pending CR was a CR too */
};

void eol_converter_init(struct eol_converter *c);
/* Convert in[0..len) into out, which must hold len + 1 bytes (a CR held
 * back from the previous call may come out first). Returns bytes written. */
size_t eol_convert(struct eol_converter *c, const char *in, size_t len, char *out);
/* End of input: writes a held-back CR (at most 1 byte). */
size_t eol_finish(struct eol_converter *c, char *out);

#endif

/* CRLF to LF for incoming mail (eol.h). */
#include "common/eol.h"

void
eol_converter_init(struct eol_converter *c)
{
	c->pending_cr = false;
	c->cr_before = false;
}

size_t
eol_convert(struct eol_converter *c, const char *in, size_t len, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		char b = in[i];

		if (c->pending_cr) {
			c->pending_cr = false;
			if (b == '\n') {
				/* "CR CR LF" keeps both CRs: see eol.h */
				if (c->cr_before)
					out[o++] = '\r';
				out[o++] = '\n';
				c->cr_before = false;
				continue;
			}
			out[o++] = '\r';
			if (b == '\r') {
				c->pending_cr = true;
				c->cr_before = true;
				continue;
			}
		}
		if (b == '\r') {
			c->pending_cr = true;
			c->cr_before = false;
			continue;
		}
		out[o++] = b;
	}
	return o;
}

size_t
eol_finish(struct eol_converter *c, char *out)
{
	if (!c->pending_cr)
		return 0;
	c->pending_cr = false;
	out[0] = '\r';
	return 1;
}

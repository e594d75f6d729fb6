/* POP3 wire encoder (contract in wire.h).
 *
 * Speed matters here: RETR of big messages runs through this loop, so lines are
 * found with memchr and copied with memcpy, and the per-byte work is only the
 * check of a line's first byte and of the byte before each LF. */
#include "common/wire.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

void
wire_encoder_init(struct wire_encoder *enc, int64_t top_lines)
{
	memset(enc, 0, sizeof(*enc));
	enc->at_line_start = true;
	enc->line_empty = true;
	enc->body_lines = top_lines < 0 ? -1 : top_lines;
	/* TOP counts body lines only, so with TOP the header part must end
	 * before anything stops; RETR never stops. */
}

void
wire_encoder_set_from_quoting(struct wire_encoder *enc, enum wire_from_quoting mode)
{
	enc->from_quoting = (uint8_t)mode;
}

static const char wire_from[] = "From ";
#define WIRE_FROM_LEN 5

/* The held lead of a line that turned out not to be a quoted From_ line:
 * the '>' and the letters of "From " matched so far. */
static size_t
wire_lead_flush(struct wire_encoder *enc, char *out)
{
	size_t n = 0;
	out[n++] = '>';
	if (enc->lead == 2) {
		memcpy(out + n, wire_from, enc->lead_match);
		n += enc->lead_match;
	}
	enc->lead = 0;
	enc->lead_match = 0;
	return n;
}

/* Write the CRLF that ends the current line and account for TOP. */
/*
 * Copy in[p..) to *op up to the first LF, which is not copied; returns it,
 * or NULL when there is none before end (then all of it was copied). The
 * heart of RETR: memchr and memcpy per line cost a quarter of a worker's
 * CPU on a 1 MiB RETR (two calls per 72-byte line, bench/README.md); this
 * moves 16 bytes at a time and looks for the LF in the same pass. A block
 * may store up to 15 bytes past the line's end: out has room for them (the
 * caller's out holds WIRE_ENCODE_MAX(inlen), and whole blocks are only
 * taken while 16 input bytes remain), and they are overwritten next.
 */
static inline const char *
wire_copy_line(const char *p, const char *end, char **op)
{
	char *o = *op;
#ifdef __SSE2__
	const __m128i nl = _mm_set1_epi8('\n');
	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		_mm_storeu_si128((__m128i *)(void *)o, v);
		unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, nl));
		if (m != 0) {
			unsigned i = (unsigned)__builtin_ctz(m);
			*op = o + i;
			return p + i;
		}
		p += 16;
		o += 16;
	}
	while (p < end && *p != '\n')
		*o++ = *p++;
	*op = o;
	return p < end ? p : NULL;
#else
	const char *lf = memchr(p, '\n', (size_t)(end - p));
	size_t n = (size_t)((lf != NULL ? lf : end) - p);
	memcpy(o, p, n);
	*op = o + n;
	return lf;
#endif
}

static size_t
wire_end_line(struct wire_encoder *enc, char *out)
{
	out[0] = '\r';
	out[1] = '\n';
	if (!enc->in_body) {
		if (enc->line_empty) {
			/* The first empty line separates header and body
			 * (RFC 5322 §2.1); TOP always sends it. */
			enc->in_body = true;
			if (enc->body_lines == 0)
				enc->done = true;
		}
	} else if (enc->body_lines > 0) {
		if (--enc->body_lines == 0)
			enc->done = true;
	}
	enc->at_line_start = true;
	enc->line_empty = true;
	return 2;
}

size_t
wire_encode(struct wire_encoder *enc, const char *in, size_t inlen, char *out)
{
	const char *p = in, *end = in + inlen;
	char *o = out;

	while (p < end && !enc->done) {
		if (enc->lead != 0) {
			/* Inside a line that starts with '>': is it a quoted
			 * From_ line? Decided byte by byte, then either the
			 * held '>' is dropped or written back. */
			if (enc->lead == 1 && *p == '>' && enc->from_quoting == WIRE_FROM_MBOXRD) {
				/* '>' are all alike: write the extra ones now */
				*o++ = *p++;
				continue;
			}
			if (enc->lead == 1 && *p == 'F') {
				enc->lead = 2;
				enc->lead_match = 1;
				p++;
				continue;
			}
			if (enc->lead == 2 && *p == wire_from[enc->lead_match]) {
				p++;
				if (++enc->lead_match == WIRE_FROM_LEN) {
					memcpy(o, wire_from, WIRE_FROM_LEN);
					o += WIRE_FROM_LEN;
					enc->lead = 0;
					enc->lead_match = 0;
				}
				continue;
			}
			o += wire_lead_flush(enc, o);
			/* *p is an ordinary byte of the line: on below */
		}
		if (enc->pending_cr) {
			/* A CR ended the previous chunk: it is the line end
			 * if LF follows, else an ordinary (bare) byte. */
			enc->pending_cr = false;
			if (*p == '\n') {
				p++;
				o += wire_end_line(enc, o);
				continue;
			}
			*o++ = '\r';
			enc->line_empty = false;
		}
		if (enc->at_line_start) {
			enc->at_line_start = false;
			if (*p == '.') {
				*o++ = '.';
				enc->stuffed++;
			} else if (*p == '>' && enc->from_quoting != WIRE_FROM_NONE) {
				enc->lead = 1;
				enc->line_empty = false;
				p++;
				continue;
			}
		}
		const char *lf = wire_copy_line(p, end, &o);
		if (lf != NULL) {
			size_t n = (size_t)(lf - p);
			/* A CR directly before the LF belongs to the line end:
			 * taken back, the line end writes CRLF. */
			if (n > 0 && lf[-1] == '\r') {
				n--;
				o--;
			}
			if (n > 0)
				enc->line_empty = false;
			p = lf + 1;
			o += wire_end_line(enc, o);
		} else {
			size_t n = (size_t)(end - p);
			/* A trailing CR may be the first half of a CRLF that
			 * the next chunk completes: hold it back. */
			if (end[-1] == '\r') {
				n--;
				o--;
				enc->pending_cr = true;
			}
			if (n > 0)
				enc->line_empty = false;
			p = end;
		}
	}
	enc->emitted += (uint64_t)(o - out);
	return (size_t)(o - out);
}

size_t
wire_encode_finish(struct wire_encoder *enc, char *out)
{
	size_t n = 0;

	if (enc->done)
		return 0;
	if (enc->lead != 0)
		n = wire_lead_flush(enc, out);
	/* A CR at the very end of the input is that last line's end; an
	 * unterminated last line gets its CRLF (RFC 1939 §3: lines end in
	 * CRLF, the terminator must start a line of its own). */
	if (enc->pending_cr || !enc->at_line_start) {
		enc->pending_cr = false;
		n += wire_end_line(enc, out + n);
	}
	enc->emitted += n;
	return n;
}

/* Counted without the encoder, line by line: a separate implementation the
 * tests compare against the encoder's emitted - stuffed. */
uint64_t
wire_size_of(const char *data, size_t len)
{
	const char *p = data, *end = data + len;
	uint64_t size = 0;

	while (p < end) {
		const char *lf = memchr(p, '\n', (size_t)(end - p));
		if (lf == NULL) {
			size_t n = (size_t)(end - p);
			if (end[-1] == '\r')
				n--;
			size += n + 2;
			break;
		}
		size_t n = (size_t)(lf - p);
		if (n > 0 && lf[-1] == '\r')
			n--;
		size += n + 2;
		p = lf + 1;
	}
	return size;
}

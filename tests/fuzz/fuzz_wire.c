/* Z5: the dot-stuffing pair (docs/RELIABILITY.md §7). The server's
 * streaming encoder (src/common/wire.c) and the client's streaming unstuffer
 * (src/common/pop3_proto.c) must be inverse on every stored message:
 *
 *   unstuff(encode(M) + ".\r\n") == canonical(M)
 *
 * where canonical(M) is the wire.h rule (split at LF, a CR right before the LF
 * or at the very end belongs to the line end, every other byte passes) with
 * the lines joined by LF. Also checked: the result does not depend on how
 * either side's input is cut into chunks; "\r\n.\r\n" never appears before the
 * terminator; emitted - stuffed equals wire_size_of(M) (what LIST announces);
 * TOP n output is a line-boundary prefix of the RETR output.
 *
 * Input: byte 0 picks the encoder chunk size, byte 1 the decoder chunk size,
 * byte 2 the TOP line count; the rest is the stored message. */
#include <string.h>

#include "fuzz_common.h"
#include "common/pop3_proto.h"
#include "common/wire.h"

/* Encode msg[0..len) in chunks of step bytes (the whole message when step is
 * 0); returns a malloc'd wire form, *enc_r the final encoder state. */
static char *
encode(const char *msg, size_t len, size_t step, int64_t top, size_t *out_len,
    struct wire_encoder *enc_r)
{
	char *out = malloc(WIRE_ENCODE_MAX(len) + 8);
	size_t o = 0;
	wire_encoder_init(enc_r, top);
	if (step == 0)
		step = len ? len : 1;
	for (size_t i = 0; i < len; i += step) {
		size_t n = len - i < step ? len - i : step;
		size_t before = o;
		o += wire_encode(enc_r, msg + i, n, out + o);
		FUZZ_CHECK(o - before <= WIRE_ENCODE_MAX(n), "chunk of %zu gave %zu", n, o - before);
	}
	o += wire_encode_finish(enc_r, out + o);
	*out_len = o;
	return out;
}

static size_t
canonical(const char *m, size_t len, char *out)
{
	size_t o = 0, start = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && m[i] != '\n')
			continue;
		if (i == len && start == len)
			break;          /* no final segment */
		size_t end = i;
		if (end > start && m[end - 1] == '\r')
			end--;
		memcpy(out + o, m + start, end - start);
		o += end - start;
		out[o++] = '\n';
		start = i + 1;
	}
	return o;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	size_t enc_step = data[0] % 17;          /* 0 = all at once */
	size_t dec_step = data[1] % 17 + 1;
	int64_t top = data[2] < 0x80 ? (int64_t)(data[2] % 8) : -1;
	const char *msg = (const char *)data + 3;
	size_t len = size - 3;

	struct wire_encoder whole_enc, enc;
	size_t whole_len, wlen;
	char *whole = encode(msg, len, 0, -1, &whole_len, &whole_enc);
	char *wire = encode(msg, len, enc_step, -1, &wlen, &enc);
	FUZZ_CHECK(wlen == whole_len && memcmp(wire, whole, wlen) == 0,
	    "chunked encoding (step %zu) differs", enc_step);
	FUZZ_CHECK(enc.emitted == wlen, "emitted %llu != %zu", (unsigned long long)enc.emitted, wlen);
	FUZZ_CHECK(enc.emitted - enc.stuffed == wire_size_of(msg, len),
	    "size %llu != wire_size_of %llu", (unsigned long long)(enc.emitted - enc.stuffed),
	    (unsigned long long)wire_size_of(msg, len));
	FUZZ_CHECK(wlen == 0 || (wlen >= 2 && wire[wlen - 2] == '\r' && wire[wlen - 1] == '\n'),
	    "wire form does not end in CRLF");
	/* The terminator must be unambiguous: no line "." before it. */
	FUZZ_CHECK(!(wlen >= 3 && memcmp(wire, ".\r\n", 3) == 0), "wire starts with a lone dot line");
	for (size_t i = 0; i + 5 <= wlen; i++)
		FUZZ_CHECK(memcmp(wire + i, "\r\n.\r\n", 5) != 0, "early terminator at %zu", i);

	/* Decode wire + ".\r\n" + trailing bytes of the next response. */
	size_t tlen = wlen + 3 + 4;
	char *t = malloc(tlen);
	memcpy(t, wire, wlen);
	memcpy(t + wlen, ".\r\n+OK\r", 7);
	char *dec = malloc(tlen + 1);
	size_t dlen = 0, i = 0;
	struct pop3_unstuffer u;
	pop3_unstuffer_init(&u);
	while (i < tlen && !u.done) {
		size_t chunk = tlen - i < dec_step ? tlen - i : dec_step;
		size_t used;
		dlen += pop3_unstuff(&u, t + i, chunk, dec + dlen, &used);
		FUZZ_CHECK(used <= chunk && (used > 0 || u.done), "unstuffer stalled");
		i += used;
	}
	FUZZ_CHECK(u.done, "terminator not found");
	FUZZ_CHECK(i == wlen + 3, "unstuffer consumed %zu of %zu", i, wlen + 3);
	FUZZ_CHECK(u.in_bytes == wlen + 3, "in_bytes %llu", (unsigned long long)u.in_bytes);
	FUZZ_CHECK(u.out_bytes == dlen, "out_bytes %llu != %zu", (unsigned long long)u.out_bytes, dlen);

	char *canon = malloc(len + 1 + 1);
	size_t clen = canonical(msg, len, canon);
	FUZZ_CHECK(clen == dlen && memcmp(canon, dec, clen) == 0,
	    "round trip differs: canonical %zu bytes, decoded %zu bytes", clen, dlen);

	/* TOP: a prefix of RETR at a line boundary. */
	if (top >= 0) {
		struct wire_encoder tenc;
		size_t toplen;
		char *topw = encode(msg, len, enc_step, top, &toplen, &tenc);
		FUZZ_CHECK(toplen <= wlen && memcmp(topw, wire, toplen) == 0, "TOP is not a prefix of RETR");
		FUZZ_CHECK(toplen == wlen || (toplen >= 2 && topw[toplen - 1] == '\n' && topw[toplen - 2] == '\r'),
		    "TOP does not end at a line end");
		free(topw);
	}
	free(canon);
	free(dec);
	free(t);
	free(wire);
	free(whole);
	return 0;
}

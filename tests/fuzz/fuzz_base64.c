/* Z2: base64 as the server decodes SASL responses (RFC 5034 §4) and the
 * client decodes challenges (src/common/base64.c). Properties:
 * - decode never reads past len (ASan) and never accepts a length that is
 *   not a multiple of 4 or a byte outside the alphabet and final padding;
 * - decode(encode(x)) == x for any bytes x;
 * - what decodes is canonical: encode(decode(s)) == s (base64.h promises a
 *   strict decoder, and two encodings of one value let a peer smuggle bits).
 * Input: the whole buffer is both the text to decode and the bytes to encode. */
#include <string.h>

#include "fuzz_common.h"
#include "common/base64.h"

static bool
in_alphabet(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	    c == '+' || c == '/';
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* exact-size heap copy: ASan catches a read past len */
	char *in = malloc(size ? size : 1);
	memcpy(in, data, size);

	unsigned char *out;
	size_t out_len;
	if (base64_decode(in, size, &out, &out_len)) {
		FUZZ_CHECK(size % 4 == 0, "accepted length %zu", size);
		FUZZ_CHECK(out_len <= size / 4 * 3 && out_len + 2 >= size / 4 * 3, "length %zu from %zu", out_len, size);
		FUZZ_CHECK(out[out_len] == '\0', "not NUL-terminated");
		for (size_t i = 0; i < size; i++)
			FUZZ_CHECK(in_alphabet((unsigned char)in[i]) || (in[i] == '=' && i + 2 >= size),
			    "accepted byte 0x%02x at %zu", (unsigned char)in[i], i);
		char *again = base64_encode(out, out_len);
		FUZZ_CHECK(strlen(again) == size && memcmp(again, in, size) == 0,
		    "non-canonical encoding accepted (%zu bytes decode to %zu)", size, out_len);
		free(again);
		free(out);
	}

	char *enc = base64_encode(data, size);
	FUZZ_CHECK(strlen(enc) == BASE64_ENCODED_LEN(size), "encoded length");
	FUZZ_CHECK(base64_decode(enc, strlen(enc), &out, &out_len), "own encoding refused");
	FUZZ_CHECK(out_len == size && memcmp(out, data, size) == 0, "round trip differs");
	free(out);
	free(enc);
	free(in);
	return 0;
}

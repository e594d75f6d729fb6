#include "common/base64.h"
#include "common/util.h"

#include <stdlib.h>
#include <string.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *
base64_encode(const void *in, size_t len)
{
	const unsigned char *p = in;
	char *out = xmalloc(BASE64_ENCODED_LEN(len) + 1);
	size_t o = 0, i = 0;

	for (; i + 3 <= len; i += 3) {
		unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
		out[o++] = b64_alphabet[(v >> 18) & 63];
		out[o++] = b64_alphabet[(v >> 12) & 63];
		out[o++] = b64_alphabet[(v >> 6) & 63];
		out[o++] = b64_alphabet[v & 63];
	}
	if (len - i == 1) {
		unsigned v = (unsigned)p[i] << 16;
		out[o++] = b64_alphabet[(v >> 18) & 63];
		out[o++] = b64_alphabet[(v >> 12) & 63];
		out[o++] = '=';
		out[o++] = '=';
	} else if (len - i == 2) {
		unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;
		out[o++] = b64_alphabet[(v >> 18) & 63];
		out[o++] = b64_alphabet[(v >> 12) & 63];
		out[o++] = b64_alphabet[(v >> 6) & 63];
		out[o++] = '=';
	}
	out[o] = '\0';
	return out;
}

static int
b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

bool
base64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len)
{
	if (len % 4 != 0)
		return false;
	unsigned char *buf = xmalloc(len / 4 * 3 + 1);
	size_t o = 0;

	for (size_t i = 0; i < len; i += 4) {
		int v[4];
		size_t pad = 0;
		for (size_t k = 0; k < 4; k++) {
			unsigned char c = (unsigned char)in[i + k];
			if (c == '=' && i + 4 == len && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0)	/* data after '=' */
				goto bad;
			v[k] = b64_value(c);
			if (v[k] < 0)
				goto bad;
		}
		unsigned w = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 |
		    (unsigned)v[2] << 6 | (unsigned)v[3];
		/* RFC 4648 §3.5: the bits padding drops must be zero, else
		 * "QR==" and "QQ==" would both mean "A" (found by
		 * tests/fuzz/fuzz_base64). */
		if ((pad == 2 && (w & 0xffff) != 0) || (pad == 1 && (w & 0xff) != 0))
			goto bad;
		buf[o++] = (unsigned char)(w >> 16);
		if (pad < 2)
			buf[o++] = (unsigned char)(w >> 8);
		if (pad < 1)
			buf[o++] = (unsigned char)w;
	}
	buf[o] = '\0';
	*out = buf;
	*out_len = o;
	return true;
bad:
	free(buf);
	return false;
}

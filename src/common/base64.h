/* Base64 (RFC 4648 §4, standard alphabet, with padding) for SASL exchanges
 * (RFC 5034 continuation lines) and anything else both programs need. */
#ifndef POPBOX_BASE64_H
#define POPBOX_BASE64_H

#include <stdbool.h>
#include <stddef.h>

/* Encoded length of n input bytes, without the terminating NUL. */
#define BASE64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4)

/* Encode in[0..len) into a new NUL-terminated string (xmalloc; caller frees). */
char *base64_encode(const void *in, size_t len);

/* Strict decode: only the standard alphabet, length a multiple of 4, '='
 * only as final padding, no whitespace. Returns true and a new buffer
 * (xmalloc, NUL-terminated for convenience, *out_len excludes the NUL) or
 * false on any invalid input (nothing allocated). */
bool base64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len);

#endif

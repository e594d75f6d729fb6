/* Z: the PROXY protocol v1/v2 header parser (src/server/proxy.c), which sees
 * the first bytes of every connection on a proxy_protocol listener.
 * Properties:
 * - never reads past len (ASan, exact-size copy);
 * - an accepted header has 8 <= length <= min(len, PROXY_MAX), v1 headers end
 *   in CRLF, and the address family is one the server can use;
 * - prefix consistency: every proper prefix of an accepted header is
 *   NEED_MORE, never BAD or OK (so reading it in pieces gives one answer);
 * - the verdict does not depend on bytes after the header. */
#include <string.h>

#include "fuzz_common.h"
#include "server/proxy.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned char *in = malloc(size ? size : 1);
	memcpy(in, data, size);
	struct proxy_header h;
	enum proxy_result r = proxy_parse(in, size, &h);
	if (r == PROXY_OK) {
		FUZZ_CHECK(h.length >= 8 && h.length <= size && h.length <= PROXY_MAX, "length %zu of %zu",
		    h.length, size);
		if (in[0] == 'P')
			FUZZ_CHECK(in[h.length - 2] == '\r' && in[h.length - 1] == '\n', "v1 without CRLF");
		if (h.has_address)
			FUZZ_CHECK(h.source.ss_family == AF_INET || h.source.ss_family == AF_INET6,
			    "family %d", h.source.ss_family);
		size_t hl = h.length;
		for (size_t k = 0; k < hl; k++) {
			struct proxy_header p;
			FUZZ_CHECK(proxy_parse(in, k, &p) == PROXY_NEED_MORE, "prefix %zu of %zu not NEED_MORE", k, hl);
		}
		struct proxy_header again;
		FUZZ_CHECK(proxy_parse(in, hl, &again) == PROXY_OK && again.length == hl,
		    "verdict depends on what follows");
	}
	free(in);
	return 0;
}

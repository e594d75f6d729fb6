/* libFuzzer harness for the client-side parsers of untrusted server bytes
 * (src/common/pop3_proto.c, src/common/base64.c):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *       tests/fuzz/fuzz_client_proto.c src/common/pop3_proto.c \
 *       src/common/base64.c src/common/util.c src/common/log.c -o fuzz_client_proto
 * The first byte picks the split size for the streaming unstuffer; the
 * invariant checked is that output never exceeds input + 1 and the decoder
 * never reads past what it was given. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/base64.h"
#include "common/pop3_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	size_t step = (size_t)data[0] % 64 + 1;
	data++;
	size--;

	/* line parsers get a NUL-terminated copy */
	char *line = malloc(size + 1);
	memcpy(line, data, size);
	line[size] = '\0';
	const char *text;
	enum pop3_resp_code code;
	(void)pop3_parse_status(line, &text, &code);
	struct pop3_capa capa;
	pop3_capa_init(&capa);
	pop3_capa_add_line(&capa, line);
	(void)pop3_capa_has_sasl(&capa, "SCRAM-SHA-256");
	if (capa.login_delay < -1 || capa.login_delay > POP3_MAX_LOGIN_DELAY)
		abort();	/* LOGIN-DELAY: -1 or 0 .. the cap */
	uint32_t n, count;
	uint64_t sz;
	const char *uid;
	(void)pop3_parse_stat(line, &count, &sz);
	(void)pop3_parse_list_line(line, &n, &sz);
	(void)pop3_parse_uidl_line(line, &n, &uid);
	char ts[POP3_MAX_RESPONSE_LINE];
	(void)pop3_greeting_timestamp(line, ts, sizeof(ts));
	unsigned char *dec;
	size_t declen;
	if (base64_decode(line, size, &dec, &declen))
		free(dec);
	free(line);

	struct pop3_unstuffer u;
	char out[64 + 1];
	pop3_unstuffer_init(&u);
	for (size_t i = 0; i < size && !u.done;) {
		size_t chunk = size - i < step ? size - i : step;
		size_t used;
		size_t o = pop3_unstuff(&u, (const char *)data + i, chunk, out, &used);
		if (o > chunk + 1 || used > chunk || (used == 0 && !u.done))
			abort();
		i += used;
	}
	return 0;
}

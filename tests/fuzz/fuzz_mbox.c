/* Z4: the mbox parser (src/server/mbox_parse.c) on any file. Invariants:
 * - the result does not depend on how the file is cut into pieces;
 * - the messages tile the file: the first starts at 0 with "From ", each
 *   ends where the next starts, the last at the end of the file, and each
 *   message's bytes lie between its From_ line and its end;
 * - each message's size is exactly what the wire encoder sends for its
 *   bytes with the same unquoting (what LIST says is what RETR sends),
 *   whether the encoder gets the bytes at once or in pieces;
 * - a message count equal to a naive count of separators.
 * Input: byte 0 picks the quoting (mboxo, mboxrd, none), byte 1 the piece
 * size; the rest is the file. */
#include <string.h>

#include "fuzz_common.h"
#include "common/wire.h"
#include "server/mbox_parse.h"

static struct mbox_message *
parse(const char *d, size_t len, enum wire_from_quoting q, size_t step, uint32_t *count, bool *ok)
{
	struct mbox_parser *p = mbox_parser_new(q, 100000);
	*ok = true;
	for (size_t i = 0; i < len && *ok; i += step)
		*ok = mbox_parser_feed(p, d + i, len - i < step ? len - i : step);
	if (*ok)
		*ok = mbox_parser_finish(p);
	struct mbox_message *m = mbox_parser_take(p, count);
	mbox_parser_free(p);
	return m;
}

static uint64_t
wire_octets(const char *d, uint64_t len, enum wire_from_quoting q, size_t step)
{
	struct wire_encoder enc;
	char *out = malloc(WIRE_ENCODE_MAX(step) + WIRE_FINISH_MAX);
	wire_encoder_init(&enc, -1);
	wire_encoder_set_from_quoting(&enc, q);
	for (uint64_t i = 0; i < len; i += step) {
		size_t n = len - i < step ? (size_t)(len - i) : step;
		size_t o = wire_encode(&enc, d + i, n, out);
		FUZZ_CHECK(o <= WIRE_ENCODE_MAX(n), "piece of %zu gave %zu", n, o);
	}
	size_t o = wire_encode_finish(&enc, out);
	FUZZ_CHECK(o <= WIRE_FINISH_MAX, "finish gave %zu", o);
	free(out);
	return enc.emitted - enc.stuffed;
}

/* Separators counted the simple way: "From " at 0 or after an empty line. */
static uint32_t
naive_count(const char *d, size_t len)
{
	uint32_t n = 0;
	bool prev_empty = false;
	size_t start = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && d[i] != '\n')
			continue;
		size_t l = i - start;
		if (i == len && l == 0)
			break;
		if (l >= 5 && memcmp(d + start, "From ", 5) == 0 && (start == 0 || prev_empty))
			n++;
		prev_empty = i < len && (l == 0 || (l == 1 && d[start] == '\r'));
		start = i + 1;
	}
	return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	enum wire_from_quoting q = (enum wire_from_quoting)(data[0] % 3);
	size_t step = data[1] % 23 + 1;
	const char *d = (const char *)data + 2;
	size_t len = size - 2;

	uint32_t n1, n2;
	bool ok1, ok2;
	struct mbox_message *m1 = parse(d, len, q, len ? len : 1, &n1, &ok1);
	struct mbox_message *m2 = parse(d, len, q, step, &n2, &ok2);
	FUZZ_CHECK(ok1 == ok2 && (!ok1 || (n1 == n2 && (n1 == 0 || memcmp(m1, m2, n1 * sizeof(*m1)) == 0))),
	    "pieces of %zu parse differently", step);
	if (ok1) {
		FUZZ_CHECK(len == 0 || (n1 > 0 && m1[0].from_offset == 0), "first message");
		FUZZ_CHECK(n1 == naive_count(d, len), "%u messages, naive %u", n1, naive_count(d, len));
		for (uint32_t i = 0; i < n1; i++) {
			const struct mbox_message *m = &m1[i];
			FUZZ_CHECK(memcmp(d + m->from_offset, "From ", 5) == 0, "message %u", i);
			FUZZ_CHECK(m->end_offset == (i + 1 < n1 ? m1[i + 1].from_offset : len), "end %u", i);
			FUZZ_CHECK(m->data_offset >= m->from_offset + 5 &&
			    m->data_offset + m->data_length <= m->end_offset, "range %u", i);
			uint64_t w = wire_octets(d + m->data_offset, m->data_length, q,
			    m->data_length ? (size_t)m->data_length : 1);
			FUZZ_CHECK(w == m->size, "message %u: size %llu, wire %llu", i,
			    (unsigned long long)m->size, (unsigned long long)w);
			FUZZ_CHECK(wire_octets(d + m->data_offset, m->data_length, q, step) == w,
			    "message %u: encoder pieces", i);
		}
	} else {
		FUZZ_CHECK(len > 0 && (len < 5 || memcmp(d, "From ", 5) != 0), "refused an mbox");
	}
	free(m1);
	free(m2);
	return 0;
}

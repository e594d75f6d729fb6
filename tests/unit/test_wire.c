/* Unit tests for the POP3 wire encoder (common/wire.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "common/wire.h"

/* Property tests: random message count and size, enough to hit every state
 * transition many times while staying well under a second. */
#define PROPERTY_MESSAGES 400
#define PROPERTY_MAX_LEN 200
#define PROPERTY_SEED 1939

struct encoded {
	char *data;
	size_t len;
	uint64_t stuffed;
	uint64_t emitted;
};

/* Encode in[0..len) cut into chunks of the given sizes (cuts[] sums to len);
 * ncuts == 0 means one shot. */
static struct encoded
encode_chunks(const char *in, size_t len, int64_t top, const size_t *cuts, size_t ncuts)
{
	struct wire_encoder enc;
	struct encoded r;
	size_t pos = 0, i = 0;

	r.data = xmalloc(WIRE_ENCODE_MAX(len) + 8);
	r.len = 0;
	wire_encoder_init(&enc, top);
	while (pos < len) {
		size_t n = ncuts > 0 ? cuts[i++] : len;
		assert_true(pos + n <= len);
		size_t before = r.len;
		r.len += wire_encode(&enc, in + pos, n, r.data + r.len);
		/* Each call stays within its own worst-case bound. */
		assert_true(r.len - before <= WIRE_ENCODE_MAX(n));
		pos += n;
	}
	r.len += wire_encode_finish(&enc, r.data + r.len);
	assert_int_equal(enc.emitted, r.len);
	r.stuffed = enc.stuffed;
	r.emitted = enc.emitted;
	return r;
}

static struct encoded
encode(const char *in, size_t len, int64_t top)
{
	return encode_chunks(in, len, top, NULL, 0);
}

static void
check_encode_len(const char *in, size_t inlen, int64_t top, const char *want, size_t wantlen)
{
	struct encoded r = encode(in, inlen, top);
	if (r.len != wantlen || memcmp(r.data, want, wantlen) != 0) {
		fprintf(stderr, "got %zu bytes: ", r.len);
		fwrite(r.data, 1, r.len, stderr);
		fprintf(stderr, "\n");
	}
	assert_int_equal(r.len, wantlen);
	assert_memory_equal(r.data, want, wantlen);
	if (top < 0)
		assert_int_equal(r.emitted - r.stuffed, wire_size_of(in, inlen));
	free(r.data);
}

static void
check_encode(const char *in, int64_t top, const char *want)
{
	check_encode_len(in, strlen(in), top, want, strlen(want));
}

static void
test_lf_to_crlf(void **state)
{
	check_encode("a\nb\n", -1, "a\r\nb\r\n");
	check_encode("a\r\nb\r\n", -1, "a\r\nb\r\n");
	check_encode("a\nb\r\nc\n", -1, "a\r\nb\r\nc\r\n");
	check_encode("\n\n", -1, "\r\n\r\n");
}

static void
test_dot_stuffing(void **state)
{
	check_encode(".\n", -1, "..\r\n");
	check_encode("..x\n.\n", -1, "...x\r\n..\r\n");
	check_encode("a.\n.b\r\n", -1, "a.\r\n..b\r\n");
	check_encode(".", -1, "..\r\n");
	struct encoded r = encode(".a\n.b\n.c", 8, -1);
	assert_int_equal(r.stuffed, 3);
	assert_int_equal(r.emitted - r.stuffed, wire_size_of(".a\n.b\n.c", 8));
	free(r.data);
}

static void
test_bare_cr(void **state)
{
	check_encode("a\rb\n", -1, "a\rb\r\n");
	check_encode("a\r\r\n", -1, "a\r\r\n");
	check_encode("\r.x\n", -1, "\r.x\r\n");   /* line starts with CR: no stuffing */
	check_encode("abc\r", -1, "abc\r\n");     /* final CR is the line end */
	check_encode("\r", -1, "\r\n");
	check_encode("a\r\r", -1, "a\r\r\n");
}

static void
test_nul_and_8bit(void **state)
{
	static const char in[] = "a\0b\n\xff\xfe\x80.\n\0\n";
	static const char want[] = "a\0b\r\n\xff\xfe\x80.\r\n\0\r\n";
	check_encode_len(in, sizeof(in) - 1, -1, want, sizeof(want) - 1);
}

static void
test_empty_and_no_final_newline(void **state)
{
	check_encode("", -1, "");
	assert_int_equal(wire_size_of("", 0), 0);
	check_encode("abc", -1, "abc\r\n");
	check_encode("a\nb", -1, "a\r\nb\r\n");
	assert_int_equal(wire_size_of("abc", 3), 5);
}

static void
test_crlf_and_lf_stored_identical(void **state)
{
	static const char lf[] = "From: a@b\nSubject: x\n\nbody\n.dot\n\nend\n";
	static const char crlf[] = "From: a@b\r\nSubject: x\r\n\r\nbody\r\n.dot\r\n\r\nend\r\n";
	for (int64_t top = -1; top < 6; top++) {
		struct encoded a = encode(lf, strlen(lf), top);
		struct encoded b = encode(crlf, strlen(crlf), top);
		assert_int_equal(a.len, b.len);
		assert_memory_equal(a.data, b.data, a.len);
		free(a.data);
		free(b.data);
	}
	assert_int_equal(wire_size_of(lf, strlen(lf)), wire_size_of(crlf, strlen(crlf)));
}

static void
test_top(void **state)
{
	static const char msg[] = "H1: a\nH2: b\n\nl1\n.l2\nl3\n";
	check_encode(msg, 0, "H1: a\r\nH2: b\r\n\r\n");
	check_encode(msg, 1, "H1: a\r\nH2: b\r\n\r\nl1\r\n");
	check_encode(msg, 2, "H1: a\r\nH2: b\r\n\r\nl1\r\n..l2\r\n");
	check_encode(msg, 3, "H1: a\r\nH2: b\r\n\r\nl1\r\n..l2\r\nl3\r\n");
	check_encode(msg, 100, "H1: a\r\nH2: b\r\n\r\nl1\r\n..l2\r\nl3\r\n");
	check_encode(msg, -1, "H1: a\r\nH2: b\r\n\r\nl1\r\n..l2\r\nl3\r\n");
	/* CRLF blank line, and a body without final newline. */
	check_encode("H: a\r\n\r\nx\r\ny", 5, "H: a\r\n\r\nx\r\ny\r\n");
	check_encode("H: a\r\n\r\nx\r\ny", 0, "H: a\r\n\r\n");
	/* No blank line: everything is header, TOP sends it all. */
	check_encode("H: a\nH: b\n", 0, "H: a\r\nH: b\r\n");
	check_encode("H: a\nH: b", 0, "H: a\r\nH: b\r\n");
	/* A line of one bare CR is not empty; a blank line right at the start
	 * means no headers at all. */
	check_encode("H\n\r\r\nb\n\nc\n", 0, "H\r\n\r\r\nb\r\n\r\n");
	check_encode("\nbody\n", 0, "\r\n");
	check_encode("", 0, "");
}

static void
test_done_ignores_input(void **state)
{
	struct wire_encoder enc;
	char out[64];
	wire_encoder_init(&enc, 0);
	size_t n = wire_encode(&enc, "H: a\n\nbody\n", 11, out);
	assert_int_equal(n, 8);
	assert_true(enc.done);
	assert_int_equal(wire_encode(&enc, "more\n", 5, out), 0);
	assert_int_equal(wire_encode_finish(&enc, out), 0);
}

/* Random bytes drawn mostly from the characters that matter. */
static void
random_message(char *buf, size_t len)
{
	static const char alphabet[] = "\r\n.\r\n.ab \0\xff";
	for (size_t i = 0; i < len; i++)
		buf[i] = alphabet[(size_t)rand() % (sizeof(alphabet) - 1)];
}

/* The canonical rule of wire.h written the slow, obvious way: split at LF,
 * drop a CR before the LF (or at the very end), stuff, add CRLF, count TOP
 * lines. The encoder's one-shot output must equal it. */
static struct encoded
reference_encode(const char *in, size_t len, int64_t top)
{
	struct encoded r;
	size_t start = 0;
	bool in_body = false;
	int64_t body_left = top;

	r.data = xmalloc(2 * len + 4);
	r.len = 0;
	r.stuffed = 0;
	while (start < len) {
		size_t end = start;
		while (end < len && in[end] != '\n')
			end++;
		size_t next = end < len ? end + 1 : len;
		size_t content = end;
		if (content > start && in[content - 1] == '\r')
			content--;
		if (top >= 0 && in_body) {
			if (body_left == 0)
				break;
			body_left--;
		}
		if (content > start && in[start] == '.') {
			r.data[r.len++] = '.';
			r.stuffed++;
		}
		memcpy(r.data + r.len, in + start, content - start);
		r.len += content - start;
		r.data[r.len++] = '\r';
		r.data[r.len++] = '\n';
		if (!in_body && content == start)
			in_body = true;
		start = next;
	}
	r.emitted = r.len;
	return r;
}

static void
assert_same(const struct encoded *a, const struct encoded *b)
{
	assert_int_equal(a->len, b->len);
	assert_memory_equal(a->data, b->data, a->len);
	assert_int_equal(a->stuffed, b->stuffed);
}

static void
test_property_split_points(void **state)
{
	char buf[PROPERTY_MAX_LEN];
	srand(PROPERTY_SEED);
	for (int m = 0; m < PROPERTY_MESSAGES; m++) {
		size_t len = (size_t)rand() % PROPERTY_MAX_LEN;
		random_message(buf, len);
		for (int64_t top = -1; top < 3; top++) {
			struct encoded one = encode(buf, len, top);
			struct encoded ref = reference_encode(buf, len, top);
			assert_same(&one, &ref);
			free(ref.data);
			if (top < 0)
				assert_int_equal(one.emitted - one.stuffed, wire_size_of(buf, len));
			/* Every single cut point, including 0 and len. */
			for (size_t cut = 0; cut <= len; cut++) {
				size_t cuts[2] = { cut, len - cut };
				struct encoded two = encode_chunks(buf, len, top, cuts, 2);
				assert_same(&one, &two);
				free(two.data);
			}
			/* One byte at a time. */
			size_t *ones = xmalloc((len + 1) * sizeof(*ones));
			for (size_t i = 0; i < len; i++)
				ones[i] = 1;
			struct encoded bytes = encode_chunks(buf, len, top, ones, len);
			assert_same(&one, &bytes);
			free(bytes.data);
			/* Random chunkings, empty chunks included. */
			for (int k = 0; k < 8; k++) {
				size_t n = 0, pos = 0;
				while (pos < len) {
					size_t c = (size_t)rand() % 9;
					if (c > len - pos)
						c = len - pos;
					ones[n++] = c;
					pos += c;
					if (n == len)
						break;
				}
				if (pos < len)
					ones[n - 1] += len - pos;
				struct encoded rnd = encode_chunks(buf, len, top, ones, n);
				assert_same(&one, &rnd);
				free(rnd.data);
			}
			free(ones);
			free(one.data);
		}
	}
}

/* The same property on LF-stored versus CRLF-stored forms of one message. */
static void
test_property_crlf_equivalence(void **state)
{
	char lf[PROPERTY_MAX_LEN], crlf[2 * PROPERTY_MAX_LEN];
	static const char alphabet[] = "\n.ab \xff";
	srand(PROPERTY_SEED + 1);
	for (int m = 0; m < PROPERTY_MESSAGES; m++) {
		size_t len = (size_t)rand() % PROPERTY_MAX_LEN, clen = 0;
		for (size_t i = 0; i < len; i++) {
			lf[i] = alphabet[(size_t)rand() % (sizeof(alphabet) - 1)];
			if (lf[i] == '\n')
				crlf[clen++] = '\r';
			crlf[clen++] = lf[i];
		}
		for (int64_t top = -1; top < 3; top++) {
			struct encoded a = encode(lf, len, top);
			struct encoded b = encode(crlf, clen, top);
			assert_same(&a, &b);
			free(a.data);
			free(b.data);
		}
		assert_int_equal(wire_size_of(lf, len), wire_size_of(crlf, clen));
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lf_to_crlf),
		cmocka_unit_test(test_dot_stuffing),
		cmocka_unit_test(test_bare_cr),
		cmocka_unit_test(test_nul_and_8bit),
		cmocka_unit_test(test_empty_and_no_final_newline),
		cmocka_unit_test(test_crlf_and_lf_stored_identical),
		cmocka_unit_test(test_top),
		cmocka_unit_test(test_done_ignores_input),
		cmocka_unit_test(test_property_split_points),
		cmocka_unit_test(test_property_crlf_equivalence),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

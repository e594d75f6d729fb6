/* Unit tests for incoming line-end conversion (common/eol.h): CRLF becomes
 * LF, and what POP3 sends of the result is what it would send of the input. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/eol.h"
#include "common/util.h"
#include "common/wire.h"

#define PROPERTY_RUNS 2000
#define PROPERTY_MAX_LEN 64
#define PROPERTY_SEED 2033

/* in[0..len) converted in pieces of at most cut bytes (0: one piece). */
static char *
convert(const char *in, size_t len, size_t cut, size_t *out_len)
{
	struct eol_converter c;
	char *out = xmalloc(len + 2);
	size_t o = 0, pos = 0;

	eol_converter_init(&c);
	while (pos < len) {
		size_t n = cut == 0 || len - pos < cut ? len - pos : cut;
		size_t before = o;
		o += eol_convert(&c, in + pos, n, out + o);
		assert_true(o - before <= n + 1);
		pos += n;
	}
	o += eol_finish(&c, out + o);
	assert_true(o <= len + 1);
	*out_len = o;
	return out;
}

static char *
wire(const char *in, size_t len, size_t *out_len)
{
	struct wire_encoder enc;
	char *out = xmalloc(WIRE_ENCODE_MAX(len) + 4);

	wire_encoder_init(&enc, -1);
	size_t n = wire_encode(&enc, in, len, out);
	n += wire_encode_finish(&enc, out + n);
	*out_len = n;
	return out;
}

static void
check(const char *in, const char *want)
{
	size_t n;
	char *out = convert(in, strlen(in), 0, &n);
	assert_int_equal(n, strlen(want));
	assert_memory_equal(out, want, n);
	free(out);
}

static void
test_examples(void **state)
{
	(void)state;
	check("a\r\nb\r\n", "a\nb\n");
	check("a\nb", "a\nb");
	check("bare\rcr\r\n", "bare\rcr\n");
	/* CR CR LF: the first CR is content, so the pair stays */
	check("x\r\r\n", "x\r\r\n");
	check("x\r\r\r\n", "x\r\r\r\n");
	check("end\r", "end\r");
	check("\r\n\r\n", "\n\n");
	check("", "");
}

static void
test_split_anywhere(void **state)
{
	static const char in[] = "h: v\r\n\r\nx\r\r\ny\rz\r\n\r";
	size_t whole_len;
	char *whole = convert(in, sizeof(in) - 1, 0, &whole_len);
	(void)state;
	for (size_t cut = 1; cut < sizeof(in); cut++) {
		size_t n;
		char *out = convert(in, sizeof(in) - 1, cut, &n);
		assert_int_equal(n, whole_len);
		assert_memory_equal(out, whole, n);
		free(out);
	}
	free(whole);
}

/* wire(convert(x)) == wire(x) for random x over the bytes that matter. */
static void
test_property_wire_unchanged(void **state)
{
	static const char alphabet[] = { '\r', '\n', '.', 'a', '\0' };
	char in[PROPERTY_MAX_LEN];
	(void)state;
	srand(PROPERTY_SEED);
	for (int run = 0; run < PROPERTY_RUNS; run++) {
		size_t len = (size_t)rand() % PROPERTY_MAX_LEN, n, wa, wb;
		for (size_t i = 0; i < len; i++)
			in[i] = alphabet[rand() % (int)sizeof(alphabet)];
		char *conv = convert(in, len, 1 + (size_t)rand() % 7, &n);
		char *a = wire(in, len, &wa), *b = wire(conv, n, &wb);
		assert_int_equal(wa, wb);
		assert_memory_equal(a, b, wa);
		/* and no CRLF is left whose CR is not itself after a CR */
		for (size_t i = 1; i < n; i++)
			if (conv[i] == '\n' && conv[i - 1] == '\r')
				assert_true(i >= 2 && conv[i - 2] == '\r');
		free(conv);
		free(a);
		free(b);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_examples),
		cmocka_unit_test(test_split_anywhere),
		cmocka_unit_test(test_property_wire_unchanged),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Client-side POP3 protocol core (src/common/pop3_proto.c), base64, and
 * the SCRAM iteration count check of src/client/pop3c.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "client/pop3c.h"
#include "common/base64.h"
#include "common/pop3_proto.h"
#include "common/wire.h"

static void
test_status_lines(void **state)
{
	const char *text;
	enum pop3_resp_code code;

	assert_int_equal(pop3_parse_status("+OK", &text, &code), POP3_OK);
	assert_string_equal(text, "");
	assert_int_equal(pop3_parse_status("+OK 2 320", &text, &code), POP3_OK);
	assert_string_equal(text, "2 320");
	assert_int_equal(pop3_parse_status("-ERR [IN-USE] locked", &text, &code), POP3_ERR);
	assert_int_equal(code, POP3_CODE_IN_USE);
	assert_true(pop3_code_is_temporary(code));
	pop3_parse_status("-ERR [SYS/TEMP/quota] x", &text, &code);
	assert_int_equal(code, POP3_CODE_SYS_TEMP);
	pop3_parse_status("-ERR [SYS/PERM] x", &text, &code);
	assert_int_equal(code, POP3_CODE_SYS_PERM);
	assert_false(pop3_code_is_temporary(code));
	pop3_parse_status("-ERR [AUTH] bad", &text, &code);
	assert_int_equal(code, POP3_CODE_AUTH);
	pop3_parse_status("-ERR [LOGIN-DELAY] wait", &text, &code);
	assert_int_equal(code, POP3_CODE_LOGIN_DELAY);
	pop3_parse_status("-ERR [SYS/TEMPX] x", &text, &code);
	assert_int_equal(code, POP3_CODE_OTHER);
	assert_int_equal(pop3_parse_status("+ abc=", &text, &code), POP3_CONT);
	assert_string_equal(text, "abc=");
	assert_int_equal(pop3_parse_status("+", &text, &code), POP3_CONT);
	assert_int_equal(pop3_parse_status("+OKAY", &text, &code), POP3_INVALID);
	assert_int_equal(pop3_parse_status("OK", &text, &code), POP3_INVALID);
	assert_int_equal(pop3_parse_status("", &text, &code), POP3_INVALID);
}

/* LOGIN-DELAY (RFC 2449 §6.5): seconds, optionally followed by USER;
 * anything else leaves it unknown; a huge value is capped. */
static void
test_capa_login_delay(void **state)
{
	struct pop3_capa c;
	pop3_capa_init(&c);
	assert_int_equal(c.login_delay, -1);
	pop3_capa_add_line(&c, "LOGIN-DELAY 900");
	assert_int_equal(c.login_delay, 900);
	pop3_capa_init(&c);
	pop3_capa_add_line(&c, "login-delay 60 USER");
	assert_int_equal(c.login_delay, 60);
	pop3_capa_init(&c);
	pop3_capa_add_line(&c, "LOGIN-DELAY");
	pop3_capa_add_line(&c, "LOGIN-DELAY x");
	pop3_capa_add_line(&c, "LOGIN-DELAY -5");
	pop3_capa_add_line(&c, "LOGIN-DELAYS 5");
	assert_int_equal(c.login_delay, -1);
	pop3_capa_add_line(&c, "LOGIN-DELAY 99999999999999999999");
	assert_int_equal(c.login_delay, -1);
	pop3_capa_add_line(&c, "LOGIN-DELAY 4000000000");
	assert_int_equal(c.login_delay, POP3_MAX_LOGIN_DELAY);
}

static void
test_capa(void **state)
{
	struct pop3_capa c;
	pop3_capa_init(&c);
	pop3_capa_add_line(&c, "TOP");
	pop3_capa_add_line(&c, "uidl");
	pop3_capa_add_line(&c, "PIPELINING");
	pop3_capa_add_line(&c, "SASL PLAIN scram-sha-256  LOGIN");
	pop3_capa_add_line(&c, "STLS");
	pop3_capa_add_line(&c, "IMPLEMENTATION some server");
	assert_true(c.top && c.uidl && c.pipelining && c.stls);
	assert_false(c.user);
	assert_true(pop3_capa_has_sasl(&c, "SCRAM-SHA-256"));
	assert_true(pop3_capa_has_sasl(&c, "login"));
	assert_false(pop3_capa_has_sasl(&c, "SCRAM-SHA-1"));
	assert_false(pop3_capa_has_sasl(&c, "LOG"));
}

static void
test_listings(void **state)
{
	uint32_t n, count;
	uint64_t size;
	const char *uid;

	assert_true(pop3_parse_stat("2 320", &count, &size));
	assert_int_equal(count, 2);
	assert_int_equal(size, 320);
	assert_true(pop3_parse_stat("2 320 messages", &count, &size));
	assert_false(pop3_parse_stat("4294967297 1", &count, &size));
	assert_false(pop3_parse_stat("2000000 1", &count, &size));   /* over the cap */
	assert_false(pop3_parse_stat("-1 5", &count, &size));
	assert_false(pop3_parse_stat("2", &count, &size));
	assert_true(pop3_parse_list_line("1 120", &n, &size));
	assert_false(pop3_parse_list_line("0 120", &n, &size));
	assert_false(pop3_parse_list_line("1 18446744073709551615", &n, &size));
	assert_false(pop3_parse_list_line("1 12x", &n, &size));
	assert_true(pop3_parse_uidl_line("3 abc.def", &n, &uid));
	assert_int_equal(n, 3);
	assert_string_equal(uid, "abc.def");
	assert_true(pop3_parse_uidl_line("3   spaced", &n, &uid));
	assert_false(pop3_parse_uidl_line("3 ", &n, &uid));
	assert_false(pop3_parse_uidl_line("3 a b", &n, &uid));
	char long_uid[80];
	memset(long_uid, 'a', sizeof(long_uid));
	long_uid[0] = '1';
	long_uid[1] = ' ';
	long_uid[79] = '\0';	/* 77 chars of uid: too long */
	assert_false(pop3_parse_uidl_line(long_uid, &n, &uid));
	assert_false(pop3_uidl_valid("with\x01control"));
	assert_true(pop3_uidl_valid("../../etc"));	/* valid syntax; never a path */
}

static void
test_apop_timestamp(void **state)
{
	char ts[64];
	assert_true(pop3_greeting_timestamp("POP3 ready <1896.697170952@dbc.mtview.ca.us>",
	    ts, sizeof(ts)));
	assert_string_equal(ts, "<1896.697170952@dbc.mtview.ca.us>");
	assert_false(pop3_greeting_timestamp("ready <no-at-sign>", ts, sizeof(ts)));
	assert_false(pop3_greeting_timestamp("ready <a b@c>", ts, sizeof(ts)));
	assert_false(pop3_greeting_timestamp("ready <unterminated@x", ts, sizeof(ts)));
	char big[600];
	memset(big, 'a', sizeof(big));
	big[0] = '<';
	big[10] = '@';
	big[598] = '>';
	big[599] = '\0';
	assert_false(pop3_greeting_timestamp(big, ts, sizeof(ts)));
}

/* Decode a whole multi-line body fed in pieces of `step` bytes. */
static char *
unstuff_all(const char *in, size_t len, size_t step, size_t *outlen, size_t *used_total)
{
	struct pop3_unstuffer u;
	char *out = malloc(len + 2);
	size_t o = 0, i = 0;
	pop3_unstuffer_init(&u);
	while (i < len && !u.done) {
		size_t n = len - i < step ? len - i : step;
		char tmp[64 + 1];
		size_t used;
		size_t got = pop3_unstuff(&u, in + i, n, tmp, &used);
		memcpy(out + o, tmp, got);
		o += got;
		i += used;
	}
	*outlen = o;
	*used_total = i;
	out[o] = '\0';
	return u.done ? out : (free(out), (char *)NULL);
}

static void
test_unstuff_basic(void **state)
{
	const char wire[] = "line\r\n..dot\r\n.\r\n..\r\nbare\rcr\r\n.\r\n+OK next";
	size_t olen, used;
	char *out = unstuff_all(wire, sizeof(wire) - 1, 64, &olen, &used);
	assert_non_null(out);
	assert_int_equal(olen, 10);
	/* the "." alone is the terminator: the rest belongs to the next reply */
	assert_memory_equal(out, "line\n.dot\n", 10);
	assert_string_equal(wire + used, "..\r\nbare\rcr\r\n.\r\n+OK next");
	free(out);
}

/* Property: for random messages, wire-encode (src/common/wire.c), append
 * the terminator, decode with every split size: the original comes back. */
static void
test_unstuff_roundtrip_property(void **state)
{
	static const char alphabet[] = { 'a', '.', '\n', '\r', '\0', 'F', ' ', (char)0xff };
	srand(12345);
	for (int iter = 0; iter < 400; iter++) {
		size_t len = (size_t)(rand() % 200);
		char *msg = malloc(len + 2);
		for (size_t i = 0; i < len; i++)
			msg[i] = alphabet[rand() % (int)sizeof(alphabet)];
		/* canonical form: no CR right before LF, ends with LF */
		for (size_t i = 0; i + 1 < len; i++)
			if (msg[i] == '\r' && msg[i + 1] == '\n')
				msg[i] = 'x';
		if (len > 0 && msg[len - 1] == '\r')
			msg[len - 1] = 'y';
		if (len == 0 || msg[len - 1] != '\n')
			msg[len++] = '\n';
		struct wire_encoder enc;
		char *wire = malloc(WIRE_ENCODE_MAX(len) + 8);
		wire_encoder_init(&enc, -1);
		size_t w = wire_encode(&enc, msg, len, wire);
		w += wire_encode_finish(&enc, wire + w);
		memcpy(wire + w, ".\r\n", 3);
		w += 3;
		for (size_t step = 1; step <= 64; step *= 2) {
			size_t olen, used;
			char *out = unstuff_all(wire, w, step, &olen, &used);
			assert_non_null(out);
			assert_int_equal(used, w);
			assert_int_equal(olen, len);
			assert_memory_equal(out, msg, len);
			free(out);
		}
		free(wire);
		free(msg);
	}
}

static void
test_unstuff_truncated_is_not_done(void **state)
{
	const char wire[] = "Subject: x\r\n\r\nbody\r\n";
	size_t olen, used;
	assert_null(unstuff_all(wire, sizeof(wire) - 1, 7, &olen, &used));
}

static void
test_base64(void **state)
{
	const char *cases[][2] = { { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" },
	    { "foo", "Zm9v" }, { "foobar", "Zm9vYmFy" } };
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *e = base64_encode(cases[i][0], strlen(cases[i][0]));
		assert_string_equal(e, cases[i][1]);
		unsigned char *d;
		size_t dl;
		assert_true(base64_decode(e, strlen(e), &d, &dl));
		assert_int_equal(dl, strlen(cases[i][0]));
		assert_memory_equal(d, cases[i][0], dl);
		free(d);
		free(e);
	}
	unsigned char *d;
	size_t dl;
	assert_false(base64_decode("Zg=", 3, &d, &dl));
	assert_false(base64_decode("Z===", 4, &d, &dl));
	assert_false(base64_decode("Zg==Zg==", 8, &d, &dl));
	assert_false(base64_decode("Zm 9", 4, &d, &dl));
	assert_false(base64_decode("Zm9*", 4, &d, &dl));
}

static bool
iterations(const char *msg, uint64_t *out)
{
	*out = 0;
	return pop3c_scram_iterations((const unsigned char *)msg, strlen(msg), out);
}

static void
test_scram_iteration_count(void **state)
{
	uint64_t n;

	assert_true(iterations("r=abc,s=c2FsdA==,i=4096", &n));
	assert_int_equal(n, 4096);
	assert_true(iterations("r=abc,s=c2FsdA==,i=10000000", &n));
	assert_int_equal(n, 10000000);
	assert_true(iterations("r=abc,s=c2FsdA==,i=1", &n));
	assert_int_equal(n, 1);
	assert_true(iterations("r=abc,s=c2FsdA==,i=9999999999", &n));
	assert_int_equal(n, 9999999999ULL);
	/* an attribute whose value looks like i= is not the count */
	assert_true(iterations("r=i=1,s=c2FsdA==,i=4096,x=i=1", &n));
	assert_int_equal(n, 4096);
	/* malformed: missing, empty, zero, leading zero, sign, junk, too
	 * long, twice */
	assert_false(iterations("r=abc,s=c2FsdA==", &n));
	assert_false(iterations("r=abc,s=c2FsdA==,i=", &n));
	assert_false(iterations("r=abc,s=c2FsdA==,i=0", &n));
	assert_false(iterations("r=abc,s=c2FsdA==,i=04096", &n));
	assert_false(iterations("r=abc,s=c2FsdA==,i=+4096", &n));
	assert_false(iterations("r=abc,s=c2FsdA==,i=40 96", &n));
	assert_false(iterations("r=abc,s=c2FsdA==,i=18446744073709551617", &n));
	assert_false(iterations("r=abc,s=c2FsdA==,i=4096,i=4096", &n));
	/* the length bounds the parse, not a NUL */
	const unsigned char cut[] = "r=a,s=b,i=409612";
	assert_true(pop3c_scram_iterations(cut, sizeof(cut) - 3, &n));
	assert_int_equal(n, 4096);
	/* the bounds popbox fetch applies */
	assert_int_equal(POP3C_SCRAM_MIN_ITERATIONS, 4096);
	assert_int_equal(POP3C_SCRAM_MAX_ITERATIONS, 10000000);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_status_lines),
		cmocka_unit_test(test_capa),
		cmocka_unit_test(test_capa_login_delay),
		cmocka_unit_test(test_listings),
		cmocka_unit_test(test_apop_timestamp),
		cmocka_unit_test(test_unstuff_basic),
		cmocka_unit_test(test_unstuff_roundtrip_property),
		cmocka_unit_test(test_unstuff_truncated_is_not_done),
		cmocka_unit_test(test_base64),
		cmocka_unit_test(test_scram_iteration_count),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

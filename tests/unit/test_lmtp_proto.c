/* Unit tests for src/server/lmtp_proto.c: verbs, MAIL and RCPT arguments,
 * the DATA decoder (dot-unstuffing, the terminator, cut anywhere) and the
 * queue id. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/lmtp_proto.h"

static void
test_verbs(void **state)
{
	const char *args;
	assert_int_equal(lmtp_parse_verb("LHLO mta.example", &args), LMTP_VERB_LHLO);
	assert_string_equal(args, "mta.example");
	assert_int_equal(lmtp_parse_verb("mail FROM:<a@b>", &args), LMTP_VERB_MAIL);
	assert_string_equal(args, "FROM:<a@b>");
	assert_int_equal(lmtp_parse_verb("DATA", &args), LMTP_VERB_DATA);
	assert_string_equal(args, "");
	assert_int_equal(lmtp_parse_verb("quit", &args), LMTP_VERB_QUIT);
	assert_int_equal(lmtp_parse_verb("DATAX", &args), LMTP_VERB_UNKNOWN);
	assert_int_equal(lmtp_parse_verb("DAT", &args), LMTP_VERB_UNKNOWN);
	assert_int_equal(lmtp_parse_verb("", &args), LMTP_VERB_UNKNOWN);
	assert_int_equal(lmtp_parse_verb("EHLO x", &args), LMTP_VERB_EHLO);
}

static void
test_mail(void **state)
{
	struct lmtp_mail_args m;
	assert_int_equal(lmtp_parse_mail("FROM:<a@b.example>", &m), LMTP_PARSE_OK);
	assert_string_equal(m.sender, "a@b.example");
	assert_false(m.has_size);
	assert_int_equal(lmtp_parse_mail("from: <> SIZE=1234 BODY=8BITMIME", &m), LMTP_PARSE_OK);
	assert_string_equal(m.sender, "");
	assert_true(m.has_size);
	assert_int_equal(m.size, 1234);
	assert_int_equal(lmtp_parse_mail("FROM:<@r1,@r2:u@d>", &m), LMTP_PARSE_OK);
	assert_string_equal(m.sender, "u@d");
	assert_int_equal(lmtp_parse_mail("FROM:<a@b> body=7bit", &m), LMTP_PARSE_OK);
	/* refused */
	assert_int_equal(lmtp_parse_mail("FROM:a@b", &m), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_mail("TO:<a@b>", &m), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_mail("FROM:<a b@c>", &m), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_mail("FROM:<a@b", &m), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_mail("FROM:<a\x01@b>", &m), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_mail("FROM:<a\xc3\xa9@b>", &m), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_mail("FROM:<a@b>x", &m), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_mail("FROM:<@r1:>", &m), LMTP_PARSE_OK);
	assert_int_equal(lmtp_parse_mail("FROM:<@r1>", &m), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_mail("FROM:<a@b> SIZE=-1", &m), LMTP_PARSE_BAD_PARAM);
	assert_int_equal(lmtp_parse_mail("FROM:<a@b> SIZE=18446744073709551616", &m),
	    LMTP_PARSE_BAD_PARAM);
	assert_int_equal(lmtp_parse_mail("FROM:<a@b> SIZE=1 SIZE=2", &m), LMTP_PARSE_BAD_PARAM);
	assert_int_equal(lmtp_parse_mail("FROM:<a@b> SIZE", &m), LMTP_PARSE_BAD_PARAM);
	assert_int_equal(lmtp_parse_mail("FROM:<a@b> BODY=BINARYMIME", &m), LMTP_PARSE_BAD_PARAM);
	assert_int_equal(lmtp_parse_mail("FROM:<a@b> SMTPUTF8", &m), LMTP_PARSE_BAD_PARAM);
	/* the path limit */
	char line[400], addr[300];
	memset(addr, 'a', 254);
	addr[254] = '\0';
	snprintf(line, sizeof(line), "FROM:<%s>", addr);
	assert_int_equal(lmtp_parse_mail(line, &m), LMTP_PARSE_OK);
	assert_int_equal(strlen(m.sender), 254);
	memset(addr, 'a', 255);
	addr[255] = '\0';
	snprintf(line, sizeof(line), "FROM:<%s>", addr);
	assert_int_equal(lmtp_parse_mail(line, &m), LMTP_PARSE_SYNTAX);
}

static void
test_rcpt(void **state)
{
	char a[LMTP_PATH_MAX + 1];
	assert_int_equal(lmtp_parse_rcpt("TO:<alice+x@Example.org>", a), LMTP_PARSE_OK);
	assert_string_equal(a, "alice+x@Example.org");
	assert_int_equal(lmtp_parse_rcpt("to: <alice>  ", a), LMTP_PARSE_OK);
	assert_string_equal(a, "alice");
	assert_int_equal(lmtp_parse_rcpt("TO:<>", a), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_rcpt("TO:alice", a), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_rcpt("FROM:<alice>", a), LMTP_PARSE_SYNTAX);
	assert_int_equal(lmtp_parse_rcpt("TO:<alice> NOTIFY=NEVER", a), LMTP_PARSE_BAD_PARAM);
}

/* Decode in, cut into pieces of step octets; returns the output and sets
 * *consumed to the octets taken up to the terminator (len when none). */
static char *
decode_in_steps(const char *in, size_t len, size_t step, size_t *out_len, size_t *consumed,
    bool *done)
{
	struct lmtp_data_decoder d;
	char *out = malloc(len + 2), *piece = malloc(step + 1);
	size_t o = 0, i = 0;

	lmtp_data_decoder_init(&d);
	*done = false;
	while (i < len && !*done) {
		size_t n = len - i < step ? len - i : step, got;
		size_t used = lmtp_data_decode(&d, in + i, n, piece, &got, done);
		assert_true(used <= n);
		assert_true(got <= n + 1);
		memcpy(out + o, piece, got);
		o += got;
		i += used;
		if (!*done)
			assert_int_equal(used, n);
	}
	free(piece);
	*out_len = o;
	*consumed = i;
	return out;
}

static void
check_decode_n(const char *in, size_t len, const char *want, size_t want_len, bool want_done,
    size_t want_consumed)
{
	for (size_t step = 1; step <= len + 1; step++) {
		size_t out_len, consumed;
		bool done;
		char *out = decode_in_steps(in, len, step, &out_len, &consumed, &done);
		if (out_len != want_len || memcmp(out, want, out_len) != 0)
			fail_msg("step %zu: decoded '%.*s', want '%s'", step, (int)out_len, out, want);
		assert_int_equal(done, want_done);
		assert_int_equal(consumed, want_consumed);
		free(out);
	}
}

static void
check_decode(const char *in, const char *want, bool want_done, size_t want_consumed)
{
	check_decode_n(in, strlen(in), want, strlen(want), want_done, want_consumed);
}

static void
test_data(void **state)
{
	check_decode(".\r\n", "", true, 3);
	check_decode("a\r\n.\r\nQUIT\r\n", "a\r\n", true, 6);
	check_decode("..a\r\n.b\r\n..\r\n.\r\n", ".a\r\nb\r\n.\r\n", true, 16);
	/* a bare LF is no line end: nothing ends, no dot is removed after it */
	check_decode("a\n.\nb\r\n", "a\n.\nb\r\n", false, 7);
	/* ".CR" followed by something other than LF: the dot goes, the CR stays */
	check_decode(".\rx\r\n.\r\n", "\rx\r\n", true, 8);
	check_decode(".\r\r\n.\r\n", "\r\r\n", true, 7);
	/* CR CR LF ends a line too (the LF follows a CR) */
	check_decode("a\r\r\n.\r\n", "a\r\r\n", true, 7);
	check_decode("x.\r\n", "x.\r\n", false, 4);
	/* NUL is a byte like any other */
	check_decode_n("\0.\r\n.\r\n", 7, "\0.\r\n", 4, true, 7);
}

static void
test_queue_id(void **state)
{
	char id[LMTP_QUEUE_ID_MAX + 1];
	const char *m = "Return-Path: <a@b>\r\nReceived: from mx.example (mx [192.0.2.1])\r\n"
	    "\tby host.example (Postfix) with ESMTP id 4Qx7Ab1cDz\r\n\tfor <alice@example.org>; "
	    "Fri, 4 Dec 2026 16:00:00 +0000\r\nReceived: by other id ZZZ\r\n\r\nbody id X\r\n";
	assert_true(lmtp_queue_id(m, strlen(m), id, sizeof(id)));
	assert_string_equal(id, "4Qx7Ab1cDz");
	const char *lf = "Received: by h (Postfix, from userid 0)\n id 3AB; Fri\n\nx";
	assert_true(lmtp_queue_id(lf, strlen(lf), id, sizeof(id)));
	assert_string_equal(id, "3AB");
	const char *none = "Subject: x\r\n\r\nReceived: by x id NOTHIS\r\n";
	assert_false(lmtp_queue_id(none, strlen(none), id, sizeof(id)));
	const char *noid = "Received: by x with LMTP\r\nSubject: id Y\r\n";
	assert_false(lmtp_queue_id(noid, strlen(noid), id, sizeof(id)));
	const char *cut = "Received: by x id 0123456789012345678901234567890123456789\r\n";
	assert_true(lmtp_queue_id(cut, strlen(cut), id, sizeof(id)));
	assert_int_equal(strlen(id), LMTP_QUEUE_ID_MAX);
	char small[4];
	assert_true(lmtp_queue_id(cut, strlen(cut), small, sizeof(small)));
	assert_string_equal(small, "012");
	assert_false(lmtp_queue_id("", 0, id, sizeof(id)));
	assert_false(lmtp_queue_id("Received:", 9, id, sizeof(id)));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_verbs),
		cmocka_unit_test(test_mail),
		cmocka_unit_test(test_rcpt),
		cmocka_unit_test(test_data),
		cmocka_unit_test(test_queue_id),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for the mbox parser (server/mbox_parse.h) and the wire
 * encoder's From_ unquoting (common/wire.h) that serves what it finds. */
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
#include "server/mbox_parse.h"
#include "server/store_mbox.h"

/* Parse data fed in pieces of step bytes (0: at once). */
static struct mbox_message *
parse(const char *data, size_t len, enum wire_from_quoting q, size_t step, uint32_t *count,
    bool *ok)
{
	struct mbox_parser *p = mbox_parser_new(q, 1000);
	*ok = true;
	if (step == 0)
		step = len ? len : 1;
	for (size_t i = 0; i < len && *ok; i += step)
		*ok = mbox_parser_feed(p, data + i, len - i < step ? len - i : step);
	if (*ok)
		*ok = mbox_parser_finish(p);
	struct mbox_message *m = mbox_parser_take(p, count);
	mbox_parser_free(p);
	return m;
}

/* The wire form of data[off..off+len) with unquoting q. */
static char *
encode(const char *data, uint64_t off, uint64_t len, enum wire_from_quoting q, size_t *out_len)
{
	struct wire_encoder enc;
	char *out = xmalloc(WIRE_ENCODE_MAX(len) + WIRE_FINISH_MAX);
	wire_encoder_init(&enc, -1);
	wire_encoder_set_from_quoting(&enc, q);
	size_t n = wire_encode(&enc, data + off, (size_t)len, out);
	n += wire_encode_finish(&enc, out + n);
	*out_len = n;
	return out;
}

static void
test_messages_sizes_and_unquoting(void **state)
{
	static const char mbox[] =
	    "From a@b Thu Dec  3 10:00:00 2026\n"
	    "Subject: 1\n\n>From quoted\n>>From stays in mboxo\nFrom not after a blank line\n\n"
	    "From c@d Thu Dec  3 10:00:01 2026\r\n"
	    "Subject: 2\r\n\r\n.dot\r\n\r\n\r\n"
	    "From e@f Thu Dec  3 10:00:02 2026\n"
	    "Subject: 3\n\nno final newline";
	size_t len = sizeof(mbox) - 1;
	for (size_t step = 0; step < 9; step++) {
		uint32_t count;
		bool ok;
		struct mbox_message *m = parse(mbox, len, WIRE_FROM_MBOXO, step, &count, &ok);
		assert_true(ok);
		assert_int_equal(count, 3);
		assert_int_equal(m[0].from_offset, 0);
		assert_int_equal(m[0].end_offset, m[1].from_offset);
		assert_int_equal(m[2].end_offset, len);
		static const char *const want[] = {
			"Subject: 1\r\n\r\nFrom quoted\r\n>>From stays in mboxo\r\nFrom not after a blank line\r\n",
			"Subject: 2\r\n\r\n..dot\r\n\r\n",
			"Subject: 3\r\n\r\nno final newline\r\n",
		};
		for (int i = 0; i < 3; i++) {
			size_t n;
			char *w = encode(mbox, m[i].data_offset, m[i].data_length, WIRE_FROM_MBOXO, &n);
			assert_int_equal(n, strlen(want[i]));
			assert_memory_equal(w, want[i], n);
			/* the size counts no stuffing dot */
			assert_int_equal(m[i].size, n - (i == 1 ? 1 : 0));
			free(w);
		}
		free(m);
	}
}

static void
test_mboxrd(void **state)
{
	static const char mbox[] = "From x\n\n>>>From a\n>>From b\n>From c\n>Fro\n>>F\n";
	uint32_t count;
	bool ok;
	struct mbox_message *m = parse(mbox, sizeof(mbox) - 1, WIRE_FROM_MBOXRD, 3, &count, &ok);
	assert_true(ok);
	assert_int_equal(count, 1);
	size_t n;
	char *w = encode(mbox, m[0].data_offset, m[0].data_length, WIRE_FROM_MBOXRD, &n);
	static const char want[] = "\r\n>>From a\r\n>From b\r\nFrom c\r\n>Fro\r\n>>F\r\n";
	assert_int_equal(n, sizeof(want) - 1);
	assert_memory_equal(w, want, n);
	assert_int_equal(m[0].size, n);
	free(w);
	free(m);
}

static void
test_not_an_mbox_and_empty(void **state)
{
	uint32_t count;
	bool ok;
	struct mbox_message *m = parse("Subject: x\n\nFrom y\n", 19, WIRE_FROM_MBOXO, 0, &count, &ok);
	assert_false(ok);
	free(m);
	m = parse("", 0, WIRE_FROM_MBOXO, 0, &count, &ok);
	assert_true(ok);
	assert_int_equal(count, 0);
	free(m);
}

/* The digest ignores flag headers (so a mutt Status: rewrite keeps the
 * UIDL) and sees everything else. */
static void
test_digest_ignores_flag_headers(void **state)
{
	static const char a[] = "From x Thu\nSubject: s\nStatus: O\n\nbody\n";
	static const char b[] = "From x Thu\nSubject: s\nStatus: RO\nX-Status: A\nX-Keywords: $x\n\tfolded\n\nbody\n";
	static const char c[] = "From x Thu\nSubject: s\n\nbody!\n";
	uint32_t na, nb, nc;
	bool ok;
	struct mbox_message *ma = parse(a, sizeof(a) - 1, WIRE_FROM_MBOXO, 0, &na, &ok);
	struct mbox_message *mb = parse(b, sizeof(b) - 1, WIRE_FROM_MBOXO, 5, &nb, &ok);
	struct mbox_message *mc = parse(c, sizeof(c) - 1, WIRE_FROM_MBOXO, 0, &nc, &ok);
	assert_memory_equal(ma[0].digest, mb[0].digest, MBOX_DIGEST_LEN);
	assert_memory_not_equal(ma[0].digest, mc[0].digest, MBOX_DIGEST_LEN);
	/* copies of one message: distinct, stable UIDLs */
	char *u0 = mbox_uidl_for(ma[0].digest, 0), *u1 = mbox_uidl_for(ma[0].digest, 1);
	assert_int_equal(strlen(u0), 40);
	assert_string_not_equal(u0, u1);
	free(u0);
	free(u1);
	free(ma);
	free(mb);
	free(mc);
}

/* popa3d 1.0.3's UIDLs, as it answered UIDL for these messages (Debian's
 * package, probed by hand: which header fields count, folding, case, line
 * ends, the first Received: ends it). */
static void
test_popa3d_uidl(void **state)
{
	static const struct {
		const char *msg, *uidl;
	} cases[] = {
		{ "Subject: one\n\nbody\n", "d98c1dd404b2008f" },
		{ "Message-ID: <x@y>\nSubject: one\n\nbody\n", "f446e47b13fe6b3b" },
		{ "Date: Thu, 3 Dec 2026 10:00:00 +0000\nSubject: one\n\nbody\n", "94e42cb304b8a793" },
		{ "Received: from x\n\tby y\nSubject: s\n\nb\n", "a915247be4b49c07" },
		{ "received: from x\nSubject: s\n\nb\n", "e530f71bbf4e3b65" },
		{ "Received: a\nDate: d\nReceived: b\nMessage-ID: m\n\nb\n", "03609776b4e9d82f" },
		{ "Date: d\nReceived: a\nMessage-ID: m\n\nb\n", "f8383704ada816b8" },
		{ "Date: d\r\nSubject: s\r\n\r\nb\r\n", "4d48007065c490fc" },
		{ "Subject: s\n\nDate: body\n", "d98c1dd404b2008f" },
	};
	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		char *mbox = xasprintf("From a@b Thu Dec  3 10:00:00 2026\n%s", cases[i].msg);
		uint32_t count;
		bool ok;
		struct mbox_message *m = parse(mbox, strlen(mbox), WIRE_FROM_MBOXO, 3, &count, &ok);
		assert_true(ok);
		assert_int_equal(count, 1);
		assert_string_equal(m[0].popa3d_uidl, cases[i].uidl);
		free(m);
		free(mbox);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_messages_sizes_and_unquoting),
		cmocka_unit_test(test_mboxrd),
		cmocka_unit_test(test_not_an_mbox_and_empty),
		cmocka_unit_test(test_digest_ignores_flag_headers),
		cmocka_unit_test(test_popa3d_uidl),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

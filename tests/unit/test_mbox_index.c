/* Unit tests for the mbox index (store_mbox.c, layout in store_mbox.h):
 * a warm open takes everything from the index and reads none of the mbox;
 * an index cut at any length or with any byte changed is not used (the
 * open parses the mbox, UIDLs unchanged); after our own delivery the next
 * open parses only the appended bytes, and a damaged append record means a
 * full parse; a format-1 (text) index gives its remembered UIDLs once and
 * is replaced; warm opens that reuse an earlier open's memory see only
 * their own messages. Real files in a temporary directory. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "server/mbox_parse.h"
#include "server/store.h"
#include "server/store_deliver.h"
#include "server/store_mbox.h"

static const char spool[] =
    "From a@b Thu Dec  3 10:00:00 2026\nSubject: 1\n\n>From x\nbody\n\n"
    "From a@b Thu Dec  3 10:00:01 2026\nSubject: same\n\nsame\n\n"
    "From a@b Thu Dec  3 10:00:01 2026\nSubject: same\n\nsame\n\n"
    "From a@b Thu Dec  3 10:00:02 2026\r\nSubject: crlf\r\n\r\n.dot\r\n\r\n"
    "From a@b Thu Dec  3 10:00:03 2026\nStatus: RO\nSubject: 4\n\nlast\n\n";

struct fix {
	char dir[64];
	char mbox[96];
	char index[128];
};

struct snap {
	uint32_t count;
	char *uidl[16];
	uint64_t size[16];
	off_t offset[16], length[16];
};

static void
write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static char *
read_file(const char *path, size_t *len)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	char *buf = xmalloc((size_t)st.st_size + 1);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(read(fd, buf, (size_t)st.st_size), (ssize_t)st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return buf;
}

static int
setup(void **state)
{
	struct fix *f = xcalloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/test-mbox-index-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->mbox, sizeof(f->mbox), "%s/alice", f->dir);
	snprintf(f->index, sizeof(f->index), "%s/alice.popbox-index", f->dir);
	write_file(f->mbox, spool, sizeof(spool) - 1);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fix *f = *state;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

/* Open (keep_index: the index is left as it is), take the list, close. */
static void
open_snap(struct fix *f, bool keep_index, struct snap *s)
{
	struct store_open_options o;
	memset(&o, 0, sizeof(o));
	o.mbox_quoting = WIRE_FROM_MBOXO;
	o.keep_index = keep_index;
	struct store *st = NULL;
	char *error = NULL;
	assert_int_equal(store_mbox.open_with(f->mbox, &o, &st, &error), STORE_OK);
	memset(s, 0, sizeof(*s));
	s->count = st->count;
	assert_true(st->count <= 16);
	for (uint32_t i = 0; i < st->count; i++) {
		s->uidl[i] = xstrdup(st->messages[i].uidl);
		s->size[i] = st->messages[i].size;
		struct store_stream stream;
		assert_int_equal(store_mbox.message_open(st, i, &stream, &error), STORE_OK);
		s->offset[i] = stream.offset;
		s->length[i] = stream.length;
		close(stream.fd);
	}
	store_mbox.close(st);
}

static void
snap_free(struct snap *s)
{
	for (uint32_t i = 0; i < s->count; i++)
		free(s->uidl[i]);
}

static void
assert_same(const struct snap *a, const struct snap *b)
{
	assert_int_equal(a->count, b->count);
	for (uint32_t i = 0; i < a->count; i++) {
		assert_string_equal(a->uidl[i], b->uidl[i]);
		assert_int_equal(a->size[i], b->size[i]);
		assert_int_equal(a->offset[i], b->offset[i]);
		assert_int_equal(a->length[i], b->length[i]);
	}
}

static uint64_t
file_size(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_size;
}

static void
assert_full_parse(const struct fix *f)
{
	assert_int_equal(mbox_last_open.parsed_from, 0);
	assert_int_equal(mbox_last_open.parsed_bytes, file_size(f->mbox));
	assert_int_equal(mbox_last_open.from_index, 0);
}

static void
test_round_trip_truncation_and_flips(void **state)
{
	struct fix *f = *state;
	struct snap cold, warm, s;
	open_snap(f, false, &cold);
	assert_full_parse(f);
	assert_int_equal(cold.count, 5);
	assert_string_not_equal(cold.uidl[1], cold.uidl[2]);   /* identical copies */
	size_t len = 0;
	char *ix = read_file(f->index, &len);
	assert_memory_equal(ix, MBOX_IX_MAGIC, MBOX_IX_MAGIC_LEN);
	assert_true(len > MBOX_IX_HEAD + 5 * MBOX_IX_REC);

	/* warm: nothing of the mbox read, the same list */
	open_snap(f, false, &warm);
	assert_int_equal(mbox_last_open.parsed_bytes, 0);
	assert_int_equal(mbox_last_open.from_index, 5);
	assert_same(&cold, &warm);
	snap_free(&warm);

	/* cut at every length: not used */
	for (size_t n = 0; n < len; n++) {
		write_file(f->index, ix, n);
		open_snap(f, true, &s);
		assert_full_parse(f);
		assert_same(&cold, &s);
		snap_free(&s);
	}
	/* every byte changed (one bit, then all bits): not used */
	for (size_t i = 0; i < len; i++) {
		for (int k = 0; k < 2; k++) {
			ix[i] ^= k == 0 ? 0x04 : 0xff;
			write_file(f->index, ix, len);
			open_snap(f, true, &s);
			assert_full_parse(f);
			assert_same(&cold, &s);
			snap_free(&s);
			ix[i] ^= k == 0 ? 0x04 : 0xff;
		}
	}
	/* a byte more at the end is no append record: the base is still used */
	char *more = xmalloc(len + 1);
	memcpy(more, ix, len);
	more[len] = 'x';
	write_file(f->index, more, len + 1);
	open_snap(f, true, &s);
	assert_int_equal(mbox_last_open.parsed_bytes, 0);
	assert_same(&cold, &s);
	snap_free(&s);
	free(more);
	/* intact again: warm */
	write_file(f->index, ix, len);
	open_snap(f, true, &s);
	assert_int_equal(mbox_last_open.parsed_bytes, 0);
	assert_same(&cold, &s);
	snap_free(&s);
	free(ix);
	snap_free(&cold);
}

static enum delivery_status
deliver(struct fix *f, const char *msg)
{
	char tmp[128];
	snprintf(tmp, sizeof(tmp), "%s/in", f->dir);
	write_file(tmp, msg, strlen(msg));
	int fd = open(tmp, O_RDONLY);
	assert_true(fd >= 0);
	struct delivery_target t = { .path = f->mbox };
	struct mbox_delivery_options o = { .quoting = WIRE_FROM_MBOXO, .lock_wait_ms = 1000 };
	struct delivery_result r;
	char *error = NULL;
	enum delivery_status st = store_mbox_deliver_stream(&t, &o, NULL, fd, 0, &r, &error);
	close(fd);
	unlink(tmp);
	free(r.file);
	free(error);
	return st;
}

static void
test_own_append_parses_only_the_tail(void **state)
{
	struct fix *f = *state;
	struct snap cold, s;
	open_snap(f, false, &cold);
	uint64_t old_size = file_size(f->mbox);
	size_t len0 = 0;
	free(read_file(f->index, &len0));

	assert_int_equal(deliver(f, "Subject: new\n\nFrom here\nhello\n"), DELIVERY_OK);
	assert_int_equal(file_size(f->index), len0 + MBOX_IX_APPEND);
	assert_int_equal(deliver(f, "Subject: newer\n\nagain\n"), DELIVERY_OK);
	assert_int_equal(file_size(f->index), len0 + 2 * MBOX_IX_APPEND);
	/* the same again (a copy when within the same second: its own UIDL) */
	assert_int_equal(deliver(f, "Subject: newer\n\nagain\n"), DELIVERY_OK);
	assert_int_equal(file_size(f->index), len0 + 3 * MBOX_IX_APPEND);
	size_t len = 0;
	char *ix = read_file(f->index, &len);

	open_snap(f, true, &s);
	assert_int_equal(mbox_last_open.parsed_from, old_size);
	assert_int_equal(mbox_last_open.parsed_bytes, file_size(f->mbox) - old_size);
	assert_int_equal(mbox_last_open.from_index, 5);
	assert_int_equal(s.count, 8);
	assert_string_not_equal(s.uidl[6], s.uidl[7]);
	struct snap head = s;
	head.count = 5;
	assert_same(&cold, &head);
	assert_int_equal(s.offset[5], (off_t)old_size + strlen("From MAILER-DAEMON ") + 25);
	assert_int_equal(s.size[5], strlen("Subject: new\r\n\r\nFrom here\r\nhello\r\n"));

	/* the same list as a full parse that remembers the index */
	struct snap full;
	unlink(f->index);
	open_snap(f, true, &full);
	assert_full_parse(f);
	assert_same(&full, &s);
	snap_free(&full);

	/* a damaged or cut append record: a full parse, the same list */
	for (size_t i = len - 2 * MBOX_IX_APPEND; i < len; i++) {
		ix[i] ^= 0x10;
		write_file(f->index, ix, len);
		struct snap d;
		open_snap(f, true, &d);
		assert_full_parse(f);
		assert_same(&s, &d);
		snap_free(&d);
		ix[i] ^= 0x10;
	}
	for (size_t n = len - 2 * MBOX_IX_APPEND; n < len; n += 7) {
		write_file(f->index, ix, n);
		struct snap d;
		open_snap(f, true, &d);
		assert_full_parse(f);
		assert_same(&s, &d);
		snap_free(&d);
	}
	/* intact: only the tail; then the login's rewrite makes it warm */
	write_file(f->index, ix, len);
	struct snap again;
	open_snap(f, false, &again);
	assert_int_equal(mbox_last_open.parsed_from, old_size);
	assert_same(&s, &again);
	snap_free(&again);
	open_snap(f, false, &again);
	assert_int_equal(mbox_last_open.parsed_bytes, 0);
	assert_same(&s, &again);
	snap_free(&again);

	/* another program's append: no record for ours after it, a full parse */
	int fd = open(f->mbox, O_WRONLY | O_APPEND);
	assert_true(fd >= 0);
	const char ext[] = "From x@y Thu Dec  3 12:00:00 2026\nSubject: ext\n\nx\n\n";
	assert_int_equal(write(fd, ext, sizeof(ext) - 1), (ssize_t)(sizeof(ext) - 1));
	close(fd);
	size_t before = (size_t)file_size(f->index);
	assert_int_equal(deliver(f, "Subject: after ext\n\ny\n"), DELIVERY_OK);
	assert_int_equal(file_size(f->index), before);
	open_snap(f, false, &again);
	assert_full_parse(f);
	assert_int_equal(again.count, 10);
	for (uint32_t i = 0; i < 8; i++)
		assert_string_equal(again.uidl[i], s.uidl[i]);
	snap_free(&again);

	/* an mbox not ending in an empty line: no record */
	fd = open(f->mbox, O_WRONLY | O_APPEND);
	assert_true(fd >= 0);
	const char ext2[] = "From x@y Thu Dec  3 12:00:01 2026\nSubject: ext2\n\nno empty line\n";
	assert_int_equal(write(fd, ext2, sizeof(ext2) - 1), (ssize_t)(sizeof(ext2) - 1));
	close(fd);
	open_snap(f, false, &again);      /* the index describes this file */
	snap_free(&again);
	before = (size_t)file_size(f->index);
	assert_int_equal(deliver(f, "Subject: z\n\nz\n"), DELIVERY_OK);
	assert_int_equal(file_size(f->index), before);
	open_snap(f, false, &again);
	assert_full_parse(f);
	assert_int_equal(again.count, 12);
	snap_free(&again);

	free(ix);
	snap_free(&s);
	snap_free(&cold);
}

/* A format-1 (text) index of the spool's 5 messages remembering uidl[i]
 * for message i; the digest of message alien (< 5) altered, so that no
 * message matches that entry. */
static void
write_text_index(struct fix *f, const char *const *uidl, uint32_t alien)
{
	struct mbox_parser *p = mbox_parser_new(WIRE_FROM_MBOXO, 100);
	assert_true(mbox_parser_feed(p, spool, sizeof(spool) - 1));
	assert_true(mbox_parser_finish(p));
	uint32_t n = 0;
	const struct mbox_message *m = mbox_parser_messages(p, &n);
	assert_int_equal(n, 5);
	char text[8192];
	size_t at = (size_t)snprintf(text, sizeof(text), "popbox-mbox-index 1\nident none\n");
	for (uint32_t i = 0; i < n; i++) {
		char hex[2 * MBOX_DIGEST_LEN + 1];
		for (unsigned j = 0; j < MBOX_DIGEST_LEN; j++)
			snprintf(hex + 2 * j, 3, "%02x", m[i].digest[j]);
		if (i == alien)
			hex[0] = hex[0] == '0' ? '1' : '0';
		at += (size_t)snprintf(text + at, sizeof(text) - at,
		    "m %llu %llu %llu %llu %llu %s %s\n", (unsigned long long)m[i].from_offset,
		    (unsigned long long)m[i].data_offset, (unsigned long long)m[i].data_length,
		    (unsigned long long)m[i].end_offset, (unsigned long long)m[i].size, hex, uidl[i]);
	}
	at += (size_t)snprintf(text + at, sizeof(text) - at, "end %u\n", n);
	mbox_parser_free(p);
	write_file(f->index, text, at);
}

static void
test_text_index_is_read_once_for_its_uidls(void **state)
{
	struct fix *f = *state;
	struct snap cold, s;
	open_snap(f, true, &cold);
	unlink(f->index);
	/* a format-1 index remembering other UIDLs for messages 1 and 3 */
	const char *remember[5] = { "legacy-one", cold.uidl[1], "legacy-three", cold.uidl[3],
		cold.uidl[4] };
	write_text_index(f, remember, 5);
	open_snap(f, false, &s);
	assert_full_parse(f);
	assert_string_equal(s.uidl[0], "legacy-one");
	assert_string_equal(s.uidl[1], cold.uidl[1]);
	assert_string_equal(s.uidl[2], "legacy-three");
	snap_free(&s);
	/* replaced by format 2: warm, the same UIDLs */
	size_t len = 0;
	char *ix = read_file(f->index, &len);
	assert_memory_equal(ix, MBOX_IX_MAGIC, MBOX_IX_MAGIC_LEN);
	free(ix);
	open_snap(f, false, &s);
	assert_int_equal(mbox_last_open.parsed_bytes, 0);
	assert_string_equal(s.uidl[0], "legacy-one");
	assert_string_equal(s.uidl[2], "legacy-three");
	snap_free(&s);
	snap_free(&cold);
}

static void
test_checksum_sees_every_word(void **state)
{
	(void)state;
	unsigned char buf[200];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)(i * 7);
	for (size_t len = 0; len <= sizeof(buf); len += 13) {
		uint64_t base = mbox_index_sum(buf, len, 2);
		assert_true(base != mbox_index_sum(buf, len, 3));
		if (len > 0)
			assert_true(base != mbox_index_sum(buf, len - 1, 2));
		for (size_t i = 0; i < len; i++) {
			buf[i] ^= 0x80;
			assert_true(base != mbox_index_sum(buf, len, 2));
			buf[i] ^= 0x80;
		}
	}
}

/* A remembered UIDL that equals another message's computed one (an edited
 * or damaged text index): the later message gets another UIDL, every
 * UIDL stays unique. */
static void
test_remembered_uidl_taken_by_another_message(void **state)
{
	struct fix *f = *state;
	struct snap cold, s;
	open_snap(f, true, &cold);
	unlink(f->index);
	/* message 1 remembers message 5's computed UIDL; message 5's digest
	 * is altered, so that it is not found and its UIDL is computed */
	const char *remember[5] = { cold.uidl[4], cold.uidl[1], cold.uidl[2], cold.uidl[3],
		cold.uidl[4] };
	write_text_index(f, remember, 4);
	open_snap(f, false, &s);
	assert_full_parse(f);
	assert_int_equal(s.count, 5);
	assert_string_equal(s.uidl[0], cold.uidl[4]);
	for (uint32_t i = 1; i < 4; i++)
		assert_string_equal(s.uidl[i], cold.uidl[i]);
	assert_string_not_equal(s.uidl[4], cold.uidl[4]);
	for (uint32_t i = 0; i < 5; i++)
		for (uint32_t j = i + 1; j < 5; j++)
			assert_string_not_equal(s.uidl[i], s.uidl[j]);
	snap_free(&s);
	snap_free(&cold);
}

/* Warm opens take the memory of earlier ones (mbox_map_get): a smaller
 * maildrop's after a bigger one's and the other way round, and two open at
 * once, each with exactly its own messages. */
static struct store *
open_store(const struct fix *f)
{
	struct store_open_options o;
	memset(&o, 0, sizeof(o));
	o.mbox_quoting = WIRE_FROM_MBOXO;
	struct store *st = NULL;
	char *error = NULL;
	assert_int_equal(store_mbox.open_with(f->mbox, &o, &st, &error), STORE_OK);
	return st;
}

static void
assert_store_is(struct store *st, const struct snap *s)
{
	assert_int_equal(st->count, s->count);
	uint64_t total = 0;
	for (uint32_t i = 0; i < st->count; i++) {
		assert_string_equal(st->messages[i].uidl, s->uidl[i]);
		assert_int_equal(st->messages[i].size, s->size[i]);
		assert_null(st->messages[i].name);
		total += s->size[i];
	}
	assert_int_equal(st->total_size, total);
}

static void
test_warm_opens_after_other_maildrops(void **state)
{
	struct fix *f = *state;
	struct fix g = *f;
	snprintf(g.mbox, sizeof(g.mbox), "%s/bob", f->dir);
	snprintf(g.index, sizeof(g.index), "%s/bob.popbox-index", f->dir);
	char big[4096];
	size_t n = 0;
	for (int i = 0; i < 14; i++)
		n += (size_t)snprintf(big + n, sizeof(big) - n,
		    "From b@c Thu Dec  3 11:00:%02d 2026\nSubject: bob %d\n\nbody %d%s\n\n", i, i, i,
		    i % 2 ? " and some more words" : "");
	write_file(g.mbox, big, n);
	struct snap a_cold, b_cold, s;
	open_snap(f, false, &a_cold);
	open_snap(&g, false, &b_cold);
	assert_int_equal(a_cold.count, 5);
	assert_int_equal(b_cold.count, 14);
	for (int round = 0; round < 3; round++) {
		open_snap(&g, false, &s);
		assert_int_equal(mbox_last_open.from_index, 14);
		assert_same(&b_cold, &s);
		snap_free(&s);
		open_snap(f, false, &s);
		assert_int_equal(mbox_last_open.from_index, 5);
		assert_same(&a_cold, &s);
		snap_free(&s);
	}
	for (int order = 0; order < 2; order++) {
		struct store *a = order ? open_store(f) : NULL;
		struct store *b = open_store(&g);
		if (a == NULL)
			a = open_store(f);
		assert_store_is(a, &a_cold);
		assert_store_is(b, &b_cold);
		store_mbox.close(order ? a : b);
		store_mbox.close(order ? b : a);
	}
	snap_free(&a_cold);
	snap_free(&b_cold);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_checksum_sees_every_word),
		cmocka_unit_test_setup_teardown(test_round_trip_truncation_and_flips, setup, teardown),
		cmocka_unit_test_setup_teardown(test_own_append_parses_only_the_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_text_index_is_read_once_for_its_uidls, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_warm_opens_after_other_maildrops, setup, teardown),
		cmocka_unit_test_setup_teardown(test_remembered_uidl_taken_by_another_message, setup,
		    teardown),
	};
	log_init("test_mbox_index", true, false);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

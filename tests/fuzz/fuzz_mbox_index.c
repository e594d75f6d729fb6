/* Z4b: alice.popbox-index -> the message list (store_mbox_open,
 * src/server/store_mbox.c; format 2, layout in server/store_mbox.h). The
 * index lies next to the mbox and its owner can write anything into it;
 * when its identity matches the mbox's stat (or the last of its append
 * records does), it is taken as the scan, or as the scan up to where the
 * appended part starts. Whatever it says, the store must not crash or
 * leak, every UIDL must be 1..70 characters of 0x21..0x7E and unique, every
 * message's bytes must lie inside the file, STAT must be the sum of LIST;
 * when the whole mbox was parsed the messages are exactly the parse.
 * Input: a flag byte, then the index file. So that the trusted paths are
 * reachable, the harness fixes up before writing it:
 *   flag & 1  the header's identity := the mbox's true one (known);
 *   flag & 2  the header's identity := the true one but the input's size,
 *             each complete append record after the base chained to the
 *             one before, the last one's "after" := the true identity;
 *   flag & 4  every checksum recomputed.
 * A format-1 (text) index is read for its UIDLs only. */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "server/store.h"
#include "server/store_mbox.h"

static char dir[64], mbox[96], index_path[128];
static const char spool[] =
    "From a@b Thu Dec  3 10:00:00 2026\nSubject: 1\n\n>From x\n\n"
    "From a@b Thu Dec  3 10:00:01 2026\nSubject: 2\n\n.dot\n\n"
    "From a@b Thu Dec  3 10:00:02 2026\nSubject: 3\n\nlast";

static void
cleanup(void)
{
	static const char *const names[] = { "alice", "alice.popbox-index", "alice.popbox-index.tmp",
		"alice.popbox-lock", "alice.lock" };
	char path[160];
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

static void
setup(void)
{
	if (dir[0] != '\0')
		return;
	atexit(cleanup);
	snprintf(dir, sizeof(dir), "/tmp/fuzz-mbox-index-%ld", (long)getpid());
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		abort();
	snprintf(mbox, sizeof(mbox), "%s/alice", dir);
	snprintf(index_path, sizeof(index_path), "%s/alice.popbox-index", dir);
	int fd = open(mbox, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, spool, sizeof(spool) - 1) != (ssize_t)(sizeof(spool) - 1))
		abort();
	close(fd);
}

static void
put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t
get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static uint32_t
get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
put_ident(unsigned char *p, const struct stat *st, uint64_t size)
{
	put64(p, (uint64_t)st->st_dev);
	put64(p + 8, (uint64_t)st->st_ino);
	put64(p + 16, size);
	put64(p + 24, (uint64_t)st->st_mtim.tv_sec);
	put64(p + 32, (uint64_t)st->st_mtim.tv_nsec);
	put64(p + 40, (uint64_t)st->st_ctim.tv_sec);
	put64(p + 48, (uint64_t)st->st_ctim.tv_nsec);
}

/* The fix-ups of the flag byte on a format-2 index of len bytes. */
static void
fix_up(unsigned char *ix, size_t len, unsigned flags, const struct stat *st)
{
	if (len < MBOX_IX_HEAD || memcmp(ix, MBOX_IX_MAGIC, MBOX_IX_MAGIC_LEN) != 0)
		return;
	uint64_t count = get32(ix + MBOX_IX_COUNT), slen = get64(ix + MBOX_IX_STRINGS_LEN);
	if (slen > len)           /* (no wrap-around below) */
		slen = len;
	uint64_t base_end = MBOX_IX_HEAD + count * MBOX_IX_REC + slen;
	if (flags & 3) {
		uint64_t size = flags & 2 ? get64(ix + MBOX_IX_IDENT + 16) : (uint64_t)st->st_size;
		put_ident(ix + MBOX_IX_IDENT, st, size);
		ix[MBOX_IX_KNOWN] = 1;
		memset(ix + MBOX_IX_KNOWN + 1, 0, 3);
	}
	if ((flags & 2) && base_end <= len) {
		size_t n = (size_t)((len - base_end) / MBOX_IX_APPEND);
		unsigned char *prev = ix + MBOX_IX_IDENT;
		for (size_t i = 0; i < n; i++) {
			unsigned char *a = ix + base_end + i * MBOX_IX_APPEND;
			memcpy(a, MBOX_IX_APPEND_MAGIC, 8);
			memcpy(a + MBOX_IX_APPEND_PRE, prev, 56);
			if (i + 1 == n)
				put_ident(a + MBOX_IX_APPEND_POST, st, (uint64_t)st->st_size);
			else
				put_ident(a + MBOX_IX_APPEND_POST, st, get64(a + MBOX_IX_APPEND_POST + 16));
			prev = a + MBOX_IX_APPEND_POST;
		}
	}
	if (flags & 4) {
		if (base_end <= len) {
			put64(ix + MBOX_IX_RECS_SUM, mbox_index_sum(ix + MBOX_IX_HEAD,
			    (size_t)(count * MBOX_IX_REC), 2));
			put64(ix + MBOX_IX_STRINGS_SUM, mbox_index_sum(ix + MBOX_IX_HEAD +
			    count * MBOX_IX_REC, (size_t)slen, 3));
			for (uint64_t at = base_end; at + MBOX_IX_APPEND <= len; at += MBOX_IX_APPEND)
				put64(ix + at + MBOX_IX_APPEND_SUM, mbox_index_sum(ix + at,
				    MBOX_IX_APPEND_SUM, 4));
		}
		put64(ix + MBOX_IX_HEAD_SUM, mbox_index_sum(ix, MBOX_IX_HEAD_SUM, 1));
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct stat st;
	setup();
	if (size < 1)
		return 0;
	if (stat(mbox, &st) < 0)
		abort();
	unsigned flags = data[0];
	size_t len = size - 1;
	unsigned char *ix = malloc(len + 1);
	if (ix == NULL)
		abort();
	memcpy(ix, data + 1, len);
	fix_up(ix, len, flags, &st);
	int fd = open(index_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || (len > 0 && write(fd, ix, len) != (ssize_t)len))
		abort();
	close(fd);
	free(ix);

	const char *path;
	const struct store_backend *b = store_backend_for("mbox:x", &path);
	FUZZ_CHECK(b != NULL, "no mbox backend");
	struct store_open_options o;
	memset(&o, 0, sizeof(o));
	o.mbox_quoting = WIRE_FROM_MBOXO;
	o.keep_index = true;          /* the input stays what it was */
	struct store *s = NULL;
	char *error = NULL;
	enum store_status r = b->open_with(mbox, &o, &s, &error);
	FUZZ_CHECK(r == STORE_OK, "open: %s", error ? error : "?");
	uint64_t total = 0;
	for (uint32_t i = 0; i < s->count; i++) {
		const char *u = s->messages[i].uidl;
		size_t n = strlen(u);
		FUZZ_CHECK(n >= 1 && n <= 70, "uidl length %zu", n);
		for (size_t k = 0; k < n; k++)
			FUZZ_CHECK((unsigned char)u[k] >= 0x21 && (unsigned char)u[k] <= 0x7e, "uidl byte");
		for (uint32_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(u, s->messages[j].uidl) != 0, "uidl %s twice", u);
		total += s->messages[i].size;
		struct store_stream stream;
		char *err2 = NULL;
		FUZZ_CHECK(b->message_open(s, i, &stream, &err2) == STORE_OK, "message_open %u", i);
		FUZZ_CHECK(stream.offset >= 0 && stream.length >= 0 &&
		    stream.offset + stream.length <= st.st_size, "message %u outside the file", i);
		close(stream.fd);
	}
	FUZZ_CHECK(total == s->total_size, "STAT is not the sum of LIST");
	/* the index not used: exactly the parse */
	if (mbox_last_open.parsed_from == 0 && mbox_last_open.parsed_bytes == (uint64_t)st.st_size)
		FUZZ_CHECK(s->count == 3, "%u messages without a trusted index", s->count);
	b->close(s);
	return 0;
}

/* Z4b: alice.popbox-index -> the message list (store_mbox_open,
 * src/server/store_mbox.c). The index lies next to the mbox and its owner
 * can write anything into it; when its ident line matches the mbox's stat,
 * it is taken as the scan. Whatever it says, the store must not crash or
 * leak, every UIDL must be 1..70 characters of 0x21..0x7E and unique, every
 * message's bytes must lie inside the file, STAT must be the sum of LIST;
 * with an ident that does not match, the messages are exactly the parse.
 * Input: the index text; "@IDENT@" in it is replaced by the true ident
 * line of the harness's mbox, so the trusted path is reachable. */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "server/store.h"

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

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct stat st;
	char ident[256];
	setup();
	if (stat(mbox, &st) < 0)
		abort();
	snprintf(ident, sizeof(ident), "ident %llu %llu %llu %lld %ld %lld %ld 1",
	    (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
	    (unsigned long long)st.st_size, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
	    (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
	/* the input with @IDENT@ replaced */
	char *text = fuzz_strndup(data, size);
	int fd = open(index_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		abort();
	const char *p = text;
	for (const char *at; (at = strstr(p, "@IDENT@")) != NULL; p = at + 7) {
		if (write(fd, p, (size_t)(at - p)) < 0 || write(fd, ident, strlen(ident)) < 0)
			abort();
	}
	if (write(fd, p, strlen(p)) < 0)
		abort();
	/* the rest of the input after a NUL is written too */
	if (strlen(text) < size && write(fd, data + strlen(text), size - strlen(text)) < 0)
		abort();
	close(fd);
	bool trusted_possible = strstr(text, "@IDENT@") != NULL && strlen(text) == size;
	free(text);

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
	if (!trusted_possible)
		FUZZ_CHECK(s->count == 3, "%u messages without a trusted index", s->count);
	b->close(s);
	return 0;
}

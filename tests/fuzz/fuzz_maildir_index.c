/* Z10: popbox.index -> the message list (store_maildir_open,
 * src/server/store_maildir.c). The index lies in the maildrop root, so the
 * maildrop's owner can write anything into it; when its "dirs" record
 * matches new/ and cur/, it is taken as the scan itself. Whatever it says,
 * the store must not crash or leak, every message name must be "new/" or
 * "cur/" followed by one plain path component (never "..", never another
 * '/'), every UIDL 1..70 characters of 0x21..0x7E; with a record that does
 * not match, the messages are exactly the files on disk.
 * Input: the index text; "@DIRS@" in it is replaced by the true dirs record
 * of the harness's Maildir, so the trusted path is reachable. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "server/store.h"

static char maildir[64];
static char dirs_line[160];

static void
put(const char *rel, const char *data)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", maildir, rel);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, data, strlen(data)) != (ssize_t)strlen(data))
		abort();
	close(fd);
}

static void
cleanup(void)
{
	const char *files[] = { "new/100.A.host", "cur/200.B.host:2,S", "new/300.C.host",
		"popbox.index", "popbox.index.tmp", "popbox.lock" };
	const char *dirs[] = { "new", "cur", "tmp", "" };
	char path[128];
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", maildir, files[i]);
		unlink(path);
	}
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", maildir, dirs[i]);
		rmdir(path);
	}
}

static void
setup(void)
{
	snprintf(maildir, sizeof(maildir), "/tmp/popbox-fuzz-index.XXXXXX");
	if (mkdtemp(maildir) == NULL)
		abort();
	const char *subs[] = { "new", "cur", "tmp" };
	for (size_t i = 0; i < 3; i++) {
		char path[128];
		snprintf(path, sizeof(path), "%s/%s", maildir, subs[i]);
		if (mkdir(path, 0700) < 0)
			abort();
	}
	atexit(cleanup);
	put("new/100.A.host", "Subject: a\n\na\n");
	put("cur/200.B.host:2,S", "Subject: b\n\nbb\n");
	put("new/300.C.host", "Subject: c\n\n.c\n");
	struct stat n, c;
	char path[128];
	snprintf(path, sizeof(path), "%s/new", maildir);
	if (stat(path, &n) < 0)
		abort();
	snprintf(path, sizeof(path), "%s/cur", maildir);
	if (stat(path, &c) < 0)
		abort();
	snprintf(dirs_line, sizeof(dirs_line), "dirs %llu %lld %ld %llu %lld %ld",
	    (unsigned long long)n.st_ino, (long long)n.st_ctim.tv_sec, n.st_ctim.tv_nsec,
	    (unsigned long long)c.st_ino, (long long)c.st_ctim.tv_sec, c.st_ctim.tv_nsec);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (maildir[0] == '\0')
		setup();
	/* the input, with each "@DIRS@" replaced by the true record */
	char *in = fuzz_strndup(data, size);
	size_t cap = size * 30 + 1, len = 0;
	char *text = malloc(cap);
	bool trusted_possible = false;
	for (size_t i = 0; i < size;) {
		if (size - i >= 6 && memcmp(in + i, "@DIRS@", 6) == 0) {
			size_t n = strlen(dirs_line);
			memcpy(text + len, dirs_line, n);
			len += n;
			i += 6;
			trusted_possible = true;
		} else {
			text[len++] = in[i++];
		}
	}
	char path[128];
	snprintf(path, sizeof(path), "%s/popbox.index", maildir);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, text, len) != (ssize_t)len)
		abort();
	close(fd);

	struct store *st = NULL;
	char *error = NULL;
	enum store_status r = store_maildir.open(maildir, &st, &error);
	FUZZ_CHECK(r == STORE_OK, "open failed: %s", error ? error : "?");
	for (uint32_t i = 0; i < st->count; i++) {
		const char *name = st->messages[i].name;
		FUZZ_CHECK(strncmp(name, "new/", 4) == 0 || strncmp(name, "cur/", 4) == 0,
		    "message name %s outside new/ and cur/", name);
		FUZZ_CHECK(name[4] != '\0' && name[4] != '.' && strchr(name + 4, '/') == NULL,
		    "message name %s is not one plain component", name);
		const char *u = st->messages[i].uidl;
		size_t ul = strlen(u);
		FUZZ_CHECK(ul >= 1 && ul <= 70, "UIDL length %zu", ul);
		for (size_t k = 0; k < ul; k++)
			FUZZ_CHECK(u[k] >= 0x21 && u[k] <= 0x7e, "byte 0x%02x in UIDL", (unsigned char)u[k]);
	}
	if (!trusted_possible) {
		/* only a size cache: exactly the three files, in time order */
		FUZZ_CHECK(st->count == 3, "%u messages, not the 3 on disk", st->count);
		FUZZ_CHECK(strcmp(st->messages[0].name, "new/100.A.host") == 0 &&
		    strcmp(st->messages[1].name, "cur/200.B.host:2,S") == 0 &&
		    strcmp(st->messages[2].name, "new/300.C.host") == 0, "wrong messages");
	}
	st->backend->close(st);
	free(error);
	free(text);
	free(in);
	return 0;
}

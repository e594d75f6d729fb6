/* Unit tests for the Maildir store backend (server/store.h, store_maildir.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "common/wire.h"
#include "server/store.h"

struct fixture {
	char base[64];      /* mkdtemp directory, removed at teardown */
	char *maildir;      /* base/Maildir */
};

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)ftw;
	/* Undo tests that make directories read-only. Directories only: a
	 * chmod of the symbolic link a test made would change its target
	 * (new/6.link points at /etc/passwd, and the tests run as root). */
	if (flag == FTW_DP && S_ISDIR(st->st_mode))
		chmod(path, 0700);
	return remove(path);
}

static int
setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	snprintf(f->base, sizeof(f->base), "/tmp/popbox-test-maildir.XXXXXX");
	if (mkdtemp(f->base) == NULL)
		return -1;
	f->maildir = xasprintf("%s/Maildir", f->base);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	/* chmod back first so nftw can descend into read-only dirs. */
	char *cur = xasprintf("%s/cur", f->maildir);
	chmod(cur, 0700);
	free(cur);
	nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f->maildir);
	free(f);
	return 0;
}

static void
make_dirs(struct fixture *f)
{
	const char *subs[] = { "", "/new", "/cur", "/tmp" };
	for (size_t i = 0; i < N_ELEMENTS(subs); i++) {
		char *p = xasprintf("%s%s", f->maildir, subs[i]);
		assert_true(mkdir(p, 0700) == 0 || errno == EEXIST);
		free(p);
	}
}

static void
write_file(struct fixture *f, const char *rel, const char *data, size_t len)
{
	char *p = xasprintf("%s/%s", f->maildir, rel);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
	free(p);
}

static void
write_str(struct fixture *f, const char *rel, const char *data)
{
	write_file(f, rel, data, strlen(data));
}

static char *
read_all(const char *path, size_t *len_r)
{
	FILE *fp = fopen(path, "r");
	if (fp == NULL)
		return NULL;
	size_t cap = 4096, len = 0;
	char *buf = xmalloc(cap + 1);
	size_t n;
	while ((n = fread(buf + len, 1, cap - len, fp)) > 0) {
		len += n;
		if (len == cap)
			buf = xrealloc(buf, (cap *= 2) + 1);
	}
	fclose(fp);
	buf[len] = '\0';
	if (len_r != NULL)
		*len_r = len;
	return buf;
}

static char *
read_index(struct fixture *f)
{
	char *p = xasprintf("%s/popbox.index", f->maildir);
	char *s = read_all(p, NULL);
	free(p);
	return s;
}

static void
put_index(struct fixture *f, const char *text)
{
	write_str(f, "popbox.index", text);
}

static bool
exists(struct fixture *f, const char *rel)
{
	char *p = xasprintf("%s/%s", f->maildir, rel);
	struct stat st;
	bool r = lstat(p, &st) == 0;
	free(p);
	return r;
}

static struct store *
open_ok(struct fixture *f)
{
	struct store *store = NULL;
	char *error = NULL;
	enum store_status st = store_maildir.open(f->maildir, &store, &error);
	if (st != STORE_OK)
		fprintf(stderr, "open: %d %s\n", st, error != NULL ? error : "");
	assert_int_equal(st, STORE_OK);
	assert_non_null(store);
	assert_ptr_equal(store->backend, &store_maildir);
	return store;
}

/* Read a message through message_open. */
static char *
read_message(struct store *store, uint32_t idx, size_t *len_r)
{
	struct store_stream stream;
	char *error = NULL;
	assert_int_equal(store->backend->message_open(store, idx, &stream, &error), STORE_OK);
	assert_int_equal(stream.offset, 0);
	size_t cap = 4096, len = 0;
	char *buf = xmalloc(cap);
	ssize_t n;
	while ((n = read(stream.fd, buf + len, cap - len)) > 0) {
		len += (size_t)n;
		if (len == cap)
			buf = xrealloc(buf, cap *= 2);
	}
	assert_true(n == 0);
	close(stream.fd);
	*len_r = len;
	return buf;
}

/* Messages used by several tests. */
static const char msg_lf[] = "From: a@example.org\nSubject: lf\n\nbody\n.dot line\n";
static const char msg_crlf[] = "From: a@example.org\r\nSubject: crlf\r\n\r\nbody\r\n";
static const char msg_nonl[] = "Subject: no newline\n\nlast";

static void
populate(struct fixture *f)
{
	make_dirs(f);
	/* Delivery order by time: 1000 < 1500 < 2000 < 2000 (tie -> name). */
	write_str(f, "cur/2000.B.host:2,S", msg_crlf);
	write_str(f, "new/1000.A.host", msg_lf);
	write_str(f, "cur/1500.Z.host:2,", msg_nonl);
	write_str(f, "new/2000.A.host", msg_lf);
}

static void
test_create_empty(void **state)
{
	struct fixture *f = *state;
	struct store *store = open_ok(f);
	assert_int_equal(store->count, 0);
	assert_int_equal(store->total_size, 0);
	assert_true(exists(f, "new"));
	assert_true(exists(f, "cur"));
	assert_true(exists(f, "tmp"));
	struct stat st;
	char *cur = xasprintf("%s/cur", f->maildir);
	assert_int_equal(stat(cur, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	free(cur);
	store->backend->close(store);

	/* Never creates a missing parent (maybe an unmounted file system). */
	struct store *s2 = NULL;
	char *error = NULL;
	char *deep = xasprintf("%s/missing/Maildir", f->base);
	assert_int_not_equal(store_maildir.open(deep, &s2, &error), STORE_OK);
	assert_null(s2);
	assert_non_null(error);
	free(error);
	free(deep);
}

static void
test_scan_sizes_and_order(void **state)
{
	struct fixture *f = *state;
	populate(f);
	struct store *store = open_ok(f);

	assert_int_equal(store->count, 4);
	const char *uidls[] = { "1000.A.host", "1500.Z.host", "2000.A.host", "2000.B.host" };
	const char *names[] = { "new/1000.A.host", "cur/1500.Z.host:2,",
	    "new/2000.A.host", "cur/2000.B.host:2,S" };
	const char *bodies[] = { msg_lf, msg_nonl, msg_lf, msg_crlf };
	uint64_t total = 0;
	for (uint32_t i = 0; i < store->count; i++) {
		assert_string_equal(store->messages[i].uidl, uidls[i]);
		assert_string_equal(store->messages[i].name, names[i]);
		assert_int_equal(store->messages[i].size,
		    wire_size_of(bodies[i], strlen(bodies[i])));
		total += store->messages[i].size;
		size_t len;
		char *data = read_message(store, i, &len);
		assert_int_equal(len, strlen(bodies[i]));
		assert_memory_equal(data, bodies[i], len);
		free(data);
	}
	assert_int_equal(store->total_size, total);
	/* Exact values, computed by hand: CRLF lines, final newline added,
	 * dots not counted. */
	assert_int_equal(store->messages[0].size, 19 + 2 + 11 + 2 + 2 + 4 + 2 + 9 + 2);
	assert_int_equal(store->messages[1].size, 19 + 2 + 2 + 4 + 2);
	/* LF-stored and CRLF-stored forms of one message have one size. */
	assert_int_equal(wire_size_of(msg_lf, strlen(msg_lf)),
	    store->messages[2].size);

	struct store_stream stream;
	char *error = NULL;
	assert_int_not_equal(store->backend->message_open(store, 4, &stream, &error), STORE_OK);
	free(error);
	store->backend->close(store);
}

static void
test_skips_non_messages(void **state)
{
	struct fixture *f = *state;
	make_dirs(f);
	write_str(f, "new/1.ok", "a\n");
	write_str(f, "new/.hidden", "x\n");
	write_str(f, "cur/.2.dotfile:2,", "x\n");
	write_str(f, "tmp/3.in-delivery", "x\n");
	char *p = xasprintf("%s/cur/4.dir", f->maildir);
	assert_int_equal(mkdir(p, 0700), 0);
	free(p);
	p = xasprintf("%s/cur/5.fifo", f->maildir);
	assert_int_equal(mkfifo(p, 0600), 0);
	free(p);
	p = xasprintf("%s/new/6.link", f->maildir);
	assert_int_equal(symlink("/etc/passwd", p), 0);
	free(p);

	struct store *store = open_ok(f);
	assert_int_equal(store->count, 1);
	assert_string_equal(store->messages[0].uidl, "1.ok");
	assert_int_equal(store->messages[0].size, 3);
	store->backend->close(store);
}

static void
test_odd_names(void **state)
{
	struct fixture *f = *state;
	make_dirs(f);
	write_str(f, "new/10 with space%25", "a\n");
	write_str(f, "cur/11.\xff\x01line\nbreak:2,S", "bb\n");
	write_str(f, "new/noTime", "ccc\n");
	struct store *store = open_ok(f);
	assert_int_equal(store->count, 3);
	/* Ordered by time; a name without one comes last. */
	assert_int_equal(store->messages[0].size, 3);
	assert_int_equal(store->messages[1].size, 4);
	assert_string_equal(store->messages[2].uidl, "noTime");
	assert_int_equal(strlen(store->messages[0].uidl), 41);
	assert_int_equal(strlen(store->messages[1].uidl), 41);
	char *u0 = xstrdup(store->messages[0].uidl);
	store->backend->close(store);

	/* The escaped names come back from the index: nothing is recomputed,
	 * so the index is not rewritten. */
	char *before = read_index(f);
	assert_non_null(before);
	assert_non_null(strstr(before, "\n3 n 10%20with%20space%2525\n"));
	store = open_ok(f);
	assert_int_equal(store->count, 3);
	assert_string_equal(store->messages[0].uidl, u0);
	assert_int_equal(store->messages[1].size, 4);
	store->backend->close(store);
	char *after = read_index(f);
	assert_string_equal(before, after);
	free(before);
	free(after);
	free(u0);
}

static void
test_duplicate_base_name(void **state)
{
	struct fixture *f = *state;
	make_dirs(f);
	write_str(f, "new/100.dup.host", msg_lf);
	write_str(f, "cur/100.dup.host:2,S", msg_lf);
	write_str(f, "cur/200.other.host:2,", msg_crlf);
	struct store *store = open_ok(f);
	assert_int_equal(store->count, 2);
	assert_string_equal(store->messages[0].uidl, "100.dup.host");
	assert_string_equal(store->messages[0].name, "cur/100.dup.host:2,S");
	assert_string_equal(store->messages[1].uidl, "200.other.host");

	/* Deleting the message removes both copies, and nothing else. */
	bool deleted[2] = { true, false };
	char *error = NULL;
	assert_int_equal(store->backend->expunge(store, deleted, &error), STORE_OK);
	store->backend->close(store);
	assert_false(exists(f, "new/100.dup.host"));
	assert_false(exists(f, "cur/100.dup.host:2,S"));
	assert_true(exists(f, "cur/200.other.host:2,"));
}

static void
test_index_written_and_reused(void **state)
{
	struct fixture *f = *state;
	populate(f);
	struct store *store = open_ok(f);
	uint64_t size0 = store->messages[0].size;
	store->backend->close(store);

	char *index = read_index(f);
	assert_non_null(index);
	char *want = xasprintf("popbox-index 3\ndirs -\n%llu n 1000.A.host\n", (unsigned long long)size0);
	assert_memory_equal(index, want, strlen(want));
	assert_non_null(strstr(index, "\nend 4\n"));
	assert_int_equal(index[strlen(index) - 1], '\n');
	/* whole file names, with their directory */
	assert_non_null(strstr(index, " c 1500.Z.host:2,\n"));
	assert_non_null(strstr(index, " c 2000.B.host:2,S\n"));
	free(want);

	/* Reused: a size planted in the cache is what open reports (it did
	 * not read the file), and an unchanged cache is not rewritten. */
	char *planted = xstrdup(index);
	char *p = strstr(planted, "dirs -\n");   /* the first entry line follows */
	assert_non_null(p);
	char *line_end = strchr(p + strlen("dirs -\n"), '\n');
	char *fake = xasprintf("popbox-index 3\ndirs -\n777 n 1000.A.host%s", line_end);
	put_index(f, fake);
	char *idx_path = xasprintf("%s/popbox.index", f->maildir);
	struct stat st1, st2;
	assert_int_equal(stat(idx_path, &st1), 0);
	store = open_ok(f);
	assert_int_equal(store->messages[0].size, 777);
	store->backend->close(store);
	assert_int_equal(stat(idx_path, &st2), 0);
	assert_int_equal(st1.st_ino, st2.st_ino);   /* not replaced */

	/* The old format (base names only) still gives sizes, and is
	 * replaced by the current one. */
	put_index(f, "popbox-index 1\n778 1000.A.host\nend 1\n");
	store = open_ok(f);
	assert_int_equal(store->messages[0].size, 778);
	store->backend->close(store);
	char *v2 = read_index(f);
	assert_true(strncmp(v2, "popbox-index 3\ndirs -\n778 n 1000.A.host\n", 40) == 0);
	free(v2);
	free(idx_path);
	free(planted);
	free(fake);
	free(index);
}

/* The scan matches its sorted entries against the cache in one merge pass:
 * cached names between, before and after new, vanished and out-of-order
 * ones each get the cached size; the others are read. */
static void
test_index_merge(void **state)
{
	struct fixture *f = *state;
	make_dirs(f);
	write_str(f, "new/200.B.host", "Subject: b\n\nb\n");
	write_str(f, "cur/400.D.host:2,S", "Subject: d\n\ndd\n");
	write_str(f, "new/400.C.host", "Subject: c\n\nc\n");
	write_str(f, "new/600.F.host", "Subject: f\n\nf\n");
	write_str(f, "new/50.A.host", "Subject: a\n\na\n");
	write_str(f, "new/99999999999999999999.Z.host", "Subject: z\n\nz\n");
	/* 50.A and 600.F are not cached, 300.gone is but has no file; the
	 * 20-digit time does not fit and sorts last */
	put_index(f, "popbox-index 2\ndirs -\n"
	    "701 n 200.B.host\n702 n 300.gone.host\n703 n 400.C.host\n704 n 400.D.host\n"
	    "705 n 99999999999999999999.Z.host\nend 5\n");
	struct store *store = open_ok(f);
	assert_int_equal(store->count, 6);
	const char *want_name[] = { "new/50.A.host", "new/200.B.host", "new/400.C.host",
		"cur/400.D.host:2,S", "new/600.F.host", "new/99999999999999999999.Z.host" };
	const uint64_t want_size[] = { 17, 701, 703, 704, 17, 705 };
	for (int i = 0; i < 6; i++) {
		assert_string_equal(store->messages[i].name, want_name[i]);
		assert_int_equal(store->messages[i].size, want_size[i]);
	}
	store->backend->close(store);
	/* rewritten with the ghost dropped and the new sizes added */
	char *now = read_index(f);
	assert_string_equal(now, "popbox-index 3\ndirs -\n17 n 50.A.host\n701 n 200.B.host\n"
	    "703 n 400.C.host\n704 c 400.D.host:2,S\n17 n 600.F.host\n"
	    "705 n 99999999999999999999.Z.host\nend 6\n");
	free(now);
	/* out of order: damage, every size read again */
	put_index(f, "popbox-index 2\ndirs -\n701 n 400.C.host\n702 n 200.B.host\nend 2\n");
	store = open_ok(f);
	assert_int_equal(store->messages[1].size, 17);
	assert_int_equal(store->messages[2].size, 17);
	store->backend->close(store);
}

/* Each damaged cache is ignored: sizes come from the files again and a good
 * cache is written. */
static void
test_index_damaged(void **state)
{
	struct fixture *f = *state;
	populate(f);
	struct store *store = open_ok(f);
	uint64_t sizes[4];
	for (int i = 0; i < 4; i++)
		sizes[i] = store->messages[i].size;
	store->backend->close(store);
	char *good = read_index(f);

	char *truncated = xstrndup(good, strlen(good) - 4);
	char *no_end = xstrndup(good, (size_t)(strstr(good, "end ") - good));
	char *torn_line = xstrndup(good, 30);
	/* Everything valid but a size that would make the total wrap (the
	 * sum of the real sizes and 2^64 - 100): sizes over 8 TiB are damage. */
	const char *first = strchr(strchr(good, '\n') + 1, '\n') + 1;
	char *huge = xasprintf("%.*s18446744073709551516%s", (int)(first - good), good,
	    first + strspn(first, "0123456789"));
	const char *bad[] = {
		"",
		"garbage\x01\x02\n",
		"popbox-index 2\nend 0\n",
		"popbox-index 1\n777 1000.A.host:2,S\nend 1\n",   /* the old format */
		"popbox-index 2\nend 0\n",                        /* no dirs line */
		"popbox-index 2\ndirs 1 2\nend 0\n",
		"popbox-index 2\ndirs 1 2 3 4 5 1000000000\nend 0\n",
		"popbox-index 2\ndirs -\n777 n 1000.A.host\n1 c 1500.Z.host\n2 n 2000.A.host\n3 c 2000.B.host\nend 5\n",
		"popbox-index 2\ndirs -\n777x n 1000.A.host\n1 c 1500.Z.host\nend 2\n",
		"popbox-index 2\ndirs -\n-5 n 1000.A.host\nend 1\n",
		"popbox-index 2\ndirs -\n 777 n 1000.A.host\nend 1\n",
		"popbox-index 2\ndirs -\n777\nend 1\n",
		"popbox-index 2\ndirs -\n777 1000.A.host\nend 1\n",
		"popbox-index 2\ndirs -\n777 x 1000.A.host\nend 1\n",
		"popbox-index 2\ndirs -\n777 n 1000.A.host\n778 c 1000.A.host:2,S\nend 2\n",
		"popbox-index 2\ndirs -\n777 n :2,S\nend 1\n",
		"popbox-index 2\ndirs -\n777 n .hidden\nend 1\n",
		"popbox-index 2\ndirs -\n777 n 1000%zzA.host\nend 1\n",
		"popbox-index 2\ndirs -\n777 n 1000%2FA.host\nend 1\n",
		"popbox-index 2\ndirs -\n99999999999999999999999 n 1000.A.host\nend 1\n",
		"popbox-index 2\ndirs -\n777 n 1000.A.host\nend 1\nextra\n",
		truncated, no_end, torn_line, huge,
	};
	for (size_t k = 0; k < N_ELEMENTS(bad); k++) {
		put_index(f, bad[k]);
		store = open_ok(f);
		assert_int_equal(store->count, 4);
		for (int i = 0; i < 4; i++)
			assert_int_equal(store->messages[i].size, sizes[i]);
		store->backend->close(store);
		char *now = read_index(f);
		assert_string_equal(now, good);
		free(now);
	}

	/* Missing cache, or a directory in its place. */
	char *p = xasprintf("%s/popbox.index", f->maildir);
	unlink(p);
	store = open_ok(f);
	store->backend->close(store);
	char *now = read_index(f);
	assert_string_equal(now, good);
	free(now);
	free(p);
	free(truncated);
	free(huge);
	free(no_end);
	free(torn_line);
	free(good);
}

static struct store *
open_settled(struct fixture *f)
{
	usleep(150 * 1000);     /* the directories' ctime is older than 50 ms */
	return open_ok(f);
}

/* With new/ and cur/ as a clean scan recorded them, the index is the scan
 * (readdir is skipped); any change in either directory, including a flag
 * rename or a utimes() setting the mtime back, makes the next open scan. */
/* maildir_trust_ctime = no (and auto on a network file system) reads the
 * directories every time: a line planted in the index with the right dirs
 * record is not listed. yes and auto (here, a local file system) trust it. */
static void
test_index_trust_ctime_setting(void **state)
{
	struct fixture *f = *state;
	store_maildir_settle_ms = 50;
	populate(f);
	struct store *store = open_settled(f);
	store->backend->close(store);
	char *index = read_index(f);
	char *dirs_end = strchr(strstr(index, "\ndirs ") + 1, '\n');
	*dirs_end = '\0';
	char *planted = xasprintf("%s\n5 n 0.ghost\n%s", index, dirs_end + 1);
	char *end = strstr(planted, "\nend 4\n");
	end[5] = '5';
	enum store_trust_ctime settings[] = { STORE_TRUST_CTIME_NO, STORE_TRUST_CTIME_YES,
		STORE_TRUST_CTIME_AUTO };
	uint32_t want[] = { 4, 5, 5 };
	for (size_t i = 0; i < 3; i++) {
		store_maildir_trust_ctime = settings[i];
		put_index(f, planted);
		store = open_ok(f);
		assert_int_equal(store->count, want[i]);
		store->backend->close(store);
	}
	store_maildir_trust_ctime = STORE_TRUST_CTIME_AUTO;
	store_maildir_settle_ms = 2000;
	free(planted);
	free(index);
}

static void
test_network_file_systems(void **state)
{
	/* NFS, CIFS, SMB2, Ceph, FUSE, GFS2, OCFS2, Lustre */
	unsigned long net[] = { 0x6969, 0xff534d42, 0xfe534d42, 0x00c36400, 0x65735546,
		0x01161970, 0x7461636f, 0x0bd00bd0 };
	/* ext4, xfs, btrfs, tmpfs, zfs, overlayfs */
	unsigned long local[] = { 0xef53, 0x58465342, 0x9123683e, 0x01021994, 0x2fc12fc1,
		0x794c7630 };
	for (size_t i = 0; i < N_ELEMENTS(net); i++)
		assert_true(store_fs_type_is_network(net[i]));
	for (size_t i = 0; i < N_ELEMENTS(local); i++)
		assert_false(store_fs_type_is_network(local[i]));
}

static void
test_index_trusted(void **state)
{
	struct fixture *f = *state;
	store_maildir_settle_ms = 50;
	populate(f);
	struct store *store = open_settled(f);   /* scans, records new/ and cur/ */
	assert_int_equal(store->count, 4);
	store->backend->close(store);
	char *index = read_index(f);
	assert_null(strstr(index, "dirs -"));
	char *dirs_line = strstr(index, "\ndirs ");
	assert_non_null(dirs_line);
	char *dirs_end = strchr(dirs_line + 1, '\n');   /* entries follow */

	/* proof that the scan is skipped: a line planted with the same dirs
	 * record is listed; opening it finds no file (STORE_GONE, the -ERR a
	 * message expunged by another program gets) */
	*dirs_end = '\0';
	char *planted = xasprintf("%s\n5 n 0.ghost\n%s", index, dirs_end + 1);
	char *end = strstr(planted, "\nend 4\n");
	assert_non_null(end);
	end[5] = '5';
	put_index(f, planted);
	store = open_ok(f);
	assert_int_equal(store->count, 5);
	assert_string_equal(store->messages[0].name, "new/0.ghost");
	assert_string_equal(store->messages[2].name, "cur/1500.Z.host:2,");
	struct store_stream st;
	char *err = NULL;
	assert_int_equal(store->backend->message_open(store, 0, &st, &err), STORE_GONE);
	assert_int_equal(store->backend->message_open(store, 2, &st, &err), STORE_OK);
	close(st.fd);
	store->backend->close(store);

	/* a delivery moves new/'s ctime: scanned again */
	write_str(f, "new/3000.N.host", msg_lf);
	store = open_ok(f);
	assert_int_equal(store->count, 5);
	assert_string_equal(store->messages[0].name, "new/1000.A.host");
	assert_string_equal(store->messages[4].name, "new/3000.N.host");
	store->backend->close(store);
	free(index);
	index = read_index(f);
	assert_non_null(strstr(index, "\ndirs -\n"));   /* too fresh to record */
	assert_null(strstr(index, "ghost"));

	/* a flag change renames in cur/ */
	store = open_settled(f);
	store->backend->close(store);
	char *a = xasprintf("%s/cur/1500.Z.host:2,", f->maildir);
	char *b = xasprintf("%s/cur/1500.Z.host:2,S", f->maildir);
	assert_int_equal(rename(a, b), 0);
	store = open_ok(f);
	assert_string_equal(store->messages[1].name, "cur/1500.Z.host:2,S");
	store->backend->close(store);

	/* a removal, with new/'s times set back afterwards (rsync -a, touch -r) */
	store = open_settled(f);
	store->backend->close(store);
	char *n = xasprintf("%s/new", f->maildir);
	char *gone = xasprintf("%s/new/2000.A.host", f->maildir);
	struct stat before;
	assert_int_equal(stat(n, &before), 0);
	assert_int_equal(unlink(gone), 0);
	struct timespec times[2] = { before.st_atim, before.st_mtim };
	assert_int_equal(utimensat(AT_FDCWD, n, times, 0), 0);
	store = open_ok(f);
	assert_int_equal(store->count, 4);
	for (uint32_t i = 0; i < store->count; i++)
		assert_string_not_equal(store->messages[i].name, "new/2000.A.host");
	store->backend->close(store);

	store_maildir_settle_ms = 2000;
	free(n);
	free(gone);
	free(a);
	free(b);
	free(planted);
	free(index);
}

/* The cache decides nothing about which messages exist unless it recorded
 * new/ and cur/ as they still are (test_index_trusted). */
static void
test_index_not_source_of_truth(void **state)
{
	struct fixture *f = *state;
	populate(f);
	put_index(f, "popbox-index 2\ndirs -\n10 n 0.ghost\n25 n 1000.A.host\nend 2\n");
	struct store *store = open_ok(f);
	assert_int_equal(store->count, 4);
	assert_string_equal(store->messages[0].uidl, "1000.A.host");
	assert_int_equal(store->messages[0].size, 25);
	store->backend->close(store);
	char *index = read_index(f);
	assert_null(strstr(index, "ghost"));   /* vanished entries dropped */
	assert_non_null(strstr(index, "\nend 4\n"));
	free(index);

	/* A message removed behind our back drops out of the cache. */
	char *gone = xasprintf("%s/new/2000.A.host", f->maildir);
	assert_int_equal(unlink(gone), 0);
	free(gone);
	store = open_ok(f);
	assert_int_equal(store->count, 3);
	store->backend->close(store);
	index = read_index(f);
	assert_null(strstr(index, "2000.A.host"));
	assert_non_null(strstr(index, "\nend 3\n"));
	free(index);
}

static void
test_vanished_and_moved(void **state)
{
	struct fixture *f = *state;
	populate(f);
	struct store *store = open_ok(f);
	struct store_stream stream;
	char *error = NULL;

	/* Expunged elsewhere: STORE_GONE. */
	char *p = xasprintf("%s/cur/1500.Z.host:2,", f->maildir);
	assert_int_equal(unlink(p), 0);
	free(p);
	assert_int_equal(store->backend->message_open(store, 1, &stream, &error), STORE_GONE);

	/* Moved new/ -> cur/ with flags by another reader: still found. */
	char *from = xasprintf("%s/new/1000.A.host", f->maildir);
	char *to = xasprintf("%s/cur/1000.A.host:2,RS", f->maildir);
	assert_int_equal(rename(from, to), 0);
	size_t len;
	char *data = read_message(store, 0, &len);
	assert_int_equal(len, strlen(msg_lf));
	assert_memory_equal(data, msg_lf, len);
	free(data);
	assert_string_equal(store->messages[0].name, "cur/1000.A.host:2,RS");

	/* Flags changed within cur/ after our scan, then expunged: the file
	 * under its new name is removed; the vanished one counts as removed. */
	char *from2 = xasprintf("%s/cur/2000.B.host:2,S", f->maildir);
	char *to2 = xasprintf("%s/cur/2000.B.host:2,ST", f->maildir);
	assert_int_equal(rename(from2, to2), 0);
	bool deleted[4] = { false, true, false, true };
	assert_int_equal(store->backend->expunge(store, deleted, &error), STORE_OK);
	assert_false(exists(f, "cur/2000.B.host:2,ST"));
	assert_true(exists(f, "cur/1000.A.host:2,RS"));
	assert_true(exists(f, "new/2000.A.host"));
	store->backend->close(store);
	free(from);
	free(to);
	free(from2);
	free(to2);
}

static void
test_expunge_only_marked(void **state)
{
	struct fixture *f = *state;
	populate(f);
	write_str(f, "new/3000.late.host", msg_lf);   /* counted: before open */
	struct store *store = open_ok(f);
	assert_int_equal(store->count, 5);
	/* Delivered after the snapshot: never touched. */
	write_str(f, "new/0500.after-open.host", msg_lf);
	bool deleted[5] = { true, false, true, false, false };
	char *error = NULL;
	assert_int_equal(store->backend->expunge(store, deleted, &error), STORE_OK);
	store->backend->close(store);
	assert_false(exists(f, "new/1000.A.host"));
	assert_true(exists(f, "cur/1500.Z.host:2,"));
	assert_false(exists(f, "new/2000.A.host"));
	assert_true(exists(f, "cur/2000.B.host:2,S"));
	assert_true(exists(f, "new/3000.late.host"));
	assert_true(exists(f, "new/0500.after-open.host"));

	/* Nothing marked: nothing removed. */
	store = open_ok(f);
	assert_int_equal(store->count, 4);
	bool none[4] = { false, false, false, false };
	assert_int_equal(store->backend->expunge(store, none, &error), STORE_OK);
	store->backend->close(store);
	store = open_ok(f);
	assert_int_equal(store->count, 4);
	store->backend->close(store);
}

static void
test_expunge_failure_reported(void **state)
{
	struct fixture *f = *state;
	populate(f);
	struct store *store = open_ok(f);
	/* Replace message 4's file by a directory after the scan: unlink fails
	 * with EISDIR (works as root too, unlike a read-only cur/). */
	char *p = xasprintf("%s/cur/2000.B.host:2,S", f->maildir);
	assert_int_equal(unlink(p), 0);
	assert_int_equal(mkdir(p, 0700), 0);
	/* 1, 2 and 4 marked: the failure is reported, the others still go. */
	bool deleted[4] = { true, true, false, true };
	char *error = NULL;
	assert_int_equal(store->backend->expunge(store, deleted, &error), STORE_TEMP);
	assert_non_null(error);
	free(error);
	store->backend->close(store);
	assert_false(exists(f, "new/1000.A.host"));
	assert_false(exists(f, "cur/1500.Z.host:2,"));
	assert_true(exists(f, "new/2000.A.host"));
	assert_true(exists(f, "cur/2000.B.host:2,S"));
	free(p);
}

static void
test_lock(void **state)
{
	struct fixture *f = *state;
	struct store *s1 = open_ok(f), *s2 = NULL;
	char *error = NULL;

	assert_int_equal(store_maildir.open(f->maildir, &s2, &error), STORE_IN_USE);
	assert_null(s2);
	free(error);
	error = NULL;
	/* Another spelling of the same path is the same lock. */
	char *alias = xasprintf("%s/./Maildir", f->base);
	assert_int_equal(store_maildir.open(alias, &s2, &error), STORE_IN_USE);
	free(error);
	error = NULL;
	s1->backend->close(s1);
	s2 = open_ok(f);
	s2->backend->close(s2);

	/* A lock held by another process (another worker or node). */
	int ready[2], release[2];
	assert_int_equal(pipe(ready), 0);
	assert_int_equal(pipe(release), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char *lp = xasprintf("%s/popbox.lock", f->maildir);
		int fd = open(lp, O_RDWR);
		char c = flock(fd, LOCK_EX | LOCK_NB) == 0 ? 'y' : 'n';
		(void)!write(ready[1], &c, 1);
		(void)!read(release[0], &c, 1);
		_exit(0);
	}
	char c = 0;
	assert_int_equal(read(ready[0], &c, 1), 1);
	assert_int_equal(c, 'y');
	assert_int_equal(store_maildir.open(alias, &s2, &error), STORE_IN_USE);
	free(error);
	error = NULL;
	assert_int_equal(write(release[1], "x", 1), 1);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	s2 = open_ok(f);
	s2->backend->close(s2);
	close(ready[0]); close(ready[1]); close(release[0]); close(release[1]);
	free(alias);
}

static void
test_refuses_unsafe_maildrop(void **state)
{
	struct fixture *f = *state;
	struct store *store = NULL;
	char *error = NULL;
	make_dirs(f);

	assert_int_equal(chmod(f->maildir, 0770), 0);
	assert_int_equal(store_maildir.open(f->maildir, &store, &error), STORE_PERM);
	free(error);
	error = NULL;
	assert_int_equal(chmod(f->maildir, 0700), 0);

	char *cur = xasprintf("%s/cur", f->maildir);
	assert_int_equal(chmod(cur, 0702), 0);
	assert_int_equal(store_maildir.open(f->maildir, &store, &error), STORE_PERM);
	free(error);
	error = NULL;
	assert_int_equal(chmod(cur, 0700), 0);
	free(cur);

	/* A symlinked maildrop is not followed. */
	char *link = xasprintf("%s/link", f->base);
	assert_int_equal(symlink(f->maildir, link), 0);
	assert_int_equal(store_maildir.open(link, &store, &error), STORE_PERM);
	assert_null(store);
	free(error);
	free(link);

	store = open_ok(f);
	store->backend->close(store);
}

/* The mail location ~/mail/Maildir with ~/mail replaced by a link to another
 * user's directory: the link is in a directory that not only root can change
 * (a local user's home), so it is not followed, neither to open the other
 * maildrop nor to create one there; the same path without the link works. */
static void
test_symlink_above_maildrop(void **state)
{
	struct fixture *f = *state;
	struct store *store = NULL;
	char *error = NULL;
	char *bob_mail = xasprintf("%s/bob-mail", f->base);
	char *bob_empty = xasprintf("%s/bob-empty", f->base);
	char *home = xasprintf("%s/alice", f->base);
	char *link = xasprintf("%s/alice/mail", f->base);
	char *alice_md = xasprintf("%s/alice/mail/Maildir", f->base);
	char *victim = xasprintf("%s/bob-mail/Maildir/new/1000.B.host", f->base);
	char *created = xasprintf("%s/bob-empty/Maildir", f->base);

	assert_int_equal(mkdir(bob_mail, 0700), 0);
	assert_int_equal(mkdir(bob_empty, 0700), 0);
	assert_int_equal(mkdir(home, 0700), 0);
	/* A local user's home: not root's (as root, another uid owns it). */
	if (geteuid() == 0)
		assert_int_equal(chown(home, 12345, 12345), 0);
	free(f->maildir);
	f->maildir = xasprintf("%s/Maildir", bob_mail);
	store = open_ok(f);     /* creates bob's maildrop */
	store->backend->close(store);
	write_str(f, "new/1000.B.host", msg_lf);

	assert_int_equal(symlink(bob_mail, link), 0);
	assert_int_equal(store_maildir.open(alice_md, &store, &error), STORE_PERM);
	assert_null(store);
	assert_non_null(strstr(error, "symbolic link"));
	free(error);
	error = NULL;
	assert_int_equal(access(victim, F_OK), 0);

	/* A link to a directory without a maildrop: nothing created there. */
	assert_int_equal(unlink(link), 0);
	assert_int_equal(symlink(bob_empty, link), 0);
	assert_int_equal(store_maildir.open(alice_md, &store, &error), STORE_PERM);
	free(error);
	error = NULL;
	assert_int_equal(access(created, F_OK), -1);

	/* A real directory in its place: the maildrop is created and opened. */
	assert_int_equal(unlink(link), 0);
	assert_int_equal(mkdir(link, 0700), 0);
	assert_int_equal(store_maildir.open(alice_md, &store, &error), STORE_OK);
	assert_int_equal(store->count, 0);
	store->backend->close(store);

	free(f->maildir);
	f->maildir = alice_md;   /* freed by teardown */
	free(bob_mail);
	free(bob_empty);
	free(home);
	free(link);
	free(victim);
	free(created);
}

/* A trusted popbox.index (its dirs record matches) over MAILDIR_INDEX_MAX_BYTES
 * is not read: the maildrop is scanned instead. The planted index lists
 * ~530,000 messages that do not exist; read, it would be the listing. */
static void
test_index_too_big_not_read(void **state)
{
	struct fixture *f = *state;
	store_maildir_settle_ms = 50;
	populate(f);
	struct store *store = open_settled(f);
	store->backend->close(store);
	char *index = read_index(f);
	char *end = strstr(index, "\nend 4\n");
	assert_non_null(end);
	assert_null(strstr(index, "dirs -"));

	char *p = xasprintf("%s/popbox.index", f->maildir);
	FILE *fp = fopen(p, "w");
	assert_non_null(fp);
	fwrite(index, 1, (size_t)(end - index) + 1, fp);
	char pad[240];
	memset(pad, 'p', sizeof(pad) - 1);
	pad[sizeof(pad) - 1] = '\0';
	unsigned n = 0;
	for (uint64_t written = 0; written <= ((uint64_t)128 << 20); n++)
		written += (uint64_t)fprintf(fp, "1 n 2500.%s%07u\n", pad, n);
	fprintf(fp, "end %u\n", 4 + n);
	assert_int_equal(fclose(fp), 0);
	free(p);

	store = open_ok(f);
	assert_int_equal(store->count, 4);
	store->backend->close(store);
	store_maildir_settle_ms = 2000;
	free(index);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_create_empty, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_sizes_and_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_skips_non_messages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_odd_names, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_base_name, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_written_and_reused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_damaged, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_merge, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_trusted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_too_big_not_read, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_not_source_of_truth, setup, teardown),
		cmocka_unit_test_setup_teardown(test_vanished_and_moved, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expunge_only_marked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expunge_failure_reported, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_trust_ctime_setting, setup, teardown),
		cmocka_unit_test(test_network_file_systems),
		cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refuses_unsafe_maildrop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_above_maildrop, setup, teardown),
	};
	log_init("test_store_maildir", true, false);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Maildir backend of the store interface (store.h; rules in docs/RELIABILITY.md §2).
 *
 * The maildrop is read through directory descriptors opened once with
 * O_NOFOLLOW, and every message is opened relative to them with O_NOFOLLOW, so
 * a symlink planted in the maildrop (or a renamed cur/) cannot redirect reads
 * or unlinks outside it (docs/RELIABILITY.md §3).
 *
 * Sizes come from the file through the wire encoder, cached in popbox.index so
 * that logging in to a big maildrop does not read every message. The index
 * also records the inode and change time (ctime) of new/ and cur/ as they
 * were before a complete, clean scan; while both are unchanged, the scan's
 * result is the index itself and readdir is skipped (docs/DESIGN.md). A
 * ctime cannot be set back by utimes(), and any link, unlink or rename in a
 * directory moves it, so an unchanged ctime means the same entries; one
 * less than store_maildir_settle_ms old when the scan began is not recorded
 * (a change in the same clock tick would not move it).
 */
#include "server/store.h"
#include "server/store_maildir_int.h"
#include "server/lock.h"
#include "server/uidl_migrate.h"
#include "common/log.h"
#include "common/util.h"
#include "common/wire.h"

#include <dirent.h>
#include <linux/openat2.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Bounds the memory of one session (~150 bytes per message) and the time a
 * login may take; a bigger maildrop is refused with SYS/PERM rather than shown
 * partly, which would look like lost mail. */
#define MAILDIR_MAX_MESSAGES 1000000
/* Largest message size an index line may give (8 TiB, far above any mail
 * system's limit). The index is written by the maildrop's owner, who could
 * otherwise make the total size wrap below max_maildrop_size: with this
 * bound the sum of MAILDIR_MAX_MESSAGES sizes stays below 2^63. */
#define MAILDIR_INDEX_MAX_SIZE ((uint64_t)1 << 43)
_Static_assert(MAILDIR_MAX_MESSAGES <= (1 << 20),
    "MAILDIR_MAX_MESSAGES * MAILDIR_INDEX_MAX_SIZE must stay below 2^63");
/* Session lock and index cache live in the maildrop root, where Maildir
 * readers never look for messages (only new/ and cur/ hold mail). */
#define MAILDIR_LOCK_NAME "popbox.lock"
#define MAILDIR_INDEX_NAME "popbox.index"
/* One fixed temp name is safe: writers hold the session lock. */
#define MAILDIR_INDEX_TMP_NAME "popbox.index.tmp"
/* First line of the index; bump the number when the format changes, so an
 * old or foreign file is rebuilt instead of misread. Version 3 adds the
 * UIDL a message was served with, where it is not the one its name gives
 * (docs/DESIGN.md "UIDLs kept from the old server"). */
#define MAILDIR_INDEX_HEADER "popbox-index 3"
/* Version 2 (no UIDLs: every message was served with its name's UIDL) is
 * read as version 3 without them and rewritten. */
#define MAILDIR_INDEX_HEADER_V2 "popbox-index 2"
/* Version 1 (base names, no directories) still supplies sizes, so an
 * upgrade does not read every message again. */
#define MAILDIR_INDEX_HEADER_V1 "popbox-index 1"
/* See the top of the file; tests shorten it. */
unsigned store_maildir_settle_ms = 2000;
enum store_trust_ctime store_maildir_trust_ctime = STORE_TRUST_CTIME_AUTO;

bool
store_fs_type_is_network(unsigned long f_type)
{
	/* linux/magic.h and the file systems' own headers */
	static const unsigned long network[] = {
		0x6969,       /* NFS (v2, v3, v4) */
		0xff534d42,   /* CIFS */
		0xfe534d42,   /* SMB2 */
		0x517b,       /* SMB */
		0x00c36400,   /* Ceph */
		0x65735546,   /* FUSE (GlusterFS, CephFS-fuse, sshfs, ...) */
		0x01161970,   /* GFS2 */
		0x7461636f,   /* OCFS2 */
		0x5346414f,   /* AFS */
		0x6b414653,   /* kAFS */
		0x01021997,   /* 9P */
		0x0bd00bd0,   /* Lustre */
		0x47504653,   /* GPFS */
		0x564c,       /* NCP */
		0x73757245,   /* Coda */
	};
	for (size_t i = 0; i < N_ELEMENTS(network); i++)
		if (f_type == network[i])
			return true;
	return false;
}

/* Longest valid index line: 20-digit size, " n " or " c ", a NAME_MAX-byte
 * name with every byte %-escaped, a space and a UIDL, newline. Longer means
 * damage. */
#define MAILDIR_INDEX_LINE_MAX (20 + 3 + 3 * NAME_MAX + 1 + UIDL_MAX_LEN + 1)
/* popbox.index is read whole into one buffer, and it is written by the
 * maildrop's owner: 128 MiB bounds that allocation (the largest index any
 * line length allows would be ~790 MB) and still holds 1,000,000 messages
 * (MAILDIR_MAX_MESSAGES) of usual Maildir names (about 70 bytes a line) with
 * room to spare. A larger file is read as damage: the scan is the truth. */
#define MAILDIR_INDEX_MAX_BYTES ((uint64_t)128 << 20)
/* Read size when computing a message's wire size: large enough that syscall
 * cost vanishes, small enough for a worker thread's stack-free heap buffer. */
#define MAILDIR_READ_CHUNK (64 * 1024)
/* A message renamed by a concurrent reader (IMAP flag change) can be renamed
 * again between our lookup and open; a few retries, then report it gone. */
#define MAILDIR_REOPEN_TRIES 3

enum maildir_subdir {
	MAILDIR_NEW = 0,
	MAILDIR_CUR = 1,
	MAILDIR_SUBDIRS
};
/* Same length on purpose: store_message.name is "<sub>/<file>" and the file
 * part starts at a fixed offset. */
static const char *const maildir_subdir_names[MAILDIR_SUBDIRS] = { "new", "cur" };
#define MAILDIR_SUBDIR_PREFIX_LEN 4

/* A second file with the base name of a kept message (left by a crash between
 * link and unlink of a new/ -> cur/ move): not shown, but removed with it. */
struct maildir_duplicate {
	uint32_t idx;
	enum maildir_subdir subdir;
	char *file;
};

struct maildir_store {
	struct store store;      /* must be first: store.h hands out &store */
	char *path;
	int root_fd;
	int sub_fd[MAILDIR_SUBDIRS];
	/* new/ and cur/ as fstat saw them when they were opened, for the
	 * scan's first look at them (one fstat each instead of two). */
	struct stat sub_st[MAILDIR_SUBDIRS];
	bool sub_st_fresh;
	uid_t euid;              /* during the open: geteuid(), asked once */
	struct lock *lock;
	struct maildir_duplicate *dups;
	size_t n_dups;
	/* During the open only: how new messages get their UIDLs. */
	const struct store_open_options *options;
};

/* One directory entry found by the scan. */
struct maildir_entry {
	char *name;               /* "new/FILE" or "cur/FILE": store_message.name */
	char *file;               /* name + MAILDIR_SUBDIR_PREFIX_LEN */
	size_t base_len;          /* file name up to the first ':' */
	uint64_t time;            /* leading decimal seconds, UINT64_MAX if none */
	uint64_t size;
	bool have_size;
	enum maildir_subdir subdir;
	char *uidl;               /* the UIDL served, NULL: the name's (store.h) */
	bool remembered;          /* the index had it: served before */
	enum store_uidl_source source;  /* for store_open_options.report */
	enum uidl_old_miss miss;
};

struct maildir_index_entry {
	char *base;               /* file name, in maildir_index.text */
	size_t base_len;          /* up to the first ':' */
	size_t name_len;          /* the whole file name */
	uint64_t time;            /* as maildir_entry.time */
	uint64_t size;
	enum maildir_subdir subdir;
	const char *uidl;         /* in maildir_index.text; NULL: the name's */
	bool used;
};

/* What new/ and cur/ were when a clean scan began. */
struct maildir_dirs {
	bool known;
	uint64_t ino[MAILDIR_SUBDIRS];
	int64_t ctime_sec[MAILDIR_SUBDIRS];
	long ctime_nsec[MAILDIR_SUBDIRS];
};

/* popbox.index as read: the file's text (names unescaped in place) and its
 * entries, in the scan's order (time, then base name), strictly increasing:
 * the scan matches its sorted entries against it in one merge pass. */
struct maildir_index {
	char *text;
	struct maildir_index_entry *entries;
	size_t count;
	struct maildir_dirs dirs;
	bool v1;                  /* the old format: to be rewritten */
	bool v2;                  /* no UIDLs: to be rewritten */
};

struct maildir_base_key {
	const char *base;
	size_t len;
};

enum store_status
store_maildir_errno_status(int err)
{
	/* Conditions an administrator must fix are permanent; anything else
	 * (EIO, EMFILE, ENOSPC, a parent not mounted yet...) may pass. */
	switch (err) {
	case EACCES:
	case EPERM:
	case ELOOP:
	case ENOTDIR:
	case ENAMETOOLONG:
	case EROFS:
		return STORE_PERM;
	default:
		return STORE_TEMP;
	}
}

static size_t
store_maildir_base_len(const char *file)
{
	const char *colon = strchr(file, ':');
	return colon != NULL ? (size_t)(colon - file) : strlen(file);
}

static int
store_maildir_base_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int r = memcmp(a, b, alen < blen ? alen : blen);
	if (r != 0)
		return r;
	return alen < blen ? -1 : alen > blen ? 1 : 0;
}

/* Delivery time from the name (cr.yp.to: "time.unique.host"); used only for
 * ordering, so a name without it just sorts after the ones with it. */
static uint64_t
store_maildir_name_time(const char *file)
{
	uint64_t t = 0;
	const char *p = file;

	if (*p < '0' || *p > '9')
		return UINT64_MAX;
	/* 19 digits cannot overflow (UINT64_MAX has 20); more sort last. */
	for (int n = 0; *p >= '0' && *p <= '9'; p++, n++) {
		if (n == 19)
			return UINT64_MAX;
		t = t * 10 + (unsigned)(*p - '0');
	}
	return t;
}

static int
store_maildir_entry_cmp(const void *pa, const void *pb)
{
	const struct maildir_entry *a = pa, *b = pb;
	int r;

	if (a->time != b->time)
		return a->time < b->time ? -1 : 1;
	r = store_maildir_base_cmp(a->file, a->base_len, b->file, b->base_len);
	if (r != 0)
		return r;
	/* Same message twice: cur/ first, so the copy kept is the one that
	 * finished its move out of new/. */
	if (a->subdir != b->subdir)
		return a->subdir == MAILDIR_CUR ? -1 : 1;
	return strcmp(a->file, b->file);
}

static void
store_maildir_log_name(char *dst, size_t size, const char *file)
{
	str_sanitize(dst, size, file, strlen(file));
}

/* ---- index cache ---- */

static void
store_maildir_index_free(struct maildir_index *index)
{
	free(index->text);
	free(index->entries);
	memset(index, 0, sizeof(*index));
}

/* Order of the scan and of the index: delivery time, then base name. */
static int
store_maildir_key_cmp(uint64_t at, const char *a, size_t alen, uint64_t bt, const char *b,
    size_t blen)
{
	if (at != bt)
		return at < bt ? -1 : 1;
	return store_maildir_base_cmp(a, alen, b, blen);
}

static int
store_maildir_hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Names may hold any byte but NUL and '/': escape everything that would break
 * the line format (space, newline, controls, 8-bit) and '%' itself. */
static bool
store_maildir_index_needs_escape(unsigned char c)
{
	return c <= 0x20 || c >= 0x7f || c == '%';
}


/* Parse "SIZE n|c NAME" (NAME escaped: the file name in new/ or cur/),
 * unescaping NAME in place. Returns false on any deviation. */
static bool
store_maildir_index_parse_line(char *line, struct maildir_index_entry *e, bool v1)
{
	char *sp = strchr(line, ' ');
	char *name, *out;

	if (sp == NULL)
		return false;
	*sp = '\0';
	if (!parse_u64(line, MAILDIR_INDEX_MAX_SIZE, &e->size))
		return false;
	if (v1) {
		name = sp + 1;    /* a base name: cannot hold ':' */
		if (strchr(name, ':') != NULL)
			return false;
	} else {
		if ((sp[1] != 'n' && sp[1] != 'c') || sp[2] != ' ')
			return false;
		e->subdir = sp[1] == 'n' ? MAILDIR_NEW : MAILDIR_CUR;
		name = sp + 3;
	}
	if (*name == '\0')
		return false;
	/* Version 3: " UIDL" after the name (a name never holds a space). */
	if (!v1) {
		char *uidl = strchr(name, ' ');
		if (uidl != NULL) {
			*uidl++ = '\0';
			if (!uidl_is_valid(uidl, strlen(uidl)))
				return false;
			e->uidl = uidl;
		}
	}
	/* Most names have no escape: the part before the first '%' is taken as
	 * it is (a name we did not write matches no file, or has the size the
	 * file would have; the merge join below trusts nothing else of it). */
	e->base = name;
	out = strchr(name, '%');
	if (out == NULL)
		out = name + strlen(name);
	for (const char *p = out; *p != '\0'; p++) {     /* out never passes p */
		unsigned char c = (unsigned char)*p;
		if (c == '%') {
			int hi = store_maildir_hex_value(p[1]);
			int lo = hi < 0 ? -1 : store_maildir_hex_value(p[2]);
			if (lo < 0)
				goto bad;
			c = (unsigned char)(hi << 4 | lo);
			if (!store_maildir_index_needs_escape(c) || c == '\0' || c == '/')
				goto bad;   /* not how we write it: damage */
			p += 2;
		} else if (store_maildir_index_needs_escape(c) || c == '/') {
			goto bad;
		}
		*out++ = (char)c;
	}
	*out = '\0';
	e->name_len = (size_t)(out - e->base);
	if (memchr(e->base, '/', e->name_len) != NULL)
		goto bad;
	e->base_len = store_maildir_base_len(e->base);
	if (e->base_len == 0 || e->base[0] == '.')
		goto bad;         /* the scan never lists such a name */
	e->time = store_maildir_name_time(e->base);
	return true;
bad:
	e->base = NULL;
	return false;
}

/* "dirs -", or "dirs INO SEC NSEC INO SEC NSEC" for new/ then cur/. */
static bool
store_maildir_index_parse_dirs(const char *line, struct maildir_dirs *d)
{
	unsigned long long ino[2], sec[2];
	long nsec[2];
	int end = -1;

	memset(d, 0, sizeof(*d));
	if (strcmp(line, "dirs -") == 0)
		return true;
	if (sscanf(line, "dirs %llu %llu %ld %llu %llu %ld%n", &ino[0], &sec[0], &nsec[0],
	    &ino[1], &sec[1], &nsec[1], &end) != 6 || end < 0 || line[end] != '\0')
		return false;
	for (int i = 0; i < MAILDIR_SUBDIRS; i++) {
		if (nsec[i] < 0 || nsec[i] > 999999999 || sec[i] > INT64_MAX)
			return false;
		d->ino[i] = ino[i];
		d->ctime_sec[i] = (int64_t)sec[i];
		d->ctime_nsec[i] = nsec[i];
	}
	d->known = true;
	return true;
}

/* popbox.index into index->text, whole; *len_r its length. Returns false
 * if it is missing, not a regular file or over MAILDIR_INDEX_MAX_BYTES
 * (*damaged_r says whether to log it as damage). */
static bool
store_maildir_index_load_text(struct maildir_store *ms, struct maildir_index *index,
    size_t *len_r, bool *damaged_r)
{
	struct stat st;
	size_t len = 0;
	int fd;

	*damaged_r = false;
	fd = openat(ms->root_fd, MAILDIR_INDEX_NAME,
	    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT)
			log_warn("maildir %s: open %s", ms->path, MAILDIR_INDEX_NAME);
		return false;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		log_warnx("maildir %s: %s is not a regular file, ignored",
		    ms->path, MAILDIR_INDEX_NAME);
		close(fd);
		return false;
	}
	/* Over the bound: read as damage (the scan rebuilds what it needs). */
	if ((uint64_t)st.st_size > MAILDIR_INDEX_MAX_BYTES) {
		close(fd);
		*damaged_r = true;
		return false;
	}
	/* The whole file in one buffer (one read for any usual size), parsed
	 * in place: no allocation per message. */
	index->text = xmalloc((size_t)st.st_size + 1);
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, index->text + len, (size_t)st.st_size - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;        /* shrank meanwhile: the parse fails */
		len += (size_t)n;
	}
	close(fd);
	index->text[len] = '\0';
	*len_r = len;
	return true;
}

/* Parse index->text[0..len) in place. Returns false on any damage. */
static bool
store_maildir_index_parse(struct maildir_index *index, size_t len)
{
	uint64_t end_count;
	size_t alloc = 0;
	bool header = false, ended = false;

	if (memchr(index->text, '\0', len) != NULL)
		return false;        /* binary */
	for (char *line = index->text, *nl; line < index->text + len; line = nl + 1) {
		nl = memchr(line, '\n', (size_t)(index->text + len - line));
		if (nl == NULL || (size_t)(nl - line) + 1 > MAILDIR_INDEX_LINE_MAX ||
		    nl == line)
			return false;    /* truncated, over-long or empty line */
		*nl = '\0';
		if (ended)
			return false;    /* data after the end line */
		if (!header) {
			if (strcmp(line, MAILDIR_INDEX_HEADER_V1) == 0) {
				header = index->v1 = true;
				continue;
			}
			index->v2 = strcmp(line, MAILDIR_INDEX_HEADER_V2) == 0;
			if (!index->v2 && strcmp(line, MAILDIR_INDEX_HEADER) != 0)
				return false;
			header = true;
			/* the dirs line comes next */
			nl = memchr(nl + 1, '\n', (size_t)(index->text + len - (nl + 1)));
			if (nl == NULL)
				return false;
			*nl = '\0';
			line += strlen(line) + 1;
			if (!store_maildir_index_parse_dirs(line, &index->dirs))
				return false;
			continue;
		}
		if (strncmp(line, "end ", 4) == 0) {
			if (!parse_u64(line + 4, MAILDIR_MAX_MESSAGES, &end_count) ||
			    end_count != index->count)
				return false;
			ended = true;
			continue;
		}
		if (index->count >= MAILDIR_MAX_MESSAGES)
			return false;
		if (index->count == alloc) {
			alloc = alloc == 0 ? 1024 : alloc * 2;
			index->entries = xrealloc(index->entries,
			    alloc * sizeof(*index->entries));
		}
		struct maildir_index_entry *e = &index->entries[index->count];
		memset(e, 0, sizeof(*e));
		if (!store_maildir_index_parse_line(line, e, index->v1) ||
		    (index->v2 && e->uidl != NULL))
			return false;
		index->count++;
	}
	if (!ended)
		return false;
	/* We write it strictly increasing (so never a name twice). */
	for (size_t i = 1; i < index->count; i++) {
		const struct maildir_index_entry *a = &index->entries[i - 1], *b = &index->entries[i];
		if (store_maildir_key_cmp(a->time, a->base, a->base_len, b->time, b->base,
		    b->base_len) >= 0)
			return false;
	}
	return true;
}

/* Read popbox.index. Missing, damaged or foreign: returns false (the caller
 * rebuilds); damage is logged at info. */
static bool
store_maildir_index_read(struct maildir_store *ms, struct maildir_index *index)
{
	size_t len;
	bool damaged;

	memset(index, 0, sizeof(*index));
	if (store_maildir_index_load_text(ms, index, &len, &damaged) &&
	    store_maildir_index_parse(index, len))
		return true;
	if (damaged || index->text != NULL)
		log_info("maildir %s: %s damaged, rebuilding it", ms->path,
		    MAILDIR_INDEX_NAME);
	store_maildir_index_free(index);
	return false;
}

static void
store_maildir_index_write_name(FILE *fp, const char *base, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)base[i];
		if (store_maildir_index_needs_escape(c)) {
			putc('%', fp);
			putc(hex[c >> 4], fp);
			putc(hex[c & 0x0f], fp);
		} else {
			putc(c, fp);
		}
	}
}

/* Replace popbox.index by the sizes of the current messages: temp file, then
 * rename, so a reader sees the old or the new file whole. No fsync: after a
 * crash a lost or torn index is detected (header, end line) and rebuilt, and
 * the cost would be paid on every login that saw new mail. Failure only costs
 * speed at the next login, so it is logged, not returned. The exception is
 * durable: an index that records UIDLs for the first time (taken from the
 * old server's list, or replacing a collision) is synced with its
 * directory, since the old list may be deleted afterwards and nothing else
 * could give them back. */
static void
store_maildir_index_write(struct maildir_store *ms, const struct maildir_entry *entries,
    size_t count, const struct maildir_dirs *dirs, bool durable)
{
	FILE *fp;
	int fd;

	fd = openat(ms->root_fd, MAILDIR_INDEX_TMP_NAME,
	    O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		log_warn("maildir %s: create %s", ms->path, MAILDIR_INDEX_TMP_NAME);
		return;
	}
	fp = fdopen(fd, "w");
	if (fp == NULL) {
		log_warn("maildir %s: fdopen", ms->path);
		close(fd);
		goto fail;
	}
	fprintf(fp, "%s\n", MAILDIR_INDEX_HEADER);
	if (dirs->known)
		fprintf(fp, "dirs %llu %lld %ld %llu %lld %ld\n",
		    (unsigned long long)dirs->ino[MAILDIR_NEW], (long long)dirs->ctime_sec[MAILDIR_NEW],
		    dirs->ctime_nsec[MAILDIR_NEW], (unsigned long long)dirs->ino[MAILDIR_CUR],
		    (long long)dirs->ctime_sec[MAILDIR_CUR], dirs->ctime_nsec[MAILDIR_CUR]);
	else
		fputs("dirs -\n", fp);
	for (size_t i = 0; i < count; i++) {
		fprintf(fp, "%llu %c ", (unsigned long long)entries[i].size,
		    entries[i].subdir == MAILDIR_NEW ? 'n' : 'c');
		store_maildir_index_write_name(fp, entries[i].file, strlen(entries[i].file));
		if (entries[i].uidl != NULL)
			fprintf(fp, " %s", entries[i].uidl);
		putc('\n', fp);
	}
	fprintf(fp, "end %zu\n", count);
	if (fflush(fp) != 0 || ferror(fp) || (durable && fsync(fileno(fp)) < 0)) {
		log_warn("maildir %s: write %s", ms->path, MAILDIR_INDEX_TMP_NAME);
		fclose(fp);
		goto fail;
	}
	if (fclose(fp) != 0) {
		log_warn("maildir %s: close %s", ms->path, MAILDIR_INDEX_TMP_NAME);
		goto fail;
	}
	if (renameat(ms->root_fd, MAILDIR_INDEX_TMP_NAME, ms->root_fd,
	    MAILDIR_INDEX_NAME) < 0) {
		log_warn("maildir %s: rename %s", ms->path, MAILDIR_INDEX_TMP_NAME);
		goto fail;
	}
	if (durable && fsync(ms->root_fd) < 0)
		log_warn("maildir %s: fsync after writing %s", ms->path, MAILDIR_INDEX_NAME);
	return;
fail:
	unlinkat(ms->root_fd, MAILDIR_INDEX_TMP_NAME, 0);
}

/* ---- scanning ---- */

/* Wire size of one message file, read through the encoder (exact; the ,S= and
 * ,W= tags of the name are written by others and not trusted). Returns 0, or
 * -1 with errno (EINVAL: not a regular file). */
static int
store_maildir_file_wire_size(int dir_fd, const char *file, char *inbuf, char *outbuf,
    uint64_t *size_r)
{
	struct wire_encoder enc;
	struct stat st;
	ssize_t n;
	int fd, saved;

	/* O_NONBLOCK: a FIFO planted in the maildrop must not hang us. */
	fd = openat(dir_fd, file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0)
		goto fail;
	if (!S_ISREG(st.st_mode)) {
		errno = EINVAL;
		goto fail;
	}
	wire_encoder_init(&enc, -1);
	for (;;) {
		n = read(fd, inbuf, MAILDIR_READ_CHUNK);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			goto fail;
		}
		if (n == 0)
			break;
		wire_encode(&enc, inbuf, (size_t)n, outbuf);
	}
	wire_encode_finish(&enc, outbuf);
	close(fd);
	*size_r = enc.emitted - enc.stuffed;
	return 0;
fail:
	saved = errno;
	close(fd);
	errno = saved;
	return -1;
}

static void
store_maildir_entries_free(struct maildir_entry *entries, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		free(entries[i].name);
		free(entries[i].uidl);
	}
	free(entries);
}

/* Read one of new/ and cur/ into *entries. Dot files are Maildir's (and
 * popbox's) own, not mail; non-regular entries are skipped and logged; a file
 * that vanishes meanwhile is simply not there. */
static enum store_status
store_maildir_scan_dir(struct maildir_store *ms, enum maildir_subdir sub,
    struct maildir_entry **entries, size_t *count, size_t *alloc, size_t *skipped,
    char **error_r)
{
	const char *subname = maildir_subdir_names[sub];
	struct dirent *d;
	DIR *dir;
	int fd;

	/* A fresh open file description, so the readdir position is ours. */
	fd = openat(ms->sub_fd[sub], ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || (dir = fdopendir(fd)) == NULL) {
		int saved = errno;
		if (fd >= 0)
			close(fd);
		*error_r = xasprintf("maildir %s: open %s/: %s", ms->path, subname,
		    strerror(saved));
		return store_maildir_errno_status(saved);
	}
	for (;;) {
		errno = 0;
		d = readdir(dir);
		if (d == NULL) {
			if (errno != 0) {
				int saved = errno;
				*error_r = xasprintf("maildir %s: readdir %s/: %s",
				    ms->path, subname, strerror(saved));
				closedir(dir);
				return STORE_TEMP;
			}
			break;
		}
		if (d->d_name[0] == '.')
			continue;
		if (d->d_type != DT_REG) {
			struct stat st;
			if (d->d_type == DT_UNKNOWN) {
				if (fstatat(fd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
					if (errno == ENOENT)
						continue;
					int saved = errno;
					*error_r = xasprintf("maildir %s: stat %s/...: %s",
					    ms->path, subname, strerror(saved));
					closedir(dir);
					return STORE_TEMP;
				}
			}
			if (d->d_type != DT_UNKNOWN || !S_ISREG(st.st_mode)) {
				char name[64];
				store_maildir_log_name(name, sizeof(name), d->d_name);
				log_warnx("maildir %s: %s/%s is not a regular file, skipped",
				    ms->path, subname, name);
				(*skipped)++;
				continue;
			}
		}
		if (*count >= MAILDIR_MAX_MESSAGES) {
			*error_r = xasprintf("maildir %s: more than %d messages",
			    ms->path, MAILDIR_MAX_MESSAGES);
			closedir(dir);
			return STORE_PERM;
		}
		if (*count == *alloc) {
			*alloc = *alloc == 0 ? 256 : *alloc * 2;
			*entries = xrealloc(*entries, *alloc * sizeof(**entries));
		}
		struct maildir_entry *e = &(*entries)[(*count)++];
		memset(e, 0, sizeof(*e));
		size_t flen = strlen(d->d_name);
		e->name = xmalloc(MAILDIR_SUBDIR_PREFIX_LEN + flen + 1);
		memcpy(e->name, subname, MAILDIR_SUBDIR_PREFIX_LEN - 1);
		e->name[MAILDIR_SUBDIR_PREFIX_LEN - 1] = '/';
		memcpy(e->name + MAILDIR_SUBDIR_PREFIX_LEN, d->d_name, flen + 1);
		e->file = e->name + MAILDIR_SUBDIR_PREFIX_LEN;
		e->base_len = store_maildir_base_len(e->file);
		e->time = store_maildir_name_time(e->file);
		e->subdir = sub;
	}
	closedir(dir);
	return STORE_OK;
}

/* Inode and ctime of new/ and cur/, taken before a scan reads them. */
static bool
store_maildir_dirs_now(struct maildir_store *ms, struct maildir_dirs *d)
{
	memset(d, 0, sizeof(*d));
	bool fresh = ms->sub_st_fresh;
	ms->sub_st_fresh = false;
	for (int sub = 0; sub < MAILDIR_SUBDIRS; sub++) {
		struct stat st;
		if (fresh)
			st = ms->sub_st[sub];
		else if (fstat(ms->sub_fd[sub], &st) < 0)
			return false;
		d->ino[sub] = (uint64_t)st.st_ino;
		d->ctime_sec[sub] = (int64_t)st.st_ctim.tv_sec;
		d->ctime_nsec[sub] = st.st_ctim.tv_nsec;
	}
	d->known = true;
	return true;
}

static bool
store_maildir_dirs_equal(const struct maildir_dirs *a, const struct maildir_dirs *b)
{
	if (!a->known || !b->known)
		return false;
	for (int sub = 0; sub < MAILDIR_SUBDIRS; sub++)
		if (a->ino[sub] != b->ino[sub] || a->ctime_sec[sub] != b->ctime_sec[sub] ||
		    a->ctime_nsec[sub] != b->ctime_nsec[sub])
			return false;
	return true;
}

/* Both ctimes at least store_maildir_settle_ms before now (so not in the
 * future either): worth recording. */
static bool
store_maildir_dirs_settled(const struct maildir_dirs *d, const struct timespec *now)
{
	int64_t now_ms = (int64_t)now->tv_sec * 1000 + now->tv_nsec / 1000000;
	for (int sub = 0; sub < MAILDIR_SUBDIRS; sub++) {
		int64_t c_ms = d->ctime_sec[sub] * 1000 + d->ctime_nsec[sub] / 1000000;
		if (c_ms > now_ms - (int64_t)store_maildir_settle_ms)
			return false;
	}
	return true;
}

/* The directories are as a clean scan saw them: its result is the index. */
static void
store_maildir_load_index(struct maildir_store *ms, const struct maildir_index *index)
{
	ms->store.messages = xcalloc(index->count, sizeof(*ms->store.messages));
	ms->store.count = (uint32_t)index->count;
	ms->store.total_size = 0;
	for (size_t i = 0; i < index->count; i++) {
		const struct maildir_index_entry *e = &index->entries[i];
		struct store_message *m = &ms->store.messages[i];
		m->uidl = e->uidl != NULL ? xstrdup(e->uidl) :
		    maildir_uidl_from_name(e->base, e->base_len);
		m->size = e->size;
		m->name = xmalloc(MAILDIR_SUBDIR_PREFIX_LEN + e->name_len + 1);
		memcpy(m->name, maildir_subdir_names[e->subdir], MAILDIR_SUBDIR_PREFIX_LEN - 1);
		m->name[MAILDIR_SUBDIR_PREFIX_LEN - 1] = '/';
		memcpy(m->name + MAILDIR_SUBDIR_PREFIX_LEN, e->base, e->name_len + 1);
		ms->store.total_size += m->size;
	}
}

/* e is a second copy of the message kept at entries[kept_idx] (the same
 * base name in new/ and cur/): hidden, and remembered so that an expunge of
 * the message removes it too. Takes e->name. */
static void
store_maildir_note_duplicate(struct maildir_store *ms, const struct maildir_entry *kept,
    size_t kept_idx, struct maildir_entry *e)
{
	char name[64];

	store_maildir_log_name(name, sizeof(name), e->file);
	log_info("maildir %s: %s/%s is a second copy of a message in %s/, hidden",
	    ms->path, maildir_subdir_names[e->subdir], name,
	    maildir_subdir_names[kept->subdir]);
	ms->dups = xrealloc(ms->dups, (ms->n_dups + 1) * sizeof(*ms->dups));
	ms->dups[ms->n_dups].idx = (uint32_t)kept_idx;
	ms->dups[ms->n_dups].subdir = e->subdir;
	ms->dups[ms->n_dups].file = xstrdup(e->file);
	ms->n_dups++;
	free(e->name);
}

/* Merge join of the scan with the index, both in (time, base) order: *ic
 * advances through the index; a matching line gives e its size. Returns
 * whether it matched. */
static bool
store_maildir_size_from_index(struct maildir_index *index, size_t *ic, struct maildir_entry *e)
{
	while (*ic < index->count && store_maildir_key_cmp(index->entries[*ic].time,
	    index->entries[*ic].base, index->entries[*ic].base_len, e->time, e->file,
	    e->base_len) < 0)
		(*ic)++;
	if (*ic >= index->count)
		return false;
	struct maildir_index_entry *ie = &index->entries[*ic];
	if (ie->time != e->time ||
	    store_maildir_base_cmp(ie->base, ie->base_len, e->file, e->base_len) != 0)
		return false;
	e->size = ie->size;
	e->have_size = true;
	e->remembered = true;
	if (ie->uidl != NULL && e->uidl == NULL)
		e->uidl = xstrdup(ie->uidl);
	bool first_use = !ie->used;
	ie->used = true;
	return first_use;
}

/* Read buffers for computing wire sizes, made on first need. */
struct maildir_size_buffers {
	char *in, *out;
};

enum maildir_size_result {
	MAILDIR_SIZE_OK,
	MAILDIR_SIZE_SKIP,      /* vanished, unreadable or not a file: not a message */
	MAILDIR_SIZE_ERROR,     /* *error_r set: the open fails (STORE_TEMP) */
};

/* The wire size of e, from its file. */
static enum maildir_size_result
store_maildir_compute_size(struct maildir_store *ms, struct maildir_entry *e,
    struct maildir_size_buffers *buf, char **error_r)
{
	char name[64];
	int saved;

	if (buf->in == NULL) {
		buf->in = xmalloc(MAILDIR_READ_CHUNK);
		buf->out = xmalloc(WIRE_ENCODE_MAX(MAILDIR_READ_CHUNK));
	}
	if (store_maildir_file_wire_size(ms->sub_fd[e->subdir], e->file, buf->in, buf->out,
	    &e->size) == 0) {
		e->have_size = true;
		return MAILDIR_SIZE_OK;
	}
	saved = errno;
	store_maildir_log_name(name, sizeof(name), e->file);
	if (saved == ENOENT)
		return MAILDIR_SIZE_SKIP;      /* vanished since readdir: not there */
	if (saved == EACCES || saved == EPERM || saved == ELOOP || saved == EINVAL) {
		/* Unreadable or not a file: it stays in place for the admin,
		 * unseen by us. */
		errno = saved;
		log_warn("maildir %s: %s/%s skipped", ms->path,
		    maildir_subdir_names[e->subdir], name);
		return MAILDIR_SIZE_SKIP;
	}
	*error_r = xasprintf("maildir %s: read %s/%s: %s", ms->path,
	    maildir_subdir_names[e->subdir], name, strerror(saved));
	return MAILDIR_SIZE_ERROR;
}

/* ---- UIDLs (docs/DESIGN.md "UIDLs kept from the old server") ---- */

/* The old server's UIDL for e, a message popboxd has not served yet;
 * *list is the old list, read at the first need (*tried). Returns whether
 * e got a UIDL other than its name's. */
static bool
store_maildir_old_uidl(struct maildir_store *ms, struct maildir_entry *e,
    struct uidl_old_list **list, bool *tried)
{
	const struct store_open_options *o = ms->options;
	enum uidl_old_miss miss;
	char name[64];

	if (!*tried) {
		char *error = NULL;
		*tried = true;
		*list = uidl_old_load(ms->root_fd, o->uidl_format, o->dovecot_uidl_format != NULL ?
		    o->dovecot_uidl_format : UIDL_DOVECOT_DEFAULT_TEMPLATE, &error);
		if (error != NULL) {
			log_warnx("maildir %s: %s", ms->path, error);
			free(error);
		}
	}
	char *uidl = uidl_old_lookup(*list, e->file, e->base_len, &miss);
	e->miss = miss;
	e->source = miss == UIDL_OLD_FOUND ? STORE_UIDL_OLD : STORE_UIDL_OWN;
	if (miss == UIDL_OLD_INVALID) {
		store_maildir_log_name(name, sizeof(name), e->file);
		log_warnx("maildir %s: the old server's UIDL of %s/%s is not a valid UIDL "
		    "(1-70 printable characters), the message gets a new one", ms->path,
		    maildir_subdir_names[e->subdir], name);
	}
	if (uidl == NULL)
		return false;
	char *own = maildir_uidl_from_name(e->file, e->base_len);
	bool differs = strcmp(own, uidl) != 0;
	free(own);
	if (differs)
		e->uidl = uidl;
	else
		free(uidl);
	return differs;
}

/* Replace UIDLs that two messages share (a UIDL from the old list equal to
 * another message's); logged. Returns how many were replaced. */
static size_t
store_maildir_unique_uidls(struct maildir_store *ms, struct maildir_entry *entries, size_t count)
{
	struct uidl_slot *slots = xcalloc(count, sizeof(*slots));
	size_t replaced;

	for (size_t i = 0; i < count; i++) {
		struct maildir_entry *e = &entries[i];
		slots[i].uidl = e->uidl != NULL ? e->uidl :
		    maildir_uidl_from_name(e->file, e->base_len);
		slots[i].base = e->file;
		slots[i].base_len = e->base_len;
		slots[i].rank = e->remembered ? 0 : e->uidl != NULL ? 1 : 2;
		e->uidl = NULL;
	}
	replaced = uidl_make_unique(slots, count);
	for (size_t i = 0; i < count; i++) {
		struct maildir_entry *e = &entries[i];
		char *own = maildir_uidl_from_name(e->file, e->base_len);
		if (slots[i].replaced) {
			char name[64];
			e->source = STORE_UIDL_REPLACED;
			store_maildir_log_name(name, sizeof(name), e->file);
			log_warnx("maildir %s: %s/%s had a UIDL another message has, "
			    "it is now %s", ms->path, maildir_subdir_names[e->subdir], name,
			    slots[i].uidl);
		}
		if (strcmp(own, slots[i].uidl) == 0)
			free(slots[i].uidl);
		else
			e->uidl = slots[i].uidl;
		free(own);
	}
	free(slots);
	return replaced;
}

/* UIDLs for the messages popboxd has not served yet (the rest keep what the
 * index remembers). Returns how many UIDLs the index must now remember
 * that it did not (so it is written durably). */
static size_t
store_maildir_assign_uidls(struct maildir_store *ms, struct maildir_entry *entries, size_t count)
{
	const struct store_open_options *o = ms->options;
	struct uidl_old_list *list = NULL;
	bool tried = false, explicit = false;
	size_t added = 0;

	for (size_t i = 0; i < count; i++) {
		struct maildir_entry *e = &entries[i];
		e->source = e->remembered ? STORE_UIDL_REMEMBERED : STORE_UIDL_OWN;
		e->miss = e->remembered ? UIDL_OLD_FOUND : UIDL_OLD_NO_LIST;
		if (!e->remembered && o != NULL && (o->uidl_format == UIDL_FORMAT_DOVECOT ||
		    o->uidl_format == UIDL_FORMAT_COURIER) &&
		    store_maildir_old_uidl(ms, e, &list, &tried))
			added++;
		explicit = explicit || e->uidl != NULL;
	}
	uidl_old_free(list);
	/* Base names are unique, and so are their UIDLs: only others can
	 * collide. */
	if (explicit)
		added += store_maildir_unique_uidls(ms, entries, count);
	return added;
}

/* The scanned entries become the session's messages (names taken over). */
static void
store_maildir_take_entries(struct maildir_store *ms, struct maildir_entry *entries, size_t count)
{
	ms->store.messages = xcalloc(count, sizeof(*ms->store.messages));
	ms->store.count = (uint32_t)count;
	ms->store.total_size = 0;
	for (size_t i = 0; i < count; i++) {
		struct store_message *m = &ms->store.messages[i];
		m->uidl = entries[i].uidl != NULL ? entries[i].uidl :
		    maildir_uidl_from_name(entries[i].file, entries[i].base_len);
		entries[i].uidl = NULL;
		m->size = entries[i].size;
		m->name = entries[i].name;
		entries[i].name = NULL;
		ms->store.total_size += m->size;
	}
}


/* May the recorded ctimes stand for a scan of this maildrop? The file
 * system's type is asked once a second per device and thread, not at every
 * open (an fstatfs per login); a device number reused by another mount is
 * believed for at most that second (and its directories would have to
 * match the index's inode and ctime besides). */
static bool
store_maildir_ctime_trusted(const struct maildir_store *ms, time_t now)
{
	static _Thread_local struct {
		dev_t dev;
		time_t when;
		bool valid, trusted;
	} last;
	if (store_maildir_trust_ctime != STORE_TRUST_CTIME_AUTO)
		return store_maildir_trust_ctime == STORE_TRUST_CTIME_YES;
	dev_t dev = ms->sub_st[MAILDIR_NEW].st_dev;
	if (last.valid && last.dev == dev && now >= last.when && now - last.when <= 1)
		return last.trusted;
	struct statfs sf;
	if (fstatfs(ms->sub_fd[MAILDIR_NEW], &sf) < 0)
		return false;
	last.dev = dev;
	last.when = now;
	last.trusted = !store_fs_type_is_network((unsigned long)sf.f_type);
	last.valid = true;
	return last.trusted;
}

static enum store_status
store_maildir_scan(struct maildir_store *ms, char **error_r)
{
	struct maildir_entry *entries = NULL;
	struct maildir_index index;
	struct maildir_dirs dirs;
	struct maildir_size_buffers buf = { NULL, NULL };
	struct timespec now;
	size_t count = 0, alloc = 0, kept = 0, computed = 0, used = 0, ic = 0, skipped = 0;
	bool index_valid, dirs_ok;
	enum store_status status = STORE_OK;

	clock_gettime(CLOCK_REALTIME, &now);
	dirs_ok = store_maildir_dirs_now(ms, &dirs);
	index_valid = store_maildir_index_read(ms, &index);
	bool quick_only = ms->options != NULL && ms->options->quick_only;
	if (index_valid && dirs_ok && store_maildir_dirs_equal(&index.dirs, &dirs) &&
	    store_maildir_ctime_trusted(ms, now.tv_sec) &&
	    (!quick_only || index.count <= STORE_QUICK_MAX_MESSAGES)) {
		store_maildir_load_index(ms, &index);
		store_maildir_index_free(&index);
		ms->store.from_index = true;
		for (uint32_t i = 0; ms->options != NULL && ms->options->report != NULL &&
		    i < ms->store.count; i++)
			ms->options->report(ms->options->report_arg, ms->store.messages[i].name,
			    ms->store.messages[i].uidl, STORE_UIDL_REMEMBERED, UIDL_OLD_FOUND);
		return STORE_OK;
	}
	if (quick_only) {
		*error_r = xstrdup("more than the index needed");
		status = STORE_AGAIN;
		goto out;
	}
	/* tmp/ is made with every scan, not with every open: an open from
	 * the index follows a scan that made it (one mkdirat less per login). */
	if (store_maildir_mkdir(ms->root_fd, "tmp") < 0) {
		int saved = errno;
		*error_r = xasprintf("maildir %s: mkdir tmp: %s", ms->path, strerror(saved));
		status = store_maildir_errno_status(saved);
		goto out;
	}

	for (int sub = 0; sub < MAILDIR_SUBDIRS && status == STORE_OK; sub++)
		status = store_maildir_scan_dir(ms, (enum maildir_subdir)sub, &entries,
		    &count, &alloc, &skipped, error_r);
	if (status != STORE_OK)
		goto out;
	if (count > 0)
		qsort(entries, count, sizeof(*entries), store_maildir_entry_cmp);

	/* One pass in final order: keep one readable file per base name, take
	 * its size from the cache or the file. Entries are compacted in place. */
	for (size_t i = 0; i < count; i++) {
		struct maildir_entry e = entries[i];

		if (kept > 0 && store_maildir_base_cmp(entries[kept - 1].file,
		    entries[kept - 1].base_len, e.file, e.base_len) == 0) {
			store_maildir_note_duplicate(ms, &entries[kept - 1], kept - 1, &e);
			continue;
		}
		if (store_maildir_size_from_index(&index, &ic, &e))
			used++;
		if (!e.have_size) {
			enum maildir_size_result r = store_maildir_compute_size(ms, &e, &buf, error_r);
			if (r == MAILDIR_SIZE_ERROR) {
				free(e.uidl);
				/* Free the not yet compacted rest too. */
				for (size_t j = i; j < count; j++)
					free(entries[j].name);
				count = kept;
				status = STORE_TEMP;
				goto out;
			}
			if (r == MAILDIR_SIZE_SKIP) {
				skipped++;
				free(e.uidl);
				free(e.name);
				continue;
			}
			computed++;
		}
		entries[kept++] = e;
	}
	count = kept;
	size_t new_uidls = store_maildir_assign_uidls(ms, entries, count);

	/* Record the directories only for a scan that saw every entry as a
	 * message (no hidden copy, nothing skipped, nothing vanished). */
	if (!dirs_ok || ms->n_dups > 0 || skipped > 0 || !store_maildir_dirs_settled(&dirs, &now))
		dirs.known = false;
	if ((!index_valid || computed > 0 || used != index.count || dirs.known ||
	    index.dirs.known || index.v1 || index.v2 || new_uidls > 0) &&
	    (ms->options == NULL || !ms->options->keep_index))
		store_maildir_index_write(ms, entries, count, &dirs, new_uidls > 0);
	store_maildir_take_entries(ms, entries, count);
	for (size_t i = 0; ms->options != NULL && ms->options->report != NULL && i < count; i++)
		ms->options->report(ms->options->report_arg, ms->store.messages[i].name,
		    ms->store.messages[i].uidl, entries[i].source, entries[i].miss);
out:
	store_maildir_entries_free(entries, count);
	store_maildir_index_free(&index);
	free(buf.in);
	free(buf.out);
	return status;
}

/* ---- the backend ---- */

static void
store_maildir_close(struct store *store)
{
	struct maildir_store *ms = (struct maildir_store *)store;

	if (ms == NULL)
		return;
	for (uint32_t i = 0; i < ms->store.count; i++) {
		free(ms->store.messages[i].uidl);
		free(ms->store.messages[i].name);
	}
	free(ms->store.messages);
	for (size_t i = 0; i < ms->n_dups; i++)
		free(ms->dups[i].file);
	free(ms->dups);
	for (int sub = 0; sub < MAILDIR_SUBDIRS; sub++) {
		if (ms->sub_fd[sub] >= 0)
			close(ms->sub_fd[sub]);
	}
	/* Release the lock last: until then no other session may start on
	 * this maildrop. */
	lock_release(ms->lock);
	if (ms->root_fd >= 0)
		close(ms->root_fd);
	free(ms->path);
	free(ms);
}

/* Create dir (relative to dir_fd) unless it exists. Never creates parents:
 * a missing parent may be a file system not mounted yet, and mail delivered
 * into a directory on the mount point would be hidden later. */
int
store_maildir_mkdir(int dir_fd, const char *name)
{
	if (mkdirat(dir_fd, name, MAILDIR_DIR_MODE) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

/* The maildrop must belong to us and be writable by nobody else: another
 * user able to write there could plant or remove mail (docs/RELIABILITY.md §3). */
bool
store_maildir_check_owner(int fd, const char *path, const char *what, char **error_r)
{
	struct stat st;
	return store_maildir_check_owner_st(fd, path, what, geteuid(), &st, error_r);
}

/* The same against euid (asked once per open), and what fstat said in
 * *st_out. */
bool
store_maildir_check_owner_st(int fd, const char *path, const char *what, uid_t euid,
    struct stat *st_out, char **error_r)
{
	struct stat st;

	if (fstat(fd, &st) < 0) {
		*error_r = xasprintf("maildir %s: fstat %s: %s", path, what,
		    strerror(errno));
		return false;
	}
	if (st.st_uid != euid) {
		*error_r = xasprintf("maildir %s: %s is owned by uid %lu, not by uid %lu",
		    path, what, (unsigned long)st.st_uid, (unsigned long)euid);
		return false;
	}
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
		*error_r = xasprintf("maildir %s: %s is group or world writable (mode %03o)",
		    path, what, (unsigned)(st.st_mode & 0777));
		return false;
	}
	*st_out = st;
	return true;
}

/* Could anyone but root have put entry name of dir there, or replace it?
 * Only root's directories that nobody else may write are trusted: a
 * directory of the mail user (this process's uid) or of any other user
 * (a local user's home) is the owner's to fill with links, and a group- or
 * world-writable one is everybody's, except that in a sticky directory
 * (/tmp) an entry of root's cannot be renamed or removed by others. */
static bool
store_maildir_entry_untrusted(int dir, const char *name)
{
	struct stat st, entry;

	if (fstat(dir, &st) < 0 || st.st_uid != 0)
		return true;
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) == 0)
		return false;
	if ((st.st_mode & S_ISVTX) == 0)
		return true;
	return fstatat(dir, name, &entry, AT_SYMLINK_NOFOLLOW) < 0 || entry.st_uid != 0;
}

/* One step of store_maildir_open_root's walk: component name of dir, opened
 * O_PATH (search permission is enough) unless last; the last one is created
 * when missing (its parents never are: see store_maildir_mkdir). Returns the
 * descriptor, or -1 with errno and *error_r. */
static int
store_maildir_open_component(int dir, const char *name, bool last, bool nofollow,
    const char *path, char **error_r)
{
	int flags = (last ? O_RDONLY : O_PATH) | O_DIRECTORY | O_CLOEXEC |
	    (nofollow || last ? O_NOFOLLOW : 0);
	struct stat st;
	int fd, saved;

	fd = openat(dir, name, flags);
	if (fd < 0 && errno == ENOENT && last) {
		if (store_maildir_mkdir(dir, name) < 0) {
			saved = errno;
			*error_r = xasprintf("maildir %s: mkdir: %s", path, strerror(saved));
			errno = saved;
			return -1;
		}
		fd = openat(dir, name, flags);
	}
	if (fd >= 0)
		return fd;
	saved = errno;
	if ((saved == ELOOP || saved == ENOTDIR) &&
	    fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
		*error_r = xasprintf("maildir %s: %s is a symbolic link in a directory "
		    "that not only root can change (not followed)", path, name);
		saved = ELOOP;
	} else {
		*error_r = xasprintf("maildir %s: open %s: %s", path, name, strerror(saved));
	}
	errno = saved;
	return -1;
}

/* Opens the maildrop directory path, creating its last component when
 * missing, without following a symbolic link that the mail user could have
 * placed: no link in the last component, and none from the first component
 * that anyone but root could have placed on (store_maildir_entry_untrusted:
 * with mail = maildir:~/mail/Maildir a user who owns her home could
 * otherwise turn ~/mail into a link to another user's mail; everything below
 * such a component is its owner's too).
 * Links in directories only the administrator can change (/var/mail -> /srv)
 * are followed. docs/DESIGN.md "Storage" states the guarantee.
 * Fast path: one openat2(RESOLVE_NO_SYMLINKS), which succeeds when the path
 * has no link at all; the walk runs only when it fails (a link somewhere, a
 * missing maildrop, no openat2). Returns the descriptor, or -1 with errno and
 * *error_r. */
int
store_maildir_open_root(const char *path, char **error_r)
{
	struct open_how how = {
		.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW,
		.resolve = RESOLVE_NO_SYMLINKS,
	};
	int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof(how));
	bool untrusted = false;
	char *copy, *save = NULL;
	int dir;

	if (fd >= 0)
		return fd;
	dir = open(path[0] == '/' ? "/" : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		*error_r = xasprintf("maildir %s: open: %s", path, strerror(errno));
		return -1;
	}
	copy = xstrdup(path);
	for (char *name = strtok_r(copy, "/", &save); name != NULL; ) {
		char *next = strtok_r(NULL, "/", &save);

		if (!untrusted)
			untrusted = store_maildir_entry_untrusted(dir, name);
		fd = store_maildir_open_component(dir, name, next == NULL, untrusted,
		    path, error_r);
		int saved = errno;
		close(dir);
		if (fd < 0) {
			free(copy);
			errno = saved;
			return -1;
		}
		dir = fd;
		name = next;
	}
	free(copy);
	return dir;
}

/* Take the session lock on the maildrop (docs/PROTOCOL.md §2). */
static enum store_status
store_maildir_lock(struct maildir_store *ms, char **error_r)
{
	switch (lock_acquire(ms->root_fd, MAILDIR_LOCK_NAME, &ms->lock, error_r)) {
	case LOCK_OK:
		return STORE_OK;
	case LOCK_HELD:
		*error_r = xasprintf("maildir %s: locked by another session", ms->path);
		return STORE_IN_USE;
	case LOCK_ERROR:
	default: {
		int saved = errno;
		char *msg = *error_r;
		*error_r = xasprintf("maildir %s: %s", ms->path, msg);
		free(msg);
		return store_maildir_errno_status(saved);
	}
	}
}

/* new/ and cur/ opened (made if missing) and checked like the maildrop
 * itself (tmp/ is made by the scan). */
static enum store_status
store_maildir_open_subdirs(struct maildir_store *ms, char **error_r)
{
	int saved;

	for (int sub = 0; sub < MAILDIR_SUBDIRS; sub++) {
		const char *subname = maildir_subdir_names[sub];
		ms->sub_fd[sub] = openat(ms->root_fd, subname,
		    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (ms->sub_fd[sub] < 0 && errno == ENOENT &&
		    store_maildir_mkdir(ms->root_fd, subname) == 0)
			ms->sub_fd[sub] = openat(ms->root_fd, subname,
			    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (ms->sub_fd[sub] < 0) {
			saved = errno;
			*error_r = xasprintf("maildir %s: %s/: %s", ms->path, subname,
			    strerror(saved));
			return store_maildir_errno_status(saved);
		}
		if (!store_maildir_check_owner_st(ms->sub_fd[sub], ms->path, subname, ms->euid,
		    &ms->sub_st[sub], error_r))
			return STORE_PERM;
	}
	ms->sub_st_fresh = true;
	return STORE_OK;
}

static enum store_status
store_maildir_open_with(const char *path, const struct store_open_options *options,
    struct store **store_r, char **error_r)
{
	struct maildir_store *ms;
	enum store_status status;

	*store_r = NULL;
	ms = xcalloc(1, sizeof(*ms));
	ms->options = options;
	ms->store.backend = &store_maildir;
	ms->path = xstrdup(path);
	ms->store.path = ms->path;
	ms->store.state_dir_fd = -1;
	ms->root_fd = -1;
	for (int sub = 0; sub < MAILDIR_SUBDIRS; sub++)
		ms->sub_fd[sub] = -1;

	if (*path == '\0') {
		*error_r = xasprintf("maildir: empty path");
		status = STORE_PERM;
		goto fail;
	}
	/* Opened first and created only when missing: a login costs no
	 * failing mkdir. A symlinked maildrop is refused (docs/RELIABILITY.md §3). */
	ms->root_fd = store_maildir_open_root(path, error_r);
	if (ms->root_fd < 0) {
		status = store_maildir_errno_status(errno);
		goto fail;
	}
	ms->euid = geteuid();
	struct stat root_st;
	if (!store_maildir_check_owner_st(ms->root_fd, path, "the maildrop", ms->euid, &root_st,
	    error_r)) {
		status = STORE_PERM;
		goto fail;
	}

	status = store_maildir_lock(ms, error_r);
	if (status == STORE_OK)
		status = store_maildir_open_subdirs(ms, error_r);
	if (status != STORE_OK)
		goto fail;

	status = store_maildir_scan(ms, error_r);
	if (status != STORE_OK)
		goto fail;
	/* The root was needed for the lock, the directories and the index;
	 * a session holds its socket, the lock, new/ and cur/ only (10,000
	 * idle sessions: one descriptor less each). */
	if (options != NULL && options->keep_state_dir) {
		ms->store.state_dir_fd = ms->root_fd;   /* closed by close() */
	} else {
		close(ms->root_fd);
		ms->root_fd = -1;
	}
	ms->options = NULL;
	*store_r = &ms->store;
	return STORE_OK;
fail:
	store_maildir_close(&ms->store);
	return status;
}

static enum store_status
store_maildir_open(const char *path, struct store **store_r, char **error_r)
{
	return store_maildir_open_with(path, NULL, store_r, error_r);
}

/* Calls visit(name, arg) for every entry of sub/ whose name does not start
 * with '.', from a fresh open file description (so the readdir position is
 * ours), until visit returns true. Returns 1 if visit stopped the walk, 0 at
 * the end of the directory, -1 with errno if it could not be read. The
 * re-scans of RETR and expunge share it; the login scan has its own loop
 * because it also keeps the directory's inode and change time. */
static int
store_maildir_walk(struct maildir_store *ms, enum maildir_subdir sub,
    bool (*visit)(const char *name, void *arg), void *arg)
{
	int fd = openat(ms->sub_fd[sub], ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *d;
	DIR *dir;
	int result = 0, saved;

	if (fd < 0)
		return -1;
	if ((dir = fdopendir(fd)) == NULL) {
		saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	for (;;) {
		errno = 0;
		if ((d = readdir(dir)) == NULL) {
			result = errno != 0 ? -1 : 0;
			break;
		}
		if (d->d_name[0] != '.' && visit(d->d_name, arg)) {
			result = 1;
			break;
		}
	}
	saved = errno;
	closedir(dir);
	errno = saved;
	return result;
}

struct maildir_find {
	const char *base;
	size_t len;
	char *found;        /* the matching file name, malloc'd */
};

static bool
store_maildir_find_visit(const char *name, void *arg)
{
	struct maildir_find *f = arg;

	if (store_maildir_base_cmp(name, store_maildir_base_len(name), f->base, f->len) != 0)
		return false;
	f->found = xstrdup(name);
	return true;
}

/* Find the file that now holds base name key (a concurrent reader may have
 * moved it from new/ to cur/ or changed its flags). cur/ first: that is where
 * messages move to. Returns "<sub>/<file>" (malloc'd), or NULL with errno
 * (ENOENT: not in either directory). */
static char *
store_maildir_find_base(struct maildir_store *ms, const char *base, size_t len)
{
	static const enum maildir_subdir order[] = { MAILDIR_CUR, MAILDIR_NEW };

	for (size_t k = 0; k < N_ELEMENTS(order); k++) {
		struct maildir_find f = { base, len, NULL };
		int r = store_maildir_walk(ms, order[k], store_maildir_find_visit, &f);

		if (r < 0)
			return NULL;
		if (r > 0) {
			char *name = xasprintf("%s/%s", maildir_subdir_names[order[k]], f.found);
			free(f.found);
			return name;
		}
	}
	errno = ENOENT;
	return NULL;
}

static enum maildir_subdir
store_maildir_name_subdir(const char *name)
{
	return strncmp(name, "cur/", MAILDIR_SUBDIR_PREFIX_LEN) == 0 ?
	    MAILDIR_CUR : MAILDIR_NEW;
}

static enum store_status
store_maildir_message_open(struct store *store, uint32_t idx, struct store_stream *stream_r,
    char **error_r)
{
	struct maildir_store *ms = (struct maildir_store *)store;
	struct store_message *m;
	int fd, saved;

	if (idx >= ms->store.count) {
		*error_r = xasprintf("maildir %s: no message index %u", ms->path, idx);
		return STORE_PERM;
	}
	m = &ms->store.messages[idx];
	for (int tries = 0; ; tries++) {
		const char *file = m->name + MAILDIR_SUBDIR_PREFIX_LEN;
		enum maildir_subdir sub = store_maildir_name_subdir(m->name);

		/* O_NONBLOCK: opening a FIFO must not block the worker. */
		fd = openat(ms->sub_fd[sub], file,
		    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd >= 0)
			break;
		saved = errno;
		if (saved != ENOENT || tries >= MAILDIR_REOPEN_TRIES) {
			if (saved == ENOENT)
				return STORE_GONE;
			*error_r = xasprintf("maildir %s: open message %u: %s",
			    ms->path, idx + 1, strerror(saved));
			return store_maildir_errno_status(saved);
		}
		char *found = store_maildir_find_base(ms, file, store_maildir_base_len(file));
		if (found == NULL) {
			if (errno == ENOENT)
				return STORE_GONE;
			saved = errno;
			*error_r = xasprintf("maildir %s: looking for message %u: %s",
			    ms->path, idx + 1, strerror(saved));
			return STORE_TEMP;
		}
		/* Remember where it is now, so expunge removes that file. */
		free(m->name);
		m->name = found;
	}
	/* No fstat: the stream reads until a short read (session.c), so the
	 * length is not needed, and what is not a regular file fails that first
	 * read (EISDIR, ESPIPE) before the status line is queued. The scan and
	 * the index list regular files only. O_NONBLOCK stays: for a regular
	 * file it changes nothing. */
	stream_r->fd = fd;
	stream_r->offset = 0;
	stream_r->length = -1;
	stream_r->from_quoting = WIRE_FROM_NONE;
	return STORE_OK;
}

/* A deleted message whose file was not where the scan saw it. */
struct maildir_missing {
	const char *base;
	size_t len;
	uint32_t idx;
	bool found;
};

static int
store_maildir_missing_cmp(const void *pa, const void *pb)
{
	const struct maildir_missing *a = pa, *b = pb;
	return store_maildir_base_cmp(a->base, a->len, b->base, b->len);
}

static int
store_maildir_missing_key_cmp(const void *pkey, const void *pentry)
{
	const struct maildir_base_key *key = pkey;
	const struct maildir_missing *e = pentry;
	return store_maildir_base_cmp(key->base, key->len, e->base, e->len);
}

struct maildir_unlink_moved {
	struct maildir_store *ms;
	enum maildir_subdir sub;
	struct maildir_missing *missing;
	size_t n_missing;
	int failed;
};

static bool
store_maildir_unlink_moved_visit(const char *name, void *arg)
{
	struct maildir_unlink_moved *u = arg;
	struct maildir_base_key key = { name, store_maildir_base_len(name) };
	struct maildir_missing *mm = bsearch(&key, u->missing, u->n_missing,
	    sizeof(*u->missing), store_maildir_missing_key_cmp);

	if (mm == NULL)
		return false;
	if (unlinkat(u->ms->sub_fd[u->sub], name, 0) < 0 && errno != ENOENT) {
		log_warn("maildir %s: unlink %s/ file of message %u",
		    u->ms->path, maildir_subdir_names[u->sub], mm->idx + 1);
		u->failed++;
	}
	mm->found = true;
	return false;
}

/* Messages renamed since the scan (flags changed by an IMAP server on the
 * same Maildir) are still the messages the user deleted: one pass over cur/
 * and new/ removes every file with their base names. Returns the number of
 * failed unlinks, or -1 with errno if a directory could not be read. */
static int
store_maildir_unlink_moved(struct maildir_store *ms, struct maildir_missing *missing,
    size_t n_missing)
{
	struct maildir_unlink_moved u = { ms, MAILDIR_NEW, missing, n_missing, 0 };

	qsort(missing, n_missing, sizeof(*missing), store_maildir_missing_cmp);
	for (int sub = MAILDIR_SUBDIRS - 1; sub >= 0; sub--) {
		u.sub = (enum maildir_subdir)sub;
		if (store_maildir_walk(ms, u.sub, store_maildir_unlink_moved_visit, &u) < 0)
			return -1;
	}
	return u.failed;
}

/* What an expunge did so far. */
struct maildir_expunge {
	size_t removed;
	unsigned failed;
	int first_errno;            /* of the first failure */
};

static void
store_maildir_expunge_failed(struct maildir_expunge *x, int err)
{
	if (x->first_errno == 0)
		x->first_errno = err;
	x->failed++;
}

/* Unlink the marked messages under the names the scan saw. The ones gone
 * from there (ENOENT) go into missing[] for store_maildir_unlink_moved.
 * Returns whether any message was marked. */
static bool
store_maildir_expunge_marked(struct maildir_store *ms, const bool *deleted,
    struct maildir_missing **missing, size_t *n_missing, struct maildir_expunge *x)
{
	bool any = false;

	for (uint32_t i = 0; i < ms->store.count; i++) {
		struct store_message *m = &ms->store.messages[i];
		const char *file = m->name + MAILDIR_SUBDIR_PREFIX_LEN;

		if (!deleted[i])
			continue;
		any = true;
		if (unlinkat(ms->sub_fd[store_maildir_name_subdir(m->name)], file, 0) == 0) {
			x->removed++;
			continue;
		}
		if (errno == ENOENT) {
			if (*missing == NULL)
				*missing = xcalloc(ms->store.count, sizeof(**missing));
			(*missing)[*n_missing].base = file;
			(*missing)[*n_missing].len = store_maildir_base_len(file);
			(*missing)[*n_missing].idx = i;
			(*n_missing)++;
			continue;
		}
		/* Keep going: every message we can remove now is one the
		 * client will not download again. */
		store_maildir_expunge_failed(x, errno);
		log_warn("maildir %s: unlink message %u (%s)", ms->path, i + 1, m->uidl);
	}
	for (size_t k = 0; k < ms->n_dups; k++) {
		struct maildir_duplicate *dup = &ms->dups[k];
		if (!deleted[dup->idx])
			continue;
		if (unlinkat(ms->sub_fd[dup->subdir], dup->file, 0) < 0 && errno != ENOENT) {
			store_maildir_expunge_failed(x, errno);
			log_warn("maildir %s: unlink second copy of message %u",
			    ms->path, dup->idx + 1);
		}
	}
	return any;
}

/* The marked messages that had moved since the scan. */
static void
store_maildir_expunge_moved(struct maildir_store *ms, struct maildir_missing *missing,
    size_t n_missing, struct maildir_expunge *x)
{
	int r = store_maildir_unlink_moved(ms, missing, n_missing);

	if (r < 0) {
		store_maildir_expunge_failed(x, errno);
		log_warn("maildir %s: looking for moved messages", ms->path);
		return;
	}
	if (r > 0) {
		x->failed += (unsigned)r;
		if (x->first_errno == 0)
			x->first_errno = EIO;
	}
	for (size_t k = 0; k < n_missing; k++) {
		if (missing[k].found) {
			x->removed++;
			continue;
		}
		/* Expunged by someone else: the goal is met. */
		log_info("maildir %s: message %u (%s) was already gone", ms->path,
		    missing[k].idx + 1, ms->store.messages[missing[k].idx].uidl);
	}
}

static enum store_status
store_maildir_expunge(struct store *store, const bool *deleted, char **error_r)
{
	struct maildir_store *ms = (struct maildir_store *)store;
	struct maildir_missing *missing = NULL;
	struct maildir_expunge x = { 0, 0, 0 };
	size_t n_missing = 0;

	bool any = store_maildir_expunge_marked(ms, deleted, &missing, &n_missing, &x);
	if (n_missing > 0)
		store_maildir_expunge_moved(ms, missing, n_missing, &x);
	free(missing);

	/* Removal is durable only once the directories are on disk; the
	 * client forgets its copy of nothing, but must not see deleted mail
	 * again after a crash (docs/RELIABILITY.md §2). */
	for (int sub = 0; any && sub < MAILDIR_SUBDIRS; sub++) {
		if (fsync(ms->sub_fd[sub]) < 0) {
			store_maildir_expunge_failed(&x, errno);
			log_warn("maildir %s: fsync %s/", ms->path, maildir_subdir_names[sub]);
		}
	}
	if (x.failed > 0) {
		*error_r = xasprintf("maildir %s: expunge: %u failure(s), first: %s",
		    ms->path, x.failed, strerror(x.first_errno));
		return STORE_TEMP;
	}
	log_debug("maildir %s: expunged %zu message(s)", ms->path, x.removed);
	return STORE_OK;
}

const struct store_backend store_maildir = {
	.scheme = "maildir",
	.open = store_maildir_open,
	.open_with = store_maildir_open_with,
	.message_open = store_maildir_message_open,
	.expunge = store_maildir_expunge,
	.close = store_maildir_close,
};

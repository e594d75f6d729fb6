/* mbox backend of the store interface (store.h; docs/DESIGN.md "mbox").
 *
 * Files, all in the mbox's directory (for /var/mail/alice):
 *   alice               the mbox, never replaced: read and compacted in place
 *   alice.lock          the dot-lock shared with MTAs and mail readers
 *   alice.popbox-lock   popboxd's session lock (lock.h): one POP3 session
 *   alice.popbox-index  cache of the scan: offsets, sizes, digests, UIDLs
 *   alice.popbox-expunge  the expunge journal while an expunge runs
 *
 * The mbox lock (mbox_lock.h) is held for the scan, for a moment at each
 * message's opening, and for the expunge, never in between: mail delivered
 * during a session is appended as usual and shown at the next login.
 * Whenever the file's stat (inode, size, mtime, ctime) differs from the last
 * one seen, it is parsed again under the lock and every message of the
 * session must still be where it was with the same digest and size (mail
 * was only appended, or a flag header was changed in place); otherwise
 * another program rewrote it, the session reads nothing more and deletes
 * nothing (popa3d does the same).
 *
 * Expunge (journalled in-place compaction), under the lock:
 *  1. D = offset of the first deleted message; T = every kept byte after D,
 *     including mail appended since the scan (up to the file's size S now).
 *  2. T is written to the journal with D, S, the file's device and inode,
 *     and a SHA-256 over it all; journal fsynced, directory fsynced.
 *  3. T is written over the mbox at D; fsync.
 *  4. The first bytes after D+|T| are overwritten by a marker; fsync; the
 *     journal's phase byte becomes 'C' (copied); fsync.
 *  5. ftruncate to D+|T|; fsync. 6. journal removed, directory fsynced.
 * A crash before 2 completes leaves an invalid journal and the mbox as it
 * was; from 3 on, the journal holds every byte that step 3 may overwrite,
 * so whoever takes the lock next (login, delivery) finishes the job:
 * phase 'W' redoes 3-6; phase 'C' looks for the marker to know whether 5
 * happened. Mail appended after the crash (an MTA breaking our dead
 * dot-lock) is found beyond S (or beyond D+|T| after 5) and kept: it is
 * added to a new journal and moved down the same way. The mbox is never
 * replaced, so owner, group, mode and inode stay, and an MTA that opened
 * it before we locked appends to the same file afterwards (a rename would
 * send its mail to an unlinked inode). A full disk fails step 2 before
 * the mbox is touched; steps 3-5 never make the file longer.
 */
#include "server/store.h"
#include "server/store_deliver.h"
#include "server/store_mbox.h"
#include "server/lock.h"
#include "server/mbox_lock.h"
#include "server/mbox_parse.h"
#include "common/eol.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Same bound as Maildir (store_maildir.c): memory and login time. */
#define MBOX_MAX_MESSAGES 1000000
/* Read size for parsing and copying. */
#define MBOX_CHUNK (1024 * 1024)
/* Read size of the index's records and string area: checked while in
 * the cache (a multiple of 32 for mbox_sum_blocks). */
#define MBOX_IX_PIECE (256 * 1024)
/* The index is read whole; about 200 bytes a message. */
#define MBOX_INDEX_MAX_BYTES ((size_t)256 << 20)
#define MBOX_DEFAULT_LOCK_WAIT_MS 10000
#define MBOX_JOURNAL_MAGIC "popbox-mbox-expunge 1"
#define MBOX_JOURNAL_HEADER 128       /* fixed: the phase byte is its last */
#define MBOX_JOURNAL_PHASE_AT (MBOX_JOURNAL_HEADER - 1)
#define MBOX_MARKER "\0popbox-expunge: garbage after compaction\0"
#define MBOX_MARKER_LEN (sizeof(MBOX_MARKER) - 1)
/* UIDL: 40 hex chars of a message's identity (160 bits). */
#define MBOX_UIDL_HEX 40

struct mbox_ident {
	bool known;
	uint64_t dev, ino, size;
	int64_t mtime_sec, ctime_sec;
	long mtime_nsec, ctime_nsec;
};

struct mbox_store {
	struct store store;          /* first: store.h hands out &store */
	char *path;
	char *base;                  /* last component of path */
	int dir_fd;
	int fd;                      /* the mbox; -1: it did not exist */
	bool writable;
	struct lock *session_lock;
	/* store.count messages: as index records (mbox_rec_*); during the
	 * open of a login that parses, msgs first (then made records) */
	unsigned char *recs;
	struct mbox_message *msgs;
	uint64_t snap_size;          /* the file's size the scan covered */
	struct mbox_ident seen;      /* last stat known to agree with msgs */
	enum wire_from_quoting quoting;
	unsigned lock_wait_ms;
	bool stale;                  /* rewritten by another program */
	enum uidl_format uidl_format;  /* for messages not served before */
	enum store_uidl_source *sources;  /* during the open: for options->report */
	/* A warm login's UIDLs point into the index's string area (not
	 * freed one by one); it and recs are then in map (mbox_map_alloc). */
	char *strings;
	size_t strings_len;
	void *map;
	size_t map_len;
};

/* Is u one of the store's own allocations (not in the string area)? */
static bool
mbox_uidl_owned(const struct mbox_store *ms, const char *u)
{
	return ms->strings == NULL || u < ms->strings || u >= ms->strings + ms->strings_len;
}

__thread struct mbox_open_stats mbox_last_open;

static char *
mbox_name(const struct mbox_store *ms, const char *suffix)
{
	return xasprintf("%s%s", ms->base, suffix);
}

static void
mbox_ident_of(const struct stat *st, struct mbox_ident *id)
{
	id->known = true;
	id->dev = (uint64_t)st->st_dev;
	id->ino = (uint64_t)st->st_ino;
	id->size = (uint64_t)st->st_size;
	id->mtime_sec = st->st_mtim.tv_sec;
	id->mtime_nsec = st->st_mtim.tv_nsec;
	id->ctime_sec = st->st_ctim.tv_sec;
	id->ctime_nsec = st->st_ctim.tv_nsec;
}

static bool
mbox_ident_eq(const struct mbox_ident *a, const struct mbox_ident *b)
{
	return a->known && b->known && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	    a->mtime_sec == b->mtime_sec && a->mtime_nsec == b->mtime_nsec &&
	    a->ctime_sec == b->ctime_sec && a->ctime_nsec == b->ctime_nsec;
}

static enum store_status
mbox_errno_status(int err)
{
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

static void
mbox_hex(const unsigned char *in, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[in[i] >> 4];
		out[2 * i + 1] = hex[in[i] & 15];
	}
	out[2 * n] = '\0';
}

char *
mbox_uidl_for(const unsigned char *digest, unsigned ordinal)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char *uidl = xmalloc(MBOX_UIDL_HEX + 1);

	if (ordinal == 0) {
		mbox_hex(digest, MBOX_UIDL_HEX / 2, uidl);
		return uidl;
	}
	/* The n-th copy of the same message: its own, equally stable UIDL. */
	unsigned char data[MBOX_DIGEST_LEN + 16];
	memcpy(data, digest, MBOX_DIGEST_LEN);
	int n = snprintf((char *)data + MBOX_DIGEST_LEN, 16, "/%u", ordinal);
	if (EVP_Digest(data, MBOX_DIGEST_LEN + (size_t)n, md, &mdlen, EVP_sha256(), NULL) != 1)
		fatalx("SHA-256 digest failed");
	mbox_hex(md, MBOX_UIDL_HEX / 2, uidl);
	return uidl;
}

/* ---------------------------------------------------------------- parse */

/* Parse fd from offset start (0, or the end of what the index already
 * describes, where a From_ line begins) to its end now; the messages'
 * offsets are the file's. At most max_messages of them. */
static enum store_status
mbox_parse_fd(int fd, enum wire_from_quoting quoting, uint64_t start, uint32_t max_messages,
    struct mbox_message **msgs_r, uint32_t *count_r, uint64_t *size_r, char **error_r)
{
	struct mbox_parser *p = mbox_parser_new(quoting, max_messages);
	char *buf = xmalloc(MBOX_CHUNK);
	uint64_t off = start;
	enum store_status status = STORE_OK;

	for (;;) {
		ssize_t n = pread(fd, buf, MBOX_CHUNK, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			*error_r = xasprintf("reading: %s", strerror(errno));
			status = STORE_TEMP;
			goto out;
		}
		if (n == 0)
			break;
		if (!mbox_parser_feed(p, buf, (size_t)n)) {
			*error_r = xasprintf("%s (near byte %" PRIu64 ")", mbox_parser_error(p), off);
			status = STORE_PERM;
			goto out;
		}
		off += (uint64_t)n;
	}
	if (!mbox_parser_finish(p)) {
		*error_r = xstrdup(mbox_parser_error(p));
		status = STORE_PERM;
		goto out;
	}
	*msgs_r = mbox_parser_take(p, count_r);
	for (uint32_t i = 0; start > 0 && i < *count_r; i++) {
		(*msgs_r)[i].from_offset += start;
		(*msgs_r)[i].data_offset += start;
		(*msgs_r)[i].end_offset += start;
	}
	*size_r = off;
out:
	free(buf);
	mbox_parser_free(p);
	return status;
}

/* ---------------------------------------------------------------- index */

/* BASE.popbox-index, format 2 (layout in store_mbox.h; the why in
 * docs/DESIGN.md "Storage (mbox)"): a header with the mbox's identity,
 * fixed-size records, the UIDLs in one string area, then the records our
 * own deliveries appended. Read with a few preads; the UIDLs of a warm
 * login stay in the string area (no allocation per message). Checksums
 * over every part: damage or a torn write means "no index" (a full parse),
 * never a wrong list. The format-1 text index of earlier versions is read
 * once for the UIDLs it remembers and replaced. */

static int mbox_pread_all(int fd, char *buf, size_t len, uint64_t off);
static int mbox_pwrite_all(int fd, const char *buf, size_t len, uint64_t off);

#define MBOX_INDEX_V1_HEADER "popbox-mbox-index 1"
/* A login after this many of our own appends parses them all anyway. */
#define MBOX_INDEX_MAX_APPENDS 10000

static inline uint64_t
mbox_get64(const unsigned char *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	uint64_t v;
	memcpy(&v, p, sizeof(v));    /* one unaligned load */
	return v;
#else
	return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
	    (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
#endif
}

static uint32_t
mbox_get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
mbox_put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void
mbox_put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t
mbox_rotl(uint64_t x, unsigned r)
{
	return (x << r) | (x >> (64 - r));
}

#define MBOX_SUM_P1 0x9e3779b97f4a7c15ULL
#define MBOX_SUM_P2 0xc2b2ae3d27d4eb4fULL
#define MBOX_SUM_P3 0x165667b19e3779f9ULL

static uint64_t
mbox_mix(uint64_t x)
{
	x ^= x >> 33;
	x *= MBOX_SUM_P2;
	x ^= x >> 29;
	x *= MBOX_SUM_P3;
	x ^= x >> 32;
	return x;
}

/* Not cryptographic: it finds torn writes and damage. Four lanes, each a
 * chain of bijections of its state (xor a word, rotate, multiply by an odd
 * number), joined by another such chain: a change confined to one 8-byte
 * word always changes the sum; the length is mixed in. Fed in pieces
 * (mbox_sum_blocks: whole 32-byte blocks; mbox_sum_end: the rest) so that
 * a warm login checks the records as it reads them into a buffer that
 * stays in the cache; mbox_index_sum is the same over one piece. */
struct mbox_sum {
	uint64_t v[4];
	uint64_t seed;
	size_t len;
};

static void
mbox_sum_init(struct mbox_sum *c, uint64_t seed)
{
	c->v[0] = seed ^ MBOX_SUM_P1;
	c->v[1] = seed ^ MBOX_SUM_P2;
	c->v[2] = seed ^ MBOX_SUM_P3;
	c->v[3] = seed + MBOX_SUM_P1;
	c->seed = seed;
	c->len = 0;
}

/* len: a multiple of 32 */
static void
mbox_sum_blocks(struct mbox_sum *c, const unsigned char *p, size_t len)
{
	uint64_t v0 = c->v[0], v1 = c->v[1], v2 = c->v[2], v3 = c->v[3];
	for (size_t i = 0; i + 32 <= len; i += 32) {
		v0 = mbox_rotl(v0 ^ mbox_get64(p + i), 29) * MBOX_SUM_P2;
		v1 = mbox_rotl(v1 ^ mbox_get64(p + i + 8), 29) * MBOX_SUM_P2;
		v2 = mbox_rotl(v2 ^ mbox_get64(p + i + 16), 29) * MBOX_SUM_P2;
		v3 = mbox_rotl(v3 ^ mbox_get64(p + i + 24), 29) * MBOX_SUM_P2;
	}
	c->v[0] = v0;
	c->v[1] = v1;
	c->v[2] = v2;
	c->v[3] = v3;
	c->len += len;
}

static uint64_t
mbox_sum_end(struct mbox_sum *c, const unsigned char *p, size_t len)
{
	size_t i = len & ~(size_t)31;
	mbox_sum_blocks(c, p, i);
	unsigned k = 0;
	for (; i + 8 <= len; i += 8, k++)
		c->v[k] = mbox_rotl(c->v[k] ^ mbox_get64(p + i), 29) * MBOX_SUM_P2;
	if (i < len) {
		uint64_t w = 0;
		for (unsigned j = 0; i + j < len; j++)
			w |= (uint64_t)p[i + j] << (8 * j);
		c->v[k] = mbox_rotl(c->v[k] ^ w, 29) * MBOX_SUM_P2;
	}
	c->len += len - (len & ~(size_t)31);
	uint64_t h = (uint64_t)c->len * MBOX_SUM_P1 + c->seed;
	for (k = 0; k < 4; k++)
		h = mbox_rotl(h ^ mbox_mix(c->v[k]), 31) * MBOX_SUM_P3;
	return mbox_mix(h);
}

uint64_t
mbox_index_sum(const void *data, size_t len, uint64_t seed)
{
	struct mbox_sum c;
	mbox_sum_init(&c, seed);
	return mbox_sum_end(&c, data, len);
}

static void
mbox_ident_put(unsigned char *p, const struct mbox_ident *id)
{
	mbox_put64(p, id->dev);
	mbox_put64(p + 8, id->ino);
	mbox_put64(p + 16, id->size);
	mbox_put64(p + 24, (uint64_t)id->mtime_sec);
	mbox_put64(p + 32, (uint64_t)id->mtime_nsec);
	mbox_put64(p + 40, (uint64_t)id->ctime_sec);
	mbox_put64(p + 48, (uint64_t)id->ctime_nsec);
}

static void
mbox_ident_get(const unsigned char *p, struct mbox_ident *id)
{
	id->known = true;
	id->dev = mbox_get64(p);
	id->ino = mbox_get64(p + 8);
	id->size = mbox_get64(p + 16);
	id->mtime_sec = (int64_t)mbox_get64(p + 24);
	id->mtime_nsec = (long)mbox_get64(p + 32);
	id->ctime_sec = (int64_t)mbox_get64(p + 40);
	id->ctime_nsec = (long)mbox_get64(p + 48);
}

struct mbox_index {
	struct mbox_ident ident;     /* the file msgs describe (unknown: only UIDLs remembered) */
	int quoting;
	bool legacy;                 /* format 1 (text): only its UIDLs are used */
	/* Format 2: the records as in the file (count * MBOX_IX_REC bytes,
	 * checked); msgs and uidls are made from them only when a login
	 * parses (mbox_index_expand). */
	unsigned char *recs;
	struct mbox_message *msgs;
	char **uidls;                /* legacy: malloc'd each; else into strings */
	char *strings;               /* the string area (format 2) */
	size_t strings_len;
	void *map;                   /* format 2: smsgs, recs, strings */
	size_t map_len;
	struct store_message *smsgs; /* count zeroed ones: the warm login's */
	uint32_t count;
	/* After our own appends (MBOX_INDEX_APPEND records): the file's
	 * identity after the last one; bytes from ident.size on are new. */
	struct mbox_ident chain_end;
	uint32_t appends;
};

/*
 * The memory of a warm login (message table, records, string area, the
 * uniqueness check's table) comes from a mapping that the store's close
 * gives back for the next login rather than to the kernel. Fresh pages
 * cost far more than their zeroing: in the virtual machines this runs on,
 * the first touch of each page (even one MAP_POPULATE made present) traps
 * to the hypervisor. Reading a 10.5 MB index (100,000 messages) into fresh
 * pages took 23 ms, into pages used before 1.6 ms (docs/DESIGN.md "A
 * worker keeps its free heap"; the same reason as its M_TOP_PAD). A few
 * mappings are kept, at most MBOX_SPARE_BYTES in all; the store thread
 * takes one and the session's end (on the worker's thread) gives it back.
 */
#define MBOX_SPARES 4
#define MBOX_SPARE_BYTES ((size_t)32 << 20)

static pthread_mutex_t mbox_spare_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	void *p;
	size_t len;
} mbox_spare[MBOX_SPARES];

/* A mapping of at least len bytes (*len_r: its whole length, for
 * mbox_map_put); its contents are undefined. NULL if none can be had. */
static void *
mbox_map_get(size_t len, size_t *len_r)
{
	void *p = NULL, *drop = NULL;
	size_t drop_len = 0;
	pthread_mutex_lock(&mbox_spare_lock);
	int best = -1;
	for (int i = 0; i < MBOX_SPARES; i++)
		if (mbox_spare[i].p != NULL && mbox_spare[i].len >= len &&
		    (best < 0 || mbox_spare[i].len < mbox_spare[best].len))
			best = i;
	if (best >= 0) {
		p = mbox_spare[best].p;
		*len_r = mbox_spare[best].len;
		mbox_spare[best].p = NULL;
	} else {
		/* none big enough: the biggest goes (a maildrop that grew) */
		for (int i = 0; i < MBOX_SPARES; i++)
			if (mbox_spare[i].p != NULL && (best < 0 || mbox_spare[i].len > mbox_spare[best].len))
				best = i;
		if (best >= 0) {
			drop = mbox_spare[best].p;
			drop_len = mbox_spare[best].len;
			mbox_spare[best].p = NULL;
		}
	}
	pthread_mutex_unlock(&mbox_spare_lock);
	if (drop != NULL)
		munmap(drop, drop_len);
	if (p != NULL)
		return p;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	*len_r = len;
	return p;
}

/* Give back what mbox_map_get gave: kept for the next login while the
 * spares stay within MBOX_SPARE_BYTES, else unmapped. */
static void
mbox_map_put(void *p, size_t len)
{
	if (p == NULL)
		return;
	pthread_mutex_lock(&mbox_spare_lock);
	size_t held = 0;
	int free_slot = -1;
	for (int i = 0; i < MBOX_SPARES; i++) {
		if (mbox_spare[i].p != NULL)
			held += mbox_spare[i].len;
		else if (free_slot < 0)
			free_slot = i;
	}
	if (free_slot >= 0 && len <= MBOX_SPARE_BYTES && held + len <= MBOX_SPARE_BYTES) {
		mbox_spare[free_slot].p = p;
		mbox_spare[free_slot].len = len;
		p = NULL;
	}
	pthread_mutex_unlock(&mbox_spare_lock);
	if (p != NULL)
		munmap(p, len);
}

static void
mbox_index_free(struct mbox_index *ix)
{
	if (ix->legacy)
		for (uint32_t i = 0; i < ix->count; i++)
			free(ix->uidls[i]);
	free(ix->uidls);
	free(ix->msgs);
	mbox_map_put(ix->map, ix->map_len);
	memset(ix, 0, sizeof(*ix));
}

/* A lowercase hex digit's value; -1 for anything else. */
static inline int
mbox_hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static bool
mbox_unhex(const char *s, unsigned char *out, size_t n)
{
	for (size_t i = 0; i < 2 * n; i++) {
		int v = mbox_hex_value(s[i]);
		if (v < 0)
			return false;
		if (i % 2 == 0)
			out[i / 2] = (unsigned char)(v << 4);
		else
			out[i / 2] |= (unsigned char)v;
	}
	return s[2 * n] == '\0';
}

static bool
mbox_uidl_valid(const char *u)
{
	size_t n = strlen(u);
	if (n == 0 || n > UIDL_MAX_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)u[i] - 0x21u > 0x7eu - 0x21u)
			return false;
	return true;
}

/* Format 1 (text), from data (NUL-terminated, len bytes): only for the
 * UIDLs it remembers (ix->legacy; ident left unknown). */
static bool
mbox_index_read_v1(char *data, size_t len, struct mbox_index *ix)
{
	if (memchr(data, '\0', len) != NULL)
		return false;
	ix->legacy = true;
	char *save = NULL;
	char *line = strtok_r(data, "\n", &save);
	if (line == NULL || strcmp(line, MBOX_INDEX_V1_HEADER) != 0)
		return false;
	line = strtok_r(NULL, "\n", &save);
	if (line == NULL || strncmp(line, "ident ", 6) != 0)
		return false;
	uint32_t alloc = 0;
	uint64_t expect_from = 0;
	for (;;) {
		line = strtok_r(NULL, "\n", &save);
		if (line == NULL)
			return false;    /* no end line: cut short */
		if (strncmp(line, "end ", 4) == 0) {
			uint32_t n;
			return parse_u32(line + 4, UINT32_MAX, &n) && n == ix->count;
		}
		if (ix->count >= MBOX_MAX_MESSAGES)
			return false;
		char *f[8];
		int nf = 0;
		char *s2 = NULL;
		for (char *t = strtok_r(line, " ", &s2); t != NULL && nf < 8; t = strtok_r(NULL, " ", &s2))
			f[nf++] = t;
		if (nf != 8 || strcmp(f[0], "m") != 0 || strtok_r(NULL, " ", &s2) != NULL)
			return false;
		struct mbox_message m;
		memset(&m, 0, sizeof(m));
		if (!parse_u64(f[1], INT64_MAX, &m.from_offset) ||
		    !parse_u64(f[2], INT64_MAX, &m.data_offset) ||
		    !parse_u64(f[3], INT64_MAX, &m.data_length) ||
		    !parse_u64(f[4], INT64_MAX, &m.end_offset) ||
		    !parse_u64(f[5], INT64_MAX, &m.size) ||
		    !mbox_unhex(f[6], m.digest, MBOX_DIGEST_LEN) || !mbox_uidl_valid(f[7]))
			return false;
		if (m.from_offset != expect_from || m.end_offset <= m.from_offset)
			return false;
		expect_from = m.end_offset;
		if (ix->count == alloc) {
			alloc = alloc == 0 ? 64 : alloc * 2;
			ix->msgs = xrealloc(ix->msgs, (size_t)alloc * sizeof(*ix->msgs));
			ix->uidls = xrealloc(ix->uidls, (size_t)alloc * sizeof(*ix->uidls));
		}
		ix->msgs[ix->count] = m;
		ix->uidls[ix->count] = xstrdup(f[7]);
		ix->count++;
	}
}

/* The store's message table is the index's own record layout
 * (store_mbox.h, MBOX_IX_REC bytes a message): a warm login reads the
 * records from the file straight into place and uses them as they are.
 * (Turned into a table of struct mbox_message, 96 bytes a message, they
 * cost a warm login of 100,000 messages a third of its time in page
 * faults and stalls on fresh memory.) A message starts where the one
 * before ended. */
static inline const unsigned char *
mbox_rec(const unsigned char *recs, uint32_t i)
{
	return recs + (size_t)i * MBOX_IX_REC;
}

static inline uint64_t
mbox_rec_end(const unsigned char *recs, uint32_t i)
{
	return mbox_get64(mbox_rec(recs, i) + MBOX_IX_REC_END);
}

static inline uint64_t
mbox_rec_from(const unsigned char *recs, uint32_t i)
{
	return i == 0 ? 0 : mbox_rec_end(recs, i - 1);
}

static inline uint64_t
mbox_rec_data_offset(const unsigned char *recs, uint32_t i)
{
	return mbox_rec_from(recs, i) + mbox_get32(mbox_rec(recs, i) + MBOX_IX_REC_FROM_LEN);
}

static inline uint64_t
mbox_rec_data_length(const unsigned char *recs, uint32_t i)
{
	return mbox_get64(mbox_rec(recs, i) + MBOX_IX_REC_DATA_LEN);
}

static inline uint64_t
mbox_rec_size(const unsigned char *recs, uint32_t i)
{
	return mbox_get64(mbox_rec(recs, i) + MBOX_IX_REC_SIZE);
}

static const char mbox_hexdigits[] = "0123456789abcdef";


/* Record of m (the UIDL's place: uoff, ulen; 0 in memory). False if it
 * cannot be one (a From_ line over 4 GB). */
static bool
mbox_rec_put(unsigned char *r, const struct mbox_message *m, uint32_t uoff, size_t ulen)
{
	if (m->data_offset - m->from_offset > UINT32_MAX)
		return false;
	memset(r, 0, MBOX_IX_REC);
	mbox_put64(r + MBOX_IX_REC_END, m->end_offset);
	mbox_put64(r + MBOX_IX_REC_DATA_LEN, m->data_length);
	mbox_put64(r + MBOX_IX_REC_SIZE, m->size);
	mbox_put32(r + MBOX_IX_REC_FROM_LEN, (uint32_t)(m->data_offset - m->from_offset));
	mbox_put32(r + MBOX_IX_REC_UIDL_OFF, uoff);
	memcpy(r + MBOX_IX_REC_KEY, m->digest, MBOX_KEY_LEN);
	/* popa3d's UIDL: 16 hex digits as 8 bytes (else zeros) */
	unsigned char p3[8];
	bool hex = m->popa3d_uidl[16] == '\0';
	for (unsigned j = 0; j < 8 && hex; j++) {
		int hi = mbox_hex_value(m->popa3d_uidl[2 * j]);
		int lo = hi < 0 ? -1 : mbox_hex_value(m->popa3d_uidl[2 * j + 1]);
		hex = lo >= 0;
		if (hex)
			p3[j] = (unsigned char)(hi << 4 | lo);
	}
	if (hex)
		memcpy(r + MBOX_IX_REC_P3, p3, 8);
	r[MBOX_IX_REC_UIDL_LEN] = (unsigned char)ulen;
	return true;
}

/* The i-th record as a struct mbox_message (the digest's bytes past the
 * key zero, popa3d's UIDL in hex, as the index always gave them). */
static void
mbox_rec_get(const unsigned char *recs, uint32_t i, struct mbox_message *m)
{
	const unsigned char *r = mbox_rec(recs, i);
	m->from_offset = mbox_rec_from(recs, i);
	m->data_offset = m->from_offset + mbox_get32(r + MBOX_IX_REC_FROM_LEN);
	m->data_length = mbox_get64(r + MBOX_IX_REC_DATA_LEN);
	m->end_offset = mbox_get64(r + MBOX_IX_REC_END);
	m->size = mbox_get64(r + MBOX_IX_REC_SIZE);
	memcpy(m->digest, r + MBOX_IX_REC_KEY, MBOX_KEY_LEN);
	memset(m->digest + MBOX_KEY_LEN, 0, MBOX_DIGEST_LEN - MBOX_KEY_LEN);
	for (unsigned j = 0; j < 8; j++) {
		unsigned char b = r[MBOX_IX_REC_P3 + j];
		m->popa3d_uidl[2 * j] = mbox_hexdigits[b >> 4];
		m->popa3d_uidl[2 * j + 1] = mbox_hexdigits[b & 15];
	}
	m->popa3d_uidl[16] = '\0';
}

/* Records of count parsed messages (malloc'd); NULL if one cannot be
 * (a From_ line of 4 GB or more). */
static unsigned char *
mbox_recs_of(const struct mbox_message *msgs, uint32_t count)
{
	unsigned char *recs = xmalloc((size_t)(count ? count : 1) * MBOX_IX_REC);
	for (uint32_t i = 0; i < count; i++) {
		if (!mbox_rec_put(recs + (size_t)i * MBOX_IX_REC, &msgs[i], 0, 0)) {
			free(recs);
			return NULL;
		}
	}
	return recs;
}

/* A format-2 index as the messages and UIDLs a parsing login compares
 * with (the warm login does not need them). */
static void
mbox_index_expand(struct mbox_index *ix)
{
	if (ix->msgs != NULL || ix->recs == NULL)
		return;
	ix->msgs = xmalloc((size_t)(ix->count ? ix->count : 1) * sizeof(*ix->msgs));
	ix->uidls = xmalloc((size_t)(ix->count ? ix->count : 1) * sizeof(*ix->uidls));
	for (uint32_t i = 0; i < ix->count; i++) {
		mbox_rec_get(ix->recs, i, &ix->msgs[i]);
		ix->uidls[i] = ix->strings + mbox_get32(mbox_rec(ix->recs, i) + MBOX_IX_REC_UIDL_OFF);
	}
}

/* UIDLs of a format-2 index are unique (store.h); checked with a hash
 * table (a sort would cost more than the rest of a warm login). Each
 * record's UIDL is at its offset in strings, its length in the record. */
static size_t
mbox_unique_slots(uint32_t n)
{
	size_t size = 16;
	while (size < 2 * (size_t)n)
		size *= 2;
	return size;
}

/* slot: size (mbox_unique_slots) zeroed ones */
static bool
mbox_uidls_unique(const unsigned char *recs, const char *strings, uint32_t n, uint32_t *slot,
    size_t size)
{
	bool ok = true;
	for (uint32_t i = 0; i < n && ok; i++) {
		const unsigned char *r = mbox_rec(recs, i);
		const char *u = strings + mbox_get32(r + MBOX_IX_REC_UIDL_OFF);
		uint8_t len = r[MBOX_IX_REC_UIDL_LEN];
		size_t h = (size_t)mbox_index_sum(u, len, 5) & (size - 1);
		for (;; h = (h + 1) & (size - 1)) {
			uint32_t s = slot[h];
			if (s == 0) {
				slot[h] = i + 1;
				break;
			}
			const unsigned char *o = mbox_rec(recs, s - 1);
			if (o[MBOX_IX_REC_UIDL_LEN] == len &&
			    memcmp(strings + mbox_get32(o + MBOX_IX_REC_UIDL_OFF), u, len) == 0) {
				ok = false;
				break;
			}
		}
	}
	return ok;
}

/* Format 2 from fd (size bytes, header already in head). */
static bool
mbox_index_read_v2(int fd, uint64_t size, const unsigned char *head, struct mbox_index *ix)
{
	if (mbox_index_sum(head, MBOX_IX_HEAD_SUM, 1) != mbox_get64(head + MBOX_IX_HEAD_SUM))
		return false;
	uint32_t count = mbox_get32(head + MBOX_IX_COUNT);
	uint64_t slen = mbox_get64(head + MBOX_IX_STRINGS_LEN);
	uint32_t known = mbox_get32(head + MBOX_IX_KNOWN);
	if (count > MBOX_MAX_MESSAGES || slen > (uint64_t)count * (UIDL_MAX_LEN + 1) || known > 1)
		return false;
	uint64_t base_end = MBOX_IX_HEAD + (uint64_t)count * MBOX_IX_REC + slen;
	if (size < base_end)
		return false;
	ix->quoting = (int)mbox_get32(head + MBOX_IX_QUOTING);
	if (known)
		mbox_ident_get(head + MBOX_IX_IDENT, &ix->ident);
	/* Message array, records, string area and the uniqueness check's
	 * hash table in one mapping (mbox_map_get: usually an earlier
	 * login's, its pages already in place). Read a piece at a time, each
	 * checksummed (and the string area's bytes checked) while it is
	 * still in the cache. */
	size_t rlen = (size_t)count * MBOX_IX_REC;
	size_t mlen = (size_t)count * sizeof(struct store_message);
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t hsize = mbox_unique_slots(count);
	size_t keep = (mlen + rlen + (size_t)slen + 1 + page - 1) / page * page;
	ix->map = mbox_map_get(keep + hsize * sizeof(uint32_t), &ix->map_len);
	if (ix->map == NULL)
		return false;
	/* a mapping used before holds an earlier login's tables */
	memset(ix->map, 0, mlen);
	ix->smsgs = ix->map;
	ix->recs = (unsigned char *)ix->map + mlen;
	ix->strings = (char *)ix->recs + rlen;
	ix->strings[slen] = '\0';
	ix->strings_len = (size_t)slen;
	uint32_t *slots = (uint32_t *)(void *)((char *)ix->map + keep);
	memset(slots, 0, hsize * sizeof(uint32_t));
	struct mbox_sum sum;
	mbox_sum_init(&sum, 2);
	for (size_t off = 0; off < rlen; off += MBOX_IX_PIECE) {
		size_t n = rlen - off < MBOX_IX_PIECE ? rlen - off : MBOX_IX_PIECE;
		if (mbox_pread_all(fd, (char *)ix->recs + off, n, MBOX_IX_HEAD + off) < 0)
			return false;
		if (off + n < rlen)
			mbox_sum_blocks(&sum, ix->recs + off, n);
		else if (mbox_sum_end(&sum, ix->recs + off, n) != mbox_get64(head + MBOX_IX_RECS_SUM))
			return false;
	}
	if (rlen == 0 && mbox_sum_end(&sum, ix->recs, 0) != mbox_get64(head + MBOX_IX_RECS_SUM))
		return false;
	/* The UIDLs follow each other in record order (mbox_index_write; the
	 * records must say so): every byte of the area is printable or the NUL
	 * that ends a UIDL, count NULs in all. One pass over the area instead
	 * of one per UIDL. */
	size_t nuls = 0;
	unsigned bad = 0;
	mbox_sum_init(&sum, 3);
	for (size_t off = 0; off < slen || off == 0; off += MBOX_IX_PIECE) {
		size_t n = slen - off < MBOX_IX_PIECE ? slen - off : MBOX_IX_PIECE;
		const unsigned char *p = (const unsigned char *)ix->strings + off;
		if (mbox_pread_all(fd, (char *)p, n, MBOX_IX_HEAD + rlen + off) < 0)
			return false;
		for (size_t j = 0; j < n; j++) {
			unsigned char c = p[j];
			nuls += c == 0;
			bad |= c != 0 && c - 0x21u > 0x7eu - 0x21u;
		}
		if (off + n < slen)
			mbox_sum_blocks(&sum, p, n);
		else if (mbox_sum_end(&sum, p, n) != mbox_get64(head + MBOX_IX_STRINGS_SUM))
			return false;
		if (n == 0)
			break;
	}
	if (bad || nuls != count)
		return false;
	uint64_t from = 0, at = 0;
	for (uint32_t i = 0; i < count; i++) {
		const unsigned char *r = mbox_rec(ix->recs, i);
		uint64_t end = mbox_get64(r + MBOX_IX_REC_END);
		uint64_t dlen = mbox_get64(r + MBOX_IX_REC_DATA_LEN);
		uint64_t wsize = mbox_get64(r + MBOX_IX_REC_SIZE);
		uint32_t flen = mbox_get32(r + MBOX_IX_REC_FROM_LEN);
		uint32_t uoff = mbox_get32(r + MBOX_IX_REC_UIDL_OFF);
		/* the UIDL's length, then zeros to the record's end */
		uint64_t tail = mbox_get64(r + MBOX_IX_REC_UIDL_LEN);
		uint8_t ulen = (uint8_t)tail;
		/* The layout must be one a parse could give; the UIDLs tile
		 * the string area in record order (so no NUL inside one:
		 * count NULs in all, each ending one). */
		if (end <= from || end > INT64_MAX || flen > end - from || dlen > end - from - flen ||
		    wsize > 2 * dlen + 2 || ulen == 0 || ulen > UIDL_MAX_LEN || (tail >> 8) != 0 ||
		    uoff != at || at + ulen >= slen || ix->strings[at + ulen] != '\0')
			return false;
		at += (uint64_t)ulen + 1;
		from = end;
	}
	if (at != slen)
		return false;
	if (known && from != ix->ident.size)
		return false;
	if (!mbox_uidls_unique(ix->recs, ix->strings, count, slots, hsize))
		return false;
	ix->count = count;
	/* Our own appends since: each record starts from where the last one
	 * (or the header) left the file; the first that does not is the end. */
	if (known) {
		ix->chain_end = ix->ident;
		uint64_t apos = base_end;
		unsigned char a[MBOX_IX_APPEND];
		while (apos + MBOX_IX_APPEND <= size && ix->appends < MBOX_INDEX_MAX_APPENDS &&
		    mbox_pread_all(fd, (char *)a, MBOX_IX_APPEND, apos) == 0) {
			struct mbox_ident pre, post;
			if (memcmp(a, MBOX_IX_APPEND_MAGIC, 8) != 0 ||
			    mbox_index_sum(a, MBOX_IX_APPEND_SUM, 4) != mbox_get64(a + MBOX_IX_APPEND_SUM))
				break;
			mbox_ident_get(a + MBOX_IX_APPEND_PRE, &pre);
			mbox_ident_get(a + MBOX_IX_APPEND_POST, &post);
			if (!mbox_ident_eq(&pre, &ix->chain_end) || post.dev != pre.dev ||
			    post.ino != pre.ino || post.size <= pre.size)
				break;
			ix->chain_end = post;
			ix->appends++;
			apos += MBOX_IX_APPEND;
		}
	}
	return true;
}

/* Read BASE.popbox-index; false (ix empty) if missing or damaged: the
 * index is a cache, the mbox the truth. */
static bool
mbox_index_read(struct mbox_store *ms, char *buf, struct mbox_index *ix)
{
	char *name = mbox_name(ms, ".popbox-index");
	unsigned char head[MBOX_IX_HEAD];
	struct stat st;
	bool ok = false;
	memset(ix, 0, sizeof(*ix));
	int fd = openat(ms->dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	free(name);
	if (fd < 0)
		return false;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > MBOX_INDEX_MAX_BYTES)
		goto out;
	size_t v1 = strlen(MBOX_INDEX_V1_HEADER "\n");
	if ((uint64_t)st.st_size >= v1 && mbox_pread_all(fd, (char *)head, v1, 0) == 0 &&
	    memcmp(head, MBOX_INDEX_V1_HEADER "\n", v1) == 0) {
		char *data = NULL, *error = NULL;
		size_t len = 0;
		if (util_read_file_bounded(fd, "index", MBOX_INDEX_MAX_BYTES, 0, &data, &len, &error) < 0) {
			free(error);
			goto out;
		}
		ok = mbox_index_read_v1(data, len, ix);
		free(data);
		goto out;
	}
	if ((uint64_t)st.st_size < MBOX_IX_HEAD || mbox_pread_all(fd, (char *)head, MBOX_IX_HEAD, 0) < 0 ||
	    memcmp(head, MBOX_IX_MAGIC, MBOX_IX_MAGIC_LEN) != 0)
		goto out;
	ok = mbox_index_read_v2(fd, (uint64_t)st.st_size, head, ix);
out:
	close(fd);
	if (!ok)
		mbox_index_free(ix);
	return ok;
}

/* Write the index for the store's messages (ident: what they describe,
 * or unknown: the next login parses, keeping the UIDLs). */
static void
mbox_index_write(struct mbox_store *ms, const struct mbox_ident *ident,
    const struct mbox_message *msgs, const struct store_message *smsgs, uint32_t count)
{
	char *name = mbox_name(ms, ".popbox-index");
	char *tmp = mbox_name(ms, ".popbox-index.tmp");
	size_t slen = 0;
	for (uint32_t i = 0; i < count; i++)
		slen += strlen(smsgs[i].uidl) + 1;
	size_t total = MBOX_IX_HEAD + (size_t)count * MBOX_IX_REC + slen;
	unsigned char *buf = xcalloc(1, total);
	unsigned char *recs = buf + MBOX_IX_HEAD;
	char *strings = (char *)recs + (size_t)count * MBOX_IX_REC;
	size_t at = 0;
	for (uint32_t i = 0; i < count; i++) {
		size_t ulen = strlen(smsgs[i].uidl);
		if (ulen == 0 || ulen > UIDL_MAX_LEN ||
		    !mbox_rec_put(recs + (size_t)i * MBOX_IX_REC, &msgs[i], (uint32_t)at, ulen)) {
			log_warnx("mbox %s: message %u cannot be indexed; no index", ms->path, i + 1);
			goto out;
		}
		memcpy(strings + at, smsgs[i].uidl, ulen + 1);
		at += ulen + 1;
	}
	memcpy(buf, MBOX_IX_MAGIC, MBOX_IX_MAGIC_LEN);
	mbox_put32(buf + MBOX_IX_QUOTING, (uint32_t)ms->quoting);
	mbox_put32(buf + MBOX_IX_COUNT, count);
	mbox_put64(buf + MBOX_IX_STRINGS_LEN, slen);
	if (ident->known) {
		mbox_ident_put(buf + MBOX_IX_IDENT, ident);
		mbox_put32(buf + MBOX_IX_KNOWN, 1);
	}
	mbox_put64(buf + MBOX_IX_RECS_SUM, mbox_index_sum(recs, (size_t)count * MBOX_IX_REC, 2));
	mbox_put64(buf + MBOX_IX_STRINGS_SUM, mbox_index_sum(strings, slen, 3));
	mbox_put64(buf + MBOX_IX_HEAD_SUM, mbox_index_sum(buf, MBOX_IX_HEAD_SUM, 1));
	int fd = openat(ms->dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		log_warn("mbox %s: cannot write its index", ms->path);
		goto out;
	}
	if (mbox_pwrite_all(fd, (const char *)buf, total, 0) < 0) {
		close(fd);
		unlinkat(ms->dir_fd, tmp, 0);
		log_warnx("mbox %s: cannot write its index (disk full?)", ms->path);
		goto out;
	}
	close(fd);
	if (renameat(ms->dir_fd, tmp, ms->dir_fd, name) < 0) {
		log_warn("mbox %s: cannot rename its index", ms->path);
		unlinkat(ms->dir_fd, tmp, 0);
	}
out:
	free(buf);
	free(name);
	free(tmp);
}

/* After our own append (under the mbox lock, the mbox fsynced): if the
 * index described the file exactly as it was before (pre), and the append
 * began at a message boundary, one record saying so and what the file is
 * now (post), so the next login parses only from where the index ends.
 * Anything else: nothing written (that login parses the whole file). A
 * cache: not fsynced; a torn record fails its checksum. */
static void
mbox_index_note_append(struct mbox_store *ms, const struct mbox_ident *pre,
    const struct mbox_ident *post)
{
	char *name = mbox_name(ms, ".popbox-index");
	unsigned char head[MBOX_IX_HEAD], a[MBOX_IX_APPEND];
	struct stat st;
	int fd = openat(ms->dir_fd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	free(name);
	if (fd < 0)
		return;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
	    (uint64_t)st.st_size < MBOX_IX_HEAD || mbox_pread_all(fd, (char *)head, MBOX_IX_HEAD, 0) < 0 ||
	    memcmp(head, MBOX_IX_MAGIC, MBOX_IX_MAGIC_LEN) != 0 ||
	    mbox_index_sum(head, MBOX_IX_HEAD_SUM, 1) != mbox_get64(head + MBOX_IX_HEAD_SUM) ||
	    mbox_get32(head + MBOX_IX_KNOWN) != 1)
		goto out;
	uint64_t size = (uint64_t)st.st_size;
	uint64_t count = mbox_get32(head + MBOX_IX_COUNT), slen = mbox_get64(head + MBOX_IX_STRINGS_LEN);
	if (count > MBOX_MAX_MESSAGES || slen > count * (UIDL_MAX_LEN + 1))
		goto out;
	uint64_t base_end = MBOX_IX_HEAD + count * MBOX_IX_REC + slen;
	if (size < base_end || (size - base_end) % MBOX_IX_APPEND != 0 ||
	    (size - base_end) / MBOX_IX_APPEND >= MBOX_INDEX_MAX_APPENDS)
		goto out;
	struct mbox_ident last;
	if (size == base_end) {
		mbox_ident_get(head + MBOX_IX_IDENT, &last);
	} else {
		if (mbox_pread_all(fd, (char *)a, MBOX_IX_APPEND, size - MBOX_IX_APPEND) < 0 ||
		    memcmp(a, MBOX_IX_APPEND_MAGIC, 8) != 0 ||
		    mbox_index_sum(a, MBOX_IX_APPEND_SUM, 4) != mbox_get64(a + MBOX_IX_APPEND_SUM))
			goto out;
		mbox_ident_get(a + MBOX_IX_APPEND_POST, &last);
	}
	if (!mbox_ident_eq(&last, pre))
		goto out;
	memset(a, 0, sizeof(a));
	memcpy(a, MBOX_IX_APPEND_MAGIC, 8);
	mbox_ident_put(a + MBOX_IX_APPEND_PRE, pre);
	mbox_ident_put(a + MBOX_IX_APPEND_POST, post);
	mbox_put64(a + MBOX_IX_APPEND_SUM, mbox_index_sum(a, MBOX_IX_APPEND_SUM, 4));
	if (mbox_pwrite_all(fd, (const char *)a, sizeof(a), size) < 0 && ftruncate(fd, (off_t)size) < 0)
		log_warn("mbox %s: a torn record in its index (the next login parses it all)", ms->path);
out:
	close(fd);
}

/* ---------------------------------------------------------------- UIDLs */

/* qsort has no argument: the array being sorted by mbox_order_cmp. Only
 * ever used with the store's messages of one thread at a time. */
static __thread const struct mbox_message *mbox_sort_msgs;

static int
mbox_order_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	int r = memcmp(mbox_sort_msgs[x].digest, mbox_sort_msgs[y].digest, MBOX_KEY_LEN);
	if (r != 0)
		return r;
	return x < y ? -1 : x > y;
}

struct mbox_remembered {
	unsigned char digest[MBOX_DIGEST_LEN];
	uint32_t order;     /* position in the old index: the k-th copy */
	const char *uidl;
	bool used;
};

static int
mbox_remembered_cmp(const void *a, const void *b)
{
	const struct mbox_remembered *x = a, *y = b;
	int r = memcmp(x->digest, y->digest, MBOX_KEY_LEN);
	if (r != 0)
		return r;
	return x->order < y->order ? -1 : x->order > y->order;
}

static int
mbox_strp_cmp(const void *a, const void *b)
{
	const char *const *x = a, *const *y = b;
	return strcmp(*x, *y);
}

static int
mbox_p3_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	int r = strcmp(mbox_sort_msgs[x].popa3d_uidl, mbox_sort_msgs[y].popa3d_uidl);
	if (r != 0)
		return r;
	return x < y ? -1 : x > y;
}

/* uidl_format = popa3d: the messages not served before take popa3d's
 * UIDL, the first of several with the same one only (popa3d gave copies
 * one UIDL; the others get their own, and are logged). */
static void
mbox_assign_popa3d(struct mbox_store *ms)
{
	uint32_t n = ms->store.count;
	uint32_t *order = xmalloc((size_t)(n ? n : 1) * sizeof(*order));
	for (uint32_t i = 0; i < n; i++)
		order[i] = i;
	mbox_sort_msgs = ms->msgs;
	qsort(order, n, sizeof(*order), mbox_p3_cmp);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t m = order[i];
		bool first = i == 0 || strcmp(ms->msgs[order[i - 1]].popa3d_uidl, ms->msgs[m].popa3d_uidl) != 0;
		if (ms->store.messages[m].uidl != NULL || ms->msgs[m].popa3d_uidl[0] == '\0')
			continue;
		if (!first) {
			log_info("mbox %s: message %u has popa3d's UIDL %s of an earlier one; it gets its own",
			    ms->path, m + 1, ms->msgs[m].popa3d_uidl);
			if (ms->sources != NULL)
				ms->sources[m] = STORE_UIDL_REPLACED;
			continue;
		}
		ms->store.messages[m].uidl = xstrdup(ms->msgs[m].popa3d_uidl);
		if (ms->sources != NULL)
			ms->sources[m] = STORE_UIDL_OLD;
	}
	free(order);
}

/* Give every message its UIDL: the one the old index remembers for the
 * same identity (the k-th copy takes the k-th), else its identity's own
 * (mbox_uidl_for). Unique whatever the index says. */
/* Are the n messages' UIDLs all different? */
static bool
mbox_strings_unique(const struct store_message *m, uint32_t n)
{
	size_t size = mbox_unique_slots(n);
	uint32_t *slot = xcalloc(size, sizeof(*slot));
	bool ok = true;
	for (uint32_t i = 0; i < n && ok; i++) {
		size_t len = strlen(m[i].uidl);
		for (size_t h = (size_t)mbox_index_sum(m[i].uidl, len, 5) & (size - 1);;
		    h = (h + 1) & (size - 1)) {
			if (slot[h] == 0) {
				slot[h] = i + 1;
				break;
			}
			if (strcmp(m[slot[h] - 1].uidl, m[i].uidl) == 0) {
				ok = false;
				break;
			}
		}
	}
	free(slot);
	return ok;
}

static void
mbox_assign_uidls(struct mbox_store *ms, const struct mbox_index *old)
{
	uint32_t n = ms->store.count;
	struct mbox_remembered *rem = NULL;
	uint32_t nrem = old != NULL ? old->count : 0;
	if (nrem > 0) {
		rem = xcalloc(nrem, sizeof(*rem));
		for (uint32_t i = 0; i < nrem; i++) {
			memcpy(rem[i].digest, old->msgs[i].digest, MBOX_DIGEST_LEN);
			rem[i].order = i;
			rem[i].uidl = old->uidls[i];
		}
		qsort(rem, nrem, sizeof(*rem), mbox_remembered_cmp);
	}
	/* Served before: the first unused remembered entry of the identity. */
	for (uint32_t i = 0; i < n && rem != NULL; i++) {
		const unsigned char *d = ms->msgs[i].digest;
		size_t lo = 0, hi = nrem;
		while (lo < hi) {
			size_t mid = (lo + hi) / 2;
			if (memcmp(rem[mid].digest, d, MBOX_KEY_LEN) < 0)
				lo = mid + 1;
			else
				hi = mid;
		}
		for (size_t j = lo; j < nrem && memcmp(rem[j].digest, d, MBOX_KEY_LEN) == 0; j++) {
			if (!rem[j].used) {
				rem[j].used = true;
				ms->store.messages[i].uidl = xstrdup(rem[j].uidl);
				if (ms->sources != NULL)
					ms->sources[i] = STORE_UIDL_REMEMBERED;
				break;
			}
		}
	}
	if (ms->uidl_format == UIDL_FORMAT_POPA3D)
		mbox_assign_popa3d(ms);
	/* New messages: the identity's UIDL, the k-th copy (file order) its
	 * k-th: ordinals from a sort by (digest, position). */
	uint32_t *order = xmalloc((size_t)(n ? n : 1) * sizeof(*order));
	unsigned *ordinal = xmalloc((size_t)(n ? n : 1) * sizeof(*ordinal));
	for (uint32_t i = 0; i < n; i++)
		order[i] = i;
	mbox_sort_msgs = ms->msgs;
	qsort(order, n, sizeof(*order), mbox_order_cmp);
	for (uint32_t i = 0; i < n; i++) {
		bool same = i > 0 && memcmp(ms->msgs[order[i]].digest, ms->msgs[order[i - 1]].digest,
		    MBOX_KEY_LEN) == 0;
		ordinal[order[i]] = same ? ordinal[order[i - 1]] + 1 : 0;
	}
	for (uint32_t i = 0; i < n; i++)
		if (ms->store.messages[i].uidl == NULL)
			ms->store.messages[i].uidl = mbox_uidl_for(ms->msgs[i].digest, ordinal[i]);
	free(order);
	free(ordinal);
	free(rem);
	/* Unique: a remembered UIDL may equal a computed one (a damaged or
	 * edited index); the later one gets another. A hash table says
	 * whether any is there; only then the sort finds them. */
	if (n > 1 && !mbox_strings_unique(ms->store.messages, n)) {
		char **v = xmalloc((size_t)n * sizeof(*v));
		for (;;) {
			for (uint32_t i = 0; i < n; i++)
				v[i] = ms->store.messages[i].uidl;
			qsort(v, n, sizeof(*v), mbox_strp_cmp);
			const char *dup = NULL;
			for (uint32_t i = 1; i < n && dup == NULL; i++)
				if (strcmp(v[i - 1], v[i]) == 0)
					dup = v[i];
			if (dup == NULL)
				break;
			for (uint32_t i = n; i-- > 0;) {
				if (strcmp(ms->store.messages[i].uidl, dup) == 0) {
					unsigned salt = 1000000 + i;
					char *u = mbox_uidl_for(ms->msgs[i].digest, salt);
					log_warnx("mbox %s: message %u had the UIDL of another, now %s",
					    ms->path, i + 1, u);
					free(ms->store.messages[i].uidl);
					ms->store.messages[i].uidl = u;
					break;
				}
			}
		}
		free(v);
	}
}

/* After our own appends: the first keep messages are the index's, in its
 * order, so each takes its remembered UIDL (what mbox_assign_uidls gives
 * them too, without sorting 100,000 of them); the appended ones get their
 * identity's UIDL, the k-th copy (counting the index's) its k-th, one
 * taken already replaced as there. Hash tables: linear in the count. */
static void
mbox_assign_tail(struct mbox_store *ms, const struct mbox_index *old, uint32_t keep)
{
	uint32_t n = ms->store.count;
	size_t size = 16;
	while (size < 2 * (size_t)n)
		size *= 2;
	struct mbox_key_slot {
		uint32_t msg;        /* first message with the key, + 1 */
		uint32_t copies;
	} *kt = xcalloc(size, sizeof(*kt));
	uint32_t *ut = xcalloc(size, sizeof(*ut));
	for (uint32_t i = 0; i < n; i++) {
		const unsigned char *d = ms->msgs[i].digest;
		size_t h = (size_t)mbox_get64(d) & (size - 1);
		while (kt[h].msg != 0 && memcmp(ms->msgs[kt[h].msg - 1].digest, d, MBOX_KEY_LEN) != 0)
			h = (h + 1) & (size - 1);
		if (kt[h].msg == 0)
			kt[h].msg = i + 1;
		unsigned ordinal = kt[h].copies++;
		if (i < keep) {
			ms->store.messages[i].uidl = xstrdup(old->uidls[i]);
			if (ms->sources != NULL)
				ms->sources[i] = STORE_UIDL_REMEMBERED;
		} else {
			ms->store.messages[i].uidl = mbox_uidl_for(d, ordinal);
		}
		for (unsigned round = 1;; round++) {
			const char *u = ms->store.messages[i].uidl;
			size_t len = strlen(u);
			size_t g = (size_t)mbox_index_sum(u, len, 5) & (size - 1);
			while (ut[g] != 0 && strcmp(ms->store.messages[ut[g] - 1].uidl, u) != 0)
				g = (g + 1) & (size - 1);
			if (ut[g] == 0) {
				ut[g] = i + 1;
				break;
			}
			/* taken (the index's UIDLs are unique: only an appended one) */
			char *v = mbox_uidl_for(d, round * 1000000 + i);
			log_warnx("mbox %s: message %u had the UIDL of another, now %s", ms->path, i + 1, v);
			free(ms->store.messages[i].uidl);
			ms->store.messages[i].uidl = v;
		}
	}
	free(kt);
	free(ut);
}

/* ---------------------------------------------------------------- I/O */

static int
mbox_pwrite_all(int fd, const char *buf, size_t len, uint64_t off)
{
	while (len > 0) {
		ssize_t n = pwrite(fd, buf, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0) {
			errno = EIO;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static int
mbox_pread_all(int fd, char *buf, size_t len, uint64_t off)
{
	while (len > 0) {
		ssize_t n = pread(fd, buf, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0) {
			errno = EIO;   /* shorter than it was a moment ago */
			return -1;
		}
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* Bytes [src_off, src_off+len) of src to dst at dst_off, hashed into md
 * when md is not NULL. */
static int
mbox_copy(int src, uint64_t src_off, int dst, uint64_t dst_off, uint64_t len, char *buf,
    EVP_MD_CTX *md)
{
	while (len > 0) {
		size_t n = len < MBOX_CHUNK ? (size_t)len : MBOX_CHUNK;
		if (mbox_pread_all(src, buf, n, src_off) < 0)
			return -1;
		if (md != NULL && EVP_DigestUpdate(md, buf, n) != 1)
			fatalx("SHA-256 update failed");
		if (mbox_pwrite_all(dst, buf, n, dst_off) < 0)
			return -1;
		src_off += n;
		dst_off += n;
		len -= n;
	}
	return 0;
}

/* ---------------------------------------------------------------- journal */

struct mbox_journal {
	int fd;
	uint64_t dev, ino, d, s, tlen;
	char phase;       /* 'W' written, 'C' copied */
};

struct mbox_source {
	int fd;
	uint64_t off, len;
};

static void
mbox_fsync_dir(struct mbox_store *ms)
{
	if (fsync(ms->dir_fd) < 0)
		log_warn("mbox %s: fsync of its directory", ms->path);
}

/* Write a journal of T = the sources' bytes, to be put at d in the mbox
 * whose size is s; durable when this returns 0. */
static int
mbox_journal_create(struct mbox_store *ms, const struct stat *st, uint64_t d, uint64_t s,
    const struct mbox_source *src, size_t nsrc, char *buf, char **error_r)
{
	char *name = mbox_name(ms, ".popbox-expunge");
	char *tmp = mbox_name(ms, ".popbox-expunge.new");
	uint64_t tlen = 0;
	int r = -1;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
		fatalx("SHA-256 init failed");
	for (size_t i = 0; i < nsrc; i++)
		tlen += src[i].len;
	int fd = openat(ms->dir_fd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		*error_r = xasprintf("cannot create the expunge journal: %s", strerror(errno));
		goto out;
	}
	char header[MBOX_JOURNAL_HEADER];
	memset(header, ' ', sizeof(header));
	int n = snprintf(header, sizeof(header), "%s %llu %llu %" PRIu64 " %" PRIu64 " %" PRIu64 "\n",
	    MBOX_JOURNAL_MAGIC, (unsigned long long)st->st_dev, (unsigned long long)st->st_ino, d, s, tlen);
	if (n < 0 || n >= MBOX_JOURNAL_PHASE_AT)
		fatalx("journal header too long");
	header[n] = ' ';
	header[MBOX_JOURNAL_PHASE_AT] = 'W';
	if (EVP_DigestUpdate(md, header, MBOX_JOURNAL_PHASE_AT) != 1)
		fatalx("SHA-256 update failed");
	if (mbox_pwrite_all(fd, header, sizeof(header), 0) < 0)
		goto io;
	uint64_t at = MBOX_JOURNAL_HEADER;
	for (size_t i = 0; i < nsrc; i++) {
		if (mbox_copy(src[i].fd, src[i].off, fd, at, src[i].len, buf, md) < 0)
			goto io;
		at += src[i].len;
	}
	unsigned char sum[EVP_MAX_MD_SIZE];
	unsigned int sumlen = 0;
	if (EVP_DigestFinal_ex(md, sum, &sumlen) != 1 || sumlen != MBOX_DIGEST_LEN)
		fatalx("SHA-256 final failed");
	if (mbox_pwrite_all(fd, (char *)sum, sumlen, at) < 0 || fsync(fd) < 0)
		goto io;
	if (renameat(ms->dir_fd, tmp, ms->dir_fd, name) < 0)
		goto io;
	mbox_fsync_dir(ms);
	r = 0;
	goto out;
io:
	*error_r = xasprintf("cannot write the expunge journal (nothing was changed): %s",
	    strerror(errno));
	unlinkat(ms->dir_fd, tmp, 0);
out:
	if (fd >= 0)
		close(fd);
	EVP_MD_CTX_free(md);
	free(name);
	free(tmp);
	return r;
}

/* Open and check the journal: 1 valid (j filled, j->fd open), 0 none or
 * invalid (an invalid one was removed: written only partly, the mbox was
 * not touched yet), -1 error. */
static int
mbox_journal_read(struct mbox_store *ms, struct mbox_journal *j, char *buf, char **error_r)
{
	char *name = mbox_name(ms, ".popbox-expunge");
	struct stat st;
	char header[MBOX_JOURNAL_HEADER + 1];
	int valid = 0;
	memset(j, 0, sizeof(*j));
	j->fd = openat(ms->dir_fd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (j->fd < 0) {
		if (errno == ENOENT) {
			free(name);
			return 0;
		}
		*error_r = xasprintf("cannot open the expunge journal: %s", strerror(errno));
		free(name);
		return -1;
	}
	if (fstat(j->fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (uint64_t)st.st_size < MBOX_JOURNAL_HEADER + MBOX_DIGEST_LEN ||
	    mbox_pread_all(j->fd, header, MBOX_JOURNAL_HEADER, 0) < 0)
		goto invalid;
	header[MBOX_JOURNAL_HEADER] = '\0';
	{
		unsigned long long dev, ino;
		uint64_t d, s, tlen;
		int end = 0;
		char magic2[16];
		if (sscanf(header, "popbox-mbox-expunge %15s %llu %llu %" SCNu64 " %" SCNu64 " %" SCNu64 "%n",
		    magic2, &dev, &ino, &d, &s, &tlen, &end) != 6 || strcmp(magic2, "1") != 0)
			goto invalid;
		j->dev = dev;
		j->ino = ino;
		j->d = d;
		j->s = s;
		j->tlen = tlen;
	}
	j->phase = header[MBOX_JOURNAL_PHASE_AT];
	if ((j->phase != 'W' && j->phase != 'C') || j->tlen > INT64_MAX ||
	    (uint64_t)st.st_size != MBOX_JOURNAL_HEADER + j->tlen + MBOX_DIGEST_LEN ||
	    j->d > j->s || j->tlen > j->s - j->d)
		goto invalid;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, header, MBOX_JOURNAL_PHASE_AT) != 1)
		fatalx("SHA-256 init failed");
	uint64_t at = MBOX_JOURNAL_HEADER, left = j->tlen;
	bool ok = true;
	while (left > 0 && ok) {
		size_t n = left < MBOX_CHUNK ? (size_t)left : MBOX_CHUNK;
		ok = mbox_pread_all(j->fd, buf, n, at) == 0 && EVP_DigestUpdate(md, buf, n) == 1;
		at += n;
		left -= n;
	}
	unsigned char sum[EVP_MAX_MD_SIZE], want[MBOX_DIGEST_LEN];
	unsigned int sumlen = 0;
	ok = ok && EVP_DigestFinal_ex(md, sum, &sumlen) == 1 && sumlen == MBOX_DIGEST_LEN &&
	    mbox_pread_all(j->fd, (char *)want, MBOX_DIGEST_LEN, at) == 0 &&
	    memcmp(sum, want, MBOX_DIGEST_LEN) == 0;
	EVP_MD_CTX_free(md);
	if (!ok)
		goto invalid;
	valid = 1;
	free(name);
	return valid;
invalid:
	/* Cut short before it was complete and fsynced: the mbox is as
	 * it was before that expunge. */
	log_warnx("mbox %s: removing an incomplete expunge journal (the mbox was not changed)",
	    ms->path);
	close(j->fd);
	j->fd = -1;
	unlinkat(ms->dir_fd, name, 0);
	mbox_fsync_dir(ms);
	free(name);
	return 0;
}

static void
mbox_journal_remove(struct mbox_store *ms, struct mbox_journal *j)
{
	char *name = mbox_name(ms, ".popbox-expunge");
	close(j->fd);
	j->fd = -1;
	if (unlinkat(ms->dir_fd, name, 0) < 0)
		log_warn("mbox %s: removing the expunge journal", ms->path);
	mbox_fsync_dir(ms);
	free(name);
}

/* Steps 3-6 of the expunge (top of file) from a valid journal in phase
 * 'W', on the mbox fd (locked). */
static int
mbox_journal_apply(struct mbox_store *ms, int fd, struct mbox_journal *j, char *buf,
    char **error_r)
{
	uint64_t end = j->d + j->tlen;
	if (mbox_copy(j->fd, MBOX_JOURNAL_HEADER, fd, j->d, j->tlen, buf, NULL) < 0 || fsync(fd) < 0)
		goto io;
	if (j->s > end) {
		uint64_t m = j->s - end < MBOX_MARKER_LEN ? j->s - end : MBOX_MARKER_LEN;
		if (mbox_pwrite_all(fd, MBOX_MARKER, (size_t)m, end) < 0 || fsync(fd) < 0)
			goto io;
	}
	if (mbox_pwrite_all(j->fd, "C", 1, MBOX_JOURNAL_PHASE_AT) < 0 || fsync(j->fd) < 0)
		goto io;
	j->phase = 'C';
	if (j->s > end && (ftruncate(fd, (off_t)end) < 0 || fsync(fd) < 0))
		goto io;
	mbox_journal_remove(ms, j);
	return 0;
io:
	*error_r = xasprintf("expunge interrupted, finished at the next login: %s", strerror(errno));
	return -1;
}


/* ---------------------------------------------------------------- append journal */

/* A delivery (store_mbox_deliver_*) names its spool file BASE.popbox-append
 * before it writes to the mbox: a fixed header "popbox-mbox-append 1 DEV INO
 * S K L" (the mbox's size S before, K separator newlines, L message bytes),
 * then the L bytes. Under the lock, whoever comes next compares what follows
 * S with "\n" * K + those bytes: all of it there, the delivery completed;
 * a part of it and nothing else, it is cut off again; anything else (an MTA
 * appended after a partial write) is left as it is, nothing removed, and
 * the journal kept aside for the administrator. */
#define MBOX_APPEND_MAGIC "popbox-mbox-append 1"

static int
mbox_append_recover(struct mbox_store *ms, int fd, char *buf, char **error_r)
{
	char *name = mbox_name(ms, ".popbox-append");
	char header[MBOX_JOURNAL_HEADER + 1];
	struct stat st, jst;
	int r = 0;
	int jfd = openat(ms->dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (jfd < 0) {
		free(name);
		return 0;
	}
	unsigned long long dev = 0, ino = 0;
	uint64_t s = 0, k = 0, l = 0;
	bool valid = fstat(jfd, &jst) == 0 && (uint64_t)jst.st_size >= MBOX_JOURNAL_HEADER &&
	    mbox_pread_all(jfd, header, MBOX_JOURNAL_HEADER, 0) == 0;
	if (valid) {
		header[MBOX_JOURNAL_HEADER] = '\0';
		valid = sscanf(header, MBOX_APPEND_MAGIC " %llu %llu %" SCNu64 " %" SCNu64 " %" SCNu64,
		    &dev, &ino, &s, &k, &l) == 5 && k <= 2 &&
		    (uint64_t)jst.st_size == MBOX_JOURNAL_HEADER + l;
	}
	if (!valid || fd < 0 || fstat(fd, &st) < 0 || (uint64_t)st.st_dev != dev ||
	    (uint64_t)st.st_ino != ino) {
		/* Named only when complete: a bad one is not ours to judge. */
		char *aside = mbox_name(ms, ".popbox-append.orphan");
		renameat(ms->dir_fd, name, ms->dir_fd, aside);
		log_warnx("mbox %s: a delivery journal that does not fit was moved to %s", ms->path, aside);
		free(aside);
		goto done;
	}
	uint64_t cur = (uint64_t)st.st_size, want = k + l;
	uint64_t have = cur > s ? cur - s : 0;
	uint64_t cmp = have < want ? have : want;
	bool same = true;
	char *mine = xmalloc(MBOX_CHUNK);
	for (uint64_t off = 0; off < cmp && same;) {
		size_t n = cmp - off < MBOX_CHUNK ? (size_t)(cmp - off) : MBOX_CHUNK;
		if (mbox_pread_all(fd, buf, n, s + off) < 0) {
			*error_r = xasprintf("reading after an interrupted delivery: %s", strerror(errno));
			free(mine);
			r = -1;
			goto out;
		}
		size_t i = 0;
		while (i < n && off + i < k)
			mine[i++] = '\n';
		if (i < n && mbox_pread_all(jfd, mine + i, n - i, MBOX_JOURNAL_HEADER + (off + i - k)) < 0) {
			*error_r = xasprintf("reading the delivery journal: %s", strerror(errno));
			free(mine);
			r = -1;
			goto out;
		}
		same = memcmp(buf, mine, n) == 0;
		off += n;
	}
	free(mine);
	if (!same) {
		char *aside = mbox_name(ms, ".popbox-append.orphan");
		renameat(ms->dir_fd, name, ms->dir_fd, aside);
		log_warnx("mbox %s: an interrupted delivery was followed by other mail; "
		    "left as it is (journal in %s)", ms->path, aside);
		free(aside);
		goto done;
	}
	if (have > 0 && have < want) {
		log_warnx("mbox %s: removing %" PRIu64 " bytes of an interrupted delivery", ms->path, have);
		if (ftruncate(fd, (off_t)s) < 0 || fsync(fd) < 0) {
			*error_r = xasprintf("cutting an interrupted delivery: %s", strerror(errno));
			r = -1;
			goto out;
		}
	}
	unlinkat(ms->dir_fd, name, 0);
done:
	mbox_fsync_dir(ms);
out:
	close(jfd);
	free(name);
	return r;
}

/* Under the lock: finish an expunge that a crash interrupted (top of
 * file). 0: nothing left to do; -1: *error_r, try later. */
static int
mbox_journal_recover(struct mbox_store *ms, int fd, char *buf, char **error_r)
{
	if (mbox_append_recover(ms, fd, buf, error_r) < 0)
		return -1;
	/* A journal being written when a crash came: never renamed into
	 * place, so the mbox was not touched after it. */
	char *tmp = mbox_name(ms, ".popbox-expunge.new");
	if (unlinkat(ms->dir_fd, tmp, 0) == 0)
		log_warnx("mbox %s: removed an unfinished expunge journal (the mbox was not changed)",
		    ms->path);
	free(tmp);
	for (int round = 0; round < 4; round++) {
		struct mbox_journal j;
		int r = mbox_journal_read(ms, &j, buf, error_r);
		if (r <= 0)
			return r;
		struct stat st;
		if (fd < 0 || fstat(fd, &st) < 0 || (uint64_t)st.st_dev != j.dev ||
		    (uint64_t)st.st_ino != j.ino) {
			/* Not this mbox any more: its data is a copy, the mbox it
			 * belonged to is gone. Kept for the administrator. */
			char *name = mbox_name(ms, ".popbox-expunge");
			char *aside = mbox_name(ms, ".popbox-expunge.orphan");
			close(j.fd);
			renameat(ms->dir_fd, name, ms->dir_fd, aside);
			log_warnx("mbox %s: an expunge journal for another file was moved to %s",
			    ms->path, aside);
			free(name);
			free(aside);
			return 0;
		}
		uint64_t cur = (uint64_t)st.st_size, end = j.d + j.tlen;
		log_warnx("mbox %s: finishing an interrupted expunge (phase %c)", ms->path, j.phase);
		bool truncated = false;
		if (j.phase == 'C' && j.s > end) {
			char mark[MBOX_MARKER_LEN];
			uint64_t m = j.s - end < MBOX_MARKER_LEN ? j.s - end : MBOX_MARKER_LEN;
			truncated = !(cur >= end + m && mbox_pread_all(fd, mark, (size_t)m, end) == 0 &&
			    memcmp(mark, MBOX_MARKER, (size_t)m) == 0);
		}
		if (j.phase == 'C' && (truncated || j.s == end)) {
			mbox_journal_remove(ms, &j);
			return 0;
		}
		if (cur < j.s) {
			close(j.fd);
			*error_r = xasprintf("the mbox is shorter than its expunge journal says (%" PRIu64
			    " < %" PRIu64 "): left for the administrator", cur, j.s);
			return -1;
		}
		if (cur > j.s) {
			/* Mail appended after the crash: into the journal too,
			 * so it moves down with the rest. */
			struct mbox_source src[2] = {
				{ j.fd, MBOX_JOURNAL_HEADER, j.tlen },
				{ fd, j.s, cur - j.s },
			};
			int cr = mbox_journal_create(ms, &st, j.d, cur, src, 2, buf, error_r);
			close(j.fd);
			if (cr < 0)
				return -1;
			continue;
		}
		if (j.phase == 'C')
			j.phase = 'W';   /* not truncated yet: redo (idempotent) */
		r = mbox_journal_apply(ms, fd, &j, buf, error_r);
		if (j.fd >= 0)
			close(j.fd);
		return r;
	}
	*error_r = xstrdup("expunge journal: recovery did not settle");
	return -1;
}

/* ---------------------------------------------------------------- open */

/* Under the lock: does the file still hold the session's messages where
 * they were (only appended to, or flags changed in place)? Updates
 * ms->seen; sets ms->stale when not. */
static enum store_status
mbox_verify(struct mbox_store *ms, char **error_r)
{
	struct stat st;
	if (fstat(ms->fd, &st) < 0) {
		*error_r = xasprintf("mbox %s: fstat: %s", ms->path, strerror(errno));
		return STORE_TEMP;
	}
	struct mbox_ident now;
	mbox_ident_of(&st, &now);
	if (mbox_ident_eq(&now, &ms->seen))
		return STORE_OK;
	if (now.dev != ms->seen.dev || now.ino != ms->seen.ino || now.size < ms->snap_size)
		goto stale;
	struct mbox_message *msgs = NULL;
	uint32_t count = 0;
	uint64_t size = 0;
	char *err = NULL;
	if (mbox_parse_fd(ms->fd, ms->quoting, 0, MBOX_MAX_MESSAGES, &msgs, &count, &size, &err) !=
	    STORE_OK) {
		free(err);
		free(msgs);
		goto stale;
	}
	bool same = count >= ms->store.count;
	for (uint32_t i = 0; same && i < ms->store.count; i++) {
		const struct mbox_message *b = &msgs[i];
		same = mbox_rec_from(ms->recs, i) == b->from_offset &&
		    mbox_rec_data_offset(ms->recs, i) == b->data_offset &&
		    mbox_rec_data_length(ms->recs, i) == b->data_length &&
		    mbox_rec_size(ms->recs, i) == b->size &&
		    memcmp(mbox_rec(ms->recs, i) + MBOX_IX_REC_KEY, b->digest, MBOX_KEY_LEN) == 0;
	}
	free(msgs);
	if (!same)
		goto stale;
	ms->seen = now;
	return STORE_OK;
stale:
	ms->stale = true;
	*error_r = xasprintf("mbox %s was rewritten by another program during the session: "
	    "nothing more is read or deleted in this session", ms->path);
	return STORE_TEMP;
}

static enum store_status
mbox_lock_status(struct mbox_store *ms, enum lock_status r, char **error_r)
{
	if (r == LOCK_HELD) {
		*error_r = xasprintf("mbox %s is locked by another program (waited %u ms)", ms->path,
		    ms->lock_wait_ms);
		return STORE_IN_USE;
	}
	return STORE_TEMP;
}

static enum store_status
store_mbox_open_with(const char *path, const struct store_open_options *options,
    struct store **store_r, char **error_r)
{
	struct mbox_store *ms = xcalloc(1, sizeof(*ms));
	enum store_status status = STORE_OK;
	struct mbox_lock mlock;
	bool locked = false;
	struct mbox_index ix;
	bool have_ix = false;
	char *buf = NULL;

	*store_r = NULL;
	memset(&mbox_last_open, 0, sizeof(mbox_last_open));
	ms->store.backend = &store_mbox;
	ms->path = xstrdup(path);
	ms->fd = -1;
	ms->dir_fd = -1;
	ms->quoting = options != NULL ? options->mbox_quoting : WIRE_FROM_MBOXO;
	ms->lock_wait_ms = options != NULL ? options->mbox_lock_wait_ms : MBOX_DEFAULT_LOCK_WAIT_MS;
	ms->uidl_format = options != NULL ? options->uidl_format : UIDL_FORMAT_POPBOX;

	const char *slash = strrchr(path, '/');
	const char *base = slash != NULL ? slash + 1 : path;
	if (*base == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
		*error_r = xasprintf("mbox %s: not a file name", path);
		status = STORE_PERM;
		goto fail;
	}
	ms->base = xstrdup(base);
	char *dir = slash == NULL ? xstrdup(".") : slash == path ? xstrdup("/") :
	    xstrndup(path, (size_t)(slash - path));
	ms->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ms->dir_fd < 0) {
		int e = errno;
		*error_r = xasprintf("mbox %s: cannot open its directory %s: %s", path, dir, strerror(e));
		free(dir);
		status = mbox_errno_status(e);
		goto fail;
	}
	free(dir);

	char *lockname = mbox_name(ms, ".popbox-lock");
	char *lerr = NULL;
	enum lock_status lr = lock_acquire(ms->dir_fd, lockname, &ms->session_lock, &lerr);
	free(lockname);
	if (lr == LOCK_HELD) {
		status = STORE_IN_USE;
		*error_r = xasprintf("mbox %s: another POP3 session holds it", path);
		goto fail;
	}
	if (lr != LOCK_OK) {
		status = mbox_errno_status(errno);
		*error_r = xasprintf("mbox %s: %s (popboxd needs to write in the mbox's directory)",
		    path, lerr);
		free(lerr);
		goto fail;
	}

	ms->fd = openat(ms->dir_fd, ms->base, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	ms->writable = ms->fd >= 0;
	if (ms->fd < 0 && (errno == EACCES || errno == EROFS))
		ms->fd = openat(ms->dir_fd, ms->base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (ms->fd < 0 && errno != ENOENT) {
		int e = errno;
		*error_r = xasprintf("mbox %s: cannot open: %s", path, strerror(e));
		status = mbox_errno_status(e);
		goto fail;
	}
	struct stat st;
	if (ms->fd >= 0) {
		if (fstat(ms->fd, &st) < 0) {
			*error_r = xasprintf("mbox %s: fstat: %s", path, strerror(errno));
			status = STORE_TEMP;
			goto fail;
		}
		if (!S_ISREG(st.st_mode) || st.st_nlink != 1) {
			*error_r = xasprintf("mbox %s: not a regular file with one link", path);
			status = STORE_PERM;
			goto fail;
		}
		if (st.st_uid != geteuid()) {
			*error_r = xasprintf("mbox %s is owned by uid %lu, not by uid %lu", path,
			    (unsigned long)st.st_uid, (unsigned long)geteuid());
			status = STORE_PERM;
			goto fail;
		}
	}

	/* A missing mbox is an empty maildrop (not created: the MTA does,
	 * with the owner and mode it wants). */
	lr = mbox_lock_take(&mlock, ms->dir_fd, ms->base, ms->fd, ms->writable, ms->lock_wait_ms,
	    &lerr);
	if (lr != LOCK_OK) {
		status = mbox_lock_status(ms, lr, error_r);
		if (lr == LOCK_ERROR) {
			*error_r = xasprintf("mbox %s: %s", path, lerr);
			free(lerr);
		}
		goto fail;
	}
	locked = true;
	buf = xmalloc(MBOX_CHUNK);
	if (ms->fd >= 0 && ms->writable && mbox_journal_recover(ms, ms->fd, buf, &lerr) < 0) {
		*error_r = xasprintf("mbox %s: %s", path, lerr);
		free(lerr);
		status = STORE_TEMP;
		goto fail;
	}
	if (ms->fd < 0)
		goto done;
	if (fstat(ms->fd, &st) < 0) {
		*error_r = xasprintf("mbox %s: fstat: %s", path, strerror(errno));
		status = STORE_TEMP;
		goto fail;
	}
	mbox_ident_of(&st, &ms->seen);
	have_ix = mbox_index_read(ms, buf, &ix);
	bool usable = have_ix && !ix.legacy && ix.quoting == (int)ms->quoting;
	uint64_t parse_from = 0;
	if (usable && mbox_ident_eq(&ix.ident, &ms->seen)) {
		/* Warm: the file is as the index describes it. */
		ms->recs = ix.recs;
		ms->store.count = ix.count;
		ms->store.messages = ix.smsgs;
		for (uint32_t i = 0; i < ix.count; i++)
			ms->store.messages[i].uidl = ix.strings +
			    mbox_get32(mbox_rec(ix.recs, i) + MBOX_IX_REC_UIDL_OFF);
		ms->strings = ix.strings;
		ms->strings_len = ix.strings_len;
		ms->map = ix.map;
		ms->map_len = ix.map_len;
		ix.map = NULL;
		ms->snap_size = ms->seen.size;
		mbox_last_open = (struct mbox_open_stats){ ms->seen.size, 0, ix.count };
		log_debug("mbox %s: parsed 0 bytes from offset %" PRIu64 " (%u messages from the index)",
		    path, ms->seen.size, ix.count);
		goto done;
	}
	if (have_ix)
		mbox_index_expand(&ix);
	if (usable && ix.appends > 0 && mbox_ident_eq(&ix.chain_end, &ms->seen)) {
		/* Only our own appends since: the index holds the file up to
		 * ix.ident.size, a From_ line starts there. */
		struct mbox_message *tail = NULL;
		uint32_t n = 0;
		uint64_t size = 0;
		char *perr = NULL;
		if (mbox_parse_fd(ms->fd, ms->quoting, ix.ident.size, MBOX_MAX_MESSAGES - ix.count, &tail,
		    &n, &size, &perr) == STORE_OK && size == ms->seen.size) {
			ms->msgs = xmalloc(((size_t)ix.count + n + 1) * sizeof(*ms->msgs));
			memcpy(ms->msgs, ix.msgs, (size_t)ix.count * sizeof(*ms->msgs));
			memcpy(ms->msgs + ix.count, tail, (size_t)n * sizeof(*ms->msgs));
			ms->store.count = ix.count + n;
			parse_from = ix.ident.size;
		} else {
			log_warnx("mbox %s: what was appended since the index does not parse (%s); "
			    "parsing all of it", path, perr != NULL ? perr : "size changed");
		}
		free(perr);
		free(tail);
	}
	if (ms->msgs == NULL) {
		char *perr = NULL;
		uint64_t size = 0;
		status = mbox_parse_fd(ms->fd, ms->quoting, 0, MBOX_MAX_MESSAGES, &ms->msgs,
		    &ms->store.count, &size, &perr);
		if (status != STORE_OK) {
			*error_r = xasprintf("mbox %s: %s", path, perr);
			free(perr);
			goto fail;
		}
		if (size != ms->seen.size) {
			/* cannot be under the lock, unless someone ignores it */
			*error_r = xasprintf("mbox %s changed while locked", path);
			status = STORE_TEMP;
			goto fail;
		}
	}
	ms->snap_size = ms->seen.size;
	mbox_last_open = (struct mbox_open_stats){ parse_from, ms->seen.size - parse_from,
		parse_from > 0 ? ix.count : 0 };
	log_debug("mbox %s: parsed %" PRIu64 " bytes from offset %" PRIu64
	    " (%u messages from the index)", path, ms->seen.size - parse_from, parse_from,
	    parse_from > 0 ? ix.count : 0);
	ms->store.messages = xcalloc(ms->store.count ? ms->store.count : 1,
	    sizeof(*ms->store.messages));
	ms->sources = xcalloc(ms->store.count ? ms->store.count : 1, sizeof(*ms->sources));
	for (uint32_t i = 0; i < ms->store.count; i++)
		ms->sources[i] = STORE_UIDL_OWN;
	if (parse_from > 0 && ms->uidl_format != UIDL_FORMAT_POPA3D)
		mbox_assign_tail(ms, &ix, ix.count);
	else
		mbox_assign_uidls(ms, have_ix ? &ix : NULL);
	if (!options || !options->keep_index)
		mbox_index_write(ms, &ms->seen, ms->msgs, ms->store.messages, ms->store.count);
	ms->recs = mbox_recs_of(ms->msgs, ms->store.count);
	if (ms->recs == NULL) {
		*error_r = xasprintf("mbox %s: a From_ line of 4 GB or more", path);
		status = STORE_PERM;
		goto fail;
	}
	free(ms->msgs);
	ms->msgs = NULL;
done:
	for (uint32_t i = 0; i < ms->store.count; i++) {
		uint64_t msize = mbox_rec_size(ms->recs, i);
		ms->store.messages[i].size = msize;
		ms->store.total_size += msize;
		if (options != NULL && options->report != NULL) {
			/* no file names in an mbox: messages are named by number;
			 * a message of its own without uidl_format = popa3d had
			 * no old list to be in */
			enum store_uidl_source src = ms->sources != NULL ? ms->sources[i] :
			    STORE_UIDL_REMEMBERED;
			char name[32];
			snprintf(name, sizeof(name), "message %" PRIu32, i + 1);
			options->report(options->report_arg, name, ms->store.messages[i].uidl, src,
			    src != STORE_UIDL_OWN ? UIDL_OLD_FOUND :
			    ms->uidl_format == UIDL_FORMAT_POPA3D ? UIDL_OLD_NOT_LISTED : UIDL_OLD_NO_LIST);
		}
	}
	free(ms->sources);
	ms->sources = NULL;
	mbox_lock_release(&mlock);
	if (have_ix)
		mbox_index_free(&ix);
	free(buf);
	*store_r = &ms->store;
	return STORE_OK;
fail:
	if (locked)
		mbox_lock_release(&mlock);
	if (have_ix)
		mbox_index_free(&ix);
	free(buf);
	ms->store.backend->close(&ms->store);
	return status;
}

static enum store_status
store_mbox_open(const char *path, struct store **store_r, char **error_r)
{
	return store_mbox_open_with(path, NULL, store_r, error_r);
}

static enum store_status
store_mbox_message_open(struct store *store, uint32_t idx, struct store_stream *stream_r,
    char **error_r)
{
	struct mbox_store *ms = (struct mbox_store *)store;
	struct mbox_lock mlock;
	char *lerr = NULL;

	if (idx >= store->count || ms->fd < 0)
		return STORE_GONE;
	if (ms->stale) {
		*error_r = xasprintf("mbox %s was rewritten by another program", ms->path);
		return STORE_TEMP;
	}
	/* Not a byte while another program holds the lock (it may be
	 * rewriting the file); then the file must still be what we listed. */
	enum lock_status lr = mbox_lock_take(&mlock, ms->dir_fd, ms->base, ms->fd, false,
	    ms->lock_wait_ms, &lerr);
	if (lr != LOCK_OK) {
		if (lr == LOCK_ERROR) {
			*error_r = xasprintf("mbox %s: %s", ms->path, lerr);
			free(lerr);
		} else {
			*error_r = xasprintf("mbox %s is locked by another program", ms->path);
		}
		return STORE_TEMP;
	}
	enum store_status status = mbox_verify(ms, error_r);
	mbox_lock_release(&mlock);
	if (status != STORE_OK)
		return status;
	int fd = fcntl(ms->fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0) {
		*error_r = xasprintf("mbox %s: dup: %s", ms->path, strerror(errno));
		return STORE_TEMP;
	}
	memset(stream_r, 0, sizeof(*stream_r));
	stream_r->fd = fd;
	stream_r->offset = (off_t)mbox_rec_data_offset(ms->recs, idx);
	stream_r->length = (off_t)mbox_rec_data_length(ms->recs, idx);
	stream_r->from_quoting = ms->quoting;
	return STORE_OK;
}

static enum store_status
store_mbox_expunge(struct store *store, const bool *deleted, char **error_r)
{
	struct mbox_store *ms = (struct mbox_store *)store;
	struct mbox_lock mlock;
	char *lerr = NULL;
	uint32_t first = UINT32_MAX;
	enum store_status status = STORE_OK;

	for (uint32_t i = 0; i < store->count && first == UINT32_MAX; i++)
		if (deleted[i])
			first = i;
	if (first == UINT32_MAX)
		return STORE_OK;
	if (ms->stale) {
		*error_r = xasprintf("mbox %s was rewritten by another program: nothing deleted",
		    ms->path);
		return STORE_TEMP;
	}
	if (!ms->writable) {
		*error_r = xasprintf("mbox %s is not writable: nothing deleted", ms->path);
		return STORE_PERM;
	}
	enum lock_status lr = mbox_lock_take(&mlock, ms->dir_fd, ms->base, ms->fd, true,
	    ms->lock_wait_ms, &lerr);
	if (lr != LOCK_OK) {
		if (lr == LOCK_ERROR) {
			*error_r = xasprintf("mbox %s: %s", ms->path, lerr);
			free(lerr);
		} else {
			*error_r = xasprintf("mbox %s is locked by another program: nothing deleted",
			    ms->path);
		}
		return STORE_TEMP;
	}
	char *buf = xmalloc(MBOX_CHUNK);
	struct mbox_source *src = NULL;
	if (mbox_journal_recover(ms, ms->fd, buf, &lerr) < 0) {
		*error_r = xasprintf("mbox %s: %s", ms->path, lerr);
		free(lerr);
		status = STORE_TEMP;
		goto out;
	}
	status = mbox_verify(ms, error_r);
	if (status != STORE_OK)
		goto out;
	struct stat st;
	if (fstat(ms->fd, &st) < 0) {
		*error_r = xasprintf("mbox %s: fstat: %s", ms->path, strerror(errno));
		status = STORE_TEMP;
		goto out;
	}
	uint64_t cur = (uint64_t)st.st_size;
	uint64_t d = mbox_rec_from(ms->recs, first);
	/* T: the kept regions after d (adjacent ones merged), then what was
	 * appended since the scan. */
	size_t nsrc = 0;
	src = xcalloc((size_t)(store->count - first) + 1, sizeof(*src));
	for (uint32_t i = first; i < store->count; i++) {
		if (deleted[i])
			continue;
		uint64_t from = mbox_rec_from(ms->recs, i), end = mbox_rec_end(ms->recs, i);
		if (nsrc > 0 && src[nsrc - 1].off + src[nsrc - 1].len == from)
			src[nsrc - 1].len += end - from;
		else
			src[nsrc++] = (struct mbox_source){ ms->fd, from, end - from };
	}
	bool appended = cur > ms->snap_size;
	if (appended) {
		if (nsrc > 0 && src[nsrc - 1].off + src[nsrc - 1].len == ms->snap_size)
			src[nsrc - 1].len += cur - ms->snap_size;
		else
			src[nsrc++] = (struct mbox_source){ ms->fd, ms->snap_size, cur - ms->snap_size };
	}
	if (nsrc == 0) {
		/* Nothing kept after d: one truncation, which happens whole
		 * or not at all. */
		if (ftruncate(ms->fd, (off_t)d) < 0 || fsync(ms->fd) < 0) {
			*error_r = xasprintf("mbox %s: truncate: %s", ms->path, strerror(errno));
			status = STORE_TEMP;
			goto out;
		}
	} else {
		if (mbox_journal_create(ms, &st, d, cur, src, nsrc, buf, &lerr) < 0) {
			*error_r = xasprintf("mbox %s: %s", ms->path, lerr);
			free(lerr);
			status = STORE_TEMP;
			goto out;
		}
		struct mbox_journal j;
		int r = mbox_journal_read(ms, &j, buf, &lerr);
		if (r <= 0) {
			*error_r = xasprintf("mbox %s: %s", ms->path, r < 0 ? lerr : "journal vanished");
			free(lerr);
			status = STORE_TEMP;
			goto out;
		}
		r = mbox_journal_apply(ms, ms->fd, &j, buf, &lerr);
		if (j.fd >= 0)
			close(j.fd);
		if (r < 0) {
			log_warnx("mbox %s: %s", ms->path, lerr);
			free(lerr);
			lerr = NULL;
			/* Try once more now; else the next login does. */
			if (mbox_journal_recover(ms, ms->fd, buf, &lerr) < 0) {
				*error_r = xasprintf("mbox %s: %s", ms->path, lerr);
				free(lerr);
				status = STORE_TEMP;
				goto out;
			}
		}
	}
	/* The index of what is left: kept messages moved down (the store
	 * itself stays as listed: the caller counts its deletions). */
	{
		struct mbox_message *kept = xcalloc(store->count, sizeof(*kept));
		struct store_message *kmsg = xcalloc(store->count, sizeof(*kmsg));
		uint32_t k = 0;
		uint64_t shift = 0;
		for (uint32_t i = 0; i < store->count; i++) {
			struct mbox_message m;
			mbox_rec_get(ms->recs, i, &m);
			if (deleted[i]) {
				shift += m.end_offset - m.from_offset;
				continue;
			}
			m.from_offset -= shift;
			m.data_offset -= shift;
			m.end_offset -= shift;
			kept[k] = m;
			kmsg[k] = store->messages[i];
			k++;
		}
		struct mbox_ident after = { .known = false };
		if (!appended && fstat(ms->fd, &st) == 0)
			mbox_ident_of(&st, &after);
		mbox_index_write(ms, &after, kept, kmsg, k);
		free(kept);
		free(kmsg);
		/* The session ends with the expunge. */
		ms->stale = true;
	}
out:
	mbox_lock_release(&mlock);
	free(src);
	free(buf);
	return status;
}

static void
store_mbox_close(struct store *store)
{
	struct mbox_store *ms = (struct mbox_store *)store;
	if (store == NULL)
		return;
	for (uint32_t i = 0; i < store->count; i++)
		if (mbox_uidl_owned(ms, store->messages[i].uidl))
			free(store->messages[i].uidl);
	if (ms->map != NULL) {
		mbox_map_put(ms->map, ms->map_len);    /* messages, recs, strings */
	} else {
		free(store->messages);
		free(ms->recs);
	}
	free(ms->msgs);
	free(ms->sources);
	if (ms->fd >= 0)
		close(ms->fd);
	lock_release(ms->session_lock);
	if (ms->dir_fd >= 0)
		close(ms->dir_fd);
	free(ms->base);
	free(ms->path);
	free(ms);
}

const struct store_backend store_mbox = {
	.scheme = "mbox",
	.open = store_mbox_open,
	.open_with = store_mbox_open_with,
	.message_open = store_mbox_message_open,
	.expunge = store_mbox_expunge,
	.close = store_mbox_close,
};

/* ---------------------------------------------------------------- delivery */

#define MBOX_DELIVER_CHUNK (64 * 1024)

/* The message as it goes into the spool: CRLF to LF (eol.h), From_ lines
 * quoted the way the store reads them back, the wire size counted. */
struct mbox_writer {
	int fd;
	uint64_t stored;           /* message bytes written (From_ line excluded) */
	bool at_bol;
	unsigned match;            /* letters of "From " held at a line's start */
	bool in_gts;               /* mboxrd: the line so far is only '>' */
	char last;                 /* last byte written */
	bool mboxrd;
	struct eol_converter eol;
	struct wire_encoder wire;
	char *conv, *out, *enc;
	size_t out_len;
};

static int
mbox_writer_flush(struct mbox_writer *w)
{
	if (w->out_len == 0)
		return 0;
	size_t n = wire_encode(&w->wire, w->out, w->out_len, w->enc);
	(void)n;
	const char *p = w->out;
	size_t len = w->out_len;
	while (len > 0) {
		ssize_t r = write(w->fd, p, len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		len -= (size_t)r;
	}
	w->stored += w->out_len;
	w->last = w->out[w->out_len - 1];
	w->out_len = 0;
	return 0;
}

static int
mbox_writer_put(struct mbox_writer *w, char ch)
{
	w->out[w->out_len++] = ch;
	if (w->out_len >= 2 * MBOX_DELIVER_CHUNK)
		return mbox_writer_flush(w);
	return 0;
}

/* Quote converted bytes: a line matching "From " (mboxrd: ">*From ")
 * gets one more '>' in front. */
static int
mbox_writer_quote(struct mbox_writer *w, const char *in, size_t len)
{
	static const char from[] = "From ";
	for (size_t i = 0; i < len; i++) {
		char ch = in[i];
		if (w->at_bol) {
			if (w->match == 0 && ch == '>' && w->mboxrd && w->in_gts) {
				if (mbox_writer_put(w, ch) < 0)
					return -1;
				continue;
			}
			if (ch == from[w->match]) {
				if (++w->match == 5) {
					if (mbox_writer_put(w, '>') < 0)
						return -1;
					for (int j = 0; j < 5; j++)
						if (mbox_writer_put(w, from[j]) < 0)
							return -1;
					w->at_bol = false;
					w->match = 0;
				}
				continue;
			}
			for (unsigned j = 0; j < w->match; j++)
				if (mbox_writer_put(w, from[j]) < 0)
					return -1;
			w->match = 0;
			w->at_bol = false;
		}
		if (mbox_writer_put(w, ch) < 0)
			return -1;
		if (ch == '\n') {
			w->at_bol = true;
			w->in_gts = true;
		}
	}
	return 0;
}

static int
mbox_writer_finish(struct mbox_writer *w)
{
	static const char from[] = "From ";
	for (unsigned j = 0; j < w->match; j++)
		if (mbox_writer_put(w, from[j]) < 0)
			return -1;
	w->match = 0;
	if (mbox_writer_flush(w) < 0)
		return -1;
	char end[WIRE_FINISH_MAX];
	wire_encode_finish(&w->wire, end);
	/* A message ends with a newline, then the separating empty line. */
	const char *tail = w->stored == 0 || w->last == '\n' ? "\n" : "\n\n";
	size_t n = strlen(tail);
	if (write(w->fd, tail, n) != (ssize_t)n)
		return -1;
	return 0;
}

static enum delivery_status
mbox_deliver_errno(int err)
{
	return err == EACCES || err == EPERM || err == ELOOP || err == ENOTDIR || err == EROFS ?
	    DELIVERY_PERM : DELIVERY_TEMP;
}

static enum delivery_status
mbox_deliver(const struct delivery_target *t, const struct mbox_delivery_options *o,
    const char *header, int in_fd, bool spool, uint64_t max_message_size,
    struct delivery_result *result_r, char **error_r)
{
	struct mbox_store ms;
	struct mbox_writer w;
	struct mbox_lock mlock;
	bool locked = false;
	enum delivery_status st = DELIVERY_TEMP;
	char *in = NULL, *buf = NULL, *lerr = NULL;
	int jfd = -1;

	memset(&ms, 0, sizeof(ms));
	memset(&w, 0, sizeof(w));
	ms.fd = -1;
	ms.dir_fd = -1;
	result_r->file = NULL;
	result_r->size = 0;
	ms.path = (char *)t->path;
	const char *slash = strrchr(t->path, '/');
	const char *base = slash != NULL ? slash + 1 : t->path;
	if (*base == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
		*error_r = xasprintf("mbox %s: not a file name", t->path);
		return DELIVERY_PERM;
	}
	ms.base = (char *)base;
	char *dir = slash == NULL ? xstrdup(".") : slash == t->path ? xstrdup("/") :
	    xstrndup(t->path, (size_t)(slash - t->path));
	ms.dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (ms.dir_fd < 0) {
		*error_r = xasprintf("mbox %s: cannot open its directory: %s", t->path, strerror(errno));
		return mbox_deliver_errno(errno);
	}
	/* Created as the MTAs create a spool: owned by us, 0600. */
	ms.fd = openat(ms.dir_fd, base, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
	struct stat sb;
	if (ms.fd < 0 || fstat(ms.fd, &sb) < 0) {
		*error_r = xasprintf("mbox %s: cannot open: %s", t->path, strerror(errno));
		st = mbox_deliver_errno(errno);
		goto out;
	}
	if (!S_ISREG(sb.st_mode) || sb.st_nlink != 1 || sb.st_uid != geteuid()) {
		*error_r = xasprintf("mbox %s: not a regular file of uid %lu with one link", t->path,
		    (unsigned long)geteuid());
		st = DELIVERY_PERM;
		goto out;
	}
	/* The message into an anonymous spool file next to the mbox, which
	 * becomes the delivery's journal once it is complete. */
	jfd = store_deliver_tmpfile(ms.dir_fd);
	if (jfd < 0) {
		*error_r = xasprintf("mbox %s: spool file: %s", t->path, strerror(errno));
		st = mbox_deliver_errno(errno);
		goto out;
	}
	char zero[MBOX_JOURNAL_HEADER];
	memset(zero, ' ', sizeof(zero));
	if (write(jfd, zero, sizeof(zero)) != (ssize_t)sizeof(zero))
		goto write_error;
	char when[64], fromline[1200];
	time_t now = time(NULL);
	struct tm tm;
	strftime(when, sizeof(when), "%a %b %e %H:%M:%S %Y", localtime_r(&now, &tm));
	const char *sender = o->sender != NULL && o->sender[0] != '\0' ? o->sender : "MAILER-DAEMON";
	int fl = snprintf(fromline, sizeof(fromline), "From %s %s\n", sender, when);
	if (fl < 0 || (size_t)fl >= sizeof(fromline))
		fl = snprintf(fromline, sizeof(fromline), "From MAILER-DAEMON %s\n", when);
	if (write(jfd, fromline, (size_t)fl) != fl)
		goto write_error;
	w.fd = jfd;
	w.at_bol = true;
	w.in_gts = true;
	w.mboxrd = o->quoting == WIRE_FROM_MBOXRD;
	eol_converter_init(&w.eol);
	wire_encoder_init(&w.wire, -1);
	wire_encoder_set_from_quoting(&w.wire, o->quoting);
	in = xmalloc(MBOX_DELIVER_CHUNK);
	w.conv = xmalloc(MBOX_DELIVER_CHUNK + 1);
	w.out = xmalloc(2 * MBOX_DELIVER_CHUNK + 8);
	w.enc = xmalloc(WIRE_ENCODE_MAX(2 * MBOX_DELIVER_CHUNK + 8));
	if (header != NULL && mbox_writer_quote(&w, header, strlen(header)) < 0)
		goto write_error;
	off_t pos = 0;
	for (;;) {
		ssize_t n = spool ? pread(in_fd, in, MBOX_DELIVER_CHUNK, pos) :
		    read(in_fd, in, MBOX_DELIVER_CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			*error_r = xasprintf("reading the message: %s", strerror(errno));
			goto out;
		}
		pos += n;
		size_t c = eol_convert(&w.eol, in, (size_t)n, w.conv);
		if (n == 0)
			c += eol_finish(&w.eol, w.conv + c);
		if (mbox_writer_quote(&w, w.conv, c) < 0)
			goto write_error;
		if (max_message_size != 0 && w.stored + w.out_len > max_message_size) {
			*error_r = xasprintf("message over max_message_size %llu octets",
			    (unsigned long long)max_message_size);
			st = DELIVERY_TOO_BIG;
			goto out;
		}
		if (n == 0)
			break;
	}
	if (mbox_writer_finish(&w) < 0)
		goto write_error;
	uint64_t wire_size = w.wire.emitted - w.wire.stuffed;
	struct stat jst;
	if (fstat(jfd, &jst) < 0)
		goto write_error;
	uint64_t l = (uint64_t)jst.st_size - MBOX_JOURNAL_HEADER;
	if (t->max_maildrop_size != 0 && (uint64_t)sb.st_size + l > t->max_maildrop_size) {
		*error_r = xasprintf("mbox %s would pass max_maildrop_size", t->path);
		st = DELIVERY_OVER_QUOTA;
		goto out;
	}
	if (fsync(jfd) < 0)
		goto write_error;

	enum lock_status lr = mbox_lock_take(&mlock, ms.dir_fd, base, ms.fd, true, o->lock_wait_ms, &lerr);
	if (lr != LOCK_OK) {
		*error_r = lr == LOCK_HELD ?
		    xasprintf("mbox %s is locked by another program", t->path) :
		    xasprintf("mbox %s: %s", t->path, lerr);
		free(lerr);
		st = DELIVERY_TEMP;
		goto out;
	}
	locked = true;
	buf = xmalloc(MBOX_CHUNK);
	if (mbox_journal_recover(&ms, ms.fd, buf, &lerr) < 0) {
		*error_r = xasprintf("mbox %s: %s", t->path, lerr);
		free(lerr);
		goto out;
	}
	if (fstat(ms.fd, &sb) < 0)
		goto write_error;
	struct mbox_ident before;
	mbox_ident_of(&sb, &before);
	uint64_t s = (uint64_t)sb.st_size;
	unsigned k = 0;
	if (s > 0) {
		char tail[2] = { '\n', '\n' };
		size_t want = s >= 2 ? 2 : 1;
		if (mbox_pread_all(ms.fd, tail + 2 - want, want, s - want) < 0)
			goto write_error;
		/* the From_ line must follow an empty line */
		k = tail[1] != '\n' ? 2 : tail[0] != '\n' ? 1 : 0;
	}
	char head[MBOX_JOURNAL_HEADER];
	memset(head, ' ', sizeof(head));
	int hn = snprintf(head, sizeof(head), "%s %llu %llu %" PRIu64 " %u %" PRIu64 "\n",
	    MBOX_APPEND_MAGIC, (unsigned long long)sb.st_dev, (unsigned long long)sb.st_ino, s, k, l);
	head[hn] = ' ';
	head[MBOX_JOURNAL_HEADER - 1] = '\n';
	if (mbox_pwrite_all(jfd, head, sizeof(head), 0) < 0 || fsync(jfd) < 0)
		goto write_error;
	char proc[64];
	char *jname = mbox_name(&ms, ".popbox-append");
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", jfd);
	if (linkat(AT_FDCWD, proc, ms.dir_fd, jname, AT_SYMLINK_FOLLOW) < 0) {
		int e = errno;
		free(jname);
		*error_r = xasprintf("mbox %s: naming the delivery journal: %s", t->path, strerror(e));
		st = mbox_deliver_errno(e);
		goto out;
	}
	mbox_fsync_dir(&ms);
	/* From here on a crash is repaired by the next lock holder. */
	bool ok = (k == 0 || mbox_pwrite_all(ms.fd, "\n\n", k, s) == 0) &&
	    mbox_copy(jfd, MBOX_JOURNAL_HEADER, ms.fd, s + k, l, buf, NULL) == 0 && fsync(ms.fd) == 0;
	int e = errno;
	if (!ok && (ftruncate(ms.fd, (off_t)s) < 0 || fsync(ms.fd) < 0)) {
		/* the journal stays: the next lock holder cuts it off */
		free(jname);
		*error_r = xasprintf("mbox %s: writing: %s (cut off at the next access)", t->path, strerror(e));
		goto out;
	}
	unlinkat(ms.dir_fd, jname, 0);
	mbox_fsync_dir(&ms);
	free(jname);
	if (!ok) {
		*error_r = xasprintf("mbox %s: writing: %s", t->path, strerror(e));
		st = mbox_deliver_errno(e);
		goto out;
	}
	/* The file ended at a message boundary (k == 0): what it held is
	 * parsed as before, so the index may say that only this was added. */
	struct stat after_sb;
	if (k == 0 && fstat(ms.fd, &after_sb) == 0) {
		struct mbox_ident after;
		mbox_ident_of(&after_sb, &after);
		mbox_index_note_append(&ms, &before, &after);
	}
	result_r->file = xstrdup(base);
	result_r->size = wire_size;
	st = DELIVERY_OK;
	goto out;
write_error:
	*error_r = xasprintf("mbox %s: writing the message: %s", t->path, strerror(errno));
	st = mbox_deliver_errno(errno);
out:
	if (locked)
		mbox_lock_release(&mlock);
	if (jfd >= 0)
		close(jfd);
	if (ms.fd >= 0)
		close(ms.fd);
	if (ms.dir_fd >= 0)
		close(ms.dir_fd);
	free(in);
	free(buf);
	free(w.conv);
	free(w.out);
	free(w.enc);
	return st;
}

enum delivery_status
store_mbox_deliver_stream(const struct delivery_target *t, const struct mbox_delivery_options *o,
    const char *header, int in_fd, uint64_t max_message_size, struct delivery_result *result_r,
    char **error_r)
{
	return mbox_deliver(t, o, header, in_fd, false, max_message_size, result_r, error_r);
}

enum delivery_status
store_mbox_deliver_file(const struct delivery_target *t, const struct mbox_delivery_options *o,
    int file_fd, struct delivery_result *result_r, char **error_r)
{
	return mbox_deliver(t, o, NULL, file_fd, true, 0, result_r, error_r);
}

enum delivery_status
store_mbox_spool_open(const char *path, int *fd_r, char **error_r)
{
	const char *slash = strrchr(path, '/');
	char *dir = slash == NULL ? xstrdup(".") : slash == path ? xstrdup("/") :
	    xstrndup(path, (size_t)(slash - path));
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int e = errno;
	if (dfd >= 0) {
		*fd_r = store_deliver_tmpfile(dfd);
		e = errno;
		close(dfd);
	}
	if (dfd < 0 || *fd_r < 0) {
		*error_r = xasprintf("mbox %s: spool file in %s: %s", path, dir, strerror(e));
		free(dir);
		*fd_r = -1;
		return mbox_deliver_errno(e);
	}
	free(dir);
	return DELIVERY_OK;
}

enum delivery_status
store_mbox_deliver_check(const struct delivery_target *t, uint64_t size, char **error_r)
{
	if (t->max_maildrop_size == 0)
		return DELIVERY_OK;
	struct stat sb;
	uint64_t have = 0;
	if (stat(t->path, &sb) == 0) {
		have = (uint64_t)sb.st_size;
	} else if (errno != ENOENT) {
		*error_r = xasprintf("mbox %s: %s", t->path, strerror(errno));
		return mbox_deliver_errno(errno);
	}
	/* at least one octet: a full mbox refuses even a declared 0 */
	if (have + (size > 0 ? size : 1) > t->max_maildrop_size) {
		*error_r = xasprintf("mbox %s would pass max_maildrop_size", t->path);
		return DELIVERY_OVER_QUOTA;
	}
	return DELIVERY_OK;
}

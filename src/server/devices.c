/* The device state of a maildrop (devices.h; docs/DESIGN.md "Every device
 * gets every message"). */
#include "server/devices.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/keyed_hash.h"
#include "common/log.h"
#include "common/util.h"
#include "server/store.h"

/* The file is rewritten when it holds this many times the records a
 * rewrite would write (plus DEVICES_COMPACT_SLACK): each QUIT appends what
 * it changed, and the rewrite's cost is spread over the appends that made
 * it due. */
#define DEVICES_COMPACT_FACTOR 4
#define DEVICES_COMPACT_SLACK 1024
/* Longest record line: "R 63 " + 20-digit time + " " + UIDL + newline. */
#define DEVICES_LINE_MAX (2 + 3 + 21 + UIDL_MAX_LEN + 2 + DEVICE_NAME_MAX)

bool
devices_parse_expire(const char *s, int *days_r)
{
	uint32_t n;
	if (strcasecmp(s, "never") == 0) {
		*days_r = DEVICES_EXPIRE_NEVER;
		return true;
	}
	if (!parse_u32(s, DEVICES_EXPIRE_MAX, &n))
		return false;
	*days_r = (int)n;
	return true;
}

bool
devices_parse_login_delay(const char *s, unsigned *seconds_r)
{
	char digits[16];
	size_t len = strlen(s);
	unsigned mult = 1;
	uint32_t n;
	if (len > 0 && strchr("smh", s[len - 1]) != NULL) {
		mult = s[len - 1] == 'h' ? 3600 : s[len - 1] == 'm' ? 60 : 1;
		len--;
	}
	if (len == 0 || len >= sizeof(digits))
		return false;
	memcpy(digits, s, len);
	digits[len] = '\0';
	if (!parse_u32(digits, DEVICES_LOGIN_DELAY_MAX, &n) || n > DEVICES_LOGIN_DELAY_MAX / mult)
		return false;
	*seconds_r = n * mult;
	return true;
}

bool
device_name_valid(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > DEVICE_NAME_MAX)
		return false;
	return strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

const char *
device_split(const char *name, char sep, size_t *user_len)
{
	if (sep == '\0')
		return NULL;
	const char *at = strrchr(name, sep);
	if (at == NULL)
		return NULL;
	*user_len = (size_t)(at - name);
	return at + 1;
}

int64_t
devices_now(void)
{
	static int64_t offset = INT64_MIN;
	if (offset == INT64_MIN) {
		const char *s = getenv("POPBOX_TEST_CLOCK_OFFSET");
		uint64_t v = 0;
		bool neg = s != NULL && s[0] == '-';
		if (s != NULL && parse_u64(neg ? s + 1 : s, (uint64_t)1 << 40, &v))
			offset = neg ? -(int64_t)v : (int64_t)v;
		else
			offset = 0;
	}
	return (int64_t)time(NULL) + offset;
}

/* --- the table --------------------------------------------------------------- */

struct devices *
devices_new(void)
{
	struct devices *d = xcalloc(1, sizeof(*d));
	d->fd = -1;
	d->dir_fd = -1;
	d->dev[DEVICES_CLASSIC_SLOT].used = true;
	d->table_cap = 64;
	d->table = xcalloc(d->table_cap, sizeof(*d->table));
	return d;
}

void
devices_free(struct devices *d)
{
	if (d == NULL)
		return;
	if (d->fd >= 0)
		close(d->fd);
	for (size_t i = 0; i < d->table_cap; i++)
		free(d->table[i].uidl);
	free(d->table);
	free(d->pending);
	free(d);
}

static size_t
devices_bucket(const struct devices *d, const char *uidl, size_t len)
{
	size_t mask = d->table_cap - 1;
	size_t i = (size_t)keyed_hash64(uidl, len) & mask;
	while (d->table[i].uidl != NULL && strcmp(d->table[i].uidl, uidl) != 0)
		i = (i + 1) & mask;
	return i;
}

const struct devices_entry *
devices_lookup(const struct devices *d, const char *uidl)
{
	if (d->table_count == 0)
		return NULL;
	size_t i = devices_bucket(d, uidl, strlen(uidl));
	return d->table[i].uidl != NULL ? &d->table[i] : NULL;
}

static struct devices_entry *
devices_entry(struct devices *d, const char *uidl)
{
	size_t len = strlen(uidl);
	if ((d->table_count + 1) * 10 > d->table_cap * 7) {
		struct devices_entry *old = d->table;
		size_t old_cap = d->table_cap;
		d->table_cap *= 2;
		d->table = xcalloc(d->table_cap, sizeof(*d->table));
		for (size_t k = 0; k < old_cap; k++) {
			if (old[k].uidl == NULL)
				continue;
			d->table[devices_bucket(d, old[k].uidl, strlen(old[k].uidl))] = old[k];
		}
		free(old);
	}
	size_t i = devices_bucket(d, uidl, len);
	if (d->table[i].uidl == NULL) {
		d->table[i].uidl = xstrndup(uidl, len);
		d->table_count++;
	}
	return &d->table[i];
}

static unsigned
popcount64(uint64_t v)
{
	return (unsigned)__builtin_popcountll(v);
}

/* --- applying records (from the file, and as they are noted) ------------------ */

static void
devices_clear_slot(struct devices *d, int slot)
{
	uint64_t bit = (uint64_t)1 << slot;
	for (size_t i = 0; i < d->table_cap && d->table_count > 0; i++) {
		struct devices_entry *e = &d->table[i];
		if (e->uidl == NULL)
			continue;
		d->live -= ((e->deleted & bit) ? 1 : 0) + ((e->retrieved & bit) ? 1 : 0);
		e->deleted &= ~bit;
		e->retrieved &= ~bit;
	}
}

static void
apply_name(struct devices *d, int slot, int64_t t, const char *name)
{
	if (d->dev[slot].used)
		d->live -= 2;
	devices_clear_slot(d, slot);
	d->dev[slot].used = true;
	snprintf(d->dev[slot].name, sizeof(d->dev[slot].name), "%s", name);
	d->dev[slot].first_login = t;
	d->dev[slot].last_login = t;
	d->live += 2;
}

static void
apply_login(struct devices *d, int slot, int64_t t)
{
	if (!d->dev[slot].used)
		return;
	if (slot == DEVICES_CLASSIC_SLOT && d->dev[slot].last_login == 0)
		d->live++;
	if (t > d->dev[slot].last_login)
		d->dev[slot].last_login = t;
}

static void
apply_delete(struct devices *d, int slot, const char *uidl)
{
	if (slot == DEVICES_CLASSIC_SLOT || !d->dev[slot].used)
		return;
	struct devices_entry *e = devices_entry(d, uidl);
	uint64_t bit = (uint64_t)1 << slot;
	if (!(e->deleted & bit))
		d->live++;
	e->deleted |= bit;
}

static void
apply_retrieve(struct devices *d, int slot, int64_t t, const char *uidl)
{
	if (!d->dev[slot].used)
		return;
	struct devices_entry *e = devices_entry(d, uidl);
	uint64_t bit = (uint64_t)1 << slot;
	if (!(e->retrieved & bit))
		d->live++;
	e->retrieved |= bit;
	if (t > e->last_retrieved)
		e->last_retrieved = t;
}

static void
apply_forget(struct devices *d, int slot)
{
	if (slot == DEVICES_CLASSIC_SLOT || !d->dev[slot].used)
		return;
	devices_clear_slot(d, slot);
	memset(&d->dev[slot], 0, sizeof(d->dev[slot]));
	d->live -= 2;
}

/* --- parsing ------------------------------------------------------------------- */

/* FNV-1a, 64 bits: finds torn and damaged groups; it need not resist
 * anyone who can write the maildrop (they can delete the mail). */
static uint64_t
devices_checksum(const char *p, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* Split line (without its newline, NUL-terminated copy) into at most max
 * words separated by single spaces. Returns the count, or -1 on an empty
 * word or too many. */
static int
split_words(char *line, char **w, int max)
{
	int n = 0;
	char *p = line;
	for (;;) {
		if (n == max)
			return -1;
		w[n++] = p;
		char *sp = strchr(p, ' ');
		if (sp == NULL)
			break;
		*sp = '\0';
		p = sp + 1;
	}
	for (int i = 0; i < n; i++)
		if (w[i][0] == '\0')
			return -1;
	return n;
}

static bool
parse_slot(const char *s, int *slot)
{
	uint32_t v;
	if (!parse_u32(s, DEVICES_SLOTS - 1, &v))
		return false;
	*slot = (int)v;
	return true;
}

static bool
parse_time(const char *s, int64_t *t)
{
	uint64_t v;
	if (!parse_u64(s, (uint64_t)INT64_MAX, &v))
		return false;
	*t = (int64_t)v;
	return true;
}

static bool
uidl_valid(const char *u)
{
	size_t n = strlen(u);
	if (n == 0 || n > UIDL_MAX_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)u[i] < 0x21 || (unsigned char)u[i] > 0x7e)
			return false;
	return true;
}

/* One record line of a checked group: true when it is well-formed, and
 * applied when apply. */
static bool
parse_record(struct devices *d, const char *p, size_t len, bool apply)
{
	char line[DEVICES_LINE_MAX + 1];
	char *w[5];
	int slot;
	int64_t t;
	if (len == 0 || len > DEVICES_LINE_MAX || memchr(p, '\0', len) != NULL)
		return false;
	memcpy(line, p, len);
	line[len] = '\0';
	int n = split_words(line, w, 5);
	if (n < 2 || w[0][1] != '\0')
		return false;
	switch (w[0][0]) {
	case 'N':
		if (n != 4 || !parse_slot(w[1], &slot) || slot == DEVICES_CLASSIC_SLOT ||
		    !parse_time(w[2], &t) || !device_name_valid(w[3]))
			return false;
		if (apply)
			apply_name(d, slot, t, w[3]);
		return true;
	case 'L':
		if (n != 3 || !parse_slot(w[1], &slot) || !parse_time(w[2], &t))
			return false;
		if (apply)
			apply_login(d, slot, t);
		return true;
	case 'D':
		if (n != 3 || !parse_slot(w[1], &slot) || !uidl_valid(w[2]))
			return false;
		if (apply)
			apply_delete(d, slot, w[2]);
		return true;
	case 'R':
		if (n != 4 || !parse_slot(w[1], &slot) || !parse_time(w[2], &t) || !uidl_valid(w[3]))
			return false;
		if (apply)
			apply_retrieve(d, slot, t, w[3]);
		return true;
	case 'F':
		if (n != 2 || !parse_slot(w[1], &slot))
			return false;
		if (apply)
			apply_forget(d, slot);
		return true;
	case 'X':
		if (n != 2 || !parse_time(w[1], &t))
			return false;
		if (apply)
			d->recovery_since = t;
		return true;
	default:
		return false;
	}
}

/* Whether the group text[start..end) (whole lines) closed by the commit
 * line c[0..clen) checks, and every record in it is well-formed. */
static bool
group_checks(struct devices *d, const char *text, size_t start, size_t end, const char *c,
    size_t clen, unsigned *lines_r)
{
	char line[64], *w[4];
	uint32_t count;
	uint64_t sum;
	if (clen >= sizeof(line))
		return false;
	memcpy(line, c, clen);
	line[clen] = '\0';
	if (split_words(line, w, 4) != 3 || strcmp(w[0], "C") != 0 ||
	    !parse_u32(w[1], UINT32_MAX, &count) || strlen(w[2]) != 16)
		return false;
	char *endp;
	errno = 0;
	sum = strtoull(w[2], &endp, 16);
	if (*endp != '\0' || errno != 0 || strspn(w[2], "0123456789abcdef") != 16)
		return false;
	if (devices_checksum(text + start, end - start) != sum)
		return false;
	unsigned lines = 0;
	for (size_t p = start; p < end; ) {
		const char *nl = memchr(text + p, '\n', end - p);
		if (nl == NULL || !parse_record(d, text + p, (size_t)(nl - (text + p)), false))
			return false;
		lines++;
		p = (size_t)(nl - text) + 1;
	}
	*lines_r = lines;
	return lines == count;
}

size_t
devices_parse(struct devices *d, const char *text, size_t len, bool *damaged_r)
{
	size_t hlen = strlen(DEVICES_HEADER);
	size_t pos, valid;
	*damaged_r = false;
	if (len < hlen + 1 || memcmp(text, DEVICES_HEADER, hlen) != 0 || text[hlen] != '\n') {
		*damaged_r = true;    /* the file is made whole by rename: never empty */
		return 0;
	}
	pos = valid = hlen + 1;
	size_t group = pos;
	while (pos < len) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		if (nl == NULL)
			break;    /* an incomplete last line: a write cut short */
		size_t end = (size_t)(nl - text);
		if (end - pos >= 2 && text[pos] == 'C' && text[pos + 1] == ' ') {
			unsigned lines;
			if (group_checks(d, text, group, pos, text + pos, end - pos, &lines)) {
				for (size_t p = group; p < pos; ) {
					const char *l = memchr(text + p, '\n', pos - p);
					parse_record(d, text + p, (size_t)(l - (text + p)), true);
					p = (size_t)(l - text) + 1;
				}
				d->records += lines;
			} else {
				/* A whole group that does not check: damage, not an
				 * interrupted append (that never ends with a whole
				 * commit line). Skip it, keep what follows. */
				*damaged_r = true;
				d->damaged_bytes += end + 1 - group;
			}
			group = end + 1;
			valid = group;
		}
		pos = end + 1;
	}
	return valid;
}

/* --- the file ------------------------------------------------------------------- */

static int
write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void
pending_add(struct devices *d, const char *fmt, ...) PRINTF_LIKE(2, 3);

static void
pending_add(struct devices *d, const char *fmt, ...)
{
	char line[DEVICES_LINE_MAX + 2];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line))
		fatalx("devices: record too long");
	if (d->pending_len + (size_t)n > d->pending_cap) {
		d->pending_cap = (d->pending_cap + (size_t)n) * 2;
		d->pending = xrealloc(d->pending, d->pending_cap);
	}
	memcpy(d->pending + d->pending_len, line, (size_t)n);
	d->pending_len += (size_t)n;
	d->pending_lines++;
}

/* The commit line for the group in buf[0..len) of lines lines. */
static void
commit_line(char *out, size_t size, const char *buf, size_t len, unsigned lines)
{
	snprintf(out, size, "C %u %016" PRIx64 "\n", lines, devices_checksum(buf, len));
}

/* Write header + group + commit into DEVICES_TMP_FILE, sync it and rename
 * it over DEVICES_FILE, then sync the directory: the file is replaced
 * whole or not at all. On success d->fd is the new file. */
static int
devices_replace(struct devices *d, const char *group, size_t len, unsigned lines, char **error_r)
{
	char commit[64];
	int fd = openat(d->dir_fd, DEVICES_TMP_FILE,
	    O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		*error_r = xasprintf("%s: %s", DEVICES_TMP_FILE, strerror(errno));
		return -1;
	}
	commit_line(commit, sizeof(commit), group, len, lines);
	if (write_all(fd, DEVICES_HEADER "\n", strlen(DEVICES_HEADER) + 1) < 0 ||
	    (lines > 0 && (write_all(fd, group, len) < 0 || write_all(fd, commit, strlen(commit)) < 0)) ||
	    fsync(fd) < 0) {
		*error_r = xasprintf("%s: write: %s", DEVICES_TMP_FILE, strerror(errno));
		close(fd);
		unlinkat(d->dir_fd, DEVICES_TMP_FILE, 0);
		return -1;
	}
	close(fd);
	if (renameat(d->dir_fd, DEVICES_TMP_FILE, d->dir_fd, DEVICES_FILE) < 0 || fsync(d->dir_fd) < 0) {
		*error_r = xasprintf("%s: rename: %s", DEVICES_FILE, strerror(errno));
		unlinkat(d->dir_fd, DEVICES_TMP_FILE, 0);
		return -1;
	}
	fd = openat(d->dir_fd, DEVICES_FILE, O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		*error_r = xasprintf("%s: %s", DEVICES_FILE, strerror(errno));
		return -1;
	}
	if (d->fd >= 0)
		close(d->fd);
	d->fd = fd;
	d->file_size = strlen(DEVICES_HEADER) + 1 + (lines > 0 ? len + strlen(commit) : 0);
	d->records = lines;
	return 0;
}

/* The marker that says this maildrop has had a state file. */
static int
devices_mark(struct devices *d, char **error_r)
{
	int fd = openat(d->dir_fd, DEVICES_MARK_FILE,
	    O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || fsync(d->dir_fd) < 0) {
		*error_r = xasprintf("%s: %s", DEVICES_MARK_FILE, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

static void
devices_pending_reset(struct devices *d)
{
	d->pending_len = 0;
	d->pending_lines = 0;
}

bool
devices_pending(const struct devices *d)
{
	return d->pending_lines > 0;
}

int
devices_commit(struct devices *d, bool sync, char **error_r)
{
	if (d->pending_lines == 0)
		return 0;
	if (d->fd < 0) {
		/* The first write: the whole file by rename, then the marker. */
		if (devices_replace(d, d->pending, d->pending_len, d->pending_lines, error_r) < 0 ||
		    devices_mark(d, error_r) < 0)
			return -1;
		devices_pending_reset(d);
		return 0;
	}
	char commit[64];
	commit_line(commit, sizeof(commit), d->pending, d->pending_len, d->pending_lines);
	size_t clen = strlen(commit);
	/* One write with the commit line last: a cut-short write leaves no
	 * whole commit line, so the group does not count (devices_parse). */
	if (d->pending_len + clen > d->pending_cap) {
		d->pending_cap = d->pending_len + clen;
		d->pending = xrealloc(d->pending, d->pending_cap);
	}
	memcpy(d->pending + d->pending_len, commit, clen);
	if (write_all(d->fd, d->pending, d->pending_len + clen) < 0 ||
	    (sync && fdatasync(d->fd) < 0)) {
		int saved = errno;
		/* Take the partial group back, so the next append starts on a
		 * line of its own (the next open would cut it anyway). */
		if (ftruncate(d->fd, (off_t)d->file_size) < 0)
			log_warn("%s: cannot cut off a failed write", DEVICES_FILE);
		*error_r = xasprintf("%s: write: %s", DEVICES_FILE, strerror(saved));
		return -1;
	}
	d->file_size += d->pending_len + clen;
	d->records += d->pending_lines;
	devices_pending_reset(d);
	return 0;
}

void
devices_note_login(struct devices *d, int slot, int64_t now)
{
	apply_login(d, slot, now);
	pending_add(d, "L %d %" PRId64 "\n", slot, now);
}

void
devices_note_delete(struct devices *d, int slot, const char *uidl)
{
	apply_delete(d, slot, uidl);
	pending_add(d, "D %d %s\n", slot, uidl);
}

void
devices_note_retrieve(struct devices *d, int slot, const char *uidl, int64_t now)
{
	apply_retrieve(d, slot, now, uidl);
	pending_add(d, "R %d %" PRId64 " %s\n", slot, now, uidl);
}

void
devices_note_forget(struct devices *d, int slot)
{
	apply_forget(d, slot);
	pending_add(d, "F %d\n", slot);
}

int
devices_add(struct devices *d, const char *name, int64_t now)
{
	for (int slot = 1; slot < DEVICES_SLOTS; slot++) {
		if (d->dev[slot].used)
			continue;
		apply_name(d, slot, now, name);
		pending_add(d, "N %d %" PRId64 " %s\n", slot, now, name);
		return slot;
	}
	return -1;
}

int
devices_find(const struct devices *d, const char *name)
{
	for (int slot = 1; slot < DEVICES_SLOTS; slot++)
		if (d->dev[slot].used && strcasecmp(d->dev[slot].name, name) == 0)
			return slot;
	return -1;
}

bool
devices_active(const struct devices *d, int slot, int64_t now, int64_t idle_seconds)
{
	return slot != DEVICES_CLASSIC_SLOT && d->dev[slot].used &&
	    d->dev[slot].last_login >= now - idle_seconds;
}

static uint64_t
devices_active_mask(const struct devices *d, int64_t now, int64_t idle_seconds)
{
	uint64_t mask = 0;
	for (int slot = 1; slot < DEVICES_SLOTS; slot++)
		if (devices_active(d, slot, now, idle_seconds))
			mask |= (uint64_t)1 << slot;
	return mask;
}

unsigned
devices_active_count(const struct devices *d, int64_t now, int64_t idle_seconds)
{
	return popcount64(devices_active_mask(d, now, idle_seconds));
}

bool
devices_deleted(const struct devices *d, int slot, const char *uidl)
{
	const struct devices_entry *e = devices_lookup(d, uidl);
	return e != NULL && (e->deleted & ((uint64_t)1 << slot)) != 0;
}

static bool
devices_recovering(const struct devices *d, int64_t now, int64_t idle_seconds)
{
	return d->recovery_since != 0 && now < d->recovery_since + idle_seconds;
}

bool
devices_all_deleted(const struct devices *d, const char *uidl, int64_t now, int64_t idle_seconds)
{
	const struct devices_entry *e = devices_lookup(d, uidl);
	if (e == NULL || e->deleted == 0 || devices_recovering(d, now, idle_seconds))
		return false;
	uint64_t active = devices_active_mask(d, now, idle_seconds);
	return (e->deleted & active) == active;
}

bool
devices_expired(const struct devices *d, const char *uidl, int64_t now, int64_t idle_seconds,
    int64_t expire_seconds)
{
	const struct devices_entry *e = devices_lookup(d, uidl);
	if (e == NULL || e->last_retrieved == 0 || devices_recovering(d, now, idle_seconds))
		return false;
	if (e->last_retrieved > now - expire_seconds)
		return false;
	uint64_t active = devices_active_mask(d, now, idle_seconds);
	if (active == 0)
		return e->retrieved != 0;
	return ((e->retrieved | e->deleted) & active) == active;
}

void
devices_drop(struct devices *d, const char *uidl)
{
	if (d->table_count == 0)
		return;
	size_t i = devices_bucket(d, uidl, strlen(uidl));
	struct devices_entry *e = &d->table[i];
	if (e->uidl == NULL)
		return;
	d->live -= popcount64(e->deleted) + popcount64(e->retrieved);
	e->deleted = e->retrieved = 0;
	e->last_retrieved = 0;
}

bool
devices_compact_due(const struct devices *d)
{
	return d->fd >= 0 && d->records > DEVICES_COMPACT_FACTOR * d->live + DEVICES_COMPACT_SLACK;
}

/* The whole state as one group (pending must be empty). */
static void
devices_dump(struct devices *d, int64_t now)
{
	if (d->recovery_since != 0)
		pending_add(d, "X %" PRId64 "\n", d->recovery_since);
	for (int slot = 0; slot < DEVICES_SLOTS; slot++) {
		const struct device *v = &d->dev[slot];
		if (!v->used)
			continue;
		if (slot != DEVICES_CLASSIC_SLOT)
			pending_add(d, "N %d %" PRId64 " %s\n", slot, v->first_login, v->name);
		if (v->last_login != 0 && v->last_login != v->first_login)
			pending_add(d, "L %d %" PRId64 "\n", slot, v->last_login);
	}
	for (size_t i = 0; i < d->table_cap; i++) {
		const struct devices_entry *e = &d->table[i];
		if (e->uidl == NULL)
			continue;
		for (int slot = 1; slot < DEVICES_SLOTS; slot++)
			if (e->deleted & ((uint64_t)1 << slot))
				pending_add(d, "D %d %s\n", slot, e->uidl);
		for (int slot = 0; slot < DEVICES_SLOTS; slot++)
			if (e->retrieved & ((uint64_t)1 << slot))
				pending_add(d, "R %d %" PRId64 " %s\n", slot, e->last_retrieved, e->uidl);
	}
	(void)now;
}

int
devices_compact(struct devices *d, const struct store_message *messages, uint32_t count,
    char **error_r)
{
	if (devices_pending(d)) {
		*error_r = xasprintf("%s: rewrite with records not committed", DEVICES_FILE);
		return -1;
	}
	/* Entries of messages no longer in the maildrop go (messages NULL:
	 * no snapshot, keep them all). */
	for (size_t i = 0; messages != NULL && i < d->table_cap; i++)
		d->table[i].seen = false;
	for (uint32_t k = 0; messages != NULL && k < count && d->table_count > 0; k++) {
		size_t i = devices_bucket(d, messages[k].uidl, strlen(messages[k].uidl));
		if (d->table[i].uidl != NULL)
			d->table[i].seen = true;
	}
	for (size_t i = 0; messages != NULL && i < d->table_cap; i++)
		if (d->table[i].uidl != NULL && !d->table[i].seen)
			devices_drop(d, d->table[i].uidl);
	/* Rebuild the table without the empty entries. */
	struct devices_entry *old = d->table;
	size_t old_cap = d->table_cap;
	d->table_cap = 64;
	d->table_count = 0;
	d->table = xcalloc(d->table_cap, sizeof(*d->table));
	for (size_t i = 0; i < old_cap; i++) {
		if (old[i].uidl == NULL)
			continue;
		if (old[i].deleted != 0 || old[i].retrieved != 0) {
			struct devices_entry *e = devices_entry(d, old[i].uidl);
			e->deleted = old[i].deleted;
			e->retrieved = old[i].retrieved;
			e->last_retrieved = old[i].last_retrieved;
		}
		free(old[i].uidl);
	}
	free(old);
	devices_dump(d, 0);
	int r = devices_replace(d, d->pending, d->pending_len, d->pending_lines, error_r);
	devices_pending_reset(d);
	return r;
}

int
devices_open(int dir_fd, const char *name, bool create, int64_t now, struct devices **devices_r,
    char **error_r)
{
	struct devices *d;
	char *text = NULL;
	size_t len = 0;
	*devices_r = NULL;
	int fd = openat(dir_fd, DEVICES_FILE, O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno != ENOENT) {
		*error_r = xasprintf("%s/%s: %s", name, DEVICES_FILE, strerror(errno));
		return -1;
	}
	if (fd < 0) {
		bool lost = faccessat(dir_fd, DEVICES_MARK_FILE, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
		if (!create && !lost)
			return 0;
		d = devices_new();
		d->dir_fd = dir_fd;
		if (lost) {
			log_warnx("%s: %s is missing but this maildrop had one: until the devices "
			    "have logged in again, no device's deletion removes a message, and "
			    "deleted messages reappear on every device", name, DEVICES_FILE);
			d->recovery_since = now;
			pending_add(d, "X %" PRId64 "\n", now);
			if (devices_commit(d, true, error_r) < 0) {
				devices_free(d);
				return -1;
			}
		}
		*devices_r = d;
		return 0;
	}
	if (util_read_file_bounded(fd, DEVICES_FILE, DEVICES_FILE_MAX, 0, &text, &len, error_r) < 0) {
		close(fd);
		char *e = *error_r;
		*error_r = xasprintf("%s/%s", name, e);
		free(e);
		return -1;
	}
	d = devices_new();
	d->dir_fd = dir_fd;
	d->fd = fd;
	bool damaged;
	size_t valid = devices_parse(d, text, len, &damaged);
	free(text);
	if (damaged) {
		log_warnx("%s: %s is damaged (%llu bytes of it skipped): deleted messages may "
		    "reappear on some devices, and for %s no device's deletion removes a message",
		    name, DEVICES_FILE, (unsigned long long)(d->damaged_bytes ? d->damaged_bytes : len),
		    "device_idle_days");
		d->recovery_since = now;
		/* Rewritten from what checked, with the recovery record. */
		if (devices_compact(d, NULL, 0, error_r) < 0) {
			devices_free(d);
			return -1;
		}
		*devices_r = d;
		return 0;
	}
	if (valid < len) {
		log_info("%s: %s: an interrupted update (%zu bytes) was discarded", name, DEVICES_FILE,
		    len - valid);
		if (ftruncate(fd, (off_t)valid) < 0 || fdatasync(fd) < 0) {
			*error_r = xasprintf("%s/%s: cannot cut off an interrupted update: %s", name,
			    DEVICES_FILE, strerror(errno));
			devices_free(d);
			return -1;
		}
		d->discarded_bytes = len - valid;
	}
	d->file_size = valid;
	*devices_r = d;
	return 0;
}

/* The old server's UIDL lists (uidl_migrate.h; docs/DESIGN.md "UIDLs kept
 * from the old server"). The formats were read from the old servers'
 * documentation and behaviour (Dovecot 2.3 maildir-uidlist and pop3
 * pop3_uidl_format expansion, Courier pop3d's courierpop3dsizelist) and are
 * checked against a real Dovecot 2.3 by tests/integration/test_server_uidl_migrate.py.
 *
 * The list is parsed in place in one buffer: an entry points into it, and a
 * UIDL is formatted only when a message asks for it (a maildrop's first
 * login under popboxd), so a big list costs one allocation and a sort. */
#include "server/uidl_migrate.h"
#include "server/limits_popboxd.h"
#include "server/store.h"
#include "common/util.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Rounds of uidl_make_unique: the first replaces by base names, the later
 * ones by salted digests, which cannot collide in practice; the bound only
 * keeps a loop finite. */
#define UIDL_UNIQUE_ROUNDS 8
/* A UID, as Dovecot and Courier keep it: 32 bits, and Dovecot never gives
 * out (uint32_t)-1. */
#define UIDL_OLD_UID_MAX (UINT32_MAX - 1)
/* The room for one expanded UIDL: anything longer than RFC 1939's 70
 * characters is invalid anyway, so the expansion stops early. */
#define UIDL_EXPAND_MAX 128
/* Dovecot's var_expand allows up to this many modifiers per variable. */
#define UIDL_TEMPLATE_MAX_MODIFIERS 10
/* The longest width a template may give (more could never be valid). */
#define UIDL_TEMPLATE_MAX_WIDTH 70

struct uidl_old_entry {
	const char *base;         /* the file name in list->text, up to ':' */
	size_t base_len;
	size_t line;              /* in the file: a later line for the same name wins */
	uint32_t uid;
	uint32_t uidvalidity;     /* courier: per line */
	const char *pop3;         /* dovecot P: NULL none, "" the base name */
	const char *guid;         /* dovecot G, NULL none */
};

struct uidl_old_list {
	enum uidl_format format;
	char *text;
	char *template;           /* dovecot */
	uint32_t uidvalidity;     /* dovecot: the header's V */
	struct uidl_old_entry *entries;
	size_t count, alloc;
};

static const char *const uidl_format_names[] = {
	[UIDL_FORMAT_UNSET] = "unset",
	[UIDL_FORMAT_POPBOX] = "popbox",
	[UIDL_FORMAT_DOVECOT] = "dovecot",
	[UIDL_FORMAT_COURIER] = "courier",
	[UIDL_FORMAT_POPA3D] = "popa3d",
};

bool
uidl_format_parse(const char *name, enum uidl_format *format_r)
{
	for (int f = UIDL_FORMAT_POPBOX; f <= UIDL_FORMAT_MAX; f++) {
		if (strcmp(name, uidl_format_names[f]) == 0) {
			*format_r = (enum uidl_format)f;
			return true;
		}
	}
	return false;
}

const char *
uidl_format_name(enum uidl_format format)
{
	return (unsigned)format <= UIDL_FORMAT_MAX ? uidl_format_names[format] : "unknown";
}

bool
uidl_is_valid(const char *uidl, size_t len)
{
	if (len == 0 || len > 70)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)uidl[i] - 0x21u > 0x7eu - 0x21u)
			return false;
	return true;
}

/* ---- pop3_uidl_format ---- */

/* The values a template may use for one message. */
struct uidl_vars {
	const char *uid, *uidvalidity, *guid, *filename;
};

/* Appends what is left of the buffer; false when it is full. */
struct uidl_out {
	char buf[UIDL_EXPAND_MAX + 1];
	size_t len;
	bool full;
};

static void
uidl_out_add(struct uidl_out *o, const char *s, size_t n)
{
	if (o->full || n > UIDL_EXPAND_MAX - o->len) {
		o->full = true;
		return;
	}
	memcpy(o->buf + o->len, s, n);
	o->len += n;
	o->buf[o->len] = '\0';
}

/* The value of a variable name (one letter, or a long name in braces). */
static const char *
uidl_template_var(const struct uidl_vars *v, const char *name, size_t len)
{
	static const struct {
		char letter;
		const char *name;
		size_t offset;
	} vars[] = {
		{ 'u', "uid", offsetof(struct uidl_vars, uid) },
		{ 'v', "uidvalidity", offsetof(struct uidl_vars, uidvalidity) },
		{ 'g', "guid", offsetof(struct uidl_vars, guid) },
		{ 'f', "filename", offsetof(struct uidl_vars, filename) },
	};
	for (size_t i = 0; i < N_ELEMENTS(vars); i++) {
		if ((len == 1 && name[0] == vars[i].letter) ||
		    (len == strlen(vars[i].name) && memcmp(name, vars[i].name, len) == 0))
			return *(const char *const *)((const char *)v + vars[i].offset);
	}
	return NULL;
}

/* One value after its modifiers (Dovecot 2.3 order: as written). */
static void
uidl_template_modify(char *val, size_t size, const char *mods, size_t n_mods)
{
	for (size_t m = 0; m < n_mods; m++) {
		if (mods[m] == 'X') {
			/* Dovecot: a number in hex; anything else counts as 0. */
			uint64_t num;
			if (!parse_u64(val, UINT64_MAX, &num))
				num = 0;
			snprintf(val, size, "%llx", (unsigned long long)num);
			continue;
		}
		for (char *c = val; *c != '\0'; c++) {
			if (mods[m] == 'L' && *c >= 'A' && *c <= 'Z')
				*c = (char)(*c - 'A' + 'a');
			else if (mods[m] == 'U' && *c >= 'a' && *c <= 'z')
				*c = (char)(*c - 'a' + 'A');
		}
	}
}

/* One variable of a template: %[0][WIDTH][MODIFIERS](LETTER|{NAME}). */
struct uidl_spec {
	bool zero;                /* a width after '0' pads, never truncates */
	size_t width;
	char mods[UIDL_TEMPLATE_MAX_MODIFIERS];
	size_t n_mods;
	const char *name;
	size_t name_len;
};

/* Parse the variable at *p (just after its '%'); *p is left on its last
 * character. Returns false with *error_r. */
static bool
uidl_template_spec(const char **pp, struct uidl_spec *sp, char **error_r)
{
	const char *p = *pp;

	memset(sp, 0, sizeof(*sp));
	if (*p == '0') {
		sp->zero = true;
		p++;
	}
	for (; *p >= '0' && *p <= '9'; p++) {
		sp->width = sp->width * 10 + (size_t)(*p - '0');
		if (sp->width > UIDL_TEMPLATE_MAX_WIDTH) {
			*error_r = xasprintf("width over %d", UIDL_TEMPLATE_MAX_WIDTH);
			return false;
		}
	}
	for (; *p == 'X' || *p == 'L' || *p == 'U'; p++) {
		if (sp->n_mods == N_ELEMENTS(sp->mods)) {
			*error_r = xasprintf("too many modifiers");
			return false;
		}
		sp->mods[sp->n_mods++] = *p;
	}
	if (*p == '\0') {
		*error_r = xasprintf("'%%' at the end");
		return false;
	}
	sp->name = p;
	sp->name_len = 1;
	if (*p == '{') {
		const char *end = strchr(p, '}');
		if (end == NULL) {
			*error_r = xasprintf("'%%{' without '}'");
			return false;
		}
		sp->name = p + 1;
		sp->name_len = (size_t)(end - sp->name);
		p = end;
	}
	*pp = p;
	return true;
}

/* The value of one variable, modified and sized as sp says, into o. */
static void
uidl_template_put(struct uidl_out *o, const struct uidl_spec *sp, const char *val)
{
	char buf[UIDL_EXPAND_MAX + 1];
	size_t width = sp->width;

	snprintf(buf, sizeof(buf), "%s", val);
	uidl_template_modify(buf, sizeof(buf), sp->mods, sp->n_mods);
	size_t len = strlen(buf);
	if (width > 0 && !sp->zero && len > width)
		len = width;             /* Dovecot: a plain width truncates */
	for (; sp->zero && len < width; width--)
		uidl_out_add(o, "0", 1);
	uidl_out_add(o, buf, len);
}

/* Expand template for v into o. With v NULL only the syntax is checked.
 * Returns false with *error_r on a template outside the subset. */
static bool
uidl_template_expand(const char *template, const struct uidl_vars *v, struct uidl_out *o,
    char **error_r)
{
	static const struct uidl_vars dummy = { "1", "1", "g", "f" };
	struct uidl_spec sp;

	for (const char *p = template; *p != '\0'; p++) {
		if (*p != '%') {
			if ((unsigned char)*p - 0x21u > 0x7eu - 0x21u) {
				*error_r = xasprintf("a UIDL cannot contain the character 0x%02x",
				    (unsigned char)*p);
				return false;
			}
			uidl_out_add(o, p, 1);
			continue;
		}
		if (*++p == '%') {
			uidl_out_add(o, p, 1);
			continue;
		}
		if (!uidl_template_spec(&p, &sp, error_r))
			return false;
		const char *val = uidl_template_var(v != NULL ? v : &dummy, sp.name, sp.name_len);
		if (val == NULL) {
			*error_r = xasprintf("variable '%.*s' is not one of u, v, g, f (%%m, offsets "
			    "and modifiers other than X, L and U are not supported)",
			    (int)(sp.name_len > 20 ? 20 : sp.name_len), sp.name);
			return false;
		}
		uidl_template_put(o, &sp, val);
	}
	return true;
}

bool
uidl_dovecot_template_check(const char *template, char **error_r)
{
	struct uidl_out o = { .len = 0 };
	char *error = NULL;

	if (*template == '\0') {
		*error_r = xasprintf("empty pop3_uidl_format");
		return false;
	}
	if (!uidl_template_expand(template, NULL, &o, &error)) {
		*error_r = xasprintf("pop3_uidl_format '%s': %s", template, error);
		free(error);
		return false;
	}
	return true;
}

/* ---- reading the lists ---- */

static struct uidl_old_entry *
uidl_old_add(struct uidl_old_list *l)
{
	if (l->count == l->alloc) {
		l->alloc = l->alloc == 0 ? 256 : l->alloc * 2;
		l->entries = xrealloc(l->entries, l->alloc * sizeof(*l->entries));
	}
	struct uidl_old_entry *e = &l->entries[l->count];
	memset(e, 0, sizeof(*e));
	e->line = l->count++;
	return e;
}

/* Leading decimal digits of *p as a UID, 1..UIDL_OLD_UID_MAX; *p moves past
 * them. 0 when there are none or the number is out of range. */
static uint32_t
uidl_old_parse_uid(char **p)
{
	uint64_t n = 0;
	char *s = *p;

	for (; *s >= '0' && *s <= '9'; s++) {
		n = n * 10 + (uint64_t)(*s - '0');
		if (n > UIDL_OLD_UID_MAX)
			return 0;
	}
	*p = s;
	return (uint32_t)n;
}

static void
uidl_old_set_base(struct uidl_old_entry *e, const char *file)
{
	const char *colon = strchr(file, ':');
	e->base = file;
	e->base_len = colon != NULL ? (size_t)(colon - file) : strlen(file);
}

/* The header line of a dovecot-uidlist: "3 V... N... ..." or "1 V N". */
static bool
uidl_dovecot_header(struct uidl_old_list *l, char *line, int *version_r, uint32_t *next_uid_r,
    char **error_r)
{
	uint32_t validity = 0, next = 0;

	if (line[0] < '0' || line[0] > '9' || line[1] != ' ') {
		*error_r = xasprintf("no version number in the header");
		return false;
	}
	*version_r = line[0] - '0';
	line += 2;
	if (*version_r == 1) {
		char *sp = strchr(line, ' ');
		if (sp == NULL)
			goto bad;
		*sp = '\0';
		/* Dovecot reads "%u %u": what follows the second number is
		 * not looked at. */
		char *end = sp + 1 + strspn(sp + 1, "0123456789");
		*end = '\0';
		if (!parse_u32(line, UINT32_MAX, &validity) ||
		    !parse_u32(sp + 1, UINT32_MAX, &next))
			goto bad;
	} else if (*version_r == 3) {
		for (char *tok = line, *end; *tok != '\0'; tok = end) {
			end = tok + strcspn(tok, " ");
			char key = *tok, saved = *end;
			*end = '\0';
			if ((key == 'V' && !parse_u32(tok + 1, UINT32_MAX, &validity)) ||
			    (key == 'N' && !parse_u32(tok + 1, UINT32_MAX, &next)))
				goto bad;
			*end = saved;
			end += strspn(end, " ");
		}
	} else {
		*error_r = xasprintf("unsupported version %d", *version_r);
		return false;
	}
	if (validity == 0 || next == 0)
		goto bad;
	l->uidvalidity = validity;
	*next_uid_r = next;
	return true;
bad:
	*error_r = xasprintf("broken header");
	return false;
}

/* The ext fields of a version 3 line, up to ':'; *p moves to the file
 * name. Fields whose key is not a capital letter are dropped, as Dovecot
 * drops them. Returns false when no file name follows. */
static bool
uidl_dovecot_ext(char **p, struct uidl_old_entry *e)
{
	char *s = *p;

	while (*s != '\0' && *s != ':') {
		char *end = s + strcspn(s, " ");
		bool more = *end != '\0';
		*end = '\0';
		if (*s == 'P' && e->pop3 == NULL)
			e->pop3 = s + 1;
		else if (*s == 'G' && e->guid == NULL && s[1] != '\0')
			e->guid = s + 1;
		s = more ? end + 1 : end;
		s += strspn(s, " ");
	}
	if (*s == ':')
		s++;
	*p = s;
	return *s != '\0';
}

/* One message line "<uid> [ext] :<file>" (version 1: "<uid> <file>"). */
static bool
uidl_dovecot_line(struct uidl_old_list *l, char *line, int version, uint32_t next_uid,
    uint32_t *prev_uid, char **error_r)
{
	char *p = line;
	uint32_t uid = uidl_old_parse_uid(&p);

	if (uid == 0 || *p != ' ') {
		*error_r = xasprintf("line %zu: no UID", l->count + 2);
		return false;
	}
	if (uid <= *prev_uid || (version == 1 && uid >= next_uid)) {
		*error_r = xasprintf("line %zu: UIDs out of order", l->count + 2);
		return false;
	}
	*prev_uid = uid;
	p += strspn(p, " ");
	struct uidl_old_entry *e = uidl_old_add(l);
	e->uid = uid;
	if ((version == 3 && !uidl_dovecot_ext(&p, e)) || *p == '\0' ||
	    strchr(p, '/') != NULL) {
		*error_r = xasprintf("line %zu: broken file name", l->count + 1);
		return false;
	}
	uidl_old_set_base(e, p);
	return true;
}

static int
uidl_old_entry_cmp(const void *pa, const void *pb)
{
	const struct uidl_old_entry *a = pa, *b = pb;
	int r = memcmp(a->base, b->base, a->base_len < b->base_len ? a->base_len : b->base_len);

	if (r != 0)
		return r;
	if (a->base_len != b->base_len)
		return a->base_len < b->base_len ? -1 : 1;
	return a->line < b->line ? -1 : a->line > b->line ? 1 : 0;
}

/* Sorted by name for the lookups; of several lines for one name the last
 * one stays (Dovecot replaces an earlier UID of the same file). */
static void
uidl_old_sort(struct uidl_old_list *l)
{
	size_t kept = 0;

	if (l->count > 1)
		qsort(l->entries, l->count, sizeof(*l->entries), uidl_old_entry_cmp);
	for (size_t i = 0; i < l->count; i++) {
		if (kept > 0 && l->entries[kept - 1].base_len == l->entries[i].base_len &&
		    memcmp(l->entries[kept - 1].base, l->entries[i].base,
		    l->entries[i].base_len) == 0)
			kept--;
		l->entries[kept++] = l->entries[i];
	}
	l->count = kept;
}

/* Calls one(l, line, arg) for each complete line after the first, which
 * goes to header(). A last line without its newline is being written by
 * the old server (or was cut): Dovecot and Courier do not read it either. */
static bool
uidl_old_lines(struct uidl_old_list *l, size_t len, char **first_r, char **rest_r)
{
	char *nl = memchr(l->text, '\n', len);

	if (memchr(l->text, '\0', len) != NULL || nl == NULL)
		return false;
	*nl = '\0';
	*first_r = l->text;
	*rest_r = nl + 1;
	/* Cut the unterminated tail, so every line ends with '\n'. */
	char *end = l->text + len;
	while (end > *rest_r && end[-1] != '\n')
		end--;
	*end = '\0';
	return true;
}

static struct uidl_old_list *
uidl_old_new(enum uidl_format format, char *text)
{
	struct uidl_old_list *l = xcalloc(1, sizeof(*l));
	l->format = format;
	l->text = text;
	return l;
}

struct uidl_old_list *
uidl_dovecot_parse(char *text, size_t len, const char *template, char **error_r)
{
	struct uidl_old_list *l = uidl_old_new(UIDL_FORMAT_DOVECOT, text);
	uint32_t next_uid = 0, prev_uid = 0;
	char *first, *rest, *nl;
	int version;

	l->template = xstrdup(template);
	if (!uidl_old_lines(l, len, &first, &rest)) {
		*error_r = xasprintf("empty, binary or without a complete header line");
		goto fail;
	}
	if (!uidl_dovecot_header(l, first, &version, &next_uid, error_r))
		goto fail;
	for (char *line = rest; *line != '\0'; line = nl + 1) {
		nl = strchr(line, '\n');
		*nl = '\0';
		if (l->count >= POPBOXD_OLD_UIDLIST_MAX / 4) {
			*error_r = xasprintf("too many lines");
			goto fail;
		}
		if (!uidl_dovecot_line(l, line, version, next_uid, &prev_uid, error_r))
			goto fail;
	}
	uidl_old_sort(l);
	return l;
fail:
	uidl_old_free(l);
	return NULL;
}

/* "SIZE UID:UIDV[:UTF8]" of a courierpop3dsizelist line. */
static bool
uidl_courier_fields(char *s, struct uidl_old_entry *e)
{
	uint64_t v;
	char *p = s + strspn(s, "0123456789");

	if (p == s || *p != ' ')
		return false;
	s = p + 1;
	p = s + strspn(s, "0123456789");
	if (p == s || *p != ':')
		return false;
	*p = '\0';
	if (!parse_u64(s, UINT32_MAX, &v))
		return false;
	e->uid = (uint32_t)v;
	s = p + 1;
	p = s + strspn(s, "0123456789");
	if (p == s || (*p != '\0' && *p != ':'))
		return false;
	char saved = *p;
	*p = '\0';
	if (!parse_u64(s, UINT32_MAX, &v))
		return false;
	e->uidvalidity = (uint32_t)v;
	if (saved == ':') {
		s = p + 1;
		if (*s == '\0' || s[strspn(s, "0123456789")] != '\0')
			return false;
	}
	return true;
}

struct uidl_old_list *
uidl_courier_parse(char *text, size_t len, char **error_r)
{
	struct uidl_old_list *l = uidl_old_new(UIDL_FORMAT_COURIER, text);
	char *first, *rest, *nl;

	if (!uidl_old_lines(l, len, &first, &rest)) {
		*error_r = xasprintf("empty, binary or without a complete header line");
		goto fail;
	}
	if (first[0] != '/' || (first[1] != '2' && first[1] != '3') || first[2] != ' ') {
		*error_r = xasprintf("not a version 2 or 3 list");
		goto fail;
	}
	for (char *line = rest; *line != '\0'; line = nl + 1) {
		nl = strchr(line, '\n');
		*nl = '\0';
		char *sp2 = strrchr(line, ' '), *sp1;
		if (sp2 == NULL)
			continue;
		*sp2 = '\0';
		sp1 = strrchr(line, ' ');
		*sp2 = ' ';
		if (sp1 == NULL || sp1 == line || l->count >= POPBOXD_OLD_UIDLIST_MAX / 4)
			continue;
		*sp1 = '\0';
		struct uidl_old_entry e = { 0 };
		if (!uidl_courier_fields(sp1 + 1, &e) || strchr(line, '/') != NULL)
			continue;         /* Courier skips what it cannot read */
		struct uidl_old_entry *ne = uidl_old_add(l);
		size_t order = ne->line;
		*ne = e;
		ne->line = order;
		uidl_old_set_base(ne, line);
	}
	uidl_old_sort(l);
	return l;
fail:
	uidl_old_free(l);
	return NULL;
}

struct uidl_old_list *
uidl_old_load(int root_fd, enum uidl_format format, const char *template, char **error_r)
{
	const char *name = format == UIDL_FORMAT_DOVECOT ? UIDL_DOVECOT_LIST_NAME :
	    UIDL_COURIER_LIST_NAME;
	char *text = NULL, *error = NULL;
	size_t len = 0;
	int fd;

	*error_r = NULL;
	if (format != UIDL_FORMAT_DOVECOT && format != UIDL_FORMAT_COURIER)
		return NULL;
	/* Inside the maildrop, relative to its safely opened descriptor: a
	 * link there is not followed, a FIFO does not block us. */
	fd = openat(root_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT)
			*error_r = xasprintf("%s: cannot open: %s", name, strerror(errno));
		return NULL;
	}
	int r = util_read_file_bounded(fd, name, POPBOXD_OLD_UIDLIST_MAX, 0, &text, &len,
	    error_r);
	close(fd);
	if (r < 0)
		return NULL;
	struct uidl_old_list *l = format == UIDL_FORMAT_DOVECOT ?
	    uidl_dovecot_parse(text, len, template, &error) :
	    uidl_courier_parse(text, len, &error);
	if (l == NULL) {
		*error_r = xasprintf("%s: %s, not used", name, error);
		free(error);
	}
	return l;
}

static const struct uidl_old_entry *
uidl_old_find(const struct uidl_old_list *l, const char *base, size_t len)
{
	size_t lo = 0, hi = l->count;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct uidl_old_entry *e = &l->entries[mid];
		int r = memcmp(e->base, base, e->base_len < len ? e->base_len : len);
		if (r == 0)
			r = e->base_len < len ? -1 : e->base_len > len ? 1 : 0;
		if (r == 0)
			return e;
		if (r < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Courier's UIDL for a line without a UID: the name, with '+XX' for
 * characters a UIDL cannot hold and for quotes and '+'. */
static void
uidl_courier_name(struct uidl_out *o, const char *base, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)base[i];
		if (c < 0x21 || c > 0x7e || c == '\'' || c == '"' || c == '+') {
			char hex[4];
			snprintf(hex, sizeof(hex), "+%02X", c);
			uidl_out_add(o, hex, 3);
		} else {
			uidl_out_add(o, base + i, 1);
		}
	}
}

static void
uidl_old_format(const struct uidl_old_list *l, const struct uidl_old_entry *e, struct uidl_out *o)
{
	char uid[16], validity[16], base[UIDL_EXPAND_MAX + 1];

	if (l->format == UIDL_FORMAT_COURIER) {
		if (e->uid == 0) {
			uidl_courier_name(o, e->base, e->base_len);
			return;
		}
		char buf[40];
		int n = e->uidvalidity != 0 ?
		    snprintf(buf, sizeof(buf), "UID%u-%u", e->uid, e->uidvalidity) :
		    snprintf(buf, sizeof(buf), "UID%u", e->uid);
		uidl_out_add(o, buf, (size_t)n);
		return;
	}
	if (e->pop3 != NULL) {          /* a stored UIDL wins */
		if (*e->pop3 == '\0')
			uidl_out_add(o, e->base, e->base_len);
		else
			uidl_out_add(o, e->pop3, strlen(e->pop3));
		return;
	}
	if (e->base_len > UIDL_EXPAND_MAX) {
		o->full = true;
		return;
	}
	memcpy(base, e->base, e->base_len);
	base[e->base_len] = '\0';
	snprintf(uid, sizeof(uid), "%u", e->uid);
	snprintf(validity, sizeof(validity), "%u", l->uidvalidity);
	struct uidl_vars v = { uid, validity, e->guid != NULL ? e->guid : base, base };
	char *error = NULL;
	if (!uidl_template_expand(l->template, &v, o, &error)) {
		free(error);        /* checked at start-up: cannot happen */
		o->full = true;
	}
}

char *
uidl_old_lookup(const struct uidl_old_list *list, const char *base, size_t len,
    enum uidl_old_miss *miss_r)
{
	struct uidl_out o = { .len = 0 };
	const struct uidl_old_entry *e;

	if (list == NULL) {
		*miss_r = UIDL_OLD_NO_LIST;
		return NULL;
	}
	if ((e = uidl_old_find(list, base, len)) == NULL) {
		*miss_r = UIDL_OLD_NOT_LISTED;
		return NULL;
	}
	uidl_old_format(list, e, &o);
	if (o.full || !uidl_is_valid(o.buf, o.len)) {
		*miss_r = UIDL_OLD_INVALID;
		return NULL;
	}
	*miss_r = UIDL_OLD_FOUND;
	return xstrndup(o.buf, o.len);
}

size_t
uidl_old_count(const struct uidl_old_list *list)
{
	return list != NULL ? list->count : 0;
}

void
uidl_old_free(struct uidl_old_list *list)
{
	if (list == NULL)
		return;
	free(list->text);
	free(list->template);
	free(list->entries);
	free(list);
}

/* ---- uniqueness ---- */

static int
uidl_slot_cmp(const void *pa, const void *pb)
{
	const struct uidl_slot *a = *(const struct uidl_slot *const *)pa;
	const struct uidl_slot *b = *(const struct uidl_slot *const *)pb;
	int r = strcmp(a->uidl, b->uidl);

	if (r != 0)
		return r;
	if (a->rank != b->rank)
		return a->rank < b->rank ? -1 : 1;
	return a < b ? -1 : a > b ? 1 : 0;
}

/* One round: returns how many slots got a new UIDL. The slots that give
 * way are all chosen before any is changed, so a replacement is compared
 * only in the next round. */
static size_t
uidl_unique_round(struct uidl_slot **order, struct uidl_slot **losers, size_t n,
    unsigned round)
{
	size_t changed = 0;
	const struct uidl_slot *keeper;

	qsort(order, n, sizeof(*order), uidl_slot_cmp);
	keeper = order[0];
	for (size_t i = 1; i < n; i++) {
		if (strcmp(keeper->uidl, order[i]->uidl) == 0)
			losers[changed++] = order[i];
		else
			keeper = order[i];
	}
	for (size_t k = 0; k < changed; k++) {
		struct uidl_slot *s = losers[k];
		char *next = round == 0 ? maildir_uidl_from_name(s->base, s->base_len) : NULL;
		if (next == NULL || strcmp(next, s->uidl) == 0) {
			free(next);
			next = maildir_uidl_salted(s->base, s->base_len, round + 1);
		}
		free(s->uidl);
		s->uidl = next;
		s->replaced = true;
	}
	return changed;
}

size_t
uidl_make_unique(struct uidl_slot *slots, size_t n)
{
	struct uidl_slot **order, **losers;
	size_t replaced = 0;

	if (n < 2)
		return 0;
	order = xcalloc(n, sizeof(*order));
	losers = xcalloc(n, sizeof(*losers));
	for (size_t i = 0; i < n; i++)
		order[i] = &slots[i];
	for (unsigned round = 0; round < UIDL_UNIQUE_ROUNDS; round++) {
		size_t changed = uidl_unique_round(order, losers, n, round);
		if (changed == 0)
			break;
		replaced += changed;
	}
	free(order);
	free(losers);
	return replaced;
}

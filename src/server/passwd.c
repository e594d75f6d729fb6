/* Users file (Dovecot passwd-file format) and password verification.
 * Contract in passwd.h; this file says why. */
#include "server/passwd.h"
#include "server/devices.h"

#include "common/log.h"
#include "common/scram.h"
#include "common/util.h"
#include "server/limits_popboxd.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

/* The whole file is read into memory and entries point into it, up to
 * POPBOXD_USERS_FILE_MAX (limits_popboxd.h). */
/* user + hash + home + extra fields fit easily; longer lines are damage. */
#define PASSWD_LINE_MAX 16384
/* Upper bound on entries, so a runaway generated file cannot exhaust memory. */
#define PASSWD_USERS_MAX 10000000
/* Fields we store: user, password, uid, gid, gecos, home; shell and extra
 * fields (Dovecot userdb extras) are accepted and ignored. */
#define PASSWD_FIELDS 8
/* Initial hash table size (power of two); it doubles at half full. */
#define PASSWD_TABLE_INITIAL 1024
/* Distinct hash parameter sets tracked when choosing the dummy hash. */
#define PASSWD_DUMMY_CLASSES_MAX 32
#define PASSWD_DUMMY_CLASS_LEN 64
/* The phrase hashed for unknown users; its value does not matter. */
#define PASSWD_DUMMY_PHRASE "popbox-dummy-password"
/* The salt of a dummy SCRAM secret; its value does not matter either. */
#define PASSWD_DUMMY_SALT "popbox-dummy-slt"
/* Longest {SCHEME} name, with encoding suffix, e.g. "SHA512-CRYPT.B64". */
#define PASSWORD_SCHEME_MAX 32
/* Longest plaintext verified: far beyond any real password, and it bounds
 * the work a client can cause (hash cost grows with length for some). */
#define PASSWORD_PLAIN_MAX 4096

struct passwd_db {
	char *name;
	char *text;              /* the file, fields NUL-terminated in place */
	size_t text_len;
	struct passwd_entry *entries;
	unsigned *lines;         /* line number of each entry, for duplicates */
	size_t count, alloc;
	uint32_t *table;         /* open addressing: entry index + 1, 0 = free */
	size_t table_size;
	char *dummy;             /* stored-form secret for password_verify_dummy */
	char dummy_class[PASSWD_DUMMY_CLASS_LEN]; /* its cost class (password_cost_class), "" = none */
	unsigned scram_iterations;   /* the most common of the SCRAM secrets */
	size_t scram_salt_len;       /* the same for their salts' length in octets */
};

/* Field value for a missing field: the struct has char * members. */
static char passwd_empty[1];

static uint64_t
passwd_hash(const char *s)
{
	/* FNV-1a: the file is admin-written, so hash flooding is not a threat. */
	uint64_t h = 0xcbf29ce484222325ULL;
	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ULL;
	}
	return h;
}

static void
passwd_table_insert(uint32_t *table, size_t size, const char *user, uint32_t index)
{
	size_t mask = size - 1;
	size_t i = (size_t)passwd_hash(user) & mask;
	while (table[i] != 0)
		i = (i + 1) & mask;
	table[i] = index + 1;
}

static void
passwd_table_grow(struct passwd_db *db)
{
	size_t size = db->table_size ? db->table_size * 2 : PASSWD_TABLE_INITIAL;
	uint32_t *table = xcalloc(size, sizeof(*table));
	for (size_t i = 0; i < db->count; i++)
		passwd_table_insert(table, size, db->entries[i].user, (uint32_t)i);
	free(db->table);
	db->table = table;
	db->table_size = size;
}

static long
passwd_table_find(const struct passwd_db *db, const char *user)
{
	if (db->table_size == 0)
		return -1;
	size_t mask = db->table_size - 1;
	size_t i = (size_t)passwd_hash(user) & mask;
	while (db->table[i] != 0) {
		uint32_t idx = db->table[i] - 1;
		if (strcmp(db->entries[idx].user, user) == 0)
			return (long)idx;
		i = (i + 1) & mask;
	}
	return -1;
}

/* User names end up in paths (mail_location_expand) and log lines, and
 * the protocol cannot carry whitespace in USER: refuse anything odd. */
static const char *
passwd_user_problem(const char *user)
{
	size_t len = strlen(user);
	if (len == 0)
		return "empty user name";
	if (len > POPBOXD_USER_MAX)
		return "user name too long";
	for (const char *c = user; *c != '\0'; c++) {
		unsigned char u = (unsigned char)*c;
		if (u <= 0x20 || u == 0x7f)
			return "user name contains whitespace or control characters";
	}
	return NULL;
}

/* The settings popboxd takes from the extra fields (space-separated
 * key=value, Dovecot's userdb extras); others are ignored. Returns a
 * problem, or NULL. */
static const char *
passwd_extra_fields(char *extra, struct passwd_entry *e)
{
	static const char *const keys[] = { "uidl_format=", "userdb_uidl_format=" };

	e->uidl_format = UIDL_FORMAT_UNSET;
	e->expire = 0;
	e->login_delay = 0;
	for (char *tok = extra, *end; *tok != '\0'; tok = end) {
		end = tok + strcspn(tok, " \t");
		char saved = *end;
		*end = '\0';
		int days;
		unsigned delay;
		if (strncmp(tok, "expire_days=", 12) == 0) {
			if (!devices_parse_expire(tok + 12, &days)) {
				*end = saved;
				return "expire_days is not a number of days (0 to 3650) or never";
			}
			e->expire = days == DEVICES_EXPIRE_NEVER ? 1 : 2 + (unsigned)days;
		}
		if (strncmp(tok, "login_delay=", 12) == 0) {
			if (!devices_parse_login_delay(tok + 12, &delay)) {
				*end = saved;
				return "login_delay is not a number of seconds (0 to 86400)";
			}
			e->login_delay = 1 + delay;
		}
		for (size_t k = 0; k < N_ELEMENTS(keys); k++) {
			size_t n = strlen(keys[k]);
			if (strncmp(tok, keys[k], n) == 0 &&
			    !uidl_format_parse(tok + n, &e->uidl_format)) {
				*end = saved;
				return "uidl_format is not popbox, dovecot, courier or popa3d";
			}
		}
		*end = saved;
		end += strspn(end, " \t");
	}
	return NULL;
}

static void
passwd_db_add_line(struct passwd_db *db, char *line, unsigned lineno)
{
	char *fields[PASSWD_FIELDS];
	size_t n = 0;
	const char *problem;
	char *s = line;

	/* Split in place; the last field keeps any further ':' (extra fields). */
	fields[n++] = s;
	while (n < PASSWD_FIELDS && (s = strchr(s, ':')) != NULL) {
		*s++ = '\0';
		fields[n++] = s;
	}
	if (n < 2) {
		/* Never print the line: it may be a password pasted in the wrong place. */
		log_warnx("%s:%u: skipped line: no ':' after the user name", db->name, lineno);
		return;
	}
	if ((problem = passwd_user_problem(fields[0])) != NULL) {
		log_warnx("%s:%u: skipped line: %s", db->name, lineno, problem);
		return;
	}
	long prev = passwd_table_find(db, fields[0]);
	if (prev >= 0) {
		/* First wins, like Dovecot: appending a line must not take over. */
		char u[POPBOXD_USER_MAX + 1];
		str_sanitize(u, sizeof(u), fields[0], strlen(fields[0]));
		log_warnx("%s:%u: duplicate user '%s' ignored (first on line %u)",
		    db->name, lineno, u, db->lines[prev]);
		return;
	}
	if (db->count >= PASSWD_USERS_MAX) {
		if (db->count == PASSWD_USERS_MAX)
			log_warnx("%s:%u: more than %d users; the rest are ignored",
			    db->name, lineno, PASSWD_USERS_MAX);
		return;
	}
	if (db->count == db->alloc) {
		db->alloc = db->alloc ? db->alloc * 2 : 256;
		db->entries = xrealloc(db->entries, db->alloc * sizeof(*db->entries));
		db->lines = xrealloc(db->lines, db->alloc * sizeof(*db->lines));
	}
	if ((db->count + 1) * 2 > db->table_size)
		passwd_table_grow(db);

	struct passwd_entry *e = &db->entries[db->count];
	if ((problem = passwd_extra_fields(n > 7 ? fields[7] : passwd_empty, e)) != NULL) {
		log_warnx("%s:%u: skipped line: %s", db->name, lineno, problem);
		return;
	}
	e->user = fields[0];
	e->password = fields[1];
	e->uid = n > 2 ? fields[2] : passwd_empty;
	e->gid = n > 3 ? fields[3] : passwd_empty;
	e->home = n > 5 ? fields[5] : passwd_empty;
	db->lines[db->count] = lineno;
	passwd_table_insert(db->table, db->table_size, e->user, (uint32_t)db->count);
	db->count++;
}

/* ---- password schemes ---- */

enum password_kind {
	PASSWORD_KIND_PLAIN,
	PASSWORD_KIND_CRYPT,
};

struct password_scheme {
	const char *name;
	enum password_kind kind;
	/* crypt: the hash must start with one of these; NULL = any crypt(3) */
	const char *const *prefixes;
};

static const char *const password_prefix_md5[] = { "$1$", NULL };
static const char *const password_prefix_sha256[] = { "$5$", NULL };
static const char *const password_prefix_sha512[] = { "$6$", NULL };
static const char *const password_prefix_blf[] = { "$2a$", "$2b$", "$2y$", NULL };

static const struct password_scheme password_schemes[] = {
	{ "PLAIN", PASSWORD_KIND_PLAIN, NULL },
	{ "CLEARTEXT", PASSWORD_KIND_PLAIN, NULL },
	{ "CRYPT", PASSWORD_KIND_CRYPT, NULL },
	{ "MD5-CRYPT", PASSWORD_KIND_CRYPT, password_prefix_md5 },
	{ "SHA256-CRYPT", PASSWORD_KIND_CRYPT, password_prefix_sha256 },
	{ "SHA512-CRYPT", PASSWORD_KIND_CRYPT, password_prefix_sha512 },
	{ "BLF-CRYPT", PASSWORD_KIND_CRYPT, password_prefix_blf },
};

enum password_encoding {
	PASSWORD_ENC_NONE,
	PASSWORD_ENC_B64,
	PASSWORD_ENC_HEX,
};

struct password_parsed {
	const struct password_scheme *scheme; /* NULL: bare crypt(3) string */
	enum password_encoding encoding;
	const char *data;                     /* after "{SCHEME}" */
	char name[PASSWORD_SCHEME_MAX + 1];   /* sanitised, for logs */
};

/* Split "{SCHEME[.ENC]}data". Returns false for an unknown or malformed
 * scheme, with p->name set for the log line. */
static bool
password_parse(const char *stored, struct password_parsed *p)
{
	memset(p, 0, sizeof(*p));
	p->data = stored;
	if (stored[0] != '{')
		return true;
	const char *end = strchr(stored, '}');
	size_t len = end ? (size_t)(end - stored - 1) : strlen(stored + 1);
	str_sanitize(p->name, sizeof(p->name), stored + 1,
	    len < PASSWORD_SCHEME_MAX ? len : PASSWORD_SCHEME_MAX);
	if (end == NULL || len == 0 || len > PASSWORD_SCHEME_MAX)
		return false;

	char name[PASSWORD_SCHEME_MAX + 1];
	memcpy(name, stored + 1, len);
	name[len] = '\0';
	char *dot = strchr(name, '.');
	if (dot != NULL) {
		*dot++ = '\0';
		if (strcasecmp(dot, "B64") == 0 || strcasecmp(dot, "BASE64") == 0)
			p->encoding = PASSWORD_ENC_B64;
		else if (strcasecmp(dot, "HEX") == 0)
			p->encoding = PASSWORD_ENC_HEX;
		else
			return false;
	}
	for (size_t i = 0; i < N_ELEMENTS(password_schemes); i++) {
		if (strcasecmp(name, password_schemes[i].name) == 0) {
			p->scheme = &password_schemes[i];
			break;
		}
	}
	if (p->scheme == NULL)
		return false;
	/* Encodings only make sense for the plaintext; a crypt string is text. */
	if (p->encoding != PASSWORD_ENC_NONE && p->scheme->kind != PASSWORD_KIND_PLAIN)
		return false;
	p->data = end + 1;
	return true;
}

static int
password_b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z') return c - 'A';
	if (c >= 'a' && c <= 'z') return c - 'a' + 26;
	if (c >= '0' && c <= '9') return c - '0' + 52;
	if (c == '+') return 62;
	if (c == '/') return 63;
	return -1;
}

/* Strict RFC 4648 base64 (padding optional). Returns decoded length or -1. */
static long
password_b64_decode(const char *in, unsigned char *out)
{
	size_t len = strlen(in), o = 0;
	uint32_t acc = 0;
	int bits = 0;

	while (len > 0 && in[len - 1] == '=')
		len--;
	if (strlen(in) - len > 2)
		return -1;
	for (size_t i = 0; i < len; i++) {
		int v = password_b64_value((unsigned char)in[i]);
		if (v < 0)
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(acc >> bits);
		}
	}
	if (bits >= 6)
		return -1;
	return (long)o;
}

static long
password_hex_decode(const char *in, unsigned char *out)
{
	size_t len = strlen(in);
	if (len % 2 != 0)
		return -1;
	for (size_t i = 0; i < len; i += 2) {
		int v = 0;
		for (size_t j = 0; j < 2; j++) {
			char c = in[i + j];
			int d = c >= '0' && c <= '9' ? c - '0'
			    : c >= 'a' && c <= 'f' ? c - 'a' + 10
			    : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
			if (d < 0)
				return -1;
			v = v * 16 + d;
		}
		out[i / 2] = (unsigned char)v;
	}
	return (long)(len / 2);
}

/* Compare digests rather than the strings: equal time whatever the length
 * of either, so the stored password's length does not leak. */
static bool
password_plain_eq(const void *a, size_t alen, const void *b, size_t blen)
{
	unsigned char da[EVP_MAX_MD_SIZE], dbuf[EVP_MAX_MD_SIZE];
	unsigned int la = 0, lb = 0;

	if (EVP_Digest(a, alen, da, &la, EVP_sha256(), NULL) != 1 ||
	    EVP_Digest(b, blen, dbuf, &lb, EVP_sha256(), NULL) != 1 || la != lb)
		fatalx("password: SHA-256 failed");
	bool eq = const_time_eq(da, dbuf, la);
	secure_wipe(da, sizeof(da));
	secure_wipe(dbuf, sizeof(dbuf));
	return eq;
}

static enum password_result
password_verify_plain(const struct password_parsed *p, const char *plain)
{
	size_t plen = strlen(plain);

	if (p->encoding == PASSWORD_ENC_NONE)
		return password_plain_eq(p->data, strlen(p->data), plain, plen)
		    ? PASSWORD_OK : PASSWORD_MISMATCH;

	size_t dlen = strlen(p->data);
	unsigned char *buf = xmalloc(dlen + 1);
	long n = p->encoding == PASSWORD_ENC_B64 ? password_b64_decode(p->data, buf)
	    : password_hex_decode(p->data, buf);
	enum password_result r;
	if (n < 0) {
		log_warnx("password: malformed {%s} data", p->name);
		r = PASSWORD_BAD_SCHEME;
	} else {
		r = password_plain_eq(buf, (size_t)n, plain, plen) ? PASSWORD_OK : PASSWORD_MISMATCH;
	}
	secure_wipe(buf, dlen + 1);
	free(buf);
	return r;
}

/* The crypt(3) method id for logs: "$6$" -> "6"; never any hash bytes. */
static void
password_crypt_id(const char *hash, char *out, size_t size)
{
	const char *end;
	if (hash[0] != '$' || (end = strchr(hash + 1, '$')) == NULL || (size_t)(end - hash) > 8) {
		snprintf(out, size, "(none)");
		return;
	}
	str_sanitize(out, size, hash + 1, (size_t)(end - hash - 1));
}

static enum password_result
password_verify_crypt(const struct password_parsed *p, const char *plain)
{
	const char *hash = p->data;
	struct crypt_data *cd;
	enum password_result r;
	char id[16];

	if (p->scheme != NULL && p->scheme->prefixes != NULL) {
		bool ok = false;
		for (const char *const *pre = p->scheme->prefixes; *pre != NULL; pre++)
			if (strncmp(hash, *pre, strlen(*pre)) == 0)
				ok = true;
		if (!ok) {
			password_crypt_id(hash, id, sizeof(id));
			log_warnx("password: {%s} secret is not a %s hash (id %s)", p->name,
			    p->scheme->name, id);
			return PASSWORD_BAD_SCHEME;
		}
	}
	/* struct crypt_data is ~32 KiB: heap, never the stack of a thread. */
	cd = xcalloc(1, sizeof(*cd));
	const char *out = crypt_rn(plain, hash, cd, (int)sizeof(*cd));
	if (out == NULL || out[0] == '*') {
		password_crypt_id(hash, id, sizeof(id));
		log_warnx("password: hash method %s not supported by crypt(3)", id);
		r = PASSWORD_BAD_SCHEME;
	} else {
		size_t len = strlen(out);
		/* Lengths are public (they follow from the method). */
		r = len == strlen(hash) && const_time_eq(out, hash, len)
		    ? PASSWORD_OK : PASSWORD_MISMATCH;
	}
	secure_wipe(cd, sizeof(*cd));
	free(cd);
	return r;
}

enum password_result
password_verify(const char *stored, const char *plain)
{
	struct password_parsed p;

	/* An empty secret disables the account, and an empty password is never
	 * accepted: a blank PASS must not open any account (passwd.h). */
	if (stored == NULL || plain == NULL || stored[0] == '\0' || plain[0] == '\0')
		return PASSWORD_MISMATCH;
	if (strlen(plain) > PASSWORD_PLAIN_MAX)
		return PASSWORD_MISMATCH;
	if (strncasecmp(stored, "{SCRAM-SHA-", 11) == 0) {
		/* SCRAM secrets verify USER/PASS and AUTH PLAIN too, as in Dovecot:
		 * recompute StoredKey from the password. */
		struct scram_secret sec;
		char *error = NULL;
		if (scram_secret_parse(stored, &sec, &error) < 0) {
			log_warnx("password: malformed SCRAM secret: %s", error);
			free(error);
			return PASSWORD_BAD_SCHEME;
		}
		bool ok = scram_secret_verify(&sec, plain);
		scram_secret_clear(&sec);
		return ok ? PASSWORD_OK : PASSWORD_MISMATCH;
	}
	if (!password_parse(stored, &p)) {
		log_warnx("password: unknown password scheme {%s}", p.name);
		return PASSWORD_BAD_SCHEME;
	}
	if (p.scheme != NULL && p.scheme->kind == PASSWORD_KIND_PLAIN)
		return password_verify_plain(&p, plain);
	/* "!hash" / "*": the shadow(5) convention for locked accounts. A locked
	 * hash is still computed, so that timing does not tell locked accounts
	 * from others. */
	if (p.data[0] == '!' && p.data[1] != '\0') {
		p.data++;
		(void)password_verify_crypt(&p, plain);
		return PASSWORD_MISMATCH;
	}
	if (p.data[0] == '!' || p.data[0] == '*' || p.data[0] == '\0')
		return PASSWORD_MISMATCH;
	return password_verify_crypt(&p, plain);
}

const char *
password_plaintext(const char *stored)
{
	struct password_parsed p;

	if (stored == NULL || !password_parse(stored, &p) || p.scheme == NULL ||
	    p.scheme->kind != PASSWORD_KIND_PLAIN || p.encoding != PASSWORD_ENC_NONE)
		return NULL;
	return p.data;
}

/* Cost class of a secret: the method and its cost parameters, without
 * salt or hash ("$6$rounds=10000$", "$2y$12$", "$y$j9T$", "$1$", "PLAIN").
 * Returns false for secrets that are never verified (disabled, unknown). */
static bool
password_cost_class(const char *stored, char *out, size_t size)
{
	struct password_parsed p;

	if (strncasecmp(stored, "{SCRAM-SHA-", 11) == 0) {
		/* SCRAM: PBKDF2 of the mechanism's hash, as many iterations
		 * as the secret says ("SCRAM-SHA-256:4096") */
		struct scram_secret sec;
		char *error = NULL;
		if (scram_secret_parse(stored, &sec, &error) < 0) {
			free(error);
			return false;
		}
		snprintf(out, size, "%s:%u", sec.mech, sec.iterations);
		scram_secret_clear(&sec);
		return true;
	}
	if (stored[0] == '\0' || !password_parse(stored, &p))
		return false;
	if (p.scheme != NULL && p.scheme->kind == PASSWORD_KIND_PLAIN) {
		snprintf(out, size, "PLAIN");
		return true;
	}
	const char *h = p.data;
	if (h[0] == '!' && h[1] != '\0')
		h++;   /* "!hash": locked, but its hash is still computed */
	if (h[0] == '!' || h[0] == '*' || h[0] == '\0')
		return false;
	if (h[0] != '$') {
		snprintf(out, size, "DES");
		return true;
	}
	const char *id_end = strchr(h + 1, '$');
	if (id_end == NULL)
		return false;
	size_t len = (size_t)(id_end - h) + 1;
	const char *next = strchr(id_end + 1, '$');
	/* Methods whose second field is the cost (bcrypt, yescrypt, gost-yescrypt,
	 * scrypt) or sha-crypt with explicit rounds: include that field. */
	size_t idlen = (size_t)(id_end - h - 1);
	bool cost_field = (strncmp(id_end + 1, "rounds=", 7) == 0) ||
	    (idlen == 2 && h[1] == '2') || (idlen == 1 && h[1] == 'y') ||
	    (idlen == 2 && strncmp(h + 1, "gy", 2) == 0);
	/* scrypt "$7$": N, r, p are the 11 characters before the salt. */
	if (idlen == 1 && h[1] == '7')
		len += strlen(id_end + 1) >= 11 ? 11 : 0;
	else if (cost_field && next != NULL)
		len = (size_t)(next - h) + 1;
	if (len >= size)
		return false;
	memcpy(out, h, len);
	out[len] = '\0';
	return true;
}

/* Count value v in a small table of (value, count); a table that is full
 * ignores new values. */
struct passwd_tally {
	size_t n;
	struct {
		uint64_t value;
		size_t count;
	} rows[PASSWD_DUMMY_CLASSES_MAX];
};

static void
passwd_tally_add(struct passwd_tally *t, uint64_t v)
{
	size_t i;
	for (i = 0; i < t->n && t->rows[i].value != v; i++)
		;
	if (i == t->n) {
		if (t->n == N_ELEMENTS(t->rows))
			return;
		t->rows[t->n].value = v;
		t->rows[t->n++].count = 0;
	}
	t->rows[i].count++;
}

/* The most common value (the first seen among equals), or dflt. */
static uint64_t
passwd_tally_most(const struct passwd_tally *t, uint64_t dflt)
{
	size_t best = 0;
	if (t->n == 0)
		return dflt;
	for (size_t i = 1; i < t->n; i++)
		if (t->rows[i].count > t->rows[best].count)
			best = i;
	return t->rows[best].value;
}

/* The iteration count and salt length most SCRAM secrets have: what SCRAM
 * announces for users without a secret of its mechanism. */
static void
passwd_db_prepare_scram(struct passwd_db *db)
{
	struct passwd_tally iterations = { 0 }, salt_lens = { 0 };
	for (size_t i = 0; i < db->count; i++) {
		struct scram_secret sec;
		char *error = NULL;
		if (strncasecmp(db->entries[i].password, "{SCRAM-SHA-", 11) != 0)
			continue;
		if (scram_secret_parse(db->entries[i].password, &sec, &error) < 0) {
			free(error);
			continue;
		}
		size_t b64 = strlen(sec.salt_b64), pad = 0;
		while (pad < b64 && pad < 2 && sec.salt_b64[b64 - 1 - pad] == '=')
			pad++;
		passwd_tally_add(&iterations, sec.iterations);
		passwd_tally_add(&salt_lens, (b64 - pad) * 3 / 4);
		scram_secret_clear(&sec);
	}
	db->scram_iterations = (unsigned)passwd_tally_most(&iterations, SCRAM_ITERATIONS_DEFAULT);
	db->scram_salt_len = (size_t)passwd_tally_most(&salt_lens, SCRAM_SALT_SIZE);
}

void
passwd_db_scram_defaults(const struct passwd_db *db, unsigned *iterations_r, size_t *salt_len_r)
{
	*iterations_r = db != NULL ? db->scram_iterations : SCRAM_ITERATIONS_DEFAULT;
	*salt_len_r = db != NULL ? db->scram_salt_len : SCRAM_SALT_SIZE;
}

/* Choose the cost class most users have and prepare a secret of that class,
 * so an unknown user costs what a typical known one does. */
static void
passwd_db_prepare_dummy(struct passwd_db *db)
{
	struct {
		char key[PASSWD_DUMMY_CLASS_LEN];
		size_t count, rep;
	} classes[PASSWD_DUMMY_CLASSES_MAX];
	size_t n_classes = 0, best = 0;
	char key[PASSWD_DUMMY_CLASS_LEN];

	for (size_t i = 0; i < db->count; i++) {
		size_t c;
		if (!password_cost_class(db->entries[i].password, key, sizeof(key)))
			continue;
		for (c = 0; c < n_classes; c++)
			if (strcmp(classes[c].key, key) == 0)
				break;
		if (c == n_classes) {
			if (n_classes == PASSWD_DUMMY_CLASSES_MAX)
				continue;
			memcpy(classes[c].key, key, sizeof(key));
			classes[c].count = 0;
			classes[c].rep = i;
			n_classes++;
		}
		classes[c].count++;
	}
	if (n_classes == 0)
		return;
	for (size_t c = 1; c < n_classes; c++)
		if (classes[c].count > classes[best].count)
			best = c;

	const char *rep = db->entries[classes[best].rep].password;
	_Static_assert(sizeof(db->dummy_class) == sizeof(classes[best].key), "same size");
	memcpy(db->dummy_class, classes[best].key, sizeof(db->dummy_class));
	if (strcmp(classes[best].key, "PLAIN") == 0) {
		db->dummy = xstrdup("{PLAIN}" PASSWD_DUMMY_PHRASE);
		return;
	}
	if (strncasecmp(rep, "{SCRAM-SHA-", 11) == 0) {
		/* The same mechanism and iteration count, a fixed salt. */
		struct scram_secret sec;
		char *error = NULL;
		if (scram_secret_parse(rep, &sec, &error) == 0) {
			db->dummy = scram_secret_make(PASSWD_DUMMY_PHRASE, sec.mech, sec.iterations,
			    (const unsigned char *)PASSWD_DUMMY_SALT, sizeof(PASSWD_DUMMY_SALT) - 1,
			    &error);
			scram_secret_clear(&sec);
		}
		if (db->dummy == NULL) {
			log_warnx("%s: cannot make a dummy SCRAM secret: %s", db->name,
			    error ? error : "unknown error");
			db->dummy_class[0] = '\0';
		}
		free(error);
		return;
	}
	/* Hash a fixed phrase with the representative's salt and parameters:
	 * same method and cost, and not any user's secret. Keep its {SCHEME}
	 * prefix so verification takes the same path. */
	struct password_parsed p;
	(void)password_parse(rep, &p);
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	const char *hash = p.data[0] == '!' ? p.data + 1 : p.data;
	const char *out = crypt_rn(PASSWD_DUMMY_PHRASE, hash, cd, (int)sizeof(*cd));
	if (out != NULL && out[0] != '*') {
		db->dummy = xasprintf("%.*s%s", (int)(p.data - rep), rep, out);
	} else {
		log_warnx("%s: the most common hash method is not supported by crypt(3)", db->name);
		db->dummy_class[0] = '\0';
	}
	secure_wipe(cd, sizeof(*cd));
	free(cd);
}

void
password_verify_dummy(const struct passwd_db *db, const char *plain)
{
	if (db == NULL || db->dummy == NULL || plain == NULL)
		return;
	/* An empty or over-long password would be refused before any work. */
	bool usable = plain[0] != '\0' && strlen(plain) <= PASSWORD_PLAIN_MAX;
	(void)password_verify(db->dummy, usable ? plain : PASSWD_DUMMY_PHRASE);
}

/* Whether verifying e costs about what the dummy does: e's secret is of the
 * dummy's cost class, or of a class at least as costly. Disabled entries
 * and unknown schemes cost nothing, {PLAIN} next to nothing. */
static bool
passwd_entry_costs_dummy(const struct passwd_db *db, const struct passwd_entry *e)
{
	char key[PASSWD_DUMMY_CLASS_LEN];
	if (!password_cost_class(e->password, key, sizeof(key)))
		return false;
	return strcmp(key, "PLAIN") != 0 || strcmp(db->dummy_class, "PLAIN") == 0;
}

enum password_result
passwd_db_verify(const struct passwd_db *db, const struct passwd_entry *e, const char *plain)
{
	if (e == NULL) {
		password_verify_dummy(db, plain);
		return PASSWORD_MISMATCH;
	}
	enum password_result r = password_verify(e->password, plain);
	/* password_verify refuses an empty or over-long password before any
	 * work: such a password costs the dummy's work for everyone. */
	if (plain == NULL || plain[0] == '\0' || strlen(plain) > PASSWORD_PLAIN_MAX ||
	    !passwd_entry_costs_dummy(db, e))
		password_verify_dummy(db, plain);
	return r;
}

bool
passwd_db_verify_is_cheap(const struct passwd_db *db, const struct passwd_entry *e)
{
	char key[PASSWD_DUMMY_CLASS_LEN];
	bool dummy_cheap = db->dummy == NULL || strcmp(db->dummy_class, "PLAIN") == 0;
	if (e == NULL || !password_cost_class(e->password, key, sizeof(key)))
		return dummy_cheap;
	return dummy_cheap && strcmp(key, "PLAIN") == 0;
}

/* ---- loading ---- */

static void
passwd_db_parse_buffer(struct passwd_db *db)
{
	char *s = db->text, *end = db->text + db->text_len;
	unsigned lineno = 0;

	while (s < end) {
		char *nl = memchr(s, '\n', (size_t)(end - s));
		size_t len = nl ? (size_t)(nl - s) : (size_t)(end - s);
		char *line = s;

		lineno++;
		s = nl ? nl + 1 : end;
		line[len] = '\0';  /* the buffer has one spare byte at the end */
		if (len > 0 && line[len - 1] == '\r')
			line[--len] = '\0';
		if (len > PASSWD_LINE_MAX) {
			log_warnx("%s:%u: skipped line: longer than %d bytes", db->name, lineno,
			    PASSWD_LINE_MAX);
			continue;
		}
		if (strlen(line) != len) {
			log_warnx("%s:%u: skipped line: NUL byte", db->name, lineno);
			continue;
		}
		const char *t = line;
		while (*t == ' ' || *t == '\t')
			t++;
		if (*t == '\0' || *t == '#')
			continue;
		passwd_db_add_line(db, line, lineno);
	}
	passwd_db_prepare_dummy(db);
	passwd_db_prepare_scram(db);
}

static struct passwd_db *
passwd_db_new(const char *name, char *text, size_t len)
{
	struct passwd_db *db = xcalloc(1, sizeof(*db));
	db->name = xstrdup(name);
	db->text = text;
	db->text_len = len;
	return db;
}

int
passwd_db_parse(const char *name, const char *text, struct passwd_db **db_r, char **error_r)
{
	size_t len = strlen(text);
	char *copy = xmalloc(len + 1);
	memcpy(copy, text, len + 1);
	struct passwd_db *db = passwd_db_new(name, copy, len);
	passwd_db_parse_buffer(db);
	*db_r = db;
	return 0;
}

int
passwd_db_load_fd(const char *name, int fd, struct passwd_db **db_r, char **error_r)
{
	char *buf;
	size_t len;

	*db_r = NULL;
	if (util_read_file_bounded(fd, name, POPBOXD_USERS_FILE_MAX, UTIL_READ_SECRET, &buf, &len,
	    error_r) < 0)
		return -1;
	/* The buffer is the database's: entries point into it. */
	struct passwd_db *db = passwd_db_new(name, buf, len);
	passwd_db_parse_buffer(db);
	*db_r = db;
	return 0;
}

int
passwd_db_load(const char *path, struct passwd_db **db_r, char **error_r)
{
	*db_r = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		*error_r = xasprintf("%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	int r = passwd_db_load_fd(path, fd, db_r, error_r);
	close(fd);
	return r;
}

void
passwd_db_free(struct passwd_db *db)
{
	if (db == NULL)
		return;
	/* The buffer holds every secret in the file. */
	secure_wipe(db->text, db->text_len + 1);
	free(db->text);
	free(db->entries);
	free(db->lines);
	free(db->table);
	free_secret(db->dummy);
	free(db->name);
	free(db);
}

const struct passwd_entry *
passwd_db_lookup(const struct passwd_db *db, const char *user)
{
	if (db == NULL || user == NULL)
		return NULL;
	long i = passwd_table_find(db, user);
	return i < 0 ? NULL : &db->entries[i];
}

size_t
passwd_db_count(const struct passwd_db *db)
{
	return db == NULL ? 0 : db->count;
}

const struct passwd_entry *
passwd_db_entry(const struct passwd_db *db, size_t i)
{
	return db != NULL && i < db->count ? &db->entries[i] : NULL;
}

/* ---- mail location ---- */

/* A value substituted into a path must stay one harmless piece of a
 * component: no '/', no "." or "..", no hidden names, nothing unprintable. */
static const char *
mail_location_value_problem(const char *value, size_t len, bool may_be_empty)
{
	if (len == 0)
		return may_be_empty ? NULL : "is empty";
	if (value[0] == '.')
		return "starts with '.'";
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)value[i];
		if (c == '/')
			return "contains '/'";
		if (c < 0x20 || c == 0x7f)
			return "contains control characters";
	}
	return NULL;
}

/* What is wrong with an expanded path (after the "type:" prefix), or NULL:
 * control characters, a "." or ".." component, nothing at all. */
static const char *
mail_location_path_problem(const char *path)
{
	if (*path == '\0')
		return "is empty";
	for (const char *c = path; *c != '\0'; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			return "contains control characters";
	for (const char *c = path; *c != '\0'; ) {
		const char *slash = strchr(c, '/');
		size_t clen = slash ? (size_t)(slash - c) : strlen(c);
		if ((clen == 1 && c[0] == '.') || (clen == 2 && c[0] == '.' && c[1] == '.'))
			return "contains '.' or '..'";
		if (slash == NULL)
			break;
		c = slash + 1;
	}
	return NULL;
}

/* One piece (about 90 lines): a single pass over the template that appends
 * to one bounded buffer through APPEND, whose bounds check and the one
 * error exit (fail) every step shares; split, each part would need the
 * buffer, its length and the exit passed along. */
char *
mail_location_expand(const char *template, const struct passwd_entry *entry, char **error_r)
{
	const char *user = entry->user;
	const char *at = strchr(user, '@');
	size_t user_len = strlen(user);
	size_t local_len = at ? (size_t)(at - user) : user_len;
	const char *domain = at ? at + 1 : "";
	size_t domain_len = strlen(domain);
	const char *t = template;
	char user_s[POPBOXD_USER_MAX + 1];
	size_t cap = POPBOXD_MAIL_LOCATION_MAX, len = 0;
	char *out;

	str_sanitize(user_s, sizeof(user_s), user, user_len);
	out = xmalloc(cap);

	/* A "type:" prefix (maildir:) is copied; "~" is only special after it. */
	const char *colon = strchr(t, ':');
	if (colon != NULL && colon > t) {
		const char *c = t;
		while (c < colon && *c >= 'a' && *c <= 'z')
			c++;
		if (c == colon) {
			len = (size_t)(colon - t) + 1;
			memcpy(out, t, len);
			t = colon + 1;
		}
	}
	size_t path_start = len;

#define APPEND(ptr, n) do { \
		if (len + (n) >= cap) { \
			*error_r = xasprintf("mail location for user '%s' is too long", user_s); \
			goto fail; \
		} \
		memcpy(out + len, (ptr), (n)); \
		len += (n); \
	} while (0)

	if (t[0] == '~' && (t[1] == '\0' || t[1] == '/')) {
		const char *home = entry->home != NULL ? entry->home : "";
		size_t hlen = strlen(home);
		if (hlen == 0) {
			*error_r = xasprintf("mail location uses ~ but user '%s' has no home", user_s);
			goto fail;
		}
		if (home[0] != '/') {
			*error_r = xasprintf("home of user '%s' is not an absolute path", user_s);
			goto fail;
		}
		while (hlen > 1 && home[hlen - 1] == '/')
			hlen--;
		APPEND(home, hlen);
		t++;
		if (hlen == 1 && *t == '/')
			t++;  /* home "/" + "/x" -> "/x" */
	}

	for (; *t != '\0'; t++) {
		if (*t != '%') {
			APPEND(t, 1);
			continue;
		}
		t++;
		const char *v, *problem, *what;
		size_t vlen;
		switch (*t) {
		case '%':
			APPEND("%", 1);
			continue;
		case 'u': v = user; vlen = user_len; what = "user name"; break;
		case 'n': v = user; vlen = local_len; what = "local part"; break;
		case 'd': v = domain; vlen = domain_len; what = "domain"; break;
		default:
			*error_r = xasprintf("mail location: unknown variable '%%%c'",
			    *t >= 0x21 && *t < 0x7f ? *t : '?');
			goto fail;
		}
		if ((problem = mail_location_value_problem(v, vlen, *t == 'd')) != NULL) {
			*error_r = xasprintf("user '%s' refused for the mail location: %s %s",
			    user_s, what, problem);
			goto fail;
		}
		APPEND(v, vlen);
	}
#undef APPEND
	out[len] = '\0';

	/* Last line of defence, whatever the template and home produced. */
	const char *problem = mail_location_path_problem(out + path_start);
	if (problem != NULL) {
		*error_r = xasprintf("mail location for user '%s' %s", user_s, problem);
		goto fail;
	}
	return out;
fail:
	free(out);
	return NULL;
}

const char *
passwd_db_dummy_secret(const struct passwd_db *db)
{
	return db == NULL ? NULL : db->dummy;
}

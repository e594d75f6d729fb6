/* Unit tests for src/server/passwd.c: users file, password schemes,
 * dummy verification and mail location expansion. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/scram.h"
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "server/passwd.h"

/* A real hash made here, so the tests do not depend on fixtures. */
static char *
make_hash(const char *prefix, unsigned long count, const char *password)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	assert_non_null(crypt_gensalt_rn(prefix, count, NULL, 0, salt, sizeof(salt)));
	const char *out = crypt_rn(password, salt, cd, (int)sizeof(*cd));
	assert_non_null(out);
	assert_true(out[0] != '*');
	char *r = xstrdup(out);
	free(cd);
	return r;
}

/* stderr captured to a file while the log writes there. */
struct capture {
	char path[64];
	int fd, saved;
};

static void
capture_start(struct capture *c)
{
	strcpy(c->path, "/tmp/popbox-test-log-XXXXXX");
	c->fd = mkstemp(c->path);
	assert_true(c->fd >= 0);
	fflush(stderr);
	c->saved = dup(2);
	dup2(c->fd, 2);
}

static char *
capture_end(struct capture *c)
{
	static char buf[65536];
	fflush(stderr);
	dup2(c->saved, 2);
	close(c->saved);
	ssize_t n = pread(c->fd, buf, sizeof(buf) - 1, 0);
	buf[n < 0 ? 0 : n] = '\0';
	close(c->fd);
	unlink(c->path);
	return buf;
}

static struct passwd_db *
parse(const char *text)
{
	struct passwd_db *db = NULL;
	char *error = NULL;
	assert_int_equal(passwd_db_parse("users", text, &db, &error), 0);
	assert_non_null(db);
	return db;
}

static void
test_parse_variants(void **state)
{
	struct passwd_db *db = parse(
	    "# users file\n"
	    "\n"
	    "   # indented comment\n"
	    "alice:{PLAIN}secret:1000:1001:Alice A:/home/alice:/bin/sh:userdb_quota=1G\n"
	    "bob@example.org:{PLAIN}pw2\n"
	    "carol:{PLAIN}pw3:10:20\r\n"
	    "dave::::::\n"
	    "erin:{PLAIN}x:1:2::/home/erin\n"
	    "frank:{PLAIN}y:1:2:g:/h/f:/bin/false:a=b:c=d:e\n"
	    "last:{PLAIN}z");
	assert_int_equal(passwd_db_count(db), 7);

	const struct passwd_entry *e = passwd_db_lookup(db, "alice");
	assert_non_null(e);
	assert_string_equal(e->user, "alice");
	assert_string_equal(e->password, "{PLAIN}secret");
	assert_string_equal(e->uid, "1000");
	assert_string_equal(e->gid, "1001");
	assert_string_equal(e->home, "/home/alice");

	e = passwd_db_lookup(db, "bob@example.org");
	assert_non_null(e);
	assert_string_equal(e->password, "{PLAIN}pw2");
	assert_string_equal(e->uid, "");
	assert_string_equal(e->gid, "");
	assert_string_equal(e->home, "");

	e = passwd_db_lookup(db, "carol");
	assert_string_equal(e->password, "{PLAIN}pw3");
	assert_string_equal(e->gid, "20");
	assert_string_equal(e->home, "");

	e = passwd_db_lookup(db, "dave");
	assert_non_null(e);
	assert_string_equal(e->password, "");
	assert_int_equal(password_verify(e->password, ""), PASSWORD_MISMATCH);

	assert_string_equal(passwd_db_lookup(db, "erin")->home, "/home/erin");
	assert_string_equal(passwd_db_lookup(db, "frank")->home, "/h/f");
	assert_string_equal(passwd_db_lookup(db, "last")->password, "{PLAIN}z");

	/* exact, case-sensitive */
	assert_null(passwd_db_lookup(db, "Alice"));
	assert_null(passwd_db_lookup(db, "bob"));
	assert_null(passwd_db_lookup(db, ""));
	assert_null(passwd_db_lookup(db, NULL));
	assert_null(passwd_db_lookup(NULL, "alice"));
	assert_int_equal(passwd_db_count(NULL), 0);
	passwd_db_free(db);

	db = parse("");
	assert_int_equal(passwd_db_count(db), 0);
	assert_null(passwd_db_dummy_secret(db));
	password_verify_dummy(db, "x");
	passwd_db_free(db);
	passwd_db_free(NULL);
}

static void
test_bad_lines_skipped(void **state)
{
	struct capture cap;
	char *long_line = xmalloc(20000);
	memset(long_line, 'a', 19999);
	long_line[19999] = '\0';
	memcpy(long_line, "long:", 5);
	char *text = xasprintf(
	    "good1:{PLAIN}one\n"
	    "nocolonSECRET1\n"                  /* 2 */
	    ":{PLAIN}SECRET2\n"                 /* 3 */
	    "bad user:{PLAIN}SECRET3\n"         /* 4 */
	    "tab\tuser:{PLAIN}SECRET4\n"        /* 5 */
	    "ctl\001:{PLAIN}SECRET5\n"          /* 6 */
	    " lead:{PLAIN}SECRET6\n"            /* 7 */
	    "%s\n"                              /* 8 */
	    "good2:{PLAIN}two\n",
	    long_line);

	capture_start(&cap);
	struct passwd_db *db = parse(text);
	char *log = capture_end(&cap);

	assert_int_equal(passwd_db_count(db), 2);
	assert_non_null(passwd_db_lookup(db, "good1"));
	assert_non_null(passwd_db_lookup(db, "good2"));
	assert_non_null(strstr(log, "users:2: skipped line: no ':' after the user name"));
	assert_non_null(strstr(log, "users:3: skipped line: empty user name"));
	assert_non_null(strstr(log, "users:4: skipped line: user name contains whitespace or control characters"));
	assert_non_null(strstr(log, "users:5: skipped line: user name contains whitespace"));
	assert_non_null(strstr(log, "users:6: skipped line: user name contains whitespace"));
	assert_non_null(strstr(log, "users:7: skipped line: user name contains whitespace"));
	assert_non_null(strstr(log, "users:8: skipped line: longer than 16384 bytes"));
	/* never a password */
	assert_null(strstr(log, "SECRET"));
	assert_null(strstr(log, "aaaa"));
	passwd_db_free(db);
	free(text);
	free(long_line);
}

static void
test_duplicates(void **state)
{
	struct capture cap;
	capture_start(&cap);
	struct passwd_db *db = parse(
	    "alice:{PLAIN}first\n"
	    "bob:{PLAIN}b\n"
	    "alice:{PLAIN}SECOND\n");
	char *log = capture_end(&cap);
	assert_int_equal(passwd_db_count(db), 2);
	assert_string_equal(passwd_db_lookup(db, "alice")->password, "{PLAIN}first");
	assert_non_null(strstr(log, "users:3: duplicate user 'alice' ignored (first on line 1)"));
	assert_null(strstr(log, "SECOND"));
	assert_null(strstr(log, "first\n"));
	passwd_db_free(db);
}

static void
test_load_file(void **state)
{
	char path[] = "/tmp/popbox-test-users-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *text = "alice:{PLAIN}pw:::x:/home/alice\nbob:{PLAIN}pw2\n";
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);

	struct passwd_db *db = NULL;
	char *error = NULL;
	assert_int_equal(passwd_db_load(path, &db, &error), 0);
	assert_int_equal(passwd_db_count(db), 2);
	assert_string_equal(passwd_db_lookup(db, "alice")->home, "/home/alice");
	passwd_db_free(db);
	unlink(path);

	assert_int_equal(passwd_db_load("/nonexistent/users", &db, &error), -1);
	assert_null(db);
	assert_string_equal(error, "/nonexistent/users: cannot open: No such file or directory");
	free(error);
	assert_int_equal(passwd_db_load("/tmp", &db, &error), -1);
	assert_string_equal(error, "/tmp: not a regular file");
	free(error);
}

static void
test_load_fd(void **state)
{
	/* From a descriptor (as the master hands it over), whatever its
	 * offset; a line with a NUL byte is skipped, not the rest of the file. */
	char path[] = "/tmp/popbox-test-users-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	static const char text[] = "alice:{PLAIN}pw\ncarol:{PL\0AIN}x\nbob:{PLAIN}pw2\n";
	assert_int_equal(write(fd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
	struct passwd_db *db = NULL;
	char *error = NULL;
	assert_int_equal(passwd_db_load_fd("users", fd, &db, &error), 0);
	assert_int_equal(passwd_db_count(db), 2);
	assert_non_null(passwd_db_lookup(db, "bob"));
	assert_null(passwd_db_lookup(db, "carol"));
	passwd_db_free(db);
	close(fd);
	unlink(path);
}

/* CPU time of this thread: a loaded machine does not inflate it the way
 * it does wall time (the scheduler's share is not counted). */
static double
cpu_seconds(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A users file of n users: user0@example.org .. user(n-1)@example.org. */
static char *
users_text(size_t n)
{
	size_t cap = n * 80 + 1, len = 0;
	char *text = xmalloc(cap);
	text[0] = '\0';
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(text + len, cap - len,
		    "user%zu@example.org:{PLAIN}pw%zu::::/home/u%zu\n", i, i, i);
	return text;
}

/* CPU seconds for parsing text, the least of three runs. */
static double
parse_cost(const char *text)
{
	double best = 1e9;
	for (int k = 0; k < 3; k++) {
		double t0 = cpu_seconds();
		struct passwd_db *db = parse(text);
		double t = cpu_seconds() - t0;
		passwd_db_free(db);
		if (t < best)
			best = t;
	}
	return best;
}

/* CPU seconds for `lookups` lookups of present and of absent names in a db
 * of n users, the least of three runs. */
static double
lookup_cost(const struct passwd_db *db, size_t n, size_t lookups)
{
	char name[64];
	double best = 1e9;
	for (int k = 0; k < 3; k++) {
		double t0 = cpu_seconds();
		for (size_t i = 0; i < lookups; i++) {
			snprintf(name, sizeof(name), "user%zu@example.org", (i * 7919) % n);
			if (passwd_db_lookup(db, name) == NULL)
				fail_msg("%s not found", name);
			snprintf(name, sizeof(name), "user%zu@example.com", (i * 7919) % n);
			if (passwd_db_lookup(db, name) != NULL)
				fail_msg("%s found", name);
		}
		double t = cpu_seconds() - t0;
		if (t < best)
			best = t;
	}
	return best;
}

static void
test_many_users(void **state)
{
	const size_t n = 100000, small = 1000, lookups = 50000;
	char *text = users_text(n);
	struct passwd_db *db = parse(text);
	char name[64];
	for (size_t i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "user%zu@example.org", i);
		const struct passwd_entry *e = passwd_db_lookup(db, name);
		assert_non_null(e);
		assert_string_equal(e->user, name);
	}
	for (size_t i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "user%zu@example.com", i);
		assert_null(passwd_db_lookup(db, name));
	}
	assert_int_equal(passwd_db_count(db), n);
	assert_string_equal(passwd_db_lookup(db, "user99999@example.org")->password, "{PLAIN}pw99999");

	/* The cost does not grow faster than it must: measured against 1,000
	 * users in CPU time, not against a wall-clock limit. The same number
	 * of lookups costs about the same in 100 times the users (a hash
	 * table; cache misses make it about 4 times here), where a linear scan
	 * would cost 100 times more: limit 20. Loading 100 times the users
	 * costs 100 to 700 times more here (cache misses again), where a
	 * quadratic step (a duplicate check by scanning, say) would cost
	 * 10,000 times more and then some: limit 5,000. */
	char *small_text = users_text(small);
	struct passwd_db *small_db = parse(small_text);
	double look_big = lookup_cost(db, n, lookups);
	double look_small = lookup_cost(small_db, small, lookups);
	double parse_big = parse_cost(text);
	double parse_small = parse_cost(small_text);
	if (!(look_big < 20 * look_small && parse_big < 5000 * parse_small))
		fail_msg("CPU s: %zu lookups in %zu users %.4f, in %zu users %.4f; "
		    "loading %zu users %.4f, %zu users %.4f", lookups, n, look_big, small, look_small,
		    n, parse_big, small, parse_small);
	passwd_db_free(small_db);
	free(small_text);
	passwd_db_free(db);
	free(text);
}

struct crypt_case {
	const char *scheme;  /* {SCHEME} name, NULL: only bare */
	const char *prefix;
	unsigned long count;
};

static void
test_verify_crypt_schemes(void **state)
{
	const struct crypt_case cases[] = {
		{ "SHA512-CRYPT", "$6$", 5000 },
		{ "SHA512-CRYPT", "$6$", 12000 },
		{ "SHA256-CRYPT", "$5$", 5000 },
		{ "BLF-CRYPT", "$2y$", 5 },
		{ "BLF-CRYPT", "$2b$", 4 },
		{ "MD5-CRYPT", "$1$", 0 },
		{ NULL, "$y$", 0 },   /* yescrypt: bare or {CRYPT} */
		{ NULL, "$gy$", 0 },
	};
	const char *password = "correct horse \xc3\xa9 battery";

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		char *hash = make_hash(cases[i].prefix, cases[i].count, password);
		char *stored[4];
		size_t n = 0;
		stored[n++] = xstrdup(hash);
		stored[n++] = xasprintf("{CRYPT}%s", hash);
		if (cases[i].scheme != NULL) {
			stored[n++] = xasprintf("{%s}%s", cases[i].scheme, hash);
			/* scheme names are case-insensitive */
			char *lower = xstrdup(cases[i].scheme);
			for (char *c = lower; *c; c++)
				if (*c >= 'A' && *c <= 'Z')
					*c = (char)(*c - 'A' + 'a');
			stored[n++] = xasprintf("{%s}%s", lower, hash);
			free(lower);
		}
		for (size_t j = 0; j < n; j++) {
			assert_int_equal(password_verify(stored[j], password), PASSWORD_OK);
			assert_int_equal(password_verify(stored[j], "correct horse"), PASSWORD_MISMATCH);
			assert_int_equal(password_verify(stored[j], ""), PASSWORD_MISMATCH);
			assert_int_equal(password_verify(stored[j], NULL), PASSWORD_MISMATCH);
			assert_null(password_plaintext(stored[j]));
			free(stored[j]);
		}
		/* a locked account ("!hash") matches nothing */
		char *locked = xasprintf("!%s", hash);
		assert_int_equal(password_verify(locked, password), PASSWORD_MISMATCH);
		free(locked);
		free(hash);
	}
}

static void
test_verify_scheme_mismatch(void **state)
{
	struct capture cap;
	char *md5 = make_hash("$1$", 0, "pw");
	char *stored = xasprintf("{SHA512-CRYPT}%s", md5);
	capture_start(&cap);
	/* the named scheme must match the hash method */
	assert_int_equal(password_verify(stored, "pw"), PASSWORD_BAD_SCHEME);
	char *log = capture_end(&cap);
	assert_non_null(strstr(log, "{SHA512-CRYPT} secret is not a SHA512-CRYPT hash (id 1)"));
	assert_null(strstr(log, md5 + 3));
	free(stored);

	stored = xasprintf("{BLF-CRYPT}%s", md5);
	assert_int_equal(password_verify(stored, "pw"), PASSWORD_BAD_SCHEME);
	free(stored);
	stored = xasprintf("{SHA512-CRYPT.HEX}%s", md5);
	assert_int_equal(password_verify(stored, "pw"), PASSWORD_BAD_SCHEME);
	free(stored);
	free(md5);
}

static void
test_verify_plain(void **state)
{
	const char *ok[] = {
		"{PLAIN}s3cret:x", "{CLEARTEXT}s3cret:x", "{plain}s3cret:x", "{Cleartext}s3cret:x",
		"{PLAIN.B64}czNjcmV0Ong=", "{PLAIN.BASE64}czNjcmV0Ong", "{CLEARTEXT.B64}czNjcmV0Ong=",
		"{PLAIN.HEX}73336372657433a78", /* odd length: malformed, checked below */
	};
	/* ':' cannot appear in a users file field, but the API takes any string */
	for (size_t i = 0; i < 7; i++) {
		assert_int_equal(password_verify(ok[i], "s3cret:x"), PASSWORD_OK);
		assert_int_equal(password_verify(ok[i], "s3cret:"), PASSWORD_MISMATCH);
		assert_int_equal(password_verify(ok[i], "s3cret:xx"), PASSWORD_MISMATCH);
		assert_int_equal(password_verify(ok[i], "S3cret:x"), PASSWORD_MISMATCH);
		assert_int_equal(password_verify(ok[i], ""), PASSWORD_MISMATCH);
	}
	assert_int_equal(password_verify(ok[7], "s3cret:x"), PASSWORD_BAD_SCHEME);
	assert_int_equal(password_verify("{PLAIN.HEX}7333637265743a78", "s3cret:x"), PASSWORD_OK);
	assert_int_equal(password_verify("{PLAIN.HEX}7333637265743A78", "s3cret:x"), PASSWORD_OK);
	assert_int_equal(password_verify("{PLAIN.B64}!!!", "s3cret:x"), PASSWORD_BAD_SCHEME);

	assert_string_equal(password_plaintext("{PLAIN}abc"), "abc");
	assert_string_equal(password_plaintext("{cleartext}abc"), "abc");
	assert_string_equal(password_plaintext("{PLAIN}"), "");
	assert_null(password_plaintext("{PLAIN.B64}YWJj"));
	assert_null(password_plaintext("abc"));
	assert_null(password_plaintext("{SSHA}abc"));
	assert_null(password_plaintext(NULL));

	/* {PLAIN} with an empty password: nothing matches (empty data) */
	assert_int_equal(password_verify("{PLAIN}", "x"), PASSWORD_MISMATCH);
	/* and an empty password never opens an account, even if it is the secret */
	assert_int_equal(password_verify("{PLAIN}", ""), PASSWORD_MISMATCH);
	char *empty_hash = make_hash("$6$", 5000, "");
	assert_int_equal(password_verify(empty_hash, ""), PASSWORD_MISMATCH);
	free(empty_hash);
}

static void
test_verify_unknown_and_empty(void **state)
{
	struct capture cap;
	const char *bad[] = {
		"{SSHA}abcdef", "{SCRAM-SHA-1}x", "{FOO}bar", "{}x", "{PLAIN", "{PLAIN.XYZ}x",
		"{AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA}x", "$9$garbage$garbage",
		"{CRYPT}$9$garbage",
	};
	capture_start(&cap);
	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		assert_int_equal(password_verify(bad[i], "x"), PASSWORD_BAD_SCHEME);
		assert_int_equal(password_verify(bad[i], bad[i]), PASSWORD_BAD_SCHEME);
	}
	char *log = capture_end(&cap);
	assert_non_null(strstr(log, "unknown password scheme {SSHA}"));
	assert_null(strstr(log, "abcdef"));
	assert_null(strstr(log, "garbage"));

	/* empty secret: account disabled, nothing matches */
	assert_int_equal(password_verify("", ""), PASSWORD_MISMATCH);
	assert_int_equal(password_verify("", "x"), PASSWORD_MISMATCH);
	assert_int_equal(password_verify(NULL, "x"), PASSWORD_MISMATCH);
	assert_int_equal(password_verify("*", "*"), PASSWORD_MISMATCH);
	assert_int_equal(password_verify("{CRYPT}", ""), PASSWORD_MISMATCH);
	/* a bare string that is not a hash never verifies as itself */
	assert_int_not_equal(password_verify("notahash", "notahash"), PASSWORD_OK);

	/* over-long plaintexts never match */
	char *big = xmalloc(5000);
	memset(big, 'a', 4999);
	big[4999] = '\0';
	char *stored = xasprintf("{PLAIN}%s", big);
	assert_int_equal(password_verify(stored, big), PASSWORD_MISMATCH);
	free(stored);
	free(big);
}

static void
test_dummy(void **state)
{
	/* most users: SHA512-CRYPT rounds=6000 with a {SCHEME} prefix */
	char *h1 = make_hash("$6$", 6000, "a");
	char *h2 = make_hash("$6$", 6000, "b");
	char *h3 = make_hash("$2y$", 4, "c");
	char *text = xasprintf("u1:{SHA512-CRYPT}%s\nu2:{SHA512-CRYPT}%s\nu3:%s\nu4:{PLAIN}x\n"
	    "u5:\nu6:{FOO}x\n", h1, h2, h3);
	struct passwd_db *db = parse(text);
	const char *dummy = passwd_db_dummy_secret(db);
	assert_non_null(dummy);
	assert_true(strncmp(dummy, "{SHA512-CRYPT}$6$rounds=6000$", 29) == 0);
	/* not any user's hash, and matches neither their passwords nor a guess */
	assert_string_not_equal(dummy + 14, h1);
	assert_string_not_equal(dummy + 14, h2);
	assert_int_equal(password_verify(dummy, "a"), PASSWORD_MISMATCH);
	password_verify_dummy(db, "a");
	password_verify_dummy(db, NULL);
	password_verify_dummy(NULL, "a");
	passwd_db_free(db);
	free(text);

	/* most users: bcrypt cost 5 (bare), a minority at cost 4 */
	char *b1 = make_hash("$2y$", 5, "a");
	char *b2 = make_hash("$2y$", 5, "b");
	text = xasprintf("u1:%s\nu2:%s\nu3:%s\n", b1, b2, h3);
	db = parse(text);
	dummy = passwd_db_dummy_secret(db);
	assert_non_null(dummy);
	assert_true(strncmp(dummy, "$2y$05$", 7) == 0);
	passwd_db_free(db);
	free(text);

	/* yescrypt */
	char *y1 = make_hash("$y$", 0, "a");
	text = xasprintf("u1:%s\nu2:{PLAIN}x\nu3:%s\n", y1, y1);
	db = parse(text);
	dummy = passwd_db_dummy_secret(db);
	assert_non_null(dummy);
	assert_true(strncmp(dummy, "$y$j9T$", 7) == 0);
	passwd_db_free(db);
	free(text);

	/* plaintext majority */
	text = xasprintf("u1:%s\nu2:{PLAIN}x\nu3:{CLEARTEXT}y\n", y1);
	db = parse(text);
	assert_true(strncmp(passwd_db_dummy_secret(db), "{PLAIN}", 7) == 0);
	password_verify_dummy(db, "x");
	passwd_db_free(db);
	free(text);

	/* no verifiable users: no dummy, and the call is harmless */
	db = parse("u1:\nu2:{FOO}bar\n");
	assert_null(passwd_db_dummy_secret(db));
	password_verify_dummy(db, "x");
	passwd_db_free(db);

	free(h1);
	free(h2);
	free(h3);
	free(b1);
	free(b2);
	free(y1);
}

static void
test_dummy_costs_the_same(void **state)
{
	/* rounds high enough that the hash dominates; bounds generous. CPU
	 * time of this thread, the least of three tries: wall time on a
	 * loaded machine measured the scheduler, not the hash. */
	char *h = make_hash("$6$", 200000, "pw");
	char *text = xasprintf("u1:{SHA512-CRYPT}%s\n", h);
	struct passwd_db *db = parse(text);
	double real = 1e9, dummy = 1e9;
	for (int i = 0; i < 3; i++) {
		double t0 = cpu_seconds();
		assert_int_equal(password_verify(passwd_db_lookup(db, "u1")->password, "wrong"),
		    PASSWORD_MISMATCH);
		double t1 = cpu_seconds();
		password_verify_dummy(db, "wrong");
		double t2 = cpu_seconds();
		if (t1 - t0 < real)
			real = t1 - t0;
		if (t2 - t1 < dummy)
			dummy = t2 - t1;
	}
	assert_true(dummy > real / 3);
	assert_true(dummy < real * 3);
	passwd_db_free(db);
	free(text);
	free(h);
}

/* A file of SCRAM secrets gets a dummy SCRAM secret of the same mechanism
 * and iteration count (it had none: unknown users cost nothing). */
static void
test_dummy_scram(void **state)
{
	char *s1 = scram_secret_make("a", "SCRAM-SHA-256", 5000, (const unsigned char *)"salt1", 5,
	    NULL);
	char *s2 = scram_secret_make("b", "SCRAM-SHA-256", 5000, (const unsigned char *)"salt2", 5,
	    NULL);
	char *text = xasprintf("u1:%s\nu2:%s\nu3:{PLAIN}x\nu4:*\n", s1, s2);
	struct passwd_db *db = parse(text);
	const char *dummy = passwd_db_dummy_secret(db);
	assert_non_null(dummy);
	assert_true(strncmp(dummy, "{SCRAM-SHA-256}5000,", 20) == 0);
	assert_int_equal(password_verify(dummy, "a"), PASSWORD_MISMATCH);
	assert_false(passwd_db_verify_is_cheap(db, NULL));
	assert_false(passwd_db_verify_is_cheap(db, passwd_db_lookup(db, "u3")));
	assert_int_equal(passwd_db_verify(db, passwd_db_lookup(db, "u1"), "a"), PASSWORD_OK);
	assert_int_equal(passwd_db_verify(db, passwd_db_lookup(db, "u3"), "x"), PASSWORD_OK);
	assert_int_equal(passwd_db_verify(db, passwd_db_lookup(db, "u4"), "*"), PASSWORD_MISMATCH);
	assert_int_equal(passwd_db_verify(db, NULL, "a"), PASSWORD_MISMATCH);
	passwd_db_free(db);
	free(text);
	free(s1);
	free(s2);
}

/* Unknown users, disabled entries ("", "*", "!"), an unknown scheme and a
 * {PLAIN} secret among SCRAM secrets cost what a wrong password for a
 * SCRAM user does (CPU time of this thread, least of five interleaved
 * tries, within a factor 3 either way). */
static void
test_verify_costs_the_same_for_everyone(void **state)
{
	char *s1 = scram_secret_make("pw", "SCRAM-SHA-256", 100000, (const unsigned char *)"salt", 4,
	    NULL);
	char *text = xasprintf("u1:%s\nu2:%s\nu3:\nu4:*\nu5:!\nu6:{FOO}x\nu7:{PLAIN}x\n", s1, s1);
	struct passwd_db *db = parse(text);
	const char *who[] = { "u1", NULL, "u3", "u4", "u5", "u6", "u7" };
	double best[N_ELEMENTS(who)];
	for (size_t i = 0; i < N_ELEMENTS(who); i++)
		best[i] = 1e9;
	/* Rounds over all kinds, so that a change in the machine's load (CPU
	 * time still stretches when another process shares the core) touches
	 * every kind alike; the least of five per kind. */
	for (int k = 0; k < 5; k++) {
		for (size_t i = 0; i < N_ELEMENTS(who); i++) {
			const struct passwd_entry *e = who[i] ? passwd_db_lookup(db, who[i]) : NULL;
			double t0 = cpu_seconds();
			assert_int_not_equal(passwd_db_verify(db, e, "wrong"), PASSWORD_OK);
			double t = cpu_seconds() - t0;
			if (t < best[i])
				best[i] = t;
		}
	}
	for (size_t i = 1; i < N_ELEMENTS(who); i++) {
		if (best[i] <= best[0] / 3 || best[i] >= best[0] * 3)
			fail_msg("%s: %.6f s of CPU against %.6f s for a SCRAM user",
			    who[i] ? who[i] : "(unknown)", best[i], best[0]);
	}
	passwd_db_free(db);
	free(text);
	free(s1);
}

static char *
expand(const char *template, const char *user, const char *home, char **error_r)
{
	struct passwd_entry e = {
		.user = (char *)user, .password = (char *)"", .uid = (char *)"",
		.gid = (char *)"", .home = (char *)home,
	};
	*error_r = NULL;
	return mail_location_expand(template, &e, error_r);
}

static void
expect_expand(const char *template, const char *user, const char *home, const char *want)
{
	char *error;
	char *got = expand(template, user, home, &error);
	if (got == NULL)
		fail_msg("expand('%s', '%s') failed: %s", template, user, error);
	assert_string_equal(got, want);
	free(got);
}

static void
expect_expand_error(const char *template, const char *user, const char *home, const char *want)
{
	char *error;
	char *got = expand(template, user, home, &error);
	if (got != NULL)
		fail_msg("expand('%s', '%s') gave '%s'", template, user, got);
	assert_non_null(error);
	assert_string_equal(error, want);
	free(error);
}

static void
test_mail_location(void **state)
{
	expect_expand("maildir:/var/mail/%u", "alice", "", "maildir:/var/mail/alice");
	expect_expand("maildir:/var/mail/%d/%n/Maildir", "bob@example.org", "",
	    "maildir:/var/mail/example.org/bob/Maildir");
	expect_expand("maildir:/var/mail/%u", "bob@example.org", "",
	    "maildir:/var/mail/bob@example.org");
	expect_expand("maildir:/m/%d/%n", "carol", "", "maildir:/m//carol");
	expect_expand("maildir:~/Maildir", "alice", "/home/alice", "maildir:/home/alice/Maildir");
	expect_expand("maildir:~/Maildir", "alice", "/home/alice/", "maildir:/home/alice/Maildir");
	expect_expand("maildir:~", "alice", "/home/alice", "maildir:/home/alice");
	expect_expand("maildir:~/M", "root", "/", "maildir:/M");
	expect_expand("maildir:/m/100%%/%n", "a@b", "", "maildir:/m/100%/a");
	expect_expand("/plain/%u", "alice", "", "/plain/alice");
	expect_expand("~/Maildir", "alice", "/home/a", "/home/a/Maildir");
	/* a '.' inside a name is fine */
	expect_expand("maildir:/m/%u", "a.b", "", "maildir:/m/a.b");
	expect_expand("maildir:/m/%n.%d", "a@b.c", "", "maildir:/m/a.b.c");

	expect_expand_error("maildir:~/Maildir", "alice", "",
	    "mail location uses ~ but user 'alice' has no home");
	expect_expand_error("maildir:~/Maildir", "alice", "home/alice",
	    "home of user 'alice' is not an absolute path");
	expect_expand_error("maildir:/m/%x", "alice", "", "mail location: unknown variable '%x'");
	expect_expand_error("maildir:/m/%", "alice", "", "mail location: unknown variable '%?'");

	/* traversal attempts */
	expect_expand_error("maildir:/m/%u", "../etc", "",
	    "user '../etc' refused for the mail location: user name starts with '.'");
	expect_expand_error("maildir:/m/%u", "..", "",
	    "user '..' refused for the mail location: user name starts with '.'");
	expect_expand_error("maildir:/m/%u", ".", "",
	    "user '.' refused for the mail location: user name starts with '.'");
	expect_expand_error("maildir:/m/%u", ".hidden", "",
	    "user '.hidden' refused for the mail location: user name starts with '.'");
	expect_expand_error("maildir:/m/%u", "a/../../b", "",
	    "user 'a/../../b' refused for the mail location: user name contains '/'");
	expect_expand_error("maildir:/m/%n", "a/b@x", "",
	    "user 'a/b@x' refused for the mail location: local part contains '/'");
	expect_expand_error("maildir:/m/%d/%n", "bob@..", "",
	    "user 'bob@..' refused for the mail location: domain starts with '.'");
	expect_expand_error("maildir:/m/%d/%n", "bob@x/../../etc", "",
	    "user 'bob@x/../../etc' refused for the mail location: domain contains '/'");
	expect_expand_error("maildir:/m/%d/%n", "@example.org", "",
	    "user '@example.org' refused for the mail location: local part is empty");
	expect_expand_error("maildir:/m/%u", "", "",
	    "user '' refused for the mail location: user name is empty");
	expect_expand_error("maildir:/m/%u", "a\nb", "",
	    "user 'a?b' refused for the mail location: user name contains control characters");
	/* '/' in parts the template does not use is harmless */
	expect_expand("maildir:/m/%d", "x/y@dom", "", "maildir:/m/dom");
	/* the final check catches '.' and '..' components from any source */
	expect_expand_error("maildir:/m/../%u", "alice", "",
	    "mail location for user 'alice' contains '.' or '..'");
	expect_expand_error("maildir:~/Maildir", "alice", "/home/../etc",
	    "mail location for user 'alice' contains '.' or '..'");
	expect_expand_error("maildir:", "alice", "", "mail location for user 'alice' is empty");

	/* over-long results */
	char *big = xmalloc(5000);
	memset(big, 'x', 4999);
	big[4999] = '\0';
	char *tpl = xasprintf("maildir:/%s/%%u", big);
	expect_expand_error(tpl, "alice", "", "mail location for user 'alice' is too long");
	free(tpl);
	free(big);
}

/* USER/PASS for users that only have a SCRAM secret (as Dovecot allows). */
static void
test_verify_scram_secret(void **state)
{
	char *sec256 = scram_secret_generate("hunter2", "SCRAM-SHA-256", 4096);
	char *sec1 = scram_secret_generate("hunter2", "SCRAM-SHA-1", 4096);
	assert_int_equal(password_verify(sec256, "hunter2"), PASSWORD_OK);
	assert_int_equal(password_verify(sec256, "hunter3"), PASSWORD_MISMATCH);
	assert_int_equal(password_verify(sec1, "hunter2"), PASSWORD_OK);
	assert_int_equal(password_verify(sec1, ""), PASSWORD_MISMATCH);
	assert_int_equal(password_verify("{SCRAM-SHA-256}4096,bad", "hunter2"), PASSWORD_BAD_SCHEME);
	free(sec256);
	free(sec1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_variants),
		cmocka_unit_test(test_bad_lines_skipped),
		cmocka_unit_test(test_duplicates),
		cmocka_unit_test(test_load_file),
		cmocka_unit_test(test_load_fd),
		cmocka_unit_test(test_many_users),
		cmocka_unit_test(test_verify_crypt_schemes),
		cmocka_unit_test(test_verify_scheme_mismatch),
		cmocka_unit_test(test_verify_plain),
		cmocka_unit_test(test_verify_unknown_and_empty),
		cmocka_unit_test(test_dummy),
		cmocka_unit_test(test_dummy_costs_the_same),
		cmocka_unit_test(test_dummy_scram),
		cmocka_unit_test(test_verify_costs_the_same_for_everyone),
		cmocka_unit_test(test_mail_location),
		cmocka_unit_test(test_verify_scram_secret),
	};
	log_init("test_passwd", true, false);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

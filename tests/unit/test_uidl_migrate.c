/* Unit tests for the old servers' UIDL lists (server/uidl_migrate.h):
 * dovecot-uidlist and courierpop3dsizelist parsing, the pop3_uidl_format
 * subset, and uidl_make_unique. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "server/config.h"
#include "server/passwd.h"
#include "server/store.h"
#include "server/uidl_migrate.h"

static struct uidl_old_list *
dovecot(const char *text, const char *template)
{
	char *error = NULL;
	struct uidl_old_list *l = uidl_dovecot_parse(xstrdup(text), strlen(text), template, &error);
	if (l == NULL)
		free(error);
	return l;
}

static void
assert_lookup(const struct uidl_old_list *l, const char *base, const char *want)
{
	enum uidl_old_miss miss;
	char *got = uidl_old_lookup(l, base, strlen(base), &miss);
	if (want == NULL) {
		assert_null(got);
		return;
	}
	assert_non_null(got);
	assert_int_equal(miss, UIDL_OLD_FOUND);
	assert_string_equal(got, want);
	free(got);
}

/* base gets no UIDL from l, for the reason want. */
static void
assert_miss(const struct uidl_old_list *l, const char *base, enum uidl_old_miss want)
{
	enum uidl_old_miss miss;
	assert_null(uidl_old_lookup(l, base, strlen(base), &miss));
	assert_int_equal(miss, want);
}

static void
test_dovecot_default_format(void **state)
{
	struct uidl_old_list *l = dovecot("3 V1700000000 N4 G0123456789abcdef0123456789abcdef\n"
	    "1 :1000.A.host\n"
	    "2 W123 S120 :1001.B.host:2,S\n"
	    "3 G77aa :1002.C.host\n", UIDL_DOVECOT_DEFAULT_TEMPLATE);
	assert_non_null(l);
	assert_int_equal(uidl_old_count(l), 3);
	assert_lookup(l, "1000.A.host", "000000016553f100");
	assert_lookup(l, "1001.B.host", "000000026553f100");   /* flags in the list */
	assert_lookup(l, "1002.C.host", "000000036553f100");
	assert_miss(l, "1003.D.host", UIDL_OLD_NOT_LISTED);
	assert_miss(NULL, "1003.D.host", UIDL_OLD_NO_LIST);
	uidl_old_free(l);
}

static void
test_dovecot_templates(void **state)
{
	const char *text = "3 V42 N10\n7 G99 :1000.A.Host\n9 :1001.b.host\n";
	const struct { const char *template, *a, *b; } cases[] = {
		{ "%u", "7", "9" },
		{ "%v.%u", "42.7", "42.9" },
		{ "%g", "99", "1001.b.host" },          /* G, else the name */
		{ "%f", "1000.A.Host", "1001.b.host" },
		{ "%{uidvalidity}-%{uid}", "42-7", "42-9" },
		{ "%08Xu", "00000007", "00000009" },
		{ "%4f", "1000", "1001" },              /* a width truncates */
		{ "%Uf", "1000.A.HOST", "1001.B.HOST" },
		{ "%Lf", "1000.a.host", "1001.b.host" },
		{ "%Xg", "63", "0" },                   /* hex of a non-number: 0 */
		{ "UID%%%u", "UID%7", "UID%9" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *error = NULL;
		assert_true(uidl_dovecot_template_check(cases[i].template, &error));
		struct uidl_old_list *l = dovecot(text, cases[i].template);
		assert_non_null(l);
		assert_lookup(l, "1000.A.Host", cases[i].a);
		assert_lookup(l, "1001.b.host", cases[i].b);
		uidl_old_free(l);
	}
	const char *bad[] = { "", "%m", "%{md5}", "%2.1u", "%-2u", "%Hu", "%", "%{uid",
		"a b%u", "%99u", "%Eu" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *error = NULL;
		assert_false(uidl_dovecot_template_check(bad[i], &error));
		assert_non_null(error);
		free(error);
	}
}

static void
test_dovecot_stored_uidls(void **state)
{
	char long_uidl[80];
	memset(long_uidl, 'x', 71);
	long_uidl[71] = '\0';
	char *text = xasprintf("3 V5 N6\n1 P :1000.A.host\n2 Pmigrated-2 G1 :1001.B.host\n"
	    "3 P%s :1002.C.host\n4 W10 Pmig-4 :1003.D.host\n5 P\x01 :1004.E.host\n", long_uidl);
	struct uidl_old_list *l = dovecot(text, "%u");
	free(text);
	assert_non_null(l);
	assert_lookup(l, "1000.A.host", "1000.A.host");     /* "P" alone: the name */
	assert_lookup(l, "1001.B.host", "migrated-2");
	assert_lookup(l, "1003.D.host", "mig-4");
	assert_miss(l, "1002.C.host", UIDL_OLD_INVALID);
	assert_miss(l, "1004.E.host", UIDL_OLD_INVALID);
	uidl_old_free(l);
}

static void
test_dovecot_version1_and_duplicates(void **state)
{
	struct uidl_old_list *l = dovecot("1 17 5\n1 1000.A.host\n3 1001.B.host:2,\n", "%v-%u");
	assert_non_null(l);
	assert_lookup(l, "1001.B.host", "17-3");
	uidl_old_free(l);
	/* version 1: a UID at or over next_uid is damage */
	assert_null(dovecot("1 17 3\n1 1000.A.host\n3 1001.B.host\n", "%u"));
	/* the same file twice: the later UID wins, as in Dovecot */
	l = dovecot("3 V1 N9\n2 :1000.A.host\n5 :1000.A.host:2,S\n", "%u");
	assert_non_null(l);
	assert_int_equal(uidl_old_count(l), 1);
	assert_lookup(l, "1000.A.host", "5");
	uidl_old_free(l);
	/* lowercase ext keys are dropped, the line stays */
	l = dovecot("3 V1 N9\n2 x1 Pkept :1000.A.host\n", "%u");
	assert_non_null(l);
	assert_lookup(l, "1000.A.host", "kept");
	uidl_old_free(l);
	/* an unterminated last line is not read (being written) */
	l = dovecot("3 V1 N9\n2 :1000.A.host\n3 :1001.B.h", "%u");
	assert_non_null(l);
	assert_int_equal(uidl_old_count(l), 1);
	uidl_old_free(l);
}

static void
test_dovecot_refused(void **state)
{
	const char *bad[] = {
		"",
		"3 V1 N2",                               /* no complete header line */
		"2 V1 N2\n",                             /* unknown version */
		"3 N2\n",                                /* no UIDVALIDITY */
		"3 V0 N2\n",
		"3 V1 Nx\n",
		"3 V1 N5\n2 :a\n1 :b\n",                 /* out of order */
		"3 V1 N5\n2 :a\n2 :b\n",
		"3 V1 N5\n0 :a\n",
		"3 V1 N5\n4294967295 :a\n",              /* (uint32_t)-1 */
		"3 V1 N5\n99999999999 :a\n",
		"3 V1 N5\n1 a\n",                        /* no ':' before the name */
		"3 V1 N5\n1 :\n",
		"3 V1 N5\n1 :cur/a\n",
		"3 V1 N5\nx :a\n",
		"3 V1 N5\n1:a\n",
		"3 V1 N5\n1 :a\0b\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t len = i == sizeof(bad) / sizeof(bad[0]) - 1 ? 15 : strlen(bad[i]);
		char *text = xmalloc(len + 1);
		memcpy(text, bad[i], len);
		text[len] = '\0';
		char *error = NULL;
		struct uidl_old_list *l = uidl_dovecot_parse(text, len, "%u", &error);
		if (l != NULL)
			fail_msg("accepted case %zu", i);
		assert_non_null(error);
		free(error);
	}
}

static void
test_courier(void **state)
{
	const char *text = "/2 10 1700000001\n"
	    "1000.A.host:2,S 1234 3:1700000001\n"
	    "1001.B.host 99 4:0\n"
	    "1002.C host 5 0:0\n"
	    "broken line\n"
	    "1003.D.host 12 x:1\n"
	    "1004.E.host 12 7:8:1\n";
	char *error = NULL;
	struct uidl_old_list *l = uidl_courier_parse(xstrdup(text), strlen(text), &error);
	assert_non_null(l);
	assert_lookup(l, "1000.A.host", "UID3-1700000001");
	assert_lookup(l, "1001.B.host", "UID4");
	assert_lookup(l, "1002.C host", "1002.C+20host");    /* no UID: Courier's name */
	assert_lookup(l, "1003.D.host", NULL);               /* skipped, as Courier does */
	assert_lookup(l, "1004.E.host", "UID7-8");           /* version 3 */
	uidl_old_free(l);
	const char *bad[] = { "/1 10 17\n", "2 10 17\n", "/4 1 1\n", "" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		error = NULL;
		assert_null(uidl_courier_parse(xstrdup(bad[i]), strlen(bad[i]), &error));
		free(error);
	}
}

static void
test_make_unique(void **state)
{
	struct uidl_slot s[4] = {
		{ xstrdup("same"), "100.new.host", 12, 2, false },
		{ xstrdup("same"), "50.old.host", 11, 0, false },       /* remembered: keeps it */
		{ xstrdup("50.old.host"), "60.x.host", 9, 1, false },    /* another's name */
		{ xstrdup("other"), "70.y.host", 9, 1, false },
	};
	size_t n = uidl_make_unique(s, 4);
	assert_true(n >= 1);
	assert_string_equal(s[1].uidl, "same");
	assert_false(s[1].replaced);
	assert_true(s[0].replaced);
	assert_string_equal(s[0].uidl, "100.new.host");
	assert_string_equal(s[2].uidl, "50.old.host");
	assert_string_equal(s[3].uidl, "other");
	for (int i = 0; i < 4; i++)
		free(s[i].uidl);
	/* a replacement that is taken too becomes a digest */
	struct uidl_slot t[3] = {
		{ xstrdup("a.host"), "a.host", 6, 0, false },
		{ xstrdup("a.host"), "b.host", 6, 1, false },
		{ xstrdup("b.host"), "c.host", 6, 0, false },
	};
	uidl_make_unique(t, 3);
	assert_string_equal(t[0].uidl, "a.host");
	assert_string_equal(t[2].uidl, "b.host");
	assert_int_equal(t[1].uidl[0], 'H');
	assert_int_equal(strlen(t[1].uidl), 41);
	for (int i = 0; i < 3; i++)
		free(t[i].uidl);
}

static void
test_format_names(void **state)
{
	enum uidl_format f;
	assert_true(uidl_format_parse("dovecot", &f));
	assert_int_equal(f, UIDL_FORMAT_DOVECOT);
	assert_true(uidl_format_parse("courier", &f));
	assert_true(uidl_format_parse("popbox", &f));
	assert_int_equal(f, UIDL_FORMAT_POPBOX);
	assert_false(uidl_format_parse("unset", &f));
	assert_false(uidl_format_parse("Dovecot", &f));
	assert_string_equal(uidl_format_name(UIDL_FORMAT_COURIER), "courier");
}

static void
test_config_keys(void **state)
{
	struct config *c = NULL;
	char *error = NULL;
	assert_int_equal(config_parse("t.conf", "users = u\nmail = maildir:/m/%u\n", &c, &error), 0);
	assert_int_equal(c->uidl_format, UIDL_FORMAT_POPBOX);
	assert_string_equal(c->dovecot_uidl_format, "%08Xu%08Xv");
	config_free(c);
	assert_int_equal(config_parse("t.conf", "users = u\nmail = maildir:/m/%u\n"
	    "uidl_format = dovecot\ndovecot_uidl_format = %v.%u\n", &c, &error), 0);
	assert_int_equal(c->uidl_format, UIDL_FORMAT_DOVECOT);
	assert_string_equal(c->dovecot_uidl_format, "%v.%u");
	config_free(c);
	assert_int_equal(config_parse("t.conf", "users = u\nmail = maildir:/m/%u\n"
	    "uidl_format = qpopper\n", &c, &error), -1);
	assert_non_null(strstr(error, "t.conf:3:"));
	assert_non_null(strstr(error, "popbox, dovecot, courier or popa3d"));
	free(error);
	error = NULL;
	assert_int_equal(config_parse("t.conf", "users = u\nmail = maildir:/m/%u\n"
	    "dovecot_uidl_format = %m\n", &c, &error), -1);
	assert_non_null(strstr(error, "t.conf:3: dovecot_uidl_format: pop3_uidl_format '%m'"));
	free(error);
}

static void
test_users_file_field(void **state)
{
	struct passwd_db *db = NULL;
	char *error = NULL;
	assert_int_equal(passwd_db_parse("users",
	    "a:{PLAIN}x::::::uidl_format=dovecot\n"
	    "b:{PLAIN}x::::::quota=1G userdb_uidl_format=courier\n"
	    "c:{PLAIN}x\n"
	    "d:{PLAIN}x::::::uidl_format=dovcot\n", &db, &error), 0);
	assert_int_equal(passwd_db_lookup(db, "a")->uidl_format, UIDL_FORMAT_DOVECOT);
	assert_int_equal(passwd_db_lookup(db, "b")->uidl_format, UIDL_FORMAT_COURIER);
	assert_int_equal(passwd_db_lookup(db, "c")->uidl_format, UIDL_FORMAT_UNSET);
	assert_null(passwd_db_lookup(db, "d"));          /* skipped, logged */
	assert_int_equal(passwd_db_count(db), 3);
	assert_string_equal(passwd_db_entry(db, 2)->user, "c");
	assert_null(passwd_db_entry(db, 3));
	passwd_db_free(db);
}

/* ---- through the store: what a login serves and what the index keeps ---- */

static void
put(const char *dir, const char *rel, const char *data)
{
	char *path = xasprintf("%s/%s", dir, rel);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, strlen(data)), (ssize_t)strlen(data));
	close(fd);
	free(path);
}

static char *
get(const char *dir, const char *rel)
{
	char *path = xasprintf("%s/%s", dir, rel), *data = NULL, *error = NULL;
	int r = util_read_path_bounded(path, 1 << 20, 0, &data, NULL, &error);
	free(path);
	free(error);
	return r == 0 ? data : NULL;
}

static char *
maildir_new(void)
{
	char *dir = xstrdup("/tmp/popbox-test-uidl.XXXXXX");
	assert_non_null(mkdtemp(dir));
	chmod(dir, 0700);
	const char *subs[] = { "new", "cur", "tmp" };
	for (size_t i = 0; i < 3; i++) {
		char *p = xasprintf("%s/%s", dir, subs[i]);
		assert_int_equal(mkdir(p, 0700), 0);
		free(p);
	}
	put(dir, "new/1000.A.host", "Subject: a\n\na\n");
	put(dir, "cur/1001.B.host:2,S", "Subject: b\n\nb\n");
	return dir;
}

static void
maildir_remove(char *dir)
{
	char *cmd = xasprintf("rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	free(dir);
}

/* The UIDLs a login serves, "a b". */
static char *
served(const char *dir, enum uidl_format format)
{
	struct store_open_options o = { .uidl_format = format };
	struct store *store = NULL;
	char *error = NULL;
	assert_int_equal(store_maildir.open_with(dir, &o, &store, &error), STORE_OK);
	assert_int_equal(store->count, 2);
	char *out = xasprintf("%s %s", store->messages[0].uidl, store->messages[1].uidl);
	store->backend->close(store);
	return out;
}

static void
test_store_remembers(void **state)
{
	char *dir = maildir_new();
	put(dir, "dovecot-uidlist", "3 V16 N3\n1 :1000.A.host\n2 P :1001.B.host\n");
	char *got = served(dir, UIDL_FORMAT_DOVECOT);
	assert_string_equal(got, "0000000100000010 1001.B.host");
	free(got);
	char *index = get(dir, "popbox.index");
	assert_non_null(strstr(index, " n 1000.A.host 0000000100000010\n"));
	assert_non_null(strstr(index, " c 1001.B.host:2,S\n"));    /* its own: not written */
	free(index);
	/* the list changes (or goes), the format changes: nothing served changes */
	put(dir, "dovecot-uidlist", "3 V99 N3\n7 :1000.A.host\n8 :1001.B.host\n");
	got = served(dir, UIDL_FORMAT_POPBOX);
	assert_string_equal(got, "0000000100000010 1001.B.host");
	free(got);
	char *path = xasprintf("%s/new/1002.C.host", dir);    /* a rescan, too */
	put(dir, "new/1002.C.host", "x\n");
	unlink(path);
	free(path);
	got = served(dir, UIDL_FORMAT_DOVECOT);
	assert_string_equal(got, "0000000100000010 1001.B.host");
	free(got);
	maildir_remove(dir);
}

static void
test_store_old_index_is_what_was_served(void **state)
{
	/* A version 2 index: popboxd served these with their names' UIDLs
	 * before uidl_format was set; they keep them. */
	char *dir = maildir_new();
	put(dir, "popbox.index", "popbox-index 2\ndirs -\n16 n 1000.A.host\n"
	    "16 c 1001.B.host:2,S\nend 2\n");
	put(dir, "dovecot-uidlist", "3 V16 N3\n1 :1000.A.host\n2 :1001.B.host\n");
	char *got = served(dir, UIDL_FORMAT_DOVECOT);
	assert_string_equal(got, "1000.A.host 1001.B.host");
	free(got);
	char *index = get(dir, "popbox.index");
	assert_true(strncmp(index, "popbox-index 3\n", 15) == 0);    /* rewritten */
	free(index);
	/* a damaged version 3 line (a UIDL with a control byte) is damage */
	put(dir, "popbox.index", "popbox-index 3\ndirs -\n16 n 1000.A.host \x01\n"
	    "16 c 1001.B.host:2,S\nend 2\n");
	got = served(dir, UIDL_FORMAT_DOVECOT);
	assert_string_equal(got, "0000000100000010 0000000200000010");
	free(got);
	maildir_remove(dir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dovecot_default_format),
		cmocka_unit_test(test_dovecot_templates),
		cmocka_unit_test(test_dovecot_stored_uidls),
		cmocka_unit_test(test_dovecot_version1_and_duplicates),
		cmocka_unit_test(test_dovecot_refused),
		cmocka_unit_test(test_courier),
		cmocka_unit_test(test_make_unique),
		cmocka_unit_test(test_format_names),
		cmocka_unit_test(test_config_keys),
		cmocka_unit_test(test_users_file_field),
		cmocka_unit_test(test_store_remembers),
		cmocka_unit_test(test_store_old_index_is_what_was_served),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for maildir_uidl_from_name (server/store.h, docs/PROTOCOL.md §4). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "server/store.h"

/* "H" + 40 hex characters. */
#define HASHED_LEN 41

static void
assert_hashed(const char *uidl)
{
	assert_int_equal(strlen(uidl), HASHED_LEN);
	assert_int_equal(uidl[0], 'H');
	for (size_t i = 1; i < HASHED_LEN; i++)
		assert_non_null(strchr("0123456789abcdef", uidl[i]));
}

static void
test_valid_names_kept(void **state)
{
	const char *names[] = {
		"1700000000.M1P2.host",
		"x",
		"!~\"#$%&'()*+,-./;<=>?@[\\]^_`{|}",
		/* exactly 70 characters */
		"1234567890123456789012345678901234567890123456789012345678901234567890",
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char *u = maildir_uidl_from_name(names[i], strlen(names[i]));
		assert_string_equal(u, names[i]);
		free(u);
	}
	/* Only len bytes count: the base name ends at ':'. */
	char *u = maildir_uidl_from_name("123.abc:2,S", 7);
	assert_string_equal(u, "123.abc");
	free(u);
}

static void
test_bad_names_hashed(void **state)
{
	const char *names[] = {
		"12345678901234567890123456789012345678901234567890123456789012345678901",
		"with space",
		"tab\there",
		"eight\xff" "bit",
		"del\x7f",
		"new\nline",
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char *u = maildir_uidl_from_name(names[i], strlen(names[i]));
		assert_hashed(u);
		free(u);
	}
	char *empty = maildir_uidl_from_name("", 0);
	assert_hashed(empty);
	free(empty);
	/* A 255-byte name (NAME_MAX). */
	char longname[256];
	memset(longname, 'a', 255);
	longname[255] = '\0';
	char *u = maildir_uidl_from_name(longname, 255);
	assert_hashed(u);
	free(u);
}

static void
test_deterministic_and_distinct(void **state)
{
	const char *a = "same name with spaces", *b = "same name with spaces!";
	char *u1 = maildir_uidl_from_name(a, strlen(a));
	char *u2 = maildir_uidl_from_name(a, strlen(a));
	char *u3 = maildir_uidl_from_name(b, strlen(b));
	assert_string_equal(u1, u2);
	assert_string_not_equal(u1, u3);
	/* Known value: "H" + first 20 bytes of SHA-256("a b") in hex, so the
	 * UIDL never changes across versions (clients remember it). */
	char *u4 = maildir_uidl_from_name("a b", 3);
	assert_string_equal(u4, "Hc8687a08aa5d6ed2044328fa6a697ab8e96dc342");
	free(u1);
	free(u2);
	free(u3);
	free(u4);
}

static void
test_backend_for(void **state)
{
	const char *path = NULL;
	assert_ptr_equal(store_backend_for("maildir:/var/mail/u", &path), &store_maildir);
	assert_string_equal(path, "/var/mail/u");
	assert_null(store_backend_for("Maildir:/x", &path));
	assert_null(store_backend_for("/var/mail/u", &path));
	assert_null(store_backend_for("", &path));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_names_kept),
		cmocka_unit_test(test_bad_names_hashed),
		cmocka_unit_test(test_deterministic_and_distinct),
		cmocka_unit_test(test_backend_for),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

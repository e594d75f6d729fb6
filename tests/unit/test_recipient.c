/* Unit tests for delivery addresses (server/recipient.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "server/passwd.h"
#include "server/recipient.h"

static void
check(const char *address, const char *delims, const char *w0, const char *w1, const char *w2)
{
	const char *want[RECIPIENT_CANDIDATES] = { w0, w1, w2 };
	char *got[RECIPIENT_CANDIDATES];
	size_t n = recipient_candidates(address, delims, got), expect = 0;

	while (expect < RECIPIENT_CANDIDATES && want[expect] != NULL)
		expect++;
	assert_int_equal(n, expect);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(got[i], want[i]);
		free(got[i]);
	}
}

static void
test_candidates(void **state)
{
	(void)state;
	check("alice", NULL, "alice", NULL, NULL);
	check("alice@example.org", NULL, "alice@example.org", "alice", NULL);
	check("Alice@Example.ORG", "", "Alice@Example.ORG", "Alice@example.org", "Alice");
	check("alice+list@example.org", "+", "alice@example.org", "alice", NULL);
	check("alice-x+y@example.org", "+-", "alice@example.org", "alice", NULL);
	/* without a delimiter the + is part of the name */
	check("alice+list@example.org", NULL, "alice+list@example.org", "alice+list", NULL);
	/* a delimiter in the domain is not a detail */
	check("alice@my-host.example", "-", "alice@my-host.example", "alice", NULL);
	check("alice@", NULL, "alice", NULL, NULL);
	/* the last '@' splits (a quoted local part may hold one) */
	check("a@b@c", NULL, "a@b@c", "a@b", NULL);
}

static void
test_refused(void **state)
{
	char *got[RECIPIENT_CANDIDATES];
	char long_name[400];
	(void)state;
	assert_int_equal(recipient_candidates("", NULL, got), 0);
	assert_int_equal(recipient_candidates("@example.org", NULL, got), 0);
	assert_int_equal(recipient_candidates("+x@example.org", "+", got), 0);
	assert_int_equal(recipient_candidates("al ice", NULL, got), 0);
	assert_int_equal(recipient_candidates("al\nice", NULL, got), 0);
	memset(long_name, 'a', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	assert_int_equal(recipient_candidates(long_name, NULL, got), 0);
}

static void
test_lookup(void **state)
{
	struct passwd_db *db = NULL;
	char *error = NULL;
	(void)state;
	assert_int_equal(passwd_db_parse("users",
	    "alice:{PLAIN}a\nbob@example.org:{PLAIN}b\nBob:{PLAIN}c\n", &db, &error), 0);
	assert_string_equal(recipient_lookup(db, "alice@anywhere.example", "+")->user, "alice");
	assert_string_equal(recipient_lookup(db, "bob+x@EXAMPLE.org", "+")->user, "bob@example.org");
	assert_string_equal(recipient_lookup(db, "Bob@other.example", "+")->user, "Bob");
	assert_null(recipient_lookup(db, "carol@example.org", "+"));
	assert_null(recipient_lookup(db, "ALICE", "+"));
	passwd_db_free(db);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_candidates),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_lookup),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

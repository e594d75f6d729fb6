/* The users file as a password database (src/server/auth_passwdfile.c)
 * through the passdb interface (auth_passdb.h): load from a descriptor,
 * lookups, password checks, secrets, change detection, references. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "server/auth_passdb.h"

static const struct passdb_ops *ops = &passdb_passwdfile;

struct fixture {
	char dir[64];
	char path[96];
};

/* Write text as dir/users by rename (a new inode, as editors and the
 * integration tests do). */
static void
write_users(struct fixture *f, const char *text)
{
	char tmp[128];
	snprintf(tmp, sizeof(tmp), "%s/users.tmp", f->dir);
	FILE *out = fopen(tmp, "w");
	assert_non_null(out);
	fputs(text, out);
	fclose(out);
	assert_int_equal(rename(tmp, f->path), 0);
}

static struct passdb *
load(struct fixture *f)
{
	int fd = open(f->path, O_RDONLY);
	assert_true(fd >= 0);
	char *error = NULL;
	struct passdb *db = ops->load(f->path, fd, &error);
	close(fd);
	assert_non_null(db);
	return db;
}

static int
setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/popbox-test-passdb-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/users", f->dir);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	unlink(f->path);
	rmdir(f->dir);
	free(f);
	return 0;
}

static void
test_lookup_and_verify(void **state)
{
	struct fixture *f = *state;
	char *scram = scram_secret_make("scrampw", "SCRAM-SHA-256", 4096,
	    (const unsigned char *)"saltsalt", 8, NULL);
	assert_non_null(scram);
	char *text = xasprintf("alice:{PLAIN}secret::::/home/alice\n"
	    "bob:%s\n"
	    "carol:\n", scram);
	write_users(f, text);
	struct passdb *db = load(f);
	assert_int_equal(ops->count(db), 3);

	const struct passwd_entry *alice = ops->lookup(db, "alice");
	assert_non_null(alice);
	assert_string_equal(alice->user, "alice");
	assert_string_equal(alice->home, "/home/alice");
	assert_null(ops->lookup(db, "nobody"));
	assert_null(ops->lookup(db, "Alice"));

	assert_int_equal(ops->verify(db, alice, "secret"), PASSWORD_OK);
	assert_int_equal(ops->verify(db, alice, "wrong"), PASSWORD_MISMATCH);
	/* unknown user: a dummy check, never a match */
	assert_int_equal(ops->verify(db, NULL, "secret"), PASSWORD_MISMATCH);
	/* a SCRAM secret also serves USER/PASS */
	const struct passwd_entry *bob = ops->lookup(db, "bob");
	assert_int_equal(ops->verify(db, bob, "scrampw"), PASSWORD_OK);
	/* an empty secret disables the account */
	const struct passwd_entry *carol = ops->lookup(db, "carol");
	assert_int_equal(ops->verify(db, carol, ""), PASSWORD_MISMATCH);

	/* cheap enough for the event loop where most users are {PLAIN}
	 * (alice's class comes first in a tie): {PLAIN}, disabled and unknown */
	assert_true(ops->verify_is_cheap(db, alice));
	assert_true(ops->verify_is_cheap(db, carol));
	assert_false(ops->verify_is_cheap(db, bob));
	assert_true(ops->verify_is_cheap(db, NULL));

	/* secrets */
	assert_string_equal(ops->plaintext(alice), "secret");
	assert_null(ops->plaintext(bob));
	struct scram_secret sec;
	assert_int_equal(ops->scram_secret(bob, &sec), 0);
	assert_string_equal(sec.mech, "SCRAM-SHA-256");
	assert_int_equal(sec.iterations, 4096);
	scram_secret_clear(&sec);
	assert_int_equal(ops->scram_secret(alice, &sec), -1);

	ops->free(db);
	free(text);
	free(scram);
}

static void
test_changed(void **state)
{
	struct fixture *f = *state;
	write_users(f, "alice:{PLAIN}a\n");
	struct passdb *db = load(f);
	assert_string_equal(ops->source(&(struct config){ .users = f->path }), f->path);
	assert_false(ops->changed(db, f->path));
	/* a new file (new inode) is a change */
	write_users(f, "alice:{PLAIN}a\nbob:{PLAIN}b\n");
	assert_true(ops->changed(db, f->path));
	struct passdb *db2 = load(f);
	assert_false(ops->changed(db2, f->path));
	assert_int_equal(ops->count(db2), 2);
	/* a file that is gone keeps the loaded users */
	unlink(f->path);
	assert_false(ops->changed(db2, f->path));
	ops->free(db);
	ops->free(db2);
}

static void
test_load_errors(void **state)
{
	struct fixture *f = *state;
	char *error = NULL;
	assert_null(ops->load(f->path, -1, &error));
	assert_non_null(error);
	free(error);
	int fd = open(f->dir, O_RDONLY);
	assert_null(ops->load(f->dir, fd, &error));
	char *expect = xasprintf("%s: not a regular file", f->dir);
	assert_string_equal(error, expect);
	free(expect);
	free(error);
	close(fd);
}

static void
test_references(void **state)
{
	struct fixture *f = *state;
	write_users(f, "alice:{PLAIN}a\n");
	struct passdb_ref *ref = passdb_ref_new(ops, load(f));
	assert_int_equal(ref->refs, 1);
	assert_ptr_equal(passdb_ref_hold(ref), ref);
	assert_int_equal(ref->refs, 2);
	passdb_ref_release(ref);
	assert_int_equal(ref->refs, 1);
	assert_non_null(ref->ops->lookup(ref->db, "alice"));
	passdb_ref_release(ref);   /* frees it (the sanitizer build checks) */
	passdb_ref_release(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_lookup_and_verify, setup, teardown),
		cmocka_unit_test_setup_teardown(test_changed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_load_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_references, setup, teardown),
	};
	return cmocka_run_group_tests_name("auth_passwdfile", tests, NULL, NULL);
}

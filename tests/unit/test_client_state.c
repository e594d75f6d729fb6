/* popbox fetch local modules: state file, account keys, Maildir and mbox
 * delivery (src/client/uidl_state.c, account.c, deliver_*.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/account.h"
#include "client/deliver.h"
#include "client/fetch.h"
#include "client/uidl_state.h"

static char tmpdir[64];

/* The exit status of a run over several accounts: the worst wins
 * (docs/popbox.1, EXIT STATUS), whatever the order. */
static void
test_status_worse(void **state)
{
	static const int order[] = { EX_IOERR, EX_CANTCREAT, EX_SOFTWARE, EX_CONFIG, EX_NOPERM,
	    EX_UNAVAILABLE, EX_NOHOST, EX_PROTOCOL, EX_TEMPFAIL, 0 };
	size_t n = sizeof(order) / sizeof(order[0]);
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < n; j++) {
			int want = order[i < j ? i : j];
			assert_int_equal(fetch_status_worse(order[i], order[j]), want);
		}
	assert_int_equal(fetch_status_worse(0, 0), 0);
}

static void
test_parse_duration(void **state)
{
	long v;
	assert_true(fetch_parse_duration("30s", &v));
	assert_int_equal(v, 30);
	assert_true(fetch_parse_duration("5m", &v));
	assert_int_equal(v, 300);
	assert_true(fetch_parse_duration("2h", &v));
	assert_int_equal(v, 7200);
	assert_true(fetch_parse_duration("7d", &v));
	assert_int_equal(v, 7 * 86400);
	assert_true(fetch_parse_duration("90", &v));
	assert_int_equal(v, 90);
	const char *bad[] = { "", "0", "0s", "8d", "-5m", "5x", "m", "1.5h", "5 m",
	    "99999999999999999999", "604801" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_false(fetch_parse_duration(bad[i], &v));
}

static int
setup(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/popbox-unit-XXXXXX");
	return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void
test_state_roundtrip(void **state)
{
	struct uidl_state st;
	struct fetch_error err = { 0 };
	char path[128];
	snprintf(path, sizeof(path), "%s/a.state", tmpdir);

	assert_true(uidl_state_load(&st, path, "account a", &err));
	assert_int_equal(st.count, 0);
	for (int i = 0; i < 1000; i++) {
		char u[32];
		snprintf(u, sizeof(u), "uid-%d", i);
		uidl_state_add(&st, u, 1700000000 + i, (uint64_t)i * 10);
	}
	assert_true(uidl_state_save(&st, &err));
	uidl_state_free(&st);

	assert_true(uidl_state_load(&st, path, "account a", &err));
	assert_int_equal(st.count, 1000);
	struct uidl_entry *e = uidl_state_find(&st, "uid-777");
	assert_non_null(e);
	assert_int_equal(e->first_seen, 1700000777);
	assert_int_equal(e->size, 7770);
	assert_null(uidl_state_find(&st, "uid-1000"));
	/* only entries seen on the server survive a prune */
	uidl_state_find(&st, "uid-5")->on_server = true;
	uidl_state_prune(&st);
	assert_int_equal(st.count, 1);
	assert_non_null(uidl_state_find(&st, "uid-5"));
	uidl_state_free(&st);

	/* a damaged file is an error with a hint, not silently empty */
	FILE *f = fopen(path, "w");
	fputs("# popbox state v1\n12 x uid\n", f);
	fclose(f);
	assert_false(uidl_state_load(&st, path, "account a", &err));
	assert_int_equal(err.code, 78);
	assert_non_null(strstr(err.msg, "--rebuild-state"));
	uidl_state_free(&st);
}

static void
test_account_keys(void **state)
{
	struct account a;
	struct fetch_error err = { 0 };
	int64_t v;

	assert_true(account_parse_size("10K", &v));
	assert_int_equal(v, 10240);
	assert_true(account_parse_size("2m", &v));
	assert_int_equal(v, 2 * 1024 * 1024);
	assert_true(account_parse_size("77", &v));
	assert_false(account_parse_size("-1", &v));
	assert_false(account_parse_size("1.5M", &v));
	assert_false(account_parse_size("K", &v));

	account_init(&a);
	assert_true(account_set(&a, "host", "pop.example.org", "t", true, &err));
	assert_true(account_set(&a, "user", "me", "t", true, &err));
	assert_true(account_set(&a, "deliver", "maildir:~/Mail", "t", true, &err));
	assert_false(account_set(&a, "password", "x", "t", false, &err));
	assert_int_equal(err.code, 78);
	memset(&err, 0, sizeof(err));
	assert_false(account_set(&a, "tls", "maybe", "t", true, &err));
	memset(&err, 0, sizeof(err));
	assert_false(account_set(&a, "deliver", "pipe:x", "t", true, &err));
	memset(&err, 0, sizeof(err));
	assert_false(account_set(&a, "user", "a\r\nPASS x", "t", true, &err));
	memset(&err, 0, sizeof(err));
	setenv("HOME", "/home/test", 1);
	assert_true(account_finish(&a, &err));
	assert_int_equal(a.tls, TLS_IMPLICIT);
	assert_string_equal(a.port, "995");
	assert_string_equal(a.deliver_target, "/home/test/Mail");
	/* the limits against a hostile server are on by default */
	assert_int_equal(a.max_message_size, 1024 * 1024 * 1024);
	assert_int_equal(a.deadline, 3600);
	account_free(&a);

	/* and set per account, within bounds */
	account_init(&a);
	assert_true(account_set(&a, "max_message_size", "2G", "t", true, &err));
	assert_int_equal(a.max_message_size, INT64_C(2) * 1024 * 1024 * 1024);
	assert_true(account_set(&a, "max_message_size", "300K", "t", true, &err));
	assert_int_equal(a.max_message_size, 300 * 1024);
	assert_false(account_set(&a, "max_message_size", "0", "t", true, &err));
	assert_int_equal(err.code, 78);
	memset(&err, 0, sizeof(err));
	assert_false(account_set(&a, "max_message_size", "-5", "t", true, &err));
	memset(&err, 0, sizeof(err));
	assert_true(account_set(&a, "deadline", "600", "t", true, &err));
	assert_int_equal(a.deadline, 600);
	assert_true(account_set(&a, "deadline", "604800", "t", true, &err));
	assert_false(account_set(&a, "deadline", "604801", "t", true, &err));
	memset(&err, 0, sizeof(err));
	assert_false(account_set(&a, "deadline", "0", "t", true, &err));
	memset(&err, 0, sizeof(err));
	assert_false(account_set(&a, "deadline", "1h", "t", true, &err));
	memset(&err, 0, sizeof(err));
	assert_int_equal(a.deadline, 604800);
	account_free(&a);

	account_init(&a);
	account_set(&a, "host", "h", "t", true, &err);
	account_set(&a, "port", "110", "t", true, &err);
	account_set(&a, "user", "u", "t", true, &err);
	account_set(&a, "deliver", "mda:procmail -d me", "t", true, &err);
	assert_true(account_finish(&a, &err));
	assert_int_equal(a.tls, TLS_STARTTLS);
	assert_string_equal(a.deliver_target, "procmail -d me");
	account_free(&a);
}

static void
test_config_file_permissions(void **state)
{
	char path[128];
	struct account *list;
	int n;
	struct fetch_error err = { 0 };
	snprintf(path, sizeof(path), "%s/accounts.conf", tmpdir);
	FILE *f = fopen(path, "w");
	fputs("# comment\n[account one]\nhost = a\npassword = p w\n\n[account two]\nhost = b\n", f);
	fclose(f);
	chmod(path, 0640);
	assert_false(account_load_file(path, true, &list, &n, NULL, &err));
	assert_non_null(strstr(err.msg, "chmod 600"));
	chmod(path, 0600);
	memset(&err, 0, sizeof(err));
	assert_true(account_load_file(path, true, &list, &n, NULL, &err));
	assert_int_equal(n, 2);
	assert_string_equal(list[0].password, "p w");
	assert_string_equal(list[1].host, "b");
	for (int i = 0; i < n; i++)
		account_free(&list[i]);
	free(list);
}

static void
collect(void *ctx, const char *marker, int64_t when)
{
	int *count = ctx;
	assert_int_equal(strlen(marker), 16);
	assert_true(when > 1000000000);
	(*count)++;
}

static void
test_maildir_delivery_and_scan(void **state)
{
	char path[128];
	struct fetch_error err = { 0 };
	char marker[17];
	snprintf(path, sizeof(path), "%s/Mail", tmpdir);
	deliver_marker("me@pop.example.org", "UID1 100", marker);
	char again[17];
	deliver_marker("me@pop.example.org", "UID1 100", again);
	assert_string_equal(marker, again);
	deliver_marker("me@pop.example.org", "UID1 101", again);
	assert_string_not_equal(marker, again);

	struct deliverer *d = deliver_open(DELIVER_MAILDIR, path, "t", &err);
	assert_non_null(d);
	struct deliver_message m = { .uidl = "UID1", .marker = marker, .number = 1 };
	assert_true(d->ops->begin(d, &m, &err));
	assert_true(d->ops->write(d, "Subject: x\n\nbody\n", 17, &err));
	assert_true(d->ops->commit(d, &err));
	/* an aborted delivery leaves nothing */
	assert_true(d->ops->begin(d, &m, &err));
	assert_true(d->ops->write(d, "partial", 7, &err));
	d->ops->abort(d);
	deliver_close(d);

	int count = 0;
	assert_true(deliver_maildir_scan(path, collect, &count, &err));
	assert_int_equal(count, 1);
	char sub[160];
	snprintf(sub, sizeof(sub), "%s/tmp", path);
	DIR *dp = opendir(sub);
	struct dirent *de;
	int tmpfiles = 0;
	while ((de = readdir(dp)) != NULL)
		if (de->d_name[0] != '.')
			tmpfiles++;
	closedir(dp);
	assert_int_equal(tmpfiles, 0);
}

static void
test_mbox_quoting(void **state)
{
	char path[128];
	struct fetch_error err = { 0 };
	snprintf(path, sizeof(path), "%s/mbox", tmpdir);
	struct deliverer *d = deliver_open(DELIVER_MBOX, path, "t", &err);
	struct deliver_message m = { .number = 1 };
	const char msg[] = "Subject: q\n\nFrom here\n>From there\nx From y\n>>From z\nFro";
	assert_true(d->ops->begin(d, &m, &err));
	/* byte by byte: the quoting state survives any split */
	for (size_t i = 0; i < sizeof(msg) - 1; i++)
		assert_true(d->ops->write(d, msg + i, 1, &err));
	assert_true(d->ops->commit(d, &err));
	deliver_close(d);
	FILE *f = fopen(path, "r");
	char buf[512];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	assert_non_null(strstr(buf, "\n>From here\n>>From there\nx From y\n>>>From z\nFro\n\n"));
	assert_memory_equal(buf, "From MAILER-DAEMON ", 19);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_state_roundtrip),
		cmocka_unit_test(test_account_keys),
		cmocka_unit_test(test_config_file_permissions),
		cmocka_unit_test(test_maildir_delivery_and_scan),
		cmocka_unit_test(test_mbox_quoting),
		cmocka_unit_test(test_status_worse),
		cmocka_unit_test(test_parse_duration),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}

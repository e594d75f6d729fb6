/* Unit tests for the device state (server/devices.h): names and splitting,
 * the EXPIRE and LOGIN-DELAY values, the journal parser (whole groups only,
 * an interrupted append, damage), the decisions (active devices, may a file
 * go, expiry) and a commit read back from a real file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/devices.h"

#define DAY 86400

static void
test_names_and_split(void **state)
{
	size_t ulen = 0;
	assert_true(device_name_valid("phone"));
	assert_true(device_name_valid("a.b_c-D9"));
	assert_true(device_name_valid("."));
	assert_true(device_name_valid(".."));
	assert_false(device_name_valid(""));
	assert_false(device_name_valid("ph one"));
	assert_false(device_name_valid("ph/one"));
	assert_false(device_name_valid("abcdefghijklmnopqrstuvwxyz0123456"));   /* 33 */
	assert_true(device_name_valid("abcdefghijklmnopqrstuvwxyz012345"));     /* 32 */
	const char *d = device_split("alice#x#phone", '#', &ulen);
	assert_string_equal(d, "phone");
	assert_int_equal(ulen, strlen("alice#x"));
	assert_null(device_split("alice", '#', &ulen));
	assert_null(device_split("alice#phone", '\0', &ulen));
	d = device_split("alice#", '#', &ulen);
	assert_string_equal(d, "");
}

static void
test_policy_values(void **state)
{
	int days;
	unsigned s;
	assert_true(devices_parse_expire("never", &days) && days == DEVICES_EXPIRE_NEVER);
	assert_true(devices_parse_expire("0", &days) && days == 0);
	assert_true(devices_parse_expire("3650", &days) && days == 3650);
	assert_false(devices_parse_expire("3651", &days));
	assert_false(devices_parse_expire("-1", &days));
	assert_false(devices_parse_expire("1d", &days));
	assert_true(devices_parse_login_delay("0", &s) && s == 0);
	assert_true(devices_parse_login_delay("5m", &s) && s == 300);
	assert_true(devices_parse_login_delay("24h", &s) && s == 86400);
	assert_false(devices_parse_login_delay("25h", &s));
	assert_false(devices_parse_login_delay("m", &s));
	assert_false(devices_parse_login_delay("4294967296", &s));
}

/* FNV-1a 64, as devices.c: the checksum of a group. */
static uint64_t
fnv(const char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* Append group (record lines) with its commit line to buf. */
static void
add_group(char *buf, size_t size, const char *group, unsigned lines)
{
	size_t len = strlen(buf);
	snprintf(buf + len, size - len, "%sC %u %016llx\n", group, lines,
	    (unsigned long long)fnv(group, strlen(group)));
}

static void
test_parse_groups(void **state)
{
	char buf[2048] = DEVICES_HEADER "\n";
	add_group(buf, sizeof(buf), "N 1 1000 phone\nN 2 1000 laptop\n", 2);
	add_group(buf, sizeof(buf), "L 2 5000\nD 1 u1\nD 2 u1\nD 1 u2\nR 2 4000 u3\n", 5);
	size_t whole = strlen(buf);
	strcat(buf, "D 2 u2\nC 1 0");    /* an append cut short */
	bool damaged;
	struct devices *d = devices_new();
	size_t valid = devices_parse(d, buf, strlen(buf), &damaged);
	assert_false(damaged);
	assert_int_equal(valid, whole);
	assert_int_equal(devices_find(d, "PHONE"), 1);
	assert_int_equal(devices_find(d, "laptop"), 2);
	assert_int_equal(devices_find(d, "work"), -1);
	assert_true(devices_deleted(d, 1, "u1") && devices_deleted(d, 2, "u1"));
	assert_true(devices_deleted(d, 1, "u2") && !devices_deleted(d, 2, "u2"));
	int64_t now = 6000;
	/* both active: u1 may go, u2 is held by the laptop */
	assert_true(devices_all_deleted(d, "u1", now, 30 * DAY));
	assert_false(devices_all_deleted(d, "u2", now, 30 * DAY));
	assert_false(devices_all_deleted(d, "u3", now, 30 * DAY));
	/* the laptop idle (its last login 5000 > idle 1000 s ago): u2 may go */
	assert_true(devices_all_deleted(d, "u2", now + 10000, 1000));
	/* EXPIRE: u3 retrieved by the laptop only; the phone holds it */
	assert_false(devices_expired(d, "u3", now, 30 * DAY, 0));
	devices_free(d);

	/* A whole group that does not check is damage; what follows counts. */
	char bad[2048] = DEVICES_HEADER "\n";
	add_group(bad, sizeof(bad), "N 1 1000 phone\n", 1);
	strcat(bad, "D 1 u1\nC 1 0000000000000000\n");
	add_group(bad, sizeof(bad), "N 2 1000 laptop\n", 1);
	d = devices_new();
	valid = devices_parse(d, bad, strlen(bad), &damaged);
	assert_true(damaged);
	assert_int_equal(valid, strlen(bad));
	assert_false(devices_deleted(d, 1, "u1"));
	assert_int_equal(devices_find(d, "laptop"), 2);
	devices_free(d);

	/* No header: damage, nothing kept. */
	d = devices_new();
	assert_int_equal(devices_parse(d, "popbox-devices 9\n", 17, &damaged), 0);
	assert_true(damaged);
	devices_free(d);
}

static void
test_forget_and_slots(void **state)
{
	char buf[1024] = DEVICES_HEADER "\n";
	add_group(buf, sizeof(buf), "N 1 1000 phone\nD 1 u1\nF 1\nN 1 2000 tablet\n", 4);
	bool damaged;
	struct devices *d = devices_new();
	devices_parse(d, buf, strlen(buf), &damaged);
	assert_false(damaged);
	/* the new device in slot 1 does not inherit the old one's deletions */
	assert_int_equal(devices_find(d, "tablet"), 1);
	assert_int_equal(devices_find(d, "phone"), -1);
	assert_false(devices_deleted(d, 1, "u1"));
	/* the classic slot never deletes for itself */
	devices_note_delete(d, DEVICES_CLASSIC_SLOT, "u9");
	assert_false(devices_deleted(d, DEVICES_CLASSIC_SLOT, "u9"));
	assert_false(devices_all_deleted(d, "u9", 2000, DAY));
	devices_free(d);
}

static void
test_commit_and_reopen(void **state)
{
	char dir[] = "/tmp/popbox-test-devices-XXXXXX";
	assert_non_null(mkdtemp(dir));
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	assert_true(dfd >= 0);
	char *error = NULL;
	struct devices *d = NULL;
	/* nothing there and nothing to create */
	assert_int_equal(devices_open(dfd, dir, false, 1000, &d, &error), 0);
	assert_null(d);
	assert_int_equal(devices_open(dfd, dir, true, 1000, &d, &error), 0);
	assert_non_null(d);
	int phone = devices_add(d, "phone", 1000);
	int laptop = devices_add(d, "laptop", 1000);
	assert_int_equal(devices_commit(d, true, &error), 0);
	devices_note_delete(d, phone, "m1");
	devices_note_retrieve(d, laptop, "m1", 1500);
	assert_int_equal(devices_commit(d, true, &error), 0);
	devices_free(d);
	/* read back */
	assert_int_equal(devices_open(dfd, dir, false, 2000, &d, &error), 0);
	assert_non_null(d);
	assert_true(devices_deleted(d, phone, "m1"));
	/* m1: deleted by the phone, retrieved by the laptop: expires 1 day after */
	assert_false(devices_expired(d, "m1", 1500 + DAY - 1, 30 * DAY, DAY));
	assert_true(devices_expired(d, "m1", 1500 + DAY, 30 * DAY, DAY));
	devices_free(d);
	/* the file lost while the marker says there was one: recovery */
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", dir, DEVICES_FILE);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(devices_open(dfd, dir, false, 3000, &d, &error), 0);
	assert_non_null(d);
	assert_int_equal(d->recovery_since, 3000);
	devices_note_delete(d, devices_add(d, "phone", 3000), "m2");
	assert_false(devices_all_deleted(d, "m2", 3001, 30 * DAY));   /* recovering */
	assert_true(devices_all_deleted(d, "m2", 3000 + 30 * DAY, 30 * DAY));   /* window over */
	devices_free(d);
	snprintf(path, sizeof(path), "rm -rf %s", dir);
	assert_int_equal(system(path), 0);
	close(dfd);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names_and_split),
		cmocka_unit_test(test_policy_values),
		cmocka_unit_test(test_parse_groups),
		cmocka_unit_test(test_forget_and_slots),
		cmocka_unit_test(test_commit_and_reopen),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

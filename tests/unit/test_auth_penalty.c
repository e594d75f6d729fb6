/* Failed-login penalty table (src/server/auth_penalty.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#include "server/auth_penalty.h"

static struct auth_penalty *
penalty_new(void)
{
	return auth_penalty_new(AUTH_PENALTY_IPV6_PREFIX);
}

static void
test_doubling_and_cap(void **state)
{
	struct auth_penalty *p = penalty_new();
	time_t t = 1000;
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.1", "alice", t), 0);
	auth_penalty_failed(p, "192.0.2.1", "alice", t);
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.1", "alice", t), 2000);
	auth_penalty_failed(p, "192.0.2.1", "alice", t);
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.1", "alice", t), 4000);
	auth_penalty_failed(p, "192.0.2.1", "alice", t);
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.1", "alice", t), 8000);
	for (int i = 0; i < 10; i++)
		auth_penalty_failed(p, "192.0.2.1", "alice", t);
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.1", "alice", t), AUTH_PENALTY_MAX_MS);
	/* another address, another user: nothing counted there */
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.2", "bob", t), 0);
	auth_penalty_free(p);
}

static void
test_success_resets_and_window_expires(void **state)
{
	struct auth_penalty *p = penalty_new();
	time_t t = 1000;
	auth_penalty_failed(p, "2001:db8::1", "alice", t);
	auth_penalty_succeeded(p, "2001:db8::1", "alice");
	assert_int_equal(auth_penalty_delay_ms(p, "2001:db8::1", "alice", t), 0);
	auth_penalty_failed(p, "2001:db8::1", "alice", t);
	assert_int_equal(auth_penalty_delay_ms(p, "2001:db8::1", "alice",
	    t + AUTH_PENALTY_WINDOW + 1), 0);
	auth_penalty_expire(p, t + AUTH_PENALTY_WINDOW + 1);
	assert_int_equal(auth_penalty_delay_ms(p, "2001:db8::1", "alice", t), 0);
	auth_penalty_free(p);
}

/* The bypass: guesses at alice interleaved with logins to the attacker's
 * own account from the same address. The logins clear only mallory. */
static void
test_own_logins_do_not_clear_guesses(void **state)
{
	struct auth_penalty *p = penalty_new();
	time_t t = 1000;
	for (int i = 0; i < 3; i++) {
		auth_penalty_failed(p, "198.51.100.7", "alice", t);
		auth_penalty_succeeded(p, "198.51.100.7", "mallory");
	}
	assert_int_equal(auth_penalty_delay_ms(p, "198.51.100.7", "alice", t), 8000);
	auth_penalty_free(p);
}

/* Password spraying: one guess each at many accounts from one address. */
static void
test_spraying_counts_per_source(void **state)
{
	struct auth_penalty *p = penalty_new();
	time_t t = 1000;
	char user[32];
	for (int i = 0; i < AUTH_PENALTY_SOURCE_FREE; i++) {
		snprintf(user, sizeof(user), "user%d", i);
		auth_penalty_failed(p, "203.0.113.9", user, t);
	}
	/* a typo or a few do not slow the others behind the same address */
	assert_int_equal(auth_penalty_delay_ms(p, "203.0.113.9", "carol", t), 0);
	auth_penalty_failed(p, "203.0.113.9", "user-next", t);
	assert_int_equal(auth_penalty_delay_ms(p, "203.0.113.9", "carol", t), 2000);
	/* a success does not clear the source count */
	auth_penalty_succeeded(p, "203.0.113.9", "carol");
	assert_int_equal(auth_penalty_delay_ms(p, "203.0.113.9", "carol", t), 2000);
	assert_int_equal(auth_penalty_delay_ms(p, "203.0.113.10", "carol", t), 0);
	auth_penalty_free(p);
}

/* Guesses at one account from many addresses. */
static void
test_distributed_guessing_counts_per_user(void **state)
{
	struct auth_penalty *p = penalty_new();
	time_t t = 1000;
	char addr[48];
	for (int i = 0; i < AUTH_PENALTY_USER_FREE + 2; i++) {
		snprintf(addr, sizeof(addr), "10.0.%d.1", i);
		auth_penalty_failed(p, addr, "alice", t);
	}
	assert_int_equal(auth_penalty_delay_ms(p, "10.9.9.9", "alice", t), 4000);
	assert_int_equal(auth_penalty_delay_ms(p, "10.9.9.9", "bob", t), 0);
	auth_penalty_succeeded(p, "10.9.9.9", "alice");
	assert_int_equal(auth_penalty_delay_ms(p, "10.9.9.9", "alice", t), 0);
	auth_penalty_free(p);
}

/* Every address of one /64 is one source; the next /64 is another. */
static void
test_ipv6_aggregated_by_prefix(void **state)
{
	struct auth_penalty *p = penalty_new();
	time_t t = 1000;
	auth_penalty_failed(p, "2001:db8:1:2::1", "alice", t);
	assert_int_equal(auth_penalty_delay_ms(p, "2001:db8:1:2:ffff:1:2:3", "alice", t), 2000);
	assert_int_equal(auth_penalty_delay_ms(p, "2001:db8:1:3::1", "alice", t), 0);
	auth_penalty_free(p);

	p = auth_penalty_new(128);
	auth_penalty_failed(p, "2001:db8:1:2::1", "alice", t);
	assert_int_equal(auth_penalty_delay_ms(p, "2001:db8:1:2::2", "alice", t), 0);
	auth_penalty_free(p);

	/* IPv4 and v4-mapped addresses are whole addresses */
	p = penalty_new();
	auth_penalty_failed(p, "::ffff:192.0.2.1", "alice", t);
	assert_int_equal(auth_penalty_delay_ms(p, "::ffff:192.0.2.2", "alice", t), 0);
	auth_penalty_free(p);
}

static void
test_flood_of_addresses_is_bounded(void **state)
{
	struct auth_penalty *p = penalty_new();
	char addr[48];
	for (int i = 0; i < 100000; i++) {
		snprintf(addr, sizeof(addr), "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
		auth_penalty_failed(p, addr, "x", 1000 + i);
	}
	/* the newest address is remembered */
	assert_int_equal(auth_penalty_delay_ms(p, addr, "y", 1000 + 100000), 0);
	assert_int_equal(auth_penalty_delay_ms(p, addr, "x", 1000 + 100000), AUTH_PENALTY_MAX_MS);
	auth_penalty_free(p);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_doubling_and_cap),
		cmocka_unit_test(test_success_resets_and_window_expires),
		cmocka_unit_test(test_own_logins_do_not_clear_guesses),
		cmocka_unit_test(test_spraying_counts_per_source),
		cmocka_unit_test(test_distributed_guessing_counts_per_user),
		cmocka_unit_test(test_ipv6_aggregated_by_prefix),
		cmocka_unit_test(test_flood_of_addresses_is_bounded),
	};
	return cmocka_run_group_tests_name("auth_penalty", tests, NULL, NULL);
}

/* Failed-login penalty table (src/server/auth_penalty.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#include "server/auth_penalty.h"

static void
test_doubling_and_cap(void **state)
{
	struct auth_penalty *p = auth_penalty_new();
	time_t t = 1000000;
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.1", t), 0);
	auth_penalty_failed(p, "192.0.2.1", t);
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.1", t), 2000);
	auth_penalty_failed(p, "192.0.2.1", t);
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.1", t), 4000);
	auth_penalty_failed(p, "192.0.2.1", t);
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.1", t), 8000);
	for (int i = 0; i < 50; i++)
		auth_penalty_failed(p, "192.0.2.1", t);
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.1", t), AUTH_PENALTY_MAX_MS);
	/* other addresses are not affected */
	assert_int_equal(auth_penalty_delay_ms(p, "192.0.2.2", t), 0);
	auth_penalty_free(p);
}

static void
test_success_resets_and_window_expires(void **state)
{
	struct auth_penalty *p = auth_penalty_new();
	time_t t = 5000000;
	auth_penalty_failed(p, "2001:db8::1", t);
	auth_penalty_succeeded(p, "2001:db8::1");
	assert_int_equal(auth_penalty_delay_ms(p, "2001:db8::1", t), 0);
	auth_penalty_failed(p, "2001:db8::1", t);
	assert_int_equal(auth_penalty_delay_ms(p, "2001:db8::1", t + AUTH_PENALTY_WINDOW + 1), 0);
	auth_penalty_expire(p, t + AUTH_PENALTY_WINDOW + 1);
	assert_int_equal(auth_penalty_delay_ms(p, "2001:db8::1", t), 0);
	auth_penalty_free(p);
}

static void
test_flood_of_addresses_is_bounded(void **state)
{
	struct auth_penalty *p = auth_penalty_new();
	char addr[48];
	for (int i = 0; i < 100000; i++) {
		snprintf(addr, sizeof(addr), "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
		auth_penalty_failed(p, addr, 1000 + i);
	}
	/* the newest address is remembered */
	assert_int_equal(auth_penalty_delay_ms(p, addr, 1000 + 100000), 2000);
	auth_penalty_free(p);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_doubling_and_cap),
		cmocka_unit_test(test_success_resets_and_window_expires),
		cmocka_unit_test(test_flood_of_addresses_is_bounded),
	};
	return cmocka_run_group_tests_name("auth_penalty", tests, NULL, NULL);
}

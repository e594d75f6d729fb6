/* Strict number parsing and small helpers (src/common/util.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/util.h"

static void
test_parse_u32_accepts(void **state)
{
	uint32_t v;
	assert_true(parse_u32("0", UINT32_MAX, &v));
	assert_int_equal(v, 0);
	assert_true(parse_u32("1", UINT32_MAX, &v));
	assert_int_equal(v, 1);
	assert_true(parse_u32("4294967295", UINT32_MAX, &v));
	assert_int_equal(v, 4294967295u);
	assert_true(parse_u32("007", UINT32_MAX, &v));
	assert_int_equal(v, 7);
}

static void
test_parse_u32_rejects(void **state)
{
	uint32_t v = 99;
	const char *bad[] = { "", "4294967296", "4294967297", "18446744073709551617",
	    "-1", "+1", " 1", "1 ", "1x", "0x10", "1.0", "１", "99999999999999999999999" };
	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		assert_false(parse_u32(bad[i], UINT32_MAX, &v));
	assert_int_equal(v, 99);  /* untouched on failure */
	assert_false(parse_u32(NULL, UINT32_MAX, &v));
	assert_false(parse_u32("11", 10, &v));
	assert_true(parse_u32("10", 10, &v));
}

static void
test_parse_u64_limits(void **state)
{
	uint64_t v;
	assert_true(parse_u64("18446744073709551615", UINT64_MAX, &v));
	assert_true(v == UINT64_MAX);
	assert_false(parse_u64("18446744073709551616", UINT64_MAX, &v));
}

static void
test_str_sanitize(void **state)
{
	char out[8];
	str_sanitize(out, sizeof(out), "a\r\nb\x01\xff" "cdefgh", 12);
	assert_string_equal(out, "a??b??c");
	str_sanitize(out, sizeof(out), "", 0);
	assert_string_equal(out, "");
}

static void
test_const_time_eq(void **state)
{
	assert_true(const_time_eq("abc", "abc", 3));
	assert_false(const_time_eq("abc", "abd", 3));
	assert_true(const_time_eq("", "", 0));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_u32_accepts),
		cmocka_unit_test(test_parse_u32_rejects),
		cmocka_unit_test(test_parse_u64_limits),
		cmocka_unit_test(test_str_sanitize),
		cmocka_unit_test(test_const_time_eq),
	};
	return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}

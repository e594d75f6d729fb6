/* Strict number parsing and small helpers (src/common/util.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/util.h"

/* A temporary file holding len bytes of data; returns its path (static). */
static const char *
temp_file(const void *data, size_t len)
{
	static char path[64];
	snprintf(path, sizeof(path), "/tmp/popbox-test-util-XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
	return path;
}

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
	/* a max under 9: a single digit above it (max - d wrapped before) */
	assert_false(parse_u64("8", 7, &v));
	assert_false(parse_u64("2", 1, &v));
	assert_true(parse_u64("7", 7, &v));
	assert_true(v == 7);
	assert_false(parse_u64("1", 0, &v));
	assert_true(parse_u64("0", 0, &v));
	assert_false(parse_u64("70", 69, &v));
	assert_true(parse_u64("69", 69, &v));
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

static void
test_read_bounded_limits(void **state)
{
	char data[100];
	memset(data, 'a', sizeof(data));
	char *text = NULL, *error = NULL;
	size_t len = 0;

	/* exactly the limit: read whole, NUL-terminated */
	const char *path = temp_file(data, sizeof(data));
	assert_int_equal(util_read_path_bounded(path, 100, 0, &text, &len, &error), 0);
	assert_int_equal(len, 100);
	assert_memory_equal(text, data, 100);
	assert_int_equal(text[100], '\0');
	free(text);
	/* one byte over: refused, with the limit in the message */
	assert_int_equal(util_read_path_bounded(path, 99, UTIL_READ_SECRET, &text, &len, &error), -1);
	char *expect = xasprintf("%s: file too large (more than 99 bytes)", path);
	assert_string_equal(error, expect);
	free(expect);
	free(error);
	unlink(path);

	/* empty file, and a limit of 0 */
	path = temp_file("", 0);
	assert_int_equal(util_read_path_bounded(path, 0, 0, &text, NULL, &error), 0);
	assert_string_equal(text, "");
	free(text);
	unlink(path);
}

static void
test_read_bounded_fd(void **state)
{
	/* NUL bytes are data; the descriptor's offset is neither used nor moved */
	const char *path = temp_file("ab\0cd", 5);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(lseek(fd, 3, SEEK_SET), 3);
	char *text = NULL, *error = NULL;
	size_t len = 0;
	assert_int_equal(util_read_file_bounded(fd, "name", 1000, 0, &text, &len, &error), 0);
	assert_int_equal(len, 5);
	assert_memory_equal(text, "ab\0cd", 6);
	assert_int_equal(lseek(fd, 0, SEEK_CUR), 3);
	free(text);
	close(fd);
	unlink(path);

	/* a file whose size fstat does not know (procfs says 0) still reads
	 * to its end, growing the buffer, and the limit still holds */
	assert_int_equal(util_read_path_bounded("/proc/self/maps", 1 << 24, UTIL_READ_SECRET, &text,
	    &len, &error), 0);
	assert_true(len > 0);
	assert_int_equal(strlen(text), len);
	free(text);
	assert_int_equal(util_read_path_bounded("/proc/self/maps", 10, 0, &text, &len, &error), -1);
	assert_string_equal(error, "/proc/self/maps: file too large (more than 10 bytes)");
	free(error);
}

static void
test_read_bounded_errors(void **state)
{
	char *text = NULL, *error = NULL;
	assert_int_equal(util_read_path_bounded("/nonexistent/x", 10, 0, &text, NULL, &error), -1);
	assert_string_equal(error, "/nonexistent/x: cannot open: No such file or directory");
	free(error);
	assert_int_equal(util_read_path_bounded("/tmp", 10, 0, &text, NULL, &error), -1);
	assert_string_equal(error, "/tmp: not a regular file");
	free(error);
	int fd = open("/dev/null", O_RDONLY);
	assert_int_equal(util_read_file_bounded(fd, "null", 10, 0, &text, NULL, &error), -1);
	assert_string_equal(error, "null: not a regular file");
	free(error);
	close(fd);
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
		cmocka_unit_test(test_read_bounded_limits),
		cmocka_unit_test(test_read_bounded_fd),
		cmocka_unit_test(test_read_bounded_errors),
	};
	return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}

/* PROXY protocol header parser and CIDR matching (src/server/proxy.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "server/proxy.h"

static enum proxy_result
parse(const char *s, size_t len, struct proxy_header *h)
{
	return proxy_parse((const unsigned char *)s, len, h);
}

static void
test_v1(void **state)
{
	struct proxy_header h;
	const char *v = "PROXY TCP4 203.0.113.7 10.0.0.1 40001 110\r\nUSER";
	assert_int_equal(parse(v, strlen(v), &h), PROXY_OK);
	assert_int_equal(h.length, strlen(v) - 4);
	assert_true(h.has_address);
	struct sockaddr_in *in = (struct sockaddr_in *)&h.source;
	assert_int_equal(in->sin_family, AF_INET);
	assert_int_equal(ntohs(in->sin_port), 40001);
	assert_int_equal(ntohl(in->sin_addr.s_addr), 0xCB007107);
	for (size_t k = 0; k < h.length; k++)
		assert_int_equal(parse(v, k, &h), PROXY_NEED_MORE);
	const char *u = "PROXY UNKNOWN\r\n";
	assert_int_equal(parse(u, strlen(u), &h), PROXY_OK);
	assert_false(h.has_address);
	const char *six = "PROXY TCP6 2001:db8::5 2001:db8::1 1 2\r\n";
	assert_int_equal(parse(six, strlen(six), &h), PROXY_OK);
	assert_int_equal(h.source.ss_family, AF_INET6);
}

static void
test_v1_bad(void **state)
{
	struct proxy_header h;
	const char *bad[] = { "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
	    "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
	    "PROXY TCP4 ::1 ::1 1 2\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "CAPA\r\n", "PROXX" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(parse(bad[i], strlen(bad[i]), &h), PROXY_BAD);
	char longline[200];
	memset(longline, 'A', sizeof(longline));
	memcpy(longline, "PROXY ", 6);
	assert_int_equal(parse(longline, sizeof(longline), &h), PROXY_BAD);
}

static void
test_v2(void **state)
{
	unsigned char b[64] = "\r\n\r\n\0\r\nQUIT\n";
	struct proxy_header h;
	b[12] = 0x21;
	b[13] = 0x11;
	b[14] = 0;
	b[15] = 12;
	memcpy(b + 16, "\xc6\x33\x64\x09" "\x7f\x00\x00\x01" "\x04\xd2\x00\x6e", 12);
	assert_int_equal(proxy_parse(b, 28, &h), PROXY_OK);
	assert_int_equal(h.length, 28);
	assert_int_equal(ntohs(((struct sockaddr_in *)&h.source)->sin_port), 1234);
	assert_int_equal(proxy_parse(b, 27, &h), PROXY_NEED_MORE);
	b[12] = 0x20;   /* LOCAL */
	assert_int_equal(proxy_parse(b, 28, &h), PROXY_OK);
	assert_false(h.has_address);
	b[12] = 0x31;   /* version 3 */
	assert_int_equal(proxy_parse(b, 28, &h), PROXY_BAD);
	b[12] = 0x21;
	b[13] = 0x12;   /* UDP */
	assert_int_equal(proxy_parse(b, 28, &h), PROXY_BAD);
}

static void
test_cidr(void **state)
{
	struct proxy_cidr c[2];
	assert_true(proxy_cidr_parse("10.1.0.0/16", &c[0]));
	assert_true(proxy_cidr_parse("2001:db8::/32", &c[1]));
	struct proxy_cidr tmp;
	assert_false(proxy_cidr_parse("10.1.0.0/33", &tmp));
	assert_false(proxy_cidr_parse("example.org", &tmp));
	assert_false(proxy_cidr_parse("", &tmp));
	struct sockaddr_in in = { .sin_family = AF_INET };
	inet_pton(AF_INET, "10.1.200.3", &in.sin_addr);
	assert_true(proxy_cidr_match(c, 2, (struct sockaddr *)&in));
	inet_pton(AF_INET, "10.2.0.1", &in.sin_addr);
	assert_false(proxy_cidr_match(c, 2, (struct sockaddr *)&in));
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6 };
	inet_pton(AF_INET6, "::ffff:10.1.0.9", &in6.sin6_addr);
	assert_true(proxy_cidr_match(c, 2, (struct sockaddr *)&in6));
	inet_pton(AF_INET6, "2001:db8:ffff::1", &in6.sin6_addr);
	assert_true(proxy_cidr_match(c, 2, (struct sockaddr *)&in6));
	inet_pton(AF_INET6, "2001:db9::1", &in6.sin6_addr);
	assert_false(proxy_cidr_match(c, 2, (struct sockaddr *)&in6));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_v1),
		cmocka_unit_test(test_v1_bad),
		cmocka_unit_test(test_v2),
		cmocka_unit_test(test_cidr),
	};
	return cmocka_run_group_tests_name("proxy", tests, NULL, NULL);
}

#include "server/proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static const unsigned char proxy_v2_sig[12] = {
	0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
};

static bool
v1_port(const char *s, uint16_t *out)
{
	uint32_t v;
	/* the specification forbids leading zeros, except "0" itself */
	if (s[0] == '0' && s[1] != '\0')
		return false;
	if (!parse_u32(s, 65535, &v))
		return false;
	*out = (uint16_t)v;
	return true;
}

static enum proxy_result
proxy_parse_v1(const unsigned char *buf, size_t len, struct proxy_header *out)
{
	const unsigned char *eol = memchr(buf, '\n', len < PROXY_V1_MAX ? len : PROXY_V1_MAX);
	if (eol == NULL)
		return len >= PROXY_V1_MAX ? PROXY_BAD : PROXY_NEED_MORE;
	size_t n = (size_t)(eol - buf) + 1;
	if (n < 8 || buf[n - 2] != '\r')
		return PROXY_BAD;
	char line[PROXY_V1_MAX + 1];
	memcpy(line, buf, n - 2);
	line[n - 2] = '\0';
	if (memchr(line, '\0', n - 2) != NULL)
		return PROXY_BAD;
	out->length = n;
	out->has_address = false;
	if (strcmp(line, "PROXY UNKNOWN") == 0 || strncmp(line, "PROXY UNKNOWN ", 14) == 0)
		return PROXY_OK;
	char *f[6], *save = NULL;
	int nf = 0;
	for (char *t = strtok_r(line, " ", &save); t != NULL; t = strtok_r(NULL, " ", &save)) {
		if (nf == 6)
			return PROXY_BAD;
		f[nf++] = t;
	}
	if (nf != 6 || strcmp(f[0], "PROXY") != 0)
		return PROXY_BAD;
	uint16_t sport, dport;
	if (!v1_port(f[4], &sport) || !v1_port(f[5], &dport))
		return PROXY_BAD;
	memset(&out->source, 0, sizeof(out->source));
	if (strcmp(f[1], "TCP4") == 0) {
		struct sockaddr_in *in = (struct sockaddr_in *)&out->source;
		struct in_addr dst;
		if (inet_pton(AF_INET, f[2], &in->sin_addr) != 1 || inet_pton(AF_INET, f[3], &dst) != 1)
			return PROXY_BAD;
		in->sin_family = AF_INET;
		in->sin_port = htons(sport);
		out->source_len = sizeof(*in);
	} else if (strcmp(f[1], "TCP6") == 0) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->source;
		struct in6_addr dst;
		if (inet_pton(AF_INET6, f[2], &in6->sin6_addr) != 1 || inet_pton(AF_INET6, f[3], &dst) != 1)
			return PROXY_BAD;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(sport);
		out->source_len = sizeof(*in6);
	} else {
		return PROXY_BAD;
	}
	out->has_address = true;
	return PROXY_OK;
}

static enum proxy_result
proxy_parse_v2(const unsigned char *buf, size_t len, struct proxy_header *out)
{
	if (len < 16)
		return PROXY_NEED_MORE;
	unsigned ver_cmd = buf[12], fam = buf[13];
	size_t alen = ((size_t)buf[14] << 8) | buf[15];
	if ((ver_cmd >> 4) != 2 || (ver_cmd & 0x0F) > 1 || 16 + alen > PROXY_V2_MAX)
		return PROXY_BAD;
	if (len < 16 + alen)
		return PROXY_NEED_MORE;
	out->length = 16 + alen;
	out->has_address = false;
	if ((ver_cmd & 0x0F) == 0)
		return PROXY_OK;   /* LOCAL: the balancer's own health check */
	const unsigned char *a = buf + 16;
	memset(&out->source, 0, sizeof(out->source));
	switch (fam) {
	case 0x11: {   /* TCP over IPv4 */
		if (alen < 12)
			return PROXY_BAD;
		struct sockaddr_in *in = (struct sockaddr_in *)&out->source;
		in->sin_family = AF_INET;
		memcpy(&in->sin_addr, a, 4);
		memcpy(&in->sin_port, a + 8, 2);
		out->source_len = sizeof(*in);
		out->has_address = true;
		return PROXY_OK;
	}
	case 0x21: {   /* TCP over IPv6 */
		if (alen < 36)
			return PROXY_BAD;
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->source;
		in6->sin6_family = AF_INET6;
		memcpy(&in6->sin6_addr, a, 16);
		memcpy(&in6->sin6_port, a + 32, 2);
		out->source_len = sizeof(*in6);
		out->has_address = true;
		return PROXY_OK;
	}
	case 0x00:     /* UNSPEC: no client address */
		return PROXY_OK;
	default:       /* UDP or UNIX: not a POP3 client */
		return PROXY_BAD;
	}
}

enum proxy_result
proxy_parse(const unsigned char *buf, size_t len, struct proxy_header *out)
{
	size_t cmp;
	if (len == 0)
		return PROXY_NEED_MORE;
	if (buf[0] == 'P') {
		cmp = len < 6 ? len : 6;
		if (memcmp(buf, "PROXY ", cmp) != 0)
			return PROXY_BAD;
		return len < 6 ? PROXY_NEED_MORE : proxy_parse_v1(buf, len, out);
	}
	cmp = len < sizeof(proxy_v2_sig) ? len : sizeof(proxy_v2_sig);
	if (memcmp(buf, proxy_v2_sig, cmp) != 0)
		return PROXY_BAD;
	return proxy_parse_v2(buf, len, out);
}

bool
proxy_cidr_parse(const char *text, struct proxy_cidr *out)
{
	char host[64];
	const char *slash = strchr(text, '/');
	size_t hlen = slash ? (size_t)(slash - text) : strlen(text);
	if (hlen == 0 || hlen >= sizeof(host))
		return false;
	memcpy(host, text, hlen);
	host[hlen] = '\0';
	memset(out, 0, sizeof(*out));
	unsigned max;
	if (inet_pton(AF_INET, host, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, host, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else {
		return false;
	}
	uint32_t prefix = max;
	if (slash != NULL && !parse_u32(slash + 1, max, &prefix))
		return false;
	out->prefix = prefix;
	return true;
}

static bool
prefix_equal(const unsigned char *a, const unsigned char *b, unsigned bits)
{
	unsigned bytes = bits / 8, rest = bits % 8;
	if (memcmp(a, b, bytes) != 0)
		return false;
	if (rest == 0)
		return true;
	unsigned char mask = (unsigned char)(0xFF << (8 - rest));
	return (a[bytes] & mask) == (b[bytes] & mask);
}

bool
proxy_cidr_match(const struct proxy_cidr *list, size_t n, const struct sockaddr *sa)
{
	unsigned char addr[16];
	int family;
	if (sa->sa_family == AF_INET) {
		memcpy(addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		family = AF_INET;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a6)) {
			memcpy(addr, a6->s6_addr + 12, 4);
			family = AF_INET;
		} else {
			memcpy(addr, a6->s6_addr, 16);
			family = AF_INET6;
		}
	} else {
		return false;
	}
	for (size_t i = 0; i < n; i++)
		if (list[i].family == family && prefix_equal(addr, list[i].addr, list[i].prefix))
			return true;
	return false;
}

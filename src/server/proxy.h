/* PROXY protocol v1 and v2 (HAProxy's specification) for popboxd behind a
 * TCP load balancer (docs/DESIGN.md "Behind a load balancer"): the header the balancer sends before any
 * POP3 or TLS byte carries the real client address, used for logging, the
 * per-address limits and the failed-login penalty; a header without one
 * makes the client "unknown", not the balancer. Only balancers listed in
 * proxy_trusted may send it; anything else is closed. */
#ifndef POPBOX_PROXY_H
#define POPBOX_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* v1: at most 107 octets with CRLF. v2: 16 octets + the address block; we
 * accept address blocks up to 512 octets (TLVs included) and skip TLVs. */
#define PROXY_V1_MAX 107
#define PROXY_V2_MAX (16 + 512)
#define PROXY_MAX PROXY_V2_MAX

enum proxy_result {
	PROXY_NEED_MORE,    /* a valid prefix: read more */
	PROXY_OK,
	PROXY_BAD,          /* not a PROXY header, or a malformed one */
};

struct proxy_header {
	size_t length;                 /* octets to consume */
	bool has_address;              /* false: LOCAL / UNKNOWN / UNSPEC: no client address */
	struct sockaddr_storage source;
	socklen_t source_len;
};

/* Parse the start of buf. */
enum proxy_result proxy_parse(const unsigned char *buf, size_t len, struct proxy_header *out);

/* A network in CIDR notation. */
struct proxy_cidr {
	int family;                    /* AF_INET or AF_INET6 */
	unsigned char addr[16];
	unsigned prefix;
};

/* "192.0.2.0/24", "2001:db8::/32", or an address alone (a host). */
bool proxy_cidr_parse(const char *text, struct proxy_cidr *out);
/* Whether sa is inside one of the n networks (IPv4-mapped IPv6 matches IPv4). */
bool proxy_cidr_match(const struct proxy_cidr *list, size_t n, const struct sockaddr *sa);

#endif

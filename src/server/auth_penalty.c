/* Failed-login penalty (contract in auth_penalty.h). */
#include "server/auth_penalty.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/keyed_hash.h"
#include "common/util.h"

/* Slots looked at for one key: enough to ride out collisions, few enough
 * that a lookup stays a handful of compares. */
#define PENALTY_PROBES 8
/* Longest key: kind, source (an IPv6 text form with its prefix length fits
 * in INET6_ADDRSTRLEN + 4), a separator and the user name; a longer user
 * name is cut (the only effect: two such names share a count). */
#define PENALTY_KEY_MAX 320

enum penalty_kind {
	PENALTY_SOURCE_USER = 'p',
	PENALTY_USER = 'u',
	PENALTY_SOURCE = 's',
};

struct penalty_entry {
	char key[PENALTY_KEY_MAX];   /* "" = free */
	unsigned failures;
	time_t last;
};

struct auth_penalty {
	unsigned ipv6_prefix;
	struct penalty_entry slots[AUTH_PENALTY_SLOTS];
};

struct auth_penalty *
auth_penalty_new(unsigned ipv6_prefix)
{
	struct auth_penalty *p = xcalloc(1, sizeof(struct auth_penalty));

	p->ipv6_prefix = ipv6_prefix;
	return p;
}

void
auth_penalty_free(struct auth_penalty *p)
{
	free(p);
}

/* addr as the source it counts for: an IPv6 address with its host bits
 * beyond the prefix cleared, written with the prefix length. */
static void
penalty_source(const struct auth_penalty *p, const char *addr, char *out, size_t size)
{
	unsigned char a[16];
	char text[INET6_ADDRSTRLEN];

	if (p->ipv6_prefix >= 128 || inet_pton(AF_INET6, addr, a) != 1 ||
	    (a[0] == 0 && a[1] == 0 && memcmp(a + 2, "\0\0\0\0\0\0\0\0\xff\xff", 10) == 0)) {
		snprintf(out, size, "%s", addr);     /* IPv4, v4-mapped, or whole */
		return;
	}
	for (unsigned bit = p->ipv6_prefix; bit < 128; bit++)
		a[bit / 8] &= (unsigned char)~(0x80u >> (bit % 8));
	inet_ntop(AF_INET6, a, text, sizeof(text));
	snprintf(out, size, "%s/%u", text, p->ipv6_prefix);
}

static void
penalty_key(const struct auth_penalty *p, enum penalty_kind kind, const char *addr,
    const char *user, char key[PENALTY_KEY_MAX])
{
	char source[INET6_ADDRSTRLEN + 8];

	switch (kind) {
	case PENALTY_SOURCE_USER:
		penalty_source(p, addr, source, sizeof(source));
		snprintf(key, PENALTY_KEY_MAX, "%c%s\n%s", kind, source, user);
		break;
	case PENALTY_USER:
		snprintf(key, PENALTY_KEY_MAX, "%c%s", kind, user);
		break;
	case PENALTY_SOURCE:
		penalty_source(p, addr, source, sizeof(source));
		snprintf(key, PENALTY_KEY_MAX, "%c%s", kind, source);
		break;
	}
}

static struct penalty_entry *
penalty_find(const struct auth_penalty *p, const char *key, size_t *hash_r)
{
	size_t h = (size_t)keyed_hash64(key, strlen(key));

	if (hash_r != NULL)
		*hash_r = h;
	for (size_t i = 0; i < PENALTY_PROBES; i++) {
		const struct penalty_entry *e = &p->slots[(h + i) % AUTH_PENALTY_SLOTS];
		if (strcmp(e->key, key) == 0)
			return (struct penalty_entry *)e;
	}
	return NULL;
}

static unsigned
penalty_free_failures(enum penalty_kind kind)
{
	return kind == PENALTY_USER ? AUTH_PENALTY_USER_FREE :
	    kind == PENALTY_SOURCE ? AUTH_PENALTY_SOURCE_FREE : 0;
}

static unsigned
penalty_entry_delay_ms(const struct penalty_entry *e, unsigned free_failures, time_t now)
{
	if (e == NULL || e->failures <= free_failures || now - e->last > AUTH_PENALTY_WINDOW)
		return 0;
	unsigned counted = e->failures - free_failures;
	unsigned shift = counted - 1 > 4 ? 4 : counted - 1;
	unsigned ms = AUTH_PENALTY_FIRST_MS << shift;
	return ms > AUTH_PENALTY_MAX_MS ? AUTH_PENALTY_MAX_MS : ms;
}

static const enum penalty_kind penalty_kinds[] = {
	PENALTY_SOURCE_USER, PENALTY_USER, PENALTY_SOURCE,
};

unsigned
auth_penalty_delay_ms(const struct auth_penalty *p, const char *addr, const char *user,
    time_t now)
{
	char key[PENALTY_KEY_MAX];
	unsigned delay = 0;

	for (size_t k = 0; k < N_ELEMENTS(penalty_kinds); k++) {
		penalty_key(p, penalty_kinds[k], addr, user, key);
		unsigned d = penalty_entry_delay_ms(penalty_find(p, key, NULL),
		    penalty_free_failures(penalty_kinds[k]), now);
		if (d > delay)
			delay = d;
	}
	return delay;
}

static void
penalty_count(struct auth_penalty *p, const char *key, time_t now)
{
	size_t h;
	struct penalty_entry *e = penalty_find(p, key, &h);

	if (e == NULL) {
		struct penalty_entry *oldest = NULL;
		for (size_t i = 0; i < PENALTY_PROBES; i++) {
			struct penalty_entry *s = &p->slots[(h + i) % AUTH_PENALTY_SLOTS];
			if (s->key[0] == '\0') {
				oldest = s;
				break;
			}
			if (oldest == NULL || s->last < oldest->last)
				oldest = s;
		}
		e = oldest;
		snprintf(e->key, sizeof(e->key), "%s", key);
		e->failures = 0;
	} else if (now - e->last > AUTH_PENALTY_WINDOW) {
		e->failures = 0;
	}
	if (e->failures < 1000)
		e->failures++;
	e->last = now;
}

void
auth_penalty_failed(struct auth_penalty *p, const char *addr, const char *user, time_t now)
{
	char key[PENALTY_KEY_MAX];

	for (size_t k = 0; k < N_ELEMENTS(penalty_kinds); k++) {
		penalty_key(p, penalty_kinds[k], addr, user, key);
		penalty_count(p, key, now);
	}
}

void
auth_penalty_succeeded(struct auth_penalty *p, const char *addr, const char *user)
{
	static const enum penalty_kind cleared[] = { PENALTY_SOURCE_USER, PENALTY_USER };
	char key[PENALTY_KEY_MAX];

	for (size_t k = 0; k < N_ELEMENTS(cleared); k++) {
		penalty_key(p, cleared[k], addr, user, key);
		struct penalty_entry *e = penalty_find(p, key, NULL);
		if (e != NULL)
			memset(e, 0, sizeof(*e));
	}
}

void
auth_penalty_expire(struct auth_penalty *p, time_t now)
{
	for (size_t i = 0; i < AUTH_PENALTY_SLOTS; i++)
		if (p->slots[i].key[0] != '\0' && now - p->slots[i].last > AUTH_PENALTY_WINDOW)
			memset(&p->slots[i], 0, sizeof(p->slots[i]));
}

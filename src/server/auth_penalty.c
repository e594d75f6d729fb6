#include "server/auth_penalty.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

/* Slots looked at for one address: enough to ride out collisions, few enough
 * that a lookup stays a handful of compares. */
#define PENALTY_PROBES 8

struct penalty_entry {
	char addr[48];      /* "" = free */
	unsigned failures;
	time_t last;
};

struct auth_penalty {
	struct penalty_entry slots[AUTH_PENALTY_SLOTS];
};

static size_t
addr_hash(const char *addr)
{
	/* FNV-1a: addresses are short; the table only needs spread, not secrecy,
	 * since a full neighbourhood just evicts its oldest entry. */
	size_t h = 2166136261u;
	for (; *addr != '\0'; addr++)
		h = (h ^ (unsigned char)*addr) * 16777619u;
	return h;
}

struct auth_penalty *
auth_penalty_new(void)
{
	return xcalloc(1, sizeof(struct auth_penalty));
}

void
auth_penalty_free(struct auth_penalty *p)
{
	free(p);
}

static struct penalty_entry *
penalty_find(const struct auth_penalty *p, const char *addr)
{
	size_t h = addr_hash(addr);
	for (size_t i = 0; i < PENALTY_PROBES; i++) {
		const struct penalty_entry *e = &p->slots[(h + i) % AUTH_PENALTY_SLOTS];
		if (strcmp(e->addr, addr) == 0)
			return (struct penalty_entry *)e;
	}
	return NULL;
}

unsigned
auth_penalty_delay_ms(const struct auth_penalty *p, const char *addr, time_t now)
{
	const struct penalty_entry *e = penalty_find(p, addr);
	if (e == NULL || e->failures == 0 || now - e->last > AUTH_PENALTY_WINDOW)
		return 0;
	unsigned shift = e->failures - 1 > 4 ? 4 : e->failures - 1;
	unsigned ms = AUTH_PENALTY_FIRST_MS << shift;
	return ms > AUTH_PENALTY_MAX_MS ? AUTH_PENALTY_MAX_MS : ms;
}

void
auth_penalty_failed(struct auth_penalty *p, const char *addr, time_t now)
{
	struct penalty_entry *e = penalty_find(p, addr);
	if (e == NULL) {
		size_t h = addr_hash(addr);
		struct penalty_entry *oldest = NULL;
		for (size_t i = 0; i < PENALTY_PROBES; i++) {
			struct penalty_entry *s = &p->slots[(h + i) % AUTH_PENALTY_SLOTS];
			if (s->addr[0] == '\0') {
				oldest = s;
				break;
			}
			if (oldest == NULL || s->last < oldest->last)
				oldest = s;
		}
		e = oldest;
		snprintf(e->addr, sizeof(e->addr), "%s", addr);
		e->failures = 0;
	} else if (now - e->last > AUTH_PENALTY_WINDOW) {
		e->failures = 0;
	}
	if (e->failures < 1000)
		e->failures++;
	e->last = now;
}

void
auth_penalty_succeeded(struct auth_penalty *p, const char *addr)
{
	struct penalty_entry *e = penalty_find(p, addr);
	if (e != NULL)
		memset(e, 0, sizeof(*e));
}

void
auth_penalty_expire(struct auth_penalty *p, time_t now)
{
	for (size_t i = 0; i < AUTH_PENALTY_SLOTS; i++)
		if (p->slots[i].addr[0] != '\0' && now - p->slots[i].last > AUTH_PENALTY_WINDOW)
			memset(&p->slots[i], 0, sizeof(p->slots[i]));
}

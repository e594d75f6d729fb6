#include "server/iplimit.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include <openssl/rand.h>

#include "common/util.h"

struct iplimit {
	unsigned n_workers;
	uint64_t key;          /* hash key: an attacker cannot aim at a column */
	_Atomic uint32_t totals[64];   /* per worker: all its connections */
	_Atomic uint16_t counts[];  /* [worker][column] */
};

static unsigned
iplimit_column(const struct iplimit *l, const char *addr)
{
	uint64_t h = l->key ^ 14695981039346656037ull;
	for (; *addr != '\0'; addr++)
		h = (h ^ (unsigned char)*addr) * 1099511628211ull;
	h ^= h >> 29;
	return (unsigned)(h % IPLIMIT_COLUMNS);
}

struct iplimit *
iplimit_new(unsigned n_workers)
{
	size_t size = sizeof(struct iplimit) + (size_t)n_workers * IPLIMIT_COLUMNS * sizeof(uint16_t);
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	struct iplimit *l = p;
	l->n_workers = n_workers;
	if (RAND_bytes((unsigned char *)&l->key, sizeof(l->key)) != 1)
		l->key = (uint64_t)(uintptr_t)p;
	return l;
}

void
iplimit_reset_worker(struct iplimit *l, unsigned slot)
{
	if (l == NULL || slot >= l->n_workers)
		return;
	if (slot < 64)
		l->totals[slot] = 0;
	for (unsigned i = 0; i < IPLIMIT_COLUMNS; i++)
		l->counts[(size_t)slot * IPLIMIT_COLUMNS + i] = 0;
}

unsigned
iplimit_count(const struct iplimit *l, const char *addr)
{
	if (l == NULL)
		return 0;
	unsigned col = iplimit_column(l, addr), total = 0;
	for (unsigned w = 0; w < l->n_workers; w++)
		total += l->counts[(size_t)w * IPLIMIT_COLUMNS + col];
	return total;
}

void
iplimit_add(struct iplimit *l, unsigned slot, const char *addr, int delta)
{
	if (l == NULL || slot >= l->n_workers)
		return;
	_Atomic uint16_t *c = &l->counts[(size_t)slot * IPLIMIT_COLUMNS + iplimit_column(l, addr)];
	if (delta > 0 && *c < UINT16_MAX)
		(*c)++;
	else if (delta < 0 && *c > 0)
		(*c)--;
}

unsigned
iplimit_total(const struct iplimit *l)
{
	unsigned total = 0;
	if (l == NULL)
		return 0;
	for (unsigned w = 0; w < l->n_workers && w < 64; w++)
		total += l->totals[w];
	return total;
}

void
iplimit_total_add(struct iplimit *l, unsigned slot, int delta)
{
	if (l == NULL || slot >= l->n_workers || slot >= 64)
		return;
	if (delta > 0)
		l->totals[slot]++;
	else if (l->totals[slot] > 0)
		l->totals[slot]--;
}

void
iplimit_detach(struct iplimit *l)
{
	if (l != NULL)
		munmap(l, sizeof(struct iplimit) + (size_t)l->n_workers * IPLIMIT_COLUMNS * sizeof(uint16_t));
}

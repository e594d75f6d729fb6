#include "server/iplimit.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include <openssl/rand.h>

#include "common/util.h"

struct iplimit {
	unsigned n_workers;
	uint64_t key;          /* hash key: an attacker cannot aim at a column */
	_Atomic uint32_t totals[65];   /* per row: all its connections */
	_Atomic uint16_t counts[];  /* [row][column]: the workers', then the master's */
};

/* The row of slot (IPLIMIT_MASTER: the last), or -1 for no such slot. */
static int
iplimit_row(const struct iplimit *l, unsigned slot)
{
	if (slot == IPLIMIT_MASTER)
		return (int)l->n_workers;
	return slot < l->n_workers ? (int)slot : -1;
}

static size_t
iplimit_size(unsigned n_workers)
{
	return sizeof(struct iplimit) + (size_t)(n_workers + 1) * IPLIMIT_COLUMNS * sizeof(uint16_t);
}

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
	if (n_workers + 1 > N_ELEMENTS(((struct iplimit *)0)->totals))
		return NULL;
	size_t size = iplimit_size(n_workers);
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
	for (unsigned w = 0; w <= l->n_workers; w++)
		total += l->counts[(size_t)w * IPLIMIT_COLUMNS + col];
	return total;
}

void
iplimit_add(struct iplimit *l, unsigned slot, const char *addr, int delta)
{
	int row = l != NULL ? iplimit_row(l, slot) : -1;
	if (row < 0)
		return;
	_Atomic uint16_t *c = &l->counts[(size_t)row * IPLIMIT_COLUMNS + iplimit_column(l, addr)];
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
	for (unsigned w = 0; w <= l->n_workers; w++)
		total += l->totals[w];
	return total;
}

void
iplimit_total_add(struct iplimit *l, unsigned slot, int delta)
{
	int row = l != NULL ? iplimit_row(l, slot) : -1;
	if (row < 0)
		return;
	if (delta > 0)
		l->totals[row]++;
	else if (l->totals[row] > 0)
		l->totals[row]--;
}

void
iplimit_detach(struct iplimit *l)
{
	if (l != NULL)
		munmap(l, iplimit_size(l->n_workers));
}

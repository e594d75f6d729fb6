/* The device state file (devices_parse in src/server/devices.c). It lives
 * in the user's maildrop, so its owner (or a crash, or a disk) may have
 * written anything. Whatever it holds, the parser must not crash or leak;
 * the part it keeps must end at a line boundary and, parsed alone, be
 * kept whole and give the same state; every deletion or retrieval bit
 * belongs to a device that is in use; the accounting of records never
 * wraps. */
#include <string.h>

#include "fuzz_common.h"
#include "server/devices.h"

static void
check_state(const struct devices *d)
{
	uint64_t used = 0;
	for (int slot = 0; slot < DEVICES_SLOTS; slot++)
		if (d->dev[slot].used)
			used |= (uint64_t)1 << slot;
	FUZZ_CHECK(used & 1, "the classic slot is always in use");
	for (size_t i = 0; i < d->table_cap; i++) {
		const struct devices_entry *e = &d->table[i];
		if (e->uidl == NULL)
			continue;
		FUZZ_CHECK((e->deleted & ~used) == 0, "deletion by a slot not in use");
		FUZZ_CHECK((e->retrieved & ~used) == 0, "retrieval by a slot not in use");
		FUZZ_CHECK((e->deleted & 1) == 0, "the classic slot never deletes for itself");
		size_t n = strlen(e->uidl);
		FUZZ_CHECK(n >= 1 && n <= 70, "UIDL length %zu", n);
	}
	FUZZ_CHECK(d->live < ((uint64_t)1 << 40), "record count wrapped: %llu",
	    (unsigned long long)d->live);
}

static bool
same_state(const struct devices *a, const struct devices *b)
{
	if (a->recovery_since != b->recovery_since || a->table_count != b->table_count)
		return false;
	for (int slot = 0; slot < DEVICES_SLOTS; slot++) {
		if (a->dev[slot].used != b->dev[slot].used ||
		    a->dev[slot].last_login != b->dev[slot].last_login ||
		    strcmp(a->dev[slot].name, b->dev[slot].name) != 0)
			return false;
	}
	for (size_t i = 0; i < a->table_cap; i++) {
		const struct devices_entry *e = &a->table[i];
		if (e->uidl == NULL)
			continue;
		const struct devices_entry *f = devices_lookup(b, e->uidl);
		if (f == NULL || f->deleted != e->deleted || f->retrieved != e->retrieved ||
		    f->last_retrieved != e->last_retrieved)
			return false;
	}
	return true;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	bool damaged, damaged2;
	struct devices *d = devices_new();
	size_t valid = devices_parse(d, text, size, &damaged);
	FUZZ_CHECK(valid <= size, "kept %zu of %zu", valid, size);
	FUZZ_CHECK(valid == 0 || text[valid - 1] == '\n', "kept part ends inside a line");
	check_state(d);
	if (!damaged) {
		struct devices *again = devices_new();
		size_t v2 = devices_parse(again, text, valid, &damaged2);
		FUZZ_CHECK(v2 == valid && !damaged2, "the kept part is not kept whole");
		FUZZ_CHECK(same_state(d, again), "the kept part gives another state");
		devices_free(again);
	}
	devices_free(d);
	return 0;
}

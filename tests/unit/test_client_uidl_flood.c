/* popbox fetch's UIDL table (src/client/uidl_state.c) against a server that
 * chooses its UIDLs to collide (docs/RELIABILITY.md §5). The server decides every
 * UIDL the client stores and looks up; with an unkeyed hash it can make all
 * of them land in one bucket and turn each insert into a walk over all the
 * earlier ones (quadratic). The work is counted in probes
 * (uidl_state_stats), not measured in time.
 *
 * The flood: 10^6 distinct UIDLs that all have the same low 22 bits under
 * the hash the table used before (an FNV-1a variant, old_hash below), so
 * they share one bucket at every index size up to 2^22 (the index of 10^6
 * entries, at most half full, has 2^21 slots). The low k bits of an FNV-1a
 * state depend only on the low k bits of the state before, and one step
 * (xor a byte, multiply by an odd number) can be undone modulo 2^k. So,
 * working back from the target bucket, every 4-character suffix gives the
 * state (mod 2^22) it must start from; a table of one suffix per starting
 * state (94^4 suffixes cover almost all 2^22 states) then completes any
 * prefix into a UIDL in the target bucket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/uidl_state.h"

#define FLOOD_COUNT 1000000u
#define FLOOD_BITS 22
#define FLOOD_MASK ((UINT64_C(1) << FLOOD_BITS) - 1)
#define FLOOD_TARGET (UINT64_C(0x2a5a5a) & FLOOD_MASK)
#define FLOOD_SUFFIX 4                  /* characters, each of 94 (0x21..0x7E) */
#define FLOOD_UIDL_MAX 32
/* The bound the test asserts: probes per lookup, on average, over every
 * lookup and every rebuild of the index. A table at most half full does
 * about 1.5-2.5 on random keys; the old hash needed about N/2 on this
 * flood (and is stopped long before, see below). */
#define FLOOD_MAX_AVG_PROBES 4

#define FNV_PRIME 1099511628211ULL
#define OLD_BASIS 1469598103934665603ULL

/* The hash uidl_state.c used before it was keyed (kept here to build the
 * flood against it). */
static uint64_t
old_hash(const char *s)
{
	uint64_t h = OLD_BASIS;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= FNV_PRIME;
	}
	return h;
}

/* suffix_for[state]: 1 + the number of a 4-character suffix that takes a
 * state with these low bits to FLOOD_TARGET, or 0. */
static uint32_t *suffix_for;

static void
suffix_chars(uint32_t code, char out[FLOOD_SUFFIX])
{
	for (int i = 0; i < FLOOD_SUFFIX; i++) {
		out[i] = (char)(0x21 + code % 94);
		code /= 94;
	}
}

static void
build_suffix_table(void)
{
	uint64_t inv = FNV_PRIME;           /* Newton: inverse of the prime mod 2^64 */
	for (int i = 0; i < 6; i++)
		inv *= 2 - FNV_PRIME * inv;
	assert_true(inv * FNV_PRIME == 1);
	suffix_for = calloc((size_t)FLOOD_MASK + 1, sizeof(*suffix_for));
	assert_non_null(suffix_for);
	/* state before byte c, given the state after it: (after * inv) ^ c */
	for (uint32_t c3 = 0; c3 < 94; c3++)
		for (uint32_t c2 = 0; c2 < 94; c2++) {
			uint64_t x = (((FLOOD_TARGET * inv) ^ (0x21 + c3)) * inv) ^ (0x21 + c2);
			for (uint32_t c1 = 0; c1 < 94; c1++) {
				uint64_t y = (x * inv) ^ (0x21 + c1);
				for (uint32_t c0 = 0; c0 < 94; c0++) {
					uint64_t st = ((y * inv) ^ (0x21 + c0)) & FLOOD_MASK;
					if (suffix_for[st] == 0)
						suffix_for[st] = 1 + c0 + 94 * (c1 + 94 * (c2 + 94 * c3));
				}
			}
		}
}

/* UIDL number n of the flood: "f<n>-" (plus "x"s while its state has no
 * suffix in the table) and the suffix. */
static void
flood_uidl(uint32_t n, char out[FLOOD_UIDL_MAX])
{
	int len = snprintf(out, FLOOD_UIDL_MAX, "f%" PRIu32 "-", n);
	for (;;) {
		uint32_t code = suffix_for[old_hash(out) & FLOOD_MASK];
		if (code != 0) {
			suffix_chars(code - 1, out + len);
			out[len + FLOOD_SUFFIX] = '\0';
			return;
		}
		assert_true(len + 1 + FLOOD_SUFFIX < FLOOD_UIDL_MAX);
		out[len++] = 'x';
		out[len] = '\0';
	}
}

static void
test_colliding_uidls_stay_cheap(void **state)
{
	struct uidl_state st;
	struct uidl_state_stats stats;
	struct fetch_error err = { 0 };
	char u[FLOOD_UIDL_MAX];

	build_suffix_table();
	/* the flood is real: every UIDL in the same bucket of the old table */
	for (uint32_t n = 0; n < FLOOD_COUNT; n += 997) {
		flood_uidl(n, u);
		assert_int_equal(old_hash(u) & FLOOD_MASK, FLOOD_TARGET);
	}

	assert_true(uidl_state_load(&st, "/nonexistent/popbox-unit/flood.state", "flood", &err));
	for (uint32_t n = 0; n < FLOOD_COUNT; n++) {
		flood_uidl(n, u);
		uidl_state_add(&st, u, 1700000000, n);
		/* stop at once when the budget of the whole run is spent, so a
		 * quadratic table fails in seconds instead of running for hours */
		uidl_state_stats(&st, &stats);
		if (stats.probes > (uint64_t)FLOOD_MAX_AVG_PROBES * FLOOD_COUNT)
			fail_msg("%" PRIu64 " probes after %u of %u colliding UIDLs: the table "
			    "is being flooded", stats.probes, n + 1, FLOOD_COUNT);
	}
	assert_int_equal(st.count, FLOOD_COUNT);
	uidl_state_stats(&st, &stats);
	double avg = (double)stats.probes / (double)stats.lookups;
	print_message("%" PRIu64 " lookups, %" PRIu64 " probes, %.2f per lookup\n",
	    stats.lookups, stats.probes, avg);
	assert_true(avg < FLOOD_MAX_AVG_PROBES);

	/* and the table still answers right */
	for (uint32_t n = 0; n < FLOOD_COUNT; n += 4099) {
		flood_uidl(n, u);
		struct uidl_entry *e = uidl_state_find(&st, u);
		assert_non_null(e);
		assert_int_equal(e->size, n);
	}
	assert_null(uidl_state_find(&st, "not-in-the-flood"));
	uidl_state_free(&st);
	free(suffix_for);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_colliding_uidls_stay_cheap),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

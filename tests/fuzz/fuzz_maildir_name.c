/* Z3: Maildir file name -> UIDL (maildir_uidl_from_name, src/server/store.c).
 * File names come from whoever can write into the Maildir (MDAs, IMAP
 * servers, the user); the UIDL goes on the wire (RFC 1939 §7) and into
 * clients' state files, so it must always be 1..70 characters of 0x21..0x7E,
 * be the name itself when the name already is one, and be a pure function of
 * the name (stable across sessions and index rebuilds).
 * Input: a base name (bytes up to the first ':' as the store passes it). */
#include <string.h>

#include "fuzz_common.h"
#include "server/store.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *colon = memchr(data, ':', size);
	size_t len = colon ? (size_t)(colon - (const char *)data) : size;
	char *base = malloc(len ? len : 1);    /* exact size: no read past len */
	memcpy(base, data, len);

	char *uidl = maildir_uidl_from_name(base, len);
	size_t ulen = strlen(uidl);
	FUZZ_CHECK(ulen >= 1 && ulen <= 70, "UIDL length %zu", ulen);
	bool plain = len >= 1 && len <= 70;
	for (size_t i = 0; i < ulen; i++)
		FUZZ_CHECK(uidl[i] >= 0x21 && uidl[i] <= 0x7e, "byte 0x%02x in UIDL", (unsigned char)uidl[i]);
	for (size_t i = 0; i < len && plain; i++)
		plain = base[i] >= 0x21 && base[i] <= 0x7e;
	if (plain)
		FUZZ_CHECK(ulen == len && memcmp(uidl, base, len) == 0, "valid name not kept as UIDL");
	else
		FUZZ_CHECK(ulen == 41 && uidl[0] == 'H', "hashed UIDL has the wrong form");
	char *again = maildir_uidl_from_name(base, len);
	FUZZ_CHECK(strcmp(uidl, again) == 0, "UIDL not deterministic");
	free(again);
	free(uidl);
	free(base);
	return 0;
}

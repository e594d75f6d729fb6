/* Backend selection and the parts of the store contract that do not depend on
 * one backend's files. */
#include "server/store.h"
#include "common/log.h"
#include "common/util.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* RFC 1939 §7 (UIDL): 1 to 70 characters in the range 0x21 to 0x7E. */
/* Digest UIDL: "H" + this many hex chars of SHA-256 (160 bits: collisions
 * between names of one maildrop cannot happen in practice). */
#define UIDL_HASH_HEX_LEN 40

static const struct {
	const char *prefix;
	const struct store_backend *backend;
} store_schemes[] = {
	{ "maildir:", &store_maildir },
	{ "mbox:", &store_mbox },
};

const struct store_backend *
store_backend_for(const char *location, const char **path_r)
{
	for (size_t i = 0; i < N_ELEMENTS(store_schemes); i++) {
		size_t n = strlen(store_schemes[i].prefix);
		if (strncmp(location, store_schemes[i].prefix, n) == 0) {
			*path_r = location + n;
			return store_schemes[i].backend;
		}
	}
	return NULL;
}

static bool
store_name_is_uidl(const char *base, size_t len)
{
	if (len == 0 || len > UIDL_MAX_LEN)
		return false;
	for (size_t i = 0; i < len; i++) {
		/* 0x21..0x7E, one unsigned comparison */
		if ((unsigned char)base[i] - 0x21u > 0x7eu - 0x21u)
			return false;
	}
	return true;
}

/* "H" + UIDL_HASH_HEX_LEN hex chars of the SHA-256 of data. */
static char *
store_uidl_digest(const void *data, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char *uidl;

	if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 ||
	    mdlen * 2 < UIDL_HASH_HEX_LEN)
		fatalx("SHA-256 digest failed");
	uidl = xmalloc(1 + UIDL_HASH_HEX_LEN + 1);
	uidl[0] = 'H';
	for (size_t i = 0; i < UIDL_HASH_HEX_LEN / 2; i++) {
		uidl[1 + 2 * i] = hex[md[i] >> 4];
		uidl[2 + 2 * i] = hex[md[i] & 0x0f];
	}
	uidl[1 + UIDL_HASH_HEX_LEN] = '\0';
	return uidl;
}

char *
maildir_uidl_from_name(const char *base, size_t len)
{
	if (store_name_is_uidl(base, len))
		return xstrndup(base, len);

	/* A name a client could not take as a UIDL (too long, space, 8-bit)
	 * still must give a stable UIDL: derive it from the name only, never
	 * from the contents or a cache, so it survives any rebuild. */
	return store_uidl_digest(base, len);
}

char *
maildir_uidl_salted(const char *base, size_t len, unsigned salt)
{
	char *data = xmalloc(len + 16);
	int n = snprintf(data + len, 16, "/%u", salt);   /* '/' is in no file name */
	memcpy(data, base, len);
	char *uidl = store_uidl_digest(data, len + (size_t)n);
	free(data);
	return uidl;
}

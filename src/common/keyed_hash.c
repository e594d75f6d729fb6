/* Keyed hash (contract in keyed_hash.h). OpenSSL provides SipHash, so it is
 * not written here; a call costs about 0.2 us (the context copy included),
 * which the peer-keyed tables it serves do not notice. */
#include "common/keyed_hash.h"
#include "common/log.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <string.h>

#define KEYED_HASH_KEY_LEN 16       /* SipHash's key size */

static EVP_MAC_CTX *keyed_hash_base;    /* keyed once; every call copies it */
static pthread_once_t keyed_hash_once = PTHREAD_ONCE_INIT;

static void
keyed_hash_init(void)
{
	unsigned char key[KEYED_HASH_KEY_LEN];
	size_t size = sizeof(uint64_t);
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size),
		OSSL_PARAM_construct_end(),
	};
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "SIPHASH", NULL);

	if (mac == NULL || RAND_bytes(key, sizeof(key)) != 1 ||
	    (keyed_hash_base = EVP_MAC_CTX_new(mac)) == NULL ||
	    !EVP_MAC_init(keyed_hash_base, key, sizeof(key), params))
		fatalx("keyed hash: OpenSSL SipHash is not available");
	EVP_MAC_free(mac);          /* the context keeps its own reference */
	OPENSSL_cleanse(key, sizeof(key));
}

uint64_t
keyed_hash64(const void *data, size_t len)
{
	unsigned char out[sizeof(uint64_t)];
	size_t out_len = 0;
	uint64_t h;
	EVP_MAC_CTX *ctx;

	pthread_once(&keyed_hash_once, keyed_hash_init);
	if ((ctx = EVP_MAC_CTX_dup(keyed_hash_base)) == NULL ||
	    !EVP_MAC_update(ctx, data, len) ||
	    !EVP_MAC_final(ctx, out, &out_len, sizeof(out)) || out_len != sizeof(out))
		fatalx("keyed hash: SipHash failed");
	EVP_MAC_CTX_free(ctx);
	memcpy(&h, out, sizeof(h));
	return h;
}

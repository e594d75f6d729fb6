/* SCRAM secret parser (scram_secret_parse, src/common/scram.c): users-file
 * field "{SCRAM-SHA-256}iter,salt,StoredKey,ServerKey". Properties: success
 * only with a known mechanism, 1..SCRAM_ITERATIONS_MAX iterations, a
 * non-empty salt, keys as lowercase hex of exactly the hash length; failure
 * leaves the struct cleared and gives an error. scram_secret_verify is not
 * called: its cost is the iteration count.
 * Input: the stored secret as text. */
#include <string.h>

#include "fuzz_common.h"
#include "common/scram.h"

static void
check_hex(const char *s, size_t digits)
{
	FUZZ_CHECK(s != NULL && strlen(s) == digits, "key length");
	for (size_t i = 0; i < digits; i++)
		FUZZ_CHECK((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'), "hex digit");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = fuzz_strndup(data, size);
	struct scram_secret sec;
	memset(&sec, 0x5a, sizeof(sec));
	char *error = NULL;
	if (scram_secret_parse(text, &sec, &error) == 0) {
		FUZZ_CHECK(error == NULL, "success with error");
		size_t klen = scram_mech_key_len(sec.mech);
		FUZZ_CHECK(klen == 20 || klen == 32, "mech %s", sec.mech);
		FUZZ_CHECK(sec.iterations >= 1 && sec.iterations <= SCRAM_ITERATIONS_MAX, "iterations %u", sec.iterations);
		FUZZ_CHECK(sec.salt_b64 != NULL && sec.salt_b64[0] != '\0', "empty salt");
		check_hex(sec.stored_key_hex, 2 * klen);
		check_hex(sec.server_key_hex, 2 * klen);
		/* No key material in what is shown as the mechanism. */
		FUZZ_CHECK(strcmp(sec.mech, "SCRAM-SHA-256") == 0 || strcmp(sec.mech, "SCRAM-SHA-1") == 0, "mech");
		scram_secret_clear(&sec);
		FUZZ_CHECK(sec.salt_b64 == NULL && sec.stored_key_hex == NULL, "not cleared");
	} else {
		FUZZ_CHECK(error != NULL, "failure without error");
		FUZZ_CHECK(sec.salt_b64 == NULL && sec.stored_key_hex == NULL && sec.server_key_hex == NULL,
		    "failure left fields set");
		free(error);
		scram_secret_clear(&sec);
	}
	free(text);
	return 0;
}

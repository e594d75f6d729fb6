#include "common/scram.h"
#include "common/base64.h"
#include "common/util.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct scram_mech {
	const char *name;
	size_t key_len;
	const EVP_MD *(*md)(void);
};

static const struct scram_mech scram_mechs[] = {
	{ "SCRAM-SHA-256", 32, EVP_sha256 },
	{ "SCRAM-SHA-1", 20, EVP_sha1 },
};

static const struct scram_mech *
scram_mech_find(const char *name, size_t name_len)
{
	for (size_t i = 0; i < N_ELEMENTS(scram_mechs); i++) {
		if (strlen(scram_mechs[i].name) == name_len &&
		    strncasecmp(scram_mechs[i].name, name, name_len) == 0)
			return &scram_mechs[i];
	}
	return NULL;
}

size_t
scram_mech_key_len(const char *mech)
{
	const struct scram_mech *m = mech == NULL ? NULL : scram_mech_find(mech, strlen(mech));
	return m == NULL ? 0 : m->key_len;
}

static int
scram_derive(const struct scram_mech *m, const char *password,
	     const unsigned char *salt, size_t salt_len, unsigned iterations,
	     unsigned char *stored_key, unsigned char *server_key, char **error_r)
{
	unsigned char salted[SCRAM_KEY_MAX], client_key[SCRAM_KEY_MAX];
	unsigned int out_len;
	size_t pw_len = strlen(password);
	const EVP_MD *md = m->md();
	int ret = -1;

	if (iterations == 0 || iterations > SCRAM_ITERATIONS_MAX) {
		*error_r = xasprintf("%s iteration count %u out of range 1..%u",
				     m->name, iterations, SCRAM_ITERATIONS_MAX);
		return -1;
	}
	if (pw_len > SCRAM_PASSWORD_MAX) {
		*error_r = xasprintf("password longer than %d bytes", SCRAM_PASSWORD_MAX);
		return -1;
	}
	/* OpenSSL takes int lengths: the password and count are bounded
	 * above; the salt is checked here since scram_derive_keys takes any. */
	if (salt_len > INT_MAX ||
	    PKCS5_PBKDF2_HMAC(password, (int)pw_len, salt, (int)salt_len, (int)iterations,
			      md, (int)m->key_len, salted) != 1) {
		*error_r = xasprintf("%s: PBKDF2 failed", m->name);
		goto out;
	}
	if (HMAC(md, salted, (int)m->key_len, (const unsigned char *)"Client Key", 10,
		 client_key, &out_len) == NULL || out_len != m->key_len ||
	    HMAC(md, salted, (int)m->key_len, (const unsigned char *)"Server Key", 10,
		 server_key, &out_len) == NULL || out_len != m->key_len ||
	    EVP_Digest(client_key, m->key_len, stored_key, &out_len, md, NULL) != 1 ||
	    out_len != m->key_len) {
		*error_r = xasprintf("%s: HMAC failed", m->name);
		goto out;
	}
	ret = 0;
out:
	secure_wipe(salted, sizeof(salted));
	secure_wipe(client_key, sizeof(client_key));
	return ret;
}

int
scram_derive_keys(const char *mech, const char *password,
		  const unsigned char *salt, size_t salt_len, unsigned iterations,
		  unsigned char *stored_key, unsigned char *server_key, char **error_r)
{
	const struct scram_mech *m = mech == NULL ? NULL : scram_mech_find(mech, strlen(mech));
	if (m == NULL) {
		*error_r = xasprintf("unknown SCRAM mechanism (want SCRAM-SHA-256 or SCRAM-SHA-1)");
		return -1;
	}
	return scram_derive(m, password, salt, salt_len, iterations, stored_key, server_key,
			    error_r);
}

char *
scram_secret_make(const char *password, const char *mech, unsigned iterations,
		  const unsigned char *salt, size_t salt_len, char **error_r)
{
	unsigned char stored_key[SCRAM_KEY_MAX], server_key[SCRAM_KEY_MAX];
	const struct scram_mech *m = mech == NULL ? NULL : scram_mech_find(mech, strlen(mech));

	if (m == NULL) {
		*error_r = xasprintf("unknown SCRAM mechanism (want SCRAM-SHA-256 or SCRAM-SHA-1)");
		return NULL;
	}
	if (password[0] == '\0') {
		*error_r = xasprintf("empty password refused");
		return NULL;
	}
	if (salt_len == 0 || salt_len > SCRAM_SALT_MAX) {
		*error_r = xasprintf("salt length %zu out of range 1..%d", salt_len, SCRAM_SALT_MAX);
		return NULL;
	}
	if (iterations == 0)
		iterations = SCRAM_ITERATIONS_DEFAULT;
	if (scram_derive(m, password, salt, salt_len, iterations, stored_key, server_key,
			 error_r) < 0)
		return NULL;

	char *salt_b64 = base64_encode(salt, salt_len);
	char *stored_b64 = base64_encode(stored_key, m->key_len);
	char *server_b64 = base64_encode(server_key, m->key_len);
	char *result = xasprintf("{%s}%u,%s,%s,%s", m->name, iterations, salt_b64,
				 stored_b64, server_b64);
	free(salt_b64);
	free_secret(stored_b64);
	free_secret(server_b64);
	secure_wipe(stored_key, sizeof(stored_key));
	secure_wipe(server_key, sizeof(server_key));
	return result;
}

char *
scram_secret_generate(const char *password, const char *mech, unsigned iterations)
{
	unsigned char salt[SCRAM_SALT_SIZE];
	char *error = NULL;

	if (iterations != 0 &&
	    (iterations < SCRAM_ITERATIONS_MIN_GENERATE || iterations > SCRAM_ITERATIONS_MAX))
		return NULL;
	if (RAND_bytes(salt, sizeof(salt)) != 1)
		return NULL;
	char *result = scram_secret_make(password, mech, iterations, salt, sizeof(salt), &error);
	free(error);
	return result;
}

static char *
hex_lower(const unsigned char *p, size_t len)
{
	static const char digits[] = "0123456789abcdef";
	char *out = xmalloc(len * 2 + 1);
	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 15];
	}
	out[len * 2] = '\0';
	return out;
}

/* Decode a base64 key field that must be exactly key_len bytes, as hex. */
static char *
key_field_to_hex(const char *field, size_t field_len, size_t key_len)
{
	unsigned char *raw;
	size_t raw_len;
	char *hex = NULL;

	if (!base64_decode(field, field_len, &raw, &raw_len))
		return NULL;
	if (raw_len == key_len)
		hex = hex_lower(raw, raw_len);
	secure_wipe(raw, raw_len);
	free(raw);
	return hex;
}

int
scram_secret_parse(const char *stored, struct scram_secret *out, char **error_r)
{
	const char *fields[4], *end;
	size_t lens[4], nfields = 0;
	const struct scram_mech *m;
	char *iter_str;
	uint32_t iterations;
	unsigned char *salt;
	size_t salt_len;

	memset(out, 0, sizeof(*out));
	if (stored == NULL || stored[0] != '{' || (end = strchr(stored, '}')) == NULL) {
		*error_r = xasprintf("SCRAM secret must start with {SCRAM-SHA-256} or {SCRAM-SHA-1}");
		return -1;
	}
	m = scram_mech_find(stored + 1, (size_t)(end - stored - 1));
	if (m == NULL) {
		*error_r = xasprintf("not a SCRAM secret (scheme must be SCRAM-SHA-256 or SCRAM-SHA-1)");
		return -1;
	}

	/* Split by hand rather than strtok: empty fields must count as fields
	 * so "4096,,x,y" is an error, not three fields. */
	const char *p = end + 1;
	for (;;) {
		const char *comma = strchr(p, ',');
		size_t len = comma == NULL ? strlen(p) : (size_t)(comma - p);
		if (nfields == N_ELEMENTS(fields)) {
			nfields++;
			break;
		}
		fields[nfields] = p;
		lens[nfields++] = len;
		if (comma == NULL)
			break;
		p = comma + 1;
	}
	if (nfields != 4) {
		*error_r = xasprintf("%s secret needs 4 comma-separated fields "
				     "(iterations,salt,StoredKey,ServerKey), found %s%zu",
				     m->name, nfields > 4 ? "more than " : "",
				     nfields > 4 ? (size_t)4 : nfields);
		return -1;
	}

	iter_str = xstrndup(fields[0], lens[0]);
	bool iter_ok = parse_u32(iter_str, SCRAM_ITERATIONS_MAX, &iterations) && iterations > 0;
	free(iter_str);
	if (!iter_ok) {
		*error_r = xasprintf("%s iteration count must be a number in 1..%u",
				     m->name, SCRAM_ITERATIONS_MAX);
		return -1;
	}

	if (lens[1] == 0 || !base64_decode(fields[1], lens[1], &salt, &salt_len)) {
		*error_r = xasprintf("%s salt is not valid base64", m->name);
		return -1;
	}
	free(salt);
	if (salt_len == 0 || salt_len > SCRAM_SALT_MAX) {
		*error_r = xasprintf("%s salt length %zu out of range 1..%d",
				     m->name, salt_len, SCRAM_SALT_MAX);
		return -1;
	}

	out->stored_key_hex = key_field_to_hex(fields[2], lens[2], m->key_len);
	if (out->stored_key_hex == NULL) {
		*error_r = xasprintf("%s StoredKey is not base64 of %zu bytes", m->name, m->key_len);
		scram_secret_clear(out);
		return -1;
	}
	out->server_key_hex = key_field_to_hex(fields[3], lens[3], m->key_len);
	if (out->server_key_hex == NULL) {
		*error_r = xasprintf("%s ServerKey is not base64 of %zu bytes", m->name, m->key_len);
		scram_secret_clear(out);
		return -1;
	}
	/* Cannot truncate: the longest name is 13 bytes. */
	memcpy(out->mech, m->name, strlen(m->name) + 1);
	out->iterations = iterations;
	out->salt_b64 = xstrndup(fields[1], lens[1]);
	return 0;
}

void
scram_secret_clear(struct scram_secret *secret)
{
	if (secret == NULL)
		return;
	free(secret->salt_b64);
	free_secret(secret->stored_key_hex);
	free_secret(secret->server_key_hex);
	memset(secret, 0, sizeof(*secret));
}

bool
scram_secret_verify(const struct scram_secret *secret, const char *password)
{
	unsigned char stored_key[SCRAM_KEY_MAX], server_key[SCRAM_KEY_MAX];
	unsigned char *salt = NULL;
	size_t salt_len;
	char *error = NULL, *hex = NULL;
	bool ok = false;
	const struct scram_mech *m = scram_mech_find(secret->mech, strlen(secret->mech));

	if (m == NULL || secret->salt_b64 == NULL || secret->stored_key_hex == NULL ||
	    password[0] == '\0' ||
	    !base64_decode(secret->salt_b64, strlen(secret->salt_b64), &salt, &salt_len))
		return false;
	if (scram_derive(m, password, salt, salt_len, secret->iterations, stored_key,
			 server_key, &error) == 0) {
		hex = hex_lower(stored_key, m->key_len);
		ok = strlen(secret->stored_key_hex) == 2 * m->key_len &&
		     const_time_eq(hex, secret->stored_key_hex, 2 * m->key_len);
		free_secret(hex);
	}
	free(error);
	free(salt);
	secure_wipe(stored_key, sizeof(stored_key));
	secure_wipe(server_key, sizeof(server_key));
	return ok;
}

/* SCRAM secrets (src/common/scram.c): Dovecot format, derivation against
 * doveadm output and the RFC 5802 / RFC 7677 exchanges, strict parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/base64.h"
#include "common/scram.h"
#include "common/util.h"

/* Output of `doveadm pw -s SCRAM-SHA-256 -p secret` and
 * `doveadm pw -s SCRAM-SHA-1 -p secret` (Dovecot 2.3, this machine). */
#define DOVEADM_SHA256 "{SCRAM-SHA-256}4096,PohhG6Vy+QAUuJSqTU3OUg==," \
	"7BkHBVEoKshDzf4/exDqgmc547b2OiOYW016LTmm8MM=," \
	"PN8p/v1yNkAgFkGjuFFDdl+fZ9ACGGUnMNIRzpM/yyg="
#define DOVEADM_SHA1 "{SCRAM-SHA-1}4096,mw2azB+tKEdV9VwseioQZQ==," \
	"7v4mHl+v8+5xhhWKo/He4MW9fDQ=,7MUmLueW2v3clfUZEQQ+Hgmx6iA="

static char *
hex_of(const unsigned char *p, size_t len)
{
	char *out = xmalloc(len * 2 + 1);
	for (size_t i = 0; i < len; i++)
		snprintf(out + 2 * i, 3, "%02x", p[i]);
	return out;
}

static unsigned char *
b64_decode_or_fail(const char *s, size_t *len)
{
	unsigned char *out;
	assert_true(base64_decode(s, strlen(s), &out, len));
	return out;
}

static void
assert_parse_fails(const char *stored, const char *error_part)
{
	struct scram_secret s;
	char *error = NULL;

	memset(&s, 0x55, sizeof(s));
	if (scram_secret_parse(stored, &s, &error) != -1)
		fail_msg("parse accepted: %s", stored);
	assert_non_null(error);
	if (strstr(error, error_part) == NULL)
		fail_msg("error for '%s' is '%s', wanted '%s'", stored, error, error_part);
	/* Output is left cleared: clear is safe and frees nothing stale. */
	assert_null(s.salt_b64);
	assert_null(s.stored_key_hex);
	assert_null(s.server_key_hex);
	scram_secret_clear(&s);
	free(error);
}

static void
test_mech_key_len(void **state)
{
	assert_int_equal(scram_mech_key_len("SCRAM-SHA-256"), 32);
	assert_int_equal(scram_mech_key_len("scram-sha-256"), 32);
	assert_int_equal(scram_mech_key_len("SCRAM-SHA-1"), 20);
	assert_int_equal(scram_mech_key_len("SCRAM-SHA-512"), 0);
	assert_int_equal(scram_mech_key_len("SCRAM-SHA-1-PLUS"), 0);
	assert_int_equal(scram_mech_key_len(""), 0);
	assert_int_equal(scram_mech_key_len(NULL), 0);
}

static void
round_trip(const char *mech, unsigned iterations, unsigned want_iterations)
{
	struct scram_secret s;
	char *error = NULL;
	char *stored = scram_secret_generate("pencil", mech, iterations);
	size_t key_len = scram_mech_key_len(mech);
	char prefix[40];

	assert_non_null(stored);
	snprintf(prefix, sizeof(prefix), "{%s}%u,", mech, want_iterations);
	assert_memory_equal(stored, prefix, strlen(prefix));
	assert_int_equal(scram_secret_parse(stored, &s, &error), 0);
	assert_null(error);
	assert_string_equal(s.mech, mech);
	assert_int_equal(s.iterations, want_iterations);
	assert_int_equal(strlen(s.salt_b64), BASE64_ENCODED_LEN(SCRAM_SALT_SIZE));
	assert_int_equal(strlen(s.stored_key_hex), 2 * key_len);
	assert_int_equal(strlen(s.server_key_hex), 2 * key_len);
	assert_int_equal(strspn(s.stored_key_hex, "0123456789abcdef"), 2 * key_len);
	assert_int_equal(strspn(s.server_key_hex, "0123456789abcdef"), 2 * key_len);
	assert_true(scram_secret_verify(&s, "pencil"));
	assert_false(scram_secret_verify(&s, "pencil2"));
	assert_false(scram_secret_verify(&s, ""));
	scram_secret_clear(&s);
	scram_secret_clear(&s); /* idempotent */

	/* A second secret has a fresh salt. */
	char *again = scram_secret_generate("pencil", mech, iterations);
	assert_non_null(again);
	assert_string_not_equal(stored, again);
	free(again);
	free(stored);
}

static void
test_generate_parse_round_trip(void **state)
{
	round_trip("SCRAM-SHA-256", 0, 4096);
	round_trip("SCRAM-SHA-1", 0, 4096);
	round_trip("SCRAM-SHA-256", 5000, 5000);
}

static void
test_generate_rejects(void **state)
{
	assert_null(scram_secret_generate("pencil", "SCRAM-SHA-512", 0));
	assert_null(scram_secret_generate("pencil", "PLAIN", 0));
	assert_null(scram_secret_generate("", "SCRAM-SHA-256", 0));
	/* Dovecot refuses fewer than 4096 when verifying: never write them. */
	assert_null(scram_secret_generate("pencil", "SCRAM-SHA-256", 4095));
	assert_null(scram_secret_generate("pencil", "SCRAM-SHA-256", SCRAM_ITERATIONS_MAX + 1));

	char *long_pw = xmalloc(SCRAM_PASSWORD_MAX + 2);
	memset(long_pw, 'a', SCRAM_PASSWORD_MAX + 1);
	long_pw[SCRAM_PASSWORD_MAX + 1] = '\0';
	assert_null(scram_secret_generate(long_pw, "SCRAM-SHA-256", 0));
	long_pw[SCRAM_PASSWORD_MAX] = '\0';
	char *ok = scram_secret_generate(long_pw, "SCRAM-SHA-256", 0);
	assert_non_null(ok);
	free(ok);
	free(long_pw);

	char *error = NULL;
	const unsigned char salt[1] = { 1 };
	assert_null(scram_secret_make("pencil", "SCRAM-SHA-256", 4096, salt, 0, &error));
	assert_non_null(error);
	free(error);
	error = NULL;
	assert_null(scram_secret_make("pencil", "SCRAM-SHA-256", SCRAM_ITERATIONS_MAX + 1,
				      salt, sizeof(salt), &error));
	assert_non_null(error);
	free(error);
}

/* Our derivation must equal Dovecot's: re-derive the doveadm fixture from
 * "secret" with its salt and count, both key by key and as a whole line. */
static void
check_doveadm_fixture(const char *fixture, const char *mech)
{
	struct scram_secret s;
	char *error = NULL;
	unsigned char stored_key[SCRAM_KEY_MAX], server_key[SCRAM_KEY_MAX];
	size_t salt_len, key_len = scram_mech_key_len(mech);

	assert_int_equal(scram_secret_parse(fixture, &s, &error), 0);
	assert_string_equal(s.mech, mech);
	assert_int_equal(s.iterations, 4096);
	unsigned char *salt = b64_decode_or_fail(s.salt_b64, &salt_len);
	assert_int_equal(salt_len, 16);

	assert_int_equal(scram_derive_keys(mech, "secret", salt, salt_len, s.iterations,
					   stored_key, server_key, &error), 0);
	char *stored_hex = hex_of(stored_key, key_len), *server_hex = hex_of(server_key, key_len);
	assert_string_equal(stored_hex, s.stored_key_hex);
	assert_string_equal(server_hex, s.server_key_hex);
	free(stored_hex);
	free(server_hex);

	char *made = scram_secret_make("secret", mech, 4096, salt, salt_len, &error);
	assert_non_null(made);
	assert_string_equal(made, fixture);
	free(made);

	assert_true(scram_secret_verify(&s, "secret"));
	assert_false(scram_secret_verify(&s, "Secret"));
	free(salt);
	scram_secret_clear(&s);
}

static void
test_doveadm_fixture_sha256(void **state)
{
	check_doveadm_fixture(DOVEADM_SHA256, "SCRAM-SHA-256");
}

static void
test_doveadm_fixture_sha1(void **state)
{
	check_doveadm_fixture(DOVEADM_SHA1, "SCRAM-SHA-1");
}

/* Replays the RFC exchange: from the derived StoredKey/ServerKey compute
 * ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage) and
 * ServerSignature = HMAC(ServerKey, AuthMessage) and compare with the
 * RFC's p= and v= values. ClientKey comes from a separate PBKDF2 (it is not
 * part of what a server stores). */
static void
check_rfc_exchange(const char *mech, const EVP_MD *md, const char *salt_b64,
		   const char *client_first_bare, const char *server_first,
		   const char *client_final_without_proof, const char *proof_b64,
		   const char *signature_b64)
{
	unsigned char stored_key[SCRAM_KEY_MAX], server_key[SCRAM_KEY_MAX];
	unsigned char salted[SCRAM_KEY_MAX], client_key[SCRAM_KEY_MAX];
	unsigned char client_sig[SCRAM_KEY_MAX], server_sig[SCRAM_KEY_MAX];
	unsigned char check[SCRAM_KEY_MAX];
	unsigned int n;
	size_t salt_len, proof_len, sig_len, key_len = scram_mech_key_len(mech);
	char *error = NULL;

	unsigned char *salt = b64_decode_or_fail(salt_b64, &salt_len);
	assert_int_equal(scram_derive_keys(mech, "pencil", salt, salt_len, 4096, stored_key,
					   server_key, &error), 0);

	assert_int_equal(PKCS5_PBKDF2_HMAC("pencil", 6, salt, (int)salt_len, 4096, md,
					   (int)key_len, salted), 1);
	assert_non_null(HMAC(md, salted, (int)key_len, (const unsigned char *)"Client Key", 10,
			     client_key, &n));
	assert_int_equal(EVP_Digest(client_key, key_len, check, &n, md, NULL), 1);
	assert_memory_equal(check, stored_key, key_len);

	char *auth_message = xasprintf("%s,%s,%s", client_first_bare, server_first,
				       client_final_without_proof);
	assert_non_null(HMAC(md, stored_key, (int)key_len, (unsigned char *)auth_message,
			     strlen(auth_message), client_sig, &n));
	assert_non_null(HMAC(md, server_key, (int)key_len, (unsigned char *)auth_message,
			     strlen(auth_message), server_sig, &n));
	for (size_t i = 0; i < key_len; i++)
		client_sig[i] ^= client_key[i];

	unsigned char *proof = b64_decode_or_fail(proof_b64, &proof_len);
	unsigned char *sig = b64_decode_or_fail(signature_b64, &sig_len);
	assert_int_equal(proof_len, key_len);
	assert_int_equal(sig_len, key_len);
	assert_memory_equal(client_sig, proof, key_len);
	assert_memory_equal(server_sig, sig, key_len);

	/* And the stored secret built from the vector parses and verifies. */
	char *made = scram_secret_make("pencil", mech, 4096, salt, salt_len, &error);
	struct scram_secret s;
	assert_non_null(made);
	assert_int_equal(scram_secret_parse(made, &s, &error), 0);
	assert_string_equal(s.salt_b64, salt_b64);
	assert_true(scram_secret_verify(&s, "pencil"));
	scram_secret_clear(&s);

	free(made);
	free(proof);
	free(sig);
	free(auth_message);
	free(salt);
}

static void
test_rfc5802_sha1_vector(void **state)
{
	/* RFC 5802 §5 */
	check_rfc_exchange("SCRAM-SHA-1", EVP_sha1(), "QSXCR+Q6sek8bf92",
	    "n=user,r=fyko+d2lbbFgONRv9qkxdawL",
	    "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
	    "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j",
	    "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
	    "rmF9pqV8S7suAoZWja4dJRkFsKQ=");
}

static void
test_rfc7677_sha256_vector(void **state)
{
	/* RFC 7677 §3 */
	check_rfc_exchange("SCRAM-SHA-256", EVP_sha256(), "W22ZaJ0SNY7soEsUEjb6gQ==",
	    "n=user,r=rOprNGfwEbeRWgbNEkqO",
	    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
	    "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
	    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
	    "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
	    "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

static void
test_parse_accepts(void **state)
{
	struct scram_secret s;
	char *error = NULL;

	/* Scheme names are case-insensitive (Dovecot); mech comes out canonical. */
	assert_int_equal(scram_secret_parse("{scram-sha-1}4096,mw2azB+tKEdV9VwseioQZQ==,"
	    "7v4mHl+v8+5xhhWKo/He4MW9fDQ=,7MUmLueW2v3clfUZEQQ+Hgmx6iA=", &s, &error), 0);
	assert_string_equal(s.mech, "SCRAM-SHA-1");
	assert_string_equal(s.salt_b64, "mw2azB+tKEdV9VwseioQZQ==");
	assert_string_equal(s.stored_key_hex, "eefe261e5faff3ee7186158aa3f1dee0c5bd7c34");
	scram_secret_clear(&s);

	/* Bounds of the count. */
	assert_int_equal(scram_secret_parse("{SCRAM-SHA-1}1,mw2azB+tKEdV9VwseioQZQ==,"
	    "7v4mHl+v8+5xhhWKo/He4MW9fDQ=,7MUmLueW2v3clfUZEQQ+Hgmx6iA=", &s, &error), 0);
	assert_int_equal(s.iterations, 1);
	scram_secret_clear(&s);
	assert_int_equal(scram_secret_parse("{SCRAM-SHA-1}10000000,mw2azB+tKEdV9VwseioQZQ==,"
	    "7v4mHl+v8+5xhhWKo/He4MW9fDQ=,7MUmLueW2v3clfUZEQQ+Hgmx6iA=", &s, &error), 0);
	assert_int_equal(s.iterations, 10000000);
	scram_secret_clear(&s);
}

#define K1 "7v4mHl+v8+5xhhWKo/He4MW9fDQ="         /* 20 bytes */
#define K256 "7BkHBVEoKshDzf4/exDqgmc547b2OiOYW016LTmm8MM=" /* 32 bytes */
#define SALT "mw2azB+tKEdV9VwseioQZQ=="

static void
test_parse_rejects(void **state)
{
	static const struct {
		const char *stored, *error_part;
	} bad[] = {
		{ "", "must start with" },
		{ "4096," SALT "," K1 "," K1, "must start with" },
		{ "{SCRAM-SHA-1", "must start with" },
		{ "{SCRAM-SHA-512}4096," SALT "," K1 "," K1, "not a SCRAM secret" },
		{ "{PLAIN}secret", "not a SCRAM secret" },
		{ "{SCRAM-SHA-1-PLUS}4096," SALT "," K1 "," K1, "not a SCRAM secret" },
		/* field count */
		{ "{SCRAM-SHA-1}", "4 comma-separated fields" },
		{ "{SCRAM-SHA-1}4096," SALT "," K1, "found 3" },
		{ "{SCRAM-SHA-1}4096," SALT "," K1 "," K1 ",", "more than 4" },
		{ "{SCRAM-SHA-1}4096," SALT "," K1 "," K1 ",extra", "more than 4" },
		/* iterations */
		{ "{SCRAM-SHA-1}0," SALT "," K1 "," K1, "iteration count" },
		{ "{SCRAM-SHA-1}10000001," SALT "," K1 "," K1, "iteration count" },
		{ "{SCRAM-SHA-1}4294967297," SALT "," K1 "," K1, "iteration count" },
		{ "{SCRAM-SHA-1}-1," SALT "," K1 "," K1, "iteration count" },
		{ "{SCRAM-SHA-1} 4096," SALT "," K1 "," K1, "iteration count" },
		{ "{SCRAM-SHA-1}4096x," SALT "," K1 "," K1, "iteration count" },
		{ "{SCRAM-SHA-1}," SALT "," K1 "," K1, "iteration count" },
		/* salt */
		{ "{SCRAM-SHA-1}4096,," K1 "," K1, "salt" },
		{ "{SCRAM-SHA-1}4096,mw2azB+tKEdV9VwseioQZQ=," K1 "," K1, "salt" },
		{ "{SCRAM-SHA-1}4096,mw2azB+tKEdV9Vwse ioQZQ==," K1 "," K1, "salt" },
		{ "{SCRAM-SHA-1}4096,mw2azB+t*EdV9VwseioQZQ==," K1 "," K1, "salt" },
		/* keys: bad base64, wrong length for the hash, empty */
		{ "{SCRAM-SHA-1}4096," SALT ",7v4mHl+v8+5xhhWKo/He4MW9fDQ," K1, "StoredKey" },
		{ "{SCRAM-SHA-1}4096," SALT "," K256 "," K1, "StoredKey is not base64 of 20" },
		{ "{SCRAM-SHA-1}4096," SALT "," K1 "," K256, "ServerKey is not base64 of 20" },
		{ "{SCRAM-SHA-256}4096," SALT "," K1 "," K256, "StoredKey is not base64 of 32" },
		{ "{SCRAM-SHA-256}4096," SALT "," K256 "," K1, "ServerKey is not base64 of 32" },
		{ "{SCRAM-SHA-1}4096," SALT ",," K1, "StoredKey" },
		{ "{SCRAM-SHA-1}4096," SALT "," K1 ",", "ServerKey" },
		{ "{SCRAM-SHA-1}4096," SALT "," K1 "," K1 "\n", "ServerKey" },
	};
	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		assert_parse_fails(bad[i].stored, bad[i].error_part);
}

static void
test_parse_error_has_no_keys(void **state)
{
	struct scram_secret s;
	char *error = NULL;

	assert_int_equal(scram_secret_parse("{SCRAM-SHA-1}4096," SALT "," K1 "," K256,
					    &s, &error), -1);
	assert_null(strstr(error, "7v4m"));
	assert_null(strstr(error, "7BkH"));
	free(error);
}

static void
test_derive_rejects(void **state)
{
	unsigned char a[SCRAM_KEY_MAX], b[SCRAM_KEY_MAX];
	char *error = NULL;

	assert_int_equal(scram_derive_keys("SCRAM-SHA-1", "x", (const unsigned char *)"s", 1, 0,
					   a, b, &error), -1);
	assert_non_null(error);
	free(error);
	error = NULL;
	assert_int_equal(scram_derive_keys("MD5", "x", (const unsigned char *)"s", 1, 1,
					   a, b, &error), -1);
	assert_non_null(error);
	free(error);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mech_key_len),
		cmocka_unit_test(test_generate_parse_round_trip),
		cmocka_unit_test(test_generate_rejects),
		cmocka_unit_test(test_doveadm_fixture_sha256),
		cmocka_unit_test(test_doveadm_fixture_sha1),
		cmocka_unit_test(test_rfc5802_sha1_vector),
		cmocka_unit_test(test_rfc7677_sha256_vector),
		cmocka_unit_test(test_parse_accepts),
		cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_parse_error_has_no_keys),
		cmocka_unit_test(test_derive_rejects),
	};
	return cmocka_run_group_tests_name("scram", tests, NULL, NULL);
}

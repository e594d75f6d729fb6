/* SCRAM secrets (RFC 5802, RFC 7677) in Dovecot's users-file format:
 *
 *   {SCRAM-SHA-256}<iterations>,<salt base64>,<StoredKey base64>,<ServerKey base64>
 *   {SCRAM-SHA-1}  (same fields, SHA-1 sized keys)
 *
 * as written by `doveadm pw -s SCRAM-SHA-256` and read by Dovecot's
 * password-scheme-scram.c. StoredKey = H(HMAC(SaltedPassword, "Client Key")),
 * ServerKey = HMAC(SaltedPassword, "Server Key"), SaltedPassword =
 * PBKDF2-HMAC-H(password, salt, iterations). Like Dovecot, the password is
 * used as given (no SASLprep): identical for ASCII passwords.
 *
 * The server hands a parsed secret to GNU SASL: GSASL_SCRAM_ITER (decimal),
 * GSASL_SCRAM_SALT (base64, as stored), GSASL_SCRAM_STOREDKEY and
 * GSASL_SCRAM_SERVERKEY (lowercase hex), see gsasl.h. */
#ifndef POPBOX_SCRAM_H
#define POPBOX_SCRAM_H

#include <stdbool.h>
#include <stddef.h>

/* RFC 5802 §5.1 says the count SHOULD be at least 4096; Dovecot uses 4096
 * by default and refuses fewer when verifying, so we never generate fewer. */
#define SCRAM_ITERATIONS_DEFAULT 4096u
#define SCRAM_ITERATIONS_MIN_GENERATE 4096u
/* Upper bound for parsing and generating: each authentication costs this
 * many HMACs on the auth process; 10 million is already seconds of CPU, and
 * a typo (or a hostile users file) must not stall logins for minutes. */
#define SCRAM_ITERATIONS_MAX 10000000u
/* Salt size of generated secrets: 16 bytes, as Dovecot writes. */
#define SCRAM_SALT_SIZE 16
/* Parsed salts: RFC 5802 sets no limit; 1 KiB of salt is far beyond any
 * real generator and keeps a corrupt line from becoming a huge s= field. */
#define SCRAM_SALT_MAX 1024
/* Same limit as password_verify (passwd.h): longer passwords are refused. */
#define SCRAM_PASSWORD_MAX 4096
/* Largest key (SHA-256 digest). */
#define SCRAM_KEY_MAX 32

struct scram_secret {
	char mech[32];          /* "SCRAM-SHA-256" or "SCRAM-SHA-1" (upper case) */
	unsigned iterations;    /* 1 .. SCRAM_ITERATIONS_MAX */
	char *salt_b64;         /* base64 as stored (valid, non-empty) */
	char *stored_key_hex;   /* lowercase hex, 2 * key length digits */
	char *server_key_hex;   /* lowercase hex */
};

/* Key length in bytes for "SCRAM-SHA-256" (32) or "SCRAM-SHA-1" (20),
 * case-insensitive; 0 for anything else. */
size_t scram_mech_key_len(const char *mech);

/* Derive StoredKey and ServerKey (each scram_mech_key_len(mech) bytes,
 * written to buffers of at least SCRAM_KEY_MAX) from password, salt and
 * iterations (>= 1). Returns 0, or -1 with *error_r (malloc'd, caller frees)
 * for an unknown mech, a zero count, an over-long password or an OpenSSL
 * failure. Intermediate secrets are wiped. */
int scram_derive_keys(const char *mech, const char *password,
		      const unsigned char *salt, size_t salt_len, unsigned iterations,
		      unsigned char *stored_key, unsigned char *server_key,
		      char **error_r);

/* A new "{SCRAM-...}" secret for password with a random SCRAM_SALT_SIZE salt
 * (RAND_bytes). iterations 0 means SCRAM_ITERATIONS_DEFAULT; otherwise it
 * must be within SCRAM_ITERATIONS_MIN_GENERATE .. SCRAM_ITERATIONS_MAX.
 * Returns a malloc'd string (caller frees; not secret, but free_secret is
 * fine), or NULL for an unknown mech, a bad count, an empty or over-long
 * password, or a failing RNG. */
char *scram_secret_generate(const char *password, const char *mech, unsigned iterations);

/* Same, with the salt given (deterministic: tests, known vectors) and
 * *error_r (malloc'd, caller frees) on failure. iterations must be
 * 1 .. SCRAM_ITERATIONS_MAX here (0 = default); salt_len 1 .. SCRAM_SALT_MAX;
 * the password non-empty and at most SCRAM_PASSWORD_MAX bytes. */
char *scram_secret_make(const char *password, const char *mech, unsigned iterations,
			const unsigned char *salt, size_t salt_len, char **error_r);

/* Parse a stored "{SCRAM-SHA-256}..." / "{SCRAM-SHA-1}..." secret (scheme
 * name case-insensitive). Strict: exactly four comma-separated fields,
 * iterations decimal 1 .. SCRAM_ITERATIONS_MAX, salt strict base64 decoding
 * to 1 .. SCRAM_SALT_MAX bytes, both keys strict base64 of exactly the hash
 * length. On success returns 0 and fills *out (release with
 * scram_secret_clear). On failure returns -1, leaves *out cleared and sets
 * *error_r to a malloc'd message (caller frees) that never contains the
 * keys. */
int scram_secret_parse(const char *stored, struct scram_secret *out, char **error_r);

/* Wipe and free the strings of a parsed secret and zero it; safe on a
 * zeroed or already cleared struct. */
void scram_secret_clear(struct scram_secret *secret);

/* Whether password matches a parsed secret (recomputes StoredKey; constant
 * time compare): lets USER/PASS and AUTH PLAIN work for users that only
 * have a SCRAM secret, as Dovecot does. Costs `iterations` HMACs. */
bool scram_secret_verify(const struct scram_secret *secret, const char *password);

#endif

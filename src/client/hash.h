/* popbox hash: make the password field of a users-file line (Dovecot
 * passwd-file format, see passwd.h) from a password read without echo.
 *
 *   popbox hash [--scheme S] [--rounds N]
 *
 * Schemes (case-insensitive): SHA512-CRYPT (default), SHA256-CRYPT,
 * BLF-CRYPT, SCRAM-SHA-256, SCRAM-SHA-1, PLAIN. The output is accepted by
 * popboxd and by `doveadm pw -t`. */
#ifndef POPBOX_HASH_H
#define POPBOX_HASH_H

#define HASH_SCHEME_DEFAULT "SHA512-CRYPT"
/* Same limit as password_verify (passwd.h): a longer password could be
 * hashed but never log in. */
#define HASH_PASSWORD_MAX 4096
/* crypt(3) (libxcrypt) refuses passphrases of CRYPT_MAX_PASSPHRASE_SIZE
 * (512) bytes or more, so such a hash could never be made or verified. */
#define HASH_CRYPT_PASSWORD_MAX 511
/* bcrypt uses only the first 72 bytes: refuse longer passwords rather than
 * silently ignore their tail. */
#define HASH_BLF_PASSWORD_MAX 72
/* bcrypt cost when --rounds is not given. libxcrypt's own default is 5
 * (32 rounds, far too cheap today); 10 is the usual default of OpenBSD and
 * PHP and costs roughly 50-100 ms per login. */
#define HASH_BLF_COST_DEFAULT 10u
/* Accepted --rounds ranges, refused outside rather than silently clamped
 * (libxcrypt would clamp): SHA-crypt rounds= per the SHA-crypt spec, bcrypt
 * cost is log2 rounds, SCRAM iterations as in scram.h. */
#define HASH_SHA_CRYPT_ROUNDS_MIN 1000u
#define HASH_SHA_CRYPT_ROUNDS_MAX 999999999u
#define HASH_BLF_COST_MIN 4u
#define HASH_BLF_COST_MAX 31u

/* Whether scheme is known and rounds (0 = the scheme's default) valid for
 * it; PLAIN takes no rounds. Returns 0, or -1 with *error_r (malloc'd,
 * caller frees). Lets the CLI refuse bad options before asking for a
 * password. */
int hash_check(const char *scheme, unsigned rounds, char **error_r);

/* Whether hash_make would refuse password under scheme (empty, longer
 * than the scheme allows: HASH_BLF_PASSWORD_MAX for BLF-CRYPT,
 * HASH_CRYPT_PASSWORD_MAX for the SHA*-CRYPTs, HASH_PASSWORD_MAX for the
 * others; containing CR or LF; containing ':' for PLAIN): returns
 * 0, or -1 with *error_r (malloc'd, never contains the password). Also -1
 * for an unknown scheme. */
int hash_password_check(const char *scheme, const char *password, char **error_r);

/* The secret for password under scheme with rounds (0 = default): e.g.
 * "{SHA512-CRYPT}$6$...", "{BLF-CRYPT}$2y$10$...", "{SCRAM-SHA-256}4096,...",
 * "{PLAIN}password". The scheme prefix is written in upper case. Returns a
 * malloc'd string (caller frees, preferably with free_secret), or NULL with
 * *error_r (malloc'd; never contains the password) when hash_check or
 * hash_password_check fails, or the crypt/RNG library fails. */
char *hash_make(const char *scheme, const char *password, unsigned rounds, char **error_r);

/* Entry point of `popbox hash`; argv[0] is "hash". Reads the password from
 * /dev/tty without echo, twice (when stdin is a terminal), else the first
 * line of stdin (LF or CRLF stripped); prints one line to stdout. Returns
 * 0, EX_USAGE (64) for bad options, 1 for mismatched, empty or over-long
 * passwords, EX_NOINPUT/EX_IOERR/EX_SOFTWARE for I/O or library failures. */
int hash_main(int argc, char **argv);

#endif

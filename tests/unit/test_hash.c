/* popbox hash (src/client/hash.c): secrets per scheme, verified with
 * crypt(3), our SCRAM parser and, when installed, `doveadm pw -t`; the
 * command line with the password on stdin. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <crypt.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/hash.h"
#include "common/scram.h"
#include "common/util.h"

static const char *const all_schemes[] = {
	"SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN",
};

static char *
make_or_fail(const char *scheme, const char *password, unsigned rounds)
{
	char *error = NULL;
	char *secret = hash_make(scheme, password, rounds, &error);
	if (secret == NULL)
		fail_msg("hash_make(%s, %u): %s", scheme, rounds, error);
	return secret;
}

static bool
crypt_matches(const char *hash, const char *password)
{
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	const char *out = crypt_rn(password, hash, cd, (int)sizeof(*cd));
	bool ok = out != NULL && out[0] != '*' && strcmp(out, hash) == 0;
	free(cd);
	return ok;
}

static void
check_crypt(const char *scheme, unsigned rounds, const char *want_prefix)
{
	char *secret = make_or_fail(scheme, "secret", rounds);
	char scheme_prefix[40];

	snprintf(scheme_prefix, sizeof(scheme_prefix), "{%s}", scheme);
	assert_memory_equal(secret, scheme_prefix, strlen(scheme_prefix));
	const char *hash = secret + strlen(scheme_prefix);
	if (strncmp(hash, want_prefix, strlen(want_prefix)) != 0)
		fail_msg("%s: '%s' does not start with '%s'", scheme, hash, want_prefix);
	assert_true(crypt_matches(hash, "secret"));
	assert_false(crypt_matches(hash, "Secret"));
	free(secret);
}

static void
test_crypt_schemes(void **state)
{
	check_crypt("SHA512-CRYPT", 0, "$6$");
	check_crypt("SHA512-CRYPT", 20000, "$6$rounds=20000$");
	check_crypt("SHA256-CRYPT", 0, "$5$");
	check_crypt("SHA256-CRYPT", 1000, "$5$rounds=1000$");
	/* Our default cost, not libxcrypt's 5. */
	check_crypt("BLF-CRYPT", 0, "$2y$10$");
	check_crypt("BLF-CRYPT", 4, "$2y$04$");
	/* scheme names are case-insensitive, the prefix is canonical */
	char *secret = make_or_fail("sha512-crypt", "secret", 0);
	assert_memory_equal(secret, "{SHA512-CRYPT}$6$", 17);
	free(secret);
}

static void
test_crypt_salts_differ(void **state)
{
	char *a = make_or_fail("SHA512-CRYPT", "secret", 0);
	char *b = make_or_fail("SHA512-CRYPT", "secret", 0);
	assert_string_not_equal(a, b);
	free(a);
	free(b);
}

static void
test_scram_schemes(void **state)
{
	const char *mechs[] = { "SCRAM-SHA-256", "SCRAM-SHA-1" };
	for (size_t i = 0; i < N_ELEMENTS(mechs); i++) {
		struct scram_secret s;
		char *error = NULL;
		char *secret = make_or_fail(mechs[i], "secret", i == 0 ? 0 : 5000);
		assert_int_equal(scram_secret_parse(secret, &s, &error), 0);
		assert_string_equal(s.mech, mechs[i]);
		assert_int_equal(s.iterations, i == 0 ? 4096 : 5000);
		assert_true(scram_secret_verify(&s, "secret"));
		scram_secret_clear(&s);
		free(secret);
	}
}

static void
test_plain(void **state)
{
	char *secret = make_or_fail("PLAIN", "p@ss word", 0);
	assert_string_equal(secret, "{PLAIN}p@ss word");
	free(secret);
}

static void
test_check_rejects(void **state)
{
	static const struct {
		const char *scheme;
		unsigned rounds;
	} bad[] = {
		{ "MD5-CRYPT", 0 }, { "CRYPT", 0 }, { "", 0 }, { "SHA512", 0 },
		{ "SHA512-CRYPT", 999 }, { "SHA512-CRYPT", 1000000000 },
		{ "SHA256-CRYPT", 1 }, { "BLF-CRYPT", 3 }, { "BLF-CRYPT", 32 },
		{ "SCRAM-SHA-256", 4095 }, { "SCRAM-SHA-1", SCRAM_ITERATIONS_MAX + 1 },
		{ "PLAIN", 1 },
	};
	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		char *error = NULL;
		if (hash_check(bad[i].scheme, bad[i].rounds, &error) != -1)
			fail_msg("accepted %s rounds %u", bad[i].scheme, bad[i].rounds);
		assert_non_null(error);
		free(error);
		error = NULL;
		assert_null(hash_make(bad[i].scheme, "secret", bad[i].rounds, &error));
		assert_non_null(error);
		free(error);
	}
	for (size_t i = 0; i < N_ELEMENTS(all_schemes); i++) {
		char *error = NULL;
		assert_int_equal(hash_check(all_schemes[i], 0, &error), 0);
	}
}

static void
test_password_refused(void **state)
{
	char *long_pw = xmalloc(HASH_PASSWORD_MAX + 2);
	memset(long_pw, 'a', HASH_PASSWORD_MAX + 1);
	long_pw[HASH_PASSWORD_MAX + 1] = '\0';

	for (size_t i = 0; i < N_ELEMENTS(all_schemes); i++) {
		const char *bad[] = { "", "a\nb", "a\rb", long_pw };
		for (size_t j = 0; j < N_ELEMENTS(bad); j++) {
			char *error = NULL;
			assert_int_equal(hash_password_check(all_schemes[i], bad[j], &error), -1);
			assert_non_null(error);
			free(error);
			error = NULL;
			assert_null(hash_make(all_schemes[i], bad[j], 0, &error));
			assert_non_null(error);
			free(error);
		}
	}
	/* ':' splits users-file fields: only a PLAIN secret would contain it. */
	char *error = NULL;
	assert_int_equal(hash_password_check("PLAIN", "a:b", &error), -1);
	assert_null(strstr(error, "a:b"));
	free(error);
	char *secret = make_or_fail("SHA256-CRYPT", "a:b", 0);
	free(secret);
	free(long_pw);
}

/* Each scheme's own length limit: exactly the limit works, one more is
 * refused. crypt(3) fails at 512 bytes; bcrypt ignores bytes after 72. */
static void
test_password_length_limits(void **state)
{
	static const struct {
		const char *scheme;
		size_t max;
	} limits[] = {
		{ "SHA512-CRYPT", HASH_CRYPT_PASSWORD_MAX },
		{ "SHA256-CRYPT", HASH_CRYPT_PASSWORD_MAX },
		{ "BLF-CRYPT", HASH_BLF_PASSWORD_MAX },
		{ "SCRAM-SHA-256", HASH_PASSWORD_MAX },
		{ "SCRAM-SHA-1", HASH_PASSWORD_MAX },
		{ "PLAIN", HASH_PASSWORD_MAX },
	};
	for (size_t i = 0; i < N_ELEMENTS(limits); i++) {
		char *pw = xmalloc(limits[i].max + 2), *error = NULL;
		memset(pw, 'a', limits[i].max + 1);
		pw[limits[i].max + 1] = '\0';
		assert_null(hash_make(limits[i].scheme, pw, 0, &error));
		assert_non_null(strstr(error, "longer than"));
		free(error);
		pw[limits[i].max] = '\0';
		char *secret = make_or_fail(limits[i].scheme, pw, 0);
		if (strncmp(secret, "{SHA", 4) == 0 || strncmp(secret, "{BLF", 4) == 0)
			assert_true(crypt_matches(strchr(secret, '}') + 1, pw));
		free(secret);
		free(pw);
	}
}

/* `doveadm pw -t SECRET -p PASSWORD` exits 0 when the secret verifies. */
static int
doveadm_verify(const char *secret, const char *password)
{
	char *cmd = xasprintf("doveadm pw -t '%s' -p '%s' >/dev/null 2>&1", secret, password);
	int st = system(cmd);
	free(cmd);
	return st;
}

static void
test_doveadm_accepts(void **state)
{
	if (system("command -v doveadm >/dev/null 2>&1") != 0) {
		print_message("doveadm not installed (dovecot-core): skipping\n");
		skip();
	}
	for (size_t i = 0; i < N_ELEMENTS(all_schemes); i++) {
		char *secret = make_or_fail(all_schemes[i], "secret", 0);
		/* shell quoting below relies on this; no scheme can produce it */
		assert_null(strchr(secret, '\''));
		if (doveadm_verify(secret, "secret") != 0)
			fail_msg("doveadm pw -t refused %s output %s", all_schemes[i], secret);
		if (doveadm_verify(secret, "wrong") == 0)
			fail_msg("doveadm pw -t accepted a wrong password for %s", all_schemes[i]);
		free(secret);
	}
}

/* Run hash_main in a child with stdin from a pipe holding input and stdout
 * into a buffer; returns the exit status. */
static int
run_hash_main(const char *input, size_t input_len, char *out, size_t out_size,
	      char **argv, int argc)
{
	int in_pipe[2], out_pipe[2], status;
	pid_t pid;

	assert_int_equal(pipe(in_pipe), 0);
	assert_int_equal(pipe(out_pipe), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(in_pipe[0], STDIN_FILENO);
		dup2(out_pipe[1], STDOUT_FILENO);
		int devnull = open("/dev/null", O_WRONLY);
		if (devnull >= 0)
			dup2(devnull, STDERR_FILENO);
		close(in_pipe[0]);
		close(in_pipe[1]);
		close(out_pipe[0]);
		close(out_pipe[1]);
		int rc = hash_main(argc, argv);
		fflush(stdout);
		_exit(rc);
	}
	close(in_pipe[0]);
	close(out_pipe[1]);
	/* A child that refuses its arguments exits without reading stdin: the
	 * write may then meet a closed pipe (EPIPE), which must not kill this
	 * test process with SIGPIPE. */
	void (*old_pipe)(int) = signal(SIGPIPE, SIG_IGN);
	ssize_t w = write(in_pipe[1], input, input_len);
	assert_true(w == (ssize_t)input_len || (w < 0 && errno == EPIPE));
	signal(SIGPIPE, old_pipe);
	close(in_pipe[1]);
	size_t len = 0;
	ssize_t n;
	while ((n = read(out_pipe[0], out + len, out_size - 1 - len)) > 0)
		len += (size_t)n;
	out[len] = '\0';
	close(out_pipe[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static void
test_main_stdin(void **state)
{
	char out[512];
	char *argv_default[] = { "hash", NULL };
	char *argv_blf[] = { "hash", "--scheme", "BLF-CRYPT", "--rounds", "5", NULL };
	char *argv_scram[] = { "hash", "--scheme=scram-sha-256", NULL };
	char *argv_plain[] = { "hash", "--scheme", "PLAIN", NULL };

	/* Only the first line is the password; CRLF is stripped. */
	assert_int_equal(run_hash_main("secret\nignored\n", 15, out, sizeof(out),
				       argv_default, 1), 0);
	assert_memory_equal(out, "{SHA512-CRYPT}$6$", 17);
	assert_non_null(strchr(out, '\n'));
	assert_int_equal(strchr(out, '\n')[1], '\0');
	*strchr(out, '\n') = '\0';
	assert_true(crypt_matches(out + 14, "secret"));
	assert_null(strstr(out, "secret"));

	assert_int_equal(run_hash_main("secret\r\n", 8, out, sizeof(out), argv_blf, 5), 0);
	assert_memory_equal(out, "{BLF-CRYPT}$2y$05$", 18);
	*strchr(out, '\n') = '\0';
	assert_true(crypt_matches(out + 11, "secret"));

	/* no trailing newline is fine too */
	assert_int_equal(run_hash_main("secret", 6, out, sizeof(out), argv_scram, 2), 0);
	assert_memory_equal(out, "{SCRAM-SHA-256}4096,", 20);

	assert_int_equal(run_hash_main("secret\n", 7, out, sizeof(out), argv_plain, 3), 0);
	assert_string_equal(out, "{PLAIN}secret\n");
}

static void
test_main_exit_codes(void **state)
{
	char out[512];
	char *argv_default[] = { "hash", NULL };
	char *argv_help[] = { "hash", "--help", NULL };
	char *argv_bad_scheme[] = { "hash", "--scheme", "MD5", NULL };
	char *argv_bad_rounds[] = { "hash", "--rounds", "12x", NULL };
	char *argv_zero_rounds[] = { "hash", "--rounds", "0", NULL };
	char *argv_range[] = { "hash", "--scheme", "BLF-CRYPT", "--rounds", "40", NULL };
	char *argv_missing[] = { "hash", "--scheme", NULL };
	char *argv_positional[] = { "hash", "secret", NULL };
	char *argv_plain[] = { "hash", "--scheme", "PLAIN", NULL };

	assert_int_equal(run_hash_main("", 0, out, sizeof(out), argv_help, 2), 0);
	assert_non_null(strstr(out, "usage: popbox hash"));

	assert_int_equal(run_hash_main("x\n", 2, out, sizeof(out), argv_bad_scheme, 3), 64);
	assert_int_equal(run_hash_main("x\n", 2, out, sizeof(out), argv_bad_rounds, 3), 64);
	assert_int_equal(run_hash_main("x\n", 2, out, sizeof(out), argv_zero_rounds, 3), 64);
	assert_int_equal(run_hash_main("x\n", 2, out, sizeof(out), argv_range, 5), 64);
	assert_int_equal(run_hash_main("x\n", 2, out, sizeof(out), argv_missing, 2), 64);
	assert_int_equal(run_hash_main("x\n", 2, out, sizeof(out), argv_positional, 2), 64);
	assert_string_equal(out, "");

	/* refused passwords: 1, nothing on stdout */
	assert_int_equal(run_hash_main("", 0, out, sizeof(out), argv_default, 1), 1);
	assert_int_equal(run_hash_main("\n", 1, out, sizeof(out), argv_default, 1), 1);
	assert_int_equal(run_hash_main("a\0b\n", 4, out, sizeof(out), argv_default, 1), 1);
	assert_int_equal(run_hash_main("a:b\n", 4, out, sizeof(out), argv_plain, 3), 1);
	assert_string_equal(out, "");

	char *big = xmalloc(HASH_PASSWORD_MAX + 2);
	memset(big, 'a', HASH_PASSWORD_MAX + 1);
	big[HASH_PASSWORD_MAX + 1] = '\n';
	assert_int_equal(run_hash_main(big, HASH_PASSWORD_MAX + 2, out, sizeof(out),
				       argv_default, 1), 1);
	free(big);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crypt_schemes),
		cmocka_unit_test(test_crypt_salts_differ),
		cmocka_unit_test(test_scram_schemes),
		cmocka_unit_test(test_plain),
		cmocka_unit_test(test_check_rejects),
		cmocka_unit_test(test_password_refused),
		cmocka_unit_test(test_password_length_limits),
		cmocka_unit_test(test_doveadm_accepts),
		cmocka_unit_test(test_main_stdin),
		cmocka_unit_test(test_main_exit_codes),
	};
	return cmocka_run_group_tests_name("hash", tests, NULL, NULL);
}

#include "client/hash.h"
#include "common/scram.h"
#include "common/util.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <termios.h>
#include <unistd.h>

enum hash_kind {
	HASH_KIND_CRYPT,
	HASH_KIND_SCRAM,
	HASH_KIND_PLAIN,
};

struct hash_scheme {
	const char *name;
	enum hash_kind kind;
	const char *crypt_prefix;   /* crypt_gensalt prefix for HASH_KIND_CRYPT */
	unsigned rounds_default;    /* 0: the library's default */
	unsigned rounds_min, rounds_max;
	size_t password_max;
};

_Static_assert(HASH_CRYPT_PASSWORD_MAX < CRYPT_MAX_PASSPHRASE_SIZE,
	       "crypt(3) would refuse passwords hash_make accepts");

static const struct hash_scheme hash_schemes[] = {
	{ "SHA512-CRYPT", HASH_KIND_CRYPT, "$6$", 0,
	  HASH_SHA_CRYPT_ROUNDS_MIN, HASH_SHA_CRYPT_ROUNDS_MAX, HASH_CRYPT_PASSWORD_MAX },
	{ "SHA256-CRYPT", HASH_KIND_CRYPT, "$5$", 0,
	  HASH_SHA_CRYPT_ROUNDS_MIN, HASH_SHA_CRYPT_ROUNDS_MAX, HASH_CRYPT_PASSWORD_MAX },
	/* $2y$ as Dovecot writes it; libxcrypt and Dovecot verify it. */
	{ "BLF-CRYPT", HASH_KIND_CRYPT, "$2y$", HASH_BLF_COST_DEFAULT,
	  HASH_BLF_COST_MIN, HASH_BLF_COST_MAX, HASH_BLF_PASSWORD_MAX },
	{ "SCRAM-SHA-256", HASH_KIND_SCRAM, NULL, SCRAM_ITERATIONS_DEFAULT,
	  SCRAM_ITERATIONS_MIN_GENERATE, SCRAM_ITERATIONS_MAX, HASH_PASSWORD_MAX },
	{ "SCRAM-SHA-1", HASH_KIND_SCRAM, NULL, SCRAM_ITERATIONS_DEFAULT,
	  SCRAM_ITERATIONS_MIN_GENERATE, SCRAM_ITERATIONS_MAX, HASH_PASSWORD_MAX },
	{ "PLAIN", HASH_KIND_PLAIN, NULL, 0, 0, 0, HASH_PASSWORD_MAX },
};

static const struct hash_scheme *
hash_scheme_find(const char *name)
{
	for (size_t i = 0; i < N_ELEMENTS(hash_schemes); i++) {
		if (strcasecmp(hash_schemes[i].name, name) == 0)
			return &hash_schemes[i];
	}
	return NULL;
}

static const struct hash_scheme *
hash_scheme_check(const char *scheme, unsigned rounds, char **error_r)
{
	const struct hash_scheme *s = hash_scheme_find(scheme);

	if (s == NULL) {
		*error_r = xasprintf("unknown scheme; use SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT, "
				     "SCRAM-SHA-256, SCRAM-SHA-1 or PLAIN");
		return NULL;
	}
	if (rounds == 0)
		return s;
	if (s->kind == HASH_KIND_PLAIN) {
		*error_r = xasprintf("PLAIN takes no --rounds");
		return NULL;
	}
	if (rounds < s->rounds_min || rounds > s->rounds_max) {
		*error_r = xasprintf("%s --rounds must be in %u..%u", s->name,
				     s->rounds_min, s->rounds_max);
		return NULL;
	}
	return s;
}

int
hash_check(const char *scheme, unsigned rounds, char **error_r)
{
	return hash_scheme_check(scheme, rounds, error_r) == NULL ? -1 : 0;
}

static char *
hash_make_crypt(const struct hash_scheme *s, const char *password, unsigned rounds,
		char **error_r)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd;
	char *result = NULL;

	if (rounds == 0)
		rounds = s->rounds_default;
	/* NULL random bytes: libxcrypt reads the salt from the kernel RNG. */
	if (crypt_gensalt_rn(s->crypt_prefix, rounds, NULL, 0, setting, sizeof(setting)) == NULL) {
		*error_r = xasprintf("%s: crypt_gensalt failed: %s", s->name, strerror(errno));
		return NULL;
	}
	/* struct crypt_data is ~32 KiB: heap rather than stack. */
	cd = xcalloc(1, sizeof(*cd));
	const char *out = crypt_rn(password, setting, cd, (int)sizeof(*cd));
	/* libxcrypt signals failure with NULL or a string starting with '*'. */
	if (out == NULL || out[0] == '*' ||
	    strncmp(out, s->crypt_prefix, strlen(s->crypt_prefix)) != 0)
		*error_r = xasprintf("%s: crypt failed", s->name);
	else
		result = xasprintf("{%s}%s", s->name, out);
	secure_wipe(cd, sizeof(*cd));
	free(cd);
	return result;
}

static int
hash_password_refused(const struct hash_scheme *s, const char *password, char **error_r)
{
	size_t len = strlen(password);

	if (len == 0) {
		*error_r = xasprintf("empty password refused");
		return -1;
	}
	if (len > s->password_max) {
		*error_r = xasprintf("password longer than %zu bytes refused for %s%s",
				     s->password_max, s->name,
				     s->kind == HASH_KIND_CRYPT ? " (crypt(3) limit)" : "");
		return -1;
	}
	/* Nobody could send such a password in a POP3 PASS line, and a
	 * {PLAIN} one would break the line-based users file. */
	if (strpbrk(password, "\r\n") != NULL) {
		*error_r = xasprintf("password with a line break refused");
		return -1;
	}
	/* The users file is split at ':' (passwd.c and Dovecot alike): a
	 * {PLAIN} secret containing one would be read back truncated. */
	if (s->kind == HASH_KIND_PLAIN && strchr(password, ':') != NULL) {
		*error_r = xasprintf("password with ':' refused for PLAIN; use a hashed scheme");
		return -1;
	}
	return 0;
}

int
hash_password_check(const char *scheme, const char *password, char **error_r)
{
	const struct hash_scheme *s = hash_scheme_check(scheme, 0, error_r);
	if (s == NULL)
		return -1;
	return hash_password_refused(s, password, error_r);
}

char *
hash_make(const char *scheme, const char *password, unsigned rounds, char **error_r)
{
	const struct hash_scheme *s = hash_scheme_check(scheme, rounds, error_r);
	char *result;

	if (s == NULL || hash_password_refused(s, password, error_r) < 0)
		return NULL;
	switch (s->kind) {
	case HASH_KIND_CRYPT:
		return hash_make_crypt(s, password, rounds, error_r);
	case HASH_KIND_SCRAM:
		result = scram_secret_generate(password, s->name, rounds);
		if (result == NULL)
			*error_r = xasprintf("%s: generating the secret failed", s->name);
		return result;
	case HASH_KIND_PLAIN:
		return xasprintf("{PLAIN}%s", password);
	}
	*error_r = xasprintf("internal error: unhandled scheme kind");
	return NULL;
}

/* ---- reading the password ---- */

enum read_status {
	READ_OK,
	READ_EOF,       /* nothing read at all */
	READ_TOO_LONG,
	READ_NUL,
	READ_ERROR,     /* errno set */
	READ_SIGNAL,    /* interrupted by a caught signal */
};

static volatile sig_atomic_t hash_caught_signal;

static void
hash_signal_handler(int signo)
{
	hash_caught_signal = signo;
}

/* Read one line from fd into buf (size HASH_PASSWORD_MAX + 1) byte by
 * byte, so no stdio buffer keeps a copy and nothing past the line is
 * consumed. A trailing CR before LF is dropped. Over-long lines are read to
 * their end before failing, so nothing is left for the terminal's shell. */
static enum read_status
hash_read_line(int fd, char *buf, size_t size)
{
	size_t len = 0;
	bool too_long = false, nul = false, any = false;

	for (;;) {
		char c;
		ssize_t n = read(fd, &c, 1);
		if (n < 0) {
			if (errno == EINTR) {
				if (hash_caught_signal != 0)
					return READ_SIGNAL;
				continue;
			}
			return READ_ERROR;
		}
		if (n == 0) {
			if (!any)
				return READ_EOF;
			break;
		}
		any = true;
		if (c == '\n')
			break;
		if (c == '\0')
			nul = true;
		if (len + 1 < size)
			buf[len++] = c;
		else
			too_long = true;
	}
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	if (too_long)
		return READ_TOO_LONG;
	if (nul)
		return READ_NUL;
	return READ_OK;
}

static const int hash_tty_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP };

struct hash_tty {
	int fd;
	struct termios saved;
	struct sigaction old_actions[N_ELEMENTS(hash_tty_signals)];
};

/* Echo off, and signals that would leave the terminal without echo are
 * caught (no SA_RESTART, so read() returns EINTR), the terminal restored,
 * and then re-raised with their old handlers. */
static int
hash_tty_open(struct hash_tty *t)
{
	struct termios noecho;
	struct sigaction sa;

	t->fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (t->fd < 0)
		return -1;
	if (tcgetattr(t->fd, &t->saved) < 0) {
		close(t->fd);
		return -1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = hash_signal_handler;
	sigemptyset(&sa.sa_mask);
	hash_caught_signal = 0;
	for (size_t i = 0; i < N_ELEMENTS(hash_tty_signals); i++)
		sigaction(hash_tty_signals[i], &sa, &t->old_actions[i]);
	noecho = t->saved;
	noecho.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
	noecho.c_lflag |= ICANON;
	if (tcsetattr(t->fd, TCSAFLUSH, &noecho) < 0) {
		int saved_errno = errno;
		for (size_t i = 0; i < N_ELEMENTS(hash_tty_signals); i++)
			sigaction(hash_tty_signals[i], &t->old_actions[i], NULL);
		close(t->fd);
		errno = saved_errno;
		return -1;
	}
	return 0;
}

static void
hash_tty_close(struct hash_tty *t)
{
	tcsetattr(t->fd, TCSAFLUSH, &t->saved);
	close(t->fd);
	for (size_t i = 0; i < N_ELEMENTS(hash_tty_signals); i++)
		sigaction(hash_tty_signals[i], &t->old_actions[i], NULL);
	if (hash_caught_signal != 0)
		raise(hash_caught_signal);
}

static enum read_status
hash_tty_prompt(struct hash_tty *t, const char *prompt, char *buf, size_t size)
{
	enum read_status st;

	if (write(t->fd, prompt, strlen(prompt)) < 0)
		return READ_ERROR;
	st = hash_read_line(t->fd, buf, size);
	/* The user's Enter was not echoed. */
	(void)!write(t->fd, "\n", 1);
	return st;
}

static int
hash_read_status_exit(enum read_status st, const char *source)
{
	switch (st) {
	case READ_OK:
		return 0;
	case READ_EOF:
		fprintf(stderr, "popbox hash: no password on %s\n", source);
		return 1;
	case READ_TOO_LONG:
		fprintf(stderr, "popbox hash: password longer than %d bytes refused\n",
			HASH_PASSWORD_MAX);
		return 1;
	case READ_NUL:
		fprintf(stderr, "popbox hash: password with a NUL byte refused\n");
		return 1;
	case READ_SIGNAL:
		fprintf(stderr, "popbox hash: interrupted\n");
		return 1;
	case READ_ERROR:
		break;
	}
	fprintf(stderr, "popbox hash: reading %s: %s\n", source, strerror(errno));
	return EX_IOERR;
}

/* Fills buf with the password. Returns 0 or the exit status. */
static int
hash_read_password(char *buf, size_t size)
{
	if (!isatty(STDIN_FILENO))
		return hash_read_status_exit(hash_read_line(STDIN_FILENO, buf, size), "stdin");

	struct hash_tty t;
	char *again = xmalloc(size);
	int ret;

	if (hash_tty_open(&t) < 0) {
		fprintf(stderr, "popbox hash: cannot use /dev/tty: %s\n", strerror(errno));
		free(again);
		return EX_NOINPUT;
	}
	enum read_status st = hash_tty_prompt(&t, "Password: ", buf, size);
	if (st == READ_OK && buf[0] != '\0')
		st = hash_tty_prompt(&t, "Repeat password: ", again, size);
	else
		again[0] = '\0';
	bool mismatch = st == READ_OK && strcmp(buf, again) != 0;
	/* Wipe before restoring the terminal: that may re-raise a caught
	 * signal (SIGQUIT dumps core). */
	secure_wipe(again, size);
	if (st != READ_OK || mismatch)
		secure_wipe(buf, size);
	hash_tty_close(&t);
	ret = hash_read_status_exit(st, "the terminal");
	if (ret == 0 && mismatch) {
		fprintf(stderr, "popbox hash: passwords do not match\n");
		ret = 1;
	}
	free(again);
	return ret;
}

/* ---- command line ---- */

static void
hash_usage(FILE *f)
{
	fprintf(f,
	    "usage: popbox hash [--scheme SCHEME] [--rounds N]\n"
	    "Print the password field of a users-file line (user:FIELD:...).\n"
	    "The password is asked twice on the terminal without echo, or read\n"
	    "from the first line of stdin when stdin is not a terminal; it is\n"
	    "never taken from the command line.\n"
	    "  --scheme SCHEME  SHA512-CRYPT (default), SHA256-CRYPT, BLF-CRYPT,\n"
	    "                   SCRAM-SHA-256, SCRAM-SHA-1 or PLAIN\n"
	    "  --rounds N       SHA*-CRYPT rounds (%u..%u, default 5000),\n"
	    "                   BLF-CRYPT cost (%u..%u, default %u),\n"
	    "                   SCRAM iterations (%u..%u, default %u)\n"
	    "  --help           this text\n"
	    "SCRAM secrets let clients log in with AUTH SCRAM-SHA-*; the others\n"
	    "allow only USER/PASS and AUTH PLAIN.\n",
	    HASH_SHA_CRYPT_ROUNDS_MIN, HASH_SHA_CRYPT_ROUNDS_MAX,
	    HASH_BLF_COST_MIN, HASH_BLF_COST_MAX, HASH_BLF_COST_DEFAULT,
	    SCRAM_ITERATIONS_MIN_GENERATE, SCRAM_ITERATIONS_MAX, SCRAM_ITERATIONS_DEFAULT);
}

/* "--name value" or "--name=value": returns the value (advancing *i) or
 * NULL when argv[*i] is not this option; *missing when the value is. */
static const char *
hash_option_value(int argc, char **argv, int *i, const char *name, bool *missing)
{
	size_t n = strlen(name);
	const char *arg = argv[*i];

	if (strncmp(arg, name, n) != 0)
		return NULL;
	if (arg[n] == '=')
		return arg + n + 1;
	if (arg[n] != '\0')
		return NULL;
	if (*i + 1 >= argc) {
		*missing = true;
		return NULL;
	}
	return argv[++*i];
}

int
hash_main(int argc, char **argv)
{
	const char *scheme = HASH_SCHEME_DEFAULT, *value;
	uint32_t rounds = 0;
	char *error = NULL, *password, *secret;
	int ret;

	for (int i = 1; i < argc; i++) {
		bool missing = false;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			hash_usage(stdout);
			return 0;
		}
		if ((value = hash_option_value(argc, argv, &i, "--scheme", &missing)) != NULL) {
			scheme = value;
		} else if ((value = hash_option_value(argc, argv, &i, "--rounds",
						      &missing)) != NULL) {
			if (!parse_u32(value, UINT32_MAX, &rounds) || rounds == 0) {
				fprintf(stderr, "popbox hash: --rounds needs a positive number\n");
				return EX_USAGE;
			}
		} else if (missing) {
			fprintf(stderr, "popbox hash: %s needs a value\n", argv[i]);
			return EX_USAGE;
		} else {
			fprintf(stderr, "popbox hash: unexpected argument '%s'%s\n", argv[i],
				argv[i][0] == '-' ? "" :
				" (the password is read from the terminal or stdin)");
			hash_usage(stderr);
			return EX_USAGE;
		}
	}
	if (hash_check(scheme, rounds, &error) < 0) {
		fprintf(stderr, "popbox hash: %s\n", error);
		free(error);
		return EX_USAGE;
	}

	password = xmalloc(HASH_PASSWORD_MAX + 1);
	ret = hash_read_password(password, HASH_PASSWORD_MAX + 1);
	if (ret != 0) {
		secure_wipe(password, HASH_PASSWORD_MAX + 1);
		free(password);
		return ret;
	}
	if (hash_password_check(scheme, password, &error) < 0) {
		ret = 1;
		secret = NULL;
	} else {
		secret = hash_make(scheme, password, rounds, &error);
		ret = EX_SOFTWARE;
	}
	secure_wipe(password, HASH_PASSWORD_MAX + 1);
	free(password);
	if (secret == NULL) {
		fprintf(stderr, "popbox hash: %s\n", error);
		free(error);
		return ret;
	}
	printf("%s\n", secret);
	free_secret(secret);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "popbox hash: writing stdout: %s\n", strerror(errno));
		return EX_IOERR;
	}
	return 0;
}

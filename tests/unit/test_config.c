/* Unit tests for src/server/config.c (popboxd.conf parser). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "server/config.h"
#include "server/limits_popboxd.h"

#define REQUIRED "users = /etc/popbox/users\nmail = maildir:~/Maildir\n"

static struct config *
parse_ok(const char *text)
{
	struct config *c = NULL;
	char *error = NULL;
	int r = config_parse("/etc/popbox/popboxd.conf", text, &c, &error);
	if (r != 0)
		fail_msg("unexpected error: %s", error);
	assert_non_null(c);
	return c;
}

/* Parse text expected to fail; check the whole message. */
static void
expect_error(const char *text, const char *message)
{
	struct config *c = (struct config *)1;
	char *error = NULL;
	assert_int_equal(config_parse("test.conf", text, &c, &error), -1);
	assert_null(c);
	assert_non_null(error);
	assert_string_equal(error, message);
	free(error);
}

/* Parse text expected to fail; check the message starts with prefix. */
static void
expect_error_prefix(const char *text, const char *prefix)
{
	struct config *c = NULL;
	char *error = NULL;
	assert_int_equal(config_parse("test.conf", text, &c, &error), -1);
	assert_non_null(error);
	if (strncmp(error, prefix, strlen(prefix)) != 0)
		fail_msg("error '%s' does not start with '%s'", error, prefix);
	free(error);
}

/* Mail-in keys (docs/popboxd.conf.5 "Mail in"). */
static void
test_mail_in_keys(void **state)
{
	(void)state;
	struct config *c = parse_ok(REQUIRED);
	assert_int_equal(c->max_message_size, 64ull << 20);
	assert_false(c->max_maildrop_size_bounce);
	assert_null(c->recipient_delimiter);
	config_free(c);
	c = parse_ok(REQUIRED "max_message_size = 10M\nmax_maildrop_size_bounce = yes\n"
	    "recipient_delimiter = +-\n");
	assert_int_equal(c->max_message_size, 10ull << 20);
	assert_true(c->max_maildrop_size_bounce);
	assert_string_equal(c->recipient_delimiter, "+-");
	config_free(c);
	expect_error(REQUIRED "recipient_delimiter = @\n", "test.conf:3: bad value '@' for key "
	    "'recipient_delimiter': expected characters like + or -, not @ or space");
	expect_error_prefix(REQUIRED "max_message_size = big\n", "test.conf:3: bad value 'big'");
}

/* listen_lmtp: unix sockets (relative to the config's directory) and TCP
 * addresses; beyond loopback only with lmtp_trusted. */
static void
test_lmtp_keys(void **state)
{
	(void)state;
	struct config *c = parse_ok(REQUIRED);
	assert_int_equal(c->n_lmtp_listens + c->n_lmtp_unix, 0);
	assert_int_equal(c->lmtp_socket_mode, 0660);
	assert_null(c->lmtp_socket_owner);
	assert_int_equal(c->lmtp_timeout, 300);
	config_free(c);
	c = parse_ok(REQUIRED "listen_lmtp = unix:lmtp, 127.0.0.1:24\nlisten_lmtp = [::1]:24\n"
	    "listen_lmtp = unix:/run/popbox/lmtp\nlmtp_socket_mode = 0600\n"
	    "lmtp_socket_owner = postfix:mail\nlmtp_timeout = 10m\n");
	assert_int_equal(c->n_lmtp_unix, 2);
	assert_string_equal(c->lmtp_unix[0], "/etc/popbox/lmtp");
	assert_string_equal(c->lmtp_unix[1], "/run/popbox/lmtp");
	assert_int_equal(c->n_lmtp_listens, 2);
	assert_string_equal(c->lmtp_listens[0].host, "127.0.0.1");
	assert_string_equal(c->lmtp_listens[0].port, "24");
	assert_string_equal(c->lmtp_listens[1].host, "::1");
	assert_false(c->lmtp_listens[0].tls);
	assert_int_equal(c->n_listens, 1);   /* POP3's default stays */
	assert_int_equal(c->lmtp_socket_mode, 0600);
	assert_string_equal(c->lmtp_socket_owner, "postfix:mail");
	assert_int_equal(c->lmtp_timeout, 600);
	config_free(c);
	/* an LMTP-only server */
	c = parse_ok(REQUIRED "listen = none\nlisten_lmtp = unix:/run/l\n");
	assert_int_equal(c->n_listens, 0);
	config_free(c);
	c = parse_ok(REQUIRED "listen_lmtp = 192.0.2.1:24\nlmtp_trusted = 192.0.2.0/24\n");
	assert_int_equal(c->n_lmtp_trusted, 1);
	config_free(c);
	expect_error(REQUIRED "listen_lmtp = 192.0.2.1:24\n", "test.conf:3: listen_lmtp "
	    "192.0.2.1:24 is not a loopback address: lmtp_trusted must name who may deliver");
	expect_error_prefix(REQUIRED "listen_lmtp = *:24\n", "test.conf:3: listen_lmtp *:24 is not");
	expect_error_prefix(REQUIRED "listen = 127.0.0.1:24\nlisten_lmtp = 127.0.0.1:24\n",
	    "test.conf:4: listen address '127.0.0.1:24' given twice");
	expect_error_prefix(REQUIRED "listen_lmtp = unix:\n", "test.conf:3: bad value 'unix:'");
	expect_error_prefix(REQUIRED "listen_lmtp = unix:/a, unix:/a\n", "test.conf:3: bad value");
	expect_error_prefix(REQUIRED "lmtp_socket_mode = 0668\n", "test.conf:3: bad value '0668'");
	c = parse_ok(REQUIRED "lmtp_socket_mode = 666\n");
	assert_int_equal(c->lmtp_socket_mode, 0666);
	config_free(c);
	expect_error_prefix(REQUIRED "lmtp_socket_owner = a:b:c\n", "test.conf:3: bad value");
	expect_error_prefix(REQUIRED "lmtp_trusted = nonsense\n", "test.conf:3: bad value");
	/* per-user session processes: the maildrops are the users', and
	 * LMTP delivers as the recipient's Unix account (users = pam only) */
	c = parse_ok("users = pam\nmail = maildir:/m/%u\nlisten_lmtp = unix:/run/l\n");
	assert_true(config_lmtp_as_recipient(c));
	assert_string_equal(c->lmtp_spool_dir, "/var/tmp");
	config_free(c);
	c = parse_ok("users = pam\nmail = mbox:/var/mail/%u\nlisten_lmtp = unix:/run/l\n"
	    "lmtp_spool_dir = spool\n");
	assert_string_equal(c->lmtp_spool_dir, "/etc/popbox/spool");
	config_free(c);
	expect_error_prefix(REQUIRED "session_process = per-user\nlisten_lmtp = unix:/run/l\n",
	    "test.conf:4: listen_lmtp with per-user session processes delivers as the "
	    "recipient's Unix account, which needs users = pam");
	c = parse_ok("users = pam\nmail = maildir:/m/%u\nsession_process = worker\n"
	    "listen_lmtp = unix:/run/l\n");
	assert_int_equal(c->n_lmtp_unix, 1);
	assert_false(config_lmtp_as_recipient(c));
	config_free(c);
}

static void
test_defaults(void **state)
{
	struct config *c = parse_ok(REQUIRED);
	assert_string_equal(c->path, "/etc/popbox/popboxd.conf");
	assert_int_equal(c->n_listens, 1);
	assert_string_equal(c->listens[0].host, "127.0.0.1");
	assert_string_equal(c->listens[0].port, "110");
	assert_false(c->listens[0].tls);
	assert_null(c->tls_cert);
	assert_null(c->tls_key);
	assert_string_equal(c->tls_min_version, "TLSv1.2");
	assert_string_equal(c->users, "/etc/popbox/users");
	assert_string_equal(c->mail, "maildir:~/Maildir");
	assert_string_equal(c->state_dir, "/run/popbox");
	assert_string_equal(c->run_as, "popbox");
	assert_string_equal(c->auth_user, "popbox-auth");
	assert_int_equal(c->plaintext_auth, PLAINTEXT_TLS_OR_LOOPBACK);
	assert_int_equal(c->workers, 0);
	assert_false(c->apop);
	assert_int_equal(c->idle_timeout, 600);
	assert_int_equal(c->login_timeout, 180);
	assert_int_equal(c->max_connections, 10000);
	assert_int_equal(c->max_connections_per_ip, 50);
	assert_int_equal(c->max_bad_commands, 20);
	assert_false(c->log_debug);
	assert_false(c->sasl_channel_binding);
	assert_int_equal(c->auth_penalty_ipv6_prefix, 64);
	assert_int_equal(c->max_auth_failures, 3);
	config_free(c);
}

static void
test_every_key(void **state)
{
	struct config *c = parse_ok(
	    "# full example\n"
	    "\n"
	    "   # indented comment\n"
	    "listen = 0.0.0.0:110\n"
	    "listen_tls = [::]:995\n"
	    "tls_cert = /etc/ssl/cert.pem\n"
	    "tls_key = key.pem\n"
	    "tls_min_version = TLSv1.3\n"
	    "users = /srv/users\n"
	    "mail = maildir:/var/mail/%d/%n\n"
	    "state_dir = /var/run/pb\n"
	    "run_as = mailer\n"
	    "auth_user = mailauth\n"
	    "plaintext_auth = never\n"
	    "workers = 8\n"
	    "apop = yes\n"
	    "idle_timeout = 15m\n"
	    "login_timeout = 60\n"
	    "max_connections = 500\n"
	    "max_connections_per_ip = 5\n"
	    "max_bad_commands = 3\n"
	    "sasl_channel_binding = yes\n"
	    "auth_penalty_ipv6_prefix = 56\n"
	    "max_auth_failures = 7\n"
	    "log_debug = on\n");
	assert_int_equal(c->n_listens, 2);
	assert_string_equal(c->listens[0].host, "0.0.0.0");
	assert_string_equal(c->listens[0].port, "110");
	assert_false(c->listens[0].tls);
	assert_string_equal(c->listens[1].host, "::");
	assert_string_equal(c->listens[1].port, "995");
	assert_true(c->listens[1].tls);
	assert_string_equal(c->tls_cert, "/etc/ssl/cert.pem");
	assert_string_equal(c->tls_key, "/etc/popbox/key.pem");
	assert_string_equal(c->tls_min_version, "TLSv1.3");
	assert_string_equal(c->users, "/srv/users");
	assert_string_equal(c->mail, "maildir:/var/mail/%d/%n");
	assert_string_equal(c->state_dir, "/var/run/pb");
	assert_string_equal(c->run_as, "mailer");
	assert_string_equal(c->auth_user, "mailauth");
	assert_int_equal(c->plaintext_auth, PLAINTEXT_NEVER);
	assert_int_equal(c->workers, 8);
	assert_true(c->apop);
	assert_int_equal(c->idle_timeout, 900);
	assert_int_equal(c->login_timeout, 60);
	assert_int_equal(c->max_connections, 500);
	assert_int_equal(c->max_connections_per_ip, 5);
	assert_int_equal(c->max_bad_commands, 3);
	assert_true(c->sasl_channel_binding);
	assert_int_equal(c->auth_penalty_ipv6_prefix, 56);
	assert_int_equal(c->max_auth_failures, 7);
	assert_true(c->log_debug);
	config_free(c);
}

static void
test_plaintext_auth_values(void **state)
{
	struct config *c = parse_ok(REQUIRED "plaintext_auth = always\n");
	assert_int_equal(c->plaintext_auth, PLAINTEXT_ALWAYS);
	config_free(c);
	c = parse_ok(REQUIRED "plaintext_auth = tls-or-loopback\n");
	assert_int_equal(c->plaintext_auth, PLAINTEXT_TLS_OR_LOOPBACK);
	config_free(c);
	expect_error(REQUIRED "plaintext_auth = sometimes\n",
	    "test.conf:3: bad value 'sometimes' for key 'plaintext_auth': "
	    "expected tls-or-loopback, always or never");
}

static void
test_listen_lists(void **state)
{
	struct config *c = parse_ok(REQUIRED
	    "listen = 127.0.0.1:110, [::1]:110\n"
	    "listen_tls = *:995\n"
	    "listen = *:1110,mail.example.org:2110\n"
	    "tls_cert = c.pem\n"
	    "tls_key = k.pem\n");
	assert_int_equal(c->n_listens, 5);
	/* plain ones first, in file order, then TLS */
	assert_string_equal(c->listens[0].host, "127.0.0.1");
	assert_string_equal(c->listens[1].host, "::1");
	assert_string_equal(c->listens[1].port, "110");
	assert_string_equal(c->listens[2].host, "*");
	assert_string_equal(c->listens[2].port, "1110");
	assert_string_equal(c->listens[3].host, "mail.example.org");
	assert_string_equal(c->listens[3].port, "2110");
	for (int i = 0; i < 4; i++)
		assert_false(c->listens[i].tls);
	assert_string_equal(c->listens[4].host, "*");
	assert_string_equal(c->listens[4].port, "995");
	assert_true(c->listens[4].tls);
	config_free(c);
}

static void
test_listen_default_with_tls(void **state)
{
	/* listen_tls alone keeps the default plain listener */
	struct config *c = parse_ok(REQUIRED
	    "listen_tls = 127.0.0.1:995\ntls_cert = /c\ntls_key = /k\n");
	assert_int_equal(c->n_listens, 2);
	assert_string_equal(c->listens[0].host, "127.0.0.1");
	assert_string_equal(c->listens[0].port, "110");
	assert_false(c->listens[0].tls);
	assert_true(c->listens[1].tls);
	config_free(c);

	/* "listen = none" turns it off */
	c = parse_ok(REQUIRED "listen = none\n"
	    "listen_tls = 127.0.0.1:995\ntls_cert = /c\ntls_key = /k\n");
	assert_int_equal(c->n_listens, 1);
	assert_true(c->listens[0].tls);
	assert_string_equal(c->listens[0].port, "995");
	config_free(c);

	expect_error(REQUIRED "listen = none\n",
	    "test.conf: no listen addresses ('listen = none' and no listen_tls)");
	expect_error(REQUIRED "listen = none\nlisten = 1.2.3.4:110\n",
	    "test.conf:4: 'listen = none' cannot be combined with other listen addresses");
	expect_error(REQUIRED "listen = 1.2.3.4:110\nlisten = none\n",
	    "test.conf:4: 'listen = none' cannot be combined with other listen addresses");
}

static void
test_listen_errors(void **state)
{
	expect_error(REQUIRED "listen = 127.0.0.1\n",
	    "test.conf:3: bad value '127.0.0.1' for key 'listen': "
	    "expected host:port, [IPv6]:port or *:port");
	expect_error(REQUIRED "listen = ::1:110\n",
	    "test.conf:3: bad value '::1:110' for key 'listen': "
	    "expected IPv6 addresses in brackets, e.g. [::1]:110");
	expect_error(REQUIRED "listen = [::1]110\n",
	    "test.conf:3: bad value '[::1]110' for key 'listen': "
	    "expected host:port, [IPv6]:port or *:port");
	expect_error(REQUIRED "listen = [fe80::zz]:110\n",
	    "test.conf:3: bad value '[fe80::zz]:110' for key 'listen': "
	    "expected a valid IPv6 address in [...]:port");
	expect_error(REQUIRED "listen = *:0\n",
	    "test.conf:3: bad value '*:0' for key 'listen': expected a port from 1 to 65535");
	expect_error(REQUIRED "listen = *:65536\n",
	    "test.conf:3: bad value '*:65536' for key 'listen': expected a port from 1 to 65535");
	expect_error(REQUIRED "listen = *:pop3\n",
	    "test.conf:3: bad value '*:pop3' for key 'listen': expected a port from 1 to 65535");
	expect_error(REQUIRED "listen = *:+110\n",
	    "test.conf:3: bad value '*:+110' for key 'listen': expected a port from 1 to 65535");
	expect_error(REQUIRED "listen = :110\n",
	    "test.conf:3: bad value ':110' for key 'listen': "
	    "expected host:port, [IPv6]:port or *:port");
	expect_error(REQUIRED "listen = a b:110\n",
	    "test.conf:3: bad value 'a b:110' for key 'listen': "
	    "expected host:port, [IPv6]:port or *:port");
	expect_error(REQUIRED "\nlisten = *:110,,*:111\n",
	    "test.conf:4: bad value '*:110,,*:111' for key 'listen': "
	    "expected a comma-separated list without empty items");
	expect_error(REQUIRED "listen = *:110,\n",
	    "test.conf:3: bad value '*:110,' for key 'listen': "
	    "expected a comma-separated list without empty items");
	expect_error(REQUIRED "listen = *:110\nlisten = *:110\n",
	    "test.conf:4: listen address '*:110' given twice");
}

static void
test_tls_pairing(void **state)
{
	expect_error(REQUIRED "\ntls_cert = /c.pem\n",
	    "test.conf:4: tls_cert is set but tls_key is missing (give both or neither)");
	expect_error(REQUIRED "tls_key = /k.pem\n",
	    "test.conf:3: tls_key is set but tls_cert is missing (give both or neither)");
	expect_error(REQUIRED "listen = *:110\nlisten_tls = *:995\n",
	    "test.conf:4: listen_tls requires tls_cert and tls_key");
	/* TLS files without listen_tls: STLS on the plain port */
	struct config *c = parse_ok(REQUIRED "tls_cert = /c\ntls_key = /k\n");
	assert_string_equal(c->tls_cert, "/c");
	assert_int_equal(c->n_listens, 1);
	config_free(c);
	expect_error(REQUIRED "tls_min_version = TLSv1.1\n",
	    "test.conf:3: bad value 'TLSv1.1' for key 'tls_min_version': expected TLSv1.2 or TLSv1.3");
	c = parse_ok(REQUIRED "tls_min_version = tlsv1.3\n");
	assert_string_equal(c->tls_min_version, "TLSv1.3");
	config_free(c);
}

static void
test_relative_paths(void **state)
{
	struct config *c = NULL;
	char *error = NULL;

	c = parse_ok("users = ./users\nmail = maildir:/m/%u\ntls_cert = certs/c.pem\n"
	    "tls_key = /abs/k.pem\nstate_dir = /run/x\n");
	assert_string_equal(c->users, "/etc/popbox/./users");
	assert_string_equal(c->mail, "maildir:/m/%u");
	assert_string_equal(c->state_dir, "/run/x");
	assert_string_equal(c->tls_cert, "/etc/popbox/certs/c.pem");
	assert_string_equal(c->tls_key, "/abs/k.pem");
	config_free(c);

	c = parse_ok("users = u\nmail = maildir:mail/%u\nstate_dir = state\n");
	assert_string_equal(c->mail, "maildir:/etc/popbox/mail/%u");
	assert_string_equal(c->state_dir, "/etc/popbox/state");
	config_free(c);
	c = parse_ok("users = u\nmail = maildir:~/Maildir\n");
	assert_string_equal(c->mail, "maildir:~/Maildir");
	config_free(c);
	/* '%' in the directory is a literal, escaped for the mail template */
	assert_int_equal(config_parse("/etc/100%/p.conf", "users = u\nmail = maildir:%u\n",
	    &c, &error), 0);
	assert_string_equal(c->mail, "maildir:/etc/100%%/%u");
	assert_string_equal(c->users, "/etc/100%/u");
	config_free(c);

	/* a name without a directory leaves them as written */
	assert_int_equal(config_parse("popboxd.conf", "users = u\nmail = maildir:/m\n",
	    &c, &error), 0);
	assert_string_equal(c->users, "u");
	config_free(c);
	assert_int_equal(config_parse("popboxd.conf", "users = u\nmail = maildir:m/%u\n",
	    &c, &error), 0);
	assert_string_equal(c->mail, "maildir:m/%u");
	config_free(c);

	/* config_load makes them absolute via the file's real directory */
	char dir[] = "/tmp/popbox-test-config-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char *path = xasprintf("%s/popboxd.conf", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs("users = users.txt\nmail = maildir:~/Maildir\n", f);
	fclose(f);
	char *real = realpath(dir, NULL);
	assert_int_equal(config_load(path, &c, &error), 0);
	char *expect = xasprintf("%s/users.txt", real);
	assert_string_equal(c->users, expect);
	assert_string_equal(c->path, path);
	config_free(c);
	free(expect);

	/* and name the file, with line, in errors */
	f = fopen(path, "w");
	fputs("users = u\n\nbogus = 1\n", f);
	fclose(f);
	assert_int_equal(config_load(path, &c, &error), -1);
	expect = xasprintf("%s:3: unknown key 'bogus'", path);
	assert_string_equal(error, expect);
	free(expect);
	free(error);

	/* NUL bytes in a file */
	f = fopen(path, "w");
	fwrite("users = u\nmail = mail\0dir:/x\n", 1, 30, f);
	fclose(f);
	assert_int_equal(config_load(path, &c, &error), -1);
	expect = xasprintf("%s:2: NUL byte in line", path);
	assert_string_equal(error, expect);
	free(expect);
	free(error);

	unlink(path);
	rmdir(dir);
	free(real);
	free(path);

	assert_int_equal(config_load("/nonexistent/popboxd.conf", &c, &error), -1);
	assert_string_equal(error, "/nonexistent/popboxd.conf: cannot open: No such file or directory");
	free(error);
}

/* The size limit (limits_popboxd.h), the same for config_load and the
 * reload's config_load_text; the latter hands back the text it parsed. */
static void
test_file_size_limit(void **state)
{
	char path[] = "/tmp/popbox-test-config-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *head = "users = /u\nmail = maildir:/m/%u\n";
	char *text = xmalloc(POPBOXD_CONFIG_MAX + 2);
	memset(text, '\n', POPBOXD_CONFIG_MAX + 1);
	memcpy(text, head, strlen(head));
	text[POPBOXD_CONFIG_MAX + 1] = '\0';
	assert_int_equal(write(fd, text, POPBOXD_CONFIG_MAX), POPBOXD_CONFIG_MAX);

	struct config *c = NULL;
	char *error = NULL, *parsed = NULL;
	assert_int_equal(config_load_text(path, &c, &parsed, &error), 0);
	assert_int_equal(strlen(parsed), POPBOXD_CONFIG_MAX);
	assert_memory_equal(parsed, text, POPBOXD_CONFIG_MAX);
	assert_string_equal(c->users, "/u");
	config_free(c);
	free(parsed);

	assert_int_equal(write(fd, "\n", 1), 1);
	parsed = NULL;
	assert_int_equal(config_load_text(path, &c, &parsed, &error), -1);
	assert_null(parsed);
	char *expect = xasprintf("%s: file too large (more than %d bytes)", path, POPBOXD_CONFIG_MAX);
	assert_string_equal(error, expect);
	free(error);
	assert_int_equal(config_load(path, &c, &error), -1);
	assert_string_equal(error, expect);
	free(error);
	free(expect);
	free(text);
	close(fd);
	unlink(path);
}

static void
test_syntax(void **state)
{
	/* quotes, blanks, '#' inside values, CRLF, tabs */
	struct config *c = parse_ok(
	    "users=\"/srv/my users#1\"\r\n"
	    "\tmail\t=\t maildir:/var/mail/%u#x  \r\n"
	    "run_as = \" spaced \"\n"
	    "#listen = 1.1.1.1:1\n"
	    "   \n"
	    "state_dir = /x # not a comment");
	assert_string_equal(c->users, "/srv/my users#1");
	assert_string_equal(c->mail, "maildir:/var/mail/%u#x");
	assert_string_equal(c->run_as, " spaced ");
	assert_string_equal(c->state_dir, "/x # not a comment");
	assert_string_equal(c->listens[0].host, "127.0.0.1");
	config_free(c);

	expect_error(REQUIRED "\n# c\nworkers 4\n",
	    "test.conf:5: missing '=' in 'workers 4' (expected key = value)");
	expect_error(REQUIRED " = 4\n", "test.conf:3: missing key before '='");
	expect_error("users = /u\n\n\nfrobnicate = 1\n", "test.conf:4: unknown key 'frobnicate'");
	expect_error("Users = /u\n", "test.conf:1: unknown key 'Users'");
	expect_error("users = /u\nusers = /v\n",
	    "test.conf:2: duplicate key 'users' = '/v' (first set on line 1)");
	expect_error(REQUIRED "workers = 2\n\nworkers = 3\n",
	    "test.conf:5: duplicate key 'workers' = '3' (first set on line 3)");
	expect_error(REQUIRED "run_as =\n", "test.conf:3: empty value for key 'run_as'");
	expect_error(REQUIRED "run_as = \"\"\n", "test.conf:3: empty value for key 'run_as'");
	expect_error(REQUIRED "run_as = \"abc\n",
	    "test.conf:3: bad quoting in value '\"abc' for key 'run_as'");
	expect_error(REQUIRED "run_as = \"a\"b\"\n",
	    "test.conf:3: bad quoting in value '\"a\"b\"' for key 'run_as'");
	expect_error(REQUIRED "run_as = \"\n",
	    "test.conf:3: bad quoting in value '\"' for key 'run_as'");
	/* control characters are refused and never echoed raw */
	expect_error(REQUIRED "run_as = a\001b\n",
	    "test.conf:3: bad value 'a?b' for key 'run_as': expected no control characters");
	expect_error("bo\033gus = 1\n", "test.conf:1: unknown key 'bo?gus'");

	/* over-long values are truncated in messages */
	char text[400];
	memset(text, 0, sizeof(text));
	strcpy(text, REQUIRED "workers = ");
	memset(text + strlen(text), '9', 200);
	struct config *cc = NULL;
	char *error = NULL;
	assert_int_equal(config_parse("t", text, &cc, &error), -1);
	assert_true(strlen(error) < 200);
	assert_non_null(strstr(error, "...' for key 'workers'"));
	free(error);

	/* over-long lines */
	char *long_line = xmalloc(5000 + 64);
	strcpy(long_line, REQUIRED "state_dir = ");
	memset(long_line + strlen(long_line), 'x', 5000);
	long_line[strlen(REQUIRED "state_dir = ") + 5000] = '\0';
	expect_error(long_line, "test.conf:3: line too long (more than 4096 bytes)");
	free(long_line);
}

static void
test_required(void **state)
{
	expect_error("mail = maildir:/m\n", "test.conf: missing required key 'users'");
	expect_error("users = /u\n", "test.conf: missing required key 'mail'");
	expect_error("", "test.conf: missing required key 'users'");
	expect_error("# only comments\n\n", "test.conf: missing required key 'users'");
}

/* users = pam: no file, PLAIN and LOGIN only, the PAM keys. */
static void
test_users_pam(void **state)
{
	struct config *c = parse_ok("users = pam\nmail = maildir:/m/%u\n");
	assert_true(c->passdb_pam);
	assert_string_equal(c->users, "pam");
	assert_string_equal(c->auth_mechanisms, "PLAIN LOGIN");
	assert_string_equal(c->pam_service, "popbox");
	assert_int_equal(c->first_valid_uid, 1000);
	assert_string_equal(c->deny_users, "");
	config_free(c);
	c = parse_ok("users = pam\nmail = maildir:/m/%u\npam_service = pop3\nfirst_valid_uid = 500\n"
	    "deny_users = a, b\ndeny_users = c\nauth_mechanisms = LOGIN\n");
	assert_string_equal(c->pam_service, "pop3");
	assert_int_equal(c->first_valid_uid, 500);
	assert_string_equal(c->deny_users, " a b c ");
	assert_string_equal(c->auth_mechanisms, "LOGIN");
	config_free(c);
	c = parse_ok("users = /u\nmail = maildir:/m/%u\n");
	assert_false(c->passdb_pam);
	config_free(c);
	expect_error("users = pam\nmail = maildir:/m\napop = yes\n",
	    "test.conf: apop = yes needs stored secrets; users = pam has none");
	expect_error("users = pam\nmail = maildir:/m\nauth_mechanisms = PLAIN SCRAM-SHA-1\n",
	    "test.conf: auth_mechanisms: SCRAM-SHA-1 needs stored secrets; users = pam offers PLAIN "
	    "and LOGIN only");
	expect_error("users = pam\nmail = maildir:/m\npam_service = ../x\n",
	    "test.conf:3: bad value '../x' for key 'pam_service': expected a PAM service name "
	    "(letters, digits, '.', '_', '-')");
	expect_error("users = pam\nmail = maildir:/m\nfirst_valid_uid = -1\n",
	    "test.conf:3: bad value '-1' for key 'first_valid_uid': expected a number from 0 to 4294967294");
}

static void
test_mail(void **state)
{
	struct config *c = parse_ok("users = /u\nmail = mbox:/var/mail/%u\n");
	assert_string_equal(c->mail, "mbox:/var/mail/%u");
	assert_int_equal(c->mbox_format, WIRE_FROM_MBOXO);
	assert_int_equal(c->lock_wait, 10);
	config_free(c);
	c = parse_ok("users = /u\nmail = mbox:/var/mail/%u\nmbox_format = mboxrd\nlock_wait = 2m\n");
	assert_int_equal(c->mbox_format, WIRE_FROM_MBOXRD);
	assert_int_equal(c->lock_wait, 120);
	config_free(c);
	expect_error("users = /u\nmail = mbox:/m\nmbox_format = mboxcl2\n",
	    "test.conf:3: bad value 'mboxcl2' for key 'mbox_format': expected mboxo, mboxrd or none");
	expect_error("users = /u\nmail = /var/mail/%u\n",
	    "test.conf:2: bad value '/var/mail/%u' for key 'mail': expected maildir:PATH or mbox:PATH");
	expect_error("users = /u\nmail = maildir:\n",
	    "test.conf:2: bad value 'maildir:' for key 'mail': expected maildir:PATH or mbox:PATH");
	expect_error("users = /u\nmail = maildir:/m/%x\n",
	    "test.conf:2: bad value 'maildir:/m/%x' for key 'mail': expected variables %u, %n, %d or %%");
	expect_error("users = /u\nmail = maildir:/m/%\n",
	    "test.conf:2: bad value 'maildir:/m/%' for key 'mail': expected variables %u, %n, %d or %%");
	expect_error("users = /u\nmail = maildir:/m/~\n",
	    "test.conf:2: bad value 'maildir:/m/~' for key 'mail': expected '~' only at the start of the path");
	expect_error("users = /u\nmail = maildir:~bob/M\n",
	    "test.conf:2: bad value 'maildir:~bob/M' for key 'mail': expected '~' or '~/...' (the user's home)");
	c = parse_ok("users = /u\nmail = maildir:~\n");
	assert_string_equal(c->mail, "maildir:~");
	config_free(c);
	c = parse_ok("users = /u\nmail = maildir:/m/%d/%n/100%%\n");
	config_free(c);
}

static void
test_workers(void **state)
{
	struct config *c = parse_ok(REQUIRED "workers = auto\n");
	assert_int_equal(c->workers, 0);
	config_free(c);
	c = parse_ok(REQUIRED "workers = 1\n");
	assert_int_equal(c->workers, 1);
	config_free(c);
	c = parse_ok(REQUIRED "workers = 64\n");
	assert_int_equal(c->workers, 64);
	config_free(c);
	const char *bad[] = { "0", "65", "-1", "+2", "2x", "auto2", "4294967297" };
	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		char *text = xasprintf(REQUIRED "workers = %s\n", bad[i]);
		char *msg = xasprintf("test.conf:3: bad value '%s' for key 'workers': "
		    "expected auto or a number from 1 to 64", bad[i]);
		expect_error(text, msg);
		free(text);
		free(msg);
	}
}

static void
test_booleans(void **state)
{
	const char *yes[] = { "yes", "true", "on", "1", "YES", "True" };
	const char *no[] = { "no", "false", "off", "0", "No", "OFF" };
	for (size_t i = 0; i < N_ELEMENTS(yes); i++) {
		char *text = xasprintf(REQUIRED "apop = %s\nlog_debug = %s\n", yes[i], yes[i]);
		struct config *c = parse_ok(text);
		assert_true(c->apop);
		assert_true(c->log_debug);
		config_free(c);
		free(text);
		text = xasprintf(REQUIRED "apop = %s\nlog_debug = %s\n", no[i], no[i]);
		c = parse_ok(text);
		assert_false(c->apop);
		assert_false(c->log_debug);
		config_free(c);
		free(text);
	}
	expect_error(REQUIRED "apop = maybe\n",
	    "test.conf:3: bad value 'maybe' for key 'apop': expected yes or no");
	expect_error(REQUIRED "log_debug = 2\n",
	    "test.conf:3: bad value '2' for key 'log_debug': expected yes or no");
}

/* Run a parse with stderr captured into buf (the log goes to stderr). */
static struct config *
parse_capturing_log(const char *text, char *buf, size_t size)
{
	char path[] = "/tmp/popbox-test-log-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	fflush(stderr);
	int saved = dup(2);
	dup2(fd, 2);
	struct config *c = parse_ok(text);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	ssize_t n = pread(fd, buf, size - 1, 0);
	buf[n < 0 ? 0 : n] = '\0';
	close(fd);
	unlink(path);
	return c;
}

static void
test_durations(void **state)
{
	struct {
		const char *text;
		unsigned seconds;
	} ok[] = {
		{ "600", 600 }, { "600s", 600 }, { "10m", 600 }, { "1h", 3600 },
		{ "24h", 86400 }, { "86400", 86400 }, { "1440m", 86400 }, { "1", 1 },
	};
	char log[4096];
	for (size_t i = 0; i < N_ELEMENTS(ok); i++) {
		char *text = xasprintf(REQUIRED "idle_timeout = %s\nlogin_timeout = %s\n",
		    ok[i].text, ok[i].text);
		struct config *c = parse_capturing_log(text, log, sizeof(log));
		assert_int_equal(c->idle_timeout, ok[i].seconds);
		assert_int_equal(c->login_timeout, ok[i].seconds);
		config_free(c);
		free(text);
	}
	const char *bad[] = { "0", "0m", "-5", "10x", "m", "25h", "86401", "1.5h", "10 m",
	    "99999999999999999999", "1d" };
	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		char *text = xasprintf(REQUIRED "login_timeout = %s\n", bad[i]);
		char *msg = xasprintf("test.conf:3: bad value '%s' for key 'login_timeout': "
		    "expected a duration of 1 second to 24 hours: seconds, or a number with s, m or h",
		    bad[i]);
		expect_error(text, msg);
		free(text);
		free(msg);
	}
}

static void
test_idle_timeout_warning(void **state)
{
	char log[4096];
	struct config *c = parse_capturing_log(REQUIRED "\nidle_timeout = 60\n", log, sizeof(log));
	assert_int_equal(c->idle_timeout, 60);
	assert_non_null(strstr(log,
	    "/etc/popbox/popboxd.conf:4: idle_timeout 60 s is below the 10 minutes RFC 1939"));
	config_free(c);

	c = parse_capturing_log(REQUIRED "idle_timeout = 10m\n", log, sizeof(log));
	assert_string_equal(log, "");
	config_free(c);
}

static void
test_limits(void **state)
{
	struct config *c = parse_ok(REQUIRED "max_connections = 1\n"
	    "max_connections_per_ip = 1000000\nmax_bad_commands = 10000\n");
	assert_int_equal(c->max_connections, 1);
	assert_int_equal(c->max_connections_per_ip, 1000000);
	assert_int_equal(c->max_bad_commands, 10000);
	config_free(c);
	expect_error(REQUIRED "max_connections = 0\n",
	    "test.conf:3: bad value '0' for key 'max_connections': expected a number from 1 to 1000000");
	expect_error(REQUIRED "max_connections_per_ip = lots\n",
	    "test.conf:3: bad value 'lots' for key 'max_connections_per_ip': "
	    "expected a number from 1 to 1000000");
	expect_error(REQUIRED "max_bad_commands = 10001\n",
	    "test.conf:3: bad value '10001' for key 'max_bad_commands': "
	    "expected a number from 1 to 10000");
	expect_error_prefix(REQUIRED "max_connections = 1e3\n", "test.conf:3: bad value '1e3'");
	c = parse_ok(REQUIRED "auth_penalty_ipv6_prefix = 32\n");
	assert_int_equal(c->auth_penalty_ipv6_prefix, 32);
	config_free(c);
	c = parse_ok(REQUIRED "auth_penalty_ipv6_prefix = 128\n");
	assert_int_equal(c->auth_penalty_ipv6_prefix, 128);
	config_free(c);
	expect_error(REQUIRED "max_auth_failures = 0\n",
	    "test.conf:3: bad value '0' for key 'max_auth_failures': expected a number from 1 to 1000");
	expect_error(REQUIRED "auth_penalty_ipv6_prefix = 31\n",
	    "test.conf:3: bad value '31' for key 'auth_penalty_ipv6_prefix': "
	    "expected a number from 32 to 128");
	expect_error(REQUIRED "auth_penalty_ipv6_prefix = 129\n",
	    "test.conf:3: bad value '129' for key 'auth_penalty_ipv6_prefix': "
	    "expected a number from 32 to 128");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_mail_in_keys),
		cmocka_unit_test(test_lmtp_keys),
		cmocka_unit_test(test_every_key),
		cmocka_unit_test(test_plaintext_auth_values),
		cmocka_unit_test(test_listen_lists),
		cmocka_unit_test(test_listen_default_with_tls),
		cmocka_unit_test(test_listen_errors),
		cmocka_unit_test(test_tls_pairing),
		cmocka_unit_test(test_relative_paths),
		cmocka_unit_test(test_file_size_limit),
		cmocka_unit_test(test_syntax),
		cmocka_unit_test(test_required),
		cmocka_unit_test(test_mail),
		cmocka_unit_test(test_users_pam),
		cmocka_unit_test(test_workers),
		cmocka_unit_test(test_booleans),
		cmocka_unit_test(test_durations),
		cmocka_unit_test(test_idle_timeout_warning),
		cmocka_unit_test(test_limits),
	};
	log_init("test_config", true, false);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

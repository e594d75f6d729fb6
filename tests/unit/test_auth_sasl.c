/* SASL exchanges of the auth process (src/server/auth_sasl.c) against a
 * users file through the passdb interface, driven by GNU SASL's client side
 * where the mechanism needs one (SCRAM): outcomes, failure reasons, the
 * LOGIN initial response, SCRAM from a plaintext and from a stored secret,
 * and the fake salts for unknown users. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gsasl.h>

#include "common/base64.h"
#include "common/util.h"
#include "server/auth_sasl.h"

static struct auth_sasl *sasl;
static struct passdb_ref *users;
static Gsasl *client_ctx;

static int
setup(void **state)
{
	char path[] = "/tmp/popbox-test-sasl-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	char *scram = scram_secret_make("scrampw", "SCRAM-SHA-256", 4096,
	    (const unsigned char *)"saltsalt", 8, NULL);
	char *text = xasprintf("alice:{PLAIN}secret\nbob:%s\n", scram);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	char *error = NULL;
	struct passdb *db = passdb_passwdfile.load(path, fd, &error);
	assert_non_null(db);
	close(fd);
	unlink(path);
	free(text);
	free(scram);
	users = passdb_ref_new(&passdb_passwdfile, db);
	sasl = auth_sasl_new(NULL);
	assert_int_equal(gsasl_init(&client_ctx), GSASL_OK);
	return 0;
}

static int
teardown(void **state)
{
	passdb_ref_release(users);
	auth_sasl_free(sasl);
	gsasl_done(client_ctx);
	return 0;
}

static char *
b64(const char *s, size_t len)
{
	return base64_encode(s, len);
}

/* One server step and its verdict. */
static enum sasl_outcome
step(struct sasl_conv *c, const char *input, char **output_r, const struct passwd_entry **e_r,
    const char **why_r)
{
	const char *user;
	int rc = auth_sasl_conv_step(c, input, output_r);
	return auth_sasl_conv_outcome(c, rc, e_r, &user, why_r);
}

static void
test_plain(void **state)
{
	const struct passwd_entry *e;
	const char *why;
	char *out, *in;

	struct sasl_conv *c = auth_sasl_conv_new(sasl, "PLAIN", users, NULL, NULL);
	assert_non_null(c);
	in = b64("\0alice\0secret", 13);
	assert_int_equal(step(c, in, &out, &e, &why), SASL_OUTCOME_SUCCESS);
	assert_string_equal(e->user, "alice");
	free(in);
	free(out);
	auth_sasl_conv_free(c);

	c = auth_sasl_conv_new(sasl, "PLAIN", users, "", "");
	in = b64("\0alice\0wrong", 12);
	assert_int_equal(step(c, in, &out, &e, &why), SASL_OUTCOME_FAILURE);
	assert_null(e);
	free(in);
	free(out);
	auth_sasl_conv_free(c);

	c = auth_sasl_conv_new(sasl, "PLAIN", users, NULL, NULL);
	in = b64("\0nobody\0secret", 14);
	assert_int_equal(step(c, in, &out, &e, &why), SASL_OUTCOME_FAILURE);
	assert_string_equal(why, "unknown user (SASL)");
	free(in);
	free(out);
	auth_sasl_conv_free(c);

	/* another authorization identity is not supported */
	c = auth_sasl_conv_new(sasl, "PLAIN", users, NULL, NULL);
	in = b64("bob\0alice\0secret", 16);
	assert_int_equal(step(c, in, &out, &e, &why), SASL_OUTCOME_FAILURE);
	free(in);
	free(out);
	auth_sasl_conv_free(c);

	/* no initial response: an empty challenge first */
	c = auth_sasl_conv_new(sasl, "PLAIN", users, NULL, NULL);
	assert_int_equal(step(c, NULL, &out, &e, &why), SASL_OUTCOME_CONTINUE);
	free(out);
	in = b64("\0alice\0secret", 13);
	assert_int_equal(step(c, in, &out, &e, &why), SASL_OUTCOME_SUCCESS);
	free(in);
	free(out);
	auth_sasl_conv_free(c);
}

/* The users file's passdb, counting password checks. */
static unsigned verify_calls;
static struct passdb_ops counting_ops;

static enum password_result
counting_verify(const struct passdb *db, const struct passwd_entry *e, const char *password)
{
	verify_calls++;
	return passdb_passwdfile.verify(db, e, password);
}

/* PLAIN with an authorization identity other than the user costs one
 * password check for a known user, as for an unknown one (which gets the
 * dummy check): refused before the check, a known user was answered
 * sooner, which told that it exists. */
static void
test_plain_authzid_costs_a_check(void **state)
{
	static const struct {
		const char *in;
		size_t len;
	} cases[] = {
		{ "bob\0alice\0secret", 16 },     /* known, right password */
		{ "bob\0alice\0wrong", 15 },      /* known, wrong password */
		{ "bob\0nobody\0secret", 17 },    /* unknown */
	};
	const struct passwd_entry *e;
	const char *why;
	char *out, *in;

	counting_ops = passdb_passwdfile;
	counting_ops.verify = counting_verify;
	/* shares users' database: freed by itself, never released */
	struct passdb_ref *counted = passdb_ref_new(&counting_ops, users->db);
	for (size_t k = 0; k < N_ELEMENTS(cases); k++) {
		struct sasl_conv *c = auth_sasl_conv_new(sasl, "PLAIN", counted, NULL, NULL);
		verify_calls = 0;
		in = b64(cases[k].in, cases[k].len);
		assert_int_equal(step(c, in, &out, &e, &why), SASL_OUTCOME_FAILURE);
		assert_int_equal(verify_calls, 1);
		free(in);
		free(out);
		auth_sasl_conv_free(c);
	}
	free(counted);
}

static void
test_login_initial_response(void **state)
{
	const struct passwd_entry *e;
	const char *why;
	char *out, *in;
	/* the initial response is the user name; then the password */
	struct sasl_conv *c = auth_sasl_conv_new(sasl, "LOGIN", users, NULL, NULL);
	in = b64("alice", 5);
	assert_int_equal(step(c, in, &out, &e, &why), SASL_OUTCOME_CONTINUE);
	free(in);
	unsigned char *challenge;
	size_t clen;
	assert_true(base64_decode(out, strlen(out), &challenge, &clen));
	assert_memory_equal(challenge, "Password", 8);
	free(challenge);
	free(out);
	in = b64("secret", 6);
	assert_int_equal(step(c, in, &out, &e, &why), SASL_OUTCOME_SUCCESS);
	assert_string_equal(e->user, "alice");
	free(in);
	free(out);
	auth_sasl_conv_free(c);
}

/* A whole SCRAM exchange with GNU SASL's client; returns the verdict and,
 * through salt_r (may be NULL), the salt the server announced. */
static enum sasl_outcome
scram_login(const char *mech, const char *user, const char *password, char **salt_r,
    const char **why_r)
{
	Gsasl_session *client;
	assert_int_equal(gsasl_client_start(client_ctx, mech, &client), GSASL_OK);
	gsasl_property_set(client, GSASL_AUTHID, user);
	gsasl_property_set(client, GSASL_PASSWORD, password);
	struct sasl_conv *c = auth_sasl_conv_new(sasl, mech, users, NULL, NULL);
	assert_non_null(c);
	const struct passwd_entry *e;
	char *to_server = NULL, *to_client = NULL;
	enum sasl_outcome o = SASL_OUTCOME_CONTINUE;
	int crc = gsasl_step64(client, "", &to_server);
	for (int round = 0; round < 5 && o == SASL_OUTCOME_CONTINUE; round++) {
		assert_true(crc == GSASL_OK || crc == GSASL_NEEDS_MORE);
		o = step(c, to_server, &to_client, &e, why_r);
		free(to_server);
		to_server = NULL;
		if (round == 0 && salt_r != NULL) {
			unsigned char *first;
			size_t n;
			assert_true(base64_decode(to_client, strlen(to_client), &first, &n));
			char *s = xstrndup((const char *)first, n);
			char *at = strstr(s, ",s=");
			assert_non_null(at);
			*salt_r = xstrndup(at + 3, strcspn(at + 3, ","));
			free(s);
			free(first);
		}
		if (o == SASL_OUTCOME_CONTINUE) {
			crc = gsasl_step64(client, to_client, &to_server);
			if (crc != GSASL_OK && crc != GSASL_NEEDS_MORE) {
				o = SASL_OUTCOME_FAILURE;   /* the client refused the server */
				*why_r = "client";
			}
		}
		free(to_client);
		to_client = NULL;
	}
	if (o == SASL_OUTCOME_SUCCESS)
		assert_string_equal(e->user, user);
	free(to_server);
	auth_sasl_conv_free(c);
	gsasl_finish(client);
	return o;
}

static void
test_scram(void **state)
{
	const char *why = NULL;
	/* a stored SCRAM secret, and SCRAM derived from a {PLAIN} secret */
	assert_int_equal(scram_login("SCRAM-SHA-256", "bob", "scrampw", NULL, &why),
	    SASL_OUTCOME_SUCCESS);
	assert_int_equal(scram_login("SCRAM-SHA-256", "alice", "secret", NULL, &why),
	    SASL_OUTCOME_SUCCESS);
	assert_int_equal(scram_login("SCRAM-SHA-1", "alice", "secret", NULL, &why),
	    SASL_OUTCOME_SUCCESS);
	assert_int_equal(scram_login("SCRAM-SHA-256", "bob", "wrong", NULL, &why),
	    SASL_OUTCOME_FAILURE);
	/* bob's secret is for SHA-256 only: SHA-1 gets a fake and fails */
	assert_int_equal(scram_login("SCRAM-SHA-1", "bob", "scrampw", NULL, &why),
	    SASL_OUTCOME_FAILURE);
}

static void
test_scram_unknown_user(void **state)
{
	/* An unknown user gets through to the proof with a salt that is the
	 * same every time for that name and differs between names. */
	char *salt1 = NULL, *salt2 = NULL, *salt3 = NULL;
	const char *why = NULL;
	assert_int_equal(scram_login("SCRAM-SHA-256", "nobody", "x", &salt1, &why),
	    SASL_OUTCOME_FAILURE);
	assert_string_equal(why, "unknown user (SASL)");
	assert_int_equal(scram_login("SCRAM-SHA-256", "nobody", "y", &salt2, &why),
	    SASL_OUTCOME_FAILURE);
	assert_int_equal(scram_login("SCRAM-SHA-256", "someone", "x", &salt3, &why),
	    SASL_OUTCOME_FAILURE);
	assert_string_equal(salt1, salt2);
	assert_string_not_equal(salt1, salt3);
	free(salt1);
	free(salt2);
	free(salt3);
}

/* The first challenge looks the same for every account: a {PLAIN} user
 * and an unknown user get a salt of the length of the stored secrets'
 * (bob's: 8 octets), stable per name (gsasl alone gives {PLAIN} users a
 * fresh 12-octet salt each time), and the same with another instance that
 * has the same key (a restart). */
static void
test_scram_salts_alike(void **state)
{
	char *a1 = NULL, *a2 = NULL, *b = NULL, *u = NULL, *a3 = NULL, *u3 = NULL;
	const char *why = NULL;
	assert_int_equal(scram_login("SCRAM-SHA-256", "alice", "secret", &a1, &why),
	    SASL_OUTCOME_SUCCESS);
	assert_int_equal(scram_login("SCRAM-SHA-256", "alice", "secret", &a2, &why),
	    SASL_OUTCOME_SUCCESS);
	assert_int_equal(scram_login("SCRAM-SHA-256", "bob", "scrampw", &b, &why),
	    SASL_OUTCOME_SUCCESS);
	assert_int_equal(scram_login("SCRAM-SHA-256", "nobody", "x", &u, &why),
	    SASL_OUTCOME_FAILURE);
	assert_string_equal(a1, a2);
	assert_int_equal(strlen(a1), strlen(b));
	assert_int_equal(strlen(u), strlen(b));

	unsigned char key[AUTH_SASL_KEY_SIZE];
	memset(key, 7, sizeof(key));
	struct auth_sasl *saved = sasl;
	sasl = auth_sasl_new(key);
	assert_int_equal(scram_login("SCRAM-SHA-256", "alice", "secret", &a3, &why),
	    SASL_OUTCOME_SUCCESS);
	assert_int_equal(scram_login("SCRAM-SHA-256", "nobody", "x", &u3, &why),
	    SASL_OUTCOME_FAILURE);
	auth_sasl_free(sasl);
	char *a4 = NULL, *u4 = NULL;
	sasl = auth_sasl_new(key);
	assert_int_equal(scram_login("SCRAM-SHA-256", "alice", "secret", &a4, &why),
	    SASL_OUTCOME_SUCCESS);
	assert_int_equal(scram_login("SCRAM-SHA-256", "nobody", "x", &u4, &why),
	    SASL_OUTCOME_FAILURE);
	auth_sasl_free(sasl);
	sasl = saved;
	assert_string_equal(a3, a4);
	assert_string_equal(u3, u4);
	assert_string_not_equal(a3, a1);   /* another key, other salts */
	free(a1);
	free(a2);
	free(a3);
	free(a4);
	free(b);
	free(u);
	free(u3);
	free(u4);
}

static void
test_unknown_mechanism(void **state)
{
	assert_null(auth_sasl_conv_new(sasl, "NO-SUCH-MECH", users, NULL, NULL));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain),
		cmocka_unit_test(test_plain_authzid_costs_a_check),
		cmocka_unit_test(test_login_initial_response),
		cmocka_unit_test(test_scram),
		cmocka_unit_test(test_scram_unknown_user),
		cmocka_unit_test(test_scram_salts_alike),
		cmocka_unit_test(test_unknown_mechanism),
	};
	return cmocka_run_group_tests_name("auth_sasl", tests, setup, teardown);
}

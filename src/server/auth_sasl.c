/* SASL exchanges with GNU SASL. Contract in auth_sasl.h. */
#include "server/auth_sasl.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gsasl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "common/base64.h"
#include "common/log.h"
#include "common/scram.h"
#include "common/util.h"
#include "server/devices.h"

struct auth_sasl {
	Gsasl *gsasl;
	/* Key of the salts announced for users without a stored SCRAM secret
	 * (auth_sasl.h): kept in state_dir, so the salts survive restarts. */
	unsigned char salt_key[AUTH_SASL_KEY_SIZE];
};

struct sasl_conv {
	struct auth_sasl *sasl;
	Gsasl_session *sctx;
	struct passdb_ref *ref;
	char mech[32];
	char scram_mech[32];    /* "SCRAM-SHA-256" for scram-sha-256[-plus], else "" */
	unsigned steps;
	/* What SCRAM announces for users without a stored secret of the
	 * mechanism (passdb_ops.scram_defaults). */
	unsigned iterations;
	size_t salt_len;
	/* Users without a secret get keys made by PBKDF2 (the work a {PLAIN}
	 * user costs) where most users are {PLAIN}, else random ones. */
	bool fake_keys_by_pbkdf2;
	bool fake_keys_made;
	unsigned char fake_stored[SCRAM_KEY_MAX], fake_server[SCRAM_KEY_MAX];
	/* Set by the callback, on the pool thread of the current step. */
	bool validated;         /* PLAIN/LOGIN: password checked by our callback */
	bool unknown_user;
	/* Devices (devices.h): the authentication id is split at the last
	 * separator ('\0': never), the users file sees only the part before. */
	char device_separator;
	char *base;             /* the authid without its device, cached */
	char *base_of;          /* the authid base was made from */
};

/* The users-file name in authid: the part before the last device
 * separator. SCRAM keeps the whole name in the exchange (both sides prove
 * over "n=alice#phone"), only the lookup strips it. */
static const char *
conv_base(struct sasl_conv *c, const char *authid)
{
	size_t ulen;
	if (authid == NULL)
		return NULL;
	if (c->base_of != NULL && strcmp(c->base_of, authid) == 0)
		return c->base;
	free(c->base);
	free(c->base_of);
	c->base_of = xstrdup(authid);
	c->base = device_split(authid, c->device_separator, &ulen) != NULL ?
	    xstrndup(authid, ulen) : xstrdup(authid);
	return c->base;
}

static char *
hex_to_base64(const char *hex)
{
	unsigned char bin[64];
	size_t n = strlen(hex) / 2;
	if (n > sizeof(bin))
		n = sizeof(bin);
	for (size_t i = 0; i < n; i++) {
		unsigned v = 0;
		sscanf(hex + 2 * i, "%2x", &v);
		bin[i] = (unsigned char)v;
	}
	return base64_encode(bin, n);
}

/* The salt announced to authid when it has no stored secret of this
 * mechanism: HMAC-SHA-256 blocks of the salt key over a block counter, the
 * mechanism and the name; salt_len octets, base64 (malloc'd). The same for
 * a name every time and across restarts, different for each mechanism (as
 * a stored secret serves one), unguessable without the key. */
static char *
scram_salt(const struct sasl_conv *c, const char *authid)
{
	unsigned char salt[SCRAM_SALT_MAX], mac[EVP_MAX_MD_SIZE];
	size_t len = c->salt_len > 0 && c->salt_len <= sizeof(salt) ? c->salt_len : SCRAM_SALT_SIZE;
	size_t mlen = strlen(c->scram_mech) + 1, alen = strlen(authid);
	unsigned char *msg = xmalloc(1 + mlen + alen);
	memcpy(msg + 1, c->scram_mech, mlen);
	memcpy(msg + 1 + mlen, authid, alen);
	for (size_t done = 0, block = 0; done < len; block++) {
		unsigned int maclen = 0;
		msg[0] = (unsigned char)block;
		if (HMAC(EVP_sha256(), c->sasl->salt_key, sizeof(c->sasl->salt_key), msg,
		    1 + mlen + alen, mac, &maclen) == NULL)
			fatalx("HMAC failed");
		size_t n = len - done < maclen ? len - done : maclen;
		memcpy(salt + done, mac, n);
		done += n;
	}
	free(msg);
	return base64_encode(salt, len);
}

/* The keys of a user without a secret: nobody's password matches them. */
static void
scram_fake_keys(struct sasl_conv *c, const char *authid)
{
	size_t klen = scram_mech_key_len(c->scram_mech);
	if (c->fake_keys_made)
		return;
	c->fake_keys_made = true;
	if (c->fake_keys_by_pbkdf2) {
		unsigned char rnd[16], salt[SCRAM_SALT_MAX];
		char password[2 * sizeof(rnd) + 1], *error = NULL;
		char *salt_b64 = scram_salt(c, authid);
		unsigned char *salt_bin = NULL;
		size_t salt_n = 0;
		RAND_bytes(rnd, sizeof(rnd));
		for (size_t i = 0; i < sizeof(rnd); i++)
			snprintf(password + 2 * i, 3, "%02x", rnd[i]);
		if (base64_decode(salt_b64, strlen(salt_b64), &salt_bin, &salt_n) && salt_n <= sizeof(salt) &&
		    scram_derive_keys(c->scram_mech, password, salt_bin, salt_n, c->iterations,
		    c->fake_stored, c->fake_server, &error) == 0) {
			free(salt_b64);
			free(salt_bin);
			secure_wipe(password, sizeof(password));
			return;
		}
		free(error);
		free(salt_b64);
		free(salt_bin);
		secure_wipe(password, sizeof(password));
	}
	RAND_bytes(c->fake_stored, (int)klen);
	RAND_bytes(c->fake_server, (int)klen);
}

/* For a user who does not exist (or has no usable SCRAM secret of this
 * mechanism), answer like for a user with a stored secret: the usual
 * iteration count, a salt of the usual length that is stable per user name,
 * keys nobody knows; the exchange fails only at the proof. */
static int
scram_fake(struct sasl_conv *c, Gsasl_property prop, const char *authid)
{
	char it[16], *s;
	switch (prop) {
	case GSASL_SCRAM_ITER:
		snprintf(it, sizeof(it), "%u", c->iterations);
		gsasl_property_set(c->sctx, prop, it);
		return GSASL_OK;
	case GSASL_SCRAM_SALT:
		s = scram_salt(c, authid);
		gsasl_property_set(c->sctx, prop, s);
		free(s);
		return GSASL_OK;
	case GSASL_SCRAM_STOREDKEY:
	case GSASL_SCRAM_SERVERKEY:
		scram_fake_keys(c, authid);
		s = base64_encode(prop == GSASL_SCRAM_STOREDKEY ? c->fake_stored : c->fake_server,
		    scram_mech_key_len(c->scram_mech));
		gsasl_property_set(c->sctx, prop, s);
		free(s);
		return GSASL_OK;
	default:
		return GSASL_NO_CALLBACK;
	}
}

/* A SCRAM property from the user's stored SCRAM secret, or a fake one. */
static int
scram_property(struct sasl_conv *c, Gsasl_property prop, const char *authid,
    const struct passwd_entry *e)
{
	const struct passdb_ops *ops = c->ref->ops;
	struct scram_secret sec;
	if (e == NULL || ops->scram_secret(e, &sec) < 0) {
		c->unknown_user = e == NULL;
		return scram_fake(c, prop, authid);
	}
	/* The secret serves its own mechanism and that with -PLUS. */
	size_t n = strlen(sec.mech);
	bool match = strncasecmp(sec.mech, c->mech, n) == 0 &&
	    (c->mech[n] == '\0' || strcasecmp(c->mech + n, "-PLUS") == 0);
	int rc = GSASL_OK;
	if (!match) {
		rc = scram_fake(c, prop, authid);
	} else if (prop == GSASL_SCRAM_ITER) {
		char it[16];
		snprintf(it, sizeof(it), "%u", sec.iterations);
		gsasl_property_set(c->sctx, prop, it);
	} else if (prop == GSASL_SCRAM_SALT) {
		gsasl_property_set(c->sctx, prop, sec.salt_b64);
	} else {
		/* GNU SASL 2.2 takes the keys base64-encoded, whatever its
		 * header says (checked against libgsasl 2.2.0). */
		char *b64 = hex_to_base64(prop == GSASL_SCRAM_STOREDKEY ? sec.stored_key_hex
		    : sec.server_key_hex);
		gsasl_property_set(c->sctx, prop, b64);
		free(b64);
	}
	scram_secret_clear(&sec);
	return rc;
}

/* Runs on a pool thread inside gsasl_step64(); reads only the conversation and
 * its (immutable, reference-held) users database. */
static int
sasl_callback(Gsasl *ctx, Gsasl_session *sctx, Gsasl_property prop)
{
	struct sasl_conv *c = gsasl_session_hook_get(sctx);
	const struct passdb_ops *ops = c->ref->ops;
	const char *authid = gsasl_property_fast(sctx, GSASL_AUTHID);
	const char *base = conv_base(c, authid);
	const struct passwd_entry *e = base ? ops->lookup(c->ref->db, base) : NULL;

	switch (prop) {
	case GSASL_VALIDATE_SIMPLE: {
		const char *pw = gsasl_property_fast(sctx, GSASL_PASSWORD);
		const char *authzid = gsasl_property_fast(sctx, GSASL_AUTHZID);
		if (authid == NULL || pw == NULL)
			return GSASL_AUTHENTICATION_ERROR;
		if (e == NULL) {
			(void)ops->verify(c->ref->db, NULL, pw);   /* same time as a real check */
			c->unknown_user = true;
			return GSASL_AUTHENTICATION_ERROR;
		}
		/* The password first, whatever the authzid: refusing another
		 * authzid before the check would answer a known user sooner
		 * than an unknown one (which costs the dummy check). */
		bool ok = ops->verify(c->ref->db, e, pw) == PASSWORD_OK;
		if (!ok || (authzid != NULL && authzid[0] != '\0' && strcmp(authzid, authid) != 0))
			return GSASL_AUTHENTICATION_ERROR;
		c->validated = true;
		return GSASL_OK;
	}
	case GSASL_PASSWORD: {
		/* CRAM-MD5, and SCRAM for users with a {PLAIN} secret. */
		const char *plain = e ? ops->plaintext(e) : NULL;
		if (plain == NULL) {
			c->unknown_user = e == NULL;
			return GSASL_NO_CALLBACK;
		}
		gsasl_property_set(sctx, prop, plain);
		return GSASL_OK;
	}
	case GSASL_SCRAM_ITER:
	case GSASL_SCRAM_SALT:
	case GSASL_SCRAM_STOREDKEY:
	case GSASL_SCRAM_SERVERKEY:
		if (authid == NULL)
			return GSASL_NO_CALLBACK;
		if (e != NULL && ops->plaintext(e) != NULL) {
			/* gsasl derives the keys from GSASL_PASSWORD, with the
			 * count and salt given here: left to itself it would
			 * announce a fresh random salt of its own length each
			 * time, unlike every other account. */
			if (prop == GSASL_SCRAM_ITER || prop == GSASL_SCRAM_SALT)
				return scram_fake(c, prop, base);
			return GSASL_NO_CALLBACK;
		}
		/* The fake salt of the user, not of user#device: else two
		 * devices of one unknown name would get different salts, and
		 * of a real user the same one. */
		return scram_property(c, prop, base, e);
	default:
		return GSASL_NO_CALLBACK;
	}
}

struct auth_sasl *
auth_sasl_new(const unsigned char *salt_key)
{
	struct auth_sasl *sasl = xcalloc(1, sizeof(*sasl));
	if (gsasl_init(&sasl->gsasl) != GSASL_OK)
		fatalx("GNU SASL initialisation failed");
	gsasl_callback_set(sasl->gsasl, sasl_callback);
	if (salt_key != NULL)
		memcpy(sasl->salt_key, salt_key, sizeof(sasl->salt_key));
	else if (RAND_bytes(sasl->salt_key, sizeof(sasl->salt_key)) != 1)
		fatalx("no randomness");
	return sasl;
}

void
auth_sasl_free(struct auth_sasl *sasl)
{
	if (sasl == NULL)
		return;
	gsasl_done(sasl->gsasl);
	secure_wipe(sasl->salt_key, sizeof(sasl->salt_key));
	free(sasl);
}

struct sasl_conv *
auth_sasl_conv_new(struct auth_sasl *sasl, const char *mech, struct passdb_ref *ref,
    const char *cb_exporter, const char *cb_unique)
{
	struct sasl_conv *c = xcalloc(1, sizeof(*c));
	if (gsasl_server_start(sasl->gsasl, mech, &c->sctx) != GSASL_OK) {
		free(c);
		return NULL;
	}
	c->sasl = sasl;
	c->ref = passdb_ref_hold(ref);
	snprintf(c->mech, sizeof(c->mech), "%s", mech);
	if (strncasecmp(mech, "SCRAM-", 6) == 0) {
		size_t n = strlen(c->mech);
		if (n > 5 && strcasecmp(c->mech + n - 5, "-PLUS") == 0)
			n -= 5;
		for (size_t i = 0; i < n && i + 1 < sizeof(c->scram_mech); i++)
			c->scram_mech[i] = (char)toupper((unsigned char)c->mech[i]);
	}
	ref->ops->scram_defaults(ref->db, &c->iterations, &c->salt_len);
	c->fake_keys_by_pbkdf2 = ref->ops->verify_is_cheap(ref->db, NULL);
	gsasl_session_hook_set(c->sctx, c);
	if (cb_exporter != NULL && cb_exporter[0] != '\0')
		gsasl_property_set(c->sctx, GSASL_CB_TLS_EXPORTER, cb_exporter);
	if (cb_unique != NULL && cb_unique[0] != '\0')
		gsasl_property_set(c->sctx, GSASL_CB_TLS_UNIQUE, cb_unique);
	return c;
}

const char *
auth_sasl_conv_user(const struct sasl_conv *c)
{
	const char *authid = gsasl_property_fast(c->sctx, GSASL_AUTHID);
	return authid != NULL ? conv_base((struct sasl_conv *)c, authid) : "";
}

void
auth_sasl_conv_set_device_separator(struct sasl_conv *c, char sep)
{
	c->device_separator = sep;
}

const char *
auth_sasl_conv_device(const struct sasl_conv *c)
{
	const char *authid = gsasl_property_fast(c->sctx, GSASL_AUTHID);
	size_t ulen;
	const char *dev = authid != NULL ? device_split(authid, c->device_separator, &ulen) : NULL;
	return dev != NULL ? dev - 1 : "";   /* with its separator */
}

void
auth_sasl_conv_free(struct sasl_conv *c)
{
	if (c == NULL)
		return;
	secure_wipe(c->fake_stored, sizeof(c->fake_stored));
	secure_wipe(c->fake_server, sizeof(c->fake_server));
	gsasl_finish(c->sctx);
	passdb_ref_release(c->ref);
	free(c->base);
	free(c->base_of);
	free(c);
}

int
auth_sasl_conv_step(struct sasl_conv *c, const char *input, char **output_r)
{
	*output_r = NULL;
	if (c->steps++ == 0 && input != NULL && input[0] != '\0' &&
	    strcasecmp(c->mech, "LOGIN") == 0) {
		/* GNU SASL's LOGIN ignores input at its first step; an initial
		 * response is the user name (as Dovecot takes it), so feed it
		 * to the second step. */
		char *skip = NULL;
		int rc = gsasl_step64(c->sctx, "", &skip);
		free(skip);
		if (rc != GSASL_NEEDS_MORE)
			return rc;
	}
	return gsasl_step64(c->sctx, input ? input : "", output_r);
}

enum sasl_outcome
auth_sasl_conv_outcome(struct sasl_conv *c, int rc, const struct passwd_entry **entry_r,
    const char **user_r, const char **why_r)
{
	const char *authid = gsasl_property_fast(c->sctx, GSASL_AUTHID);
	const char *authzid = gsasl_property_fast(c->sctx, GSASL_AUTHZID);
	const char *base = conv_base(c, authid);
	*entry_r = NULL;
	*user_r = base ? base : "";
	*why_r = NULL;
	if (rc == GSASL_NEEDS_MORE)
		return SASL_OUTCOME_CONTINUE;
	if (rc != GSASL_OK) {
		*why_r = c->unknown_user ? "unknown user (SASL)" : gsasl_strerror(rc);
		return SASL_OUTCOME_FAILURE;
	}
	const struct passwd_entry *e = base ? c->ref->ops->lookup(c->ref->db, base) : NULL;
	if (e == NULL || c->unknown_user) {
		*why_r = "unknown user (SASL)";
		return SASL_OUTCOME_FAILURE;
	}
	if (authzid != NULL && authzid[0] != '\0' && strcmp(authzid, authid) != 0) {
		*why_r = "authorization identity differs from the user (not supported)";
		return SASL_OUTCOME_FAILURE;
	}
	if ((strcasecmp(c->mech, "PLAIN") == 0 || strcasecmp(c->mech, "LOGIN") == 0) &&
	    !c->validated) {
		*why_r = "password not validated";
		return SASL_OUTCOME_FAILURE;
	}
	*entry_r = e;
	return SASL_OUTCOME_SUCCESS;
}

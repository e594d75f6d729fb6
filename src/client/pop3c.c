#include "client/pop3c.h"
#include "common/base64.h"
#include "common/log.h"
#include "common/scram.h"
#include "common/util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gsasl.h>
#include <jansson.h>
#include <openssl/evp.h>

/* RFC 2449 §4 / RFC 5034 §4: a command line is at most 255 octets incl.
 * CRLF; a longer SASL initial response is sent after an empty challenge. */
#define POP3_MAX_COMMAND 255
/* A SASL challenge or response line: RFC 5034 does not bound it; XOAUTH2
 * tokens run to a few KB. Anything longer is refused. */
#define POP3_MAX_SASL_LINE 16384
/* Auto mode tries at most this many mechanisms (a SCRAM refusal because
 * the server has no SCRAM secret is common; endless retries are not). */
#define AUTH_MAX_ATTEMPTS 3
/* Mechanisms auth = auto knows (choose_mechanisms). */
#define AUTH_ORDER_MAX 8

static void
trace(const char *dir, const char *line, int secret_from)
{
	char clean[600];
	if (!fetch_trace)
		return;
	size_t len = strlen(line);
	if (secret_from >= 0 && (size_t)secret_from < len)
		len = (size_t)secret_from;
	str_sanitize(clean, sizeof(clean), line, len);
	fprintf(stderr, "%s %s%s\n", dir, clean, secret_from >= 0 ? "********" : "");
}

bool
pop3c_send(struct pop3c *s, const char *line, int secret_from, struct fetch_error *err)
{
	size_t len = strlen(line);
	char *buf = xmalloc(len + 3);
	memcpy(buf, line, len);
	memcpy(buf + len, "\r\n", 3);
	trace("C:", line, secret_from);
	bool ok = conn_write(s->conn, buf, len + 2, err);
	secure_wipe(buf, len + 2);
	free(buf);
	return ok;
}

bool
pop3c_send_lines(struct pop3c *s, const char *lines, size_t len, struct fetch_error *err)
{
	if (fetch_trace) {
		const char *p = lines, *end = lines + len;
		while (p < end) {
			const char *nl = memchr(p, '\n', (size_t)(end - p));
			size_t n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
			char *one = xmalloc(n + 1);
			memcpy(one, p, n);
			one[n] = '\0';
			if (n > 0 && one[n - 1] == '\r')
				one[n - 1] = '\0';
			trace("C:", one, -1);
			free(one);
			p += n + 1;
		}
	}
	return conn_write(s->conn, lines, len, err);
}

enum pop3_status
pop3c_status(struct pop3c *s, struct fetch_error *err)
{
	if (!conn_read_line(s->conn, s->line, sizeof(s->line), err))
		return POP3_INVALID;
	trace("S:", s->line, -1);
	/* RFC 2449 §4: a status line is at most 512 octets with its CRLF.
	 * Longer is the server breaking the protocol (the line buffer is
	 * larger only so that such a line is read whole and named). */
	if (strlen(s->line) + 2 > POP3_MAX_RESPONSE_LINE) {
		fetch_error_set(err, EX_PROTOCOL, "the server sent a status line of %zu octets, "
		    "longer than the %d RFC 2449 allows", strlen(s->line) + 2,
		    POP3_MAX_RESPONSE_LINE);
		return POP3_INVALID;
	}
	enum pop3_status st = pop3_parse_status(s->line, &s->text, &s->code);
	if (st == POP3_INVALID) {
		char clean[80];
		str_sanitize(clean, sizeof(clean), s->line, strlen(s->line));
		fetch_error_set(err, EX_PROTOCOL, "the server sent an invalid response: %s", clean);
	}
	return st;
}

enum pop3_status
pop3c_command(struct pop3c *s, const char *cmd, struct fetch_error *err)
{
	if (!pop3c_send(s, cmd, -1, err))
		return POP3_INVALID;
	return pop3c_status(s, err);
}

bool
pop3c_read_lines(struct pop3c *s, uint32_t max_lines,
    bool (*fn)(void *ctx, const char *line, struct fetch_error *err), void *ctx,
    struct fetch_error *err)
{
	char line[POP3_MAX_RESPONSE_LINE + 512];
	for (uint32_t n = 0;; n++) {
		if (!conn_read_line(s->conn, line, sizeof(line), err))
			return false;
		if (line[0] == '.') {
			if (line[1] == '\0')
				return true;
		}
		if (n >= max_lines)
			return fetch_error_set(err, EX_PROTOCOL,
			    "the server sent more than %u lines in a listing", max_lines);
		if (fn != NULL && !fn(ctx, line[0] == '.' ? line + 1 : line, err))
			return false;
	}
}

enum pop3c_body_status
pop3c_read_body(struct pop3c *s, uint64_t max_octets,
    void (*fn)(void *ctx, const char *data, size_t len), void *ctx,
    struct fetch_error *err)
{
	struct conn *c = s->conn;
	struct pop3_unstuffer u;

	pop3_unstuffer_init(&u);
	while (!u.done) {
		if (!conn_fill(c, err))
			return POP3C_BODY_FAILED;
		size_t used;
		size_t n = pop3_unstuff(&u, c->buf + c->start, c->end - c->start, s->body, &used);
		c->start += used;
		if (u.in_bytes > max_octets)
			return POP3C_BODY_TOO_LONG;
		if (fn != NULL && n > 0)
			fn(ctx, s->body, n);
	}
	return POP3C_BODY_OK;
}

bool
pop3c_skip_body(struct pop3c *s, uint64_t max_octets, struct fetch_error *err)
{
	switch (pop3c_read_body(s, max_octets, NULL, NULL, err)) {
	case POP3C_BODY_OK:
		return true;
	case POP3C_BODY_TOO_LONG:
		return fetch_error_set(err, EX_PROTOCOL,
		    "a message body longer than %" PRIu64 " octets; aborting", max_octets);
	case POP3C_BODY_FAILED:
		break;
	}
	return false;
}

bool
pop3c_fail(struct pop3c *s, int code, const char *what, struct fetch_error *err)
{
	char clean[200];
	str_sanitize(clean, sizeof(clean), s->text, strlen(s->text));
	if (err->code == 0)
		err->resp_code = (int)s->code;
	if (pop3_code_is_temporary(s->code))
		code = EX_TEMPFAIL;
	else if (s->code == POP3_CODE_SYS_PERM)
		code = EX_UNAVAILABLE;
	return fetch_error_set(err, code, "%s: the server said: %s", what, clean);
}

static bool
capa_line(void *ctx, const char *line, struct fetch_error *err)
{
	pop3_capa_add_line(ctx, line);
	return true;
}

static bool
read_capa(struct pop3c *s, struct fetch_error *err)
{
	pop3_capa_init(&s->capa);
	enum pop3_status st = pop3c_command(s, "CAPA", err);
	if (st == POP3_INVALID)
		return false;
	if (st != POP3_OK)
		return true;	/* RFC 1939-only server: no capabilities known */
	s->capa.have_capa = true;
	return pop3c_read_lines(s, 1000, capa_line, &s->capa, err);
}

/* ---- authentication ---- */

struct sasl_ctx {
	const char *user, *password;
};

static int
sasl_callback(Gsasl *ctx, Gsasl_session *sctx, Gsasl_property prop)
{
	struct sasl_ctx *sc = gsasl_session_hook_get(sctx);
	switch (prop) {
	case GSASL_AUTHID:
		gsasl_property_set(sctx, prop, sc->user);
		return GSASL_OK;
	case GSASL_PASSWORD:
		gsasl_property_set(sctx, prop, sc->password);
		return GSASL_OK;
	default:
		return GSASL_NO_CALLBACK;
	}
}

static Gsasl *
sasl_library(void)
{
	static Gsasl *lib;
	if (lib == NULL) {
		if (gsasl_init(&lib) != GSASL_OK)
			fatalx("cannot initialise GNU SASL");
		gsasl_callback_set(lib, sasl_callback);
	}
	return lib;
}

/* Does mech send the password (or token) itself? */
static bool
mech_exposes_secret(const char *mech)
{
	return !strcmp(mech, "PLAIN") || !strcmp(mech, "LOGIN") || !strcmp(mech, "USER") ||
	    !strcmp(mech, "XOAUTH2") || !strcmp(mech, "OAUTHBEARER");
}

/* Does mech send an MD5 digest of the password and a challenge anyone on
 * the path sees (APOP, CRAM-MD5), so that one recorded login lets them test
 * guesses offline at the price of an MD5 each? */
static bool
mech_md5_digest(const char *mech)
{
	return !strcmp(mech, "APOP") || !strcmp(mech, "CRAM-MD5");
}

/* Does mech need TLS (or allow_plaintext) to be used? SCRAM does not: its
 * recorded proof costs the iteration count per guess, and that count is
 * bounded (scram_check_server_first). */
static bool
mech_needs_tls(const char *mech)
{
	return mech_exposes_secret(mech) || mech_md5_digest(mech);
}

/* Mechanisms whose first message comes from the client (initial response). */
static bool
mech_client_first(const char *mech)
{
	return !strcmp(mech, "PLAIN") || !strncmp(mech, "SCRAM-", 6) ||
	    !strcmp(mech, "XOAUTH2") || !strcmp(mech, "OAUTHBEARER");
}

/* SCRAM-SHA-256-PLUS and the like: SCRAM with channel binding. */
static bool
mech_is_plus(const char *mech)
{
	size_t n = strlen(mech);
	return n > 5 && !strcmp(mech + n - 5, "-PLUS");
}

/* The channel binding for a SCRAM exchange (RFC 5802 §6): a -PLUS
 * mechanism sends this connection's binding (flag "p"). SCRAM without
 * -PLUS always says "n" (no binding property is set). "y" (we could bind,
 * the server offered no -PLUS) would be right where the server offers no
 * -PLUS over TLS, but the SCRAM client of GNU SASL 2.2 fails its first
 * step whenever a binding is set without -PLUS; and "y" is wrong (the
 * server must refuse it) when the server does offer -PLUS. The downgrade
 * "y" guards against, a man in the middle removing -PLUS from CAPA, needs
 * a certificate we trust; and auth = auto never falls back from a refused
 * -PLUS mechanism to its plain twin (choose_mechanisms). */
static bool
scram_set_binding(struct pop3c *s, Gsasl_session *ss, const char *mech,
    struct fetch_error *err)
{
	if (!mech_is_plus(mech))
		return true;
	if (s->cb_type == NULL)
		return fetch_error_set(err, EX_UNAVAILABLE,
		    "%s needs channel binding, and this connection has none", mech);
	gsasl_property_set(ss, !strcmp(s->cb_type, "tls-exporter") ? GSASL_CB_TLS_EXPORTER :
	    GSASL_CB_TLS_UNIQUE, s->cb_data);
	if (fetch_trace)
		fprintf(stderr, "popbox: channel binding %s\n", s->cb_type);
	return true;
}

static bool
read_sasl_challenge(struct pop3c *s, char **challenge, enum pop3_status *st,
    struct fetch_error *err)
{
	char *line = xmalloc(POP3_MAX_SASL_LINE);
	*challenge = NULL;
	if (!conn_read_line(s->conn, line, POP3_MAX_SASL_LINE, err)) {
		free(line);
		return false;
	}
	trace("S:", line, -1);
	snprintf(s->line, sizeof(s->line), "%s", line);
	*st = pop3_parse_status(s->line, &s->text, &s->code);
	if (*st == POP3_INVALID) {
		free(line);
		return fetch_error_set(err, EX_PROTOCOL, "invalid response during AUTH");
	}
	if (*st == POP3_CONT)
		*challenge = xstrdup(line[1] == ' ' ? line + 2 : line + 1);
	free(line);
	return true;
}

/* The AUTH command, with the initial response inline when it fits. */
static bool
sasl_send_initial(struct pop3c *s, const char *mech, const char *ir, struct fetch_error *err)
{
	char *cmd;
	if (ir == NULL) {
		cmd = xasprintf("AUTH %s", mech);
		bool ok = pop3c_send(s, cmd, -1, err);
		free(cmd);
		return ok;
	}
	size_t irlen = strlen(ir);
	if (strlen(mech) + irlen + 8 <= POP3_MAX_COMMAND) {
		cmd = xasprintf("AUTH %s %s", mech, irlen ? ir : "=");
		bool ok = pop3c_send(s, cmd, (int)strlen(mech) + 6, err);
		free_secret(cmd);
		return ok;
	}
	cmd = xasprintf("AUTH %s", mech);
	bool ok = pop3c_send(s, cmd, -1, err);
	free(cmd);
	if (!ok)
		return false;
	char *ch;
	enum pop3_status st;
	if (!read_sasl_challenge(s, &ch, &st, err))
		return false;
	free(ch);
	if (st != POP3_CONT)
		return pop3c_fail(s, EX_NOPERM, "authentication refused", err);
	return pop3c_send(s, ir, 0, err);
}

/* The error challenge of OAUTHBEARER / XOAUTH2 (RFC 7628 §3.2.2): base64
 * of a JSON object whose "status" says why the token was refused
 * ("invalid_token", or an HTTP-like "401"); kept for the error message. */
static void
oauth_error_detail(struct pop3c *s, const char *challenge)
{
	unsigned char *dec;
	size_t len;
	if (!base64_decode(challenge, strlen(challenge), &dec, &len))
		return;
	json_error_t jerr;
	json_t *j = json_loadb((const char *)dec, len, 0, &jerr);
	free(dec);
	json_t *status = json_object_get(j, "status");
	if (json_is_string(status)) {
		const char *v = json_string_value(status);
		char clean[64];
		str_sanitize(clean, sizeof(clean), v, strlen(v));
		snprintf(s->sasl_detail, sizeof(s->sasl_detail), "the server says the token is %s",
		    clean);
	}
	json_decref(j);
}

/* XOAUTH2 / OAUTHBEARER: one client message with the bearer token; on
 * failure the server sends an error challenge we must answer. Done here
 * rather than in GNU SASL because the libgsasl in Debian 12 (2.2.0) has
 * neither mechanism; the exchange is a single formatted message. */
static enum pop3_status
auth_oauth(struct pop3c *s, const char *mech, const char *user, const char *token,
    struct fetch_error *err)
{
	char *raw;
	if (!strcmp(mech, "XOAUTH2"))
		raw = xasprintf("user=%s\001auth=Bearer %s\001\001", user, token);
	else
		raw = xasprintf("n,a=%s,\001host=%s\001port=%s\001auth=Bearer %s\001\001", user,
		    s->account->host, s->account->port, token);
	char *b64 = base64_encode(raw, strlen(raw));
	free_secret(raw);
	bool ok = sasl_send_initial(s, mech, b64, err);
	free_secret(b64);
	if (!ok)
		return POP3_INVALID;
	for (int round = 0; round < 2; round++) {
		char *ch;
		enum pop3_status st;
		if (!read_sasl_challenge(s, &ch, &st, err))
			return POP3_INVALID;
		if (st != POP3_CONT)
			return st;
		oauth_error_detail(s, ch);
		free(ch);
		/* error details were sent; finish the exchange (RFC 7628 §3.2.3) */
		if (!pop3c_send(s, !strcmp(mech, "XOAUTH2") ? "" : "AQ==", -1, err))
			return POP3_INVALID;
	}
	fetch_error_set(err, EX_PROTOCOL, "the server did not finish the %s exchange", mech);
	return POP3_INVALID;
}

bool
pop3c_scram_iterations(const unsigned char *msg, size_t len, uint64_t *iter)
{
	bool seen = false;
	size_t i = 0;
	while (i < len) {
		size_t end = i;
		while (end < len && msg[end] != ',')
			end++;
		if (end - i >= 2 && msg[i] == 'i' && msg[i + 1] == '=') {
			size_t ndig = end - i - 2;
			const unsigned char *d = msg + i + 2;
			/* posit-number = %x31-39 *DIGIT (RFC 5802 §7); ten digits
			 * are more than any count accepted */
			if (seen || ndig == 0 || ndig > 10 || d[0] < '1' || d[0] > '9')
				return false;
			uint64_t v = 0;
			for (size_t k = 0; k < ndig; k++) {
				if (d[k] < '0' || d[k] > '9')
					return false;
				v = v * 10 + (uint64_t)(d[k] - '0');
			}
			*iter = v;
			seen = true;
		}
		i = end + 1;
	}
	return seen;
}

/* The server-first message of SCRAM (dec, decoded) names the iteration
 * count the client must spend on the password. A man in the middle (or a
 * server) asking for few makes the proof we send cheap to attack offline;
 * asking for very many keeps us computing (GNU SASL: ~0.7 s a million).
 * Outside POP3C_SCRAM_MIN_ITERATIONS .. POP3C_SCRAM_MAX_ITERATIONS it is
 * refused before any work on the password (docs/DESIGN.md, "popbox fetch:
 * limits against a hostile server"). EX_PROTOCOL, like the other SCRAM
 * answers that show the server cannot be trusted. */
static bool
scram_check_server_first(const char *mech, const unsigned char *dec, size_t declen,
    struct fetch_error *err)
{
	uint64_t iter;
	if (!pop3c_scram_iterations(dec, declen, &iter))
		return fetch_error_set(err, EX_PROTOCOL,
		    "the server's %s challenge has no valid iteration count (i=); "
		    "refusing to log in", mech);
	if (iter < POP3C_SCRAM_MIN_ITERATIONS || iter > POP3C_SCRAM_MAX_ITERATIONS)
		return fetch_error_set(err, EX_PROTOCOL,
		    "the server asked for %s with an iteration count of %" PRIu64 "; popbox "
		    "accepts %u to %u (fewer make the password cheap to guess for anyone who "
		    "saw the exchange, more keep the client computing for a long time). "
		    "Refusing to log in: a man in the middle can do this where there is "
		    "no TLS", mech, iter, POP3C_SCRAM_MIN_ITERATIONS,
		    POP3C_SCRAM_MAX_ITERATIONS);
	return true;
}

/* Answer one SASL challenge (base64 text ch, freed here) with the next
 * step of the mechanism; *rc gets the step's GNU SASL status. first: ch
 * is the server's first challenge (for SCRAM its server-first message,
 * whose iteration count is checked before GNU SASL sees it). A challenge
 * that is not base64, a refused iteration count, or a step that fails is
 * answered with "*" (the exchange is cancelled) and is EX_PROTOCOL. */
static bool
sasl_answer(struct pop3c *s, Gsasl_session *ss, const char *mech, char *ch, bool first,
    int *rc, struct fetch_error *err)
{
	unsigned char *dec;
	size_t declen;
	char *out = NULL;
	if (!base64_decode(ch, strlen(ch), &dec, &declen)) {
		free(ch);
		pop3c_send(s, "*", -1, err);
		return fetch_error_set(err, EX_PROTOCOL, "invalid base64 in SASL challenge");
	}
	bool refused = first && !strncmp(mech, "SCRAM-", 6) &&
	    !scram_check_server_first(mech, dec, declen, err);
	free(dec);
	if (refused) {
		free(ch);
		struct fetch_error ignored = { 0 };
		pop3c_send(s, "*", -1, &ignored);
		return false;
	}
	*rc = gsasl_step64(ss, ch, &out);
	free(ch);
	if (*rc != GSASL_OK && *rc != GSASL_NEEDS_MORE) {
		gsasl_free(out);
		pop3c_send(s, "*", -1, err);
		return fetch_error_set(err, EX_PROTOCOL, "SASL %s failed: %s (server not trusted)",
		    mech, gsasl_strerror(*rc));
	}
	bool ok = pop3c_send(s, out != NULL ? out : "", 0, err);
	if (out != NULL)
		secure_wipe(out, strlen(out));
	gsasl_free(out);
	return ok;
}

static enum pop3_status
auth_sasl(struct pop3c *s, const char *mech, const char *user, const char *password,
    struct fetch_error *err)
{
	if (!strcmp(mech, "XOAUTH2") || !strcmp(mech, "OAUTHBEARER"))
		return auth_oauth(s, mech, user, password, err);

	Gsasl_session *ss;
	struct sasl_ctx sc = { user, password };
	if (gsasl_client_start(sasl_library(), mech, &ss) != GSASL_OK) {
		fetch_error_set(err, EX_SOFTWARE, "GNU SASL cannot do %s", mech);
		return POP3_INVALID;
	}
	gsasl_session_hook_set(ss, &sc);
	enum pop3_status st = POP3_INVALID;
	if (!strncmp(mech, "SCRAM-", 6) && !scram_set_binding(s, ss, mech, err)) {
		gsasl_finish(ss);
		return POP3_INVALID;
	}
	char *out = NULL;
	int rc = GSASL_NEEDS_MORE;
	bool ok;

	if (mech_client_first(mech)) {
		rc = gsasl_step64(ss, "", &out);
		if (rc != GSASL_OK && rc != GSASL_NEEDS_MORE) {
			fetch_error_set(err, EX_SOFTWARE, "SASL %s: %s", mech, gsasl_strerror(rc));
			goto done;
		}
		ok = sasl_send_initial(s, mech, out, err);
	} else {
		ok = sasl_send_initial(s, mech, NULL, err);
	}
	gsasl_free(out);
	out = NULL;
	if (!ok)
		goto done;
	/* bounded: a SASL exchange that does not end in a few rounds is hostile */
	for (int round = 0; round < 10; round++) {
		char *ch;
		if (!read_sasl_challenge(s, &ch, &st, err)) {
			st = POP3_INVALID;
			goto done;
		}
		if (st != POP3_CONT) {
			if (st == POP3_OK && rc != GSASL_OK && !strncmp(mech, "SCRAM-", 6)) {
				/* success without the server's proof: not mutual auth */
				fetch_error_set(err, EX_PROTOCOL,
				    "the server accepted %s without proving it knows the password",
				    mech);
				st = POP3_INVALID;
			}
			goto done;
		}
		if (!sasl_answer(s, ss, mech, ch, round == 0, &rc, err)) {
			st = POP3_INVALID;
			goto done;
		}
	}
	fetch_error_set(err, EX_PROTOCOL, "SASL %s: too many rounds", mech);
	st = POP3_INVALID;
done:
	gsasl_finish(ss);
	return st;
}

static enum pop3_status
auth_apop(struct pop3c *s, const char *user, const char *password, struct fetch_error *err)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char hex[2 * EVP_MAX_MD_SIZE + 1];
	EVP_MD_CTX *m = EVP_MD_CTX_new();

	if (m == NULL || !EVP_DigestInit_ex(m, EVP_md5(), NULL) ||
	    !EVP_DigestUpdate(m, s->timestamp, strlen(s->timestamp)) ||
	    !EVP_DigestUpdate(m, password, strlen(password)) ||
	    !EVP_DigestFinal_ex(m, md, &mdlen)) {
		EVP_MD_CTX_free(m);
		fetch_error_set(err, EX_SOFTWARE, "MD5 unavailable for APOP");
		return POP3_INVALID;
	}
	EVP_MD_CTX_free(m);
	for (unsigned i = 0; i < mdlen; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	char *cmd = xasprintf("APOP %s %s", user, hex);
	enum pop3_status st = POP3_INVALID;
	if (pop3c_send(s, cmd, (int)strlen(user) + 6, err))
		st = pop3c_status(s, err);
	free_secret(cmd);
	return st;
}

static enum pop3_status
auth_userpass(struct pop3c *s, const char *user, const char *password, struct fetch_error *err)
{
	char *cmd = xasprintf("USER %s", user);
	enum pop3_status st = pop3c_command(s, cmd, err);
	free(cmd);
	if (st != POP3_OK)
		return st;
	cmd = xasprintf("PASS %s", password);
	st = POP3_INVALID;
	if (pop3c_send(s, cmd, 5, err))
		st = pop3c_status(s, err);
	free_secret(cmd);
	return st;
}

static bool
gsasl_has(const char *mech)
{
	return gsasl_client_support_p(sasl_library(), mech) != 0;
}

/* Is mech usable here: offered by the server and supported by us? */
static bool
mech_available(struct pop3c *s, const char *mech)
{
	if (!strcmp(mech, "APOP"))
		return s->timestamp[0] != '\0';
	if (!strcmp(mech, "USER"))
		return !s->capa.have_capa || s->capa.user;
	if (!pop3_capa_has_sasl(&s->capa, mech))
		return false;
	if (!strcmp(mech, "XOAUTH2") || !strcmp(mech, "OAUTHBEARER"))
		return true;
	if (mech_is_plus(mech) && s->cb_type == NULL)
		return false;
	return gsasl_has(mech);
}

/* The mechanisms to try, in order, into cands (room for AUTH_ORDER_MAX):
 * the one the account names, or (auth = auto) those both sides have,
 * strongest first, leaving out without TLS (unless allow_plaintext) the
 * ones that would send the password in clear or an MD5 digest of it
 * (mech_needs_tls). False (EX_CONFIG or
 * EX_UNAVAILABLE) when none is left. */
static bool
choose_mechanisms(struct pop3c *s, const char **cands, size_t *ncands,
    struct fetch_error *err)
{
	static const char *const order[AUTH_ORDER_MAX] = { "SCRAM-SHA-256-PLUS",
	    "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN", "APOP",
	    "USER" };
	const struct account *a = s->account;
	size_t n = 0;
	bool clear_ok = conn_is_tls(s->conn) || a->allow_plaintext;
	bool refused_clear = false;

	if (strcasecmp(a->auth, "auto") == 0 && account_has_oauth2(a)) {
		/* a token source: only the bearer-token mechanisms, the
		 * standard one first (RFC 7628) */
		static const char *const bearer[] = { "OAUTHBEARER", "XOAUTH2" };
		for (size_t i = 0; i < N_ELEMENTS(bearer); i++)
			if (mech_available(s, bearer[i]))
				cands[n++] = bearer[i];
		if (n == 0)
			return fetch_error_set(err, EX_UNAVAILABLE,
			    "account %s: an OAuth2 token source is configured, but the server "
			    "offers neither OAUTHBEARER nor XOAUTH2 (it offers: %s)", a->name,
			    s->capa.sasl[0] ? s->capa.sasl : "no SASL mechanism");
		if (!clear_ok)
			return fetch_error_set(err, EX_CONFIG,
			    "account %s: an OAuth2 access token would go over an unencrypted "
			    "connection; use tls = starttls or implicit, or set allow_plaintext = "
			    "yes if you accept that", a->name);
		*ncands = n;
		return true;
	}
	if (strcasecmp(a->auth, "auto") != 0) {
		if (mech_needs_tls(a->auth) && !clear_ok)
			return fetch_error_set(err, EX_CONFIG,
			    "account %s: auth %s would send %s over an unencrypted connection; "
			    "use tls = starttls or implicit, or set allow_plaintext = yes if you "
			    "accept that", a->name, a->auth, mech_md5_digest(a->auth) ?
			    "an MD5 digest of the password (anyone who sees it can try guesses "
			    "offline)" : "the password in clear");
		if (mech_is_plus(a->auth) && s->cb_type == NULL)
			return fetch_error_set(err, EX_UNAVAILABLE,
			    "account %s: auth %s needs TLS with channel binding (TLS 1.3, or "
			    "TLS 1.2 with the extended master secret), and this connection %s",
			    a->name, a->auth, conn_is_tls(s->conn) ? "has no channel binding" :
			    "is not encrypted");
		if (!strcmp(a->auth, "CRAM-MD5") ? !pop3_capa_has_sasl(&s->capa, "CRAM-MD5") :
		    !mech_available(s, a->auth))
			return fetch_error_set(err, EX_UNAVAILABLE,
			    "account %s: the server does not offer auth %s (it offers: %s%s%s)",
			    a->name, a->auth, s->capa.sasl, s->timestamp[0] ? "APOP " : "",
			    !s->capa.have_capa || s->capa.user ? "USER" : "");
		cands[0] = a->auth;
		*ncands = 1;
		return true;
	}
	for (size_t i = 0; i < N_ELEMENTS(order); i++) {
		if (!mech_available(s, order[i]))
			continue;
		if (mech_needs_tls(order[i]) && !clear_ok) {
			refused_clear = true;
			continue;
		}
		/* PLAIN and LOGIN are the same secret; try one of them */
		if (!strcmp(order[i], "LOGIN") && n > 0 && !strcmp(cands[n - 1], "PLAIN"))
			continue;
		/* SCRAM without binding after its -PLUS twin was refused would
		 * let a man in the middle (whose TLS session is not the
		 * server's) strip the binding: never a fallback */
		if (!strncmp(order[i], "SCRAM-", 6) && !mech_is_plus(order[i])) {
			char *twin = xasprintf("%s-PLUS", order[i]);
			bool have_twin = false;
			for (size_t k = 0; k < n; k++)
				have_twin = have_twin || !strcmp(cands[k], twin);
			free(twin);
			if (have_twin)
				continue;
		}
		cands[n++] = order[i];
	}
	if (n == 0 && refused_clear)
		return fetch_error_set(err, EX_CONFIG,
		    "account %s: the server offers only mechanisms that send the password "
		    "in clear or as an MD5 digest anyone who sees it can attack offline "
		    "(APOP), and the connection is not encrypted; refusing. Use tls = "
		    "starttls or implicit, or set allow_plaintext = yes if you accept that",
		    a->name);
	if (n == 0)
		return fetch_error_set(err, EX_UNAVAILABLE,
		    "account %s: no authentication mechanism in common with the server",
		    a->name);
	*ncands = n;
	return true;
}

static bool
authenticate(struct pop3c *s, const char *password, struct fetch_error *err)
{
	const struct account *a = s->account;
	const char *cands[AUTH_ORDER_MAX];
	size_t n = 0;

	if (password == NULL)
		return fetch_error_set(err, EX_CONFIG,
		    "account %s: no password or password_command", a->name);
	if (strpbrk(password, "\r\n") != NULL)
		return fetch_error_set(err, EX_CONFIG,
		    "account %s: the password contains a line break; refusing to send it",
		    a->name);
	if (!choose_mechanisms(s, cands, &n, err))
		return false;
	for (size_t i = 0; i < n && i < AUTH_MAX_ATTEMPTS; i++) {
		const char *mech = cands[i];
		enum pop3_status st;
		if (!strcmp(mech, "APOP"))
			st = auth_apop(s, a->user, password, err);
		else if (!strcmp(mech, "USER"))
			st = auth_userpass(s, a->user, password, err);
		else
			st = auth_sasl(s, mech, a->user, password, err);
		if (st == POP3_OK) {
			snprintf(s->mechanism, sizeof(s->mechanism), "%s", mech);
			return true;
		}
		if (st == POP3_INVALID)
			return false;
		/* -ERR: temporary trouble or last candidate ends it */
		if (pop3_code_is_temporary(s->code) || s->code == POP3_CODE_SYS_PERM ||
		    i + 1 == n || i + 1 == AUTH_MAX_ATTEMPTS) {
			char *what = xasprintf("login as %s with %s refused%s%s", a->user, mech,
			    s->sasl_detail[0] ? " (" : "", s->sasl_detail);
			if (s->sasl_detail[0]) {
				char *w2 = xasprintf("%s)", what);
				free(what);
				what = w2;
			}
			pop3c_fail(s, EX_NOPERM, what, err);
			free(what);
			return false;
		}
		if (fetch_trace)
			fprintf(stderr, "popbox: %s refused, trying %s\n", mech, cands[i + 1]);
	}
	return fetch_error_set(err, EX_NOPERM, "authentication failed");
}

struct pop3c *
pop3c_open(const struct account *a, const char *password, struct fetch_error *err)
{
	struct pop3c *s = xcalloc(1, sizeof(*s));
	struct tls_options topt = {
		.trust_file = a->tls_trust_file,
		.fingerprint = a->tls_fingerprint,
		.insecure = a->insecure == 1,
		.host = a->host,
	};

	s->account = a;
	s->conn = conn_connect(a->host, a->port, (int)a->timeout, (long)a->deadline, err);
	if (s->conn == NULL)
		goto fail;
	if (a->tls == TLS_IMPLICIT && !conn_start_tls(s->conn, &topt, err))
		goto fail;
	enum pop3_status st = pop3c_status(s, err);
	if (st == POP3_INVALID)
		goto fail;
	if (st != POP3_OK) {
		pop3c_fail(s, EX_TEMPFAIL, "the server refused the connection", err);
		goto fail;
	}
	if (!pop3_greeting_timestamp(s->text, s->timestamp, sizeof(s->timestamp)))
		s->timestamp[0] = '\0';
	if (!read_capa(s, err))
		goto fail;
	if (a->tls == TLS_STARTTLS) {
		/* STLS is required: a server that does not offer it (or a
		 * man in the middle stripping it) gets no credentials. */
		if (s->capa.have_capa && !s->capa.stls) {
			fetch_error_set(err, EX_UNAVAILABLE,
			    "%s does not offer STLS; refusing to continue without TLS "
			    "(use tls = implicit for port 995, or tls = off with allow_plaintext "
			    "if you really want no encryption)", a->host);
			goto fail;
		}
		st = pop3c_command(s, "STLS", err);
		if (st == POP3_INVALID)
			goto fail;
		if (st != POP3_OK) {
			pop3c_fail(s, EX_UNAVAILABLE, "STLS refused; not continuing without TLS", err);
			goto fail;
		}
		/* anything sent after the +OK but before the handshake is an
		 * injection attempt (CVE-2011-0411 class, curl CVE-2021-22947) */
		if (conn_buffered(s->conn) > 0) {
			log_warnx("%s: discarding %zu bytes the server sent before the TLS handshake",
			    a->name, conn_buffered(s->conn));
			conn_discard_buffer(s->conn);
		}
		if (!conn_start_tls(s->conn, &topt, err))
			goto fail;
		if (!read_capa(s, err))
			goto fail;
	}
	if (fetch_trace && conn_is_tls(s->conn))
		fprintf(stderr, "popbox: TLS %s\n", conn_tls_description(s->conn));
	s->cb_type = conn_channel_binding(s->conn, &s->cb_data);
	if (!authenticate(s, password, err))
		goto fail;
	/* capabilities may change after login (RFC 2449 §5); best effort */
	if (s->capa.have_capa) {
		struct pop3_capa before = s->capa;
		if (!read_capa(s, err))
			goto fail;
		if (!s->capa.have_capa)
			s->capa = before;
	}
	return s;
fail:
	pop3c_abort(s);
	return NULL;
}

bool
pop3c_quit(struct pop3c *s, struct fetch_error *err)
{
	enum pop3_status st = pop3c_command(s, "QUIT", err);
	bool ok = st == POP3_OK;
	if (st == POP3_ERR)
		pop3c_fail(s, EX_TEMPFAIL, "QUIT failed, deletions not committed", err);
	pop3c_abort(s);		/* the session is over either way */
	return ok;
}

void
pop3c_abort(struct pop3c *s)
{
	if (s == NULL)
		return;
	conn_close(s->conn);
	free(s->cb_data);
	free(s);
}

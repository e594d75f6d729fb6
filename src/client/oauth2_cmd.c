/* popbox oauth2 ACCOUNT: the one-time authorization that gives popbox a
 * refresh token for the account (oauth2.h; docs/popbox.1, OAUTH2).
 *
 * Two flows: the device authorization grant (RFC 8628) where the provider
 * has a device endpoint (Microsoft): popbox prints a URL and a code to
 * enter on any device, and polls the token endpoint; else the
 * authorization code grant with a loopback redirect (RFC 8252 §7.3) and
 * PKCE (RFC 7636, S256): popbox listens on 127.0.0.1 on a free port
 * (libmicrohttpd), prints the authorization URL to open in a browser, and
 * takes the code from the one request the browser makes to it. */
#include "client/oauth2_cmd.h"
#include "client/fetch.h"
#include "client/oauth2.h"
#include "common/base64.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

/* How long popbox waits for the user to authorize in the browser or on
 * the device page, unless --timeout says otherwise (the device flow is
 * also bounded by the code's own expires_in). */
#define OAUTH2_AUTHORIZE_TIMEOUT 600
/* RFC 8628 §3.5: without an interval in the answer, poll every 5 s; on
 * slow_down, 5 s more. Never faster than once a second. */
#define OAUTH2_DEVICE_INTERVAL 5
#define OAUTH2_DEVICE_MIN_INTERVAL 1

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: popbox oauth2 [--config FILE] [--flow device|loopback] [--timeout SEC] ACCOUNT\n"
	    "Authorize popbox once for an OAuth2 account (Gmail, Microsoft 365, ...): the\n"
	    "refresh token is written to the state directory (mode 600), and popbox fetch\n"
	    "then gets access tokens by itself. The account needs oauth2_client_id and\n"
	    "oauth2_provider (google, microsoft) or oauth2_token_endpoint. See popbox(1).\n"
	    "  --flow device     show a code to enter on the provider's device page\n"
	    "                    (default where the provider has a device endpoint)\n"
	    "  --flow loopback   print a URL to open in a browser; the provider sends the\n"
	    "                    browser back to popbox on 127.0.0.1 (default otherwise)\n"
	    "  --timeout SEC     how long to wait for the authorization (default %d)\n"
	    "Exit: 0 authorized, 77 declined or refused by the provider, 75 timed out or\n"
	    "network trouble, 78 configuration.\n", OAUTH2_AUTHORIZE_TIMEOUT);
}

/* base64url without padding (RFC 7636 §4.1, appendix A). */
static char *
base64url(const unsigned char *in, size_t len)
{
	char *s = base64_encode(in, len);
	size_t o = 0;
	for (size_t i = 0; s[i] != '\0'; i++) {
		if (s[i] == '=')
			break;
		s[o++] = s[i] == '+' ? '-' : s[i] == '/' ? '_' : s[i];
	}
	s[o] = '\0';
	return s;
}

static char *
random_token(size_t octets)
{
	unsigned char buf[64];
	if (octets > sizeof(buf) || RAND_bytes(buf, (int)octets) != 1)
		fatalx("no random bytes for OAuth2");
	return base64url(buf, octets);
}

static void
sleep_seconds(long s)
{
	struct timespec ts = { .tv_sec = s, .tv_nsec = 0 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static const char *
json_str(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

static long
json_long(json_t *obj, const char *key, long dflt)
{
	json_t *v = json_object_get(obj, key);
	if (json_is_integer(v))
		return (long)json_integer_value(v);
	if (json_is_string(v))
		return strtol(json_string_value(v), NULL, 10);
	return dflt;
}

/* ---- device authorization grant (RFC 8628) ---- */

static bool
device_flow(const struct account *a, const struct oauth2_endpoints *e, const char *path,
    long timeout, struct fetch_error *err)
{
	char *form = NULL;
	json_t *ans = NULL;
	long status;
	bool ok = false;

	oauth2_form_add(&form, "client_id", a->oauth2.client_id);
	if (e->scope != NULL)
		oauth2_form_add(&form, "scope", e->scope);
	if (!oauth2_post(e->device, form, &ans, &status, err))
		goto out;
	const char *device_code = json_str(ans, "device_code");
	const char *user_code = json_str(ans, "user_code");
	const char *uri = json_str(ans, "verification_uri");
	if (uri == NULL)
		uri = json_str(ans, "verification_url");	/* Google's older name */
	if (status != 200 || device_code == NULL || user_code == NULL || uri == NULL) {
		oauth2_provider_error(a, "asking for a device code", ans, status, err);
		goto out;
	}
	char clean_uri[512], clean_code[64];
	str_sanitize(clean_uri, sizeof(clean_uri), uri, strlen(uri));
	str_sanitize(clean_code, sizeof(clean_code), user_code, strlen(user_code));
	printf("To authorize popbox for account %s, open\n  %s\nand enter the code\n  %s\n",
	    a->name, clean_uri, clean_code);
	const char *complete = json_str(ans, "verification_uri_complete");
	if (complete != NULL) {
		char clean[600];
		str_sanitize(clean, sizeof(clean), complete, strlen(complete));
		printf("(or open %s, which has the code in it)\n", clean);
	}
	fflush(stdout);

	long interval = json_long(ans, "interval", OAUTH2_DEVICE_INTERVAL);
	if (interval < OAUTH2_DEVICE_MIN_INTERVAL)
		interval = OAUTH2_DEVICE_MIN_INTERVAL;
	long expires_in = json_long(ans, "expires_in", timeout);
	if (expires_in <= 0 || expires_in > timeout)
		expires_in = timeout;
	time_t end = time(NULL) + expires_in;
	char *code = xstrdup(device_code);
	json_decref(ans);
	ans = NULL;
	free_secret(form);
	form = NULL;
	oauth2_form_add(&form, "grant_type", "urn:ietf:params:oauth:grant-type:device_code");
	oauth2_form_add(&form, "device_code", code);
	free_secret(code);
	if (!oauth2_form_client(a, &form, err))
		goto out;
	for (;;) {
		if (time(NULL) + interval > end) {
			fetch_error_set(err, EX_TEMPFAIL, "account %s: nobody entered the code within "
			    "%ld s; run popbox oauth2 %s again", a->name, expires_in, a->name);
			goto out;
		}
		sleep_seconds(interval);
		json_decref(ans);
		ans = NULL;
		if (!oauth2_post(e->token, form, &ans, &status, err))
			goto out;
		const char *error = json_str(ans, "error");
		if (status == 200 && json_str(ans, "access_token") != NULL)
			break;
		if (error != NULL && !strcmp(error, "authorization_pending"))
			continue;
		if (error != NULL && !strcmp(error, "slow_down")) {
			interval += OAUTH2_DEVICE_INTERVAL;
			continue;
		}
		oauth2_provider_error(a, "waiting for the authorization", ans, status, err);
		goto out;
	}
	ok = oauth2_save_tokens(path, ans, NULL, err);
out:
	if (form != NULL)
		free_secret(form);
	json_decref(ans);
	return ok;
}

/* ---- authorization code grant with a loopback redirect (RFC 8252) ---- */

struct redirect {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool taken;                /* a request carried the answer */
	bool done;                 /* and its page has been sent */
	char *code, *state, *error, *error_description;
};

static char *
dup_arg(struct MHD_Connection *c, const char *key)
{
	const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, key);
	return v != NULL ? xstrdup(v) : NULL;
}

/* The browser's request after the provider's redirect. Only the first
 * request with a code or an error counts; anything else (a favicon) is
 * answered 404. */
static enum MHD_Result
redirect_handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
    const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	struct redirect *r = cls;
	static const char page_ok[] = "<!DOCTYPE html><html><head><title>popbox</title></head>"
	    "<body><p>popbox received the authorization. You can close this window.</p>"
	    "</body></html>\n";
	static const char page_404[] = "not found\n";
	bool counted = false;

	if (strcmp(method, "GET") != 0 || strcmp(url, "/") != 0)
		goto not_found;
	pthread_mutex_lock(&r->lock);
	if (!r->taken && (MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "code") ||
	    MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "error"))) {
		r->code = dup_arg(c, "code");
		r->state = dup_arg(c, "state");
		r->error = dup_arg(c, "error");
		r->error_description = dup_arg(c, "error_description");
		r->taken = counted = true;
		*con_cls = r;	/* redirect_completed() ends the wait */
	}
	pthread_mutex_unlock(&r->lock);
	if (!counted)
		goto not_found;
	struct MHD_Response *resp = MHD_create_response_from_buffer(sizeof(page_ok) - 1,
	    (void *)page_ok, MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
	enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
not_found:
	resp = MHD_create_response_from_buffer(sizeof(page_404) - 1, (void *)page_404,
	    MHD_RESPMEM_PERSISTENT);
	ret = MHD_queue_response(c, MHD_HTTP_NOT_FOUND, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* The request that carried the answer is over (its page sent): only now
 * may the daemon be stopped, or the browser would see a closed
 * connection instead of the page. */
static void
redirect_completed(void *cls, struct MHD_Connection *c, void **con_cls,
    enum MHD_RequestTerminationCode toe)
{
	struct redirect *r = cls;
	if (*con_cls != r)
		return;
	pthread_mutex_lock(&r->lock);
	r->done = true;
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

static bool
loopback_flow(const struct account *a, const struct oauth2_endpoints *e, const char *path,
    long timeout, struct fetch_error *err)
{
	struct redirect r = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = 0,
	    .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	char *form = NULL, *verifier = NULL, *state = NULL, *challenge = NULL, *url = NULL;
	char *redirect_uri = NULL;
	json_t *ans = NULL;
	long status;
	bool ok = false;

	if (e->auth == NULL)
		return fetch_error_set(err, EX_CONFIG, "account %s: the loopback flow needs "
		    "oauth2_auth_endpoint (the provider's authorization URL)", a->name);
	struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
	    MHD_USE_ERROR_LOG, 0, NULL, NULL, redirect_handler, &r,
	    MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned int)8,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30,
	    MHD_OPTION_NOTIFY_COMPLETED, redirect_completed, &r, MHD_OPTION_END);
	if (d == NULL)
		return fetch_error_set(err, EX_TEMPFAIL,
		    "cannot listen on 127.0.0.1 for the redirect");
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	if (info == NULL || info->port == 0) {
		MHD_stop_daemon(d);
		return fetch_error_set(err, EX_SOFTWARE, "cannot find the redirect port");
	}
	redirect_uri = xasprintf("http://127.0.0.1:%u/", (unsigned)info->port);

	/* PKCE: the code is worth nothing without the verifier */
	verifier = random_token(32);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	if (!EVP_Digest(verifier, strlen(verifier), md, &mdlen, EVP_sha256(), NULL))
		fatalx("SHA-256 unavailable");
	challenge = base64url(md, mdlen);
	state = random_token(16);

	oauth2_form_add(&form, "response_type", "code");
	oauth2_form_add(&form, "client_id", a->oauth2.client_id);
	oauth2_form_add(&form, "redirect_uri", redirect_uri);
	if (e->scope != NULL)
		oauth2_form_add(&form, "scope", e->scope);
	oauth2_form_add(&form, "state", state);
	oauth2_form_add(&form, "code_challenge", challenge);
	oauth2_form_add(&form, "code_challenge_method", "S256");
	if (e->google) {
		/* Google gives a refresh token only for offline access, and
		 * again only when consent is asked again */
		oauth2_form_add(&form, "access_type", "offline");
		oauth2_form_add(&form, "prompt", "consent");
	}
	url = xasprintf("%s%s%s", e->auth, strchr(e->auth, '?') ? "&" : "?", form);
	free(form);
	form = NULL;
	printf("To authorize popbox for account %s, open this URL in a browser on this "
	    "machine:\n  %s\nWaiting for the provider to send the browser back to %s ...\n",
	    a->name, url, redirect_uri);
	fflush(stdout);

	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout;
	pthread_mutex_lock(&r.lock);
	while (!r.done) {
		if (pthread_cond_timedwait(&r.cond, &r.lock, &until) == ETIMEDOUT)
			break;
	}
	bool done = r.taken;
	pthread_mutex_unlock(&r.lock);
	MHD_stop_daemon(d);
	if (!done) {
		fetch_error_set(err, EX_TEMPFAIL, "account %s: no answer from the browser within "
		    "%ld s; run popbox oauth2 %s again", a->name, timeout, a->name);
		goto out;
	}
	if (r.error != NULL) {
		json_t *j = json_pack("{s:s, s:s?}", "error", r.error, "error_description",
		    r.error_description);
		oauth2_provider_error(a, "the authorization", j, 400, err);
		json_decref(j);
		goto out;
	}
	if (r.state == NULL || strcmp(r.state, state) != 0) {
		fetch_error_set(err, EX_NOPERM, "account %s: the redirect carried the wrong state "
		    "parameter (not the answer to this request); nothing saved", a->name);
		goto out;
	}
	oauth2_form_add(&form, "grant_type", "authorization_code");
	oauth2_form_add(&form, "code", r.code);
	oauth2_form_add(&form, "redirect_uri", redirect_uri);
	oauth2_form_add(&form, "code_verifier", verifier);
	if (!oauth2_form_client(a, &form, err))
		goto out;
	if (!oauth2_post(e->token, form, &ans, &status, err))
		goto out;
	if (status != 200 || json_str(ans, "access_token") == NULL) {
		oauth2_provider_error(a, "exchanging the authorization code", ans, status, err);
		goto out;
	}
	ok = oauth2_save_tokens(path, ans, NULL, err);
out:
	if (form != NULL)
		free_secret(form);
	json_decref(ans);
	free(url);
	free(redirect_uri);
	free_secret(verifier);
	free(challenge);
	free(state);
	if (r.code != NULL)
		free_secret(r.code);
	free(r.state);
	free(r.error);
	free(r.error_description);
	return ok;
}

/* ---- the command ---- */

static bool
load_account(const char *config, const char *name, struct account *out,
    struct fetch_error *err)
{
	char *path = config ? xstrdup(config) : account_default_config_path();
	struct account *list = NULL;
	int n = 0;
	bool ok = account_load_file(path, true, &list, &n, NULL, err);
	free(path);
	if (!ok)
		return false;
	int k;
	for (k = 0; k < n; k++)
		if (!strcmp(list[k].name, name))
			break;
	if (k == n)
		fetch_error_set(err, EX_CONFIG, "no account named '%s'", name);
	for (int i = 0; i < n; i++) {
		if (i == k)
			*out = list[i];
		else
			account_free(&list[i]);
	}
	free(list);
	if (k == n)
		return false;
	return account_finish(out, err);
}

int
oauth2_cmd_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "flow", required_argument, NULL, 'f' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config = NULL, *flow = NULL;
	long timeout = OAUTH2_AUTHORIZE_TIMEOUT;
	uint64_t u;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			break;
		case 'f':
			if (strcmp(optarg, "device") != 0 && strcmp(optarg, "loopback") != 0) {
				fprintf(stderr, "popbox oauth2: --flow must be device or loopback\n");
				return EX_USAGE;
			}
			flow = optarg;
			break;
		case 't':
			if (!parse_u64(optarg, 86400, &u) || u == 0) {
				fprintf(stderr, "popbox oauth2: --timeout must be 1..86400 seconds\n");
				return EX_USAGE;
			}
			timeout = (long)u;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EX_USAGE;
		}
	}
	if (optind + 1 != argc) {
		usage(stderr);
		return EX_USAGE;
	}

	struct fetch_error err = { 0 };
	struct account a;
	struct oauth2_endpoints e;
	char *dir = NULL, *path = NULL;
	account_init(&a);
	if (!load_account(config, argv[optind], &a, &err))
		goto out;
	if (a.oauth2.token_command != NULL) {
		fetch_error_set(&err, EX_CONFIG, "account %s gets its tokens from "
		    "oauth2_token_command; authorize with that helper instead", a.name);
		goto out;
	}
	if (!oauth2_endpoints(&a, &e, &err))
		goto out;
	if ((dir = fetch_state_dir(&err)) == NULL)
		goto out;
	path = oauth2_token_file(&a, dir);
	if (flow == NULL)
		flow = e.device != NULL ? "device" : "loopback";
	if (!strcmp(flow, "device") && e.device == NULL) {
		fetch_error_set(&err, EX_CONFIG, "account %s: no oauth2_device_endpoint for the "
		    "device flow (use --flow loopback)", a.name);
		goto out;
	}
	if (!strcmp(flow, "device") ? device_flow(&a, &e, path, timeout, &err) :
	    loopback_flow(&a, &e, path, timeout, &err))
		printf("popbox: account %s authorized; refresh token saved in %s\n", a.name, path);
out:
	if (err.code != 0)
		fprintf(stderr, "popbox oauth2: %s\n", err.msg);
	free(path);
	free(dir);
	account_free(&a);
	return err.code;
}

/* OAuth2 access tokens (oauth2.h): the token command, the token file and
 * the refresh grant (RFC 6749 §6) over libcurl, answers read with jansson. */
#include "client/oauth2.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

/* A token endpoint answers with a few hundred octets of JSON; anything
 * past this is not an OAuth2 answer (and is not kept in memory). */
#define OAUTH2_MAX_REPLY (64 * 1024)
/* The token file: a refresh token, an access token and a few fields. */
#define OAUTH2_MAX_TOKEN_FILE (64 * 1024)
/* The longest one HTTP exchange with the provider may take, connect
 * included: past it the run fails with EX_TEMPFAIL and cron retries. */
#define OAUTH2_HTTP_TIMEOUT 60
/* A cached access token is used only while it has at least this much
 * life left: the POP3 login that follows must not see it expire. */
#define OAUTH2_EXPIRY_MARGIN 60

struct preset {
	const char *name, *token, *device, *auth, *scope;
};

/* Provider presets (their published endpoints). Google's device flow does
 * not allow the https://mail.google.com/ scope, so Google has no device
 * endpoint here and `popbox oauth2` uses the loopback redirect. */
static const struct preset presets[] = {
	{ "google", "https://oauth2.googleapis.com/token", NULL,
	  "https://accounts.google.com/o/oauth2/v2/auth", "https://mail.google.com/" },
	{ "microsoft", "https://login.microsoftonline.com/common/oauth2/v2.0/token",
	  "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
	  "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
	  "https://outlook.office.com/POP.AccessAsUser.All offline_access" },
};

static const struct preset *
preset_find(const char *name)
{
	for (size_t i = 0; name != NULL && i < N_ELEMENTS(presets); i++)
		if (!strcasecmp(name, presets[i].name))
			return &presets[i];
	return NULL;
}

bool
oauth2_provider_known(const char *name)
{
	return preset_find(name) != NULL;
}

static void
curl_init_once(void)
{
	static bool done;
	if (!done) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			fatalx("cannot initialise libcurl");
		done = true;
	}
}

/* https://, or http:// to a loopback address (a local helper, tests). */
static bool
url_allowed(const char *key, const char *url, struct fetch_error *err)
{
	curl_init_once();
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL;
	bool ok = false;
	if (u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
		if (!strcasecmp(scheme, "https"))
			ok = true;
		else if (!strcasecmp(scheme, "http"))
			ok = !strcmp(host, "127.0.0.1") || !strcmp(host, "[::1]") ||
			    !strcasecmp(host, "localhost");
	}
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	if (!ok)
		return fetch_error_set(err, EX_CONFIG,
		    "%s %s: must be an https:// URL (http:// only to 127.0.0.1, [::1] or "
		    "localhost)", key, url);
	return true;
}

bool
oauth2_endpoints(const struct account *a, struct oauth2_endpoints *e, struct fetch_error *err)
{
	const struct preset *p = preset_find(a->oauth2.provider);
	e->token = a->oauth2.token_endpoint ? a->oauth2.token_endpoint : p ? p->token : NULL;
	e->device = a->oauth2.device_endpoint ? a->oauth2.device_endpoint : p ? p->device : NULL;
	e->auth = a->oauth2.auth_endpoint ? a->oauth2.auth_endpoint : p ? p->auth : NULL;
	e->scope = a->oauth2.scope ? a->oauth2.scope : p ? p->scope : NULL;
	e->google = p != NULL && !strcmp(p->name, "google");
	if (a->oauth2.client_id == NULL)
		return fetch_error_set(err, EX_CONFIG,
		    "account %s: the built-in OAuth2 flow needs oauth2_client_id (the "
		    "application you registered with the provider), or use "
		    "oauth2_token_command", a->name);
	if (e->token == NULL)
		return fetch_error_set(err, EX_CONFIG,
		    "account %s: no oauth2_token_endpoint (set it, or oauth2_provider = google "
		    "or microsoft)", a->name);
	if (!url_allowed("oauth2_token_endpoint", e->token, err) ||
	    (e->device != NULL && !url_allowed("oauth2_device_endpoint", e->device, err)) ||
	    (e->auth != NULL && !url_allowed("oauth2_auth_endpoint", e->auth, err)))
		return false;
	return true;
}

char *
oauth2_token_file(const struct account *a, const char *state_dir)
{
	if (a->oauth2.refresh_token_file != NULL)
		return xstrdup(a->oauth2.refresh_token_file);
	return xasprintf("%s/%s.oauth2", state_dir, a->name);
}

/* ---- HTTP ---- */

struct reply {
	char *data;
	size_t len;
	bool too_long;
};

static size_t
reply_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct reply *r = userdata;
	size_t n = size * nmemb;
	if (r->len + n > OAUTH2_MAX_REPLY) {
		r->too_long = true;
		return 0;	/* libcurl stops with CURLE_WRITE_ERROR */
	}
	r->data = xrealloc(r->data, r->len + n + 1);
	memcpy(r->data + r->len, ptr, n);
	r->len += n;
	r->data[r->len] = '\0';
	return n;
}

void
oauth2_form_add(char **form, const char *key, const char *value)
{
	curl_init_once();
	char *v = curl_easy_escape(NULL, value, 0);
	if (v == NULL)
		fatalx("out of memory");
	char *next = xasprintf("%s%s%s=%s", *form ? *form : "", *form ? "&" : "", key, v);
	if (*form != NULL)
		free_secret(*form);
	secure_wipe(v, strlen(v));
	curl_free(v);
	*form = next;
}

bool
oauth2_post(const char *url, const char *form, json_t **json, long *status,
    struct fetch_error *err)
{
	struct reply r = { 0 };
	char curl_err[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdr = NULL;

	*json = NULL;
	*status = 0;
	curl_init_once();
	CURL *c = curl_easy_init();
	if (c == NULL)
		return fetch_error_set(err, EX_SOFTWARE, "cannot create a libcurl handle");
	hdr = curl_slist_append(hdr, "Accept: application/json");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, form);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, reply_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_err);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)OAUTH2_HTTP_TIMEOUT);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "popbox");
	CURLcode rc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
	curl_easy_cleanup(c);
	curl_slist_free_all(hdr);
	if (r.too_long) {
		free(r.data);
		return fetch_error_set(err, EX_PROTOCOL,
		    "%s answered with more than %d octets; that is not an OAuth2 answer", url,
		    OAUTH2_MAX_REPLY);
	}
	if (rc != CURLE_OK) {
		free(r.data);
		return fetch_error_set(err, EX_TEMPFAIL, "cannot reach %s: %s", url,
		    curl_err[0] ? curl_err : curl_easy_strerror(rc));
	}
	json_error_t jerr;
	json_t *j = r.data != NULL ? json_loadb(r.data, r.len, 0, &jerr) : NULL;
	if (r.data != NULL)
		secure_wipe(r.data, r.len);
	free(r.data);
	if (j == NULL || !json_is_object(j)) {
		json_decref(j);
		return fetch_error_set(err, *status >= 500 ? EX_TEMPFAIL : EX_PROTOCOL,
		    "%s answered HTTP %ld without a JSON object", url, *status);
	}
	*json = j;
	return true;
}

bool
oauth2_form_client(const struct account *a, char **form, struct fetch_error *err)
{
	oauth2_form_add(form, "client_id", a->oauth2.client_id);
	if (a->oauth2.client_secret != NULL) {
		oauth2_form_add(form, "client_secret", a->oauth2.client_secret);
	} else if (a->oauth2.client_secret_command != NULL) {
		char *secret;
		if (!account_run_secret_command(a, a->oauth2.client_secret_command,
		    "oauth2_client_secret_command", &secret, err))
			return false;
		oauth2_form_add(form, "client_secret", secret);
		free_secret(secret);
	}
	return true;
}

static const char *
json_str(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

/* What the RFC 6749 §5.2 / RFC 8628 §3.5 codes mean for the user. */
static const char *
provider_advice(const char *code)
{
	static const struct {
		const char *code, *advice;
	} table[] = {
		{ "invalid_grant", "the refresh token was revoked or has expired (a changed "
		  "password, a revoked app, or months without use); run popbox oauth2 %s again" },
		{ "invalid_client", "the provider does not accept oauth2_client_id / "
		  "oauth2_client_secret: check them against the application you registered" },
		{ "unauthorized_client", "the application (oauth2_client_id) may not use this "
		  "grant: allow it in the provider's app registration (for the device code flow, "
		  "\"public client\" / \"allow public client flows\")" },
		{ "invalid_scope", "the provider refuses oauth2_scope for this application" },
		{ "access_denied", "the authorization was declined in the browser; run popbox "
		  "oauth2 %s again and allow access" },
		{ "expired_token", "the code was not entered in time; run popbox oauth2 %s again" },
		{ "invalid_request", "the provider refused the request as malformed (check the "
		  "oauth2_* settings)" },
	};
	for (size_t i = 0; i < N_ELEMENTS(table); i++)
		if (!strcmp(code, table[i].code))
			return table[i].advice;
	return NULL;
}

bool
oauth2_provider_error(const struct account *a, const char *what, json_t *json, long status,
    struct fetch_error *err)
{
	const char *code = json_str(json, "error");
	const char *desc = json_str(json, "error_description");
	char clean_code[64], clean_desc[300], advice[400] = "";
	str_sanitize(clean_code, sizeof(clean_code), code ? code : "(none)",
	    strlen(code ? code : "(none)"));
	str_sanitize(clean_desc, sizeof(clean_desc), desc ? desc : "", strlen(desc ? desc : ""));
	if (code != NULL && provider_advice(code) != NULL) {
		/* every advice has at most one %s, the account name */
		const char *fmt = provider_advice(code);
		const char *pct = strstr(fmt, "%s");
		if (pct != NULL)
			snprintf(advice, sizeof(advice), "%.*s%s%s", (int)(pct - fmt), fmt, a->name,
			    pct + 2);
		else
			snprintf(advice, sizeof(advice), "%s", fmt);
	}
	int ex = EX_NOPERM;
	if (status >= 500 || (code != NULL && (!strcmp(code, "temporarily_unavailable") ||
	    !strcmp(code, "server_error"))))
		ex = EX_TEMPFAIL;
	else if (code == NULL)
		ex = EX_PROTOCOL;
	return fetch_error_set(err, ex, "%s: the provider answered HTTP %ld, error %s%s%s%s%s%s",
	    what, status, clean_code, desc ? " (" : "", clean_desc, desc ? ")" : "",
	    advice[0] ? ": " : "", advice);
}

/* ---- the token file ---- */

static json_t *
token_file_load(const char *path, bool *missing, struct fetch_error *err)
{
	*missing = false;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT) {
			*missing = true;
			return NULL;
		}
		fetch_error_set(err, EX_CONFIG, "cannot read %s: %s", path, strerror(errno));
		return NULL;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077) != 0) {
		close(fd);
		fetch_error_set(err, EX_CONFIG, "%s holds an OAuth2 refresh token and must be a "
		    "regular file that only you can read (chmod 600 %s)", path, path);
		return NULL;
	}
	char *data = NULL, *rerr = NULL;
	size_t len = 0;
	int r = util_read_file_bounded(fd, path, OAUTH2_MAX_TOKEN_FILE, UTIL_READ_SECRET, &data,
	    &len, &rerr);
	close(fd);
	if (r != 0) {
		fetch_error_set(err, EX_CONFIG, "%s", rerr ? rerr : path);
		free(rerr);
		return NULL;
	}
	json_error_t jerr;
	json_t *j = json_loadb(data, len, 0, &jerr);
	secure_wipe(data, len);
	free(data);
	if (j == NULL || !json_is_object(j) || json_str(j, "refresh_token") == NULL) {
		json_decref(j);
		fetch_error_set(err, EX_CONFIG, "%s is not a popbox OAuth2 token file (JSON with "
		    "a refresh_token); run popbox oauth2 to write it again", path);
		return NULL;
	}
	return j;
}

static bool
token_file_write(const char *path, json_t *j, struct fetch_error *err)
{
	char *text = json_dumps(j, JSON_INDENT(1) | JSON_SORT_KEYS);
	if (text == NULL)
		return fetch_error_set(err, EX_SOFTWARE, "cannot encode the token file");
	char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	bool ok = false;
	if (fd < 0) {
		fetch_error_set(err, EX_CANTCREAT, "cannot create %s: %s", tmp, strerror(errno));
		goto out;
	}
	size_t len = strlen(text);
	ssize_t n = write(fd, text, len);
	if (n < 0 || (size_t)n != len || write(fd, "\n", 1) != 1 || fsync(fd) < 0) {
		fetch_error_set(err, EX_IOERR, "cannot write %s: %s", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
		goto out;
	}
	close(fd);
	if (rename(tmp, path) < 0) {
		fetch_error_set(err, EX_IOERR, "cannot rename %s to %s: %s", tmp, path,
		    strerror(errno));
		unlink(tmp);
		goto out;
	}
	ok = true;
out:
	secure_wipe(text, strlen(text));
	free(text);
	free(tmp);
	return ok;
}

bool
oauth2_save_tokens(const char *path, json_t *answer, const char *old_refresh,
    struct fetch_error *err)
{
	const char *access = json_str(answer, "access_token");
	const char *refresh = json_str(answer, "refresh_token");
	json_t *exp = json_object_get(answer, "expires_in");
	if (access == NULL || access[0] == '\0')
		return fetch_error_set(err, EX_PROTOCOL,
		    "the provider's token answer has no access_token");
	if (refresh == NULL)
		refresh = old_refresh;
	if (refresh == NULL)
		return fetch_error_set(err, EX_UNAVAILABLE,
		    "the provider gave an access token but no refresh token, so popbox could "
		    "not renew it (for Microsoft, the scope needs offline_access)");
	/* expires_in: a number (or a string of digits, which some send);
	 * without it the token is not cached at all */
	long long expires_in = 0;
	if (json_is_integer(exp))
		expires_in = json_integer_value(exp);
	else if (json_is_string(exp))
		expires_in = strtoll(json_string_value(exp), NULL, 10);
	json_t *j = json_object();
	json_object_set_new(j, "refresh_token", json_string(refresh));
	if (expires_in > OAUTH2_EXPIRY_MARGIN) {
		json_object_set_new(j, "access_token", json_string(access));
		json_object_set_new(j, "expires_at", json_integer((json_int_t)time(NULL) +
		    expires_in));
	}
	bool ok = token_file_write(path, j, err);
	json_decref(j);
	return ok;
}

/* The refresh grant: a new access token for the refresh token in file. */
static bool
refresh(const struct account *a, const char *path, json_t *file, char **token,
    struct fetch_error *err)
{
	struct oauth2_endpoints e;
	char *form = NULL;
	json_t *answer = NULL;
	long status;
	bool ok = false;
	if (!oauth2_endpoints(a, &e, err))
		return false;
	oauth2_form_add(&form, "grant_type", "refresh_token");
	oauth2_form_add(&form, "refresh_token", json_str(file, "refresh_token"));
	if (!oauth2_form_client(a, &form, err))
		goto out;
	if (!oauth2_post(e.token, form, &answer, &status, err))
		goto out;
	if (status != 200 || json_str(answer, "access_token") == NULL) {
		oauth2_provider_error(a, "refreshing the OAuth2 access token", answer, status, err);
		goto out;
	}
	if (!oauth2_save_tokens(path, answer, json_str(file, "refresh_token"), err))
		goto out;
	*token = xstrdup(json_str(answer, "access_token"));
	ok = true;
out:
	if (form != NULL)
		free_secret(form);
	json_decref(answer);
	return ok;
}

bool
oauth2_access_token(const struct account *a, const char *state_dir, char **token,
    struct fetch_error *err)
{
	*token = NULL;
	if (a->oauth2.token_command != NULL)
		return account_run_secret_command(a, a->oauth2.token_command,
		    "oauth2_token_command", token, err);
	struct oauth2_endpoints e;
	if (!oauth2_endpoints(a, &e, err))	/* a bad setting is said first */
		return false;
	char *path = oauth2_token_file(a, state_dir);
	bool missing, ok = false;
	json_t *file = token_file_load(path, &missing, err);
	if (file == NULL) {
		if (missing)
			fetch_error_set(err, EX_NOPERM, "account %s: no OAuth2 refresh token yet "
			    "(%s): run popbox oauth2 %s once to authorize popbox", a->name, path,
			    a->name);
		goto out;
	}
	const char *cached = json_str(file, "access_token");
	json_t *exp = json_object_get(file, "expires_at");
	if (cached != NULL && json_is_integer(exp) &&
	    json_integer_value(exp) - OAUTH2_EXPIRY_MARGIN > (json_int_t)time(NULL)) {
		*token = xstrdup(cached);
		ok = true;
		goto out;
	}
	ok = refresh(a, path, file, token, err);
out:
	json_decref(file);
	free(path);
	return ok;
}

void
oauth2_forget_access_token(const struct account *a, const char *state_dir)
{
	if (a->oauth2.token_command != NULL)
		return;
	char *path = oauth2_token_file(a, state_dir);
	bool missing;
	struct fetch_error ignored = { 0 };
	json_t *file = token_file_load(path, &missing, &ignored);
	if (file != NULL && json_object_get(file, "access_token") != NULL) {
		json_object_del(file, "access_token");
		json_object_del(file, "expires_at");
		(void)token_file_write(path, file, &ignored);
	}
	json_decref(file);
	free(path);
}

/* OAuth2 access tokens for XOAUTH2 and OAUTHBEARER (docs/popbox.1,
 * OAUTH2; docs/DESIGN.md "popbox fetch: OAuth2").
 *
 * A token comes from oauth2_token_command (any helper that prints one:
 * oama, mutt_oauth2.py, pizauth), or from the built-in flow: a refresh
 * token kept in a 0600 JSON file in the state directory (written by
 * `popbox oauth2 ACCOUNT`, oauth2_cmd.c) is exchanged at the provider's
 * token endpoint for an access token, which is cached in the same file
 * until its expires_in has passed. HTTP is libcurl, JSON jansson.
 *
 * Errors (fetch_error.h): the provider refusing the client or the refresh
 * token (invalid_grant, invalid_client, ...) is EX_NOPERM (77) with the
 * provider's error code and what to do in plain words; the network, a
 * timeout or a 5xx answer EX_TEMPFAIL (75); a missing or bad setting
 * EX_CONFIG (78); an answer that is not the JSON RFC 6749 describes
 * EX_PROTOCOL (76).
 */
#ifndef POPBOX_OAUTH2_H
#define POPBOX_OAUTH2_H

#include <stdbool.h>
#include <stdint.h>

#include "client/account.h"
#include "client/fetch_error.h"

/* The endpoints and scope an account uses: its own keys, else its
 * provider's preset. Strings are borrowed from the account or static. */
struct oauth2_endpoints {
	const char *token, *device, *auth, *scope;
	bool google;               /* the authorization URL needs access_type=offline */
};

/* Is name a provider preset (google, microsoft)? */
bool oauth2_provider_known(const char *name);

/* Fill e for account a. EX_CONFIG when there is no token endpoint, or an
 * endpoint is not https:// (http:// only to a loopback address). */
bool oauth2_endpoints(const struct account *a, struct oauth2_endpoints *e,
    struct fetch_error *err);

/* The file holding a's refresh token: oauth2_refresh_token_file, or
 * STATE_DIR/NAME.oauth2 (xmalloc'd). */
char *oauth2_token_file(const struct account *a, const char *state_dir);

/* An access token for a (account_has_oauth2() true): the output of
 * oauth2_token_command, or the built-in flow's cached token while it is
 * valid, else a refreshed one (the file is rewritten atomically, 0600).
 * *token is xmalloc'd (free with free_secret()). */
bool oauth2_access_token(const struct account *a, const char *state_dir, char **token,
    struct fetch_error *err);

/* The login with the cached access token was refused: forget it, so the
 * next run refreshes instead of trying it again. Best effort. */
void oauth2_forget_access_token(const struct account *a, const char *state_dir);

/* ---- for oauth2_cmd.c ---- */

/* POST form (application/x-www-form-urlencoded, already encoded) to url
 * and parse the JSON object it answers; *status gets the HTTP status.
 * *json is the object (json_decref it), or NULL with err set. The body is
 * bounded (OAUTH2_MAX_REPLY). */
struct json_t;
bool oauth2_post(const char *url, const char *form, struct json_t **json, long *status,
    struct fetch_error *err);

/* Append "&key=value" (value URL-encoded; no '&' before the first) to
 * *form (xmalloc'd string, NULL to start). */
void oauth2_form_add(char **form, const char *key, const char *value);

/* The client_id / client_secret fields for a token request, appended to
 * *form (the secret from oauth2_client_secret or its command). */
bool oauth2_form_client(const struct account *a, char **form, struct fetch_error *err);

/* An error answer of the token endpoint ({"error": ..., "error_description":
 * ...}, RFC 6749 §5.2) as err: EX_NOPERM with the code and advice for the
 * codes that mean the user must act, EX_TEMPFAIL for temporarily_unavailable
 * and 5xx. what: "refreshing the access token", ... */
bool oauth2_provider_error(const struct account *a, const char *what, struct json_t *json,
    long status, struct fetch_error *err);

/* Save a token answer ({"access_token", "expires_in", "refresh_token"})
 * into path, keeping old_refresh when the answer has no new refresh token
 * (NULL: none). Atomic (temp file, fsync, rename), mode 0600. */
bool oauth2_save_tokens(const char *path, struct json_t *answer, const char *old_refresh,
    struct fetch_error *err);

#endif

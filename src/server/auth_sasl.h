/* SASL exchanges of the auth process (RFC 5034 AUTH, run with GNU SASL):
 * the GNU SASL callback that reads users and secrets through the passdb
 * interface (auth_passdb.h), SCRAM answers for unknown users, and the
 * verdict on each step. Nothing here talks to workers: auth.c relays the
 * client's lines and answers (docs/DESIGN.md, "The auth process").
 *
 * Threads: auth_sasl_conv_step runs on a pool thread (SCRAM's PBKDF2 and
 * crypt hashes are slow), one step of a conversation at a time; everything
 * else on the event loop thread. */
#ifndef POPBOX_AUTH_SASL_H
#define POPBOX_AUTH_SASL_H

#include <stdbool.h>

#include "server/auth_passdb.h"

struct auth_sasl;    /* per process: the GNU SASL library, the salt key */
struct sasl_conv;    /* one exchange */

#define AUTH_SASL_KEY_SIZE 32

/* salt_key: AUTH_SASL_KEY_SIZE octets that key the SCRAM salts of users
 * without a stored secret of the mechanism (unknown users, {PLAIN} users,
 * other schemes), so that these are the same for a user name every time
 * and, with the key kept in state_dir, across restarts (docs/DESIGN.md,
 * "The auth process"); NULL: a random key (salts change at each start).
 * Fatal when GNU SASL or the random generator fails. */
struct auth_sasl *auth_sasl_new(const unsigned char *salt_key);
void auth_sasl_free(struct auth_sasl *sasl);

/* Start an exchange of mech (as the client named it) against the users of
 * ref, which is held until auth_sasl_conv_free. cb_exporter, cb_unique:
 * the TLS channel bindings (base64) for the -PLUS mechanisms, NULL or ""
 * when none. NULL when GNU SASL does not offer mech. */
struct sasl_conv *auth_sasl_conv_new(struct auth_sasl *sasl, const char *mech,
    struct passdb_ref *ref, const char *cb_exporter, const char *cb_unique);
void auth_sasl_conv_free(struct sasl_conv *conv);

/* One step: input is the client's base64 response, NULL when it gave none
 * (AUTH without an initial response). Returns the GNU SASL code; *output_r
 * is the base64 to send (challenge, or SCRAM's success data) or NULL.
 * LOGIN with an initial response takes it as the user name, as Dovecot
 * does (GNU SASL ignores the input of LOGIN's first step). */
int auth_sasl_conv_step(struct sasl_conv *conv, const char *input, char **output_r);

enum sasl_outcome {
	SASL_OUTCOME_CONTINUE,   /* send *output_r as a challenge */
	SASL_OUTCOME_SUCCESS,    /* *entry_r logged in */
	SASL_OUTCOME_FAILURE,    /* *why_r says why, for the log */
};

/* The authentication id the client gave so far (without its device, see
 * below), "" before it gave one. */
const char *auth_sasl_conv_user(const struct sasl_conv *conv);
/* Devices (devices.h): the authentication id is split at its last sep
 * ('\0', the default: never); the users file is asked for the part before
 * it, and auth_sasl_conv_device gives the separator and what follows it
 * ("" without a separator; as IPC_AUTH_RESULT carries it). The
 * exchange itself (SCRAM's proof) uses the whole name. */
void auth_sasl_conv_set_device_separator(struct sasl_conv *conv, char sep);
const char *auth_sasl_conv_device(const struct sasl_conv *conv);

/* The verdict on a step that returned rc. *user_r: the authentication id
 * the client gave without its device, "" before it gave one (for answers,
 * the penalty and logs). */
enum sasl_outcome auth_sasl_conv_outcome(struct sasl_conv *conv, int rc,
    const struct passwd_entry **entry_r, const char **user_r, const char **why_r);

#endif

/* Login (login.c): USER/PASS and APOP (RFC 1939), AUTH and its SASL
 * exchange (RFC 5034), the requests to the auth process and its answers,
 * and the opening of the maildrop that completes a login. It owns the
 * AUTHORIZATION fields of struct session: login_name (the name the client
 * gave) and user (the user logged in) are each set in one place here. */
#ifndef POPBOX_LOGIN_H
#define POPBOX_LOGIN_H

#include <stdbool.h>
#include <stddef.h>

#include "server/session.h"

struct ipc_auth_result;

/* The greeting, with the APOP timestamp when APOP is on. */
void login_greet(struct session *s);

/* Command handlers for commands.c's table (state and argument count are
 * checked there). */
void login_user(struct session *s, int argc, char **argv);
void login_pass(struct session *s, int argc, char **argv);
void login_apop(struct session *s, int argc, char **argv);
void login_auth(struct session *s, int argc, char **argv);

/* Input in SESSION_SASL: the client's next response, or a line the framing
 * refused (which ends the exchange). */
void login_sasl_input(struct session *s, enum session_input what, char *line, size_t len);

/* The auth process answered (worker.c's auth channel). */
void login_auth_result(struct worker *w, const struct ipc_auth_result *r);
/* The auth process did not answer within SESSION_AUTH_TIMEOUT_SECONDS. */
void login_auth_timeout(struct session *s);
/* A session process (session_proc.c): open user's maildrop at location for
 * the session handed over, as the end of a login in a worker does. expire,
 * login_delay: the user's own EXPIRE and LOGIN-DELAY (ipc.h's encoding; 0:
 * the config's). */
void login_open_maildrop(struct session *s, const char *user, const char *location,
    enum uidl_format uidl_format, const char *device, unsigned expire, unsigned login_delay);
/* STLS: forget the name given in clear. */
void login_forget(struct session *s);
/* The session ends: drop its pending request and SASL exchange. */
void login_end(struct session *s);

/* Whether USER/PASS (and AUTH PLAIN/LOGIN) may be used on s now. */
bool login_plaintext_allowed(const struct session *s);
/* SASL mechanisms offered on s now, space separated (static buffer). */
const char *login_sasl_mechanisms(const struct session *s);

#endif

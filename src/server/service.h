/* popboxd under a service manager (systemd, docs/DESIGN.md "Running under
 * systemd"): readiness and state notifications (sd_notify) and listening
 * sockets handed over by socket activation (sd_listen_fds_with_names).
 *
 * Socket activation: every passed socket carries a name saying what it is
 * for ("pop3" = a listen entry, "pop3s" = a listen_tls entry, "lmtp" = a
 * listen_lmtp entry, TCP or unix:PATH; the socket unit's
 * FileDescriptorName=). Each passed socket must be a listening stream
 * socket whose bound address (or path) equals exactly one config entry of
 * its kind, and each config entry must be matched by exactly one passed socket:
 * a socket the config does not list, a config entry no socket provides, an
 * unknown name or a socket passed twice for one entry are errors at
 * start-up (never a silent listener too many or too few). */
#ifndef POPBOX_SERVICE_H
#define POPBOX_SERVICE_H

#include <stddef.h>

#include "server/config.h"
#include "server/popboxd.h"

/* The listener name used in logs and errors: "127.0.0.1:110", "[::1]:995". */
char *service_listen_name(const struct config_listen *cl);
/* "pop3" or "pop3s": the FileDescriptorName= a config entry expects. */
const char *service_listen_kind(const struct config_listen *cl);

/* Takes the sockets passed by socket activation, if any, and matches them to
 * the config's listeners: into *out in the master's order (config->listens,
 * then listen_lmtp's TCP entries, then its unix sockets; each fd
 * non-blocking and close-on-exec; a unix socket's file is systemd's and is
 * never removed by popboxd). Returns 0 when nothing was passed (bind
 * as usual), 1 when *out holds the matched sockets, -1 with *error_r on any
 * mismatch (every passed socket is closed then). The LISTEN_ variables are
 * removed from the environment either way. */
int service_listeners(const struct config *config, struct listener **out, char **error_r);

/* Notifications to $NOTIFY_SOCKET; nothing happens without it. */
void service_notify_ready(const char *status);
void service_notify_reloading(void);
void service_notify_stopping(void);
/* Sends STATUS=text, only when it differs from the last one sent. */
void service_notify_status(const char *status);

#endif

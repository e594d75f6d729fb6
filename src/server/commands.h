/* The POP3 command table and dispatch (commands.c). */
#ifndef POPBOX_COMMANDS_H
#define POPBOX_COMMANDS_H

#include "server/session.h"

/* What a worker creates its sessions with: input lines go to the command
 * table (and, during an AUTH exchange, to login.c), the auth timeout and
 * the end of a session to login.c. */
extern const struct session_handler commands_handler;

#endif

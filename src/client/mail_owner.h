/* The popbox subcommands that work on popboxd's mail store (deliver,
 * migrate-uidls) touch mail as popboxd's workers do: as run_as, never as
 * root. */
#ifndef POPBOX_MAIL_OWNER_H
#define POPBOX_MAIL_OWNER_H

#include "server/config.h"

/* Started as root: become config->run_as (groups, gid, uid; no way back).
 * Not root: stay who we are. Returns 0, or -1 after printing why on stderr
 * (prefixed with prog): run_as unknown, the change failed, or we would still
 * be root afterwards (run_as = root). */
int mail_owner_become(const struct config *config, const char *prog);

#endif

#ifndef POPBOX_MASTER_H
#define POPBOX_MASTER_H

#include "server/config.h"

/* Checks beyond syntax that -t should report (run_as exists, files readable).
 * Returns 0, or -1 with *error_r. */
int master_check(const struct config *config, char **error_r);
/* Bind, fork the auth process and workers, supervise until SIGTERM/SIGINT.
 * Returns the process exit status. Takes ownership of config. */
int master_run(struct config *config, bool foreground);

#endif

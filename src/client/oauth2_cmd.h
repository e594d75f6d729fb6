/* popbox oauth2 ACCOUNT: the one-time OAuth2 authorization (oauth2_cmd.c). */
#ifndef POPBOX_OAUTH2_CMD_H
#define POPBOX_OAUTH2_CMD_H

/* Entry point; argv[0] is "oauth2". Returns a sysexits.h status. */
int oauth2_cmd_main(int argc, char **argv);

#endif

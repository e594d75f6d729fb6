/* popbox: the command-line tool. One entry per subcommand in `commands`
 * below; each takes (argc, argv) with argv[0] the subcommand's name and
 * returns a sysexits code. Subcommands that work on popboxd's mail store
 * (passdb, mail location, store) come from the server archive, which the
 * popbox binary links as well (Makefile).
 */
#include "client/deliver_cmd.h"
#include "client/devices_cmd.h"
#include "client/fetch.h"
#include "client/hash.h"
#include "client/migrate_uidls.h"
#include "client/oauth2_cmd.h"
#include "common/log.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

struct subcommand {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
};

static const struct subcommand commands[] = {
	{ "deliver", deliver_cmd_main, "deliver a message into a maildrop, for MTAs (popbox deliver --help)" },
	{ "devices", devices_cmd_main, "list or forget a user's devices on popboxd (popbox devices --help)" },
	{ "expire", expire_cmd_main, "remove what every device deleted and what expired (popbox expire --help)" },
	{ "fetch", fetch_main, "download mail from POP3 servers (popbox fetch --help)" },
	{ "hash", hash_main, "make a password hash line for the users file (popbox hash --help)" },
	{ "migrate-uidls", migrate_uidls_main, "keep the UIDLs of Dovecot or Courier (popbox migrate-uidls --help)" },
	{ "oauth2", oauth2_cmd_main, "authorize popbox once for an OAuth2 account (popbox oauth2 --help)" },
};

static void
usage(FILE *f)
{
	fprintf(f, "usage: popbox COMMAND [options]\ncommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
}

int
main(int argc, char **argv)
{
	/* a closed connection or an exited mda must be an error return,
	 * not a silent death */
	signal(SIGPIPE, SIG_IGN);
	log_init("popbox", true, false);
	if (argc < 2) {
		usage(stderr);
		return EX_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].run(argc - 1, argv + 1);
	fprintf(stderr, "popbox: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return EX_USAGE;
}

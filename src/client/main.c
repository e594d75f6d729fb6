/* popbox: the command-line tool. Subcommands:
 *   fetch   download mail from POP3 servers (fetch_cli.c, fetch.c)
 *   hash    password hash for the users file (hash.c)
 */
#include "client/fetch.h"
#include "client/hash.h"
#include "common/log.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

static void
usage(FILE *f)
{
	fprintf(f, "usage: popbox COMMAND [options]\n"
	    "commands:\n"
	    "  fetch    download mail from POP3 servers (popbox fetch --help)\n");
	fprintf(f, "  hash     make a password hash line for the users file (popbox hash --help)\n");
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
	if (!strcmp(argv[1], "fetch"))
		return fetch_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "hash"))
		return hash_main(argc - 1, argv + 1);
	fprintf(stderr, "popbox: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return EX_USAGE;
}

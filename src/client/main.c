/* popbox: the command-line tool. Subcommands:
 *   fetch   download mail from POP3 servers (fetch.c)
 *   hash    password hash for the users file (hash.c, when present)
 */
#include "client/fetch.h"
#include "common/log.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

/* popbox hash lives in src/client/hash.c (written separately). The
 * subcommand is offered only when that file is part of the build: a
 * release never lists a command that is not implemented. A strong
 * reference is needed so the linker pulls hash.o out of the archive. */
#if defined(__has_include)
#if __has_include("client/hash.c")
#define POPBOX_HAVE_HASH 1
int hash_main(int argc, char **argv);
#endif
#endif

static void
usage(FILE *f)
{
	fprintf(f, "usage: popbox COMMAND [options]\n"
	    "commands:\n"
	    "  fetch    download mail from POP3 servers (popbox fetch --help)\n");
#ifdef POPBOX_HAVE_HASH
	fprintf(f, "  hash     make a password hash line for the users file\n");
#endif
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
#ifdef POPBOX_HAVE_HASH
	if (!strcmp(argv[1], "hash"))
		return hash_main(argc - 1, argv + 1);
#endif
	fprintf(stderr, "popbox: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return EX_USAGE;
}

/* popboxd: the POP3 server. Command line, then the master (master.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "server/config.h"
#include "server/master.h"
#include "server/popboxd.h"
#include "server/tls.h"

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: popboxd [-f] [-t] [-d] -c FILE\n"
	    "  -c FILE  configuration file (see popboxd.conf(5))\n"
	    "  -f       stay in the foreground and log to standard error\n"
	    "  -t       check the configuration and exit (0 valid, 1 invalid)\n"
	    "  -d       debug logging\n"
	    "  -h       this help; -V version\n");
}

int
main(int argc, char **argv)
{
	const char *config_path = NULL;
	bool foreground = false, test_only = false, debug = false;
	int ch;

	/* Before anything can make OpenSSL allocate (tls.h says why). */
	bool wiping = tls_wipe_freed_memory();

	while ((ch = getopt(argc, argv, "c:ftdhV")) != -1) {
		switch (ch) {
		case 'c': config_path = optarg; break;
		case 'f': foreground = true; break;
		case 't': test_only = true; break;
		case 'd': debug = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("popboxd %s\n", POPBOXD_VERSION); return 0;
		default: usage(stderr); return 64;
		}
	}
	if (optind != argc || config_path == NULL) {
		usage(stderr);
		return 64;
	}

	struct config *config;
	char *error = NULL;
	if (config_load(config_path, &config, &error) < 0) {
		fprintf(stderr, "popboxd: %s\n", error);
		free(error);
		return 1;
	}
	if (test_only) {
		int r = master_check(config, &error);
		if (r != 0) {
			fprintf(stderr, "popboxd: %s\n", error);
			free(error);
			config_free(config);
			return 1;
		}
		printf("popboxd: configuration %s is valid\n", config_path);
		config_free(config);
		return 0;
	}
	log_init("popboxd", foreground, debug || config->log_debug);
	log_configure((enum log_format)config->log_format, (enum log_target)config->log_target);
	if (!wiping)
		log_warnx("OpenSSL allocated memory before start-up: freed copies of the TLS key "
		    "may stay in memory");
	return master_run(config, foreground);
}

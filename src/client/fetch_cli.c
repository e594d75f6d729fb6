/* popbox fetch: the command line (popbox(1)). Parses the options, loads
 * the accounts file (or makes the one-off account of --host ...), picks
 * the accounts named, and runs fetch_account() on each. */
#include "client/fetch.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
	OPT_CONFIG = 1000, OPT_LIST, OPT_REBUILD, OPT_HELP, OPT_JOBS, OPT_DAEMON, OPT_INTERVAL,
	OPT_KEY,
};

struct keyopt {
	const char *opt, *key;
	bool optional_arg;   /* booleans: --keep means --keep=yes */
};

static const struct keyopt keyopts[] = {
	{ "host", "host", false }, { "port", "port", false }, { "tls", "tls", false },
	{ "tls-trust-file", "tls_trust_file", false },
	{ "tls-fingerprint", "tls_fingerprint", false },
	{ "insecure", "insecure", true }, { "user", "user", false },
	{ "password", "password", false },
	{ "password-command", "password_command", false }, { "auth", "auth", false },
	{ "deliver", "deliver", false }, { "keep", "keep", true },
	{ "keep-days", "keep_days", false }, { "max-size", "max_size", false },
	{ "timeout", "timeout", false }, { "allow-plaintext", "allow_plaintext", true },
	{ "pipelining", "pipelining", false },
	{ "max-message-size", "max_message_size", false }, { "deadline", "deadline", false },
	{ "oauth2-token-command", "oauth2_token_command", false },
	{ "oauth2-provider", "oauth2_provider", false },
	{ "oauth2-client-id", "oauth2_client_id", false },
	{ "oauth2-client-secret", "oauth2_client_secret", false },
	{ "oauth2-client-secret-command", "oauth2_client_secret_command", false },
	{ "oauth2-token-endpoint", "oauth2_token_endpoint", false },
	{ "oauth2-refresh-token-file", "oauth2_refresh_token_file", false },
};

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: popbox fetch [options] [ACCOUNT...]\n"
	    "Download mail from POP3 servers into a Maildir, an mbox or a delivery command.\n"
	    "Accounts come from $XDG_CONFIG_HOME/popbox/accounts.conf; no ACCOUNT means all.\n"
	    "\n"
	    "  --config FILE            accounts file\n"
	    "  --list                   show what would be fetched; change nothing\n"
	    "  --rebuild-state          rebuild the state file from the Maildir\n"
	    "  --jobs N                 fetch up to N accounts at once (default 4)\n"
	    "  --daemon                 keep fetching, each account on its own schedule\n"
	    "  --interval DURATION      how often in daemon mode (default 5m; 30s, 1h)\n"
	    "  -q, --quiet              no progress, no summary (errors only)\n"
	    "  -v, --verbose            protocol trace on stderr (secrets masked)\n"
	    "Every accounts.conf key is also an option (one-off use, or override):\n"
	    "  --host H --port P --tls implicit|starttls|off --tls-trust-file FILE\n"
	    "  --tls-fingerprint SHA256 --insecure --user U --password-command CMD\n"
	    "  --auth auto|MECH --deliver maildir:PATH|mbox:PATH|mda:CMD --keep[=yes|no]\n"
	    "  --keep-days N --max-size N[K|M] --timeout SEC --allow-plaintext[=yes|no]\n"
	    "  --pipelining auto|yes|no --max-message-size N[K|M|G] --deadline SEC\n"
	    "  --oauth2-token-command CMD --oauth2-provider google|microsoft\n"
	    "  --oauth2-client-id ID --oauth2-client-secret-command CMD\n"
	    "  --oauth2-token-endpoint URL --oauth2-refresh-token-file FILE\n"
	    "A password is never taken from the command line: use the file or\n"
	    "--password-command. See popbox(1) and popbox-accounts.conf(5).\n"
	    "Exit: 0 ok, 75 temporary failure, 77 login refused, 78 configuration,\n"
	    "74 local delivery failed, 69 untrusted certificate, 76 protocol error.\n");
}

static bool
is_bool_word(const char *s)
{
	static const char *const words[] = { "yes", "no", "true", "false", "on", "off" };
	for (size_t i = 0; i < N_ELEMENTS(words); i++)
		if (!strcasecmp(s, words[i]))
			return true;
	return false;
}

/* Parse the options into o (initialised here; the caller frees o->over
 * with account_free() in every case). Returns -1 to go on, or the exit
 * status (0 for --help). On return optind is the first ACCOUNT. */
static int
parse_options(int argc, char **argv, struct fetch_options *o)
{
	struct fetch_error err = { 0 };
	struct option longopts[N_ELEMENTS(keyopts) + 12];
	size_t n = 0;

	memset(o, 0, sizeof(*o));
	o->progress_fd = -1;
	account_init(&o->over);
	for (size_t i = 0; i < N_ELEMENTS(keyopts); i++)
		longopts[n++] = (struct option){ keyopts[i].opt,
		    keyopts[i].optional_arg ? optional_argument : required_argument, NULL,
		    OPT_KEY + (int)i };
	longopts[n++] = (struct option){ "config", required_argument, NULL, OPT_CONFIG };
	longopts[n++] = (struct option){ "jobs", required_argument, NULL, OPT_JOBS };
	longopts[n++] = (struct option){ "daemon", no_argument, NULL, OPT_DAEMON };
	longopts[n++] = (struct option){ "interval", required_argument, NULL, OPT_INTERVAL };
	longopts[n++] = (struct option){ "list", no_argument, NULL, OPT_LIST };
	longopts[n++] = (struct option){ "rebuild-state", no_argument, NULL, OPT_REBUILD };
	longopts[n++] = (struct option){ "quiet", no_argument, NULL, 'q' };
	longopts[n++] = (struct option){ "verbose", no_argument, NULL, 'v' };
	longopts[n++] = (struct option){ "help", no_argument, NULL, 'h' };
	longopts[n++] = (struct option){ NULL, 0, NULL, 0 };

	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "qvh", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_CONFIG:
			o->config = optarg;
			break;
		case OPT_LIST:
			o->list = true;
			break;
		case OPT_DAEMON:
			o->daemon = true;
			break;
		case OPT_INTERVAL:
			if (!fetch_parse_duration(optarg, &o->interval)) {
				fprintf(stderr, "popbox: --interval must be a duration of 1s to 7d "
				    "(30s, 5m, 1h, or seconds)\n");
				return EX_USAGE;
			}
			break;
		case OPT_JOBS: {
			uint64_t u;
			if (!parse_u64(optarg, FETCH_MAX_JOBS, &u) || u == 0) {
				fprintf(stderr, "popbox: --jobs must be 1..%d\n", FETCH_MAX_JOBS);
				return EX_USAGE;
			}
			o->jobs = (int)u;
			break;
		}
		case OPT_REBUILD:
			o->rebuild = true;
			break;
		case 'q':
			o->quiet = true;
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			if (c >= OPT_KEY && c < OPT_KEY + (int)N_ELEMENTS(keyopts)) {
				const struct keyopt *k = &keyopts[c - OPT_KEY];
				char where[64];
				snprintf(where, sizeof(where), "option --%s", k->opt);
				/* "--keep yes": the yes/no as the next word is taken
				 * too, rather than as an account name */
				const char *val = optarg;
				if (val == NULL && k->optional_arg && optind < argc &&
				    is_bool_word(argv[optind]))
					val = argv[optind++];
				if (!account_set(&o->over, k->key, val ? val : "yes", where,
				    false, &err)) {
					fprintf(stderr, "popbox: %s\n", err.msg);
					return err.code;
				}
				o->have_over = true;
				break;
			}
			usage(stderr);
			return EX_USAGE;
		}
	}
	return -1;
}

/* The accounts to consider: the one-off account of the options (oneoff),
 * or every section of the accounts file. Returns 0 with *accts (xcalloc'd,
 * *nacct > 0 entries) or EX_CONFIG, the problem said on stderr. */
static int
load_accounts(const struct fetch_options *o, bool oneoff, int names, const char *first_name,
    struct account **accts, int *nacct, int *file_jobs)
{
	struct fetch_error err = { 0 };
	if (oneoff) {
		*accts = xcalloc(1, sizeof(**accts));
		account_init(&(*accts)[0]);
		*nacct = 1;
		return 0;
	}
	char *path = o->config ? xstrdup(o->config) : account_default_config_path();
	bool ok = account_load_file(path, true, accts, nacct, file_jobs, &err);
	if (!ok) {
		if (errno == ENOENT && o->config == NULL && o->over.host != NULL && names > 0)
			fprintf(stderr, "popbox: '%s' is not an option, so it was taken as an "
			    "account name, but there is no accounts file %s. With --host, --user "
			    "and --deliver give no account name; an option's value goes after "
			    "'=' or as the next word (--keep=yes, --keep yes)\n", first_name, path);
		else if (errno == ENOENT && o->config == NULL)
			fprintf(stderr, "popbox: no accounts file %s; create it (see "
			    "popbox-accounts.conf(5)) or give --host, --user and --deliver\n",
			    path);
		else
			fprintf(stderr, "popbox: %s\n", err.msg);
		free(path);
		return EX_CONFIG;
	}
	free(path);
	if (*nacct == 0) {
		fprintf(stderr, "popbox: no [account NAME] section in the accounts file\n");
		return EX_CONFIG;
	}
	return 0;
}

/* Mark in selected[] the accounts named by names[0..n) (all when n is
 * 0). Returns 0, or EX_CONFIG for an unknown name (said on stderr). */
static int
select_accounts(char **names, int n, const struct account *accts, int nacct,
    bool *selected)
{
	if (n == 0) {
		for (int k = 0; k < nacct; k++)
			selected[k] = true;
		return 0;
	}
	for (int i = 0; i < n; i++) {
		int k;
		for (k = 0; k < nacct; k++)
			if (!strcmp(accts[k].name, names[i]))
				break;
		if (k == nacct) {
			fprintf(stderr, "popbox: no account named '%s'\n", names[i]);
			return EX_CONFIG;
		}
		selected[k] = true;
	}
	return 0;
}

int
fetch_one(struct account *a, const struct fetch_options *o)
{
	struct fetch_error e = { 0 };
	account_override(a, &o->over);
	if (!account_finish(a, &e)) {
		fprintf(stderr, "popbox: %s\n", e.msg);
		return e.code;
	}
	return fetch_account(a, o);
}

int
fetch_main(int argc, char **argv)
{
	struct fetch_options o;
	int status = parse_options(argc, argv, &o);
	if (status >= 0) {
		account_free(&o.over);
		return status;
	}
	fetch_trace = o.verbose;
	log_init("popbox", true, o.verbose);

	struct account *accts = NULL;
	int nacct = 0;
	bool oneoff = optind == argc && o.over.host != NULL;
	int file_jobs = 0;
	status = load_accounts(&o, oneoff, argc - optind, optind < argc ? argv[optind] : NULL,
	    &accts, &nacct, &file_jobs);
	if (status != 0) {
		account_free(&o.over);
		return status;
	}
	bool *selected = xcalloc((size_t)nacct, sizeof(bool));
	status = select_accounts(argv + optind, argc - optind, accts, nacct, selected);
	if (status == 0 && o.rebuild && optind == argc && !oneoff && nacct > 1) {
		fprintf(stderr, "popbox: --rebuild-state needs the ACCOUNT to rebuild\n");
		status = EX_USAGE;
	}
	int nsel = 0;
	for (int k = 0; k < nacct; k++)
		nsel += selected[k];
	if (o.jobs == 0)
		o.jobs = file_jobs > 0 ? file_jobs : FETCH_DEFAULT_JOBS;
	if (status == 0 && o.daemon && (o.list || o.rebuild)) {
		fprintf(stderr, "popbox: --daemon does not go with --list or --rebuild-state\n");
		status = EX_USAGE;
	} else if (status == 0 && o.daemon) {
		status = fetch_daemon(accts, selected, nacct, &o);
	} else if (status == 0 && nsel > 1 && o.jobs > 1 && !o.list && !o.rebuild) {
		status = fetch_parallel(accts, selected, nacct, &o, NULL);
	} else if (status == 0) {
		/* every selected account, whatever happened to the others */
		for (int k = 0; k < nacct; k++)
			if (selected[k])
				status = fetch_status_worse(status, fetch_one(&accts[k], &o));
	}
	for (int k = 0; k < nacct; k++)
		account_free(&accts[k]);
	free(accts);
	free(selected);
	account_free(&o.over);
	return status;
}

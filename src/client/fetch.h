/* popbox fetch: the command line (fetch_cli.c) and the run of one
 * account (fetch.c, which drives fetch_pipeline.c and fetch_report.c). */
#ifndef POPBOX_FETCH_H
#define POPBOX_FETCH_H

#include <stdbool.h>

#include "client/account.h"
#include "client/fetch_error.h"

/* What the command line asks for, besides the accounts. */
struct fetch_options {
	const char *config;        /* --config FILE, or NULL: the default path */
	bool list, rebuild, quiet, verbose;
	struct account over;       /* account keys given as options */
	bool have_over;            /* at least one of them was given */
	int jobs;                  /* accounts fetched at once (--jobs, jobs =), 0: default */
	int progress_fd;           /* in a child of fetch_parallel: where progress goes, else -1 */
	bool daemon;               /* --daemon: fetch_daemon() */
	long interval;             /* --interval, seconds (daemon), 0: default */
};

/* "30s", "5m", "1h", "2d" or plain seconds, 1 s .. 7 days. */
bool fetch_parse_duration(const char *s, long *seconds);

/* What fetch_parallel learnt of one account's run. */
struct fetch_result {
	int status;                /* sysexits status of the run */
	long login_delay;          /* the server's LOGIN-DELAY, -1: none or unknown */
	int resp_code;             /* enum pop3_resp_code behind a failure, 0: none */
};

/* Accounts fetched at once unless --jobs or the file's jobs = says. */
#define FETCH_DEFAULT_JOBS 4
#define FETCH_MAX_JOBS ACCOUNT_MAX_JOBS

/* The worse of two sysexits statuses of accounts (0: success), for the
 * exit status of a run over several accounts (docs/popbox.1, EXIT
 * STATUS): what needs a person most wins, a temporary failure least. */
int fetch_status_worse(int a, int b);

/* Fetch accts[i] for every selected[i] (each completed with the options
 * first), up to o->jobs at once, each in a child process; on a terminal
 * one progress line per account, and a summary table at the end (not in
 * daemon mode). results (NULL, or nacct entries, by account index) get
 * what each selected account's run found. Returns the worst status
 * (fetch_status_worse). */
int fetch_parallel(struct account *accts, const bool *selected, int nacct,
    const struct fetch_options *o, struct fetch_result *results);

/* popbox fetch --daemon (fetch_daemon.c): fetch the selected accounts
 * again and again, each on its own schedule (docs/popbox.1, DAEMON), until
 * SIGTERM or SIGINT; returns 0 then. */
int fetch_daemon(struct account *accts, const bool *selected, int nacct,
    const struct fetch_options *o);

/* Complete account a with the options (account_override, account_finish)
 * and fetch it; the status (errors said on stderr). */
int fetch_one(struct account *a, const struct fetch_options *o);

/* The state directory ($XDG_STATE_HOME/popbox or ~/.local/state/popbox),
 * created 0700 if missing (xmalloc'd), or NULL with err set. */
char *fetch_state_dir(struct fetch_error *err);

/* Entry point of `popbox fetch`; argv[0] is "fetch". Returns a sysexits.h
 * status: 0 when every account was fetched, otherwise the worst status of
 * the accounts (fetch_status_worse). */
int fetch_main(int argc, char **argv);

/* Fetch one account (complete: account_finish() succeeded) as o says:
 * lock it, load its state, log in, then list (--list), rebuild the state
 * (--rebuild-state) or fetch and delete. Prints the summary line on
 * stdout (unless quiet) and any error on stderr itself. Returns 0 or the
 * sysexits.h status of the run (fetch_error.h): the first fatal error,
 * else the status of a message the server or the mda refused. a and o
 * are borrowed. */
int fetch_account(struct account *a, const struct fetch_options *o);

#endif

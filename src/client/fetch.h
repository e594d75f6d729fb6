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
};

/* The state directory ($XDG_STATE_HOME/popbox or ~/.local/state/popbox),
 * created 0700 if missing (xmalloc'd), or NULL with err set. */
char *fetch_state_dir(struct fetch_error *err);

/* Entry point of `popbox fetch`; argv[0] is "fetch". Returns a sysexits.h
 * status: 0 when every account was fetched, otherwise the status of the
 * first account that failed. */
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

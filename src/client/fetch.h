/* popbox fetch: command line, accounts, and the per-account run. */
#ifndef POPBOX_FETCH_H
#define POPBOX_FETCH_H

/* Entry point of `popbox fetch`; argv[0] is "fetch". Returns a sysexits.h
 * status: 0 when every account was fetched, otherwise the status of the
 * first account that failed. */
int fetch_main(int argc, char **argv);

#endif

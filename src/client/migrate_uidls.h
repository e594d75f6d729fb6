/* popbox migrate-uidls: before (or after) switching from Dovecot, Courier
 * or popa3d (mbox) to popboxd, report for each user how many messages keep the UIDL the old
 * server gave them and which do not (and why); with --freeze, record the
 * mapping in each maildrop's popbox.index, as a first login would, so the
 * old server's list is no longer needed (docs/DESIGN.md "UIDLs kept from
 * the old server", README "Switching from Dovecot").
 *
 *   popbox migrate-uidls [-c CONF] [--freeze] [--verbose] [USER...]
 *
 * Reads popboxd's config and users file (all users when none is named);
 * each maildrop is opened as a POP3 login opens it: under the maildrop lock
 * (a user in a session is skipped and reported), as run_as when started as
 * root (after the users file is read, like popboxd's workers), never as
 * root; with users = pam the Unix accounts a login accepts, each opened
 * by a child process that became the account. The old servers' files
 * are only read. */
#ifndef POPBOX_MIGRATE_UIDLS_H
#define POPBOX_MIGRATE_UIDLS_H

/* argv[0] is "migrate-uidls". Returns 0; EX_USAGE for bad options;
 * EX_CONFIG for a bad config; EX_NOUSER when a named user is unknown;
 * EX_NOPERM when privileges cannot be dropped; EX_TEMPFAIL when a maildrop
 * was in use or could not be read (the others are still done). */
int migrate_uidls_main(int argc, char **argv);

#endif

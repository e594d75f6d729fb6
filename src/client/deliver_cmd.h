/* popbox deliver: the local delivery agent (docs/popbox.1, docs/DESIGN.md
 * "Mail in"). Not to be confused with deliver.h, where popbox fetch puts
 * the mail it downloads.
 *
 *   popbox deliver [-c CONF] [-f SENDER] [-a ADDRESS] USER < message
 *
 * Finds USER (an address: user, user@domain, user+detail@domain) through
 * popboxd's config and users file, becomes run_as when started as root,
 * and delivers the message on stdin into the user's maildrop through the
 * store (store_deliver.h), with "Return-Path: <SENDER>" on top when -f is
 * given. -a names the address the MTA delivered to, for the log line. */
#ifndef POPBOX_DELIVER_CMD_H
#define POPBOX_DELIVER_CMD_H

/* argv[0] is "deliver". Returns a sysexits code for the MTA: 0 delivered
 * and durable; EX_USAGE bad options or sender; EX_NOUSER unknown user;
 * EX_TEMPFAIL disk full, I/O error, maildrop over max_maildrop_size;
 * EX_NOPERM over max_maildrop_size with max_maildrop_size_bounce, or over
 * max_message_size; EX_CONFIG bad config, users file or maildrop. */
int deliver_cmd_main(int argc, char **argv);

#endif

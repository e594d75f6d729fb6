/* popbox devices and popbox expire: the administrator's side of "every
 * device gets every message" (docs/DESIGN.md, popbox(1)).
 *
 *   popbox devices [-c CONF] USER [--forget DEVICE]
 *   popbox expire [-c CONF] [USER...]
 *
 * devices lists a user's devices (first and last login, active or idle, how
 * many messages each still holds back) or forgets one (its deletions go,
 * it holds nothing back, and files every remaining active device deleted
 * are removed). expire removes, for every user (or those named), the files
 * that every active device has deleted and what the user's EXPIRE says has
 * expired, for a cron job or a systemd timer, and prints a summary.
 * Both read popboxd's config and users file, open each maildrop as a POP3
 * login does (under the maildrop lock: a user in a session is skipped and
 * reported), as run_as when started as root, never as root. */
#ifndef POPBOX_DEVICES_CMD_H
#define POPBOX_DEVICES_CMD_H

/* argv[0] is the command. Return 0; EX_USAGE for bad options; EX_CONFIG for
 * a bad config; EX_NOUSER for an unknown user or device; EX_NOPERM when
 * privileges cannot be dropped; EX_TEMPFAIL when a maildrop was in use or
 * could not be read or written (the other users are still done). */
int devices_cmd_main(int argc, char **argv);
int expire_cmd_main(int argc, char **argv);

#endif

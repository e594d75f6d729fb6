/* The TRANSACTION state (RFC 1939 §5, §6; cmd_trans.c): STAT, LIST, UIDL,
 * RETR, TOP, DELE, NOOP, RSET and QUIT, with the expunge of UPDATE on the
 * store thread. It sets up s->store and the deletion marks (session.c
 * releases them when the connection ends, without UPDATE). */
#ifndef POPBOX_CMD_TRANS_H
#define POPBOX_CMD_TRANS_H

#include "server/session.h"

/* A login opened store for s: TRANSACTION starts, nothing marked. view:
 * the store indexes the session sees (a device's view; taken), NULL for
 * every message (view_count and view_size then unused). */
void cmd_trans_begin(struct session *s, struct store *store, uint32_t *view, uint32_t view_count,
    uint64_t view_size);

/* Command handlers for commands.c's table (state and argument count are
 * checked there). QUIT serves AUTHORIZATION too. */
void cmd_trans_stat(struct session *s, int argc, char **argv);
void cmd_trans_list(struct session *s, int argc, char **argv);
void cmd_trans_uidl(struct session *s, int argc, char **argv);
void cmd_trans_retr(struct session *s, int argc, char **argv);
void cmd_trans_top(struct session *s, int argc, char **argv);
void cmd_trans_dele(struct session *s, int argc, char **argv);
void cmd_trans_noop(struct session *s, int argc, char **argv);
void cmd_trans_rset(struct session *s, int argc, char **argv);
void cmd_trans_quit(struct session *s, int argc, char **argv);

#endif

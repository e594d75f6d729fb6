/* LMTP sessions (RFC 2033) inside a worker: mail coming in from the MTA
 * (docs/DESIGN.md "Mail in"). They run on the worker's event loop beside
 * the POP3 sessions and never block it: recipients are looked up by the
 * auth process (IPC_RCPT_LOOKUP), and every file operation (the spool
 * file, its writes and fsync, the deliveries) runs on the worker's
 * delivery threads (worker.h delivery_pool; beside the POP3 store thread,
 * so no login waits behind a delivery's fsync), one job at a time per
 * session.
 *
 * A transaction's message is streamed once into an anonymous spool file
 * in the first recipient's maildrop (store_maildir_spool_open), 256 KiB at
 * a time, with the socket read paused while a piece is written; after the
 * final fsync it is hard-linked into each recipient's new/
 * (store_maildir_deliver_file), and each recipient gets its own reply as
 * soon as its copy is durable. */
#ifndef POPBOX_LMTP_SESSION_H
#define POPBOX_LMTP_SESSION_H

#include <stdbool.h>
#include <sys/socket.h>

struct worker;
struct ipc_auth_result;

/* Accept path: take ownership of fd, a connection to an LMTP listener
 * from sa (AF_UNIX for the unix socket). The caller has checked that the
 * peer may deliver (lmtp_trusted). */
void lmtp_session_create(struct worker *w, int fd, const struct sockaddr *sa, int salen);

/* An answer of the auth process: true when it was for an LMTP session
 * (handled, or dropped because the session is gone), false when it is
 * someone else's. */
bool lmtp_auth_result(struct worker *w, const struct ipc_auth_result *msg);
/* The master's answer to a check or delivery as the recipient
 * (IPC_LMTP_RESULT): false when no session waits for it. */
struct ipc_lmtp_result;
bool lmtp_master_result(struct worker *w, const struct ipc_lmtp_result *msg);

/* Worker shutdown: close every LMTP session ("421" to those waiting for a
 * command). A delivery job under way finishes on its thread; its
 * recipients get no reply, so the MTA delivers again (never lost). */
void lmtp_close_all(struct worker *w);

#endif

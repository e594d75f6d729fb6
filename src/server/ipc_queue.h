/* Ordered, non-blocking sending on a SEQPACKET channel between popboxd
 * processes. ipc_send() fails with EAGAIN when the peer's side is full (a
 * worker busy with a connect storm stops reading the auth process's
 * answers for a while); an answer dropped there left its client waiting
 * until the login timeout. A queue keeps such messages, in order, and sends
 * them when the socket takes them again (docs/DESIGN.md "IPC"). */
#ifndef POPBOX_SERVER_IPC_QUEUE_H
#define POPBOX_SERVER_IPC_QUEUE_H

#include <stddef.h>

struct event_base;
struct ipc_queue;

/* Messages kept at most per queue; beyond it ipc_queue_send fails (a peer
 * that reads nothing for that long is stuck or gone). */
#define IPC_QUEUE_MAX_MSGS 65536

/* A queue for sock, watched on base. sock stays the caller's. */
struct ipc_queue *ipc_queue_new(struct event_base *base, int sock);
/* Queued messages are wiped (they may hold a password) and dropped. */
void ipc_queue_free(struct ipc_queue *q);

/* Send msg[0..len) now or, if the socket is full or earlier messages wait,
 * keep a copy and send it after them. Returns 0 when sent or kept; -1 with
 * errno when it can be neither (the peer is gone, the queue is at its
 * limit, len is not a valid message size). */
int ipc_queue_send(struct ipc_queue *q, const void *msg, size_t len);

/* Messages waiting. */
size_t ipc_queue_length(const struct ipc_queue *q);

/* The socket the queue sends on. */
int ipc_queue_fd(const struct ipc_queue *q);

#endif

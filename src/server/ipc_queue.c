/* Ordered, non-blocking sending on an IPC channel. Contract in ipc_queue.h. */
#include "server/ipc_queue.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/util.h"
#include "server/ipc.h"

struct ipc_msg {
	struct ipc_msg *next;
	size_t len;
	unsigned char data[];
};

struct ipc_queue {
	int sock;
	struct event *wev;          /* EV_WRITE, added while messages wait */
	struct ipc_msg *head, *tail;
	size_t n;
};

static bool
ipc_would_block(int err)
{
	return err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS || err == ENOMEM;
}

static void
ipc_queue_drop_all(struct ipc_queue *q)
{
	while (q->head != NULL) {
		struct ipc_msg *m = q->head;
		q->head = m->next;
		secure_wipe(m->data, m->len);
		free(m);
	}
	q->tail = NULL;
	q->n = 0;
	if (q->wev != NULL)
		event_del(q->wev);
}

/* Send what waits, in order, until the socket is full again. */
static void
ipc_queue_flush(struct ipc_queue *q)
{
	while (q->head != NULL) {
		struct ipc_msg *m = q->head;
		if (ipc_send(q->sock, m->data, m->len) < 0) {
			if (ipc_would_block(errno))
				return;   /* the write event calls again */
			log_warn("IPC channel: %zu message%s not delivered", q->n, q->n == 1 ? "" : "s");
			ipc_queue_drop_all(q);
			return;
		}
		q->head = m->next;
		if (q->head == NULL)
			q->tail = NULL;
		q->n--;
		secure_wipe(m->data, m->len);
		free(m);
	}
	event_del(q->wev);
}

static void
ipc_queue_write_cb(evutil_socket_t fd, short what, void *arg)
{
	ipc_queue_flush(arg);
}

struct ipc_queue *
ipc_queue_new(struct event_base *base, int sock)
{
	struct ipc_queue *q = xcalloc(1, sizeof(*q));
	q->sock = sock;
	q->wev = event_new(base, sock, EV_WRITE | EV_PERSIST, ipc_queue_write_cb, q);
	if (q->wev == NULL)
		fatalx("event_new failed");
	return q;
}

void
ipc_queue_free(struct ipc_queue *q)
{
	if (q == NULL)
		return;
	ipc_queue_drop_all(q);
	event_free(q->wev);
	free(q);
}

int
ipc_queue_send(struct ipc_queue *q, const void *msg, size_t len)
{
	if (len < IPC_HEADER_SIZE || len > IPC_MAX_MSG) {
		errno = EMSGSIZE;   /* also what a failed encode (0) gives */
		return -1;
	}
	if (q->head == NULL) {
		if (ipc_send(q->sock, msg, len) == 0)
			return 0;
		if (!ipc_would_block(errno))
			return -1;
	}
	if (q->n >= IPC_QUEUE_MAX_MSGS) {
		errno = EAGAIN;
		return -1;
	}
	struct ipc_msg *m = xmalloc(sizeof(*m) + len);
	m->next = NULL;
	m->len = len;
	memcpy(m->data, msg, len);
	if (q->tail != NULL)
		q->tail->next = m;
	else
		q->head = m;
	q->tail = m;
	if (q->n++ == 0)
		event_add(q->wev, NULL);
	return 0;
}

size_t
ipc_queue_length(const struct ipc_queue *q)
{
	return q->n;
}

int
ipc_queue_fd(const struct ipc_queue *q)
{
	return q->sock;
}

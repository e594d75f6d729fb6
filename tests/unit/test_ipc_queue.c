/* The ordered IPC sender (src/server/ipc_queue.c) on a real SEQPACKET pair:
 * messages the full socket refuses are kept and sent later, in order, none
 * lost; a gone peer and over-sized messages are errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "server/ipc.h"
#include "server/ipc_queue.h"

#define N_MSGS 5000

static size_t
make_msg(unsigned char *buf, size_t size, uint64_t id)
{
	const struct ipc_ping m = { .request_id = id };
	return ipc_ping_encode(buf, size, &m);
}

struct reader {
	int fd;
	uint64_t next;      /* the id expected next */
	int bad;
	struct event_base *base;
};

static void
read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct reader *r = arg;
	unsigned char buf[IPC_MAX_MSG];
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n <= 0)
			return;
		struct ipc_ping p;
		if (!ipc_ping_decode(buf, (size_t)n, &p) || p.request_id != r->next)
			r->bad++;
		r->next++;
		if (r->next == N_MSGS)
			event_base_loopbreak(r->base);
	}
}

static void
test_full_socket_keeps_order(void **state)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
	int small = 4096;
	assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
	struct event_base *base = event_base_new();
	struct ipc_queue *q = ipc_queue_new(base, sv[0]);
	assert_int_equal(ipc_queue_fd(q), sv[0]);
	unsigned char buf[IPC_MAX_MSG];
	/* Nobody reads yet: the socket fills and the rest waits in the queue. */
	for (uint64_t i = 0; i < N_MSGS; i++) {
		size_t len = make_msg(buf, sizeof(buf), i);
		assert_true(len > 0);
		assert_int_equal(ipc_queue_send(q, buf, len), 0);
	}
	size_t waiting = ipc_queue_length(q);
	assert_true(waiting > 0);            /* the kernel refused some */
	assert_true(waiting < N_MSGS);       /* and took the first ones */
	/* Plain ipc_send would have lost those: it fails on the full socket. */
	size_t len = make_msg(buf, sizeof(buf), 999999);
	assert_int_equal(ipc_send(sv[0], buf, len), -1);
	assert_true(errno == EAGAIN || errno == EWOULDBLOCK);

	struct reader r = { .fd = sv[1], .base = base };
	struct event *rev = event_new(base, sv[1], EV_READ | EV_PERSIST, read_cb, &r);
	event_add(rev, NULL);
	struct timeval guard = { .tv_sec = 60 };   /* runaway guard only */
	event_base_loopexit(base, &guard);
	event_base_dispatch(base);
	assert_int_equal(r.bad, 0);
	assert_int_equal(r.next, N_MSGS);
	assert_int_equal(ipc_queue_length(q), 0);

	event_free(rev);
	ipc_queue_free(q);
	event_base_free(base);
	close(sv[0]);
	close(sv[1]);
}

static void
test_errors(void **state)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
	struct event_base *base = event_base_new();
	struct ipc_queue *q = ipc_queue_new(base, sv[0]);
	unsigned char buf[IPC_MAX_MSG + 1];
	memset(buf, 0, sizeof(buf));
	/* A failed encode (0) and an over-sized message are refused. */
	assert_int_equal(ipc_queue_send(q, buf, 0), -1);
	assert_int_equal(errno, EMSGSIZE);
	assert_int_equal(ipc_queue_send(q, buf, IPC_MAX_MSG + 1), -1);
	assert_int_equal(errno, EMSGSIZE);
	/* The peer gone: an error at once, nothing kept. */
	close(sv[1]);
	size_t len = make_msg(buf, sizeof(buf), 1);
	assert_int_equal(ipc_queue_send(q, buf, len), -1);
	assert_int_equal(ipc_queue_length(q), 0);
	ipc_queue_free(q);
	event_base_free(base);
	close(sv[0]);
}

static void
test_queue_limit(void **state)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
	struct event_base *base = event_base_new();
	struct ipc_queue *q = ipc_queue_new(base, sv[0]);
	unsigned char buf[IPC_MAX_MSG];
	size_t len = make_msg(buf, sizeof(buf), 7);
	size_t sent = 0;
	/* A peer that never reads: the queue stops at its limit. */
	while (ipc_queue_send(q, buf, len) == 0 && sent < 10 * IPC_QUEUE_MAX_MSGS)
		sent++;
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(ipc_queue_length(q), IPC_QUEUE_MAX_MSGS);
	assert_true(sent > IPC_QUEUE_MAX_MSGS);
	ipc_queue_free(q);
	event_base_free(base);
	close(sv[0]);
	close(sv[1]);
}

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_socket_keeps_order),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_queue_limit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The command table and state machine (src/server/commands.c, login.c,
 * cmd_trans.c, session.c), driven in-process: a real session on a
 * socketpair, a real Maildir, and the test playing the auth process on the
 * worker's auth channel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "common/log.h"
#include "server/config.h"
#include "server/ipc.h"
#include "server/commands.h"
#include "server/login.h"
#include "server/session.h"
#include "server/store_pool.h"
#include "server/worker.h"

static struct worker w;
static int client_fd;    /* the test's end of the connection */
static int auth_end;     /* the test's end of the auth channel */
static char maildir[256];
static char location[300];
static struct store_pool *pool;

static void
write_file(const char *path, const char *data)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(data, f);
	fclose(f);
}

static void
pump(void)
{
	for (int i = 0; i < 20; i++)
		event_base_loop(w.base, EVLOOP_NONBLOCK);
}

/* Everything the server has sent since the last call. */
static char *
drain(void)
{
	static char buf[65536];
	size_t len = 0;
	pump();
	/* Maildrop jobs run on the store thread: wait until the job is done.
	 * The limit (120 s) is a runaway guard, not an expectation of speed:
	 * a job takes milliseconds, also under ASan on a loaded machine. */
	for (int i = 0; i < 12000 && w.all != NULL && w.all->store_job != NULL; i++) {
		usleep(10000);
		pump();
	}
	if (w.all != NULL && w.all->store_job != NULL)
		fail_msg("runaway guard: the store job never finished");
	for (;;) {
		ssize_t n = recv(client_fd, buf + len, sizeof(buf) - 1 - len, MSG_DONTWAIT);
		if (n <= 0)
			break;
		len += (size_t)n;
		pump();
	}
	buf[len] = '\0';
	return buf;
}

static char *
cmd(const char *line)
{
	assert_int_equal(send(client_fd, line, strlen(line), 0), (ssize_t)strlen(line));
	return drain();
}

/* Answer the pending auth request like the auth process would. */
static void
auth_answer(enum auth_result result)
{
	char buf[IPC_MAX_MSG];
	struct ipc_auth_pass req;
	pump();
	ssize_t n = recv(auth_end, buf, sizeof(buf), MSG_DONTWAIT);
	assert_true(n > 0);
	assert_true(ipc_auth_pass_decode(buf, (size_t)n, &req));
	assert_string_equal(req.user, "alice");
	assert_int_equal(req.session_id, w.all->id);
	const struct ipc_auth_result r = { .request_id = req.request_id, .result = result,
	    .user = "alice", .location = location, .data = "" };
	login_auth_result(&w, &r);
}

static int
setup(void **state)
{
	char *error = NULL;
	struct config *c;
	char text[512];
	snprintf(maildir, sizeof(maildir), "/tmp/popbox-test-commands-XXXXXX");
	assert_non_null(mkdtemp(maildir));
	snprintf(text, sizeof(text), "users = /dev/null\nmail = maildir:%s\nmax_bad_commands = 10\n", maildir);
	if (config_parse("test.conf", text, &c, &error) < 0)
		fail_msg("config: %s", error);
	snprintf(location, sizeof(location), "maildir:%s", maildir);
	char path[512];
	snprintf(path, sizeof(path), "%s/new", maildir);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/cur", maildir);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/tmp", maildir);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/new/1000.A.host", maildir);
	write_file(path, "Subject: one\n\n.dot line\nbody\n");
	snprintf(path, sizeof(path), "%s/new/2000.B.host", maildir);
	write_file(path, "Subject: two\n\nno newline");

	struct event_base *base = w.base;
	memset(&w, 0, sizeof(w));
	w.base = base != NULL ? base : event_base_new();
	w.config = c;
	w.n_workers = 1;
	session_buffers_new(&w);
	if (pool == NULL)
		pool = store_pool_new(w.base);
	w.store_pool = pool;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
	w.auth_fd = sv[0];
	auth_end = sv[1];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	client_fd = sv[1];
	evutil_make_socket_nonblocking(sv[0]);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(4242) };
	sin.sin_addr.s_addr = htonl(0x7f000001);
	session_create(&w, sv[0], (struct sockaddr *)&sin, sizeof(sin), false,
	    &commands_handler);
	assert_string_equal(drain(), "+OK popbox ready.\r\n");
	return 0;
}

static int
teardown(void **state)
{
	session_close_all(&w, "test");
	pump();
	close(client_fd);
	close(auth_end);
	close(w.auth_fd);
	/* the pool's event lives on the base: keep one base for all tests */
	config_free(w.config);
	session_buffers_free(&w);
	char command[300];
	snprintf(command, sizeof(command), "rm -rf '%s'", maildir);
	assert_int_equal(system(command), 0);
	return 0;
}

static void
login(void)
{
	assert_string_equal(cmd("USER alice\r\n"), "+OK\r\n");
	assert_string_equal(cmd("PASS secret\r\n"), "");   /* waiting for auth */
	auth_answer(AUTH_RESULT_OK);
	assert_string_equal(drain(), "+OK Logged in, 2 messages (61 octets)\r\n");
}

static void
test_authorization_state(void **state)
{
	const char *trans[] = { "STAT\r\n", "LIST\r\n", "RETR 1\r\n", "DELE 1\r\n", "NOOP\r\n",
	    "RSET\r\n", "TOP 1 0\r\n", "UIDL\r\n" };
	for (size_t i = 0; i < N_ELEMENTS(trans); i++)
		assert_true(strncmp(cmd(trans[i]), "-ERR ", 5) == 0);
	assert_string_equal(cmd("PASS x\r\n"), "-ERR USER first\r\n");
	char *capa = cmd("CAPA\r\n");
	assert_non_null(strstr(capa, "+OK"));
	assert_non_null(strstr(capa, "\r\nUSER\r\n"));
	assert_non_null(strstr(capa, "\r\nUIDL\r\n"));
	assert_non_null(strstr(capa, "\r\nPIPELINING\r\n"));
	assert_non_null(strstr(capa, "\r\n.\r\n"));
}

static void
test_keywords_case_insensitive(void **state)
{
	assert_string_equal(cmd("user alice\r\n"), "+OK\r\n");
	assert_string_equal(cmd("UsEr alice\r\n"), "+OK\r\n");
	assert_true(strncmp(cmd("USERS alice\r\n"), "-ERR Unknown command", 20) == 0);
	assert_true(strncmp(cmd("USER\r\n"), "-ERR Wrong number", 17) == 0);
	assert_true(strncmp(cmd("USER a b\r\n"), "-ERR Wrong number", 17) == 0);
}

static void
test_failed_login_returns_to_authorization(void **state)
{
	cmd("USER alice\r\n");
	assert_string_equal(cmd("PASS wrong\r\n"), "");
	auth_answer(AUTH_RESULT_FAIL);
	assert_string_equal(drain(), "-ERR [AUTH] Authentication failed\r\n");
	assert_string_equal(cmd("PASS again\r\n"), "-ERR USER first\r\n");
	assert_true(strncmp(cmd("STAT\r\n"), "-ERR ", 5) == 0);
}

static void
test_transaction_commands(void **state)
{
	login();
	assert_string_equal(cmd("STAT\r\n"), "+OK 2 61\r\n");
	assert_string_equal(cmd("LIST\r\n"), "+OK 2 messages (61 octets)\r\n1 33\r\n2 28\r\n.\r\n");
	assert_string_equal(cmd("LIST 2\r\n"), "+OK 2 28\r\n");
	assert_string_equal(cmd("UIDL 1\r\n"), "+OK 1 1000.A.host\r\n");
	assert_string_equal(cmd("RETR 1\r\n"),
	    "+OK 33 octets\r\nSubject: one\r\n\r\n..dot line\r\nbody\r\n.\r\n");
	assert_string_equal(cmd("RETR 2\r\n"), "+OK 28 octets\r\nSubject: two\r\n\r\nno newline\r\n.\r\n");
	assert_string_equal(cmd("TOP 1 0\r\n"), "+OK Top of message 1 follows\r\nSubject: one\r\n\r\n.\r\n");
	assert_string_equal(cmd("DELE 1\r\n"), "+OK Message 1 deleted\r\n");
	assert_string_equal(cmd("DELE 1\r\n"), "-ERR Message 1 is deleted\r\n");
	assert_string_equal(cmd("RETR 1\r\n"), "-ERR Message 1 is deleted\r\n");
	assert_string_equal(cmd("STAT\r\n"), "+OK 1 28\r\n");
	assert_string_equal(cmd("LIST\r\n"), "+OK 1 messages (28 octets)\r\n2 28\r\n.\r\n");
	assert_string_equal(cmd("RSET\r\n"), "+OK 2 messages (61 octets)\r\n");
	assert_string_equal(cmd("STAT\r\n"), "+OK 2 61\r\n");
	assert_string_equal(cmd("NOOP\r\n"), "+OK\r\n");
	assert_true(strncmp(cmd("USER bob\r\n"), "-ERR ", 5) == 0);
	assert_true(strncmp(cmd("PASS bob\r\n"), "-ERR ", 5) == 0);
	char *capa = cmd("CAPA\r\n");
	assert_null(strstr(capa, "\r\nUSER\r\n"));
}

static void
test_strict_numbers(void **state)
{
	login();
	const char *bad[] = { "LIST 4294967297\r\n", "LIST +1\r\n", "LIST 1x\r\n", "LIST -1\r\n",
	    "RETR 0x1\r\n", "DELE 1.0\r\n" };
	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		assert_string_equal(cmd(bad[i]), "-ERR Invalid message number\r\n");
	assert_string_equal(cmd("LIST 0\r\n"), "-ERR There is no message 0\r\n");
	assert_string_equal(cmd("LIST 3\r\n"), "-ERR There is no message 3\r\n");
	assert_string_equal(cmd("TOP 1 -1\r\n"), "-ERR Invalid number of lines\r\n");
	assert_true(strncmp(cmd("LIST  1\r\n"), "-ERR Wrong number", 17) == 0);
	assert_string_equal(cmd("LIST 1 \r\n"), "+OK 1 33\r\n");
}

static void
test_pipelined_and_long_lines(void **state)
{
	login();
	assert_string_equal(cmd("NOOP\r\nSTAT\r\nLIST 1\r\n"), "+OK\r\n+OK 2 61\r\n+OK 1 33\r\n");
	char longline[600];
	memset(longline, 'A', sizeof(longline));
	memcpy(longline + sizeof(longline) - 8, "\r\nNOOP\r\n", 8);
	assert_int_equal(send(client_fd, longline, sizeof(longline), 0), (ssize_t)sizeof(longline));
	char *out = drain();
	assert_true(strncmp(out, "-ERR Command line too long", 26) == 0);
	assert_non_null(strstr(out, "\r\n+OK\r\n"));
	/* exactly 255 octets including CRLF is fine: NOOP + 249 spaces... use LIST */
	assert_string_equal(cmd("NOOP\n"), "+OK\r\n");   /* bare LF tolerated */
}

static void
test_too_many_bad_commands(void **state)
{
	for (int i = 0; i < 9; i++)
		assert_true(strncmp(cmd("XXXX\r\n"), "-ERR Unknown", 12) == 0);
	char *out = cmd("XXXX\r\n");
	assert_non_null(strstr(out, "too many bad commands"));
}

static void
test_quit_deletes_only_marked(void **state)
{
	login();
	cmd("DELE 2\r\n");
	assert_string_equal(cmd("QUIT\r\n"), "+OK Bye, 1 messages deleted\r\n");
	char path[512];
	struct stat st;
	snprintf(path, sizeof(path), "%s/new/2000.B.host", maildir);
	assert_int_equal(stat(path, &st), -1);
	snprintf(path, sizeof(path), "%s/new/1000.A.host", maildir);
	assert_int_equal(stat(path, &st), 0);
}

/* The client hangs up while its PASS is with the auth process, and the
 * answer (OK) is handled in the same loop round as the hang-up: after the
 * session was condemned (session_destroy_later), before it is freed. The
 * answer must not start opening the maildrop, whose callback would run on
 * the freed session: a use after free that ASan found in
 * test_maildrop_session_survives_other_session_errors (integration). Here
 * session_close_all() condemns the session as the hang-up did. */
static void
test_auth_answer_for_a_condemned_session(void **state)
{
	char buf[IPC_MAX_MSG];
	struct ipc_auth_pass req;
	assert_string_equal(cmd("USER alice\r\n"), "+OK\r\n");
	assert_string_equal(cmd("PASS secret\r\n"), "");
	ssize_t n = recv(auth_end, buf, sizeof(buf), MSG_DONTWAIT);
	assert_true(n > 0);
	assert_true(ipc_auth_pass_decode(buf, (size_t)n, &req));
	session_close_all(&w, "test");
	assert_non_null(w.all);
	assert_true(w.all->freed_pending);
	const struct ipc_auth_result r = { .request_id = req.request_id, .result = AUTH_RESULT_OK,
	    .user = "alice", .location = location, .data = "" };
	login_auth_result(&w, &r);
	assert_null(w.all->store_job);
	pump();
	assert_null(w.all);
	/* a job started anyway would report now, to the freed session (ASan) */
	for (int i = 0; i < 20; i++) {
		usleep(10000);
		pump();
	}
}

/* Messages of the big-listing test: far more listing than the output high
 * mark and the socket buffers together (~80 octets a UIDL line). */
#define BIG_COUNT 20000
/* Runaway guard only (a stuck store thread or listing), never a pass
 * condition: iterations of 10 ms, two minutes. */
#define RUNAWAY_GUARD_ROUNDS 12000

static void
wait_store_job(void)
{
	for (int i = 0; i < RUNAWAY_GUARD_ROUNDS && w.all != NULL && w.all->store_job != NULL; i++) {
		usleep(10000);
		pump();
	}
	assert_true(w.all != NULL && w.all->store_job == NULL);
}

/* Read what the server sends until the answer ends with tail; returns it
 * (malloc'd). */
static char *
read_until(const char *tail, size_t *len_r)
{
	size_t cap = 1 << 20, len = 0, tlen = strlen(tail);
	char *buf = xmalloc(cap);
	for (int idle = 0; idle < RUNAWAY_GUARD_ROUNDS;) {
		if (cap - len < 65536)
			buf = xrealloc(buf, cap *= 2);
		ssize_t n = recv(client_fd, buf + len, cap - len - 1, MSG_DONTWAIT);
		if (n > 0) {
			len += (size_t)n;
			buf[len] = '\0';
			if (len >= tlen && memcmp(buf + len - tlen, tail, tlen) == 0)
				break;
			continue;
		}
		pump();
		if (++idle % 100 == 0)
			usleep(10000);
	}
	buf[len] = '\0';
	*len_r = len;
	return buf;
}

/* What the session has queued for the client and not yet written. */
static size_t
queued(void)
{
	return evbuffer_get_length(bufferevent_get_output(w.all->bev));
}

/* LIST and UIDL of a maildrop whose listing is far larger than the output
 * high mark: while the client does not read, the worker holds no more than
 * the high mark and one piece of it (before, the whole listing was queued
 * at once: ~80 MB for a million messages); as the client reads, the rest
 * follows, whole and in order, and a pipelined command is answered after
 * it. */
static void
test_big_listing_follows_the_reader(void **state)
{
	char path[600];
	for (unsigned i = 0; i < BIG_COUNT; i++) {
		/* 70 characters: the longest UIDL that is the name itself */
		snprintf(path, sizeof(path), "%s/new/%010u.%059u", maildir, 3000 + i, i);
		write_file(path, "x\n");
	}
	assert_string_equal(cmd("USER alice\r\n"), "+OK\r\n");
	assert_string_equal(cmd("PASS secret\r\n"), "");
	auth_answer(AUTH_RESULT_OK);
	pump();
	wait_store_job();
	size_t len;
	char *out = read_until("\r\n", &len);
	assert_true(strncmp(out, "+OK Logged in, 20002 messages", 29) == 0);
	free(out);

	const char *commands[] = { "UIDL\r\nNOOP\r\n", "LIST\r\nNOOP\r\n" };
	for (size_t c = 0; c < N_ELEMENTS(commands); c++) {
		bool uidl = c == 0;
		assert_int_equal(send(client_fd, commands[c], strlen(commands[c]), 0),
		    (ssize_t)strlen(commands[c]));
		for (int i = 0; i < 50; i++)
			pump();
		/* the high mark, one piece (16 KiB) and the status line; the
		 * LIST of these small sizes fits in the socket buffer, the
		 * UIDL listing (~1.6 MB) does not */
		assert_true(queued() <= SESSION_OUTPUT_HIGH + 16384 + 512);
		out = read_until(".\r\n+OK\r\n", &len);
		assert_true(len > (size_t)BIG_COUNT * (uidl ? 70 : 3));
		char *line = strstr(out, "\r\n") + 2;
		assert_true(strncmp(out, uidl ? "+OK Unique-ID listing follows\r\n" :
		    "+OK 20002 messages (", uidl ? 31 : 20) == 0);
		unsigned n = 0;
		while (strncmp(line, ".\r\n", 3) != 0) {
			char want[16];
			int wl = snprintf(want, sizeof(want), "%u ", ++n);
			assert_memory_equal(line, want, (size_t)wl);
			char *end = strstr(line, "\r\n");
			assert_non_null(end);
			if (uidl && n > 2)
				assert_int_equal(end - line - wl, 70);
			else if (!uidl && n > 2)
				assert_true(end - line - wl == 1 && line[wl] == '3');
			line = end + 2;
		}
		assert_int_equal(n, BIG_COUNT + 2);
		assert_string_equal(line, ".\r\n+OK\r\n");
		free(out);
	}
}

int
main(void)
{
	log_init("test", true, false);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_authorization_state, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keywords_case_insensitive, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_login_returns_to_authorization, setup, teardown),
		cmocka_unit_test_setup_teardown(test_transaction_commands, setup, teardown),
		cmocka_unit_test_setup_teardown(test_strict_numbers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pipelined_and_long_lines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_too_many_bad_commands, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quit_deletes_only_marked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_big_listing_follows_the_reader, setup, teardown),
		cmocka_unit_test_setup_teardown(test_auth_answer_for_a_condemned_session, setup, teardown),
	};
	return cmocka_run_group_tests_name("commands", tests, NULL, NULL);
}

/* Z1: the server session state machine, in process (docs/RELIABILITY.md §7).
 *
 * The real worker code (src/server/session.c framing, commands.c, login.c,
 * cmd_trans.c, the Maildir store on the worker's store thread) runs on a
 * libevent loop; the client end of a socketpair gets the fuzzer's bytes cut
 * into segments, and the harness plays the auth process on
 * the worker's auth channel, the way tests/unit/test_commands.c does.
 *
 * Input: byte 0 chooses the segmentation (bit 7 set: one segment; else a
 * xorshift PRNG seeded by the byte gives segments of 1..64 octets); the rest is
 * what the client sends. The auth "process" answers from the credentials:
 *   PASS / APOP: password "secret" or a digest starting with '0' -> ok,
 *   password "temp" -> temp, anything else -> fail;
 *   AUTH: a response (or initial response) "b2s=" ("ok") -> ok, "ZmluYWw="
 *   ("final") -> ok with server data (the SCRAM-style last challenge),
 *   "ZmFpbA==" ("fail") -> fail, "dGVtcA==" ("temp") -> temp, else continue.
 *
 * Invariants asserted (not just "no crash"):
 *   - every line the server sends is at most 512 octets including CRLF (the
 *     stored messages have short lines, so this covers bodies too) and ends
 *     in CRLF;
 *   - status lines ("+OK", "-ERR", "+ ") never outnumber the greeting plus the
 *     client's complete lines (plus the one closing "Too many bad commands"
 *     line): the tail of an over-long line or a line with CR/NUL inside never
 *     runs as a second command;
 *   - no message file disappears unless the server answered "+OK Bye, N
 *     messages deleted" to QUIT, and then exactly N files, each of them a
 *     message the session answered "+OK Message K deleted" for;
 *   - at the end of the input, if the session is still in TRANSACTION, STAT
 *     equals the count and the sum of LIST, LIST omits exactly the messages
 *     marked deleted, and UIDL lists the same numbers with valid unique ids;
 *   - the session is freed (the connection always ends) and nothing leaks.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "fuzz_common.h"
#include "common/log.h"
#include "common/pop3_proto.h"
#include "server/config.h"
#include "server/ipc.h"
#include "server/commands.h"
#include "server/login.h"
#include "server/session.h"
#include "server/store_pool.h"
#include "server/worker.h"

/* Loop iterations without output or auth traffic before the harness calls the session
 * quiet; a session that never gets quiet is a busy loop (a finding). */
#define FUZZ_IDLE_ROUNDS 8
#define FUZZ_MAX_ROUNDS 100000
/* Output kept per input: bodies here are small, so more means a runaway. */
#define FUZZ_MAX_OUTPUT (8 * 1024 * 1024)

struct fuzz_message {
	const char *sub, *name, *data;
	size_t len;          /* data may hold a NUL */
};
#define MSG(sub, name, literal) { sub, name, literal, sizeof(literal) - 1 }

/* In scan order (new/ and cur/ sorted by the leading time, see
 * store_maildir.c): numbers 1..N. Lines stay far below 512 octets. */
static const struct fuzz_message messages[] = {
	MSG("new", "1000.A.host", "Subject: one\n\n.dot line\nbody\n"),
	MSG("new", "1001.B.host", "Subject: two\n\nno newline"),
	MSG("cur", "1002.C.host:2,S", "From: x\r\nTo: y\r\n\r\n..\r\n.\r\nend\r\n"),
	MSG("new", "1003.D.host", ""),
	MSG("cur", "1004.E.host:2,", "only headers\nand more headers\n"),
	MSG("new", "1005.F.host", "a\rb\n\n\0nul\n\xff\xfe 8bit\n"),
	MSG("new", "1006 has space", "Subject: hashed uidl\n\nx\n"),
};
#define N_MESSAGES (sizeof(messages) / sizeof(messages[0]))

static struct worker w;
static char maildir[128];
static char location[160];
static int auth_end = -1;

static int fuzz_client_fd = -1;   /* the client's end of the connection */
static char *out;        /* everything the server sent for this input */
static size_t out_len;

static void
message_path(char *buf, size_t size, size_t i)
{
	snprintf(buf, size, "%s/%s/%s", maildir, messages[i].sub, messages[i].name);
}

static void
write_message(size_t i)
{
	char path[512];
	message_path(path, sizeof(path), i);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	FUZZ_CHECK(fd >= 0, "create %s", path);
	FUZZ_CHECK(write(fd, messages[i].data, messages[i].len) == (ssize_t)messages[i].len, "write");
	close(fd);
}

static bool
message_exists(size_t i)
{
	char path[512];
	struct stat st;
	message_path(path, sizeof(path), i);
	return stat(path, &st) == 0;
}

static void
fuzz_init(void)
{
	char *error = NULL;
	char text[512];
	struct config *c;

	log_init("fuzz_session", getenv("FUZZ_LOG") != NULL, false);
	const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(maildir, sizeof(maildir), "%s/popbox-fuzz-session-XXXXXX", tmp);
	FUZZ_CHECK(mkdtemp(maildir) != NULL, "mkdtemp");
	for (const char *const *sub = (const char *const[]){ "new", "cur", "tmp", NULL }; *sub; sub++) {
		char path[256];
		snprintf(path, sizeof(path), "%s/%s", maildir, *sub);
		FUZZ_CHECK(mkdir(path, 0700) == 0, "mkdir %s", path);
	}
	for (size_t i = 0; i < N_MESSAGES; i++)
		write_message(i);
	snprintf(location, sizeof(location), "maildir:%s", maildir);
	/* apop on: the APOP path and the timestamp greeting get fuzzed too. */
	snprintf(text, sizeof(text), "users = /dev/null\nmail = maildir:%s\napop = yes\n", maildir);
	FUZZ_CHECK(config_parse("fuzz.conf", text, &c, &error) == 0, "config: %s", error);

	memset(&w, 0, sizeof(w));
	w.base = event_base_new();
	w.config = c;
	w.n_workers = 1;
	session_buffers_new(&w);
	w.store_pool = store_pool_new(w.base);
	int sv[2];
	FUZZ_CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair");
	w.auth_fd = sv[0];
	auth_end = sv[1];
	out = xmalloc(FUZZ_MAX_OUTPUT);
}

/* Answer one request on the auth channel the way auth.c would. */
static void
auth_answer(const char *buf, size_t n)
{
	union {
		struct ipc_auth_pass pass;
		struct ipc_auth_apop apop;
		struct ipc_sasl_start start;
		struct ipc_sasl_step step;
		struct ipc_sasl_abort abort;
	} m;
	struct ipc_auth_result r = { .result = AUTH_RESULT_FAIL, .user = "", .location = location,
	    .data = "" };
	const char *resp = NULL;
	uint64_t session_id;
	switch (ipc_type(buf, n)) {
	case IPC_AUTH_PASS:
		FUZZ_CHECK(ipc_auth_pass_decode(buf, n, &m.pass), "malformed AUTH_PASS");
		r.request_id = m.pass.request_id;
		session_id = m.pass.session_id;
		r.user = m.pass.user;
		if (strcmp(m.pass.password, "secret") == 0)
			r.result = AUTH_RESULT_OK;
		else if (strcmp(m.pass.password, "temp") == 0)
			r.result = AUTH_RESULT_TEMP;
		break;
	case IPC_AUTH_APOP:
		FUZZ_CHECK(ipc_auth_apop_decode(buf, n, &m.apop), "malformed AUTH_APOP");
		FUZZ_CHECK(strlen(m.apop.digest) == 32, "APOP digest passed unchecked");
		r.request_id = m.apop.request_id;
		session_id = m.apop.session_id;
		r.user = m.apop.user;
		r.result = m.apop.digest[0] == '0' ? AUTH_RESULT_OK : AUTH_RESULT_FAIL;
		break;
	case IPC_SASL_START:
		FUZZ_CHECK(ipc_sasl_start_decode(buf, n, &m.start), "malformed SASL_START");
		r.request_id = m.start.request_id;
		session_id = m.start.session_id;
		resp = m.start.initial;
		break;
	case IPC_SASL_STEP:
		FUZZ_CHECK(ipc_sasl_step_decode(buf, n, &m.step), "malformed SASL_STEP");
		r.request_id = m.step.request_id;
		session_id = m.step.session_id;
		resp = m.step.response;
		break;
	case IPC_SASL_ABORT:
		FUZZ_CHECK(ipc_sasl_abort_decode(buf, n, &m.abort), "malformed SASL_ABORT");
		return;          /* no answer */
	default:
		FUZZ_CHECK(0, "unexpected IPC type %u from the worker", ipc_type(buf, n));
	}
	FUZZ_CHECK(w.all == NULL || session_id == w.all->id, "request without the session's id");
	if (resp != NULL) {
		r.user = "alice";
		if (strcmp(resp, "b2s=") == 0)
			r.result = AUTH_RESULT_OK;
		else if (strcmp(resp, "ZmluYWw=") == 0)
			r.result = AUTH_RESULT_OK, r.data = "dj1zZXJ2ZXI=";
		else if (strcmp(resp, "ZmFpbA==") == 0)
			r.result = AUTH_RESULT_FAIL;
		else if (strcmp(resp, "dGVtcA==") == 0)
			r.result = AUTH_RESULT_TEMP;
		else
			r.result = AUTH_RESULT_CONTINUE;
	}
	login_auth_result(&w, &r);
}

/* Run the loop, answer auth, collect output until nothing moves. */
static void
pump(void)
{
	static char buf[IPC_MAX_MSG];
	int idle = 0;
	for (int round = 0; idle < FUZZ_IDLE_ROUNDS; round++) {
		FUZZ_CHECK(round < FUZZ_MAX_ROUNDS, "session never gets quiet (busy loop?)");
		/* A maildrop job on the store thread reports through the
		 * loop: block until something happens instead of counting
		 * idle rounds while the thread works. */
		bool job = false;
		for (struct session *s = w.all; s != NULL; s = s->all_next)
			job |= s->store_job != NULL;
		event_base_loop(w.base, job ? EVLOOP_ONCE : EVLOOP_NONBLOCK);
		bool progress = job;
		ssize_t n;
		while ((n = recv(auth_end, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
			auth_answer(buf, (size_t)n);
			progress = true;
		}
		while (fuzz_client_fd >= 0) {
			n = recv(fuzz_client_fd, out + out_len, FUZZ_MAX_OUTPUT - out_len, MSG_DONTWAIT);
			if (n <= 0)
				break;
			out_len += (size_t)n;
			FUZZ_CHECK(out_len < FUZZ_MAX_OUTPUT, "more than %d octets of output", FUZZ_MAX_OUTPUT);
			progress = true;
		}
		idle = progress ? 0 : idle + 1;
	}
}

static void
client_send(const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t k = send(fuzz_client_fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			size_t before = out_len;
			pump();
			/* The server stopped reading (input high-water mark, or it
			 * is closing): the rest cannot be delivered. */
			if (out_len == before && w.all == NULL)
				return;
			if (send(fuzz_client_fd, p, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
				return;
			p++, n--;
			continue;
		}
		if (k < 0)
			return;      /* EPIPE: the session closed its end */
		p += k;
		n -= (size_t)k;
	}
}

static size_t lines_sent;     /* complete lines (LF) the client sent */

static void
check_lines(void)
{
	size_t status = 0, start = 0;
	bool closing = false;
	for (size_t i = 0; i < out_len; i++) {
		if (out[i] != '\n')
			continue;
		size_t len = i + 1 - start;
		FUZZ_CHECK(len <= POP3_MAX_RESPONSE_LINE, "response line of %zu octets", len);
		FUZZ_CHECK(len >= 2 && out[i - 1] == '\r', "line without CRLF at %zu", i);
		const char *l = out + start;
		if (len >= 4 && (memcmp(l, "+OK", 3) == 0 || memcmp(l, "-ERR", 4) == 0 || memcmp(l, "+ ", 2) == 0)) {
			if (len >= 30 && memcmp(l, "-ERR Too many bad commands", 26) == 0)
				closing = true;
			else
				status++;
		}
		start = i + 1;
	}
	FUZZ_CHECK(start == out_len || w.all != NULL, "output ends in a partial line");
	FUZZ_CHECK(status <= 1 + lines_sent, "%zu status lines for %zu command lines", status, lines_sent);
	(void)closing;
}

/* Message numbers the session answered "+OK Message K deleted" for, and the
 * N of "+OK Bye, N messages deleted". */
static void
scan_deletions(bool *marked, long *bye)
{
	*bye = -1;
	for (size_t i = 0; i + 1 < out_len; i++) {
		if (i > 0 && out[i - 1] != '\n')
			continue;
		unsigned k;
		long n;
		if (sscanf(out + i, "+OK Message %u deleted\r", &k) == 1 && k >= 1 && k <= N_MESSAGES)
			marked[k - 1] = true;
		if (sscanf(out + i, "+OK Bye, %ld messages deleted\r", &n) == 1)
			*bye = n;
	}
}

/* In TRANSACTION at the end of the input: STAT vs LIST vs UIDL. */
static void
check_listing(struct session *s)
{
	size_t from = out_len;
	lines_sent += 3;
	client_send((const uint8_t *)"STAT\r\nLIST\r\nUIDL\r\n", 18);
	pump();
	if (w.all != s || s->state != SESSION_TRANSACTION)
		return;   /* e.g. too many bad commands closed it */
	out[out_len] = '\0';
	char *p = out + from;
	unsigned count;
	unsigned long long total;
	FUZZ_CHECK(sscanf(p, "+OK %u %llu\r\n", &count, &total) == 2, "STAT answer: %.60s", p);
	p = strstr(p, "\r\n") + 2;
	FUZZ_CHECK(strncmp(p, "+OK ", 4) == 0, "LIST answer: %.60s", p);
	p = strstr(p, "\r\n") + 2;
	unsigned n_list = 0;
	unsigned long long sum = 0;
	bool listed[N_MESSAGES + 1] = { false };
	while (strncmp(p, ".\r\n", 3) != 0) {
		unsigned k;
		unsigned long long size;
		FUZZ_CHECK(sscanf(p, "%u %llu\r\n", &k, &size) == 2, "LIST line: %.60s", p);
		FUZZ_CHECK(k >= 1 && k <= s->store->count && !listed[k], "LIST number %u", k);
		FUZZ_CHECK(!s->deleted[k - 1], "LIST shows deleted message %u", k);
		FUZZ_CHECK(size == s->store->messages[k - 1].size, "LIST size of %u", k);
		listed[k] = true;
		n_list++;
		sum += size;
		p = strstr(p, "\r\n") + 2;
	}
	FUZZ_CHECK(n_list == count && sum == total, "STAT %u %llu but LIST %u %llu", count, total, n_list, sum);
	FUZZ_CHECK(n_list == s->store->count - s->deleted_count, "LIST count vs marks");
	p += 3;
	FUZZ_CHECK(strncmp(p, "+OK", 3) == 0, "UIDL answer: %.60s", p);
	p = strstr(p, "\r\n") + 2;
	unsigned n_uidl = 0;
	while (strncmp(p, ".\r\n", 3) != 0) {
		unsigned k;
		char uid[80];
		FUZZ_CHECK(sscanf(p, "%u %79s\r\n", &k, uid) == 2, "UIDL line: %.60s", p);
		FUZZ_CHECK(k <= N_MESSAGES && listed[k], "UIDL number %u not in LIST", k);
		FUZZ_CHECK(pop3_uidl_valid(uid), "invalid UIDL %s", uid);
		n_uidl++;
		p = strstr(p, "\r\n") + 2;
	}
	FUZZ_CHECK(n_uidl == n_list, "UIDL %u entries, LIST %u", n_uidl, n_list);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool initialized;
	if (!initialized) {
		fuzz_init();
		initialized = true;
	}
	if (size == 0)
		return 0;

	int sv[2];
	FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
	fuzz_client_fd = sv[1];
	evutil_make_socket_nonblocking(sv[0]);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(4242) };
	sin.sin_addr.s_addr = htonl(0x7f000001);
	out_len = 0;
	lines_sent = 0;
	session_create(&w, sv[0], (struct sockaddr *)&sin, sizeof(sin), false,
	    &commands_handler);
	pump();
	FUZZ_CHECK(out_len > 4 && memcmp(out, "+OK popbox ready.", 17) == 0, "greeting");

	uint32_t rng = data[0] | 0x100u;
	bool one = data[0] & 0x80;
	const uint8_t *p = data + 1;
	size_t left = size - 1;
	while (left > 0 && w.all != NULL) {
		size_t seg = left;
		if (!one) {
			rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
			seg = 1 + rng % 64;
			if (seg > left)
				seg = left;
		}
		for (size_t i = 0; i < seg; i++)
			lines_sent += p[i] == '\n';
		client_send(p, seg);
		pump();
		p += seg;
		left -= seg;
	}
	struct session *s = w.all;
	/* Only after a complete last line: our STAT must not join a fragment. */
	if (s != NULL && s->state == SESSION_TRANSACTION && !s->freed_pending && !s->streaming &&
	    size > 1 && data[size - 1] == '\n')
		check_listing(s);
	check_lines();
	if (getenv("FUZZ_DUMP") != NULL)   /* see what an input does */
		fwrite(out, 1, out_len, stderr);

	/* The client goes away: the session must end without UPDATE. */
	close(fuzz_client_fd);
	fuzz_client_fd = -1;
	pump();
	FUZZ_CHECK(w.all == NULL && w.sessions == 0, "session not freed after the client left");
	FUZZ_CHECK(w.auth_pending == NULL, "auth request left pending");

	bool marked[N_MESSAGES] = { false };
	long bye;
	scan_deletions(marked, &bye);
	long gone = 0;
	for (size_t i = 0; i < N_MESSAGES; i++) {
		if (message_exists(i))
			continue;
		gone++;
		FUZZ_CHECK(bye > 0, "message %zu removed without QUIT", i + 1);
		FUZZ_CHECK(marked[i], "message %zu removed but never marked deleted", i + 1);
		write_message(i);   /* restore for the next input */
	}
	FUZZ_CHECK(bye <= 0 || gone == bye, "QUIT said %ld deleted, %ld files gone", bye, gone);
	return 0;
}

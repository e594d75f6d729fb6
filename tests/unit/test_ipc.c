/* Typed messages between popboxd processes (src/server/ipc.c): every type
 * survives a round trip, and the decoders refuse truncated, oversized,
 * wrongly counted, unterminated and out-of-range messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "server/ipc.h"
#include "server/metrics.h"
#include "server/popboxd.h"

static unsigned char buf[IPC_MAX_MSG + 64];
static unsigned char again[IPC_MAX_MSG + 64];

/* Header fields of an encoded message (host byte order, see ipc.h). */
static uint32_t
header_nfields(const unsigned char *m)
{
	uint32_t n;
	memcpy(&n, m + 4, sizeof(n));
	return n;
}

static void
set_nfields(unsigned char *m, uint32_t n)
{
	memcpy(m + 4, &n, sizeof(n));
}

/* Every proper prefix of a valid message, and the message with one octet
 * more, must be refused by decode. */
#define CHECK_FRAMING(decode, type_, len) do { \
	type_ tmp_; \
	for (size_t k_ = 0; k_ < (len); k_++) \
		assert_false(decode(buf, k_, &tmp_)); \
	buf[(len)] = 'x'; \
	assert_false(decode(buf, (len) + 1, &tmp_)); \
	buf[(len)] = '\0'; \
	assert_false(decode(buf, (len) + 1, &tmp_)); \
	uint32_t nf_ = header_nfields(buf); \
	set_nfields(buf, nf_ + 1); \
	assert_false(decode(buf, (len), &tmp_)); \
	set_nfields(buf, nf_ - 1); \
	assert_false(decode(buf, (len), &tmp_)); \
	set_nfields(buf, nf_); \
	assert_true(decode(buf, (len), &tmp_)); \
} while (0)

static void
test_auth_pass(void **state)
{
	const struct ipc_auth_pass m = { .request_id = 0x1122334455667788ull, .session_id = 42,
	    .user = "alice", .password = "pass word", .peer = "127.0.0.1" };
	size_t len = ipc_auth_pass_encode(buf, sizeof(buf), &m);
	assert_true(len > IPC_HEADER_SIZE);
	assert_int_equal(ipc_type(buf, len), IPC_AUTH_PASS);
	struct ipc_auth_pass d;
	assert_true(ipc_auth_pass_decode(buf, len, &d));
	assert_true(d.request_id == m.request_id);
	assert_true(d.session_id == 42);
	assert_string_equal(d.user, "alice");
	assert_string_equal(d.password, "pass word");
	assert_string_equal(d.peer, "127.0.0.1");
	assert_int_equal(ipc_auth_pass_encode(again, sizeof(again), &d), len);
	assert_memory_equal(again, buf, len);
	CHECK_FRAMING(ipc_auth_pass_decode, struct ipc_auth_pass, len);
	/* Another type's decoder refuses it. */
	struct ipc_auth_apop apop;
	assert_false(ipc_auth_apop_decode(buf, len, &apop));
	/* The field that would end the message is unterminated. */
	buf[len - 1] = 'x';
	assert_false(ipc_auth_pass_decode(buf, len, &d));
}

static void
test_auth_apop(void **state)
{
	const struct ipc_auth_apop m = { .request_id = 7, .session_id = UINT64_MAX, .user = "bob",
	    .stamp = "<1.2@host>", .digest = "0123456789abcdef0123456789abcdef", .peer = "::1" };
	size_t len = ipc_auth_apop_encode(buf, sizeof(buf), &m);
	assert_true(len > 0);
	struct ipc_auth_apop d;
	assert_true(ipc_auth_apop_decode(buf, len, &d));
	assert_true(d.request_id == 7 && d.session_id == UINT64_MAX);
	assert_string_equal(d.user, "bob");
	assert_string_equal(d.stamp, "<1.2@host>");
	assert_string_equal(d.digest, m.digest);
	assert_string_equal(d.peer, "::1");
	assert_int_equal(ipc_auth_apop_encode(again, sizeof(again), &d), len);
	assert_memory_equal(again, buf, len);
	CHECK_FRAMING(ipc_auth_apop_decode, struct ipc_auth_apop, len);
	/* A digest one octet too long. */
	struct ipc_auth_apop big = m;
	big.digest = "0123456789abcdef0123456789abcdef0";
	assert_int_equal(ipc_auth_apop_encode(buf, sizeof(buf), &big), 0);
}

static void
test_auth_result(void **state)
{
	for (int r = AUTH_RESULT_OK; r <= AUTH_RESULT_CONTINUE; r++) {
		const struct ipc_auth_result m = { .request_id = 99, .result = (enum auth_result)r,
		    .user = "alice", .location = "maildir:/home/alice/Maildir", .data = "dj1zZXJ2ZXI=",
		    .uidl_format = (enum uidl_format)(r % (UIDL_FORMAT_MAX + 1)), .device = "#phone",
		    .ticket = r == AUTH_RESULT_OK ? "0123456789abcdef0123456789abcdef" : "" };
		size_t len = ipc_auth_result_encode(buf, sizeof(buf), &m);
		assert_true(len > 0);
		struct ipc_auth_result d;
		assert_true(ipc_auth_result_decode(buf, len, &d));
		assert_int_equal(d.result, r);
		assert_true(d.request_id == 99);
		assert_string_equal(d.user, "alice");
		assert_string_equal(d.location, m.location);
		assert_string_equal(d.data, m.data);
		assert_int_equal(d.uidl_format, m.uidl_format);
		assert_string_equal(d.device, "#phone");
		assert_string_equal(d.ticket, m.ticket);
		assert_int_equal(ipc_auth_result_encode(again, sizeof(again), &d), len);
		assert_memory_equal(again, buf, len);
		CHECK_FRAMING(ipc_auth_result_decode, struct ipc_auth_result, len);
	}
	/* NULL texts go out as "". */
	const struct ipc_auth_result temp = { .request_id = 1, .result = AUTH_RESULT_TEMP };
	size_t len = ipc_auth_result_encode(buf, sizeof(buf), &temp);
	assert_int_equal(len, IPC_HEADER_SIZE + 8 + 3 + 8 + 2 + 16);
	struct ipc_auth_result d;
	assert_true(ipc_auth_result_decode(buf, len, &d));
	assert_string_equal(d.user, "");
	assert_string_equal(d.location, "");
	assert_string_equal(d.data, "");
	assert_string_equal(d.ticket, "");
	/* A ticket one octet too long. */
	const struct ipc_auth_result lt = { .request_id = 1, .result = AUTH_RESULT_OK,
	    .ticket = "0123456789abcdef0123456789abcdef0" };
	assert_int_equal(ipc_auth_result_encode(again, sizeof(again), &lt), 0);
	/* A result number past the enum, in the message and in the encoder. */
	uint64_t bad = AUTH_RESULT_CONTINUE + 1;
	memcpy(buf + IPC_HEADER_SIZE, &bad, sizeof(bad));
	assert_false(ipc_auth_result_decode(buf, len, &d));
	bad = UINT64_MAX;
	memcpy(buf + IPC_HEADER_SIZE, &bad, sizeof(bad));
	assert_false(ipc_auth_result_decode(buf, len, &d));
	const struct ipc_auth_result m = { .request_id = 1, .result = (enum auth_result)(AUTH_RESULT_CONTINUE + 1) };
	assert_int_equal(ipc_auth_result_encode(buf, sizeof(buf), &m), 0);
	/* A UIDL format past the enum: refused both ways too. */
	const struct ipc_auth_result f = { .request_id = 1, .result = AUTH_RESULT_OK,
	    .uidl_format = (enum uidl_format)(UIDL_FORMAT_MAX + 1) };
	assert_int_equal(ipc_auth_result_encode(buf, sizeof(buf), &f), 0);
}

static void
test_reload(void **state)
{
	const struct ipc_reload m = { .path = "/etc/popboxd.conf", .config = "users = /etc/users\n",
	    .cert_pem = "", .key_pem = "" };
	size_t len = ipc_reload_encode(buf, sizeof(buf), &m);
	assert_true(len > 0);
	struct ipc_reload d;
	assert_true(ipc_reload_decode(buf, len, &d));
	assert_true(d.request_id == 0);
	assert_string_equal(d.path, m.path);
	assert_string_equal(d.config, m.config);
	assert_string_equal(d.cert_pem, "");
	assert_string_equal(d.key_pem, "");
	assert_int_equal(ipc_reload_encode(again, sizeof(again), &d), len);
	assert_memory_equal(again, buf, len);
	CHECK_FRAMING(ipc_reload_decode, struct ipc_reload, len);
	/* A config text that cannot fit in one message. */
	char *huge = malloc(IPC_MAX_MSG);
	assert_non_null(huge);
	memset(huge, 'a', IPC_MAX_MSG - 1);
	huge[IPC_MAX_MSG - 1] = '\0';
	struct ipc_reload big = m;
	big.config = huge;
	assert_int_equal(ipc_reload_encode(buf, sizeof(buf), &big), 0);
	free(huge);
}

static void
test_sasl(void **state)
{
	const struct ipc_sasl_start m = { .request_id = 5, .session_id = 6, .mech = "SCRAM-SHA-256-PLUS",
	    .has_initial = true, .initial = "", .peer = "192.0.2.1", .cb_exporter = "Y2I=",
	    .cb_unique = "" };
	size_t len = ipc_sasl_start_encode(buf, sizeof(buf), &m);
	assert_true(len > 0);
	struct ipc_sasl_start d;
	assert_true(ipc_sasl_start_decode(buf, len, &d));
	assert_true(d.request_id == 5 && d.session_id == 6 && d.has_initial);
	assert_string_equal(d.mech, m.mech);
	assert_string_equal(d.initial, "");
	assert_string_equal(d.peer, m.peer);
	assert_string_equal(d.cb_exporter, "Y2I=");
	assert_string_equal(d.cb_unique, "");
	assert_int_equal(ipc_sasl_start_encode(again, sizeof(again), &d), len);
	assert_memory_equal(again, buf, len);
	CHECK_FRAMING(ipc_sasl_start_decode, struct ipc_sasl_start, len);
	/* The has_initial flag is 0 or 1, nothing else. */
	size_t flag_at = IPC_HEADER_SIZE + 8 + strlen(m.mech) + 1;
	uint64_t two = 2;
	memcpy(buf + flag_at, &two, sizeof(two));
	assert_false(ipc_sasl_start_decode(buf, len, &d));

	const struct ipc_sasl_step step = { .request_id = 5, .session_id = 6, .response = "b2s=" };
	len = ipc_sasl_step_encode(buf, sizeof(buf), &step);
	struct ipc_sasl_step ds;
	assert_true(ipc_sasl_step_decode(buf, len, &ds));
	assert_true(ds.request_id == 5 && ds.session_id == 6);
	assert_string_equal(ds.response, "b2s=");
	CHECK_FRAMING(ipc_sasl_step_decode, struct ipc_sasl_step, len);

	const struct ipc_sasl_abort ab = { .request_id = 5, .session_id = 6 };
	len = ipc_sasl_abort_encode(buf, sizeof(buf), &ab);
	assert_int_equal(len, IPC_HEADER_SIZE + 8);
	struct ipc_sasl_abort da;
	assert_true(ipc_sasl_abort_decode(buf, len, &da));
	assert_true(da.request_id == 5 && da.session_id == 6);
	CHECK_FRAMING(ipc_sasl_abort_decode, struct ipc_sasl_abort, len);
}

/* A SASL response of exactly the maximum passes, one octet more does not:
 * neither in the encoder nor, built by hand, in the decoder. */
static void
test_field_maximum(void **state)
{
	char *resp = malloc(IPC_MAX_SASL_DATA + 2);
	assert_non_null(resp);
	memset(resp, 'A', IPC_MAX_SASL_DATA + 1);
	resp[IPC_MAX_SASL_DATA] = '\0';
	struct ipc_sasl_step m = { .request_id = 1, .session_id = 2, .response = resp };
	size_t len = ipc_sasl_step_encode(buf, sizeof(buf), &m);
	assert_int_equal(len, IPC_HEADER_SIZE + 8 + IPC_MAX_SASL_DATA + 1);
	struct ipc_sasl_step d;
	assert_true(ipc_sasl_step_decode(buf, len, &d));
	assert_int_equal(strlen(d.response), IPC_MAX_SASL_DATA);
	/* Grow the text in place by one octet. */
	buf[len - 1] = 'A';
	buf[len] = '\0';
	assert_false(ipc_sasl_step_decode(buf, len + 1, &d));
	resp[IPC_MAX_SASL_DATA] = 'A';
	resp[IPC_MAX_SASL_DATA + 1] = '\0';
	assert_int_equal(ipc_sasl_step_encode(buf, sizeof(buf), &m), 0);
	free(resp);
	/* Too small a buffer. */
	m.response = "b2s=";
	len = ipc_sasl_step_encode(buf, sizeof(buf), &m);
	assert_int_equal(ipc_sasl_step_encode(again, len - 1, &m), 0);
	assert_int_equal(ipc_sasl_step_encode(again, len, &m), len);
	/* A user name over its limit. */
	char user[IPC_MAX_USER + 2];
	memset(user, 'u', sizeof(user) - 1);
	user[sizeof(user) - 1] = '\0';
	const struct ipc_auth_pass p = { .user = user, .password = "x", .peer = "" };
	assert_int_equal(ipc_auth_pass_encode(buf, sizeof(buf), &p), 0);
	user[IPC_MAX_USER] = '\0';
	assert_true(ipc_auth_pass_encode(buf, sizeof(buf), &p) > 0);
}

static void
test_users(void **state)
{
	const struct ipc_users_open o = { .request_id = 77 };
	size_t len = ipc_users_open_encode(buf, sizeof(buf), &o);
	assert_int_equal(len, IPC_HEADER_SIZE);
	struct ipc_users_open d;
	assert_true(ipc_users_open_decode(buf, len, &d));
	assert_true(d.request_id == 77);
	for (size_t k = 0; k < len; k++)
		assert_false(ipc_users_open_decode(buf, k, &d));
	assert_false(ipc_users_open_decode(buf, len + 1, &d));

	const struct ipc_users_fd f = { .request_id = 77, .error = "/etc/users: Permission denied" };
	len = ipc_users_fd_encode(buf, sizeof(buf), &f);
	struct ipc_users_fd df;
	assert_true(ipc_users_fd_decode(buf, len, &df));
	assert_true(df.request_id == 77);
	assert_string_equal(df.error, f.error);
	CHECK_FRAMING(ipc_users_fd_decode, struct ipc_users_fd, len);
}

static void
test_ping(void **state)
{
	const struct ipc_ping p = { .request_id = 9 };
	size_t len = ipc_ping_encode(buf, sizeof(buf), &p);
	assert_int_equal(len, IPC_HEADER_SIZE);
	struct ipc_ping d;
	assert_true(ipc_ping_decode(buf, len, &d));
	assert_true(d.request_id == 9);
	assert_false(ipc_pong_decode(buf, len, &d));   /* the type tells them apart */
	CHECK_FRAMING(ipc_ping_decode, struct ipc_ping, len);
	len = ipc_pong_encode(buf, sizeof(buf), &(struct ipc_ping){ .request_id = 0 });
	assert_true(ipc_pong_decode(buf, len, &d));
	assert_true(d.request_id == 0);
	assert_false(ipc_ping_decode(buf, len, &d));
	CHECK_FRAMING(ipc_pong_decode, struct ipc_ping, len);
}

/* LMTP's recipient question: fields kept, the address bounded like a
 * user name, the type told apart from its neighbours. */
static void
test_rcpt_lookup(void **state)
{
	const struct ipc_rcpt_lookup r = { .request_id = 5, .session_id = 6,
	    .address = "alice+list@Example.org" };
	size_t len = ipc_rcpt_lookup_encode(buf, sizeof(buf), &r);
	assert_true(len > IPC_HEADER_SIZE);
	struct ipc_rcpt_lookup d;
	assert_true(ipc_rcpt_lookup_decode(buf, len, &d));
	assert_true(d.request_id == 5 && d.session_id == 6);
	assert_string_equal(d.address, r.address);
	struct ipc_sasl_step st;
	assert_false(ipc_sasl_step_decode(buf, len, &st));
	CHECK_FRAMING(ipc_rcpt_lookup_decode, struct ipc_rcpt_lookup, len);
	char *longer = xmalloc(IPC_MAX_USER + 2);
	memset(longer, 'a', IPC_MAX_USER + 1);
	longer[IPC_MAX_USER + 1] = '\0';
	const struct ipc_rcpt_lookup over = { .request_id = 1, .address = longer };
	assert_int_equal(ipc_rcpt_lookup_encode(buf, sizeof(buf), &over), 0);
	longer[IPC_MAX_USER] = '\0';
	assert_true(ipc_rcpt_lookup_encode(buf, sizeof(buf), &over) > 0);
	free(longer);
}

/* Per-user session processes: the grant, the handover and its answer. */
static void
test_handover(void **state)
{
	const struct ipc_session_grant g = { .slot = POPBOXD_MAX_WORKERS - 1, .session_id = 77,
	    .uid = 1001, .gid = 1002, .ticket = "0123456789abcdef0123456789abcdef", .user = "alice",
	    .location = "mbox:/var/mail/alice", .uidl_format = UIDL_FORMAT_DOVECOT,
	    .expire = 2 + 30, .login_delay = 1 + 300 };
	size_t len = ipc_session_grant_encode(buf, sizeof(buf), &g);
	/* seven numbers, ticket, user and location with their NULs */
	assert_int_equal(len, IPC_HEADER_SIZE + 7 * 8 + (IPC_TICKET_LEN + 1) + 6 + 21);
	struct ipc_session_grant gd;
	assert_true(ipc_session_grant_decode(buf, len, &gd));
	assert_int_equal(gd.slot, g.slot);
	assert_true(gd.session_id == 77 && gd.uid == 1001 && gd.gid == 1002);
	assert_string_equal(gd.ticket, g.ticket);
	assert_string_equal(gd.user, "alice");
	assert_string_equal(gd.location, g.location);
	assert_int_equal(gd.uidl_format, UIDL_FORMAT_DOVECOT);
	assert_int_equal(gd.expire, 32);
	assert_int_equal(gd.login_delay, 301);
	assert_int_equal(ipc_session_grant_encode(again, sizeof(again), &gd), len);
	assert_memory_equal(again, buf, len);
	CHECK_FRAMING(ipc_session_grant_decode, struct ipc_session_grant, len);
	struct ipc_session_grant bad = g;
	bad.slot = POPBOXD_MAX_WORKERS;   /* no such worker slot */
	assert_int_equal(ipc_session_grant_encode(again, sizeof(again), &bad), 0);

	const struct ipc_handover h = { .request_id = 5, .session_id = 77,
	    .flags = IPC_HANDOVER_TLS | IPC_HANDOVER_LOOPBACK, .mech = METRICS_MECH_PLAIN,
	    .ticket = g.ticket,
	    .peer = "[::1]:1234", .peer_ip = "::1", .device = "#phone", .input = "U1RBVA0K" };
	len = ipc_handover_encode(buf, sizeof(buf), &h);
	assert_true(len > 0);
	struct ipc_handover hd;
	assert_true(ipc_handover_decode(buf, len, &hd));
	assert_true(hd.request_id == 5 && hd.session_id == 77);
	assert_int_equal(hd.flags, IPC_HANDOVER_TLS | IPC_HANDOVER_LOOPBACK);
	assert_int_equal(hd.mech, METRICS_MECH_PLAIN);
	assert_string_equal(hd.ticket, g.ticket);
	assert_string_equal(hd.peer, "[::1]:1234");
	assert_string_equal(hd.peer_ip, "::1");
	assert_string_equal(hd.device, "#phone");
	assert_string_equal(hd.input, "U1RBVA0K");
	assert_false(ipc_session_grant_decode(buf, len, &gd));   /* the type tells them apart */
	CHECK_FRAMING(ipc_handover_decode, struct ipc_handover, len);
	struct ipc_handover hb = h;
	hb.flags = 4;   /* an unknown flag */
	assert_int_equal(ipc_handover_encode(again, sizeof(again), &hb), 0);
	hb = h;
	hb.mech = METRICS_MECH_N;   /* no such mechanism */
	assert_int_equal(ipc_handover_encode(again, sizeof(again), &hb), 0);

	const struct ipc_handover_done d = { .request_id = 5, .session_id = 77, .ok = true };
	len = ipc_handover_done_encode(buf, sizeof(buf), &d);
	assert_int_equal(len, IPC_HEADER_SIZE + 16);
	struct ipc_handover_done dd;
	assert_true(ipc_handover_done_decode(buf, len, &dd));
	assert_true(dd.ok && dd.session_id == 77 && dd.request_id == 5);
	CHECK_FRAMING(ipc_handover_done_decode, struct ipc_handover_done, len);
	uint64_t two = 2;
	memcpy(buf + IPC_HEADER_SIZE + 8, &two, sizeof(two));
	assert_false(ipc_handover_done_decode(buf, len, &dd));

	const struct ipc_session_adopt a = { .session_id = 78, .flags = IPC_HANDOVER_LOOPBACK,
	    .mech = METRICS_MECH_SCRAM_SHA_256, .peer = "127.0.0.1:5", .peer_ip = "127.0.0.1", .device = "", .input = "" };
	len = ipc_session_adopt_encode(buf, sizeof(buf), &a);
	assert_true(len > 0);
	struct ipc_session_adopt ad;
	assert_true(ipc_session_adopt_decode(buf, len, &ad));
	assert_true(ad.session_id == 78 && ad.flags == IPC_HANDOVER_LOOPBACK);
	assert_int_equal(ad.mech, METRICS_MECH_SCRAM_SHA_256);
	assert_string_equal(ad.peer, "127.0.0.1:5");
	assert_string_equal(ad.peer_ip, "127.0.0.1");
	assert_false(ipc_handover_decode(buf, len, &hd));
	CHECK_FRAMING(ipc_session_adopt_decode, struct ipc_session_adopt, len);
	const struct ipc_session_end e = { .session_id = 78 };
	len = ipc_session_end_encode(buf, sizeof(buf), &e);
	assert_int_equal(len, IPC_HEADER_SIZE + 8);
	struct ipc_session_end ed;
	assert_true(ipc_session_end_decode(buf, len, &ed));
	assert_true(ed.session_id == 78);
	CHECK_FRAMING(ipc_session_end_decode, struct ipc_session_end, len);
}

/* LMTP as the recipient: the request (check or delivery) and its result. */
static void
test_lmtp_deliver(void **state)
{
	const struct ipc_lmtp_deliver m = { .request_id = 9, .session_id = 0x0200000000000001,
	    .kind = IPC_LMTP_DELIVER_SPOOL, .size = 4096, .user = "alice",
	    .sender = "bob@example.org" };
	size_t len = ipc_lmtp_deliver_encode(buf, sizeof(buf), &m);
	/* three numbers, user and sender with their NULs */
	assert_int_equal(len, IPC_HEADER_SIZE + 3 * 8 + 6 + 16);
	struct ipc_lmtp_deliver d;
	assert_true(ipc_lmtp_deliver_decode(buf, len, &d));
	assert_true(d.request_id == 9 && d.session_id == m.session_id && d.size == 4096);
	assert_int_equal(d.kind, IPC_LMTP_DELIVER_SPOOL);
	assert_string_equal(d.user, "alice");
	assert_string_equal(d.sender, "bob@example.org");
	assert_int_equal(ipc_lmtp_deliver_encode(again, sizeof(again), &d), len);
	assert_memory_equal(again, buf, len);
	CHECK_FRAMING(ipc_lmtp_deliver_decode, struct ipc_lmtp_deliver, len);
	struct ipc_lmtp_deliver bad = m;
	bad.kind = IPC_LMTP_DELIVER_SPOOL + 1;   /* no such kind */
	assert_int_equal(ipc_lmtp_deliver_encode(again, sizeof(again), &bad), 0);
	bad = m;
	bad.user = "";   /* nobody */
	assert_int_equal(ipc_lmtp_deliver_encode(again, sizeof(again), &bad), 0);
	/* the decoder refuses an empty user a hostile worker encodes by hand */
	memcpy(again, buf, IPC_HEADER_SIZE + 3 * 8);
	again[IPC_HEADER_SIZE + 3 * 8] = '\0';
	memcpy(again + IPC_HEADER_SIZE + 3 * 8 + 1, "bob@example.org", 16);
	assert_false(ipc_lmtp_deliver_decode(again, IPC_HEADER_SIZE + 3 * 8 + 1 + 16, &d));
	bad = m;
	char *sender = malloc(IPC_MAX_SENDER + 2);
	memset(sender, 'a', IPC_MAX_SENDER + 1);
	sender[IPC_MAX_SENDER + 1] = '\0';
	bad.sender = sender;   /* longer than a path may be */
	assert_int_equal(ipc_lmtp_deliver_encode(again, sizeof(again), &bad), 0);
	sender[IPC_MAX_SENDER] = '\0';
	assert_true(ipc_lmtp_deliver_encode(again, sizeof(again), &bad) > 0);
	free(sender);

	const struct ipc_lmtp_result r = { .request_id = 9, .session_id = m.session_id,
	    .status = IPC_LMTP_NO_USER, .error = "no such account" };
	len = ipc_lmtp_result_encode(buf, sizeof(buf), &r);
	assert_int_equal(len, IPC_HEADER_SIZE + 2 * 8 + 16);
	struct ipc_lmtp_result rd;
	assert_true(ipc_lmtp_result_decode(buf, len, &rd));
	assert_true(rd.request_id == 9 && rd.session_id == m.session_id);
	assert_int_equal(rd.status, IPC_LMTP_NO_USER);
	assert_string_equal(rd.error, "no such account");
	assert_false(ipc_lmtp_deliver_decode(buf, len, &d));   /* the type tells them apart */
	CHECK_FRAMING(ipc_lmtp_result_decode, struct ipc_lmtp_result, len);
	uint64_t six = IPC_LMTP_NO_USER + 1;
	memcpy(buf + IPC_HEADER_SIZE + 8, &six, sizeof(six));
	assert_false(ipc_lmtp_result_decode(buf, len, &rd));
}

/* Header-level refusals: short, unknown or zero type, over the size limit. */
static void
test_header(void **state)
{
	assert_int_equal(ipc_type(buf, IPC_HEADER_SIZE - 1), 0);
	const struct ipc_sasl_abort ab = { .request_id = 1, .session_id = 2 };
	size_t len = ipc_sasl_abort_encode(buf, sizeof(buf), &ab);
	struct ipc_sasl_abort d;
	for (uint32_t t = 0; t < IPC_TYPE_MAX + 2; t++) {
		memcpy(buf, &t, sizeof(t));
		assert_int_equal(ipc_type(buf, len), t);
		assert_int_equal(ipc_sasl_abort_decode(buf, len, &d), t == IPC_SASL_ABORT);
	}
	/* A valid prefix followed by junk up to beyond the message limit. */
	len = ipc_users_fd_encode(buf, sizeof(buf), &(struct ipc_users_fd){ .error = "" });
	memset(buf + len, 'z', sizeof(buf) - len);
	struct ipc_users_fd df;
	assert_false(ipc_users_fd_decode(buf, IPC_MAX_MSG + 1, &df));
	assert_false(ipc_users_fd_decode(buf, len + 100, &df));
}

/* One message over a SEQPACKET pair, with a descriptor (SCM_RIGHTS). */
static void
test_send_fd(void **state)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	const struct ipc_users_fd f = { .request_id = 3, .error = "" };
	size_t len = ipc_users_fd_encode(buf, sizeof(buf), &f);
	assert_int_equal(ipc_send_fd(sv[0], buf, len, fd), 0);
	int got;
	ssize_t n = ipc_recv_fd(sv[1], again, sizeof(again), &got);
	assert_int_equal(n, (ssize_t)len);
	assert_true(got >= 0);
	struct stat a, b;
	assert_int_equal(fstat(fd, &a), 0);
	assert_int_equal(fstat(got, &b), 0);
	assert_true(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
	struct ipc_users_fd d;
	assert_true(ipc_users_fd_decode(again, (size_t)n, &d));
	assert_true(d.request_id == 3);
	/* A failed encode (0) is refused by send. */
	assert_int_equal(ipc_send(sv[0], buf, 0), -1);
	close(got);
	close(fd);
	close(sv[0]);
	close(sv[1]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_auth_pass),
		cmocka_unit_test(test_auth_apop),
		cmocka_unit_test(test_auth_result),
		cmocka_unit_test(test_reload),
		cmocka_unit_test(test_sasl),
		cmocka_unit_test(test_field_maximum),
		cmocka_unit_test(test_users),
		cmocka_unit_test(test_ping),
		cmocka_unit_test(test_rcpt_lookup),
		cmocka_unit_test(test_handover),
		cmocka_unit_test(test_lmtp_deliver),
		cmocka_unit_test(test_header),
		cmocka_unit_test(test_send_fd),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

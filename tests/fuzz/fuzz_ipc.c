/* The typed IPC decoders (src/server/ipc.c): a worker, the auth process and
 * the master decode every message they receive as hostile input.
 * Properties:
 * - never reads past len (ASan, exact-size copy);
 * - at most one decoder accepts an input, the one named by its header type;
 * - every decoded text field lies inside the input and is NUL-terminated there;
 * - canonical encoding: re-encoding a decoded message gives the input octet
 *   for octet, and decoding that again gives equal fields. */
#include <string.h>

#include "fuzz_common.h"
#include "server/ipc.h"
#include "server/metrics.h"
#include "server/popboxd.h"

static unsigned char out[IPC_MAX_MSG];
static const unsigned char *in;
static size_t in_len;

static void
check_text(const char *t, const char *what)
{
	const unsigned char *p = (const unsigned char *)t;
	FUZZ_CHECK(p >= in && p < in + in_len, "%s points outside the input", what);
	FUZZ_CHECK(memchr(p, '\0', (size_t)(in + in_len - p)) != NULL, "%s unterminated", what);
}

static void
check_same_text(const char *a, const char *b, const char *what)
{
	check_text(a, what);
	FUZZ_CHECK(strcmp(a, b) == 0, "%s differs after a round trip", what);
}

/* Encode the decoded m, compare with the input, decode the copy into m2. */
#define ROUND_TRIP(name, m, m2) do { \
	size_t n_ = ipc_##name##_encode(out, sizeof(out), &(m)); \
	FUZZ_CHECK(n_ == in_len && memcmp(out, in, in_len) == 0, \
	    #name ": re-encoding gives %zu octets, not the %zu accepted", n_, in_len); \
	FUZZ_CHECK(ipc_##name##_decode(out, n_, &(m2)), #name ": own encoding refused"); \
	FUZZ_CHECK((m).request_id == (m2).request_id, #name ": request id"); \
} while (0)

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned char *copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	in = copy;
	in_len = size;
	unsigned accepted = 0;
	uint32_t type = ipc_type(copy, size);

	struct ipc_auth_pass pass, pass2;
	if (ipc_auth_pass_decode(copy, size, &pass)) {
		accepted++;
		FUZZ_CHECK(type == IPC_AUTH_PASS, "AUTH_PASS decoder took type %u", type);
		ROUND_TRIP(auth_pass, pass, pass2);
		FUZZ_CHECK(pass.session_id == pass2.session_id, "session id");
		check_same_text(pass.user, pass2.user, "user");
		check_same_text(pass.password, pass2.password, "password");
		check_same_text(pass.peer, pass2.peer, "peer");
		FUZZ_CHECK(strlen(pass.user) <= IPC_MAX_USER && strlen(pass.password) <= IPC_MAX_PASSWORD &&
		    strlen(pass.peer) <= IPC_MAX_PEER, "AUTH_PASS field over its maximum");
	}
	struct ipc_auth_apop apop, apop2;
	if (ipc_auth_apop_decode(copy, size, &apop)) {
		accepted++;
		FUZZ_CHECK(type == IPC_AUTH_APOP, "AUTH_APOP decoder took type %u", type);
		ROUND_TRIP(auth_apop, apop, apop2);
		FUZZ_CHECK(apop.session_id == apop2.session_id, "session id");
		check_same_text(apop.user, apop2.user, "user");
		check_same_text(apop.stamp, apop2.stamp, "stamp");
		check_same_text(apop.digest, apop2.digest, "digest");
		check_same_text(apop.peer, apop2.peer, "peer");
		FUZZ_CHECK(strlen(apop.digest) <= IPC_MAX_APOP_DIGEST, "digest over its maximum");
	}
	struct ipc_auth_result res, res2;
	if (ipc_auth_result_decode(copy, size, &res)) {
		accepted++;
		FUZZ_CHECK(type == IPC_AUTH_RESULT, "AUTH_RESULT decoder took type %u", type);
		FUZZ_CHECK(res.result >= AUTH_RESULT_OK && res.result <= AUTH_RESULT_CONTINUE,
		    "result %d outside the enum", (int)res.result);
		ROUND_TRIP(auth_result, res, res2);
		FUZZ_CHECK(res.result == res2.result, "result");
		check_same_text(res.user, res2.user, "user");
		check_same_text(res.location, res2.location, "location");
		check_same_text(res.data, res2.data, "data");
		check_same_text(res.ticket, res2.ticket, "ticket");
		FUZZ_CHECK(strlen(res.location) <= IPC_MAX_LOCATION && strlen(res.data) <= IPC_MAX_SASL_DATA,
		    "AUTH_RESULT field over its maximum");
	}
	struct ipc_reload rel, rel2;
	if (ipc_reload_decode(copy, size, &rel)) {
		accepted++;
		FUZZ_CHECK(type == IPC_RELOAD, "RELOAD decoder took type %u", type);
		ROUND_TRIP(reload, rel, rel2);
		check_same_text(rel.path, rel2.path, "path");
		check_same_text(rel.config, rel2.config, "config");
		check_same_text(rel.cert_pem, rel2.cert_pem, "cert");
		check_same_text(rel.key_pem, rel2.key_pem, "key");
	}
	struct ipc_sasl_start start, start2;
	if (ipc_sasl_start_decode(copy, size, &start)) {
		accepted++;
		FUZZ_CHECK(type == IPC_SASL_START, "SASL_START decoder took type %u", type);
		ROUND_TRIP(sasl_start, start, start2);
		FUZZ_CHECK(start.session_id == start2.session_id && start.has_initial == start2.has_initial,
		    "numbers");
		check_same_text(start.mech, start2.mech, "mech");
		check_same_text(start.initial, start2.initial, "initial");
		check_same_text(start.peer, start2.peer, "peer");
		check_same_text(start.cb_exporter, start2.cb_exporter, "cb_exporter");
		check_same_text(start.cb_unique, start2.cb_unique, "cb_unique");
		FUZZ_CHECK(strlen(start.mech) <= IPC_MAX_SASL_MECH, "mech over its maximum");
	}
	struct ipc_sasl_step step, step2;
	if (ipc_sasl_step_decode(copy, size, &step)) {
		accepted++;
		FUZZ_CHECK(type == IPC_SASL_STEP, "SASL_STEP decoder took type %u", type);
		ROUND_TRIP(sasl_step, step, step2);
		FUZZ_CHECK(step.session_id == step2.session_id, "session id");
		check_same_text(step.response, step2.response, "response");
	}
	struct ipc_sasl_abort ab, ab2;
	if (ipc_sasl_abort_decode(copy, size, &ab)) {
		accepted++;
		FUZZ_CHECK(type == IPC_SASL_ABORT, "SASL_ABORT decoder took type %u", type);
		ROUND_TRIP(sasl_abort, ab, ab2);
		FUZZ_CHECK(ab.session_id == ab2.session_id, "session id");
	}
	struct ipc_users_open uo, uo2;
	if (ipc_users_open_decode(copy, size, &uo)) {
		accepted++;
		FUZZ_CHECK(type == IPC_USERS_OPEN, "USERS_OPEN decoder took type %u", type);
		ROUND_TRIP(users_open, uo, uo2);
	}
	struct ipc_users_fd uf, uf2;
	if (ipc_users_fd_decode(copy, size, &uf)) {
		accepted++;
		FUZZ_CHECK(type == IPC_USERS_FD, "USERS_FD decoder took type %u", type);
		ROUND_TRIP(users_fd, uf, uf2);
		check_same_text(uf.error, uf2.error, "error");
	}
	struct ipc_ping pi, pi2;
	if (ipc_ping_decode(copy, size, &pi)) {
		accepted++;
		FUZZ_CHECK(type == IPC_PING, "PING decoder took type %u", type);
		ROUND_TRIP(ping, pi, pi2);
	}
	struct ipc_ping po, po2;
	if (ipc_pong_decode(copy, size, &po)) {
		accepted++;
		FUZZ_CHECK(type == IPC_PONG, "PONG decoder took type %u", type);
		ROUND_TRIP(pong, po, po2);
	}
	struct ipc_rcpt_lookup rl, rl2;
	if (ipc_rcpt_lookup_decode(copy, size, &rl)) {
		accepted++;
		FUZZ_CHECK(type == IPC_RCPT_LOOKUP, "RCPT_LOOKUP decoder took type %u", type);
		ROUND_TRIP(rcpt_lookup, rl, rl2);
		FUZZ_CHECK(rl.session_id == rl2.session_id, "session id");
		check_same_text(rl.address, rl2.address, "address");
	}
	struct ipc_session_grant gr, gr2;
	if (ipc_session_grant_decode(copy, size, &gr)) {
		accepted++;
		FUZZ_CHECK(type == IPC_SESSION_GRANT, "SESSION_GRANT decoder took type %u", type);
		FUZZ_CHECK(gr.slot < POPBOXD_MAX_WORKERS, "slot %u", gr.slot);
		ROUND_TRIP(session_grant, gr, gr2);
		FUZZ_CHECK(gr.session_id == gr2.session_id && gr.uid == gr2.uid && gr.gid == gr2.gid &&
		    gr.expire == gr2.expire && gr.login_delay == gr2.login_delay, "numbers");
		check_same_text(gr.ticket, gr2.ticket, "ticket");
		check_same_text(gr.user, gr2.user, "user");
		check_same_text(gr.location, gr2.location, "location");
	}
	struct ipc_handover ho, ho2;
	if (ipc_handover_decode(copy, size, &ho)) {
		accepted++;
		FUZZ_CHECK(type == IPC_HANDOVER, "HANDOVER decoder took type %u", type);
		FUZZ_CHECK((ho.flags & ~(IPC_HANDOVER_TLS | IPC_HANDOVER_LOOPBACK)) == 0, "flags");
		FUZZ_CHECK(ho.mech < METRICS_MECH_N, "mech");
		ROUND_TRIP(handover, ho, ho2);
		FUZZ_CHECK(ho.flags == ho2.flags && ho.mech == ho2.mech, "numbers");
		check_same_text(ho.ticket, ho2.ticket, "ticket");
		check_same_text(ho.peer, ho2.peer, "peer");
		check_same_text(ho.peer_ip, ho2.peer_ip, "peer_ip");
		check_same_text(ho.device, ho2.device, "device");
		check_same_text(ho.input, ho2.input, "input");
		FUZZ_CHECK(strlen(ho.input) <= IPC_MAX_HANDOVER_INPUT_B64, "input over its maximum");
	}
	struct ipc_handover_done hd, hd2;
	if (ipc_handover_done_decode(copy, size, &hd)) {
		accepted++;
		FUZZ_CHECK(type == IPC_HANDOVER_DONE, "HANDOVER_DONE decoder took type %u", type);
		ROUND_TRIP(handover_done, hd, hd2);
		FUZZ_CHECK(hd.ok == hd2.ok && hd.session_id == hd2.session_id, "numbers");
	}
	struct ipc_users_policy up, up2;
	if (ipc_users_policy_decode(copy, size, &up)) {
		accepted++;
		FUZZ_CHECK(type == IPC_USERS_POLICY, "USERS_POLICY decoder took type %u", type);
		ROUND_TRIP(users_policy, up, up2);
		FUZZ_CHECK(up.flags == up2.flags, "flags");
	}
	struct ipc_session_adopt sa, sa2;
	if (ipc_session_adopt_decode(copy, size, &sa)) {
		accepted++;
		FUZZ_CHECK(type == IPC_SESSION_ADOPT, "SESSION_ADOPT decoder took type %u", type);
		FUZZ_CHECK(sa.mech < METRICS_MECH_N, "mech");
		ROUND_TRIP(session_adopt, sa, sa2);
		FUZZ_CHECK(sa.flags == sa2.flags && sa.mech == sa2.mech, "numbers");
		check_same_text(sa.peer, sa2.peer, "peer");
		check_same_text(sa.device, sa2.device, "device");
		check_same_text(sa.input, sa2.input, "input");
	}
	struct ipc_session_end se, se2;
	if (ipc_session_end_decode(copy, size, &se)) {
		accepted++;
		FUZZ_CHECK(type == IPC_SESSION_END, "SESSION_END decoder took type %u", type);
		ROUND_TRIP(session_end, se, se2);
		FUZZ_CHECK(se.session_id == se2.session_id, "session id");
	}
	struct ipc_lmtp_deliver ld, ld2;
	if (ipc_lmtp_deliver_decode(copy, size, &ld)) {
		accepted++;
		FUZZ_CHECK(type == IPC_LMTP_DELIVER, "LMTP_DELIVER decoder took type %u", type);
		FUZZ_CHECK(ld.kind <= IPC_LMTP_DELIVER_SPOOL, "kind %u", ld.kind);
		FUZZ_CHECK(ld.user[0] != '\0', "empty user accepted");
		ROUND_TRIP(lmtp_deliver, ld, ld2);
		FUZZ_CHECK(ld.session_id == ld2.session_id && ld.size == ld2.size, "numbers");
		check_same_text(ld.user, ld2.user, "user");
		check_same_text(ld.sender, ld2.sender, "sender");
		FUZZ_CHECK(strlen(ld.user) <= IPC_MAX_USER && strlen(ld.sender) <= IPC_MAX_SENDER,
		    "text over its maximum");
	}
	struct ipc_lmtp_result lr, lr2;
	if (ipc_lmtp_result_decode(copy, size, &lr)) {
		accepted++;
		FUZZ_CHECK(type == IPC_LMTP_RESULT, "LMTP_RESULT decoder took type %u", type);
		FUZZ_CHECK(lr.status <= IPC_LMTP_NO_USER, "status %u", lr.status);
		ROUND_TRIP(lmtp_result, lr, lr2);
		check_same_text(lr.error, lr2.error, "error");
	}
	FUZZ_CHECK(accepted <= 1, "%u decoders accepted one input", accepted);
	free(copy);
	return 0;
}

/* Typed messages between popboxd processes: one table of field rules per
 * type, a generic encoder and decoder that follow it, and per-type functions
 * that move fields between a struct and that generic form (see ipc.h). */
#include "server/ipc.h"
#include "server/devices.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "server/metrics.h"
#include "server/popboxd.h"

struct ipc_header {
	uint32_t type;
	uint32_t nfields;
	uint64_t id;
};
_Static_assert(sizeof(struct ipc_header) == IPC_HEADER_SIZE, "header without padding");

enum field_kind { FIELD_NUMBER = 1, FIELD_TEXT };

/* NUMBER: the largest value allowed; TEXT: the longest text, NUL excluded. */
struct field_rule {
	enum field_kind kind;
	uint64_t max;
};

struct type_rule {
	uint32_t nfields;
	struct field_rule fields[IPC_MAX_FIELDS];
};

#define NUMBER(m) { FIELD_NUMBER, (m) }
#define TEXT(m) { FIELD_TEXT, (m) }

static const struct type_rule rules[IPC_TYPE_MAX] = {
	[IPC_AUTH_PASS] = { 4, { NUMBER(UINT64_MAX), TEXT(IPC_MAX_USER), TEXT(IPC_MAX_PASSWORD),
	    TEXT(IPC_MAX_PEER) } },
	[IPC_AUTH_APOP] = { 5, { NUMBER(UINT64_MAX), TEXT(IPC_MAX_USER), TEXT(IPC_MAX_APOP_STAMP),
	    TEXT(IPC_MAX_APOP_DIGEST), TEXT(IPC_MAX_PEER) } },
	[IPC_AUTH_RESULT] = { 9, { NUMBER(AUTH_RESULT_CONTINUE), TEXT(IPC_MAX_USER),
	    TEXT(IPC_MAX_LOCATION), TEXT(IPC_MAX_SASL_DATA), NUMBER(UIDL_FORMAT_MAX),
	    TEXT(IPC_MAX_USER), TEXT(IPC_MAX_TICKET), NUMBER(2 + DEVICES_EXPIRE_MAX),
	    NUMBER(1 + DEVICES_LOGIN_DELAY_MAX) } },
	/* the limits of the files they carry (limits_popboxd.h) */
	[IPC_RELOAD] = { 4, { TEXT(POPBOXD_CONFIG_PATH_MAX), TEXT(POPBOXD_CONFIG_MAX),
	    TEXT(POPBOXD_PEM_MAX), TEXT(POPBOXD_PEM_MAX) } },
	[IPC_SASL_START] = { 7, { NUMBER(UINT64_MAX), TEXT(IPC_MAX_SASL_MECH), NUMBER(1),
	    TEXT(IPC_MAX_SASL_DATA), TEXT(IPC_MAX_PEER), TEXT(IPC_MAX_CHANNEL_BINDING),
	    TEXT(IPC_MAX_CHANNEL_BINDING) } },
	[IPC_SASL_STEP] = { 2, { NUMBER(UINT64_MAX), TEXT(IPC_MAX_SASL_DATA) } },
	[IPC_SASL_ABORT] = { 1, { NUMBER(UINT64_MAX) } },
	[IPC_USERS_OPEN] = { 0, { { 0, 0 } } },
	[IPC_USERS_FD] = { 1, { TEXT(IPC_MAX_ERROR) } },
	[IPC_PING] = { 0, { { 0, 0 } } },
	[IPC_PONG] = { 0, { { 0, 0 } } },
	[IPC_RCPT_LOOKUP] = { 2, { NUMBER(UINT64_MAX), TEXT(IPC_MAX_USER) } },
	[IPC_SESSION_GRANT] = { 10, { NUMBER(POPBOXD_MAX_WORKERS - 1), NUMBER(UINT64_MAX),
	    NUMBER(UINT32_MAX), NUMBER(UINT32_MAX), TEXT(IPC_MAX_TICKET), TEXT(IPC_MAX_USER),
	    TEXT(IPC_MAX_LOCATION), NUMBER(UIDL_FORMAT_MAX), NUMBER(2 + DEVICES_EXPIRE_MAX),
	    NUMBER(1 + DEVICES_LOGIN_DELAY_MAX) } },
	[IPC_HANDOVER] = { 8, { NUMBER(UINT64_MAX), NUMBER(IPC_HANDOVER_TLS | IPC_HANDOVER_LOOPBACK),
	    NUMBER(METRICS_MECH_N - 1), TEXT(IPC_MAX_TICKET), TEXT(IPC_MAX_PEER_NAME), TEXT(IPC_MAX_PEER), TEXT(IPC_MAX_USER),
	    TEXT(IPC_MAX_HANDOVER_INPUT_B64) } },
	[IPC_HANDOVER_DONE] = { 2, { NUMBER(UINT64_MAX), NUMBER(1) } },
	[IPC_USERS_POLICY] = { 1, { NUMBER(IPC_POLICY_EXPIRE_DIFFERS | IPC_POLICY_DELAY_DIFFERS) } },
	[IPC_SESSION_ADOPT] = { 7, { NUMBER(UINT64_MAX), NUMBER(IPC_HANDOVER_TLS | IPC_HANDOVER_LOOPBACK),
	    NUMBER(METRICS_MECH_N - 1), TEXT(IPC_MAX_PEER_NAME), TEXT(IPC_MAX_PEER), TEXT(IPC_MAX_USER),
	    TEXT(IPC_MAX_HANDOVER_INPUT_B64) } },
	[IPC_SESSION_END] = { 1, { NUMBER(UINT64_MAX) } },
	[IPC_LMTP_DELIVER] = { 5, { NUMBER(UINT64_MAX), NUMBER(IPC_LMTP_DELIVER_SPOOL),
	    NUMBER(UINT64_MAX), TEXT(IPC_MAX_USER), TEXT(IPC_MAX_SENDER) } },
	[IPC_LMTP_RESULT] = { 3, { NUMBER(UINT64_MAX), NUMBER(IPC_LMTP_NO_USER),
	    TEXT(IPC_MAX_ERROR) } },
};

/* One field in generic form. */
union field {
	uint64_t number;
	const char *text;
};

/* Lay out header and fields v[] of type into buf[0..size) by the type's
 * rules; 0 when a field breaks them or the message does not fit. */
static size_t
ipc_encode(void *buf, size_t size, uint32_t type, uint64_t id, const union field *v)
{
	const struct type_rule *r = &rules[type];
	struct ipc_header hdr = { .type = type, .nfields = r->nfields, .id = id };
	unsigned char *out = buf;
	size_t len = sizeof(hdr);

	if (size > IPC_MAX_MSG)
		size = IPC_MAX_MSG;
	if (size < len)
		return 0;
	memcpy(out, &hdr, sizeof(hdr));
	for (uint32_t i = 0; i < r->nfields; i++) {
		const struct field_rule *f = &r->fields[i];
		if (f->kind == FIELD_NUMBER) {
			if (v[i].number > f->max || size - len < sizeof(uint64_t))
				return 0;
			memcpy(out + len, &v[i].number, sizeof(uint64_t));
			len += sizeof(uint64_t);
		} else {
			const char *t = v[i].text != NULL ? v[i].text : "";
			size_t n = strnlen(t, (size_t)f->max + 1);
			if (n > f->max || size - len < n + 1)
				return 0;
			memcpy(out + len, t, n + 1);
			len += n + 1;
		}
	}
	return len;
}

/* Check buf[0..len) against the rules of type and fill *id and v[]; texts
 * point into buf. */
static bool
ipc_decode(const void *buf, size_t len, uint32_t type, uint64_t *id, union field *v)
{
	const struct type_rule *r = &rules[type];
	const unsigned char *in = buf;
	struct ipc_header hdr;
	size_t pos = sizeof(hdr);

	if (len < sizeof(hdr) || len > IPC_MAX_MSG)
		return false;
	memcpy(&hdr, in, sizeof(hdr));
	if (hdr.type != type || hdr.nfields != r->nfields)
		return false;
	for (uint32_t i = 0; i < r->nfields; i++) {
		const struct field_rule *f = &r->fields[i];
		if (f->kind == FIELD_NUMBER) {
			if (len - pos < sizeof(uint64_t))
				return false;
			memcpy(&v[i].number, in + pos, sizeof(uint64_t));
			if (v[i].number > f->max)
				return false;
			pos += sizeof(uint64_t);
		} else {
			size_t avail = len - pos;
			if (avail > f->max + 1)
				avail = (size_t)f->max + 1;
			const unsigned char *nul = memchr(in + pos, '\0', avail);
			if (nul == NULL)
				return false;   /* unterminated, or longer than the maximum */
			v[i].text = (const char *)in + pos;
			pos = (size_t)(nul - in) + 1;
		}
	}
	*id = hdr.id;
	return pos == len;
}

uint32_t
ipc_type(const void *buf, size_t len)
{
	struct ipc_header hdr;
	if (len < sizeof(hdr))
		return 0;
	memcpy(&hdr, buf, sizeof(hdr));
	return hdr.type;
}

/* --- one pair per type ------------------------------------------------------ */

size_t
ipc_auth_pass_encode(void *buf, size_t size, const struct ipc_auth_pass *m)
{
	const union field v[] = { { .number = m->session_id }, { .text = m->user },
	    { .text = m->password }, { .text = m->peer } };
	return ipc_encode(buf, size, IPC_AUTH_PASS, m->request_id, v);
}

bool
ipc_auth_pass_decode(const void *buf, size_t len, struct ipc_auth_pass *m)
{
	union field v[4];
	if (!ipc_decode(buf, len, IPC_AUTH_PASS, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	m->user = v[1].text;
	m->password = v[2].text;
	m->peer = v[3].text;
	return true;
}

size_t
ipc_auth_apop_encode(void *buf, size_t size, const struct ipc_auth_apop *m)
{
	const union field v[] = { { .number = m->session_id }, { .text = m->user },
	    { .text = m->stamp }, { .text = m->digest }, { .text = m->peer } };
	return ipc_encode(buf, size, IPC_AUTH_APOP, m->request_id, v);
}

bool
ipc_auth_apop_decode(const void *buf, size_t len, struct ipc_auth_apop *m)
{
	union field v[5];
	if (!ipc_decode(buf, len, IPC_AUTH_APOP, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	m->user = v[1].text;
	m->stamp = v[2].text;
	m->digest = v[3].text;
	m->peer = v[4].text;
	return true;
}

size_t
ipc_auth_result_encode(void *buf, size_t size, const struct ipc_auth_result *m)
{
	const union field v[] = { { .number = (uint64_t)m->result }, { .text = m->user },
	    { .text = m->location }, { .text = m->data }, { .number = (uint64_t)m->uidl_format },
	    { .text = m->device }, { .text = m->ticket }, { .number = m->expire },
	    { .number = m->login_delay } };
	return ipc_encode(buf, size, IPC_AUTH_RESULT, m->request_id, v);
}

bool
ipc_auth_result_decode(const void *buf, size_t len, struct ipc_auth_result *m)
{
	union field v[9];
	if (!ipc_decode(buf, len, IPC_AUTH_RESULT, &m->request_id, v))
		return false;
	m->result = (enum auth_result)v[0].number;   /* range checked by the rule */
	m->user = v[1].text;
	m->location = v[2].text;
	m->data = v[3].text;
	m->uidl_format = (enum uidl_format)v[4].number;   /* range checked too */
	m->device = v[5].text;
	m->ticket = v[6].text;
	m->expire = (unsigned)v[7].number;        /* range checked */
	m->login_delay = (unsigned)v[8].number;
	return true;
}

size_t
ipc_reload_encode(void *buf, size_t size, const struct ipc_reload *m)
{
	const union field v[] = { { .text = m->path }, { .text = m->config }, { .text = m->cert_pem },
	    { .text = m->key_pem } };
	return ipc_encode(buf, size, IPC_RELOAD, m->request_id, v);
}

bool
ipc_reload_decode(const void *buf, size_t len, struct ipc_reload *m)
{
	union field v[4];
	if (!ipc_decode(buf, len, IPC_RELOAD, &m->request_id, v))
		return false;
	m->path = v[0].text;
	m->config = v[1].text;
	m->cert_pem = v[2].text;
	m->key_pem = v[3].text;
	return true;
}

size_t
ipc_sasl_start_encode(void *buf, size_t size, const struct ipc_sasl_start *m)
{
	const union field v[] = { { .number = m->session_id }, { .text = m->mech },
	    { .number = m->has_initial ? 1 : 0 }, { .text = m->initial }, { .text = m->peer },
	    { .text = m->cb_exporter }, { .text = m->cb_unique } };
	return ipc_encode(buf, size, IPC_SASL_START, m->request_id, v);
}

bool
ipc_sasl_start_decode(const void *buf, size_t len, struct ipc_sasl_start *m)
{
	union field v[7];
	if (!ipc_decode(buf, len, IPC_SASL_START, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	m->mech = v[1].text;
	m->has_initial = v[2].number == 1;
	m->initial = v[3].text;
	m->peer = v[4].text;
	m->cb_exporter = v[5].text;
	m->cb_unique = v[6].text;
	return true;
}

size_t
ipc_sasl_step_encode(void *buf, size_t size, const struct ipc_sasl_step *m)
{
	const union field v[] = { { .number = m->session_id }, { .text = m->response } };
	return ipc_encode(buf, size, IPC_SASL_STEP, m->request_id, v);
}

bool
ipc_sasl_step_decode(const void *buf, size_t len, struct ipc_sasl_step *m)
{
	union field v[2];
	if (!ipc_decode(buf, len, IPC_SASL_STEP, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	m->response = v[1].text;
	return true;
}

size_t
ipc_sasl_abort_encode(void *buf, size_t size, const struct ipc_sasl_abort *m)
{
	const union field v[] = { { .number = m->session_id } };
	return ipc_encode(buf, size, IPC_SASL_ABORT, m->request_id, v);
}

bool
ipc_sasl_abort_decode(const void *buf, size_t len, struct ipc_sasl_abort *m)
{
	union field v[1];
	if (!ipc_decode(buf, len, IPC_SASL_ABORT, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	return true;
}

size_t
ipc_rcpt_lookup_encode(void *buf, size_t size, const struct ipc_rcpt_lookup *m)
{
	const union field v[] = { { .number = m->session_id }, { .text = m->address } };
	return ipc_encode(buf, size, IPC_RCPT_LOOKUP, m->request_id, v);
}

bool
ipc_rcpt_lookup_decode(const void *buf, size_t len, struct ipc_rcpt_lookup *m)
{
	union field v[2];
	if (!ipc_decode(buf, len, IPC_RCPT_LOOKUP, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	m->address = v[1].text;
	return true;
}

size_t
ipc_users_open_encode(void *buf, size_t size, const struct ipc_users_open *m)
{
	return ipc_encode(buf, size, IPC_USERS_OPEN, m->request_id, NULL);
}

bool
ipc_users_open_decode(const void *buf, size_t len, struct ipc_users_open *m)
{
	return ipc_decode(buf, len, IPC_USERS_OPEN, &m->request_id, NULL);
}

size_t
ipc_users_fd_encode(void *buf, size_t size, const struct ipc_users_fd *m)
{
	const union field v[] = { { .text = m->error } };
	return ipc_encode(buf, size, IPC_USERS_FD, m->request_id, v);
}

bool
ipc_users_fd_decode(const void *buf, size_t len, struct ipc_users_fd *m)
{
	union field v[1];
	if (!ipc_decode(buf, len, IPC_USERS_FD, &m->request_id, v))
		return false;
	m->error = v[0].text;
	return true;
}

size_t
ipc_ping_encode(void *buf, size_t size, const struct ipc_ping *m)
{
	return ipc_encode(buf, size, IPC_PING, m->request_id, NULL);
}

bool
ipc_ping_decode(const void *buf, size_t len, struct ipc_ping *m)
{
	return ipc_decode(buf, len, IPC_PING, &m->request_id, NULL);
}

size_t
ipc_pong_encode(void *buf, size_t size, const struct ipc_ping *m)
{
	return ipc_encode(buf, size, IPC_PONG, m->request_id, NULL);
}

bool
ipc_pong_decode(const void *buf, size_t len, struct ipc_ping *m)
{
	return ipc_decode(buf, len, IPC_PONG, &m->request_id, NULL);
}

/* --- transport ----------------------------------------------------------------- */

int
ipc_send(int sock, const void *msg, size_t len)
{
	return ipc_send_fd(sock, msg, len, -1);
}

ssize_t
ipc_recv_fd(int sock, void *buf, size_t len, int *fd_r)
{
	union {
		struct cmsghdr hdr;
		char buf[CMSG_SPACE(sizeof(int))];
	} cmsg;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cmsg,
	    .msg_controllen = sizeof(cmsg) };
	ssize_t n;
	*fd_r = -1;
	do {
		n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return n;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    c->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(fd_r, CMSG_DATA(c), sizeof(int));
	return n;
}

int
ipc_send_fd(int sock, const void *msg, size_t len, int pass_fd)
{
	if (len < IPC_HEADER_SIZE || len > IPC_MAX_MSG) {
		errno = EMSGSIZE;   /* also what a failed encode (0) gives */
		return -1;
	}
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	union {
		struct cmsghdr hdr;
		char buf[CMSG_SPACE(sizeof(int))];
	} cmsg;
	if (pass_fd >= 0) {
		memset(&cmsg, 0, sizeof(cmsg));
		mh.msg_control = &cmsg;
		mh.msg_controllen = sizeof(cmsg);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
	}
	ssize_t n;
	do {
		n = sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	return (size_t)n == len ? 0 : -1;
}

size_t
ipc_session_grant_encode(void *buf, size_t size, const struct ipc_session_grant *m)
{
	const union field v[] = { { .number = m->slot }, { .number = m->session_id },
	    { .number = m->uid }, { .number = m->gid }, { .text = m->ticket }, { .text = m->user },
	    { .text = m->location }, { .number = (uint64_t)m->uidl_format },
	    { .number = m->expire }, { .number = m->login_delay } };
	return ipc_encode(buf, size, IPC_SESSION_GRANT, m->request_id, v);
}

bool
ipc_session_grant_decode(const void *buf, size_t len, struct ipc_session_grant *m)
{
	union field v[10];
	if (!ipc_decode(buf, len, IPC_SESSION_GRANT, &m->request_id, v))
		return false;
	m->slot = (unsigned)v[0].number;
	m->session_id = v[1].number;
	m->uid = (uint32_t)v[2].number;
	m->gid = (uint32_t)v[3].number;
	m->ticket = v[4].text;
	m->user = v[5].text;
	m->location = v[6].text;
	m->uidl_format = (enum uidl_format)v[7].number;
	m->expire = (unsigned)v[8].number;
	m->login_delay = (unsigned)v[9].number;
	return true;
}

size_t
ipc_handover_encode(void *buf, size_t size, const struct ipc_handover *m)
{
	const union field v[] = { { .number = m->session_id }, { .number = m->flags },
	    { .number = m->mech }, { .text = m->ticket }, { .text = m->peer }, { .text = m->peer_ip },
	    { .text = m->device }, { .text = m->input } };
	return ipc_encode(buf, size, IPC_HANDOVER, m->request_id, v);
}

bool
ipc_handover_decode(const void *buf, size_t len, struct ipc_handover *m)
{
	union field v[8];
	if (!ipc_decode(buf, len, IPC_HANDOVER, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	m->flags = (unsigned)v[1].number;
	m->mech = (unsigned)v[2].number;
	m->ticket = v[3].text;
	m->peer = v[4].text;
	m->peer_ip = v[5].text;
	m->device = v[6].text;
	m->input = v[7].text;
	return true;
}

size_t
ipc_handover_done_encode(void *buf, size_t size, const struct ipc_handover_done *m)
{
	const union field v[] = { { .number = m->session_id }, { .number = m->ok ? 1 : 0 } };
	return ipc_encode(buf, size, IPC_HANDOVER_DONE, m->request_id, v);
}

bool
ipc_handover_done_decode(const void *buf, size_t len, struct ipc_handover_done *m)
{
	union field v[2];
	if (!ipc_decode(buf, len, IPC_HANDOVER_DONE, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	m->ok = v[1].number == 1;
	return true;
}

size_t
ipc_users_policy_encode(void *buf, size_t size, const struct ipc_users_policy *m)
{
	const union field v[] = { { .number = m->flags } };
	return ipc_encode(buf, size, IPC_USERS_POLICY, m->request_id, v);
}

bool
ipc_users_policy_decode(const void *buf, size_t len, struct ipc_users_policy *m)
{
	union field v[1];
	if (!ipc_decode(buf, len, IPC_USERS_POLICY, &m->request_id, v))
		return false;
	m->flags = (unsigned)v[0].number;
	return true;
}

size_t
ipc_session_adopt_encode(void *buf, size_t size, const struct ipc_session_adopt *m)
{
	const union field v[] = { { .number = m->session_id }, { .number = m->flags },
	    { .number = m->mech }, { .text = m->peer }, { .text = m->peer_ip }, { .text = m->device },
	    { .text = m->input } };
	return ipc_encode(buf, size, IPC_SESSION_ADOPT, m->request_id, v);
}

bool
ipc_session_adopt_decode(const void *buf, size_t len, struct ipc_session_adopt *m)
{
	union field v[7];
	if (!ipc_decode(buf, len, IPC_SESSION_ADOPT, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	m->flags = (unsigned)v[1].number;
	m->mech = (unsigned)v[2].number;
	m->peer = v[3].text;
	m->peer_ip = v[4].text;
	m->device = v[5].text;
	m->input = v[6].text;
	return true;
}

size_t
ipc_session_end_encode(void *buf, size_t size, const struct ipc_session_end *m)
{
	const union field v[] = { { .number = m->session_id } };
	return ipc_encode(buf, size, IPC_SESSION_END, m->request_id, v);
}

bool
ipc_session_end_decode(const void *buf, size_t len, struct ipc_session_end *m)
{
	union field v[1];
	if (!ipc_decode(buf, len, IPC_SESSION_END, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	return true;
}

size_t
ipc_lmtp_deliver_encode(void *buf, size_t size, const struct ipc_lmtp_deliver *m)
{
	const union field v[] = { { .number = m->session_id }, { .number = m->kind },
	    { .number = m->size }, { .text = m->user }, { .text = m->sender } };
	/* a user is never empty */
	if (m->user == NULL || m->user[0] == '\0')
		return 0;
	return ipc_encode(buf, size, IPC_LMTP_DELIVER, m->request_id, v);
}

bool
ipc_lmtp_deliver_decode(const void *buf, size_t len, struct ipc_lmtp_deliver *m)
{
	union field v[5];
	if (!ipc_decode(buf, len, IPC_LMTP_DELIVER, &m->request_id, v) || v[3].text[0] == '\0')
		return false;
	m->session_id = v[0].number;
	m->kind = (unsigned)v[1].number;
	m->size = v[2].number;
	m->user = v[3].text;
	m->sender = v[4].text;
	return true;
}

size_t
ipc_lmtp_result_encode(void *buf, size_t size, const struct ipc_lmtp_result *m)
{
	const union field v[] = { { .number = m->session_id }, { .number = m->status },
	    { .text = m->error } };
	return ipc_encode(buf, size, IPC_LMTP_RESULT, m->request_id, v);
}

bool
ipc_lmtp_result_decode(const void *buf, size_t len, struct ipc_lmtp_result *m)
{
	union field v[3];
	if (!ipc_decode(buf, len, IPC_LMTP_RESULT, &m->request_id, v))
		return false;
	m->session_id = v[0].number;
	m->status = (unsigned)v[1].number;
	m->error = v[2].text;
	return true;
}

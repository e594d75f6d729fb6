#include "server/ipc.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

int
ipc_send(int fd, uint32_t type, uint64_t id, const char *const *fields, uint32_t nfields)
{
	return ipc_send_fd(fd, type, id, fields, nfields, -1);
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
ipc_send_fd(int fd, uint32_t type, uint64_t id, const char *const *fields, uint32_t nfields,
    int pass_fd)
{
	struct ipc_header hdr = { .type = type, .nfields = nfields, .id = id };
	struct iovec iov[1 + IPC_MAX_FIELDS];
	size_t total = sizeof(hdr);

	if (nfields > IPC_MAX_FIELDS) {
		errno = EINVAL;
		return -1;
	}
	iov[0].iov_base = &hdr;
	iov[0].iov_len = sizeof(hdr);
	for (uint32_t i = 0; i < nfields; i++) {
		iov[1 + i].iov_base = (void *)fields[i];
		iov[1 + i].iov_len = strlen(fields[i]) + 1;
		total += iov[1 + i].iov_len;
	}
	if (total > IPC_MAX_MSG) {
		errno = EMSGSIZE;
		return -1;
	}
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 1 + nfields };
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
		n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	return (size_t)n == total ? 0 : -1;
}

int
ipc_parse(const void *buf, size_t len, struct ipc_msg *msg)
{
	struct ipc_header hdr;
	const char *p, *end;

	if (len < sizeof(hdr) || len > IPC_MAX_MSG)
		return -1;
	memcpy(&hdr, buf, sizeof(hdr));
	if (hdr.type == 0 || hdr.type >= IPC_TYPE_MAX || hdr.nfields > IPC_MAX_FIELDS)
		return -1;
	msg->type = hdr.type;
	msg->id = hdr.id;
	msg->nfields = hdr.nfields;
	p = (const char *)buf + sizeof(hdr);
	end = (const char *)buf + len;
	for (uint32_t i = 0; i < hdr.nfields; i++) {
		const char *nul = memchr(p, '\0', (size_t)(end - p));
		if (nul == NULL)
			return -1;
		msg->fields[i] = p;
		msg->lens[i] = (size_t)(nul - p);
		p = nul + 1;
	}
	return p == end ? 0 : -1;
}

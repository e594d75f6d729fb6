/* A delivery process (docs/DESIGN.md "Delivering as the recipient"): LMTP
 * for system users. Forked by the master for one recipient of one
 * transaction, it already runs as that account (uid, gid, and
 * mail_privileged_group for an mbox) when it gets here; it runs the
 * store's own delivery code (store_deliver.h) on the worker's spool, or
 * the RCPT check of the user's room, sends the result to the master
 * (IPC_LMTP_RESULT) and exits. It reads nothing from the network: its
 * inputs are the master's (the account, the maildrop, the settings) and
 * the spool's octets. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "common/wire.h"
#include "server/ipc.h"
#include "server/popboxd.h"
#include "server/store_deliver.h"

#define DELIVERY_PROC_CHUNK (64 * 1024)

/* The wire size (RETR's octets) of the spool's stored octets, counted
 * here rather than taken from the worker. -1 with errno on a read error. */
static int
spool_wire_size(int fd, uint64_t *size_r)
{
	char *in = xmalloc(DELIVERY_PROC_CHUNK);
	char *out = xmalloc(WIRE_ENCODE_MAX(DELIVERY_PROC_CHUNK));
	struct wire_encoder w;
	off_t off = 0;
	int r = 0;

	wire_encoder_init(&w, -1);
	for (;;) {
		ssize_t n = pread(fd, in, DELIVERY_PROC_CHUNK, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -1;
			break;
		}
		if (n == 0) {
			wire_encode_finish(&w, out);
			break;
		}
		wire_encode(&w, in, (size_t)n, out);
		off += n;
	}
	*size_r = w.emitted - w.stuffed;
	free(in);
	free(out);
	return r;
}

void
delivery_proc_main(const struct config *config, const struct delivery_proc_start *st)
{
	prctl(PR_SET_NAME, "popboxd-deliver");
	log_set_procname("popboxd-deliver");
	const struct delivery_target t = { .path = st->path,
	    .max_maildrop_size = config->max_maildrop_size };
	enum delivery_status status;
	struct delivery_result r = { NULL, 0 };
	char *error = NULL;

	if (st->check) {
		status = st->mbox ? store_mbox_deliver_check(&t, st->size, &error) :
		    store_maildir_deliver_check(&t, st->size, &error);
	} else if (st->mbox) {
		/* the From_ line names the envelope sender when it is one word
		 * (as Postfix writes it), else MAILER-DAEMON */
		const char *sender = st->sender;
		if (sender != NULL && (sender[0] == '\0' || strcspn(sender, " \t\r\n") != strlen(sender)))
			sender = NULL;
		const struct mbox_delivery_options o = { .quoting = config->mbox_format,
		    .lock_wait_ms = config->lock_wait * 1000u, .sender = sender };
		status = store_mbox_deliver_file(&t, &o, st->spool_fd, &r, &error);
	} else {
		uint64_t wire_size;
		if (spool_wire_size(st->spool_fd, &wire_size) < 0) {
			error = xasprintf("reading the spool: %s", strerror(errno));
			status = DELIVERY_TEMP;
		} else {
			status = store_maildir_deliver_file(&t, st->spool_fd, wire_size, &r, &error);
		}
	}
	unsigned char buf[IPC_HEADER_SIZE + 2 * 8 + IPC_MAX_ERROR + 1];
	char why[IPC_MAX_ERROR + 1] = "";
	if (error != NULL)
		str_sanitize(why, sizeof(why), error, strlen(error));
	const struct ipc_lmtp_result m = { .request_id = st->request_id,
	    .session_id = st->session_id, .status = status, .error = why };
	size_t len = ipc_lmtp_result_encode(buf, sizeof(buf), &m);
	if (len == 0 || ipc_send(st->ctl, buf, len) < 0)
		log_warn("cannot send a delivery's result to the master");
	/* Everything is written and synced; no exit handlers (see
	 * session_proc.c). */
	_exit(0);
}

/* LMTP sessions (lmtp_session.h; RFC 2033). One state setter
 * (lmtp_enter_state), one command table whose dispatcher checks the state,
 * and one place per wait (auth answer, store job) that resumes the input.
 * A session is freed in a later loop round, never in its own callback. */
#include "server/lmtp_session.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "common/eol.h"
#include "common/log.h"
#include "common/util.h"
#include "common/wire.h"
#include "server/ipc.h"
#include "server/lmtp_proto.h"
#include "server/metrics.h"
#include "server/session.h"
#include "server/store.h"
#include "server/store_deliver.h"
#include "server/store_pool.h"
#include "server/worker.h"

/* RFC 5321 §4.5.3.1.4 allows 512 octets for a command line; parameters
 * of extensions make it longer, 2 KiB is far beyond what an MTA sends. */
#define LMTP_MAX_LINE 2048
/* RFC 5321 §4.5.3.1.8: at least 100 recipients must be taken. Each costs
 * its address, user and path (at most ~5 KiB). */
#define LMTP_MAX_RECIPIENTS 1000
/* Concurrent LMTP connections of one worker: MTAs open a few (Postfix's
 * default destination concurrency is 20); more is a runaway client. */
#define LMTP_MAX_SESSIONS 256
/* The spool is written in pieces of this size on the store thread, with
 * the socket paused meanwhile: a 50 MB message costs the worker this
 * much, not its size. */
#define LMTP_SPOOL_CHUNK (256 * 1024)
/* Input decoded per step (and the read watermark: beyond it the socket is
 * not read until a step has taken some). */
#define LMTP_DECODE_PIECE (16 * 1024)
#define LMTP_INPUT_HIGH (LMTP_SPOOL_CHUNK + LMTP_MAX_LINE)
/* The chunk's room: it is handed on once it holds LMTP_SPOOL_CHUNK, and
 * one decoding step adds at most a piece, a CR held back and one more. */
#define LMTP_CHUNK_ROOM (LMTP_SPOOL_CHUNK + LMTP_DECODE_PIECE + 2)
/* Replies queued beyond this stop command processing until the MTA reads. */
#define LMTP_OUTPUT_HIGH (64 * 1024)
/* Delivery threads per worker: a delivery waits for the disk (fsync of
 * the message, then of new/), and several waiting side by side are
 * committed together, where one thread would do them one by one; apart
 * from the store thread, so that no POP3 login waits behind them. */
#define LMTP_DELIVERY_THREADS 4
/* Deliveries as the recipient (config_lmtp_as_recipient): the master
 * kills a delivery process after lmtp_timeout; its answer may take this
 * much longer before the worker gives up on it. */
#define LMTP_MASTER_GRACE_SECONDS 30
/* Host name in the greeting and LHLO reply. */
#define LMTP_HOST_MAX 64

enum lmtp_state {
	LMTP_GREETED = 0,   /* waiting for LHLO */
	LMTP_READY,         /* LHLO done, no transaction */
	LMTP_MAIL,          /* MAIL given, RCPTs */
	LMTP_DATA,          /* 354 sent, the message streams in */
	LMTP_CLOSING,       /* last reply queued */
};

/* Bits of the states a command is allowed in. */
#define S_GREETED (1u << LMTP_GREETED)
#define S_READY (1u << LMTP_READY)
#define S_MAIL (1u << LMTP_MAIL)
#define S_ANY (S_GREETED | S_READY | S_MAIL)

/* What the session waits for; input is not processed meanwhile. */
enum lmtp_wait {
	LMTP_WAIT_NONE = 0,
	LMTP_WAIT_AUTH,     /* a recipient lookup */
	LMTP_WAIT_STORE,    /* a job on the store thread */
	LMTP_WAIT_MASTER,   /* a check or delivery as the recipient (master) */
};

struct lmtp_rcpt {
	char *address;      /* as RCPT gave it */
	char *user;         /* the user it names */
	char *path;         /* that user's maildir */
};

struct lmtp_job;

struct lmtp_session {
	uint64_t id;
	struct worker *worker;
	struct bufferevent *bev;
	struct event *timer;
	char peer[80];
	enum lmtp_state state;
	enum lmtp_wait wait;
	bool freed_pending;
	bool discarding;            /* inside an over-long command line */
	unsigned bad_commands;

	/* the transaction */
	char *sender;               /* MAIL's, NULL before MAIL; "" null sender */
	uint64_t declared_size;
	struct lmtp_rcpt *rcpts;
	size_t n_rcpts;
	char *pending_address;      /* RCPT waiting for its lookup */
	struct lmtp_rcpt pending_rcpt;  /* ... and for its quota check */

	/* the recipient lookup */
	uint64_t auth_request;
	struct lmtp_session *auth_next, *auth_prev;

	/* delivery as the recipient (decided at MAIL for the transaction):
	 * checks and deliveries run in processes the master forks */
	bool as_recipient;
	uint64_t master_request;    /* 0 = none waiting */
	unsigned master_kind;       /* IPC_LMTP_* of the one waiting */
	struct lmtp_session *master_next, *master_prev;

	/* DATA */
	int spool_fd;
	struct lmtp_data_decoder dec;
	struct eol_converter eol;
	struct wire_encoder wire;
	char *decoded, *encoded;    /* LMTP_DECODE_PIECE-sized scratch */
	char *chunk;                /* converted octets not written yet */
	size_t chunk_len;
	uint64_t stored;            /* octets in the spool file */
	bool too_big;
	char *write_error;          /* a spool write failed: every recipient 451 */
	char head[LMTP_QUEUE_ID_HEAD];
	size_t head_len;
	char queue_id[LMTP_QUEUE_ID_MAX + 1];
	uint64_t wire_size;
	size_t deliver_next;        /* recipient whose delivery runs */

	struct lmtp_job *job;       /* pending store job, NULL = none */

	unsigned transactions, delivered, failed;
	const char *end_reason;
	struct lmtp_session *all_next, *all_prev;
};

enum lmtp_job_kind { LMTP_JOB_QUOTA, LMTP_JOB_SPOOL, LMTP_JOB_WRITE, LMTP_JOB_DELIVER };

struct lmtp_job {
	struct thread_pool_job pool_job;   /* first member */
	enum lmtp_job_kind kind;
	struct lmtp_session *s;            /* NULL: the session went away */
	/* inputs */
	char **paths;                      /* SPOOL: candidates, QUOTA/DELIVER: [0] */
	size_t n_paths;
	uint64_t max_maildrop_size;
	uint64_t size;                     /* QUOTA: declared; DELIVER: wire size */
	int fd;                            /* WRITE, DELIVER: the spool */
	bool owns_fd;                      /* close fd at the end (session gone) */
	char *buf;                         /* WRITE: octets to append */
	size_t len;
	bool sync;                         /* WRITE: fsync afterwards */
	/* outputs */
	enum delivery_status status;
	char *error;
	char *file;                        /* DELIVER: "new/NAME" */
	int spool_fd;                      /* SPOOL: the new file, or -1 */
	/* mbox recipients (paths are locations with their scheme) */
	struct mbox_delivery_options mbox;
	char *sender;                      /* DELIVER into an mbox: its From_ line */
	bool spool_dir;                    /* SPOOL: paths[0] is lmtp_spool_dir */
};

static void lmtp_process_input(struct lmtp_session *s);
static void lmtp_destroy_later(struct lmtp_session *s, const char *reason);
static void lmtp_reply(struct lmtp_session *s, const char *fmt, ...) PRINTF_LIKE(2, 3);

static const char *
lmtp_state_name(enum lmtp_state st)
{
	switch (st) {
	case LMTP_GREETED: return "greeted";
	case LMTP_READY: return "ready";
	case LMTP_MAIL: return "mail";
	case LMTP_DATA: return "data";
	case LMTP_CLOSING: return "closing";
	}
	return "?";
}

/* The one state setter. */
static void
lmtp_enter_state(struct lmtp_session *s, enum lmtp_state st)
{
	if (s->state != st)
		log_debug("lmtp %016llx: %s -> %s", (unsigned long long)s->id,
		    lmtp_state_name(s->state), lmtp_state_name(st));
	s->state = st;
}

static void
lmtp_reply(struct lmtp_session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

/* An address for a log line or a reply: peer text, sanitised and cut. */
static void
lmtp_sanitize(char *dst, size_t size, const char *text)
{
	str_sanitize(dst, size, text, strlen(text));
}

/* --- timers ------------------------------------------------------------------ */

/* Waiting for the MTA: lmtp_timeout; for the auth process: its bound; for
 * the store thread: nothing (the job ends). */
static void
lmtp_timer_arm(struct lmtp_session *s)
{
	struct timeval tv = { 0, 0 };

	if (s->wait == LMTP_WAIT_STORE || s->freed_pending) {
		evtimer_del(s->timer);
		return;
	}
	tv.tv_sec = s->wait == LMTP_WAIT_AUTH ? SESSION_AUTH_TIMEOUT_SECONDS :
	    s->wait == LMTP_WAIT_MASTER ?
	    (time_t)s->worker->config->lmtp_timeout + LMTP_MASTER_GRACE_SECONDS :
	    (time_t)s->worker->config->lmtp_timeout;
	evtimer_add(s->timer, &tv);
}

static void
lmtp_close_after_reply(struct lmtp_session *s, const char *reason)
{
	lmtp_enter_state(s, LMTP_CLOSING);
	if (s->end_reason == NULL)
		s->end_reason = reason;
	bufferevent_disable(s->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
		lmtp_destroy_later(s, reason);
}

/* --- the transaction ------------------------------------------------------------ */

static void
lmtp_rcpt_clear(struct lmtp_rcpt *r)
{
	free(r->address);
	free(r->user);
	free(r->path);
	memset(r, 0, sizeof(*r));
}

static void
lmtp_data_buffers_free(struct lmtp_session *s)
{
	free(s->decoded);
	free(s->encoded);
	free(s->chunk);
	s->decoded = s->encoded = s->chunk = NULL;
	s->chunk_len = 0;
}

/* Forget the transaction (RSET, LHLO, after the replies to DATA). The
 * spool file is anonymous: closing it is all it takes. */
static void
lmtp_transaction_reset(struct lmtp_session *s)
{
	for (size_t i = 0; i < s->n_rcpts; i++)
		lmtp_rcpt_clear(&s->rcpts[i]);
	free(s->rcpts);
	s->rcpts = NULL;
	s->n_rcpts = 0;
	free(s->sender);
	s->sender = NULL;
	s->declared_size = 0;
	free(s->pending_address);
	s->pending_address = NULL;
	lmtp_rcpt_clear(&s->pending_rcpt);
	if (s->spool_fd >= 0)
		close(s->spool_fd);
	s->spool_fd = -1;
	lmtp_data_buffers_free(s);
	free(s->write_error);
	s->write_error = NULL;
	s->stored = s->wire_size = 0;
	s->too_big = false;
	s->head_len = 0;
	s->queue_id[0] = '\0';
	s->deliver_next = 0;
	if (s->state == LMTP_MAIL || s->state == LMTP_DATA)
		lmtp_enter_state(s, LMTP_READY);
}

/* --- store jobs -------------------------------------------------------------------- */

static void
lmtp_write_all(int fd, const char *buf, size_t len, struct lmtp_job *j)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			j->status = DELIVERY_TEMP;
			j->error = xasprintf("writing the spool file: %s", strerror(errno));
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

/* On the store thread. */
static void
lmtp_job_run(struct thread_pool_job *pool_job)
{
	struct lmtp_job *j = (struct lmtp_job *)pool_job;

	j->status = DELIVERY_OK;
	switch (j->kind) {
	case LMTP_JOB_QUOTA: {
		const char *path;
		bool mbox = store_backend_for(j->paths[0], &path) == &store_mbox;
		struct delivery_target t = { .path = path,
		    .max_maildrop_size = j->max_maildrop_size };
		j->status = mbox ? store_mbox_deliver_check(&t, j->size, &j->error) :
		    store_maildir_deliver_check(&t, j->size, &j->error);
		break;
	}
	case LMTP_JOB_SPOOL:
		if (j->spool_dir) {
			/* delivered as the recipients: an anonymous file of
			 * ours, which each delivery process reads */
			int dfd = open(j->paths[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (dfd >= 0) {
				j->spool_fd = store_deliver_tmpfile(dfd);
				if (j->spool_fd < 0)
					j->error = xasprintf("lmtp_spool_dir %s: %s", j->paths[0],
					    strerror(errno));
				close(dfd);
			} else {
				j->error = xasprintf("lmtp_spool_dir %s: %s", j->paths[0],
				    strerror(errno));
			}
			j->status = j->spool_fd >= 0 ? DELIVERY_OK : DELIVERY_TEMP;
			break;
		}
		/* the first recipient's maildrop that can take it: hard links
		 * then reach every maildrop on its file system */
		j->status = DELIVERY_TEMP;
		for (size_t i = 0; i < j->n_paths && j->spool_fd < 0; i++) {
			free(j->error);
			j->error = NULL;
			const char *path;
			if (store_backend_for(j->paths[i], &path) == &store_mbox)
				j->status = store_mbox_spool_open(path, &j->spool_fd, &j->error);
			else
				j->status = store_maildir_spool_open(path, &j->spool_fd, &j->error);
		}
		break;
	case LMTP_JOB_WRITE:
		if (j->len > 0)
			lmtp_write_all(j->fd, j->buf, j->len, j);
		if (j->status == DELIVERY_OK && j->sync && fsync(j->fd) < 0) {
			j->status = DELIVERY_TEMP;
			j->error = xasprintf("fsync of the spool file: %s", strerror(errno));
		}
		break;
	case LMTP_JOB_DELIVER: {
		const char *path;
		const struct store_backend *b = store_backend_for(j->paths[0], &path);
		struct delivery_target t = { .path = path,
		    .max_maildrop_size = j->max_maildrop_size };
		struct delivery_result r = { NULL, 0 };
		if (b == &store_mbox)
			j->status = store_mbox_deliver_file(&t, &j->mbox, j->fd, &r, &j->error);
		else
			j->status = store_maildir_deliver_file(&t, j->fd, j->size, &r, &j->error);
		j->file = r.file;
		break;
	}
	}
}

static void
lmtp_job_free(struct lmtp_job *j)
{
	for (size_t i = 0; i < j->n_paths; i++)
		free(j->paths[i]);
	free(j->paths);
	if (j->owns_fd && j->fd >= 0)
		close(j->fd);
	if (j->spool_fd >= 0)
		close(j->spool_fd);
	free(j->buf);
	free(j->error);
	free(j->file);
	free(j->sender);
	free(j);
}

static void lmtp_job_finished(struct lmtp_session *s, struct lmtp_job *j);

/* On the event loop. */
static void
lmtp_job_done(struct thread_pool_job *pool_job)
{
	struct lmtp_job *j = (struct lmtp_job *)pool_job;
	struct lmtp_session *s = j->s;

	if (s != NULL) {
		s->job = NULL;
		s->wait = LMTP_WAIT_NONE;
		lmtp_job_finished(s, j);
	}
	lmtp_job_free(j);
	if (s != NULL && !s->freed_pending && s->wait == LMTP_WAIT_NONE) {
		lmtp_timer_arm(s);
		lmtp_process_input(s);
	}
}

static struct lmtp_job *
lmtp_job_new(struct lmtp_session *s, enum lmtp_job_kind kind)
{
	struct lmtp_job *j = xcalloc(1, sizeof(*j));

	j->kind = kind;
	j->s = s;
	j->fd = -1;
	j->spool_fd = -1;
	j->max_maildrop_size = s->worker->config->max_maildrop_size;
	j->mbox.quoting = s->worker->config->mbox_format;
	j->mbox.lock_wait_ms = s->worker->config->lock_wait * 1000u;
	/* one word, as Postfix writes it in a From_ line; else MAILER-DAEMON */
	if (s->sender != NULL && s->sender[0] != '\0' &&
	    strcspn(s->sender, " \t\r\n") == strlen(s->sender))
		j->sender = xstrdup(s->sender);
	j->mbox.sender = j->sender;
	return j;
}

static void
lmtp_job_add_path(struct lmtp_job *j, const char *path)
{
	j->paths = xrealloc(j->paths, (j->n_paths + 1) * sizeof(char *));
	j->paths[j->n_paths++] = xstrdup(path);
}

static void
lmtp_job_submit(struct lmtp_session *s, struct lmtp_job *j)
{
	j->pool_job.run = lmtp_job_run;
	j->pool_job.done = lmtp_job_done;
	s->job = j;
	s->wait = LMTP_WAIT_STORE;
	lmtp_timer_arm(s);
	if (s->worker->delivery_pool == NULL)
		s->worker->delivery_pool = store_pool_new_threads(s->worker->base,
		    LMTP_DELIVERY_THREADS);
	store_pool_run(s->worker->delivery_pool, &j->pool_job);
}

/* --- replies to a transaction's end ------------------------------------------------ */

static void
lmtp_log_delivery(struct lmtp_session *s, const struct lmtp_rcpt *r, const char *result,
    const char *error)
{
	char to[128], from[128];

	lmtp_sanitize(to, sizeof(to), r->address);
	lmtp_sanitize(from, sizeof(from), s->sender != NULL ? s->sender : "");
	char id[17];
	snprintf(id, sizeof(id), "%016llx", (unsigned long long)s->id);
	const struct log_field fields[] = {
		LOG_STR("event", "delivery"), LOG_STR("session", id),
		LOG_STR("queue_id", s->queue_id), LOG_STR("from", from), LOG_STR("to", to),
		LOG_STR("user", r->user), LOG_NUM("size", s->wire_size), LOG_STR("result", result),
		LOG_STR("error", error != NULL ? error : ""),
	};
	log_event(false, fields, N_ELEMENTS(fields),
	    "lmtp %016llx: delivery queue_id=%s from=<%s> to=<%s> user=%s size=%llu "
	    "result=%s%s%s", (unsigned long long)s->id, s->queue_id[0] ? s->queue_id : "-",
	    from, to, r->user, (unsigned long long)s->wire_size, result,
	    error != NULL ? ": " : "", error != NULL ? error : "");
}

/* The reply for one recipient whose delivery ended with st. */
static void
lmtp_reply_delivery(struct lmtp_session *s, const struct lmtp_rcpt *r,
    enum delivery_status st, const char *error)
{
	char a[128];

	lmtp_sanitize(a, sizeof(a), r->address);
	lmtp_log_delivery(s, r, delivery_status_name(st), error);
	if ((unsigned)st < METRICS_DELIVERY_N)
		METRICS_INC(lmtp_deliveries[st]);
	switch (st) {
	case DELIVERY_OK:
		s->delivered++;
		lmtp_reply(s, "250 2.0.0 <%s> delivered", a);
		return;
	case DELIVERY_OVER_QUOTA:
		if (s->worker->config->max_maildrop_size_bounce)
			lmtp_reply(s, "552 5.2.2 <%s> mailbox full", a);
		else
			lmtp_reply(s, "452 4.2.2 <%s> mailbox full, try again later", a);
		break;
	case DELIVERY_TOO_BIG:
		lmtp_reply(s, "552 5.3.4 <%s> message too big", a);
		break;
	case DELIVERY_PERM:
		/* the admin's to fix (owner, mode): keep the mail queued */
		lmtp_reply(s, "451 4.3.5 <%s> mailbox unusable, try again later", a);
		break;
	case DELIVERY_TEMP:
		lmtp_reply(s, "451 4.3.0 <%s> temporary failure, try again later", a);
		break;
	}
	s->failed++;
}

/* Every recipient gets the same answer (the spool failed, or the message
 * is too big), then the transaction ends. */
static void
lmtp_reply_all(struct lmtp_session *s, enum delivery_status st, const char *error)
{
	for (size_t i = 0; i < s->n_rcpts; i++)
		lmtp_reply_delivery(s, &s->rcpts[i], st, error);
	lmtp_transaction_reset(s);
}

static bool lmtp_master_send(struct lmtp_session *s, unsigned kind, const char *user,
    uint64_t size);

/* Deliver to the next recipient, or end the transaction. */
static void
lmtp_deliver_next(struct lmtp_session *s)
{
	while (s->as_recipient && s->deliver_next < s->n_rcpts) {
		/* a process of the master's, as the recipient */
		struct lmtp_rcpt *r = &s->rcpts[s->deliver_next];
		if (lmtp_master_send(s, IPC_LMTP_DELIVER_SPOOL, r->user, 0))
			return;
		lmtp_reply_delivery(s, r, DELIVERY_TEMP, "cannot reach the master process");
		s->deliver_next++;
	}
	if (s->deliver_next >= s->n_rcpts) {
		lmtp_transaction_reset(s);
		return;
	}
	struct lmtp_job *j = lmtp_job_new(s, LMTP_JOB_DELIVER);
	lmtp_job_add_path(j, s->rcpts[s->deliver_next].path);
	j->fd = s->spool_fd;
	j->size = s->wire_size;
	lmtp_job_submit(s, j);
}

/* --- DATA ---------------------------------------------------------------------------- */

/* Append converted octets: to the queue-id head and to the chunk, unless
 * the message is already over max_message_size or a write failed. */
static void
lmtp_data_append(struct lmtp_session *s, const char *buf, size_t len)
{
	uint64_t max = s->worker->config->max_message_size;

	if (s->head_len < sizeof(s->head)) {
		size_t n = sizeof(s->head) - s->head_len < len ? sizeof(s->head) - s->head_len : len;
		memcpy(s->head + s->head_len, buf, n);
		s->head_len += n;
	}
	s->stored += len;
	if (max != 0 && s->stored > max)
		s->too_big = true;
	if (s->too_big || s->write_error != NULL)
		return;
	if (s->chunk_len + len > LMTP_CHUNK_ROOM)
		fatalx("lmtp: spool chunk overrun (%zu + %zu)", s->chunk_len, len);
	memcpy(s->chunk + s->chunk_len, buf, len);
	s->chunk_len += len;
}

/* Convert (CRLF -> LF, common/eol.h), count the wire size, append. */
static void
lmtp_data_convert(struct lmtp_session *s, const char *in, size_t len, bool last)
{
	char conv[LMTP_DECODE_PIECE + 2];
	size_t off = 0;

	do {
		size_t n = len - off > LMTP_DECODE_PIECE ? LMTP_DECODE_PIECE : len - off;
		size_t c = eol_convert(&s->eol, in + off, n, conv);
		if (last && off + n == len)
			c += eol_finish(&s->eol, conv + c);
		wire_encode(&s->wire, conv, c, s->encoded);
		if (last && off + n == len)
			wire_encode_finish(&s->wire, s->encoded);
		lmtp_data_append(s, conv, c);
		off += n;
	} while (off < len);
}

/* Hand the chunk to the store thread (final: with fsync). */
static void
lmtp_data_flush(struct lmtp_session *s, bool final)
{
	struct lmtp_job *j = lmtp_job_new(s, LMTP_JOB_WRITE);

	j->fd = s->spool_fd;
	j->buf = s->chunk;
	j->len = s->chunk_len;
	j->sync = final;
	s->chunk = final ? NULL : xmalloc(LMTP_CHUNK_ROOM);
	s->chunk_len = 0;
	lmtp_job_submit(s, j);
}

/* The terminator was read: answer per recipient, or write the rest. */
static void
lmtp_data_end(struct lmtp_session *s)
{
	lmtp_data_convert(s, "", 0, true);
	s->wire_size = s->wire.emitted - s->wire.stuffed;
	if (!lmtp_queue_id(s->head, s->head_len, s->queue_id, sizeof(s->queue_id)))
		s->queue_id[0] = '\0';
	s->transactions++;
	if (s->too_big) {
		char *why = xasprintf("message over max_message_size %llu octets",
		    (unsigned long long)s->worker->config->max_message_size);
		lmtp_reply_all(s, DELIVERY_TOO_BIG, why);
		free(why);
		return;
	}
	if (s->write_error != NULL) {
		char *why = s->write_error;
		s->write_error = NULL;
		lmtp_reply_all(s, DELIVERY_TEMP, why);
		free(why);
		return;
	}
	lmtp_data_flush(s, true);
}

/* Take DATA input: returns false when it must wait (more input, a job). */
static bool
lmtp_data_input(struct lmtp_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	struct evbuffer_iovec v;

	if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
		return false;
	size_t len = v.iov_len > LMTP_DECODE_PIECE ? LMTP_DECODE_PIECE : v.iov_len, out_len;
	bool done;
	size_t used = lmtp_data_decode(&s->dec, v.iov_base, len, s->decoded, &out_len, &done);
	evbuffer_drain(in, used);
	lmtp_data_convert(s, s->decoded, out_len, false);
	if (done) {
		lmtp_data_end(s);
		return true;
	}
	if (s->chunk_len >= LMTP_SPOOL_CHUNK)
		lmtp_data_flush(s, false);
	return true;
}

/* --- commands ------------------------------------------------------------------------ */

static void
lmtp_host_name(char out[LMTP_HOST_MAX + 1])
{
	if (gethostname(out, LMTP_HOST_MAX) < 0 || out[0] == '\0')
		strcpy(out, "localhost");
	out[LMTP_HOST_MAX] = '\0';
}

static void
lmtp_cmd_lhlo(struct lmtp_session *s, const char *args)
{
	char host[LMTP_HOST_MAX + 1];

	if (*args == '\0') {
		lmtp_reply(s, "501 5.5.4 LHLO needs the client's name");
		return;
	}
	lmtp_transaction_reset(s);
	lmtp_enter_state(s, LMTP_READY);
	lmtp_host_name(host);
	lmtp_reply(s, "250-%s", host);
	lmtp_reply(s, "250-PIPELINING");
	lmtp_reply(s, "250-ENHANCEDSTATUSCODES");
	lmtp_reply(s, "250-8BITMIME");
	if (s->worker->config->max_message_size != 0)
		lmtp_reply(s, "250 SIZE %llu", s->worker->config->max_message_size);
	else
		lmtp_reply(s, "250 SIZE");
}

static void
lmtp_cmd_mail(struct lmtp_session *s, const char *args)
{
	struct lmtp_mail_args m;
	uint64_t max = s->worker->config->max_message_size;

	switch (lmtp_parse_mail(args, &m)) {
	case LMTP_PARSE_SYNTAX:
		lmtp_reply(s, "501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=n] [BODY=8BITMIME]");
		return;
	case LMTP_PARSE_BAD_PARAM:
		lmtp_reply(s, "555 5.5.4 Unsupported MAIL parameter or value");
		return;
	case LMTP_PARSE_OK:
		break;
	}
	if (m.has_size && max != 0 && m.size > max) {
		lmtp_reply(s, "552 5.3.4 Message size exceeds the fixed maximum of %llu octets",
		    (unsigned long long)max);
		return;
	}
	s->sender = xstrdup(m.sender);
	s->declared_size = m.has_size ? m.size : 0;
	s->as_recipient = config_lmtp_as_recipient(s->worker->config);
	lmtp_enter_state(s, LMTP_MAIL);
	lmtp_reply(s, "250 2.1.0 Sender OK");
}

/* The recipient passed every check: it is taken. */
static void
lmtp_rcpt_accept(struct lmtp_session *s)
{
	char a[128];

	s->rcpts = xrealloc(s->rcpts, (s->n_rcpts + 1) * sizeof(*s->rcpts));
	s->rcpts[s->n_rcpts++] = s->pending_rcpt;
	memset(&s->pending_rcpt, 0, sizeof(s->pending_rcpt));
	lmtp_sanitize(a, sizeof(a), s->rcpts[s->n_rcpts - 1].address);
	lmtp_reply(s, "250 2.1.5 <%s> OK", a);
}

static void
lmtp_pending_remove(struct lmtp_session *s)
{
	if (s->auth_request == 0)
		return;
	if (s->auth_prev)
		s->auth_prev->auth_next = s->auth_next;
	else
		s->worker->lmtp_auth_pending = s->auth_next;
	if (s->auth_next)
		s->auth_next->auth_prev = s->auth_prev;
	s->auth_next = s->auth_prev = NULL;
	s->auth_request = 0;
}

static void
lmtp_cmd_rcpt(struct lmtp_session *s, const char *args)
{
	static unsigned char buf[IPC_HEADER_SIZE + 8 + IPC_MAX_USER + 1];
	char address[LMTP_PATH_MAX + 1];
	struct worker *w = s->worker;

	switch (lmtp_parse_rcpt(args, address)) {
	case LMTP_PARSE_SYNTAX:
		lmtp_reply(s, "501 5.5.4 Syntax: RCPT TO:<address>");
		return;
	case LMTP_PARSE_BAD_PARAM:
		lmtp_reply(s, "555 5.5.4 Unsupported RCPT parameter");
		return;
	case LMTP_PARSE_OK:
		break;
	}
	if (s->n_rcpts >= LMTP_MAX_RECIPIENTS) {
		lmtp_reply(s, "452 4.5.3 Too many recipients");
		return;
	}
	uint64_t id = ++w->next_request;
	const struct ipc_rcpt_lookup m = { .request_id = id, .session_id = s->id,
	    .address = address };
	size_t len = ipc_rcpt_lookup_encode(buf, sizeof(buf), &m);
	if (len == 0 || worker_auth_send(w, buf, len) < 0) {
		log_warn("lmtp %016llx: cannot reach the auth process", (unsigned long long)s->id);
		lmtp_reply(s, "451 4.3.0 Recipient lookup failed, try again later");
		return;
	}
	s->pending_address = xstrdup(address);
	s->auth_request = id;
	s->auth_prev = NULL;
	s->auth_next = w->lmtp_auth_pending;
	if (w->lmtp_auth_pending)
		w->lmtp_auth_pending->auth_prev = s;
	w->lmtp_auth_pending = s;
	s->wait = LMTP_WAIT_AUTH;
	lmtp_timer_arm(s);
}

static void
lmtp_cmd_data(struct lmtp_session *s, const char *args)
{
	if (*args != '\0') {
		lmtp_reply(s, "501 5.5.4 DATA takes no arguments");
		return;
	}
	if (s->n_rcpts == 0) {
		lmtp_reply(s, "503 5.5.1 No valid recipients");
		return;
	}
	struct lmtp_job *j = lmtp_job_new(s, LMTP_JOB_SPOOL);
	if (s->as_recipient) {
		j->spool_dir = true;
		lmtp_job_add_path(j, s->worker->config->lmtp_spool_dir);
	} else {
		for (size_t i = 0; i < s->n_rcpts; i++)
			lmtp_job_add_path(j, s->rcpts[i].path);
	}
	lmtp_job_submit(s, j);
}

/* The spool file is there: the message may come. */
static void
lmtp_data_begin(struct lmtp_session *s, int fd)
{
	s->spool_fd = fd;
	lmtp_data_decoder_init(&s->dec);
	eol_converter_init(&s->eol);
	wire_encoder_init(&s->wire, -1);
	s->decoded = xmalloc(LMTP_DECODE_PIECE + 1);
	s->encoded = xmalloc(WIRE_ENCODE_MAX(LMTP_DECODE_PIECE + 2));
	s->chunk = xmalloc(LMTP_CHUNK_ROOM);
	s->chunk_len = 0;
	s->stored = 0;
	s->too_big = false;
	s->head_len = 0;
	lmtp_enter_state(s, LMTP_DATA);
	lmtp_reply(s, "354 Start mail input; end with <CRLF>.<CRLF>");
	/* RFC 5321 §4.4: the envelope sender, as the final delivery adds it */
	char *rp = xasprintf("Return-Path: <%s>\r\n", s->sender != NULL ? s->sender : "");
	lmtp_data_convert(s, rp, strlen(rp), false);
	free(rp);
}

static void
lmtp_cmd_rset(struct lmtp_session *s, const char *args)
{
	lmtp_transaction_reset(s);
	lmtp_reply(s, "250 2.0.0 OK");
}

static void
lmtp_cmd_noop(struct lmtp_session *s, const char *args)
{
	lmtp_reply(s, "250 2.0.0 OK");
}

static void
lmtp_cmd_quit(struct lmtp_session *s, const char *args)
{
	lmtp_reply(s, "221 2.0.0 Bye");
	lmtp_close_after_reply(s, "quit");
}

static void
lmtp_cmd_vrfy(struct lmtp_session *s, const char *args)
{
	lmtp_reply(s, "252 2.5.0 Cannot VRFY; send the message and see");
}

static void
lmtp_cmd_helo(struct lmtp_session *s, const char *args)
{
	/* RFC 2033 §4.1: an LMTP server must not take SMTP's greetings */
	lmtp_reply(s, "500 5.5.1 This is LMTP: use LHLO");
}

static const struct lmtp_command {
	enum lmtp_verb verb;
	unsigned states;
	void (*handler)(struct lmtp_session *s, const char *args);
} lmtp_commands[] = {
	{ LMTP_VERB_LHLO, S_ANY, lmtp_cmd_lhlo },
	{ LMTP_VERB_MAIL, S_READY, lmtp_cmd_mail },
	{ LMTP_VERB_RCPT, S_MAIL, lmtp_cmd_rcpt },
	{ LMTP_VERB_DATA, S_MAIL, lmtp_cmd_data },
	{ LMTP_VERB_RSET, S_ANY, lmtp_cmd_rset },
	{ LMTP_VERB_NOOP, S_ANY, lmtp_cmd_noop },
	{ LMTP_VERB_QUIT, S_ANY, lmtp_cmd_quit },
	{ LMTP_VERB_VRFY, S_ANY, lmtp_cmd_vrfy },
	{ LMTP_VERB_HELO, S_ANY, lmtp_cmd_helo },
	{ LMTP_VERB_EHLO, S_ANY, lmtp_cmd_helo },
};

/* A refused line: counted against max_bad_commands, which closes. */
static void
lmtp_bad_line(struct lmtp_session *s, const char *reply)
{
	lmtp_reply(s, "%s", reply);
	unsigned max = s->worker->config->max_bad_commands;
	if (max > 0 && ++s->bad_commands >= max) {
		lmtp_reply(s, "421 4.7.0 Too many errors, closing connection");
		lmtp_close_after_reply(s, "too-many-errors");
	}
}

static void
lmtp_dispatch(struct lmtp_session *s, char *line)
{
	const char *args;
	enum lmtp_verb verb = lmtp_parse_verb(line, &args);

	for (size_t i = 0; i < N_ELEMENTS(lmtp_commands); i++) {
		const struct lmtp_command *c = &lmtp_commands[i];
		if (c->verb != verb)
			continue;
		if (!(c->states & (1u << s->state))) {
			lmtp_bad_line(s, s->state == LMTP_GREETED ? "503 5.5.1 Send LHLO first" :
			    verb == LMTP_VERB_MAIL ? "503 5.5.1 MAIL already given" :
			    "503 5.5.1 Send MAIL first");
			return;
		}
		c->handler(s, args);
		return;
	}
	lmtp_bad_line(s, "500 5.5.2 Unknown command");
}

/* One command line from the input, or false when none is complete. */
static bool
lmtp_command_input(struct lmtp_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	char line[LMTP_MAX_LINE + 1];
	size_t eol_len = 0;
	struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);

	if (p.pos < 0) {
		/* an over-long line: throw away what came, answer at its end */
		if (evbuffer_get_length(in) > LMTP_MAX_LINE) {
			s->discarding = true;
			evbuffer_drain(in, evbuffer_get_length(in));
		}
		return false;
	}
	size_t n = (size_t)p.pos;
	if (s->discarding || n > LMTP_MAX_LINE) {
		evbuffer_drain(in, n + eol_len);
		s->discarding = false;
		lmtp_bad_line(s, "500 5.5.2 Line too long");
		return true;
	}
	evbuffer_remove(in, line, n);
	evbuffer_drain(in, eol_len);
	line[n] = '\0';
	if (memchr(line, '\0', n) != NULL) {
		lmtp_bad_line(s, "500 5.5.2 NUL in a command line");
		return true;
	}
	lmtp_dispatch(s, line);
	return true;
}

static void
lmtp_process_input(struct lmtp_session *s)
{
	while (!s->freed_pending && s->wait == LMTP_WAIT_NONE && s->state != LMTP_CLOSING) {
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) > LMTP_OUTPUT_HIGH)
			return;   /* the write callback resumes */
		bool more = s->state == LMTP_DATA ? lmtp_data_input(s) : lmtp_command_input(s);
		if (!more)
			return;
	}
}

/* --- waits ending --------------------------------------------------------------------- */

/* The pending recipient's room was checked (RCPT with max_maildrop_size). */
static void
lmtp_rcpt_checked(struct lmtp_session *s, enum delivery_status st, const char *error)
{
	char a[128];

	lmtp_sanitize(a, sizeof(a), s->pending_rcpt.address);
	if (st == DELIVERY_OK) {
		lmtp_rcpt_accept(s);
		return;
	}
	log_info("lmtp %016llx: recipient <%s> refused: %s", (unsigned long long)s->id, a,
	    error != NULL ? error : delivery_status_name(st));
	if (st == DELIVERY_OVER_QUOTA && s->worker->config->max_maildrop_size_bounce)
		lmtp_reply(s, "552 5.2.2 <%s> mailbox full", a);
	else if (st == DELIVERY_OVER_QUOTA)
		lmtp_reply(s, "452 4.2.2 <%s> mailbox full, try again later", a);
	else
		lmtp_reply(s, "451 4.3.0 <%s> mailbox cannot be checked, try again later", a);
	lmtp_rcpt_clear(&s->pending_rcpt);
}

/* --- deliveries as the recipient (the master's processes) --------------------------- */

static void
lmtp_master_remove(struct lmtp_session *s)
{
	if (s->master_request == 0)
		return;
	if (s->master_prev)
		s->master_prev->master_next = s->master_next;
	else
		s->worker->lmtp_master_pending = s->master_next;
	if (s->master_next)
		s->master_next->master_prev = s->master_prev;
	s->master_next = s->master_prev = NULL;
	s->master_request = 0;
}

/* Ask the master to check (RCPT) or deliver (the spool goes along) for
 * user; the answer comes as IPC_LMTP_RESULT (lmtp_master_result). False
 * (logged) when it cannot be asked. */
static bool
lmtp_master_send(struct lmtp_session *s, unsigned kind, const char *user, uint64_t size)
{
	static unsigned char buf[IPC_HEADER_SIZE + 3 * 8 + IPC_MAX_USER + IPC_MAX_SENDER + 2];
	struct worker *w = s->worker;
	uint64_t id = ++w->next_request;
	const struct ipc_lmtp_deliver m = { .request_id = id, .session_id = s->id, .kind = kind,
	    .size = size, .user = user, .sender = s->sender != NULL ? s->sender : "" };
	size_t len = ipc_lmtp_deliver_encode(buf, sizeof(buf), &m);
	if (len == 0 || w->control_fd < 0 ||
	    ipc_send_fd(w->control_fd, buf, len, kind == IPC_LMTP_DELIVER_SPOOL ? s->spool_fd : -1) < 0) {
		log_warn("lmtp %016llx: cannot ask the master for a delivery as %s",
		    (unsigned long long)s->id, user);
		return false;
	}
	s->master_request = id;
	s->master_kind = kind;
	s->master_prev = NULL;
	s->master_next = w->lmtp_master_pending;
	if (w->lmtp_master_pending)
		w->lmtp_master_pending->master_prev = s;
	w->lmtp_master_pending = s;
	s->wait = LMTP_WAIT_MASTER;
	lmtp_timer_arm(s);
	return true;
}

_Static_assert(IPC_LMTP_NO_USER > DELIVERY_TOO_BIG, "IPC_LMTP_NO_USER is no delivery status");

/* The answer to a check or delivery (or none in time: r == NULL). */
static void
lmtp_master_answered(struct lmtp_session *s, unsigned status, const char *error)
{
	char a[128];
	unsigned kind = s->master_kind;

	lmtp_master_remove(s);
	s->wait = LMTP_WAIT_NONE;
	if (kind == IPC_LMTP_CHECK) {
		if (status == IPC_LMTP_NO_USER) {
			lmtp_sanitize(a, sizeof(a), s->pending_rcpt.address);
			lmtp_reply(s, "550 5.1.1 <%s> No such user here", a);
			lmtp_rcpt_clear(&s->pending_rcpt);
		} else {
			lmtp_rcpt_checked(s, (enum delivery_status)status, error);
		}
	} else {
		struct lmtp_rcpt *r = &s->rcpts[s->deliver_next];
		if (status == IPC_LMTP_NO_USER) {
			/* the account went away (or may get no mail) since RCPT */
			lmtp_sanitize(a, sizeof(a), r->address);
			lmtp_log_delivery(s, r, "no such user", error);
			lmtp_reply(s, "550 5.1.1 <%s> No such user here", a);
			s->failed++;
		} else {
			lmtp_reply_delivery(s, r, (enum delivery_status)status, error);
		}
		s->deliver_next++;
		lmtp_deliver_next(s);
	}
	if (!s->freed_pending && s->wait == LMTP_WAIT_NONE) {
		lmtp_timer_arm(s);
		lmtp_process_input(s);
	}
}

bool
lmtp_master_result(struct worker *w, const struct ipc_lmtp_result *r)
{
	struct lmtp_session *s;

	for (s = w->lmtp_master_pending; s != NULL; s = s->master_next)
		if (s->master_request == r->request_id)
			break;
	if (s == NULL)
		return false;   /* given up on (timer) or gone */
	if (s->freed_pending) {
		lmtp_master_remove(s);
		return true;
	}
	lmtp_master_answered(s, r->status, r->error[0] != '\0' ? r->error : NULL);
	return true;
}

static void
lmtp_job_finished(struct lmtp_session *s, struct lmtp_job *j)
{
	switch (j->kind) {
	case LMTP_JOB_QUOTA:
		lmtp_rcpt_checked(s, j->status, j->error);
		return;
	case LMTP_JOB_SPOOL:
		if (j->spool_fd < 0) {
			log_warnx("lmtp %016llx: no spool file: %s", (unsigned long long)s->id,
			    j->error != NULL ? j->error : "?");
			lmtp_reply(s, "451 4.3.0 Cannot take the message now, try again later");
			return;
		}
		lmtp_data_begin(s, j->spool_fd);
		j->spool_fd = -1;
		return;
	case LMTP_JOB_WRITE:
		if (j->status != DELIVERY_OK && s->write_error == NULL)
			s->write_error = xstrdup(j->error != NULL ? j->error : "spool write failed");
		if (!j->sync)
			return;   /* more of the message */
		if (s->write_error != NULL) {
			char *why = s->write_error;
			s->write_error = NULL;
			lmtp_reply_all(s, DELIVERY_TEMP, why);
			free(why);
			return;
		}
		s->deliver_next = 0;
		lmtp_deliver_next(s);
		return;
	case LMTP_JOB_DELIVER:
		lmtp_reply_delivery(s, &s->rcpts[s->deliver_next], j->status, j->error);
		s->deliver_next++;
		lmtp_deliver_next(s);
		return;
	}
}

bool
lmtp_auth_result(struct worker *w, const struct ipc_auth_result *r)
{
	struct lmtp_session *s;
	char a[128];

	for (s = w->lmtp_auth_pending; s != NULL; s = s->auth_next)
		if (s->auth_request == r->request_id)
			break;
	if (s == NULL)
		return false;
	lmtp_pending_remove(s);
	s->wait = LMTP_WAIT_NONE;
	if (s->freed_pending)
		return true;
	char *address = s->pending_address;
	s->pending_address = NULL;
	lmtp_sanitize(a, sizeof(a), address);
	const char *path = NULL;
	if (r->result == AUTH_RESULT_FAIL) {
		lmtp_reply(s, "550 5.1.1 <%s> No such user here", a);
		free(address);
	} else if (r->result != AUTH_RESULT_OK) {
		lmtp_reply(s, "451 4.3.0 <%s> Recipient lookup failed, try again later", a);
		free(address);
	} else if (store_backend_for(r->location, &path) == NULL) {
		log_warnx("lmtp %016llx: user %s: unknown mail location scheme", (unsigned long long)s->id,
		    r->user);
		lmtp_reply(s, "451 4.3.5 <%s> mailbox type not supported, try again later", a);
		free(address);
	} else {
		s->pending_rcpt.address = address;
		s->pending_rcpt.user = xstrdup(r->user);
		/* the location with its scheme: the jobs pick the backend */
		s->pending_rcpt.path = xstrdup(r->location);
		if (w->config->max_maildrop_size == 0) {
			lmtp_rcpt_accept(s);
		} else if (s->as_recipient) {
			/* the maildrop may be readable by its user alone */
			if (lmtp_master_send(s, IPC_LMTP_CHECK, r->user, s->declared_size))
				return true;
			lmtp_rcpt_checked(s, DELIVERY_TEMP, "cannot reach the master process");
		} else {
			struct lmtp_job *j = lmtp_job_new(s, LMTP_JOB_QUOTA);
			lmtp_job_add_path(j, r->location);
			j->size = s->declared_size;
			lmtp_job_submit(s, j);
			return true;
		}
	}
	lmtp_timer_arm(s);
	lmtp_process_input(s);
	return true;
}

/* --- the connection ------------------------------------------------------------------- */

static void
lmtp_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lmtp_session *s = arg;
	char a[128];

	if (s->freed_pending)
		return;
	if (s->wait == LMTP_WAIT_MASTER) {
		/* the master did not answer: this recipient only */
		log_warnx("lmtp %016llx: no answer from the master for a delivery as the recipient",
		    (unsigned long long)s->id);
		lmtp_master_answered(s, DELIVERY_TEMP, "no answer from the master process");
		return;
	}
	if (s->wait == LMTP_WAIT_AUTH) {
		/* the auth process did not answer: this recipient only */
		lmtp_pending_remove(s);
		s->wait = LMTP_WAIT_NONE;
		lmtp_sanitize(a, sizeof(a), s->pending_address != NULL ? s->pending_address : "");
		free(s->pending_address);
		s->pending_address = NULL;
		log_warnx("lmtp %016llx: no answer from the auth process", (unsigned long long)s->id);
		lmtp_reply(s, "451 4.3.0 <%s> Recipient lookup timed out, try again later", a);
		lmtp_timer_arm(s);
		lmtp_process_input(s);
		return;
	}
	lmtp_reply(s, "421 4.4.2 Timeout, closing connection");
	lmtp_close_after_reply(s, "timeout");
}

static void
lmtp_read_cb(struct bufferevent *bev, void *arg)
{
	struct lmtp_session *s = arg;

	if (s->freed_pending)
		return;
	if (s->wait == LMTP_WAIT_NONE)
		lmtp_timer_arm(s);
	lmtp_process_input(s);
}

static void
lmtp_write_cb(struct bufferevent *bev, void *arg)
{
	struct lmtp_session *s = arg;

	if (s->freed_pending)
		return;
	if (s->state == LMTP_CLOSING) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			lmtp_destroy_later(s, NULL);
		return;
	}
	lmtp_process_input(s);
}

static void
lmtp_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct lmtp_session *s = arg;

	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		lmtp_destroy_later(s, s->state == LMTP_CLOSING ? NULL :
		    s->state == LMTP_DATA ? "disconnected-in-data" : "disconnected");
}

static void
lmtp_free(struct lmtp_session *s)
{
	struct worker *w = s->worker;

	log_info("lmtp %016llx: end peer=%s reason=%s transactions=%u delivered=%u failed=%u",
	    (unsigned long long)s->id, s->peer, s->end_reason ? s->end_reason : "closed",
	    s->transactions, s->delivered, s->failed);
	lmtp_transaction_reset(s);
	bufferevent_free(s->bev);
	event_free(s->timer);
	if (s->all_prev)
		s->all_prev->all_next = s->all_next;
	else
		w->lmtp_all = s->all_next;
	if (s->all_next)
		s->all_next->all_prev = s->all_prev;
	w->lmtp_sessions--;
	free(s);
	if (w->connection_ended != NULL)
		w->connection_ended(w);
}

static void
lmtp_destroy_cb(evutil_socket_t fd, short what, void *arg)
{
	lmtp_free(arg);
}

/* Stop everything now, free in a later loop round. A job under way goes
 * on without the session: it takes the spool file with it. */
static void
lmtp_destroy_later(struct lmtp_session *s, const char *reason)
{
	if (s->freed_pending)
		return;
	s->freed_pending = true;
	if (s->end_reason == NULL)
		s->end_reason = reason;
	lmtp_pending_remove(s);
	lmtp_master_remove(s);
	if (s->job != NULL) {
		s->job->s = NULL;
		if (s->spool_fd >= 0 && s->job->fd == s->spool_fd) {
			s->job->owns_fd = true;
			s->spool_fd = -1;
		}
		s->job = NULL;
	}
	bufferevent_disable(s->bev, EV_READ | EV_WRITE);
	evtimer_del(s->timer);
	struct timeval zero = { 0, 0 };
	if (event_base_once(s->worker->base, -1, EV_TIMEOUT, lmtp_destroy_cb, s, &zero) < 0)
		fatalx("event_base_once failed");
}

static void
lmtp_peer_format(const struct sockaddr *sa, int salen, char out[80])
{
	char host[NI_MAXHOST], serv[NI_MAXSERV];

	if (sa->sa_family == AF_UNIX) {
		snprintf(out, 80, "unix");
		return;
	}
	if (getnameinfo(sa, (socklen_t)salen, host, sizeof(host), serv, sizeof(serv),
	    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		snprintf(out, 80, "unknown");
	else if (strchr(host, ':') != NULL)
		snprintf(out, 80, "[%.46s]:%.8s", host, serv);
	else
		snprintf(out, 80, "%.46s:%.8s", host, serv);
}

void
lmtp_session_create(struct worker *w, int fd, const struct sockaddr *sa, int salen)
{
	struct lmtp_session *s = xcalloc(1, sizeof(*s));
	char host[LMTP_HOST_MAX + 1];

	s->worker = w;
	s->id = ++w->next_session;
	s->spool_fd = -1;
	lmtp_peer_format(sa, salen, s->peer);
	if (sa->sa_family != AF_UNIX) {
		/* replies are short and come one by one (after a lookup, a
		 * delivery): Nagle would hold each behind the last one's ACK */
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	s->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		close(fd);
		free(s);
		return;
	}
	s->timer = evtimer_new(w->base, lmtp_timer_cb, s);
	s->all_next = w->lmtp_all;
	if (w->lmtp_all)
		w->lmtp_all->all_prev = s;
	w->lmtp_all = s;
	w->lmtp_sessions++;
	bufferevent_setcb(s->bev, lmtp_read_cb, lmtp_write_cb, lmtp_event_cb, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, LMTP_INPUT_HIGH);
	bufferevent_setwatermark(s->bev, EV_WRITE, LMTP_OUTPUT_HIGH / 2, 0);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	log_debug("lmtp %016llx: connect from %s", (unsigned long long)s->id, s->peer);
	if (w->lmtp_sessions > LMTP_MAX_SESSIONS) {
		lmtp_reply(s, "421 4.3.2 Too many LMTP connections, try again later");
		lmtp_close_after_reply(s, "too-many-connections");
		return;
	}
	lmtp_enter_state(s, LMTP_GREETED);
	lmtp_timer_arm(s);
	lmtp_host_name(host);
	lmtp_reply(s, "220 %s LMTP popboxd ready", host);
}

void
lmtp_close_all(struct worker *w)
{
	for (struct lmtp_session *s = w->lmtp_all; s != NULL; s = s->all_next) {
		if (s->freed_pending)
			continue;
		if (s->wait == LMTP_WAIT_NONE && s->state != LMTP_DATA && s->state != LMTP_CLOSING) {
			lmtp_reply(s, "421 4.3.2 Shutting down, try again later");
			bufferevent_flush(s->bev, EV_WRITE, BEV_NORMAL);
		}
		lmtp_destroy_later(s, "shutdown");
	}
}

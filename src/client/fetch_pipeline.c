/* popbox fetch: the transaction (fetch_run.h). The planned RETRs and the
 * DELEs of delivered messages go out in a window of pipelined commands
 * (RFC 2449 PIPELINING); answers are read in order. A message is DELE'd
 * only once its delivery is durable: after commit(), or for Maildir after
 * the sync of its batch (deliver.h). A local delivery failure stops the
 * run: nothing more is sent, the answers in flight are read and thrown
 * away, and the caller drops the session without QUIT, so the server
 * deletes nothing (docs/DESIGN.md, "popbox fetch: Maildir delivery in
 * batches").
 */
#include "client/fetch_run.h"
#include "common/log.h"
#include "common/util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Commands in flight when the server offers PIPELINING. Each is a few
 * bytes, so the window never fills a socket buffer: our writes cannot
 * block while the server is blocked writing a message to us. */
#define FETCH_PIPELINE_WINDOW 32
/* The longest command line: "DELE 4294967295\r\n". */
#define FETCH_COMMAND_MAX 20
/* A message body may exceed its LIST size (CRLF counting, broken servers)
 * but not by this much: beyond it the server is hostile (docs/RELIABILITY.md
 * §5). Nor beyond max_message_size, whatever LIST said (body_limit). */
#define FETCH_BODY_SLACK 65536
/* Maildir batches: messages whole in tmp/ are made durable together (one
 * sync, one fsync of new/) when the batch has this many messages or bytes,
 * when it is this old, or when no RETR answer is left to read; only then
 * are their DELEs sent. Bigger batches amortise the sync; these bound the
 * work a crash redoes and how long a message waits to appear in new/. */
#define FETCH_BATCH_MSGS 64
#define FETCH_BATCH_BYTES (8 * 1024 * 1024)
#define FETCH_BATCH_SEC 1.0

/* A command sent whose answer is not read yet. */
struct inflight {
	uint8_t type;              /* ACT_FETCH (RETR) or ACT_DELE */
	uint32_t msg;
};

struct pipeline {
	struct run *r;
	struct pop3c *s;
	unsigned window;           /* FETCH_PIPELINE_WINDOW, or 1 without pipelining */
	struct inflight inflight[FETCH_PIPELINE_WINDOW];   /* a ring */
	unsigned head, n_inflight;
	uint32_t *dq;              /* delivered messages whose DELE is not sent yet */
	uint32_t dq_head, dq_tail;
	uint32_t next;             /* the next message to look at in the plan */
	uint32_t retr_left;        /* RETR answers not yet read */
	bool fatal_local;          /* a local failure: send nothing more */
	/* the Maildir batch: ended in the deliverer, not yet synced */
	uint32_t *batch;
	uint32_t nbatch;
	uint64_t batch_bytes;
	double batch_t0;
};

/* ---- one RETR body ---- */

/* The most wire octets the body of message i may take: twice its LIST
 * size and some slack, but never more than max_message_size (the plan
 * fetches nothing LIST announces above it; this bounds the server that
 * announces little and sends more). */
static uint64_t
body_limit(const struct run *r, uint32_t i)
{
	/* LIST sizes are at most UINT64_MAX / 4 (pop3_parse_list_line) */
	uint64_t lim = r->m[i].size * 2 + FETCH_BODY_SLACK;
	uint64_t cap = (uint64_t)r->a->max_message_size;
	return lim < cap ? lim : cap;
}

/* Where the pieces of one RETR body go (retr_piece). */
struct retr_sink {
	struct run *r;
	bool delivering;           /* false after a local error: pieces dropped */
	uint64_t octets;           /* message bytes, as delivered */
	struct fetch_error *local;
};

static void
retr_piece(void *ctx, const char *data, size_t len)
{
	struct retr_sink *k = ctx;
	struct run *r = k->r;
	if (k->delivering && !r->d->ops->write(r->d, data, len, k->local)) {
		r->d->ops->abort(r->d);
		k->delivering = false;
	}
	k->octets += len;
	r->bytes_fetched += len;
	fetch_report_progress(r, false);
}

/* Stream the body of message i into the deliverer. A local error (in
 * local) stops delivery but the body is still read up to its end; false
 * (err set) only when the session itself failed. */
static bool
retr_body(struct pipeline *p, uint32_t i, struct fetch_error *err, struct fetch_error *local)
{
	struct run *r = p->r;
	struct msg *m = &r->m[i];
	struct deliver_message dm = {
		.uidl = m->uidl,
		.marker = r->have_uidl && !m->ambiguous && m->marker[0] ? m->marker : NULL,
		.number = i + 1,
		.list_size = m->size,
	};
	struct retr_sink k = { .r = r, .delivering = true, .local = local };

	if (!r->d->ops->begin(r->d, &dm, local))
		k.delivering = false;
	uint64_t limit = body_limit(r, i);
	switch (pop3c_read_body(p->s, limit, retr_piece, &k, err)) {
	case POP3C_BODY_OK:
		break;
	case POP3C_BODY_TOO_LONG:
		if (k.delivering)
			r->d->ops->abort(r->d);
		if (limit == (uint64_t)r->a->max_message_size)
			return fetch_error_set(err, EX_PROTOCOL,
			    "message %u: more than max_message_size (%" PRId64 " octets) arrived, "
			    "though LIST announced %" PRIu64 "; not delivered, the session was "
			    "dropped without QUIT and nothing deleted in it", i + 1,
			    r->a->max_message_size, m->size);
		return fetch_error_set(err, EX_PROTOCOL,
		    "message %u is far larger than the %" PRIu64 " octets LIST announced; "
		    "aborting", i + 1, m->size);
	case POP3C_BODY_FAILED:
		if (k.delivering)
			r->d->ops->abort(r->d);
		return false;	/* partial message discarded */
	}
	if (!k.delivering)
		return true;
	if (r->d->ops->end != NULL) {
		/* durable later, with its batch (sync_batch) */
		if (!r->d->ops->end(r->d, local))
			return true;
		if (p->nbatch == 0)
			p->batch_t0 = fetch_now();
		p->batch[p->nbatch++] = i;
		p->batch_bytes += k.octets;
		m->pending = true;
		return true;
	}
	if (!r->d->ops->commit(r->d, local))
		return true;
	m->delivered = true;
	return true;
}

/* ---- delivered messages and the batch ---- */

/* Message i is durable locally: count it, record it, queue its DELE. */
static void
delivered(struct pipeline *p, uint32_t i)
{
	struct run *r = p->r;
	struct msg *m = &r->m[i];
	m->delivered = true;
	r->n_fetched++;
	if (r->have_uidl && !m->ambiguous) {
		struct uidl_entry *e = uidl_state_add(&r->st, m->uidl, (int64_t)time(NULL), m->size);
		e->first_seen = (int64_t)time(NULL);
		e->on_server = true;
		r->unsaved++;
	}
	if (!r->a->keep || r->a->keep_days == 0)
		p->dq[p->dq_tail++] = i;
	else
		r->n_kept++;
}

/* Count every message of the batch as failed and forget the batch. */
static void
batch_fail(struct pipeline *p)
{
	for (uint32_t k = 0; k < p->nbatch; k++) {
		p->r->m[p->batch[k]].pending = false;
		p->r->m[p->batch[k]].failed = true;
		p->r->n_failed++;
	}
	p->nbatch = 0;
	p->batch_bytes = 0;
}

/* Make the pending batch durable; only then do its messages count as
 * delivered and get their DELE queued. On failure none of them does (the
 * deliverer keeps in new/ only what it could make durable there; the next
 * run deletes those by their markers). */
static bool
sync_batch(struct pipeline *p, struct fetch_error *local)
{
	struct run *r = p->r;
	if (p->nbatch > 0 && !r->d->ops->sync(r->d, local)) {
		batch_fail(p);
		return false;
	}
	for (uint32_t k = 0; k < p->nbatch; k++) {
		r->m[p->batch[k]].pending = false;
		delivered(p, p->batch[k]);
	}
	p->nbatch = 0;
	p->batch_bytes = 0;
	return true;
}

/* Sync the batch when it is big or old enough, or complete. */
static void
sync_batch_if_due(struct pipeline *p, struct fetch_error *err)
{
	if (p->nbatch == 0)
		return;
	if (p->nbatch < FETCH_BATCH_MSGS && p->batch_bytes < FETCH_BATCH_BYTES &&
	    p->retr_left > 0 && fetch_now() - p->batch_t0 < FETCH_BATCH_SEC)
		return;
	struct fetch_error local = { 0 };
	if (!sync_batch(p, &local)) {
		/* a local disk problem: stop, delete nothing */
		p->fatal_local = true;
		*err = local;
	} else if (!fetch_state_checkpoint(p->r, false, err)) {
		p->fatal_local = true;
	}
}

/* ---- the window ---- */

/* Refill the window when half of it has been answered, in one write: the
 * server still has half a window of commands to work on meanwhile. DELEs
 * of delivered messages go first, then the plan in order. */
static bool
refill(struct pipeline *p, struct fetch_error *err)
{
	struct run *r = p->r;
	char cmds[FETCH_PIPELINE_WINDOW * FETCH_COMMAND_MAX];
	size_t cmdlen = 0;

	while (p->n_inflight < p->window && !p->fatal_local &&
	    (cmdlen > 0 || p->n_inflight <= p->window / 2)) {
		uint8_t type;
		uint32_t msgno;
		if (p->dq_head < p->dq_tail) {
			type = ACT_DELE;
			msgno = p->dq[p->dq_head++];
		} else {
			while (p->next < r->count && r->m[p->next].action != ACT_FETCH &&
			    r->m[p->next].action != ACT_DELE)
				p->next++;
			if (p->next == r->count)
				break;
			type = r->m[p->next].action;
			msgno = p->next++;
		}
		cmdlen += (size_t)snprintf(cmds + cmdlen, sizeof(cmds) - cmdlen, "%s %u\r\n",
		    type == ACT_FETCH ? "RETR" : "DELE", msgno + 1);
		unsigned slot = (p->head + p->n_inflight) % FETCH_PIPELINE_WINDOW;
		p->inflight[slot].type = type;
		p->inflight[slot].msg = msgno;
		p->n_inflight++;
	}
	return cmdlen == 0 || pop3c_send_lines(p->s, cmds, cmdlen, err);
}

/* ---- answers ---- */

static void
warn_refused(struct pipeline *p, const char *cmd, uint32_t i)
{
	char clean[120];
	str_sanitize(clean, sizeof(clean), p->s->text, strlen(p->s->text));
	log_warnx("%s: %s %u refused: %s", p->r->a->name, cmd, i + 1, clean);
}

/* Remember the first refused message's status: cron is told to come back. */
static void
soft_failure(struct run *r, int code, const char *msg)
{
	if (r->soft_code == 0) {
		r->soft_code = code;
		snprintf(r->soft_msg, sizeof(r->soft_msg), "%s", msg);
	}
}

/* Message i was fetched but not delivered, for the reason in local. */
static void
not_delivered(struct pipeline *p, uint32_t i, const struct fetch_error *local,
    struct fetch_error *err)
{
	struct run *r = p->r;
	r->m[i].failed = true;
	r->n_failed++;
	if (r->backend->refusal_per_message && local->code != EX_OSERR) {
		/* the target refused this one message: leave it on the server,
		 * carry on with the others */
		fprintf(stderr, "popbox: %s: message %u: %s\n", r->a->name, i + 1, local->msg);
		soft_failure(r, local->code, local->msg);
		return;
	}
	/* a local disk problem: stop, delete nothing in this session; the
	 * batch waiting for its sync is dropped (never visible, removed from
	 * tmp/ when the deliverer closes) */
	p->fatal_local = true;
	*err = *local;
	batch_fail(p);
}

/* The +OK or -ERR of RETR i has been read: read the body and deliver it.
 * False only when the session failed. */
static bool
answer_retr(struct pipeline *p, uint32_t i, enum pop3_status st, struct fetch_error *err)
{
	struct run *r = p->r;
	struct msg *m = &r->m[i];
	struct fetch_error local = { 0 };

	p->retr_left--;
	if (st != POP3_OK) {
		warn_refused(p, "RETR", i);
		m->failed = true;
		r->n_failed++;
		/* left on the server: tell cron to come back */
		char what[64];
		snprintf(what, sizeof(what), "RETR %u refused", i + 1);
		soft_failure(r, EX_TEMPFAIL, what);
		return true;
	}
	if (p->fatal_local) {
		/* already failing: drain the pipelined reply, deliver nothing;
		 * an endless body just drops the session */
		return pop3c_skip_body(p->s, body_limit(r, i), err);
	}
	if (!retr_body(p, i, err, &local))
		return false;
	if (!m->delivered && !m->pending) {
		not_delivered(p, i, &local, err);
		return true;
	}
	if (m->pending)
		return true;	/* delivered(), queued by sync_batch() */
	delivered(p, i);
	if (!fetch_state_checkpoint(r, false, err))
		p->fatal_local = true;
	return true;
}

/* Read the answer to the oldest command in flight. False when the
 * session failed. */
static bool
answer(struct pipeline *p, struct fetch_error *err)
{
	struct inflight c = p->inflight[p->head];
	p->head = (p->head + 1) % FETCH_PIPELINE_WINDOW;
	p->n_inflight--;
	enum pop3_status st = pop3c_status(p->s, err);
	if (st == POP3_INVALID)
		return false;
	if (c.type == ACT_FETCH)
		return answer_retr(p, c.msg, st, err);
	if (st == POP3_OK)
		p->r->m[c.msg].dele_sent = true;
	else
		warn_refused(p, "DELE", c.msg);
	return true;
}

bool
fetch_pipeline_run(struct run *r, struct fetch_error *err)
{
	struct pipeline p = {
		.r = r,
		.s = r->s,
		.dq = xmalloc((r->count + 1) * sizeof(*p.dq)),
		.batch = xmalloc((r->count + 1) * sizeof(*p.batch)),
		.retr_left = r->n_fetch_planned,
	};
	bool pipelining = r->a->pipelining != 0 && r->s->capa.pipelining;
	bool ok = false;

	p.window = pipelining ? FETCH_PIPELINE_WINDOW : 1;
	if (fetch_trace)
		fprintf(stderr, "popbox: %s: pipelining %s\n", r->a->name, pipelining ? "on" : "off");
	for (;;) {
		sync_batch_if_due(&p, err);
		if (!refill(&p, err))
			goto out;
		if (p.n_inflight == 0)
			break;
		if (!answer(&p, err))
			goto out;
	}
	ok = !p.fatal_local;
out:
	if (p.nbatch > 0) {
		/* the connection failed: keep what arrived whole (no DELE can
		 * follow; the next run finds the markers and deletes them) */
		struct fetch_error local = { 0 };
		if (!sync_batch(&p, &local) && err->code == 0)
			*err = local;
	}
	free(p.dq);
	free(p.batch);
	return ok;
}

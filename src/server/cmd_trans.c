/* The TRANSACTION state (cmd_trans.h): listings built from the store's
 * snapshot, message bodies streamed by session.c, deletion marks kept here
 * and applied only by QUIT, on the store thread (docs/DESIGN.md "Process model"). */
#include "server/cmd_trans.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "common/log.h"
#include "server/metrics.h"
#include "server/store_pool.h"
#include "server/devices.h"

void
cmd_trans_begin(struct session *s, struct store *store, uint32_t *view, uint32_t view_count,
    uint64_t view_size)
{
	s->store = store;
	s->view = view;
	s->view_count = view != NULL ? view_count : store->count;
	s->view_size = view != NULL ? view_size : store->total_size;
	s->deleted = xcalloc(s->view_count ? s->view_count : 1, sizeof(bool));
	if (s->devices != NULL && s->expire_days != DEVICES_EXPIRE_NEVER)
		s->retrieved = xcalloc(s->view_count ? s->view_count : 1, sizeof(bool));
	s->deleted_count = 0;
	s->deleted_size = 0;
	session_enter_state(s, SESSION_TRANSACTION);
}

/* The store index of the session's message i (0-based). */
static uint32_t
store_index(const struct session *s, uint32_t i)
{
	return s->view != NULL ? s->view[i] : i;
}

static const struct store_message *
message_at(const struct session *s, uint32_t i)
{
	return &s->store->messages[store_index(s, i)];
}

static uint32_t
live_count(const struct session *s)
{
	return s->view_count - s->deleted_count;
}

static uint64_t
live_size(const struct session *s)
{
	return s->view_size - s->deleted_size;
}

/* Parse a message number argument strictly and check it names a message that
 * exists and is not deleted; answers -ERR itself when not. */
static bool
message_arg(struct session *s, const char *arg, uint32_t *idx_r)
{
	uint32_t n;
	if (!parse_u32(arg, UINT32_MAX, &n)) {
		session_reply(s, "-ERR Invalid message number");
		return false;
	}
	if (n == 0 || n > s->view_count) {
		session_reply(s, "-ERR There is no message %u", n);
		return false;
	}
	if (s->deleted[n - 1]) {
		session_reply(s, "-ERR Message %u is deleted", n);
		return false;
	}
	*idx_r = n - 1;
	return true;
}

void
cmd_trans_stat(struct session *s, int argc, char **argv)
{
	session_reply(s, "+OK %u %llu", live_count(s), (unsigned long long)live_size(s));
}

/* Decimal digits of v at p, returns the end. */
static char *
put_u64(char *p, uint64_t v)
{
	char tmp[20];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	while (n > 0)
		*p++ = tmp[--n];
	return p;
}

/* One piece of a listing. */
#define LIST_PIECE 16384
/* Longest listing line: "N " + UIDL (at most 70) or SIZE (at most 20) + CRLF. */
#define LIST_LINE_MAX (10 + 1 + UIDL_MAX_LEN + 2)

/* The next piece of a LIST or UIDL listing ("N SIZE" or "N UIDL" lines from
 * message s->list_next on, then ".") for session_produce_start: formatted
 * in a local buffer and added at once (evbuffer_add_printf per line was a
 * third of the time of a 100,000-message listing), one piece per call, so
 * a listing of a million messages (~80 MB of UIDLs) is never in memory
 * whole (docs/DESIGN.md "Protocol"). Returns true when it is complete. */
static bool
list_fill(struct session *s, struct evbuffer *out, bool uidl)
{
	char buf[LIST_PIECE], *p = buf;
	uint32_t i = s->list_next;
	/* room for one more line and the terminator */
	for (; i < s->view_count && p <= buf + sizeof(buf) - LIST_LINE_MAX - 3; i++) {
		if (s->deleted[i])
			continue;
		const struct store_message *m = message_at(s, i);
		p = put_u64(p, i + 1);
		*p++ = ' ';
		if (uidl) {
			size_t n = strlen(m->uidl);
			memcpy(p, m->uidl, n);
			p += n;
		} else {
			p = put_u64(p, m->size);
		}
		*p++ = '\r';
		*p++ = '\n';
	}
	s->list_next = i;
	bool done = i == s->view_count;
	if (done) {
		memcpy(p, ".\r\n", 3);
		p += 3;
	}
	evbuffer_add(out, buf, (size_t)(p - buf));
	return done;
}

static bool
list_fill_sizes(struct session *s, struct evbuffer *out)
{
	return list_fill(s, out, false);
}

static bool
list_fill_uidls(struct session *s, struct evbuffer *out)
{
	return list_fill(s, out, true);
}

void
cmd_trans_list(struct session *s, int argc, char **argv)
{
	uint32_t idx;
	if (argc == 1) {
		if (message_arg(s, argv[0], &idx))
			session_reply(s, "+OK %u %llu", idx + 1, (unsigned long long)message_at(s, idx)->size);
		return;
	}
	session_reply(s, "+OK %u messages (%llu octets)", live_count(s), (unsigned long long)live_size(s));
	s->list_next = 0;
	session_produce_start(s, list_fill_sizes);
}

void
cmd_trans_uidl(struct session *s, int argc, char **argv)
{
	uint32_t idx;
	if (argc == 1) {
		if (message_arg(s, argv[0], &idx))
			session_reply(s, "+OK %u %s", idx + 1, message_at(s, idx)->uidl);
		return;
	}
	session_reply(s, "+OK Unique-ID listing follows");
	s->list_next = 0;
	session_produce_start(s, list_fill_uidls);
}

/* Answer RETR (top_lines < 0) or TOP for message idx and stream it. */
static void
cmd_trans_send(struct session *s, uint32_t idx, int64_t top_lines)
{
	struct store_stream st = { .fd = -1 };
	char *error = NULL;
	enum store_status r = s->store->backend->message_open(s->store, store_index(s, idx), &st,
	    &error);
	if (r != STORE_OK) {
		if (error != NULL) {
			log_warnx("session %016llx: message %u: %s", (unsigned long long)s->id, idx + 1, error);
			free(error);
		}
		if (r == STORE_GONE)
			session_reply(s, "-ERR Message %u was removed by another program", idx + 1);
		else
			session_reply(s, "-ERR [SYS/TEMP] Cannot read message %u, try again later", idx + 1);
		return;
	}
	if (!session_stream_open(s, &st)) {
		/* a directory or FIFO in its place, an I/O error: nothing sent yet */
		log_warn("session %016llx: message %u: read", (unsigned long long)s->id, idx + 1);
		session_reply(s, "-ERR [SYS/TEMP] Cannot read message %u, try again later", idx + 1);
		return;
	}
	char status[64];
	int n;
	if (top_lines < 0)
		n = snprintf(status, sizeof(status), "+OK %llu octets\r\n",
		    (unsigned long long)message_at(s, idx)->size);
	else
		n = snprintf(status, sizeof(status), "+OK Top of message %u follows\r\n", idx + 1);
	session_stream_start(s, top_lines, status, (size_t)n);
}

void
cmd_trans_retr(struct session *s, int argc, char **argv)
{
	uint32_t idx;
	if (!message_arg(s, argv[0], &idx))
		return;
	s->retr_count++;
	METRICS_INC(retrieved);
	if (s->retrieved != NULL)
		s->retrieved[idx] = true;   /* counts only if QUIT follows */
	cmd_trans_send(s, idx, -1);
}

void
cmd_trans_top(struct session *s, int argc, char **argv)
{
	uint32_t idx, lines;
	if (!message_arg(s, argv[0], &idx))
		return;
	if (!parse_u32(argv[1], UINT32_MAX, &lines)) {
		session_reply(s, "-ERR Invalid number of lines");
		return;
	}
	s->top_count++;
	cmd_trans_send(s, idx, (int64_t)lines);
}

void
cmd_trans_dele(struct session *s, int argc, char **argv)
{
	uint32_t idx;
	if (!message_arg(s, argv[0], &idx))
		return;
	s->deleted[idx] = true;
	s->deleted_count++;
	s->deleted_size += message_at(s, idx)->size;
	session_reply(s, "+OK Message %u deleted", idx + 1);
}

void
cmd_trans_noop(struct session *s, int argc, char **argv)
{
	session_reply(s, "+OK");
}

void
cmd_trans_rset(struct session *s, int argc, char **argv)
{
	memset(s->deleted, 0, s->view_count * sizeof(bool));
	s->deleted_count = 0;
	s->deleted_size = 0;
	session_reply(s, "+OK %u messages (%llu octets)", s->view_count,
	    (unsigned long long)s->view_size);
}

/* The store thread has removed the marked messages (or failed to): answer
 * QUIT and close. */
static void
cmd_trans_expunged(struct store_job *job, void *arg)
{
	struct session *s = arg;
	uint32_t removed = s->deleted_count;
	s->store_job = NULL;
	/* Unlock before the client can read the answer (it may log in again
	 * at once). */
	job->store->backend->close(job->store);
	job->store = NULL;
	if (job->status != STORE_OK) {
		log_warnx("session %016llx: removing messages: %s", (unsigned long long)s->id,
		    job->error ? job->error : "failed");
		session_reply(s, "-ERR [SYS/TEMP] Some deleted messages could not be removed");
		session_close_after_reply(s, "quit-expunge-failed");
		return;
	}
	s->dele_count = removed;
	if (job->device_state != NULL && s->device != NULL)
		log_info("session %016llx: device %s deleted %u, %u files removed",
		    (unsigned long long)s->id, s->device, removed, job->removed);
	METRICS_ADD(deleted, removed);
	session_reply(s, "+OK Bye, %u messages deleted", removed);
	session_close_after_reply(s, "quit");
}

void
cmd_trans_quit(struct session *s, int argc, char **argv)
{
	if (s->state == SESSION_AUTHORIZATION) {
		session_reply(s, "+OK Bye");
		session_close_after_reply(s, "quit");
		return;
	}
	/* RFC 1939 §6: UPDATE only after QUIT from TRANSACTION. The reply says
	 * +OK only once the removals are durable. */
	session_enter_state(s, SESSION_UPDATE);
	bool retrieved = false;
	for (uint32_t i = 0; s->retrieved != NULL && i < s->view_count && !retrieved; i++)
		retrieved = s->retrieved[i];
	if (s->deleted_count == 0 && !retrieved) {
		session_reply(s, "+OK Bye, 0 messages deleted");
		session_close_after_reply(s, "quit");
		return;
	}
	struct store_job *job = xcalloc(1, sizeof(*job));
	job->kind = STORE_JOB_EXPUNGE;
	job->store = s->store;               /* the job owns it now */
	job->deleted = xcalloc(s->store->count ? s->store->count : 1, sizeof(bool));
	for (uint32_t i = 0; i < s->view_count; i++)
		if (s->deleted[i])
			job->deleted[store_index(s, i)] = true;
	if (s->devices != NULL) {
		job->device_state = s->devices;      /* the job owns it now */
		job->device_slot = s->device_slot;
		job->device_idle_days = s->worker->config->device_idle_days;
		job->expire_days = s->expire_days;
		s->devices = NULL;
		if (retrieved) {
			job->retrieved = xcalloc(s->store->count ? s->store->count : 1, sizeof(bool));
			for (uint32_t i = 0; i < s->view_count; i++)
				if (s->retrieved[i])
					job->retrieved[store_index(s, i)] = true;
		}
	}
	job->done = cmd_trans_expunged;
	job->arg = s;
	s->store = NULL;
	s->store_job = job;
	store_pool_submit(s->worker->store_pool, job);
}
